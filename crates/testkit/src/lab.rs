//! A lab for system tests: a real `dutlab serve` on a loopback port, real `dutlab agent`
//! processes with QEMU devices, and the real CLI as each user, all in one [`Sandbox`].
//!
//! Invariants:
//! - Every process runs in its own group in the sandbox; dropping the lab kills them all.
//! - [`Lab::finish`] stops the agents with SIGTERM and proves that no QEMU of the sandbox is
//!   left; a test that ends without it still kills its processes (drop), but proves nothing.
//! - The binary under test is given by the test (`env!("CARGO_BIN_EXE_dutlab")`): testkit
//!   builds nothing.

use crate::postgres::Postgres;
use crate::{Finished, Sandbox, Spawned, expect_code, wait_until};
use anyhow::{Context, Result, ensure};
use nix::sys::signal::Signal;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Generous bound for one CLI call (which may follow a job) under TCG on a busy 2-core machine.
pub const CLI_LIMIT: Duration = Duration::from_secs(240);

/// How long a controller may take to listen, an agent's devices to become idle.
const START_LIMIT: Duration = Duration::from_secs(30);

/// What `dutlab tls init DIR` wrote, and the fingerprint it printed.
pub struct Pki {
    pub dir: PathBuf,
    /// `sha256:...`, what agents and clients may pin.
    pub pin: String,
}

impl Pki {
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server-key.pem")
    }
}

/// Runs `dutlab tls init DIR` for 127.0.0.1 and localhost.
pub fn tls_init(sandbox: &Sandbox, bin: &str, dir: &Path) -> Result<Pki> {
    tls_init_for(sandbox, bin, dir, &[])
}

/// [`tls_init`] for `more` names (addresses) too.
fn tls_init_for(sandbox: &Sandbox, bin: &str, dir: &Path, more: &[String]) -> Result<Pki> {
    let mut cmd = sandbox.command(bin)?;
    cmd.args(["tls", "init"])
        .arg(dir)
        .args(["--name", "localhost", "--name", "127.0.0.1"]);
    for name in more {
        cmd.args(["--name", name]);
    }
    let done = Spawned::start(cmd)?.finish(START_LIMIT)?;
    expect_code(&done, 0)?;
    let pin = done
        .stdout
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .with_context(|| format!("no fingerprint printed: {}", done.stdout))?
        .to_owned();
    Ok(Pki {
        dir: dir.to_path_buf(),
        pin,
    })
}

/// One controller, its agents, and a client environment, in one sandbox.
pub struct Lab {
    sandbox: Sandbox,
    bin: PathBuf,
    /// Set when the controller serves https and wss only.
    pki: Option<Pki>,
    data_dir: PathBuf,
    serve_args: Vec<String>,
    /// Where the controller listens (127.0.0.1 unless agents in other network namespaces
    /// must reach it: [`Lab::start_tls_for`]).
    listen: std::net::Ipv4Addr,
    port: u16,
    admin: String,
    controller: Option<Spawned>,
    /// Followers of the controller's database (`serve --follow`), each with its own data
    /// directory and port.
    followers: Vec<Follower>,
    agents: Vec<Spawned>,
    /// The private server of a lab on PostgreSQL (last: dropped after the processes).
    postgres: Option<Postgres>,
}

/// A `dutlab serve --follow` beside the lab's controller.
pub struct Follower {
    pub port: u16,
    pub data_dir: PathBuf,
    pub process: Spawned,
}

/// The port in `listening on SCHEME://127.0.0.1:PORT` of a controller's stderr.
fn listening_port(controller: &Spawned, marker: &str) -> Result<u16> {
    let stderr = controller.stderr_text();
    stderr
        .split(marker)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no port in {stderr}"))
}

/// The database of a lab's controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Database {
    /// SQLite in the data directory (`serve`'s default).
    Sqlite,
    /// A private PostgreSQL server ([`Postgres`]), given with `--database`.
    Postgres,
}

impl Database {
    /// Both, for tests that run on each.
    pub const ALL: [Database; 2] = [Database::Sqlite, Database::Postgres];
}

impl Lab {
    /// Starts a controller with default settings.
    pub fn start(bin: &str) -> Result<Lab> {
        Self::start_with(bin, &[])
    }

    /// Starts a controller with extra `dutlab serve` arguments.
    pub fn start_with(bin: &str, serve_args: &[&str]) -> Result<Lab> {
        Self::begin(bin, Database::Sqlite, serve_args, false)
    }

