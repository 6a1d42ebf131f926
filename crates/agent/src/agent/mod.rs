//! The agent's main loop: the link to the controller, the devices, and the leases they run.
//!
//! ```text
//!         ┌──────── backoff (250 ms .. 3 s, jitter) <──────────────┐
//!         v                                                          │ link lost
//!   connect + Hello ──Welcome──> resume (resend logs after cursors, │
//!         │ Refused / error      reports of finished leases) ──> serve
//!         └──> backoff                                      shutdown │
//!                                          stop jobs, wait for teardown, send what is left, close
//!
//!  lease:  Running ──job task ends──> Finished ──FinishAcked──> forgotten (spool deleted)
//!             │ DropLease / not live at Welcome                    ^
//!             └──> Running (fate: forget) ──ends──> DeviceReady ───┘
//! ```
//!
//! Invariants:
//! - With several controller addresses, a failed connect moves to the next one at once (the
//!   backoff pause comes after a whole round failed); a lost link is dialled again at the
//!   same address first. Artifacts and session files are fetched from the controller of the
//!   current link.
//! - The main loop owns all lease and device state; job tasks only append to their spool and
//!   send [`JobNote`]s. Notes are handled whether or not the link is up.
//! - A device runs at most one lease, a job's or a session's; it is busy from `StartJob` until
//!   the runner's teardown ended (then `DeviceReady` if the lease was dropped), or from
//!   `StartSession` until the session's teardown (DUT off) after `DropLease` (then
//!   `DeviceReady`). Sessions are listed in every hello; the controller starts them again
//!   after a reconnect (a repeated `StartSession` of a kept session is answered again).
//! - Session requests go to the session's task; its replies go out on the link that is up
//!   when they come (a reply while the link is down is lost: the controller's caller times
//!   out).
//! - Log records reach the link only from the spool, in order; on every connection the
//!   controller's cursor says where to resume, so it sees every record at least once.
//! - `JobFinished` goes out after the lease's last record, once per connection, until
//!   `FinishAcked`.
//! - Controller input never crashes the agent: unparsable text is logged and ignored, messages
//!   about unknown leases or other epochs are ignored.

use crate::AgentConfig;
use crate::backoff::Backoff;
use crate::job::{self, JobNote, JobStart, Stop};
use crate::link::{self, Link, LinkDown};
use crate::session::{self, SessionHandle, SessionNote, SessionStart};
use crate::spool::{Meta, Phase, Spool, SpoolReader};
use crate::startup::Prepared;
use crate::streams::{Reaches, Streams, ToLink};
use proto::link::{
    AgentMessage, Binary, ControllerMessage, HeldLease, HeldSession, LogCursor, LogFrame,
};
use proto::{Epoch, JobId, JobReport, LeaseId, Outcome, Seq};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::{Pin, pin};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

mod connections;
mod jobs;
mod multinode;
mod nets;
mod notes;
mod sessions;

/// Log bytes per binary frame (well under `MAX_FRAME`).
const FRAME_BUDGET: usize = 256 << 10;
/// Frames sent before the loop looks at incoming messages again.
const FRAMES_PER_TURN: usize = 8;
/// Notes handled in one turn of the loop before logs are pumped.
const NOTES_PER_TURN: usize = 256;

/// Whether the agent takes new work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Serving,
    Stopping,
}

/// What a device is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Idle,
    Busy(LeaseId),
}

/// What becomes of a lease once its job ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Report it and keep it until `FinishAcked`.
    Report,
    /// The controller no longer wants it: delete it and say `DeviceReady`.
    Forget,
}

#[derive(Debug)]
enum LeaseState {
    Running { stop: watch::Sender<Stop> },
    Finished { report: JobReport, last_seq: Seq },
}

/// Whether this connection has carried the lease's report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReportSent {
    No,
    Yes,
}

#[derive(Debug)]
struct Lease {
    epoch: Epoch,
    job: JobId,
    device: String,
    state: LeaseState,
    fate: Fate,
    /// Last record in the spool.
    spooled: Seq,
    /// Last record on the current connection (the controller's cursor, then what was sent).
    sent: Seq,
    report_sent: ReportSent,
    /// Positioned at `sent + 1`.
    reader: SpoolReader,
    /// The job's MultiNode call not answered yet (a newer call replaces it).
    call: Option<multinode::PendingCall>,
    /// The group whose network its DUT is on (a sub-job with a device of its own).
    net: Option<JobId>,
}

