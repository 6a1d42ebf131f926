//! The scheduler's state, its one transition function [`Scheduler::apply`], and queries.
//!
//! Besides jobs, devices, leases and agents, the state keeps two indexes that `apply` updates
//! with every change: queued jobs by device type in serving order, and idle devices by device
//! type. Work that `schedule` has not looked at yet (jobs that became queued, devices that
//! became idle) is noted apart from the state: it is not part of what replay must rebuild.

use crate::Config;
use crate::error::SchedulerError;
use crate::event::{Event, Holder, JobSpec, MAX_PRIORITY, PersonHolder, Waiter};
use proto::api::AgentState;
use proto::link::DeviceInfo;
use proto::{
    DeviceState, Epoch, JobId, JobState, LeaseEnd, LeaseId, Millis, Outcome, PersonLeaseId,
    PersonLeaseState, PrincipalId,
};
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

/// Agents' connections, grants and releases, and the device index kept in step with them.
mod holding;

/// Serving order of waiters (queued jobs and waiting person leases, one pool): priority
/// descending, then fair-share round ascending, then arrival ascending (FIFO). The key is
/// given once, when the waiter enters the queue, and kept (a requeued job keeps its place).
///
/// Fair share: a waiter's round is one more than the last round of its user's previous
/// waiter, but never below the round last served. So a user with many waiters takes one
/// place per round, and a user who comes later enters the current round, ahead of the other
/// users' later waiters; one user's waiters stay in their order.
pub(crate) type QueueKey = (Reverse<u8>, u64, u64, Waiter);

/// A job as the scheduler sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEntry {
    pub spec: JobSpec,
    pub state: JobState,
    /// Set when finished.
    pub outcome: Option<Outcome>,
    /// Why it finished (empty before).
    pub reason: String,
    /// The lease it holds; for a finished job, the last one it held.
    pub lease: Option<LeaseId>,
    /// The device of `lease`.
    pub device: Option<String>,
    pub submitted: Millis,
    /// When the agent reported the start (of the current assignment).
    pub started: Option<Millis>,
    /// When a cancel was requested.
    pub cancel_requested: Option<Millis>,
    pub finished: Option<Millis>,
}

/// A registered device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEntry {
    /// As its agent describes it, with the tags edited by admins ([`Event::DeviceTagsSet`]).
    pub info: DeviceInfo,
    /// The tags its agent gave.
    pub agent_tags: Vec<String>,
    /// The agent that offers it (the last one that did).
    pub agent: String,
    /// Derived: see the crate documentation.
    pub state: DeviceState,
    /// Epoch of its last grant (0: never granted).
    pub epoch: Epoch,
    /// Its live lease.
    pub lease: Option<LeaseId>,
    /// The live leases of secondary connections running on it (riders of its group's
    /// lease, see [`crate::groups`]): while any lives, it is busy.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub riders: BTreeSet<LeaseId>,
    /// The lease that ended without its agent confirming teardown: the device needs a check.
    pub unconfirmed: Option<LeaseId>,
    /// Its agent no longer lists it; it stays only until its lease ends, without renewals.
    pub withdrawn: bool,
}

impl DeviceEntry {
    /// Its live leases: its holder's, then its riders' (see [`crate::groups`]).
    pub fn leases(&self) -> impl Iterator<Item = LeaseId> + '_ {
        self.lease.into_iter().chain(self.riders.iter().copied())
    }
}

/// A live lease. Leases that ended are not kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: LeaseId,
    pub epoch: Epoch,
    pub holder: Holder,
    pub device: String,
    pub expires: Millis,
}

impl Lease {
    /// Its job, if a job holds it.
    pub fn job(&self) -> Option<JobId> {
        self.holder.job()
    }
}

