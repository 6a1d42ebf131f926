//! Agent sessions: hello (names, device ownership, lease hand-over to the newer link), the
//! messages of a link (only the link holding a lease speaks for it), and job ends.

use super::*;

/// Heartbeat intervals without a word after which the controller closes an agent's link
/// (it is shown `silent` after [`SILENT_AFTER_HEARTBEATS`]).
pub const DROP_AFTER_HEARTBEATS: u32 = 4;
/// Heartbeat intervals without a word after which an agent is shown `silent`.
pub const SILENT_AFTER_HEARTBEATS: u32 = 2;

impl Dispatcher {
    pub(super) async fn hello(&mut self, hello: AgentHello) -> Result<(), String> {
        let AgentHello {
            conn,
            token_id,
            agent,
            version,
            protocol,
            devices,
            held,
            sessions,
            tx,
        } = hello;
        if protocol != PROTOCOL_VERSION {
            return Err(format!(
                "agent protocol {protocol} is not supported (this controller speaks {PROTOCOL_VERSION})"
            ));
        }
        check_names(&agent, &version, &devices)?;
        for d in &devices {
            if let Some(owner) = self.sched.device(&d.name).map(|e| e.agent.as_str())
                && owner != agent
            {
                return Err(format!(
                    "device {:?} is registered by agent {owner:?}; an agent registers only its own devices (rename the device, or run it under agent {owner:?})",
                    d.name
                ));
            }
        }
        // Sessions count as held too: a device whose ended session the agent still keeps
        // needs a check until the agent confirms its teardown.
        let pairs: Vec<(LeaseId, Epoch)> = held
            .iter()
            .map(|h| (h.lease, h.epoch))
            .chain(sessions.iter().map(|s| (s.lease, s.epoch)))
            .collect();
        let at = now();
        let events = self
            .sched
            .agent_connected(&agent, &devices, &pairs, at)
            .map_err(|r| r.to_string())?;
        // The new connection replaces any older one of the same agent, and holds its leases.
        let older = self.agents.insert(
            agent.clone(),
            AgentLink {
                conn: Some((conn, tx.clone())),
                token_id,
                version,
                last_seen: at,
                refusals: WarnLimit::new(),
            },
        );
        if let Some((old, _)) = older.and_then(|l| l.conn) {
            tracing::info!("agent {agent}: link {conn} replaces link {old}");
            self.close_link(
                old,
                &format!("replaced by a newer connection of agent {agent}"),
            );
        }
        let mine: Vec<LeaseId> = devices
            .iter()
            .filter_map(|d| self.sched.device(&d.name))
            .filter(|d| d.agent == agent)
            .flat_map(scheduler::DeviceEntry::leases)
            .collect();
        self.leases.move_to(conn, &mine);
        let mut resume = Vec::new();
        let mut dead = Vec::new();
        for h in &held {
            if self.sched.is_live(h.lease, h.epoch) {
                let stored = match self.leases.get(h.lease) {
                    Some(info) => self.logs.durable(info.job).await.unwrap_or(Seq(0)),
                    None => Seq(0),
                };
                resume.push(LogCursor {
                    lease: h.lease,
                    stored,
                });
            } else {
                dead.push((h.lease, h.epoch));
            }
        }
        let welcome = ControllerMessage::Welcome {
            protocol: PROTOCOL_VERSION,
            heartbeat_ms: u64::try_from(self.config.heartbeat.as_millis()).unwrap_or(5000),
            resume,
        };
        if tx.try_send(welcome).is_err() {
            return Err("connection closed during hello".into());
        }
        for (lease, epoch) in dead {
            let _ = tx.try_send(ControllerMessage::DropLease { lease, epoch });
        }
        self.sessions_after_hello(&agent, &sessions);
        tracing::info!("agent {agent} connected with {} device(s)", devices.len());
        self.commit(events, Vec::new(), None, None)
            .await
            .map_err(|e| e.to_string())
    }

