//! System tests of several controllers on one PostgreSQL database: a leader (the holder of
//! the database's lock) and followers (`dutlab serve --follow`), real processes, a real agent
//! with a QEMU device, the real CLI against each controller.

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use std::time::Duration;
use testkit::lab::{Database, Lab, check_numbered, numbered_job};
use testkit::{expect_code, inline_job, wait_until};

const DUTLAB: &str = env!("CARGO_BIN_EXE_dutlab");
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
    // An agent linked to the follower is refused with the reason (agents link to the leader).
    let config = lab.agent_config("host-f", 1)?;
    let text = std::fs::read_to_string(&config)?.replace(
        &format!("127.0.0.1:{}", lab.port()),
        &format!("127.0.0.1:{follower}"),
    );
    std::fs::write(&config, text)?;
    let agent = lab.spawn_agent(&config)?;
    agent.wait_for_stderr(
        "follows the leader of its database",
        Duration::from_secs(30),
    )?;
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
