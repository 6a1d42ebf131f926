//! Job results as JUnit XML, JSON, and a table for people.
//!
//! Invariants:
//! - One JUnit `testsuite` per suite name, in order of first appearance; `fail` is a
//!   `failure`, `skip` is `skipped`, `unknown` is `skipped` with the message `unknown`.
//! - `unknown` is reported as LAVA reports it: neither a pass nor a failure. It does not fail
//!   the job (only `fail` does), so JUnit shows it as skipped, never as a failure or an
//!   error; the table shows `unknown` and counts it apart; JSON says `"unknown"`.
//! - A job that did not pass and has no failing case still fails in JUnit: a synthetic case
//!   `lava/job` carries the outcome and reason, so CI never reads an infra error as green.
//! - Text from the DUT (case names, measurements) goes through the XML and JSON encoders; the
//!   table neutralises control characters.

use proto::{CaseResult, JobReport, Outcome};
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
use std::time::Duration;

/// JUnit XML for a report.
pub fn junit(report: &JobReport) -> Result<String, quick_junit::SerializeError> {
    let mut junit = Report::new(report.job_name.as_str());
    junit.set_time(Duration::from_secs_f64(report.duration_s.max(0.0)));
    let mut suites: Vec<TestSuite> = Vec::new();
    for case in &report.cases {
        let status = match case.result {
            CaseResult::Pass => TestCaseStatus::success(),
            CaseResult::Skip => TestCaseStatus::skipped(),
            CaseResult::Fail => TestCaseStatus::non_success(NonSuccessKind::Failure),
            CaseResult::Unknown => {
                let mut status = TestCaseStatus::skipped();
                if let TestCaseStatus::Skipped { message, .. } = &mut status {
                    *message = Some("unknown".into());
                }
                status
            }
        };
        let mut tc = TestCase::new(case.name.as_str(), status);
        tc.set_classname(match &case.set {
            Some(set) => format!("{}.{set}", case.suite),
            None => case.suite.clone(),
        });
        if let Some(m) = &case.measurement {
            tc.add_property(("measurement", m.as_str()));
        }
        if let Some(u) = &case.units {
            tc.add_property(("units", u.as_str()));
        }
        if let Some(r) = &case.reference {
            tc.add_property(("reference", r.as_str()));
        }
        let suite = match suites.iter().position(|s| s.name.as_str() == case.suite) {
            Some(i) => &mut suites[i],
            None => {
                suites.push(TestSuite::new(case.suite.as_str()));
                suites.last_mut().expect("a suite was just pushed")
            }
        };
        suite.add_test_case(tc);
    }
    let has_failure = report.cases.iter().any(|c| c.result == CaseResult::Fail);
    if report.outcome != Outcome::Passed && !has_failure {
        let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
        if let TestCaseStatus::NonSuccess { message, ty, .. } = &mut status {
            *message = Some(report.reason.as_str().into());
            *ty = Some(report.outcome.as_str().into());
        }
        let mut suite = TestSuite::new("lava");
        suite.add_test_case(TestCase::new("job", status));
        suites.push(suite);
    }
    junit.add_test_suites(suites);
    junit.to_string()
}

/// The report as pretty JSON.
pub fn json(report: &JobReport) -> String {
    serde_json::to_string_pretty(report).expect("a report always serialises")
}

/// A plain-text table of the cases and the outcome line.
pub fn table(report: &JobReport) -> String {
    let rows: Vec<[String; 4]> = report
        .cases
        .iter()
        .map(|c| {
            let name = match &c.set {
                Some(set) => format!("{set}/{}", c.name),
                None => c.name.clone(),
            };
            let measurement = match (&c.measurement, &c.units) {
                (Some(m), Some(u)) => format!("{m} {u}"),
                (Some(m), None) => m.clone(),
                _ => String::new(),
            };
            [
                printable(&c.suite),
                printable(&name),
                c.result.as_str().to_string(),
                printable(&measurement),
            ]
        })
        .collect();
    let header = ["SUITE", "CASE", "RESULT", "MEASUREMENT"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; 4]| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(header);
    for row in &rows {
        line([&row[0], &row[1], &row[2], &row[3]]);
    }
    let count = |r| report.cases.iter().filter(|c| c.result == r).count();
    out.push_str(&format!(
        "\n{}: {} passed, {} failed, {} skipped, {} unknown in {:.1}s",
        report.outcome,
        count(CaseResult::Pass),
        count(CaseResult::Fail),
        count(CaseResult::Skip),
        count(CaseResult::Unknown),
        report.duration_s
    ));
    if !report.reason.is_empty() {
        out.push_str(&format!("\nreason: {}", printable(&report.reason)));
    }
    out.push('\n');
    out
}

