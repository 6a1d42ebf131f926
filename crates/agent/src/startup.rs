//! Agent start-up: claim the work directory, clear what a killed predecessor left, and turn
//! its unfinished jobs into reports.
//!
//! Invariants:
//! - One agent per work directory: `work_dir/agent.lock` is held (advisory lock) for the
//!   agent's life; a second agent on the same directory is refused.
//! - Before any job starts, no process whose command line names `work_dir/devices/` is alive
//!   (QEMU of a killed agent runs in its own process group and outlives it) and no
//!   `dutlab-job-*` work directory is left under a device directory.
//! - A lease the spool shows as running belongs to a job that died with the previous agent:
//!   it is finished here with outcome infra-error, so the controller learns it at `Hello`.

use crate::AgentConfig;
use crate::AgentError;
use crate::recorder::Entry;
use crate::spool::{Phase, Recovered, Spool, now_millis};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use proto::log::LogKind;
use proto::{JobReport, Outcome};
use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

/// Reason given for jobs found running in the spool at start-up.
pub const RESTARTED: &str = "agent restarted while the job ran";

/// What start-up hands to the main loop.
#[derive(Debug)]
pub struct Prepared {
    pub spool: Spool,
    /// Leases found in the spool, every one finished.
    pub recovered: Vec<Recovered>,
    /// Held for the agent's life.
    pub lock: File,
    /// The artifact cache of every device.
    pub cache: crate::artifacts::ArtifactCache,
}

/// Claims the work directory, cleans up after a killed predecessor and recovers the spool.
pub fn prepare(config: &AgentConfig) -> Result<Prepared, AgentError> {
    let local = |path: &Path, what: &str, e: std::io::Error| AgentError::LocalState {
        path: path.display().to_string(),
        reason: format!("{what}: {e}"),
    };
    std::fs::create_dir_all(&config.work_dir)
        .map_err(|e| local(&config.work_dir, "cannot create the work directory", e))?;
    let lock_path = config.work_dir.join("agent.lock");
    let lock = File::create(&lock_path).map_err(|e| local(&lock_path, "cannot create", e))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(AgentError::LocalState {
                path: config.work_dir.display().to_string(),
                reason: "another agent uses this work directory".into(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(local(&lock_path, "cannot lock", e)),
    }
    let devices = config.devices_dir();
    std::fs::create_dir_all(&devices)
        .map_err(|e| local(&devices, "cannot create the device directory", e))?;
    let killed = kill_leftovers(&devices);
    if killed > 0 {
        tracing::warn!(
            "killed {killed} process(es) left by a previous agent under {}",
            devices.display()
        );
    }
    remove_job_dirs(&devices);
    for device in &config.devices {
        let dir = config.device_dir(&device.name);
        std::fs::create_dir_all(&dir).map_err(|e| local(&dir, "cannot create", e))?;
    }
    let spool_dir = config.spool_dir();
    let spool =
        Spool::open(&spool_dir).map_err(|e| local(&spool_dir, "the spool is not writable", e))?;
    let recovered = recover(&spool).map_err(|e| local(&spool_dir, "cannot read the spool", e))?;
    let cache = crate::artifacts::ArtifactCache::open(&config.cache.dir, config.cache.max_bytes)
        .map_err(|e| AgentError::LocalState {
            path: config.cache.dir.display().to_string(),
            reason: format!("artifact cache: {e}"),
        })?;
    Ok(Prepared {
        spool,
        recovered,
        lock,
        cache,
    })
}

/// Every lease in the spool, with running ones finished as infra errors.
fn recover(spool: &Spool) -> std::io::Result<Vec<Recovered>> {
    let mut out = Vec::new();
    for found in spool.recover()? {
        if found.meta.phase != Phase::Running {
            out.push(found);
            continue;
        }
        let lease = found.meta.lease;
        let report = JobReport {
            job_name: found
                .meta
                .job_name
                .clone()
                .unwrap_or_else(|| format!("job-{}", found.meta.job)),
            outcome: Outcome::InfraError,
            reason: RESTARTED.into(),
            cases: Vec::new(),
            duration_s: 0.0,
        };
        let mut writer = spool.reopen(&found)?;
        writer.append(vec![Entry {
            kind: LogKind::Note,
            at: now_millis(),
            text: RESTARTED.into(),
        }]);
        let last_seq = writer.finish(report.clone())?;
        tracing::warn!(
            %lease, job = %found.meta.job, device = %found.meta.device,
            "job ended: infra-error ({RESTARTED})"
        );
        let mut meta = found.meta;
        meta.phase = Phase::Finished { report, last_seq };
        out.push(Recovered { meta, last_seq });
    }
    Ok(out)
}

/// Kills every process (and its process group) whose command line names `devices/`.
/// Returns how many there were.
pub fn kill_leftovers(devices: &Path) -> usize {
    let needle = format!("{}/", devices.display().to_string().trim_end_matches('/'));
    let found = processes_naming(&needle);
    for pid in &found {
        let pid = Pid::from_raw(*pid);
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = kill(pid, Signal::SIGKILL);
    }
    // Wait (bounded) until they are gone, so their files are no longer in use.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !found.is_empty() && Instant::now() < deadline {
        if processes_naming(&needle).is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    found.len()
}

/// Live (not zombie) processes other than this one whose command line contains `needle`.
fn processes_naming(needle: &str) -> Vec<i32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            cmdline.contains(needle) && !is_zombie(*pid)
        })
        .filter_map(|pid| i32::try_from(pid).ok())
        .collect()
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The state follows the command name in parentheses, which may contain spaces.
            let after = stat.rsplit_once(')')?.1;
            after
                .split_whitespace()
                .next()
                .map(|s| s == "Z" || s == "X")
        })
        .unwrap_or(true)
}

/// Removes `dutlab-job-*` directories under every device directory.
pub fn remove_job_dirs(devices: &Path) {
    let Ok(entries) = std::fs::read_dir(devices) else {
        return;
    };
    for device in entries.filter_map(Result::ok) {
        let Ok(jobs) = std::fs::read_dir(device.path()) else {
            continue;
        };
        for job in jobs.filter_map(Result::ok) {
            if job.file_name().to_string_lossy().starts_with("dutlab-job-") {
                let path = job.path();
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => tracing::info!("removed {} left by a previous agent", path.display()),
                    Err(e) => tracing::warn!("cannot remove {}: {e}", path.display()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn leftover_processes_and_job_directories_are_cleared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let devices = dir.path().join("devices");
        let job_dir = devices.join("qemu-01").join("dutlab-job-abc");
        std::fs::create_dir_all(job_dir.join("vm-1")).expect("mkdir");
        let keep = devices.join("qemu-01").join("other");
        std::fs::create_dir_all(&keep).expect("mkdir");
        // A stand-in for an orphaned QEMU: its own process group, a child, and the device
        // directory on its command line.
        let script = format!("sleep 600 & wait # {}", job_dir.display());
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .process_group(0)
            .spawn()
            .expect("spawn sh");
        let needle = format!("{}/", devices.display());
        let deadline = Instant::now() + Duration::from_secs(5);
        while processes_naming(&needle).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        // The shell, and perhaps its fork that has not become `sleep` yet.
        assert!(kill_leftovers(&devices) >= 1);
        assert!(processes_naming(&needle).is_empty());
        let status = child.wait().expect("wait");
        assert!(!status.success());
        remove_job_dirs(&devices);
        assert!(!job_dir.exists());
        assert!(keep.exists());
        assert_eq!(kill_leftovers(&devices), 0);
    }
}
