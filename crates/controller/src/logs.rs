//! The log store: one append-only file of JSON lines per job under `DATA_DIR/logs/`.
//!
//! Invariants:
//! - A job's stored records are numbered 1, 2, 3 ... with no hole and no duplicate: a record
//!   is written only when its `seq` is exactly one more than the last stored one; records at
//!   or below it are duplicates and dropped; records beyond it wait for a resend (the agent
//!   resends from the acknowledged cursor).
//! - A record is written (to the operating system) before it is acknowledged or shown to a
//!   follower. A torn last line left by a crash is cut off when the file is opened again.
//! - Records are stored as the agent sent them (console text raw); readers neutralise escapes.

use proto::log::{LogKind, LogRecord};
use proto::{JobId, Millis, Seq};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Live records a slow follower may fall behind by before it re-reads the file. Allocated for
/// every open job log, followed or not, so it stays small.
const FOLLOW_BUFFER: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log of job {job} ({path}): {source}")]
    Io {
        job: JobId,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug)]
struct JobLog {
    file: File,
    last: Seq,
    live: broadcast::Sender<LogRecord>,
}

/// Every job's log.
#[derive(Debug, Clone)]
pub struct LogStore {
    dir: PathBuf,
    jobs: Arc<Mutex<HashMap<JobId, JobLog>>>,
}

impl LogStore {
    pub fn new(dir: &Path) -> LogStore {
        LogStore {
            dir: dir.to_path_buf(),
            jobs: Arc::default(),
        }
    }

    fn path(&self, job: JobId) -> PathBuf {
        self.dir.join(format!("{job}.log"))
    }

