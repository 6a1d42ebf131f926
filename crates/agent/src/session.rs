//! Sessions: the agent's side of a person's lease. One task per session owns the device's
//! rig (a [`QemuRig`] built from the device settings, not powered at first) from
//! `StartSession` until `DropLease` or shutdown, and runs the holder's requests in order.
//!
//! ```text
//!  StartSession ─> spawn ─> Off ──power on──> On (QEMU launched, console pump recording) ─┐
//!                            ^ └─flash: fetch (?lease=L), verify, overlay = next boot's disk │
//!                            └──────────────────────power off / cycle ───────────────────┘
//!  DropLease / shutdown ─> power off, remove the session directory ─> Note::Ended ─> DeviceReady
//! ```
//!
//! Access for other parts of the agent (console viewers, TCP forwards): the main loop keeps
//! `sessions: BTreeMap<LeaseId, SessionHandle>`; [`SessionHandle::console`] gives a
//! [`ConsoleTap`] of the running console (viewers with history, input) and
//! [`SessionHandle::ssh_endpoint`] the host address of the DUT's SSH server,
//! [`SessionHandle::forwards`] its other ports (forwarded on demand), all `None` while the
//! DUT is off. [`SessionHandle::live`] is a `watch` of both, updated at every power
//! change.
//!
//! Invariants:
//! - The task ends with exactly one [`SessionNote::Ended`], after the DUT is off and the
//!   session directory (`work_dir/devices/<device>/session`) is gone; the device is busy
//!   until then.
//! - Requests run one at a time, in arrival order; each gets exactly one reply. An end
//!   (drop, shutdown) interrupts a running request, which is answered `failed`.
//! - Power-on boots the device's lease boot: the default guest image (kernel, initramfs with
//!   the lease's checked SSH keys appended as `/root/.ssh/authorized_keys`, a linked clone of
//!   its rootfs made once per session), or with the image flashed last as its disk. Base
//!   images are never written.
//! - The console is recorded from power-on to power-off into `console.log` in the session
//!   directory, at most [`CONSOLE_LOG_CAP`] bytes per session.
//! - A screenshot exists only on a rig with video (`qemu.video: vga`); QEMU writes it into a
//!   private file in the session directory, and it is checked as a PNG of at most
//!   [`proto::session::MAX_SCREENSHOT`] bytes before it leaves the agent.
//! - A flash fetches only the artifact the controller named, for this lease, verifies its
//!   SHA-256 (the cache's rule) and makes a fresh linked clone of it the disk.

use crate::artifacts::ArtifactSource;
use crate::job::JobNote;
use driver::console::ConsoleTap;
use driver::rig::{Console, Endpoint, Network, Storage};
use driver::{Power, PowerState};
use proto::session::{
    PowerAction, PowerState as WirePower, RequestId, SessionAction, SessionResult,
};
use proto::{Epoch, LeaseId};
use qemu::image::GuestImage;
use qemu::{BootSpec, Drive, QemuRig};
use runner::device::Device;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc::{self, UnboundedSender};
use tokio::sync::watch;
use tokio::time::Instant;

/// Requests queued for one session before the agent answers "busy".
pub const QUEUE: usize = 16;
/// Bytes of console output kept in a session's `console.log`.
pub const CONSOLE_LOG_CAP: u64 = 16 << 20;
/// How long QEMU may take to start.
const LAUNCH_WAIT: Duration = Duration::from_secs(60);

/// What a session's task needs.
#[derive(Debug)]
pub struct SessionStart {
    pub agent: String,
    pub lease: LeaseId,
    pub epoch: Epoch,
    pub device: Device,
    /// `work_dir/devices/<device>/session`, made by the task, removed at its end.
    pub dir: PathBuf,
    /// Checked `authorized_keys` lines.
    pub ssh_keys: Vec<String>,
    pub artifacts: ArtifactSource,
}

/// What the main loop asks of a session.
#[derive(Debug)]
pub enum SessionCommand {
    Request {
        request: RequestId,
        action: SessionAction,
    },
    /// Power off and end (a drop or the agent's shutdown).
    End,
}

