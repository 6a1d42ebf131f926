//! Test support (dev-only): the shared guest image, sandboxes for real `dutlab` processes, and
//! proof that nothing was left running.
//!
//! Invariants:
//! - The guest image is built once per target directory, under a file lock, so parallel test
//!   processes (nextest) never build it twice or read a half-built one.
//! - Every process a test spawns runs in its own process group and is killed with it when the
//!   handle drops, whatever the test's outcome.
//! - A [`Sandbox`] gives its processes a private `TMPDIR`; any QEMU whose command line still
//!   mentions it after a run is a leak, and [`Sandbox::assert_no_qemu_left`] fails the test.

pub mod lab;
pub mod linaro;
pub mod netns;
pub mod postgres;
pub mod sim_agent;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("testkit lives in crates/testkit")
        .to_path_buf()
}

/// The guest image shared by all tests, built on first use.
pub fn guest_image() -> anyhow::Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    std::fs::create_dir_all(&target)?;
    let dir = target.join("dutlab-test-image");
    let lock = std::fs::File::create(target.join("dutlab-test-image.lock"))?;
    lock.lock().context("locking the test image")?;
    if qemu::image::GuestImage::open(&dir).is_err() {
        qemu::image::build(&qemu::image::ImageSpec::new(&dir), &mut |_| {})
            .context("building the test guest image")?;
    }
    lock.unlock()?;
    Ok(dir)
}

