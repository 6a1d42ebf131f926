//! MultiNode groups in the lab: a real `dutlab serve`, the real CLI, and simulated agents
//! at the wire (`testkit::sim_agent`), so scheduling is tested without QEMU.
//!
//! A group waits until every sub-job has a device and then starts all of them; while it
//! waits it holds nothing (a single job takes the free device); `job show ID` shows every
//! sub-job and `ID.N` one; the group's outcome is its worst sub-job's; a cancel of the group
//! mid-run reaches every sub-job's agent and releases every lease; an infra error of one
//! sub-job cancels the others; LAVA's `scheduler.jobs.submit` answers the `ID.N` list.

use anyhow::{Context, Result, ensure};
use proto::link::{AgentMessage, ControllerMessage, SubJob};
use serde_json::Value;
use std::time::Duration;
use testkit::lab::Lab;
use testkit::sim_agent::{self, Heard, SimAgent, SimLease};
use testkit::{inline_job, wait_until};

const DUTLAB: &str = env!("CARGO_BIN_EXE_dutlab");
const LIMIT: Duration = Duration::from_secs(30);

/// Two roles of one instance each on qemu devices: `client` is sub-job 0, `server` 1 (roles
/// in name order).
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
- boot: {role: [server, client], method: qemu, prompts: ['# $']}
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

/// Waits for `StartJob`, answers `JobStarted`: the lease and the sub-job it names.
fn started(sim: &mut SimAgent) -> Result<(SimLease, Option<SubJob>)> {
    let (lease, sub) = sim.expect("start-job", |h| match h {
        Heard::Message(ControllerMessage::StartJob {
            lease,
            epoch,
            job,
            sub_job,
            ..
        }) => Some((
            SimLease {
                lease: *lease,
                epoch: *epoch,
                job: *job,
            },
            sub_job.clone(),
        )),
        _ => None,
    })?;
    sim.send(&AgentMessage::JobStarted {
        lease: lease.lease,
        epoch: lease.epoch,
    })?;
    Ok((lease, sub))
}

fn report(sim: &mut SimAgent, lease: SimLease, outcome: proto::Outcome) -> Result<()> {
    sim.send(&AgentMessage::JobFinished {
        lease: lease.lease,
        epoch: lease.epoch,
        report: sim_agent::report(outcome, "as the test says"),
        last_seq: proto::Seq(0),
    })
}

fn submit(lab: &Lab, token: &str, name: &str, text: &str) -> Result<(u64, String)> {
    let file = lab.write(name, text)?;
    let out = lab.cli_as(token, &["job", "submit", file.to_str().context("path")?])?;
    ensure!(out.status.code() == Some(0), "submit: {out:?}");
    let id = out.stdout.trim().parse().context("a job id on stdout")?;
    Ok((id, out.stderr))
}

