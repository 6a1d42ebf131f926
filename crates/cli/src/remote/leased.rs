//! `dutlab power | flash | screenshot`: driving the device of a lease through the controller.
//!
//! Invariants:
//! - The lease is `--lease ID`, else `$DUTLAB_LEASE` (what `dutlab lease shell` sets); without
//!   either the command is a usage error.
//! - Every command waits for the device's answer (the controller bounds it and answers 504
//!   when the agent is silent); 403 (not your lease) exits 77, 410 (ended) 70.
//! - `flash` uploads the image as an artifact first (skipped when the lab has it for you),
//!   with a progress bar on a terminal, then asks the agent to write it, with a second bar
//!   of the agent's progress.
//! - `screenshot` writes the PNG to a new file only after checking its signature.

use super::{block_on, connect, print_json};
use crate::exit::{self, Exit};
use anyhow::Context;
use proto::PersonLeaseId;
use proto::session::PowerAction;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

const HELP: &str = "Exit codes: 0 done, 64 usage or no lease (--lease or DUTLAB_LEASE), 69 \
controller unreachable, 70 other error (410: the lease has ended; 502: the device could not do \
it; 504: its agent did not answer), 77 not the lease's holder (403).";

/// Which lease.
#[derive(Debug, Clone, clap::Args)]
pub struct LeaseArg {
    /// The lease (default: $DUTLAB_LEASE).
    #[arg(long, value_name = "ID")]
    lease: Option<u64>,
}

