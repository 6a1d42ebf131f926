//! What admins and the lab decide about devices: taking one out of the pool (maintenance,
//! retired, bad) and returning it, quarantine after infra errors in a row, and tag edits.
//!
//! Invariants:
//! - A device out of service takes no work: its derived state is the state set (once it
//!   holds no lease), so it is never in the idle index and `schedule` never grants it.
//! - The state set, its history and the tag edits are kept by device name, so they survive
//!   the agent's reconnects and the device being removed and registered again.
//! - [`crate::Config::quarantine_after`] infra errors in a row on one device (no other
//!   outcome between them, none since it was last set idle) set it `bad`, in the command
//!   that ends the last of those jobs, before its lease is released.
//! - A device's tags are its agent's tags without those removed by admins, then the tags
//!   admins added (in name order, without duplicates).

use crate::error::{Refusal, SchedulerError};
use crate::event::{Event, Holder};
use crate::state::Scheduler;
use proto::{DeviceState, JobId, JobState, LeaseEnd, Millis, Outcome};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Who the lab is when it sets a device's state itself (quarantine, health checks).
pub const LAB: &str = "dutlab";

/// State changes kept per device ([`Scheduler::device_history`]).
pub const MAX_HISTORY: usize = 20;

/// A state set on a device: which, why, by whom, the job that showed it, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateNote {
    pub state: DeviceState,
    pub reason: String,
    pub by: String,
    pub job: Option<JobId>,
    pub at: Millis,
}

/// Whether taking a device out of service waits for its lease to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interrupt {
    /// The running job or the person's lease goes on; the state applies when it ends.
    AfterLease,
    /// The running job is canceled; a person's lease is ended by the admin.
    Now,
}

/// Admins' edits of one device's tags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TagEdits {
    pub(crate) add: BTreeSet<String>,
    pub(crate) remove: BTreeSet<String>,
}

fn settable(state: DeviceState) -> bool {
    matches!(
        state,
        DeviceState::Idle | DeviceState::Maintenance | DeviceState::Retired | DeviceState::Bad
    )
}

impl Scheduler {
    /// The state an admin or the lab set on `device` (maintenance, retired, bad), if any:
    /// also while it still holds the lease it finishes first.
    pub fn out_of_service(&self, device: &str) -> Option<&StateNote> {
        self.state.out_of_service.get(device)
    }

    /// The last state changes of `device`, oldest first.
    pub fn device_history(&self, device: &str) -> impl Iterator<Item = &StateNote> {
        self.state.history.get(device).into_iter().flatten()
    }

    /// Infra errors in a row on `device`.
    pub fn infra_streak(&self, device: &str) -> u32 {
        self.state.infra_streak.get(device).copied().unwrap_or(0)
    }

    /// Tags admins added to and removed from `device`, in name order.
    pub fn tag_edits(&self, device: &str) -> (Vec<String>, Vec<String>) {
        self.state
            .tag_edits
            .get(device)
            .map_or_else(Default::default, |e| {
                (
                    e.add.iter().cloned().collect(),
                    e.remove.iter().cloned().collect(),
                )
            })
    }

