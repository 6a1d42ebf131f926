//! Streams on the agent link, the part both ends share: one stream's credit in each
//! direction, its two halves for the task that serves it, and a byte pump between a stream
//! and a local reader/writer (a TCP connection, a console).
//!
//! ```text
//!  link reader ──frames, credit──> Handle ──> StreamRx (bytes in; credit back when consumed)
//!  link writer <──Outgoing (bounded)── StreamTx (bytes out, only under credit)
//! ```
//!
//! Invariants:
//! - A [`StreamTx`] sends no byte the peer did not grant ([`proto::stream::SendWindow`]); it
//!   waits for credit instead, so a stalled peer stops this stream's sender only.
//! - Bytes from the peer are queued only up to the window granted to it; a peer that sends
//!   more breaks the window and [`Handle::data`] refuses (the caller closes the stream). The
//!   queue is therefore bounded by the window, though it is an unbounded channel (the link
//!   reader must never wait on one stream).
//! - Credit goes back to the peer only when the consumer asked for the next bytes
//!   ([`StreamRx::recv`]), so a consumer that stops reading stops its peer.
//! - Everything for the link goes through one bounded [`Outgoing`] queue per link; stream data
//!   in it is bounded by the streams' windows.
//! - Closing ([`Handle::close`]) wakes both halves; they answer [`StreamError::Closed`] with
//!   the reason from then on.

use proto::stream::{MAX_STREAM_CHUNK, RecvWindow, SendWindow, StreamId, WindowError};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc, watch};

/// What a stream's task hands to its link's writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// Payload (empty: end of stream in this direction).
    Data { stream: StreamId, data: Vec<u8> },
    /// The consumer took this many bytes: the peer may send them again.
    Credit { stream: StreamId, bytes: u32 },
    /// The stream ended here, for this reason.
    Close { stream: StreamId, reason: String },
}

/// Why a stream operation did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("{0}")]
    Closed(String),
    #[error("the link is gone")]
    LinkGone,
}

struct State {
    send: SendWindow,
    recv: RecvWindow,
    closed: Option<String>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the sender when credit comes or the stream closes (one waiter: the sender).
    credit: Notify,
    closed: watch::Sender<Option<String>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is one statement; a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The link's side of one stream: where the peer's frames and credit go.
pub struct Handle {
    stream: StreamId,
    shared: Arc<Shared>,
    inflow: mpsc::UnboundedSender<Vec<u8>>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("stream", &self.stream)
            .finish()
    }
}

/// Opens the stream's state: `send_window` is what the peer lets us send first,
/// `recv_window` what we let the peer send first.
pub fn open(
    stream: StreamId,
    send_window: u32,
    recv_window: u32,
    out: mpsc::Sender<Outgoing>,
) -> (Handle, StreamTx, StreamRx) {
    let (closed, closed_rx) = watch::channel(None);
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            send: SendWindow::new(send_window),
            recv: RecvWindow::new(recv_window),
            closed: None,
        }),
        credit: Notify::new(),
        closed,
    });
    let (inflow, inflow_rx) = mpsc::unbounded_channel();
    let handle = Handle {
        stream,
        shared: shared.clone(),
        inflow,
    };
    let tx = StreamTx {
        stream,
        shared: shared.clone(),
        out: out.clone(),
    };
    let rx = StreamRx {
        stream,
        shared,
        inflow: inflow_rx,
        closed: closed_rx,
        out,
        unconsumed: 0,
        ended: false,
    };
    (handle, tx, rx)
}

impl Handle {
    pub fn id(&self) -> StreamId {
        self.stream
    }

    /// The peer sent `data` (empty: end of stream). Refused when it breaks the window.
    pub fn data(&self, data: &[u8]) -> Result<(), WindowError> {
        self.shared.lock().recv.received(data.len())?;
        // A closed receiver means the task ended; its close is on its way.
        let _ = self.inflow.send(data.to_vec());
        Ok(())
    }

    /// The peer granted credit.
    pub fn credit(&self, bytes: u32) -> Result<(), WindowError> {
        self.shared.lock().send.grant(bytes)?;
        self.shared.credit.notify_one();
        Ok(())
    }

    /// Ends the stream here: both halves answer `Closed(reason)` from now on.
    pub fn close(&self, reason: &str) {
        let mut state = self.shared.lock();
        if state.closed.is_none() {
            state.closed = Some(reason.to_owned());
            drop(state);
            self.shared.closed.send_replace(Some(reason.to_owned()));
            self.shared.credit.notify_one();
        }
    }

