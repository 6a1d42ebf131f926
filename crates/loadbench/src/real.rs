//! Scenario `real-dut`: the console and forward measurements of [`crate::streams`] through a
//! real `dutlab agent` with one QEMU DUT (TCG), so the DUT's own share shows.
//!
//! - keystrokes: logged in on the console (`root`, busybox `sh` with line editing), `x` is
//!   typed and timed until its echo comes back; every 64 keystrokes the line is entered and
//!   the prompt awaited (not timed).
//! - forward: OpenSSH through a local port carried over a TCP stream to the DUT's port 22
//!   (`cat > /dev/null` for client->DUT, `head -c N /dev/zero` for DUT->client), and the same
//!   commands straight to QEMU's forwarded SSH port on the agent host, which is the DUT's and
//!   SSH's limit without dutlab.
//! - viewers: `seq 1 N > /dev/ttyS0` run over SSH (straight to QEMU, not through the
//!   console) with 0 and then `viewers` read-only console viewers; timed until the agent's
//!   `console.log` of the session holds the last number.
//!
//! Everything ends with the lease released (DUT off) and the agent stopped (SIGTERM, then
//! SIGKILL to its process group).

use crate::server::Controller;
use crate::streams::{keystrokes, mb_per_s, percentile};
use anyhow::{Context, bail};
use client::stream::{Incoming, Target};
use proto::PersonLeaseId;
use proto::session::PowerAction;
use serde_json::{Value, json};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct Params {
    pub keystrokes: usize,
    /// Bytes each way over SSH.
    pub ssh_bytes: u64,
    pub viewers: usize,
    /// Lines of `seq` printed on the console.
    pub console_lines: u64,
    /// The guest image (default: as the agent finds it, `DUTLAB_IMAGE_DIR` or the cache).
    pub image_dir: Option<PathBuf>,
}

/// A running `dutlab agent` in its own process group.
struct AgentProcess {
    child: Child,
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill, killpg};
        use nix::unistd::Pid;
        let Ok(pid) = i32::try_from(self.child.id()) else {
            return;
        };
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// How ssh is run against the DUT.
fn ssh(key: &Path, port: u16, command: &str) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.arg("-i")
        .arg(key)
        .args(["-p", &port.to_string()])
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=20",
            "-o",
            "LogLevel=ERROR",
            "root@127.0.0.1",
            command,
        ]);
    cmd
}

/// Runs `command` on the DUT with `input` on its stdin; answers the bytes of its stdout and
/// how long it took.
async fn ssh_run(
    key: &Path,
    port: u16,
    command: &str,
    input: Option<PathBuf>,
) -> anyhow::Result<(u64, Duration)> {
    let key = key.to_path_buf();
    let command = command.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut cmd = ssh(&key, port, &command);
        cmd.stdin(match &input {
            Some(f) => Stdio::from(std::fs::File::open(f)?),
            None => Stdio::null(),
        });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let t0 = Instant::now();
        let mut child = cmd.spawn().context("running ssh (openssh-client)")?;
        let mut out = child.stdout.take().context("ssh stdout")?;
        let mut buf = vec![0u8; 1 << 16];
        let mut bytes = 0u64;
        loop {
            let n = std::io::Read::read(&mut out, &mut buf)?;
            if n == 0 {
                break;
            }
            bytes += n as u64;
        }
        let status = child.wait()?;
        let took = t0.elapsed();
        if !status.success() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            bail!("ssh {command:?}: {status}: {err}");
        }
        Ok((bytes, took))
    })
    .await?
}

/// The host port QEMU forwards to the DUT's SSH port, from the command line of the QEMU
/// whose arguments mention `needle`.
fn qemu_ssh_port(needle: &str) -> Option<u16> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !text.contains("qemu-system") || !text.contains(needle) {
            continue;
        }
        let marker = "hostfwd=tcp:127.0.0.1:";
        let at = text.find(marker)?;
        return text[at + marker.len()..].split('-').next()?.parse().ok();
    }
    None
}

/// Reads `stream` until the bytes read in this call contain `needle`.
async fn read_until(
    stream: &mut client::stream::StreamSocket,
    needle: &[u8],
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen: Vec<u8> = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => bail!(
                "no {:?} on the console within {within:?}; last: {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(&seen[seen.len().saturating_sub(300)..])
            ),
            Ok(Incoming::Bytes(b)) => seen.extend_from_slice(&b),
            Ok(other) => bail!("the console ended: {other:?}"),
        }
        if seen.windows(needle.len()).any(|w| w == needle) {
            return Ok(());
        }
    }
}

