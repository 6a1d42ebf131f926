//! Agent links held by other controllers of the database, as the leader sees them.
//!
//! A follower that accepts an agent's link relays the agent's hello and messages to the
//! leader as forwarded commands ([`Relayed`], through [`super::forward`]); the leader runs
//! them with the same code as for its own links ([`Dispatcher::hello`],
//! [`Dispatcher::agent_said`], [`Dispatcher::gone`]) under a connection id of its own. What
//! the leader sends to such an agent goes into `agent_outbox` ([`crate::store::agent_links`])
//! in order, one writer task per link, and the follower hands it to the link.
//!
//! Invariants:
//! - A relayed link speaks only for the agent named in its accepted hello: messages name the
//!   link, never the agent, once it is known; a message of a link the leader has no accepted
//!   hello for (it changed leaders, or a newer link replaced it) is refused with
//!   [`Failure::Gone`], and the follower then closes the link so the agent says hello again.
//! - Fencing is the leader's, as for its own links: a relayed job message about a lease is
//!   refused unless the lease is held by that link ([`super::LeaseInfo::conn`]), and epochs
//!   are checked by the scheduler.
//! - Every outbox row carries the leader's last committed event when it was written; the
//!   follower hands it to the agent only once its replica has applied that event (so a
//!   `StartJob`'s lease is live on the follower before the agent's first log frame).
//! - A relayed link whose claim in `agent_links` lapsed (its controller died, or another
//!   controller now claims the agent) counts as closed: the agent is disconnected as when a
//!   socket closes, and its jobs get the disconnect grace.

use super::*;
use crate::store::agent_links::{CLOSE_SEQ, LinkAddress};
use proto::link::HeldSession;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Messages queued for one relayed link before its outbox writer (as a link's queue).
const RELAY_QUEUE: usize = 1024;
/// Messages written to the outbox in one transaction at most.
const BATCH: usize = 256;
/// How often the leader reads the claims of relayed links.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Outbox rows and lapsed claims older than this are removed.
const KEEP_MS: u64 = 10 * 60 * 1000;
/// How often old rows are removed.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// What a follower relays for an agent link it holds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "relayed")]
pub enum Relayed {
    /// The agent's hello, checked by the follower as a link checks it (token role and
    /// binding, names).
    Hello {
        link: LinkAddress,
        token_id: String,
        agent: String,
        version: String,
        protocol: u32,
        devices: Vec<DeviceInfo>,
        held: Vec<HeldLease>,
        sessions: Vec<HeldSession>,
    },
    /// A message of the link (not a log frame: the follower stores those itself).
    Said {
        link: LinkAddress,
        message: AgentMessage,
    },
    /// The link ended.
    Gone { link: LinkAddress },
}

/// One row of the outbox as the holding controller reads it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outbound {
    Message(ControllerMessage),
    /// Close the link with this reason (a newer link replaced it, or it fell silent).
    Close(String),
}

/// Why a relayed message of an unknown link is refused.
/// (Short enough for a WebSocket close reason, 123 bytes.)
pub const UNKNOWN_LINK: &str = "the leading controller has no hello from this link (the \
                                leader changed, or a newer link replaced it): say hello again";

#[derive(Debug)]
struct RemoteLink {
    address: LinkAddress,
    agent: String,
}

/// The relayed links of a leader, by the connection id it gave them.
#[derive(Debug)]
pub(super) struct RemoteLinks {
    by_conn: BTreeMap<ConnId, RemoteLink>,
    by_address: HashMap<LinkAddress, ConnId>,
    /// The last event committed, for the outbox rows.
    pub(super) committed: Arc<AtomicU64>,
    last_check: Instant,
    last_prune: Instant,
}

impl RemoteLinks {
    pub(super) fn new(committed: u64) -> RemoteLinks {
        RemoteLinks {
            by_conn: BTreeMap::new(),
            by_address: HashMap::new(),
            committed: Arc::new(AtomicU64::new(committed)),
            last_check: Instant::now(),
            last_prune: Instant::now(),
        }
    }

    fn insert(&mut self, conn: ConnId, address: LinkAddress, agent: String) {
        self.by_address.insert(address.clone(), conn);
        self.by_conn.insert(conn, RemoteLink { address, agent });
    }

    fn remove(&mut self, conn: ConnId) -> Option<RemoteLink> {
        let link = self.by_conn.remove(&conn)?;
        self.by_address.remove(&link.address);
        Some(link)
    }

    fn find(&self, address: &LinkAddress) -> Option<(ConnId, &str)> {
        let conn = *self.by_address.get(address)?;
        let link = self.by_conn.get(&conn)?;
        Some((conn, link.agent.as_str()))
    }

    /// Whether `conn` is a link a follower relays.
    pub(super) fn holds(&self, conn: ConnId) -> bool {
        self.by_conn.contains_key(&conn)
    }

    pub(super) fn set_committed(&self, seq: u64) {
        self.committed.store(seq, Ordering::Release);
    }
}

