//! One QEMU virtual DUT process.
//!
//! ```text
//!   launch() ──> Paused ──power_on()──> On ──power_off()──> Off
//!                  │                     │ (guest halts / QEMU dies)
//!                  └──────power_off()────┴──────────────────> Off
//! ```
//!
//! Invariants:
//! - QEMU starts paused (`-S`) with its serial console and QMP on unix sockets in the run
//!   directory; the console is connected before the guest runs, so no byte is lost.
//! - QEMU runs in its own process group. `power_off` asks QMP to quit, then kills the group;
//!   dropping a [`Vm`] kills the group synchronously. No path leaves a QEMU behind.
//! - User-supplied arguments (`image_arg`, `extra_args`) are passed as separate argv entries,
//!   never through a shell.
//! - With `network: user` (the default) the DUT has one virtio NIC on QEMU's user-mode network
//!   (no root, no host interface), `restrict=on`: the guest (10.0.2.15) reaches nothing
//!   outside, not even the host, and only its SSH port is reachable from the host, forwarded
//!   from a port on 127.0.0.1 ([`Nic`]); other guest ports only when forwarded on demand
//!   through the launch's second monitor (`forward.sock`, [`crate::forward`]), likewise from
//!   127.0.0.1 to the guest itself.
//! - QEMU runs under its seccomp sandbox (`-sandbox on`, denying obsolete calls, spawning
//!   processes, resource control and, unless it must drop root itself, privilege changes); a
//!   QEMU without seccomp is refused at launch unless the device sets `qemu.sandbox: off`.
//! - An agent running as root starts QEMU with `-runas USER` (QEMU < 9.1) or `-run-with
//!   user=USER` (QEMU >= 9.1), picked from `QEMU --version`; USER is `qemu.run_as`
//!   (default `nobody`). QEMU opens its disks, kernel and sockets before it drops root, so the
//!   work directory stays private to root.

pub use crate::nic::{GUEST_SSH_PORT, GroupLink, GroupLinkError, Nic};
use crate::qmp::{Qmp, QmpError};
use driver::{DriverError, Power, PowerState};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How long QEMU may take to exit after QMP `quit` before its group is killed.
const QUIT_GRACE: Duration = Duration::from_secs(3);
/// Bytes of QEMU's stderr kept for error messages.
const STDERR_KEPT: usize = 4096;

/// CPU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Software emulation: works everywhere, including hosts where KVM hangs.
    #[default]
    Tcg,
    Kvm,
}

impl Accel {
    fn as_str(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }
}

/// Whether QEMU runs under its seccomp sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxMode {
    /// `-sandbox on,...`; a QEMU built without seccomp is refused.
    #[default]
    On,
    /// No `-sandbox` (only for a QEMU without seccomp support, at the operator's risk).
    Off,
}

/// The DUT's network (`qemu.network`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// One virtio NIC on QEMU's user-mode network, SSH forwarded from 127.0.0.1.
    #[default]
    User,
    /// No NIC.
    None,
}

/// The monitor socket in a launch's run directory for port forwards ([`crate::forward`]).
pub const FORWARD_MONITOR: &str = "forward.sock";

/// The DUT's display (`qemu.video`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoMode {
    /// No display device: the rig has no video.
    #[default]
    None,
    /// A standard VGA card (`-device VGA`), still with `-display none`: no window, no VNC;
    /// its picture is read by QMP `screendump` only.
    Vga,
}

/// Settings of a QEMU device (the `qemu:` block of a device file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QemuConfig {
    /// The emulator binary.
    pub binary: String,
    pub accel: Accel,
    pub machine: String,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Kernel command line used when the job gives none.
    pub kernel_args: String,
    /// Extra arguments appended to every launch (the operator's: never checked).
    pub extra_args: Vec<String>,
    /// The seccomp sandbox (default on).
    pub sandbox: SandboxMode,
    /// The user QEMU becomes when started by root (`-runas` / `-run-with user=`).
    pub run_as: String,
    /// The DUT's network (default: user-mode, SSH forwarded from 127.0.0.1).
    pub network: NetworkMode,
    /// The DUT's display (default none; `vga` gives it a picture for screenshots).
    pub video: VideoMode,
}

impl Default for QemuConfig {
    fn default() -> Self {
        QemuConfig {
            binary: "qemu-system-x86_64".into(),
            accel: Accel::Tcg,
            machine: "pc".into(),
            memory_mib: 512,
            cpus: 1,
            kernel_args: "console=ttyS0 panic=-1 quiet".into(),
            extra_args: Vec::new(),
            sandbox: SandboxMode::On,
            run_as: "nobody".into(),
            network: NetworkMode::User,
            video: VideoMode::None,
        }
    }
}

