//! Streams on agent links, the controller's registry: which stream ids are open on which
//! link, for which person's lease, and where their frames go.
//!
//! ```text
//!  client WS ──route (stream_api)──> Streams::open(conn, lease, target) ──open-stream──> agent
//!  link reader ──'S' frames, stream-* messages──> Streams::{frame, message} ──> the route's halves
//!  route halves ──Outgoing──> the link's writer (bounded queue, after control messages)
//! ```
//!
//! Invariants:
//! - A stream belongs to one link (the one that held the lease's device when it opened) and
//!   one person's lease. Frames and stream messages are looked up by (link, stream id) only:
//!   an agent can reach no stream of another link, and an id that is not open on its link
//!   is dropped (late frames of a closed stream are normal).
//! - Ids are chosen here, per link, counting up, never reused on a link.
//! - Closing the lease ([`Streams::close_lease`]) or losing the link ([`Streams::detach`])
//!   closes every stream bound to it, on both sides.
//! - An agent that breaks a stream's window has that stream closed (and logged); other
//!   streams and the job logs of the link go on.

use crate::sessions::ConnId;
use mux::{Handle, Outgoing, StreamRx, StreamTx};
use proto::link::{AgentMessage, ControllerMessage};
use proto::stream::{STREAM_WINDOW, StreamId, StreamTarget};
use proto::{Epoch, LeaseId, PersonLeaseId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, oneshot};

/// Stream messages queued per link before stream tasks wait (data is bounded by windows).
pub const OUT_QUEUE: usize = 256;

struct Entry {
    handle: Handle,
    lease: PersonLeaseId,
    /// Answered by the agent's `stream-opened` or `stream-refused`.
    opened: Option<oneshot::Sender<Result<(), String>>>,
}

struct LinkStreams {
    control: mpsc::Sender<ControllerMessage>,
    out: mpsc::Sender<Outgoing>,
    last: u32,
    open: HashMap<StreamId, Entry>,
}

/// Every stream of every link.
#[derive(Clone, Default)]
pub struct Streams(Arc<Mutex<HashMap<ConnId, LinkStreams>>>);

/// A stream being opened: its halves, once the agent said yes.
pub struct Opening {
    pub conn: ConnId,
    pub stream: StreamId,
    pub tx: StreamTx,
    pub rx: StreamRx,
    answer: oneshot::Receiver<Result<(), String>>,
}

impl Opening {
    /// Waits for the agent's answer: `Err(reason)` when it refused or the link went.
    pub async fn opened(&mut self) -> Result<(), String> {
        match (&mut self.answer).await {
            Ok(answer) => answer,
            Err(_) => Err("the agent's link ended before it answered".into()),
        }
    }
}

/// Why a stream could not be opened on a link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("the device's agent is not connected")]
    NoLink,
    #[error("the device's agent link is too busy to open a stream; try again")]
    Busy,
}

impl Streams {
    fn lock(&self) -> MutexGuard<'_, HashMap<ConnId, LinkStreams>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Link `conn` carries streams from now on: control messages go to `control`, stream
    /// data and credit to `out`.
    pub fn attach(
        &self,
        conn: ConnId,
        control: mpsc::Sender<ControllerMessage>,
        out: mpsc::Sender<Outgoing>,
    ) {
        self.lock().insert(
            conn,
            LinkStreams {
                control,
                out,
                last: 0,
                open: HashMap::new(),
            },
        );
    }

    /// Link `conn` ended: every stream on it closes with `reason`.
    pub fn detach(&self, conn: ConnId, reason: &str) {
        if let Some(link) = self.lock().remove(&conn) {
            for (_, entry) in link.open {
                entry.handle.close(reason);
                if let Some(opened) = entry.opened {
                    let _ = opened.send(Err(reason.to_owned()));
                }
            }
        }
    }

