//! Rough start times of waiters: the mean of recent run times, devices freeing in turn.

use dutlab_scheduler::{
    Config, DeviceInfo, Epoch, Event, JobId, JobSpec, LeaseId, Millis, Outcome, PersonLeaseId,
    PrincipalId, Scheduler, Waiter, Want,
};
use std::time::Duration;

fn dev(name: &str) -> DeviceInfo {
    DeviceInfo {
        name: name.into(),
        device_type: "qemu".into(),
        tags: vec![],
        capabilities: vec![],
    }
}

fn spec(device_type: &str) -> JobSpec {
    JobSpec {
        device_type: device_type.into(),
        priority: 50,
        ..JobSpec::default()
    }
}

fn grant(events: &[Event]) -> Option<(LeaseId, Epoch)> {
    events.iter().find_map(|e| match e {
        Event::LeaseGranted { lease, epoch, .. } => Some((*lease, *epoch)),
        _ => None,
    })
}

/// Submits a job at `at` that starts at once (a device must be idle) and answers its lease.
fn run(s: &mut Scheduler, job: u64, at: u64) -> (LeaseId, Epoch) {
    let events = s
        .submit(JobId(job), spec("qemu"), Millis(at))
        .expect("queued");
    let (lease, epoch) = grant(&events).expect("a device was idle");
    s.job_started(lease, epoch, Millis(at)).expect("starts");
    (lease, epoch)
}

fn finish(s: &mut Scheduler, (lease, epoch): (LeaseId, Epoch), at: u64) {
    s.job_finished(lease, epoch, Outcome::Passed, String::new(), Millis(at))
        .expect("finishes");
}

#[test]
fn waiters_take_the_device_that_frees_first_with_the_mean_of_recent_runs() {
    let mut s = Scheduler::new(Config::default());
    s.agent_connected("a1", &[dev("q1"), dev("q2")], &[], Millis(0))
        .expect("connects");
    // Nothing has run yet: a queued job's end cannot be guessed.
    let first = run(&mut s, 1, 0);
    let second = run(&mut s, 2, 0);
    s.submit(JobId(90), spec("qemu"), Millis(0))
        .expect("queued");
    assert_eq!(s.recent_run_time("qemu"), None);
    assert!(s.estimated_starts(Millis(1)).is_empty());
    s.cancel(JobId(90), Millis(1)).expect("withdrawn");
    // Runs of 10 s and 30 s: the mean is 20 s.
    finish(&mut s, first, 10_000);
    finish(&mut s, second, 30_000);
    assert_eq!(s.recent_run_time("qemu"), Some(Duration::from_secs(20)));

    run(&mut s, 3, 40_000); // frees at 60 s
    let events = s
        .submit(JobId(4), spec("qemu"), Millis(41_000))
        .expect("queued");
    assert!(grant(&events).is_some(), "job 4 takes the other device");
    s.submit(JobId(5), spec("qemu"), Millis(41_000))
        .expect("queued");
    s.submit(JobId(6), spec("qemu"), Millis(41_000))
        .expect("queued");
    s.request_person_lease(
        PersonLeaseId(7),
        PrincipalId(1),
        "alice",
        Want::Type {
            device_type: "qemu".into(),
            tags: vec![],
        },
        50,
        Duration::from_secs(600),
        Duration::from_secs(3600),
        Vec::new(),
        Millis(42_000),
    )
    .expect("waits");
    s.submit(JobId(8), spec("qemu"), Millis(43_000))
        .expect("queued");
    s.submit(JobId(9), spec("rpi4"), Millis(43_000))
        .expect("queued");

    // Fair share serves alice first: she has had nothing yet.
    assert_eq!(
        s.queued(),
        [
            Waiter::Person(PersonLeaseId(7)),
            Waiter::Job(JobId(5)),
            Waiter::Job(JobId(6)),
            Waiter::Job(JobId(8)),
            Waiter::Job(JobId(9)),
        ]
    );
    let at = s.estimated_starts(Millis(45_000));
    let start = |w: Waiter| at.get(&w).map(|m| m.0);
    // Job 3's device frees at 60 s (started at 40 s, mean 20 s), job 4's at 65 s (not started
    // yet: 20 s from now). Alice's lease then holds its device for its 600 s.
    assert_eq!(start(Waiter::Person(PersonLeaseId(7))), Some(60_000));
    assert_eq!(start(Waiter::Job(JobId(5))), Some(65_000));
    assert_eq!(start(Waiter::Job(JobId(6))), Some(85_000));
    assert_eq!(start(Waiter::Job(JobId(8))), Some(105_000));
    // No device of its type, no estimate; running jobs have none either.
    assert_eq!(start(Waiter::Job(JobId(9))), None);
    assert_eq!(start(Waiter::Job(JobId(3))), None);
}
