//! System tests of several controllers on one PostgreSQL database: a leader (the holder of
//! the database's lock) and followers (`dutlab serve --follow`), real processes, a real agent
//! with a QEMU device, the real CLI against each controller.

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use std::time::Duration;
use testkit::lab::{Database, Lab, check_numbered, numbered_job};
use testkit::{expect_code, inline_job, wait_until};

mod two_controllers;

use two_controllers::{
    DUTLAB, agent_dialing, leader_and_follower_with_an_agent_each, whoami_status,
};
const JOB_LIMIT: Duration = testkit::lab::CLI_LIMIT;

fn records(stdout: &str) -> Result<Vec<Value>> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("log line {l:?}")))
        .collect()
}

fn job_on(lab: &Lab, port: u16, id: u64) -> Result<Value> {
    lab.json_on(port, &["job", "show", &id.to_string(), "--json"])
}

#[test]
fn a_follower_serves_the_api_forwards_changes_and_follows_logs_stored_by_the_leader() -> Result<()>
{
    let mut lab = Lab::start_on(DUTLAB, Database::Postgres, &[])?;
    lab.agent("host-m", 1)?;
    let follower = lab.follow()?;
    // The follower's views come from its replica of the leader's events.
    wait_until(
        "the follower lists the device",
        Duration::from_secs(10),
        || {
            let devices = lab.json_on(follower, &["device", "list", "--json"])?;
            Ok((devices[0]["agent"] == "host-m" && devices[0]["state"] == "idle").then_some(()))
        },
    )?;

    // A job submitted to the follower is queued by the leader and shown by the follower at
    // once (the answer waits for the follower's replica).
    let lines = 40;
    let file = lab.write("numbered.yaml", &numbered_job("numbered", lines, "0.1"))?;
    let submitted = lab.json_on(
        follower,
        &["job", "submit", &file.display().to_string(), "--json"],
    )?;
    let id = submitted["id"].as_u64().context("job id")?;
    ensure!(job_on(&lab, follower, id)?["id"] == id);
    // Followed on the follower: every line once, in order, though the leader stored them.
    let followed = lab.cli_on(
        follower,
        lab.admin(),
        &["job", "logs", &id.to_string(), "--follow", "--json"],
    )?;
    expect_code(&followed, 0)?;
    let seen = records(&followed.stdout)?;
    check_numbered(&seen, lines)?;
    ensure!(
        seen == lab.log(id)?,
        "the follower followed another log than the leader stored"
    );
    let done = job_on(&lab, follower, id)?;
    ensure!(
        done["state"] == "finished" && done["outcome"] == "passed",
        "{done}"
    );

    // Cancel through the follower; the leader decides with the caller's identity: another
    // user may not cancel the admin's job (403), the admin may.
    let waiting = inline_job("waiting", "  job: 1m", &["true"])
        .replace("device_type: qemu", "device_type: nowhere");
    let file = lab.write("waiting.yaml", &waiting)?;
    let queued = lab.json_on(
        follower,
        &[
            "job",
            "submit",
            &file.display().to_string(),
            "--wait-for-device",
            "--json",
        ],
    )?;
    let waiting_id = queued["id"].as_u64().context("job id")?.to_string();
    // A token made on the leader works on the follower within moments.
    let bob = lab.token("bob", "user")?;
    wait_until(
        "bob's token works on the follower",
        Duration::from_secs(10),
        || {
            let who = lab.cli_on(follower, &bob, &["job", "list", "--json"])?;
            Ok((who.code() == Some(0)).then_some(()))
        },
    )?;
    let refused = lab.cli_on(follower, &bob, &["job", "cancel", &waiting_id])?;
    expect_code(&refused, 77)?;
    ensure!(
        job_on(&lab, follower, waiting_id.parse()?)?["state"] == "queued",
        "a refused cancel changed the job"
    );
    let canceled = lab.cli_on(follower, lab.admin(), &["job", "cancel", &waiting_id])?;
    expect_code(&canceled, 0)?;
    let after = lab.json(&["job", "show", &waiting_id, "--json"])?;
    ensure!(
        after["state"] == "finished" && after["outcome"] == "canceled",
        "{after}"
    );
    // Revoked on the leader: refused on the follower within moments.
    let tokens = lab.json(&["token", "list", "--json"])?;
    let bob_id = tokens
        .as_array()
        .context("token list")?
        .iter()
        .find(|t| t["name"] == "bob")
        .and_then(|t| t["id"].as_str())
        .context("bob's token id")?
        .to_owned();
    expect_code(&lab.cli(&["token", "revoke", &bob_id])?, 0)?;
    wait_until(
        "bob's token refused on the follower",
        Duration::from_secs(10),
        || {
            let who = lab.cli_on(follower, &bob, &["job", "list", "--json"])?;
            Ok((who.code() == Some(77)).then_some(()))
        },
    )?;
    // An agent linked to the follower is served: the follower relays its hello to the
    // leader, which lists its device.
    let config = agent_dialing(&lab, "host-f", &[follower])?;
    lab.spawn_agent(&config)?;
    lab.wait_devices_idle("host-f", 1)?;
    // Jobs are neither lost nor doubled: both controllers list the same two.
    let ids = |port: u16| -> Result<Vec<u64>> {
        let list = lab.json_on(port, &["job", "list", "--json"])?;
        Ok(list
            .as_array()
            .context("job list")?
            .iter()
            .filter_map(|j| j["id"].as_u64())
            .collect())
    };
    let listed = ids(follower)?;
    ensure!(
        listed.len() == 2 && listed == ids(lab.port())?,
        "{listed:?}"
    );
    lab.finish()
}

