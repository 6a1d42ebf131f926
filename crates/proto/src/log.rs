//! Job log records: what agents spool, the controller stores and followers read.
//!
//! Invariants:
//! - A job's log is a sequence of records numbered 1, 2, 3 ... by [`Seq`]; the agent numbers
//!   them before they leave its spool, the controller stores each number once.
//! - Records that were lost for good are stored as one [`LogKind::Gap`] record, never silently.
//! - Console text is stored raw (escape sequences included); readers neutralise it for display.
//!   Bytes that are not UTF-8 are replaced with U+FFFD.

use crate::ids::{Millis, Seq};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest text of one record, in bytes. Longer console lines are split with a marker.
pub const MAX_RECORD_TEXT: usize = 16 << 10;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum LogKind {
    /// One line (or a chunk of a long or unfinished line) of DUT console output.
    Console,
    /// What the runner typed on the console.
    Input,
    /// An action started (`deploy`, `boot`, `test`).
    Action,
    /// A test case result, as `suite/name: result`.
    Case,
    /// A note from the runner or the lab (QEMU launched, lease lost, ...).
    Note,
    /// Records that were lost for good; the text says which.
    Gap,
}

impl LogKind {
    pub const ALL: [LogKind; 6] = [
        LogKind::Console,
        LogKind::Input,
        LogKind::Action,
        LogKind::Case,
        LogKind::Note,
        LogKind::Gap,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LogKind::Console => "console",
            LogKind::Input => "input",
            LogKind::Action => "action",
            LogKind::Case => "case",
            LogKind::Note => "note",
            LogKind::Gap => "gap",
        }
    }

    /// Compact code used in binary log frames.
    pub fn code(self) -> u8 {
        match self {
            LogKind::Console => 0,
            LogKind::Input => 1,
            LogKind::Action => 2,
            LogKind::Case => 3,
            LogKind::Note => 4,
            LogKind::Gap => 5,
        }
    }

    pub fn from_code(code: u8) -> Option<LogKind> {
        LogKind::ALL.get(usize::from(code)).copied()
    }
}

impl fmt::Display for LogKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One stored log record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogRecord {
    pub seq: Seq,
    /// When the agent saw it.
    pub at: Millis,
    pub kind: LogKind,
    pub text: String,
}
