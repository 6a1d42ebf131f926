//! Deploy: turns a job's images (or the device's default guest image) into a QEMU boot spec.
//!
//! Invariants:
//! - Image names (the keys under `images:`) match [`check_image_name`]; each image gets its
//!   own new directory `work/deploy-<action>/images/<name>/` and every file in it is created new
//!   (`create_new`): nothing outside the work directory is written, nothing is overwritten.
//! - Where an image may come from is the job's [`HostPolicy`]: locally any path (relative
//!   ones start at the job file's directory); in the lab only paths inside the allowed image
//!   directories, canonical. `http(s)://` images are streamed into the work directory,
//!   bounded in size and by the deploy deadline, from destinations the policy allows: checked
//!   after resolution, connected to the checked address, redirects followed by hand (each hop
//!   checked again), proxies never used.
//! - A checksum is verified on the file as given (before decompression), as LAVA does.
//! - Decompression (gz, xz, bz2, zstd, zip with exactly one member) runs on a blocking thread,
//!   bounded in output bytes, ratio and by the deploy deadline; originals are never written.
//! - `deploy: {to: downloads}` fetches its images into the job's `downloads/` directory (one
//!   per job, file names from the URL, created new); a `downloads://NAME` image of a later
//!   deploy is that file, found by a clean relative name (jobspec refuses `..`), never
//!   through a symbolic link. URLs of other schemes (`rclone://`, ...) are refused naming
//!   what is missing. Every disk image is checked to be a
//!   self-contained raw or qcow2 file and boots from a fresh qcow2 linked clone.
//! - `image_arg` is split like a shell would split words but nothing is evaluated: the only
//!   substitution is `{name}` -> the path of image `name`; the result must pass the QEMU
//!   option allow-list ([`crate::qemu_options`]).
//! - What an image is (kernel, initrd, disk, unused) comes from `jobspec::image_role` alone,
//!   the table the job's warnings are made from.
//! - Every failure here is the job's fault (job-error) except a failing `qemu-img` (infra-error).

use crate::JobEnd;
use crate::policy::{DecompressLimits, HostPolicy, RATIO_FLOOR};
use crate::qemu_options::{self, JobQemuOptions, OptionScope};
use jobspec::{Compression, Image, ImageRole, ImageSource, image_role};
use qemu::image::GuestImage;
use qemu::{BootSpec, Drive};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::time::Instant;

mod codec;
mod http;
#[cfg(test)]
mod tests;

pub use codec::{Codec, decompress};
pub use http::{MAX_DOWNLOAD, download};

/// Longest image name.
pub const MAX_IMAGE_NAME: usize = 64;

/// Redirects followed for one download.
const MAX_REDIRECTS: usize = 10;

/// What a deploy action may use on the host.
#[derive(Debug, Clone, Copy)]
pub struct DeployScope<'a> {
    /// Directory of the job file (relative paths of a local run start here).
    pub job_dir: &'a Path,
    /// The job's work directory: everything deploy writes is inside it.
    pub work_dir: &'a Path,
    pub policy: &'a HostPolicy,
    /// The operator's extension of the QEMU option allow-list for this device.
    pub extension: &'a JobQemuOptions,
    /// The job's `downloads/` directory (`deploy: {to: downloads}` and `downloads://`).
    pub downloads_dir: &'a Path,
}

/// An image name as a file name: 1 to [`MAX_IMAGE_NAME`] of `[a-z0-9_.-]`, no leading dot.
pub fn check_image_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_IMAGE_NAME {
        return Err(format!("must be 1 to {MAX_IMAGE_NAME} characters"));
    }
    if name.starts_with('.') {
        return Err("must not start with '.'".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "contains {c:?}; image names use lower-case letters, digits, '_', '.' and '-'"
        ));
    }
    Ok(())
}

