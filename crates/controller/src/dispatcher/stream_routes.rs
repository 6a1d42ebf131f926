//! Where a person's stream goes: the lease's grant and the link of its device's agent.
//!
//! Invariants:
//! - Only a viewer who may use the lease ([`policy::may_use_lease`]: its holder, admins) gets
//!   a route; others get 403 and nothing is opened. An ended lease is 410, a waiting one 409.
//! - The route names the agent's current link when this controller holds it; a stream
//!   opened on it is closed with the lease ([`crate::streams::Streams::close_lease`], from the
//!   effects of the lease's end on the leader, from the applied events on a follower) and
//!   with the link. When another controller holds the link, the route says so and the API
//!   redirects the client there (after the same checks here: the holder checks again).
//! - Power, flash and screenshots are the leader's ([`SessionAt`]): it asks the agent on its
//!   own link or through the follower relaying it. A follower sends a caller who may use
//!   the held lease to the leader; others get the same 403, 409 or 410 as on the leader.

use super::*;
use proto::PersonLeaseState;

/// Where a stream of a person's lease is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRoute {
    /// The grant's fencing id, which the agent knows the lease by.
    pub grant: LeaseId,
    pub epoch: Epoch,
    /// Where the link of the device's agent is.
    pub link: LinkAt,
}

/// Where a request of a person's lease to its device (power, flash, screenshot) is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionAt {
    /// This controller leads: it asks the agent.
    Here,
    /// This controller follows: the leader asks the agent.
    Leader,
}

/// Where an agent's link is, seen from this controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkAt {
    /// This controller holds it: the current link.
    Here(ConnId),
    /// Another controller of the database holds it (a follower, or the leader as seen from
    /// a follower): the stream is opened there.
    Elsewhere { agent: String },
}

impl Dispatcher {
    /// The lease's grant and the agent of its device, if `viewer` may use it and it is held.
    pub(super) fn stream_target(
        &self,
        id: PersonLeaseId,
        viewer: &Viewer,
    ) -> Result<(LeaseId, Epoch, String), Failure> {
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
        if !self.sched.agent_is_connected(&agent) {
            return Err(not_connected(device, &agent));
        }
        Ok((grant, epoch, agent))
    }

    /// On the leader: here when it holds the agent's link itself, elsewhere when a follower
    /// relays it.
    pub(super) async fn stream_route(
        &mut self,
        id: PersonLeaseId,
        viewer: &Viewer,
    ) -> Result<StreamRoute, Failure> {
        self.expire_due().await?;
        let (grant, epoch, agent) = self.stream_target(id, viewer)?;
        let link = match self.agents.get(&agent).and_then(|a| a.conn.as_ref()) {
            Some((conn, _)) if self.remote.holds(*conn) => LinkAt::Elsewhere { agent },
            Some((conn, _)) => LinkAt::Here(*conn),
            None => {
                return Err(Failure::Unavailable(format!(
                    "lease {id}: the agent {agent} of its device is not connected; try again when it is"
                )));
            }
        };
        Ok(StreamRoute { grant, epoch, link })
    }
}

pub(super) fn not_connected(device: &str, agent: &str) -> Failure {
    Failure::Unavailable(format!(
        "device {device}: its agent {agent} is not connected; try again when it is"
    ))
}