/// What a session tells the main loop.
#[derive(Debug)]
pub enum SessionNote {
    Reply {
        lease: LeaseId,
        epoch: Epoch,
        request: RequestId,
        result: SessionResult,
    },
    Progress {
        lease: LeaseId,
        epoch: Epoch,
        request: RequestId,
        done: u64,
        total: u64,
    },
    /// The DUT is off and the session's files are gone.
    Ended { lease: LeaseId },
}

/// What is reachable of a session's DUT right now.
#[derive(Debug, Clone, Default)]
pub struct Live {
    pub console: Option<ConsoleTap>,
    pub ssh: Option<Endpoint>,
    /// The DUT's ports forwarded on demand (QEMU user-mode network).
    pub forwards: Option<std::sync::Arc<qemu::PortForwards>>,
}

/// The main loop's handle of a running session.
#[derive(Debug)]
pub struct SessionHandle {
    pub epoch: Epoch,
    pub device: String,
    commands: mpsc::Sender<SessionCommand>,
    live: watch::Receiver<Live>,
    ending: bool,
}

impl SessionHandle {
    /// The running console of the DUT (`None` while it is off).
    pub fn console(&self) -> Option<ConsoleTap> {
        self.live.borrow().console.clone()
    }

    /// Where the host reaches the DUT's SSH server (`None` while it is off or has no NIC).
    pub fn ssh_endpoint(&self) -> Option<Endpoint> {
        self.live.borrow().ssh
    }

    /// The DUT's ports reachable from the agent on demand (`None` while it is off).
    pub fn forwards(&self) -> Option<std::sync::Arc<qemu::PortForwards>> {
        self.live.borrow().forwards.clone()
    }

    /// Changes of [`SessionHandle::console`] and [`SessionHandle::ssh_endpoint`].
    pub fn live(&self) -> watch::Receiver<Live> {
        self.live.clone()
    }

    /// Queues a request; `false` when the session's queue is full or it is ending.
    pub fn request(&self, request: RequestId, action: SessionAction) -> bool {
        !self.ending
            && self
                .commands
                .try_send(SessionCommand::Request { request, action })
                .is_ok()
    }

    /// Asks the session to end (once).
    pub fn end(&mut self) {
        if !self.ending {
            self.ending = true;
            // A full queue still ends: the task also ends when every sender is gone.
            let _ = self.commands.try_send(SessionCommand::End);
        }
    }

    pub fn is_ending(&self) -> bool {
        self.ending
    }
}

/// Starts a session's task.
pub fn spawn(start: SessionStart, notes: UnboundedSender<JobNote>) -> SessionHandle {
    let (commands, rx) = mpsc::channel(QUEUE);
    let (live_tx, live) = watch::channel(Live::default());
    let handle = SessionHandle {
        epoch: start.epoch,
        device: start.device.name.clone(),
        commands,
        live,
        ending: false,
    };
    let lease = start.lease;
    let task = tokio::spawn(run(start, rx, notes.clone(), live_tx));
    tokio::spawn(async move {
        if let Err(e) = task.await
            && e.is_panic()
        {
            tracing::error!(%lease, "the session task panicked");
            let _ = notes.send(JobNote::Session(SessionNote::Ended { lease }));
        }
    });
    handle
}

struct Session {
    start: SessionStart,
    rig: QemuRig,
    notes: UnboundedSender<JobNote>,
    live: watch::Sender<Live>,
    /// Console bytes already written to `console.log`.
    logged: std::sync::Arc<std::sync::atomic::AtomicU64>,
    launches: usize,
    /// Flashed artifacts in use as backing files of the disk.
    pins: Vec<crate::artifacts::Pinned>,
}