#[test]
fn a_group_waits_for_all_its_devices_holds_none_meanwhile_and_shows_its_sub_jobs() -> Result<()> {
    let lab = Lab::start_with(DUTLAB, &["--heartbeat", "60s"])?;
    let alice = lab.token("alice", "user")?;
    let mut sim = SimAgent::open(lab.port(), &lab.token("sim", "agent")?)?;
    sim.hello("sim", &["sim-q1", "sim-q2"], vec![])?;
    sim.welcome()?;
    let single = inline_job("single", "  job: 4m", &["true"]);
    // A single job holds one device.
    let (first, _) = submit(&lab, &alice, "first.yaml", &single)?;
    let (first_lease, sub) = started(&mut sim)?;
    ensure!(first_lease.job.0 == first && sub.is_none());
    // The group needs both devices: it waits, holding nothing.
    let (group, stderr) = submit(&lab, &alice, "pair.yaml", PAIR)?;
    ensure!(
        stderr.contains(&format!("sub-job {group}.0 (role client) is job {group}"))
            && stderr.contains(&format!(
                "sub-job {group}.1 (role server) is job {}",
                group + 1
            )),
        "{stderr}"
    );
    let shown = lab.json_as(&alice, &["job", "show", &group.to_string(), "--json"])?;
    ensure!(
        shown["group"]["jobs"]
            == serde_json::json!([{"job": group, "role": "client"}, {"job": group + 1, "role": "server"}]),
        "{shown}"
    );
    for n in 0..2u64 {
        let s = lab.json_as(&alice, &["job", "show", &format!("{group}.{n}"), "--json"])?;
        ensure!(s["state"] == "queued" && s["position"] == 0, "{s}");
        ensure!(s["group"]["id"] == group && s["group"]["index"] == n, "{s}");
    }
    // A single job submitted after the group takes the free device.
    let (second, _) = submit(&lab, &alice, "second.yaml", &single)?;
    let (second_lease, _) = started(&mut sim)?;
    ensure!(
        second_lease.job.0 == second,
        "job {} started",
        second_lease.job.0
    );
    // One device frees: not enough for the group.
    sim.finish(first_lease, 0)?;
    lab.wait_state(first, "finished", LIMIT)?;
    for id in [group, group + 1] {
        ensure!(
            lab.job(id)?["state"] == "queued",
            "{id} started with one device"
        );
    }
    // Both free: both sub-jobs start, each told its role instance.
    // (Not `finish`: it skips what comes before the ack, and the StartJobs do.)
    report(&mut sim, second_lease, proto::Outcome::Passed)?;
    let mut leases = Vec::new();
    for _ in 0..2 {
        let (lease, sub) = started(&mut sim)?;
        let sub = sub.context("a sub-job's StartJob names its instance")?;
        ensure!(sub.group.0 == group && lease.job.0 == group + u64::from(sub.index));
        ensure!(sub.role == ["client", "server"][sub.index as usize]);
        leases.push((sub.index, lease));
    }
    leases.sort_by_key(|(i, _)| *i);
    lab.wait_state(group + 1, "running", LIMIT)?;
    // `ID.1` is the server's sub-job; a sub-job that does not exist is an error.
    let one = lab.cli_as(&alice, &["job", "show", &format!("{group}.1")])?;
    ensure!(one.status.code() == Some(0), "{one:?}");
    ensure!(
        one.stdout.lines().any(|l| l.starts_with("sub-job:")
            && l.contains(&format!("{group}.1 (role server); group {group}"))),
        "{}",
        one.stdout
    );
    let none = lab.cli_as(&alice, &["job", "show", &format!("{group}.2")])?;
    ensure!(none.status.code() != Some(0), "{none:?}");
    // The group's outcome is the worst: one passes, one fails.
    report(&mut sim, leases[0].1, proto::Outcome::Passed)?;
    report(&mut sim, leases[1].1, proto::Outcome::Failed)?;
    lab.wait_state(group + 1, "finished", LIMIT)?;
    lab.wait_state(group, "finished", LIMIT)?;
    let text = lab.cli_as(&alice, &["job", "show", &group.to_string()])?;
    ensure!(
        text.stdout
            .starts_with(&format!("group {group}: 2 sub-jobs, outcome failed")),
        "{}",
        text.stdout
    );
    ensure!(
        text.stdout
            .contains(&format!("sub-job {group}.0 (role client, job {group})")),
        "{}",
        text.stdout
    );
    let results = lab.cli_as(&alice, &["job", "results", &format!("{group}.1")])?;
    ensure!(
        results.status.code() == Some(1),
        "the failed sub-job's exit code: {results:?}"
    );
    Ok(())
}

