//! The main loop's start of a job: checks, the spool's meta, the job task.

use super::*;

impl Agent {
    pub(super) async fn start_job(
        &mut self,
        id: LeaseId,
        epoch: Epoch,
        job: JobId,
        device: String,
        (definition, sub_job): (String, Option<proto::link::SubJob>),
        link: &mut Link,
    ) -> Result<(), LinkDown> {
        let refuse = |reason: String| AgentMessage::StartRefused {
            lease: id,
            epoch,
            reason,
        };
        if let Some(existing) = self.leases.get(&id) {
            // A repeated StartJob (the controller did not hear JobStarted): say it again.
            if existing.epoch == epoch
                && existing.device == device
                && matches!(existing.state, LeaseState::Running { .. })
            {
                return link
                    .send(&AgentMessage::JobStarted { lease: id, epoch })
                    .await;
            }
            tracing::debug!(lease = %id, "ignoring start-job for a lease already held");
            return Ok(());
        }
        // A secondary connection rides on its host's device, which its host keeps busy.
        let rider = sub_job.as_ref().is_some_and(|s| s.host.is_some());
        let spec = match self.admit(&device, rider) {
            Ok(spec) => spec,
            Err(reason) => return link.send(&refuse(reason)).await,
        };
        let meta = Meta {
            lease: id,
            epoch,
            job,
            device: device.clone(),
            job_name: None,
            phase: Phase::Running,
        };
        let writer = match self.spool.create(meta) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(lease = %id, "cannot create the spool: {e}");
                let _ = self.spool.remove(id);
                return link
                    .send(&refuse(format!(
                        "agent {} cannot spool the job's log: {e}",
                        self.config.name
                    )))
                    .await;
            }
        };
        let side = match self.connection_side(id, sub_job.as_ref()) {
            Ok(side) => side,
            Err(reason) => {
                drop(writer);
                let _ = self.spool.remove(id);
                return link.send(&refuse(reason)).await;
            }
        };
        let (stop, stop_rx) = watch::channel(Stop::Go);
        self.leases.insert(
            id,
            Lease {
                epoch,
                job,
                device: device.clone(),
                state: LeaseState::Running { stop },
                fate: Fate::Report,
                spooled: Seq(0),
                sent: Seq(0),
                report_sent: ReportSent::No,
                reader: self.spool.reader(id),
                call: None,
                // Bridged when the group has sub-jobs with DUTs on other agents.
                net: sub_job
                    .as_ref()
                    .filter(|s| s.host.is_none() && s.reach == proto::link::GroupReach::Lab)
                    .map(|s| s.group),
            },
        );
        if let Some(group) = self.leases.get(&id).and_then(|l| l.net) {
            self.join_net(group);
        }
        let device_dir = if rider {
            self.config
                .device_dir(&device)
                .join("connections")
                .join(id.to_string())
        } else {
            self.devices.insert(device.clone(), Slot::Busy(id));
            self.config.device_dir(&device)
        };
        let start = JobStart {
            agent: self.config.name.clone(),
            lease: id,
            epoch,
            job,
            device: spec,
            definition,
            sub_job,
            device_dir,
            secondary: side.secondary,
            publish_ssh: side.publish_ssh,
            authorized_keys: side.authorized_keys,
            host: self.config.host.clone(),
            artifacts: self.artifacts.clone(),
            group_salt: self.group_salt,
        };
        spawn_job(start, writer, self.notes_tx.clone(), stop_rx);
        tracing::info!(lease = %id, %job, %device, %epoch, "job started");
        link.send(&AgentMessage::JobStarted { lease: id, epoch })
            .await
    }
}
