//! REST routes of people's leases under `/api/v1/leases`.
//!
//! Invariants:
//! - Behind [`crate::api::authenticate`] like every route (401); users and admins only (403
//!   for agent tokens), checked first.
//! - Who may see, renew or release a lease is decided in the dispatcher by
//!   [`crate::policy::may_use_lease`]: its holder and admins; others get 403 naming the
//!   holder. A renew or release of an ended lease is 410 Gone.
//! - Input is checked here with the field named: a device name by the one name rule
//!   ([`proto::names::check_name`]), device type and tags as labels, at most 32 tags, a
//!   priority up to [`scheduler::MAX_PRIORITY`], a duration above 0 and within the cap of the
//!   caller's role (checked by the dispatcher, which knows the caps).
//! - `wait` holds a request at most [`MAX_LEASE_WAIT_S`] seconds; the dispatcher answers it
//!   at the commit that grants or ends the lease.

use crate::AppState;
use crate::api::{ApiFailure, ApiResult, PEOPLE, ask, viewer};
use crate::auth::Caller;
use crate::dispatcher::{Command, LeaseRequest};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use proto::PersonLeaseId;
use proto::api::{AcquireLease, ApiError, LeaseView, MAX_LEASE_WAIT_S, RenewLease};
use scheduler::Want;
use serde::Deserialize;
use std::time::Duration;

/// Most tags a request may name.
const MAX_TAGS: usize = 32;

fn bad(message: String) -> ApiFailure {
    ApiFailure::new(StatusCode::BAD_REQUEST, message)
}

/// What the request asks for, or 400 naming the field.
fn want(body: &AcquireLease) -> ApiResult<Want> {
    match (&body.device, &body.device_type) {
        (Some(device), None) => {
            proto::names::check_name(device).map_err(|e| bad(format!("device: {e}")))?;
            if !body.tags.is_empty() {
                return Err(bad(
                    "tags: name tags with device_type, not with a device by name".into(),
                ));
            }
            Ok(Want::Device(device.clone()))
        }
        (None, Some(device_type)) => {
            if device_type.is_empty() {
                return Err(bad("device_type: must not be empty".into()));
            }
            proto::names::check_label(device_type).map_err(|e| bad(format!("device_type: {e}")))?;
            if body.tags.len() > MAX_TAGS {
                return Err(bad(format!("tags: at most {MAX_TAGS}")));
            }
            for tag in &body.tags {
                proto::names::check_label(tag).map_err(|e| bad(format!("tags: {e}")))?;
            }
            Ok(Want::Type {
                device_type: device_type.clone(),
                tags: body.tags.clone(),
            })
        }
        _ => Err(bad(
            "device, device_type: give exactly one (a device by name, or a device type with tags)"
                .into(),
        )),
    }
}

/// Holds a device for the caller: by name, or any device of a type with tags. The answer
/// is the lease, held already or waiting with its position in the one queue of jobs and
/// leases.
#[utoipa::path(post, path = "/api/v1/leases", security(("bearer" = [])), request_body = AcquireLease,
    responses((status = 201, body = LeaseView), (status = 400, description = "bad request; the field is named", body = ApiError),
        (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, description = "no device of that name", body = ApiError)))]
