//! Schema 11: artifact bytes in the database (`artifact_chunks`), and the import of files a
//! controller kept before it.

use super::*;
use dutlab_controller::artifacts::{ArtifactBytes, ArtifactStore, import_local};
use dutlab_controller::store::artifact_chunks::CHUNK;
use sha2::{Digest, Sha256};

fn hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every chunk of `sha256`, read in small batches and joined.
async fn joined(store: &Store, sha256: &str) -> Result<(usize, Vec<u8>)> {
    let (mut count, mut bytes) = (0, Vec::new());
    loop {
        let batch = store.artifact_chunks(sha256, count as u64, 2).await?;
        if batch.is_empty() {
            return Ok((count, bytes));
        }
        for (idx, data) in batch {
            ensure!(idx == count as u64, "chunk {idx} where {count} was next");
            bytes.extend(data);
            count += 1;
        }
    }
}

pub(super) async fn files_kept_before_the_database_held_bytes_are_imported_in_chunks(
    backend: Backend,
) -> Result<()> {
    let db = Db::new(backend)?;
    let store = db.open().await?;
    let dir = tempfile::tempdir()?;
    let artifacts = ArtifactStore::new(
        dir.path().to_owned(),
        ArtifactBytes::Shared,
        1 << 30,
        1 << 30,
    )?;
    // Two and a half chunks, and an empty file, kept as an older controller left them.
    let big: Vec<u8> = (0..CHUNK * 5 / 2).map(|i| (i % 251) as u8).collect();
    let (big_hex, empty_hex) = (hex(&big), hex(b""));
    for (name, data) in [(&big_hex, &big[..]), (&empty_hex, &b""[..])] {
        std::fs::write(dir.path().join("sha256").join(name), data)?;
        store
            .insert_artifact(name, data.len() as u64, "alice", Millis(1))
            .await?;
    }
    // A row whose file this controller does not have is left for the one that has it.
    let elsewhere = hex(b"elsewhere");
    store
        .insert_artifact(&elsewhere, 9, "bob", Millis(1))
        .await?;
    let mut missing = store.artifacts_without_chunks().await?;
    missing.sort();
    ensure!(missing.len() == 3, "{missing:?}");

    import_local(store.clone(), artifacts.clone()).await;
    ensure!(store.artifact_stored_bytes(&big_hex).await? == big.len() as u64);
    let (count, bytes) = joined(&store, &big_hex).await?;
    ensure!(count == 3 && bytes == big, "{count} chunks");
    ensure!(
        joined(&store, &empty_hex).await? == (1, Vec::new()),
        "one empty chunk"
    );
    ensure!(store.artifacts_without_chunks().await? == [(elsewhere.clone(), 9)]);
    // Again: nothing changes, nothing is doubled.
    import_local(store.clone(), artifacts).await;
    ensure!(joined(&store, &big_hex).await?.0 == 3);
    ensure!(store.artifact_stored_bytes(&elsewhere).await? == 0);
    Ok(())
}
