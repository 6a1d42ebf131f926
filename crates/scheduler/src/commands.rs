//! Commands: what the controller's dispatcher calls. Each validates, then builds events and
//! applies them one by one through [`Scheduler::apply`], and returns them in order.

use crate::error::Refusal;
use crate::event::{Event, Holder, JobSpec, MAX_PRIORITY};
use crate::state::{Lease, Scheduler};
use proto::api::AgentState;
use proto::link::DeviceInfo;
use proto::{
    DeviceState, Epoch, JobId, JobState, LeaseEnd, LeaseId, Millis, Outcome, PersonLeaseId,
    PersonLeaseState, PrincipalId,
};
use std::collections::BTreeSet;
use std::time::Duration;

/// Which device a person asks for.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Want {
    /// This device (it must be registered).
    Device(String),
    /// Any device of this type with all these tags.
    Type {
        device_type: String,
        tags: Vec<String>,
    },
}

impl Scheduler {
    /// Applies `event` and records it in `out`. Commands only build events that fit; should
    /// one not fit (a bug), it is left out, so the returned events still rebuild this state,
    /// and debug builds panic to show the bug.
    pub(crate) fn emit(&mut self, out: &mut Vec<Event>, event: Event) {
        // A job's end reaches its group once its lease is released (or at once if queued).
        let ended = match &event {
            Event::LeaseReleased { lease, at, .. } => self
                .state
                .leases
                .get(lease)
                .and_then(|l| l.job())
                .map(|job| (job, *at)),
            Event::JobFinished { job, at, .. } => self
                .state
                .jobs
                .get(job)
                .filter(|j| j.state == JobState::Queued)
                .map(|_| (*job, *at)),
            _ => None,
        };
        match self.apply(&event) {
            Ok(()) => {
                out.push(event);
                if let Some((job, at)) = ended {
                    self.follow_group(out, job, at);
                }
            }
            Err(e) => {
                if cfg!(debug_assertions) {
                    panic!("the scheduler built an event that does not fit its state: {e}");
                }
            }
        }
    }

    /// Queues a job, then schedules.
    pub fn submit(
        &mut self,
        job: JobId,
        spec: JobSpec,
        now: Millis,
    ) -> Result<Vec<Event>, Refusal> {
        if self.state.jobs.contains_key(&job) {
            return Err(Refusal::DuplicateJob(job));
        }
        if spec.priority > MAX_PRIORITY {
            return Err(Refusal::Priority(spec.priority));
        }
        let mut out = Vec::new();
        self.emit(&mut out, Event::JobSubmitted { job, spec, at: now });
        out.extend(self.schedule(now));
        Ok(out)
    }

    /// Cancels a job: a queued one finishes at once; for an assigned or running one a cancel is
    /// requested (the controller tells the agent; the job finishes when the agent reports, or
    /// at the cancel grace). Canceling twice is fine.
    pub fn cancel(&mut self, job: JobId, now: Millis) -> Result<Vec<Event>, Refusal> {
        let state = self
            .state
            .jobs
            .get(&job)
            .ok_or(Refusal::UnknownJob(job))?
            .state;
        let mut out = Vec::new();
        if let Some(g) = self.group_of(job).cloned() {
            // A group is canceled as a whole, whichever sub-job is named.
            if state == JobState::Finished
                && self.group(g.id).is_some_and(|members| {
                    members
                        .iter()
                        .all(|m| self.job(*m).is_some_and(|j| j.state == JobState::Finished))
                })
            {
                return Err(Refusal::Finished(job));
            }
            self.end_group(&mut out, g.id, "canceled while queued", now);
            return Ok(out);
        }
        match state {
            JobState::Queued => self.emit(
                &mut out,
                Event::JobFinished {
                    job,
                    outcome: Outcome::Canceled,
                    reason: "canceled while queued".into(),
                    at: now,
                },
            ),
            JobState::Assigned | JobState::Running => {
                self.emit(&mut out, Event::CancelRequested { job, at: now });
            }
            JobState::Canceling => {}
            JobState::Finished => return Err(Refusal::Finished(job)),
        }
        Ok(out)
    }

