//! Applying an agent's connection, a grant and a release, and keeping the device index in
//! step: a device's state is derived from its facts ([`Scheduler::refresh`]) and the idle
//! index follows it in the same call.

use super::*;

impl Scheduler {
    pub(super) fn apply_connected(
        &mut self,
        agent: &str,
        devices: &[DeviceInfo],
        at: Millis,
    ) -> Result<(), SchedulerError> {
        let mut listed = BTreeSet::new();
        for d in devices {
            if !listed.insert(d.name.as_str()) {
                return Err(SchedulerError::DuplicateDevice(d.name.clone()));
            }
            if let Some(owner) = self.taken_by_other(&d.name, agent) {
                return Err(SchedulerError::DeviceTaken {
                    device: d.name.clone(),
                    agent: owner.to_owned(),
                });
            }
        }
        let entry = self
            .state
            .agents
            .entry(agent.to_owned())
            .or_insert_with(|| AgentEntry {
                presence: AgentState::Connected,
                since: at,
                devices: BTreeSet::new(),
            });
        entry.presence = AgentState::Connected;
        entry.since = at;
        // Devices the agent no longer lists.
        let gone: Vec<String> = entry
            .devices
            .iter()
            .filter(|n| !listed.contains(n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            let leased = self
                .state
                .devices
                .get(&name)
                .is_some_and(|d| d.lease.is_some() || !d.riders.is_empty());
            if leased {
                if let Some(d) = self.state.devices.get_mut(&name) {
                    d.withdrawn = true;
                }
            } else {
                self.retire(&name);
            }
        }
        for info in devices {
            self.unindex(&info.name);
            let previous = self.state.devices.get(&info.name).map(|d| d.agent.clone());
            if let Some(previous) = previous.filter(|p| p != agent)
                && let Some(a) = self.state.agents.get_mut(&previous)
            {
                a.devices.remove(&info.name);
            }
            let tags = self.effective_tags(&info.name, &info.tags);
            match self.state.devices.get_mut(&info.name) {
                Some(d) => {
                    d.info = info.clone();
                    d.info.tags = tags;
                    d.agent_tags = info.tags.clone();
                    d.agent = agent.to_owned();
                    d.withdrawn = false;
                }
                None => {
                    let epoch = self.state.retired.remove(&info.name).unwrap_or(Epoch(0));
                    self.state.devices.insert(
                        info.name.clone(),
                        DeviceEntry {
                            info: DeviceInfo {
                                tags,
                                ..info.clone()
                            },
                            agent_tags: info.tags.clone(),
                            agent: agent.to_owned(),
                            state: DeviceState::Offline,
                            epoch,
                            lease: None,
                            riders: BTreeSet::new(),
                            unconfirmed: None,
                            withdrawn: false,
                        },
                    );
                }
            }
            if let Some(a) = self.state.agents.get_mut(agent) {
                a.devices.insert(info.name.clone());
            }
            // Its description may have changed: let schedule look at it again.
            self.refresh(&info.name);
            if self
                .state
                .devices
                .get(&info.name)
                .is_some_and(|d| d.state == DeviceState::Idle)
            {
                self.fresh.devices.insert(info.name.clone());
            }
        }
        let names: Vec<String> = self
            .state
            .agents
            .get(agent)
            .map(|a| a.devices.iter().cloned().collect())
            .unwrap_or_default();
        for name in names {
            self.refresh(&name);
        }
        Ok(())
    }

    pub(super) fn apply_granted(
        &mut self,
        lease: LeaseId,
        epoch: Epoch,
        holder: &Holder,
        device: &str,
        expires: Millis,
        at: Millis,
    ) -> Result<(), SchedulerError> {
        const KIND: &str = "lease-granted";
        let sequential = self.config.lease_ids == crate::LeaseIds::Sequential;
        if self.state.leases.contains_key(&lease) || (sequential && lease.0 < self.state.next_lease)
        {
            return Err(SchedulerError::LeaseReused { lease });
        }
        let waiter = holder.waiter();
        match holder {
            Holder::Job(job) => {
                let j = self.state.jobs.get(job).ok_or(unknown_job(KIND, *job))?;
                if j.state != JobState::Queued {
                    return Err(SchedulerError::JobState {
                        event: KIND,
                        job: *job,
                        state: j.state,
                    });
                }
            }
            Holder::Person(PersonHolder {
                lease: person,
                principal,
                name,
            }) => {
                let p =
                    self.state
                        .persons
                        .get(person)
                        .ok_or(SchedulerError::UnknownPersonLease {
                            event: KIND,
                            lease: *person,
                        })?;
                if p.state != PersonLeaseState::Waiting {
                    return Err(SchedulerError::PersonLeaseState {
                        event: KIND,
                        lease: *person,
                        state: p.state,
                    });
                }
                if p.principal != *principal || p.name != *name {
                    return Err(SchedulerError::HolderMismatch(*person));
                }
            }
        }
        let spec = self.spec_of(waiter).cloned().unwrap_or_default();
        if let (Holder::Job(job), Some(g)) = (holder, &spec.group)
            && let Some(host) = g.host
        {
            return self.apply_rider_granted(*job, g.id, host, lease, epoch, device, expires);
        }
        let d = self
            .state
            .devices
            .get(device)
            .ok_or_else(|| SchedulerError::UnknownDevice {
                event: KIND,
                device: device.to_owned(),
            })?;
        if d.state != DeviceState::Idle {
            return Err(SchedulerError::DeviceState {
                event: KIND,
                device: device.to_owned(),
                state: d.state,
            });
        }
        if !spec.fits(&d.info) {
            return Err(SchedulerError::NoFit {
                waiter,
                device: device.to_owned(),
            });
        }
        if epoch <= d.epoch {
            return Err(SchedulerError::EpochNotRaised {
                device: device.to_owned(),
                epoch,
                current: d.epoch,
            });
        }
        if let Some(g) = &spec.group {
            let id = g.id;
            if let Some(key) = self.state.places.get(&Waiter::Job(id)).copied() {
                self.state.served_round = self.state.served_round.max(key.1);
            }
            self.dequeue_group(id);
        } else if let Some(key) = self.state.places.get(&waiter).copied() {
            remove_from(&mut self.state.queue, &spec.device_type, &key);
            self.state.served_round = self.state.served_round.max(key.1);
        }
        match holder {
            Holder::Job(job) => {
                if let Some(j) = self.state.jobs.get_mut(job) {
                    j.state = JobState::Assigned;
                    j.lease = Some(lease);
                    j.device = Some(device.to_owned());
                    j.started = None;
                }
            }
            Holder::Person(p) => {
                if let Some(p) = self.state.persons.get_mut(&p.lease) {
                    p.state = PersonLeaseState::Held;
                    p.lease = Some(lease);
                    p.device = Some(device.to_owned());
                    p.granted = Some(at);
                    p.expires = Some(expires);
                }
            }
        }
        if let Some(d) = self.state.devices.get_mut(device) {
            d.epoch = epoch;
            d.lease = Some(lease);
        }
        self.record_grant(Lease {
            id: lease,
            epoch,
            holder: holder.clone(),
            device: device.to_owned(),
            expires,
        });
        Ok(())
    }

    /// The part of every grant after its checks and holder: the live lease, the id and grant
    /// counters, the device's state and the lease's deadline.
    fn record_grant(&mut self, lease: Lease) {
        let (id, device) = (lease.id, lease.device.clone());
        self.state.leases.insert(id, lease);
        self.state.next_lease = self.state.next_lease.max(id.0.saturating_add(1));
        self.state.grants = self.state.grants.saturating_add(1);
        self.refresh(&device);
        self.redeadline(id);
    }

    /// The grant of a secondary connection's lease on the device of its group's sub-job
    /// `host` (checked: that sub-job holds it now, with `epoch`). The device keeps its lease
    /// and epoch; it is busy until every rider's lease is released too.
    #[allow(clippy::too_many_arguments)]
    fn apply_rider_granted(
        &mut self,
        job: JobId,
        group: JobId,
        host: u32,
        lease: LeaseId,
        epoch: Epoch,
        device: &str,
        expires: Millis,
    ) -> Result<(), SchedulerError> {
        let bad = |why: String| SchedulerError::Group { job, why };
        let host_job = self
            .group(group)
            .and_then(|m| m.get(host as usize).copied())
            .ok_or_else(|| bad(format!("group {group} has no sub-job {host}")))?;
        let host_lease = self.state.jobs.get(&host_job).and_then(|j| j.lease);
        let d = self
            .state
            .devices
            .get(device)
            .ok_or_else(|| SchedulerError::UnknownDevice {
                event: "lease-granted",
                device: device.to_owned(),
            })?;
        if host_lease.is_none() || d.lease != host_lease {
            return Err(bad(format!(
                "its host, sub-job {host_job}, does not hold device {device}"
            )));
        }
        if epoch != d.epoch {
            return Err(bad(format!(
                "epoch {epoch} is not the epoch {} of its host's device {device}",
                d.epoch
            )));
        }
        if let Some(key) = self.state.places.get(&Waiter::Job(group)).copied() {
            self.state.served_round = self.state.served_round.max(key.1);
        }
        self.dequeue_group(group);
        if let Some(j) = self.state.jobs.get_mut(&job) {
            j.state = JobState::Assigned;
            j.lease = Some(lease);
            j.device = Some(device.to_owned());
            j.started = None;
        }
        if let Some(d) = self.state.devices.get_mut(device) {
            d.riders.insert(lease);
        }
        self.record_grant(Lease {
            id: lease,
            epoch,
            holder: Holder::Job(job),
            device: device.to_owned(),
            expires,
        });
        Ok(())
    }

    pub(super) fn apply_released(
        &mut self,
        lease: LeaseId,
        device_state: DeviceState,
    ) -> Result<(), SchedulerError> {
        const KIND: &str = "lease-released";
        if !matches!(device_state, DeviceState::Idle | DeviceState::NeedsCheck) {
            return Err(SchedulerError::ReleaseState(device_state));
        }
        let l = self.state.leases.get(&lease).ok_or(not_live(KIND, lease))?;
        match &l.holder {
            Holder::Job(job) => {
                let entry = self.state.jobs.get(job).ok_or(unknown_job(KIND, *job))?;
                if !matches!(entry.state, JobState::Queued | JobState::Finished) {
                    return Err(SchedulerError::LeaseInUse {
                        waiter: Waiter::Job(*job),
                        state: entry.state.as_str(),
                    });
                }
            }
            Holder::Person(p) => {
                let entry =
                    self.state
                        .persons
                        .get(&p.lease)
                        .ok_or(SchedulerError::UnknownPersonLease {
                            event: KIND,
                            lease: p.lease,
                        })?;
                if entry.state != PersonLeaseState::Ended {
                    return Err(SchedulerError::LeaseInUse {
                        waiter: Waiter::Person(p.lease),
                        state: entry.state.as_str(),
                    });
                }
            }
        }
        if !self.state.devices.contains_key(&l.device) {
            return Err(SchedulerError::UnknownDevice {
                event: KIND,
                device: l.device.clone(),
            });
        }
        let device = l.device.clone();
        self.state.leases.remove(&lease);
        self.redeadline(lease);
        let mut withdrawn = false;
        if let Some(d) = self.state.devices.get_mut(&device) {
            if d.riders.remove(&lease) {
                // A secondary connection's end leaves the device as its holder has it (its
                // teardown touched only the agent's SSH client).
            } else {
                d.lease = None;
                d.unconfirmed = (device_state == DeviceState::NeedsCheck).then_some(lease);
            }
            withdrawn = d.withdrawn && d.lease.is_none() && d.riders.is_empty();
        }
        if withdrawn {
            self.retire(&device);
        } else {
            self.refresh(&device);
        }
        Ok(())
    }

    /// The connected agent, other than `agent`, that offers device `name`.
    pub(crate) fn taken_by_other(&self, name: &str, agent: &str) -> Option<&str> {
        let d = self.state.devices.get(name)?;
        (d.agent != agent && self.agent_is_connected(&d.agent)).then_some(d.agent.as_str())
    }

    /// Checks that `lease` is live and belongs to `job`.
    pub(super) fn check_lease_of(
        &self,
        event: &'static str,
        lease: LeaseId,
        job: JobId,
    ) -> Result<(), SchedulerError> {
        let l = self
            .state
            .leases
            .get(&lease)
            .ok_or(not_live(event, lease))?;
        if l.job() != Some(job) {
            return Err(SchedulerError::LeaseOfOtherJob {
                event,
                lease,
                job,
                holder: l.holder.waiter(),
            });
        }
        Ok(())
    }

    /// Removes a device that holds no lease, keeping its epoch for a later registration.
    pub(crate) fn retire(&mut self, name: &str) {
        self.unindex(name);
        if let Some(d) = self.state.devices.remove(name) {
            if let Some(a) = self.state.agents.get_mut(&d.agent) {
                a.devices.remove(name);
            }
            self.state.retired.insert(name.to_owned(), d.epoch);
        }
        self.fresh.devices.remove(name);
    }

    /// Takes a device out of the idle index.
    pub(super) fn unindex(&mut self, name: &str) {
        if let Some(d) = self.state.devices.get(name) {
            let ty = d.info.device_type.clone();
            remove_from(&mut self.state.idle, &ty, name);
        }
    }

    /// Moves a connected agent between heard (`Connected`) and `Silent`, refreshing its
    /// devices: a silent agent's idle devices go offline, its busy ones keep their leases.
    pub(super) fn apply_presence(
        &mut self,
        kind: &'static str,
        agent: &str,
        from: AgentState,
        to: AgentState,
    ) -> Result<(), SchedulerError> {
        let a = self
            .state
            .agents
            .get_mut(agent)
            .filter(|a| a.presence == from)
            .ok_or_else(|| SchedulerError::AgentPresence {
                event: kind,
                agent: agent.to_owned(),
                expected: from,
            })?;
        a.presence = to;
        let names: Vec<String> = a.devices.iter().cloned().collect();
        for name in names {
            self.refresh(&name);
        }
        Ok(())
    }

    /// Derives a device's state from its facts and keeps the idle index in step. A device that
    /// becomes idle is noted for `schedule`.
    pub(crate) fn refresh(&mut self, name: &str) {
        let Some(d) = self.state.devices.get(name) else {
            return;
        };
        let takes_work = self.agent_takes_work(&d.agent);
        let set = self.state.out_of_service.get(name).map(|n| n.state);
        let state = if d.lease.is_some() || !d.riders.is_empty() {
            DeviceState::Busy
        } else if let Some(set) = set {
            set
        } else if !takes_work {
            DeviceState::Offline
        } else if d.unconfirmed.is_some() {
            DeviceState::NeedsCheck
        } else {
            DeviceState::Idle
        };
        let was = d.state;
        let ty = d.info.device_type.clone();
        // Its agent's connection may have changed: every lease on it (riders too) has a
        // new deadline.
        let leases: Vec<LeaseId> = d.leases().collect();
        if let Some(d) = self.state.devices.get_mut(name) {
            d.state = state;
        }
        for lease in leases {
            self.redeadline(lease);
        }
        if state == DeviceState::Idle {
            self.state
                .idle
                .entry(ty)
                .or_default()
                .insert(name.to_owned());
            if was != DeviceState::Idle {
                self.fresh.devices.insert(name.to_owned());
            }
        } else {
            remove_from(&mut self.state.idle, &ty, name);
        }
    }
}
