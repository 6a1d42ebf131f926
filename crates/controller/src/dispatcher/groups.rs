//! MultiNode submissions: one group of sub-jobs, each an ordinary job with its own id,
//! lease, log and report.
//!
//! Invariants:
//! - Sub-jobs get consecutive ids from the group's id (sub-job N is job `ID + N`, LAVA's
//!   `ID.N`), all committed in one transaction with their `JobSubmitted` events and their
//!   `job_groups` rows; the scheduler sees the group whole (`Scheduler::submit_group`).
//! - Every sub-job shares the submission's owner, visibility, priority and job file (the
//!   agent runs the instance `StartJob.sub_job` names), so `policy` decides the same for all.
//! - A role naming a device type no registered device has refuses the whole submission (400,
//!   as for a single job), unless `wait_for_device`.
//! - A secondary connection's sub-job names its host instance (`GroupRef::host`): the
//!   scheduler grants it a rider lease on its host's device, so its agent is its host's.

use super::*;
use crate::store::GroupRow;
use scheduler::GroupRef;

impl Dispatcher {
    pub(super) async fn submit_group(&mut self, job: Submission) -> Result<JobView, Failure> {
        let known = self.sched.device_types();
        if !job.wait_for_device
            && let Some(missing) = job.roles.iter().find(|r| !known.contains(&r.device_type))
        {
            let known: Vec<String> = known.into_iter().collect();
            return Err(Failure::BadRequest {
                message: format!(
                    "{}: protocols.lava-multinode.roles.{}.device_type: no device of type {:?} is registered (known: {}); submit with --wait-for-device to queue anyway",
                    job.file_name,
                    missing.role,
                    missing.device_type,
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
                known_device_types: known,
            });
        }
        let size = job.roles.len();
        let bytes = job.definition.len() as u64;
        // Each sub-job keeps the file until it finishes, and counts as one queued job.
        for n in 0..size {
            let held = bytes.saturating_mul(n as u64 + 1);
            if let Err(quota) = self
                .usage
                .check(&self.config.quota, job.owner, job.role, held)
            {
                let message = queue_quota::message(&quota, &job.owner_name);
                tracing::info!("group of {} refused: {message}", job.owner_name);
                return Err(Failure::OverQuota { message, quota });
            }
        }
        let lead = JobId(self.next_job);
        let size32 = u32::try_from(size).map_err(|_| Failure::BadRequest {
            message: format!("{}: too many role instances", job.file_name),
            known_device_types: Vec::new(),
        })?;
        let mut rows = Vec::with_capacity(size);
        let mut specs = Vec::with_capacity(size);
        for (i, role) in job.roles.iter().enumerate() {
            let id = JobId(lead.0 + i as u64);
            let index = i as u32;
            rows.push(JobRow {
                id,
                name: job.name.clone(),
                owner: job.owner,
                owner_name: job.owner_name.clone(),
                visibility: job.visibility.clone(),
                file_name: job.file_name.clone(),
                definition: job.definition.clone(),
                warnings: job.warnings.clone(),
                artifacts: job.artifacts.clone(),
                group: Some(GroupRow {
                    group: lead,
                    index,
                    role: role.role.clone(),
                }),
            });
            let spec = scheduler::JobSpec {
                device_type: role.device_type.clone(),
                tags: role.tags.clone(),
                group: Some(GroupRef {
                    id: lead,
                    index,
                    size: size32,
                    role: role.role.clone(),
                    host: role.host,
                }),
                ..job.spec.clone()
            };
            specs.push((id, spec));
        }
        for row in &rows {
            self.jobs.insert(
                row.id,
                JobMeta {
                    name: row.name.clone(),
                    owner: row.owner,
                    owner_name: row.owner_name.clone(),
                    visibility: row.visibility.clone(),
                    warnings: row.warnings.clone(),
                    definition: Some(row.definition.clone()),
                },
            );
        }
        let forget = |d: &mut Dispatcher| {
            for row in &rows {
                d.jobs.remove(&row.id);
            }
        };
        let events = match self.sched.submit_group(specs, now()) {
            Ok(events) => events,
            Err(refusal) => {
                forget(self);
                return Err(Failure::Conflict(refusal.to_string()));
            }
        };
        self.next_job += size as u64;
        for _ in 0..size {
            self.usage.add(job.owner, bytes);
        }
        let (first, more) = rows.split_first().ok_or_else(|| Failure::BadRequest {
            message: format!("{}: no role instance", job.file_name),
            known_device_types: Vec::new(),
        })?;
        if let Err(e) = self.commit_jobs(events, first, more).await {
            forget(self);
            for _ in 0..size {
                self.usage.remove(job.owner, bytes);
            }
            return Err(Failure::Unavailable(e.to_string()));
        }
        tracing::info!("group {lead} queued: {size} sub-jobs");
        self.view(lead)
            .ok_or_else(|| Failure::Unavailable(format!("job {lead} vanished after commit")))
    }
}
