//! Committing the scheduler's events, then acting on them.
//!
//! Invariant: nothing is sent, answered or published before [`Dispatcher::commit`] has stored
//! the events; a failed commit stops the dispatcher (crash-only).

use super::*;
use scheduler::Holder;

impl Dispatcher {
    /// Commits `events` with new job rows and reports, then runs their effects.
    /// `from_agent`: the lease whose end the agent itself reported (no DropLease for it).
    pub(super) async fn commit(
        &mut self,
        events: Vec<Event>,
        agent_reports: Vec<(JobId, JobReport, u64)>,
        new_job: Option<&JobRow>,
        from_agent: Option<LeaseId>,
    ) -> Result<(), ControllerError> {
        self.commit_with(events, agent_reports, new_job, &[], from_agent)
            .await
    }

    /// Commits the events of a group's submission with its sub-jobs' rows.
    pub(super) async fn commit_jobs(
        &mut self,
        events: Vec<Event>,
        first: &JobRow,
        more: &[JobRow],
    ) -> Result<(), ControllerError> {
        self.commit_with(events, Vec::new(), Some(first), more, None)
            .await
    }

    async fn commit_with(
        &mut self,
        events: Vec<Event>,
        agent_reports: Vec<(JobId, JobReport, u64)>,
        new_job: Option<&JobRow>,
        more_jobs: &[JobRow],
        from_agent: Option<LeaseId>,
    ) -> Result<(), ControllerError> {
        // Renewals of job leases are soft state; a person's renewal is its deadline.
        let stored: Vec<Event> = events
            .iter()
            .filter(|e| match e {
                Event::LeaseRenewed { lease, .. } => self
                    .sched
                    .lease(*lease)
                    .is_some_and(|l| l.holder.person().is_some()),
                _ => true,
            })
            .cloned()
            .collect();
        // Jobs the controller ends itself get a synthesized report.
        let mut reports = agent_reports;
        for event in &events {
            if let Event::JobFinished {
                job,
                outcome,
                reason,
                at,
            } = event
                && !reports.iter().any(|(j, _, _)| j == job)
            {
                let name = self
                    .jobs
                    .get(job)
                    .map(|m| m.name.clone())
                    .unwrap_or_default();
                let started = self.sched.job(*job).and_then(|j| j.started);
                let duration_s = started.map_or(0.0, |s| at.0.saturating_sub(s.0) as f64 / 1000.0);
                let report = JobReport {
                    job_name: name,
                    outcome: *outcome,
                    reason: reason.clone(),
                    cases: Vec::new(),
                    duration_s,
                };
                let last = self.final_note(*job, &report, *at).await;
                reports.push((*job, report, last));
            }
        }
        let audit = std::mem::take(&mut self.pending_audit);
        if stored.is_empty() && new_job.is_none() && reports.is_empty() && audit.is_empty() {
            self.effects(&events, from_agent).await;
            return Ok(());
        }
        let change = Change {
            new_job,
            more_jobs,
            reports: reports.iter().map(|(j, r, s)| (*j, r, *s)).collect(),
            command: self.forwarded.take(),
            audit: &audit,
        };
        match self.store.commit(self.next_event, &stored, change).await {
            Ok(()) => {
                self.next_event += stored.len() as u64;
                self.remote.set_committed(self.next_event.saturating_sub(1));
                self.effects(&events, from_agent).await;
                Ok(())
            }
            Err(e) => {
                // Crash-only: the scheduler ran ahead of the database. Stop; a restart replays
                // the database, which holds exactly what was acknowledged.
                tracing::error!("commit failed; the controller stops: {e}");
                self.fatal = Some(e.to_string());
                Err(ControllerError::Store(e))
            }
        }
    }

    /// Writes the controller's last log record of a job and answers its sequence number.
    pub(super) async fn final_note(&self, job: JobId, report: &JobReport, at: Millis) -> u64 {
        let text = if report.reason.is_empty() {
            format!("job finished: {}", report.outcome)
        } else {
            format!("job finished: {}: {}", report.outcome, report.reason)
        };
        match self.logs.note(job, LogKind::Note, text, at).await {
            Ok(seq) => seq.0,
            Err(e) => {
                tracing::error!("{e}");
                self.logs.last(job).await.map_or(0, |s| s.0)
            }
        }
    }

