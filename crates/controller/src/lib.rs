//! The controller: REST API, agent links, the dispatcher that owns the scheduler, the
//! database and the log store, in one process (`dutlab serve`).
//!
//! ```text
//!  clients ──REST/WS──> api ──Command──> dispatcher (owns scheduler) ──commit──> store (SQL)
//!  agents ──WS link──> link ──Command──┘        │ effects after commit: StartJob, CancelJob,
//!                        └─ log frames ─> logs  │ DropLease, job updates to followers
//! ```
//!
//! Invariants:
//! - Every route but `/healthz` needs a token; tokens are stored hashed and never logged.
//! - Nothing is acknowledged before it is committed (see `dispatcher`).
//! - The controller owns no device: it only talks to agents that dial in.
//! - Jobs are owned by principals (users), and who may read or cancel one is decided by
//!   [`policy`] alone; per-user queue quotas by [`queue_quota`].
//! - Every long-lived connection is a [`sessions::Session`] of the token that opened it:
//!   revoking the token ends it.
//! - One controller at a time works on a data directory (`serve.lock`, [`datadir::lock`])
//!   and leads a PostgreSQL database ([`store::hold`]), taken before the database is migrated
//!   or replayed; losing the database's lock stops the controller. With `--follow`, others
//!   serve beside the leader as followers ([`dispatcher::forward`]) and one of them leads
//!   when it stops.

pub mod admin_api;
pub mod api;
pub mod artifact_quota;
pub mod artifacts;
pub mod auth;
pub mod datadir;
pub mod dispatcher;
pub mod group_net;
pub mod lava;
pub mod lease_api;
pub mod leviathan;
pub mod link;
pub mod listener;
pub mod logs;
pub mod openapi;
pub mod policy;
pub mod principals;
pub mod queue_quota;
pub mod sessions;
pub mod store;
pub mod stream_api;
pub mod streams;
pub mod token_api;

use auth::Tokens;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};
use dispatcher::{Command, DispatchConfig, Dispatcher, Leases};
use logs::Logs;
use proto::Millis;
use proto::api::JobView;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use store::Store;
use tokio::sync::{broadcast, mpsc};

/// Why the controller could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("the stored events do not replay: {0}")]
    Replay(String),
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Serve(std::io::Error),
    #[error("the dispatcher stopped: {0}")]
    Stopped(String),
    #[error(transparent)]
    Logs(#[from] logs::LogError),
    #[error("cannot make the admin token: {0}")]
    AdminToken(String),
    #[error(
        "data directory {path} is used by another dutlab serve (it holds {lock}); stop it, or \
         start this one with --standby to wait and take over when it stops",
        lock = datadir::LOCK_FILE
    )]
    DataDirInUse { path: PathBuf },
    #[error(
        "lost the connection that holds the database's lock ({0}): another controller may \
         take over, so this one stops leading"
    )]
    LostHold(String),
    /// The leader's dispatcher stopped on a shared database (a commit failed): the
    /// scheduler may have run ahead of what is stored.
    #[error("the dispatcher stopped on its database ({0}): this controller stops leading")]
    LeaderFailed(String),
    #[error(
        "--follow needs a database several controllers share (--database postgres://...); \
         on SQLite one controller works on its data directory"
    )]
    FollowNeedsPostgres,
}

impl ControllerError {
    /// Whether a controller on a shared database (PostgreSQL) stopped leading it after it
    /// led: its lock connection failed or a commit did. Nothing of that run may go on (it is
    /// no longer known to be the only writer); `dutlab serve` steps down and serves again
    /// from the database.
    pub fn stopped_leading(&self) -> bool {
        matches!(
            self,
            ControllerError::LostHold(_) | ControllerError::LeaderFailed(_)
        )
    }

    /// Whether the database could not be reached (or went away) while starting: worth
    /// trying again after a step-down, when the server is restarting.
    pub fn database_unreachable(&self) -> bool {
        match self {
            ControllerError::Store(store::StoreError::Connect { .. }) => true,
            ControllerError::Store(store::StoreError::Sql(e)) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed => true,
                // Class 08: connection exception; class 57: operator intervention (the
                // server shutting down or starting).
                sqlx::Error::Database(db) => db
                    .code()
                    .is_some_and(|code| code.starts_with("08") || code.starts_with("57")),
                _ => false,
            },
            _ => false,
        }
    }
}

