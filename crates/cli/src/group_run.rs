//! `dutlab run` of a MultiNode job: the whole group in this process, one local DUT per role
//! instance, with an in-process coordinator.
//!
//! ```text
//!  job ─instances─> members 0..n (roles in name order, then 0..count; names "0", "1", ...)
//!        │ one InProcessGroup (the coordinator), one link per member
//!        │ secondary roles: one ssh key pair; the first instance of the host role gets the
//!        │ public key and publishes its DUT's SSH forward; guests log in through it
//!        v
//!  every member's runner::run_job at once ─> console lines prefixed "[N role] "
//!        │ a member ending infra-error or canceled cancels the others (one fate)
//!        v
//!  GroupReport: every member's report; outcome = the worst (by exit code), with its reason
//! ```
//!
//! Invariants:
//! - Same rules as a group in the lab (`scheduler::groups`): one fate for infra errors and
//!   cancels only; any other outcome ends only that member. Ctrl-C cancels every member, and
//!   every member's runner still tears its DUT down.
//! - Each member has its own device (a copy of the local device named `<device>-<N>`), its
//!   own work directory and its own cancel; a member reaches the others only through the
//!   coordinator (calls) and, for a secondary connection, the host DUT's SSH forward that the
//!   host's runner publishes.
//! - The group's private key lives in memory and in the guests' work directories (0600),
//!   never in a file of its own; nothing of it outlives the run.

use multinode::{InstanceId, Member, Roster};
use proto::{JobReport, Outcome, TestCase};
use runner::device::Device;
use runner::multinode::InProcessGroup;
use runner::secondary::{HostEndpoint, SecondaryContext, SshRoute};
use runner::{Cancel, JobContext, RunEvent};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;

/// The most members a local group may have: as many as a group in the lab
/// (`scheduler::groups::MAX_GROUP`).
pub const MAX_MEMBERS: usize = 64;

/// One role instance of a local group.
#[derive(Debug, Clone)]
pub struct MemberJob {
    /// What `lava-self` prints: `"0"`, `"1"`, ...
    pub name: String,
    pub role: String,
    pub job: jobspec::Job,
    /// Whether it is a secondary connection (no device of its own).
    pub secondary: bool,
}

/// What a local group run ends with.
#[derive(Debug, Clone, Serialize)]
pub struct GroupReport {
    pub job_name: String,
    /// The worst member outcome (by exit code).
    pub outcome: Outcome,
    /// The reason of the member that gave the outcome, prefixed by it.
    pub reason: String,
    pub duration_s: f64,
    pub members: Vec<MemberReport>,
}

/// One member's part of a [`GroupReport`].
#[derive(Debug, Clone, Serialize)]
pub struct MemberReport {
    pub name: String,
    pub role: String,
    pub report: JobReport,
}

/// Something a member's runner said, tagged with the member.
pub struct MemberEvent {
    pub member: usize,
    pub event: RunEvent,
}

/// The members of `job` (a MultiNode job), in roster order.
pub fn members(job: &jobspec::Job) -> Vec<MemberJob> {
    jobspec::multinode::instances(job)
        .into_iter()
        .map(|i| MemberJob {
            name: i.index.to_string(),
            secondary: jobspec::is_secondary(&i.job),
            role: i.role,
            job: i.job,
        })
        .collect()
}

/// The `[N role] ` prefix of a member's lines.
pub fn prefix(m: &MemberJob) -> String {
    format!("[{} {}] ", m.name, m.role)
}

/// One member's console output as whole lines, each behind the member's prefix, so that
/// lines of members running at once never mix. Escape sequences are neutralised first.
pub struct PrefixedLines {
    prefix: String,
    stripper: driver::ansi::AnsiStripper,
    /// The start of a line not ended yet.
    pending: Vec<u8>,
}

/// A line not ended after this many bytes is shown anyway (a long line, or a prompt that
/// waits for input).
const MAX_PENDING: usize = 4096;

