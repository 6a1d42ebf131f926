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

/// A compression format deploy can undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Gz,
    Xz,
    Bz2,
    Zstd,
    /// A zip archive holding exactly one file.
    Zip,
}

impl Codec {
    /// The codec of a job's `compression:`; `None` for no compression.
    pub fn of(c: Compression) -> Option<Codec> {
        match c {
            Compression::None => None,
            Compression::Gz => Some(Codec::Gz),
            Compression::Xz => Some(Codec::Xz),
            Compression::Bz2 => Some(Codec::Bz2),
            Compression::Zstd => Some(Codec::Zstd),
            Compression::Zip => Some(Codec::Zip),
        }
    }
}

/// Sets its flag when dropped: tells a blocking decompression to stop.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Decompresses `input` into the new file `out` on a blocking thread, bounded by `limits`
/// and `deadline`; stops when the future is dropped (job canceled or timed out).
pub async fn decompress(
    codec: Codec,
    input: &Path,
    out: &Path,
    limits: DecompressLimits,
    deadline: Instant,
) -> Result<u64, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let guard = StopOnDrop(stop.clone());
    let (input, out) = (input.to_path_buf(), out.to_path_buf());
    let std_deadline = deadline.into_std();
    let task = tokio::task::spawn_blocking(move || {
        decompress_blocking(codec, &input, &out, limits, std_deadline, &stop)
    });
    let result = tokio::time::timeout_at(deadline, task).await;
    drop(guard);
    match result {
        Err(_) => Err("did not finish before the deploy timeout".into()),
        Ok(Err(e)) => Err(format!("decompression task failed: {e}")),
        Ok(Ok(r)) => r,
    }
}

/// Output bounded in size, by a deadline and a stop flag.
struct Bounded<'a, W> {
    inner: W,
    written: u64,
    max: u64,
    why_max: String,
    deadline: std::time::Instant,
    stop: &'a AtomicBool,
}

