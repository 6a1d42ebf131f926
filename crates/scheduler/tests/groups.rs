//! MultiNode groups: gang scheduling, one queue entry, one fate; through the public API.

use dutlab_scheduler::{
    Config, DeviceInfo, Event, GroupRef, Holder, JobId, JobSpec, JobState, Millis, Outcome,
    PrincipalId, Refusal, Scheduler, Waiter,
};

fn dev(name: &str, ty: &str, tags: &[&str]) -> DeviceInfo {
    DeviceInfo {
        name: name.into(),
        device_type: ty.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        capabilities: vec![],
    }
}

fn single(ty: &str, owner: u64) -> JobSpec {
    JobSpec {
        device_type: ty.into(),
        priority: 50,
        owner: Some(PrincipalId(owner)),
        ..JobSpec::default()
    }
}

/// A group led by `lead`: one sub-job per (device type, tags).
fn group(lead: u64, owner: u64, roles: &[(&str, &[&str])]) -> Vec<(JobId, JobSpec)> {
    roles
        .iter()
        .enumerate()
        .map(|(i, (ty, tags))| {
            let spec = JobSpec {
                tags: tags.iter().map(|t| t.to_string()).collect(),
                group: Some(GroupRef {
                    id: JobId(lead),
                    index: i as u32,
                    size: roles.len() as u32,
                    role: format!("r{i}"),
                    host: None,
                }),
                ..single(ty, owner)
            };
            (JobId(lead + i as u64), spec)
        })
        .collect()
}

fn granted(events: &[Event]) -> Vec<(JobId, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::LeaseGranted {
                holder: Holder::Job(job),
                device,
                ..
            } => Some((*job, device.clone())),
            _ => None,
        })
        .collect()
}

struct Lab {
    s: Scheduler,
    log: Vec<Event>,
    now: u64,
}

impl Lab {
    fn new(devices: &[DeviceInfo]) -> Lab {
        let mut lab = Lab {
            s: Scheduler::new(Config::default()),
            log: vec![],
            now: 1_000,
        };
        let events = lab
            .s
            .agent_connected("a", devices, &[], Millis(lab.now))
            .expect("connects");
        lab.log.extend(events);
        lab
    }

    fn at(&mut self) -> Millis {
        self.now += 10;
        Millis(self.now)
    }

    fn run(&mut self, events: Result<Vec<Event>, Refusal>) -> Vec<Event> {
        let events = events.expect("accepted");
        self.log.extend(events.iter().cloned());
        let again = Scheduler::replay(Config::default(), &self.log).expect("replays");
        assert_eq!(again, self.s, "the log rebuilds the state");
        events
    }

    fn lease_of(&self, job: JobId) -> (dutlab_scheduler::LeaseId, dutlab_scheduler::Epoch) {
        let l = self.s.job(job).and_then(|j| j.lease).expect("a lease");
        (l, self.s.lease(l).expect("live").epoch)
    }

    fn finish(&mut self, job: JobId, outcome: Outcome) -> Vec<Event> {
        let (lease, epoch) = self.lease_of(job);
        let now = self.at();
        let r = self
            .s
            .job_finished(lease, epoch, outcome, String::new(), now);
        self.run(r)
    }
}

#[test]
fn a_group_starts_only_when_every_sub_job_has_a_device_and_holds_nothing_meanwhile() {
    let mut lab = Lab::new(&[dev("q1", "qemu", &[]), dev("q2", "qemu", &[])]);
    let now = lab.at();
    let r = lab.s.submit(JobId(1), single("qemu", 1), now);
    let first = lab.run(r);
    assert_eq!(granted(&first), vec![(JobId(1), "q1".into())]);
    // Needs both devices; q2 alone is free: nothing is granted.
    let now = lab.at();
    let r = lab
        .s
        .submit_group(group(2, 2, &[("qemu", &[]), ("qemu", &[])]), now);
    let events = lab.run(r);
    assert!(granted(&events).is_empty(), "no partial grant: {events:?}");
    assert_eq!(lab.s.job(JobId(3)).map(|j| j.state), Some(JobState::Queued));
    assert_eq!(lab.s.queue_position(JobId(3)), Some(0));
    // A single job submitted after the group takes the free device: the group holds nothing.
    let now = lab.at();
    let r = lab.s.submit(JobId(4), single("qemu", 3), now);
    let events = lab.run(r);
    assert_eq!(granted(&events), vec![(JobId(4), "q2".into())]);
    // One device frees: still not enough for the group, and nothing waits but the group.
    let events = lab.finish(JobId(1), Outcome::Passed);
    assert!(granted(&events).is_empty());
    // The second frees: both sub-jobs are granted in one batch.
    let events = lab.finish(JobId(4), Outcome::Passed);
    let mut got = granted(&events);
    got.sort();
    assert_eq!(
        got,
        vec![(JobId(2), "q1".into()), (JobId(3), "q2".into())],
        "{events:?}"
    );
}

