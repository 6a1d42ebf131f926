//! Requests that change the queue: submit (device type and quota checks first) and cancel
//! (only who [`policy::may_cancel`] allows).

use super::*;

impl Dispatcher {
    pub(super) async fn submit(&mut self, job: Submission) -> Result<JobView, Failure> {
        if !job.roles.is_empty() {
            return self.submit_group(job).await;
        }
        if !job.wait_for_device && !self.sched.device_types().contains(&job.spec.device_type) {
            let known: Vec<String> = self.sched.device_types().into_iter().collect();
            return Err(Failure::BadRequest {
                message: format!(
                    "{}: device_type: no device of type {:?} is registered (known: {}); submit with --wait-for-device to queue anyway",
                    job.file_name,
                    job.spec.device_type,
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
                known_device_types: known,
            });
        }
        let bytes = job.definition.len() as u64;
        if let Err(quota) = self
            .usage
            .check(&self.config.quota, job.owner, job.role, bytes)
        {
            let message = queue_quota::message(&quota, &job.owner_name);
            tracing::info!("job of {} refused: {message}", job.owner_name);
            return Err(Failure::OverQuota { message, quota });
        }
        let id = JobId(self.next_job);
        let row = JobRow {
            id,
            name: job.name.clone(),
            owner: job.owner,
            owner_name: job.owner_name.clone(),
            visibility: job.visibility.clone(),
            file_name: job.file_name.clone(),
            definition: job.definition.clone(),
            warnings: job.warnings.clone(),
            artifacts: job.artifacts.clone(),
            group: None,
        };
        // The job must be known before its events run their effects (StartJob needs it).
        self.jobs.insert(
            id,
            JobMeta {
                name: job.name,
                owner: job.owner,
                owner_name: job.owner_name,
                visibility: job.visibility,
                warnings: job.warnings,
                definition: Some(job.definition),
            },
        );
        let events = match self.sched.submit(id, job.spec, now()) {
            Ok(events) => events,
            Err(refusal) => {
                self.jobs.remove(&id);
                return Err(Failure::Conflict(refusal.to_string()));
            }
        };
        self.next_job += 1;
        // Counted before the effects could finish it (they run inside the commit).
        self.usage.add(row.owner, bytes);
        if let Err(e) = self.commit(events, Vec::new(), Some(&row), None).await {
            self.jobs.remove(&id);
            self.usage.remove(row.owner, bytes);
            return Err(Failure::Unavailable(e.to_string()));
        }
        tracing::info!("job {id} queued");
        self.view(id)
            .ok_or_else(|| Failure::Unavailable(format!("job {id} vanished after commit")))
    }

    pub(super) async fn cancel(&mut self, job: JobId, viewer: &Viewer) -> Result<JobView, Failure> {
        let view = self
            .view(job)
            .ok_or_else(|| Failure::NotFound(format!("job {job} does not exist")))?;
        policy::may_cancel(&view, viewer).map_err(|d| Failure::Forbidden(d.to_string()))?;
        let events = match self.sched.cancel(job, now()) {
            Ok(events) => events,
            Err(Refusal::Finished(_)) => {
                return Err(Failure::Conflict(format!("job {job} is already finished")));
            }
            Err(refusal) => return Err(Failure::Conflict(refusal.to_string())),
        };
        self.commit(events, Vec::new(), None, None)
            .await
            .map_err(|e| Failure::Unavailable(e.to_string()))?;
        tracing::info!("job {job}: cancel requested by {}", viewer.name);
        self.visible(job, viewer)
    }
}
