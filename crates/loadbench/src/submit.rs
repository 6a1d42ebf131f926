//! Scenario `submit`: submit-to-start latency with a deep queue.
//!
//! 1. With no device registered, `jobs` jobs are submitted (`wait_for_device`, 16 requests in
//!    flight): raw submit request latency and submit throughput.
//! 2. `agents` x `devices_per_agent` simulated devices connect. Each job "runs" for a fixed,
//!    per-job time (uniform in 0.5 to 1.5 x `job_ms`), sends one frame of 10 log lines and
//!    finishes `passed`; its device is free again and takes the next queued job.
//! 3. When the queue is empty and every device idle, `idle_jobs` more jobs are submitted one at
//!    a time (the next after the previous one's answer).
//!
//! With several controllers (`--controllers N`) job `n` is submitted to controller `n % N`
//! and agent `i` dials controller `i % N`: submissions and agent links spread over all of
//! them, as a load balancer in front of them would spread them.
//!
//! Start latency of a job = when its agent reads `StartJob` minus when the job could first
//! have started. The submit request's start (client side, before the request is sent) when
//! some device was idle then, as the agents see it (group `idle`: nothing to wait for). Else
//! the later of the submit request's start and the moment the device it got was free: the
//! agent sent `JobFinished` for the device's previous job (group `queued`: the goal's case,
//! the job waited in the queue) or `Hello` for a device's first job (group `connect`: includes
//! the hellos of all the agents connecting at once).

use crate::agent::{self, Behaviour, Dial, Oddities, Outbox, StartJob};
use crate::cluster::Lab;
use crate::server::{self, Controller};
use crate::stats::Summary;
use anyhow::bail;
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Params {
    pub agents: usize,
    pub devices_per_agent: usize,
    pub jobs: usize,
    pub job_ms: u64,
    pub idle_jobs: usize,
}

/// Log lines each job sends (one frame) before it finishes.
const LINES_PER_JOB: u64 = 10;
/// Submit requests in flight while the queue is filled.
const SUBMIT_PARALLEL: usize = 16;

#[derive(Default)]
struct Samples {
    connect: Vec<Duration>,
    queued: Vec<Duration>,
    idle: Vec<Duration>,
}

struct Bench {
    job_ms: u64,
    /// Submit request start, by the job's number in its name, and whether some device was
    /// idle then (as the agents see it: between `JobFinished` or `Hello` and `StartJob`).
    submitted: Mutex<Vec<Option<(Instant, bool)>>>,
    idle_devices: AtomicI64,
    /// When each device was last free, and whether it has had a job since its hello.
    free: Mutex<HashMap<String, (Instant, bool)>>,
    samples: Mutex<Samples>,
    finished: AtomicU64,
    /// Jobs running on a device, by lease: whoever takes a lease out frees its device (the
    /// job's end, or the controller's `DropLease`).
    running: Mutex<HashMap<proto::LeaseId, String>>,
    /// `DropLease` of a running job (the controller requeued or ended it).
    dropped_running: AtomicU64,
    /// `DropLease` of a lease whose job had already finished here.
    dropped_after: AtomicU64,
    errors: Oddities,
}