    /// An agent connected (or reconnected) offering `devices`, and says it still holds the
    /// leases `held`.
    ///
    /// - Live leases on its devices that it does not hold are lost: their jobs finish
    ///   `infra-error`, and the devices, which the agent just said it holds nothing on, are ready.
    /// - Live leases it holds are renewed, except on devices it no longer lists.
    /// - Devices needing a check are ready unless the agent still holds the lease that ended
    ///   on them (it must tear that down first and send `DeviceReady`).
    /// - Devices it no longer lists are removed, or kept until their lease ends.
    ///
    /// Then schedules.
    pub fn agent_connected(
        &mut self,
        agent: &str,
        devices: &[DeviceInfo],
        held: &[(LeaseId, Epoch)],
        now: Millis,
    ) -> Result<Vec<Event>, Refusal> {
        let mut names = BTreeSet::new();
        for d in devices {
            if !names.insert(d.name.as_str()) {
                return Err(Refusal::DuplicateDevice(d.name.clone()));
            }
            if let Some(owner) = self.taken_by_other(&d.name, agent) {
                return Err(Refusal::DeviceTaken {
                    device: d.name.clone(),
                    agent: owner.to_owned(),
                });
            }
        }
        let mut out = Vec::new();
        self.emit(
            &mut out,
            Event::AgentConnected {
                agent: agent.to_owned(),
                devices: devices.to_vec(),
                at: now,
            },
        );
        let held_ids: BTreeSet<LeaseId> = held.iter().map(|(l, _)| *l).collect();
        let held: BTreeSet<(LeaseId, Epoch)> = held.iter().copied().collect();
        for l in self.job_leases_of(agent) {
            let withdrawn = self
                .state
                .devices
                .get(&l.device)
                .is_some_and(|d| d.withdrawn);
            if held.contains(&(l.id, l.epoch)) {
                if !withdrawn {
                    let expires = now.plus(self.config.lease_ttl);
                    self.emit(
                        &mut out,
                        Event::LeaseRenewed {
                            lease: l.id,
                            expires,
                        },
                    );
                }
                continue;
            }
            // A job the agent never took (its StartJob went out on a link that was ending)
            // has not run: it goes back to its place in the queue, as after a refused start.
            let never_started = l.job().filter(|job| {
                self.group_of(*job).is_none()
                    && self
                        .state
                        .jobs
                        .get(job)
                        .is_some_and(|j| j.state == JobState::Assigned)
            });
            if let Some(job) = never_started {
                self.requeue(&mut out, job, l.id, now);
            } else {
                let reason = format!("agent {agent} restarted and no longer runs the job");
                self.end_lease(
                    &mut out,
                    &l,
                    Outcome::InfraError,
                    reason,
                    DeviceState::NeedsCheck,
                    now,
                );
            }
            if self
                .state
                .devices
                .get(&l.device)
                .is_some_and(crate::devices::needs_check)
            {
                let device = l.device.clone();
                self.emit(&mut out, Event::DeviceReady { device, at: now });
            }
        }
        let ready: Vec<String> = self
            .devices_of(agent)
            .filter(|d| crate::devices::needs_check(d))
            .filter(|d| d.unconfirmed.is_none_or(|l| !held_ids.contains(&l)))
            .map(|d| d.info.name.clone())
            .collect();
        for device in ready {
            self.emit(&mut out, Event::DeviceReady { device, at: now });
        }
        out.extend(self.schedule(now));
        Ok(out)
    }

    /// An agent's connection ended. Its idle devices go offline; its leases live on until the
    /// disconnect grace. Nothing happens for an agent that is not connected.
    pub fn agent_disconnected(&mut self, agent: &str, now: Millis) -> Vec<Event> {
        let mut out = Vec::new();
        if self.agent_is_connected(agent) {
            self.emit(
                &mut out,
                Event::AgentDisconnected {
                    agent: agent.to_owned(),
                    at: now,
                },
            );
        }
        out
    }

    /// The connected agent was not heard from for a while: its idle devices take no new work
    /// until [`Scheduler::agent_heard`]. Its link and leases stay (the lease TTL fences its
    /// jobs). Nothing happens for an agent that is silent already or not connected.
    pub fn agent_silent(&mut self, agent: &str, now: Millis) -> Vec<Event> {
        let event = Event::AgentSilent {
            agent: agent.to_owned(),
            at: now,
        };
        self.presence_changed(agent, AgentState::Connected, event)
    }

