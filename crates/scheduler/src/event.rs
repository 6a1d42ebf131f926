//! What the scheduler records: job specs and the events of its log.

use proto::link::DeviceInfo;
use proto::{
    DeviceState, Epoch, JobId, LeaseEnd, LeaseId, Millis, Outcome, PersonLeaseId, PrincipalId,
    RetryPolicy,
};
use serde::{Deserialize, Serialize};

/// Highest job priority.
pub const MAX_PRIORITY: u8 = 100;

/// What a waiter (a job, or a person's lease request) needs from a device, how urgent it
/// is, and whom it is for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub device_type: String,
    /// Every one must be among the device's tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// 0 ..= [`MAX_PRIORITY`]; higher is served first.
    pub priority: u8,
    /// The user it is for, for fair share between users. `None` (events of older
    /// controllers) counts as one more user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<PrincipalId>,
    /// Only this device (a person's lease of a device by name, a health check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// What the job is for: a health check's outcome decides its device's state.
    #[serde(default, skip_serializing_if = "JobPurpose::is_ordinary")]
    pub purpose: JobPurpose,
    /// Never these devices (a retry avoids the device its first run failed on).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub avoid: Vec<String>,
    /// Whether an infra error runs it again (the dispatcher submits the retry).
    #[serde(default, skip_serializing_if = "RetryPolicy::is_never")]
    pub retry: RetryPolicy,
    /// The job this one runs again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<JobId>,
    /// The MultiNode group this job is a sub-job of (see [`crate::groups`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupRef>,
}

/// A sub-job's place in its MultiNode group: the group is named by its first sub-job's id,
/// the sub-job by its index in the roster (LAVA's `ID.N`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRef {
    /// The group: the id of its sub-job 0.
    pub id: JobId,
    /// This sub-job's index in the group, from 0.
    pub index: u32,
    /// How many sub-jobs the group has.
    pub size: u32,
    /// The role this sub-job plays.
    pub role: String,
    /// A secondary connection (a `connection: ssh` role): the index of the sub-job on whose
    /// device it runs, over SSH, with a lease of its own but no device of its own
    /// (see [`crate::groups`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<u32>,
}

/// What a job is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobPurpose {
    /// A user's job.
    #[default]
    Ordinary,
    /// The lab's health check of its (one, named) device: passing returns a `bad` device to
    /// the pool, any other outcome but `canceled` makes it `bad`.
    HealthCheck,
}

impl JobPurpose {
    pub fn is_ordinary(&self) -> bool {
        *self == JobPurpose::Ordinary
    }
}

impl JobSpec {
    /// Whether a waiter with this spec can have `device`: same device type, the waiter's tags
    /// are a subset of the device's, and the device is the named one if one is named.
    pub fn fits(&self, device: &DeviceInfo) -> bool {
        device.device_type == self.device_type
            && self.tags.iter().all(|t| device.tags.contains(t))
            && self.device.as_ref().is_none_or(|d| *d == device.name)
            && !self.avoid.contains(&device.name)
    }
}

/// Who holds a lease: a job, or a person (through a lease request).
///
/// Flattened into `LeaseGranted`: a job's grant reads `"job": N` as it always did, so event
/// logs of older controllers replay unchanged; a person's reads `"person": {...}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Holder {
    Job(JobId),
    Person(PersonHolder),
}

/// A person holding a lease: their lease request, their principal and name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonHolder {
    pub lease: PersonLeaseId,
    pub principal: PrincipalId,
    pub name: String,
}

impl Holder {
    /// The job, if a job holds it.
    pub fn job(&self) -> Option<JobId> {
        match self {
            Holder::Job(job) => Some(*job),
            Holder::Person(_) => None,
        }
    }

    /// The person's lease, if a person holds it.
    pub fn person(&self) -> Option<&PersonHolder> {
        match self {
            Holder::Job(_) => None,
            Holder::Person(p) => Some(p),
        }
    }

    /// Its entry in the queue.
    pub fn waiter(&self) -> Waiter {
        match self {
            Holder::Job(job) => Waiter::Job(*job),
            Holder::Person(p) => Waiter::Person(p.lease),
        }
    }
}

/// Something in the queue: a job or a person's lease request. Both are served from one pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Waiter {
    Job(JobId),
    Person(PersonLeaseId),
}

impl std::fmt::Display for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Waiter::Job(job) => write!(f, "job {job}"),
            Waiter::Person(lease) => write!(f, "lease {lease}"),
        }
    }
}

