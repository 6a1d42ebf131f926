//! People's leases through the public API: one pool with jobs, fair share, renewals up to
//! the cap, expiry, release and hand-off, replay and restart.

use dutlab_scheduler::{
    Config, DeviceInfo, Event, Holder, JobId, JobSpec, JobState, LeaseEnd, Millis, PersonLeaseId,
    PersonLeaseState, PrincipalId, Refusal, Scheduler, Waiter, Want,
};
use std::time::Duration;

const ALICE: PrincipalId = PrincipalId(1);
const BOB: PrincipalId = PrincipalId(2);

fn dev(name: &str) -> DeviceInfo {
    DeviceInfo {
        name: name.into(),
        device_type: "qemu".into(),
        tags: vec![],
        capabilities: vec![],
    }
}

fn lab(devices: &[&str]) -> (Scheduler, Vec<Event>) {
    let mut s = Scheduler::new(Config::default());
    let infos: Vec<DeviceInfo> = devices.iter().map(|d| dev(d)).collect();
    let log = s
        .agent_connected("a1", &infos, &[], Millis(0))
        .expect("connects");
    (s, log)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[allow(clippy::too_many_arguments)]
fn request(
    s: &mut Scheduler,
    log: &mut Vec<Event>,
    id: u64,
    who: PrincipalId,
    want: Want,
    ttl: u64,
    cap: u64,
    at: u64,
) -> Result<(), Refusal> {
    let name = if who == ALICE { "alice" } else { "bob" };
    let events = s.request_person_lease(
        PersonLeaseId(id),
        who,
        name,
        want,
        50,
        secs(ttl),
        secs(cap),
        Vec::new(),
        Millis(at),
    )?;
    log.extend(events);
    Ok(())
}

fn state(s: &Scheduler, id: u64) -> PersonLeaseState {
    s.person_lease(PersonLeaseId(id)).expect("known").state
}

fn job(owner: Option<PrincipalId>) -> JobSpec {
    JobSpec {
        device_type: "qemu".into(),
        priority: 50,
        owner,
        ..JobSpec::default()
    }
}

#[test]
fn a_lease_by_name_is_granted_renewed_up_to_its_cap_and_expires_at_its_deadline() {
    let (mut s, mut log) = lab(&["q1", "q2"]);
    request(
        &mut s,
        &mut log,
        1,
        ALICE,
        Want::Device("q2".into()),
        60,
        300,
        1_000,
    )
    .expect("ok");
    let p = s.person_lease(PersonLeaseId(1)).expect("known").clone();
    assert_eq!(p.state, PersonLeaseState::Held);
    assert_eq!(
        p.device.as_deref(),
        Some("q2"),
        "the named device, not the first idle one"
    );
    assert_eq!(p.expires, Some(Millis(61_000)));
    let lease = s.lease(p.lease.expect("granted")).expect("live").clone();
    assert!(
        matches!(&lease.holder, Holder::Person(h) if h.principal == ALICE && h.name == "alice")
    );

    // Renewals move the deadline to now + ttl, but never past grant + cap.
    log.extend(
        s.renew_person_lease(PersonLeaseId(1), secs(60), Millis(50_000))
            .expect("renews"),
    );
    assert_eq!(
        s.person_lease(PersonLeaseId(1)).and_then(|p| p.expires),
        Some(Millis(110_000))
    );
    log.extend(
        s.renew_person_lease(PersonLeaseId(1), secs(60), Millis(280_000))
            .expect("renews"),
    );
    assert_eq!(
        s.person_lease(PersonLeaseId(1)).and_then(|p| p.expires),
        Some(Millis(301_000))
    );
    // A restart keeps the stored deadline (jobs' leases get a fresh TTL instead).
    let mut again = Scheduler::replay(Config::default(), &log).expect("replays");
    assert_eq!(again, s);
    again.restarted(Millis(290_000));
    assert_eq!(
        again.person_lease(PersonLeaseId(1)).and_then(|p| p.expires),
        Some(Millis(301_000))
    );

    // Nothing happens before the deadline; at it the lease ends and the device needs a
    // check until its agent says the session is torn down (the DUT is off).
    assert_eq!(s.next_deadline(), Some(Millis(301_000)));
    assert!(s.tick(Millis(300_999)).is_empty());
    let ev = s.tick(Millis(301_000));
    let kinds: Vec<&str> = ev.iter().map(Event::kind).collect();
    assert_eq!(kinds, ["person-lease-ended", "lease-released"]);
    let p = s
        .person_lease(PersonLeaseId(1))
        .expect("kept after the end");
    assert_eq!(
        (p.state, p.end.clone()),
        (PersonLeaseState::Ended, Some(LeaseEnd::Expired))
    );
    assert_eq!(
        s.device("q2").map(|d| d.state),
        Some(dutlab_scheduler::DeviceState::NeedsCheck)
    );
    s.device_ready("a1", "q2", Millis(301_500))
        .expect("its agent confirms");
    assert_eq!(
        s.device("q2").map(|d| d.state),
        Some(dutlab_scheduler::DeviceState::Idle)
    );
    // Calls about it now say how it ended.
    assert_eq!(
        s.renew_person_lease(PersonLeaseId(1), secs(60), Millis(301_001)),
        Err(Refusal::PersonLeaseEnded {
            lease: PersonLeaseId(1),
            end: LeaseEnd::Expired
        })
    );
}

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let (mut s, mut log) = lab(&["q1"]);
    let before = s.clone();
    assert_eq!(
        request(
            &mut s,
            &mut log,
            1,
            ALICE,
            Want::Device("nope".into()),
            60,
            300,
            0
        ),
        Err(Refusal::UnknownDevice("nope".into()))
    );
    assert_eq!(
        request(
            &mut s,
            &mut log,
            1,
            ALICE,
            Want::Device("q1".into()),
            600,
            300,
            0
        ),
        Err(Refusal::Duration {
            ttl_ms: 600_000,
            cap_ms: 300_000
        })
    );
    assert_eq!(s, before);
    assert_eq!(
        s.end_person_lease(PersonLeaseId(9), LeaseEnd::Released, Millis(0)),
        Err(Refusal::UnknownPersonLease(PersonLeaseId(9)))
    );
}

