//! What the scheduler answers about its state (jobs, devices, leases, people's leases, the
//! queue) and the deadline index of live leases. Nothing here changes what replay rebuilds
//! except through [`Scheduler::redeadline`], which keeps the index in step with `apply`.

use crate::event::Waiter;
use crate::state::{DeviceEntry, JobEntry, Lease, PersonLease, QueueKey, Scheduler};
use proto::api::AgentState;
use proto::{Epoch, JobId, JobState, LeaseId, Millis, PersonLeaseId};
use std::cmp::Reverse;
use std::collections::BTreeSet;

impl Scheduler {
    pub fn job(&self, job: JobId) -> Option<&JobEntry> {
        self.state.jobs.get(&job)
    }

    /// Every job, by id.
    pub fn jobs(&self) -> impl Iterator<Item = (JobId, &JobEntry)> {
        self.state.jobs.iter().map(|(id, j)| (*id, j))
    }

    pub fn device(&self, name: &str) -> Option<&DeviceEntry> {
        self.state.devices.get(name)
    }

    /// Every registered device, by name.
    pub fn devices(&self) -> impl Iterator<Item = &DeviceEntry> {
        self.state.devices.values()
    }

    /// A live lease.
    pub fn lease(&self, lease: LeaseId) -> Option<&Lease> {
        self.state.leases.get(&lease)
    }

    /// Every live lease, by id.
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.state.leases.values()
    }

    pub fn is_live(&self, lease: LeaseId, epoch: Epoch) -> bool {
        self.state
            .leases
            .get(&lease)
            .is_some_and(|l| l.epoch == epoch)
    }

    /// Whether the agent's link is open (heard from or silent).
    pub fn agent_is_connected(&self, agent: &str) -> bool {
        self.state
            .agents
            .get(agent)
            .is_some_and(|a| a.presence != AgentState::Disconnected)
    }

    /// Whether the agent's idle devices take work: its link is open and it is not silent.
    pub fn agent_takes_work(&self, agent: &str) -> bool {
        self.agent_presence(agent) == Some(AgentState::Connected)
    }

    /// The agent's link as the scheduler knows it (`None`: never connected).
    pub fn agent_presence(&self, agent: &str) -> Option<AgentState> {
        self.state.agents.get(agent).map(|a| a.presence)
    }

    /// Device types of every registered device, whatever its state.
    pub fn device_types(&self) -> BTreeSet<String> {
        self.state
            .devices
            .values()
            .map(|d| d.info.device_type.clone())
            .collect()
    }

    /// A person's lease (waiting, held or ended).
    pub fn person_lease(&self, lease: PersonLeaseId) -> Option<&PersonLease> {
        self.state.persons.get(&lease)
    }

    /// Every person's lease, by id.
    pub fn person_leases(&self) -> impl Iterator<Item = (PersonLeaseId, &PersonLease)> {
        self.state.persons.iter().map(|(id, p)| (*id, p))
    }

    /// 0-based position of a queued job among all waiters in serving order (a sub-job of a
    /// group: its group's).
    pub fn queue_position(&self, job: JobId) -> Option<usize> {
        self.position(self.queue_waiter(job))
    }

    /// 0-based position of a waiter (a queued job, a waiting person's lease) among all
    /// waiters in serving order.
    pub fn position(&self, waiter: Waiter) -> Option<usize> {
        if !self.is_waiting(waiter) {
            return None;
        }
        let key = *self.state.places.get(&waiter)?;
        if self.state.groups.is_empty() {
            return Some(
                self.state
                    .queue
                    .values()
                    .map(|q| q.range(..key).count())
                    .sum(),
            );
        }
        // A group waits in several queues and counts once.
        let ahead: BTreeSet<Waiter> = self
            .state
            .queue
            .values()
            .flat_map(|q| q.range(..key))
            .map(|k| k.3)
            .collect();
        Some(ahead.len())
    }

    /// The serving order of a waiter: it comes before every waiter with a smaller value.
    pub fn serving_key(&self, waiter: Waiter) -> Option<(Reverse<u8>, u64, u64, Waiter)> {
        self.state.places.get(&waiter).copied()
    }

    /// How many waiters each device type's queue holds (types with none left out).
    pub fn waiting_by_type(&self) -> impl Iterator<Item = (&str, usize)> {
        self.state
            .queue
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(ty, q)| (ty.as_str(), q.len()))
    }

    /// Waiters in serving order (all device types).
    pub fn queued(&self) -> Vec<Waiter> {
        let mut keys: Vec<QueueKey> = self.state.queue.values().flatten().copied().collect();
        keys.sort_unstable();
        keys.dedup();
        keys.into_iter().map(|k| k.3).collect()
    }

    /// The earliest time at which [`Scheduler::tick`] would end a lease: its expiry, the end of
    /// its agent's disconnect grace, or the end of its job's cancel grace.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.state.deadlines.first().map(|(at, _)| *at)
    }

    /// Live leases whose deadline is `now` or earlier, by deadline.
    pub(crate) fn due(&self, now: Millis) -> Vec<LeaseId> {
        self.state
            .deadlines
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, lease)| *lease)
            .collect()
    }

    /// Recomputes the deadline of `lease` (drops it if the lease is not live).
    pub(crate) fn redeadline(&mut self, lease: LeaseId) {
        if let Some(old) = self.state.deadline.remove(&lease) {
            self.state.deadlines.remove(&(old, lease));
        }
        if let Some(l) = self.state.leases.get(&lease) {
            let at = self.deadline_of(l);
            self.state.deadline.insert(lease, at);
            self.state.deadlines.insert((at, lease));
        }
    }

    /// A job's lease ends at its expiry, its agent's disconnect grace or its cancel grace; a
    /// person's only at its expiry (its holder, not the agent, keeps it).
    pub(crate) fn deadline_of(&self, l: &Lease) -> Millis {
        let mut at = l.expires;
        let Some(job) = l.job() else {
            return at;
        };
        if let Some(since) = self.disconnected_since(&l.device) {
            at = at.min(since.plus(self.config.disconnect_grace));
        }
        if let Some(asked) = self.state.jobs.get(&job).and_then(|j| {
            (j.state == JobState::Canceling)
                .then_some(j.cancel_requested)
                .flatten()
        }) {
            at = at.min(asked.plus(self.config.cancel_grace));
        }
        at
    }

    /// When the agent of `device` disconnected, if it is disconnected.
    pub(crate) fn disconnected_since(&self, device: &str) -> Option<Millis> {
        let d = self.state.devices.get(device)?;
        let a = self.state.agents.get(&d.agent)?;
        (a.presence == AgentState::Disconnected).then_some(a.since)
    }
}
