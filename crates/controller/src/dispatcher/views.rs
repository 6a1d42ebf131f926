//! Read views: jobs, devices and agents as the API shows them, filtered by [`policy`].
//!
//! Invariant: every job a request sees passed [`policy::may_read`] for its viewer.

use super::*;

impl Dispatcher {
    pub(super) fn view(&self, job: JobId) -> Option<JobView> {
        let entry = self.sched.job(job)?;
        let meta = self.jobs.get(&job)?;
        Some(JobView {
            id: job,
            name: meta.name.clone(),
            device_type: entry.spec.device_type.clone(),
            tags: entry.spec.tags.clone(),
            priority: entry.spec.priority,
            visibility: meta.visibility.clone(),
            owner: meta.owner_name.clone(),
            owner_id: meta.owner,
            state: entry.state,
            outcome: entry.outcome,
            reason: entry.reason.clone(),
            device: entry.device.clone(),
            submitted_at: entry.submitted,
            started_at: entry.started,
            finished_at: entry.finished,
            warnings: meta.warnings.clone(),
            position: self.sched.queue_position(job),
            // Filled in by what a request reads (`visible`, `job_views`), not for followers:
            // the estimate walks the whole queue.
            estimated_start: None,
            retry: entry.spec.retry,
            retry_of: entry.spec.retry_of,
            retried_as: self.retried_as(job),
            avoid_devices: entry.spec.avoid.clone(),
            group: self.job_group(job),
        })
    }

    /// The group of a sub-job, with every sub-job's id and role.
    fn job_group(&self, job: JobId) -> Option<proto::api::JobGroup> {
        let g = self.sched.group_of(job)?;
        let jobs = self
            .sched
            .group(g.id)?
            .iter()
            .map(|m| proto::api::GroupMember {
                job: *m,
                role: self
                    .sched
                    .group_of(*m)
                    .map(|r| r.role.clone())
                    .unwrap_or_default(),
            })
            .collect();
        Some(proto::api::JobGroup {
            id: g.id,
            index: g.index,
            role: g.role.clone(),
            jobs,
        })
    }

    /// Sets the estimated start of queued views ([`Scheduler::estimated_starts`], one walk).
    fn estimate(&self, views: &mut [JobView]) {
        if views.iter().all(|v| v.position.is_none()) {
            return;
        }
        let starts = self.sched.estimated_starts(now());
        for v in views.iter_mut().filter(|v| v.position.is_some()) {
            v.estimated_start = starts.get(&scheduler::Waiter::Job(v.id)).copied();
        }
    }

    /// True when `job` has a live lease held by the current link of agent `agent`, and that
    /// link was opened with the token `token_id` (the identity checks of job messages: the
    /// link holding the lease speaks for it, nobody else).
    pub(super) fn holds_job(&self, job: JobId, agent: &str, token_id: &str) -> bool {
        let Some(entry) = self.sched.job(job) else {
            return false;
        };
        let (Some(lease), Some(device)) = (entry.lease, entry.device.as_deref()) else {
            return false;
        };
        let Some(info) = self.leases.get(lease) else {
            return false;
        };
        if info.job != job {
            return false;
        }
        if self.sched.device(device).is_none_or(|d| d.agent != agent) {
            return false;
        }
        let Some(link) = self.agents.get(agent) else {
            return false;
        };
        match (&link.conn, info.conn) {
            (Some((current, _)), Some(holder)) => *current == holder && link.token_id == token_id,
            _ => false,
        }
    }

    /// The job's view, if `viewer` may read it ([`policy::may_read`]).
    pub(super) fn visible(&self, job: JobId, viewer: &Viewer) -> Result<JobView, Failure> {
        let view = self
            .view(job)
            .ok_or_else(|| Failure::NotFound(format!("job {job} does not exist")))?;
        policy::may_read(&view, viewer).map_err(|d| Failure::Forbidden(d.to_string()))?;
        let mut views = [view];
        self.estimate(&mut views);
        let [view] = views;
        Ok(view)
    }

    /// The newest `limit` jobs `viewer` may read, in `state` if given.
    pub(super) fn job_views(
        &self,
        viewer: &Viewer,
        state: Option<JobState>,
        limit: usize,
    ) -> Vec<JobView> {
        let mut views = self
            .jobs
            .keys()
            .rev()
            .filter_map(|id| self.view(*id))
            .filter(|v| policy::may_read(v, viewer).is_ok())
            .filter(|v| state.is_none_or(|s| v.state == s))
            .take(limit)
            .collect::<Vec<_>>();
        self.estimate(&mut views);
        views
    }

    pub(super) fn device_views(&self) -> Vec<DeviceView> {
        self.sched.devices().map(|d| self.device_view(d)).collect()
    }

    pub(super) fn device_view(&self, d: &scheduler::DeviceEntry) -> DeviceView {
        DeviceView {
            name: d.info.name.clone(),
            device_type: d.info.device_type.clone(),
            tags: d.info.tags.clone(),
            capabilities: d.info.capabilities.clone(),
            state: d.state,
            agent: d.agent.clone(),
            job: d
                .lease
                .and_then(|l| self.sched.lease(l))
                .and_then(|l| l.job()),
            lease: d
                .lease
                .and_then(|l| self.sched.lease(l))
                .and_then(|l| l.holder.person().map(|p| p.lease)),
            holder: d
                .lease
                .and_then(|l| self.sched.lease(l))
                .map(|l| match &l.holder {
                    scheduler::Holder::Job(job) => format!("job {job}"),
                    scheduler::Holder::Person(p) => p.name.clone(),
                }),
            set: self
                .sched
                .out_of_service(&d.info.name)
                .map(super::devices::note_view),
        }
    }

    /// Agents with their devices' states. A connected agent not heard from for more than two
    /// heartbeat intervals is `silent` (its leases still run to their TTL, its idle devices
    /// take no work): the scheduler's stored presence, so every controller shows the same.
    pub(super) fn agent_views(&self) -> Vec<AgentView> {
        let mut views: BTreeMap<String, AgentView> = BTreeMap::new();
        for d in self.sched.devices() {
            let link = self.agents.get(&d.agent);
            let last_seen = link.map_or(Millis(0), |l| l.last_seen);
            let view = views.entry(d.agent.clone()).or_insert_with(|| AgentView {
                name: d.agent.clone(),
                state: self
                    .sched
                    .agent_presence(&d.agent)
                    .unwrap_or(AgentState::Disconnected),
                version: link.map(|l| l.version.clone()).unwrap_or_default(),
                devices: Vec::new(),
                device_states: Vec::new(),
                last_seen,
            });
            view.devices.push(d.info.name.clone());
            view.device_states.push(proto::api::AgentDevice {
                name: d.info.name.clone(),
                state: d.state,
            });
        }
        views.into_values().collect()
    }
}