impl PrefixedLines {
    pub fn new(prefix: String) -> Self {
        PrefixedLines {
            prefix,
            stripper: driver::ansi::AnsiStripper::new(),
            pending: Vec::new(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Takes console bytes; gives back every line they ended, prefixed.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.stripper.feed(bytes, &mut self.pending);
        let mut out = Vec::new();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            out.extend_from_slice(self.prefix.as_bytes());
            out.extend(self.pending.drain(..=end));
        }
        if self.pending.len() >= MAX_PENDING {
            out.append(&mut self.finish());
        }
        out
    }

    /// What is left of the last line, ended with a newline (nothing when there is none).
    pub fn finish(&mut self) -> Vec<u8> {
        if self.pending.is_empty() {
            return Vec::new();
        }
        let mut out = self.prefix.as_bytes().to_vec();
        out.append(&mut self.pending);
        out.push(b'\n');
        out
    }
}

/// What the members need besides their jobs.
pub struct GroupSetup {
    /// The context every member starts from (job directory, policy, default image).
    pub base: JobContext,
    /// The local device; each member gets a copy named `<name>-<N>`.
    pub device: Device,
    /// The group's key pair, when it has secondary connections.
    pub keys: Option<runner::ssh::KeyPair>,
    /// The multicast segment of the group's private network
    /// ([`runner::multinode::segment_of`]).
    pub segment: std::net::SocketAddrV4,
}

/// Runs every member of the group at once and reports each. `default_image` is given only to
/// members that deploy nothing (as for a single job).
pub async fn run_group(
    job: &jobspec::Job,
    members: Vec<MemberJob>,
    setup: GroupSetup,
    events: UnboundedSender<MemberEvent>,
    cancel: Cancel,
) -> GroupReport {
    let started = tokio::time::Instant::now();
    let roster = Roster {
        members: members
            .iter()
            .map(|m| Member {
                name: m.name.clone(),
                role: m.role.clone(),
            })
            .collect(),
    };
    let group = InProcessGroup::new(roster);
    // The first instance of each host role publishes its DUT's SSH forward for its guests.
    let hosts = host_endpoints(job, &members);
    let cancels: Vec<Cancel> = members.iter().map(|_| Cancel::default()).collect();
    let mut runs = tokio::task::JoinSet::new();
    for (index, member) in members.iter().enumerate() {
        let ctx = member_context(job, index, member, &members, &setup, &hosts, &group);
        let mut device = setup.device.clone();
        device.name = format!("{}-{}", setup.device.name, member.name);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let out = events.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let _ = out.send(MemberEvent {
                    member: index,
                    event,
                });
            }
        });
        let member_job = member.job.clone();
        let member_cancel = cancels[index].clone();
        // A guest's end lets its host's DUT power off.
        let host = member
            .secondary
            .then(|| host_role(job, member).and_then(|r| hosts.get(r)).cloned())
            .flatten();
        runs.spawn(async move {
            let report = runner::run_job(&member_job, &ctx, &device, tx, member_cancel).await;
            if let Some(host) = host {
                host.guest_ended();
            }
            (index, report)
        });
    }
    drop(events);
    let mut reports: BTreeMap<usize, JobReport> = BTreeMap::new();
    // The member whose end ended the group, and how.
    let mut fate: Option<(usize, Outcome)> = None;
    let mut canceled = std::pin::pin!(async {
        cancel.canceled().await;
    });
    let mut user_canceled = false;
    loop {
        tokio::select! {
            joined = runs.join_next() => {
                let Some(joined) = joined else { break };
                let (index, report) = match joined {
                    Ok(done) => done,
                    // A runner task that panicked: its index is unknown here, so the group
                    // ends; the others report for themselves.
                    Err(e) => {
                        for c in &cancels { c.cancel(); }
                        tracing::error!("a member's runner failed: {e}");
                        continue;
                    }
                };
                if fate.is_none()
                    && !user_canceled
                    && matches!(report.outcome, Outcome::InfraError | Outcome::Canceled)
                {
                    fate = Some((index, report.outcome));
                    for (i, c) in cancels.iter().enumerate() {
                        if i != index { c.cancel(); }
                    }
                }
                reports.insert(index, report);
            }
            () = &mut canceled, if !user_canceled => {
                user_canceled = true;
                for c in &cancels { c.cancel(); }
            }
        }
    }
    let mut out = Vec::with_capacity(members.len());
    for (index, member) in members.iter().enumerate() {
        let mut report = reports.remove(&index).unwrap_or_else(|| JobReport {
            job_name: member.job.name.clone(),
            outcome: Outcome::InfraError,
            reason: "its runner failed (see the log)".into(),
            cases: Vec::new(),
            duration_s: 0.0,
        });
        if let Some((by, how)) = fate
            && by != index
            && report.outcome == Outcome::Canceled
        {
            report.reason = format!(
                "canceled: member {} ({}) of the group ended {how}",
                members[by].name, members[by].role
            );
        }
        out.push(MemberReport {
            name: member.name.clone(),
            role: member.role.clone(),
            report,
        });
    }
    let worst = out
        .iter()
        .max_by_key(|m| m.report.outcome.exit_code())
        .map(|m| {
            (
                m.report.outcome,
                if m.report.reason.is_empty() {
                    String::new()
                } else {
                    format!("[{} {}] {}", m.name, m.role, m.report.reason)
                },
            )
        })
        .unwrap_or((Outcome::JobError, "the group has no members".into()));
    GroupReport {
        job_name: job.name.clone(),
        outcome: worst.0,
        reason: worst.1,
        duration_s: started.elapsed().as_secs_f64(),
        members: out,
    }
}

