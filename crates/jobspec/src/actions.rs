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
use crate::testdef::{self, TestDefinition};
use crate::yaml::Value;

/// One entry of `actions:`.
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

fn deploy(cx: &mut Ctx, path: Path, v: Value) -> Result<Deploy, JobError> {
    let mut f = Fields::new(cx, path, v)?;
    let to = f.req_nonempty(cx, "to")?;
    let c = common(cx, &mut f)?;
    let os = f.opt_text(cx, "os")?;
    if os.is_some() {
        cx.not_honoured(
            &f.at("os"),
            "the test overlay and helpers are the same for every OS",
        );
    }
    let mut images = BTreeMap::new();
    if let Some(v) = f.take("images") {
        let ipath = f.at("images");
        let Value::Map(map) = v else {
            return Err(cx.expected(&ipath, "a mapping of image names to images", &v));
        };
        for (name, v) in map {
            let img = image(cx, ipath.key(&name), &name, v)?;
            images.insert(name, img);
        }
    }
    f.ignore(
        cx,
        &[
            ("authorize", "no SSH key is installed in the DUT"),
            ("overlay_backend", "nothing is written into images"),
            ("type", "deploy types (such as monitor) are not used"),
            ("postprocess", "images are not post-processed"),
            ("uefi", "no UEFI firmware is given to QEMU"),
        ],
    );
    // Deploy methods such as tftp give images at the action level: `kernel: {url: ...}`.
    let inline_images: Vec<String> = f
        .keys()
        .filter(|k| !["to", "images", "os"].contains(&k.as_str()))
        .cloned()
        .collect();
    for name in inline_images {
        let ipath = f.at(&name);
        match f.take(&name) {
            Some(Value::Map(m)) if m.contains_key("url") => {
                if images.contains_key(&name) {
                    return Err(cx.err(
                        &ipath,
                        format!("image '{name}' is given twice (here and in 'images')"),
                    ));
                }
                let img = image(cx, ipath, &name, Value::Map(m))?;
                images.insert(name, img);
            }
            Some(_) => cx.warn(&ipath, "unknown key, ignored"),
            None => {}
        }
    }
    f.finish(cx);
    Ok(Deploy {
        to,
        images,
        os,
        timeout: c.timeout,
        role: c.role,
        namespace: c.namespace,
    })
}

fn image(cx: &mut Ctx, path: Path, name: &str, v: Value) -> Result<Image, JobError> {
    let mut f = Fields::new(cx, path, v)?;
    let url_path = f.at("url");
    let url = f.req_nonempty(cx, "url")?;
    let source = image_source(cx, &url_path, &url)?;
    let compression = match f.take("compression") {
        Some(v) => compression(cx, &f.at("compression"), v)?,
        None => Compression::None,
    };
    let format = f.opt_text(cx, "format")?;
    let image_arg = f.opt_text(cx, "image_arg")?;
    let sha_path = f.at("sha256sum");
    let sha256sum = f
        .opt_text(cx, "sha256sum")?
        .map(|s| sha256(cx, &sha_path, &s))
        .transpose()?;
    let kind = f.opt_text(cx, "type")?;
    if kind.is_some() {
        cx.not_honoured(
            &f.at("type"),
            "the image type is not used; QEMU loads the image as it is",
        );
    }
    let role = image_role(name);
    if format.is_some() && role != ImageRole::Disk {
        cx.not_honoured(
            &f.at("format"),
            &format!("only disk images use 'format'; '{name}' is not a disk"),
        );
    }
    if role == ImageRole::Unused && image_arg.is_none() {
        cx.not_honoured(
            &f.path,
            &format!(
                "the QEMU device does not give a '{name}' image to the guest (it is fetched \
                 and checked only); add 'image_arg' to pass it to QEMU"
            ),
        );
    }
    f.ignore(
        cx,
        &[
            ("md5sum", "md5sum is not checked; use sha256sum"),
            ("sha512sum", "sha512sum is not checked; use sha256sum"),
            ("headers", "downloads send no extra HTTP headers"),
            (
                "archive",
                "archives are not unpacked; the file is used as it is",
            ),
            ("use_cache", "downloads are not cached yet"),
            (
                "overlays",
                "nothing is added into images; the test overlay reaches the DUT on its own",
            ),
            ("partition", "images are used whole; no partition is picked"),
            (
                "sparse",
                "images are used as they are (no sparse conversion)",
            ),
            ("overlay_backend", "nothing is written into images"),
            (
                "root_partition",
                "images are used whole; no partition is picked",
            ),
            ("apply-overlay", "nothing is written into images"),
        ],
    );
    f.finish(cx);
    Ok(Image {
        source,
        compression,
        format,
        image_arg,
        sha256sum,
        kind,
    })
}

