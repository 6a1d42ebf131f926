//! Matching queued jobs with idle devices.
//!
//! After every `schedule` no queued job fits an idle device. So a new match needs a job that
//! became queued or a device that became idle since the last call: `schedule` looks only at
//! those, per device type (jobs of different device types never compete):
//!
//! 1. While a fresh idle device of the type is left, walk the type's queue in serving order; a
//!    fresh job may take any idle device, an older job only a fresh one.
//! 2. Then walk the remaining fresh jobs, in serving order, against every idle device.
//!
//! Among the idle devices a job fits, it takes the one with the fewest tags (then the first by
//! name), leaving the specialised devices to the jobs that need them.

use crate::event::Event;
use crate::state::{QueueKey, Scheduler};
use proto::{DeviceState, Epoch, JobId, JobState, LeaseId, Millis};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

#[derive(Default)]
struct Work {
    devices: BTreeSet<String>,
    jobs: BTreeSet<QueueKey>,
}

impl Scheduler {
    /// Grants leases to queued jobs, by priority then submission, on idle devices they fit.
    /// Each grant raises the device's epoch by one and takes the next lease id (see [`crate::LeaseIds`]); the lease
    /// expires at `now` + the lease TTL.
    pub fn schedule(&mut self, now: Millis) -> Vec<Event> {
        let mut out = Vec::new();
        let fresh_devices = std::mem::take(&mut self.fresh.devices);
        let fresh_jobs = std::mem::take(&mut self.fresh.jobs);
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
        for id in fresh_jobs {
            if let Some(j) = self.state.jobs.get(&id)
                && j.state == JobState::Queued
                && self.state.idle.contains_key(&j.spec.device_type)
            {
                let key = crate::state::queue_key(id, &j.spec);
                let ty = j.spec.device_type.clone();
                work.entry(ty).or_default().jobs.insert(key);
            }
        }
        for (ty, mut w) in work {
            self.schedule_type(&ty, &mut w, now, &mut out);
        }
        out
    }

    fn schedule_type(&mut self, ty: &str, work: &mut Work, now: Millis, out: &mut Vec<Event>) {
        let mut after: Option<QueueKey> = None;
        while !work.devices.is_empty() {
            let Some(key) = self.next_queued(ty, after) else {
                break;
            };
            after = Some(key);
            let among = if work.jobs.contains(&key) {
                None
            } else {
                Some(&work.devices)
            };
            if let Some(device) = self.best_device(key.1, among) {
                work.devices.remove(&device);
                self.grant(key.1, device, now, out);
            }
        }
        let rest = match after {
            Some(k) => work.jobs.range((Bound::Excluded(k), Bound::Unbounded)),
            None => work.jobs.range(..),
        };
        for key in rest {
            if !self.state.idle.contains_key(ty) {
                break;
            }
            let queued = self
                .state
                .jobs
                .get(&key.1)
                .is_some_and(|j| j.state == JobState::Queued);
            if queued && let Some(device) = self.best_device(key.1, None) {
                self.grant(key.1, device, now, out);
            }
        }
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

    /// The idle device (among `among`, or any) that `job` fits with the fewest tags.
    fn best_device(&self, job: JobId, among: Option<&BTreeSet<String>>) -> Option<String> {
        let spec = &self.state.jobs.get(&job)?.spec;
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

    fn grant(&mut self, job: JobId, device: String, now: Millis, out: &mut Vec<Event>) {
        let epoch = self
            .state
            .devices
            .get(&device)
            .map_or(Epoch(1), |d| Epoch(d.epoch.0.saturating_add(1)));
        let lease = match self.config.lease_ids {
            crate::LeaseIds::Sequential => LeaseId(self.state.next_lease),
            crate::LeaseIds::Keyed(key) => key.derive(self.state.grants.saturating_add(1)),
        };
        let event = Event::LeaseGranted {
            lease,
            epoch,
            job,
            device,
            expires: now.plus(self.config.lease_ttl),
            at: now,
        };
        self.emit(out, event);
    }
}
