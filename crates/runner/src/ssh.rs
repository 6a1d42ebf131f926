//! OpenSSH client processes for secondary connections: a login shell on another device, fed
//! into a [`ConsoleHub`] so the runner's shell, prompt wait and test runs work over it as over
//! a serial console; a file copy over the same kind of connection; the group's key pair.
//!
//! ```text
//!  ssh -tt ... user@addr ── stdout ──> ConsoleHub pump ──> DutShell (prompts, tests)
//!                        <── stdin ─── ConsoleHub input <──
//!  ssh -T ... user@addr "cat > '/<job>-overlay-<level>.tar.gz'"  <── the gzipped overlay
//! ```
//!
//! Invariants:
//! - Every `ssh` runs with `-F /dev/null` (no user or system configuration), `BatchMode`
//!   (no password or passphrase prompt), only the job's key (`IdentitiesOnly`, no agent), a
//!   known-hosts file of the job's own (`accept-new`: the first key seen is kept for the rest
//!   of the job, a changed one refuses the connection), and no forwarding of any kind.
//! - The address is an [`IpAddr`] (never a name: nothing is resolved), the port and user are
//!   given as separate arguments, and the remote command is one quoted word: nothing of what
//!   a DUT printed becomes an option or a shell word on the host.
//! - The private key is written only into the job's work directory ([`write_private_key`]),
//!   created new with mode 0600 in a 0700 directory; it goes away with the work directory.
//! - Every wait is bounded by a [`Limit`]; every child is killed when its handle is dropped.

use crate::{JobEnd, Limit};
use driver::console::{ConsoleHub, Recorder};
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

/// Where a secondary connection logs in: the address and port of the host's SSH server,
/// the user, and the private key file (in the job's work directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub address: SocketAddr,
    pub user: String,
    /// The private key (0600, in the job's work directory).
    pub key: PathBuf,
    /// The job's own known-hosts file.
    pub known_hosts: PathBuf,
}

/// Why a key pair could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot run ssh-keygen (Debian package openssh-client): {0}")]
    Spawn(std::io::Error),
    #[error("ssh-keygen failed ({0})")]
    Failed(std::process::ExitStatus),
    #[error("cannot read the key pair ssh-keygen made: {0}")]
    Read(std::io::Error),
}

/// A key pair made for one group: the guests' runners log in with `private`, the host's
/// runner authorizes `public`.
#[derive(Clone)]
pub struct KeyPair {
    /// OpenSSH private key text.
    pub private: String,
    /// One `authorized_keys` line.
    pub public: String,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// Makes an ed25519 key pair with `ssh-keygen` in a new directory under `dir`, reads it and
/// removes the files.
pub fn generate_key_pair(dir: &Path) -> Result<KeyPair, KeyError> {
    let tmp = tempfile::Builder::new()
        .prefix("dutlab-key-")
        .tempdir_in(dir)
        .map_err(KeyError::Read)?;
    let path = tmp.path().join("id_ed25519");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "dutlab-group", "-f"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(KeyError::Spawn)?;
    if !status.success() {
        return Err(KeyError::Failed(status));
    }
    let private = std::fs::read_to_string(&path).map_err(KeyError::Read)?;
    let public = std::fs::read_to_string(path.with_extension("pub")).map_err(KeyError::Read)?;
    Ok(KeyPair {
        private,
        public: public.trim().to_string(),
    })
}

/// Writes `private` as `work/ssh/id` (0600, directory 0700, never over an existing file)
/// and answers the key path and the job's known-hosts path next to it.
pub fn write_private_key(work: &Path, private: &str) -> Result<(PathBuf, PathBuf), JobEnd> {
    let dir = work.join("ssh");
    let fail = |e: std::io::Error| JobEnd::infra_error(format!("cannot write the SSH key: {e}"));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .or_else(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Ok(()),
            _ => Err(e),
        })
        .map_err(fail)?;
    let key = dir.join("id");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key)
        .map_err(fail)?;
    let mut text = private.to_string();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    file.write_all(text.as_bytes()).map_err(fail)?;
    Ok((key, dir.join("known_hosts")))
}

