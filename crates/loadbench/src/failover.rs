//! Scenario `failover`: how long a lab of several controllers on one PostgreSQL database is
//! without a leader when the leader dies (`--store postgres --controllers N`, N >= 2).
//!
//! Agents dial the followers (agent `i` the `i`-th of them, round robin) and, like
//! `dutlab agent`, keep their link: when it closes they say hello again to the same
//! controller, and to the next one in their list when that one does not answer. Each round:
//! 1. `WARM_JOBS` jobs run through the followers (submitted to them, started by the leader,
//!    run on the agents) and finish: every link works.
//! 2. The leader is killed with SIGKILL (mid-nothing: every job finished; what a kill mid-job
//!    keeps is the system tests' business, `crates/cli/tests/controllers.rs`).
//! 3. A submitter posts a job every `SUBMIT_EVERY` to the surviving controllers in turn (each
//!    request bounded by `SUBMIT_TIMEOUT`) until one is accepted after the first `StartJob`.
//! 4. Timed from the kill: a follower logs that it took the lead; the first job is accepted;
//!    the first `StartJob` reaches an agent; every agent has been welcomed again.
//!
//! There are N - 1 rounds: each kills the controller that leads then, until one is left. At
//! the end every accepted job must have started exactly once and finished: a job accepted
//! and never run is `lost`, a job started twice `doubled`.

use crate::agent::{self, Behaviour, Dial, Oddities, Outbox, StartJob};
use crate::cluster::Lab;
use crate::server::Controller;
use crate::stats::Summary;
use crate::submit::{definition, job_number, log_note};
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Params {
    pub agents: usize,
    pub devices_per_agent: usize,
}

/// Jobs run before each kill.
const WARM_JOBS: usize = 20;
/// How long each simulated job runs.
const JOB_TIME: Duration = Duration::from_millis(50);
/// The submitter's pace while the lab has no leader.
const SUBMIT_EVERY: Duration = Duration::from_millis(20);
/// Bound of one submit request.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a round may take before it counts as failed.
const ROUND_LIMIT: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Runs {
    /// `StartJob` messages per job number.
    starts: Mutex<BTreeMap<usize, u32>>,
    /// When each `StartJob` arrived.
    start_times: Mutex<Vec<Instant>>,
    finished: Mutex<BTreeSet<usize>>,
    /// Welcomes (first connections and hellos again).
    welcomed: AtomicU64,
    errors: Oddities,
}

impl Runs {
    /// Whether every job of `jobs` finished.
    fn all_finished(&self, jobs: &BTreeSet<usize>) -> bool {
        let done = self.finished.lock().unwrap_or_else(|e| e.into_inner());
        jobs.iter().all(|j| done.contains(j))
    }
}

impl Behaviour for Runs {
    fn start(self: Arc<Self>, out: Outbox, job: StartJob) {
        let Some(number) = job_number(&job.definition) else {
            self.errors.unexpected.fetch_add(1, Ordering::Relaxed);
            return;
        };
        *self
            .starts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(number)
            .or_default() += 1;
        self.start_times
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(job.received);
        tokio::spawn(async move {
            let began = Instant::now();
            if out.started(&job).await.is_err() {
                return;
            }
            tokio::time::sleep(JOB_TIME).await;
            let line = vec![format!("failover job {number}")];
            if out
                .frame(&agent::console_frame(&job, 1, line))
                .await
                .is_err()
            {
                return;
            }
            if out.finished(&job, 1, began.elapsed()).await.is_ok() {
                self.finished
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(number);
            }
        });
    }
}

