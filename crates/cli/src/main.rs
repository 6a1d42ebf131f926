//! `dutlab`: the command-line front end.
//!
//! Invariants:
//! - Exit codes: 0 passed, 1 failed, 2 timed out, 3 canceled, 4 job error (bad input),
//!   5 infra error, 64 usage. Derived from [`proto::Outcome::exit_code`] only.
//! - DUT console output is shown live with escape sequences neutralised; reports go to stdout
//!   (table, or JSON with `--json`), everything for people about progress goes to stderr.
//! - Ctrl-C cancels a run; the runner's teardown still powers the DUT off.

mod agent_daemon;
mod exit;
mod group_run;
mod logview;
mod remote;
mod serve;
mod settings;
mod ssh_key;
mod table;
mod tls_init;

use anyhow::Context;
use clap::{Parser, Subcommand};
use driver::ansi::AnsiStripper;
use proto::{EXIT_USAGE, JobReport, Outcome};
use qemu::image::{GuestImage, ImageSpec};
use runner::device::Device;
use runner::{Cancel, JobContext, RunEvent};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Largest job file read.
const MAX_JOB_FILE: u64 = 1 << 20;

#[derive(Debug, Parser)]
#[command(
    name = "dutlab",
    version,
    about = "Run tests on devices under test",
    after_help = "Exit codes: 0 passed, 1 failed, 2 timed out, 3 canceled, 4 job error, 5 infra error, 64 usage."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a job locally, with no server, on a local device (default: a QEMU DUT).
    Run(RunArgs),
    /// Build or locate the default guest image.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Start the controller (REST API, agent links, scheduler, database).
    Serve(Box<serve::ServeArgs>),
    /// TLS certificates for the controller.
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
    /// Work with job files, and with jobs on a controller.
    Job {
        #[command(subcommand)]
        command: JobCommand,
    },
    /// Check a token with the controller and save URL and token for the other commands.
    Login(remote::LoginArgs),
    /// Create, list and revoke tokens (admin).
    Token {
        #[command(subcommand)]
        command: remote::TokenCommand,
    },
    /// List users and manage their groups (admin).
    User {
        #[command(subcommand)]
        command: remote::UserCommand,
    },
    /// Hold a device for yourself: acquire, list, show, renew, release, shell.
    Lease {
        #[command(subcommand)]
        command: remote::LeaseCommand,
    },
    /// Power the device of a lease on or off (`--lease`, default $DUTLAB_LEASE).
    Power(remote::PowerArgs),
    /// Write an image to the device of a lease (uploaded as an artifact); its next power-on
    /// boots it.
    Flash(remote::FlashArgs),
    /// Save a PNG of the display of a lease's device (devices with video).
    Screenshot(remote::ScreenshotArgs),
    /// Forward a local port (or stdin/stdout) to a TCP port of a lease's DUT.
    Forward(remote::ForwardArgs),
    /// Log in to a lease's DUT as root with OpenSSH (or run a command there).
    Ssh(remote::SshArgs),
    /// Copy a file to or from a lease's DUT (one side dut:PATH).
    Copy(remote::CopyArgs),
    /// Attach to the console of a lease's device: history, then live (read-only unless
    /// --write; Enter ~. leaves).
    Console(remote::ConsoleArgs),
    /// Devices of the lab: list, show; set state and tags (admin).
    Device {
        #[command(subcommand)]
        command: remote::DeviceCommand,
    },
    /// The audit of admin actions (admin).
    Audit {
        #[command(subcommand)]
        command: remote::admin::AuditCommand,
    },
    /// Run an agent (`--config`), check its configuration, write one (`init`), or list agents.
    #[command(args_conflicts_with_subcommands = true)]
    Agent {
        /// Run the agent with this configuration until Ctrl-C or SIGTERM.
        #[arg(long, value_name = "FILE", conflicts_with = "check_config")]
        config: Option<PathBuf>,
        /// Validate a configuration and print its rigs.
        #[arg(long, value_name = "FILE")]
        check_config: Option<PathBuf>,
        #[command(subcommand)]
        command: Option<AgentCommand>,
    },
}