/// The SSH endpoint of each host role's first instance, by role, counting the guests that
/// log in to it.
fn host_endpoints(job: &jobspec::Job, members: &[MemberJob]) -> BTreeMap<String, HostEndpoint> {
    let mut guests: BTreeMap<String, usize> = BTreeMap::new();
    for m in members.iter().filter(|m| m.secondary) {
        if let Some(host) = host_role(job, m) {
            *guests.entry(host.to_owned()).or_default() += 1;
        }
    }
    guests
        .into_iter()
        .filter(|(role, _)| members.iter().any(|m| &m.role == role && !m.secondary))
        .map(|(role, n)| (role, HostEndpoint::for_guests(n)))
        .collect()
}

/// The host role of a secondary connection member.
fn host_role<'a>(job: &'a jobspec::Job, member: &MemberJob) -> Option<&'a str> {
    job.protocols
        .multinode
        .as_ref()?
        .roles
        .get(&member.role)?
        .secondary
        .as_ref()
        .map(|s| s.host_role.as_str())
}

/// The context of member `index`: the base, the group's link, and its side of the
/// secondary connections.
fn member_context(
    job: &jobspec::Job,
    index: usize,
    member: &MemberJob,
    members: &[MemberJob],
    setup: &GroupSetup,
    hosts: &BTreeMap<String, HostEndpoint>,
    group: &Arc<InProcessGroup>,
) -> JobContext {
    let id = InstanceId(u32::try_from(index).expect("a group has at most 64 members"));
    let mut ctx = setup.base.clone();
    ctx.multinode = Some(group.context(id));
    if member.job.deploys_images() || member.secondary {
        ctx.default_image = None;
    }
    if !member.secondary {
        // At most MAX_MEMBERS, well inside the network's 253 addresses.
        ctx.group_net = runner::multinode::GroupNet::for_member(setup.segment, id.0).ok();
    }
    let first_of_role = members.iter().position(|m| m.role == member.role) == Some(index);
    if first_of_role
        && let Some(endpoint) = hosts.get(&member.role)
        && let Some(keys) = &setup.keys
    {
        ctx.publish_ssh = Some(endpoint.clone());
        ctx.authorized_keys = vec![keys.public.clone()];
    }
    if member.secondary
        && let Some(endpoint) = host_role(job, member).and_then(|r| hosts.get(r))
        && let Some(keys) = &setup.keys
    {
        ctx.secondary = Some(SecondaryContext {
            job_id: member.name.clone(),
            user: runner::secondary::GUEST_USER.into(),
            private_key: keys.private.clone(),
            route: SshRoute::Published(endpoint.clone()),
        });
    }
    ctx
}