/// Builds the boot spec for explicit images from a deploy action.
pub async fn deploy_images(
    images: &BTreeMap<String, Image>,
    field: &str,
    scope: DeployScope<'_>,
    deadline: Instant,
) -> Result<BootSpec, JobEnd> {
    let work_dir = scope.work_dir;
    for name in images.keys() {
        check_image_name(name)
            .map_err(|reason| JobEnd::job_error(format!("{field}.images: {name:?}: {reason}")))?;
    }
    let images_dir = work_dir.join("images");
    std::fs::create_dir_all(&images_dir)
        .map_err(|e| JobEnd::infra_error(format!("cannot create {}: {e}", images_dir.display())))?;
    let mut boot = BootSpec::default();
    // First pass: make every image a local, decompressed file; disks get their overlay.
    let mut paths: BTreeMap<&str, PathBuf> = BTreeMap::new();
    let mut disks: BTreeMap<&str, String> = BTreeMap::new();
    for (name, image) in images {
        let field = format!("{field}.images.{name}");
        let dir = images_dir.join(name);
        std::fs::create_dir(&dir).map_err(|e| {
            JobEnd::job_error(format!("{field}: cannot create {}: {e}", dir.display()))
        })?;
        let local = fetch(image, &field, scope, &dir, deadline).await?;
        let path = match image_role(name) {
            ImageRole::Kernel | ImageRole::Initrd | ImageRole::Unused => local,
            ImageRole::Disk => {
                let format = qemu::disk::inspect(&local, image.format.as_deref())
                    .await
                    .map_err(|e| match e {
                        qemu::disk::DiskError::Spawn(_) => {
                            JobEnd::infra_error(format!("{field}: {e}"))
                        }
                        _ => JobEnd::job_error(format!("{field}: {e}")),
                    })?;
                let overlay = dir.join("overlay.qcow2");
                qemu::disk::create_overlay(&local, &format, &overlay)
                    .await
                    .map_err(|e| JobEnd::infra_error(format!("{field}: {e}")))?;
                disks.insert(name, format);
                overlay
            }
        };
        paths.insert(name, path);
    }
    let files: BTreeSet<String> = paths.values().map(|p| p.display().to_string()).collect();
    let disk_files: BTreeSet<String> = disks
        .keys()
        .map(|name| paths[name].display().to_string())
        .collect();
    let options = OptionScope {
        files: &files,
        disks: &disk_files,
        extension: scope.extension,
    };
    // Second pass: arguments.
    for (name, image) in images {
        let field = format!("{field}.images.{name}");
        let path = &paths[name.as_str()];
        if let Some(arg) = &image.image_arg {
            let args = image_arg(arg, &paths, &disks)
                .and_then(|args| qemu_options::check(&args, options).map(|()| args))
                .map_err(|reason| JobEnd::job_error(format!("{field}.image_arg: {reason}")))?;
            boot.image_args.extend(args);
            continue;
        }
        match image_role(name) {
            ImageRole::Kernel => boot.kernel = Some(path.clone()),
            ImageRole::Initrd => boot.initrd = Some(path.clone()),
            ImageRole::Disk => boot.drives.push(Drive {
                path: path.clone(),
                format: "qcow2".into(),
            }),
            ImageRole::Unused => {}
        }
    }
    Ok(boot)
}

