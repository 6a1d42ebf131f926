//! Tests of the session: signal handling of runs, parse patterns, base64.
#![allow(clippy::unwrap_used)]
use super::*;
use proto::CaseResult;
use std::collections::BTreeMap;

#[test]
fn base64_matches_rfc4648_vectors() {
    for (input, want) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64(input.as_bytes()), want);
    }
}

#[test]
fn parse_pattern_with_fixupdict() {
    let re = regex::Regex::new(r"(?P<test_case_id>[^:]+):\s+(?P<result>PASS|FAIL)").unwrap();
    let mut fix = BTreeMap::new();
    fix.insert("PASS".to_string(), "pass".to_string());
    fix.insert("FAIL".to_string(), "fail".to_string());
    let c = pattern_case(&re, &fix, "disk io: FAIL").unwrap().unwrap();
    assert_eq!(c.name, "disk_io");
    assert_eq!(c.result, CaseResult::Fail);
    assert!(pattern_case(&re, &fix, "nothing here").is_none());
}

#[test]
fn parse_pattern_results_are_lavas_four_words_after_the_fixupdict() {
    let re = regex::Regex::new(r"^(?P<test_case_id>\w+): (?P<result>\S+)$").unwrap();
    let fix = BTreeMap::from([
        ("ok".to_string(), "pass".to_string()),
        ("bad".to_string(), "FAIL".to_string()),
    ]);
    let result = |dict: &BTreeMap<String, String>, line: &str| {
        pattern_case(&re, dict, line).map(|r| r.map(|c| c.result))
    };
    assert_eq!(result(&fix, "a: ok"), Some(Ok(CaseResult::Pass)));
    assert_eq!(result(&fix, "a: skip"), Some(Ok(CaseResult::Skip)));
    assert_eq!(result(&fix, "a: unknown"), Some(Ok(CaseResult::Unknown)));
    let refused = |word: &str| {
        Some(Err(PatternRefusal {
            id: "a".into(),
            word: word.into(),
        }))
    };
    // No case folding (LAVA's server stores only the lower-case words) ...
    assert_eq!(result(&BTreeMap::new(), "a: PASS"), refused("PASS"));
    assert_eq!(result(&fix, "a: Pass"), refused("Pass"));
    // ... not even of what the fixupdict gives; other words are refused, not `unknown`.
    assert_eq!(result(&fix, "a: bad"), refused("FAIL"));
    assert_eq!(result(&fix, "a: passed"), refused("passed"));
    let text = pattern_case(&re, &fix, "a: passed")
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(text.contains("bad result \"passed\""), "{text}");
}

#[test]
fn parse_pattern_measurements() {
    let re = regex::Regex::new(
        r"^(?P<test_case_id>\w+) (?P<result>pass|fail) (?P<measurement>[\d.]+) (?P<units>\w+)$",
    )
    .unwrap();
    let c = pattern_case(&re, &BTreeMap::new(), "latency pass 3.5 ms")
        .unwrap()
        .unwrap();
    assert_eq!(c.measurement.as_deref(), Some("3.5"));
    assert_eq!(c.units.as_deref(), Some("ms"));
}

fn test_run(id: &str, yaml: &str) -> TestRun {
    TestRun {
        id: id.into(),
        definition: jobspec::parse_test_definition("t.yaml", yaml).unwrap(),
        params: BTreeMap::new(),
        files: None,
        uuid: format!("u_{id}"),
        lava_signal: jobspec::LavaSignal::Stdout,
        root: crate::overlay::OVERLAY_ROOT.to_string(),
    }
}

const PLAIN: &str = "metadata: {format: Lava-Test Test Definition 1.0, name: t}\n\
                     run: {steps: ['true']}\n";

/// What a run's lines give: (cases as suite/name/result, notes, end).
fn read(
    run: &TestRun,
    action: &mut ActionSignals,
    lines: &[&str],
) -> (Vec<(String, String, CaseResult)>, Vec<String>, RunEnd) {
    let pattern = run
        .definition
        .parse
        .as_ref()
        .map(|p| regex::Regex::new(&p.pattern).unwrap());
    let mut reader = RunSignals::new(run, action, pattern);
    let (mut cases, mut notes) = (Vec::new(), Vec::new());
    for line in lines {
        match reader.line(line.as_bytes()) {
            Some(Step::Case(c)) => cases.push((c.suite, c.name, c.result)),
            Some(Step::Note(n)) => notes.push(n),
            None => {}
        }
    }
    notes.extend(reader.dropped_summary());
    (cases, notes, reader.end())
}

