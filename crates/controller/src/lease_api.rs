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
//! - `ssh_keys` are checked lines ([`proto::session::check_public_keys`]): at most 8, known
//!   key types, no options, no control characters; a refusal names the key's index.
//! - Power, flash and screenshot go to the device's agent through the dispatcher (holder or
//!   admin only, 410 after the end, 409 while waiting, 503 without the agent); each waits at
//!   most its bound ([`POWER_WAIT`], [`FLASH_WAIT`], [`SCREENSHOT_WAIT`]) for the agent's
//!   answer, then 504. A flash names an artifact the caller may use (404 otherwise, as for
//!   `GET /api/v1/artifacts`).
//! - They are the leader's: a follower answers a caller who may use the held lease 307 to
//!   the same path at the leader's advertised address (503 when it advertises none), which
//!   checks everything again; anyone else gets the follower's 403, 409 or 410.

use crate::AppState;
use crate::api::{ApiFailure, ApiResult, PEOPLE, ask, viewer};
use crate::auth::Caller;
use crate::dispatcher::{Command, LeaseRequest, SessionAt};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::IntoResponse;
use futures_util::StreamExt;
use proto::PersonLeaseId;
use proto::api::{
    AcquireLease, ApiError, FlashLine, FlashRequest, FlashView, LeaseView, MAX_LEASE_WAIT_S,
    PowerRequest, PowerView, RenewLease,
};
use proto::session::{PowerAction, SessionAction, SessionResult};
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
    let ssh_keys = proto::session::check_public_keys(&body.ssh_keys)
        .map_err(|e| bad(format!("ssh_keys{e}")))?;
    let request = LeaseRequest {
        principal: caller.principal,
        name: caller.user.clone(),
        role: caller.role,
        want,
        priority,
        ttl: body.duration_s.map(Duration::from_secs),
        ssh_keys,
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

/// How long a power request waits for the agent (a launch under TCG and QEMU's quit grace).
pub const POWER_WAIT: Duration = Duration::from_secs(120);
/// How long a flash waits for the agent to fetch, verify and write the image.
pub const FLASH_WAIT: Duration = Duration::from_secs(30 * 60);
/// How long a screenshot waits.
pub const SCREENSHOT_WAIT: Duration = Duration::from_secs(60);

/// `Some(307 to the leader)` when this controller follows and the caller may use the held
/// lease; `None` when the request is done here.
pub(crate) async fn to_leader(
    state: &AppState,
    caller: &Caller,
    id: u64,
    uri: &Uri,
) -> ApiResult<Option<axum::response::Response>> {
    let lease = PersonLeaseId(id);
    let viewer = viewer(state, caller);
    let at = ask(state, |reply| Command::SessionRoute {
        lease,
        viewer,
        reply,
    })
    .await??;
    if at == SessionAt::Here {
        return Ok(None);
    }
    let redirect = leader_redirect(state, uri)
        .await
        .map_err(|reason| {
            ApiFailure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("lease {lease}: requests to the device (power, flash, screenshots, Leviathan's /dut/...) are done by the leading controller, {reason}"),
            )
        })?;
    tracing::info!(
        "lease {lease}: {} sent to the leader at {}",
        caller.user,
        redirect.0
    );
    Ok(Some(redirect.1))
}

/// A 307 to the same path and query at the leading controller's advertised address (with
/// that address), or why there is none (for a 503).
pub(crate) async fn leader_redirect(
    state: &AppState,
    uri: &Uri,
) -> Result<(String, axum::response::Response), String> {
    let url = state
        .store
        .leader_url()
        .await
        .map_err(|e| format!("whose address cannot be read: {e}"))?
        .ok_or_else(|| {
            "which advertises no address to send you to (start it with `dutlab serve --advertise URL`)"
                .to_owned()
        })?;
    let location = format!(
        "{url}{}",
        uri.path_and_query().map_or(uri.path(), |p| p.as_str())
    );
    let response = (
        StatusCode::TEMPORARY_REDIRECT,
        [(header::LOCATION, location)],
    )
        .into_response();
    Ok((url, response))
}

/// Asks the lease's agent for `action` and waits at most `bound` for its result.
pub(crate) async fn on_device(
    state: &AppState,
    caller: &Caller,
    id: u64,
    action: SessionAction,
    bound: Duration,
) -> ApiResult<SessionResult> {
    on_device_reporting(state, caller, id, action, bound, None).await
}

