//! Secondary connections, the runner's side: a job whose boots are `method: ssh` (a
//! MultiNode guest role) has no device of its own; it logs in over SSH to the device of its
//! host role and runs its test shell there.
//!
//! ```text
//!  deploy to: ssh   level = action index + 1; (in a group: wait for the host's message)
//!  boot method: ssh  address: the route (the host DUT's forward, or the message's address
//!                    checked against the route's ranges) ─> key 0600 in work/ssh, wait for
//!                    sshd ─> copy the overlay as /<job_id>-overlay-<level>.tar.gz ─>
//!                    ssh -tt into a ConsoleHub ─> prompt ─> runner's shell ─> unpack under
//!                    /lava-<job_id>
//!  test              the usual test shell, over the SSH console
//!  teardown          ssh killed (the host's device is its host role's to power off)
//! ```
//!
//! Invariants:
//! - A guest connects only where its [`SshRoute`] says the host role's device is: through the
//!   forward the group's runner set up to that device, or directly to an address the host
//!   announced only when it lies in the route's ranges (the group network, the device's own
//!   addresses). The announced text is DUT output: it must parse as an IP address, and it is
//!   never resolved or passed to a shell.
//! - The private key stays in the job's work directory (0600) and is removed with it; the
//!   known-hosts file is the job's own.
//! - A guest's overlay unpacks under `/lava-<job_id>`, its own directory: the host's test
//!   shell (`/lava-dutlab`) and the other guests are not touched. `job_id` is checked to be
//!   `[-_.a-zA-Z0-9]+` before it names any path.

use crate::policy::{Cidr, canonical_ip};
use crate::session::{DutShell, Login};
use crate::ssh::{SshConsole, SshTarget};
use crate::{ConnectionTimeout, JobEnd, Limit, Run};
use jobspec::Boot;
use regex::bytes::Regex;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::sync::watch;

/// The user a secondary connection logs in as on its host role's DUT (the user LAVA's ssh
/// devices default to; the host's deploy with `authorize: ssh` installs the group's key for
/// it), locally and in the lab.
pub const GUEST_USER: &str = "root";

/// The message a host role sends to start its `request: lava-start` guests (LAVA's name).
pub const LAVA_START: &str = "lava_start";

/// What the runner of a secondary connection needs besides the job.
#[derive(Clone)]
pub struct SecondaryContext {
    /// The job's id as the group knows it (LAVA's `74585.1`; locally the instance): names
    /// the overlay file `/<job_id>-overlay-<level>.tar.gz` and the directory `/lava-<job_id>`.
    pub job_id: String,
    /// The user to log in as on the host's device.
    pub user: String,
    /// The group's private key (OpenSSH text); its public half is authorized on the host.
    pub private_key: String,
    pub route: SshRoute,
}

impl std::fmt::Debug for SecondaryContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecondaryContext")
            .field("job_id", &self.job_id)
            .field("user", &self.user)
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

/// Where the host role's device accepts SSH, as the group's runner knows it.
#[derive(Debug, Clone)]
pub enum SshRoute {
    /// Through this address, which leads to the host's device (a QEMU DUT's SSH forward on
    /// 127.0.0.1, a stream of the controller's router): the address the host announces is
    /// checked for form and shown, not connected to.
    Forward(SocketAddr),
    /// As `Forward`, through the address the host instance's runner publishes once its DUT
    /// runs ([`HostEndpoint`]; a local group, where the forward's port is picked at launch).
    Published(HostEndpoint),
    /// To the address the host announces, on `port`, when it lies in one of `ranges` (the
    /// group's network, the host device's addresses).
    Direct { port: u16, ranges: Vec<Cidr> },
}

/// The SSH endpoint of a host instance's DUT, published by its runner once QEMU runs
/// (`JobContext::publish_ssh`) and awaited by its guests' runners ([`SshRoute::Published`]);
/// and how many of those guests still run: the host's runner keeps its DUT on until they
/// ended ([`HostEndpoint::for_guests`]), so a guest's last prompt is not cut by the host's
/// power-off.
#[derive(Debug, Clone)]
pub struct HostEndpoint {
    addr: Arc<watch::Sender<Option<SocketAddr>>>,
    guests: Arc<watch::Sender<usize>>,
}

