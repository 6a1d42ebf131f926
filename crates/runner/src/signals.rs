//! LAVA result signals read from the DUT console, parsed as LAVA's dispatcher parses them.
//!
//! The helper scripts the runner installs in the DUT (`lava-test-case`, `lava-test-set`, ...)
//! print lines such as `<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=boot RESULT=pass>`. This module
//! turns one console line into a [`Signal`], accepting and refusing what LAVA (2023.01 and
//! later) accepts and refuses:
//!
//! - A signal is `<LAVA_SIGNAL_` NAME, one space, then fields up to the first `>`; fields are
//!   split on whitespace.
//! - `TESTCASE` fields are `KEY=VALUE` (keys case-insensitive). The result goes through the
//!   fixup dictionary (LAVA's default maps `PASS`, `FAIL`, `SKIP`, `UNKNOWN` to lower case;
//!   a definition with a `parse` block uses its own `fixupdict` instead) and must then be
//!   `pass`, `fail`, `skip` or `unknown`; a measurement must be a number; units count only
//!   with a measurement. A field without `=`, a missing id or result, a bad result word or a
//!   bad measurement makes LAVA log an error and drop the case: here a [`SignalError`] whose
//!   [`SignalError::ends_job`] is false.
//! - `TESTREFERENCE` is three words: name, result, URL. Another count makes LAVA end the job
//!   with a test error ([`SignalError::ends_job`] is true); a result other than the four words
//!   drops the case (LAVA's server refuses it).
//! - `TESTSET START` without a name, and `STARTRUN`/`ENDRUN` without a run name and uuid,
//!   end the job in LAVA. A set name LAVA's server refuses (a character outside
//!   `A-Za-z0-9_.-~/`) files the following cases under no set: [`Signal::TestSetStop`].
//! - Other names (`TESTEVENT`, `TESTFEEDBACK`, multinode messages) are not results: `None`.
//!
//! Invariants:
//! - Pure and total: any byte string gives a value, never a panic; the input is untrusted DUT
//!   output (invalid UTF-8 is replaced, as a text console reader does).
//! - A signal may stand anywhere in a line: after a kernel timestamp, after the kmsg `<0>`
//!   level prefix, or after other output that was not newline-terminated.
//! - Field values are bounded ([`MAX_FIELD`]) and never interpreted beyond their text; a
//!   measurement is checked to be a number but kept as written.

use proto::CaseResult;
use regex::Regex;
use std::collections::BTreeMap;
use std::sync::LazyLock;

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
    /// `lava-test-case NAME --shell ...` (or `--output`) started / ended its output.
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

/// A signal line LAVA refuses, and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    #[error("TESTCASE field {0:?} is not KEY=VALUE; the case is dropped")]
    NotKeyValue(String),
    #[error("TESTCASE without TEST_CASE_ID; the case is dropped")]
    MissingId,
    #[error("TESTCASE {0} without RESULT; the case is dropped")]
    MissingResult(String),
    #[error(
        "{signal} {id}: bad result {word:?} (pass, fail, skip or unknown); the case is dropped"
    )]
    BadResult {
        signal: &'static str,
        id: String,
        word: String,
    },
    #[error("TESTCASE {id}: measurement {value:?} is not a number; the case is dropped")]
    BadMeasurement { id: String, value: String },
    #[error("invalid TESTREFERENCE: {0} fields, LAVA needs exactly 3 (name, result, URL)")]
    ReferenceFields(usize),
    #[error("TESTSET START without a name")]
    SetWithoutName,
    #[error("invalid {0} signal: it needs a run name and a uuid")]
    RunFields(&'static str),
}

impl SignalError {
    /// Whether LAVA ends the job on this signal (it raises an error), rather than logging an
    /// error and going on without the case.
    pub fn ends_job(&self) -> bool {
        matches!(
            self,
            SignalError::ReferenceFields(_)
                | SignalError::SetWithoutName
                | SignalError::RunFields(_)
        )
    }

    /// The name of the refused signal: `TESTCASE`, `TESTREFERENCE`, `TESTSET`, `STARTRUN` or
    /// `ENDRUN`.
    pub fn signal(&self) -> &'static str {
        match self {
            SignalError::NotKeyValue(_)
            | SignalError::MissingId
            | SignalError::MissingResult(_)
            | SignalError::BadMeasurement { .. } => "TESTCASE",
            SignalError::BadResult { signal, .. } | SignalError::RunFields(signal) => signal,
            SignalError::ReferenceFields(_) => "TESTREFERENCE",
            SignalError::SetWithoutName => "TESTSET",
        }
    }
}

