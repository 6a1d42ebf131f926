//! Users (principals) and their groups, in memory, shared by every request.
//!
//! Invariants:
//! - The database is the source ([`crate::store::Store::principals`]); this is a copy loaded
//!   at start and updated only after the database has changed (tokens made, memberships set).
//! - A principal's id never changes and names are unique; groups are the only mutable part.

use crate::store::StoredPrincipal;
use proto::{GroupName, PrincipalId};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

/// Every principal by id.
#[derive(Debug, Clone, Default)]
pub struct Principals(Arc<RwLock<HashMap<PrincipalId, StoredPrincipal>>>);

impl Principals {
    /// Adds or replaces a principal (after it was stored).
    pub fn put(&self, principal: StoredPrincipal) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(principal.id, principal);
    }

    /// The groups `id` is a member of (none for an unknown id).
    pub fn groups_of(&self, id: PrincipalId) -> BTreeSet<GroupName> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .map(|p| p.groups.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn named(&self, name: &str) -> Option<StoredPrincipal> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .find(|p| p.name == name)
            .cloned()
    }

    /// Every principal, in id order.
    pub fn all(&self) -> Vec<StoredPrincipal> {
        let mut all: Vec<StoredPrincipal> = self
            .0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by_key(|p| p.id);
        all
    }
}