#[test]
fn a_queued_job_waits_for_a_held_device_and_runs_after_release() {
    let (mut s, mut log) = lab(&["q1"]);
    request(
        &mut s,
        &mut log,
        1,
        ALICE,
        Want::Device("q1".into()),
        60,
        300,
        0,
    )
    .expect("ok");
    log.extend(
        s.submit(JobId(1), job(Some(BOB)), Millis(1))
            .expect("submits"),
    );
    assert_eq!(s.job(JobId(1)).map(|j| j.state), Some(JobState::Queued));
    assert_eq!(s.queue_position(JobId(1)), Some(0));
    let ev = s
        .end_person_lease(PersonLeaseId(1), LeaseEnd::Released, Millis(2))
        .expect("releases");
    let kinds: Vec<&str> = ev.iter().map(Event::kind).collect();
    assert_eq!(kinds, ["person-lease-ended", "lease-released"]);
    // The job waits for the agent to confirm that the DUT the person used is off.
    assert_eq!(s.job(JobId(1)).map(|j| j.state), Some(JobState::Queued));
    log.extend(ev);
    let ev = s.device_ready("a1", "q1", Millis(3)).expect("confirms");
    let kinds: Vec<&str> = ev.iter().map(Event::kind).collect();
    assert_eq!(kinds, ["device-ready", "lease-granted"]);
    assert_eq!(s.job(JobId(1)).map(|j| j.state), Some(JobState::Assigned));
    log.extend(ev);
    assert_eq!(
        Scheduler::replay(Config::default(), &log).expect("replays"),
        s
    );
}