/// [`on_device`], with the agent's progress reports (bytes done, total) sent to `progress`.
pub(crate) async fn on_device_reporting(
    state: &AppState,
    caller: &Caller,
    id: u64,
    action: SessionAction,
    bound: Duration,
    progress: Option<crate::dispatcher::Progress>,
) -> ApiResult<SessionResult> {
    let viewer = viewer(state, caller);
    let lease = PersonLeaseId(id);
    let what = action.describe();
    let asked = ask(state, |reply| Command::Session {
        lease,
        viewer,
        action,
        progress,
        reply,
    });
    match tokio::time::timeout(bound, asked).await {
        Ok(answer) => match answer?? {
            SessionResult::Failed { reason } => Err(ApiFailure::new(
                StatusCode::BAD_GATEWAY,
                format!("lease {id}: {what}: the device's agent says: {reason}"),
            )),
            result => Ok(result),
        },
        Err(_) => Err(ApiFailure::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("lease {id}: {what}: the device's agent did not answer within {bound:?}"),
        )),
    }
}

pub(crate) fn unexpected(id: u64, result: &SessionResult) -> ApiFailure {
    ApiFailure::new(
        StatusCode::BAD_GATEWAY,
        format!("lease {id}: the agent answered with an unexpected result: {result:?}"),
    )
}

async fn power(
    state: &AppState,
    caller: &Caller,
    id: u64,
    uri: &Uri,
    action: PowerAction,
) -> ApiResult<axum::response::Response> {
    caller.require(&PEOPLE)?;
    if let Some(redirect) = to_leader(state, caller, id, uri).await? {
        return Ok(redirect);
    }
    let result = on_device(
        state,
        caller,
        id,
        SessionAction::Power { power: action },
        POWER_WAIT,
    )
    .await?;
    let SessionResult::Power { state: power } = result else {
        return Err(unexpected(id, &result));
    };
    let device = device_of(state, caller, id).await?;
    Ok(Json(PowerView {
        lease: PersonLeaseId(id),
        device,
        state: power,
    })
    .into_response())
}

/// The device a lease holds (for answers).
async fn device_of(state: &AppState, caller: &Caller, id: u64) -> ApiResult<String> {
    let viewer = viewer(state, caller);
    let view = ask(state, |reply| Command::Lease {
        lease: PersonLeaseId(id),
        viewer,
        wait: false,
        reply,
    })
    .await??;
    Ok(view.device.unwrap_or_default())
}

/// The power state of the leased device (its holder or an admin).
#[utoipa::path(get, path = "/api/v1/leases/{id}/power", security(("bearer" = [])), params(("id" = u64, Path, description = "lease id")),
    responses((status = 200, body = PowerView), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 409, description = "the lease is waiting for a device", body = ApiError), (status = 410, description = "the lease has ended", body = ApiError),
        (status = 502, description = "the agent could not do it", body = ApiError), (status = 307, description = "this controller follows: do it at the Location, the leading controller"), (status = 503, description = "the device's agent is not connected", body = ApiError),
        (status = 504, description = "the agent did not answer in time", body = ApiError)))]
pub async fn get_power(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<u64>,
    uri: Uri,
) -> ApiResult<axum::response::Response> {
    power(&state, &caller, id, &uri, PowerAction::Status).await
}

/// Powers the leased device on, off, or off and on again (`cycle`); `status` only reports.
/// QEMU: power-on boots the lease's storage (the default guest image, or the image flashed
/// last) with the lease's SSH keys authorized.
#[utoipa::path(post, path = "/api/v1/leases/{id}/power", security(("bearer" = [])), params(("id" = u64, Path, description = "lease id")), request_body = PowerRequest,
    responses((status = 200, body = PowerView), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 409, description = "the lease is waiting for a device", body = ApiError), (status = 410, description = "the lease has ended", body = ApiError),
        (status = 502, description = "the agent could not do it", body = ApiError), (status = 307, description = "this controller follows: do it at the Location, the leading controller"), (status = 503, description = "the device's agent is not connected", body = ApiError),
        (status = 504, description = "the agent did not answer in time", body = ApiError)))]
