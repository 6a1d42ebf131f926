//! The agent's configuration file: where the controller is, which devices this lab host
//! offers, and where the agent keeps its spool and per-device work directories.
//!
//! ```yaml
//! controller: http://127.0.0.1:7780     # or a list: [http://c1:7780, http://c2:7780]
//! token_file: /etc/dutlab/agent-token     # relative paths are relative to this file
//! ca_file: /etc/dutlab/ca.pem             # https/wss: trust this CA (default: system roots)
//! # pin: sha256:HEX                       # ... or exactly this server certificate
//! name: lab-host-1                        # default: the host name
//! work_dir: /var/lib/dutlab/agent
//! image_dirs: [/srv/images]              # where jobs may read images by path (default: none)
//! allowed_destinations: [10.1.0.0/16]     # http(s)/git ranges beyond public addresses
//! decompress: {max_bytes: 17179869184, max_ratio: 2000}
//! cache:                                  # artifacts of jobs, shared by the devices
//!   dir: /var/cache/dutlab                # default: work_dir/cache
//!   max_bytes: 21474836480                # default: 20 GiB
//! devices:
//!   - name: qemu-01                       # the fields of a device file (runner::device)
//!     device_type: qemu
//!     tags: [tcg]
//! ```
//!
//! Invariants:
//! - Unknown keys, duplicate keys and duplicate device names are errors; every error names
//!   the file, the field and the reason.
//! - Device and agent names are safe as a single path component (`[A-Za-z0-9._-]`, not
//!   `.`/`..`): a device name becomes a directory under `work_dir/devices/`.
//! - Every path in a loaded [`AgentConfig`] is absolute (relative ones start at the
//!   directory of the configuration file).
//! - What a job may reach on this host is [`HostSettings`], the operator's alone: jobs read
//!   images by path only inside `image_dirs` (each must exist), fetch from public addresses
//!   and `allowed_destinations` only, and decompress within `decompress`.
//! - `ca_file` and `pin` exclude each other; a CA file must hold PEM certificates and a pin
//!   must be `sha256:` and 64 hex digits, checked at load.
//! - `controller` is one address or a non-empty list of them (several controllers sharing
//!   one PostgreSQL database); every address must be usable as a link URL. The agent dials
//!   them in order and moves to the next when one cannot be reached.
//! - The token never enters this module's types: loading only checks that the token file is
//!   readable and non-empty; the link reads it at connect time. Nothing here can print it.

use crate::AgentError;
use crate::link;
use proto::link::DeviceInfo;
use runner::device::Device;
use runner::policy::{Cidr, DecompressLimits, HostPolicy};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Longest configuration file accepted.
const MAX_CONFIG_FILE: u64 = 1 << 20;

/// A loaded agent configuration. Holds no secret (the token stays in its file).
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// The controllers, in the order they are tried (never empty):
    /// `http(s)://host:port[/prefix]` or `ws(s)://host:port[/prefix]`.
    pub controllers: Vec<String>,
    /// What `https://` / `wss://` trusts: `ca_file`, `pin`, or the system's roots.
    pub trust: tls::Trust,
    /// File holding the agent's bearer token (read at every connect, never printed).
    pub token_file: PathBuf,
    /// The agent's name, unique in the lab.
    pub name: String,
    /// Spool (`spool/`) and per-device work directories (`devices/<device>/`).
    pub work_dir: PathBuf,
    /// The devices this agent offers.
    pub devices: Vec<Device>,
    /// What jobs may reach on this host.
    pub host: HostSettings,
    /// The artifact cache: where, and how large it may grow.
    pub cache: CacheConfig,
}

/// The operator's host policy for every job of this agent (see `runner::policy`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HostSettings {
    /// Absolute directories jobs may read images from by path.
    pub image_dirs: Vec<PathBuf>,
    /// Address ranges allowed beyond public addresses.
    pub allowed_destinations: Vec<Cidr>,
    pub decompress: DecompressLimits,
}

impl HostSettings {
    /// The lab policy of one job (directories canonicalised now, at job start).
    pub fn policy(&self) -> Result<HostPolicy, String> {
        HostPolicy::lab(
            &self.image_dirs,
            self.allowed_destinations.clone(),
            self.decompress,
        )
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDecompress {
    #[serde(default = "default_max_bytes")]
    max_bytes: u64,
    #[serde(default = "default_max_ratio")]
    max_ratio: u64,
}

fn default_max_bytes() -> u64 {
    DecompressLimits::default().max_bytes
}

fn default_max_ratio() -> u64 {
    DecompressLimits::default().max_ratio
}

/// `cache:` of the configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    #[serde(default)]
    dir: Option<PathBuf>,
    #[serde(default)]
    max_bytes: Option<u64>,
}

/// `controller:` as written: one address or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawControllers {
    One(String),
    Several(Vec<String>),
}