/// The job's number, from `job_name: bench-N`.
pub fn job_number(definition: &str) -> Option<usize> {
    let at = definition.find("job_name: bench-")? + "job_name: bench-".len();
    let digits: String = definition[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// A job file the controller accepts; no runner ever reads it.
pub fn definition(n: usize) -> String {
    format!(
        "job_name: bench-{n}\ndevice_type: {}\nvisibility: public\ntimeouts:\n  job: 10m\nactions:\n\
         - boot:\n    method: qemu\n    prompts: ['# $']\n    auto_login: {{login_prompt: 'login:', username: root}}\n\
         - test:\n    definitions:\n    - from: inline\n      name: t\n      path: inline/t.yaml\n      repository:\n\
         \x20       metadata: {{format: Lava-Test Test Definition 1.0, name: t}}\n        run:\n          steps:\n          - 'true'\n",
        agent::DEVICE_TYPE
    )
}

/// A fixed pseudo-random duration per job (same for every run).
fn duration_of(n: usize, job_ms: u64) -> Duration {
    let mut x = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    let frac = (x % 1_000_000) as f64 / 1_000_000.0;
    Duration::from_secs_f64(job_ms as f64 / 1000.0 * (0.5 + frac))
}

impl Behaviour for Bench {
    fn hello_sent(&self, devices: &[String], at: Instant) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        for d in devices {
            free.insert(d.clone(), (at, false));
        }
        self.idle_devices
            .fetch_add(devices.len() as i64, Ordering::Relaxed);
    }

    fn start(self: Arc<Self>, out: Outbox, job: StartJob) {
        self.idle_devices.fetch_sub(1, Ordering::Relaxed);
        let number = job_number(&job.definition);
        let submitted = number.and_then(|n| {
            self.submitted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(n)
                .copied()
                .flatten()
        });
        let device_free = self
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&job.device)
            .map(|entry| {
                let was = *entry;
                entry.1 = true;
                was
            });
        match (submitted, device_free) {
            (Some((sub, idle_then)), Some((free, had_job))) => {
                let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
                if idle_then {
                    // Some device could have taken it at once.
                    s.idle.push(job.received.saturating_duration_since(sub));
                } else {
                    let latency = job.received.saturating_duration_since(sub.max(free));
                    if had_job {
                        s.queued.push(latency);
                    } else {
                        s.connect.push(latency);
                    }
                }
            }
            _ => {
                self.errors.unexpected.fetch_add(1, Ordering::Relaxed);
                let mut first = self.errors.first.lock().unwrap_or_else(|p| p.into_inner());
                first.get_or_insert_with(|| {
                    format!(
                        "StartJob for job {} on {} that the bench did not submit or register",
                        job.job, job.device
                    )
                });
            }
        }
        let took = duration_of(number.unwrap_or(0), self.job_ms);
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(job.lease, job.device.clone());
        tokio::spawn(async move {
            let began = Instant::now();
            if out.started(&job).await.is_err() {
                return;
            }
            tokio::time::sleep(took.saturating_sub(began.elapsed())).await;
            let texts = (1..=LINES_PER_JOB)
                .map(|i| format!("bench job {} line {i}", job.job))
                .collect();
            if out
                .frame(&agent::console_frame(&job, 1, texts))
                .await
                .is_err()
            {
                return;
            }
            let mine = self
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&job.lease);
            if mine.is_none() {
                // Dropped by the controller meanwhile: the device is free already.
                return;
            }
            self.set_free(&job.device);
            let _ = out.finished(&job, LINES_PER_JOB, began.elapsed()).await;
        });
    }

    fn dropped(self: Arc<Self>, out: Outbox, lease: proto::LeaseId) -> bool {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&lease);
        match running {
            Some(device) => {
                self.dropped_running.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    if out.device_ready(&device).await.is_ok() {
                        self.set_free(&device);
                    }
                });
            }
            None => {
                self.dropped_after.fetch_add(1, Ordering::Relaxed);
            }
        }
        true
    }

    fn finish_acked(&self, _lease: proto::LeaseId) {
        self.finished.fetch_add(1, Ordering::Relaxed);
    }
}

impl Bench {
    /// The device is free again: it may take the next job.
    fn set_free(&self, device: &str) {
        self.free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(device.to_owned(), (Instant::now(), true));
        self.idle_devices.fetch_add(1, Ordering::Relaxed);
    }
}