    fn with<T>(
        &self,
        job: JobId,
        f: impl FnOnce(&mut JobLog) -> Result<T, std::io::Error>,
    ) -> Result<T, LogError> {
        let mut jobs = self
            .jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let path = self.path(job);
        let io = |source| LogError::Io {
            job,
            path: path.clone(),
            source,
        };
        let log = match jobs.entry(job) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(open(&self.dir, &path).map_err(io)?)
            }
        };
        f(log).map_err(io)
    }

    /// Stores the records that continue the log; answers the last stored sequence number.
    pub fn append(&self, job: JobId, records: &[LogRecord]) -> Result<Seq, LogError> {
        self.with(job, |log| {
            let mut text = String::new();
            let mut fresh = Vec::new();
            let mut last = log.last;
            for r in records {
                if r.seq.0 == last.0 + 1 {
                    push_line(&mut text, r)?;
                    last = r.seq;
                    fresh.push(r.clone());
                }
            }
            if !fresh.is_empty() {
                log.file.write_all(text.as_bytes())?;
                log.last = last;
                for r in fresh {
                    let _ = log.live.send(r);
                }
            }
            Ok(log.last)
        })
    }

    /// Appends a record written by the controller itself (a lab note, a gap).
    pub fn note(
        &self,
        job: JobId,
        kind: LogKind,
        text: String,
        at: Millis,
    ) -> Result<Seq, LogError> {
        self.with(job, |log| {
            let r = LogRecord {
                seq: Seq(log.last.0 + 1),
                at,
                kind,
                text,
            };
            let mut line = String::new();
            push_line(&mut line, &r)?;
            log.file.write_all(line.as_bytes())?;
            log.last = r.seq;
            let _ = log.live.send(r);
            Ok(log.last)
        })
    }

    /// Sequence number of the last stored record (0: none).
    pub fn last(&self, job: JobId) -> Result<Seq, LogError> {
        self.with(job, |log| Ok(log.last))
    }

    /// Live records from now on. Subscribe before reading so nothing falls between.
    pub fn subscribe(&self, job: JobId) -> Result<broadcast::Receiver<LogRecord>, LogError> {
        self.with(job, |log| Ok(log.live.subscribe()))
    }

    /// Up to `limit` stored records after `after`.
    pub fn read(&self, job: JobId, after: Seq, limit: usize) -> Result<Vec<LogRecord>, LogError> {
        let path = self.path(job);
        let io = |source| LogError::Io {
            job,
            path: path.clone(),
            source,
        };
        // Make sure a torn tail was cut before reading.
        let last = self.last(job)?;
        if after >= last {
            return Ok(Vec::new());
        }
        let file = File::open(&path).map_err(io)?;
        let mut out = Vec::new();
        for line in BufReader::new(file).lines() {
            let line = line.map_err(io)?;
            let Ok(record) = serde_json::from_str::<LogRecord>(&line) else {
                continue;
            };
            if record.seq > after && record.seq <= last {
                out.push(record);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Forgets open files of finished jobs (they are reopened on demand).
    pub fn close(&self, job: JobId) {
        self.jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&job);
    }
}

fn push_line(text: &mut String, r: &LogRecord) -> Result<(), std::io::Error> {
    let line = serde_json::to_string(r).map_err(std::io::Error::other)?;
    text.push_str(&line);
    text.push('\n');
    Ok(())
}

/// Opens a job's log, finds its last record and cuts a torn last line.
fn open(dir: &Path, path: &Path) -> Result<JobLog, std::io::Error> {
    std::fs::create_dir_all(dir)?;
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    let mut last = Seq(0);
    let mut good_end = 0u64;
    {
        let mut reader = BufReader::new(&file);
        reader.seek(SeekFrom::Start(0))?;
        let mut line = String::new();
        let mut at = 0u64;
        loop {
            line.clear();
            let n = reader.read_line(&mut line)?;
            if n == 0 {
                break;
            }
            at += n as u64;
            if !line.ends_with('\n') {
                break;
            }
            match serde_json::from_str::<LogRecord>(line.trim_end()) {
                Ok(r) => {
                    last = r.seq;
                    good_end = at;
                }
                Err(_) => break,
            }
        }
    }
    if file.metadata()?.len() != good_end {
        file.set_len(good_end)?;
    }
    file.seek(SeekFrom::End(0))?;
    let (live, _) = broadcast::channel(FOLLOW_BUFFER);
    Ok(JobLog { file, last, live })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, text: &str) -> LogRecord {
        LogRecord {
            seq: Seq(seq),
            at: Millis(seq),
            kind: LogKind::Console,
            text: text.into(),
        }
    }

    #[test]
    fn stores_each_record_once_and_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = LogStore::new(dir.path());
        let job = JobId(1);
        assert_eq!(
            logs.append(job, &[rec(1, "a"), rec(2, "b")])
                .expect("append"),
            Seq(2)
        );
        // Duplicates and a frame that skips ahead are not stored.
        assert_eq!(
            logs.append(job, &[rec(2, "b"), rec(4, "d")])
                .expect("append"),
            Seq(2)
        );
        assert_eq!(
            logs.append(job, &[rec(3, "c"), rec(4, "d")])
                .expect("append"),
            Seq(4)
        );
        let all = logs.read(job, Seq(0), 100).expect("read");
        let texts: Vec<&str> = all.iter().map(|r| r.text.as_str()).collect();
        assert_eq!(texts, ["a", "b", "c", "d"]);
        assert_eq!(logs.read(job, Seq(2), 1).expect("read"), vec![rec(3, "c")]);
    }

    #[test]
    fn a_torn_last_line_is_cut_on_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let job = JobId(9);
        {
            let logs = LogStore::new(dir.path());
            logs.append(job, &[rec(1, "a"), rec(2, "b")])
                .expect("append");
        }
        let path = dir.path().join("9.log");
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(br#"{"seq":3,"at":3,"kind":"cons"#)
            .expect("write");
        drop(f);
        let logs = LogStore::new(dir.path());
        assert_eq!(logs.last(job).expect("last"), Seq(2));
        assert_eq!(logs.append(job, &[rec(3, "c")]).expect("append"), Seq(3));
        assert_eq!(logs.read(job, Seq(0), 10).expect("read").len(), 3);
    }
}