impl LeaseArg {
    pub(super) fn id(&self) -> anyhow::Result<PersonLeaseId> {
        if let Some(id) = self.lease {
            return Ok(PersonLeaseId(id));
        }
        let text = std::env::var("DUTLAB_LEASE").map_err(|_| {
            Exit::new(
                exit::USAGE,
                "no lease: give --lease ID or set DUTLAB_LEASE (`dutlab lease shell` sets it)",
            )
        })?;
        text.trim().parse().map(PersonLeaseId).map_err(|_| {
            Exit::new(
                exit::USAGE,
                format!("DUTLAB_LEASE: {text:?} is not a lease id"),
            )
            .into()
        })
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PowerWord {
    On,
    Off,
    Cycle,
    Status,
}

#[derive(Debug, clap::Args)]
#[command(after_help = HELP)]
pub struct PowerArgs {
    action: PowerWord,
    #[command(flatten)]
    lease: LeaseArg,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
#[command(after_help = HELP)]
pub struct FlashArgs {
    /// The image file (QEMU: raw or qcow2 disk).
    image: PathBuf,
    #[command(flatten)]
    lease: LeaseArg,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
#[command(after_help = HELP)]
pub struct ScreenshotArgs {
    /// Where to write the PNG (a new file).
    file: PathBuf,
    #[command(flatten)]
    lease: LeaseArg,
}

/// How long these commands wait for each part of an answer (the controller's bounds are
/// shorter and answer 504 first).
const ANSWER_WAIT: Duration = Duration::from_secs(40 * 60);

/// `dutlab power`.
pub fn power(args: PowerArgs) -> i32 {
    block_on(async move {
        let id = args.lease.id()?;
        let client = connect()?.with_read_timeout(ANSWER_WAIT)?;
        let action = match args.action {
            PowerWord::On => PowerAction::On,
            PowerWord::Off => PowerAction::Off,
            PowerWord::Cycle => PowerAction::Cycle,
            PowerWord::Status => PowerAction::Status,
        };
        let view = match action {
            PowerAction::Status => client.power_status(id).await,
            other => client.power(id, other).await,
        }
        .with_context(|| format!("lease {id}: power {action}"))?;
        if matches!(action, PowerAction::On | PowerAction::Cycle) {
            // A boot makes a new host key: `dutlab ssh` learns it again.
            super::ssh::forget_host_key(&client, id);
        }
        if args.json {
            print_json(&view);
        } else {
            println!("{}", view.state);
            eprintln!("lease {id}: {} is {}", view.device, view.state);
        }
        Ok(0)
    })
}

/// `dutlab flash`.
pub fn flash(args: FlashArgs) -> i32 {
    block_on(async move {
        let id = args.lease.id()?;
        let client = connect()?.with_read_timeout(ANSWER_WAIT)?;
        let image = &args.image;
        let size = std::fs::metadata(image)
            .with_context(|| format!("cannot read {}", image.display()))?
            .len();
        eprintln!("dutlab: hashing {} ({size} bytes)", image.display());
        let path = image.clone();
        let sha256 = tokio::task::spawn_blocking(move || client::sha256_file(&path))
            .await
            .context("hashing stopped")?
            .with_context(|| format!("cannot read {}", image.display()))?;
        if client.artifact_size(&sha256).await?.is_some() {
            eprintln!("dutlab: the lab has sha256:{sha256} already");
        } else {
            let bar = Bar::new("upload", size);
            client
                .upload_artifact_with_progress(&sha256, image, move |done| bar.show(done))
                .await
                .with_context(|| format!("cannot upload {}", image.display()))?;
            eprintln!();
        }
        eprintln!("dutlab: lease {id}: the agent fetches and writes the image");
        let bar = Bar::new("write", size);
        let view = client
            .flash_with_progress(id, &sha256, |done, _| bar.show(done))
            .await
            .with_context(|| format!("lease {id}: flash"))?;
        bar.show(size);
        eprintln!();
        if args.json {
            print_json(&view);
        } else {
            eprintln!(
                "lease {id}: {} has sha256:{} ({} bytes) as its storage; power it on to boot it",
                view.device, view.sha256, view.bytes
            );
        }
        Ok(0)
    })
}

/// `dutlab screenshot`.
pub fn screenshot(args: ScreenshotArgs) -> i32 {
    block_on(async move {
        let id = args.lease.id()?;
        let client = connect()?;
        let png = client
            .screenshot(id)
            .await
            .with_context(|| format!("lease {id}: screenshot"))?;
        if !png.starts_with(b"\x89PNG\r\n\x1a\n") {
            return Err(Exit::new(exit::SOFTWARE, "the controller's answer is not a PNG").into());
        }
        let mut file = std::fs::File::options()
            .write(true)
            .create_new(true)
            .open(&args.file)
            .with_context(|| format!("cannot create {}", args.file.display()))?;
        file.write_all(&png)
            .with_context(|| format!("cannot write {}", args.file.display()))?;
        eprintln!(
            "lease {id}: {} bytes of PNG in {}",
            png.len(),
            args.file.display()
        );
        Ok(0)
    })
}

/// A progress bar on stderr when it is a terminal (else a line per 25%).
struct Bar {
    what: &'static str,
    total: u64,
    terminal: bool,
    shown: std::sync::atomic::AtomicU64,
}

impl Bar {
    fn new(what: &'static str, total: u64) -> Bar {
        Bar {
            what,
            total: total.max(1),
            terminal: std::io::stderr().is_terminal(),
            shown: std::sync::atomic::AtomicU64::new(u64::MAX),
        }
    }

    fn show(&self, done: u64) {
        use std::sync::atomic::Ordering;
        let percent = done.min(self.total) * 100 / self.total;
        let step = if self.terminal {
            percent
        } else {
            percent / 25 * 25
        };
        if self.shown.swap(step, Ordering::Relaxed) == step {
            return;
        }
        let filled = usize::try_from(percent / 4).unwrap_or(25);
        let bar = format!("{}{}", "#".repeat(filled), ".".repeat(25 - filled.min(25)));
        let mib = |b: u64| b as f64 / f64::from(1 << 20);
        let line = format!(
            "dutlab: {} [{bar}] {percent:3}% {:.1}/{:.1} MiB",
            self.what,
            mib(done),
            mib(self.total)
        );
        if self.terminal {
            eprint!("\r{line}");
        } else {
            eprintln!("{line}");
        }
    }
}
