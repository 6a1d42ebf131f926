//! Agent links held by followers, and the leader's messages to them (PostgreSQL; tables of
//! schema 7, `url` of schema 10).
//!
//! - `agent_links`: one row per agent whose link a follower holds: the controller's id, the
//!   follower's connection id, its advertised address (`url`, where people's streams of the
//!   agent's devices are redirected), and a deadline (`expires_at`) its holder moves on
//!   every second. A row whose deadline passed is a dead controller's claim: the leader
//!   counts the agent as disconnected.
//! - `meta` row `leader-url`: the leading controller's advertised address (absent: it
//!   advertises none), for streams of agents linked to the leader.
//! - `agent_outbox`: what the leader sends to such an agent (`StartJob`, `CancelJob`,
//!   `DropLease`, `FinishAcked`, session requests, a close), numbered per link by the leader
//!   (`seq`), with the leader's last committed event when it was written (`after_event`).
//!
//! Invariants:
//! - A claim row is written before the hello it covers is forwarded, and removed only by the
//!   connection that wrote it (`agent`, `controller` and `conn` must all match), so a newer
//!   link's claim is never removed by an older link's end.
//! - Outbox rows of one link are read in `seq` order and deleted by the controller holding
//!   the link once handed to it; a close has [`CLOSE_SEQ`], after every message. Every
//!   write notifies [`OUTBOX_CHANNEL`] in its own transaction.

use super::rows::{as_i64, as_u64};
use super::{Store, StoreError};
use sqlx::Row;

/// Notified when the leader wrote to `agent_outbox` (payload: the controller's id).
pub const OUTBOX_CHANNEL: &str = "dutlab_outbox";

/// The `seq` of a link's close: after every message of the link.
pub const CLOSE_SEQ: u64 = i64::MAX as u64;

/// A link a controller holds, as the leader addresses it.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct LinkAddress {
    /// The holding controller's id.
    pub controller: String,
    /// Its connection id.
    pub conn: u64,
}

/// A claim of `agent_links` whose deadline has not passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub agent: String,
    pub link: LinkAddress,
}

/// One message of `agent_outbox`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub conn: u64,
    pub seq: u64,
    /// The leader's last committed event when it wrote the row.
    pub after_event: u64,
    pub body: String,
}

impl Store {
    /// Records that `link` holds `agent`'s link until `expires_at` (replacing any claim);
    /// `url` is the holder's advertised address.
    pub async fn claim_link(
        &self,
        agent: &str,
        link: &LinkAddress,
        url: Option<&str>,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO agent_links (agent, controller, conn, url, expires_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (agent) DO UPDATE SET controller = excluded.controller,
               conn = excluded.conn, url = excluded.url, expires_at = excluded.expires_at",
        )
        .bind(agent.to_owned())
        .bind(link.controller.clone())
        .bind(as_i64(link.conn))
        .bind(url.map(str::to_owned))
        .bind(as_i64(expires_at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Where `agent`'s link is held if a follower holds it (its claim's deadline is after
    /// `now`): the holder's id and advertised address.
    pub async fn link_holder(
        &self,
        agent: &str,
        now: u64,
    ) -> Result<Option<(String, Option<String>)>, StoreError> {
        let row = sqlx::query(
            "SELECT controller, url FROM agent_links WHERE agent = $1 AND expires_at > $2",
        )
        .bind(agent.to_owned())
        .bind(as_i64(now))
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => Ok(Some((r.try_get("controller")?, r.try_get("url")?))),
            None => Ok(None),
        }
    }

    /// Records the leading controller's advertised address (`None`: it advertises none).
    pub async fn set_leader_url(&self, url: Option<&str>) -> Result<(), StoreError> {
        match url {
            Some(url) => {
                sqlx::query(
                    "INSERT INTO meta (key, value) VALUES ('leader-url', $1)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )
                .bind(url.to_owned())
                .execute(&self.pool)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM meta WHERE key = 'leader-url'")
                    .execute(&self.pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// The leading controller's advertised address, if it gave one.
    pub async fn leader_url(&self) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT value FROM meta WHERE key = 'leader-url'")
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => Ok(Some(r.try_get("value")?)),
            None => Ok(None),
        }
    }

    /// Moves the deadline of every claim of `controller`.
    pub async fn renew_links(&self, controller: &str, expires_at: u64) -> Result<(), StoreError> {
        sqlx::query("UPDATE agent_links SET expires_at = $1 WHERE controller = $2")
            .bind(as_i64(expires_at))
            .bind(controller.to_owned())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Removes `agent`'s claim if `link` still holds it.
    pub async fn release_link(&self, agent: &str, link: &LinkAddress) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM agent_links WHERE agent = $1 AND controller = $2 AND conn = $3")
            .bind(agent.to_owned())
            .bind(link.controller.clone())
            .bind(as_i64(link.conn))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Claims whose deadline is after `now`.
    pub async fn live_links(&self, now: u64) -> Result<Vec<Claim>, StoreError> {
        let rows =
            sqlx::query("SELECT agent, controller, conn FROM agent_links WHERE expires_at > $1")
                .bind(as_i64(now))
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(Claim {
                    agent: r.try_get("agent")?,
                    link: LinkAddress {
                        controller: r.try_get("controller")?,
                        conn: as_u64(r.try_get("conn")?),
                    },
                })
            })
            .collect()
    }

    /// Writes messages `(seq, body)` for `link` and notifies its controller. Rows already
    /// there (a close written twice) are kept as they are.
    pub async fn send_outbox(
        &self,
        link: &LinkAddress,
        after_event: u64,
        rows: &[(u64, String)],
        at: u64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for (seq, body) in rows {
            sqlx::query(
                "INSERT INTO agent_outbox (controller, conn, seq, after_event, body, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            )
            .bind(link.controller.clone())
            .bind(as_i64(link.conn))
            .bind(as_i64(*seq))
            .bind(as_i64(after_event))
            .bind(body.clone())
            .bind(as_i64(at))
            .execute(&mut *tx)
            .await?;
        }
        self.notify(&mut tx, OUTBOX_CHANNEL, &link.controller)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Messages for the links of `controller`, by link and in order.
    pub async fn outbox(&self, controller: &str) -> Result<Vec<OutboxRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT conn, seq, after_event, body FROM agent_outbox WHERE controller = $1
             ORDER BY conn, seq",
        )
        .bind(controller.to_owned())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(OutboxRow {
                    conn: as_u64(r.try_get("conn")?),
                    seq: as_u64(r.try_get("seq")?),
                    after_event: as_u64(r.try_get("after_event")?),
                    body: r.try_get("body")?,
                })
            })
            .collect()
    }

    /// Removes the messages of `link` up to `seq` (handed to the link, or the link is gone).
    pub async fn delete_outbox(&self, link: &LinkAddress, seq: u64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM agent_outbox WHERE controller = $1 AND conn = $2 AND seq <= $3")
            .bind(link.controller.clone())
            .bind(as_i64(link.conn))
            .bind(as_i64(seq))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Removes messages written before `before` (their controller is gone) and claims that
    /// expired before it.
    pub async fn prune_outbox(&self, before: u64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM agent_outbox WHERE created_at < $1")
            .bind(as_i64(before))
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM agent_links WHERE expires_at < $1")
            .bind(as_i64(before))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
