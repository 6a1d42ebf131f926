//! A follower's dispatcher: a read-only replica of the leader's scheduler, rebuilt from the
//! same event log and kept up to date by reading the events the leader commits.
//!
//! Invariants:
//! - The replica changes only by applying stored events, in `seq` order, with no hole (the
//!   leader commits them in order, one transaction per batch): it never runs a scheduler
//!   command, never ticks, never commits. Views are answered from it with the same code and
//!   the same [`policy`] as on the leader.
//! - What changes the queue is forwarded to the leader ([`forward`]); agent links are
//!   accepted and relayed to the leader ([`relay_links`]). The replica keeps the live job
//!   leases in [`Leases`] with the local link that holds them, so log frames are stored
//!   here with the leader's fencing (lease live, its epoch, held by this link).
//! - Events are read when the leader notifies `dutlab_events` and at least once per
//!   [`forward::POLL`] whatever the notifications said.
//! - When this controller takes the database's lock it stops following and the caller
//!   starts a leader's dispatcher from the database ([`Dispatcher::load`]).

use super::forward::{self, Answer, Forwarded, Hub};
use super::relay_links::FollowerLinks;
use super::*;
use crate::store::hold::Hold;
use tokio::sync::watch;

impl Dispatcher {
    /// Follows the leader until `promoted` resolves (this controller took the lock), then
    /// answers the lock.
    /// `me` names this controller in the tables of relayed agent links, `url` is its
    /// advertised address.
    pub async fn follow(
        mut self,
        commands: &mut mpsc::Receiver<Command>,
        hub: Hub,
        me: String,
        url: Option<String>,
        promoted: impl std::future::Future<Output = Hold>,
    ) -> Result<Hold, ControllerError> {
        let (applied_tx, applied) = watch::channel(self.next_event.saturating_sub(1));
        let links = FollowerLinks::start(
            me,
            url,
            self.store.clone(),
            hub.clone(),
            self.sessions.clone(),
            applied.clone(),
        );
        self.leases.clear();
        for lease in self.sched.leases() {
            if let Some(job) = lease.job() {
                let info = LeaseInfo {
                    job,
                    epoch: lease.epoch,
                    conn: None,
                    net: super::leases::net_of(&self.sched, job),
                };
                self.leases.insert(lease.id, info);
            }
        }
        let mut promoted = std::pin::pin!(promoted);
        loop {
            tokio::select! {
                hold = &mut promoted => {
                    tracing::info!("took the database's lock: this controller leads now");
                    links.close_all(
                        "this controller leads its database now; say hello again",
                    );
                    return Ok(hold);
                }
                command = commands.recv() => match command {
                    Some(command) => self.as_follower(command, &hub, &applied, &links).await,
                    None => return Err(ControllerError::Stopped("the server stopped".into())),
                },
                () = hub.events.notified() => self.catch_up(&applied_tx, &links).await?,
                () = tokio::time::sleep(forward::POLL) => self.catch_up(&applied_tx, &links).await?,
            }
        }
    }

    /// Reads and applies the events the leader committed since the last call.
    async fn catch_up(
        &mut self,
        applied: &watch::Sender<u64>,
        links: &FollowerLinks,
    ) -> Result<(), ControllerError> {
        let events = match self.store.events_from(self.next_event).await {
            Ok(events) => events,
            Err(e) => {
                // The database may be restarting: the next round tries again.
                tracing::warn!("following the leader: {e}");
                return Ok(());
            }
        };
        if events.is_empty() {
            return Ok(());
        }
        // Job rows are committed with their submission's events: every job these events
        // name is readable now.
        let rows = self.store.jobs_from(self.next_job).await?;
        for row in rows {
            self.next_job = self.next_job.max(row.id.0 + 1);
            self.jobs.insert(
                row.id,
                JobMeta {
                    name: row.name,
                    owner: row.owner,
                    owner_name: row.owner_name,
                    visibility: row.visibility,
                    warnings: row.warnings,
                    definition: None,
                },
            );
        }
        let mut touched_jobs = Vec::new();
        let mut touched_leases = Vec::new();
        for (seq, event) in events {
            if seq != self.next_event {
                tracing::warn!(
                    "following the leader: event {seq} where {} was expected; reading again",
                    self.next_event
                );
                break;
            }
            self.sched
                .apply(&event)
                .map_err(|e| ControllerError::Replay(format!("event {seq}: {e}")))?;
            self.next_event += 1;
            self.follow_lease(&event, links);
            match &event {
                Event::JobSubmitted { job, .. }
                | Event::JobStarted { job, .. }
                | Event::JobRequeued { job, .. }
                | Event::CancelRequested { job, .. }
                | Event::JobFinished { job, .. }
                | Event::LeaseGranted {
                    holder: scheduler::Holder::Job(job),
                    ..
                } => touched_jobs.push(*job),
                Event::LeaseGranted {
                    holder: scheduler::Holder::Person(p),
                    ..
                } => touched_leases.push(p.lease),
                Event::PersonLeaseEnded { person, end, .. } => {
                    // Streams this follower opened for the lease end with it, as on the leader.
                    self.streams
                        .close_lease(*person, &format!("lease {person} has ended: {end}"));
                    touched_leases.push(*person);
                }
                _ => {}
            }
        }
        for job in touched_jobs {
            self.publish(job);
        }
        for lease in touched_leases {
            self.lease_changed(lease);
        }
        let _ = applied.send(self.next_event.saturating_sub(1));
        Ok(())
    }

