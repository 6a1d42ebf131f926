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
    /// Data directory: database (SQLite), logs, the first admin token.
    /// Default: $XDG_DATA_HOME/dutlab or ~/.local/share/dutlab.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Database URL (`postgres://...`); default: SQLite in the data directory.
    #[arg(long, value_name = "URL", env = "DUTLAB_DATABASE")]
    database: Option<String>,
    /// How long a lease lives without a heartbeat from its agent.
    #[arg(long, value_name = "DURATION", value_parser = duration, default_value = "60s")]
    lease_ttl: Duration,
    /// How long a job waits for its agent to reconnect after the link closed.
    #[arg(long, value_name = "DURATION", value_parser = duration, default_value = "10s")]
    disconnect_grace: Duration,
    /// How often agents send heartbeats.
    #[arg(long, value_name = "DURATION", value_parser = duration, default_value = "5s")]
    heartbeat: Duration,
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

fn serve_inner(args: ServeArgs) -> anyhow::Result<()> {
    raise_open_file_limit();
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    let mut config = controller::Config::new(args.listen, data_dir);
    config.database = args.database;
    config.lease_ttl = args.lease_ttl;
    config.disconnect_grace = args.disconnect_grace;
    config.heartbeat = args.heartbeat;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        controller::serve(config, shutdown_signal()).await?;
        Ok(())
    })
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
