//! Scenarios `console-rtt`, `forward` and `viewers` against a simulated agent: what dutlab's
//! own path (client WebSocket -> controller -> agent link -> back) costs, without a DUT.
//!
//! The simulated agent ([`connect`]) keeps one device for a person's lease (it answers
//! `StartSession`) and runs jobs on the others. Its streams, by target:
//! - console with input: echoes every byte typed (a DUT that echoes instantly);
//! - console read-only: prints `console_rate` bytes per second to each viewer, as the real
//!   agent fans one console out to its viewers;
//! - TCP port [`SINK_PORT`]: discards (counts) what comes; TCP port [`SOURCE_PORT`]: sends
//!   `source_bytes` as fast as credit allows, then end of stream.
//!
//! It grants credit the moment bytes arrive and sends only under the controller's credit,
//! so the numbers are the controller's and the link's, not a slow consumer's.
//! See `crates/loadbench/src/real.rs` for the same measurements through a real agent and
//! QEMU DUT.

use crate::agent::{self, Dial};
use crate::server::{self, Controller};
use crate::stats::Summary;
use anyhow::{Context, bail};
use client::stream::{Incoming, Target};
use futures_util::{SinkExt, StreamExt};
use proto::link::{AgentMessage, ControllerMessage, DeviceInfo, LogFrame};
use proto::log::{LogKind, LogRecord};
use proto::stream::{
    ConsoleInput, MAX_STREAM_CHUNK, STREAM_WINDOW, StreamId, StreamTarget, encode,
};
use proto::{Epoch, LeaseId, PersonLeaseId, Seq};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_tungstenite::tungstenite::Message;

/// TCP port of the simulated DUT that discards what it gets.
pub const SINK_PORT: u16 = 9;
/// TCP port of the simulated DUT that sends `source_bytes` and ends.
pub const SOURCE_PORT: u16 = 19;
/// The simulated agent's device kept for the person's lease.
const SESSION_DEVICE: &str = "sim-d0";

pub struct Params {
    /// Keystrokes timed (console-rtt).
    pub keystrokes: usize,
    /// Bytes carried each way (forward).
    pub forward_bytes: u64,
    /// Console viewers (viewers).
    pub viewers: usize,
    /// Bytes per second the console prints to each viewer (viewers).
    pub console_rate: u64,
    /// Log lines the job sends (viewers).
    pub log_lines: u64,
}

/// What the simulated agent counted.
#[derive(Default)]
struct Counters {
    /// Bytes discarded at the sink port.
    sunk: AtomicU64,
    sunk_changed: Notify,
    /// Highest `stored` acknowledged of the job's log.
    stored: AtomicU64,
    stored_changed: Notify,
    /// Bytes printed to viewers.
    printed: AtomicU64,
    /// Streams opened.
    opened: AtomicU64,
    unexpected: AtomicU64,
}

struct Sim {
    out: mpsc::Sender<Message>,
    counters: Arc<Counters>,
    source_bytes: u64,
    console_rate: u64,
    log_lines: u64,
    /// Send credit per open stream, and where its received bytes go (echo streams).
    streams: Mutex<HashMap<StreamId, Open>>,
}

struct Open {
    credit: Arc<Semaphore>,
    echo: Option<mpsc::UnboundedSender<Vec<u8>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

impl Sim {
    async fn json(&self, message: &AgentMessage) {
        if let Ok(text) = serde_json::to_string(message) {
            let _ = self.out.send(Message::text(text)).await;
        }
    }

    /// Sends `data` on `stream` once the controller granted it.
    async fn send_data(&self, stream: StreamId, credit: &Semaphore, data: &[u8]) -> bool {
        let n = u32::try_from(data.len()).unwrap_or(u32::MAX);
        if n > 0 {
            match credit.acquire_many(n).await {
                Ok(p) => p.forget(),
                Err(_) => return false,
            }
        }
        self.out
            .send(Message::binary(encode(stream, data)))
            .await
            .is_ok()
    }

