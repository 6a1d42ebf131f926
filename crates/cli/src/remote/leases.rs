//! `dutlab lease acquire | list | show | renew | release | shell`.
//!
//! Invariants:
//! - `acquire` prints the lease id alone on stdout (or the lease as JSON with `--json`);
//!   what happened (held, or waiting at a position) goes to stderr.
//! - `--wait` waits for the grant by long polls of the controller (answered at the commit
//!   that grants the lease, not by a poll interval). Ctrl-C while waiting withdraws the
//!   request (exit 130).
//! - `shell` holds the lease only while its child lives: it renews in the background (every
//!   third of the duration), ignores Ctrl-C itself (the child gets it), and releases when the
//!   child exits. Killed outright, it renews no more and the lease expires at its deadline.
//! - An ended lease is 410 from the controller; the message says how it ended.

use super::{block_on, connect, print_json};
use crate::exit::{self, Exit};
use crate::table::{self, Table};
use anyhow::Context;
use client::Client;
use proto::api::{AcquireLease, LeaseView};
use proto::{PersonLeaseId, PersonLeaseState};
use std::time::Duration;

const LEASE_HELP: &str = "Exit codes: 0 done, 64 usage or missing settings (DUTLAB_URL, \
DUTLAB_TOKEN or `dutlab login`), 69 controller unreachable, 70 other error (410: the lease has \
ended), 77 no token or token refused, or not the lease's holder (401/403), 130 Ctrl-C while \
waiting (the request is withdrawn).";

const SHELL_HELP: &str = "Exit codes: the shell's or command's own exit code (128 + N when a \
signal N ended it); else as `dutlab lease acquire`.";

/// Which device, and for how long.
#[derive(Debug, Clone, clap::Args)]
pub struct Want {
    /// This device, by name.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["device_type", "tag"], required_unless_present = "device_type")]
    device: Option<String>,
    /// Any device of this type ...
    #[arg(long, value_name = "TYPE")]
    device_type: Option<String>,
    /// ... with this tag (repeat for more).
    #[arg(long = "tag", value_name = "TAG", requires = "device_type")]
    tag: Vec<String>,
    /// How long the grant and each renewal hold the device (`30m`, `90s`, `2h`; default: the
    /// controller's, 30 minutes), at most the cap of your role.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// 0 to 100, as a job's priority (default 50).
    #[arg(long)]
    priority: Option<u8>,
    /// A public key file whose keys the DUT accepts for root over SSH (repeat for more;
    /// default: dutlab's own key pair, made on first use under the configuration directory).
    #[arg(long, value_name = "FILE")]
    ssh_key: Vec<std::path::PathBuf>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = jobspec::parse_duration(text)?;
    if d < Duration::from_secs(1) {
        return Err("at least 1s".into());
    }
    Ok(d)
}

