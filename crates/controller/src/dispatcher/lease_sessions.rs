//! Sessions: the agent's side of people's leases. A granted person's lease is told to its
//! device's agent (`StartSession`); requests of its holder (power, flash, screenshot) are
//! forwarded under a request id and answered when the agent replies; its end is a
//! `DropLease`, after which the device needs a check until the agent says `DeviceReady`.
//!
//! Invariants:
//! - Only live person grants are in `Dispatcher::grants`: added at the grant (and rebuilt at
//!   load), removed at their `LeaseReleased`, whose effect drops the session on the agent and
//!   answers the requests still waiting on it with 410.
//! - `StartSession` is sent at the grant and again after every hello of the device's agent,
//!   so a reconnected or restarted agent (and a restarted controller's agents) keep or get
//!   back every live session. A session the agent lists in its hello that is no longer live
//!   gets a `DropLease`.
//! - Who may ask is decided by [`policy::may_use_lease`] only (403 otherwise); an ended lease
//!   is 410, a waiting one 409, an absent agent 503.
//! - A session message counts only from the current link of the agent of the lease's device,
//!   with the lease's epoch; anything else is ignored (logged, rate-limited).
//! - The agent may fetch an artifact for a session only while a flash request of that
//!   session names it (`HoldsSession`), on the link the session is held by, with the token
//!   that opened it. A follower knows no flash in flight: it sends the agent to the leader
//!   ([`SessionFetch::AtLeader`]), which checks the relayed link as its own.

use super::*;
use proto::PersonLeaseState;
use proto::link::HeldSession;
use proto::session::{RequestId, SessionAction, SessionResult};
use std::collections::BTreeSet;

/// Whether an agent may fetch an artifact for a session, as this controller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionFetch {
    /// A flash of the session names the artifact, on the link and token that hold it.
    Allowed,
    Refused,
    /// This controller follows: only the leader knows the flashes in flight.
    AtLeader,
}

/// A live person grant, as the dispatcher tells agents about it.
#[derive(Debug, Clone)]
pub(super) struct Grant {
    pub(super) person: PersonLeaseId,
    pub(super) epoch: Epoch,
    pub(super) device: String,
    pub(super) session: SessionState,
    /// Artifacts the agent may fetch for this session (named by a flash in flight).
    pub(super) fetchable: BTreeSet<String>,
}

/// What the agent said about the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SessionState {
    /// `StartSession` sent, no answer yet.
    Asked,
    Started,
    Refused(String),
}

/// A request waiting for its agent's reply.
pub(super) struct Pending {
    pub(super) lease: LeaseId,
    pub(super) reply: oneshot::Sender<Result<SessionResult, Failure>>,
    /// For a flash: its digest (fetchable while pending).
    pub(super) artifact: Option<String>,
    /// Where the agent's progress reports go.
    pub(super) progress: Option<Progress>,
}

impl Dispatcher {
    /// Rebuilds the live person grants from the scheduler (at load).
    pub(super) fn load_grants(&mut self) {
        for lease in self.sched.leases() {
            if let Some(p) = lease.holder.person() {
                self.grants.insert(
                    lease.id,
                    Grant {
                        person: p.lease,
                        epoch: lease.epoch,
                        device: lease.device.clone(),
                        session: SessionState::Asked,
                        fetchable: BTreeSet::new(),
                    },
                );
            }
        }
    }

    /// A person got a device: remember the grant and tell the agent.
    pub(super) fn session_granted(
        &mut self,
        lease: LeaseId,
        epoch: Epoch,
        person: PersonLeaseId,
        device: &str,
    ) {
        self.grants.insert(
            lease,
            Grant {
                person,
                epoch,
                device: device.to_owned(),
                session: SessionState::Asked,
                fetchable: BTreeSet::new(),
            },
        );
        self.start_session(lease);
    }

    fn start_session(&self, lease: LeaseId) {
        let Some(g) = self.grants.get(&lease) else {
            return;
        };
        let ssh_keys = self
            .sched
            .person_lease(g.person)
            .map(|p| p.ssh_keys.clone())
            .unwrap_or_default();
        self.send_to_device(
            &g.device,
            ControllerMessage::StartSession {
                lease,
                epoch: g.epoch,
                device: g.device.clone(),
                ssh_keys,
            },
        );
    }