    async fn open(self: &Arc<Self>, stream: StreamId, target: StreamTarget, window: u32) {
        let credit = Arc::new(Semaphore::new(window as usize));
        let mut open = Open {
            credit: credit.clone(),
            echo: None,
            task: None,
        };
        match target {
            StreamTarget::Console {
                input: ConsoleInput::Write,
            } => {
                let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
                open.echo = Some(tx);
                let sim = Arc::clone(self);
                let credit = credit.clone();
                open.task = Some(tokio::spawn(async move {
                    while let Some(bytes) = rx.recv().await {
                        if !sim.send_data(stream, &credit, &bytes).await {
                            return;
                        }
                    }
                }));
            }
            StreamTarget::Console {
                input: ConsoleInput::ReadOnly,
            } => {
                let sim = Arc::clone(self);
                let credit = credit.clone();
                open.task = Some(tokio::spawn(async move {
                    // 100 ticks a second, each printing rate/100 bytes.
                    let chunk =
                        vec![b'.'; usize::try_from(sim.console_rate / 100).unwrap_or(1).max(1)];
                    let mut tick = tokio::time::interval(Duration::from_millis(10));
                    loop {
                        tick.tick().await;
                        if !sim.send_data(stream, &credit, &chunk).await {
                            return;
                        }
                        sim.counters
                            .printed
                            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    }
                }));
            }
            StreamTarget::Tcp { port: SOURCE_PORT } => {
                let sim = Arc::clone(self);
                let credit = credit.clone();
                open.task = Some(tokio::spawn(async move {
                    let chunk = vec![0x5a_u8; MAX_STREAM_CHUNK];
                    let mut left = sim.source_bytes;
                    while left > 0 {
                        let n = usize::try_from(left).unwrap_or(usize::MAX).min(chunk.len());
                        if !sim.send_data(stream, &credit, &chunk[..n]).await {
                            return;
                        }
                        left -= n as u64;
                    }
                    sim.send_data(stream, &credit, &[]).await;
                }));
            }
            StreamTarget::Tcp { .. } => {}
        }
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(stream, open);
        self.counters.opened.fetch_add(1, Ordering::Relaxed);
        self.json(&AgentMessage::StreamOpened {
            stream,
            window: STREAM_WINDOW,
        })
        .await;
    }

    /// Bytes of `stream` from the controller: consumed at once (credit back), echoed on a
    /// console with input, counted at the sink.
    async fn data(&self, stream: StreamId, data: &[u8]) {
        let echo = {
            let streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
            match streams.get(&stream) {
                None => return,
                Some(open) => open.echo.clone(),
            }
        };
        if data.is_empty() {
            return;
        }
        match echo {
            Some(tx) => {
                let _ = tx.send(data.to_vec());
            }
            None => {
                self.counters
                    .sunk
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                self.counters.sunk_changed.notify_waiters();
            }
        }
        let bytes = u32::try_from(data.len()).unwrap_or(u32::MAX);
        self.json(&AgentMessage::StreamCredit { stream, bytes })
            .await;
    }

    fn credit(&self, stream: StreamId, bytes: u32) {
        if let Some(open) = self
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&stream)
        {
            open.credit.add_permits(bytes as usize);
        }
    }

    /// A job: `log_lines` console records of 80 bytes in frames of 1000, as fast as the
    /// link takes them.
    fn run_job(self: &Arc<Self>, lease: LeaseId, epoch: Epoch) {
        let sim = Arc::clone(self);
        tokio::spawn(async move {
            sim.json(&AgentMessage::JobStarted { lease, epoch }).await;
            let mut seq = 1;
            while seq <= sim.log_lines {
                let n = 1000.min(sim.log_lines - seq + 1);
                let at = agent::wall_ms();
                let records = (seq..seq + n)
                    .map(|s| LogRecord {
                        seq: Seq(s),
                        at,
                        kind: LogKind::Console,
                        text: format!("[{s:>9}] bench console output {:>48}", "x"),
                    })
                    .collect();
                let frame = LogFrame {
                    lease,
                    epoch,
                    records,
                };
                if sim.out.send(Message::binary(frame.encode())).await.is_err() {
                    return;
                }
                seq += n;
            }
        });
    }

