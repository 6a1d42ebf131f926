//! The agent link: one WebSocket that the agent dials to the controller.
//!
//! Control messages are JSON text frames: [`AgentMessage`] from the agent, [`ControllerMessage`]
//! from the controller (commands imperative, facts past tense). Log records travel in binary
//! frames ([`LogFrame`]) with the lease they belong to and the sequence number of their first
//! record.
//!
//! Invariants:
//! - Every message about a job or a session carries its lease id and epoch; the controller
//!   refuses a message whose epoch is not the lease's, the agent ignores one.
//! - A session is the agent's side of a person's lease (`StartSession` .. `DropLease`, see
//!   [`crate::session`]); a job lease and a session never share a lease id.
//! - `Hello` is the first message and names [`PROTOCOL_VERSION`]; any other version is refused.
//! - Decoding never trusts lengths: a frame is refused when it is longer than [`MAX_FRAME`],
//!   when a record claims more bytes than remain, or when a text is longer than
//!   [`MAX_RECORD_TEXT`].

use crate::JobReport;
use crate::ids::{Epoch, JobId, LeaseId, Millis, Seq};
use crate::log::{LogKind, LogRecord, MAX_RECORD_TEXT};
use crate::session::{RequestId, SessionAction, SessionResult};
use crate::stream::{StreamFrameError, StreamId, StreamTarget};
use serde::{Deserialize, Serialize};

/// Version of this protocol. Raised on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 4;

/// Largest WebSocket frame either side sends or accepts.
pub const MAX_FRAME: usize = 1 << 20;

/// Path of the agent link on the controller (a WebSocket upgrade, agent tokens only).
pub const LINK_PATH: &str = "/api/v1/agent/link";

/// One device an agent offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Unique in the whole lab.
    pub name: String,
    pub device_type: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// What its drivers can do (`power`, `console`, `shell`, ...).
    #[serde(default)]
    pub capabilities: Vec<String>,
}

/// A lease the agent still works on (or has a final report for) when it says hello.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldLease {
    pub lease: LeaseId,
    pub epoch: Epoch,
    pub job: JobId,
    pub device: String,
    /// Set when the job ended but the controller had not acknowledged the report yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<JobReport>,
}

/// A person's lease the agent keeps a device for (a session) when it says hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldSession {
    pub lease: LeaseId,
    pub epoch: Epoch,
    pub device: String,
}

/// Where the controller's copy of a lease's log ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogCursor {
    pub lease: LeaseId,
    /// Highest sequence number stored (0: none yet). The agent resends from `stored + 1`.
    pub stored: Seq,
}