async fn run(
    start: SessionStart,
    mut commands: mpsc::Receiver<SessionCommand>,
    notes: UnboundedSender<JobNote>,
    live: watch::Sender<Live>,
) {
    let lease = start.lease;
    let rig = QemuRig::new(start.device.qemu.clone(), start.dir.join("storage"));
    let mut s = Session {
        start,
        rig,
        notes,
        live,
        logged: Default::default(),
        launches: 0,
        pins: Vec::new(),
    };
    if let Err(e) = std::fs::create_dir_all(&s.start.dir) {
        tracing::warn!(%lease, "cannot create {}: {e}", s.start.dir.display());
    }
    let mut queued: VecDeque<(RequestId, SessionAction)> = VecDeque::new();
    'serve: loop {
        let (request, action) = match queued.pop_front() {
            Some(next) => next,
            None => match commands.recv().await {
                Some(SessionCommand::Request { request, action }) => (request, action),
                Some(SessionCommand::End) | None => break 'serve,
            },
        };
        let mut ended = false;
        let result = {
            let work = s.handle(request, action);
            tokio::pin!(work);
            loop {
                tokio::select! {
                    result = &mut work => break result,
                    command = commands.recv(), if !ended => match command {
                        Some(SessionCommand::Request { request, action }) => {
                            queued.push_back((request, action));
                        }
                        Some(SessionCommand::End) | None => {
                            ended = true;
                            break SessionResult::Failed {
                                reason: "the session ended while the request ran".into(),
                            };
                        }
                    },
                }
            }
        };
        s.reply(request, result);
        if ended {
            break;
        }
    }
    for (request, _) in queued {
        s.reply(
            request,
            SessionResult::Failed {
                reason: "the session ended".into(),
            },
        );
    }
    s.teardown().await;
}

impl Session {
    fn reply(&self, request: RequestId, result: SessionResult) {
        let _ = self.notes.send(JobNote::Session(SessionNote::Reply {
            lease: self.start.lease,
            epoch: self.start.epoch,
            request,
            result,
        }));
    }

    async fn handle(&mut self, request: RequestId, action: SessionAction) -> SessionResult {
        let lease = self.start.lease;
        let answer = match action {
            SessionAction::Power { power } => {
                tracing::info!(%lease, device = %self.start.device.name, "power {power}");
                self.power(power)
                    .await
                    .map(|state| SessionResult::Power { state })
            }
            SessionAction::Flash { sha256, size } => {
                tracing::info!(%lease, device = %self.start.device.name, "flash sha256:{sha256} ({size} bytes)");
                self.flash(request, &sha256, size)
                    .await
                    .map(|bytes| SessionResult::Flashed { bytes })
            }
            SessionAction::Screenshot => self
                .screenshot()
                .await
                .map(|png| SessionResult::Screenshot { png }),
            SessionAction::Address => self
                .address()
                .map(|address| SessionResult::Address { address }),
            SessionAction::Serial => self
                .serial()
                .await
                .map(|(log, skipped)| SessionResult::Serial { log, skipped }),
        };
        answer.unwrap_or_else(|reason| {
            tracing::warn!(%lease, "request {request} failed: {reason}");
            SessionResult::Failed { reason }
        })
    }

    async fn state(&mut self) -> Result<WirePower, String> {
        let state = self.rig.power_state().await.map_err(|e| e.to_string())?;
        Ok(match state {
            PowerState::On => WirePower::On,
            PowerState::Off => WirePower::Off,
            PowerState::Paused => WirePower::Paused,
        })
    }

    async fn power(&mut self, action: PowerAction) -> Result<WirePower, String> {
        match action {
            PowerAction::Status => {}
            PowerAction::On => {
                if self.state().await? != WirePower::On {
                    self.power_on().await?;
                }
            }
            PowerAction::Off => self.power_off().await?,
            PowerAction::Cycle => {
                self.power_off().await?;
                self.power_on().await?;
            }
        }
        self.state().await
    }

    async fn power_off(&mut self) -> Result<(), String> {
        let result = self.rig.power_off().await.map_err(|e| e.to_string());
        self.live.send_replace(Live::default());
        result
    }