#[test]
fn canceling_a_group_mid_run_ends_every_sub_job_and_an_infra_error_ends_the_rest() -> Result<()> {
    let lab = Lab::start_with(DUTLAB, &["--heartbeat", "60s"])?;
    let alice = lab.token("alice", "user")?;
    let bob = lab.token("bob", "user")?;
    let mut sim = SimAgent::open(lab.port(), &lab.token("sim", "agent")?)?;
    sim.hello("sim", &["sim-q1", "sim-q2"], vec![])?;
    sim.welcome()?;
    let (group, _) = submit(&lab, &alice, "pair.yaml", PAIR)?;
    let mut leases = vec![started(&mut sim)?.0, started(&mut sim)?.0];
    lab.wait_state(group, "running", LIMIT)?;
    lab.wait_state(group + 1, "running", LIMIT)?;
    // Another user may not cancel it (the policy decides for the group as for a job).
    let denied = lab.cli_as(&bob, &["job", "cancel", &format!("{group}.1")])?;
    ensure!(denied.status.code() != Some(0), "{denied:?}");
    // The owner cancels sub-job 1 by name: every sub-job's agent is told.
    let out = lab.cli_as(&alice, &["job", "cancel", &format!("{group}.1")])?;
    ensure!(out.status.code() == Some(0), "{out:?}");
    let mut told = Vec::new();
    for _ in 0..2 {
        told.push(sim.expect("cancel-job", |h| match h {
            Heard::Message(ControllerMessage::CancelJob { lease, .. }) => Some(*lease),
            _ => None,
        })?);
    }
    told.sort();
    let mut held: Vec<proto::LeaseId> = leases.iter().map(|l| l.lease).collect();
    held.sort();
    ensure!(told == held, "cancel sent for {told:?}, leases {held:?}");
    for lease in leases.drain(..) {
        report(&mut sim, lease, proto::Outcome::Canceled)?;
    }
    for id in [group, group + 1] {
        let view = lab.wait_state(id, "finished", LIMIT)?;
        ensure!(view["outcome"] == "canceled", "{view}");
    }
    wait_until("every lease released", LIMIT, || {
        let devices = lab.json(&["device", "list", "--json"])?;
        let idle = devices
            .as_array()
            .context("devices")?
            .iter()
            .filter(|d| d["state"] == "idle")
            .count();
        Ok((idle == 2).then_some(()))
    })?;
    // An infra error of one sub-job cancels the other.
    let (again, _) = submit(&lab, &alice, "pair.yaml", PAIR)?;
    let a = started(&mut sim)?.0;
    let b = started(&mut sim)?.0;
    report(&mut sim, a, proto::Outcome::InfraError)?;
    let canceled = sim.expect("cancel-job", |h| match h {
        Heard::Message(ControllerMessage::CancelJob { lease, .. }) => Some(*lease),
        _ => None,
    })?;
    ensure!(canceled == b.lease);
    report(&mut sim, b, proto::Outcome::Canceled)?;
    let other = if a.job.0 == again { again + 1 } else { again };
    let view = lab.wait_state(other, "finished", LIMIT)?;
    ensure!(view["outcome"] == "canceled", "{view}");
    let text = lab.cli_as(&alice, &["job", "show", &again.to_string()])?;
    ensure!(
        text.stdout
            .starts_with(&format!("group {again}: 2 sub-jobs, outcome infra-error")),
        "{}",
        text.stdout
    );
    Ok(())
}

#[test]
fn a_group_naming_a_device_type_the_lab_lacks_is_refused_naming_the_role() -> Result<()> {
    let lab = Lab::start_with(DUTLAB, &["--heartbeat", "60s"])?;
    let alice = lab.token("alice", "user")?;
    let mut sim = SimAgent::open(lab.port(), &lab.token("sim", "agent")?)?;
    sim.hello("sim", &["sim-q1"], vec![])?;
    sim.welcome()?;
    let text = PAIR.replace(
        "server: {device_type: qemu",
        "server: {device_type: qemu-aarch64",
    );
    let file = lab.write("odd.yaml", &text)?;
    let out = lab.cli_as(&alice, &["job", "submit", file.to_str().context("path")?])?;
    ensure!(out.status.code() == Some(4), "{out:?}");
    ensure!(
        out.stderr.contains("roles.server.device_type")
            && out.stderr.contains("no device of type \"qemu-aarch64\""),
        "{}",
        out.stderr
    );
    let jobs: Value = lab.json_as(&alice, &["job", "list", "--json"])?;
    ensure!(jobs.as_array().is_some_and(Vec::is_empty), "{jobs}");
    Ok(())
}

