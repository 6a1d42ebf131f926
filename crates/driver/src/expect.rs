//! Expect engine: waits for patterns in a console byte stream.
//!
//! The engine owns the read half of a console. Every byte read is first shown, raw, to the
//! transcript observer (live output, logs), then stripped of escape sequences and appended to
//! the match buffer, where patterns are searched.
//!
//! Invariants:
//! - Raw bytes reach the observer exactly once, in order, before any match consumes them.
//! - A match consumes the buffer up to the end of the match; what came after stays for the
//!   next call. Among several patterns the leftmost match wins; on a tie, the earlier pattern.
//! - Memory is bounded: the match buffer never holds more than [`MAX_BUFFER`] bytes; when a
//!   pattern does not come, older bytes are dropped (they were already shown to the observer).
//! - Reads are cancel-safe: dropping a pending `expect` future loses no bytes.

use crate::ansi::AnsiStripper;
use regex::bytes::Regex;
use std::fmt;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

/// Largest number of unmatched bytes kept for matching.
pub const MAX_BUFFER: usize = 1 << 20;
/// How much of the buffer is kept when it overflows.
const KEEP_ON_OVERFLOW: usize = 64 << 10;
/// Bytes of context quoted in errors.
const TAIL_IN_ERRORS: usize = 200;

/// Receives every raw console byte.
pub type Observer = Box<dyn FnMut(&[u8]) + Send>;

/// What a successful `expect` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// Which pattern matched (index into the slice given).
    pub index: usize,
    /// Stripped bytes before the match.
    pub before: Vec<u8>,
    /// The matched bytes.
    pub text: Vec<u8>,
}

/// Why an `expect` did not match.
#[derive(Debug, thiserror::Error)]
pub enum ExpectError {
    #[error("no {waited_for} before the deadline; last output: {tail:?}")]
    Timeout { waited_for: String, tail: String },
    #[error("console closed while waiting for {waited_for}; last output: {tail:?}")]
    Closed { waited_for: String, tail: String },
    #[error("console read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A line or a pattern, whichever comes first (see [`Expect::next_line_or`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineOr {
    /// A complete line without its `\n` (and without a trailing `\r`).
    Line(Vec<u8>),
    Matched(Matched),
}

/// The expect engine over one console reader.
pub struct Expect<R> {
    reader: R,
    stripper: AnsiStripper,
    buffer: Vec<u8>,
    observer: Observer,
    stream: StreamState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamState {
    Open,
    Closed,
}

impl<R> fmt::Debug for Expect<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Expect")
            .field("buffered", &self.buffer.len())
            .field("stream", &self.stream)
            .finish()
    }
}

impl<R: AsyncRead + Unpin> Expect<R> {
    pub fn new(reader: R, observer: Observer) -> Self {
        Expect {
            reader,
            stripper: AnsiStripper::new(),
            buffer: Vec::new(),
            observer,
            stream: StreamState::Open,
        }
    }

    /// Replaces the transcript observer.
    pub fn set_observer(&mut self, observer: Observer) {
        self.observer = observer;
    }

    /// Waits until one of `patterns` matches or `deadline` passes.
    pub async fn expect(
        &mut self,
        patterns: &[&Regex],
        deadline: Instant,
    ) -> Result<Matched, ExpectError> {
        loop {
            if let Some(m) = self.find(patterns) {
                return Ok(m);
            }
            self.fill(patterns, deadline).await?;
        }
    }

    /// Returns the next complete line, unless one of `patterns` matches before its end.
    pub async fn next_line_or(
        &mut self,
        patterns: &[&Regex],
        deadline: Instant,
    ) -> Result<LineOr, ExpectError> {
        loop {
            let newline = self.buffer.iter().position(|&b| b == b'\n');
            let matched = self.find_position(patterns);
            match (newline, matched) {
                (Some(nl), Some((index, start, end))) if start <= nl => {
                    return Ok(LineOr::Matched(self.consume(index, start, end)));
                }
                (Some(nl), _) => {
                    let mut line: Vec<u8> = self.buffer.drain(..=nl).collect();
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    return Ok(LineOr::Line(line));
                }
                (None, Some((index, start, end))) => {
                    return Ok(LineOr::Matched(self.consume(index, start, end)));
                }
                (None, None) => self.fill(patterns, deadline).await?,
            }
        }
    }

    /// Drops everything buffered so far (it was already shown to the observer).
    pub fn clear(&mut self) {
        self.buffer.clear();
    }

    /// Whether the console has reached end of stream.
    pub fn is_closed(&self) -> bool {
        self.stream == StreamState::Closed
    }

    fn find(&mut self, patterns: &[&Regex]) -> Option<Matched> {
        let (index, start, end) = self.find_position(patterns)?;
        Some(self.consume(index, start, end))
    }

    fn find_position(&self, patterns: &[&Regex]) -> Option<(usize, usize, usize)> {
        let mut best: Option<(usize, usize, usize)> = None;
        for (index, re) in patterns.iter().enumerate() {
            if let Some(m) = re.find(&self.buffer)
                && best.is_none_or(|(_, s, _)| m.start() < s)
            {
                best = Some((index, m.start(), m.end()));
            }
        }
        best
    }

    fn consume(&mut self, index: usize, start: usize, end: usize) -> Matched {
        let mut taken: Vec<u8> = self.buffer.drain(..end).collect();
        let text = taken.split_off(start);
        Matched {
            index,
            before: taken,
            text,
        }
    }

