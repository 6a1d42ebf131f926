//! Devices taken out of the pool and returned, quarantine after infra errors, tag edits.

use super::*;
use dutlab_scheduler::{Interrupt, LAB, StateNote};

fn note(state: DeviceState, at: u64) -> StateNote {
    StateNote {
        state,
        reason: "new PSU".into(),
        by: "root".into(),
        job: None,
        at: Millis(at),
    }
}

#[test]
fn a_device_in_maintenance_takes_no_work_until_it_is_idle_again() {
    let mut lab = Lab::with_q1();
    let ev = lab.ok(|s| {
        s.set_device_state(
            "q1",
            note(DeviceState::Maintenance, 1),
            Interrupt::AfterLease,
        )
    });
    assert_eq!(kinds(&ev), ["device-state-set"]);
    assert_eq!(
        lab.s.device("q1").map(|d| d.state),
        Some(DeviceState::Maintenance)
    );
    let ev = lab.ok(|s| s.submit(JobId(1), qemu(), Millis(2)));
    assert_eq!(
        kinds(&ev),
        ["job-submitted"],
        "no grant on a device in maintenance"
    );
    // The agent's reconnect keeps it out.
    lab.run(|s| s.agent_disconnected("a1", Millis(3)));
    lab.ok(|s| s.agent_connected("a1", &[dev("q1", "qemu", &[])], &[], Millis(4)));
    assert_eq!(
        lab.s.device("q1").map(|d| d.state),
        Some(DeviceState::Maintenance)
    );
    let ev =
        lab.ok(|s| s.set_device_state("q1", note(DeviceState::Idle, 5), Interrupt::AfterLease));
    assert_eq!(kinds(&ev), ["device-state-set", "lease-granted"]);
    let history: Vec<DeviceState> = lab.s.device_history("q1").map(|n| n.state).collect();
    assert_eq!(history, [DeviceState::Maintenance, DeviceState::Idle]);
    assert_eq!(
        lab.refused(|s| s.set_device_state("q1", note(DeviceState::Busy, 6), Interrupt::Now)),
        Refusal::NotSettable(DeviceState::Busy)
    );
    assert_eq!(
        lab.refused(|s| s.set_device_state("zz", note(DeviceState::Retired, 6), Interrupt::Now)),
        Refusal::UnknownDevice("zz".into())
    );
    lab.replays();
}

#[test]
fn a_running_job_finishes_first_unless_now_cancels_it() {
    let mut lab = Lab::with_q1();
    let ev = lab.ok(|s| s.submit(JobId(1), qemu(), Millis(1)));
    let (lease, epoch, _, _) = grants(&ev)[0].clone();
    lab.ok(|s| s.job_started(lease, epoch, Millis(2)));
    let ev =
        lab.ok(|s| s.set_device_state("q1", note(DeviceState::Retired, 3), Interrupt::AfterLease));
    assert_eq!(kinds(&ev), ["device-state-set"]);
    assert_eq!(lab.s.device("q1").map(|d| d.state), Some(DeviceState::Busy));
    assert_eq!(
        lab.s.job(JobId(1)).map(|j| j.state),
        Some(JobState::Running)
    );
    lab.ok(|s| s.submit(JobId(2), qemu(), Millis(4)));
    let ev = lab.ok(|s| s.job_finished(lease, epoch, Outcome::Passed, String::new(), Millis(5)));
    assert_eq!(
        kinds(&ev),
        ["job-finished", "lease-released"],
        "job 2 does not get it"
    );
    assert_eq!(
        lab.s.device("q1").map(|d| d.state),
        Some(DeviceState::Retired)
    );
    // Back, job 2 runs; maintenance --now cancels it.
    let ev =
        lab.ok(|s| s.set_device_state("q1", note(DeviceState::Idle, 6), Interrupt::AfterLease));
    let (lease, epoch, job, _) = grants(&ev)[0].clone();
    assert_eq!(job, JobId(2));
    let ev =
        lab.ok(|s| s.set_device_state("q1", note(DeviceState::Maintenance, 7), Interrupt::Now));
    assert_eq!(kinds(&ev), ["device-state-set", "cancel-requested"]);
    let ev = lab.ok(|s| s.job_finished(lease, epoch, Outcome::Canceled, String::new(), Millis(8)));
    assert_eq!(finished(&ev)[0].1, Outcome::Canceled);
    assert_eq!(
        lab.s.device("q1").map(|d| d.state),
        Some(DeviceState::Maintenance)
    );
    lab.replays();
}

