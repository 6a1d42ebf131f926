//! User commands: host commands the operator defines per device and a job runs by name
//! (LAVA's `command:` action and `user_commands`).
//!
//! ```yaml
//! user_commands:            # in the device file / the agent's device entry
//!   relay-on:
//!     do: usbrelay RELAY_1=1          # one command line, or a list run in order
//!     undo: usbrelay RELAY_1=0        # optional: run at teardown, even after a failure
//! ```
//!
//! Invariants:
//! - The command text comes only from the device configuration, which the operator owns; a
//!   job names a command and can pass nothing to it (no arguments, no environment).
//! - A command line is split into words as a shell would split them, but no shell runs it and
//!   nothing is expanded: the first word is the program (found on the fixed `PATH` below),
//!   the rest its arguments.
//! - Each command runs in the job's work directory with a cleared environment (`PATH`,
//!   `DUTLAB_DEVICE` and `DUTLAB_JOB_WORK_DIR` only), standard input closed, bounded by the
//!   action's deadline (an `undo` by [`UNDO_TIMEOUT`]) and killed when the job ends; at most
//!   [`MAX_OUTPUT`] bytes of each output stream reach the job's log.
//! - A name the device does not define is the job's fault (job-error); a command that cannot
//!   start or exits non-zero is the lab's (infra-error), as in LAVA.

use crate::{JobEnd, RunEvent};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

/// `PATH` of a user command.
pub const COMMAND_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Bytes of each output stream kept for the job's log.
pub const MAX_OUTPUT: usize = 64 << 10;
/// How long an `undo` may run at teardown.
pub const UNDO_TIMEOUT: Duration = Duration::from_secs(60);

/// The user commands of one device, by name.
pub type UserCommands = BTreeMap<String, UserCommand>;

/// One user command of a device.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserCommand {
    /// What the `command:` action runs.
    #[serde(rename = "do")]
    pub run: CommandLines,
    /// What teardown runs once `do` has run.
    #[serde(default)]
    pub undo: Option<CommandLines>,
}

/// One command line or several, run in order.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum CommandLines {
    One(String),
    Many(Vec<String>),
}

impl CommandLines {
    fn lines(&self) -> Vec<String> {
        match self {
            CommandLines::One(line) => vec![line.clone()],
            CommandLines::Many(lines) => lines.clone(),
        }
    }
}

/// An `undo` owed at teardown.
#[derive(Debug, Clone)]
pub struct Undo {
    /// The job field of the action that ran `do` (`actions[3].command`).
    pub field: String,
    device: String,
    name: String,
    lines: Vec<String>,
}

impl Undo {
    /// Runs the undo lines, bounded by [`UNDO_TIMEOUT`].
    pub async fn run(
        &self,
        work_dir: &Path,
        events: &UnboundedSender<RunEvent>,
    ) -> Result<(), JobEnd> {
        let deadline = Instant::now() + UNDO_TIMEOUT;
        let what = format!("{}: undo of user command '{}'", self.field, self.name);
        run_lines(&self.lines, &what, &self.device, work_dir, deadline, events).await
    }
}

/// Runs the `do` of the device's command `name` for the action at `field`; returns the undo
/// owed at teardown, if the command has one.
pub async fn run_user_command(
    commands: &UserCommands,
    device: &str,
    name: &str,
    field: &str,
    work_dir: &Path,
    deadline: Instant,
    events: &UnboundedSender<RunEvent>,
) -> Result<Option<Undo>, JobEnd> {
    let Some(command) = commands.get(name) else {
        let defined = if commands.is_empty() {
            "it defines none; the operator adds them to the device's user_commands".to_owned()
        } else {
            format!(
                "it defines {}",
                commands.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        };
        return Err(JobEnd::job_error(format!(
            "{field}.name: device '{device}' has no user command '{name}' ({defined})"
        )));
    };
    let what = format!("{field}: user command '{name}'");
    run_lines(
        &command.run.lines(),
        &what,
        device,
        work_dir,
        deadline,
        events,
    )
    .await?;
    Ok(command.undo.as_ref().map(|undo| Undo {
        field: field.to_owned(),
        device: device.to_owned(),
        name: name.to_owned(),
        lines: undo.lines(),
    }))
}

async fn run_lines(
    lines: &[String],
    what: &str,
    device: &str,
    work_dir: &Path,
    deadline: Instant,
    events: &UnboundedSender<RunEvent>,
) -> Result<(), JobEnd> {
    let note = |text: String| {
        let _ = events.send(RunEvent::Note(text));
    };
    for line in lines {
        let words = shell_words::split(line)
            .map_err(|e| JobEnd::infra_error(format!("{what}: cannot split {line:?}: {e}")))?;
        let Some((program, args)) = words.split_first() else {
            return Err(JobEnd::infra_error(format!(
                "{what}: an empty command line"
            )));
        };
        note(format!("{what}: running {line}"));
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .current_dir(work_dir)
            .env_clear()
            .env("PATH", COMMAND_PATH)
            .env("DUTLAB_DEVICE", device)
            .env("DUTLAB_JOB_WORK_DIR", work_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| JobEnd::infra_error(format!("{what}: cannot start {program:?}: {e}")))?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(JobEnd::infra_error(format!("{what}: no output pipes")));
        };
        let work = async {
            let (out, err, status) =
                tokio::join!(read_bounded(stdout), read_bounded(stderr), child.wait());
            (out, err, status)
        };
        let Ok((out, err, status)) = tokio::time::timeout_at(deadline, work).await else {
            return Err(JobEnd::timed_out(format!(
                "{what}: {line:?} did not finish before the action's timeout"
            )));
        };
        for (stream, bytes) in [("stdout", out), ("stderr", err)] {
            let text = String::from_utf8_lossy(&bytes);
            for l in text.lines() {
                note(crate::report::printable(&format!("{what}: {stream}: {l}")));
            }
        }
        let status =
            status.map_err(|e| JobEnd::infra_error(format!("{what}: {program:?}: {e}")))?;
        if !status.success() {
            return Err(JobEnd::infra_error(format!(
                "{what}: {line:?} failed ({status})"
            )));
        }
    }
    Ok(())
}

