//! The local files a job names, found and uploaded by `dutlab job submit`.
//!
//! A job written for `dutlab run` names images by path (relative to the job file, absolute,
//! or `file://`) and test repositories by local path. Before submitting, each local image is
//! hashed and each local repository packed as a git bundle (`git bundle create --all`: the
//! commits, not uncommitted changes); each is uploaded once (a `HEAD` that answers 200 skips
//! it) and the job is submitted with `artifact:sha256:<hex>` in place of the paths.
//!
//! Invariants:
//! - Nothing is uploaded or submitted before every local file is hashed and bundled.
//! - A path that names nothing on this machine is sent as written (it may be a file of the
//!   agent host's image directories, which the agent checks), with a note naming the field.
//! - `--dry-run` lists the uploads and sends nothing.
//! - Bundles live in a temporary directory removed when [`Staging`] is dropped.

use crate::exit::{self, Exit};
use client::Client;
use jobspec::{ReferenceKind, artifact_reference};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One local file to upload.
#[derive(Debug, Clone)]
pub struct Upload {
    /// The job field, e.g. `actions[0].deploy.images.kernel.url`.
    pub field: String,
    /// The text as the job has it (the rewrite's key).
    pub text: String,
    /// The file sent (for a repository, its bundle).
    pub file: PathBuf,
    /// What the job named (the image or the repository directory).
    pub source: PathBuf,
    pub kind: ReferenceKind,
    pub sha256: String,
    pub size: u64,
}

/// Temporary files of one submit (git bundles).
#[derive(Debug)]
pub struct Staging {
    dir: Option<PathBuf>,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Staging {
    fn dir(&mut self) -> Result<PathBuf, String> {
        if let Some(dir) = &self.dir {
            return Ok(dir.clone());
        }
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
        let name: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let dir = std::env::temp_dir().join(format!("dutlab-submit-{name}"));
        std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        self.dir = Some(dir.clone());
        Ok(dir)
    }
}

/// The path of a local image or repository reference, or `None` for a URL.
fn local_path(text: &str, kind: ReferenceKind, job_dir: &Path) -> Option<PathBuf> {
    if jobspec::artifact_digest(text).is_some() {
        return None;
    }
    let path = match text.strip_prefix("file://") {
        Some(rest) => PathBuf::from(rest.strip_prefix("localhost").unwrap_or(rest)),
        None if text.contains("://") => return None,
        None if kind == ReferenceKind::GitRepository && text.starts_with("git@") => return None,
        None => PathBuf::from(text),
    };
    Some(if path.is_absolute() {
        path
    } else {
        job_dir.join(path)
    })
}

/// Finds, bundles and hashes every local file of the job.
pub fn local_uploads(
    job_file: &Path,
    file_name: &str,
    job: &jobspec::Job,
) -> Result<(Vec<Upload>, Staging), Exit> {
    let job_dir = job_file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let mut staging = Staging { dir: None };
    let mut uploads: Vec<Upload> = Vec::new();
    let refused = |field: &str, reason: String| {
        Exit::new(exit::JOB_REFUSED, format!("{file_name}: {field}: {reason}"))
    };
    for reference in job.references() {
        let Some(source) = local_path(&reference.text, reference.kind, &job_dir) else {
            continue;
        };
        if let Some(same) = uploads.iter().find(|u| u.text == reference.text) {
            let mut again = same.clone();
            again.field = reference.field.clone();
            uploads.push(again);
            continue;
        }
        if !source.exists() {
            eprintln!(
                "dutlab: note: {}: {} is not here; sent as written (the agent resolves it)",
                reference.field,
                runner::report::printable(&source.display().to_string())
            );
            continue;
        }
        let file = match reference.kind {
            ReferenceKind::Image => {
                if !source.is_file() {
                    return Err(refused(
                        &reference.field,
                        format!("{}: not a file", source.display()),
                    ));
                }
                source.clone()
            }
            ReferenceKind::GitRepository if source.is_file() => source.clone(),
            ReferenceKind::GitRepository => {
                let dir = staging.dir().map_err(|e| refused(&reference.field, e))?;
                let bundle = dir.join(format!("repo-{}.bundle", uploads.len()));
                bundle_repository(&source, &bundle).map_err(|e| refused(&reference.field, e))?;
                bundle
            }
        };
        let size = std::fs::metadata(&file)
            .map_err(|e| refused(&reference.field, format!("{}: {e}", file.display())))?
            .len();
        let sha256 = client::sha256_file(&file)
            .map_err(|e| refused(&reference.field, format!("{}: {e}", file.display())))?;
        uploads.push(Upload {
            field: reference.field,
            text: reference.text,
            file,
            source,
            kind: reference.kind,
            sha256,
            size,
        });
    }
    Ok((uploads, staging))
}

/// `git bundle create BUNDLE --all` in `repo` (one pack thread: the same commits give the same
/// bytes, so a second submit finds the bundle stored).
fn bundle_repository(repo: &Path, bundle: &Path) -> Result<(), String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["-c", "pack.threads=1", "bundle", "create", "--quiet"])
        .arg(bundle)
        .arg("--all")
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run git: {e} (install the git package)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: cannot make a git bundle: {}",
            repo.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The rewrite map: text as written -> artifact reference.
pub fn references(uploads: &[Upload]) -> BTreeMap<String, String> {
    uploads
        .iter()
        .map(|u| (u.text.clone(), artifact_reference(&u.sha256)))
        .collect()
}

/// One line per upload, for people (stderr) and `--dry-run` (stdout).
pub fn describe(upload: &Upload) -> String {
    let what = match upload.kind {
        ReferenceKind::Image => "image",
        ReferenceKind::GitRepository => "git bundle of",
    };
    format!(
        "{}: {what} {} ({} bytes, sha256:{})",
        upload.field,
        upload.source.display(),
        upload.size,
        upload.sha256
    )
}

/// Uploads each distinct file once, skipping those the controller already has for us.
/// Answers how many were sent.
pub async fn upload_all(client: &Client, uploads: &[Upload]) -> anyhow::Result<usize> {
    let mut sent = 0;
    let mut done: Vec<&str> = Vec::new();
    for upload in uploads {
        if done.contains(&upload.sha256.as_str()) {
            continue;
        }
        done.push(&upload.sha256);
        let line = runner::report::printable(&describe(upload));
        if client.artifact_size(&upload.sha256).await?.is_some() {
            eprintln!("dutlab: in the lab already: {line}");
            continue;
        }
        eprintln!("dutlab: uploading {line}");
        client
            .upload_artifact(&upload.sha256, &upload.file)
            .await
            .map_err(|e| match e {
                client::ClientError::Api {
                    status: 400 | 413,
                    message,
                    ..
                } => Exit::new(
                    exit::JOB_REFUSED,
                    format!("job refused: {}: {message}", upload.field),
                )
                .into(),
                other => anyhow::Error::new(other)
                    .context(format!("cannot upload {}", upload.file.display())),
            })?;
        sent += 1;
    }
    Ok(sent)
}
