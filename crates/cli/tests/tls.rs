//! System tests of TLS and the listener's limits: real `dutlab serve`, `dutlab agent` and CLI
//! processes, certificates from `dutlab tls init`, raw TCP clients for slow and oversized
//! requests. All traffic goes to 127.0.0.1.

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;

use std::time::{Duration, Instant};
use testkit::lab::{Lab, tls_init};
use testkit::{Sandbox, Spawned, expect_code, wait_until, workspace_root};

const DUTLAB: &str = env!("CARGO_BIN_EXE_dutlab");
/// Exit code of a remote command that cannot reach (or trust) the controller.
const UNREACHABLE: i32 = 69;

/// A lab with (`true`) or without TLS.
fn start(tls: bool, extra: &[&str]) -> Result<Lab> {
    if tls {
        Lab::start_tls_with(DUTLAB, extra)
    } else {
        Lab::start_with(DUTLAB, extra)
    }
}

#[test]
fn a_job_is_submitted_run_and_followed_over_https_and_wss() -> Result<()> {
    let mut lab = start(true, &[])?;
    let ca = lab.pki()?.ca().display().to_string();
    let config = lab.agent_config_trusting("host-t", 1, &format!("ca_file: {ca:?}"))?;
    lab.spawn_agent(&config)?;
    lab.wait_devices_idle("host-t", 1)?;
    let smoke = workspace_root().join("examples/qemu-smoke.yaml");
    let done = lab.cli(&["job", "submit", &smoke.display().to_string(), "--follow"])?;
    expect_code(&done, 0)?;
    let all = format!("{}{}", done.stdout, done.stderr);
    ensure!(all.contains("passed"), "no outcome shown:\n{all}");
    let jobs = lab.json(&["job", "list", "--json"])?;
    let job = &jobs.as_array().context("job list")?[0];
    ensure!(job["outcome"] == "passed", "{job}");
    // Plain HTTP to the TLS port gets no answer but a closed connection.
    let mut plain = TcpStream::connect(("127.0.0.1", lab.port()))?;
    plain.set_read_timeout(Some(Duration::from_secs(20)))?;
    plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut buf = Vec::new();
    let _ = plain.read_to_end(&mut buf);
    ensure!(
        !String::from_utf8_lossy(&buf).contains("200"),
        "plain HTTP answered on the TLS port"
    );
    lab.finish()
}

#[test]
fn a_wrong_ca_or_pin_is_refused_clearly_and_the_right_pin_is_accepted() -> Result<()> {
    let mut lab = start(true, &[])?;
    let other = tls_init(
        lab.sandbox(),
        DUTLAB,
        &lab.sandbox().path().join("other-pki"),
    )?;
    let wrong_ca = other.ca().display().to_string();

    // Client, wrong CA: refused, naming the controller and the reason.
    let done = lab.cli_env(
        lab.admin(),
        &[("DUTLAB_CA", &wrong_ca)],
        &["device", "list"],
    )?;
    expect_code(&done, UNREACHABLE)?;
    ensure!(
        done.stderr.contains(&lab.url()) && done.stderr.contains("not signed by the CA in"),
        "{}",
        done.stderr
    );
    // Client, system roots only: refused too.
    let done = lab.cli_env(lab.admin(), &[], &["device", "list"])?;
    expect_code(&done, UNREACHABLE)?;
    ensure!(done.stderr.contains(&lab.url()), "{}", done.stderr);

    // Client, pin: the right one works (saved by login), a wrong one is refused.
    let pin = lab.pki()?.pin.clone();
    let token_file = lab.sandbox().path().join("admin-token");
    std::fs::write(&token_file, lab.admin())?;
    let mut login = lab.sandbox().command(DUTLAB)?;
    login
        .args(["login", "--url", &lab.url(), "--pin", &pin, "--token-file"])
        .arg(&token_file)
        .env("XDG_CONFIG_HOME", lab.sandbox().path().join("config"))
        .env_remove("DUTLAB_URL")
        .env_remove("DUTLAB_TOKEN");
    let done = Spawned::start(login)?.finish(Duration::from_secs(60))?;
    expect_code(&done, 0)?;
    let mut list = lab.sandbox().command(DUTLAB)?;
    list.args(["device", "list", "--json"])
        .env("XDG_CONFIG_HOME", lab.sandbox().path().join("config"))
        .env_remove("DUTLAB_URL")
        .env_remove("DUTLAB_TOKEN");
    let done = Spawned::start(list)?.finish(Duration::from_secs(60))?;
    expect_code(&done, 0)?;
    let done = lab.cli_env(
        lab.admin(),
        &[("DUTLAB_PIN", &other.pin)],
        &["device", "list"],
    )?;
    expect_code(&done, UNREACHABLE)?;
    ensure!(
        done.stderr.contains(&lab.url())
            && done
                .stderr
                .contains(&format!("not the pinned {}", other.pin)),
        "{}",
        done.stderr
    );

    // Agent, wrong CA: it says why, naming the controller, and never registers.
    let config = lab.agent_config_trusting("host-w", 1, &format!("ca_file: {wrong_ca:?}"))?;
    let agent = lab.spawn_agent(&config)?;
    agent.wait_for_stderr("not signed by the CA in", Duration::from_secs(60))?;
    let stderr = agent.stderr_text();
    ensure!(
        stderr.contains(&format!("wss://127.0.0.1:{}", lab.port())),
        "{stderr}"
    );
    // Agent, wrong pin: refused the same way.
    let config = lab.agent_config_trusting("host-p", 1, &format!("pin: {}", other.pin))?;
    let agent = lab.spawn_agent(&config)?;
    agent.wait_for_stderr("not the pinned", Duration::from_secs(60))?;
    // Agent, right pin: registers.
    let config = lab.agent_config_trusting("host-ok", 1, &format!("pin: {pin}"))?;
    lab.spawn_agent(&config)?;
    lab.wait_devices_idle("host-ok", 1)?;
    let devices = lab.json(&["device", "list", "--json"])?;
    ensure!(
        !devices
            .as_array()
            .context("device list")?
            .iter()
            .any(|d| d["agent"] == "host-w" || d["agent"] == "host-p"),
        "an agent with a wrong CA or pin registered: {devices}"
    );

    // A TLS client that never starts its handshake is cut off after the handshake timeout.
    let mut silent = TcpStream::connect(("127.0.0.1", lab.port()))?;
    wait_closed(&mut silent, Duration::from_secs(30))?;
    lab.finish()
}

