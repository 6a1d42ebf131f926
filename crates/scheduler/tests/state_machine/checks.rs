//! The invariants of the state machine test, checked after every step (listed in the test's
//! module docs).

use super::*;

impl Harness {
    /// After a hello: the agent's live leases are exactly those it holds, and its devices
    /// needing a check are exactly those whose ended lease it holds.
    pub(super) fn check_connected(
        &self,
        agent: &str,
        infos: &[DeviceInfo],
        held: &[(LeaseId, Epoch)],
        events: &[Event],
    ) {
        let new: BTreeSet<LeaseId> = events
            .iter()
            .filter_map(|e| match e {
                Event::LeaseGranted { lease, .. } => Some(*lease),
                _ => None,
            })
            .collect();
        let held_ids: BTreeSet<LeaseId> = held.iter().map(|(l, _)| *l).collect();
        for d in self.s.devices().filter(|d| d.agent == agent) {
            for lease in d.leases() {
                let l = self.s.lease(lease).expect("live");
                let kept =
                    held.contains(&(l.id, l.epoch)) || new.contains(&l.id) || l.job().is_none();
                assert!(kept, "kept lease {lease}, which the agent does not hold");
            }
            if d.state == DeviceState::NeedsCheck {
                assert!(d.unconfirmed.is_some_and(|l| held_ids.contains(&l)));
            }
            let listed = infos.iter().find(|i| i.name == d.info.name);
            match listed {
                Some(info) => {
                    assert_eq!(d.agent_tags, info.tags);
                    let effective = DeviceInfo {
                        tags: self.model_tags(&info.name, &info.tags),
                        ..info.clone()
                    };
                    assert_eq!(d.info, effective);
                }
                None => assert!(d.withdrawn && d.leases().next().is_some()),
            }
        }
        for info in infos {
            assert_eq!(
                self.s.device(&info.name).map(|d| d.agent.as_str()),
                Some(agent)
            );
        }
    }

    /// No waiter still queued that comes before `waiter` in the model's serving order fits
    /// `device`.
    pub(super) fn check_grant_order(&self, waiter: Waiter, device: &str) {
        let info = &self.s.device(device).expect("granted device").info;
        let key = self.keys[&waiter];
        for other in self.s.queued() {
            if self.is_group(other) {
                // A group ahead that cannot be placed whole does not hold the device.
                continue;
            }
            let fits = self.spec(other).is_some_and(|s| s.fits(info));
            if fits && self.keys[&other] < key {
                panic!("{other} was passed over for {waiter} on {device}");
            }
        }
    }

