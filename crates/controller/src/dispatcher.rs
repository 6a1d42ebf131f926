//! The dispatcher: the one task that owns the scheduler.
//!
//! Every change of a job, lease or device goes through [`Command`]s on one channel, so there
//! is no lock around the scheduler and no two changes interleave.
//!
//! Invariants:
//! - A change is committed to the database (events + job rows + reports, one transaction)
//!   before any effect: before the requester gets its answer, before an agent is told to start
//!   or cancel, before followers see it. If a commit fails, the requester gets an error and the
//!   dispatcher stops (crash-only): a restarted controller replays the database.
//! - Lease renewals are soft state and are not stored: a restarted controller renews every
//!   live lease ([`scheduler::Scheduler::restarted`]).
//! - Every finished job has a stored report and `last_seq`, the sequence number of its final
//!   log record (a note written by the controller), so followers know when they have it all.
//! - Only live leases are in [`Leases`]; log frames for anything else are dropped.
//! - Each live lease is held by at most one agent link ([`LeaseInfo::conn`]): the link of its
//!   device's agent when it was granted, moved to the newer link when the agent connects
//!   again, and none after a controller restart until the agent says hello. A job message
//!   about a live lease from any other link is refused and logged at warn (rate-limited),
//!   whatever its lease id and epoch.
//! - An agent name belongs to the agent tokens bound to it (checked by the link); a device
//!   belongs to the agent that registered it first, and no other agent may register it.
//! - A newer link of an agent ends the older one (its session, so it gets a close frame).
//! - Whether a request may read or cancel a job is decided by [`crate::policy`] only; per-user
//!   queue quotas by [`crate::queue_quota`], before the scheduler sees the job.

use crate::logs::LogStore;
use crate::policy::{self, Viewer};
use crate::queue_quota::{self, QueueQuota, QueueUsage};
use crate::store::{Change, JobRow, Store};
use crate::{ControllerError, now};
use proto::api::{AgentState, AgentView, DeviceView, JobView, QuotaExceeded};
use proto::link::{
    AgentMessage, ControllerMessage, DeviceInfo, HeldLease, LogCursor, PROTOCOL_VERSION,
};
use proto::log::LogKind;
use proto::{
    Epoch, JobId, JobReport, JobState, LeaseId, Millis, PrincipalId, Role, Seq, Visibility,
};
use scheduler::{Config as SchedulerConfig, Event, JobSpec, Refusal, Scheduler};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::link::{WarnLimit, more};
pub use crate::sessions::ConnId;
use crate::sessions::Sessions;
use std::time::Instant;

/// What a live lease is about, for routing log frames without asking the dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseInfo {
    pub job: JobId,
    pub epoch: Epoch,
    /// The agent link that holds the lease (`None`: its agent has not said hello since the
    /// controller started).
    pub conn: Option<ConnId>,
}

/// Live leases, shared with the agent links.
#[derive(Debug, Clone, Default)]
pub struct Leases(Arc<RwLock<HashMap<LeaseId, LeaseInfo>>>);

impl Leases {
    pub fn get(&self, lease: LeaseId) -> Option<LeaseInfo> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&lease)
            .copied()
    }
    fn insert(&self, lease: LeaseId, info: LeaseInfo) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(lease, info);
    }
    /// Moves these live leases to link `conn`.
    fn move_to(&self, conn: ConnId, leases: &[LeaseId]) {
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        for lease in leases {
            if let Some(info) = map.get_mut(lease) {
                info.conn = Some(conn);
            }
        }
    }
    fn remove(&self, lease: LeaseId) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&lease);
    }
}

/// Why a request was not done; becomes an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    NotFound(String),
    Forbidden(String),
    BadRequest {
        message: String,
        known_device_types: Vec<String>,
    },
    Conflict(String),
    Unavailable(String),
    /// A per-user quota refused the job (429).
    OverQuota {
        message: String,
        quota: QuotaExceeded,
    },
}

/// A job about to be submitted (validated by the API layer).
#[derive(Debug)]
pub struct Submission {
    pub name: String,
    pub owner: PrincipalId,
    pub owner_name: String,
    /// The submitting token's role (admins are exempt from quotas).
    pub role: Role,
    pub visibility: Visibility,
    pub file_name: String,
    pub definition: String,
    pub warnings: Vec<String>,
    pub spec: JobSpec,
    pub wait_for_device: bool,
    /// Digests of the artifacts the job references (checked by the API layer).
    pub artifacts: Vec<String>,
}

