//! What the device types dutlab knows can do, and the check that a job asks for nothing more.
//!
//! [`parse_job`](crate::parse_job) accepts any LAVA job; [`check_runnable`] then says whether
//! some device type dutlab knows can run it (`dutlab job validate` and `dutlab run` call it
//! before anything is fetched or booted).
//!
//! Invariants:
//! - [`DEVICE_TYPES`] is the one table of what each device type supports (deploy targets,
//!   boot methods, architectures); nothing else in this crate names a deploy target or boot
//!   method as supported.
//! - [`check_runnable`] refuses a job exactly when no device type of the table supports every
//!   deploy target, boot method and the architecture the job names, or when the job needs
//!   something no host here has (a test before any boot, a URL scheme dutlab does
//!   not fetch, a `downloads://` file no earlier action fetched). A multinode job is checked
//!   role by role, each role's actions as one device's job.
//! - The lab accepts what [`check_runnable`] accepts (the controller schedules multinode
//!   jobs as groups, secondary connections on their host's device). The error names the first
//!   such field in document order and says what is needed and what the known device types
//!   offer. Whether the job is valid LAVA at all is [`parse_job`](crate::parse_job)'s answer.

use crate::fields::Path;
use crate::{Action, DefinitionSource, ImageSource, Job, JobError, ScriptStep};

/// What one kind of device dutlab drives can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceType {
    /// The driver's name (`qemu`).
    pub name: &'static str,
    /// Accepted `deploy.to` values.
    pub deploy_to: &'static [&'static str],
    /// Accepted `boot.method` values.
    pub boot_methods: &'static [&'static str],
    /// Accepted `context.arch` values; the first is the one shown to people.
    pub arches: &'static [&'static str],
}

/// Every device type dutlab can drive today.
pub const DEVICE_TYPES: &[DeviceType] = &[DeviceType {
    name: "qemu",
    deploy_to: &["tmpfs", "downloads"],
    boot_methods: &["qemu"],
    arches: &["amd64", "x86_64", "x86-64"],
}];

/// URL schemes the runner fetches itself (besides plain paths).
const FETCHED_SCHEMES: &str = "http://, https://, file:// (dutlab run only) and downloads://";

/// Why a URL of `scheme` cannot be fetched here, and what would be needed.
fn scheme_reason(scheme: &str) -> String {
    let needs = match scheme {
        "rclone" => "rclone and a remote configured for it on the agent",
        "scp" => "an SSH client and keys for the remote host on the agent",
        "nfs" => "an NFS mount on the agent",
        _ => "a downloader for it on the agent",
    };
    format!(
        "'{scheme}://' URLs need {needs}, which dutlab does not provide yet; dutlab fetches \
         {FETCHED_SCHEMES} (or upload the file with the job)"
    )
}

/// One thing a job asks of its device.
enum Need<'a> {
    DeployTo(&'a str),
    BootMethod(&'a str),
    Arch(&'a str),
}

impl Need<'_> {
    fn met_by(&self, t: &DeviceType) -> bool {
        match self {
            Need::DeployTo(to) => t.deploy_to.contains(to),
            Need::BootMethod(m) => t.boot_methods.contains(m),
            Need::Arch(a) => t.arches.contains(a),
        }
    }

    /// "'tftp' needs a device with a TFTP server; the device types dutlab knows (qemu) deploy
    /// to tmpfs only".
    fn reason(&self) -> String {
        let names = join(DEVICE_TYPES.iter().map(|t| t.name), ", ");
        match self {
            Need::DeployTo(to) => format!(
                "'{to}' needs {}; the device types dutlab knows ({names}) deploy to {} only",
                deploy_needs(to),
                join(
                    DEVICE_TYPES
                        .iter()
                        .flat_map(|t| t.deploy_to.iter().copied()),
                    " or "
                )
            ),
            Need::BootMethod(m) => format!(
                "'{m}' needs {}; the device types dutlab knows ({names}) boot with {} only",
                boot_needs(m),
                join(
                    DEVICE_TYPES
                        .iter()
                        .flat_map(|t| t.boot_methods.iter().copied()),
                    " or "
                )
            ),
            Need::Arch(a) => format!(
                "'{a}' needs a device of that architecture; the device types dutlab knows \
                 ({names}) run {} only",
                join(
                    DEVICE_TYPES
                        .iter()
                        .filter_map(|t| t.arches.first().copied()),
                    " or "
                )
            ),
        }
    }
}

fn join<'a>(items: impl Iterator<Item = &'a str>, sep: &str) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for item in items {
        if !seen.contains(&item) {
            seen.push(item);
        }
    }
    seen.join(sep)
}

/// What a LAVA deploy target needs, in words.
fn deploy_needs(to: &str) -> String {
    match to {
        "tftp" => "a device with a TFTP server".into(),
        "nfs" => "a device with an NFS server".into(),
        "nbd" => "a device with an NBD server".into(),
        "fastboot" => "a device flashed with fastboot".into(),
        "flasher" => "a device with a flashing command".into(),
        "ssh" => "a device reached over SSH".into(),
        "docker" => "a docker device".into(),
        "lxc" => "an LXC container".into(),
        "usb" | "sata" | "sd" => format!("a device that boots from {to} storage"),
        other => format!("a device type that deploys to '{other}'"),
    }
}