#[test]
fn two_groups_needing_the_same_devices_never_deadlock() {
    let mut lab = Lab::new(&[
        dev("q1", "qemu", &[]),
        dev("b1", "bbb", &[]),
        dev("q2", "qemu", &[]),
    ]);
    // Two single jobs hold q1 and b1.
    for (id, ty) in [(1, "qemu"), (2, "bbb")] {
        let now = lab.at();
        let r = lab.s.submit(JobId(id), single(ty, id), now);
        lab.run(r);
    }
    let now = lab.at();
    let r = lab
        .s
        .submit_group(group(10, 7, &[("qemu", &[]), ("bbb", &[])]), now);
    assert!(granted(&lab.run(r)).is_empty());
    let now = lab.at();
    let r = lab
        .s
        .submit_group(group(20, 8, &[("bbb", &[]), ("qemu", &[])]), now);
    assert!(granted(&lab.run(r)).is_empty());
    // q2 is idle and held by no group: a waiting group keeps nothing.
    assert_eq!(
        lab.s.device("q2").map(|d| d.state),
        Some(dutlab_scheduler::DeviceState::Idle)
    );
    // b1 frees: group 10 (first) takes b1 and one qemu; group 20 still holds nothing.
    let events = lab.finish(JobId(2), Outcome::Passed);
    let mut got = granted(&events);
    got.sort();
    assert_eq!(
        got,
        vec![(JobId(10), "q2".into()), (JobId(11), "b1".into())]
    );
    assert_eq!(
        lab.s.job(JobId(20)).map(|j| j.state),
        Some(JobState::Queued)
    );
    // Group 10 ends: group 20 takes its devices.
    lab.finish(JobId(10), Outcome::Passed);
    let events = lab.finish(JobId(11), Outcome::Passed);
    let mut got = granted(&events);
    got.sort();
    assert_eq!(
        got,
        vec![(JobId(20), "b1".into()), (JobId(21), "q2".into())]
    );
}

#[test]
fn a_group_counts_once_in_priority_and_fair_share() {
    let mut lab = Lab::new(&[]);
    let now = lab.at();
    let r = lab.s.submit_group(
        group(1, 1, &[("qemu", &[]), ("qemu", &[]), ("qemu", &[])]),
        now,
    );
    lab.run(r);
    let now = lab.at();
    let r = lab.s.submit(JobId(4), single("qemu", 1), now);
    lab.run(r);
    let now = lab.at();
    let r = lab.s.submit(JobId(5), single("qemu", 2), now);
    lab.run(r);
    let key = |w| lab.s.serving_key(w).expect("queued");
    let (group_round, job_round, bob_round) = (
        key(Waiter::Job(JobId(1))).1,
        key(Waiter::Job(JobId(4))).1,
        key(Waiter::Job(JobId(5))).1,
    );
    assert_eq!(
        job_round,
        group_round + 1,
        "a group of three takes one round"
    );
    assert_eq!(bob_round, group_round);
    assert_eq!(lab.s.serving_key(Waiter::Job(JobId(2))), None);
    assert_eq!(
        lab.s.queued(),
        vec![
            Waiter::Job(JobId(1)),
            Waiter::Job(JobId(5)),
            Waiter::Job(JobId(4))
        ]
    );
    assert_eq!(lab.s.queue_position(JobId(3)), Some(0));
    assert_eq!(
        lab.s.queue_position(JobId(5)),
        Some(1),
        "the group counts once"
    );
    assert_eq!(lab.s.queue_position(JobId(4)), Some(2));
}

