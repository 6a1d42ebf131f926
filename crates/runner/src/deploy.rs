//! Deploy: turns a job's images (or the device's default guest image) into a QEMU boot spec.
//!
//! Invariants:
//! - Relative image paths are resolved against the job file's directory; `http(s)://` images
//!   are streamed into the work directory, bounded in size and by the deploy deadline.
//! - A checksum is verified on the file as given (before decompression), as LAVA does.
//! - Compressed images are decompressed into the job's work directory; originals are never
//!   written. Every disk image boots from a fresh qcow2 linked clone in the work directory.
//! - `image_arg` is split like a shell would split words but nothing is evaluated: the only
//!   substitution is `{name}` -> the path of image `name`.
//! - What an image is (kernel, initrd, disk, unused) comes from `jobspec::image_role` alone,
//!   the table the job's warnings are made from.
//! - Every failure here is the job's fault (job-error) except a failing `qemu-img` (infra-error).

use crate::JobEnd;
use jobspec::{Compression, Image, ImageRole, ImageSource, image_role};
use qemu::image::GuestImage;
use qemu::{BootSpec, Drive};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use tokio::time::Instant;

/// Builds the boot spec for explicit images from a deploy action.
pub async fn deploy_images(
    images: &BTreeMap<String, Image>,
    field: &str,
    job_dir: &Path,
    work_dir: &Path,
    deadline: Instant,
) -> Result<BootSpec, JobEnd> {
    let mut boot = BootSpec::default();
    // First pass: make every image a local, decompressed file; disks get their overlay.
    let mut paths: BTreeMap<&str, PathBuf> = BTreeMap::new();
    let mut disks: BTreeMap<&str, String> = BTreeMap::new();
    for (name, image) in images {
        let field = format!("{field}.images.{name}");
        let local = fetch(image, &field, job_dir, work_dir, name, deadline).await?;
        let path = match image_role(name) {
            ImageRole::Kernel | ImageRole::Initrd | ImageRole::Unused => local,
            ImageRole::Disk => {
                let format = match &image.format {
                    Some(f) => f.clone(),
                    None => qemu::disk::detect_format(&local)
                        .await
                        .map_err(|e| JobEnd::job_error(format!("{field}: {e}")))?,
                };
                let overlay = work_dir.join(format!("{name}.overlay.qcow2"));
                qemu::disk::create_overlay(&local, &format, &overlay)
                    .await
                    .map_err(|e| JobEnd::infra_error(format!("{field}: {e}")))?;
                disks.insert(name, format);
                overlay
            }
        };
        paths.insert(name, path);
    }
    // Second pass: arguments.
    for (name, image) in images {
        let field = format!("{field}.images.{name}");
        let path = &paths[name.as_str()];
        if let Some(arg) = &image.image_arg {
            boot.image_args.extend(
                image_arg(arg, &paths, &disks)
                    .map_err(|reason| JobEnd::job_error(format!("{field}.image_arg: {reason}")))?,
            );
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

/// Resolves (or downloads), verifies and decompresses one image; returns the local file to use.
async fn fetch(
    image: &Image,
    field: &str,
    job_dir: &Path,
    work_dir: &Path,
    name: &str,
    deadline: Instant,
) -> Result<PathBuf, JobEnd> {
    let path = match &image.source {
        ImageSource::Path(p) => {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                job_dir.join(p)
            }
        }
        ImageSource::Http(url) => {
            let out = work_dir.join(format!("{name}.download"));
            download(url, &out, deadline)
                .await
                .map_err(|reason| JobEnd::job_error(format!("{field}.url: {url}: {reason}")))?;
            out
        }
    };
    if !path.is_file() {
        return Err(JobEnd::job_error(format!(
            "{field}.url: {}: no such file",
            path.display()
        )));
    }
    if let Some(want) = &image.sha256sum {
        let got = sha256_file(&path)
            .map_err(|e| JobEnd::job_error(format!("{field}.url: {}: {e}", path.display())))?;
        if &got != want {
            return Err(JobEnd::job_error(format!(
                "{field}.sha256sum: {} has sha256 {got}, the job expects {want}",
                path.display()
            )));
        }
    }
    let read_err = |e: std::io::Error| {
        JobEnd::job_error(format!(
            "{field}: cannot decompress {}: {e}",
            path.display()
        ))
    };
    match image.compression {
        Compression::None => Ok(path),
        Compression::Gz => {
            let out = work_dir.join(name);
            let mut input =
                flate2::read::GzDecoder::new(std::fs::File::open(&path).map_err(read_err)?);
            let mut file = std::fs::File::create(&out).map_err(read_err)?;
            std::io::copy(&mut input, &mut file).map_err(read_err)?;
            Ok(out)
        }
        Compression::Xz => {
            let out = work_dir.join(name);
            let mut input = std::io::BufReader::new(std::fs::File::open(&path).map_err(read_err)?);
            let mut file = std::io::BufWriter::new(std::fs::File::create(&out).map_err(read_err)?);
            lzma_rs::xz_decompress(&mut input, &mut file).map_err(|e| {
                JobEnd::job_error(format!(
                    "{field}: cannot decompress {}: {e}",
                    path.display()
                ))
            })?;
            Ok(out)
        }
        // Refused by `jobspec::check_runnable` before the run starts; kept for callers of
        // `deploy_images` that did not check.
        other => Err(JobEnd::job_error(format!(
            "{field}.compression: {other:?} is not supported yet (use gz, xz or none)"
        ))),
    }
}

/// Largest image downloaded.
pub const MAX_DOWNLOAD: u64 = 16 << 30;

/// Streams `url` to `out`, bounded in size and by `deadline`. Redirects are followed (10 at
/// most); anything but a 2xx answer is an error naming the status.
async fn download(url: &str, out: &Path, deadline: Instant) -> Result<(), String> {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    let work = async {
        let client = reqwest::Client::builder()
            .build()
            .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
        let response = client
            .get(url)
            .send()
            .await
            .map_err(|e| format!("download failed: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("download failed: HTTP {status}"));
        }
        if response.content_length().is_some_and(|n| n > MAX_DOWNLOAD) {
            return Err(format!("larger than the {MAX_DOWNLOAD} bytes allowed"));
        }
        let mut file = tokio::fs::File::create(out)
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
