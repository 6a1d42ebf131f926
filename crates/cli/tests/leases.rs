//! System tests of people's leases: a real `dutlab serve`, a real agent with a QEMU device,
//! the real CLI as each user (`testkit::lab`).

use anyhow::{Context, Result, ensure};
use nix::sys::signal::Signal;
use serde_json::Value;
use std::time::Duration;
use testkit::lab::Lab;
use testkit::{Spawned, expect_code, inline_job, wait_until};

const DUTLAB: &str = env!("CARGO_BIN_EXE_dutlab");
const LIMIT: Duration = Duration::from_secs(30);
/// A job boots a QEMU DUT under TCG on a busy machine.
const JOB_LIMIT: Duration = Duration::from_secs(240);

/// A lab with one agent and its one QEMU device; answers the device's name.
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

fn lease(lab: &Lab, token: &str, id: u64) -> Result<Value> {
    lab.json_as(token, &["lease", "show", &id.to_string(), "--json"])
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

/// Waits until lease `id` has ended; answers its view.
fn wait_ended(lab: &Lab, token: &str, id: u64, within: Duration) -> Result<Value> {
    wait_until(&format!("lease {id} ended"), within, || {
        let view = lease(lab, token, id)?;
        Ok((view["state"] == "ended").then_some(view))
    })
}

/// `dutlab lease ...` as `token`, running in the background.
fn spawn_cli(lab: &Lab, token: &str, args: &[&str]) -> Result<Spawned> {
    let mut cmd = lab.sandbox().command(DUTLAB)?;
    cmd.args(args)
        .env("DUTLAB_URL", lab.url())
        .env("DUTLAB_TOKEN", token)
        .env("XDG_CONFIG_HOME", lab.sandbox().path().join("config"));
    Spawned::start(cmd)
}

#[test]
fn acquire_show_renew_release_and_nobody_else_may_touch_it() -> Result<()> {
    let (lab, dev) = lab_with_device()?;
    let alice = lab.token("alice", "user")?;
    let bob = lab.token("bob", "user")?;

    // The plain form prints the id alone on stdout.
    let done = lab.cli_as(
        &alice,
        &["lease", "acquire", "--device", &dev, "--duration", "10m"],
    )?;
    expect_code(&done, 0)?;
    let id: u64 = done.stdout.trim().parse().context("a lease id on stdout")?;
    let view = lease(&lab, &alice, id)?;
    ensure!(
        view["state"] == "held" && view["device"] == dev.as_str(),
        "{view}"
    );
    ensure!(
        view["holder"] == "alice" && view["duration_s"] == 600,
        "{view}"
    );
    let holder = device(&lab, &dev)?;
    ensure!(
        holder["state"] == "busy" && holder["holder"] == "alice",
        "{holder}"
    );
    ensure!(holder["lease"] == id, "{holder}");

    // Another user: 403 on show, renew and release, naming the holder; the lease is unchanged.
    for verb in ["show", "renew", "release"] {
        let done = lab.cli_as(&bob, &["lease", verb, &id.to_string()])?;
        expect_code(&done, 77)?;
        ensure!(
            done.stderr.contains("held by alice"),
            "{verb}: {}",
            done.stderr
        );
    }
    let listed = lab.json_as(&bob, &["lease", "list", "--json"])?;
    ensure!(
        listed.as_array().is_some_and(Vec::is_empty),
        "bob sees {listed}"
    );
    ensure!(lease(&lab, &alice, id)?["state"] == "held");
    // Admins see everyone's.
    let all = lab.json(&["lease", "list", "--json"])?;
    ensure!(all[0]["id"] == id, "{all}");

    // Renew moves the deadline forward (never past the cap).
    let before = view["expires_at"].as_u64().context("expires_at")?;
    let renewed = lab.json_as(
        &alice,
        &[
            "lease",
            "renew",
            &id.to_string(),
            "--duration",
            "20m",
            "--json",
        ],
    )?;
    let after = renewed["expires_at"].as_u64().context("expires_at")?;
    ensure!(
        after >= before + 9 * 60 * 1000,
        "renewed from {before} to {after}"
    );
    ensure!(after <= renewed["cap_at"].as_u64().context("cap_at")?);

    // Release: ended, device back in the pool; a second release is 410 (exit 70) and says so.
    let released = lab.json_as(&alice, &["lease", "release", &id.to_string(), "--json"])?;
    ensure!(
        released["state"] == "ended" && released["end"] == "released",
        "{released}"
    );
    // Back in the pool once the agent confirms the session is torn down (DUT off).
    wait_until("device idle", LIMIT, || {
        Ok((device(&lab, &dev)?["state"] == "idle").then_some(()))
    })?;
    let again = lab.cli_as(&alice, &["lease", "release", &id.to_string()])?;
    expect_code(&again, 70)?;
    ensure!(
        again.stderr.contains("410") && again.stderr.contains("has ended: released by its holder"),
        "{}",
        again.stderr
    );

    // Bad input is refused naming the field.
    let bad = lab.cli_as(&alice, &["lease", "acquire", "--device", "no/such"])?;
    ensure!(
        bad.code() != Some(0) && bad.stderr.contains("device:"),
        "{}",
        bad.stderr
    );
    let long = lab.cli_as(
        &alice,
        &["lease", "acquire", "--device", &dev, "--duration", "9h"],
    )?;
    ensure!(
        long.code() != Some(0) && long.stderr.contains("duration_s"),
        "{}",
        long.stderr
    );
    lab.finish()
}

#[test]
fn an_admin_ends_any_lease_and_the_end_names_the_admin() -> Result<()> {
    let (lab, dev) = lab_with_device()?;
    let alice = lab.token("alice", "user")?;
    let view = lab.json_as(&alice, &["lease", "acquire", "--device", &dev, "--json"])?;
    let id = view["id"].as_u64().context("id")?;
    let ended = lab.json(&["lease", "release", &id.to_string(), "--json"])?;
    ensure!(
        ended["end"] == serde_json::json!({"ended-by": "admin"}),
        "{ended}"
    );
    let renew = lab.cli_as(&alice, &["lease", "renew", &id.to_string()])?;
    expect_code(&renew, 70)?;
    ensure!(
        renew.stderr.contains("ended by admin admin"),
        "{}",
        renew.stderr
    );
    lab.finish()
}

#[test]
fn an_expired_lease_is_gone_and_its_device_back_in_the_pool() -> Result<()> {
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
            "2s",
            "--json",
        ],
    )?;
    let id = view["id"].as_u64().context("id")?;
    let ended = wait_ended(&lab, &alice, id, LIMIT)?;
    ensure!(ended["end"] == "expired", "{ended}");
    // Back in the pool once the agent confirms the session is torn down (DUT off).
    wait_until("device idle", LIMIT, || {
        Ok((device(&lab, &dev)?["state"] == "idle").then_some(()))
    })?;
    let renew = lab.cli_as(&alice, &["lease", "renew", &id.to_string()])?;
    expect_code(&renew, 70)?;
    ensure!(
        renew.stderr.contains("410") && renew.stderr.contains("expired at its deadline"),
        "{}",
        renew.stderr
    );
    lab.finish()
}

