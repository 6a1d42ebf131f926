//! Names of agents and devices: the one rule both the agent (its configuration) and the
//! controller (every hello) apply.
//!
//! Invariant: a valid name is 1 to [`MAX_NAME`] bytes of `[A-Za-z0-9._-]` and not `.` or
//! `..`. So a name is one safe path component, and it cannot carry a control character, an
//! escape sequence, a newline or a space that could forge a log line or a terminal display.

/// Longest agent or device name, in bytes.
pub const MAX_NAME: usize = 128;

/// Why a name is refused. The offending name is shown with Rust's escaping (`{:?}`), so a
/// refusal is itself safe to log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("{name:?} is longer than {MAX_NAME} bytes")]
    TooLong { name: String },
    #[error("{name:?} is not a name")]
    Dots { name: String },
    #[error("{name:?} contains {found:?}; use letters, digits, '.', '_' and '-'")]
    Character { name: String, found: char },
}

/// Checks an agent or device name.
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME {
        // Bounded in the message too: a refusal must not echo megabytes.
        let mut short: String = name.chars().take(MAX_NAME).collect();
        short.push('…');
        return Err(NameError::TooLong { name: short });
    }
    if name == "." || name == ".." {
        return Err(NameError::Dots { name: name.into() });
    }
    if let Some(found) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(NameError::Character {
            name: name.into(),
            found,
        });
    }
    Ok(())
}

/// Checks a free-form label that reaches logs (device type, tag, version): printable, no
/// control characters, at most [`MAX_NAME`] bytes.
pub fn check_label(label: &str) -> Result<(), NameError> {
    if label.len() > MAX_NAME {
        let mut short: String = label.chars().take(MAX_NAME).collect();
        short.push('…');
        return Err(NameError::TooLong { name: short });
    }
    if let Some(found) = label.chars().find(|c| c.is_control()) {
        return Err(NameError::Character {
            name: label.into(),
            found,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_names_pass() {
        for name in ["lab-1", "qemu_01", "a.b", "X"] {
            assert_eq!(check_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn names_that_could_forge_log_lines_are_refused() {
        for name in [
            "",
            ".",
            "..",
            "a b",
            "evil\nINFO agent admin connected",
            "esc\u{1b}[2J",
            "tab\t",
            "nul\0",
            "del\u{7f}",
            "bidi\u{202e}",
            "slash/x",
            "ünï",
        ] {
            let refused = check_name(name).expect_err(name);
            // The message escapes what it shows.
            assert!(
                !refused.to_string().chars().any(char::is_control),
                "{refused}"
            );
        }
        assert!(matches!(
            check_name(&"a".repeat(MAX_NAME + 1)),
            Err(NameError::TooLong { .. })
        ));
    }

    #[test]
    fn labels_refuse_control_characters_only() {
        assert_eq!(check_label("qemu x86 (tcg)"), Ok(()));
        assert!(check_label("q\r\nfake").is_err());
        assert!(check_label("q\u{1b}]0;title\u{7}").is_err());
    }
}
