//! Agents and devices: ready and ownership refusals, reconnects with and without the job,
//! disconnect graces, expiry without heartbeats, cancel graces, restarts, withdrawn devices.

use super::*;

#[test]
fn device_ready_refusals() {
    let mut lab = Lab::with_q1();
    assert_eq!(
        lab.refused(|s| s.device_ready("a1", "nope", Millis(1))),
        Refusal::UnknownDevice("nope".into())
    );
    assert_eq!(
        lab.refused(|s| s.device_ready("a2", "q1", Millis(1))),
        Refusal::NotYourDevice {
            device: "q1".into(),
            agent: "a1".into()
        }
    );
    lab.ok(|s| s.submit(JobId(1), qemu(), Millis(1)));
    assert_eq!(
        lab.refused(|s| s.device_ready("a1", "q1", Millis(1))),
        Refusal::DeviceBusy {
            device: "q1".into(),
            lease: LeaseId(1)
        }
    );
    lab.ok(|s| {
        s.job_finished(
            LeaseId(1),
            Epoch(1),
            Outcome::Passed,
            String::new(),
            Millis(2),
        )
    });
    // Ready while idle: nothing to do.
    assert_eq!(lab.ok(|s| s.device_ready("a1", "q1", Millis(3))), []);
    lab.run(|s| s.agent_disconnected("a1", Millis(4)));
    assert_eq!(
        lab.refused(|s| s.device_ready("a1", "q1", Millis(5))),
        Refusal::AgentNotConnected("a1".into())
    );
}

#[test]
fn a_device_belongs_to_one_connected_agent() {
    let mut lab = Lab::with_q1();
    assert_eq!(
        lab.refused(|s| s.agent_connected("a2", &[dev("q1", "qemu", &[])], &[], Millis(1))),
        Refusal::DeviceTaken {
            device: "q1".into(),
            agent: "a1".into()
        }
    );
    assert_eq!(
        lab.refused(|s| {
            s.agent_connected(
                "a2",
                &[dev("x", "qemu", &[]), dev("x", "qemu", &[])],
                &[],
                Millis(1),
            )
        }),
        Refusal::DuplicateDevice("x".into())
    );
    // Once a1 is gone, a2 may take q1 over.
    lab.run(|s| s.agent_disconnected("a1", Millis(2)));
    assert_eq!(
        lab.s.device("q1").map(|d| d.state),
        Some(DeviceState::Offline)
    );
    lab.ok(|s| s.agent_connected("a2", &[dev("q1", "qemu", &["new"])], &[], Millis(3)));
    let d = lab.s.device("q1").expect("device");
    assert_eq!((d.agent.as_str(), d.state), ("a2", DeviceState::Idle));
    assert_eq!(d.info.tags, ["new"]);
    // a1 comes back without it.
    lab.ok(|s| s.agent_connected("a1", &[], &[], Millis(4)));
    assert_eq!(lab.s.device("q1").map(|d| d.agent.as_str()), Some("a2"));
    lab.replays();
}

#[test]
fn an_agent_that_restarted_without_the_job_loses_it() {
    let mut lab = Lab::with_q1();
    lab.ok(|s| s.submit(JobId(1), qemu(), Millis(0)));
    lab.ok(|s| s.submit(JobId(2), qemu(), Millis(0)));
    lab.ok(|s| s.job_started(LeaseId(1), Epoch(1), Millis(1)));
    lab.run(|s| s.agent_disconnected("a1", Millis(2)));
    let ev = lab.ok(|s| s.agent_connected("a1", &[dev("q1", "qemu", &[])], &[], Millis(3)));
    assert_eq!(
        kinds(&ev),
        [
            "agent-connected",
            "job-finished",
            "lease-released",
            "device-ready",
            "lease-granted"
        ]
    );
    assert_eq!(
        finished(&ev),
        [(
            JobId(1),
            Outcome::InfraError,
            "agent a1 restarted and no longer runs the job".into()
        )]
    );
    assert_eq!(grants(&ev), [(LeaseId(2), Epoch(2), JobId(2), "q1".into())]);
    lab.replays();
}