/// Agent to controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum AgentMessage {
    /// First message on every connection.
    Hello {
        protocol: u32,
        /// The agent's name (unique in the lab).
        agent: String,
        /// dutlab version of the agent.
        version: String,
        devices: Vec<DeviceInfo>,
        /// Leases the agent still holds from before (after a reconnect).
        #[serde(default)]
        held: Vec<HeldLease>,
        /// Sessions the agent still keeps (after a reconnect; none after a restart).
        #[serde(default)]
        sessions: Vec<HeldSession>,
    },
    /// The agent is alive; renews the leases it holds.
    Heartbeat,
    /// The runner started the job.
    JobStarted { lease: LeaseId, epoch: Epoch },
    /// The job ended; the agent resends this until it gets `FinishAcked`.
    JobFinished {
        lease: LeaseId,
        epoch: Epoch,
        report: JobReport,
        /// Sequence number of the job's last log record (0: none).
        last_seq: Seq,
    },
    /// The agent could not start the job (device busy or unknown); the job goes back to the queue.
    StartRefused {
        lease: LeaseId,
        epoch: Epoch,
        reason: String,
    },
    /// The device is torn down (DUT off, work directory gone) and may take work again.
    DeviceReady { device: String },
    /// The stream is open; the controller may send `window` bytes before credit comes.
    StreamOpened { stream: StreamId, window: u32 },
    /// The stream could not be opened (no session for the lease, nothing at that port ...).
    StreamRefused { stream: StreamId, reason: String },
    /// The agent consumed this many more bytes of the stream: the controller may send them.
    StreamCredit { stream: StreamId, bytes: u32 },
    /// The agent ended the stream (the DUT closed the connection, the console ended ...).
    StreamClosed { stream: StreamId, reason: String },
    /// The agent keeps `device` for the session (also the answer to a repeated
    /// `StartSession`).
    SessionStarted { lease: LeaseId, epoch: Epoch },
    /// The agent cannot keep the device for the session (unknown device, busy, shutting down).
    SessionRefused {
        lease: LeaseId,
        epoch: Epoch,
        reason: String,
    },
    /// Progress of a long request (a flash): `done` of `total` bytes.
    SessionProgress {
        lease: LeaseId,
        epoch: Epoch,
        request: RequestId,
        done: u64,
        total: u64,
    },
    /// The answer to `SessionRequest`.
    SessionReply {
        lease: LeaseId,
        epoch: Epoch,
        request: RequestId,
        result: SessionResult,
    },
    /// A MultiNode call of the sub-job running under `lease`, its `seq`-th (from 1, increasing
    /// for the whole job). Resent after every hello until `MultinodeReply` answers it or a
    /// newer call of the lease replaces it; the controller answers a repeat once more.
    MultinodeCall {
        lease: LeaseId,
        epoch: Epoch,
        seq: u64,
        call: multinode::Call,
    },
}

/// Controller to agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ControllerMessage {
    /// Answer to `Hello`.
    Welcome {
        protocol: u32,
        /// How often the agent sends `Heartbeat`.
        heartbeat_ms: u64,
        /// For each held lease the controller still considers live: where its log ends.
        resume: Vec<LogCursor>,
    },
    /// The connection is refused (bad version, unknown device owner ...); it will be closed.
    Refused { reason: String },
    /// Run this job on this device under this lease.
    StartJob {
        lease: LeaseId,
        epoch: Epoch,
        job: JobId,
        device: String,
        /// The job file as submitted (LAVA YAML).
        definition: String,
        /// For a sub-job of a MultiNode group: which role instance of `definition` it runs
        /// (the agent runs only that instance's actions).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sub_job: Option<SubJob>,
    },
    /// Cancel the job: power the DUT off and report the outcome `canceled`.
    CancelJob { lease: LeaseId, epoch: Epoch },
    /// The lease is no longer live (the job or the person's lease was ended by the
    /// controller): stop, power the DUT off, tear down, send `DeviceReady`, and report
    /// nothing more about it.
    DropLease { lease: LeaseId, epoch: Epoch },
    /// A person holds `device` under this lease: keep it for them (unpowered) until
    /// `DropLease`; answer `SessionStarted` or `SessionRefused`. Repeated after every hello
    /// while the lease lives. `ssh_keys` (checked lines, see [`crate::session`]) are
    /// authorized on the DUT at each power-on.
    StartSession {
        lease: LeaseId,
        epoch: Epoch,
        device: String,
        #[serde(default)]
        ssh_keys: Vec<String>,
    },
    /// Do `action` on the session's device; answer `SessionReply` with the same `request`.
    SessionRequest {
        lease: LeaseId,
        epoch: Epoch,
        request: RequestId,
        action: SessionAction,
    },
    /// Log records up to `stored` are stored; the agent may drop them from its spool.
    LogAcked {
        lease: LeaseId,
        epoch: Epoch,
        stored: Seq,
    },
    /// The report is committed; the agent forgets the lease.
    FinishAcked { lease: LeaseId, epoch: Epoch },
    /// Open a stream to `target` of the device held under `lease`; the agent may send
    /// `window` bytes before credit comes. Answered by `StreamOpened` or `StreamRefused`.
    OpenStream {
        stream: StreamId,
        lease: LeaseId,
        epoch: Epoch,
        target: StreamTarget,
        window: u32,
    },
    /// The controller delivered this many more bytes of the stream: the agent may send them.
    StreamCredit { stream: StreamId, bytes: u32 },
    /// End the stream (its client left, the lease ended, the link is being replaced).
    CloseStream { stream: StreamId, reason: String },
    /// The group's answer to call `seq` of the sub-job running under `lease`.
    MultinodeReply {
        lease: LeaseId,
        epoch: Epoch,
        seq: u64,
        reply: multinode::Reply,
    },
}

