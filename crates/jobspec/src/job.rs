//! LAVA job files: the typed [`Job`] with its job-level fields and multinode protocol, and the
//! checks that need the whole job. The actions themselves are parsed in the actions module.
//!
//! Invariants of a parsed [`Job`]:
//! - `name` is not empty; `device_type` is not empty unless the job uses
//!   `protocols.lava-multinode`, in which case each role names its own device type and
//!   `device_type` is whatever the file said (usually empty).
//! - `priority` is in `0..=100`; `actions` is not empty and keeps file order.
//! - Every timeout is positive, and none of the action and connection timeouts (global,
//!   per-action-name, per-action) is longer than `timeouts.job` (as LAVA checks).
//! - In a multinode job every action names at least one role, and every role it names exists.
//!   A role has a `device_type` unless it is a secondary connection (`connection: ssh`),
//!   checked in the secondary module.
//! - Namespaces are all-or-nothing across actions, and never `common` or `docker-test-shell`.
//! - Image `sha256sum`s are 64 lowercase hex digits; image sources are plain paths, `file://`
//!   URLs (reduced to their path) or `http(s)://` URLs (kept as written).
//! - Unknown keys and LAVA features not supported yet are warnings, never errors. Every key
//!   that is kept in the [`Job`] but not acted on by dutlab (`context` variables but `arch`,
//!   `metadata`, `timeouts.queue`, timeouts of LAVA sub-actions, group visibility, several
//!   namespaces) gets a "not honoured" warning naming it.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::actions::{Action, actions};
use crate::duration::{self, timeout};
use crate::fields::{Ctx, Fields, Path, text, text_list};
use crate::secondary::{self, SecondaryRole};
use crate::yaml::Value;
use crate::{JobError, Warning};

/// Default `timeouts.job`.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Default `timeouts.action`.
pub const DEFAULT_ACTION_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Default `timeouts.connection`.
pub const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(2 * 60);
/// Default `priority` (LAVA's `medium`).
pub const DEFAULT_PRIORITY: u8 = 50;

/// A test job: what to deploy, how to boot, which tests to run, on which device type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// `job_name`.
    pub name: String,
    pub device_type: String,
    pub tags: Vec<String>,
    /// 0 (low) to 100 (high).
    pub priority: u8,
    pub visibility: Visibility,
    pub context: Context,
    /// Scalars stringified.
    pub metadata: BTreeMap<String, String>,
    pub timeouts: Timeouts,
    pub actions: Vec<Action>,
    pub protocols: Protocols,
    /// Everything accepted but ignored, for the submitter to see.
    pub warnings: Vec<Warning>,
}

/// Who may see the job.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Visibility {
    #[default]
    Public,
    Personal,
    Group(Vec<String>),
}

/// LAVA's `context`: variables for the device template (QEMU architecture, options, ...).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Context {
    pub arch: Option<String>,
    pub extra_options: Vec<String>,
    /// Other scalar variables, stringified.
    pub other: BTreeMap<String, String>,
    /// Other list variables.
    pub other_lists: BTreeMap<String, Vec<String>>,
}

/// Timeouts at each level. Action-level `timeout:` overrides `actions`, which overrides
/// `action`. Defaults for `action` and `connection` are capped at `job`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    pub job: Duration,
    pub action: Duration,
    pub connection: Duration,
    /// `timeouts.actions.<action-name>`.
    pub actions: BTreeMap<String, Duration>,
    /// `timeouts.connections.<action-name>`.
    pub connections: BTreeMap<String, Duration>,
    /// `timeouts.queue`: how long the job may wait for a device.
    pub queue: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            job: DEFAULT_JOB_TIMEOUT,
            action: DEFAULT_ACTION_TIMEOUT,
            connection: DEFAULT_CONNECTION_TIMEOUT,
            actions: BTreeMap::new(),
            connections: BTreeMap::new(),
            queue: None,
        }
    }
}

/// `protocols:`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Protocols {
    /// `lava-multinode`.
    pub multinode: Option<Multinode>,
}

/// `protocols.lava-multinode`: one job over several devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Multinode {
    /// Not empty.
    pub roles: BTreeMap<String, Role>,
    pub timeout: Option<Duration>,
}

/// One multinode role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub count: u32,
    /// Empty for a secondary connection role (it runs on its host role's device).
    pub device_type: String,
    /// `connection: ssh` and its keys: the role logs in to its host role's device.
    pub secondary: Option<SecondaryRole>,
    pub tags: Vec<String>,
    /// Scalar context variables, stringified.
    pub context: BTreeMap<String, String>,
    /// List context variables (e.g. `extra_options`).
    pub context_lists: BTreeMap<String, Vec<String>>,
    pub timeout: Option<Duration>,
}