    /// A silent agent spoke: its idle devices take work again, and waiting work is
    /// scheduled on them. Nothing happens for an agent that is not silent.
    pub fn agent_heard(&mut self, agent: &str, now: Millis) -> Vec<Event> {
        let event = Event::AgentHeard {
            agent: agent.to_owned(),
            at: now,
        };
        let mut out = self.presence_changed(agent, AgentState::Silent, event);
        if !out.is_empty() {
            out.extend(self.schedule(now));
        }
        out
    }

    /// Emits `event` if the agent's presence is `from`.
    fn presence_changed(&mut self, agent: &str, from: AgentState, event: Event) -> Vec<Event> {
        let mut out = Vec::new();
        if self.agent_presence(agent) == Some(from) {
            self.emit(&mut out, event);
        }
        out
    }

    /// The controller process restarted (after [`Scheduler::replay`]): no agent is connected
    /// any more, and every live job lease gets a full TTL, so the agents have time to come
    /// back. A person's lease keeps its stored deadline: a restart neither shortens nor
    /// lengthens it (if it passed meanwhile, the next `tick` ends it).
    pub fn restarted(&mut self, now: Millis) -> Vec<Event> {
        let mut out = Vec::new();
        let agents: Vec<String> = self
            .state
            .agents
            .iter()
            .filter(|(_, a)| a.presence != AgentState::Disconnected)
            .map(|(n, _)| n.clone())
            .collect();
        for agent in agents {
            self.emit(&mut out, Event::AgentDisconnected { agent, at: now });
        }
        let leases: Vec<LeaseId> = self
            .state
            .leases
            .values()
            .filter(|l| l.job().is_some())
            .map(|l| l.id)
            .collect();
        let expires = now.plus(self.config.lease_ttl);
        for lease in leases {
            self.emit(&mut out, Event::LeaseRenewed { lease, expires });
        }
        out
    }

    /// The agent is alive: renews the live job leases on its devices (not on those it
    /// withdrew). People renew their own leases ([`Scheduler::renew_person_lease`]).
    pub fn heartbeat(&mut self, agent: &str, now: Millis) -> Vec<Event> {
        let mut out = Vec::new();
        if !self.agent_is_connected(agent) {
            return out;
        }
        let expires = now.plus(self.config.lease_ttl);
        for l in self.job_leases_of(agent) {
            let withdrawn = self
                .state
                .devices
                .get(&l.device)
                .is_some_and(|d| d.withdrawn);
            if !withdrawn {
                self.emit(
                    &mut out,
                    Event::LeaseRenewed {
                        lease: l.id,
                        expires,
                    },
                );
            }
        }
        out
    }

    /// The agent started the job. Repeating it is fine.
    pub fn job_started(
        &mut self,
        lease: LeaseId,
        epoch: Epoch,
        now: Millis,
    ) -> Result<Vec<Event>, Refusal> {
        let (_, job) = self.live_job_lease(lease, epoch)?;
        let mut out = Vec::new();
        let assigned = self
            .state
            .jobs
            .get(&job)
            .is_some_and(|j| j.state == JobState::Assigned);
        if assigned {
            self.emit(
                &mut out,
                Event::JobStarted {
                    job,
                    lease,
                    at: now,
                },
            );
        }
        Ok(out)
    }

    /// The agent reports the end of the job: it finishes with `outcome` (`canceled` if a cancel
    /// was requested), the device is idle again, then schedules.
    pub fn job_finished(
        &mut self,
        lease: LeaseId,
        epoch: Epoch,
        outcome: Outcome,
        reason: String,
        now: Millis,
    ) -> Result<Vec<Event>, Refusal> {
        let (l, _) = self.live_job_lease(lease, epoch)?;
        let mut out = Vec::new();
        self.end_lease(&mut out, &l, outcome, reason, DeviceState::Idle, now);
        out.extend(self.schedule(now));
        Ok(out)
    }

