//! The store on both databases: every test runs once on SQLite and once on a private
//! PostgreSQL server (`testkit::postgres`), through the same public API.
//!
//! Migrations are tested from every released schema: the tables below are written as those
//! releases wrote them (copied from the git history of the store, not from the code under
//! test, so an edit of an old version's DDL in the code fails here).

use anyhow::{Context, Result, ensure};
use dutlab_controller::store::hold::{Hold, Wait};
use dutlab_controller::store::{Change, JobRow, Membership, SqliteSync, Store, StoreError, schema};
use proto::admin::{AuditAction, AuditEntry};
use proto::api::{TokenView, UserOrigin};
use proto::{GroupName, JobId, JobReport, Millis, Outcome, PrincipalId, Role, Visibility};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor, Row};
use std::time::Duration;
use testkit::postgres::Postgres;

/// Schema 8: MultiNode groups.
#[path = "store/groups.rs"]
mod groups;
use groups::version_7_databases_keep_their_jobs_and_store_groups;

/// Schema 11: artifact bytes in the database.
#[path = "store/artifact_chunks.rs"]
mod artifact_chunks;
use artifact_chunks::files_kept_before_the_database_held_bytes_are_imported_in_chunks;

#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// An empty database of one backend, removed (server stopped) when dropped.
struct Db {
    url: String,
    pg: Option<Postgres>,
    _dir: tempfile::TempDir,
}

impl Db {
    fn new(backend: Backend) -> Result<Db> {
        let dir = tempfile::tempdir()?;
        Ok(match backend {
            Backend::Sqlite => Db {
                url: Store::sqlite_url(dir.path()),
                pg: None,
                _dir: dir,
            },
            Backend::Postgres => {
                let pg = Postgres::start()?;
                let url = pg.create_database("dutlab")?;
                Db {
                    url,
                    pg: Some(pg),
                    _dir: dir,
                }
            }
        })
    }

    async fn open(&self) -> Result<Store, StoreError> {
        Store::open(&self.url, SqliteSync::Full).await
    }

    /// A plain connection pool, to write a database as an older release left it.
    async fn raw(&self) -> Result<AnyPool> {
        sqlx::any::install_default_drivers();
        Ok(AnyPoolOptions::new()
            .max_connections(1)
            .connect(&self.url)
            .await?)
    }

    async fn run(&self, statements: &[&str]) -> Result<()> {
        let pool = self.raw().await?;
        for statement in statements {
            pool.execute(sqlx::AssertSqlSafe(statement.to_string()))
                .await
                .with_context(|| statement.to_string())?;
        }
        pool.close().await;
        Ok(())
    }
}

/// Runs an async test body once per backend: `name::sqlite` and `name::postgres`.
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
    every_query_round_trips_on_a_fresh_database,
    version_1_databases_migrate_and_keep_old_agent_tokens_unbound,
    version_2_databases_map_owner_names_to_principals,
    version_3_databases_with_or_without_artifact_tables_reach_the_latest,
    a_newer_schema_is_refused_and_left_untouched,
    principals_made_at_once_get_distinct_ids,
    version_4_databases_reach_the_latest_and_keep_their_rows,
    version_5_databases_keep_their_audit_and_get_the_log_and_command_tables,
    log_records_are_stored_once_whichever_store_writes_them,
    version_4_databases_get_the_audit_table,
    audit_entries_are_kept_in_order_with_their_commit,
    version_7_databases_keep_their_jobs_and_store_groups,
    files_kept_before_the_database_held_bytes_are_imported_in_chunks,
);

/// Schema version 1 (commit 75cfc57), as it created its tables.
const V1_DDL: [&str; 4] = [
    "CREATE TABLE IF NOT EXISTS tokens (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE, created_at BIGINT NOT NULL, revoked_at BIGINT)",
    "CREATE TABLE IF NOT EXISTS jobs (
        id BIGINT PRIMARY KEY, name TEXT NOT NULL, owner TEXT NOT NULL,
        visibility TEXT NOT NULL, file_name TEXT NOT NULL, definition TEXT NOT NULL,
        warnings TEXT NOT NULL, report TEXT, last_seq BIGINT)",
    "CREATE TABLE IF NOT EXISTS events (seq BIGINT PRIMARY KEY, body TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
];