pub(crate) fn parse(cx: &mut Ctx, v: Value) -> Result<Job, JobError> {
    let root = Path::root();
    let mut f = match v {
        Value::Null => return Err(cx.err(&Path::root(), "the document is empty")),
        v => Fields::new(cx, root, v)?,
    };

    let name = f.req_nonempty(cx, "job_name")?;
    let protocols = match f.take("protocols") {
        Some(v) => protocols(cx, f.at("protocols"), v)?,
        None => Protocols::default(),
    };
    let device_type = if protocols.multinode.is_some() {
        let dt = f.opt_text(cx, "device_type")?.unwrap_or_default();
        if !dt.is_empty() {
            cx.warn(
                &f.at("device_type"),
                "not used with lava-multinode; each role names its device_type",
            );
        }
        dt
    } else {
        f.req_nonempty(cx, "device_type")?
    };
    let tags = match f.take("tags") {
        Some(v) => text_list(cx, &f.at("tags"), v)?,
        None => Vec::new(),
    };
    let priority = match f.take("priority") {
        Some(v) => priority(cx, &f.at("priority"), v)?,
        None => DEFAULT_PRIORITY,
    };
    let visibility = match f.take("visibility") {
        Some(v) => visibility(cx, f.at("visibility"), v)?,
        None => Visibility::Public,
    };
    let context = match f.take("context") {
        Some(v) => context(cx, f.at("context"), v)?,
        None => Context::default(),
    };
    let metadata = match f.take("metadata") {
        Some(v) => metadata(cx, f.at("metadata"), v)?,
        None => BTreeMap::new(),
    };
    let timeouts = match f.take("timeouts") {
        Some(v) => timeouts(cx, f.at("timeouts"), v)?,
        None => Timeouts::default(),
    };
    let actions_path = f.at("actions");
    let actions = actions(cx, &actions_path, f.req(cx, "actions")?)?;

    f.ignore(
        cx,
        &[
            ("notify", "no notification is sent when the job ends"),
            ("secrets", "secrets are not passed to the job"),
            (
                "environment",
                "no environment variable is set for the job or in the DUT",
            ),
            (
                "reboot_to_fastboot",
                "the device types dutlab knows (qemu) have no fastboot",
            ),
            (
                "compatibility",
                "the job is read with dutlab's rules, whatever LAVA version it names",
            ),
            (
                "device",
                "a job cannot pick its device; any device of the device_type runs it",
            ),
            (
                "worker",
                "a job cannot pick its worker; any agent with a device of the device_type runs it",
            ),
        ],
    );
    f.finish(cx);

    let job = Job {
        name,
        device_type,
        tags,
        priority,
        visibility,
        context,
        metadata,
        timeouts,
        actions,
        protocols,
        warnings: Vec::new(),
    };
    check_timeouts(cx, &job)?;
    check_roles(cx, &job)?;
    secondary::check_actions(cx, &job)?;
    check_namespaces(cx, &job)?;
    warn_namespaces(cx, &job);
    Ok(Job {
        warnings: std::mem::take(&mut cx.warnings),
        ..job
    })
}

fn priority(cx: &Ctx, path: &Path, v: Value) -> Result<u8, JobError> {
    match v {
        Value::Int(n) => u8::try_from(n)
            .ok()
            .filter(|p| *p <= 100)
            .ok_or_else(|| cx.err(path, format!("{n} is out of range (0 to 100)"))),
        Value::Str(s) => match s.to_ascii_lowercase().as_str() {
            "high" => Ok(100),
            "medium" => Ok(50),
            "low" => Ok(0),
            _ => Err(cx.err(
                path,
                format!("'{s}' is not a priority (use high, medium, low or 0 to 100)"),
            )),
        },
        other => Err(cx.expected(path, "high, medium, low or 0 to 100", &other)),
    }
}

