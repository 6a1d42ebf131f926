//! WebSocket routes of a person's lease: the device's console and TCP to the DUT, carried as
//! streams on the agent's link ([`crate::streams`]).
//!
//! ```text
//!  GET /api/v1/leases/{id}/console[?write=true]   GET /api/v1/leases/{id}/tcp/{port}
//!    check (dispatcher: holder or admin, held) ──> open-stream ──> agent answers ──> 101
//!    client binary messages <──> stream bytes (empty message: end of stream that way)
//!    close frame with the reason when the stream ends (lease ended, DUT closed, ...)
//! ```
//!
//! Invariants:
//! - Nothing is opened and no byte flows before the dispatcher says the caller may use the
//!   lease ([`crate::policy::may_use_lease`]); others get 403, an ended lease 410, before the
//!   upgrade. An agent's refusal is 502 with its reason, also before the upgrade.
//! - A stream is opened only on a link this controller holds. When another controller of the
//!   database holds the agent's link, a caller who may use the lease is answered 307 to the
//!   same path at that controller's advertised address (`serve --advertise`; 503 when it
//!   advertises none), which checks everything again: the redirect reveals only where an
//!   agent the caller may already use is linked.
//! - A console viewer types only with `write=true`; without it, its input is dropped here
//!   (and the agent drops it too).
//! - The client is read only while the stream has credit toward the agent, and the agent
//!   gets credit only as bytes are written to the client: a client that stops reading
//!   stops its stream's agent side, never the link, the job logs or another stream.
//! - The session of the caller's token bounds the stream: revoking the token closes it.

use crate::api::{ApiFailure, ApiResult, PEOPLE, ask, viewer};
use crate::auth::Caller;
use crate::dispatcher::{Command, LinkAt};
use crate::streams::{OpenError, Opening};
use crate::{AppState, now};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Path, Query, State};
use axum::http::header::LOCATION;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use proto::PersonLeaseId;
use proto::api::ApiError;
use proto::stream::{ConsoleInput, StreamTarget};
use serde::Deserialize;
use std::time::Duration;

/// How long the agent may take to open a stream.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest message a stream client may send.
pub const MAX_CLIENT_MESSAGE: usize = 1 << 20;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ConsoleQuery {
    /// Type on the console too (default false: read only).
    write: Option<bool>,
}

/// The device's console as a WebSocket: its history (what the console kept, up to 1 MiB),
/// then live output, as binary messages; with `write=true`, binary messages typed on it.
#[utoipa::path(get, path = "/api/v1/leases/{id}/console", security(("bearer" = [])), params(("id" = u64, Path, description = "lease id"), ConsoleQuery),
    responses((status = 101, description = "WebSocket of the console"), (status = 401, body = ApiError), (status = 403, body = ApiError),
        (status = 404, body = ApiError), (status = 409, description = "the lease still waits", body = ApiError), (status = 410, description = "the lease has ended", body = ApiError),
        (status = 307, description = "another controller holds the link of the device's agent: open the stream at the Location"),
        (status = 502, description = "the agent refused the stream", body = ApiError), (status = 503, description = "the device's agent is not connected", body = ApiError)))]
pub async fn console(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<u64>,
    Query(query): Query<ConsoleQuery>,
    uri: Uri,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    let input = if query.write.unwrap_or(false) {
        ConsoleInput::Write
    } else {
        ConsoleInput::ReadOnly
    };
    open(
        state,
        caller,
        PersonLeaseId(id),
        StreamTarget::Console { input },
        &uri,
        ws,
    )
    .await
}

/// A TCP connection to a port of the DUT, as a WebSocket of binary messages (an empty one:
/// end of stream in that direction). The agent connects only to the DUT's own address.
#[utoipa::path(get, path = "/api/v1/leases/{id}/tcp/{port}", security(("bearer" = [])), params(("id" = u64, Path, description = "lease id"), ("port" = u16, Path, description = "TCP port of the DUT")),
    responses((status = 101, description = "WebSocket of the connection"), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError),
        (status = 404, body = ApiError), (status = 409, description = "the lease still waits", body = ApiError), (status = 410, description = "the lease has ended", body = ApiError),
        (status = 307, description = "another controller holds the link of the device's agent: open the stream at the Location"),
        (status = 502, description = "the agent refused the stream (nothing at that port, a port the DUT's network does not reach)", body = ApiError),
        (status = 503, description = "the device's agent is not connected", body = ApiError)))]
pub async fn tcp(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path((id, port)): Path<(u64, u32)>,
    uri: Uri,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    let port = u16::try_from(port).ok().filter(|p| *p > 0).ok_or_else(|| {
        ApiFailure::new(
            StatusCode::BAD_REQUEST,
            format!("port: {port} is not a TCP port (1 to 65535)"),
        )
    })?;
    open(
        state,
        caller,
        PersonLeaseId(id),
        StreamTarget::Tcp { port },
        &uri,
        ws,
    )
    .await
}

/// Closes the stream on both sides when the route or its socket task lets go of it.
struct Bound {
    state: AppState,
    opening: Option<Opening>,
    reason: String,
}

impl Drop for Bound {
    fn drop(&mut self) {
        if let Some(o) = &self.opening {
            self.state.streams.close(o.conn, o.stream, &self.reason);
        }
    }
}