pub async fn post_power(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<u64>,
    uri: Uri,
    Json(body): Json<PowerRequest>,
) -> ApiResult<axum::response::Response> {
    power(&state, &caller, id, &uri, body.action).await
}

/// Makes an uploaded artifact the leased device's storage (QEMU: a fresh linked clone of it
/// becomes the disk); the next power-on boots it. The agent fetches the artifact for this
/// lease only, verifies its SHA-256 and writes it. With `Accept: application/x-ndjson` the
/// answer is a stream of `FlashLine`s: progress while the agent works, then the end.
#[utoipa::path(post, path = "/api/v1/leases/{id}/flash", security(("bearer" = [])), params(("id" = u64, Path, description = "lease id")), request_body = FlashRequest,
    responses((status = 200, body = FlashView, description = "the flash is done (with Accept: application/x-ndjson: FlashLine documents, one a line)"), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError),
        (status = 404, description = "no such lease, or an artifact the caller may not use", body = ApiError),
        (status = 409, description = "the lease is waiting for a device", body = ApiError), (status = 410, description = "the lease has ended", body = ApiError),
        (status = 502, description = "the agent could not do it", body = ApiError), (status = 307, description = "this controller follows: do it at the Location, the leading controller"), (status = 503, description = "the device's agent is not connected", body = ApiError),
        (status = 504, description = "the agent did not answer in time", body = ApiError)))]
pub async fn post_flash(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<u64>,
    uri: Uri,
    headers: axum::http::HeaderMap,
    Json(body): Json<FlashRequest>,
) -> ApiResult<axum::response::Response> {
    caller.require(&PEOPLE)?;
    if let Some(redirect) = to_leader(&state, &caller, id, &uri).await? {
        return Ok(redirect);
    }
    let hex = body
        .sha256
        .strip_prefix("sha256:")
        .unwrap_or(&body.sha256)
        .to_owned();
    if !proto::session::check_digest(&hex) {
        return Err(bad(format!(
            "sha256: {:?} is not 64 lowercase hexadecimal digits",
            body.sha256.chars().take(80).collect::<String>()
        )));
    }
    // Who may flash is checked before anything about the artifact is said.
    let device = device_of(&state, &caller, id).await?;
    let size = state
        .store
        .artifact_size(&hex)
        .await
        .map_err(|e| ApiFailure::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let usable = crate::artifacts::may_use(&state, &caller, &hex).await?;
    let here = match size {
        Some(size) if usable => crate::artifacts::held(&state, &hex, size).await?,
        _ => false,
    };
    let Some(size) = size.filter(|_| here) else {
        return Err(ApiFailure::new(
            StatusCode::NOT_FOUND,
            format!(
                "sha256: artifact sha256:{hex} does not exist or is not yours to use (upload it first)"
            ),
        ));
    };
    let lines = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(NDJSON));
    let flashed = FlashView {
        lease: PersonLeaseId(id),
        device,
        sha256: hex.clone(),
        bytes: 0,
    };
    if !lines {
        let action = SessionAction::Flash {
            sha256: hex.clone(),
            size,
        };
        let result = on_device(&state, &caller, id, action, FLASH_WAIT).await?;
        let SessionResult::Flashed { bytes } = result else {
            return Err(unexpected(id, &result));
        };
        return Ok(Json(FlashView { bytes, ..flashed }).into_response());
    }
    let mut steps = flash_steps(state, caller, id, hex.clone(), size);
    let mut flashed = Some(flashed);
    let stream = futures_util::stream::poll_fn(move |cx| steps.poll_recv(cx)).map(move |step| {
        let line = match step {
            FlashStep::Progress { done, total } => FlashLine::Progress { done, total },
            FlashStep::End(Ok(SessionResult::Flashed { bytes })) => match flashed.take() {
                Some(view) => FlashLine::Flashed(FlashView { bytes, ..view }),
                None => FlashLine::Error(ApiError::new("the flash ended twice")),
            },
            FlashStep::End(Ok(other)) => FlashLine::Error(unexpected(id, &other).into_body()),
            FlashStep::End(Err(failure)) => FlashLine::Error(failure.into_body()),
        };
        let mut text = serde_json::to_string(&line).unwrap_or_else(|e| {
            format!("{{\"error\":{{\"error\":\"cannot encode a progress line: {e}\"}}}}")
        });
        text.push('\n');
        Ok::<_, std::io::Error>(text)
    });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, NDJSON)],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

