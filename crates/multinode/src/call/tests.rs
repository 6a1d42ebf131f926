use super::*;

fn call(line: &str) -> Result<Call, CallError> {
    parse_call(line.as_bytes()).expect("a multinode line")
}

fn id(s: &str) -> MessageId {
    MessageId::new(s).expect("valid id")
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn lines_lava_helpers_print() {
    assert_eq!(
        call("<LAVA_MULTI_NODE> <LAVA_SEND server_ready>"),
        Ok(Call::Send {
            id: id("server_ready"),
            data: vec![]
        })
    );
    assert_eq!(
        call("<LAVA_MULTI_NODE> <LAVA_SEND ipv4 ipaddr=10.0.0.1 port=22>"),
        Ok(Call::Send {
            id: id("ipv4"),
            data: pairs(&[("ipaddr", "10.0.0.1"), ("port", "22")])
        })
    );
    assert_eq!(
        call("<LAVA_MULTI_NODE> <LAVA_WAIT server_ready>"),
        Ok(Call::Wait {
            id: id("server_ready")
        })
    );
    assert_eq!(
        call("<LAVA_MULTI_NODE> <LAVA_WAIT_ALL done>"),
        Ok(Call::WaitAll {
            id: id("done"),
            role: None
        })
    );
    assert_eq!(
        call("<LAVA_MULTI_NODE> <LAVA_WAIT_ALL done client>"),
        Ok(Call::WaitAll {
            id: id("done"),
            role: Some("client".into())
        })
    );
    assert_eq!(
        call("<LAVA_MULTI_NODE> <LAVA_SYNC ready>"),
        Ok(Call::Sync { id: id("ready") })
    );
}

#[test]
fn anywhere_in_a_line_and_first_match_counts() {
    assert_eq!(
        call("[   12.5] foo<LAVA_MULTI_NODE> <LAVA_SYNC a> <LAVA_MULTI_NODE> <LAVA_SYNC b>"),
        Ok(Call::Sync { id: id("a") })
    );
    // A prefix that does not complete LAVA's pattern is skipped for a later one.
    assert_eq!(
        call("<LAVA_MULTI_NODE> <LAVA_SYNC\t<LAVA_MULTI_NODE> <LAVA_SYNC b>"),
        Ok(Call::Sync { id: id("b") })
    );
    assert_eq!(
        call("<LAVA_MULTI_NODE> <LAVA_sync ready>\r"),
        Ok(Call::Sync { id: id("ready") }),
        "LAVA looks the name up in lower case"
    );
}

#[test]
fn not_multinode_lines() {
    for line in [
        "",
        "lava-send foo",
        "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=a RESULT=pass>",
        "<LAVA_WAIT_COMPLETE 17.0:a=b>",
        "<LAVA_MULTI_NODE> <LAVA_SEND>",
        "<LAVA_MULTI_NODE> <LAVA_SEND >",
        "<LAVA_MULTI_NODE> <LAVA_SEND foo",
        "<LAVA_MULTI_NODE>  <LAVA_SEND foo>",
        "<LAVA_MULTI_NODE> <LAVA_ foo>",
    ] {
        assert_eq!(parse_call(line.as_bytes()), None, "{line:?}");
    }
}

#[test]
fn send_values_keep_spaces_and_equals_and_keys_repeat_as_a_dict() {
    assert_eq!(
        call("<LAVA_MULTI_NODE> <LAVA_SEND m cmd=iperf -c host --len=3 url=http://h/?a=b k=1 k=2>"),
        Ok(Call::Send {
            id: id("m"),
            data: pairs(&[
                ("cmd", "iperf -c host --len=3"),
                ("url", "http://h/?a=b"),
                ("k", "2")
            ])
        })
    );
    assert_eq!(
        call("<LAVA_MULTI_NODE> <LAVA_SEND server-ready free-space=12G  >"),
        Ok(Call::Send {
            id: id("server-ready"),
            data: pairs(&[("free-space", "12G")])
        }),
        "LAVA's documented example: a key with '-'"
    );
    assert_eq!(
        call("<LAVA_MULTI_NODE> <LAVA_SEND m empty=>"),
        Ok(Call::Send {
            id: id("m"),
            data: pairs(&[("empty", "")])
        })
    );
}

#[test]
fn refusals() {
    let bad = |kind, field, problem| {
        Err(CallError::BadField {
            kind,
            field,
            problem,
        })
    };
    use CallKind::*;
    assert_eq!(
        call("<LAVA_MULTI_NODE> <LAVA_FOO x>"),
        Err(CallError::UnknownCall("FOO".into()))
    );
    assert_eq!(
        call("<LAVA_MULTI_NODE> <LAVA_SEND id junk k=v>"),
        bad(Send, Field::Id, FieldProblem::BadChar(' '))
    );
    assert_eq!(
        call("<LAVA_MULTI_NODE> <LAVA_SEND a=b>"),
        bad(Send, Field::Id, FieldProblem::BadChar('='))
    );
    assert_eq!(
        call("<LAVA_MULTI_NODE> <LAVA_SEND id k=<LAVA_SIGNAL_TESTCASE>"),
        bad(Send, Field::Value, FieldProblem::BadChar('<'))
    );
    assert_eq!(
        call("<LAVA_MULTI_NODE> <LAVA_SEND id k=a\u{3}b>"),
        bad(Send, Field::Value, FieldProblem::BadChar('\u{3}'))
    );
    assert_eq!(
        call("<LAVA_MULTI_NODE> <LAVA_WAIT a b>"),
        Err(CallError::ExtraArgument {
            kind: Wait,
            extra: "b".into()
        })
    );
    assert_eq!(
        call("<LAVA_MULTI_NODE> <LAVA_WAIT_ALL a role extra>"),
        Err(CallError::ExtraArgument {
            kind: WaitAll,
            extra: "extra".into()
        })
    );
    assert_eq!(
        call("<LAVA_MULTI_NODE> <LAVA_WAIT_ALL a r$le>"),
        bad(WaitAll, Field::Role, FieldProblem::BadChar('$'))
    );
    assert_eq!(
        call("<LAVA_MULTI_NODE> <LAVA_SYNC  >"),
        bad(Sync, Field::Id, FieldProblem::Empty)
    );
    assert_eq!(
        parse_call(b"<LAVA_MULTI_NODE> <LAVA_SYNC \xff\xfe>"),
        Some(Err(CallError::NotUtf8(Sync)))
    );
    let long = "x".repeat(limits::MAX_ID + 1);
    assert_eq!(
        call(&format!("<LAVA_MULTI_NODE> <LAVA_SYNC {long}>")),
        bad(
            Sync,
            Field::Id,
            FieldProblem::TooLong {
                max: limits::MAX_ID
            }
        )
    );
    let long_value = "v".repeat(limits::MAX_VALUE + 1);
    assert_eq!(
        call(&format!("<LAVA_MULTI_NODE> <LAVA_SEND i k={long_value}>")),
        bad(
            Send,
            Field::Value,
            FieldProblem::TooLong {
                max: limits::MAX_VALUE
            }
        )
    );
    let many: Vec<String> = (0..=limits::MAX_PAIRS).map(|n| format!("k{n}=v")).collect();
    assert_eq!(
        call(&format!(
            "<LAVA_MULTI_NODE> <LAVA_SEND i {}>",
            many.join(" ")
        )),
        Err(CallError::TooManyPairs { kind: Send })
    );
    let most: Vec<String> = (0..limits::MAX_PAIRS).map(|n| format!("k{n}=v")).collect();
    assert!(
        call(&format!(
            "<LAVA_MULTI_NODE> <LAVA_SEND i {}>",
            most.join(" ")
        ))
        .is_ok()
    );
}

#[test]
fn errors_quote_little_of_the_dut_text() {
    let name = "N".repeat(10_000);
    let Err(CallError::UnknownCall(quoted)) = call(&format!("<LAVA_MULTI_NODE> <LAVA_{name} x>"))
    else {
        panic!("an unknown call")
    };
    assert!(quoted.len() <= QUOTE_MAX);
}

#[test]
fn test_case_names_are_lavas() {
    let c = call("<LAVA_MULTI_NODE> <LAVA_WAIT_ALL Done client>").expect("valid");
    assert_eq!(c.test_case_name(), "multinode-wait_all-done");
    let c = call("<LAVA_MULTI_NODE> <LAVA_SEND ipv4 a=b>").expect("valid");
    assert_eq!(c.test_case_name(), "multinode-send-ipv4");
}

#[test]
fn validate_checks_calls_built_in_code_and_ids_check_on_deserialize() {
    let c = Call::Send {
        id: id("a"),
        data: pairs(&[("bad key", "v")]),
    };
    assert_eq!(
        c.validate(),
        Err(CallError::BadField {
            kind: CallKind::Send,
            field: Field::Key,
            problem: FieldProblem::BadChar(' ')
        })
    );
    let json = r#"{"Wait":{"id":"has space"}}"#;
    assert!(serde_json::from_str::<Call>(json).is_err());
    let json = r#"{"Wait":{"id":"ok"}}"#;
    assert_eq!(
        serde_json::from_str::<Call>(json).expect("valid"),
        Call::Wait { id: id("ok") }
    );
}

#[test]
fn long_and_broken_lines() {
    // The args end at the first '>', even the '>' of a following prefix.
    let line = "<LAVA_MULTI_NODE> <LAVA_SEND a ".repeat(3);
    assert_eq!(
        parse_call(line.as_bytes()),
        Some(Err(CallError::BadField {
            kind: CallKind::Send,
            field: Field::Id,
            problem: FieldProblem::BadChar(' ')
        }))
    );
    let line = format!("<LAVA_MULTI_NODE> <LAVA_SEND a {}", "x ".repeat(100_000));
    assert_eq!(parse_call(line.as_bytes()), None);
    let line = format!(
        "{}<LAVA_MULTI_NODE> <LAVA_SYNC z>",
        "<LAVA_MULTI_NODE> <LAVA_SYNC >".repeat(100_000)
    );
    assert_eq!(
        parse_call(line.as_bytes()),
        Some(Ok(Call::Sync { id: id("z") }))
    );
}