#[test]
fn a_job_the_agent_never_took_goes_back_to_its_place_when_the_agent_reconnects_without_it() {
    let mut lab = Lab::with_q1();
    lab.ok(|s| s.submit(JobId(1), qemu(), Millis(0)));
    lab.ok(|s| s.submit(JobId(2), qemu(), Millis(0)));
    // Job 1 was granted (its StartJob went out) but never reported started.
    assert_eq!(
        lab.s.job(JobId(1)).map(|j| j.state),
        Some(JobState::Assigned)
    );
    let ev = lab.ok(|s| s.agent_connected("a1", &[dev("q1", "qemu", &[])], &[], Millis(3)));
    assert_eq!(
        kinds(&ev),
        [
            "agent-connected",
            "job-requeued",
            "lease-released",
            "device-ready",
            "lease-granted"
        ]
    );
    assert_eq!(finished(&ev), []);
    // It keeps its place ahead of job 2 and gets the device again, with a new epoch.
    assert_eq!(grants(&ev), [(LeaseId(2), Epoch(2), JobId(1), "q1".into())]);
    assert_eq!(lab.s.job(JobId(2)).map(|j| j.state), Some(JobState::Queued));
    lab.replays();
}

#[test]
fn an_agent_that_reconnects_holding_the_lease_keeps_it() {
    let mut lab = Lab::with_q1();
    lab.ok(|s| s.submit(JobId(1), qemu(), Millis(0)));
    lab.run(|s| s.agent_disconnected("a1", Millis(2)));
    assert_eq!(lab.s.device("q1").map(|d| d.state), Some(DeviceState::Busy));
    let ev = lab.ok(|s| {
        s.agent_connected(
            "a1",
            &[dev("q1", "qemu", &[])],
            &[(LeaseId(1), Epoch(1))],
            Millis(3),
        )
    });
    assert_eq!(kinds(&ev), ["agent-connected", "lease-renewed"]);
    assert_eq!(
        lab.s.lease(LeaseId(1)).map(|l| l.expires),
        Some(Millis(3 + TTL))
    );
    assert_eq!(
        lab.s.job(JobId(1)).map(|j| j.state),
        Some(JobState::Assigned)
    );
    lab.replays();
}

#[test]
fn a_disconnected_agent_loses_its_leases_at_the_grace() {
    let mut lab = Lab::with_q1();
    lab.ok(|s| s.agent_connected("a2", &[dev("q2", "qemu", &[])], &[], Millis(0)));
    lab.ok(|s| s.submit(JobId(1), qemu(), Millis(0)));
    assert_eq!(
        lab.s.job(JobId(1)).and_then(|j| j.device.clone()),
        Some("q1".into())
    );
    lab.run(|s| s.agent_disconnected("a1", Millis(1_000)));
    assert_eq!(
        lab.run(|s| s.agent_disconnected("a1", Millis(1_001))),
        [],
        "twice is nothing"
    );
    assert!(!lab.s.agent_is_connected("a1"));
    assert_eq!(lab.s.next_deadline(), Some(Millis(11_000)));
    assert_eq!(lab.run(|s| s.tick(Millis(10_999))), []);
    let ev = lab.run(|s| s.tick(Millis(11_000)));
    assert_eq!(
        finished(&ev),
        [(
            JobId(1),
            Outcome::InfraError,
            "agent a1 disconnected at 1000ms and did not return within 10s".into()
        )]
    );
    // Offline, and it still remembers that it needs a check.
    let d = lab.s.device("q1").expect("device");
    assert_eq!(
        (d.state, d.unconfirmed),
        (DeviceState::Offline, Some(LeaseId(1)))
    );
    assert_eq!(lab.s.next_deadline(), None);

    // a1 comes back still holding the dead lease: q1 waits for its DeviceReady.
    let ev = lab.ok(|s| {
        s.agent_connected(
            "a1",
            &[dev("q1", "qemu", &[])],
            &[(LeaseId(1), Epoch(1))],
            Millis(12_000),
        )
    });
    assert_eq!(kinds(&ev), ["agent-connected"]);
    assert_eq!(
        lab.s.device("q1").map(|d| d.state),
        Some(DeviceState::NeedsCheck)
    );
    lab.ok(|s| s.device_ready("a1", "q1", Millis(12_001)));
    assert_eq!(lab.s.device("q1").map(|d| d.state), Some(DeviceState::Idle));

    // The same again, but a1 comes back holding nothing: its hello confirms the teardown.
    lab.ok(|s| s.submit(JobId(2), qemu(), Millis(13_000)));
    lab.run(|s| s.agent_disconnected("a1", Millis(13_000)));
    lab.run(|s| s.tick(Millis(23_000)));
    let ev = lab.ok(|s| s.agent_connected("a1", &[dev("q1", "qemu", &[])], &[], Millis(24_000)));
    assert_eq!(kinds(&ev), ["agent-connected", "device-ready"]);
    lab.replays();
}

