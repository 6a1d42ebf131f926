//! How the scheduler names the leases it grants.
//!
//! The scheduler is pure: it draws no randomness. The controller draws a [`LeaseKey`] from the
//! operating system at every start and passes it in ([`LeaseIds::Keyed`]); the id of the n-th
//! grant is then the first 128 bits of SHA-256(key || n), which nobody without the key can
//! predict from the ids they have seen. Replay never derives ids: it takes them from the
//! stored `LeaseGranted` events, so a replayed scheduler holds the same ids whatever its key.
//!
//! Invariants:
//! - Under one key, two grants never get the same id (the grant number only rises); across
//!   keys (restarts) a collision needs a 128-bit coincidence. `apply` still refuses a grant of
//!   an id that is live.
//! - The key is never printed (its `Debug` is redacted).

use proto::LeaseId;
use sha2::{Digest, Sha256};

/// A 256-bit secret from which lease ids are derived.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LeaseKey(pub [u8; 32]);

impl std::fmt::Debug for LeaseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LeaseKey(<redacted>)")
    }
}

impl LeaseKey {
    /// The id of grant number `grant` under this key.
    pub fn derive(&self, grant: u64) -> LeaseId {
        let mut hash = Sha256::new();
        hash.update(b"dutlab lease id\0");
        hash.update(self.0);
        hash.update(grant.to_be_bytes());
        let digest = hash.finalize();
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        LeaseId(u128::from_be_bytes(first))
    }
}

/// How granted leases get their ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseIds {
    /// 1, 2, 3 ...: guessable. For tests and simulations; the controller never uses it.
    Sequential,
    /// Derived from a secret key (see the module documentation): what the controller uses.
    Keyed(LeaseKey),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_ids_depend_on_key_and_grant_and_fill_128_bits() {
        let a = LeaseKey([1; 32]);
        let b = LeaseKey([2; 32]);
        assert_ne!(a.derive(1), a.derive(2));
        assert_ne!(a.derive(1), b.derive(1));
        assert_eq!(a.derive(7), a.derive(7));
        let high = (1..64).filter(|n| a.derive(*n).0 >> 64 != 0).count();
        assert!(high > 60, "ids use the upper 64 bits too");
        assert_eq!(format!("{a:?}"), "LeaseKey(<redacted>)");
    }
}