    async fn fill(&mut self, patterns: &[&Regex], deadline: Instant) -> Result<(), ExpectError> {
        let describe = || {
            patterns
                .iter()
                .map(|p| format!("{:?}", p.as_str()))
                .collect::<Vec<_>>()
                .join(" or ")
        };
        if self.stream == StreamState::Closed {
            return Err(ExpectError::Closed {
                waited_for: describe(),
                tail: self.tail(),
            });
        }
        let mut chunk = [0u8; 8192];
        let n = match tokio::time::timeout_at(deadline, self.reader.read(&mut chunk)).await {
            Err(_) => {
                return Err(ExpectError::Timeout {
                    waited_for: describe(),
                    tail: self.tail(),
                });
            }
            Ok(read) => read?,
        };
        if n == 0 {
            self.stream = StreamState::Closed;
            return Err(ExpectError::Closed {
                waited_for: describe(),
                tail: self.tail(),
            });
        }
        (self.observer)(&chunk[..n]);
        self.stripper.feed(&chunk[..n], &mut self.buffer);
        if self.buffer.len() > MAX_BUFFER {
            let cut = self.buffer.len() - KEEP_ON_OVERFLOW;
            self.buffer.drain(..cut);
        }
        Ok(())
    }

    fn tail(&self) -> String {
        let start = self.buffer.len().saturating_sub(TAIL_IN_ERRORS);
        String::from_utf8_lossy(&self.buffer[start..]).into_owned()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    fn re(s: &str) -> Regex {
        Regex::new(s).unwrap()
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn matches_across_split_reads_and_escapes() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let seen = Arc::new(Mutex::new(Vec::<u8>::new()));
        let seen2 = seen.clone();
        let mut e = Expect::new(rx, Box::new(move |b| seen2.lock().unwrap().extend(b)));
        tokio::spawn(async move {
            tx.write_all(b"booting...\r\nlog").await.unwrap();
            tx.flush().await.unwrap();
            tokio::task::yield_now().await;
            tx.write_all(b"\x1b[1min:\x1b[0m ").await.unwrap();
        });
        let login = re("login: ");
        let m = e.expect(&[&login], soon()).await.unwrap();
        assert_eq!(m.before, b"booting...\r\n");
        assert_eq!(m.text, b"login: ");
        assert_eq!(
            seen.lock().unwrap().as_slice(),
            b"booting...\r\nlog\x1b[1min:\x1b[0m "
        );
    }

    #[tokio::test]
    async fn leftmost_match_wins_then_earlier_pattern() {
        let (mut tx, rx) = tokio::io::duplex(64);
        tx.write_all(b"xx Password: yy login: ").await.unwrap();
        let mut e = Expect::new(rx, Box::new(|_| {}));
        let (login, pass) = (re("login: "), re("Password: "));
        let m = e.expect(&[&login, &pass], soon()).await.unwrap();
        assert_eq!(m.index, 1);
        let m = e.expect(&[&login, &pass], soon()).await.unwrap();
        assert_eq!(m.index, 0);
        assert_eq!(m.before, b"yy ");
    }

    #[tokio::test]
    async fn lines_until_prompt() {
        let (mut tx, rx) = tokio::io::duplex(64);
        tx.write_all(b"one\r\ntwo\nprompt# three\n").await.unwrap();
        let mut e = Expect::new(rx, Box::new(|_| {}));
        let prompt = re("prompt# ");
        let mut got = Vec::new();
        while let LineOr::Line(l) = e.next_line_or(&[&prompt], soon()).await.unwrap() {
            got.push(String::from_utf8(l).unwrap());
        }
        assert_eq!(got, vec!["one", "two"]);
        match e.next_line_or(&[&prompt], soon()).await.unwrap() {
            LineOr::Line(l) => assert_eq!(l, b"three"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_names_the_pattern_and_shows_the_tail() {
        let (mut tx, rx) = tokio::io::duplex(64);
        tx.write_all(b"Kernel panic").await.unwrap();
        let mut e = Expect::new(rx, Box::new(|_| {}));
        let login = re("login:");
        let err = e
            .expect(&[&login], Instant::now() + Duration::from_secs(3))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ExpectError::Timeout { .. }), "{text}");
        assert!(text.contains("\"login:\""), "{text}");
        assert!(text.contains("Kernel panic"), "{text}");
        drop(tx);
    }

    #[tokio::test]
    async fn closed_stream_is_reported() {
        let (tx, rx) = tokio::io::duplex(64);
        drop(tx);
        let mut e = Expect::new(rx, Box::new(|_| {}));
        let login = re("login:");
        let err = e.expect(&[&login], soon()).await.unwrap_err();
        assert!(matches!(err, ExpectError::Closed { .. }), "{err}");
        assert!(e.is_closed());
    }

    #[tokio::test]
    async fn buffer_stays_bounded_under_flood() {
        let (mut tx, rx) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let junk = vec![b'x'; 1 << 16];
            for _ in 0..40 {
                if tx.write_all(&junk).await.is_err() {
                    return;
                }
            }
            let _ = tx.write_all(b"END").await;
        });
        let mut e = Expect::new(rx, Box::new(|_| {}));
        let end = re("END");
        let m = e.expect(&[&end], soon()).await.unwrap();
        assert!(m.before.len() <= MAX_BUFFER);
    }
}
