//! Where test definitions come from on the host: git clones (locally anything git accepts;
//! in the lab pinned `https://` only, or an admitted bundle) and `from: url` archives unpacked
//! by dutlab itself within bounds.

use super::*;

/// Resolves a repository string to something `git clone` accepts, relative paths against
/// the job file's directory (local runs only).
pub(super) fn resolve_repository(repository: &str, job_dir: &Path) -> String {
    if let Some(path) = repository.strip_prefix("file://") {
        return path.to_string();
    }
    if repository.contains("://") || repository.starts_with("git@") {
        return repository.to_string();
    }
    let path = Path::new(repository);
    if path.is_absolute() {
        repository.to_string()
    } else {
        job_dir.join(path).display().to_string()
    }
}

/// What a lab clone connects to: an `https://` URL, its host and port, and the checked
/// address pinned for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabRemote {
    pub url: String,
    pub host: String,
    pub port: u16,
}

/// Accepts a lab repository: a remote `https://host[:port]/path` URL and nothing else (no
/// local path, `file://`, `ssh://`, `git@host:`, `ext::` or other transport).
pub fn lab_remote(repository: &str) -> Result<LabRemote, String> {
    let refuse = || {
        format!(
            "{repository:?}: the lab clones remote https:// repositories only (no local path, \
             file://, ssh, git@ or ext:: transports)"
        )
    };
    if !repository.starts_with("https://") {
        return Err(refuse());
    }
    let url = reqwest::Url::parse(repository).map_err(|_| refuse())?;
    // `transport::address` (git's remote helpers, `ext::`) needs the helper name first, so
    // a URL that starts with `https://` always means https.
    if url.scheme() != "https" {
        return Err(refuse());
    }
    let host = url.host_str().ok_or_else(refuse)?.to_string();
    let port = url.port_or_known_default().ok_or_else(refuse)?;
    Ok(LabRemote {
        url: url.to_string(),
        host,
        port,
    })
}

/// One git definition's repository, as the job wrote it.
pub(super) struct GitSource<'a> {
    pub(super) repository: &'a str,
    pub(super) revision: Option<&'a str>,
    pub(super) branch: Option<&'a str>,
}

impl GitSource<'_> {
    pub(super) async fn run(
        &self,
        job_dir: &Path,
        work_dir: &Path,
        dest: &Path,
        policy: &HostPolicy,
    ) -> Result<(), String> {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        let mut clone = match (jobspec::artifact_digest(self.repository), policy.reach) {
            (Some(hex), _) => {
                // A bundle uploaded with the job: the file the agent fetched, verified and
                // admitted (local runs have none and are refused here). The file transport
                // is allowed for this one clone of that one file only.
                let bundle = policy.artifact_path(hex)?;
                let mut cmd = lab_git(work_dir);
                cmd.args(["-c", "protocol.file.allow=always"]);
                cmd.args(["clone", "--quiet", "--no-recurse-submodules"]);
                self.branch_args(&mut cmd);
                cmd.arg("--").arg(&bundle).arg(dest);
                cmd
            }
            (None, Reach::Local) => {
                let source = resolve_repository(self.repository, job_dir);
                let mut cmd = tokio::process::Command::new("git");
                cmd.args(["clone", "--quiet"]);
                self.branch_args(&mut cmd);
                cmd.arg("--").arg(&source).arg(dest);
                cmd
            }
            (None, Reach::Lab) => {
                let remote = lab_remote(self.repository)?;
                let addr = policy.pinned_address(&remote.host, remote.port).await?;
                let ip = match addr.ip() {
                    std::net::IpAddr::V4(v4) => v4.to_string(),
                    std::net::IpAddr::V6(v6) => format!("[{v6}]"),
                };
                let host = remote.host.trim_matches(['[', ']']);
                let mut cmd = lab_git(work_dir);
                cmd.arg("-c")
                    .arg(format!("http.curloptResolve={host}:{}:{ip}", remote.port));
                cmd.args(["clone", "--quiet", "--no-recurse-submodules"]);
                self.branch_args(&mut cmd);
                cmd.arg("--").arg(&remote.url).arg(dest);
                cmd
            }
        };
        git(&mut clone, &format!("cannot clone {}", self.repository)).await?;
        if let Some(revision) = self.revision {
            let mut cmd = match policy.reach {
                Reach::Local => tokio::process::Command::new("git"),
                Reach::Lab => lab_git(work_dir),
            };
            cmd.arg("-C")
                .arg(dest)
                .args(["checkout", "--quiet", "--detach", revision, "--"]);
            git(&mut cmd, &format!("cannot check out revision {revision:?}")).await?;
        }
        Ok(())
    }

    pub(super) fn branch_args(&self, cmd: &mut tokio::process::Command) {
        if let Some(branch) = self.branch {
            cmd.args(["--branch", branch]);
        }
    }
}

/// `git` for a lab job: empty environment, no host config or credentials, https only,
/// no redirects.
pub(super) fn lab_git(work_dir: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("git");
    cmd.env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env("HOME", work_dir)
        .env("LANG", "C")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "/bin/false")
        .env("SSH_ASKPASS", "/bin/false")
        .env("GIT_PROTOCOL_FROM_USER", "0");
    for config in [
        "credential.helper=",
        "core.askPass=/bin/false",
        "protocol.allow=never",
        "protocol.https.allow=always",
        "http.followRedirects=false",
        "http.proxy=",
        "core.hooksPath=/dev/null",
    ] {
        cmd.arg("-c").arg(config);
    }
    cmd
}

