//! The log spool: every record of a lease is on disk before it is sent.
//!
//! ```text
//!  work_dir/spool/<lease>/meta.json              lease, epoch, job, device, job name, phase
//!                                                (running | finished with report and last seq)
//!  work_dir/spool/<lease>/<first seq:020>.log    segments of records, appended in order:
//!      seq u64 | kind u8 | at u64 (ms) | len u32 | len bytes of UTF-8 text      (big-endian)
//! ```
//!
//! Invariants:
//! - Records of a lease are numbered 1, 2, 3 ... by the spool, without holes: when records
//!   cannot be written (disk full) they wait in a bounded buffer; if that overflows, the
//!   oldest are dropped and the next record written is one [`LogKind::Gap`] saying how many.
//! - A record is written with one `write` (no fsync): a killed agent loses nothing it spooled,
//!   a crashed host may. A torn record at the end of a segment is cut off at recovery.
//! - Only the last segment is ever written. A segment is deleted once the controller stored
//!   every record in it (its successor starts at or below `stored + 1`); the last segment is
//!   never deleted, so the last sequence number can always be found again.
//! - `meta.json` is replaced atomically (write, then rename).
//! - Nothing keeps a lease's log in memory: readers stream from the segment files.

use crate::recorder::Entry;
use proto::log::{LogKind, LogRecord, MAX_RECORD_TEXT};
use proto::{Epoch, JobId, JobReport, LeaseId, Millis, Seq};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Segment size at which the writer starts a new segment.
pub const SEGMENT_BYTES: u64 = 4 << 20;
/// Most bytes of records kept in memory while the spool cannot be written.
const PENDING_LIMIT: usize = 4 << 20;
/// Bytes before a record's text.
const RECORD_HEADER: usize = 8 + 1 + 8 + 4;

const META: &str = "meta.json";

/// What the spool knows about a lease besides its records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub lease: LeaseId,
    pub epoch: Epoch,
    pub job: JobId,
    pub device: String,
    /// The job's name once its definition parsed.
    #[serde(default)]
    pub job_name: Option<String>,
    pub phase: Phase,
}

/// Where the lease's job is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Running,
    Finished { report: JobReport, last_seq: Seq },
}

/// A lease found in the spool at start-up.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovered {
    pub meta: Meta,
    /// Sequence number of the last complete record (0: none).
    pub last_seq: Seq,
}

/// The spool directory of all leases.
#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
    segment_bytes: u64,
}

impl Spool {
    /// Opens (creates) the spool directory and checks that it is writable.
    pub fn open(root: &Path) -> io::Result<Spool> {
        std::fs::create_dir_all(root)?;
        let probe = root.join(".probe");
        std::fs::write(&probe, b"ok")?;
        std::fs::remove_file(&probe)?;
        Ok(Spool {
            root: root.to_path_buf(),
            segment_bytes: SEGMENT_BYTES,
        })
    }

    /// The same spool with another segment size (tests use small ones).
    #[cfg(test)]
    pub fn with_segment_bytes(mut self, bytes: u64) -> Spool {
        self.segment_bytes = bytes.max(1);
        self
    }

    pub fn lease_dir(&self, lease: LeaseId) -> PathBuf {
        self.root.join(lease.0.to_string())
    }

    /// Starts the spool of a new lease.
    pub fn create(&self, meta: Meta) -> io::Result<SpoolWriter> {
        let dir = self.lease_dir(meta.lease);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        write_meta(&dir, &meta)?;
        let file = create_segment(&dir, Seq(1))?;
        Ok(SpoolWriter {
            dir,
            meta,
            file,
            segment_len: 0,
            segment_bytes: self.segment_bytes,
            next: Seq(1),
            pending: Vec::new(),
            pending_bytes: 0,
            lost: 0,
            failure: None,
        })
    }

