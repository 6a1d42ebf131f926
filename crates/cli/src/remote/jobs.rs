//! `dutlab job submit | list | show | logs | cancel | results`.
//!
//! Invariants:
//! - `submit` refuses a file larger than [`MAX_JOB_BODY`] before sending it; a 400 or 413
//!   answer is a refused job (exit 4) and prints the server's message, which names file and
//!   field, and the known device types when the type was unknown.
//! - `--follow` shows each log record once and in order (the client resumes after dropped
//!   connections); Ctrl-C stops following only, never cancels the job (exit 130).
//! - `submit --follow` and `results` exit with the job's outcome code.

use super::{block_on, connect, print_json, uploads};
use crate::exit::{self, Exit};
use crate::logview::{LogView, json_line};
use crate::table::{self, Table};
use anyhow::Context;
use client::{Client, ClientError};
use proto::api::{FollowEvent, JobView, MAX_JOB_BODY, MAX_LOG_PAGE, SubmitJob};
use proto::{JobId, JobState, Seq};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// MultiNode groups: `ID.N`, group views, following every sub-job.
mod groups;
use groups::JobRef;

const SUBMIT_HELP: &str = "Exit codes: 0 submitted; with --follow the job's outcome: 0 passed, \
1 failed, 2 timed out, 3 canceled, 4 job error, 5 infra error. 4 job refused (the controller's \
400: file and field named), 64 usage or missing settings (DUTLAB_URL, DUTLAB_TOKEN or `dutlab \
login`), 69 controller unreachable, 70 other error, 75 over a quota (429: artifact bytes), 77 no \
token or token refused (401/403), 130 Ctrl-C stopped following (the job keeps running).";

const LOGS_HELP: &str = "Exit codes: 0 done, 64 usage or missing settings (DUTLAB_URL, \
DUTLAB_TOKEN or `dutlab login`), 69 controller unreachable, 70 other error, 77 no token or token \
refused (401/403), 130 Ctrl-C stopped following (the job keeps running).";

const RESULTS_HELP: &str = "Exit codes: the job's outcome: 0 passed, 1 failed, 2 timed out, \
3 canceled, 4 job error, 5 infra error; 75 not finished yet, 64 usage or missing settings \
(DUTLAB_URL, DUTLAB_TOKEN or `dutlab login`), 69 controller unreachable, 70 other error \
(including a JUnit file that cannot be written), 77 no token or token refused (401/403).";

/// A job state, as a flag value.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum StateArg {
    Queued,
    Assigned,
    Running,
    Canceling,
    Finished,
}

impl From<StateArg> for JobState {
    fn from(s: StateArg) -> JobState {
        match s {
            StateArg::Queued => JobState::Queued,
            StateArg::Assigned => JobState::Assigned,
            StateArg::Running => JobState::Running,
            StateArg::Canceling => JobState::Canceling,
            StateArg::Finished => JobState::Finished,
        }
    }
}

/// `job submit --retry`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Retry {
    Never,
    OnceOnAnotherDevice,
}

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// The job file (LAVA job YAML).
    job: PathBuf,
    /// Show the live log, then the results; exit with the job's outcome.
    #[arg(long)]
    follow: bool,
    /// Queue even when no device of the job's type is registered yet.
    #[arg(long)]
    wait_for_device: bool,
    /// After an infra error, run the job once more on another device (`job show` names the
    /// retry; --follow follows only this job).
    #[arg(long, value_enum, default_value = "never")]
    retry: Retry,
    /// Print JSON: the job (or with --follow, its results; the log then goes to stderr).
    #[arg(long)]
    json: bool,
    /// Print the local files that would be uploaded (images, git bundles); send nothing.
    #[arg(long)]
    dry_run: bool,
    /// Send the job file as written: upload nothing, keep paths and repositories as they are
    /// (a lab agent then reads paths only inside its image_dirs).
    #[arg(long, conflicts_with = "dry_run")]
    as_written: bool,
}

