//! One lease's job, run in its own task: parse, run with the runner, spool every log
//! record, report.
//!
//! ```text
//!  StartJob ─> parse ──(bad job)──────────────────────────────┐ job-error
//!                │                                             │
//!                ├─> artifacts::resolve (cache, fetch) ─(fails)┘ infra-error
//!                └─> runner::run_job ──events──> Recorder ──> SpoolWriter ──> JobNote::Spooled
//!                          │  <── Stop (cancel / drop / shutdown) via runner::Cancel
//!                          v
//!                      JobReport ──> spool meta (finished) ──> JobNote::Finished
//! ```
//!
//! Invariants:
//! - Every record is in the spool before the link hears of it ([`JobNote::Spooled`] carries
//!   only the number of the last record written).
//! - The task always ends with exactly one [`JobNote::Finished`], after the runner's teardown
//!   (DUT off, work directory removed); the device is free from then on.
//! - An unfinished console line is flushed after [`QUIET`] without new console bytes.
//! - A job stopped because the agent shuts down is an infra error, not `canceled` (nobody
//!   canceled it).

use crate::artifacts::ArtifactSource;
use crate::recorder::{Entry, Recorder};
use crate::spool::{SpoolWriter, now_millis};
use jobspec::{Action, Job};
use proto::{Epoch, JobId, JobReport, LeaseId, Outcome, Seq};
use qemu::image::GuestImage;
use runner::device::Device;
use runner::{Cancel, JobContext, RunEvent};
use std::future::Future;
use std::path::PathBuf;
use std::pin::pin;
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::watch;
use tokio::time::Instant;

/// Quiet time after which an unfinished console line is logged as it is.
pub const QUIET: Duration = Duration::from_millis(100);

/// What the agent's main loop asks of a running job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Keep going.
    Go,
    /// `CancelJob`: end with outcome canceled.
    Cancel,
    /// `DropLease`: end; nothing more is reported.
    Drop,
    /// The agent shuts down.
    Shutdown,
}

/// What a job task tells the agent's main loop.
#[derive(Debug)]
pub enum JobNote {
    /// Records up to `last` are in the spool.
    Spooled { lease: LeaseId, last: Seq },
    /// The job ended and its device is torn down.
    Finished {
        lease: LeaseId,
        report: JobReport,
        last_seq: Seq,
    },
    /// The task died without a report (a bug); the device state is unknown.
    Crashed { lease: LeaseId, reason: String },
    /// From a session's task (a person's lease).
    Session(crate::session::SessionNote),
    /// A MultiNode call of the job's runner, its `seq`-th; the main loop sends it to the
    /// controller (again after each hello) and hands the reply to `reply`.
    Multinode {
        lease: LeaseId,
        seq: u64,
        call: multinode::Call,
        reply: tokio::sync::oneshot::Sender<multinode::Reply>,
    },
}

/// A sub-job's link to its group's coordinator on the controller: each call becomes a
/// [`JobNote::Multinode`] for the main loop, which owns the agent link.
struct LabCoordinator {
    lease: LeaseId,
    notes: UnboundedSender<JobNote>,
}

impl runner::multinode::CoordinatorLink for LabCoordinator {
    fn call(&self, seq: u64, call: multinode::Call) -> runner::multinode::CallFuture {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let sent = self.notes.send(JobNote::Multinode {
            lease: self.lease,
            seq,
            call,
            reply,
        });
        Box::pin(async move {
            if sent.is_err() {
                return Err(runner::multinode::LinkError::Gone(
                    "the agent is stopping".into(),
                ));
            }
            rx.await.map_err(|_| {
                runner::multinode::LinkError::Gone(
                    "the agent dropped the call (the lease ended or a newer call replaced it)"
                        .into(),
                )
            })
        })
    }
}