/// Whether any member is a secondary connection (the group then needs a key pair).
pub fn needs_keys(members: &[MemberJob]) -> bool {
    members.iter().any(|m| m.secondary)
}

/// One report of the whole group for JUnit: every member's cases, each suite named
/// `<N>.<role>/<suite>`.
pub fn merged(report: &GroupReport) -> JobReport {
    JobReport {
        job_name: report.job_name.clone(),
        outcome: report.outcome,
        reason: report.reason.clone(),
        cases: report
            .members
            .iter()
            .flat_map(|m| {
                m.report.cases.iter().map(move |c| TestCase {
                    suite: format!("{}.{}/{}", m.name, m.role, c.suite),
                    ..c.clone()
                })
            })
            .collect(),
        duration_s: report.duration_s,
    }
}

/// The plain-text report: each member's table under its prefix, then the group's line.
pub fn table(report: &GroupReport) -> String {
    let mut text = String::new();
    for m in &report.members {
        text.push_str(&format!("[{} {}]\n", m.name, m.role));
        text.push_str(&runner::report::table(&m.report));
        text.push('\n');
    }
    text.push_str(&format!(
        "group '{}': {} ({} members){}",
        runner::report::printable(&report.job_name),
        report.outcome,
        report.members.len(),
        if report.reason.is_empty() {
            String::new()
        } else {
            format!(": {}", runner::report::printable(&report.reason))
        }
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB: &str = "job_name: g\ntimeouts: {job: {minutes: 4}}\nprotocols:\n  lava-multinode:\n    roles:\n      \
        server: {device_type: qemu, count: 1}\n      client: {device_type: qemu, count: 2}\n\
        actions:\n- boot: {role: [server, client], method: qemu, prompts: ['# $']}\n";

    #[test]
    fn members_are_named_in_roster_order_with_their_roles() {
        let job = jobspec::parse_job("g.yaml", JOB).expect("valid");
        let m = members(&job);
        let named: Vec<(String, String)> =
            m.iter().map(|m| (m.name.clone(), m.role.clone())).collect();
        assert_eq!(
            named,
            vec![
                ("0".into(), "client".into()),
                ("1".into(), "client".into()),
                ("2".into(), "server".into())
            ]
        );
        assert_eq!(prefix(&m[2]), "[2 server] ");
        assert!(!needs_keys(&m));
    }

    fn report(outcome: Outcome, reason: &str, suite: &str) -> JobReport {
        JobReport {
            job_name: "g".into(),
            outcome,
            reason: reason.into(),
            cases: vec![TestCase::new(suite, "c", proto::CaseResult::Pass)],
            duration_s: 1.0,
        }
    }

    #[test]
    fn console_bytes_come_out_as_whole_prefixed_lines() {
        let mut lines = PrefixedLines::new("[1 server] ".into());
        assert_eq!(lines.feed(b"+ lava-"), b"");
        assert_eq!(
            lines.feed(b"role\r\nserver\n\x1b[31mred"),
            b"[1 server] + lava-role\r\n[1 server] server\n"
        );
        assert_eq!(lines.finish(), b"[1 server] red\n");
        assert_eq!(lines.finish(), b"");
        let long = vec![b'x'; MAX_PENDING];
        assert_eq!(
            lines.feed(&long).len(),
            "[1 server] ".len() + MAX_PENDING + 1
        );
    }

    #[test]
    fn junit_names_each_suite_by_its_member() {
        let g = GroupReport {
            job_name: "g".into(),
            outcome: Outcome::Failed,
            reason: "[1 server] x".into(),
            duration_s: 2.0,
            members: vec![
                MemberReport {
                    name: "0".into(),
                    role: "client".into(),
                    report: report(Outcome::Passed, "", "0_t"),
                },
                MemberReport {
                    name: "1".into(),
                    role: "server".into(),
                    report: report(Outcome::Failed, "x", "0_t"),
                },
            ],
        };
        let suites: Vec<String> = merged(&g).cases.into_iter().map(|c| c.suite).collect();
        assert_eq!(suites, vec!["0.client/0_t", "1.server/0_t"]);
        assert!(table(&g).ends_with("group 'g': failed (2 members): [1 server] x"));
    }
}
