//! The live leases, shared with the agent links so that log frames are routed without asking
//! the dispatcher. Only live leases are here; each is held by at most one agent link.

use super::ConnId;
use proto::{Epoch, JobId, LeaseId};
use std::collections::{BTreeSet, HashMap};
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
pub struct Leases(Arc<RwLock<Inner>>);

#[derive(Debug, Default)]
struct Inner {
    leases: HashMap<LeaseId, LeaseInfo>,
    /// The leases of each group network (`LeaseInfo::net`), so a frame finds its peers
    /// without a scan of every lease.
    nets: HashMap<JobId, BTreeSet<LeaseId>>,
}

impl Inner {
    fn forget(&mut self, lease: LeaseId) {
        let Some(net) = self.leases.remove(&lease).and_then(|i| i.net) else {
            return;
        };
        if let Some(members) = self.nets.get_mut(&net) {
            members.remove(&lease);
            if members.is_empty() {
                self.nets.remove(&net);
            }
        }
    }
}

impl Leases {
    pub fn get(&self, lease: LeaseId) -> Option<LeaseInfo> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .leases
            .get(&lease)
            .copied()
    }
    pub(super) fn insert(&self, lease: LeaseId, info: LeaseInfo) {
        let mut inner = self.0.write().unwrap_or_else(|p| p.into_inner());
        inner.forget(lease);
        if let Some(net) = info.net {
            inner.nets.entry(net).or_default().insert(lease);
        }
        inner.leases.insert(lease, info);
    }
    /// Moves these live leases to link `conn`.
    pub(super) fn move_to(&self, conn: ConnId, leases: &[LeaseId]) {
        let mut inner = self.0.write().unwrap_or_else(|p| p.into_inner());
        for lease in leases {
            if let Some(info) = inner.leases.get_mut(lease) {
                info.conn = Some(conn);
            }
        }
    }
    /// Forgets every lease (a dispatcher starting from the database).
    pub(super) fn clear(&self) {
        let mut inner = self.0.write().unwrap_or_else(|p| p.into_inner());
        inner.leases.clear();
        inner.nets.clear();
    }
    /// Where a group frame from `lease` (with `epoch`, on link `from`) goes: one lease of the
    /// same group network on each other link. Refused unless `lease` is live, of that epoch,
    /// held by `from` and on a group network.
    pub fn peers(&self, lease: LeaseId, epoch: Epoch, from: ConnId) -> Result<Vec<Peer>, String> {
        let inner = self.0.read().unwrap_or_else(|p| p.into_inner());
        let Some(info) = inner.leases.get(&lease) else {
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
        let mut peers: Vec<Peer> = inner
            .nets
            .get(&net)
            .into_iter()
            .flatten()
            .filter_map(|l| {
                let i = inner.leases.get(l)?;
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
            .forget(lease);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(job: u64, conn: u64, net: Option<u64>) -> LeaseInfo {
        LeaseInfo {
            job: JobId(job),
            epoch: Epoch(1),
            conn: Some(ConnId(conn)),
            net: net.map(JobId),
        }
    }

    #[test]
    fn a_frame_goes_to_one_lease_per_other_link_of_its_group_only() {
        let leases = Leases::default();
        leases.insert(LeaseId(1), info(10, 1, Some(10)));
        leases.insert(LeaseId(2), info(11, 2, Some(10)));
        leases.insert(LeaseId(3), info(12, 2, Some(10)));
        leases.insert(LeaseId(4), info(20, 3, Some(20)));
        leases.insert(LeaseId(5), info(30, 3, None));
        let peers = leases
            .peers(LeaseId(1), Epoch(1), ConnId(1))
            .expect("peers");
        let to: Vec<(LeaseId, ConnId)> = peers.iter().map(|p| (p.lease, p.conn)).collect();
        assert_eq!(to, [(LeaseId(2), ConnId(2))]);
        // Refused: another link's lease, another epoch, a lease on no network.
        assert!(leases.peers(LeaseId(1), Epoch(1), ConnId(2)).is_err());
        assert!(leases.peers(LeaseId(1), Epoch(2), ConnId(1)).is_err());
        assert!(leases.peers(LeaseId(5), Epoch(1), ConnId(3)).is_err());
        // Released leases leave their group's network.
        leases.remove(LeaseId(2));
        leases.remove(LeaseId(3));
        let peers = leases
            .peers(LeaseId(1), Epoch(1), ConnId(1))
            .expect("peers");
        assert!(peers.is_empty(), "{peers:?}");
    }
}
