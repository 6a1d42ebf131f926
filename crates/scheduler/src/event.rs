//! What the scheduler records: job specs and the events of its log.

use proto::link::DeviceInfo;
use proto::{DeviceState, Epoch, JobId, LeaseId, Millis, Outcome};
use serde::{Deserialize, Serialize};

/// Highest job priority.
pub const MAX_PRIORITY: u8 = 100;

/// What a job needs from a device, and how urgent it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub device_type: String,
    /// Every one must be among the device's tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// 0 ..= [`MAX_PRIORITY`]; higher is served first.
    pub priority: u8,
}

impl JobSpec {
    /// Whether a job with this spec can run on `device`: same device type, and the job's tags
    /// are a subset of the device's.
    pub fn fits(&self, device: &DeviceInfo) -> bool {
        device.device_type == self.device_type && self.tags.iter().all(|t| device.tags.contains(t))
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
    /// A queued job got an idle device. The device's epoch becomes `epoch`.
    LeaseGranted {
        lease: LeaseId,
        epoch: Epoch,
        job: JobId,
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
    /// The lease was renewed (heartbeat, reconnect, controller restart).
    LeaseRenewed { lease: LeaseId, expires: Millis },
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
}

impl Event {
    /// The event's name as spelled in JSON (`job-submitted`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::JobSubmitted { .. } => "job-submitted",
            Event::AgentConnected { .. } => "agent-connected",
            Event::AgentDisconnected { .. } => "agent-disconnected",
            Event::LeaseGranted { .. } => "lease-granted",
            Event::JobStarted { .. } => "job-started",
            Event::LeaseRenewed { .. } => "lease-renewed",
            Event::CancelRequested { .. } => "cancel-requested",
            Event::JobRequeued { .. } => "job-requeued",
            Event::JobFinished { .. } => "job-finished",
            Event::LeaseReleased { .. } => "lease-released",
            Event::DeviceReady { .. } => "device-ready",
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
            priority: 0,
        };
        assert!(spec.fits(&info(&["b", "c", "a"])));
        assert!(!spec.fits(&info(&["a"])));
        let other = JobSpec {
            device_type: "bbb".into(),
            tags: vec![],
            priority: 0,
        };
        assert!(!other.fits(&info(&[])));
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
