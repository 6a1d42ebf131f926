//! Health checks: the lab's own jobs that check one device, per device type (LAVA's idea).
//!
//! Invariants:
//! - A health check is an ordinary job of the system principal `dutlab` with visibility
//!   public, pinned to its device (`JobSpec::device`), at the highest priority, with
//!   `JobPurpose::HealthCheck`; the scheduler turns its outcome into the device's state
//!   (passed returns a `bad` device, anything else but canceled makes it `bad` with the job).
//! - A check runs when a device that never ran anything registers, after an infra error of
//!   another job on it, on demand (admins), after every N other jobs on it
//!   (`--health-check-every-jobs`: queued when the Nth job since the last check is given
//!   the device, so it runs right after that job) and when its last check finished more than T ago
//!   (`--health-check-every`; a device with no check on record is due). Both intervals are
//!   per device type ([`HealthJob::interval`]): `--health-check-schedule FILE` sets them for
//!   some types, the flags for the others. At most one check
//!   per device is queued or running at a time: a trigger while one is pending does nothing.
//! - The periodic triggers are computed from the scheduler's jobs (every job is kept), so a
//!   controller restart neither forgets nor repeats them; only devices in service (idle or
//!   busy) are checked periodically.
//! - A check on demand of a `bad` device returns it to the pool in the same step, so the
//!   check (first in the queue) can run on it; an automatic check of a device that is `bad`
//!   (quarantined by the same infra error) waits for an admin's `device check`.

use super::*;
use proto::DeviceState;
use proto::admin::AuditAction;
use scheduler::{Interrupt, JobPurpose, LAB, MAX_PRIORITY, StateNote};

/// One device type's health check job.
#[derive(Debug, Clone)]
pub struct HealthJob {
    pub file_name: String,
    pub name: String,
    pub definition: String,
    /// When its devices are checked besides the first time, after infra errors and on demand.
    pub interval: CheckInterval,
}

/// The periodic triggers of one device type's check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckInterval {
    /// Check a device after this many other jobs finished on it since its last check.
    pub every_jobs: Option<std::num::NonZeroU32>,
    /// Check a device when its last check finished longer ago than this.
    pub every: Option<Duration>,
}

/// A bad `--health-check-schedule` file.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct ScheduleError {
    pub file: String,
    pub reason: String,
}

/// Reads a health check schedule: a YAML map from device type to `every_jobs: N` and/or
/// `every: DURATION` (`24h`, `90m`; `every_jobs: 0` and `every: never` turn a trigger off).
/// Every type must have a check in `jobs`; a field a type leaves out keeps `default`'s.
/// Answers the intervals by type.
pub fn parse_schedule(
    file: &str,
    text: &str,
    jobs: &BTreeMap<String, HealthJob>,
    default: CheckInterval,
) -> Result<BTreeMap<String, CheckInterval>, ScheduleError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Entry {
        every_jobs: Option<u32>,
        every: Option<String>,
    }
    let err = |reason: String| ScheduleError {
        file: file.to_owned(),
        reason,
    };
    let entries: BTreeMap<String, Entry> =
        serde_saphyr::from_str(text).map_err(|e| err(e.to_string()))?;
    let mut out = BTreeMap::new();
    for (device_type, entry) in entries {
        if !jobs.contains_key(&device_type) {
            return Err(err(format!(
                "{device_type}: no health check job {device_type}.yaml in --health-checks"
            )));
        }
        let every_jobs = match entry.every_jobs {
            None => default.every_jobs,
            Some(0) => None,
            Some(n) => std::num::NonZeroU32::new(n),
        };
        let every = match entry.every.as_deref() {
            None => default.every,
            Some("never") => None,
            Some(text) => Some(
                jobspec::parse_duration(text)
                    .map_err(|e| err(format!("{device_type}.every: {e}")))?,
            ),
        };
        out.insert(device_type, CheckInterval { every_jobs, every });
    }
    Ok(out)
}

/// Health checks of the controller (`dutlab serve --health-checks DIR`).
#[derive(Debug, Clone, Default)]
pub struct HealthChecks {
    /// The system principal that owns the checks.
    pub principal: PrincipalId,
    /// By device type.
    pub jobs: BTreeMap<String, HealthJob>,
}

impl HealthChecks {
    /// The periodic triggers of `device_type` (none for a type without a check).
    fn interval(&self, device_type: &str) -> CheckInterval {
        self.jobs
            .get(device_type)
            .map(|j| j.interval)
            .unwrap_or_default()
    }
}

