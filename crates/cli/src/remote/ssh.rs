//! `dutlab ssh` and `dutlab copy`: the OpenSSH client (`ssh`) logged in as root on a lease's
//! DUT, its TCP carried by `dutlab forward --stdio 22` as the `ProxyCommand`; files carried
//! with `cat` over that (the default guest has dropbear only: no scp or sftp server).
//!
//! ```text
//!  dutlab ssh ─> power status (holder? on?) ─> ssh -o ProxyCommand='<this dutlab> forward --stdio 22 --lease ID'
//!                                                  -i KEY root@dutlab-lease-ID [-- 'CMD' 'ARGS'...]
//!  dutlab copy FILE dut:PATH   ─> ssh ... "cat > 'PATH'"  < FILE
//!  dutlab copy dut:PATH FILE   ─> ssh ... "cat < 'PATH'"  > FILE.dutlab-part ─rename─> FILE
//! ```
//!
//! Invariants:
//! - The lease is checked before ssh runs: another user's `ssh`/`copy` exits 77 and no byte
//!   reaches the DUT; an ended lease exits 70; a DUT that is off exits 70 with a hint.
//! - User words never become shell code on the DUT: every word of `-- CMD...` and every path
//!   is single-quoted for the DUT's shell ([`quote`]); the command runs as the argument vector
//!   given. The `ProxyCommand` quotes this binary's path for the local shell and escapes
//!   ssh's `%` tokens.
//! - The controller settings reach the `ProxyCommand` unchanged: it inherits this process's
//!   environment (DUTLAB_URL, DUTLAB_TOKEN, DUTLAB_CA, ..., XDG_CONFIG_HOME).
//! - Host keys: the DUT makes a new host key at every boot, so nothing stable can be pinned.
//!   Each lease gets its own known_hosts file (`$XDG_STATE_HOME/dutlab/known_hosts/`, else
//!   `~/.local/state/dutlab/known_hosts/`), used with `StrictHostKeyChecking=accept-new`:
//!   the first connection after a boot learns the key, a different key later in that boot is
//!   refused by ssh. `dutlab power on|cycle` forgets the lease's key ([`forget_host_key`]).
//! - The exit code of `dutlab ssh` is ssh's: the remote command's status, 255 when ssh
//!   itself failed.
//! - `copy` writes a local file only complete: into a temporary name next to it, renamed
//!   once the DUT's `cat` succeeded (removed otherwise).

use super::connect;
use super::leased::LeaseArg;
use crate::exit::{self, Exit};
use anyhow::Context;
use client::Client;
use proto::PersonLeaseId;
use proto::session::PowerState;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

const SSH_HELP: &str = "Exit codes: the remote command's exit status; 255 ssh failed; 64 usage \
or no lease (--lease or DUTLAB_LEASE), 69 controller unreachable, 70 other error (the lease has \
ended, the DUT is off), 77 not the lease's holder (403).";

const COPY_HELP: &str = "One side is dut:PATH (a file on the DUT; a PATH ending in / is a \
directory there), the other a local file (a local name that starts with dut: is ./dut:...). \
Exit codes: 0 copied, 64 usage or no lease, 69 controller unreachable, 70 the copy failed (the \
lease has ended, the DUT is off, the DUT could not read or write PATH), 77 not the lease's holder \
(403).";

#[derive(Debug, clap::Args)]
#[command(after_help = SSH_HELP)]
pub struct SshArgs {
    #[command(flatten)]
    lease: LeaseArg,
    /// The private key (default: dutlab's own key, the one leases authorize by default).
    #[arg(short = 'i', long = "identity", value_name = "KEY")]
    identity: Option<PathBuf>,
    /// The command to run on the DUT, as an argument vector (each word is quoted for the
    /// DUT's shell: for pipes, give `sh -c '...'`). Without it: a login shell.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Debug, clap::Args)]
#[command(after_help = COPY_HELP)]
pub struct CopyArgs {
    /// From: a local file or dut:PATH.
    src: String,
    /// To: a local file (or directory) or dut:PATH.
    dst: String,
    #[command(flatten)]
    lease: LeaseArg,
    /// The private key (default: dutlab's own key).
    #[arg(short = 'i', long = "identity", value_name = "KEY")]
    identity: Option<PathBuf>,
}

/// One word for a POSIX shell, taken literally: single quotes, with each `'` closed, escaped
/// and reopened. Nothing inside single quotes is special to the shell.
pub fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Where the CLI keeps state that is not configuration.
fn state_dir() -> anyhow::Result<PathBuf> {
    let nonempty = |var: &str| std::env::var(var).ok().filter(|v| !v.is_empty());
    if let Some(state) = nonempty("XDG_STATE_HOME").map(PathBuf::from)
        && state.is_absolute()
    {
        return Ok(state.join("dutlab"));
    }
    nonempty("HOME")
        .map(|home| PathBuf::from(home).join(".local/state/dutlab"))
        .ok_or_else(|| {
            Exit::new(
                exit::USAGE,
                "neither XDG_STATE_HOME nor HOME is set: no place for the DUT's known_hosts",
            )
            .into()
        })
}

/// The known_hosts file of lease `id` of the controller at `base_url`.
fn known_hosts(base_url: &str, id: PersonLeaseId) -> anyhow::Result<PathBuf> {
    let lab: String = base_url
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    Ok(state_dir()?
        .join("known_hosts")
        .join(format!("{lab}-lease-{id}")))
}

/// Forgets the host key learnt for lease `id` (its DUT boots with a new one).
pub fn forget_host_key(client: &Client, id: PersonLeaseId) {
    if let Ok(path) = known_hosts(client.base_url(), id)
        && let Err(e) = std::fs::remove_file(&path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("dutlab: warning: cannot remove {}: {e}", path.display());
    }
}

/// Whether ssh may ask for a terminal on the DUT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Terminal {
    /// ssh's default: a terminal for a login shell on a terminal.
    SshDecides,
    /// Never (`-T`): the bytes are a file's.
    Never,
}