#[test]
fn serve_refuses_a_non_loopback_address_without_tls_unless_told() -> Result<()> {
    let sandbox = Sandbox::new()?;
    let mut cmd = sandbox.command(DUTLAB)?;
    cmd.args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(sandbox.path().join("data"));
    let done = Spawned::start(cmd)?.finish(Duration::from_secs(30))?;
    ensure!(done.code() != Some(0), "serve started: {}", done.stderr);
    ensure!(
        done.stderr.contains("0.0.0.0")
            && done.stderr.contains("--tls-cert")
            && done.stderr.contains("--insecure-plain-http"),
        "{}",
        done.stderr
    );
    ensure!(
        !sandbox.path().join("data").exists(),
        "serve made its data directory before refusing"
    );
    let mut cmd = sandbox.command(DUTLAB)?;
    cmd.args([
        "serve",
        "--listen",
        "0.0.0.0:0",
        "--insecure-plain-http",
        "--data-dir",
    ])
    .arg(sandbox.path().join("data"));
    let controller = Spawned::start(cmd)?;
    controller.wait_for_stderr("listening on http://0.0.0.0:", Duration::from_secs(30))?;
    let stderr = controller.stderr_text();
    ensure!(stderr.contains("without TLS"), "no warning: {stderr}");
    let port: u16 = stderr
        .split("listening on http://0.0.0.0:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no port in {stderr}"))?;
    ensure!(status(port, "/healthz")? == 200, "healthz");
    Ok(())
}

/// Sends `GET path` on a fresh connection and answers the status code.
fn status(port: u16, path: &str) -> Result<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    let text = String::from_utf8_lossy(&head);
    text.get(9..12)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {text:?}"))
}

/// Polls until the peer closed `stream` (EOF or reset), failing after `within`.
fn wait_closed(stream: &mut TcpStream, within: Duration) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Ok(()),
        }
        if Instant::now() > deadline {
            bail!("the connection is still open after {within:?}");
        }
    }
}

/// Whether the peer has closed `stream`, without waiting.
fn is_closed(stream: &mut TcpStream) -> Result<bool> {
    stream.set_nonblocking(true)?;
    let mut buf = [0u8; 4096];
    let closed = match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(_) => true,
    };
    stream.set_nonblocking(false)?;
    Ok(closed)
}

#[test]
fn slow_clients_are_cut_off_at_the_header_timeout_while_healthz_answers() -> Result<()> {
    let cap = 8;
    let lab = start(
        false,
        &[
            "--header-timeout",
            "3s",
            "--max-connections",
            &cap.to_string(),
        ],
    )?;
    // More slow clients than the cap: the cap fills, and some take reserve slots.
    let mut slow = Vec::new();
    for _ in 0..cap + 6 {
        let mut stream = TcpStream::connect(("127.0.0.1", lab.port()))?;
        stream.write_all(b"GET /api/v1/whoami HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")?;
        slow.push(stream);
    }
    let opened = Instant::now();
    // While they hold the cap, /healthz answers (on a reserve slot) and other routes get 503.
    let mut probes = 0;
    let mut refused_at_cap = false;
    while !slow.iter_mut().all(|s| is_closed(s).unwrap_or(true)) {
        ensure!(
            status(lab.port(), "/healthz")? == 200,
            "healthz failed while slow clients held the cap"
        );
        probes += 1;
        if opened.elapsed() < Duration::from_secs(2) && status(lab.port(), "/api/v1/whoami")? == 503
        {
            refused_at_cap = true;
        }
        ensure!(
            opened.elapsed() < Duration::from_secs(30),
            "slow clients still connected after 30 s (header timeout 3 s)"
        );
    }
    ensure!(probes > 0, "no probe ran");
    ensure!(
        refused_at_cap,
        "a request over the cap was not answered 503"
    );
    // The cap is free again: an ordinary route answers (401 without a token).
    wait_until("whoami answers 401 again", Duration::from_secs(10), || {
        Ok((status(lab.port(), "/api/v1/whoami")? == 401).then_some(()))
    })?;
    Ok(())
}

