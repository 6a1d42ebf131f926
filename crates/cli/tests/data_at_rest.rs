//! System tests of the controller's data at rest: a real `dutlab serve`, simulated agents
//! speaking the link protocol over a real WebSocket, the real CLI.
//!
//! - Disk full on the log directory (a 256 KiB tmpfs, when the test may mount one) loses no
//!   acknowledged record and leaves no hole or duplicate.
//! - Reading and following finished logs holds no file descriptor of the controller.
//! - The data directory is 0700 and its files 0600; a more open one is reported.
//! - `dutlab agent` warns about a token file others can read.
//! - Names that could forge log lines are refused in a hello.
//!
//! Every wait has a deadline; nothing sleeps to synchronise.

use anyhow::{Context, Result, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use proto::link::{AgentMessage, ControllerMessage, DeviceInfo, HeldLease, LINK_PATH, LogFrame};
use proto::log::{LogKind, LogRecord};
use proto::{Epoch, JobId, JobReport, LeaseId, Millis, Outcome, Seq};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use testkit::{Finished, Sandbox, Spawned, expect_code, wait_until};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const DUTLAB: &str = env!("CARGO_BIN_EXE_dutlab");
const WAIT: Duration = Duration::from_secs(30);
const DEVICE_TYPE: &str = "sim";

/// A controller in a sandbox.
struct Controller {
    sandbox: Sandbox,
    port: u16,
    admin: String,
    process: Spawned,
}

impl Controller {
    fn start(sandbox: Sandbox, data_dir: PathBuf) -> Result<Controller> {
        let mut cmd = sandbox.command(DUTLAB)?;
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir);
        let process = Spawned::start(cmd)?;
        process.wait_for_stderr("listening on http://", WAIT)?;
        let stderr = process.stderr_text();
        let port = stderr
            .split("listening on http://127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("no port in {stderr}"))?;
        let admin = std::fs::read_to_string(data_dir.join("admin-token"))?
            .trim()
            .to_owned();
        Ok(Controller {
            sandbox,
            port,
            admin,
            process,
        })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn cli(&self, args: &[&str]) -> Result<Finished> {
        let mut cmd = self.sandbox.command(DUTLAB)?;
        cmd.args(args)
            .env("DUTLAB_URL", self.url())
            .env("DUTLAB_TOKEN", &self.admin)
            .env("XDG_CONFIG_HOME", self.sandbox.path().join("config"));
        Spawned::start(cmd)?.finish(WAIT)
    }

    fn token(&self, name: &str, role: &str) -> Result<String> {
        let done = self.cli(&["token", "create", "--name", name, "--role", role])?;
        expect_code(&done, 0)?;
        Ok(done.stdout.trim().to_owned())
    }

    fn submit(&self, n: usize) -> Result<JobId> {
        let path = self.sandbox.path().join(format!("job-{n}.yaml"));
        std::fs::write(&path, definition(n))?;
        let done = self.cli(&["job", "submit", &path.display().to_string(), "--json"])?;
        expect_code(&done, 0)?;
        let view: Value = serde_json::from_str(&done.stdout)?;
        Ok(JobId(view["id"].as_u64().context("job id")?))
    }

    fn job(&self, job: JobId) -> Result<Value> {
        let done = self.cli(&["job", "show", &job.to_string(), "--json"])?;
        expect_code(&done, 0)?;
        Ok(serde_json::from_str(&done.stdout)?)
    }

    /// The stored log, one record per line.
    fn log(&self, job: JobId) -> Result<Vec<LogRecord>> {
        let done = self.cli(&["job", "logs", &job.to_string(), "--json"])?;
        expect_code(&done, 0)?;
        done.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).with_context(|| format!("log line {l:?}")))
            .collect()
    }

    /// Open file descriptors of the controller process.
    fn fds(&self) -> Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.process.pid()))?.count())
    }

    /// `GET path` with the admin token; answers the status code (the body is read to the end).
    fn get(&self, path: &str) -> Result<u16> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(WAIT))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            self.admin
        )?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        let text = String::from_utf8_lossy(&answer);
        text.get(9..12)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad answer {text:?}"))
    }
}