/// How often the interval trigger looks at the devices.
const INTERVAL_SCAN: Duration = Duration::from_secs(10);

/// Why a check is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Trigger {
    FirstSeen,
    InfraError,
    OnDemand,
    /// The `every_jobs`th other job since the device's last check was given it.
    JobCount,
    /// Its last check finished longer ago than `every`.
    Interval,
}

impl Dispatcher {
    /// The unfinished health check of `device`, if any.
    fn pending_check(&self, device: &str) -> Option<JobId> {
        self.sched
            .jobs()
            .filter(|(_, j)| j.state != JobState::Finished)
            .find(|(_, j)| {
                j.spec.purpose == JobPurpose::HealthCheck
                    && j.spec.device.as_deref() == Some(device)
            })
            .map(|(id, _)| id)
    }

    /// Queues a health check of `device`; answers its view (the pending one's if one is
    /// queued or running already).
    pub(super) async fn check_device(
        &mut self,
        device: &str,
        trigger: Trigger,
    ) -> Result<JobView, Failure> {
        let d = self.sched.device(device).ok_or_else(|| {
            Failure::NotFound(format!(
                "device: no device named {device:?} is registered (see `dutlab device list`)"
            ))
        })?;
        let device_type = d.info.device_type.clone();
        let job = self.config.health.jobs.get(&device_type).cloned().ok_or_else(|| {
            Failure::BadRequest {
                message: format!(
                    "device {device}: no health check for device type {device_type:?} (dutlab serve --health-checks DIR with {device_type}.yaml)"
                ),
                known_device_types: Vec::new(),
            }
        })?;
        let view = match self.pending_check(device) {
            Some(pending) => self
                .view(pending)
                .ok_or_else(|| Failure::Unavailable(format!("job {pending} vanished")))?,
            None => {
                let submission = Submission {
                    name: job.name,
                    owner: self.config.health.principal,
                    owner_name: LAB.to_owned(),
                    role: Role::Admin,
                    visibility: Visibility::Public,
                    file_name: job.file_name,
                    definition: job.definition,
                    warnings: Vec::new(),
                    spec: JobSpec {
                        device_type,
                        tags: Vec::new(),
                        priority: MAX_PRIORITY,
                        owner: Some(self.config.health.principal),
                        device: Some(device.to_owned()),
                        purpose: JobPurpose::HealthCheck,
                        ..Default::default()
                    },
                    wait_for_device: true,
                    artifacts: Vec::new(),
                    roles: Vec::new(),
                };
                let view = self.submit(submission).await?;
                tracing::info!(
                    "device {device}: health check job {} ({trigger:?})",
                    view.id
                );
                view
            }
        };
        let bad = self
            .sched
            .out_of_service(device)
            .is_some_and(|n| n.state == DeviceState::Bad);
        if bad && trigger == Trigger::OnDemand {
            let note = StateNote {
                state: DeviceState::Idle,
                reason: format!("health check job {} on demand", view.id),
                by: LAB.to_owned(),
                job: Some(view.id),
                at: now(),
            };
            let events = self
                .sched
                .set_device_state(device, note, Interrupt::AfterLease)
                .map_err(|r| Failure::Conflict(r.to_string()))?;
            self.commit(events, Vec::new(), None, None)
                .await
                .map_err(|e| Failure::Unavailable(e.to_string()))?;
        }
        self.view(view.id)
            .ok_or_else(|| Failure::Unavailable(format!("job {} vanished", view.id)))
    }

    /// `dutlab device check NAME` (admins).
    pub(super) async fn check_on_demand(
        &mut self,
        device: &str,
        viewer: &Viewer,
    ) -> Result<JobView, Failure> {
        if viewer.role != Role::Admin {
            return Err(Failure::Forbidden(format!(
                "device check: only admins check devices ({} is {})",
                viewer.name, viewer.role
            )));
        }
        let view = self.check_device(device, Trigger::OnDemand).await?;
        self.record(
            viewer,
            AuditAction::DeviceCheck,
            device,
            format!("job {}", view.id),
        )
        .await?;
        Ok(view)
    }

