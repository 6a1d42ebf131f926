//! System tests of the lab: real `dutlab serve` and `dutlab agent` processes, real QEMU DUTs
//! under TCG, the real CLI as the client.
//!
//! Every process runs in its own group in a [`Sandbox`]; every test ends by proving that no
//! QEMU of its sandbox survived (dropping a [`Spawned`] kills its group). The tests that matter
//! most for the store (a job run and followed; the controller killed mid-job) run on SQLite
//! and on a private PostgreSQL server.

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use testkit::lab::{Database, Lab, check_numbered, numbered_job};
use testkit::{Spawned, expect_code, inline_job, wait_until, workspace_root};

const DUTLAB: &str = env!("CARGO_BIN_EXE_dutlab");
/// Generous bound for one job under TCG on a busy 2-core machine.
const JOB_LIMIT: Duration = testkit::lab::CLI_LIMIT;

/// Runs a test once per database: `name::sqlite` and `name::postgres`.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() -> anyhow::Result<()> {
                super::$name(super::Database::Sqlite)
            }
            #[test]
            fn postgres() -> anyhow::Result<()> {
                super::$name(super::Database::Postgres)
            }
        }
    )*};
}

on_both!(
    submitted_job_runs_on_an_agent_and_follow_exits_with_its_outcome,
    controller_killed_and_restarted_mid_job_loses_nothing,
    a_second_controller_is_refused_and_a_standby_takes_over_mid_job,
    serve_refuses_a_database_of_a_newer_schema,
);

fn submitted_job_runs_on_an_agent_and_follow_exits_with_its_outcome(
    database: Database,
) -> Result<()> {
    let mut lab = Lab::start_on(DUTLAB, database, &[])?;
    lab.agent("host-a", 1)?;
    let smoke = workspace_root().join("examples/qemu-smoke.yaml");
    let done = lab.cli(&["job", "submit", &smoke.display().to_string(), "--follow"])?;
    expect_code(&done, 0)?;
    let all = format!("{}{}", done.stdout, done.stderr);
    ensure!(all.contains("passed"), "no outcome shown:\n{all}");
    let jobs = lab.json(&["job", "list", "--json"])?;
    let job = &jobs.as_array().context("job list")?[0];
    ensure!(
        job["state"] == "finished" && job["outcome"] == "passed",
        "{job}"
    );
    let id = job["id"].as_u64().context("id")?;
    let junit = lab.sandbox().path().join("results.xml");
    let done = lab.cli(&[
        "job",
        "results",
        &id.to_string(),
        "--junit",
        &junit.display().to_string(),
    ])?;
    expect_code(&done, 0)?;
    let xml = std::fs::read_to_string(&junit)?;
    ensure!(
        xml.contains("<testsuites") && xml.contains("testcase"),
        "{xml}"
    );

    // A failing job: follow exits 1.
    let fail = workspace_root().join("examples/qemu-fail.yaml");
    let done = lab.cli(&["job", "submit", &fail.display().to_string(), "--follow"])?;
    expect_code(&done, 1)?;
    lab.wait_devices_idle("host-a", 1)?;
    lab.finish()
}

