//! MultiNode groups: gang scheduling of several sub-jobs, each on its own device.
//!
//! A group is submitted as one command, [`Scheduler::submit_group`], which emits one
//! `JobSubmitted` per sub-job, in index order, each with its [`GroupRef`]; the group is
//! named by the id of its sub-job 0 (its *lead*). Sub-jobs are ordinary jobs otherwise:
//! each has its own lease, epoch, log and outcome.
//!
//! Invariants (checked by the state-machine tests after every step):
//! - **One queue entry.** A group waits in the queue as one waiter, its lead's
//!   (`Waiter::Job(lead)`), with one key: one arrival and one fair-share round for the whole
//!   group, whatever its size. The key sits in the queue of every device type the group
//!   needs, and only while every sub-job is `Queued` and the group is complete.
//! - **All or nothing.** A group is granted only when every sub-job gets an idle device it
//!   fits, in one `schedule` call: its `LeaseGranted` events follow each other. While it waits
//!   it holds no device, so two groups (or a group and a single job) can never deadlock; a
//!   device a group cannot use yet stays free for other waiters.
//! - **One fate for infra errors and cancels.** When a sub-job ends `infra-error` or
//!   `canceled`, every unfinished sub-job of its group is ended too: a queued one finishes
//!   `canceled`, an assigned or running one gets a cancel request (the controller sends
//!   `CancelJob`; its lease is released when its agent confirms, or at the cancel grace).
//!   Other outcomes (passed, failed, timed out, job error) end only that sub-job.
//! - A start refused by an agent ends the refusing sub-job `infra-error` (so the group ends):
//!   other sub-jobs may have started already, and a group is never partly requeued.
//! - **Secondary connections ride.** A sub-job whose [`GroupRef::host`] names another
//!   sub-job (a `connection: ssh` role) needs no device: it is granted with its group, right
//!   after its host, a lease of its own on its host's device with that device's epoch (a
//!   *rider*). Its agent is therefore its host's agent, which logs in to the host's DUT. The
//!   device stays busy until its lease and every rider's lease are released, so it is never
//!   granted again while a secondary connection still runs on it. A host is never a rider.

use crate::error::{Refusal, SchedulerError};
use crate::event::{Event, GroupRef, JobSpec, MAX_PRIORITY, Waiter};
use crate::state::{QueueKey, Scheduler, remove_from};
use proto::{JobId, JobState, Millis, Outcome};
use std::collections::{BTreeMap, BTreeSet};

/// The most sub-jobs a group may have.
pub const MAX_GROUP: usize = 64;

/// A group as the scheduler keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Group {
    /// Sub-jobs submitted so far, by index.
    pub(crate) members: Vec<JobId>,
    /// How many it has when complete.
    pub(crate) size: u32,
    /// The device types its sub-jobs need.
    pub(crate) types: BTreeSet<String>,
    /// Whether its key is in the queue.
    pub(crate) queued: bool,
}

impl Group {
    fn complete(&self) -> bool {
        self.members.len() == self.size as usize
    }
}

impl Scheduler {
    /// Queues a group: `jobs` are its sub-jobs in index order, each spec with its
    /// [`GroupRef`] (`id`: the first job's id, `index`: its position, `size`: the count).
    /// Priority and owner are the first sub-job's for the whole group. Then schedules.
    pub fn submit_group(
        &mut self,
        jobs: Vec<(JobId, JobSpec)>,
        now: Millis,
    ) -> Result<Vec<Event>, Refusal> {
        let Some((lead, first)) = jobs.first() else {
            return Err(Refusal::BadGroup("a group has at least one sub-job".into()));
        };
        if jobs.len() > MAX_GROUP {
            return Err(Refusal::BadGroup(format!(
                "{} sub-jobs; a group has at most {MAX_GROUP}",
                jobs.len()
            )));
        }
        if first.priority > MAX_PRIORITY {
            return Err(Refusal::Priority(first.priority));
        }
        for (i, (job, spec)) in jobs.iter().enumerate() {
            if self.state.jobs.contains_key(job) || jobs[..i].iter().any(|(j, _)| j == job) {
                return Err(Refusal::DuplicateJob(*job));
            }
            let Some(g) = &spec.group else {
                return Err(Refusal::BadGroup(format!("job {job} names no group")));
            };
            if g.id != *lead || g.index as usize != i || g.size as usize != jobs.len() {
                return Err(Refusal::BadGroup(format!(
                    "job {job}: group {}.{} of {} is not {lead}.{i} of {}",
                    g.id,
                    g.index,
                    g.size,
                    jobs.len()
                )));
            }
            if spec.priority != first.priority || spec.owner != first.owner {
                return Err(Refusal::BadGroup(format!(
                    "job {job}: every sub-job has the group's priority and owner"
                )));
            }
            if let Some(host) = g.host {
                let rides = jobs
                    .get(host as usize)
                    .and_then(|(_, s)| s.group.as_ref())
                    .is_some_and(|h| h.host.is_none());
                if host == g.index || !rides {
                    return Err(Refusal::BadGroup(format!(
                        "job {job}: its host {host} is not another sub-job with a device"
                    )));
                }
            }
        }
        let mut out = Vec::new();
        for (job, spec) in jobs {
            self.emit(&mut out, Event::JobSubmitted { job, spec, at: now });
        }
        out.extend(self.schedule(now));
        Ok(out)
    }

