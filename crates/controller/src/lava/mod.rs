//! LAVA's client-facing API over dutlab's: XML-RPC at `/RPC2` ([`rpc`], what `lavacli`
//! speaks) and REST v0.2 under `/api/v0.2/` ([`rest`]), so a lab's scripts keep working.
//!
//! ```text
//!  lavacli ──XML-RPC──> rpc  ──┐
//!  scripts ──REST v0.2──> rest ─┴─> the same dispatcher commands, policy and stores as /api/v1
//! ```
//!
//! Invariants:
//! - Nothing here decides who may read or cancel a job: every job goes through
//!   [`crate::api::visible_job`] or the dispatcher's `Cancel` with the caller's viewer, that is
//!   [`crate::policy`]. Submissions go through [`crate::api::prepare_submission`], so the
//!   checks of `POST /api/v1/jobs` (parse, runnable here, artifacts, quotas) apply unchanged.
//! - Tokens are dutlab's: lavacli's `username:token` (HTTP basic) must name the token's own
//!   user; REST's `Authorization: Token T` takes the token alone. Agent tokens are refused.
//! - The mapping of dutlab's states and outcomes onto LAVA's words lives here once
//!   ([`lava_state`], [`lava_health`]) and is written down in docs/lava-compat.md.
//! - Everything this layer writes from job or DUT text goes through [`text`] (YAML scalars,
//!   CSV fields) or the XML-RPC writer, which escape it: no text becomes structure.

pub mod rest;
pub mod rpc;
pub mod text;
pub mod xmlrpc;

use crate::AppState;
use crate::api::ApiFailure;
use crate::auth::Caller;
use axum::http::StatusCode;
use proto::api::{DeviceView, JobView};
use proto::log::{LogKind, LogRecord};
use proto::{
    CaseResult, DeviceState, JobId, JobReport, JobState, Millis, Outcome, Seq, Visibility,
};
use text::Yaml;

/// The LAVA release whose API this layer follows (lavacli gates commands on it).
pub const LAVA_API_VERSION: &str = "2025.12";

/// What `system.version` answers: the LAVA version followed, then dutlab's own.
pub fn version() -> String {
    format!("{LAVA_API_VERSION}+dutlab.{}", env!("CARGO_PKG_VERSION"))
}

/// LAVA's job states: `Submitted`, `Scheduling` (never: no MultiNode), `Scheduled`,
/// `Running`, `Canceling`, `Finished`.
pub fn lava_state(state: JobState) -> &'static str {
    match state {
        JobState::Queued => "Submitted",
        JobState::Assigned => "Scheduled",
        JobState::Running => "Running",
        JobState::Canceling => "Canceling",
        JobState::Finished => "Finished",
    }
}

/// The dutlab states a LAVA state word names (case-insensitive, as LAVA's `capitalize`);
/// `None` for a word LAVA does not know.
pub fn states_named(word: &str) -> Option<Vec<JobState>> {
    Some(match word.to_ascii_lowercase().as_str() {
        "submitted" => vec![JobState::Queued],
        "scheduling" => vec![],
        "scheduled" => vec![JobState::Assigned],
        "running" => vec![JobState::Running],
        "canceling" => vec![JobState::Canceling],
        "finished" => vec![JobState::Finished],
        _ => return None,
    })
}

/// LAVA's job health: `Unknown` until finished; `Complete` when the job ran to its end
/// (passed, or test cases failed), `Incomplete` when it could not (timed out, bad job,
/// lab failure), `Canceled`.
pub fn lava_health(outcome: Option<Outcome>) -> &'static str {
    match outcome {
        None => "Unknown",
        Some(Outcome::Passed | Outcome::Failed) => "Complete",
        Some(Outcome::TimedOut | Outcome::JobError | Outcome::InfraError) => "Incomplete",
        Some(Outcome::Canceled) => "Canceled",
    }
}

/// Whether a LAVA health word (case-insensitive) names this job's health; `None` for a
/// word LAVA does not know.
pub fn health_matches(word: &str, outcome: Option<Outcome>) -> Option<bool> {
    let word = word.to_ascii_lowercase();
    if !["unknown", "complete", "incomplete", "canceled"].contains(&word.as_str()) {
        return None;
    }
    Some(lava_health(outcome).eq_ignore_ascii_case(&word))
}

/// LAVA's `error_type` for an outcome (`None` when there was no error).
pub fn error_type(outcome: Option<Outcome>) -> Option<&'static str> {
    match outcome? {
        Outcome::Passed | Outcome::Failed => None,
        Outcome::TimedOut | Outcome::JobError => Some("Job"),
        Outcome::InfraError => Some("Infrastructure"),
        Outcome::Canceled => Some("Canceled"),
    }
}