/// Carries connections to a local port over TCP streams to the DUT's port 22; answers the
/// port.
async fn forward_port(client: client::Client, lease: PersonLeaseId) -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let client = client.clone();
            tokio::spawn(async move {
                let _ = conn.set_nodelay(true);
                if let Ok(stream) = client.open_stream(lease, Target::Tcp(22)).await {
                    let (r, w) = conn.into_split();
                    stream.carry(r, w).await;
                }
            });
        }
    });
    Ok(port)
}

pub async fn run(ctl: &mut Controller, dutlab: &Path, p: &Params) -> anyhow::Result<Value> {
    let dir = tempfile::Builder::new()
        .prefix("dutlab-loadbench-real-")
        .tempdir()?;
    let token_file = dir.path().join("agent-token");
    std::fs::write(&token_file, ctl.token("real", "agent").await?)?;
    let work = dir.path().join("work");
    let init = Command::new(dutlab)
        .args(["agent", "init", "--controller", &ctl.url(""), "--qemu", "1"])
        .args(["--name", "real", "--token-file"])
        .arg(&token_file)
        .arg("--work-dir")
        .arg(&work)
        .output()?;
    if !init.status.success() {
        bail!("dutlab agent init: {init:?}");
    }
    let config = dir.path().join("agent.yaml");
    std::fs::write(&config, &init.stdout)?;
    let mut cmd = Command::new(dutlab);
    cmd.arg("agent")
        .arg("--config")
        .arg(&config)
        .env("DUTLAB_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(
            dir.path().join("agent.stderr"),
        )?))
        .process_group(0);
    if let Some(image) = &p.image_dir {
        cmd.env("DUTLAB_IMAGE_DIR", image);
    }
    let _agent = AgentProcess {
        child: cmd.spawn().context("starting dutlab agent")?,
    };

    let client = client::Client::new(&ctl.url(""), Some(ctl.token("real-user", "user").await?))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let device = loop {
        let devices = client.devices().await?;
        if let Some(d) = devices
            .iter()
            .find(|d| d.agent == "real" && d.state == proto::DeviceState::Idle)
        {
            break d.name.clone();
        }
        if Instant::now() > deadline {
            bail!("the agent's device is not idle within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let key = dir.path().join("id_ed25519");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output()
        .context("ssh-keygen (openssh-client)")?;
    if !made.status.success() {
        bail!("ssh-keygen: {made:?}");
    }
    let public = std::fs::read_to_string(key.with_extension("pub"))?;
    let lease = client
        .acquire_lease(&proto::api::AcquireLease {
            device: Some(device.clone()),
            duration_s: Some(3600),
            ssh_keys: vec![public.trim().to_owned()],
            ..Default::default()
        })
        .await?
        .id;
    let result = measure(&client, lease, &device, &work, &key, p).await;
    let _ = client.release_lease(lease).await;
    // The agent powers the DUT off before it says the device is ready again.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let idle = client.devices().await.is_ok_and(|ds| {
            ds.iter()
                .any(|d| d.name == device && d.state == proto::DeviceState::Idle)
        });
        if idle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut value = result?;
    value["controller_cpu_total_s"] = json!(ctl.cpu());
    Ok(value)
}

