//! One test per command and refusal, through the public API only.

use dutlab_scheduler::{
    AgentState, Config, DeviceInfo, DeviceState, Epoch, Event, Holder, JobId, JobSpec, JobState,
    LeaseId, Millis, Outcome, Refusal, Scheduler, SchedulerError, Waiter,
};
use std::time::Duration;

/// Agents and devices coming and going, and the deadlines of leases.
#[path = "commands/agents.rs"]
mod agents;

/// Devices out of service, quarantine, tag edits.
#[path = "commands/devices.rs"]
mod devices;

const TTL: u64 = 60_000;

fn dev(name: &str, ty: &str, tags: &[&str]) -> DeviceInfo {
    DeviceInfo {
        name: name.into(),
        device_type: ty.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        capabilities: vec!["power".into(), "console".into()],
    }
}

fn spec(ty: &str, tags: &[&str], priority: u8) -> JobSpec {
    JobSpec {
        device_type: ty.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        priority,
        ..JobSpec::default()
    }
}

fn qemu() -> JobSpec {
    spec("qemu", &[], 50)
}

/// The events' kinds, for compact assertions.
fn kinds(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(Event::kind).collect()
}

/// The (lease, epoch, job, device) of every grant in `events`.
fn grants(events: &[Event]) -> Vec<(LeaseId, Epoch, JobId, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::LeaseGranted {
                lease,
                epoch,
                holder: Holder::Job(job),
                device,
                ..
            } => Some((*lease, *epoch, *job, device.clone())),
            _ => None,
        })
        .collect()
}

fn finished(events: &[Event]) -> Vec<(JobId, Outcome, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::JobFinished {
                job,
                outcome,
                reason,
                ..
            } => Some((*job, *outcome, reason.clone())),
            _ => None,
        })
        .collect()
}

/// A scheduler with agent `a1` offering one qemu device `q1`, and a log of everything.
struct Lab {
    s: Scheduler,
    log: Vec<Event>,
}

impl Lab {
    fn new() -> Lab {
        Lab {
            s: Scheduler::new(Config::default()),
            log: vec![],
        }
    }

    fn with_q1() -> Lab {
        let mut lab = Lab::new();
        lab.ok(|s| s.agent_connected("a1", &[dev("q1", "qemu", &[])], &[], Millis(0)));
        lab
    }

    fn ok(&mut self, f: impl FnOnce(&mut Scheduler) -> Result<Vec<Event>, Refusal>) -> Vec<Event> {
        let events = f(&mut self.s).expect("command accepted");
        self.log.extend(events.iter().cloned());
        events
    }

    fn run(&mut self, f: impl FnOnce(&mut Scheduler) -> Vec<Event>) -> Vec<Event> {
        let events = f(&mut self.s);
        self.log.extend(events.iter().cloned());
        events
    }

    /// Refused, and nothing changed.
    fn refused(
        &mut self,
        f: impl FnOnce(&mut Scheduler) -> Result<Vec<Event>, Refusal>,
    ) -> Refusal {
        let before = self.s.clone();
        let refusal = f(&mut self.s).expect_err("command refused");
        assert_eq!(self.s, before, "a refused command changed the state");
        refusal
    }

    fn replays(&self) {
        let again = Scheduler::replay(*self.s.config(), &self.log).expect("log replays");
        assert_eq!(again, self.s);
    }
}

