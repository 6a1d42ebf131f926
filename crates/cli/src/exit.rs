//! Exit codes of the remote commands, and how an error picks one.
//!
//! Invariants:
//! - Outcome codes (0..=5) come from [`proto::Outcome::exit_code`] only.
//! - Every other failure maps through [`code_of`]: an [`Exit`] anywhere in the error's chain
//!   gives its code, else a [`client::ClientError`] gives the code of its kind, else
//!   [`SOFTWARE`].
//! - The numbers follow sysexits.h where one fits.

use client::ClientError;
use std::fmt;

/// Bad flags, missing settings (sysexits EX_USAGE).
pub const USAGE: i32 = proto::EXIT_USAGE;
/// The job file was refused (by the controller, or before sending: too large, unreadable).
pub const JOB_REFUSED: i32 = 4;
/// The controller cannot be reached (EX_UNAVAILABLE).
pub const UNREACHABLE: i32 = 69;
/// Any other error answer or failure (EX_SOFTWARE).
pub const SOFTWARE: i32 = 70;
/// The job has no results yet (EX_TEMPFAIL).
pub const NOT_FINISHED: i32 = 75;
/// A quota of the user refused the request (429): try again once jobs finished
/// (EX_TEMPFAIL, like [`NOT_FINISHED`]: both mean "later").
pub const OVER_QUOTA: i32 = 75;
/// No token, or the token was refused (EX_NOPERM).
pub const NO_PERMISSION: i32 = 77;
/// Ctrl-C stopped following (128 + SIGINT); the job keeps running.
pub const INTERRUPTED: i32 = 130;

/// The exit codes, for `after_help` of the remote commands.
pub const HELP: &str = "Exit codes: 0 done, 64 usage or missing settings (DUTLAB_URL, DUTLAB_TOKEN \
or `dutlab login`), 69 controller unreachable, 70 other error, 75 over a quota (429; try again \
once jobs finished), 77 no token or token refused (401/403).";

/// An error that carries the exit code it ends the program with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub code: i32,
    pub message: String,
}

impl Exit {
    pub fn new(code: i32, message: impl Into<String>) -> Exit {
        Exit {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// The exit code of a client error.
pub fn client_code(e: &ClientError) -> i32 {
    match e {
        ClientError::BadUrl { .. } => USAGE,
        ClientError::BadToken => NO_PERMISSION,
        ClientError::Api {
            status: 401 | 403, ..
        } => NO_PERMISSION,
        ClientError::Api { status: 429, .. } => OVER_QUOTA,
        ClientError::Api { .. } | ClientError::Decode { .. } | ClientError::Local { .. } => {
            SOFTWARE
        }
        ClientError::Unreachable { .. } | ClientError::Tls { .. } => UNREACHABLE,
    }
}

/// The exit code of any error of a remote command.
pub fn code_of(e: &anyhow::Error) -> i32 {
    for cause in e.chain() {
        if let Some(exit) = cause.downcast_ref::<Exit>() {
            return exit.code;
        }
        if let Some(client) = cause.downcast_ref::<ClientError>() {
            return client_code(client);
        }
    }
    SOFTWARE
}

/// Prints an error as one line on stderr, control characters neutralised (server messages
/// may quote job files).
pub fn report(e: &anyhow::Error) {
    eprintln!(
        "dutlab: error: {}",
        runner::report::printable(&format!("{e:#}"))
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    fn api(status: u16) -> ClientError {
        ClientError::Api {
            status,
            message: "m".into(),
            known_device_types: vec![],
        }
    }

    #[test]
    fn client_errors_map_to_documented_codes() {
        assert_eq!(client_code(&api(401)), 77);
        assert_eq!(client_code(&api(403)), 77);
        assert_eq!(client_code(&api(404)), 70);
        assert_eq!(client_code(&api(429)), 75);
        assert_eq!(client_code(&api(500)), 70);
        let unreachable = ClientError::Unreachable {
            url: "http://x".into(),
            source: "refused".into(),
        };
        assert_eq!(client_code(&unreachable), 69);
        let bad_url = ClientError::BadUrl {
            url: "x".into(),
            reason: "r".into(),
        };
        assert_eq!(client_code(&bad_url), 64);
        assert_eq!(client_code(&ClientError::BadToken), 77);
    }

    #[test]
    fn the_code_is_found_under_context() {
        let e = Err::<(), _>(api(403))
            .context("cannot list jobs")
            .expect_err("error");
        assert_eq!(code_of(&e), 77);
        let e = Err::<(), _>(Exit::new(JOB_REFUSED, "job refused"))
            .context("job.yaml")
            .expect_err("error");
        assert_eq!(code_of(&e), 4);
        assert_eq!(code_of(&anyhow::anyhow!("plain")), SOFTWARE);
    }
}
