//! The content-addressed artifact store: files a job refers to (kernels, initrds, disks, git
//! bundles), uploaded by `dutlab job submit` and fetched by the agent that runs the job.
//!
//! ```text
//!  PUT  /api/v1/artifacts/sha256/{hex}   people: stream in, hash while streaming, keep
//!  HEAD /api/v1/artifacts/sha256/{hex}   people: 200 only if the caller may use it
//!  GET  /api/v1/artifacts/sha256/{hex}   people: if they may use it; agents: ?lease=L of a
//!                                        session whose flash names it, or ?job=N of a
//!                                        job whose live lease their connection holds
//! ```
//!
//! Files live at `<data>/artifacts/sha256/<hex>`; uploads stream into
//! `<data>/artifacts/tmp/` and are renamed into place once their hash is known. Directories
//! are created 0700 and files 0600, like the rest of the data directory.
//!
//! With a database several controllers share ([`ArtifactBytes::Shared`], PostgreSQL) the
//! bytes are also kept in the database ([`crate::store::artifact_chunks`]), written before
//! the artifact's row; a controller without the file fills its directory from there (the
//! digest checked before the file is renamed into place) and serves it like its own. Files
//! a controller kept before the database held bytes are copied in at its start.
//!
//! Invariants:
//! - A stored file's name is its SHA-256: an upload whose bytes hash to another digest than
//!   the URL says, or that passes the size cap, is refused and its temporary file removed;
//!   nothing is written outside the store, and file names come from 64 hex digits only.
//! - Knowing a digest grants nothing. A person may use (HEAD, GET, reference in a job) an
//!   artifact they uploaded, or one referenced by a job they may read; to anyone else it does
//!   not exist (404). Uploading the bytes again (verified) makes it theirs too.
//! - An agent reads an artifact only for a job it runs right now: the job references it and
//!   the job's live lease is on a device of the agent connected with this token.
//! - An upload that would take its uploader past the per-user quota on artifact bytes is
//!   refused with 429 ([`crate::artifact_quota`]), before any byte is read when its
//!   `Content-Length` says so, else as soon as the stream passes the room left.
//! - Every byte sent is counted ([`ArtifactStore::served`]), so a benchmark can tell that a
//!   cached start moved nothing.

use crate::api::{ApiFailure, PEOPLE, visible_job};
use crate::artifact_quota::{ArtifactQuota, OverArtifactQuota};
use crate::auth::Caller;
use crate::dispatcher::{Command, Failure, SessionFetch};
use crate::lease_api::leader_redirect;
use crate::{AppState, now};
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use proto::api::{ApiError, ArtifactView};
use proto::{JobId, Role};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot};

mod shared;
pub(crate) use shared::held;
pub use shared::import_local;
use shared::{local_copy, share};

/// Bytes read from disk (and written to the socket or the database) per chunk.
const CHUNK: usize = crate::store::artifact_chunks::CHUNK;

/// Jobs looked at when deciding whether a person may use an artifact through a job.
const JOBS_CHECKED: u64 = 200;

/// Where the bytes of artifacts live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactBytes {
    /// In this controller's directory only (SQLite: one controller).
    Local,
    /// In the database too, for every controller of it; the directory is a cache.
    Shared,
}

/// Where artifacts are kept, and how large one may be. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    dir: PathBuf,
    bytes: ArtifactBytes,
    max_size: u64,
    quota: ArtifactQuota,
    served: Arc<AtomicU64>,
}