    /// Watches agents that stopped speaking. After [`SILENT_AFTER_HEARTBEATS`] heartbeat
    /// intervals without a word an agent is silent: its idle devices take no new work (a
    /// job sent there would only wait a lease TTL), while its running jobs keep their leases
    /// (the TTL fences them, so a network hiccup does not turn into an infra error). After
    /// [`DROP_AFTER_HEARTBEATS`] intervals the link of an agent that runs no job is closed:
    /// its devices leave the pool until it dials back and registers them again.
    pub(super) async fn drop_silent_links(&mut self) {
        let heartbeat = self.config.heartbeat;
        let silent_after = heartbeat.saturating_mul(SILENT_AFTER_HEARTBEATS);
        let drop_after = heartbeat.saturating_mul(DROP_AFTER_HEARTBEATS);
        let at = now();
        let quiet: Vec<String> = self
            .agents
            .iter()
            .filter(|(_, l)| l.conn.is_some() && l.last_seen.plus(silent_after) < at)
            .map(|(name, _)| name.clone())
            .filter(|name| self.sched.agent_takes_work(name))
            .collect();
        for agent in quiet {
            tracing::warn!(
                "agent {agent}: nothing heard for {SILENT_AFTER_HEARTBEATS} heartbeat intervals; its idle devices take no new work until it speaks"
            );
            let events = self.sched.agent_silent(&agent, at);
            if let Err(e) = self.commit(events, Vec::new(), None, None).await {
                tracing::error!("agent {agent} silent: {e}");
            }
        }
        let runs_a_job = |agent: &str| {
            self.sched.devices().any(|d| {
                d.agent == agent
                    && d.leases()
                        .filter_map(|l| self.sched.lease(l))
                        .any(|l| l.job().is_some())
            })
        };
        let gone: Vec<(String, ConnId)> = self
            .agents
            .iter()
            .filter(|(_, l)| l.last_seen.plus(drop_after) < at)
            .filter(|(name, _)| !runs_a_job(name))
            .filter_map(|(name, l)| l.conn.as_ref().map(|(c, _)| (name.clone(), *c)))
            .collect();
        for (agent, conn) in gone {
            tracing::warn!(
                "agent {agent}: nothing heard for {DROP_AFTER_HEARTBEATS} heartbeat intervals; closing its link {conn}, its devices leave the pool"
            );
            self.close_link(
                conn,
                &format!("nothing heard for {DROP_AFTER_HEARTBEATS} heartbeat intervals"),
            );
            self.gone(conn, &agent).await;
        }
    }

    /// The link `conn` of `agent` closed; only the current link's close disconnects the agent.
    pub(super) async fn gone(&mut self, conn: ConnId, agent: &str) {
        let current = self
            .agents
            .get(agent)
            .and_then(|l| l.conn.as_ref())
            .is_some_and(|(c, _)| *c == conn);
        if current {
            if let Some(link) = self.agents.get_mut(agent) {
                link.conn = None;
                link.last_seen = now();
            }
            let events = self.sched.agent_disconnected(agent, now());
            tracing::info!("agent {agent} disconnected");
            if let Err(e) = self.commit(events, Vec::new(), None, None).await {
                tracing::error!("agent {agent} disconnected: {e}");
            }
        }
    }

