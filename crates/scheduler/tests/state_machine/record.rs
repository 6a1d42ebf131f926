//! The model's bookkeeping of the state machine test: what each batch of events means for
//! the model (grants, ends, health checks' verdicts, quarantine) and a waiter's place in it.

use super::*;

impl Harness {
    pub(super) fn record(&mut self, events: &[Event]) {
        // Health checks that ended in this batch: (device, outcome).
        let mut checks = Vec::new();
        for e in events {
            if let Event::JobFinished { job, outcome, .. } = e
                && let Some(device) = self.ran_on.get(job)
                && self
                    .s
                    .job(*job)
                    .is_some_and(|j| j.spec.purpose == JobPurpose::HealthCheck)
            {
                checks.push((device.clone(), *outcome));
            }
            let json = serde_json::to_string(e).expect("serialises");
            let back: Event = serde_json::from_str(&json).expect("parses");
            assert_eq!(&back, e);
            match e {
                Event::JobSubmitted { job, spec, .. } => match &spec.group {
                    None => self.enqueue(Waiter::Job(*job), spec),
                    // A group enters the queue once, with its sub-job 0's place, when complete.
                    Some(g) if g.index + 1 == g.size => {
                        let lead = self.s.job(g.id).expect("sub-job 0").spec.clone();
                        self.enqueue(Waiter::Job(g.id), &lead);
                    }
                    Some(_) => {}
                },
                Event::PersonLeaseRequested { person, spec, .. } => {
                    self.enqueue(Waiter::Person(*person), spec);
                }
                Event::PersonLeaseEnded { person, end, .. } => {
                    assert!(
                        self.ended.insert(*person, end.clone()).is_none(),
                        "ended twice"
                    );
                }
                Event::LeaseGranted {
                    lease,
                    epoch,
                    holder,
                    device,
                    ..
                } => {
                    assert!(
                        !self.out.contains_key(device),
                        "out-of-service device {device} granted"
                    );
                    if let Holder::Job(job) = holder {
                        self.ran_on.insert(*job, device.clone());
                    }
                    assert!(
                        !self.granted.iter().any(|(l, _, _)| l == lease),
                        "lease ids are never reused"
                    );
                    let last = self.epochs.get(device).copied().unwrap_or(Epoch(0));
                    let rider = match holder {
                        Holder::Job(job) => self.s.group_of(*job).and_then(|g| g.host),
                        Holder::Person(_) => None,
                    };
                    if rider.is_some() {
                        assert_eq!(*epoch, last, "a rider has its host's epoch on {device}");
                    } else {
                        assert!(*epoch > last, "epochs of {device} rise");
                    }
                    self.epochs.insert(device.clone(), *epoch);
                    self.granted.push((*lease, *epoch, device.clone()));
                    if let Holder::Person(p) = holder {
                        self.person_grants.insert(*lease);
                        let given = &self.s.person_lease(p.lease).expect("granted").ssh_keys;
                        let who = PEOPLE.iter().position(|(id, _)| *id == p.principal.0);
                        assert_eq!(Some(given), who.map(keys).as_ref());
                    }
                    let waiter = match holder {
                        Holder::Job(job) => {
                            Waiter::Job(self.s.group_of(*job).map_or(*job, |g| g.id))
                        }
                        Holder::Person(_) => holder.waiter(),
                    };
                    self.check_grant_order(waiter, device);
                    let round = self
                        .keys
                        .get(&waiter)
                        .expect("a granted waiter has a place")
                        .1;
                    self.served = self.served.max(round);
                }
                Event::AgentConnected { agent, .. } => {
                    self.gone.remove(agent);
                    self.silent.remove(agent);
                }
                Event::AgentDisconnected { agent, at } => {
                    self.gone.insert(agent.clone(), *at);
                    self.silent.remove(agent);
                }
                Event::AgentSilent { agent, .. } => {
                    assert!(!self.gone.contains_key(agent), "{agent} silent while gone");
                    assert!(self.silent.insert(agent.clone()), "{agent} silent twice");
                }
                Event::AgentHeard { agent, .. } => {
                    assert!(self.silent.remove(agent), "{agent} heard while not silent");
                }
                Event::CancelRequested { job, at } => {
                    self.cancels.insert(*job, *at);
                }
                Event::JobRequeued { job, .. } => {
                    self.ran_on.remove(job);
                }
                Event::JobFinished { job, outcome, .. } => {
                    if let Some(device) = self.ran_on.remove(job) {
                        match outcome {
                            Outcome::InfraError => *self.streak.entry(device).or_default() += 1,
                            Outcome::Canceled => {}
                            _ => {
                                self.streak.remove(&device);
                            }
                        }
                    }
                }
                Event::DeviceStateSet { device, state, .. } => {
                    if *state == DeviceState::Idle {
                        self.out.remove(device);
                        self.streak.remove(device);
                    } else {
                        self.out.insert(device.clone(), *state);
                    }
                }
                Event::DeviceTagsSet {
                    device,
                    add,
                    remove,
                    ..
                } => {
                    let (added, removed) = self.edits.entry(device.clone()).or_default();
                    for t in add {
                        removed.remove(t);
                        added.insert(t.clone());
                    }
                    for t in remove {
                        added.remove(t);
                        removed.insert(t.clone());
                    }
                }
                Event::LeaseReleased {
                    lease,
                    device_state,
                    ..
                } => {
                    assert!(self.granted.iter().any(|(l, _, _)| l == lease));
                    *self.released.entry(*lease).or_default() += 1;
                    if self.person_grants.contains(lease) {
                        assert_eq!(
                            *device_state,
                            DeviceState::NeedsCheck,
                            "a person's lease {lease} ended without its agent's check"
                        );
                        let device = self.granted.iter().find(|(l, _, _)| l == lease);
                        if let Some(d) = device.and_then(|(_, _, d)| self.s.device(d))
                            && d.lease.is_none()
                        {
                            assert_ne!(
                                d.state,
                                DeviceState::Idle,
                                "{} idle unchecked",
                                d.info.name
                            );
                        }
                    }
                }
                _ => {}
            }
        }
        for (device, outcome) in checks {
            let out = self.out.get(&device).copied();
            match outcome {
                Outcome::Canceled => {}
                Outcome::Passed => assert_ne!(out, Some(DeviceState::Bad), "{device}"),
                _ => assert!(
                    matches!(
                        out,
                        Some(DeviceState::Bad | DeviceState::Maintenance | DeviceState::Retired)
                    ),
                    "{device} after a failed check: {out:?}"
                ),
            }
        }
        self.log.extend(events.iter().cloned());
    }

    /// The model of a waiter's place: one round after its user's last, never below the round
    /// served; arrivals count up.
    pub(super) fn enqueue(&mut self, waiter: Waiter, spec: &JobSpec) {
        let round = match self.rounds.get(&spec.owner) {
            Some(last) => (last + 1).max(self.served),
            None => self.served,
        };
        self.rounds.insert(spec.owner, round);
        self.arrivals += 1;
        self.keys
            .insert(waiter, (Reverse(spec.priority), round, self.arrivals));
    }

    pub(super) fn spec(&self, waiter: Waiter) -> Option<&JobSpec> {
        match waiter {
            Waiter::Job(job) => self.s.job(job).map(|j| &j.spec),
            Waiter::Person(p) => self.s.person_lease(p).map(|p| &p.spec),
        }
    }
}
