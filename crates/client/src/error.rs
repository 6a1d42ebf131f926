//! What can go wrong talking to a controller.
//!
//! Invariants:
//! - No variant holds the token, and no message is built from request headers, so an error
//!   can be printed or logged as is.
//! - Messages describe this layer only (which URL, what the controller said); the cause is
//!   the `source`, never repeated in the message.

use std::error::Error as StdError;

/// A boxed cause, for transport errors of the HTTP and WebSocket libraries.
pub type Cause = Box<dyn StdError + Send + Sync + 'static>;

/// Error of every [`crate::Client`] call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The controller URL cannot be used.
    #[error("controller URL '{url}': {reason}")]
    BadUrl { url: String, reason: String },
    /// The token cannot be sent in an HTTP header (it is not printed).
    #[error("the token contains characters that cannot be sent in an HTTP header")]
    BadToken,
    /// The controller answered with an error status; `message` is its [`proto::api::ApiError`]
    /// text (or the start of the body when it was not one).
    #[error("the controller answered {status}: {message}")]
    Api {
        status: u16,
        message: String,
        /// Device types the lab knows, when a job asked for an unknown one.
        known_device_types: Vec<String>,
    },
    /// No connection could be made, or it broke or timed out before the answer was read.
    #[error("cannot reach the controller at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: Cause,
    },
    /// The answer was not what the API promises (bad JSON, too large).
    #[error("cannot read the answer from {url}")]
    Decode {
        url: String,
        #[source]
        source: Cause,
    },
    /// TLS refused the controller's certificate (wrong CA, wrong pin, wrong name, expired),
    /// or the trust settings cannot be used.
    #[error("TLS with the controller at {url}: {reason}")]
    Tls { url: String, reason: String },
    /// A local file could not be read or written.
    #[error("{path}")]
    Local {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl ClientError {
    /// The HTTP status, for [`ClientError::Api`].
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True for 401 and 403: the token is missing, unknown, revoked or lacks the role.
    pub fn is_auth(&self) -> bool {
        matches!(self.status(), Some(401 | 403))
    }

    /// True when trying again later may work (connection problems, 5xx answers).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Api { status, .. } => *status >= 500,
            _ => false,
        }
    }
}