    /// The agent could not start the job: it goes back to the queue at its old place (or
    /// finishes `canceled` if a cancel was requested meanwhile) and the device needs a check.
    /// Then schedules.
    pub fn start_refused(
        &mut self,
        lease: LeaseId,
        epoch: Epoch,
        now: Millis,
    ) -> Result<Vec<Event>, Refusal> {
        let (l, job) = self.live_job_lease(lease, epoch)?;
        let state = self
            .state
            .jobs
            .get(&job)
            .ok_or(Refusal::UnknownJob(job))?
            .state;
        let mut out = Vec::new();
        let grouped = self.group_of(job).is_some();
        match state {
            JobState::Assigned if grouped => {
                // A group is never partly requeued: its other sub-jobs may have started.
                let reason = "the agent could not start this sub-job of a group".to_owned();
                self.end_lease(
                    &mut out,
                    &l,
                    Outcome::InfraError,
                    reason,
                    DeviceState::NeedsCheck,
                    now,
                );
            }
            JobState::Assigned => self.requeue(&mut out, job, lease, now),
            JobState::Canceling => {
                let reason = "canceled; the agent did not start it".to_owned();
                self.end_lease(
                    &mut out,
                    &l,
                    Outcome::Canceled,
                    reason,
                    DeviceState::NeedsCheck,
                    now,
                );
            }
            state => return Err(Refusal::NotAssigned { job, state }),
        }
        out.extend(self.schedule(now));
        Ok(out)
    }

    /// The agent confirms that `device` is torn down: a device needing a check becomes idle.
    /// Then schedules.
    pub fn device_ready(
        &mut self,
        agent: &str,
        device: &str,
        now: Millis,
    ) -> Result<Vec<Event>, Refusal> {
        let d = self
            .state
            .devices
            .get(device)
            .ok_or_else(|| Refusal::UnknownDevice(device.to_owned()))?;
        if d.agent != agent {
            return Err(Refusal::NotYourDevice {
                device: device.to_owned(),
                agent: d.agent.clone(),
            });
        }
        if !self.agent_is_connected(agent) {
            return Err(Refusal::AgentNotConnected(agent.to_owned()));
        }
        if let Some(lease) = d.lease.or_else(|| d.riders.first().copied()) {
            return Err(Refusal::DeviceBusy {
                device: device.to_owned(),
                lease,
            });
        }
        let mut out = Vec::new();
        if crate::devices::needs_check(d) {
            let device = device.to_owned();
            self.emit(&mut out, Event::DeviceReady { device, at: now });
        }
        out.extend(self.schedule(now));
        Ok(out)
    }

    /// Ends the leases whose time is up, then schedules:
    /// - a cancel not confirmed within the cancel grace: `canceled`;
    /// - an agent disconnected for the disconnect grace: `infra-error`;
    /// - a lease not renewed before it expired: `infra-error`;
    /// - a person's lease at its deadline: ended `expired`.
    ///
    /// Every device needs a check afterwards: its agent confirms the teardown (a job's, or
    /// the session of a person's lease, DUT off) with `device_ready`.
    pub fn tick(&mut self, now: Millis) -> Vec<Event> {
        let mut out = Vec::new();
        let due: Vec<Lease> = self
            .due(now)
            .into_iter()
            .filter_map(|id| self.state.leases.get(&id).cloned())
            .collect();
        for l in due {
            if let Holder::Person(p) = &l.holder {
                let person = p.lease;
                self.end_person(&mut out, person, LeaseEnd::Expired, now);
                continue;
            }
            let (outcome, reason) = self.why_due(&l, now);
            self.end_lease(&mut out, &l, outcome, reason, DeviceState::NeedsCheck, now);
        }
        out.extend(self.schedule(now));
        out
    }

    fn why_due(&self, l: &Lease, now: Millis) -> (Outcome, String) {
        let agent = self
            .state
            .devices
            .get(&l.device)
            .map_or("?", |d| d.agent.as_str());
        let asked = l
            .job()
            .and_then(|job| self.state.jobs.get(&job))
            .filter(|j| j.state == JobState::Canceling)
            .and_then(|j| j.cancel_requested);
        if let Some(asked) = asked
            && asked.plus(self.config.cancel_grace) <= now
        {
            let grace = self.config.cancel_grace;
            let reason =
                format!("canceled at {asked}; agent {agent} did not confirm within {grace:?}");
            return (Outcome::Canceled, reason);
        }
        if let Some(since) = self.disconnected_since(&l.device)
            && since.plus(self.config.disconnect_grace) <= now
        {
            let grace = self.config.disconnect_grace;
            let reason = format!(
                "agent {agent} disconnected at {since} and did not return within {grace:?}"
            );
            return (Outcome::InfraError, reason);
        }
        let silent = Millis(l.expires.0.saturating_sub(millis(self.config.lease_ttl)));
        let reason = format!("lease expired: agent {agent} silent since {silent}");
        (Outcome::InfraError, reason)
    }

