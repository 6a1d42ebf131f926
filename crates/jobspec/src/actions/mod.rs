//! Actions of a LAVA job: the typed `deploy`, `boot` and `test` actions, their images and
//! test-definition references, and the parsers for them.
//!
//! This module parses one `actions:` list on its own; checks that need the whole job (timeouts
//! against `timeouts.job`, roles against `protocols.lava-multinode`, namespaces being
//! all-or-nothing across actions) live in the job module.
//!
//! Invariants of a parsed [`Action`]:
//! - An action is a mapping with exactly one key, `deploy`, `boot`, `test` or `command`;
//!   `actions` is not empty and keeps file order. A `command` carries only a name: the
//!   command line is the device configuration's, never the job's.
//! - Every action timeout is positive; a `namespace` is never `common` or `docker-test-shell`.
//! - Image `sha256sum`s are 64 lowercase hex digits; image sources are plain paths, `file://`
//!   URLs (reduced to their path, %-escapes decoded) or `http(s)://` URLs with a host (kept as
//!   written). An image is given either in `images` or at the action level, never both.
//! - Boot prompts are not empty; `auto_login` has `password_prompt` exactly when `password`.
//! - A test action has exactly one of a non-empty `definitions`, `interactive` or `monitors`
//!   list (or only `services`, which warns); definition names match `[-_a-zA-Z0-9.]+`,
//!   sources are `inline`, `git` or `url` (an archive; never `downloads://`), `lava-signal`
//!   is `kmsg` or `stdout` (LAVA's schema refuses any other word).
//! - Any URL scheme LAVA's schema takes parses (it takes any string): `downloads://NAME` only
//!   with a clean relative NAME, other schemes kept as [`ImageSource::Other`] for
//!   [`check_runnable`](crate::check_runnable) to refuse. Boot `commands` items are strings
//!   or one-key mappings (uuu's form).
//! - Unknown keys and LAVA features not supported yet are warnings, never errors. A key kept in
//!   the parsed action but not acted on by dutlab (`deploy.os`, `boot.commands`, a `media` other
//!   than tmpfs, an image's `type`, a `format` of a non-disk image, `dtb`/`modules`/`nfsrootfs`
//!   images without `image_arg`) gets a "not honoured" warning naming it; which image names
//!   are kernels, initrds, disks or unused is decided by [`image_role`] alone.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::JobError;
use crate::duration::timeout;
use crate::fields::{Ctx, Fields, Path, boolean, text, text_list, text_or_list};
use crate::interactive::{self, InteractiveScript, Monitor};
use crate::job::TIMED_ACTIONS;
use crate::secondary::{Authorize, Connection, DelayedStart, SshParameters};
use crate::testdef::{self, TestDefinition};
use crate::yaml::Value;

mod boot;
pub(crate) mod deploy;
mod test;

use boot::boot;
use deploy::deploy;
use test::test;

/// One entry of `actions:`.
// A job has a handful of actions, parsed once: boxing the larger ones would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Deploy(Deploy),
    Boot(Boot),
    Test(Test),
    /// `command:` — run a command the operator defined for the device, by name.
    Command(Command),
}