async fn open(
    state: AppState,
    caller: Caller,
    lease: PersonLeaseId,
    target: StreamTarget,
    uri: &Uri,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    caller.require(&PEOPLE)?;
    let v = viewer(&state, &caller);
    let route = ask(&state, |reply| Command::StreamRoute {
        lease,
        viewer: v,
        reply,
    })
    .await??;
    let conn = match route.link {
        LinkAt::Here(conn) => conn,
        LinkAt::Elsewhere { agent } => {
            let url = holder_url(&state, &agent, lease).await?;
            let location = format!(
                "{url}{}",
                uri.path_and_query().map_or(uri.path(), |p| p.as_str())
            );
            tracing::info!(
                "lease {lease}: {} sent to {url} for the {target}: that controller holds the link of agent {agent}",
                caller.user
            );
            return Ok((StatusCode::TEMPORARY_REDIRECT, [(LOCATION, location)]).into_response());
        }
    };
    let opening = state
        .streams
        .open(conn, lease, (route.grant, route.epoch), target)
        .map_err(|e| match e {
            OpenError::NoLink | OpenError::Busy => ApiFailure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("lease {lease}: {e}"),
            ),
        })?;
    let mut bound = Bound {
        state: state.clone(),
        opening: Some(opening),
        reason: "the client went away before the stream started".into(),
    };
    let answer = match bound.opening.as_mut() {
        Some(o) => tokio::time::timeout(OPEN_TIMEOUT, o.opened()).await,
        None => Ok(Err("no stream".into())),
    };
    match answer {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => {
            return Err(ApiFailure::new(
                StatusCode::BAD_GATEWAY,
                format!("lease {lease}: the agent did not open the {target}: {reason}"),
            ));
        }
        Err(_) => {
            bound.reason = "the agent did not answer in time".into();
            return Err(ApiFailure::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "lease {lease}: the agent did not answer within {OPEN_TIMEOUT:?} to open the {target}"
                ),
            ));
        }
    }
    let typing = match target {
        StreamTarget::Console {
            input: ConsoleInput::ReadOnly,
        } => Typing::Dropped,
        _ => Typing::Forwarded,
    };
    tracing::info!("lease {lease}: {} opened the {target}", caller.user);
    let ws = ws
        .read_buffer_size(crate::link::WS_BUFFER)
        .write_buffer_size(crate::link::WS_BUFFER)
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE);
    Ok(ws.on_upgrade(move |socket| async move {
        let session = state.sessions.open(&caller.token_id);
        let reason = relay(socket, &mut bound, typing, session.ender()).await;
        tracing::info!(
            "lease {lease}: {target} of {} closed: {reason}",
            caller.user
        );
        bound.reason = reason;
        drop(bound);
        drop(session);
    }))
}

/// The advertised address of the controller holding `agent`'s link: the follower whose
/// claim is live, else the leader.
async fn holder_url(state: &AppState, agent: &str, lease: PersonLeaseId) -> ApiResult<String> {
    let unavailable = |reason: String| {
        ApiFailure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("lease {lease}: {reason}"),
        )
    };
    let store_failed = |e: crate::store::StoreError| unavailable(e.to_string());
    match state
        .store
        .link_holder(agent, now().0)
        .await
        .map_err(store_failed)?
    {
        Some((_, Some(url))) => Ok(url),
        Some((controller, None)) => Err(unavailable(format!(
            "the link of agent {agent} is held by controller {controller}, which advertises no \
             address to send you to (start it with `dutlab serve --advertise URL`)"
        ))),
        None => state
            .store
            .leader_url()
            .await
            .map_err(store_failed)?
            .ok_or_else(|| {
                unavailable(format!(
                    "the link of agent {agent} is held by the leading controller, which \
                     advertises no address to send you to (start it with `dutlab serve \
                     --advertise URL`)"
                ))
            }),
    }
}

/// Whether the client's messages reach the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Typing {
    Forwarded,
    Dropped,
}

/// Moves bytes between the client and the stream until one side ends; answers why.
async fn relay(
    socket: WebSocket,
    bound: &mut Bound,
    typing: Typing,
    mut ender: crate::sessions::Ender,
) -> String {
    let Some(opening) = bound.opening.as_mut() else {
        return "no stream".into();
    };
    let (mut sink, mut client) = socket.split();
    let tx = &opening.tx;
    let rx = &mut opening.rx;
    let down = async {
        let reason = loop {
            tokio::select! {
                got = rx.recv() => match got {
                    Ok(Some(bytes)) => {
                        if sink.send(Message::Binary(bytes.into())).await.is_err() {
                            return "the client went away".to_owned();
                        }
                    }
                    // End of stream from the device: tell the client, wait for the close.
                    Ok(None) => {
                        if sink.send(Message::Binary(Vec::new().into())).await.is_err() {
                            return "the client went away".to_owned();
                        }
                    }
                    Err(e) => break e.to_string(),
                },
                reason = ender.ended() => break reason,
            }
        };
        send_close(&mut sink, &reason).await;
        reason
    };
    let up = async {
        loop {
            match client.next().await {
                Some(Ok(Message::Binary(bytes))) => {
                    if typing == Typing::Dropped {
                        continue;
                    }
                    let sent = if bytes.is_empty() {
                        tx.finish().await
                    } else {
                        tx.send(&bytes).await
                    };
                    if let Err(e) = sent {
                        // The stream closed: `down` tells the client why.
                        std::future::pending::<()>().await;
                        return e.to_string();
                    }
                }
                Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    return "the client closed the stream".to_owned();
                }
            }
        }
    };
    tokio::select! {
        reason = down => reason,
        reason = up => reason,
    }
}

async fn send_close(sink: &mut futures_util::stream::SplitSink<WebSocket, Message>, reason: &str) {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let frame = CloseFrame {
        code: close_code::NORMAL,
        reason: reason[..cut].to_owned().into(),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        sink.send(Message::Close(Some(frame))),
    )
    .await;
}