impl ArtifactStore {
    /// The store under `dir` (created when needed); uploads larger than `max_size`, or that
    /// would take their uploader past `quota` bytes of artifacts, are refused.
    pub fn new(
        dir: PathBuf,
        bytes: ArtifactBytes,
        max_size: u64,
        quota: u64,
    ) -> std::io::Result<ArtifactStore> {
        // Private like the rest of the data directory (crate::datadir): 0700 and 0600.
        crate::datadir::create_private_dir(&dir.join("sha256"))?;
        crate::datadir::create_private_dir(&dir.join("tmp"))?;
        crate::datadir::warn_if_open(&dir);
        crate::datadir::warn_if_open(&dir.join("sha256"));
        // Leftovers of uploads cut by a crash.
        if let Ok(entries) = std::fs::read_dir(dir.join("tmp")) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(ArtifactStore {
            dir,
            bytes,
            max_size,
            quota: ArtifactQuota::new(quota),
            served: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Bytes of artifacts sent since the controller started.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    pub(crate) fn path(&self, hex: &str) -> PathBuf {
        self.dir.join("sha256").join(hex)
    }
}

fn unavailable(e: impl std::fmt::Display) -> ApiFailure {
    ApiFailure::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

fn checked_digest(hex: &str) -> Result<(), ApiFailure> {
    if jobspec::is_digest(hex) {
        Ok(())
    } else {
        Err(ApiFailure::new(
            StatusCode::BAD_REQUEST,
            format!("sha256: {hex:?} is not 64 lowercase hexadecimal digits"),
        ))
    }
}

fn not_found(hex: &str) -> ApiFailure {
    ApiFailure::new(
        StatusCode::NOT_FOUND,
        format!("artifact sha256:{hex} does not exist or is not yours to use"),
    )
}

/// Who an upload is recorded for: the caller's user (its stable principal id), never the
/// token's name, so every token of a user shares the user's artifacts and quota.
fn uploader(caller: &Caller) -> String {
    caller.principal.to_string()
}

/// Whether a person may use a stored artifact: admins, its uploaders, readers of a job that
/// references it.
pub async fn may_use(state: &AppState, caller: &Caller, hex: &str) -> Result<bool, ApiFailure> {
    if caller.role == Role::Admin {
        return Ok(true);
    }
    if state
        .store
        .uploaded_by(hex, &uploader(caller))
        .await
        .map_err(unavailable)?
    {
        return Ok(true);
    }
    let jobs = state
        .store
        .artifact_jobs(hex, JOBS_CHECKED)
        .await
        .map_err(unavailable)?;
    for job in jobs {
        if visible_job(state, caller, job).await.is_ok() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Uploads an artifact (streamed; the body's SHA-256 must be `hex`).
#[utoipa::path(put, path = "/api/v1/artifacts/sha256/{hex}", security(("bearer" = [])),
    params(("hex" = String, Path, description = "SHA-256 of the content, 64 lowercase hex digits")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = ArtifactView), (status = 400, description = "bad digest, or the body hashes to another one", body = ApiError),
        (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 413, description = "larger than the store's cap", body = ApiError),
        (status = 429, description = "the upload would take its uploader past the per-user artifact quota (the message names quota and usage)", body = ApiError)))]
pub async fn put_artifact(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(hex): Path<String>,
    request: Request,
) -> Result<(StatusCode, Json<ArtifactView>), ApiFailure> {
    caller.require(&PEOPLE)?;
    checked_digest(&hex)?;
    let (status, view) = receive(&state, &caller, Some(&hex), Encoding::Identity, request).await?;
    Ok((status, Json(view)))
}

/// How an upload's body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// The artifact's bytes as they are.
    Identity,
    /// gzip: the artifact is what it decompresses to (bounded like any upload).
    Gzip,
}

/// Stores the body of `request` as an artifact of `caller`: streamed to a temporary file
/// while hashed (decompressed first with [`Encoding::Gzip`]), refused past the size cap or
/// the caller's quota, and kept under its digest, which must be `expected` if given.
pub(crate) async fn receive(
    state: &AppState,
    caller: &Caller,
    expected: Option<&str>,
    encoding: Encoding,
    request: Request,
) -> Result<(StatusCode, ArtifactView), ApiFailure> {
    let label = match expected {
        Some(hex) => format!("artifact sha256:{hex}"),
        None => "the upload".to_owned(),
    };
    let store = state.artifacts.clone();
    let too_large = |size: u64| {
        ApiFailure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{label}: {size} bytes or more; this controller keeps artifacts up to {} bytes",
                store.max_size
            ),
        )
    };
    // A compressed body says nothing certain about the size of what it holds.
    let declared = content_length(request.headers()).filter(|_| encoding == Encoding::Identity);
    if let Some(len) = declared
        && len > store.max_size
    {
        return Err(too_large(len));
    }
    // Bytes the caller already has cost nothing again; anything else must fit the quota.
    // Stored and counted by principal id; messages name the user.
    let user = uploader(caller);
    let shown = caller.user.clone();
    let already_theirs = match expected {
        Some(hex) => state
            .store
            .uploaded_by(hex, &user)
            .await
            .map_err(unavailable)?,
        None => false,
    };
    let usage = state
        .store
        .artifact_bytes_of(&user)
        .await
        .map_err(unavailable)?;
    let room = if already_theirs {
        u64::MAX
    } else {
        store.quota.room(usage)
    };
    if let Some(len) = declared
        && len > room
    {
        return Err(over_quota(store.quota.check(&shown, usage, len)));
    }
    let temp = store.dir.join("tmp").join(temp_name()?);
    // Decoding, hashing and writing run on a blocking thread; this task only moves chunks.
    let (chunks, rx) = mpsc::channel::<Bytes>(8);
    let (done, written) = oneshot::channel();
    let file_path = temp.clone();
    let bound = store.max_size.min(room);
    tokio::task::spawn_blocking(move || {
        let _ = done.send(write_hashed(&file_path, rx, encoding, bound));
    });
    let mut body = request.into_body().into_data_stream();
    let mut size = 0u64;
    let mut refusal = None;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) => {
                size += chunk.len() as u64;
                if size > store.max_size {
                    refusal = Some(too_large(size));
                    break;
                }
                if size > room {
                    refusal = Some(over_quota(store.quota.check(&shown, usage, size)));
                    break;
                }
                if chunks.send(chunk).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                refusal = Some(ApiFailure::new(
                    StatusCode::BAD_REQUEST,
                    format!("{label}: the upload broke off: {e}"),
                ));
                break;
            }
        }
    }
    drop(chunks);
    let written = written
        .await
        .map_err(|_| unavailable("the artifact writer stopped"))?;
    let remove = || {
        let _ = std::fs::remove_file(&temp);
    };
    if let Some(refusal) = refusal {
        remove();
        return Err(refusal);
    }
    let (got, size) = match written {
        Ok(got) => got,
        Err(Written::Past(at)) => {
            remove();
            return Err(if at > store.max_size {
                too_large(at)
            } else {
                over_quota(store.quota.check(&shown, usage, at))
            });
        }
        Err(Written::Undecodable(e)) => {
            remove();
            return Err(ApiFailure::new(
                StatusCode::BAD_REQUEST,
                format!("{label}: not gzip: {e}"),
            ));
        }
        Err(Written::Io(e)) => {
            remove();
            return Err(unavailable(format!("{label}: {e}")));
        }
    };
    if let Some(hex) = expected
        && got != hex
    {
        remove();
        return Err(ApiFailure::new(
            StatusCode::BAD_REQUEST,
            format!("{label}: the uploaded bytes have sha256 {got}"),
        ));
    }
    let hex = got;
    // The final check and the record in the uploader's turn: concurrent uploads of one user
    // cannot together pass the quota.
    let _turn = store.quota.turn(&user).await;
    let now_theirs = state
        .store
        .uploaded_by(&hex, &user)
        .await
        .map_err(unavailable)?;
    if !now_theirs {
        let usage = state
            .store
            .artifact_bytes_of(&user)
            .await
            .map_err(unavailable)?;
        if let Err(over) = store.quota.check(&shown, usage, size) {
            remove();
            return Err(over_quota(Err(over)));
        }
    }
    let path = store.path(&hex);
    let status = if path.is_file() {
        remove();
        StatusCode::OK
    } else {
        std::fs::rename(&temp, &path).map_err(|e| {
            remove();
            unavailable(format!("artifact sha256:{hex}: cannot keep it: {e}"))
        })?;
        StatusCode::CREATED
    };
    // The bytes reach the database before the row that says the artifact is stored.
    share(&state.store, &store, &hex, size)
        .await
        .map_err(|e| unavailable(format!("artifact sha256:{hex}: {e}")))?;
    state
        .store
        .insert_artifact(&hex, size, &uploader(caller), now())
        .await
        .map_err(unavailable)?;
    tracing::info!(
        "artifact sha256:{hex} ({size} bytes) uploaded by {}",
        caller.name
    );
    Ok((status, ArtifactView { sha256: hex, size }))
}