impl<W: Write> Write for Bounded<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.stop.load(Ordering::Relaxed) || std::time::Instant::now() >= self.deadline {
            return Err(std::io::Error::other("stopped by the deploy timeout"));
        }
        let after = self.written.saturating_add(buf.len() as u64);
        if after > self.max {
            return Err(std::io::Error::other(self.why_max.clone()));
        }
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn decompress_blocking(
    codec: Codec,
    input: &Path,
    out: &Path,
    limits: DecompressLimits,
    deadline: std::time::Instant,
    stop: &AtomicBool,
) -> Result<u64, String> {
    let source = std::fs::File::open(input).map_err(|e| e.to_string())?;
    let size = source.metadata().map_err(|e| e.to_string())?.len();
    let by_ratio = size.saturating_mul(limits.max_ratio).max(RATIO_FLOOR);
    let (max, why_max) = if by_ratio < limits.max_bytes {
        (
            by_ratio,
            format!(
                "it expands more than {} times its {size} bytes (a decompression bomb?)",
                limits.max_ratio
            ),
        )
    } else {
        (
            limits.max_bytes,
            format!("it expands beyond the {} bytes allowed", limits.max_bytes),
        )
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .map_err(|e| format!("{}: {e}", out.display()))?;
    let mut sink = Bounded {
        inner: std::io::BufWriter::new(file),
        written: 0,
        max,
        why_max,
        deadline,
        stop,
    };
    match codec {
        Codec::Gz => {
            let mut reader = flate2::read::GzDecoder::new(std::io::BufReader::new(source));
            std::io::copy(&mut reader, &mut sink).map_err(|e| e.to_string())?;
        }
        Codec::Xz => {
            let mut reader = std::io::BufReader::new(source);
            lzma_rs::xz_decompress(&mut reader, &mut sink).map_err(|e| match e {
                lzma_rs::error::Error::IoError(io) => io.to_string(),
                other => other.to_string(),
            })?;
        }
        Codec::Bz2 => {
            let mut reader = bzip2::read::MultiBzDecoder::new(std::io::BufReader::new(source));
            std::io::copy(&mut reader, &mut sink).map_err(|e| e.to_string())?;
        }
        Codec::Zstd => {
            let mut reader =
                ruzstd::decoding::StreamingDecoder::new(std::io::BufReader::new(source))
                    .map_err(|e| format!("not a zstd stream: {e}"))?;
            std::io::copy(&mut reader, &mut sink).map_err(|e| e.to_string())?;
        }
        Codec::Zip => {
            let mut archive =
                zip::ZipArchive::new(source).map_err(|e| format!("not a zip archive: {e}"))?;
            let files = (0..archive.len())
                .filter(|i| archive.by_index_raw(*i).is_ok_and(|f| !f.is_dir()))
                .count();
            if archive.len() != 1 || files != 1 {
                return Err(format!(
                    "the zip archive holds {} entries; a zip image holds exactly one file",
                    archive.len()
                ));
            }
            let mut member = archive
                .by_index(0)
                .map_err(|e| format!("cannot read the zip member: {e}"))?;
            std::io::copy(&mut member, &mut sink).map_err(|e| e.to_string())?;
        }
    }
    sink.flush().map_err(|e| e.to_string())?;
    Ok(sink.written)
}

/// Largest image downloaded.
pub const MAX_DOWNLOAD: u64 = 16 << 30;

/// Streams `url` to the new file `out`, bounded in size and by `deadline`, from destinations
/// `policy` allows. Redirects are followed by hand (10 at most), each hop's address checked
/// and pinned; anything but a 2xx answer is an error naming the status.
pub async fn download(
    url: &str,
    out: &Path,
    deadline: Instant,
    policy: &HostPolicy,
) -> Result<(), String> {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    let work = async {
        let mut current = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        let mut hops = 0;
        let response = loop {
            if !matches!(current.scheme(), "http" | "https") {
                return Err(format!("{current}: only http and https are fetched"));
            }
            let host = current
                .host_str()
                .ok_or_else(|| format!("{current}: no host"))?
                .to_string();
            let port = current
                .port_or_known_default()
                .ok_or_else(|| format!("{current}: no port"))?;
            let addr = policy.pinned_address(&host, port).await?;
            let client = reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .resolve(host.trim_matches(['[', ']']), addr)
                .build()
                .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
            let response = client
                .get(current.clone())
                .send()
                .await
                .map_err(|e| format!("download failed: {e}"))?;
            if !response.status().is_redirection() {
                break response;
            }
            hops += 1;
            if hops > MAX_REDIRECTS {
                return Err(format!("more than {MAX_REDIRECTS} redirects"));
            }
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| format!("HTTP {} without a Location", response.status()))?;
            current = current
                .join(location)
                .map_err(|e| format!("redirect to {location:?}: {e}"))?;
        };
        let status = response.status();
        if !status.is_success() {
            return Err(format!("download failed: HTTP {status}"));
        }
        if response.content_length().is_some_and(|n| n > MAX_DOWNLOAD) {
            return Err(format!("larger than the {MAX_DOWNLOAD} bytes allowed"));
        }
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(out)
            .await
            .map_err(|e| format!("{}: {e}", out.display()))?;
        let mut body = response.bytes_stream();
        let mut written = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| format!("download interrupted: {e}"))?;
            written += chunk.len() as u64;
            if written > MAX_DOWNLOAD {
                return Err(format!("larger than the {MAX_DOWNLOAD} bytes allowed"));
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| format!("{}: {e}", out.display()))?;
        }
        file.flush()
            .await
            .map_err(|e| format!("{}: {e}", out.display()))?;
        Ok(())
    };
    tokio::time::timeout_at(deadline, work)
        .await
        .map_err(|_| "download did not finish before the deploy timeout".to_string())?
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A one-route HTTP server: `/final` answers `data`, anything else redirects to
    /// `location`. Counts the connections it accepts.
    async fn server(
        bind: &str,
        location: Option<String>,
    ) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let location = location.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&request);
                    let answer = match (&location, text.starts_with("GET /final ")) {
                        (Some(to), false) => format!(
                            "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\n\r\n"
                        ),
                        _ => "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndata".to_string(),
                    };
                    let _ = stream.write_all(answer.as_bytes()).await;
                });
            }
        });
        (port, hits)
    }

    fn lab_with_names(names: &[(&str, &str)]) -> HostPolicy {
        let mut policy = HostPolicy::lab(
            &[],
            vec![crate::policy::Cidr::parse("127.0.0.2").unwrap()],
            DecompressLimits::default(),
        )
        .unwrap();
        policy.resolver = crate::policy::Resolver::Fixed(
            names
                .iter()
                .map(|(n, ip)| (n.to_string(), vec![ip.parse().unwrap()]))
                .collect(),
        );
        policy
    }

    #[tokio::test]
    async fn a_redirect_to_loopback_is_refused_before_connecting() {
        let (canary, canary_hits) = server("127.0.0.1:0", None).await;
        let (mirror, mirror_hits) = server(
            "127.0.0.2:0",
            Some(format!("http://canary.example:{canary}/image")),
        )
        .await;
        let policy = lab_with_names(&[
            ("mirror.example", "127.0.0.2"),
            ("canary.example", "127.0.0.1"),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        let e = download(
            &format!("http://mirror.example:{mirror}/image"),
            &dir.path().join("out"),
            deadline,
            &policy,
        )
        .await
        .unwrap_err();
        assert!(
            e.contains("canary.example") && e.contains("loopback"),
            "{e}"
        );
        assert_eq!(mirror_hits.load(Ordering::SeqCst), 1);
        assert_eq!(
            canary_hits.load(Ordering::SeqCst),
            0,
            "the canary was reached"
        );
        // A direct URL to the canary's address is refused the same way.
        let e = download(
            &format!("http://127.0.0.1:{canary}/image"),
            &dir.path().join("out2"),
            deadline,
            &policy,
        )
        .await
        .unwrap_err();
        assert!(e.contains("loopback"), "{e}");
        assert_eq!(
            canary_hits.load(Ordering::SeqCst),
            0,
            "the canary was reached"
        );
    }

    #[tokio::test]
    async fn downloads_connect_to_the_checked_address_on_every_hop() {
        // `mirror.example` exists only in the injected table: a download that succeeds
        // connected to the pinned address, never to a second resolution.
        let (mirror, hits) = server("127.0.0.2:0", Some("/final".to_string())).await;
        let policy = lab_with_names(&[("mirror.example", "127.0.0.2")]);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        download(
            &format!("http://mirror.example:{mirror}/image"),
            &out,
            deadline,
            &policy,
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"data");
        assert_eq!(hits.load(Ordering::SeqCst), 2, "one connection per hop");
        // The file is created new: a second download to it is refused, never overwritten.
        let e = download(
            &format!("http://mirror.example:{mirror}/final"),
            &out,
            deadline,
            &policy,
        )
        .await
        .unwrap_err();
        assert!(e.contains("exists"), "{e}");
    }

    #[tokio::test]
    async fn decompression_is_bounded_in_size_and_ratio() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("zeros.gz");
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&input).unwrap(),
            flate2::Compression::best(),
        );
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..80 {
            gz.write_all(&zeros).unwrap();
        }
        gz.finish().unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        let limits = DecompressLimits {
            max_bytes: 16 << 30,
            max_ratio: 2,
        };
        let e = decompress(Codec::Gz, &input, &dir.path().join("a"), limits, deadline)
            .await
            .unwrap_err();
        assert!(e.contains("times its"), "{e}");
        let limits = DecompressLimits {
            max_bytes: 1 << 20,
            max_ratio: 1_000_000,
        };
        let e = decompress(Codec::Gz, &input, &dir.path().join("b"), limits, deadline)
            .await
            .unwrap_err();
        assert!(e.contains("1048576 bytes allowed"), "{e}");
        let n = decompress(
            Codec::Gz,
            &input,
            &dir.path().join("c"),
            DecompressLimits::default(),
            deadline,
        )
        .await
        .unwrap();
        assert_eq!(n, 80 << 20);
        // Output files are created new.
        let e = decompress(
            Codec::Gz,
            &input,
            &dir.path().join("c"),
            DecompressLimits::default(),
            deadline,
        )
        .await
        .unwrap_err();
        assert!(e.contains("exists"), "{e}");
    }

    /// bz2, zstd and zip images as LAVA's `compression:` names them; the encoders are the
    /// crates' own (no tool on the host is needed).
    fn compressed(codec: Codec, data: &[u8], members: usize) -> Vec<u8> {
        use std::io::Write as _;
        match codec {
            Codec::Bz2 => {
                let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Codec::Zstd => {
                ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
            }
            Codec::Zip => {
                let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
                let options = zip::write::SimpleFileOptions::default()
                    .compression_method(zip::CompressionMethod::Deflated);
                for i in 0..members {
                    w.start_file(format!("image-{i}.img"), options).unwrap();
                    w.write_all(data).unwrap();
                }
                w.finish().unwrap().into_inner()
            }
            Codec::Gz | Codec::Xz => unreachable!("covered by other tests"),
        }
    }

    #[tokio::test]
    async fn bz2_zstd_and_zip_decompress_within_the_same_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
        let zeros = vec![0u8; 80 << 20];
        for codec in [Codec::Bz2, Codec::Zstd, Codec::Zip] {
            let name = format!("{codec:?}");
            let input = dir.path().join(format!("{name}.in"));
            std::fs::write(&input, compressed(codec, &data, 1)).unwrap();
            let out = dir.path().join(format!("{name}.out"));
            let n = decompress(codec, &input, &out, DecompressLimits::default(), deadline)
                .await
                .unwrap();
            assert_eq!(n, data.len() as u64, "{name}");
            assert!(std::fs::read(&out).unwrap() == data, "{name}");
            // A bomb is cut at the ratio bound, as for gz.
            let bomb = dir.path().join(format!("{name}.bomb"));
            std::fs::write(&bomb, compressed(codec, &zeros, 1)).unwrap();
            let limits = DecompressLimits {
                max_bytes: 16 << 30,
                max_ratio: 2,
            };
            let e = decompress(
                codec,
                &bomb,
                &dir.path().join(format!("{name}.b")),
                limits,
                deadline,
            )
            .await
            .unwrap_err();
            assert!(e.contains("times its"), "{name}: {e}");
        }
        let two = dir.path().join("two.zip");
        std::fs::write(&two, compressed(Codec::Zip, b"x", 2)).unwrap();
        let e = decompress(
            Codec::Zip,
            &two,
            &dir.path().join("two.out"),
            DecompressLimits::default(),
            deadline,
        )
        .await
        .unwrap_err();
        assert!(e.contains("holds 2 entries"), "{e}");
        let junk = dir.path().join("junk.zst");
        std::fs::write(&junk, b"not zstd at all").unwrap();
        let e = decompress(
            Codec::Zstd,
            &junk,
            &dir.path().join("junk.out"),
            DecompressLimits::default(),
            deadline,
        )
        .await
        .unwrap_err();
        assert!(e.contains("zstd"), "{e}");
    }

    #[test]
    fn downloads_keep_the_url_file_name_without_the_compression_extension() {
        let image = |url: &str, compression| Image {
            source: ImageSource::Http(url.into()),
            compression,
            format: None,
            image_arg: None,
            sha256sum: None,
            kind: None,
        };
        for (url, c, want) in [
            (
                "https://h/a/rootfs.ext4.zst",
                Compression::Zstd,
                Some("rootfs.ext4"),
            ),
            (
                "https://h/a/rootfs.ext4.zstd",
                Compression::Zstd,
                Some("rootfs.ext4"),
            ),
            ("https://h/a/Image.gz?x=1", Compression::Gz, Some("Image")),
            ("https://h/a/disk.img", Compression::None, Some("disk.img")),
            ("https://h/a/", Compression::None, None),
            ("https://h/a/..", Compression::None, None),
            ("https://h/a/.hidden", Compression::None, None),
        ] {
            assert_eq!(downloaded_name(&image(url, c)).as_deref(), want, "{url}");
        }
    }

    #[test]
    fn downloads_urls_find_regular_files_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rootfs.img"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
        assert!(downloaded_file(dir.path(), "rootfs.img").is_ok());
        let e = downloaded_file(dir.path(), "link").unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let e = downloaded_file(dir.path(), "other").unwrap_err();
        assert!(e.contains("fetched: link, rootfs.img"), "{e}");
    }

    #[test]
    fn image_names_are_single_safe_file_names() {
        for good in ["rootfs", "kernel", "disk-2", "a.b_c", "x"] {
            assert_eq!(check_image_name(good), Ok(()), "{good}");
        }
        let long = "a".repeat(MAX_IMAGE_NAME + 1);
        for bad in [
            "",
            ".hidden",
            "..",
            "../x",
            "/abs",
            "a/b",
            "Root",
            "a b",
            "é",
            long.as_str(),
        ] {
            assert!(check_image_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn image_arg_substitutes_and_fixes_drive_format() {
        let mut paths = BTreeMap::new();
        paths.insert("rootfs", PathBuf::from("/w/rootfs.overlay.qcow2"));
        paths.insert("kernel", PathBuf::from("/w/kernel"));
        let mut disks = BTreeMap::new();
        disks.insert("rootfs", "raw".to_string());
        assert_eq!(
            image_arg("-drive format=raw,file={rootfs}", &paths, &disks).unwrap(),
            vec!["-drive", "file=/w/rootfs.overlay.qcow2,format=qcow2"]
        );
        assert_eq!(
            image_arg(
                "-kernel {kernel} -append \"console=ttyS0 root=/dev/ram0\"",
                &paths,
                &disks
            )
            .unwrap(),
            vec![
                "-kernel",
                "/w/kernel",
                "-append",
                "console=ttyS0 root=/dev/ram0"
            ]
        );
    }

    #[test]
    fn image_arg_refuses_unknown_placeholders_and_bad_quotes() {
        let paths = BTreeMap::new();
        let disks = BTreeMap::new();
        let e = image_arg("-kernel {kernle}", &paths, &disks).unwrap_err();
        assert!(e.contains("{kernle}"), "{e}");
        assert!(image_arg("-append \"unterminated", &paths, &disks).is_err());
    }

    #[test]
    fn shell_syntax_in_image_arg_stays_literal() {
        let paths = BTreeMap::new();
        let disks = BTreeMap::new();
        assert_eq!(
            image_arg("-append '$(reboot)'", &paths, &disks).unwrap(),
            vec!["-append", "$(reboot)"]
        );
    }
}
