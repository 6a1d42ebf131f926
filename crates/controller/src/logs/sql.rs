//! Job logs in the database ([`crate::store::log_records`]), for controllers on PostgreSQL:
//! every controller of the database stores and reads the same records, and a follower on one
//! controller gets the lines another one ingested.
//!
//! Invariants:
//! - What [`SqlLogs::append`] answers is committed, hence durable: an acknowledgement to an
//!   agent never names an uncommitted record.
//! - Live records reach local subscribers from two sources: the records this controller just
//!   stored, and the `dutlab_logs` notifications of any controller (the records are then read
//!   from the table). Both may deliver a record twice or out of order; a subscriber keeps
//!   records that continue what it has and re-reads the table on anything else.
//! - Notifications are a hint, not the data: a listener connection that drops (PostgreSQL
//!   restarted) reconnects, and every followed job is re-read then and once a second, so a lost
//!   notification delays a line by at most that.

use crate::store::log_records::LOG_CHANNEL;
use crate::store::{Store, StoreError};
use proto::log::{LogKind, LogRecord};
use proto::{JobId, Millis, Seq};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// Live records a slow follower may fall behind by before it re-reads the table.
const FOLLOW_BUFFER: usize = 256;

/// How often followed jobs are re-read whatever the notifications said.
const POLL: Duration = Duration::from_secs(1);

/// Records read per job and notification.
const READ_BATCH: usize = 1000;

#[derive(Debug)]
struct Live {
    tx: broadcast::Sender<LogRecord>,
    /// Last record sent to subscribers.
    sent: Seq,
}

#[derive(Debug, Default)]
struct State {
    /// Last stored record of jobs this controller wrote or asked about.
    last: HashMap<JobId, Seq>,
    /// Jobs followed on this controller.
    live: HashMap<JobId, Live>,
}

#[derive(Debug)]
struct Shared {
    store: Store,
    state: Mutex<State>,
    /// Bumped after every commit of records (they are durable once committed).
    synced: watch::Sender<u64>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Every job's log, in the database.
#[derive(Debug, Clone)]
pub struct SqlLogs {
    shared: Arc<Shared>,
}

/// Live records of one job, from subscription on.
#[derive(Debug)]
pub struct SqlSubscription {
    rx: broadcast::Receiver<LogRecord>,
    job: JobId,
    shared: Arc<Shared>,
}

impl SqlSubscription {
    pub async fn recv(&mut self) -> Result<LogRecord, broadcast::error::RecvError> {
        self.rx.recv().await
    }
}

impl Drop for SqlSubscription {
    fn drop(&mut self) {
        let mut state = lock(&self.shared.state);
        if state
            .live
            .get(&self.job)
            .is_some_and(|l| l.tx.receiver_count() <= 1)
        {
            state.live.remove(&self.job);
        }
    }
}

impl SqlLogs {
    /// Logs in `store`'s database; with `listen` (a PostgreSQL URL) a task follows the
    /// notifications of every controller on it.
    pub fn new(store: Store, listen: Option<String>) -> SqlLogs {
        let (synced, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            store,
            state: Mutex::default(),
            synced,
        });
        let weak = Arc::downgrade(&shared);
        if let Some(url) = listen {
            tokio::spawn(listen_task(url, weak.clone()));
        }
        tokio::spawn(poll_task(weak));
        SqlLogs { shared }
    }

    /// Stores the records that continue the log; answers the last stored number.
    pub async fn append(&self, job: JobId, records: &[LogRecord]) -> Result<Seq, StoreError> {
        let (last, fresh) = self.shared.store.append_log(job, records).await?;
        self.stored(job, last, fresh);
        Ok(last)
    }

    /// Appends a record written by the controller itself; answers its number.
    pub async fn note(
        &self,
        job: JobId,
        kind: LogKind,
        text: String,
        at: Millis,
    ) -> Result<Seq, StoreError> {
        let record = self
            .shared
            .store
            .append_log_note(job, |seq| LogRecord {
                seq,
                at,
                kind,
                text: text.clone(),
            })
            .await?;
        let seq = record.seq;
        self.stored(job, seq, vec![record]);
        Ok(seq)
    }

    fn stored(&self, job: JobId, last: Seq, fresh: Vec<LogRecord>) {
        let mut state = lock(&self.shared.state);
        let known = state.last.entry(job).or_insert(last);
        *known = (*known).max(last);
        if let Some(live) = state.live.get_mut(&job) {
            for r in fresh {
                if r.seq.0 == live.sent.0 + 1 {
                    live.sent = r.seq;
                    let _ = live.tx.send(r);
                }
            }
        }
        drop(state);
        if last.0 > 0 {
            self.shared.synced.send_modify(|round| *round += 1);
        }
    }

