//! Scenario `ingest`: log lines stored per second.
//!
//! `streams` agents with one device each get one job each. When every job has started, each
//! agent sends `lines` console records of 80 bytes in frames of 1000 as fast as its socket
//! takes them (the writer queue holds 8 messages), without waiting for acknowledgements.
//! The rate is the lines acknowledged by `LogAcked` (stored by the controller) divided by the
//! time from the first frame sent to the last acknowledgement.

use crate::agent::{self, Behaviour, Dial, Oddities, Outbox, StartJob};
use crate::server::{self, Controller};
use crate::submit::{definition, log_note};
use anyhow::bail;
use proto::{LeaseId, Seq};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub struct Params {
    pub streams: usize,
    pub lines: u64,
}

const FRAME_RECORDS: u64 = 1000;
const LINE_BYTES: usize = 80;

struct Bench {
    lines: u64,
    go: watch::Receiver<bool>,
    started: AtomicU64,
    /// Highest `stored` acknowledged per lease.
    stored: Mutex<HashMap<LeaseId, u64>>,
    acked: AtomicU64,
    first_sent: Mutex<Option<Instant>>,
    last_ack: Mutex<Option<Instant>>,
    finished: AtomicU64,
}

/// An 80-byte console line.
fn line(job: u64, seq: u64) -> String {
    let mut text = format!("[{job:>6}.{seq:>9}] bench console output ");
    while text.len() < LINE_BYTES {
        text.push(char::from(b'a' + (text.len() % 26) as u8));
    }
    text
}

impl Behaviour for Bench {
    fn start(self: Arc<Self>, out: Outbox, job: StartJob) {
        tokio::spawn(async move {
            if out.started(&job).await.is_err() {
                return;
            }
            self.started.fetch_add(1, Ordering::Relaxed);
            let mut go = self.go.clone();
            if go.wait_for(|g| *g).await.is_err() {
                return;
            }
            let began = Instant::now();
            {
                let mut first = self.first_sent.lock().unwrap_or_else(|p| p.into_inner());
                first.get_or_insert(began);
            }
            let mut seq = 1;
            while seq <= self.lines {
                let n = FRAME_RECORDS.min(self.lines - seq + 1);
                let texts = (seq..seq + n).map(|s| line(job.job.0, s)).collect();
                if out
                    .frame(&agent::console_frame(&job, seq, texts))
                    .await
                    .is_err()
                {
                    return;
                }
                seq += n;
            }
            // Finish once everything is stored (as a real agent would after its spool drains).
            while self.stored_of(job.lease) < self.lines {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let _ = out.finished(&job, self.lines, began.elapsed()).await;
        });
    }

    fn log_acked(&self, lease: LeaseId, stored: Seq) {
        let mut map = self.stored.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(lease).or_default();
        if stored.0 > *entry {
            self.acked.fetch_add(stored.0 - *entry, Ordering::Relaxed);
            *entry = stored.0;
            *self.last_ack.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
    }

    fn finish_acked(&self, _lease: LeaseId) {
        self.finished.fetch_add(1, Ordering::Relaxed);
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

pub async fn run(ctl: &mut Controller, p: &Params) -> anyhow::Result<Value> {
    let user = ctl.token("bench-user", "user").await?;
    let dial = Dial::new(&ctl.ws_url(""), ctl);
    let (go_tx, go) = watch::channel(false);
    let bench = Arc::new(Bench {
        lines: p.lines,
        go,
        started: AtomicU64::new(0),
        stored: Mutex::new(HashMap::new()),
        acked: AtomicU64::new(0),
        first_sent: Mutex::new(None),
        last_ack: Mutex::new(None),
        finished: AtomicU64::new(0),
    });
    let odd = Arc::new(Oddities::default());
    let agents = agent::connect_many(
        std::slice::from_ref(&dial),
        "ing",
        0..p.streams,
        1,
        64,
        Arc::clone(&bench) as Arc<dyn Behaviour>,
        Arc::clone(&odd),
    )
    .await?;
    for n in 0..p.streams {
        ctl.submit(&user, &definition(n)).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while bench.started.load(Ordering::Relaxed) < p.streams as u64 {
        ctl.check_alive()?;
        if Instant::now() > deadline {
            bail!(
                "only {} of {} ingest jobs started within 60 s",
                bench.started.load(Ordering::Relaxed),
                p.streams
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu0 = ctl.cpu();
    let threads0 = ctl.thread_cpu();
    let total = p.lines * p.streams as u64;
    go_tx.send(true)?;
    let mut last = 0;
    let mut since = Instant::now();
    loop {
        let acked = bench.acked.load(Ordering::Relaxed);
        if acked >= total {
            break;
        }
        if acked != last {
            last = acked;
            since = Instant::now();
        }
        if since.elapsed() > Duration::from_secs(30) {
            bail!(
                "stalled: {acked} of {total} lines acknowledged, none for 30 s; {}",
                odd.text().unwrap_or_default()
            );
        }
        ctl.check_alive()?;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let cpu = ctl.cpu() - cpu0;
    let threads = server::cpu_delta(&threads0, &ctl.thread_cpu());
    let first = bench
        .first_sent
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .unwrap_or_else(Instant::now);
    let end = bench
        .last_ack
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .unwrap_or_else(Instant::now);
    let secs = end.saturating_duration_since(first).as_secs_f64().max(1e-9);
    let rate = total as f64 / secs;
    let mem = ctl.memory()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while bench.finished.load(Ordering::Relaxed) < p.streams as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let finished = bench.finished.load(Ordering::Relaxed);
    drop(agents);
    let (log, cpu_total) = ctl.stop();
    let met = rate >= 200_000.0;
    let mib_s = rate * LINE_BYTES as f64 / (1 << 20) as f64;
    let line = format!(
        "ingest: {} streams x {} lines of {LINE_BYTES} bytes in frames of {FRAME_RECORDS}: \
         {rate:.0} lines/s stored ({mib_s:.1} MiB/s of text, {total} lines in {secs:.2} s) \
         [goal >= 200000 lines/s: {}]; controller CPU {cpu:.2} s in that time ({:.0} %: {}); {}; \
         {finished} of {} jobs finished{}{}",
        p.streams,
        p.lines,
        if met { "met" } else { "NOT met" },
        cpu / secs * 100.0,
        server::cpu_text(&threads),
        mem.text(),
        p.streams,
        odd.text()
            .map(|t| format!("; ODD: {t}"))
            .unwrap_or_default(),
        log_note(&log),
    );
    Ok(json!({
        "line": line,
        "streams": p.streams,
        "lines_per_stream": p.lines,
        "line_bytes": LINE_BYTES,
        "frame_records": FRAME_RECORDS,
        "lines_per_s": rate.round(),
        "seconds": secs,
        "controller_cpu_s": cpu,
        "controller_thread_cpu_s": threads,
        "memory": mem.json(),
        "jobs_finished": finished,
        "goal_lines_per_s": 200_000,
        "goal_met": met,
        "oddities": odd.text(),
        "controller_log_lines": log.len(),
        "controller_cpu_total_s": cpu_total,
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn lines_are_80_bytes() {
        assert_eq!(super::line(123, 456_789).len(), super::LINE_BYTES);
    }
}