/// How a connection ended.
#[derive(Debug)]
enum SessionEnd {
    /// Shutdown completed; the link was closed.
    Done,
    Lost(LinkDown),
}

pub struct Agent {
    config: AgentConfig,
    /// One per controller address (never empty), and the one dialled next.
    dialers: Vec<link::Dialer>,
    current: usize,
    spool: Spool,
    mode: Mode,
    devices: BTreeMap<String, Slot>,
    leases: BTreeMap<LeaseId, Lease>,
    /// Sessions of people's leases (see [`crate::session`] for what other parts may use).
    sessions: BTreeMap<LeaseId, SessionHandle>,
    /// Devices torn down for dropped leases whose `DeviceReady` is not sent yet.
    ready_unsent: BTreeSet<String>,
    notes_tx: UnboundedSender<JobNote>,
    notes: UnboundedReceiver<JobNote>,
    /// Where jobs get their artifacts.
    artifacts: crate::artifacts::ArtifactSource,
    /// What streams of each session may reach.
    reaches: Reaches,
    /// Random per agent process: picks the multicast segment of each group's network
    /// (`runner::multinode::segment_of`), so groups of other labs on this host get others.
    group_salt: [u8; 16],
    /// Secondary connections: the groups whose hosts run here and their guests.
    connections: connections::Connections,
    /// Bridges of group networks to other agents, and the frames they heard.
    nets: nets::Nets,
    heard_tx: tokio::sync::mpsc::Sender<crate::bridge::Heard>,
    heard: tokio::sync::mpsc::Receiver<crate::bridge::Heard>,
}

impl Agent {
    pub fn new(config: AgentConfig, dialers: Vec<link::Dialer>, prepared: Prepared) -> Agent {
        let (notes_tx, notes) = unbounded_channel();
        let (heard_tx, heard) = tokio::sync::mpsc::channel(crate::bridge::UP_QUEUE);
        let mut group_salt = [0u8; 16];
        if let Err(e) = getrandom::fill(&mut group_salt) {
            // Only the separation from other labs' groups on this host rests on it.
            tracing::warn!("no randomness for the group networks' salt: {e}");
        }
        let devices = config
            .devices
            .iter()
            .map(|d| (d.name.clone(), Slot::Idle))
            .collect();
        let spool = prepared.spool;
        let artifacts = crate::artifacts::ArtifactSource {
            cache: prepared.cache,
            controller: crate::artifacts::http_base(&config.controllers[0]),
            trust: config.trust.clone(),
            token_file: config.token_file.clone(),
        };
        let leases = prepared
            .recovered
            .into_iter()
            .filter_map(|r| {
                let Phase::Finished { report, last_seq } = r.meta.phase else {
                    return None;
                };
                let lease = Lease {
                    epoch: r.meta.epoch,
                    job: r.meta.job,
                    device: r.meta.device,
                    state: LeaseState::Finished { report, last_seq },
                    fate: Fate::Report,
                    spooled: r.last_seq.max(last_seq),
                    sent: Seq(0),
                    report_sent: ReportSent::No,
                    reader: spool.reader(r.meta.lease),
                    call: None,
                    net: None,
                };
                Some((r.meta.lease, lease))
            })
            .collect();
        Agent {
            config,
            dialers,
            current: 0,
            spool,
            mode: Mode::Serving,
            devices,
            leases,
            sessions: BTreeMap::new(),
            ready_unsent: BTreeSet::new(),
            notes_tx,
            notes,
            artifacts,
            reaches: Reaches::default(),
            group_salt,
            connections: connections::Connections::default(),
            nets: nets::Nets::default(),
            heard_tx,
            heard,
        }
    }