fn visibility(cx: &mut Ctx, path: Path, v: Value) -> Result<Visibility, JobError> {
    match v {
        Value::Str(s) if s == "public" => Ok(Visibility::Public),
        Value::Str(s) if s == "personal" => Ok(Visibility::Personal),
        Value::Str(s) => Err(cx.err(
            &path,
            format!("'{s}' is not a visibility (use public, personal or {{group: [...]}})"),
        )),
        v @ Value::Map(_) => {
            let mut g = Fields::new(cx, path, v)?;
            let groups_path = g.at("group");
            let groups = text_list(cx, &groups_path, g.req(cx, "group")?)?;
            g.finish(cx);
            Ok(Visibility::Group(groups))
        }
        other => Err(cx.expected(&path, "public, personal or {group: [...]}", &other)),
    }
}

fn context(cx: &mut Ctx, path: Path, v: Value) -> Result<Context, JobError> {
    let (mut other, mut other_lists) = context_vars(cx, path.clone(), v)?;
    if other_lists.contains_key("arch") {
        return Err(cx.err(&path.key("arch"), "expected a string, found a list"));
    }
    let arch = other.remove("arch");
    let mut ignored: Vec<&String> = other.keys().chain(other_lists.keys()).collect();
    ignored.sort();
    for key in ignored {
        cx.not_honoured(&path.key(key), context_reason(key));
    }
    let extra_options = match other_lists.remove("extra_options") {
        Some(list) => list,
        None => other.remove("extra_options").into_iter().collect(),
    };
    Ok(Context {
        arch,
        extra_options,
        other,
        other_lists,
    })
}

/// LAVA's context variables for its QEMU device template.
const QEMU_CONTEXT: [&str; 15] = [
    "boot_console",
    "boot_root",
    "cpu",
    "guestfs_driveid",
    "guestfs_interface",
    "guestfs_size",
    "machine",
    "memory",
    "model",
    "monitor",
    "netdevice",
    "no_kvm",
    "no_network",
    "serial",
    "vga",
];

/// Why a context variable (any but `arch`) is not used.
fn context_reason(key: &str) -> &'static str {
    if key == "extra_options" {
        "extra QEMU options are not passed to QEMU; its command line comes from the device \
         (device file 'qemu:')"
    } else if QEMU_CONTEXT.contains(&key) {
        "the QEMU command line comes from the device (device file 'qemu:'), not from the job's context"
    } else {
        "dutlab uses no context variable but 'arch'"
    }
}

type ContextVars = (BTreeMap<String, String>, BTreeMap<String, Vec<String>>);

/// LAVA context values are scalars or lists of scalars.
fn context_vars(cx: &mut Ctx, path: Path, v: Value) -> Result<ContextVars, JobError> {
    let Value::Map(map) = v else {
        return Err(cx.expected(&path, "a mapping", &v));
    };
    let mut scalars = BTreeMap::new();
    let mut lists = BTreeMap::new();
    for (key, value) in map {
        let vpath = path.key(&key);
        match value {
            Value::Null => {
                scalars.insert(key, String::new());
            }
            v @ Value::Seq(_) => {
                lists.insert(key, text_list(cx, &vpath, v)?);
            }
            v @ Value::Map(_) => {
                return Err(cx.expected(&vpath, "a string, a number or a list", &v));
            }
            v => {
                scalars.insert(key, text(cx, &vpath, v)?);
            }
        }
    }
    Ok((scalars, lists))
}

fn metadata(cx: &mut Ctx, path: Path, v: Value) -> Result<BTreeMap<String, String>, JobError> {
    let Value::Map(map) = v else {
        return Err(cx.expected(&path, "a mapping", &v));
    };
    if !map.is_empty() {
        cx.not_honoured(
            &path,
            "metadata is not copied into the results (table, JUnit, JSON) or shown with the job",
        );
    }
    let mut out = BTreeMap::new();
    for (key, value) in map {
        match value {
            Value::Null => {
                out.insert(key, String::new());
            }
            Value::Seq(_) | Value::Map(_) => {
                cx.warn(&path.key(&key), "only scalar metadata is kept; ignored");
            }
            v => {
                let s = text(cx, &path.key(&key), v)?;
                out.insert(key, s);
            }
        }
    }
    Ok(out)
}

