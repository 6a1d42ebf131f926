//! The data directory of `dutlab serve`: database, logs, the first admin token.
//!
//! Invariants:
//! - What the controller creates is private to its user: directories mode 0700, files 0600
//!   (the SQLite database is created empty with 0600 before SQLite opens it, and SQLite gives
//!   its `-wal` and `-shm` files the database's mode).
//! - One `serve` uses a data directory at a time: it holds an `flock` on `serve.lock` there
//!   for its lifetime (the kernel drops it when the process dies, however it dies).
//! - Nothing existing is changed: a directory or file that group or others may read, write
//!   or enter is reported at warn level with its mode and the command that fixes it.

use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The mode bits that give group or others any access.
const OPEN_BITS: u32 = 0o077;

/// Creates `dir` (and missing parents) with mode 0700; an existing directory is left as is.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Makes the data directory, its `logs` directory and (with `sqlite`) an empty database file,
/// all private; warns about any of them, or any file in them, that group or others can open.
pub fn prepare(data_dir: &Path, sqlite: bool) -> std::io::Result<()> {
    create_private_dir(data_dir)?;
    let logs = data_dir.join("logs");
    create_private_dir(&logs)?;
    if sqlite {
        // create_new would fail on an existing file; create without truncate keeps it.
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(data_dir.join("dutlab.db"))?;
    }
    warn_if_open(data_dir);
    warn_if_open(&logs);
    for dir in [data_dir, logs.as_path()] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut open_files = 0usize;
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_file() && meta.permissions().mode() & OPEN_BITS != 0 {
                open_files += 1;
                if open_files <= 5 {
                    warn_mode(&path, meta.permissions().mode(), "600");
                }
            }
        }
        if open_files > 5 {
            tracing::warn!(
                "{}: {} more files can be read by group or others (chmod 600 them)",
                dir.display(),
                open_files - 5
            );
        }
    }
    Ok(())
}

/// Warns when `path` gives group or others any access.
pub fn warn_if_open(path: &Path) {
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & OPEN_BITS != 0 {
            warn_mode(path, mode, if meta.is_dir() { "700" } else { "600" });
        }
    }
}

fn warn_mode(path: &Path, mode: u32, want: &str) {
    tracing::warn!(
        "{}: mode {:04o} lets group or others at the controller's data; it should be {want} \
         (chmod {want} {})",
        path.display(),
        mode & 0o7777,
        path.display()
    );
}

/// The data directory's lock file: held (`flock`) by the one `serve` using the directory.
pub const LOCK_FILE: &str = "serve.lock";

/// Locks the data directory for this process until the answered file is closed: `Ok(None)`
/// when another process holds it and `wait` is false; with `wait`, blocks until it is free.
pub fn lock(data_dir: &Path, wait: bool) -> std::io::Result<Option<std::fs::File>> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(data_dir.join(LOCK_FILE))?;
    if wait {
        file.lock()?;
        return Ok(Some(file));
    }
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_data_directory_is_private() {
        let top = tempfile::tempdir().expect("tempdir");
        let dir = top.path().join("a/data");
        prepare(&dir, true).expect("prepare");
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("logs")), 0o700);
        assert_eq!(mode(&dir.join("dutlab.db")), 0o600);
    }
}