    pub(super) async fn effects(&mut self, events: &[Event], from_agent: Option<LeaseId>) {
        self.note_checks(events);
        self.note_retries(events);
        for event in events {
            match event {
                Event::JobSubmitted { job, .. }
                | Event::JobStarted { job, .. }
                | Event::JobRequeued { job, .. } => self.publish(*job),
                Event::LeaseGranted {
                    lease,
                    epoch,
                    holder: Holder::Person(p),
                    device,
                    ..
                } => {
                    tracing::info!("lease {} of {}: holds device {device}", p.lease, p.name);
                    self.session_granted(*lease, *epoch, p.lease, device);
                    self.lease_changed(p.lease);
                }
                Event::PersonLeaseEnded { person, end, .. } => {
                    tracing::info!("lease {person}: {end}");
                    let closed = self
                        .streams
                        .close_lease(*person, &format!("lease {person} has ended: {end}"));
                    if closed > 0 {
                        tracing::info!("lease {person}: closed {closed} stream(s)");
                    }
                    self.lease_changed(*person);
                }
                Event::LeaseGranted {
                    lease,
                    epoch,
                    holder: Holder::Job(job),
                    device,
                    ..
                } => {
                    let conn = self
                        .sched
                        .device(device)
                        .and_then(|d| self.agents.get(&d.agent))
                        .and_then(|l| l.conn.as_ref())
                        .map(|(c, _)| *c);
                    self.leases.insert(
                        *lease,
                        LeaseInfo {
                            job: *job,
                            epoch: *epoch,
                            conn,
                            net: super::leases::net_of(&self.sched, *job),
                        },
                    );
                    let definition = self
                        .jobs
                        .get(job)
                        .and_then(|m| m.definition.clone())
                        .unwrap_or_default();
                    let sub_job = self.sched.group_of(*job).map(|g| {
                        let members = self.sched.group(g.id).unwrap_or_default();
                        let guests = members
                            .iter()
                            .filter(|m| {
                                self.sched.group_of(**m).and_then(|r| r.host) == Some(g.index)
                            })
                            .count();
                        // The whole group is granted at once: every member has its device.
                        let agents: std::collections::BTreeSet<&str> = members
                            .iter()
                            .filter_map(|m| self.sched.job(*m)?.device.as_deref())
                            .filter_map(|d| Some(self.sched.device(d)?.agent.as_str()))
                            .collect();
                        proto::link::SubJob {
                            group: g.id,
                            index: g.index,
                            role: g.role.clone(),
                            host: g.host,
                            guests: u32::try_from(guests).unwrap_or(u32::MAX),
                            reach: if agents.len() > 1 {
                                proto::link::GroupReach::Lab
                            } else {
                                proto::link::GroupReach::Agent
                            },
                        }
                    });
                    self.send_to_device(
                        device,
                        ControllerMessage::StartJob {
                            lease: *lease,
                            epoch: *epoch,
                            job: *job,
                            device: device.clone(),
                            definition,
                            sub_job,
                        },
                    );
                    self.publish(*job);
                }
                Event::CancelRequested { job, .. } => {
                    if let Some(entry) = self.sched.job(*job)
                        && let (Some(lease), Some(device)) = (entry.lease, entry.device.clone())
                        && let Some(l) = self.sched.lease(lease)
                    {
                        let msg = ControllerMessage::CancelJob {
                            lease,
                            epoch: l.epoch,
                        };
                        self.send_to_device(&device, msg);
                    }
                    self.publish(*job);
                }
                Event::JobFinished { job, .. } => {
                    if let Some(meta) = self.jobs.get_mut(job)
                        && let Some(definition) = meta.definition.take()
                    {
                        self.usage.remove(meta.owner, definition.len() as u64);
                    }
                    self.logs.close(*job);
                    self.publish(*job);
                    self.sub_job_finished(*job).await;
                }
                Event::LeaseReleased {
                    lease,
                    device_state,
                    ..
                } => {
                    self.session_released(*lease);
                    let info = self.leases.get(*lease);
                    self.leases.remove(*lease);
                    if *device_state == proto::DeviceState::NeedsCheck
                        && from_agent != Some(*lease)
                        && let Some(info) = info
                        && let Some(device) =
                            self.sched.job(info.job).and_then(|j| j.device.clone())
                    {
                        tracing::debug!(
                            "lease {lease} of job {} ended here; its device {device} needs a check",
                            info.job
                        );
                        self.send_to_device(
                            &device,
                            ControllerMessage::DropLease {
                                lease: *lease,
                                epoch: info.epoch,
                            },
                        );
                    }
                }
                Event::AgentConnected { .. }
                | Event::AgentDisconnected { .. }
                | Event::AgentSilent { .. }
                | Event::AgentHeard { .. }
                | Event::LeaseRenewed { .. }
                | Event::PersonLeaseRequested { .. }
                | Event::DeviceReady { .. }
                | Event::DeviceTagsSet { .. } => {}
                Event::DeviceStateSet {
                    device,
                    state,
                    reason,
                    by,
                    ..
                } => {
                    tracing::info!("device {device}: {state} (by {by}: {reason})");
                }
            }
        }
    }

    pub(super) fn send_to_device(&self, device: &str, message: ControllerMessage) {
        let Some(agent) = self.sched.device(device).map(|d| d.agent.clone()) else {
            return;
        };
        self.send(&agent, message);
    }

    pub(super) fn send(&self, agent: &str, message: ControllerMessage) {
        if let Some(AgentLink {
            conn: Some((_, tx)),
            ..
        }) = self.agents.get(agent)
            && tx.try_send(message).is_err()
        {
            tracing::warn!(
                "agent {agent}: link queue full or closed; the agent resyncs when it reconnects"
            );
        }
    }

    /// Sends the job's view to the log followers watching jobs change. Built only when one
    /// listens: a queued job's view holds its position, which walks the queue ahead of it.
    pub(super) fn publish(&self, job: JobId) {
        if self.updates.receiver_count() == 0 {
            return;
        }
        if let Some(view) = self.view(job) {
            let _ = self.updates.send(view);
        }
    }
}
