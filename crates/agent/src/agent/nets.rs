//! The main loop's side of group networks that span agents (see [`crate::bridge`]): one
//! bridge per group with sub-jobs here, opened by the first and closed with the last; frames
//! heard go up named by one of the group's running leases, frames from the controller go
//! down only for a running lease of this agent on that group's network.

use super::*;
use crate::bridge::{Bridge, Heard};

/// The bridges of the groups with sub-jobs here, and how many of their sub-jobs run here.
#[derive(Debug, Default)]
pub(super) struct Nets {
    bridges: BTreeMap<JobId, (Option<Bridge>, usize)>,
}

impl Agent {
    /// A sub-job with a DUT of group `group` starts here.
    pub(super) fn join_net(&mut self, group: JobId) {
        let segment = runner::multinode::segment_of(&self.group_salt, group.0);
        let up = self.heard_tx.clone();
        let entry = self.nets.bridges.entry(group).or_insert_with(|| {
            let bridge = Bridge::open(group, segment, up)
                .inspect_err(|e| {
                    tracing::warn!(
                        "group {group}: no bridge to other agents on {segment}: {e} (its \
                         network joins this agent's sub-jobs only)"
                    );
                })
                .ok();
            (bridge, 0)
        });
        entry.1 += 1;
    }

    /// The job of `lease` ended: its group's bridge closes with the group's last sub-job here
    /// (once per lease: the lease forgets its network).
    pub(super) fn leave_net(&mut self, lease: LeaseId) {
        let Some(group) = self.leases.get_mut(&lease).and_then(|l| l.net.take()) else {
            return;
        };
        if let Some(entry) = self.nets.bridges.get_mut(&group) {
            entry.1 = entry.1.saturating_sub(1);
            if entry.1 == 0 {
                self.nets.bridges.remove(&group);
            }
        }
    }

    /// Sends a frame heard on a group's segment, as one of the group's running leases here.
    pub(super) async fn send_heard(
        &mut self,
        heard: Heard,
        link: &mut Link,
    ) -> Result<(), LinkDown> {
        let Some((lease, l)) = self.leases.iter().find(|(_, l)| {
            l.net == Some(heard.group) && matches!(l.state, LeaseState::Running { .. })
        }) else {
            return Ok(());
        };
        let frame = proto::link::GroupFrame {
            lease: *lease,
            epoch: l.epoch,
            frame: &heard.frame,
        };
        link.send_frame(frame.encode()).await
    }

    /// A frame from the controller for `frame.lease`'s group network.
    pub(super) fn deliver(&self, frame: &proto::link::GroupFrame<'_>) {
        let Some(group) = self
            .leases
            .get(&frame.lease)
            .filter(|l| l.epoch == frame.epoch && matches!(l.state, LeaseState::Running { .. }))
            .and_then(|l| l.net)
        else {
            tracing::debug!(lease = %frame.lease, "ignoring a group frame for no running sub-job");
            return;
        };
        if let Some((Some(bridge), _)) = self.nets.bridges.get(&group) {
            bridge.deliver(frame.frame);
        }
    }
}