/// 429 for an upload over the quota (logged at info: it is the user's limit, not a fault).
fn over_quota(check: Result<(), OverArtifactQuota>) -> ApiFailure {
    let failure = match check {
        Err(over) => Failure::OverQuota {
            message: over.to_string(),
            quota: proto::api::QuotaExceeded {
                quota: proto::api::Quota::ArtifactBytes,
                limit: over.quota,
                usage: over.usage,
                requested: over.upload,
            },
        },
        // Not reached: callers pass a failed check. Still an honest answer.
        Ok(()) => Failure::Unavailable("artifact quota: this upload does not fit".to_owned()),
    };
    if let Failure::OverQuota { message, .. } = &failure {
        tracing::info!("{message}");
    }
    ApiFailure::from(failure)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn temp_name() -> Result<String, ApiFailure> {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).map_err(|e| unavailable(format!("no randomness: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>() + ".part")
}

/// Why an upload was not written.
#[derive(Debug)]
enum Written {
    /// What it holds passed the bound at this many bytes.
    Past(u64),
    /// A gzip body that does not decompress.
    Undecodable(std::io::Error),
    Io(std::io::Error),
}

/// The file an upload goes to: hashes and counts what is written, up to a bound.
struct Hashed {
    out: std::fs::File,
    hasher: Sha256,
    size: u64,
    bound: u64,
}

impl Write for Hashed {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.size += bytes.len() as u64;
        if self.size > self.bound {
            return Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                "past the bound",
            ));
        }
        self.hasher.update(bytes);
        self.out.write_all(bytes)?;
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Writes every chunk (decompressed with [`Encoding::Gzip`]) to a new file at `path`,
/// synced, at most `bound` bytes; answers the content's SHA-256 and size.
fn write_hashed(
    path: &std::path::Path,
    mut chunks: mpsc::Receiver<Bytes>,
    encoding: Encoding,
    bound: u64,
) -> Result<(String, u64), Written> {
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(Written::Io)?;
    // Chunks go straight to the file: a BufWriter would copy every chunk smaller than it.
    let sink = Hashed {
        out,
        hasher: Sha256::new(),
        size: 0,
        bound,
    };
    let past = |sink_size: u64, e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::FileTooLarge {
            Written::Past(sink_size)
        } else {
            Written::Io(e)
        }
    };
    let sink = match encoding {
        Encoding::Identity => {
            let mut sink = sink;
            while let Some(chunk) = chunks.blocking_recv() {
                sink.write_all(&chunk).map_err(|e| past(sink.size, e))?;
            }
            sink
        }
        Encoding::Gzip => {
            let mut decoder = flate2::write::GzDecoder::new(sink);
            let failed =
                |decoder: &flate2::write::GzDecoder<Hashed>, e: std::io::Error| match e.kind() {
                    std::io::ErrorKind::FileTooLarge => Written::Past(decoder.get_ref().size),
                    std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData => {
                        Written::Undecodable(e)
                    }
                    _ => Written::Io(e),
                };
            while let Some(chunk) = chunks.blocking_recv() {
                if let Err(e) = decoder.write_all(&chunk) {
                    return Err(failed(&decoder, e));
                }
            }
            match decoder.try_finish() {
                Ok(()) => {}
                Err(e) => return Err(failed(&decoder, e)),
            }
            decoder.finish().map_err(Written::Undecodable)?
        }
    };
    sink.out.sync_all().map_err(Written::Io)?;
    Ok((hex_of(&sink.hasher.finalize()), sink.size))
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether the caller may use an artifact: 200 with its size, or 404.
#[utoipa::path(head, path = "/api/v1/artifacts/sha256/{hex}", security(("bearer" = [])),
    params(("hex" = String, Path, description = "SHA-256 of the content")),
    responses((status = 200, description = "stored, and the caller may use it (Content-Length: its size)"),
        (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, description = "not stored, or not the caller's to use")))]