    /// Sets the state of a registered device (`note.at` is now): `maintenance`, `retired`
    /// or `bad` take it out of the pool, `idle` returns it (and forgets its infra errors
    /// in a row). With [`Interrupt::Now`] its running job is canceled and a person's lease on it ended
    /// by `note.by`. Setting `idle` on a device in service with no infra error counted does
    /// nothing. Then schedules.
    pub fn set_device_state(
        &mut self,
        device: &str,
        note: StateNote,
        interrupt: Interrupt,
    ) -> Result<Vec<Event>, Refusal> {
        let d = self
            .state
            .devices
            .get(device)
            .ok_or_else(|| Refusal::UnknownDevice(device.to_owned()))?;
        if !settable(note.state) {
            return Err(Refusal::NotSettable(note.state));
        }
        let mut out = Vec::new();
        let now = note.at;
        if note.state == DeviceState::Idle
            && !self.state.out_of_service.contains_key(device)
            && self.infra_streak(device) == 0
        {
            return Ok(out);
        }
        // Its holder's lease, then the secondary connections riding on it.
        let leases: Vec<crate::Lease> = d
            .leases()
            .filter_map(|l| self.state.leases.get(&l))
            .cloned()
            .collect();
        let by = note.by.clone();
        let state = note.state;
        self.emit(
            &mut out,
            Event::DeviceStateSet {
                device: device.to_owned(),
                state: note.state,
                reason: note.reason,
                by: note.by,
                job: note.job,
                at: now,
            },
        );
        let interrupted = if interrupt == Interrupt::Now && state != DeviceState::Idle {
            leases
        } else {
            Vec::new()
        };
        for lease in interrupted {
            match &lease.holder {
                Holder::Job(job) => {
                    let running =
                        self.state.jobs.get(job).is_some_and(|j| {
                            matches!(j.state, JobState::Assigned | JobState::Running)
                        });
                    if running {
                        self.emit(&mut out, Event::CancelRequested { job: *job, at: now });
                    }
                }
                Holder::Person(p) => {
                    let person = p.lease;
                    self.end_person(&mut out, person, LeaseEnd::EndedBy(by.clone()), now);
                }
            }
        }
        out.extend(self.schedule(now));
        Ok(out)
    }

    /// Edits the tags of a registered device: `add` extends its agent's tags, `remove` hides
    /// some. A tag in both is refused. Then schedules (a device may fit more waiters now).
    pub fn set_device_tags(
        &mut self,
        device: &str,
        add: Vec<String>,
        remove: Vec<String>,
        by: &str,
        now: Millis,
    ) -> Result<Vec<Event>, Refusal> {
        if !self.state.devices.contains_key(device) {
            return Err(Refusal::UnknownDevice(device.to_owned()));
        }
        if let Some(both) = add.iter().find(|t| remove.contains(t)) {
            return Err(Refusal::TagConflict(both.clone()));
        }
        let mut out = Vec::new();
        self.emit(
            &mut out,
            Event::DeviceTagsSet {
                device: device.to_owned(),
                add,
                remove,
                by: by.to_owned(),
                at: now,
            },
        );
        out.extend(self.schedule(now));
        Ok(out)
    }

    /// After a job on `device` finished `infra-error`: quarantines the device when that makes
    /// [`crate::Config::quarantine_after`] in a row and it is still in service.
    pub(crate) fn quarantine(
        &mut self,
        out: &mut Vec<Event>,
        device: &str,
        job: JobId,
        reason: &str,
        now: Millis,
    ) {
        let limit = self.config.quarantine_after;
        let streak = self.infra_streak(device);
        if limit == 0 || streak < limit || self.state.out_of_service.contains_key(device) {
            return;
        }
        self.emit(
            out,
            Event::DeviceStateSet {
                device: device.to_owned(),
                state: DeviceState::Bad,
                reason: format!("{streak} infra errors in a row; the last, job {job}: {reason}"),
                by: LAB.to_owned(),
                job: Some(job),
                at: now,
            },
        );
    }

    /// After a health check on `device` ended: passed returns a `bad` device to the pool;
    /// any other outcome but `canceled` makes it `bad` (unless an admin set it maintenance or
    /// retired meanwhile: theirs stays).
    pub(crate) fn checked(
        &mut self,
        out: &mut Vec<Event>,
        device: &str,
        job: JobId,
        outcome: Outcome,
        reason: &str,
        now: Millis,
    ) {
        let set = self.state.out_of_service.get(device).map(|n| n.state);
        let (state, reason) = match outcome {
            Outcome::Canceled => return,
            Outcome::Passed if set == Some(DeviceState::Bad) => {
                (DeviceState::Idle, format!("health check job {job} passed"))
            }
            Outcome::Passed => return,
            _ if matches!(set, Some(DeviceState::Maintenance | DeviceState::Retired)) => return,
            other => (
                DeviceState::Bad,
                if reason.is_empty() {
                    format!("health check job {job} {other}")
                } else {
                    format!("health check job {job} {other}: {reason}")
                },
            ),
        };
        self.emit(
            out,
            Event::DeviceStateSet {
                device: device.to_owned(),
                state,
                reason,
                by: LAB.to_owned(),
                job: Some(job),
                at: now,
            },
        );
    }