/// What `ssh` is started with, checked.
struct Login {
    id: PersonLeaseId,
    key: PathBuf,
    known_hosts: PathBuf,
}

/// Checks the lease (holder, powered on), the key and the known_hosts directory.
async fn login(lease: &LeaseArg, identity: Option<&Path>) -> anyhow::Result<Login> {
    let id = lease.id()?;
    let key = match identity {
        Some(k) => k.to_path_buf(),
        None => crate::ssh_key::private_key_path()?,
    };
    if !key.is_file() {
        return Err(Exit::new(
            exit::USAGE,
            format!(
                "no private key {} (give -i KEY, the key of a public key the lease authorized)",
                key.display()
            ),
        )
        .into());
    }
    let client = connect()?;
    let power = client
        .power_status(id)
        .await
        .with_context(|| format!("lease {id}"))?;
    if power.state != PowerState::On {
        return Err(Exit::new(
            exit::SOFTWARE,
            format!(
                "lease {id}: {} is {}: `dutlab power on --lease {id}` first",
                power.device, power.state
            ),
        )
        .into());
    }
    let known_hosts = known_hosts(client.base_url(), id)?;
    if let Some(dir) = known_hosts.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Ok(Login {
        id,
        key,
        known_hosts,
    })
}

fn checked(lease: &LeaseArg, identity: Option<&Path>) -> anyhow::Result<Login> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(login(lease, identity))
}

impl Login {
    /// `ssh` to the DUT's root with the forward as its transport; `remote` is the command
    /// line for the DUT's shell (already quoted).
    fn command(&self, remote: Option<&str>, terminal: Terminal) -> anyhow::Result<Command> {
        let me = std::env::current_exe().context("cannot find this dutlab binary")?;
        let me = me
            .to_str()
            .ok_or_else(|| Exit::new(exit::SOFTWARE, "this dutlab's path is not UTF-8"))?;
        // For the local shell that runs it; `%` is ssh's token character.
        let proxy = format!(
            "{} forward --stdio 22 --lease {}",
            quote(me).replace('%', "%%"),
            self.id
        );
        let mut ssh = Command::new("ssh");
        ssh.arg("-i")
            .arg(&self.key)
            .arg("-o")
            .arg(format!("ProxyCommand={proxy}"))
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .args([
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "StrictHostKeyChecking=accept-new",
                "-o",
                "HashKnownHosts=no",
                // Also bounds the wait for the DUT's banner: while the guest boots, QEMU may
                // accept the connection and never get an answer from the guest.
                "-o",
                "ConnectTimeout=30",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "PasswordAuthentication=no",
                "-o",
                "KbdInteractiveAuthentication=no",
                "-o",
                "LogLevel=ERROR",
                "-o",
            ])
            .arg(format!("HostKeyAlias=dutlab-lease-{}", self.id))
            .args(["-l", "root"]);
        if terminal == Terminal::Never {
            ssh.arg("-T");
        }
        ssh.arg(format!("dutlab-lease-{}", self.id));
        if let Some(remote) = remote {
            ssh.arg("--").arg(remote);
        }
        Ok(ssh)
    }
}

/// The exit code of a finished ssh (128 + the signal that killed it).
fn code_of(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(exit::SOFTWARE)
}

fn run_ssh(mut ssh: Command) -> anyhow::Result<ExitStatus> {
    ssh.status()
        .context("cannot run ssh (Debian package openssh-client)")
}

fn finish(result: anyhow::Result<i32>) -> i32 {
    match result {
        Ok(code) => code,
        Err(e) => {
            exit::report(&e);
            exit::code_of(&e)
        }
    }
}

/// `dutlab ssh`.
pub fn ssh(args: SshArgs) -> i32 {
    finish((|| {
        let login = checked(&args.lease, args.identity.as_deref())?;
        let remote = (!args.command.is_empty()).then(|| {
            args.command
                .iter()
                .map(|w| quote(w))
                .collect::<Vec<_>>()
                .join(" ")
        });
        let ssh = login.command(remote.as_deref(), Terminal::SshDecides)?;
        Ok(code_of(run_ssh(ssh)?))
    })())
}