#[test]
fn a_queued_job_waits_while_a_lease_holds_the_only_device_and_runs_after_release() -> Result<()> {
    let (lab, dev) = lab_with_device()?;
    let alice = lab.token("alice", "user")?;
    let view = lab.json_as(&alice, &["lease", "acquire", "--device", &dev, "--json"])?;
    let id = view["id"].as_u64().context("id")?;
    let job = lab.write(
        "job.yaml",
        &inline_job("after-lease", "  job: 5m", &["true"]),
    )?;
    let job = lab.submit(&job)?;
    // The job is queued behind the held device: the scheduler does not give it away.
    let queued = lab.job(job)?;
    ensure!(
        queued["state"] == "queued" && queued["position"] == 0,
        "{queued}"
    );
    ensure!(device(&lab, &dev)?["holder"] == "alice");
    lab.json_as(&alice, &["lease", "release", &id.to_string(), "--json"])?;
    let done = lab.wait_state(job, "finished", JOB_LIMIT)?;
    ensure!(
        done["outcome"] == "passed" && done["device"] == dev.as_str(),
        "{done}"
    );
    lab.finish()
}

#[test]
fn a_waiting_lease_gets_the_device_the_moment_it_is_released() -> Result<()> {
    let (lab, dev) = lab_with_device()?;
    let alice = lab.token("alice", "user")?;
    let bob = lab.token("bob", "user")?;
    let first = lab.json_as(&alice, &["lease", "acquire", "--device", &dev, "--json"])?;
    let waiting = spawn_cli(
        &lab,
        &bob,
        &["lease", "acquire", "--device-type", "qemu", "--wait"],
    )?;
    waiting.wait_for_stderr("waiting for a device, position 0", LIMIT)?;
    lab.json_as(
        &alice,
        &["lease", "release", &first["id"].to_string(), "--json"],
    )?;
    let done = waiting.finish(LIMIT)?;
    expect_code(&done, 0)?;
    let id: u64 = done.stdout.trim().parse().context("bob's lease id")?;
    let view = lease(&lab, &bob, id)?;
    ensure!(
        view["state"] == "held" && view["device"] == dev.as_str(),
        "{view}"
    );
    lab.finish()
}

