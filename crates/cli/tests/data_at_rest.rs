//! System tests of the controller's data at rest: a real `dutlab serve`, simulated agents
//! speaking the link protocol over a real WebSocket (`testkit::sim_agent`), the real CLI.
//!
//! - Disk full on the log directory (a 256 KiB tmpfs, when the test may mount one) loses no
//!   acknowledged record and leaves no hole or duplicate.
//! - Reading and following finished logs holds no file descriptor of the controller.
//! - The data directory is 0700 and its files 0600; a more open one is reported.
//! - `dutlab agent` warns about a token file others can read.
//! - Names that could forge log lines are refused in a hello.
//!
//! Every wait has a deadline; nothing sleeps to synchronise.

use anyhow::{Context, Result, ensure};
use proto::link::ControllerMessage;
use proto::log::{LogKind, LogRecord};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use testkit::lab::Lab;
use testkit::sim_agent::{Heard, SimAgent, SimLease, console_frame, device};
use testkit::{Finished, Sandbox, Spawned, expect_code, wait_until};

const DUTLAB: &str = env!("CARGO_BIN_EXE_dutlab");
const WAIT: Duration = Duration::from_secs(30);
const DEVICE_TYPE: &str = "sim";
const DEVICE: &str = "sim-d0";

fn definition(n: usize) -> String {
    format!(
        "job_name: sim-{n}\ndevice_type: {DEVICE_TYPE}\nvisibility: public\ntimeouts:\n  job: 10m\nactions:\n\
         - boot:\n    method: qemu\n    prompts: ['# $']\n    auto_login: {{login_prompt: 'login:', username: root}}\n\
         - test:\n    definitions:\n    - from: inline\n      name: t\n      path: inline/t.yaml\n      repository:\n\
         \x20       metadata: {{format: Lava-Test Test Definition 1.0, name: t}}\n        run:\n          steps:\n          - 'true'\n"
    )
}

fn submit(lab: &Lab, n: usize) -> Result<u64> {
    let path = lab.write(&format!("job-{n}.yaml"), &definition(n))?;
    lab.submit(&path)
}

/// The stored log, one record per line.
fn stored_log(lab: &Lab, job: u64) -> Result<Vec<LogRecord>> {
    let done = lab.cli(&["job", "logs", &job.to_string(), "--json"])?;
    expect_code(&done, 0)?;
    done.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("log line {l:?}")))
        .collect()
}

/// Open file descriptors of the controller process.
fn fds(lab: &Lab) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{}/fd", lab.controller()?.pid()))?.count())
}

/// A simulated agent `sim` with the one device, welcomed.
fn sim_agent(lab: &Lab, token: &str) -> Result<SimAgent> {
    let (agent, welcome) = SimAgent::connect(
        lab.port(),
        token,
        "sim",
        vec![device(DEVICE, DEVICE_TYPE)],
        vec![],
    )?;
    welcome.map_err(anyhow::Error::msg)?;
    Ok(agent)
}

/// The text of record `seq` (1000 bytes, so a few frames fill the small disk).
fn text_of(seq: u64) -> String {
    let mut text = format!("record {seq:06} ");
    while text.len() < 1000 {
        text.push(char::from(b'a' + (seq % 26) as u8));
    }
    text
}

fn frame(l: SimLease, first: u64, count: u64) -> proto::link::LogFrame {
    let texts: Vec<String> = (first..first + count).map(text_of).collect();
    console_frame(l, first, &texts)
}

/// Waits until `stored` covers `until`; false when the link closed first.
fn acked_until(agent: &mut SimAgent, acked: &mut u64, until: u64) -> Result<bool> {
    loop {
        match agent.next(WAIT)? {
            Heard::Message(ControllerMessage::LogAcked { stored, .. }) => {
                *acked = (*acked).max(stored.0);
                if stored.0 >= until {
                    return Ok(true);
                }
            }
            Heard::Closed(_) => return Ok(false),
            Heard::Message(_) | Heard::Text(_) => {}
        }
    }
}

