//! A follower's agent links: it accepts them, relays their hello and messages to the leader
//! ([`super::relay::Relayed`] through the `commands` table) and hands the leader's messages
//! for them (the `agent_outbox` table) to the links.
//!
//! ```text
//!  agent ──link──> follower link.rs ── Hello / FromAgent / Gone ──> FollowerLinks
//!                     │ log frames: stored here (log_records), acked when committed
//!                     v
//!   one task per link: claim (agent_links) ─> forward Hello ─> answer ─> forward each message,
//!                      in order, one at a time ─> Gone: forward, release the claim
//!   deliver: NOTIFY dutlab_outbox / 1 s ─> rows of this controller, by link and seq, each once
//!            the replica applied its `after_event` ─> the link's queue (or close) ─> delete
//!   renew:   every second, the deadline of this controller's claims
//! ```
//!
//! Invariants:
//! - The follower relays only links it authenticated as the leader would (the link checks
//!   the token's role and binding and the hello's names); it speaks for the agent of the
//!   link and for nobody else.
//! - One link's messages reach the leader in the order the agent sent them: the next is
//!   forwarded once the leader answered the last (committed it). Nothing is acknowledged to
//!   the agent by this controller except log records it committed itself.
//! - A link the leader refuses or no longer knows (it changed, or replaced the link) is
//!   closed with the leader's reason: the agent says hello again, to whichever controller.
//! - Each outbox row is handed to its link at most once (rows already handed are skipped if
//!   their deletion failed), after the replica has the leader's state the row was sent in.
//! - When this controller takes the lead it closes every link it holds: their agents say
//!   hello to the new leader's dispatcher.

use super::forward::{self, Answer, Forwarded, Hub};
use super::relay::{Outbound, Relayed};
use super::*;
use crate::store::agent_links::LinkAddress;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// How long a claim lasts without renewal.
const CLAIM_TTL: Duration = Duration::from_secs(5);
/// How long a row waits for the replica to reach the leader's state it was sent in.
const AFTER_LIMIT: Duration = Duration::from_secs(5);
/// Relayed messages queued per link before the link counts as stuck.
const QUEUE: usize = 1024;

/// What the link task relays after the hello.
enum Step {
    Said(AgentMessage),
    Gone,
}

struct Local {
    agent: String,
    /// The token the link was opened with.
    token_id: String,
    /// The leader accepted the hello.
    accepted: bool,
    /// The link's queue of messages to the agent.
    tx: mpsc::Sender<ControllerMessage>,
    /// Messages to relay, in order.
    steps: mpsc::Sender<Step>,
    /// The last outbox row handed to the link.
    delivered: u64,
}

#[derive(Default)]
struct Registry {
    by_conn: HashMap<ConnId, Local>,
    /// The newest link of each agent.
    by_agent: HashMap<String, ConnId>,
}

/// What the tasks of a follower's links share.
#[derive(Clone)]
struct Context {
    me: String,
    /// This controller's advertised address, recorded with each claim.
    url: Option<String>,
    store: Store,
    hub: Hub,
    sessions: Sessions,
    applied: watch::Receiver<u64>,
    registry: Arc<Mutex<Registry>>,
}

impl Context {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn address(&self, conn: ConnId) -> LinkAddress {
        LinkAddress {
            controller: self.me.clone(),
            conn: conn.0,
        }
    }

    /// Forgets link `conn` (its newer link, if any, stays).
    fn forget(&self, conn: ConnId) {
        let mut registry = self.registry();
        if let Some(local) = registry.by_conn.remove(&conn)
            && registry.by_agent.get(&local.agent) == Some(&conn)
        {
            registry.by_agent.remove(&local.agent);
        }
    }

    async fn relay(&self, relayed: Relayed) -> Result<(), Failure> {
        let forwarded = Forwarded::Agent { relayed };
        match forward::forward(&self.store, &self.hub, self.applied.clone(), forwarded).await? {
            Answer::Done(result) => result,
            Answer::Job(Err(f)) | Answer::Lease(Err(f)) | Answer::Device(Err(f)) => Err(f),
            _ => Err(Failure::Unavailable(
                "the leader answered with another kind of answer".into(),
            )),
        }
    }
}