#[test]
fn submit_queues_then_grants_on_a_fitting_idle_device() {
    let mut lab = Lab::new();
    let ev = lab.ok(|s| s.submit(JobId(1), qemu(), Millis(5)));
    assert_eq!(kinds(&ev), ["job-submitted"]);
    assert_eq!(lab.s.job(JobId(1)).map(|j| j.state), Some(JobState::Queued));
    assert_eq!(lab.s.queue_position(JobId(1)), Some(0));

    let ev = lab.ok(|s| s.agent_connected("a1", &[dev("q1", "qemu", &[])], &[], Millis(10)));
    assert_eq!(kinds(&ev), ["agent-connected", "lease-granted"]);
    assert_eq!(
        ev[1],
        Event::LeaseGranted {
            lease: LeaseId(1),
            epoch: Epoch(1),
            holder: Holder::Job(JobId(1)),
            device: "q1".into(),
            expires: Millis(10 + TTL),
            at: Millis(10),
        }
    );
    let job = lab.s.job(JobId(1)).expect("job");
    assert_eq!(job.state, JobState::Assigned);
    assert_eq!(job.lease, Some(LeaseId(1)));
    assert_eq!(job.device.as_deref(), Some("q1"));
    assert_eq!(lab.s.queue_position(JobId(1)), None);
    let d = lab.s.device("q1").expect("device");
    assert_eq!(
        (d.state, d.epoch, d.lease),
        (DeviceState::Busy, Epoch(1), Some(LeaseId(1)))
    );
    assert!(lab.s.is_live(LeaseId(1), Epoch(1)));
    assert!(!lab.s.is_live(LeaseId(1), Epoch(0)));
    assert_eq!(lab.s.next_deadline(), Some(Millis(10 + TTL)));
    lab.replays();
}

#[test]
fn submit_refuses_duplicates_and_priorities_above_100() {
    let mut lab = Lab::new();
    lab.ok(|s| s.submit(JobId(1), qemu(), Millis(0)));
    assert_eq!(
        lab.refused(|s| s.submit(JobId(1), qemu(), Millis(1))),
        Refusal::DuplicateJob(JobId(1))
    );
    assert_eq!(
        lab.refused(|s| s.submit(JobId(2), spec("qemu", &[], 101), Millis(1))),
        Refusal::Priority(101)
    );
    lab.ok(|s| s.submit(JobId(2), spec("qemu", &[], 100), Millis(1)));
}

#[test]
fn queued_jobs_are_served_by_priority_then_submission() {
    let mut lab = Lab::new();
    lab.ok(|s| s.submit(JobId(1), spec("qemu", &[], 10), Millis(0)));
    lab.ok(|s| s.submit(JobId(2), spec("qemu", &[], 90), Millis(0)));
    lab.ok(|s| s.submit(JobId(3), spec("qemu", &[], 10), Millis(0)));
    lab.ok(|s| s.submit(JobId(4), spec("bbb", &[], 100), Millis(0)));
    assert_eq!(lab.s.queued(), [4, 2, 1, 3].map(|j| Waiter::Job(JobId(j))));
    assert_eq!(lab.s.queue_position(JobId(1)), Some(2));

    let ev = lab.ok(|s| s.agent_connected("a1", &[dev("q1", "qemu", &[])], &[], Millis(1)));
    assert_eq!(grants(&ev)[0].2, JobId(2));
    let order: Vec<JobId> = [1u64, 2]
        .into_iter()
        .map(|l| {
            let ev = lab.ok(|s| {
                s.job_finished(
                    LeaseId(u128::from(l)),
                    Epoch(l),
                    Outcome::Passed,
                    String::new(),
                    Millis(2),
                )
            });
            assert_eq!(
                kinds(&ev),
                ["job-finished", "lease-released", "lease-granted"]
            );
            grants(&ev)[0].2
        })
        .collect();
    assert_eq!(order, [JobId(1), JobId(3)]);
    lab.replays();
}

