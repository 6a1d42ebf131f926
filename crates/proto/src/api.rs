//! Bodies of the REST API under `/api/v1` and of its WebSocket streams.
//!
//! Routes (every one but `/healthz` needs `Authorization: Bearer TOKEN`):
//!
//! | method and path | role | body -> answer |
//! |---|---|---|
//! | `GET /healthz` | none | `ok` |
//! | `GET /api/v1/whoami` | any | [`WhoAmI`] |
//! | `POST /api/v1/tokens` | admin | [`CreateToken`] -> [`CreatedToken`] |
//! | `GET /api/v1/tokens` | admin | [`TokenView`] list |
//! | `DELETE /api/v1/tokens/{id}` | admin | -> [`TokenView`] (revoked) |
//! | `GET /api/v1/users` | admin | [`UserView`] list |
//! | `PUT /api/v1/users/{name}/groups/{group}` | admin | -> [`UserView`] (member now) |
//! | `DELETE /api/v1/users/{name}/groups/{group}` | admin | -> [`UserView`] (not a member now) |
//! | `POST /api/v1/jobs` | user, admin | [`SubmitJob`] -> [`JobView`] (201) |
//! | `GET /api/v1/jobs` | user, admin | [`JobView`] list (visible ones) |
//! | `GET /api/v1/jobs/{id}` | user, admin | [`JobView`] |
//! | `POST /api/v1/jobs/{id}/cancel` | owner, admin | -> [`JobView`] |
//! | `GET /api/v1/jobs/{id}/definition` | user, admin | the job file as submitted (text) |
//! | `GET /api/v1/jobs/{id}/logs?cursor=N&limit=M` | user, admin | [`LogPage`] |
//! | `GET /api/v1/jobs/{id}/logs/follow?cursor=N` | user, admin | WebSocket of [`FollowEvent`] |
//! | `GET /api/v1/jobs/{id}/results` | user, admin | [`JobResults`] |
//! | `GET /api/v1/devices` | user, admin | [`DeviceView`] list |
//! | `GET /api/v1/agents` | user, admin | [`AgentView`] list |
//! | device details, states, tags; the audit | | see [`crate::admin`] |
//! | `GET /api/v1/agent/link` | agent | WebSocket of the agent link ([`crate::link`]) |
//! | `POST /api/v1/leases` | user, admin | [`AcquireLease`] -> [`LeaseView`] (201: waiting with a position, or held) |
//! | `GET /api/v1/leases?all=BOOL` | user, admin | [`LeaseView`] list (own; admins: everyone's) |
//! | `GET /api/v1/leases/{id}?wait=SECONDS` | holder, admin | [`LeaseView`] (with `wait`: once it is no longer waiting, or after that long) |
//! | `POST /api/v1/leases/{id}/renew` | holder, admin | [`RenewLease`] -> [`LeaseView`] |
//! | `POST /api/v1/leases/{id}/release` | holder, admin | -> [`LeaseView`] (ended) |
//! | `GET /api/v1/leases/{id}/power` | holder, admin | [`PowerView`] |
//! | `POST /api/v1/leases/{id}/power` | holder, admin | [`PowerRequest`] -> [`PowerView`] |
//! | `POST /api/v1/leases/{id}/flash` | holder, admin | [`FlashRequest`] -> [`FlashView`] |
//! | `GET /api/v1/leases/{id}/screenshot` | holder, admin | `image/png` |
//!
//! Errors are [`ApiError`] with status 400 (bad input, the field named), 401 (no or bad token),
//! 403 (wrong role, or another user's private job or lease), 404, 409 (state does not allow
//! it), 410 (the lease has ended: renew and release of an ended lease), 413 (body too large),
//! 429 (a quota of the caller's user is reached: [`ApiError::quota`] names it, with limit and
//! usage).

use crate::ids::{JobId, Millis, PersonLeaseId, PrincipalId, Seq};
use crate::log::LogRecord;
use crate::state::{DeviceState, JobState, LeaseEnd, PersonLeaseState, RetryPolicy, Role};
use crate::visibility::{GroupName, Visibility};
use crate::{JobReport, Outcome};
use serde::{Deserialize, Serialize};

