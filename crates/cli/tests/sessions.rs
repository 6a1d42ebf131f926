//! System tests of what a person's lease does with its device through the agent (the
//! session): power, SSH keys, expiry powering the DUT off. Real `dutlab serve`, a real agent
//! with a QEMU device, the real CLI as each user, real QEMU (`testkit::lab`). Needs `ssh` and
//! `ssh-keygen` (openssh-client) for the key delivery.

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
