//! Per-user quotas on the queue: jobs not finished yet, and bytes of job definitions (per job
//! and in total over those jobs). Artifact bytes are counted by the artifact store, not here.
//!
//! Invariants:
//! - Usage is what the dispatcher holds: a job counts from its submit (after the commit) until
//!   its `JobFinished` event; its definition's bytes count for as long. Rebuilt from the
//!   database at start ([`QueueUsage::add`] for every unfinished job).
//! - The check runs in the dispatcher before the scheduler sees the job, so a refused job
//!   leaves no trace: no id, no event, no row.
//! - Admin tokens are exempt from the limits (their jobs still count in their user's usage).
//!   Agents cannot submit at all.

use proto::api::{Quota, QuotaExceeded};
use proto::{PrincipalId, Role};
use std::collections::HashMap;

/// Limits per user (`dutlab serve --quota-...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueQuota {
    /// Jobs not finished yet.
    pub queued_jobs: u64,
    /// Bytes of one job definition (at most [`proto::api::MAX_JOB_BODY`] in any case).
    pub job_definition_bytes: u64,
    /// Bytes of the definitions of the jobs not finished yet.
    pub queued_definition_bytes: u64,
}

impl Default for QueueQuota {
    fn default() -> QueueQuota {
        QueueQuota {
            queued_jobs: 1000,
            job_definition_bytes: proto::api::MAX_JOB_BODY as u64,
            queued_definition_bytes: 64 << 20,
        }
    }
}

/// What one user holds in the queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    pub jobs: u64,
    pub bytes: u64,
}

/// What every user holds.
#[derive(Debug, Default)]
pub struct QueueUsage(HashMap<PrincipalId, Held>);

impl QueueUsage {
    pub fn of(&self, who: PrincipalId) -> Held {
        self.0.get(&who).copied().unwrap_or_default()
    }

    /// Whether `who`, submitting with a token of `role`, may queue one more job of `bytes`.
    pub fn check(
        &self,
        limits: &QueueQuota,
        who: PrincipalId,
        role: Role,
        bytes: u64,
    ) -> Result<(), QuotaExceeded> {
        if role == Role::Admin {
            return Ok(());
        }
        let held = self.of(who);
        let over = |quota, limit, usage, requested| {
            Err(QuotaExceeded {
                quota,
                limit,
                usage,
                requested,
            })
        };
        if bytes > limits.job_definition_bytes {
            return over(
                Quota::JobDefinitionBytes,
                limits.job_definition_bytes,
                bytes,
                bytes,
            );
        }
        if held.jobs + 1 > limits.queued_jobs {
            return over(Quota::QueuedJobs, limits.queued_jobs, held.jobs, 1);
        }
        if held.bytes + bytes > limits.queued_definition_bytes {
            return over(
                Quota::QueuedDefinitionBytes,
                limits.queued_definition_bytes,
                held.bytes,
                bytes,
            );
        }
        Ok(())
    }

    pub fn add(&mut self, who: PrincipalId, bytes: u64) {
        let held = self.0.entry(who).or_default();
        held.jobs += 1;
        held.bytes += bytes;
    }

    pub fn remove(&mut self, who: PrincipalId, bytes: u64) {
        if let Some(held) = self.0.get_mut(&who) {
            held.jobs = held.jobs.saturating_sub(1);
            held.bytes = held.bytes.saturating_sub(bytes);
            if held.jobs == 0 {
                self.0.remove(&who);
            }
        }
    }
}

/// The message of a 429, naming quota, limit, usage and the flag that sets it.
pub fn message(over: &QuotaExceeded, user: &str) -> String {
    match over.quota {
        Quota::QueuedJobs => format!(
            "quota {}: user {user} has {} of at most {} jobs queued or running; wait for one to finish (limit: dutlab serve --quota-queued-jobs)",
            over.quota, over.usage, over.limit
        ),
        Quota::JobDefinitionBytes => format!(
            "quota {}: the job definition is {} bytes, more than the {} a job may have (limit: dutlab serve --quota-job-bytes)",
            over.quota, over.requested, over.limit
        ),
        Quota::QueuedDefinitionBytes => format!(
            "quota {}: user {user}'s unfinished jobs hold {} bytes of definitions, and this one adds {}, more than the limit of {} (limit: dutlab serve --quota-queued-bytes)",
            over.quota, over.usage, over.requested, over.limit
        ),
        // Counted by the artifact store (`artifact_quota`), named here for one table of texts.
        Quota::ArtifactBytes => format!(
            "quota {}: user {user} stores {} bytes of artifacts, and this upload adds {}, more than the limit of {} (limit: dutlab serve --artifact-quota-bytes)",
            over.quota, over.usage, over.requested, over.limit
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: PrincipalId = PrincipalId(1);
    const BOB: PrincipalId = PrincipalId(2);

    #[test]
    fn limits_are_per_user_and_freed_by_finishing() {
        let limits = QueueQuota {
            queued_jobs: 2,
            job_definition_bytes: 100,
            queued_definition_bytes: 150,
        };
        let mut usage = QueueUsage::default();
        usage.add(ALICE, 60);
        usage.add(ALICE, 60);
        let over = usage
            .check(&limits, ALICE, Role::User, 10)
            .expect_err("two queued");
        assert_eq!(
            over,
            QuotaExceeded {
                quota: Quota::QueuedJobs,
                limit: 2,
                usage: 2,
                requested: 1
            }
        );
        assert!(message(&over, "alice").contains("2 of at most 2"));
        assert_eq!(usage.check(&limits, BOB, Role::User, 10), Ok(()));
        assert_eq!(usage.check(&limits, ALICE, Role::Admin, 10), Ok(()));
        usage.remove(ALICE, 60);
        let over = usage
            .check(&limits, ALICE, Role::User, 100)
            .expect_err("bytes");
        assert_eq!(over.quota, Quota::QueuedDefinitionBytes);
        assert_eq!((over.usage, over.requested), (60, 100));
        let over = usage
            .check(&limits, BOB, Role::User, 101)
            .expect_err("one job too big");
        assert_eq!(over.quota, Quota::JobDefinitionBytes);
        usage.remove(ALICE, 60);
        assert_eq!(usage.of(ALICE), Held::default());
    }
}