/// How QEMU gives up root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Privileges {
    /// Not started by root: nothing to drop.
    Keep,
    /// `-runas USER` (QEMU before 9.1).
    Runas(String),
    /// `-run-with user=USER` (QEMU 9.1 and later, where `-runas` is deprecated).
    RunWith(String),
}

/// QEMU's version as (major, minor).
pub async fn qemu_version(binary: &str) -> Result<(u32, u32), QemuError> {
    let out = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| QemuError::Spawn {
            binary: binary.to_string(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_version(&text).ok_or_else(|| QemuError::Version {
        binary: binary.to_string(),
        output: text.trim().chars().take(200).collect(),
    })
}

/// `QEMU emulator version 7.2.22 (...)` -> (7, 2).
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let rest = text.split("version ").nth(1)?;
    let mut numbers = rest.split(|c: char| !c.is_ascii_digit());
    let major = numbers.next()?.parse().ok()?;
    let minor = numbers.next()?.parse().ok()?;
    Some((major, minor))
}

impl Privileges {
    /// What this process must ask of `config.binary`: drop to `config.run_as` when root.
    pub async fn for_host(config: &QemuConfig) -> Result<Privileges, QemuError> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(Privileges::Keep);
        }
        let user = &config.run_as;
        let fits = !user.is_empty()
            && user.len() <= 64
            && user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
        if !fits {
            return Err(QemuError::BadUser(user.clone()));
        }
        let version = qemu_version(&config.binary).await?;
        Ok(if version >= (9, 1) {
            Privileges::RunWith(user.clone())
        } else {
            Privileges::Runas(user.clone())
        })
    }

    fn args(&self) -> Vec<String> {
        match self {
            Privileges::Keep => Vec::new(),
            Privileges::Runas(user) => vec!["-runas".into(), user.clone()],
            Privileges::RunWith(user) => vec!["-run-with".into(), format!("user={user}")],
        }
    }
}

/// A disk attached to the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    pub path: PathBuf,
    /// Image format (`qcow2`, `raw`).
    pub format: String,
}

/// What to boot: kernel, initrd, disks, and raw arguments from the job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootSpec {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    /// Kernel command line; `None` uses [`QemuConfig::kernel_args`] when a kernel is given.
    pub append: Option<String>,
    pub drives: Vec<Drive>,
    /// Arguments assembled from the job's `image_arg`s, already split and substituted.
    pub image_args: Vec<String>,
    /// The runner's own disks (the test overlay), attached after everything the job and the
    /// device add, so the job's disks keep their names (`/dev/vda`, ...).
    pub channel_disks: Vec<ChannelDisk>,
    /// A second NIC on the MultiNode group's private network (after the user-mode NIC).
    pub group_link: Option<GroupLink>,
}

/// PCI slot of the first channel disk: free on the `pc` and `q35` machines (`q35` keeps
/// 0x1f for its LPC bridge), so channel disks sort after the job's disks.
pub const CHANNEL_PCI_SLOT: usize = 0x1e;

/// A read-only raw virtio disk that the guest finds by its serial
/// (`/sys/block/vdX/serial`), for moving bulk data into the DUT without the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelDisk {
    path: PathBuf,
    /// At most 20 characters of `[A-Za-z0-9-]` (virtio-blk's serial field), so it can never
    /// carry a QEMU option separator.
    serial: String,
}