/// Version 2 (commit da8a395) added the agent binding of tokens and wrote its version.
const V2_DDL: [&str; 2] = [
    "ALTER TABLE tokens ADD COLUMN agent TEXT",
    "INSERT INTO meta (key, value) VALUES ('schema', '2')",
];

/// Version 3 (commit d8b6d5c): principals own tokens and jobs.
const V3_DDL: [&str; 5] = [
    "CREATE TABLE principals (id BIGINT PRIMARY KEY, name TEXT NOT NULL UNIQUE,
        created_at BIGINT NOT NULL)",
    "CREATE TABLE memberships (principal BIGINT NOT NULL, grp TEXT NOT NULL,
        PRIMARY KEY (principal, grp))",
    "ALTER TABLE tokens ADD COLUMN principal BIGINT",
    "ALTER TABLE jobs ADD COLUMN owner_id BIGINT",
    "UPDATE meta SET value = '3' WHERE key = 'schema'",
];

/// Version 3 after the artifacts merge (commit 6f9d327) also had these, without a version.
const V3_ARTIFACT_DDL: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS artifacts (sha256 TEXT PRIMARY KEY, size BIGINT NOT NULL,
        created_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS artifact_uploaders (sha256 TEXT NOT NULL,
        principal TEXT NOT NULL, uploaded_at BIGINT NOT NULL, PRIMARY KEY (sha256, principal))",
    "CREATE TABLE IF NOT EXISTS job_artifacts (job BIGINT NOT NULL, sha256 TEXT NOT NULL,
        PRIMARY KEY (job, sha256))",
];

/// Version 4 (commit cd7275e): the artifact tables got a version of their own.
const V4_DDL: [&str; 4] = [
    "CREATE TABLE IF NOT EXISTS artifacts (sha256 TEXT PRIMARY KEY, size BIGINT NOT NULL,
        created_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS artifact_uploaders (sha256 TEXT NOT NULL,
        principal TEXT NOT NULL, uploaded_at BIGINT NOT NULL, PRIMARY KEY (sha256, principal))",
    "CREATE TABLE IF NOT EXISTS job_artifacts (job BIGINT NOT NULL, sha256 TEXT NOT NULL,
        PRIMARY KEY (job, sha256))",
    "UPDATE meta SET value = '4' WHERE key = 'schema'",
];

fn audit_entry(seq: u64, action: AuditAction, target: &str) -> AuditEntry {
    AuditEntry {
        seq,
        at: Millis(100 + seq),
        actor: "root".into(),
        principal: PrincipalId(1),
        action,
        target: target.into(),
        detail: "maintenance: new PSU".into(),
        remote: "127.0.0.1:4242".into(),
    }
}

async fn version_4_databases_get_the_audit_table(backend: Backend) -> Result<()> {
    let db = Db::new(backend)?;
    db.run(&V1_DDL).await?;
    db.run(&V2_DDL).await?;
    db.run(&V3_DDL).await?;
    db.run(&V4_DDL).await?;
    db.run(&[
        "INSERT INTO principals (id, name, created_at) VALUES (1, 'root', 1)",
        "INSERT INTO tokens (id, name, role, agent, hash, created_at, revoked_at, principal)
         VALUES ('0a', 'root', 'admin', NULL, 'ha', 1, NULL, 1)",
    ])
    .await?;
    ensure!(schema_version(&db).await? == "4");
    let store = db.open().await?;
    ensure!(schema_version(&db).await? == schema::LATEST.to_string());
    ensure!(store.audit(10).await?.is_empty() && store.last_audit_seq().await? == 0);
    ensure!(store.tokens().await?[0].view.user == "root");
    let entry = audit_entry(1, AuditAction::DeviceSet, "qemu-1");
    store
        .commit(
            1,
            &[],
            Change {
                audit: std::slice::from_ref(&entry),
                ..Change::default()
            },
        )
        .await?;
    ensure!(store.audit(10).await? == [entry]);
    Ok(())
}

