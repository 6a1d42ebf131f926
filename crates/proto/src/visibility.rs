//! Who may read a job, as the job says it: LAVA's `visibility:` key, typed.
//!
//! Invariants:
//! - A [`GroupName`] is 1 to [`MAX_GROUP`] bytes of `[A-Za-z0-9._-]`, not `.` or `..` (the
//!   rule of [`crate::names`]): it cannot carry a separator, a control character or a space.
//! - JSON spelling is LAVA's YAML spelling: `"public"`, `"personal"`, `{"group": [names]}`.
//! - The decision itself (who reads, who cancels) is not here: it is the controller's policy
//!   module, which every read path calls.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest group name, in bytes.
pub const MAX_GROUP: usize = 64;

/// A group of principals, as job files and admins name it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GroupName(String);

/// Why a group name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupNameError {
    #[error("group name: {0}")]
    Name(#[from] crate::names::NameError),
    #[error("group name {0:?} is longer than {MAX_GROUP} bytes")]
    TooLong(String),
}

impl GroupName {
    pub fn new(name: &str) -> Result<GroupName, GroupNameError> {
        crate::names::check_name(name)?;
        if name.len() > MAX_GROUP {
            return Err(GroupNameError::TooLong(
                name.chars().take(MAX_GROUP).collect(),
            ));
        }
        Ok(GroupName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for GroupName {
    type Error = GroupNameError;
    fn try_from(name: String) -> Result<GroupName, GroupNameError> {
        GroupName::new(&name)
    }
}

impl From<GroupName> for String {
    fn from(g: GroupName) -> String {
        g.0
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl utoipa::PartialSchema for GroupName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "a group name: 1 to 64 of letters, digits, '.', '_', '-'",
            ))
            .into()
    }
}

impl utoipa::ToSchema for GroupName {}

/// Who may read a job besides its owner and admins.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Every user of the lab.
    #[default]
    Public,
    /// Its owner (and admins) only.
    Personal,
    /// Its owner, admins, and the members of any of these groups. An empty list (jobs of
    /// controllers before groups existed) is the same as `Personal`.
    Group(Vec<GroupName>),
}

impl Visibility {
    /// The word of the kind: `public`, `personal`, `group`.
    pub fn kind(&self) -> &'static str {
        match self {
            Visibility::Public => "public",
            Visibility::Personal => "personal",
            Visibility::Group(_) => "group",
        }
    }
}

impl fmt::Display for Visibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Visibility::Group(groups) => {
                let names: Vec<&str> = groups.iter().map(GroupName::as_str).collect();
                write!(f, "group: {}", names.join(", "))
            }
            other => f.write_str(other.kind()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_lavas_spelling() {
        let g = Visibility::Group(vec![GroupName::new("qa").expect("name")]);
        assert_eq!(
            serde_json::to_string(&g).expect("json"),
            r#"{"group":["qa"]}"#
        );
        assert_eq!(
            serde_json::to_string(&Visibility::Personal).expect("json"),
            r#""personal""#
        );
        let back: Visibility = serde_json::from_str(r#"{"group":["qa"]}"#).expect("parses");
        assert_eq!(back, g);
        assert!(serde_json::from_str::<Visibility>(r#"{"group":["a b"]}"#).is_err());
        assert_eq!(g.to_string(), "group: qa");
    }

    #[test]
    fn group_names_are_safe_names() {
        assert!(GroupName::new("team-1.x_y").is_ok());
        for bad in ["", ".", "..", "a,b", "a b", "a\nb", &"x".repeat(65)] {
            assert!(GroupName::new(bad).is_err(), "{bad:?}");
        }
    }
}