    /// Whether the stream was closed.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed.is_some()
    }
}

/// The sending half: payload out, never past the peer's credit.
pub struct StreamTx {
    stream: StreamId,
    shared: Arc<Shared>,
    out: mpsc::Sender<Outgoing>,
}

impl StreamTx {
    pub fn id(&self) -> StreamId {
        self.stream
    }

    /// Waits for credit and takes up to `max` bytes of it (at least one).
    pub async fn reserve(&self, max: usize) -> Result<usize, StreamError> {
        loop {
            {
                let mut state = self.shared.lock();
                if let Some(reason) = &state.closed {
                    return Err(StreamError::Closed(reason.clone()));
                }
                let n = state.send.take(max.max(1));
                if n > 0 {
                    return Ok(n);
                }
            }
            self.shared.credit.notified().await;
        }
    }

    /// Gives back credit taken by [`StreamTx::reserve`] and not used.
    pub fn unreserve(&self, bytes: usize) {
        if bytes > 0 {
            let mut state = self.shared.lock();
            // What was taken always fits back.
            let _ = state.send.grant(u32::try_from(bytes).unwrap_or(u32::MAX));
        }
    }

    /// Sends reserved bytes (at most what [`StreamTx::reserve`] answered).
    async fn put(&self, data: Vec<u8>) -> Result<(), StreamError> {
        if let Some(reason) = &self.shared.lock().closed {
            return Err(StreamError::Closed(reason.clone()));
        }
        self.out
            .send(Outgoing::Data {
                stream: self.stream,
                data,
            })
            .await
            .map_err(|_| StreamError::LinkGone)
    }

    /// Sends all of `data`, in chunks, as credit allows.
    pub async fn send(&self, mut data: &[u8]) -> Result<(), StreamError> {
        while !data.is_empty() {
            let n = self.reserve(data.len().min(MAX_STREAM_CHUNK)).await?;
            let (chunk, rest) = data.split_at(n);
            self.put(chunk.to_vec()).await?;
            data = rest;
        }
        Ok(())
    }

    /// End of stream in this direction.
    pub async fn finish(&self) -> Result<(), StreamError> {
        self.put(Vec::new()).await
    }

    /// Ends the stream from this side, telling the peer why.
    pub async fn close(&self, reason: &str) {
        let _ = self
            .out
            .send(Outgoing::Close {
                stream: self.stream,
                reason: reason.to_owned(),
            })
            .await;
    }

    /// The reason, once the stream was closed.
    pub fn closed(&self) -> Option<String> {
        self.shared.lock().closed.clone()
    }
}

/// The receiving half: the peer's payload, with credit given back as it is consumed.
pub struct StreamRx {
    stream: StreamId,
    shared: Arc<Shared>,
    inflow: mpsc::UnboundedReceiver<Vec<u8>>,
    closed: watch::Receiver<Option<String>>,
    out: mpsc::Sender<Outgoing>,
    /// Bytes handed out by the last `recv`, consumed when the next one is asked for.
    unconsumed: usize,
    ended: bool,
}

impl StreamRx {
    /// The next bytes from the peer; `None` at its end of stream (after it: waits for the
    /// close, then `Closed`). The bytes of the previous call count as consumed now (credit
    /// goes back to the peer).
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>, StreamError> {
        let consumed = std::mem::take(&mut self.unconsumed);
        if consumed > 0 {
            let grant = self.shared.lock().recv.consumed(consumed);
            if let Some(bytes) = grant {
                self.out
                    .send(Outgoing::Credit {
                        stream: self.stream,
                        bytes,
                    })
                    .await
                    .map_err(|_| StreamError::LinkGone)?;
            }
        }
        if self.ended {
            // Nothing more comes; wait for the stream's close.
            let reason = self.closed.wait_for(Option::is_some).await;
            let reason = reason.ok().and_then(|r| r.clone()).unwrap_or_default();
            return Err(StreamError::Closed(reason));
        }
        let data = tokio::select! {
            biased;
            data = self.inflow.recv() => data,
            reason = self.closed.wait_for(Option::is_some) => {
                let reason = reason.ok().and_then(|r| r.clone()).unwrap_or_default();
                return Err(StreamError::Closed(reason));
            }
        };
        match data {
            Some(data) if data.is_empty() => {
                self.ended = true;
                Ok(None)
            }
            Some(data) => {
                self.unconsumed = data.len();
                Ok(Some(data))
            }
            // The sender goes when the stream is closed too: then its reason is the answer.
            None => match self.closed.borrow().clone() {
                Some(reason) => Err(StreamError::Closed(reason)),
                None => Err(StreamError::LinkGone),
            },
        }
    }
}

