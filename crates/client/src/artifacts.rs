//! Artifact transfer: `HEAD`, `PUT` and `GET /api/v1/artifacts/sha256/{hex}`.
//!
//! Invariants:
//! - Files stream in both directions in 1 MiB chunks; neither side holds a whole artifact
//!   in memory.
//! - A download is hashed while it is written and is an error unless its SHA-256 is the one
//!   asked for; the caller decides what to do with the file (the agent's cache removes it).

use crate::{Client, ClientError, api_error};
use proto::api::ArtifactView;
use proto::{JobId, LeaseId};
use reqwest::header::AUTHORIZATION;
use reqwest::{Body, Method, StatusCode};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::Path;
use tokio::sync::{mpsc, oneshot};

/// Bytes per chunk read from or written to disk.
const CHUNK: usize = 1 << 20;

/// What an agent fetches an artifact for (the controller checks that it runs the job or
/// keeps the session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchFor {
    /// A person: no query (the controller checks that they may use it).
    Person,
    Job(JobId),
    /// A session's flash (the grant's lease id).
    Lease(LeaseId),
}

impl Client {
    /// `HEAD`: the size of an artifact this token may use, `None` when it does not exist for
    /// this token (it may exist for others).
    pub async fn artifact_size(&self, sha256: &str) -> Result<Option<u64>, ClientError> {
        let response = self
            .artifact_request(Method::HEAD, sha256, FetchFor::Person)
            .await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(Some(response.content_length().unwrap_or(0))),
            s => Err(api_error(s, b"")),
        }
    }

    /// `PUT`: streams the file at `path`, whose SHA-256 is `sha256`, to the store.
    pub async fn upload_artifact(
        &self,
        sha256: &str,
        path: &Path,
    ) -> Result<ArtifactView, ClientError> {
        self.upload_artifact_with_progress(sha256, path, |_| {})
            .await
    }

    /// [`Client::upload_artifact`], calling `progress` with the bytes read so far after each
    /// chunk.
    pub async fn upload_artifact_with_progress(
        &self,
        sha256: &str,
        path: &Path,
        progress: impl Fn(u64) + Send + 'static,
    ) -> Result<ArtifactView, ClientError> {
        let local = |source: std::io::Error| ClientError::Local {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(local)?;
        let size = file.metadata().map_err(local)?.len();
        let (tx, rx) = mpsc::channel::<std::io::Result<Vec<u8>>>(4);
        tokio::task::spawn_blocking(move || read_chunks(file, tx, progress));
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk, rx))
        });
        let url = self.artifact_url(sha256, FetchFor::Person);
        let mut request = self
            .http
            .request(Method::PUT, url.clone())
            .header(reqwest::header::CONTENT_LENGTH, size)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::wrap_stream(stream));
        if let Some(auth) = self.auth() {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.transport_error(&url, Box::new(e.without_url())))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(&url, Box::new(e.without_url())))?;
        if !status.is_success() {
            return Err(api_error(status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode {
            url: url.to_string(),
            source: Box::new(e),
        })
    }

    /// `GET`: writes the artifact to a new file at `out` and checks its SHA-256. Agents give
    /// the `job` they fetch it for. Answers the number of bytes written.
    pub async fn download_artifact(
        &self,
        sha256: &str,
        job: Option<JobId>,
        out: &Path,
    ) -> Result<u64, ClientError> {
        let what = job.map_or(FetchFor::Person, FetchFor::Job);
        self.download_artifact_for(sha256, what, out, &|_| {}).await
    }

    /// `GET` for `what`, calling `progress` with the bytes received so far after each chunk.
    pub async fn download_artifact_for(
        &self,
        sha256: &str,
        what: FetchFor,
        out: &Path,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<u64, ClientError> {
        let url = self.artifact_url(sha256, what);
        let unreachable = |e: reqwest::Error| self.transport_error(&url, Box::new(e.without_url()));
        let mut response = self.artifact_request(Method::GET, sha256, what).await?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await.map_err(unreachable)?;
            return Err(api_error(status, &body));
        }
        let (tx, rx) = mpsc::channel::<Vec<u8>>(8);
        let (done, written) = oneshot::channel();
        let path = out.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let _ = done.send(write_hashed(&path, rx));
        });
        let mut broke = None;
        let mut received = 0u64;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    received += chunk.len() as u64;
                    progress(received);
                    if tx.send(chunk.to_vec()).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    broke = Some(unreachable(e));
                    break;
                }
            }
        }
        drop(tx);
        let written = written.await.map_err(|_| ClientError::Local {
            path: out.display().to_string(),
            source: std::io::Error::other("the writer stopped"),
        })?;
        if let Some(e) = broke {
            return Err(e);
        }
        let (got, size) = written.map_err(|source| ClientError::Local {
            path: out.display().to_string(),
            source,
        })?;
        if got != sha256 {
            return Err(ClientError::Decode {
                url: url.to_string(),
                source: format!("the artifact's bytes have sha256 {got}").into(),
            });
        }
        Ok(size)
    }

    fn artifact_url(&self, sha256: &str, what: FetchFor) -> reqwest::Url {
        let mut url = self.api_endpoint(&["artifacts", "sha256", sha256]);
        match what {
            FetchFor::Person => {}
            FetchFor::Job(job) => {
                url.query_pairs_mut().append_pair("job", &job.0.to_string());
            }
            FetchFor::Lease(lease) => {
                url.query_pairs_mut()
                    .append_pair("lease", &lease.to_string());
            }
        }
        url
    }

    async fn artifact_request(
        &self,
        method: Method,
        sha256: &str,
        what: FetchFor,
    ) -> Result<reqwest::Response, ClientError> {
        // A follower sends an agent fetching for a person's lease to the leader (307).
        let url = self.artifact_url(sha256, what);
        let (_, response) = self
            .send_following(url, |url| self.http.request(method.clone(), url.clone()))
            .await?;
        Ok(response)
    }
}

/// The SHA-256 (hex) of a file, read in chunks.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_chunks(
    mut file: std::fs::File,
    tx: mpsc::Sender<std::io::Result<Vec<u8>>>,
    progress: impl Fn(u64),
) {
    let mut sent = 0u64;
    loop {
        // `read_to_end` on a `File` reads into the spare capacity: no zeroing of each chunk.
        let mut buf = Vec::with_capacity(CHUNK);
        if let Err(e) = std::io::Read::by_ref(&mut file)
            .take(CHUNK as u64)
            .read_to_end(&mut buf)
        {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        let filled = buf.len();
        if filled == 0 {
            return;
        }
        if tx.blocking_send(Ok(buf)).is_err() {
            return;
        }
        sent += filled as u64;
        progress(sent);
    }
}

/// Writes the chunks to a new file, synced; answers its SHA-256 and size.
fn write_hashed(
    path: &Path,
    mut chunks: mpsc::Receiver<Vec<u8>>,
) -> std::io::Result<(String, u64)> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    // Chunks go straight to the file: a BufWriter would copy every chunk smaller than it.
    let mut out = file;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = chunks.blocking_recv() {
        hasher.update(&chunk);
        size += chunk.len() as u64;
        out.write_all(&chunk)?;
    }
    out.sync_all()?;
    Ok((hex(&hasher.finalize()), size))
}
