//! The runner: executes one job on one device, from deploy to power-off.
//!
//! ```text
//!  prepare (images, test definitions; no DUT touched)
//!     │ job-error on bad input
//!     v
//!  actions in order: deploy ─> boot (launch QEMU paused, console attached, power on, login
//!                                    unless an interactive/monitors test comes next unprompted)
//!                           ─> test: definitions (runner's prompt and overlay once per boot,
//!                                    run definitions) | interactive scripts | monitors
//!     │ any outcome: passed | failed | timed-out | canceled | job-error | infra-error
//!     v
//!  teardown: power off, wait for QEMU, remove the work directory   (always runs)
//! ```
//!
//! Invariants:
//! - Outcomes are data: `run_job` returns a [`JobReport`] for every path, never an error.
//! - Every path ends with the DUT powered off and the job's work directory (disk overlays,
//!   decompressed images, clones) removed.
//! - Three timeout levels: job (whole run), action (each action), connection (each wait for
//!   the DUT inside boot and setup). The earliest deadline binds and is named when it fires.
//! - Cancellation is checked at every await point of the job and leads to the same teardown.
//! - What a job may reach on the host (paths, destinations, repositories, QEMU options) is
//!   its [`policy::HostPolicy`]: `Local` for `dutlab run`, `Lab` for an agent.
//! - What a device type can run (deploy targets, boot methods, architectures) is jobspec's
//!   one table: a job `jobspec::check_runnable` refuses ends as a job error with its
//!   `field: reason` before anything is fetched or booted; the runner keeps no copy of it.

pub mod commands;
pub mod deploy;
pub mod device;
mod interactive;
mod monitor;
pub mod multinode;
pub mod overlay;
pub mod policy;
pub mod qemu_options;
pub mod report;
pub mod secondary;
pub mod session;
pub mod signals;
pub mod ssh;

use device::Device;
use driver::Power;
use driver::rig::{Console as _, Network as _};
use jobspec::{Action, Boot, Job};
use overlay::{Overlay, OverlayChannel, PackedOverlay};
use proto::{CaseResult, JobReport, Outcome, TestCase};
use qemu::image::GuestImage;
use qemu::{BootSpec, ChannelDisk, QemuRig};
use regex::bytes::Regex;
use session::{ActionSignals, DutShell, Login, OverlayState, RunEnd, ShellSetup};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;
use tokio::time::Instant;

/// Something that happened during a run, for live display and logs.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEvent {
    /// Raw bytes from the DUT console.
    Console(Vec<u8>),
    /// Bytes the runner typed on the console.
    Input(Vec<u8>),
    /// An action started (`index` into the job's actions).
    ActionStarted { index: usize, name: &'static str },
    /// A test case result arrived.
    Case(TestCase),
    /// A note from the runner for people (image built, QEMU launched ...).
    Note(String),
}

/// How a job ended, with the reason, before it becomes a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEnd {
    pub outcome: Outcome,
    pub reason: String,
}

impl JobEnd {
    pub fn job_error(reason: impl Into<String>) -> JobEnd {
        JobEnd {
            outcome: Outcome::JobError,
            reason: reason.into(),
        }
    }
    pub fn infra_error(reason: impl Into<String>) -> JobEnd {
        JobEnd {
            outcome: Outcome::InfraError,
            reason: reason.into(),
        }
    }
    pub fn timed_out(reason: impl Into<String>) -> JobEnd {
        JobEnd {
            outcome: Outcome::TimedOut,
            reason: reason.into(),
        }
    }
    pub fn failed(reason: impl Into<String>) -> JobEnd {
        JobEnd {
            outcome: Outcome::Failed,
            reason: reason.into(),
        }
    }
}

/// A deadline and the timeout it comes from.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub at: Instant,
    /// The timeout's name for people: `job`, `boot`, `boot connection` ...
    pub level: &'static str,
    pub length: Duration,
}

impl Limit {
    fn new(level: &'static str, length: Duration) -> Limit {
        Limit {
            at: Instant::now() + length,
            level,
            length,
        }
    }

    /// The earlier of two limits.
    fn min(self, other: Limit) -> Limit {
        if other.at < self.at { other } else { self }
    }
}