/// A binary message of the link: a log frame (`'L'`), a stream frame (`'S'`) or a group
/// network frame (`'N'`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binary<'a> {
    Log(LogFrame),
    /// A stream's payload (empty: end of stream in this direction).
    Stream(StreamId, &'a [u8]),
    /// An Ethernet frame of a MultiNode group's network ([`GroupFrame`]).
    Group(GroupFrame<'a>),
}

/// The most bytes of one Ethernet frame of a group network (QEMU's socket networking sends
/// at most 64 KiB per datagram).
pub const MAX_GROUP_FRAME: usize = 65_536;

/// One Ethernet frame of a MultiNode group's network, between the agents of the group's
/// sub-jobs (docs/multinode.md, "The group's network"). From an agent, `lease` is the sub-job
/// whose network segment carried it; to an agent, a sub-job of the same group on its link
/// (whose segment gets it).
///
/// Layout (big-endian): `b'N'`, lease u128, epoch u64, then the frame (1 ..=
/// [`MAX_GROUP_FRAME`] bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupFrame<'a> {
    pub lease: LeaseId,
    pub epoch: Epoch,
    pub frame: &'a [u8],
}

/// Why a group network frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupFrameError {
    #[error("group frame ends inside its header")]
    Truncated,
    #[error("group frame carries no Ethernet frame")]
    Empty,
    #[error("group frame carries {0} bytes, more than the {MAX_GROUP_FRAME}-byte limit")]
    TooLong(usize),
}

const GROUP_HEADER: usize = 1 + 16 + 8;

impl GroupFrame<'_> {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(GROUP_HEADER + self.frame.len());
        out.push(b'N');
        out.extend_from_slice(&self.lease.0.to_be_bytes());
        out.extend_from_slice(&self.epoch.0.to_be_bytes());
        out.extend_from_slice(self.frame);
        out
    }

    /// Decodes an untrusted `'N'` message (its tag already seen).
    fn decode(bytes: &[u8]) -> Result<GroupFrame<'_>, GroupFrameError> {
        let (Some(lease), Some(epoch)) = (bytes.get(1..17), bytes.get(17..GROUP_HEADER)) else {
            return Err(GroupFrameError::Truncated);
        };
        let frame = &bytes[GROUP_HEADER..];
        if frame.is_empty() {
            return Err(GroupFrameError::Empty);
        }
        if frame.len() > MAX_GROUP_FRAME {
            return Err(GroupFrameError::TooLong(frame.len()));
        }
        let mut l = [0u8; 16];
        l.copy_from_slice(lease);
        let mut e = [0u8; 8];
        e.copy_from_slice(epoch);
        Ok(GroupFrame {
            lease: LeaseId(u128::from_be_bytes(l)),
            epoch: Epoch(u64::from_be_bytes(e)),
            frame,
        })
    }
}

/// Why a binary message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BinaryError {
    #[error("{0}")]
    Log(#[from] FrameError),
    #[error("{0}")]
    Stream(#[from] StreamFrameError),
    #[error("{0}")]
    Group(#[from] GroupFrameError),
    #[error("binary message is empty")]
    Empty,
    #[error("binary message starts with {0:#04x}, not 'L' (log), 'S' (stream) or 'N' (group)")]
    BadTag(u8),
}

impl Binary<'_> {
    /// Decodes an untrusted binary message by its tag.
    pub fn decode(bytes: &[u8]) -> Result<Binary<'_>, BinaryError> {
        match bytes.first() {
            None => Err(BinaryError::Empty),
            Some(b'L') => Ok(Binary::Log(LogFrame::decode(bytes)?)),
            Some(b'S') => {
                let (stream, data) = crate::stream::decode(bytes)?;
                Ok(Binary::Stream(stream, data))
            }
            Some(b'N') => Ok(Binary::Group(GroupFrame::decode(bytes)?)),
            Some(&tag) => Err(BinaryError::BadTag(tag)),
        }
    }
}

