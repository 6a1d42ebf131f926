//! MultiNode groups in the state machine test: submitting them, and their invariants
//! (listed in the test's module docs).

use super::*;
use dutlab_scheduler::GroupRef;

impl Harness {
    pub(super) fn submit_group(
        &mut self,
        roles: &[(usize, u8)],
        priority: u8,
        owner: Option<usize>,
        now: Millis,
    ) -> Result<Vec<Event>, Refusal> {
        let lead = JobId(self.next_job);
        let size = roles.len() as u32;
        let jobs: Vec<(JobId, JobSpec)> = roles
            .iter()
            .enumerate()
            .map(|(i, (ty, t))| {
                let spec = JobSpec {
                    device_type: TYPES[*ty].into(),
                    tags: tags(*t),
                    priority,
                    owner: owner.map(|o| PrincipalId(PEOPLE[o].0)),
                    group: Some(GroupRef {
                        id: lead,
                        index: i as u32,
                        size,
                        role: format!("role{}", i % 2),
                        // In groups of three or more, the last sub-job is a secondary
                        // connection riding on sub-job 0's device.
                        host: (size >= 3 && i as u32 == size - 1).then_some(0),
                    }),
                    ..JobSpec::default()
                };
                (JobId(lead.0 + i as u64), spec)
            })
            .collect();
        self.next_job += u64::from(size);
        let r = self.s.submit_group(jobs, now);
        let events = r.as_ref().expect("a valid group is accepted");
        let submitted = events
            .iter()
            .filter(|e| e.kind() == "job-submitted")
            .count();
        assert_eq!(submitted, roles.len(), "one job-submitted per sub-job");
        assert_eq!(self.s.group(lead).map(<[JobId]>::len), Some(roles.len()));
        r
    }

    /// Whether `waiter` leads a group.
    pub(super) fn is_group(&self, waiter: Waiter) -> bool {
        matches!(waiter, Waiter::Job(job) if self.s.group(job).is_some())
    }

    /// Whether every sub-job of the group led by `waiter` could have its own device among
    /// `idle` (by trying every assignment).
    pub(super) fn placeable(&self, waiter: Waiter, idle: &[&DeviceInfo]) -> bool {
        let Waiter::Job(lead) = waiter else {
            return false;
        };
        let specs: Vec<&JobSpec> = self
            .s
            .group(lead)
            .unwrap_or_default()
            .iter()
            .filter_map(|j| self.s.job(*j))
            .map(|j| &j.spec)
            .filter(|s| s.group.as_ref().is_none_or(|g| g.host.is_none()))
            .collect();
        fn fill(specs: &[&JobSpec], idle: &[&DeviceInfo], used: &mut Vec<bool>) -> bool {
            let Some((first, rest)) = specs.split_first() else {
                return true;
            };
            for (i, d) in idle.iter().enumerate() {
                if !used[i] && first.fits(d) {
                    used[i] = true;
                    if fill(rest, idle, used) {
                        return true;
                    }
                    used[i] = false;
                }
            }
            false
        }
        fill(&specs, idle, &mut vec![false; idle.len()])
    }

    /// In one batch, a group's sub-jobs are granted all together or not at all.
    pub(super) fn check_group_grants(&self, events: &[Event]) {
        let mut granted: BTreeMap<JobId, BTreeSet<JobId>> = BTreeMap::new();
        for e in events {
            if let Event::LeaseGranted {
                holder: Holder::Job(job),
                ..
            } = e
                && let Some(g) = self.s.group_of(*job)
            {
                granted.entry(g.id).or_default().insert(*job);
            }
        }
        for (lead, jobs) in granted {
            let members: BTreeSet<JobId> =
                self.s.group(lead).expect("group").iter().copied().collect();
            assert_eq!(jobs, members, "group {lead} partly granted");
        }
    }

    /// After every step: no partial grant, one fate for infra errors and cancels, and a
    /// queued group is one queue entry.
    pub(super) fn check_groups(&self) {
        let mut leads = BTreeSet::new();
        for (id, j) in self.s.jobs() {
            let Some(g) = &j.spec.group else {
                continue;
            };
            leads.insert(g.id);
            let members = self.s.group(g.id).expect("its group");
            assert_eq!(members.get(g.index as usize), Some(&id));
            if g.index != 0 {
                assert_eq!(self.s.serving_key(Waiter::Job(id)), None, "one entry only");
            }
            assert_eq!(
                self.s.queue_position(id),
                self.s.queue_position(g.id),
                "a sub-job's place is its group's"
            );
        }
        for lead in leads {
            let members = self.s.group(lead).expect("group");
            let states: Vec<&dutlab_scheduler::JobEntry> = members
                .iter()
                .map(|m| self.s.job(*m).expect("sub-job"))
                .collect();
            let queued = states
                .iter()
                .filter(|j| j.state == JobState::Queued)
                .count();
            assert!(
                queued == 0 || queued == states.len(),
                "group {lead}: {queued} of {} sub-jobs queued",
                states.len()
            );
            let doomed = states
                .iter()
                .any(|j| matches!(j.outcome, Some(Outcome::InfraError | Outcome::Canceled)));
            if doomed {
                for j in &states {
                    assert!(
                        matches!(j.state, JobState::Finished | JobState::Canceling),
                        "group {lead}: a sub-job ended infra-error or canceled, another is {}",
                        j.state
                    );
                }
            }
        }
    }
}
