//! The main loop's side of MultiNode: each running sub-job's unanswered call, sent on the
//! link that is up, sent again after every hello, and its reply handed to the job task.
//!
//! Invariants:
//! - A lease keeps at most one call: a newer one replaces it (its runner stopped waiting
//!   for the older one, whose reply channel is dropped).
//! - A reply reaches the job only for the lease and epoch it names and the seq the lease
//!   still waits for; any other reply is ignored.

use super::*;

/// A call of a job task waiting for its reply.
#[derive(Debug)]
pub(super) struct PendingCall {
    seq: u64,
    call: ::multinode::Call,
    reply: tokio::sync::oneshot::Sender<::multinode::Reply>,
}

impl Agent {
    /// A job's MultiNode call: kept until answered, and sent now if the link is up.
    pub(super) async fn multinode_call(
        &mut self,
        id: LeaseId,
        seq: u64,
        call: ::multinode::Call,
        reply: tokio::sync::oneshot::Sender<::multinode::Reply>,
        link: Option<&mut Link>,
    ) -> Result<(), LinkDown> {
        let Some(lease) = self.leases.get_mut(&id) else {
            return Ok(());
        };
        let message = AgentMessage::MultinodeCall {
            lease: id,
            epoch: lease.epoch,
            seq,
            call: call.clone(),
        };
        lease.call = Some(PendingCall { seq, call, reply });
        match link {
            Some(link) => link.send(&message).await,
            None => Ok(()),
        }
    }

    /// Sends the calls not answered on the last connection again: the coordinator answers a
    /// repeat (once more if it had answered it already).
    pub(super) async fn resend_calls(&mut self, link: &mut Link) -> Result<(), LinkDown> {
        let calls: Vec<AgentMessage> = self
            .leases
            .iter()
            .filter(|(_, l)| matches!(l.state, LeaseState::Running { .. }))
            .filter_map(|(id, l)| {
                l.call.as_ref().map(|p| AgentMessage::MultinodeCall {
                    lease: *id,
                    epoch: l.epoch,
                    seq: p.seq,
                    call: p.call.clone(),
                })
            })
            .collect();
        for call in calls {
            link.send(&call).await?;
        }
        Ok(())
    }

    /// `MultinodeReply`: to the job task waiting for call `seq` of `lease`.
    pub(super) fn multinode_reply(
        &mut self,
        lease: LeaseId,
        epoch: Epoch,
        seq: u64,
        reply: ::multinode::Reply,
    ) {
        if self.known(lease, epoch, "multinode-reply").is_none() {
            return;
        }
        if let Some(l) = self.leases.get_mut(&lease)
            && l.call.as_ref().is_some_and(|p| p.seq == seq)
            && let Some(pending) = l.call.take()
        {
            let _ = pending.reply.send(reply);
        }
    }
}
