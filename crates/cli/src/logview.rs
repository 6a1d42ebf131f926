//! Job log records shown to people (and as JSON lines for scripts).
//!
//! Console records are lines without their newline; a piece of a line split by the agent ends
//! with `↩` and is joined with the next piece. Records of other kinds are shown on their own
//! line as `-- kind: text`; what the runner typed (`input`) is not shown, as in `dutlab run`.
//!
//! Invariants:
//! - Console text goes through one [`AnsiStripper`] for the whole stream (a sequence split
//!   between two pieces is still removed); other texts through `printable`. Nothing from the
//!   DUT reaches the terminal as an escape sequence.
//! - A marker line always starts at the beginning of a line.

use driver::ansi::AnsiStripper;
use proto::JobState;
use proto::api::JobView;
use proto::log::{LogKind, LogRecord};
use runner::report::printable;
use std::io::{self, Write};

/// Ends every piece of a console line that the agent split (agent's `lines::CONTINUED`).
const CONTINUED: &str = "\u{21a9}";

/// Writes log records for people.
pub struct LogView<W: Write> {
    out: W,
    stripper: AnsiStripper,
    clean: Vec<u8>,
    at_line_start: bool,
    last_state: Option<JobState>,
}

impl<W: Write> LogView<W> {
    pub fn new(out: W) -> LogView<W> {
        LogView {
            out,
            stripper: AnsiStripper::new(),
            clean: Vec::new(),
            at_line_start: true,
            last_state: None,
        }
    }

    /// Shows one record.
    pub fn record(&mut self, record: &LogRecord) -> io::Result<()> {
        match record.kind {
            LogKind::Console => {
                let (text, continued) = match record.text.strip_suffix(CONTINUED) {
                    Some(piece) => (piece, true),
                    None => (record.text.as_str(), false),
                };
                self.clean.clear();
                self.stripper.feed(text.as_bytes(), &mut self.clean);
                if !continued {
                    self.clean.push(b'\n');
                }
                self.out.write_all(&self.clean)?;
                self.at_line_start = self.clean.last().is_none_or(|b| *b == b'\n');
            }
            LogKind::Input => return Ok(()),
            kind => self.marker(kind.as_str(), &record.text)?,
        }
        self.out.flush()
    }

    /// Shows a job state change (not a repeat of the last state shown).
    pub fn job(&mut self, job: &JobView) -> io::Result<()> {
        if self.last_state == Some(job.state) {
            return Ok(());
        }
        self.last_state = Some(job.state);
        let mut text = job.state.to_string();
        if let Some(device) = &job.device {
            text.push_str(&format!(" on {device}"));
        }
        if let Some(outcome) = job.outcome {
            text.push_str(&format!(": {outcome}"));
        }
        if !job.reason.is_empty() {
            text.push_str(&format!(" ({})", job.reason));
        }
        self.marker(&format!("job {}", job.id), &text)?;
        self.out.flush()
    }

    fn marker(&mut self, label: &str, text: &str) -> io::Result<()> {
        if !self.at_line_start {
            self.out.write_all(b"\n")?;
        }
        writeln!(self.out, "-- {label}: {}", printable(text))?;
        self.at_line_start = true;
        Ok(())
    }

    /// Ends an unfinished line, so what follows starts on its own.
    pub fn finish(&mut self) -> io::Result<()> {
        if !self.at_line_start {
            self.out.write_all(b"\n")?;
            self.at_line_start = true;
        }
        self.out.flush()
    }
}

/// One record as one JSON line.
pub fn json_line(record: &LogRecord) -> String {
    serde_json::to_string(record).expect("a log record always serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{Millis, Seq};

    fn rec(seq: u64, kind: LogKind, text: &str) -> LogRecord {
        LogRecord {
            seq: Seq(seq),
            at: Millis(seq),
            kind,
            text: text.into(),
        }
    }

    fn show(records: &[LogRecord]) -> String {
        let mut out = Vec::new();
        let mut view = LogView::new(&mut out);
        for r in records {
            view.record(r).expect("write");
        }
        view.finish().expect("write");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn console_lines_are_shown_with_escapes_removed() {
        let out = show(&[
            rec(1, LogKind::Console, "\x1b[1;32mgreen\x1b[0m line"),
            rec(2, LogKind::Console, "\x1b]0;title\x07next\x07"),
        ]);
        assert_eq!(out, "green line\nnext\n");
    }

    #[test]
    fn split_lines_are_joined_and_escapes_split_between_pieces_removed() {
        let out = show(&[
            rec(1, LogKind::Console, "abc\x1b[3\u{21a9}"),
            rec(2, LogKind::Console, "1mdef"),
        ]);
        assert_eq!(out, "abcdef\n");
    }

    #[test]
    fn markers_start_on_their_own_line_and_input_is_hidden() {
        let out = show(&[
            rec(1, LogKind::Action, "boot"),
            rec(2, LogKind::Console, "login: \u{21a9}"),
            rec(3, LogKind::Input, "root"),
            rec(4, LogKind::Case, "0_smoke/uname: pass"),
            rec(5, LogKind::Gap, "records 6-9 lost\x1b[2J"),
        ]);
        assert_eq!(
            out,
            "-- action: boot\nlogin: \n-- case: 0_smoke/uname: pass\n-- gap: records 6-9 lost\u{fffd}[2J\n"
        );
    }

    #[test]
    fn job_states_are_shown_once_each() {
        let mut out = Vec::new();
        let mut view = LogView::new(&mut out);
        let mut job = JobView {
            id: proto::JobId(3),
            name: "n".into(),
            device_type: "qemu".into(),
            tags: vec![],
            priority: 50,
            visibility: proto::Visibility::Public,
            owner: "me".into(),
            owner_id: proto::PrincipalId(1),
            state: JobState::Queued,
            outcome: None,
            reason: String::new(),
            device: None,
            submitted_at: Millis(0),
            started_at: None,
            finished_at: None,
            position: None,
            estimated_start: None,
            retry: proto::RetryPolicy::Never,
            retry_of: None,
            retried_as: None,
            avoid_devices: Vec::new(),
            group: None,
            warnings: vec![],
        };
        view.job(&job).expect("write");
        view.job(&job).expect("write");
        job.state = JobState::Running;
        job.device = Some("qemu-01".into());
        view.job(&job).expect("write");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "-- job 3: queued\n-- job 3: running on qemu-01\n"
        );
    }

    #[test]
    fn json_lines_are_one_record_each() {
        let line = json_line(&rec(1, LogKind::Console, "a\nb\x1b"));
        assert!(!line.contains('\n'));
        let back: LogRecord = serde_json::from_str(&line).expect("parse");
        assert_eq!(back.text, "a\nb\x1b");
    }
}