impl ChannelDisk {
    /// A channel disk, if `serial` fits virtio-blk (1 to 20 of `[A-Za-z0-9-]`).
    pub fn new(path: PathBuf, serial: &str) -> Result<ChannelDisk, QemuError> {
        let fits = (1..=20).contains(&serial.len())
            && serial
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !fits {
            return Err(QemuError::BadSerial(serial.to_string()));
        }
        Ok(ChannelDisk {
            path,
            serial: serial.to_string(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// `-drive` and `-device` arguments: the drive has no interface of its own and the
    /// virtio-blk device carries the serial (`-drive serial=` is gone from QEMU). The device
    /// sits at a high PCI slot ([`CHANNEL_PCI_SLOT`] downwards): QEMU creates `-drive
    /// if=virtio` devices after every `-device`, and the guest names virtio disks in slot
    /// order, so a low slot would take `/dev/vda` from the job's own disk.
    fn args(&self, index: usize) -> [String; 4] {
        // QEMU option values escape a comma by doubling it.
        let path = self.path.display().to_string().replace(',', ",,");
        let id = format!("dutlab-channel{index}");
        [
            "-drive".into(),
            format!("file={path},format=raw,if=none,id={id},readonly=on"),
            "-device".into(),
            format!(
                "virtio-blk-pci,drive={id},serial={},addr={:#x}",
                self.serial,
                CHANNEL_PCI_SLOT - index
            ),
        ]
    }
}

/// QEMU process failures.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("cannot start {binary}: {source} (install the qemu-system-x86 package)")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("QEMU exited during start-up ({status}): {stderr}")]
    StartFailed { status: ExitStatus, stderr: String },
    #[error("QEMU did not open its sockets within {0:?}")]
    StartTimeout(Duration),
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("run directory {path}: {source}")]
    RunDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("disk serial {0:?}: 1 to 20 letters, digits or '-'")]
    BadSerial(String),
    #[error("QEMU process: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "QEMU refused its seccomp sandbox (-sandbox on): {stderr} (install a QEMU built with \
         seccomp, or set qemu.sandbox: off in the device configuration)"
    )]
    NoSandbox { stderr: String },
    #[error("qemu.run_as: {0:?} is not a user name or uid:gid")]
    BadUser(String),
    #[error("{binary} --version said {output:?}: no version found")]
    Version { binary: String, output: String },
}

/// A running (or paused) QEMU process.
pub struct Vm {
    child: Child,
    group: Pid,
    qmp: Option<Qmp>,
    state: PowerState,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("pid", &self.group)
            .field("state", &self.state)
            .finish()
    }
}

/// The full argument vector for a launch (exposed for tests and `--dry-run` style output).
pub fn command_line(
    config: &QemuConfig,
    boot: &BootSpec,
    run_dir: &Path,
    privileges: &Privileges,
    nic: Nic,
) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    if config.sandbox == SandboxMode::On {
        // QEMU 7.2 installs the filter before -runas calls setuid: a QEMU that drops root
        // itself needs set*id allowed. After the drop it cannot regain root (spawn=deny: no
        // setuid program can be executed).
        let elevate = match privileges {
            Privileges::Keep => "deny",
            Privileges::Runas(_) | Privileges::RunWith(_) => "allow",
        };
        args.push("-sandbox".into());
        args.push(format!(
            "on,obsolete=deny,elevateprivileges={elevate},spawn=deny,resourcecontrol=deny"
        ));
    }
    args.extend(privileges.args());
    args.extend::<Vec<String>>(vec![
        "-name".into(),
        "dutlab-dut".into(),
        "-accel".into(),
        config.accel.as_str().into(),
        "-machine".into(),
        config.machine.clone(),
        "-m".into(),
        config.memory_mib.to_string(),
        "-smp".into(),
        config.cpus.to_string(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-no-reboot".into(),
        "-S".into(),
        "-chardev".into(),
        format!(
            "socket,id=console,path={},server=on,wait=off",
            run_dir.join("console.sock").display()
        ),
        "-serial".into(),
        "chardev:console".into(),
        "-qmp".into(),
        format!(
            "unix:{},server=on,wait=off",
            run_dir.join("qmp.sock").display()
        ),
    ]);
    args.extend(nic.args());
    if let Some(link) = &boot.group_link {
        args.extend(link.args());
    }
    if let Nic::User { .. } = nic {
        // A second monitor for on-demand port forwards (`crate::forward`).
        args.push("-qmp".into());
        args.push(format!(
            "unix:{},server=on,wait=off",
            run_dir.join(FORWARD_MONITOR).display()
        ));
    }
    match config.video {
        VideoMode::None => {}
        VideoMode::Vga => args.extend(["-device".to_owned(), "VGA".to_owned()]),
    }
    if let Some(kernel) = &boot.kernel {
        args.push("-kernel".into());
        args.push(kernel.display().to_string());
        args.push("-append".into());
        args.push(
            boot.append
                .clone()
                .unwrap_or_else(|| config.kernel_args.clone()),
        );
    }
    if let Some(initrd) = &boot.initrd {
        args.push("-initrd".into());
        args.push(initrd.display().to_string());
    }
    for d in &boot.drives {
        args.push("-drive".into());
        args.push(format!(
            "file={},format={},if=virtio",
            d.path.display(),
            d.format
        ));
    }
    args.extend(boot.image_args.iter().cloned());
    args.extend(config.extra_args.iter().cloned());
    for (index, disk) in boot.channel_disks.iter().enumerate() {
        args.extend(disk.args(index));
    }
    args
}