/// LAVA's signal pattern: name, one space, fields up to the first `>`.
static SIGNAL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"<LAVA_SIGNAL_(\S+) ([^>]+)>").expect("the signal pattern is a valid regex")
});

/// Parses the signal in `line`, if it holds one, with LAVA's default fixup dictionary.
///
/// Refused signals follow LAVA: one that ends the job in LAVA becomes
/// [`Signal::TestRaise`] with the reason; one LAVA logs and drops gives `None`.
pub fn parse_signal(line: &[u8]) -> Option<Signal> {
    parse_signal_with(line, None)
}

/// As [`parse_signal`], with the fixup dictionary in force: `Some(fixupdict)` while a run of
/// a definition with a `parse` block is running (LAVA then uses only that dictionary), `None`
/// for LAVA's default one.
pub fn parse_signal_with(
    line: &[u8],
    fixupdict: Option<&BTreeMap<String, String>>,
) -> Option<Signal> {
    match read_signal(line, fixupdict) {
        Ok(signal) => signal,
        Err(e) if e.ends_job() => Some(Signal::TestRaise(field(&e.to_string()))),
        Err(_) => None,
    }
}

/// Reads the signal in `line`: `Ok(None)` for a line without one (or a signal that is not a
/// result, such as `TESTEVENT`), `Err` for a signal LAVA refuses.
pub fn read_signal(
    line: &[u8],
    fixupdict: Option<&BTreeMap<String, String>>,
) -> Result<Option<Signal>, SignalError> {
    let text = String::from_utf8_lossy(line);
    let Some(caps) = SIGNAL.captures(&text) else {
        return Ok(None);
    };
    let (Some(name), Some(fields)) = (caps.get(1), caps.get(2)) else {
        return Ok(None);
    };
    let args: Vec<&str> = fields.as_str().split_whitespace().collect();
    let signal = match name.as_str() {
        kind @ ("STARTRUN" | "ENDRUN") => {
            let [run, uuid, ..] = args[..] else {
                return Err(SignalError::RunFields(if kind == "STARTRUN" {
                    "STARTRUN"
                } else {
                    "ENDRUN"
                }));
            };
            let (run, uuid) = (field(run), field(uuid));
            if kind == "STARTRUN" {
                Signal::StartRun { run, uuid }
            } else {
                Signal::EndRun { run, uuid }
            }
        }
        "STARTTC" => match args.first() {
            Some(id) => Signal::StartTestCase(field(id)),
            None => return Ok(None),
        },
        "ENDTC" => match args.first() {
            Some(id) => Signal::EndTestCase(field(id)),
            None => return Ok(None),
        },
        "TESTCASE" => test_case(&args, fixupdict)?,
        "TESTSET" => match args.first().copied() {
            Some("START") => {
                let name = args.get(1).ok_or(SignalError::SetWithoutName)?;
                if valid_set_name(name) {
                    Signal::TestSetStart(field(name))
                } else {
                    Signal::TestSetStop
                }
            }
            Some("STOP") => Signal::TestSetStop,
            _ => return Ok(None),
        },
        "TESTREFERENCE" => test_reference(&args)?,
        "TESTRAISE" => Signal::TestRaise(field(&args.join(" "))),
        _ => return Ok(None),
    };
    Ok(Some(signal))
}

/// `TESTCASE KEY=VALUE...`, checked as LAVA's dispatcher checks it.
fn test_case(
    args: &[&str],
    fixupdict: Option<&BTreeMap<String, String>>,
) -> Result<Signal, SignalError> {
    let mut values: BTreeMap<String, &str> = BTreeMap::new();
    for arg in args {
        let (key, value) = arg
            .split_once('=')
            .ok_or_else(|| SignalError::NotKeyValue(field(arg)))?;
        values.insert(key.to_lowercase(), value);
    }
    let id = field(values.get("test_case_id").ok_or(SignalError::MissingId)?);
    let word = values
        .get("result")
        .ok_or_else(|| SignalError::MissingResult(id.clone()))?;
    let result = fix_result(word, fixupdict).ok_or_else(|| SignalError::BadResult {
        signal: "TESTCASE",
        id: id.clone(),
        word: field(word),
    })?;
    let measurement = match values.get("measurement") {
        Some(m) if is_number(m) => Some(field(m)),
        Some(m) => {
            return Err(SignalError::BadMeasurement {
                id,
                value: field(m),
            });
        }
        None => None,
    };
    let units = measurement
        .as_ref()
        .and(values.get("units"))
        .map(|u| field(u));
    Ok(Signal::TestCase {
        id,
        result,
        measurement,
        units,
    })
}

