//! System tests of device administration, quarantine, the audit and agent health: a real
//! `dutlab serve`, real agents (QEMU devices where a job runs), the real CLI as each user.

use anyhow::{Context, Result, ensure};
use nix::sys::signal::Signal;
use serde_json::Value;
use std::time::Duration;
use testkit::lab::Lab;
use testkit::{expect_code, inline_job, wait_until};

const DUTLAB: &str = env!("CARGO_BIN_EXE_dutlab");
const LIMIT: Duration = Duration::from_secs(30);
/// A job boots a QEMU DUT under TCG on a busy machine.
const JOB_LIMIT: Duration = Duration::from_secs(240);

fn first_device(lab: &Lab) -> Result<String> {
    let devices = lab.json(&["device", "list", "--json"])?;
    Ok(devices[0]["name"]
        .as_str()
        .context("a device name")?
        .to_owned())
}

fn show(lab: &Lab, name: &str) -> Result<Value> {
    lab.json(&["device", "show", name, "--json"])
}

fn audit(lab: &Lab) -> Result<Vec<Value>> {
    let entries = lab.json(&["audit", "list", "--json"])?;
    Ok(entries.as_array().context("audit list")?.clone())
}

fn wait_device(lab: &Lab, name: &str, state: &str, within: Duration) -> Result<Value> {
    wait_until(&format!("device {name} {state}"), within, || {
        let d = show(lab, name)?;
        Ok((d["device"]["state"] == state).then_some(d))
    })
}

