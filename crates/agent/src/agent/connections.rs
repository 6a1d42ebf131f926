//! Secondary connections on this agent: a MultiNode sub-job with guests (`SubJob::guests`)
//! authorizes its group's key on its DUT and publishes the DUT's SSH endpoint; each guest
//! (`SubJob::host`, a rider lease on the host's device) logs in through that endpoint.
//!
//! Invariants:
//! - A guest starts only while its host's sub-job runs here: the scheduler grants riders
//!   right after their host, so the host's `StartJob` comes first; a guest without its host
//!   on this agent is refused (its group then ends, one fate).
//! - One key pair per group, made here and never sent anywhere: the private half goes to the
//!   guests' runners (their work directory, 0600), the public half to the host's DUT.
//! - A guest's end is counted once on its host's endpoint (the host powers its DUT off only
//!   when every guest ended, or at its job timeout); the host's end forgets the group.
//! - A guest's work directory is its own (`devices/<device>/connections/<lease>`), beside
//!   the host's, so the agent's start-up cleanup covers it.

use super::*;
use runner::secondary::{GUEST_USER, HostEndpoint, SecondaryContext, SshRoute};

/// A group's host sub-job running here.
struct GroupHost {
    lease: LeaseId,
    endpoint: HostEndpoint,
    keys: runner::ssh::KeyPair,
}

/// The groups whose hosts run here, and the guests riding on them.
#[derive(Default)]
pub(super) struct Connections {
    hosts: BTreeMap<JobId, GroupHost>,
    /// Guest lease -> its group.
    guests: BTreeMap<LeaseId, JobId>,
}

/// A sub-job's side of its group's secondary connections, for its `JobStart`.
#[derive(Default)]
pub(super) struct ConnectionSide {
    pub(super) secondary: Option<SecondaryContext>,
    pub(super) publish_ssh: Option<HostEndpoint>,
    pub(super) authorized_keys: Vec<String>,
}

impl Agent {
    /// The side of sub-job `sub` (lease `lease`): a host gets its endpoint and the group's
    /// public key, a guest its host's endpoint and the private key. An error is the reason
    /// to refuse the start.
    pub(super) fn connection_side(
        &mut self,
        lease: LeaseId,
        sub: Option<&proto::link::SubJob>,
    ) -> Result<ConnectionSide, String> {
        let Some(sub) = sub else {
            return Ok(ConnectionSide::default());
        };
        if let Some(host) = sub.host {
            let Some(g) = self.connections.hosts.get(&sub.group) else {
                return Err(format!(
                    "secondary connection {}.{}: its host, sub-job {}.{host}, does not run on \
                     agent {}",
                    sub.group, sub.index, sub.group, self.config.name
                ));
            };
            let side = ConnectionSide {
                secondary: Some(SecondaryContext {
                    job_id: format!("{}.{}", sub.group, sub.index),
                    user: GUEST_USER.into(),
                    private_key: g.keys.private.clone(),
                    route: SshRoute::Published(g.endpoint.clone()),
                }),
                ..ConnectionSide::default()
            };
            self.connections.guests.insert(lease, sub.group);
            return Ok(side);
        }
        if sub.guests == 0 {
            return Ok(ConnectionSide::default());
        }
        let keys = runner::ssh::generate_key_pair(&self.config.work_dir).map_err(|e| {
            format!(
                "agent {}: no key pair for the secondary connections of group {}: {e}",
                self.config.name, sub.group
            )
        })?;
        let endpoint = HostEndpoint::for_guests(sub.guests as usize);
        let side = ConnectionSide {
            secondary: None,
            publish_ssh: Some(endpoint.clone()),
            authorized_keys: vec![keys.public.clone()],
        };
        self.connections.hosts.insert(
            sub.group,
            GroupHost {
                lease,
                endpoint,
                keys,
            },
        );
        Ok(side)
    }

    /// The job of `lease` ended: a guest lets its host's DUT go, a host forgets its group.
    pub(super) fn connection_ended(&mut self, lease: LeaseId) {
        if let Some(group) = self.connections.guests.remove(&lease)
            && let Some(host) = self.connections.hosts.get(&group)
        {
            host.endpoint.guest_ended();
        }
        self.connections.hosts.retain(|_, h| h.lease != lease);
    }
}
