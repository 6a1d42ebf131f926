//! Artifact bytes in the database, for controllers that share one (PostgreSQL; table of
//! schema 11): `artifact_chunks` holds each artifact's content as numbered chunks (`idx` 0,
//! 1, ...; at most [`CHUNK`] bytes each, every chunk but the last full, an empty artifact
//! one empty chunk), so any controller can serve an artifact another one received.
//!
//! Invariants:
//! - A controller writes an artifact's chunks before its `artifacts` row (the metadata), so
//!   a row written this way means the bytes are there. Rows of artifacts received before
//!   schema 11 have no chunks until the controller holding the file imports it.
//! - Chunks are written `ON CONFLICT DO NOTHING`: two controllers storing the same content
//!   (same digest) write the same chunks, and a crashed upload's partial chunks are completed
//!   by the next upload of that content. Whoever reads them checks the digest.

use super::rows::{as_i64, as_u64};
use super::{Store, StoreError};
use sqlx::Row;

/// Bytes per chunk.
pub const CHUNK: usize = 1 << 20;

impl Store {
    /// Stores chunk `idx` of artifact `sha256` (kept as it is if already there).
    pub async fn put_artifact_chunk(
        &self,
        sha256: &str,
        idx: u64,
        data: &[u8],
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO artifact_chunks (sha256, idx, data) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(sha256.to_owned())
        .bind(as_i64(idx))
        .bind(data.to_vec())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Bytes of artifact `sha256` the database holds (its size once every chunk is there).
    pub async fn artifact_stored_bytes(&self, sha256: &str) -> Result<u64, StoreError> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(LENGTH(data)), 0) AS BIGINT) AS total
             FROM artifact_chunks WHERE sha256 = $1",
        )
        .bind(sha256.to_owned())
        .fetch_one(&self.pool)
        .await?;
        Ok(as_u64(row.try_get("total")?))
    }

    /// Up to `limit` chunks of artifact `sha256` from chunk `from` on, in order.
    pub async fn artifact_chunks(
        &self,
        sha256: &str,
        from: u64,
        limit: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT idx, data FROM artifact_chunks WHERE sha256 = $1 AND idx >= $2
             ORDER BY idx LIMIT $3",
        )
        .bind(sha256.to_owned())
        .bind(as_i64(from))
        .bind(as_i64(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((as_u64(r.try_get("idx")?), r.try_get::<Vec<u8>, _>("data")?)))
            .collect()
    }

    /// Stored artifacts (digest, size) whose bytes are not in the database.
    pub async fn artifacts_without_chunks(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT a.sha256, a.size FROM artifacts a WHERE NOT EXISTS
             (SELECT 1 FROM artifact_chunks c WHERE c.sha256 = a.sha256) ORDER BY a.sha256",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("sha256")?, as_u64(r.try_get("size")?))))
            .collect()
    }
}
