//! The crate's error and warning types.
//!
//! Invariants:
//! - Every [`JobError`] names the file it came from and a field: either a path into the
//!   document (`actions[2].test.definitions[0]`), `(top level)` for the document's own keys,
//!   `(document)` for problems with the input as a whole, or `line L column C` for YAML syntax
//!   errors. `Display` is always `file: field: reason`.
//! - Warnings never stop parsing; they are returned next to the parsed value.

use std::fmt;

/// Why a job file or test definition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {field}: {reason}")]
pub struct JobError {
    /// The file name the caller gave (not opened by this crate).
    pub file: String,
    /// Path of the offending field, or the YAML location for syntax errors.
    pub field: String,
    /// What is wrong, in words.
    pub reason: String,
}

impl JobError {
    pub(crate) fn new(
        file: impl Into<String>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            file: file.into(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Something accepted but probably not what the author meant (an unknown key, a LAVA
/// feature this lab does not run yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// Path of the field the warning is about.
    pub field: String,
    /// What was done about it.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}