    /// Runs until `shutdown` resolves and every job is torn down.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = pin!(shutdown);
        let mut backoff = Backoff::new();
        let mut failures = 0u32;
        // Failed connects since the last pause (a pause comes after a whole round).
        let mut round = 0usize;
        loop {
            if self.mode == Mode::Stopping {
                self.wait_for_teardown().await;
                return;
            }
            let hello = self.hello();
            let dialer = self.dialers[self.current % self.dialers.len()].clone();
            let token_file = self.config.token_file.clone();
            let attempt = link::connect(&dialer, &token_file, &hello);
            match self.wait(attempt, shutdown.as_mut()).await {
                None => continue,
                Some(Ok((socket, welcome))) => {
                    backoff.reset();
                    failures = 0;
                    round = 0;
                    let base = &self.config.controllers[self.current % self.dialers.len()];
                    self.artifacts.controller = crate::artifacts::http_base(base);
                    tracing::info!(url = %dialer.url, agent = %self.config.name, "connected to the controller");
                    let link = Link::new(socket, welcome.heartbeat);
                    match self.session(link, welcome.resume, shutdown.as_mut()).await {
                        SessionEnd::Done => {
                            tracing::info!("link closed: the agent is shutting down");
                            return;
                        }
                        SessionEnd::Lost(why) => {
                            tracing::warn!("link to the controller lost: {why}; reconnecting");
                        }
                    }
                }
                Some(Err(why)) => {
                    failures += 1;
                    round += 1;
                    self.current = (self.current + 1) % self.dialers.len();
                    match &why {
                        LinkDown::Refused(_) | LinkDown::Tls(_) => tracing::warn!("{why}"),
                        LinkDown::Lost(_) if failures == 1 => {
                            tracing::warn!("cannot connect to the controller: {why}; retrying");
                        }
                        LinkDown::Lost(_) => {
                            tracing::debug!("cannot connect to the controller: {why}");
                        }
                    }
                }
            }
            if round > 0 && round < self.dialers.len() {
                // Another address of this round is still to be tried.
                continue;
            }
            round = 0;
            let pause = backoff.next_pause();
            let _ = self
                .wait(tokio::time::sleep(pause), shutdown.as_mut())
                .await;
        }
    }

    /// Awaits `fut` while handling job notes; `None` when shutdown began instead.
    async fn wait<T>(
        &mut self,
        fut: impl Future<Output = T>,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> Option<T> {
        let mut fut = pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return Some(out),
                _ = &mut shutdown, if self.mode == Mode::Serving => {
                    self.stop_all();
                    return None;
                }
                Some(note) = self.notes.recv() => {
                    // No link: nothing can fail.
                    let _ = self.on_note(note, None).await;
                }
            }
        }
    }

    async fn wait_for_teardown(&mut self) {
        while self.running() > 0 {
            match self.notes.recv().await {
                Some(note) => {
                    let _ = self.on_note(note, None).await;
                }
                None => return,
            }
        }
    }

    /// Jobs running and sessions not yet torn down.
    fn running(&self) -> usize {
        self.leases
            .values()
            .filter(|l| matches!(l.state, LeaseState::Running { .. }))
            .count()
            + self.sessions.len()
    }

    fn hello(&self) -> AgentMessage {
        let held = self
            .leases
            .iter()
            .map(|(id, l)| HeldLease {
                lease: *id,
                epoch: l.epoch,
                job: l.job,
                device: l.device.clone(),
                report: match &l.state {
                    LeaseState::Finished { report, .. } => Some(report.clone()),
                    LeaseState::Running { .. } => None,
                },
            })
            .collect();
        AgentMessage::Hello {
            protocol: proto::link::PROTOCOL_VERSION,
            agent: self.config.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            devices: crate::rigs(&self.config),
            held,
            sessions: self
                .sessions
                .iter()
                .map(|(id, s)| HeldSession {
                    lease: *id,
                    epoch: s.epoch,
                    device: s.device.clone(),
                })
                .collect(),
        }
    }

    fn stop_all(&mut self) {
        self.mode = Mode::Stopping;
        let running = self.running();
        if running > 0 {
            tracing::info!("shutting down: stopping {running} job(s)");
        }
        for lease in self.leases.values() {
            if let LeaseState::Running { stop } = &lease.state
                && *stop.borrow() != Stop::Drop
            {
                stop.send_replace(Stop::Shutdown);
            }
        }
        for session in self.sessions.values_mut() {
            session.end();
        }
    }

    async fn session(
        &mut self,
        mut link: Link,
        resume: Vec<LogCursor>,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> SessionEnd {
        if let Err(why) = self.resume(&mut link, &resume).await {
            return SessionEnd::Lost(why);
        }
        // Streams live and die with this connection.
        let mut streams = Streams::new(self.reaches.clone());
        let period = link.heartbeat;
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let more = match self.pump(&mut link).await {
                Ok(more) => more,
                Err(why) => return SessionEnd::Lost(why),
            };
            if self.mode == Mode::Stopping && self.running() == 0 && !more {
                link.close().await;
                return SessionEnd::Done;
            }
            let (dead_at, dead_after) = (link.dead_at(), link.dead_after());
            // Biased: heartbeats first (a chatty job must not starve them), incoming before
            // the dead-link timer (what arrived counts), bulk log pumping last.
            let step = tokio::select! {
                biased;
                _ = &mut shutdown, if self.mode == Mode::Serving => {
                    self.stop_all();
                    Ok(())
                }
                _ = heartbeat.tick() => match link.send(&AgentMessage::Heartbeat).await {
                    Ok(()) => link.ping().await,
                    Err(why) => Err(why),
                },
                message = link.next() => match message {
                    Ok(Message::Text(text)) => self.on_text(&text, &mut link, &mut streams).await,
                    Ok(Message::Binary(bytes)) => match Binary::decode(&bytes) {
                        Ok(Binary::Stream(stream, data)) => match streams.frame(stream, data) {
                            Some(told) => send_stream(&mut link, told).await,
                            None => Ok(()),
                        },
                        Ok(Binary::Group(frame)) => {
                            self.deliver(&frame);
                            Ok(())
                        }
                        Ok(Binary::Log(_)) | Err(_) => {
                            tracing::debug!("ignoring a {}-byte binary frame from the controller", bytes.len());
                            Ok(())
                        }
                    },
                    Ok(_) => Ok(()),
                    Err(why) => Err(why),
                },
                _ = tokio::time::sleep_until(dead_at) => Err(LinkDown::Lost(format!(
                    "nothing heard from the controller for {dead_after:?}"
                ))),
                Some(note) = self.notes.recv() => self.on_notes(note, &mut link).await,
                Some(heard) = self.heard.recv() => self.send_heard(heard, &mut link).await,
                // One stream message per turn: the log pump above runs between them.
                told = streams.next() => send_stream(&mut link, told).await,
                _ = std::future::ready(()), if more => Ok(()),
            };
            if let Err(why) = step {
                return SessionEnd::Lost(why);
            }
        }
    }

    /// After `Welcome`: leases the controller does not list are no longer live; the others
    /// resume after the controller's cursor.
    async fn resume(&mut self, link: &mut Link, resume: &[LogCursor]) -> Result<(), LinkDown> {
        let cursors: BTreeMap<LeaseId, Seq> = resume.iter().map(|c| (c.lease, c.stored)).collect();
        let ids: Vec<LeaseId> = self.leases.keys().copied().collect();
        for id in ids {
            match cursors.get(&id) {
                Some(stored) => {
                    if let Some(lease) = self.leases.get_mut(&id) {
                        lease.sent = *stored;
                        lease.report_sent = ReportSent::No;
                        lease.reader.seek(Seq(stored.0 + 1));
                    }
                    self.drop_stored(id, *stored);
                }
                None => {
                    tracing::info!(lease = %id, "the controller no longer holds this lease; dropping it");
                    self.forget(id);
                }
            }
        }
        self.resend_calls(link).await?;
        self.send_ready(link).await
    }

    async fn send_ready(&mut self, link: &mut Link) -> Result<(), LinkDown> {
        while let Some(device) = self.ready_unsent.pop_first() {
            if let Err(why) = link
                .send(&AgentMessage::DeviceReady {
                    device: device.clone(),
                })
                .await
            {
                self.ready_unsent.insert(device);
                return Err(why);
            }
        }
        Ok(())
    }

    /// The lease is not wanted any more: stop its job (`DeviceReady` after teardown) or, if
    /// it ended already, delete it.
    fn forget(&mut self, id: LeaseId) {
        let Some(lease) = self.leases.get_mut(&id) else {
            return;
        };
        lease.fate = Fate::Forget;
        match &lease.state {
            LeaseState::Running { stop } => {
                stop.send_replace(Stop::Drop);
            }
            LeaseState::Finished { .. } => {
                let device = lease.device.clone();
                self.delete(id);
                if self.devices.get(&device) == Some(&Slot::Idle) {
                    self.ready_unsent.insert(device);
                }
            }
        }
    }

    /// Removes a lease and its spool.
    fn delete(&mut self, id: LeaseId) {
        self.leases.remove(&id);
        if let Err(e) = self.spool.remove(id) {
            tracing::warn!(lease = %id, "cannot delete the spool: {e}");
        }
    }

    fn drop_stored(&mut self, id: LeaseId, stored: Seq) {
        if stored.0 == 0 {
            return;
        }
        if let Err(e) = self.spool.drop_through(id, stored) {
            tracing::warn!(lease = %id, "cannot drop stored records from the spool: {e}");
        }
    }

    /// Sends spooled records the controller has not seen, then reports whose records are all
    /// out. Returns whether more is waiting (bounded work per call).
    async fn pump(&mut self, link: &mut Link) -> Result<bool, LinkDown> {
        let mut frames = 0;
        for (id, lease) in self.leases.iter_mut() {
            if lease.fate == Fate::Forget {
                continue;
            }
            while lease.sent < lease.spooled {
                if frames == FRAMES_PER_TURN {
                    return Ok(true);
                }
                if lease.reader.next_seq() != Seq(lease.sent.0 + 1) {
                    lease.reader.seek(Seq(lease.sent.0 + 1));
                }
                let records = match lease.reader.read(lease.spooled, FRAME_BUDGET) {
                    Ok(records) if !records.is_empty() => records,
                    Ok(_) => {
                        tracing::warn!(lease = %id, "spool ends at record {} before {}", lease.sent, lease.spooled);
                        lease.sent = lease.spooled;
                        break;
                    }
                    Err(e) => {
                        tracing::error!(lease = %id, "cannot read the spool; records after {} are not sent: {e}", lease.sent);
                        lease.sent = lease.spooled;
                        break;
                    }
                };
                lease.sent = records.last().map_or(lease.spooled, |r| r.seq);
                let frame = LogFrame {
                    lease: *id,
                    epoch: lease.epoch,
                    records,
                };
                link.send_frame(frame.encode()).await?;
                frames += 1;
            }
            if let LeaseState::Finished { report, last_seq } = &lease.state
                && lease.sent >= *last_seq
                && lease.report_sent == ReportSent::No
            {
                link.send(&AgentMessage::JobFinished {
                    lease: *id,
                    epoch: lease.epoch,
                    report: report.clone(),
                    last_seq: *last_seq,
                })
                .await?;
                lease.report_sent = ReportSent::Yes;
            }
        }
        Ok(false)
    }

    async fn on_text(
        &mut self,
        text: &str,
        link: &mut Link,
        streams: &mut Streams,
    ) -> Result<(), LinkDown> {
        let message: ControllerMessage = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(
                    "ignoring a controller message of {} bytes that does not parse: {e}",
                    text.len()
                );
                return Ok(());
            }
        };
        match message {
            ControllerMessage::Welcome { .. } => {
                tracing::debug!("ignoring a second welcome");
                Ok(())
            }
            ControllerMessage::Refused { reason } => Err(LinkDown::Refused(reason)),
            ControllerMessage::StartJob {
                lease,
                epoch,
                job,
                device,
                definition,
                sub_job,
            } => {
                let definition = (definition, sub_job);
                self.start_job(lease, epoch, job, device, definition, link)
                    .await
            }
            ControllerMessage::CancelJob { lease, epoch } => {
                if let Some(l) = self.known(lease, epoch, "cancel-job")
                    && let LeaseState::Running { stop } = &l.state
                    && *stop.borrow() == Stop::Go
                {
                    tracing::info!(%lease, job = %l.job, "canceling the job");
                    stop.send_replace(Stop::Cancel);
                }
                Ok(())
            }
            ControllerMessage::StartSession {
                lease,
                epoch,
                device,
                ssh_keys,
            } => {
                self.start_session(lease, epoch, device, ssh_keys, link)
                    .await
            }
            ControllerMessage::SessionRequest {
                lease,
                epoch,
                request,
                action,
            } => {
                let queued = match self.known_session(lease, epoch, "session-request") {
                    Some(s) => s.request(request, action),
                    None => return Ok(()),
                };
                if !queued {
                    let reason = format!(
                        "the session is ending or has {} requests queued already",
                        session::QUEUE
                    );
                    let result = proto::session::SessionResult::Failed { reason };
                    return link
                        .send(&AgentMessage::SessionReply {
                            lease,
                            epoch,
                            request,
                            result,
                        })
                        .await;
                }
                Ok(())
            }
            ControllerMessage::DropLease { lease, epoch } if self.sessions.contains_key(&lease) => {
                if let Some(s) = self.known_session(lease, epoch, "drop-lease") {
                    tracing::info!(%lease, "the controller dropped the session; powering the DUT off");
                    s.end();
                }
                Ok(())
            }
            ControllerMessage::DropLease { lease, epoch } => {
                if self.known(lease, epoch, "drop-lease").is_some() {
                    tracing::info!(%lease, "the controller dropped the lease");
                    self.forget(lease);
                    self.send_ready(link).await?;
                }
                Ok(())
            }
            ControllerMessage::LogAcked {
                lease,
                epoch,
                stored,
            } => {
                if self.known(lease, epoch, "log-acked").is_some() {
                    self.drop_stored(lease, stored);
                }
                Ok(())
            }
            ControllerMessage::OpenStream {
                stream,
                lease,
                epoch,
                target,
                window,
            } => {
                tracing::info!(%lease, %stream, "opening the {target}");
                // What the session offers right now: its console, the DUT's SSH port, its other ports.
                match self.sessions.get(&lease) {
                    Some(s) if !s.is_ending() => self.reaches.set(
                        lease,
                        crate::streams::Reach {
                            epoch: s.epoch,
                            console: s.console(),
                            ports: s
                                .ssh_endpoint()
                                .map(|e| (e.guest_port, e.host))
                                .into_iter()
                                .collect(),
                            forwards: s.forwards(),
                        },
                    ),
                    _ => self.reaches.remove(lease),
                }
                match streams.open(stream, lease, epoch, target, window) {
                    Some(told) => send_stream(link, told).await,
                    None => Ok(()),
                }
            }
            ControllerMessage::StreamCredit { stream, bytes } => {
                match streams.credit(stream, bytes) {
                    Some(told) => send_stream(link, told).await,
                    None => Ok(()),
                }
            }
            ControllerMessage::CloseStream { stream, reason } => {
                tracing::debug!(%stream, "the controller closed the stream: {reason}");
                streams.closed(stream, &reason);
                Ok(())
            }
            ControllerMessage::MultinodeReply {
                lease,
                epoch,
                seq,
                reply,
            } => {
                self.multinode_reply(lease, epoch, seq, reply);
                Ok(())
            }
            ControllerMessage::FinishAcked { lease, epoch } => {
                if let Some(l) = self.known(lease, epoch, "finish-acked") {
                    if matches!(l.state, LeaseState::Finished { .. }) {
                        self.delete(lease);
                    } else {
                        tracing::debug!(%lease, "ignoring finish-acked for a running job");
                    }
                }
                Ok(())
            }
        }
    }

    /// The lease if it is ours under this epoch; otherwise a debug line.
    /// The configured device a new job or session may take, or why not (the agent is
    /// stopping, it has no such device, or the device is busy): one rule for both.
    /// The device's spec for a new job on `device`: a `rider` (a secondary connection) shares
    /// it with its host, any other job needs it idle.
    fn admit(&self, device: &str, rider: bool) -> Result<runner::device::Device, String> {
        if self.mode == Mode::Stopping {
            return Err("the agent is shutting down".into());
        }
        let Some(spec) = self.config.devices.iter().find(|d| d.name == device) else {
            return Err(format!(
                "agent {} has no device named '{device}'",
                self.config.name
            ));
        };
        if let Some(Slot::Busy(other)) = self.devices.get(device)
            && !rider
        {
            return Err(format!("device {device} is busy with lease {other}"));
        }
        Ok(spec.clone())
    }

    fn known(&self, id: LeaseId, epoch: Epoch, what: &str) -> Option<&Lease> {
        match self.leases.get(&id) {
            Some(l) if l.epoch == epoch => Some(l),
            Some(l) => {
                tracing::debug!(lease = %id, "ignoring {what} for epoch {epoch} (the lease has {})", l.epoch);
                None
            }
            None => {
                tracing::debug!(lease = %id, "ignoring {what} for an unknown lease");
                None
            }
        }
    }
}

/// Sends what the streams have for the link.
async fn send_stream(link: &mut Link, told: ToLink) -> Result<(), LinkDown> {
    match told {
        ToLink::Message(message) => link.send(&message).await,
        ToLink::Frame(bytes) => link.send_frame(bytes).await,
    }
}

/// Runs a job task; if it panics, the main loop still hears that it ended.
fn spawn_job(
    start: JobStart,
    writer: crate::spool::SpoolWriter,
    notes: UnboundedSender<JobNote>,
    stop: watch::Receiver<Stop>,
) {
    let lease = start.lease;
    let task = tokio::spawn(job::run_lease(start, writer, notes.clone(), stop));
    tokio::spawn(async move {
        if let Err(e) = task.await
            && e.is_panic()
        {
            let _ = notes.send(JobNote::Crashed {
                lease,
                reason: "the task panicked".into(),
            });
        }
    });
}
