//! Bodies of the administration routes: device states and tags, device details, the audit.
//!
//! | method and path | role | body -> answer |
//! |---|---|---|
//! | `GET /api/v1/devices/{name}` | user, admin | [`DeviceDetail`] |
//! | `POST /api/v1/devices/{name}/state` | admin | [`SetDeviceState`] -> [`DeviceDetail`] |
//! | `POST /api/v1/devices/{name}/tags` | admin | [`EditDeviceTags`] -> [`DeviceDetail`] |
//! | `POST /api/v1/devices/{name}/check` | admin | -> the health check's `JobView` (201) |
//! | `GET /api/v1/audit?limit=N` | admin | [`AuditEntry`] list, newest first |
//! | `GET /api/v1/device-types` | user, admin | [`DeviceTypeView`] list, by name |

use crate::Outcome;
use crate::api::DeviceView;
use crate::ids::{JobId, Millis, PrincipalId};
use crate::state::{DeviceState, JobState};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest reason of a device state, in bytes.
pub const MAX_REASON: usize = 1024;

/// Most tags one edit adds or removes.
pub const MAX_TAG_EDIT: usize = 64;

/// Most audit entries one request returns.
pub const MAX_AUDIT_PAGE: u64 = 1000;

/// A state set on a device by an admin or the lab (`by` is `dutlab`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeviceNote {
    pub state: DeviceState,
    pub reason: String,
    /// Who set it: an admin's user name, or `dutlab` (quarantine, health checks).
    pub by: String,
    /// The job that showed it (a failed health check, the last infra error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobId>,
    pub at: Millis,
}

/// `POST /api/v1/devices/{name}/state`: take a device out of the pool or return it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SetDeviceState {
    /// `maintenance`, `retired` or `idle` (back in the pool).
    pub state: DeviceState,
    /// Why (at most 1024 bytes, no control characters).
    #[serde(default)]
    pub reason: String,
    /// Cancel the running job, or end the person's lease, now (default: they finish first).
    #[serde(default)]
    pub now: bool,
}

/// `POST /api/v1/devices/{name}/tags`: tags added to and removed from the agent's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EditDeviceTags {
    #[serde(default)]
    pub add: Vec<String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A job that ran on a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeviceJob {
    pub id: JobId,
    pub state: JobState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    #[serde(default)]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Millis>,
}

/// Answer of `GET /api/v1/devices/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeviceDetail {
    pub device: DeviceView,
    /// The last state changes, oldest first.
    pub history: Vec<DeviceNote>,
    /// The last jobs that ran on it, newest first (jobs the caller may read).
    pub jobs: Vec<DeviceJob>,
    /// Its agent's tags; `device.tags` are these with the admins' edits.
    pub agent_tags: Vec<String>,
    /// Tags admins added (kept across the agent's reconnects).
    #[serde(default)]
    pub tags_added: Vec<String>,
    /// Tags admins removed.
    #[serde(default)]
    pub tags_removed: Vec<String>,
    /// Infra errors in a row on it (it turns `bad` at the controller's limit).
    pub infra_errors_in_a_row: u32,
}

/// What an admin did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AuditAction {
    /// Set a device's state (`device set`).
    DeviceSet,
    /// Edited a device's tags.
    DeviceTag,
    /// Asked for a health check of a device.
    DeviceCheck,
    /// Ended another user's lease.
    LeaseEnd,
    TokenCreate,
    TokenRevoke,
    GroupAdd,
    GroupRemove,
}

impl AuditAction {
    pub const ALL: [AuditAction; 8] = [
        AuditAction::DeviceSet,
        AuditAction::DeviceTag,
        AuditAction::DeviceCheck,
        AuditAction::LeaseEnd,
        AuditAction::TokenCreate,
        AuditAction::TokenRevoke,
        AuditAction::GroupAdd,
        AuditAction::GroupRemove,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::DeviceSet => "device-set",
            AuditAction::DeviceTag => "device-tag",
            AuditAction::DeviceCheck => "device-check",
            AuditAction::LeaseEnd => "lease-end",
            AuditAction::TokenCreate => "token-create",
            AuditAction::TokenRevoke => "token-revoke",
            AuditAction::GroupAdd => "group-add",
            AuditAction::GroupRemove => "group-remove",
        }
    }

    pub fn parse(word: &str) -> Option<AuditAction> {
        AuditAction::ALL.into_iter().find(|a| a.as_str() == word)
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One admin action: who, when, what (action, target, detail), from where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// 1, 2, 3 ... in the order the actions were done.
    pub seq: u64,
    pub at: Millis,
    /// The admin's user name.
    pub actor: String,
    pub principal: PrincipalId,
    pub action: AuditAction,
    /// What it was done to: a device, a lease, a token id, a user.
    pub target: String,
    /// What was done, in words (`maintenance: new PSU`, `+usb -gpu`, ...).
    pub detail: String,
    /// The address the request came from (`unknown` when the listener did not say).
    pub remote: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_actions_are_spelled_as_they_parse() {
        for a in AuditAction::ALL {
            let json = serde_json::to_string(&a).expect("serialises");
            assert_eq!(json, format!("\"{}\"", a.as_str()));
            assert_eq!(AuditAction::parse(a.as_str()), Some(a));
        }
    }
}

/// A device type of the lab: its devices, what waits for it, its health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeviceTypeView {
    pub name: String,
    /// Registered devices of the type.
    pub devices: usize,
    /// How many of them are in each state (states with none left out).
    pub states: Vec<StateCount>,
    /// Jobs and people's lease requests waiting for a device of the type.
    pub waiting: usize,
    /// The health check job of the type, if the lab has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckView>,
}

/// How many devices are in one state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StateCount {
    pub state: DeviceState,
    pub count: usize,
}

/// A device type's health check and when it runs besides the usual triggers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HealthCheckView {
    /// The check's file in the controller's `--health-checks` directory.
    pub file_name: String,
    /// The job's name in it.
    pub job_name: String,
    /// Also after this many other jobs on a device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_jobs: Option<u32>,
    /// Also when a device's last check is older than this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_s: Option<u64>,
}
