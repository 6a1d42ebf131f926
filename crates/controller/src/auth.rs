//! Tokens and callers.
//!
//! A token is `dutlab_` followed by 40 hex digits (160 random bits); its public id is the first
//! 8 of them. Only its SHA-256 is stored and kept in memory.
//!
//! Invariants:
//! - A secret is shown once (when created) and never logged, stored or put into an error.
//! - An agent token is bound to one agent name when it is made ([`Caller::agent`]); the link
//!   refuses a hello with another name, and refuses agent tokens without a binding.
//! - Every request but `/healthz` resolves to a [`Caller`] or is answered 401; roles are checked
//!   by the route ([`Caller::require`]) and answered 403.

use proto::api::TokenView;
use proto::{PrincipalId, Role};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub token_id: String,
    /// The token's own name (for logs; decisions use `principal`).
    pub name: String,
    /// The user the token speaks for.
    pub principal: PrincipalId,
    /// That user's name.
    pub user: String,
    pub role: Role,
    /// Agent tokens: the one agent name the token may say in its hello (`None` for other
    /// roles, and for agent tokens made before tokens were bound, which the link refuses).
    pub agent: Option<String>,
    /// Where the request came from (set per request by the listener; `None` when unknown).
    pub remote: Option<std::net::SocketAddr>,
}

impl Caller {
    /// Err(()) when the caller's role is not one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), Forbidden> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(Forbidden {
                role: self.role,
                allowed: roles.to_vec(),
            })
        }
    }
}

/// A caller whose role may not use a route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a token with role {role} may not do this (allowed: {})", allowed.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", "))]
pub struct Forbidden {
    pub role: Role,
    pub allowed: Vec<Role>,
}

/// A newly made token: the secret and what is stored of it.
pub struct NewToken {
    pub secret: String,
    pub id: String,
    pub hash: String,
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why a token could not be made.
#[derive(Debug, thiserror::Error)]
#[error("no randomness from the operating system: {0}")]
pub struct NoRandomness(String);

/// Makes a token from 20 random bytes.
pub fn new_token() -> Result<NewToken, NoRandomness> {
    let mut bytes = [0u8; 20];
    getrandom::fill(&mut bytes).map_err(|e| NoRandomness(e.to_string()))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let secret = format!("dutlab_{hex}");
    Ok(NewToken {
        id: hex[..8].to_owned(),
        hash: hash(&secret),
        secret,
    })
}

/// SHA-256 of a token, hex.
pub fn hash(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Live tokens by hash, shared by every request.
#[derive(Debug, Clone, Default)]
pub struct Tokens(Arc<RwLock<HashMap<String, Caller>>>);

impl Tokens {
    pub fn insert(&self, hash: String, view: &TokenView) {
        if view.revoked_at.is_some() {
            return;
        }
        let caller = Caller {
            token_id: view.id.clone(),
            name: view.name.clone(),
            principal: view.principal,
            user: view.user.clone(),
            role: view.role,
            agent: view.agent.clone(),
            remote: None,
        };
        self.0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(hash, caller);
    }

    pub fn revoke(&self, id: &str) {
        self.0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .retain(|_, caller| caller.token_id != id);
    }

    /// Public ids of the live tokens.
    pub fn ids(&self) -> std::collections::HashSet<String> {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .map(|caller| caller.token_id.clone())
            .collect()
    }

    /// Whether the token with this public id is live (known and not revoked).
    pub fn is_live(&self, id: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .any(|caller| caller.token_id == id)
    }

    /// The caller of an `Authorization` header value, if it holds a live token.
    pub fn caller(&self, authorization: &str) -> Option<Caller> {
        let secret = authorization.strip_prefix("Bearer ")?.trim();
        if !secret.starts_with("dutlab_") || secret.len() > 128 {
            return None;
        }
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&hash(secret))
            .cloned()
    }

    pub fn is_empty(&self) -> bool {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::Millis;

    #[test]
    fn tokens_resolve_by_hash_and_revoke() {
        let tokens = Tokens::default();
        let t = new_token().expect("randomness");
        assert!(t.secret.starts_with("dutlab_") && t.secret.len() == 47);
        assert!(!format!("{t:?}").contains(&t.secret[7..]));
        let view = TokenView {
            id: t.id.clone(),
            name: "alice".into(),
            role: Role::User,
            user: "alice".into(),
            principal: PrincipalId(1),
            agent: None,
            created_at: Millis(1),
            revoked_at: None,
        };
        tokens.insert(t.hash.clone(), &view);
        let caller = tokens
            .caller(&format!("Bearer {}", t.secret))
            .expect("known token");
        assert_eq!(caller.name, "alice");
        assert_eq!(caller.principal, PrincipalId(1));
        assert!(tokens.caller(&t.secret).is_none(), "scheme is required");
        assert!(tokens.caller("Bearer dutlab_0000").is_none());
        assert_eq!(
            caller.require(&[Role::Admin]),
            Err(Forbidden {
                role: Role::User,
                allowed: vec![Role::Admin]
            })
        );
        assert!(tokens.is_live(&t.id));
        tokens.revoke(&t.id);
        assert!(!tokens.is_live(&t.id));
        assert!(tokens.caller(&format!("Bearer {}", t.secret)).is_none());
    }
}
