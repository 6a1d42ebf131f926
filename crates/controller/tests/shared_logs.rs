//! Logs shared by controllers on one PostgreSQL database (`logs::sql`): lines stored through
//! one controller's logs reach followers on another, once and in order, also across a restart
//! of the server.

use anyhow::{Context, Result, ensure};
use dutlab_controller::logs::Logs;
use dutlab_controller::store::{SqliteSync, Store};
use proto::log::{LogKind, LogRecord};
use proto::{JobId, Millis, Seq};
use std::time::Duration;
use testkit::postgres::Postgres;

fn record(seq: u64) -> LogRecord {
    LogRecord {
        seq: Seq(seq),
        at: Millis(seq),
        kind: LogKind::Console,
        text: format!("line-{seq}"),
    }
}

async fn logs_on(url: &str, dir: &std::path::Path) -> Result<Logs> {
    let store = Store::open(url, SqliteSync::Full).await?;
    Ok(Logs::open(dir, 16, &store, url).await?)
}

/// Receives live records until `upto`, checking each continues the last.
async fn receive(live: &mut dutlab_controller::logs::LiveLog, from: u64, upto: u64) -> Result<()> {
    let mut last = from;
    while last < upto {
        let r = tokio::time::timeout(Duration::from_secs(20), live.recv())
            .await
            .with_context(|| format!("no live record after {last} within 20 s"))??;
        ensure!(r.seq.0 == last + 1, "record {} after {last}", r.seq);
        ensure!(r.text == format!("line-{}", r.seq), "{r:?}");
        last = r.seq.0;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_stored_on_one_controller_reach_followers_on_another_once() -> Result<()> {
    let mut pg = Postgres::start()?;
    let url = pg.create_database("dutlab")?;
    let dir = tempfile::tempdir()?;
    let ingest = logs_on(&url, &dir.path().join("a")).await?;
    let follow = logs_on(&url, &dir.path().join("b")).await?;
    ensure!(
        matches!(follow, Logs::Sql(_)),
        "PostgreSQL keeps logs in the database"
    );
    let job = JobId(3);
    ingest.append(job, &[record(1), record(2)]).await?;
    // A follower subscribes, then reads what is stored (as the follow route does)...
    let mut live = follow.subscribe(job).await?;
    let have = follow.read(job, Seq(0), 100).await?;
    ensure!(have == [record(1), record(2)], "{have:?}");
    // ... and gets every later line live, once, in order, with resends and overlaps ignored.
    for first in (3..=60u64).step_by(4) {
        let batch: Vec<_> = (first.saturating_sub(2)..first + 4).map(record).collect();
        ingest.append(job, &batch).await?;
    }
    receive(&mut live, 2, 62).await?;
    ensure!(follow.progress(job).is_none(), "the follower wrote nothing");
    ensure!(ingest.durable(job).await? == Seq(62));

    // The server restarts: both reconnect, and lines stored afterwards still arrive.
    pg.stop()?;
    pg.start_again()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match ingest.append(job, &[record(63)]).await {
            Ok(_) => break,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!("{e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    ingest
        .append(job, &(64..=80).map(record).collect::<Vec<_>>())
        .await?;
    receive(&mut live, 62, 80).await?;
    let all = follow.read(job, Seq(0), 1000).await?;
    ensure!(all == (1..=80).map(record).collect::<Vec<_>>());
    Ok(())
}

/// A controller of an older version kept logs in files; on PostgreSQL they move into the
/// database once, and the directory is renamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_files_of_an_older_controller_are_imported_once() -> Result<()> {
    let mut pg = Postgres::start()?;
    let url = pg.create_database("dutlab")?;
    let dir = tempfile::tempdir()?;
    let logs_dir = dir.path().join("logs");
    {
        let files = dutlab_controller::logs::LogStore::new(&logs_dir);
        files.append(JobId(1), &(1..=5).map(record).collect::<Vec<_>>())?;
        files.append(JobId(2), &[record(1)])?;
        files.close(JobId(1));
        files.close(JobId(2));
    }
    let logs = logs_on(&url, &logs_dir).await?;
    ensure!(logs.read(JobId(1), Seq(0), 100).await? == (1..=5).map(record).collect::<Vec<_>>());
    ensure!(logs.read(JobId(2), Seq(0), 100).await? == [record(1)]);
    ensure!(
        !logs_dir.join("1.log").exists() && dir.path().join("logs.imported").join("1.log").exists()
    );
    // Opening again imports nothing twice.
    drop(logs);
    let again = logs_on(&url, &logs_dir).await?;
    ensure!(again.last(JobId(1)).await? == Seq(5));
    pg.stop()?;
    Ok(())
}