#[test]
fn killing_the_leader_hands_the_database_to_a_follower_and_nothing_is_lost() -> Result<()> {
    let mut lab = Lab::start_on(DUTLAB, Database::Postgres, &[])?;
    let follower = lab.follow()?;
    let waiting = inline_job("waiting", "  job: 1m", &["true"]);
    let file = lab.write("waiting.yaml", &waiting)?;
    let file = file.display().to_string();
    let submit = |lab: &Lab, port: u16| -> Result<u64> {
        let view = lab.json_on(
            port,
            &["job", "submit", &file, "--wait-for-device", "--json"],
        )?;
        view["id"].as_u64().context("job id")
    };
    // One job queued through each controller; no device yet.
    let first = submit(&lab, lab.port())?;
    let second = submit(&lab, follower)?;
    lab.kill_controller_hard()?;
    // The follower takes the database's lock and leads within 5 s.
    let took = std::time::Instant::now();
    lab.followers()[0]
        .process
        .wait_for_stderr("this controller leads now", Duration::from_secs(5))?;
    eprintln!("took over after {:?}", took.elapsed());
    lab.lead_from(follower)?;
    // A job submitted right after is queued by the new leader; the earlier ones are there.
    let third = submit(&lab, follower)?;
    let jobs = lab.json(&["job", "list", "--json"])?;
    let mut ids: Vec<u64> = jobs
        .as_array()
        .context("job list")?
        .iter()
        .filter_map(|j| j["id"].as_u64())
        .collect();
    ids.sort_unstable();
    ensure!(
        ids == [first, second, third],
        "jobs after the takeover: {ids:?}"
    );
    // An agent of the new leader runs all three, once each.
    let config = lab.agent_config("host-t", 1)?;
    lab.spawn_agent(&config)?;
    for id in [first, second, third] {
        let job = lab.wait_state(id, "finished", JOB_LIMIT)?;
        ensure!(job["outcome"] == "passed", "{job}");
    }
    lab.finish()
}

/// Submits the job in `file` through the controller on `port`; answers its id.
fn submit_on(lab: &Lab, port: u16, file: &std::path::Path) -> Result<u64> {
    let view = lab.json_on(
        port,
        &["job", "submit", &file.display().to_string(), "--json"],
    )?;
    view["id"].as_u64().context("job id")
}

/// Waits until jobs `ids` run at once (so each holds one of the lab's two devices); answers
/// their devices.
fn running_together(lab: &Lab, port: u16, ids: [u64; 2]) -> Result<Vec<String>> {
    wait_until("both jobs running at once", JOB_LIMIT, || {
        let a = job_on(lab, port, ids[0])?;
        let b = job_on(lab, port, ids[1])?;
        let running = a["state"] == "running" && b["state"] == "running";
        Ok(running.then(|| {
            [a, b]
                .iter()
                .map(|j| j["device"].as_str().unwrap_or_default().to_owned())
                .collect::<Vec<_>>()
        }))
    })
}