#[test]
fn jobs_need_every_tag_and_take_the_least_specialised_device() {
    let mut lab = Lab::new();
    lab.ok(|s| {
        s.agent_connected(
            "a1",
            &[
                dev("rich", "qemu", &["usb", "gpu", "big"]),
                dev("plain", "qemu", &["usb"]),
                dev("other", "bbb", &["usb"]),
            ],
            &[],
            Millis(0),
        )
    });
    let ev = lab.ok(|s| s.submit(JobId(1), spec("qemu", &["usb"], 0), Millis(1)));
    assert_eq!(grants(&ev)[0].3, "plain");
    let ev = lab.ok(|s| s.submit(JobId(2), spec("qemu", &["usb", "wifi"], 0), Millis(1)));
    assert!(grants(&ev).is_empty(), "no device has wifi");
    let ev = lab.ok(|s| s.submit(JobId(3), spec("qemu", &["gpu"], 0), Millis(1)));
    assert_eq!(grants(&ev)[0].3, "rich");
    assert_eq!(lab.s.job(JobId(2)).map(|j| j.state), Some(JobState::Queued));
    let types: Vec<String> = lab.s.device_types().into_iter().collect();
    assert_eq!(types, ["bbb", "qemu"]);
    lab.replays();
}

#[test]
fn a_lower_priority_job_takes_a_device_the_first_one_cannot_use() {
    let mut lab = Lab::new();
    lab.ok(|s| s.submit(JobId(1), spec("qemu", &["gpu"], 100), Millis(0)));
    lab.ok(|s| s.submit(JobId(2), spec("qemu", &[], 0), Millis(0)));
    let ev = lab.ok(|s| s.agent_connected("a1", &[dev("q1", "qemu", &[])], &[], Millis(1)));
    assert_eq!(grants(&ev)[0].2, JobId(2));
}

#[test]
fn cancel_in_every_state() {
    let mut lab = Lab::new();
    assert_eq!(
        lab.refused(|s| s.cancel(JobId(9), Millis(0))),
        Refusal::UnknownJob(JobId(9))
    );
    lab.ok(|s| s.submit(JobId(1), qemu(), Millis(0)));
    let ev = lab.ok(|s| s.cancel(JobId(1), Millis(1)));
    assert_eq!(
        finished(&ev),
        [(JobId(1), Outcome::Canceled, "canceled while queued".into())]
    );
    assert_eq!(lab.s.queued(), []);
    assert_eq!(
        lab.refused(|s| s.cancel(JobId(1), Millis(2))),
        Refusal::Finished(JobId(1))
    );

    lab.ok(|s| s.agent_connected("a1", &[dev("q1", "qemu", &[])], &[], Millis(3)));
    lab.ok(|s| s.submit(JobId(2), qemu(), Millis(3)));
    let ev = lab.ok(|s| s.cancel(JobId(2), Millis(4)));
    assert_eq!(kinds(&ev), ["cancel-requested"]);
    assert_eq!(
        lab.s.job(JobId(2)).map(|j| j.state),
        Some(JobState::Canceling)
    );
    assert_eq!(lab.ok(|s| s.cancel(JobId(2), Millis(5))), []);
    // Whatever the agent reports, a canceling job ends canceled; its device is idle again.
    let ev = lab.ok(|s| {
        s.job_finished(
            LeaseId(1),
            Epoch(1),
            Outcome::Passed,
            "ok".into(),
            Millis(6),
        )
    });
    assert_eq!(finished(&ev), [(JobId(2), Outcome::Canceled, "ok".into())]);
    assert_eq!(lab.s.device("q1").map(|d| d.state), Some(DeviceState::Idle));
    lab.replays();
}

