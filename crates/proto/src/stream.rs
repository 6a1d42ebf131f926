//! Streams on the agent link: byte streams (a console, a TCP forward) multiplexed with the
//! job logs on the one WebSocket of an agent.
//!
//! ```text
//!  controller ──open-stream {stream, lease, target, window}──> agent
//!             <──stream-opened {stream, window} | stream-refused {stream, reason}──
//!  either way: binary 'S' frames (stream id, payload), stream-credit {stream, bytes},
//!              close (close-stream / stream-closed {stream, reason})
//! ```
//!
//! Invariants:
//! - Only the controller opens streams; it picks the ids, per link, and never reuses one on
//!   that link. A frame or message naming an id that is not open on this link is dropped
//!   (late frames of a closed stream are normal), never routed elsewhere.
//! - Flow control is per stream and per direction: a side sends at most the bytes the other
//!   granted (the initial window, then `stream-credit`); the receiver grants more only after
//!   its consumer took the bytes. A peer that sends past its credit has the stream closed
//!   ([`RecvWindow::received`]). So one stream's unread bytes are bounded by its window and a
//!   stalled consumer stops only its own sender.
//! - An empty payload is end of stream in that direction (half close); close messages end
//!   both directions.
//! - Decoding untrusted bytes never panics and never allocates more than the frame holds.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Identifies a stream on one link (chosen by the controller; never reused on that link).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StreamId(pub u32);

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a stream reaches on the agent: always something of the leased device, never the
/// agent's host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum StreamTarget {
    /// The device's console: its history, then live output; input only when `input` is
    /// [`ConsoleInput::Write`].
    Console { input: ConsoleInput },
    /// A TCP connection to this port of the DUT's own address.
    Tcp { port: u16 },
}

/// Whether a console viewer may type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConsoleInput {
    ReadOnly,
    Write,
}

impl fmt::Display for StreamTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamTarget::Console {
                input: ConsoleInput::Write,
            } => f.write_str("console (read-write)"),
            StreamTarget::Console {
                input: ConsoleInput::ReadOnly,
            } => f.write_str("console (read-only)"),
            StreamTarget::Tcp { port } => write!(f, "tcp port {port} of the DUT"),
        }
    }
}

/// Bytes each side may send on a new stream before the first credit (per direction).
pub const STREAM_WINDOW: u32 = 1 << 20;
/// Largest payload of one stream frame (so log frames and other streams interleave).
pub const MAX_STREAM_CHUNK: usize = 64 << 10;
/// Largest credit a peer may hold at once; more is refused as hostile.
pub const MAX_CREDIT: u64 = 1 << 30;

/// A stream frame: `b'S'`, stream id u32 (big-endian), then the payload (empty: end of
/// stream in this direction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamFrame {
    pub stream: StreamId,
    pub data: Vec<u8>,
}

/// Why a stream frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamFrameError {
    #[error("stream frame ends inside its header ({0} bytes)")]
    Truncated(usize),
    #[error("stream frame starts with {0:#04x}, not 'S'")]
    BadTag(u8),
    #[error("stream frame carries {0} bytes, more than the {MAX_STREAM_CHUNK}-byte limit")]
    TooLong(usize),
}

/// Bytes before the payload.
pub const STREAM_HEADER: usize = 1 + 4;

impl StreamFrame {
    pub fn encode(&self) -> Vec<u8> {
        encode(self.stream, &self.data)
    }

    /// Decodes untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<StreamFrame, StreamFrameError> {
        let (stream, data) = decode(bytes)?;
        Ok(StreamFrame {
            stream,
            data: data.to_vec(),
        })
    }
}

/// Encodes a frame of `data` for `stream` without building a [`StreamFrame`].
pub fn encode(stream: StreamId, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(STREAM_HEADER + data.len());
    out.push(b'S');
    out.extend_from_slice(&stream.0.to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// Decodes untrusted bytes into the stream id and a borrowed payload.
pub fn decode(bytes: &[u8]) -> Result<(StreamId, &[u8]), StreamFrameError> {
    let Some((&tag, rest)) = bytes.split_first() else {
        return Err(StreamFrameError::Truncated(0));
    };
    if tag != b'S' {
        return Err(StreamFrameError::BadTag(tag));
    }
    let Some((id, data)) = rest.split_first_chunk::<4>() else {
        return Err(StreamFrameError::Truncated(bytes.len()));
    };
    if data.len() > MAX_STREAM_CHUNK {
        return Err(StreamFrameError::TooLong(data.len()));
    }
    Ok((StreamId(u32::from_be_bytes(*id)), data))
}

/// Why a peer broke flow control.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("the peer sent {sent} bytes with {allowed} bytes of credit")]
    Exceeded { sent: u64, allowed: u64 },
    #[error("the peer granted credit beyond {MAX_CREDIT} bytes")]
    TooMuchCredit,
}

/// The sending side of one direction: how much the peer still lets us send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendWindow {
    available: u64,
}