/// A person's lease, from its request on. Kept after it ended (a call about it is answered
/// "gone", not "unknown").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonLease {
    pub principal: PrincipalId,
    pub name: String,
    pub spec: JobSpec,
    /// How long a grant or a renewal holds the device, in milliseconds.
    pub ttl_ms: u64,
    /// How long after the grant renewals may keep it, in milliseconds.
    pub cap_ms: u64,
    /// Public SSH keys the agent authorizes on the DUT (checked by the controller).
    pub ssh_keys: Vec<String>,
    pub state: PersonLeaseState,
    /// How it ended (set when ended).
    pub end: Option<LeaseEnd>,
    /// The grant's lease: live while held, the last one after.
    pub lease: Option<LeaseId>,
    pub device: Option<String>,
    pub requested: Millis,
    pub granted: Option<Millis>,
    /// Its deadline while held (the last one after it ended).
    pub expires: Option<Millis>,
    pub ended: Option<Millis>,
}

impl PersonLease {
    /// The latest deadline renewals may reach.
    pub fn cap(&self) -> Option<Millis> {
        self.granted
            .map(|g| g.plus(std::time::Duration::from_millis(self.cap_ms)))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AgentEntry {
    /// Its link: open and heard from (`Connected`: its devices take work), open but silent
    /// (`Silent`: its leases live on, its idle devices take no work), or closed.
    pub(crate) presence: AgentState,
    /// When it last connected or disconnected.
    pub(crate) since: Millis,
    pub(crate) devices: BTreeSet<String>,
}

/// Everything replay must rebuild.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct State {
    pub(crate) jobs: BTreeMap<JobId, JobEntry>,
    pub(crate) persons: BTreeMap<PersonLeaseId, PersonLease>,
    pub(crate) devices: BTreeMap<String, DeviceEntry>,
    pub(crate) leases: BTreeMap<LeaseId, Lease>,
    pub(crate) agents: BTreeMap<String, AgentEntry>,
    /// Waiters by device type; no empty sets.
    pub(crate) queue: BTreeMap<String, BTreeSet<QueueKey>>,
    /// The place of every unfinished job and every waiting person lease.
    pub(crate) places: BTreeMap<Waiter, QueueKey>,
    /// Waiters that entered the queue so far (the FIFO part of their key).
    pub(crate) arrivals: u64,
    /// The highest round granted so far, and the last round of each user's waiters.
    pub(crate) served_round: u64,
    pub(crate) rounds: BTreeMap<Option<PrincipalId>, u64>,
    /// Idle devices by device type; no empty sets.
    pub(crate) idle: BTreeMap<String, BTreeSet<String>>,
    /// Epochs of removed devices, so that a device registered again never reuses an epoch.
    pub(crate) retired: BTreeMap<String, Epoch>,
    /// One more than the highest lease id granted (ids start at 1): the next id of
    /// [`crate::LeaseIds::Sequential`].
    pub(crate) next_lease: u128,
    /// How many leases were granted: the grant number of [`crate::LeaseIds::Keyed`].
    pub(crate) grants: u64,
    /// When `tick` must end each live lease (see [`Scheduler::next_deadline`]), and the same
    /// ordered by time.
    pub(crate) deadline: BTreeMap<LeaseId, Millis>,
    pub(crate) deadlines: BTreeSet<(Millis, LeaseId)>,
    /// Devices an admin or the lab took out of the pool, by name (kept while unregistered).
    pub(crate) out_of_service: BTreeMap<String, crate::StateNote>,
    /// The last [`crate::MAX_HISTORY`] state changes of each device, oldest first.
    pub(crate) history: BTreeMap<String, std::collections::VecDeque<crate::StateNote>>,
    /// Admins' tag edits by device name.
    pub(crate) tag_edits: BTreeMap<String, crate::devices::TagEdits>,
    /// Infra errors in a row of each device (since its last other outcome or return to idle).
    pub(crate) infra_streak: BTreeMap<String, u32>,
    /// MultiNode groups by the id of their sub-job 0 (see [`crate::groups`]).
    pub(crate) groups: BTreeMap<JobId, crate::groups::Group>,
}

/// Changes `schedule` has not looked at yet.
#[derive(Clone, Debug, Default)]
pub(crate) struct Fresh {
    pub(crate) devices: BTreeSet<String>,
    pub(crate) waiters: BTreeSet<Waiter>,
}

/// Jobs, devices, leases and agents of one controller. See the crate documentation.
///
/// Two schedulers are equal when their configuration and state are equal (work not yet
/// looked at by `schedule` is not compared).
#[derive(Clone, Debug)]
pub struct Scheduler {
    pub(crate) config: Config,
    pub(crate) state: State,
    pub(crate) fresh: Fresh,
}

impl PartialEq for Scheduler {
    fn eq(&self, other: &Scheduler) -> bool {
        self.config == other.config && self.state == other.state
    }
}

impl Eq for Scheduler {}

fn unknown_job(event: &'static str, job: JobId) -> SchedulerError {
    SchedulerError::UnknownJob { event, job }
}

fn not_live(event: &'static str, lease: LeaseId) -> SchedulerError {
    SchedulerError::LeaseNotLive { event, lease }
}

impl Scheduler {
    pub fn new(config: Config) -> Scheduler {
        Scheduler {
            config,
            state: State {
                next_lease: 1,
                ..State::default()
            },
            fresh: Fresh::default(),
        }
    }

