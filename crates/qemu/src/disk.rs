//! Disk images: format detection and linked-clone overlays made with `qemu-img`.
//!
//! Invariants:
//! - The base image is never written: every boot gets a fresh qcow2 overlay whose backing file
//!   is the base, created in O(1) whatever the base size.
//! - The backing format is always passed (`-F`), so a raw base is never probed as something else.
//! - [`inspect`] accepts a base only as `raw` or a self-contained `qcow2` (no backing file, no
//!   external data file): a job's image can then never make QEMU open another host file.

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
    #[error("{path}: {reason}")]
    Refused { path: PathBuf, reason: String },
}

/// Disk formats a job's image may have: neither opens another file.
pub const SELF_CONTAINED_FORMATS: &[&str] = &["raw", "qcow2"];

/// The format of a job's disk image (`format`: the one the job says, else detected), once it
/// is known to be self-contained: `raw`, or `qcow2` without a backing or external data file.
pub async fn inspect(path: &Path, format: Option<&str>) -> Result<String, DiskError> {
    let refused = |reason: String| DiskError::Refused {
        path: path.to_path_buf(),
        reason,
    };
    if let Some(f) = format
        && !SELF_CONTAINED_FORMATS.contains(&f)
    {
        return Err(refused(format!(
            "format {f:?} is not a disk format dutlab boots (raw or qcow2)"
        )));
    }
    let mut args: Vec<&std::ffi::OsStr> = vec!["-U".as_ref(), "--output=json".as_ref()];
    if let Some(f) = format {
        args.push("-f".as_ref());
        args.push(f.as_ref());
    }
    args.push(path.as_os_str());
    let stdout = qemu_img("info", &args, path).await?;
    let info: serde_json::Value =
        serde_json::from_slice(&stdout).map_err(|_| DiskError::NoFormat {
            path: path.to_path_buf(),
        })?;
    let found = info
        .get("format")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| DiskError::NoFormat {
            path: path.to_path_buf(),
        })?;
    if !SELF_CONTAINED_FORMATS.contains(&found) {
        return Err(refused(format!(
            "format {found:?} is not a disk format dutlab boots (raw or qcow2)"
        )));
    }
    if let Some(backing) = info
        .get("backing-filename")
        .and_then(serde_json::Value::as_str)
    {
        return Err(refused(format!(
            "the image has a backing file ({backing:?}); give a self-contained image"
        )));
    }
    let data_file = info
        .pointer("/format-specific/data/data-file")
        .and_then(serde_json::Value::as_str);
    if let Some(data) = data_file {
        return Err(refused(format!(
            "the image has an external data file ({data:?}); give a self-contained image"
        )));
    }
    Ok(found.to_string())
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn img(args: &[&str]) {
        let out = std::process::Command::new("qemu-img")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
    }

    #[tokio::test]
    async fn only_self_contained_raw_and_qcow2_images_pass() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n).display().to_string();
        std::fs::write(p("secret"), b"host secret").unwrap();
        img(&["create", "-q", "-f", "qcow2", &p("plain.qcow2"), "1M"]);
        img(&["create", "-q", "-f", "raw", &p("plain.raw"), "1M"]);
        img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            &p("secret"),
            &p("backed.qcow2"),
        ]);
        img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("data_file={}", p("data")),
            &p("external.qcow2"),
            "1M",
        ]);
        img(&["create", "-q", "-f", "vmdk", &p("disk.vmdk"), "1M"]);
        let inspect = |n: &str, f: Option<&'static str>| {
            let path = dir.path().join(n);
            async move { inspect(&path, f).await }
        };
        assert_eq!(inspect("plain.qcow2", None).await.unwrap(), "qcow2");
        assert_eq!(inspect("plain.raw", None).await.unwrap(), "raw");
        // A job saying raw gets raw, whatever the bytes look like.
        assert_eq!(inspect("backed.qcow2", Some("raw")).await.unwrap(), "raw");
        for (n, f, why) in [
            ("backed.qcow2", None, "backing file"),
            ("backed.qcow2", Some("qcow2"), "backing file"),
            ("external.qcow2", None, "external data file"),
            ("disk.vmdk", None, "vmdk"),
            ("plain.raw", Some("vvfat"), "vvfat"),
        ] {
            let e = inspect(n, f).await.unwrap_err().to_string();
            assert!(e.contains(why), "{n}: {e}");
        }
    }
}