    /// Launches QEMU with the lease boot and runs it.
    async fn power_on(&mut self) -> Result<(), String> {
        // A guest that powered itself off left QEMU gone: launch again.
        self.rig.power_off().await.map_err(|e| e.to_string())?;
        self.prepare_boot().await?;
        self.launches += 1;
        let run_dir = self.start.dir.join(format!("vm-{}", self.launches));
        let recorder = self.console_log();
        self.rig
            .launch(&run_dir, recorder, Instant::now() + LAUNCH_WAIT)
            .await
            .map_err(|e| format!("QEMU: {e}"))?;
        self.rig.power_on().await.map_err(|e| e.to_string())?;
        let live = Live {
            console: self.rig.hub().map(|h| h.tap()),
            ssh: self.rig.ssh(),
            forwards: self.rig.forwards(),
        };
        tracing::info!(
            lease = %self.start.lease, device = %self.start.device.name,
            pid = self.rig.pid().unwrap_or_default(), ssh = ?live.ssh, "DUT powered on"
        );
        self.live.send_replace(live);
        Ok(())
    }

    /// The first power-on of a session fills in the default guest image: its kernel, its
    /// initramfs (with the keys), and a linked clone of its rootfs unless a flash gave a disk.
    async fn prepare_boot(&mut self) -> Result<(), String> {
        if self.rig.boot().kernel.is_some() {
            return Ok(());
        }
        let image = self.default_image()?;
        let initrd = if self.start.ssh_keys.is_empty() {
            image.initramfs.clone()
        } else {
            let keys = proto::session::check_public_keys(&self.start.ssh_keys)
                .map_err(|e| format!("ssh_keys{e}"))?;
            let out = self.start.dir.join("initramfs-keys.cpio");
            let _ = std::fs::remove_file(&out);
            qemu::image::initrd_with_keys(&image.initramfs, &keys, &out)
                .map_err(|e| e.to_string())?;
            out
        };
        let mut drives = self.rig.boot().drives.clone();
        if drives.is_empty() {
            let overlay = self.start.dir.join("rootfs.overlay.qcow2");
            if !overlay.exists() {
                qemu::disk::create_overlay(&image.rootfs, "qcow2", &overlay)
                    .await
                    .map_err(|e| format!("default image: {e}"))?;
            }
            drives.push(Drive {
                path: overlay,
                format: "qcow2".into(),
            });
        }
        self.rig.set_boot(BootSpec {
            kernel: Some(image.kernel.clone()),
            initrd: Some(initrd),
            drives,
            ..BootSpec::default()
        });
        Ok(())
    }

    fn default_image(&self) -> Result<GuestImage, String> {
        let dir = self
            .start
            .device
            .image_dir
            .clone()
            .unwrap_or_else(qemu::image::default_image_dir);
        GuestImage::open(&dir).map_err(|e| {
            format!(
                "device {}: default guest image {}: {e} (build it with `dutlab image build`)",
                self.start.device.name,
                dir.display()
            )
        })
    }

