//! Scenario `followers`: end-to-end latency seen by live log followers.
//!
//! `jobs` agents with one device each get one job each and answer `JobStarted`. Then
//! `followers` WebSockets (`GET /api/v1/jobs/{id}/logs/follow?cursor=0`, 64 handshakes in
//! flight) are spread round-robin over the jobs; each is counted as live once it got its first
//! event. Then every agent sends `rate` lines per second for `secs` seconds, in one frame every
//! 100 ms, each job at its own phase of the 100 ms (agents are not in step). Each line starts
//! with `t=<wall-clock microseconds when the frame was built>`. A follower's latency for a
//! line is its wall clock when it parsed the line minus that stamp:
//! agent queue + socket + controller (decode, store, fan-out, JSON) + socket + follower parse.
//! Both ends run in this process, on one clock.

use crate::agent::{self, Behaviour, Dial, Oddities, Outbox, StartJob};
use crate::server::{self, Controller};
use crate::stats::Summary;
use crate::submit::{definition, log_note};
use anyhow::{Context, bail};
use futures_util::StreamExt;
use proto::api::FollowEvent;
use proto::{LeaseId, Seq};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

pub struct Params {
    pub followers: usize,
    pub jobs: usize,
    pub rate: u64,
    pub secs: u64,
}

const TICK: Duration = Duration::from_millis(100);

struct Bench {
    per_tick: u64,
    ticks: u64,
    go: watch::Receiver<bool>,
    started: AtomicU64,
    jobs: Mutex<Vec<proto::JobId>>,
    stored: Mutex<HashMap<LeaseId, u64>>,
}

