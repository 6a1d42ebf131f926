//! Matching waiters (queued jobs and waiting person leases, one pool) with idle devices.
//!
//! After every `schedule` no waiter fits an idle device. So a new match needs a waiter that
//! entered the queue or a device that became idle since the last call: `schedule` looks only
//! at those, per device type (waiters of different device types never compete):
//!
//! 1. While a fresh idle device of the type is left, walk the type's queue in serving order; a
//!    fresh waiter may take any idle device, an older one only a fresh one.
//! 2. Then walk the remaining fresh waiters, in serving order, against every idle device.
//!
//! Among the idle devices a waiter fits, it takes the one with the fewest tags (then the first
//! by name), leaving the specialised devices to the waiters that need them.
//!
//! A MultiNode group is one waiter in the queue of each device type it needs; where it is
//! met, it takes idle devices of any of its types (fresh or not) for all its sub-jobs at
//! once, or nothing (`crate::groups`), but never a device that a single waiter ahead of it
//! fits (that one is served first, in its own type's walk). Every group met is tried once
//! more at the end, in serving order, so after `schedule` no queued group can be placed
//! whole on the idle devices either.

use crate::event::{Event, Holder, PersonHolder, Waiter};
use crate::state::{QueueKey, Scheduler};
use proto::{DeviceState, Epoch, JobId, LeaseId, Millis};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

#[derive(Default)]
struct Work {
    devices: BTreeSet<String>,
    jobs: BTreeSet<QueueKey>,
}

impl Scheduler {
    /// Grants leases to waiters, in serving order, on idle devices they fit. Each grant raises
    /// the device's epoch by one and takes the next lease id (see [`crate::LeaseIds`]); a
    /// job's lease expires at `now` + the lease TTL, a person's at `now` + its requested TTL.
    pub fn schedule(&mut self, now: Millis) -> Vec<Event> {
        let mut out = Vec::new();
        let fresh_devices = std::mem::take(&mut self.fresh.devices);
        let fresh_waiters = std::mem::take(&mut self.fresh.waiters);
        if self.state.idle.is_empty() {
            return out;
        }
        let mut work: BTreeMap<String, Work> = BTreeMap::new();
        for name in fresh_devices {
            if let Some(d) = self.state.devices.get(&name)
                && d.state == DeviceState::Idle
            {
                let ty = d.info.device_type.clone();
                work.entry(ty).or_default().devices.insert(name);
            }
        }
        for waiter in fresh_waiters {
            if self.is_group(waiter) {
                if self.is_waiting(waiter)
                    && let Some(key) = self.state.places.get(&waiter).copied()
                    && let Some(ty) = self.spec_of(waiter).map(|s| s.device_type.clone())
                {
                    work.entry(ty).or_default().jobs.insert(key);
                }
                continue;
            }
            if self.is_waiting(waiter)
                && let Some(spec) = self.spec_of(waiter)
                && self.state.idle.contains_key(&spec.device_type)
                && let Some(key) = self.state.places.get(&waiter)
            {
                let ty = spec.device_type.clone();
                work.entry(ty).or_default().jobs.insert(*key);
            }
        }
        let mut groups = BTreeSet::new();
        for (ty, mut w) in work {
            self.schedule_type(&ty, &mut w, now, &mut out, &mut groups);
        }
        for key in groups {
            if self.state.idle.is_empty() {
                break;
            }
            self.grant_group(key, now, &mut out);
        }
        out
    }

    fn schedule_type(
        &mut self,
        ty: &str,
        work: &mut Work,
        now: Millis,
        out: &mut Vec<Event>,
        groups: &mut BTreeSet<QueueKey>,
    ) {
        let mut after: Option<QueueKey> = None;
        while !work.devices.is_empty() {
            let Some(key) = self.next_queued(ty, after) else {
                break;
            };
            after = Some(key);
            if self.is_group(key.3) {
                groups.insert(key);
                for device in self.grant_group(key, now, out) {
                    work.devices.remove(&device);
                }
                continue;
            }
            let among = if work.jobs.contains(&key) {
                None
            } else {
                Some(&work.devices)
            };
            if let Some(device) = self.best_device(key.3, among) {
                work.devices.remove(&device);
                self.grant(key.3, device, now, out);
            }
        }
        let rest = match after {
            Some(k) => work.jobs.range((Bound::Excluded(k), Bound::Unbounded)),
            None => work.jobs.range(..),
        };
        for key in rest {
            if self.is_group(key.3) {
                groups.insert(*key);
                self.grant_group(*key, now, out);
                continue;
            }
            if !self.state.idle.contains_key(ty) {
                break;
            }
            if self.is_waiting(key.3)
                && let Some(device) = self.best_device(key.3, None)
            {
                self.grant(key.3, device, now, out);
            }
        }
    }