#[test]
fn three_infra_errors_in_a_row_make_a_device_bad() {
    let mut lab = Lab::with_q1();
    let run = |lab: &mut Lab, job: u64, outcome: Outcome| {
        let ev = lab.ok(|s| s.submit(JobId(job), qemu(), Millis(job * 10)));
        let (lease, epoch, _, _) = grants(&ev)[0].clone();
        lab.ok(|s| {
            s.job_finished(
                lease,
                epoch,
                outcome,
                "qemu died".into(),
                Millis(job * 10 + 1),
            )
        })
    };
    run(&mut lab, 1, Outcome::InfraError);
    run(&mut lab, 2, Outcome::InfraError);
    run(&mut lab, 3, Outcome::Passed);
    assert_eq!(lab.s.infra_streak("q1"), 0, "a pass ends the row");
    run(&mut lab, 4, Outcome::InfraError);
    run(&mut lab, 5, Outcome::InfraError);
    let ev = run(&mut lab, 6, Outcome::InfraError);
    assert_eq!(
        kinds(&ev),
        ["job-finished", "device-state-set", "lease-released"]
    );
    let bad = lab.s.out_of_service("q1").expect("quarantined").clone();
    assert_eq!(
        (bad.state, bad.by.as_str(), bad.job),
        (DeviceState::Bad, LAB, Some(JobId(6)))
    );
    assert!(bad.reason.contains("3 infra errors in a row") && bad.reason.contains("qemu died"));
    assert_eq!(lab.s.device("q1").map(|d| d.state), Some(DeviceState::Bad));
    let ev = lab.ok(|s| s.submit(JobId(7), qemu(), Millis(100)));
    assert!(grants(&ev).is_empty());
    lab.ok(|s| s.set_device_state("q1", note(DeviceState::Idle, 101), Interrupt::AfterLease));
    assert_eq!(lab.s.infra_streak("q1"), 0);
    lab.replays();
}

#[test]
fn tag_edits_extend_the_agents_tags_and_survive_its_reconnect() {
    let mut lab = Lab::new();
    lab.ok(|s| s.agent_connected("a1", &[dev("q1", "qemu", &["usb"])], &[], Millis(0)));
    let ev = lab.ok(|s| s.submit(JobId(1), spec("qemu", &["gpu"], 50), Millis(1)));
    assert!(grants(&ev).is_empty());
    let ev = lab.ok(|s| {
        s.set_device_tags(
            "q1",
            vec!["gpu".into()],
            vec!["usb".into()],
            "root",
            Millis(2),
        )
    });
    assert_eq!(kinds(&ev), ["device-tags-set", "lease-granted"]);
    assert_eq!(
        lab.s.device("q1").map(|d| d.info.tags.clone()),
        Some(vec!["gpu".to_owned()])
    );
    lab.run(|s| s.agent_disconnected("a1", Millis(3)));
    lab.ok(|s| s.agent_connected("a1", &[dev("q1", "qemu", &["usb", "x"])], &[], Millis(4)));
    let d = lab.s.device("q1").expect("registered");
    assert_eq!(d.info.tags, ["x", "gpu"]);
    assert_eq!(d.agent_tags, ["usb", "x"]);
    assert_eq!(
        lab.refused(|s| s.set_device_tags(
            "q1",
            vec!["a".into()],
            vec!["a".into()],
            "root",
            Millis(5)
        )),
        Refusal::TagConflict("a".into())
    );
    lab.replays();
}