/// An agent's `Hello`, with the connection it came on.
pub struct AgentHello {
    pub conn: ConnId,
    /// Public id of the token the connection was opened with.
    pub token_id: String,
    pub agent: String,
    pub version: String,
    pub protocol: u32,
    pub devices: Vec<DeviceInfo>,
    pub held: Vec<HeldLease>,
    /// Where messages for this connection go.
    pub tx: mpsc::Sender<ControllerMessage>,
}

pub enum Command {
    Submit {
        job: Submission,
        reply: oneshot::Sender<Result<JobView, Failure>>,
    },
    Cancel {
        job: JobId,
        viewer: Viewer,
        reply: oneshot::Sender<Result<JobView, Failure>>,
    },
    Job {
        job: JobId,
        viewer: Viewer,
        reply: oneshot::Sender<Result<JobView, Failure>>,
    },
    Jobs {
        viewer: Viewer,
        state: Option<JobState>,
        limit: usize,
        reply: oneshot::Sender<Vec<JobView>>,
    },
    Devices {
        reply: oneshot::Sender<Vec<DeviceView>>,
    },
    Agents {
        reply: oneshot::Sender<Vec<AgentView>>,
    },
    Hello {
        hello: AgentHello,
        reply: oneshot::Sender<Result<(), String>>,
    },
    FromAgent {
        conn: ConnId,
        agent: String,
        message: AgentMessage,
    },
    Gone {
        conn: ConnId,
        agent: String,
    },
    /// Whether the current link of `agent`, opened with token `token_id`, holds the live lease
    /// of `job` (an agent fetches a job's artifacts only then).
    HoldsJob {
        job: JobId,
        agent: String,
        token_id: String,
        reply: oneshot::Sender<bool>,
    },
}

struct JobMeta {
    name: String,
    owner: PrincipalId,
    owner_name: String,
    visibility: Visibility,
    warnings: Vec<String>,
    /// Kept until the job finishes (sent with StartJob).
    definition: Option<String>,
}

struct AgentLink {
    conn: Option<(ConnId, mpsc::Sender<ControllerMessage>)>,
    /// Token id of the current connection.
    token_id: String,
    version: String,
    last_seen: Millis,
    /// Warn lines about refused messages of the current link.
    refusals: WarnLimit,
}

/// Settings of the dispatcher.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    pub scheduler: SchedulerConfig,
    pub heartbeat: Duration,
    pub quota: QueueQuota,
}

pub struct Dispatcher {
    config: DispatchConfig,
    sched: Scheduler,
    store: Store,
    logs: LogStore,
    leases: Leases,
    sessions: Sessions,
    updates: broadcast::Sender<JobView>,
    next_event: u64,
    next_job: u64,
    jobs: BTreeMap<JobId, JobMeta>,
    agents: BTreeMap<String, AgentLink>,
    /// What each user holds in the queue (quotas).
    usage: QueueUsage,
    /// Set when a commit failed: the dispatcher stops after the current command.
    fatal: Option<String>,
}

impl Dispatcher {
    /// Rebuilds the dispatcher from the database and renews every live lease.
    pub async fn load(
        config: DispatchConfig,
        store: Store,
        logs: LogStore,
        leases: Leases,
        sessions: Sessions,
        updates: broadcast::Sender<JobView>,
    ) -> Result<Dispatcher, ControllerError> {
        let mut config = config;
        // Lease ids must be unguessable: the scheduler derives them from a key drawn here.
        let mut key = [0u8; 32];
        getrandom::fill(&mut key)
            .map_err(|e| ControllerError::Stopped(format!("no randomness for lease ids: {e}")))?;
        config.scheduler.lease_ids = scheduler::LeaseIds::Keyed(scheduler::LeaseKey(key));
        let events = store.events().await?;
        let next_event = events.last().map_or(1, |(seq, _)| seq + 1);
        let sched = Scheduler::replay(config.scheduler, events.iter().map(|(_, e)| e))
            .map_err(|e| ControllerError::Replay(e.to_string()))?;
        let mut jobs = BTreeMap::new();
        let mut usage = QueueUsage::default();
        let mut next_job = 1;
        for row in store.jobs().await? {
            next_job = next_job.max(row.id.0 + 1);
            let unfinished = sched
                .job(row.id)
                .is_some_and(|j| j.state != JobState::Finished);
            if unfinished {
                usage.add(row.owner, row.definition.len() as u64);
            }
            jobs.insert(
                row.id,
                JobMeta {
                    name: row.name,
                    owner: row.owner,
                    owner_name: row.owner_name,
                    visibility: row.visibility,
                    warnings: row.warnings,
                    definition: unfinished.then_some(row.definition),
                },
            );
        }
        let mut d = Dispatcher {
            config,
            sched,
            store,
            logs,
            leases,
            sessions,
            updates,
            next_event,
            next_job,
            jobs,
            agents: BTreeMap::new(),
            usage,
            fatal: None,
        };
        for lease in d.sched.leases() {
            d.leases.insert(
                lease.id,
                LeaseInfo {
                    job: lease.job,
                    epoch: lease.epoch,
                    conn: None,
                },
            );
        }
        let events = d.sched.restarted(now());
        d.commit(events, Vec::new(), None, None).await?;
        Ok(d)
    }