/// `scheme` of `scheme://...`, if `s` starts with a URL scheme.
fn url_scheme(s: &str) -> Option<&str> {
    let (scheme, _) = s.split_once("://")?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then_some(scheme)
}

pub(crate) fn image_source(cx: &Ctx, path: &Path, url: &str) -> Result<ImageSource, JobError> {
    if url.starts_with("artifact:") {
        return artifact(cx, path, url).map(|hex| ImageSource::Artifact(hex.to_owned()));
    }
    let Some(scheme) = url_scheme(url) else {
        return Ok(ImageSource::Path(url.to_owned()));
    };
    let rest = &url[scheme.len() + 3..];
    match scheme.to_ascii_lowercase().as_str() {
        "http" | "https" => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
            if host.is_empty() {
                return Err(cx.err(path, format!("URL '{url}' has no host")));
            }
            Ok(ImageSource::Http(url.to_owned()))
        }
        "file" => {
            let rest = rest.strip_prefix("localhost").unwrap_or(rest);
            if !rest.starts_with('/') {
                return Err(cx.err(
                    path,
                    format!("file URL '{url}' must hold an absolute path (file:///path)"),
                ));
            }
            percent_decode(rest)
                .map(ImageSource::Path)
                .ok_or_else(|| cx.err(path, format!("file URL '{url}' has a bad %-escape")))
        }
        "downloads" => downloads_name(rest)
            .map(ImageSource::Downloads)
            .ok_or_else(|| {
                cx.err(
                    path,
                    format!(
                        "'{url}' must name a file as a relative path without '.', '..' or \
                         empty components (downloads://NAME)"
                    ),
                )
            }),
        other => Ok(ImageSource::Other {
            scheme: other.to_owned(),
            url: url.to_owned(),
        }),
    }
}

/// The digest of an `artifact:` reference, or an error naming the field.
fn artifact<'a>(cx: &Ctx, path: &Path, text: &'a str) -> Result<&'a str, JobError> {
    crate::references::artifact_digest(text).ok_or_else(|| {
        cx.err(
            path,
            format!(
                "'{text}' is not an artifact reference (artifact:sha256: and 64 lowercase \
                 hexadecimal digits)"
            ),
        )
    })
}

/// The file name of `downloads://REST` (LAVA joins host and path: `downloads://a/b`,
/// `downloads:///a/b` both name `a/b`), if it is a clean relative path.
fn downloads_name(rest: &str) -> Option<String> {
    let name = rest.trim_start_matches('/');
    let clean = !name.is_empty()
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\\'))
        && !name.contains(['\0', '?', '#']);
    clean.then(|| name.to_owned())
}

pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

pub(crate) fn compression(cx: &Ctx, path: &Path, v: Value) -> Result<Compression, JobError> {
    let s = text(cx, path, v)?;
    match s.to_ascii_lowercase().as_str() {
        "gz" | "gzip" => Ok(Compression::Gz),
        "xz" => Ok(Compression::Xz),
        "bz2" | "bzip2" => Ok(Compression::Bz2),
        "zstd" | "zst" => Ok(Compression::Zstd),
        "zip" => Ok(Compression::Zip),
        _ => Err(cx.err(
            path,
            format!("unsupported compression '{s}' (use gz, xz, bz2, zstd or zip)"),
        )),
    }
}