/// Largest job file accepted by `POST /api/v1/jobs`, in bytes.
pub const MAX_JOB_BODY: usize = 1 << 20;

/// Default size cap of one artifact (`dutlab serve --max-artifact-bytes`), 4 GiB.
pub const DEFAULT_MAX_ARTIFACT: u64 = 4 << 30;

/// A stored artifact: the answer of `PUT /api/v1/artifacts/sha256/{hex}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArtifactView {
    /// The content's SHA-256, 64 lowercase hexadecimal digits.
    pub sha256: String,
    pub size: u64,
}

/// Most records one `GET .../logs` answers with.
pub const MAX_LOG_PAGE: usize = 10_000;

/// Any error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiError {
    /// What went wrong, for people.
    pub error: String,
    /// Device types known to the lab (only when a job asked for an unknown one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub known_device_types: Vec<String>,
    /// Status 429: the quota that refused the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaExceeded>,
}

impl ApiError {
    /// An error with only a message.
    pub fn new(error: impl Into<String>) -> ApiError {
        ApiError {
            error: error.into(),
            known_device_types: Vec::new(),
            quota: None,
        }
    }
}

/// A per-user quota (`dutlab serve --quota-...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Quota {
    /// Jobs of one user not finished yet (queued, assigned, running, canceling).
    QueuedJobs,
    /// Bytes of one job definition.
    JobDefinitionBytes,
    /// Bytes of the definitions of one user's jobs not finished yet.
    QueuedDefinitionBytes,
    /// Bytes of the artifacts one user keeps in the store.
    ArtifactBytes,
}

impl Quota {
    pub fn as_str(self) -> &'static str {
        match self {
            Quota::QueuedJobs => "queued-jobs",
            Quota::JobDefinitionBytes => "job-definition-bytes",
            Quota::QueuedDefinitionBytes => "queued-definition-bytes",
            Quota::ArtifactBytes => "artifact-bytes",
        }
    }
}

impl std::fmt::Display for Quota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a 429 says: which quota, its limit, what the user holds now, and what the refused
/// request would have added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QuotaExceeded {
    pub quota: Quota,
    pub limit: u64,
    pub usage: u64,
    pub requested: u64,
}

/// Who the token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WhoAmI {
    /// The token's own name.
    pub name: String,
    pub role: Role,
    /// The user (principal) the token speaks for (empty from controllers before principals).
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub principal: PrincipalId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateToken {
    /// Who or what uses the token (a person, a CI system, an agent's name).
    pub name: String,
    pub role: Role,
    /// Role `agent` only: the one agent name this token may say in its hello (default: `name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The user (principal) the token speaks for (default: `name`). Made when no user of that
    /// name exists; otherwise the token is one more token of that user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// Whether `POST /api/v1/tokens` made the token's user or found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum UserOrigin {
    Created,
    Existing,
}

/// A user (principal) as listed: who tokens speak for and who owns jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserView {
    pub id: PrincipalId,
    /// Unique.
    pub name: String,
    /// Groups the user is a member of (job `visibility: {group: [...]}`).
    #[serde(default)]
    pub groups: Vec<GroupName>,
    pub created_at: Millis,
}

/// A token as listed: never the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenView {
    /// Short public id (also the first characters of the secret after `dutlab_`).
    pub id: String,
    pub name: String,
    pub role: Role,
    /// The user (principal) it speaks for (empty from controllers before principals).
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub principal: PrincipalId,
    /// Role `agent`: the agent name the token is bound to. An agent token without one was made
    /// by an older controller and is refused until it is re-created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    pub created_at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Millis>,
}

/// Answer to `POST /api/v1/tokens`: the only time the secret is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedToken {
    pub token: String,
    pub view: TokenView,
    /// Whether the token's user was made by this request.
    pub user: UserOrigin,
}