    /// Continues the spool of a recovered lease after its last complete record.
    pub fn reopen(&self, recovered: &Recovered) -> io::Result<SpoolWriter> {
        let dir = self.lease_dir(recovered.meta.lease);
        let next = Seq(recovered.last_seq.0 + 1);
        let (file, segment_len) = match segments(&dir)?.last() {
            Some(&first) => {
                let file = OpenOptions::new()
                    .append(true)
                    .open(segment_path(&dir, first))?;
                let len = file.metadata()?.len();
                (file, len)
            }
            None => (create_segment(&dir, next)?, 0),
        };
        Ok(SpoolWriter {
            dir,
            meta: recovered.meta.clone(),
            file,
            segment_len,
            segment_bytes: self.segment_bytes,
            next,
            pending: Vec::new(),
            pending_bytes: 0,
            lost: 0,
            failure: None,
        })
    }

    /// A reader of a lease's records, starting at 1.
    pub fn reader(&self, lease: LeaseId) -> SpoolReader {
        SpoolReader {
            dir: self.lease_dir(lease),
            next: Seq(1),
            at: None,
        }
    }

    /// Replaces the lease's metadata.
    pub fn write_meta(&self, meta: &Meta) -> io::Result<()> {
        write_meta(&self.lease_dir(meta.lease), meta)
    }

    /// Forgets a lease: its records and metadata.
    pub fn remove(&self, lease: LeaseId) -> io::Result<()> {
        match std::fs::remove_dir_all(self.lease_dir(lease)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Deletes the segments whose records the controller has all stored.
    pub fn drop_through(&self, lease: LeaseId, stored: Seq) -> io::Result<()> {
        let dir = self.lease_dir(lease);
        let firsts = segments(&dir)?;
        for pair in firsts.windows(2) {
            if pair[1] <= stored.0.saturating_add(1) {
                std::fs::remove_file(segment_path(&dir, pair[0]))?;
            }
        }
        Ok(())
    }

    /// Every lease in the spool, with the number of its last complete record. Torn records
    /// at the end are cut off; a lease whose metadata cannot be read is skipped (and kept).
    pub fn recover(&self) -> io::Result<Vec<Recovered>> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.root)? {
            let entry = entry?;
            let Some(lease) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u128>().ok())
            else {
                continue;
            };
            let dir = entry.path();
            let meta = match read_meta(&dir) {
                Ok(meta) if meta.lease.0 == lease => meta,
                Ok(_) => {
                    tracing::warn!(dir = %dir.display(), "spool metadata names another lease; skipped");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), "spool metadata unreadable, skipped: {e}");
                    continue;
                }
            };
            let last_seq = recover_last_seq(&dir)?;
            found.push(Recovered { meta, last_seq });
        }
        found.sort_by_key(|r| r.meta.lease);
        Ok(found)
    }
}

/// Appends a lease's records. Owned by the task that runs the lease's job.
#[derive(Debug)]
pub struct SpoolWriter {
    dir: PathBuf,
    meta: Meta,
    file: File,
    segment_len: u64,
    segment_bytes: u64,
    next: Seq,
    pending: Vec<Entry>,
    pending_bytes: usize,
    lost: u64,
    failure: Option<String>,
}

impl SpoolWriter {
    /// Numbers and writes `entries` (after any that waited); returns the last written number.
    pub fn append(&mut self, entries: Vec<Entry>) -> Seq {
        for e in entries {
            self.pending_bytes += e.text.len() + RECORD_HEADER;
            self.pending.push(e);
        }
        while self.pending_bytes > PENDING_LIMIT && !self.pending.is_empty() {
            let e = self.pending.remove(0);
            self.pending_bytes -= e.text.len() + RECORD_HEADER;
            self.lost += 1;
        }
        if self.pending.is_empty() && self.lost == 0 {
            return self.last_seq();
        }
        match self.write_pending() {
            Ok(()) => {
                if let Some(reason) = self.failure.take() {
                    tracing::info!(lease = %self.meta.lease, "spool writable again after: {reason}");
                }
            }
            Err(e) => {
                if self.failure.is_none() {
                    tracing::warn!(
                        lease = %self.meta.lease,
                        "cannot write the spool ({} records wait in memory): {e}",
                        self.pending.len()
                    );
                }
                self.failure = Some(e.to_string());
            }
        }
        self.last_seq()
    }

