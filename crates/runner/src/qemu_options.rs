//! The allow-list of QEMU options a job may put on the command line (`image_arg`).
//!
//! A job owns its DUT, not the host: an option passes only when it changes what the guest
//! sees and touches nothing on the host (no host file opened, no program started, no socket,
//! port or monitor opened, no host resource limit changed).
//!
//! Invariants:
//! - Everything not listed here is refused, named with the option; unknown options, stray
//!   words (QEMU opens a bare word as a disk) and JSON forms (`-device {...}`) included.
//! - A file a job option names (`-drive file=`, `-kernel`, `-initrd`, `-dtb`, `-bios`) must be
//!   one of the job's own images, by its exact path in the work directory; drive formats are
//!   `raw` or `qcow2` only (no format that opens other host files, such as `vvfat` or `vmdk`),
//!   and `qcow2` (or a probed format) only for the runner's own disk overlays.
//! - `-device` takes the listed models and properties only; `drive=`/`netdev=` must name a
//!   drive or network the job's own options define.
//! - `-netdev`/`-nic` are `user` networks without `hostfwd`, `guestfwd`, `smb` or `tftp`, and
//!   `restrict=on` unless the operator allows outbound networks for the device.
//! - The operator extends the list per device ([`JobQemuOptions`]); the operator's own
//!   `qemu.extra_args` are never checked here.

use serde::Deserialize;
use std::collections::BTreeSet;

/// What the operator allows a job's QEMU options on top of the built-in list (device file
/// key `job_qemu_options`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobQemuOptions {
    /// Options allowed with any value (e.g. `-smp`), at the operator's risk.
    pub options: Vec<String>,
    /// `-device` models allowed on top of the built-in ones (with the same property checks).
    pub device_models: Vec<String>,
    /// Whether a job's user network may reach outside the guest.
    pub user_network: UserNetwork,
}

/// What a job's `-netdev user`/`-nic user` may reach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserNetwork {
    /// Only `restrict=on`: the guest talks to QEMU's built-in DHCP/DNS, nothing else.
    #[default]
    Restricted,
    /// Outbound connections from the host's network stack too (they can reach the host's
    /// own addresses: choose it only where that is fine).
    Outbound,
}

/// `-device` models that emulate hardware for the guest and open nothing on the host.
pub const DEVICE_MODELS: &[&str] = &[
    "virtio-blk-pci",
    "virtio-scsi-pci",
    "virtio-net-pci",
    "virtio-rng-pci",
    "virtio-balloon-pci",
    "virtio-keyboard-pci",
    "virtio-mouse-pci",
    "virtio-tablet-pci",
    "virtio-gpu-pci",
    "virtio-vga",
    "ide-hd",
    "ide-cd",
    "scsi-hd",
    "scsi-cd",
    "e1000",
    "e1000e",
    "rtl8139",
    "qemu-xhci",
    "usb-ehci",
    "usb-kbd",
    "usb-mouse",
    "usb-tablet",
    "i6300esb",
];

/// `-device` properties a job may set (no `romfile`, `chardev`, `rng`, `fd`, `memdev` ...).
const DEVICE_PROPERTIES: &[&str] = &[
    "id",
    "bus",
    "addr",
    "drive",
    "netdev",
    "mac",
    "serial",
    "bootindex",
    "lun",
    "scsi-id",
    "channel",
    "unit",
    "num-queues",
    "queue-size",
    "logical_block_size",
    "physical_block_size",
    "discard_granularity",
    "multifunction",
    "disable-legacy",
    "disable-modern",
    "wwn",
    "vectors",
    "mq",
    "rombar",
    "write-cache",
];

/// `-drive` keys a job may set.
const DRIVE_KEYS: &[&str] = &[
    "file",
    "format",
    "if",
    "id",
    "index",
    "media",
    "readonly",
    "snapshot",
    "cache",
    "discard",
    "detect-zeroes",
    "werror",
    "rerror",
    "bus",
    "unit",
];