#[test]
fn agents_on_both_controllers_run_jobs_and_the_dead_leaders_agent_moves_to_the_survivor()
-> Result<()> {
    let mut lab = Lab::start_on(DUTLAB, Database::Postgres, &[])?;
    let leader = lab.port();
    let follower = lab.follow()?;
    // One agent dials the leader first, the other the follower first; each knows both.
    let of_leader = agent_dialing(&lab, "host-l", &[leader, follower])?;
    let of_follower = agent_dialing(&lab, "host-f", &[follower, leader])?;
    lab.spawn_agent(&of_leader)?;
    lab.spawn_agent(&of_follower)?;
    lab.wait_devices_idle("host-l", 1)?;
    lab.wait_devices_idle("host-f", 1)?;
    // The follower logs the relay after the leader has the hello (see below).
    if let Err(e) = lab.followers()[0]
        .process
        .wait_for_stderr("agent host-f (link", Duration::from_secs(5))
    {
        bail!(
            "the follower does not relay host-f: {e}\n{}",
            lab.agents_mut()[1].stderr_text()
        );
    }

    // Jobs run on both agents, to their end: the follower relays the start, the records
    // and the end of its agent's job, and the leader's acknowledgement back.
    let short = lab.write("short.yaml", &numbered_job("short", 5, "0.1"))?;
    let first = [
        submit_on(&lab, leader, &short)?,
        submit_on(&lab, follower, &short)?,
    ];
    let devices = running_together(&lab, leader, first)?;
    ensure!(devices[0] != devices[1], "one device ran both: {devices:?}");
    for id in first {
        let job = lab.wait_state(id, "finished", JOB_LIMIT)?;
        ensure!(job["outcome"] == "passed", "{job}");
        check_numbered(&lab.log(id)?, 5)?;
    }
    lab.wait_devices_idle("host-l", 1)?;
    lab.wait_devices_idle("host-f", 1)?;

    // Two long jobs, one on each agent; the leader dies in the middle of both.
    let lines = 60;
    let long = lab.write("long.yaml", &numbered_job("long", lines, "0.2"))?;
    let second = [
        submit_on(&lab, follower, &long)?,
        submit_on(&lab, leader, &long)?,
    ];
    let devices = running_together(&lab, follower, second)?;
    ensure!(devices[0] != devices[1], "one device ran both: {devices:?}");
    for id in second {
        lab.wait_for_line(id, "line-5")?;
    }
    lab.kill_controller_hard()?;
    lab.followers()[0]
        .process
        .wait_for_stderr("this controller leads now", Duration::from_secs(5))?;
    lab.lead_from(follower)?;
    // Both jobs end once, passed, with every line exactly once: the agent of the dead
    // leader dialled its second address, the survivor's agent said hello to it again.
    for id in second {
        let job = lab.wait_state(id, "finished", JOB_LIMIT)?;
        ensure!(
            job["outcome"] == "passed",
            "job {id} after the takeover: {job}"
        );
        let log = lab.log(id)?;
        check_numbered(&log, lines)?;
    }
    let moved = format!("127.0.0.1:{follower}");
    let of_dead = lab.agents_mut()[0].stderr_text();
    ensure!(
        of_dead
            .lines()
            .any(|l| l.contains("connected to the controller") && l.contains(&moved)),
        "agent host-l did not link to the survivor:\n{of_dead}"
    );
    // Nothing lost or doubled: four jobs, each finished once; both devices idle again.
    let list = lab.json(&["job", "list", "--json"])?;
    let mut ids: Vec<u64> = list
        .as_array()
        .context("job list")?
        .iter()
        .filter_map(|j| j["id"].as_u64())
        .collect();
    ids.sort_unstable();
    let mut all: Vec<u64> = first.iter().chain(&second).copied().collect();
    all.sort_unstable();
    ensure!(ids == all, "jobs after the takeover: {ids:?}");
    lab.wait_devices_idle("host-l", 1)?;
    lab.wait_devices_idle("host-f", 1)?;
    lab.finish()
}