impl Default for HostEndpoint {
    fn default() -> Self {
        HostEndpoint::for_guests(0)
    }
}

impl HostEndpoint {
    /// An endpoint whose host waits, before its teardown, for `guests` calls of
    /// [`HostEndpoint::guest_ended`].
    pub fn for_guests(guests: usize) -> Self {
        HostEndpoint {
            addr: Arc::new(watch::Sender::new(None)),
            guests: Arc::new(watch::Sender::new(guests)),
        }
    }

    /// Says where the DUT's SSH is now (a new boot publishes again).
    pub fn publish(&self, addr: SocketAddr) {
        self.addr.send_replace(Some(addr));
    }

    /// Waits until an endpoint was published, within `limit`.
    pub async fn wait(&self, limit: Limit) -> Result<SocketAddr, JobEnd> {
        let mut rx = self.addr.subscribe();
        let got = tokio::time::timeout_at(limit.at, rx.wait_for(Option::is_some)).await;
        match got {
            Ok(Ok(addr)) => (*addr).ok_or_else(|| JobEnd::infra_error("no host endpoint")),
            Ok(Err(_)) => Err(JobEnd::infra_error("the host's runner ended")),
            Err(_) => Err(JobEnd::timed_out(format!(
                "{} timeout ({}) fired before the host role's DUT was running",
                limit.level,
                crate::human_duration(limit.length)
            ))),
        }
    }

    /// One guest of this host ended (whatever its outcome).
    pub fn guest_ended(&self) {
        self.guests.send_modify(|n| *n = n.saturating_sub(1));
    }

    /// How many guests still run.
    pub fn guests_running(&self) -> usize {
        *self.guests.borrow()
    }