/// A batch of consecutive log records of one lease, sent as a binary WebSocket frame.
///
/// Layout (big-endian): `b'L'`, lease u128, epoch u64, first seq u64, count u32, then per
/// record: kind u8, at u64 (ms), len u32, `len` bytes of UTF-8 text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFrame {
    pub lease: LeaseId,
    pub epoch: Epoch,
    /// Records in order; their `seq` values are consecutive.
    pub records: Vec<LogRecord>,
}

/// Why a binary frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("log frame is {0} bytes, more than the {MAX_FRAME}-byte limit")]
    TooLong(usize),
    #[error("log frame ends inside {0}")]
    Truncated(&'static str),
    #[error("log frame starts with {0:#04x}, not 'L'")]
    BadTag(u8),
    #[error("log record kind {0} is unknown")]
    BadKind(u8),
    #[error("log record text is {0} bytes, more than the {MAX_RECORD_TEXT}-byte limit")]
    TextTooLong(usize),
    #[error("log record text is not UTF-8")]
    NotUtf8,
    #[error("log frame has {0} bytes after its last record")]
    Trailing(usize),
    #[error("log frame sequence numbers are not consecutive or overflow")]
    BadSeq,
    #[error("log frame holds no record")]
    Empty,
}

const HEADER: usize = 1 + 16 + 8 + 8 + 4;
const RECORD_HEADER: usize = 1 + 8 + 4;