/// `-netdev user`/`-nic user` keys a job may set (no `hostfwd`, `guestfwd`, `smb`, `tftp`).
const USER_NET_KEYS: &[&str] = &[
    "id",
    "net",
    "host",
    "restrict",
    "hostname",
    "dhcpstart",
    "dns",
    "dnssearch",
    "domainname",
    "ipv4",
    "ipv6",
    "ipv6-net",
    "ipv6-host",
    "ipv6-dns",
    "ipv6-prefix",
    "ipv6-prefixlen",
];

/// QEMU options that take no value (the ones an operator may plausibly allow; every other
/// option takes one).
const FLAGS: &[&str] = &[
    "-usb",
    "-snapshot",
    "-no-reboot",
    "-no-shutdown",
    "-no-hpet",
    "-no-acpi",
    "-enable-kvm",
    "-nographic",
    "-s",
    "-S",
    "-full-screen",
    "-nodefaults",
    "-no-user-config",
    "-daemonize",
    "-preconfig",
    "-only-migratable",
    "-semihosting",
    "-win2k-hack",
    "-no-fd-bootchk",
];

/// What the options of one deploy action may refer to.
#[derive(Debug, Clone, Copy)]
pub struct OptionScope<'a> {
    /// Paths of the job's own images (as substituted for `{name}`).
    pub files: &'a BTreeSet<String>,
    /// The subset of `files` that are disk overlays the runner made (qcow2 over an inspected,
    /// self-contained base). Any other file is a `-drive` only with `format=raw`: probing or
    /// `qcow2` would let a job's file name a backing file on the host.
    pub disks: &'a BTreeSet<String>,
    pub extension: &'a JobQemuOptions,
}

/// Checks a job's QEMU argument vector; the error names the option and why it is refused.
pub fn check(args: &[String], scope: OptionScope<'_>) -> Result<(), String> {
    // First pass: pair options with values, collect the ids the job defines.
    let mut pairs: Vec<(&str, Option<&str>)> = Vec::new();
    let mut words = args.iter();
    while let Some(word) = words.next() {
        let Some(name) = option_name(word) else {
            return Err(format!(
                "{word:?} is not an option (QEMU would open a bare word as a disk image)"
            ));
        };
        if FLAGS.contains(&name) {
            pairs.push((name, None));
            continue;
        }
        let value = words
            .next()
            .ok_or_else(|| format!("option {name} needs a value"))?;
        pairs.push((name, Some(value.as_str())));
    }
    let mut drives = BTreeSet::new();
    let mut netdevs = BTreeSet::new();
    for (name, value) in &pairs {
        let Some(value) = value else { continue };
        if matches!(*name, "-drive" | "-netdev") {
            for (key, v) in split_options(value) {
                if key.as_deref() == Some("id") {
                    let set = if *name == "-drive" {
                        &mut drives
                    } else {
                        &mut netdevs
                    };
                    set.insert(v);
                }
            }
        }
    }
    for (name, value) in pairs {
        check_one(name, value, scope, &drives, &netdevs)
            .map_err(|reason| format!("option {name}: {reason}"))?;
    }
    Ok(())
}

/// `-x` or `--x` as `-x`; `None` for anything that is not an option.
fn option_name(word: &str) -> Option<&str> {
    let name = if word.starts_with("--") {
        &word[1..]
    } else {
        word
    };
    let body = name.strip_prefix('-')?;
    let plain = !body.is_empty()
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    plain.then_some(name)
}

