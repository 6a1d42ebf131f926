//! The agent's end of streams: a person's console or a TCP connection to their DUT, carried
//! on the link ([`proto::stream`]).
//!
//! ```text
//!  open-stream {lease, target} ──> Reaches (what each session lets streams reach)
//!     ├─ console: a viewer of the console hub (history, then live), input if `write`
//!     └─ tcp port: a connection to the DUT's own address for that port (forwarded first
//!        when it is not the SSH port)
//!  one task per stream: pump under credit ──Outgoing──> main loop ──> link
//! ```
//!
//! Invariants:
//! - A stream reaches only what the session of its lease offers ([`Reach`]): the device's
//!   console, and the DUT's forwarded ports (its SSH port, and others that
//!   [`qemu::PortForwards`] forwards on demand from 127.0.0.1 into the guest itself).
//!   Nothing else on the agent's host is ever connected to, whatever port the controller
//!   names; port 0 is refused; a lease without a session (or another epoch) is refused.
//! - A console stream reads the console as a viewer (a cursor): a stream without credit
//!   never slows the console, its recorder or the job log; it skips ahead and says so in the
//!   stream. A read-only stream drops what the controller sends.
//! - Only ids the controller opened on this link exist; frames and credit for other ids are
//!   ignored. A controller that breaks a stream's window gets that stream closed.
//! - Every stream ends with the link (the main loop drops them all), with its session
//!   ([`Streams::close_lease`]), or when its task ends (it says why).

use driver::console::{Chunk, ConsoleInput as Typing, ConsoleTap};
use mux::{Handle, Outgoing, PumpEnd, StreamRx, StreamTx};
use proto::stream::{ConsoleInput, STREAM_WINDOW, StreamId, StreamTarget};
use proto::{Epoch, LeaseId};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// How long connecting to the DUT may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Stream messages queued for the link before stream tasks wait.
const OUT_QUEUE: usize = 256;

/// What streams of one session may reach.
#[derive(Debug, Clone)]
pub struct Reach {
    pub epoch: Epoch,
    /// The device's console while it is powered.
    pub console: Option<ConsoleTap>,
    /// DUT ports reachable from the agent, each with the local address that leads to it
    /// (QEMU user networking: `hostfwd` from 127.0.0.1, port 22).
    pub ports: Vec<(u16, SocketAddr)>,
    /// The DUT's other ports, forwarded when a stream asks (QEMU: `hostfwd_add` from
    /// 127.0.0.1 to the guest itself); `None` when the DUT offers no more than `ports`.
    pub forwards: Option<Arc<qemu::PortForwards>>,
}

/// Sessions' reaches, by lease; kept by the sessions, read when a stream opens.
#[derive(Debug, Clone, Default)]
pub struct Reaches(Arc<Mutex<HashMap<LeaseId, Reach>>>);

impl Reaches {
    pub fn set(&self, lease: LeaseId, reach: Reach) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(lease, reach);
    }

    pub fn remove(&self, lease: LeaseId) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&lease);
    }

    fn get(&self, lease: LeaseId) -> Option<Reach> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&lease)
            .cloned()
    }
}

/// What a stream task has to say to the main loop besides its traffic.
#[derive(Debug)]
enum Ready {
    Opened(StreamId),
    Refused(StreamId, String),
}

struct Open {
    handle: Handle,
    lease: LeaseId,
    /// The controller's window, granted once the target is connected.
    window: u32,
}

/// The streams of one link.
pub struct Streams {
    reaches: Reaches,
    open: HashMap<StreamId, Open>,
    out_tx: mpsc::Sender<Outgoing>,
    out: mpsc::Receiver<Outgoing>,
    ready_tx: mpsc::UnboundedSender<Ready>,
    ready: mpsc::UnboundedReceiver<Ready>,
}

/// What the main loop sends on the link for the streams.
#[derive(Debug)]
pub enum ToLink {
    Message(proto::link::AgentMessage),
    Frame(Vec<u8>),
}

