//! The tables of agent links held by followers (schema 7) on both databases: claims with a
//! deadline, the leader's outbox in order per link, and the migration from version 6.

use anyhow::{Result, ensure};
use dutlab_controller::store::agent_links::{CLOSE_SEQ, LinkAddress};
use dutlab_controller::store::{SqliteSync, Store, schema};
use sqlx::Executor;
use sqlx::any::AnyPoolOptions;
use testkit::postgres::Postgres;

#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// An empty database; the server (PostgreSQL) stops when dropped.
struct Db {
    url: String,
    _pg: Option<Postgres>,
    _dir: tempfile::TempDir,
}

impl Db {
    fn new(backend: Backend) -> Result<Db> {
        let dir = tempfile::tempdir()?;
        Ok(match backend {
            Backend::Sqlite => Db {
                url: Store::sqlite_url(dir.path()),
                _pg: None,
                _dir: dir,
            },
            Backend::Postgres => {
                let pg = Postgres::start()?;
                let url = pg.create_database("dutlab")?;
                Db {
                    url,
                    _pg: Some(pg),
                    _dir: dir,
                }
            }
        })
    }

    async fn run(&self, statements: &[&str]) -> Result<()> {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .connect(&self.url)
            .await?;
        for statement in statements {
            pool.execute(sqlx::AssertSqlSafe(statement.to_string()))
                .await?;
        }
        pool.close().await;
        Ok(())
    }
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() -> anyhow::Result<()> {
                super::$name(super::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() -> anyhow::Result<()> {
                super::$name(super::Backend::Postgres).await
            }
        }
    )*};
}

on_both!(
    claims_lapse_and_only_their_own_link_releases_them,
    the_outbox_keeps_each_links_order_and_its_close_last,
    version_6_databases_get_the_tables_of_relayed_links,
    version_9_claims_keep_their_rows_and_gain_an_address,
    the_leaders_address_is_recorded_and_cleared,
);

fn link(controller: &str, conn: u64) -> LinkAddress {
    LinkAddress {
        controller: controller.into(),
        conn,
    }
}

async fn claims_lapse_and_only_their_own_link_releases_them(backend: Backend) -> Result<()> {
    let db = Db::new(backend)?;
    let store = Store::open(&db.url, SqliteSync::Full).await?;
    let (a1, b7) = (link("a", 1), link("b", 7));
    store.claim_link("host-1", &a1, None, 100).await?;
    store
        .claim_link("host-2", &a1, Some("https://lab-a:7780"), 100)
        .await?;
    ensure!(store.live_links(50).await?.len() == 2);
    // A newer link of host-1 on controller b replaces a's claim; a's end leaves it alone.
    store
        .claim_link("host-1", &b7, Some("https://lab-b:7780"), 100)
        .await?;
    store.release_link("host-1", &a1).await?;
    // Where each agent's link is, for redirecting streams: the live claim's holder.
    ensure!(
        store.link_holder("host-1", 50).await?
            == Some(("b".into(), Some("https://lab-b:7780".into())))
    );
    ensure!(store.link_holder("host-1", 100).await?.is_none(), "lapsed");
    ensure!(store.link_holder("host-3", 50).await?.is_none());
    let live = store.live_links(50).await?;
    ensure!(
        live.iter().any(|c| c.agent == "host-1" && c.link == b7),
        "{live:?}"
    );
    // Renewal moves only b's deadlines; a's claim lapses.
    store.renew_links("b", 200).await?;
    let live = store.live_links(150).await?;
    ensure!(
        live.len() == 1 && live[0].agent == "host-1" && live[0].link == b7,
        "{live:?}"
    );
    store.release_link("host-1", &b7).await?;
    ensure!(store.live_links(150).await?.is_empty());
    Ok(())
}