/// Unmounts a test's tmpfs when the test ends, however it ends.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Checks a stored log: records 1..n in order, console records as sent.
fn check_log(log: &[LogRecord]) -> Result<()> {
    for (i, r) in log.iter().enumerate() {
        ensure!(
            r.seq.0 == i as u64 + 1,
            "record {} has seq {} (hole or duplicate)",
            i + 1,
            r.seq
        );
        if r.kind == LogKind::Console {
            ensure!(
                r.text == text_of(r.seq.0),
                "record {} holds other text",
                r.seq
            );
        }
    }
    Ok(())
}

#[test]
fn disk_full_on_the_log_directory_loses_no_acknowledged_record() -> Result<()> {
    let mut refusal = None;
    let lab = Lab::start_prepared(DUTLAB, "data", |data_dir| {
        let logs = data_dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs"])
            .arg(&logs)
            .output()?;
        if !mounted.status.success() {
            refusal = Some(String::from_utf8_lossy(&mounted.stderr).trim().to_owned());
        }
        Ok(())
    })?;
    if let Some(refusal) = refusal {
        eprintln!(
            "SKIPPED: this test mounts a 256 KiB tmpfs as the log directory and may not here: {refusal}"
        );
        return Ok(());
    }
    let logs = lab.data_dir().join("logs");
    let _unmount = Mounted(logs.clone());
    let token = lab.token("sim", "agent")?;
    let mut agent = sim_agent(&lab, &token)?;
    let job = submit(&lab, 0)?;
    let lease = agent.take_job()?;
    ensure!(
        lease.job.0 == job,
        "started {:?}, submitted {job}",
        lease.job
    );

    // Fill the disk but for about 48 KiB: a few frames of 10 records fit, then writes fail.
    let filler = logs.join("filler");
    {
        let mut f = std::fs::File::create(&filler)?;
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
    }
    let full = std::fs::metadata(&filler)?.len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)?
        .set_len(full.saturating_sub(48 << 10))?;

    // Send until the controller closes the link (a failed write), counting what was acked.
    const TOTAL: u64 = 200;
    const PER_FRAME: u64 = 10;
    let mut acked = 0u64;
    let mut next = 1u64;
    let mut closed = false;
    while next <= TOTAL {
        if !agent.try_frame(&frame(lease, next, PER_FRAME)) {
            closed = true;
            break;
        }
        next += PER_FRAME;
        // Wait for this frame's ack or the close.
        if !acked_until(&mut agent, &mut acked, next - 1)? {
            closed = true;
            break;
        }
    }
    let controller = lab.controller()?;
    ensure!(
        closed,
        "all {TOTAL} records fit: the disk never filled ({})",
        controller.stderr_text()
    );
    ensure!(acked > 0, "nothing was acknowledged before the disk filled");
    controller.wait_for_stderr("closing the link so the agent resends", WAIT)?;

    // The file holds whole records only, every acknowledged one among them.
    let file = logs.join(format!("{job}.log"));
    let on_disk: Vec<LogRecord> = std::fs::read_to_string(&file)?
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("torn line in {file:?}: {l:?}")))
        .collect::<Result<_>>()?;
    check_log(&on_disk)?;
    ensure!(
        on_disk.len() as u64 >= acked,
        "{acked} records acked but {} on disk",
        on_disk.len()
    );

    // Free the space; the agent reconnects and resends from the controller's cursor.
    std::fs::remove_file(&filler)?;
    let (mut agent, resume) = SimAgent::connect(
        lab.port(),
        &token,
        "sim",
        vec![device(DEVICE, DEVICE_TYPE)],
        vec![lease.held(DEVICE)],
    )?;
    let resume = resume.map_err(anyhow::Error::msg)?;
    let cursor = resume
        .iter()
        .find(|c| c.lease == lease.lease)
        .context("no resume cursor for the held lease")?
        .stored
        .0;
    eprintln!(
        "disk full after {} records sent: {acked} acknowledged, {} on disk, resumed from {cursor}",
        next - 1,
        on_disk.len()
    );
    ensure!(
        cursor >= acked,
        "resume cursor {cursor} is behind the acknowledged {acked}"
    );
    let mut from = cursor + 1;
    while from <= TOTAL {
        let n = PER_FRAME.min(TOTAL - from + 1);
        ensure!(agent.try_frame(&frame(lease, from, n)), "link closed again");
        from += n;
    }
    ensure!(
        acked_until(&mut agent, &mut acked, TOTAL)?,
        "link closed before everything was acked"
    );
    agent.finish(lease, TOTAL)?;
    let log = stored_log(&lab, job)?;
    check_log(&log)?;
    let console = log.iter().filter(|r| r.kind == LogKind::Console).count() as u64;
    ensure!(
        console == TOTAL,
        "{console} console records stored of {TOTAL}"
    );
    ensure!(lab.job(job)?["outcome"] == "passed", "job outcome");
    drop(agent);
    lab.finish()
}