fn check_one(
    name: &str,
    value: Option<&str>,
    scope: OptionScope<'_>,
    drives: &BTreeSet<String>,
    netdevs: &BTreeSet<String>,
) -> Result<(), String> {
    if scope.extension.options.iter().any(|o| o == name) {
        return Ok(());
    }
    let Some(value) = value else {
        return match name {
            "-usb" | "-snapshot" | "-no-reboot" | "-no-hpet" | "-no-acpi" => Ok(()),
            _ => Err(refused()),
        };
    };
    if value.trim_start().starts_with('{') {
        return Err("the JSON form is not allowed; use key=value options".into());
    }
    match name {
        "-append" => Ok(()),
        "-kernel" | "-initrd" | "-dtb" | "-bios" => own_file(value, scope),
        "-drive" => drive(value, scope),
        "-device" => device(value, scope, drives, netdevs),
        "-netdev" => user_network(value, scope, NetForm::Netdev),
        "-nic" => user_network(value, scope, NetForm::Nic),
        "-cpu" => {
            let ok = value.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ',' | '.' | '=' | '+')
            });
            if ok {
                Ok(())
            } else {
                Err(format!("{value:?} is not a CPU model"))
            }
        }
        "-boot" => keys_in(
            value,
            &[
                "order",
                "once",
                "menu",
                "strict",
                "reboot-timeout",
                "splash-time",
            ],
        ),
        "-rtc" => keys_in(value, &["base", "clock", "driftfix"]),
        "-vga" => one_of(value, &["std", "cirrus", "virtio", "none"]),
        "-display" => one_of(value, &["none"]),
        "-serial" | "-parallel" => one_of(value, &["none", "null"]),
        "-uuid" => {
            let ok = value.len() == 36 && value.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
            if ok {
                Ok(())
            } else {
                Err(format!("{value:?} is not a UUID"))
            }
        }
        "-fw_cfg" => keys_in(value, &["name", "string"]),
        _ => Err(refused()),
    }
}

fn refused() -> String {
    "not in the options a job may give (it could reach the agent host); the operator may \
     allow it in the device's job_qemu_options"
        .into()
}

fn own_file(path: &str, scope: OptionScope<'_>) -> Result<(), String> {
    if scope.files.contains(path) {
        Ok(())
    } else {
        Err(format!(
            "{path:?} is not one of the job's images (name them as {{image-name}})"
        ))
    }
}

fn one_of(value: &str, allowed: &[&str]) -> Result<(), String> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not allowed (allowed: {})",
            allowed.join(", ")
        ))
    }
}

fn keys_in(value: &str, allowed: &[&str]) -> Result<(), String> {
    for (key, _) in split_options(value) {
        match key {
            Some(k) if allowed.contains(&k.as_str()) => {}
            Some(k) => {
                return Err(format!(
                    "{k}= is not allowed (allowed: {})",
                    allowed.join(", ")
                ));
            }
            None => return Err(format!("{value:?}: every part must be key=value")),
        }
    }
    Ok(())
}

fn drive(value: &str, scope: OptionScope<'_>) -> Result<(), String> {
    let mut file = None;
    let mut format = None;
    for (key, v) in split_options(value) {
        let Some(key) = key else {
            return Err(format!("{v:?}: every part must be key=value"));
        };
        if !DRIVE_KEYS.contains(&key.as_str()) {
            return Err(format!("{key}= is not allowed"));
        }
        match key.as_str() {
            "file" => {
                own_file(&v, scope)?;
                file = Some(v);
            }
            "format" => {
                one_of(&v, &["raw", "qcow2"]).map_err(|e| format!("format={e}"))?;
                format = Some(v);
            }
            "if" => {
                one_of(&v, &["virtio", "ide", "scsi", "none"]).map_err(|e| format!("if={e}"))?
            }
            "id" if v.starts_with("dutlab") => {
                return Err(format!(
                    "id={v}: ids starting with 'dutlab' are the runner's"
                ));
            }
            _ => {}
        }
    }
    let Some(file) = file else {
        return Err("file= must name one of the job's images".into());
    };
    if !scope.disks.contains(&file) && format.as_deref() != Some("raw") {
        return Err(format!(
            "{file:?} is not a disk image of the job (a kernel, initrd or other image): give \
             format=raw"
        ));
    }
    Ok(())
}