impl SendWindow {
    pub fn new(initial: u32) -> SendWindow {
        SendWindow {
            available: u64::from(initial),
        }
    }

    /// Bytes that may be sent now.
    pub fn available(&self) -> u64 {
        self.available
    }

    /// The peer granted `bytes` more. A peer piling up more than [`MAX_CREDIT`] is hostile.
    pub fn grant(&mut self, bytes: u32) -> Result<(), WindowError> {
        let after = self.available.saturating_add(u64::from(bytes));
        if after > MAX_CREDIT {
            return Err(WindowError::TooMuchCredit);
        }
        self.available = after;
        Ok(())
    }

    /// Takes up to `want` bytes of credit; answers how many were taken.
    pub fn take(&mut self, want: usize) -> usize {
        let n = (want as u64).min(self.available);
        self.available -= n;
        // n <= want, so it fits.
        usize::try_from(n).unwrap_or(want)
    }
}

/// The receiving side of one direction: checks the peer's sending against what it was
/// granted, and says when to grant more (after the consumer took a quarter of the window).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecvWindow {
    window: u32,
    /// Granted and not yet received.
    allowed: u64,
    /// Consumed and not yet granted back.
    consumed: u64,
}

impl RecvWindow {
    pub fn new(window: u32) -> RecvWindow {
        RecvWindow {
            window,
            allowed: u64::from(window),
            consumed: 0,
        }
    }

    /// `bytes` arrived; refused when they exceed the credit the peer had.
    pub fn received(&mut self, bytes: usize) -> Result<(), WindowError> {
        let sent = bytes as u64;
        if sent > self.allowed {
            return Err(WindowError::Exceeded {
                sent,
                allowed: self.allowed,
            });
        }
        self.allowed -= sent;
        Ok(())
    }

    /// The consumer took `bytes`; answers the credit to grant now, if any.
    pub fn consumed(&mut self, bytes: usize) -> Option<u32> {
        self.consumed += bytes as u64;
        if self.consumed < u64::from(self.window / 4).max(1) {
            return None;
        }
        let grant = u32::try_from(self.consumed).unwrap_or(u32::MAX);
        self.consumed -= u64::from(grant);
        self.allowed += u64::from(grant);
        Some(grant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_frames_round_trip_and_hostile_ones_are_refused() {
        let f = StreamFrame {
            stream: StreamId(7),
            data: b"uname -a\n".to_vec(),
        };
        assert_eq!(StreamFrame::decode(&f.encode()), Ok(f));
        let eof = encode(StreamId(u32::MAX), b"");
        assert_eq!(decode(&eof), Ok((StreamId(u32::MAX), &b""[..])));
        assert_eq!(decode(b""), Err(StreamFrameError::Truncated(0)));
        assert_eq!(decode(b"S\0\0"), Err(StreamFrameError::Truncated(3)));
        assert_eq!(decode(b"L\0\0\0\0"), Err(StreamFrameError::BadTag(b'L')));
        let big = encode(StreamId(1), &vec![0; MAX_STREAM_CHUNK + 1]);
        assert_eq!(
            decode(&big),
            Err(StreamFrameError::TooLong(MAX_STREAM_CHUNK + 1))
        );
    }

    #[test]
    fn a_receiver_grants_only_what_was_consumed_and_refuses_excess() {
        let mut send = SendWindow::new(100);
        let mut recv = RecvWindow::new(100);
        assert_eq!(send.take(70), 70);
        recv.received(70).expect("within the window");
        assert_eq!(send.take(70), 30, "only the rest of the window");
        recv.received(30).expect("within the window");
        assert_eq!(send.take(1), 0, "stalled until credit comes");
        // Nothing consumed: nothing granted, and more bytes break the window.
        assert_eq!(
            recv.received(1),
            Err(WindowError::Exceeded {
                sent: 1,
                allowed: 0
            })
        );
        assert_eq!(recv.consumed(10), None, "below a quarter of the window");
        let grant = recv.consumed(20).expect("a quarter consumed");
        assert_eq!(grant, 30);
        send.grant(grant).expect("fine");
        assert_eq!(send.take(1000), 30);
        recv.received(30).expect("the granted bytes");
        assert_eq!(
            SendWindow::new(0).grant(u32::MAX).and_then(|()| {
                let mut w = SendWindow::new(u32::MAX);
                w.grant(u32::MAX)
            }),
            Err(WindowError::TooMuchCredit)
        );
    }
}
