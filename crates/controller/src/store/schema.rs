//! The schema and its versions: the tables of version 1 as that release made them, and the
//! forward migrations to every later version.
//!
//! Invariants:
//! - `meta` exists in every version; its `schema` row holds the version reached (a database
//!   without the row is version 1, which did not write it).
//! - [`V1`] is never edited and a migration is never edited once released: a database of any
//!   released version reaches [`LATEST`] by running the migrations above its version, in
//!   order, one transaction per version (PostgreSQL and SQLite both have transactional DDL).
//! - A database of a version above [`LATEST`] is refused before anything is written to it.
//! - One SQL text serves SQLite and PostgreSQL: `BIGINT`/`TEXT` columns, and `BYTEA` for
//!   bytes (a blob in SQLite).

use super::StoreError;
use sqlx::{AnyPool, Executor, Row};

/// The tables of schema version 1 (`CREATE ... IF NOT EXISTS`: a fresh database starts here).
pub(super) const V1: [&str; 4] = [
    "CREATE TABLE IF NOT EXISTS tokens (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE,
        created_at BIGINT NOT NULL,
        revoked_at BIGINT
    )",
    "CREATE TABLE IF NOT EXISTS jobs (
        id BIGINT PRIMARY KEY,
        name TEXT NOT NULL,
        owner TEXT NOT NULL,
        visibility TEXT NOT NULL,
        file_name TEXT NOT NULL,
        definition TEXT NOT NULL,
        warnings TEXT NOT NULL,
        report TEXT,
        last_seq BIGINT
    )",
    "CREATE TABLE IF NOT EXISTS events (
        seq BIGINT PRIMARY KEY,
        body TEXT NOT NULL
    )",
    META,
];

pub(super) const META: &str = "CREATE TABLE IF NOT EXISTS meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )";

/// A schema version.
pub type Version = i64;

/// Whether opening a database may migrate it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Migrate {
    /// Bring it to [`LATEST`] (the controller holding the database's lock).
    Forward,
    /// Never (a follower): it must be at [`LATEST`] already.
    Never,
}