async fn audit_entries_are_kept_in_order_with_their_commit(backend: Backend) -> Result<()> {
    let db = Db::new(backend)?;
    let store = db.open().await?;
    let first = [
        audit_entry(1, AuditAction::TokenCreate, "0a"),
        audit_entry(2, AuditAction::GroupAdd, "alice"),
    ];
    store
        .commit(
            1,
            &[],
            Change {
                audit: &first,
                ..Change::default()
            },
        )
        .await?;
    // A commit that fails (its event number is taken) writes no audit entry either.
    let event = scheduler::Event::AgentDisconnected {
        agent: "a".into(),
        at: Millis(1),
    };
    store
        .commit(1, std::slice::from_ref(&event), Change::default())
        .await?;
    let lost = [audit_entry(3, AuditAction::LeaseEnd, "lease 1")];
    let clash = store
        .commit(
            1,
            std::slice::from_ref(&event),
            Change {
                audit: &lost,
                ..Change::default()
            },
        )
        .await;
    ensure!(clash.is_err(), "event 1 written twice");
    ensure!(store.last_audit_seq().await? == 2);
    let all = store.audit(10).await?;
    ensure!(
        all.len() == 2 && all[0] == first[1] && all[1] == first[0],
        "{all:?}"
    );
    ensure!(store.audit(1).await? == [first[1].clone()]);
    drop(store);
    let store = db.open().await?;
    ensure!(store.audit(10).await?.len() == 2);
    Ok(())
}

/// Version 5 (commit 0f00578): the audit of admin actions.
const V5_DDL: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS audit (seq BIGINT PRIMARY KEY, at BIGINT NOT NULL,
        actor TEXT NOT NULL, principal BIGINT NOT NULL, action TEXT NOT NULL,
        target TEXT NOT NULL, detail TEXT NOT NULL, remote TEXT NOT NULL)",
    "UPDATE meta SET value = '5' WHERE key = 'schema'",
];

async fn schema_version(db: &Db) -> Result<String> {
    let pool = db.raw().await?;
    let row = sqlx::query("SELECT value FROM meta WHERE key = 'schema'")
        .fetch_one(&pool)
        .await?;
    let value: String = row.try_get("value")?;
    pool.close().await;
    Ok(value)
}

fn token(id: &str, name: &str, role: Role, principal: PrincipalId, at: u64) -> StoredTokenArgs {
    StoredTokenArgs {
        id: id.into(),
        name: name.into(),
        role,
        principal,
        at,
    }
}

struct StoredTokenArgs {
    id: String,
    name: String,
    role: Role,
    principal: PrincipalId,
    at: u64,
}

impl StoredTokenArgs {
    fn stored(self, user: &str) -> dutlab_controller::store::StoredToken {
        dutlab_controller::store::StoredToken {
            view: TokenView {
                id: self.id.clone(),
                name: self.name.clone(),
                role: self.role,
                user: user.into(),
                principal: self.principal,
                agent: (self.role == Role::Agent).then(|| self.name.clone()),
                created_at: Millis(self.at),
                revoked_at: None,
            },
            hash: format!("hash-{}", self.id),
        }
    }
}

