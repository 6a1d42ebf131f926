//! The live leases, shared with the agent links so that log frames are routed without asking
//! the dispatcher. Only live leases are here; each is held by at most one agent link.

use super::ConnId;
use proto::{Epoch, JobId, LeaseId};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// What a live lease is about, for routing log frames without asking the dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseInfo {
    pub job: JobId,
    pub epoch: Epoch,
    /// The agent link that holds the lease (`None`: its agent has not said hello since the
    /// controller started).
    pub conn: Option<ConnId>,
    /// The MultiNode group whose network the lease's DUT is on (a sub-job with a device of
    /// its own; see [`net_of`]).
    pub net: Option<JobId>,
}

/// The group network of `job`'s DUT: its group, unless it is a secondary connection (which
/// has no DUT of its own) or no sub-job.
pub fn net_of(sched: &scheduler::Scheduler, job: JobId) -> Option<JobId> {
    sched
        .group_of(job)
        .filter(|g| g.host.is_none())
        .map(|g| g.id)
}

/// A lease a group frame goes to: one per link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub lease: LeaseId,
    pub epoch: Epoch,
    pub conn: ConnId,
}

/// Live leases, shared with the agent links.
#[derive(Debug, Clone, Default)]
pub struct Leases(Arc<RwLock<HashMap<LeaseId, LeaseInfo>>>);

impl Leases {
    pub fn get(&self, lease: LeaseId) -> Option<LeaseInfo> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&lease)
            .copied()
    }
    pub(super) fn insert(&self, lease: LeaseId, info: LeaseInfo) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(lease, info);
    }
    /// Moves these live leases to link `conn`.
    pub(super) fn move_to(&self, conn: ConnId, leases: &[LeaseId]) {
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        for lease in leases {
            if let Some(info) = map.get_mut(lease) {
                info.conn = Some(conn);
            }
        }
    }
    /// Forgets every lease (a dispatcher starting from the database).
    pub(super) fn clear(&self) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).clear();
    }
    /// Where a group frame from `lease` (with `epoch`, on link `from`) goes: one lease of the
    /// same group network on each other link. Refused unless `lease` is live, of that epoch,
    /// held by `from` and on a group network.
    pub fn peers(&self, lease: LeaseId, epoch: Epoch, from: ConnId) -> Result<Vec<Peer>, String> {
        let map = self.0.read().unwrap_or_else(|p| p.into_inner());
        let Some(info) = map.get(&lease) else {
            return Err(format!("group frame for lease {lease}, which is not live"));
        };
        if info.epoch != epoch || info.conn != Some(from) {
            return Err(format!(
                "group frame for lease {lease} (epoch {epoch}), which this link does not hold"
            ));
        }
        let Some(net) = info.net else {
            return Err(format!(
                "group frame for lease {lease}, which is on no group network"
            ));
        };
        let mut peers: Vec<Peer> = map
            .iter()
            .filter(|(_, i)| i.net == Some(net))
            .filter_map(|(l, i)| {
                let conn = i.conn.filter(|c| *c != from)?;
                Some(Peer {
                    lease: *l,
                    epoch: i.epoch,
                    conn,
                })
            })
            .collect();
        peers.sort_by_key(|p| (p.conn, p.lease));
        peers.dedup_by_key(|p| p.conn);
        Ok(peers)
    }

    pub(super) fn remove(&self, lease: LeaseId) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&lease);
    }
}
