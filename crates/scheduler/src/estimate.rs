//! Rough start times of waiters (queued jobs, waiting people's leases), for `job list --queued`.
//!
//! The estimate per device type: a job runs as long as the mean of the last
//! [`RECENT_JOBS`] finished jobs of its type (that started), a person's lease as long as its
//! requested duration. Each usable device (idle or busy, not withdrawn) frees at `now` when
//! idle, at its person's deadline, or when its job has run that mean (at `now` if it already
//! did). The waiters of the type are walked in serving order, each taking the device that
//! frees first. Tags and `device:` requests are not looked at: any device of the type is taken
//! to serve any waiter, so the estimate is a rough guide, not a promise.
//!
//! Invariants: pure (no clock: `now` is given); a type with no usable device, or a job of a
//! type with no finished job to learn from, gets no estimate (and no waiter after it in that
//! type does either, since its end is unknown).

use crate::event::Waiter;
use crate::state::Scheduler;
use proto::{DeviceState, JobState, Millis};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

/// How many recently finished jobs of a type the mean run time is taken from.
pub const RECENT_JOBS: usize = 20;

impl Scheduler {
    /// The mean run time of the last [`RECENT_JOBS`] finished jobs of `device_type`.
    pub fn recent_run_time(&self, device_type: &str) -> Option<Duration> {
        let mut runs: Vec<(Millis, u64)> = self
            .state
            .jobs
            .values()
            .filter(|j| j.state == JobState::Finished && j.spec.device_type == device_type)
            .filter_map(|j| {
                let (started, finished) = (j.started?, j.finished?);
                Some((finished, finished.0.saturating_sub(started.0)))
            })
            .collect();
        if runs.is_empty() {
            return None;
        }
        runs.sort_unstable_by_key(|(finished, _)| Reverse(*finished));
        runs.truncate(RECENT_JOBS);
        let total: u64 = runs.iter().map(|(_, ms)| ms).sum();
        Some(Duration::from_millis(total / runs.len() as u64))
    }

    /// Estimated start of every waiter that has one (see the module docs).
    pub fn estimated_starts(&self, now: Millis) -> BTreeMap<Waiter, Millis> {
        let mut out = BTreeMap::new();
        for (device_type, queue) in &self.state.queue {
            let mean = self
                .recent_run_time(device_type)
                .map(|d| d.as_millis() as u64);
            let mut free: BinaryHeap<Reverse<u64>> = self
                .state
                .devices
                .values()
                .filter(|d| &d.info.device_type == device_type && !d.withdrawn)
                // Out of service, or to be once its lease ends.
                .filter(|d| !self.state.out_of_service.contains_key(&d.info.name))
                .filter_map(|d| match d.state {
                    DeviceState::Idle => Some(now.0),
                    DeviceState::Busy => {
                        let lease = d.lease.and_then(|l| self.state.leases.get(&l))?;
                        match lease.holder.job() {
                            Some(job) => {
                                let started = self.state.jobs.get(&job)?.started.unwrap_or(now);
                                Some(started.0.saturating_add(mean?).max(now.0))
                            }
                            None => Some(lease.expires.0.max(now.0)),
                        }
                    }
                    DeviceState::Offline
                    | DeviceState::NeedsCheck
                    | DeviceState::Maintenance
                    | DeviceState::Retired
                    | DeviceState::Bad => None,
                })
                .map(Reverse)
                .collect();
            for key in queue {
                let waiter = key.3;
                let run = match waiter {
                    Waiter::Job(_) => mean,
                    Waiter::Person(id) => self.state.persons.get(&id).map(|p| p.ttl_ms),
                };
                let (Some(Reverse(at)), Some(run)) = (free.pop(), run) else {
                    break;
                };
                out.insert(waiter, Millis(at));
                free.push(Reverse(at.saturating_add(run)));
            }
        }
        out
    }
}
