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
//! - Renewals of job leases are soft state and are not stored: a restarted controller renews
//!   every live job lease ([`scheduler::Scheduler::restarted`]). Renewals of people's leases
//!   are stored: they are the lease's deadline, which a restart must neither extend nor lose.
//! - Whether a request may see, renew or release a person's lease is decided by
//!   [`policy::may_use_lease`] only ([`person_leases`]).
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

use crate::logs::Logs;
use crate::policy::{self, Viewer};
use crate::queue_quota::{self, QueueQuota, QueueUsage};
use crate::store::{Change, JobRow, Store};
use crate::{ControllerError, now};
use proto::api::{AgentState, AgentView, DeviceView, JobView, LeaseView, QuotaExceeded};
use proto::link::{
    AgentMessage, ControllerMessage, DeviceInfo, HeldLease, LogCursor, PROTOCOL_VERSION,
};
use proto::log::LogKind;
use proto::{
    Epoch, JobId, JobReport, JobState, LeaseId, Millis, PersonLeaseId, PrincipalId, Role, Seq,
    Visibility,
};
use scheduler::{Config as SchedulerConfig, Event, JobSpec, Refusal, Scheduler};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::link::{WarnLimit, more};
pub use crate::sessions::ConnId;
use crate::sessions::Sessions;
use std::time::Instant;

mod agents;
mod commands;
mod coordinators;
mod devices;
mod effects;
pub mod forward;
mod groups;
mod health;
mod lease_sessions;
mod leases;
mod person_leases;
pub mod relay;
mod relay_links;
mod replica;
mod retries;
mod stream_routes;
mod views;

pub use health::{CheckInterval, HealthChecks, HealthJob, ScheduleError, parse_schedule};

/// Where a session request's progress reports go: (bytes done, total), the latest only.
pub type Progress = tokio::sync::watch::Sender<(u64, u64)>;
pub use lease_sessions::SessionFetch;
pub use leases::{LeaseInfo, Leases};
pub use person_leases::{LeaseRequest, PersonLeaseConfig};
pub use stream_routes::{LinkAt, SessionAt, StreamRoute};

/// Why a request was not done; becomes an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Failure {
    NotFound(String),
    Forbidden(String),
    BadRequest {
        message: String,
        known_device_types: Vec<String>,
    },
    Conflict(String),
    /// The lease has ended (410).
    Gone(String),
    Unavailable(String),
    /// A per-user quota refused the job (429).
    OverQuota {
        message: String,
        quota: QuotaExceeded,
    },
}

/// A job about to be submitted (validated by the API layer).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
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
    /// A MultiNode job's role instances, in roster order (`jobspec::multinode::instances`):
    /// each becomes a sub-job with `spec` but for the instance's device type and tags.
    /// Empty for a single-device job.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<RoleInstance>,
}

/// One role instance of a MultiNode submission.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RoleInstance {
    pub role: String,
    pub device_type: String,
    pub tags: Vec<String>,
    /// A secondary connection's host instance (`jobspec::multinode::RoleInstance::host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<u32>,
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
    /// Sessions (people's leases) the agent still keeps.
    pub sessions: Vec<proto::link::HeldSession>,
    /// Where messages for this connection go.
    pub tx: mpsc::Sender<ControllerMessage>,
}

