//! `test: monitors:`: LAVA's `lava-test-monitor`, watching the console for results printed
//! without LAVA's helpers (kernel self-tests at boot, a firmware's self-check).
//!
//! ```text
//!  per monitor: wait for `start` ─> watch: first of `end` | `pattern` ─┬ end: next monitor
//!                                        ^                              └ pattern: a case
//!                                        └──────────────────────────────┘
//! ```
//!
//! Invariants:
//! - Nothing is typed on the console.
//! - `start` must come before the connection (or action) timeout: else the job ends timed
//!   out (LAVA: a job error, "wait for prompt timed out"). While watching, each wait ends at
//!   the connection timeout, counted from the last match: when it passes, the monitor stops
//!   with a note and the next one starts, as in LAVA; the action's deadline ends the job.
//! - A case follows LAVA's rules: the suite is the monitor's name lower-cased with spaces as
//!   `-`; the id is `test_case_id` stripped, lower-cased, runs of non-word characters as `_`;
//!   the result goes through `fixupdict` and must then be `pass`, `fail`, `skip` or
//!   `unknown`; without a `result` group, a `measurement` that is a number gives a pass.
//!   Anything else is dropped with a note. Fields are bounded and control characters removed.
//! - `expected` works as for interactive scripts (unexpected cases fail, missing ones are
//!   added as fails).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use driver::expect::ExpectError;
use jobspec::{Monitor, console_pattern};
use proto::{CaseResult, TestCase};

use crate::interactive::Sink;
use crate::session::DutShell;
use crate::signals::{MAX_FIELD, result_word};
use crate::{JobEnd, Limit};

static NON_WORD: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(r"\W+").expect("a valid pattern"));

/// Runs the monitors of one test action (`field` is its `actions[N].test`), each wait also
/// bounded by a fresh `connection()` limit.
pub(crate) async fn run_monitors(
    shell: &mut DutShell,
    monitors: &[Monitor],
    field: &str,
    limit: Limit,
    connection: impl Fn() -> Limit,
    sink: &mut Sink<'_>,
) -> Result<(), JobEnd> {
    for (i, monitor) in monitors.iter().enumerate() {
        let field = format!("{field}.monitors[{i}]");
        let compile = |what: &str, p: &str| {
            console_pattern(p).map_err(|e| JobEnd::job_error(format!("{field}.{what}: {p:?}: {e}")))
        };
        let (start, end, pattern) = (
            compile("start", &monitor.start)?,
            compile("end", &monitor.end)?,
            compile("pattern", &monitor.pattern)?,
        );
        let suite = monitor.name.replace(' ', "-").to_lowercase();
        let mut reported = BTreeMap::new();
        let console = shell.console().expect_mut();
        let watched = async {
            let wait = limit.min(connection());
            console
                .expect(&[&start], wait.at)
                .await
                .map_err(|e| wait.expect_error(e))?;
            loop {
                let wait = limit.min(connection());
                let matched = match console.expect(&[&end, &pattern], wait.at).await {
                    Ok(m) => m,
                    Err(ExpectError::Timeout { .. }) if wait.at < limit.at => {
                        sink.note(format!(
                            "{suite}: nothing matched 'end' or 'pattern' within the {} timeout ({}); \
                             monitoring stopped",
                            wait.level,
                            crate::human_duration(wait.length)
                        ));
                        return Ok(());
                    }
                    Err(e) => return Err(limit.expect_error(e)),
                };
                if matched.index == 0 {
                    return Ok(());
                }
                let mut haystack = matched.before.clone();
                haystack.extend_from_slice(&matched.text);
                let Some(caps) = pattern.captures_at(&haystack, matched.before.len()) else {
                    continue;
                };
                let group = |name: &str| {
                    caps.name(name)
                        .map(|m| field_text(&String::from_utf8_lossy(m.as_bytes())))
                };
                match monitor_case(
                    &suite,
                    &monitor.fixupdict,
                    group("test_case_id"),
                    group("result"),
                    group("measurement"),
                    group("units"),
                ) {
                    Some(Ok(mut case)) => {
                        if !monitor.expected.is_empty() && !monitor.expected.contains(&case.name) {
                            sink.note(format!(
                                "{suite}: case '{}' is not in the expected list; recorded as fail",
                                case.name
                            ));
                            case.result = CaseResult::Fail;
                        }
                        reported.insert(case.name.clone(), case.result);
                        sink.case(case);
                    }
                    Some(Err(why)) => sink.note(format!("{suite}: {why}")),
                    None => {}
                }
            }
        };
        let end = watched.await;
        for name in &monitor.expected {
            if !reported.contains_key(name) {
                sink.case(TestCase::new(suite.clone(), name.clone(), CaseResult::Fail));
            }
        }
        if let Err(end) = end {
            for later in &monitors[i + 1..] {
                let suite = later.name.replace(' ', "-").to_lowercase();
                for name in &later.expected {
                    sink.case(TestCase::new(suite.clone(), name.clone(), CaseResult::Fail));
                }
            }
            return Err(end);
        }
    }
    Ok(())
}