    /// Number of the last record written (0: none).
    pub fn last_seq(&self) -> Seq {
        Seq(self.next.0 - 1)
    }

    /// Records the job's name once its definition parsed.
    pub fn set_job_name(&mut self, name: &str) -> io::Result<()> {
        self.meta.job_name = Some(name.to_owned());
        write_meta(&self.dir, &self.meta)
    }

    /// Marks the lease finished with its report; returns the last record's number.
    pub fn finish(&mut self, report: JobReport) -> io::Result<Seq> {
        self.append(Vec::new());
        let last_seq = self.last_seq();
        self.meta.phase = Phase::Finished { report, last_seq };
        write_meta(&self.dir, &self.meta)?;
        Ok(last_seq)
    }

    fn write_pending(&mut self) -> io::Result<()> {
        if self.segment_len >= self.segment_bytes {
            self.file = create_segment(&self.dir, self.next)?;
            self.segment_len = 0;
        }
        let mut buf = Vec::with_capacity(self.pending_bytes + RECORD_HEADER + 128);
        let mut seq = self.next.0;
        if self.lost > 0 {
            let text = format!(
                "{} log records were lost: the spool could not be written ({})",
                self.lost,
                self.failure.as_deref().unwrap_or("no space")
            );
            encode_record(&mut buf, seq, LogKind::Gap, now_millis(), &text);
            seq += 1;
        }
        for e in &self.pending {
            encode_record(&mut buf, seq, e.kind, e.at, &e.text);
            seq += 1;
        }
        if let Err(e) = self.file.write_all(&buf) {
            // Cut off whatever part was written, so the segment ends with a whole record.
            let _ = self.file.set_len(self.segment_len);
            return Err(e);
        }
        self.segment_len += buf.len() as u64;
        self.next = Seq(seq);
        self.pending.clear();
        self.pending_bytes = 0;
        self.lost = 0;
        Ok(())
    }
}

/// Reads a lease's records in order, from the segment files.
#[derive(Debug)]
pub struct SpoolReader {
    dir: PathBuf,
    next: Seq,
    /// Segment (by first seq) and byte offset of `next`, once located.
    at: Option<(u64, u64)>,
}

impl SpoolReader {
    /// Number of the next record [`SpoolReader::read`] returns.
    pub fn next_seq(&self) -> Seq {
        self.next
    }

    /// Continues at record `from` (found on the next read).
    pub fn seek(&mut self, from: Seq) {
        self.next = Seq(from.0.max(1));
        self.at = None;
    }

    /// Records from the next one up to `upto`, at most about `budget` bytes (at least one).
    pub fn read(&mut self, upto: Seq, budget: usize) -> io::Result<Vec<LogRecord>> {
        let mut out = Vec::new();
        if self.next > upto {
            return Ok(out);
        }
        let (mut first, mut offset) = match self.at {
            Some(at) => at,
            None => self.locate()?,
        };
        let mut used = 0usize;
        let mut file = BufReader::new(open_at(&self.dir, first, offset)?);
        while self.next <= upto && (out.is_empty() || used < budget) {
            match read_record(&mut file)? {
                Some(record) => {
                    if record.seq != self.next {
                        return Err(corrupt(&self.dir, first, offset, "out-of-order record"));
                    }
                    let size = RECORD_HEADER + record.text.len();
                    offset += size as u64;
                    used += size;
                    self.next = Seq(self.next.0 + 1);
                    out.push(record);
                }
                None => {
                    // End of this segment: the next one starts with the record we want.
                    let path = segment_path(&self.dir, self.next.0);
                    if !path.exists() {
                        break;
                    }
                    first = self.next.0;
                    offset = 0;
                    file = BufReader::new(File::open(path)?);
                }
            }
        }
        self.at = Some((first, offset));
        Ok(out)
    }

