//! `dutlab serve`: the controller.

use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7780")]
    listen: SocketAddr,
    /// The address clients reach this controller at, when several controllers share a
    /// database: people's console and TCP streams of its agents' devices are redirected
    /// here from the other controllers. Default: the --listen address when it names one host.
    #[arg(long, value_name = "URL")]
    advertise: Option<controller::Advertised>,
    /// Data directory: database (SQLite), logs, the first admin token.
    /// Default: $XDG_DATA_HOME/dutlab or ~/.local/share/dutlab.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Database URL (`postgres://...`); default: SQLite in the data directory.
    #[arg(long, value_name = "URL", env = "DUTLAB_DATABASE")]
    database: Option<String>,
    /// When another `dutlab serve` uses the data directory or the database, wait for it to
    /// stop and then take over (without this, such a start is refused).
    #[arg(long, conflicts_with = "follow")]
    standby: bool,
    /// On PostgreSQL, when another `dutlab serve` leads the database, serve beside it as a
    /// follower (the API and log followers here, changes forwarded to the leader) and lead
    /// when it stops. Each controller needs its own data directory.
    #[arg(long)]
    follow: bool,
    /// How long a job's lease lives without a heartbeat from its agent.
    #[arg(long, value_name = "DURATION", value_parser = duration, default_value = "60s")]
    lease_ttl: Duration,
    /// How long a person's lease holds its device when the request names no duration.
    #[arg(long, value_name = "DURATION", value_parser = duration, default_value = "30m")]
    lease_duration: Duration,
    /// How long after its grant renewals may keep a user's lease.
    #[arg(long, value_name = "DURATION", value_parser = duration, default_value = "8h")]
    lease_cap_user: Duration,
    /// How long after its grant renewals may keep an admin's lease.
    #[arg(long, value_name = "DURATION", value_parser = duration, default_value = "24h")]
    lease_cap_admin: Duration,
    /// How long a job waits for its agent to reconnect after the link closed.
    #[arg(long, value_name = "DURATION", value_parser = duration, default_value = "10s")]
    disconnect_grace: Duration,
    /// How often agents send heartbeats (an agent not heard from for two of them is shown
    /// `silent`; after four its link is closed and its devices leave the pool).
    #[arg(long, value_name = "DURATION", value_parser = duration, default_value = "5s")]
    heartbeat: Duration,
    /// Infra errors in a row on one device that take it out of the pool as `bad` (0: never).
    #[arg(long, value_name = "N", default_value_t = 3)]
    quarantine_after: u32,
    /// Health checks: a directory of LAVA job files named `<device-type>.yaml`, one per
    /// device type (see docs/admin.md).
    #[arg(long, value_name = "DIR")]
    health_checks: Option<PathBuf>,
    /// Also check a device after every N other jobs on it (0: never).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        requires = "health_checks"
    )]
    health_check_every_jobs: u32,
    /// Also check a device when its last check finished longer ago than this (e.g. 24h).
    #[arg(long, value_name = "DURATION", value_parser = duration, requires = "health_checks")]
    health_check_every: Option<Duration>,
    /// Per device type intervals that replace the two above for the types it names: YAML,
    /// `TYPE: {every_jobs: N, every: DURATION}` (see docs/admin.md).
    #[arg(long, value_name = "FILE", requires = "health_checks")]
    health_check_schedule: Option<PathBuf>,
    /// Certificate chain (PEM) for TLS; with --tls-key. Agents, followers and every REST
    /// route then use https:// and wss://.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Listen on a non-loopback address without TLS (tokens then cross the network in clear).
    #[arg(long, conflicts_with = "tls_cert")]
    insecure_plain_http: bool,
    /// A request head (and a TLS handshake) must be complete within this time; an idle
    /// kept-alive connection is closed after it too.
    #[arg(long, value_name = "DURATION", value_parser = duration, default_value = "10s")]
    header_timeout: Duration,
    /// Connections served at once (agents, followers, requests); more wait, except a few
    /// that answer /healthz only.
    #[arg(long, value_name = "N", default_value_t = controller::listener::Limits::default().max_connections)]
    max_connections: usize,
    /// Job log files kept open at most (least recently used closed first, reopened on the
    /// job's next record).
    #[arg(long, value_name = "N", default_value_t = controller::logs::DEFAULT_OPEN_FILES,
        value_parser = clap::value_parser!(usize))]
    open_log_files: usize,
    /// SQLite `synchronous`: `full` syncs every commit (nothing acknowledged is lost to a
    /// power failure); `normal` syncs at WAL checkpoints only.
    #[arg(long, value_name = "MODE", default_value = "full", value_parser = sqlite_sync)]
    sqlite_synchronous: controller::store::SqliteSync,
    /// Per user: jobs not finished yet (queued to canceling); one more is refused with 429.
    /// Admin tokens are exempt.
    #[arg(long, value_name = "N", default_value_t = controller::queue_quota::QueueQuota::default().queued_jobs)]
    quota_queued_jobs: u64,
    /// Per job: bytes of its definition (at most 1048576 in any case); more is refused with
    /// 429. Admin tokens are exempt.
    #[arg(long, value_name = "BYTES", default_value_t = controller::queue_quota::QueueQuota::default().job_definition_bytes)]
    quota_job_bytes: u64,
    /// Per user: bytes of the definitions of the jobs not finished yet; a job that would pass
    /// it is refused with 429. Admin tokens are exempt.
    #[arg(long, value_name = "BYTES", default_value_t = controller::queue_quota::QueueQuota::default().queued_definition_bytes)]
    quota_queued_bytes: u64,
    /// Largest artifact (image, git bundle) a user may upload, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = proto::api::DEFAULT_MAX_ARTIFACT)]
    max_artifact_bytes: u64,
    /// Bytes of artifacts one user may keep in the store (an upload past it is refused with
    /// 429, naming the quota and the user's usage).
    #[arg(long, value_name = "BYTES", default_value_t = controller::artifact_quota::DEFAULT_ARTIFACT_QUOTA)]
    artifact_quota_bytes: u64,
}

