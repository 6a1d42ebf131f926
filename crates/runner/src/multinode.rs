//! MultiNode, the runner's side: a role instance's calls go to its group's coordinator over a
//! [`CoordinatorLink`], and the answers are typed back into the DUT's shell.
//!
//! ```text
//!  test shell line  ─parse_call─>  Call  ─link.call(seq, call)─>  coordinator (in-process for
//!                                                                 `dutlab run`, the controller's
//!  DUT's `read`  <──typed── Reply::console_line <── Reply <────   over the agent link in the lab)
//! ```
//!
//! Invariants:
//! - A member numbers its calls from 1, increasing for the whole job ([`MultinodeContext`]
//!   keeps the counter), so a coordinator can tell a repeated call from a new one.
//! - A call is only ever answered for the member that made it: a link is bound to one member
//!   ([`InProcessGroup::link`]; in the lab the controller checks the lease).
//! - The runner, never the coordinator, gives up waiting: a blocked call ends at the test
//!   action's deadline, and the member's next call abandons it at the coordinator.
//! - A call the group refuses is answered with LAVA's nack line, so the helper never hangs.

use ::multinode::{Call, Coordinator, Due, InstanceId, Reply, Roster};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// The answer to one call, once it is due.
pub type CallFuture = Pin<Box<dyn Future<Output = Result<Reply, LinkError>> + Send>>;

/// Why a call got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The coordinator (or the link to it) went away before answering.
    #[error("the group's coordinator is gone: {0}")]
    Gone(String),
}

/// How one member reaches its group's coordinator.
pub trait CoordinatorLink: Send + Sync {
    /// Hands call `seq` of this member to the coordinator; resolves with its reply when it is
    /// due (at once for a send, when the condition holds for a wait or sync). Calling again
    /// with the same `seq` is harmless (the coordinator answers it once).
    fn call(&self, seq: u64, call: Call) -> CallFuture;
}

/// What the runner of one role instance knows of its group.
#[derive(Clone)]
pub struct MultinodeContext {
    pub roster: Roster,
    /// This instance.
    pub me: InstanceId,
    pub link: Arc<dyn CoordinatorLink>,
    /// The last seq used (calls are numbered from 1).
    seq: Arc<AtomicU64>,
}

impl std::fmt::Debug for MultinodeContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultinodeContext")
            .field("roster", &self.roster)
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl MultinodeContext {
    pub fn new(roster: Roster, me: InstanceId, link: Arc<dyn CoordinatorLink>) -> Self {
        MultinodeContext {
            roster,
            me,
            link,
            seq: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The seq of the next call.
    pub(crate) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The helper scripts for this member, as `(file name, text)`.
    pub fn helper_scripts(&self) -> Vec<(&'static str, String)> {
        ::multinode::helper_scripts(&self.roster, self.me)
    }

    /// This member's role.
    pub fn role(&self) -> String {
        self.roster
            .member(self.me)
            .map(|m| m.role.clone())
            .unwrap_or_default()
    }

    /// This member's name (what `lava-self` prints).
    pub fn name(&self) -> &str {
        self.roster
            .member(self.me)
            .map(|m| m.name.as_str())
            .unwrap_or_default()
    }
}

/// The private network of a group's QEMU DUTs (one host): the NIC QEMU gives the DUT
/// ([`qemu::GroupLink`]) and the address the runner sets on it, `10.231.0.<N+1>/24` for member
/// `N`, before the first test of each boot. `lava-echo-ipv4` of that interface prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupNet {
    pub link: qemu::GroupLink,
    pub address: std::net::Ipv4Addr,
    pub prefix: u8,
}

/// The multicast segment of group `group` on a host whose runner picked `salt` (random per
/// agent process, or per `dutlab run`): `239.255.X.Y:P` with X, Y and P (20000..60000) from
/// the SHA-256 of both. Every member of the group on that host gets the same segment; other
/// groups, and the same group id of another lab on the host, get another one (barring a
/// collision in 2^16 * 40000).
pub fn segment_of(salt: &[u8], group: u64) -> std::net::SocketAddrV4 {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    hash.update(salt);
    hash.update(group.to_be_bytes());
    let d = hash.finalize();
    let port = 20000 + u16::from_be_bytes([d[2], d[3]]) % 40000;
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(239, 255, d[0], d[1]), port)
}

/// Why a member has no [`GroupNet`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupNetError {
    #[error("member {0} is past the 253 addresses of the group network")]
    TooMany(u32),
    #[error("{0}")]
    Link(#[from] qemu::GroupLinkError),
}

impl GroupNet {
    /// The network of member `member` on the segment `mcast` (the same for the whole group).
    pub fn for_member(
        mcast: std::net::SocketAddrV4,
        member: u32,
    ) -> Result<GroupNet, GroupNetError> {
        let host = u8::try_from(member + 1)
            .ok()
            .filter(|h| *h < 254)
            .ok_or(GroupNetError::TooMany(member))?;
        let index = u16::try_from(member).map_err(|_| GroupNetError::TooMany(member))?;
        Ok(GroupNet {
            link: qemu::GroupLink::new(mcast, index)?,
            address: std::net::Ipv4Addr::new(10, 231, 0, host),
            prefix: 24,
        })
    }
}

/// A whole group's coordinator in this process (`dutlab run` of a multinode job).
#[derive(Debug)]
pub struct InProcessGroup {
    state: Mutex<GroupState>,
}

#[derive(Debug)]
struct GroupState {
    coordinator: Coordinator,
    /// Calls not answered yet, by member and seq.
    waiting: HashMap<(InstanceId, u64), oneshot::Sender<Reply>>,
}

