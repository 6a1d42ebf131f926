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

use crate::AppState;
use crate::auth::Caller;
use crate::dispatcher::{AgentHello, Command};
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use proto::link::{AgentMessage, ControllerMessage, LogFrame, MAX_FRAME};
use proto::{Epoch, JobId, LeaseId, Role, Seq};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;
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
    Ok(ws
        .read_buffer_size(WS_BUFFER)
        .write_buffer_size(WS_BUFFER)
        .max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .on_upgrade(move |socket| serve(socket, state))
        .into_response())
}

async fn serve(socket: WebSocket, state: AppState) {
    let conn = state.next_conn.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut stream) = socket.split();
    let first = tokio::time::timeout(HELLO_TIMEOUT, stream.next()).await;
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
        }) => (protocol, agent, version, devices, held),
        Ok(_) | Err(_) => {
            let refusal = ControllerMessage::Refused {
                reason: "the first message must be a hello".into(),
            };
            if let Ok(text) = serde_json::to_string(&refusal) {
                let _ = sink.send(Message::Text(text.into())).await;
            }
            return;
        }
    };
    let (protocol, agent, version, devices, held) = hello;
    let (tx, mut rx) = mpsc::channel::<ControllerMessage>(QUEUE);
    let (reply, answer) = oneshot::channel();
    let sent = state
        .dispatch
        .send(Command::Hello {
            hello: AgentHello {
                conn,
                agent: agent.clone(),
                version,
                protocol,
                devices,
                held,
                tx: tx.clone(),
            },
            reply,
        })
        .await;
    let accepted = match (sent, answer.await) {
        (Ok(()), Ok(Ok(()))) => true,
        (_, Ok(Err(reason))) => {
            tracing::warn!("agent {agent:?} refused: {reason}");
            if let Ok(text) = serde_json::to_string(&ControllerMessage::Refused { reason }) {
                let _ = sink.send(Message::Text(text.into())).await;
            }
            false
        }
        _ => false,
    };
    if !accepted {
        return;
    }
    // Writer: everything for this agent goes through one queue, in order.
    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            let Ok(text) = serde_json::to_string(&message) else {
                continue;
            };
            if sink.send(Message::Text(text.into())).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let mut synced = state.logs.synced();
    let mut pending: HashMap<LeaseId, PendingAck> = HashMap::new();
    loop {
        let incoming = tokio::select! {
            incoming = stream.next() => incoming,
            changed = synced.changed(), if !pending.is_empty() => {
                if changed.is_err() {
                    break;
                }
                if let Err(e) = send_durable_acks(&state, &tx, &mut pending).await {
                    tracing::error!("agent {agent}: {e}; closing the link so the agent resends");
                    break;
                }
                continue;
            }
        };
        let Some(incoming) = incoming else { break };
        let Ok(message) = incoming else { break };
        match message {
            Message::Text(text) => match serde_json::from_str::<AgentMessage>(text.as_str()) {
                Ok(message) => {
                    let command = Command::FromAgent {
                        conn,
                        agent: agent.clone(),
                        message,
                    };
                    if state.dispatch.send(command).await.is_err() {
                        break;
                    }
                }
                Err(e) => tracing::warn!("agent {agent}: unreadable message ignored: {e}"),
            },
            Message::Binary(bytes) => match LogFrame::decode(&bytes) {
                Ok(frame) => {
                    if let Err(e) = store_frame(&state, &agent, frame, &mut pending) {
                        // The records stay in the agent's spool; closing the link makes it
                        // reconnect and resend them from the durable cursor.
                        tracing::error!(
                            "agent {agent}: {e}; closing the link so the agent resends"
                        );
                        break;
                    }
                    if let Err(e) = send_durable_acks(&state, &tx, &mut pending).await {
                        tracing::error!(
                            "agent {agent}: {e}; closing the link so the agent resends"
                        );
                        break;
                    }
                }
                Err(e) => tracing::warn!("agent {agent}: log frame refused: {e}"),
            },
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) => {}
        }
    }
    drop(tx);
    let _ = state
        .dispatch
        .send(Command::Gone {
            conn,
            agent: agent.clone(),
        })
        .await;
    writer.abort();
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
fn store_frame(
    state: &AppState,
    agent: &str,
    frame: LogFrame,
    pending: &mut HashMap<LeaseId, PendingAck>,
) -> Result<(), crate::logs::LogError> {
    let Some(info) = state.leases.get(frame.lease) else {
        tracing::debug!(
            "agent {agent}: log frame for lease {} that is not live",
            frame.lease
        );
        return Ok(());
    };
    if info.epoch != frame.epoch {
        tracing::debug!("agent {agent}: log frame with stale epoch {}", frame.epoch);
        return Ok(());
    }
    let stored = state.logs.append(info.job, &frame.records)?;
    pending.insert(
        frame.lease,
        PendingAck {
            epoch: frame.epoch,
            job: info.job,
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
            None => state.logs.durable(ack.job)?,
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
