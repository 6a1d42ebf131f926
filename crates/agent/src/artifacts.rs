//! The agent's artifact cache, shared by its devices, and the resolution of a job's
//! `artifact:sha256:<hex>` references into files of that cache.
//!
//! ```text
//!  StartJob ─> parse ─> for each referenced digest:
//!                 pin ─> lock digest ─> cached? ─ verify sha256 ─ ok ──────────────> path
//!                                  │              └ corrupt: remove ─┐
//!                                  └ missing ────────────────────────┴> fetch (?job=N) into
//!                                     tmp/, verified ─> evict to fit ─> rename into sha256/
//!              admit each verified file into the job's HostPolicy ─> runner (asks the
//!              policy for the file of each reference; the job text is unchanged)
//! ```
//!
//! Files live at `<dir>/sha256/<hex>`; fetches write `<dir>/tmp/` first.
//!
//! Invariants:
//! - A file is used only after its SHA-256 was checked on this use; a corrupt entry is removed
//!   and fetched again.
//! - A pinned file is never evicted: a job pins each digest before it looks at the cache and
//!   unpins when the job's run is over ([`Pinned`] drops). Pins and eviction take one lock.
//! - Eviction removes the least recently used unpinned entries until the cache with the new
//!   entry fits `max_bytes`; an entry larger than the cap is kept while it is pinned.
//! - Only the controller the agent is configured with is asked, with the agent's token and
//!   TLS trust, for the job being run; the controller checks that this agent's current link
//!   holds that job's lease.
//! - The cache directory is not an image directory of the host policy: a job reaches a cached
//!   file only through a reference of its own that was fetched (and so authorised) for it.

use crate::link;
use jobspec::Job;
use proto::JobId;
use runner::policy::HostPolicy;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Default cap of the cache, 20 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 20 << 30;

/// Why an artifact could not be had.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{path}: {source}")]
    Local {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot fetch artifact sha256:{sha256} from the controller: {reason}")]
    Fetch { sha256: String, reason: String },
}

/// How an artifact was had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// In the cache and intact: nothing was fetched.
    Cached,
    /// Fetched (this many bytes).
    Fetched(u64),
    /// The cached file was corrupt; fetched again (this many bytes).
    Refetched(u64),
}

#[derive(Debug, Default)]
struct Shared {
    /// Jobs using each digest.
    pins: HashMap<String, usize>,
    /// One fetch or check per digest at a time.
    locks: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

/// The content-addressed cache. Cheap to clone; clones share pins.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
    max_bytes: u64,
    shared: Arc<Mutex<Shared>>,
}

/// A digest in use by a job; its file stays while this lives.
#[derive(Debug)]
pub struct Pinned {
    cache: ArtifactCache,
    sha256: String,
    pub path: PathBuf,
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let mut shared = self.cache.lock();
        if let Some(n) = shared.pins.get_mut(&self.sha256) {
            *n -= 1;
            if *n == 0 {
                shared.pins.remove(&self.sha256);
                shared.locks.remove(&self.sha256);
            }
        }
    }
}

fn local(path: &Path) -> impl Fn(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Local {
        path: path.display().to_string(),
        source,
    }
}