impl Dispatcher {
    /// Runs what a follower relayed for one of its agent links.
    pub(super) async fn relayed(&mut self, relayed: Relayed) -> Result<(), Failure> {
        match relayed {
            Relayed::Hello {
                link,
                token_id,
                agent,
                version,
                protocol,
                devices,
                held,
                sessions,
            } => {
                // A hello of a link already known (a new leader running an old command)
                // replaces it like any newer link.
                if let Some((old, _)) = self.remote.find(&link) {
                    self.remote.remove(old);
                }
                let conn = self.sessions.fresh_id();
                let (tx, rx) = mpsc::channel(RELAY_QUEUE);
                tokio::spawn(write_outbox(
                    self.store.clone(),
                    link.clone(),
                    rx,
                    Arc::clone(&self.remote.committed),
                ));
                self.remote.insert(conn, link.clone(), agent.clone());
                let hello = AgentHello {
                    conn,
                    token_id,
                    agent: agent.clone(),
                    version,
                    protocol,
                    devices,
                    held,
                    sessions,
                    tx,
                };
                match self.hello(hello).await {
                    Ok(()) => {
                        tracing::info!(
                            "agent {agent}: linked through controller {} (link {}), here link {conn}",
                            link.controller,
                            link.conn
                        );
                        Ok(())
                    }
                    Err(reason) => {
                        self.remote.remove(conn);
                        self.gone(conn, &agent).await;
                        Err(Failure::Conflict(reason))
                    }
                }
            }
            Relayed::Said { link, message } => {
                let Some((conn, agent)) = self.remote.find(&link) else {
                    return Err(Failure::Gone(UNKNOWN_LINK.into()));
                };
                let agent = agent.to_owned();
                let current = self
                    .agents
                    .get(&agent)
                    .and_then(|l| l.conn.as_ref())
                    .is_some_and(|(c, _)| *c == conn);
                if !current {
                    self.remote.remove(conn);
                    return Err(Failure::Gone(UNKNOWN_LINK.into()));
                }
                self.agent_said(conn, &agent, message).await;
                Ok(())
            }
            Relayed::Gone { link } => {
                if let Some((conn, agent)) = self.remote.find(&link) {
                    let agent = agent.to_owned();
                    self.remote.remove(conn);
                    self.gone(conn, &agent).await;
                }
                Ok(())
            }
        }
    }

    /// Ends link `conn`: a session of this controller, or a relayed link (its holder is
    /// asked to close it).
    pub(super) fn close_link(&mut self, conn: ConnId, reason: &str) {
        let Some(remote) = self.remote.remove(conn) else {
            self.sessions.close(conn, reason);
            return;
        };
        let Ok(body) = serde_json::to_string(&Outbound::Close(reason.to_owned())) else {
            return;
        };
        let store = self.store.clone();
        tokio::spawn(async move {
            let rows = [(CLOSE_SEQ, body)];
            if let Err(e) = store.send_outbox(&remote.address, 0, &rows, now().0).await {
                tracing::warn!(
                    "agent {}: closing its link on controller {}: {e}",
                    remote.agent,
                    remote.address.controller
                );
            }
        });
    }

    /// Disconnects the agents of relayed links whose claim lapsed; removes old outbox rows.
    pub(super) async fn check_relayed_links(&mut self) {
        if self.remote.by_conn.is_empty() || self.remote.last_check.elapsed() < CHECK_EVERY {
            return;
        }
        self.remote.last_check = Instant::now();
        let at = now().0;
        let live: HashSet<LinkAddress> = match self.store.live_links(at).await {
            Ok(claims) => claims.into_iter().map(|c| c.link).collect(),
            Err(e) => {
                tracing::debug!("reading the claims of agent links: {e}");
                return;
            }
        };
        let lapsed: Vec<ConnId> = self
            .remote
            .by_conn
            .iter()
            .filter(|(_, l)| !live.contains(&l.address))
            .map(|(c, _)| *c)
            .collect();
        for conn in lapsed {
            let Some(link) = self.remote.remove(conn) else {
                continue;
            };
            tracing::warn!(
                "agent {}: controller {} no longer claims its link; the agent counts as disconnected",
                link.agent,
                link.address.controller
            );
            self.gone(conn, &link.agent).await;
        }
        if self.remote.last_prune.elapsed() >= PRUNE_EVERY {
            self.remote.last_prune = Instant::now();
            if let Err(e) = self.store.prune_outbox(at.saturating_sub(KEEP_MS)).await {
                tracing::debug!("pruning the agent outbox: {e}");
            }
        }
    }
}

/// Writes what the dispatcher sends on a relayed link into the outbox, in order.
async fn write_outbox(
    store: Store,
    link: LinkAddress,
    mut rx: mpsc::Receiver<ControllerMessage>,
    committed: Arc<AtomicU64>,
) {
    let mut seq = 0u64;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH
            && let Ok(message) = rx.try_recv()
        {
            batch.push(message);
        }
        let after = committed.load(Ordering::Acquire);
        let mut rows = Vec::with_capacity(batch.len());
        for message in batch {
            match serde_json::to_string(&Outbound::Message(message)) {
                Ok(body) => {
                    seq += 1;
                    rows.push((seq, body));
                }
                Err(e) => tracing::warn!("a message for an agent did not encode: {e}"),
            }
        }
        let mut tries = 0;
        while let Err(e) = store.send_outbox(&link, after, &rows, now().0).await {
            tries += 1;
            if tries >= 10 {
                tracing::error!(
                    "messages for link {} of controller {} not written: {e}; the agent \
                     resyncs when it says hello again",
                    link.conn,
                    link.controller
                );
                break;
            }
            tracing::warn!("writing messages for an agent link: {e}; trying again");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