/// A test action for one role: prints a marker and passes one case.
fn role_test(role: &str) -> String {
    format!(
        "- test:
    role: [{role}]
    definitions:
    - from: inline
      name: {role}
      path: inline/{role}.yaml
      repository:
        metadata: {{format: Lava-Test Test Definition 1.0, name: {role}}}
        run:
          steps:
          - echo i-am-$((1+1))-{role}
          - lava-test-case {role}-ran --result pass
"
    )
}

#[test]
fn a_group_runs_each_role_instance_on_its_own_qemu_device_and_follows_them_by_role() -> Result<()> {
    let mut lab = Lab::start(DUTLAB)?;
    lab.agent("host-m", 2)?;
    let text = format!(
        "job_name: roles
timeouts:
  job: {{minutes: 4}}
visibility: public
protocols:
  lava-multinode:
    roles:
      server: {{device_type: qemu, count: 1}}
      client: {{device_type: qemu, count: 1}}
actions:
- boot:
    role: [server, client]
    method: qemu
    prompts: ['# $']
    auto_login: {{login_prompt: 'login:', username: root}}
{}{}",
        role_test("server"),
        role_test("client")
    );
    let file = lab.write("roles.yaml", &text)?;
    let done = lab.cli(&["job", "submit", file.to_str().context("path")?, "--follow"])?;
    testkit::expect_code(&done, 0)?;
    let group = submitted_group(&done)?;
    // Each role's lines come prefixed by its sub-job and role, and each ran only its own test.
    let client = format!("[{group}.0 client] ");
    let server = format!("[{group}.1 server] ");
    let lines: Vec<&str> = done.stdout.lines().collect();
    ensure!(
        lines
            .iter()
            .any(|l| l.starts_with(&client) && l.contains("i-am-2-client")),
        "{}",
        done.stdout
    );
    ensure!(
        lines
            .iter()
            .any(|l| l.starts_with(&server) && l.contains("i-am-2-server")),
        "{}",
        done.stdout
    );
    ensure!(
        !lines
            .iter()
            .any(|l| l.starts_with(&server) && l.contains("i-am-2-client")),
        "the server ran the client's test:\n{}",
        done.stdout
    );
    ensure!(
        done.stdout
            .contains(&format!("group {group}: 2 sub-jobs, outcome passed")),
        "{}",
        done.stdout
    );
    let results = lab.json(&["job", "results", &format!("{group}.1"), "--json"])?;
    let cases = results["report"]["cases"].as_array().context("cases")?;
    ensure!(
        cases.iter().any(|c| c["name"] == "server-ran")
            && !cases.iter().any(|c| c["name"] == "client-ran"),
        "{results}"
    );
    lab.wait_devices_idle("host-m", 2)?;
    lab.finish()
}

/// The group id `dutlab job submit` said on stderr.
fn submitted_group(done: &testkit::Finished) -> Result<u64> {
    Ok(done
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("dutlab: submitted group "))
        .and_then(|l| l.split_whitespace().next())
        .context("the group's id")?
        .parse()?)
}

/// A call of `lease`'s sub-job, as the agent's main loop sends it.
fn call(sim: &mut SimAgent, lease: SimLease, seq: u64, line: &str) -> Result<()> {
    let call = multinode::parse_call(format!("<LAVA_MULTI_NODE> <LAVA_{line}>").as_bytes())
        .context("a multinode line")?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    sim.send(&AgentMessage::MultinodeCall {
        lease: lease.lease,
        epoch: lease.epoch,
        seq,
        call,
    })
}

/// The next `MultinodeReply`: its lease, seq and the console line it types.
fn reply(sim: &mut SimAgent) -> Result<(proto::LeaseId, u64, Option<String>)> {
    sim.expect("multinode-reply", |h| match h {
        Heard::Message(ControllerMessage::MultinodeReply {
            lease, seq, reply, ..
        }) => Some((*lease, *seq, reply.console_line())),
        _ => None,
    })
}