impl Behaviour for Bench {
    fn start(self: Arc<Self>, out: Outbox, job: StartJob) {
        tokio::spawn(async move {
            if out.started(&job).await.is_err() {
                return;
            }
            self.jobs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(job.job);
            self.started.fetch_add(1, Ordering::Relaxed);
            let mut go = self.go.clone();
            if go.wait_for(|g| *g).await.is_err() {
                return;
            }
            let began = Instant::now();
            // Agents are not in step: each job's ticks start at its own phase of the period.
            let phase = Duration::from_millis(job.job.0.wrapping_mul(37) % 100);
            let mut tick = tokio::time::interval_at((began + phase).into(), TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seq = 1;
            for _ in 0..self.ticks {
                tick.tick().await;
                let stamp = agent::wall_micros();
                let texts = (seq..seq + self.per_tick)
                    .map(|s| format!("t={stamp} job {} line {s} bench follower text", job.job))
                    .collect();
                if out
                    .frame(&agent::console_frame(&job, seq, texts))
                    .await
                    .is_err()
                {
                    return;
                }
                seq += self.per_tick;
            }
            let last = seq - 1;
            while self.stored_of(job.lease) < last {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let _ = out.finished(&job, last, began.elapsed()).await;
        });
    }

    fn log_acked(&self, lease: LeaseId, stored: Seq) {
        let mut map = self.stored.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(lease).or_default();
        *entry = (*entry).max(stored.0);
    }
}

impl Bench {
    fn stored_of(&self, lease: LeaseId) -> u64 {
        self.stored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&lease)
            .copied()
            .unwrap_or(0)
    }
}

/// What one follower saw.
#[derive(Default)]
struct Seen {
    latencies_ms: Vec<f64>,
    ended: bool,
    error: Option<String>,
}

/// Opens a follow stream and waits for its first event.
async fn open_follower(
    url: String,
    token: String,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> anyhow::Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
> {
    let mut ws = agent::open(&url, &token, tls).await?;
    match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
        Ok(Some(Ok(Message::Text(_)))) => Ok(ws),
        Ok(other) => bail!("follow stream {url}: first message {other:?}"),
        Err(_) => bail!("follow stream {url}: no first event within 60 s"),
    }
}

async fn follow(
    mut ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Seen {
    let mut seen = Seen::default();
    while let Some(incoming) = ws.next().await {
        let text = match incoming {
            Ok(Message::Text(text)) => text,
            Ok(Message::Close(_)) => break,
            Ok(_) => continue,
            Err(e) => {
                seen.error = Some(e.to_string());
                break;
            }
        };
        match serde_json::from_str::<FollowEvent>(text.as_str()) {
            Ok(FollowEvent::Log { record }) => {
                let now = agent::wall_micros();
                if let Some(stamp) = record
                    .text
                    .strip_prefix("t=")
                    .and_then(|t| t.split(' ').next())
                    .and_then(|t| t.parse::<u128>().ok())
                {
                    seen.latencies_ms
                        .push(now.saturating_sub(stamp) as f64 / 1000.0);
                }
            }
            Ok(FollowEvent::End { .. }) => {
                seen.ended = true;
                break;
            }
            Ok(FollowEvent::Job { .. }) => {}
            Err(e) => {
                seen.error = Some(format!("unreadable event: {e}"));
                break;
            }
        }
    }
    seen
}

pub async fn run(ctl: &mut Controller, p: &Params) -> anyhow::Result<Value> {
    let user = ctl.token("bench-user", "user").await?;
    let dial = Dial::new(&ctl.ws_url(""), ctl);
    let per_tick = p.rate.div_ceil(10).max(1);
    let ticks = p.secs * 10;
    let (go_tx, go) = watch::channel(false);
    let bench = Arc::new(Bench {
        per_tick,
        ticks,
        go,
        started: AtomicU64::new(0),
        jobs: Mutex::new(Vec::new()),
        stored: Mutex::new(HashMap::new()),
    });
    let odd = Arc::new(Oddities::default());
    let agents = agent::connect_many(
        std::slice::from_ref(&dial),
        "f",
        0..p.jobs,
        1,
        64,
        Arc::clone(&bench) as Arc<dyn Behaviour>,
        Arc::clone(&odd),
    )
    .await?;
    for n in 0..p.jobs {
        ctl.submit(&user, &definition(n)).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while bench.started.load(Ordering::Relaxed) < p.jobs as u64 {
        ctl.check_alive()?;
        if Instant::now() > deadline {
            bail!("only some of {} follow jobs started within 60 s", p.jobs);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let jobs = bench.jobs.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let began = Instant::now();
    let mut streams = Vec::with_capacity(p.followers);
    {
        let mut pending = futures_util::stream::iter((0..p.followers).map(|i| {
            let job = jobs[i % jobs.len()];
            let url = ctl.ws_url(&format!("/api/v1/jobs/{job}/logs/follow?cursor=0"));
            open_follower(url, user.clone(), ctl.tls.clone())
        }))
        .buffered(64);
        while let Some(ws) = pending.next().await {
            streams.push(ws.context("cannot open a follower")?);
        }
    }
    let connect_secs = began.elapsed().as_secs_f64();
    let followers: Vec<_> = streams
        .into_iter()
        .map(|ws| tokio::spawn(follow(ws)))
        .collect();
    let cpu0 = ctl.cpu();
    let threads0 = ctl.thread_cpu();
    let mem0 = ctl.memory()?;
    go_tx.send(true)?;
    let streaming = Instant::now();
    let limit = Duration::from_secs(p.secs + 60);
    let mut seen = Vec::with_capacity(followers.len());
    let mut timed_out = 0;
    for f in followers {
        let left = limit.saturating_sub(streaming.elapsed());
        match tokio::time::timeout(left, f).await {
            Ok(Ok(s)) => seen.push(s),
            Ok(Err(e)) => bail!("a follower task failed: {e}"),
            Err(_) => timed_out += 1,
        }
        ctl.check_alive()?;
    }
    let secs = streaming.elapsed().as_secs_f64();
    let cpu = ctl.cpu() - cpu0;
    let threads = server::cpu_delta(&threads0, &ctl.thread_cpu());
    let mem = ctl.memory()?;
    drop(agents);
    let (log, cpu_total) = ctl.stop();

    let expected = per_tick * ticks;
    let mut all: Vec<f64> = Vec::new();
    let mut short = 0;
    let mut not_ended = timed_out;
    let mut errors = Vec::new();
    for s in &seen {
        if (s.latencies_ms.len() as u64) < expected {
            short += 1;
        }
        if !s.ended {
            not_ended += 1;
        }
        if let Some(e) = &s.error {
            errors.push(e.clone());
        }
        all.extend_from_slice(&s.latencies_ms);
    }
    let delivered = all.len();
    let summary = Summary::of_ms(&mut all);
    let met = summary.count > 0 && summary.p99 <= 250.0 && short == 0;
    let line = format!(
        "followers: {} followers on {} running jobs, {} lines/s per job ({} per 100 ms frame) \
         for {} s: end-to-end latency {} [goal p99 <= 250 ms: {}]; delivered {delivered} of {} \
         line events ({short} followers short, {not_ended} without end){}; followers connected \
         in {connect_secs:.1} s; controller CPU {cpu:.1} s over {secs:.1} s ({}); {} before, {} after{}{}",
        p.followers,
        p.jobs,
        per_tick * 10,
        per_tick,
        p.secs,
        summary.text(),
        if met { "met" } else { "NOT met" },
        expected * p.followers as u64,
        errors
            .first()
            .map(|e| format!(", first follower error: {e}"))
            .unwrap_or_default(),
        server::cpu_text(&threads),
        mem0.text(),
        mem.text(),
        odd.text()
            .map(|t| format!("; ODD: {t}"))
            .unwrap_or_default(),
        log_note(&log),
    );
    Ok(json!({
        "line": line,
        "followers": p.followers,
        "jobs": p.jobs,
        "lines_per_s_per_job": per_tick * 10,
        "seconds": p.secs,
        "latency": summary.json(),
        "delivered": delivered,
        "expected": expected * p.followers as u64,
        "followers_short": short,
        "followers_without_end": not_ended,
        "follower_errors": errors.len(),
        "followers_connect_s": connect_secs,
        "controller_cpu_s": cpu,
        "controller_thread_cpu_s": threads,
        "memory_before": mem0.json(),
        "memory_after": mem.json(),
        "goal_p99_ms": 250,
        "goal_met": met,
        "oddities": odd.text(),
        "controller_log_lines": log.len(),
        "controller_cpu_total_s": cpu_total,
    }))
}