/// `deploy: {to: downloads}`: fetches, checks and decompresses every image into the job's
/// downloads directory, where later `downloads://NAME` images find them. NAME is the file name
/// of the URL without the compression's extension (LAVA's naming); a name that is not a
/// plain file name, or one already taken, is an error.
pub async fn deploy_downloads(
    images: &BTreeMap<String, Image>,
    field: &str,
    scope: DeployScope<'_>,
    deadline: Instant,
) -> Result<Vec<String>, JobEnd> {
    for name in images.keys() {
        check_image_name(name)
            .map_err(|reason| JobEnd::job_error(format!("{field}.images: {name:?}: {reason}")))?;
    }
    let images_dir = scope.work_dir.join("images");
    for dir in [&images_dir, &scope.downloads_dir.to_path_buf()] {
        std::fs::create_dir_all(dir)
            .map_err(|e| JobEnd::infra_error(format!("cannot create {}: {e}", dir.display())))?;
    }
    let mut names = Vec::new();
    for (name, image) in images {
        let field = format!("{field}.images.{name}");
        let file_name = downloaded_name(image).ok_or_else(|| {
            JobEnd::job_error(format!(
                "{field}.url: its last path component is not a file name to keep it under"
            ))
        })?;
        let target = scope.downloads_dir.join(&file_name);
        if target.symlink_metadata().is_ok() {
            return Err(JobEnd::job_error(format!(
                "{field}.url: downloads://{file_name} was already fetched by this job"
            )));
        }
        let dir = images_dir.join(name);
        std::fs::create_dir(&dir).map_err(|e| {
            JobEnd::job_error(format!("{field}: cannot create {}: {e}", dir.display()))
        })?;
        let local = fetch(image, &field, scope, &dir, deadline).await?;
        // Inside the work directory a rename is enough; a lab path outside it is copied.
        if local.starts_with(scope.work_dir) {
            std::fs::rename(&local, &target)
        } else {
            std::fs::copy(&local, &target).map(|_| ())
        }
        .map_err(|e| JobEnd::infra_error(format!("{field}: cannot keep {file_name}: {e}")))?;
        names.push(file_name);
    }
    Ok(names)
}

/// The name a `to: downloads` image is kept under: the URL's last path component, less the
/// extension of its compression; `None` unless that is a plain file name.
fn downloaded_name(image: &Image) -> Option<String> {
    let url = match &image.source {
        ImageSource::Path(p) => p.as_str(),
        ImageSource::Http(u) => u.split(['?', '#']).next().unwrap_or_default(),
        // An artifact has no file name of its own.
        ImageSource::Artifact(_) | ImageSource::Downloads(_) | ImageSource::Other { .. } => {
            return None;
        }
    };
    let base = url.rsplit('/').next().unwrap_or_default();
    let ext = match image.compression {
        Compression::None => "",
        Compression::Gz => ".gz",
        Compression::Xz => ".xz",
        Compression::Bz2 => ".bz2",
        Compression::Zstd => ".zst",
        Compression::Zip => ".zip",
    };
    let base = base.strip_suffix(ext).unwrap_or(base);
    let base = if image.compression == Compression::Zstd {
        base.strip_suffix(".zstd").unwrap_or(base)
    } else {
        base
    };
    let plain = !base.is_empty()
        && base != "."
        && base != ".."
        && !base.contains(['\\', '\0'])
        && !base.starts_with('.');
    plain.then(|| base.to_owned())
}