#[test]
fn the_controllers_coordinator_answers_each_member_as_named_by_its_lease() -> Result<()> {
    let lab = Lab::start_with(DUTLAB, &["--heartbeat", "60s"])?;
    let alice = lab.token("alice", "user")?;
    // Each sub-job on its own agent: the reply crosses from one agent's link to the other's.
    let mut one = SimAgent::open(lab.port(), &lab.token("sim-a", "agent")?)?;
    one.hello("sim-a", &["sim-a1"], vec![])?;
    one.welcome()?;
    let mut two = SimAgent::open(lab.port(), &lab.token("sim-b", "agent")?)?;
    two.hello("sim-b", &["sim-b1"], vec![])?;
    two.welcome()?;
    let (group, _) = submit(&lab, &alice, "pair.yaml", PAIR)?;
    let (a, sub_a) = started(&mut one)?;
    let (b, sub_b) = started(&mut two)?;
    let (a_index, b_index) = (
        sub_a.context("a sub-job")?.index,
        sub_b.context("a sub-job")?.index,
    );
    // A waits; nothing is due yet.
    call(&mut one, a, 1, "WAIT ready")?;
    // An agent cannot call as a member it does not run: B's link sending for A's lease is
    // refused, so A's wait stays blocked and nobody hears a reply for it.
    call(&mut two, a, 7, "SEND ready forged=1")?;
    // B sends: its own reply (Sent) and A's wait come due, with B's name as the sender.
    call(&mut two, b, 1, "SEND ready port=8080")?;
    let (lease, seq, line) = reply(&mut two)?;
    ensure!(
        lease == b.lease && seq == 1 && line.is_none(),
        "{lease} {seq} {line:?}"
    );
    let (lease, seq, line) = reply(&mut one)?;
    let want = format!("<LAVA_WAIT_COMPLETE {group}.{b_index}:port=8080>");
    ensure!(
        lease == a.lease && seq == 1 && line.as_deref() == Some(want.as_str()),
        "{lease} {seq} {line:?}, wanted {want}"
    );
    // A repeated call (an agent resending after a reconnect) gets the same answer again.
    call(&mut one, a, 1, "WAIT ready")?;
    let (_, seq, again) = reply(&mut one)?;
    ensure!(seq == 1 && again == line, "{again:?}");
    // A barrier opens only when both members arrived.
    call(&mut one, a, 2, "SYNC done")?;
    let early = one.next(Duration::from_millis(500));
    ensure!(
        !matches!(
            early,
            Ok(Heard::Message(ControllerMessage::MultinodeReply { .. }))
        ),
        "the barrier opened with one member: {early:?}"
    );
    call(&mut two, b, 2, "SYNC done")?;
    for sim in [&mut one, &mut two] {
        let (_, seq, line) = reply(sim)?;
        ensure!(
            seq == 2 && line.as_deref() == Some("<LAVA_SYNC_COMPLETE>"),
            "{line:?}"
        );
    }
    ensure!(a_index != b_index);
    for (sim, lease) in [(&mut one, a), (&mut two, b)] {
        report(sim, lease, proto::Outcome::Passed)?;
    }
    for id in [group, group + 1] {
        let view = lab.wait_state(id, "finished", LIMIT)?;
        ensure!(view["outcome"] == "passed", "{view}");
    }
    Ok(())
}

/// Runs a test once per database: `name::sqlite` and `name::postgres`.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() -> anyhow::Result<()> {
                super::$name(testkit::lab::Database::Sqlite)
            }
            #[test]
            fn postgres() -> anyhow::Result<()> {
                super::$name(testkit::lab::Database::Postgres)
            }
        }
    )*};
}

on_both!(a_group_on_qemu_talks_through_the_coordinator_and_a_controller_restart_loses_no_message);