fn sqlite_sync(text: &str) -> Result<controller::store::SqliteSync, String> {
    match text {
        "full" => Ok(controller::store::SqliteSync::Full),
        "normal" => Ok(controller::store::SqliteSync::Normal),
        other => Err(format!("{other:?}: use full or normal")),
    }
}

fn duration(text: &str) -> Result<Duration, String> {
    jobspec::parse_duration(text).map_err(|e| e.to_string())
}

/// Default data directory.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("dutlab");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/share/dutlab")
}

pub fn serve(args: ServeArgs) -> i32 {
    match serve_inner(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("dutlab: error: {e:#}");
            proto::Outcome::InfraError.exit_code()
        }
    }
}

/// Raises the soft open-file limit to the hard one: the controller keeps a socket per agent
/// and follower and a file per running job's log.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!("cannot raise the open-file limit from {soft} to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot read the open-file limit: {e}"),
    }
}

/// Whether the listener may run without TLS: only on loopback, unless told otherwise.
fn check_plain_http(args: &ServeArgs) -> anyhow::Result<()> {
    if args.tls_cert.is_none() && !args.insecure_plain_http && !args.listen.ip().is_loopback() {
        anyhow::bail!(
            "--listen {}: not a loopback address, and no TLS: tokens would cross the network in \
             clear; give --tls-cert and --tls-key (`dutlab tls init DIR` makes them), or \
             --insecure-plain-http to do it anyway",
            args.listen
        );
    }
    Ok(())
}