pub(super) async fn git(cmd: &mut tokio::process::Command, what: &str) -> Result<(), String> {
    let out = cmd
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("{what}: cannot run git: {e} (install the git package)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Reads `file`, refusing paths that leave `root` (`..`, absolute paths, links outside).
/// Most members of a `from: url` archive.
pub const MAX_ARCHIVE_MEMBERS: usize = 100_000;

/// A `from: url` tar archive of test definitions.
pub(super) struct ArchiveSource<'a> {
    pub(super) source: &'a ImageSource,
    pub(super) compression: Compression,
    pub(super) strip_components: u32,
}

impl ArchiveSource<'_> {
    /// Fetches, decompresses and unpacks the archive into `dir` (new).
    pub(super) async fn fetch(
        &self,
        job_dir: &Path,
        work_dir: &Path,
        index: usize,
        dir: &Path,
        policy: &HostPolicy,
        deadline: tokio::time::Instant,
    ) -> Result<(), String> {
        let scratch = work_dir.join("archives").join(index.to_string());
        std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
        let fetched = match self.source {
            ImageSource::Path(p) => policy.image_path(p, job_dir)?,
            // Only what the agent fetched for this job (today: images and git bundles).
            ImageSource::Artifact(hex) => policy.artifact_path(hex)?,
            ImageSource::Http(url) => {
                let out = scratch.join("download");
                crate::deploy::download(url, &out, deadline, policy)
                    .await
                    .map_err(|reason| format!("{url}: {reason}"))?;
                out
            }
            // Refused by jobspec (downloads://) and check_runnable (other schemes).
            ImageSource::Downloads(_) | ImageSource::Other { .. } => {
                return Err("this URL scheme is not fetched for test definitions".into());
            }
        };
        if !fetched.is_file() {
            return Err(format!("{}: no such file", fetched.display()));
        }
        let tar = match crate::deploy::Codec::of(self.compression) {
            None => fetched,
            Some(codec) => {
                let out = scratch.join("archive.tar");
                crate::deploy::decompress(codec, &fetched, &out, policy.decompress, deadline)
                    .await
                    .map_err(|reason| format!("cannot decompress the archive: {reason}"))?;
                out
            }
        };
        let (dir, strip, max_bytes) = (
            dir.to_path_buf(),
            self.strip_components as usize,
            policy.decompress.max_bytes,
        );
        tokio::task::spawn_blocking(move || unpack_archive(&tar, &dir, strip, max_bytes))
            .await
            .map_err(|e| format!("unpack task failed: {e}"))?
    }
}

/// Unpacks the tar at `tar` into the new directory `dir`: regular files and directories
/// only, paths relative without `..` after dropping `strip` leading components.
pub(super) fn unpack_archive(
    tar: &Path,
    dir: &Path,
    strip: usize,
    max_bytes: u64,
) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    std::fs::create_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let file = std::fs::File::open(tar).map_err(|e| format!("{}: {e}", tar.display()))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut written = 0u64;
    let entries = archive
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?;
    for (n, entry) in entries.enumerate() {
        if n >= MAX_ARCHIVE_MEMBERS {
            return Err(format!(
                "the archive has more than {MAX_ARCHIVE_MEMBERS} members"
            ));
        }
        let mut entry = entry.map_err(|e| format!("not a tar archive: {e}"))?;
        let raw = entry
            .path()
            .map_err(|e| format!("a member has a bad path: {e}"))?
            .into_owned();
        let shown = raw.display().to_string();
        let mut rel = PathBuf::new();
        for (i, c) in raw.components().enumerate() {
            match c {
                std::path::Component::Normal(part) if i >= strip => rel.push(part),
                std::path::Component::Normal(_) | std::path::Component::CurDir => {}
                _ => {
                    return Err(format!(
                        "member {shown:?}: paths must be relative, without '..'"
                    ));
                }
            }
        }
        let kind = entry.header().entry_type();
        if rel.as_os_str().is_empty() {
            continue;
        }
        let target = dir.join(&rel);
        if kind.is_dir() {
            std::fs::create_dir_all(&target).map_err(|e| format!("{shown}: {e}"))?;
        } else if kind.is_file() {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("{shown}: {e}"))?;
            }
            written = written.saturating_add(entry.size());
            if written > max_bytes {
                return Err(format!(
                    "the archive unpacks to more than the {max_bytes} bytes allowed"
                ));
            }
            let mode = entry.header().mode().unwrap_or(0o644) & 0o755 | 0o600;
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&target)
                .map_err(|e| format!("{shown}: {e}"))?;
            std::io::copy(&mut std::io::Read::take(&mut entry, max_bytes), &mut out)
                .map_err(|e| format!("{shown}: {e}"))?;
        } else {
            return Err(format!(
                "member {shown:?} is not a file or directory (links and devices are refused)"
            ));
        }
    }
    Ok(())
}

pub(super) fn read_inside(root: &Path, file: &Path) -> Result<String, String> {
    let root = root
        .canonicalize()
        .map_err(|e| format!("{}: {e}", root.display()))?;
    let real = file
        .canonicalize()
        .map_err(|_| format!("{} is not in the repository", file.display()))?;
    if !real.starts_with(&root) {
        return Err(format!("{} points outside the repository", file.display()));
    }
    std::fs::read_to_string(&real).map_err(|e| format!("{}: {e}", file.display()))
}