/// One state change. Applied by [`crate::Scheduler::apply`]; stored by the controller.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Event {
    /// A job entered the queue.
    JobSubmitted {
        job: JobId,
        spec: JobSpec,
        at: Millis,
    },
    /// An agent connected and offers these devices (all of its devices: those it no longer
    /// lists are removed, or withdrawn until their lease ends).
    AgentConnected {
        agent: String,
        devices: Vec<DeviceInfo>,
        at: Millis,
    },
    /// An agent's connection ended. Its leases live on until the disconnect grace.
    AgentDisconnected { agent: String, at: Millis },
    /// A connected agent said nothing for a while (stopped, partitioned with its socket
    /// open): its link stays, its leases live on to their deadlines, but its idle devices
    /// take no new work (they show `offline`) until it is heard again.
    AgentSilent { agent: String, at: Millis },
    /// A silent agent spoke again: its idle devices take work again.
    AgentHeard { agent: String, at: Millis },
    /// A waiter (a queued job or a waiting person's request) got an idle device. The
    /// device's epoch becomes `epoch`.
    LeaseGranted {
        lease: LeaseId,
        epoch: Epoch,
        #[serde(flatten)]
        holder: Holder,
        device: String,
        expires: Millis,
        at: Millis,
    },
    /// The agent reported that the job started.
    JobStarted {
        job: JobId,
        lease: LeaseId,
        at: Millis,
    },
    /// The lease was renewed: a job's by heartbeat, reconnect or controller restart (soft
    /// state, not stored); a person's by its holder (stored: it is the lease's deadline).
    LeaseRenewed { lease: LeaseId, expires: Millis },
    /// A person asked for a device for `ttl_ms`, renewable up to `cap_ms` after the grant.
    PersonLeaseRequested {
        person: PersonLeaseId,
        principal: PrincipalId,
        name: String,
        spec: JobSpec,
        ttl_ms: u64,
        cap_ms: u64,
        /// Public SSH keys to authorize on the DUT (checked lines; none in older events).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ssh_keys: Vec<String>,
        at: Millis,
    },
    /// A person's lease (or its request) ended. If it held a device, the `LeaseReleased`
    /// (needs-check: the agent must confirm that the DUT is off) of its lease follows. If it held a device, the `LeaseReleased` of
    /// its lease follows.
    PersonLeaseEnded {
        person: PersonLeaseId,
        end: LeaseEnd,
        at: Millis,
    },
    /// Someone asked to cancel an assigned or running job.
    CancelRequested { job: JobId, at: Millis },
    /// An assigned job goes back to the queue, at its original place. Followed by the
    /// `LeaseReleased` of its lease.
    JobRequeued { job: JobId, at: Millis },
    /// The job ended. If it held a lease, the `LeaseReleased` of that lease follows.
    JobFinished {
        job: JobId,
        outcome: Outcome,
        reason: String,
        at: Millis,
    },
    /// The lease ended. `device_state` is `Idle` when the agent reported the end itself, or
    /// `NeedsCheck` when the device's teardown is not confirmed.
    LeaseReleased {
        lease: LeaseId,
        device_state: DeviceState,
        at: Millis,
    },
    /// The agent confirmed that the device is torn down; it takes work again.
    DeviceReady { device: String, at: Millis },
    /// An admin (`by`: their name) or the lab (`by`: [`crate::LAB`]) took a device out of
    /// the pool (`state`: maintenance, retired or bad) or returned it (`idle`), saying why;
    /// `job`: the job that showed it (a failed health check, the last infra error). A device
    /// holding a lease keeps it; the state applies once the lease ends.
    DeviceStateSet {
        device: String,
        state: DeviceState,
        reason: String,
        by: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job: Option<JobId>,
        at: Millis,
    },
    /// An admin edited a device's tags: `add` extends its agent's tags, `remove` hides some
    /// (an edit undoes the opposite earlier edit of the same tag). Kept by device name: the
    /// agent's reconnects do not undo it.
    DeviceTagsSet {
        device: String,
        #[serde(default)]
        add: Vec<String>,
        #[serde(default)]
        remove: Vec<String>,
        by: String,
        at: Millis,
    },
}

