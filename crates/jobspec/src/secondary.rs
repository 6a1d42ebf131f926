//! Secondary connections of a MultiNode job (LAVA's "guest" roles): a role with
//! `connection: ssh` has no device of its own; it waits for its host role's message, then
//! copies its overlay to the host role's device (`deploy: to: ssh`) and logs in there over
//! SSH (`boot: method: ssh`) to run its own test shell.
//!
//! Invariants of what is parsed here:
//! - A [`SecondaryRole`] names an existing `host_role` other than itself that is not a
//!   secondary role, and an existing `expect_role` (the host role when not given); its
//!   `connection` is [`Connection::Ssh`], the only kind LAVA has.
//! - A [`DelayedStart`] has a non-empty `messageID` and, for `lava-wait`, the keys whose
//!   values start with `$` are the ones [`DelayedStart::substitute`] fills from the message.
//! - A boot with `method: ssh` in a multinode job names `parameters.hostID` and
//!   `parameters.host_key` ([`SshParameters`]); both are non-empty.
//! - In a multinode job, `deploy: to: ssh` and `boot: method: ssh` run only on secondary
//!   roles, and `authorize: ssh` only on roles with a device.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::JobError;
use crate::duration::timeout;
use crate::fields::{Ctx, Fields, Path, scalar_map, text};
use crate::yaml::Value;

/// How a secondary role reaches its host role's device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    /// `connection: ssh`.
    Ssh,
}

/// What a secondary role waits for before it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartRequest {
    /// `request: lava-start`: the host role's `lava-send lava_start` (or the deploy
    /// action's own `lava-wait`).
    LavaStart,
}

/// The secondary-connection keys of a role (`connection`, `host_role`, `expect_role`,
/// `request`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecondaryRole {
    pub connection: Connection,
    /// The role whose device this role logs in to.
    pub host_role: String,
    /// The role whose start this role waits for; the host role when the job does not say.
    pub expect_role: String,
    pub request: Option<StartRequest>,
}

/// The MultiNode API call of an action's `protocols: lava-multinode:` item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolRequest {
    /// `request: lava-wait`.
    Wait,
}

/// One `protocols: lava-multinode:` item of a deploy action, e.g. the guest's
/// `action: prepare-scp-overlay, request: lava-wait, messageID: ipv4, message: {ipaddr: $ipaddr}`:
/// before the action runs, wait for message `message_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelayedStart {
    /// LAVA's sub-action the request belongs to (`prepare-scp-overlay`).
    pub action: String,
    pub request: ProtocolRequest,
    /// Not empty.
    pub message_id: String,
    /// Keys of the expected message; a value starting with `$` is replaced by the received one.
    pub message: BTreeMap<String, String>,
    /// How long to wait (LAVA's delayed-start timeout).
    pub timeout: Option<Duration>,
}

impl DelayedStart {
    /// The message as the job sees it once `received` came: every key whose value in the job
    /// starts with `$` gets the received value of that key (LAVA's substitution); a key the
    /// message lacks is left out. Keys with plain values are not replaceable and left out.
    pub fn substitute(&self, received: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        self.message
            .iter()
            .filter(|(_, v)| v.starts_with('$'))
            .filter_map(|(k, _)| received.get(k).map(|v| (k.clone(), v.clone())))
            .collect()
    }
}

/// `parameters:` of a `boot: method: ssh` in a secondary role: where the address of the
/// host's device comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshParameters {
    /// `hostID`: the id of the message that carries the address (the deploy's `messageID`).
    pub host_id: String,
    /// `host_key`: the key of that message whose value is the address.
    pub host_key: String,
}

/// `authorize:` of a deploy action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorize {
    /// `authorize: ssh`: the runner installs the group's public key in the DUT, so the
    /// secondary roles can log in.
    Ssh,
}

pub(crate) fn connection(cx: &Ctx, path: &Path, v: Value) -> Result<Connection, JobError> {
    match text(cx, path, v)?.as_str() {
        "ssh" => Ok(Connection::Ssh),
        other => Err(cx.err(
            path,
            format!("'{other}' is not a connection (LAVA has only 'ssh')"),
        )),
    }
}

/// The secondary keys of a role, if it has `connection` (or any of `host_role`,
/// `expect_role`, `request`, which need it).
pub(crate) fn role(cx: &Ctx, f: &mut Fields) -> Result<Option<SecondaryRole>, JobError> {
    let Some(v) = f.take("connection") else {
        for key in ["host_role", "expect_role", "request"] {
            if f.has(key) {
                return Err(cx.err(
                    &f.at(key),
                    "needs 'connection: ssh' (only a secondary connection role has it)",
                ));
            }
        }
        return Ok(None);
    };
    let connection = connection(cx, &f.at("connection"), v)?;
    let host_role = f.req_nonempty(cx, "host_role")?;
    let expect_role = f.opt_text(cx, "expect_role")?.unwrap_or(host_role.clone());
    let request = match f.opt_text(cx, "request")? {
        None => None,
        Some(r) if r == "lava-start" => Some(StartRequest::LavaStart),
        Some(r) => {
            return Err(cx.err(
                &f.at("request"),
                format!("'{r}' is not a start request (use lava-start)"),
            ));
        }
    };
    Ok(Some(SecondaryRole {
        connection,
        host_role,
        expect_role,
        request,
    }))
}