fn case(suite: &str, name: &str, result: CaseResult) -> (String, String, CaseResult) {
    (suite.into(), name.into(), result)
}

#[test]
fn a_definitions_fixupdict_applies_to_signals_from_startrun_to_endrun() {
    let run = test_run(
        "0_p",
        "metadata: {format: Lava-Test Test Definition 1.0, name: p}\n\
         run: {steps: ['true']}\n\
         parse: {pattern: '^(?P<test_case_id>\\w+)=(?P<result>\\w+)$', fixupdict: {ok: pass}}\n",
    );
    let tc = |r: &str| format!("<LAVA_SIGNAL_TESTCASE TEST_CASE_ID={r}-case RESULT={r}>");
    let (ok, upper) = (tc("ok"), tc("PASS"));
    let mut action = ActionSignals {
        last_started: Some("earlier".into()),
    };
    let (cases, notes, end) = read(
        &run,
        &mut action,
        &[
            &ok,
            "<LAVA_SIGNAL_STARTRUN 0_p u_0_p>",
            &ok,
            &upper,
            "m=ok",
            "m2=PASS",
            "<LAVA_SIGNAL_ENDRUN 0_p u_0_p>",
            &upper,
            &ok,
            "m3=ok",
        ],
    );
    assert_eq!(
        cases,
        [
            case("0_p", "ok-case", CaseResult::Pass),
            case("0_p", "m", CaseResult::Pass),
            case("0_p", "PASS-case", CaseResult::Pass),
        ]
    );
    assert_eq!(end, RunEnd::Completed);
    // Before STARTRUN and after ENDRUN: LAVA's default dictionary, which has no `ok`;
    // inside, only the definition's, which has no `PASS`.
    assert_eq!(notes.len(), 4, "{notes:#?}");
    assert!(
        notes[0].starts_with("0_p: TESTCASE ok-case: bad result \"ok\""),
        "{notes:#?}"
    );
    assert!(
        notes[1].starts_with("0_p: TESTCASE PASS-case: bad result \"PASS\""),
        "{notes:#?}"
    );
    assert!(
        notes[2].starts_with("0_p: parse pattern: case m2: bad result \"PASS\""),
        "{notes:#?}"
    );
    assert!(
        notes[3].starts_with("0_p: TESTCASE ok-case: bad result"),
        "{notes:#?}"
    );
}

#[test]
fn dropped_signals_are_noted_up_to_a_bound_then_counted() {
    let run = test_run("0_t", PLAIN);
    let bad: Vec<String> = (0..MAX_DROPPED_NOTES + 7)
        .map(|i| format!("<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=c{i} RESULT=maybe>"))
        .collect();
    let mut lines = vec!["<LAVA_SIGNAL_STARTRUN 0_t u>"];
    lines.extend(bad.iter().map(String::as_str));
    lines.extend([
        "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=x>",
        "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=good RESULT=pass>",
        "<LAVA_SIGNAL_ENDRUN 0_t u>",
    ]);
    let (cases, notes, end) = read(&run, &mut ActionSignals::default(), &lines);
    assert_eq!(cases, [case("0_t", "good", CaseResult::Pass)]);
    assert_eq!(end, RunEnd::Completed);
    assert_eq!(notes.len(), MAX_DROPPED_NOTES + 1, "{notes:#?}");
    assert_eq!(
        notes[0],
        "0_t: TESTCASE c0: bad result \"maybe\" (pass, fail, skip or unknown); the case is dropped"
    );
    assert_eq!(
        notes[MAX_DROPPED_NOTES],
        "0_t: and 8 more dropped signal(s) or pattern match(es)"
    );
    // DUT text in a note cannot drive the terminal.
    let (_, notes, _) = read(
        &run,
        &mut ActionSignals::default(),
        &[
            "<LAVA_SIGNAL_STARTRUN 0_t u>",
            "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=a\x07\x08b RESULT=maybe>",
        ],
    );
    assert_eq!(
        notes,
        [
            "0_t: TESTCASE a\u{fffd}\u{fffd}b: bad result \"maybe\" (pass, fail, skip or unknown); \
          the case is dropped"
        ]
    );
    // Exactly the bound: no summary.
    let (_, notes, _) = read(
        &run,
        &mut ActionSignals::default(),
        &[
            &["<LAVA_SIGNAL_STARTRUN 0_t u>"],
            &bad[..MAX_DROPPED_NOTES]
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()[..],
        ]
        .concat(),
    );
    assert_eq!(notes.len(), MAX_DROPPED_NOTES);
}