/// Cancels a running job (Ctrl-C locally; `job cancel` on an agent).
#[derive(Debug, Clone)]
pub struct Cancel(watch::Sender<RunState>);

/// Whether a job may go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running,
    Canceled,
}

impl Default for Cancel {
    fn default() -> Self {
        Cancel(watch::Sender::new(RunState::Running))
    }
}

impl Cancel {
    pub fn cancel(&self) {
        self.0.send_replace(RunState::Canceled);
    }

    /// Resolves once the job is canceled.
    pub async fn canceled(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|s| *s == RunState::Canceled).await;
    }
}

/// Where a job comes from and where it may write.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// Directory of the job file: relative image and repository paths start here.
    pub job_dir: PathBuf,
    /// Default guest image of the device (used when the job has no deploy action).
    pub default_image: Option<GuestImage>,
    /// Where the job's work directory (overlays, QEMU sockets) is created; `None`: `$TMPDIR`.
    /// Every QEMU process of the job names this directory on its command line.
    pub work_root: Option<PathBuf>,
    /// What the job may reach on this host.
    pub policy: policy::HostPolicy,
    /// Where a job that boots over ssh (a secondary connection) logs in.
    pub secondary: Option<secondary::SecondaryContext>,
    /// Public keys (`authorized_keys` lines) a deploy with `authorize: ssh` installs in the
    /// DUT: the group's, so its secondary connections can log in.
    pub authorized_keys: Vec<String>,
    /// Where the DUT's SSH endpoint is published once QEMU runs, for the secondary
    /// connections of a local group ([`secondary::SshRoute::Published`]).
    pub publish_ssh: Option<secondary::HostEndpoint>,
    /// The group of a MultiNode role instance: its roster and the link to the group's
    /// coordinator. `None`: not a role instance (a job with `protocols.lava-multinode` is
    /// then refused).
    pub multinode: Option<multinode::MultinodeContext>,
    /// The group's private network between its QEMU DUTs on this host, for a role
    /// instance that boots one.
    pub group_net: Option<multinode::GroupNet>,
}

/// Runs `job` on `device` and reports how it ended.
pub async fn run_job(
    job: &Job,
    ctx: &JobContext,
    device: &Device,
    events: UnboundedSender<RunEvent>,
    cancel: Cancel,
) -> JobReport {
    let started = Instant::now();
    let mut cases = Vec::new();
    let mut run = Run {
        job,
        ctx,
        device,
        events,
        work_dir: None,
        rig: None,
        shell: None,
        boot: None,
        overlay: Overlay::default(),
        packed: None,
        overlay_disk: None,
        undo: Vec::new(),
        remote: secondary::Remote::default(),
        keys: KeyState::Absent,
        group_net: LinkState::Down,
    };
    let job_limit = Limit::new("job", job.timeouts.job);
    let end = tokio::select! {
        end = run.actions(job_limit, &mut cases) => end,
        _ = cancel.canceled() => Err(JobEnd { outcome: Outcome::Canceled, reason: "canceled".into() }),
        _ = tokio::time::sleep_until(job_limit.at) => Err(JobEnd::timed_out(format!(
            "job timeout ({}) fired", human_duration(job.timeouts.job)))),
    };
    // A host role's DUT stays on while its secondary connections run (within the job
    // timeout, and not after a cancel).
    if let Some(host) = &ctx.publish_ssh
        && host.guests_running() > 0
        && end
            .as_ref()
            .err()
            .is_none_or(|e| e.outcome != Outcome::Canceled)
    {
        run.note(format!(
            "waiting for {} secondary connection(s) to end before powering the DUT off",
            host.guests_running()
        ));
        tokio::select! {
            () = host.guests_ended() => {}
            _ = cancel.canceled() => {}
            _ = tokio::time::sleep_until(job_limit.at) => {}
        }
    }
    run.teardown().await;
    let end = end.err().unwrap_or_else(|| verdict(&cases));
    JobReport {
        job_name: job.name.clone(),
        outcome: end.outcome,
        reason: end.reason,
        cases,
        duration_s: started.elapsed().as_secs_f64(),
    }
}