/// DUT text as a case field: control characters removed, at most [`MAX_FIELD`] characters.
fn field_text(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(MAX_FIELD)
        .collect()
}

/// A monitor's case from its pattern's groups, as LAVA's `check_patterns` makes it. `None`:
/// the groups make no case (LAVA records nothing, silently); `Err`: LAVA refuses it with an
/// error in its log.
fn monitor_case(
    suite: &str,
    fixupdict: &BTreeMap<String, String>,
    id: Option<String>,
    result: Option<String>,
    measurement: Option<String>,
    units: Option<String>,
) -> Option<Result<TestCase, String>> {
    let name = |id: &str| {
        NON_WORD
            .replace_all(&id.trim().to_lowercase(), "_")
            .into_owned()
    };
    let case = match result {
        Some(word) => {
            let word = fixupdict.get(&word).cloned().unwrap_or(word);
            let Some(result) = result_word(&word) else {
                return Some(Err(format!(
                    "bad result \"{word}\" (pass, fail, skip or unknown); the match is dropped"
                )));
            };
            let mut case = TestCase::new(suite, name(&id?), result);
            case.measurement = measurement;
            case
        }
        None => {
            let (id, measurement) = (id?, measurement?);
            if id.is_empty() || measurement.is_empty() {
                return None;
            }
            if measurement.trim().parse::<f64>().is_err() {
                return Some(Err(format!(
                    "case {}: measurement \"{measurement}\" is not a number; the match is dropped",
                    name(&id)
                )));
            }
            let mut case = TestCase::new(suite, name(&id), CaseResult::Pass);
            case.measurement = Some(measurement.trim().to_owned());
            case
        }
    };
    let mut case = case;
    case.units = units;
    Some(Ok(case))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Option<String> {
        Some(v.to_owned())
    }

    #[test]
    fn cases_follow_lavas_rules() {
        let fix = BTreeMap::from([("PASS".to_owned(), "pass".to_owned())]);
        let case = |id, result, m| monitor_case("boot", &fix, id, result, m, None);
        let Some(Ok(c)) = case(s(" Crypto Self-Test #1 "), s("PASS"), None) else {
            panic!("no case");
        };
        assert_eq!(
            (c.suite.as_str(), c.name.as_str()),
            ("boot", "crypto_self_test_1")
        );
        assert_eq!(c.result, CaseResult::Pass);
        // No folding of the result word, as LAVA.
        assert!(matches!(case(s("a"), s("Pass"), None), Some(Err(_))));
        // A measurement alone is a pass when it is a number.
        let Some(Ok(c)) = case(s("rate"), None, s("4.5")) else {
            panic!("no case");
        };
        assert_eq!(
            (c.result, c.measurement.as_deref()),
            (CaseResult::Pass, Some("4.5"))
        );
        assert!(matches!(case(s("rate"), None, s("fast")), Some(Err(_))));
        // No id: nothing.
        assert!(case(None, s("PASS"), None).is_none());
        assert!(case(None, None, s("1")).is_none());
    }
}
