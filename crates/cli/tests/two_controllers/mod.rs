//! What the system tests of several controllers share (`controllers.rs`,
//! `controllers_leases.rs`): a leader and a follower on one PostgreSQL database with an agent
//! linked to each, agents dialling a list of controllers, raw requests to one controller.
//! Each test binary uses part of it.
#![allow(dead_code)]

use anyhow::{Context, Result};
use serde_json::Value;
use std::time::Duration;
use testkit::lab::{Database, Lab};
use testkit::{expect_code, wait_until};

pub const DUTLAB: &str = env!("CARGO_BIN_EXE_dutlab");

/// The configuration of agent `name` with one QEMU device, dialling the controllers on
/// `ports` in that order.
pub fn agent_dialing(lab: &Lab, name: &str, ports: &[u16]) -> Result<std::path::PathBuf> {
    let config = lab.agent_config(name, 1)?;
    let text = std::fs::read_to_string(&config)?;
    let listed: Vec<String> = ports
        .iter()
        .map(|p| format!("\"http://127.0.0.1:{p}\""))
        .collect();
    let line = text
        .lines()
        .find(|l| l.starts_with("controller:"))
        .context("no controller line in agent.yaml")?;
    let text = text.replace(line, &format!("controller: [{}]", listed.join(", ")));
    std::fs::write(&config, text)?;
    // Tokens made on the leader reach a follower within moments: wait, so the agent's first
    // dial is not refused there for a token it does not know yet.
    let token = std::fs::read_to_string(config.with_file_name("token"))?;
    for port in ports {
        wait_until(
            "the agent's token known to every controller",
            Duration::from_secs(10),
            || Ok((whoami_status(*port, token.trim())? == 200).then_some(())),
        )?;
    }
    Ok(config)
}

/// The status of `GET /api/v1/whoami` with `token` on the controller on `port`.
pub fn whoami_status(port: u16, token: &str) -> Result<u16> {
    Ok(http_on(port, "GET", "/api/v1/whoami", token)?.0)
}

/// One bodiless request to the controller on `port`: the status and the whole answer.
pub fn http_on(port: u16, method: &str, path: &str, token: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut socket = std::net::TcpStream::connect(("127.0.0.1", port))?;
    socket.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        socket,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    socket.read_to_string(&mut answer)?;
    let status = answer.split_whitespace().nth(1).context("no HTTP status")?;
    Ok((status.parse()?, answer))
}

/// The name of the one device of `agent`.
pub fn device_of(lab: &Lab, agent: &str) -> Result<String> {
    let devices = lab.json(&["device", "list", "--json"])?;
    devices
        .as_array()
        .context("device list")?
        .iter()
        .find(|d| d["agent"] == agent)
        .and_then(|d| d["name"].as_str())
        .map(str::to_owned)
        .with_context(|| format!("no device of {agent}: {devices}"))
}

/// A leader and a follower on PostgreSQL, with agent `host-l` (one QEMU device) linked to
/// the leader and `host-f` linked to the follower, each knowing both; answers their ports.
pub fn leader_and_follower_with_an_agent_each() -> Result<(Lab, u16, u16)> {
    let mut lab = Lab::start_on(DUTLAB, Database::Postgres, &[])?;
    let leader = lab.port();
    let follower = lab.follow()?;
    let of_leader = agent_dialing(&lab, "host-l", &[leader, follower])?;
    let of_follower = agent_dialing(&lab, "host-f", &[follower, leader])?;
    lab.spawn_agent(&of_leader)?;
    lab.spawn_agent(&of_follower)?;
    lab.wait_devices_idle("host-l", 1)?;
    lab.wait_devices_idle("host-f", 1)?;
    lab.followers()[0]
        .process
        .wait_for_stderr("agent host-f (link", Duration::from_secs(5))
        .context("the follower does not relay host-f")?;
    Ok((lab, leader, follower))
}

/// Tokens of users alice and bob, once the controller on `port` knows them too.
pub fn alice_and_bob_known_to(lab: &Lab, port: u16) -> Result<(String, String)> {
    let alice = lab.token("alice", "user")?;
    let bob = lab.token("bob", "user")?;
    for token in [&alice, &bob] {
        wait_until(
            "the tokens known to the follower",
            Duration::from_secs(10),
            || Ok((whoami_status(port, token)? == 200).then_some(())),
        )?;
    }
    Ok((alice, bob))
}

/// Acquires `device` as the owner of `token` through the controller on `port` (waiting for
/// it); answers the lease's id.
pub fn acquire_on(lab: &Lab, port: u16, token: &str, device: &str) -> Result<String> {
    let acquired = lab.cli_on(
        port,
        token,
        &["lease", "acquire", "--device", device, "--wait", "--json"],
    )?;
    expect_code(&acquired, 0)?;
    let view: Value = serde_json::from_str(&acquired.stdout)?;
    Ok(view["id"].as_u64().context("lease id")?.to_string())
}