    /// The sub-jobs of group `id` (by index), if it exists.
    pub fn group(&self, id: JobId) -> Option<&[JobId]> {
        self.state.groups.get(&id).map(|g| g.members.as_slice())
    }

    /// The group of a job, if it is a sub-job.
    pub fn group_of(&self, job: JobId) -> Option<&GroupRef> {
        self.state.jobs.get(&job)?.spec.group.as_ref()
    }

    /// Checks a sub-job's `JobSubmitted` against its group (before anything changes).
    pub(crate) fn check_member(&self, job: JobId, g: &GroupRef) -> Result<(), SchedulerError> {
        let bad = |why: String| SchedulerError::Group { job, why };
        if g.size == 0 || g.size as usize > MAX_GROUP || g.index >= g.size {
            return Err(bad(format!("index {} of size {}", g.index, g.size)));
        }
        match self.state.groups.get(&g.id) {
            None if g.index == 0 && g.id == job => Ok(()),
            None => Err(bad(format!("group {} has no sub-job 0", g.id))),
            Some(group) if group.size != g.size || group.members.len() != g.index as usize => {
                Err(bad(format!(
                    "index {} of {} in group {} with {} of {}",
                    g.index,
                    g.size,
                    g.id,
                    group.members.len(),
                    group.size
                )))
            }
            Some(_) => Ok(()),
        }
    }

    /// Records a sub-job (already in `jobs`, checked by [`Scheduler::check_member`]); the
    /// last one puts the group in the queue.
    pub(crate) fn add_member(&mut self, job: JobId, spec: &JobSpec) {
        let Some(g) = &spec.group else {
            return;
        };
        let group = self.state.groups.entry(g.id).or_insert_with(|| Group {
            members: Vec::new(),
            size: g.size,
            types: BTreeSet::new(),
            queued: false,
        });
        group.members.push(job);
        if g.host.is_none() {
            group.types.insert(spec.device_type.clone());
        }
        if group.complete() {
            let lead = g.id;
            if let Some(lead_spec) = self.state.jobs.get(&lead).map(|j| j.spec.clone()) {
                self.enqueue_keyed(Waiter::Job(lead), &lead_spec);
                self.queue_group(lead);
            }
        }
    }

    /// Puts the group's key (its lead's place) in the queue of each of its device types.
    fn queue_group(&mut self, id: JobId) {
        let Some(key) = self.state.places.get(&Waiter::Job(id)).copied() else {
            return;
        };
        let Some(group) = self.state.groups.get_mut(&id) else {
            return;
        };
        for ty in &group.types {
            self.state.queue.entry(ty.clone()).or_default().insert(key);
        }
        group.queued = true;
        self.fresh.waiters.insert(Waiter::Job(id));
    }

    /// Takes the group's key out of every queue (its lead keeps its place).
    pub(crate) fn dequeue_group(&mut self, id: JobId) {
        let Some(key) = self.state.places.get(&Waiter::Job(id)).copied() else {
            return;
        };
        let Some(group) = self.state.groups.get_mut(&id) else {
            return;
        };
        if !group.queued {
            return;
        }
        group.queued = false;
        for ty in group.types.clone() {
            remove_from(&mut self.state.queue, &ty, &key);
        }
    }

    /// Whether `waiter` is the lead of a group (which is placed as a whole).
    pub(crate) fn is_group(&self, waiter: Waiter) -> bool {
        matches!(waiter, Waiter::Job(job) if self.state.groups.contains_key(&job))
    }

    /// The waiter that stands in the queue for a job: its group's lead, or itself.
    pub(crate) fn queue_waiter(&self, job: JobId) -> Waiter {
        Waiter::Job(self.group_of(job).map_or(job, |g| g.id))
    }