#[test]
fn lease_shell_renews_while_it_lives_and_a_sigkill_lets_the_lease_expire() -> Result<()> {
    let (lab, dev) = lab_with_device()?;
    let alice = lab.token("alice", "user")?;

    // A command that exits: it sees DUTLAB_LEASE, and the lease is released after it.
    let done = lab.cli_as(
        &alice,
        &[
            "lease",
            "shell",
            "--device",
            &dev,
            "--",
            "sh",
            "-c",
            "echo lease=$DUTLAB_LEASE; exit 3",
        ],
    )?;
    expect_code(&done, 3)?;
    let id: u64 = done
        .stdout
        .trim()
        .strip_prefix("lease=")
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("DUTLAB_LEASE in {:?}", done.stdout))?;
    let ended = lease(&lab, &alice, id)?;
    ensure!(
        ended["state"] == "ended" && ended["end"] == "released",
        "{ended}"
    );

    // A shell that lives: renewed in the background past its first deadline.
    let mut shell = spawn_cli(
        &lab,
        &alice,
        &[
            "lease",
            "shell",
            "--device",
            &dev,
            "--duration",
            "3s",
            "--json",
            "--",
            "sleep",
            "600",
        ],
    )?;
    shell.wait_for_stderr("holds", LIMIT)?;
    let held = wait_until("the lease of lease shell", LIMIT, || {
        let leases = lab.json_as(&alice, &["lease", "list", "--json"])?;
        Ok(leases.as_array().and_then(|l| l.first()).cloned())
    })?;
    let id = held["id"].as_u64().context("id")?;
    let first = held["expires_at"].as_u64().context("expires_at")?;
    wait_until("a renewal past the first deadline", LIMIT, || {
        let view = lease(&lab, &alice, id)?;
        ensure!(
            view["state"] == "held",
            "ended while its shell lives: {view}"
        );
        Ok((view["expires_at"].as_u64().unwrap_or(0) > first + 1_500).then_some(()))
    })?;

    // Killed outright: nothing releases it; it expires and the device returns to the pool.
    shell.kill_hard()?;
    let ended = wait_ended(&lab, &alice, id, LIMIT)?;
    ensure!(ended["end"] == "expired", "{ended}");
    wait_until("the device idle again", LIMIT, || {
        Ok((device(&lab, &dev)?["state"] == "idle").then_some(()))
    })?;
    lab.finish()
}