pub async fn head_artifact(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(hex): Path<String>,
) -> Result<Response, ApiFailure> {
    caller.require(&PEOPLE)?;
    checked_digest(&hex)?;
    let size = state
        .store
        .artifact_size(&hex)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| not_found(&hex))?;
    if !held(&state, &hex, size).await? || !may_use(&state, &caller, &hex).await? {
        return Err(not_found(&hex));
    }
    Ok((StatusCode::OK, [(header::CONTENT_LENGTH, size.to_string())]).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct FetchQuery {
    /// Agents: the job the artifact is fetched for (the agent must hold its lease).
    job: Option<u64>,
    /// Agents: the session (a person's lease, the grant's id in hex) a flash fetches the
    /// artifact for (the agent must keep that session, and a flash of it must name it).
    lease: Option<String>,
}

/// Downloads an artifact (people: if they may use it; agents: for a job they run).
#[utoipa::path(get, path = "/api/v1/artifacts/sha256/{hex}", security(("bearer" = [])),
    params(("hex" = String, Path, description = "SHA-256 of the content"), FetchQuery),
    responses((status = 200, description = "the content", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 307, description = "an agent fetching for a person's lease on a follower: the same request at the leading controller"),
        (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 503, body = ApiError)))]
pub async fn get_artifact(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(hex): Path<String>,
    Query(query): Query<FetchQuery>,
    uri: axum::http::Uri,
) -> Result<Response, ApiFailure> {
    checked_digest(&hex)?;
    let reader = match caller.role {
        Role::Agent if query.lease.is_some() => {
            let lease = query
                .lease
                .as_deref()
                .and_then(proto::LeaseId::parse_hex)
                .ok_or_else(|| {
                    ApiFailure::new(StatusCode::BAD_REQUEST, "lease: 1 to 32 hex digits")
                })?;
            let Some(agent) = caller.agent.clone() else {
                return Err(ApiFailure::new(
                    StatusCode::FORBIDDEN,
                    "this agent token is bound to no agent name",
                ));
            };
            let (reply, answer) = oneshot::channel();
            state
                .dispatch
                .send(Command::HoldsSession {
                    lease,
                    sha256: hex.clone(),
                    agent,
                    token_id: caller.token_id.clone(),
                    reply,
                })
                .await
                .map_err(|_| unavailable("the dispatcher stopped"))?;
            let holds = answer
                .await
                .map_err(|_| unavailable("the dispatcher stopped"))?;
            if holds == SessionFetch::AtLeader {
                let (url, redirect) = leader_redirect(&state, &uri).await.map_err(|reason| {
                    unavailable(format!(
                        "artifact sha256:{hex} for lease {lease}: flashes are done by the leading controller, {reason}"
                    ))
                })?;
                tracing::info!(
                    "agent {}: artifact sha256:{hex} for lease {lease} is fetched from the leader at {url}",
                    caller.name
                );
                return Ok(redirect);
            }
            if holds == SessionFetch::Refused {
                tracing::warn!(
                    "agent token {} asked for artifact sha256:{hex} for lease {lease}, which it does not keep or which flashes no such artifact",
                    caller.token_id
                );
                return Err(ApiFailure::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "artifact sha256:{hex}: this agent keeps no session {lease} that flashes it"
                    ),
                ));
            }
            format!("agent {} for lease {lease}", caller.name)
        }
        Role::Agent => {
            let job = JobId(query.job.ok_or_else(|| {
                ApiFailure::new(
                    StatusCode::BAD_REQUEST,
                    "job: an agent names the job it fetches an artifact for (?job=N)",
                )
            })?);
            let referenced = state
                .store
                .job_references(job, &hex)
                .await
                .map_err(unavailable)?;
            let Some(agent) = caller.agent.clone() else {
                return Err(ApiFailure::new(
                    StatusCode::FORBIDDEN,
                    "this agent token is bound to no agent name (make a new one with \
                     `dutlab token create --agent NAME`)",
                ));
            };
            let (reply, answer) = oneshot::channel();
            let token_id = caller.token_id.clone();
            state
                .dispatch
                .send(Command::HoldsJob {
                    job,
                    agent,
                    token_id,
                    reply,
                })
                .await
                .map_err(|_| unavailable("the dispatcher stopped"))?;
            let holds = answer
                .await
                .map_err(|_| unavailable("the dispatcher stopped"))?;
            if !referenced || !holds {
                tracing::warn!(
                    "agent token {} asked for artifact sha256:{hex} of job {job}, which it does not run or which does not use it",
                    caller.token_id
                );
                return Err(ApiFailure::new(
                    StatusCode::FORBIDDEN,
                    format!("artifact sha256:{hex}: this agent runs no job {job} that uses it"),
                ));
            }
            format!("agent {} for job {job}", caller.name)
        }
        Role::Admin | Role::User => {
            if !may_use(&state, &caller, &hex).await? {
                return Err(not_found(&hex));
            }
            caller.name.clone()
        }
    };
    let path = local_copy(&state, &hex).await?;
    let file = std::fs::File::open(&path).map_err(|_| not_found(&hex))?;
    let size = file.metadata().map_err(unavailable)?.len();
    tracing::info!("artifact sha256:{hex} ({size} bytes) sent to {reader}");
    let served = state.artifacts.served.clone();
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || read_chunks(file, tx, served));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, size.to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Reads `file` in chunks into `tx` until the end or the receiver is gone.
fn read_chunks(
    mut file: std::fs::File,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    served: Arc<AtomicU64>,
) {
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
        served.fetch_add(filled as u64, Ordering::Relaxed);
        if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
            return;
        }
    }
}