/// One agent that keeps its link as `dutlab agent` does: hello again after a close, to the
/// next controller of `dials` when one does not answer.
async fn keep_linked(
    dials: Vec<Dial>,
    name: String,
    devices: Vec<String>,
    runs: Arc<Runs>,
    odd: Arc<Oddities>,
) {
    let mut at = 0;
    loop {
        let dial = &dials[at % dials.len()];
        let behaviour = Arc::clone(&runs) as Arc<dyn Behaviour>;
        match agent::connect(dial, &name, &devices, behaviour, Arc::clone(&odd)).await {
            Ok(mut link) => {
                runs.welcomed.fetch_add(1, Ordering::Relaxed);
                link.closed().await;
            }
            Err(_) => {
                at += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// A submit request to one controller: `Ok(true)` when accepted (201).
async fn submit_to(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    definition: &str,
) -> anyhow::Result<bool> {
    let request = http
        .post(url)
        .bearer_auth(token)
        .json(&json!({"definition": definition, "wait_for_device": true}))
        .send();
    match tokio::time::timeout(SUBMIT_TIMEOUT, request).await {
        Ok(Ok(r)) => Ok(r.status() == reqwest::StatusCode::CREATED),
        Ok(Err(_)) | Err(_) => Ok(false),
    }
}

/// The surviving controllers' submit URLs.
fn submit_urls(ctls: &[Controller], dead: &[bool]) -> Vec<(reqwest::Client, String)> {
    ctls.iter()
        .zip(dead)
        .filter(|(_, d)| !**d)
        .map(|(c, _)| (c.http.clone(), c.url("/api/v1/jobs")))
        .collect()
}

/// Submissions while the lab fails over: job number, accepted (201), when it answered.
type Attempts = Arc<Mutex<Vec<(usize, bool, Instant)>>>;

/// What one kill cost, each from the moment of the kill.
#[derive(Debug, Default)]
struct Round {
    killed: usize,
    /// Submissions tried from the kill until the first StartJob after it.
    attempts: usize,
    leads: Option<(usize, Duration)>,
    accepted: Option<Duration>,
    started: Option<Duration>,
    all_back: Option<Duration>,
}

impl Round {
    fn text(&self) -> String {
        let ms = |d: Option<Duration>| {
            d.map_or("not within the limit".into(), |d| {
                format!("{:.0} ms", d.as_secs_f64() * 1000.0)
            })
        };
        format!(
            "kill controller {}: controller {} leads after {}, first job accepted after {}, \
             first StartJob after {}, every agent welcomed again after {} ({} submissions tried)",
            self.killed,
            self.leads.map_or("none".into(), |(c, _)| c.to_string()),
            ms(self.leads.map(|(_, d)| d)),
            ms(self.accepted),
            ms(self.started),
            ms(self.all_back),
            self.attempts,
        )
    }

    fn json(&self) -> Value {
        let ms = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 1e4).round() / 10.0);
        json!({
            "killed": self.killed,
            "new_leader": self.leads.map(|(c, _)| c),
            "leads_ms": ms(self.leads.map(|(_, d)| d)),
            "first_accepted_ms": ms(self.accepted),
            "first_start_ms": ms(self.started),
            "all_agents_back_ms": ms(self.all_back),
            "submissions_tried": self.attempts,
        })
    }
}

pub async fn run(lab: &mut Lab, p: &Params) -> anyhow::Result<Value> {
    let n = lab.controllers.len();
    if n < 2 {
        bail!("failover needs --controllers 2 or more (and --store postgres)");
    }
    let user = lab.token("bench-user", "user").await?;
    let dial = Dial::for_lab(lab);
    let dials = dial.to_each(lab);
    let runs = Arc::new(Runs::default());
    let odd = Arc::new(Oddities::default());
    // Agent i dials follower 1 + i % (n - 1) first, then the others in order.
    let mut tasks = Vec::with_capacity(p.agents);
    for i in 0..p.agents {
        let home = 1 + i % (n - 1);
        let order: Vec<Dial> = (0..n).map(|k| dials[(home + k) % n].clone()).collect();
        let name = format!("fo{i}");
        let devices = agent::device_names(&name, p.devices_per_agent);
        tasks.push(tokio::spawn(keep_linked(
            order,
            name,
            devices,
            Arc::clone(&runs),
            Arc::clone(&odd),
        )));
    }
    let result = rounds(lab, p, &user, &runs).await;
    for t in &tasks {
        t.abort();
    }
    let (rounds, accepted) = result?;
    let (log, cpu_total) = lab.stop();

    let starts = runs
        .starts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let finished = runs
        .finished
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let lost: Vec<usize> = accepted
        .iter()
        .copied()
        .filter(|j| !finished.contains(j))
        .collect();
    let doubled: Vec<usize> = starts
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(j, _)| *j)
        .collect();
    let unacknowledged = starts.keys().filter(|j| !accepted.contains(j)).count();
    let started_ms: Vec<Duration> = rounds.iter().filter_map(|r| r.started).collect();
    let summary = Summary::of(&started_ms);
    let line = format!(
        "failover: {n} controllers, {} agents x {} devices on the followers; {}; \
         {} jobs accepted: {} lost, {} doubled, {unacknowledged} started whose submission \
         timed out{}{}",
        p.agents,
        p.devices_per_agent,
        rounds
            .iter()
            .map(Round::text)
            .collect::<Vec<_>>()
            .join("; "),
        accepted.len(),
        lost.len(),
        doubled.len(),
        runs.errors
            .text()
            .map_or(String::new(), |t| format!("; ODD: {t}")),
        log_note(&log),
    );
    Ok(json!({
        "line": line,
        "controllers": n,
        "agents": p.agents,
        "rounds": rounds.iter().map(Round::json).collect::<Vec<_>>(),
        "first_start_after_kill": summary.json(),
        "accepted": accepted.len(),
        "lost": lost,
        "doubled": doubled,
        "started_unacknowledged": unacknowledged,
        "controller_log_lines": log.len(),
        "controller_cpu_total_s": cpu_total,
    }))
}

/// Runs the rounds; answers them and the numbers of the jobs accepted.
async fn rounds(
    lab: &mut Lab,
    p: &Params,
    user: &str,
    runs: &Arc<Runs>,
) -> anyhow::Result<(Vec<Round>, BTreeSet<usize>)> {
    let n = lab.controllers.len();
    let mut dead = vec![false; n];
    let mut leader = 0;
    let mut accepted = BTreeSet::new();
    let mut next_job = 0usize;
    let mut out = Vec::new();
    wait_for(
        "every agent welcomed",
        || runs.welcomed.load(Ordering::Relaxed) >= p.agents as u64,
        ROUND_LIMIT,
    )
    .await?;
    for _ in 1..n {
        // 1. Warm: jobs through the surviving controllers, all finished.
        let alive: Vec<usize> = (0..n).filter(|c| !dead[*c]).collect();
        for k in 0..WARM_JOBS {
            let c = alive[k % alive.len()];
            let job = next_job;
            next_job += 1;
            lab.controllers[c]
                .submit(user, &definition(job))
                .await
                .with_context(|| format!("warm-up job {job} on controller {c}"))?;
            accepted.insert(job);
        }
        wait_for(
            "the warm-up jobs finished",
            || runs.all_finished(&accepted),
            ROUND_LIMIT,
        )
        .await?;
        let leads_before: Vec<usize> = lab
            .controllers
            .iter()
            .map(Controller::leads_count)
            .collect();
        let welcomed_before = runs.welcomed.load(Ordering::Relaxed);
        let starts_before = runs
            .start_times
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();

        // 2. Kill the leader.
        let killed_at = Instant::now();
        lab.controllers[leader]
            .kill_hard()
            .with_context(|| format!("killing controller {leader}"))?;
        dead[leader] = true;
        let mut round = Round {
            killed: leader,
            ..Round::default()
        };

        // 3. Submit until a StartJob came after the kill.
        let attempts: Attempts = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let in_flight = Arc::new(AtomicU64::new(0));
        let submitter = {
            let urls = submit_urls(&lab.controllers, &dead);
            let user = user.to_owned();
            let (attempts, stop, in_flight) = (attempts.clone(), stop.clone(), in_flight.clone());
            let first_job = next_job;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(SUBMIT_EVERY);
                for (k, job) in (first_job..).enumerate() {
                    tick.tick().await;
                    if stop.load(Ordering::Relaxed) {
                        return job;
                    }
                    let (http, url) = urls[k % urls.len()].clone();
                    let (user, attempts, in_flight) =
                        (user.clone(), attempts.clone(), in_flight.clone());
                    in_flight.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(async move {
                        let ok = submit_to(&http, &url, &user, &definition(job)).await;
                        attempts.lock().unwrap_or_else(|p| p.into_inner()).push((
                            job,
                            matches!(ok, Ok(true)),
                            Instant::now(),
                        ));
                        in_flight.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                first_job
            })
        };

        // 4. Watch.
        let deadline = killed_at + ROUND_LIMIT;
        loop {
            let now = Instant::now();
            if round.leads.is_none() {
                for (c, ctl) in lab.controllers.iter().enumerate() {
                    if !dead[c] && ctl.leads_count() > leads_before[c] {
                        round.leads = Some((c, now - killed_at));
                    }
                }
            }
            if round.started.is_none() {
                let times = runs.start_times.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(t) = times.get(starts_before..).and_then(|t| t.iter().min()) {
                    round.started = Some(t.saturating_duration_since(killed_at));
                    stop.store(true, Ordering::Relaxed);
                }
            }
            if round.all_back.is_none()
                && runs.welcomed.load(Ordering::Relaxed) >= welcomed_before + p.agents as u64
            {
                round.all_back = Some(now - killed_at);
            }
            let settled = stop.load(Ordering::Relaxed) && in_flight.load(Ordering::Relaxed) == 0;
            if (settled && round.leads.is_some() && round.all_back.is_some()) || now > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        stop.store(true, Ordering::Relaxed);
        next_job = submitter.await.context("the submitter task")?;
        wait_for(
            "the submissions in flight answered",
            || in_flight.load(Ordering::Relaxed) == 0,
            SUBMIT_TIMEOUT * 2,
        )
        .await?;
        let tried = attempts.lock().unwrap_or_else(|e| e.into_inner()).clone();
        round.attempts = tried.len();
        round.accepted = tried
            .iter()
            .filter(|(_, ok, _)| *ok)
            .map(|(_, _, at)| at.saturating_duration_since(killed_at))
            .min();
        accepted.extend(tried.iter().filter(|(_, ok, _)| *ok).map(|(j, _, _)| *j));
        let Some((new_leader, _)) = round.leads else {
            bail!(
                "no follower took the lead within {ROUND_LIMIT:?}: {}",
                round.text()
            );
        };
        wait_for(
            "the jobs accepted during the failover finished",
            || runs.all_finished(&accepted),
            ROUND_LIMIT,
        )
        .await?;
        out.push(round);
        leader = new_leader;
    }
    Ok((out, accepted))
}

async fn wait_for(what: &str, done: impl Fn() -> bool, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            bail!("{what}: not within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}