fn sha256(cx: &Ctx, path: &Path, s: &str) -> Result<String, JobError> {
    let t = s.trim();
    if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(t.to_ascii_lowercase())
    } else {
        Err(cx.err(
            path,
            format!("'{s}' is not a sha256sum (64 hexadecimal digits)"),
        ))
    }
}

fn boot(cx: &mut Ctx, path: Path, v: Value) -> Result<Boot, JobError> {
    let mut f = Fields::new(cx, path, v)?;
    let method = f.req_nonempty(cx, "method")?;
    let c = common(cx, &mut f)?;
    let media = f.opt_text(cx, "media")?;
    if let Some(m) = media.as_deref()
        && m != "tmpfs"
    {
        cx.not_honoured(
            &f.at("media"),
            &format!(
                "the DUT boots what the deploy action gave (as with tmpfs); '{m}' is not used"
            ),
        );
    }
    let prompts = match f.take("prompts") {
        Some(v) => {
            let ppath = f.at("prompts");
            let prompts = text_or_list(cx, &ppath, v)?;
            if let Some(i) = prompts.iter().position(String::is_empty) {
                return Err(cx.err(&ppath.index(i), "a prompt must not be empty"));
            }
            prompts
        }
        None => Vec::new(),
    };
    let auto_login = match f.take("auto_login") {
        Some(v) => Some(auto_login(cx, f.at("auto_login"), v)?),
        None => None,
    };
    let (commands, command_list) = match f.take("commands") {
        Some(v @ Value::Seq(_)) => (None, boot_commands(cx, &f.at("commands"), v)?),
        Some(v) => (Some(text(cx, &f.at("commands"), v)?), Vec::new()),
        None => (None, Vec::new()),
    };
    if commands.is_some() || !command_list.is_empty() {
        cx.not_honoured(
            &f.at("commands"),
            "the QEMU device has no bootloader to send commands to",
        );
    }
    let connection_timeout = match f.take("connection_timeout") {
        Some(v) => Some(timeout(cx, &f.at("connection_timeout"), v)?),
        None => None,
    };
    f.ignore(
        cx,
        &[
            ("connection", "the serial console is the only connection"),
            (
                "transfer_overlay",
                "the test overlay reaches the DUT dutlab's own way, not by a download command",
            ),
            ("docker", "QEMU runs on the host, not in a container"),
            (
                "parameters",
                "kernel, bootloader and shutdown messages are not watched for",
            ),
            (
                "soft_reboot",
                "the DUT is not rebooted from its shell; a new boot action powers it off and on",
            ),
            (
                "ignore_kernel_messages",
                "kernel messages are not watched for",
            ),
            ("reset", "no reset is done before the boot"),
            ("use_bootscript", "the QEMU device has no bootloader"),
            (
                "pre_power_command",
                "no command is run before the DUT is powered on",
            ),
            ("pre_os_command", "no command is run before the OS boots"),
            ("bootloader_prompt", "the QEMU device has no bootloader"),
            (
                "type",
                "the QEMU device has no bootloader to pick a boot type",
            ),
        ],
    );
    f.finish(cx);
    Ok(Boot {
        method,
        media,
        prompts,
        auto_login,
        commands,
        command_list,
        timeout: c.timeout,
        role: c.role,
        namespace: c.namespace,
        connection_timeout,
    })
}