/// A private temporary directory for the processes of one test.
pub struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> anyhow::Result<Sandbox> {
        Ok(Sandbox {
            dir: tempfile::Builder::new().prefix("dutlab-test-").tempdir()?,
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A command whose temporary files land in the sandbox and that uses the test image.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> anyhow::Result<Command> {
        let tmp = self.dir.path().join("tmp");
        std::fs::create_dir_all(&tmp)?;
        let mut cmd = Command::new(program);
        cmd.env("TMPDIR", &tmp)
            .env("DUTLAB_IMAGE_DIR", guest_image()?)
            .env_remove("DUTLAB_LOG")
            .stdin(Stdio::null());
        Ok(cmd)
    }

    /// QEMU processes whose command line mentions this sandbox.
    pub fn qemu_processes(&self) -> Vec<(u32, String)> {
        let needle = self.dir.path().display().to_string();
        processes_mentioning(&needle)
            .into_iter()
            .filter(|(_, cmdline)| cmdline.contains("qemu-system"))
            .collect()
    }

    /// Fails if a QEMU of this sandbox is still running (after a short grace for reaping).
    pub fn assert_no_qemu_left(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let left = self.qemu_processes();
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                for (pid, _) in &left {
                    let _ = killpg(Pid::from_raw(*pid as i32), Signal::SIGKILL);
                }
                bail!("QEMU left running: {left:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `steps` as the YAML list of an inline definition's `run: steps:` (each quoted).
fn steps_yaml(steps: &[&str]) -> String {
    steps
        .iter()
        .map(|s| {
            format!(
                "          - {}\n",
                serde_json::to_string(s).expect("a string serialises")
            )
        })
        .collect()
}

/// A MultiNode test action for `role`: one inline definition named after the role with the
/// given run steps.
pub fn role_test(role: &str, steps: &[&str]) -> String {
    format!(
        "- test:\n    role: [{role}]\n    definitions:\n    - from: inline\n      name: {role}\n      \
         path: inline/{role}.yaml\n      repository:\n        metadata: {{format: Lava-Test Test \
         Definition 1.0, name: {role}}}\n        run:\n          steps:\n{}",
        steps_yaml(steps)
    )
}

/// The secondary connections job of the tests, in LAVA's shape: the host role deploys the
/// guest image of `image` (a [`guest_image`] directory) with `authorize: ssh`, boots,
/// announces its address and sends `lava_start`; `guests` guests wait for it (delayed start),
/// copy their overlays over SSH and run their tests on the host's DUT (`own-root`,
/// `overlay-copied`, `on-the-host-dut`). The host ends its test first (`keys`): its DUT must
/// stay on while the guests still run.
pub fn secondary_group_job(image: &Path, guests: u32) -> String {
    format!(
        "job_name: secondary\ntimeouts: {{job: {{minutes: 8}}, action: {{minutes: 6}}, connection: {{minutes: 3}}}}\n\
         visibility: public\nprotocols:\n  lava-multinode:\n    roles:\n      host: {{count: 1, device_type: qemu}}\n      \
         guest: {{count: {guests}, connection: ssh, host_role: host, expect_role: host, request: lava-start}}\n\
         actions:\n\
         - deploy:\n    role: [host]\n    to: tmpfs\n    authorize: ssh\n    images:\n\
         \x20     kernel: {{url: {k}}}\n      initrd: {{url: {i}}}\n      rootfs: {{url: {r}, format: qcow2}}\n\
         - deploy:\n    role: [guest]\n    to: ssh\n    connection: ssh\n    protocols:\n      lava-multinode:\n\
         \x20     - {{action: prepare-scp-overlay, request: lava-wait, messageID: ipv4, message: {{ipaddr: $ipaddr}}}}\n\
         - boot: {{role: [host], method: qemu, prompts: ['# $'], auto_login: {{login_prompt: 'login:', username: root}}}}\n\
         - boot: {{role: [guest], method: ssh, connection: ssh, prompts: ['# '], parameters: {{hostID: ipv4, host_key: ipaddr}}}}\n\
         {}{}",
        role_test(
            "host",
            &[
                "lava-send ipv4 ipaddr=$(lava-echo-ipv4 eth0)",
                "lava-send lava_start",
                "lava-test-case keys --shell grep -q dutlab-group /root/.ssh/authorized_keys",
            ]
        ),
        role_test(
            "guest",
            &[
                "sleep 3",
                "lava-test-case own-root --shell test -d /lava-$(lava-self)/tests",
                "lava-test-case overlay-copied --shell test -s /$(lava-self)-overlay-1.tar.gz",
                "lava-test-case on-the-host-dut --shell grep -q ID=dutlab /etc/os-release",
            ]
        ),
        k = image.join("vmlinuz").display(),
        i = image.join("initramfs.cpio.gz").display(),
        r = image.join("rootfs.qcow2").display(),
    )
}

/// A job around one inline test definition with the given run steps.
pub fn inline_job(name: &str, timeouts: &str, steps: &[&str]) -> String {
    let steps = steps_yaml(steps);
    format!(
        "job_name: {name}\ndevice_type: qemu\ntimeouts:\n{timeouts}\nactions:\n\
         - boot:\n    method: qemu\n    prompts: ['# $']\n    auto_login: {{login_prompt: 'login:', username: root}}\n\
         - test:\n    definitions:\n    - from: inline\n      name: t\n      path: inline/t.yaml\n      repository:\n\
         \x20       metadata: {{format: Lava-Test Test Definition 1.0, name: t}}\n        run:\n          steps:\n{steps}"
    )
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after `within` naming `what`.
pub fn wait_until<T>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Live processes (pid, command line) whose command line contains `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            if status
                .lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'))
            {
                return None; // a zombie is dead, just not yet reaped
            }
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            cmdline.contains(needle).then_some((pid, cmdline))
        })
        .collect()
}

/// A spawned process in its own group, with its output captured as it comes.
pub struct Spawned {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    pumps: Vec<std::thread::JoinHandle<()>>,
}

/// How a spawned process ended, with everything it printed.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Fails unless the process exited with `code`, showing everything it printed.
pub fn expect_code(done: &Finished, code: i32) -> anyhow::Result<()> {
    anyhow::ensure!(
        done.code() == Some(code),
        "exit {:?}, wanted {code}\nstdout:\n{}\nstderr:\n{}",
        done.code(),
        done.stdout,
        done.stderr
    );
    Ok(())
}

impl Spawned {
    /// Starts `cmd` in a new process group with piped output.
    pub fn start(mut cmd: Command) -> anyhow::Result<Spawned> {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().context("spawning")?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let pumps = [
            pump(child.stdout.take(), stdout.clone()),
            pump(child.stderr.take(), stderr.clone()),
        ]
        .into_iter()
        .flatten()
        .collect();
        Ok(Spawned {
            child,
            stdout,
            stderr,
            pumps,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until stdout contains `needle` (polling, with a deadline).
    pub fn wait_for_stdout(&self, needle: &str, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if String::from_utf8_lossy(&lock(&self.stdout)).contains(needle) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "no {needle:?} on stdout within {within:?}; stdout: {}\nstderr: {}",
                    String::from_utf8_lossy(&lock(&self.stdout)),
                    String::from_utf8_lossy(&lock(&self.stderr))
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until stderr contains `needle` (polling, with a deadline).
    pub fn wait_for_stderr(&self, needle: &str, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if String::from_utf8_lossy(&lock(&self.stderr)).contains(needle) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "no {needle:?} on stderr within {within:?}; stderr: {}",
                    String::from_utf8_lossy(&lock(&self.stderr))
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything printed on stderr so far.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&lock(&self.stderr)).into_owned()
    }

    /// Kills the process with SIGKILL and reaps it (its group is left alone: that is what a
    /// crash does to children that run in groups of their own).
    pub fn kill_hard(&mut self) -> anyhow::Result<()> {
        nix::sys::signal::kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL)?;
        self.child.wait()?;
        Ok(())
    }

    /// Everything printed on stdout so far.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&lock(&self.stdout)).into_owned()
    }

    /// Sends a signal to the process (not its group).
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        nix::sys::signal::kill(Pid::from_raw(self.child.id() as i32), signal)?;
        Ok(())
    }

    /// Waits for exit, killing the group if it takes longer than `within`.
    pub fn finish(mut self, within: Duration) -> anyhow::Result<Finished> {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                self.kill_group();
                bail!(
                    "process did not exit within {within:?}; stdout: {}\nstderr: {}",
                    String::from_utf8_lossy(&lock(&self.stdout)),
                    String::from_utf8_lossy(&lock(&self.stderr))
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The pump threads finish once the pipes close: wait for them (a busy machine may
        // schedule them late), but not forever, since a grandchild can hold a pipe open.
        let drained = Instant::now() + Duration::from_secs(5);
        while self.pumps.iter().any(|p| !p.is_finished()) && Instant::now() < drained {
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Finished {
            status,
            stdout: String::from_utf8_lossy(&lock(&self.stdout)).into_owned(),
            stderr: String::from_utf8_lossy(&lock(&self.stderr)).into_owned(),
        })
    }

    fn kill_group(&mut self) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.kill_group();
        }
    }
}

fn lock(buf: &Arc<Mutex<Vec<u8>>>) -> std::sync::MutexGuard<'_, Vec<u8>> {
    buf.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn pump(
    source: Option<impl Read + Send + 'static>,
    sink: Arc<Mutex<Vec<u8>>>,
) -> Option<std::thread::JoinHandle<()>> {
    let mut source = source?;
    Some(std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = source.read(&mut chunk) {
            if n == 0 {
                break;
            }
            lock(&sink).extend_from_slice(&chunk[..n]);
        }
    }))
}

/// Runs `command` as root on a DUT over SSH at `127.0.0.1:port` with the private `key`
/// (no agent, no known hosts, batch mode). Needs `ssh` (openssh-client).
pub fn ssh_root(key: &Path, port: u16, command: &str) -> anyhow::Result<std::process::Output> {
    use anyhow::Context as _;
    Command::new("ssh")
        .arg("-i")
        .arg(key)
        .args(["-p", &port.to_string()])
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=20",
            "-o",
            "LogLevel=ERROR",
            "root@127.0.0.1",
            command,
        ])
        .output()
        .context("running ssh (Debian package openssh-client)")
}