async fn measure(
    client: &client::Client,
    lease: PersonLeaseId,
    device: &str,
    work: &Path,
    key: &Path,
    p: &Params,
) -> anyhow::Result<Value> {
    client.power(lease, PowerAction::On).await?;
    let session = work.join("devices").join(device).join("session");
    let direct = qemu_ssh_port(&session.display().to_string())
        .context("no QEMU with an SSH forward for the session")?;

    // Log in on the console; the answer to a computed echo ends the replayed history.
    let mut console = client
        .open_stream(lease, Target::Console { write: true })
        .await?;
    read_until(&mut console, b"login:", Duration::from_secs(300)).await?;
    console
        .send(b"root\n".to_vec())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    read_until(&mut console, b"# ", Duration::from_secs(60)).await?;
    console
        .send(b"echo ready-$((20+22))\n".to_vec())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    read_until(&mut console, b"ready-42", Duration::from_secs(60)).await?;
    read_until(&mut console, b"# ", Duration::from_secs(60)).await?;

    // Keystrokes, in lines of 64.
    let mut samples = Vec::with_capacity(p.keystrokes);
    while samples.len() < p.keystrokes {
        let n = (p.keystrokes - samples.len()).min(64);
        samples.extend(keystrokes(&mut console, n, |_| b'x').await?);
        console
            .send(b"\n".to_vec())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        read_until(&mut console, b"# ", Duration::from_secs(30)).await?;
    }
    console.close().await;
    let rtt = crate::stats::Summary::of(&samples);
    let p95 = percentile(&samples, 0.95);

    // Forward: SSH through dutlab and straight to QEMU.
    let blob = work.join("ssh-blob");
    std::fs::write(&blob, vec![0x5a_u8; usize::try_from(p.ssh_bytes)?])?;
    let through = forward_port(client.clone(), lease).await?;
    let pull = format!("head -c {} /dev/zero", p.ssh_bytes);
    let mut forward = serde_json::Map::new();
    for (name, port) in [("dutlab", through), ("direct", direct)] {
        // Warm-up: the DUT's first connection makes its host key.
        ssh_run(key, port, "true", None).await?;
        let (_, up) = ssh_run(key, port, "cat > /dev/null", Some(blob.clone())).await?;
        let (got, down) = ssh_run(key, port, &pull, None).await?;
        if got != p.ssh_bytes {
            bail!("{name}: pulled {got} of {} bytes", p.ssh_bytes);
        }
        forward.insert(
            name.into(),
            json!({
                "upload_mb_s": crate::stats::round3(mb_per_s(p.ssh_bytes, up)),
                "download_mb_s": crate::stats::round3(mb_per_s(got, down)),
            }),
        );
    }
    let _ = std::fs::remove_file(&blob);

    // Console output with 0 and with `viewers` viewers.
    let mut bursts = Vec::new();
    for (round, viewers) in [0, p.viewers].into_iter().enumerate() {
        let received = Arc::new(AtomicU64::new(0));
        let mut readers = Vec::new();
        for _ in 0..viewers {
            let mut s = client
                .open_stream(lease, Target::Console { write: false })
                .await?;
            let received = received.clone();
            readers.push(tokio::spawn(async move {
                while let Incoming::Bytes(b) = s.next().await {
                    received.fetch_add(b.len() as u64, Ordering::Relaxed);
                }
            }));
        }
        // Different numbers of the same width each round, so the log's tail tells this
        // round's end and both print the same bytes.
        let first = 1 + (round as u64 + 1) * 10_000_000;
        let last = first + p.console_lines - 1;
        let log = session.join("console.log");
        let t0 = Instant::now();
        let received0 = received.load(Ordering::Relaxed);
        let (_, wrote) = ssh_run(
            key,
            direct,
            &format!("seq {first} {last} > /dev/ttyS0"),
            None,
        )
        .await?;
        let needle = format!("\n{last}");
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let text = std::fs::read(&log).unwrap_or_default();
            let tail = &text[text.len().saturating_sub(4096)..];
            if tail.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                break;
            }
            if Instant::now() > deadline {
                bail!("console.log did not reach {last} within 300 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let logged = t0.elapsed();
        let bytes: u64 = (first..=last).map(|n| n.to_string().len() as u64 + 1).sum();
        // Let the viewers drain the burst before they are counted.
        let deadline = Instant::now() + Duration::from_secs(60);
        while viewers > 0
            && received.load(Ordering::Relaxed) - received0 < bytes * viewers as u64
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let per_viewer = if viewers == 0 {
            0
        } else {
            (received.load(Ordering::Relaxed) - received0) / viewers as u64
        };
        for r in readers {
            r.abort();
        }
        bursts.push(json!({
            "viewers": viewers,
            "lines": p.console_lines,
            "bytes": bytes,
            "seq_s": crate::stats::round3(wrote.as_secs_f64()),
            "logged_s": crate::stats::round3(logged.as_secs_f64()),
            "console_kb_s": (bytes as f64 / 1e3 / logged.as_secs_f64()).round(),
            "bytes_per_viewer": per_viewer,
        }));
    }
    client.power(lease, PowerAction::Off).await?;
    let f = |k: &str, d: &str| forward[k][d].as_f64().unwrap_or(0.0);
    let ratio = bursts[1]["console_kb_s"].as_f64().unwrap_or(0.0)
        / bursts[0]["console_kb_s"].as_f64().unwrap_or(1.0).max(1e-9);
    Ok(json!({
        "line": format!(
            "real-dut (agent + QEMU TCG): keystroke echo {}, p95 {} ms; SSH {} MB through dutlab up {:.1} / down {:.1} MB/s, \
             straight to QEMU up {:.1} / down {:.1} MB/s; console burst of {} lines logged in {:.2} s with 0 viewers, {:.2} s with {} (rate with them / without {:.2})",
            rtt.text(), crate::stats::ms(p95), p.ssh_bytes / 1_000_000,
            f("dutlab", "upload_mb_s"), f("dutlab", "download_mb_s"), f("direct", "upload_mb_s"), f("direct", "download_mb_s"),
            p.console_lines, bursts[0]["logged_s"].as_f64().unwrap_or(0.0), bursts[1]["logged_s"].as_f64().unwrap_or(0.0),
            p.viewers, ratio
        ),
        "keystrokes": rtt.json(),
        "keystroke_p95_ms": crate::stats::round3(p95),
        "ssh": forward,
        "console_bursts": bursts,
    }))
}