    /// Finishes the lease's job (`canceled` if it was canceling) and releases the lease.
    fn end_lease(
        &mut self,
        out: &mut Vec<Event>,
        l: &Lease,
        outcome: Outcome,
        reason: String,
        device_state: DeviceState,
        now: Millis,
    ) {
        let Some(job) = l.job() else {
            return;
        };
        let canceling = self
            .state
            .jobs
            .get(&job)
            .is_some_and(|j| j.state == JobState::Canceling);
        let outcome = if canceling {
            Outcome::Canceled
        } else {
            outcome
        };
        let check = self
            .state
            .jobs
            .get(&job)
            .is_some_and(|j| j.spec.purpose == crate::JobPurpose::HealthCheck);
        let check_reason = check.then(|| reason.clone());
        let quarantine = (outcome == Outcome::InfraError && !check).then(|| reason.clone());
        self.emit(
            out,
            Event::JobFinished {
                job,
                outcome,
                reason,
                at: now,
            },
        );
        if let Some(reason) = quarantine {
            self.quarantine(out, &l.device, job, &reason, now);
        }
        if let Some(reason) = check_reason {
            self.checked(out, &l.device, job, outcome, &reason, now);
        }
        self.emit(
            out,
            Event::LeaseReleased {
                lease: l.id,
                device_state,
                at: now,
            },
        );
    }

    /// A person asks for a device for `ttl`, renewable up to `cap` after the grant (the
    /// controller's cap for the person's role). The request waits in the one pool with the
    /// jobs (`priority`, then fair share, then arrival); then schedules, so the answer may
    /// already hold the grant.
    #[allow(clippy::too_many_arguments)]
    pub fn request_person_lease(
        &mut self,
        person: PersonLeaseId,
        principal: PrincipalId,
        name: &str,
        want: Want,
        priority: u8,
        ttl: Duration,
        cap: Duration,
        ssh_keys: Vec<String>,
        now: Millis,
    ) -> Result<Vec<Event>, Refusal> {
        if self.state.persons.contains_key(&person) {
            return Err(Refusal::DuplicatePersonLease(person));
        }
        if priority > MAX_PRIORITY {
            return Err(Refusal::Priority(priority));
        }
        let (ttl_ms, cap_ms) = (millis(ttl), millis(cap));
        if ttl_ms == 0 || ttl_ms > cap_ms {
            return Err(Refusal::Duration { ttl_ms, cap_ms });
        }
        let spec = match want {
            Want::Device(name) => {
                let d = self
                    .state
                    .devices
                    .get(&name)
                    .ok_or_else(|| Refusal::UnknownDevice(name.clone()))?;
                JobSpec {
                    device_type: d.info.device_type.clone(),
                    tags: Vec::new(),
                    priority,
                    owner: Some(principal),
                    device: Some(name),
                    purpose: crate::JobPurpose::Ordinary,
                    ..Default::default()
                }
            }
            Want::Type { device_type, tags } => JobSpec {
                device_type,
                tags,
                priority,
                owner: Some(principal),
                device: None,
                purpose: crate::JobPurpose::Ordinary,
                ..Default::default()
            },
        };
        let mut out = Vec::new();
        self.emit(
            &mut out,
            Event::PersonLeaseRequested {
                person,
                principal,
                name: name.to_owned(),
                spec,
                ttl_ms,
                cap_ms,
                ssh_keys,
                at: now,
            },
        );
        out.extend(self.schedule(now));
        Ok(out)
    }

    /// Renews a held person's lease: its deadline becomes `now` + `ttl`, but never later than
    /// the cap after its grant and never earlier than it was. Renewing a waiting request does
    /// nothing (it has no deadline yet). The events are to be stored: the deadline must
    /// survive a controller restart.
    pub fn renew_person_lease(
        &mut self,
        person: PersonLeaseId,
        ttl: Duration,
        now: Millis,
    ) -> Result<Vec<Event>, Refusal> {
        let p = self.live_person(person)?;
        let mut out = Vec::new();
        if p.state != PersonLeaseState::Held {
            return Ok(out);
        }
        let (Some(lease), Some(cap)) = (p.lease, p.cap()) else {
            return Ok(out);
        };
        let current = self.state.leases.get(&lease).map_or(now, |l| l.expires);
        let expires = now.plus(ttl).min(cap).max(current);
        if expires != current {
            self.emit(&mut out, Event::LeaseRenewed { lease, expires });
        }
        Ok(out)
    }

