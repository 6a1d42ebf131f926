//! System tests of agent identity and revocation: a real `dutlab serve`, agents simulated by
//! raw WebSocket clients speaking the link protocol with the `proto` types (the attacker is
//! one of them), and the real CLI as the client. No QEMU: a simulated agent holds the lease.

use anyhow::{Context, Result, ensure};
use proto::link::{AgentMessage, ControllerMessage, HeldLease};
use serde_json::Value;
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;
use testkit::sim_agent::{self, Heard, SimAgent as Sim};
use testkit::{expect_code, inline_job, wait_until};
use tokio_tungstenite::tungstenite::WebSocket;

const DUTLAB: &str = env!("CARGO_BIN_EXE_dutlab");
const LIMIT: Duration = Duration::from_secs(30);
/// What docs/security.md promises for revocation.
const REVOKE_DEADLINE: Duration = Duration::from_secs(1);

/// The shared lab with this file's helpers.
struct Lab(testkit::lab::Lab);

impl std::ops::Deref for Lab {
    type Target = testkit::lab::Lab;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Lab {
    fn start() -> Result<Lab> {
        Ok(Lab(testkit::lab::Lab::start(DUTLAB)?))
    }

    fn token_id(&self, name: &str) -> Result<String> {
        let list = self.json(&["token", "list", "--json"])?;
        list.as_array()
            .and_then(|l| l.iter().find(|t| t["name"] == name))
            .and_then(|t| t["id"].as_str())
            .map(str::to_owned)
            .with_context(|| format!("no token named {name} in {list}"))
    }

    fn submit_named(&self, token: &str, name: &str) -> Result<u64> {
        let path: PathBuf = self.sandbox().path().join(format!("{name}.yaml"));
        std::fs::write(&path, inline_job(name, "  job: {minutes: 5}", &["true"]))?;
        let done = self.cli_as(
            token,
            &["job", "submit", &path.display().to_string(), "--json"],
        )?;
        expect_code(&done, 0)?;
        let view: Value = serde_json::from_str(&done.stdout)?;
        view["id"].as_u64().context("job id")
    }

    /// The stored log as the CLI's JSON lines.
    fn log_json(&self, id: u64) -> Result<String> {
        let done = self.cli(&["job", "logs", &id.to_string(), "--json"])?;
        expect_code(&done, 0)?;
        Ok(done.stdout)
    }

    fn socket(&self, path: &str, token: &str) -> Result<WebSocket<TcpStream>> {
        sim_agent::socket(self.port(), path, token)
    }
}

#[test]
fn a_second_agent_token_cannot_forge_results_or_inject_log_lines() -> Result<()> {
    let lab = Lab::start()?;
    let user = lab.token("alice", "user")?;
    let mut victim = Sim::open(lab.port(), &lab.token("victim", "agent")?)?;
    victim.hello("victim", &["victim-q1"], vec![])?;
    victim.welcome()?;
    let mut mallory = Sim::open(lab.port(), &lab.token("mallory", "agent")?)?;
    mallory.hello("mallory", &[], vec![])?;
    mallory.welcome()?;
    let job = lab.submit_named(&user, "victim-job")?;
    let (lease, epoch, granted) = victim.start_job()?;
    ensure!(granted.0 == job);
    victim.send(&AgentMessage::JobStarted { lease, epoch })?;
    victim.log(lease, epoch, 1, "genuine line 1")?;
    victim.expect("log ack", |h| {
        matches!(h, Heard::Message(ControllerMessage::LogAcked { .. })).then_some(())
    })?;
    // Even knowing the lease id and epoch, the attacker's link does not hold the lease.
    mallory.log(lease, epoch, 2, "FORGED line")?;
    mallory.finished(lease, epoch, "FORGED result", 2)?;
    mallory.send(&AgentMessage::StartRefused {
        lease,
        epoch,
        reason: "FORGED refusal".into(),
    })?;
    lab.controller()?
        .wait_for_stderr("log frame refused", LIMIT)?;
    lab.controller()?
        .wait_for_stderr("job-finished refused", LIMIT)?;
    let stderr = lab.controller()?.stderr_text();
    for needle in ["log frame refused", "job-finished refused"] {
        let line = stderr
            .lines()
            .find(|l| l.contains(needle))
            .context("warn line")?;
        ensure!(
            line.contains("WARN")
                && line.contains("mallory")
                && line.contains("not held by this link"),
            "{line}"
        );
    }
    ensure!(lab.job(job)?["state"] == "running", "{}", lab.job(job)?);
    // The real agent goes on and finishes; the stored log and report are its own.
    victim.log(lease, epoch, 2, "genuine line 2")?;
    victim.finished(lease, epoch, "", 2)?;
    victim.expect("finish ack", |h| {
        matches!(h, Heard::Message(ControllerMessage::FinishAcked { .. })).then_some(())
    })?;
    let view = wait_until("job finished", LIMIT, || {
        let view = lab.job(job)?;
        Ok((view["state"] == "finished").then_some(view))
    })?;
    ensure!(view["outcome"] == "passed", "{view}");
    let log = lab.log_json(job)?;
    ensure!(
        log.contains("genuine line 1") && log.contains("genuine line 2") && !log.contains("FORGED"),
        "{log}"
    );
    let results = lab.json(&["job", "results", &job.to_string(), "--json"])?;
    ensure!(!results.to_string().contains("FORGED"), "{results}");
    Ok(())
}

#[test]
fn a_token_speaks_only_for_its_own_agent_and_devices() -> Result<()> {
    let lab = Lab::start()?;
    let victim_token = lab.token("victim", "agent")?;
    let mallory_token = lab.token("mallory", "agent")?;
    let mut victim = Sim::open(lab.port(), &victim_token)?;
    victim.hello("victim", &["victim-q1"], vec![])?;
    victim.welcome()?;
    // Another agent's name.
    let mut mallory = Sim::open(lab.port(), &mallory_token)?;
    mallory.hello("victim", &["victim-q1"], vec![])?;
    let reason = mallory.refused()?;
    ensure!(reason.contains("bound to agent \"mallory\""), "{reason}");
    lab.controller()?
        .wait_for_stderr("said hello as \"victim\"", LIMIT)?;
    ensure!(
        lab.controller()?
            .stderr_text()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("said hello as \"victim\"")),
        "refusal not logged at warn"
    );
    // Its own name, another agent's device: refused, whether that agent is connected or not.
    for round in ["connected", "disconnected"] {
        let mut mallory = Sim::open(lab.port(), &mallory_token)?;
        mallory.hello("mallory", &["victim-q1"], vec![])?;
        let reason = mallory.refused()?;
        ensure!(
            reason.contains("registered by agent \"victim\""),
            "{round}: {reason}"
        );
        if round == "connected" {
            victim.close()?;
            let agents = || -> Result<Option<()>> {
                let list = lab.json(&["agent", "list", "--json"])?;
                Ok(list
                    .as_array()
                    .is_some_and(|l| {
                        l.iter()
                            .any(|a| a["name"] == "victim" && a["state"] == "disconnected")
                    })
                    .then_some(()))
            };
            wait_until("victim disconnected", LIMIT, agents)?;
        }
    }
    let devices = lab.json(&["device", "list", "--json"])?;
    let owner = devices
        .as_array()
        .and_then(|l| l.iter().find(|d| d["name"] == "victim-q1"))
        .map(|d| d["agent"].clone());
    ensure!(owner == Some(Value::from("victim")), "{devices}");
    // An agent token bound to another name than its display name.
    let done = lab.cli_as(
        lab.admin(),
        &[
            "token", "create", "--name", "rack 3", "--role", "agent", "--agent", "rack-3",
        ],
    )?;
    expect_code(&done, 0)?;
    let mut rack = Sim::open(lab.port(), done.stdout.trim())?;
    rack.hello("rack-3", &["rack-3-q1"], vec![])?;
    rack.welcome()?;
    let done = lab.cli_as(
        lab.admin(),
        &[
            "token", "create", "--name", "u", "--role", "user", "--agent", "x",
        ],
    )?;
    ensure!(
        !done.status.success(),
        "a user token bound to an agent: {}",
        done.stdout
    );
    Ok(())
}