/// Body of `POST /api/v1/jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SubmitJob {
    /// The job file (LAVA job YAML), as text.
    pub definition: String,
    /// Name of the job file, used in error messages.
    #[serde(default)]
    pub file_name: Option<String>,
    /// Queue even when no device of the job's type is registered yet.
    #[serde(default)]
    pub wait_for_device: bool,
    /// Run it again once on another device if it ends `infra-error` (default never).
    #[serde(default, skip_serializing_if = "RetryPolicy::is_never")]
    pub retry: RetryPolicy,
}

/// A job as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobView {
    pub id: JobId,
    pub name: String,
    pub device_type: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// 0 (low) to 100 (high).
    pub priority: u8,
    /// `"public"`, `"personal"` or `{"group": [names]}`.
    pub visibility: Visibility,
    /// Name of the user that submitted it.
    pub owner: String,
    /// Id of that user (what visibility and cancel decisions use).
    pub owner_id: PrincipalId,
    pub state: JobState,
    /// Set once the job is finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Why it ended that way (empty when it passed).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The device it ran or runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    pub submitted_at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Millis>,
    /// Warnings found when the job file was parsed (unknown keys ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// 0-based place among everything waiting (jobs and people's leases), while queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<usize>,
    /// A rough estimate of when a queued job starts: recent run times of its device type and
    /// the devices freeing in turn (absent when nothing of its type has run yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_start: Option<Millis>,
    /// What happens after an infra error.
    #[serde(default, skip_serializing_if = "RetryPolicy::is_never")]
    pub retry: RetryPolicy,
    /// The job this one runs again (after its infra error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<JobId>,
    /// The job that runs this one again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retried_as: Option<JobId>,
    /// Devices it may not run on (a retry's: where the infra error happened).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub avoid_devices: Vec<String>,
    /// The MultiNode group it is a sub-job of (LAVA's `ID.N`: `group.id`.`group.index`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<JobGroup>,
}

/// A sub-job's MultiNode group. Sub-jobs of a group have consecutive ids from the group's
/// id (sub-job N is job `id + N`), one submitter and one visibility.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobGroup {
    /// The group: the id of its sub-job 0.
    pub id: JobId,
    /// This sub-job's index in the group, from 0.
    pub index: u32,
    /// The role it plays.
    pub role: String,
    /// Every sub-job of the group by index (this one included), with its role.
    pub jobs: Vec<GroupMember>,
}

/// One sub-job of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GroupMember {
    pub job: JobId,
    pub role: String,
}

/// A page of a job's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogPage {
    pub records: Vec<LogRecord>,
    /// Pass as `cursor` to read on: the highest sequence number returned (or the cursor given).
    pub cursor: Seq,
    /// The job is finished and every record was returned.
    pub complete: bool,
}

/// One message of `GET /api/v1/jobs/{id}/logs/follow`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum FollowEvent {
    /// The next log record (sequence numbers increase by one; gaps are `gap` records).
    Log { record: LogRecord },
    /// The job changed state.
    Job { job: JobView },
    /// The job is finished and every record was sent; the server closes the stream.
    End { job: JobView },
}

/// Answer to `GET /api/v1/jobs/{id}/results`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobResults {
    pub job: JobView,
    /// The runner's report, once the job is finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<JobReport>,
}

/// A device as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeviceView {
    pub name: String,
    pub device_type: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub capabilities: Vec<String>,
    pub state: DeviceState,
    /// The agent that drives it.
    pub agent: String,
    /// The job holding it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobId>,
    /// The person's lease holding it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<PersonLeaseId>,
    /// Who holds it: `job N`, or the name of the user holding it by a lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// The state an admin or the lab set (maintenance, retired, bad), why, by whom, when; also
    /// while the device finishes its lease first (`state` is then `busy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<crate::admin::DeviceNote>,
}

/// Longest `wait` of `GET /api/v1/leases/{id}`, in seconds.
pub const MAX_LEASE_WAIT_S: u64 = 60;