fn device(
    value: &str,
    scope: OptionScope<'_>,
    drives: &BTreeSet<String>,
    netdevs: &BTreeSet<String>,
) -> Result<(), String> {
    let mut parts = split_options(value).into_iter();
    let model = match parts.next() {
        Some((None, model)) if !model.is_empty() => model,
        Some((Some(key), model)) if key == "driver" && !model.is_empty() => model,
        _ => return Err("the first part must be the device model".into()),
    };
    let allowed =
        DEVICE_MODELS.contains(&model.as_str()) || scope.extension.device_models.contains(&model);
    if !allowed {
        return Err(format!(
            "model {model:?} is not allowed (allowed: {}, and the device's \
             job_qemu_options.device_models)",
            DEVICE_MODELS.join(", ")
        ));
    }
    for (key, v) in parts {
        let Some(key) = key else {
            return Err(format!("{v:?}: every property must be key=value"));
        };
        if !DEVICE_PROPERTIES.contains(&key.as_str()) {
            return Err(format!("property {key}= is not allowed"));
        }
        match key.as_str() {
            "drive" if !drives.contains(&v) => {
                return Err(format!("drive={v}: no -drive of the job has id={v}"));
            }
            "netdev" if !netdevs.contains(&v) => {
                return Err(format!("netdev={v}: no -netdev of the job has id={v}"));
            }
            _ => {}
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NetForm {
    Netdev,
    Nic,
}

fn user_network(value: &str, scope: OptionScope<'_>, form: NetForm) -> Result<(), String> {
    let mut parts = split_options(value).into_iter();
    match parts.next() {
        Some((None, t)) if t == "user" => {}
        Some((Some(k), t)) if k == "type" && t == "user" => {}
        Some((_, t)) => {
            return Err(format!(
                "network type {t:?} is not allowed (only 'user', which opens nothing on the host)"
            ));
        }
        None => return Err("no network type".into()),
    }
    let mut restricted = false;
    for (key, v) in parts {
        let Some(key) = key else {
            return Err(format!("{v:?}: every part must be key=value"));
        };
        let model = form == NetForm::Nic && key == "model";
        if !(USER_NET_KEYS.contains(&key.as_str()) || model) {
            return Err(format!(
                "{key}= is not allowed (it reaches the host: no hostfwd, guestfwd, smb or tftp)"
            ));
        }
        if model && !DEVICE_MODELS.contains(&v.as_str()) {
            return Err(format!("model={v} is not an allowed network model"));
        }
        if key == "restrict" {
            restricted = matches!(v.as_str(), "on" | "yes" | "true");
        }
    }
    if !restricted && scope.extension.user_network == UserNetwork::Restricted {
        return Err(
            "a job's user network needs restrict=on on this device (the operator may \
                    set job_qemu_options.user_network: outbound)"
                .into(),
        );
    }
    Ok(())
}

/// Every value part of an accepted argument vector that looks like a host path (contains
/// `/`), outside `-append` (the guest's kernel command line) and `-fw_cfg string=` (data
/// for the guest), `-cpu`/`-device`/`-netdev` values without a path and `name=` of
/// `-fw_cfg`. The fuzz target's oracle: each one must be one of the job's files.
pub fn host_paths(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut words = args.iter().peekable();
    while let Some(word) = words.next() {
        let Some(name) = option_name(word) else {
            out.push(word.clone());
            continue;
        };
        if FLAGS.contains(&name) {
            continue;
        }
        let Some(value) = words.next() else { break };
        if name == "-append" {
            continue;
        }
        if matches!(name, "-kernel" | "-initrd" | "-dtb" | "-bios") {
            out.push(value.clone());
            continue;
        }
        for (key, v) in split_options(value) {
            let data = matches!(
                (name, key.as_deref()),
                ("-fw_cfg", Some("string" | "name"))
                    | (
                        "-netdev" | "-nic",
                        Some("dnssearch" | "domainname" | "hostname")
                    )
            );
            if !data && v.contains('/') && !is_address_range(&v) {
                out.push(v);
            }
        }
    }
    out
}

/// `10.0.2.0/24`, `fec0::/64`: an address range, not a path.
fn is_address_range(v: &str) -> bool {
    v.split_once('/')
        .is_some_and(|(a, p)| a.parse::<std::net::IpAddr>().is_ok() && p.parse::<u8>().is_ok())
}

/// QEMU's `key=value,key=value` with `,,` for a literal comma; a part without `=` has no key.
pub fn split_options(value: &str) -> Vec<(Option<String>, String)> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                current.push(',');
                continue;
            }
            parts.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    parts.push(current);
    parts
        .into_iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (Some(k.to_string()), v.to_string()),
            None => (None, p),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn words(s: &str) -> Vec<String> {
        shell_words::split(s).unwrap()
    }

    fn check_with(s: &str, extension: &JobQemuOptions) -> Result<(), String> {
        let files: BTreeSet<String> = ["/w/images/rootfs/overlay.qcow2", "/w/images/kernel/file"]
            .into_iter()
            .map(String::from)
            .collect();
        let disks: BTreeSet<String> = ["/w/images/rootfs/overlay.qcow2".to_string()].into();
        check(
            &words(s),
            OptionScope {
                files: &files,
                disks: &disks,
                extension,
            },
        )
    }

    fn ok(s: &str) -> Result<(), String> {
        check_with(s, &JobQemuOptions::default())
    }

    #[test]
    fn the_usual_image_args_pass() {
        for good in [
            "-drive format=qcow2,file=/w/images/rootfs/overlay.qcow2",
            "-drive file=/w/images/rootfs/overlay.qcow2,if=none,id=d0 -device virtio-blk-pci,drive=d0",
            "-kernel /w/images/kernel/file -append 'console=ttyS0 root=/dev/vda rw'",
            "-netdev user,id=n0,restrict=on -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56",
            "-nic user,model=virtio-net-pci,restrict=on",
            "-cpu qemu64,+ssse3 -boot order=c -rtc base=utc -usb -no-reboot",
            "--drive file=/w/images/rootfs/overlay.qcow2,format=raw",
            "-fw_cfg name=opt/x,string=hello -serial none -display none",
            "-drive file=/w/images/kernel/file,format=raw,if=virtio",
            "-device qemu-xhci -device usb-tablet",
        ] {
            assert_eq!(ok(good), Ok(()), "{good}");
        }
    }

    #[test]
    fn host_reaching_options_are_refused_by_name() {
        for (bad, named) in [
            ("-chardev pipe,id=x,path=/tmp/m", "-chardev"),
            ("-netdev tap,id=n,script=/tmp/x.sh", "-netdev"),
            (
                "-netdev user,id=n,restrict=on,hostfwd=tcp::2222-:22",
                "hostfwd",
            ),
            (
                "-netdev user,id=n,restrict=on,guestfwd=tcp:10.0.2.1:1-cmd:id",
                "guestfwd",
            ),
            ("-netdev user,id=n,restrict=on,smb=/", "smb"),
            ("-netdev user,id=n,restrict=on,tftp=/", "tftp"),
            ("-netdev user,id=n", "restrict=on"),
            ("-object memory-backend-file,id=m,mem-path=/etc", "-object"),
            ("-monitor stdio", "-monitor"),
            ("-qmp unix:/tmp/q,server=on", "-qmp"),
            ("-serial file:/tmp/out", "-serial"),
            ("-serial pipe:/tmp/p", "-serial"),
            ("-fsdev local,id=f,path=/", "-fsdev"),
            ("-virtfs local,path=/,mount_tag=h", "-virtfs"),
            ("-plugin /tmp/p.so", "-plugin"),
            ("-add-fd fd=3,set=1", "-add-fd"),
            ("-incoming exec:sh", "-incoming"),
            ("-readconfig /etc/x", "-readconfig"),
            ("-sandbox off", "-sandbox"),
            ("-runas root", "-runas"),
            ("-run-with user=root", "-run-with"),
            ("-L /etc", "-L"),
            ("-bios /etc/shadow", "-bios"),
            ("-kernel /etc/shadow", "-kernel"),
            ("-option-rom /etc/shadow", "-option-rom"),
            ("-loadvm s", "-loadvm"),
            ("-pidfile /etc/x", "-pidfile"),
            ("-D /etc/x", "-D"),
            ("-trace events=/etc/x", "-trace"),
            ("-d guest_errors", "-d"),
            (
                "-semihosting-config enable=on,target=native",
                "-semihosting-config",
            ),
            ("-semihosting", "-semihosting"),
            ("-fw_cfg name=opt/x,file=/etc/shadow", "file="),
            ("-drive file=/etc/shadow,format=raw", "/etc/shadow"),
            (
                "-drive file=/w/images/rootfs/overlay.qcow2,file.driver=file",
                "file.driver",
            ),
            (
                "-drive file=/w/images/rootfs/overlay.qcow2,locking=off",
                "locking",
            ),
            (
                "-drive file=/w/images/rootfs/overlay.qcow2,format=vvfat",
                "format",
            ),
            ("-drive file=/dev/sda", "/dev/sda"),
            ("-drive driver=file,filename=/etc/shadow", "driver"),
            ("-device virtio-net-pci,romfile=/etc/shadow", "romfile"),
            ("-device vhost-user-fs-pci,chardev=c", "vhost-user-fs-pci"),
            ("-device virtio-blk-pci,drive=dutlab-channel0", "drive="),
            (
                "-device virtio-serial-pci -device virtserialport,chardev=console",
                "virtio-serial-pci",
            ),
            ("-device {\"driver\":\"virtio-9p-pci\"}", "JSON"),
            ("-global virtio-net-pci.romfile=/etc/shadow", "-global"),
            ("-machine pc,dumpdtb=/etc/x", "-machine"),
            ("-m 100000", "-m"),
            ("-display vnc=:0", "-display"),
            ("-vnc :0", "-vnc"),
            ("-boot splash=/etc/shadow", "splash"),
            ("/etc/shadow", "/etc/shadow"),
            ("-nographic", "-nographic"),
            ("-enable-kvm", "-enable-kvm"),
            ("-kernel", "needs a value"),
            (
                "-drive file=/w/images/rootfs/overlay.qcow2,,file=/etc/shadow",
                "/etc/shadow",
            ),
        ] {
            let e = ok(bad).unwrap_err();
            assert!(e.contains(named), "{bad}: {e}");
            assert!(
                e.starts_with("option ") || e.contains("not an option"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn the_operator_extends_the_list_per_device() {
        let ext = JobQemuOptions {
            options: vec!["-smp".into(), "-enable-kvm".into()],
            device_models: vec!["virtio-serial-pci".into()],
            user_network: UserNetwork::Outbound,
        };
        assert_eq!(
            check_with("-smp 2 -enable-kvm -device virtio-serial-pci", &ext),
            Ok(())
        );
        assert_eq!(
            check_with("-netdev user,id=n0 -device e1000,netdev=n0", &ext),
            Ok(())
        );
        // Extending devices does not lift the property checks.
        assert!(check_with("-device virtio-serial-pci,romfile=/etc/x", &ext).is_err());
        assert!(check_with("-netdev user,id=n,hostfwd=tcp::1-:22", &ext).is_err());
    }

    #[test]
    fn option_values_split_like_qemu() {
        assert_eq!(
            split_options("file=/a,,b,if=none"),
            vec![
                (Some("file".to_string()), "/a,b".to_string()),
                (Some("if".to_string()), "none".to_string())
            ]
        );
        assert_eq!(split_options("user")[0], (None, "user".to_string()));
    }
}
