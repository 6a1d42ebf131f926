//! MultiNode group networks across agents: the controller relays each Ethernet frame that an
//! agent's bridge heard on a group's segment to the other links holding sub-jobs of that
//! group, whose bridges put it on their own segment (docs/multinode.md, "The group's network").
//!
//! ```text
//!  QEMU ─mcast 127.0.0.1─> agent bridge ─'N' (lease)─> link ─GroupNet::relay─> other links
//!                                                         (Leases::peers)     ─'N' (their lease)─> agent bridge ─mcast─> QEMU
//! ```
//!
//! Invariants:
//! - A frame is relayed only for a live lease held by the link it came on, with its epoch,
//!   whose sub-job has a DUT on a group network (`Leases::peers`); and only to links holding
//!   other sub-jobs of the same group, once per link, named by one of that link's leases. An
//!   agent can put frames on no other group's network, and no frame goes back to its sender.
//! - Each link's queue is bounded ([`FRAME_QUEUE`]) and a full queue drops the frame, as an
//!   Ethernet switch would: a busy group network never slows job logs, streams or the
//!   dispatcher, and costs at most the queue's frames per link in memory.
//! - Only this controller's links: with several controllers, sub-jobs whose agents are linked
//!   to different controllers are not joined.

use crate::dispatcher::Leases;
use crate::sessions::ConnId;
use proto::link::GroupFrame;
use proto::{Epoch, LeaseId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Group frames queued per link before more are dropped.
pub const FRAME_QUEUE: usize = 256;

/// The links' queues of group frames.
#[derive(Clone, Default)]
pub struct GroupNet(Arc<Mutex<HashMap<ConnId, mpsc::Sender<Vec<u8>>>>>);

/// What became of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// Links it was queued for.
    pub sent: usize,
    /// Links whose queue was full.
    pub dropped: usize,
}

impl GroupNet {
    /// Link `conn` takes group frames from now on, through `tx`.
    pub fn attach(&self, conn: ConnId, tx: mpsc::Sender<Vec<u8>>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(conn, tx);
    }

    pub fn detach(&self, conn: ConnId) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&conn);
    }

    /// Relays the frame of `lease` (epoch `epoch`) that came on link `from`; an error says why
    /// it was refused.
    pub fn relay(
        &self,
        leases: &Leases,
        from: ConnId,
        lease: LeaseId,
        epoch: Epoch,
        frame: &[u8],
    ) -> Result<Relayed, String> {
        let peers = leases.peers(lease, epoch, from)?;
        let links = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Relayed {
            sent: 0,
            dropped: 0,
        };
        for peer in peers {
            let Some(tx) = links.get(&peer.conn) else {
                continue;
            };
            let bytes = GroupFrame {
                lease: peer.lease,
                epoch: peer.epoch,
                frame,
            }
            .encode();
            match tx.try_send(bytes) {
                Ok(()) => out.sent += 1,
                Err(_) => out.dropped += 1,
            }
        }
        Ok(out)
    }
}
