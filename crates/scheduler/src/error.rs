//! Why a command was refused, and why an event does not fit the state.

use crate::event::Waiter;
use proto::{
    DeviceState, Epoch, JobId, JobState, LeaseEnd, LeaseId, PersonLeaseId, PersonLeaseState,
};

/// A command the scheduler refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("job {0} does not exist")]
    UnknownJob(JobId),
    #[error("job {0} was submitted already")]
    DuplicateJob(JobId),
    #[error("priority {0} is above the highest priority, {max}", max = crate::MAX_PRIORITY)]
    Priority(u8),
    #[error("job {0} has finished already")]
    Finished(JobId),
    #[error("job {job} is {state}, not assigned")]
    NotAssigned { job: JobId, state: JobState },
    #[error("lease {0} was never granted")]
    UnknownLease(LeaseId),
    #[error("lease {lease} has epoch {current}, not {given}")]
    StaleEpoch {
        lease: LeaseId,
        given: Epoch,
        current: Epoch,
    },
    #[error("lease {0} has ended")]
    LeaseNotLive(LeaseId),
    #[error("device {device} belongs to agent {agent}, which is connected")]
    DeviceTaken { device: String, agent: String },
    #[error("device {0} is listed twice")]
    DuplicateDevice(String),
    #[error("device {0} is not registered")]
    UnknownDevice(String),
    #[error("device {device} belongs to agent {agent}")]
    NotYourDevice { device: String, agent: String },
    #[error("agent {0} is not connected")]
    AgentNotConnected(String),
    #[error("device {device} still holds live lease {lease}")]
    DeviceBusy { device: String, lease: LeaseId },
    #[error("lease {0} is held by a person, not by a job")]
    NotAJobLease(LeaseId),
    #[error("lease {0} does not exist")]
    UnknownPersonLease(PersonLeaseId),
    #[error("lease {0} was requested already")]
    DuplicatePersonLease(PersonLeaseId),
    #[error("lease {lease} has ended: {end}")]
    PersonLeaseEnded { lease: PersonLeaseId, end: LeaseEnd },
    #[error("duration: {ttl_ms} ms must be above 0 and at most the cap of {cap_ms} ms")]
    Duration { ttl_ms: u64, cap_ms: u64 },
    #[error("state: a device is set idle, maintenance, retired or bad, not {0}")]
    NotSettable(DeviceState),
    #[error("tags: {0:?} is both added and removed")]
    TagConflict(String),
    #[error("group: {0}")]
    BadGroup(String),
}

/// An event does not fit the scheduler's state: the log is corrupt (or was written by a
/// scheduler with other rules). The state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerError {
    #[error("{event}: job {job} does not exist")]
    UnknownJob { event: &'static str, job: JobId },
    #[error("job-submitted: job {0} exists already")]
    DuplicateJob(JobId),
    #[error("job-submitted: priority {0} is above {max}", max = crate::MAX_PRIORITY)]
    Priority(u8),
    #[error("{event}: job {job} is {state}")]
    JobState {
        event: &'static str,
        job: JobId,
        state: JobState,
    },
    #[error("{event}: lease {lease} is not live")]
    LeaseNotLive { event: &'static str, lease: LeaseId },
    #[error("{event}: lease {lease} is held by {holder}, not job {job}")]
    LeaseOfOtherJob {
        event: &'static str,
        lease: LeaseId,
        job: JobId,
        holder: Waiter,
    },
    #[error("lease-granted: lease {lease} is not above the last granted lease")]
    LeaseReused { lease: LeaseId },
    #[error("lease-released: its holder, {waiter}, is still {state}")]
    LeaseInUse { waiter: Waiter, state: &'static str },
    #[error("lease-released: a released device becomes idle or needs-check, not {0}")]
    ReleaseState(DeviceState),
    #[error("{event}: device {device} is not registered")]
    UnknownDevice { event: &'static str, device: String },
    #[error("{event}: device {device} is {state}")]
    DeviceState {
        event: &'static str,
        device: String,
        state: DeviceState,
    },
    #[error("lease-granted: epoch {epoch} of device {device} is not above {current}")]
    EpochNotRaised {
        device: String,
        epoch: Epoch,
        current: Epoch,
    },
    #[error("lease-granted: {waiter} does not fit device {device}")]
    NoFit { waiter: Waiter, device: String },
    #[error("agent-connected: device {device} belongs to connected agent {agent}")]
    DeviceTaken { device: String, agent: String },
    #[error("agent-connected: device {0} is listed twice")]
    DuplicateDevice(String),
    #[error("{event}: agent {agent} is not connected")]
    AgentNotConnected { event: &'static str, agent: String },
    #[error("{event}: agent {agent} is not {expected:?}")]
    AgentPresence {
        event: &'static str,
        agent: String,
        expected: proto::api::AgentState,
    },
    #[error("{event}: lease {lease} was never requested")]
    UnknownPersonLease {
        event: &'static str,
        lease: PersonLeaseId,
    },
    #[error("person-lease-requested: lease {0} exists already")]
    DuplicatePersonLease(PersonLeaseId),
    #[error("{event}: lease {lease} is {state}")]
    PersonLeaseState {
        event: &'static str,
        lease: PersonLeaseId,
        state: PersonLeaseState,
    },
    #[error("lease-granted: the holder does not match the request of lease {0}")]
    HolderMismatch(PersonLeaseId),
    #[error("device-state-set: a device is set idle, maintenance, retired or bad, not {0}")]
    NotSettable(DeviceState),
    #[error("job-submitted: job {job}: {why}")]
    Group { job: JobId, why: String },
    #[error("event {index} of the log does not fit")]
    Replay {
        index: usize,
        #[source]
        source: Box<SchedulerError>,
    },
}
