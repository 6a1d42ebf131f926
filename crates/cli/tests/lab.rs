//! System tests of the lab: real `dutlab serve` and `dutlab agent` processes, real QEMU DUTs
//! under TCG, the real CLI as the client.
//!
//! Every process runs in its own group in a [`Sandbox`]; every test ends by proving that no
//! QEMU of its sandbox survived (dropping a [`Spawned`] kills its group).

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use testkit::{Finished, Sandbox, Spawned, expect_code, inline_job, wait_until, workspace_root};

const DUTLAB: &str = env!("CARGO_BIN_EXE_dutlab");
/// Generous bound for one job under TCG on a busy 2-core machine.
const JOB_LIMIT: Duration = Duration::from_secs(240);

/// One controller, its agents, and a client environment, in one sandbox.
struct Lab {
    sandbox: Sandbox,
    data_dir: PathBuf,
    port: u16,
    admin: String,
    controller: Option<Spawned>,
    agents: Vec<Spawned>,
}

impl Lab {
    fn start() -> Result<Lab> {
        let sandbox = Sandbox::new()?;
        let data_dir = sandbox.path().join("data");
        let controller = Self::spawn_controller(&sandbox, &data_dir, 0)?;
        controller.wait_for_stderr("listening on http://", Duration::from_secs(30))?;
        let stderr = controller.stderr_text();
        let port = stderr
            .split("listening on http://127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("no port in {stderr}"))?;
        let admin = std::fs::read_to_string(data_dir.join("admin-token"))?
            .trim()
            .to_owned();
        Ok(Lab {
            sandbox,
            data_dir,
            port,
            admin,
            controller: Some(controller),
            agents: Vec::new(),
        })
    }

    fn spawn_controller(sandbox: &Sandbox, data_dir: &Path, port: u16) -> Result<Spawned> {
        let mut cmd = sandbox.command(DUTLAB)?;
        cmd.args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data_dir);
        Spawned::start(cmd)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the controller with SIGKILL and starts it again on the same port and data.
    fn restart_controller_hard(&mut self) -> Result<()> {
        if let Some(mut old) = self.controller.take() {
            old.kill_hard()?;
        }
        let fresh = Self::spawn_controller(&self.sandbox, &self.data_dir, self.port)?;
        fresh.wait_for_stderr("listening on http://", Duration::from_secs(30))?;
        self.controller = Some(fresh);
        Ok(())
    }

    /// Runs the CLI with the given token.
    fn cli_as(&self, token: &str, args: &[&str]) -> Result<Finished> {
        let mut cmd = self.sandbox.command(DUTLAB)?;
        cmd.args(args)
            .env("DUTLAB_URL", self.url())
            .env("DUTLAB_TOKEN", token)
            .env("XDG_CONFIG_HOME", self.sandbox.path().join("config"));
        Spawned::start(cmd)?.finish(JOB_LIMIT)
    }

    fn cli(&self, args: &[&str]) -> Result<Finished> {
        self.cli_as(&self.admin, args)
    }

    /// Runs the CLI and parses its stdout as JSON (exit 0 required).
    fn json_as(&self, token: &str, args: &[&str]) -> Result<Value> {
        let done = self.cli_as(token, args)?;
        expect_code(&done, 0)?;
        serde_json::from_str(&done.stdout).with_context(|| format!("not JSON: {}", done.stdout))
    }

    fn token(&self, name: &str, role: &str) -> Result<String> {
        let done = self.cli(&["token", "create", "--name", name, "--role", role])?;
        expect_code(&done, 0)?;
        let token = done.stdout.trim().to_owned();
        ensure!(
            token.starts_with("dutlab_") && !token.contains('\n'),
            "token create printed {:?}",
            done.stdout
        );
        Ok(token)
    }

    /// Starts an agent with `qemu` default QEMU devices and waits until they are idle.
    fn agent(&mut self, name: &str, qemu: usize) -> Result<()> {
        let dir = self.sandbox.path().join(name);
        std::fs::create_dir_all(&dir)?;
        let token_file = dir.join("token");
        std::fs::write(&token_file, self.token(name, "agent")?)?;
        let init = self.cli(&[
            "agent",
            "init",
            "--controller",
            &self.url(),
            "--token-file",
            &token_file.display().to_string(),
            "--qemu",
            &qemu.to_string(),
            "--name",
            name,
            "--work-dir",
            &dir.join("work").display().to_string(),
        ])?;
        expect_code(&init, 0)?;
        let config = dir.join("agent.yaml");
        std::fs::write(&config, &init.stdout)?;
        self.spawn_agent(&config)?;
        self.wait_devices_idle(name, qemu)?;
        Ok(())
    }

    fn spawn_agent(&mut self, config: &Path) -> Result<()> {
        let mut cmd = self.sandbox.command(DUTLAB)?;
        cmd.arg("agent").arg("--config").arg(config);
        self.agents.push(Spawned::start(cmd)?);
        Ok(())
    }

    fn wait_devices_idle(&self, agent: &str, count: usize) -> Result<()> {
        wait_until(
            &format!("{count} idle device(s) of agent {agent}"),
            Duration::from_secs(30),
            || {
                let devices = self.json_as(&self.admin, &["device", "list", "--json"])?;
                let idle = devices
                    .as_array()
                    .context("device list is an array")?
                    .iter()
                    .filter(|d| d["agent"] == agent && d["state"] == "idle")
                    .count();
                Ok((idle == count).then_some(()))
            },
        )
    }

    fn write(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.sandbox.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Submits a job file and answers its id.
    fn submit_as(&self, token: &str, job: &Path) -> Result<u64> {
        let view = self.json_as(
            token,
            &["job", "submit", &job.display().to_string(), "--json"],
        )?;
        view["id"].as_u64().context("job id")
    }

    fn job(&self, id: u64) -> Result<Value> {
        self.json_as(&self.admin, &["job", "show", &id.to_string(), "--json"])
    }

    fn wait_state(&self, id: u64, state: &str, within: Duration) -> Result<Value> {
        wait_until(&format!("job {id} {state}"), within, || {
            let job = self.job(id)?;
            Ok((job["state"] == state).then_some(job))
        })
    }

    /// Waits until the stored log of a job has a record containing `text`.
    fn wait_for_line(&self, id: u64, text: &str) -> Result<()> {
        wait_until(
            &format!("{text:?} in the log of job {id}"),
            JOB_LIMIT,
            || {
                Ok(self
                    .log(id)?
                    .iter()
                    .any(|r| r["text"].as_str().is_some_and(|t| t.contains(text)))
                    .then_some(()))
            },
        )
    }

    /// The stored log of a job, one record per line.
    fn log(&self, id: u64) -> Result<Vec<Value>> {
        let done = self.cli(&["job", "logs", &id.to_string(), "--json"])?;
        expect_code(&done, 0)?;
        done.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).with_context(|| format!("log line {l:?}")))
            .collect()
    }