/// LAVA's visibility words: `Public`, `Personal`, `Group (a, b)`.
pub fn visibility_text(v: &Visibility) -> String {
    match v {
        Visibility::Public => "Public".into(),
        Visibility::Personal => "Personal".into(),
        Visibility::Group(groups) => {
            let names: Vec<&str> = groups.iter().map(|g| g.as_str()).collect();
            format!("Group ({})", names.join(", "))
        }
    }
}

/// LAVA's device state and health for a dutlab device: idle devices are `Idle`/`Good`, busy
/// ones `Running`/`Good`, offline ones (agent gone) `Idle`/`Unknown`, and devices waiting for
/// their agent to confirm teardown `Idle`/`Bad` (LAVA schedules neither); the states an
/// admin or the lab set are LAVA's healths of the same names.
pub fn device_state(d: &DeviceView) -> (&'static str, &'static str) {
    match d.state {
        DeviceState::Idle => ("Idle", "Good"),
        DeviceState::Busy => ("Running", "Good"),
        DeviceState::Offline => ("Idle", "Unknown"),
        DeviceState::NeedsCheck => ("Idle", "Bad"),
        DeviceState::Maintenance => ("Idle", "Maintenance"),
        DeviceState::Retired => ("Idle", "Retired"),
        DeviceState::Bad => ("Idle", "Bad"),
    }
}

/// Date and time of `at` in UTC: (year, month, day, hour, minute, second, microsecond).
fn civil(at: Millis) -> (i64, u32, u32, u32, u32, u32, u32) {
    let secs = (at.0 / 1000) as i64;
    let micros = ((at.0 % 1000) * 1000) as u32;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400) as u32;
    // Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        micros,
    )
}

/// `2026-01-02T03:04:05.678000` (UTC, as LAVA's log lines carry `dt`).
pub fn iso(at: Millis) -> String {
    let (y, mo, d, h, mi, s, us) = civil(at);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{us:06}")
}

/// `20260102T03:04:05` (XML-RPC's `dateTime.iso8601`, UTC).
pub fn xmlrpc_time(at: Millis) -> String {
    let (y, mo, d, h, mi, s, _) = civil(at);
    format!("{y:04}{mo:02}{d:02}T{h:02}:{mi:02}:{s:02}")
}

/// `2026-01-02 03:04:05.678000+00:00` (Python's `str(datetime)`, as LAVA's job lists show).
pub fn python_time(at: Millis) -> String {
    let (y, mo, d, h, mi, s, us) = civil(at);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}+00:00")
}

/// One log record as a LAVA log line (`dt`, `lvl`, `msg`). Console text is `target`, typed
/// text `input`, test cases `results` (with `definition`, `case`, `result`), actions and
/// notes `info`, lost records `warning`.
pub fn log_line(r: &LogRecord) -> Yaml {
    let (lvl, msg) = match r.kind {
        LogKind::Console => ("target", Yaml::str(&r.text)),
        LogKind::Input => ("input", Yaml::str(&r.text)),
        LogKind::Action => ("info", Yaml::str(format!("start: {}", r.text))),
        LogKind::Case => match parse_case(&r.text) {
            Some((suite, case, result, rest)) => {
                let mut m = vec![
                    ("definition", Yaml::str(suite)),
                    ("case", Yaml::str(case)),
                    ("result", Yaml::str(result.as_str())),
                ];
                if let Some(rest) = rest {
                    let mut words = rest.splitn(2, ' ');
                    if let Some(measurement) = words.next() {
                        m.push(("measurement", Yaml::str(measurement)));
                    }
                    if let Some(units) = words.next() {
                        m.push(("units", Yaml::str(units)));
                    }
                }
                ("results", Yaml::Map(m))
            }
            None => ("info", Yaml::str(&r.text)),
        },
        LogKind::Note => ("info", Yaml::str(&r.text)),
        LogKind::Gap => ("warning", Yaml::str(&r.text)),
    };
    Yaml::Map(vec![
        ("dt", Yaml::str(iso(r.at))),
        ("lvl", Yaml::str(lvl)),
        ("msg", msg),
    ])
}

/// A case record's text, `suite/name: result[ measurement[ units]]`, taken apart.
fn parse_case(text: &str) -> Option<(&str, &str, CaseResult, Option<&str>)> {
    let (suite, rest) = text.split_once('/')?;
    for word in ["pass", "fail", "skip", "unknown"] {
        for sep in [format!(": {word} "), format!(": {word}")] {
            if let Some(i) = rest.rfind(&sep) {
                let tail = &rest[i + sep.len()..];
                if sep.ends_with(' ') || tail.is_empty() {
                    let measurement = (!tail.is_empty()).then_some(tail);
                    return Some((suite, &rest[..i], CaseResult::from_lava(word), measurement));
                }
            }
        }
    }
    None
}

