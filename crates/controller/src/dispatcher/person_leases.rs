//! People's leases: acquire, show (and wait), list, renew, release. Not the live job leases
//! of [`super::Leases`], which route log frames.
//!
//! Invariants:
//! - Whether a viewer may see, renew or release a lease is decided by
//!   [`policy::may_use_lease`] only; an admin ending someone else's lease is recorded as
//!   [`LeaseEnd::EndedBy`] in the stored event (audited) and logged at warn.
//! - A call that changes an ended lease (renew, release) is 410 Gone and says how and when it
//!   ended; showing it answers its view (state `ended`).
//! - The duration of a grant or renewal is at most the cap of the requester's role, counted
//!   from the grant; expiry is the scheduler's deadline, fired by the dispatcher's deadline
//!   loop (it wakes at the next deadline, at most 1 s apart).
//! - Waiting requests (`wait`) are answered at the commit that grants or ends the lease.

use super::*;
use proto::{LeaseEnd, PersonLeaseState};
use scheduler::Want;

/// Durations of people's leases (`dutlab serve --lease-...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PersonLeaseConfig {
    /// What a request without a duration gets.
    pub default_ttl: Duration,
    /// How long after its grant renewals may keep a user's lease.
    pub user_cap: Duration,
    /// The same for admins.
    pub admin_cap: Duration,
}

impl Default for PersonLeaseConfig {
    fn default() -> PersonLeaseConfig {
        PersonLeaseConfig {
            default_ttl: Duration::from_secs(30 * 60),
            user_cap: Duration::from_secs(8 * 3600),
            admin_cap: Duration::from_secs(24 * 3600),
        }
    }
}

impl PersonLeaseConfig {
    /// The cap of a role.
    pub fn cap(&self, role: Role) -> Duration {
        match role {
            Role::Admin => self.admin_cap,
            Role::User | Role::Agent => self.user_cap,
        }
    }
}

/// A person's request, validated by the API layer (names and tags are safe, priority in
/// range).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct LeaseRequest {
    pub principal: PrincipalId,
    pub name: String,
    pub role: Role,
    pub want: Want,
    pub priority: u8,
    /// `None`: the default duration.
    pub ttl: Option<Duration>,
    /// Public SSH keys for the DUT (checked lines, [`proto::session::check_public_keys`]).
    #[serde(default)]
    pub ssh_keys: Vec<String>,
}

impl Dispatcher {
    pub(super) fn lease_view(&self, id: PersonLeaseId) -> Option<LeaseView> {
        let p = self.sched.person_lease(id)?;
        Some(LeaseView {
            id,
            holder: p.name.clone(),
            holder_id: p.principal,
            state: p.state,
            want_device: p.spec.device.clone(),
            device_type: p.spec.device_type.clone(),
            tags: p.spec.tags.clone(),
            priority: p.spec.priority,
            duration_s: p.ttl_ms / 1000,
            position: self.sched.position(scheduler::Waiter::Person(id)),
            device: p.device.clone(),
            requested_at: p.requested,
            granted_at: p.granted,
            expires_at: p.expires,
            cap_at: p.cap(),
            ended_at: p.ended,
            end: p.end.clone(),
        })
    }

    /// Ends every lease whose deadline has passed before a request looks at one, so a call
    /// that arrives after a deadline but before the deadline loop ran finds it ended (410),
    /// never renewable.
    pub(super) async fn expire_due(&mut self) -> Result<(), Failure> {
        let now = now();
        if self.sched.next_deadline().is_some_and(|d| d <= now) {
            let events = self.sched.tick(now);
            self.commit(events, Vec::new(), None, None)
                .await
                .map_err(|e| Failure::Unavailable(e.to_string()))?;
        }
        Ok(())
    }

    /// The view of a lease `viewer` may use, or why not.
    pub(super) fn usable_lease(
        &self,
        id: PersonLeaseId,
        viewer: &Viewer,
    ) -> Result<LeaseView, Failure> {
        let view = self
            .lease_view(id)
            .ok_or_else(|| Failure::NotFound(format!("lease {id} does not exist")))?;
        policy::may_use_lease(id, view.holder_id, &view.holder, viewer)
            .map_err(|d| Failure::Forbidden(d.to_string()))?;
        Ok(view)
    }

    /// 410 for an ended lease, saying how and when.
    pub(super) fn ended(view: &LeaseView) -> Failure {
        let end = view
            .end
            .as_ref()
            .map_or_else(|| "ended".to_owned(), LeaseEnd::to_string);
        let at = view.ended_at.map_or(String::new(), |t| format!(" at {t}"));
        Failure::Gone(format!(
            "lease {} has ended: {end}{at}; acquire a new lease to use a device again",
            view.id
        ))
    }

