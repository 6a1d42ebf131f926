//! The per-user quota on artifact bytes: how many bytes of artifacts one user may keep in the
//! store (`dutlab serve --artifact-quota-bytes`). An upload that would pass it is refused with
//! 429 and a message naming the quota, the user's usage and the upload's size.
//!
//! ```text
//!  PUT ─> usage = sum of the sizes of the artifacts the user uploaded (store)
//!     ─> Content-Length > quota - usage ? 429 before any byte is read
//!     ─> streaming: bytes > quota - usage ? 429, the temporary file removed
//!     ─> verified ─> [user's turn] usage again; usage + size > quota ? 429 : record ─> 201
//! ```
//!
//! Invariants:
//! - A user's usage is the sum of the sizes of the distinct artifacts recorded as uploaded by
//!   them (`artifact_uploaders`). Bytes stored once count once per user who uploaded them: a
//!   user who uploads bytes someone else stored takes them into their own usage, and an
//!   artifact a user already has costs nothing again.
//! - The final check and the record of an upload happen in the user's turn (one at a time per
//!   user), so concurrent uploads of one user never end above the quota; the earlier checks
//!   only refuse early.
//! - Only the quota on artifact bytes lives here; quotas on queued jobs and job definitions
//!   are their own (they answer 429 the same way).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Default bytes of artifacts one user may keep, 20 GiB (five uploads of the default
/// largest artifact, `proto::api::DEFAULT_MAX_ARTIFACT`).
pub const DEFAULT_ARTIFACT_QUOTA: u64 = 20 << 30;

/// An upload that would pass the user's quota.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "artifact quota: {user} stores {usage} bytes of artifacts; this upload of {upload} bytes \
     would make {total}, over the quota of {quota} bytes per user (the operator sets it with \
     `dutlab serve --artifact-quota-bytes`)",
    total = usage.saturating_add(*upload)
)]
pub struct OverArtifactQuota {
    pub user: String,
    /// Bytes the user stores now.
    pub usage: u64,
    /// Bytes of this upload (declared, or read so far).
    pub upload: u64,
    pub quota: u64,
}

/// The quota and the per-user turns of the final check. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ArtifactQuota {
    quota: u64,
    turns: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl ArtifactQuota {
    pub fn new(quota: u64) -> ArtifactQuota {
        ArtifactQuota {
            quota,
            turns: Arc::default(),
        }
    }

    /// Bytes of artifacts one user may keep.
    pub fn quota(&self) -> u64 {
        self.quota
    }

    /// Ok when `upload` more bytes fit next to `usage`; else the refusal.
    pub fn check(&self, user: &str, usage: u64, upload: u64) -> Result<(), OverArtifactQuota> {
        if usage.saturating_add(upload) <= self.quota {
            Ok(())
        } else {
            Err(OverArtifactQuota {
                user: user.to_owned(),
                usage,
                upload,
                quota: self.quota,
            })
        }
    }

    /// Bytes an upload may still bring (0 when the user is at or over the quota).
    pub fn room(&self, usage: u64) -> u64 {
        self.quota.saturating_sub(usage)
    }

    /// Waits for `user`'s turn: final checks and records of one user's uploads run one at a
    /// time while the answer lives.
    pub async fn turn(&self, user: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let gate = self
            .turns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(user.to_owned())
            .or_default()
            .clone();
        gate.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_fits_up_to_the_quota_and_the_refusal_names_quota_and_usage() {
        let quota = ArtifactQuota::new(1000);
        assert!(quota.check("alice", 600, 400).is_ok());
        let refused = quota.check("alice", 600, 401).err();
        assert_eq!(
            refused,
            Some(OverArtifactQuota {
                user: "alice".into(),
                usage: 600,
                upload: 401,
                quota: 1000
            })
        );
        let text = refused.map(|r| r.to_string()).unwrap_or_default();
        assert!(text.contains("alice stores 600 bytes"), "{text}");
        assert!(
            text.contains("upload of 401 bytes would make 1001"),
            "{text}"
        );
        assert!(text.contains("quota of 1000 bytes per user"), "{text}");
        assert_eq!(quota.room(600), 400);
        assert_eq!(quota.room(2000), 0);
        assert!(quota.check("alice", u64::MAX, 1).is_err());
    }
}