    /// Opens a stream to `target` of the device held under `grant` (person's lease `lease`)
    /// on link `conn`; the agent's answer comes through [`Opening::opened`].
    pub fn open(
        &self,
        conn: ConnId,
        lease: PersonLeaseId,
        grant: (LeaseId, Epoch),
        target: StreamTarget,
    ) -> Result<Opening, OpenError> {
        let mut links = self.lock();
        let link = links.get_mut(&conn).ok_or(OpenError::NoLink)?;
        let stream = StreamId(link.last.checked_add(1).ok_or(OpenError::Busy)?);
        // The agent grants its own window in `stream-opened`; nothing is sent before.
        let (handle, tx, rx) = mux::open(stream, 0, STREAM_WINDOW, link.out.clone());
        let message = ControllerMessage::OpenStream {
            stream,
            lease: grant.0,
            epoch: grant.1,
            target,
            window: STREAM_WINDOW,
        };
        link.control.try_send(message).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => OpenError::Busy,
            mpsc::error::TrySendError::Closed(_) => OpenError::NoLink,
        })?;
        link.last = stream.0;
        let (answer_tx, answer) = oneshot::channel();
        link.open.insert(
            stream,
            Entry {
                handle,
                lease,
                opened: Some(answer_tx),
            },
        );
        Ok(Opening {
            conn,
            stream,
            tx,
            rx,
            answer,
        })
    }

    /// The controller's side of a stream ended (its client left): forget it and tell the
    /// agent (no-op when it is gone already).
    pub fn close(&self, conn: ConnId, stream: StreamId, reason: &str) {
        let mut links = self.lock();
        let Some(link) = links.get_mut(&conn) else {
            return;
        };
        if let Some(entry) = link.open.remove(&stream) {
            entry.handle.close(reason);
            // Bounded queue full: the agent's link is stuck and will be dropped anyway.
            let _ = link.out.try_send(Outgoing::Close {
                stream,
                reason: reason.to_owned(),
            });
        }
    }

    /// Lease `lease` ended: every stream bound to it closes on both sides.
    pub fn close_lease(&self, lease: PersonLeaseId, reason: &str) -> usize {
        let mut links = self.lock();
        let mut closed = 0;
        for link in links.values_mut() {
            let ids: Vec<StreamId> = link
                .open
                .iter()
                .filter(|(_, e)| e.lease == lease)
                .map(|(id, _)| *id)
                .collect();
            for stream in ids {
                if let Some(entry) = link.open.remove(&stream) {
                    entry.handle.close(reason);
                    if let Some(opened) = entry.opened {
                        let _ = opened.send(Err(reason.to_owned()));
                    }
                    let _ = link.out.try_send(Outgoing::Close {
                        stream,
                        reason: reason.to_owned(),
                    });
                    closed += 1;
                }
            }
        }
        closed
    }

    /// How many streams are open (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.lock().values().map(|l| l.open.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A stream frame from link `conn`. Frames for ids not open on this link are dropped.
    pub fn frame(&self, conn: ConnId, stream: StreamId, data: &[u8]) -> Result<(), String> {
        let mut links = self.lock();
        let Some(link) = links.get_mut(&conn) else {
            return Ok(());
        };
        let checked = match link.open.get(&stream) {
            None => return Ok(()),
            Some(entry) if entry.opened.is_some() => {
                Err("data before the stream was opened".to_owned())
            }
            Some(entry) => entry.handle.data(data).map_err(|e| e.to_string()),
        };
        checked.or_else(|why| broken(link, stream, &why))
    }
}

/// The agent broke the protocol of one stream: close it on both sides, answer why.
fn broken(link: &mut LinkStreams, stream: StreamId, why: &str) -> Result<(), String> {
    let reason = format!("stream {stream} closed: the agent broke its protocol: {why}");
    if let Some(entry) = link.open.remove(&stream) {
        entry.handle.close(&reason);
        if let Some(opened) = entry.opened {
            let _ = opened.send(Err(reason.clone()));
        }
    }
    let _ = link.out.try_send(Outgoing::Close {
        stream,
        reason: reason.clone(),
    });
    Err(reason)
}

