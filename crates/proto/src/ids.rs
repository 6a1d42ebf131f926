//! Identifier newtypes. Numbers on the wire, never confused with each other in code.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id!(
    /// A submitted job. Raised by one for every submission, never reused.
    JobId
);
id!(
    /// One grant of a device. Unique across the controller's lifetime, never reused.
    LeaseId
);
id!(
    /// Fencing counter of a device, raised at every grant. A message about a device that
    /// carries an older epoch than the device's current one is refused.
    Epoch
);
id!(
    /// Position of a log record in its job's log: 1, 2, 3 ... without holes once stored.
    Seq
);

/// Milliseconds since the UNIX epoch. Time is passed in as a value; nothing pure reads a clock.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(transparent)]
pub struct Millis(pub u64);

impl Millis {
    pub fn plus(self, d: std::time::Duration) -> Millis {
        Millis(
            self.0
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}