#[test]
fn leases_expire_without_heartbeats() {
    let mut lab = Lab::with_q1();
    lab.ok(|s| s.submit(JobId(1), qemu(), Millis(0)));
    let ev = lab.run(|s| s.heartbeat("a1", Millis(30_000)));
    assert_eq!(
        ev,
        [Event::LeaseRenewed {
            lease: LeaseId(1),
            expires: Millis(30_000 + TTL)
        }]
    );
    assert_eq!(lab.run(|s| s.heartbeat("nobody", Millis(30_000))), []);
    assert_eq!(lab.run(|s| s.tick(Millis(30_000 + TTL - 1))), []);
    let ev = lab.run(|s| s.tick(Millis(30_000 + TTL)));
    assert_eq!(kinds(&ev), ["job-finished", "lease-released"]);
    assert_eq!(
        finished(&ev),
        [(
            JobId(1),
            Outcome::InfraError,
            "lease expired: agent a1 silent since 30000ms".into()
        )]
    );
    assert_eq!(
        lab.s.device("q1").map(|d| d.state),
        Some(DeviceState::NeedsCheck)
    );
    lab.replays();
}

#[test]
fn an_unconfirmed_cancel_ends_at_the_cancel_grace() {
    let mut lab = Lab::with_q1();
    lab.ok(|s| s.submit(JobId(1), qemu(), Millis(0)));
    lab.ok(|s| s.job_started(LeaseId(1), Epoch(1), Millis(0)));
    lab.ok(|s| s.cancel(JobId(1), Millis(1_000)));
    assert_eq!(lab.s.next_deadline(), Some(Millis(9_000)));
    assert_eq!(lab.run(|s| s.tick(Millis(8_999))), []);
    let ev = lab.run(|s| s.tick(Millis(9_000)));
    assert_eq!(
        finished(&ev),
        [(
            JobId(1),
            Outcome::Canceled,
            "canceled at 1000ms; agent a1 did not confirm within 8s".into()
        )]
    );
    assert_eq!(
        lab.s.device("q1").map(|d| d.state),
        Some(DeviceState::NeedsCheck)
    );
    lab.replays();
}

#[test]
fn a_controller_restart_disconnects_every_agent_and_renews_every_lease() {
    let mut lab = Lab::with_q1();
    lab.ok(|s| s.agent_connected("a2", &[dev("q2", "qemu", &[])], &[], Millis(0)));
    lab.ok(|s| s.submit(JobId(1), qemu(), Millis(0)));
    let mut s = Scheduler::replay(Config::default(), &lab.log).expect("replays");
    assert_eq!(s, lab.s);
    let ev = s.restarted(Millis(100));
    assert_eq!(
        kinds(&ev),
        ["agent-disconnected", "agent-disconnected", "lease-renewed"]
    );
    assert!(!s.agent_is_connected("a1") && !s.agent_is_connected("a2"));
    assert_eq!(s.device("q2").map(|d| d.state), Some(DeviceState::Offline));
    assert_eq!(s.device("q1").map(|d| d.state), Some(DeviceState::Busy));
    assert_eq!(
        s.lease(LeaseId(1)).map(|l| l.expires),
        Some(Millis(100 + TTL))
    );
}

