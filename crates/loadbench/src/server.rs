//! The controller under test: a real `dutlab serve` process on 127.0.0.1 with a fresh data
//! directory, its tokens, job submission over HTTP, and what `/proc` says about it.

use anyhow::{Context, bail};
use proto::api::{CreatedToken, JobView};
use rustls::ClientConfig;
use serde_json::json;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Clock ticks per second in `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

pub struct Controller {
    child: Child,
    pub pid: u32,
    /// `127.0.0.1:PORT`
    pub addr: String,
    pub admin: String,
    pub http: reqwest::Client,
    /// The client configuration trusting the controller's CA when it serves TLS.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

/// Memory and threads of the controller process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub threads: u64,
}

impl Memory {
    pub fn text(&self) -> String {
        format!(
            "VmRSS {} MiB, VmHWM {} MiB",
            mib(self.rss_kib),
            mib(self.hwm_kib)
        )
    }
    pub fn json(&self) -> serde_json::Value {
        json!({"vm_rss_kib": self.rss_kib, "vm_hwm_kib": self.hwm_kib, "threads": self.threads})
    }
}

pub fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// CPU seconds per thread name (threads of a pool share a name), summed.
pub type ThreadCpu = BTreeMap<String, f64>;

/// The benchmark's one user queues far more than a lab's default quota allows (10,000 jobs):
/// lift the queued-jobs quota unless `--serve-arg` sets it.
fn quota_args(extra: &[String]) -> Vec<String> {
    if extra.iter().any(|a| a.starts_with("--quota-queued-jobs")) {
        Vec::new()
    } else {
        vec!["--quota-queued-jobs".into(), u64::MAX.to_string()]
    }
}

/// How a controller joins the lab.
#[derive(Debug, Clone)]
pub enum Join {
    /// The first (or only) controller: it makes the database and the first admin token.
    First,
    /// `serve --follow` on the first one's PostgreSQL database: it shares its admin token.
    Follower { admin: String },
}

impl Controller {
    /// Starts the only controller (see [`Controller::start_as`]).
    pub async fn start(dutlab: &Path, extra: &[String], tls: bool) -> anyhow::Result<Controller> {
        Controller::start_as(dutlab, extra, tls, Join::First).await
    }

    /// Starts `dutlab serve` and waits until `/healthz` answers. `tls`: with a fresh lab PKI
    /// (`tls::pki::init`, the code of `dutlab tls init`), serving https and wss only.
    pub async fn start_as(
        dutlab: &Path,
        extra: &[String],
        tls: bool,
        join: Join,
    ) -> anyhow::Result<Controller> {
        let dir = tempfile::Builder::new()
            .prefix("dutlab-loadbench-")
            .tempdir()
            .context("cannot make a temporary data directory")?;
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let stderr = dir.path().join("serve.stderr");
        let err_file = File::create(&stderr).context("cannot create the controller's log")?;
        let mut tls_args = Vec::new();
        let mut client_tls = None;
        if tls {
            let pki = tls::pki::init(&dir.path().join("pki"), &["127.0.0.1".to_owned()])
                .context("cannot make the lab PKI")?;
            tls_args.push("--tls-cert".into());
            tls_args.push(pki.server_cert.clone().into_os_string());
            tls_args.push("--tls-key".into());
            tls_args.push(pki.server_key.clone().into_os_string());
            let config = tls::client_config(&tls::Trust::CaFile(pki.ca_cert))
                .context("cannot build the TLS client configuration")?;
            client_tls = Some(Arc::new(config));
        }
        let follow: &[&str] = match join {
            Join::First => &[],
            Join::Follower { .. } => &["--follow"],
        };
        let child = Command::new(dutlab)
            .arg("serve")
            .args(follow)
            .arg("--listen")
            .arg(&addr)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(&tls_args)
            .args(extra)
            .args(quota_args(extra))
            .env("DUTLAB_LOG", log_filter(&join))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(err_file))
            .spawn()
            .with_context(|| format!("cannot start {}", dutlab.display()))?;
        let pid = child.id();
        let mut builder = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true);
        if let Some(config) = &client_tls {
            builder = builder.tls_backend_preconfigured(ClientConfig::clone(config));
        }
        let http = builder.build().context("cannot build the HTTP client")?;
        let mut controller = Controller {
            child,
            pid,
            addr,
            admin: String::new(),
            http,
            tls: client_tls,
            stderr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            controller.check_alive()?;
            let url = controller.url("/healthz");
            if let Ok(r) = controller.http.get(&url).send().await
                && r.status().is_success()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("dutlab serve did not answer /healthz within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        controller.admin = match join {
            Join::Follower { admin } => admin,
            Join::First => {
                let token_path = controller._dir.path().join("data/admin-token");
                std::fs::read_to_string(&token_path)
                    .with_context(|| format!("cannot read {}", token_path.display()))?
                    .trim()
                    .to_owned()
            }
        };
        Ok(controller)
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr)
    }

    pub fn ws_url(&self, path: &str) -> String {
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        format!("{scheme}://{}{path}", self.addr)
    }

    /// Fails with the tail of the controller's log when it is no longer running.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self
            .child
            .try_wait()
            .context("cannot wait for dutlab serve")?
        {
            bail!(
                "dutlab serve exited ({status}); its last log lines:\n{}",
                self.log_tail(20)
            );
        }
        Ok(())
    }

    /// Creates a token with this role.
    pub async fn token(&self, name: &str, role: &str) -> anyhow::Result<String> {
        let r = self
            .http
            .post(self.url("/api/v1/tokens"))
            .bearer_auth(&self.admin)
            .json(&json!({"name": name, "role": role}))
            .send()
            .await
            .context("POST /api/v1/tokens")?;
        let status = r.status();
        if !status.is_success() {
            bail!(
                "POST /api/v1/tokens answered {status}: {}",
                r.text().await.unwrap_or_default()
            );
        }
        let created: CreatedToken = r.json().await.context("POST /api/v1/tokens: answer")?;
        Ok(created.token)
    }

    /// Submits a job that waits for a device; answers the job as the API shows it.
    pub async fn submit(&self, token: &str, definition: &str) -> anyhow::Result<JobView> {
        let r = self
            .http
            .post(self.url("/api/v1/jobs"))
            .bearer_auth(token)
            .json(&json!({"definition": definition, "wait_for_device": true}))
            .send()
            .await
            .context("POST /api/v1/jobs")?;
        let status = r.status();
        if status != reqwest::StatusCode::CREATED {
            bail!(
                "POST /api/v1/jobs answered {status}: {}",
                r.text().await.unwrap_or_default()
            );
        }
        r.json().await.context("POST /api/v1/jobs: answer")
    }

    /// VmRSS, VmHWM and threads from `/proc/<pid>/status`.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        let path = format!("/proc/{}/status", self.pid);
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let mut m = Memory::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some(key), Some(value)) = (words.next(), words.next()) else {
                continue;
            };
            let value: u64 = value.parse().unwrap_or(0);
            match key {
                "VmRSS:" => m.rss_kib = value,
                "VmHWM:" => m.hwm_kib = value,
                "Threads:" => m.threads = value,
                _ => {}
            }
        }
        Ok(m)
    }

    /// Open file descriptors of the controller.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid)).map_or(0, |d| d.count())
    }

    /// CPU seconds (user + system) of every live thread, summed by thread name.
    pub fn thread_cpu(&self) -> ThreadCpu {
        let mut out = ThreadCpu::new();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return out;
        };
        for task in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            if let Some((name, secs)) = parse_stat(&stat) {
                *out.entry(name).or_default() += secs;
            }
        }
        out
    }

    /// CPU seconds (user + system) of the whole process so far.
    pub fn cpu(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .ok()
            .and_then(|s| parse_stat(&s))
            .map_or(0.0, |(_, secs)| secs)
    }

    /// Warning and error lines the controller logged so far.
    pub fn log_lines(&self) -> Vec<String> {
        let Ok(file) = File::open(&self.stderr) else {
            return Vec::new();
        };
        BufReader::new(file).lines().map_while(Result::ok).collect()
    }

    fn log_tail(&self, n: usize) -> String {
        let lines = self.log_lines();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// How many times this controller said it took the lead.
    pub fn leads_count(&self) -> usize {
        self.log_lines()
            .iter()
            .filter(|l| l.contains(LEADS_NOW))
            .count()
    }

    /// SIGKILL now, as a crash would; answers when the process is gone.
    pub fn kill_hard(&mut self) -> anyhow::Result<()> {
        self.child.kill().context("cannot kill dutlab serve")?;
        self.child.wait().context("cannot wait for dutlab serve")?;
        Ok(())
    }

    /// SIGTERM, then SIGKILL after 10 s. Answers the controller's log lines and the CPU
    /// seconds it used in its whole life.
    pub fn stop(&mut self) -> (Vec<String>, f64) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        if !matches!(self.child.try_wait(), Ok(None)) {
            return (self.log_lines(), 0.0);
        }
        let cpu = self.cpu();
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        (self.log_lines(), cpu)
    }
}

/// What the controller logs: warnings and errors; a follower also says when it takes the
/// lead ([`LEADS_NOW`]).
fn log_filter(join: &Join) -> &'static str {
    match join {
        Join::First => "warn",
        Join::Follower { .. } => "warn,dutlab_controller::dispatcher::replica=info",
    }
}

/// What a follower logs when it took the database's lock.
pub const LEADS_NOW: &str = "this controller leads now";

/// The error with the controller's first log line (and how many it wrote), if any.
pub fn with_log(ctl: &mut Controller, e: anyhow::Error) -> anyhow::Error {
    let (log, _) = ctl.stop();
    match log.first() {
        None => e,
        Some(first) => anyhow::anyhow!(
            "{e:#}; controller logged {} line(s), first: {first}",
            log.len()
        ),
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Thread name and CPU seconds from a `stat` line (`pid (comm) state ... utime stime ...`).
fn parse_stat(stat: &str) -> Option<(String, f64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    // After ") ": state is field 3; utime and stime are fields 14 and 15.
    let rest: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    let utime: f64 = rest.get(11)?.parse().ok()?;
    let stime: f64 = rest.get(12)?.parse().ok()?;
    Some((name, (utime + stime) / USER_HZ))
}

/// A port nobody listens on right now (the kernel picks it; released before use).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Differences of per-thread CPU between two readings (threads that appeared count whole).
pub fn cpu_delta(before: &ThreadCpu, after: &ThreadCpu) -> ThreadCpu {
    after
        .iter()
        .map(|(name, secs)| {
            let was = before.get(name).copied().unwrap_or(0.0);
            (name.clone(), secs - was)
        })
        .filter(|(_, d)| *d > 0.0)
        .collect()
}

/// `tokio-runtime-w 3.10 s, sqlx-sqlite-wor 1.20 s`
pub fn cpu_text(cpu: &ThreadCpu) -> String {
    let mut v: Vec<(&String, &f64)> = cpu.iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(a.1));
    if v.is_empty() {
        return "under 0.01 s per thread".into();
    }
    v.iter()
        .map(|(n, s)| format!("{n} {s:.2} s"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_spaces_in_the_name() {
        let line = "42 (tokio-runtime w) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        let (name, secs) = parse_stat(line).expect("parses");
        assert_eq!(name, "tokio-runtime w");
        assert!((secs - 3.0).abs() < 1e-9);
    }
}
