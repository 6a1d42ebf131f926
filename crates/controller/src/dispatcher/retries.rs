//! Retries: a job submitted with [`RetryPolicy::OnceOnAnotherDevice`] that ends `infra-error`
//! on a device runs again, once, as a new job of the same owner, definition and
//! visibility that may not use that device.
//!
//! Invariants:
//! - A retry is itself never retried (`retry: never`), and names its first run
//!   (`retry_of`); the first run's view names the retry (`retried_as`). Both are in the
//!   scheduler's events, so a restart keeps them.
//! - A retry is submitted only when another device of the job's type that it fits is
//!   registered and not retired; otherwise the infra error stands and the log says why.
//! - At most one retry per job: a finish is noted once, and a job that already has a retry
//!   gets no second one.
//! - The retry goes through the ordinary `submit` (quotas count it, the queue orders it).

use super::*;
use proto::{DeviceState, RetryPolicy};
use scheduler::JobPurpose;

impl Dispatcher {
    /// Notes the retries `events` call for (run by [`Dispatcher::run_due_retries`]).
    pub(super) fn note_retries(&mut self, events: &[Event]) {
        for event in events {
            if let Event::JobFinished {
                job,
                outcome: proto::Outcome::InfraError,
                ..
            } = event
                && let Some(j) = self.sched.job(*job)
                && j.spec.retry == RetryPolicy::OnceOnAnotherDevice
                && j.spec.retry_of.is_none()
                && j.spec.purpose == JobPurpose::Ordinary
                && j.device.is_some()
            {
                self.retries_due.push(*job);
            }
        }
    }

    /// The job that runs `job` again, if any. Only a job that asked for a retry can have
    /// one, so views of the others (nearly all) walk nothing.
    pub(super) fn retried_as(&self, job: JobId) -> Option<JobId> {
        let asked = self
            .sched
            .job(job)
            .is_some_and(|j| j.spec.retry != RetryPolicy::Never);
        if !asked {
            return None;
        }
        self.sched
            .jobs()
            .find(|(_, j)| j.spec.retry_of == Some(job))
            .map(|(id, _)| id)
    }

    /// Submits the retries noted since the last call.
    pub(super) async fn run_due_retries(&mut self) {
        for job in std::mem::take(&mut self.retries_due) {
            match self.retry(job).await {
                Ok(Some(again)) => tracing::info!("job {job}: infra error; retried as job {again}"),
                Ok(None) => {}
                Err(e) => tracing::warn!("job {job}: not retried: {e:?}"),
            }
        }
    }

    async fn retry(&mut self, job: JobId) -> Result<Option<JobId>, Failure> {
        if self.retried_as(job).is_some() {
            return Ok(None);
        }
        let Some(entry) = self.sched.job(job) else {
            return Ok(None);
        };
        let Some(failed_on) = entry.device.clone() else {
            return Ok(None);
        };
        let mut spec = entry.spec.clone();
        spec.avoid.push(failed_on.clone());
        spec.retry = RetryPolicy::Never;
        spec.retry_of = Some(job);
        let elsewhere = self.sched.devices().any(|d| {
            d.info.name != failed_on && d.state != DeviceState::Retired && spec.fits(&d.info)
        });
        if !elsewhere {
            tracing::info!(
                "job {job}: infra error on {failed_on}; not retried: no other device of type {:?} fits it",
                spec.device_type
            );
            return Ok(None);
        }
        let meta = self
            .jobs
            .get(&job)
            .ok_or_else(|| Failure::Unavailable(format!("job {job}: no record")))?;
        let (name, owner, owner_name, visibility, warnings) = (
            meta.name.clone(),
            meta.owner,
            meta.owner_name.clone(),
            meta.visibility.clone(),
            meta.warnings.clone(),
        );
        let definition = self
            .store
            .definition(job)
            .await
            .map_err(|e| Failure::Unavailable(e.to_string()))?
            .ok_or_else(|| Failure::Unavailable(format!("job {job}: no stored definition")))?;
        let (file_name, artifacts) = self
            .store
            .job_source(job)
            .await
            .map_err(|e| Failure::Unavailable(e.to_string()))?
            .unwrap_or_else(|| ("job.yaml".to_owned(), Vec::new()));
        let submission = Submission {
            name,
            owner,
            owner_name,
            // Quotas apply to the retry as to any of the user's jobs.
            role: Role::User,
            visibility,
            file_name,
            definition,
            warnings,
            spec,
            wait_for_device: true,
            artifacts,
            roles: Vec::new(),
        };
        let view = self.submit(submission).await?;
        self.publish(job);
        Ok(Some(view.id))
    }
}