/// The agent links a follower holds.
pub(super) struct FollowerLinks {
    context: Context,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FollowerLinks {
    /// Stops delivering and renewing; every link's task ends (its queue closes), releasing
    /// its claim and relaying its end.
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        let mut registry = self.context.registry();
        registry.by_conn.clear();
        registry.by_agent.clear();
    }
}

/// The words of a failure, for the agent and the log.
fn reason(failure: &Failure) -> String {
    match failure {
        Failure::NotFound(m)
        | Failure::Forbidden(m)
        | Failure::Conflict(m)
        | Failure::Gone(m)
        | Failure::Unavailable(m)
        | Failure::BadRequest { message: m, .. }
        | Failure::OverQuota { message: m, .. } => m.clone(),
    }
}

impl FollowerLinks {
    /// Starts handing the leader's messages to this controller's links (`me`) and renewing
    /// their claims.
    pub(super) fn start(
        me: String,
        url: Option<String>,
        store: Store,
        hub: Hub,
        sessions: Sessions,
        applied: watch::Receiver<u64>,
    ) -> FollowerLinks {
        let context = Context {
            me,
            url,
            store,
            hub,
            sessions,
            applied,
            registry: Arc::default(),
        };
        let tasks = vec![
            tokio::spawn(deliver(context.clone())),
            tokio::spawn(renew(context.clone())),
        ];
        FollowerLinks { context, tasks }
    }

    /// The newest link of `agent` on this controller.
    pub(super) fn conn_of(&self, agent: &str) -> Option<ConnId> {
        self.context.registry().by_agent.get(agent).copied()
    }

    /// Whether `conn` is the newest link of `agent` here, accepted by the leader and opened
    /// with token `token_id`.
    pub(super) fn is_current(&self, conn: ConnId, agent: &str, token_id: &str) -> bool {
        let registry = self.context.registry();
        registry.by_agent.get(agent) == Some(&conn)
            && registry
                .by_conn
                .get(&conn)
                .is_some_and(|l| l.accepted && l.token_id == token_id)
    }

    /// Relays a hello: answered when the leader accepted or refused it.
    pub(super) fn hello(&self, hello: AgentHello, reply: oneshot::Sender<Result<(), String>>) {
        let (steps, queue) = mpsc::channel(QUEUE);
        {
            let mut registry = self.context.registry();
            registry.by_conn.insert(
                hello.conn,
                Local {
                    agent: hello.agent.clone(),
                    token_id: hello.token_id.clone(),
                    accepted: false,
                    tx: hello.tx.clone(),
                    steps,
                    delivered: 0,
                },
            );
            registry.by_agent.insert(hello.agent.clone(), hello.conn);
        }
        tokio::spawn(relay_link(self.context.clone(), hello, reply, queue));
    }

    /// Queues a message of link `conn` for the leader.
    pub(super) fn said(&self, conn: ConnId, message: AgentMessage) {
        let steps = self
            .context
            .registry()
            .by_conn
            .get(&conn)
            .map(|l| l.steps.clone());
        let Some(steps) = steps else {
            tracing::debug!("link {conn}: message of a link this controller does not relay");
            return;
        };
        if steps.try_send(Step::Said(message)).is_err() {
            tracing::warn!("link {conn}: the leader does not keep up with its messages; closing");
            self.context.sessions.close(
                conn,
                "the leading controller does not keep up with this link",
            );
        }
    }

    /// Link `conn` ended.
    pub(super) fn gone(&self, conn: ConnId) {
        let steps = self
            .context
            .registry()
            .by_conn
            .get(&conn)
            .map(|l| l.steps.clone());
        if let Some(steps) = steps {
            tokio::spawn(async move {
                let _ = steps.send(Step::Gone).await;
            });
        }
    }

    /// Closes every link (this controller takes the lead).
    pub(super) fn close_all(&self, why: &str) {
        let conns: Vec<ConnId> = self.context.registry().by_conn.keys().copied().collect();
        for conn in conns {
            self.context.sessions.close(conn, why);
        }
    }
}

