//! System tests of `dutlab run` on a MultiNode job: the real binary runs the whole group,
//! one real QEMU DUT (TCG) per role instance, with its in-process coordinator; secondary
//! connections log in over real OpenSSH to the host role's DUT (dropbear in the guest image).
//!
//! Every test ends by proving that no QEMU of its own survived.

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use testkit::{Finished, Sandbox, Spawned, expect_code, role_test, workspace_root};

const DUTLAB: &str = env!("CARGO_BIN_EXE_dutlab");
/// Generous bound for a group under TCG on a busy 2-core machine.
const RUN_LIMIT: Duration = Duration::from_secs(420);

fn run(sandbox: &Sandbox, args: &[&str]) -> Result<Finished> {
    let mut cmd = sandbox.command(DUTLAB)?;
    cmd.args(args);
    Spawned::start(cmd)?.finish(RUN_LIMIT)
}

fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}

/// `(member name, role, outcome)` of each member of a group's JSON report.
fn members(report: &Value) -> Vec<(String, String, String)> {
    report["members"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    (
                        m["name"].as_str().unwrap_or("").to_owned(),
                        m["role"].as_str().unwrap_or("").to_owned(),
                        m["report"]["outcome"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Names of the passed cases of member `n`.
fn passed(report: &Value, n: usize) -> Vec<String> {
    report["members"][n]["report"]["cases"]
        .as_array()
        .map(|cases| {
            cases
                .iter()
                .filter(|c| c["result"] == "pass")
                .filter_map(|c| c["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A group of `server` (1) and `client` (`clients`) on QEMU, booted to a shell, with tests.
fn group_job(name: &str, clients: u32, server: &[&str], client: &[&str]) -> String {
    format!(
        "job_name: {name}\ntimeouts: {{job: {{minutes: 8}}, action: {{minutes: 6}}, connection: \
         {{minutes: 3}}}}\nprotocols:\n  lava-multinode:\n    roles:\n      server: {{device_type: \
         qemu, count: 1}}\n      client: {{device_type: qemu, count: {clients}}}\nactions:\n\
         - boot:\n    role: [server, client]\n    method: qemu\n    prompts: ['# $']\n    \
         auto_login: {{login_prompt: 'login:', username: root}}\n{}{}",
        role_test("server", server),
        role_test("client", client)
    )
}

#[test]
fn the_example_group_sends_waits_and_syncs_three_ways_with_prefixed_output_and_reports()
-> Result<()> {
    let sb = Sandbox::new()?;
    let junit = sb.path().join("junit.xml");
    let job = workspace_root().join("examples/multinode-pair.yaml");
    let done = run(
        &sb,
        &[
            "run",
            job.to_str().context("path")?,
            "--json",
            "--junit",
            junit.to_str().context("path")?,
        ],
    )?;
    expect_code(&done, 0)?;
    let report: Value = serde_json::from_str(&done.stdout)
        .with_context(|| format!("stdout: {}\nstderr: {}", done.stdout, done.stderr))?;
    ensure!(report["outcome"] == "passed", "{report}");
    ensure!(
        members(&report)
            == vec![
                ("0".into(), "client".into(), "passed".into()),
                ("1".into(), "client".into(), "passed".into()),
                ("2".into(), "server".into(), "passed".into()),
            ],
        "{report}"
    );
    // Each client got the server's data through the coordinator and passed the barrier,
    // which only opens when all three arrived.
    for n in [0, 1] {
        let cases = passed(&report, n);
        for want in [
            "multinode-wait-ready",
            "got-the-port",
            "two-clients",
            "multinode-sync-done",
        ] {
            ensure!(
                cases.iter().any(|c| c == want),
                "member {n}: {want}: {report}"
            );
        }
    }
    let server = passed(&report, 2);
    for want in [
        "i-am-the-server",
        "multinode-send-ready",
        "multinode-sync-done",
    ] {
        ensure!(server.iter().any(|c| c == want), "server: {want}: {report}");
    }
    // With --json the consoles go to stderr, each line behind its member.
    let lines: Vec<&str> = done.stderr.lines().collect();
    for prefix in ["[0 client] ", "[1 client] ", "[2 server] "] {
        ensure!(
            lines
                .iter()
                .any(|l| l.starts_with(prefix) && l.contains("<LAVA_MULTI_NODE>")),
            "no MultiNode call behind {prefix}: {}",
            done.stderr
        );
    }
    ensure!(
        lines
            .iter()
            .filter(|l| l.contains("<LAVA_MULTI_NODE> <LAVA_SEND ready"))
            .all(|l| l.starts_with("[2 server] ")),
        "only the server sends: {}",
        done.stderr
    );
    let xml = std::fs::read_to_string(&junit)?;
    for suite in ["0.client/0_use", "1.client/0_use", "2.server/0_serve"] {
        ensure!(xml.contains(&format!("name=\"{suite}\"")), "{suite}: {xml}");
    }
    sb.assert_no_qemu_left()
}

#[test]
fn an_infra_error_of_one_member_cancels_the_others_and_ends_the_group_with_it() -> Result<()> {
    let sb = Sandbox::new()?;
    // The server's DUT powers itself off (console closed: infra error); the client waits for
    // a message nobody sends, and would wait until its 6-minute action timeout.
    let text = group_job(
        "one fate",
        1,
        &["sleep 2", "poweroff -f"],
        &["lava-wait never-sent"],
    );
    let job = write(sb.path(), "fate.yaml", &text)?;
    let done = run(&sb, &["run", job.to_str().context("path")?, "--json"])?;
    expect_code(&done, 5)?;
    let report: Value = serde_json::from_str(&done.stdout)
        .with_context(|| format!("stdout: {}\nstderr: {}", done.stdout, done.stderr))?;
    ensure!(report["outcome"] == "infra-error", "{report}");
    ensure!(
        members(&report)
            == vec![
                ("0".into(), "client".into(), "canceled".into()),
                ("1".into(), "server".into(), "infra-error".into()),
            ],
        "{report}"
    );
    let reason = report["reason"].as_str().unwrap_or("");
    ensure!(
        reason.starts_with("[1 server] ") && reason.contains("console closed"),
        "{reason}"
    );
    let client_reason = report["members"][0]["report"]["reason"]
        .as_str()
        .unwrap_or("");
    ensure!(
        client_reason.contains("member 1 (server)") && client_reason.contains("infra-error"),
        "{client_reason}"
    );
    ensure!(
        report["duration_s"].as_f64().unwrap_or(f64::MAX) < 300.0,
        "the client was not canceled: {report}"
    );
    sb.assert_no_qemu_left()
}

#[test]
fn a_client_reaches_the_server_at_the_address_it_sent_over_the_groups_own_network() -> Result<()> {
    let sb = Sandbox::new()?;
    let text = group_job(
        "network",
        1,
        &[
            "(echo token-from-the-server | nc -l -p 7000) &",
            "lava-send server ip=$(lava-echo-ipv4 eth1) token=t0k3n",
            "lava-sync done",
        ],
        &[
            "lava-wait server",
            "ip=$(sed -n 's/.*:ip=//p' /tmp/lava_multi_node_cache.txt | cut -d' ' -f1)",
            "lava-test-case on-the-group-net --shell sh -c \"echo $ip | grep -q '^10[.]231[.]0[.]'\"",
            "lava-test-case ping --shell ping -c 1 -W 5 $ip",
            "lava-test-case connect --shell sh -c \"nc $ip 7000 </dev/null | grep -q token-from-the-server\"",
            "lava-test-case token --shell grep -q ':token=t0k3n$' /tmp/lava_multi_node_cache.txt",
            "lava-sync done",
        ],
    );
    let job = write(sb.path(), "network.yaml", &text)?;
    let done = run(&sb, &["run", job.to_str().context("path")?, "--json"])?;
    let shown = format!("stdout: {}\nstderr: {}", done.stdout, done.stderr);
    expect_code(&done, 0).context(shown.clone())?;
    let report: Value = serde_json::from_str(&done.stdout).context(shown.clone())?;
    let cases = passed(&report, 0);
    for want in ["on-the-group-net", "ping", "connect", "token"] {
        ensure!(cases.iter().any(|c| c == want), "{want}: {shown}");
    }
    sb.assert_no_qemu_left()
}

#[test]
fn ctrl_c_cancels_every_member_and_powers_every_dut_off() -> Result<()> {
    let sb = Sandbox::new()?;
    let text = group_job(
        "ctrl-c",
        1,
        &["echo server-waits", "lava-wait never-sent"],
        &["echo client-waits", "lava-wait never-sent"],
    );
    let job = write(sb.path(), "ctrl-c.yaml", &text)?;
    let mut cmd = sb.command(DUTLAB)?;
    cmd.args(["run", job.to_str().context("path")?]);
    let child = Spawned::start(cmd)?;
    child.wait_for_stdout("[1 server] server-waits", RUN_LIMIT)?;
    child.wait_for_stdout("[0 client] client-waits", RUN_LIMIT)?;
    ensure!(
        sb.qemu_processes().len() == 2,
        "two QEMU should run: {:?}",
        sb.qemu_processes()
    );
    child.signal(nix::sys::signal::Signal::SIGINT)?;
    let done = child.finish(Duration::from_secs(60))?;
    expect_code(&done, 3)?;
    ensure!(
        done.stdout.contains("group 'ctrl-c': canceled (2 members)"),
        "{}",
        done.stdout
    );
    sb.assert_no_qemu_left()
}

#[test]
fn secondary_connections_log_in_to_the_host_roles_dut_which_stays_on_until_they_end() -> Result<()>
{
    let sb = Sandbox::new()?;
    let image = testkit::guest_image()?;
    // LAVA's shape (see `testkit::secondary_group_job`), with two guests.
    let text = testkit::secondary_group_job(&image, 2);
    let job = write(sb.path(), "secondary.yaml", &text)?;
    let done = run(&sb, &["run", job.to_str().context("path")?, "--json"])?;
    let shown = format!("stdout: {}\nstderr: {}", done.stdout, done.stderr);
    expect_code(&done, 0).context(shown.clone())?;
    let report: Value = serde_json::from_str(&done.stdout).context(shown.clone())?;
    ensure!(
        members(&report)
            == vec![
                ("0".into(), "guest".into(), "passed".into()),
                ("1".into(), "guest".into(), "passed".into()),
                ("2".into(), "host".into(), "passed".into()),
            ],
        "{report}"
    );
    for n in [0, 1] {
        let cases = passed(&report, n);
        for want in ["own-root", "overlay-copied", "on-the-host-dut"] {
            ensure!(
                cases.iter().any(|c| c == want),
                "guest {n}: {want}: {shown}"
            );
        }
    }
    ensure!(passed(&report, 2).iter().any(|c| c == "keys"), "{shown}");
    // One DUT for the three members: the guests have none of their own.
    ensure!(
        done.stderr.matches("QEMU started").count() == 1,
        "{}",
        done.stderr
    );
    ensure!(
        done.stderr
            .contains("[2 host] waiting for 2 secondary connection(s) to end"),
        "{}",
        done.stderr
    );
    sb.assert_no_qemu_left()
}

#[test]
fn a_guest_whose_host_never_announces_itself_times_out_at_its_roles_timeout() -> Result<()> {
    let sb = Sandbox::new()?;
    let image = testkit::guest_image()?;
    // The host sends nothing; the guest role waits at most 5 s (LAVA's role `timeout`).
    let text = testkit::secondary_group_job(&image, 1)
        .replace(
            "request: lava-start}",
            "request: lava-start, timeout: {seconds: 5}}",
        )
        .replace(
            "\"lava-send ipv4 ipaddr=$(lava-echo-ipv4 eth0)\"",
            "\"true\"",
        )
        .replace("\"lava-send lava_start\"", "\"true\"");
    ensure!(
        text.contains("timeout: {seconds: 5}") && !text.contains("lava-send"),
        "{text}"
    );
    let job = write(sb.path(), "no-start.yaml", &text)?;
    let done = run(&sb, &["run", job.to_str().context("path")?, "--json"])?;
    let shown = format!("stdout: {}\nstderr: {}", done.stdout, done.stderr);
    let report: Value = serde_json::from_str(&done.stdout).context(shown.clone())?;
    ensure!(
        members(&report)
            == vec![
                ("0".into(), "guest".into(), "timed-out".into()),
                ("1".into(), "host".into(), "passed".into()),
            ],
        "{shown}"
    );
    let reason = report["members"][0]["report"]["reason"]
        .as_str()
        .unwrap_or_default();
    ensure!(
        reason.contains("lava-multinode role timeout (5s)") && reason.contains("ipv4"),
        "{reason}"
    );
    sb.assert_no_qemu_left()
}
