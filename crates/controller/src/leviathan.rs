//! Leviathan-compatible worker routes (`/dut/...`): balena's Leviathan drives a testbot
//! worker over these paths; here they drive the device of a person's lease, with the same
//! machinery and rules as `/api/v1/leases/{id}/...` (docs/leviathan.md).
//!
//! ```text
//!  POST /dut/on | /dut/off        power on / off                      -> "OK"
//!  POST /dut/flash                body: image (gzip or raw) -> artifact -> session flash,
//!                                 answer streamed: `progress: {...}` lines, `status: done`
//!                                 or `error: REASON` last
//!  POST /dut/network              501: dutlab sets up no network for the DUT (the reason)
//!  GET  /dut/serial               the session's console log (its last 512 KiB), text
//!  GET  /dut/ip                   the DUT's own address on its network, text
//!  GET  /dut/capture              one PNG of the display (devices with `video`)
//! ```
//!
//! Invariants:
//! - Behind [`crate::api::authenticate`] like every route (401 without a valid bearer
//!   token); users and admins only (403 for agent tokens).
//! - The lease is named by `?lease=ID` or the `X-Dutlab-Lease: ID` header (both given must
//!   agree, 400 otherwise); with neither, the caller's only held lease (404 when they hold
//!   none, 400 naming the ids when they hold several). Naming a lease grants nothing:
//!   every route then goes through [`crate::lease_api::on_device`], so who may act is
//!   [`crate::policy::may_use_lease`] (holder or admin, else 403), an ended lease is 410, a
//!   waiting one 409, an absent agent 503, a failed action 502, a silent agent 504.
//! - On a follower, a caller who may use the lease is sent to the leader with 307 (same
//!   path and query; [`crate::lease_api::to_leader`]) before anything is done or read.
//! - A flash is authorised (power status through the same check) before a byte of its body
//!   is read; its body is stored as the caller's artifact under the artifact size cap and
//!   quota, decompressed when it is gzip (bounded by the same cap, so no bomb).
//! - These routes are Leviathan's contract, not dutlab's: they stay out of `openapi.json`.

use crate::AppState;
use crate::api::{ApiFailure, ApiResult, PEOPLE, ask, viewer};
use crate::artifacts::{Encoding, receive};
use crate::auth::Caller;
use crate::dispatcher::Command;
use crate::lease_api::{
    FlashStep, POWER_WAIT, SCREENSHOT_WAIT, flash_steps, get_screenshot_bytes, on_device,
    to_leader, unexpected,
};
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures_util::StreamExt;
use proto::PersonLeaseState;
use proto::session::{PowerAction, SessionAction, SessionResult};
use serde::Deserialize;
use std::time::Duration;

/// The header naming the lease.
pub const LEASE_HEADER: &str = "x-dutlab-lease";

/// How long an address or serial request waits for the agent.
const QUERY_WAIT: Duration = Duration::from_secs(30);

/// Why `POST /dut/network` is refused.
pub const NO_NETWORK: &str = "dutlab does not set up networks for a DUT: a QEMU DUT has one \
user-mode NIC (restricted: it reaches nothing outside) and its ports are reached through the \
controller (GET /api/v1/leases/{id}/tcp/{port}, `dutlab forward`, `dutlab ssh`); there is no \
wired or wireless access point to configure";

#[derive(Debug, Deserialize)]
pub struct LeaseQuery {
    lease: Option<String>,
}

fn bad(message: String) -> ApiFailure {
    ApiFailure::new(StatusCode::BAD_REQUEST, message)
}

fn parse_id(text: &str, source: &str) -> ApiResult<u64> {
    text.trim()
        .parse()
        .map_err(|_| bad(format!("{source}: {text:?} is not a lease id")))
}

/// The lease a request names, or the caller's only held lease.
async fn lease_of(
    state: &AppState,
    caller: &Caller,
    query: &LeaseQuery,
    headers: &HeaderMap,
) -> ApiResult<u64> {
    caller.require(&PEOPLE)?;
    let from_query = match &query.lease {
        Some(text) => Some(parse_id(text, "lease")?),
        None => None,
    };
    let from_header = match headers.get(LEASE_HEADER) {
        Some(value) => {
            let text = value
                .to_str()
                .map_err(|_| bad(format!("{LEASE_HEADER}: not text")))?;
            Some(parse_id(text, LEASE_HEADER)?)
        }
        None => None,
    };
    match (from_query, from_header) {
        (Some(a), Some(b)) if a != b => Err(bad(format!(
            "lease: ?lease={a} and {LEASE_HEADER}: {b} name different leases"
        ))),
        (Some(id), _) | (None, Some(id)) => Ok(id),
        (None, None) => {
            let viewer = viewer(state, caller);
            let leases = ask(state, |reply| Command::PersonLeases {
                viewer,
                all: false,
                reply,
            })
            .await?;
            // Admins see everyone's leases; only the caller's own count here.
            let held: Vec<u64> = leases
                .iter()
                .filter(|l| l.state == PersonLeaseState::Held && l.holder_id == caller.principal)
                .map(|l| l.id.0)
                .collect();
            match held.as_slice() {
                [id] => Ok(*id),
                [] => Err(ApiFailure::new(
                    StatusCode::NOT_FOUND,
                    format!(
                        "{} holds no lease: acquire one (dutlab lease acquire), or name one with \
                         ?lease=ID or {LEASE_HEADER}: ID",
                        caller.user
                    ),
                )),
                many => Err(bad(format!(
                    "{} holds leases {}: name one with ?lease=ID or {LEASE_HEADER}: ID",
                    caller.user,
                    many.iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))),
            }
        }
    }
}