#[test]
fn maintenance_holds_work_back_until_idle_and_now_interrupts() -> Result<()> {
    let mut lab = Lab::start(DUTLAB)?;
    lab.agent("a1", 1)?;
    let dev = first_device(&lab)?;
    let alice = lab.token("alice", "user")?;

    // A user may not: 403 (exit 77), and nothing changes.
    let refused = lab.cli_as(&alice, &["device", "set", &dev, "--state", "maintenance"])?;
    expect_code(&refused, 77)?;
    ensure!(refused.stderr.contains("403"), "{}", refused.stderr);
    let (status, _) = lab.http_json(
        "POST",
        &format!("/api/v1/devices/{dev}/tags"),
        &alice,
        &serde_json::json!({"add": ["x"]}),
    )?;
    ensure!(status == 403, "a user edited tags: {status}");
    ensure!(show(&lab, &dev)?["device"]["state"] == "idle");
    // The admin takes it out: a job submitted now stays queued.
    let set = lab.cli(&[
        "device",
        "set",
        &dev,
        "--state",
        "maintenance",
        "--reason",
        "new PSU",
    ])?;
    expect_code(&set, 0)?;
    let d = show(&lab, &dev)?;
    ensure!(
        d["device"]["state"] == "maintenance"
            && d["device"]["set"]["by"] == "admin"
            && d["device"]["set"]["reason"] == "new PSU",
        "{d}"
    );
    let job = lab.write("true.yaml", &inline_job("quick", "  job: 4m", &["true"]))?;
    let first = lab.submit_as(&alice, &job)?;
    ensure!(lab.job(first)?["state"] == "queued");
    // Returned, the queued job runs on it.
    expect_code(&lab.cli(&["device", "set", &dev, "--state", "idle"])?, 0)?;
    let done = lab.wait_state(first, "finished", JOB_LIMIT)?;
    ensure!(
        done["outcome"] == "passed" && done["device"] == dev.as_str(),
        "{done}"
    );

    // A running job finishes first; `--now` cancels it.
    let long = lab.write(
        "long.yaml",
        &inline_job("long", "  job: 10m", &["sleep 600"]),
    )?;
    let second = lab.submit(&long)?;
    lab.wait_state(second, "running", JOB_LIMIT)?;
    expect_code(
        &lab.cli(&["device", "set", &dev, "--state", "maintenance"])?,
        0,
    )?;
    let d = show(&lab, &dev)?;
    ensure!(
        d["device"]["state"] == "busy" && d["device"]["set"]["state"] == "maintenance",
        "{d}"
    );
    ensure!(lab.job(second)?["state"] == "running");
    let now = lab.cli(&[
        "device", "set", &dev, "--state", "retired", "--now", "--reason", "scrapped",
    ])?;
    expect_code(&now, 0)?;
    let canceled = lab.wait_state(second, "finished", LIMIT)?;
    ensure!(canceled["outcome"] == "canceled", "{canceled}");
    let d = wait_device(&lab, &dev, "retired", LIMIT)?;

    // History: who set what and why, in order; the last jobs with their outcomes.
    let history: Vec<(String, String, String)> = d["history"]
        .as_array()
        .context("history")?
        .iter()
        .map(|n| {
            (
                n["state"].as_str().unwrap_or("").to_owned(),
                n["by"].as_str().unwrap_or("").to_owned(),
                n["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let want: Vec<(String, String, String)> = [
        ("maintenance", "admin", "new PSU"),
        ("idle", "admin", ""),
        ("maintenance", "admin", ""),
        ("retired", "admin", "scrapped"),
    ]
    .iter()
    .map(|(s, b, r)| (s.to_string(), b.to_string(), r.to_string()))
    .collect();
    ensure!(history == want, "{history:?}");
    let jobs = d["jobs"].as_array().context("jobs")?;
    ensure!(
        jobs.len() == 2
            && jobs[0]["id"] == second
            && jobs[0]["outcome"] == "canceled"
            && jobs[1]["id"] == first
            && jobs[1]["outcome"] == "passed",
        "{jobs:?}"
    );
    let text = lab.cli(&["device", "show", &dev])?;
    expect_code(&text, 0)?;
    ensure!(
        text.stdout.contains("retired") && text.stdout.contains("scrapped"),
        "{}",
        text.stdout
    );

    // The audit: each action with who, what and from where; the user's refusal is not there.
    let entries = audit(&lab)?;
    let sets: Vec<&Value> = entries
        .iter()
        .filter(|e| e["action"] == "device-set")
        .collect();
    ensure!(sets.len() == 4, "{entries:?}");
    for e in &sets {
        ensure!(
            e["actor"] == "admin"
                && e["target"] == dev.as_str()
                && e["remote"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("127.0.0.1:")),
            "{e}"
        );
    }
    ensure!(sets[0]["detail"] == "retired now: scrapped", "{}", sets[0]);
    ensure!(
        entries.iter().any(|e| e["action"] == "token-create"
            && e["detail"].as_str().is_some_and(|d| d.contains("alice"))),
        "{entries:?}"
    );
    // Only admins read it.
    let refused = lab.cli_as(&alice, &["audit", "list"])?;
    expect_code(&refused, 77)?;
    lab.finish()
}

#[test]
fn an_admin_ending_a_persons_lease_is_audited_and_now_ends_a_lease() -> Result<()> {
    let mut lab = Lab::start(DUTLAB)?;
    lab.agent("a1", 1)?;
    let dev = first_device(&lab)?;
    let alice = lab.token("alice", "user")?;
    let acquire = |lab: &Lab| -> Result<u64> {
        let done = lab.cli_as(&alice, &["lease", "acquire", "--device", &dev])?;
        expect_code(&done, 0)?;
        done.stdout.trim().parse().context("a lease id")
    };
    let first = acquire(&lab)?;
    expect_code(&lab.cli(&["lease", "release", &first.to_string()])?, 0)?;
    let entries = audit(&lab)?;
    ensure!(
        entries.iter().any(|e| e["action"] == "lease-end"
            && e["target"] == format!("lease {first}")
            && e["actor"] == "admin"
            && e["detail"] == "ended the lease of alice"),
        "{entries:?}"
    );
    // `--now` ends a person's lease on the device, by the admin.
    let second = acquire(&lab)?;
    expect_code(
        &lab.cli(&["device", "set", &dev, "--state", "maintenance", "--now"])?,
        0,
    )?;
    let view = lab.json_as(&alice, &["lease", "show", &second.to_string(), "--json"])?;
    ensure!(
        view["state"] == "ended" && view["end"]["ended-by"] == "admin",
        "{view}"
    );
    wait_device(&lab, &dev, "maintenance", LIMIT)?;
    lab.finish()
}

/// Writes agent `name`'s configuration with one QEMU device whose QEMU binary does not
/// exist; answers its path and the working configuration's text.
fn break_qemu(lab: &Lab, name: &str) -> Result<(std::path::PathBuf, String)> {
    let config = lab.agent_config(name, 1)?;
    let good = std::fs::read_to_string(&config)?;
    let broken = good.replace(
        "qemu: {accel: tcg, memory_mib: 512}",
        "qemu: {accel: tcg, memory_mib: 512, binary: /nonexistent/qemu-system-x86_64}",
    );
    ensure!(
        broken != good,
        "the generated agent.yaml changed shape:\n{good}"
    );
    std::fs::write(&config, broken)?;
    Ok((config, good))
}

/// An agent whose one QEMU device has a QEMU binary that does not exist: every job on it
/// ends `infra-error` when QEMU fails to start.
fn broken_agent(lab: &mut Lab, name: &str) -> Result<std::path::PathBuf> {
    let (config, _) = break_qemu(lab, name)?;
    lab.spawn_agent(&config)?;
    lab.wait_devices_idle(name, 1)?;
    Ok(config)
}

#[test]
fn three_infra_errors_in_a_row_quarantine_a_device_and_tag_edits_survive_reconnects() -> Result<()>
{
    let mut lab = Lab::start(DUTLAB)?;
    let config = broken_agent(&mut lab, "broken")?;
    let dev = first_device(&lab)?;
    let job = lab.write("true.yaml", &inline_job("quick", "  job: 2m", &["true"]))?;
    let mut last = 0;
    for _ in 0..3 {
        last = lab.submit(&job)?;
        let done = lab.wait_state(last, "finished", JOB_LIMIT)?;
        ensure!(done["outcome"] == "infra-error", "{done}");
    }
    let d = wait_device(&lab, &dev, "bad", LIMIT)?;
    let set = &d["device"]["set"];
    ensure!(
        set["by"] == "dutlab"
            && set["job"] == last
            && set["reason"]
                .as_str()
                .is_some_and(|r| r.contains("3 infra errors in a row")),
        "{d}"
    );
    // It takes no more work.
    let fourth = lab.submit(&job)?;
    ensure!(lab.job(fourth)?["state"] == "queued");
    let listed = lab.cli(&["device", "list"])?;
    ensure!(listed.stdout.contains("bad"), "{}", listed.stdout);

    // Tags edited on the controller extend the agent's and survive its reconnect.
    let tagged = lab.cli(&["device", "tag", &dev, "--add", "gpu", "--remove", "tcg"])?;
    expect_code(&tagged, 0)?;
    let tags = |lab: &Lab| -> Result<Value> { Ok(show(lab, &dev)?["device"]["tags"].clone()) };
    ensure!(tags(&lab)? == serde_json::json!(["gpu"]), "{}", tags(&lab)?);
    lab.agents_mut()[0].signal(Signal::SIGTERM)?;
    wait_until("the agent gone", LIMIT, || {
        Ok((show(&lab, &dev)?["device"]["state"] != "idle"
            && lab.json(&["agent", "list", "--json"])?[0]["state"] == "disconnected")
            .then_some(()))
    })?;
    lab.spawn_agent(&config)?;
    wait_until("the agent back", LIMIT, || {
        Ok((lab.json(&["agent", "list", "--json"])?[0]["state"] == "connected").then_some(()))
    })?;
    let d = show(&lab, &dev)?;
    ensure!(
        d["device"]["tags"] == serde_json::json!(["gpu"])
            && d["agent_tags"] == serde_json::json!(["tcg"])
            && d["device"]["state"] == "bad",
        "after the reconnect: {d}"
    );
    // Returned by an admin, the queued job runs (and fails again: the row starts over).
    expect_code(&lab.cli(&["device", "set", &dev, "--state", "idle"])?, 0)?;
    let done = lab.wait_state(fourth, "finished", JOB_LIMIT)?;
    ensure!(done["outcome"] == "infra-error", "{done}");
    let d = show(&lab, &dev)?;
    ensure!(
        d["infra_errors_in_a_row"] == 1 && d["device"]["state"] == "idle",
        "{d}"
    );
    lab.finish()
}

#[test]
fn a_stopped_agent_is_shown_silent_within_seconds() -> Result<()> {
    let mut lab = Lab::start_with(DUTLAB, &["--heartbeat", "1s"])?;
    lab.agent("a1", 1)?;
    let agents = lab.json(&["agent", "list", "--json"])?;
    ensure!(
        agents[0]["state"] == "connected" && agents[0]["device_states"][0]["state"] == "idle",
        "{agents}"
    );
    lab.agents_mut()[0].signal(Signal::SIGSTOP)?;
    let stopped = std::time::Instant::now();
    // Two heartbeats missed: silent (its socket is still open, its leases live on).
    wait_until("agent a1 silent", Duration::from_secs(10), || {
        Ok((lab.json(&["agent", "list", "--json"])?[0]["state"] == "silent").then_some(()))
    })?;
    eprintln!("silent after {:?}", stopped.elapsed());
    let table = lab.cli(&["agent", "list"])?;
    ensure!(table.stdout.contains("silent"), "{}", table.stdout);
    // Four missed: the controller closes its link and its device leaves the pool, so a job
    // submitted now waits instead of being sent to a frozen agent.
    wait_until("agent a1 disconnected", Duration::from_secs(20), || {
        Ok((lab.json(&["agent", "list", "--json"])?[0]["state"] == "disconnected").then_some(()))
    })?;
    let file = lab.write("thawed.yaml", &inline_job("thawed", "  job: 4m", &["true"]))?;
    let job = lab.submit(&file)?;
    ensure!(lab.job(job)?["state"] == "queued");
    lab.agents_mut()[0].signal(Signal::SIGCONT)?;
    wait_until("agent a1 connected again", LIMIT, || {
        Ok((lab.json(&["agent", "list", "--json"])?[0]["state"] == "connected").then_some(()))
    })?;
    // Back in the pool: the waiting job runs on it.
    let done = lab.wait_state(job, "finished", JOB_LIMIT)?;
    ensure!(done["outcome"] == "passed", "{done}");
    lab.finish()
}

#[test]
fn a_stopped_agent_running_a_job_keeps_it_but_its_idle_device_takes_no_work() -> Result<()> {
    let mut lab = Lab::start_with(DUTLAB, &["--heartbeat", "1s"])?;
    lab.agent("a1", 2)?;
    let long = lab.write("long.yaml", &inline_job("long", "  job: 4m", &["sleep 15"]))?;
    let running = lab.submit(&long)?;
    let job = lab.wait_state(running, "running", JOB_LIMIT)?;
    let busy = job["device"]
        .as_str()
        .context("the running job's device")?
        .to_owned();
    let device_state = |lab: &Lab, name: &str| -> Result<String> {
        let devices = lab.json(&["device", "list", "--json"])?;
        let d = devices
            .as_array()
            .context("device list")?
            .iter()
            .find(|d| d["name"] == name)
            .context("the device")?;
        Ok(d["state"].as_str().unwrap_or_default().to_owned())
    };
    let devices = lab.json(&["device", "list", "--json"])?;
    let other = devices
        .as_array()
        .context("device list")?
        .iter()
        .filter_map(|d| d["name"].as_str())
        .find(|n| *n != busy)
        .context("the idle device")?
        .to_owned();
    lab.agents_mut()[0].signal(Signal::SIGSTOP)?;
    // Silent: the idle device leaves the pool, the busy one keeps its job's lease.
    wait_until("the idle device offline", Duration::from_secs(10), || {
        Ok((device_state(&lab, &other)? == "offline").then_some(()))
    })?;
    ensure!(lab.json(&["agent", "list", "--json"])?[0]["state"] == "silent");
    ensure!(device_state(&lab, &busy)? == "busy");
    let short = lab.write("short.yaml", &inline_job("short", "  job: 4m", &["true"]))?;
    let waiting = lab.submit(&short)?;
    // Past the point where the link of a job-less agent would be closed: still silent, the
    // running job still holds its lease, the new job still waits.
    std::thread::sleep(Duration::from_secs(5));
    ensure!(lab.json(&["agent", "list", "--json"])?[0]["state"] == "silent");
    ensure!(
        lab.job(waiting)?["state"] == "queued",
        "{}",
        lab.job(waiting)?
    );
    ensure!(
        lab.job(running)?["state"] == "running",
        "{}",
        lab.job(running)?
    );
    lab.agents_mut()[0].signal(Signal::SIGCONT)?;
    // Heard again: both jobs run to the end on their own devices.
    for job in [running, waiting] {
        let done = lab.wait_state(job, "finished", JOB_LIMIT)?;
        ensure!(done["outcome"] == "passed", "{done}");
    }
    // It went to the device that was idle, as soon as the agent was heard.
    ensure!(
        lab.job(waiting)?["device"] == other.as_str(),
        "{}",
        lab.job(waiting)?
    );
    ensure!(lab.json(&["agent", "list", "--json"])?[0]["state"] == "connected");
    lab.finish()
}

#[test]
fn health_checks_run_when_devices_appear_and_on_demand_and_decide_bad_or_idle() -> Result<()> {
    let checks = tempfile::tempdir()?;
    std::fs::write(
        checks.path().join("qemu.yaml"),
        inline_job("health", "  job: 4m", &["true"]),
    )?;
    let dir = checks.path().display().to_string();
    let mut lab = Lab::start_with(DUTLAB, &["--health-checks", &dir])?;
    let alice = lab.token("alice", "user")?;
    // A device whose QEMU cannot start: its first check fails, and it is bad with the job.
    let (config, good) = break_qemu(&lab, "broken")?;
    lab.spawn_agent(&config)?;
    let dev = wait_until("a device registered", LIMIT, || {
        let devices = lab.json(&["device", "list", "--json"])?;
        Ok(devices[0]["name"].as_str().map(str::to_owned))
    })?;
    let d = wait_device(&lab, &dev, "bad", JOB_LIMIT)?;
    let set = &d["device"]["set"];
    let check = set["job"].as_u64().context("the check's job")?;
    ensure!(
        set["by"] == "dutlab"
            && set["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with(&format!("health check job {check} infra-error"))),
        "{d}"
    );
    let job = lab.job(check)?;
    ensure!(
        job["owner"] == "dutlab" && job["priority"] == 100 && job["device"] == dev.as_str(),
        "{job}"
    );
    // Only admins ask for a check.
    expect_code(&lab.cli_as(&alice, &["device", "check", &dev])?, 77)?;
    // Repaired (the agent restarted with a working QEMU), a check on demand returns it.
    lab.agents_mut()[0].signal(Signal::SIGTERM)?;
    wait_until("the agent gone", LIMIT, || {
        Ok((lab.json(&["agent", "list", "--json"])?[0]["state"] == "disconnected").then_some(()))
    })?;
    std::fs::write(&config, &good)?;
    lab.spawn_agent(&config)?;
    wait_until("the agent back", LIMIT, || {
        Ok((lab.json(&["agent", "list", "--json"])?[0]["state"] == "connected").then_some(()))
    })?;
    ensure!(
        show(&lab, &dev)?["device"]["state"] == "bad",
        "a reconnect cleared bad"
    );
    let asked = lab.cli(&["device", "check", &dev])?;
    expect_code(&asked, 0)?;
    let again: u64 = asked.stdout.trim().parse().context("the check's job id")?;
    ensure!(again != check);
    let done = lab.wait_state(again, "finished", JOB_LIMIT)?;
    ensure!(done["outcome"] == "passed", "{done}");
    let d = wait_device(&lab, &dev, "idle", LIMIT)?;
    let jobs = d["jobs"].as_array().context("jobs")?;
    ensure!(
        jobs[0]["id"] == again && jobs[0]["outcome"] == "passed" && jobs[1]["id"] == check,
        "{jobs:?}"
    );
    let history = d["history"].as_array().context("history")?;
    ensure!(
        history.len() == 2 && history[0]["state"] == "bad" && history[1]["state"] == "idle",
        "{history:?}"
    );
    ensure!(
        audit(&lab)?
            .iter()
            .any(|e| e["action"] == "device-check" && e["target"] == dev.as_str()),
        "device-check not audited"
    );
    // A device that appears in working order passes its first check and stays idle.
    lab.agent_config("fine", 1)
        .and_then(|c| lab.spawn_agent(&c).map(drop))?;
    let fine = wait_until("the second device", LIMIT, || {
        let devices = lab.json(&["device", "list", "--json"])?;
        Ok(devices
            .as_array()
            .and_then(|a| a.iter().find(|d| d["agent"] == "fine"))
            .and_then(|d| d["name"].as_str().map(str::to_owned)))
    })?;
    let checked = wait_until("the first check of the second device", JOB_LIMIT, || {
        let d = show(&lab, &fine)?;
        Ok(d["jobs"]
            .as_array()
            .and_then(|j| j.first())
            .filter(|j| j["outcome"] == "passed")
            .cloned())
    })?;
    ensure!(lab.job(checked["id"].as_u64().context("id")?)?["owner"] == "dutlab");
    ensure!(show(&lab, &fine)?["device"]["state"] == "idle");
    lab.finish()
}

/// Runs the next job the simulated agent is given to a pass; answers its id. (It does not
/// wait for the ack: the next `StartJob` may come first.)
fn pass_next(sim: &mut testkit::sim_agent::SimAgent) -> Result<u64> {
    let lease = sim.take_job()?;
    sim.finished(lease.lease, lease.epoch, "", 0)?;
    Ok(lease.job.0)
}

/// The health check jobs of `dev`, oldest first.
fn checks_of(lab: &Lab, dev: &str) -> Result<Vec<u64>> {
    let d = show(lab, dev)?;
    let mut ids = Vec::new();
    for id in d["jobs"]
        .as_array()
        .context("jobs")?
        .iter()
        .filter_map(|j| j["id"].as_u64())
    {
        if lab.job(id)?["owner"] == "dutlab" {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

#[test]
fn health_checks_also_run_after_every_n_jobs_and_after_an_interval() -> Result<()> {
    use testkit::sim_agent::SimAgent;
    let checks = tempfile::tempdir()?;
    std::fs::write(
        checks.path().join("qemu.yaml"),
        inline_job("health", "  job: 4m", &["true"]),
    )?;
    let dir = checks.path().display().to_string();
    // After every 2 jobs. The simulated agent sends no heartbeats: a long interval keeps
    // its idle link open.
    let lab = Lab::start_with(
        DUTLAB,
        &[
            "--health-checks",
            &dir,
            "--health-check-every-jobs",
            "2",
            "--heartbeat",
            "60s",
        ],
    )?;
    let mut sim = SimAgent::open(lab.port(), &lab.token("sim", "agent")?)?;
    sim.hello("sim", &["sim-q1"], vec![])?;
    sim.welcome()?;
    // First seen: checked.
    let first = pass_next(&mut sim).context("the first check")?;
    ensure!(checks_of(&lab, "sim-q1")? == vec![first], "first check");
    let job = lab.write("true.yaml", &inline_job("quick", "  job: 4m", &["true"]))?;
    let one = lab.submit(&job)?;
    ensure!(pass_next(&mut sim).context("job one")? == one);
    ensure!(
        checks_of(&lab, "sim-q1")? == vec![first],
        "checked after one job"
    );
    let (two, three) = (lab.submit(&job)?, lab.submit(&job)?);
    ensure!(pass_next(&mut sim).context("job two")? == two);
    // After the second job the check goes first, at the highest priority.
    let second = pass_next(&mut sim).context("the check after two jobs")?;
    ensure!(
        checks_of(&lab, "sim-q1")? == vec![first, second],
        "no check after two jobs"
    );
    ensure!(pass_next(&mut sim).context("job three")? == three);
    // The device types, as any user reads them: the check and what waits (a job of a type
    // with no device yet).
    let later = lab.write(
        "later.yaml",
        &inline_job("later", "  job: 4m", &["true"])
            .replace("device_type: qemu", "device_type: bbb"),
    )?;
    let alice = lab.token("alice", "user")?;
    let queued = lab.cli_as(
        &alice,
        &[
            "job",
            "submit",
            later.to_str().context("path")?,
            "--wait-for-device",
        ],
    )?;
    expect_code(&queued, 0)?;
    let types = lab.json_as(&alice, &["device", "types", "--json"])?;
    let qemu = &types[1];
    ensure!(
        types[0]["name"] == "bbb"
            && types[0]["devices"] == 0
            && types[0]["waiting"] == 1
            && types[0].get("health_check").is_none()
            && qemu["name"] == "qemu"
            && qemu["devices"] == 1
            && qemu["health_check"]["file_name"] == "qemu.yaml"
            && qemu["health_check"]["job_name"] == "health"
            && qemu["health_check"]["every_jobs"] == 2,
        "{types}"
    );
    let table = lab.cli_as(&alice, &["device", "types"])?;
    ensure!(
        table.stdout.contains("qemu.yaml (health), every 2 jobs"),
        "{}",
        table.stdout
    );
    drop(lab);

    // Every 2 s (looked at every 10 s): a passed check is followed by another.
    let lab = Lab::start_with(
        DUTLAB,
        &[
            "--health-checks",
            &dir,
            "--health-check-every",
            "2s",
            "--heartbeat",
            "60s",
        ],
    )?;
    let mut sim = SimAgent::open(lab.port(), &lab.token("sim", "agent")?)?;
    sim.hello("sim", &["sim-q1"], vec![])?;
    sim.welcome()?;
    let first = pass_next(&mut sim).context("the first check")?;
    let again = pass_next(&mut sim).context("the check after the interval")?;
    ensure!(again != first);
    ensure!(checks_of(&lab, "sim-q1")? == vec![first, again]);
    Ok(())
}

#[test]
fn a_schedule_file_sets_a_device_types_check_interval_and_a_bad_one_stops_serve() -> Result<()> {
    use testkit::sim_agent::SimAgent;
    let checks = tempfile::tempdir()?;
    std::fs::write(
        checks.path().join("qemu.yaml"),
        inline_job("health", "  job: 4m", &["true"]),
    )?;
    let dir = checks.path().display().to_string();
    let schedule = checks.path().join("schedule.conf");
    // The flag says every 5 jobs; the schedule says every job for qemu.
    std::fs::write(&schedule, "qemu:\n  every_jobs: 1\n")?;
    let lab = Lab::start_with(
        DUTLAB,
        &[
            "--health-checks",
            &dir,
            "--health-check-every-jobs",
            "5",
            "--health-check-schedule",
            schedule.to_str().context("path")?,
            "--heartbeat",
            "60s",
        ],
    )?;
    let mut sim = SimAgent::open(lab.port(), &lab.token("sim", "agent")?)?;
    sim.hello("sim", &["sim-q1"], vec![])?;
    sim.welcome()?;
    let first = pass_next(&mut sim).context("the first check")?;
    let job = lab.write("true.yaml", &inline_job("quick", "  job: 4m", &["true"]))?;
    let one = lab.submit(&job)?;
    ensure!(pass_next(&mut sim).context("job one")? == one);
    let second = pass_next(&mut sim).context("the check after one job")?;
    ensure!(
        checks_of(&lab, "sim-q1")? == vec![first, second],
        "no check after one job"
    );
    let types = lab.json(&["device", "types", "--json"])?;
    ensure!(types[0]["health_check"]["every_jobs"] == 1, "{types}");
    drop(lab);

    // A schedule naming a type with no check job: serve refuses to start, naming the file,
    // the type and the reason.
    std::fs::write(&schedule, "bbb:\n  every: 24h\n")?;
    let data = tempfile::tempdir()?;
    let out = std::process::Command::new(DUTLAB)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .args(["--health-checks", &dir, "--health-check-schedule"])
        .arg(&schedule)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "serve started: {stderr}");
    ensure!(
        stderr.contains("schedule.conf: bbb: no health check job bbb.yaml"),
        "{stderr}"
    );
    Ok(())
}

/// Waits for `StartJob`, answers `JobStarted`; answers the job and its device.
fn started(
    sim: &mut testkit::sim_agent::SimAgent,
) -> Result<(testkit::sim_agent::SimLease, String)> {
    use proto::link::{AgentMessage, ControllerMessage};
    use testkit::sim_agent::{Heard, SimLease};
    let (lease, device) = sim.expect("start-job", |h| match h {
        Heard::Message(ControllerMessage::StartJob {
            lease,
            epoch,
            job,
            device,
            ..
        }) => Some((
            SimLease {
                lease: *lease,
                epoch: *epoch,
                job: *job,
            },
            device.clone(),
        )),
        _ => None,
    })?;
    sim.send(&AgentMessage::JobStarted {
        lease: lease.lease,
        epoch: lease.epoch,
    })?;
    Ok((lease, device))
}

#[test]
fn a_job_that_allows_it_is_retried_once_on_another_device_after_an_infra_error() -> Result<()> {
    use proto::link::AgentMessage;
    use testkit::sim_agent::{self, SimAgent};
    let lab = Lab::start_with(DUTLAB, &["--heartbeat", "60s"])?;
    let alice = lab.token("alice", "user")?;
    let mut sim = SimAgent::open(lab.port(), &lab.token("sim", "agent")?)?;
    sim.hello("sim", &["sim-q1", "sim-q2"], vec![])?;
    sim.welcome()?;
    let infra = |sim: &mut SimAgent, lease: testkit::sim_agent::SimLease| {
        sim.send(&AgentMessage::JobFinished {
            lease: lease.lease,
            epoch: lease.epoch,
            report: sim_agent::report(proto::Outcome::InfraError, "the DUT's power switch failed"),
            last_seq: proto::Seq(0),
        })
    };
    let file = lab.write("retry.yaml", &inline_job("flaky", "  job: 4m", &["true"]))?;
    let submit = |args: &[&str]| -> Result<Value> {
        let mut all = vec!["job", "submit", file.to_str().context("path")?, "--json"];
        all.extend_from_slice(args);
        lab.json_as(&alice, &all)
    };
    let first = submit(&["--retry", "once-on-another-device"])?;
    let first = first["id"].as_u64().context("id")?;
    ensure!(lab.job(first)?["retry"] == "once-on-another-device");
    let (lease, failed_on) = started(&mut sim)?;
    ensure!(lease.job.0 == first);
    infra(&mut sim, lease)?;
    // The retry: a new job of alice's that may not use the device that failed.
    let (again, device) = started(&mut sim)?;
    ensure!(
        device != failed_on,
        "the retry ran on {device}, where the error was"
    );
    let view = lab.job(again.job.0)?;
    ensure!(
        view["retry_of"] == first
            && view["owner"] == "alice"
            && view["avoid_devices"] == serde_json::json!([failed_on])
            && view.get("retry").is_none(),
        "{view}"
    );
    let shown = lab.json_as(&alice, &["job", "show", &first.to_string(), "--json"])?;
    ensure!(
        shown["outcome"] == "infra-error" && shown["retried_as"] == again.job.0,
        "{shown}"
    );
    let text = lab.cli_as(&alice, &["job", "show", &first.to_string()])?;
    ensure!(
        text.stdout
            .lines()
            .any(|l| l.starts_with("retried as:") && l.ends_with(&format!("job {}", again.job.0))),
        "{}",
        text.stdout
    );
    // A retry is never retried itself.
    infra(&mut sim, again)?;
    // Without --retry, an infra error stands: the next job to start is the one submitted next.
    let plain = submit(&[])?["id"].as_u64().context("id")?;
    let (lease, _) = started(&mut sim)?;
    ensure!(
        lease.job.0 == plain,
        "job {} started, not {plain}",
        lease.job.0
    );
    infra(&mut sim, lease)?;
    let last = submit(&[])?["id"].as_u64().context("id")?;
    let (lease, _) = started(&mut sim)?;
    ensure!(
        lease.job.0 == last,
        "job {} started, not {last}",
        lease.job.0
    );
    ensure!(lab.job(again.job.0)?.get("retried_as").is_none());
    ensure!(lab.job(plain)?.get("retried_as").is_none());
    Ok(())
}
