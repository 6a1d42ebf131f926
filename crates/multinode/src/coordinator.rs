//! One group's coordinator: LAVA's message and barrier semantics as a pure state machine.
//!
//! State: for every message id, each sender's data in the order of their first send; for
//! every `lava-sync` id, the members that reached the current round of the barrier; for every
//! member, its latest call and, once answered, the reply.
//!
//! ```text
//!  call(m, seq, c):  seq == latest(m).seq  -> duplicate: nothing changes; the stored reply
//!                                             again if the call is answered
//!                    seq <  latest(m).seq  -> stale: nothing changes, no reply
//!                    seq >  latest(m).seq  -> new: latest(m) = c (an older call still
//!                                             waiting is abandoned: its runner stopped
//!                                             waiting), then c is applied
//!
//!  member call:  Waiting --(the condition below holds)--> Answered(reply)
//! ```
//!
//! Semantics (LAVA's coordinator, lava/coordinator):
//! - `Send`: never blocks. The sender's data for the id replaces its own earlier data for that
//!   id (data of different senders accumulates; ids live as long as the group). Then every
//!   waiting call the send satisfies is answered, in member order.
//! - `Wait ID`: answered as soon as any member, the caller included, has sent ID, with the
//!   data of every sender so far (a late wait returns at once).
//! - `WaitAll ID`: answered when every member of the group, the caller included, has sent
//!   ID; `nack` at once if no member has sent ID yet (as LAVA's coordinator does).
//! - `WaitAll ID ROLE`: answered when every member of ROLE has sent ID (LAVA documents this;
//!   its coordinator looks only at the role's first member); `nack` for an unknown role.
//!   Both reply with the data of every sender of ID, of any role.
//! - `Sync ID`: answered when every member of the group has called `Sync ID` in this round;
//!   then the round closes and the id can be used for a new barrier. A member whose sync was
//!   abandoned still counts as arrived (as in LAVA). Barrier ids and message ids are separate
//!   (in LAVA a sync id reused by `lava-send` breaks the coordinator).
//!
//! Invariants:
//! - No clock, no randomness, ordered maps only: replaying the same calls in the same order
//!   gives an equal coordinator and the same replies.
//! - A duplicate or stale `(member, seq)` never changes state.
//! - At most one waiting call per member; stored message and barrier bytes never exceed
//!   [`limits::MAX_GROUP_BYTES`] (a call past it is answered `nack`, `GroupFull`).