impl Action {
    /// `deploy`, `boot` or `test`.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Deploy(_) => "deploy",
            Action::Boot(_) => "boot",
            Action::Test(_) => "test",
            Action::Command(_) => "command",
        }
    }

    /// The LAVA action name this action answers to in `timeouts.actions` and
    /// `timeouts.connections`: one of [`TIMED_ACTIONS`] (`deployimages`, `boot-qemu-image`,
    /// `lava-test-shell`, `lava-test-interactive`, `lava-test-monitor`, `user-command`).
    pub fn lava_name(&self) -> &'static str {
        match self {
            Action::Deploy(_) => TIMED_ACTIONS[0],
            Action::Boot(_) => TIMED_ACTIONS[1],
            Action::Test(t) if !t.interactive.is_empty() => TIMED_ACTIONS[3],
            Action::Test(t) if !t.monitors.is_empty() => TIMED_ACTIONS[4],
            Action::Test(_) => TIMED_ACTIONS[2],
            Action::Command(_) => TIMED_ACTIONS[5],
        }
    }

    pub fn timeout(&self) -> Option<Duration> {
        match self {
            Action::Deploy(a) => a.timeout,
            Action::Boot(a) => a.timeout,
            Action::Test(a) => a.timeout,
            Action::Command(a) => a.timeout,
        }
    }

    /// Multinode roles this action runs on; empty means every device.
    pub fn role(&self) -> &[String] {
        match self {
            Action::Deploy(a) => &a.role,
            Action::Boot(a) => &a.role,
            Action::Test(a) => &a.role,
            Action::Command(a) => &a.role,
        }
    }

    pub fn namespace(&self) -> Option<&str> {
        match self {
            Action::Deploy(a) => a.namespace.as_deref(),
            Action::Boot(a) => a.namespace.as_deref(),
            Action::Test(a) => a.namespace.as_deref(),
            Action::Command(a) => a.namespace.as_deref(),
        }
    }
}

/// `command:` — a named command of the device (LAVA's `user_commands`). The job names it; the
/// command line itself comes only from the device's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The command's name; not empty.
    pub name: String,
    pub timeout: Option<Duration>,
    pub role: Vec<String>,
    pub namespace: Option<String>,
}

/// `deploy:` — get images onto (or next to) the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deploy {
    /// `tmpfs`, `tftp`, ...
    pub to: String,
    /// By role: `kernel`, `initrd`, `ramdisk`, `rootfs`, `dtb`, ... May be empty.
    pub images: BTreeMap<String, Image>,
    pub os: Option<String>,
    /// `connection: ssh` (`to: ssh`).
    pub connection: Option<Connection>,
    /// `authorize: ssh`: the group's public key goes into the DUT with the overlay.
    pub authorize: Option<Authorize>,
    /// `protocols: lava-multinode:` requests made before the action (a secondary
    /// connection's wait for its host's message).
    pub delayed_start: Vec<DelayedStart>,
    pub timeout: Option<Duration>,
    pub role: Vec<String>,
    pub namespace: Option<String>,
}

impl Deploy {
    /// `to: downloads`: the images are only fetched for later `downloads://` images; the
    /// action gives the DUT nothing to boot.
    pub fn only_downloads(&self) -> bool {
        self.to == "downloads"
    }
}

/// One image of a deploy action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub source: ImageSource,
    pub compression: Compression,
    /// `format:` (e.g. `ext4`, `cpio.newc`).
    pub format: Option<String>,
    /// QEMU argument with a `{name}` placeholder, e.g. `-drive format=raw,file={rootfs}`.
    pub image_arg: Option<String>,
    /// 64 lowercase hex digits.
    pub sha256sum: Option<String>,
    /// LAVA's `type:` (e.g. `zimage` for a kernel).
    pub kind: Option<String>,
}

/// What the QEMU device does with an image, by the image's name in `images`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageRole {
    /// `kernel`: QEMU's `-kernel`.
    Kernel,
    /// `initrd` or `ramdisk`: QEMU's `-initrd`.
    Initrd,
    /// `dtb`, `modules`, `nfsrootfs`: fetched and checked, but not given to QEMU unless the
    /// image has an `image_arg`.
    Unused,
    /// Any other name (`rootfs`, `disk`, ...): a drive, booted from a linked clone.
    Disk,
}