/// How a pumped stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PumpEnd {
    /// Both directions reached their end of stream.
    Done,
    /// The stream was closed by the other side (or the link went).
    Closed(String),
    /// The local side failed (reading or writing).
    Local(String),
}

/// Copies `reader` into the stream and the stream into `writer` until both directions ended,
/// the stream closed, or the local side failed. Reads only under credit, so a stalled peer
/// stops the reader (a TCP peer then feels backpressure).
pub async fn pump<R, W>(tx: &StreamTx, rx: &mut StreamRx, mut reader: R, mut writer: W) -> PumpEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let outbound = async {
        let mut buf = vec![0u8; MAX_STREAM_CHUNK];
        loop {
            let n = match tx.reserve(MAX_STREAM_CHUNK).await {
                Ok(n) => n,
                Err(e) => return Err(closed(e)),
            };
            let got = match reader.read(&mut buf[..n]).await {
                Ok(got) => got,
                Err(e) => return Err(PumpEnd::Local(format!("reading: {e}"))),
            };
            tx.unreserve(n - got);
            if got == 0 {
                return tx.finish().await.map_err(closed);
            }
            tx.put(buf[..got].to_vec()).await.map_err(closed)?;
        }
    };
    let inbound = async {
        loop {
            match rx.recv().await {
                Ok(Some(data)) => {
                    if let Err(e) = writer.write_all(&data).await {
                        return Err(PumpEnd::Local(format!("writing: {e}")));
                    }
                    if let Err(e) = writer.flush().await {
                        return Err(PumpEnd::Local(format!("writing: {e}")));
                    }
                }
                Ok(None) => {
                    let _ = writer.shutdown().await;
                    return Ok(());
                }
                Err(e) => return Err(closed(e)),
            }
        }
    };
    match tokio::try_join!(outbound, inbound) {
        Ok(((), ())) => PumpEnd::Done,
        Err(end) => end,
    }
}