#[derive(Debug, Subcommand)]
enum TlsCommand {
    /// Make a small CA and a server certificate signed by it (for labs without a PKI).
    Init(tls_init::InitArgs),
}

#[derive(Debug, Subcommand)]
enum AgentCommand {
    #[command(flatten)]
    Remote(remote::AgentCommand),
    /// Print a ready agent.yaml with N default QEMU devices.
    Init(agent_daemon::InitArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The job file (LAVA job YAML).
    job: PathBuf,
    /// A device file; without it, the built-in QEMU x86_64 DUT under TCG.
    #[arg(long)]
    device: Option<PathBuf>,
    /// Write JUnit XML results here.
    #[arg(long, value_name = "PATH")]
    junit: Option<PathBuf>,
    /// Write the JSON report here.
    #[arg(long, value_name = "PATH")]
    results_json: Option<PathBuf>,
    /// Print the JSON report on stdout (console output goes to stderr).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Build the guest image (kernel, busybox initramfs, ext4 rootfs).
    Build {
        /// Output directory (default: `dutlab image path`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the default guest image directory.
    Path,
}

#[derive(Debug, Subcommand)]
enum JobCommand {
    /// Check a job file without running it.
    Validate {
        job: PathBuf,
        /// Print the normalised job as JSON.
        #[arg(long)]
        json: bool,
    },
    #[command(flatten)]
    Remote(remote::JobCommand),
}

fn main() {
    // One crypto provider for the whole process (aws-lc-rs): TLS of the controller, agent
    // links, clients and image downloads.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    // Daemons say what they do; one-shot commands only warn.
    let default_filter = match cli.command {
        Command::Serve(_)
        | Command::Agent {
            config: Some(_), ..
        } => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DUTLAB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let code = match cli.command {
        Command::Run(args) => run(args),
        Command::Serve(args) => serve::serve(*args),
        Command::Tls {
            command: TlsCommand::Init(args),
        } => tls_init::init(args),
        Command::Image { command } => image(command),
        Command::Job { command } => job(command),
        Command::Login(args) => remote::login(args),
        Command::Token { command } => remote::token(command),
        Command::User { command } => remote::user(command),
        Command::Device { command } => remote::device(command),
        Command::Audit { command } => remote::admin::audit(command),
        Command::Lease { command } => remote::lease(command),
        Command::Power(args) => remote::power(args),
        Command::Flash(args) => remote::flash(args),
        Command::Screenshot(args) => remote::screenshot(args),
        Command::Forward(args) => remote::forward(args),
        Command::Ssh(args) => remote::ssh(args),
        Command::Copy(args) => remote::copy(args),
        Command::Console(args) => remote::console(args),
        Command::Agent {
            command: Some(AgentCommand::Remote(command)),
            ..
        } => remote::agent(command),
        Command::Agent {
            command: Some(AgentCommand::Init(args)),
            ..
        } => agent_daemon::init(args),
        Command::Agent {
            config: Some(config),
            ..
        } => agent_daemon::run(&config),
        Command::Agent {
            check_config: Some(config),
            ..
        } => agent_daemon::check_config(&config),
        Command::Agent { .. } => remote::agent_without_command(),
    };
    std::process::exit(code);
}

fn report_error(e: &anyhow::Error) {
    eprintln!("dutlab: error: {e:#}");
}

fn image(command: ImageCommand) -> i32 {
    match command {
        ImageCommand::Path => {
            println!("{}", qemu::image::default_image_dir().display());
            0
        }
        ImageCommand::Build { out } => {
            let out = out.unwrap_or_else(qemu::image::default_image_dir);
            match build_image(&out) {
                Ok(image) => {
                    println!("{}", image.dir.display());
                    0
                }
                Err(e) => {
                    report_error(&e);
                    Outcome::InfraError.exit_code()
                }
            }
        }
    }
}

fn build_image(out: &Path) -> anyhow::Result<GuestImage> {
    eprintln!("dutlab: building the guest image in {}", out.display());
    let started = std::time::Instant::now();
    let image = qemu::image::build(&ImageSpec::new(out), &mut |step| {
        eprintln!("  {step}");
    })
    .context("cannot build the guest image")?;
    eprintln!(
        "dutlab: guest image ready in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(image)
}

fn read_job(path: &Path) -> Result<(String, jobspec::Job), String> {
    let name = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| format!("{name}: cannot read: {e}"))?;
    if meta.len() > MAX_JOB_FILE {
        return Err(format!(
            "{name}: file is {} bytes, more than the {MAX_JOB_FILE} a job file may have",
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: cannot read: {e}"))?;
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or(name);
    let job = jobspec::parse_job(&file, &text).map_err(|e| e.to_string())?;
    for w in &job.warnings {
        eprintln!("dutlab: warning: {file}: {w}");
    }
    Ok((file, job))
}

/// [`read_job`], then refuses a job no device type dutlab knows can run (the same check for
/// `job validate` and `run`, before anything is fetched, built or booted).
fn read_runnable_job(path: &Path) -> Result<(String, jobspec::Job), String> {
    let (file, job) = read_job(path)?;
    if let Err(e) = jobspec::check_runnable(&file, &job) {
        // Two questions, two answers: the file is valid LAVA; no device type here runs it.
        eprintln!("dutlab: {file}: valid LAVA, but not runnable here:");
        return Err(e.to_string());
    }
    Ok((file, job))
}

fn job(command: JobCommand) -> i32 {
    match command {
        JobCommand::Remote(command) => remote::job(command),
        JobCommand::Validate { job, json } => match read_runnable_job(&job) {
            Ok((file, job)) => {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "file": file,
                            "job_name": job.name,
                            "device_type": job.device_type,
                            "roles": roles_json(&job),
                            "priority": job.priority,
                            "actions": job.actions.iter().map(|a| a.kind()).collect::<Vec<_>>(),
                            "valid_lava": true,
                            "runnable": true,
                            "warnings": job.warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
                        })
                    );
                } else {
                    let target = match roles_text(&job) {
                        Some(roles) => format!("MultiNode job '{}': roles {roles}", job.name),
                        None => format!("job '{}' for device type '{}'", job.name, job.device_type),
                    };
                    println!(
                        "{file}: valid: {target}, {} action(s); valid LAVA, runnable here",
                        job.actions.len()
                    );
                }
                0
            }
            Err(e) => {
                eprintln!("dutlab: error: {e}");
                Outcome::JobError.exit_code()
            }
        },
    }
}

/// The roles of a MultiNode job for people: `client (2 x qemu), guest (1, ssh to host)`.
fn roles_text(job: &jobspec::Job) -> Option<String> {
    let m = job.protocols.multinode.as_ref()?;
    let roles: Vec<String> = m
        .roles
        .iter()
        .map(|(name, r)| match &r.secondary {
            Some(s) => format!("{name} ({}, ssh to {})", r.count, s.host_role),
            None => format!("{name} ({} x {})", r.count, r.device_type),
        })
        .collect();
    Some(roles.join(", "))
}

/// The roles of a MultiNode job for `job validate --json` (empty for a single job).
fn roles_json(job: &jobspec::Job) -> serde_json::Value {
    let Some(m) = &job.protocols.multinode else {
        return serde_json::json!([]);
    };
    m.roles
        .iter()
        .map(|(name, r)| {
            serde_json::json!({
                "role": name,
                "count": r.count,
                "device_type": r.device_type,
                "host_role": r.secondary.as_ref().map(|s| s.host_role.clone()),
            })
        })
        .collect()
}

fn run(args: RunArgs) -> i32 {
    let (_, job) = match read_runnable_job(&args.job) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("dutlab: error: {e}");
            return Outcome::JobError.exit_code();
        }
    };
    let device = match &args.device {
        None => Device::default_qemu(),
        Some(path) => match std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))
            .and_then(|text| {
                Device::parse(&path.display().to_string(), &text).map_err(|e| e.to_string())
            }) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("dutlab: error: {e}");
                return Outcome::JobError.exit_code();
            }
        },
    };
    let group = job
        .protocols
        .multinode
        .is_some()
        .then(|| group_run::members(&job));
    if let Some(members) = &group
        && members.len() > group_run::MAX_MEMBERS
    {
        eprintln!(
            "dutlab: error: {}: protocols.lava-multinode.roles: {} role instances, more than the {} a group may have",
            args.job.display(),
            members.len(),
            group_run::MAX_MEMBERS
        );
        return Outcome::JobError.exit_code();
    }
    let needs_image = match &group {
        None => !job.deploys_images(),
        Some(members) => members
            .iter()
            .any(|m| !m.secondary && !m.job.deploys_images()),
    };
    let default_image = if needs_image {
        match default_image(&device) {
            Ok(image) => Some(image),
            Err(code) => return code,
        }
    } else {
        None
    };
    let job_dir = args
        .job
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                p.to_path_buf()
            }
        })
        .unwrap_or_else(|| PathBuf::from("."));
    let ctx = JobContext {
        job_dir,
        default_image,
        work_root: None,
        policy: runner::policy::HostPolicy::local(),
        secondary: None,
        authorized_keys: Vec::new(),
        publish_ssh: None,
        multinode: None,
        group_net: None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dutlab: error: cannot start the runtime: {e}");
            return Outcome::InfraError.exit_code();
        }
    };
    match group {
        None => {
            let report = runtime.block_on(run_local(&job, &ctx, &device, args.json));
            finish(&report, &args)
        }
        Some(members) => {
            let keys = if group_run::needs_keys(&members) {
                match runner::ssh::generate_key_pair(&std::env::temp_dir()) {
                    Ok(keys) => Some(keys),
                    Err(e) => {
                        eprintln!("dutlab: error: the group's ssh key: {e}");
                        return Outcome::InfraError.exit_code();
                    }
                }
            } else {
                None
            };
            let mut salt = [0u8; 16];
            if let Err(e) = getrandom::fill(&mut salt) {
                eprintln!("dutlab: error: no randomness for the group network: {e}");
                return Outcome::InfraError.exit_code();
            }
            let setup = group_run::GroupSetup {
                base: ctx,
                device,
                keys,
                segment: runner::multinode::segment_of(&salt, 0),
            };
            let report = runtime.block_on(run_local_group(&job, members, setup, args.json));
            finish_group(&report, &args)
        }
    }
}

