//! The commands that talk to a controller: `login`, `token`, `user`, `job` (all but
//! `validate`), `device`, `agent list`.
//!
//! Invariants:
//! - Settings come from [`crate::settings`] (environment, then the file `dutlab login` wrote).
//! - Results go to stdout (a table for people, JSON with `--json`); progress, warnings and
//!   errors go to stderr, errors as one line `dutlab: error: ...`.
//! - Exit codes come from [`crate::exit`]; outcomes of jobs from `Outcome::exit_code`.
//! - A token is printed only by `token create`, alone on stdout, and never in an error.

pub mod admin;
mod console;
mod forward;
mod jobs;
mod leased;
mod leases;
mod ssh;
mod uploads;

pub use console::{ConsoleArgs, console};
pub use forward::{ForwardArgs, forward};
pub use jobs::{JobCommand, job};
pub use leased::{FlashArgs, PowerArgs, ScreenshotArgs, flash, power, screenshot};
pub use leases::{LeaseCommand, lease};
pub use ssh::{CopyArgs, SshArgs, copy, ssh};

use crate::exit::{self, Exit};
use crate::settings::{self, Settings, SettingsFile};
use crate::table::{self, Table};
use anyhow::Context;
use client::Client;
use proto::Role;
use proto::api::{CreateToken, UserOrigin};
use std::future::Future;
use std::io::{BufRead, IsTerminal, Read};
use std::path::PathBuf;

/// Longest token file or stdin line read by `login`.
const MAX_TOKEN_INPUT: u64 = 4096;

#[derive(Debug, clap::Args)]
#[command(after_help = exit::HELP)]
pub struct LoginArgs {
    /// The controller's URL, e.g. http://lab.example:8080.
    #[arg(long)]
    url: String,
    /// Read the token from this file (default: the first line of stdin).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// For https://: trust this CA file (saved with the settings).
    #[arg(long, value_name = "FILE", conflicts_with = "pin")]
    ca: Option<PathBuf>,
    /// For https://: trust exactly the server certificate with this fingerprint
    /// (`sha256:HEX`, as `dutlab tls init` prints it; saved with the settings).
    #[arg(long, value_name = "sha256:HEX")]
    pin: Option<String>,
}

/// A token's role, as a flag value.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RoleArg {
    Admin,
    User,
    Agent,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Admin => Role::Admin,
            RoleArg::User => Role::User,
            RoleArg::Agent => Role::Agent,
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token (admin only); prints the token alone on stdout, the only time it is shown.
    #[command(after_help = exit::HELP)]
    Create {
        /// Who or what will use it (a person, a CI system, an agent's name).
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Role agent: the one agent name the token may speak for (default: --name). A hello
        /// with another name is refused, and the agent registers only its own devices.
        #[arg(long)]
        agent: Option<String>,
        /// The user the token speaks for (default: --name). The user is made if there is
        /// none of that name; otherwise the token is one more token of that user, and sees
        /// and owns that user's jobs.
        #[arg(long)]
        user: Option<String>,
    },
    /// List tokens (admin only); never shows the secrets.
    #[command(after_help = exit::HELP)]
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id (admin only).
    #[command(after_help = exit::HELP)]
    Revoke { id: String },
}

#[derive(Debug, clap::Subcommand)]
pub enum UserCommand {
    /// List users (admin only): id, name, groups.
    #[command(after_help = exit::HELP)]
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Make a user a member of a group (admin only): they then read jobs with
    /// `visibility: {group: [GROUP]}`.
    #[command(after_help = exit::HELP)]
    AddGroup { user: String, group: String },
    /// Remove a user from a group (admin only).
    #[command(after_help = exit::HELP)]
    RemoveGroup { user: String, group: String },
}