#[test]
fn a_released_device_goes_to_the_waiting_lease_and_a_waiting_request_can_be_withdrawn() {
    let (mut s, mut log) = lab(&["q1"]);
    let any = || Want::Type {
        device_type: "qemu".into(),
        tags: vec![],
    };
    request(&mut s, &mut log, 1, ALICE, any(), 60, 300, 0).expect("ok");
    request(&mut s, &mut log, 2, BOB, any(), 60, 300, 1).expect("ok");
    request(&mut s, &mut log, 3, BOB, any(), 60, 300, 2).expect("ok");
    assert_eq!(
        (state(&s, 2), state(&s, 3)),
        (PersonLeaseState::Waiting, PersonLeaseState::Waiting)
    );
    assert_eq!(s.position(Waiter::Person(PersonLeaseId(3))), Some(1));
    log.extend(
        s.end_person_lease(PersonLeaseId(3), LeaseEnd::Released, Millis(3))
            .expect("withdraws"),
    );
    assert_eq!(state(&s, 3), PersonLeaseState::Ended);
    log.extend(
        s.end_person_lease(
            PersonLeaseId(1),
            LeaseEnd::EndedBy("root".into()),
            Millis(4),
        )
        .expect("ends"),
    );
    assert_eq!(state(&s, 2), PersonLeaseState::Waiting);
    log.extend(s.device_ready("a1", "q1", Millis(5)).expect("confirms"));
    assert_eq!(state(&s, 2), PersonLeaseState::Held);
    assert_eq!(
        s.person_lease(PersonLeaseId(2)).and_then(|p| p.granted),
        Some(Millis(5))
    );
    assert_eq!(
        Scheduler::replay(Config::default(), &log).expect("replays"),
        s
    );
}

#[test]
fn fair_share_puts_a_later_user_ahead_of_a_users_backlog() {
    let (mut s, mut log) = lab(&["q1"]);
    request(
        &mut s,
        &mut log,
        1,
        ALICE,
        Want::Device("q1".into()),
        60,
        300,
        0,
    )
    .expect("ok");
    for j in 1..=3 {
        log.extend(
            s.submit(JobId(j), job(Some(ALICE)), Millis(j))
                .expect("submits"),
        );
    }
    log.extend(
        s.submit(JobId(4), job(Some(BOB)), Millis(10))
            .expect("submits"),
    );
    let queued = s.queued();
    assert_eq!(
        queued,
        [4, 1, 2, 3].map(|j| Waiter::Job(JobId(j))),
        "alice's lease took round 0: bob's first job, in the current round, passes her backlog"
    );
    // Priority still comes first.
    let urgent = JobSpec {
        priority: 90,
        ..job(Some(ALICE))
    };
    log.extend(s.submit(JobId(5), urgent, Millis(11)).expect("submits"));
    assert_eq!(s.queued()[0], Waiter::Job(JobId(5)));
    assert_eq!(
        Scheduler::replay(Config::default(), &log).expect("replays"),
        s
    );
}

#[test]
fn agents_know_nothing_of_a_persons_lease() {
    let (mut s, mut log) = lab(&["q1"]);
    request(
        &mut s,
        &mut log,
        1,
        ALICE,
        Want::Device("q1".into()),
        60,
        300,
        0,
    )
    .expect("ok");
    let l = s.leases().next().expect("held").clone();
    // The agent reconnects holding nothing: the person's lease stays.
    s.agent_connected("a1", &[dev("q1")], &[], Millis(5))
        .expect("connects");
    assert_eq!(state(&s, 1), PersonLeaseState::Held);
    // Heartbeats do not renew it; agent messages about it are refused.
    assert!(s.heartbeat("a1", Millis(6)).is_empty());
    assert_eq!(
        s.job_started(l.id, l.epoch, Millis(7)),
        Err(Refusal::NotAJobLease(l.id))
    );
    // Its agent going away does not end it before its deadline.
    s.agent_disconnected("a1", Millis(8));
    assert!(s.tick(Millis(30_000)).is_empty());
    assert_eq!(state(&s, 1), PersonLeaseState::Held);
}