    async fn handle(self: &Arc<Self>, message: ControllerMessage) {
        match message {
            ControllerMessage::StartSession { lease, epoch, .. } => {
                self.json(&AgentMessage::SessionStarted { lease, epoch })
                    .await;
            }
            ControllerMessage::StartJob { lease, epoch, .. } => self.run_job(lease, epoch),
            ControllerMessage::LogAcked { stored, .. } => {
                self.counters.stored.fetch_max(stored.0, Ordering::Relaxed);
                self.counters.stored_changed.notify_waiters();
            }
            ControllerMessage::OpenStream {
                stream,
                target,
                window,
                ..
            } => self.open(stream, target, window).await,
            ControllerMessage::StreamCredit { stream, bytes } => self.credit(stream, bytes),
            ControllerMessage::CloseStream { stream, .. } => {
                self.streams
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&stream);
            }
            ControllerMessage::DropLease { .. } | ControllerMessage::CancelJob { .. } => {}
            _ => {
                self.counters.unexpected.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A connected simulated agent (dropping it closes the link).
struct SimAgent {
    counters: Arc<Counters>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for SimAgent {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Connects agent `sim` with devices `sim-d0` (for the lease) and `sim-d1`.
async fn connect(dial: &Dial, p: &Params) -> anyhow::Result<SimAgent> {
    let name = "sim";
    let token = dial.token_for(name).await?;
    let ws = agent::open(&dial.url, &token, None).await?;
    let (mut sink, mut source) = ws.split();
    let devices = ["sim-d0", "sim-d1"]
        .iter()
        .map(|d| DeviceInfo {
            name: (*d).into(),
            device_type: agent::DEVICE_TYPE.into(),
            tags: Vec::new(),
            capabilities: vec!["power".into(), "console".into(), "network".into()],
        })
        .collect();
    let hello = AgentMessage::Hello {
        protocol: proto::link::PROTOCOL_VERSION,
        agent: name.into(),
        version: "loadbench".into(),
        devices,
        held: Vec::new(),
        sessions: Vec::new(),
    };
    sink.send(Message::text(serde_json::to_string(&hello)?))
        .await?;
    let heartbeat = loop {
        let Some(Ok(message)) = tokio::time::timeout(Duration::from_secs(30), source.next())
            .await
            .context("no welcome")?
        else {
            bail!("the link closed before welcome");
        };
        if let Message::Text(text) = message {
            match serde_json::from_str::<ControllerMessage>(text.as_str())? {
                ControllerMessage::Welcome { heartbeat_ms, .. } => {
                    break Duration::from_millis(heartbeat_ms.max(100));
                }
                other => bail!("{other:?} before welcome"),
            }
        }
    };
    let (out, mut rx) = mpsc::channel::<Message>(64);
    let counters = Arc::new(Counters::default());
    let sim = Arc::new(Sim {
        out: out.clone(),
        counters: counters.clone(),
        source_bytes: p.forward_bytes,
        console_rate: p.console_rate,
        log_lines: p.log_lines,
        streams: Mutex::default(),
    });
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
    });
    let beat = out.clone();
    let heartbeats = tokio::spawn(async move {
        let mut tick = tokio::time::interval(heartbeat);
        loop {
            tick.tick().await;
            let text = serde_json::to_string(&AgentMessage::Heartbeat).unwrap_or_default();
            if beat.send(Message::text(text)).await.is_err() {
                return;
            }
        }
    });
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = source.next().await {
            match message {
                Message::Text(text) => {
                    if let Ok(m) = serde_json::from_str::<ControllerMessage>(text.as_str()) {
                        sim.handle(m).await;
                    }
                }
                Message::Binary(bytes) => {
                    if let Ok((stream, data)) = proto::stream::decode(&bytes) {
                        sim.data(stream, data).await;
                    }
                }
                Message::Close(_) => return,
                _ => {}
            }
        }
    });
    Ok(SimAgent {
        counters,
        tasks: vec![reader, writer, heartbeats],
    })
}

/// A controller with the simulated agent connected and a person's lease on its session
/// device; answers the user's client and the lease.
async fn setup(
    ctl: &Controller,
    p: &Params,
) -> anyhow::Result<(SimAgent, client::Client, PersonLeaseId, String)> {
    let dial = Dial::new(&ctl.ws_url(""), ctl);
    let sim = connect(&dial, p).await?;
    let token = ctl.token("bench-user", "user").await?;
    let client = client::Client::new(&ctl.url(""), Some(token.clone()))?;
    let view = client
        .acquire_lease(&proto::api::AcquireLease {
            device: Some(SESSION_DEVICE.into()),
            duration_s: Some(3600),
            ..Default::default()
        })
        .await
        .context("acquiring the lease")?;
    // Streams open once the agent keeps the session: retry until it does.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.open_stream(view.id, Target::Tcp(SINK_PORT)).await {
            Ok(s) => {
                s.close().await;
                break;
            }
            Err(e) if Instant::now() > deadline => bail!("no stream within 30 s: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    Ok((sim, client, view.id, token))
}

/// Times `count` keystrokes on an open console: one byte typed, until a message holding
/// it comes back (history must have been read already).
pub async fn keystrokes(
    console: &mut client::stream::StreamSocket,
    count: usize,
    mut next_key: impl FnMut(usize) -> u8,
) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        let key = next_key(i);
        let t0 = Instant::now();
        console
            .send(vec![key])
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), console.next()).await {
                Ok(Incoming::Bytes(b)) if b.contains(&key) => break,
                Ok(Incoming::Bytes(_)) => {}
                Ok(other) => bail!("the console ended: {other:?}"),
                Err(_) => bail!("no echo of keystroke {i} within 10 s"),
            }
        }
        samples.push(t0.elapsed());
    }
    Ok(samples)
}