async fn every_query_round_trips_on_a_fresh_database(backend: Backend) -> Result<()> {
    let db = Db::new(backend)?;
    let store = db.open().await?;
    ensure!(schema_version(&db).await? == schema::LATEST.to_string());
    ensure!(store.tokens().await?.is_empty() && store.jobs().await?.is_empty());

    // Principals, memberships, tokens.
    let (alice, origin) = store.principal_named("alice", Millis(10)).await?;
    ensure!(origin == UserOrigin::Created && alice.id == PrincipalId(1));
    let (again, origin) = store.principal_named("alice", Millis(11)).await?;
    ensure!(origin == UserOrigin::Existing && again.id == alice.id);
    let (rig, _) = store.principal_named("rig", Millis(12)).await?;
    ensure!(rig.id == PrincipalId(2));
    let qa = GroupName::new("qa")?;
    ensure!(
        store
            .set_membership(alice.id, &qa, Membership::Member)
            .await?
    );
    ensure!(
        !store
            .set_membership(alice.id, &qa, Membership::Member)
            .await?
    );
    let principals = store.principals().await?;
    ensure!(principals[0].groups == [qa.clone()] && principals[1].groups.is_empty());
    let ops = GroupName::new("ops")?;
    ensure!(
        store
            .set_membership(rig.id, &ops, Membership::Member)
            .await?
    );
    ensure!(
        store
            .set_membership(rig.id, &ops, Membership::NotMember)
            .await?
    );
    ensure!(
        !store
            .set_membership(rig.id, &ops, Membership::NotMember)
            .await?
    );
    ensure!(store.principals().await?[1].groups.is_empty());
    store
        .insert_token(&token("0a", "alice", Role::User, alice.id, 20).stored("alice"))
        .await?;
    store
        .insert_token(&token("0b", "rig", Role::Agent, rig.id, 21).stored("rig"))
        .await?;
    let tokens = store.tokens().await?;
    ensure!(tokens.len() == 2, "{tokens:?}");
    ensure!(tokens[0].view.user == "alice" && tokens[0].hash == "hash-0a");
    ensure!(tokens[1].view.agent.as_deref() == Some("rig"));
    ensure!(store.revoke_token("0a", Millis(30)).await?);
    ensure!(
        !store.revoke_token("0a", Millis(31)).await?,
        "revoked twice"
    );
    ensure!(!store.revoke_token("nope", Millis(31)).await?);
    ensure!(store.tokens().await?[0].view.revoked_at == Some(Millis(30)));

    // Artifacts.
    let digest = "ab".repeat(32);
    store
        .insert_artifact(&digest, 4096, &alice.id.to_string(), Millis(40))
        .await?;
    store
        .insert_artifact(&digest, 4096, &alice.id.to_string(), Millis(41))
        .await?;
    ensure!(store.artifact_size(&digest).await? == Some(4096));
    ensure!(store.artifact_size(&"cd".repeat(32)).await?.is_none());
    ensure!(store.artifact_bytes_of(&alice.id.to_string()).await? == 4096);
    ensure!(store.artifact_bytes_of(&rig.id.to_string()).await? == 0);
    ensure!(store.uploaded_by(&digest, &alice.id.to_string()).await?);
    ensure!(!store.uploaded_by(&digest, &rig.id.to_string()).await?);

    // A job with its events, then its report.
    let job = JobRow {
        id: JobId(1),
        name: "smoke".into(),
        owner: alice.id,
        owner_name: "alice".into(),
        visibility: Visibility::Group(vec![qa.clone()]),
        file_name: "smoke.yaml".into(),
        definition: "job_name: smoke\n".into(),
        warnings: vec!["a warning".into()],
        artifacts: vec![digest.clone()],
        group: None,
    };
    let events = [
        scheduler::Event::AgentDisconnected {
            agent: "rig".into(),
            at: Millis(50),
        },
        scheduler::Event::CancelRequested {
            job: JobId(1),
            at: Millis(51),
        },
    ];
    store
        .commit(
            1,
            &events,
            Change {
                new_job: Some(&job),
                more_jobs: &[],
                reports: Vec::new(),
                command: None,
                audit: &[],
            },
        )
        .await?;
    let jobs = store.jobs().await?;
    ensure!(jobs.len() == 1);
    ensure!(
        jobs[0].visibility == job.visibility
            && jobs[0].warnings == job.warnings
            && jobs[0].owner == alice.id
    );
    ensure!(store.definition(JobId(1)).await?.as_deref() == Some("job_name: smoke\n"));
    ensure!(store.definition(JobId(2)).await?.is_none());
    ensure!(store.artifact_jobs(&digest, 10).await? == [JobId(1)]);
    ensure!(store.job_references(JobId(1), &digest).await?);
    ensure!(!store.job_references(JobId(2), &digest).await?);
    ensure!(store.report(JobId(1)).await?.is_none());
    let report = JobReport {
        job_name: "smoke".into(),
        outcome: Outcome::Passed,
        reason: String::new(),
        cases: Vec::new(),
        duration_s: 1.5,
    };
    store
        .commit(
            3,
            &[],
            Change {
                new_job: None,
                more_jobs: &[],
                reports: vec![(JobId(1), &report, 17)],
                command: None,
                audit: &[],
            },
        )
        .await?;
    let (stored, last) = store.report(JobId(1)).await?.context("report")?;
    ensure!(last == 17 && stored.outcome == Outcome::Passed && stored.duration_s == 1.5);
    let stored_events = store.events().await?;
    ensure!(
        stored_events.iter().map(|(s, _)| *s).collect::<Vec<_>>() == [1, 2]
            && stored_events[1].1 == events[1]
    );
    // A sequence number is written once: a second writer of seq 2 fails, nothing is kept.
    let clash = store.commit(2, &events, Change::default()).await;
    ensure!(clash.is_err(), "seq 2 written twice");
    ensure!(store.events().await?.len() == 2);
    drop(store);
    // Opening again migrates nothing and keeps everything.
    let store = db.open().await?;
    ensure!(store.jobs().await?.len() == 1 && store.tokens().await?.len() == 2);
    Ok(())
}

