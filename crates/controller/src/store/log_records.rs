//! Job logs in the database (`log_records`), used when the store is PostgreSQL, so that every
//! controller on the database reads and writes the same logs.
//!
//! Invariants:
//! - A job's records are numbered 1, 2, 3 ... with no hole and no duplicate: one transaction
//!   reads the job's last stored number and inserts only the records that continue it; the
//!   primary key (job, seq) makes a concurrent writer's transaction fail, and it is retried
//!   against the new last number. So a record is stored exactly once, whichever controller
//!   ingests it, and a controller's own note always takes the next free number.
//! - A committed record is durable (PostgreSQL syncs its commits; SQLite runs with
//!   `synchronous=FULL` unless told otherwise).
//! - On PostgreSQL every commit that stored records notifies `dutlab_logs` with
//!   `<job>:<last seq>` in the same transaction, so listeners hear of committed records only.
//! - Records are stored as the JSON of [`LogRecord`] (console text raw, escaped by JSON: a
//!   NUL byte of DUT output cannot reach a `TEXT` column).

use super::rows::{as_i64, as_u64};
use super::{Store, StoreError};
use proto::log::LogRecord;
use proto::{JobId, Seq};
use sqlx::Row;

/// The channel of log notifications (payload `<job>:<last seq>`).
pub const LOG_CHANNEL: &str = "dutlab_logs";

/// How often an append is tried when concurrent writers took its numbers.
const APPEND_ATTEMPTS: u32 = 16;

/// Rows per INSERT statement.
const ROWS_PER_INSERT: usize = 64;

/// Whether a failed append lost a race with another writer (and is to be tried again): the
/// primary key taken (PostgreSQL, SQLite), or SQLite's write lock taken after this
/// transaction read (`SQLITE_BUSY`, which its busy timeout does not wait out).
fn raced(e: &dyn sqlx::error::DatabaseError) -> bool {
    e.is_unique_violation() || matches!(e.code().as_deref(), Some("5" | "517"))
}

impl Store {
    /// Stores the records that continue `job`'s log (each `seq` one more than the last
    /// stored); answers the last stored number and the records stored now.
    pub async fn append_log(
        &self,
        job: JobId,
        records: &[LogRecord],
    ) -> Result<(Seq, Vec<LogRecord>), StoreError> {
        self.append_with(job, |last| {
            let mut next = last.0 + 1;
            records
                .iter()
                .filter(|r| {
                    let continues = r.seq.0 == next;
                    if continues {
                        next += 1;
                    }
                    continues
                })
                .cloned()
                .collect()
        })
        .await
    }

    /// Stores one record numbered after the last stored one (a controller's note); answers it.
    pub async fn append_log_note(
        &self,
        job: JobId,
        make: impl Fn(Seq) -> LogRecord,
    ) -> Result<LogRecord, StoreError> {
        let (_, mut stored) = self
            .append_with(job, |last| vec![make(Seq(last.0 + 1))])
            .await?;
        stored.pop().ok_or_else(|| StoreError::Corrupt {
            what: "log record",
            reason: format!("job {job}: a note was not stored"),
        })
    }

    async fn append_with(
        &self,
        job: JobId,
        pick: impl Fn(Seq) -> Vec<LogRecord>,
    ) -> Result<(Seq, Vec<LogRecord>), StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_append(job, &pick).await {
                Err(StoreError::Sql(sqlx::Error::Database(e)))
                    if attempt < APPEND_ATTEMPTS && raced(&*e) =>
                {
                    tracing::debug!("log of job {job}: another writer stored first; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(u64::from(attempt))).await;
                }
                other => return other,
            }
        }
    }

    async fn try_append(
        &self,
        job: JobId,
        pick: &impl Fn(Seq) -> Vec<LogRecord>,
    ) -> Result<(Seq, Vec<LogRecord>), StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT CAST(COALESCE(MAX(seq), 0) AS BIGINT) AS last FROM log_records WHERE job = $1",
        )
        .bind(as_i64(job.0))
        .fetch_one(&mut *tx)
        .await?;
        let last = Seq(as_u64(row.try_get("last")?));
        let fresh = pick(last);
        if fresh.is_empty() {
            tx.rollback().await?;
            return Ok((last, fresh));
        }
        for chunk in fresh.chunks(ROWS_PER_INSERT) {
            let mut sql = String::from("INSERT INTO log_records (job, seq, body) VALUES ");
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("($1, ${}, ${})", 2 * i + 2, 2 * i + 3));
            }
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(as_i64(job.0));
            for r in chunk {
                let body = serde_json::to_string(r).map_err(|e| StoreError::Corrupt {
                    what: "log record",
                    reason: e.to_string(),
                })?;
                query = query.bind(as_i64(r.seq.0)).bind(body);
            }
            query.execute(&mut *tx).await?;
        }
        let stored = fresh.last().map_or(last, |r| r.seq);
        self.notify(&mut tx, LOG_CHANNEL, &format!("{job}:{stored}"))
            .await?;
        tx.commit().await?;
        Ok((stored, fresh))
    }

    /// The number of `job`'s last stored record (0: none).
    pub async fn log_last(&self, job: JobId) -> Result<Seq, StoreError> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(MAX(seq), 0) AS BIGINT) AS last FROM log_records WHERE job = $1",
        )
        .bind(as_i64(job.0))
        .fetch_one(&self.pool)
        .await?;
        Ok(Seq(as_u64(row.try_get("last")?)))
    }

    /// Up to `limit` stored records of `job` after `after`, in order.
    pub async fn log_records(
        &self,
        job: JobId,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<LogRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, body FROM log_records WHERE job = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(as_i64(job.0))
        .bind(as_i64(after.0))
        .bind(as_i64(limit as u64))
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let seq: i64 = row.try_get("seq")?;
            let body: String = row.try_get("body")?;
            let record: LogRecord =
                serde_json::from_str(&body).map_err(|e| StoreError::Corrupt {
                    what: "log record",
                    reason: format!("job {job} record {seq}: {e}"),
                })?;
            // Numbers continue the log by construction; stop at anything else rather than
            // hand a reader a hole.
            let expect = out.last().map_or(after.0 + 1, |r: &LogRecord| r.seq.0 + 1);
            if record.seq.0 != expect || as_u64(seq) != expect {
                break;
            }
            out.push(record);
        }
        Ok(out)
    }
}
