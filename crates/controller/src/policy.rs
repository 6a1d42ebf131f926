//! Who may read and who may cancel a job: the one place that decides.
//!
//! Every read path asks here: job show, list, definition, logs, results and the follow
//! stream (through the dispatcher's `visible`, which calls [`may_read`]), job lists
//! ([`may_read`] per job), and artifact reads (which take the job's view and the caller's
//! [`Viewer`]). A new read path (events, the UI) calls [`may_read`] too; nothing else compares
//! owners or visibility.
//!
//! Invariants:
//! - Decisions use the owner's [`PrincipalId`], never a name: two tokens with the same name
//!   but different users are different viewers, and tokens of one user are one viewer.
//! - Admins read and cancel every job. An agent token reads no job through these paths.
//! - A user reads: their own jobs; public jobs; group jobs when a member of one of the job's
//!   groups. A group job with no group (from older controllers) is owner-only.
//! - Only the owner and admins cancel (group members and the public read only).
//! - A person's lease is seen, renewed and released only by its holder (the principal that
//!   requested it) and admins ([`may_use_lease`]); an admin who is not the holder ends it
//!   as an admin ([`LeaseEnd::EndedBy`], stored in the event log: audited).
//! - Pure: no I/O, no clock; the caller brings the viewer's groups.

use proto::api::JobView;
use proto::{GroupName, JobId, LeaseEnd, PersonLeaseId, PrincipalId, Role, Visibility};
use std::collections::BTreeSet;
use std::fmt;

/// Who asks: a user with a role and their groups at the time of the request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Viewer {
    pub principal: PrincipalId,
    /// The user's name, for messages.
    pub name: String,
    pub role: Role,
    pub groups: BTreeSet<GroupName>,
    /// Where the request came from, for the audit of admin actions (`None`: unknown).
    pub remote: Option<std::net::SocketAddr>,
}

/// Why a viewer may not do something with a job; the message says who may.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job {job} {reason}")]
pub struct Denied {
    pub job: JobId,
    pub reason: Why,
}

/// The rule that refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// Personal (or a group job of no group): owner and admins only.
    Personal,
    /// Group: the viewer is in none of these groups.
    NotInGroup(Vec<GroupName>),
    /// Agent tokens read no jobs.
    Agent,
    /// Cancel: owner and admins only.
    NotOwner { owner: String },
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Personal => f.write_str("is personal to its owner"),
            Why::NotInGroup(groups) => {
                let names: Vec<&str> = groups.iter().map(GroupName::as_str).collect();
                write!(
                    f,
                    "is visible to its owner and members of group {} only",
                    names.join(", ")
                )
            }
            Why::Agent => f.write_str("is not readable with an agent token"),
            Why::NotOwner { owner } => write!(
                f,
                "belongs to {owner}; only its owner or an admin may cancel it"
            ),
        }
    }
}

/// Whether `viewer` may read `job` (its view, definition, logs, results, artifacts, updates).
pub fn may_read(job: &JobView, viewer: &Viewer) -> Result<(), Denied> {
    let deny = |reason| {
        Err(Denied {
            job: job.id,
            reason,
        })
    };
    match viewer.role {
        Role::Admin => return Ok(()),
        Role::Agent => return deny(Why::Agent),
        Role::User => {}
    }
    if job.owner_id == viewer.principal {
        return Ok(());
    }
    match &job.visibility {
        Visibility::Public => Ok(()),
        Visibility::Personal => deny(Why::Personal),
        Visibility::Group(groups) if groups.is_empty() => deny(Why::Personal),
        Visibility::Group(groups) => {
            if groups.iter().any(|g| viewer.groups.contains(g)) {
                Ok(())
            } else {
                deny(Why::NotInGroup(groups.clone()))
            }
        }
    }
}

/// Whether `viewer` may cancel `job`: [`may_read`], and the owner or an admin.
pub fn may_cancel(job: &JobView, viewer: &Viewer) -> Result<(), Denied> {
    may_read(job, viewer)?;
    if viewer.role == Role::Admin || job.owner_id == viewer.principal {
        Ok(())
    } else {
        Err(Denied {
            job: job.id,
            reason: Why::NotOwner {
                owner: job.owner.clone(),
            },
        })
    }
}

/// Why a viewer may not use a person's lease.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "lease {lease} is held by {holder}; only its holder or an admin may see, renew or release it"
)]
pub struct LeaseDenied {
    pub lease: PersonLeaseId,
    pub holder: String,
}

/// Whether `viewer` may see, renew or release lease `lease` held by principal `holder`
/// (named `holder_name`): its holder and admins only; agent tokens never.
pub fn may_use_lease(
    lease: PersonLeaseId,
    holder: PrincipalId,
    holder_name: &str,
    viewer: &Viewer,
) -> Result<(), LeaseDenied> {
    match viewer.role {
        Role::Admin => Ok(()),
        Role::User if viewer.principal == holder => Ok(()),
        Role::User | Role::Agent => Err(LeaseDenied {
            lease,
            holder: holder_name.to_owned(),
        }),
    }
}