    /// A recorder appending console bytes to `console.log`, up to the cap (written by a task:
    /// the pump never waits for the disk).
    fn console_log(&self) -> driver::console::Recorder {
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let path = self.start.dir.join("console.log");
        let logged = self.logged.clone();
        tokio::spawn(async move {
            let file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .await;
            let Ok(mut file) = file else {
                return;
            };
            while let Some(bytes) = rx.recv().await {
                if file.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            let _ = file.flush().await;
        });
        Box::new(move |bytes: &[u8]| {
            use std::sync::atomic::Ordering;
            let before = logged.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            let room = CONSOLE_LOG_CAP.saturating_sub(before);
            let keep = bytes.len().min(usize::try_from(room).unwrap_or(usize::MAX));
            if keep > 0 {
                let _ = tx.send(bytes[..keep].to_vec());
            }
        })
    }

    /// Fetches the artifact for this lease and makes it the disk of the next boot.
    async fn flash(&mut self, request: RequestId, sha256: &str, size: u64) -> Result<u64, String> {
        if !proto::session::check_digest(sha256) {
            return Err(format!("sha256: {sha256:?} is not a digest"));
        }
        let source = &self.start.artifacts;
        let token = crate::link::read_token(&source.token_file).map_err(|e| e.to_string())?;
        let client =
            client::Client::with_trust(&source.controller, Some(token), source.trust.clone())
                .map_err(|e| e.to_string())?;
        let lease = self.start.lease;
        let epoch = self.start.epoch;
        let notes = self.notes.clone();
        let reported = std::sync::atomic::AtomicU64::new(0);
        let progress = move |done: u64| {
            use std::sync::atomic::Ordering;
            // About every 4 MiB, and at the end.
            let last = reported.load(Ordering::Relaxed);
            if done >= size || done >= last + (4 << 20) {
                reported.store(done, Ordering::Relaxed);
                let _ = notes.send(JobNote::Session(SessionNote::Progress {
                    lease,
                    epoch,
                    request,
                    done,
                    total: size,
                }));
            }
        };
        let (pinned, _found) = source
            .cache
            .get(sha256, |out| async move {
                client
                    .download_artifact_for(sha256, client::FetchFor::Lease(lease), &out, &progress)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())?;
        let bytes = std::fs::metadata(&pinned.path)
            .map(|m| m.len())
            .map_err(|e| e.to_string())?;
        self.rig
            .write_image(&pinned.path)
            .await
            .map_err(|e| e.to_string())?;
        // The overlay refers to the cached file: keep it pinned for the session.
        self.pins.push(pinned);
        Ok(bytes)
    }

    /// A PNG of the display (at most [`proto::session::MAX_SCREENSHOT`] bytes, checked by the
    /// driver), as base64 for the reply.
    async fn screenshot(&mut self) -> Result<String, String> {
        use base64::Engine as _;
        use driver::rig::{Rig, Video};
        let device = self.start.device.name.clone();
        let Some(video) = self.rig.video() else {
            return Err(format!(
                "device {device} has no video (the operator sets qemu.video: vga in its configuration)"
            ));
        };
        let png = video
            .screenshot(proto::session::MAX_SCREENSHOT)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(lease = %self.start.lease, %device, width = png.width(), height = png.height(), bytes = png.bytes().len(), "screenshot");
        Ok(base64::engine::general_purpose::STANDARD.encode(png.bytes()))
    }

    /// The DUT's own address on its network, while it runs.
    fn address(&mut self) -> Result<String, String> {
        use driver::rig::Rig;
        let device = self.start.device.name.clone();
        let Some(network) = self.rig.network() else {
            return Err(format!(
                "device {device} has no network (qemu.network: none)"
            ));
        };
        network
            .address()
            .map(|a| a.to_string())
            .ok_or_else(|| format!("device {device} is off: it has no address"))
    }

    /// The end of `console.log` (at most [`proto::session::MAX_SERIAL`] bytes) as base64,
    /// and how many bytes came before it.
    async fn serial(&mut self) -> Result<(String, u64), String> {
        use base64::Engine as _;
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let path = self.start.dir.join("console.log");
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            // Never powered on in this session: nothing recorded yet.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((String::new(), 0)),
            Err(e) => return Err(format!("console log: {e}")),
        };
        let len = file
            .metadata()
            .await
            .map_err(|e| format!("console log: {e}"))?
            .len();
        let skipped = len.saturating_sub(proto::session::MAX_SERIAL as u64);
        file.seek(std::io::SeekFrom::Start(skipped))
            .await
            .map_err(|e| format!("console log: {e}"))?;
        let mut bytes = Vec::new();
        file.take(proto::session::MAX_SERIAL as u64)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| format!("console log: {e}"))?;
        Ok((
            base64::engine::general_purpose::STANDARD.encode(&bytes),
            skipped,
        ))
    }

    async fn teardown(mut self) {
        if let Err(e) = self.rig.power_off().await {
            tracing::warn!(lease = %self.start.lease, "power off at the end of the session: {e}");
        }
        self.live.send_replace(Live::default());
        drop(std::mem::take(&mut self.pins));
        if let Err(e) = std::fs::remove_dir_all(&self.start.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(lease = %self.start.lease, "cannot remove {}: {e}", self.start.dir.display());
        }
        tracing::info!(lease = %self.start.lease, device = %self.start.device.name, agent = %self.start.agent, "session ended: DUT off");
        let _ = self.notes.send(JobNote::Session(SessionNote::Ended {
            lease: self.start.lease,
        }));
    }
}