/// `TESTREFERENCE NAME RESULT URL`.
fn test_reference(args: &[&str]) -> Result<Signal, SignalError> {
    let [id, word, reference] = args[..] else {
        return Err(SignalError::ReferenceFields(args.len()));
    };
    // dutlab's helpers before LAVA's positional form printed `TEST_CASE_ID=.. RESULT=..
    // REFERENCE=..`; read that form by its keys rather than as a case named `TEST_CASE_ID=..`.
    let (id, word, reference) = match (
        id.strip_prefix("TEST_CASE_ID="),
        word.strip_prefix("RESULT="),
        reference.strip_prefix("REFERENCE="),
    ) {
        (Some(i), Some(w), Some(r)) => (i, w, r),
        _ => (id, word, reference),
    };
    let result = result_word(word).ok_or_else(|| SignalError::BadResult {
        signal: "TESTREFERENCE",
        id: field(id),
        word: field(word),
    })?;
    Ok(Signal::TestReference {
        id: field(id),
        result,
        reference: field(reference),
    })
}

/// A result word after the fixup dictionary, if it is one of LAVA's four.
fn fix_result(word: &str, fixupdict: Option<&BTreeMap<String, String>>) -> Option<CaseResult> {
    let fixed = match fixupdict {
        Some(dict) => dict.get(word).map(String::as_str).unwrap_or(word),
        None => match word {
            "PASS" => "pass",
            "FAIL" => "fail",
            "SKIP" => "skip",
            "UNKNOWN" => "unknown",
            other => other,
        },
    };
    result_word(fixed)
}

/// LAVA's four result words, exactly (lower case): what LAVA's server stores; any other word
/// (`PASS`, `ok`) is refused.
pub fn result_word(word: &str) -> Option<CaseResult> {
    match word {
        "pass" => Some(CaseResult::Pass),
        "fail" => Some(CaseResult::Fail),
        "skip" => Some(CaseResult::Skip),
        "unknown" => Some(CaseResult::Unknown),
        _ => None,
    }
}

/// Whether Python's `float()` (what LAVA applies) accepts `text`: decimal or exponent
/// notation, `inf`/`infinity`/`nan` in any case, `_` only between digits.
fn is_number(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut plain = String::with_capacity(text.len());
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'_' {
            let digit =
                |j: Option<usize>| j.and_then(|j| bytes.get(j)).is_some_and(u8::is_ascii_digit);
            if !(digit(i.checked_sub(1)) && digit(Some(i + 1))) {
                return false;
            }
        } else {
            plain.push(char::from(b));
        }
    }
    // Rust's float grammar is Python's without underscores; both refuse hex and empty text.
    text.is_ascii() && plain.parse::<f64>().is_ok()
}