/// How a lease that `viewer` ends has ended: released by its holder, or ended by an admin.
pub fn lease_end(holder: PrincipalId, viewer: &Viewer) -> LeaseEnd {
    if viewer.principal == holder && viewer.role != Role::Agent {
        LeaseEnd::Released
    } else {
        LeaseEnd::EndedBy(viewer.name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_holder_and_admins_use_a_lease() {
        let v = |p: u64, role| Viewer {
            principal: PrincipalId(p),
            name: format!("u{p}"),
            role,
            groups: BTreeSet::new(),
            remote: None,
        };
        let l = PersonLeaseId(3);
        assert!(may_use_lease(l, PrincipalId(1), "u1", &v(1, Role::User)).is_ok());
        assert!(may_use_lease(l, PrincipalId(1), "u1", &v(9, Role::Admin)).is_ok());
        let denied = may_use_lease(l, PrincipalId(1), "u1", &v(2, Role::User)).expect_err("other");
        assert!(denied.to_string().contains("held by u1"), "{denied}");
        assert!(may_use_lease(l, PrincipalId(1), "u1", &v(1, Role::Agent)).is_err());
        assert_eq!(
            lease_end(PrincipalId(1), &v(1, Role::User)),
            LeaseEnd::Released
        );
        assert_eq!(
            lease_end(PrincipalId(1), &v(9, Role::Admin)),
            LeaseEnd::EndedBy("u9".into())
        );
    }
    use proto::{JobState, Millis};

    fn group(name: &str) -> GroupName {
        GroupName::new(name).expect("group name")
    }

    fn job(owner: u64, visibility: Visibility) -> JobView {
        JobView {
            id: JobId(7),
            name: "j".into(),
            device_type: "qemu".into(),
            tags: Vec::new(),
            priority: 50,
            visibility,
            owner: format!("user{owner}"),
            owner_id: PrincipalId(owner),
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
            warnings: Vec::new(),
        }
    }

    fn viewer(id: u64, role: Role, groups: &[&str]) -> Viewer {
        Viewer {
            principal: PrincipalId(id),
            // Same name for everyone: names decide nothing.
            name: "ci".into(),
            role,
            groups: groups.iter().map(|g| group(g)).collect(),
            remote: None,
        }
    }

    #[test]
    fn personal_jobs_are_the_owners_whatever_the_names() {
        let j = job(1, Visibility::Personal);
        assert_eq!(may_read(&j, &viewer(1, Role::User, &[])), Ok(()));
        let denied = may_read(&j, &viewer(2, Role::User, &["qa"])).expect_err("not owner");
        assert_eq!(denied.to_string(), "job 7 is personal to its owner");
        assert_eq!(may_read(&j, &viewer(2, Role::Admin, &[])), Ok(()));
        assert_eq!(may_cancel(&j, &viewer(1, Role::User, &[])), Ok(()));
        assert!(may_cancel(&j, &viewer(2, Role::User, &[])).is_err());
    }

    #[test]
    fn group_jobs_are_read_by_members_and_cancelled_by_the_owner() {
        let j = job(1, Visibility::Group(vec![group("qa"), group("kernel")]));
        assert_eq!(may_read(&j, &viewer(2, Role::User, &["kernel"])), Ok(()));
        let denied = may_read(&j, &viewer(3, Role::User, &["docs"])).expect_err("not member");
        assert_eq!(
            denied.reason,
            Why::NotInGroup(vec![group("qa"), group("kernel")])
        );
        let denied = may_cancel(&j, &viewer(2, Role::User, &["qa"])).expect_err("member only");
        assert!(denied.to_string().contains("only its owner or an admin"));
        assert_eq!(may_cancel(&j, &viewer(9, Role::Admin, &[])), Ok(()));
    }

    #[test]
    fn a_group_job_of_no_group_is_personal() {
        let j = job(1, Visibility::Group(Vec::new()));
        assert_eq!(
            may_read(&j, &viewer(2, Role::User, &["qa"])).map_err(|d| d.reason),
            Err(Why::Personal)
        );
    }

    #[test]
    fn public_jobs_are_read_by_users_not_agents() {
        let j = job(1, Visibility::Public);
        assert_eq!(may_read(&j, &viewer(2, Role::User, &[])), Ok(()));
        assert!(may_cancel(&j, &viewer(2, Role::User, &[])).is_err());
        assert_eq!(
            may_read(&j, &viewer(1, Role::Agent, &[])).map_err(|d| d.reason),
            Err(Why::Agent)
        );
    }
}
