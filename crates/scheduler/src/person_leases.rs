//! The transitions of people's leases that are theirs alone: a request enters the queue, a
//! lease (or its request) ends. Grants and releases are shared with jobs (`state.rs`).

use crate::error::SchedulerError;
use crate::event::{MAX_PRIORITY, Waiter};
use crate::state::{PersonLease, Scheduler, remove_from};
use proto::{LeaseEnd, Millis, PersonLeaseId, PersonLeaseState};

impl Scheduler {
    /// `person-lease-requested`: a new waiter.
    pub(crate) fn apply_person_requested(
        &mut self,
        person: PersonLeaseId,
        request: PersonLease,
    ) -> Result<(), SchedulerError> {
        if self.state.persons.contains_key(&person) {
            return Err(SchedulerError::DuplicatePersonLease(person));
        }
        if request.spec.priority > MAX_PRIORITY {
            return Err(SchedulerError::Priority(request.spec.priority));
        }
        self.enqueue(Waiter::Person(person), &request.spec);
        self.state.persons.insert(person, request);
        Ok(())
    }

    /// `person-lease-ended`: it leaves the queue; a held lease stays live until the
    /// `lease-released` that follows.
    pub(crate) fn apply_person_ended(
        &mut self,
        person: PersonLeaseId,
        end: &LeaseEnd,
        at: Millis,
    ) -> Result<(), SchedulerError> {
        const KIND: &str = "person-lease-ended";
        let entry =
            self.state
                .persons
                .get_mut(&person)
                .ok_or(SchedulerError::UnknownPersonLease {
                    event: KIND,
                    lease: person,
                })?;
        if entry.state == PersonLeaseState::Ended {
            return Err(SchedulerError::PersonLeaseState {
                event: KIND,
                lease: person,
                state: entry.state,
            });
        }
        let ty = entry.spec.device_type.clone();
        entry.state = PersonLeaseState::Ended;
        entry.end = Some(end.clone());
        entry.ended = Some(at);
        let lease = entry.lease;
        if let Some(key) = self.state.places.remove(&Waiter::Person(person)) {
            remove_from(&mut self.state.queue, &ty, &key);
        }
        self.fresh.waiters.remove(&Waiter::Person(person));
        if let Some(lease) = lease {
            self.redeadline(lease);
        }
        Ok(())
    }
}