    /// Idle devices for every sub-job of queued group `id` at once, or `None`. Each sub-job
    /// prefers the fitting device with the fewest tags (then the first by name); a sub-job
    /// that finds its devices taken moves an earlier one to another device where it can
    /// (augmenting paths), so a placement is found whenever one exists.
    /// Devices that a single waiter ahead of `key` in its type's queue fits are left out:
    /// that waiter is served first.
    pub(crate) fn place_group(&self, id: JobId, key: QueueKey) -> Option<Vec<(JobId, String)>> {
        let group = self.state.groups.get(&id).filter(|g| g.queued)?;
        let taken: BTreeSet<&str> = group
            .types
            .iter()
            .flat_map(|ty| self.wanted_ahead(ty, key))
            .collect();
        let mut candidates: Vec<Vec<String>> = Vec::with_capacity(group.members.len());
        // Indexes in `members` of the sub-jobs that need a device (riders follow their host).
        let mut placed_members: Vec<usize> = Vec::with_capacity(group.members.len());
        for (index, job) in group.members.iter().enumerate() {
            let spec = &self.state.jobs.get(job)?.spec;
            if spec.group.as_ref().is_some_and(|g| g.host.is_some()) {
                continue;
            }
            placed_members.push(index);
            let idle = self.state.idle.get(&spec.device_type)?;
            let mut fit: Vec<&crate::DeviceEntry> = idle
                .iter()
                .filter(|n| !taken.contains(n.as_str()))
                .filter_map(|n| self.state.devices.get(n))
                .filter(|d| spec.fits(&d.info))
                .collect();
            if fit.is_empty() {
                return None;
            }
            fit.sort_by(|a, b| {
                (a.info.tags.len(), &a.info.name).cmp(&(b.info.tags.len(), &b.info.name))
            });
            candidates.push(fit.into_iter().map(|d| d.info.name.clone()).collect());
        }
        let mut owner: BTreeMap<String, usize> = BTreeMap::new();
        for member in 0..candidates.len() {
            let mut seen = BTreeSet::new();
            if !augment(member, &candidates, &mut owner, &mut seen) {
                return None;
            }
        }
        let mut placed: Vec<(JobId, String)> = owner
            .into_iter()
            .map(|(device, member)| (group.members[placed_members[member]], device))
            .collect();
        placed.sort();
        Some(placed)
    }

    /// The riders of group `id` (see the module documentation): each sub-job with a host,
    /// and the host's sub-job, in index order.
    pub(crate) fn riders(&self, id: JobId) -> Vec<(JobId, JobId)> {
        let Some(group) = self.state.groups.get(&id) else {
            return Vec::new();
        };
        group
            .members
            .iter()
            .filter_map(|job| {
                let host = self.group_of(*job)?.host?;
                Some((*job, *group.members.get(host as usize)?))
            })
            .collect()
    }

    /// Idle devices of type `ty` that a single waiter ahead of `key` in that type's queue fits.
    fn wanted_ahead(&self, ty: &str, key: QueueKey) -> Vec<&str> {
        let (Some(queue), Some(idle)) = (self.state.queue.get(ty), self.state.idle.get(ty)) else {
            return Vec::new();
        };
        let ahead: Vec<&JobSpec> = queue
            .range(..key)
            .filter(|k| !self.is_group(k.3) && self.is_waiting(k.3))
            .filter_map(|k| self.spec_of(k.3))
            .collect();
        if ahead.is_empty() {
            return Vec::new();
        }
        idle.iter()
            .filter(|n| {
                self.state
                    .devices
                    .get(*n)
                    .is_some_and(|d| ahead.iter().any(|s| s.fits(&d.info)))
            })
            .map(String::as_str)
            .collect()
    }

    /// After `job` finished (and its lease, if any, was released): a sub-job that ended
    /// `infra-error` or `canceled` ends the rest of its group (see the module documentation).
    pub(crate) fn follow_group(&mut self, out: &mut Vec<Event>, job: JobId, at: Millis) {
        let Some(outcome) = self.state.jobs.get(&job).and_then(|j| j.outcome) else {
            return;
        };
        if !matches!(outcome, Outcome::InfraError | Outcome::Canceled) {
            return;
        }
        let Some(g) = self.group_of(job).cloned() else {
            return;
        };
        let reason = format!(
            "canceled: sub-job {}.{} ({}) of the group ended {outcome}",
            g.id, g.index, g.role
        );
        self.end_group(out, g.id, &reason, at);
    }

    /// Ends every unfinished sub-job of group `id`: queued ones finish `canceled` with
    /// `reason`, assigned or running ones get a cancel request.
    pub(crate) fn end_group(&mut self, out: &mut Vec<Event>, id: JobId, reason: &str, at: Millis) {
        let members = self.group(id).map(<[JobId]>::to_vec).unwrap_or_default();
        for job in members {
            let Some(state) = self.state.jobs.get(&job).map(|j| j.state) else {
                continue;
            };
            match state {
                JobState::Queued => self.emit(
                    out,
                    Event::JobFinished {
                        job,
                        outcome: Outcome::Canceled,
                        reason: reason.to_owned(),
                        at,
                    },
                ),
                JobState::Assigned | JobState::Running => {
                    self.emit(out, Event::CancelRequested { job, at });
                }
                JobState::Canceling | JobState::Finished => {}
            }
        }
    }
}

/// Kuhn's augmenting path: finds `member` a device, moving earlier members if needed.
fn augment(
    member: usize,
    candidates: &[Vec<String>],
    owner: &mut BTreeMap<String, usize>,
    seen: &mut BTreeSet<String>,
) -> bool {
    // A free device first (so nobody moves without need), then one an earlier member leaves.
    if let Some(device) = candidates[member]
        .iter()
        .find(|d| !owner.contains_key(*d) && !seen.contains(*d))
    {
        owner.insert(device.clone(), member);
        return true;
    }
    for device in &candidates[member] {
        if !seen.insert(device.clone()) {
            continue;
        }
        let free = match owner.get(device) {
            None => true,
            Some(&other) => augment(other, candidates, owner, seen),
        };
        if free {
            owner.insert(device.clone(), member);
            return true;
        }
    }
    false
}
