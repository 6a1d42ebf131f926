//! The console pump: one task owns a console's output and fans it out.
//!
//! ```text
//!  device ──read──> pump task ──> recorder (inline, every byte, never waits)
//!                       │
//!                       └──> history ring (bounded) <── Viewer (own cursor) × n
//!                                                       (expect engine, people)
//! ```
//!
//! Invariants:
//! - Exactly one task reads the device's console; it reads whenever bytes come, whoever is
//!   watching, so the device is never stalled by a reader (QEMU blocks when its socket fills).
//! - The recorder sees every byte, in order, before any viewer can (it must not block: an
//!   unbounded queue or a buffered file write).
//! - Memory is bounded: one ring of at most `history` bytes per console, shared by all viewers;
//!   a viewer is a cursor into it, not a queue of its own.
//! - A viewer that falls more than the ring behind **skips ahead** to the oldest byte kept, and
//!   the bytes it missed are counted ([`Chunk::Skipped`], [`Viewer::skipped`]). It is never
//!   dropped for being slow, and it never slows the pump, the recorder or another viewer.
//! - A new viewer replays at most what the ring holds ([`ConsoleHub::subscribe_with_history`]).
//! - Reads through [`tokio::io::AsyncRead`] are cancel-safe: a dropped read loses no byte.
//! - When the console ends (end of stream, read error, or the hub dropped), viewers read what
//!   is left and then end of stream; dropping the hub stops its tasks.
//! - Input has one writer task too: every [`ConsoleInput`] (a job's shell, later an
//!   interactive viewer allowed to type) queues whole writes on one bounded queue, so writes
//!   never interleave inside one `write` call and a stuck device only blocks its writers.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Default bytes of history a console keeps (what a late viewer can replay, and how far a
/// slow viewer may fall behind before it skips).
pub const DEFAULT_HISTORY: usize = 1 << 20;
/// Bytes read from the device per read call.
const READ_CHUNK: usize = 16 << 10;
/// Writes queued for the device before writers wait.
const INPUT_QUEUE: usize = 64;

/// Receives every console byte as it is read. Called on the pump task: it must not block.
pub type Recorder = Box<dyn FnMut(&[u8]) + Send>;

/// Why a console ended, as the pump saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleEnd {
    /// Still open.
    Open,
    /// The device closed its console (end of stream).
    Closed,
    /// Reading failed.
    Failed(String),
}

/// What a viewer reads next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// Console bytes, in order.
    Bytes(Vec<u8>),
    /// The viewer fell behind the history and skipped this many bytes; what comes next is
    /// the oldest byte still kept.
    Skipped(u64),
    /// The console ended and everything before the end was read.
    End(ConsoleEnd),
}

struct Ring {
    /// The most recent bytes, at most `capacity`.
    bytes: VecDeque<u8>,
    capacity: usize,
    /// Bytes ever written: `bytes` holds offsets `written - bytes.len() .. written`.
    written: u64,
    end: ConsoleEnd,
    wakers: HashMap<u64, Waker>,
    next_viewer: u64,
}

impl Ring {
    fn oldest(&self) -> u64 {
        self.written - self.bytes.len() as u64
    }

    fn push(&mut self, data: &[u8]) {
        self.written += data.len() as u64;
        let data = &data[data.len().saturating_sub(self.capacity)..];
        let excess = (self.bytes.len() + data.len()).saturating_sub(self.capacity);
        self.bytes.drain(..excess);
        self.bytes.extend(data);
        self.wake_all();
    }

    fn wake_all(&mut self) {
        for (_, waker) in self.wakers.drain() {
            waker.wake();
        }
    }
}

struct Shared {
    ring: Mutex<Ring>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Ring> {
        // A panic while holding the lock leaves the ring consistent (every update is one
        // call), so a poisoned lock is still usable.
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The handle to one console's pump: subscribe viewers, see how it ended.
pub struct ConsoleHub {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    input: mpsc::Sender<Vec<u8>>,
    input_task: JoinHandle<()>,
}

impl std::fmt::Debug for ConsoleHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ring = self.shared.lock();
        f.debug_struct("ConsoleHub")
            .field("written", &ring.written)
            .field("end", &ring.end)
            .finish()
    }
}

