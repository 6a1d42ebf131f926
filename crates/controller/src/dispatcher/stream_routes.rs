//! Where a person's stream goes: the lease's grant and the link of its device's agent.
//!
//! Invariants:
//! - Only a viewer who may use the lease ([`policy::may_use_lease`]: its holder, admins) gets
//!   a route; others get 403 and nothing is opened. An ended lease is 410, a waiting one 409.
//! - The route names the agent's current link; a stream opened on it is closed with the lease
//!   ([`crate::streams::Streams::close_lease`], from the effects of the lease's end) and with
//!   the link.

use super::*;
use proto::PersonLeaseState;

/// Where a stream of a person's lease is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamRoute {
    /// The grant's fencing id, which the agent knows the lease by.
    pub grant: LeaseId,
    pub epoch: Epoch,
    /// The current link of the device's agent.
    pub conn: ConnId,
}

impl Dispatcher {
    pub(super) async fn stream_route(
        &mut self,
        id: PersonLeaseId,
        viewer: &Viewer,
    ) -> Result<StreamRoute, Failure> {
        self.expire_due().await?;
        let view = self.usable_lease(id, viewer)?;
        match view.state {
            PersonLeaseState::Ended => return Err(Self::ended(&view)),
            PersonLeaseState::Waiting => {
                return Err(Failure::Conflict(format!(
                    "lease {id} is still waiting for a device{}; wait with `dutlab lease show {id}` or `lease acquire --wait`",
                    view.position
                        .map_or(String::new(), |p| format!(" (position {p})"))
                )));
            }
            PersonLeaseState::Held => {}
        }
        let (Some(grant), Some(device)) = (
            self.sched.person_lease(id).and_then(|p| p.lease),
            view.device.as_deref(),
        ) else {
            return Err(Failure::Unavailable(format!(
                "lease {id} is held but names no device"
            )));
        };
        let epoch =
            self.sched.lease(grant).map(|l| l.epoch).ok_or_else(|| {
                Failure::Unavailable(format!("lease {id}: its grant is not live"))
            })?;
        let agent = self
            .sched
            .device(device)
            .map(|d| d.agent.clone())
            .ok_or_else(|| Failure::Unavailable(format!("device {device} is not registered")))?;
        match self.agents.get(&agent).and_then(|a| a.conn.as_ref()) {
            Some((conn, _)) => Ok(StreamRoute {
                grant,
                epoch,
                conn: *conn,
            }),
            None => Err(Failure::Unavailable(format!(
                "device {device}: its agent {agent} is not connected; try again when it is"
            ))),
        }
    }
}