/// Boot commands: strings, or one-key mappings of a tool to its arguments (uuu's
/// `- uuu: -b sd {boot}`, `- bcu: reset usb`), kept as `KEY: VALUE`.
fn boot_commands(cx: &Ctx, path: &Path, v: Value) -> Result<Vec<String>, JobError> {
    let Value::Seq(items) = v else {
        return Err(cx.expected(path, "a list", &v));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let ipath = path.index(i);
            match item {
                Value::Map(m) if m.len() == 1 => {
                    let Some((k, v)) = m.into_iter().next() else {
                        return Err(cx.err(&ipath, "empty mapping"));
                    };
                    let v = text(cx, &ipath.key(&k), v)?;
                    Ok(format!("{k}: {v}"))
                }
                Value::Map(_) => Err(cx.err(
                    &ipath,
                    "a boot command is a string or a mapping with one key (tool: arguments)",
                )),
                other => text(cx, &ipath, other),
            }
        })
        .collect()
}

fn auto_login(cx: &mut Ctx, path: Path, v: Value) -> Result<AutoLogin, JobError> {
    let mut f = Fields::new(cx, path, v)?;
    let login_prompt = f.req_nonempty(cx, "login_prompt")?;
    let username = f.req_text(cx, "username")?;
    let password_prompt = f.opt_text(cx, "password_prompt")?;
    let password = f.opt_text(cx, "password")?;
    match (&password_prompt, &password) {
        (Some(_), None) => {
            return Err(cx.err(&f.path, "'password' is missing (password_prompt is given)"));
        }
        (None, Some(_)) => {
            return Err(cx.err(&f.path, "'password_prompt' is missing (password is given)"));
        }
        _ => {}
    }
    let login_commands = match f.take("login_commands") {
        Some(v) => text_list(cx, &f.at("login_commands"), v)?,
        None => Vec::new(),
    };
    f.finish(cx);
    Ok(AutoLogin {
        login_prompt,
        username,
        password_prompt,
        password,
        login_commands,
    })
}

fn test(cx: &mut Ctx, path: Path, v: Value) -> Result<Test, JobError> {
    let mut f = Fields::new(cx, path, v)?;
    let c = common(cx, &mut f)?;
    // LAVA picks the schema by the first of these keys; each schema refuses the others.
    let forms: Vec<&str> = ["definitions", "interactive", "monitors"]
        .into_iter()
        .filter(|k| f.has(k))
        .collect();
    if forms.len() > 1 {
        return Err(cx.err(
            &f.path,
            format!(
                "a test action has one of 'definitions', 'interactive' or 'monitors'; this \
                 one has {}",
                forms.join(" and ")
            ),
        ));
    }
    let has_other_form = !forms.is_empty() || f.has("services");
    let interactive = match f.take("interactive") {
        Some(v) => interactive::scripts(cx, &f.at("interactive"), v)?,
        None => Vec::new(),
    };
    let monitors = match f.take("monitors") {
        Some(v) => interactive::monitors(cx, &f.at("monitors"), v)?,
        None => Vec::new(),
    };
    let definitions = match f.take("definitions") {
        Some(v) => {
            let dpath = f.at("definitions");
            let Value::Seq(items) = v else {
                return Err(cx.expected(&dpath, "a list of test definitions", &v));
            };
            if items.is_empty() {
                return Err(cx.err(&dpath, "the list of test definitions is empty"));
            }
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| definition_ref(cx, dpath.index(i), item))
                .collect::<Result<Vec<_>, _>>()?
        }
        None if has_other_form => Vec::new(),
        None => {
            return Err(cx.err(
                &f.path,
                "a test action needs 'definitions' (or 'monitors' or 'interactive')",
            ));
        }
    };
    f.ignore(
        cx,
        &[
            (
                "docker",
                "definitions run in the DUT's shell, not in a container",
            ),
            ("services", "service containers are not started"),
        ],
    );
    f.finish(cx);
    Ok(Test {
        definitions,
        interactive,
        monitors,
        timeout: c.timeout,
        role: c.role,
        namespace: c.namespace,
    })
}