impl ArtifactCache {
    /// Opens (creates) the cache at `dir`; leftovers of interrupted fetches are removed.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<ArtifactCache, CacheError> {
        for sub in ["sha256", "tmp"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(local(&path))?;
        }
        if let Ok(entries) = std::fs::read_dir(dir.join("tmp")) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(ArtifactCache {
            dir: dir.to_path_buf(),
            max_bytes,
            shared: Arc::new(Mutex::new(Shared::default())),
        })
    }

    /// The directory of cached files (what a job's rewritten paths point into).
    pub fn files_dir(&self) -> PathBuf {
        self.dir.join("sha256")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pins `sha256` for the caller's lifetime of the answer.
    pub fn pin(&self, sha256: &str) -> Pinned {
        *self.lock().pins.entry(sha256.to_owned()).or_insert(0) += 1;
        Pinned {
            cache: self.clone(),
            sha256: sha256.to_owned(),
            path: self.files_dir().join(sha256),
        }
    }

    /// The artifact's file, checked; fetched with `fetch` (which writes a new file at the
    /// path it is given and answers its size) when it is missing or corrupt.
    pub async fn get<F, Fut>(&self, sha256: &str, fetch: F) -> Result<(Pinned, Found), CacheError>
    where
        F: FnOnce(PathBuf) -> Fut,
        Fut: std::future::Future<Output = Result<u64, String>>,
    {
        let pinned = self.pin(sha256);
        let gate = self
            .lock()
            .locks
            .entry(sha256.to_owned())
            .or_default()
            .clone();
        let _turn = gate.lock().await;
        let mut corrupt = false;
        if pinned.path.is_file() {
            let path = pinned.path.clone();
            let got = tokio::task::spawn_blocking(move || client::sha256_file(&path))
                .await
                .map_err(|e| CacheError::Local {
                    path: pinned.path.display().to_string(),
                    source: std::io::Error::other(e.to_string()),
                })?;
            match got {
                Ok(got) if got == sha256 => {
                    // Recently used: eviction goes by modification time.
                    if let Ok(file) = std::fs::File::options().append(true).open(&pinned.path) {
                        let _ = file.set_modified(SystemTime::now());
                    }
                    return Ok((pinned, Found::Cached));
                }
                Ok(got) => tracing::warn!(
                    "cached artifact {} has sha256 {got}; fetching it again",
                    pinned.path.display()
                ),
                Err(e) => tracing::warn!(
                    "cached artifact {}: {e}; fetching it again",
                    pinned.path.display()
                ),
            }
            corrupt = true;
            std::fs::remove_file(&pinned.path).map_err(local(&pinned.path))?;
        }
        let temp = self
            .dir
            .join("tmp")
            .join(format!("{sha256}.{}.part", std::process::id()));
        let _ = std::fs::remove_file(&temp);
        let size = match fetch(temp.clone()).await {
            Ok(size) => size,
            Err(reason) => {
                let _ = std::fs::remove_file(&temp);
                return Err(CacheError::Fetch {
                    sha256: sha256.to_owned(),
                    reason,
                });
            }
        };
        self.evict(size);
        std::fs::rename(&temp, &pinned.path).map_err(|e| {
            let _ = std::fs::remove_file(&temp);
            local(&pinned.path)(e)
        })?;
        let found = if corrupt {
            Found::Refetched(size)
        } else {
            Found::Fetched(size)
        };
        Ok((pinned, found))
    }

    /// Removes least recently used unpinned entries until the cache plus `incoming` bytes
    /// fits the cap. Answers the digests removed.
    pub fn evict(&self, incoming: u64) -> Vec<String> {
        let shared = self.lock();
        let mut entries: Vec<(SystemTime, u64, String, PathBuf)> = Vec::new();
        let Ok(dir) = std::fs::read_dir(self.files_dir()) else {
            return Vec::new();
        };
        for entry in dir.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            entries.push((used, meta.len(), name, entry.path()));
        }
        let mut total: u64 = entries.iter().map(|e| e.1).sum::<u64>() + incoming;
        entries.sort();
        let mut removed = Vec::new();
        for (_, size, name, path) in entries {
            if total <= self.max_bytes {
                break;
            }
            if shared.pins.contains_key(&name) {
                continue;
            }
            if std::fs::remove_file(&path).is_ok() {
                tracing::info!("artifact cache: evicted sha256:{name} ({size} bytes)");
                total = total.saturating_sub(size);
                removed.push(name);
            }
        }
        removed
    }
}

/// Where a job's artifacts come from.
#[derive(Debug, Clone)]
pub struct ArtifactSource {
    pub cache: ArtifactCache,
    /// The controller's base URL (`http(s)://host:port[/prefix]`).
    pub controller: String,
    /// What `https://` trusts (the agent's `ca_file` or `pin`).
    pub trust: tls::Trust,
    pub token_file: PathBuf,
}

/// The base URL of REST calls for a configured controller address (`ws://` -> `http://`).
pub fn http_base(controller: &str) -> String {
    let trimmed = controller.trim();
    let (scheme, rest) = trimmed.split_once("://").unwrap_or(("http", trimmed));
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "ws" => "http".to_owned(),
        "wss" => "https".to_owned(),
        other => other.to_owned(),
    };
    let rest = rest.trim_end_matches('/');
    let rest = rest.strip_suffix(proto::link::LINK_PATH).unwrap_or(rest);
    format!("{scheme}://{rest}")
}