pub async fn console_rtt(ctl: &mut Controller, p: &Params) -> anyhow::Result<Value> {
    let (_sim, client, lease, _) = setup(ctl, p).await?;
    let mut console = client
        .open_stream(lease, Target::Console { write: true })
        .await?;
    // Warm up (allocations, the first frames), then measure.
    keystrokes(&mut console, 50, |_| b'w').await?;
    let samples = keystrokes(&mut console, p.keystrokes, |i| b'a' + (i % 26) as u8).await?;
    console.close().await;
    let s = Summary::of(&samples);
    let p95 = percentile(&samples, 0.95);
    Ok(json!({
        "line": format!(
            "console-rtt (simulated agent echoing): {} keystrokes: {}, p95 {} ms; goal p99 <= 10 ms: {}",
            p.keystrokes, s.text(), crate::stats::ms(p95), if s.p99 <= 10.0 { "met" } else { "NOT met" }
        ),
        "keystrokes": s.json(),
        "p95_ms": crate::stats::round3(p95),
        "controller_cpu_total_s": ctl.cpu(),
    }))
}

pub fn percentile(samples: &[Duration], p: f64) -> f64 {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    if ms.is_empty() {
        return 0.0;
    }
    let k = (p * ms.len() as f64).ceil() as usize;
    ms[k.clamp(1, ms.len()) - 1]
}

/// MB/s (10^6 bytes per second).
pub fn mb_per_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / 1e6 / took.as_secs_f64().max(1e-9)
}

pub async fn forward(ctl: &mut Controller, p: &Params) -> anyhow::Result<Value> {
    let (sim, client, lease, _) = setup(ctl, p).await?;
    // Upload: the client writes forward_bytes to the sink port as fast as the stream takes them.
    let mut up = client.open_stream(lease, Target::Tcp(SINK_PORT)).await?;
    let before = sim.counters.sunk.load(Ordering::Relaxed);
    let chunk = vec![0xa5_u8; 64 << 10];
    let t0 = Instant::now();
    let mut sent = 0;
    while sent < p.forward_bytes {
        let n = (p.forward_bytes - sent).min(chunk.len() as u64);
        up.send(chunk[..n as usize].to_vec())
            .await
            .map_err(|e| anyhow::anyhow!("upload: {e}"))?;
        sent += n;
    }
    let target = before + p.forward_bytes;
    let deadline = Instant::now() + Duration::from_secs(300);
    while sim.counters.sunk.load(Ordering::Relaxed) < target {
        let changed = sim.counters.sunk_changed.notified();
        if sim.counters.sunk.load(Ordering::Relaxed) >= target {
            break;
        }
        if tokio::time::timeout(Duration::from_millis(100), changed)
            .await
            .is_err()
            && Instant::now() > deadline
        {
            bail!(
                "the sink got {} of {target} bytes",
                sim.counters.sunk.load(Ordering::Relaxed)
            );
        }
    }
    let up_took = t0.elapsed();
    up.close().await;

    // Download: the simulated DUT sends forward_bytes; the client reads them all.
    let mut down = client.open_stream(lease, Target::Tcp(SOURCE_PORT)).await?;
    let t0 = Instant::now();
    let mut got = 0u64;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), down.next()).await {
            Ok(Incoming::Bytes(b)) => got += b.len() as u64,
            Ok(Incoming::Eof) => break,
            Ok(Incoming::End(e)) => bail!("download ended after {got} bytes: {e}"),
            Err(_) => bail!("download stalled after {got} bytes"),
        }
    }
    let down_took = t0.elapsed();
    down.close().await;
    if got != p.forward_bytes {
        bail!("downloaded {got} of {} bytes", p.forward_bytes);
    }
    let up_rate = mb_per_s(p.forward_bytes, up_took);
    let down_rate = mb_per_s(got, down_took);
    let met = |r: f64| if r >= 100.0 { "met" } else { "NOT met" };
    Ok(json!({
        "line": format!(
            "forward (simulated agent, dutlab's path alone): {} MB client->DUT {:.0} MB/s, DUT->client {:.0} MB/s; goal >= 100 MB/s: {} / {}",
            p.forward_bytes / 1_000_000, up_rate, down_rate, met(up_rate), met(down_rate)
        ),
        "bytes": p.forward_bytes,
        "upload_mb_s": crate::stats::round3(up_rate),
        "download_mb_s": crate::stats::round3(down_rate),
        "controller_cpu_total_s": ctl.cpu(),
    }))
}

