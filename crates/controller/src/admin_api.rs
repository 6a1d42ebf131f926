//! REST of device administration and the audit: device details (people), device states and
//! tags (admins), the audit list (admins).
//!
//! Invariants:
//! - Roles are checked first (403); the dispatcher checks the admin role again before it
//!   changes a device.
//! - Every input is bounded and checked before the dispatcher sees it: device names are
//!   safe names, tags labels (`proto::names`), a reason at most [`MAX_REASON`] bytes without
//!   control characters, at most [`MAX_TAG_EDIT`] tags per edit. A bad one is 400 naming the
//!   field.
//! - Admin actions of the API layer (tokens, groups) are audited through
//!   [`audit`], which the dispatcher commits.

use crate::AppState;
use crate::api::{ApiFailure, ApiResult, PEOPLE, ask, viewer};
use crate::auth::Caller;
use crate::dispatcher::Command;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use proto::Role;
use proto::admin::{
    AuditAction, AuditEntry, DeviceDetail, DeviceTypeView, EditDeviceTags, MAX_AUDIT_PAGE,
    MAX_REASON, MAX_TAG_EDIT, SetDeviceState,
};
use proto::api::ApiError;
use proto::names::{check_label, check_name};
use serde::Deserialize;

fn bad(message: String) -> ApiFailure {
    ApiFailure::new(StatusCode::BAD_REQUEST, message)
}

fn check_device_name(name: &str) -> ApiResult<()> {
    check_name(name).map_err(|e| bad(format!("device: {e}")))
}

/// The lab's device types: how many devices in which state, what waits, the health check.
#[utoipa::path(get, path = "/api/v1/device-types", security(("bearer" = [])),
    responses((status = 200, body = Vec<DeviceTypeView>), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
pub async fn device_types(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> ApiResult<Json<Vec<DeviceTypeView>>> {
    caller.require(&PEOPLE)?;
    Ok(Json(
        ask(&state, |reply| Command::DeviceTypes { reply }).await?,
    ))
}

/// A device with its state (and who set it, why, when), history, last jobs and tags.
#[utoipa::path(get, path = "/api/v1/devices/{name}", security(("bearer" = [])),
    params(("name" = String, Path, description = "device name")),
    responses((status = 200, body = DeviceDetail), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub async fn get_device(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<DeviceDetail>> {
    caller.require(&PEOPLE)?;
    check_device_name(&name)?;
    let viewer = viewer(&state, &caller);
    let detail = ask(&state, |reply| Command::Device {
        device: name,
        viewer,
        reply,
    })
    .await??;
    Ok(Json(detail))
}

/// Takes a device out of the pool (maintenance, retired) or returns it (idle) (admin). A
/// running job or a person's lease finishes first unless `now`.
#[utoipa::path(post, path = "/api/v1/devices/{name}/state", security(("bearer" = [])), request_body = SetDeviceState,
    params(("name" = String, Path, description = "device name")),
    responses((status = 200, body = DeviceDetail), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub async fn set_device_state(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(name): Path<String>,
    Json(body): Json<SetDeviceState>,
) -> ApiResult<Json<DeviceDetail>> {
    caller.require(&[Role::Admin])?;
    check_device_name(&name)?;
    if body.reason.len() > MAX_REASON {
        return Err(bad(format!(
            "reason: {} bytes, at most {MAX_REASON}",
            body.reason.len()
        )));
    }
    if body.reason.chars().any(char::is_control) {
        return Err(bad("reason: control characters are not allowed".into()));
    }
    let viewer = viewer(&state, &caller);
    let detail = ask(&state, |reply| Command::SetDeviceState {
        device: name,
        body,
        viewer,
        reply,
    })
    .await??;
    Ok(Json(detail))
}

/// Adds tags to and removes tags from a device's agent tags (admin); kept across the agent's
/// reconnects.
#[utoipa::path(post, path = "/api/v1/devices/{name}/tags", security(("bearer" = [])), request_body = EditDeviceTags,
    params(("name" = String, Path, description = "device name")),
    responses((status = 200, body = DeviceDetail), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub async fn edit_device_tags(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(name): Path<String>,
    Json(body): Json<EditDeviceTags>,
) -> ApiResult<Json<DeviceDetail>> {
    caller.require(&[Role::Admin])?;
    check_device_name(&name)?;
    if body.add.len() + body.remove.len() > MAX_TAG_EDIT {
        return Err(bad(format!("tags: at most {MAX_TAG_EDIT} per edit")));
    }
    if body.add.is_empty() && body.remove.is_empty() {
        return Err(bad("tags: nothing to add or remove".into()));
    }
    for (field, tags) in [("add", &body.add), ("remove", &body.remove)] {
        for t in tags {
            check_label(t).map_err(|e| bad(format!("{field}: {e}")))?;
        }
    }
    let viewer = viewer(&state, &caller);
    let detail = ask(&state, |reply| Command::EditDeviceTags {
        device: name,
        body,
        viewer,
        reply,
    })
    .await??;
    Ok(Json(detail))
}

/// Queues a health check of a device (admin): the device type's health job, pinned to it,
/// first in the queue; a `bad` device is returned to the pool for it. Answers the check's job
/// (the pending one if one is queued or running).
#[utoipa::path(post, path = "/api/v1/devices/{name}/check", security(("bearer" = [])),
    params(("name" = String, Path, description = "device name")),
    responses((status = 201, body = proto::api::JobView), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub async fn check_device(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<proto::api::JobView>)> {
    caller.require(&[Role::Admin])?;
    check_device_name(&name)?;
    let viewer = viewer(&state, &caller);
    let view = ask(&state, |reply| Command::CheckDevice {
        device: name,
        viewer,
        reply,
    })
    .await??;
    Ok((StatusCode::CREATED, Json(view)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct AuditQuery {
    /// Newest entries to return (default 100, at most 1000).
    pub limit: Option<u64>,
}

/// The audit of admin actions, newest first (admin).
#[utoipa::path(get, path = "/api/v1/audit", security(("bearer" = [])), params(AuditQuery),
    responses((status = 200, body = Vec<AuditEntry>), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
pub async fn list_audit(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(query): Query<AuditQuery>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    caller.require(&[Role::Admin])?;
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_AUDIT_PAGE);
    let entries = state
        .store
        .audit(limit)
        .await
        .map_err(|e| ApiFailure::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(Json(entries))
}

/// Audits an admin action of the API layer (committed by the dispatcher). A failure is
/// answered 503: the action was done, but the audit could not be written.
pub async fn audit(
    state: &AppState,
    caller: &Caller,
    action: AuditAction,
    target: &str,
    detail: String,
) -> ApiResult<()> {
    let viewer = viewer(state, caller);
    let target = target.to_owned();
    ask(state, |reply| Command::Audit {
        viewer,
        action,
        target,
        detail,
        reply,
    })
    .await??;
    Ok(())
}
