//! Disk images: format detection and linked-clone overlays made with `qemu-img`.
//!
//! Invariants:
//! - The base image is never written: every boot gets a fresh qcow2 overlay whose backing file
//!   is the base, created in O(1) whatever the base size.
//! - The backing format is always passed (`-F`), so a raw base is never probed as something else.

use std::path::{Path, PathBuf};
use tokio::process::Command;

/// Disk image failures.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot run qemu-img: {0} (install the qemu-utils package)")]
    Spawn(std::io::Error),
    #[error("{path}: qemu-img {operation} failed: {stderr}")]
    Failed {
        path: PathBuf,
        operation: &'static str,
        stderr: String,
    },
    #[error("{path}: qemu-img info gave no format")]
    NoFormat { path: PathBuf },
}

/// Runs `qemu-img OPERATION ARGS...` about `path` and returns its stdout.
async fn qemu_img(
    operation: &'static str,
    args: &[&std::ffi::OsStr],
    path: &Path,
) -> Result<Vec<u8>, DiskError> {
    let out = Command::new("qemu-img")
        .arg(operation)
        .args(args)
        .output()
        .await
        .map_err(DiskError::Spawn)?;
    if !out.status.success() {
        return Err(DiskError::Failed {
            path: path.to_path_buf(),
            operation,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

/// Detects an image's format (`qcow2`, `raw`, ...).
pub async fn detect_format(path: &Path) -> Result<String, DiskError> {
    let stdout = qemu_img(
        "info",
        &["-U".as_ref(), "--output=json".as_ref(), path.as_os_str()],
        path,
    )
    .await?;
    let info: serde_json::Value =
        serde_json::from_slice(&stdout).map_err(|_| DiskError::NoFormat {
            path: path.to_path_buf(),
        })?;
    info.get("format")
        .and_then(serde_json::Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| DiskError::NoFormat {
            path: path.to_path_buf(),
        })
}

/// Creates `overlay` as a qcow2 linked clone of `base` (whose format is `base_format`).
pub async fn create_overlay(
    base: &Path,
    base_format: &str,
    overlay: &Path,
) -> Result<(), DiskError> {
    let base = std::path::absolute(base).map_err(DiskError::Spawn)?;
    let args: [&std::ffi::OsStr; 8] = [
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-F".as_ref(),
        base_format.as_ref(),
        "-b".as_ref(),
        base.as_os_str(),
        overlay.as_os_str(),
    ];
    qemu_img("create", &args, overlay).await?;
    Ok(())
}
