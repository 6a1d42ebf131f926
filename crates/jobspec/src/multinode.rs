//! A MultiNode job as the role instances that run it: one single-device [`Job`] per device.
//!
//! LAVA splits a `protocols: lava-multinode` job into one sub-job per role instance (`count`
//! instances of each role), each with only the actions whose `role:` names its role. dutlab
//! does the same here, for the runner (one instance per device) and for the lab.
//!
//! Invariants:
//! - [`instances`] is pure and deterministic: roles in name order (the order of
//!   [`Multinode::roles`]), then `0..count` within a role; `InstanceSlot::index` numbers the
//!   instances of the whole group from 0 in that order (the roster's order, LAVA's `ID.N`).
//! - An instance's job is the group's job with `device_type`, `tags` and the role's `context`
//!   variables (over the job's own) of its role, and only the actions that name its role,
//!   in file order. `protocols.lava-multinode` is kept, so the instance stays a multinode
//!   job and its multinode calls are allowed.
//! - A job without `protocols.lava-multinode` has no instances (an empty list).
//! - An instance of a secondary connection role (`connection: ssh`) names its host: the
//!   first instance of its `host_role` ([`RoleInstance::host`]), whose device it logs in to;
//!   its `device_type` and `tags` are its host's.

use crate::{Action, Job};

/// One device's share of a multinode job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleInstance {
    /// The role's name (a key of `protocols.lava-multinode.roles`).
    pub role: String,
    /// Position in the whole group, from 0 (roles in name order, then instances of a role).
    pub index: u32,
    /// The role's `device_type`.
    pub device_type: String,
    /// The role's `tags`.
    pub tags: Vec<String>,
    /// The job this instance runs: only the actions for `role`.
    pub job: Job,
    /// For a secondary connection: the index of its host (see the module documentation).
    pub host: Option<u32>,
}

impl RoleInstance {
    /// How many secondary connections of `instances` have this instance as their host.
    pub fn guests(&self, instances: &[RoleInstance]) -> usize {
        instances
            .iter()
            .filter(|i| i.host == Some(self.index))
            .count()
    }
}

/// The role instances of `job`, in roster order. Empty for a job without multinode.
pub fn instances(job: &Job) -> Vec<RoleInstance> {
    let Some(multinode) = &job.protocols.multinode else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut index = 0u32;
    for (name, role) in &multinode.roles {
        let mut sub = job.clone();
        sub.device_type = role.device_type.clone();
        sub.tags = role.tags.clone();
        sub.actions = job
            .actions
            .iter()
            .filter(|a| a.role().iter().any(|r| r == name))
            .cloned()
            .collect::<Vec<Action>>();
        for (key, value) in &role.context {
            match key.as_str() {
                "arch" => sub.context.arch = Some(value.clone()),
                "extra_options" => sub.context.extra_options = vec![value.clone()],
                _ => {
                    sub.context.other.insert(key.clone(), value.clone());
                }
            }
        }
        for (key, list) in &role.context_lists {
            match key.as_str() {
                "extra_options" => sub.context.extra_options = list.clone(),
                _ => {
                    sub.context.other_lists.insert(key.clone(), list.clone());
                }
            }
        }
        for _ in 0..role.count {
            out.push(RoleInstance {
                role: name.clone(),
                index,
                device_type: role.device_type.clone(),
                tags: role.tags.clone(),
                job: sub.clone(),
                host: None,
            });
            index += 1;
        }
    }
    let hosts: Vec<Option<(u32, String, Vec<String>)>> = out
        .iter()
        .map(|i| {
            let host_role = &multinode.roles.get(&i.role)?.secondary.as_ref()?.host_role;
            let host = out
                .iter()
                .find(|h| &h.role == host_role && !h.device_type.is_empty())?;
            Some((host.index, host.device_type.clone(), host.tags.clone()))
        })
        .collect();
    for (instance, host) in out.iter_mut().zip(hosts) {
        if let Some((index, device_type, tags)) = host {
            instance.host = Some(index);
            instance.device_type = device_type;
            instance.tags = tags;
        }
    }
    out
}
