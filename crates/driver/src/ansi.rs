//! Terminal escape sequences in console bytes: one streaming scanner, two renderers of it.
//!
//! - [`AnsiStripper`] removes every escape sequence (for matching and logs): what the expect
//!   engine and the log viewer read.
//! - [`TerminalFilter`] keeps the few harmless ones (SGR colours, cursor movement, erasing
//!   a line or the screen) and drops the rest (OSC titles, OSC 52 clipboard writes and
//!   hyperlinks, DCS/APC/PM/SOS strings, mode changes, reports that answer on the
//!   terminal's input, resets, charsets, anything unknown): for showing DUT output on a
//!   person's terminal (`dutlab console`).
//!
//! Invariants:
//! - Byte-preserving: every byte that is not part of an escape sequence or a dropped control
//!   is passed through unchanged, including invalid UTF-8 (DUT output is untrusted and need
//!   not be text). The filter also drops the `0xC2` bytes right before a C1 byte, and those
//!   of a run longer than [`MAX_SEQUENCE`].
//! - Streaming: a sequence split across two `feed` calls is treated as if it had come in one
//!   piece; nothing is held back except the bytes of an unfinished escape sequence (and, in
//!   the filter, `0xC2` lead bytes until the next byte shows whether they start a C1 control).
//! - Bounded: an escape sequence longer than [`MAX_SEQUENCE`] bytes is abandoned (dropped; what
//!   follows is text again), so hostile output cannot make either renderer swallow the stream
//!   or hold more than that.
//! - Stripper: `\r`, `\t`, `\n` pass; other C0 controls (BEL, BS, SI/SO, NUL ...) and DEL are
//!   dropped. Filter: backspace passes too.
//! - Filter: its output never holds an escape sequence other than an allowed CSI, nor a C1
//!   control encoded as UTF-8 (`C2 80` to `C2 9F`, which some terminals obey as 8-bit
//!   controls); filtering its output again changes nothing.

/// Longest escape sequence we keep swallowing before giving up on it.
pub const MAX_SEQUENCE: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ground,
    /// After ESC.
    Escape,
    /// Inside `ESC [` ... final byte 0x40..=0x7e.
    Csi,
    /// Inside `ESC ]`, `ESC P`, `ESC X`, `ESC ^`, `ESC _` ... terminated by BEL or `ESC \`.
    String,
    /// Saw ESC inside a string sequence: `\` ends it.
    StringEscape,
    /// `ESC (`, `ESC )`, `ESC #` ... take exactly one more byte.
    OneMore,
}

/// One unit of a console byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    /// A byte that is no control: printable ASCII, or any byte from 0x80 (UTF-8 or not).
    Text(u8),
    /// A C0 control other than ESC, or DEL.
    Control(u8),
    /// A whole escape sequence, from its ESC to its last byte.
    Sequence(&'a [u8]),
}

/// Splits a byte stream into [`Token`]s, one chunk at a time.
#[derive(Debug, Clone)]
struct Scanner {
    state: State,
    /// The unfinished sequence, ESC first; at most `MAX_SEQUENCE + 1` bytes.
    seq: Vec<u8>,
}

impl Scanner {
    fn new() -> Scanner {
        Scanner {
            state: State::Ground,
            seq: Vec::new(),
        }
    }

    fn restart(&mut self) {
        self.state = State::Escape;
        self.seq.clear();
        self.seq.push(0x1b);
    }