/// `protocols:` of a deploy action: the `lava-multinode` items (other protocols warn).
pub(crate) fn deploy_protocols(
    cx: &mut Ctx,
    path: Path,
    v: Value,
) -> Result<Vec<DelayedStart>, JobError> {
    let mut f = Fields::new(cx, path, v)?;
    let mut out = Vec::new();
    if let Some(v) = f.take("lava-multinode") {
        let lpath = f.at("lava-multinode");
        let Value::Seq(items) = v else {
            return Err(cx.expected(&lpath, "a list of protocol requests", &v));
        };
        for (i, item) in items.into_iter().enumerate() {
            if let Some(d) = delayed_start(cx, lpath.index(i), item)? {
                out.push(d);
            }
        }
    }
    let others: Vec<String> = f.keys().cloned().collect();
    for key in others {
        f.take_raw(&key);
        cx.not_honoured(
            &f.path,
            &format!("no protocol request is made by the action ('{key}')"),
        );
    }
    f.finish(cx);
    Ok(out)
}

fn delayed_start(cx: &mut Ctx, path: Path, v: Value) -> Result<Option<DelayedStart>, JobError> {
    let mut f = Fields::new(cx, path, v)?;
    let action = f.req_nonempty(cx, "action")?;
    let request = f.req_nonempty(cx, "request")?;
    let message_id = f.req_nonempty(cx, "messageID")?;
    let message = match f.take("message") {
        Some(v) => scalar_map(cx, &f.at("message"), v)?,
        None => BTreeMap::new(),
    };
    let timeout = match f.take("timeout") {
        Some(v) => Some(timeout(cx, &f.at("timeout"), v)?),
        None => None,
    };
    let request = match request.as_str() {
        "lava-wait" => ProtocolRequest::Wait,
        other => {
            cx.not_honoured(
                &f.at("request"),
                &format!("only lava-wait is made by a deploy action; '{other}' is not"),
            );
            f.finish(cx);
            return Ok(None);
        }
    };
    f.finish(cx);
    Ok(Some(DelayedStart {
        action,
        request,
        message_id,
        message,
        timeout,
    }))
}

/// `parameters:` of a `boot: method: ssh`: `hostID` and `host_key` (both, or neither, which
/// a job for a device with its own SSH address may do).
pub(crate) fn ssh_parameters(
    cx: &mut Ctx,
    path: Path,
    v: Value,
) -> Result<Option<SshParameters>, JobError> {
    let mut f = Fields::new(cx, path, v)?;
    let host_id = f.opt_text(cx, "hostID")?;
    let host_key = f.opt_text(cx, "host_key")?;
    let out = match (host_id, host_key) {
        (None, None) => None,
        (Some(_), None) => return Err(cx.err(&f.path, "'host_key' is missing (hostID is given)")),
        (None, Some(_)) => return Err(cx.err(&f.path, "'hostID' is missing (host_key is given)")),
        (Some(id), Some(key)) => {
            for (name, value) in [("hostID", &id), ("host_key", &key)] {
                if value.trim().is_empty() {
                    return Err(cx.err(&f.at(name), "must not be empty"));
                }
            }
            Some(SshParameters {
                host_id: id,
                host_key: key,
            })
        }
    };
    f.finish(cx);
    Ok(out)
}

