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
    pub(super) fn remove(&self, lease: LeaseId) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&lease);
    }
}