/// Fetches (or finds in the cache) every artifact `job` references and admits each verified
/// file into the job's host policy; answers the pins (keep them for the run) and a line per
/// artifact for the job's log. The job text is not changed: the runner asks the policy for
/// the file of each reference.
pub async fn resolve(
    job: &Job,
    id: JobId,
    source: &ArtifactSource,
    policy: &mut HostPolicy,
) -> Result<(Vec<Pinned>, Vec<String>), CacheError> {
    let references = job.artifact_references();
    if references.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let token = link::read_token(&source.token_file).map_err(|e| CacheError::Fetch {
        sha256: String::new(),
        reason: e.to_string(),
    })?;
    let client = client::Client::with_trust(&source.controller, Some(token), source.trust.clone())
        .map_err(|e| CacheError::Fetch {
            sha256: String::new(),
            reason: error_chain(&e),
        })?;
    let mut pins: Vec<Pinned> = Vec::new();
    let mut notes = Vec::new();
    for reference in references {
        let Some(hex) = jobspec::artifact_digest(&reference.text) else {
            continue;
        };
        if pins.iter().any(|p| p.sha256 == hex) {
            continue;
        }
        let client = client.clone();
        let (pinned, found) = source
            .cache
            .get(hex, |out| async move {
                client
                    .download_artifact(hex, Some(id), &out)
                    .await
                    .map_err(|e| error_chain(&e))
            })
            .await?;
        policy
            .admit_artifact(hex, &pinned.path)
            .map_err(|reason| CacheError::Fetch {
                sha256: hex.to_owned(),
                reason,
            })?;
        notes.push(match found {
            Found::Cached => format!("artifact sha256:{hex}: from the agent's cache"),
            Found::Fetched(n) => format!("artifact sha256:{hex}: fetched {n} bytes"),
            Found::Refetched(n) => {
                format!("artifact sha256:{hex}: the cached copy was corrupt; fetched {n} bytes")
            }
        });
        pins.push(pinned);
    }
    Ok((pins, notes))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sha(data: &[u8]) -> String {
        use sha2::Digest;
        sha2::Sha256::digest(data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    async fn put(cache: &ArtifactCache, data: &'static [u8]) -> (Pinned, Found) {
        cache
            .get(&sha(data), |out| async move {
                std::fs::write(&out, data).map_err(|e| e.to_string())?;
                Ok(data.len() as u64)
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_cached_file_is_used_without_a_fetch_and_a_corrupt_one_is_fetched_again() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::open(dir.path(), 1 << 20).unwrap();
        let (pin, found) = put(&cache, b"kernel bytes").await;
        assert_eq!(found, Found::Fetched(12));
        drop(pin);
        let (pin, found) = cache
            .get(&sha(b"kernel bytes"), |_| async {
                Err("no fetch expected".into())
            })
            .await
            .unwrap();
        assert_eq!(found, Found::Cached);
        std::fs::write(&pin.path, b"kernel bytez").unwrap();
        drop(pin);
        let (pin, found) = put(&cache, b"kernel bytes").await;
        assert_eq!(found, Found::Refetched(12));
        assert_eq!(std::fs::read(&pin.path).unwrap(), b"kernel bytes");
    }

    #[tokio::test]
    async fn eviction_never_removes_a_pinned_file() {
        let dir = tempfile::tempdir().unwrap();
        // Room for two 10-byte files.
        let cache = ArtifactCache::open(dir.path(), 20).unwrap();
        let (running, _) = put(&cache, b"0123456789").await;
        let (done, _) = put(&cache, b"abcdefghij").await;
        drop(done);
        // Make the running job's file the least recently used one.
        let old = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1);
        std::fs::File::options()
            .append(true)
            .open(&running.path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let (third, _) = put(&cache, b"ABCDEFGHIJ").await;
        assert!(running.path.is_file(), "a file in use was evicted");
        assert!(third.path.is_file());
        assert!(!cache.files_dir().join(sha(b"abcdefghij")).exists());
        // Nothing unpinned is left to evict: the cache goes over its cap rather than break a job.
        let (fourth, _) = put(&cache, b"klmnopqrst").await;
        assert!(running.path.is_file() && third.path.is_file() && fourth.path.is_file());
        drop(running);
        assert_eq!(cache.evict(0), vec![sha(b"0123456789")]);
    }

    #[test]
    fn controller_addresses_become_rest_bases() {
        assert_eq!(http_base("ws://lab:7780"), "http://lab:7780");
        assert_eq!(http_base("http://lab:7780/pre/"), "http://lab:7780/pre");
        assert_eq!(http_base("ws://lab:1/api/v1/agent/link"), "http://lab:1");
        assert_eq!(http_base("wss://lab"), "https://lab");
    }
}