/// The device's default guest image, built first when it is the default one and missing;
/// an exit code when there is none.
fn default_image(device: &Device) -> Result<GuestImage, i32> {
    let dir = device
        .image_dir
        .clone()
        .unwrap_or_else(qemu::image::default_image_dir);
    match GuestImage::open(&dir) {
        Ok(image) => Ok(image),
        Err(_) if device.image_dir.is_none() => build_image(&dir).map_err(|e| {
            report_error(&e);
            Outcome::InfraError.exit_code()
        }),
        Err(e) => {
            eprintln!("dutlab: error: device {}: image_dir: {e}", device.name);
            Err(Outcome::JobError.exit_code())
        }
    }
}

/// Cancels on the first Ctrl-C; the runners still power every DUT off.
fn cancel_on_ctrl_c(cancel: &Cancel, what: &'static str) {
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\ndutlab: canceling (Ctrl-C); powering {what} off");
            on_signal.cancel();
        }
    });
}

async fn run_local_group(
    job: &jobspec::Job,
    members: Vec<group_run::MemberJob>,
    setup: group_run::GroupSetup,
    json: bool,
) -> group_run::GroupReport {
    eprintln!(
        "dutlab: running group '{}': {} member(s) on copies of {} ({}, {} MiB each)",
        job.name,
        members.len(),
        setup.device.name,
        setup.device.device_type,
        setup.device.qemu.memory_mib
    );
    let prefixes: Vec<String> = members.iter().map(group_run::prefix).collect();
    for (m, p) in members.iter().zip(&prefixes) {
        let place = if m.secondary {
            "a secondary connection".to_owned()
        } else {
            format!("device {}-{}", setup.device.name, m.name)
        };
        eprintln!("dutlab: {p}role {}, {place}", m.role);
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<group_run::MemberEvent>();
    let printer = tokio::spawn(async move {
        let mut lines: Vec<group_run::PrefixedLines> = prefixes
            .iter()
            .map(|p| group_run::PrefixedLines::new(p.clone()))
            .collect();
        let show = |bytes: &[u8]| {
            let _ = if json {
                std::io::stderr().write_all(bytes)
            } else {
                let mut out = std::io::stdout().lock();
                out.write_all(bytes).and_then(|_| out.flush())
            };
        };
        while let Some(group_run::MemberEvent { member, event }) = rx.recv().await {
            let Some(member_lines) = lines.get_mut(member) else {
                continue;
            };
            match event {
                RunEvent::Console(bytes) => show(&member_lines.feed(&bytes)),
                RunEvent::ActionStarted { index, name } => {
                    eprintln!("\ndutlab: {}action {index}: {name}", member_lines.prefix());
                }
                RunEvent::Note(text) => eprintln!("\ndutlab: {}{text}", member_lines.prefix()),
                RunEvent::Input(_) | RunEvent::Case(_) => {}
            }
        }
        for member_lines in &mut lines {
            show(&member_lines.finish());
        }
    });
    let cancel = Cancel::default();
    cancel_on_ctrl_c(&cancel, "every DUT");
    let report = group_run::run_group(job, members, setup, tx, cancel).await;
    let _ = printer.await;
    report
}

async fn run_local(job: &jobspec::Job, ctx: &JobContext, device: &Device, json: bool) -> JobReport {
    eprintln!(
        "dutlab: running job '{}' on {} ({}, {} MiB)",
        job.name, device.name, device.device_type, device.qemu.memory_mib
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let printer = tokio::spawn(async move {
        let mut stripper = AnsiStripper::new();
        let mut clean = Vec::new();
        while let Some(event) = rx.recv().await {
            match event {
                RunEvent::Console(bytes) => {
                    clean.clear();
                    stripper.feed(&bytes, &mut clean);
                    let _ = if json {
                        std::io::stderr().write_all(&clean)
                    } else {
                        let mut out = std::io::stdout().lock();
                        out.write_all(&clean).and_then(|_| out.flush())
                    };
                }
                RunEvent::ActionStarted { index, name } => {
                    eprintln!("\ndutlab: action {index}: {name}");
                }
                RunEvent::Note(text) => eprintln!("\ndutlab: {text}"),
                RunEvent::Input(_) | RunEvent::Case(_) => {}
            }
        }
    });
    let cancel = Cancel::default();
    cancel_on_ctrl_c(&cancel, "the DUT");
    let report = runner::run_job(job, ctx, device, tx, cancel).await;
    let _ = printer.await;
    report
}

fn finish(report: &JobReport, args: &RunArgs) -> i32 {
    let json = runner::report::json(report);
    let table = runner::report::table(report);
    write_results(report, &json, &table, args)
}

/// [`finish`] of a group: JUnit of every member's cases (suites `<N>.<role>/<suite>`), the
/// group's JSON report (each member's report under `members`), the outcome of the worst.
fn finish_group(report: &group_run::GroupReport, args: &RunArgs) -> i32 {
    let json = serde_json::to_string_pretty(report).expect("a report always serialises");
    let table = group_run::table(report);
    write_results(&group_run::merged(report), &json, &table, args)
}

/// Writes `--junit` (from `report`) and `--results-json` (`json`), prints `json` or `table`;
/// the exit code of the report's outcome, or of an infra error when a file cannot be written.
fn write_results(report: &JobReport, json: &str, table: &str, args: &RunArgs) -> i32 {
    let mut code = report.outcome.exit_code();
    if let Some(path) = &args.junit {
        let written = runner::report::junit(report)
            .map_err(anyhow::Error::from)
            .and_then(|xml| std::fs::write(path, xml).map_err(anyhow::Error::from))
            .with_context(|| format!("cannot write JUnit XML to {}", path.display()));
        if let Err(e) = written {
            report_error(&e);
            code = code.max(Outcome::InfraError.exit_code());
        }
    }
    if let Some(path) = &args.results_json
        && let Err(e) = std::fs::write(path, json)
            .with_context(|| format!("cannot write results to {}", path.display()))
    {
        report_error(&e);
        code = code.max(Outcome::InfraError.exit_code());
    }
    if args.json {
        println!("{json}");
    } else {
        println!("\n{table}");
    }
    code
}
