//! The agent's sessions (people's leases) against a test controller on a real WebSocket:
//! fencing by epoch. No QEMU is started (a session is kept unpowered until power-on).

mod common;

use anyhow::{Result, bail, ensure};
use common::*;
use proto::link::{AgentMessage, ControllerMessage};
use proto::session::{PowerAction, PowerState, RequestId, SessionAction, SessionResult};
use proto::stream::{ConsoleInput, StreamId, StreamTarget};
use proto::{Epoch, LeaseId};

const LEASE: LeaseId = LeaseId(21);
const EPOCH: Epoch = Epoch(2);

fn status(epoch: Epoch, request: u64) -> ControllerMessage {
    ControllerMessage::SessionRequest {
        lease: LEASE,
        epoch,
        request: RequestId(request),
        action: SessionAction::Power {
            power: PowerAction::Status,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_messages_of_another_epoch_are_ignored() -> Result<()> {
    let controller = TestController::start().await?;
    let host = Host::new()?;
    let agent = RunningAgent::start(host.default_config(&controller.url)?);
    let mut peer = controller.accept().await?;
    peer.hello().await?;
    peer.welcome(1000, Vec::new()).await?;
    peer.send(&ControllerMessage::StartSession {
        lease: LEASE,
        epoch: EPOCH,
        device: "qemu-01".into(),
        ssh_keys: Vec::new(),
    })
    .await?;
    match peer.recv_message(&mut Vec::new()).await? {
        AgentMessage::SessionStarted { lease, epoch } => {
            ensure!(lease == LEASE && epoch == EPOCH, "{lease} {epoch}");
        }
        other => bail!("expected session-started, got {other:?}"),
    }

    // An older and a newer epoch: a request, a drop and a second start are all ignored ...
    for stale in [Epoch(1), Epoch(3)] {
        peer.send(&status(stale, stale.0)).await?;
        peer.send(&ControllerMessage::DropLease {
            lease: LEASE,
            epoch: stale,
        })
        .await?;
        peer.send(&ControllerMessage::StartSession {
            lease: LEASE,
            epoch: stale,
            device: "qemu-01".into(),
            ssh_keys: Vec::new(),
        })
        .await?;
        // ... and a stream of it is refused.
        let stream = StreamId(u32::try_from(stale.0)?);
        peer.send(&ControllerMessage::OpenStream {
            stream,
            lease: LEASE,
            epoch: stale,
            target: StreamTarget::Console {
                input: ConsoleInput::Write,
            },
            window: 1 << 16,
        })
        .await?;
        match peer.recv_message(&mut Vec::new()).await? {
            AgentMessage::StreamRefused { stream: s, .. } => ensure!(s == stream),
            other => bail!("epoch {stale}: expected stream-refused, got {other:?}"),
        }
    }

    // The session is there, unchanged: the next thing the agent says is the answer to a
    // request under its own epoch (no reply to a stale request, no device-ready, no second
    // session-started came before it).
    peer.send(&status(EPOCH, 10)).await?;
    match peer.recv_message(&mut Vec::new()).await? {
        AgentMessage::SessionReply {
            lease,
            epoch,
            request,
            result,
        } => {
            ensure!(lease == LEASE && epoch == EPOCH && request == RequestId(10));
            ensure!(
                result
                    == SessionResult::Power {
                        state: PowerState::Off
                    },
                "{result:?}"
            );
        }
        other => bail!("expected the reply to request 10, got {other:?}"),
    }
    // The device is still kept for the session: a job on it is refused.
    peer.start_job(30, "qemu-01", MISSING_IMAGE_JOB).await?;
    match peer.recv_message(&mut Vec::new()).await? {
        AgentMessage::StartRefused { reason, .. } => ensure!(reason.contains("busy"), "{reason}"),
        other => bail!("expected start-refused, got {other:?}"),
    }

    // Its own epoch ends it.
    peer.send(&ControllerMessage::DropLease {
        lease: LEASE,
        epoch: EPOCH,
    })
    .await?;
    match peer.recv_message(&mut Vec::new()).await? {
        AgentMessage::DeviceReady { device } => ensure!(device == "qemu-01"),
        other => bail!("expected device-ready, got {other:?}"),
    }
    agent.shutdown().await
}