/// Job commands that need a controller (flattened into `dutlab job`).
#[derive(Debug, clap::Subcommand)]
pub enum JobCommand {
    /// Submit a job file to the controller; prints the job id.
    #[command(after_help = SUBMIT_HELP)]
    Submit(SubmitArgs),
    /// List jobs, newest first.
    #[command(after_help = exit::HELP)]
    List {
        /// Only jobs in this state.
        #[arg(long, value_enum, conflicts_with = "queued")]
        state: Option<StateArg>,
        /// Only queued jobs, in the order they will be served, with their position and a
        /// rough estimate of when they start.
        #[arg(long)]
        queued: bool,
        /// At most this many (the controller's default otherwise).
        #[arg(long)]
        limit: Option<usize>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one job.
    #[command(after_help = exit::HELP)]
    Show {
        /// A job id, or ID.N for sub-job N of group ID.
        id: JobRef,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a job's log (escape sequences removed).
    #[command(after_help = LOGS_HELP)]
    Logs {
        /// A job id, or ID.N (a group's id follows every sub-job with --follow).
        id: JobRef,
        /// Keep printing until the job ends.
        #[arg(long)]
        follow: bool,
        /// One JSON log record per line (raw text).
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job (yours, or any as admin).
    #[command(after_help = exit::HELP)]
    Cancel {
        /// A job id, or ID.N (either cancels the whole group).
        id: JobRef,
    },
    /// Show a finished job's results; exits with its outcome.
    #[command(after_help = RESULTS_HELP)]
    Results {
        /// A job id, or ID.N for sub-job N of group ID.
        id: JobRef,
        /// Write JUnit XML here.
        #[arg(long, value_name = "PATH")]
        junit: Option<PathBuf>,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `dutlab job ...` (remote part).
pub fn job(command: JobCommand) -> i32 {
    block_on(async move {
        match command {
            JobCommand::Submit(args) => submit(args).await,
            JobCommand::List {
                state,
                queued,
                limit,
                json,
            } => {
                if queued {
                    list_queued(&connect()?, limit, json).await
                } else {
                    list(&connect()?, state.map(JobState::from), limit, json).await
                }
            }
            JobCommand::Show { id, json } => {
                let client = connect()?;
                let resolved = groups::resolve(&client, id).await?;
                let job = client
                    .job(resolved)
                    .await
                    .with_context(|| format!("cannot show job {id}"))?;
                // `show ID` of a group's id shows the whole group (JSON keeps one view's
                // shape: sub-job 0's, whose `group` names every sub-job).
                if let (None, Some(g), false) = (id.sub, &job.group, json)
                    && g.id == job.id
                {
                    let jobs = groups::members(&client, g).await?;
                    print!("{}", groups::describe_group(g, &jobs, table::now()));
                    return Ok(0);
                }
                if json {
                    print_json(&job);
                } else {
                    print!("{}", describe(&job, table::now()));
                }
                Ok(0)
            }
            JobCommand::Logs { id, follow, json } => {
                let client = connect()?;
                let resolved = groups::resolve(&client, id).await?;
                if follow && !json && id.sub.is_none() {
                    let job = client
                        .job(resolved)
                        .await
                        .with_context(|| format!("cannot follow job {id}"))?;
                    if let Some(g) = job.group.as_ref().filter(|g| g.id == job.id) {
                        return match groups::follow_group(&client, g, Box::new(std::io::stdout()))
                            .await?
                        {
                            Some(_) => Ok(0),
                            None => Ok(interrupted(job.id)),
                        };
                    }
                }
                logs(&client, resolved, follow, json).await
            }
            JobCommand::Cancel { id } => {
                let client = connect()?;
                let resolved = groups::resolve(&client, id).await?;
                let job = client
                    .cancel_job(resolved)
                    .await
                    .with_context(|| format!("cannot cancel job {id}"))?;
                println!("job {id}: {}", job.state);
                Ok(0)
            }
            JobCommand::Results { id, junit, json } => {
                let client = connect()?;
                let resolved = groups::resolve(&client, id).await?;
                results(&client, resolved, junit.as_deref(), json).await
            }
        }
    })
}

/// The job file's name (for messages) and text, refused early when the controller would.
pub fn read_definition(path: &Path) -> Result<(String, String), Exit> {
    let shown = path.display().to_string();
    let refused = |reason: String| Exit::new(exit::JOB_REFUSED, format!("{shown}: {reason}"));
    let file = std::fs::File::open(path).map_err(|e| refused(format!("cannot read: {e}")))?;
    let len = file
        .metadata()
        .map_err(|e| refused(format!("cannot read: {e}")))?
        .len();
    let too_large = |len: u64| {
        refused(format!(
            "the file is {len} bytes; the controller takes job files up to {MAX_JOB_BODY} bytes"
        ))
    };
    let limit = u64::try_from(MAX_JOB_BODY).expect("the limit fits u64");
    if len > limit {
        return Err(too_large(len));
    }
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| refused(format!("cannot read: {e}")))?;
    if bytes.len() > MAX_JOB_BODY {
        return Err(too_large(bytes.len() as u64));
    }
    let text = String::from_utf8(bytes).map_err(|_| refused("is not UTF-8 text".into()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or(shown);
    Ok((name, text))
}

/// A submit error: 400 and 413 are a refused job (exit 4), anything else keeps its code.
fn refused(e: ClientError, file: &str) -> anyhow::Error {
    match e {
        ClientError::Api {
            status: 400 | 413,
            message,
            known_device_types,
        } => {
            let mut text = format!("job refused: {message}");
            // The controller's message may list them already.
            if !known_device_types.is_empty()
                && !known_device_types
                    .iter()
                    .all(|t| message.contains(t.as_str()))
            {
                text.push_str(&format!(
                    "; known device types: {}",
                    known_device_types.join(", ")
                ));
            }
            Exit::new(exit::JOB_REFUSED, text).into()
        }
        other => anyhow::Error::new(other).context(format!("cannot submit {file}")),
    }
}

async fn submit(args: SubmitArgs) -> anyhow::Result<i32> {
    let (file_name, definition) = read_definition(&args.job)?;
    // The controller validates the job too; parsing here finds the local files it names.
    let parsed = jobspec::parse_job(&file_name, &definition)
        .map_err(|e| Exit::new(exit::JOB_REFUSED, format!("job refused: {e}")))?;
    // Refused before anything is uploaded, with the message the controller would give.
    jobspec::check_runnable(&file_name, &parsed).map_err(|e| {
        Exit::new(
            exit::JOB_REFUSED,
            format!("job refused: valid LAVA, but not runnable here: {e}"),
        )
    })?;
    let (uploads, _staging) = if args.as_written {
        (Vec::new(), None)
    } else {
        let (uploads, staging) = uploads::local_uploads(&args.job, &file_name, &parsed)?;
        (uploads, Some(staging))
    };
    if args.dry_run {
        if uploads.is_empty() {
            println!("nothing to upload");
        }
        for upload in &uploads {
            println!("{}", runner::report::printable(&uploads::describe(upload)));
        }
        return Ok(0);
    }
    let client = connect()?;
    let definition = if uploads.is_empty() {
        definition
    } else {
        uploads::upload_all(&client, &uploads).await?;
        jobspec::rewrite_references(&file_name, &definition, &uploads::references(&uploads))
            .map_err(|e| Exit::new(exit::JOB_REFUSED, format!("job refused: {e}")))?
    };
    let request = SubmitJob {
        definition,
        file_name: Some(file_name.clone()),
        wait_for_device: args.wait_for_device,
        retry: match args.retry {
            Retry::Never => proto::RetryPolicy::Never,
            Retry::OnceOnAnotherDevice => proto::RetryPolicy::OnceOnAnotherDevice,
        },
    };
    let job = client
        .submit_job(&request)
        .await
        .map_err(|e| refused(e, &file_name))?;
    // The controller's warnings are `field: reason`; name the file as `run` and `validate` do.
    for w in &job.warnings {
        eprintln!(
            "dutlab: warning: {}",
            runner::report::printable(&format!("{file_name}: {w}"))
        );
    }
    if let Some(g) = job.group.clone() {
        // A group: its id on stdout (what scripts read), its sub-jobs on stderr.
        for (i, m) in g.jobs.iter().enumerate() {
            eprintln!(
                "dutlab: group {}: sub-job {} (role {}) is job {}",
                g.id,
                groups::name(&g, i),
                runner::report::printable(&m.role),
                m.job
            );
        }
        if !args.follow {
            if args.json {
                print_json(&job);
            } else {
                println!("{}", g.id);
            }
            return Ok(0);
        }
        eprintln!(
            "dutlab: submitted group {} ({}); following every sub-job, Ctrl-C stops following (the jobs keep running)",
            g.id,
            runner::report::printable(&job.name)
        );
        let out: Box<dyn Write + Send> = if args.json {
            Box::new(std::io::stderr())
        } else {
            Box::new(std::io::stdout())
        };
        let Some(ends) = groups::follow_group(&client, &g, out).await? else {
            return Ok(interrupted(g.id));
        };
        let jobs = groups::members(&client, &g).await?;
        if args.json {
            print_json(&jobs);
        } else {
            print!("\n{}", groups::describe_group(&g, &jobs, table::now()));
        }
        return Ok(groups::worst(&jobs)
            .or_else(|| groups::worst(&ends))
            .map_or(exit::SOFTWARE, |o| o.exit_code()));
    }
    if !args.follow {
        if args.json {
            print_json(&job);
        } else {
            println!("{}", job.id);
        }
        return Ok(0);
    }
    eprintln!(
        "dutlab: submitted job {} ({}); following its log, Ctrl-C stops following (the job keeps running)",
        job.id,
        runner::report::printable(&job.name)
    );
    let end = if args.json {
        follow(
            &client,
            job.id,
            LogSink::People(LogView::new(Box::new(std::io::stderr()))),
        )
        .await?
    } else {
        follow(
            &client,
            job.id,
            LogSink::People(LogView::new(Box::new(std::io::stdout()))),
        )
        .await?
    };
    let Some(end) = end else {
        return Ok(interrupted(job.id));
    };
    let results = client
        .results(job.id)
        .await
        .with_context(|| format!("cannot read the results of job {}", job.id))?;
    if args.json {
        print_json(&results);
    } else {
        match &results.report {
            Some(report) => println!("\n{}", runner::report::table(report)),
            None => print!("{}", describe(&results.job, table::now())),
        }
    }
    outcome_code(&results.job).or_else(|_| outcome_code(&end))
}

/// The exit code of a finished job's outcome.
fn outcome_code(job: &JobView) -> anyhow::Result<i32> {
    match job.outcome {
        Some(outcome) => Ok(outcome.exit_code()),
        None => Err(Exit::new(
            exit::SOFTWARE,
            format!(
                "job {} ended without an outcome (state {})",
                job.id, job.state
            ),
        )
        .into()),
    }
}

fn interrupted(id: JobId) -> i32 {
    eprintln!(
        "\ndutlab: stopped following job {id}; it keeps running. Cancel it with: dutlab job cancel {id}"
    );
    exit::INTERRUPTED
}

/// Where followed records go.
enum LogSink {
    People(LogView<Box<dyn Write>>),
    JsonLines,
}

impl LogSink {
    fn event(&mut self, event: &FollowEvent) -> std::io::Result<()> {
        match (self, event) {
            (LogSink::People(view), FollowEvent::Log { record }) => view.record(record),
            (LogSink::People(view), FollowEvent::Job { job } | FollowEvent::End { job }) => {
                view.job(job)
            }
            (LogSink::JsonLines, FollowEvent::Log { record }) => {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{}", json_line(record))?;
                out.flush()
            }
            (LogSink::JsonLines, _) => Ok(()),
        }
    }

    fn finish(&mut self) -> std::io::Result<()> {
        match self {
            LogSink::People(view) => view.finish(),
            LogSink::JsonLines => Ok(()),
        }
    }
}

/// Follows a job's log to its end: the final view, or `None` when Ctrl-C stopped it.
async fn follow(client: &Client, id: JobId, mut sink: LogSink) -> anyhow::Result<Option<JobView>> {
    let mut stream = client.follow(id, Seq(0));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let end = loop {
        tokio::select! {
            _ = &mut ctrl_c => {
                let _ = sink.finish();
                return Ok(None);
            }
            event = stream.next() => match event {
                None => {
                    return Err(Exit::new(
                        exit::SOFTWARE,
                        format!("the log stream of job {id} ended before the job did"),
                    )
                    .into());
                }
                Some(Err(e)) => {
                    let _ = sink.finish();
                    return Err(anyhow::Error::new(e).context(format!("cannot follow the log of job {id}")));
                }
                Some(Ok(event)) => {
                    sink.event(&event).context("cannot write the log")?;
                    if let FollowEvent::End { job } = event {
                        break job;
                    }
                }
            }
        }
    };
    sink.finish().context("cannot write the log")?;
    Ok(Some(end))
}

async fn list(
    client: &Client,
    state: Option<JobState>,
    limit: Option<usize>,
    json: bool,
) -> anyhow::Result<i32> {
    let jobs = client
        .list_jobs_filtered(state, limit)
        .await
        .context("cannot list jobs")?;
    if json {
        print_json(&jobs);
    } else {
        print!("{}", jobs_table(&jobs, table::now()).render());
    }
    Ok(0)
}

/// `job list --queued`: queued jobs in serving order.
async fn list_queued(client: &Client, limit: Option<usize>, json: bool) -> anyhow::Result<i32> {
    let mut jobs = client
        .list_jobs_filtered(Some(JobState::Queued), limit)
        .await
        .context("cannot list jobs")?;
    jobs.sort_by_key(|j| (j.position.unwrap_or(usize::MAX), j.id));
    if json {
        print_json(&jobs);
    } else {
        print!("{}", queue_table(&jobs, table::now()).render());
    }
    Ok(0)
}

/// The `job list --queued` table (positions 1-based, as people count).
pub fn queue_table(jobs: &[JobView], now: proto::Millis) -> Table {
    let mut t = Table::new(&[
        "POS",
        "ID",
        "NAME",
        "TYPE",
        "PRIORITY",
        "OWNER",
        "SUBMITTED",
        "STARTS",
    ]);
    for j in jobs {
        t.row(vec![
            j.position.map(|p| (p + 1).to_string()).unwrap_or_default(),
            j.id.to_string(),
            j.name.clone(),
            j.device_type.clone(),
            j.priority.to_string(),
            j.owner.clone(),
            table::ago(now, j.submitted_at),
            j.estimated_start.map_or_else(
                || "unknown".to_owned(),
                |at| format!("~{}", table::ahead(now, at)),
            ),
        ]);
    }
    t
}

/// The `job list` table.
pub fn jobs_table(jobs: &[JobView], now: proto::Millis) -> Table {
    let mut t = Table::new(&[
        "ID",
        "NAME",
        "TYPE",
        "STATE",
        "OUTCOME",
        "DEVICE",
        "OWNER",
        "SUBMITTED",
    ]);
    for j in jobs {
        t.row(vec![
            j.id.to_string(),
            j.name.clone(),
            j.device_type.clone(),
            j.state.to_string(),
            j.outcome.map(|o| o.to_string()).unwrap_or_default(),
            j.device.clone().unwrap_or_default(),
            j.owner.clone(),
            table::ago(now, j.submitted_at),
        ]);
    }
    t
}

/// `job show`: one `field: value` line each, values neutralised.
pub fn describe(job: &JobView, now: proto::Millis) -> String {
    let mut t = Table::new(&["", ""]);
    let mut field = |name: &str, value: String| t.row(vec![format!("{name}:"), value]);
    field("id", job.id.to_string());
    field("name", job.name.clone());
    field("device type", job.device_type.clone());
    field("tags", job.tags.join(", "));
    field("priority", job.priority.to_string());
    field("visibility", job.visibility.to_string());
    field("owner", job.owner.clone());
    field("state", job.state.to_string());
    field(
        "outcome",
        job.outcome.map(|o| o.to_string()).unwrap_or_default(),
    );
    field("reason", job.reason.clone());
    field("device", job.device.clone().unwrap_or_default());
    if let Some(g) = &job.group {
        field("sub-job", groups::group_field(g));
    }
    if let Some(first) = job.retry_of {
        field(
            "retry of",
            format!("job {first} (not on {})", job.avoid_devices.join(", ")),
        );
    }
    if let Some(again) = job.retried_as {
        field("retried as", format!("job {again}"));
    } else if !job.retry.is_never() {
        field(
            "retry",
            "once on another device after an infra error".into(),
        );
    }
    field("submitted", table::when(now, job.submitted_at));
    if let Some(position) = job.position {
        field("queue position", (position + 1).to_string());
        field(
            "estimated start",
            job.estimated_start.map_or_else(
                || "unknown".to_owned(),
                |at| format!("~{}", table::ahead(now, at)),
            ),
        );
    }
    field(
        "started",
        job.started_at
            .map(|t| table::when(now, t))
            .unwrap_or_default(),
    );
    field(
        "finished",
        job.finished_at
            .map(|t| table::when(now, t))
            .unwrap_or_default(),
    );
    for w in &job.warnings {
        field("warning", w.clone());
    }
    // The header row of this table is empty: drop it.
    let text = t.render();
    text.split_once('\n')
        .map(|(_, rest)| rest.to_string())
        .unwrap_or(text)
}

async fn logs(client: &Client, id: JobId, follow_on: bool, json: bool) -> anyhow::Result<i32> {
    let sink = if json {
        LogSink::JsonLines
    } else {
        LogSink::People(LogView::new(Box::new(std::io::stdout())))
    };
    if follow_on {
        return match follow(client, id, sink).await? {
            Some(_) => Ok(0),
            None => Ok(interrupted(id)),
        };
    }
    let mut sink = sink;
    let mut cursor = Seq(0);
    loop {
        let page = client
            .logs(id, cursor, MAX_LOG_PAGE)
            .await
            .with_context(|| format!("cannot read the log of job {id}"))?;
        for record in &page.records {
            sink.event(&FollowEvent::Log {
                record: record.clone(),
            })
            .context("cannot write the log")?;
        }
        if page.records.len() < MAX_LOG_PAGE || page.cursor <= cursor {
            break;
        }
        cursor = page.cursor;
    }
    sink.finish().context("cannot write the log")?;
    Ok(0)
}

async fn results(
    client: &Client,
    id: JobId,
    junit: Option<&Path>,
    json: bool,
) -> anyhow::Result<i32> {
    let results = client
        .results(id)
        .await
        .with_context(|| format!("cannot read the results of job {id}"))?;
    let Some(report) = &results.report else {
        if json {
            print_json(&results);
        }
        return Err(Exit::new(
            exit::NOT_FINISHED,
            format!("job {id} has no results yet: it is {}", results.job.state),
        )
        .into());
    };
    if let Some(path) = junit {
        let xml = runner::report::junit(report).context("cannot render JUnit XML")?;
        std::fs::write(path, xml)
            .with_context(|| format!("cannot write JUnit XML to {}", path.display()))?;
    }
    if json {
        print_json(&results);
    } else {
        print!("{}", runner::report::table(report));
    }
    Ok(results.job.outcome.unwrap_or(report.outcome).exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{Millis, Outcome};

    fn view() -> JobView {
        JobView {
            id: JobId(42),
            name: "smoke".into(),
            device_type: "qemu-x86_64".into(),
            tags: vec!["fast".into(), "kvm".into()],
            priority: 50,
            visibility: proto::Visibility::Public,
            owner: "ci".into(),
            owner_id: proto::PrincipalId(1),
            state: JobState::Finished,
            outcome: Some(Outcome::Failed),
            reason: "1 case failed".into(),
            device: Some("qemu-01".into()),
            submitted_at: Millis(1_000_000),
            started_at: Some(Millis(1_005_000)),
            finished_at: None,
            position: None,
            estimated_start: None,
            retry: proto::RetryPolicy::Never,
            retry_of: None,
            retried_as: None,
            avoid_devices: Vec::new(),
            group: None,
            warnings: vec!["job.yaml: foo: unknown key".into()],
        }
    }

    #[test]
    fn job_tables_have_one_aligned_row_per_job() {
        let now = Millis(1_012_000);
        let out = jobs_table(&[view()], now).render();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("ID  NAME   TYPE"), "{out}");
        assert!(
            lines[1].starts_with("42  smoke  qemu-x86_64  finished  failed   qemu-01  ci"),
            "{out}"
        );
        assert!(lines[1].ends_with("12s ago"), "{out}");
    }

    #[test]
    fn a_job_is_described_field_by_field() {
        let out = describe(&view(), Millis(1_012_000));
        // Values start after the longest name, `device type:`, and two spaces.
        let line = |name: &str, value: &str| format!("{:<14}{value}\n", format!("{name}:"));
        assert!(out.starts_with(&line("id", "42")), "{out}");
        assert!(out.contains(&line("tags", "fast, kvm")), "{out}");
        assert!(out.contains(&line("outcome", "failed")), "{out}");
        assert!(out.contains("\nfinished:\n"), "{out}");
        assert!(out.contains("(7s ago)"), "{out}");
        assert!(
            out.contains(&line("warning", "job.yaml: foo: unknown key")),
            "{out}"
        );
    }

    #[test]
    fn refused_submissions_exit_4_and_list_known_types() {
        let e = refused(
            ClientError::Api {
                status: 400,
                message: "job.yaml: device_type: no device of type 'rpi9'".into(),
                known_device_types: vec!["qemu-x86_64".into(), "bbb".into()],
            },
            "job.yaml",
        );
        assert_eq!(exit::code_of(&e), exit::JOB_REFUSED);
        let text = format!("{e:#}");
        assert!(text.contains("job.yaml: device_type"), "{text}");
        assert!(
            text.contains("known device types: qemu-x86_64, bbb"),
            "{text}"
        );
        let e = refused(
            ClientError::Api {
                status: 400,
                message: "job.yaml: device_type: no 'rpi9' (known: bbb)".into(),
                known_device_types: vec!["bbb".into()],
            },
            "job.yaml",
        );
        assert_eq!(
            format!("{e:#}"),
            "job refused: job.yaml: device_type: no 'rpi9' (known: bbb)"
        );
        let e = refused(
            ClientError::Api {
                status: 401,
                message: "missing or unknown token".into(),
                known_device_types: vec![],
            },
            "job.yaml",
        );
        assert_eq!(exit::code_of(&e), exit::NO_PERMISSION);
        assert!(format!("{e:#}").starts_with("cannot submit job.yaml: "));
    }

    #[test]
    fn oversized_job_files_are_refused_before_sending() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = dir.path().join("big.yaml");
        std::fs::write(&big, vec![b'#'; MAX_JOB_BODY + 1]).expect("write");
        let e = read_definition(&big).expect_err("too large");
        assert_eq!(e.code, exit::JOB_REFUSED);
        assert!(
            e.message.contains("big.yaml") && e.message.contains("bytes"),
            "{}",
            e.message
        );
        let ok = dir.path().join("ok.yaml");
        std::fs::write(&ok, "job_name: x\n").expect("write");
        let (name, text) = read_definition(&ok).expect("read");
        assert_eq!((name.as_str(), text.as_str()), ("ok.yaml", "job_name: x\n"));
        let e = read_definition(&dir.path().join("absent.yaml")).expect_err("absent");
        assert_eq!(e.code, exit::JOB_REFUSED);
    }

    #[test]
    fn outcome_codes_come_from_the_job() {
        assert_eq!(outcome_code(&view()).expect("finished"), 1);
        let mut v = view();
        v.outcome = None;
        assert!(outcome_code(&v).is_err());
    }
}