/// The lease a request names ([`lease_of`]) when this controller answers it, or the 307
/// that sends the request to the leader (this controller follows; the caller may use the
/// lease).
async fn lease_here(
    state: &AppState,
    caller: &Caller,
    query: &LeaseQuery,
    uri: &Uri,
    headers: &HeaderMap,
) -> ApiResult<Result<u64, Response>> {
    let id = lease_of(state, caller, query, headers).await?;
    Ok(match to_leader(state, caller, id, uri).await? {
        Some(redirect) => Err(redirect),
        None => Ok(id),
    })
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn power(
    state: &AppState,
    caller: &Caller,
    query: &LeaseQuery,
    (uri, headers): (&Uri, &HeaderMap),
    action: PowerAction,
) -> ApiResult<Response> {
    let id = match lease_here(state, caller, query, uri, headers).await? {
        Ok(id) => id,
        Err(redirect) => return Ok(redirect),
    };
    let result = on_device(
        state,
        caller,
        id,
        SessionAction::Power { power: action },
        POWER_WAIT,
    )
    .await?;
    match result {
        SessionResult::Power { .. } => Ok(text(StatusCode::OK, "OK".into())),
        other => Err(unexpected(id, &other)),
    }
}

/// `POST /dut/on`: power the lease's device on (a running one stays on).
pub async fn on(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(query): Query<LeaseQuery>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    power(&state, &caller, &query, (&uri, &headers), PowerAction::On).await
}

/// `POST /dut/off`: power the lease's device off.
pub async fn off(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(query): Query<LeaseQuery>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    power(&state, &caller, &query, (&uri, &headers), PowerAction::Off).await
}

/// `POST /dut/network`: refused with the reason (see [`NO_NETWORK`]), after the same checks
/// as the other routes, so a caller learns about its lease first.
pub async fn network(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(query): Query<LeaseQuery>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = match lease_here(&state, &caller, &query, &uri, &headers).await? {
        Ok(id) => id,
        Err(redirect) => return Ok(redirect),
    };
    on_device(
        &state,
        &caller,
        id,
        SessionAction::Power {
            power: PowerAction::Status,
        },
        POWER_WAIT,
    )
    .await?;
    Err(ApiFailure::new(StatusCode::NOT_IMPLEMENTED, NO_NETWORK))
}

/// `GET /dut/ip`: the DUT's own address on its network, as text.
pub async fn ip(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(query): Query<LeaseQuery>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = match lease_here(&state, &caller, &query, &uri, &headers).await? {
        Ok(id) => id,
        Err(redirect) => return Ok(redirect),
    };
    match on_device(&state, &caller, id, SessionAction::Address, QUERY_WAIT).await? {
        SessionResult::Address { address } => {
            let address = address
                .parse::<std::net::IpAddr>()
                .map_err(|_| {
                    ApiFailure::new(
                        StatusCode::BAD_GATEWAY,
                        format!("lease {id}: the agent's address {address:?} is not one"),
                    )
                })?
                .to_string();
            Ok(text(StatusCode::OK, address))
        }
        other => Err(unexpected(id, &other)),
    }
}

/// `GET /dut/serial`: the console output recorded in the lease's session (its last 512 KiB;
/// a note first says how much came before), as text with invalid UTF-8 replaced.
pub async fn serial(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(query): Query<LeaseQuery>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = match lease_here(&state, &caller, &query, &uri, &headers).await? {
        Ok(id) => id,
        Err(redirect) => return Ok(redirect),
    };
    match on_device(&state, &caller, id, SessionAction::Serial, QUERY_WAIT).await? {
        SessionResult::Serial { log, skipped } => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(log.as_bytes())
                .ok()
                .filter(|b| b.len() <= proto::session::MAX_SERIAL)
                .ok_or_else(|| {
                    ApiFailure::new(
                        StatusCode::BAD_GATEWAY,
                        format!(
                            "lease {id}: the agent's serial log is not base64 of at most {} bytes",
                            proto::session::MAX_SERIAL
                        ),
                    )
                })?;
            let mut body = String::new();
            if skipped > 0 {
                body.push_str(&format!(
                    "[dutlab: {skipped} earlier console bytes are not shown]\n"
                ));
            }
            body.push_str(&String::from_utf8_lossy(&bytes));
            Ok(text(StatusCode::OK, body))
        }
        other => Err(unexpected(id, &other)),
    }
}