/// Settings of `dutlab serve`.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// The address clients and other controllers reach this one at (`serve --advertise`),
    /// where people's streams of its agents are redirected. `None`: the listening address
    /// when it names one host (not `0.0.0.0` or `::`), else none.
    pub advertise: Option<Advertised>,
    pub data_dir: PathBuf,
    /// `None`: SQLite in the data directory.
    pub database: Option<String>,
    pub lease_ttl: Duration,
    pub disconnect_grace: Duration,
    pub cancel_grace: Duration,
    pub heartbeat: Duration,
    /// TLS and the listener's timeouts and connection cap.
    pub limits: listener::Limits,
    /// Log files kept open at most (least recently used closed first).
    pub open_log_files: usize,
    /// SQLite's `synchronous` (ignored for PostgreSQL).
    pub sqlite_sync: store::SqliteSync,
    /// Per-user limits on the queue.
    pub quota: queue_quota::QueueQuota,
    /// Largest artifact accepted, in bytes.
    pub max_artifact: u64,
    /// Bytes of artifacts one user may keep.
    pub artifact_quota: u64,
    /// When another controller uses the data directory or the database: refuse, or wait.
    pub when_held: store::hold::Wait,
    /// Durations and caps of people's leases.
    pub person_leases: dispatcher::PersonLeaseConfig,
    /// Infra errors in a row that make a device `bad` (0: never).
    pub quarantine_after: u32,
    /// Health check jobs by device type (`--health-checks DIR`), each with its intervals.
    pub health_checks: BTreeMap<String, dispatcher::HealthJob>,
    /// Where the listening socket is kept across runs of [`serve`] in one process: the
    /// first run that binds puts a copy here, and a later run (a controller that stepped
    /// down) serves on it, so its address stays the same and connections made meanwhile
    /// wait in its backlog. `None`: each run binds `listen` and closes it at its end.
    pub keep_socket: Option<std::sync::Arc<std::sync::OnceLock<std::net::TcpListener>>>,
}

impl Config {
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Config {
        let defaults = scheduler::Config::default();
        Config {
            listen,
            advertise: None,
            data_dir,
            database: None,
            lease_ttl: defaults.lease_ttl,
            disconnect_grace: defaults.disconnect_grace,
            cancel_grace: defaults.cancel_grace,
            heartbeat: Duration::from_secs(5),
            limits: listener::Limits::default(),
            open_log_files: logs::DEFAULT_OPEN_FILES,
            sqlite_sync: store::SqliteSync::default(),
            quota: queue_quota::QueueQuota::default(),
            max_artifact: proto::api::DEFAULT_MAX_ARTIFACT,
            artifact_quota: artifact_quota::DEFAULT_ARTIFACT_QUOTA,
            when_held: store::hold::Wait::Refuse,
            person_leases: dispatcher::PersonLeaseConfig::default(),
            quarantine_after: defaults.quarantine_after,
            health_checks: BTreeMap::new(),
            keep_socket: None,
        }
    }
}

/// What every request handler shares.
#[derive(Clone)]
pub struct AppState {
    pub tokens: Tokens,
    /// Users and their groups (the policy's view of callers).
    pub principals: principals::Principals,
    pub store: Store,
    pub logs: Logs,
    pub dispatch: mpsc::Sender<Command>,
    pub updates: broadcast::Sender<JobView>,
    pub leases: Leases,
    /// Open agent links and follow streams, by token (revocation ends them).
    pub sessions: sessions::Sessions,
    pub artifacts: artifacts::ArtifactStore,
    pub streams: streams::Streams,
    /// MultiNode group networks between this controller's agent links.
    pub group_net: group_net::GroupNet,
}