/// The media type of an answer of [`FlashLine`]s, one JSON document a line.
pub const NDJSON: &str = "application/x-ndjson";

/// One step of a flash as it goes.
pub(crate) enum FlashStep {
    /// Bytes done of the total, as the agent reports them.
    Progress { done: u64, total: u64 },
    /// The agent's answer, or why there is none.
    End(ApiResult<SessionResult>),
}

/// Starts flashing artifact `sha256` (`size` bytes) onto lease `id`'s device; answers its
/// steps as they come: progress, then the end. The flash goes on if the receiver is dropped
/// (the caller left): the agent finishes it and the lease keeps the result.
pub(crate) fn flash_steps(
    state: AppState,
    caller: Caller,
    id: u64,
    sha256: String,
    size: u64,
) -> tokio::sync::mpsc::Receiver<FlashStep> {
    let (progress_tx, mut progress_rx) = tokio::sync::watch::channel((0u64, size));
    let (steps_tx, steps_rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let action = SessionAction::Flash { sha256, size };
        let work = on_device_reporting(&state, &caller, id, action, FLASH_WAIT, Some(progress_tx));
        tokio::pin!(work);
        let first = FlashStep::Progress {
            done: 0,
            total: size,
        };
        let mut listening = steps_tx.send(first).await.is_ok();
        let end = loop {
            tokio::select! {
                result = &mut work => break result,
                changed = progress_rx.changed(), if listening => {
                    if changed.is_err() {
                        listening = false;
                        continue;
                    }
                    let (done, total) = *progress_rx.borrow_and_update();
                    listening = steps_tx.send(FlashStep::Progress { done, total }).await.is_ok();
                }
            }
        };
        let _ = steps_tx.send(FlashStep::End(end)).await;
    });
    steps_rx
}

/// A PNG of the leased device's display (devices with the `video` capability).
#[utoipa::path(get, path = "/api/v1/leases/{id}/screenshot", security(("bearer" = [])), params(("id" = u64, Path, description = "lease id")),
    responses((status = 200, description = "the picture", body = Vec<u8>, content_type = "image/png"), (status = 401, body = ApiError), (status = 403, body = ApiError),
        (status = 404, body = ApiError), (status = 409, description = "the lease is waiting for a device", body = ApiError),
        (status = 410, description = "the lease has ended", body = ApiError),
        (status = 502, description = "the agent could not do it (no video, device off)", body = ApiError),
        (status = 307, description = "this controller follows: do it at the Location, the leading controller"), (status = 503, description = "the device's agent is not connected", body = ApiError),
        (status = 504, description = "the agent did not answer in time", body = ApiError)))]
pub async fn get_screenshot(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<u64>,
    uri: Uri,
) -> ApiResult<axum::response::Response> {
    caller.require(&PEOPLE)?;
    if let Some(redirect) = to_leader(&state, &caller, id, &uri).await? {
        return Ok(redirect);
    }
    let bytes = get_screenshot_bytes(&state, &caller, id, SCREENSHOT_WAIT).await?;
    Ok((
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "image/png")],
        bytes,
    )
        .into_response())
}

/// The PNG of the lease's display, checked (signature, size) before it is passed on.
pub(crate) async fn get_screenshot_bytes(
    state: &AppState,
    caller: &Caller,
    id: u64,
    bound: Duration,
) -> ApiResult<Vec<u8>> {
    use base64::Engine as _;
    let result = on_device(state, caller, id, SessionAction::Screenshot, bound).await?;
    let SessionResult::Screenshot { png } = result else {
        return Err(unexpected(id, &result));
    };
    base64::engine::general_purpose::STANDARD
        .decode(png.as_bytes())
        .ok()
        .filter(|b| b.len() <= proto::session::MAX_SCREENSHOT && b.starts_with(PNG_SIGNATURE))
        .ok_or_else(|| {
            ApiFailure::new(
                StatusCode::BAD_GATEWAY,
                format!(
                    "lease {id}: the agent's screenshot is not a PNG of at most {} bytes",
                    proto::session::MAX_SCREENSHOT
                ),
            )
        })
}

/// The first bytes of every PNG file.
pub const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