    fn feed(&mut self, input: &[u8], mut emit: impl FnMut(Token<'_>)) {
        for &b in input {
            if self.state != State::Ground && self.seq.len() > MAX_SEQUENCE {
                self.state = State::Ground;
                self.seq.clear();
            }
            match self.state {
                State::Ground => match b {
                    0x1b => self.restart(),
                    0x00..=0x1f | 0x7f => emit(Token::Control(b)),
                    _ => emit(Token::Text(b)),
                },
                State::Escape => {
                    if b == 0x1b {
                        self.restart();
                        continue;
                    }
                    self.seq.push(b);
                    self.state = match b {
                        b'[' => State::Csi,
                        b']' | b'P' | b'X' | b'^' | b'_' => State::String,
                        b'(' | b')' | b'*' | b'+' | b'#' | b'%' => State::OneMore,
                        _ => self.complete(&mut emit),
                    }
                }
                State::Csi => {
                    if b == 0x1b {
                        self.restart();
                        continue;
                    }
                    self.seq.push(b);
                    if (0x40..=0x7e).contains(&b) {
                        self.state = self.complete(&mut emit);
                    }
                }
                State::String => {
                    self.seq.push(b);
                    match b {
                        0x07 => self.state = self.complete(&mut emit),
                        0x1b => self.state = State::StringEscape,
                        _ => {}
                    }
                }
                State::StringEscape => {
                    self.seq.push(b);
                    self.state = if b == b'\\' {
                        self.complete(&mut emit)
                    } else {
                        State::String
                    }
                }
                State::OneMore => {
                    self.seq.push(b);
                    self.state = self.complete(&mut emit);
                }
            }
        }
    }

    /// Emits the finished sequence; answers the state after it.
    fn complete(&mut self, emit: &mut impl FnMut(Token<'_>)) -> State {
        emit(Token::Sequence(&self.seq));
        self.seq.clear();
        State::Ground
    }
}

/// Removes ANSI/VT100 escape sequences from a byte stream, one chunk at a time.
#[derive(Debug, Clone)]
pub struct AnsiStripper {
    scanner: Scanner,
}

impl Default for AnsiStripper {
    fn default() -> Self {
        Self::new()
    }
}

impl AnsiStripper {
    pub fn new() -> Self {
        AnsiStripper {
            scanner: Scanner::new(),
        }
    }

    /// Appends the visible bytes of `input` to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        self.scanner.feed(input, |token| match token {
            Token::Text(b) | Token::Control(b @ (b'\n' | b'\r' | b'\t')) => out.push(b),
            Token::Control(_) | Token::Sequence(_) => {}
        });
    }
}

/// Strips a whole buffer at once.
pub fn strip(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    AnsiStripper::new().feed(input, &mut out);
    out
}

/// Makes DUT output safe to write to a person's terminal, one chunk at a time: text, CR, LF,
/// tab, backspace and the CSI sequences of [`allowed_csi`] pass; everything else that a
/// terminal would act on is dropped.
#[derive(Debug, Clone)]
pub struct TerminalFilter {
    scanner: Scanner,
    /// `0xC2` bytes not yet written (at most [`MAX_SEQUENCE`]; more in a row are dropped,
    /// being invalid UTF-8 anyway): the next output byte decides whether they lead a C1
    /// control.
    leads: usize,
}

impl Default for TerminalFilter {
    fn default() -> Self {
        Self::new()
    }
}

impl TerminalFilter {
    pub fn new() -> Self {
        TerminalFilter {
            scanner: Scanner::new(),
            leads: 0,
        }
    }

    /// Appends what of `input` may reach a terminal to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let leads = &mut self.leads;
        let mut put = |b: u8| match b {
            // A C1 control in UTF-8: dropped with the lead bytes before it.
            0x80..=0x9f if *leads > 0 => *leads = 0,
            0xc2 => *leads = (*leads + 1).min(MAX_SEQUENCE),
            _ => {
                out.extend(std::iter::repeat_n(0xc2, std::mem::take(leads)));
                out.push(b);
            }
        };
        self.scanner.feed(input, |token| match token {
            Token::Text(b) | Token::Control(b @ (b'\n' | b'\r' | b'\t' | 0x08)) => put(b),
            Token::Control(_) => {}
            Token::Sequence(seq) if allowed_csi(seq) => seq.iter().for_each(|b| put(*b)),
            Token::Sequence(_) => {}
        });
    }

    /// The end of the stream: writes held lead bytes (an unfinished sequence is dropped).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        out.extend(std::iter::repeat_n(0xc2, std::mem::take(&mut self.leads)));
    }
}

/// Whether a whole escape sequence is a CSI a terminal may be given: plain numeric parameters
/// (digits, `;`, `:`; no private markers such as `?` or `>`, no intermediates) and a final
/// byte of SGR (`m`), cursor movement (`A`-`H`, `f`, `d`) or erasing a line (`K`) or the
/// screen (`J` 0 to 2; not 3, which erases the scrollback).
pub fn allowed_csi(seq: &[u8]) -> bool {
    let Some((&last, body)) = seq.split_last() else {
        return false;
    };
    let Some(params) = body.strip_prefix(b"\x1b[") else {
        return false;
    };
    if !params
        .iter()
        .all(|b| b.is_ascii_digit() || *b == b';' || *b == b':')
    {
        return false;
    }
    match last {
        b'm' | b'A'..=b'H' | b'f' | b'd' | b'K' => true,
        b'J' => matches!(params, b"" | b"0" | b"1" | b"2"),
        _ => false,
    }
}

/// Filters a whole buffer at once.
pub fn filter_for_terminal(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut f = TerminalFilter::new();
    f.feed(input, &mut out);
    f.finish(&mut out);
    out
}

#[cfg(test)]
mod tests;