/// The role of the image named `name` (the one table of image names).
pub fn image_role(name: &str) -> ImageRole {
    match name {
        "kernel" => ImageRole::Kernel,
        "initrd" | "ramdisk" => ImageRole::Initrd,
        "dtb" | "modules" | "nfsrootfs" => ImageRole::Unused,
        _ => ImageRole::Disk,
    }
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// A path as written, or the path of a `file://` URL.
    Path(String),
    /// An `http://` or `https://` URL as written.
    Http(String),
    /// `artifact:sha256:<hex>`: a file uploaded to the controller with the job (the digest).
    Artifact(String),
    /// `downloads://NAME`: the file NAME an earlier `deploy: {to: downloads}` action of the
    /// job fetched. NAME is relative, has no `.` or `..` component and no empty one.
    Downloads(String),
    /// A URL of another scheme LAVA's dispatcher may fetch (`rclone://`, `scp://`, ...):
    /// valid LAVA, kept as written; whether a host can fetch it is not decided here.
    Other {
        /// Lower case.
        scheme: String,
        url: String,
    },
}

/// How an image is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    Gz,
    Xz,
    Bz2,
    Zstd,
    /// A zip archive with exactly one member, the image.
    Zip,
}

impl Compression {
    /// The word LAVA's `compression:` uses (`none` for no compression).
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gz => "gz",
            Compression::Xz => "xz",
            Compression::Bz2 => "bz2",
            Compression::Zstd => "zstd",
            Compression::Zip => "zip",
        }
    }
}

/// `boot:` — power the device on and reach a shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    /// `qemu`, `u-boot`, `minimal`, ...
    pub method: String,
    pub media: Option<String>,
    /// Shell prompts to wait for; each non-empty.
    pub prompts: Vec<String>,
    pub auto_login: Option<AutoLogin>,
    /// `commands:` given as a name (a command set of the device).
    pub commands: Option<String>,
    /// `commands:` given as a list of bootloader commands; an item given as a one-key mapping
    /// (the uuu method's `- uuu: -b sd {boot}`) is `KEY: VALUE`.
    pub command_list: Vec<String>,
    pub timeout: Option<Duration>,
    pub role: Vec<String>,
    pub namespace: Option<String>,
    pub connection_timeout: Option<Duration>,
    /// `connection: ssh` of `method: ssh`.
    pub connection: Option<Connection>,
    /// `parameters: {hostID, host_key}` of `method: ssh`: where the host's address comes from.
    pub ssh: Option<SshParameters>,
}

/// `auto_login:` — how to log in at the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoLogin {
    pub login_prompt: String,
    pub username: String,
    /// Present exactly when `password` is.
    pub password_prompt: Option<String>,
    pub password: Option<String>,
    pub login_commands: Vec<String>,
}

/// `test:` — run test definitions in the DUT's shell, interactive scripts on its console, or
/// monitors of its console output. Exactly one of `definitions`, `interactive` and `monitors`
/// is not empty (unless the action has only `services`, which is not run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Test {
    pub definitions: Vec<DefinitionRef>,
    pub interactive: Vec<InteractiveScript>,
    pub monitors: Vec<Monitor>,
    pub timeout: Option<Duration>,
    pub role: Vec<String>,
    pub namespace: Option<String>,
}

/// One entry of `test.definitions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionRef {
    /// Matches `[-_a-zA-Z0-9.]+`.
    pub name: String,
    /// Path of the definition file in the repository.
    pub path: String,
    pub source: DefinitionSource,
    /// `params` and `parameters` merged; scalars stringified.
    pub params: BTreeMap<String, String>,
    /// `lava-signal`: where the run's signals are written in the DUT.
    pub lava_signal: LavaSignal,
}

/// `lava-signal` of a test definition (LAVA accepts exactly these two words).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LavaSignal {
    /// `stdout` (the default): signals are printed on the console.
    #[default]
    Stdout,
    /// `kmsg`: the run script and the helpers write signals into the kernel log
    /// (`/dev/kmsg`, level 0), which the kernel shows on the console; output interleaved
    /// with kernel messages cannot split them.
    Kmsg,
}

