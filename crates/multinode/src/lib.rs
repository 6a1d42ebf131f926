//! LAVA's MultiNode API for dutlab: the calls a DUT prints, the group's coordinator, and the
//! helper scripts installed in the DUT.
//!
//! A MultiNode job is a group of role instances (sub-jobs), each on its own DUT. A test
//! definition talks to the rest of the group with `lava-send`, `lava-wait`, `lava-wait-all`
//! and `lava-sync`. Those helpers print one console line (`<LAVA_MULTI_NODE> <LAVA_SEND id
//! k=v>`); the runner reads it ([`parse_call`]), hands the [`Call`] to the group's
//! [`Coordinator`] (in-process for `dutlab run`, in the controller in the lab), and types the
//! [`Reply`]'s [`Reply::console_line`] back into the DUT's shell, where the helper is blocked
//! in `read`.
//!
//! ```text
//!   DUT shell                    runner                       coordinator
//!   lava-wait ready  --prints--> parse_call -> Call::Wait --> call(me, seq, Call)
//!                                                              ... later another member:
//!   read <-------------types---- console_line <-- Reply <---- call(.., Call::Send)
//! ```
//!
//! Invariants:
//! - Pure: no I/O, no clock. Timeouts belong to the runner, which stops waiting when the
//!   test's timeout fires; the coordinator never expires anything.
//! - Everything a DUT prints is untrusted: [`parse_call`] is total (any bytes give `None` or
//!   a value, never a panic) and every message id, key, value and role it returns is within
//!   the bounds of [`limits`] and made of the characters listed there.
//! - The coordinator is deterministic and idempotent by `(member, seq)`: the same calls in the
//!   same order give the same state and the same replies (the controller persists the calls
//!   and replays them after a restart); a repeated call changes nothing.
//! - A group's coordinator holds a bounded amount of data ([`limits::MAX_GROUP_BYTES`]);
//!   past it a call is refused with LAVA's `nack`, never stored.

use serde::{Deserialize, Serialize};

mod call;
mod coordinator;
pub mod helpers;
mod reply;

pub use call::{Call, CallError, CallKind, Field, FieldProblem, MessageId, limits, parse_call};
pub use coordinator::{Coordinator, Due};
pub use helpers::helper_scripts;
pub use reply::{MessageData, NackReason, Reply};

/// One role instance of the group, as the DUT's helpers name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// What `lava-self` and `lava-group` print and what prefixes another member's data in a
    /// `lava-wait` reply: LAVA's sub-job id (`17.0`); in a local run `0`, `1`, ...
    pub name: String,
    /// The role from `protocols.lava-multinode.roles`.
    pub role: String,
}

/// Index of a member in its [`Roster`] (the `N` of LAVA's `ID.N`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct InstanceId(pub u32);

impl InstanceId {
    /// The index as a `usize`, for indexing the roster.
    pub fn index(self) -> usize {
        // u32 always fits in usize on the targets dutlab builds for (32 and 64 bit).
        self.0 as usize
    }
}

impl std::fmt::Display for InstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Every member of a group, in instance order: `members[n]` is [`InstanceId`]`(n)`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Roster {
    pub members: Vec<Member>,
}

impl Roster {
    /// The distinct roles, in the order of their first member.
    pub fn roles(&self) -> Vec<&str> {
        let mut roles: Vec<&str> = Vec::new();
        for m in &self.members {
            if !roles.contains(&m.role.as_str()) {
                roles.push(&m.role);
            }
        }
        roles
    }

    /// The members playing `role`, in instance order (empty for an unknown role).
    pub fn of_role(&self, role: &str) -> Vec<InstanceId> {
        self.ids()
            .filter(|id| self.members[id.index()].role == role)
            .collect()
    }

    /// The member with this id, if the roster has it.
    pub fn member(&self, id: InstanceId) -> Option<&Member> {
        self.members.get(id.index())
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the roster has no member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every member's id, in order.
    pub fn ids(&self) -> impl Iterator<Item = InstanceId> + '_ {
        (0..self.members.len()).map(|n| InstanceId(u32::try_from(n).unwrap_or(u32::MAX)))
    }

    /// The id of the member named `name` (its first one, should names repeat).
    pub fn find(&self, name: &str) -> Option<InstanceId> {
        self.ids().find(|id| self.members[id.index()].name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn roster(roles: &[&str]) -> Roster {
        Roster {
            members: roles
                .iter()
                .enumerate()
                .map(|(n, role)| Member {
                    name: format!("17.{n}"),
                    role: role.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn roster_lookups() {
        let r = roster(&["server", "client", "client"]);
        assert_eq!(r.roles(), ["server", "client"]);
        assert_eq!(r.of_role("client"), [InstanceId(1), InstanceId(2)]);
        assert!(r.of_role("nobody").is_empty());
        assert_eq!(
            r.member(InstanceId(0)).map(|m| m.name.as_str()),
            Some("17.0")
        );
        assert_eq!(r.member(InstanceId(3)), None);
        assert_eq!(r.find("17.2"), Some(InstanceId(2)));
        assert_eq!(r.len(), 3);
    }
}