/// Reads `DIR/<device-type>.yaml` health check jobs; each must be a valid, runnable job of
/// that device type.
/// Every check gets `interval`; `schedule` (a `--health-check-schedule` file) replaces it for
/// the types it names.
fn health_checks(
    dir: &std::path::Path,
    interval: controller::dispatcher::CheckInterval,
    schedule: Option<&std::path::Path>,
) -> anyhow::Result<std::collections::BTreeMap<String, controller::dispatcher::HealthJob>> {
    let mut jobs = std::collections::BTreeMap::new();
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("--health-checks {}: cannot read it", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        let (Some(stem), Some("yaml")) = (
            path.file_stem().and_then(|s| s.to_str()),
            path.extension().and_then(|e| e.to_str()),
        ) else {
            continue;
        };
        let file_name = format!("{stem}.yaml");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let job = jobspec::parse_job(&file_name, &text)
            .map_err(|e| anyhow::anyhow!("health check {}: {e}", path.display()))?;
        jobspec::check_runnable(&file_name, &job).map_err(|e| {
            anyhow::anyhow!("health check {}: not runnable here: {e}", path.display())
        })?;
        if job.device_type != stem {
            anyhow::bail!(
                "health check {}: device_type: {:?}, but the file is named for device type {stem:?}",
                path.display(),
                job.device_type
            );
        }
        jobs.insert(
            stem.to_owned(),
            controller::dispatcher::HealthJob {
                file_name,
                name: job.name.clone(),
                definition: text,
                interval,
            },
        );
    }
    if let Some(file) = schedule {
        let text = std::fs::read_to_string(file).with_context(|| {
            format!("--health-check-schedule {}: cannot read it", file.display())
        })?;
        let by_type = controller::dispatcher::parse_schedule(
            &file.display().to_string(),
            &text,
            &jobs,
            interval,
        )?;
        for (device_type, interval) in by_type {
            if let Some(job) = jobs.get_mut(&device_type) {
                job.interval = interval;
            }
        }
    }
    tracing::info!(
        "health checks for device types: {}",
        jobs.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    Ok(jobs)
}

fn serve_inner(args: ServeArgs) -> anyhow::Result<()> {
    check_plain_http(&args)?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(std::sync::Arc::new(
            tls::server_config(cert, key).context("cannot use the TLS certificate")?,
        )),
        _ => None,
    };
    if args.insecure_plain_http && !args.listen.ip().is_loopback() {
        tracing::warn!(
            "listening on {} without TLS (--insecure-plain-http): tokens cross the network in clear",
            args.listen
        );
    }
    raise_open_file_limit();
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    let mut config = controller::Config::new(args.listen, data_dir);
    config.database = args.database;
    config.advertise = args.advertise;
    config.when_held = if args.standby {
        controller::store::hold::Wait::Standby
    } else if args.follow {
        controller::store::hold::Wait::Follow
    } else {
        controller::store::hold::Wait::Refuse
    };
    config.lease_ttl = args.lease_ttl;
    config.person_leases = controller::dispatcher::PersonLeaseConfig {
        default_ttl: args.lease_duration,
        user_cap: args.lease_cap_user,
        admin_cap: args.lease_cap_admin,
    };
    config.disconnect_grace = args.disconnect_grace;
    config.heartbeat = args.heartbeat;
    config.quarantine_after = args.quarantine_after;
    if let Some(dir) = &args.health_checks {
        let interval = controller::dispatcher::CheckInterval {
            every_jobs: std::num::NonZeroU32::new(args.health_check_every_jobs),
            every: args.health_check_every,
        };
        config.health_checks = health_checks(dir, interval, args.health_check_schedule.as_deref())?;
    }
    config.limits = controller::listener::Limits {
        tls,
        header_timeout: args.header_timeout,
        handshake_timeout: args.header_timeout,
        max_connections: args.max_connections,
    };
    config.open_log_files = args.open_log_files.max(1);
    config.sqlite_sync = args.sqlite_synchronous;
    config.quota = controller::queue_quota::QueueQuota {
        queued_jobs: args.quota_queued_jobs,
        job_definition_bytes: args.quota_job_bytes,
        queued_definition_bytes: args.quota_queued_bytes,
    };
    config.max_artifact = args.max_artifact_bytes;
    config.artifact_quota = args.artifact_quota_bytes;
    let shared = config.database.as_deref().is_some_and(|url| {
        controller::store::Backend::of(url) == controller::store::Backend::Postgres
    });
    if shared {
        config.keep_socket = Some(Default::default());
    }
    let mut stepped_down = false;
    loop {
        // Each run has a runtime of its own: when it ends, every task it started ends with
        // it, so nothing of a leader that stepped down outlives its run.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let served = runtime.block_on(controller::serve(config.clone(), shutdown_signal()));
        runtime.shutdown_timeout(RUN_END);
        match served {
            Ok(()) => return Ok(()),
            Err(e) if shared && e.stopped_leading() => {
                tracing::warn!(
                    "{e}; stepping down: this controller serves again from the database, as a \
                     follower of its leader (or its leader when the lock is free)"
                );
                step_down(&mut config);
                stepped_down = true;
            }
            Err(e) if stepped_down && e.database_unreachable() => {
                tracing::warn!("{e}; trying again in {}s", RETRY.as_secs());
                if waited_for_a_signal(RETRY)? {
                    return Ok(());
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// How long the tasks of an ended run get to finish their blocking work.
const RUN_END: std::time::Duration = std::time::Duration::from_secs(5);

/// How often a controller that stepped down tries its database again while it is away.
const RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// How a controller that stepped down starts again: a standby waits for the lock without
/// listening (its address is the leader's), any other follows the leader meanwhile.
fn step_down(config: &mut controller::Config) {
    use controller::store::hold::Wait;
    config.when_held = match config.when_held {
        Wait::Standby => {
            config.keep_socket = Some(Default::default());
            Wait::Standby
        }
        Wait::Refuse | Wait::Follow => Wait::Follow,
    };
}

/// Sleeps `pause`; `true` when Ctrl-C or SIGTERM came first.
fn waited_for_a_signal(pause: std::time::Duration) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(runtime.block_on(async {
        tokio::select! {
            () = tokio::time::sleep(pause) => false,
            () = shutdown_signal() => true,
        }
    }))
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
    tracing::info!("shutting down");
}