    /// `device-state-set`.
    pub(crate) fn apply_state_set(
        &mut self,
        device: &str,
        note: StateNote,
    ) -> Result<(), SchedulerError> {
        if !settable(note.state) {
            return Err(SchedulerError::NotSettable(note.state));
        }
        if !self.state.devices.contains_key(device) {
            return Err(SchedulerError::UnknownDevice {
                event: "device-state-set",
                device: device.to_owned(),
            });
        }
        if note.state == DeviceState::Idle {
            self.state.out_of_service.remove(device);
            self.state.infra_streak.remove(device);
        } else {
            self.state
                .out_of_service
                .insert(device.to_owned(), note.clone());
        }
        let history = self.state.history.entry(device.to_owned()).or_default();
        if history.len() == MAX_HISTORY {
            history.pop_front();
        }
        history.push_back(note);
        self.refresh(device);
        Ok(())
    }

    /// `device-tags-set`.
    pub(crate) fn apply_tags_set(
        &mut self,
        device: &str,
        add: &[String],
        remove: &[String],
    ) -> Result<(), SchedulerError> {
        let Some(d) = self.state.devices.get(device) else {
            return Err(SchedulerError::UnknownDevice {
                event: "device-tags-set",
                device: device.to_owned(),
            });
        };
        let agent_tags = d.agent_tags.clone();
        let edits = self.state.tag_edits.entry(device.to_owned()).or_default();
        for t in add {
            edits.remove.remove(t);
            edits.add.insert(t.clone());
        }
        for t in remove {
            edits.add.remove(t);
            edits.remove.insert(t.clone());
        }
        let tags = self.effective_tags(device, &agent_tags);
        let mut idle = false;
        if let Some(d) = self.state.devices.get_mut(device) {
            d.info.tags = tags;
            idle = d.state == DeviceState::Idle;
        }
        if idle {
            // It may fit waiters it did not fit before.
            self.fresh.devices.insert(device.to_owned());
        }
        Ok(())
    }

    /// The tags of `device` given its agent's: without the removed ones, then the added.
    pub(crate) fn effective_tags(&self, device: &str, agent_tags: &[String]) -> Vec<String> {
        let Some(edits) = self.state.tag_edits.get(device) else {
            return agent_tags.to_vec();
        };
        let mut tags: Vec<String> = agent_tags
            .iter()
            .filter(|t| !edits.remove.contains(*t))
            .cloned()
            .collect();
        for t in &edits.add {
            if !tags.contains(t) {
                tags.push(t.clone());
            }
        }
        tags
    }

    /// Counts a finished job's outcome on the device it ran on: infra errors in a row.
    pub(crate) fn count_outcome(&mut self, device: &str, outcome: Outcome) {
        match outcome {
            Outcome::InfraError => {
                let n = self
                    .state
                    .infra_streak
                    .entry(device.to_owned())
                    .or_default();
                *n = n.saturating_add(1);
            }
            // A cancel says nothing about the device.
            Outcome::Canceled => {}
            _ => {
                self.state.infra_streak.remove(device);
            }
        }
    }
}

/// Whether a device's last lease ended without its agent confirming teardown (and it holds
/// none now), whatever state it shows.
pub(crate) fn needs_check(d: &crate::DeviceEntry) -> bool {
    d.lease.is_none() && d.unconfirmed.is_some()
}