impl Streams {
    pub fn new(reaches: Reaches) -> Streams {
        let (out_tx, out) = mpsc::channel(OUT_QUEUE);
        let (ready_tx, ready) = mpsc::unbounded_channel();
        Streams {
            reaches,
            open: HashMap::new(),
            out_tx,
            out,
            ready_tx,
            ready,
        }
    }

    /// How many streams are open.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// The controller asks for a stream; answers at once only when it is refused.
    pub fn open(
        &mut self,
        stream: StreamId,
        lease: LeaseId,
        epoch: Epoch,
        target: StreamTarget,
        window: u32,
    ) -> Option<ToLink> {
        let refuse = |reason: String| {
            Some(ToLink::Message(proto::link::AgentMessage::StreamRefused {
                stream,
                reason,
            }))
        };
        if self.open.contains_key(&stream) {
            return refuse(format!("stream {stream} is open already"));
        }
        let Some(reach) = self.reaches.get(lease).filter(|r| r.epoch == epoch) else {
            return refuse(format!(
                "lease {lease} (epoch {epoch}) has no session on this agent"
            ));
        };
        let source = match target {
            StreamTarget::Console { input } => match reach.console {
                Some(tap) => Source::Console { tap, input },
                None => return refuse("the device is not powered: no console yet".into()),
            },
            StreamTarget::Tcp { port: 0 } => {
                return refuse("port 0 is not a TCP port (1 to 65535)".into());
            }
            StreamTarget::Tcp { port } => match reach.ports.iter().find(|(p, _)| *p == port) {
                Some((_, addr)) => Source::Tcp(*addr),
                None if reach.forwards.is_some() => Source::Forwarded {
                    forwards: reach.forwards.clone().expect("checked: some"),
                    port,
                },
                None => {
                    let offered: Vec<String> =
                        reach.ports.iter().map(|(p, _)| p.to_string()).collect();
                    return refuse(format!(
                        "port {port}: the DUT's network reaches only port(s) {} from the agent{}",
                        if offered.is_empty() {
                            "none".to_owned()
                        } else {
                            offered.join(", ")
                        },
                        if offered.is_empty() {
                            " (is the device powered?)"
                        } else {
                            ""
                        }
                    ));
                }
            },
        };
        let (handle, tx, rx) = mux::open(stream, 0, STREAM_WINDOW, self.out_tx.clone());
        self.open.insert(
            stream,
            Open {
                handle,
                lease,
                window,
            },
        );
        tokio::spawn(serve(source, tx, rx, self.ready_tx.clone()));
        None
    }

    /// A frame from the controller; ids not open are ignored.
    pub fn frame(&mut self, stream: StreamId, data: &[u8]) -> Option<ToLink> {
        let open = self.open.get(&stream)?;
        match open.handle.data(data) {
            Ok(()) => None,
            Err(e) => self.end(stream, &format!("the controller broke the window: {e}")),
        }
    }

    pub fn credit(&mut self, stream: StreamId, bytes: u32) -> Option<ToLink> {
        let open = self.open.get(&stream)?;
        match open.handle.credit(bytes) {
            Ok(()) => None,
            Err(e) => self.end(stream, &format!("the controller broke the window: {e}")),
        }
    }

    /// The controller closed the stream.
    pub fn closed(&mut self, stream: StreamId, reason: &str) {
        if let Some(open) = self.open.remove(&stream) {
            open.handle.close(reason);
        }
    }

    /// Closes every stream of `lease` (its session ended); answers what to tell the link.
    pub fn close_lease(&mut self, lease: LeaseId, reason: &str) -> Vec<ToLink> {
        let ids: Vec<StreamId> = self
            .open
            .iter()
            .filter(|(_, o)| o.lease == lease)
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter()
            .filter_map(|id| self.end(id, reason))
            .collect()
    }

