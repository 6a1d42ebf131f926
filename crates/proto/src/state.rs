//! Job and device states as seen on the wire. The transitions live in the scheduler crate;
//! this module only names the states, spelled the same in JSON, the CLI and the web UI.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Whether a job that ended `infra-error` is run again (chosen at submission; LAVA job
/// files have no such key, so a job file stays valid for LAVA).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum RetryPolicy {
    /// Never: the infra error is the job's outcome.
    #[default]
    Never,
    /// Once, as a new job that may not use the device the error happened on.
    OnceOnAnotherDevice,
}

impl RetryPolicy {
    pub fn is_never(&self) -> bool {
        *self == RetryPolicy::Never
    }
}

/// Where a job is in its life. `Finished` is absorbing; the outcome says how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    /// Waiting for a matching idle device.
    Queued,
    /// A device lease was granted and the agent was told to start.
    Assigned,
    /// The agent reported that the job started.
    Running,
    /// Cancel was requested; waiting for the agent to power the DUT off.
    Canceling,
    /// Ended; see the outcome.
    Finished,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Assigned => "assigned",
            JobState::Running => "running",
            JobState::Canceling => "canceling",
            JobState::Finished => "finished",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a device can take work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceState {
    /// Its agent is connected and it holds no lease.
    Idle,
    /// It holds a lease.
    Busy,
    /// Its agent is not connected.
    Offline,
    /// Something went wrong on it (its agent died mid-job, a start was refused); it takes no
    /// work until its agent confirms teardown by registering it again.
    NeedsCheck,
    /// An admin took it out of the pool for work on it; `idle` returns it.
    Maintenance,
    /// An admin took it out of the pool for good (until set `idle` again).
    Retired,
    /// The lab took it out of the pool: a health check failed on it, or it had too many
    /// infra errors in a row. A passing health check (or an admin) returns it.
    Bad,
}

impl DeviceState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Idle => "idle",
            DeviceState::Busy => "busy",
            DeviceState::Offline => "offline",
            DeviceState::NeedsCheck => "needs-check",
            DeviceState::Maintenance => "maintenance",
            DeviceState::Retired => "retired",
            DeviceState::Bad => "bad",
        }
    }

    /// The states an admin or the lab set on a device, which keep it out of the pool.
    pub fn is_out_of_service(self) -> bool {
        matches!(
            self,
            DeviceState::Maintenance | DeviceState::Retired | DeviceState::Bad
        )
    }

    pub fn parse(word: &str) -> Option<DeviceState> {
        [
            DeviceState::Idle,
            DeviceState::Busy,
            DeviceState::Offline,
            DeviceState::NeedsCheck,
            DeviceState::Maintenance,
            DeviceState::Retired,
            DeviceState::Bad,
        ]
        .into_iter()
        .find(|s| s.as_str() == word)
    }
}

impl fmt::Display for DeviceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a person's lease is in its life. `Ended` is absorbing; [`LeaseEnd`] says how.
///
/// ```text
///   (none) ──requested──> Waiting ──granted──> Held ──released / expired / ended──> Ended
///                            └───────────── withdrawn / ended ──────────────────────^
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PersonLeaseState {
    /// In the queue, waiting for a device it fits.
    Waiting,
    /// It holds a device until its deadline.
    Held,
    /// Over; the device (if it had one) went back to the pool.
    Ended,
}

impl PersonLeaseState {
    pub fn as_str(self) -> &'static str {
        match self {
            PersonLeaseState::Waiting => "waiting",
            PersonLeaseState::Held => "held",
            PersonLeaseState::Ended => "ended",
        }
    }
}

impl fmt::Display for PersonLeaseState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a person's lease ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum LeaseEnd {
    /// Its holder released it.
    Released,
    /// Its deadline passed without a renewal.
    Expired,
    /// An admin ended it (the admin's name).
    EndedBy(String),
}

impl fmt::Display for LeaseEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseEnd::Released => f.write_str("released by its holder"),
            LeaseEnd::Expired => f.write_str("expired at its deadline"),
            LeaseEnd::EndedBy(admin) => write!(f, "ended by admin {admin}"),
        }
    }
}

/// Role of a token. Checked on the server for every route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything, including tokens and other users' jobs.
    Admin,
    /// Submits jobs, reads public jobs and its own, cancels its own.
    User,
    /// Only the agent link.
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
            Role::Agent => "agent",
        }
    }

    pub fn parse(word: &str) -> Option<Role> {
        match word {
            "admin" => Some(Role::Admin),
            "user" => Some(Role::User),
            "agent" => Some(Role::Agent),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
