//! System tests of what a person's lease does with its device through the agent (the
//! session): power, SSH keys, flash, expiry powering the DUT off, a controller killed while
//! the DUT runs. Real `dutlab serve`, a real agent with a QEMU device, the real CLI as each
//! user (the console stream through the client library), real QEMU (`testkit::lab`). Needs
//! `ssh` and `ssh-keygen` (openssh-client) for the key delivery and `mke2fs` (e2fsprogs) for
//! the flashed image.

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use std::time::Duration;
use testkit::lab::Lab;
use testkit::{expect_code, inline_job, wait_until};

const DUTLAB: &str = env!("CARGO_BIN_EXE_dutlab");
const LIMIT: Duration = Duration::from_secs(30);
/// A DUT boots under TCG on a busy machine.
const BOOT_LIMIT: Duration = Duration::from_secs(240);

fn lab_with_device() -> Result<(Lab, String)> {
    let mut lab = Lab::start(DUTLAB)?;
    lab.agent("a1", 1)?;
    let devices = lab.json(&["device", "list", "--json"])?;
    let name = devices[0]["name"]
        .as_str()
        .context("a device name")?
        .to_owned();
    Ok((lab, name))
}

fn device(lab: &Lab, name: &str) -> Result<Value> {
    let devices = lab.json(&["device", "list", "--json"])?;
    devices
        .as_array()
        .context("device list")?
        .iter()
        .find(|d| d["name"] == name)
        .cloned()
        .with_context(|| format!("no device {name}"))
}

/// Command lines of the QEMU processes of `dev`'s session in this lab
/// (`<sandbox>/.../devices/<dev>/session/vm-N`).
fn session_qemus(lab: &Lab, dev: &str) -> Vec<String> {
    let needle = format!("/devices/{dev}/session/vm-");
    let sandbox = lab.sandbox().path().display().to_string();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains("qemu-system") && text.contains(&needle) && text.contains(&sandbox) {
            found.push(text);
        }
    }
    found
}

/// The host port QEMU forwards to the guest's SSH port.
fn ssh_port(cmdline: &str) -> Result<u16> {
    let at = cmdline
        .find("hostfwd=tcp:127.0.0.1:")
        .context("no SSH forward")?;
    let rest = &cmdline[at + "hostfwd=tcp:127.0.0.1:".len()..];
    let port = rest.split('-').next().context("port")?;
    Ok(port.parse()?)
}

/// Process ids of the QEMU processes of `dev`'s session in this lab.
fn session_qemu_pids(lab: &Lab, dev: &str) -> Vec<u32> {
    let needle = format!("/devices/{dev}/session/vm-");
    lab.sandbox()
        .qemu_processes()
        .into_iter()
        .filter(|(_, cmdline)| cmdline.contains(&needle))
        .map(|(pid, _)| pid)
        .collect()
}