fn valid_definition_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn definition_ref(cx: &mut Ctx, path: Path, v: Value) -> Result<DefinitionRef, JobError> {
    let mut f = Fields::new(cx, path, v)?;
    let name = f.req_text(cx, "name")?;
    if !valid_definition_name(&name) {
        return Err(cx.err(
            &f.at("name"),
            format!("'{name}' is not a valid name (use letters, digits, '-', '_' and '.')"),
        ));
    }
    let def_path = f.req_nonempty(cx, "path")?;
    let from_path = f.at("from");
    let from = f.req_text(cx, "from")?;
    let repo_path = f.at("repository");
    let repository = f.req(cx, "repository")?;
    let source = match from.as_str() {
        "git" => {
            let repository = text(cx, &repo_path, repository)?;
            if repository.trim().is_empty() {
                return Err(cx.err(&repo_path, "must not be empty"));
            }
            if repository.starts_with("artifact:") {
                artifact(cx, &repo_path, &repository)?;
            }
            let revision = f.opt_text(cx, "revision")?;
            let branch = f.opt_text(cx, "branch")?;
            let history = match f.take("history") {
                Some(v) => boolean(cx, &f.at("history"), v)?,
                None => true,
            };
            f.ignore(cx, &[("recursive", "submodules are not cloned")]);
            DefinitionSource::Git {
                repository,
                revision,
                branch,
                history,
            }
        }
        "url" => {
            let url = text(cx, &repo_path, repository)?;
            if url.trim().is_empty() {
                return Err(cx.err(&repo_path, "must not be empty"));
            }
            let source = image_source(cx, &repo_path, url.trim())?;
            if matches!(source, ImageSource::Downloads(_)) {
                return Err(cx.err(
                    &repo_path,
                    "downloads:// URLs name images of a deploy action, not test definitions",
                ));
            }
            let compression = match f.take("compression") {
                Some(v) => compression(cx, &f.at("compression"), v)?,
                None => Compression::None,
            };
            let strip_components = match f.take("strip-components") {
                Some(Value::Int(n)) => {
                    u32::try_from(n).ok().filter(|n| *n <= 64).ok_or_else(|| {
                        cx.err(
                            &f.at("strip-components"),
                            format!("{n} is out of range (0 to 64)"),
                        )
                    })?
                }
                Some(other) => {
                    return Err(cx.expected(&f.at("strip-components"), "an integer", &other));
                }
                None => 0,
            };
            DefinitionSource::Url {
                source,
                compression,
                strip_components,
            }
        }
        "inline" => match repository {
            v @ Value::Map(_) => DefinitionSource::Inline(testdef::parse(cx, repo_path, v)?),
            other => {
                return Err(cx.expected(
                    &repo_path,
                    "a mapping (an inline test definition)",
                    &other,
                ));
            }
        },
        other => {
            return Err(cx.err(
                &from_path,
                format!("unsupported source '{other}' (use inline, git or url)"),
            ));
        }
    };
    let params = testdef::params(cx, &mut f)?;
    let signal_path = f.at("lava-signal");
    let lava_signal = match f.opt_text(cx, "lava-signal")?.as_deref() {
        None | Some("stdout") => LavaSignal::Stdout,
        Some("kmsg") => LavaSignal::Kmsg,
        Some(other) => {
            return Err(cx.err(
                &signal_path,
                format!("'{other}' is not a signal channel (use kmsg or stdout)"),
            ));
        }
    };
    f.ignore(
        cx,
        &[
            ("skip_install", "install steps always run"),
            (
                "expected",
                "test cases that never reported are not listed as missing",
            ),
            ("headers", "downloads send no extra HTTP headers"),
            ("compression", "only a 'from: url' archive is decompressed"),
            (
                "strip-components",
                "the archive is unpacked as it is; 'path' is read from its top",
            ),
        ],
    );
    f.finish(cx);
    Ok(DefinitionRef {
        name,
        path: def_path,
        source,
        params,
        lava_signal,
    })
}
