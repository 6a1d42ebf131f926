//! A private PostgreSQL server for one test: `initdb` into a temporary directory, `pg_ctl`
//! start with a unix socket in that directory and no TCP listener, stopped when dropped.
//!
//! Invariants:
//! - No system service and no shared cluster: each [`Postgres`] is its own cluster, reachable
//!   only through its socket directory (mode 0700, owned by the server's user), with one
//!   superuser `dutlab` trusted on that socket.
//! - `initdb` refuses to run as root: a test running as root runs the server programs as the
//!   `postgres` system user (made by Debian's package) or else `nobody`, owning the directory.
//! - Nothing is left behind: [`Postgres::stop`] (and drop) shuts the server down and then
//!   waits until the postmaster and every process it had started are gone, killing them if
//!   a shutdown does not finish; `stop` fails the test if it had to.
//! - Durability is not what test servers test: [`Postgres::start`] runs with `fsync=off` (an
//!   immediate stop or a killed server still loses nothing committed, since the kernel keeps
//!   the writes). A benchmark that compares stores starts one with [`Durability::Fsync`], as a
//!   lab's server runs.

use anyhow::{Context, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The superuser of every test cluster.
pub const USER: &str = "dutlab";

/// Whether the server flushes its writes to disk at commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `fsync=off`, `full_page_writes=off`: for tests.
    NoFsync,
    /// PostgreSQL's defaults (fsync at commit): for benchmarks.
    Fsync,
}

/// One running (or stopped) private server.
pub struct Postgres {
    dir: tempfile::TempDir,
    durability: Durability,
    bin: PathBuf,
    /// uid and gid the server programs run as (None: as this process).
    owner: Option<(u32, u32)>,
    /// The postmaster and its children while running.
    processes: Vec<u32>,
}

impl Postgres {
    /// Makes a cluster in a new temporary directory and starts its server.
    pub fn start() -> anyhow::Result<Postgres> {
        Postgres::start_with(Durability::NoFsync)
    }

    /// Makes a cluster in a new temporary directory and starts its server with this
    /// durability.
    pub fn start_with(durability: Durability) -> anyhow::Result<Postgres> {
        let bin = server_bin_dir()?;
        let owner = server_owner()?;
        let dir = tempfile::Builder::new().prefix("dutlab-pg-").tempdir()?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .with_context(|| format!("giving {} to uid {uid}", dir.path().display()))?;
        }
        let mut server = Postgres {
            dir,
            durability,
            bin,
            owner,
            processes: Vec::new(),
        };
        let data = server.data_dir();
        let init = server
            .program("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", USER, "-A", "trust", "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "--no-instructions"])
            .output()
            .context("running initdb")?;
        ensure!(
            init.status.success(),
            "initdb failed ({}): {}",
            init.status,
            String::from_utf8_lossy(&init.stderr)
        );
        server.start_again()?;
        Ok(server)
    }

