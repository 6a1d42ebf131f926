//! Job, lease and device state machines of the controller: the queue, matching and
//! priorities. Pure: no I/O, no clock. Time comes in as [`Millis`] arguments.
//!
//! # Event sourcing
//!
//! A [`Scheduler`] changes only through [`Scheduler::apply`], the one transition function.
//! Every command method (`submit`, `cancel`, `tick`, ...) validates its input, builds
//! [`Event`]s, applies each and returns them; the controller stores them with its own tables in
//! one transaction and rebuilds the same scheduler after a restart with [`Scheduler::replay`].
//! A command that returns `Err(Refusal)` changed nothing. `apply` is atomic too: it checks
//! everything before it changes anything, so an event that does not fit leaves the state as it
//! was.
//!
//! # Jobs
//!
//! ```text
//!              JobSubmitted                LeaseGranted                JobStarted
//!   (none) ──────────────> Queued ─────────────────> Assigned ─────────────────> Running
//!                           │  ^                      │    │                        │
//!                           │  └──── JobRequeued ─────┘    │ CancelRequested        │ CancelRequested
//!                           │      (start refused)         v                        │
//!                           │                          Canceling <──────────────────┘
//!            JobFinished    │                              │
//!            (canceled)     v          JobFinished         │ JobFinished (always canceled)
//!                        Finished <────────────────────────┴──── from Assigned and Running too
//! ```
//!
//! A job goes back to `Queued` at its old place when its agent refused to start it, or
//! reconnected without it while it was `Assigned` (the agent never took it); a started job
//! whose agent comes back without it ends `infra-error`.
//!
//! `Finished` is absorbing: its outcome and reason never change. A job that was `Canceling`
//! always finishes `canceled`, whatever ended it.
//!
//! # Devices and leases
//!
//! ```text
//!            AgentConnected                LeaseGranted
//!   Offline ───────────────> Idle ───────────────────────────> Busy
//!      ^   <───────────────   ^  ^  LeaseReleased(idle)          │
//!      │    AgentDisconnected │  └──────────────────────────────┤
//!      │                      │ DeviceReady                      │ LeaseReleased(needs-check)
//!      │                      │                                  v
//!      └─── AgentDisconnected ┴──────────────────────────── NeedsCheck
//! ```
//!
//! An agent is `Connected` (its link open and heard from), `Silent` (its link open but
//! nothing heard for a while: `AgentSilent`, back with `AgentHeard` or a new
//! `AgentConnected`) or `Disconnected`. A silent agent's leases live on to their deadlines,
//! but its idle devices show `Offline` and take no work, so a stopped agent whose socket
//! stays open does not swallow queued jobs.
//!
//! A device's state is derived, never set: `Busy` while it holds a live lease, else the state
//! an admin or the lab set (`Maintenance`, `Retired`, `Bad`: `DeviceStateSet`, kept across
//! the agent's reconnects until set `Idle`), else `Offline` while its agent is disconnected or silent,
//! else `NeedsCheck` while a lease ended without its agent confirming teardown, else `Idle`.
//! An offline device remembers that it needs a check. A person's lease always ends
//! `NeedsCheck` (its holder may have powered the DUT; the agent's session confirms power-off
//! with `DeviceReady`), as a job's does unless its agent reported the end itself. A device set out of service while it
//! holds a lease keeps the lease (unless the admin interrupts it) and leaves the pool when
//! the lease ends. [`Config::quarantine_after`] infra errors in a row on one device set it
//! `Bad` (the command that ends the last of them emits the `DeviceStateSet`).
//!
//! A device's tags are its agent's, extended and reduced by the admin's edits
//! (`DeviceTagsSet`), which are kept by device name and survive the agent's reconnects.
//!
//! Invariants (checked by the state-machine tests after every step):
//! - A device holds at most one live lease and a job at most one; a live lease's job is
//!   `Assigned`, `Running` or `Canceling` and its device is `Busy`.
//! - Every `LeaseGranted` is followed by exactly one `LeaseReleased` for that lease, or the
//!   lease is still live.
//! - Lease ids are never reused (with [`LeaseIds::Keyed`], the controller's choice, they are
//!   also unguessable without the key: an agent cannot name another agent's lease); a device's epoch rises by at least one at every grant and never
//!   goes down, even when the device is removed and registered again.
//! - Only live leases are kept. A message about a lease that ended is refused with
//!   [`Refusal::LeaseNotLive`]; one with an epoch other than the lease's with
//!   [`Refusal::StaleEpoch`].
//! - After [`Scheduler::schedule`], no queued job fits an idle device (a job fits a device when
//!   the device type is equal and the job's tags are a subset of the device's). Queued jobs are
//!   served by priority (higher first), then by job id (first submitted first); a requeued job
//!   keeps its place.
//!
//! # Groups
//!
//! A MultiNode group's sub-jobs are ordinary jobs placed together: the group waits as one
//! queue entry and is granted all its devices in one `schedule` or none (see `groups`: no
//! partial grant, so groups never deadlock; an infra error or cancel of one sub-job ends the
//! group).
//!
//! # Cost
//!
//! The queue is kept ordered per device type and idle devices are indexed by device type.
//! `schedule` only looks at what changed since its last call (jobs that became queued, devices
//! that became idle), since nothing else can form a new match, and returns at once when no
//! device is idle.
//! Each live lease's deadline (expiry, disconnect grace, cancel grace) is kept in an ordered
//! index, so `next_deadline` and `tick` do not scan the leases.

mod error;
mod estimate;
mod event;
mod groups;
mod lease_ids;
mod person_leases;
mod queries;
mod schedule;
mod state;

mod commands;
mod devices;

pub use commands::Want;
pub use devices::{Interrupt, LAB, MAX_HISTORY, StateNote};
pub use error::{Refusal, SchedulerError};
pub use estimate::RECENT_JOBS;
pub use event::{Event, GroupRef, Holder, JobPurpose, JobSpec, MAX_PRIORITY, PersonHolder, Waiter};
pub use groups::MAX_GROUP;
pub use lease_ids::{LeaseIds, LeaseKey};
pub use state::{DeviceEntry, JobEntry, Lease, PersonLease, Scheduler};

pub use proto::api::AgentState;
pub use proto::link::DeviceInfo;
pub use proto::{
    DeviceState, Epoch, JobId, JobState, LeaseEnd, LeaseId, Millis, Outcome, PersonLeaseId,
    PersonLeaseState, PrincipalId,
};

use std::time::Duration;

/// Timing of leases and graces, and how leases are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// How granted leases get their ids.
    pub lease_ids: LeaseIds,
    /// How long a lease lives without a heartbeat from its agent.
    pub lease_ttl: Duration,
    /// How long the leases of a disconnected agent survive, waiting for it to come back.
    pub disconnect_grace: Duration,
    /// How long the agent has to confirm a cancel before the job ends anyway.
    pub cancel_grace: Duration,
    /// Infra errors in a row on one device that take it out of the pool as `bad` (0: never).
    pub quarantine_after: u32,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            lease_ids: LeaseIds::Sequential,
            lease_ttl: Duration::from_secs(60),
            disconnect_grace: Duration::from_secs(10),
            cancel_grace: Duration::from_secs(8),
            quarantine_after: 3,
        }
    }
}