async fn principals_made_at_once_get_distinct_ids(backend: Backend) -> Result<()> {
    let db = Db::new(backend)?;
    let store = db.open().await?;
    let mut made = Vec::new();
    for round in 0..3 {
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .principal_named(&format!("user-{round}-{i}"), Millis(1))
                        .await
                })
            })
            .collect();
        for task in tasks {
            let (p, origin) = task.await??;
            ensure!(origin == UserOrigin::Created, "{p:?}");
            made.push(p.id);
        }
    }
    made.sort();
    made.dedup();
    ensure!(made.len() == 24, "ids given twice: {made:?}");
    ensure!(store.principals().await?.len() == 24);
    Ok(())
}

async fn version_1_databases_migrate_and_keep_old_agent_tokens_unbound(
    backend: Backend,
) -> Result<()> {
    let db = Db::new(backend)?;
    db.run(&V1_DDL).await?;
    db.run(&[
        "INSERT INTO tokens (id, name, role, hash, created_at, revoked_at)
         VALUES ('0badc0de', 'old-rig', 'agent', 'h', 1, NULL)",
        "INSERT INTO jobs (id, name, owner, visibility, file_name, definition, warnings, report, last_seq)
         VALUES (1, 'j1', 'old-rig', 'public', 'a.yaml', 'x', '[]', NULL, NULL)",
    ])
    .await?;
    let event = serde_json::to_string(&scheduler::Event::AgentDisconnected {
        agent: "old-rig".into(),
        at: Millis(5),
    })?;
    db.run(&[&format!(
        "INSERT INTO events (seq, body) VALUES (1, '{event}')"
    )])
    .await?;
    let store = db.open().await?;
    ensure!(schema_version(&db).await? == schema::LATEST.to_string());
    let tokens = store.tokens().await?;
    ensure!(
        tokens.len() == 1 && tokens[0].view.agent.is_none(),
        "{tokens:?}"
    );
    ensure!(tokens[0].view.user == "old-rig" && tokens[0].view.principal == PrincipalId(1));
    ensure!(store.jobs().await?[0].owner == PrincipalId(1));
    ensure!(store.events().await?.len() == 1, "events lost");
    // The tables of later versions exist and work.
    let (rig, origin) = store.principal_named("rig", Millis(2)).await?;
    ensure!(origin == UserOrigin::Created && rig.id == PrincipalId(2));
    store
        .insert_token(&token("00c0ffee", "rig", Role::Agent, rig.id, 2).stored("rig"))
        .await?;
    store
        .insert_artifact(&"ef".repeat(32), 1, "2", Millis(3))
        .await?;
    drop(store);
    let store = db.open().await?;
    let tokens = store.tokens().await?;
    ensure!(tokens[1].view.agent.as_deref() == Some("rig"));
    Ok(())
}