impl ConsoleHub {
    /// Starts the pump over `reader` and the input task over `writer`, with
    /// [`DEFAULT_HISTORY`].
    pub fn spawn<R, W>(reader: R, writer: W, recorder: Recorder) -> ConsoleHub
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        ConsoleHub::with_history(reader, writer, recorder, DEFAULT_HISTORY)
    }

    /// Starts the pump over `reader` (keeping `history` bytes, at least 1) and the input task
    /// over `writer`.
    pub fn with_history<R, W>(
        mut reader: R,
        mut writer: W,
        mut recorder: Recorder,
        history: usize,
    ) -> ConsoleHub
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (input, mut queued) = mpsc::channel::<Vec<u8>>(INPUT_QUEUE);
        let input_task = tokio::spawn(async move {
            while let Some(bytes) = queued.recv().await {
                // A failed write ends input: dropping the queue fails every later write.
                if writer.write_all(&bytes).await.is_err() || writer.flush().await.is_err() {
                    break;
                }
            }
        });
        let capacity = history.max(1);
        let shared = Arc::new(Shared {
            ring: Mutex::new(Ring {
                bytes: VecDeque::with_capacity(capacity.min(READ_CHUNK)),
                capacity,
                written: 0,
                end: ConsoleEnd::Open,
                wakers: HashMap::new(),
                next_viewer: 0,
            }),
        });
        let pump = shared.clone();
        let task = tokio::spawn(async move {
            let mut chunk = vec![0u8; READ_CHUNK];
            let end = loop {
                match reader.read(&mut chunk).await {
                    Ok(0) => break ConsoleEnd::Closed,
                    Ok(n) => {
                        recorder(&chunk[..n]);
                        pump.lock().push(&chunk[..n]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break ConsoleEnd::Failed(e.to_string()),
                }
            };
            let mut ring = pump.lock();
            ring.end = end;
            ring.wake_all();
        });
        ConsoleHub {
            shared,
            task,
            input,
            input_task,
        }
    }

    /// A handle that types on the console.
    pub fn input(&self) -> ConsoleInput {
        ConsoleInput {
            sender: self.input.clone(),
            reserving: None,
        }
    }

    /// A viewer that reads from now on (no history).
    pub fn subscribe(&self) -> Viewer {
        self.subscribe_with_history(0)
    }

    /// A viewer that first replays up to `bytes` of history (as much as the ring holds).
    pub fn subscribe_with_history(&self, bytes: usize) -> Viewer {
        subscribe(&self.shared, bytes)
    }

    /// A handle that subscribes viewers and types on this console without owning it (for
    /// whoever serves people's viewers while the rig owns the hub). Once the hub is dropped
    /// its viewers read to the end and its input fails.
    pub fn tap(&self) -> ConsoleTap {
        ConsoleTap {
            shared: self.shared.clone(),
            input: self.input.clone(),
        }
    }

    /// A viewer that reads from the console's first byte, if the ring still holds it (else it
    /// starts with a [`Chunk::Skipped`]).
    pub fn subscribe_from_start(&self) -> Viewer {
        let mut ring = self.shared.lock();
        let id = ring.next_viewer;
        ring.next_viewer += 1;
        Viewer {
            shared: self.shared.clone(),
            id,
            cursor: 0,
            skipped: 0,
        }
    }

    /// Waits until the pump has read the console to its end (the device closed it).
    pub async fn closed(&mut self) {
        let _ = (&mut self.task).await;
    }

    /// Bytes read from the device so far.
    pub fn written(&self) -> u64 {
        self.shared.lock().written
    }

    /// Whether and how the console ended.
    pub fn end(&self) -> ConsoleEnd {
        self.shared.lock().end.clone()
    }
}

