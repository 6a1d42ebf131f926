//! Streaming removal of terminal escape sequences from console bytes.
//!
//! Invariants:
//! - Byte-preserving: every byte that is not part of an escape sequence is passed through
//!   unchanged, including invalid UTF-8 (DUT output is untrusted and need not be text).
//! - Streaming: a sequence split across two `feed` calls is removed as if it had come in one
//!   piece; nothing is held back except the bytes of an unfinished escape sequence.
//! - Bounded: an escape sequence longer than [`MAX_SEQUENCE`] bytes is abandoned, so hostile
//!   output cannot make the stripper swallow the stream.
//! - `\r`, `\t`, `\n` pass through; other C0 controls (BEL, BS, SI/SO, NUL ...) are dropped.

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

/// Removes ANSI/VT100 escape sequences from a byte stream, one chunk at a time.
#[derive(Debug, Clone)]
pub struct AnsiStripper {
    state: State,
    seq_len: usize,
}

impl Default for AnsiStripper {
    fn default() -> Self {
        Self::new()
    }
}

impl AnsiStripper {
    pub fn new() -> Self {
        AnsiStripper {
            state: State::Ground,
            seq_len: 0,
        }
    }

    /// Appends the visible bytes of `input` to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            if self.state != State::Ground {
                self.seq_len += 1;
                if self.seq_len > MAX_SEQUENCE {
                    self.state = State::Ground;
                }
            }
            match self.state {
                State::Ground => match b {
                    0x1b => {
                        self.state = State::Escape;
                        self.seq_len = 0;
                    }
                    b'\n' | b'\r' | b'\t' => out.push(b),
                    0x00..=0x1f | 0x7f => {}
                    _ => out.push(b),
                },
                State::Escape => {
                    self.state = match b {
                        b'[' => State::Csi,
                        b']' | b'P' | b'X' | b'^' | b'_' => State::String,
                        b'(' | b')' | b'*' | b'+' | b'#' | b'%' => State::OneMore,
                        0x1b => State::Escape,
                        _ => State::Ground,
                    }
                }
                State::Csi => {
                    if (0x40..=0x7e).contains(&b) {
                        self.state = State::Ground;
                    } else if b == 0x1b {
                        self.state = State::Escape;
                        self.seq_len = 0;
                    }
                }
                State::String => match b {
                    0x07 => self.state = State::Ground,
                    0x1b => self.state = State::StringEscape,
                    _ => {}
                },
                State::StringEscape => {
                    self.state = if b == b'\\' {
                        State::Ground
                    } else {
                        State::String
                    }
                }
                State::OneMore => self.state = State::Ground,
            }
        }
    }
}

/// Strips a whole buffer at once.
pub fn strip(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    AnsiStripper::new().feed(input, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn removes_csi_osc_and_charset_sequences() {
        assert_eq!(strip(b"\x1b[32mok\x1b[0m"), b"ok");
        assert_eq!(strip(b"/ # \x1b[6necho hi"), b"/ # echo hi");
        assert_eq!(strip(b"\x1b]0;title\x07prompt# "), b"prompt# ");
        assert_eq!(strip(b"\x1b]0;title\x1b\\x"), b"x");
        assert_eq!(strip(b"\x1b(Bplain"), b"plain");
        assert_eq!(strip(b"a\r\nb\tc\x07"), b"a\r\nb\tc");
    }

    #[test]
    fn keeps_invalid_utf8() {
        assert_eq!(strip(b"\xff\xfe ok"), b"\xff\xfe ok");
    }

    #[test]
    fn unterminated_sequence_is_abandoned() {
        let mut input = b"\x1b[".to_vec();
        input.extend(std::iter::repeat_n(b'1', MAX_SEQUENCE + 10));
        input.extend(b"tail");
        let out = strip(&input);
        assert!(
            out.ends_with(b"tail"),
            "{:?}",
            String::from_utf8_lossy(&out)
        );
    }

    proptest! {
        #[test]
        fn split_feeding_equals_whole(data in proptest::collection::vec(any::<u8>(), 0..400), cut in 0usize..400) {
            let cut = cut.min(data.len());
            let whole = strip(&data);
            let mut s = AnsiStripper::new();
            let mut out = Vec::new();
            s.feed(&data[..cut], &mut out);
            s.feed(&data[cut..], &mut out);
            prop_assert_eq!(whole, out);
        }

        #[test]
        fn text_without_controls_is_unchanged(text in "[ -~]{0,200}") {
            prop_assert_eq!(strip(text.as_bytes()), text.as_bytes().to_vec());
        }
    }
}