#[derive(Debug, clap::Subcommand)]
pub enum LeaseCommand {
    /// Hold a device for yourself; prints the lease id.
    #[command(after_help = LEASE_HELP)]
    Acquire {
        #[command(flatten)]
        want: Want,
        /// Wait until the device is yours (else: answer at once, maybe waiting in the queue).
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// Your leases (admins: everyone's), waiting and held.
    #[command(after_help = LEASE_HELP)]
    List {
        /// Ended leases too.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// One lease.
    #[command(after_help = LEASE_HELP)]
    Show {
        id: u64,
        #[arg(long)]
        json: bool,
    },
    /// Move a held lease's deadline to now + its duration (or --duration), up to its cap.
    #[command(after_help = LEASE_HELP)]
    Renew {
        id: u64,
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        #[arg(long)]
        json: bool,
    },
    /// End a lease (yours; admins: anyone's); the device goes back to the pool.
    #[command(after_help = LEASE_HELP)]
    Release {
        id: u64,
        #[arg(long)]
        json: bool,
    },
    /// Acquire (waiting for the device), run $SHELL or the command after `--` with
    /// DUTLAB_LEASE set, renew while it runs, release when it exits.
    #[command(after_help = SHELL_HELP)]
    Shell {
        #[command(flatten)]
        want: Want,
        /// Print the lease as JSON on stdout before the command starts.
        #[arg(long)]
        json: bool,
        /// The command to run instead of $SHELL.
        #[arg(last = true)]
        command: Vec<String>,
    },
}

/// `dutlab lease ...`.
pub fn lease(command: LeaseCommand) -> i32 {
    block_on(async move {
        let client = connect()?;
        match command {
            LeaseCommand::Acquire { want, wait, json } => {
                let view = acquire(&client, &want, wait).await?;
                if json {
                    print_json(&view);
                } else {
                    println!("{}", view.id);
                }
                Ok(0)
            }
            LeaseCommand::List { all, json } => {
                let leases = client.leases(all).await.context("cannot list leases")?;
                if json {
                    print_json(&leases);
                } else {
                    print!("{}", leases_table(&leases).render());
                }
                Ok(0)
            }
            LeaseCommand::Show { id, json } => {
                let view = client
                    .lease(PersonLeaseId(id))
                    .await
                    .with_context(|| format!("cannot show lease {id}"))?;
                show(&view, json);
                Ok(0)
            }
            LeaseCommand::Renew { id, duration, json } => {
                let view = client
                    .renew_lease(PersonLeaseId(id), duration)
                    .await
                    .with_context(|| format!("cannot renew lease {id}"))?;
                show(&view, json);
                Ok(0)
            }
            LeaseCommand::Release { id, json } => {
                let view = client
                    .release_lease(PersonLeaseId(id))
                    .await
                    .with_context(|| format!("cannot release lease {id}"))?;
                show(&view, json);
                Ok(0)
            }
            LeaseCommand::Shell {
                want,
                json,
                command,
            } => shell(&client, &want, json, command).await,
        }
    })
}

fn show(view: &LeaseView, json: bool) {
    if json {
        print_json(view);
    } else {
        print!("{}", leases_table(std::slice::from_ref(view)).render());
    }
}

fn leases_table(leases: &[LeaseView]) -> Table {
    let now = table::now();
    let mut t = Table::new(&[
        "ID", "HOLDER", "STATE", "DEVICE", "WANTS", "POSITION", "EXPIRES",
    ]);
    for l in leases {
        let wants = match &l.want_device {
            Some(d) => d.clone(),
            None if l.tags.is_empty() => l.device_type.clone(),
            None => format!("{} [{}]", l.device_type, l.tags.join(",")),
        };
        let expires = match (l.state, l.expires_at, &l.end) {
            (PersonLeaseState::Held, Some(at), _) => table::when(now, at),
            (PersonLeaseState::Ended, _, Some(end)) => end.to_string(),
            _ => String::new(),
        };
        t.row(vec![
            l.id.to_string(),
            l.holder.clone(),
            l.state.to_string(),
            l.device.clone().unwrap_or_default(),
            wants,
            l.position.map(|p| p.to_string()).unwrap_or_default(),
            expires,
        ]);
    }
    t
}

fn request(want: &Want) -> anyhow::Result<AcquireLease> {
    Ok(AcquireLease {
        device: want.device.clone(),
        device_type: want.device_type.clone(),
        tags: want.tag.clone(),
        duration_s: want.duration.map(|d| d.as_secs()),
        priority: want.priority,
        ssh_keys: crate::ssh_key::lease_keys(&want.ssh_key)?,
    })
}

/// Asks for the lease; with `wait`, until it is held. Ctrl-C while waiting withdraws it.
async fn acquire(client: &Client, want: &Want, wait: bool) -> anyhow::Result<LeaseView> {
    let mut view = client
        .acquire_lease(&request(want)?)
        .await
        .context("cannot acquire a lease")?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        match view.state {
            PersonLeaseState::Held => {
                eprintln!(
                    "lease {}: {} holds {} until {}",
                    view.id,
                    view.holder,
                    view.device.as_deref().unwrap_or("?"),
                    view.expires_at.map(table::rfc3339).unwrap_or_default()
                );
                return Ok(view);
            }
            PersonLeaseState::Ended => {
                let end = view.end.as_ref().map(|e| e.to_string()).unwrap_or_default();
                return Err(Exit::new(
                    exit::SOFTWARE,
                    format!("lease {} ended while waiting: {end}", view.id),
                )
                .into());
            }
            PersonLeaseState::Waiting => {
                eprintln!(
                    "lease {}: waiting for a device, position {}",
                    view.id,
                    view.position.unwrap_or(0)
                );
                if !wait {
                    return Ok(view);
                }
            }
        }
        tokio::select! {
            next = client.wait_lease(view.id, Duration::from_secs(25)) => {
                view = next.with_context(|| format!("cannot wait for lease {}", view.id))?;
            }
            _ = &mut ctrl_c => {
                let _ = client.release_lease(view.id).await;
                return Err(Exit::new(
                    exit::INTERRUPTED,
                    format!("lease {}: interrupted while waiting; the request is withdrawn", view.id),
                )
                .into());
            }
        }
    }
}

/// `dutlab lease shell`.
async fn shell(
    client: &Client,
    want: &Want,
    json: bool,
    command: Vec<String>,
) -> anyhow::Result<i32> {
    let view = acquire(client, want, true).await?;
    if json {
        print_json(&view);
    }
    let id = view.id;
    let (program, args) = match command.split_first() {
        Some((program, args)) => (program.clone(), args.to_vec()),
        None => (
            std::env::var("SHELL").unwrap_or_else(|_| "/bin/sh".to_owned()),
            Vec::new(),
        ),
    };
    let spawned = tokio::process::Command::new(&program)
        .args(&args)
        .env("DUTLAB_LEASE", id.to_string())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            let _ = client.release_lease(id).await;
            return Err(Exit::new(exit::USAGE, format!("cannot run {program}: {e}")).into());
        }
    };
    let every = Duration::from_secs(view.duration_s.max(1)) / 3;
    let mut renew = tokio::time::interval(every.max(Duration::from_millis(300)));
    renew.tick().await;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            _ = renew.tick() => {
                if let Err(e) = client.renew_lease(id, None).await {
                    eprintln!("dutlab: warning: lease {id}: cannot renew: {e}");
                }
            }
            // The child has the terminal and gets Ctrl-C itself; this process stays.
            _ = &mut ctrl_c => ctrl_c.set(tokio::signal::ctrl_c()),
        }
    };
    let released = client.release_lease(id).await;
    match released {
        Ok(_) => eprintln!("lease {id}: released"),
        Err(e) => eprintln!("dutlab: warning: lease {id}: cannot release: {e}"),
    }
    let status = status.with_context(|| format!("waiting for {program}"))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(exit::SOFTWARE))
}