async fn the_outbox_keeps_each_links_order_and_its_close_last(backend: Backend) -> Result<()> {
    let db = Db::new(backend)?;
    let store = Store::open(&db.url, SqliteSync::Full).await?;
    let (b1, b2, c1) = (link("b", 1), link("b", 2), link("c", 1));
    store
        .send_outbox(&b1, 4, &[(CLOSE_SEQ, "close".into())], 10)
        .await?;
    store
        .send_outbox(&b1, 3, &[(1, "one".into()), (2, "two".into())], 10)
        .await?;
    store
        .send_outbox(&b2, 5, &[(1, "other".into())], 10)
        .await?;
    store
        .send_outbox(&c1, 5, &[(1, "elsewhere".into())], 10)
        .await?;
    // A close written twice stays one row.
    store
        .send_outbox(&b1, 9, &[(CLOSE_SEQ, "again".into())], 11)
        .await?;
    let rows = store.outbox("b").await?;
    let seen: Vec<(u64, u64, &str)> = rows
        .iter()
        .map(|r| (r.conn, r.seq, r.body.as_str()))
        .collect();
    ensure!(
        seen == [
            (1, 1, "one"),
            (1, 2, "two"),
            (1, CLOSE_SEQ, "close"),
            (2, 1, "other")
        ],
        "{seen:?}"
    );
    ensure!(rows[0].after_event == 3 && rows[2].after_event == 4);
    store.delete_outbox(&b1, 2).await?;
    let left: Vec<u64> = store.outbox("b").await?.iter().map(|r| r.seq).collect();
    ensure!(left == [CLOSE_SEQ, 1], "{left:?}");
    store.prune_outbox(11).await?;
    ensure!(store.outbox("b").await?.is_empty() && store.outbox("c").await?.is_empty());
    Ok(())
}

async fn version_6_databases_get_the_tables_of_relayed_links(backend: Backend) -> Result<()> {
    let db = Db::new(backend)?;
    drop(Store::open(&db.url, SqliteSync::Full).await?);
    // Take the database back to version 6 as version 6 left it: without the tables of 7.
    db.run(&[
        "DROP TABLE agent_links",
        "DROP TABLE agent_outbox",
        "UPDATE meta SET value = '6' WHERE key = 'schema'",
    ])
    .await?;
    ensure!(schema::LATEST >= 7);
    let store = Store::open(&db.url, SqliteSync::Full).await?;
    store
        .claim_link("host-1", &link("a", 1), Some("http://a"), 100)
        .await?;
    ensure!(store.live_links(1).await?.len() == 1);
    ensure!(
        store
            .link_holder("host-1", 1)
            .await?
            .is_some_and(|(_, url)| url.as_deref() == Some("http://a"))
    );
    ensure!(store.outbox("a").await?.is_empty());
    Ok(())
}

async fn version_9_claims_keep_their_rows_and_gain_an_address(backend: Backend) -> Result<()> {
    let db = Db::new(backend)?;
    drop(Store::open(&db.url, SqliteSync::Full).await?);
    // Version 9 as it was: claims without an address, one of them live.
    db.run(&[
        "ALTER TABLE agent_links DROP COLUMN url",
        "INSERT INTO agent_links (agent, controller, conn, expires_at) VALUES ('host-1', 'a', 1, 100)",
        "UPDATE meta SET value = '9' WHERE key = 'schema'",
    ])
    .await?;
    ensure!(schema::LATEST >= 10);
    let store = Store::open(&db.url, SqliteSync::Full).await?;
    ensure!(store.link_holder("host-1", 1).await? == Some(("a".into(), None)));
    store
        .claim_link("host-1", &link("b", 2), Some("http://b:7780"), 100)
        .await?;
    ensure!(
        store.link_holder("host-1", 1).await? == Some(("b".into(), Some("http://b:7780".into())))
    );
    Ok(())
}

async fn the_leaders_address_is_recorded_and_cleared(backend: Backend) -> Result<()> {
    let db = Db::new(backend)?;
    let store = Store::open(&db.url, SqliteSync::Full).await?;
    ensure!(store.leader_url().await?.is_none());
    store.set_leader_url(Some("https://lab1:7780")).await?;
    store.set_leader_url(Some("https://lab2:7780")).await?;
    ensure!(store.leader_url().await?.as_deref() == Some("https://lab2:7780"));
    store.set_leader_url(None).await?;
    ensure!(store.leader_url().await?.is_none());
    Ok(())
}