impl Drop for ConsoleHub {
    fn drop(&mut self) {
        self.task.abort();
        self.input_task.abort();
        let mut ring = self.shared.lock();
        if ring.end == ConsoleEnd::Open {
            ring.end = ConsoleEnd::Closed;
        }
        ring.wake_all();
    }
}

fn subscribe(shared: &Arc<Shared>, bytes: usize) -> Viewer {
    let mut ring = shared.lock();
    let id = ring.next_viewer;
    ring.next_viewer += 1;
    let cursor = ring.written - (bytes as u64).min(ring.bytes.len() as u64);
    Viewer {
        shared: shared.clone(),
        id,
        cursor,
        skipped: 0,
    }
}

/// A clonable handle to a console's pump ([`ConsoleHub::tap`]): viewers and input, nothing
/// that keeps the pump alive.
#[derive(Clone)]
pub struct ConsoleTap {
    shared: Arc<Shared>,
    input: mpsc::Sender<Vec<u8>>,
}

impl std::fmt::Debug for ConsoleTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleTap")
            .field("end", &self.shared.lock().end)
            .finish()
    }
}

impl ConsoleTap {
    /// A viewer that first replays up to `bytes` of history.
    pub fn subscribe_with_history(&self, bytes: usize) -> Viewer {
        subscribe(&self.shared, bytes)
    }

    /// A handle that types on the console.
    pub fn input(&self) -> ConsoleInput {
        ConsoleInput {
            sender: self.input.clone(),
            reserving: None,
        }
    }

    /// Whether and how the console ended.
    pub fn end(&self) -> ConsoleEnd {
        self.shared.lock().end.clone()
    }
}

/// One reader of a console: a cursor into its hub's history.
pub struct Viewer {
    shared: Arc<Shared>,
    id: u64,
    cursor: u64,
    skipped: u64,
}

impl std::fmt::Debug for Viewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Viewer")
            .field("cursor", &self.cursor)
            .field("skipped", &self.skipped)
            .finish()
    }
}

impl Viewer {
    /// Total bytes this viewer skipped because it fell behind.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Reads the next chunk (at most `max` bytes), waiting for one.
    pub async fn next_chunk(&mut self, max: usize) -> Chunk {
        std::future::poll_fn(|cx| self.poll_chunk(cx, max.max(1))).await
    }

    fn poll_chunk(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<Chunk> {
        let shared = self.shared.clone();
        let mut ring = shared.lock();
        let oldest = ring.oldest();
        if self.cursor < oldest {
            let missed = oldest - self.cursor;
            self.cursor = oldest;
            self.skipped += missed;
            return Poll::Ready(Chunk::Skipped(missed));
        }
        if self.cursor < ring.written {
            let start = usize::try_from(self.cursor - oldest).unwrap_or(usize::MAX);
            let n = (ring.bytes.len() - start).min(max);
            let bytes: Vec<u8> = ring.bytes.range(start..start + n).copied().collect();
            self.cursor += n as u64;
            return Poll::Ready(Chunk::Bytes(bytes));
        }
        if ring.end != ConsoleEnd::Open {
            return Poll::Ready(Chunk::End(ring.end.clone()));
        }
        ring.wakers.insert(self.id, cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncRead for Viewer {
    /// Console bytes; skips are counted in [`Viewer::skipped`] and read on past; end of
    /// stream when the console ended (a read error of the device also reads as its end:
    /// [`ConsoleHub::end`] tells which).
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            match this.poll_chunk(cx, buf.remaining()) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Chunk::Skipped(_)) => continue,
                Poll::Ready(Chunk::Bytes(b)) => {
                    buf.put_slice(&b);
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Chunk::End(_)) => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.shared.lock().wakers.remove(&self.id);
    }
}

type Reserving = Pin<
    Box<dyn Future<Output = Result<mpsc::OwnedPermit<Vec<u8>>, mpsc::error::SendError<()>>> + Send>,
>;

/// Types on a console: each `write` is queued whole for the console's input task. Flushing
/// returns once queued; the bytes reach the device in queue order.
pub struct ConsoleInput {
    sender: mpsc::Sender<Vec<u8>>,
    reserving: Option<Reserving>,
}

impl Clone for ConsoleInput {
    fn clone(&self) -> Self {
        ConsoleInput {
            sender: self.sender.clone(),
            reserving: None,
        }
    }
}

impl std::fmt::Debug for ConsoleInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleInput")
            .field("closed", &self.sender.is_closed())
            .finish()
    }
}

