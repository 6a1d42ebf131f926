//! Several controllers on one PostgreSQL database: commands forwarded by followers to the
//! leader (`commands`), and what followers read to follow the leader (events and job rows
//! after a point).
//!
//! Invariants:
//! - A follower writes a command row and notifies `dutlab_commands`; only the leader (the
//!   holder of the advisory lock) executes commands, and it marks a command `done` in the
//!   same transaction as the events the command caused ([`super::Change::command`]), so a
//!   command is executed at most once even when the leader dies right after its commit; a
//!   command never done is executed by the next leader.
//! - The answer is written to the row after the commit and notified on `dutlab_answers`; the
//!   follower that asked deletes the row when it has read the answer. A new leader first
//!   answers what the last one committed and never answered (as such).
//! - Every commit of events notifies `dutlab_events` with the last sequence number, in the
//!   same transaction (PostgreSQL delivers notifications of committed transactions only).

use super::rows::{as_i64, as_u64, job_row, job_rows};
use super::{Backend, JobRow, Store, StoreError};
use scheduler::Event;
use sqlx::Row;

/// Channels of the notifications between controllers.
pub const COMMAND_CHANNEL: &str = "dutlab_commands";
pub const ANSWER_CHANNEL: &str = "dutlab_answers";
pub const EVENT_CHANNEL: &str = "dutlab_events";

/// A forwarded command as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCommand {
    pub id: i64,
    pub body: String,
}

/// The answer to a forwarded command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandAnswer {
    /// Not executed yet.
    Pending,
    /// Executed and committed; the answer is not written yet.
    DoneUnanswered,
    /// The answer, and the last event the leader had committed when it answered.
    Answered { body: String, seq: u64 },
}

impl Store {
    /// Writes a command for the leader and notifies it.
    pub async fn insert_command(&self, id: i64, body: &str, at: u64) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO commands (id, body, created_at, done, answer, answer_seq)
             VALUES ($1, $2, $3, 0, NULL, NULL)",
        )
        .bind(id)
        .bind(body.to_owned())
        .bind(as_i64(at))
        .execute(&mut *tx)
        .await?;
        self.notify(&mut tx, COMMAND_CHANNEL, &id.to_string())
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Commands not executed yet, oldest first.
    pub async fn pending_commands(&self) -> Result<Vec<StoredCommand>, StoreError> {
        let rows =
            sqlx::query("SELECT id, body FROM commands WHERE done = 0 ORDER BY created_at, id")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredCommand {
                    id: r.try_get("id")?,
                    body: r.try_get("body")?,
                })
            })
            .collect()
    }

    /// Marks a command done without events (it was refused or changed nothing).
    pub async fn answer_command(&self, id: i64, body: &str, seq: u64) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE commands SET done = 1, answer = $1, answer_seq = $2 WHERE id = $3")
            .bind(body.to_owned())
            .bind(as_i64(seq))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        self.notify(&mut tx, ANSWER_CHANNEL, &id.to_string())
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Answers every command that is done but has no answer with `body` (a new leader: the
    /// last one committed them and stopped before answering); answers how many.
    pub async fn answer_unanswered(&self, body: &str) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE commands SET answer = $1, answer_seq = 0 WHERE done = 1 AND answer IS NULL",
        )
        .bind(body.to_owned())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() > 0 {
            self.notify(&mut tx, ANSWER_CHANNEL, "0").await?;
        }
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// Where a command stands; `None` when there is no such command.
    pub async fn command_answer(&self, id: i64) -> Result<Option<CommandAnswer>, StoreError> {
        let row = sqlx::query("SELECT done, answer, answer_seq FROM commands WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let done: i64 = row.try_get("done")?;
        let answer: Option<String> = row.try_get("answer")?;
        let seq: Option<i64> = row.try_get("answer_seq")?;
        Ok(Some(match (done, answer) {
            (0, _) => CommandAnswer::Pending,
            (_, Some(body)) => CommandAnswer::Answered {
                body,
                seq: seq.map_or(0, as_u64),
            },
            (_, None) => CommandAnswer::DoneUnanswered,
        }))
    }

    /// Removes a command whose answer was read.
    pub async fn delete_command(&self, id: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM commands WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Removes executed commands older than `before` (their follower is gone).
    pub async fn prune_commands(&self, before: u64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM commands WHERE done = 1 AND created_at < $1")
            .bind(as_i64(before))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Stored events from `first` on, in order.
    pub async fn events_from(&self, first: u64) -> Result<Vec<(u64, Event)>, StoreError> {
        let rows = sqlx::query("SELECT seq, body FROM events WHERE seq >= $1 ORDER BY seq")
            .bind(as_i64(first))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let seq: i64 = row.try_get("seq")?;
                let body: String = row.try_get("body")?;
                let event = serde_json::from_str(&body).map_err(|e| StoreError::Corrupt {
                    what: "event",
                    reason: format!("event {seq}: {e}"),
                })?;
                Ok((as_u64(seq), event))
            })
            .collect()
    }

    /// Job rows from id `first` on, in id order.
    pub async fn jobs_from(&self, first: u64) -> Result<Vec<JobRow>, StoreError> {
        let rows = sqlx::query(job_rows!("WHERE j.id >= $1 ORDER BY j.id"))
            .bind(as_i64(first))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(job_row).collect()
    }

    /// `pg_notify` inside a transaction (nothing on SQLite, where one controller works).
    pub(super) async fn notify(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        channel: &str,
        payload: &str,
    ) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(channel.to_owned())
                .bind(payload.to_owned())
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }
}