    /// Starts a controller on `database` with extra `dutlab serve` arguments.
    pub fn start_on(bin: &str, database: Database, serve_args: &[&str]) -> Result<Lab> {
        Self::begin(bin, database, serve_args, false)
    }

    /// Starts a controller serving TLS with a fresh lab PKI (`dutlab tls init`); the CLI
    /// trusts its CA (`DUTLAB_CA`) and [`Lab::agent_config`] writes `ca_file`.
    pub fn start_tls_with(bin: &str, serve_args: &[&str]) -> Result<Lab> {
        Self::begin(bin, Database::Sqlite, serve_args, true)
    }

    /// Starts a plain controller on SQLite whose data directory is `data_dir` (relative to
    /// the sandbox), after `prepare` ran on that path (e.g. to mount a small file system on
    /// its `logs`).
    pub fn start_prepared(
        bin: &str,
        data_dir: &str,
        prepare: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<Lab> {
        let sandbox = Sandbox::new()?;
        let dir = sandbox.path().join(data_dir);
        prepare(&dir)?;
        Self::begin_in(sandbox, dir, bin, Database::Sqlite, &[], false)
    }

    fn begin(bin: &str, database: Database, serve_args: &[&str], tls: bool) -> Result<Lab> {
        let sandbox = Sandbox::new()?;
        let data_dir = sandbox.path().join("data");
        Self::begin_in(sandbox, data_dir, bin, database, serve_args, tls)
    }

    /// Starts a TLS controller on SQLite listening on every address of the host's network
    /// namespace, with a certificate for 127.0.0.1 and each of `addresses` (the host ends of
    /// [`crate::netns::NetNs`] links, where agents in those namespaces reach it).
    pub fn start_tls_for(bin: &str, addresses: &[std::net::Ipv4Addr]) -> Result<Lab> {
        let sandbox = Sandbox::new()?;
        let data_dir = sandbox.path().join("data");
        let names: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
        let pki = tls_init_for(&sandbox, bin, &sandbox.path().join("pki"), &names)?;
        let mut lab = Lab {
            sandbox,
            bin: PathBuf::from(bin),
            pki: Some(pki),
            data_dir,
            serve_args: Vec::new(),
            listen: std::net::Ipv4Addr::UNSPECIFIED,
            port: 0,
            admin: String::new(),
            controller: None,
            followers: Vec::new(),
            agents: Vec::new(),
            postgres: None,
        };
        lab.serve()?;
        Ok(lab)
    }

    /// Writes the config of agent `name` with `qemu` QEMU devices that runs in `ns` and dials
    /// the controller at the host end of its link, and starts it there.
    pub fn agent_in(&mut self, ns: &crate::netns::NetNs, name: &str, qemu: usize) -> Result<()> {
        let config = self.agent_config(name, qemu)?;
        let text = std::fs::read_to_string(&config)?;
        let here = format!("127.0.0.1:{}", self.port);
        ensure!(text.contains(&here), "no controller address in {text}");
        let there = format!("{}:{}", ns.host_ip(), self.port);
        std::fs::write(&config, text.replace(&here, &there))?;
        let mut cmd = self.sandbox.command("ip")?;
        cmd.args(["netns", "exec", ns.name()])
            .arg(&self.bin)
            .arg("agent")
            .arg("--config")
            .arg(&config);
        self.agents.push(Spawned::start(cmd)?);
        self.wait_devices_idle(name, qemu)
    }

    fn begin_in(
        sandbox: Sandbox,
        data_dir: PathBuf,
        bin: &str,
        database: Database,
        serve_args: &[&str],
        tls: bool,
    ) -> Result<Lab> {
        let pki = if tls {
            Some(tls_init(&sandbox, bin, &sandbox.path().join("pki"))?)
        } else {
            None
        };
        let mut args: Vec<String> = serve_args.iter().map(|s| (*s).to_owned()).collect();
        let postgres = match database {
            Database::Sqlite => None,
            Database::Postgres => {
                let server = Postgres::start()?;
                args.extend(["--database".to_owned(), server.create_database("dutlab")?]);
                Some(server)
            }
        };
        let mut lab = Lab {
            sandbox,
            bin: PathBuf::from(bin),
            pki,
            data_dir,
            serve_args: args,
            listen: std::net::Ipv4Addr::LOCALHOST,
            port: 0,
            admin: String::new(),
            controller: None,
            followers: Vec::new(),
            agents: Vec::new(),
            postgres,
        };
        lab.serve()?;
        Ok(lab)
    }

    /// Starts the controller on the lab's data directory (and its port, once it has one).
    pub fn serve(&mut self) -> Result<()> {
        let cmd = self.serve_command(&[])?;
        let controller = Spawned::start(cmd)?;
        let marker = format!("listening on {}://{}:", self.scheme(), self.listen);
        controller.wait_for_stderr(&marker, START_LIMIT)?;
        self.port = listening_port(&controller, &marker)?;
        self.admin = std::fs::read_to_string(self.data_dir.join("admin-token"))?
            .trim()
            .to_owned();
        self.controller = Some(controller);
        Ok(())
    }

    /// Restarts the controller (same data, same port, same database) with other
    /// `dutlab serve` arguments.
    pub fn serve_with(&mut self, serve_args: &[&str]) -> Result<()> {
        self.stop_controller()?;
        self.serve_args = serve_args.iter().map(|s| (*s).to_owned()).collect();
        self.serve_args.extend(self.database_args());
        self.serve()
    }

    /// The `--database` arguments of this lab's controller (none on SQLite).
    pub fn database_args(&self) -> Vec<String> {
        match &self.postgres {
            Some(server) => vec!["--database".to_owned(), server.url("dutlab")],
            None => Vec::new(),
        }
    }

    /// The lab's PostgreSQL server, if it runs on one.
    pub fn postgres(&mut self) -> Option<&mut Postgres> {
        self.postgres.as_mut()
    }

    /// A `dutlab serve` command on this lab's data directory, database and port, with extra
    /// arguments, not started.
    pub fn serve_command(&self, extra: &[&str]) -> Result<std::process::Command> {
        let mut cmd = self.sandbox.command(&self.bin)?;
        cmd.args([
            "serve",
            "--listen",
            &format!("{}:{}", self.listen, self.port),
        ])
        .arg("--data-dir")
        .arg(&self.data_dir)
        .args(&self.serve_args)
        .args(extra);
        if let Some(pki) = &self.pki {
            cmd.arg("--tls-cert")
                .arg(pki.server_cert())
                .arg("--tls-key")
                .arg(pki.server_key());
        }
        Ok(cmd)
    }

    /// Stops the controller with SIGTERM and waits for it to exit.
    pub fn stop_controller(&mut self) -> Result<()> {
        if let Some(controller) = self.controller.take() {
            controller.signal(Signal::SIGTERM)?;
            controller.finish(START_LIMIT)?;
        }
        Ok(())
    }

    /// Kills the controller with SIGKILL and starts it again on the same port and data.
    pub fn restart_controller_hard(&mut self) -> Result<()> {
        self.kill_controller_hard()?;
        self.serve()
    }

    /// Waits for the controller to exit by itself (and starts none).
    pub fn wait_controller_exit(&mut self, within: Duration) -> Result<Finished> {
        let controller = self
            .controller
            .take()
            .context("the controller is not running")?;
        controller.finish(within)
    }

    /// Kills the controller with SIGKILL (and starts none).
    pub fn kill_controller_hard(&mut self) -> Result<()> {
        if let Some(mut old) = self.controller.take() {
            old.kill_hard()?;
        }
        Ok(())
    }

    /// Starts another controller on the lab's PostgreSQL database (`serve --follow`, its own
    /// data directory and a free port) and waits until it listens; answers its port.
    pub fn follow(&mut self) -> Result<u16> {
        let database = self.database_args();
        ensure!(!database.is_empty(), "followers need a lab on PostgreSQL");
        // A fresh directory: followers that took the lead left the list but keep theirs.
        let data_dir = (2..)
            .map(|n| self.sandbox.path().join(format!("data-{n}")))
            .find(|d| !d.exists())
            .context("a free data directory name")?;
        let mut cmd = self.sandbox.command(&self.bin)?;
        cmd.args(["serve", "--follow", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .args(&database);
        if let Some(pki) = &self.pki {
            cmd.arg("--tls-cert")
                .arg(pki.server_cert())
                .arg("--tls-key")
                .arg(pki.server_key());
        }
        let process = Spawned::start(cmd)?;
        let marker = format!("listening on {}://{}:", self.scheme(), self.listen);
        process.wait_for_stderr(&marker, START_LIMIT)?;
        let port = listening_port(&process, &marker)?;
        self.followers.push(Follower {
            port,
            data_dir,
            process,
        });
        Ok(port)
    }

    /// Kills the follower on `port` with SIGKILL (it is gone from the lab); answers its
    /// stderr.
    pub fn kill_follower_hard(&mut self, port: u16) -> Result<String> {
        let at = self
            .followers
            .iter()
            .position(|f| f.port == port)
            .with_context(|| format!("no follower on port {port}"))?;
        let mut follower = self.followers.remove(at);
        follower.process.kill_hard()?;
        Ok(follower.process.stderr_text())
    }

    /// The followers started so far, in start order.
    pub fn followers(&self) -> &[Follower] {
        &self.followers
    }

    /// Makes the follower on `port` the lab's controller (it took over the database): the
    /// CLI, agents configured from now on and [`Lab::finish`] use it. The admin token stays
    /// the first controller's.
    pub fn lead_from(&mut self, port: u16) -> Result<()> {
        let at = self
            .followers
            .iter()
            .position(|f| f.port == port)
            .with_context(|| format!("no follower on port {port}"))?;
        let follower = self.followers.remove(at);
        self.port = follower.port;
        self.controller = Some(follower.process);
        Ok(())
    }

    /// Runs the CLI with `token` against the controller on `port` (the lab's or a follower).
    pub fn cli_on(&self, port: u16, token: &str, args: &[&str]) -> Result<Finished> {
        let url = format!("{}://127.0.0.1:{port}", self.scheme());
        let mut env = vec![("DUTLAB_URL", url.as_str())];
        let ca = self.pki.as_ref().map(|p| p.ca().display().to_string());
        if let Some(ca) = &ca {
            env.push(("DUTLAB_CA", ca));
        }
        self.cli_env(token, &env, args)
    }

    /// [`Lab::cli_on`] as the admin, stdout parsed as JSON (exit 0 required).
    pub fn json_on(&self, port: u16, args: &[&str]) -> Result<Value> {
        let done = self.cli_on(port, &self.admin, args)?;
        expect_code(&done, 0)?;
        serde_json::from_str(&done.stdout)
            .with_context(|| format!("{args:?}: not JSON: {} {}", done.stdout, done.stderr))
    }

    /// Makes `controller` (started by the test, e.g. a standby that took over) the lab's.
    pub fn adopt_controller(&mut self, controller: Spawned) {
        self.controller = Some(controller);
    }

    /// The running controller process.
    pub fn controller(&self) -> Result<&Spawned> {
        self.controller
            .as_ref()
            .context("the controller is not running")
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn scheme(&self) -> &'static str {
        if self.pki.is_some() { "https" } else { "http" }
    }

    /// `http://127.0.0.1:PORT`, or `https://...` for a TLS lab.
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.port)
    }

    /// The PKI of a TLS lab.
    pub fn pki(&self) -> Result<&Pki> {
        self.pki.as_ref().context("this lab serves no TLS")
    }

    /// The admin token `dutlab serve` wrote on first start.
    pub fn admin(&self) -> &str {
        &self.admin
    }

    /// Runs the CLI with the given token (trusting the lab's CA in a TLS lab).
    pub fn cli_as(&self, token: &str, args: &[&str]) -> Result<Finished> {
        match &self.pki {
            Some(pki) => {
                let ca = pki.ca().display().to_string();
                self.cli_env(token, &[("DUTLAB_CA", &ca)], args)
            }
            None => self.cli_env(token, &[], args),
        }
    }

    /// Runs the CLI with the given token and exactly these extra environment variables (no
    /// `DUTLAB_CA` unless given).
    pub fn cli_env(&self, token: &str, env: &[(&str, &str)], args: &[&str]) -> Result<Finished> {
        let mut cmd = self.sandbox.command(&self.bin)?;
        cmd.args(args)
            .env("DUTLAB_URL", self.url())
            .env("DUTLAB_TOKEN", token)
            .env("XDG_CONFIG_HOME", self.sandbox.path().join("config"));
        for (name, value) in env {
            cmd.env(name, value);
        }
        Spawned::start(cmd)?.finish(CLI_LIMIT)
    }

    /// Runs the CLI as the admin.
    pub fn cli(&self, args: &[&str]) -> Result<Finished> {
        self.cli_as(&self.admin, args)
    }

    /// Runs the CLI and parses its stdout as JSON (exit 0 required).
    pub fn json_as(&self, token: &str, args: &[&str]) -> Result<Value> {
        let done = self.cli_as(token, args)?;
        expect_code(&done, 0)?;
        serde_json::from_str(&done.stdout)
            .with_context(|| format!("{args:?}: not JSON: {} {}", done.stdout, done.stderr))
    }

    /// [`Lab::json_as`] as the admin.
    pub fn json(&self, args: &[&str]) -> Result<Value> {
        self.json_as(&self.admin, args)
    }

    /// `token create --name NAME --role ROLE`: a token of the user `name`.
    pub fn token(&self, name: &str, role: &str) -> Result<String> {
        self.token_args(&["--name", name, "--role", role])
    }

    /// A token named `name` that speaks for `user`.
    pub fn user_token(&self, name: &str, role: &str, user: &str) -> Result<String> {
        self.token_args(&["--name", name, "--role", role, "--user", user])
    }

    fn token_args(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["token", "create"];
        all.extend_from_slice(args);
        let done = self.cli(&all)?;
        expect_code(&done, 0)?;
        let token = done.stdout.trim().to_owned();
        ensure!(
            token.starts_with("dutlab_") && !token.contains('\n'),
            "token create printed {:?}",
            done.stdout
        );
        Ok(token)
    }

    /// Writes the configuration of agent `name` with `qemu` default QEMU devices (its token in
    /// `<sandbox>/<name>/token`, work directory `<sandbox>/<name>/work`; in a TLS lab it trusts
    /// the lab's CA) without starting it; answers the path of its `agent.yaml`.
    pub fn agent_config(&self, name: &str, qemu: usize) -> Result<PathBuf> {
        let trust = match &self.pki {
            Some(pki) => format!("ca_file: {:?}", pki.ca().display().to_string()),
            None => String::new(),
        };
        self.agent_config_trusting(name, qemu, &trust)
    }

    /// [`Lab::agent_config`] with `trust` (YAML lines such as `pin: sha256:...`) appended
    /// instead of the lab's CA.
    pub fn agent_config_trusting(&self, name: &str, qemu: usize, trust: &str) -> Result<PathBuf> {
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
        std::fs::write(&config, format!("{}\n{trust}\n", init.stdout))?;
        Ok(config)
    }

    /// Starts agent `name` with `qemu` default QEMU devices and waits until they are idle;
    /// answers its work directory.
    pub fn agent(&mut self, name: &str, qemu: usize) -> Result<PathBuf> {
        let config = self.agent_config(name, qemu)?;
        self.spawn_agent(&config)?;
        self.wait_devices_idle(name, qemu)?;
        Ok(self.sandbox.path().join(name).join("work"))
    }

    /// Starts `dutlab agent --config CONFIG` (it is stopped by [`Lab::finish`]).
    pub fn spawn_agent(&mut self, config: &Path) -> Result<&mut Spawned> {
        let mut cmd = self.sandbox.command(&self.bin)?;
        cmd.arg("agent").arg("--config").arg(config);
        self.agents.push(Spawned::start(cmd)?);
        let last = self.agents.len() - 1;
        Ok(&mut self.agents[last])
    }

    /// The agents started so far, in start order.
    pub fn agents_mut(&mut self) -> &mut Vec<Spawned> {
        &mut self.agents
    }

    /// Waits until `count` devices of `agent` are idle.
    pub fn wait_devices_idle(&self, agent: &str, count: usize) -> Result<()> {
        wait_until(
            &format!("{count} idle device(s) of agent {agent}"),
            START_LIMIT,
            || {
                let devices = self.json(&["device", "list", "--json"])?;
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

    /// Writes a file into the sandbox.
    pub fn write(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.sandbox.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Submits a job file as `token` and answers its id.
    pub fn submit_as(&self, token: &str, job: &Path) -> Result<u64> {
        let view = self.json_as(
            token,
            &["job", "submit", &job.display().to_string(), "--json"],
        )?;
        view["id"].as_u64().context("job id")
    }

    /// Submits a job file as the admin.
    pub fn submit(&self, job: &Path) -> Result<u64> {
        self.submit_as(&self.admin, job)
    }

    /// `job show --json` as the admin.
    pub fn job(&self, id: u64) -> Result<Value> {
        self.json(&["job", "show", &id.to_string(), "--json"])
    }

    /// Waits until job `id` is in `state`; answers its view then.
    pub fn wait_state(&self, id: u64, state: &str, within: Duration) -> Result<Value> {
        wait_until(&format!("job {id} {state}"), within, || {
            let job = self.job(id)?;
            Ok((job["state"] == state).then_some(job))
        })
    }

    /// Waits until the stored log of a job has a record containing `text`.
    pub fn wait_for_line(&self, id: u64, text: &str) -> Result<()> {
        wait_until(
            &format!("{text:?} in the log of job {id}"),
            CLI_LIMIT,
            || {
                Ok(self
                    .log(id)?
                    .iter()
                    .any(|r| r["text"].as_str().is_some_and(|t| t.contains(text)))
                    .then_some(()))
            },
        )
    }

    /// The stored log of a job, one JSON record per line.
    pub fn log(&self, id: u64) -> Result<Vec<Value>> {
        let done = self.cli(&["job", "logs", &id.to_string(), "--json"])?;
        expect_code(&done, 0)?;
        done.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).with_context(|| format!("log line {l:?}")))
            .collect()
    }

    /// The stored log of a job as text, one record per line.
    pub fn log_text(&self, id: u64) -> Result<String> {
        let mut out = String::new();
        for record in self.log(id)? {
            out.push_str(record["text"].as_str().unwrap_or_default());
            out.push('\n');
        }
        Ok(out)
    }

    /// One raw HTTP/1.1 request with a bearer token (plain HTTP only); answers (status, body).
    pub fn http(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>)> {
        self.http_declaring(method, path, token, body, body.len())
    }

    /// [`Lab::http`] with `Content-Type: application/json`.
    pub fn http_json(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: &serde_json::Value,
    ) -> Result<(u16, Vec<u8>)> {
        let body = body.to_string();
        self.raw_http(
            method,
            path,
            token,
            "Content-Type: application/json\r\n",
            body.as_bytes(),
            body.len(),
        )
    }

    /// A request whose `Content-Length` says `declared` bytes (the body may be shorter: a
    /// server that refuses by the header answers without reading it).
    pub fn http_declaring(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: &[u8],
        declared: usize,
    ) -> Result<(u16, Vec<u8>)> {
        self.raw_http(method, path, token, "", body, declared)
    }

    fn raw_http(
        &self,
        method: &str,
        path: &str,
        token: &str,
        headers: &str,
        body: &[u8],
        declared: usize,
    ) -> Result<(u16, Vec<u8>)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(START_LIMIT))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
             {headers}Content-Length: {declared}\r\nConnection: close\r\n\r\n",
        )?;
        stream.write_all(body)?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        let split = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .context("no end of headers")?;
        let head = String::from_utf8_lossy(&answer[..split]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no status in {head:?}"))?;
        Ok((status, answer[split + 4..].to_vec()))
    }

    /// Stops the agents (SIGTERM) and the controller, then proves no QEMU is left (and, on
    /// PostgreSQL, that the server stopped with nothing left running).
    pub fn finish(mut self) -> Result<()> {
        for agent in &self.agents {
            let _ = agent.signal(Signal::SIGTERM);
        }
        for agent in std::mem::take(&mut self.agents) {
            let _ = agent.finish(START_LIMIT);
        }
        self.sandbox.assert_no_qemu_left()?;
        if self.postgres.is_some() {
            for follower in std::mem::take(&mut self.followers) {
                follower.process.signal(Signal::SIGTERM)?;
                follower.process.finish(START_LIMIT)?;
            }
            self.stop_controller()?;
        }
        if let Some(server) = self.postgres.as_mut() {
            server.stop()?;
        }
        Ok(())
    }
}

/// A job whose DUT prints `line-1` ... `line-N`, one every `pause` seconds.
pub fn numbered_job(name: &str, lines: u32, pause: &str) -> String {
    let step =
        format!("i=1; while [ $i -le {lines} ]; do echo line-$i; i=$((i+1)); sleep {pause}; done");
    crate::inline_job(
        name,
        "  job: 5m",
        &[&step, "lava-test-case counted --result pass"],
    )
}

/// Checks that log records (JSON, as `job logs --json` prints them) are numbered 1..n with no
/// gap marker, and that their console lines hold `line-1` .. `line-N` exactly once, in order.
pub fn check_numbered(log: &[Value], lines: u32) -> Result<()> {
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
/// A lab that is dropped prints what its controllers wrote on stderr: the test harness shows it
/// only for a failing test, which is where a follower's or the leader's last error is wanted.
impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(controller) = &self.controller {
            eprintln!("--- controller stderr ---\n{}", controller.stderr_text());
        }
        for follower in &self.followers {
            eprintln!(
                "--- follower on port {} stderr ---\n{}",
                follower.port,
                follower.process.stderr_text()
            );
        }
    }
}