/// Runs `command` as root on the DUT over SSH (the lease's key), retrying until the DUT's
/// SSH server answers; answers its stdout.
fn ssh_until_up(lab: &Lab, dev: &str, command: &str) -> Result<String> {
    let key = lab.sandbox().path().join("config/dutlab/ssh/id_ed25519");
    let qemus = session_qemus(lab, dev);
    ensure!(qemus.len() == 1, "QEMU processes: {qemus:?}");
    let port = ssh_port(&qemus[0])?;
    let out = wait_until("ssh into the DUT", BOOT_LIMIT, || {
        let out = testkit::ssh_root(&key, port, command)?;
        if out.status.success() {
            return Ok(Some(out));
        }
        std::thread::sleep(Duration::from_millis(500));
        Ok(None)
    })?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A raw ext4 disk (the guest's `/init` mounts `/dev/vda`) holding `etc/flash-marker` with
/// `marker` in it; answers its path.
fn marked_image(lab: &Lab, name: &str, marker: &str) -> Result<std::path::PathBuf> {
    let staging = lab.sandbox().path().join(format!("{name}-staging"));
    std::fs::create_dir_all(staging.join("etc"))?;
    std::fs::write(staging.join("etc/flash-marker"), format!("{marker}\n"))?;
    let image = lab.sandbox().path().join(format!("{name}.img"));
    let mke2fs = ["/usr/sbin/mke2fs", "/sbin/mke2fs"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .context("mke2fs (e2fsprogs) is not installed")?;
    let done = std::process::Command::new(mke2fs)
        .args(["-q", "-F", "-t", "ext4", "-m", "0", "-L", name, "-d"])
        .arg(&staging)
        .arg(&image)
        .arg("8M")
        .output()?;
    ensure!(done.status.success(), "mke2fs: {done:?}");
    Ok(image)
}

fn power(lab: &Lab, token: &str, lease: u64, action: &str) -> Result<String> {
    let done = lab.cli_as(token, &["power", action, "--lease", &lease.to_string()])?;
    expect_code(&done, 0)?;
    Ok(done.stdout.trim().to_owned())
}

#[test]
fn power_on_boots_with_the_lease_key_others_get_403_and_off_leaves_no_qemu() -> Result<()> {
    let (lab, dev) = lab_with_device()?;
    let alice = lab.token("alice", "user")?;
    let bob = lab.token("bob", "user")?;
    let view = lab.json_as(
        &alice,
        &["lease", "acquire", "--device", &dev, "--wait", "--json"],
    )?;
    let id = view["id"].as_u64().context("id")?;
    // The CLI made dutlab's own key pair and sent its public key.
    let key = lab.sandbox().path().join("config/dutlab/ssh/id_ed25519");
    ensure!(key.is_file(), "no key pair at {}", key.display());

    ensure!(power(&lab, &alice, id, "status")? == "off");
    ensure!(session_qemus(&lab, &dev).is_empty(), "QEMU before power on");
    // Someone else may neither power nor look.
    let denied = lab.cli_as(&bob, &["power", "on", "--lease", &id.to_string()])?;
    expect_code(&denied, 77)?;
    ensure!(session_qemus(&lab, &dev).is_empty(), "bob powered it");

    ensure!(power(&lab, &alice, id, "on")? == "on");
    let qemus = session_qemus(&lab, &dev);
    ensure!(qemus.len() == 1, "QEMU processes: {qemus:?}");
    let env = [("DUTLAB_LEASE", id.to_string())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let status = lab.cli_env(&alice, &env, &["power", "status", "--json"])?;
    expect_code(&status, 0)?;
    let status: Value = serde_json::from_str(&status.stdout)?;
    ensure!(
        status["state"] == "on" && status["device"] == dev.as_str(),
        "{status}"
    );

    // The key reached root's authorized_keys at power-on: nothing was typed on the console.
    let port = ssh_port(&qemus[0])?;
    let public = std::fs::read_to_string(key.with_extension("pub"))?;
    let out = wait_until("ssh into the DUT", BOOT_LIMIT, || {
        let out = testkit::ssh_root(
            &key,
            port,
            "cat /root/.ssh/authorized_keys; ls -ld /root/.ssh",
        )?;
        if out.status.success() {
            return Ok(Some(out));
        }
        std::thread::sleep(Duration::from_millis(500));
        Ok(None)
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = public
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    ensure!(text.contains(&line), "authorized_keys: {text}");
    ensure!(text.contains("drwx------"), "{text}");

    // The console was recorded from power-on.
    let log = lab
        .sandbox()
        .path()
        .read_dir()?
        .flatten()
        .map(|e| e.path())
        .find_map(|p| {
            let f = p.join(format!("work/devices/{dev}/session/console.log"));
            f.is_file().then_some(f)
        });
    if let Some(log) = log {
        let text = std::fs::read_to_string(&log)?;
        ensure!(text.contains("login:"), "console log: {text}");
    }

    ensure!(power(&lab, &alice, id, "off")? == "off");
    ensure!(
        session_qemus(&lab, &dev).is_empty(),
        "QEMU left after power off"
    );

    // After the release the lease is gone (410) and the device back in the pool.
    lab.json_as(&alice, &["lease", "release", &id.to_string(), "--json"])?;
    let gone = lab.cli_as(&alice, &["power", "status", "--lease", &id.to_string()])?;
    expect_code(&gone, 70)?;
    ensure!(gone.stderr.contains("ended"), "{}", gone.stderr);
    wait_until("device idle", LIMIT, || {
        Ok((device(&lab, &dev)?["state"] == "idle").then_some(()))
    })?;
    lab.finish()
}

#[test]
fn expiry_powers_the_dut_off_and_the_queued_job_runs_after() -> Result<()> {
    let (lab, dev) = lab_with_device()?;
    let alice = lab.token("alice", "user")?;
    let view = lab.json_as(
        &alice,
        &[
            "lease",
            "acquire",
            "--device",
            &dev,
            "--duration",
            "20s",
            "--wait",
            "--json",
        ],
    )?;
    let id = view["id"].as_u64().context("id")?;
    ensure!(power(&lab, &alice, id, "on")? == "on");
    ensure!(session_qemus(&lab, &dev).len() == 1);
    let job = lab.write(
        "job.yaml",
        &inline_job("after-lease", "  job: 5m", &["true"]),
    )?;
    let job = lab.submit(&job)?;
    ensure!(lab.job(job)?["state"] == "queued");
    // At the deadline the controller ends the lease; the agent powers the DUT off.
    wait_until("the session's QEMU gone", Duration::from_secs(60), || {
        Ok(session_qemus(&lab, &dev).is_empty().then_some(()))
    })?;
    let ended = lab.json_as(&alice, &["lease", "show", &id.to_string(), "--json"])?;
    ensure!(
        ended["state"] == "ended" && ended["end"] == "expired",
        "{ended}"
    );
    let gone = lab.cli_as(&alice, &["power", "on", "--lease", &id.to_string()])?;
    expect_code(&gone, 70)?;
    let done = lab.wait_state(job, "finished", BOOT_LIMIT)?;
    ensure!(
        done["outcome"] == "passed" && done["device"] == dev.as_str(),
        "{done}"
    );
    lab.finish()
}

/// Width and height from a PNG's IHDR chunk, after checking the signature.
fn png_size(bytes: &[u8]) -> Result<(u32, u32)> {
    ensure!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "no PNG signature: {:?}",
        &bytes[..bytes.len().min(16)]
    );
    let ihdr = bytes.get(8..24).context("no IHDR chunk")?;
    ensure!(
        ihdr[..4] == 13u32.to_be_bytes() && &ihdr[4..8] == b"IHDR",
        "first chunk is not IHDR: {ihdr:?}"
    );
    let word = |i: usize| u32::from_be_bytes([ihdr[i], ihdr[i + 1], ihdr[i + 2], ihdr[i + 3]]);
    Ok((word(8), word(12)))
}

#[test]
fn a_video_device_gives_its_holder_a_png_and_others_nothing() -> Result<()> {
    let mut lab = Lab::start(DUTLAB)?;
    // Two devices; the operator gives the first a display.
    let config = lab.agent_config("a1", 2)?;
    let text = std::fs::read_to_string(&config)?;
    let plain = "qemu: {accel: tcg, memory_mib: 512}";
    ensure!(text.contains(plain), "agent init wrote: {text}");
    std::fs::write(
        &config,
        text.replacen(plain, "qemu: {accel: tcg, memory_mib: 512, video: vga}", 1),
    )?;
    lab.spawn_agent(&config)?;
    lab.wait_devices_idle("a1", 2)?;
    let (screen, blind) = ("a1-qemu-01", "a1-qemu-02");
    // The capability comes from the rig: only the device with a display has video.
    let has_video = |d: &Value| {
        d["capabilities"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c == "video"))
    };
    ensure!(
        has_video(&device(&lab, screen)?),
        "{}",
        device(&lab, screen)?
    );
    ensure!(
        !has_video(&device(&lab, blind)?),
        "{}",
        device(&lab, blind)?
    );

    let alice = lab.token("alice", "user")?;
    let bob = lab.token("bob", "user")?;
    let acquire = |dev: &str| -> Result<u64> {
        let view = lab.json_as(
            &alice,
            &["lease", "acquire", "--device", dev, "--wait", "--json"],
        )?;
        view["id"].as_u64().context("id")
    };
    let id = acquire(screen)?;
    let out = lab.sandbox().path().join("out.png");
    let shot = |token: &str, lease: u64, file: &std::path::Path| {
        lab.cli_as(
            token,
            &[
                "screenshot",
                &file.display().to_string(),
                "--lease",
                &lease.to_string(),
            ],
        )
    };
    // Off: no picture, and the reason says so.
    let off = shot(&alice, id, &out)?;
    expect_code(&off, 70)?;
    ensure!(off.stderr.contains("off"), "{}", off.stderr);
    ensure!(!out.exists(), "a file while the device is off");

    ensure!(power(&lab, &alice, id, "on")? == "on");
    let done = shot(&alice, id, &out)?;
    expect_code(&done, 0)?;
    let bytes = std::fs::read(&out)?;
    let (width, height) = png_size(&bytes)?;
    ensure!(width > 0 && height > 0, "{width}x{height}");
    // QEMU wrote into a private file of the session and it is gone.
    let session = lab
        .sandbox()
        .path()
        .join(format!("a1/work/devices/{screen}/session"));
    let left: Vec<_> = walk(&session)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("screendump-"))
        .collect();
    ensure!(left.is_empty(), "screendump files left: {left:?}");

    // Someone else gets 403 and no file.
    let stolen = lab.sandbox().path().join("bob.png");
    let denied = shot(&bob, id, &stolen)?;
    expect_code(&denied, 77)?;
    ensure!(!stolen.exists(), "bob got a file");

    // A device without video says so.
    let other = acquire(blind)?;
    let none = shot(&alice, other, &lab.sandbox().path().join("none.png"))?;
    expect_code(&none, 70)?;
    ensure!(none.stderr.contains("has no video"), "{}", none.stderr);

    ensure!(power(&lab, &alice, id, "off")? == "off");
    for lease in [id, other] {
        lab.json_as(&alice, &["lease", "release", &lease.to_string(), "--json"])?;
    }
    lab.finish()
}

/// Every file under `dir` (none if it does not exist).
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

#[test]
fn a_flashed_image_boots_and_nobody_else_may_flash() -> Result<()> {
    let (lab, dev) = lab_with_device()?;
    let alice = lab.token("alice", "user")?;
    let bob = lab.token("bob", "user")?;
    let view = lab.json_as(
        &alice,
        &["lease", "acquire", "--device", &dev, "--wait", "--json"],
    )?;
    let id = view["id"].as_u64().context("id")?.to_string();

    let mine = marked_image(&lab, "alices", "flashed by alice")?;
    let done = lab.cli_as(
        &alice,
        &[
            "flash",
            &mine.display().to_string(),
            "--lease",
            &id,
            "--json",
        ],
    )?;
    expect_code(&done, 0)?;
    let flashed: Value = serde_json::from_str(&done.stdout)?;
    // Both steps show progress: the upload, then the agent's fetch and write.
    for step in ["upload", "write"] {
        ensure!(
            done.stderr
                .lines()
                .any(|l| l.starts_with(&format!("dutlab: {step} [")) && l.contains("100%")),
            "no finished {step} bar: {}",
            done.stderr
        );
    }
    ensure!(
        flashed["device"] == dev.as_str() && flashed["bytes"] == std::fs::metadata(&mine)?.len(),
        "{flashed}"
    );
    // Bob may not flash alice's device: 403 before anything reaches the agent.
    let theirs = marked_image(&lab, "bobs", "flashed by bob")?;
    let denied = lab.cli_as(
        &bob,
        &["flash", &theirs.display().to_string(), "--lease", &id],
    )?;
    expect_code(&denied, 77)?;
    ensure!(session_qemus(&lab, &dev).is_empty(), "bob powered it");

    // The DUT boots alice's image as its disk: her marker, not the default rootfs's, and
    // not bob's.
    ensure!(power(&lab, &alice, view["id"].as_u64().context("id")?, "on")? == "on");
    let seen = ssh_until_up(
        &lab,
        &dev,
        "cat /mnt/rootfs/etc/flash-marker; \
         test -e /mnt/rootfs/etc/dutlab-rootfs && echo default-rootfs; echo end",
    )?;
    ensure!(
        seen == "flashed by alice\nend\n",
        "the DUT's disk: {seen:?}"
    );
    lab.json_as(&alice, &["lease", "release", &id, "--json"])?;
    wait_until("device idle", LIMIT, || {
        Ok((device(&lab, &dev)?["state"] == "idle").then_some(()))
    })?;
    ensure!(session_qemus(&lab, &dev).is_empty(), "QEMU after release");
    lab.finish()
}

/// Reads `stream` until the bytes read in this call contain `needle`, within `within`.
async fn read_until(
    stream: &mut client::stream::StreamSocket,
    needle: &str,
    within: Duration,
) -> Result<String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let next = tokio::time::timeout_at(deadline, stream.next()).await;
        match next {
            Err(_) => anyhow::bail!(
                "no {needle:?} on the console within {within:?}; read {:?}",
                String::from_utf8_lossy(&seen[seen.len().saturating_sub(2000)..])
            ),
            Ok(client::stream::Incoming::Bytes(bytes)) => seen.extend_from_slice(&bytes),
            Ok(other) => anyhow::bail!("the console ended ({other:?}) before {needle:?}"),
        }
        let text = String::from_utf8_lossy(&seen);
        if text.contains(needle) {
            return Ok(text.into_owned());
        }
    }
}

#[test]
fn a_powered_lease_survives_a_controller_kill_9_and_its_console_reattaches() -> Result<()> {
    let (mut lab, dev) = lab_with_device()?;
    let alice = lab.token("alice", "user")?;
    let view = lab.json_as(
        &alice,
        &[
            "lease",
            "acquire",
            "--device",
            &dev,
            "--duration",
            "10m",
            "--wait",
            "--json",
        ],
    )?;
    let id = view["id"].as_u64().context("id")?;
    let lease = proto::PersonLeaseId(id);
    ensure!(power(&lab, &alice, id, "on")? == "on");
    let pids = session_qemu_pids(&lab, &dev);
    ensure!(pids.len() == 1, "QEMU processes: {pids:?}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = client::Client::new(&lab.url(), Some(alice.clone()))?;
    let write = client::stream::Target::Console { write: true };
    let mut console = rt.block_on(client.open_stream(lease, write))?;
    rt.block_on(read_until(&mut console, "login:", BOOT_LIMIT))?;

    lab.kill_controller_hard()?;
    // The console's WebSocket went with the controller.
    let ended = rt.block_on(async {
        loop {
            match tokio::time::timeout(LIMIT, console.next()).await {
                Ok(client::stream::Incoming::Bytes(_)) => continue,
                Ok(other) => return Ok(other),
                Err(_) => anyhow::bail!("the console stayed open after the controller died"),
            }
        }
    })?;
    ensure!(
        !matches!(ended, client::stream::Incoming::Bytes(_)),
        "{ended:?}"
    );
    lab.serve()?;

    // The lease is held as stored; once the agent is back, the session answers: the same
    // DUT runs on (same QEMU process), nothing was torn down or rebooted.
    let after = lab.json_as(&alice, &["lease", "show", &id.to_string(), "--json"])?;
    ensure!(
        after["state"] == "held" && after["expires_at"] == view["expires_at"],
        "{after} vs {view}"
    );
    let state = wait_until("the session answers again", LIMIT, || {
        let done = lab.cli_as(&alice, &["power", "status", "--lease", &id.to_string()])?;
        Ok((done.code() == Some(0)).then(|| done.stdout.trim().to_owned()))
    })?;
    ensure!(state == "on", "power status after the restart: {state}");
    ensure!(
        session_qemu_pids(&lab, &dev) == pids,
        "the DUT was restarted: {:?} then {pids:?}",
        session_qemu_pids(&lab, &dev)
    );

    // The console opens again and takes input: log in and run a command whose output is
    // not in the replayed history (the typed line shows `$((6*7))`, the shell prints 42).
    let mut console = rt.block_on(async {
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            match client.open_stream(lease, write).await {
                Ok(s) => return Ok(s),
                Err(e) if tokio::time::Instant::now() > deadline => {
                    return Err(anyhow::Error::from(e).context("reopening the console"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })?;
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + BOOT_LIMIT;
        loop {
            console
                .send(b"root\n".to_vec())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            console
                .send(b"echo reattached-$((6*7))\n".to_vec())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            match read_until(&mut console, "reattached-42", Duration::from_secs(5)).await {
                Ok(_) => return Ok(()),
                Err(e) if tokio::time::Instant::now() > deadline => return Err(e),
                Err(_) => {}
            }
        }
    })?;
    rt.block_on(console.close());

    ensure!(power(&lab, &alice, id, "off")? == "off");
    ensure!(
        session_qemus(&lab, &dev).is_empty(),
        "QEMU left after power off"
    );
    lab.json_as(&alice, &["lease", "release", &id.to_string(), "--json"])?;
    lab.finish()
}