    /// Ends a person's lease (released by its holder, or ended by an admin): a waiting
    /// request leaves the queue; a held device needs a check until its agent confirms that
    /// the session is torn down (DUT off: `device_ready`). Then schedules.
    pub fn end_person_lease(
        &mut self,
        person: PersonLeaseId,
        end: LeaseEnd,
        now: Millis,
    ) -> Result<Vec<Event>, Refusal> {
        self.live_person(person)?;
        let mut out = Vec::new();
        self.end_person(&mut out, person, end, now);
        out.extend(self.schedule(now));
        Ok(out)
    }

    pub(crate) fn end_person(
        &mut self,
        out: &mut Vec<Event>,
        person: PersonLeaseId,
        end: LeaseEnd,
        now: Millis,
    ) {
        let lease = self
            .state
            .persons
            .get(&person)
            .filter(|p| p.state == PersonLeaseState::Held)
            .and_then(|p| p.lease);
        self.emit(
            out,
            Event::PersonLeaseEnded {
                person,
                end,
                at: now,
            },
        );
        if let Some(lease) = lease {
            // The holder may have powered the DUT: only its agent can say it is off again.
            self.emit(
                out,
                Event::LeaseReleased {
                    lease,
                    device_state: DeviceState::NeedsCheck,
                    at: now,
                },
            );
        }
    }

    /// A person's lease that has not ended, or why not.
    fn live_person(&self, person: PersonLeaseId) -> Result<crate::PersonLease, Refusal> {
        let p = self
            .state
            .persons
            .get(&person)
            .ok_or(Refusal::UnknownPersonLease(person))?;
        if let Some(end) = &p.end {
            return Err(Refusal::PersonLeaseEnded {
                lease: person,
                end: end.clone(),
            });
        }
        Ok(p.clone())
    }

    /// A live lease named by an agent message, or why the message is refused.
    fn live_lease(&self, lease: LeaseId, epoch: Epoch) -> Result<Lease, Refusal> {
        match self.state.leases.get(&lease) {
            Some(l) if l.epoch == epoch => Ok(l.clone()),
            Some(l) => Err(Refusal::StaleEpoch {
                lease,
                given: epoch,
                current: l.epoch,
            }),
            // Keyed ids cannot tell a lease that ended from one never granted.
            None if self.config.lease_ids == crate::LeaseIds::Sequential
                && (lease.0 == 0 || lease.0 >= self.state.next_lease) =>
            {
                Err(Refusal::UnknownLease(lease))
            }
            None => Err(Refusal::LeaseNotLive(lease)),
        }
    }

    /// A live lease held by a job, named by an agent message (agents speak only of jobs).
    fn live_job_lease(&self, lease: LeaseId, epoch: Epoch) -> Result<(Lease, JobId), Refusal> {
        let l = self.live_lease(lease, epoch)?;
        match l.job() {
            Some(job) => Ok((l, job)),
            None => Err(Refusal::NotAJobLease(lease)),
        }
    }

    /// Live job leases on the devices of `agent` (riders included), by lease id (agents
    /// know nothing of the leases people hold).
    /// A job that never started goes back to its place in the queue; its device, which the
    /// agent may have touched, needs a check.
    fn requeue(&mut self, out: &mut Vec<Event>, job: JobId, lease: LeaseId, now: Millis) {
        self.emit(out, Event::JobRequeued { job, at: now });
        self.emit(
            out,
            Event::LeaseReleased {
                lease,
                device_state: DeviceState::NeedsCheck,
                at: now,
            },
        );
    }

    fn job_leases_of(&self, agent: &str) -> Vec<Lease> {
        let mut leases: Vec<Lease> = self
            .devices_of(agent)
            .flat_map(crate::DeviceEntry::leases)
            .filter_map(|id| self.state.leases.get(&id))
            .filter(|l| l.job().is_some())
            .cloned()
            .collect();
        leases.sort_by_key(|l| l.id);
        leases
    }

    fn devices_of<'a>(&'a self, agent: &str) -> impl Iterator<Item = &'a crate::DeviceEntry> {
        self.state
            .agents
            .get(agent)
            .into_iter()
            .flat_map(|a| a.devices.iter())
            .filter_map(|n| self.state.devices.get(n))
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
