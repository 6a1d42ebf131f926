//! The file store of job logs ([`LogStore`]): one append-only file of JSON lines per job,
//! written, synced, cached and read under the invariants of [`super`].

use super::*;

/// Where a job's file stands: what was written and what an `fsync` covered.
#[derive(Debug, Clone, Copy)]
struct Position {
    /// Last record written (to the operating system).
    last: Seq,
    /// Length of the file up to the end of `last`'s line.
    end: u64,
    /// Last record covered by an `fsync`.
    durable: Seq,
    /// Length of the file up to the end of `durable`'s line.
    durable_end: u64,
}

/// A job's state in the store.
#[derive(Debug)]
struct JobLog {
    /// `None` until the job is written or asked for its last record.
    position: Option<Position>,
    /// The open file and its place in the cache order, if open.
    file: Option<(Arc<File>, u64)>,
    /// Write generation of the newest write not yet synced.
    dirty: Option<u64>,
    /// Whether a writer (agent frame, controller note) made this entry. Entries made only by
    /// followers are dropped when the last follower goes.
    written: bool,
    live: broadcast::Sender<LogRecord>,
}

impl JobLog {
    fn new() -> JobLog {
        let (live, _) = broadcast::channel(FOLLOW_BUFFER);
        JobLog {
            position: None,
            file: None,
            dirty: None,
            written: false,
            live,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    jobs: HashMap<JobId, JobLog>,
    /// Open files by last use: use tick -> job.
    order: BTreeMap<u64, JobId>,
    tick: u64,
    /// Raised by every write.
    generation: u64,
    /// When the oldest unsynced write happened.
    dirty_since: Option<Instant>,
    /// Jobs written since the sync thread last took this list (may hold duplicates and jobs
    /// synced meanwhile; the thread checks each entry's `dirty`).
    dirty_jobs: Vec<JobId>,
    stop: bool,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    capacity: usize,
    state: Mutex<State>,
    /// Wakes the sync thread.
    work: Condvar,
    /// Sync rounds completed.
    synced: watch::Sender<u64>,
}

/// Stops the sync thread when the last [`LogStore`] clone goes.
#[derive(Debug)]
struct SyncThread {
    shared: Arc<Shared>,
}

impl Drop for SyncThread {
    fn drop(&mut self) {
        lock(&self.shared.state).stop = true;
        self.shared.work.notify_all();
    }
}

/// Every job's log.
#[derive(Debug, Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
    _sync: Arc<SyncThread>,
}

/// Live records of one job, from subscription on. Dropping it lets the store forget a job
/// that only followers were interested in.
#[derive(Debug)]
pub struct Subscription {
    rx: broadcast::Receiver<LogRecord>,
    job: JobId,
    shared: Arc<Shared>,
}

impl Subscription {
    pub async fn recv(&mut self) -> Result<LogRecord, broadcast::error::RecvError> {
        self.rx.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut state = lock(&self.shared.state);
        if let Some(log) = state.jobs.get(&self.job)
            && !log.written
            && log.file.is_none()
            && log.live.receiver_count() <= 1
        {
            state.jobs.remove(&self.job);
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl LogStore {
    /// A store keeping at most [`DEFAULT_OPEN_FILES`] files open.
    pub fn new(dir: &Path) -> LogStore {
        LogStore::with_capacity(dir, DEFAULT_OPEN_FILES)
    }

    /// A store keeping at most `capacity` (at least 1) files open.
    pub fn with_capacity(dir: &Path, capacity: usize) -> LogStore {
        let (synced, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            capacity: capacity.max(1),
            state: Mutex::default(),
            work: Condvar::new(),
            synced,
        });
        let thread_shared = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("log-sync".into())
            .spawn(move || sync_thread(&thread_shared));
        if let Err(e) = spawned {
            // Without the thread nothing is acknowledged until a job finishes (which syncs).
            tracing::error!("cannot start the log sync thread: {e}");
        }
        LogStore {
            _sync: Arc::new(SyncThread {
                shared: Arc::clone(&shared),
            }),
            shared,
        }
    }

    fn path(&self, job: JobId) -> PathBuf {
        self.shared.dir.join(format!("{job}.log"))
    }

    fn io(&self, job: JobId) -> impl Fn(std::io::Error) -> LogError + '_ {
        move |source| LogError::Io {
            job,
            path: self.path(job),
            source,
        }
    }

    /// Stores the records that continue the log; answers the last stored (written, not yet
    /// necessarily durable) sequence number.
    pub fn append(&self, job: JobId, records: &[LogRecord]) -> Result<Seq, LogError> {
        let mut state = lock(&self.shared.state);
        let pos = self.writable(&mut state, job)?;
        let mut text = String::new();
        let mut fresh = Vec::new();
        let mut last = pos.last;
        for r in records {
            if r.seq.0 == last.0 + 1 {
                push_line(&mut text, r).map_err(self.io(job))?;
                last = r.seq;
                fresh.push(r.clone());
            }
        }
        if fresh.is_empty() {
            return Ok(pos.last);
        }
        self.write(&mut state, job, &text, last)?;
        if let Some(log) = state.jobs.get(&job) {
            for r in fresh {
                let _ = log.live.send(r);
            }
        }
        Ok(last)
    }

    /// Appends a record written by the controller itself (a lab note, a gap).
    pub fn note(
        &self,
        job: JobId,
        kind: LogKind,
        text: String,
        at: Millis,
    ) -> Result<Seq, LogError> {
        let mut state = lock(&self.shared.state);
        let pos = self.writable(&mut state, job)?;
        let r = LogRecord {
            seq: Seq(pos.last.0 + 1),
            at,
            kind,
            text,
        };
        let mut line = String::new();
        push_line(&mut line, &r).map_err(self.io(job))?;
        self.write(&mut state, job, &line, r.seq)?;
        let seq = r.seq;
        if let Some(log) = state.jobs.get(&job) {
            let _ = log.live.send(r);
        }
        Ok(seq)
    }

    /// Makes sure `job` has an entry with a position and an open file; answers the position.
    fn writable(&self, state: &mut State, job: JobId) -> Result<Position, LogError> {
        state.jobs.entry(job).or_insert_with(JobLog::new).written = true;
        self.open_file(state, job)?;
        state
            .jobs
            .get(&job)
            .and_then(|log| log.position)
            .ok_or_else(|| self.io(job)(std::io::Error::other("log entry vanished")))
    }

    /// Opens `job`'s file for appending if it is not open (evicting the least recently used
    /// file beyond the capacity), and marks it used.
    fn open_file(&self, state: &mut State, job: JobId) -> Result<(), LogError> {
        state.tick += 1;
        let tick = state.tick;
        let Some(log) = state.jobs.get_mut(&job) else {
            return Err(self.io(job)(std::io::Error::other("log entry vanished")));
        };
        if let Some((_, used)) = &mut log.file {
            let old = std::mem::replace(used, tick);
            state.order.remove(&old);
            state.order.insert(tick, job);
            return Ok(());
        }
        while state.order.len() >= self.shared.capacity {
            if !self.evict_oldest(state) {
                break;
            }
        }
        let path = self.path(job);
        let known = state.jobs.get(&job).and_then(|log| log.position);
        let opened = match open(&self.shared.dir, &path, known) {
            Err(e) if matches!(e.raw_os_error(), Some(EMFILE | ENFILE)) => {
                // The process is out of descriptors (sockets): give back half the cache.
                tracing::warn!(
                    "open log files: {e}; closing {} of them",
                    state.order.len().div_ceil(2)
                );
                for _ in 0..state.order.len().div_ceil(2) {
                    self.evict_oldest(state);
                }
                open(&self.shared.dir, &path, known)
            }
            other => other,
        };
        let (file, position) = opened.map_err(self.io(job))?;
        if let Some(log) = state.jobs.get_mut(&job) {
            log.position = Some(position);
            log.file = Some((Arc::new(file), tick));
        }
        state.order.insert(tick, job);
        Ok(())
    }

    /// Syncs and closes the least recently used open file; false when none is open.
    fn evict_oldest(&self, state: &mut State) -> bool {
        let Some((_, job)) = state.order.pop_first() else {
            return false;
        };
        if let Some(log) = state.jobs.get_mut(&job)
            && let Some((file, _)) = log.file.take()
        {
            if log.dirty.is_some() {
                settle(log, &file, file.sync_data(), job, &self.path(job));
                log.dirty = None;
            }
            if !log.written && log.live.receiver_count() == 0 {
                state.jobs.remove(&job);
            }
        }
        true
    }

    /// Writes `text` (whole records ending at `last`) to `job`'s open file; on failure cuts
    /// the file back to the last good record.
    fn write(&self, state: &mut State, job: JobId, text: &str, last: Seq) -> Result<(), LogError> {
        state.generation += 1;
        let generation = state.generation;
        let Some(log) = state.jobs.get_mut(&job) else {
            return Err(self.io(job)(std::io::Error::other("log entry vanished")));
        };
        let (Some(pos), Some((file, used))) = (log.position.as_mut(), log.file.as_ref()) else {
            return Err(self.io(job)(std::io::Error::other("log file not open")));
        };
        match (&**file).write_all(text.as_bytes()) {
            Ok(()) => {
                pos.last = last;
                pos.end += text.len() as u64;
                if log.dirty.replace(generation).is_none() {
                    state.dirty_jobs.push(job);
                }
                state.dirty_since.get_or_insert_with(Instant::now);
                self.shared.work.notify_one();
                Ok(())
            }
            Err(e) => {
                if let Err(cut) = file.set_len(pos.end) {
                    // The file's tail is unknown: close it; the next open rescans and cuts
                    // whatever follows the last whole record.
                    tracing::error!(
                        "log of job {job}: cannot cut a failed write back to {} bytes: {cut}",
                        pos.end
                    );
                    let used = *used;
                    log.file = None;
                    log.position = None;
                    // Reopening rescans and syncs what the file holds.
                    log.dirty = None;
                    state.order.remove(&used);
                }
                Err(self.io(job)(e))
            }
        }
    }

    /// Sequence number of the last stored record (0: none). Opens nothing that stays open.
    pub fn last(&self, job: JobId) -> Result<Seq, LogError> {
        if let Some(pos) = lock(&self.shared.state)
            .jobs
            .get(&job)
            .and_then(|log| log.position)
        {
            return Ok(pos.last);
        }
        Ok(scan(&self.path(job)).map_err(self.io(job))?.0)
    }

    /// Sequence number of the last record covered by an `fsync` (0: none).
    pub fn durable(&self, job: JobId) -> Result<Seq, LogError> {
        if let Some(pos) = lock(&self.shared.state)
            .jobs
            .get(&job)
            .and_then(|log| log.position)
        {
            return Ok(pos.durable);
        }
        // Not written by this process: what the file holds was there before it started.
        self.last(job)
    }

    /// Last written and last durable record of a job being written; `None` when the store
    /// does not hold the job (closed, or never written by this process).
    pub fn progress(&self, job: JobId) -> Option<(Seq, Seq)> {
        lock(&self.shared.state)
            .jobs
            .get(&job)
            .and_then(|log| log.position)
            .map(|p| (p.last, p.durable))
    }

    /// Rounds of the sync thread; changes whenever records may have become durable.
    pub fn synced(&self) -> watch::Receiver<u64> {
        self.shared.synced.subscribe()
    }

    /// Syncs one job's file now (a finished job, before its end is committed).
    pub fn sync(&self, job: JobId) -> Result<(), LogError> {
        let mut state = lock(&self.shared.state);
        let path = self.path(job);
        let Some(log) = state.jobs.get_mut(&job) else {
            return Ok(());
        };
        let Some((file, _)) = log.file.as_ref().map(|(f, t)| (Arc::clone(f), *t)) else {
            return Ok(());
        };
        if log.dirty.is_none() {
            return Ok(());
        }
        let result = file.sync_data();
        let failed = result
            .as_ref()
            .err()
            .map(|e| std::io::Error::new(e.kind(), e.to_string()));
        settle(log, &file, result, job, &path);
        log.dirty = None;
        drop(state);
        self.shared.synced.send_modify(|round| *round += 1);
        match failed {
            Some(e) => Err(self.io(job)(e)),
            None => Ok(()),
        }
    }

    /// Live records from now on. Subscribe before reading so nothing falls between.
    pub fn subscribe(&self, job: JobId) -> Result<Subscription, LogError> {
        let mut state = lock(&self.shared.state);
        let log = state.jobs.entry(job).or_insert_with(JobLog::new);
        Ok(Subscription {
            rx: log.live.subscribe(),
            job,
            shared: Arc::clone(&self.shared),
        })
    }

    /// Up to `limit` stored records after `after`. The file is open during the read only.
    pub fn read(&self, job: JobId, after: Seq, limit: usize) -> Result<Vec<LogRecord>, LogError> {
        let known = lock(&self.shared.state)
            .jobs
            .get(&job)
            .and_then(|log| log.position)
            .map(|p| p.last);
        if known.is_some_and(|last| after >= last) {
            return Ok(Vec::new());
        }
        let path = self.path(job);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(job)(e)),
        };
        let mut out = Vec::new();
        let mut reader = BufReader::new(file);
        let mut line = String::new();
        let mut expect = 1;
        loop {
            line.clear();
            if reader.read_line(&mut line).map_err(self.io(job))? == 0 || !line.ends_with('\n') {
                break;
            }
            // Only whole records that continue the log count (a torn tail is not a record).
            let Ok(record) = serde_json::from_str::<LogRecord>(line.trim_end()) else {
                break;
            };
            if record.seq.0 != expect || known.is_some_and(|last| record.seq > last) {
                break;
            }
            expect += 1;
            if record.seq > after {
                out.push(record);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Syncs and forgets a finished job's file (reads reopen it for the read only).
    pub fn close(&self, job: JobId) {
        if let Err(e) = self.sync(job) {
            tracing::error!("{e}");
        }
        let mut state = lock(&self.shared.state);
        if let Some(log) = state.jobs.remove(&job)
            && let Some((_, used)) = log.file
        {
            state.order.remove(&used);
        }
    }

    /// Files open now (for tests and benchmarks).
    pub fn open_files(&self) -> usize {
        lock(&self.shared.state).order.len()
    }
}

/// Records the outcome of an `fsync` of `log`'s file: on success what was written is durable;
/// on failure the file is cut back to the last durable record.
fn settle(log: &mut JobLog, file: &File, result: std::io::Result<()>, job: JobId, path: &Path) {
    let Some(pos) = log.position.as_mut() else {
        return;
    };
    match result {
        Ok(()) => {
            pos.durable = pos.last;
            pos.durable_end = pos.end;
        }
        Err(e) => {
            tracing::error!(
                "log of job {job} ({}): fsync failed: {e}; records after {} are dropped and will be resent",
                path.display(),
                pos.durable
            );
            pos.last = pos.durable;
            pos.end = pos.durable_end;
            if let Err(cut) = file.set_len(pos.end) {
                tracing::error!(
                    "log of job {job} ({}): cannot cut back: {cut}",
                    path.display()
                );
            }
        }
    }
}

/// The sync thread: one round at most [`SYNC_INTERVAL`] after the first unsynced write.
fn sync_thread(shared: &Shared) {
    loop {
        let mut state = lock(&shared.state);
        loop {
            if state.stop {
                break;
            }
            match state.dirty_since {
                None => {
                    state = shared
                        .work
                        .wait(state)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                Some(since) => {
                    let due = since + SYNC_INTERVAL;
                    let now = Instant::now();
                    if now >= due {
                        break;
                    }
                    state = shared
                        .work
                        .wait_timeout(state, due - now)
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .0;
                }
            }
        }
        let stop = state.stop;
        state.dirty_since = None;
        let dirty = std::mem::take(&mut state.dirty_jobs);
        drop(state);
        for job in dirty {
            // One file at a time, outside the lock: writers go on meanwhile.
            let picked = {
                let mut state = lock(&shared.state);
                state.jobs.get_mut(&job).and_then(|log| {
                    let generation = log.dirty?;
                    let (file, _) = log.file.as_ref()?;
                    Some((Arc::clone(file), generation, log.position?))
                })
            };
            let Some((file, generation, seen)) = picked else {
                continue;
            };
            let result = file.sync_data();
            let mut state = lock(&shared.state);
            let Some(log) = state.jobs.get_mut(&job) else {
                continue;
            };
            let path = shared.dir.join(format!("{job}.log"));
            match result {
                Ok(()) => {
                    if let Some(pos) = log.position.as_mut()
                        && pos.durable < seen.last
                        && seen.last <= pos.last
                    {
                        pos.durable = seen.last;
                        pos.durable_end = seen.end;
                    }
                    if log.dirty == Some(generation) {
                        log.dirty = None;
                    } else if log.dirty.is_some() {
                        // Written again during the sync: the next round takes it.
                        state.dirty_jobs.push(job);
                        state.dirty_since.get_or_insert_with(Instant::now);
                    }
                }
                Err(e) => {
                    settle(log, &file, Err(e), job, &path);
                    log.dirty = None;
                }
            }
        }
        shared.synced.send_modify(|round| *round += 1);
        if stop {
            return;
        }
    }
}

fn push_line(text: &mut String, r: &LogRecord) -> Result<(), std::io::Error> {
    let line = serde_json::to_string(r).map_err(std::io::Error::other)?;
    text.push_str(&line);
    text.push('\n');
    Ok(())
}

/// The last whole record of a log file that continues the log, and where its line ends.
fn scan_file(file: &File) -> Result<(Seq, u64), std::io::Error> {
    let mut reader = BufReader::new(file);
    reader.seek(SeekFrom::Start(0))?;
    let mut last = Seq(0);
    let mut good_end = 0u64;
    let mut line = String::new();
    let mut at = 0u64;
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n == 0 || !line.ends_with('\n') {
            break;
        }
        at += n as u64;
        match serde_json::from_str::<LogRecord>(line.trim_end()) {
            Ok(r) if r.seq.0 == last.0 + 1 => {
                last = r.seq;
                good_end = at;
            }
            Ok(_) | Err(_) => break,
        }
    }
    Ok((last, good_end))
}

/// [`scan_file`] of a path; a missing file is an empty log.
fn scan(path: &Path) -> Result<(Seq, u64), std::io::Error> {
    match File::open(path) {
        Ok(file) => scan_file(&file),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((Seq(0), 0)),
        Err(e) => Err(e),
    }
}

/// Opens a job's log for appending (mode 0600). Without a `known` position the file is
/// scanned, a torn tail is cut and what remains is synced (so it counts as durable).
fn open(
    dir: &Path,
    path: &Path,
    known: Option<Position>,
) -> Result<(File, Position), std::io::Error> {
    crate::datadir::create_private_dir(dir)?;
    let file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    if let Some(pos) = known {
        return Ok((file, pos));
    }
    let (last, good_end) = scan_file(&file)?;
    if file.metadata()?.len() != good_end {
        file.set_len(good_end)?;
    }
    file.sync_data()?;
    Ok((
        file,
        Position {
            last,
            end: good_end,
            durable: last,
            durable_end: good_end,
        },
    ))
}

#[cfg(test)]
mod tests;