async fn version_2_databases_map_owner_names_to_principals(backend: Backend) -> Result<()> {
    let db = Db::new(backend)?;
    db.run(&V1_DDL).await?;
    db.run(&V2_DDL).await?;
    // Two tokens named "alice" (who shared jobs then), a token "bob", and jobs of each.
    db.run(&[
        "INSERT INTO tokens (id, name, role, agent, hash, created_at, revoked_at)
         VALUES ('0000000b', 'bob', 'user', NULL, 'hb', 1, NULL),
                ('0000000a', 'alice', 'user', NULL, 'ha1', 2, NULL),
                ('000000a2', 'alice', 'user', NULL, 'ha2', 3, 4)",
        "INSERT INTO jobs (id, name, owner, visibility, file_name, definition, warnings, report, last_seq)
         VALUES (1, 'j1', 'alice', 'personal', 'a.yaml', 'x', '[]', NULL, NULL),
                (2, 'j2', 'bob', 'group', 'b.yaml', 'y', '[]', NULL, NULL),
                (3, 'j3', 'alice', 'public', 'c.yaml', 'z', '[]', NULL, NULL)",
    ])
    .await?;
    let store = db.open().await?;
    ensure!(schema_version(&db).await? == schema::LATEST.to_string());
    let principals = store.principals().await?;
    let names: Vec<(u64, &str)> = principals
        .iter()
        .map(|p| (p.id.0, p.name.as_str()))
        .collect();
    ensure!(
        names == [(1, "alice"), (2, "bob")],
        "ids in name order: {names:?}"
    );
    ensure!(principals[0].created_at == Millis(2), "alice's first token");
    for t in store.tokens().await? {
        let want = if t.view.name == "alice" { 1 } else { 2 };
        ensure!(t.view.principal == PrincipalId(want), "{:?}", t.view);
    }
    let owners: Vec<(u64, u64, String)> = store
        .jobs()
        .await?
        .iter()
        .map(|j| (j.id.0, j.owner.0, j.visibility.to_string()))
        .collect();
    ensure!(
        owners
            == [
                (1, 1, "personal".to_owned()),
                (2, 2, "group: ".to_owned()),
                (3, 1, "public".to_owned())
            ],
        "{owners:?}"
    );
    let (carol, origin) = store.principal_named("carol", Millis(9)).await?;
    ensure!((carol.id, origin) == (PrincipalId(3), UserOrigin::Created));
    Ok(())
}

async fn version_3_databases_with_or_without_artifact_tables_reach_the_latest(
    backend: Backend,
) -> Result<()> {
    for with_artifacts in [false, true] {
        let db = Db::new(backend)?;
        db.run(&V1_DDL).await?;
        db.run(&V2_DDL).await?;
        db.run(&V3_DDL).await?;
        db.run(&[
            "INSERT INTO principals (id, name, created_at) VALUES (1, 'alice', 1)",
            "INSERT INTO tokens (id, name, role, agent, hash, created_at, revoked_at, principal)
             VALUES ('0a', 'alice', 'user', NULL, 'ha', 1, NULL, 1)",
        ])
        .await?;
        let digest = "12".repeat(32);
        if with_artifacts {
            db.run(&V3_ARTIFACT_DDL).await?;
            db.run(&[&format!(
                "INSERT INTO artifacts (sha256, size, created_at) VALUES ('{digest}', 7, 1)"
            )])
            .await?;
        }
        let store = db.open().await?;
        ensure!(schema_version(&db).await? == schema::LATEST.to_string());
        let kept = if with_artifacts { Some(7) } else { None };
        ensure!(
            store.artifact_size(&digest).await? == kept,
            "artifacts (with tables: {with_artifacts})"
        );
        store
            .insert_artifact(&"34".repeat(32), 9, "1", Millis(2))
            .await?;
        ensure!(store.artifact_bytes_of("1").await? == 9);
        ensure!(store.tokens().await?[0].view.user == "alice");
    }
    Ok(())
}