impl LogFrame {
    /// Encodes the frame. Records must be consecutive (checked by [`LogFrame::decode`]).
    pub fn encode(&self) -> Vec<u8> {
        let body: usize = self
            .records
            .iter()
            .map(|r| RECORD_HEADER + r.text.len())
            .sum();
        let mut out = Vec::with_capacity(HEADER + body);
        out.push(b'L');
        out.extend_from_slice(&self.lease.0.to_be_bytes());
        out.extend_from_slice(&self.epoch.0.to_be_bytes());
        let first = self.records.first().map_or(0, |r| r.seq.0);
        out.extend_from_slice(&first.to_be_bytes());
        let count = u32::try_from(self.records.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        for r in &self.records {
            out.push(r.kind.code());
            out.extend_from_slice(&r.at.0.to_be_bytes());
            let len = u32::try_from(r.text.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(r.text.as_bytes());
        }
        out
    }

    /// Size [`LogFrame::encode`] will produce for one more record of `text_len` bytes.
    pub fn record_size(text_len: usize) -> usize {
        RECORD_HEADER + text_len
    }

    /// Size of an encoded frame with no records.
    pub const HEADER_SIZE: usize = HEADER;

    /// Decodes untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<LogFrame, FrameError> {
        if bytes.len() > MAX_FRAME {
            return Err(FrameError::TooLong(bytes.len()));
        }
        let mut r = Reader { bytes, at: 0 };
        let tag = r.u8("the tag")?;
        if tag != b'L' {
            return Err(FrameError::BadTag(tag));
        }
        let lease = LeaseId(r.u128("the lease")?);
        let epoch = Epoch(r.u64("the epoch")?);
        let first = r.u64("the first sequence number")?;
        let count = r.u32("the record count")?;
        if count == 0 {
            return Err(FrameError::Empty);
        }
        if first == 0 || first.checked_add(u64::from(count) - 1).is_none() {
            return Err(FrameError::BadSeq);
        }
        // Each record needs at least RECORD_HEADER bytes: bound the allocation by what is there.
        let possible = (bytes.len() - r.at) / RECORD_HEADER;
        if usize::try_from(count).unwrap_or(usize::MAX) > possible {
            return Err(FrameError::Truncated("the records"));
        }
        let mut records = Vec::with_capacity(possible.min(count as usize));
        for i in 0..u64::from(count) {
            let code = r.u8("a record kind")?;
            let kind = LogKind::from_code(code).ok_or(FrameError::BadKind(code))?;
            let at = Millis(r.u64("a record time")?);
            let len = r.u32("a record length")? as usize;
            if len > MAX_RECORD_TEXT {
                return Err(FrameError::TextTooLong(len));
            }
            let text = r.take(len, "a record text")?;
            let text = std::str::from_utf8(text).map_err(|_| FrameError::NotUtf8)?;
            records.push(LogRecord {
                seq: Seq(first + i),
                at,
                kind,
                text: text.to_owned(),
            });
        }
        if r.at != bytes.len() {
            return Err(FrameError::Trailing(bytes.len() - r.at));
        }
        Ok(LogFrame {
            lease,
            epoch,
            records,
        })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FrameError> {
        let end = self.at.checked_add(n).ok_or(FrameError::Truncated(what))?;
        let s = self
            .bytes
            .get(self.at..end)
            .ok_or(FrameError::Truncated(what))?;
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, FrameError> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, FrameError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u128(&mut self, what: &'static str) -> Result<u128, FrameError> {
        let b = self.take(16, what)?;
        let mut a = [0u8; 16];
        a.copy_from_slice(b);
        Ok(u128::from_be_bytes(a))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, FrameError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, kind: LogKind, text: &str) -> LogRecord {
        LogRecord {
            seq: Seq(seq),
            at: Millis(1_700_000_000_000 + seq),
            kind,
            text: text.to_owned(),
        }
    }

    #[test]
    fn log_frames_round_trip() {
        let frame = LogFrame {
            lease: LeaseId(7),
            epoch: Epoch(3),
            records: vec![
                rec(5, LogKind::Console, "line \u{1b}[31mred\u{1b}[0m"),
                rec(6, LogKind::Case, "0_smoke/boot: pass"),
                rec(7, LogKind::Console, ""),
            ],
        };
        let bytes = frame.encode();
        assert_eq!(LogFrame::decode(&bytes), Ok(frame));
    }

    #[test]
    fn hostile_frames_are_refused() {
        let good = LogFrame {
            lease: LeaseId(1),
            epoch: Epoch(1),
            records: vec![rec(1, LogKind::Console, "hello")],
        }
        .encode();
        assert_eq!(
            LogFrame::decode(&good[..good.len() - 1]),
            Err(FrameError::Truncated("a record text"))
        );
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(LogFrame::decode(&trailing), Err(FrameError::Trailing(1)));
        let mut huge_count = good.clone();
        huge_count[33..37].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            LogFrame::decode(&huge_count),
            Err(FrameError::Truncated("the records"))
        );
        let mut bad_kind = good.clone();
        bad_kind[37] = 99;
        assert_eq!(LogFrame::decode(&bad_kind), Err(FrameError::BadKind(99)));
        let mut seq_zero = good.clone();
        seq_zero[25..33].copy_from_slice(&0u64.to_be_bytes());
        assert_eq!(LogFrame::decode(&seq_zero), Err(FrameError::BadSeq));
        let mut overflow = good;
        overflow[25..33].copy_from_slice(&u64::MAX.to_be_bytes());
        overflow[33..37].copy_from_slice(&2u32.to_be_bytes());
        assert_eq!(LogFrame::decode(&overflow), Err(FrameError::BadSeq));
        assert_eq!(LogFrame::decode(b"X"), Err(FrameError::BadTag(b'X')));
        assert_eq!(
            LogFrame::decode(&vec![b'L'; MAX_FRAME + 1]),
            Err(FrameError::TooLong(MAX_FRAME + 1))
        );
    }

    #[test]
    fn lease_ids_are_hex_on_the_wire_and_old_numbers_still_read() {
        let id = LeaseId(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        let json = serde_json::to_string(&id).expect("serialises");
        assert_eq!(json, r#""123456789abcdef0011223344556677""#);
        assert_eq!(serde_json::from_str::<LeaseId>(&json).ok(), Some(id));
        assert_eq!(serde_json::from_str::<LeaseId>("7").ok(), Some(LeaseId(7)));
        for bad in [
            r#""""#,
            r#""xyz""#,
            r#""00000000000000000000000000000000f""#,
            "-1",
            "1.5",
        ] {
            assert!(
                serde_json::from_str::<LeaseId>(bad).is_err(),
                "{bad} accepted"
            );
        }
        let m: AgentMessage =
            serde_json::from_str(r#"{"type":"job-started","lease":9,"epoch":1}"#).expect("parses");
        assert_eq!(
            m,
            AgentMessage::JobStarted {
                lease: LeaseId(9),
                epoch: Epoch(1)
            }
        );
    }

    #[test]
    fn control_messages_are_tagged_json() {
        let m = AgentMessage::JobStarted {
            lease: LeaseId(4),
            epoch: Epoch(2),
        };
        let json = serde_json::to_string(&m).expect("serialises");
        assert_eq!(json, r#"{"type":"job-started","lease":"4","epoch":2}"#);
        let back: AgentMessage = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, m);
        let c: ControllerMessage =
            serde_json::from_str(r#"{"type":"cancel-job","lease":4,"epoch":2}"#).expect("parses");
        assert_eq!(
            c,
            ControllerMessage::CancelJob {
                lease: LeaseId(4),
                epoch: Epoch(2)
            }
        );
    }

    #[test]
    fn group_frames_round_trip_and_bad_ones_are_refused() {
        let frame = GroupFrame {
            lease: LeaseId(7 << 100),
            epoch: Epoch(3),
            frame: b"\xff\xff\xff\xff\xff\xffethernet",
        };
        let bytes = frame.encode();
        assert_eq!(Binary::decode(&bytes), Ok(Binary::Group(frame)));
        assert_eq!(
            Binary::decode(&bytes[..20]),
            Err(BinaryError::Group(GroupFrameError::Truncated))
        );
        assert_eq!(
            Binary::decode(&bytes[..GROUP_HEADER]),
            Err(BinaryError::Group(GroupFrameError::Empty))
        );
        let mut long = bytes[..GROUP_HEADER].to_vec();
        long.resize(GROUP_HEADER + MAX_GROUP_FRAME + 1, 0);
        assert_eq!(
            Binary::decode(&long),
            Err(BinaryError::Group(GroupFrameError::TooLong(
                MAX_GROUP_FRAME + 1
            )))
        );
    }
}

/// A sub-job's place in its MultiNode group, as `StartJob` names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubJob {
    /// The group: the id of its sub-job 0.
    pub group: JobId,
    /// The role instance's index in the group (`jobspec::multinode::instances` order).
    pub index: u32,
    pub role: String,
    /// A secondary connection: the index of its host sub-job, whose device is this
    /// `StartJob`'s (the connection has a lease of its own on it) and whose DUT it logs in
    /// to over SSH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<u32>,
    /// How many secondary connections of the group ride on this sub-job's device.
    #[serde(default, skip_serializing_if = "crate::link::is_zero")]
    pub guests: u32,
    /// Where the group's network has members.
    #[serde(default, skip_serializing_if = "GroupReach::is_agent")]
    pub reach: GroupReach,
}

/// Where a group's network has members, as the controller placed its sub-jobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupReach {
    /// On this agent only: its segment is the whole network.
    #[default]
    Agent,
    /// On other agents too: the agent bridges its segment to the controller (`'N'` frames).
    Lab,
}

impl GroupReach {
    fn is_agent(&self) -> bool {
        *self == GroupReach::Agent
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
