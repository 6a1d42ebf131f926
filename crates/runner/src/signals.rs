//! LAVA result signals read from the DUT console.
//!
//! The helper scripts the runner installs in the DUT (`lava-test-case`, `lava-test-set`, ...)
//! print lines such as `<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=boot RESULT=pass>`. This module
//! turns one console line into a [`Signal`].
//!
//! Invariants:
//! - Pure and total: any byte string gives `Some(signal)` or `None`, never a panic; the input
//!   is untrusted DUT output.
//! - A signal may stand anywhere in a line: after a kernel timestamp, after the kmsg `<8>`
//!   level prefix, or after other output that was not newline-terminated.
//! - Field values are bounded ([`MAX_FIELD`]) and never interpreted beyond their text.

use proto::CaseResult;

/// Longest value kept from a signal field; longer values are cut.
pub const MAX_FIELD: usize = 512;

/// One parsed signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    StartRun {
        run: String,
        uuid: String,
    },
    EndRun {
        run: String,
        uuid: String,
    },
    TestCase {
        id: String,
        result: CaseResult,
        measurement: Option<String>,
        units: Option<String>,
    },
    /// `lava-test-case NAME --shell ...` started / ended its command.
    StartTestCase(String),
    EndTestCase(String),
    TestSetStart(String),
    TestSetStop,
    TestReference {
        id: String,
        result: CaseResult,
        reference: String,
    },
    TestRaise(String),
}

const MARKER: &[u8] = b"<LAVA_SIGNAL_";

/// Parses the signal in `line`, if it holds one.
pub fn parse_signal(line: &[u8]) -> Option<Signal> {
    let start = find(line, MARKER)? + MARKER.len();
    let rest = &line[start..];
    let end = rest.iter().rposition(|&b| b == b'>')?;
    let body = String::from_utf8_lossy(&rest[..end]);
    let mut words = body.split_ascii_whitespace();
    let kind = words.next()?;
    let args: Vec<&str> = words.collect();
    match kind {
        "STARTRUN" => Some(Signal::StartRun {
            run: field(args.first()?),
            uuid: field(args.get(1).copied().unwrap_or("")),
        }),
        "ENDRUN" => Some(Signal::EndRun {
            run: field(args.first()?),
            uuid: field(args.get(1).copied().unwrap_or("")),
        }),
        "STARTTC" => Some(Signal::StartTestCase(field(args.first()?))),
        "ENDTC" => Some(Signal::EndTestCase(field(args.first()?))),
        "TESTCASE" => {
            let kv = KeyValues(&args);
            Some(Signal::TestCase {
                id: kv.get("TEST_CASE_ID")?,
                result: CaseResult::from_lava(&kv.get("RESULT")?),
                measurement: kv.get("MEASUREMENT").filter(|m| !m.is_empty()),
                units: kv.get("UNITS").filter(|u| !u.is_empty()),
            })
        }
        "TESTSET" => match args.first().copied()? {
            "START" => Some(Signal::TestSetStart(field(args.get(1)?))),
            "STOP" => Some(Signal::TestSetStop),
            _ => None,
        },
        "TESTREFERENCE" => {
            let kv = KeyValues(&args);
            Some(Signal::TestReference {
                id: kv.get("TEST_CASE_ID")?,
                result: CaseResult::from_lava(&kv.get("RESULT")?),
                reference: kv.get("REFERENCE").unwrap_or_default(),
            })
        }
        "TESTRAISE" => Some(Signal::TestRaise(field(&args.join(" ")))),
        _ => None,
    }
}

struct KeyValues<'a>(&'a [&'a str]);

impl KeyValues<'_> {
    fn get(&self, key: &str) -> Option<String> {
        self.0.iter().find_map(|w| {
            let (k, v) = w.split_once('=')?;
            (k == key).then(|| field(v))
        })
    }
}