    fn finish(mut self) -> Result<()> {
        for agent in &mut self.agents {
            let _ = agent.signal(nix::sys::signal::Signal::SIGTERM);
        }
        let agents = std::mem::take(&mut self.agents);
        for agent in agents {
            let _ = agent.finish(Duration::from_secs(30));
        }
        self.sandbox.assert_no_qemu_left()
    }
}

/// A job whose DUT prints `line-1` ... `line-N`, one every `pause` seconds.
fn numbered_job(name: &str, lines: u32, pause: &str) -> String {
    let step =
        format!("i=1; while [ $i -le {lines} ]; do echo line-$i; i=$((i+1)); sleep {pause}; done");
    inline_job(
        name,
        "  job: 5m",
        &[&step, "lava-test-case counted --result pass"],
    )
}

/// Checks that the console records hold `line-1` .. `line-N` exactly once, in order.
fn check_numbered(log: &[Value], lines: u32) -> Result<()> {
    let seqs: Vec<u64> = log.iter().filter_map(|r| r["seq"].as_u64()).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    ensure!(seqs == expected, "sequence numbers are not 1..n: {seqs:?}");
    ensure!(
        !log.iter().any(|r| r["kind"] == "gap"),
        "the log has a gap marker"
    );
    let numbered: Vec<u32> = log
        .iter()
        .filter(|r| r["kind"] == "console")
        .filter_map(|r| r["text"].as_str())
        .filter_map(|t| t.trim().strip_prefix("line-"))
        .filter_map(|n| n.parse().ok())
        .collect();
    let wanted: Vec<u32> = (1..=lines).collect();
    ensure!(
        numbered == wanted,
        "numbered lines lost or repeated: got {} lines: {numbered:?}",
        numbered.len()
    );
    Ok(())
}