#[test]
fn a_raise_ends_the_run_marks_it_unfinished_inside_and_nothing_after_counts() {
    let run = test_run("0_t", PLAIN);
    let (cases, _, end) = read(
        &run,
        &mut ActionSignals::default(),
        &[
            "<LAVA_SIGNAL_STARTRUN 0_t u>",
            "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=before RESULT=pass>",
            "<LAVA_SIGNAL_TESTRAISE disk not found>",
            "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=after RESULT=pass>",
            "<LAVA_SIGNAL_TESTRAISE second>",
            "<LAVA_SIGNAL_ENDRUN 0_t u>",
        ],
    );
    assert_eq!(cases, [case("0_t", "before", CaseResult::Pass)]);
    assert_eq!(
        end,
        RunEnd::Raised {
            reason: "lava-test-raise: disk not found".into(),
            unfinished: true
        }
    );
    // A signal LAVA ends the job on is a test error the same way.
    let (_, _, end) = read(
        &run,
        &mut ActionSignals::default(),
        &[
            "<LAVA_SIGNAL_STARTRUN 0_t u>",
            "<LAVA_SIGNAL_TESTREFERENCE a pass>",
        ],
    );
    assert_eq!(
        end,
        RunEnd::Raised {
            reason: "invalid TESTREFERENCE: 2 fields, LAVA needs exactly 3 (name, result, URL)"
                .into(),
            unfinished: true
        }
    );
    // Before STARTRUN (an install step): no run to mark.
    let (_, _, end) = read(
        &run,
        &mut ActionSignals::default(),
        &[
            "<LAVA_SIGNAL_TESTRAISE early>",
            "<LAVA_SIGNAL_STARTRUN 0_t u>",
        ],
    );
    assert_eq!(
        end,
        RunEnd::Raised {
            reason: "lava-test-raise: early".into(),
            unfinished: false
        }
    );
}

#[test]
fn a_test_case_before_the_actions_first_startrun_is_a_test_error() {
    let first = test_run("0_a", PLAIN);
    let want = RunEnd::Raised {
        reason: "Invalid TESTCASE signal: unknown test uuid, the STARTRUN signal for this \
                 test action was not received"
            .into(),
        unfinished: false,
    };
    for line in [
        "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=early RESULT=pass>",
        // LAVA checks the uuid before it reads the fields.
        "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=early RESULT=bogus>",
        "<LAVA_SIGNAL_TESTCASE early>",
    ] {
        let (cases, notes, end) = read(
            &first,
            &mut ActionSignals::default(),
            &[
                line,
                "<LAVA_SIGNAL_STARTRUN 0_a u>",
                "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=in RESULT=pass>",
            ],
        );
        assert!(
            cases.is_empty() && notes.is_empty(),
            "{line}: {cases:?} {notes:?}"
        );
        assert_eq!(end, want, "{line}");
    }
    // A reference is not checked (LAVA files it under no definition; dutlab, the run).
    let (cases, _, end) = read(
        &first,
        &mut ActionSignals::default(),
        &["<LAVA_SIGNAL_TESTREFERENCE r pass http://x>"],
    );
    assert_eq!(cases, [case("0_a", "r", CaseResult::Pass)]);
    assert_eq!(end, RunEnd::Incomplete);
    // Once a run of the action started, a case between runs (the next run's install
    // steps) is filed under that run, as LAVA files it.
    let mut action = ActionSignals::default();
    let (_, _, end) = read(
        &first,
        &mut action,
        &["<LAVA_SIGNAL_STARTRUN 0_a u>", "<LAVA_SIGNAL_ENDRUN 0_a u>"],
    );
    assert_eq!(end, RunEnd::Completed);
    let second = test_run("1_b", PLAIN);
    let (cases, _, end) = read(
        &second,
        &mut action,
        &[
            "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=installing RESULT=pass>",
            "<LAVA_SIGNAL_STARTRUN 1_b u>",
            "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=running RESULT=fail>",
        ],
    );
    assert_eq!(
        cases,
        [
            case("0_a", "installing", CaseResult::Pass),
            case("1_b", "running", CaseResult::Fail),
        ]
    );
    assert_eq!(end, RunEnd::Incomplete);
}
