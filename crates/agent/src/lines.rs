//! Console bytes to log lines.
//!
//! Invariants:
//! - A line ends at `\n`; one `\r` before it is dropped. Bytes that are not UTF-8 become
//!   U+FFFD (decoding happens on whole lines, so a character split across reads survives).
//! - No text is longer than [`MAX_RECORD_TEXT`] bytes. A longer line is split; every piece
//!   but the last ends with [`CONTINUED`] (`↩`), so a reader can join them again.
//! - The unfinished line held back is bounded: once it reaches [`MAX_RECORD_TEXT`] bytes the
//!   full pieces are emitted (marked continued) and only the tail is kept.
//! - [`ConsoleLines::flush`] emits the unfinished line as it is (a prompt waiting for input);
//!   what follows starts a new text.

use proto::log::MAX_RECORD_TEXT;

/// Ends every piece of a split line but the last.
pub const CONTINUED: char = '\u{21a9}';

/// Longest piece of a split line before its marker.
const PIECE: usize = MAX_RECORD_TEXT - CONTINUED.len_utf8();

/// Splits a console byte stream into line texts.
#[derive(Debug, Default)]
pub struct ConsoleLines {
    partial: Vec<u8>,
}

impl ConsoleLines {
    /// Feeds bytes; complete lines (and pieces of over-long ones) are appended to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<String>) {
        let mut rest = bytes;
        while let Some(i) = rest.iter().position(|b| *b == b'\n') {
            self.partial.extend_from_slice(&rest[..i]);
            rest = &rest[i + 1..];
            let mut line = std::mem::take(&mut self.partial);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            split_text(&String::from_utf8_lossy(&line), false, out);
        }
        self.partial.extend_from_slice(rest);
        while self.partial.len() >= MAX_RECORD_TEXT {
            let cut = char_boundary(&self.partial, PIECE);
            let head: Vec<u8> = self.partial.drain(..cut).collect();
            split_text(&String::from_utf8_lossy(&head), true, out);
        }
    }

    /// Whether an unfinished line is held back.
    pub fn has_partial(&self) -> bool {
        !self.partial.is_empty()
    }

    /// Emits the unfinished line, if any, as it is.
    pub fn flush(&mut self, out: &mut Vec<String>) {
        if self.partial.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.partial);
        split_text(&String::from_utf8_lossy(&line), false, out);
    }
}

/// Splits `text` into pieces of at most [`MAX_RECORD_TEXT`] bytes. Every piece but the last
/// ends with [`CONTINUED`]; the last one too when `continues` (the line goes on later).
pub fn split_text(text: &str, continues: bool, out: &mut Vec<String>) {
    let mut rest = text;
    loop {
        if rest.len() <= MAX_RECORD_TEXT && !continues {
            out.push(rest.to_owned());
            return;
        }
        if rest.len() <= PIECE {
            out.push(format!("{rest}{CONTINUED}"));
            return;
        }
        let mut cut = PIECE;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (head, tail) = rest.split_at(cut);
        out.push(format!("{head}{CONTINUED}"));
        rest = tail;
        if rest.is_empty() {
            return;
        }
    }
}

/// The largest cut `<= max` that does not split a UTF-8 sequence (when the bytes are UTF-8).
fn char_boundary(bytes: &[u8], max: usize) -> usize {
    if max >= bytes.len() {
        return bytes.len();
    }
    let mut cut = max;
    // Continuation bytes are 0b10xxxxxx; a character has at most three of them.
    while cut > max.saturating_sub(3) && cut > 0 && (bytes[cut] & 0xc0) == 0x80 {
        cut -= 1;
    }
    if (bytes[cut] & 0xc0) == 0x80 {
        max
    } else {
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]]) -> (Vec<String>, ConsoleLines) {
        let mut c = ConsoleLines::default();
        let mut out = Vec::new();
        for chunk in chunks {
            c.push(chunk, &mut out);
        }
        (out, c)
    }

    #[test]
    fn lines_end_at_newline_and_lose_one_cr() {
        let (out, c) = lines(&[b"one\r\ntw", b"o\n\nthree\r\r\nfour"]);
        assert_eq!(out, ["one", "two", "", "three\r"]);
        assert!(c.has_partial());
    }

    #[test]
    fn partial_line_is_flushed_as_it_is() {
        let (mut out, mut c) = lines(&[b"boot\nlogin: "]);
        c.flush(&mut out);
        assert_eq!(out, ["boot", "login: "]);
        assert!(!c.has_partial());
        c.flush(&mut out);
        assert_eq!(out.len(), 2);
        c.push(b"root\n", &mut out);
        assert_eq!(out.last().map(String::as_str), Some("root"));
    }

    #[test]
    fn invalid_utf8_becomes_replacement_and_split_characters_survive() {
        let euro = "€".as_bytes();
        let (out, _) = lines(&[b"a\xffb\n", &euro[..1], &euro[1..], b"\n"]);
        assert_eq!(out, ["a\u{fffd}b", "€"]);
    }

    #[test]
    fn long_lines_are_split_with_a_marker_and_rejoin() {
        let line = "x".repeat(MAX_RECORD_TEXT * 2 + 10);
        let (out, _) = lines(&[line.as_bytes(), b"\n"]);
        assert_eq!(out.len(), 3);
        for piece in &out {
            assert!(piece.len() <= MAX_RECORD_TEXT, "{}", piece.len());
        }
        assert!(out[0].ends_with(CONTINUED) && out[1].ends_with(CONTINUED));
        assert!(!out[2].ends_with(CONTINUED));
        let joined: String = out.concat().replace(CONTINUED, "");
        assert_eq!(joined, line);
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_one_record() {
        let line = "y".repeat(MAX_RECORD_TEXT);
        let mut out = Vec::new();
        split_text(&line, false, &mut out);
        assert_eq!(out, [line]);
    }

    #[test]
    fn multibyte_text_is_split_on_character_boundaries() {
        let line = "é".repeat(MAX_RECORD_TEXT);
        let (out, _) = lines(&[line.as_bytes(), b"\n"]);
        for piece in &out {
            assert!(piece.len() <= MAX_RECORD_TEXT);
            assert!(!piece.contains('\u{fffd}'), "a character was cut");
        }
        assert_eq!(out.concat().replace(CONTINUED, ""), line);
    }

    #[test]
    fn invalid_bytes_that_grow_when_replaced_still_fit() {
        let garbage = vec![0xffu8; MAX_RECORD_TEXT - 1];
        let (mut out, mut c) = lines(&[&garbage]);
        c.push(b"\n", &mut out);
        assert!(out.len() >= 3, "{}", out.len());
        for piece in &out {
            assert!(piece.len() <= MAX_RECORD_TEXT);
        }
    }

    #[test]
    fn an_endless_line_keeps_memory_bounded() {
        let mut c = ConsoleLines::default();
        let mut out = Vec::new();
        let chunk = vec![b'z'; 4096];
        for _ in 0..100 {
            c.push(&chunk, &mut out);
            assert!(c.partial.len() < MAX_RECORD_TEXT);
        }
        assert!(out.iter().all(|p| p.ends_with(CONTINUED)));
        c.push(b"\n", &mut out);
        let total: usize = out.iter().map(|p| p.replace(CONTINUED, "").len()).sum();
        assert_eq!(total, 409_600);
    }
}