#[test]
fn submitted_job_runs_on_an_agent_and_follow_exits_with_its_outcome() -> Result<()> {
    let mut lab = Lab::start()?;
    lab.agent("host-a", 1)?;
    let smoke = workspace_root().join("examples/qemu-smoke.yaml");
    let done = lab.cli(&["job", "submit", &smoke.display().to_string(), "--follow"])?;
    expect_code(&done, 0)?;
    let all = format!("{}{}", done.stdout, done.stderr);
    ensure!(all.contains("passed"), "no outcome shown:\n{all}");
    let jobs = lab.json_as(&lab.admin, &["job", "list", "--json"])?;
    let job = &jobs.as_array().context("job list")?[0];
    ensure!(
        job["state"] == "finished" && job["outcome"] == "passed",
        "{job}"
    );
    let id = job["id"].as_u64().context("id")?;
    let junit = lab.sandbox.path().join("results.xml");
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
    let lab = Lab::start()?;
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
    // Unknown device type: refused with the known types, unless asked to wait.
    let other = lab.write(
        "other.yaml",
        &inline_job("other", "  job: 1m", &["true"])
            .replace("device_type: qemu", "device_type: rpi4"),
    )?;
    let done = lab.cli(&["job", "submit", &other.display().to_string()])?;
    expect_code(&done, 4)?;
    ensure!(done.stderr.contains("rpi4"), "{}", done.stderr);
    let jobs = lab.json_as(&lab.admin, &["job", "list", "--json"])?;
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
    let mut lab = Lab::start()?;
    lab.agent("host-k", 1)?;
    let job = lab.write("long.yaml", &numbered_job("long", 600, "0.5"))?;
    let id = lab.submit_as(&lab.admin, &job)?;
    lab.wait_state(id, "running", JOB_LIMIT)?;
    lab.wait_for_line(id, "line-1")?;
    let killed = Instant::now();
    lab.agents[0].kill_hard()?;
    let job = lab.wait_state(id, "finished", Duration::from_secs(30))?;
    let took = killed.elapsed();
    ensure!(job["outcome"] == "infra-error", "{job}");
    ensure!(
        took <= Duration::from_secs(15),
        "infra-error after {took:?}"
    );
    let devices = lab.json_as(&lab.admin, &["device", "list", "--json"])?;
    ensure!(
        devices[0]["state"] != "idle",
        "device reusable before its agent came back: {devices}"
    );
    // A second job waits: the device is not given out while its agent is gone.
    let smoke = workspace_root().join("examples/qemu-smoke.yaml");
    let second = lab.submit_as(&lab.admin, &smoke)?;
    std::thread::sleep(Duration::from_secs(2));
    ensure!(
        lab.job(second)?["state"] == "queued",
        "second job started on a dead agent"
    );
    // The agent comes back: it kills the orphaned QEMU, reports the device, and runs the job.
    let config = lab.sandbox.path().join("host-k/agent.yaml");
    lab.spawn_agent(&config)?;
    let job = lab.wait_state(second, "finished", JOB_LIMIT)?;
    ensure!(job["outcome"] == "passed", "{job}");
    lab.finish()
}

#[test]
fn controller_killed_and_restarted_mid_job_loses_nothing() -> Result<()> {
    let mut lab = Lab::start()?;
    lab.agent("host-r", 1)?;
    let lines = 80;
    let job = lab.write("numbered.yaml", &numbered_job("numbered", lines, "0.25"))?;
    let id = lab.submit_as(&lab.admin, &job)?;
    lab.wait_state(id, "running", JOB_LIMIT)?;
    lab.wait_for_line(id, "line-5")?;
    lab.restart_controller_hard()?;
    // The agent is back within 5 s.
    wait_until("agent reconnected", Duration::from_secs(5), || {
        let agents = lab.json_as(&lab.admin, &["agent", "list", "--json"])?;
        Ok((agents[0]["state"] == "connected").then_some(()))
    })?;
    let job = lab.wait_state(id, "finished", JOB_LIMIT)?;
    ensure!(job["outcome"] == "passed", "{job}");
    check_numbered(&lab.log(id)?, lines)?;
    lab.finish()
}

#[test]
fn a_partitioned_agent_delivers_its_backlog_after_healing() -> Result<()> {
    let mut lab = Lab::start()?;
    lab.agent("host-p", 1)?;
    let lines = 100;
    let job = lab.write("numbered.yaml", &numbered_job("numbered", lines, "0.4"))?;
    let id = lab.submit_as(&lab.admin, &job)?;
    lab.wait_state(id, "running", JOB_LIMIT)?;
    lab.wait_for_line(id, "line-3")?;
    // SIGSTOP freezes the agent: its socket stays open but nothing moves for 30 s. QEMU runs
    // on (its own process group), so the DUT keeps printing into the console socket.
    lab.agents[0].signal(nix::sys::signal::Signal::SIGSTOP)?;
    std::thread::sleep(Duration::from_secs(30));
    ensure!(
        lab.job(id)?["state"] == "running",
        "the job did not survive the partition"
    );
    lab.agents[0].signal(nix::sys::signal::Signal::SIGCONT)?;
    let job = lab.wait_state(id, "finished", JOB_LIMIT)?;
    ensure!(job["outcome"] == "passed", "{job}");
    check_numbered(&lab.log(id)?, lines)?;
    lab.finish()
}

#[test]
fn cancel_powers_the_dut_off_and_the_outcome_is_canceled() -> Result<()> {
    let mut lab = Lab::start()?;
    lab.agent("host-c", 1)?;
    let job = lab.write("long.yaml", &numbered_job("long", 600, "0.5"))?;
    let id = lab.submit_as(&lab.admin, &job)?;
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
    lab.sandbox.assert_no_qemu_left()?;
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
    let lab = Lab::start()?;
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
            let code = status(lab.port, &method, &concrete, &[])?;
            let wrong = status(
                lab.port,
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
    let lab = Lab::start()?;
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
    let code = status(lab.port, "GET", proto::link::LINK_PATH, &headers)?;
    ensure!(code == 403, "user token on the agent link: {code}");
    // Alice may cancel her own job; a revoked token is refused.
    let done = lab.cli_as(&alice, &["job", "cancel", &id])?;
    expect_code(&done, 0)?;
    let list = lab.json_as(&lab.admin, &["token", "list", "--json"])?;
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
        .controller
        .as_ref()
        .map(|c| c.stderr_text())
        .unwrap_or_default();
    for secret in [&alice, &bob, &agent, &lab.admin] {
        if log.contains(secret.as_str()) {
            bail!("a token appears in the controller log");
        }
    }
    lab.finish()
}