    pub(super) async fn agent_said(&mut self, conn: ConnId, agent: &str, message: AgentMessage) {
        let current = self
            .agents
            .get(agent)
            .and_then(|l| l.conn.as_ref())
            .is_some_and(|(c, _)| *c == conn);
        if !current {
            tracing::debug!("agent {agent}: message from a replaced connection ignored");
            return;
        }
        let at = now();
        if let Some(link) = self.agents.get_mut(agent) {
            link.last_seen = at;
        }
        if self.sched.agent_presence(agent) == Some(AgentState::Silent) {
            tracing::info!("agent {agent}: heard again; its idle devices take work");
            let events = self.sched.agent_heard(agent, at);
            if let Err(e) = self.commit(events, Vec::new(), None, None).await {
                tracing::error!("agent {agent} heard: {e}");
            }
        }
        if let Some(lease) = lease_of(&message)
            && let Some(info) = self.leases.get(lease)
            && info.conn != Some(conn)
        {
            if let Some(link) = self.agents.get_mut(agent)
                && let Some(suppressed) = link.refusals.allow(Instant::now())
            {
                tracing::warn!(
                    "agent {agent} (link {conn}): {} refused: lease {lease} of job {} is not held by this link{}",
                    kind_of(&message),
                    info.job,
                    more(suppressed)
                );
            }
            return;
        }
        let result = match message {
            AgentMessage::Hello { .. } => {
                tracing::warn!("agent {agent}: second hello ignored");
                Ok(())
            }
            AgentMessage::Heartbeat => {
                let events = self.sched.heartbeat(agent, at);
                self.commit(events, Vec::new(), None, None).await
            }
            AgentMessage::JobStarted { lease, epoch } => {
                match self.sched.job_started(lease, epoch, at) {
                    Ok(events) => self.commit(events, Vec::new(), None, None).await,
                    Err(refusal) => {
                        self.refused(agent, lease, epoch, &refusal);
                        Ok(())
                    }
                }
            }
            AgentMessage::JobFinished {
                lease,
                epoch,
                report,
                last_seq,
            } => {
                self.job_finished(agent, lease, epoch, report, last_seq)
                    .await
            }
            AgentMessage::StartRefused {
                lease,
                epoch,
                reason,
            } => {
                tracing::warn!("agent {agent} refused lease {lease}: {reason}");
                match self.sched.start_refused(lease, epoch, at) {
                    Ok(events) => self.commit(events, Vec::new(), None, Some(lease)).await,
                    Err(refusal) => {
                        tracing::debug!("start refusal of lease {lease}: {refusal}");
                        Ok(())
                    }
                }
            }
            message @ (AgentMessage::SessionStarted { .. }
            | AgentMessage::SessionRefused { .. }
            | AgentMessage::SessionProgress { .. }
            | AgentMessage::SessionReply { .. }) => {
                self.session_said(agent, message);
                Ok(())
            }
            AgentMessage::DeviceReady { device } => {
                match self.sched.device_ready(agent, &device, at) {
                    Ok(events) => self.commit(events, Vec::new(), None, None).await,
                    Err(refusal @ Refusal::NotYourDevice { .. }) => {
                        if let Some(link) = self.agents.get_mut(agent)
                            && let Some(suppressed) = link.refusals.allow(Instant::now())
                        {
                            tracing::warn!(
                                "agent {agent} (link {conn}): device-ready refused: {refusal}{}",
                                more(suppressed)
                            );
                        }
                        Ok(())
                    }
                    Err(refusal) => {
                        tracing::debug!("agent {agent}: device ready {device}: {refusal}");
                        Ok(())
                    }
                }
            }
            AgentMessage::MultinodeCall {
                lease,
                epoch,
                seq,
                call,
            } => self.multinode_call(agent, lease, epoch, seq, call).await,
            // The link routes these to their streams; they never reach the dispatcher.
            AgentMessage::StreamOpened { .. }
            | AgentMessage::StreamRefused { .. }
            | AgentMessage::StreamCredit { .. }
            | AgentMessage::StreamClosed { .. } => Ok(()),
        };
        if let Err(e) = result {
            tracing::error!("agent {agent}: {e}");
        }
    }

    pub(super) fn refused(&self, agent: &str, lease: LeaseId, epoch: Epoch, refusal: &Refusal) {
        tracing::debug!("agent {agent}: lease {lease}: {refusal}");
        if !self.sched.is_live(lease, epoch) {
            self.send(agent, ControllerMessage::DropLease { lease, epoch });
        }
    }