/// The version this build writes and the newest it can open.
pub const LATEST: Version = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Changes after version 1, in order: (version reached, statements).
pub(super) const MIGRATIONS: [(Version, &[&str]); 10] = [
    // Agent tokens are bound to one agent name. Agent tokens of version 1 keep NULL here and
    // are refused by the agent link until the operator re-creates them (docs/security.md).
    (2, &["ALTER TABLE tokens ADD COLUMN agent TEXT"]),
    // Owners are principals. Every distinct name of a token or of a job's owner becomes one
    // principal, numbered 1, 2, ... in byte order of the names (deterministic: the same
    // database always migrates to the same ids), so tokens that shared a name, and the jobs
    // they submitted, stay together.
    (
        3,
        &[
            "CREATE TABLE principals (
                id BIGINT PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                created_at BIGINT NOT NULL
            )",
            "CREATE TABLE memberships (
                principal BIGINT NOT NULL,
                grp TEXT NOT NULL,
                PRIMARY KEY (principal, grp)
            )",
            "ALTER TABLE tokens ADD COLUMN principal BIGINT",
            "ALTER TABLE jobs ADD COLUMN owner_id BIGINT",
            "INSERT INTO principals (id, name, created_at)
             SELECT ROW_NUMBER() OVER (ORDER BY n.name), n.name,
                    COALESCE((SELECT MIN(t.created_at) FROM tokens t WHERE t.name = n.name), 0)
             FROM (SELECT name FROM tokens UNION SELECT owner AS name FROM jobs) n",
            "UPDATE tokens SET principal = (SELECT p.id FROM principals p WHERE p.name = tokens.name)",
            "UPDATE jobs SET owner_id = (SELECT p.id FROM principals p WHERE p.name = jobs.owner)",
        ],
    ),
    // Artifacts (uploaded images and bundles; uploaders recorded by principal id). Controllers
    // of version 3 after the artifacts release made these tables without a version of their
    // own, hence `IF NOT EXISTS`: both shapes of a version 3 database reach the same version 4.
    (
        4,
        &[
            "CREATE TABLE IF NOT EXISTS artifacts (
                sha256 TEXT PRIMARY KEY,
                size BIGINT NOT NULL,
                created_at BIGINT NOT NULL
            )",
            "CREATE TABLE IF NOT EXISTS artifact_uploaders (
                sha256 TEXT NOT NULL,
                principal TEXT NOT NULL,
                uploaded_at BIGINT NOT NULL,
                PRIMARY KEY (sha256, principal)
            )",
            "CREATE TABLE IF NOT EXISTS job_artifacts (
                job BIGINT NOT NULL,
                sha256 TEXT NOT NULL,
                PRIMARY KEY (job, sha256)
            )",
        ],
    ),
    // The audit of admin actions: who (user name and principal), when, what (action,
    // target, detail), from where (the request's remote address). Written by the dispatcher
    // only, numbered by it (`seq`), never changed. `IF NOT EXISTS`, as for version 4: a
    // database taken back to an older version by hand may still hold it.
    (
        5,
        &["CREATE TABLE IF NOT EXISTS audit (
                seq BIGINT PRIMARY KEY,
                at BIGINT NOT NULL,
                actor TEXT NOT NULL,
                principal BIGINT NOT NULL,
                action TEXT NOT NULL,
                target TEXT NOT NULL,
                detail TEXT NOT NULL,
                remote TEXT NOT NULL
            )"],
    ),
    // Several controllers on one database (used on PostgreSQL; SQLite keeps its logs in
    // files and has one controller): job logs, one row per record, stored once by (job, seq);
    // commands forwarded by followers to the leader, with their answers. `IF NOT EXISTS`
    // for the same reason as version 5.
    (
        6,
        &[
            "CREATE TABLE IF NOT EXISTS log_records (
                job BIGINT NOT NULL,
                seq BIGINT NOT NULL,
                body TEXT NOT NULL,
                PRIMARY KEY (job, seq)
            )",
            "CREATE TABLE IF NOT EXISTS commands (
                id BIGINT PRIMARY KEY,
                body TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                done BIGINT NOT NULL,
                answer TEXT,
                answer_seq BIGINT
            )",
        ],
    ),
    // Agent links held by followers (used on PostgreSQL): which controller holds which
    // agent's link, until a deadline its holder keeps moving; and what the leader sends to
    // agents whose link another controller holds, in order per link.
    (
        7,
        &[
            "CREATE TABLE IF NOT EXISTS agent_links (
                agent TEXT PRIMARY KEY,
                controller TEXT NOT NULL,
                conn BIGINT NOT NULL,
                expires_at BIGINT NOT NULL
            )",
            "CREATE TABLE IF NOT EXISTS agent_outbox (
                controller TEXT NOT NULL,
                conn BIGINT NOT NULL,
                seq BIGINT NOT NULL,
                after_event BIGINT NOT NULL,
                body TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                PRIMARY KEY (controller, conn, seq)
            )",
        ],
    ),
    // MultiNode groups: each sub-job's group (the id of its sub-job 0), index and role. The
    // scheduler's events carry the same membership; this table keeps it beside the job rows
    // for what reads the store without replaying (and for people reading the database).
    (
        8,
        &["CREATE TABLE IF NOT EXISTS job_groups (
                job BIGINT PRIMARY KEY,
                grp BIGINT NOT NULL,
                idx BIGINT NOT NULL,
                role TEXT NOT NULL
            )"],
    ),
    // MultiNode coordinators: one row per group with running sub-jobs, its coordinator's
    // whole state (JSON; bounded by multinode::limits), written before any reply it gives.
    (
        9,
        &["CREATE TABLE IF NOT EXISTS multinode_groups (
                grp BIGINT PRIMARY KEY,
                state TEXT NOT NULL
            )"],
    ),
    // Where a relayed agent link can be reached: the advertised address of the controller
    // holding it (NULL: it advertises none), for redirecting people's streams to it.
    (10, &["ALTER TABLE agent_links ADD COLUMN url TEXT"]),
    // Artifact bytes in the database (written on PostgreSQL only), so every controller of a
    // shared database serves every artifact. `BYTEA` is PostgreSQL's bytes; SQLite keeps a
    // blob in any column.
    (
        11,
        &["CREATE TABLE IF NOT EXISTS artifact_chunks (
                sha256 TEXT NOT NULL,
                idx BIGINT NOT NULL,
                data BYTEA NOT NULL,
                PRIMARY KEY (sha256, idx)
            )"],
    ),
];

/// The version a database is at (1 for a fresh one).
pub async fn version(pool: &AnyPool) -> Result<Version, StoreError> {
    pool.execute(META).await?;
    let row = sqlx::query("SELECT value FROM meta WHERE key = 'schema'")
        .fetch_optional(pool)
        .await?;
    match row {
        Some(row) => {
            let text: String = row.try_get("value")?;
            text.parse().map_err(|_| StoreError::Corrupt {
                what: "schema version",
                reason: format!("meta.schema is {text:?}, not a number"),
            })
        }
        None => Ok(1),
    }
}

/// Brings the schema to [`LATEST`]; refuses a newer one. Answers the version found.
pub async fn migrate(pool: &AnyPool) -> Result<Version, StoreError> {
    let found = version(pool).await?;
    if found > LATEST {
        return Err(StoreError::TooNew {
            found,
            known: LATEST,
        });
    }
    if found == 1 {
        for statement in V1 {
            pool.execute(statement).await?;
        }
    }
    for (to, statements) in MIGRATIONS {
        if to <= found {
            continue;
        }
        let mut tx = pool.begin().await?;
        for statement in statements {
            (&mut *tx).execute(*statement).await?;
        }
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES ('schema', $1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(to.to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!("database schema migrated to version {to}");
    }
    Ok(found)
}