/// Set names LAVA's server keeps: those that URL quoting leaves unchanged.
fn valid_set_name(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.-~/".contains(&b))
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn case(id: &str, result: CaseResult) -> Signal {
        Signal::TestCase {
            id: id.into(),
            result,
            measurement: None,
            units: None,
        }
    }

    #[test]
    fn test_case_with_measurement_in_either_order() {
        let want = Some(Signal::TestCase {
            id: "boot-time".into(),
            result: CaseResult::Pass,
            measurement: Some("4.2".into()),
            units: Some("seconds".into()),
        });
        assert_eq!(
            parse_signal(
                b"<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=boot-time RESULT=pass UNITS=seconds MEASUREMENT=4.2>"
            ),
            want
        );
        assert_eq!(
            parse_signal(
                b"<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=boot-time RESULT=pass MEASUREMENT=4.2 UNITS=seconds>"
            ),
            want
        );
    }

    #[test]
    fn kmsg_and_timestamp_prefixes() {
        let want = Some(case("x", CaseResult::Fail));
        assert_eq!(
            parse_signal(b"<0><LAVA_SIGNAL_TESTCASE TEST_CASE_ID=x RESULT=fail>"),
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
            parse_signal(b"<LAVA_SIGNAL_TESTREFERENCE log pass http://x/y>"),
            Some(Signal::TestReference {
                id: "log".into(),
                result: CaseResult::Pass,
                reference: "http://x/y".into()
            })
        );
        assert_eq!(
            parse_signal(b"<LAVA_SIGNAL_TESTRAISE disk   not found>"),
            Some(Signal::TestRaise("disk not found".into()))
        );
        assert_eq!(
            parse_signal(b"<LAVA_SIGNAL_STARTTC x>"),
            Some(Signal::StartTestCase("x".into()))
        );
        assert_eq!(
            parse_signal(b"<LAVA_SIGNAL_ENDTC x>"),
            Some(Signal::EndTestCase("x".into()))
        );
    }

    #[test]
    fn result_words_follow_the_fixup_dictionary() {
        let line = |word: &str| format!("<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=x RESULT={word}>");
        for (word, want) in [
            ("pass", Some(CaseResult::Pass)),
            ("PASS", Some(CaseResult::Pass)),
            ("skip", Some(CaseResult::Skip)),
            ("UNKNOWN", Some(CaseResult::Unknown)),
            ("unknown", Some(CaseResult::Unknown)),
            ("Pass", None),
            ("ok", None),
            ("", None),
        ] {
            assert_eq!(
                parse_signal(line(word).as_bytes()),
                want.map(|r| case("x", r)),
                "{word:?}"
            );
        }
        let dict: BTreeMap<String, String> = [("ok".to_string(), "pass".to_string())].into();
        assert_eq!(
            parse_signal_with(line("ok").as_bytes(), Some(&dict)),
            Some(case("x", CaseResult::Pass))
        );
        assert_eq!(
            parse_signal_with(line("PASS").as_bytes(), Some(&dict)),
            None,
            "a definition's fixupdict replaces LAVA's default one"
        );
        assert_eq!(
            read_signal(line("bad").as_bytes(), None),
            Err(SignalError::BadResult {
                signal: "TESTCASE",
                id: "x".into(),
                word: "bad".into()
            })
        );
    }

    #[test]
    fn malformed_test_cases_are_dropped() {
        for line in [
            "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=x>",
            "<LAVA_SIGNAL_TESTCASE RESULT=pass>",
            "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=my case RESULT=pass>",
            "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=x RESULT=pass UNITS=mega bytes MEASUREMENT=1>",
            "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=x RESULT=pass MEASUREMENT=fast>",
            "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=x RESULT=pass MEASUREMENT=>",
        ] {
            let read = read_signal(line.as_bytes(), None);
            assert!(matches!(&read, Err(e) if !e.ends_job()), "{line}: {read:?}");
            assert_eq!(parse_signal(line.as_bytes()), None, "{line}");
        }
    }

    #[test]
    fn measurements_are_python_floats_and_units_need_one() {
        for m in [
            "99", "-1.5", "+.5", "5.", "1e3", "1E-3", "1_000", "inf", "NaN",
        ] {
            let line = format!("<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=x RESULT=pass MEASUREMENT={m}>");
            assert!(
                matches!(parse_signal(line.as_bytes()), Some(Signal::TestCase { measurement: Some(ref got), .. }) if got == m),
                "{m}"
            );
        }
        for m in ["0x10", "1__0", "_1", "1_", "1,5", "½"] {
            assert!(!is_number(m), "{m}");
        }
        assert_eq!(
            parse_signal(b"<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=x RESULT=pass UNITS=s>"),
            Some(case("x", CaseResult::Pass)),
            "units without a measurement are not kept"
        );
        assert_eq!(
            parse_signal(b"<LAVA_SIGNAL_TESTCASE test_case_id=x result=fail>"),
            Some(case("x", CaseResult::Fail)),
            "keys are case-insensitive"
        );
    }

    #[test]
    fn signals_that_end_the_job_in_lava() {
        for (line, reason) in [
            (
                "<LAVA_SIGNAL_TESTREFERENCE log pass http://a b>",
                "invalid TESTREFERENCE: 4 fields",
            ),
            (
                "<LAVA_SIGNAL_TESTREFERENCE log pass>",
                "invalid TESTREFERENCE: 2 fields",
            ),
            (
                "<LAVA_SIGNAL_TESTSET START>",
                "TESTSET START without a name",
            ),
            ("<LAVA_SIGNAL_STARTRUN 0_x>", "invalid STARTRUN signal"),
        ] {
            match parse_signal(line.as_bytes()) {
                Some(Signal::TestRaise(message)) => {
                    assert!(message.starts_with(reason), "{line}: {message}")
                }
                other => panic!("{line}: {other:?}"),
            }
        }
    }

    #[test]
    fn refused_signals_name_their_signal() {
        for (line, name) in [
            (
                "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=x RESULT=ok>",
                "TESTCASE",
            ),
            (
                "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=x RESULT=pass MEASUREMENT=a>",
                "TESTCASE",
            ),
            ("<LAVA_SIGNAL_TESTCASE RESULT=pass>", "TESTCASE"),
            ("<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=x>", "TESTCASE"),
            ("<LAVA_SIGNAL_TESTCASE x>", "TESTCASE"),
            ("<LAVA_SIGNAL_TESTREFERENCE a ok u>", "TESTREFERENCE"),
            ("<LAVA_SIGNAL_TESTREFERENCE a pass>", "TESTREFERENCE"),
            ("<LAVA_SIGNAL_TESTSET START>", "TESTSET"),
            ("<LAVA_SIGNAL_STARTRUN x>", "STARTRUN"),
            ("<LAVA_SIGNAL_ENDRUN x>", "ENDRUN"),
        ] {
            match read_signal(line.as_bytes(), None) {
                Err(e) => assert_eq!(e.signal(), name, "{line}"),
                other => panic!("{line}: {other:?}"),
            }
        }
    }

    #[test]
    fn references_keep_lava_words_and_the_old_keyed_form() {
        assert_eq!(
            parse_signal(b"<LAVA_SIGNAL_TESTREFERENCE log PASS http://x>"),
            None,
            "LAVA does not fix up reference results"
        );
        assert_eq!(
            parse_signal(b"<LAVA_SIGNAL_TESTREFERENCE TEST_CASE_ID=x RESULT=skip REFERENCE=u>"),
            Some(Signal::TestReference {
                id: "x".into(),
                result: CaseResult::Skip,
                reference: "u".into()
            })
        );
    }

    #[test]
    fn set_names_lava_refuses_file_cases_under_no_set() {
        assert_eq!(
            parse_signal(b"<LAVA_SIGNAL_TESTSET START a/b.c-d_e~f>"),
            Some(Signal::TestSetStart("a/b.c-d_e~f".into()))
        );
        assert_eq!(
            parse_signal(b"<LAVA_SIGNAL_TESTSET START a+b>"),
            Some(Signal::TestSetStop)
        );
        assert_eq!(
            parse_signal(b"<LAVA_SIGNAL_TESTSET START first second>"),
            Some(Signal::TestSetStart("first".into())),
            "LAVA takes the first word"
        );
    }

    #[test]
    fn fields_end_at_the_first_angle_bracket() {
        assert_eq!(
            parse_signal(b"<LAVA_SIGNAL_TESTRAISE a> b>"),
            Some(Signal::TestRaise("a".into()))
        );
        assert_eq!(
            parse_signal(b"noise <LAVA_SIGNAL_TESTSET> <LAVA_SIGNAL_TESTSET STOP>"),
            None,
            "LAVA's pattern reads the name `TESTSET>` here, which is no signal"
        );
        assert_eq!(
            parse_signal(b"noise <LAVA_SIGNAL_ <LAVA_SIGNAL_TESTSET STOP>"),
            Some(Signal::TestSetStop),
            "a broken marker does not hide a later signal"
        );
    }

    #[test]
    fn not_signals() {
        assert_eq!(parse_signal(b"plain output"), None);
        assert_eq!(parse_signal(b"<LAVA_SIGNAL_BOGUS a b>"), None);
        assert_eq!(parse_signal(b"<LAVA_SIGNAL_TESTEVENT something>"), None);
        assert_eq!(parse_signal(b"<LAVA_SIGNAL_TESTCASE RESULT=pass"), None);
        assert_eq!(parse_signal(b"<LAVA_SIGNAL_TESTSET STOP"), None);
        assert_eq!(read_signal(b"<LAVA_SIGNAL_STARTTC  >", None), Ok(None));
    }

    #[test]
    fn huge_fields_are_cut() {
        let long = "a".repeat(10_000);
        let line = format!("<LAVA_SIGNAL_TESTCASE TEST_CASE_ID={long} RESULT=unknown>");
        match parse_signal(line.as_bytes()) {
            Some(Signal::TestCase { id, result, .. }) => {
                assert_eq!(id.len(), MAX_FIELD);
                assert_eq!(result, CaseResult::Unknown);
            }
            other => panic!("{other:?}"),
        }
        let raise = format!("<LAVA_SIGNAL_TESTREFERENCE {long} pass x y>");
        match parse_signal(raise.as_bytes()) {
            Some(Signal::TestRaise(m)) => assert!(m.len() <= MAX_FIELD),
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
