//! Rows to values and back: tokens, jobs, visibility, integers.

use super::{GroupRow, JobRow, StoreError, StoredToken};
use proto::api::TokenView;
use proto::{GroupName, JobId, Millis, PrincipalId, Role, Visibility};
use sqlx::Row;
use sqlx::any::AnyRow;

pub(super) fn token_row(row: &AnyRow) -> Result<StoredToken, StoreError> {
    let role: String = row.try_get("role")?;
    let revoked: Option<i64> = row.try_get("revoked_at")?;
    Ok(StoredToken {
        view: TokenView {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            role: Role::parse(&role).ok_or_else(|| StoreError::Corrupt {
                what: "token role",
                reason: role.clone(),
            })?,
            agent: row.try_get("agent")?,
            user: row.try_get("user_name")?,
            principal: PrincipalId(as_u64(row.try_get("principal")?)),
            created_at: Millis(as_u64(row.try_get("created_at")?)),
            revoked_at: revoked.map(|r| Millis(as_u64(r))),
        },
        hash: row.try_get("hash")?,
    })
}

/// The one query of job rows that [`job_row`] reads: a job with its group membership, if any,
/// followed by the caller's own `WHERE` (on `j.`) and `ORDER BY` (a literal: the text is static).
macro_rules! job_rows {
    ($tail:literal) => {
        concat!(
            "SELECT j.id, j.name, j.owner, j.owner_id, j.visibility, j.file_name, j.definition, ",
            "j.warnings, g.grp, g.idx, g.role FROM jobs j LEFT JOIN job_groups g ON g.job = j.id ",
            $tail
        )
    };
}
pub(super) use job_rows;

/// A row of [`job_rows!`].
pub(super) fn job_row(row: &AnyRow) -> Result<JobRow, StoreError> {
    let warnings: String = row.try_get("warnings")?;
    let id = JobId(as_u64(row.try_get("id")?));
    let visibility: String = row.try_get("visibility")?;
    let owner: Option<i64> = row.try_get("owner_id")?;
    Ok(JobRow {
        id,
        name: row.try_get("name")?,
        owner: PrincipalId(as_u64(owner.ok_or_else(|| StoreError::Corrupt {
            what: "job owner",
            reason: format!("job {id} has no owner_id"),
        })?)),
        owner_name: row.try_get("owner")?,
        visibility: parse_visibility(&visibility).ok_or_else(|| StoreError::Corrupt {
            what: "job visibility",
            reason: format!("job {id}: {visibility:?}"),
        })?,
        file_name: row.try_get("file_name")?,
        definition: row.try_get("definition")?,
        warnings: serde_json::from_str(&warnings).map_err(|e| StoreError::Corrupt {
            what: "warning list",
            reason: e.to_string(),
        })?,
        artifacts: Vec::new(),
        group: match (
            row.try_get::<Option<i64>, _>("grp")?,
            row.try_get::<Option<i64>, _>("idx")?,
        ) {
            (Some(grp), Some(idx)) => Some(GroupRow {
                group: JobId(as_u64(grp)),
                index: u32::try_from(idx).map_err(|_| StoreError::Corrupt {
                    what: "group index",
                    reason: format!("job {id}: {idx}"),
                })?,
                role: row
                    .try_get::<Option<String>, _>("role")?
                    .unwrap_or_default(),
            }),
            _ => None,
        },
    })
}

/// How a visibility is stored: `public`, `personal`, or `group:` and the comma-separated
/// names (group names hold no comma).
pub(super) fn stored_visibility(v: &Visibility) -> String {
    match v {
        Visibility::Group(groups) => {
            let names: Vec<&str> = groups.iter().map(GroupName::as_str).collect();
            format!("group:{}", names.join(","))
        }
        other => other.kind().to_owned(),
    }
}

/// Reads [`stored_visibility`]; plain `group` (controllers before schema 3, which showed such
/// jobs to their owner only) is a group job of no group: still owner-only.
pub(super) fn parse_visibility(text: &str) -> Option<Visibility> {
    match text {
        "public" => Some(Visibility::Public),
        "personal" => Some(Visibility::Personal),
        "group" => Some(Visibility::Group(Vec::new())),
        _ => {
            let names = text.strip_prefix("group:")?;
            let groups: Result<Vec<GroupName>, _> = names
                .split(',')
                .filter(|n| !n.is_empty())
                .map(GroupName::new)
                .collect();
            groups.ok().map(Visibility::Group)
        }
    }
}

/// Database integers are signed; ids and times never reach 2^63.
pub(super) fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn as_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visibility_round_trips_through_its_stored_text() {
        let g = |n: &str| GroupName::new(n).expect("group");
        for v in [
            Visibility::Public,
            Visibility::Personal,
            Visibility::Group(vec![g("qa"), g("kernel")]),
        ] {
            assert_eq!(parse_visibility(&stored_visibility(&v)), Some(v));
        }
        assert_eq!(
            parse_visibility("group"),
            Some(Visibility::Group(Vec::new()))
        );
        assert_eq!(parse_visibility("group:a b"), None);
    }
}