/// Waits until `finished` reaches `target`; fails after `stall` without progress.
async fn wait_finished(
    ctls: &mut [Controller],
    bench: &Bench,
    target: u64,
    stall: Duration,
) -> anyhow::Result<()> {
    let mut last = bench.finished.load(Ordering::Relaxed);
    let mut since = Instant::now();
    loop {
        let now = bench.finished.load(Ordering::Relaxed);
        if now >= target {
            return Ok(());
        }
        if now != last {
            last = now;
            since = Instant::now();
        }
        if since.elapsed() > stall {
            bail!(
                "stalled: {now} of {target} jobs acknowledged as finished, none for {stall:?}; {}",
                bench.errors.text().unwrap_or_default()
            );
        }
        for ctl in ctls.iter_mut() {
            ctl.check_alive()?;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn run(lab: &mut Lab, p: &Params) -> anyhow::Result<Value> {
    let user = lab.token("bench-user", "user").await?;
    let dial = Dial::for_lab(lab);
    let dials = dial.to_each(lab);
    let ctls = &mut lab.controllers[..];
    let mem = |ctls: &[Controller]| -> anyhow::Result<server::Memory> {
        let mut sum = server::Memory::default();
        for c in ctls {
            let m = c.memory()?;
            sum.rss_kib += m.rss_kib;
            sum.hwm_kib += m.hwm_kib;
            sum.threads += m.threads;
        }
        Ok(sum)
    };
    let cpu = |ctls: &[Controller]| ctls.iter().map(Controller::cpu).sum::<f64>();
    let devices = p.agents * p.devices_per_agent;
    let total = p.jobs + p.idle_jobs;
    let bench = Arc::new(Bench {
        job_ms: p.job_ms,
        submitted: Mutex::new(vec![None; total]),
        free: Mutex::new(HashMap::new()),
        samples: Mutex::new(Samples::default()),
        idle_devices: AtomicI64::new(0),
        finished: AtomicU64::new(0),
        running: Mutex::new(HashMap::new()),
        dropped_running: AtomicU64::new(0),
        dropped_after: AtomicU64::new(0),
        errors: Oddities::default(),
    });
    let cpu0 = cpu(ctls);

    // 1. Fill the queue with no device registered.
    let fill_start = Instant::now();
    let mut requests = Vec::with_capacity(p.jobs);
    {
        let ctls = &*ctls;
        let user = &user;
        let bench = &bench;
        let mut pending = futures_util::stream::iter((0..p.jobs).map(|n| async move {
            let text = definition(n);
            let begun = Instant::now();
            let idle = bench.idle_devices.load(Ordering::Relaxed) > 0;
            bench.submitted.lock().unwrap_or_else(|e| e.into_inner())[n] = Some((begun, idle));
            ctls[n % ctls.len()]
                .submit(user, &text)
                .await
                .map(|_| begun.elapsed())
        }))
        .buffer_unordered(SUBMIT_PARALLEL);
        while let Some(r) = pending.next().await {
            requests.push(r?);
        }
    }
    let fill_secs = fill_start.elapsed().as_secs_f64();
    let submit_latency = Summary::of(&requests);
    let mem_queued = mem(ctls)?;
    let cpu_fill = cpu(ctls) - cpu0;

    // 2. Devices connect and drain the queue.
    let drain_start = Instant::now();
    let odd = Arc::new(Oddities::default());
    let agents = agent::connect_many(
        &dials,
        "a",
        0..p.agents,
        p.devices_per_agent,
        64,
        Arc::clone(&bench) as Arc<dyn Behaviour>,
        Arc::clone(&odd),
    )
    .await?;
    let connect_secs = drain_start.elapsed().as_secs_f64();
    wait_finished(ctls, &bench, p.jobs as u64, Duration::from_secs(60)).await?;
    let drain_secs = drain_start.elapsed().as_secs_f64();
    let cpu_threads = ctls[0].thread_cpu();
    let cpu_drain = cpu(ctls) - cpu0 - cpu_fill;

    // 3. Idle devices: one submission at a time.
    let mut idle_requests = Vec::new();
    for n in p.jobs..total {
        let text = definition(n);
        let begun = Instant::now();
        let idle = bench.idle_devices.load(Ordering::Relaxed) > 0;
        bench.submitted.lock().unwrap_or_else(|e| e.into_inner())[n] = Some((begun, idle));
        ctls[n % ctls.len()].submit(&user, &text).await?;
        idle_requests.push(begun.elapsed());
    }
    wait_finished(ctls, &bench, total as u64, Duration::from_secs(60)).await?;
    let mem_end = mem(ctls)?;
    drop(agents);
    let (log, cpu_total) = lab.stop();

    let dropped_running = bench.dropped_running.load(Ordering::Relaxed);
    let dropped_after = bench.dropped_after.load(Ordering::Relaxed);
    let s = bench.samples.lock().unwrap_or_else(|e| e.into_inner());
    let queued = Summary::of(&s.queued);
    let idle = Summary::of(&s.idle);
    let connect = Summary::of(&s.connect);
    let idle_submit = Summary::of(&idle_requests);
    let submit_rate = p.jobs as f64 / fill_secs;
    let drain_rate = p.jobs as f64 / drain_secs;
    let met = queued.count > 0 && queued.p99 <= 50.0;
    let oddities = [bench.errors.text(), odd.text()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>();
    let line = format!(
        "submit: {} jobs queued on {devices} devices ({} agents), job time {}..{} ms: \
         start latency queued (device freed -> StartJob) {} [goal p99 <= 50 ms: {}]; \
         idle (submit -> StartJob) {}; first job per device (hello -> StartJob) {}; \
         submit request {}; starts dropped by the controller (DropLease): {dropped_running} \
         while running, {dropped_after} after the finish; submit {submit_rate:.0} jobs/s; drain {drain_rate:.0} jobs/s \
         ({drain_secs:.1} s, agents connected in {connect_secs:.1} s); controller CPU {cpu_fill:.1} s to fill \
         ({:.0} us/job), {cpu_drain:.1} s to drain ({:.0} us/job; by thread of the first, since start: {}); {} with the queue full, {} at the end (summed over controllers){}{}",
        p.jobs,
        p.agents,
        p.job_ms / 2,
        p.job_ms * 3 / 2,
        queued.text(),
        if met { "met" } else { "NOT met" },
        idle.text(),
        connect.text(),
        submit_latency.text(),
        cpu_fill / p.jobs as f64 * 1e6,
        cpu_drain / p.jobs as f64 * 1e6,
        server::cpu_text(&cpu_threads),
        mem_queued.text(),
        mem_end.text(),
        if oddities.is_empty() {
            String::new()
        } else {
            format!("; ODD: {}", oddities.join("; "))
        },
        log_note(&log),
    );
    Ok(json!({
        "line": line,
        "jobs": p.jobs,
        "devices": devices,
        "agents": p.agents,
        "job_ms": p.job_ms,
        "start_latency_queued": queued.json(),
        "start_latency_idle": idle.json(),
        "start_latency_first_per_device": connect.json(),
        "submit_request": submit_latency.json(),
        "submit_request_idle": idle_submit.json(),
        "dropped_while_running": dropped_running,
        "dropped_after_finish": dropped_after,
        "submit_jobs_per_s": submit_rate.round(),
        "drain_jobs_per_s": drain_rate.round(),
        "drain_s": drain_secs,
        "agents_connect_s": connect_secs,
        "controller_cpu_fill_s": cpu_fill,
        "controller_cpu_drain_s": cpu_drain,
        "controller_thread_cpu_s": cpu_threads,
        "memory_queue_full": mem_queued.json(),
        "memory_end": mem_end.json(),
        "goal_p99_ms": 50,
        "goal_met": met,
        "oddities": oddities,
        "controller_log_lines": log.len(),
        "controller_cpu_total_s": cpu_total,
    }))
}

/// `; controller logged N lines, first: ...` when it logged anything.
pub fn log_note(log: &[String]) -> String {
    match log.first() {
        None => String::new(),
        Some(first) => format!("; controller logged {} line(s), first: {first}", log.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_numbers_come_back_from_the_definition() {
        assert_eq!(job_number(&definition(4711)), Some(4711));
        let d = duration_of(3, 1000);
        assert!(d >= Duration::from_millis(500) && d <= Duration::from_millis(1500));
    }
}