    /// Runs until every sender of `commands` is gone.
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
    ) -> Result<(), ControllerError> {
        loop {
            let wait = self.until_next_deadline();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.handle(command).await?,
                    None => return Ok(()),
                },
                () = tokio::time::sleep(wait) => {
                    let events = self.sched.tick(now());
                    if let Err(e) = self.commit(events, Vec::new(), None, None).await {
                        tracing::error!("tick: {e}");
                    }
                }
            }
            if let Some(reason) = self.fatal.take() {
                return Err(ControllerError::Stopped(reason));
            }
        }
    }

    fn until_next_deadline(&self) -> Duration {
        let cap = Duration::from_secs(1);
        match self.sched.next_deadline() {
            Some(at) => Duration::from_millis(at.0.saturating_sub(now().0)).min(cap),
            None => cap,
        }
    }

    /// Commits `events` with new job rows and reports, then runs their effects.
    /// `from_agent`: the lease whose end the agent itself reported (no DropLease for it).
    async fn commit(
        &mut self,
        events: Vec<Event>,
        agent_reports: Vec<(JobId, JobReport, u64)>,
        new_job: Option<&JobRow>,
        from_agent: Option<LeaseId>,
    ) -> Result<(), ControllerError> {
        let stored: Vec<Event> = events
            .iter()
            .filter(|e| !matches!(e, Event::LeaseRenewed { .. }))
            .cloned()
            .collect();
        // Jobs the controller ends itself get a synthesized report.
        let mut reports = agent_reports;
        for event in &events {
            if let Event::JobFinished {
                job,
                outcome,
                reason,
                at,
            } = event
                && !reports.iter().any(|(j, _, _)| j == job)
            {
                let name = self
                    .jobs
                    .get(job)
                    .map(|m| m.name.clone())
                    .unwrap_or_default();
                let started = self.sched.job(*job).and_then(|j| j.started);
                let duration_s = started.map_or(0.0, |s| at.0.saturating_sub(s.0) as f64 / 1000.0);
                let report = JobReport {
                    job_name: name,
                    outcome: *outcome,
                    reason: reason.clone(),
                    cases: Vec::new(),
                    duration_s,
                };
                let last = self.final_note(*job, &report, *at);
                reports.push((*job, report, last));
            }
        }
        if stored.is_empty() && new_job.is_none() && reports.is_empty() {
            self.effects(&events, from_agent).await;
            return Ok(());
        }
        let change = Change {
            new_job,
            reports: reports.iter().map(|(j, r, s)| (*j, r, *s)).collect(),
        };
        match self.store.commit(self.next_event, &stored, change).await {
            Ok(()) => {
                self.next_event += stored.len() as u64;
                self.effects(&events, from_agent).await;
                Ok(())
            }
            Err(e) => {
                // Crash-only: the scheduler ran ahead of the database. Stop; a restart replays
                // the database, which holds exactly what was acknowledged.
                tracing::error!("commit failed; the controller stops: {e}");
                self.fatal = Some(e.to_string());
                Err(ControllerError::Store(e))
            }
        }
    }

    /// Writes the controller's last log record of a job and answers its sequence number.
    fn final_note(&self, job: JobId, report: &JobReport, at: Millis) -> u64 {
        let text = if report.reason.is_empty() {
            format!("job finished: {}", report.outcome)
        } else {
            format!("job finished: {}: {}", report.outcome, report.reason)
        };
        match self.logs.note(job, LogKind::Note, text, at) {
            Ok(seq) => seq.0,
            Err(e) => {
                tracing::error!("{e}");
                self.logs.last(job).map_or(0, |s| s.0)
            }
        }
    }

    async fn effects(&mut self, events: &[Event], from_agent: Option<LeaseId>) {
        for event in events {
            match event {
                Event::JobSubmitted { job, .. }
                | Event::JobStarted { job, .. }
                | Event::JobRequeued { job, .. } => self.publish(*job),
                Event::LeaseGranted {
                    lease,
                    epoch,
                    job,
                    device,
                    ..
                } => {
                    let conn = self
                        .sched
                        .device(device)
                        .and_then(|d| self.agents.get(&d.agent))
                        .and_then(|l| l.conn.as_ref())
                        .map(|(c, _)| *c);
                    self.leases.insert(
                        *lease,
                        LeaseInfo {
                            job: *job,
                            epoch: *epoch,
                            conn,
                        },
                    );
                    let definition = self
                        .jobs
                        .get(job)
                        .and_then(|m| m.definition.clone())
                        .unwrap_or_default();
                    self.send_to_device(
                        device,
                        ControllerMessage::StartJob {
                            lease: *lease,
                            epoch: *epoch,
                            job: *job,
                            device: device.clone(),
                            definition,
                        },
                    );
                    self.publish(*job);
                }
                Event::CancelRequested { job, .. } => {
                    if let Some(entry) = self.sched.job(*job)
                        && let (Some(lease), Some(device)) = (entry.lease, entry.device.clone())
                        && let Some(l) = self.sched.lease(lease)
                    {
                        let msg = ControllerMessage::CancelJob {
                            lease,
                            epoch: l.epoch,
                        };
                        self.send_to_device(&device, msg);
                    }
                    self.publish(*job);
                }
                Event::JobFinished { job, .. } => {
                    if let Some(meta) = self.jobs.get_mut(job)
                        && let Some(definition) = meta.definition.take()
                    {
                        self.usage.remove(meta.owner, definition.len() as u64);
                    }
                    self.logs.close(*job);
                    self.publish(*job);
                }
                Event::LeaseReleased {
                    lease,
                    device_state,
                    ..
                } => {
                    let info = self.leases.get(*lease);
                    self.leases.remove(*lease);
                    if *device_state == proto::DeviceState::NeedsCheck
                        && from_agent != Some(*lease)
                        && let Some(info) = info
                        && let Some(device) =
                            self.sched.job(info.job).and_then(|j| j.device.clone())
                    {
                        self.send_to_device(
                            &device,
                            ControllerMessage::DropLease {
                                lease: *lease,
                                epoch: info.epoch,
                            },
                        );
                    }
                }
                Event::AgentConnected { .. }
                | Event::AgentDisconnected { .. }
                | Event::LeaseRenewed { .. }
                | Event::DeviceReady { .. } => {}
            }
        }
    }

    fn send_to_device(&self, device: &str, message: ControllerMessage) {
        let Some(agent) = self.sched.device(device).map(|d| d.agent.clone()) else {
            return;
        };
        self.send(&agent, message);
    }

    fn send(&self, agent: &str, message: ControllerMessage) {
        if let Some(AgentLink {
            conn: Some((_, tx)),
            ..
        }) = self.agents.get(agent)
            && tx.try_send(message).is_err()
        {
            tracing::warn!(
                "agent {agent}: link queue full or closed; the agent resyncs when it reconnects"
            );
        }
    }

    fn publish(&self, job: JobId) {
        if let Some(view) = self.view(job) {
            let _ = self.updates.send(view);
        }
    }

    fn view(&self, job: JobId) -> Option<JobView> {
        let entry = self.sched.job(job)?;
        let meta = self.jobs.get(&job)?;
        Some(JobView {
            id: job,
            name: meta.name.clone(),
            device_type: entry.spec.device_type.clone(),
            tags: entry.spec.tags.clone(),
            priority: entry.spec.priority,
            visibility: meta.visibility.clone(),
            owner: meta.owner_name.clone(),
            owner_id: meta.owner,
            state: entry.state,
            outcome: entry.outcome,
            reason: entry.reason.clone(),
            device: entry.device.clone(),
            submitted_at: entry.submitted,
            started_at: entry.started,
            finished_at: entry.finished,
            warnings: meta.warnings.clone(),
        })
    }

    /// True when `job` has a live lease held by the current link of agent `agent`, and that
    /// link was opened with the token `token_id` (the identity checks of job messages: the
    /// link holding the lease speaks for it, nobody else).
    fn holds_job(&self, job: JobId, agent: &str, token_id: &str) -> bool {
        let Some(entry) = self.sched.job(job) else {
            return false;
        };
        let (Some(lease), Some(device)) = (entry.lease, entry.device.as_deref()) else {
            return false;
        };
        let Some(info) = self.leases.get(lease) else {
            return false;
        };
        if info.job != job {
            return false;
        }
        if self.sched.device(device).is_none_or(|d| d.agent != agent) {
            return false;
        }
        let Some(link) = self.agents.get(agent) else {
            return false;
        };
        match (&link.conn, info.conn) {
            (Some((current, _)), Some(holder)) => *current == holder && link.token_id == token_id,
            _ => false,
        }
    }

    /// The job's view, if `viewer` may read it ([`policy::may_read`]).
    fn visible(&self, job: JobId, viewer: &Viewer) -> Result<JobView, Failure> {
        let view = self
            .view(job)
            .ok_or_else(|| Failure::NotFound(format!("job {job} does not exist")))?;
        policy::may_read(&view, viewer).map_err(|d| Failure::Forbidden(d.to_string()))?;
        Ok(view)
    }

    async fn handle(&mut self, command: Command) -> Result<(), ControllerError> {
        match command {
            Command::Submit { job, reply } => {
                let answer = self.submit(job).await;
                let _ = reply.send(answer);
            }
            Command::Cancel { job, viewer, reply } => {
                let answer = self.cancel(job, &viewer).await;
                let _ = reply.send(answer);
            }
            Command::Job { job, viewer, reply } => {
                let _ = reply.send(self.visible(job, &viewer));
            }
            Command::Jobs {
                viewer,
                state,
                limit,
                reply,
            } => {
                let views = self
                    .jobs
                    .keys()
                    .rev()
                    .filter_map(|id| self.view(*id))
                    .filter(|v| policy::may_read(v, &viewer).is_ok())
                    .filter(|v| state.is_none_or(|s| v.state == s))
                    .take(limit)
                    .collect();
                let _ = reply.send(views);
            }
            Command::Devices { reply } => {
                let views = self
                    .sched
                    .devices()
                    .map(|d| DeviceView {
                        name: d.info.name.clone(),
                        device_type: d.info.device_type.clone(),
                        tags: d.info.tags.clone(),
                        capabilities: d.info.capabilities.clone(),
                        state: d.state,
                        agent: d.agent.clone(),
                        job: d.lease.and_then(|l| self.sched.lease(l)).map(|l| l.job),
                    })
                    .collect();
                let _ = reply.send(views);
            }
            Command::Agents { reply } => {
                let mut views: BTreeMap<String, AgentView> = BTreeMap::new();
                for d in self.sched.devices() {
                    let link = self.agents.get(&d.agent);
                    let view = views.entry(d.agent.clone()).or_insert_with(|| AgentView {
                        name: d.agent.clone(),
                        state: if self.sched.agent_is_connected(&d.agent) {
                            AgentState::Connected
                        } else {
                            AgentState::Disconnected
                        },
                        version: link.map(|l| l.version.clone()).unwrap_or_default(),
                        devices: Vec::new(),
                        last_seen: link.map_or(Millis(0), |l| l.last_seen),
                    });
                    view.devices.push(d.info.name.clone());
                }
                let _ = reply.send(views.into_values().collect());
            }
            Command::Hello { hello, reply } => {
                let answer = self.hello(hello).await;
                let _ = reply.send(answer);
            }
            Command::FromAgent {
                conn,
                agent,
                message,
            } => self.agent_said(conn, &agent, message).await,
            Command::HoldsJob {
                job,
                agent,
                token_id,
                reply,
            } => {
                let _ = reply.send(self.holds_job(job, &agent, &token_id));
            }
            Command::Gone { conn, agent } => {
                let current = self
                    .agents
                    .get(&agent)
                    .and_then(|l| l.conn.as_ref())
                    .is_some_and(|(c, _)| *c == conn);
                if current {
                    if let Some(link) = self.agents.get_mut(&agent) {
                        link.conn = None;
                        link.last_seen = now();
                    }
                    let events = self.sched.agent_disconnected(&agent, now());
                    tracing::info!("agent {agent} disconnected");
                    if let Err(e) = self.commit(events, Vec::new(), None, None).await {
                        tracing::error!("agent {agent} disconnected: {e}");
                    }
                }
            }
        }
        Ok(())
    }

    async fn submit(&mut self, job: Submission) -> Result<JobView, Failure> {
        if !job.wait_for_device && !self.sched.device_types().contains(&job.spec.device_type) {
            let known: Vec<String> = self.sched.device_types().into_iter().collect();
            return Err(Failure::BadRequest {
                message: format!(
                    "{}: device_type: no device of type {:?} is registered (known: {}); submit with --wait-for-device to queue anyway",
                    job.file_name,
                    job.spec.device_type,
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
                known_device_types: known,
            });
        }
        let bytes = job.definition.len() as u64;
        if let Err(quota) = self
            .usage
            .check(&self.config.quota, job.owner, job.role, bytes)
        {
            let message = queue_quota::message(&quota, &job.owner_name);
            tracing::info!("job of {} refused: {message}", job.owner_name);
            return Err(Failure::OverQuota { message, quota });
        }
        let id = JobId(self.next_job);
        let row = JobRow {
            id,
            name: job.name.clone(),
            owner: job.owner,
            owner_name: job.owner_name.clone(),
            visibility: job.visibility.clone(),
            file_name: job.file_name.clone(),
            definition: job.definition.clone(),
            warnings: job.warnings.clone(),
            artifacts: job.artifacts.clone(),
        };
        // The job must be known before its events run their effects (StartJob needs it).
        self.jobs.insert(
            id,
            JobMeta {
                name: job.name,
                owner: job.owner,
                owner_name: job.owner_name,
                visibility: job.visibility,
                warnings: job.warnings,
                definition: Some(job.definition),
            },
        );
        let events = match self.sched.submit(id, job.spec, now()) {
            Ok(events) => events,
            Err(refusal) => {
                self.jobs.remove(&id);
                return Err(Failure::Conflict(refusal.to_string()));
            }
        };
        self.next_job += 1;
        // Counted before the effects could finish it (they run inside the commit).
        self.usage.add(row.owner, bytes);
        if let Err(e) = self.commit(events, Vec::new(), Some(&row), None).await {
            self.jobs.remove(&id);
            self.usage.remove(row.owner, bytes);
            return Err(Failure::Unavailable(e.to_string()));
        }
        tracing::info!("job {id} queued");
        self.view(id)
            .ok_or_else(|| Failure::Unavailable(format!("job {id} vanished after commit")))
    }

    async fn cancel(&mut self, job: JobId, viewer: &Viewer) -> Result<JobView, Failure> {
        let view = self
            .view(job)
            .ok_or_else(|| Failure::NotFound(format!("job {job} does not exist")))?;
        policy::may_cancel(&view, viewer).map_err(|d| Failure::Forbidden(d.to_string()))?;
        let events = match self.sched.cancel(job, now()) {
            Ok(events) => events,
            Err(Refusal::Finished(_)) => {
                return Err(Failure::Conflict(format!("job {job} is already finished")));
            }
            Err(refusal) => return Err(Failure::Conflict(refusal.to_string())),
        };
        self.commit(events, Vec::new(), None, None)
            .await
            .map_err(|e| Failure::Unavailable(e.to_string()))?;
        tracing::info!("job {job}: cancel requested by {}", viewer.name);
        self.visible(job, viewer)
    }

    async fn hello(&mut self, hello: AgentHello) -> Result<(), String> {
        let AgentHello {
            conn,
            token_id,
            agent,
            version,
            protocol,
            devices,
            held,
            tx,
        } = hello;
        if protocol != PROTOCOL_VERSION {
            return Err(format!(
                "agent protocol {protocol} is not supported (this controller speaks {PROTOCOL_VERSION})"
            ));
        }
        check_names(&agent, &version, &devices)?;
        for d in &devices {
            if let Some(owner) = self.sched.device(&d.name).map(|e| e.agent.as_str())
                && owner != agent
            {
                return Err(format!(
                    "device {:?} is registered by agent {owner:?}; an agent registers only its own devices (rename the device, or run it under agent {owner:?})",
                    d.name
                ));
            }
        }
        let pairs: Vec<(LeaseId, Epoch)> = held.iter().map(|h| (h.lease, h.epoch)).collect();
        let at = now();
        let events = self
            .sched
            .agent_connected(&agent, &devices, &pairs, at)
            .map_err(|r| r.to_string())?;
        // The new connection replaces any older one of the same agent, and holds its leases.
        let older = self.agents.insert(
            agent.clone(),
            AgentLink {
                conn: Some((conn, tx.clone())),
                token_id,
                version,
                last_seen: at,
                refusals: WarnLimit::new(),
            },
        );
        if let Some((old, _)) = older.and_then(|l| l.conn) {
            tracing::info!("agent {agent}: link {conn} replaces link {old}");
            self.sessions.close(
                old,
                &format!("replaced by a newer connection of agent {agent}"),
            );
        }
        let mine: Vec<LeaseId> = devices
            .iter()
            .filter_map(|d| self.sched.device(&d.name))
            .filter(|d| d.agent == agent)
            .filter_map(|d| d.lease)
            .collect();
        self.leases.move_to(conn, &mine);
        let mut resume = Vec::new();
        let mut dead = Vec::new();
        for h in &held {
            if self.sched.is_live(h.lease, h.epoch) {
                let stored = self
                    .leases
                    .get(h.lease)
                    .and_then(|info| self.logs.durable(info.job).ok())
                    .unwrap_or(Seq(0));
                resume.push(LogCursor {
                    lease: h.lease,
                    stored,
                });
            } else {
                dead.push((h.lease, h.epoch));
            }
        }
        let welcome = ControllerMessage::Welcome {
            protocol: PROTOCOL_VERSION,
            heartbeat_ms: u64::try_from(self.config.heartbeat.as_millis()).unwrap_or(5000),
            resume,
        };
        if tx.try_send(welcome).is_err() {
            return Err("connection closed during hello".into());
        }
        for (lease, epoch) in dead {
            let _ = tx.try_send(ControllerMessage::DropLease { lease, epoch });
        }
        tracing::info!("agent {agent} connected with {} device(s)", devices.len());
        self.commit(events, Vec::new(), None, None)
            .await
            .map_err(|e| e.to_string())
    }

    async fn agent_said(&mut self, conn: ConnId, agent: &str, message: AgentMessage) {
        let current = self
            .agents
            .get(agent)
            .and_then(|l| l.conn.as_ref())
            .is_some_and(|(c, _)| *c == conn);
        if !current {
            tracing::debug!("agent {agent}: message from a replaced connection ignored");
            return;
        }
        let at = now();
        if let Some(link) = self.agents.get_mut(agent) {
            link.last_seen = at;
        }
        if let Some(lease) = lease_of(&message)
            && let Some(info) = self.leases.get(lease)
            && info.conn != Some(conn)
        {
            if let Some(link) = self.agents.get_mut(agent)
                && let Some(suppressed) = link.refusals.allow(Instant::now())
            {
                tracing::warn!(
                    "agent {agent} (link {conn}): {} refused: lease {lease} of job {} is not held by this link{}",
                    kind_of(&message),
                    info.job,
                    more(suppressed)
                );
            }
            return;
        }
        let result = match message {
            AgentMessage::Hello { .. } => {
                tracing::warn!("agent {agent}: second hello ignored");
                Ok(())
            }
            AgentMessage::Heartbeat => {
                let events = self.sched.heartbeat(agent, at);
                self.commit(events, Vec::new(), None, None).await
            }
            AgentMessage::JobStarted { lease, epoch } => {
                match self.sched.job_started(lease, epoch, at) {
                    Ok(events) => self.commit(events, Vec::new(), None, None).await,
                    Err(refusal) => {
                        self.refused(agent, lease, epoch, &refusal);
                        Ok(())
                    }
                }
            }
            AgentMessage::JobFinished {
                lease,
                epoch,
                report,
                last_seq,
            } => {
                self.job_finished(agent, lease, epoch, report, last_seq)
                    .await
            }
            AgentMessage::StartRefused {
                lease,
                epoch,
                reason,
            } => {
                tracing::warn!("agent {agent} refused lease {lease}: {reason}");
                match self.sched.start_refused(lease, epoch, at) {
                    Ok(events) => self.commit(events, Vec::new(), None, Some(lease)).await,
                    Err(refusal) => {
                        tracing::debug!("start refusal of lease {lease}: {refusal}");
                        Ok(())
                    }
                }
            }
            AgentMessage::DeviceReady { device } => {
                match self.sched.device_ready(agent, &device, at) {
                    Ok(events) => self.commit(events, Vec::new(), None, None).await,
                    Err(refusal @ Refusal::NotYourDevice { .. }) => {
                        if let Some(link) = self.agents.get_mut(agent)
                            && let Some(suppressed) = link.refusals.allow(Instant::now())
                        {
                            tracing::warn!(
                                "agent {agent} (link {conn}): device-ready refused: {refusal}{}",
                                more(suppressed)
                            );
                        }
                        Ok(())
                    }
                    Err(refusal) => {
                        tracing::debug!("agent {agent}: device ready {device}: {refusal}");
                        Ok(())
                    }
                }
            }
        };
        if let Err(e) = result {
            tracing::error!("agent {agent}: {e}");
        }
    }

    fn refused(&self, agent: &str, lease: LeaseId, epoch: Epoch, refusal: &Refusal) {
        tracing::debug!("agent {agent}: lease {lease}: {refusal}");
        if !self.sched.is_live(lease, epoch) {
            self.send(agent, ControllerMessage::DropLease { lease, epoch });
        }
    }

    async fn job_finished(
        &mut self,
        agent: &str,
        lease: LeaseId,
        epoch: Epoch,
        mut report: JobReport,
        last_seq: Seq,
    ) -> Result<(), ControllerError> {
        let Some(info) = self.leases.get(lease).filter(|i| i.epoch == epoch) else {
            // Already ended by the controller: the agent tears down and reports the device.
            self.send(agent, ControllerMessage::DropLease { lease, epoch });
            return Ok(());
        };
        let at = now();
        let events =
            match self
                .sched
                .job_finished(lease, epoch, report.outcome, report.reason.clone(), at)
            {
                Ok(events) => events,
                Err(refusal) => {
                    self.refused(agent, lease, epoch, &refusal);
                    return Ok(());
                }
            };
        if let Some(entry) = self.sched.job(info.job)
            && let Some(outcome) = entry.outcome
            && outcome != report.outcome
        {
            report.outcome = outcome;
            report.reason = entry.reason.clone();
        }
        let stored = self.logs.last(info.job).unwrap_or(Seq(0));
        if stored < last_seq
            && let Err(e) = self.logs.note(
                info.job,
                LogKind::Gap,
                format!(
                    "log records {} to {} never arrived",
                    stored.0 + 1,
                    last_seq.0
                ),
                at,
            )
        {
            tracing::error!("{e}");
        }
        let last = self.final_note(info.job, &report, at);
        // The agent deletes its spool on `FinishAcked`: every record must be on disk first.
        if let Err(e) = self.logs.sync(info.job) {
            tracing::error!("{e}");
        }
        self.commit(events, vec![(info.job, report, last)], None, Some(lease))
            .await?;
        self.send(agent, ControllerMessage::FinishAcked { lease, epoch });
        Ok(())
    }
}

