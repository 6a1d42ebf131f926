//! Runner events to log entries (records before the spool numbers them).
//!
//! Invariants:
//! - Entries come out in the order the events went in. A console line held back unfinished
//!   is emitted before any other kind of entry, so a prompt precedes what was typed at it.
//! - Every text fits one record ([`proto::log::MAX_RECORD_TEXT`]); long texts are split as
//!   console lines are (see [`crate::lines`]).
//! - A line the runner typed that equals a password of the job or the device is replaced
//!   by [`HIDDEN`]: logs are read by more people than the job's author.

use crate::lines::{ConsoleLines, split_text};
use proto::Millis;
use proto::TestCase;
use proto::log::LogKind;
use runner::RunEvent;

/// Text of an input line that was a password.
pub const HIDDEN: &str = "(password hidden)";

/// A log record without its sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: LogKind,
    pub at: Millis,
    pub text: String,
}

/// Turns the events of one run into entries.
#[derive(Debug, Default)]
pub struct Recorder {
    console: ConsoleLines,
    secrets: Vec<String>,
}

impl Recorder {
    /// A recorder that hides input lines equal to one of `secrets`.
    pub fn new(secrets: Vec<String>) -> Recorder {
        Recorder {
            console: ConsoleLines::default(),
            secrets: secrets.into_iter().filter(|s| !s.is_empty()).collect(),
        }
    }

    /// Entries for one runner event.
    pub fn event(&mut self, event: RunEvent, at: Millis, out: &mut Vec<Entry>) {
        let mut texts = Vec::new();
        let kind = match event {
            RunEvent::Console(bytes) => {
                self.console.push(&bytes, &mut texts);
                LogKind::Console
            }
            RunEvent::Input(bytes) => {
                self.flush(at, out);
                self.input(&bytes, &mut texts);
                LogKind::Input
            }
            RunEvent::ActionStarted { name, .. } => {
                self.flush(at, out);
                texts.push(name.to_owned());
                LogKind::Action
            }
            RunEvent::Case(case) => {
                self.flush(at, out);
                split_text(&case_text(&case), false, &mut texts);
                LogKind::Case
            }
            RunEvent::Note(note) => {
                self.flush(at, out);
                split_text(&note, false, &mut texts);
                LogKind::Note
            }
        };
        out.extend(texts.into_iter().map(|text| Entry { kind, at, text }));
    }

    /// A note from the agent itself.
    pub fn note(&mut self, text: &str, at: Millis, out: &mut Vec<Entry>) {
        self.event(RunEvent::Note(text.to_owned()), at, out);
    }

    /// Whether an unfinished console line is held back.
    pub fn has_partial(&self) -> bool {
        self.console.has_partial()
    }

    /// Emits the unfinished console line (after a quiet spell, or at the end of the run).
    pub fn flush(&mut self, at: Millis, out: &mut Vec<Entry>) {
        let mut texts = Vec::new();
        self.console.flush(&mut texts);
        out.extend(texts.into_iter().map(|text| Entry {
            kind: LogKind::Console,
            at,
            text,
        }));
    }

    fn input(&self, bytes: &[u8], texts: &mut Vec<String>) {
        if bytes.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(bytes);
        let text = text.strip_suffix('\n').unwrap_or(&text);
        for line in text.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if self.secrets.iter().any(|s| s == line) {
                texts.push(HIDDEN.to_owned());
            } else {
                split_text(line, false, texts);
            }
        }
    }
}

/// `suite/name: result`, with the measurement and its units when there is one.
fn case_text(case: &TestCase) -> String {
    let mut text = format!("{}/{}: {}", case.suite, case.name, case.result);
    if let Some(m) = &case.measurement {
        text.push(' ');
        text.push_str(m);
        if let Some(u) = &case.units {
            text.push(' ');
            text.push_str(u);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::CaseResult;

    fn texts(r: &mut Recorder, events: Vec<RunEvent>) -> Vec<(LogKind, String)> {
        let mut out = Vec::new();
        for e in events {
            r.event(e, Millis(1), &mut out);
        }
        out.into_iter().map(|e| (e.kind, e.text)).collect()
    }

    #[test]
    fn events_become_entries_of_their_kind() {
        let mut r = Recorder::new(vec!["s3cret".into()]);
        let mut case = TestCase::new("0_smoke", "memory", CaseResult::Pass);
        case.measurement = Some("512".into());
        case.units = Some("MiB".into());
        let got = texts(
            &mut r,
            vec![
                RunEvent::ActionStarted {
                    index: 0,
                    name: "boot",
                },
                RunEvent::Console(b"Welcome\r\nlogin: ".to_vec()),
                RunEvent::Input(b"root\n".to_vec()),
                RunEvent::Console(b"Password: ".to_vec()),
                RunEvent::Input(b"s3cret\n".to_vec()),
                RunEvent::Case(case),
                RunEvent::Case(TestCase::new("lava", "t", CaseResult::Fail)),
                RunEvent::Note("QEMU started".into()),
                RunEvent::Input(b"a\nb\n".to_vec()),
                RunEvent::Input(b"\n".to_vec()),
            ],
        );
        use LogKind::*;
        let want: Vec<(LogKind, String)> = [
            (Action, "boot"),
            (Console, "Welcome"),
            (Console, "login: "),
            (Input, "root"),
            (Console, "Password: "),
            (Input, HIDDEN),
            (Case, "0_smoke/memory: pass 512 MiB"),
            (Case, "lava/t: fail"),
            (Note, "QEMU started"),
            (Input, "a"),
            (Input, "b"),
            (Input, ""),
        ]
        .into_iter()
        .map(|(k, t)| (k, t.to_owned()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn flush_emits_the_held_back_line_once() {
        let mut r = Recorder::default();
        let mut out = Vec::new();
        r.event(RunEvent::Console(b"# ".to_vec()), Millis(5), &mut out);
        assert!(out.is_empty());
        assert!(r.has_partial());
        r.flush(Millis(6), &mut out);
        r.flush(Millis(7), &mut out);
        assert_eq!(
            out,
            vec![Entry {
                kind: LogKind::Console,
                at: Millis(6),
                text: "# ".into()
            }]
        );
    }
}