#[test]
fn devices_an_agent_no_longer_lists_are_removed_or_withdrawn() {
    let mut lab = Lab::new();
    lab.ok(|s| {
        s.agent_connected(
            "a1",
            &[dev("q1", "qemu", &[]), dev("q2", "qemu", &[])],
            &[],
            Millis(0),
        )
    });
    lab.ok(|s| s.submit(JobId(1), qemu(), Millis(0)));
    assert_eq!(
        lab.s.job(JobId(1)).and_then(|j| j.device.clone()),
        Some("q1".into())
    );
    // a1 reconnects offering neither, but still running job 1 on q1.
    lab.run(|s| s.agent_disconnected("a1", Millis(1)));
    lab.ok(|s| s.agent_connected("a1", &[], &[(LeaseId(1), Epoch(1))], Millis(2)));
    assert!(lab.s.device("q2").is_none());
    let q1 = lab.s.device("q1").expect("kept while leased");
    assert!(q1.withdrawn);
    // Its lease is no longer renewed ...
    assert_eq!(lab.run(|s| s.heartbeat("a1", Millis(3))), []);
    // ... and when it ends the device is gone too.
    lab.ok(|s| {
        s.job_finished(
            LeaseId(1),
            Epoch(1),
            Outcome::Passed,
            String::new(),
            Millis(4),
        )
    });
    assert!(lab.s.device("q1").is_none());
    assert_eq!(lab.s.devices().count(), 0);
    // Registered again, it continues its epochs.
    lab.ok(|s| s.agent_connected("a1", &[dev("q1", "qemu", &[])], &[], Millis(5)));
    let ev = lab.ok(|s| s.submit(JobId(2), qemu(), Millis(6)));
    assert_eq!(grants(&ev), [(LeaseId(2), Epoch(2), JobId(2), "q1".into())]);
    lab.replays();
}

#[test]
fn next_deadline_is_the_earliest_of_expiry_and_graces() {
    let mut s = Scheduler::new(Config {
        lease_ttl: Duration::from_secs(60),
        disconnect_grace: Duration::from_secs(10),
        cancel_grace: Duration::from_secs(8),
        ..Config::default()
    });
    assert_eq!(s.next_deadline(), None);
    s.agent_connected("a1", &[dev("q1", "qemu", &[])], &[], Millis(0))
        .expect("connects");
    s.agent_connected("a2", &[dev("q2", "qemu", &[])], &[], Millis(0))
        .expect("connects");
    s.submit(JobId(1), qemu(), Millis(0)).expect("submits");
    s.submit(JobId(2), qemu(), Millis(1_000)).expect("submits");
    assert_eq!(s.next_deadline(), Some(Millis(60_000)));
    s.heartbeat("a1", Millis(5_000));
    assert_eq!(s.next_deadline(), Some(Millis(61_000)));
    s.agent_disconnected("a2", Millis(20_000));
    assert_eq!(s.next_deadline(), Some(Millis(30_000)));
    s.cancel(JobId(1), Millis(21_000)).expect("cancels");
    assert_eq!(s.next_deadline(), Some(Millis(29_000)));
}

