//! Job logs: [`Logs`] is either files ([`LogStore`], one append-only file of JSON lines per
//! job under `DATA_DIR/logs/`, the store of a controller on SQLite) or the database
//! ([`sql::SqlLogs`], the `log_records` table, for controllers on PostgreSQL, which several
//! controllers share). Both keep the invariants below on records (1..n, no hole, no
//! duplicate; acknowledged only when durable); the rest of this text is about the files.
//!
//! Invariants:
//! - A job's stored records are numbered 1, 2, 3 ... with no hole and no duplicate: a record
//!   is written only when its `seq` is exactly one more than the last stored one; records at
//!   or below it are duplicates and dropped; records beyond it wait for a resend (the agent
//!   resends from the acknowledged cursor).
//! - A write that fails (disk full, I/O error) is undone: the file is cut back to the end of
//!   the last good record before anything else is written, so a partial line can never merge
//!   with a later record. The records of the failed write are not stored; the caller closes
//!   the agent's link and the agent resends them from its cursor.
//! - Durability: [`LogStore::durable`] is the last record covered by an `fsync` of its file.
//!   One background thread syncs every file written since its last round (one `fsync` per
//!   file per round, however many frames it took), at most [`SYNC_INTERVAL`] after the first
//!   unsynced write, and then publishes the round on [`LogStore::synced`]. Acknowledgements
//!   to agents name durable records only. If an `fsync` fails, the file is cut back to its
//!   last durable record (what the kernel may have dropped is not trusted).
//! - Open files are a bounded cache (least recently used out, [`DEFAULT_OPEN_FILES`] by
//!   default): only jobs being written hold one, an evicted file is synced before it is
//!   closed and reopened by its job's next write. Reading a log opens the file for the read
//!   only; a finished job holds no descriptor. A follower's subscription holds no file either.
//! - A torn last line left by a crash is cut off when the file is opened for writing.
//! - Records are stored as the agent sent them (console text raw); readers neutralise escapes.

use proto::log::{LogKind, LogRecord};
use proto::{JobId, Millis, Seq};
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};

/// Live records a slow follower may fall behind by before it re-reads the file. Allocated for
/// every open job log, followed or not, so it stays small.
const FOLLOW_BUFFER: usize = 256;

/// Open log files kept by default (`dutlab serve --open-log-files`).
pub const DEFAULT_OPEN_FILES: usize = 1024;

/// Longest wait between a write and the `fsync` that covers it (the batch window).
pub const SYNC_INTERVAL: Duration = Duration::from_millis(5);

/// `errno` of "too many open files" (process and system limits).
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

mod files;
pub mod sql;

pub use files::{LogStore, Subscription};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log of job {job} ({path}): {source}")]
    Io {
        job: JobId,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("log of job {job}: {source}")]
    Store {
        job: JobId,
        #[source]
        source: crate::store::StoreError,
    },
}

/// Every job's log, in files or in the database.
#[derive(Debug, Clone)]
pub enum Logs {
    Files(LogStore),
    Sql(sql::SqlLogs),
}

/// Live records of one job ([`Logs::subscribe`]).
#[derive(Debug)]
pub enum LiveLog {
    Files(Subscription),
    Sql(sql::SqlSubscription),
}

impl LiveLog {
    pub async fn recv(&mut self) -> Result<LogRecord, broadcast::error::RecvError> {
        match self {
            LiveLog::Files(s) => s.recv().await,
            LiveLog::Sql(s) => s.recv().await,
        }
    }
}

fn stored(job: JobId) -> impl Fn(crate::store::StoreError) -> LogError {
    move |source| LogError::Store { job, source }
}

impl Logs {
    /// The logs of a controller: files in `dir` on SQLite; the database on PostgreSQL (`url`),
    /// after importing any files a controller of an older version left in `dir` (once: the
    /// imported files move to `logs.imported`).
    pub async fn open(
        dir: &Path,
        capacity: usize,
        store: &crate::store::Store,
        url: &str,
    ) -> Result<Logs, LogError> {
        match store.backend() {
            crate::store::Backend::Sqlite => {
                Ok(Logs::Files(LogStore::with_capacity(dir, capacity)))
            }
            crate::store::Backend::Postgres => {
                let sql = sql::SqlLogs::new(store.clone(), Some(url.to_owned()));
                import_files(dir, &sql).await?;
                Ok(Logs::Sql(sql))
            }
        }
    }

