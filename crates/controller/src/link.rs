//! The controller's end of the agent link (`GET /api/v1/agent/link`, agent tokens only).
//!
//! Invariants:
//! - The first message must be `Hello` within [`HELLO_TIMEOUT`]; the dispatcher answers
//!   `Welcome` (or `Refused`, then the socket closes).
//! - Log frames are stored here, without a round trip through the dispatcher, but only for
//!   live leases with the current epoch; each stored batch is acknowledged with `LogAcked`
//!   once an `fsync` covers it (the log store syncs in batches; the ack names the last
//!   durable record). A failed write or sync closes the link: the agent reconnects and
//!   resends from the durable cursor.
//!   Frames and control messages of one connection are handled in the order they arrive, so
//!   a job's records are stored before its `JobFinished` reaches the dispatcher.
//! - When the socket ends, the dispatcher is told (`Gone`); a newer connection of the same
//!   agent makes that a no-op.
//! - An agent speaks only for itself: the token is bound to one agent name and a hello with
//!   another is refused; log frames (here) and job messages (in the dispatcher) are stored
//!   only when this connection holds the lease they name ([`LeaseInfo::conn`]), whatever
//!   their lease id and epoch. Refusals are logged at warn, at most one line per link per
//!   second ([`WarnLimit`]).
//! - The link ends when its session is ended (a newer link of the same agent, or its token
//!   revoked): the agent gets a close frame with the reason.

use crate::AppState;
use crate::auth::Caller;
use crate::dispatcher::{AgentHello, Command, LeaseInfo};
use crate::sessions::ConnId;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, close_code};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use proto::link::{AgentMessage, Binary, ControllerMessage, LogFrame, MAX_FRAME};
use proto::{Epoch, JobId, LeaseId, Role, Seq};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// How long an agent has to say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// WebSocket read and write buffers per connection (the 128 KiB default is zero-filled, so it
/// is resident for every connected agent; frames larger than this still work).
pub const WS_BUFFER: usize = 8 << 10;

/// Messages queued for one agent before the link counts as stuck.
const QUEUE: usize = 1024;

/// The agent link (WebSocket).
#[utoipa::path(get, path = "/api/v1/agent/link", security(("bearer" = [])),
    responses((status = 101, description = "WebSocket of the agent link"), (status = 401, body = proto::api::ApiError), (status = 403, body = proto::api::ApiError)))]
pub async fn link(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    ws: WebSocketUpgrade,
) -> Result<Response, crate::api::ApiFailure> {
    caller.require(&[Role::Agent])?;
    let Some(bound) = caller.agent.clone() else {
        tracing::warn!(
            "agent link refused: token {} ({}) is not bound to an agent name",
            caller.token_id,
            caller.name
        );
        return Err(crate::api::ApiFailure::new(
            axum::http::StatusCode::FORBIDDEN,
            format!(
                "token {} was made before agent tokens were bound to an agent name; create a new one with `dutlab token create --role agent --name {}` (bound to that agent name), give it to the agent and revoke this one",
                caller.token_id, caller.name
            ),
        ));
    };
    Ok(ws
        .read_buffer_size(WS_BUFFER)
        .write_buffer_size(WS_BUFFER)
        .max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .on_upgrade(move |socket| serve(socket, state, caller, bound))
        .into_response())
}

/// At most one warn line per second per link, with a count of what it stands for.
#[derive(Debug)]
pub struct WarnLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl Default for WarnLimit {
    fn default() -> WarnLimit {
        WarnLimit::new()
    }
}