/// One link: its hello, then its messages in order, then its end.
async fn relay_link(
    context: Context,
    hello: AgentHello,
    reply: oneshot::Sender<Result<(), String>>,
    mut queue: mpsc::Receiver<Step>,
) {
    let conn = hello.conn;
    let agent = hello.agent.clone();
    let link = context.address(conn);
    let deadline = now().0 + CLAIM_TTL.as_millis() as u64;
    if let Err(e) = context
        .store
        .claim_link(&agent, &link, context.url.as_deref(), deadline)
        .await
    {
        context.forget(conn);
        let _ = reply.send(Err(format!(
            "this controller cannot record the agent's link in its database: {e}"
        )));
        return;
    }
    let relayed = Relayed::Hello {
        link: link.clone(),
        token_id: hello.token_id,
        agent: agent.clone(),
        version: hello.version,
        protocol: hello.protocol,
        devices: hello.devices,
        held: hello.held,
        sessions: hello.sessions,
    };
    if let Err(failure) = context.relay(relayed).await {
        context.forget(conn);
        if let Err(e) = context.store.release_link(&agent, &link).await {
            tracing::debug!("agent {agent}: {e}");
        }
        let _ = reply.send(Err(reason(&failure)));
        return;
    }
    if let Some(local) = context.registry().by_conn.get_mut(&conn) {
        local.accepted = true;
    }
    let _ = reply.send(Ok(()));
    tracing::info!("agent {agent} (link {conn}): relayed to the leading controller");
    let mut closed = false;
    while let Some(step) = queue.recv().await {
        match step {
            Step::Said(_) if closed => {}
            Step::Said(message) => {
                let relayed = Relayed::Said {
                    link: link.clone(),
                    message,
                };
                if let Err(failure) = context.relay(relayed).await {
                    let why = reason(&failure);
                    tracing::warn!("agent {agent} (link {conn}): closed: {why}");
                    context.sessions.close(conn, &why);
                    closed = true;
                }
            }
            Step::Gone => break,
        }
    }
    context.forget(conn);
    if let Err(e) = context.store.release_link(&agent, &link).await {
        tracing::debug!("agent {agent}: {e}");
    }
    if let Err(failure) = context.relay(Relayed::Gone { link }).await {
        tracing::debug!(
            "agent {agent} (link {conn}): end not relayed: {}",
            reason(&failure)
        );
    }
}

/// Hands the leader's messages to this controller's links.
async fn deliver(context: Context) {
    let mut applied = context.applied.clone();
    loop {
        let _ = tokio::time::timeout(forward::POLL, context.hub.outbox.notified()).await;
        let rows = match context.store.outbox(&context.me).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::debug!("reading messages for agent links: {e}");
                continue;
            }
        };
        let mut handled: BTreeMap<u64, u64> = BTreeMap::new();
        for row in rows {
            let conn = ConnId(row.conn);
            handled.insert(row.conn, row.seq);
            let delivered = context.registry().by_conn.get(&conn).map(|l| l.delivered);
            let Some(delivered) = delivered else {
                continue;
            };
            if row.seq <= delivered {
                continue;
            }
            if *applied.borrow() < row.after_event {
                context.hub.events.notify_one();
                let want = row.after_event;
                let _ = tokio::time::timeout(AFTER_LIMIT, applied.wait_for(|s| *s >= want)).await;
            }
            match serde_json::from_str::<Outbound>(&row.body) {
                Ok(Outbound::Message(message)) => {
                    let tx = context.registry().by_conn.get(&conn).map(|l| l.tx.clone());
                    if let Some(tx) = tx
                        && tx.try_send(message).is_err()
                    {
                        context
                            .sessions
                            .close(conn, "the link's queue is full; say hello again");
                    }
                }
                Ok(Outbound::Close(why)) => context.sessions.close(conn, &why),
                Err(e) => tracing::warn!("link {conn}: unreadable message from the leader: {e}"),
            }
            if let Some(local) = context.registry().by_conn.get_mut(&conn) {
                local.delivered = row.seq;
            }
        }
        for (conn, seq) in handled {
            let link = context.address(ConnId(conn));
            if let Err(e) = context.store.delete_outbox(&link, seq).await {
                tracing::debug!("removing handed messages of link {conn}: {e}");
            }
        }
    }
}

/// Keeps this controller's claims alive.
async fn renew(context: Context) {
    loop {
        tokio::time::sleep(forward::POLL).await;
        let deadline = now().0 + CLAIM_TTL.as_millis() as u64;
        if let Err(e) = context.store.renew_links(&context.me, deadline).await {
            tracing::warn!("renewing the claims of agent links: {e}");
        }
    }
}