fn definition(n: usize) -> String {
    format!(
        "job_name: sim-{n}\ndevice_type: {DEVICE_TYPE}\nvisibility: public\ntimeouts:\n  job: 10m\nactions:\n\
         - boot:\n    method: qemu\n    prompts: ['# $']\n    auto_login: {{login_prompt: 'login:', username: root}}\n\
         - test:\n    definitions:\n    - from: inline\n      name: t\n      path: inline/t.yaml\n      repository:\n\
         \x20       metadata: {{format: Lava-Test Test Definition 1.0, name: t}}\n        run:\n          steps:\n          - 'true'\n"
    )
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A simulated agent: one link, one device.
struct SimAgent {
    ws: Socket,
    device: String,
}

/// A job the simulated agent was given.
#[derive(Debug, Clone, Copy)]
struct Lease {
    lease: LeaseId,
    epoch: Epoch,
    job: JobId,
}

impl SimAgent {
    /// Connects and says hello; answers the agent or the controller's refusal reason.
    async fn connect(
        url: &str,
        token: &str,
        name: &str,
        device: &str,
        held: Vec<HeldLease>,
    ) -> Result<std::result::Result<(SimAgent, Vec<proto::link::LogCursor>), String>> {
        let ws_url = format!("{}{LINK_PATH}", url.replacen("http://", "ws://", 1));
        let mut request = ws_url.as_str().into_client_request()?;
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}"))?,
        );
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .context("connect timed out")??;
        let mut agent = SimAgent {
            ws,
            device: device.to_owned(),
        };
        agent
            .send(&AgentMessage::Hello {
                protocol: proto::link::PROTOCOL_VERSION,
                agent: name.to_owned(),
                version: "sim".into(),
                devices: vec![DeviceInfo {
                    name: device.to_owned(),
                    device_type: DEVICE_TYPE.into(),
                    tags: Vec::new(),
                    capabilities: vec!["power".into(), "console".into()],
                }],
                held,
                sessions: Vec::new(),
            })
            .await?;
        match agent.recv().await? {
            Some(ControllerMessage::Welcome { resume, .. }) => Ok(Ok((agent, resume))),
            Some(ControllerMessage::Refused { reason }) => Ok(Err(reason)),
            other => bail!("expected welcome, got {other:?}"),
        }
    }

    async fn send(&mut self, message: &AgentMessage) -> Result<()> {
        let text = serde_json::to_string(message)?;
        tokio::time::timeout(WAIT, self.ws.send(Message::text(text)))
            .await
            .context("send timed out")??;
        Ok(())
    }

    /// Sends a frame; false when the link is closed.
    async fn frame(&mut self, frame: &LogFrame) -> Result<bool> {
        match tokio::time::timeout(WAIT, self.ws.send(Message::binary(frame.encode()))).await {
            Ok(Ok(())) => Ok(true),
            Ok(Err(_)) => Ok(false),
            Err(_) => bail!("frame send timed out"),
        }
    }

    /// The next controller message; `None` when the link closed.
    async fn recv(&mut self) -> Result<Option<ControllerMessage>> {
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .context("nothing from the controller in time")?;
            match next {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Ok(Message::Text(text))) => {
                    return Ok(Some(serde_json::from_str(text.as_str())?));
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// Waits for `StartJob` and answers `JobStarted`.
    async fn take_job(&mut self) -> Result<Lease> {
        loop {
            match self.recv().await? {
                Some(ControllerMessage::StartJob {
                    lease, epoch, job, ..
                }) => {
                    self.send(&AgentMessage::JobStarted { lease, epoch })
                        .await?;
                    return Ok(Lease { lease, epoch, job });
                }
                Some(_) => {}
                None => bail!("link closed before StartJob"),
            }
        }
    }

    /// Reports the job passed and waits for `FinishAcked`.
    async fn finish(&mut self, l: Lease, last_seq: u64) -> Result<()> {
        self.send(&AgentMessage::JobFinished {
            lease: l.lease,
            epoch: l.epoch,
            report: JobReport {
                job_name: String::new(),
                outcome: Outcome::Passed,
                reason: String::new(),
                cases: Vec::new(),
                duration_s: 0.0,
            },
            last_seq: Seq(last_seq),
        })
        .await?;
        loop {
            match self.recv().await? {
                Some(ControllerMessage::FinishAcked { lease, .. }) if lease == l.lease => {
                    return Ok(());
                }
                Some(_) => {}
                None => bail!("link closed before FinishAcked"),
            }
        }
    }

    fn held(&self, l: Lease) -> HeldLease {
        HeldLease {
            lease: l.lease,
            epoch: l.epoch,
            job: l.job,
            device: self.device.clone(),
            report: None,
        }
    }
}

/// The text of record `seq` (1000 bytes, so a few frames fill the small disk).
fn text_of(seq: u64) -> String {
    let mut text = format!("record {seq:06} ");
    while text.len() < 1000 {
        text.push(char::from(b'a' + (seq % 26) as u8));
    }
    text
}

fn frame(l: Lease, first: u64, count: u64) -> LogFrame {
    LogFrame {
        lease: l.lease,
        epoch: l.epoch,
        records: (first..first + count)
            .map(|seq| LogRecord {
                seq: Seq(seq),
                at: Millis(seq),
                kind: LogKind::Console,
                text: text_of(seq),
            })
            .collect(),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
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
    let sandbox = Sandbox::new()?;
    let data_dir = sandbox.path().join("data");
    let logs = data_dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs"])
        .arg(&logs)
        .output()?;
    if !mounted.status.success() {
        eprintln!(
            "SKIPPED: this test mounts a 256 KiB tmpfs as the log directory and may not here: {}",
            String::from_utf8_lossy(&mounted.stderr).trim()
        );
        return Ok(());
    }
    let _unmount = Mounted(logs.clone());
    let ctl = Controller::start(sandbox, data_dir)?;
    let token = ctl.token("sim", "agent")?;
    let rt = runtime()?;
    let (mut agent, _) = rt
        .block_on(SimAgent::connect(
            &ctl.url(),
            &token,
            "sim",
            "sim-d0",
            vec![],
        ))?
        .map_err(anyhow::Error::msg)?;
    let job = ctl.submit(0)?;
    let lease = rt.block_on(agent.take_job())?;
    ensure!(lease.job == job, "started {:?}, submitted {job}", lease.job);

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
    let closed = rt.block_on(async {
        while next <= TOTAL {
            if !agent.frame(&frame(lease, next, PER_FRAME)).await? {
                return Ok::<bool, anyhow::Error>(true);
            }
            next += PER_FRAME;
            // Wait for this frame's ack or the close.
            loop {
                match agent.recv().await? {
                    Some(ControllerMessage::LogAcked { stored, .. }) => {
                        acked = acked.max(stored.0);
                        if stored.0 + 1 >= next {
                            break;
                        }
                    }
                    Some(_) => {}
                    None => return Ok(true),
                }
            }
        }
        Ok(false)
    })?;
    ensure!(
        closed,
        "all {TOTAL} records fit: the disk never filled ({})",
        ctl.process.stderr_text()
    );
    ensure!(acked > 0, "nothing was acknowledged before the disk filled");
    ctl.process
        .wait_for_stderr("closing the link so the agent resends", WAIT)?;

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
    let held = agent.held(lease);
    let (mut agent, resume) = rt
        .block_on(SimAgent::connect(
            &ctl.url(),
            &token,
            "sim",
            "sim-d0",
            vec![held],
        ))?
        .map_err(anyhow::Error::msg)?;
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
    rt.block_on(async {
        let mut from = cursor + 1;
        while from <= TOTAL {
            let n = PER_FRAME.min(TOTAL - from + 1);
            ensure!(
                agent.frame(&frame(lease, from, n)).await?,
                "link closed again"
            );
            from += n;
        }
        loop {
            match agent.recv().await? {
                Some(ControllerMessage::LogAcked { stored, .. }) if stored.0 >= TOTAL => break,
                Some(_) => {}
                None => bail!("link closed before everything was acked"),
            }
        }
        agent.finish(lease, TOTAL).await
    })?;
    let log = ctl.log(job)?;
    check_log(&log)?;
    let console = log.iter().filter(|r| r.kind == LogKind::Console).count() as u64;
    ensure!(
        console == TOTAL,
        "{console} console records stored of {TOTAL}"
    );
    ensure!(ctl.job(job)?["outcome"] == "passed", "job outcome");
    drop(agent);
    drop(ctl);
    Ok(())
}

#[test]
fn reading_and_following_finished_logs_holds_no_descriptor() -> Result<()> {
    let sandbox = Sandbox::new()?;
    let data_dir = sandbox.path().join("data");
    let ctl = Controller::start(sandbox, data_dir)?;
    let token = ctl.token("sim", "agent")?;
    let rt = runtime()?;
    let (mut agent, _) = rt
        .block_on(SimAgent::connect(
            &ctl.url(),
            &token,
            "sim",
            "sim-d0",
            vec![],
        ))?
        .map_err(anyhow::Error::msg)?;
    const JOBS: usize = 8;
    let mut jobs = Vec::new();
    for n in 0..JOBS {
        let job = ctl.submit(n)?;
        rt.block_on(async {
            let lease = agent.take_job().await?;
            ensure!(agent.frame(&frame(lease, 1, 3)).await?, "link closed");
            agent.finish(lease, 3).await
        })?;
        jobs.push(job);
    }
    let before = ctl.fds()?;
    // Each finished log read a few times over REST and followed to its end over WebSocket.
    for round in 0..3 {
        for job in &jobs {
            let status = ctl.get(&format!("/api/v1/jobs/{job}/logs"))?;
            ensure!(status == 200, "round {round}: GET logs of {job}: {status}");
            let done = ctl.cli(&["job", "logs", &job.to_string(), "--follow"])?;
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
            let now = ctl.fds()?;
            Ok((now <= before + 2).then_some(now))
        },
    )
    .with_context(|| {
        format!(
            "{} descriptors before {} reads and follows of finished logs, {} after",
            before,
            JOBS * 6,
            ctl.fds().unwrap_or(0)
        )
    })?;
    eprintln!("controller descriptors: {before} before, {after} after");
    // No log file of a finished job is open.
    let open_logs = std::fs::read_dir(format!("/proc/{}/fd", ctl.process.pid()))?
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|target| target.extension().is_some_and(|x| x == "log"))
        .count();
    ensure!(open_logs == 0, "{open_logs} log files still open");
    drop(agent);
    Ok(())
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
    let sandbox = Sandbox::new()?;
    let data_dir = sandbox.path().join("nested/data");
    let ctl = Controller::start(sandbox, data_dir.clone())?;
    let token = ctl.token("sim", "agent")?;
    let rt = runtime()?;
    let (mut agent, _) = rt
        .block_on(SimAgent::connect(
            &ctl.url(),
            &token,
            "sim",
            "sim-d0",
            vec![],
        ))?
        .map_err(anyhow::Error::msg)?;
    let job = ctl.submit(0)?;
    rt.block_on(async {
        let lease = agent.take_job().await?;
        ensure!(agent.frame(&frame(lease, 1, 2)).await?, "link closed");
        agent.finish(lease, 2).await
    })?;
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
        !ctl.process.stderr_text().contains("lets group or others"),
        "a fresh data directory was reported: {}",
        ctl.process.stderr_text()
    );
    drop(agent);
    let Controller {
        sandbox, process, ..
    } = ctl;
    drop(process);

    // An existing directory more open than 0700 is kept as it is, and reported.
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(
        data_dir.join("admin-token"),
        std::fs::Permissions::from_mode(0o644),
    )?;
    let again = Controller::start(sandbox, data_dir.clone())?;
    let stderr = again.process.stderr_text();
    for needle in [
        format!("{}: mode 0755", data_dir.display()),
        format!("{}: mode 0644", data_dir.join("admin-token").display()),
    ] {
        ensure!(stderr.contains(&needle), "no {needle:?} in {stderr}");
    }
    ensure!(mode(&data_dir)? == 0o755, "the operator's mode was changed");
    Ok(())
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
    let sandbox = Sandbox::new()?;
    let data_dir = sandbox.path().join("data");
    let ctl = Controller::start(sandbox, data_dir)?;
    let token = ctl.token("sim", "agent")?;
    let rt = runtime()?;
    let forged = "sim\n2026-12-01T00:00:00Z  INFO agent admin connected";
    for (agent, device, field) in [
        (forged, "sim-d0", "agent name"),
        ("sim", "d0\u{1b}[2J", "device name"),
        ("sim", "d0 x", "device name"),
        ("sim\u{7}", "sim-d0", "agent name"),
    ] {
        let refused = rt
            .block_on(SimAgent::connect(&ctl.url(), &token, agent, device, vec![]))?
            .err()
            .with_context(|| format!("hello of {agent:?} with {device:?} was welcomed"))?;
        ensure!(refused.contains(field), "refusal {refused:?} names {field}");
        ensure!(
            !refused.chars().any(char::is_control),
            "refusal {refused:?} carries a control character"
        );
    }
    // The controller's own log shows the names escaped, never as a line of their own.
    ctl.process.wait_for_stderr("refused", WAIT)?;
    let stderr = ctl.process.stderr_text();
    ensure!(
        !stderr
            .lines()
            .any(|l| l.starts_with("2026-12-01T00:00:00Z")),
        "a forged line reached the controller's log: {stderr}"
    );
    ensure!(!stderr.contains('\u{1b}'), "an escape reached the log");
    // A good name still gets in.
    rt.block_on(SimAgent::connect(
        &ctl.url(),
        &token,
        "sim",
        "sim-d0",
        vec![],
    ))?
    .map_err(anyhow::Error::msg)?;
    Ok(())
}
