//! The main loop's handling of its job and session tasks' notes: spooled records, MultiNode
//! calls, a job's end (its report kept until the controller acknowledges it) or a crashed task.

use super::*;

impl Agent {
    pub(super) async fn on_notes(
        &mut self,
        first: JobNote,
        link: &mut Link,
    ) -> Result<(), LinkDown> {
        self.on_note(first, Some(link)).await?;
        for _ in 0..NOTES_PER_TURN {
            match self.notes.try_recv() {
                Ok(note) => self.on_note(note, Some(link)).await?,
                Err(_) => break,
            }
        }
        Ok(())
    }

    pub(super) async fn on_note(
        &mut self,
        note: JobNote,
        link: Option<&mut Link>,
    ) -> Result<(), LinkDown> {
        let (id, report, last_seq) = match note {
            JobNote::Session(note) => return self.on_session_note(note, link).await,
            JobNote::Multinode {
                lease,
                seq,
                call,
                reply,
            } => return self.multinode_call(lease, seq, call, reply, link).await,
            JobNote::Spooled { lease, last } => {
                if let Some(l) = self.leases.get_mut(&lease) {
                    l.spooled = l.spooled.max(last);
                }
                return Ok(());
            }
            JobNote::Finished {
                lease,
                report,
                last_seq,
            } => {
                self.connection_ended(lease);
                self.leave_net(lease);
                (lease, report, last_seq)
            }
            JobNote::Crashed { lease, reason } => {
                self.connection_ended(lease);
                self.leave_net(lease);
                let Some(l) = self.leases.get(&lease) else {
                    return Ok(());
                };
                let report = JobReport {
                    job_name: format!("job-{}", l.job),
                    outcome: Outcome::InfraError,
                    reason: format!("the agent's job task failed: {reason}"),
                    cases: Vec::new(),
                    duration_s: 0.0,
                };
                let meta = Meta {
                    lease,
                    epoch: l.epoch,
                    job: l.job,
                    device: l.device.clone(),
                    job_name: None,
                    phase: Phase::Finished {
                        report: report.clone(),
                        last_seq: l.spooled,
                    },
                };
                if let Err(e) = self.spool.write_meta(&meta) {
                    tracing::warn!(%lease, "cannot record the report in the spool: {e}");
                }
                (lease, report, l.spooled)
            }
        };
        let Some(lease) = self.leases.get_mut(&id) else {
            return Ok(());
        };
        tracing::info!(
            lease = %id, job = %lease.job, device = %lease.device,
            "job ended: {}{}{}",
            report.outcome,
            if report.reason.is_empty() { "" } else { ": " },
            report.reason
        );
        lease.spooled = lease.spooled.max(last_seq);
        lease.state = LeaseState::Finished { report, last_seq };
        let device = lease.device.clone();
        let fate = lease.fate;
        if self.devices.get(&device) == Some(&Slot::Busy(id)) {
            self.devices.insert(device.clone(), Slot::Idle);
        }
        if fate == Fate::Forget {
            self.delete(id);
            self.ready_unsent.insert(device);
            if let Some(link) = link {
                self.send_ready(link).await?;
            }
        }
        Ok(())
    }
}
