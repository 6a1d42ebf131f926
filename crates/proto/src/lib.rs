//! Wire and result types shared by every dutlab component.
//!
//! Invariants:
//! - serde only: nothing here does I/O or reads the clock; durations and times are passed in.
//! - The spelling of [`Outcome`] (`passed`, `failed`, `timed-out`, `canceled`, `job-error`,
//!   `infra-error`) is the same in JSON, in the CLI and in the web UI.
//! - Exit codes of `dutlab run` are derived from the outcome by [`Outcome::exit_code`] and nowhere else.

use serde::{Deserialize, Serialize};
use std::fmt;

pub mod admin;
pub mod api;
pub mod ids;
pub mod link;
pub mod log;
pub mod names;
pub mod session;
pub mod state;
pub mod stream;
pub mod visibility;

pub use ids::{Epoch, JobId, LeaseId, Millis, PersonLeaseId, PrincipalId, Seq};
pub use state::{DeviceState, JobState, LeaseEnd, PersonLeaseState, RetryPolicy, Role};
pub use visibility::{GroupName, Visibility};

/// How a job ended. Outcomes are data: a failed test is not an error of the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Every test case passed (or none failed).
    Passed,
    /// At least one test case failed, or the test shell raised an error.
    Failed,
    /// A job, action or connection timeout fired.
    TimedOut,
    /// Someone canceled the job (Ctrl-C locally, `job cancel` remotely).
    Canceled,
    /// The job itself is wrong: bad job file, missing image, unreadable test definition.
    JobError,
    /// The lab failed: QEMU crashed, the console was lost, an agent died.
    InfraError,
}

impl Outcome {
    /// Every outcome, in exit-code order.
    pub const ALL: [Outcome; 6] = [
        Outcome::Passed,
        Outcome::Failed,
        Outcome::TimedOut,
        Outcome::Canceled,
        Outcome::JobError,
        Outcome::InfraError,
    ];

    /// The process exit code of `dutlab run` and `dutlab job submit --follow`.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Passed => 0,
            Outcome::Failed => 1,
            Outcome::TimedOut => 2,
            Outcome::Canceled => 3,
            Outcome::JobError => 4,
            Outcome::InfraError => 5,
        }
    }

    /// The spelling used in JSON, tables and URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed-out",
            Outcome::Canceled => "canceled",
            Outcome::JobError => "job-error",
            Outcome::InfraError => "infra-error",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Exit code for command-line usage errors (bad flags), as in sysexits.h.
pub const EXIT_USAGE: i32 = 64;

/// Result of one test case as signalled by the DUT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CaseResult {
    Pass,
    Fail,
    Skip,
    Unknown,
}

impl CaseResult {
    /// Parses LAVA's result words; anything else is `Unknown` (DUT output is untrusted).
    pub fn from_lava(word: &str) -> CaseResult {
        match word.to_ascii_lowercase().as_str() {
            "pass" => CaseResult::Pass,
            "fail" => CaseResult::Fail,
            "skip" => CaseResult::Skip,
            _ => CaseResult::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CaseResult::Pass => "pass",
            CaseResult::Fail => "fail",
            CaseResult::Skip => "skip",
            CaseResult::Unknown => "unknown",
        }
    }
}

impl fmt::Display for CaseResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One test case result, as stored and exported (JSON, JUnit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TestCase {
    /// The suite: the test run id (`0_smoke`) or `lava` for the runner's own cases.
    pub suite: String,
    /// Optional test set inside the suite (`lava-test-set start NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<String>,
    pub name: String,
    pub result: CaseResult,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurement: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

impl TestCase {
    /// A case with no set, measurement or reference.
    pub fn new(suite: impl Into<String>, name: impl Into<String>, result: CaseResult) -> TestCase {
        TestCase {
            suite: suite.into(),
            set: None,
            name: name.into(),
            result,
            measurement: None,
            units: None,
            reference: None,
        }
    }
}

/// Everything a finished job reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobReport {
    pub job_name: String,
    pub outcome: Outcome,
    /// Why the job ended the way it did, for people (empty when it passed).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub cases: Vec<TestCase>,
    /// Wall-clock duration of the whole job, in seconds.
    pub duration_s: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_spellings_round_trip_through_json() {
        for o in Outcome::ALL {
            let json = serde_json::to_string(&o).expect("outcome serialises");
            assert_eq!(json, format!("\"{}\"", o.as_str()));
            let back: Outcome = serde_json::from_str(&json).expect("outcome parses");
            assert_eq!(back, o);
        }
    }

    #[test]
    fn exit_codes_are_distinct_and_documented() {
        let codes: Vec<i32> = Outcome::ALL.iter().map(|o| o.exit_code()).collect();
        assert_eq!(codes, vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn case_results_from_untrusted_words() {
        assert_eq!(CaseResult::from_lava("PASS"), CaseResult::Pass);
        assert_eq!(CaseResult::from_lava("fail"), CaseResult::Fail);
        assert_eq!(CaseResult::from_lava("<script>"), CaseResult::Unknown);
    }
}