impl InProcessGroup {
    pub fn new(roster: Roster) -> Arc<InProcessGroup> {
        Arc::new(InProcessGroup {
            state: Mutex::new(GroupState {
                coordinator: Coordinator::new(roster),
                waiting: HashMap::new(),
            }),
        })
    }

    /// The roster the group was made with.
    pub fn roster(&self) -> Roster {
        self.lock().coordinator.roster().clone()
    }

    /// The link of member `me`: its calls are made as `me`, and only `me`'s replies reach it.
    pub fn link(self: &Arc<Self>, me: InstanceId) -> Arc<dyn CoordinatorLink> {
        Arc::new(MemberLink {
            group: Arc::clone(self),
            me,
        })
    }

    /// A [`MultinodeContext`] for member `me`.
    pub fn context(self: &Arc<Self>, me: InstanceId) -> MultinodeContext {
        MultinodeContext::new(self.roster(), me, self.link(me))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GroupState> {
        // A panic while holding the lock leaves a consistent coordinator (each call is
        // applied whole or not at all), so a poisoned lock is taken over.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn call(&self, me: InstanceId, seq: u64, call: Call) -> oneshot::Receiver<Reply> {
        let (tx, rx) = oneshot::channel();
        let mut state = self.lock();
        state.waiting.insert((me, seq), tx);
        let due: Vec<Due> = state.coordinator.call(me, seq, call);
        for (member, seq, reply) in due {
            if let Some(tx) = state.waiting.remove(&(member, seq)) {
                let _ = tx.send(reply);
            }
        }
        // Waiters of a member whose later call abandoned them are dropped: their runner
        // stopped waiting already.
        state
            .waiting
            .retain(|(member, s), _| *member != me || *s >= seq);
        rx
    }
}

struct MemberLink {
    group: Arc<InProcessGroup>,
    me: InstanceId,
}

impl CoordinatorLink for MemberLink {
    fn call(&self, seq: u64, call: Call) -> CallFuture {
        let rx = self.group.call(self.me, seq, call);
        Box::pin(async move {
            rx.await
                .map_err(|_| LinkError::Gone("the call was abandoned".into()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::multinode::{Member, MessageData, MessageId};

    fn roster(n: usize) -> Roster {
        Roster {
            members: (0..n)
                .map(|i| Member {
                    name: i.to_string(),
                    role: if i == 0 { "server" } else { "client" }.into(),
                })
                .collect(),
        }
    }

    fn id(s: &str) -> MessageId {
        MessageId::new(s).expect("a valid id")
    }

    #[test]
    fn each_member_gets_its_own_address_and_mac_on_the_groups_segment() {
        let mcast = "239.255.0.9:40000".parse().expect("an address");
        let a = GroupNet::for_member(mcast, 0).expect("member 0");
        let b = GroupNet::for_member(mcast, 1).expect("member 1");
        assert_eq!(a.address, std::net::Ipv4Addr::new(10, 231, 0, 1));
        assert_eq!(b.address, std::net::Ipv4Addr::new(10, 231, 0, 2));
        assert_ne!(a.link.mac(), b.link.mac());
        assert_eq!(
            GroupNet::for_member(mcast, 253),
            Err(GroupNetError::TooMany(253))
        );
        let seg = segment_of(b"salt", 7);
        assert!(seg.ip().is_multicast() && (20000..60000).contains(&seg.port()));
        assert_eq!(seg, segment_of(b"salt", 7));
        assert_ne!(seg, segment_of(b"salt", 8));
        assert_ne!(seg, segment_of(b"other", 7));
    }

    #[tokio::test]
    async fn a_wait_returns_when_another_member_sends() {
        let group = InProcessGroup::new(roster(2));
        let (server, client) = (group.context(InstanceId(0)), group.context(InstanceId(1)));
        let wait = client
            .link
            .call(client.next_seq(), Call::Wait { id: id("ready") });
        let sent = server
            .link
            .call(
                server.next_seq(),
                Call::Send {
                    id: id("ready"),
                    data: vec![("ip".into(), "10.0.0.1".into())],
                },
            )
            .await;
        assert_eq!(sent, Ok(Reply::Sent));
        assert_eq!(
            wait.await,
            Ok(Reply::WaitComplete(vec![MessageData {
                from: "0".into(),
                data: vec![("ip".into(), "10.0.0.1".into())],
            }]))
        );
    }

    #[tokio::test]
    async fn a_sync_releases_every_member_only_when_the_last_arrives() {
        let group = InProcessGroup::new(roster(3));
        let members: Vec<_> = (0..3).map(|i| group.context(InstanceId(i))).collect();
        let mut first = members[0]
            .link
            .call(members[0].next_seq(), Call::Sync { id: id("b") });
        let second = members[1]
            .link
            .call(members[1].next_seq(), Call::Sync { id: id("b") });
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), &mut first)
                .await
                .is_err(),
            "two of three at the barrier must not release it"
        );
        let third = members[2]
            .link
            .call(members[2].next_seq(), Call::Sync { id: id("b") })
            .await;
        assert_eq!(third, Ok(Reply::SyncComplete));
        assert_eq!(first.await, Ok(Reply::SyncComplete));
        assert_eq!(second.await, Ok(Reply::SyncComplete));
    }

    #[tokio::test]
    async fn a_later_call_abandons_the_members_waiting_one() {
        let group = InProcessGroup::new(roster(2));
        let client = group.context(InstanceId(1));
        let abandoned = client
            .link
            .call(client.next_seq(), Call::Wait { id: id("never") });
        let sent = client
            .link
            .call(
                client.next_seq(),
                Call::Send {
                    id: id("other"),
                    data: vec![],
                },
            )
            .await;
        assert_eq!(sent, Ok(Reply::Sent));
        assert!(matches!(abandoned.await, Err(LinkError::Gone(_))));
    }
}