impl Vm {
    /// Starts QEMU paused and returns it with its connected serial console.
    pub async fn launch(
        config: &QemuConfig,
        boot: &BootSpec,
        run_dir: &Path,
        nic: Nic,
        deadline: Instant,
    ) -> Result<(Vm, UnixStream), QemuError> {
        std::fs::create_dir_all(run_dir).map_err(|source| QemuError::RunDir {
            path: run_dir.to_path_buf(),
            source,
        })?;
        let privileges = Privileges::for_host(config).await?;
        let args = command_line(config, boot, run_dir, &privileges, nic);
        tracing::debug!(binary = %config.binary, ?args, "launching QEMU");
        let mut child = Command::new(&config.binary)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| QemuError::Spawn {
                binary: config.binary.clone(),
                source,
            })?;
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .ok_or_else(|| std::io::Error::other("QEMU exited before its pid was read"))?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(mut pipe) = child.stderr.take() {
            let kept = stderr.clone();
            tokio::spawn(async move {
                let mut chunk = [0u8; 1024];
                while let Ok(n) = pipe.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut k) = kept.lock() {
                        k.extend_from_slice(&chunk[..n]);
                        let excess = k.len().saturating_sub(STDERR_KEPT);
                        k.drain(..excess);
                    }
                }
            });
        }
        let mut vm = Vm {
            child,
            group: Pid::from_raw(pid),
            qmp: None,
            state: PowerState::Paused,
            stderr,
        };
        let console = match vm.connect(&run_dir.join("console.sock"), deadline).await {
            Err(QemuError::StartFailed { stderr, .. })
                if config.sandbox == SandboxMode::On
                    && (stderr.contains("seccomp") || stderr.contains("-sandbox")) =>
            {
                return Err(QemuError::NoSandbox { stderr });
            }
            other => other?,
        };
        let qmp_socket = vm.connect(&run_dir.join("qmp.sock"), deadline).await?;
        vm.qmp = Some(Qmp::negotiate(qmp_socket).await?);
        Ok((vm, console))
    }

    async fn connect(&mut self, path: &Path, deadline: Instant) -> Result<UnixStream, QemuError> {
        let started = Instant::now();
        loop {
            if let Ok(s) = UnixStream::connect(path).await {
                return Ok(s);
            }
            if let Some(status) = self.child.try_wait()? {
                // Let the stderr reader drain what QEMU said before it died.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Err(QemuError::StartFailed {
                    status,
                    stderr: self.stderr_text(),
                });
            }
            if Instant::now() >= deadline {
                return Err(QemuError::StartTimeout(started.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// What QEMU printed on stderr (last few KiB).
    pub fn stderr_text(&self) -> String {
        self.stderr
            .lock()
            .map(|k| String::from_utf8_lossy(&k).trim().to_string())
            .unwrap_or_default()
    }

    /// The QEMU process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.group.as_raw().unsigned_abs()
    }

    /// The QMP session, while QEMU runs.
    pub fn qmp(&mut self) -> Option<&mut Qmp> {
        self.qmp.as_mut()
    }

    /// Waits for QEMU to exit on its own (guest power-off with `-no-reboot`).
    pub async fn wait_exit(&mut self) -> Result<ExitStatus, QemuError> {
        let status = self.child.wait().await?;
        self.state = PowerState::Off;
        self.qmp = None;
        Ok(status)
    }

    /// Whether QEMU has exited; reaps it if so.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.state = PowerState::Off;
                Some(status)
            }
            _ => None,
        }
    }

    fn kill_group(&self) {
        // ESRCH (already gone) is the expected case after a clean quit.
        let _ = killpg(self.group, Signal::SIGKILL);
    }

    /// Runs one argument-less QMP command as driver operation `operation`.
    async fn command(&mut self, operation: &'static str, command: &str) -> Result<(), DriverError> {
        let qmp = self.qmp.as_mut().ok_or(DriverError::Operation {
            driver: "qemu",
            operation,
            reason: "QEMU is not running".into(),
        })?;
        qmp.execute(command, None)
            .await
            .map_err(|e| Vm::qmp_failed(operation, e))?;
        Ok(())
    }

    fn qmp_failed(operation: &'static str, e: QmpError) -> DriverError {
        DriverError::Operation {
            driver: "qemu",
            operation,
            reason: e.to_string(),
        }
    }
}