/// Wall-clock time as the pure crates take it.
pub fn now() -> Millis {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    Millis(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// The routes (used by `serve` and by the OpenAPI test).
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/v1/whoami", get(token_api::whoami))
        .route(
            "/api/v1/tokens",
            post(token_api::create_token).get(token_api::list_tokens),
        )
        .route("/api/v1/tokens/{id}", delete(token_api::revoke_token))
        .route("/api/v1/users", get(token_api::list_users))
        .route(
            "/api/v1/users/{name}/groups/{group}",
            axum::routing::put(token_api::add_member).delete(token_api::remove_member),
        )
        .route("/api/v1/jobs", post(api::submit_job).get(api::list_jobs))
        .route("/api/v1/jobs/{id}", get(api::get_job))
        .route("/api/v1/jobs/{id}/cancel", post(api::cancel_job))
        .route("/api/v1/jobs/{id}/definition", get(api::job_definition))
        .route("/api/v1/jobs/{id}/logs", get(api::job_logs))
        .route("/api/v1/jobs/{id}/logs/follow", get(api::follow))
        .route("/api/v1/jobs/{id}/results", get(api::job_results))
        .route(
            "/api/v1/artifacts/sha256/{hex}",
            put(artifacts::put_artifact)
                .head(artifacts::head_artifact)
                .get(artifacts::get_artifact),
        )
        .route(
            "/api/v1/leases",
            post(lease_api::acquire_lease).get(lease_api::list_leases),
        )
        .route("/api/v1/leases/{id}", get(lease_api::get_lease))
        .route("/api/v1/leases/{id}/renew", post(lease_api::renew_lease))
        .route(
            "/api/v1/leases/{id}/release",
            post(lease_api::release_lease),
        )
        .route("/api/v1/leases/{id}/console", get(stream_api::console))
        .route("/api/v1/leases/{id}/tcp/{port}", get(stream_api::tcp))
        .route(
            "/api/v1/leases/{id}/power",
            get(lease_api::get_power).post(lease_api::post_power),
        )
        .route("/api/v1/leases/{id}/flash", post(lease_api::post_flash))
        .route(
            "/api/v1/leases/{id}/screenshot",
            get(lease_api::get_screenshot),
        )
        // Leviathan's worker routes on a lease (docs/leviathan.md); not in openapi.json.
        .route("/dut/on", post(leviathan::on))
        .route("/dut/off", post(leviathan::off))
        .route("/dut/flash", post(leviathan::flash))
        .route("/dut/network", post(leviathan::network))
        .route("/dut/serial", get(leviathan::serial))
        .route("/dut/ip", get(leviathan::ip))
        .route("/dut/capture", get(leviathan::capture))
        .route("/api/v1/devices", get(api::devices))
        .route("/api/v1/device-types", get(admin_api::device_types))
        .route("/api/v1/devices/{name}", get(admin_api::get_device))
        .route(
            "/api/v1/devices/{name}/state",
            post(admin_api::set_device_state),
        )
        .route(
            "/api/v1/devices/{name}/tags",
            post(admin_api::edit_device_tags),
        )
        .route(
            "/api/v1/devices/{name}/check",
            post(admin_api::check_device),
        )
        .route("/api/v1/audit", get(admin_api::list_audit))
        .route("/api/v1/agents", get(api::agents))
        .route(proto::link::LINK_PATH, get(link::link))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            api::authenticate,
        ));
    Router::new()
        .route("/healthz", get(api::healthz))
        .merge(api)
        // LAVA's client API (lavacli's XML-RPC, REST v0.2): each authenticates itself.
        .route("/RPC2", post(lava::rpc::rpc2))
        .route("/RPC2/", post(lava::rpc::rpc2))
        .merge(lava::rest::routes(state.clone()))
        // JSON escaping can grow a job file; leave room above the job limit.
        .layer(DefaultBodyLimit::max(proto::api::MAX_JOB_BODY * 2 + 4096))
        .with_state(state)
}

/// Writes the first admin token when there is no token at all.
async fn first_admin(state: &AppState, data_dir: &Path) -> Result<(), ControllerError> {
    if !state.store.tokens().await?.is_empty() {
        return Ok(());
    }
    let created = token_api::make_token(state, "admin", "admin", proto::Role::Admin, None)
        .await
        .map_err(|e| ControllerError::AdminToken(format!("{e:?}")))?;
    let path = data_dir.join("admin-token");
    write_secret(&path, &created.token).map_err(|source| ControllerError::DataDir {
        path: path.clone(),
        source,
    })?;
    tracing::info!(
        "first start: admin token written to {} (mode 0600)",
        path.display()
    );
    Ok(())
}