    /// Rebuilds a scheduler from its log.
    pub fn replay<'a>(
        config: Config,
        events: impl IntoIterator<Item = &'a Event>,
    ) -> Result<Scheduler, SchedulerError> {
        let mut s = Scheduler::new(config);
        for (index, event) in events.into_iter().enumerate() {
            s.apply(event).map_err(|e| SchedulerError::Replay {
                index,
                source: Box::new(e),
            })?;
        }
        Ok(s)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The one transition function. Checks that the event fits, then changes the state; an
    /// event that does not fit changes nothing.
    pub fn apply(&mut self, event: &Event) -> Result<(), SchedulerError> {
        let kind = event.kind();
        match event {
            Event::JobSubmitted { job, spec, at } => self.apply_submitted(*job, spec, *at),
            Event::AgentConnected { agent, devices, at } => {
                self.apply_connected(agent, devices, *at)
            }
            Event::AgentDisconnected { agent, at } => {
                let a = self
                    .state
                    .agents
                    .get_mut(agent)
                    .filter(|a| a.presence != AgentState::Disconnected)
                    .ok_or_else(|| SchedulerError::AgentNotConnected {
                        event: kind,
                        agent: agent.clone(),
                    })?;
                a.presence = AgentState::Disconnected;
                a.since = *at;
                let names: Vec<String> = a.devices.iter().cloned().collect();
                for name in names {
                    self.refresh(&name);
                }
                Ok(())
            }
            Event::AgentSilent { agent, at: _ } => {
                self.apply_presence(kind, agent, AgentState::Connected, AgentState::Silent)
            }
            Event::AgentHeard { agent, at: _ } => {
                self.apply_presence(kind, agent, AgentState::Silent, AgentState::Connected)
            }
            Event::LeaseGranted {
                lease,
                epoch,
                holder,
                device,
                expires,
                at,
            } => self.apply_granted(*lease, *epoch, holder, device, *expires, *at),
            Event::JobStarted { job, lease, at } => {
                let entry = self.state.jobs.get(job).ok_or(unknown_job(kind, *job))?;
                if entry.state != JobState::Assigned {
                    return Err(SchedulerError::JobState {
                        event: kind,
                        job: *job,
                        state: entry.state,
                    });
                }
                self.check_lease_of(kind, *lease, *job)?;
                if let Some(entry) = self.state.jobs.get_mut(job) {
                    entry.state = JobState::Running;
                    entry.started = Some(*at);
                }
                Ok(())
            }
            Event::LeaseRenewed { lease, expires } => {
                let l = self
                    .state
                    .leases
                    .get_mut(lease)
                    .ok_or(not_live(kind, *lease))?;
                l.expires = *expires;
                if let Some(p) = l.holder.person().map(|p| p.lease)
                    && let Some(entry) = self.state.persons.get_mut(&p)
                {
                    entry.expires = Some(*expires);
                }
                self.redeadline(*lease);
                Ok(())
            }
            Event::CancelRequested { job, at } => {
                let entry = self
                    .state
                    .jobs
                    .get_mut(job)
                    .ok_or(unknown_job(kind, *job))?;
                if !matches!(entry.state, JobState::Assigned | JobState::Running) {
                    return Err(SchedulerError::JobState {
                        event: kind,
                        job: *job,
                        state: entry.state,
                    });
                }
                entry.state = JobState::Canceling;
                entry.cancel_requested = Some(*at);
                if let Some(lease) = entry.lease {
                    self.redeadline(lease);
                }
                Ok(())
            }
            Event::JobRequeued { job, at: _ } => {
                let entry = self
                    .state
                    .jobs
                    .get_mut(job)
                    .ok_or(unknown_job(kind, *job))?;
                if entry.state != JobState::Assigned {
                    return Err(SchedulerError::JobState {
                        event: kind,
                        job: *job,
                        state: entry.state,
                    });
                }
                if entry.spec.group.is_some() {
                    return Err(SchedulerError::Group {
                        job: *job,
                        why: "a sub-job of a group is never requeued".into(),
                    });
                }
                entry.state = JobState::Queued;
                entry.lease = None;
                entry.device = None;
                entry.started = None;
                let ty = entry.spec.device_type.clone();
                let waiter = Waiter::Job(*job);
                if let Some(key) = self.state.places.get(&waiter) {
                    self.state.queue.entry(ty).or_default().insert(*key);
                }
                self.fresh.waiters.insert(waiter);
                Ok(())
            }
            Event::JobFinished {
                job,
                outcome,
                reason,
                at,
            } => {
                let entry = self
                    .state
                    .jobs
                    .get_mut(job)
                    .ok_or(unknown_job(kind, *job))?;
                if entry.state == JobState::Finished {
                    return Err(SchedulerError::JobState {
                        event: kind,
                        job: *job,
                        state: entry.state,
                    });
                }
                let ty = entry.spec.device_type.clone();
                let ran_on = (entry.state != JobState::Queued)
                    .then(|| entry.device.clone())
                    .flatten();
                let group = entry.spec.group.as_ref().map(|g| g.id);
                if let Some(group) = group {
                    self.dequeue_group(group);
                }
                let Some(entry) = self.state.jobs.get_mut(job) else {
                    return Err(unknown_job(kind, *job));
                };
                if let Some(key) = self.state.places.remove(&Waiter::Job(*job)) {
                    remove_from(&mut self.state.queue, &ty, &key);
                }
                entry.state = JobState::Finished;
                entry.outcome = Some(*outcome);
                entry.reason = reason.clone();
                entry.finished = Some(*at);
                if let Some(lease) = entry.lease {
                    self.redeadline(lease);
                }
                if let Some(device) = ran_on {
                    self.count_outcome(&device, *outcome);
                }
                Ok(())
            }
            Event::LeaseReleased {
                lease,
                device_state,
                at: _,
            } => self.apply_released(*lease, *device_state),
            Event::PersonLeaseRequested {
                person,
                principal,
                name,
                spec,
                ttl_ms,
                cap_ms,
                ssh_keys,
                at,
            } => {
                let request = PersonLease {
                    principal: *principal,
                    name: name.clone(),
                    spec: spec.clone(),
                    ttl_ms: *ttl_ms,
                    cap_ms: *cap_ms,
                    ssh_keys: ssh_keys.clone(),
                    state: PersonLeaseState::Waiting,
                    end: None,
                    lease: None,
                    device: None,
                    requested: *at,
                    granted: None,
                    expires: None,
                    ended: None,
                };
                self.apply_person_requested(*person, request)
            }
            Event::PersonLeaseEnded { person, end, at } => {
                self.apply_person_ended(*person, end, *at)
            }
            Event::DeviceStateSet {
                device,
                state,
                reason,
                by,
                job,
                at,
            } => {
                let note = crate::StateNote {
                    state: *state,
                    reason: reason.clone(),
                    by: by.clone(),
                    job: *job,
                    at: *at,
                };
                self.apply_state_set(device, note)
            }
            Event::DeviceTagsSet {
                device,
                add,
                remove,
                by: _,
                at: _,
            } => self.apply_tags_set(device, add, remove),
            Event::DeviceReady { device, at: _ } => {
                let connected = self
                    .state
                    .devices
                    .get(device)
                    .is_some_and(|d| self.agent_is_connected(&d.agent));
                let d = self.state.devices.get_mut(device).ok_or_else(|| {
                    SchedulerError::UnknownDevice {
                        event: kind,
                        device: device.clone(),
                    }
                })?;
                // Out of service or not: the agent confirms teardown either way.
                if !(connected && d.lease.is_none() && d.unconfirmed.is_some()) {
                    return Err(SchedulerError::DeviceState {
                        event: kind,
                        device: device.clone(),
                        state: d.state,
                    });
                }
                d.unconfirmed = None;
                self.refresh(device);
                Ok(())
            }
        }
    }

    fn apply_submitted(
        &mut self,
        job: JobId,
        spec: &JobSpec,
        at: Millis,
    ) -> Result<(), SchedulerError> {
        if self.state.jobs.contains_key(&job) {
            return Err(SchedulerError::DuplicateJob(job));
        }
        if spec.priority > MAX_PRIORITY {
            return Err(SchedulerError::Priority(spec.priority));
        }
        match &spec.group {
            Some(g) => self.check_member(job, g)?,
            None => self.enqueue(Waiter::Job(job), spec),
        }
        self.state.jobs.insert(
            job,
            JobEntry {
                spec: spec.clone(),
                state: JobState::Queued,
                outcome: None,
                reason: String::new(),
                lease: None,
                device: None,
                submitted: at,
                started: None,
                cancel_requested: None,
                finished: None,
            },
        );
        self.add_member(job, spec);
        Ok(())
    }

    /// Gives a new waiter its place (see [`QueueKey`]) and puts it in the queue.
    pub(crate) fn enqueue(&mut self, waiter: Waiter, spec: &JobSpec) {
        let key = self.enqueue_keyed(waiter, spec);
        self.state
            .queue
            .entry(spec.device_type.clone())
            .or_default()
            .insert(key);
    }

    /// Gives a new waiter its place (see [`QueueKey`]): one more arrival, its owner's next
    /// fair-share round. The caller puts the key in the queue.
    pub(crate) fn enqueue_keyed(&mut self, waiter: Waiter, spec: &JobSpec) -> QueueKey {
        let round = match self.state.rounds.get(&spec.owner) {
            Some(last) => last.saturating_add(1).max(self.state.served_round),
            None => self.state.served_round,
        };
        self.state.rounds.insert(spec.owner, round);
        self.state.arrivals = self.state.arrivals.saturating_add(1);
        let key = (Reverse(spec.priority), round, self.state.arrivals, waiter);
        self.state.places.insert(waiter, key);
        self.fresh.waiters.insert(waiter);
        key
    }

    /// The spec of a job or a person's lease.
    pub(crate) fn spec_of(&self, waiter: Waiter) -> Option<&JobSpec> {
        match waiter {
            Waiter::Job(job) => self.state.jobs.get(&job).map(|j| &j.spec),
            Waiter::Person(p) => self.state.persons.get(&p).map(|p| &p.spec),
        }
    }

    /// Whether the waiter is in the queue (a queued job, a waiting person's lease; a group's
    /// lead while its whole group is queued).
    pub(crate) fn is_waiting(&self, waiter: Waiter) -> bool {
        match waiter {
            Waiter::Job(job) => match self.state.groups.get(&job) {
                Some(g) => g.queued,
                None => self
                    .state
                    .jobs
                    .get(&job)
                    .is_some_and(|j| j.state == JobState::Queued && j.spec.group.is_none()),
            },
            Waiter::Person(p) => self
                .state
                .persons
                .get(&p)
                .is_some_and(|p| p.state == PersonLeaseState::Waiting),
        }
    }
}

/// Removes `item` from the set under `key`, dropping the set when it becomes empty.
pub(crate) fn remove_from<K, T, Q>(map: &mut BTreeMap<K, BTreeSet<T>>, key: &str, item: &Q)
where
    K: Ord + std::borrow::Borrow<str>,
    T: Ord + std::borrow::Borrow<Q>,
    Q: Ord + ?Sized,
{
    if let Some(set) = map.get_mut(key) {
        set.remove(item);
        if set.is_empty() {
            map.remove(key);
        }
    }
}