#[test]
fn reading_and_following_finished_logs_holds_no_descriptor() -> Result<()> {
    let lab = Lab::start(DUTLAB)?;
    let token = lab.token("sim", "agent")?;
    let mut agent = sim_agent(&lab, &token)?;
    const JOBS: usize = 8;
    let mut jobs = Vec::new();
    for n in 0..JOBS {
        let job = submit(&lab, n)?;
        let lease = agent.take_job()?;
        ensure!(agent.try_frame(&frame(lease, 1, 3)), "link closed");
        agent.finish(lease, 3)?;
        jobs.push(job);
    }
    let before = fds(&lab)?;
    // Each finished log read a few times over REST and followed to its end over WebSocket.
    for round in 0..3 {
        for job in &jobs {
            let (status, _) =
                lab.http("GET", &format!("/api/v1/jobs/{job}/logs"), lab.admin(), b"")?;
            ensure!(status == 200, "round {round}: GET logs of {job}: {status}");
            let done = lab.cli(&["job", "logs", &job.to_string(), "--follow"])?;
            ensure!(
                done.code() == Some(0),
                "follow of {job}: {:?} {}",
                done.code(),
                done.stderr
            );
        }
    }
    let after = wait_until(
        "the controller's descriptors back to where they were",
        WAIT,
        || {
            let now = fds(&lab)?;
            Ok((now <= before + 2).then_some(now))
        },
    )
    .with_context(|| {
        format!(
            "{} descriptors before {} reads and follows of finished logs, {} after",
            before,
            JOBS * 6,
            fds(&lab).unwrap_or(0)
        )
    })?;
    eprintln!("controller descriptors: {before} before, {after} after");
    // No log file of a finished job is open.
    let open_logs = std::fs::read_dir(format!("/proc/{}/fd", lab.controller()?.pid()))?
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|target| target.extension().is_some_and(|x| x == "log"))
        .count();
    ensure!(open_logs == 0, "{open_logs} log files still open");
    drop(agent);
    lab.finish()
}

fn mode(path: &Path) -> Result<u32> {
    Ok(std::fs::metadata(path)
        .with_context(|| path.display().to_string())?
        .permissions()
        .mode()
        & 0o777)
}

#[test]
fn the_data_directory_is_private_and_a_more_open_one_is_reported() -> Result<()> {
    let mut lab = Lab::start_prepared(DUTLAB, "nested/data", |_| Ok(()))?;
    let data_dir = lab.data_dir().to_path_buf();
    let token = lab.token("sim", "agent")?;
    let mut agent = sim_agent(&lab, &token)?;
    let job = submit(&lab, 0)?;
    let lease = agent.take_job()?;
    ensure!(agent.try_frame(&frame(lease, 1, 2)), "link closed");
    agent.finish(lease, 2)?;
    ensure!(mode(&data_dir)? == 0o700, "data dir {:o}", mode(&data_dir)?);
    ensure!(mode(&data_dir.join("logs"))? == 0o700, "logs dir");
    let mut files = vec![
        data_dir.join("admin-token"),
        data_dir.join("dutlab.db"),
        data_dir.join(format!("logs/{job}.log")),
    ];
    for extra in ["dutlab.db-wal", "dutlab.db-shm"] {
        if data_dir.join(extra).exists() {
            files.push(data_dir.join(extra));
        }
    }
    for file in &files {
        ensure!(
            mode(file)? == 0o600,
            "{}: mode {:o}",
            file.display(),
            mode(file)?
        );
    }
    ensure!(
        !lab.controller()?
            .stderr_text()
            .contains("lets group or others"),
        "a fresh data directory was reported: {}",
        lab.controller()?.stderr_text()
    );
    drop(agent);
    lab.stop_controller()?;

    // An existing directory more open than 0700 is kept as it is, and reported.
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(
        data_dir.join("admin-token"),
        std::fs::Permissions::from_mode(0o644),
    )?;
    lab.serve()?;
    let stderr = lab.controller()?.stderr_text();
    for needle in [
        format!("{}: mode 0755", data_dir.display()),
        format!("{}: mode 0644", data_dir.join("admin-token").display()),
    ] {
        ensure!(stderr.contains(&needle), "no {needle:?} in {stderr}");
    }
    ensure!(mode(&data_dir)? == 0o755, "the operator's mode was changed");
    lab.finish()
}