/// `POST /api/v1/leases`: hold a device. Exactly one of `device` or `device_type` (with
/// optional `tags`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AcquireLease {
    /// This device, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Any device of this type ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_type: Option<String>,
    /// ... with all these tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// How long the grant (and each renewal) holds the device, in seconds (default: the
    /// controller's, 30 minutes); at most the cap of the caller's role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<u64>,
    /// 0 ..= 100, like a job's (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// Public SSH keys (`authorized_keys` lines: `ssh-ed25519`, `ssh-rsa` or `ecdsa-*`, no
    /// options; at most 8) that the DUT accepts for `root` from each power-on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_keys: Vec<String>,
}

/// `POST /api/v1/leases/{id}/power`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PowerRequest {
    pub action: crate::session::PowerAction,
}

/// The power of a leased device (answer of `GET` and `POST /api/v1/leases/{id}/power`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PowerView {
    pub lease: PersonLeaseId,
    pub device: String,
    pub state: crate::session::PowerState,
}

/// `POST /api/v1/leases/{id}/flash`: an artifact the caller may use (uploaded first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FlashRequest {
    /// 64 lower-case hex digits of the artifact's SHA-256.
    pub sha256: String,
}

/// A finished flash: the image is the device's storage; its next power-on boots it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FlashView {
    pub lease: PersonLeaseId,
    pub device: String,
    pub sha256: String,
    /// Bytes of the image written.
    pub bytes: u64,
}

/// One line of `POST /api/v1/leases/{id}/flash` asked with `Accept: application/x-ndjson`:
/// progress lines while the agent fetches and writes the image, then the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FlashLine {
    /// Bytes done of the total.
    Progress { done: u64, total: u64 },
    /// The flash is done.
    Flashed(FlashView),
    /// It failed after the answer began (the status of the answer is 200 by then).
    Error(ApiError),
}

/// `POST /api/v1/leases/{id}/renew`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RenewLease {
    /// The deadline becomes now + this many seconds (default: the lease's duration), but
    /// never later than its cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<u64>,
}

/// A person's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LeaseView {
    pub id: PersonLeaseId,
    /// The user holding it (or waiting for it).
    pub holder: String,
    pub holder_id: PrincipalId,
    pub state: PersonLeaseState,
    /// What was asked for: a device by name, or a device type and tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub want_device: Option<String>,
    pub device_type: String,
    #[serde(default)]
    pub tags: Vec<String>,
    pub priority: u8,
    /// Seconds each grant or renewal holds the device.
    pub duration_s: u64,
    /// 0-based place among everything waiting (jobs too), while waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<usize>,
    /// The device it holds (held), or held last (ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    pub requested_at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_at: Option<Millis>,
    /// Its deadline: it ends then unless renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Millis>,
    /// The latest deadline renewals can reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cap_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Millis>,
    /// How it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<LeaseEnd>,
}

/// Whether an agent is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AgentState {
    Connected,
    /// Connected, but nothing heard from it for more than two heartbeat intervals (stopped,
    /// partitioned): its jobs keep their leases until the lease TTL.
    Silent,
    Disconnected,
}

/// A device of an agent and its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentDevice {
    pub name: String,
    pub state: DeviceState,
}

/// An agent as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentView {
    pub name: String,
    pub state: AgentState,
    /// dutlab version it runs.
    pub version: String,
    pub devices: Vec<String>,
    /// Its devices with their states.
    #[serde(default)]
    pub device_states: Vec<AgentDevice>,
    /// Last time the controller heard from it.
    pub last_seen: Millis,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::LogKind;

    #[test]
    fn follow_events_are_tagged() {
        let e = FollowEvent::Log {
            record: LogRecord {
                seq: Seq(1),
                at: Millis(2),
                kind: LogKind::Console,
                text: "hi".into(),
            },
        };
        let json = serde_json::to_string(&e).expect("serialises");
        assert_eq!(
            json,
            r#"{"type":"log","record":{"seq":1,"at":2,"kind":"console","text":"hi"}}"#
        );
    }
}