fn field(v: &str) -> String {
    if v.len() <= MAX_FIELD {
        return v.to_string();
    }
    let mut cut = MAX_FIELD;
    while !v.is_char_boundary(cut) {
        cut -= 1;
    }
    v[..cut].to_string()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn test_case_with_measurement() {
        assert_eq!(
            parse_signal(
                b"<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=boot-time RESULT=pass MEASUREMENT=4.2 UNITS=seconds>"
            ),
            Some(Signal::TestCase {
                id: "boot-time".into(),
                result: CaseResult::Pass,
                measurement: Some("4.2".into()),
                units: Some("seconds".into()),
            })
        );
    }

    #[test]
    fn kmsg_and_timestamp_prefixes() {
        let want = Some(Signal::TestCase {
            id: "x".into(),
            result: CaseResult::Fail,
            measurement: None,
            units: None,
        });
        assert_eq!(
            parse_signal(b"<8><LAVA_SIGNAL_TESTCASE TEST_CASE_ID=x RESULT=fail>"),
            want
        );
        assert_eq!(
            parse_signal(b"[   12.345678] <LAVA_SIGNAL_TESTCASE TEST_CASE_ID=x RESULT=fail>\r"),
            want
        );
    }

    #[test]
    fn runs_sets_references_raise() {
        assert_eq!(
            parse_signal(b"<LAVA_SIGNAL_STARTRUN 0_smoke 1234-abcd>"),
            Some(Signal::StartRun {
                run: "0_smoke".into(),
                uuid: "1234-abcd".into()
            })
        );
        assert_eq!(
            parse_signal(b"<LAVA_SIGNAL_ENDRUN 0_smoke 1234-abcd>"),
            Some(Signal::EndRun {
                run: "0_smoke".into(),
                uuid: "1234-abcd".into()
            })
        );
        assert_eq!(
            parse_signal(b"<LAVA_SIGNAL_TESTSET START network>"),
            Some(Signal::TestSetStart("network".into()))
        );
        assert_eq!(
            parse_signal(b"<LAVA_SIGNAL_TESTSET STOP>"),
            Some(Signal::TestSetStop)
        );
        assert_eq!(
            parse_signal(
                b"<LAVA_SIGNAL_TESTREFERENCE TEST_CASE_ID=log RESULT=pass REFERENCE=http://x/y>"
            ),
            Some(Signal::TestReference {
                id: "log".into(),
                result: CaseResult::Pass,
                reference: "http://x/y".into()
            })
        );
        assert_eq!(
            parse_signal(b"<LAVA_SIGNAL_TESTRAISE disk not found>"),
            Some(Signal::TestRaise("disk not found".into()))
        );
    }

    #[test]
    fn not_signals() {
        assert_eq!(parse_signal(b"plain output"), None);
        assert_eq!(
            parse_signal(b"<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=x>"),
            None,
            "no RESULT"
        );
        assert_eq!(parse_signal(b"<LAVA_SIGNAL_BOGUS a b>"), None);
        assert_eq!(parse_signal(b"<LAVA_SIGNAL_TESTCASE RESULT=pass"), None);
    }

    #[test]
    fn unknown_results_and_huge_fields_are_contained() {
        let long = "a".repeat(10_000);
        let line = format!("<LAVA_SIGNAL_TESTCASE TEST_CASE_ID={long} RESULT=<b>>");
        match parse_signal(line.as_bytes()) {
            Some(Signal::TestCase { id, result, .. }) => {
                assert_eq!(id.len(), MAX_FIELD);
                assert_eq!(result, CaseResult::Unknown);
            }
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        #[test]
        fn never_panics(line in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_signal(&line);
        }

        #[test]
        fn any_prefix_is_tolerated(prefix in "[ -~]{0,40}", id in "[a-z0-9_.-]{1,20}") {
            let line = format!("{prefix}<LAVA_SIGNAL_TESTCASE TEST_CASE_ID={id} RESULT=pass>");
            let parsed = parse_signal(line.as_bytes());
            if !prefix.contains("<LAVA_SIGNAL_") {
                prop_assert_eq!(parsed, Some(Signal::TestCase { id, result: CaseResult::Pass, measurement: None, units: None }));
            }
        }
    }
}