fn timeouts(cx: &mut Ctx, path: Path, v: Value) -> Result<Timeouts, JobError> {
    let mut f = Fields::new(cx, path, v)?;
    let mut t = Timeouts::default();
    if let Some(v) = f.take("job") {
        t.job = timeout(cx, &f.at("job"), v)?;
    }
    // Defaults never exceed the job timeout; values given are checked against it later.
    t.action = match f.take("action") {
        Some(v) => timeout(cx, &f.at("action"), v)?,
        None => DEFAULT_ACTION_TIMEOUT.min(t.job),
    };
    t.connection = match f.take("connection") {
        Some(v) => timeout(cx, &f.at("connection"), v)?,
        None => DEFAULT_CONNECTION_TIMEOUT.min(t.job),
    };
    if let Some(v) = f.take("queue") {
        t.queue = Some(timeout(cx, &f.at("queue"), v)?);
        cx.not_honoured(
            &f.at("queue"),
            "a queued job waits until a device is free or it is canceled",
        );
    }
    for (key, out) in [
        ("actions", &mut t.actions),
        ("connections", &mut t.connections),
    ] {
        if let Some(v) = f.take(key) {
            let path = f.at(key);
            let Value::Map(map) = v else {
                return Err(cx.expected(&path, "a mapping of action names to timeouts", &v));
            };
            for (name, v) in map {
                let d = timeout(cx, &path.key(&name), v)?;
                if !TIMED_ACTIONS.contains(&name.as_str()) {
                    cx.not_honoured(
                        &path.key(&name),
                        &format!(
                            "dutlab times whole actions, by their LAVA names {}; '{name}' is not one",
                            TIMED_ACTIONS.join(", ")
                        ),
                    );
                }
                out.insert(name, d);
            }
        }
    }
    f.finish(cx);
    Ok(t)
}

/// The LAVA action names dutlab's deploy, boot, test (definitions, interactive, monitors) and
/// command actions answer to in `timeouts.actions` and `timeouts.connections`, in that order
/// ([`Action::lava_name`] picks an action's; the runner looks timeouts up by it).
pub const TIMED_ACTIONS: [&str; 6] = [
    "deployimages",
    "boot-qemu-image",
    "lava-test-shell",
    "lava-test-interactive",
    "lava-test-monitor",
    "user-command",
];

fn protocols(cx: &mut Ctx, path: Path, v: Value) -> Result<Protocols, JobError> {
    let mut f = Fields::new(cx, path, v)?;
    let multinode = match f.take("lava-multinode") {
        Some(v) => Some(multinode(cx, f.at("lava-multinode"), v)?),
        None => None,
    };
    f.ignore(
        cx,
        &[
            ("lava-lxc", "no LXC container is started next to the DUT"),
            ("lava-vland", "no VLAN is set up for the DUT"),
            ("lava-xnbd", "no NBD server is started for the DUT"),
            ("lava-vemsd", "no VExpress MCC is driven"),
        ],
    );
    f.finish(cx);
    Ok(Protocols { multinode })
}

fn multinode(cx: &mut Ctx, path: Path, v: Value) -> Result<Multinode, JobError> {
    let mut f = Fields::new(cx, path, v)?;
    let roles_path = f.at("roles");
    let Value::Map(map) = f.req(cx, "roles")? else {
        return Err(cx.err(&roles_path, "expected a mapping of role names to roles"));
    };
    if map.is_empty() {
        return Err(cx.err(&roles_path, "no roles are defined"));
    }
    let mut roles = BTreeMap::new();
    for (name, v) in map {
        let r = role(cx, roles_path.key(&name), v)?;
        roles.insert(name, r);
    }
    let timeout = match f.take("timeout") {
        Some(v) => Some(timeout(cx, &f.at("timeout"), v)?),
        None => None,
    };
    f.finish(cx);
    secondary::check_roles(cx, &roles_path, &roles)?;
    Ok(Multinode { roles, timeout })
}

fn role(cx: &mut Ctx, path: Path, v: Value) -> Result<Role, JobError> {
    let mut f = Fields::new(cx, path, v)?;
    let secondary = secondary::role(cx, &mut f)?;
    let device_type = match &secondary {
        None => f.req_nonempty(cx, "device_type")?,
        Some(s) => {
            let dt = f.opt_text(cx, "device_type")?.unwrap_or_default();
            if !dt.is_empty() {
                cx.not_honoured(
                    &f.at("device_type"),
                    &format!(
                        "a secondary connection runs on the device of its host role '{}'",
                        s.host_role
                    ),
                );
            }
            String::new()
        }
    };
    let count_path = f.at("count");
    let count = match f.req(cx, "count")? {
        Value::Int(n) => u32::try_from(n)
            .map_err(|_| cx.err(&count_path, format!("{n} is out of range (0 or more)")))?,
        other => return Err(cx.expected(&count_path, "an integer", &other)),
    };
    let tags = match f.take("tags") {
        Some(v) => text_list(cx, &f.at("tags"), v)?,
        None => Vec::new(),
    };
    let (context, context_lists) = match f.take("context") {
        Some(v) => context_vars(cx, f.at("context"), v)?,
        None => Default::default(),
    };
    let timeout = match f.take("timeout") {
        Some(v) => Some(timeout(cx, &f.at("timeout"), v)?),
        None => None,
    };
    f.ignore(
        cx,
        &[
            (
                "essential",
                "a role's failure is not passed on to the other roles",
            ),
            ("environment", "no environment variable is set for the role"),
            ("device", "a role cannot pick its device"),
            ("worker", "a role cannot pick its worker"),
        ],
    );
    f.finish(cx);
    Ok(Role {
        count,
        device_type,
        secondary,
        tags,
        context,
        context_lists,
        timeout,
    })
}