#[test]
fn killing_a_follower_moves_its_agent_to_the_leader_and_its_job_goes_on() -> Result<()> {
    let mut lab = Lab::start_on(DUTLAB, Database::Postgres, &[])?;
    let leader = lab.port();
    let follower = lab.follow()?;
    let config = agent_dialing(&lab, "host-f", &[follower, leader])?;
    lab.spawn_agent(&config)?;
    lab.wait_devices_idle("host-f", 1)?;
    // The follower logs the relay after the leader has the hello, so the device may be
    // idle at the leader a moment before the line is written.
    lab.followers()[0]
        .process
        .wait_for_stderr("agent host-f (link", Duration::from_secs(5))
        .context("the follower does not relay host-f")?;
    let lines = 40;
    let long = lab.write("long.yaml", &numbered_job("long", lines, "0.2"))?;
    let id = submit_on(&lab, follower, &long)?;
    lab.wait_for_line(id, "line-5")?;
    lab.kill_follower_hard(follower)?;
    // The agent dials its next address, the leader; the job ends once, passed, every line
    // stored once although two controllers stored them.
    let job = lab.wait_state(id, "finished", JOB_LIMIT)?;
    ensure!(job["outcome"] == "passed", "{job}");
    check_numbered(&lab.log(id)?, lines)?;
    let agent = lab.agents_mut()[0].stderr_text();
    let moved = format!("127.0.0.1:{leader}");
    ensure!(
        agent
            .lines()
            .any(|l| l.contains("connected to the controller") && l.contains(&moved)),
        "agent host-f did not link to the leader:\n{agent}"
    );
    lab.wait_devices_idle("host-f", 1)?;
    lab.finish()
}

#[test]
fn a_follower_relays_an_agent_link_at_the_wire_and_a_dead_followers_claim_lapses() -> Result<()> {
    use proto::link::ControllerMessage;
    use testkit::sim_agent::{Heard, SimAgent, console_frame};
    // Leases outlive the test: only the lapsed claim can end the dead follower's job.
    let mut lab = Lab::start_on(DUTLAB, Database::Postgres, &["--lease-ttl", "10m"])?;
    let follower = lab.follow()?;
    let known = |token: &str| -> Result<()> {
        wait_until(
            "the token known to the follower",
            Duration::from_secs(10),
            || Ok((whoami_status(follower, token)? == 200).then_some(())),
        )
    };
    let token = lab.token("sim-f", "agent")?;
    let other = lab.token("sim-g", "agent")?;
    known(&token)?;
    known(&other)?;
    // The welcome comes from the leader, through the outbox and the follower.
    let mut sim = SimAgent::open(follower, &token)?;
    sim.hello("sim-f", &["sim-f1"], vec![])?;
    sim.welcome()?;
    let mut intruder = SimAgent::open(follower, &other)?;
    intruder.hello("sim-g", &["sim-g1"], vec![])?;
    intruder.welcome()?;
    let file = lab.write("job.yaml", &inline_job("relayed", "  job: 5m", &["true"]))?;
    // Two jobs at once: one on each device; sim-f's is followed here.
    let first = submit_on(&lab, lab.port(), &file)?;
    let second = submit_on(&lab, lab.port(), &file)?;
    let lease = sim.take_job()?;
    let theirs = intruder.take_job()?;
    ensure!([first, second].contains(&lease.job.0) && lease.job != theirs.job);
    // Records are stored by the follower and acknowledged once committed.
    let texts: Vec<String> = (1..=3).map(|i| format!("line-{i}")).collect();
    sim.frame(&console_frame(lease, 1, &texts))?;
    sim.expect("log-acked", |h| match h {
        Heard::Message(ControllerMessage::LogAcked {
            lease: l, stored, ..
        }) if *l == lease.lease && stored.0 == 3 => Some(()),
        _ => None,
    })?;
    // Another agent's link may not log for sim-f's lease, nor end its job.
    intruder.frame(&console_frame(lease, 4, &["forged".to_owned()]))?;
    intruder.finished(lease.lease, lease.epoch, "forged end", 4)?;
    // The end of the job is acknowledged by the leader, after its commit.
    sim.finish(lease, 3)?;
    let job = lab.wait_state(lease.job.0, "finished", JOB_LIMIT)?;
    ensure!(job["outcome"] == "passed", "{job}");
    let log = lab.log(lease.job.0)?;
    check_numbered(&log, 3)?;
    ensure!(
        !log.iter()
            .any(|r| r["text"].as_str().is_some_and(|t| t.contains("forged"))),
        "a forged record was stored: {log:?}"
    );
    ensure!(lab.job(theirs.job.0)?["state"] == "running");
    // A cancel through the follower reaches the agent as the leader's CancelJob, through
    // the outbox; the agent's end is acknowledged after the leader's commit.
    let next = submit_on(&lab, follower, &file)?;
    let lease = sim.take_job()?;
    ensure!(lease.job.0 == next);
    let canceled = lab.cli_on(follower, lab.admin(), &["job", "cancel", &next.to_string()])?;
    expect_code(&canceled, 0)?;
    sim.expect("cancel-job", |h| match h {
        Heard::Message(ControllerMessage::CancelJob { lease: l, epoch })
            if *l == lease.lease && *epoch == lease.epoch =>
        {
            Some(())
        }
        _ => None,
    })?;
    sim.send(&proto::link::AgentMessage::JobFinished {
        lease: lease.lease,
        epoch: lease.epoch,
        report: testkit::sim_agent::report(proto::Outcome::Canceled, "canceled"),
        last_seq: proto::Seq(0),
    })?;
    sim.expect("finish-acked", |h| match h {
        Heard::Message(ControllerMessage::FinishAcked { lease: l, .. }) if *l == lease.lease => {
            Some(())
        }
        _ => None,
    })?;
    let done = lab.wait_state(next, "finished", JOB_LIMIT)?;
    ensure!(done["outcome"] == "canceled", "{done}");
    // The follower dies with the links it holds; the simulated agents do not dial again.
    // Their claims lapse, the leader counts them disconnected, and their job ends with an
    // infra error after the grace instead of waiting for ever.
    lab.kill_follower_hard(follower)?;
    wait_until("both agents disconnected", JOB_LIMIT, || {
        let agents = lab.json(&["agent", "list", "--json"])?;
        let all = agents.as_array().context("agent list")?;
        Ok((all.len() == 2 && all.iter().all(|a| a["state"] == "disconnected")).then_some(()))
    })?;
    let ended = lab.wait_state(theirs.job.0, "finished", JOB_LIMIT)?;
    ensure!(ended["outcome"] == "infra-error", "{ended}");
    lab.finish()
}

