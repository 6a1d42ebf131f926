//! Artifact bytes kept in a database several controllers share ([`ArtifactBytes::Shared`]):
//! copied in after an upload ([`share`]) and at start for files kept before
//! ([`import_local`]), copied out into this controller's directory on the first fetch
//! ([`local_copy`]).
//!
//! Invariants: a file is filled from the database into a temporary file, synced, and renamed
//! into place only when its size and SHA-256 are the artifact's; with
//! [`ArtifactBytes::Local`] nothing here touches the database.

use super::*;

/// Whether this controller can serve the artifact's `size` bytes: its file, or (shared) the
/// database's chunks.
pub(crate) async fn held(state: &AppState, hex: &str, size: u64) -> Result<bool, ApiFailure> {
    if state.artifacts.path(hex).is_file() {
        return Ok(true);
    }
    match state.artifacts.bytes {
        ArtifactBytes::Local => Ok(false),
        ArtifactBytes::Shared => Ok(state
            .store
            .artifact_stored_bytes(hex)
            .await
            .map_err(unavailable)?
            == size),
    }
}

/// The artifact's file in this controller's directory, filled from the database first when
/// the bytes are shared and the file is not here yet.
pub(super) async fn local_copy(state: &AppState, hex: &str) -> Result<PathBuf, ApiFailure> {
    let path = state.artifacts.path(hex);
    if path.is_file() || state.artifacts.bytes == ArtifactBytes::Local {
        return Ok(path);
    }
    let size = state
        .store
        .artifact_size(hex)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| not_found(hex))?;
    if !held(state, hex, size).await? {
        return Err(not_found(hex));
    }
    let temp = state.artifacts.dir.join("tmp").join(temp_name()?);
    let filled = fill(&state.store, hex, size, &temp).await;
    if let Err(e) = filled {
        let _ = tokio::fs::remove_file(&temp).await;
        return Err(unavailable(format!("artifact sha256:{hex}: {e}")));
    }
    tokio::fs::rename(&temp, &path)
        .await
        .map_err(|e| unavailable(format!("artifact sha256:{hex}: cannot keep it: {e}")))?;
    tracing::info!("artifact sha256:{hex} ({size} bytes) copied here from the database");
    Ok(path)
}

/// Chunks read from the database per query when filling a file.
const CHUNKS_PER_READ: u64 = 8;

/// Writes the database's chunks of `hex` to a new file at `temp`, synced, and checks that
/// they are `size` bytes with that digest.
async fn fill(
    store: &crate::store::Store,
    hex: &str,
    size: u64,
    temp: &std::path::Path,
) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut out = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(temp)
        .await
        .map_err(|e| e.to_string())?;
    let mut hasher = Sha256::new();
    let (mut next, mut written) = (0u64, 0u64);
    loop {
        let chunks = store
            .artifact_chunks(hex, next, CHUNKS_PER_READ)
            .await
            .map_err(|e| e.to_string())?;
        if chunks.is_empty() {
            break;
        }
        for (idx, data) in chunks {
            if idx != next {
                return Err(format!("the database's copy lacks chunk {next}"));
            }
            hasher.update(&data);
            out.write_all(&data).await.map_err(|e| e.to_string())?;
            written += data.len() as u64;
            next += 1;
        }
    }
    out.sync_all().await.map_err(|e| e.to_string())?;
    let got = hex_of(&hasher.finalize());
    if written != size || got != hex {
        return Err(format!(
            "the database's copy is {written} bytes with sha256 {got}, not {size} bytes with this digest"
        ));
    }
    Ok(())
}

/// Copies the artifact's file into the database when its bytes are shared and not all there.
pub(super) async fn share(
    db: &crate::store::Store,
    artifacts: &ArtifactStore,
    hex: &str,
    size: u64,
) -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    if artifacts.bytes == ArtifactBytes::Local {
        return Ok(());
    }
    let stored = db
        .artifact_stored_bytes(hex)
        .await
        .map_err(|e| e.to_string())?;
    if stored == size && size > 0 {
        return Ok(());
    }
    let mut file = tokio::fs::File::open(artifacts.path(hex))
        .await
        .map_err(|e| e.to_string())?;
    let mut idx = 0u64;
    loop {
        let mut buf = Vec::with_capacity(CHUNK);
        while buf.len() < CHUNK {
            let read = (&mut file)
                .take((CHUNK - buf.len()) as u64)
                .read_to_end(&mut buf)
                .await
                .map_err(|e| e.to_string())?;
            if read == 0 {
                break;
            }
        }
        let last = buf.len() < CHUNK;
        if !buf.is_empty() || idx == 0 {
            db.put_artifact_chunk(hex, idx, &buf)
                .await
                .map_err(|e| e.to_string())?;
        }
        idx += 1;
        if last {
            return Ok(());
        }
    }
}

/// Copies into the database the bytes of artifacts this controller kept before the database
/// held them (shared stores only); the others' are already there.
pub async fn import_local(db: crate::store::Store, artifacts: ArtifactStore) {
    if artifacts.bytes == ArtifactBytes::Local {
        return;
    }
    let missing = match db.artifacts_without_chunks().await {
        Ok(missing) => missing,
        Err(e) => {
            tracing::warn!("artifacts: cannot list those without bytes in the database: {e}");
            return;
        }
    };
    let mut copied = 0usize;
    for (hex, size) in missing {
        let here = std::fs::metadata(artifacts.path(&hex)).is_ok_and(|m| m.len() == size);
        if !here {
            continue;
        }
        match share(&db, &artifacts, &hex, size).await {
            Ok(()) => copied += 1,
            Err(e) => tracing::warn!("artifact sha256:{hex}: not copied into the database: {e}"),
        }
    }
    if copied > 0 {
        tracing::info!(
            "artifacts: copied {copied} kept here into the database for every controller"
        );
    }
}
