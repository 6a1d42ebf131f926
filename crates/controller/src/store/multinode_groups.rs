//! MultiNode coordinators (table `multinode_groups`, schema 9): one row per group that has
//! made calls, holding its coordinator's whole state as JSON.
//!
//! Invariants:
//! - The row is written (replaced) after every new call the coordinator applied and before
//!   any reply it made due is sent, so a restarted controller answers exactly as the old one
//!   would have: a member's repeated call gets its stored reply, waiting calls still wait.
//! - The state is bounded by the coordinator's own limits (`multinode::limits`): the row does
//!   not grow with the number of calls.
//! - The row is removed when every sub-job of the group has finished.

use super::rows::as_i64;
use super::{Store, StoreError};
use proto::JobId;
use sqlx::Row;

impl Store {
    /// The stored coordinator of group `group` (the id of its sub-job 0), if any.
    pub async fn coordinator(
        &self,
        group: JobId,
    ) -> Result<Option<multinode::Coordinator>, StoreError> {
        let row = sqlx::query("SELECT state FROM multinode_groups WHERE grp = $1")
            .bind(as_i64(group.0))
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let text: String = row.try_get("state")?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                what: "multinode coordinator",
                reason: format!("group {group}: {e}"),
            })
    }

    /// Stores the coordinator of group `group`, replacing the one stored.
    pub async fn save_coordinator(
        &self,
        group: JobId,
        coordinator: &multinode::Coordinator,
    ) -> Result<(), StoreError> {
        let text = serde_json::to_string(coordinator).map_err(|e| StoreError::Corrupt {
            what: "multinode coordinator",
            reason: format!("group {group}: {e}"),
        })?;
        sqlx::query(
            "INSERT INTO multinode_groups (grp, state) VALUES ($1, $2)
             ON CONFLICT (grp) DO UPDATE SET state = excluded.state",
        )
        .bind(as_i64(group.0))
        .bind(text)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets the coordinator of group `group` (every sub-job finished).
    pub async fn drop_coordinator(&self, group: JobId) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM multinode_groups WHERE grp = $1")
            .bind(as_i64(group.0))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
