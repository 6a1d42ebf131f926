//! Scenario `rss`: the controller's memory with many connected agents.
//!
//! Agents connect (128 handshakes in flight), each with `devices_per_agent` devices, and stay
//! connected, idle, sending heartbeats. After each level is reached and 3 s have passed,
//! VmRSS and VmHWM are read from `/proc/<pid>/status`. Levels: `agents`, then 10 x `agents`
//! (the goal's two cases), then the same 10 x `agents` with one running job per agent that
//! has logged one line (so the controller holds the job's log open, as for any running job).

use crate::agent::{self, Behaviour, Dial, Oddities, Outbox, StartJob};
use crate::server::{Controller, Memory, mib};
use crate::submit::{definition, log_note};
use futures_util::StreamExt;
use proto::{LeaseId, Seq};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct Params {
    pub agents: usize,
    pub devices_per_agent: usize,
}

/// Agents whose jobs start, log one line and then run until the end of the scenario.
#[derive(Default)]
struct Hold {
    logged: AtomicU64,
    last: std::sync::Mutex<Option<Instant>>,
}

impl Behaviour for Hold {
    fn start(self: Arc<Self>, out: Outbox, job: StartJob) {
        tokio::spawn(async move {
            if out.started(&job).await.is_ok() {
                let text = vec![format!("bench job {} is running", job.job)];
                let _ = out.frame(&agent::console_frame(&job, 1, text)).await;
            }
        });
    }

    fn log_acked(&self, _lease: LeaseId, _stored: Seq) {
        self.logged.fetch_add(1, Ordering::Relaxed);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }
}

const GOAL_KIB: u64 = 1 << 20;

struct Level {
    agents: usize,
    running: usize,
    memory: Memory,
    secs: f64,
    fds: usize,
}

pub async fn run(ctl: &mut Controller, p: &Params) -> anyhow::Result<Value> {
    let dial = Dial::new(&ctl.ws_url(""), ctl);
    let user = ctl.token("bench-user", "user").await?;
    let base = ctl.memory()?;
    let odd = Arc::new(Oddities::default());
    let hold = Arc::new(Hold::default());
    let mut agents = Vec::new();
    let mut levels: Vec<Level> = Vec::new();
    for target in [p.agents, p.agents * 10] {
        let began = Instant::now();
        let more = agent::connect_many(
            std::slice::from_ref(&dial),
            "r",
            agents.len()..target,
            p.devices_per_agent,
            128,
            Arc::clone(&hold) as Arc<dyn Behaviour>,
            Arc::clone(&odd),
        )
        .await?;
        let secs = began.elapsed().as_secs_f64();
        agents.extend(more);
        tokio::time::sleep(Duration::from_secs(3)).await;
        ctl.check_alive()?;
        levels.push(Level {
            agents: target,
            running: 0,
            memory: ctl.memory()?,
            secs,
            fds: ctl.fds(),
        });
    }
    // One running job with an open log per agent.
    let jobs = agents.len();
    let began = Instant::now();
    {
        let ctl = &*ctl;
        let user = &user;
        let mut pending = futures_util::stream::iter(
            (0..jobs).map(|n| async move { ctl.submit(user, &definition(n)).await }),
        )
        .buffer_unordered(16);
        while let Some(r) = pending.next().await {
            r?;
        }
    }
    let submit_secs = began.elapsed().as_secs_f64();
    // Fails softly: jobs whose line was not stored within 10 s of the last one that was are
    // counted and reported.
    let mut seen = 0;
    let mut since = Instant::now();
    loop {
        let now = hold.logged.load(Ordering::Relaxed);
        if now >= jobs as u64 || since.elapsed() > Duration::from_secs(10) {
            break;
        }
        if now != seen {
            seen = now;
            since = Instant::now();
        }
        ctl.check_alive()?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let logged = hold.logged.load(Ordering::Relaxed);
    let secs = began.elapsed().as_secs_f64();
    let logged_secs = hold
        .last
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .map_or(secs, |t| t.saturating_duration_since(began).as_secs_f64());
    tokio::time::sleep(Duration::from_secs(3)).await;
    ctl.check_alive()?;
    let busy = Level {
        agents: jobs,
        running: jobs,
        memory: ctl.memory()?,
        secs,
        fds: ctl.fds(),
    };
    drop(agents);
    let (log, cpu_total) = ctl.stop();
    let met = levels.iter().all(|l| l.memory.hwm_kib <= GOAL_KIB);
    let per_agent = match (levels.first(), levels.last()) {
        (Some(a), Some(b)) if b.agents > a.agents => {
            (b.memory.rss_kib.saturating_sub(a.memory.rss_kib)) as f64
                / (b.agents - a.agents) as f64
        }
        _ => 0.0,
    };
    let idle_agents = levels.last().map_or(0, |l| l.agents);
    let idle_rss = levels.last().map_or(0, |l| l.memory.rss_kib);
    let per_job = busy.memory.rss_kib.saturating_sub(idle_rss) as f64 / jobs.max(1) as f64;
    let texts: Vec<String> = levels
        .iter()
        .map(|l| {
            format!(
                "{} agents: {} ({} threads, {} fds; connected in {:.1} s)",
                l.agents,
                l.memory.text(),
                l.memory.threads,
                l.fds,
                l.secs
            )
        })
        .collect();
    let line = format!(
        "rss: idle controller VmRSS {} MiB; {}; {per_agent:.1} KiB per extra agent \
         ({} device(s) each) [goal <= 1024 MiB: {}]; then {} agents with as many running jobs, \
         each with an open log: {} ({per_job:.1} KiB per running job over {idle_agents} idle agents; \
         submitted in {submit_secs:.1} s, last line stored after {logged_secs:.1} s){}{}{}",
        mib(base.rss_kib),
        texts.join("; "),
        p.devices_per_agent,
        if met { "met" } else { "NOT met" },
        busy.agents,
        busy.memory.text(),
        if logged < jobs as u64 {
            format!(
                "; ODD: only {logged} of {jobs} running jobs got their log line stored (LogAcked)"
            )
        } else {
            String::new()
        },
        odd.text()
            .map(|t| format!("; ODD: {t}"))
            .unwrap_or_default(),
        log_note(&log),
    );
    let level_json = |l: &Level| {
        json!({
            "agents": l.agents,
            "running_jobs": l.running,
            "memory": l.memory.json(),
            "connect_s": l.secs,
            "fds": l.fds,
        })
    };
    Ok(json!({
        "line": line,
        "devices_per_agent": p.devices_per_agent,
        "idle": base.json(),
        "levels": levels.iter().map(level_json).collect::<Vec<_>>(),
        "busy": level_json(&busy),
        "kib_per_extra_agent": per_agent,
        "kib_per_running_job": per_job,
        "running_jobs_logged": logged,
        "running_jobs_submit_s": submit_secs,
        "running_jobs_logged_s": logged_secs,
        "goal_kib": GOAL_KIB,
        "goal_met": met,
        "oddities": odd.text(),
        "controller_log_lines": log.len(),
        "controller_cpu_total_s": cpu_total,
    }))
}