/// The file `downloads://NAME` names: a regular file (not a link) the job fetched.
fn downloaded_file(downloads_dir: &Path, name: &str) -> Result<PathBuf, String> {
    let path = downloads_dir.join(name);
    match path.symlink_metadata() {
        Ok(m) if m.file_type().is_file() => Ok(path),
        Ok(_) => Err(format!("downloads://{name} is not a regular file")),
        Err(_) => {
            let mut have: Vec<String> = std::fs::read_dir(downloads_dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            have.sort();
            Err(if have.is_empty() {
                format!("downloads://{name}: no file was fetched by a 'to: downloads' action")
            } else {
                format!(
                    "downloads://{name}: no such file (fetched: {})",
                    have.join(", ")
                )
            })
        }
    }
}

/// Boot spec for the device's default guest image.
pub async fn deploy_default(image: &GuestImage, work_dir: &Path) -> Result<BootSpec, JobEnd> {
    let overlay = work_dir.join("rootfs.overlay.qcow2");
    qemu::disk::create_overlay(&image.rootfs, "qcow2", &overlay)
        .await
        .map_err(|e| JobEnd::infra_error(format!("default image: {e}")))?;
    Ok(BootSpec {
        kernel: Some(image.kernel.clone()),
        initrd: Some(image.initramfs.clone()),
        append: None,
        drives: vec![Drive {
            path: overlay,
            format: "qcow2".into(),
        }],
        image_args: Vec::new(),
        channel_disks: Vec::new(),
        group_link: None,
    })
}

/// Resolves (or downloads), verifies and decompresses one image into `dir` (the image's own
/// new directory); returns the local file to use.
async fn fetch(
    image: &Image,
    field: &str,
    scope: DeployScope<'_>,
    dir: &Path,
    deadline: Instant,
) -> Result<PathBuf, JobEnd> {
    let path = match &image.source {
        ImageSource::Path(p) => scope
            .policy
            .image_path(p, scope.job_dir)
            .map_err(|reason| JobEnd::job_error(format!("{field}.url: {reason}")))?,
        ImageSource::Artifact(hex) => scope
            .policy
            .artifact_path(hex)
            .map_err(|reason| JobEnd::job_error(format!("{field}.url: {reason}")))?,
        ImageSource::Http(url) => {
            let out = dir.join("download");
            download(url, &out, deadline, scope.policy)
                .await
                .map_err(|reason| JobEnd::job_error(format!("{field}.url: {url}: {reason}")))?;
            out
        }
        ImageSource::Downloads(name) => downloaded_file(scope.downloads_dir, name)
            .map_err(|reason| JobEnd::job_error(format!("{field}.url: {reason}")))?,
        // Refused by `jobspec::check_runnable`, which names what is missing.
        ImageSource::Other { scheme, .. } => {
            return Err(JobEnd::job_error(format!(
                "{field}.url: '{scheme}://' URLs are not fetched by dutlab"
            )));
        }
    };
    if !path.is_file() {
        return Err(JobEnd::job_error(format!(
            "{field}.url: {}: no such file",
            path.display()
        )));
    }
    if let Some(want) = &image.sha256sum {
        let hashed = path.clone();
        let got = tokio::task::spawn_blocking(move || sha256_file(&hashed))
            .await
            .map_err(|e| JobEnd::infra_error(format!("{field}: checksum task: {e}")))?
            .map_err(|e| JobEnd::job_error(format!("{field}.url: {}: {e}", path.display())))?;
        if &got != want {
            return Err(JobEnd::job_error(format!(
                "{field}.sha256sum: {} has sha256 {got}, the job expects {want}",
                path.display()
            )));
        }
    }
    let Some(kind) = Codec::of(image.compression) else {
        return Ok(path);
    };
    let out = dir.join("file");
    decompress(kind, &path, &out, scope.policy.decompress, deadline)
        .await
        .map_err(|reason| {
            JobEnd::job_error(format!(
                "{field}: cannot decompress {}: {reason}",
                path.display()
            ))
        })?;
    Ok(out)
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Splits an `image_arg` into argv entries and substitutes `{name}` placeholders.
/// A `-drive` option list whose `file=` is a disk overlay gets `format=qcow2`.
fn image_arg(
    arg: &str,
    paths: &BTreeMap<&str, PathBuf>,
    disks: &BTreeMap<&str, String>,
) -> Result<Vec<String>, String> {
    let words = shell_words::split(arg).map_err(|e| format!("cannot split {arg:?}: {e}"))?;
    let mut out = Vec::with_capacity(words.len());
    for word in words {
        let mut w = word.clone();
        let mut drive_of_disk = false;
        for (name, path) in paths {
            let placeholder = format!("{{{name}}}");
            if w.contains(&placeholder) {
                drive_of_disk |=
                    disks.contains_key(name) && w.contains(&format!("file={placeholder}"));
                w = w.replace(&placeholder, &path.display().to_string());
            }
        }
        if let Some(unknown) = placeholder_in(&w) {
            return Err(format!(
                "{{{unknown}}} names no image of this deploy action"
            ));
        }
        if drive_of_disk {
            w = force_qcow2(&w);
        }
        out.push(w);
    }
    Ok(out)
}

fn placeholder_in(word: &str) -> Option<&str> {
    let start = word.find('{')?;
    let end = word[start..].find('}')? + start;
    let name = &word[start + 1..end];
    (!name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    .then_some(name)
}

fn force_qcow2(options: &str) -> String {
    let mut parts: Vec<String> = options
        .split(',')
        .filter(|p| !p.starts_with("format="))
        .map(str::to_string)
        .collect();
    parts.push("format=qcow2".into());
    parts.join(",")
}