/// What a LAVA boot method needs, in words.
fn boot_needs(method: &str) -> String {
    match method {
        "u-boot" => "a device with the U-Boot bootloader".into(),
        "grub" | "grub-efi" => "a device with the GRUB bootloader".into(),
        "barebox" => "a device with the barebox bootloader".into(),
        "depthcharge" => "a device with the depthcharge bootloader".into(),
        "ipxe" => "a device that boots with iPXE".into(),
        "uefi" | "uefi-menu" => "a device with UEFI firmware".into(),
        "fastboot" => "a device booted with fastboot".into(),
        "ssh" => "a device reached over SSH".into(),
        "minimal" => "a device that boots on its own once powered on".into(),
        "qemu-nfs" => "QEMU with a root file system over NFS".into(),
        "qemu-iso" => "QEMU booting an installer ISO".into(),
        other => format!("a device type that boots with '{other}'"),
    }
}

/// Refuses `job` (read from `file`, used in messages) when no device type dutlab knows can
/// run it. A multinode job is checked per role: each role's actions (and the role's
/// `context.arch`) must suit one device type; a secondary connection role's actions must be
/// what runs over SSH ([`crate::check_secondary_actions`]).
pub fn check_runnable(file: &str, job: &Job) -> Result<(), JobError> {
    match &job.protocols.multinode {
        None => check_device_actions(file, job, None, job.context.arch.as_deref()),
        Some(m) => {
            for (name, role) in &m.roles {
                if role.secondary.is_some() {
                    crate::check_secondary_actions(file, job, Some(name))?;
                    continue;
                }
                let arch = role
                    .context
                    .get("arch")
                    .map(String::as_str)
                    .or(job.context.arch.as_deref());
                check_device_actions(file, job, Some(name), arch)?;
            }
            Ok(())
        }
    }
}

/// The check of one device's actions: every action of `job` (those naming `role`, when
/// given), with `arch` as the device's architecture. Paths name the actions' places in `job`.
fn check_device_actions(
    file: &str,
    job: &Job,
    role: Option<&str>,
    arch: Option<&str>,
) -> Result<(), JobError> {
    let err = |path: &Path, reason: String| JobError::new(file, path.to_string(), reason);
    let mut needs: Vec<(Path, Need)> = Vec::new();
    if let Some(arch) = arch {
        let path = match role {
            Some(r) => Path::root()
                .key("protocols")
                .key("lava-multinode")
                .key("roles")
                .key(r)
                .key("context")
                .key("arch"),
            None => Path::root().key("context").key("arch"),
        };
        needs.push((path, Need::Arch(arch)));
    }
    let mut booted = false;
    let mut fetched_downloads = false;
    for (i, action) in job.actions.iter().enumerate() {
        if let Some(r) = role
            && !action.role().iter().any(|a| a == r)
        {
            continue;
        }
        let path = Path::root().key("actions").index(i).key(action.kind());
        match action {
            Action::Deploy(d) => {
                needs.push((path.key("to"), Need::DeployTo(&d.to)));
                for (name, image) in &d.images {
                    let url = path.key("images").key(name).key("url");
                    match &image.source {
                        ImageSource::Other { scheme, .. } => {
                            return Err(err(&url, scheme_reason(scheme)));
                        }
                        ImageSource::Downloads(file) if !fetched_downloads => {
                            return Err(err(
                                &url,
                                format!(
                                    "downloads://{file} names a file of an earlier \
                                     'deploy: {{to: downloads}}' action; this job has none \
                                     before this one"
                                ),
                            ));
                        }
                        ImageSource::Downloads(_) if d.to == "downloads" => {
                            return Err(err(
                                &url,
                                "a 'deploy: {to: downloads}' action fetches files; it cannot \
                                 take them from downloads://"
                                    .into(),
                            ));
                        }
                        _ => {}
                    }
                }
                if d.only_downloads() {
                    fetched_downloads = true;
                }
            }
            Action::Boot(b) => {
                needs.push((path.key("method"), Need::BootMethod(&b.method)));
                booted = true;
            }
            Action::Test(_) if !booted => {
                return Err(err(
                    &path,
                    "no boot action before this test action (the device types dutlab knows \
                     run tests in a booted DUT's shell)"
                        .into(),
                ));
            }
            Action::Test(t) => {
                for (j, def) in t.definitions.iter().enumerate() {
                    if let DefinitionSource::Url {
                        source: ImageSource::Other { scheme, .. },
                        ..
                    } = &def.source
                    {
                        return Err(err(
                            &path.key("definitions").index(j).key("repository"),
                            scheme_reason(scheme),
                        ));
                    }
                }
                for (i, script) in t.interactive.iter().enumerate() {
                    for (j, step) in script.script.iter().enumerate() {
                        if let ScriptStep::Multinode { call, .. } = step {
                            return Err(err(
                                &path
                                    .key("interactive")
                                    .index(i)
                                    .key("script")
                                    .index(j)
                                    .key(call),
                                match role {
                                    None => "needs a multinode job (protocols.lava-multinode)",
                                    Some(_) => {
                                        "multinode calls in interactive scripts are not run by \
                                         dutlab yet (use lava-send and friends in a test \
                                         definition)"
                                    }
                                }
                                .into(),
                            ));
                        }
                    }
                }
            }
            // Which commands exist is the device's configuration, checked by the runner.
            Action::Command(_) => {}
        }
    }
    if DEVICE_TYPES
        .iter()
        .any(|t| needs.iter().all(|(_, n)| n.met_by(t)))
    {
        return Ok(());
    }
    match needs
        .iter()
        .find(|(_, n)| !DEVICE_TYPES.iter().any(|t| n.met_by(t)))
    {
        Some((path, need)) => Err(err(path, need.reason())),
        // Each need is met by some device type, but no one type meets them all.
        None => Err(err(
            &Path::root().key("actions"),
            "no device type dutlab knows supports every deploy target, boot method and the \
             architecture of this job together"
                .into(),
        )),
    }
}