/// Most log lines one answer carries, and about the most bytes of YAML.
pub const MAX_LOG_LINES: usize = proto::api::MAX_LOG_PAGE;
pub const MAX_LOG_BYTES: usize = 4 << 20;

/// Log lines `start..end` (0-based, end exclusive) as LAVA YAML, and whether the page
/// stopped at its own bound (lines or bytes) before `end` or the log's end.
pub async fn log_page(
    state: &AppState,
    job: JobId,
    start: u64,
    end: Option<u64>,
) -> Result<(String, bool), crate::logs::LogError> {
    let mut out = String::new();
    let mut cursor = Seq(start);
    let mut lines = 0usize;
    loop {
        let want = end.map_or(usize::MAX, |e| e.saturating_sub(cursor.0) as usize);
        let chunk = want.min(1000).min(MAX_LOG_LINES - lines);
        if chunk == 0 {
            return Ok((out, want > 0));
        }
        let records = state.logs.read(job, cursor, chunk).await?;
        if records.is_empty() {
            return Ok((out, false));
        }
        for r in &records {
            text::list_item(&mut out, &log_line(r));
            cursor = r.seq;
            lines += 1;
            if out.len() >= MAX_LOG_BYTES {
                let more = end.is_none_or(|e| cursor.0 < e);
                return Ok((out, more));
            }
        }
    }
}

/// A job's test cases as LAVA exports them (`results.*_yaml`, REST `tests/`): in report
/// order, numbered from 1.
pub struct ExportedCase<'a> {
    pub id: usize,
    pub job: JobId,
    pub case: &'a proto::TestCase,
    pub logged: Millis,
}

pub fn exported_cases<'a>(job: &JobView, report: &'a JobReport) -> Vec<ExportedCase<'a>> {
    let logged = job.finished_at.unwrap_or(job.submitted_at);
    report
        .cases
        .iter()
        .enumerate()
        .map(|(i, case)| ExportedCase {
            id: i + 1,
            job: job.id,
            case,
            logged,
        })
        .collect()
}

/// The suites of a report in order of first appearance, numbered from 1.
pub fn suites(report: &JobReport) -> Vec<(usize, &str)> {
    let mut names: Vec<&str> = Vec::new();
    for c in &report.cases {
        if !names.contains(&c.suite.as_str()) {
            names.push(&c.suite);
        }
    }
    names
        .into_iter()
        .enumerate()
        .map(|(i, n)| (i + 1, n))
        .collect()
}

/// LAVA's CSV export columns, in its order.
pub const CSV_FIELDS: [&str; 15] = [
    "job",
    "suite",
    "result",
    "measurement",
    "unit",
    "duration",
    "timeout",
    "logged",
    "level",
    "metadata",
    "url",
    "name",
    "id",
    "log_start_line",
    "log_end_line",
];

impl ExportedCase<'_> {
    fn metadata(&self) -> Yaml {
        let mut m = vec![
            ("definition", Yaml::str(&self.case.suite)),
            ("case", Yaml::str(&self.case.name)),
            ("result", Yaml::str(self.case.result.as_str())),
        ];
        if let Some(set) = &self.case.set {
            m.push(("set", Yaml::str(set)));
        }
        if let Some(reference) = &self.case.reference {
            m.push(("reference", Yaml::str(reference)));
        }
        Yaml::Map(m)
    }

    /// LAVA's `export_testcase` fields.
    pub fn yaml(&self) -> Yaml {
        Yaml::Map(vec![
            ("name", Yaml::str(&self.case.name)),
            ("job", Yaml::str(self.job.to_string())),
            ("suite", Yaml::str(&self.case.suite)),
            ("result", Yaml::str(self.case.result.as_str())),
            (
                "measurement",
                Yaml::str(self.case.measurement.as_deref().unwrap_or("None")),
            ),
            ("unit", Yaml::str(self.case.units.as_deref().unwrap_or(""))),
            ("level", Yaml::str("")),
            ("url", Yaml::str(self.url())),
            ("id", Yaml::str(self.id.to_string())),
            ("logged", Yaml::str(python_time(self.logged))),
            ("log_start_line", Yaml::str("")),
            ("log_end_line", Yaml::str("")),
            ("metadata", self.metadata()),
        ])
    }

    pub fn url(&self) -> String {
        format!(
            "/results/{}/{}/{}",
            self.job, self.case.suite, self.case.name
        )
    }

    /// One CSV row in [`CSV_FIELDS`] order.
    pub fn csv(&self, out: &mut String) {
        let mut metadata = String::new();
        if let Yaml::Map(_) = self.metadata() {
            text::list_item(&mut metadata, &self.metadata());
        }
        let metadata = metadata.trim_start_matches("- ").trim_end();
        text::csv_row(
            out,
            &[
                &self.job.to_string(),
                &self.case.suite,
                self.case.result.as_str(),
                self.case.measurement.as_deref().unwrap_or("None"),
                self.case.units.as_deref().unwrap_or(""),
                "",
                "",
                &python_time(self.logged),
                "",
                metadata,
                &self.url(),
                &self.case.name,
                &self.id.to_string(),
                "",
                "",
            ],
        );
    }
}