    /// Number of the last stored record (0: none).
    pub async fn last(&self, job: JobId) -> Result<Seq, StoreError> {
        let last = self.shared.store.log_last(job).await?;
        let mut state = lock(&self.shared.state);
        if let Some(known) = state.last.get_mut(&job) {
            *known = (*known).max(last);
        }
        Ok(last)
    }

    /// (last stored, last durable) as this controller knows it: equal, since a stored record
    /// is committed. `None` for a job it has not written.
    pub fn progress(&self, job: JobId) -> Option<(Seq, Seq)> {
        lock(&self.shared.state).last.get(&job).map(|s| (*s, *s))
    }

    /// Changes whenever records were committed.
    pub fn synced(&self) -> watch::Receiver<u64> {
        self.shared.synced.subscribe()
    }

    /// Live records from now on. Subscribe before reading so nothing falls between.
    pub async fn subscribe(&self, job: JobId) -> Result<SqlSubscription, StoreError> {
        let followed = lock(&self.shared.state).live.contains_key(&job);
        // Live records start after what is stored now (the subscriber reads that itself).
        let stored = if followed {
            Seq(0)
        } else {
            self.shared.store.log_last(job).await?
        };
        let mut state = lock(&self.shared.state);
        let live = state.live.entry(job).or_insert_with(|| Live {
            tx: broadcast::channel(FOLLOW_BUFFER).0,
            sent: stored,
        });
        Ok(SqlSubscription {
            rx: live.tx.subscribe(),
            job,
            shared: Arc::clone(&self.shared),
        })
    }

    /// Up to `limit` stored records after `after`.
    pub async fn read(
        &self,
        job: JobId,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<LogRecord>, StoreError> {
        self.shared.store.log_records(job, after, limit).await
    }

    /// Forgets a finished job (nothing to sync: every stored record is committed).
    pub fn close(&self, job: JobId) {
        lock(&self.shared.state).last.remove(&job);
    }
}

/// Reads the records of followed `jobs` past what was sent and sends them.
async fn catch_up(shared: &Shared, jobs: Vec<(JobId, Seq)>) {
    for (job, mut sent) in jobs {
        loop {
            let records = match shared.store.log_records(job, sent, READ_BATCH).await {
                Ok(records) => records,
                Err(e) => {
                    tracing::debug!("log of job {job}: {e}");
                    break;
                }
            };
            let full = records.len() == READ_BATCH;
            let mut state = lock(&shared.state);
            let Some(live) = state.live.get_mut(&job) else {
                break;
            };
            for r in records {
                if r.seq.0 == live.sent.0 + 1 {
                    live.sent = r.seq;
                    let _ = live.tx.send(r);
                }
            }
            sent = live.sent;
            if !full {
                break;
            }
        }
    }
}

fn followed(shared: &Shared, only: Option<(JobId, Seq)>) -> Vec<(JobId, Seq)> {
    let state = lock(&shared.state);
    match only {
        Some((job, seq)) => state
            .live
            .get(&job)
            .filter(|l| l.sent < seq)
            .map(|l| vec![(job, l.sent)])
            .unwrap_or_default(),
        None => state.live.iter().map(|(j, l)| (*j, l.sent)).collect(),
    }
}

/// Follows `dutlab_logs` notifications until the logs are dropped.
async fn listen_task(url: String, shared: Weak<Shared>) {
    use sqlx::postgres::PgListener;
    let mut listener = loop {
        match PgListener::connect(&url).await {
            Ok(mut l) => match l.listen(LOG_CHANNEL).await {
                Ok(()) => break l,
                Err(e) => tracing::warn!("log notifications: {e}; trying again"),
            },
            Err(e) => tracing::warn!("log notifications: {e}; trying again"),
        }
        if shared.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(POLL).await;
    };
    loop {
        let got = tokio::time::timeout(POLL, listener.try_recv()).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        match got {
            // Nothing for a while: the poll task covers followed jobs.
            Err(_) => {}
            Ok(Ok(Some(n))) => {
                let parsed = n
                    .payload()
                    .split_once(':')
                    .and_then(|(j, s)| Some((JobId(j.parse().ok()?), Seq(s.parse().ok()?))));
                if let Some(hint) = parsed {
                    let jobs = followed(&shared, Some(hint));
                    catch_up(&shared, jobs).await;
                }
            }
            // The connection was lost and is made again by the next call: notifications in
            // between are gone, so every followed job is read again.
            Ok(Ok(None)) => {
                tracing::info!("log notifications: connection lost; reconnecting");
                let jobs = followed(&shared, None);
                catch_up(&shared, jobs).await;
            }
            Ok(Err(e)) => {
                tracing::warn!("log notifications: {e}");
                drop(shared);
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

/// Re-reads every followed job once a second (the safety net under notifications, and the
/// only source of other controllers' lines when there is no listener).
async fn poll_task(shared: Weak<Shared>) {
    loop {
        tokio::time::sleep(POLL).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let jobs = followed(&shared, None);
        if !jobs.is_empty() {
            catch_up(&shared, jobs).await;
        }
    }
}