/// `GET /dut/capture`: one PNG of the display (Leviathan answers a video capture here).
pub async fn capture(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(query): Query<LeaseQuery>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = match lease_here(&state, &caller, &query, &uri, &headers).await? {
        Ok(id) => id,
        Err(redirect) => return Ok(redirect),
    };
    let png = get_screenshot_bytes(&state, &caller, id, SCREENSHOT_WAIT).await?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "image/png")], png).into_response())
}

/// `POST /dut/flash`: the body (the image, gzip or raw) becomes the caller's artifact and
/// the device's storage. The answer streams `progress: {"percentage": P, "done": D,
/// "total": T}` lines while the agent fetches and writes it, then `status: done` (or
/// `error: REASON` as the last line when the flash fails after the answer began).
pub async fn flash(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(query): Query<LeaseQuery>,
    request: Request,
) -> ApiResult<Response> {
    let uri = request.uri().clone();
    let id = match lease_here(&state, &caller, &query, &uri, request.headers()).await? {
        Ok(id) => id,
        Err(redirect) => return Ok(redirect),
    };
    // Who may flash, and whether the lease is live, is decided before the body is read.
    on_device(
        &state,
        &caller,
        id,
        SessionAction::Power {
            power: PowerAction::Status,
        },
        POWER_WAIT,
    )
    .await?;
    let encoding = match request.headers().get(header::CONTENT_ENCODING) {
        Some(v) if v.as_bytes().eq_ignore_ascii_case(b"gzip") => Encoding::Gzip,
        _ => Encoding::Identity,
    };
    let (encoding, request) = sniff_gzip(request, encoding).await?;
    let (_, artifact) = receive(&state, &caller, None, encoding, request).await?;
    tracing::info!(
        "lease {id}: {} flashes sha256:{} ({} bytes) through /dut/flash",
        caller.user,
        artifact.sha256,
        artifact.size
    );
    let size = artifact.size;
    let mut steps = flash_steps(state, caller, id, artifact.sha256, size);
    let stream = futures_util::stream::poll_fn(move |cx| steps.poll_recv(cx)).map(move |step| {
        Ok::<_, std::io::Error>(match step {
            FlashStep::Progress { done, total } => progress_line(done, total),
            FlashStep::End(Ok(SessionResult::Flashed { .. })) => {
                format!("{}status: done\n", progress_line(size, size))
            }
            FlashStep::End(Ok(other)) => format!("error: {}\n", unexpected(id, &other).message()),
            FlashStep::End(Err(failure)) => format!("error: {}\n", failure.message()),
        })
    });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response())
}

fn progress_line(done: u64, total: u64) -> String {
    let percentage = (done.min(total).saturating_mul(100))
        .checked_div(total)
        .unwrap_or(100);
    format!("progress: {{\"percentage\": {percentage}, \"done\": {done}, \"total\": {total}}}\n")
}

/// Leviathan's client gzips the image without saying so in a header: a body that starts
/// with gzip's magic bytes is taken as gzip too. Answers the encoding and the request with
/// its body intact.
async fn sniff_gzip(request: Request, declared: Encoding) -> ApiResult<(Encoding, Request)> {
    use futures_util::StreamExt;
    if declared == Encoding::Gzip {
        return Ok((declared, request));
    }
    let (parts, body) = request.into_parts();
    let mut stream = body.into_data_stream();
    let mut head = Vec::new();
    let mut first = Vec::new();
    // Enough chunks for two bytes (a chunk may be shorter).
    while head.len() < 2 {
        match stream.next().await {
            Some(Ok(chunk)) => {
                head.extend_from_slice(&chunk[..chunk.len().min(2 - head.len())]);
                first.push(Ok::<_, axum::Error>(chunk));
            }
            Some(Err(e)) => {
                return Err(bad(format!("the upload broke off: {e}")));
            }
            None => break,
        }
    }
    let encoding = if head == [0x1f, 0x8b] {
        Encoding::Gzip
    } else {
        Encoding::Identity
    };
    let body = Body::from_stream(futures_util::stream::iter(first).chain(stream));
    Ok((encoding, Request::from_parts(parts, body)))
}