#[test]
fn a_silent_agent_keeps_its_running_job_but_its_idle_devices_take_no_work() {
    let mut lab = Lab::new();
    lab.ok(|s| {
        s.agent_connected(
            "a1",
            &[dev("q1", "qemu", &[]), dev("q2", "qemu", &[])],
            &[],
            Millis(0),
        )
    });
    lab.ok(|s| s.submit(JobId(1), qemu(), Millis(1)));
    let busy = lab.s.lease(LeaseId(1)).expect("granted").device.clone();
    let other = if busy == "q1" { "q2" } else { "q1" };
    // Heard agents do not become heard again.
    assert_eq!(lab.run(|s| s.agent_heard("a1", Millis(2))), []);
    let events = lab.run(|s| s.agent_silent("a1", Millis(3)));
    assert_eq!(kinds(&events), ["agent-silent"]);
    assert_eq!(lab.s.agent_presence("a1"), Some(AgentState::Silent));
    assert!(lab.s.agent_is_connected("a1") && !lab.s.agent_takes_work("a1"));
    // Silent twice is nothing.
    assert_eq!(lab.run(|s| s.agent_silent("a1", Millis(4))), []);
    assert_eq!(
        lab.s.device(&busy).map(|d| d.state),
        Some(DeviceState::Busy)
    );
    assert!(
        lab.s.lease(LeaseId(1)).is_some(),
        "the running job keeps its lease"
    );
    assert_eq!(
        lab.s.device(other).map(|d| d.state),
        Some(DeviceState::Offline)
    );
    // A new job waits instead of going to the silent agent.
    assert_eq!(
        kinds(&lab.ok(|s| s.submit(JobId(2), qemu(), Millis(5)))),
        ["job-submitted"]
    );
    assert_eq!(lab.s.job(JobId(2)).map(|j| j.state), Some(JobState::Queued));
    // A heartbeat's lease renewal works while silent; the agent is heard again at once.
    let events = lab.run(|s| s.agent_heard("a1", Millis(6)));
    assert_eq!(kinds(&events), ["agent-heard", "lease-granted"]);
    assert_eq!(grants(&events)[0].2, JobId(2));
    assert_eq!(grants(&events)[0].3, other);
    lab.replays();
}

#[test]
fn a_silent_agent_disconnects_and_reconnects_heard() {
    let mut lab = Lab::with_q1();
    lab.run(|s| s.agent_silent("a1", Millis(1)));
    assert_eq!(
        lab.s.device("q1").map(|d| d.state),
        Some(DeviceState::Offline)
    );
    lab.run(|s| s.agent_disconnected("a1", Millis(2)));
    assert_eq!(lab.s.agent_presence("a1"), Some(AgentState::Disconnected));
    // Neither silent nor heard applies to a disconnected agent, nor to an unknown one.
    assert_eq!(lab.run(|s| s.agent_silent("a1", Millis(3))), []);
    assert_eq!(lab.run(|s| s.agent_heard("a1", Millis(3))), []);
    assert_eq!(lab.run(|s| s.agent_silent("nobody", Millis(3))), []);
    assert_eq!(lab.s.agent_presence("nobody"), None);
    lab.run(|s| s.agent_silent("a1", Millis(3)));
    lab.ok(|s| s.agent_connected("a1", &[dev("q1", "qemu", &[])], &[], Millis(4)));
    assert_eq!(lab.s.agent_presence("a1"), Some(AgentState::Connected));
    assert_eq!(lab.s.device("q1").map(|d| d.state), Some(DeviceState::Idle));
    // A silent agent goes disconnected at a controller restart, like a heard one.
    lab.run(|s| s.agent_silent("a1", Millis(5)));
    lab.run(|s| s.restarted(Millis(6)));
    assert_eq!(lab.s.agent_presence("a1"), Some(AgentState::Disconnected));
    lab.replays();
}

#[test]
fn silent_and_heard_events_that_do_not_fit_are_refused() {
    let mut s = Scheduler::new(Config::default());
    let silent = Event::AgentSilent {
        agent: "a1".into(),
        at: Millis(1),
    };
    assert!(s.apply(&silent).is_err(), "never connected");
    s.agent_connected("a1", &[dev("q1", "qemu", &[])], &[], Millis(0))
        .expect("connected");
    let heard = Event::AgentHeard {
        agent: "a1".into(),
        at: Millis(1),
    };
    assert!(s.apply(&heard).is_err(), "heard while heard");
    s.apply(&silent).expect("silent");
    assert!(s.apply(&silent).is_err(), "silent while silent");
    s.apply(&heard).expect("heard");
}