/// An `ssh` command to `target` with the fixed options; `tty` chooses `-tt` or `-T`.
fn ssh_command(target: &SshTarget, connect: Duration, tty: Tty) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.env_remove("SSH_AUTH_SOCK")
        .arg("-F")
        .arg("/dev/null")
        .arg(match tty {
            Tty::Forced => "-tt",
            Tty::None => "-T",
        })
        .arg("-i")
        .arg(&target.key)
        .arg("-p")
        .arg(target.address.port().to_string())
        .arg("-l")
        .arg(&target.user);
    let known = format!("UserKnownHostsFile={}", target.known_hosts.display());
    let timeout = format!("ConnectTimeout={}", connect.as_secs().clamp(1, 60));
    for option in [
        "BatchMode=yes",
        "IdentitiesOnly=yes",
        "IdentityAgent=none",
        "StrictHostKeyChecking=accept-new",
        known.as_str(),
        "GlobalKnownHostsFile=/dev/null",
        "UpdateHostKeys=no",
        timeout.as_str(),
        "ServerAliveInterval=15",
        "ServerAliveCountMax=4",
        "ForwardAgent=no",
        "ForwardX11=no",
        "ClearAllForwardings=yes",
        "PermitLocalCommand=no",
        "ControlMaster=no",
        "ControlPath=none",
        "ProxyCommand=none",
        "LogLevel=ERROR",
    ] {
        cmd.arg("-o").arg(option);
    }
    let host = match target.address.ip() {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => ip.to_string(),
    };
    cmd.arg("--").arg(host);
    cmd.kill_on_drop(true);
    cmd
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tty {
    Forced,
    None,
}

/// Runs `remote` (one word for the remote shell) on `target` with `input` on its stdin.
async fn run(
    target: &SshTarget,
    remote: &str,
    input: &[u8],
    limit: Limit,
) -> Result<std::process::Output, JobEnd> {
    let mut cmd = ssh_command(
        target,
        limit
            .at
            .saturating_duration_since(tokio::time::Instant::now()),
        Tty::None,
    );
    cmd.arg(remote)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        JobEnd::infra_error(format!(
            "cannot run ssh (Debian package openssh-client): {e}"
        ))
    })?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| JobEnd::infra_error("ssh: no stdin"))?;
    let input = input.to_vec();
    let feed = async move {
        // A remote that exits early closes the pipe: its status says why.
        let _ = stdin.write_all(&input).await;
        drop(stdin);
    };
    let work = async {
        let (_, out) = tokio::join!(feed, child.wait_with_output());
        out
    };
    match tokio::time::timeout_at(limit.at, work).await {
        Ok(out) => out.map_err(|e| JobEnd::infra_error(format!("ssh: {e}"))),
        Err(_) => Err(JobEnd::timed_out(format!(
            "{} timeout ({}) fired while ssh to {} ran {remote:?}",
            limit.level,
            crate::human_duration(limit.length),
            target.address
        ))),
    }
}