#[test]
fn job_started_is_idempotent_and_fenced() {
    let mut lab = Lab::with_q1();
    lab.ok(|s| s.submit(JobId(1), qemu(), Millis(0)));
    assert_eq!(
        lab.refused(|s| s.job_started(LeaseId(1), Epoch(0), Millis(1))),
        Refusal::StaleEpoch {
            lease: LeaseId(1),
            given: Epoch(0),
            current: Epoch(1)
        }
    );
    assert_eq!(
        lab.refused(|s| s.job_started(LeaseId(7), Epoch(1), Millis(1))),
        Refusal::UnknownLease(LeaseId(7))
    );
    let ev = lab.ok(|s| s.job_started(LeaseId(1), Epoch(1), Millis(1)));
    assert_eq!(kinds(&ev), ["job-started"]);
    let job = lab.s.job(JobId(1)).expect("job");
    assert_eq!(
        (job.state, job.started),
        (JobState::Running, Some(Millis(1)))
    );
    assert_eq!(
        lab.ok(|s| s.job_started(LeaseId(1), Epoch(1), Millis(2))),
        []
    );
    lab.ok(|s| s.cancel(JobId(1), Millis(3)));
    assert_eq!(
        lab.ok(|s| s.job_started(LeaseId(1), Epoch(1), Millis(4))),
        []
    );
    lab.replays();
}

#[test]
fn job_finished_releases_the_device_and_refuses_duplicates() {
    let mut lab = Lab::with_q1();
    lab.ok(|s| s.submit(JobId(1), qemu(), Millis(0)));
    lab.ok(|s| s.submit(JobId(2), qemu(), Millis(0)));
    lab.ok(|s| s.job_started(LeaseId(1), Epoch(1), Millis(1)));
    let ev = lab.ok(|s| {
        s.job_finished(
            LeaseId(1),
            Epoch(1),
            Outcome::Failed,
            "2 cases failed".into(),
            Millis(9),
        )
    });
    assert_eq!(
        kinds(&ev),
        ["job-finished", "lease-released", "lease-granted"]
    );
    assert_eq!(
        ev[1],
        Event::LeaseReleased {
            lease: LeaseId(1),
            device_state: DeviceState::Idle,
            at: Millis(9)
        }
    );
    assert_eq!(grants(&ev), [(LeaseId(2), Epoch(2), JobId(2), "q1".into())]);
    let job = lab.s.job(JobId(1)).expect("job");
    assert_eq!(job.state, JobState::Finished);
    assert_eq!(job.outcome, Some(Outcome::Failed));
    assert_eq!(job.reason, "2 cases failed");
    assert_eq!(job.finished, Some(Millis(9)));
    assert!(lab.s.lease(LeaseId(1)).is_none());
    // The agent resends its report: a duplicate.
    assert_eq!(
        lab.refused(|s| s.job_finished(
            LeaseId(1),
            Epoch(1),
            Outcome::Failed,
            String::new(),
            Millis(10)
        )),
        Refusal::LeaseNotLive(LeaseId(1))
    );
    // A message of the old lease with its old epoch is not live either.
    assert_eq!(
        lab.refused(|s| s.job_started(LeaseId(1), Epoch(1), Millis(10))),
        Refusal::LeaseNotLive(LeaseId(1))
    );
    lab.replays();
}

#[test]
fn a_refused_start_requeues_at_the_old_place_and_the_device_needs_a_check() {
    let mut lab = Lab::new();
    lab.ok(|s| s.agent_connected("a1", &[dev("q1", "qemu", &[])], &[], Millis(0)));
    lab.ok(|s| s.submit(JobId(1), qemu(), Millis(0)));
    lab.ok(|s| s.submit(JobId(2), qemu(), Millis(0)));
    lab.ok(|s| s.submit(JobId(3), spec("qemu", &[], 100), Millis(0)));
    // Job 3 (priority 100) got q1.
    let ev = lab.ok(|s| s.start_refused(LeaseId(1), Epoch(1), Millis(1)));
    assert_eq!(kinds(&ev), ["job-requeued", "lease-released"]);
    assert_eq!(
        lab.s.device("q1").map(|d| d.state),
        Some(DeviceState::NeedsCheck)
    );
    assert_eq!(lab.s.queued(), [3, 1, 2].map(|j| Waiter::Job(JobId(j))));
    let job = lab.s.job(JobId(3)).expect("job");
    assert_eq!((job.state, job.lease), (JobState::Queued, None));
    // A second device takes the requeued job first.
    let ev = lab.ok(|s| s.agent_connected("a2", &[dev("q2", "qemu", &[])], &[], Millis(2)));
    assert_eq!(grants(&ev), [(LeaseId(2), Epoch(1), JobId(3), "q2".into())]);
    // q1 takes work again once its agent says it is torn down.
    let ev = lab.ok(|s| s.device_ready("a1", "q1", Millis(3)));
    assert_eq!(kinds(&ev), ["device-ready", "lease-granted"]);
    assert_eq!(grants(&ev), [(LeaseId(3), Epoch(2), JobId(1), "q1".into())]);
    // A running job cannot be refused.
    lab.ok(|s| s.job_started(LeaseId(3), Epoch(2), Millis(4)));
    assert_eq!(
        lab.refused(|s| s.start_refused(LeaseId(3), Epoch(2), Millis(5))),
        Refusal::NotAssigned {
            job: JobId(1),
            state: JobState::Running
        }
    );
    lab.replays();
}

