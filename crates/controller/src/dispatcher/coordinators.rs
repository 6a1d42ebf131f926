//! MultiNode coordinators: the lab's side of `lava-send`, `lava-wait`, `lava-wait-all` and
//! `lava-sync` for groups whose sub-jobs run on agents.
//!
//! ```text
//!  agent: MultinodeCall{lease, epoch, seq, call}
//!     │ only from the link holding the lease (agent_said), epoch checked here
//!     v
//!  member = the lease's sub-job's index in its group (never from the message)
//!     │ coordinator of the group (memory, else the stored one, else new from the job file)
//!     v
//!  coordinator.call(member, seq, call) ─> new call? store the whole state ─> replies due
//!     │                                                                      │
//!     └─ a repeat: the stored reply again, nothing stored                     v
//!                                       MultinodeReply{lease, epoch, seq} to each member's
//!                                       device (whichever agent and controller holds it)
//! ```
//!
//! Invariants:
//! - A member is named by its lease: an agent can only call for the sub-jobs it runs, as the
//!   member the controller assigned. A call for a live lease of a job that is no sub-job is
//!   answered with its `nack` (so the helper in the DUT does not hang); a call for a lease
//!   that is not live is dropped (the agent is told to drop the lease elsewhere).
//! - The coordinator's state is stored before any reply it made due is sent (after a failed
//!   store nothing is sent and the coordinator is dropped from memory, so the next call reads
//!   the stored state; the agent's resend retries).
//!   A controller restarted mid-group rebuilds the coordinator from the store: a member's
//!   repeated call gets the reply it had, waiting calls still wait, no message is lost.
//! - Replies go to live sub-jobs only; a finished member gets none. When the last sub-job of
//!   a group finishes, its coordinator and its row go.

use super::*;
use multinode::{Call, Coordinator, InstanceId, Member, Reply, Roster};

impl Dispatcher {
    pub(super) async fn multinode_call(
        &mut self,
        agent: &str,
        lease: LeaseId,
        epoch: Epoch,
        seq: u64,
        call: Call,
    ) -> Result<(), ControllerError> {
        let Some(info) = self.leases.get(lease).filter(|i| i.epoch == epoch) else {
            tracing::debug!("agent {agent}: multinode call for lease {lease} not live");
            return Ok(());
        };
        let job = info.job;
        let Some(group) = self.sched.group_of(job).cloned() else {
            tracing::warn!("agent {agent}: job {job} is no sub-job and made a multinode call");
            let reply = nack(&call);
            self.send(
                agent,
                ControllerMessage::MultinodeReply {
                    lease,
                    epoch,
                    seq,
                    reply,
                },
            );
            return Ok(());
        };
        let coordinator = match self.coordinators.remove(&group.id) {
            Some(c) => c,
            None => match self.store.coordinator(group.id).await? {
                Some(c) => c,
                None => Coordinator::new(self.roster(group.id, group.size, job)),
            },
        };
        let me = InstanceId(group.index);
        let new = coordinator.is_new(me, seq);
        let mut coordinator = coordinator;
        let due = coordinator.call(me, seq, call);
        if new && let Err(e) = self.store.save_coordinator(group.id, &coordinator).await {
            // Not kept in memory: the next call reads the stored state (as it was before this
            // call), and the agent's resend applies this one again.
            return Err(e.into());
        }
        self.coordinators.insert(group.id, coordinator);
        for (member, seq, reply) in due {
            self.reply_to_member(group.id, member, seq, reply);
        }
        Ok(())
    }

    /// The group's roster from its job file: members `ID.0`, `ID.1`, ... with their roles.
    fn roster(&self, group: JobId, size: u32, member: JobId) -> Roster {
        let roles: Vec<String> = self
            .jobs
            .get(&member)
            .and_then(|m| m.definition.as_deref())
            .and_then(|text| jobspec::parse_job("job.yaml", text).ok())
            .map(|job| {
                jobspec::multinode::instances(&job)
                    .into_iter()
                    .map(|i| i.role)
                    .collect()
            })
            .unwrap_or_default();
        Roster {
            members: (0..size)
                .map(|i| Member {
                    name: format!("{group}.{i}"),
                    role: roles.get(i as usize).cloned().unwrap_or_default(),
                })
                .collect(),
        }
    }

    /// Sends `reply` to call `seq` of member `member` of `group`, if that sub-job runs.
    fn reply_to_member(&self, group: JobId, member: InstanceId, seq: u64, reply: Reply) {
        let job = JobId(group.0 + u64::from(member.0));
        let Some(entry) = self.sched.job(job) else {
            return;
        };
        let (Some(lease), Some(device)) = (entry.lease, entry.device.as_deref()) else {
            return;
        };
        let Some(l) = self.sched.lease(lease) else {
            return;
        };
        if !self.sched.is_live(lease, l.epoch) {
            return;
        }
        self.send_to_device(
            device,
            ControllerMessage::MultinodeReply {
                lease,
                epoch: l.epoch,
                seq,
                reply,
            },
        );
    }

    /// After a sub-job finished: when its whole group has, its coordinator goes.
    pub(super) async fn sub_job_finished(&mut self, job: JobId) {
        let Some(group) = self.sched.group_of(job).cloned() else {
            return;
        };
        let all_done = (0..group.size).all(|i| {
            self.sched
                .job(JobId(group.id.0 + u64::from(i)))
                .is_none_or(|e| e.outcome.is_some())
        });
        if !all_done {
            return;
        }
        self.coordinators.remove(&group.id);
        if let Err(e) = self.store.drop_coordinator(group.id).await {
            tracing::warn!("group {}: cannot drop its coordinator: {e}", group.id);
        }
    }
}

/// The refusal of `call` (the runner types LAVA's nack line, or ends the test for a send).
fn nack(call: &Call) -> Reply {
    Reply::Nack {
        call: call.kind(),
        reason: multinode::NackReason::Invalid,
    }
}