/// The cases as CSV, header first.
pub fn cases_csv(cases: &[&ExportedCase<'_>]) -> String {
    let mut out = String::new();
    text::csv_row(&mut out, &CSV_FIELDS);
    for c in cases {
        c.csv(&mut out);
    }
    out
}

/// A job's report, if it has one (finished jobs).
pub async fn report(state: &AppState, job: JobId) -> Result<Option<JobReport>, ApiFailure> {
    state
        .store
        .report(job)
        .await
        .map(|r| r.map(|(report, _)| report))
        .map_err(|e| ApiFailure::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
}

/// The caller of a token given alone (REST's `Token T`, or a bearer): live tokens only.
pub fn caller_of_token(state: &AppState, token: &str) -> Option<Caller> {
    state.tokens.caller(&format!("Bearer {}", token.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_civil_dates() {
        // 2026-01-02T03:04:05.678 UTC
        let at = Millis(1_767_323_045_678);
        assert_eq!(iso(at), "2026-01-02T03:04:05.678000");
        assert_eq!(xmlrpc_time(at), "20260102T03:04:05");
        assert_eq!(python_time(at), "2026-01-02 03:04:05.678000+00:00");
        assert_eq!(iso(Millis(0)), "1970-01-01T00:00:00.000000");
        // A leap day.
        assert_eq!(xmlrpc_time(Millis(951_782_400_000)), "20000229T00:00:00");
    }

    #[test]
    fn states_and_healths_are_lava_words() {
        assert_eq!(lava_state(JobState::Queued), "Submitted");
        assert_eq!(lava_state(JobState::Assigned), "Scheduled");
        assert_eq!(states_named("SCHEDULING"), Some(vec![]));
        assert_eq!(states_named("running"), Some(vec![JobState::Running]));
        assert_eq!(states_named("queued"), None);
        assert_eq!(lava_health(None), "Unknown");
        assert_eq!(lava_health(Some(Outcome::Failed)), "Complete");
        assert_eq!(lava_health(Some(Outcome::InfraError)), "Incomplete");
        assert_eq!(lava_health(Some(Outcome::Canceled)), "Canceled");
        assert_eq!(
            health_matches("INCOMPLETE", Some(Outcome::TimedOut)),
            Some(true)
        );
        assert_eq!(
            health_matches("complete", Some(Outcome::TimedOut)),
            Some(false)
        );
        assert_eq!(health_matches("broken", None), None);
    }

    #[test]
    fn case_records_become_results_lines() {
        for (text, want) in [
            (
                "0_smoke/uname: pass",
                Some(("0_smoke", "uname", CaseResult::Pass, None)),
            ),
            (
                "0_smoke/speed: fail 12.5 MB/s",
                Some(("0_smoke", "speed", CaseResult::Fail, Some("12.5 MB/s"))),
            ),
            (
                "lava/job: unknown",
                Some(("lava", "job", CaseResult::Unknown, None)),
            ),
            ("no slash: pass", None),
            ("a/b: maybe", None),
        ] {
            assert_eq!(parse_case(text), want, "{text}");
        }
        let line = log_line(&LogRecord {
            seq: Seq(1),
            at: Millis(0),
            kind: LogKind::Case,
            text: "0_smoke/speed: pass 3 s".into(),
        });
        let mut out = String::new();
        text::list_item(&mut out, &line);
        assert_eq!(
            out,
            "- {\"dt\": \"1970-01-01T00:00:00.000000\", \"lvl\": \"results\", \"msg\": {\"definition\": \"0_smoke\", \"case\": \"speed\", \"result\": \"pass\", \"measurement\": \"3\", \"units\": \"s\"}}\n"
        );
    }
}