impl Power for Vm {
    async fn power_on(&mut self) -> Result<(), DriverError> {
        self.command("power on", "cont").await?;
        self.state = PowerState::On;
        Ok(())
    }

    async fn power_off(&mut self) -> Result<(), DriverError> {
        if self.state == PowerState::Off || self.exited().is_some() {
            return Ok(());
        }
        if let Some(mut qmp) = self.qmp.take() {
            // A failed quit (QEMU already dying) is not an error: the kill below is the backstop.
            let _ = tokio::time::timeout(QUIT_GRACE, qmp.execute("quit", None)).await;
        }
        if tokio::time::timeout(QUIT_GRACE, self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                pid = self.pid(),
                "QEMU ignored quit; killing its process group"
            );
            self.kill_group();
            let _ = tokio::time::timeout(QUIT_GRACE, self.child.wait()).await;
        }
        self.state = PowerState::Off;
        Ok(())
    }

    async fn reset(&mut self) -> Result<(), DriverError> {
        self.command("reset", "system_reset").await
    }

    async fn power_state(&mut self) -> Result<PowerState, DriverError> {
        if self.exited().is_some() {
            return Ok(PowerState::Off);
        }
        if let Some(qmp) = self.qmp.as_mut() {
            let status = qmp
                .status()
                .await
                .map_err(|e| Vm::qmp_failed("query status", e))?;
            self.state = match status.as_str() {
                "running" => PowerState::On,
                "shutdown" => PowerState::Off,
                _ => PowerState::Paused,
            };
        }
        Ok(self.state)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.kill_group();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn channel_disks_come_last_and_read_only() {
        let boot = BootSpec {
            drives: vec![Drive {
                path: "/w/root.qcow2".into(),
                format: "qcow2".into(),
            }],
            image_args: vec!["-drive".into(), "file=/w/data.qcow2,if=virtio".into()],
            channel_disks: vec![ChannelDisk::new("/w/a,b.img".into(), "dutlab-overlay").unwrap()],
            ..BootSpec::default()
        };
        let config = QemuConfig {
            extra_args: vec!["-device".into(), "virtio-rng-pci".into()],
            ..QemuConfig::default()
        };
        let args = command_line(
            &config,
            &boot,
            Path::new("/w/run"),
            &Privileges::Keep,
            Nic::None,
        );
        let drives: Vec<&String> = args
            .iter()
            .zip(args.iter().skip(1))
            .filter(|(flag, _)| *flag == "-drive")
            .map(|(_, value)| value)
            .collect();
        assert_eq!(drives.len(), 3);
        assert!(drives[0].starts_with("file=/w/root.qcow2"));
        assert!(drives[1].starts_with("file=/w/data.qcow2"));
        // The comma in the path is doubled, so it cannot start another option.
        assert_eq!(
            drives[2].as_str(),
            "file=/w/a,,b.img,format=raw,if=none,id=dutlab-channel0,readonly=on"
        );
        let tail = &args[args.len() - 4..];
        assert_eq!(tail[1], *drives[2]);
        assert_eq!(tail[2], "-device");
        assert_eq!(
            tail[3],
            "virtio-blk-pci,drive=dutlab-channel0,serial=dutlab-overlay,addr=0x1e"
        );
    }

    #[test]
    fn the_sandbox_comes_first_and_root_is_dropped_by_version() {
        let config = QemuConfig::default();
        let boot = BootSpec::default();
        let keep = command_line(
            &config,
            &boot,
            Path::new("/w"),
            &Privileges::Keep,
            Nic::None,
        );
        assert_eq!(keep[0], "-sandbox");
        assert_eq!(
            keep[1],
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
        );
        assert!(!keep.iter().any(|a| a == "-runas" || a == "-run-with"));
        let old = command_line(
            &config,
            &boot,
            Path::new("/w"),
            &Privileges::Runas("nobody".into()),
            Nic::None,
        );
        assert!(old[1].contains("elevateprivileges=allow,spawn=deny"));
        assert_eq!(old[2..4], ["-runas".to_string(), "nobody".to_string()]);
        let new = command_line(
            &config,
            &boot,
            Path::new("/w"),
            &Privileges::RunWith("qemu".into()),
            Nic::None,
        );
        assert_eq!(
            new[2..4],
            ["-run-with".to_string(), "user=qemu".to_string()]
        );
        let off = QemuConfig {
            sandbox: SandboxMode::Off,
            ..QemuConfig::default()
        };
        assert!(
            !command_line(&off, &boot, Path::new("/w"), &Privileges::Keep, Nic::None)
                .contains(&"-sandbox".to_string())
        );
        assert_eq!(
            parse_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7)"),
            Some((7, 2))
        );
        assert_eq!(parse_version("QEMU emulator version 9.1.0"), Some((9, 1)));
        assert_eq!(parse_version("nothing"), None);
    }

    #[tokio::test]
    async fn a_qemu_without_seccomp_is_refused_with_a_clear_error() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("qemu-without-seccomp");
        std::fs::write(
            &binary,
            "#!/bin/sh\ncase \"$1\" in --version) echo 'QEMU emulator version 7.2.0';;\n\
             *) echo 'qemu-system-x86_64: -sandbox on: seccomp support is disabled' >&2; exit 1;;\n\
             esac\n",
        )
        .unwrap();
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = QemuConfig {
            binary: binary.display().to_string(),
            ..QemuConfig::default()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let e = Vm::launch(
            &config,
            &BootSpec::default(),
            &dir.path().join("run"),
            Nic::None,
            deadline,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, QemuError::NoSandbox { .. }), "{e}");
        assert!(e.to_string().contains("qemu.sandbox: off"), "{e}");
    }

    #[test]
    fn a_user_nic_forwards_only_ssh_from_loopback() {
        let args = command_line(
            &QemuConfig::default(),
            &BootSpec::default(),
            Path::new("/w"),
            &Privileges::Keep,
            Nic::User {
                ssh_host_port: 40022,
            },
        );
        let at = args.iter().position(|a| a == "-netdev").unwrap();
        assert_eq!(
            args[at + 1],
            "user,id=dutlab-net0,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22"
        );
        assert_eq!(
            args[at + 2..at + 4],
            ["-device", "virtio-net-pci,netdev=dutlab-net0"]
        );
        // Other ports are forwarded on demand through a second monitor, a unix socket in the
        // run directory (never a network listener).
        let monitors: Vec<&String> = args
            .iter()
            .zip(args.iter().skip(1))
            .filter(|(flag, _)| *flag == "-qmp")
            .map(|(_, value)| value)
            .collect();
        assert_eq!(
            monitors,
            [
                "unix:/w/qmp.sock,server=on,wait=off",
                "unix:/w/forward.sock,server=on,wait=off"
            ]
        );
        let none = command_line(
            &QemuConfig::default(),
            &BootSpec::default(),
            Path::new("/w"),
            &Privileges::Keep,
            Nic::None,
        );
        assert!(!none.iter().any(|a| a == "-netdev"));
        // A group's NIC comes after the user-mode one, on a loopback multicast segment.
        let mcast = "239.255.3.4:41000".parse().unwrap();
        let grouped = BootSpec {
            group_link: Some(GroupLink::new(mcast, 258).unwrap()),
            ..BootSpec::default()
        };
        let args = command_line(
            &QemuConfig::default(),
            &grouped,
            Path::new("/w"),
            &Privileges::Keep,
            Nic::User {
                ssh_host_port: 40022,
            },
        );
        let netdevs: Vec<&String> = args
            .iter()
            .zip(args.iter().skip(1))
            .filter(|(a, _)| *a == "-netdev")
            .map(|(_, v)| v)
            .collect();
        assert_eq!(netdevs.len(), 2);
        assert!(netdevs[0].starts_with("user,"));
        assert_eq!(
            netdevs[1],
            "socket,id=dutlab-group,mcast=239.255.3.4:41000,localaddr=127.0.0.1"
        );
        assert!(
            args.contains(&"virtio-net-pci,netdev=dutlab-group,mac=52:54:00:d7:01:02".to_owned())
        );
        assert_eq!(
            GroupLink::new("10.0.0.1:5".parse().unwrap(), 0),
            Err(GroupLinkError::NotMulticast("10.0.0.1".parse().unwrap()))
        );
        assert_eq!(
            GroupLink::new("239.1.1.1:0".parse().unwrap(), 0),
            Err(GroupLinkError::PortZero)
        );
        assert!(!none.iter().any(|a| a.contains("forward.sock")));
    }

    #[test]
    fn serials_that_could_carry_options_are_refused() {
        for bad in ["", "a,b", "x=y", "has space", "abcdefghijklmnopqrstu", "é"] {
            assert!(ChannelDisk::new("/x".into(), bad).is_err(), "{bad:?}");
        }
        assert!(ChannelDisk::new("/x".into(), "dutlab-overlay").is_ok());
    }
}