/// Waits until `target` accepts a login (an SSH server that is still starting may accept and
/// close connections), retrying until `limit`. The first host key seen is kept.
pub async fn wait_ready(target: &SshTarget, limit: Limit) -> Result<(), JobEnd> {
    let mut last = String::new();
    loop {
        match run(target, "true", b"", limit).await {
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => last = stderr_line(&out.stderr, out.status),
            Err(e) if e.outcome == proto::Outcome::TimedOut => {
                return Err(JobEnd::timed_out(format!("{}; last: {last}", e.reason)));
            }
            Err(e) => return Err(e),
        }
        if tokio::time::Instant::now() + Duration::from_secs(1) >= limit.at {
            return Err(JobEnd::timed_out(format!(
                "{} timeout ({}) fired before ssh to {} logged in: {last}",
                limit.level,
                crate::human_duration(limit.length),
                target.address
            )));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Copies `bytes` to the file `remote_path` on `target` (`cat > 'PATH'`, the path quoted).
pub async fn copy_file(
    target: &SshTarget,
    remote_path: &str,
    bytes: &[u8],
    limit: Limit,
) -> Result<(), JobEnd> {
    let remote = format!("cat > {}", crate::overlay::quote(remote_path));
    let out = run(target, &remote, bytes, limit).await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(JobEnd::infra_error(format!(
            "copying {remote_path} to {} failed: {}",
            target.address,
            stderr_line(&out.stderr, out.status)
        )))
    }
}

/// The first line of what ssh printed, control characters replaced, with the status.
fn stderr_line(stderr: &[u8], status: std::process::ExitStatus) -> String {
    let text = String::from_utf8_lossy(stderr);
    let line: String = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .chars()
        .take(300)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    format!("{line} ({status})")
}

/// A login shell on `target` over `ssh -tt`, its output and input on a [`ConsoleHub`].
pub struct SshConsole {
    child: Child,
    hub: ConsoleHub,
}

impl std::fmt::Debug for SshConsole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshConsole")
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

impl SshConsole {
    /// Starts `ssh -tt` to `target`; every byte of its output goes to `recorder` first.
    pub fn open(
        target: &SshTarget,
        connect: Duration,
        recorder: Recorder,
    ) -> Result<SshConsole, JobEnd> {
        let mut cmd = ssh_command(target, connect, Tty::Forced);
        // ssh's own messages (not the remote's, which come through the pty) are dropped: the
        // connection's end shows as the console's end.
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().map_err(|e| {
            JobEnd::infra_error(format!(
                "cannot run ssh (Debian package openssh-client): {e}"
            ))
        })?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| JobEnd::infra_error("ssh: no stdout"))?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| JobEnd::infra_error("ssh: no stdin"))?;
        let hub = ConsoleHub::spawn(stdout, stdin, recorder);
        Ok(SshConsole { child, hub })
    }

    pub fn hub(&self) -> &ConsoleHub {
        &self.hub
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Ends the connection: kills `ssh` and waits for it.
    pub async fn close(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_key_is_written_new_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let (key, known) = write_private_key(dir.path(), "KEY").unwrap();
        assert_eq!(std::fs::read_to_string(&key).unwrap(), "KEY\n");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(key.parent().unwrap()), 0o700);
        assert_eq!(known, dir.path().join("ssh/known_hosts"));
        assert!(write_private_key(dir.path(), "OTHER").is_err());
        assert_eq!(std::fs::read_to_string(&key).unwrap(), "KEY\n");
    }

    #[test]
    fn the_command_has_no_word_from_the_dut() {
        let target = SshTarget {
            address: "10.0.2.15:22".parse().unwrap(),
            user: "root".into(),
            key: "/w/ssh/id".into(),
            known_hosts: "/w/ssh/known_hosts".into(),
        };
        let cmd = ssh_command(&target, Duration::from_secs(5), Tty::Forced);
        let args: Vec<String> = cmd
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(&args[..3], ["-F", "/dev/null", "-tt"]);
        assert!(args.contains(&"StrictHostKeyChecking=accept-new".to_string()));
        assert!(args.contains(&"BatchMode=yes".to_string()));
        assert!(args.contains(&"UserKnownHostsFile=/w/ssh/known_hosts".to_string()));
        assert_eq!(&args[args.len() - 2..], ["--", "10.0.2.15"]);
    }

    #[test]
    fn a_key_pair_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let pair = generate_key_pair(dir.path()).unwrap();
        assert!(pair.public.starts_with("ssh-ed25519 "), "{}", pair.public);
        assert!(pair.private.contains("PRIVATE KEY"));
        proto::session::check_public_key(&pair.public).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(!format!("{pair:?}").contains("PRIVATE"));
    }
}
