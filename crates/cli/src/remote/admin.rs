//! `dutlab device show | set | tag` and `dutlab audit list`: device administration and the
//! audit of admin actions.
//!
//! Invariants:
//! - `set` and `tag` print the device's details after the change (as `show` does), or JSON
//!   with `--json`; the controller decides who may (admins), a user gets exit 77.
//! - `set` accepts `maintenance`, `retired` and `idle` only; `bad` is the lab's.

use super::{block_on, connect, print_json};
use crate::exit;
use crate::table::{self, Table};
use anyhow::Context;
use proto::DeviceState;
use proto::admin::{DeviceDetail, EditDeviceTags, SetDeviceState};

/// States an admin sets.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum AdminState {
    /// Out of the pool for work on it.
    Maintenance,
    /// Out of the pool for good.
    Retired,
    /// Back in the pool.
    Idle,
}

impl AdminState {
    fn state(self) -> DeviceState {
        match self {
            AdminState::Maintenance => DeviceState::Maintenance,
            AdminState::Retired => DeviceState::Retired,
            AdminState::Idle => DeviceState::Idle,
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// List admin actions, newest first: when, who, from where, action, target, detail.
    #[command(after_help = exit::HELP)]
    List {
        /// How many (at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: u64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `dutlab device show NAME`.
pub async fn show(name: &str, json: bool) -> anyhow::Result<i32> {
    let client = connect()?;
    let detail = client
        .device(name)
        .await
        .with_context(|| format!("cannot show device {name}"))?;
    print_detail(&detail, json);
    Ok(0)
}

/// `dutlab device set NAME --state S [--reason TEXT] [--now]`.
pub async fn set(
    name: &str,
    state: AdminState,
    reason: Option<String>,
    now: bool,
    json: bool,
) -> anyhow::Result<i32> {
    let client = connect()?;
    let request = SetDeviceState {
        state: state.state(),
        reason: reason.unwrap_or_default(),
        now,
    };
    let detail = client
        .set_device_state(name, &request)
        .await
        .with_context(|| format!("cannot set device {name} {}", request.state))?;
    if detail.device.state != request.state && request.state != DeviceState::Idle {
        eprintln!(
            "device {name} is {}: it becomes {} when that ends",
            detail.device.state, request.state
        );
    }
    print_detail(&detail, json);
    Ok(0)
}

/// `dutlab device check NAME`: prints the check's job id (stderr: what it is).
pub async fn check(name: &str, json: bool) -> anyhow::Result<i32> {
    let client = connect()?;
    let job = client
        .check_device(name)
        .await
        .with_context(|| format!("cannot check device {name}"))?;
    if json {
        print_json(&job);
    } else {
        eprintln!("health check of {name}: job {} ({})", job.id, job.state);
        println!("{}", job.id);
    }
    Ok(0)
}

/// `dutlab device tag NAME --add X --remove Y`.
pub async fn tag(
    name: &str,
    add: Vec<String>,
    remove: Vec<String>,
    json: bool,
) -> anyhow::Result<i32> {
    let client = connect()?;
    let detail = client
        .edit_device_tags(name, &EditDeviceTags { add, remove })
        .await
        .with_context(|| format!("cannot edit the tags of device {name}"))?;
    print_detail(&detail, json);
    Ok(0)
}

fn print_detail(d: &DeviceDetail, json: bool) {
    if json {
        print_json(d);
        return;
    }
    let now = table::now();
    let v = &d.device;
    println!("device:      {}", v.name);
    println!("type:        {}", v.device_type);
    println!("agent:       {}", v.agent);
    println!("state:       {}", v.state);
    if let Some(set) = &v.set {
        let pending = if v.state == set.state {
            String::new()
        } else {
            format!(" (once its lease ends: {})", set.state)
        };
        println!(
            "set:         {} by {} {}{pending}: {}{}",
            set.state,
            set.by,
            table::when(now, set.at),
            set.reason,
            set.job.map(|j| format!(" (job {j})")).unwrap_or_default()
        );
    }
    if let Some(holder) = &v.holder {
        println!("holder:      {holder}");
    }
    println!("tags:        {}", v.tags.join(","));
    println!("agent tags:  {}", d.agent_tags.join(","));
    if !d.tags_added.is_empty() || !d.tags_removed.is_empty() {
        println!(
            "tag edits:   {}",
            d.tags_added
                .iter()
                .map(|t| format!("+{t}"))
                .chain(d.tags_removed.iter().map(|t| format!("-{t}")))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    println!("infra errors in a row: {}", d.infra_errors_in_a_row);
    println!();
    println!("history:");
    let mut t = Table::new(&["WHEN", "STATE", "BY", "JOB", "REASON"]);
    for n in d.history.iter().rev() {
        t.row(vec![
            table::when(now, n.at),
            n.state.to_string(),
            n.by.clone(),
            n.job.map(|j| j.to_string()).unwrap_or_default(),
            n.reason.clone(),
        ]);
    }
    print!("{}", t.render());
    println!();
    println!("last jobs:");
    let mut t = Table::new(&["JOB", "STATE", "OUTCOME", "FINISHED", "REASON"]);
    for j in &d.jobs {
        t.row(vec![
            j.id.to_string(),
            j.state.to_string(),
            j.outcome.map(|o| o.to_string()).unwrap_or_default(),
            j.finished_at
                .map(|f| table::when(now, f))
                .unwrap_or_default(),
            j.reason.clone(),
        ]);
    }
    print!("{}", t.render());
}

/// `dutlab audit list`.
pub fn audit(command: AuditCommand) -> i32 {
    block_on(async move {
        let client = connect()?;
        match command {
            AuditCommand::List { limit, json } => {
                let entries = client.audit(limit).await.context("cannot list the audit")?;
                if json {
                    print_json(&entries);
                } else {
                    let now = table::now();
                    let mut t =
                        Table::new(&["SEQ", "WHEN", "WHO", "FROM", "ACTION", "TARGET", "DETAIL"]);
                    for e in &entries {
                        t.row(vec![
                            e.seq.to_string(),
                            table::when(now, e.at),
                            e.actor.clone(),
                            e.remote.clone(),
                            e.action.to_string(),
                            e.target.clone(),
                            e.detail.clone(),
                        ]);
                    }
                    print!("{}", t.render());
                }
            }
        }
        Ok(0)
    })
}