    /// Resolves when no guest runs any more.
    pub async fn guests_ended(&self) {
        let mut rx = self.guests.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

/// The guest's state between its deploy and its boot, and its connection.
#[derive(Debug, Default)]
pub(crate) struct Remote {
    /// LAVA's level of the `deploy: to: ssh` action (its place in the job, from 1).
    level: Option<String>,
    /// The host's address as its message gave it (DUT output, unchecked).
    announced: Option<String>,
    /// Messages the runner waited for itself (delayed start, `hostID`), by id.
    received: std::collections::BTreeMap<String, Vec<::multinode::MessageData>>,
    target: Option<SshTarget>,
    pub(crate) console: Option<SshConsole>,
}

/// Checks `job_id` for use in paths.
pub fn check_job_id(job_id: &str) -> Result<&str, JobEnd> {
    let clean = !job_id.is_empty()
        && job_id.len() <= 64
        && job_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !job_id.starts_with('.');
    if clean {
        Ok(job_id)
    } else {
        Err(JobEnd::infra_error(format!(
            "job id {job_id:?} cannot name a file (use letters, digits, '-', '_' and '.')"
        )))
    }
}

/// The overlay's directory on the host's device: `/lava-<job_id>`.
pub fn overlay_root(job_id: &str) -> Result<String, JobEnd> {
    Ok(format!("/lava-{}", check_job_id(job_id)?))
}

/// The overlay file on the host's device: `/<job_id>-overlay-<level>.tar.gz` (LAVA's name).
pub fn overlay_file(job_id: &str, level: &str) -> Result<String, JobEnd> {
    Ok(format!("/{}-overlay-{level}.tar.gz", check_job_id(job_id)?))
}

/// Where to connect, from the route and the address the host announced (if any); a
/// published endpoint counts as a forward at `published`.
pub fn host_address(
    route: &SshRoute,
    announced: Option<&str>,
    published: Option<SocketAddr>,
) -> Result<SocketAddr, JobEnd> {
    let parsed = announced
        .map(|text| {
            text.trim().parse::<IpAddr>().map_err(|_| {
                JobEnd::job_error(format!(
                    "the host role announced {:?}, which is not an IP address",
                    text.chars().take(80).collect::<String>()
                ))
            })
        })
        .transpose()?;
    match route {
        SshRoute::Forward(addr) => Ok(*addr),
        SshRoute::Published(_) => {
            published.ok_or_else(|| JobEnd::infra_error("the host's endpoint is not known"))
        }
        SshRoute::Direct { port, ranges } => {
            let ip = parsed.map(canonical_ip).ok_or_else(|| {
                JobEnd::job_error("boot: the host's address is not known (no hostID message came)")
            })?;
            if ranges.iter().any(|r| r.contains(ip)) {
                Ok(SocketAddr::new(ip, *port))
            } else {
                Err(JobEnd::job_error(format!(
                    "the host role announced {ip}, which is not an address of its device \
                     (a secondary connection logs in only to its host role's device)"
                )))
            }
        }
    }
}

impl Run<'_> {
    fn secondary(&self) -> Result<&SecondaryContext, JobEnd> {
        self.ctx.secondary.as_ref().ok_or_else(|| {
            JobEnd::job_error(
                "a job that boots over ssh needs a host to log in to (a secondary connection \
                 of a MultiNode group)",
            )
        })
    }

    /// `deploy: to: ssh`: notes the level and, in a group, waits for each message its
    /// `protocols: lava-multinode` block names (LAVA's delayed start); the copy itself is the
    /// boot's.
    pub(crate) async fn deploy_ssh(
        &mut self,
        index: usize,
        deploy: &jobspec::Deploy,
        limit: Limit,
    ) -> Result<(), JobEnd> {
        self.secondary()?;
        self.remote.level = Some((index + 1).to_string());
        for start in &deploy.delayed_start {
            let limit = match (start.timeout, self.role_timeout()) {
                (Some(t), _) => limit.min(Limit::new("lava-multinode", t)),
                (None, Some(t)) => limit.min(Limit::new("lava-multinode role", t)),
                (None, None) => limit,
            };
            let data = self.wait_message(&start.message_id, limit).await?;
            let received: std::collections::BTreeMap<String, String> =
                data.iter().flat_map(|m| m.data.iter().cloned()).collect();
            let substituted = start.substitute(&received);
            self.note(crate::report::printable(&format!(
                "actions[{index}].deploy: message '{}' received: {}",
                start.message_id,
                substituted
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )));
        }
        Ok(())
    }

    /// A secondary role with `request: lava-start` starts when its expected role sends
    /// `lava_start`, within the role's `timeout`; a deploy with its own `lava-wait` block
    /// waits there instead.
    pub(crate) async fn delayed_start(&mut self, limit: Limit) -> Result<(), JobEnd> {
        let Some(group) = self.ctx.multinode.clone() else {
            return Ok(());
        };
        let wants_start = self
            .job
            .protocols
            .multinode
            .as_ref()
            .and_then(|m| m.roles.get(&group.role()))
            .and_then(|r| r.secondary.as_ref())
            .is_some_and(|s| s.request == Some(jobspec::StartRequest::LavaStart));
        // As LAVA does, the role's `timeout` bounds the delayed start.
        let limit = match self.role_timeout() {
            Some(t) => limit.min(Limit::new("lava-multinode role", t)),
            None => limit,
        };
        let own_wait = self
            .job
            .actions
            .iter()
            .any(|a| matches!(a, jobspec::Action::Deploy(d) if !d.delayed_start.is_empty()));
        if wants_start && !own_wait {
            self.wait_message(LAVA_START, limit).await?;
            self.note("lava_start received: the secondary connection starts");
        }
        Ok(())
    }

    /// The `timeout` of this member's role (`protocols.lava-multinode.roles.ROLE.timeout`):
    /// how long a secondary connection waits for its start.
    fn role_timeout(&self) -> Option<std::time::Duration> {
        let role = self.ctx.multinode.as_ref()?.role();
        self.job
            .protocols
            .multinode
            .as_ref()?
            .roles
            .get(&role)?
            .timeout
    }

    /// Waits for message `id` from the group (as `lava-wait` does) and keeps its data for
    /// later actions; a message already received is not waited for again.
    pub(crate) async fn wait_message(
        &mut self,
        id: &str,
        limit: Limit,
    ) -> Result<Vec<::multinode::MessageData>, JobEnd> {
        if let Some(data) = self.remote.received.get(id) {
            return Ok(data.clone());
        }
        let Some(group) = self.ctx.multinode.clone() else {
            return Err(JobEnd::job_error(format!(
                "waiting for message '{id}' needs the job's group (protocols.lava-multinode)"
            )));
        };
        let message_id = ::multinode::MessageId::new(id)
            .map_err(|e| JobEnd::job_error(format!("messageID {id:?}: {e}")))?;
        let call = ::multinode::Call::Wait { id: message_id };
        let reply = tokio::time::timeout_at(limit.at, group.link.call(group.next_seq(), call))
            .await
            .map_err(|_| {
                JobEnd::timed_out(format!(
                    "{} timeout ({}) fired while waiting for message '{id}' from the group",
                    limit.level,
                    crate::human_duration(limit.length)
                ))
            })?
            .map_err(|e| JobEnd::infra_error(e.to_string()))?;
        let data = match reply {
            ::multinode::Reply::WaitComplete(data) => data,
            other => {
                return Err(JobEnd::infra_error(format!(
                    "the group answered the wait for '{id}' with {other:?}"
                )));
            }
        };
        self.remote.received.insert(id.to_string(), data.clone());
        Ok(data)
    }

    /// `boot: method: ssh`: logs in to the host's device and prepares the test shell there.
    pub(crate) async fn boot_ssh(
        &mut self,
        index: usize,
        boot: &Boot,
        work: &std::path::Path,
        limit: Limit,
        connection: ConnectionTimeout,
    ) -> Result<(), JobEnd> {
        self.power_off().await;
        let sec = self.secondary()?.clone();
        // In a group the host's address comes in message `hostID`, key `host_key`, from a
        // member of the host role.
        if let (Some(params), Some(group)) = (&boot.ssh, self.ctx.multinode.clone()) {
            let data = self.wait_message(&params.host_id, limit).await?;
            let hosts: Vec<String> = self
                .job
                .protocols
                .multinode
                .as_ref()
                .and_then(|m| m.roles.get(&group.role()))
                .and_then(|r| r.secondary.as_ref().map(|s| s.host_role.clone()))
                .map(|host| {
                    group
                        .roster
                        .of_role(&host)
                        .into_iter()
                        .filter_map(|id| group.roster.member(id).map(|m| m.name.clone()))
                        .collect()
                })
                .unwrap_or_default();
            self.remote.announced = data
                .iter()
                .filter(|m| hosts.is_empty() || hosts.contains(&m.from))
                .flat_map(|m| m.data.iter())
                .find(|(k, _)| *k == params.host_key)
                .map(|(_, v)| v.clone());
        }
        let published = match &sec.route {
            SshRoute::Published(endpoint) => Some(endpoint.wait(limit).await?),
            _ => None,
        };
        let address = host_address(&sec.route, self.remote.announced.as_deref(), published)?;
        let target = match &self.remote.target {
            Some(t) => SshTarget {
                address,
                ..t.clone()
            },
            None => {
                let (key, known_hosts) = crate::ssh::write_private_key(work, &sec.private_key)?;
                SshTarget {
                    address,
                    user: sec.user.clone(),
                    key,
                    known_hosts,
                }
            }
        };
        self.remote.target = Some(target.clone());
        let wait = limit.min(connection.start());
        crate::ssh::wait_ready(&target, wait).await?;
        let level = self
            .remote
            .level
            .clone()
            .unwrap_or_else(|| (index + 1).to_string());
        let copied = match &self.packed {
            Some(packed) => {
                let file = overlay_file(&sec.job_id, &level)?;
                let gz = packed
                    .gzip()
                    .map_err(|e| JobEnd::job_error(e.to_string()))?;
                crate::ssh::copy_file(&target, &file, &gz, limit).await?;
                self.note(format!(
                    "test overlay ({} bytes) copied to {} as {file}",
                    gz.len(),
                    target.address
                ));
                Some((file, packed.root().to_string()))
            }
            None => None,
        };
        let console = SshConsole::open(
            &target,
            wait.at
                .saturating_duration_since(tokio::time::Instant::now()),
            crate::session::console_recorder(&self.events),
        )?;
        self.note(format!(
            "ssh to {}@{} (pid {})",
            target.user,
            target.address,
            console.pid().unwrap_or_default()
        ));
        let mut shell = DutShell::new(console.hub(), &self.events);
        self.remote.console = Some(console);
        let login = self.ssh_login(boot, index)?;
        shell.login(&login, limit.min(connection.start())).await?;
        shell.prepare_shell(limit.min(connection.start())).await?;
        if let Some((file, root)) = copied {
            shell
                .unpack_overlay_file(&file, &root, limit.min(connection.start()))
                .await?;
        }
        self.shell = Some(shell);
        Ok(())
    }

    /// The prompts an SSH login waits for: the boot's, else the device's; no login prompt
    /// (the key logged in).
    fn ssh_login(&self, boot: &Boot, index: usize) -> Result<Login, JobEnd> {
        let texts = if boot.prompts.is_empty() {
            &self.device.login.prompts
        } else {
            &boot.prompts
        };
        if texts.is_empty() {
            return Err(JobEnd::job_error(format!(
                "actions[{index}].boot.prompts: at least one prompt is needed"
            )));
        }
        let prompts = texts
            .iter()
            .map(|p| {
                Regex::new(p).map_err(|e| {
                    JobEnd::job_error(format!(
                        "actions[{index}].boot.prompts: {p:?} is not a valid pattern: {e}"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Login {
            prompts,
            login_prompt: None,
            username: String::new(),
            password_prompt: None,
            password: None,
            login_commands: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_on_the_host_follow_lava() {
        assert_eq!(
            overlay_file("74585", "1.1.5").unwrap(),
            "/74585-overlay-1.1.5.tar.gz"
        );
        assert_eq!(overlay_root("17.1").unwrap(), "/lava-17.1");
        for bad in ["", "../x", "a/b", "a b", ".x", "x'y"] {
            assert!(overlay_root(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_forward_ignores_what_the_host_announced_but_its_form() {
        let forward = SshRoute::Forward("127.0.0.1:2222".parse().unwrap());
        assert_eq!(
            host_address(&forward, Some("10.0.2.15"), None).unwrap(),
            "127.0.0.1:2222".parse().unwrap()
        );
        assert_eq!(
            host_address(&forward, None, None).unwrap(),
            "127.0.0.1:2222".parse().unwrap()
        );
        let e = host_address(&forward, Some("-oProxyCommand=sh"), None).unwrap_err();
        assert!(e.reason.contains("not an IP address"), "{}", e.reason);
    }

    #[test]
    fn a_direct_route_goes_only_into_its_ranges() {
        let direct = SshRoute::Direct {
            port: 22,
            ranges: vec![Cidr::parse("10.77.0.0/24").unwrap()],
        };
        assert_eq!(
            host_address(&direct, Some(" 10.77.0.1\n"), None).unwrap(),
            "10.77.0.1:22".parse().unwrap()
        );
        assert_eq!(
            host_address(&direct, Some("::ffff:10.77.0.3"), None).unwrap(),
            "10.77.0.3:22".parse().unwrap()
        );
        for outside in ["8.8.8.8", "127.0.0.1", "10.77.1.1"] {
            let e = host_address(&direct, Some(outside), None).unwrap_err();
            assert!(
                e.reason.contains("not an address of its device"),
                "{}",
                e.reason
            );
        }
        assert!(host_address(&direct, None, None).is_err());
        assert!(host_address(&direct, Some("host.example"), None).is_err());
    }
}