/// Replaces control characters so DUT text cannot drive the terminal.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn report(outcome: Outcome, cases: Vec<proto::TestCase>) -> JobReport {
        JobReport {
            job_name: "j".into(),
            outcome,
            reason: if outcome == Outcome::Passed {
                String::new()
            } else {
                "why".into()
            },
            cases,
            duration_s: 1.0,
        }
    }

    #[test]
    fn junit_groups_suites_and_marks_failures() {
        let xml = junit(&report(
            Outcome::Failed,
            vec![
                proto::TestCase::new("0_a", "x", CaseResult::Pass),
                proto::TestCase::new("0_a", "y<&>", CaseResult::Fail),
                proto::TestCase::new("1_b", "z", CaseResult::Skip),
            ],
        ))
        .unwrap();
        assert_eq!(xml.matches("<testsuite ").count(), 2, "{xml}");
        assert!(xml.contains("<failure"), "{xml}");
        assert!(xml.contains("y&lt;&amp;&gt;"), "{xml}");
        assert!(!xml.contains("name=\"job\""), "{xml}");
    }

    #[test]
    fn junit_reports_infra_errors_without_cases() {
        let xml = junit(&report(Outcome::InfraError, vec![])).unwrap();
        assert!(xml.contains("name=\"job\""), "{xml}");
        assert!(xml.contains("infra-error"), "{xml}");
    }

    #[test]
    fn table_neutralises_escapes() {
        let t = table(&report(
            Outcome::Passed,
            vec![proto::TestCase::new(
                "0_a",
                "evil\u{1b}[2J",
                CaseResult::Pass,
            )],
        ));
        assert!(!t.contains('\u{1b}'));
        assert!(
            t.contains("passed: 1 passed, 0 failed, 0 skipped, 0 unknown in 1.0s"),
            "{t}"
        );
    }

    #[test]
    fn unknown_is_neither_a_pass_nor_a_failure_everywhere() {
        let r = report(
            Outcome::Passed,
            vec![
                proto::TestCase::new("0_a", "ok", CaseResult::Pass),
                proto::TestCase::new("0_a", "maybe", CaseResult::Unknown),
            ],
        );
        let xml = junit(&r).unwrap();
        assert!(xml.contains("failures=\"0\""), "{xml}");
        assert!(xml.contains("errors=\"0\""), "{xml}");
        assert!(xml.contains("skipped=\"1\""), "{xml}");
        assert!(xml.contains("<skipped message=\"unknown\""), "{xml}");
        assert!(
            !xml.contains("name=\"job\""),
            "a passed job gets no lava/job case: {xml}"
        );
        let t = table(&r);
        assert!(
            t.lines()
                .any(|l| l.split_whitespace().eq(["0_a", "maybe", "unknown"])),
            "{t}"
        );
        assert!(
            t.contains("passed: 1 passed, 0 failed, 0 skipped, 1 unknown"),
            "{t}"
        );
        let v: serde_json::Value = serde_json::from_str(&json(&r)).unwrap();
        assert_eq!(v["outcome"], "passed");
        assert_eq!(v["cases"][1]["result"], "unknown");
    }

    #[test]
    fn a_failed_job_with_only_unknown_cases_still_fails_in_junit() {
        let xml = junit(&report(
            Outcome::Failed,
            vec![proto::TestCase::new("0_a", "maybe", CaseResult::Unknown)],
        ))
        .unwrap();
        assert!(xml.contains("name=\"job\""), "{xml}");
    }
}