/// The member context of a sub-job: the group's roster from the job file (members named
/// `ID.N`, LAVA's sub-job ids) and a [`LabCoordinator`].
fn member_context(
    job: &Job,
    sub: &proto::link::SubJob,
    lease: LeaseId,
    notes: &UnboundedSender<JobNote>,
) -> runner::multinode::MultinodeContext {
    let roster = multinode::Roster {
        members: jobspec::multinode::instances(job)
            .into_iter()
            .map(|i| multinode::Member {
                name: format!("{}.{}", sub.group, i.index),
                role: i.role,
            })
            .collect(),
    };
    let link = std::sync::Arc::new(LabCoordinator {
        lease,
        notes: notes.clone(),
    });
    runner::multinode::MultinodeContext::new(roster, multinode::InstanceId(sub.index), link)
}

/// Everything a job task needs.
#[derive(Debug)]
pub struct JobStart {
    pub agent: String,
    pub lease: LeaseId,
    pub epoch: Epoch,
    pub job: JobId,
    pub device: Device,
    pub definition: String,
    /// For a sub-job of a MultiNode group: the role instance of `definition` to run.
    pub sub_job: Option<proto::link::SubJob>,
    /// `work_dir/devices/<device>`: job directory and work root of the runner.
    pub device_dir: PathBuf,
    /// What the job may reach on this host.
    pub host: crate::config::HostSettings,
    /// Where the job's `artifact:` references are fetched from and cached.
    pub artifacts: ArtifactSource,
    /// The agent's salt of group network segments.
    pub group_salt: [u8; 16],
    /// A secondary connection's login to its host's DUT.
    pub secondary: Option<runner::secondary::SecondaryContext>,
    /// A host of secondary connections: where its DUT's SSH endpoint is published.
    pub publish_ssh: Option<runner::secondary::HostEndpoint>,
    /// Keys the DUT authorizes (a host's: its group's public key).
    pub authorized_keys: Vec<String>,
}

/// Runs the job of one lease to its end.
pub async fn run_lease(
    start: JobStart,
    mut writer: SpoolWriter,
    notes: UnboundedSender<JobNote>,
    stop: watch::Receiver<Stop>,
) {
    let lease = start.lease;
    let mut recorder = Recorder::new(secrets(&start.device, None));
    let mut entries = Vec::new();
    recorder.note(
        &format!(
            "agent {}: job {} on device {} (lease {}, epoch {})",
            start.agent, start.job, start.device.name, start.lease, start.epoch
        ),
        now_millis(),
        &mut entries,
    );
    let prepared = prepare(&start).map(|(job, mut ctx)| {
        if let Some(sub) = &start.sub_job {
            ctx.multinode = Some(member_context(&job, sub, lease, &notes));
            // Sub-jobs of the group on this agent share one segment, which the agent's bridge
            // joins to the group's segments on other agents (`crate::bridge`). A secondary
            // connection has no DUT.
            if sub.host.is_none() {
                let segment = runner::multinode::segment_of(&start.group_salt, sub.group.0);
                ctx.group_net = runner::multinode::GroupNet::for_member(segment, sub.index).ok();
            }
        }
        (job, ctx)
    });
    if let Ok((job, _)) = &prepared
        && let Err(e) = writer.set_job_name(&job.name)
    {
        tracing::warn!(%lease, "cannot update the spool metadata: {e}");
    }
    let mut sink = |entries: Vec<Entry>| {
        if entries.is_empty() {
            return;
        }
        let last = writer.append(entries);
        let _ = notes.send(JobNote::Spooled { lease, last });
    };
    sink(entries);
    let report = match prepared {
        Err(report) => {
            let mut entries = Vec::new();
            recorder.note(&report.reason, now_millis(), &mut entries);
            sink(entries);
            report
        }
        Ok((job, mut ctx)) => {
            recorder = Recorder::new(secrets(&start.device, Some(&job)));
            match crate::artifacts::resolve(&job, start.job, &start.artifacts, &mut ctx.policy)
                .await
            {
                Err(e) => {
                    let report = ended(&job.name, Outcome::InfraError, e.to_string());
                    let mut entries = Vec::new();
                    recorder.note(&report.reason, now_millis(), &mut entries);
                    sink(entries);
                    report
                }
                Ok((pins, lines)) => {
                    let mut entries = Vec::new();
                    for line in lines {
                        recorder.note(&line, now_millis(), &mut entries);
                    }
                    sink(entries);
                    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                    let run = run_stoppable(&job, &ctx, &start.device, tx, stop.clone());
                    let mut report = record(run, rx, &mut recorder, &mut sink).await;
                    // The run is over (DUT off): the cache may evict these files again.
                    drop(pins);
                    if *stop.borrow() == Stop::Shutdown && report.outcome == Outcome::Canceled {
                        report.outcome = Outcome::InfraError;
                        report.reason = "the agent shut down while the job ran".into();
                        let mut entries = Vec::new();
                        recorder.note(&report.reason, now_millis(), &mut entries);
                        sink(entries);
                    }
                    report
                }
            }
        }
    };
    let last_seq = match writer.finish(report.clone()) {
        Ok(last) => last,
        Err(e) => {
            tracing::warn!(%lease, "cannot record the report in the spool: {e}");
            writer.last_seq()
        }
    };
    let _ = notes.send(JobNote::Finished {
        lease,
        report,
        last_seq,
    });
}