impl AsyncWrite for ConsoleInput {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let sender = this.sender.clone();
        let reserving = this
            .reserving
            .get_or_insert_with(|| Box::pin(sender.reserve_owned()));
        match reserving.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => {
                this.reserving = None;
                match result {
                    Ok(permit) => {
                        permit.send(buf.to_vec());
                        Poll::Ready(Ok(buf.len()))
                    }
                    Err(_) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the console is closed",
                    ))),
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    fn counting_recorder() -> (Recorder, Arc<Mutex<Vec<u8>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        (
            Box::new(move |b: &[u8]| sink.lock().unwrap().extend_from_slice(b)),
            seen,
        )
    }

    async fn read_all(viewer: &mut Viewer) -> (Vec<u8>, u64) {
        let mut bytes = Vec::new();
        loop {
            match viewer.next_chunk(4096).await {
                Chunk::Bytes(b) => bytes.extend(b),
                Chunk::Skipped(_) => {}
                Chunk::End(_) => return (bytes, viewer.skipped()),
            }
        }
    }

    #[tokio::test]
    async fn a_viewer_that_never_reads_blocks_neither_the_device_nor_others() {
        let (mut device, console) = tokio::io::duplex(1024);
        let (recorder, recorded) = counting_recorder();
        let hub = ConsoleHub::with_history(console, tokio::io::sink(), recorder, 4096);
        let stuck = hub.subscribe_from_start();
        let mut live = hub.subscribe_from_start();
        let total: usize = 1 << 20;
        let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        let mut got = Vec::new();
        // The duplex pipe holds 1 KiB: the device only gets each piece out because the pump
        // keeps reading, and the live viewer gets each piece while the stuck one holds none.
        for piece in data.chunks(1000) {
            device.write_all(piece).await.unwrap();
            let want = got.len() + piece.len();
            while got.len() < want {
                match live.next_chunk(512).await {
                    Chunk::Bytes(b) => got.extend(b),
                    other => panic!("a reading viewer got {other:?}"),
                }
            }
        }
        drop(device);
        assert_eq!(live.next_chunk(512).await, Chunk::End(ConsoleEnd::Closed));
        assert_eq!(got, data);
        assert_eq!(*recorded.lock().unwrap(), data);
        assert_eq!(hub.written(), total as u64);
        // The viewer that never read now finds only the last 4 KiB, and says what it missed.
        let mut stuck = stuck;
        let (tail, skipped) = read_all(&mut stuck).await;
        assert_eq!(tail, data[total - 4096..]);
        assert_eq!(skipped, (total - 4096) as u64);
    }

    #[tokio::test]
    async fn a_late_viewer_replays_bounded_history_then_reads_live() {
        let (mut device, console) = tokio::io::duplex(1024);
        let (recorder, _) = counting_recorder();
        let hub = ConsoleHub::with_history(console, tokio::io::sink(), recorder, 100);
        device.write_all(&[b'a'; 300]).await.unwrap();
        while hub.written() < 300 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut late = hub.subscribe_with_history(40);
        let mut all = hub.subscribe_with_history(usize::MAX);
        let mut live = hub.subscribe();
        device.write_all(b"login: ").await.unwrap();
        drop(device);
        let (late_bytes, late_skipped) = read_all(&mut late).await;
        assert_eq!(late_bytes, [&[b'a'; 40][..], b"login: "].concat());
        assert_eq!(late_skipped, 0);
        // `all` started at the oldest byte kept; the 7 new bytes pushed 7 of its unread ones
        // out of the ring, so it skipped them.
        let (all_bytes, all_skipped) = read_all(&mut all).await;
        assert_eq!(all_bytes, [&[b'a'; 93][..], b"login: "].concat());
        assert_eq!(all_skipped, 7);
        assert_eq!(read_all(&mut live).await.0, b"login: ");
        let mut from_start = hub.subscribe_from_start();
        assert_eq!(from_start.next_chunk(10).await, Chunk::Skipped(207));
    }

    #[tokio::test]
    async fn viewers_read_through_async_read_and_end_when_the_hub_goes() {
        let (mut device, console) = tokio::io::duplex(64);
        let (recorder, _) = counting_recorder();
        let hub = ConsoleHub::spawn(console, tokio::io::sink(), recorder);
        let mut viewer = hub.subscribe();
        device.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        viewer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        // A pending read is woken by the hub going away.
        let reader = tokio::spawn(async move {
            let mut rest = Vec::new();
            viewer.read_to_end(&mut rest).await.unwrap();
            rest
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(hub);
        assert!(reader.await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn many_viewers_each_get_every_byte() {
        let (mut device, console) = tokio::io::duplex(256);
        let counted = Arc::new(AtomicU64::new(0));
        let count = counted.clone();
        let hub = ConsoleHub::with_history(
            console,
            tokio::io::sink(),
            Box::new(move |b: &[u8]| {
                count.fetch_add(b.len() as u64, Ordering::Relaxed);
            }),
            1 << 20,
        );
        let readers: Vec<_> = (0..20)
            .map(|_| {
                let mut v = hub.subscribe_from_start();
                tokio::spawn(async move { read_all(&mut v).await })
            })
            .collect();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();
        device.write_all(&data).await.unwrap();
        drop(device);
        for r in readers {
            let (bytes, skipped) = r.await.unwrap();
            assert_eq!(skipped, 0);
            assert_eq!(bytes, data);
        }
        assert_eq!(counted.load(Ordering::Relaxed), data.len() as u64);
    }

    #[tokio::test]
    async fn a_tap_replays_history_types_and_ends_with_its_hub() {
        let (device, console) = tokio::io::duplex(256);
        let (read, write) = tokio::io::split(console);
        let (mut device_read, mut device_write) = tokio::io::split(device);
        let (recorder, _) = counting_recorder();
        let hub = ConsoleHub::spawn(read, write, recorder);
        let tap = hub.tap().clone();
        device_write.write_all(b"login: ").await.unwrap();
        while hub.written() < 7 {
            tokio::task::yield_now().await;
        }
        let mut viewer = tap.subscribe_with_history(1024);
        tap.input().write_all(b"root\n").await.unwrap();
        let mut typed = [0u8; 5];
        device_read.read_exact(&mut typed).await.unwrap();
        assert_eq!(&typed, b"root\n");
        drop(hub);
        let (bytes, skipped) = read_all(&mut viewer).await;
        assert_eq!((bytes.as_slice(), skipped), (&b"login: "[..], 0));
        assert_eq!(tap.end(), ConsoleEnd::Closed);
    }

    #[tokio::test]
    async fn input_from_several_writers_reaches_the_device_whole_and_in_order() {
        let (device, console) = tokio::io::duplex(64);
        let (read, write) = tokio::io::split(console);
        let (mut device_read, _device_write) = tokio::io::split(device);
        let (recorder, _) = counting_recorder();
        let hub = ConsoleHub::spawn(read, write, recorder);
        let mut first = hub.input();
        let mut second = hub.input();
        first.write_all(b"ls /\n").await.unwrap();
        second.write_all(b"uname -a\n").await.unwrap();
        first.write_all(&[b'x'; 1000]).await.unwrap();
        let mut got = vec![0u8; 5 + 9 + 1000];
        device_read.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..14], b"ls /\nuname -a\n");
        assert!(got[14..].iter().all(|&b| b == b'x'));
        drop(hub);
        // The input task goes at its next turn; from then on writes fail.
        let e = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Err(e) = first.write_all(b"late").await {
                    return e;
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }
}