    /// Finds the segment and offset of `next`. Records before the first segment are gone
    /// (stored by the controller and dropped); reading continues at the first one there is.
    fn locate(&mut self) -> io::Result<(u64, u64)> {
        let firsts = segments(&self.dir)?;
        let Some(&earliest) = firsts.first() else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: no log segment", self.dir.display()),
            ));
        };
        let first = firsts
            .iter()
            .rev()
            .find(|f| **f <= self.next.0)
            .copied()
            .unwrap_or(earliest);
        if first > self.next.0 {
            self.next = Seq(first);
        }
        let mut file = BufReader::new(File::open(segment_path(&self.dir, first))?);
        let mut offset = 0u64;
        let mut seq = first;
        while seq < self.next.0 {
            match read_header(&mut file)? {
                Some((_, _, _, len)) => {
                    file.seek_relative(i64::from(len))?;
                    offset += (RECORD_HEADER + len as usize) as u64;
                    seq += 1;
                }
                None => break,
            }
        }
        self.next = Seq(seq);
        Ok((first, offset))
    }
}

fn corrupt(dir: &Path, first: u64, offset: u64, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{}: {what} at byte {offset}",
            segment_path(dir, first).display()
        ),
    )
}

fn open_at(dir: &Path, first: u64, offset: u64) -> io::Result<File> {
    let mut f = File::open(segment_path(dir, first))?;
    f.seek(SeekFrom::Start(offset))?;
    Ok(f)
}

fn encode_record(buf: &mut Vec<u8>, seq: u64, kind: LogKind, at: Millis, text: &str) {
    // Texts are bounded by the recorder; cut defensively so a reader never refuses one.
    let mut end = text.len().min(MAX_RECORD_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let text = &text[..end];
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.push(kind.code());
    buf.extend_from_slice(&at.0.to_be_bytes());
    buf.extend_from_slice(&(text.len() as u32).to_be_bytes());
    buf.extend_from_slice(text.as_bytes());
}

/// A record header, `None` at a clean end (or a torn header).
fn read_header(r: &mut impl Read) -> io::Result<Option<(u64, u8, u64, u32)>> {
    let mut h = [0u8; RECORD_HEADER];
    if !read_full(r, &mut h)? {
        return Ok(None);
    }
    let seq = u64::from_be_bytes(h[0..8].try_into().expect("8 bytes"));
    let at = u64::from_be_bytes(h[9..17].try_into().expect("8 bytes"));
    let len = u32::from_be_bytes(h[17..21].try_into().expect("4 bytes"));
    Ok(Some((seq, h[8], at, len)))
}

/// A whole record, `None` at the end of the segment (a torn record counts as the end).
fn read_record(r: &mut impl Read) -> io::Result<Option<LogRecord>> {
    let Some((seq, code, at, len)) = read_header(r)? else {
        return Ok(None);
    };
    let kind = LogKind::from_code(code).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("record kind {code} unknown"),
        )
    })?;
    if len as usize > MAX_RECORD_TEXT {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("record text of {len} bytes"),
        ));
    }
    let mut text = vec![0u8; len as usize];
    if !read_full(r, &mut text)? {
        return Ok(None);
    }
    Ok(Some(LogRecord {
        seq: Seq(seq),
        at: Millis(at),
        kind,
        text: String::from_utf8_lossy(&text).into_owned(),
    }))
}

/// Fills `buf`; `false` when the input ends first.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Scans the last segment; cuts a torn tail; returns the last complete record's number.
fn recover_last_seq(dir: &Path) -> io::Result<Seq> {
    let Some(&first) = segments(dir)?.last() else {
        return Ok(Seq(0));
    };
    let path = segment_path(dir, first);
    let mut file = BufReader::new(File::open(&path)?);
    let mut good = 0u64;
    let mut last = first - 1;
    loop {
        match read_record(&mut file) {
            Ok(Some(r)) if r.seq.0 == last + 1 => {
                good += (RECORD_HEADER + r.text.len()) as u64;
                last = r.seq.0;
            }
            Ok(_) | Err(_) => break,
        }
    }
    let len = std::fs::metadata(&path)?.len();
    if len > good {
        tracing::warn!(
            segment = %path.display(),
            "cutting {} bytes of a torn record at the end of the spool",
            len - good
        );
        OpenOptions::new().write(true).open(&path)?.set_len(good)?;
    }
    Ok(Seq(last))
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.log"))
}