/// One side of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Side {
    Dut(String),
    Local(PathBuf),
}

fn side(text: &str) -> Result<Side, Exit> {
    match text.strip_prefix("dut:") {
        Some("") => Err(Exit::new(exit::USAGE, "dut: needs a path (dut:/tmp/file)")),
        Some(path) => Ok(Side::Dut(path.to_owned())),
        None => Ok(Side::Local(PathBuf::from(text))),
    }
}

/// The last component of a path, for a copy into a directory.
fn base_name(path: &str) -> Option<&str> {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
}

/// `dutlab copy`.
pub fn copy(args: CopyArgs) -> i32 {
    finish((|| {
        let (src, dst) = (side(&args.src)?, side(&args.dst)?);
        match (src, dst) {
            (Side::Local(file), Side::Dut(path)) => upload(&args, &file, &path),
            (Side::Dut(path), Side::Local(file)) => download(&args, &path, &file),
            _ => Err(Exit::new(
                exit::USAGE,
                "exactly one side of a copy is dut:PATH, the other a local file",
            )
            .into()),
        }
    })())
}

fn upload(args: &CopyArgs, file: &Path, path: &str) -> anyhow::Result<i32> {
    let source = std::fs::File::open(file)
        .map_err(|e| Exit::new(exit::USAGE, format!("{}: {e}", file.display())))?;
    let meta = source
        .metadata()
        .with_context(|| format!("cannot read {}", file.display()))?;
    if !meta.is_file() {
        return Err(Exit::new(
            exit::USAGE,
            format!("{}: not a regular file (copy takes files)", file.display()),
        )
        .into());
    }
    let target = if path.ends_with('/') {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Exit::new(exit::USAGE, format!("{}: no file name", file.display())))?;
        format!("{path}{name}")
    } else {
        path.to_owned()
    };
    let login = checked(&args.lease, args.identity.as_deref())?;
    let mut ssh = login.command(Some(&format!("cat > {}", quote(&target))), Terminal::Never)?;
    ssh.stdin(Stdio::from(source));
    let status = run_ssh(ssh)?;
    if !status.success() {
        return Err(Exit::new(
            exit::SOFTWARE,
            format!(
                "lease {}: writing dut:{target} failed (ssh exit {})",
                login.id,
                code_of(status)
            ),
        )
        .into());
    }
    eprintln!(
        "dutlab: lease {}: {} bytes to dut:{target}",
        login.id,
        meta.len()
    );
    Ok(0)
}

fn download(args: &CopyArgs, path: &str, file: &Path) -> anyhow::Result<i32> {
    let target = if file.is_dir() {
        let name = base_name(path).ok_or_else(|| {
            Exit::new(
                exit::USAGE,
                format!("dut:{path} names no file to put in {}", file.display()),
            )
        })?;
        file.join(name)
    } else {
        file.to_path_buf()
    };
    let login = checked(&args.lease, args.identity.as_deref())?;
    let mut part = target.clone().into_os_string();
    part.push(".dutlab-part");
    let part = PathBuf::from(part);
    let out = std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(&part)
        .map_err(|e| {
            Exit::new(
                exit::SOFTWARE,
                format!("cannot create {}: {e}", part.display()),
            )
        })?;
    let mut ssh = login.command(Some(&format!("cat < {}", quote(path))), Terminal::Never)?;
    ssh.stdout(Stdio::from(out));
    let status = run_ssh(ssh);
    let failed = match &status {
        Ok(s) if s.success() => None,
        Ok(s) => Some(format!("ssh exit {}", code_of(*s))),
        Err(e) => Some(format!("{e:#}")),
    };
    if let Some(why) = failed {
        let _ = std::fs::remove_file(&part);
        return Err(Exit::new(
            exit::SOFTWARE,
            format!("lease {}: reading dut:{path} failed ({why})", login.id),
        )
        .into());
    }
    std::fs::rename(&part, &target).with_context(|| {
        let _ = std::fs::remove_file(&part);
        format!("cannot rename {} to {}", part.display(), target.display())
    })?;
    let bytes = std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "dutlab: lease {}: {bytes} bytes from dut:{path} in {}",
        login.id,
        target.display()
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_words_stay_words() {
        for word in [
            "plain",
            "with space",
            "it's",
            "\"double\"",
            "$(touch /tmp/pwned)",
            "`id`",
            "a;b|c&d",
            "'",
            "",
            "\\'",
            "-rf",
        ] {
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", quote(word)))
                .output()
                .expect("sh runs");
            assert_eq!(String::from_utf8_lossy(&out.stdout), word, "{word:?}");
        }
    }

    #[test]
    fn copy_sides_and_names() {
        assert_eq!(side("dut:/tmp/x"), Ok(Side::Dut("/tmp/x".into())));
        assert_eq!(side("./dut:x"), Ok(Side::Local("./dut:x".into())));
        assert!(side("dut:").is_err());
        assert_eq!(base_name("/tmp/a b/"), Some("a b"));
        assert_eq!(base_name("/tmp/.."), None);
        assert_eq!(base_name("/"), None);
    }
}