fn a_group_on_qemu_talks_through_the_coordinator_and_a_controller_restart_loses_no_message(
    database: testkit::lab::Database,
) -> Result<()> {
    let mut lab = Lab::start_on(DUTLAB, database, &[])?;
    lab.agent("host-n", 2)?;
    // The server listens on the group network, sends its address there and waits at the
    // barrier; the client sleeps while the controller is killed and restarted, then waits
    // for the message: it must have survived the restart, and so must the server's place at
    // the barrier. Then the client reaches the server's DUT over the group network (both
    // DUTs on one agent).
    let text = format!(
        "job_name: restart\ntimeouts: {{job: {{minutes: 8}}, action: {{minutes: 6}}, connection: {{minutes: 3}}}}\n\
         visibility: public\nprotocols:\n  lava-multinode:\n    roles:\n      \
         server: {{device_type: qemu, count: 1}}\n      client: {{device_type: qemu, count: 1}}\n\
         actions:\n- boot:\n    role: [server, client]\n    method: qemu\n    prompts: ['# $']\n    \
         auto_login: {{login_prompt: 'login:', username: root}}\n{}{}",
        testkit::role_test(
            "server",
            &[
                "(echo token-over-the-group-net | nc -l -p 7000) &",
                "lava-send ready port=8080 ip=$(lava-echo-ipv4 eth1)",
                "echo server-has-sent",
                "lava-sync done",
            ]
        ),
        testkit::role_test(
            "client",
            &[
                "echo client-sleeps",
                "sleep 20",
                "lava-wait ready",
                "lava-test-case from-the-server --shell grep -q \"^$(lava-group server):port=8080$\" /tmp/lava_multi_node_cache.txt",
                "ip=$(sed -n 's/.*:ip=//p' /tmp/lava_multi_node_cache.txt)",
                "lava-test-case over-the-group-net --shell sh -c \"nc $ip 7000 </dev/null | grep -q token-over-the-group-net\"",
                "lava-sync done",
            ]
        ),
    );
    let file = lab.write("restart.yaml", &text)?;
    let group = lab.submit(&file)?;
    let (client, server) = (group, group + 1);
    lab.wait_for_line(server, "server-has-sent")?;
    lab.wait_for_line(client, "client-sleeps")?;
    lab.restart_controller_hard()?;
    for id in [client, server] {
        let view = lab.wait_state(id, "finished", testkit::lab::CLI_LIMIT)?;
        ensure!(view["outcome"] == "passed", "job {id}: {view}");
    }
    let results = lab.json(&["job", "results", &client.to_string(), "--json"])?;
    let cases = results["report"]["cases"].as_array().context("cases")?;
    for want in [
        "multinode-wait-ready",
        "from-the-server",
        "over-the-group-net",
        "multinode-sync-done",
    ] {
        ensure!(
            cases
                .iter()
                .any(|c| c["name"] == want && c["result"] == "pass"),
            "{want}: {results}"
        );
    }
    lab.wait_devices_idle("host-n", 2)?;
    lab.finish()
}

#[test]
fn a_killed_agent_mid_group_ends_the_group_after_the_disconnect_grace() -> Result<()> {
    let lab = Lab::start_with(DUTLAB, &["--heartbeat", "1s"])?;
    let alice = lab.token("alice", "user")?;
    let mut one = SimAgent::open(lab.port(), &lab.token("sim-a", "agent")?)?;
    one.hello("sim-a", &["sim-a1"], vec![])?;
    one.welcome()?;
    let mut two = SimAgent::open(lab.port(), &lab.token("sim-b", "agent")?)?;
    two.hello("sim-b", &["sim-b1"], vec![])?;
    two.welcome()?;
    let (group, _) = submit(&lab, &alice, "pair.yaml", PAIR)?;
    let (a, _) = started(&mut one)?;
    let (b, _) = started(&mut two)?;
    // Agent two dies with its sub-job (no close frame, no report).
    drop(two);
    let began = std::time::Instant::now();
    // Agent one keeps heartbeating; it is told to cancel its sub-job once the dead agent's
    // link is past `--disconnect-grace` (10 s) and its sub-job ended infra-error.
    let canceled = loop {
        one.send(&AgentMessage::Heartbeat)?;
        match one.next(Duration::from_millis(500)) {
            Ok(Heard::Message(ControllerMessage::CancelJob { lease, .. })) => break lease,
            _ if began.elapsed() > Duration::from_secs(20) => {
                anyhow::bail!("no cancel within 20 s of the agent's death")
            }
            _ => {}
        }
    };
    ensure!(canceled == a.lease);
    report(&mut one, a, proto::Outcome::Canceled)?;
    let dead = lab.wait_state(b.job.0, "finished", LIMIT)?;
    ensure!(dead["outcome"] == "infra-error", "{dead}");
    let text = lab.cli_as(&alice, &["job", "show", &group.to_string()])?;
    ensure!(
        text.stdout
            .starts_with(&format!("group {group}: 2 sub-jobs, outcome infra-error")),
        "{}",
        text.stdout
    );
    Ok(())
}