fn create_segment(dir: &Path, first: Seq) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment_path(dir, first.0))
}

/// First sequence numbers of a lease's segments, ascending.
fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut firsts: Vec<u64> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?;
                name.strip_suffix(".log")?.parse::<u64>().ok()
            })
            .filter(|f| *f > 0)
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    firsts.sort_unstable();
    Ok(firsts)
}

fn write_meta(dir: &Path, meta: &Meta) -> io::Result<()> {
    let json = serde_json::to_vec_pretty(meta).map_err(io::Error::other)?;
    let tmp = dir.join("meta.json.tmp");
    std::fs::write(&tmp, json)?;
    std::fs::rename(tmp, dir.join(META))
}

fn read_meta(dir: &Path) -> io::Result<Meta> {
    let text = std::fs::read(dir.join(META))?;
    serde_json::from_slice(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Wall-clock milliseconds since the UNIX epoch.
pub fn now_millis() -> Millis {
    Millis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proto::Outcome;

    fn meta(lease: u64) -> Meta {
        Meta {
            lease: LeaseId(u128::from(lease)),
            epoch: Epoch(2),
            job: JobId(9),
            device: "qemu-01".into(),
            job_name: None,
            phase: Phase::Running,
        }
    }

    fn entries(from: usize, n: usize, size: usize) -> Vec<Entry> {
        (from..from + n)
            .map(|i| Entry {
                kind: LogKind::Console,
                at: Millis(i as u64),
                text: format!("{i:0size$}"),
            })
            .collect()
    }

    fn read_all(reader: &mut SpoolReader, upto: Seq) -> Vec<LogRecord> {
        let mut all = Vec::new();
        loop {
            let batch = reader.read(upto, 300).unwrap();
            if batch.is_empty() {
                return all;
            }
            all.extend(batch);
        }
    }

    fn report() -> JobReport {
        JobReport {
            job_name: "j".into(),
            outcome: Outcome::Passed,
            reason: String::new(),
            cases: Vec::new(),
            duration_s: 1.0,
        }
    }

    #[test]
    fn records_round_trip_across_segments_and_from_any_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap().with_segment_bytes(200);
        let mut w = spool.create(meta(1)).unwrap();
        assert_eq!(w.append(entries(1, 10, 20)), Seq(10));
        for i in 11..=25 {
            assert_eq!(w.append(entries(i, 1, 20)), Seq(i as u64));
        }
        assert!(segments(&spool.lease_dir(LeaseId(1))).unwrap().len() > 3);
        let mut r = spool.reader(LeaseId(1));
        let all = read_all(&mut r, Seq(25));
        let seqs: Vec<u64> = all.iter().map(|r| r.seq.0).collect();
        assert_eq!(seqs, (1..=25).collect::<Vec<_>>());
        assert_eq!(all[4].text, format!("{:020}", 5));
        for from in [1u64, 2, 7, 8, 13, 25, 26] {
            r.seek(Seq(from));
            let got: Vec<u64> = read_all(&mut r, Seq(25)).iter().map(|r| r.seq.0).collect();
            assert_eq!(got, (from..=25).collect::<Vec<_>>(), "from {from}");
        }
        // Reading stops at `upto` and continues when more is spooled.
        r.seek(Seq(1));
        assert_eq!(read_all(&mut r, Seq(3)).len(), 3);
        w.append(entries(26, 2, 5));
        let rest: Vec<u64> = read_all(&mut r, Seq(27)).iter().map(|r| r.seq.0).collect();
        assert_eq!(rest, (4..=27).collect::<Vec<_>>());
    }

    #[test]
    fn acknowledged_segments_are_dropped_but_never_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap().with_segment_bytes(100);
        let mut w = spool.create(meta(3)).unwrap();
        for i in 1..=20 {
            w.append(entries(i, 1, 20));
        }
        let before = segments(&spool.lease_dir(LeaseId(3))).unwrap();
        spool.drop_through(LeaseId(3), Seq(7)).unwrap();
        let after = segments(&spool.lease_dir(LeaseId(3))).unwrap();
        assert!(after.len() < before.len());
        assert!(after[0] <= 8, "{after:?}");
        let mut r = spool.reader(LeaseId(3));
        r.seek(Seq(8));
        let got: Vec<u64> = read_all(&mut r, Seq(20)).iter().map(|r| r.seq.0).collect();
        assert_eq!(got, (8..=20).collect::<Vec<_>>());
        spool.drop_through(LeaseId(3), Seq(20)).unwrap();
        assert_eq!(segments(&spool.lease_dir(LeaseId(3))).unwrap().len(), 1);
        // A reader behind what was dropped continues at the first record still there.
        let mut r = spool.reader(LeaseId(3));
        let got = read_all(&mut r, Seq(20));
        assert!(!got.is_empty());
        assert_eq!(got.last().unwrap().seq, Seq(20));
    }

    #[test]
    fn recovery_finds_leases_and_cuts_torn_records() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut w = spool.create(meta(5)).unwrap();
        w.append(entries(1, 4, 10));
        drop(w);
        let mut w = spool.create(meta(6)).unwrap();
        w.append(entries(1, 2, 10));
        w.finish(report()).unwrap();
        // A torn record at the end of lease 5 (killed in the middle of a write).
        let seg = segment_path(&spool.lease_dir(LeaseId(5)), 1);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&5u64.to_be_bytes()).unwrap();
        f.write_all(&[0, 0, 0]).unwrap();
        drop(f);
        std::fs::create_dir(dir.path().join("not-a-lease")).unwrap();
        let found = spool.recover().unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].meta.lease, LeaseId(5));
        assert_eq!(found[0].meta.phase, Phase::Running);
        assert_eq!(found[0].last_seq, Seq(4));
        assert!(matches!(
            &found[1].meta.phase,
            Phase::Finished {
                last_seq: Seq(2),
                ..
            }
        ));
        // Appending after recovery continues the numbering.
        let mut w = spool.reopen(&found[0]).unwrap();
        assert_eq!(w.append(entries(5, 1, 3)), Seq(5));
        let got: Vec<u64> = read_all(&mut spool.reader(LeaseId(5)), Seq(5))
            .iter()
            .map(|r| r.seq.0)
            .collect();
        assert_eq!(got, vec![1, 2, 3, 4, 5]);
        spool.remove(LeaseId(5)).unwrap();
        spool.remove(LeaseId(5)).unwrap();
        assert_eq!(spool.recover().unwrap().len(), 1);
    }

    #[test]
    fn unwritable_spool_keeps_records_then_marks_the_gap() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut w = spool.create(meta(8)).unwrap();
        w.append(entries(1, 2, 4));
        // A read-only file descriptor stands in for a full disk: every write fails.
        let seg = segment_path(&spool.lease_dir(LeaseId(8)), 1);
        let good = std::mem::replace(&mut w.file, File::open(&seg).unwrap());
        assert_eq!(w.append(entries(3, 2, 4)), Seq(2));
        assert_eq!(w.pending.len(), 2);
        let big = PENDING_LIMIT / 1000;
        assert_eq!(w.append(entries(5, 1500, big)), Seq(2));
        assert!(w.lost > 0);
        let lost = w.lost;
        w.file = good;
        let last = w.append(entries(9000, 1, 4));
        let records = read_all(&mut spool.reader(LeaseId(8)), last);
        assert_eq!(records[2].kind, LogKind::Gap);
        assert!(records[2].text.starts_with(&format!("{lost} log records")));
        let seqs: Vec<u64> = records.iter().map(|r| r.seq.0).collect();
        assert_eq!(seqs, (1..=last.0).collect::<Vec<_>>());
        assert_eq!(records.last().unwrap().text, "9000");
    }
}