#[test]
fn bad_jobs_are_refused_at_submit_and_nothing_is_queued() -> Result<()> {
    let lab = Lab::start(DUTLAB)?;
    let bad = lab.write("bad.yaml", "job_name: x\ndevice_type: qemu\nactions: 7\n")?;
    let done = lab.cli(&["job", "submit", &bad.display().to_string()])?;
    expect_code(&done, 4)?;
    ensure!(
        done.stderr.contains("bad.yaml") && done.stderr.contains("actions"),
        "{}",
        done.stderr
    );
    let bomb = lab.write(
        "bomb.yaml",
        "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n",
    )?;
    let done = lab.cli(&["job", "submit", &bomb.display().to_string()])?;
    expect_code(&done, 4)?;
    // Valid LAVA that no device here can run: refused, saying which of the two it is, by the
    // CLI before anything is sent and by the controller for any other client.
    let scp = inline_job("scp", "  job: 1m", &["true"]).replace(
        "actions:\n",
        "actions:\n- deploy:\n    to: tmpfs\n    images:\n      kernel: {url: 'scp://files.example/vmlinuz'}\n",
    );
    ensure!(scp.contains("scp://"), "{scp}");
    let file = lab.write("scp.yaml", &scp)?;
    let done = lab.cli(&["job", "submit", &file.display().to_string()])?;
    expect_code(&done, 4)?;
    ensure!(
        done.stderr.contains("valid LAVA, but not runnable here") && done.stderr.contains("scp"),
        "{}",
        done.stderr
    );
    let body = serde_json::json!({"definition": scp, "file_name": "scp.yaml"});
    let (status, answer) = lab.http_json("POST", "/api/v1/jobs", lab.admin(), &body)?;
    let answer = String::from_utf8_lossy(&answer);
    ensure!(
        status == 400 && answer.contains("valid LAVA, but not runnable here"),
        "{status} {answer}"
    );
    // Unknown device type: refused with the known types, unless asked to wait.
    let other = lab.write(
        "other.yaml",
        &inline_job("other", "  job: 1m", &["true"])
            .replace("device_type: qemu", "device_type: rpi4"),
    )?;
    let done = lab.cli(&["job", "submit", &other.display().to_string()])?;
    expect_code(&done, 4)?;
    ensure!(done.stderr.contains("rpi4"), "{}", done.stderr);
    let jobs = lab.json(&["job", "list", "--json"])?;
    ensure!(
        jobs.as_array().is_some_and(|j| j.is_empty()),
        "queued: {jobs}"
    );
    let done = lab.cli(&[
        "job",
        "submit",
        &other.display().to_string(),
        "--wait-for-device",
        "--json",
    ])?;
    expect_code(&done, 0)?;
    lab.finish()
}

#[test]
fn killing_the_agent_mid_job_ends_it_as_infra_error_and_the_device_is_not_reused() -> Result<()> {
    let mut lab = Lab::start(DUTLAB)?;
    lab.agent("host-k", 1)?;
    let job = lab.write("long.yaml", &numbered_job("long", 600, "0.5"))?;
    let id = lab.submit(&job)?;
    lab.wait_state(id, "running", JOB_LIMIT)?;
    lab.wait_for_line(id, "line-1")?;
    let killed = Instant::now();
    lab.agents_mut()[0].kill_hard()?;
    let job = lab.wait_state(id, "finished", Duration::from_secs(30))?;
    let took = killed.elapsed();
    ensure!(job["outcome"] == "infra-error", "{job}");
    ensure!(
        took <= Duration::from_secs(15),
        "infra-error after {took:?}"
    );
    let devices = lab.json(&["device", "list", "--json"])?;
    ensure!(
        devices[0]["state"] != "idle",
        "device reusable before its agent came back: {devices}"
    );
    // A second job waits: the device is not given out while its agent is gone.
    let smoke = workspace_root().join("examples/qemu-smoke.yaml");
    let second = lab.submit(&smoke)?;
    std::thread::sleep(Duration::from_secs(2));
    ensure!(
        lab.job(second)?["state"] == "queued",
        "second job started on a dead agent"
    );
    // The agent comes back: it kills the orphaned QEMU, reports the device, and runs the job.
    let config = lab.sandbox().path().join("host-k/agent.yaml");
    lab.spawn_agent(&config)?;
    let job = lab.wait_state(second, "finished", JOB_LIMIT)?;
    ensure!(job["outcome"] == "passed", "{job}");
    lab.finish()
}

fn controller_killed_and_restarted_mid_job_loses_nothing(database: Database) -> Result<()> {
    let mut lab = Lab::start_on(DUTLAB, database, &[])?;
    lab.agent("host-r", 1)?;
    let lines = 80;
    let job = lab.write("numbered.yaml", &numbered_job("numbered", lines, "0.25"))?;
    let id = lab.submit(&job)?;
    lab.wait_state(id, "running", JOB_LIMIT)?;
    lab.wait_for_line(id, "line-5")?;
    lab.restart_controller_hard()?;
    // The agent is back within 5 s.
    wait_until("agent reconnected", Duration::from_secs(5), || {
        let agents = lab.json(&["agent", "list", "--json"])?;
        Ok((agents[0]["state"] == "connected").then_some(()))
    })?;
    let job = lab.wait_state(id, "finished", JOB_LIMIT)?;
    ensure!(job["outcome"] == "passed", "{job}");
    check_numbered(&lab.log(id)?, lines)?;
    lab.finish()
}