    pub(super) fn check(&self) {
        let s = &self.s;
        // Leases, their jobs and devices.
        let mut devices = BTreeSet::new();
        let mut jobs = BTreeSet::new();
        for l in s.leases() {
            let d = s.device(&l.device).expect("lease's device");
            // A secondary connection rides on its host's device: busy, with the epoch of
            // the grant of its host, which may have ended before it.
            let rider = l
                .job()
                .and_then(|j| s.group_of(j))
                .and_then(|g| g.host)
                .is_some();
            if rider {
                assert!(
                    d.riders.contains(&l.id),
                    "rider {} not on {}",
                    l.id,
                    l.device
                );
                assert_eq!((d.state, d.epoch), (DeviceState::Busy, l.epoch));
            } else {
                assert!(
                    devices.insert(l.device.clone()),
                    "two leases on {}",
                    l.device
                );
                assert_eq!(
                    (d.state, d.lease, d.epoch),
                    (DeviceState::Busy, Some(l.id), l.epoch)
                );
            }
            let job = match &l.holder {
                Holder::Job(job) => *job,
                Holder::Person(PersonHolder {
                    lease,
                    principal,
                    name,
                }) => {
                    let p = s.person_lease(*lease).expect("lease's person");
                    assert_eq!((p.principal, &p.name), (*principal, name));
                    assert_eq!(p.state, PersonLeaseState::Held);
                    assert_eq!(p.lease, Some(l.id));
                    assert_eq!(p.device.as_deref(), Some(l.device.as_str()));
                    assert_eq!(p.expires, Some(l.expires));
                    let granted = p.granted.expect("granted");
                    assert!(l.expires.0 <= granted.0 + CAP, "lease {lease} past its cap");
                    continue;
                }
            };
            assert!(jobs.insert(job), "two leases for job {job}");
            let job = s.job(job).expect("lease's job");
            assert!(matches!(
                job.state,
                JobState::Assigned | JobState::Running | JobState::Canceling
            ));
            assert_eq!(job.lease, Some(l.id));
            assert_eq!(job.device.as_deref(), Some(l.device.as_str()));
            assert!(s.is_live(l.id, l.epoch));
        }
        for (id, p) in s.person_leases() {
            let live = p.lease.and_then(|l| s.lease(l));
            match p.state {
                PersonLeaseState::Waiting => {
                    assert!(p.lease.is_none() && p.end.is_none());
                    assert!(s.position(Waiter::Person(id)).is_some());
                }
                PersonLeaseState::Held => {
                    assert!(live.is_some_and(|l| l.holder.person().is_some_and(|h| h.lease == id)));
                }
                PersonLeaseState::Ended => {
                    assert!(live.is_none(), "ended lease {id} still holds a device");
                    assert_eq!(p.end.as_ref(), self.ended.get(&id));
                    assert!(s.position(Waiter::Person(id)).is_none());
                }
            }
            if let Some(end) = self.ended.get(&id) {
                assert_eq!(p.end.as_ref(), Some(end), "lease {id} left ended");
            }
        }
        for (id, j) in s.jobs() {
            if matches!(
                j.state,
                JobState::Assigned | JobState::Running | JobState::Canceling
            ) {
                assert!(
                    j.lease.is_some_and(|l| s.lease(l).is_some()),
                    "job {id} has no lease"
                );
            }
            assert_eq!(j.outcome.is_some(), j.state == JobState::Finished);
            if let Some((outcome, reason)) = self.finished.get(&id) {
                assert_eq!(j.state, JobState::Finished, "job {id} left finished");
                assert_eq!((j.outcome, &j.reason), (Some(*outcome), reason));
            }
        }
        // Device states are derived.
        for d in s.devices() {
            let name = &d.info.name;
            let out = self.out.get(name).copied();
            assert_eq!(s.out_of_service(name).map(|n| n.state), out, "{name}");
            let streak = self.streak.get(name).copied().unwrap_or(0);
            assert_eq!(
                s.infra_streak(name),
                streak,
                "infra errors in a row on {name}"
            );
            if streak >= QUARANTINE {
                assert!(
                    out.is_some(),
                    "{name}: {streak} infra errors in a row, in service"
                );
            }
            assert_eq!(d.info.tags, self.model_tags(name, &d.agent_tags), "{name}");
            // Busy while its lease or a secondary connection's lives.
            let want = if d.lease.is_some() || !d.riders.is_empty() {
                DeviceState::Busy
            } else if let Some(out) = out {
                out
            } else if !s.agent_is_connected(&d.agent) || self.silent.contains(&d.agent) {
                // A silent agent's idle devices take no work.
                DeviceState::Offline
            } else if d.unconfirmed.is_some() {
                DeviceState::NeedsCheck
            } else {
                DeviceState::Idle
            };
            assert_eq!(d.state, want, "{}", d.info.name);
            assert!(d.leases().next().is_some() || !d.withdrawn);
            for l in d.leases() {
                assert!(s.lease(l).is_some_and(|l| l.device == *name));
            }
        }
        // Grants and releases.
        for (lease, _, _) in &self.granted {
            let released = self.released.get(lease).copied().unwrap_or(0);
            assert!(released <= 1, "lease {lease} released {released} times");
            assert_eq!(released == 0, s.lease(*lease).is_some(), "lease {lease}");
        }
        assert_eq!(s.leases().count(), self.granted.len() - self.released.len());
        // Nothing left to match.
        let idle: Vec<&DeviceInfo> = s
            .devices()
            .filter(|d| d.state == DeviceState::Idle)
            .map(|d| &d.info)
            .collect();
        let queued = s.queued();
        for (pos, waiter) in queued.iter().enumerate() {
            match waiter {
                Waiter::Job(job) => {
                    let j = s.job(*job).expect("queued job");
                    assert_eq!(j.state, JobState::Queued);
                    assert_eq!(s.queue_position(*job), Some(pos));
                }
                Waiter::Person(p) => {
                    let p = s.person_lease(*p).expect("waiting lease");
                    assert_eq!(p.state, PersonLeaseState::Waiting);
                }
            }
            assert_eq!(s.position(*waiter), Some(pos));
            let (prio, round, arrival) = self.keys[waiter];
            assert_eq!(
                s.serving_key(*waiter),
                Some((prio, round, arrival, *waiter))
            );
            if self.is_group(*waiter) {
                assert!(
                    !self.placeable(*waiter, &idle),
                    "{waiter}'s group fits the idle devices"
                );
                continue;
            }
            let spec = self.spec(*waiter).expect("spec");
            if let Some(d) = idle.iter().find(|d| spec.fits(d)) {
                panic!("{waiter} fits idle device {}", d.name);
            }
        }
        let mut model: Vec<(Key, Waiter)> = queued.iter().map(|w| (self.keys[w], *w)).collect();
        model.sort();
        assert_eq!(
            model.into_iter().map(|(_, w)| w).collect::<Vec<_>>(),
            queued
        );
        let all_queued = s
            .jobs()
            .filter(|(_, j)| j.state == JobState::Queued)
            .filter(|(id, j)| j.spec.group.as_ref().is_none_or(|g| g.id == *id))
            .count()
            + s.person_leases()
                .filter(|(_, p)| p.state == PersonLeaseState::Waiting)
                .count();
        assert_eq!(queued.len(), all_queued);
        self.check_groups();
        // The next deadline, computed from the events.
        let c = config();
        let deadline = s
            .leases()
            .map(|l| {
                let Some(job) = l.job() else {
                    return Some(l.expires);
                };
                let agent = &s.device(&l.device).expect("device").agent;
                let gone = self.gone.get(agent).map(|at| at.plus(c.disconnect_grace));
                let canceling = s.job(job).is_some_and(|j| j.state == JobState::Canceling);
                let cancel = self.cancels.get(&job).filter(|_| canceling);
                let cancel = cancel.map(|at| at.plus(c.cancel_grace));
                [Some(l.expires), gone, cancel].into_iter().flatten().min()
            })
            .min()
            .flatten();
        assert_eq!(s.next_deadline(), deadline);
        // Replay.
        let again = Scheduler::replay(config(), &self.log).expect("the log replays");
        assert_eq!(&again, s);
    }
}