    /// Grants every sub-job of the group led by `waiter` a device, if all can have one now;
    /// answers the devices granted (none if the group keeps waiting).
    fn grant_group(&mut self, key: QueueKey, now: Millis, out: &mut Vec<Event>) -> Vec<String> {
        let Waiter::Job(id) = key.3 else {
            return Vec::new();
        };
        if !self.is_waiting(key.3) {
            return Vec::new();
        }
        let Some(placed) = self.place_group(id, key) else {
            return Vec::new();
        };
        let mut devices = Vec::with_capacity(placed.len());
        for (job, device) in placed {
            devices.push(device.clone());
            self.grant(Waiter::Job(job), device, now, out);
        }
        for (rider, host) in self.riders(id) {
            let Some(device) = self.state.jobs.get(&host).and_then(|j| j.device.clone()) else {
                continue;
            };
            self.grant_rider(rider, device, now, out);
        }
        devices
    }

    /// The id of the next grant's lease.
    fn next_lease_id(&self) -> LeaseId {
        match self.config.lease_ids {
            crate::LeaseIds::Sequential => LeaseId(self.state.next_lease),
            crate::LeaseIds::Keyed(key) => key.derive(self.state.grants.saturating_add(1)),
        }
    }

    /// Grants secondary connection `job` a lease on `device`, its host's, with the epoch its
    /// host was just granted (see [`crate::groups`]).
    fn grant_rider(&mut self, job: JobId, device: String, now: Millis, out: &mut Vec<Event>) {
        let Some(epoch) = self.state.devices.get(&device).map(|d| d.epoch) else {
            return;
        };
        let lease = self.next_lease_id();
        let event = Event::LeaseGranted {
            lease,
            epoch,
            holder: Holder::Job(job),
            device,
            expires: now.plus(self.config.lease_ttl),
            at: now,
        };
        self.emit(out, event);
    }

    fn next_queued(&self, ty: &str, after: Option<QueueKey>) -> Option<QueueKey> {
        let queue = self.state.queue.get(ty)?;
        match after {
            Some(k) => queue
                .range((Bound::Excluded(k), Bound::Unbounded))
                .next()
                .copied(),
            None => queue.first().copied(),
        }
    }

    /// The idle device (among `among`, or any) that `waiter` fits with the fewest tags.
    fn best_device(&self, waiter: Waiter, among: Option<&BTreeSet<String>>) -> Option<String> {
        let spec = self.spec_of(waiter)?;
        let idle = self.state.idle.get(&spec.device_type)?;
        let candidates: Box<dyn Iterator<Item = &String>> = match among {
            Some(set) => Box::new(set.iter().filter(|n| idle.contains(*n))),
            None => Box::new(idle.iter()),
        };
        candidates
            .filter_map(|n| self.state.devices.get(n))
            .filter(|d| spec.fits(&d.info))
            .min_by(|a, b| {
                (a.info.tags.len(), &a.info.name).cmp(&(b.info.tags.len(), &b.info.name))
            })
            .map(|d| d.info.name.clone())
    }

    fn grant(&mut self, waiter: Waiter, device: String, now: Millis, out: &mut Vec<Event>) {
        let epoch = self
            .state
            .devices
            .get(&device)
            .map_or(Epoch(1), |d| Epoch(d.epoch.0.saturating_add(1)));
        let lease = self.next_lease_id();
        let (holder, expires) = match waiter {
            Waiter::Job(job) => (Holder::Job(job), now.plus(self.config.lease_ttl)),
            Waiter::Person(p) => {
                let Some(entry) = self.state.persons.get(&p) else {
                    return;
                };
                let holder = Holder::Person(PersonHolder {
                    lease: p,
                    principal: entry.principal,
                    name: entry.name.clone(),
                });
                let ttl = entry.ttl_ms.min(entry.cap_ms);
                (holder, Millis(now.0.saturating_add(ttl)))
            }
        };
        let event = Event::LeaseGranted {
            lease,
            epoch,
            holder,
            device,
            expires,
            at: now,
        };
        self.emit(out, event);
    }
}