    /// Keeps [`Leases`] as the leader's: live job leases, held by the local link of their
    /// device's agent, if any.
    fn follow_lease(&self, event: &Event, links: &FollowerLinks) {
        match event {
            Event::LeaseGranted {
                lease,
                epoch,
                holder: scheduler::Holder::Job(job),
                device,
                ..
            } => {
                let conn = self
                    .sched
                    .device(device)
                    .and_then(|d| links.conn_of(&d.agent));
                let info = LeaseInfo {
                    job: *job,
                    epoch: *epoch,
                    conn,
                    net: super::leases::net_of(&self.sched, *job),
                };
                self.leases.insert(*lease, info);
            }
            Event::LeaseReleased { lease, .. } => self.leases.remove(*lease),
            _ => {}
        }
    }

    /// [`Dispatcher::holds_job`] for this controller's links: the job's live lease is held by
    /// the current local link of `agent`, opened with token `token_id` (an agent fetches a
    /// job's artifacts from the controller it is linked to).
    fn link_holds_job(
        &self,
        job: JobId,
        agent: &str,
        token_id: &str,
        links: &FollowerLinks,
    ) -> bool {
        let Some(entry) = self.sched.job(job) else {
            return false;
        };
        let (Some(lease), Some(device)) = (entry.lease, entry.device.as_deref()) else {
            return false;
        };
        let Some(info) = self.leases.get(lease).filter(|i| i.job == job) else {
            return false;
        };
        if self.sched.device(device).is_none_or(|d| d.agent != agent) {
            return false;
        }
        info.conn
            .is_some_and(|holder| links.is_current(holder, agent, token_id))
    }