#[test]
fn a_group_on_two_agents_passes_messages_and_frames_of_its_network_through_the_controller()
-> Result<()> {
    // Each agent on a "machine" of its own: a network namespace whose only way out is its
    // link to the controller's (TLS, since the controller listens beyond loopback).
    let x = testkit::netns::NetNs::create(0)?;
    let y = testkit::netns::NetNs::create(1)?;
    let mut lab = Lab::start_tls_for(DUTLAB, &[x.host_ip(), y.host_ip()])?;
    lab.agent_in(&x, "host-x", 1)?;
    lab.agent_in(&y, "host-y", 1)?;
    let text = format!(
        "job_name: two agents\ntimeouts: {{job: {{minutes: 6}}, action: {{minutes: 4}}, connection: {{minutes: 3}}}}\n\
         visibility: public\nprotocols:\n  lava-multinode:\n    roles:\n      \
         server: {{device_type: qemu, count: 1}}\n      client: {{device_type: qemu, count: 1}}\n\
         actions:\n- boot:\n    role: [server, client]\n    method: qemu\n    prompts: ['# $']\n    \
         auto_login: {{login_prompt: 'login:', username: root}}\n{}{}",
        // The server's address is on the group network: the agents' bridges and the
        // controller carry its frames between the two agents' segments.
        testkit::role_test(
            "server",
            &[
                "(echo token-from-the-server | nc -l -p 7000) &",
                "lava-send token value=s3cr3t ip=$(lava-echo-ipv4 eth1)",
                "lava-wait-all seen client",
                "lava-sync done"
            ]
        ),
        testkit::role_test(
            "client",
            &[
                "lava-wait token",
                "lava-test-case got-token --shell grep -q ':value=s3cr3t' /tmp/lava_multi_node_cache.txt",
                "ip=$(sed -n 's/.*:ip=//p' /tmp/lava_multi_node_cache.txt | cut -d' ' -f1)",
                "lava-test-case ping --shell ping -c 1 -W 5 $ip",
                "lava-test-case connect --shell sh -c \"nc $ip 7000 </dev/null | grep -q token-from-the-server\"",
                "lava-send seen",
                "lava-sync done",
            ]
        ),
    );
    let file = lab.write("two-agents.yaml", &text)?;
    let group = lab.submit(&file)?;
    let mut devices = Vec::new();
    for id in [group, group + 1] {
        let view = lab.wait_state(id, "finished", testkit::lab::CLI_LIMIT)?;
        ensure!(view["outcome"] == "passed", "job {id}: {view}");
        devices.push(view["device"].as_str().unwrap_or("").to_owned());
    }
    // One sub-job on each agent's device.
    devices.sort();
    ensure!(
        devices[0].starts_with("host-x") && devices[1].starts_with("host-y"),
        "{devices:?}"
    );
    let results = lab.json(&["job", "results", &(group + 1).to_string(), "--json"])?;
    let cases = results["report"]["cases"].as_array().context("cases")?;
    ensure!(
        cases
            .iter()
            .any(|c| c["name"] == "multinode-wait_all-seen" && c["result"] == "pass"),
        "{results}"
    );
    let results = lab.json(&["job", "results", &group.to_string(), "--json"])?;
    let cases = results["report"]["cases"].as_array().context("cases")?;
    for want in ["got-token", "ping", "connect"] {
        ensure!(
            cases
                .iter()
                .any(|c| c["name"] == want && c["result"] == "pass"),
            "client: {want}: {results}"
        );
    }
    lab.finish()
}