#[test]
fn with_three_controllers_every_relayed_link_says_hello_to_the_new_leader() -> Result<()> {
    use proto::link::AgentMessage;
    use testkit::sim_agent::SimAgent;
    let mut lab = Lab::start_on(DUTLAB, Database::Postgres, &[])?;
    let followers = [lab.follow()?, lab.follow()?];
    let mut sims = Vec::new();
    for (i, port) in followers.iter().enumerate() {
        let name = format!("sim-{i}");
        let token = lab.token(&name, "agent")?;
        wait_until(
            "the token known to the follower",
            Duration::from_secs(10),
            || Ok((whoami_status(*port, &token)? == 200).then_some(())),
        )?;
        let mut sim = SimAgent::open(*port, &token)?;
        sim.hello(&name, &[&format!("{name}-dev")], vec![])?;
        sim.welcome()?;
        sims.push((name, token, sim));
    }
    lab.kill_controller_hard()?;
    let leads = wait_until("a follower leads", Duration::from_secs(10), || {
        Ok(lab
            .followers()
            .iter()
            .find(|f| {
                f.process
                    .stderr_text()
                    .contains("this controller leads now")
            })
            .map(|f| f.port))
    })?;
    lab.lead_from(leads)?;
    // The new leader knows none of the links it did not accept itself: the one it held is
    // closed at its promotion, the other follower's when its agent next speaks. Each agent
    // then says hello again, on the same controller, and is served.
    for ((name, token, sim), port) in sims.iter_mut().zip(followers) {
        sim.send(&AgentMessage::Heartbeat)?;
        let reason = sim.closed_within(Duration::from_secs(60))?;
        ensure!(reason.contains("hello again"), "{name}: closed: {reason}");
        let mut again = SimAgent::open(port, token)?;
        again.hello(name, &[&format!("{name}-dev")], vec![])?;
        again.welcome()?;
        *sim = again;
    }
    wait_until("both agents connected", Duration::from_secs(30), || {
        let agents = lab.json(&["agent", "list", "--json"])?;
        let all = agents.as_array().context("agent list")?;
        Ok((all.len() == 2 && all.iter().all(|a| a["state"] == "connected")).then_some(()))
    })?;
    lab.finish()
}

