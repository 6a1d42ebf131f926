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
    /// Fencing counter of a device, raised at every grant. A message about a device that
    /// carries an older epoch than the device's current one is refused.
    Epoch
);
id!(
    /// A principal (a user: who tokens speak for, and who owns jobs). Given once when the
    /// principal is made and never reused or changed; names are unique but decisions use this.
    PrincipalId
);
id!(
    /// A person's lease (not a job's): one number from its request on, the same while it waits
    /// and while it is held, never reused. Not the grant's [`LeaseId`], which fences agents.
    PersonLeaseId
);
id!(
    /// Position of a log record in its job's log: 1, 2, 3 ... without holes once stored.
    Seq
);

/// 0: no principal (what answers of controllers before principals decode to).
impl Default for PrincipalId {
    fn default() -> PrincipalId {
        PrincipalId(0)
    }
}

/// One grant of a device: 128 bits that the controller derives from a secret drawn from the
/// operating system, so an agent cannot guess another agent's leases. Unique across the
/// controller's lifetime, never reused.
///
/// On the wire (JSON) and in messages it is lower-case hex without leading zeros (up to 32
/// digits); a plain number is accepted too, which is
/// how ids of older controllers (sequential u64 numbers) were stored in their event logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseId(pub u128);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

impl LeaseId {
    /// Parses 1 to 32 hex digits, as [`LeaseId`]'s `Display` writes them (any case).
    pub fn parse_hex(text: &str) -> Option<LeaseId> {
        if text.is_empty() || text.len() > 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u128::from_str_radix(text, 16).ok().map(LeaseId)
    }
}

impl Serialize for LeaseId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LeaseId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<LeaseId, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = LeaseId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a lease id: up to 32 hex digits (or a number, from older controllers)")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<LeaseId, E> {
                Ok(LeaseId(u128::from(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<LeaseId, E> {
                LeaseId::parse_hex(v)
                    .ok_or_else(|| E::custom(format!("lease id {v:?} is not 1 to 32 hex digits")))
            }
        }
        d.deserialize_any(Visit)
    }
}

impl utoipa::PartialSchema for LeaseId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("a lease id: 1 to 32 lower-case hex digits"))
            .into()
    }
}

impl utoipa::ToSchema for LeaseId {}

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