async fn a_newer_schema_is_refused_and_left_untouched(backend: Backend) -> Result<()> {
    let db = Db::new(backend)?;
    let newer = schema::LATEST + 1;
    db.run(&[
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        &format!("INSERT INTO meta (key, value) VALUES ('schema', '{newer}')"),
    ])
    .await?;
    match db.open().await {
        Err(StoreError::TooNew { found, known }) => {
            ensure!(found == newer && known == schema::LATEST);
        }
        Err(other) => anyhow::bail!("refused for another reason: {other}"),
        Ok(_) => anyhow::bail!("a newer schema was opened"),
    }
    let message = db.open().await.err().context("refused")?.to_string();
    ensure!(
        message.contains(&format!("version {newer}"))
            && message.contains(&format!("version {}", schema::LATEST))
            && message.contains("newer dutlab"),
        "{message}"
    );
    // Nothing was created or changed.
    let pool = db.raw().await?;
    ensure!(
        sqlx::query("SELECT id FROM tokens")
            .fetch_all(&pool)
            .await
            .is_err(),
        "the refused open created tables"
    );
    pool.close().await;
    ensure!(schema_version(&db).await? == newer.to_string());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_holder_of_a_postgres_database_is_refused_and_a_standby_takes_over() -> Result<()>
{
    let mut db = Db::new(Backend::Postgres)?;
    let first = Hold::take(&db.url, "controller one", Wait::Refuse).await?;
    let refused = Hold::take(&db.url, "controller two", Wait::Refuse).await;
    match refused {
        Err(StoreError::Held { holder, .. }) => {
            ensure!(holder == "controller one", "named {holder:?}");
        }
        Err(other) => anyhow::bail!("refused for another reason: {other}"),
        Ok(_) => anyhow::bail!("two controllers hold one database"),
    }
    let url = db.url.clone();
    let standby = tokio::spawn(async move { Hold::take(&url, "standby", Wait::Standby).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(
        !standby.is_finished(),
        "the standby started while the first held the database"
    );
    drop(first);
    let mut taken = tokio::time::timeout(Duration::from_secs(20), standby)
        .await
        .context("the standby never took over")???;
    let again = Hold::take(&db.url, "late", Wait::Refuse).await;
    ensure!(
        matches!(&again, Err(StoreError::Held { holder, .. }) if holder == "standby"),
        "the standby does not hold the database"
    );
    // Losing the server loses the lock: the holder is told.
    db.pg.as_mut().context("postgres")?.stop()?;
    let reason = tokio::time::timeout(Duration::from_secs(20), taken.lost())
        .await
        .context("a lost lock went unnoticed")?;
    ensure!(!reason.is_empty());
    Ok(())
}

async fn version_4_databases_reach_the_latest_and_keep_their_rows(backend: Backend) -> Result<()> {
    let db = Db::new(backend)?;
    db.run(&V1_DDL).await?;
    db.run(&V2_DDL).await?;
    db.run(&V3_DDL).await?;
    db.run(&V4_DDL).await?;
    let digest = "56".repeat(32);
    db.run(&[
        "INSERT INTO principals (id, name, created_at) VALUES (1, 'alice', 1)",
        "INSERT INTO tokens (id, name, role, agent, hash, created_at, revoked_at, principal)
         VALUES ('0a', 'alice', 'user', NULL, 'ha', 1, NULL, 1)",
        &format!("INSERT INTO artifacts (sha256, size, created_at) VALUES ('{digest}', 5, 1)"),
    ])
    .await?;
    let store = db.open().await?;
    ensure!(schema_version(&db).await? == schema::LATEST.to_string());
    ensure!(store.tokens().await?[0].view.user == "alice");
    ensure!(store.artifact_size(&digest).await? == Some(5));
    // The log table is there, and empty.
    ensure!(store.log_last(JobId(1)).await? == proto::Seq(0));
    Ok(())
}

fn record(seq: u64, text: &str) -> proto::log::LogRecord {
    proto::log::LogRecord {
        seq: proto::Seq(seq),
        at: Millis(seq),
        kind: proto::log::LogKind::Console,
        text: text.to_owned(),
    }
}

/// Two stores on one database (two controllers) write one job's log at once: the agent's
/// records, resent to both with overlaps (as an agent resends from its cursor after moving
/// to another controller), then notes of both controllers at once. The log is 1..n, each of
/// the agent's lines once and in order, each note once with the number it was given, and
/// records that do not continue the log are not stored.
async fn log_records_are_stored_once_whichever_store_writes_them(backend: Backend) -> Result<()> {
    use proto::log::{LogKind, LogRecord};
    let db = Db::new(backend)?;
    let one = db.open().await?;
    let two = db.open().await?;
    let job = JobId(7);
    let lines = 300;
    let agent: Vec<_> = (1..=lines)
        .map(|n| record(n, &format!("line-{n}")))
        .collect();
    // Records beyond the end (a hole) are refused.
    let (last, fresh) = one.append_log(job, &[record(3, "early")]).await?;
    ensure!(
        last == proto::Seq(0) && fresh.is_empty(),
        "stored across a hole"
    );
    let resend = |store: Store, step: usize| {
        let agent = agent.clone();
        tokio::spawn(async move {
            let mut at = 0;
            while at < agent.len() {
                let end = (at + step).min(agent.len());
                store.append_log(job, &agent[at..end]).await?;
                at = end.saturating_sub(2).max(at + 1);
            }
            anyhow::Ok(())
        })
    };
    let writers = [
        resend(one.clone(), 7),
        resend(two.clone(), 5),
        resend(two.clone(), 11),
    ];
    for w in writers {
        w.await??;
    }
    let stored = one.log_records(job, proto::Seq(0), 10_000).await?;
    ensure!(
        stored == agent,
        "the agent's records are not 1..{lines} once each"
    );
    // Notes of both controllers at once: each takes the next free number.
    let note = |store: Store, who: &'static str| {
        tokio::spawn(async move {
            let mut numbers = Vec::new();
            for n in 0..20 {
                let r = store
                    .append_log_note(job, |seq| LogRecord {
                        seq,
                        at: Millis(0),
                        kind: LogKind::Note,
                        text: format!("{who}-{n}"),
                    })
                    .await?;
                numbers.push((r.seq, r.text));
            }
            anyhow::Ok(numbers)
        })
    };
    let (a, b) = (note(one.clone(), "one"), note(two.clone(), "two"));
    let mut given = a.await??;
    given.extend(b.await??);
    let all = two.log_records(job, proto::Seq(0), 10_000).await?;
    let seqs: Vec<u64> = all.iter().map(|r| r.seq.0).collect();
    ensure!(
        seqs == (1..=lines + 40).collect::<Vec<_>>(),
        "numbers are not 1..n: {seqs:?}"
    );
    for (seq, text) in &given {
        let at = &all[usize::try_from(seq.0 - 1)?];
        ensure!(&at.text == text, "note {text} is not at {seq}: {at:?}");
    }
    ensure!(two.log_last(job).await?.0 == lines + 40);
    // Pages continue where the last page ended.
    let page = two.log_records(job, proto::Seq(5), 3).await?;
    ensure!(page.iter().map(|r| r.seq.0).collect::<Vec<_>>() == [6, 7, 8]);
    Ok(())
}

async fn version_5_databases_keep_their_audit_and_get_the_log_and_command_tables(
    backend: Backend,
) -> Result<()> {
    let db = Db::new(backend)?;
    db.run(&V1_DDL).await?;
    db.run(&V2_DDL).await?;
    db.run(&V3_DDL).await?;
    db.run(&V4_DDL).await?;
    db.run(&V5_DDL).await?;
    db.run(&[
        "INSERT INTO principals (id, name, created_at) VALUES (1, 'root', 1)",
        "INSERT INTO audit (seq, at, actor, principal, action, target, detail, remote)
         VALUES (1, 5, 'root', 1, 'device-set', 'qemu-1', 'psu', '127.0.0.1:1')",
    ])
    .await?;
    ensure!(schema_version(&db).await? == "5");
    let store = db.open().await?;
    ensure!(schema_version(&db).await? == schema::LATEST.to_string());
    ensure!(store.last_audit_seq().await? == 1 && store.audit(10).await?.len() == 1);
    ensure!(store.log_last(JobId(1)).await? == proto::Seq(0));
    ensure!(store.pending_commands().await?.is_empty());
    // A follower opens the migrated database; one at another version is refused unchanged.
    Store::open_following(&db.url).await?;
    db.run(&["UPDATE meta SET value = '5' WHERE key = 'schema'"])
        .await?;
    match Store::open_following(&db.url).await {
        Err(StoreError::OtherVersion { found: 5, known }) => ensure!(known == schema::LATEST),
        Err(other) => anyhow::bail!("refused for another reason: {other}"),
        Ok(_) => anyhow::bail!("a follower opened a database of another version"),
    }
    ensure!(schema_version(&db).await? == "5", "the follower migrated");
    Ok(())
}