/// Where a test definition comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefinitionSource {
    /// `from: inline`: the definition is in the job file.
    Inline(TestDefinition),
    /// `from: url`: a tar archive of test definitions (optionally compressed).
    Url {
        /// An `http(s)://` URL, a path or the path of a `file://` URL, as [`ImageSource`].
        source: ImageSource,
        compression: Compression,
        /// `strip-components`: leading path components dropped from every member.
        strip_components: u32,
    },
    /// `from: git`.
    Git {
        /// Path, `file://`, `http(s)://` or other git URL, as written.
        repository: String,
        revision: Option<String>,
        branch: Option<String>,
        /// Clone with history (LAVA's default: true).
        history: bool,
    },
}

const RESERVED_NAMESPACES: [&str; 2] = ["common", "docker-test-shell"];

pub(crate) fn actions(cx: &mut Ctx, path: &Path, v: Value) -> Result<Vec<Action>, JobError> {
    let Value::Seq(items) = v else {
        return Err(cx.expected(path, "a list of actions", &v));
    };
    if items.is_empty() {
        return Err(cx.err(path, "the job has no actions"));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| action(cx, path.index(i), item))
        .collect()
}

fn action(cx: &mut Ctx, path: Path, v: Value) -> Result<Action, JobError> {
    let map = match v {
        Value::Map(map) if map.len() == 1 => map,
        Value::Map(map) => {
            let keys: Vec<&str> = map.keys().map(String::as_str).collect();
            return Err(cx.err(
                &path,
                format!(
                    "an action is a mapping with one key (deploy, boot or test), found {} keys ({})",
                    keys.len(),
                    keys.join(", ")
                ),
            ));
        }
        other => {
            return Err(cx.err(
                &path,
                format!(
                    "an action is a mapping with one key (deploy, boot or test), found {}",
                    other.kind()
                ),
            ));
        }
    };
    let Some((kind, body)) = map.into_iter().next() else {
        return Err(cx.err(&path, "empty action"));
    };
    let body_path = path.key(&kind);
    match kind.as_str() {
        "deploy" => deploy(cx, body_path, body).map(Action::Deploy),
        "boot" => boot(cx, body_path, body).map(Action::Boot),
        "test" => test(cx, body_path, body).map(Action::Test),
        "command" => command(cx, body_path, body).map(Action::Command),
        other => Err(cx.err(
            &path,
            format!("unknown action type '{other}' (use deploy, boot, test or command)"),
        )),
    }
}

/// Keys every LAVA action may have.
struct Common {
    timeout: Option<Duration>,
    role: Vec<String>,
    namespace: Option<String>,
}

fn common(cx: &mut Ctx, f: &mut Fields) -> Result<Common, JobError> {
    let timeout = match f.take("timeout") {
        Some(v) => Some(timeout(cx, &f.at("timeout"), v)?),
        None => None,
    };
    let role = match f.take("role") {
        Some(v) => text_or_list(cx, &f.at("role"), v)?,
        None => Vec::new(),
    };
    let namespace = f.opt_text(cx, "namespace")?;
    if let Some(ns) = &namespace
        && RESERVED_NAMESPACES.contains(&ns.as_str())
    {
        return Err(cx.err(
            &f.at("namespace"),
            format!("'{ns}' is a reserved namespace name"),
        ));
    }
    f.ignore(
        cx,
        &[
            (
                "connection-namespace",
                "an action uses the connection of the last boot, whatever namespace it names",
            ),
            ("protocols", "no protocol request is made by the action"),
            (
                "timeouts",
                "dutlab times the whole action (its 'timeout'), not LAVA's sub-actions",
            ),
            ("repeat", "the action runs once"),
            ("failure_retry", "a failed action is not retried"),
            ("failure_retry_interval", "a failed action is not retried"),
        ],
    );
    Ok(Common {
        timeout,
        role,
        namespace,
    })
}

fn command(cx: &mut Ctx, path: Path, v: Value) -> Result<Command, JobError> {
    let mut f = Fields::new(cx, path, v)?;
    let name = f.req_nonempty(cx, "name")?;
    let c = common(cx, &mut f)?;
    f.finish(cx);
    Ok(Command {
        name,
        timeout: c.timeout,
        role: c.role,
        namespace: c.namespace,
    })
}