    /// One command on a follower: views from the replica, changes forwarded to the leader.
    async fn as_follower(
        &mut self,
        command: Command,
        hub: &Hub,
        applied: &watch::Receiver<u64>,
        links: &FollowerLinks,
    ) {
        let relay = |command: Forwarded| {
            let (store, hub, applied) = (self.store.clone(), hub.clone(), applied.clone());
            async move { forward::forward(&store, &hub, applied, command).await }
        };
        match command {
            Command::Submit { job, reply } => {
                let asked = relay(Forwarded::Submit { job });
                tokio::spawn(async move {
                    let _ = reply.send(job_answer(asked.await));
                });
            }
            Command::CheckDevice {
                device,
                viewer,
                reply,
            } => {
                let asked = relay(Forwarded::CheckDevice { device, viewer });
                tokio::spawn(async move {
                    let _ = reply.send(job_answer(asked.await));
                });
            }
            Command::Cancel { job, viewer, reply } => {
                let asked = relay(Forwarded::Cancel { job, viewer });
                tokio::spawn(async move {
                    let _ = reply.send(job_answer(asked.await));
                });
            }
            Command::AcquireLease { request, reply } => {
                let asked = relay(Forwarded::AcquireLease { request });
                tokio::spawn(async move {
                    let _ = reply.send(lease_answer(asked.await));
                });
            }
            Command::RenewLease {
                lease,
                viewer,
                ttl,
                reply,
            } => {
                let ttl_ms = ttl.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
                let asked = relay(Forwarded::RenewLease {
                    lease,
                    viewer,
                    ttl_ms,
                });
                tokio::spawn(async move {
                    let _ = reply.send(lease_answer(asked.await));
                });
            }
            Command::ReleaseLease {
                lease,
                viewer,
                reply,
            } => {
                let asked = relay(Forwarded::ReleaseLease { lease, viewer });
                tokio::spawn(async move {
                    let _ = reply.send(lease_answer(asked.await));
                });
            }
            Command::SetDeviceState {
                device,
                body,
                viewer,
                reply,
            } => {
                let asked = relay(Forwarded::SetDeviceState {
                    device,
                    body,
                    viewer,
                });
                tokio::spawn(async move {
                    let _ = reply.send(device_answer(asked.await));
                });
            }
            Command::EditDeviceTags {
                device,
                body,
                viewer,
                reply,
            } => {
                let asked = relay(Forwarded::EditDeviceTags {
                    device,
                    body,
                    viewer,
                });
                tokio::spawn(async move {
                    let _ = reply.send(device_answer(asked.await));
                });
            }
            Command::Audit {
                viewer,
                action,
                target,
                detail,
                reply,
            } => {
                let asked = relay(Forwarded::Audit {
                    viewer,
                    action,
                    target,
                    detail,
                });
                tokio::spawn(async move {
                    let _ = reply.send(match asked.await {
                        Ok(Answer::Done(result)) => result,
                        Ok(other) => Err(failure_of(other)),
                        Err(f) => Err(f),
                    });
                });
            }
            Command::Hello { hello, reply } => {
                // The link holds the leases of its agent's devices from now on, as on the
                // leader (the leader's answer decides whether the link lives).
                let mine: Vec<LeaseId> = hello
                    .devices
                    .iter()
                    .filter_map(|d| self.sched.device(&d.name))
                    .filter(|d| d.agent == hello.agent)
                    .flat_map(scheduler::DeviceEntry::leases)
                    .collect();
                self.leases.move_to(hello.conn, &mine);
                links.hello(hello, reply);
            }
            Command::FromAgent { conn, message, .. } => links.said(conn, message),
            Command::Gone { conn, .. } => links.gone(conn),
            Command::Relayed { reply, .. } => {
                let _ = reply.send(Err(Failure::Unavailable(
                    "a follower was handed a relayed agent message".into(),
                )));
            }
            Command::HoldsJob {
                job,
                agent,
                token_id,
                reply,
            } => {
                let _ = reply.send(self.link_holds_job(job, &agent, &token_id, links));
            }
            Command::HoldsSession { reply, .. } => {
                let _ = reply.send(SessionFetch::AtLeader);
            }
            Command::Session { reply, .. } => {
                let _ = reply.send(Err(Failure::Unavailable(
                    "this controller follows the leader of its database: power, flash and \
                     screenshots of people's leases go through the leading controller"
                        .into(),
                )));
            }
            Command::SessionRoute {
                lease,
                viewer,
                reply,
            } => {
                let at = self
                    .stream_target(lease, &viewer)
                    .map(|_| SessionAt::Leader);
                let _ = reply.send(at);
            }
            Command::StreamRoute {
                lease,
                viewer,
                reply,
            } => {
                // Here when this follower holds the agent's link, else at the controller that
                // does (the leader or another follower).
                let route = self
                    .stream_target(lease, &viewer)
                    .map(|(grant, epoch, agent)| {
                        let link = match links.conn_of(&agent) {
                            Some(conn) => LinkAt::Here(conn),
                            None => LinkAt::Elsewhere { agent },
                        };
                        StreamRoute { grant, epoch, link }
                    });
                let _ = reply.send(route);
            }
            Command::Forwarded { command, seq, .. } => {
                tracing::warn!("a follower was handed a forwarded command; refused");
                drop(command);
                drop(seq);
            }
            view @ (Command::Job { .. }
            | Command::Jobs { .. }
            | Command::Devices { .. }
            | Command::Agents { .. }
            | Command::DeviceTypes { .. }
            | Command::Lease { .. }
            | Command::PersonLeases { .. }
            | Command::Device { .. }) => {
                if let Err(e) = self.handle(view).await {
                    tracing::error!("follower: {e}");
                }
            }
        }
    }
}

/// The failure an answer of the wrong kind carries (a new leader answers an unanswered
/// command of any kind as a job's), or says that the kind was wrong.
fn failure_of(answer: Answer) -> Failure {
    match answer {
        Answer::Job(Err(f))
        | Answer::Lease(Err(f))
        | Answer::Device(Err(f))
        | Answer::Done(Err(f)) => f,
        _ => Failure::Unavailable("the leader answered with another kind of answer".into()),
    }
}

fn job_answer(answer: Result<Answer, Failure>) -> Result<JobView, Failure> {
    match answer? {
        Answer::Job(result) => result,
        other => Err(failure_of(other)),
    }
}

fn lease_answer(answer: Result<Answer, Failure>) -> Result<LeaseView, Failure> {
    match answer? {
        Answer::Lease(result) => result,
        other => Err(failure_of(other)),
    }
}

fn device_answer(answer: Result<Answer, Failure>) -> Result<proto::admin::DeviceDetail, Failure> {
    match answer? {
        Answer::Device(result) => result,
        other => Err(failure_of(other)),
    }
}