impl Streams {
    /// A stream message from link `conn`; answers `None` when `message` is not about a
    /// stream (the dispatcher takes it), `Some(Err)` naming what the agent did wrong.
    pub fn message(&self, conn: ConnId, message: &AgentMessage) -> Option<Result<(), String>> {
        let mut links = self.lock();
        let link = links.get_mut(&conn);
        let answer = match (message, link) {
            (
                AgentMessage::StreamOpened { .. }
                | AgentMessage::StreamRefused { .. }
                | AgentMessage::StreamCredit { .. }
                | AgentMessage::StreamClosed { .. },
                None,
            ) => Ok(()),
            (AgentMessage::StreamOpened { stream, window }, Some(link)) => {
                let checked = match link.open.get_mut(stream) {
                    None => Ok(()),
                    Some(entry) => match entry.opened.take() {
                        None => Err("opened twice".to_owned()),
                        Some(opened) => match entry.handle.credit(*window) {
                            Ok(()) => {
                                let _ = opened.send(Ok(()));
                                Ok(())
                            }
                            Err(e) => {
                                entry.opened = Some(opened);
                                Err(e.to_string())
                            }
                        },
                    },
                };
                checked.or_else(|why| broken(link, *stream, &why))
            }
            (AgentMessage::StreamRefused { stream, reason }, Some(link)) => {
                match link.open.remove(stream) {
                    Some(entry) => {
                        entry.handle.close(reason);
                        if let Some(opened) = entry.opened {
                            let _ = opened.send(Err(reason.clone()));
                            Ok(())
                        } else {
                            Err(format!("stream {stream}: refused after it was opened"))
                        }
                    }
                    None => Ok(()),
                }
            }
            (AgentMessage::StreamCredit { stream, bytes }, Some(link)) => {
                match link.open.get(stream).map(|e| e.handle.credit(*bytes)) {
                    Some(Err(e)) => broken(link, *stream, &e.to_string()),
                    _ => Ok(()),
                }
            }
            (AgentMessage::StreamClosed { stream, reason }, Some(link)) => {
                if let Some(entry) = link.open.remove(stream) {
                    entry.handle.close(reason);
                    if let Some(opened) = entry.opened {
                        let _ = opened.send(Err(reason.clone()));
                    }
                }
                Ok(())
            }
            _ => return None,
        };
        Some(answer)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proto::stream::ConsoleInput;

    fn console() -> StreamTarget {
        StreamTarget::Console {
            input: ConsoleInput::Write,
        }
    }

    #[tokio::test]
    async fn frames_reach_only_streams_open_on_their_own_link() {
        let streams = Streams::default();
        let (control_a, mut opens_a) = mpsc::channel(8);
        let (out_a, _queue_a) = mpsc::channel(8);
        let (control_b, _opens_b) = mpsc::channel(8);
        let (out_b, _queue_b) = mpsc::channel(8);
        streams.attach(ConnId(1), control_a, out_a);
        streams.attach(ConnId(2), control_b, out_b);
        let mut opening = streams
            .open(
                ConnId(1),
                PersonLeaseId(5),
                (LeaseId(99), Epoch(1)),
                console(),
            )
            .unwrap();
        let Some(ControllerMessage::OpenStream { stream, lease, .. }) = opens_a.recv().await else {
            panic!("no open-stream");
        };
        assert_eq!((stream, lease), (opening.stream, LeaseId(99)));
        // Link 2 answers for link 1's stream and sends it data: nothing happens.
        let opened = AgentMessage::StreamOpened { stream, window: 10 };
        assert_eq!(streams.message(ConnId(2), &opened), Some(Ok(())));
        assert_eq!(streams.frame(ConnId(2), stream, b"forged"), Ok(()));
        // Data before opened is a protocol error of link 1, and closes the stream.
        let mut second = streams
            .open(
                ConnId(1),
                PersonLeaseId(5),
                (LeaseId(99), Epoch(1)),
                console(),
            )
            .unwrap();
        assert!(streams.frame(ConnId(1), second.stream, b"early").is_err());
        assert!(second.opened().await.is_err());
        assert_eq!(streams.message(ConnId(1), &opened), Some(Ok(())));
        opening.opened().await.unwrap();
        assert_eq!(streams.frame(ConnId(1), stream, b"login: "), Ok(()));
        assert_eq!(opening.rx.recv().await.unwrap(), Some(b"login: ".to_vec()));
        // Beyond the window the controller granted: closed.
        let flood = vec![0u8; STREAM_WINDOW as usize];
        assert!(streams.frame(ConnId(1), stream, &flood).is_err());
        assert!(opening.rx.recv().await.is_err());
        assert!(streams.is_empty());
        // Heartbeats are not stream messages.
        assert_eq!(streams.message(ConnId(1), &AgentMessage::Heartbeat), None);
    }

    #[tokio::test]
    async fn ending_a_lease_or_a_link_closes_its_streams_only() {
        let streams = Streams::default();
        let (control, _opens) = mpsc::channel(8);
        let (out, mut queue) = mpsc::channel(8);
        streams.attach(ConnId(1), control, out);
        let mut mine = streams
            .open(
                ConnId(1),
                PersonLeaseId(1),
                (LeaseId(10), Epoch(1)),
                console(),
            )
            .unwrap();
        let mut other = streams
            .open(
                ConnId(1),
                PersonLeaseId(2),
                (LeaseId(20), Epoch(1)),
                console(),
            )
            .unwrap();
        assert_eq!(
            streams.close_lease(PersonLeaseId(1), "lease 1 has ended"),
            1
        );
        assert_eq!(mine.opened().await, Err("lease 1 has ended".into()));
        assert!(matches!(
            queue.recv().await,
            Some(Outgoing::Close { stream, .. }) if stream == mine.stream
        ));
        assert_eq!(streams.len(), 1);
        streams.detach(ConnId(1), "the agent's link ended");
        assert_eq!(other.opened().await, Err("the agent's link ended".into()));
        assert!(matches!(
            streams.open(
                ConnId(1),
                PersonLeaseId(2),
                (LeaseId(20), Epoch(1)),
                console()
            ),
            Err(OpenError::NoLink)
        ));
    }
}