/// Outcome when every action completed: failed if any case failed.
fn verdict(cases: &[TestCase]) -> JobEnd {
    let failed: Vec<String> = cases
        .iter()
        .filter(|c| c.result == CaseResult::Fail)
        .map(|c| format!("{}/{}", c.suite, c.name))
        .collect();
    if failed.is_empty() {
        JobEnd {
            outcome: Outcome::Passed,
            reason: String::new(),
        }
    } else {
        JobEnd::failed(format!(
            "{} test case(s) failed: {}",
            failed.len(),
            failed.join(", ")
        ))
    }
}

struct Run<'a> {
    job: &'a Job,
    ctx: &'a JobContext,
    device: &'a Device,
    events: UnboundedSender<RunEvent>,
    work_dir: Option<tempfile::TempDir>,
    /// The device's drivers (made with the work directory).
    rig: Option<QemuRig>,
    shell: Option<DutShell>,
    boot: Option<BootSpec>,
    overlay: Overlay,
    packed: Option<PackedOverlay>,
    /// The packed overlay as a disk image, attached at every boot (disk channel only).
    overlay_disk: Option<ChannelDisk>,
    /// `undo` commands of the user commands that ran, run at teardown (last first).
    undo: Vec<commands::Undo>,
    /// A secondary connection's state and SSH console.
    remote: secondary::Remote,
    /// Whether `authorized_keys` are in the DUT booted last.
    keys: KeyState,
    /// Whether the DUT booted last has its group network address.
    group_net: LinkState,
}

/// Whether the group's public keys are in the DUT (per boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyState {
    Absent,
    Installed,
}

/// Whether the DUT's group NIC is configured (per boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkState {
    Down,
    Up,
}