fn a_second_controller_is_refused_and_a_standby_takes_over_mid_job(
    database: Database,
) -> Result<()> {
    let mut lab = Lab::start_on(DUTLAB, database, &[])?;
    lab.agent("host-s", 1)?;
    let holder = format!("pid {}", lab.controller()?.pid());
    // Another serve on the same data directory is refused, naming the lock.
    let second = Spawned::start(lab.serve_command(&[])?)?.finish(Duration::from_secs(30))?;
    expect_code(&second, 5)?;
    ensure!(
        second.stderr.contains("is used by another dutlab serve")
            && second.stderr.contains("--standby"),
        "{}",
        second.stderr
    );
    if database == Database::Postgres {
        // And so is one on another data directory but the same database, naming the holder.
        let mut cmd = lab.sandbox().command(DUTLAB)?;
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(lab.sandbox().path().join("other-data"))
            .args(lab.database_args());
        let other = Spawned::start(cmd)?.finish(Duration::from_secs(30))?;
        expect_code(&other, 5)?;
        ensure!(
            other
                .stderr
                .matches("another dutlab serve is using database")
                .count()
                == 1
                && other.stderr.contains(&holder),
            "{}",
            other.stderr
        );
    }
    let lines = 60;
    let job = lab.write("numbered.yaml", &numbered_job("numbered", lines, "0.25"))?;
    let id = lab.submit(&job)?;
    lab.wait_state(id, "running", JOB_LIMIT)?;
    lab.wait_for_line(id, "line-3")?;
    // A standby on the same data directory, database and port waits without listening...
    let standby = Spawned::start(lab.serve_command(&["--standby"])?)?;
    standby.wait_for_stderr("standby", Duration::from_secs(30))?;
    ensure!(
        lab.job(id)?["state"] == "running" && !standby.stderr_text().contains("listening on"),
        "the standby started while the controller ran: {}",
        standby.stderr_text()
    );
    // ... and takes over when the controller is killed; the job loses nothing.
    lab.kill_controller_hard()?;
    standby.wait_for_stderr("listening on http://", Duration::from_secs(30))?;
    lab.adopt_controller(standby);
    let job = lab.wait_state(id, "finished", JOB_LIMIT)?;
    ensure!(job["outcome"] == "passed", "{job}");
    check_numbered(&lab.log(id)?, lines)?;
    lab.finish()
}

#[test]
fn postgres_restarted_mid_job_the_controller_steps_down_leads_again_and_loses_nothing() -> Result<()>
{
    let mut lab = Lab::start_on(DUTLAB, Database::Postgres, &[])?;
    lab.agent("host-q", 1)?;
    let lines = 60;
    let job = lab.write("numbered.yaml", &numbered_job("numbered", lines, "0.25"))?;
    let id = lab.submit(&job)?;
    lab.wait_state(id, "running", JOB_LIMIT)?;
    lab.wait_for_line(id, "line-3")?;
    // The server goes away: the controller cannot know that no other takes the database
    // meanwhile, so it stops leading (the run ends with every task it started) and serves
    // again from the database, trying until the server is back.
    lab.postgres().context("postgres")?.stop()?;
    let controller = lab.controller()?;
    controller.wait_for_stderr("stepping down", Duration::from_secs(30))?;
    ensure!(
        controller
            .stderr_text()
            .contains("lost the connection that holds the database's lock")
            || controller.stderr_text().contains("commit failed"),
        "{}",
        controller.stderr_text()
    );
    controller.wait_for_stderr("trying again in 1s", Duration::from_secs(30))?;
    // Server back: nobody else holds the lock, so the same process leads again, on the
    // same address; the job finishes and its log holds every line once.
    lab.postgres().context("postgres")?.start_again()?;
    let job = lab.wait_state(id, "finished", JOB_LIMIT)?;
    ensure!(job["outcome"] == "passed", "{job}");
    check_numbered(&lab.log(id)?, lines)?;
    let short = lab.write("short.yaml", &numbered_job("short", 3, "0.1"))?;
    let next = lab.submit(&short)?;
    let next = lab.wait_state(next, "finished", JOB_LIMIT)?;
    ensure!(next["outcome"] == "passed", "{next}");
    // It still stops on SIGTERM, with success.
    lab.controller()?
        .signal(nix::sys::signal::Signal::SIGTERM)?;
    let stopped = lab.wait_controller_exit(Duration::from_secs(30))?;
    expect_code(&stopped, 0)?;
    lab.finish()
}