    /// Stores the records that continue the log; answers the last stored number (written;
    /// durable once [`Logs::progress`] says so).
    pub async fn append(&self, job: JobId, records: &[LogRecord]) -> Result<Seq, LogError> {
        match self {
            Logs::Files(files) => files.append(job, records),
            Logs::Sql(sql) => sql.append(job, records).await.map_err(stored(job)),
        }
    }

    /// Appends a record written by the controller itself (a lab note, a gap).
    pub async fn note(
        &self,
        job: JobId,
        kind: LogKind,
        text: String,
        at: Millis,
    ) -> Result<Seq, LogError> {
        match self {
            Logs::Files(files) => files.note(job, kind, text, at),
            Logs::Sql(sql) => sql.note(job, kind, text, at).await.map_err(stored(job)),
        }
    }

    /// Number of the last stored record (0: none).
    pub async fn last(&self, job: JobId) -> Result<Seq, LogError> {
        match self {
            Logs::Files(files) => files.last(job),
            Logs::Sql(sql) => sql.last(job).await.map_err(stored(job)),
        }
    }

    /// Number of the last durable record (0: none).
    pub async fn durable(&self, job: JobId) -> Result<Seq, LogError> {
        match self {
            Logs::Files(files) => files.durable(job),
            Logs::Sql(sql) => sql.last(job).await.map_err(stored(job)),
        }
    }

    /// (last written, last durable) of a job this controller is writing.
    pub fn progress(&self, job: JobId) -> Option<(Seq, Seq)> {
        match self {
            Logs::Files(files) => files.progress(job),
            Logs::Sql(sql) => sql.progress(job),
        }
    }

    /// Changes whenever records may have become durable.
    pub fn synced(&self) -> watch::Receiver<u64> {
        match self {
            Logs::Files(files) => files.synced(),
            Logs::Sql(sql) => sql.synced(),
        }
    }

    /// Makes one job's records durable now (a finished job, before its end is committed).
    pub fn sync(&self, job: JobId) -> Result<(), LogError> {
        match self {
            Logs::Files(files) => files.sync(job),
            Logs::Sql(_) => Ok(()),
        }
    }

    /// Live records from now on. Subscribe before reading so nothing falls between.
    pub async fn subscribe(&self, job: JobId) -> Result<LiveLog, LogError> {
        match self {
            Logs::Files(files) => files.subscribe(job).map(LiveLog::Files),
            Logs::Sql(sql) => sql
                .subscribe(job)
                .await
                .map(LiveLog::Sql)
                .map_err(stored(job)),
        }
    }

    /// Up to `limit` stored records after `after`.
    pub async fn read(
        &self,
        job: JobId,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<LogRecord>, LogError> {
        match self {
            Logs::Files(files) => files.read(job, after, limit),
            Logs::Sql(sql) => sql.read(job, after, limit).await.map_err(stored(job)),
        }
    }

    /// Syncs and forgets a finished job's log.
    pub fn close(&self, job: JobId) {
        match self {
            Logs::Files(files) => files.close(job),
            Logs::Sql(sql) => sql.close(job),
        }
    }
}

/// Copies the log files in `dir` into the database (the records that continue what the table
/// holds; the rest are there already), moving each imported file to `<dir>.imported/`, so
/// each is imported once.
async fn import_files(dir: &Path, sql: &sql::SqlLogs) -> Result<(), LogError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LogError::Io {
            job: JobId(0),
            path,
            source,
        }
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let name = entry.map_err(io(dir))?.file_name();
        if let Some(job) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse().ok())
        {
            found.push(JobId(job));
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    let done = dir.with_extension("imported");
    crate::datadir::create_private_dir(&done).map_err(io(&done))?;
    let files = LogStore::new(dir);
    for &job in &found {
        let mut after = sql.last(job).await.map_err(stored(job))?;
        loop {
            let records = files.read(job, after, 1000)?;
            let Some(last) = records.last().map(|r| r.seq) else {
                break;
            };
            sql.append(job, &records).await.map_err(stored(job))?;
            after = last;
        }
        sql.close(job);
        let name = format!("{job}.log");
        std::fs::rename(dir.join(&name), done.join(&name)).map_err(io(&dir.join(&name)))?;
    }
    tracing::info!(
        "logs of {} job(s) imported from {} into the database; the files are kept in {}",
        found.len(),
        dir.display(),
        done.display()
    );
    Ok(())
}