impl Run<'_> {
    fn note(&self, text: impl Into<String>) {
        let _ = self.events.send(RunEvent::Note(text.into()));
    }

    async fn actions(&mut self, job_limit: Limit, cases: &mut Vec<TestCase>) -> Result<(), JobEnd> {
        self.check_device()?;
        let mut builder = tempfile::Builder::new();
        builder.prefix("dutlab-job-");
        let work_dir = match &self.ctx.work_root {
            Some(root) => builder.tempdir_in(root),
            None => builder.tempdir(),
        }
        .map_err(|e| JobEnd::infra_error(format!("cannot create a work directory: {e}")))?;
        let work = work_dir.path().to_path_buf();
        self.work_dir = Some(work_dir);
        self.rig = Some(QemuRig::new(self.device.qemu.clone(), work.join("storage")));
        self.overlay = Overlay::prepare(self.job, &self.ctx.job_dir, &work, &self.ctx.policy)
            .await
            .map_err(|e| JobEnd::job_error(e.to_string()))?;
        if let Some(sec) = self
            .ctx
            .secondary
            .as_ref()
            .filter(|_| jobspec::is_secondary(self.job))
        {
            self.overlay
                .relocate(&secondary::overlay_root(&sec.job_id)?)
                .map_err(|e| JobEnd::infra_error(e.to_string()))?;
        }
        // Warnings of definitions fetched from git: only the run reads those files.
        for warning in &self.overlay.warnings {
            self.note(format!("warning: {warning}"));
        }
        if let Some(group) = &self.ctx.multinode {
            self.overlay.helpers = group
                .helper_scripts()
                .into_iter()
                .map(|(name, text)| (name.to_string(), text))
                .collect();
        }
        if !self.overlay.is_empty() {
            let packed = self
                .overlay
                .pack()
                .map_err(|e| JobEnd::job_error(e.to_string()))?;
            let channel = self.device.overlay_channel;
            match channel {
                // Refused before anything boots when it cannot fit the console.
                OverlayChannel::Console => {
                    packed
                        .for_console()
                        .map_err(|e| JobEnd::job_error(e.to_string()))?;
                }
                OverlayChannel::Disk => {
                    let path = work.join("overlay.img");
                    packed.write_disk_image(&path).map_err(|e| {
                        JobEnd::infra_error(format!("cannot write the overlay disk: {e}"))
                    })?;
                    self.overlay_disk = Some(
                        ChannelDisk::new(path, overlay::OVERLAY_DISK_SERIAL)
                            .map_err(|e| JobEnd::infra_error(e.to_string()))?,
                    );
                }
            }
            self.packed = Some(packed);
        }
        self.delayed_start(job_limit).await?;
        let timeouts = &self.job.timeouts;
        for (index, action) in self.job.actions.iter().enumerate() {
            let (name, lava_name) = (action.kind(), action.lava_name());
            let _ = self.events.send(RunEvent::ActionStarted { index, name });
            let length = action
                .timeout()
                .or_else(|| timeouts.actions.get(lava_name).copied())
                .unwrap_or(timeouts.action);
            let limit = Limit::new(name, length).min(job_limit);
            let connection = match action {
                Action::Boot(b) => b.connection_timeout,
                _ => None,
            }
            .or_else(|| timeouts.connections.get(lava_name).copied())
            .unwrap_or(timeouts.connection);
            let connection = ConnectionTimeout {
                level: connection_level(name),
                length: connection,
            };
            match action {
                Action::Deploy(d) if d.to == "ssh" => self.deploy_ssh(index, d, limit).await?,
                Action::Boot(b) if b.method == "ssh" => {
                    self.boot_ssh(index, b, &work, limit, connection).await?;
                }
                Action::Deploy(d) => {
                    let field = format!("actions[{index}].deploy");
                    // Each deploy action gets its own directory: image names repeat.
                    let deploy_dir = work.join(format!("deploy-{index}"));
                    let downloads_dir = work.join("downloads");
                    let scope = deploy::DeployScope {
                        job_dir: &self.ctx.job_dir,
                        work_dir: &deploy_dir,
                        policy: &self.ctx.policy,
                        extension: &self.device.job_qemu_options,
                        downloads_dir: &downloads_dir,
                    };
                    if d.only_downloads() {
                        let names =
                            deploy::deploy_downloads(&d.images, &field, scope, limit.at).await?;
                        for name in names {
                            self.note(format!("{field}: fetched downloads://{name}"));
                        }
                    } else {
                        let boot =
                            deploy::deploy_images(&d.images, &field, scope, limit.at).await?;
                        self.boot = Some(boot);
                    }
                }
                Action::Boot(b) => {
                    let login = self.login_for(b, index)?;
                    self.boot_dut(index, &work, login.as_ref(), limit, connection)
                        .await?;
                }
                Action::Test(t) if !t.interactive.is_empty() => {
                    let shell = Self::booted(&mut self.shell, index)?;
                    let mut sink = interactive::Sink {
                        events: &self.events,
                        cases,
                    };
                    let field = format!("actions[{index}].test");
                    let stage = definition_actions_before(self.job, index);
                    interactive::run_scripts(
                        shell,
                        &t.interactive,
                        stage,
                        &field,
                        limit,
                        &mut sink,
                    )
                    .await?;
                }
                Action::Test(t) if !t.monitors.is_empty() => {
                    let shell = Self::booted(&mut self.shell, index)?;
                    let mut sink = interactive::Sink {
                        events: &self.events,
                        cases,
                    };
                    let field = format!("actions[{index}].test");
                    monitor::run_monitors(
                        shell,
                        &t.monitors,
                        &field,
                        limit,
                        || connection.start(),
                        &mut sink,
                    )
                    .await?;
                }
                Action::Test(_) => {
                    self.test(index, limit, connection, cases).await?;
                }
                Action::Command(c) => {
                    let field = format!("actions[{index}].command");
                    let ran = commands::run_user_command(
                        &self.device.user_commands,
                        &self.device.name,
                        &c.name,
                        &field,
                        &work,
                        limit.at,
                        &self.events,
                    )
                    .await?;
                    self.undo.extend(ran);
                }
            }
        }
        Ok(())
    }

    /// Refuses, before anything is fetched or booted, a job no device type dutlab knows can
    /// run (`jobspec::check_runnable`, the check of `dutlab job validate`; the reason is its
    /// `field: reason`) or whose `device_type` is not this device's.
    fn check_device(&self) -> Result<(), JobEnd> {
        // A secondary connection runs on its host role's device, not on `device`.
        if jobspec::is_secondary(self.job) {
            return jobspec::check_secondary("job", self.job)
                .map_err(|e| JobEnd::job_error(format!("{}: {}", e.field, e.reason)));
        }
        // A role instance the lab runs comes without `protocols` (the agent drops it): here
        // only a whole group's file has it, and one device cannot run a whole group.
        if self.job.protocols.multinode.is_some() && self.ctx.multinode.is_none() {
            return Err(JobEnd::job_error(
                "protocols.lava-multinode: a multinode job runs as its role instances, each \
                 on its own device with the group's coordinator (`dutlab run` runs the whole \
                 group)",
            ));
        }
        jobspec::check_runnable("job", self.job)
            .map_err(|e| JobEnd::job_error(format!("{}: {}", e.field, e.reason)))?;
        if self.job.device_type != self.device.device_type {
            return Err(JobEnd::job_error(format!(
                "device_type: the job wants '{}', device '{}' is '{}'",
                self.job.device_type, self.device.name, self.device.device_type
            )));
        }
        Ok(())
    }

    /// The shell of the DUT booted last, for the test action at `index`.
    fn booted(shell: &mut Option<DutShell>, index: usize) -> Result<&mut DutShell, JobEnd> {
        shell.as_mut().ok_or_else(|| {
            JobEnd::job_error(format!(
                "actions[{index}].test: no boot action before this test action"
            ))
        })
    }

    /// How the boot action at `index` reaches the DUT. `None`: it waits for nothing, as
    /// LAVA's boot without `prompts` does; dutlab does so when the boot gives neither
    /// `prompts` nor `auto_login` and the first test action after it is `interactive` or
    /// `monitors` (which watch the console from power-on). Otherwise the device's defaults
    /// fill in what the boot does not give.
    fn login_for(&self, boot: &Boot, index: usize) -> Result<Option<Login>, JobEnd> {
        if boot.prompts.is_empty() && boot.auto_login.is_none() {
            let next_test = self.job.actions[index + 1..]
                .iter()
                .take_while(|a| !matches!(a, Action::Boot(_)))
                .find_map(|a| match a {
                    Action::Test(t) => Some(t),
                    _ => None,
                });
            if next_test.is_some_and(|t| !t.interactive.is_empty() || !t.monitors.is_empty()) {
                return Ok(None);
            }
        }
        let field = format!("actions[{index}].boot");
        let compile = |what: &str, p: &str| {
            Regex::new(p).map_err(|e| {
                JobEnd::job_error(format!("{field}.{what}: {p:?} is not a valid pattern: {e}"))
            })
        };
        let defaults = &self.device.login;
        let prompt_texts = if boot.prompts.is_empty() {
            &defaults.prompts
        } else {
            &boot.prompts
        };
        if prompt_texts.is_empty() {
            return Err(JobEnd::job_error(format!(
                "{field}.prompts: at least one prompt is needed"
            )));
        }
        let prompts = prompt_texts
            .iter()
            .map(|p| compile("prompts", p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(match (&boot.auto_login, &defaults.auto_login) {
            (Some(a), _) => Login {
                prompts,
                login_prompt: Some(compile("auto_login.login_prompt", &a.login_prompt)?),
                username: a.username.clone(),
                password_prompt: a
                    .password_prompt
                    .as_deref()
                    .map(|p| compile("auto_login.password_prompt", p))
                    .transpose()?,
                password: a.password.clone(),
                login_commands: a.login_commands.clone(),
            },
            (None, Some(d)) if boot.prompts.is_empty() => Login {
                prompts,
                login_prompt: Some(compile("auto_login.login_prompt", &d.login_prompt)?),
                username: d.username.clone(),
                password_prompt: d
                    .password_prompt
                    .as_deref()
                    .map(|p| compile("auto_login.password_prompt", p))
                    .transpose()?,
                password: d.password.clone(),
                login_commands: Vec::new(),
            },
            _ => Login {
                prompts,
                login_prompt: None,
                username: String::new(),
                password_prompt: None,
                password: None,
                login_commands: Vec::new(),
            },
        }))
    }

    async fn boot_dut(
        &mut self,
        index: usize,
        work: &std::path::Path,
        login: Option<&Login>,
        limit: Limit,
        connection: ConnectionTimeout,
    ) -> Result<(), JobEnd> {
        // `check_device` refused any boot method but qemu. A second boot replaces the first DUT.
        self.power_off().await;
        let spec = match &self.boot {
            Some(spec) => spec.clone(),
            None => {
                let image = self.ctx.default_image.as_ref().ok_or_else(|| {
                    JobEnd::job_error(
                        "the job has no deploy action and the device has no default image",
                    )
                })?;
                let spec = deploy::deploy_default(image, work).await?;
                self.boot = Some(spec.clone());
                spec
            }
        };
        let mut spec = spec;
        spec.channel_disks = self.overlay_disk.iter().cloned().collect();
        spec.group_link = self.ctx.group_net.map(|g| g.link);
        let run_dir = work.join(format!("vm-{index}"));
        let rig = self
            .rig
            .as_mut()
            .ok_or_else(|| JobEnd::infra_error("no rig: the work directory was not made"))?;
        rig.set_boot(spec);
        rig.launch(&run_dir, session::console_recorder(&self.events), limit.at)
            .await
            .map_err(|e| JobEnd::infra_error(format!("QEMU: {e}")))?;
        let hub = rig
            .hub()
            .ok_or_else(|| JobEnd::infra_error("QEMU: launched without a console"))?;
        let shell = DutShell::new(hub, &self.events);
        let mut note = format!(
            "QEMU started (pid {}, {} accel)",
            rig.pid().unwrap_or_default(),
            match self.device.qemu.accel {
                qemu::Accel::Tcg => "tcg",
                qemu::Accel::Kvm => "kvm",
            }
        );
        if let Some(ssh) = rig.ssh() {
            if let Some(publish) = &self.ctx.publish_ssh {
                publish.publish(ssh.host);
            }
            note.push_str(&format!(
                "; DUT SSH (port {}) forwarded from {}",
                ssh.guest_port, ssh.host
            ));
        }
        rig.power_on()
            .await
            .map_err(|e| JobEnd::infra_error(e.to_string()))?;
        self.note(note);
        let shell = self.shell.insert(shell);
        match login {
            Some(login) => shell.login(login, limit.min(connection.start())).await?,
            None => self.note(format!(
                "actions[{index}].boot: no prompts: the DUT is on, nothing is waited for (the \
                 next test action watches its console)"
            )),
        }
        Ok(())
    }

    async fn test(
        &mut self,
        index: usize,
        limit: Limit,
        connection: ConnectionTimeout,
        cases: &mut Vec<TestCase>,
    ) -> Result<(), JobEnd> {
        let shell = self.shell.as_mut().ok_or_else(|| {
            JobEnd::job_error(format!(
                "actions[{index}].test: no boot action before this test action"
            ))
        })?;
        let runs = self.overlay.runs.get(&index).cloned().unwrap_or_default();
        // LAVA's test shell sets its prompt when it starts, not at boot: an interactive
        // script before it sees the DUT's own prompt.
        if shell.setup == ShellSetup::AsBooted {
            shell.prepare_shell(limit.min(connection.start())).await?;
        }
        if self.keys == KeyState::Absent
            && authorizes(self.job)
            && !self.ctx.authorized_keys.is_empty()
        {
            shell
                .authorize_keys(&self.ctx.authorized_keys, limit.min(connection.start()))
                .await?;
            self.keys = KeyState::Installed;
            let _ = self.events.send(RunEvent::Note(format!(
                "{} SSH key(s) authorized in the DUT for secondary connections",
                self.ctx.authorized_keys.len()
            )));
        }
        if self.group_net == LinkState::Down
            && let Some(net) = &self.ctx.group_net
        {
            shell
                .join_group_net(net, limit.min(connection.start()))
                .await?;
            self.group_net = LinkState::Up;
            let _ = self.events.send(RunEvent::Note(format!(
                "group network: {}/{} on the NIC {}",
                net.address,
                net.prefix,
                net.link.mac()
            )));
        }
        if shell.overlay == OverlayState::Absent
            && let Some(packed) = &self.packed
        {
            let started = std::time::Instant::now();
            let used = shell
                .install_overlay(
                    packed,
                    self.device.overlay_channel,
                    limit.min(connection.start()),
                )
                .await?;
            let _ = self.events.send(RunEvent::Note(format!(
                "test overlay ({} bytes) installed over the {} in {:.1}s",
                packed.tar().len(),
                match used {
                    OverlayChannel::Disk => "overlay disk",
                    OverlayChannel::Console => "console",
                },
                started.elapsed().as_secs_f64()
            )));
        }
        // LAVA's test shell keeps its signal state for the whole test action.
        let mut signals = ActionSignals::default();
        for run in &runs {
            let unfinished = |cases: &mut Vec<TestCase>| {
                let case = TestCase::new("lava", run.id.clone(), CaseResult::Fail);
                let _ = self.events.send(RunEvent::Case(case.clone()));
                cases.push(case);
            };
            match shell
                .run_test(
                    run,
                    &mut signals,
                    limit,
                    &self.events,
                    cases,
                    self.ctx.multinode.as_ref(),
                )
                .await?
            {
                RunEnd::Completed => {}
                RunEnd::Incomplete => unfinished(cases),
                // LAVA marks the run failed when the test error came inside it.
                RunEnd::Raised {
                    reason,
                    unfinished: inside,
                } => {
                    if inside {
                        unfinished(cases);
                    }
                    return Err(JobEnd::failed(format!("{}: {reason}", run.id)));
                }
            }
        }
        Ok(())
    }

    async fn power_off(&mut self) {
        self.shell = None;
        self.keys = KeyState::Absent;
        self.group_net = LinkState::Down;
        if let Some(console) = self.remote.console.take() {
            console.close().await;
        }
        if let Some(rig) = self.rig.as_mut()
            && let Err(e) = rig.power_off().await
        {
            self.note(format!("power off: {e}"));
        }
    }

    async fn teardown(&mut self) {
        self.power_off().await;
        if let Some(work) = self.work_dir.as_ref().map(|d| d.path().to_path_buf()) {
            while let Some(undo) = self.undo.pop() {
                if let Err(e) = undo.run(&work, &self.events).await {
                    self.note(format!("{}: {}", undo.field, e.reason));
                }
            }
        }
        if let Some(dir) = self.work_dir.take()
            && let Err(e) = dir.close()
        {
            self.note(format!("cannot remove the work directory: {e}"));
        }
    }
}