pub async fn acquire_lease(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Json(body): Json<AcquireLease>,
) -> ApiResult<(StatusCode, Json<LeaseView>)> {
    caller.require(&PEOPLE)?;
    let want = want(&body)?;
    let priority = body.priority.unwrap_or(50);
    if priority > scheduler::MAX_PRIORITY {
        return Err(bad(format!(
            "priority: {priority} is above the highest, {}",
            scheduler::MAX_PRIORITY
        )));
    }
    if body.duration_s == Some(0) {
        return Err(bad("duration_s: must be above 0".into()));
    }
    let request = LeaseRequest {
        principal: caller.principal,
        name: caller.user.clone(),
        role: caller.role,
        want,
        priority,
        ttl: body.duration_s.map(Duration::from_secs),
    };
    let view = ask(&state, |reply| Command::AcquireLease { request, reply }).await??;
    Ok((StatusCode::CREATED, Json(view)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct LeasesQuery {
    /// Ended leases too (default false).
    all: Option<bool>,
}

/// The caller's leases (admins: everyone's), waiting and held; ended ones with `all`.
#[utoipa::path(get, path = "/api/v1/leases", security(("bearer" = [])), params(LeasesQuery),
    responses((status = 200, body = Vec<LeaseView>), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
pub async fn list_leases(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(query): Query<LeasesQuery>,
) -> ApiResult<Json<Vec<LeaseView>>> {
    caller.require(&PEOPLE)?;
    let viewer = viewer(&state, &caller);
    let all = query.all.unwrap_or(false);
    Ok(Json(
        ask(&state, |reply| Command::PersonLeases { viewer, all, reply }).await?,
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct LeaseQuery {
    /// Seconds to wait while the lease is waiting for a device (at most 60): the answer
    /// comes as soon as it is granted or ended.
    wait: Option<u64>,
}

/// One lease (its holder or an admin). An ended lease is shown with state `ended`.
#[utoipa::path(get, path = "/api/v1/leases/{id}", security(("bearer" = [])), params(("id" = u64, Path, description = "lease id"), LeaseQuery),
    responses((status = 200, body = LeaseView), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub async fn get_lease(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<u64>,
    Query(query): Query<LeaseQuery>,
) -> ApiResult<Json<LeaseView>> {
    caller.require(&PEOPLE)?;
    let lease = PersonLeaseId(id);
    let wait = query.wait.unwrap_or(0);
    if wait > MAX_LEASE_WAIT_S {
        return Err(bad(format!("wait: at most {MAX_LEASE_WAIT_S} seconds")));
    }
    let v = viewer(&state, &caller);
    if wait == 0 {
        let viewer = v;
        let view = ask(&state, |reply| Command::Lease {
            lease,
            viewer,
            wait: false,
            reply,
        })
        .await??;
        return Ok(Json(view));
    }
    let viewer = v.clone();
    let waited = tokio::time::timeout(
        Duration::from_secs(wait),
        ask(&state, |reply| Command::Lease {
            lease,
            viewer,
            wait: true,
            reply,
        }),
    )
    .await;
    match waited {
        Ok(answer) => Ok(Json(answer??)),
        // Still waiting: the lease as it is now.
        Err(_) => {
            let view = ask(&state, |reply| Command::Lease {
                lease,
                viewer: v,
                wait: false,
                reply,
            })
            .await??;
            Ok(Json(view))
        }
    }
}

/// Renews a held lease: its deadline becomes now + the duration, never past its cap.
#[utoipa::path(post, path = "/api/v1/leases/{id}/renew", security(("bearer" = [])), params(("id" = u64, Path, description = "lease id")), request_body = RenewLease,
    responses((status = 200, body = LeaseView), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 410, description = "the lease has ended", body = ApiError)))]
pub async fn renew_lease(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<u64>,
    body: Option<Json<RenewLease>>,
) -> ApiResult<Json<LeaseView>> {
    caller.require(&PEOPLE)?;
    let duration = body.and_then(|Json(b)| b.duration_s);
    if duration == Some(0) {
        return Err(bad("duration_s: must be above 0".into()));
    }
    let viewer = viewer(&state, &caller);
    let view = ask(&state, |reply| Command::RenewLease {
        lease: PersonLeaseId(id),
        viewer,
        ttl: duration.map(Duration::from_secs),
        reply,
    })
    .await??;
    Ok(Json(view))
}

/// Ends a lease (its holder, or an admin: recorded as ended by that admin); a waiting one
/// leaves the queue, a held device goes back to the pool.
#[utoipa::path(post, path = "/api/v1/leases/{id}/release", security(("bearer" = [])), params(("id" = u64, Path, description = "lease id")),
    responses((status = 200, body = LeaseView), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 410, description = "the lease has ended already", body = ApiError)))]
pub async fn release_lease(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<u64>,
) -> ApiResult<Json<LeaseView>> {
    caller.require(&PEOPLE)?;
    let viewer = viewer(&state, &caller);
    let view = ask(&state, |reply| Command::ReleaseLease {
        lease: PersonLeaseId(id),
        viewer,
        reply,
    })
    .await??;
    Ok(Json(view))
}