    /// The directory of the server's socket (`host=` of a connection).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A connection URL of `database` for sqlx (the unix socket; no TCP).
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{USER}@localhost/{database}?host={}",
            self.socket_dir().display()
        )
    }

    /// Creates a database and answers its URL.
    pub fn create_database(&self, name: &str) -> anyhow::Result<String> {
        let done = self
            .program("createdb")
            .arg("-h")
            .arg(self.socket_dir())
            .args(["-U", USER, name])
            .output()
            .context("running createdb")?;
        ensure!(
            done.status.success(),
            "createdb {name} failed: {}",
            String::from_utf8_lossy(&done.stderr)
        );
        Ok(self.url(name))
    }

    /// Runs SQL with `psql` on `database` and answers its unaligned output (`|` between
    /// columns, one line a row).
    pub fn psql(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        let done = self
            .program("psql")
            .arg("-h")
            .arg(self.socket_dir())
            .args([
                "-U",
                USER,
                "-d",
                database,
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .context("running psql")?;
        ensure!(
            done.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&done.stderr)
        );
        Ok(String::from_utf8_lossy(&done.stdout).trim_end().to_owned())
    }

    /// Starts the server of this cluster (after [`Postgres::stop`]).
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        ensure!(self.processes.is_empty(), "the server is running");
        let mut options = format!("-c listen_addresses='' -k {}", self.socket_dir().display());
        if self.durability == Durability::NoFsync {
            options.push_str(" -c fsync=off -c full_page_writes=off");
        }
        let log = self.dir.path().join("server.log");
        let started = self
            .program("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-s", "-w", "-t", "60", "-o", &options, "-l"])
            .arg(&log)
            .arg("start")
            .output()
            .context("running pg_ctl start")?;
        if !started.status.success() {
            bail!(
                "pg_ctl start failed ({}): {}\nserver log:\n{}",
                started.status,
                String::from_utf8_lossy(&started.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        let pid = self.postmaster_pid()?;
        self.processes = std::iter::once(pid).chain(children_of(pid)).collect();
        Ok(())
    }

    /// Shuts the server down (fast: sessions are ended, everything committed is kept) and
    /// fails unless every one of its processes is gone afterwards.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.shutdown("fast")
    }

    /// Stops the server as a crash would (`immediate`: no checkpoint; recovery at the next
    /// start), and fails unless every one of its processes is gone afterwards.
    pub fn stop_immediately(&mut self) -> anyhow::Result<()> {
        self.shutdown("immediate")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn shutdown(&mut self, mode: &str) -> anyhow::Result<()> {
        if self.processes.is_empty() {
            return Ok(());
        }
        if let Ok(pid) = self.postmaster_pid() {
            // Sessions started since the server did are its children too.
            self.processes.extend(children_of(pid));
        }
        let stopped = self
            .program("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-s", "-w", "-t", "30", "-m", mode, "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let processes = std::mem::take(&mut self.processes);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left: Vec<u32> = processes.iter().copied().filter(|p| alive(*p)).collect();
            if left.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                for pid in &left {
                    let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
                }
                bail!("PostgreSQL processes {left:?} survived pg_ctl stop -m {mode}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        match stopped {
            Ok(status) if status.success() => Ok(()),
            other => bail!("pg_ctl stop -m {mode}: {other:?}"),
        }
    }

    fn postmaster_pid(&self) -> anyhow::Result<u32> {
        let path = self.data_dir().join("postmaster.pid");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .with_context(|| format!("no pid in {}", path.display()))
    }

    /// A server program, run as the cluster's owner.
    fn program(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(name));
        cmd.stdin(Stdio::null())
            .env("LC_ALL", "C")
            .env_remove("PGDATA");
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.shutdown("fast").is_err() {
            let _ = self.shutdown("immediate");
        }
    }
}

/// Where `initdb`, `pg_ctl` and `postgres` are: `$DUTLAB_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<major>/bin` (Debian keeps them off PATH), else PATH.
pub fn server_bin_dir() -> anyhow::Result<PathBuf> {
    let complete = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|p| dir.join(p).is_file())
    };
    if let Some(dir) = std::env::var_os("DUTLAB_PG_BIN") {
        let dir = PathBuf::from(dir);
        ensure!(
            complete(&dir),
            "DUTLAB_PG_BIN={} holds no initdb, pg_ctl and postgres",
            dir.display()
        );
        return Ok(dir);
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| complete(bin))
        .collect();
    debian.sort();
    if let Some((_, bin)) = debian.pop() {
        return Ok(bin);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        if complete(&dir) {
            return Ok(dir);
        }
    }
    bail!(
        "no PostgreSQL server programs (initdb, pg_ctl, postgres) in /usr/lib/postgresql/*/bin \
         or on PATH: run scripts/install-deps.sh (Debian package postgresql), or set DUTLAB_PG_BIN"
    )
}

/// As whom the server programs run: this process, unless it is root (initdb refuses root).
fn server_owner() -> anyhow::Result<Option<(u32, u32)>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    for name in ["postgres", "nobody"] {
        if let Some(user) = nix::unistd::User::from_name(name)? {
            return Ok(Some((user.uid.as_raw(), user.gid.as_raw())));
        }
    }
    bail!("running as root and there is neither a `postgres` nor a `nobody` user to run initdb as")
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie is dead, just not yet reaped by its parent.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}