#[test]
fn sub_jobs_are_placed_whenever_a_placement_exists() {
    // Sub-job 0 prefers d0 (fewest tags); sub-job 1 can only have d0: 0 moves to d1.
    let mut lab = Lab::new(&[
        dev("d0", "qemu", &["usb"]),
        dev("d1", "qemu", &["usb", "gpu"]),
    ]);
    let mut jobs = group(1, 1, &[("qemu", &["usb"]), ("qemu", &[])]);
    jobs[1].1.device = Some("d0".into());
    let now = lab.at();
    let r = lab.s.submit_group(jobs, now);
    let mut got = granted(&lab.run(r));
    got.sort();
    assert_eq!(got, vec![(JobId(1), "d1".into()), (JobId(2), "d0".into())]);
}

#[test]
fn an_infra_error_or_a_cancel_ends_the_whole_group() {
    let devices = [
        dev("q1", "qemu", &[]),
        dev("q2", "qemu", &[]),
        dev("q3", "qemu", &[]),
    ];
    let mut lab = Lab::new(&devices);
    let now = lab.at();
    let r = lab.s.submit_group(
        group(1, 1, &[("qemu", &[]), ("qemu", &[]), ("qemu", &[])]),
        now,
    );
    assert_eq!(granted(&lab.run(r)).len(), 3);
    for job in [1, 2] {
        let (lease, epoch) = lab.lease_of(JobId(job));
        let now = lab.at();
        let r = lab.s.job_started(lease, epoch, now);
        lab.run(r);
    }
    // Sub-job 2 passes: nothing else changes.
    lab.finish(JobId(3), Outcome::Passed);
    assert_eq!(
        lab.s.job(JobId(1)).map(|j| j.state),
        Some(JobState::Running)
    );
    // Sub-job 0 ends infra-error: sub-job 1 gets a cancel request.
    let events = lab.finish(JobId(1), Outcome::InfraError);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::CancelRequested { job: JobId(2), .. })),
        "{events:?}"
    );
    assert_eq!(
        lab.s.job(JobId(2)).map(|j| j.state),
        Some(JobState::Canceling)
    );
    let events = lab.finish(JobId(2), Outcome::Passed);
    assert!(events.iter().any(|e| e.kind() == "lease-released"));
    assert_eq!(
        lab.s.job(JobId(2)).and_then(|j| j.outcome),
        Some(Outcome::Canceled)
    );
    assert_eq!(lab.s.leases().count(), 0, "every lease released");
    assert_eq!(
        lab.s.cancel(JobId(1), Millis(9_999)),
        Err(Refusal::Finished(JobId(1)))
    );
}

#[test]
fn canceling_any_sub_job_cancels_the_group_queued_or_running() {
    let mut lab = Lab::new(&[dev("q1", "qemu", &[])]);
    // Queued (needs two devices, the lab has one): every sub-job finishes canceled.
    let now = lab.at();
    let r = lab
        .s
        .submit_group(group(1, 1, &[("qemu", &[]), ("qemu", &[])]), now);
    lab.run(r);
    let now = lab.at();
    let r = lab.s.cancel(JobId(2), now);
    lab.run(r);
    for job in [1, 2] {
        assert_eq!(
            lab.s.job(JobId(job)).and_then(|j| j.outcome),
            Some(Outcome::Canceled)
        );
    }
    assert!(lab.s.queued().is_empty());
    // Running: every sub-job gets a cancel request at once.
    let now = lab.at();
    let r = lab.s.agent_connected(
        "a",
        &[dev("q1", "qemu", &[]), dev("q2", "qemu", &[])],
        &[],
        now,
    );
    lab.run(r);
    let now = lab.at();
    let r = lab
        .s
        .submit_group(group(3, 1, &[("qemu", &[]), ("qemu", &[])]), now);
    assert_eq!(granted(&lab.run(r)).len(), 2);
    let now = lab.at();
    let r = lab.s.cancel(JobId(3), now);
    let events = lab.run(r);
    assert_eq!(
        events
            .iter()
            .filter(|e| e.kind() == "cancel-requested")
            .count(),
        2
    );
}

#[test]
fn a_start_refused_ends_the_group_instead_of_requeueing_part_of_it() {
    let mut lab = Lab::new(&[dev("q1", "qemu", &[]), dev("q2", "qemu", &[])]);
    let now = lab.at();
    let r = lab
        .s
        .submit_group(group(1, 1, &[("qemu", &[]), ("qemu", &[])]), now);
    lab.run(r);
    let (lease, epoch) = lab.lease_of(JobId(2));
    let now = lab.at();
    let r = lab.s.start_refused(lease, epoch, now);
    lab.run(r);
    assert_eq!(
        lab.s.job(JobId(2)).and_then(|j| j.outcome),
        Some(Outcome::InfraError)
    );
    assert_eq!(
        lab.s.job(JobId(1)).map(|j| j.state),
        Some(JobState::Canceling)
    );
}