/// The lease an agent message is about, if any.
fn lease_of(message: &AgentMessage) -> Option<LeaseId> {
    match message {
        AgentMessage::JobStarted { lease, .. }
        | AgentMessage::JobFinished { lease, .. }
        | AgentMessage::StartRefused { lease, .. } => Some(*lease),
        AgentMessage::Hello { .. } | AgentMessage::Heartbeat | AgentMessage::DeviceReady { .. } => {
            None
        }
    }
}

/// The wire name of an agent message, for logs.
fn kind_of(message: &AgentMessage) -> &'static str {
    match message {
        AgentMessage::Hello { .. } => "hello",
        AgentMessage::Heartbeat => "heartbeat",
        AgentMessage::JobStarted { .. } => "job-started",
        AgentMessage::JobFinished { .. } => "job-finished",
        AgentMessage::StartRefused { .. } => "start-refused",
        AgentMessage::DeviceReady { .. } => "device-ready",
    }
}

/// Names in a hello reach logs and paths: agent and device names must be safe names
/// (`proto::names`), labels free of control characters. The refusal escapes what it shows.
fn check_names(
    agent: &str,
    version: &str,
    devices: &[proto::link::DeviceInfo],
) -> Result<(), String> {
    use proto::names::{check_label, check_name};
    check_name(agent).map_err(|e| format!("agent name: {e}"))?;
    check_label(version).map_err(|e| format!("agent version: {e}"))?;
    for d in devices {
        check_name(&d.name).map_err(|e| format!("device name: {e}"))?;
        check_label(&d.device_type).map_err(|e| format!("device {}: device_type: {e}", d.name))?;
        for label in d.tags.iter().chain(&d.capabilities) {
            check_label(label).map_err(|e| format!("device {}: tag: {e}", d.name))?;
        }
    }
    Ok(())
}
