//! Device files: what a local run (and later an agent) knows about one DUT.
//!
//! ```yaml
//! name: qemu-01
//! device_type: qemu
//! tags: [tcg]
//! image_dir: /var/cache/dutlab/image   # default guest image (kernel, initramfs, rootfs)
//! qemu: { accel: tcg, memory_mib: 512 }
//! overlay_channel: disk                # or console: how test definitions reach the DUT
//! job_qemu_options:                    # what a job's image_arg may add beyond the built-in
//!   options: [-smp]                    # allow-list (runner::qemu_options)
//!   device_models: [virtio-serial-pci]
//!   user_network: restricted           # or outbound
//! login:                               # used when the job's boot action gives none
//!   prompts: ["# $"]
//!   auto_login: { login_prompt: "login:", username: root }
//! user_commands:                       # what a job's `command: {name: ...}` may run on the
//!   relay-on:                          # host (LAVA's user_commands); only this file says
//!     do: usbrelay RELAY_1=1           # what runs: one command line, or a list run in
//!     undo: usbrelay RELAY_1=0         # order; `undo` runs at teardown
//! ```
//!
//! Invariants:
//! - Unknown keys are errors (a device file is ours, not LAVA's), named with file and field.
//! - [`Device::default_qemu`] is the device `dutlab run` uses when none is given.

use qemu::QemuConfig;
use serde::Deserialize;
use std::path::PathBuf;

/// Longest device file accepted.
const MAX_DEVICE_FILE: usize = 256 << 10;

/// One device under test.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    pub name: String,
    pub device_type: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Directory of the default guest image; `None` means `dutlab image path`.
    #[serde(default)]
    pub image_dir: Option<PathBuf>,
    #[serde(default)]
    pub qemu: QemuConfig,
    #[serde(default)]
    pub login: LoginDefaults,
    /// How the test overlay reaches the DUT (default: a virtio disk, console as fallback).
    #[serde(default)]
    pub overlay_channel: crate::overlay::OverlayChannel,
    /// The operator's extension of the QEMU options a job may give.
    #[serde(default)]
    pub job_qemu_options: crate::qemu_options::JobQemuOptions,
    /// Host commands a job may run by name (`command:` actions); none by default.
    #[serde(default)]
    pub user_commands: crate::commands::UserCommands,
}

/// How to reach a shell when the job's boot action does not say.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginDefaults {
    pub prompts: Vec<String>,
    pub auto_login: Option<DefaultAutoLogin>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultAutoLogin {
    pub login_prompt: String,
    pub username: String,
    #[serde(default)]
    pub password_prompt: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

impl Default for LoginDefaults {
    fn default() -> Self {
        LoginDefaults {
            prompts: vec![r"# $".into()],
            auto_login: Some(DefaultAutoLogin {
                login_prompt: "login:".into(),
                username: "root".into(),
                password_prompt: None,
                password: None,
            }),
        }
    }
}

/// A device file that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct DeviceError {
    pub file: String,
    pub reason: String,
}

impl Device {
    /// The built-in local QEMU DUT (TCG, default guest image).
    pub fn default_qemu() -> Device {
        Device {
            name: "qemu-local".into(),
            device_type: "qemu".into(),
            tags: Vec::new(),
            image_dir: None,
            qemu: QemuConfig::default(),
            login: LoginDefaults::default(),
            overlay_channel: Default::default(),
            job_qemu_options: Default::default(),
            user_commands: Default::default(),
        }
    }

    /// Parses a device file.
    pub fn parse(file: &str, text: &str) -> Result<Device, DeviceError> {
        let fail = |reason: String| DeviceError {
            file: file.to_string(),
            reason,
        };
        if text.len() > MAX_DEVICE_FILE {
            return Err(fail(format!(
                "file is {} bytes, more than the {MAX_DEVICE_FILE} allowed",
                text.len()
            )));
        }
        let device: Device = serde_saphyr::from_str(text).map_err(|e| fail(e.to_string()))?;
        if device.name.is_empty() {
            return Err(fail("name: must not be empty".into()));
        }
        if device.qemu.memory_mib < 64 {
            return Err(fail(format!(
                "qemu.memory_mib: {} is too small (at least 64)",
                device.qemu.memory_mib
            )));
        }
        if device.qemu.cpus == 0 {
            return Err(fail("qemu.cpus: must be at least 1".into()));
        }
        Ok(device)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use qemu::Accel;

    #[test]
    fn parses_a_device_file_with_defaults() {
        let d = Device::parse(
            "dev.yaml",
            "name: q1\ndevice_type: qemu\nqemu:\n  accel: kvm\n  memory_mib: 256\n",
        )
        .unwrap();
        assert_eq!(d.qemu.accel, Accel::Kvm);
        assert_eq!(d.qemu.memory_mib, 256);
        assert_eq!(d.qemu.binary, "qemu-system-x86_64");
        assert_eq!(d.login, LoginDefaults::default());
    }

    #[test]
    fn sandbox_run_as_and_job_options_parse() {
        let d = Device::parse(
            "dev.yaml",
            "name: q1\ndevice_type: qemu\nqemu: {sandbox: off, run_as: dutlab}\n\
             job_qemu_options: {options: [-smp], device_models: [virtio-serial-pci], user_network: outbound}\n",
        )
        .unwrap();
        assert_eq!(d.qemu.sandbox, qemu::vm::SandboxMode::Off);
        assert_eq!(d.qemu.run_as, "dutlab");
        assert_eq!(d.job_qemu_options.options, ["-smp"]);
        assert_eq!(
            d.job_qemu_options.user_network,
            crate::qemu_options::UserNetwork::Outbound
        );
        let d = Device::parse("dev.yaml", "name: q1\ndevice_type: qemu\n").unwrap();
        assert_eq!(d.qemu.sandbox, qemu::vm::SandboxMode::On);
        assert_eq!(d.qemu.run_as, "nobody");
        let e = Device::parse(
            "dev.yaml",
            "name: q1\ndevice_type: qemu\njob_qemu_options: {user_network: open}\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("open"), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_file() {
        let e = Device::parse(
            "dev.yaml",
            "name: q1\ndevice_type: qemu\nqemu:\n  acel: kvm\n",
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("dev.yaml: "), "{e}");
        assert!(e.to_string().contains("acel"), "{e}");
        let e = Device::parse(
            "dev.yaml",
            "name: q1\ndevice_type: qemu\nqemu:\n  memory_mib: 1\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("qemu.memory_mib"), "{e}");
    }
}