/// A masked WebSocket frame header announcing `len` payload bytes (binary, final).
fn frame_header(len: u64) -> Vec<u8> {
    let mut header = vec![0x82u8, 0x80 | 127];
    header.extend_from_slice(&len.to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    header
}

#[test]
fn an_oversized_message_closes_a_follow_socket() -> Result<()> {
    let lab = start(false, &[])?;
    // A job no device can take yet: it stays queued, and its log can be followed.
    let smoke = workspace_root().join("examples/qemu-smoke.yaml");
    let mut submit = lab.sandbox().command(DUTLAB)?;
    submit
        .args(["job", "submit", "--wait-for-device", "--json"])
        .arg(&smoke)
        .env("DUTLAB_URL", lab.url())
        .env("DUTLAB_TOKEN", lab.admin())
        .env("XDG_CONFIG_HOME", lab.sandbox().path().join("config"));
    let done = Spawned::start(submit)?.finish(Duration::from_secs(60))?;
    expect_code(&done, 0)?;
    let view: Value = serde_json::from_str(&done.stdout)?;
    let id = view["id"].as_u64().context("job id")?;

    let open = || -> Result<TcpStream> {
        let mut stream = TcpStream::connect(("127.0.0.1", lab.port()))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let request = format!(
            "GET /api/v1/jobs/{id}/logs/follow HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             Authorization: Bearer {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            lab.admin()
        );
        stream.write_all(request.as_bytes())?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte)?;
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        ensure!(head.starts_with("HTTP/1.1 101"), "no upgrade: {head}");
        Ok(stream)
    };
    // A small message is fine: the socket stays open (the first event still arrives).
    let mut ok = open()?;
    let mut small = frame_header(1000);
    small.extend(std::iter::repeat_n(0u8, 1000));
    ok.write_all(&small)?;
    let mut first = [0u8; 2];
    ok.read_exact(&mut first)?;
    ensure!(first[0] == 0x81, "first frame is not text: {first:?}");
    // 1 MiB: the controller closes the socket (it does not buffer the message).
    let mut big = open()?;
    big.write_all(&frame_header(1 << 20))?;
    let chunk = vec![0u8; 64 << 10];
    for _ in 0..16 {
        if big.write_all(&chunk).is_err() {
            break;
        }
    }
    wait_closed(&mut big, Duration::from_secs(20))?;
    ensure!(
        !is_closed(&mut ok)?,
        "the well-behaved follower was closed too"
    );
    Ok(())
}

#[test]
fn a_jobs_artifacts_are_uploaded_and_fetched_over_https() -> Result<()> {
    let mut lab = start(true, &[])?;
    let ca = lab.pki()?.ca().display().to_string();
    let config = lab.agent_config_trusting("host-a", 1, &format!("ca_file: {ca:?}"))?;
    lab.spawn_agent(&config)?;
    lab.wait_devices_idle("host-a", 1)?;
    let dir = lab.sandbox().path().join("job");
    std::fs::create_dir_all(dir.join("images"))?;
    let image = testkit::guest_image()?;
    for f in ["vmlinuz", "initramfs.cpio.gz", "rootfs.qcow2"] {
        std::fs::copy(image.join(f), dir.join("images").join(f))?;
    }
    std::fs::write(
        dir.join("job.yaml"),
        "job_name: over-tls\ndevice_type: qemu\ntimeouts: {job: {minutes: 4}}\nactions:\n\
         - deploy:\n    to: tmpfs\n    images:\n\
         \x20     kernel: {url: images/vmlinuz}\n\
         \x20     initrd: {url: images/initramfs.cpio.gz}\n\
         \x20     rootfs: {url: images/rootfs.qcow2, format: qcow2}\n\
         - boot: {method: qemu, prompts: ['# $'], auto_login: {login_prompt: 'login:', username: root}}\n",
    )?;
    let job = dir.join("job.yaml").display().to_string();
    let done = lab.cli(&["job", "submit", &job, "--follow"])?;
    expect_code(&done, 0)?;
    ensure!(
        done.stderr.matches("dutlab: uploading").count() == 3,
        "{}",
        done.stderr
    );
    let jobs = lab.json(&["job", "list", "--json"])?;
    let id = jobs[0]["id"].as_u64().context("id")?;
    ensure!(jobs[0]["outcome"] == "passed", "{}", jobs[0]);
    let logs = lab.cli(&["job", "logs", &id.to_string()])?;
    expect_code(&logs, 0)?;
    ensure!(
        logs.stdout.matches(": fetched ").count() == 3,
        "the agent fetched over https:\n{}",
        logs.stdout
    );
    lab.finish()
}