/// A lab with agent `host-s` of two QEMU devices that may deploy the guest image (the host
/// role of `testkit::secondary_group_job` deploys it with `authorize: ssh`); and the image.
fn secondary_lab() -> Result<(Lab, std::path::PathBuf)> {
    let image = testkit::guest_image()?.canonicalize()?;
    let mut lab = Lab::start(DUTLAB)?;
    let path = lab.agent_config("host-s", 2)?;
    let init = std::fs::read_to_string(&path)?;
    ensure!(init.contains("image_dirs: []\n"), "{init}");
    std::fs::write(
        &path,
        init.replace(
            "image_dirs: []\n",
            &format!("image_dirs: [{:?}]\n", image.display().to_string()),
        ),
    )?;
    lab.spawn_agent(&path)?;
    lab.wait_devices_idle("host-s", 2)?;
    Ok((lab, image))
}

#[test]
fn secondary_connections_ride_on_the_host_roles_device_and_log_in_over_ssh() -> Result<()> {
    // The guests must not take the second device.
    let (lab, image) = secondary_lab()?;
    let file = lab.write("secondary.yaml", &testkit::secondary_group_job(&image, 2))?;
    let done = lab.cli(&["job", "submit", file.to_str().context("path")?, "--follow"])?;
    let shown = format!("stdout: {}\nstderr: {}", done.stdout, done.stderr);
    testkit::expect_code(&done, 0).context(shown.clone())?;
    let group = submitted_group(&done)?;
    ensure!(
        done.stdout
            .contains(&format!("group {group}: 3 sub-jobs, outcome passed")),
        "{shown}"
    );
    // Sub-jobs 0 and 1 are the guests, 2 the host: all three on the host's device.
    let host = lab.job(group + 2)?;
    let device = host["device"]
        .as_str()
        .context("the host's device")?
        .to_owned();
    for n in [0, 1] {
        let guest = lab.job(group + n)?;
        ensure!(guest["device"] == device.as_str(), "guest {n}: {guest}");
        let results = lab.json(&["job", "results", &format!("{group}.{n}"), "--json"])?;
        let cases = results["report"]["cases"].as_array().context("cases")?;
        for want in ["own-root", "overlay-copied", "on-the-host-dut"] {
            ensure!(
                cases
                    .iter()
                    .any(|c| c["name"] == want && c["result"] == "pass"),
                "guest {n}: {want}: {results}"
            );
        }
    }
    let waited = lab.log(group + 2)?.iter().any(|r| {
        r.to_string()
            .contains("waiting for 2 secondary connection(s) to end")
    });
    ensure!(waited, "{shown}");
    lab.wait_devices_idle("host-s", 2)?;
    lab.finish()
}

#[test]
fn canceling_a_group_with_secondary_connections_ends_them_all_and_frees_the_device() -> Result<()> {
    let (lab, image) = secondary_lab()?;
    // The guests log in and then wait; the host ends its test and waits for them.
    let text = testkit::secondary_group_job(&image, 2)
        .replace("\"sleep 3\"", "\"echo guest-is-in; sleep 600\"");
    ensure!(text.contains("sleep 600"), "{text}");
    let file = lab.write("secondary.yaml", &text)?;
    let group = lab.submit(&file)?;
    for n in [0, 1] {
        lab.wait_for_line(group + n, "guest-is-in")?;
    }
    let done = lab.cli(&["job", "cancel", &group.to_string()])?;
    testkit::expect_code(&done, 0)?;
    for n in 0..3 {
        let job = lab.wait_state(group + n, "finished", testkit::lab::CLI_LIMIT)?;
        ensure!(job["outcome"] == "canceled", "sub-job {n}: {job}");
    }
    // Every lease released, the riders' too: both devices take jobs again.
    lab.wait_devices_idle("host-s", 2)?;
    let single = lab.write("after.yaml", &inline_job("after", "  job: 2m", &["true"]))?;
    let after = lab.submit(&single)?;
    let job = lab.wait_state(after, "finished", testkit::lab::CLI_LIMIT)?;
    ensure!(job["outcome"] == "passed", "{job}");
    lab.finish()
}
