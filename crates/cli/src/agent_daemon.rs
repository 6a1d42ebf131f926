//! `dutlab agent --config FILE`, `dutlab agent --check-config FILE`, `dutlab agent init`.

use anyhow::Context;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The controller's URL (http://host:port); repeat it for several controllers sharing
    /// one database (the agent tries them in order).
    #[arg(long, value_name = "URL", required = true)]
    controller: Vec<String>,
    /// File holding the agent's token (`dutlab token create --role agent`).
    #[arg(long, value_name = "FILE")]
    token_file: PathBuf,
    /// How many default QEMU devices to offer.
    #[arg(long, value_name = "N", default_value_t = 1)]
    qemu: usize,
    /// The agent's name, unique in the lab (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Spool and per-device work directories (default: DATA_DIR/agent).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
}

/// Prints a ready agent.yaml.
pub fn init(args: InitArgs) -> i32 {
    let name = args.name.unwrap_or_else(host_name);
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let work_dir = args
        .work_dir
        .unwrap_or_else(|| crate::serve::default_data_dir().join("agent"));
    print!(
        "{}",
        agent::init_config(
            &args.controller,
            &absolute(&args.token_file),
            args.qemu,
            &name,
            &absolute(&work_dir),
        )
    );
    0
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "agent".to_owned())
}

/// Validates a configuration and prints its rigs.
pub fn check_config(path: &Path) -> i32 {
    match agent::AgentConfig::load(path) {
        Ok(config) => {
            println!(
                "{}: agent {} dials {}, work dir {}",
                path.display(),
                config.name,
                config.controllers.join(" or "),
                config.work_dir.display()
            );
            for rig in agent::rigs(&config) {
                println!(
                    "  {}  type {}  tags [{}]  can {}",
                    rig.name,
                    rig.device_type,
                    rig.tags.join(", "),
                    rig.capabilities.join(", ")
                );
            }
            0
        }
        Err(e) => {
            eprintln!("dutlab: error: {e}");
            proto::Outcome::JobError.exit_code()
        }
    }
}

/// Runs the agent until Ctrl-C or SIGTERM.
pub fn run(path: &Path) -> i32 {
    match run_inner(path) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("dutlab: error: {e:#}");
            proto::Outcome::InfraError.exit_code()
        }
    }
}

fn run_inner(path: &Path) -> anyhow::Result<()> {
    let config = agent::AgentConfig::load(path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(agent::run(config, crate::serve::shutdown_signal()))?;
    Ok(())
}