fn closed(e: StreamError) -> PumpEnd {
    match e {
        StreamError::Closed(reason) => PumpEnd::Closed(reason),
        StreamError::LinkGone => PumpEnd::Closed("the link is gone".into()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    /// A link between two stream ends: moves `Outgoing` of one side into the other's handle,
    /// as the agent and controller links do.
    fn wire(mut out: mpsc::Receiver<Outgoing>, peer: Arc<Mutex<Vec<Handle>>>) {
        tokio::spawn(async move {
            while let Some(o) = out.recv().await {
                let handles = peer.lock().unwrap();
                match o {
                    Outgoing::Data { stream, data } => {
                        if let Some(h) = handles.iter().find(|h| h.id() == stream) {
                            h.data(&data).unwrap();
                        }
                    }
                    Outgoing::Credit { stream, bytes } => {
                        if let Some(h) = handles.iter().find(|h| h.id() == stream) {
                            h.credit(bytes).unwrap();
                        }
                    }
                    Outgoing::Close { stream, reason } => {
                        if let Some(h) = handles.iter().find(|h| h.id() == stream) {
                            h.close(&reason);
                        }
                    }
                }
            }
        });
    }

    #[tokio::test]
    async fn a_stalled_stream_stops_its_sender_without_blocking_another() {
        let (a_out, a_queue) = mpsc::channel(64);
        let (b_out, b_queue) = mpsc::channel(64);
        let a_handles = Arc::new(Mutex::new(Vec::new()));
        let b_handles = Arc::new(Mutex::new(Vec::new()));
        wire(a_queue, b_handles.clone());
        wire(b_queue, a_handles.clone());
        let window = 64 << 10;
        let mut ends = Vec::new();
        for id in [1, 2] {
            let (ha, ta, ra) = open(StreamId(id), window, window, a_out.clone());
            let (hb, tb, rb) = open(StreamId(id), window, window, b_out.clone());
            a_handles.lock().unwrap().push(ha);
            b_handles.lock().unwrap().push(hb);
            ends.push((ta, ra, tb, rb));
        }
        let (busy_tx, _busy_rx_a, _, mut stalled_rx) = ends.remove(0);
        let (live_tx, _, _, mut live_rx) = ends.remove(0);
        // Stream 1's consumer never reads: its sender gets exactly one window through.
        let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = sent.clone();
        let busy = tokio::spawn(async move {
            let chunk = vec![7u8; 4096];
            loop {
                if busy_tx.send(&chunk).await.is_err() {
                    return;
                }
                counter.fetch_add(chunk.len(), std::sync::atomic::Ordering::SeqCst);
            }
        });
        // Stream 2 carries 4 MiB meanwhile, far more than a window.
        let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        let expect = data.clone();
        let writer = tokio::spawn(async move {
            live_tx.send(&data).await.unwrap();
            live_tx.finish().await.unwrap();
        });
        let mut got = Vec::new();
        while let Some(bytes) = live_rx.recv().await.unwrap() {
            got.extend(bytes);
        }
        writer.await.unwrap();
        assert_eq!(got, expect);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            sent.load(std::sync::atomic::Ordering::SeqCst),
            window as usize,
            "the stalled stream's sender stopped at its window"
        );
        // Reading the stalled stream gives credit back and lets its sender go on.
        let mut read = 0;
        while read < 2 * window as usize {
            read += stalled_rx.recv().await.unwrap().unwrap().len();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(sent.load(std::sync::atomic::Ordering::SeqCst) > window as usize);
        busy.abort();
    }

    #[tokio::test]
    async fn a_peer_past_its_window_is_refused_and_close_wakes_both_halves() {
        let (out, _queue) = mpsc::channel(8);
        let (handle, tx, mut rx) = open(StreamId(3), 0, 10, out);
        handle.data(&[1; 10]).unwrap();
        assert!(handle.data(&[1]).is_err(), "an 11th byte breaks the window");
        let waiting = tokio::spawn(async move { tx.reserve(5).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        handle.close("the lease ended");
        assert_eq!(
            waiting.await.unwrap(),
            Err(StreamError::Closed("the lease ended".into()))
        );
        assert_eq!(rx.recv().await.unwrap(), Some(vec![1; 10]));
        assert_eq!(
            rx.recv().await,
            Err(StreamError::Closed("the lease ended".into()))
        );
    }

    #[tokio::test]
    async fn a_stream_closed_and_let_go_answers_its_reason_not_a_lost_link() {
        let (out, _queue) = mpsc::channel(8);
        let (handle, _tx, mut rx) = open(StreamId(4), 0, 10, out);
        // What the registry does at a lease's end: close, then drop its handle.
        handle.close("lease 1 has ended: released");
        drop(handle);
        assert_eq!(
            rx.recv().await,
            Err(StreamError::Closed("lease 1 has ended: released".into()))
        );
    }

    #[tokio::test]
    async fn pump_carries_both_directions_to_their_end() {
        let (a_out, a_queue) = mpsc::channel(64);
        let (b_out, b_queue) = mpsc::channel(64);
        let a_handles = Arc::new(Mutex::new(Vec::new()));
        let b_handles = Arc::new(Mutex::new(Vec::new()));
        wire(a_queue, b_handles.clone());
        wire(b_queue, a_handles.clone());
        let (ha, ta, mut ra) = open(StreamId(9), 1 << 16, 1 << 16, a_out);
        let (hb, tb, mut rb) = open(StreamId(9), 1 << 16, 1 << 16, b_out);
        a_handles.lock().unwrap().push(ha);
        b_handles.lock().unwrap().push(hb);
        // Side B is a local echo-less peer: it sends 1 MiB and reads what A sends.
        let (local, mut far) = tokio::io::duplex(4096);
        let (local_r, local_w) = tokio::io::split(local);
        let pumping = tokio::spawn(async move { pump(&ta, &mut ra, local_r, local_w).await });
        let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 13) as u8).collect();
        let expect = data.clone();
        let b_side = tokio::spawn(async move {
            tb.send(&data).await.unwrap();
            tb.finish().await.unwrap();
            let mut got = Vec::new();
            while let Some(bytes) = rb.recv().await.unwrap() {
                got.extend(bytes);
            }
            got
        });
        let mut received = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let n = far.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            received.extend_from_slice(&buf[..n]);
        }
        assert_eq!(received, expect);
        far.write_all(b"reply").await.unwrap();
        far.shutdown().await.unwrap();
        drop(far);
        assert_eq!(b_side.await.unwrap(), b"reply");
        assert_eq!(pumping.await.unwrap(), PumpEnd::Done);
    }
}