    /// Ends a stream here and answers the message that tells the controller.
    fn end(&mut self, stream: StreamId, reason: &str) -> Option<ToLink> {
        let open = self.open.remove(&stream)?;
        open.handle.close(reason);
        Some(ToLink::Message(proto::link::AgentMessage::StreamClosed {
            stream,
            reason: reason.to_owned(),
        }))
    }

    /// The next thing to send for the streams (waits). Readiness comes before traffic, so
    /// `stream-opened` always precedes the stream's first byte.
    pub async fn next(&mut self) -> ToLink {
        loop {
            tokio::select! {
                biased;
                Some(ready) = self.ready.recv() => match ready {
                    Ready::Opened(stream) => {
                        let Some(open) = self.open.get(&stream) else { continue };
                        // The initial window is within the limit by construction.
                        let _ = open.handle.credit(open.window.min(STREAM_WINDOW * 16));
                        return ToLink::Message(proto::link::AgentMessage::StreamOpened {
                            stream,
                            window: STREAM_WINDOW,
                        });
                    }
                    Ready::Refused(stream, reason) => {
                        if let Some(open) = self.open.remove(&stream) {
                            open.handle.close(&reason);
                            return ToLink::Message(proto::link::AgentMessage::StreamRefused {
                                stream,
                                reason,
                            });
                        }
                    }
                },
                Some(out) = self.out.recv() => match out {
                    Outgoing::Data { stream, data } => {
                        if self.open.contains_key(&stream) {
                            return ToLink::Frame(proto::stream::encode(stream, &data));
                        }
                    }
                    Outgoing::Credit { stream, bytes } => {
                        if self.open.contains_key(&stream) {
                            return ToLink::Message(proto::link::AgentMessage::StreamCredit {
                                stream,
                                bytes,
                            });
                        }
                    }
                    Outgoing::Close { stream, reason } => {
                        if let Some(message) = self.end(stream, &reason) {
                            return message;
                        }
                    }
                },
            }
        }
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        for (_, open) in self.open.drain() {
            open.handle.close("the agent's link ended");
        }
    }
}

enum Source {
    Console {
        tap: ConsoleTap,
        input: ConsoleInput,
    },
    Tcp(SocketAddr),
    /// A port of the DUT to forward first.
    Forwarded {
        forwards: Arc<qemu::PortForwards>,
        port: u16,
    },
}

/// One stream's task: connect, say so, pump until the end, say why.
async fn serve(
    source: Source,
    tx: StreamTx,
    mut rx: StreamRx,
    ready: mpsc::UnboundedSender<Ready>,
) {
    let stream = tx.id();
    // A forwarded port is first made reachable: then it is a plain address.
    let target = match source {
        other @ (Source::Console { .. } | Source::Tcp(_)) => other,
        Source::Forwarded { forwards, port } => {
            match tokio::time::timeout(CONNECT_TIMEOUT, forwards.reach(port)).await {
                Ok(Ok(addr)) => Source::Tcp(addr),
                Ok(Err(e)) => {
                    let _ = ready.send(Ready::Refused(stream, format!("port {port}: {e}")));
                    return;
                }
                Err(_) => {
                    let _ = ready.send(Ready::Refused(
                        stream,
                        format!("port {port}: no forward within {CONNECT_TIMEOUT:?}"),
                    ));
                    return;
                }
            }
        }
    };
    let end = match target {
        // Resolved above.
        Source::Forwarded { .. } => return,
        Source::Tcp(addr) => {
            let connected =
                tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await;
            let socket = match connected {
                Ok(Ok(socket)) => socket,
                Ok(Err(e)) => {
                    let _ = ready.send(Ready::Refused(stream, format!("connecting: {e}")));
                    return;
                }
                Err(_) => {
                    let _ = ready.send(Ready::Refused(
                        stream,
                        format!("no connection within {CONNECT_TIMEOUT:?}"),
                    ));
                    return;
                }
            };
            let _ = socket.set_nodelay(true);
            let _ = ready.send(Ready::Opened(stream));
            let (read, write) = socket.into_split();
            mux::pump(&tx, &mut rx, read, write).await
        }
        Source::Console { tap, input } => {
            let _ = ready.send(Ready::Opened(stream));
            let typing = match input {
                ConsoleInput::Write => Some(tap.input()),
                ConsoleInput::ReadOnly => None,
            };
            console(&tap, typing, &tx, &mut rx).await
        }
    };
    let reason = match end {
        PumpEnd::Done => "both directions ended".to_owned(),
        PumpEnd::Closed(_) => return,
        PumpEnd::Local(why) => why,
    };
    tx.close(&reason).await;
}