pub enum Command {
    Submit {
        job: Box<Submission>,
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
    DeviceTypes {
        reply: oneshot::Sender<Vec<proto::admin::DeviceTypeView>>,
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
    /// A person asks for a device.
    AcquireLease {
        request: LeaseRequest,
        reply: oneshot::Sender<Result<LeaseView, Failure>>,
    },
    /// One person's lease; with `wait`, answered once it no longer waits (or the caller
    /// gives up: the API times out).
    Lease {
        lease: PersonLeaseId,
        viewer: Viewer,
        wait: bool,
        reply: oneshot::Sender<Result<LeaseView, Failure>>,
    },
    /// People's leases `viewer` may see (not ended unless `all`).
    PersonLeases {
        viewer: Viewer,
        all: bool,
        reply: oneshot::Sender<Vec<LeaseView>>,
    },
    RenewLease {
        lease: PersonLeaseId,
        viewer: Viewer,
        ttl: Option<Duration>,
        reply: oneshot::Sender<Result<LeaseView, Failure>>,
    },
    ReleaseLease {
        lease: PersonLeaseId,
        viewer: Viewer,
        reply: oneshot::Sender<Result<LeaseView, Failure>>,
    },
    /// Where a stream of a person's lease goes, if `viewer` may use the lease.
    StreamRoute {
        lease: PersonLeaseId,
        viewer: Viewer,
        reply: oneshot::Sender<Result<StreamRoute, Failure>>,
    },
    /// Where power, flash and screenshots of a person's lease are done: here on the leader;
    /// on a follower the leader, once `viewer` may use the held lease.
    SessionRoute {
        lease: PersonLeaseId,
        viewer: Viewer,
        reply: oneshot::Sender<Result<SessionAt, Failure>>,
    },
    /// Something the holder of a person's lease asks of its device (power, flash,
    /// screenshot); answered when the agent replies (the API bounds the wait).
    Session {
        lease: PersonLeaseId,
        viewer: Viewer,
        action: proto::session::SessionAction,
        /// Progress reports of the agent, for whoever shows them (a flash).
        progress: Option<Progress>,
        reply: oneshot::Sender<Result<proto::session::SessionResult, Failure>>,
    },
    /// Whether the current link of `agent`, opened with token `token_id`, keeps the live
    /// session `lease` and a flash of it names artifact `sha256` (a follower: ask the leader).
    HoldsSession {
        lease: LeaseId,
        sha256: String,
        agent: String,
        token_id: String,
        reply: oneshot::Sender<SessionFetch>,
    },
    /// A device with its history and last jobs.
    Device {
        device: String,
        viewer: Viewer,
        reply: oneshot::Sender<Result<proto::admin::DeviceDetail, Failure>>,
    },
    /// An admin sets a device's state.
    SetDeviceState {
        device: String,
        body: proto::admin::SetDeviceState,
        viewer: Viewer,
        reply: oneshot::Sender<Result<proto::admin::DeviceDetail, Failure>>,
    },
    /// An admin edits a device's tags.
    EditDeviceTags {
        device: String,
        body: proto::admin::EditDeviceTags,
        viewer: Viewer,
        reply: oneshot::Sender<Result<proto::admin::DeviceDetail, Failure>>,
    },
    /// An admin asks for a health check of a device.
    CheckDevice {
        device: String,
        viewer: Viewer,
        reply: oneshot::Sender<Result<JobView, Failure>>,
    },
    /// An admin action done by the API layer (tokens, groups), to be audited.
    Audit {
        viewer: Viewer,
        action: proto::admin::AuditAction,
        target: String,
        detail: String,
        reply: oneshot::Sender<Result<(), Failure>>,
    },
    /// Whether the current link of `agent`, opened with token `token_id`, holds the live lease
    /// of `job` (an agent fetches a job's artifacts only then).
    HoldsJob {
        job: JobId,
        agent: String,
        token_id: String,
        reply: oneshot::Sender<bool>,
    },
    /// What a follower relayed for an agent link it holds (forwarded, so it runs on the
    /// leader only).
    Relayed {
        relayed: relay::Relayed,
        reply: oneshot::Sender<Result<(), Failure>>,
    },
    /// A command a follower forwarded (row `id` of `commands`): it is marked done in the
    /// commit of its events; `seq` gets the last event committed after it.
    Forwarded {
        id: i64,
        command: Box<Command>,
        seq: oneshot::Sender<u64>,
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
    pub person_leases: PersonLeaseConfig,
    /// Health checks per device type (none: no checks).
    pub health: HealthChecks,
}

pub struct Dispatcher {
    config: DispatchConfig,
    sched: Scheduler,
    store: Store,
    logs: Logs,
    leases: Leases,
    sessions: Sessions,
    /// Streams of people's leases, closed when their lease ends.
    streams: crate::streams::Streams,
    updates: broadcast::Sender<JobView>,
    next_event: u64,
    next_job: u64,
    jobs: BTreeMap<JobId, JobMeta>,
    agents: BTreeMap<String, AgentLink>,
    /// What each user holds in the queue (quotas).
    usage: QueueUsage,
    /// The id of the next person's lease.
    next_person_lease: u64,
    /// Live grants of people's leases (their sessions on the agents).
    grants: BTreeMap<LeaseId, lease_sessions::Grant>,
    /// Session requests waiting for their agent's reply.
    pending: BTreeMap<proto::session::RequestId, lease_sessions::Pending>,
    /// The last request id given.
    next_request: u64,
    /// Requests waiting for a person's lease to stop waiting (`GET ...?wait=`).
    lease_waits: BTreeMap<PersonLeaseId, Vec<oneshot::Sender<Result<LeaseView, Failure>>>>,
    /// Set when a commit failed: the dispatcher stops after the current command.
    fatal: Option<String>,
    /// The forwarded command being handled, until its first commit marks it done.
    forwarded: Option<i64>,
    /// The number of the next audit entry, and entries waiting for the next commit.
    next_audit: u64,
    pending_audit: Vec<proto::admin::AuditEntry>,
    /// Health checks to queue after the current command.
    checks_due: Vec<(String, health::Trigger)>,
    /// Jobs whose infra error calls for a retry ([`retries`]).
    retries_due: Vec<JobId>,
    /// When the interval health trigger looks at the devices next.
    next_interval_scan: Millis,
    /// Jobs finished on each device since its last check (filled as devices finish jobs).
    jobs_since_check: BTreeMap<String, u32>,
    /// Agent links other controllers hold and relay ([`relay`]).
    remote: relay::RemoteLinks,
    /// MultiNode coordinators of groups that made calls, by group ([`coordinators`]).
    coordinators: BTreeMap<JobId, multinode::Coordinator>,
}

impl Dispatcher {
    /// Rebuilds the dispatcher from the database and renews every live lease.
    pub async fn load(
        config: DispatchConfig,
        store: Store,
        logs: Logs,
        leases: Leases,
        sessions: Sessions,
        streams: crate::streams::Streams,
        updates: broadcast::Sender<JobView>,
    ) -> Result<Dispatcher, ControllerError> {
        leases.clear();
        let mut d =
            Dispatcher::replica(config, store, logs, leases, sessions, streams, updates).await?;
        d.load_grants();
        for lease in d.sched.leases() {
            if let Some(job) = lease.job() {
                d.leases.insert(
                    lease.id,
                    LeaseInfo {
                        job,
                        epoch: lease.epoch,
                        conn: None,
                        net: leases::net_of(&d.sched, job),
                    },
                );
            }
        }
        let events = d.sched.restarted(now());
        d.commit(events, Vec::new(), None, None).await?;
        Ok(d)
    }

    /// The state the stored events make, acting on nothing: a leader's start
    /// ([`Dispatcher::load`]) or a follower's replica ([`Dispatcher::follow`]).
    pub async fn replica(
        config: DispatchConfig,
        store: Store,
        logs: Logs,
        leases: Leases,
        sessions: Sessions,
        streams: crate::streams::Streams,
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
        let next_person_lease = sched.person_leases().last().map_or(1, |(id, _)| id.0 + 1);
        let next_audit = store.last_audit_seq().await? + 1;
        Ok(Dispatcher {
            config,
            sched,
            store,
            logs,
            leases,
            sessions,
            streams,
            updates,
            next_event,
            next_job,
            jobs,
            agents: BTreeMap::new(),
            usage,
            next_person_lease,
            grants: BTreeMap::new(),
            pending: BTreeMap::new(),
            next_request: 0,
            lease_waits: BTreeMap::new(),
            fatal: None,
            forwarded: None,
            next_audit,
            pending_audit: Vec::new(),
            checks_due: Vec::new(),
            next_interval_scan: Millis(0),
            retries_due: Vec::new(),
            jobs_since_check: BTreeMap::new(),
            coordinators: BTreeMap::new(),
            remote: relay::RemoteLinks::new(next_event.saturating_sub(1)),
        })
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
            if self.fatal.is_none() {
                self.drop_silent_links().await;
                self.check_relayed_links().await;
                self.run_due_checks().await;
                self.run_due_retries().await;
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

    async fn handle(&mut self, command: Command) -> Result<(), ControllerError> {
        match command {
            Command::Submit { job, reply } => {
                let answer = self.submit(*job).await;
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
                let _ = reply.send(self.job_views(&viewer, state, limit));
            }
            Command::Devices { reply } => {
                let _ = reply.send(self.device_views());
            }
            Command::Agents { reply } => {
                let _ = reply.send(self.agent_views());
            }
            Command::DeviceTypes { reply } => {
                let _ = reply.send(self.device_type_views());
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
            Command::Session {
                lease,
                viewer,
                action,
                progress,
                reply,
            } => {
                self.session_request(lease, &viewer, action, progress, reply)
                    .await
            }
            Command::HoldsSession {
                lease,
                sha256,
                agent,
                token_id,
                reply,
            } => {
                let _ = reply.send(self.holds_session(lease, &sha256, &agent, &token_id));
            }
            Command::Gone { conn, agent } => self.gone(conn, &agent).await,
            Command::StreamRoute {
                lease,
                viewer,
                reply,
            } => {
                let answer = self.stream_route(lease, &viewer).await;
                let _ = reply.send(answer);
            }
            Command::SessionRoute { reply, .. } => {
                // The leader asks the agent itself (on its own link or a relayed one); the
                // request checks the caller.
                let _ = reply.send(Ok(SessionAt::Here));
            }
            Command::Device {
                device,
                viewer,
                reply,
            } => {
                let _ = reply.send(self.device_detail(&device, &viewer));
            }
            Command::SetDeviceState {
                device,
                body,
                viewer,
                reply,
            } => {
                let answer = self.set_device_state(&device, body, &viewer).await;
                let _ = reply.send(answer);
            }
            Command::EditDeviceTags {
                device,
                body,
                viewer,
                reply,
            } => {
                let answer = self.edit_device_tags(&device, body, &viewer).await;
                let _ = reply.send(answer);
            }
            Command::CheckDevice {
                device,
                viewer,
                reply,
            } => {
                let answer = self.check_on_demand(&device, &viewer).await;
                let _ = reply.send(answer);
            }
            Command::Audit {
                viewer,
                action,
                target,
                detail,
                reply,
            } => {
                let answer = self.record(&viewer, action, &target, detail).await;
                let _ = reply.send(answer);
            }
            Command::AcquireLease { request, reply } => {
                let answer = self.acquire_lease(request).await;
                let _ = reply.send(answer);
            }
            Command::Lease {
                lease,
                viewer,
                wait,
                reply,
            } => self.show_lease(lease, &viewer, wait, reply),
            Command::PersonLeases { viewer, all, reply } => {
                let _ = reply.send(self.lease_views(&viewer, all));
            }
            Command::RenewLease {
                lease,
                viewer,
                ttl,
                reply,
            } => {
                let answer = self.renew_lease(lease, &viewer, ttl).await;
                let _ = reply.send(answer);
            }
            Command::ReleaseLease {
                lease,
                viewer,
                reply,
            } => {
                let answer = self.release_lease(lease, &viewer).await;
                let _ = reply.send(answer);
            }
            Command::Relayed { relayed, reply } => {
                let answer = self.relayed(relayed).await;
                let _ = reply.send(answer);
            }
            Command::Forwarded { id, command, seq } => {
                self.forwarded = Some(id);
                let handled = Box::pin(self.handle(*command)).await;
                self.forwarded = None;
                let _ = seq.send(self.next_event.saturating_sub(1));
                handled?;
            }
        }
        Ok(())
    }
}