/// Reads `r` to its end, keeping the first [`MAX_OUTPUT`] bytes.
async fn read_bounded(mut r: impl AsyncRead + Unpin) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = MAX_OUTPUT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn commands(yaml: &str) -> UserCommands {
        serde_saphyr::from_str(yaml).unwrap()
    }

    async fn run(
        cmds: &UserCommands,
        name: &str,
        dir: &Path,
    ) -> (Result<Option<Undo>, JobEnd>, Vec<String>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let deadline = Instant::now() + Duration::from_secs(30);
        let r = run_user_command(cmds, "q1", name, "actions[2].command", dir, deadline, &tx).await;
        drop(tx);
        let mut notes = Vec::new();
        while let Some(RunEvent::Note(n)) = rx.recv().await {
            notes.push(n);
        }
        (r, notes)
    }

    #[tokio::test]
    async fn runs_without_a_shell_in_the_work_dir_and_owes_its_undo() {
        let dir = tempfile::tempdir().unwrap();
        let cmds = commands(
            "mark:\n  do: [\"touch done\", \"sh -c 'echo $DUTLAB_DEVICE; echo $HOME'\"]\n  undo: rm done\n",
        );
        let (r, notes) = run(&cmds, "mark", dir.path()).await;
        let undo = r.unwrap().unwrap();
        assert!(dir.path().join("done").is_file());
        // The environment is cleared: the device name is set, HOME is not.
        assert!(notes.iter().any(|n| n.ends_with("stdout: q1")), "{notes:?}");
        assert!(notes.iter().any(|n| n.ends_with("stdout: ")), "{notes:?}");
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        undo.run(dir.path(), &tx).await.unwrap();
        assert!(!dir.path().join("done").exists());
    }

    #[tokio::test]
    async fn words_are_not_expanded() {
        let dir = tempfile::tempdir().unwrap();
        let cmds = commands("lit:\n  do: \"touch '$(id)' ;\"\n");
        let (r, _) = run(&cmds, "lit", dir.path()).await;
        assert!(r.unwrap().is_none());
        assert!(dir.path().join("$(id)").is_file());
        assert!(dir.path().join(";").is_file());
    }

    #[tokio::test]
    async fn unknown_name_is_a_job_error_and_failure_an_infra_error() {
        let dir = tempfile::tempdir().unwrap();
        let cmds = commands("bad:\n  do: \"false\"\n");
        let (r, _) = run(&cmds, "other", dir.path()).await;
        let e = r.unwrap_err();
        assert_eq!(e.outcome, proto::Outcome::JobError);
        assert!(
            e.reason
                .contains("no user command 'other' (it defines bad)"),
            "{}",
            e.reason
        );
        let (r, _) = run(&UserCommands::new(), "other", dir.path()).await;
        assert!(r.unwrap_err().reason.contains("it defines none"));
        let (r, _) = run(&cmds, "bad", dir.path()).await;
        let e = r.unwrap_err();
        assert_eq!(e.outcome, proto::Outcome::InfraError);
        assert!(e.reason.contains("\"false\" failed"), "{}", e.reason);
    }
}
