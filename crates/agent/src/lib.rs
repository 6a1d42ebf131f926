//! The dutlab agent: runs on a lab host next to its devices, dials the controller over one
//! WebSocket (it never listens), offers its devices and runs jobs on them with the runner.
//!
//! ```text
//!  AgentConfig::load ──> run(config, shutdown)
//!                          startup: lock work_dir, kill leftovers, recover the spool
//!                          main loop (agent): link ⇄ controller, leases, devices
//!                              └─ one task per job: runner::run_job ─> recorder ─> spool
//! ```
//!
//! Module map: [`config`] (the YAML file), `link` (dialling, frames, heartbeats),
//! `agent` (main loop and lease state), `job` (one job's task), [`session`] (one person's
//! lease: the device kept for them, power, flash), [`streams`] (consoles and TCP to a
//! person's DUT over the link), `recorder` and `lines` (runner events to log records),
//! `spool` (records on disk), `startup`, `backoff`.
//!
//! Invariants:
//! - The token is read from its file at connect time and is never printed: not in errors,
//!   logs or `Debug` output.
//! - Every log record is in the spool before it is sent; the controller gets every record
//!   at least once (it dedups by sequence number), and a killed agent loses none.
//! - Jobs keep running while the link is down; only local state that cannot be used (an
//!   unwritable work directory) makes [`run`] fail. A refusing or absent controller is
//!   retried with backoff for ever.
//! - On shutdown every running job is stopped and torn down (DUT off) before [`run`] returns.

pub mod artifacts;
pub mod config;

mod agent;
mod backoff;
mod bridge;
mod job;
mod lines;
mod link;
mod recorder;
pub mod session;
mod spool;
mod startup;
pub mod streams;

pub use config::{AgentConfig, init_config, rigs};
pub use lines::CONTINUED;
pub use link::link_url;
pub use startup::RESTARTED;

use std::future::Future;

/// Why the agent cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration file is wrong: `file: field: reason`.
    #[error("{file}: {reason}")]
    Config { file: String, reason: String },
    /// The controller address cannot be dialled.
    #[error("controller {url:?}: {reason}")]
    Controller { url: String, reason: String },
    /// Local state the agent needs (work directory, spool) is unusable.
    #[error("{path}: {reason}")]
    LocalState { path: String, reason: String },
}

/// Runs the agent until `shutdown` resolves (then stops every job, waits for teardown and
/// closes the link) or local state turns out unusable.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let dialers = config
        .controllers
        .iter()
        .map(|c| link::Dialer::new(c, &config.trust))
        .collect::<Result<Vec<_>, _>>()?;
    let prepared = startup::prepare(&config)?;
    tracing::info!(
        agent = %config.name,
        devices = config.devices.len(),
        recovered = prepared.recovered.len(),
        work_dir = %config.work_dir.display(),
        "agent starting"
    );
    let _lock = prepared
        .lock
        .try_clone()
        .map_err(|e| AgentError::LocalState {
            path: config.work_dir.display().to_string(),
            reason: format!("agent lock: {e}"),
        })?;
    agent::Agent::new(config, dialers, prepared)
        .run(shutdown)
        .await;
    Ok(())
}