    pub(super) async fn acquire_lease(
        &mut self,
        request: LeaseRequest,
    ) -> Result<LeaseView, Failure> {
        let id = PersonLeaseId(self.next_person_lease);
        let cap = self.config.person_leases.cap(request.role);
        // A duration asked for beyond the cap is refused; the default is cut to the cap.
        let ttl = request
            .ttl
            .unwrap_or(self.config.person_leases.default_ttl.min(cap));
        let asked = request.ttl;
        let events = self
            .sched
            .request_person_lease(
                id,
                request.principal,
                &request.name,
                request.want,
                request.priority,
                ttl,
                cap,
                request.ssh_keys,
                now(),
            )
            .map_err(|r| match r {
                Refusal::UnknownDevice(d) => Failure::NotFound(format!(
                    "device: no device named {d:?} is registered (see `dutlab device list`)"
                )),
                Refusal::Duration { ttl_ms, cap_ms } => Failure::BadRequest {
                    message: format!(
                        "duration_s: {} s is not above 0 and at most the cap of role {}, {} s",
                        asked.map_or(ttl_ms / 1000, |d| d.as_secs()),
                        request.role,
                        cap_ms / 1000
                    ),
                    known_device_types: Vec::new(),
                },
                other => Failure::Conflict(other.to_string()),
            })?;
        self.next_person_lease += 1;
        self.commit(events, Vec::new(), None, None)
            .await
            .map_err(|e| Failure::Unavailable(e.to_string()))?;
        tracing::info!("lease {id} requested by {}", request.name);
        self.lease_view(id)
            .ok_or_else(|| Failure::Unavailable(format!("lease {id} vanished after commit")))
    }

    pub(super) fn show_lease(
        &mut self,
        id: PersonLeaseId,
        viewer: &Viewer,
        wait: bool,
        reply: oneshot::Sender<Result<LeaseView, Failure>>,
    ) {
        match self.usable_lease(id, viewer) {
            Ok(view) if wait && view.state == PersonLeaseState::Waiting => {
                let waits = self.lease_waits.entry(id).or_default();
                waits.retain(|w| !w.is_closed());
                waits.push(reply);
            }
            answer => {
                let _ = reply.send(answer);
            }
        }
    }

    /// Answers the requests waiting on `id` (it was granted or ended).
    pub(super) fn lease_changed(&mut self, id: PersonLeaseId) {
        let Some(waits) = self.lease_waits.remove(&id) else {
            return;
        };
        let view = self.lease_view(id);
        for w in waits {
            let answer = view
                .clone()
                .ok_or_else(|| Failure::NotFound(format!("lease {id} does not exist")));
            let _ = w.send(answer);
        }
    }

    pub(super) fn lease_views(&self, viewer: &Viewer, all: bool) -> Vec<LeaseView> {
        self.sched
            .person_leases()
            .filter(|(_, p)| all || p.state != PersonLeaseState::Ended)
            .filter(|(id, p)| policy::may_use_lease(*id, p.principal, &p.name, viewer).is_ok())
            .filter_map(|(id, _)| self.lease_view(id))
            .collect()
    }

    pub(super) async fn renew_lease(
        &mut self,
        id: PersonLeaseId,
        viewer: &Viewer,
        ttl: Option<Duration>,
    ) -> Result<LeaseView, Failure> {
        self.expire_due().await?;
        let view = self.usable_lease(id, viewer)?;
        if view.state == PersonLeaseState::Ended {
            return Err(Self::ended(&view));
        }
        let ttl = ttl.unwrap_or(Duration::from_secs(view.duration_s));
        let events = self
            .sched
            .renew_person_lease(id, ttl, now())
            .map_err(|r| Failure::Conflict(r.to_string()))?;
        self.commit(events, Vec::new(), None, None)
            .await
            .map_err(|e| Failure::Unavailable(e.to_string()))?;
        self.usable_lease(id, viewer)
    }

    pub(super) async fn release_lease(
        &mut self,
        id: PersonLeaseId,
        viewer: &Viewer,
    ) -> Result<LeaseView, Failure> {
        self.expire_due().await?;
        let view = self.usable_lease(id, viewer)?;
        if view.state == PersonLeaseState::Ended {
            return Err(Self::ended(&view));
        }
        let end = policy::lease_end(view.holder_id, viewer);
        if let LeaseEnd::EndedBy(admin) = &end {
            tracing::warn!("lease {id} of {}: ended by admin {admin}", view.holder);
        }
        let by_admin = matches!(end, LeaseEnd::EndedBy(_));
        let events = self
            .sched
            .end_person_lease(id, end, now())
            .map_err(|r| Failure::Conflict(r.to_string()))?;
        if by_admin {
            let detail = format!("ended the lease of {}", view.holder);
            let target = format!("lease {id}");
            self.audit(viewer, proto::admin::AuditAction::LeaseEnd, &target, detail);
        }
        self.commit(events, Vec::new(), None, None)
            .await
            .map_err(|e| Failure::Unavailable(e.to_string()))?;
        self.usable_lease(id, viewer)
    }
}