fn write_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(secret.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

/// Who this controller is, as another one names it when refused.
fn holder(config: &Config) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "an unknown host".to_owned());
    format!(
        "pid {} on {host}, --listen {}",
        std::process::id(),
        config.listen
    )
}

/// Starts the controller and serves until `shutdown` resolves.
pub async fn serve(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ControllerError> {
    let data_err = |source| ControllerError::DataDir {
        path: config.data_dir.clone(),
        source,
    };
    datadir::prepare(&config.data_dir, config.database.is_none()).map_err(data_err)?;
    let standby = config.when_held == store::hold::Wait::Standby;
    if standby {
        tracing::info!("standby: waiting for the data directory and the database to be free");
    }
    let dir = config.data_dir.clone();
    let _dir_lock = tokio::task::spawn_blocking(move || datadir::lock(&dir, standby))
        .await
        .map_err(|e| ControllerError::Stopped(e.to_string()))?
        .map_err(data_err)?
        .ok_or_else(|| ControllerError::DataDirInUse {
            path: config.data_dir.clone(),
        })?;
    let url = config
        .database
        .clone()
        .unwrap_or_else(|| Store::sqlite_url(&config.data_dir));
    let postgres = store::Backend::of(&url) == store::Backend::Postgres;
    let follow = config.when_held == store::hold::Wait::Follow;
    if follow && !postgres {
        return Err(ControllerError::FollowNeedsPostgres);
    }
    let me = holder(&config);
    let hold = match store::hold::Hold::take(&url, &me, config.when_held).await {
        Ok(hold) => {
            if postgres {
                tracing::info!("took the database's lock at start: this controller leads");
            }
            Some(hold)
        }
        Err(store::StoreError::Held { holder, .. }) if follow => {
            tracing::info!(
                "following the leader of database {} ({holder}); taking over when it stops",
                store::redact(&url)
            );
            None
        }
        Err(e) => return Err(e.into()),
    };
    let store = match hold {
        Some(_) => Store::open(&url, config.sqlite_sync).await?,
        None => Store::open_following(&url).await?,
    };
    let tokens = Tokens::default();
    for token in store.tokens().await? {
        tokens.insert(token.hash.clone(), &token.view);
    }
    let principals = principals::Principals::default();
    for principal in store.principals().await? {
        principals.put(principal);
    }
    let logs = Logs::open(
        &config.data_dir.join("logs"),
        config.open_log_files,
        &store,
        &url,
    )
    .await?;
    let artifact_dir = config.data_dir.join("artifacts");
    let artifacts = artifacts::ArtifactStore::new(
        artifact_dir.clone(),
        if postgres {
            artifacts::ArtifactBytes::Shared
        } else {
            artifacts::ArtifactBytes::Local
        },
        config.max_artifact,
        config.artifact_quota,
    )
    .map_err(|source| ControllerError::DataDir {
        path: artifact_dir,
        source,
    })?;
    let leases = Leases::default();
    let sessions = sessions::Sessions::new(tokens.clone());
    let streams = streams::Streams::default();
    let (updates, _) = broadcast::channel(4096);
    let dispatch_config = DispatchConfig {
        scheduler: scheduler::Config {
            // Replaced by a key from the operating system in `Dispatcher::load`.
            lease_ids: scheduler::LeaseIds::Sequential,
            lease_ttl: config.lease_ttl,
            disconnect_grace: config.disconnect_grace,
            cancel_grace: config.cancel_grace,
            quarantine_after: config.quarantine_after,
        },
        heartbeat: config.heartbeat,
        quota: config.quota,
        person_leases: config.person_leases,
        health: dispatcher::HealthChecks {
            principal: if config.health_checks.is_empty() {
                proto::PrincipalId(0)
            } else {
                store.principal_named(scheduler::LAB, now()).await?.0.id
            },
            jobs: config.health_checks.clone(),
        },
    };
    let start = Start {
        config: dispatch_config,
        store: store.clone(),
        logs: logs.clone(),
        leases: leases.clone(),
        sessions: sessions.clone(),
        streams: streams.clone(),
        updates: updates.clone(),
    };
    // A leader replays before it listens; a follower listens with its replica.
    let first = match hold {
        Some(hold) => Role::Leader(hold, start.leader().await?),
        None => Role::Follower(start.replica().await?),
    };
    let (dispatch, commands) = mpsc::channel(4096);
    let hub = dispatcher::forward::Hub::default();
    if postgres {
        hub.listen(url.clone());
        refresh_identities(
            store.clone(),
            tokens.clone(),
            principals.clone(),
            sessions.clone(),
        );
    }
    let state = AppState {
        tokens,
        principals,
        store,
        logs,
        dispatch,
        updates,
        leases,
        sessions,
        artifacts,
        streams,
        group_net: group_net::GroupNet::default(),
    };
    if matches!(first, Role::Leader(..)) {
        first_admin(&state, &config.data_dir).await?;
    }
    tokio::spawn(artifacts::import_local(
        state.store.clone(),
        state.artifacts.clone(),
    ));
    let listener = listen(&config).await?;
    let local = listener.local_addr().map_err(ControllerError::Serve)?;
    let scheme = if config.limits.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!("listening on {scheme}://{local}");
    let advertised = config
        .advertise
        .clone()
        .or_else(|| {
            (!local.ip().is_unspecified()).then(|| Advertised(format!("{scheme}://{local}")))
        })
        .map(|a| a.0);
    let leader_store = state.store.clone();
    let forwarded = postgres.then(|| (state.store.clone(), hub.clone(), state.dispatch.clone()));
    let app = router(state);
    let server = listener::serve(listener, app, config.limits.clone(), shutdown);
    let roles = async move {
        let mut commands = commands;
        let (mut hold, dispatcher) = match first {
            Role::Leader(hold, dispatcher) => (hold, dispatcher),
            Role::Follower(replica) => {
                let hold = replica
                    .follow(
                        &mut commands,
                        hub.clone(),
                        controller_id()?,
                        advertised.clone(),
                        take_over(url.clone(), me.clone()),
                    )
                    .await?;
                (hold, start.leader().await?)
            }
        };
        if postgres {
            // Followers send people's streams of this controller's agents here.
            leader_store.set_leader_url(advertised.as_deref()).await?;
        }
        if let Some((store, hub, dispatch)) = forwarded {
            tokio::spawn(dispatcher::forward::execute(store, hub, dispatch));
        }
        let dispatcher = tokio::spawn(dispatcher.run(commands));
        tokio::select! {
            reason = hold.lost() => Err(ControllerError::LostHold(reason)),
            stopped = dispatcher => match stopped {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) if postgres => Err(ControllerError::LeaderFailed(e.to_string())),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(ControllerError::Stopped(e.to_string())),
            },
        }
    };
    tokio::select! {
        served = server => served.map_err(ControllerError::Serve),
        stopped = roles => stopped,
    }
}