/// A console stream: history then live output out, input (if allowed) in.
async fn console(
    tap: &ConsoleTap,
    mut typing: Option<Typing>,
    tx: &StreamTx,
    rx: &mut StreamRx,
) -> PumpEnd {
    let mut viewer = tap.subscribe_with_history(usize::MAX);
    let out = async {
        loop {
            let sent = match viewer.next_chunk(proto::stream::MAX_STREAM_CHUNK).await {
                Chunk::Bytes(bytes) => tx.send(&bytes).await,
                Chunk::Skipped(n) => {
                    let note = format!(
                        "\r\n[dutlab: this viewer fell behind; {n} console bytes skipped]\r\n"
                    );
                    tx.send(note.as_bytes()).await
                }
                Chunk::End(_) => {
                    let _ = tx.finish().await;
                    return PumpEnd::Local("the console ended".into());
                }
            };
            if let Err(e) = sent {
                return PumpEnd::Closed(e.to_string());
            }
        }
    };
    let input = async {
        loop {
            match rx.recv().await {
                Ok(Some(bytes)) => {
                    if let Some(t) = typing.as_mut()
                        && t.write_all(&bytes).await.is_err()
                    {
                        return PumpEnd::Local("the console takes no input any more".into());
                    }
                }
                // A viewer leaving its input does not end its output.
                Ok(None) => std::future::pending::<()>().await,
                Err(e) => return PumpEnd::Closed(e.to_string()),
            }
        }
    };
    tokio::select! {
        end = out => end,
        end = input => end,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use driver::console::ConsoleHub;
    use proto::link::AgentMessage;
    use tokio::io::AsyncReadExt;

    fn reach_of(hub: &ConsoleHub, port: Option<(u16, SocketAddr)>) -> Reach {
        Reach {
            epoch: Epoch(1),
            console: Some(hub.tap()),
            ports: port.into_iter().collect(),
            forwards: None,
        }
    }

    async fn opened(streams: &mut Streams) -> StreamId {
        match streams.next().await {
            ToLink::Message(AgentMessage::StreamOpened { stream, .. }) => stream,
            other => panic!("expected stream-opened, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_console_stream_replays_history_and_types_only_when_allowed() {
        let (mut device, console) = tokio::io::duplex(4096);
        let (console_r, console_w) = tokio::io::split(console);
        let hub = ConsoleHub::spawn(console_r, console_w, Box::new(|_| {}));
        device.write_all(b"boot...\r\nlogin: ").await.unwrap();
        while hub.written() < 16 {
            tokio::task::yield_now().await;
        }
        let reaches = Reaches::default();
        reaches.set(LeaseId(7), reach_of(&hub, None));
        let mut streams = Streams::new(reaches);
        let write = StreamTarget::Console {
            input: ConsoleInput::Write,
        };
        let read_only = StreamTarget::Console {
            input: ConsoleInput::ReadOnly,
        };
        // Another lease, or another epoch of this one: refused.
        assert!(matches!(
            streams.open(StreamId(1), LeaseId(8), Epoch(1), write, STREAM_WINDOW),
            Some(ToLink::Message(AgentMessage::StreamRefused { .. }))
        ));
        assert!(matches!(
            streams.open(StreamId(1), LeaseId(7), Epoch(2), write, STREAM_WINDOW),
            Some(ToLink::Message(AgentMessage::StreamRefused { .. }))
        ));
        assert!(
            streams
                .open(StreamId(2), LeaseId(7), Epoch(1), write, STREAM_WINDOW)
                .is_none()
        );
        assert_eq!(opened(&mut streams).await, StreamId(2));
        match streams.next().await {
            ToLink::Frame(f) => assert_eq!(&f[5..], b"boot...\r\nlogin: "),
            other => panic!("{other:?}"),
        }
        assert!(
            streams
                .open(StreamId(3), LeaseId(7), Epoch(1), read_only, STREAM_WINDOW)
                .is_none()
        );
        assert_eq!(opened(&mut streams).await, StreamId(3));
        match streams.next().await {
            ToLink::Frame(f) => assert_eq!(&f[5..], b"boot...\r\nlogin: "),
            other => panic!("{other:?}"),
        }
        // The read-only viewer types: dropped. The writer types: it reaches the device.
        assert!(streams.frame(StreamId(3), b"reboot\n").is_none());
        assert!(streams.frame(StreamId(2), b"root\n").is_none());
        let mut typed = [0u8; 5];
        device.read_exact(&mut typed).await.unwrap();
        assert_eq!(&typed, b"root\n");
        // A frame for a stream never opened is ignored.
        assert!(streams.frame(StreamId(99), b"x").is_none());
        // The session ends: its streams close and the controller hears why.
        let told = streams.close_lease(LeaseId(7), "the session ended");
        assert_eq!(told.len(), 2);
        assert!(streams.is_empty());
    }

    #[tokio::test]
    async fn tcp_streams_reach_only_the_offered_ports() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_device, console) = tokio::io::duplex(64);
        let (console_r, console_w) = tokio::io::split(console);
        let hub = ConsoleHub::spawn(console_r, console_w, Box::new(|_| {}));
        let reaches = Reaches::default();
        reaches.set(LeaseId(7), reach_of(&hub, Some((22, addr))));
        let mut streams = Streams::new(reaches);
        match streams.open(
            StreamId(1),
            LeaseId(7),
            Epoch(1),
            StreamTarget::Tcp { port: 80 },
            STREAM_WINDOW,
        ) {
            Some(ToLink::Message(AgentMessage::StreamRefused { reason, .. })) => {
                assert!(reason.contains("only port(s) 22"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        match streams.open(
            StreamId(1),
            LeaseId(7),
            Epoch(1),
            StreamTarget::Tcp { port: 0 },
            STREAM_WINDOW,
        ) {
            Some(ToLink::Message(AgentMessage::StreamRefused { reason, .. })) => {
                assert!(reason.contains("port 0"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            streams
                .open(
                    StreamId(2),
                    LeaseId(7),
                    Epoch(1),
                    StreamTarget::Tcp { port: 22 },
                    STREAM_WINDOW
                )
                .is_none()
        );
        let (mut dut, _) = listener.accept().await.unwrap();
        assert_eq!(opened(&mut streams).await, StreamId(2));
        dut.write_all(b"SSH-2.0-dropbear\r\n").await.unwrap();
        match streams.next().await {
            ToLink::Frame(f) => assert_eq!(&f[5..], b"SSH-2.0-dropbear\r\n"),
            other => panic!("{other:?}"),
        }
        assert!(streams.frame(StreamId(2), b"SSH-2.0-OpenSSH\r\n").is_none());
        let mut got = [0u8; 17];
        dut.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"SSH-2.0-OpenSSH\r\n");
        // The DUT ends; the controller ends its side: the stream closes by itself.
        drop(dut);
        match streams.next().await {
            ToLink::Frame(f) => assert_eq!(f.len(), 5, "end of stream"),
            other => panic!("{other:?}"),
        }
        assert!(streams.frame(StreamId(2), b"").is_none());
        match streams.next().await {
            ToLink::Message(AgentMessage::StreamClosed { stream, .. }) => {
                assert_eq!(stream, StreamId(2));
            }
            other => panic!("{other:?}"),
        }
        assert!(streams.is_empty());
    }
}