#[test]
fn malformed_groups_are_refused_and_change_nothing() {
    let mut s = Scheduler::new(Config::default());
    let before = s.clone();
    let mut wrong_index = group(1, 1, &[("qemu", &[]), ("qemu", &[])]);
    if let Some(g) = wrong_index[1].1.group.as_mut() {
        g.index = 0;
    }
    let mut mixed = group(1, 1, &[("qemu", &[]), ("qemu", &[])]);
    mixed[1].1.priority = 99;
    for jobs in [vec![], wrong_index, mixed] {
        assert!(matches!(
            s.submit_group(jobs, Millis(1)),
            Err(Refusal::BadGroup(_))
        ));
        assert_eq!(s, before);
    }
    // A sub-job's event without its group's earlier sub-jobs does not fit.
    let (job, spec) = group(1, 1, &[("qemu", &[]), ("qemu", &[])]).remove(1);
    let e = Event::JobSubmitted {
        job,
        spec,
        at: Millis(1),
    };
    assert!(s.apply(&e).is_err());
    assert_eq!(s, before);
}

#[test]
fn a_group_behind_running_jobs_starts_when_the_last_of_them_ends() {
    let mut lab = Lab::new(&[dev("sim-q1", "qemu", &[]), dev("sim-q2", "qemu", &[])]);
    let now = lab.at();
    let r = lab.s.submit(JobId(1), single("qemu", 2), now);
    lab.run(r);
    let (lease, epoch) = lab.lease_of(JobId(1));
    let now = lab.at();
    let r = lab.s.job_started(lease, epoch, now);
    lab.run(r);
    let now = lab.at();
    let r = lab
        .s
        .submit_group(group(2, 2, &[("qemu", &[]), ("qemu", &[])]), now);
    lab.run(r);
    let now = lab.at();
    let r = lab.s.submit(JobId(4), single("qemu", 2), now);
    assert_eq!(granted(&lab.run(r)).len(), 1);
    let (lease, epoch) = lab.lease_of(JobId(4));
    let now = lab.at();
    let r = lab.s.job_started(lease, epoch, now);
    lab.run(r);
    lab.finish(JobId(1), Outcome::Passed);
    let events = lab.finish(JobId(4), Outcome::Passed);
    assert_eq!(granted(&events).len(), 2, "{events:?}");
}

/// A group whose sub-jobs 1 and 2 are secondary connections riding on sub-job 0.
fn with_guests(lead: u64) -> Vec<(JobId, JobSpec)> {
    let mut jobs = group(lead, 1, &[("qemu", &[]), ("qemu", &[]), ("qemu", &[])]);
    for (_, spec) in &mut jobs[1..] {
        if let Some(g) = spec.group.as_mut() {
            g.host = Some(0);
        }
    }
    jobs
}

#[test]
fn secondary_connections_ride_on_their_hosts_device_until_they_end() {
    let mut lab = Lab::new(&[dev("q1", "qemu", &[]), dev("q2", "qemu", &[])]);
    let now = lab.at();
    let r = lab.s.submit_group(with_guests(1), now);
    let events = lab.run(r);
    // One device for the group: the guests are granted the host's, right after it.
    let grants = granted(&events);
    assert_eq!(
        grants,
        [
            (JobId(1), "q1".to_owned()),
            (JobId(2), "q1".to_owned()),
            (JobId(3), "q1".to_owned())
        ]
    );
    let (_, host_epoch) = lab.lease_of(JobId(1));
    for job in [2, 3] {
        assert_eq!(lab.lease_of(JobId(job)).1, host_epoch, "a rider's epoch");
    }
    let q2 = lab.s.device("q2").map(|d| d.state);
    assert_eq!(
        q2,
        Some(dutlab_scheduler::DeviceState::Idle),
        "q2 stays free"
    );
    for job in [1, 2, 3] {
        let (lease, epoch) = lab.lease_of(JobId(job));
        let now = lab.at();
        let r = lab.s.job_started(lease, epoch, now);
        lab.run(r);
    }
    // The host ends first: its device stays busy while a guest still runs on it, so a
    // single job waits for q1 (q2 runs another).
    lab.finish(JobId(1), Outcome::Passed);
    lab.finish(JobId(2), Outcome::Passed);
    let q1 = lab.s.device("q1").expect("q1");
    assert_eq!(q1.state, dutlab_scheduler::DeviceState::Busy);
    assert_eq!(q1.riders.len(), 1);
    let now = lab.at();
    let r = lab.s.submit(JobId(10), single("qemu", 2), now);
    assert_eq!(granted(&lab.run(r)), [(JobId(10), "q2".to_owned())]);
    let now = lab.at();
    let r = lab.s.submit(JobId(11), single("qemu", 3), now);
    assert!(granted(&lab.run(r)).is_empty(), "q1 is not free yet");
    // The last guest's end frees q1 for the waiting job.
    let events = lab.finish(JobId(3), Outcome::Passed);
    assert_eq!(granted(&events), [(JobId(11), "q1".to_owned())]);
}

