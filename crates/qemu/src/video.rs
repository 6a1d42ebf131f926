//! The display of a QEMU DUT (`qemu.video: vga`): a PNG by QMP `screendump`.
//!
//! Invariants:
//! - QEMU writes the picture only into a fresh 0600 file the agent made, through a
//!   write-only descriptor passed with `add-fd` (removed again whatever happens), so it needs
//!   no access to any directory, also after dropping root.
//! - What is read back is at most `max` + 1 bytes and is returned only as a checked
//!   [`Png`] (signature, IHDR, size).

use crate::vm::Vm;
use driver::DriverError;
use driver::rig::Png;
use std::path::Path;

/// A PNG of the display (QMP `screendump`, `format: png`), at most `max` bytes. QEMU
/// writes into a fresh private file in `dir` (mode 0600, removed after) through a
/// descriptor passed to it (`add-fd`), so it needs no access to `dir`, also when it runs
/// as another user; the file is read back through the agent's own descriptor.
pub async fn screendump_png(vm: &mut Vm, dir: &Path, max: usize) -> Result<Png, DriverError> {
    let failed = |reason: String| DriverError::Operation {
        driver: "qemu",
        operation: "screenshot",
        reason,
    };
    if vm.exited().is_some() {
        return Err(failed("QEMU is not running (the device is off)".into()));
    }
    let qmp = vm
        .qmp()
        .ok_or_else(|| failed("QEMU is not running (the device is off)".into()))?;
    std::fs::create_dir_all(dir)?;
    let file = tempfile::Builder::new()
        .prefix("screendump-")
        .suffix(".png")
        .tempfile_in(dir)?;
    // QEMU opens /dev/fdset/N write-only and takes a descriptor of the same access mode.
    let for_qemu = std::fs::OpenOptions::new().write(true).open(file.path())?;
    let added = qmp
        .execute_with_fd("add-fd", None, std::os::fd::AsFd::as_fd(&for_qemu))
        .await
        .map_err(|e| failed(e.to_string()))?;
    drop(for_qemu);
    let set = added
        .get("fdset-id")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| failed(format!("add-fd answered {added} without an fdset-id")))?;
    let dumped = qmp
        .execute(
            "screendump",
            Some(serde_json::json!({ "filename": format!("/dev/fdset/{set}"), "format": "png" })),
        )
        .await;
    let removed = qmp
        .execute("remove-fd", Some(serde_json::json!({ "fdset-id": set })))
        .await;
    dumped.map_err(|e| failed(e.to_string()))?;
    removed.map_err(|e| failed(e.to_string()))?;
    let mut bytes = Vec::new();
    let mut reader = std::io::Read::take(file.as_file(), max as u64 + 1);
    std::io::Read::read_to_end(&mut reader, &mut bytes)?;
    Png::parse(bytes, max).map_err(|e| failed(format!("QEMU's picture: {e}")))
}