#[test]
fn the_agent_warns_about_a_token_file_others_can_read() -> Result<()> {
    let sandbox = Sandbox::new()?;
    let token_file = sandbox.path().join("token");
    std::fs::write(&token_file, "dutlab_not-a-real-token\n")?;
    let config = sandbox.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "controller: http://127.0.0.1:9\ntoken_file: {}\nname: warn-test\nwork_dir: {}\ndevices: []\n",
            token_file.display(),
            sandbox.path().join("work").display()
        ),
    )?;
    let check = |file_mode: u32| -> Result<Finished> {
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(file_mode))?;
        let mut cmd = sandbox.command(DUTLAB)?;
        cmd.arg("agent").arg("--check-config").arg(&config);
        Spawned::start(cmd)?.finish(WAIT)
    };
    let open = check(0o644)?;
    expect_code(&open, 0)?;
    ensure!(
        open.stderr
            .contains("lets group or others read the agent token")
            && open.stderr.contains("chmod 600"),
        "no warning for a 0644 token file: {}",
        open.stderr
    );
    ensure!(
        !open.stderr.contains("not-a-real-token"),
        "the token was printed"
    );
    let private = check(0o600)?;
    expect_code(&private, 0)?;
    ensure!(
        !private.stderr.contains("agent token"),
        "warned about a 0600 token file: {}",
        private.stderr
    );
    // The running agent warns too (before it dials).
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o640))?;
    let mut cmd = sandbox.command(DUTLAB)?;
    cmd.arg("agent").arg("--config").arg(&config);
    let running = Spawned::start(cmd)?;
    running.wait_for_stderr("lets group or others read the agent token", WAIT)?;
    running.signal(nix::sys::signal::Signal::SIGTERM)?;
    let _ = running.finish(WAIT);
    Ok(())
}

#[test]
fn names_that_could_forge_log_lines_are_refused_in_a_hello() -> Result<()> {
    let lab = Lab::start(DUTLAB)?;
    let token = lab.token("sim", "agent")?;
    let forged = "sim\n2026-12-01T00:00:00Z  INFO agent admin connected";
    for (agent, name, field) in [
        (forged, "sim-d0", "agent name"),
        ("sim", "d0\u{1b}[2J", "device name"),
        ("sim", "d0 x", "device name"),
        ("sim\u{7}", "sim-d0", "agent name"),
    ] {
        let (_, answer) = SimAgent::connect(
            lab.port(),
            &token,
            agent,
            vec![device(name, DEVICE_TYPE)],
            vec![],
        )?;
        let refused = answer
            .err()
            .with_context(|| format!("hello of {agent:?} with {name:?} was welcomed"))?;
        ensure!(refused.contains(field), "refusal {refused:?} names {field}");
        ensure!(
            !refused.chars().any(char::is_control),
            "refusal {refused:?} carries a control character"
        );
    }
    // The controller's own log shows the names escaped, never as a line of their own.
    let controller = lab.controller()?;
    controller.wait_for_stderr("refused", WAIT)?;
    let stderr = controller.stderr_text();
    ensure!(
        !stderr
            .lines()
            .any(|l| l.starts_with("2026-12-01T00:00:00Z")),
        "a forged line reached the controller's log: {stderr}"
    );
    ensure!(!stderr.contains('\u{1b}'), "an escape reached the log");
    // A good name still gets in.
    sim_agent(&lab, &token)?;
    lab.finish()
}
