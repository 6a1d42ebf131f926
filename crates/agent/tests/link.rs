//! The agent against a test controller on a real WebSocket: hello, jobs, logs, reconnects,
//! acknowledgements, refusals and hostile input. No QEMU is needed here.

mod common;

use anyhow::{Context, Result, bail, ensure};
use common::*;
use proto::link::{AgentMessage, ControllerMessage};
use proto::log::{LogKind, LogRecord};
use proto::{Epoch, LeaseId, Outcome, Seq};
use std::time::Duration;

/// The agent's own first record, then the runner's.
fn assert_consecutive(records: &[LogRecord], from: u64) -> Result<()> {
    let got = seqs(records);
    let want: Vec<u64> = (from..from + records.len() as u64).collect();
    ensure!(got == want, "sequence numbers {got:?}, wanted {want:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_carries_devices_and_the_bearer_token() -> Result<()> {
    let controller = TestController::start().await?;
    let host = Host::new()?;
    let agent = RunningAgent::start(host.default_config(&controller.url)?);
    let mut peer = controller.accept().await?;
    ensure!(peer.path == proto::link::LINK_PATH, "path {}", peer.path);
    ensure!(
        peer.authorization.as_deref() == Some(&format!("Bearer {TOKEN}")[..]),
        "{:?}",
        peer.authorization
    );
    let hello = peer.hello().await?;
    ensure!(hello.agent == "host-1");
    ensure!(hello.version == env!("CARGO_PKG_VERSION"));
    ensure!(hello.held.is_empty());
    let names: Vec<&str> = hello.devices.iter().map(|d| d.name.as_str()).collect();
    ensure!(names == ["qemu-01", "qemu-02"], "{names:?}");
    ensure!(hello.devices[0].tags == ["tcg"]);
    ensure!(hello.devices[0].capabilities == ["power", "console", "shell", "storage", "network"]);
    peer.welcome(100, Vec::new()).await?;
    // Heartbeats follow at the period the welcome asked for.
    for _ in 0..2 {
        match peer.recv().await? {
            Incoming::Message(AgentMessage::Heartbeat) => {}
            other => bail!("expected a heartbeat, got {other:?}"),
        }
    }
    agent.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_a_missing_image_reports_job_error_with_its_log_and_is_forgotten_on_ack()
-> Result<()> {
    let controller = TestController::start().await?;
    let host = Host::new()?;
    let agent = RunningAgent::start(host.default_config(&controller.url)?);
    let mut peer = controller.accept().await?;
    peer.hello().await?;
    peer.welcome(1000, Vec::new()).await?;
    peer.start_job(7, "qemu-01", MISSING_IMAGE_JOB).await?;
    let mut log = Vec::new();
    let started = peer.recv_message(&mut log).await?;
    ensure!(
        started
            == AgentMessage::JobStarted {
                lease: LeaseId(7),
                epoch: Epoch(1)
            },
        "{started:?}"
    );
    let (report, last_seq) = match peer.recv_message(&mut log).await? {
        AgentMessage::JobFinished {
            lease: LeaseId(7),
            epoch: Epoch(1),
            report,
            last_seq,
        } => (report, last_seq),
        other => bail!("expected job-finished, got {other:?}"),
    };
    ensure!(report.outcome == Outcome::JobError, "{report:?}");
    ensure!(report.job_name == "missing image");
    ensure!(
        report.reason.contains("/nonexistent/vmlinuz: no such file"),
        "{}",
        report.reason
    );
    // Every record arrived before the report, numbered from 1 without a hole.
    assert_consecutive(&log, 1)?;
    ensure!(last_seq == Seq(log.len() as u64), "{last_seq:?} {log:?}");
    ensure!(log[0].kind == LogKind::Note && log[0].text.contains("lease 7"));
    ensure!(
        log.iter()
            .any(|r| r.kind == LogKind::Action && r.text == "deploy"),
        "{log:?}"
    );
    ensure!(host.spool_dir(7).join("meta.json").exists());
    // The device is free again.
    peer.start_job(8, "qemu-01", MISSING_IMAGE_JOB).await?;
    ensure!(matches!(
        peer.recv_message(&mut Vec::new()).await?,
        AgentMessage::JobStarted {
            lease: LeaseId(8),
            ..
        }
    ));
    // Acknowledging the report makes the agent forget the lease and its spool.
    peer.send(&ControllerMessage::FinishAcked {
        lease: LeaseId(7),
        epoch: Epoch(1),
    })
    .await?;
    let spool = host.spool_dir(7);
    eventually("the spool of lease 7 is deleted", || !spool.exists()).await?;
    agent.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definition_that_does_not_parse_is_a_job_error() -> Result<()> {
    let controller = TestController::start().await?;
    let host = Host::new()?;
    let agent = RunningAgent::start(host.default_config(&controller.url)?);
    let mut peer = controller.accept().await?;
    peer.hello().await?;
    peer.welcome(1000, Vec::new()).await?;
    peer.start_job(3, "qemu-02", "job_name: [unclosed").await?;
    let mut log = Vec::new();
    ensure!(matches!(
        peer.recv_message(&mut log).await?,
        AgentMessage::JobStarted { .. }
    ));
    match peer.recv_message(&mut log).await? {
        AgentMessage::JobFinished { report, .. } => {
            ensure!(report.outcome == Outcome::JobError);
            ensure!(report.reason.contains("job-30.yaml"), "{}", report.reason);
            ensure!(log.iter().any(|r| r.text == report.reason), "{log:?}");
        }
        other => bail!("expected job-finished, got {other:?}"),
    }
    agent.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_and_unknown_devices_are_refused_and_garbage_is_ignored() -> Result<()> {
    let (http, _server) = silent_http_server().await?;
    let controller = TestController::start().await?;
    let host = Host::new()?;
    let agent = RunningAgent::start(host.default_config(&controller.url)?);
    let mut peer = controller.accept().await?;
    peer.hello().await?;
    peer.welcome(1000, Vec::new()).await?;
    peer.start_job(1, "qemu-01", &hanging_job(&http)).await?;
    let mut log = Vec::new();
    ensure!(matches!(
        peer.recv_message(&mut log).await?,
        AgentMessage::JobStarted {
            lease: LeaseId(1),
            ..
        }
    ));
    // Hostile or unknown input changes nothing.
    peer.send_text("this is not json").await?;
    peer.send_text(r#"{"type":"format-disk","device":"qemu-01"}"#)
        .await?;
    peer.send_text(r#"{"type":"cancel-job","lease":"x"}"#)
        .await?;
    peer.send(&ControllerMessage::CancelJob {
        lease: LeaseId(99),
        epoch: Epoch(1),
    })
    .await?;
    peer.send(&ControllerMessage::CancelJob {
        lease: LeaseId(1),
        epoch: Epoch(5),
    })
    .await?;
    peer.start_job(2, "qemu-01", &hanging_job(&http)).await?;
    match peer.recv_message(&mut log).await? {
        AgentMessage::StartRefused {
            lease: LeaseId(2),
            reason,
            ..
        } => ensure!(reason.contains("busy with lease 1"), "{reason}"),
        other => bail!("expected start-refused, got {other:?}"),
    }
    peer.start_job(4, "nope", &hanging_job(&http)).await?;
    match peer.recv_message(&mut log).await? {
        AgentMessage::StartRefused {
            lease: LeaseId(4),
            reason,
            ..
        } => ensure!(reason.contains("no device named 'nope'"), "{reason}"),
        other => bail!("expected start-refused, got {other:?}"),
    }
    // The job still runs; a real cancel ends it.
    peer.send(&ControllerMessage::CancelJob {
        lease: LeaseId(1),
        epoch: Epoch(1),
    })
    .await?;
    match peer.recv_message(&mut log).await? {
        AgentMessage::JobFinished {
            lease: LeaseId(1),
            report,
            last_seq,
            ..
        } => {
            ensure!(report.outcome == Outcome::Canceled, "{report:?}");
            assert_consecutive(&log, 1)?;
            ensure!(last_seq.0 == log.len() as u64);
        }
        other => bail!("expected job-finished, got {other:?}"),
    }
    agent.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reconnect_the_agent_resends_exactly_the_records_after_the_cursor() -> Result<()> {
    let (http, _server) = silent_http_server().await?;
    let controller = TestController::start().await?;
    let host = Host::new()?;
    let agent = RunningAgent::start(host.default_config(&controller.url)?);

    // First connection: the job starts and logs; the controller stores only record 1.
    let mut peer = controller.accept().await?;
    peer.hello().await?;
    peer.welcome(1000, Vec::new()).await?;
    peer.start_job(5, "qemu-02", &hanging_job(&http)).await?;
    let mut first = Vec::new();
    ensure!(matches!(
        peer.recv_message(&mut first).await?,
        AgentMessage::JobStarted { .. }
    ));
    while !first.iter().any(|r| r.kind == LogKind::Action) {
        if let Incoming::Frame(f) = peer.recv_work().await? {
            first.extend(f.records);
        }
    }
    assert_consecutive(&first, 1)?;
    ensure!(first.len() >= 2, "{first:?}");
    drop(peer);

    // Second connection: the job is still held (running), the cursor says 1 is stored.
    let mut peer = controller.accept().await?;
    let hello = peer.hello().await?;
    ensure!(hello.held.len() == 1, "{:?}", hello.held);
    ensure!(hello.held[0].lease == LeaseId(5) && hello.held[0].report.is_none());
    ensure!(hello.held[0].device == "qemu-02");
    peer.welcome(1000, vec![cursor(5, 1)]).await?;
    let mut second = Vec::new();
    while second.len() < first.len() - 1 {
        match peer.recv_work().await? {
            Incoming::Frame(f) => second.extend(f.records),
            other => bail!("expected the resent records, got {other:?}"),
        }
    }
    assert_consecutive(&second, 2)?;
    ensure!(
        second[..] == first[1..],
        "resent records differ: {second:?} vs {first:?}"
    );
    // The job goes on; canceling it produces more records, then the report.
    peer.send(&ControllerMessage::CancelJob {
        lease: LeaseId(5),
        epoch: Epoch(1),
    })
    .await?;
    let (report, last_seq) = match peer.recv_message(&mut second).await? {
        AgentMessage::JobFinished {
            report, last_seq, ..
        } => (report, last_seq),
        other => bail!("expected job-finished, got {other:?}"),
    };
    ensure!(report.outcome == Outcome::Canceled);
    assert_consecutive(&second, 2)?;
    ensure!(last_seq.0 == second.len() as u64 + 1);
    drop(peer);

    // Third connection: the unacknowledged report is in the hello and sent again, with
    // nothing before it because the cursor is at the end.
    let mut peer = controller.accept().await?;
    let hello = peer.hello().await?;
    ensure!(hello.held.len() == 1);
    ensure!(
        hello.held[0].report.as_ref().map(|r| r.outcome) == Some(Outcome::Canceled),
        "{:?}",
        hello.held[0]
    );
    peer.welcome(1000, vec![cursor(5, last_seq.0)]).await?;
    match peer.recv_work().await? {
        Incoming::Message(AgentMessage::JobFinished {
            report: again,
            last_seq: again_seq,
            ..
        }) => ensure!(again == report && again_seq == last_seq),
        other => bail!("expected the report again, got {other:?}"),
    }
    peer.send(&ControllerMessage::FinishAcked {
        lease: LeaseId(5),
        epoch: Epoch(1),
    })
    .await?;
    let spool = host.spool_dir(5);
    eventually("the spool of lease 5 is deleted", || !spool.exists()).await?;
    drop(peer);

    // Fourth connection: nothing is held any more.
    let mut peer = controller.accept().await?;
    ensure!(peer.hello().await?.held.is_empty());
    peer.welcome(1000, Vec::new()).await?;
    agent.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_lease_reports_nothing_and_frees_its_device() -> Result<()> {
    let (http, _server) = silent_http_server().await?;
    let controller = TestController::start().await?;
    let host = Host::new()?;
    let agent = RunningAgent::start(host.default_config(&controller.url)?);
    let mut peer = controller.accept().await?;
    peer.hello().await?;
    peer.welcome(1000, Vec::new()).await?;
    peer.start_job(11, "qemu-01", &hanging_job(&http)).await?;
    ensure!(matches!(
        peer.recv_message(&mut Vec::new()).await?,
        AgentMessage::JobStarted { .. }
    ));
    peer.send(&ControllerMessage::DropLease {
        lease: LeaseId(11),
        epoch: Epoch(1),
    })
    .await?;
    match peer.recv_message(&mut Vec::new()).await? {
        AgentMessage::DeviceReady { device } => ensure!(device == "qemu-01"),
        other => bail!("expected device-ready, got {other:?}"),
    }
    ensure!(!host.spool_dir(11).exists());
    // A lease the controller does not list at welcome is dropped the same way.
    peer.start_job(12, "qemu-01", &hanging_job(&http)).await?;
    ensure!(matches!(
        peer.recv_message(&mut Vec::new()).await?,
        AgentMessage::JobStarted { .. }
    ));
    drop(peer);
    let mut peer = controller.accept().await?;
    ensure!(peer.hello().await?.held.len() == 1);
    peer.welcome(1000, Vec::new()).await?;
    match peer.recv_message(&mut Vec::new()).await? {
        AgentMessage::DeviceReady { device } => ensure!(device == "qemu-01"),
        other => bail!("expected device-ready, got {other:?}"),
    }
    let spool = host.spool_dir(12);
    eventually("the spool of lease 12 is deleted", || !spool.exists()).await?;
    agent.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_running_jobs_and_reports_them_before_closing() -> Result<()> {
    let (http, _server) = silent_http_server().await?;
    let controller = TestController::start().await?;
    let host = Host::new()?;
    let agent = RunningAgent::start(host.default_config(&controller.url)?);
    let mut peer = controller.accept().await?;
    peer.hello().await?;
    peer.welcome(1000, Vec::new()).await?;
    peer.start_job(21, "qemu-01", &hanging_job(&http)).await?;
    ensure!(matches!(
        peer.recv_message(&mut Vec::new()).await?,
        AgentMessage::JobStarted { .. }
    ));
    let done = tokio::spawn(agent.shutdown());
    match peer.recv_message(&mut Vec::new()).await? {
        AgentMessage::JobFinished { report, .. } => {
            ensure!(report.outcome == Outcome::InfraError, "{report:?}");
            ensure!(report.reason.contains("shut down"), "{}", report.reason);
        }
        other => bail!("expected job-finished, got {other:?}"),
    }
    done.await??;
    // The report was not acknowledged: it stays in the spool for the next start.
    ensure!(host.spool_dir(21).join("meta.json").exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_and_silence_lead_to_reconnects() -> Result<()> {
    let controller = TestController::start().await?;
    let host = Host::new()?;
    let agent = RunningAgent::start(host.default_config(&controller.url)?);
    let mut peer = controller.accept().await?;
    peer.hello().await?;
    peer.send(&ControllerMessage::Refused {
        reason: "not today".into(),
    })
    .await?;
    // Backoff after a refusal is short: the agent is back well within its cap.
    let mut peer = controller.accept_within(Duration::from_secs(5)).await?;
    peer.hello().await?;
    peer.welcome(100, Vec::new()).await?;
    // A controller that stops reading and writing is declared dead after 5 s.
    let started = tokio::time::Instant::now();
    let silent = peer;
    let mut peer = controller.accept_within(Duration::from_secs(15)).await?;
    ensure!(
        started.elapsed() >= Duration::from_secs(4),
        "reconnected too early"
    );
    drop(silent);
    peer.hello().await?;
    peer.welcome(1000, Vec::new()).await?;
    agent.shutdown().await
}

#[test]
fn killed_agent_leaves_a_report_for_the_next_one() -> Result<()> {
    let host = Host::new()?;
    let test_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let controller = test_rt.block_on(TestController::start())?;
    let (http, _server) = test_rt.block_on(silent_http_server())?;
    let config = host.default_config(&controller.url)?;

    // The first agent is a real process (this test binary, running `agent_child_process`),
    // killed with SIGKILL mid-job: no teardown, no report.
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["--exact", "agent_child_process", "--nocapture"])
        .env(CHILD_CONFIG, host.path().join("agent.yaml"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let (first_log, first_peer) = test_rt.block_on(async {
        let mut peer = controller.accept().await?;
        peer.hello().await?;
        peer.welcome(1000, Vec::new()).await?;
        peer.start_job(31, "qemu-01", &hanging_job(&http)).await?;
        let mut log = Vec::new();
        ensure!(matches!(
            peer.recv_message(&mut log).await?,
            AgentMessage::JobStarted { .. }
        ));
        while !log.iter().any(|r| r.kind == LogKind::Action) {
            if let Incoming::Frame(f) = peer.recv_work().await? {
                log.extend(f.records);
            }
        }
        anyhow::Ok((log, peer))
    })?;
    // Kill the agent while its link is still up: it must not get to dial again (a stale
    // connection in the listener's backlog would be taken for the next agent's).
    child.kill()?;
    child.wait()?;
    drop(first_peer);

    // A process the dead agent left behind (an orphaned QEMU names its device directory).
    let leftover_dir = host
        .work_dir()
        .join("devices")
        .join("qemu-01")
        .join("dutlab-job-left");
    std::fs::create_dir_all(&leftover_dir)?;
    let mut leftover = {
        use std::os::unix::process::CommandExt;
        Group(
            std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("sleep 600 & wait # {}", leftover_dir.display()))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .process_group(0)
                .spawn()?,
        )
    };

    // The next agent kills it, and reports the lost job at once.
    // Right after spawn its /proc cmdline can still be empty: wait until it names the directory,
    // as an orphan of a killed agent long since does.
    let shown = std::time::Instant::now() + Duration::from_secs(5);
    while !std::fs::read(format!("/proc/{}/cmdline", leftover.0.id()))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("dutlab-job-left"))
    {
        ensure!(
            std::time::Instant::now() < shown,
            "the leftover never showed its command line"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    test_rt.block_on(async {
        let agent = RunningAgent::start(config);
        let mut peer = controller.accept().await?;
        let hello = peer.hello().await?;
        ensure!(hello.held.len() == 1, "{:?}", hello.held);
        let report = hello.held[0].report.clone().context("a report")?;
        ensure!(report.outcome == Outcome::InfraError);
        ensure!(
            report.reason == dutlab_agent::RESTARTED,
            "{}",
            report.reason
        );
        ensure!(report.job_name == "hang");
        // SIGKILL is delivered at once, but the exit takes a moment to be visible.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while leftover.0.try_wait()?.is_none() {
            ensure!(
                std::time::Instant::now() < deadline,
                "the leftover process survived"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        ensure!(
            !leftover_dir.exists(),
            "the leftover work directory survived"
        );
        peer.welcome(1000, vec![cursor(31, 0)]).await?;
        let mut log = Vec::new();
        let last_seq = match peer.recv_message(&mut log).await? {
            AgentMessage::JobFinished {
                lease: LeaseId(31),
                report: again,
                last_seq,
                ..
            } => {
                ensure!(again == report);
                last_seq
            }
            other => bail!("expected job-finished, got {other:?}"),
        };
        assert_consecutive(&log, 1)?;
        ensure!(log.len() as u64 == last_seq.0);
        ensure!(log[..first_log.len()] == first_log[..]);
        let last = log.last().context("records")?;
        ensure!(last.kind == LogKind::Note && last.text == dutlab_agent::RESTARTED);
        agent.shutdown().await
    })
}

/// Environment variable naming the configuration `agent_child_process` runs.
const CHILD_CONFIG: &str = "DUTLAB_AGENT_CHILD_CONFIG";

/// Runs an agent as a separate process for `killed_agent_leaves_a_report_for_the_next_one`
/// (which starts this test binary with [`CHILD_CONFIG`] set); without it, does nothing.
#[test]
fn agent_child_process() -> Result<()> {
    let Some(path) = std::env::var_os(CHILD_CONFIG) else {
        return Ok(());
    };
    let config = dutlab_agent::AgentConfig::load(std::path::Path::new(&path))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(dutlab_agent::run(config, std::future::pending()))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_drops_the_link_and_the_agent_comes_back() -> Result<()> {
    let controller = TestController::start().await?;
    let host = Host::new()?;
    let agent = RunningAgent::start(host.default_config(&controller.url)?);
    let mut peer = controller.accept().await?;
    peer.hello().await?;
    peer.welcome(1000, Vec::new()).await?;
    // Accepted, this would be ignored as garbage; the size limit drops the link instead.
    let huge = "x".repeat(proto::link::MAX_FRAME + 1);
    // The agent may hang up before the whole frame is written.
    let _ = peer.send_text(&huge).await;
    let mut peer = controller.accept().await?;
    peer.hello().await?;
    peer.welcome(1000, Vec::new()).await?;
    agent.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_local_state_is_fatal() -> Result<()> {
    let controller = TestController::start().await?;
    let host = Host::new()?;
    let config = host.default_config(&controller.url)?;
    // The work directory is taken by another agent.
    let first = RunningAgent::start(config.clone());
    let mut peer = controller.accept().await?;
    peer.hello().await?;
    let e = dutlab_agent::run(config.clone(), std::future::pending())
        .await
        .expect_err("a second agent on the same work directory");
    ensure!(e.to_string().contains("another agent"), "{e}");
    first.shutdown().await?;
    // The work directory cannot be created.
    let mut config = config;
    std::fs::write(host.path().join("a-file"), "")?;
    config.work_dir = host.path().join("a-file").join("work");
    let e = dutlab_agent::run(config, std::future::pending())
        .await
        .expect_err("no work directory");
    ensure!(
        matches!(e, dutlab_agent::AgentError::LocalState { .. }),
        "{e:?}"
    );
    Ok(())
}

/// A process group killed when the test ends, whatever its outcome.
struct Group(std::process::Child);

impl Drop for Group {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.0.wait();
    }
}