/// The listening socket: the one kept by an earlier run ([`Config::keep_socket`]), else
/// `listen` bound now (and kept when asked).
async fn listen(config: &Config) -> Result<tokio::net::TcpListener, ControllerError> {
    use std::os::fd::AsFd;
    let failed = |source| ControllerError::Listen {
        addr: config.listen,
        source,
    };
    if let Some(kept) = config.keep_socket.as_ref().and_then(|k| k.get()) {
        let socket = kept.try_clone().map_err(failed)?;
        socket.set_nonblocking(true).map_err(failed)?;
        return tokio::net::TcpListener::from_std(socket).map_err(failed);
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(failed)?;
    if let Some(keep) = &config.keep_socket {
        let copy = listener.as_fd().try_clone_to_owned().map_err(failed)?;
        let _ = keep.set(std::net::TcpListener::from(copy));
    }
    Ok(listener)
}

/// A controller's advertised address: `http://` or `https://`, a host and maybe a port,
/// nothing after (no path, query or user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertised(String);

impl std::str::FromStr for Advertised {
    type Err = String;

    fn from_str(text: &str) -> Result<Advertised, String> {
        let rest = text
            .strip_prefix("https://")
            .or_else(|| text.strip_prefix("http://"))
            .ok_or_else(|| format!("{text:?} does not start with http:// or https://"))?;
        let host = rest.strip_suffix('/').unwrap_or(rest);
        if host.is_empty() {
            return Err(format!("{text:?} names no host"));
        }
        if let Some(bad) = host.chars().find(|c| {
            matches!(c, '/' | '?' | '#' | '@' | '\\') || c.is_whitespace() || c.is_control()
        }) {
            return Err(format!(
                "{text:?}: {bad:?} after the host (give scheme, host and port only)"
            ));
        }
        Ok(Advertised(
            text[..text.len() - (rest.len() - host.len())].to_owned(),
        ))
    }
}

impl std::fmt::Display for Advertised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a controller starts as.
enum Role {
    /// It holds the database (or works on SQLite): its dispatcher leads.
    Leader(store::hold::Hold, Dispatcher),
    /// Another controller leads the database: a replica follows it.
    Follower(Dispatcher),
}

/// What a dispatcher is built from (kept to build the leader's after following).
struct Start {
    config: DispatchConfig,
    store: Store,
    logs: Logs,
    leases: Leases,
    sessions: sessions::Sessions,
    streams: streams::Streams,
    updates: broadcast::Sender<JobView>,
}

impl Start {
    async fn leader(&self) -> Result<Dispatcher, ControllerError> {
        Dispatcher::load(
            self.config.clone(),
            self.store.clone(),
            self.logs.clone(),
            self.leases.clone(),
            self.sessions.clone(),
            self.streams.clone(),
            self.updates.clone(),
        )
        .await
    }

    async fn replica(&self) -> Result<Dispatcher, ControllerError> {
        Dispatcher::replica(
            self.config.clone(),
            self.store.clone(),
            self.logs.clone(),
            self.leases.clone(),
            self.sessions.clone(),
            self.streams.clone(),
            self.updates.clone(),
        )
        .await
    }
}

/// A fresh id of this controller among the controllers of its database (names the agent
/// links it holds in `agent_links` and `agent_outbox`): random, so no two processes share one.
fn controller_id() -> Result<String, ControllerError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)
        .map_err(|e| ControllerError::Stopped(format!("no randomness for a controller id: {e}")))?;
    Ok(format!(
        "{:016x}-{}",
        u64::from_le_bytes(bytes),
        std::process::id()
    ))
}

