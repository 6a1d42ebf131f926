//! Device administration: states set by admins (maintenance, retired, idle), tag edits,
//! device details (history, last jobs), and the audit of admin actions.
//!
//! Invariants:
//! - Only admins change a device (checked here as well as in the API layer: a viewer that is
//!   not an admin gets `Forbidden` and nothing changes).
//! - Every admin action is audited in the same commit as its events ([`Dispatcher::audit`]
//!   queues the entry; the next [`Dispatcher::commit`] writes it), so the audit never says
//!   something happened that was not committed, nor misses what was.
//! - Audit entries are numbered by the dispatcher, the table's only writer.

use super::*;
use proto::DeviceState;
use proto::admin::{AuditAction, AuditEntry, DeviceDetail, DeviceJob, DeviceNote};
use scheduler::{Interrupt, StateNote};

/// Jobs shown in a device's details.
const DEVICE_JOBS: usize = 10;

pub(super) fn note_view(n: &StateNote) -> DeviceNote {
    DeviceNote {
        state: n.state,
        reason: n.reason.clone(),
        by: n.by.clone(),
        job: n.job,
        at: n.at,
    }
}

impl Dispatcher {
    /// Queues an audit entry for the next commit.
    pub(super) fn audit(
        &mut self,
        viewer: &Viewer,
        action: AuditAction,
        target: &str,
        detail: String,
    ) {
        let entry = AuditEntry {
            seq: self.next_audit,
            at: now(),
            actor: viewer.name.clone(),
            principal: viewer.principal,
            action,
            target: target.to_owned(),
            detail,
            remote: viewer
                .remote
                .map_or_else(|| "unknown".to_owned(), |a| a.to_string()),
        };
        self.next_audit += 1;
        tracing::info!(
            "audit {}: {} {action} {target}: {} (from {})",
            entry.seq,
            entry.actor,
            entry.detail,
            entry.remote
        );
        self.pending_audit.push(entry);
    }

    /// An admin action done outside the dispatcher (tokens, groups): audited alone.
    pub(super) async fn record(
        &mut self,
        viewer: &Viewer,
        action: AuditAction,
        target: &str,
        detail: String,
    ) -> Result<(), Failure> {
        self.audit(viewer, action, target, detail);
        self.commit(Vec::new(), Vec::new(), None, None)
            .await
            .map_err(|e| Failure::Unavailable(e.to_string()))
    }

    fn admin_only(viewer: &Viewer, what: &str) -> Result<(), Failure> {
        if viewer.role == Role::Admin {
            Ok(())
        } else {
            Err(Failure::Forbidden(format!(
                "{what}: only admins change devices ({} is {})",
                viewer.name, viewer.role
            )))
        }
    }

    fn device_refusal(refusal: Refusal) -> Failure {
        match refusal {
            Refusal::UnknownDevice(d) => Failure::NotFound(format!(
                "device: no device named {d:?} is registered (see `dutlab device list`)"
            )),
            Refusal::NotSettable(_) | Refusal::TagConflict(_) => Failure::BadRequest {
                message: refusal.to_string(),
                known_device_types: Vec::new(),
            },
            other => Failure::Conflict(other.to_string()),
        }
    }

    pub(super) async fn set_device_state(
        &mut self,
        device: &str,
        body: proto::admin::SetDeviceState,
        viewer: &Viewer,
    ) -> Result<DeviceDetail, Failure> {
        Self::admin_only(viewer, "device set")?;
        if !matches!(
            body.state,
            DeviceState::Idle | DeviceState::Maintenance | DeviceState::Retired
        ) {
            return Err(Failure::BadRequest {
                message: format!(
                    "state: an admin sets maintenance, retired or idle, not {} (bad is the lab's: a failed health check or repeated infra errors)",
                    body.state
                ),
                known_device_types: Vec::new(),
            });
        }
        let note = StateNote {
            state: body.state,
            reason: body.reason.clone(),
            by: viewer.name.clone(),
            job: None,
            at: now(),
        };
        let interrupt = if body.now {
            Interrupt::Now
        } else {
            Interrupt::AfterLease
        };
        let events = self
            .sched
            .set_device_state(device, note, interrupt)
            .map_err(Self::device_refusal)?;
        let mut detail = body.state.to_string();
        if body.now {
            detail.push_str(" now");
        }
        if !body.reason.is_empty() {
            detail.push_str(": ");
            detail.push_str(&body.reason);
        }
        self.audit(viewer, AuditAction::DeviceSet, device, detail);
        self.commit(events, Vec::new(), None, None)
            .await
            .map_err(|e| Failure::Unavailable(e.to_string()))?;
        self.device_detail(device, viewer)
    }

    pub(super) async fn edit_device_tags(
        &mut self,
        device: &str,
        body: proto::admin::EditDeviceTags,
        viewer: &Viewer,
    ) -> Result<DeviceDetail, Failure> {
        Self::admin_only(viewer, "device tag")?;
        let detail = body
            .add
            .iter()
            .map(|t| format!("+{t}"))
            .chain(body.remove.iter().map(|t| format!("-{t}")))
            .collect::<Vec<_>>()
            .join(" ");
        let events = self
            .sched
            .set_device_tags(device, body.add, body.remove, &viewer.name, now())
            .map_err(Self::device_refusal)?;
        self.audit(viewer, AuditAction::DeviceTag, device, detail);
        self.commit(events, Vec::new(), None, None)
            .await
            .map_err(|e| Failure::Unavailable(e.to_string()))?;
        self.device_detail(device, viewer)
    }

    /// A device with its history and the last jobs on it that `viewer` may read.
    pub(super) fn device_detail(
        &self,
        device: &str,
        viewer: &Viewer,
    ) -> Result<DeviceDetail, Failure> {
        let d = self.sched.device(device).ok_or_else(|| {
            Failure::NotFound(format!(
                "device: no device named {device:?} is registered (see `dutlab device list`)"
            ))
        })?;
        let view = self.device_view(d);
        let mut ran: Vec<JobId> = self
            .sched
            .jobs()
            .filter(|(_, j)| j.device.as_deref() == Some(device))
            .map(|(id, _)| id)
            .collect();
        ran.reverse();
        let jobs = ran
            .into_iter()
            .filter_map(|id| self.view(id))
            .filter(|v| policy::may_read(v, viewer).is_ok())
            .take(DEVICE_JOBS)
            .map(|v| DeviceJob {
                id: v.id,
                state: v.state,
                outcome: v.outcome,
                reason: v.reason,
                started_at: v.started_at,
                finished_at: v.finished_at,
            })
            .collect();
        let (tags_added, tags_removed) = self.sched.tag_edits(device);
        Ok(DeviceDetail {
            device: view,
            history: self.sched.device_history(device).map(note_view).collect(),
            jobs,
            agent_tags: d.agent_tags.clone(),
            tags_added,
            tags_removed,
            infra_errors_in_a_row: self.sched.infra_streak(device),
        })
    }
}