/// A MultiNode group of two roles on qemu devices, each running `true`.
const PAIR: &str = "job_name: pair
timeouts:
  job: {minutes: 4}
visibility: public
protocols:
  lava-multinode:
    roles:
      server: {device_type: qemu, count: 1}
      client: {device_type: qemu, count: 1}
actions:
- boot:
    role: [server, client]
    method: qemu
    prompts: ['# $']
    auto_login: {login_prompt: 'login:', username: root}
- test:
    role: [server, client]
    definitions:
    - from: inline
      name: t
      path: inline/t.yaml
      repository:
        metadata: {format: Lava-Test Test Definition 1.0, name: t}
        run: {steps: ['true']}
";

#[test]
fn a_follower_shows_a_group_it_forwarded_with_every_sub_job_and_its_outcome() -> Result<()> {
    let mut lab = Lab::start_on(DUTLAB, Database::Postgres, &[])?;
    lab.agent("host-m", 2)?;
    let follower = lab.follow()?;
    let file = lab.write("pair.yaml", PAIR)?;
    // Submitted through the follower; its replica carries the group rows the leader stored.
    let submitted = lab.json_on(
        follower,
        &["job", "submit", &file.display().to_string(), "--json"],
    )?;
    let group = submitted["id"].as_u64().context("group id")?;
    let members = serde_json::json!([
        {"job": group, "role": "client"},
        {"job": group + 1, "role": "server"}
    ]);
    for port in [follower, lab.port()] {
        let shown = job_on(&lab, port, group)?;
        ensure!(shown["group"]["jobs"] == members, "on {port}: {shown}");
        let second = lab.json_on(port, &["job", "show", &format!("{group}.1"), "--json"])?;
        ensure!(
            second["id"] == group + 1 && second["group"]["index"] == 1,
            "on {port}: {second}"
        );
    }
    // Followed to the end on the follower: the group's outcome is its sub-jobs'.
    let followed = lab.cli_on(
        follower,
        lab.admin(),
        &["job", "logs", &group.to_string(), "--follow"],
    )?;
    expect_code(&followed, 0)?;
    for n in 0..2u64 {
        let sub = lab.json_on(
            follower,
            &["job", "show", &format!("{group}.{n}"), "--json"],
        )?;
        ensure!(sub["outcome"] == "passed", "sub-job {n}: {sub}");
    }
    lab.finish()
}

#[test]
fn serve_refuses_an_advertised_address_that_is_not_a_controller_url() -> Result<()> {
    let sandbox = testkit::Sandbox::new()?;
    for bad in [
        "ftp://lab2:7780",
        "http://lab2:7780/api",
        "https://",
        "lab2:7780",
    ] {
        let mut cmd = sandbox.command(DUTLAB)?;
        cmd.args(["serve", "--advertise", bad]);
        let done = testkit::Spawned::start(cmd)?.finish(Duration::from_secs(30))?;
        ensure!(
            done.code() == Some(64)
                && done.stderr.contains("--advertise")
                && done.stderr.contains(bad),
            "{bad}: {:?} {}",
            done.code(),
            done.stderr
        );
    }
    Ok(())
}

/// A job whose kernel and initrd are files beside it (uploaded by `job submit`).
fn job_with_images(lab: &Lab) -> Result<std::path::PathBuf> {
    let image = testkit::guest_image()?;
    let dir = lab.sandbox().path().join("myjob");
    std::fs::create_dir_all(dir.join("images"))?;
    for f in ["vmlinuz", "initramfs.cpio.gz"] {
        std::fs::copy(image.join(f), dir.join("images").join(f))?;
    }
    let deploy = "actions:\n- deploy:\n    to: tmpfs\n    images:\n\
                  \x20     kernel: {url: images/vmlinuz}\n\
                  \x20     initrd: {url: images/initramfs.cpio.gz}\n";
    let job = inline_job("images", "  job: 4m", &["true"]).replacen("actions:\n", deploy, 1);
    let file = dir.join("job.yaml");
    std::fs::write(&file, job)?;
    Ok(file)
}

