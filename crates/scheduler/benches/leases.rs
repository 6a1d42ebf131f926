//! Benchmark (not a test): people's leases in-process, on a lab of 100 idle devices with
//! 1,000 queued jobs of another device type in the pool.
//!
//! - acquire + release: `request_person_lease` (granted at once) then `end_person_lease`;
//! - hand-off: a held device is released while a second request waits for it; the release
//!   grants it to the waiting one in the same call.
//!
//! Run: `cargo bench -p dutlab-scheduler --bench leases` (prints p50/p95/p99 per operation).

use dutlab_scheduler::{
    Config, DeviceInfo, JobId, JobSpec, LeaseEnd, Millis, PersonLeaseId, PrincipalId, Scheduler,
    Want,
};
use std::time::{Duration, Instant};

const ROUNDS: usize = 20_000;

fn lab() -> Scheduler {
    let mut s = Scheduler::new(Config::default());
    let devices: Vec<DeviceInfo> = (0..100)
        .map(|i| DeviceInfo {
            name: format!("q{i:03}"),
            device_type: "qemu".into(),
            tags: vec![],
            capabilities: vec![],
        })
        .collect();
    s.agent_connected("a1", &devices, &[], Millis(0))
        .expect("connects");
    for j in 1..=1000 {
        let spec = JobSpec {
            device_type: "bbb".into(),
            priority: 50,
            ..JobSpec::default()
        };
        s.submit(JobId(j), spec, Millis(0)).expect("submits");
    }
    s
}

fn request(s: &mut Scheduler, id: u64, want: Want, now: u64) {
    s.request_person_lease(
        PersonLeaseId(id),
        PrincipalId(1 + id % 7),
        "bench",
        want,
        50,
        Duration::from_secs(1800),
        Duration::from_secs(8 * 3600),
        Vec::new(),
        Millis(now),
    )
    .expect("requested");
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "{name}: n={} p50={:?} p95={:?} p99={:?} max={:?}",
        samples.len(),
        at(0.50),
        at(0.95),
        at(0.99),
        samples[samples.len() - 1]
    );
}

fn main() {
    let mut s = lab();
    let mut id = 0;
    let mut samples = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        id += 1;
        let now = 1 + round as u64;
        let start = Instant::now();
        request(
            &mut s,
            id,
            Want::Device(format!("q{:03}", round % 100)),
            now,
        );
        s.end_person_lease(PersonLeaseId(id), LeaseEnd::Released, Millis(now))
            .expect("released");
        samples.push(start.elapsed());
    }
    report("acquire+release", samples);

    let mut s = lab();
    let mut samples = Vec::with_capacity(ROUNDS);
    id = 0;
    id += 1;
    request(&mut s, id, Want::Device("q000".into()), 1);
    let mut holder = id;
    for round in 0..ROUNDS {
        let now = 2 + round as u64;
        id += 1;
        request(&mut s, id, Want::Device("q000".into()), now);
        let start = Instant::now();
        let events = s
            .end_person_lease(PersonLeaseId(holder), LeaseEnd::Released, Millis(now))
            .expect("released");
        samples.push(start.elapsed());
        assert_eq!(events.last().map(|e| e.kind()), Some("lease-granted"));
        holder = id;
    }
    report("hand-off (release -> grant to the waiting lease)", samples);
}