#[test]
fn a_refused_start_of_a_canceling_job_finishes_it() {
    let mut lab = Lab::with_q1();
    lab.ok(|s| s.submit(JobId(1), qemu(), Millis(0)));
    lab.ok(|s| s.cancel(JobId(1), Millis(1)));
    let ev = lab.ok(|s| s.start_refused(LeaseId(1), Epoch(1), Millis(2)));
    assert_eq!(kinds(&ev), ["job-finished", "lease-released"]);
    assert_eq!(
        lab.s.job(JobId(1)).and_then(|j| j.outcome),
        Some(Outcome::Canceled)
    );
    lab.replays();
}

#[test]
fn replay_refuses_a_log_that_does_not_fit() {
    let log = vec![
        Event::JobSubmitted {
            job: JobId(1),
            spec: qemu(),
            at: Millis(0),
        },
        Event::LeaseGranted {
            lease: LeaseId(1),
            epoch: Epoch(1),
            holder: Holder::Job(JobId(1)),
            device: "ghost".into(),
            expires: Millis(1),
            at: Millis(0),
        },
    ];
    let err = Scheduler::replay(Config::default(), &log).expect_err("corrupt log");
    let SchedulerError::Replay { index, source } = err else {
        panic!("not a replay error: {err}");
    };
    assert_eq!(index, 1);
    assert_eq!(
        *source,
        SchedulerError::UnknownDevice {
            event: "lease-granted",
            device: "ghost".into()
        }
    );
}

#[test]
fn apply_changes_nothing_when_the_event_does_not_fit() {
    let mut lab = Lab::with_q1();
    lab.ok(|s| s.submit(JobId(1), qemu(), Millis(0)));
    let before = lab.s.clone();
    let bad = [
        Event::JobStarted {
            job: JobId(1),
            lease: LeaseId(9),
            at: Millis(1),
        },
        Event::LeaseGranted {
            lease: LeaseId(1),
            epoch: Epoch(5),
            holder: Holder::Job(JobId(1)),
            device: "q1".into(),
            expires: Millis(1),
            at: Millis(1),
        },
        Event::LeaseReleased {
            lease: LeaseId(1),
            device_state: DeviceState::Idle,
            at: Millis(1),
        },
        Event::LeaseReleased {
            lease: LeaseId(1),
            device_state: DeviceState::Busy,
            at: Millis(1),
        },
        Event::JobRequeued {
            job: JobId(2),
            at: Millis(1),
        },
        Event::DeviceReady {
            device: "q1".into(),
            at: Millis(1),
        },
        Event::AgentConnected {
            agent: "a2".into(),
            devices: vec![dev("q1", "qemu", &[])],
            at: Millis(1),
        },
        Event::AgentDisconnected {
            agent: "a9".into(),
            at: Millis(1),
        },
    ];
    for event in &bad {
        let err = lab.s.apply(event).expect_err(event.kind());
        assert!(!err.to_string().is_empty());
        assert_eq!(lab.s, before, "{} changed the state", event.kind());
    }
}