/// Most controller addresses an agent tries.
const MAX_CONTROLLERS: usize = 16;

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    controller: RawControllers,
    token_file: PathBuf,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    pin: Option<String>,
    #[serde(default)]
    name: Option<String>,
    work_dir: PathBuf,
    #[serde(default)]
    devices: Vec<Device>,
    #[serde(default)]
    image_dirs: Vec<PathBuf>,
    #[serde(default)]
    allowed_destinations: Vec<String>,
    #[serde(default)]
    decompress: Option<RawDecompress>,
    #[serde(default)]
    cache: RawCache,
}

impl AgentConfig {
    /// Reads and checks the configuration file at `path`.
    pub fn load(path: &Path) -> Result<AgentConfig, AgentError> {
        let file = path.display().to_string();
        let fail = |reason: String| AgentError::Config {
            file: file.clone(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        if meta.len() > MAX_CONFIG_FILE {
            return Err(fail(format!(
                "file is {} bytes, more than the {MAX_CONFIG_FILE} allowed",
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        let absolute = std::path::absolute(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        let base = absolute
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        AgentConfig::parse(&file, &text, &base)
    }

    /// Parses configuration text; `file` names it in errors, relative paths start at `base`.
    pub fn parse(file: &str, text: &str, base: &Path) -> Result<AgentConfig, AgentError> {
        let fail = |reason: String| AgentError::Config {
            file: file.to_string(),
            reason,
        };
        let raw: RawConfig = serde_saphyr::from_str_with_options(text, yaml_options())
            .map_err(|e| fail(yaml_error(text, &e)))?;
        let several = matches!(raw.controller, RawControllers::Several(_));
        let controllers = match raw.controller {
            RawControllers::One(url) => vec![url],
            RawControllers::Several(urls) => urls,
        };
        if controllers.is_empty() || controllers.len() > MAX_CONTROLLERS {
            return Err(fail(format!(
                "controller: give one address or a list of 1 to {MAX_CONTROLLERS}"
            )));
        }
        for (i, url) in controllers.iter().enumerate() {
            let field = if several {
                format!("controller[{i}]")
            } else {
                "controller".to_owned()
            };
            link::websocket_url(url).map_err(|e| fail(format!("{field}: {url:?}: {e}")))?;
        }
        let trust = match (&raw.ca_file, &raw.pin) {
            (Some(_), Some(_)) => {
                return Err(fail(
                    "ca_file and pin: give one of them, not both".to_owned(),
                ));
            }
            (Some(ca), None) => {
                let ca = resolve(base, ca);
                tls::read_certificates(&ca).map_err(|e| fail(format!("ca_file: {e}")))?;
                tls::Trust::CaFile(ca)
            }
            (None, Some(pin)) => tls::Trust::Pin(
                pin.parse()
                    .map_err(|e: tls::TlsError| fail(format!("pin: {e}")))?,
            ),
            (None, None) => tls::Trust::System,
        };
        let token_file = resolve(base, &raw.token_file);
        check_token_file(&token_file).map_err(|e| fail(format!("token_file: {e}")))?;
        let name = match raw.name {
            Some(name) => name,
            None => host_name(),
        };
        check_name(&name).map_err(|e| fail(format!("name: {e}")))?;
        let mut seen = BTreeSet::new();
        let mut devices = raw.devices;
        for (i, device) in devices.iter_mut().enumerate() {
            let field = format!("devices[{i}]");
            check_device(device).map_err(|e| fail(format!("{field}.{e}")))?;
            if !seen.insert(device.name.clone()) {
                return Err(fail(format!(
                    "{field}.name: device '{}' is listed twice",
                    device.name
                )));
            }
            if let Some(dir) = &device.image_dir {
                device.image_dir = Some(resolve(base, dir));
            }
        }
        let mut image_dirs = Vec::new();
        for (i, dir) in raw.image_dirs.iter().enumerate() {
            let dir = resolve(base, dir);
            if !dir.is_dir() {
                return Err(fail(format!(
                    "image_dirs[{i}]: {}: not a directory",
                    dir.display()
                )));
            }
            image_dirs.push(dir);
        }
        let allowed_destinations = raw
            .allowed_destinations
            .iter()
            .enumerate()
            .map(|(i, c)| {
                Cidr::parse(c).map_err(|e| fail(format!("allowed_destinations[{i}]: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let decompress = match raw.decompress {
            None => DecompressLimits::default(),
            Some(d) => {
                if d.max_bytes == 0 || d.max_ratio == 0 {
                    return Err(fail(
                        "decompress: max_bytes and max_ratio must be at least 1".into(),
                    ));
                }
                DecompressLimits {
                    max_bytes: d.max_bytes,
                    max_ratio: d.max_ratio,
                }
            }
        };
        let work_dir = resolve(base, &raw.work_dir);
        let cache = CacheConfig {
            dir: raw
                .cache
                .dir
                .map_or_else(|| work_dir.join("cache"), |d| resolve(base, &d)),
            max_bytes: raw
                .cache
                .max_bytes
                .unwrap_or(crate::artifacts::DEFAULT_MAX_BYTES),
        };
        Ok(AgentConfig {
            controllers,
            trust,
            token_file,
            name,
            work_dir,
            devices,
            host: HostSettings {
                image_dirs,
                allowed_destinations,
                decompress,
            },
            cache,
        })
    }

    /// The spool of every lease: `work_dir/spool`.
    pub fn spool_dir(&self) -> PathBuf {
        self.work_dir.join("spool")
    }

    /// Parent of every device work directory: `work_dir/devices`.
    pub fn devices_dir(&self) -> PathBuf {
        self.work_dir.join("devices")
    }

    /// Where jobs on `device` create their work directories: `work_dir/devices/<device>`.
    pub fn device_dir(&self, device: &str) -> PathBuf {
        self.devices_dir().join(device)
    }
}

/// What each device can do, as told to the controller in `Hello`: the capabilities of its
/// rig.
pub fn rigs(config: &AgentConfig) -> Vec<DeviceInfo> {
    config
        .devices
        .iter()
        .map(|d| DeviceInfo {
            name: d.name.clone(),
            device_type: d.device_type.clone(),
            tags: d.tags.clone(),
            capabilities: capabilities(config, d)
                .iter()
                .map(|c| c.as_str().to_owned())
                .collect(),
        })
        .collect()
}

/// Capabilities of a device's rig. Every device is a QEMU rig today; asking it launches
/// nothing.
fn capabilities(config: &AgentConfig, device: &Device) -> Vec<driver::Capability> {
    use driver::Rig as _;
    qemu::QemuRig::new(device.qemu.clone(), config.device_dir(&device.name)).capabilities()
}

/// A ready agent configuration with `qemu` default QEMU devices named `<name>-qemu-01` ...
pub fn init_config(
    controllers: &[String],
    token_file: &Path,
    qemu: usize,
    name: &str,
    work_dir: &Path,
) -> String {
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned());
    let mut out = String::new();
    out.push_str("# dutlab agent configuration (dutlab agent --config THIS_FILE).\n");
    out.push_str("# Relative paths are relative to this file. Unknown keys are errors.\n\n");
    out.push_str("# The controller this agent dials (http(s)://host:port or ws(s)://host:port);\n");
    out.push_str("# a list when several controllers share one database (tried in order).\n");
    match controllers {
        [one] => out.push_str(&format!("controller: {}\n", quote(one))),
        several => {
            let listed: Vec<String> = several.iter().map(|c| quote(c)).collect();
            out.push_str(&format!("controller: [{}]\n", listed.join(", ")));
        }
    }
    out.push_str("# For https: trust this CA file (`dutlab tls init` makes one), or pin the\n");
    out.push_str("# server certificate; default: the system's roots.\n");
    out.push_str("# ca_file: ca.pem\n# pin: sha256:HEX\n");
    out.push_str("# File holding the agent's token (keep it readable by the agent only).\n");
    out.push_str(&format!(
        "token_file: {}\n",
        quote(&token_file.display().to_string())
    ));
    out.push_str("# The agent's name, unique in the lab.\n");
    out.push_str(&format!("name: {}\n", quote(name)));
    out.push_str("# Log spool and per-device work directories (overlays, QEMU sockets).\n");
    out.push_str(&format!(
        "work_dir: {}\n",
        quote(&work_dir.display().to_string())
    ));
    out.push_str("# What jobs may reach on this host: directories they may read images from\n");
    out.push_str("# by path, address ranges beyond public ones for http(s) and git, limits\n");
    out.push_str("# of decompression (see docs/security.md).\n");
    out.push_str("image_dirs: []\n");
    out.push_str("allowed_destinations: []\n");
    out.push_str("# Devices offered to the controller; the fields of a device file\n");
    out.push_str("# (image_dir, qemu: {accel, memory_mib, cpus, ...}, login) may be added.\n");
    if qemu == 0 {
        out.push_str("devices: []\n");
        return out;
    }
    out.push_str("devices:\n");
    for i in 1..=qemu {
        out.push_str(&format!(
            "  - name: {}\n    device_type: qemu\n    tags: [tcg]\n    qemu: {{accel: tcg, memory_mib: 512}}\n",
            quote(&format!("{name}-qemu-{i:02}"))
        ));
    }
    out
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// The token file must be a readable, non-empty file. Its content is never put in a message.
/// A file that group or others may read is accepted with a warning (the token is a bearer
/// secret: whoever reads it can act as this agent).
fn check_token_file(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let text = std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    if text.iter().all(u8::is_ascii_whitespace) {
        return Err(format!("{}: the file is empty", path.display()));
    }
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o044 != 0 {
            tracing::warn!(
                "token_file: {}: mode {:04o} lets group or others read the agent token; \
                 chmod 600 {}",
                path.display(),
                mode & 0o7777,
                path.display()
            );
        }
    }
    Ok(())
}

/// Agent and device names: one path component of safe characters (`proto::names`, the rule
/// the controller applies to every hello).
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    proto::names::check_name(name).map_err(|e| e.to_string())
}

/// The same checks as a device file (`Device::parse`), with the field named.
fn check_device(device: &Device) -> Result<(), String> {
    check_name(&device.name).map_err(|e| format!("name: {e}"))?;
    if device.device_type.is_empty() {
        return Err("device_type: must not be empty".into());
    }
    if device.qemu.memory_mib < 64 {
        return Err(format!(
            "qemu.memory_mib: {} is too small (at least 64)",
            device.qemu.memory_mib
        ));
    }
    if device.qemu.cpus == 0 {
        return Err("qemu.cpus: must be at least 1".into());
    }
    Ok(())
}

/// The host name, or `dutlab-agent` when the kernel does not say.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| check_name(s).is_ok())
        .unwrap_or_else(|| "dutlab-agent".to_owned())
}

fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: 32,
            flow_nesting_limit: 32,
            max_documents: 1,
            max_nodes: 100_000,
            max_events: 200_016,
            max_aliases: 1_000,
            max_anchors: 1_000,
            max_recorded_anchor_events: 100_000,
            max_recorded_anchor_bytes: 1 << 20,
            max_total_scalar_bytes: 4 << 20,
            max_merge_keys: 100,
            max_inclusion_depth: 0,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: 100_000,
            max_replay_stack_depth: 16,
            max_alias_expansions_per_anchor: 1_000,
        },
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
        strict_booleans: true,
        with_snippet: false,
        crop_radius: 0,
    }
}

/// `line L column C: [key: ]reason`. The parser names unknown, missing and duplicate
/// fields itself; for a wrong value the key written on the offending line is added.
fn yaml_error(text: &str, err: &serde_saphyr::Error) -> String {
    use serde_saphyr::MessageFormatter as _;
    let reason = serde_saphyr::UserMessageFormatter
        .format_message(err)
        .to_string();
    let Some(loc) = err.location().filter(|l| l.line() > 0) else {
        return format!("(document): {reason}");
    };
    let place = format!("line {} column {}", loc.line(), loc.column());
    let key = usize::try_from(loc.line() - 1)
        .ok()
        .and_then(|i| text.lines().nth(i))
        .and_then(key_on_line);
    match key {
        Some(key) if !reason.contains('`') => format!("{place}: {key}: {reason}"),
        _ => format!("{place}: {reason}"),
    }
}

/// The mapping key a YAML line starts with (`  - name: x` -> `name`), if it has one.
fn key_on_line(line: &str) -> Option<&str> {
    let body = line.trim_start().trim_start_matches("- ").trim_start();
    let (key, _) = body.split_once(':')?;
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
    plain.then_some(key)
}
