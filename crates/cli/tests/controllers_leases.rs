//! System tests of people's leases with several controllers on one PostgreSQL database:
//! consoles opened through any controller, power, flash, screenshots and Leviathan's routes
//! asked of a follower, all sent where they are done.

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use std::time::Duration;
use testkit::expect_code;

mod two_controllers;

use two_controllers::{
    acquire_on, alice_and_bob_known_to, device_of, http_on, leader_and_follower_with_an_agent_each,
};

#[test]
fn a_console_opens_through_any_controller_and_is_sent_to_the_one_holding_the_agent() -> Result<()> {
    let (lab, leader, follower) = leader_and_follower_with_an_agent_each()?;
    let (alice, bob) = alice_and_bob_known_to(&lab, follower)?;
    // Alice holds both devices, powered (through the leader, which reaches both agents).
    let mut leases = Vec::new();
    for agent in ["host-f", "host-l"] {
        let device = device_of(&lab, agent)?;
        let lease = acquire_on(&lab, leader, &alice, &device)?;
        expect_code(
            &lab.cli_on(leader, &alice, &["power", "on", "--lease", &lease])?,
            0,
        )?;
        leases.push(lease);
    }
    let console = |port: u16, token: &str, lease: &str| {
        lab.cli_on(
            port,
            token,
            &[
                "console",
                "--lease",
                lease,
                "--until",
                "login:",
                "--timeout",
                "4m",
            ],
        )
    };
    // host-f's console through the leader: sent to the follower, which holds its link.
    expect_code(&console(leader, &alice, &leases[0])?, 0)?;
    let sent = format!("sent to http://127.0.0.1:{follower}");
    lab.controller()?
        .wait_for_stderr(&sent, Duration::from_secs(5))
        .context("the leader did not send the console to the follower")?;
    // host-l's console through the follower: sent to the leader.
    expect_code(&console(follower, &alice, &leases[1])?, 0)?;
    lab.followers()[0]
        .process
        .wait_for_stderr(
            &format!("sent to http://127.0.0.1:{leader}"),
            Duration::from_secs(5),
        )
        .context("the follower did not send the console to the leader")?;
    // Each holder serves its own agent's console directly.
    expect_code(&console(follower, &alice, &leases[0])?, 0)?;
    expect_code(&console(leader, &alice, &leases[1])?, 0)?;
    // Someone else is refused where they ask, before any redirect says where the agent is.
    for (port, lease, holder) in [
        (leader, &leases[0], follower),
        (follower, &leases[1], leader),
    ] {
        let refused = console(port, &bob, lease)?;
        expect_code(&refused, 77)?;
        ensure!(
            !refused.stderr.contains(&format!(":{holder}")),
            "bob on {port} learnt where the agent is: {}",
            refused.stderr
        );
    }
    lab.finish()
}

#[test]
fn power_and_flash_asked_of_a_follower_are_sent_to_the_leader_for_either_agent() -> Result<()> {
    let (lab, leader, follower) = leader_and_follower_with_an_agent_each()?;
    let (alice, bob) = alice_and_bob_known_to(&lab, follower)?;
    let image = lab.sandbox().path().join("image.raw");
    std::fs::write(&image, vec![0x5a_u8; 1 << 20])?;
    let image = image.display().to_string();
    let sent = format!("sent to the leader at http://127.0.0.1:{leader}");
    // Alice leases both devices through the follower: host-f's agent is linked to the
    // follower (the leader reaches it through the relay), host-l's to the leader.
    for agent in ["host-f", "host-l"] {
        let device = device_of(&lab, agent)?;
        let lease = acquire_on(&lab, follower, &alice, &device)?;
        let power = |action: &str| -> Result<Value> {
            let done = lab.cli_on(
                follower,
                &alice,
                &["power", action, "--lease", &lease, "--json"],
            )?;
            expect_code(&done, 0)?;
            Ok(serde_json::from_str(&done.stdout)?)
        };
        let off = power("status")?;
        ensure!(
            off["state"] == "off" && off["device"] == device.as_str(),
            "{agent}: {off}"
        );
        let flashed = lab.cli_on(
            follower,
            &alice,
            &["flash", &image, "--lease", &lease, "--json"],
        )?;
        expect_code(&flashed, 0)?;
        let flashed: Value = serde_json::from_str(&flashed.stdout)?;
        ensure!(flashed["bytes"] == 1 << 20, "{agent}: {flashed}");
        ensure!(power("on")?["state"] == "on", "{agent}: not on");
        ensure!(power("status")?["state"] == "on", "{agent}: not on");
        // Bob is refused by the follower, before any redirect says where the leader is.
        let refused = lab.cli_on(follower, &bob, &["power", "off", "--lease", &lease])?;
        expect_code(&refused, 77)?;
        ensure!(
            !refused.stderr.contains(&format!(":{leader}")),
            "bob learnt where the leader is: {}",
            refused.stderr
        );
        ensure!(power("off")?["state"] == "off", "{agent}: not off");
        // Leviathan's routes too: the follower answers 307 to the same path at the leader,
        // where the request is done; bob gets 403 and no address.
        let path = format!("/dut/on?lease={lease}");
        let (status, answer) = http_on(follower, "POST", &path, &alice)?;
        let location = format!("location: http://127.0.0.1:{leader}{path}");
        ensure!(
            status == 307 && answer.to_ascii_lowercase().contains(&location),
            "{agent}: {answer}"
        );
        let (status, answer) = http_on(follower, "POST", &path, &bob)?;
        ensure!(
            status == 403 && !answer.contains(&format!(":{leader}")),
            "{agent}: {answer}"
        );
        let (status, answer) = http_on(leader, "POST", &path, &alice)?;
        ensure!(status == 200 && answer.ends_with("OK"), "{agent}: {answer}");
        ensure!(
            power("status")?["state"] == "on",
            "{agent}: /dut/on did not"
        );
        ensure!(power("off")?["state"] == "off", "{agent}: not off");
    }
    lab.followers()[0]
        .process
        .wait_for_stderr(&sent, Duration::from_secs(5))
        .context("the follower did not send the power request to the leader")?;
    // host-f's agent fetched the image for its flash from the leader, sent there by the
    // follower that holds its link.
    lab.followers()[0]
        .process
        .wait_for_stderr(
            &format!("is fetched from the leader at http://127.0.0.1:{leader}"),
            Duration::from_secs(5),
        )
        .context("the follower did not send host-f's fetch to the leader")?;
    lab.finish()
}