#[test]
fn a_guests_infra_error_ends_its_host_and_a_bad_host_index_is_refused() {
    let mut lab = Lab::new(&[dev("q1", "qemu", &[])]);
    let now = lab.at();
    let r = lab.s.submit_group(with_guests(1), now);
    lab.run(r);
    let events = lab.finish(JobId(2), Outcome::InfraError);
    for job in [1, 3] {
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::CancelRequested { job: j, .. } if *j == JobId(job))),
            "sub-job {job} is canceled: {events:?}"
        );
    }
    // A host that is itself a guest, or a guest riding on itself, is no group.
    let mut s = Scheduler::new(Config::default());
    let before = s.clone();
    let mut on_itself = with_guests(1);
    if let Some(g) = on_itself[1].1.group.as_mut() {
        g.host = Some(1);
    }
    let mut on_a_guest = with_guests(1);
    if let Some(g) = on_a_guest[2].1.group.as_mut() {
        g.host = Some(1);
    }
    let mut out_of_range = with_guests(1);
    if let Some(g) = out_of_range[2].1.group.as_mut() {
        g.host = Some(7);
    }
    for jobs in [on_itself, on_a_guest, out_of_range] {
        assert!(matches!(
            s.submit_group(jobs, Millis(1)),
            Err(Refusal::BadGroup(_))
        ));
        assert_eq!(s, before);
    }
}

/// One device, running the host (1) and both guests (2, 3) of [`with_guests`].
fn running_with_guests() -> Lab {
    let mut lab = Lab::new(&[dev("q1", "qemu", &[])]);
    let now = lab.at();
    let r = lab.s.submit_group(with_guests(1), now);
    lab.run(r);
    for job in [1, 2, 3] {
        let (lease, epoch) = lab.lease_of(JobId(job));
        let now = lab.at();
        let r = lab.s.job_started(lease, epoch, now);
        lab.run(r);
    }
    lab
}

#[test]
fn secondary_connections_of_a_lost_agent_end_at_its_disconnect_grace() {
    let mut lab = running_with_guests();
    let gone = lab.at();
    let events = lab.s.agent_disconnected("a", gone);
    lab.log.extend(events);
    // Past the grace (10 s), well before the lease TTL: every sub-job ends, riders too (the
    // host's infra error first, which cancels its guests).
    let late = Millis(gone.0 + 10_001);
    let r = lab.s.tick(late);
    let events = lab.run(Ok(r));
    let outcome = |job: u64| lab.s.job(JobId(job)).and_then(|j| j.outcome);
    assert_eq!(outcome(1), Some(Outcome::InfraError), "{events:?}");
    for job in [2, 3] {
        assert_eq!(outcome(job), Some(Outcome::Canceled), "{events:?}");
    }
    assert_eq!(lab.s.leases().count(), 0, "every lease released");
}

#[test]
fn taking_a_device_out_now_cancels_the_secondary_connections_riding_on_it() {
    let mut lab = running_with_guests();
    // The host is done; one guest still runs on its device.
    lab.finish(JobId(1), Outcome::Passed);
    lab.finish(JobId(2), Outcome::Passed);
    let note = dutlab_scheduler::StateNote {
        state: dutlab_scheduler::DeviceState::Maintenance,
        reason: "rewiring".into(),
        by: "admin".into(),
        job: None,
        at: lab.at(),
    };
    let r = lab
        .s
        .set_device_state("q1", note, dutlab_scheduler::Interrupt::Now);
    let events = lab.run(r);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::CancelRequested { job: JobId(3), .. })),
        "{events:?}"
    );
}