#[test]
fn lease_ids_are_128_bits_and_not_a_counter() -> Result<()> {
    let lab = Lab::start()?;
    let user = lab.token("alice", "user")?;
    let mut agent = Sim::open(lab.port(), &lab.token("rig", "agent")?)?;
    agent.hello("rig", &["rig-q1", "rig-q2"], vec![])?;
    agent.welcome()?;
    lab.submit_named(&user, "one")?;
    lab.submit_named(&user, "two")?;
    let (a, _, _) = agent.start_job()?;
    let (b, _, _) = agent.start_job()?;
    ensure!(a != b);
    // Random 128-bit ids: both use their upper half, and they are far apart.
    ensure!(a.0 >> 64 != 0 && b.0 >> 64 != 0, "{a} {b}");
    ensure!(a.0.abs_diff(b.0) > u128::from(u64::MAX), "{a} {b}");
    Ok(())
}

#[test]
fn a_newer_connection_of_an_agent_closes_the_older_and_takes_its_leases() -> Result<()> {
    let lab = Lab::start()?;
    let user = lab.token("alice", "user")?;
    let token = lab.token("rig", "agent")?;
    let mut old = Sim::open(lab.port(), &token)?;
    old.hello("rig", &["rig-q1"], vec![])?;
    old.welcome()?;
    let job = lab.submit_named(&user, "moving")?;
    let (lease, epoch, granted) = old.start_job()?;
    old.send(&AgentMessage::JobStarted { lease, epoch })?;
    let mut new = Sim::open(lab.port(), &token)?;
    new.hello(
        "rig",
        &["rig-q1"],
        vec![HeldLease {
            lease,
            epoch,
            job: granted,
            device: "rig-q1".into(),
            report: None,
        }],
    )?;
    let resume = new.welcome()?;
    ensure!(resume.iter().any(|c| c.lease == lease), "{resume:?}");
    let reason = old.closed_within(LIMIT)?;
    ensure!(
        reason.contains("replaced by a newer connection"),
        "{reason:?}"
    );
    new.log(lease, epoch, 1, "from the new link")?;
    new.finished(lease, epoch, "", 1)?;
    new.expect("finish ack", |h| {
        matches!(h, Heard::Message(ControllerMessage::FinishAcked { .. })).then_some(())
    })?;
    let view = lab.job(job)?;
    ensure!(view["outcome"] == "passed", "{view}");
    ensure!(lab.log_json(job)?.contains("from the new link"));
    Ok(())
}