fn check_timeouts(cx: &Ctx, job: &Job) -> Result<(), JobError> {
    let limit = job.timeouts.job;
    let over = |path: Path, d: Duration| -> Result<(), JobError> {
        if d > limit {
            Err(cx.err(
                &path,
                format!(
                    "timeout {} is longer than the job timeout {}",
                    duration::display(d),
                    duration::display(limit)
                ),
            ))
        } else {
            Ok(())
        }
    };
    let t = Path::root().key("timeouts");
    over(t.key("action"), job.timeouts.action)?;
    over(t.key("connection"), job.timeouts.connection)?;
    for (name, d) in &job.timeouts.actions {
        over(t.key("actions").key(name), *d)?;
    }
    for (name, d) in &job.timeouts.connections {
        over(t.key("connections").key(name), *d)?;
    }
    for (i, a) in job.actions.iter().enumerate() {
        let base = Path::root().key("actions").index(i).key(a.kind());
        if let Some(d) = a.timeout() {
            over(base.key("timeout"), d)?;
        }
        if let Action::Boot(b) = a
            && let Some(d) = b.connection_timeout
        {
            over(base.key("connection_timeout"), d)?;
        }
    }
    Ok(())
}

fn check_roles(cx: &mut Ctx, job: &Job) -> Result<(), JobError> {
    for (i, a) in job.actions.iter().enumerate() {
        let path = Path::root().key("actions").index(i).key(a.kind());
        match &job.protocols.multinode {
            Some(m) => {
                if a.role().is_empty() {
                    return Err(cx.err(
                        &path,
                        "'role' is missing (every action of a multinode job names its roles)",
                    ));
                }
                for (j, r) in a.role().iter().enumerate() {
                    if !m.roles.contains_key(r) {
                        let known: Vec<&str> = m.roles.keys().map(String::as_str).collect();
                        return Err(cx.err(
                            &path.key("role").index(j),
                            format!("unknown role '{r}' (roles: {})", known.join(", ")),
                        ));
                    }
                }
            }
            None if !a.role().is_empty() => cx.warn(
                &path.key("role"),
                "ignored: the job has no lava-multinode protocol",
            ),
            None => {}
        }
    }
    Ok(())
}

/// Namespaces are accepted, but dutlab runs every action in one namespace: a boot uses the
/// last deploy, whatever namespace either names.
fn warn_namespaces(cx: &mut Ctx, job: &Job) {
    let mut seen: Vec<&str> = Vec::new();
    for (i, a) in job.actions.iter().enumerate() {
        let Some(ns) = a.namespace() else { continue };
        if seen.contains(&ns) {
            continue;
        }
        seen.push(ns);
        if seen.len() == 2 {
            cx.not_honoured(
                &Path::root()
                    .key("actions")
                    .index(i)
                    .key(a.kind())
                    .key("namespace"),
                &format!(
                    "dutlab runs all actions in one namespace, in file order (a boot uses the \
                     last deploy); '{ns}' is not kept apart from '{}'",
                    seen[0]
                ),
            );
        }
    }
}

fn check_namespaces(cx: &Ctx, job: &Job) -> Result<(), JobError> {
    let with_ns = job
        .actions
        .iter()
        .filter(|a| a.namespace().is_some())
        .count();
    if with_ns == 0 || with_ns == job.actions.len() {
        return Ok(());
    }
    let (i, a) = job
        .actions
        .iter()
        .enumerate()
        .find(|(_, a)| a.namespace().is_none())
        .ok_or_else(|| cx.err(&Path::root().key("actions"), "inconsistent namespaces"))?;
    Err(cx.err(
        &Path::root().key("actions").index(i).key(a.kind()),
        "'namespace' is missing (when one action has a namespace, every action needs one)",
    ))
}
