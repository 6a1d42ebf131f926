//! One controller per database: a `dutlab serve` works on a PostgreSQL database only while it
//! holds the database's advisory lock, on a connection of its own kept for its lifetime.
//!
//! Invariants:
//! - The lock is taken before the schema is migrated or the events are replayed, so a second
//!   controller never reads, migrates or writes a database another one is using: it is
//!   refused ([`Wait::Refuse`], naming the holder) or waits as a standby ([`Wait::Standby`])
//!   and starts as soon as the lock is free.
//! - PostgreSQL releases the lock when the holder's session ends (a killed controller's
//!   socket closes, its backend exits), so a standby takes over within moments.
//! - A holder that loses its lock connection may no longer be the only writer: [`Hold::lost`]
//!   resolves and the controller stops. Until it notices (one ping interval), a second
//!   writer's commits would collide on `events.seq` (a primary key) and fail, never interleave.
//! - SQLite needs no lock here: its database lives in the data directory, which `serve` locks.

use super::{StoreError, redact, schema};
use sqlx::{AnyConnection, ConnectOptions, Connection, Executor, Row};
use std::time::Duration;
use tokio::sync::watch;

/// The advisory lock's key: "dutlab" in ASCII.
pub const LOCK_KEY: i64 = 0x6475_746c_6162;

/// How long a start retries a held lock before it is refused.
const SETTLE: Duration = Duration::from_secs(2);

/// How often the holder checks its lock connection.
const PING: Duration = Duration::from_secs(1);

/// What to do when another controller holds the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Wait {
    /// Refuse to start ([`StoreError::Held`]).
    #[default]
    Refuse,
    /// Wait until the lock is free, then start.
    Standby,
    /// Serve as a follower of the holder until the lock is free, then lead (PostgreSQL only;
    /// [`Hold::take`] treats it as [`Wait::Refuse`], and the caller follows on
    /// [`StoreError::Held`]).
    Follow,
}

/// The database held by this controller (nothing to hold for SQLite).
pub struct Hold {
    lost: Option<watch::Receiver<Option<String>>>,
    pinger: Option<tokio::task::JoinHandle<()>>,
}

impl Hold {
    /// Takes the lock of the database at `url` (PostgreSQL), recording `holder` (who this
    /// controller is, for the message another one shows). Answers at once for SQLite.
    pub async fn take(url: &str, holder: &str, wait: Wait) -> Result<Hold, StoreError> {
        if !url.starts_with("postgres:") && !url.starts_with("postgresql:") {
            return Ok(Hold {
                lost: None,
                pinger: None,
            });
        }
        sqlx::any::install_default_drivers();
        let connect_error = |source| StoreError::Connect {
            url: redact(url),
            source,
        };
        // A standby or follower waits in `pg_advisory_lock` for as long as the leader lives:
        // that statement is slow by design, so this connection logs no statements.
        let options = url
            .parse::<sqlx::any::AnyConnectOptions>()
            .map_err(connect_error)?
            .disable_statement_logging();
        let mut conn = AnyConnection::connect_with(&options)
            .await
            .map_err(connect_error)?;
        // A controller killed a moment ago holds the lock until its backend has seen the
        // socket close: try for a short while before calling the database held.
        let deadline = tokio::time::Instant::now() + SETTLE;
        let got = loop {
            let row = sqlx::query("SELECT pg_try_advisory_lock($1) AS got")
                .bind(LOCK_KEY)
                .fetch_one(&mut conn)
                .await?;
            let got: bool = row.try_get("got")?;
            if got || tokio::time::Instant::now() >= deadline {
                break got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if !got {
            let current = current_holder(&mut conn).await;
            match wait {
                Wait::Refuse | Wait::Follow => {
                    return Err(StoreError::Held {
                        url: redact(url),
                        holder: current,
                    });
                }
                Wait::Standby => {
                    tracing::info!(
                        "standby: database {} is used by another controller ({current}); \
                         waiting to take over",
                        redact(url)
                    );
                    sqlx::query("SELECT 1 AS got FROM (SELECT pg_advisory_lock($1)) l")
                        .bind(LOCK_KEY)
                        .fetch_one(&mut conn)
                        .await?;
                    tracing::info!("standby: the database is free; taking over");
                }
            }
        }
        conn.execute(schema::META).await?;
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES ('controller', $1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(holder.to_owned())
        .execute(&mut conn)
        .await?;
        let (tell, lost) = watch::channel(None);
        let pinger = tokio::spawn(async move {
            loop {
                tokio::time::sleep(PING).await;
                if let Err(e) = conn.ping().await {
                    let _ = tell.send(Some(e.to_string()));
                    return;
                }
            }
        });
        Ok(Hold {
            lost: Some(lost),
            pinger: Some(pinger),
        })
    }

    /// Resolves (with the reason) when the lock connection failed: the lock may be gone.
    /// Never resolves for SQLite.
    pub async fn lost(&mut self) -> String {
        let Some(lost) = self.lost.as_mut() else {
            return std::future::pending().await;
        };
        match lost.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => "the lock connection's watcher stopped".to_owned(),
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(pinger) = &self.pinger {
            // Closing the connection ends the session, which releases the lock.
            pinger.abort();
        }
    }
}

/// Who holds the database, as its holder recorded it.
async fn current_holder(conn: &mut AnyConnection) -> String {
    let row = sqlx::query("SELECT value FROM meta WHERE key = 'controller'")
        .fetch_optional(&mut *conn)
        .await;
    match row.map(|r| r.map(|r| r.try_get::<String, _>("value"))) {
        Ok(Some(Ok(holder))) => holder,
        _ => "a controller that did not say who it is".to_owned(),
    }
}