#[test]
fn an_artifact_uploaded_to_a_follower_is_fetched_by_an_agent_of_the_leader() -> Result<()> {
    let mut lab = Lab::start_on(DUTLAB, Database::Postgres, &[])?;
    let leader = lab.port();
    let follower = lab.follow()?;
    let config = agent_dialing(&lab, "host-l", &[leader])?;
    lab.spawn_agent(&config)?;
    lab.wait_devices_idle("host-l", 1)?;
    let alice = lab.token("alice", "user")?;
    wait_until(
        "alice known to the follower",
        Duration::from_secs(10),
        || Ok((whoami_status(follower, &alice)? == 200).then_some(())),
    )?;
    let job = job_with_images(&lab)?.display().to_string();
    // Uploaded to the follower, run by the leader's agent, which fetches from the leader.
    let done = lab.cli_on(follower, &alice, &["job", "submit", &job, "--follow"])?;
    expect_code(&done, 0)?;
    ensure!(
        done.stderr.matches("dutlab: uploading").count() == 2,
        "{}",
        done.stderr
    );
    let first = lab.json_as(&alice, &["job", "list", "--json"])?[0]["id"]
        .as_u64()
        .context("id")?;
    let log = lab.log_text(first)?;
    ensure!(log.matches(": fetched ").count() == 2, "{log}");
    lab.controller()?
        .wait_for_stderr("copied here from the database", Duration::from_secs(5))
        .context("the leader served the artifacts from the database")?;
    let count = |dir: &std::path::Path| -> Result<usize> {
        Ok(std::fs::read_dir(dir.join("artifacts/sha256"))?.count())
    };
    ensure!(count(lab.data_dir())? == 2, "the leader keeps its copies");
    ensure!(count(&lab.followers()[0].data_dir)? == 2);
    // Through the leader now: both are in the lab already, nothing is uploaded again.
    let again = lab.cli_on(leader, &alice, &["job", "submit", &job, "--follow"])?;
    expect_code(&again, 0)?;
    ensure!(
        !again.stderr.contains("dutlab: uploading")
            && again.stderr.matches("in the lab already").count() == 2,
        "{}",
        again.stderr
    );
    lab.finish()
}

#[test]
fn postgres_restarted_under_two_controllers_the_leader_steps_down_and_nothing_is_lost() -> Result<()>
{
    let (mut lab, leader, follower) = leader_and_follower_with_an_agent_each()?;
    let lines = 80;
    let long = lab.write("long.yaml", &numbered_job("long", lines, "0.25"))?;
    let ids = [
        submit_on(&lab, leader, &long)?,
        submit_on(&lab, follower, &long)?,
    ];
    let devices = running_together(&lab, leader, ids)?;
    ensure!(devices[0] != devices[1], "one device ran both: {devices:?}");
    for id in ids {
        lab.wait_for_line(id, "line-5")?;
    }
    // The server restarts under both: the leader cannot know that nobody took the database
    // meanwhile, so it stops leading and serves again from the database (in the same
    // process, on the same address); the follower waits for the server. Whichever takes
    // the lock first leads, the other follows it.
    lab.postgres().context("postgres")?.stop()?;
    lab.controller()?
        .wait_for_stderr("stepping down", Duration::from_secs(30))
        .context("the leader did not step down")?;
    lab.postgres().context("postgres")?.start_again()?;
    // Both jobs end once, passed, every line stored once: the agents said hello again to
    // whichever controller leads, directly or through the other.
    for id in ids {
        let job = lab.wait_state(id, "finished", JOB_LIMIT)?;
        ensure!(job["outcome"] == "passed", "job {id}: {job}");
        check_numbered(&lab.log(id)?, lines)?;
    }
    // Both controllers still serve: a job submitted through each runs.
    let short = lab.write("short.yaml", &numbered_job("short", 3, "0.1"))?;
    for port in [leader, follower] {
        let id = submit_on(&lab, port, &short)?;
        let job = lab.wait_state(id, "finished", JOB_LIMIT)?;
        ensure!(job["outcome"] == "passed", "through {port}: {job}");
    }
    // Exactly one of them took the lock again: the stepped-down leader at its new start
    // (its second such line), or the follower by promotion.
    let again = lab
        .controller()?
        .stderr_text()
        .matches("took the database's lock at start")
        .count()
        == 2;
    let promoted = lab.followers()[0]
        .process
        .stderr_text()
        .contains("this controller leads now");
    ensure!(
        again != promoted,
        "leads again: {again}, follower promoted: {promoted}"
    );
    lab.finish()
}