/// Whether a deploy of `job` says `authorize: ssh`.
fn authorizes(job: &Job) -> bool {
    job.actions
        .iter()
        .any(|a| matches!(a, Action::Deploy(d) if d.authorize.is_some()))
}

/// LAVA's `stage` of the test action at `index`: how many test actions with definitions
/// (the ones that need an overlay) come before it.
fn definition_actions_before(job: &Job, index: usize) -> usize {
    job.actions[..index]
        .iter()
        .filter(|a| matches!(a, Action::Test(t) if !t.definitions.is_empty()))
        .count()
}

/// The connection timeout of an action: each wait for the DUT gets its own deadline.
#[derive(Debug, Clone, Copy)]
struct ConnectionTimeout {
    level: &'static str,
    length: Duration,
}

impl ConnectionTimeout {
    /// A limit that starts now.
    fn start(self) -> Limit {
        Limit::new(self.level, self.length)
    }
}

fn connection_level(action: &'static str) -> &'static str {
    match action {
        "deploy" => "deploy connection",
        "boot" => "boot connection",
        _ => "test connection",
    }
}

/// `90s` -> "1m30s".
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

/// Lower-case hex sha256.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_for_people() {
        assert_eq!(human_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(human_duration(Duration::from_secs(600)), "10m");
        assert_eq!(human_duration(Duration::from_secs(5)), "5s");
        assert_eq!(human_duration(Duration::from_secs(3600)), "1h");
    }

    #[test]
    fn verdict_fails_on_any_failed_case() {
        let case = |r| TestCase::new("0_s", "c", r);
        assert_eq!(verdict(&[case(CaseResult::Pass)]).outcome, Outcome::Passed);
        assert_eq!(verdict(&[]).outcome, Outcome::Passed);
        let v = verdict(&[case(CaseResult::Pass), case(CaseResult::Fail)]);
        assert_eq!(v.outcome, Outcome::Failed);
        assert!(v.reason.contains("0_s/c"), "{}", v.reason);
    }
}