/// Parses the job and finds what the runner needs; a report when the job cannot run.
fn prepare(start: &JobStart) -> Result<(Job, JobContext), JobReport> {
    let file = format!("job-{}.yaml", start.job);
    let fallback_name = format!("job-{}", start.job);
    let job = jobspec::parse_job(&file, &start.definition)
        .map_err(|e| ended(&fallback_name, Outcome::JobError, e.to_string()))?;
    // A sub-job runs its role instance's actions only (the controller sends the group's file);
    // its MultiNode calls go to the group's coordinator on the controller (`run_lease` sets
    // the member context).
    let job = match &start.sub_job {
        None => job,
        Some(sub) => jobspec::multinode::instances(&job)
            .into_iter()
            .nth(sub.index as usize)
            .filter(|i| i.role == sub.role && i.host == sub.host)
            .map(|i| i.job)
            .ok_or_else(|| {
                ended(
                    &job.name,
                    Outcome::JobError,
                    format!(
                        "sub-job {}.{}: the job file has no instance {} of role {:?}{}",
                        sub.group,
                        sub.index,
                        sub.index,
                        sub.role,
                        match sub.host {
                            Some(h) => format!(" riding on instance {h}"),
                            None => String::new(),
                        }
                    ),
                )
            })?,
    };
    let default_image = if job.deploys_images() || start.secondary.is_some() {
        None
    } else {
        let dir = start
            .device
            .image_dir
            .clone()
            .unwrap_or_else(qemu::image::default_image_dir);
        Some(GuestImage::open(&dir).map_err(|e| {
            ended(
                &job.name,
                Outcome::InfraError,
                format!(
                    "device {}: default guest image {}: {e} (build it with `dutlab image build`)",
                    start.device.name,
                    dir.display()
                ),
            )
        })?)
    };
    std::fs::create_dir_all(&start.device_dir).map_err(|e| {
        ended(
            &job.name,
            Outcome::InfraError,
            format!(
                "device {}: cannot create {}: {e}",
                start.device.name,
                start.device_dir.display()
            ),
        )
    })?;
    let policy = start.host.policy().map_err(|e| {
        ended(
            &job.name,
            Outcome::InfraError,
            format!("agent {}: image_dirs: {e}", start.agent),
        )
    })?;
    let ctx = JobContext {
        job_dir: start.device_dir.clone(),
        default_image,
        work_root: Some(start.device_dir.clone()),
        policy,
        secondary: start.secondary.clone(),
        authorized_keys: start.authorized_keys.clone(),
        publish_ssh: start.publish_ssh.clone(),
        multinode: None,
        group_net: None,
    };
    Ok((job, ctx))
}

fn ended(job_name: &str, outcome: Outcome, reason: String) -> JobReport {
    JobReport {
        job_name: job_name.to_owned(),
        outcome,
        reason,
        cases: Vec::new(),
        duration_s: 0.0,
    }
}

