//! The public SSH keys a lease brings to its DUT: files given with `--ssh-key`, or dutlab's
//! own key pair, made on first use with `ssh-keygen` under the client's configuration
//! directory (`$XDG_CONFIG_HOME/dutlab/ssh/id_ed25519`, else `~/.config/dutlab/ssh/`).
//!
//! Invariants:
//! - Only public key lines leave this host; the private key stays in its file (0600, in a
//!   0700 directory, as `ssh-keygen` writes it), never read by dutlab.
//! - A key file is read whole (at most 64 KiB); each non-empty line that is not a comment is
//!   one key, checked by [`proto::session::check_public_key`] before anything is sent.
//! - An existing key pair is never overwritten. When dutlab's own key cannot be had (no
//!   `ssh-keygen`, no home), the lease is asked for without keys, with a warning.

use crate::exit::{self, Exit};
use anyhow::Context;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Largest key file read.
const MAX_KEY_FILE: u64 = 64 << 10;

/// The private key of dutlab's own key pair (it may not exist yet; see
/// [`default_public_key`]). `dutlab ssh` logs in with it.
pub fn private_key_path() -> anyhow::Result<PathBuf> {
    let settings = crate::settings::settings_path(&|v| std::env::var(v).ok()).ok_or_else(|| {
        Exit::new(
            exit::USAGE,
            "neither XDG_CONFIG_HOME nor HOME is set: give --ssh-key FILE",
        )
    })?;
    let dir = settings
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    Ok(dir.join("ssh").join("id_ed25519"))
}

/// The public key line of dutlab's own key pair, made with `ssh-keygen` if missing.
pub fn default_public_key() -> anyhow::Result<String> {
    let private = private_key_path()?;
    let public = private.with_extension("pub");
    if !public.is_file() {
        if private.exists() {
            return Err(Exit::new(
                exit::USAGE,
                format!(
                    "{} exists without its public key {}; remove it or give --ssh-key FILE",
                    private.display(),
                    public.display()
                ),
            )
            .into());
        }
        let dir = private.parent().unwrap_or(Path::new("."));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let status = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "dutlab", "-f"])
            .arg(&private)
            .stdin(std::process::Stdio::null())
            .status()
            .context(
                "cannot run ssh-keygen (Debian package openssh-client); or give --ssh-key FILE",
            )?;
        if !status.success() {
            return Err(Exit::new(
                exit::SOFTWARE,
                format!("ssh-keygen failed ({status}) making {}", private.display()),
            )
            .into());
        }
        eprintln!("dutlab: made the SSH key pair {}", private.display());
    }
    let mut keys = read_keys(&public)?;
    keys.truncate(1);
    Ok(keys.pop().unwrap_or_default())
}

/// The keys of a public key file (`authorized_keys` or `id_*.pub`), checked.
pub fn read_keys(path: &Path) -> anyhow::Result<Vec<String>> {
    let refuse = |reason: String| {
        Exit::new(
            exit::USAGE,
            format!("--ssh-key {}: {reason}", path.display()),
        )
    };
    let size = std::fs::metadata(path)
        .map_err(|e| refuse(e.to_string()))?
        .len();
    if size > MAX_KEY_FILE {
        return Err(refuse(format!("{size} bytes, more than {MAX_KEY_FILE}")).into());
    }
    let text = std::fs::read_to_string(path).map_err(|e| refuse(e.to_string()))?;
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = proto::session::check_public_key(line)
            .map_err(|e| refuse(format!("line {}: {e}", n + 1)))?;
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(refuse("holds no public key".into()).into());
    }
    Ok(keys)
}

/// The keys a lease request sends: those of `files`, else dutlab's own.
pub fn lease_keys(files: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    if files.is_empty() {
        // Without a key of its own the lease still works (console, power); only SSH waits.
        return Ok(match default_public_key() {
            Ok(key) => vec![key],
            Err(e) => {
                eprintln!("dutlab: warning: no SSH key for the DUT: {e:#}");
                Vec::new()
            }
        });
    }
    let mut keys = Vec::new();
    for file in files {
        keys.extend(read_keys(file)?);
    }
    Ok(keys)
}