    pub(super) async fn job_finished(
        &mut self,
        agent: &str,
        lease: LeaseId,
        epoch: Epoch,
        mut report: JobReport,
        last_seq: Seq,
    ) -> Result<(), ControllerError> {
        let Some(info) = self.leases.get(lease).filter(|i| i.epoch == epoch) else {
            // Already ended by the controller: the agent tears down and reports the device.
            tracing::debug!(
                "agent {agent}: finish of lease {lease} (epoch {epoch}), which is no longer live here; dropped"
            );
            self.send(agent, ControllerMessage::DropLease { lease, epoch });
            return Ok(());
        };
        let at = now();
        let events =
            match self
                .sched
                .job_finished(lease, epoch, report.outcome, report.reason.clone(), at)
            {
                Ok(events) => events,
                Err(refusal) => {
                    self.refused(agent, lease, epoch, &refusal);
                    return Ok(());
                }
            };
        if let Some(entry) = self.sched.job(info.job)
            && let Some(outcome) = entry.outcome
            && outcome != report.outcome
        {
            report.outcome = outcome;
            report.reason = entry.reason.clone();
        }
        let stored = self.logs.last(info.job).await.unwrap_or(Seq(0));
        if stored < last_seq
            && let Err(e) = self
                .logs
                .note(
                    info.job,
                    LogKind::Gap,
                    format!(
                        "log records {} to {} never arrived",
                        stored.0 + 1,
                        last_seq.0
                    ),
                    at,
                )
                .await
        {
            tracing::error!("{e}");
        }
        let last = self.final_note(info.job, &report, at).await;
        // The agent deletes its spool on `FinishAcked`: every record must be on disk first.
        if let Err(e) = self.logs.sync(info.job) {
            tracing::error!("{e}");
        }
        self.commit(events, vec![(info.job, report, last)], None, Some(lease))
            .await?;
        self.send(agent, ControllerMessage::FinishAcked { lease, epoch });
        Ok(())
    }
}

/// The lease an agent message is about, if any.
fn lease_of(message: &AgentMessage) -> Option<LeaseId> {
    match message {
        AgentMessage::JobStarted { lease, .. }
        | AgentMessage::JobFinished { lease, .. }
        | AgentMessage::StartRefused { lease, .. }
        | AgentMessage::MultinodeCall { lease, .. } => Some(*lease),
        AgentMessage::Hello { .. }
        | AgentMessage::Heartbeat
        | AgentMessage::DeviceReady { .. }
        | AgentMessage::StreamOpened { .. }
        | AgentMessage::StreamRefused { .. }
        | AgentMessage::StreamCredit { .. }
        | AgentMessage::StreamClosed { .. } => None,
        AgentMessage::SessionStarted { .. }
        | AgentMessage::SessionRefused { .. }
        | AgentMessage::SessionProgress { .. }
        | AgentMessage::SessionReply { .. } => None,
    }
}

/// The wire name of an agent message, for logs.
fn kind_of(message: &AgentMessage) -> &'static str {
    match message {
        AgentMessage::Hello { .. } => "hello",
        AgentMessage::Heartbeat => "heartbeat",
        AgentMessage::JobStarted { .. } => "job-started",
        AgentMessage::JobFinished { .. } => "job-finished",
        AgentMessage::StartRefused { .. } => "start-refused",
        AgentMessage::DeviceReady { .. } => "device-ready",
        AgentMessage::StreamOpened { .. } => "stream-opened",
        AgentMessage::StreamRefused { .. } => "stream-refused",
        AgentMessage::StreamCredit { .. } => "stream-credit",
        AgentMessage::StreamClosed { .. } => "stream-closed",
        AgentMessage::SessionStarted { .. } => "session-started",
        AgentMessage::SessionRefused { .. } => "session-refused",
        AgentMessage::SessionProgress { .. } => "session-progress",
        AgentMessage::SessionReply { .. } => "session-reply",
        AgentMessage::MultinodeCall { .. } => "multinode-call",
    }
}

/// Names in a hello reach logs and paths: agent and device names must be safe names
/// (`proto::names`), labels free of control characters. The refusal escapes what it shows.
fn check_names(
    agent: &str,
    version: &str,
    devices: &[proto::link::DeviceInfo],
) -> Result<(), String> {
    use proto::names::{check_label, check_name};
    check_name(agent).map_err(|e| format!("agent name: {e}"))?;
    check_label(version).map_err(|e| format!("agent version: {e}"))?;
    for d in devices {
        check_name(&d.name).map_err(|e| format!("device name: {e}"))?;
        check_label(&d.device_type).map_err(|e| format!("device {}: device_type: {e}", d.name))?;
        for label in d.tags.iter().chain(&d.capabilities) {
            check_label(label).map_err(|e| format!("device {}: tag: {e}", d.name))?;
        }
    }
    Ok(())
}
