//! One real job end to end: the agent runs examples/qemu-smoke.yaml on a QEMU DUT under TCG
//! for a test controller, loses the link in the middle of the boot, and resumes the log from
//! the controller's cursor. Afterwards no QEMU of the agent survives.

mod common;

use anyhow::{Context, Result, bail, ensure};
use common::*;
use proto::link::{AgentMessage, ControllerMessage};
use proto::log::LogKind;
use proto::{Epoch, LeaseId, Outcome};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_job_on_qemu_survives_a_link_drop_and_leaves_nothing_running() -> Result<()> {
    let image = testkit::guest_image()?;
    let job = std::fs::read_to_string(testkit::workspace_root().join("examples/qemu-smoke.yaml"))?;
    let controller = TestController::start().await?;
    let host = Host::new()?;
    let config = host.config(
        &controller.url,
        &format!(
            "- name: qemu-01\n  device_type: qemu\n  image_dir: {}\n",
            image.display()
        ),
    )?;
    let work_dir = config.work_dir.clone();
    let agent = RunningAgent::start(config);

    let mut peer = controller.accept().await?;
    peer.hello().await?;
    peer.welcome(1000, Vec::new()).await?;
    peer.start_job(41, "qemu-01", &job).await?;
    let mut first = Vec::new();
    ensure!(matches!(
        peer.recv_message(&mut first).await?,
        AgentMessage::JobStarted { .. }
    ));
    // Wait for the DUT to talk, then cut the link in the middle of the boot.
    while first.iter().filter(|r| r.kind == LogKind::Console).count() < 3 {
        match peer.recv_work().await? {
            Incoming::Frame(f) => first.extend(f.records),
            other => bail!("unexpected {other:?} during boot"),
        }
    }
    drop(peer);
    let stored = first.len() as u64 / 2;

    let mut peer = controller.accept().await?;
    let hello = peer.hello().await?;
    // The lease is held; if the job ended while the agent was reconnecting, the unacknowledged
    // report comes with it (and again as JobFinished after the resent records).
    ensure!(hello.held.len() == 1 && hello.held[0].lease == LeaseId(41));
    let held_report = hello.held[0].report.clone();
    peer.welcome(1000, vec![cursor(41, stored)]).await?;
    let mut rest = Vec::new();
    let (report, last_seq) = match peer.recv_message(&mut rest).await? {
        AgentMessage::JobFinished {
            lease: LeaseId(41),
            report,
            last_seq,
            ..
        } => (report, last_seq),
        other => bail!("expected job-finished, got {other:?}"),
    };
    ensure!(
        report.outcome == Outcome::Passed,
        "{report:?}\n{}",
        rest.iter()
            .map(|r| format!("{} {}: {}", r.seq, r.kind, r.text))
            .collect::<Vec<_>>()
            .join("\n")
    );
    ensure!(report.cases.len() == 4, "{:?}", report.cases);
    if let Some(held) = held_report {
        ensure!(
            held == report,
            "hello carried {held:?}, job-finished {report:?}"
        );
    }
    // Exactly the records after the cursor, each once, up to the last one.
    let got = seqs(&rest);
    let want: Vec<u64> = (stored + 1..=last_seq.0).collect();
    ensure!(got == want, "resent {got:?}, wanted {want:?}");
    ensure!(rest[..first.len() - stored as usize] == first[stored as usize..]);
    ensure!(
        rest.iter().filter(|r| r.kind == LogKind::Case).count() == 4,
        "case records"
    );
    ensure!(
        rest.iter()
            .any(|r| r.kind == LogKind::Console && r.text.contains("login:")),
        "no login prompt in the log"
    );
    ensure!(
        rest.iter()
            .any(|r| r.kind == LogKind::Input && r.text == "root")
    );

    // The DUT is off and its work directory gone.
    let needle = work_dir.display().to_string();
    let qemu: Vec<_> = testkit::processes_mentioning(&needle)
        .into_iter()
        .filter(|(_, cmdline)| cmdline.contains("qemu-system"))
        .collect();
    ensure!(qemu.is_empty(), "QEMU left running: {qemu:?}");
    let device_dir = work_dir.join("devices").join("qemu-01");
    let left: Vec<_> = std::fs::read_dir(&device_dir)
        .context("device dir")?
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    ensure!(
        left.is_empty(),
        "left in {}: {left:?}",
        device_dir.display()
    );

    peer.send(&ControllerMessage::FinishAcked {
        lease: LeaseId(41),
        epoch: Epoch(1),
    })
    .await?;
    let spool = host.spool_dir(41);
    eventually("the spool of lease 41 is deleted", || !spool.exists()).await?;
    agent.shutdown().await
}