use crate::call::{Call, CallKind, MessageId, limits};
use crate::reply::{MessageData, NackReason, Reply};
use crate::{InstanceId, Roster};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The coordinator of one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coordinator {
    roster: Roster,
    /// Per message id, each sender with its latest data, in order of first send.
    messages: BTreeMap<MessageId, Vec<(InstanceId, Pairs)>>,
    /// Per `lava-sync` id, who reached the current round.
    barriers: BTreeMap<MessageId, BTreeSet<InstanceId>>,
    /// Per member (roster index), its latest call.
    latest: Vec<Option<Latest>>,
    /// Bytes of ids, keys and values in `messages` and of ids in `barriers`.
    stored: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Latest {
    seq: u64,
    call: Call,
    state: CallState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum CallState {
    Waiting,
    Answered(Reply),
}

/// `key=value` pairs of one send.
type Pairs = Vec<(String, String)>;

/// A reply that became due: to whom, for which of its calls.
pub type Due = (InstanceId, u64, Reply);

impl Coordinator {
    pub fn new(roster: Roster) -> Coordinator {
        let latest = vec![None; roster.len()];
        Coordinator {
            roster,
            messages: BTreeMap::new(),
            barriers: BTreeMap::new(),
            latest,
            stored: 0,
        }
    }

    pub fn roster(&self) -> &Roster {
        &self.roster
    }

    /// Applies `call` from member `from`, numbered `seq` by that member (increasing), and
    /// returns every reply that became due: to `from` and to earlier waiters, each with the
    /// seq of the call it answers. A `from` outside the roster is ignored (no reply).
    pub fn call(&mut self, from: InstanceId, seq: u64, call: Call) -> Vec<Due> {
        let Some(slot) = self.latest.get(from.index()) else {
            return Vec::new();
        };
        if let Some(latest) = slot {
            if seq < latest.seq {
                return Vec::new();
            }
            if seq == latest.seq {
                return match &latest.state {
                    CallState::Answered(reply) => vec![(from, seq, reply.clone())],
                    CallState::Waiting => Vec::new(),
                };
            }
        }
        let kind = call.kind();
        if call.validate().is_err() {
            return self.answer_now(from, seq, call, nack(kind, NackReason::Invalid));
        }
        match &call {
            Call::Send { id, data } => self.send(from, seq, id.clone(), data.clone(), call),
            Call::Wait { id } => match self.messages.contains_key(id) {
                true => {
                    let reply = Reply::WaitComplete(self.data_of(id));
                    self.answer_now(from, seq, call, reply)
                }
                false => self.wait(from, seq, call),
            },
            Call::WaitAll { id, role } => {
                let role = role.clone();
                if let Some(role) = &role
                    && self.roster.of_role(role).is_empty()
                {
                    return self.answer_now(from, seq, call, nack(kind, NackReason::UnknownRole));
                }
                if role.is_none() && !self.messages.contains_key(id) {
                    return self.answer_now(from, seq, call, nack(kind, NackReason::NotSent));
                }
                match self.all_sent(id, role.as_deref()) {
                    true => {
                        let reply = Reply::WaitAllComplete(self.data_of(id));
                        self.answer_now(from, seq, call, reply)
                    }
                    false => self.wait(from, seq, call),
                }
            }
            Call::Sync { id } => self.sync(from, seq, id.clone(), call),
        }
    }

    /// Whether [`Coordinator::call`] with `(from, seq)` would be a new call (one that may
    /// change the state), not a repeat or a stale one. False for a member outside the roster.
    pub fn is_new(&self, from: InstanceId, seq: u64) -> bool {
        match self.latest.get(from.index()) {
            None => false,
            Some(None) => true,
            Some(Some(latest)) => seq > latest.seq,
        }
    }

    /// The members whose latest call is still waiting, with its seq, in member order.
    pub fn waiting(&self) -> Vec<(InstanceId, u64)> {
        self.roster
            .ids()
            .filter_map(|id| match &self.latest[id.index()] {
                Some(Latest {
                    seq,
                    state: CallState::Waiting,
                    ..
                }) => Some((id, *seq)),
                _ => None,
            })
            .collect()
    }

    /// Bytes of message and barrier data held (at most [`limits::MAX_GROUP_BYTES`]).
    pub fn stored_bytes(&self) -> usize {
        self.stored
    }

    fn send(
        &mut self,
        from: InstanceId,
        seq: u64,
        id: MessageId,
        data: Vec<(String, String)>,
        call: Call,
    ) -> Vec<Due> {
        let new_bytes = pairs_bytes(&data);
        let senders = self.messages.get(&id);
        let old_bytes = match senders {
            None => 0,
            Some(senders) => senders
                .iter()
                .find(|(s, _)| *s == from)
                .map_or(0, |(_, d)| pairs_bytes(d)),
        };
        let id_bytes = if senders.is_some() {
            0
        } else {
            id.as_str().len()
        };
        let after = (self.stored - old_bytes)
            .saturating_add(id_bytes)
            .saturating_add(new_bytes);
        if after > limits::MAX_GROUP_BYTES {
            return self.answer_now(from, seq, call, nack(CallKind::Send, NackReason::GroupFull));
        }
        self.stored = after;
        let senders = self.messages.entry(id.clone()).or_default();
        match senders.iter_mut().find(|(s, _)| *s == from) {
            Some(entry) => entry.1 = data,
            None => senders.push((from, data)),
        }
        let mut due = self.answer_now(from, seq, call, Reply::Sent);
        // Release the waiters this send satisfies.
        for member in self.roster.ids().collect::<Vec<_>>() {
            let Some(Latest {
                seq: wseq,
                call,
                state: CallState::Waiting,
            }) = &self.latest[member.index()]
            else {
                continue;
            };
            let reply = match call {
                Call::Wait { id: wid } if *wid == id => Reply::WaitComplete(self.data_of(&id)),
                Call::WaitAll { id: wid, role } if *wid == id => {
                    if !self.all_sent(&id, role.as_deref()) {
                        continue;
                    }
                    Reply::WaitAllComplete(self.data_of(&id))
                }
                _ => continue,
            };
            let wseq = *wseq;
            self.answer(member, reply.clone());
            due.push((member, wseq, reply));
        }
        due
    }

    fn sync(&mut self, from: InstanceId, seq: u64, id: MessageId, call: Call) -> Vec<Due> {
        if !self.barriers.contains_key(&id) {
            let after = self.stored.saturating_add(id.as_str().len());
            if after > limits::MAX_GROUP_BYTES {
                return self.answer_now(
                    from,
                    seq,
                    call,
                    nack(CallKind::Sync, NackReason::GroupFull),
                );
            }
            self.stored = after;
        }
        let arrived = self.barriers.entry(id.clone()).or_default();
        arrived.insert(from);
        let complete = arrived.len() >= self.roster.len();
        let mut due = self.wait(from, seq, call);
        if !complete {
            return due;
        }
        self.barriers.remove(&id);
        self.stored -= id.as_str().len();
        for member in self.roster.ids().collect::<Vec<_>>() {
            let Some(Latest {
                seq: wseq,
                call: Call::Sync { id: wid },
                state: CallState::Waiting,
            }) = &self.latest[member.index()]
            else {
                continue;
            };
            if *wid != id {
                continue;
            }
            let wseq = *wseq;
            self.answer(member, Reply::SyncComplete);
            due.push((member, wseq, Reply::SyncComplete));
        }
        due
    }

    /// Records `call` as `from`'s latest, waiting.
    fn wait(&mut self, from: InstanceId, seq: u64, call: Call) -> Vec<Due> {
        self.latest[from.index()] = Some(Latest {
            seq,
            call,
            state: CallState::Waiting,
        });
        Vec::new()
    }

    /// Records `call` as `from`'s latest, answered with `reply`.
    fn answer_now(&mut self, from: InstanceId, seq: u64, call: Call, reply: Reply) -> Vec<Due> {
        self.latest[from.index()] = Some(Latest {
            seq,
            call,
            state: CallState::Answered(reply.clone()),
        });
        vec![(from, seq, reply)]
    }

    fn answer(&mut self, member: InstanceId, reply: Reply) {
        if let Some(latest) = &mut self.latest[member.index()] {
            latest.state = CallState::Answered(reply);
        }
    }

    /// Whether every member (of `role`) has sent `id`.
    fn all_sent(&self, id: &MessageId, role: Option<&str>) -> bool {
        let Some(senders) = self.messages.get(id) else {
            return false;
        };
        let expected = match role {
            Some(role) => self.roster.of_role(role),
            None => self.roster.ids().collect(),
        };
        expected.iter().all(|m| senders.iter().any(|(s, _)| s == m))
    }

    fn data_of(&self, id: &MessageId) -> Vec<MessageData> {
        self.messages
            .get(id)
            .map(|senders| {
                senders
                    .iter()
                    .map(|(s, data)| MessageData {
                        from: self
                            .roster
                            .member(*s)
                            .map(|m| m.name.clone())
                            .unwrap_or_default(),
                        data: data.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn nack(call: CallKind, reason: NackReason) -> Reply {
    Reply::Nack { call, reason }
}

fn pairs_bytes(data: &[(String, String)]) -> usize {
    data.iter().map(|(k, v)| k.len() + v.len()).sum()
}

#[cfg(test)]
mod tests;