/// Waits for the database's lock (a follower taking over when the leader stops); a lost
/// connection while waiting (the server restarting) is tried again.
async fn take_over(url: String, me: String) -> store::hold::Hold {
    loop {
        match store::hold::Hold::take(&url, &me, store::hold::Wait::Standby).await {
            Ok(hold) => return hold,
            Err(e) => {
                tracing::warn!("waiting for the database's lock: {e}; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// How often tokens and users are read again from a database several controllers share.
const IDENTITY_REFRESH: Duration = Duration::from_secs(1);

/// Keeps tokens and users in step with a database other controllers write too: a token made
/// on another controller works here within [`IDENTITY_REFRESH`], one revoked there stops
/// working here (and ends its connections) within the same time.
fn refresh_identities(
    store: Store,
    tokens: Tokens,
    principals: principals::Principals,
    sessions: sessions::Sessions,
) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(IDENTITY_REFRESH).await;
            // Only tokens this controller did not know before the read are added: one revoked
            // here meanwhile must not come back from a read made before its revocation.
            let known = tokens.ids();
            match store.tokens().await {
                Ok(stored) => {
                    for token in stored {
                        match token.view.revoked_at {
                            Some(_) if tokens.is_live(&token.view.id) => {
                                tokens.revoke(&token.view.id);
                                let closed =
                                    sessions.close_token(&token.view.id, "the token was revoked");
                                tracing::info!(
                                    "token {} revoked on another controller; {closed} open \
                                     connection(s) closed",
                                    token.view.id
                                );
                            }
                            Some(_) => {}
                            None if !known.contains(&token.view.id)
                                && !tokens.is_live(&token.view.id) =>
                            {
                                tokens.insert(token.hash.clone(), &token.view);
                            }
                            None => {}
                        }
                    }
                }
                Err(e) => tracing::debug!("refreshing tokens: {e}"),
            }
            match store.principals().await {
                Ok(stored) => {
                    for principal in stored {
                        principals.put(principal);
                    }
                }
                Err(e) => tracing::debug!("refreshing users: {e}"),
            }
        }
    });
}