/// Passwords the runner may type: hidden in the log.
fn secrets(device: &Device, job: Option<&Job>) -> Vec<String> {
    let mut out: Vec<String> = device
        .login
        .auto_login
        .iter()
        .filter_map(|a| a.password.clone())
        .collect();
    if let Some(job) = job {
        for action in &job.actions {
            if let Action::Boot(b) = action
                && let Some(p) = b.auto_login.as_ref().and_then(|a| a.password.clone())
            {
                out.push(p);
            }
        }
    }
    out
}

/// The runner on `job`, cancelled when `stop` leaves [`Stop::Go`] (or its sender is gone).
async fn run_stoppable(
    job: &Job,
    ctx: &JobContext,
    device: &Device,
    events: UnboundedSender<RunEvent>,
    mut stop: watch::Receiver<Stop>,
) -> JobReport {
    let cancel = Cancel::default();
    let mut run = pin!(runner::run_job(job, ctx, device, events, cancel.clone()));
    loop {
        tokio::select! {
            report = &mut run => return report,
            changed = stop.changed() => {
                if changed.is_err() {
                    cancel.cancel();
                    return run.await;
                }
                if *stop.borrow_and_update() != Stop::Go {
                    cancel.cancel();
                }
            }
        }
    }
}

/// Drives `run` while recording its events; unfinished console lines are flushed after
/// [`QUIET`]. Returns the run's report once every event it sent is recorded.
pub async fn record(
    run: impl Future<Output = JobReport>,
    mut events: UnboundedReceiver<RunEvent>,
    recorder: &mut Recorder,
    sink: &mut impl FnMut(Vec<Entry>),
) -> JobReport {
    let mut run = pin!(run);
    let mut quiet: Option<Instant> = None;
    let mut open = true;
    let report = loop {
        tokio::select! {
            biased;
            event = events.recv(), if open => match event {
                Some(event) => {
                    let mut out = Vec::new();
                    recorder.event(event, now_millis(), &mut out);
                    sink(out);
                    quiet = recorder.has_partial().then(|| Instant::now() + QUIET);
                }
                None => open = false,
            },
            report = &mut run => break report,
            _ = sleep_until_some(quiet) => {
                let mut out = Vec::new();
                recorder.flush(now_millis(), &mut out);
                sink(out);
                quiet = None;
            }
        }
    };
    let mut out = Vec::new();
    while let Ok(event) = events.try_recv() {
        recorder.event(event, now_millis(), &mut out);
    }
    recorder.flush(now_millis(), &mut out);
    sink(out);
    report
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::log::LogKind;

    fn report() -> JobReport {
        ended("t", Outcome::Passed, String::new())
    }

    #[tokio::test(start_paused = true)]
    async fn partial_lines_are_flushed_after_quiet_and_at_the_end() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let mut recorder = Recorder::default();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(Instant, Entry)>::new()));
        let log = seen.clone();
        let mut sink = move |entries: Vec<Entry>| {
            let now = Instant::now();
            log.lock()
                .expect("not poisoned")
                .extend(entries.into_iter().map(|e| (now, e)));
        };
        let start = Instant::now();
        let driver = async move {
            tx.send(RunEvent::Console(b"boot ok\nlogin: ".to_vec()))
                .expect("open");
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.send(RunEvent::Console(b"still ".to_vec()))
                .expect("open");
            tokio::time::sleep(Duration::from_millis(500)).await;
            tx.send(RunEvent::Console(b"tail".to_vec())).expect("open");
            let _ = done_tx.send(());
        };
        let run = async move {
            let _ = done_rx.await;
            report()
        };
        let (_, got) = tokio::join!(driver, record(run, rx, &mut recorder, &mut sink));
        assert_eq!(got, report());
        let seen = seen.lock().expect("not poisoned");
        let texts: Vec<(&str, u128)> = seen
            .iter()
            .map(|(t, e)| (e.text.as_str(), (*t - start).as_millis()))
            .collect();
        assert_eq!(
            texts,
            vec![("boot ok", 0), ("login: still ", 150), ("tail", 550)]
        );
        assert!(seen.iter().all(|(_, e)| e.kind == LogKind::Console));
    }
}