fn serve_refuses_a_database_of_a_newer_schema(database: Database) -> Result<()> {
    let mut lab = Lab::start_on(DUTLAB, database, &[])?;
    lab.stop_controller()?;
    let newer = "UPDATE meta SET value = '1000' WHERE key = 'schema'";
    match lab.postgres() {
        Some(server) => {
            server.psql("dutlab", newer)?;
        }
        None => {
            let db = lab.data_dir().join("dutlab.db");
            let done = std::process::Command::new("sqlite3")
                .arg(&db)
                .arg(newer)
                .output()?;
            ensure!(done.status.success(), "sqlite3: {done:?}");
        }
    }
    let refused = Spawned::start(lab.serve_command(&[])?)?.finish(Duration::from_secs(30))?;
    expect_code(&refused, 5)?;
    ensure!(
        refused
            .stderr
            .matches("database schema version 1000 is newer than this dutlab knows")
            .count()
            == 1,
        "{}",
        refused.stderr
    );
    ensure!(
        !refused.stderr.contains("listening on"),
        "{}",
        refused.stderr
    );
    lab.finish()
}

#[test]
fn a_partitioned_agent_delivers_its_backlog_after_healing() -> Result<()> {
    let mut lab = Lab::start(DUTLAB)?;
    lab.agent("host-p", 1)?;
    let lines = 100;
    let job = lab.write("numbered.yaml", &numbered_job("numbered", lines, "0.4"))?;
    let id = lab.submit(&job)?;
    lab.wait_state(id, "running", JOB_LIMIT)?;
    lab.wait_for_line(id, "line-3")?;
    // SIGSTOP freezes the agent: its socket stays open but nothing moves for 30 s. QEMU runs
    // on (its own process group), so the DUT keeps printing into the console socket.
    lab.agents_mut()[0].signal(nix::sys::signal::Signal::SIGSTOP)?;
    std::thread::sleep(Duration::from_secs(30));
    ensure!(
        lab.job(id)?["state"] == "running",
        "the job did not survive the partition"
    );
    lab.agents_mut()[0].signal(nix::sys::signal::Signal::SIGCONT)?;
    let job = lab.wait_state(id, "finished", JOB_LIMIT)?;
    ensure!(job["outcome"] == "passed", "{job}");
    check_numbered(&lab.log(id)?, lines)?;
    lab.finish()
}

#[test]
fn cancel_powers_the_dut_off_and_the_outcome_is_canceled() -> Result<()> {
    let mut lab = Lab::start(DUTLAB)?;
    lab.agent("host-c", 1)?;
    let job = lab.write("long.yaml", &numbered_job("long", 600, "0.5"))?;
    let id = lab.submit(&job)?;
    lab.wait_state(id, "running", JOB_LIMIT)?;
    // Cancel while the test runs in the DUT, not during boot.
    lab.wait_for_line(id, "line-1")?;
    let asked = Instant::now();
    let done = lab.cli(&["job", "cancel", &id.to_string()])?;
    expect_code(&done, 0)?;
    let job = lab.wait_state(id, "finished", Duration::from_secs(15))?;
    let took = asked.elapsed();
    ensure!(job["outcome"] == "canceled", "{job}");
    ensure!(took <= Duration::from_secs(10), "canceled after {took:?}");
    lab.sandbox().assert_no_qemu_left()?;
    lab.wait_devices_idle("host-c", 1)?;
    lab.finish()
}

/// Sends one raw HTTP/1.1 request and answers the status code.
fn status(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> Result<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("connection"))
    {
        request.push_str("Connection: close\r\n");
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Content-Length: 0\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    let text = String::from_utf8_lossy(&head);
    text.get(9..12)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {text:?}"))
}