impl Event {
    /// The event's name as spelled in JSON (`job-submitted`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::JobSubmitted { .. } => "job-submitted",
            Event::AgentConnected { .. } => "agent-connected",
            Event::AgentDisconnected { .. } => "agent-disconnected",
            Event::AgentSilent { .. } => "agent-silent",
            Event::AgentHeard { .. } => "agent-heard",
            Event::LeaseGranted { .. } => "lease-granted",
            Event::JobStarted { .. } => "job-started",
            Event::LeaseRenewed { .. } => "lease-renewed",
            Event::PersonLeaseRequested { .. } => "person-lease-requested",
            Event::PersonLeaseEnded { .. } => "person-lease-ended",
            Event::CancelRequested { .. } => "cancel-requested",
            Event::JobRequeued { .. } => "job-requeued",
            Event::JobFinished { .. } => "job-finished",
            Event::LeaseReleased { .. } => "lease-released",
            Event::DeviceReady { .. } => "device-ready",
            Event::DeviceStateSet { .. } => "device-state-set",
            Event::DeviceTagsSet { .. } => "device-tags-set",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(tags: &[&str]) -> DeviceInfo {
        DeviceInfo {
            name: "d".into(),
            device_type: "qemu".into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            capabilities: vec![],
        }
    }

    #[test]
    fn a_job_fits_a_device_of_its_type_with_all_its_tags() {
        let spec = JobSpec {
            device_type: "qemu".into(),
            tags: vec!["a".into(), "b".into()],
            ..JobSpec::default()
        };
        assert!(spec.fits(&info(&["b", "c", "a"])));
        assert!(!spec.fits(&info(&["a"])));
        let other = JobSpec {
            device_type: "bbb".into(),
            ..JobSpec::default()
        };
        assert!(!other.fits(&info(&[])));
        let named = JobSpec {
            device_type: "qemu".into(),
            device: Some("e".into()),
            ..JobSpec::default()
        };
        assert!(!named.fits(&info(&[])), "another device by name");
        let retry = JobSpec {
            device_type: "qemu".into(),
            avoid: vec!["d".into()],
            ..JobSpec::default()
        };
        assert!(!retry.fits(&info(&[])), "the device a retry avoids");
        assert!(
            retry.fits(&DeviceInfo {
                name: "e".into(),
                ..info(&[])
            }),
            "any other"
        );
    }

    #[test]
    fn a_job_grant_keeps_its_old_shape_and_old_grants_replay() {
        let job = Event::LeaseGranted {
            lease: LeaseId(3),
            epoch: Epoch(2),
            holder: Holder::Job(JobId(5)),
            device: "d".into(),
            expires: Millis(10),
            at: Millis(9),
        };
        let json = serde_json::to_string(&job).expect("serialises");
        assert_eq!(
            json,
            r#"{"type":"lease-granted","lease":"3","epoch":2,"job":5,"device":"d","expires":10,"at":9}"#
        );
        let old: Event = serde_json::from_str(
            r#"{"type":"lease-granted","lease":3,"epoch":2,"job":5,"device":"d","expires":10,"at":9}"#,
        )
        .expect("an old grant parses");
        assert_eq!(old, job);
        let person = Event::LeaseGranted {
            lease: LeaseId(4),
            epoch: Epoch(3),
            holder: Holder::Person(PersonHolder {
                lease: PersonLeaseId(1),
                principal: PrincipalId(2),
                name: "alice".into(),
            }),
            device: "d".into(),
            expires: Millis(10),
            at: Millis(9),
        };
        let json = serde_json::to_string(&person).expect("serialises");
        assert!(
            json.contains(r#""person":{"lease":1,"principal":2,"name":"alice"}"#),
            "{json}"
        );
        assert_eq!(
            serde_json::from_str::<Event>(&json).expect("parses"),
            person
        );
        // A spec without owner or device is written as before.
        let spec = JobSpec {
            device_type: "qemu".into(),
            ..JobSpec::default()
        };
        assert_eq!(
            serde_json::to_string(&spec).expect("serialises"),
            r#"{"device_type":"qemu","tags":[],"priority":0}"#
        );
    }

    #[test]
    fn events_are_tagged_json_spelled_like_kind() {
        let e = Event::LeaseReleased {
            lease: LeaseId(3),
            device_state: DeviceState::NeedsCheck,
            at: Millis(9),
        };
        let json = serde_json::to_string(&e).expect("serialises");
        assert_eq!(
            json,
            r#"{"type":"lease-released","lease":"3","device_state":"needs-check","at":9}"#
        );
        assert!(json.contains(e.kind()));
        let back: Event = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, e);
        // Event logs of older controllers hold lease ids as numbers: they replay to the same id.
        let old: Event = serde_json::from_str(
            r#"{"type":"lease-released","lease":3,"device_state":"needs-check","at":9}"#,
        )
        .expect("parses");
        assert_eq!(old, e);
    }
}
