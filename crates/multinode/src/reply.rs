//! What the group answers a call, and the line the runner types back into the DUT's shell.
//!
//! LAVA's dispatcher answers with one line the helper reads on stdin (it then sends a bare
//! newline too):
//!
//! | reply | line |
//! |---|---|
//! | `lava-send` accepted | none: the helper does not read |
//! | `lava-send` refused | none: LAVA ends the test action with a test error |
//! | `lava-wait` | `<LAVA_WAIT_COMPLETE 17.0:key=value 17.1:key=value>` |
//! | `lava-wait-all` | `<LAVA_WAIT_ALL_COMPLETE 17.0:key=value ...>` |
//! | `lava-sync` | `<LAVA_SYNC_COMPLETE>` |
//! | refused wait, wait-all, sync | `<LAVA_WAIT_COMPLETE nack>`, `<LAVA_WAIT_ALL_COMPLETE nack>`, `<LAVA_SYNC_COMPLETE nack>` |
//!
//! Data is listed sender by sender in the order of their first `lava-send` of the id, each
//! sender's pairs in the order of that sender's last send; a sender that sent no pair adds
//! nothing to the line.

use crate::call::{CallError, CallKind};
use serde::{Deserialize, Serialize};

/// One member's data for a message id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageData {
    /// The sender's [`crate::Member::name`].
    pub from: String,
    pub data: Vec<(String, String)>,
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NackReason {
    /// The call itself is malformed (a [`CallError`]).
    Invalid,
    /// `lava-wait-all ID` (no role) for an id no member has sent yet: LAVA's coordinator
    /// answers `nack` at once rather than waiting.
    NotSent,
    /// `lava-wait-all ID ROLE` names a role the group does not have.
    UnknownRole,
    /// Storing the call would take the group past [`crate::limits::MAX_GROUP_BYTES`].
    GroupFull,
}

impl std::fmt::Display for NackReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NackReason::Invalid => "the call is malformed",
            NackReason::NotSent => "no member has sent this message id",
            NackReason::UnknownRole => "the group has no such role",
            NackReason::GroupFull => "the group's message store is full",
        })
    }
}

/// The group's answer to one call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// `lava-send` stored.
    Sent,
    /// `lava-wait` returns with the data of every member that sent the id so far.
    WaitComplete(Vec<MessageData>),
    /// `lava-wait-all` returns with the data of every member that sent the id so far.
    WaitAllComplete(Vec<MessageData>),
    /// `lava-sync` returns: every member reached the barrier.
    SyncComplete,
    /// The call is refused (LAVA's `nack`).
    Nack { call: CallKind, reason: NackReason },
}

impl Reply {
    /// The line to type into the DUT's shell (without its newline), or `None` when LAVA types
    /// nothing: after a `lava-send`, accepted or refused.
    pub fn console_line(&self) -> Option<String> {
        let (name, body) = match self {
            Reply::Sent => return None,
            Reply::Nack {
                call: CallKind::Send,
                ..
            } => return None,
            Reply::WaitComplete(data) => ("WAIT", pairs(data)),
            Reply::WaitAllComplete(data) => ("WAIT_ALL", pairs(data)),
            Reply::SyncComplete => ("SYNC", String::new()),
            Reply::Nack { call, .. } => (call.lava_name(), " nack".to_string()),
        };
        Some(format!("<LAVA_{name}_COMPLETE{body}>"))
    }

    /// Whether LAVA ends the test action with an error on this reply: a refused `lava-send`
    /// ("Coordinator was unable to accept LAVA_SEND").
    pub fn ends_test(&self) -> bool {
        matches!(
            self,
            Reply::Nack {
                call: CallKind::Send,
                ..
            }
        )
    }

    /// Whether the call was refused.
    pub fn is_nack(&self) -> bool {
        matches!(self, Reply::Nack { .. })
    }
}

fn pairs(data: &[MessageData]) -> String {
    let mut line = String::new();
    for sender in data {
        for (key, value) in &sender.data {
            line.push(' ');
            line.push_str(&sender.from);
            line.push(':');
            line.push_str(key);
            line.push('=');
            line.push_str(value);
        }
    }
    line
}

impl CallError {
    /// The reply for a refused line that named a known call (`None` for an unknown name,
    /// which LAVA ignores): typing its [`Reply::console_line`] releases the blocked helper.
    pub fn nack(&self) -> Option<Reply> {
        self.kind().map(|call| Reply::Nack {
            call,
            reason: NackReason::Invalid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(from: &str, pairs: &[(&str, &str)]) -> MessageData {
        MessageData {
            from: from.to_string(),
            data: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn lines_are_lava_dispatcher_lines() {
        assert_eq!(Reply::Sent.console_line(), None);
        assert_eq!(
            Reply::SyncComplete.console_line().as_deref(),
            Some("<LAVA_SYNC_COMPLETE>")
        );
        let d = vec![
            data("17.0", &[("ip", "10.0.0.1"), ("token", "a b")]),
            data("17.2", &[]),
            data("17.1", &[("ip", "10.0.0.2")]),
        ];
        assert_eq!(
            Reply::WaitComplete(d.clone()).console_line().as_deref(),
            Some("<LAVA_WAIT_COMPLETE 17.0:ip=10.0.0.1 17.0:token=a b 17.1:ip=10.0.0.2>")
        );
        assert_eq!(
            Reply::WaitAllComplete(d).console_line().as_deref(),
            Some("<LAVA_WAIT_ALL_COMPLETE 17.0:ip=10.0.0.1 17.0:token=a b 17.1:ip=10.0.0.2>")
        );
        assert_eq!(
            Reply::WaitComplete(vec![]).console_line().as_deref(),
            Some("<LAVA_WAIT_COMPLETE>")
        );
    }

    #[test]
    fn nacks() {
        let nack = |call| Reply::Nack {
            call,
            reason: NackReason::GroupFull,
        };
        assert_eq!(
            nack(CallKind::Wait).console_line().as_deref(),
            Some("<LAVA_WAIT_COMPLETE nack>")
        );
        assert_eq!(
            nack(CallKind::WaitAll).console_line().as_deref(),
            Some("<LAVA_WAIT_ALL_COMPLETE nack>")
        );
        assert_eq!(
            nack(CallKind::Sync).console_line().as_deref(),
            Some("<LAVA_SYNC_COMPLETE nack>")
        );
        assert_eq!(nack(CallKind::Send).console_line(), None);
        assert!(nack(CallKind::Send).ends_test());
        assert!(!nack(CallKind::Sync).ends_test());
        assert!(!Reply::Sent.ends_test());
        assert_eq!(
            CallError::UnknownCall("X".into()).nack(),
            None,
            "an unknown call is ignored as LAVA ignores it"
        );
        assert_eq!(
            CallError::NotUtf8(CallKind::Sync).nack(),
            Some(Reply::Nack {
                call: CallKind::Sync,
                reason: NackReason::Invalid
            })
        );
    }
}