/// Checks of the roles against each other: hosts exist and are not secondary themselves.
pub(crate) fn check_roles(
    cx: &Ctx,
    roles_path: &Path,
    roles: &BTreeMap<String, crate::Role>,
) -> Result<(), JobError> {
    let known = || {
        roles
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (name, role) in roles {
        let Some(s) = &role.secondary else { continue };
        let path = roles_path.key(name);
        match roles.get(&s.host_role) {
            None => {
                return Err(cx.err(
                    &path.key("host_role"),
                    format!("unknown role '{}' (roles: {})", s.host_role, known()),
                ));
            }
            Some(_) if s.host_role == *name => {
                return Err(cx.err(&path.key("host_role"), "a role cannot be its own host"));
            }
            Some(host) if host.secondary.is_some() => {
                return Err(cx.err(
                    &path.key("host_role"),
                    format!(
                        "'{}' is a secondary connection role itself; the host role needs a \
                         device",
                        s.host_role
                    ),
                ));
            }
            Some(_) => {}
        }
        if !roles.contains_key(&s.expect_role) {
            return Err(cx.err(
                &path.key("expect_role"),
                format!("unknown role '{}' (roles: {})", s.expect_role, known()),
            ));
        }
    }
    Ok(())
}

/// Checks of the actions against the roles: SSH deploys and boots on secondary roles only,
/// `authorize` on roles with a device, and an SSH boot of a multinode job says where its
/// address comes from.
pub(crate) fn check_actions(cx: &mut Ctx, job: &crate::Job) -> Result<(), JobError> {
    use crate::Action;
    let Some(m) = &job.protocols.multinode else {
        for (i, a) in job.actions.iter().enumerate() {
            if let Action::Deploy(d) = a
                && d.authorize.is_some()
            {
                let path = Path::root().key("actions").index(i).key("deploy");
                cx.not_honoured(
                    &path.key("authorize"),
                    "no SSH key is installed in the DUT: the job has no secondary connection \
                     roles to log in to it",
                );
            }
        }
        return Ok(());
    };
    let secondary = |role: &String| m.roles.get(role).is_some_and(|r| r.secondary.is_some());
    for (i, a) in job.actions.iter().enumerate() {
        let path = Path::root().key("actions").index(i).key(a.kind());
        let (ssh, field) = match a {
            Action::Deploy(d) => {
                if d.authorize.is_some()
                    && let Some((j, r)) = a.role().iter().enumerate().find(|(_, r)| secondary(r))
                {
                    return Err(cx.err(
                        &path.key("role").index(j),
                        format!(
                            "'authorize' installs a key in a device; role '{r}' has none (it \
                             is a secondary connection)"
                        ),
                    ));
                }
                (d.to == "ssh", "to")
            }
            Action::Boot(b) => {
                if b.method == "ssh" && b.ssh.is_none() {
                    return Err(cx.err(
                        &path.key("parameters"),
                        "'hostID' and 'host_key' are missing (a secondary connection gets \
                         the host's address from its message)",
                    ));
                }
                (b.method == "ssh", "method")
            }
            _ => continue,
        };
        for (j, r) in a.role().iter().enumerate() {
            if ssh != secondary(r) {
                let reason = if ssh {
                    format!(
                        "role '{r}' has a device; '{field}: ssh' is for secondary connection \
                         roles (connection: ssh)"
                    )
                } else {
                    format!(
                        "role '{r}' is a secondary connection; it deploys and boots only \
                         over ssh"
                    )
                };
                return Err(cx.err(&path.key("role").index(j), reason));
            }
        }
    }
    Ok(())
}

/// Whether `job` (a single-device job, or one role's share of a multinode job) runs over SSH
/// on another device: it boots, and every boot is `method: ssh`.
pub fn is_secondary(job: &crate::Job) -> bool {
    let mut boots = job.actions.iter().filter_map(|a| match a {
        crate::Action::Boot(b) => Some(b),
        _ => None,
    });
    let mut any = false;
    boots.all(|b| {
        any = true;
        b.method == "ssh"
    }) && any
}

/// What the runner can do over SSH, checked before anything starts: for a job that
/// [`is_secondary`], every deploy is `to: ssh`, every test runs definitions after a boot, and
/// there is no `command` (a secondary connection has no device of its own). The error names
/// the first such action (`file` is only used in messages).
pub fn check_secondary(file: &str, job: &crate::Job) -> Result<(), JobError> {
    check_secondary_actions(file, job, None)
}

/// [`check_secondary`] of the actions of `job` that name `role` (all of them when `None`),
/// with paths naming their places in `job`: how a MultiNode job's secondary connection roles
/// are checked.
pub fn check_secondary_actions(
    file: &str,
    job: &crate::Job,
    role: Option<&str>,
) -> Result<(), JobError> {
    use crate::Action;
    let err = |i: usize, a: &Action, reason: &str| {
        JobError::new(
            file,
            Path::root()
                .key("actions")
                .index(i)
                .key(a.kind())
                .to_string(),
            reason,
        )
    };
    let mut booted = false;
    for (i, a) in job.actions.iter().enumerate() {
        if let Some(r) = role
            && !a.role().iter().any(|n| n == r)
        {
            continue;
        }
        match a {
            Action::Deploy(d) if d.to != "ssh" => {
                return Err(err(
                    i,
                    a,
                    "a job that boots over ssh deploys only 'to: ssh' (it has no device of \
                     its own)",
                ));
            }
            Action::Deploy(_) => {}
            Action::Boot(_) => booted = true,
            Action::Test(_) if !booted => {
                return Err(err(i, a, "needs a boot action before it"));
            }
            Action::Test(t) if t.definitions.is_empty() => {
                return Err(err(
                    i,
                    a,
                    "interactive and monitor tests are not run over ssh yet (use test \
                     definitions)",
                ));
            }
            Action::Test(_) => {}
            Action::Command(_) => {
                return Err(err(
                    i,
                    a,
                    "a job that boots over ssh has no device to run a command of",
                ));
            }
        }
    }
    Ok(())
}
