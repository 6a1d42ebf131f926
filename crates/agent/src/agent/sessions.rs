//! The main loop's handling of sessions (people's leases): their start, the notes of their
//! tasks, and which session a controller message may speak about. The session task itself is
//! [`crate::session`]; the state it changes is the main loop's ([`super::Agent`]).

use super::*;

impl Agent {
    pub(super) async fn on_session_note(
        &mut self,
        note: SessionNote,
        link: Option<&mut Link>,
    ) -> Result<(), LinkDown> {
        let message = match note {
            SessionNote::Reply {
                lease,
                epoch,
                request,
                result,
            } => AgentMessage::SessionReply {
                lease,
                epoch,
                request,
                result,
            },
            SessionNote::Progress {
                lease,
                epoch,
                request,
                done,
                total,
            } => AgentMessage::SessionProgress {
                lease,
                epoch,
                request,
                done,
                total,
            },
            SessionNote::Ended { lease } => {
                let Some(s) = self.sessions.remove(&lease) else {
                    return Ok(());
                };
                if self.devices.get(&s.device) == Some(&Slot::Busy(lease)) {
                    self.devices.insert(s.device.clone(), Slot::Idle);
                }
                self.ready_unsent.insert(s.device);
                return match link {
                    Some(link) => self.send_ready(link).await,
                    None => Ok(()),
                };
            }
        };
        match link {
            Some(link) => link.send(&message).await,
            None => Ok(()),
        }
    }

    /// `StartSession`: keep the device for a person's lease (a repeat is answered again).
    pub(super) async fn start_session(
        &mut self,
        id: LeaseId,
        epoch: Epoch,
        device: String,
        ssh_keys: Vec<String>,
        link: &mut Link,
    ) -> Result<(), LinkDown> {
        let refuse = |reason: String| AgentMessage::SessionRefused {
            lease: id,
            epoch,
            reason,
        };
        if let Some(s) = self.sessions.get(&id) {
            if s.epoch == epoch && s.device == device && !s.is_ending() {
                return link
                    .send(&AgentMessage::SessionStarted { lease: id, epoch })
                    .await;
            }
            tracing::debug!(lease = %id, "ignoring start-session for a session held otherwise");
            return Ok(());
        }
        if self.leases.contains_key(&id) {
            tracing::debug!(lease = %id, "ignoring start-session for a job's lease");
            return Ok(());
        }
        let spec = match self.admit(&device, false) {
            Ok(spec) => spec,
            Err(reason) => return link.send(&refuse(reason)).await,
        };
        let keys = match proto::session::check_public_keys(&ssh_keys) {
            Ok(keys) => keys,
            Err(e) => return link.send(&refuse(format!("ssh_keys{e}"))).await,
        };
        let start = SessionStart {
            agent: self.config.name.clone(),
            lease: id,
            epoch,
            device: spec,
            dir: self.config.device_dir(&device).join("session"),
            ssh_keys: keys,
            artifacts: self.artifacts.clone(),
        };
        let handle = session::spawn(start, self.notes_tx.clone());
        self.sessions.insert(id, handle);
        self.devices.insert(device.clone(), Slot::Busy(id));
        tracing::info!(lease = %id, %device, %epoch, "session started: the device is kept for a person");
        link.send(&AgentMessage::SessionStarted { lease: id, epoch })
            .await
    }

    /// The session if it is ours under this epoch; otherwise a debug line.
    pub(super) fn known_session(
        &mut self,
        id: LeaseId,
        epoch: Epoch,
        what: &str,
    ) -> Option<&mut SessionHandle> {
        match self.sessions.get_mut(&id) {
            Some(s) if s.epoch == epoch => Some(s),
            Some(s) => {
                tracing::debug!(lease = %id, "ignoring {what} for epoch {epoch} (the session has {})", s.epoch);
                None
            }
            None => {
                tracing::debug!(lease = %id, "ignoring {what} for an unknown session");
                None
            }
        }
    }
}