    /// The lab's device types with their devices' states, what waits, their health check.
    pub(super) fn device_type_views(&self) -> Vec<proto::admin::DeviceTypeView> {
        use proto::admin::{DeviceTypeView, HealthCheckView, StateCount};
        let mut states: BTreeMap<String, BTreeMap<String, (DeviceState, usize)>> = BTreeMap::new();
        for d in self.sched.devices() {
            let entry = states
                .entry(d.info.device_type.clone())
                .or_default()
                .entry(d.state.to_string())
                .or_insert((d.state, 0));
            entry.1 += 1;
        }
        let waiting: BTreeMap<String, usize> = self
            .sched
            .waiting_by_type()
            .map(|(ty, n)| (ty.to_owned(), n))
            .collect();
        let names: std::collections::BTreeSet<String> = states
            .keys()
            .chain(waiting.keys())
            .chain(self.config.health.jobs.keys())
            .cloned()
            .collect();
        names
            .into_iter()
            .map(|name| {
                let counts: Vec<StateCount> = states
                    .get(&name)
                    .map(|m| {
                        m.values()
                            .map(|(state, count)| StateCount {
                                state: *state,
                                count: *count,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                DeviceTypeView {
                    devices: counts.iter().map(|c| c.count).sum(),
                    states: counts,
                    waiting: waiting.get(&name).copied().unwrap_or(0),
                    health_check: self.config.health.jobs.get(&name).map(|j| HealthCheckView {
                        file_name: j.file_name.clone(),
                        job_name: j.name.clone(),
                        every_jobs: j.interval.every_jobs.map(|n| n.get()),
                        every_s: j.interval.every.map(|d| d.as_secs()),
                    }),
                    name,
                }
            })
            .collect()
    }

    /// Notes the checks `events` call for (run by [`Dispatcher::run_due_checks`]).
    pub(super) fn note_checks(&mut self, events: &[Event]) {
        if self.config.health.jobs.is_empty() {
            return;
        }
        for event in events {
            match event {
                Event::AgentConnected { devices, .. } => {
                    for d in devices {
                        let fresh = self.sched.device(&d.name).is_some_and(|e| {
                            e.epoch == Epoch(0) && self.sched.out_of_service(&e.info.name).is_none()
                        });
                        if fresh {
                            self.checks_due.push((d.name.clone(), Trigger::FirstSeen));
                        }
                    }
                }
                Event::LeaseGranted {
                    holder: scheduler::Holder::Job(job),
                    device,
                    ..
                } => {
                    let ordinary = self
                        .sched
                        .job(*job)
                        .is_some_and(|j| j.spec.purpose != JobPurpose::HealthCheck);
                    let every_jobs = self
                        .sched
                        .device(device)
                        .and_then(|d| self.config.health.interval(&d.info.device_type).every_jobs);
                    if ordinary
                        && let Some(n) = every_jobs
                        && self.count_job_since_check(device) >= n.get()
                    {
                        self.checks_due.push((device.clone(), Trigger::JobCount));
                    }
                }
                Event::JobFinished { job, outcome, .. } => {
                    let Some(j) = self.sched.job(*job) else {
                        continue;
                    };
                    let Some(device) = j.device.clone() else {
                        continue;
                    };
                    if j.spec.purpose == JobPurpose::HealthCheck {
                        // A canceled check decided nothing about the device.
                        if *outcome != proto::Outcome::Canceled {
                            self.jobs_since_check.insert(device, 0);
                        }
                    } else if *outcome == proto::Outcome::InfraError {
                        self.checks_due.push((device, Trigger::InfraError));
                    }
                }
                _ => {}
            }
        }
    }

    /// Counts a job just given `device`; answers the jobs given it since its last check
    /// (this one included). The count starts from the scheduler's jobs the first time a
    /// device is seen (one pass), then follows the events.
    fn count_job_since_check(&mut self, device: &str) -> u32 {
        if let Some(n) = self.jobs_since_check.get_mut(device) {
            *n = n.saturating_add(1);
            return *n;
        }
        let last = self.last_checks().get(device).copied();
        let n = self
            .sched
            .jobs()
            .filter(|(_, j)| j.device.as_deref() == Some(device) && j.state != JobState::Queued)
            .filter(|(_, j)| j.spec.purpose != JobPurpose::HealthCheck)
            .filter(|(_, j)| {
                let at = j.finished.or(j.started);
                at.is_none_or(|at| last.is_none_or(|l| at > l))
            })
            .count();
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        self.jobs_since_check.insert(device.to_owned(), n);
        n
    }

    /// When each device's last check that decided something (not canceled) finished.
    fn last_checks(&self) -> BTreeMap<String, Millis> {
        let mut last: BTreeMap<String, Millis> = BTreeMap::new();
        for (_, j) in self.sched.jobs() {
            if j.spec.purpose != JobPurpose::HealthCheck
                || j.outcome == Some(proto::Outcome::Canceled)
            {
                continue;
            }
            if let (Some(device), Some(at)) = (&j.device, j.finished) {
                let entry = last.entry(device.clone()).or_insert(at);
                *entry = (*entry).max(at);
            }
        }
        last
    }

    /// Notes the devices whose last check is older than their type's `every` (at most
    /// every [`INTERVAL_SCAN`]).
    fn note_interval_checks(&mut self) {
        if self
            .config
            .health
            .jobs
            .values()
            .all(|j| j.interval.every.is_none())
        {
            return;
        }
        let at = now();
        if self.next_interval_scan > at {
            return;
        }
        self.next_interval_scan = at.plus(INTERVAL_SCAN);
        let last = self.last_checks();
        let due: Vec<String> = self
            .sched
            .devices()
            .filter(|d| matches!(d.state, DeviceState::Idle | DeviceState::Busy))
            .filter(|d| {
                let Some(every) = self.config.health.interval(&d.info.device_type).every else {
                    return false;
                };
                last.get(&d.info.name).is_none_or(|l| l.plus(every) <= at)
            })
            .map(|d| d.info.name.clone())
            .collect();
        for device in due {
            if self.pending_check(&device).is_none() {
                self.checks_due.push((device, Trigger::Interval));
            }
        }
    }

    /// Queues the checks noted since the last call.
    pub(super) async fn run_due_checks(&mut self) {
        self.note_interval_checks();
        for (device, trigger) in std::mem::take(&mut self.checks_due) {
            if self
                .sched
                .device(&device)
                .is_none_or(|d| !self.config.health.jobs.contains_key(&d.info.device_type))
            {
                continue;
            }
            if let Err(e) = self.check_device(&device, trigger).await {
                tracing::warn!("device {device}: health check not queued: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn jobs(types: &[&str]) -> BTreeMap<String, HealthJob> {
        types
            .iter()
            .map(|t| {
                let job = HealthJob {
                    file_name: format!("{t}.yaml"),
                    name: "health".into(),
                    definition: String::new(),
                    interval: CheckInterval::default(),
                };
                ((*t).to_owned(), job)
            })
            .collect()
    }

    #[test]
    fn a_schedule_sets_the_fields_it_names_and_keeps_the_flags_for_the_others() {
        let default = CheckInterval {
            every_jobs: NonZeroU32::new(5),
            every: Some(Duration::from_secs(3600)),
        };
        let text =
            "qemu:\n  every_jobs: 1\nbbb:\n  every: 24h\nrpi:\n  every_jobs: 0\n  every: never\n";
        let got = parse_schedule("s.yaml", text, &jobs(&["qemu", "bbb", "rpi"]), default)
            .expect("a good schedule");
        assert_eq!(
            got["qemu"],
            CheckInterval {
                every_jobs: NonZeroU32::new(1),
                every: Some(Duration::from_secs(3600)),
            }
        );
        assert_eq!(
            got["bbb"],
            CheckInterval {
                every_jobs: NonZeroU32::new(5),
                every: Some(Duration::from_secs(24 * 3600)),
            }
        );
        // `0` and `never` turn the triggers off for that type.
        assert_eq!(got["rpi"], CheckInterval::default());
    }

    #[test]
    fn a_bad_schedule_names_the_file_the_type_and_the_reason() {
        let jobs = jobs(&["qemu"]);
        let default = CheckInterval::default();
        let e = parse_schedule("s.yaml", "bbb:\n  every_jobs: 2\n", &jobs, default)
            .expect_err("a type with no check");
        assert_eq!(
            e.to_string(),
            "s.yaml: bbb: no health check job bbb.yaml in --health-checks"
        );
        let e = parse_schedule("s.yaml", "qemu:\n  every: soon\n", &jobs, default)
            .expect_err("a bad duration");
        assert!(e.to_string().starts_with("s.yaml: qemu.every: "), "{e}");
        let e = parse_schedule("s.yaml", "qemu:\n  evry_jobs: 2\n", &jobs, default)
            .expect_err("an unknown field");
        assert!(
            e.to_string().starts_with("s.yaml: ") && e.to_string().contains("evry_jobs"),
            "{e}"
        );
        let e = parse_schedule("s.yaml", "qemu:\n  every_jobs: -1\n", &jobs, default)
            .expect_err("a negative count");
        assert!(e.to_string().starts_with("s.yaml: "), "{e}");
    }
}
