//! Long-lived connections (agent links, job-log follow streams) and how they are ended from
//! outside: by a newer link of the same agent, or by revoking the token that opened them.
//!
//! Every long-lived connection opens a [`Session`] right after its upgrade and selects on
//! [`Ender::ended`] next to its own work; [`Sessions::close`] and [`Sessions::close_token`]
//! make that future resolve with a reason, which the connection sends in its close frame.
//!
//! Invariants:
//! - A session is registered under the id of the token that opened it for as long as it lives
//!   (dropping the [`Session`] removes it), so revoking the token reaches every one of them.
//! - No session outlives a revocation: [`Sessions::open`] checks the token after registering,
//!   and revocation marks the token dead before closing its sessions, so a connection that was
//!   authorised just before the revocation is closed at once instead of slipping through.
//! - Connection ids are unique for the controller's lifetime and never reused.

use crate::auth::Tokens;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Identifies one long-lived connection (an agent that reconnects gets a new one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

struct Open {
    token: String,
    end: watch::Sender<Option<String>>,
}

#[derive(Default)]
struct Registry {
    last: u64,
    open: HashMap<ConnId, Open>,
}

/// Every open session, shared by the routes and the dispatcher.
#[derive(Clone)]
pub struct Sessions {
    registry: Arc<Mutex<Registry>>,
    tokens: Tokens,
}

impl Sessions {
    pub fn new(tokens: Tokens) -> Sessions {
        Sessions {
            registry: Arc::default(),
            tokens,
        }
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a connection opened with token `token_id`. If the token was revoked in the
    /// meantime, the session is born ended.
    pub fn open(&self, token_id: &str) -> Session {
        let (end, ended) = watch::channel(None);
        let id = {
            let mut registry = self.registry();
            registry.last += 1;
            let id = ConnId(registry.last);
            registry.open.insert(
                id,
                Open {
                    token: token_id.to_owned(),
                    end,
                },
            );
            id
        };
        let session = Session {
            id,
            ended: Ender(ended),
            sessions: self.clone(),
        };
        if !self.tokens.is_live(token_id) {
            self.close(id, "the token was revoked");
        }
        session
    }

    /// A connection id no session has, for a link this controller does not hold itself (an
    /// agent link another controller relays): unique like every other id.
    pub fn fresh_id(&self) -> ConnId {
        let mut registry = self.registry();
        registry.last += 1;
        ConnId(registry.last)
    }

    /// Ends one session with `reason` (no-op when it is gone already).
    pub fn close(&self, conn: ConnId, reason: &str) {
        if let Some(open) = self.registry().open.get(&conn) {
            open.end.send_replace(Some(reason.to_owned()));
        }
    }

    /// Ends every session opened with token `token_id`; answers how many there were.
    pub fn close_token(&self, token_id: &str, reason: &str) -> usize {
        let registry = self.registry();
        let mut count = 0;
        for open in registry.open.values().filter(|o| o.token == token_id) {
            open.end.send_replace(Some(reason.to_owned()));
            count += 1;
        }
        count
    }

    /// How many sessions are open (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.registry().open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One open connection. Dropping it deregisters it.
pub struct Session {
    pub id: ConnId,
    ended: Ender,
    sessions: Sessions,
}

impl Session {
    /// A handle that resolves when the session is ended (cheap; one per task that waits).
    pub fn ender(&self) -> Ender {
        self.ended.clone()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.sessions.registry().open.remove(&self.id);
    }
}

/// Resolves when its session is ended from outside.
#[derive(Clone)]
pub struct Ender(watch::Receiver<Option<String>>);

impl Ender {
    /// Waits until the session is ended; answers why. Never resolves while it is open.
    pub async fn ended(&mut self) -> String {
        loop {
            if let Some(reason) = self.0.borrow_and_update().clone() {
                return reason;
            }
            if self.0.changed().await.is_err() {
                // The session was dropped: its connection is ending anyway.
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::api::TokenView;
    use proto::{Millis, Role};

    fn live(tokens: &Tokens, id: &str) {
        let view = TokenView {
            id: id.into(),
            name: id.into(),
            role: Role::User,
            user: id.into(),
            principal: proto::PrincipalId(1),
            agent: None,
            created_at: Millis(1),
            revoked_at: None,
        };
        tokens.insert(format!("hash-{id}"), &view);
    }

    #[tokio::test]
    async fn revoking_ends_every_session_of_the_token_and_only_those() {
        let tokens = Tokens::default();
        live(&tokens, "aaaa");
        live(&tokens, "bbbb");
        let sessions = Sessions::new(tokens.clone());
        let a1 = sessions.open("aaaa");
        let a2 = sessions.open("aaaa");
        let b = sessions.open("bbbb");
        assert_ne!(a1.id, a2.id);
        tokens.revoke("aaaa");
        assert_eq!(sessions.close_token("aaaa", "the token was revoked"), 2);
        assert_eq!(a1.ender().ended().await, "the token was revoked");
        assert_eq!(a2.ender().ended().await, "the token was revoked");
        let mut still = b.ender();
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(20), still.ended()).await;
        assert!(waited.is_err(), "another token's session stays open");
        // A session opened with a token revoked meanwhile is born ended.
        let late = sessions.open("aaaa");
        assert_eq!(late.ender().ended().await, "the token was revoked");
        drop((a1, a2, late));
        assert_eq!(sessions.len(), 1);
    }
}