#[derive(Debug, clap::Subcommand)]
pub enum DeviceCommand {
    /// List devices: name, type, tags, state, agent, holder (`job N` or a user's name).
    #[command(after_help = exit::HELP)]
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List device types: devices by state, what waits, the health check.
    #[command(after_help = exit::HELP)]
    Types {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a device: state (who set it, why, when), tags, history, last jobs.
    #[command(after_help = exit::HELP)]
    Show {
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Take a device out of the pool (maintenance, retired) or return it (idle) (admin).
    #[command(after_help = exit::HELP)]
    Set {
        name: String,
        #[arg(long, value_enum)]
        state: admin::AdminState,
        /// Why (shown in `device show` and the audit).
        #[arg(long)]
        reason: Option<String>,
        /// Cancel its running job or end the lease on it now (default: they finish first).
        #[arg(long)]
        now: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Queue a health check of a device (admin); prints the check's job id.
    #[command(after_help = exit::HELP)]
    Check {
        name: String,
        /// Print the job as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add or remove tags of a device (admin); kept when its agent reconnects.
    #[command(after_help = exit::HELP)]
    Tag {
        name: String,
        /// A tag to add (repeat for more).
        #[arg(long, value_name = "TAG")]
        add: Vec<String>,
        /// A tag to remove (repeat for more).
        #[arg(long, value_name = "TAG")]
        remove: Vec<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum AgentCommand {
    /// List agents: name, state, version, devices, last seen.
    #[command(after_help = exit::HELP)]
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a remote command on a fresh runtime and turns its result into an exit code.
fn block_on(command: impl Future<Output = anyhow::Result<i32>>) -> i32 {
    let result = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(command),
        Err(e) => Err(anyhow::Error::new(e).context("cannot start the async runtime")),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            exit::report(&e);
            exit::code_of(&e)
        }
    }
}

fn process_env(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

/// A client from the environment and the settings file.
fn connect() -> anyhow::Result<Client> {
    Settings::load(&process_env)?.client()
}

fn print_json<T: serde::Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("API types always serialise")
    );
}

/// `dutlab login`.
pub fn login(args: LoginArgs) -> i32 {
    block_on(async move {
        let token = read_token(&args)?;
        let ca_file = match &args.ca {
            Some(ca) => Some(
                std::path::absolute(ca)
                    .map_err(|e| Exit::new(exit::USAGE, format!("--ca {}: {e}", ca.display())))?,
            ),
            None => None,
        };
        let trust = tls::Trust::from_settings(ca_file.clone(), args.pin.as_deref())
            .map_err(|e| Exit::new(exit::USAGE, format!("--ca/--pin: {e}")))?;
        let client = Client::with_trust(&args.url, Some(token.clone()), trust)?;
        let who = client
            .whoami()
            .await
            .with_context(|| format!("cannot log in to {}", client.base_url()))?;
        let path = settings::settings_path(&process_env).ok_or_else(|| {
            Exit::new(
                exit::USAGE,
                "neither XDG_CONFIG_HOME nor HOME is set: cannot place the settings file",
            )
        })?;
        let content = SettingsFile {
            url: client.base_url().to_string(),
            token,
            ca_file,
            pin: args.pin.clone(),
        };
        settings::save_file(&path, &content)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!(
            "logged in to {} as {} ({}); settings saved in {}",
            client.base_url(),
            runner::report::printable(&who.name),
            who.role,
            path.display()
        );
        if who.role == Role::Agent {
            eprintln!("dutlab: warning: this is an agent token: it can only open the agent link");
        }
        Ok(0)
    })
}

/// The token from `--token-file` or the first line of stdin.
fn read_token(args: &LoginArgs) -> anyhow::Result<String> {
    let mut text = String::new();
    let from = match &args.token_file {
        Some(path) => {
            std::fs::File::open(path)
                .and_then(|f| f.take(MAX_TOKEN_INPUT).read_to_string(&mut text))
                .map_err(|e| {
                    Exit::new(exit::USAGE, format!("{}: cannot read: {e}", path.display()))
                })?;
            path.display().to_string()
        }
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprint!("token for {}: ", args.url.trim());
            }
            stdin
                .lock()
                .take(MAX_TOKEN_INPUT)
                .read_line(&mut text)
                .map_err(|e| {
                    Exit::new(
                        exit::USAGE,
                        format!("cannot read the token from stdin: {e}"),
                    )
                })?;
            "stdin".to_string()
        }
    };
    let token = text.lines().next().unwrap_or_default().trim().to_string();
    if token.is_empty() {
        return Err(Exit::new(exit::USAGE, format!("no token in {from}")).into());
    }
    Ok(token)
}

/// `dutlab token ...`.
pub fn token(command: TokenCommand) -> i32 {
    block_on(async move {
        let client = connect()?;
        match command {
            TokenCommand::Create {
                name,
                role,
                agent,
                user,
            } => {
                let role = Role::from(role);
                let created = client
                    .create_token(&CreateToken {
                        name: name.clone(),
                        role,
                        agent,
                        user,
                    })
                    .await
                    .context("cannot create the token")?;
                println!("{}", created.token);
                let bound = created
                    .view
                    .agent
                    .as_deref()
                    .map(|a| format!(", bound to agent {}", runner::report::printable(a)))
                    .unwrap_or_default();
                let user = match created.user {
                    UserOrigin::Created => "new user",
                    UserOrigin::Existing => "existing user",
                };
                eprintln!(
                    "dutlab: created token {} for {} ({role}{bound}) of {user} {}; it is shown only now",
                    runner::report::printable(&created.view.id),
                    runner::report::printable(&name),
                    runner::report::printable(&created.view.user)
                );
            }
            TokenCommand::List { json } => {
                let tokens = client.list_tokens().await.context("cannot list tokens")?;
                if json {
                    print_json(&tokens);
                } else {
                    let now = table::now();
                    let mut t =
                        Table::new(&["ID", "NAME", "USER", "ROLE", "AGENT", "CREATED", "REVOKED"]);
                    for tok in &tokens {
                        let agent = match (tok.role, &tok.agent) {
                            (_, Some(agent)) => agent.clone(),
                            (Role::Agent, None) => "(unbound: re-create)".to_owned(),
                            (_, None) => String::new(),
                        };
                        t.row(vec![
                            tok.id.clone(),
                            tok.name.clone(),
                            tok.user.clone(),
                            tok.role.to_string(),
                            agent,
                            table::ago(now, tok.created_at),
                            tok.revoked_at
                                .map(|at| table::ago(now, at))
                                .unwrap_or_default(),
                        ]);
                    }
                    print!("{}", t.render());
                }
            }
            TokenCommand::Revoke { id } => {
                let view = client
                    .revoke_token(&id)
                    .await
                    .with_context(|| format!("cannot revoke token {id}"))?;
                println!(
                    "revoked token {} ({})",
                    runner::report::printable(&view.id),
                    runner::report::printable(&view.name)
                );
            }
        }
        Ok(0)
    })
}

/// `dutlab user ...`.
pub fn user(command: UserCommand) -> i32 {
    block_on(async move {
        let client = connect()?;
        let user =
            match command {
                UserCommand::List { json } => {
                    let users = client.list_users().await.context("cannot list users")?;
                    if json {
                        print_json(&users);
                    } else {
                        let now = table::now();
                        let mut t = Table::new(&["ID", "NAME", "GROUPS", "CREATED"]);
                        for u in &users {
                            let groups: Vec<&str> = u.groups.iter().map(|g| g.as_str()).collect();
                            t.row(vec![
                                u.id.to_string(),
                                u.name.clone(),
                                groups.join(","),
                                table::ago(now, u.created_at),
                            ]);
                        }
                        print!("{}", t.render());
                    }
                    return Ok(0);
                }
                UserCommand::AddGroup { user, group } => client
                    .add_member(&user, &group)
                    .await
                    .with_context(|| format!("cannot add {user} to group {group}"))?,
                UserCommand::RemoveGroup { user, group } => client
                    .remove_member(&user, &group)
                    .await
                    .with_context(|| format!("cannot remove {user} from group {group}"))?,
            };
        let groups: Vec<&str> = user.groups.iter().map(|g| g.as_str()).collect();
        println!(
            "user {} is in groups: {}",
            runner::report::printable(&user.name),
            if groups.is_empty() {
                "(none)".to_owned()
            } else {
                groups.join(", ")
            }
        );
        Ok(0)
    })
}

/// `dutlab device ...`.
pub fn device(command: DeviceCommand) -> i32 {
    block_on(async move {
        match command {
            DeviceCommand::Show { name, json } => admin::show(&name, json).await,
            DeviceCommand::Set {
                name,
                state,
                reason,
                now,
                json,
            } => admin::set(&name, state, reason, now, json).await,
            DeviceCommand::Tag {
                name,
                add,
                remove,
                json,
            } => admin::tag(&name, add, remove, json).await,
            DeviceCommand::Check { name, json } => admin::check(&name, json).await,
            DeviceCommand::List { json } => list_devices(json).await,
            DeviceCommand::Types { json } => list_device_types(json).await,
        }
    })
}

/// `dutlab device list`.
async fn list_devices(json: bool) -> anyhow::Result<i32> {
    let client = connect()?;
    let devices = client.devices().await.context("cannot list devices")?;
    if json {
        print_json(&devices);
    } else {
        let mut t = Table::new(&["NAME", "TYPE", "TAGS", "STATE", "AGENT", "HOLDER", "REASON"]);
        for d in &devices {
            t.row(vec![
                d.name.clone(),
                d.device_type.clone(),
                d.tags.join(","),
                d.state.to_string(),
                d.agent.clone(),
                d.holder.clone().unwrap_or_default(),
                d.set.as_ref().map(|s| s.reason.clone()).unwrap_or_default(),
            ]);
        }
        print!("{}", t.render());
    }
    Ok(0)
}

async fn list_device_types(json: bool) -> anyhow::Result<i32> {
    let client = connect()?;
    let types = client
        .device_types()
        .await
        .context("cannot list device types")?;
    if json {
        print_json(&types);
        return Ok(0);
    }
    let mut t = Table::new(&["TYPE", "DEVICES", "STATES", "WAITING", "HEALTH CHECK"]);
    for ty in &types {
        let states: Vec<String> = ty
            .states
            .iter()
            .map(|c| format!("{} {}", c.count, c.state))
            .collect();
        let check = ty.health_check.as_ref().map_or_else(String::new, |h| {
            let mut text = format!("{} ({})", h.file_name, h.job_name);
            if let Some(n) = h.every_jobs {
                text.push_str(&format!(", every {n} jobs"));
            }
            if let Some(s) = h.every_s {
                text.push_str(&format!(", every {s} s"));
            }
            text
        });
        t.row(vec![
            ty.name.clone(),
            ty.devices.to_string(),
            states.join(", "),
            ty.waiting.to_string(),
            check,
        ]);
    }
    print!("{}", t.render());
    Ok(0)
}

/// `dutlab agent list`.
pub fn agent(command: AgentCommand) -> i32 {
    block_on(async move {
        let client = connect()?;
        match command {
            AgentCommand::List { json } => {
                let agents = client.agents().await.context("cannot list agents")?;
                if json {
                    print_json(&agents);
                } else {
                    let now = table::now();
                    let mut t = Table::new(&["NAME", "STATE", "VERSION", "DEVICES", "LAST SEEN"]);
                    for a in &agents {
                        t.row(vec![
                            a.name.clone(),
                            match a.state {
                                proto::api::AgentState::Connected => "connected".into(),
                                proto::api::AgentState::Silent => "silent".into(),
                                proto::api::AgentState::Disconnected => "disconnected".into(),
                            },
                            a.version.clone(),
                            a.device_states
                                .iter()
                                .map(|d| format!("{}({})", d.name, d.state))
                                .collect::<Vec<_>>()
                                .join(","),
                            table::ago(now, a.last_seen),
                        ]);
                    }
                    print!("{}", t.render());
                }
            }
        }
        Ok(0)
    })
}

/// `dutlab agent` with no subcommand and no daemon flags.
pub fn agent_without_command() -> i32 {
    eprintln!(
        "dutlab: error: `dutlab agent` needs --config FILE, --check-config FILE, or a subcommand (init, list)"
    );
    exit::USAGE
}