#[test]
fn revoking_a_token_closes_its_agent_link_and_follow_streams() -> Result<()> {
    let lab = Lab::start()?;
    let user = lab.token("alice", "user")?;
    let other = lab.token("bob", "user")?;
    let mut agent = Sim::open(lab.port(), &lab.token("rig", "agent")?)?;
    agent.hello("rig", &["rig-q1"], vec![])?;
    agent.welcome()?;
    let job = lab.submit_named(&user, "followed")?;
    agent.start_job()?;
    let path = format!("/api/v1/jobs/{job}/logs/follow");
    let mut follower = Sim::from_socket(lab.socket(&path, &user)?);
    let mut bystander = Sim::from_socket(lab.socket(&path, &other)?);
    for ws in [&mut follower, &mut bystander] {
        // The follow stream answers with the job first: it is open.
        let first = ws.expect("the job", |h| match h {
            Heard::Text(t) => Some(t.clone()),
            _ => None,
        })?;
        ensure!(first.contains("followed"), "{first}");
    }
    for name in ["rig", "alice"] {
        let id = lab.token_id(name)?;
        expect_code(&lab.cli_as(lab.admin(), &["token", "revoke", &id])?, 0)?;
    }
    let reason = agent.closed_within(REVOKE_DEADLINE)?;
    ensure!(reason.contains("revoked"), "{reason:?}");
    let reason = follower.closed_within(REVOKE_DEADLINE)?;
    ensure!(reason.contains("revoked"), "{reason:?}");
    // Another token's stream stays open.
    ensure!(
        bystander.closed_within(Duration::from_millis(300)).is_err(),
        "bob's follow stream was closed"
    );
    Ok(())
}