#[test]
fn every_route_of_the_openapi_file_needs_a_token() -> Result<()> {
    let lab = Lab::start(DUTLAB)?;
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(
        workspace_root().join("docs/openapi.json"),
    )?)?;
    let paths = doc["paths"].as_object().context("paths")?;
    ensure!(paths.len() >= 14, "only {} paths", paths.len());
    let mut checked = 0;
    for (path, methods) in paths {
        let concrete = path.replace("{id}", "1");
        for method in methods.as_object().context("methods")?.keys() {
            let method = method.to_uppercase();
            let code = status(lab.port(), &method, &concrete, &[])?;
            let wrong = status(
                lab.port(),
                &method,
                &concrete,
                &[("Authorization", "Bearer dutlab_0123456789")],
            )?;
            if path == "/healthz" {
                ensure!(code == 200, "{method} {path}: {code}");
            } else {
                ensure!(code == 401, "{method} {path} without a token: {code}");
                ensure!(wrong == 401, "{method} {path} with a bad token: {wrong}");
            }
            checked += 1;
        }
    }
    ensure!(checked >= 15, "checked {checked} routes");
    lab.finish()
}

#[test]
fn roles_and_private_jobs_are_enforced_on_the_server() -> Result<()> {
    let lab = Lab::start(DUTLAB)?;
    let alice = lab.token("alice", "user")?;
    let bob = lab.token("bob", "user")?;
    let agent = lab.token("rig", "agent")?;
    let private = lab.write(
        "private.yaml",
        &format!(
            "visibility: personal\n{}",
            inline_job("secret", "  job: 1m", &["true"])
        ),
    )?;
    let done = lab.cli_as(
        &alice,
        &[
            "job",
            "submit",
            &private.display().to_string(),
            "--wait-for-device",
            "--json",
        ],
    )?;
    expect_code(&done, 0)?;
    let id: Value = serde_json::from_str(&done.stdout)?;
    let id = id["id"].as_u64().context("id")?.to_string();
    // Bob can neither read nor cancel Alice's private job; the server says so.
    for args in [
        vec!["job", "show", &id],
        vec!["job", "logs", &id],
        vec!["job", "cancel", &id],
        vec!["job", "results", &id],
    ] {
        let done = lab.cli_as(&bob, &args)?;
        expect_code(&done, 77)?;
    }
    let bobs = lab.json_as(&bob, &["job", "list", "--json"])?;
    ensure!(
        bobs.as_array().is_some_and(|j| j.is_empty()),
        "bob sees {bobs}"
    );
    // An agent token cannot submit; a user token cannot manage tokens or act as an agent.
    let public = lab.write("public.yaml", &inline_job("open", "  job: 1m", &["true"]))?;
    let done = lab.cli_as(
        &agent,
        &[
            "job",
            "submit",
            &public.display().to_string(),
            "--wait-for-device",
        ],
    )?;
    expect_code(&done, 77)?;
    let done = lab.cli_as(
        &alice,
        &["token", "create", "--name", "x", "--role", "admin"],
    )?;
    expect_code(&done, 77)?;
    let upgrade = [
        ("Authorization", format!("Bearer {alice}")),
        ("Connection", "Upgrade".into()),
        ("Upgrade", "websocket".into()),
        ("Sec-WebSocket-Version", "13".into()),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==".into()),
    ];
    let headers: Vec<(&str, &str)> = upgrade.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let code = status(lab.port(), "GET", proto::link::LINK_PATH, &headers)?;
    ensure!(code == 403, "user token on the agent link: {code}");
    // Alice may cancel her own job; a revoked token is refused.
    let done = lab.cli_as(&alice, &["job", "cancel", &id])?;
    expect_code(&done, 0)?;
    let list = lab.json(&["token", "list", "--json"])?;
    let bob_id = list
        .as_array()
        .and_then(|l| l.iter().find(|t| t["name"] == "bob"))
        .and_then(|t| t["id"].as_str())
        .context("bob's token")?
        .to_owned();
    expect_code(&lab.cli(&["token", "revoke", &bob_id])?, 0)?;
    let done = lab.cli_as(&bob, &["job", "list"])?;
    expect_code(&done, 77)?;
    // Secrets never reach the controller's log.
    let log = lab
        .controller()
        .map(|c| c.stderr_text())
        .unwrap_or_default();
    for secret in [alice.as_str(), bob.as_str(), agent.as_str(), lab.admin()] {
        if log.contains(secret) {
            bail!("a token appears in the controller log");
        }
    }
    lab.finish()
}