#[test]
fn a_lease_survives_a_controller_kill_9_and_one_due_meanwhile_expires() -> Result<()> {
    let (mut lab, dev) = lab_with_device()?;
    let alice = lab.token("alice", "user")?;
    let long = lab.json_as(
        &alice,
        &[
            "lease",
            "acquire",
            "--device",
            &dev,
            "--duration",
            "10m",
            "--json",
        ],
    )?;
    let id = long["id"].as_u64().context("id")?;
    let renewed = lab.json_as(
        &alice,
        &[
            "lease",
            "renew",
            &id.to_string(),
            "--duration",
            "20m",
            "--json",
        ],
    )?;

    lab.restart_controller_hard()?;
    let after = lease(&lab, &alice, id)?;
    ensure!(after["state"] == "held", "{after}");
    ensure!(
        after["expires_at"] == renewed["expires_at"],
        "the stored renewal is the deadline: {after} vs {renewed}"
    );
    lab.json_as(&alice, &["lease", "release", &id.to_string(), "--json"])?;

    // A short lease whose deadline passes while the controller is down ends at restart.
    lab.wait_devices_idle("a1", 1)?;
    let short = lab.json_as(
        &alice,
        &[
            "lease",
            "acquire",
            "--device",
            &dev,
            "--duration",
            "2s",
            "--json",
        ],
    )?;
    let short_id = short["id"].as_u64().context("id")?;
    let deadline = short["expires_at"].as_u64().context("expires_at")?;
    lab.controller()?.signal(Signal::SIGKILL)?;
    wait_until("the short lease's deadline to pass", LIMIT, || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as u64;
        Ok((now > deadline).then_some(()))
    })?;
    lab.restart_controller_hard()?;
    let ended = wait_ended(&lab, &alice, short_id, LIMIT)?;
    ensure!(ended["end"] == "expired", "{ended}");
    lab.finish()
}

#[test]
fn queued_jobs_are_listed_in_serving_order_with_an_estimated_start() -> Result<()> {
    let (lab, dev) = lab_with_device()?;
    // One finished job teaches the controller how long a qemu job takes.
    let first = lab.write("first.yaml", &inline_job("first", "  job: 5m", &["true"]))?;
    let first = lab.submit(&first)?;
    let done = lab.wait_state(first, "finished", JOB_LIMIT)?;
    let run = done["finished_at"].as_u64().context("finished")?
        - done["started_at"].as_u64().context("started")?;
    // A lease holds the only device; two jobs queue behind it.
    let alice = lab.token("alice", "user")?;
    let held = lab.json_as(
        &alice,
        &[
            "lease",
            "acquire",
            "--device",
            &dev,
            "--duration",
            "10m",
            "--json",
        ],
    )?;
    let expires = held["expires_at"].as_u64().context("expires")?;
    let a = lab.write("a.yaml", &inline_job("a", "  job: 5m", &["true"]))?;
    let b = lab.write("b.yaml", &inline_job("b", "  job: 5m", &["true"]))?;
    let (a, b) = (lab.submit(&a)?, lab.submit(&b)?);
    let queue = lab.json(&["job", "list", "--queued", "--json"])?;
    let queue = queue.as_array().context("a list")?;
    let ids: Vec<u64> = queue.iter().filter_map(|j| j["id"].as_u64()).collect();
    ensure!(ids == [a, b], "serving order {ids:?}");
    ensure!(
        queue[0]["position"] == 0 && queue[1]["position"] == 1,
        "{queue:?}"
    );
    // The first waits for the lease's deadline, the second one mean run time more.
    let starts: Vec<u64> = queue
        .iter()
        .filter_map(|j| j["estimated_start"].as_u64())
        .collect();
    ensure!(
        starts == [expires, expires + run],
        "{starts:?} (lease until {expires}, run {run} ms)"
    );
    let table = lab.cli(&["job", "list", "--queued"])?;
    expect_code(&table, 0)?;
    ensure!(
        table.stdout.starts_with("POS") && table.stdout.contains("~in "),
        "{}",
        table.stdout
    );
    let shown = lab.cli(&["job", "show", &b.to_string()])?;
    ensure!(
        shown.stdout.contains("queue position:") && shown.stdout.contains("estimated start:"),
        "{}",
        shown.stdout
    );
    lab.json_as(
        &alice,
        &["lease", "release", &held["id"].to_string(), "--json"],
    )?;
    lab.wait_state(b, "finished", JOB_LIMIT)?;
    lab.finish()
}