/// Log lines stored per second while `viewers` read the session device's console.
async fn log_rate_with(ctl: &mut Controller, p: &Params, viewers: usize) -> anyhow::Result<Value> {
    let (sim, client, lease, token) = setup(ctl, p).await?;
    let received = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..viewers {
        let mut s = client
            .open_stream(lease, Target::Console { write: false })
            .await
            .context("opening a viewer")?;
        let received = received.clone();
        readers.push(tokio::spawn(async move {
            while let Incoming::Bytes(b) = s.next().await {
                received.fetch_add(b.len() as u64, Ordering::Relaxed);
            }
        }));
    }
    // Every viewer gets bytes before the log starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let viewed0 = received.load(Ordering::Relaxed);
    let job = ctl.submit(&token, &crate::submit::definition(0)).await?;
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(600);
    while sim.counters.stored.load(Ordering::Relaxed) < p.log_lines {
        let changed = sim.counters.stored_changed.notified();
        if sim.counters.stored.load(Ordering::Relaxed) >= p.log_lines {
            break;
        }
        if tokio::time::timeout(Duration::from_millis(100), changed)
            .await
            .is_err()
            && Instant::now() > deadline
        {
            bail!(
                "job {}: {} of {} lines stored",
                job.id,
                sim.counters.stored.load(Ordering::Relaxed),
                p.log_lines
            );
        }
    }
    // From the job's submission: includes its assignment (a few ms), not the log alone.
    let took = t0.elapsed();
    let viewed = received.load(Ordering::Relaxed) - viewed0;
    for r in readers {
        r.abort();
    }
    let rate = p.log_lines as f64 / took.as_secs_f64();
    Ok(json!({
        "viewers": viewers,
        "lines_per_s": rate.round(),
        "viewer_mb_s": crate::stats::round3(viewed as f64 / 1e6 / took.as_secs_f64()),
        "streams_opened": sim.counters.opened.load(Ordering::Relaxed),
        "unexpected": sim.counters.unexpected.load(Ordering::Relaxed),
    }))
}

/// The log rate with 0 viewers on `ctl`, then with `p.viewers` on a fresh controller.
pub async fn viewers(
    ctl: &mut Controller,
    dutlab: &std::path::Path,
    serve_args: &[String],
    p: &Params,
) -> anyhow::Result<Value> {
    let mut results = vec![log_rate_with(ctl, p, 0).await?];
    let mut second = Controller::start(dutlab, serve_args, false).await?;
    match log_rate_with(&mut second, p, p.viewers).await {
        Ok(v) => results.push(v),
        Err(e) => return Err(server::with_log(&mut second, e)),
    }
    second.stop();
    let ratio = results[1]["lines_per_s"].as_f64().unwrap_or(0.0)
        / results[0]["lines_per_s"].as_f64().unwrap_or(1.0).max(1.0);
    Ok(json!({
        "line": format!(
            "viewers (simulated agent): job log {} lines/s with 0 viewers, {} lines/s with {} viewers \
             of the other device's console ({} B/s each, {:.1} MB/s delivered to them): ratio {:.2}",
            results[0]["lines_per_s"], results[1]["lines_per_s"], p.viewers, p.console_rate,
            results[1]["viewer_mb_s"].as_f64().unwrap_or(0.0), ratio
        ),
        "runs": results,
        "ratio": crate::stats::round3(ratio),
        "controller_cpu_total_s": ctl.cpu(),
    }))
}