#[test]
fn a_large_lab_schedules_by_type_and_drains_its_queue() {
    // 10,000 queued jobs over 4 device types, 1,000 devices: every finish grants the next job.
    let types = ["t0", "t1", "t2", "t3"];
    let mut s = Scheduler::new(Config::default());
    for i in 0..10_000u64 {
        let ty = types[(i % 4) as usize];
        s.submit(JobId(i), spec(ty, &[], (i % 7) as u8), Millis(0))
            .expect("submits");
    }
    let devices: Vec<DeviceInfo> = (0..1_000)
        .map(|i| dev(&format!("d{i}"), types[i % 4], &[]))
        .collect();
    let ev = s
        .agent_connected("a1", &devices, &[], Millis(1))
        .expect("connects");
    assert_eq!(grants(&ev).len(), 1_000);
    let mut done = 0;
    loop {
        let Some((lease, epoch)) = s.leases().next().map(|l| (l.id, l.epoch)) else {
            break;
        };
        s.job_finished(lease, epoch, Outcome::Passed, String::new(), Millis(2))
            .expect("finishes");
        done += 1;
    }
    assert_eq!(done, 10_000);
    assert_eq!(s.queued(), []);
}

#[test]
fn schedule_sees_every_change_applied_directly() {
    // An old idle device only a new job fits, and a new device in the same call that the new
    // job does not fit: the new job must still get the old device.
    let mut s = Scheduler::new(Config::default());
    s.agent_connected("a1", &[dev("old", "qemu", &["usb"])], &[], Millis(0))
        .expect("connects");
    for event in [
        Event::JobSubmitted {
            job: JobId(1),
            spec: spec("qemu", &["usb"], 0),
            at: Millis(1),
        },
        Event::AgentConnected {
            agent: "a2".into(),
            devices: vec![dev("new", "qemu", &[])],
            at: Millis(1),
        },
    ] {
        s.apply(&event).expect("fits");
    }
    let ev = s.schedule(Millis(2));
    assert_eq!(
        grants(&ev),
        [(LeaseId(1), Epoch(1), JobId(1), "old".into())]
    );
}

#[test]
fn keyed_lease_ids_are_not_a_counter_and_replay_under_any_key() {
    let keyed = |k: u8| Config {
        lease_ids: dutlab_scheduler::LeaseIds::Keyed(dutlab_scheduler::LeaseKey([k; 32])),
        ..Config::default()
    };
    let mut s = Scheduler::new(keyed(1));
    let mut log = Vec::new();
    log.extend(
        s.agent_connected(
            "a1",
            &[dev("q1", "qemu", &[]), dev("q2", "qemu", &[])],
            &[],
            Millis(0),
        )
        .expect("connects"),
    );
    log.extend(s.submit(JobId(1), qemu(), Millis(1)).expect("queued"));
    log.extend(s.submit(JobId(2), qemu(), Millis(1)).expect("queued"));
    let ids: Vec<LeaseId> = log
        .iter()
        .filter_map(|e| match e {
            Event::LeaseGranted { lease, .. } => Some(*lease),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(
        ids[0].0.abs_diff(ids[1].0) > u128::from(u64::MAX),
        "{ids:?}"
    );
    // A restarted controller draws another key: replay takes the ids from the events.
    let replayed = Scheduler::replay(keyed(2), &log).expect("replays");
    let mut again: Vec<LeaseId> = replayed.leases().map(|l| l.id).collect();
    again.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(again, want);
    // An id that is not live is refused, whatever it is.
    assert_eq!(
        s.clone()
            .job_started(LeaseId(ids[0].0 ^ 1), Epoch(1), Millis(2)),
        Err(Refusal::LeaseNotLive(LeaseId(ids[0].0 ^ 1)))
    );
}