    /// A person's grant ended: the agent drops the session (DUT off, then `DeviceReady`),
    /// and requests still waiting are answered 410.
    pub(super) fn session_released(&mut self, lease: LeaseId) {
        let Some(g) = self.grants.remove(&lease) else {
            return;
        };
        self.send_to_device(
            &g.device,
            ControllerMessage::DropLease {
                lease,
                epoch: g.epoch,
            },
        );
        let ended: Vec<RequestId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.lease == lease)
            .map(|(id, _)| *id)
            .collect();
        for id in ended {
            if let Some(p) = self.pending.remove(&id) {
                let _ = p.reply.send(Err(Failure::Gone(format!(
                    "lease {} ended while its device was working on the request",
                    g.person
                ))));
            }
        }
    }

    /// After a hello: sessions the agent keeps that are no longer live are dropped; every
    /// live person grant on its devices is told again (a restarted agent lost its session:
    /// it starts a fresh one, DUT off).
    pub(super) fn sessions_after_hello(&mut self, agent: &str, held: &[HeldSession]) {
        for h in held {
            if !self.sched.is_live(h.lease, h.epoch) {
                self.send(
                    agent,
                    ControllerMessage::DropLease {
                        lease: h.lease,
                        epoch: h.epoch,
                    },
                );
            }
        }
        let mine: Vec<LeaseId> = self
            .grants
            .iter()
            .filter(|(_, g)| {
                self.sched
                    .device(&g.device)
                    .is_some_and(|d| d.agent == agent)
            })
            .map(|(id, _)| *id)
            .collect();
        for lease in mine {
            let kept = held.iter().any(|h| h.lease == lease);
            if let Some(g) = self.grants.get_mut(&lease) {
                if !kept {
                    tracing::warn!(
                        "agent {agent} no longer keeps the session of lease {} on {} (it restarted: the DUT was powered off); starting it again",
                        g.person,
                        g.device
                    );
                }
                g.session = SessionState::Asked;
            }
            self.start_session(lease);
        }
    }

    /// The grant a session message of `agent` is about, if it counts (right epoch, a device
    /// of this agent); otherwise logs and, for a lease that is not live, drops it.
    fn grant_of(&mut self, agent: &str, lease: LeaseId, epoch: Epoch, what: &str) -> bool {
        let fits = self.grants.get(&lease).is_some_and(|g| {
            g.epoch == epoch
                && self
                    .sched
                    .device(&g.device)
                    .is_some_and(|d| d.agent == agent)
        });
        if !fits {
            if let Some(link) = self.agents.get_mut(agent)
                && let Some(suppressed) = link.refusals.allow(Instant::now())
            {
                tracing::warn!(
                    "agent {agent}: {what} ignored: lease {lease} (epoch {epoch}) is no live session on its devices{}",
                    more(suppressed)
                );
            }
            if !self.sched.is_live(lease, epoch) {
                self.send(agent, ControllerMessage::DropLease { lease, epoch });
            }
        }
        fits
    }

    /// A session message from the current link of `agent`.
    pub(super) fn session_said(&mut self, agent: &str, message: AgentMessage) {
        match message {
            AgentMessage::SessionStarted { lease, epoch } => {
                if self.grant_of(agent, lease, epoch, "session-started")
                    && let Some(g) = self.grants.get_mut(&lease)
                {
                    tracing::info!(
                        "lease {}: agent {agent} keeps {} for it",
                        g.person,
                        g.device
                    );
                    g.session = SessionState::Started;
                }
            }
            AgentMessage::SessionRefused {
                lease,
                epoch,
                reason,
            } => {
                if self.grant_of(agent, lease, epoch, "session-refused")
                    && let Some(g) = self.grants.get_mut(&lease)
                {
                    let reason: String = reason.chars().take(500).collect();
                    tracing::warn!(
                        "lease {}: agent {agent} cannot keep {}: {}",
                        g.person,
                        g.device,
                        reason.escape_debug()
                    );
                    g.session = SessionState::Refused(reason);
                }
            }
            AgentMessage::SessionProgress {
                lease,
                epoch,
                request,
                done,
                total,
            } => {
                let counts = self.grant_of(agent, lease, epoch, "session-progress");
                if counts {
                    tracing::debug!("lease {lease}: request {request}: {done} of {total} bytes");
                    if let Some(p) = self.pending.get(&request).filter(|p| p.lease == lease)
                        && let Some(progress) = &p.progress
                    {
                        progress.send_replace((done, total));
                    }
                }
            }
            AgentMessage::SessionReply {
                lease,
                epoch,
                request,
                result,
            } => {
                if !self.grant_of(agent, lease, epoch, "session-reply") {
                    return;
                }
                let ours = self.pending.get(&request).is_some_and(|p| p.lease == lease);
                if !ours {
                    tracing::debug!("agent {agent}: reply to request {request} nobody waits for");
                    return;
                }
                if let Some(p) = self.pending.remove(&request) {
                    if let (Some(digest), Some(g)) = (&p.artifact, self.grants.get_mut(&lease)) {
                        g.fetchable.remove(digest);
                    }
                    let _ = p.reply.send(Ok(result));
                }
            }
            _ => {}
        }
    }

    /// Forwards `action` of `viewer` on person's lease `id` to its agent; `reply` is answered
    /// with the agent's result, or at once with why not.
    pub(super) async fn session_request(
        &mut self,
        id: PersonLeaseId,
        viewer: &Viewer,
        action: SessionAction,
        progress: Option<Progress>,
        reply: oneshot::Sender<Result<SessionResult, Failure>>,
    ) {
        match self.check_session(id, viewer).await {
            Err(failure) => {
                let _ = reply.send(Err(failure));
            }
            Ok((lease, epoch, device)) => {
                self.pending.retain(|_, p| !p.reply.is_closed());
                self.next_request += 1;
                let request = RequestId(self.next_request);
                let artifact = match &action {
                    SessionAction::Flash { sha256, .. } => Some(sha256.clone()),
                    _ => None,
                };
                if let (Some(digest), Some(g)) = (&artifact, self.grants.get_mut(&lease)) {
                    g.fetchable.insert(digest.clone());
                }
                tracing::info!("lease {id}: request {request} to {device}: {action:?}");
                self.pending.insert(
                    request,
                    Pending {
                        lease,
                        reply,
                        artifact,
                        progress,
                    },
                );
                self.send_to_device(
                    &device,
                    ControllerMessage::SessionRequest {
                        lease,
                        epoch,
                        request,
                        action,
                    },
                );
            }
        }
    }

    /// The live grant of a lease `viewer` may use, whose agent is there to ask.
    async fn check_session(
        &mut self,
        id: PersonLeaseId,
        viewer: &Viewer,
    ) -> Result<(LeaseId, Epoch, String), Failure> {
        self.expire_due().await?;
        let view = self.usable_lease(id, viewer)?;
        match view.state {
            PersonLeaseState::Ended => return Err(Self::ended(&view)),
            PersonLeaseState::Waiting => {
                return Err(Failure::Conflict(format!(
                    "lease {id} is still waiting for a device (position {})",
                    view.position.unwrap_or_default()
                )));
            }
            PersonLeaseState::Held => {}
        }
        let (lease, g) = self
            .grants
            .iter()
            .find(|(_, g)| g.person == id)
            .ok_or_else(|| Failure::Unavailable(format!("lease {id} has no live grant")))?;
        let agent = self
            .sched
            .device(&g.device)
            .map(|d| d.agent.clone())
            .unwrap_or_default();
        let connected = self.agents.get(&agent).is_some_and(|l| l.conn.is_some());
        if !connected {
            return Err(Failure::Unavailable(format!(
                "agent {agent} of device {} is not connected; try again when it is back",
                g.device
            )));
        }
        if let SessionState::Refused(reason) = &g.session {
            return Err(Failure::Unavailable(format!(
                "agent {agent} cannot keep device {} for lease {id}: {reason}",
                g.device
            )));
        }
        Ok((*lease, g.epoch, g.device.clone()))
    }

    /// Whether the current link of `agent`, opened with `token_id`, keeps the live session
    /// `lease` and a flash of it names artifact `sha256`.
    pub(super) fn holds_session(
        &self,
        lease: LeaseId,
        sha256: &str,
        agent: &str,
        token_id: &str,
    ) -> SessionFetch {
        let Some(g) = self.grants.get(&lease) else {
            return SessionFetch::Refused;
        };
        let held = g.fetchable.contains(sha256)
            && self
                .sched
                .device(&g.device)
                .is_some_and(|d| d.agent == agent)
            && self
                .agents
                .get(agent)
                .is_some_and(|l| l.conn.is_some() && l.token_id == token_id);
        if held {
            SessionFetch::Allowed
        } else {
            SessionFetch::Refused
        }
    }
}