impl WarnLimit {
    pub const fn new() -> WarnLimit {
        WarnLimit {
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when a line may be written now: `n` refusals were not logged since the last.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < Duration::from_secs(1) => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// " (and N more since the last line)" or nothing.
pub fn more(suppressed: u64) -> String {
    if suppressed == 0 {
        String::new()
    } else {
        format!(" (and {suppressed} more refused since the last line)")
    }
}

async fn send_close(sink: &mut futures_util::stream::SplitSink<WebSocket, Message>, reason: &str) {
    // Close reasons are limited to 123 bytes by the WebSocket protocol.
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let frame = CloseFrame {
        code: close_code::POLICY,
        reason: reason[..cut].to_owned().into(),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        sink.send(Message::Close(Some(frame))),
    )
    .await;
}

async fn refuse(sink: &mut futures_util::stream::SplitSink<WebSocket, Message>, reason: String) {
    if let Ok(text) = serde_json::to_string(&ControllerMessage::Refused {
        reason: reason.clone(),
    }) {
        let _ = sink.send(Message::Text(text.into())).await;
    }
    send_close(sink, &reason).await;
}

async fn serve(socket: WebSocket, state: AppState, caller: Caller, bound: String) {
    let session = state.sessions.open(&caller.token_id);
    let conn = session.id;
    let mut ender = session.ender();
    let (mut sink, mut stream) = socket.split();
    let first = tokio::select! {
        first = tokio::time::timeout(HELLO_TIMEOUT, stream.next()) => first,
        reason = ender.ended() => {
            send_close(&mut sink, &reason).await;
            return;
        }
    };
    let Ok(Some(Ok(Message::Text(text)))) = first else {
        tracing::debug!("agent link {conn}: no hello");
        return;
    };
    let hello = match serde_json::from_str::<AgentMessage>(text.as_str()) {
        Ok(AgentMessage::Hello {
            protocol,
            agent,
            version,
            devices,
            held,
            sessions,
        }) => (protocol, agent, version, devices, held, sessions),
        Ok(_) | Err(_) => {
            refuse(&mut sink, "the first message must be a hello".into()).await;
            return;
        }
    };
    let (protocol, agent, version, devices, held, sessions) = hello;
    // The name is checked before it is compared or logged (the dispatcher checks the rest).
    if let Err(e) = proto::names::check_name(&agent) {
        let reason = format!("agent name: {e}");
        tracing::warn!("agent link {conn} refused: {reason}");
        refuse(&mut sink, reason).await;
        return;
    }
    if agent != bound {
        let reason =
            format!("this token is bound to agent {bound:?}; it may not speak for agent {agent:?}");
        tracing::warn!(
            "agent link {conn} refused: token {} ({}) said hello as {agent:?}, but is bound to {bound:?}",
            caller.token_id,
            caller.name
        );
        refuse(&mut sink, reason).await;
        return;
    }
    let (tx, mut rx) = mpsc::channel::<ControllerMessage>(QUEUE);
    let (reply, answer) = oneshot::channel();
    let sent = state
        .dispatch
        .send(Command::Hello {
            hello: AgentHello {
                conn,
                token_id: caller.token_id.clone(),
                agent: agent.clone(),
                version,
                protocol,
                devices,
                held,
                sessions,
                tx: tx.clone(),
            },
            reply,
        })
        .await;
    let accepted = match (sent, answer.await) {
        (Ok(()), Ok(Ok(()))) => true,
        (_, Ok(Err(reason))) => {
            tracing::warn!("agent {agent} (link {conn}) refused: {reason}");
            refuse(&mut sink, reason).await;
            false
        }
        _ => false,
    };
    if !accepted {
        return;
    }
    // Streams of people's leases ride on this link from now on.
    let (out, mut stream_out) = mpsc::channel::<mux::Outgoing>(crate::streams::OUT_QUEUE);
    state.streams.attach(conn, tx.clone(), out);
    // And frames of MultiNode group networks (dropped when this queue is full).
    let (net_tx, mut net_out) = mpsc::channel::<Vec<u8>>(crate::group_net::FRAME_QUEUE);
    state.group_net.attach(conn, net_tx);
    // Writer: control messages for this agent go through one queue, in order, ahead of
    // stream traffic (bounded by the streams' windows).
    let mut writer_ender = ender.clone();
    let mut writer = tokio::spawn(async move {
        loop {
            tokio::select! {
                // An ended session wins over the closed queue: the reader drops the queue
                // right after it sees the end, and the agent must still get the reason.
                biased;
                reason = writer_ender.ended() => {
                    send_close(&mut sink, &reason).await;
                    return;
                }
                message = rx.recv() => {
                    let Some(message) = message else { break };
                    let Ok(text) = serde_json::to_string(&message) else {
                        continue;
                    };
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                Some(outgoing) = stream_out.recv() => {
                    if sink.send(stream_message(outgoing)).await.is_err() {
                        return;
                    }
                }
                Some(frame) = net_out.recv() => {
                    if sink.send(Message::Binary(frame.into())).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sink.close().await;
    });
    let mut refusals = WarnLimit::new();
    let mut synced = state.logs.synced();
    let mut pending: HashMap<LeaseId, PendingAck> = HashMap::new();
    let ended = loop {
        let incoming = tokio::select! {
            incoming = stream.next() => incoming,
            reason = ender.ended() => break Some(reason),
            changed = synced.changed(), if !pending.is_empty() => {
                if changed.is_err() {
                    break None;
                }
                if let Err(e) = send_durable_acks(&state, &tx, &mut pending).await {
                    tracing::error!("agent {agent}: {e}; closing the link so the agent resends");
                    break None;
                }
                continue;
            }
        };
        let Some(Ok(message)) = incoming else {
            break None;
        };
        match message {
            Message::Text(text) => match serde_json::from_str::<AgentMessage>(text.as_str()) {
                Ok(message) if let Some(routed) = state.streams.message(conn, &message) => {
                    if let Err(why) = routed
                        && let Some(suppressed) = refusals.allow(Instant::now())
                    {
                        tracing::warn!("agent {agent} (link {conn}): {why}{}", more(suppressed));
                    }
                }
                Ok(message) => {
                    let command = Command::FromAgent {
                        conn,
                        agent: agent.clone(),
                        message,
                    };
                    if state.dispatch.send(command).await.is_err() {
                        break None;
                    }
                }
                Err(e) => tracing::warn!("agent {agent}: unreadable message ignored: {e}"),
            },
            Message::Binary(bytes) => match Binary::decode(&bytes) {
                Ok(Binary::Stream(stream, data)) => {
                    if let Err(why) = state.streams.frame(conn, stream, data)
                        && let Some(suppressed) = refusals.allow(Instant::now())
                    {
                        tracing::warn!("agent {agent} (link {conn}): {why}{}", more(suppressed));
                    }
                }
                Ok(Binary::Log(frame)) => {
                    let from = Origin {
                        agent: &agent,
                        conn,
                    };
                    if let Err(e) =
                        store_frame(&state, from, frame, &mut refusals, &mut pending).await
                    {
                        // The records stay in the agent's spool; closing the link makes it
                        // reconnect and resend them from the durable cursor.
                        tracing::error!(
                            "agent {agent}: {e}; closing the link so the agent resends"
                        );
                        break None;
                    }
                    if let Err(e) = send_durable_acks(&state, &tx, &mut pending).await {
                        tracing::error!(
                            "agent {agent}: {e}; closing the link so the agent resends"
                        );
                        break None;
                    }
                }
                Ok(Binary::Group(frame)) => {
                    let relayed = state.group_net.relay(
                        &state.leases,
                        conn,
                        frame.lease,
                        frame.epoch,
                        frame.frame,
                    );
                    if let Err(why) = relayed
                        && let Some(suppressed) = refusals.allow(Instant::now())
                    {
                        tracing::warn!("agent {agent} (link {conn}): {why}{}", more(suppressed));
                    }
                }
                Err(e) => tracing::warn!("agent {agent}: binary message refused: {e}"),
            },
            Message::Close(_) => break None,
            Message::Ping(_) | Message::Pong(_) => {}
        }
    };
    drop(tx);
    state.streams.detach(conn, "the agent's link ended");
    state.group_net.detach(conn);
    let _ = state
        .dispatch
        .send(Command::Gone {
            conn,
            agent: agent.clone(),
        })
        .await;
    if let Some(reason) = ended {
        tracing::info!("agent {agent} (link {conn}) closed: {reason}");
        // The writer sends the close frame with the reason, then ends.
        if tokio::time::timeout(Duration::from_secs(2), &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
    } else {
        writer.abort();
    }
    drop(session);
}

/// The link message for a stream's outgoing traffic.
fn stream_message(outgoing: mux::Outgoing) -> Message {
    let control = match outgoing {
        mux::Outgoing::Data { stream, data } => {
            return Message::Binary(proto::stream::encode(stream, &data).into());
        }
        mux::Outgoing::Credit { stream, bytes } => {
            ControllerMessage::StreamCredit { stream, bytes }
        }
        mux::Outgoing::Close { stream, reason } => {
            ControllerMessage::CloseStream { stream, reason }
        }
    };
    // These messages always serialise (plain fields).
    Message::Text(serde_json::to_string(&control).unwrap_or_default().into())
}

/// Which link a frame came on.
#[derive(Clone, Copy)]
struct Origin<'a> {
    agent: &'a str,
    conn: ConnId,
}

/// A lease's acknowledgement waiting for the `fsync` that covers its records.
#[derive(Debug, Clone, Copy)]
struct PendingAck {
    epoch: Epoch,
    job: JobId,
    /// Last record stored for the lease so far (what the ack must cover).
    want: Seq,
}

/// Why a link must close for its agent to resend.
#[derive(Debug, thiserror::Error)]
enum AckError {
    #[error("log of job {job}: records up to {want} were written but their sync failed")]
    Lost { job: JobId, want: Seq },
    #[error("{0}")]
    Log(#[from] crate::logs::LogError),
}

/// Stores a frame's records; its acknowledgement waits in `pending` until it is durable.
async fn store_frame(
    state: &AppState,
    from: Origin<'_>,
    frame: LogFrame,
    refusals: &mut WarnLimit,
    pending: &mut HashMap<LeaseId, PendingAck>,
) -> Result<(), crate::logs::LogError> {
    let Origin { agent, conn } = from;
    let Some(info) = state.leases.get(frame.lease) else {
        tracing::debug!(
            "agent {agent}: log frame for lease {} that is not live",
            frame.lease
        );
        return Ok(());
    };
    let LeaseInfo {
        job,
        epoch,
        conn: holder,
        ..
    } = info;
    if holder != Some(conn) {
        if let Some(suppressed) = refusals.allow(Instant::now()) {
            tracing::warn!(
                "agent {agent} (link {conn}): log frame refused: lease {} of job {job} is not held by this link{}",
                frame.lease,
                more(suppressed)
            );
        }
        return Ok(());
    }
    if epoch != frame.epoch {
        tracing::debug!("agent {agent}: log frame with stale epoch {}", frame.epoch);
        return Ok(());
    }
    let stored = state.logs.append(job, &frame.records).await?;
    pending.insert(
        frame.lease,
        PendingAck {
            epoch: frame.epoch,
            job,
            want: stored,
        },
    );
    Ok(())
}

/// Sends `LogAcked` for every pending lease whose records are durable now.
async fn send_durable_acks(
    state: &AppState,
    tx: &mpsc::Sender<ControllerMessage>,
    pending: &mut HashMap<LeaseId, PendingAck>,
) -> Result<(), AckError> {
    let mut ready = Vec::new();
    for (lease, ack) in pending.iter() {
        let durable = match state.logs.progress(ack.job) {
            Some((last, _)) if last < ack.want => {
                return Err(AckError::Lost {
                    job: ack.job,
                    want: ack.want,
                });
            }
            Some((_, durable)) => durable,
            // Closed (the job finished): closing synced the file.
            None => state.logs.durable(ack.job).await?,
        };
        if durable >= ack.want {
            ready.push((*lease, ack.epoch, durable));
        }
    }
    for (lease, epoch, stored) in ready {
        pending.remove(&lease);
        let ack = ControllerMessage::LogAcked {
            lease,
            epoch,
            stored,
        };
        if tx.send(ack).await.is_err() {
            tracing::debug!("link closed before a log ack");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warn_limit_lets_one_line_a_second_through_and_counts_the_rest() {
        let mut limit = WarnLimit::new();
        let t0 = Instant::now();
        assert_eq!(limit.allow(t0), Some(0));
        assert_eq!(limit.allow(t0 + Duration::from_millis(10)), None);
        assert_eq!(limit.allow(t0 + Duration::from_millis(500)), None);
        assert_eq!(limit.allow(t0 + Duration::from_millis(1001)), Some(2));
        assert_eq!(more(2), " (and 2 more refused since the last line)");
        assert_eq!(more(0), "");
    }
}
