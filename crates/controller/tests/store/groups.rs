//! Schema 8: MultiNode group membership (`job_groups`), migrated from version 7 and
//! written with the sub-jobs' rows.

use super::*;
use dutlab_controller::store::GroupRow;

/// Version 6 (commit b851307): job logs as rows and forwarded commands.
pub(super) const V6_DDL: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS log_records (job BIGINT NOT NULL, seq BIGINT NOT NULL,
        body TEXT NOT NULL, PRIMARY KEY (job, seq))",
    "CREATE TABLE IF NOT EXISTS commands (id BIGINT PRIMARY KEY, body TEXT NOT NULL,
        created_at BIGINT NOT NULL, done BIGINT NOT NULL, answer TEXT, answer_seq BIGINT)",
    "UPDATE meta SET value = '6' WHERE key = 'schema'",
];

/// Version 7 (commit 44beb29): agent links held by followers and the leader's outbox.
pub(super) const V7_DDL: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS agent_links (agent TEXT PRIMARY KEY, controller TEXT NOT NULL,
        conn BIGINT NOT NULL, expires_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS agent_outbox (controller TEXT NOT NULL, conn BIGINT NOT NULL,
        seq BIGINT NOT NULL, after_event BIGINT NOT NULL, body TEXT NOT NULL,
        created_at BIGINT NOT NULL, PRIMARY KEY (controller, conn, seq))",
    "UPDATE meta SET value = '7' WHERE key = 'schema'",
];

fn row(id: u64, group: Option<GroupRow>) -> JobRow {
    JobRow {
        id: JobId(id),
        name: "pair".into(),
        owner: PrincipalId(1),
        owner_name: "alice".into(),
        visibility: Visibility::Public,
        file_name: "pair.yaml".into(),
        definition: "job_name: pair\n".into(),
        warnings: vec![],
        artifacts: vec![],
        group,
    }
}

pub(super) async fn version_7_databases_keep_their_jobs_and_store_groups(
    backend: Backend,
) -> Result<()> {
    let db = Db::new(backend)?;
    for ddl in [
        &V1_DDL[..],
        &V2_DDL,
        &V3_DDL,
        &V4_DDL,
        &V5_DDL,
        &V6_DDL,
        &V7_DDL,
    ] {
        db.run(ddl).await?;
    }
    db.run(&[
        "INSERT INTO principals (id, name, created_at) VALUES (1, 'alice', 1)",
        "INSERT INTO jobs (id, name, owner, owner_id, visibility, file_name, definition, warnings, report, last_seq)
         VALUES (1, 'old', 'alice', 1, 'public', 'old.yaml', 'job_name: old', '[]', NULL, NULL)",
    ])
    .await?;
    ensure!(schema_version(&db).await? == "7");
    let store = db.open().await?;
    ensure!(schema_version(&db).await? == schema::LATEST.to_string());
    let jobs = store.jobs().await?;
    ensure!(jobs.len() == 1 && jobs[0].group.is_none(), "{jobs:?}");
    // A group of two sub-jobs, committed at once with their membership.
    let member = |index: u32, role: &str| GroupRow {
        group: JobId(2),
        index,
        role: role.into(),
    };
    let first = row(2, Some(member(0, "client")));
    let more = [row(3, Some(member(1, "server")))];
    let change = Change {
        new_job: Some(&first),
        more_jobs: &more,
        ..Change::default()
    };
    store.commit(1, &[], change).await?;
    let jobs = store.jobs().await?;
    ensure!(jobs.len() == 3, "{jobs:?}");
    ensure!(jobs[1].group == Some(member(0, "client")), "{jobs:?}");
    ensure!(jobs[2].group == Some(member(1, "server")), "{jobs:?}");
    ensure!(jobs[2].definition == "job_name: pair\n");
    Ok(())
}
