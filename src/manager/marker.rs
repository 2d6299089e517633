//! The committed-index marker: `DATA_DIR/warren.committed` records, outside the database, the
//! highest log index this manager knew to be committed. A database put back from an older
//! copy holds less log than that; a manager that voted with it could elect a leader without
//! writes it had acknowledged (seen: 20 of 20 acknowledged writes lost), so it refuses to
//! start instead. Written in the background every `FLUSH_INTERVAL_MS` and at shutdown, so a
//! copy less than that much older than the crash can slip through (docs/operations.md).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const MARKER_FILE: &str = "warren.committed";
pub const FLUSH_INTERVAL_MS: u64 = 200;

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(MARKER_FILE)
}

/// The recorded index, if any; a damaged marker is an error naming the file.
pub fn read(data_dir: &Path) -> anyhow::Result<Option<u64>> {
    let p = path(data_dir);
    let Some(bytes) = crate::raft::disk::read_durable(&p)? else {
        return Ok(None);
    };
    crate::raft::codec::unseal::<u64>(&bytes)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("the committed-index marker {} is damaged: {e}; if the database beside it is intact, delete the marker to start", p.display()))
}

/// Refuses a database that holds less log than the marker says this manager had.
pub fn check(data_dir: &Path, last_index: u64) -> anyhow::Result<()> {
    match read(data_dir)? {
        Some(marked) if marked > last_index => anyhow::bail!(
            "data dir {} holds log up to index {last_index}, but this manager knew index {marked} was committed: \
             its database was put back from an older copy. Starting it could lose acknowledged writes. \
             Remove this manager (`warren manager remove ID`), move the data dir aside, and join it again with a new id (docs/operations.md, \"Backup and restore\")",
            data_dir.display()
        ),
        _ => Ok(()),
    }
}

/// Records `high` whenever it grows, until `stop`; once more at the end.
pub async fn run(data_dir: PathBuf, high: Arc<AtomicU64>, stop: super::changes::Stop) {
    let mut written = read(&data_dir).ok().flatten().unwrap_or(0);
    loop {
        let now = high.load(Ordering::Relaxed);
        if now > written {
            // Two fsyncs (the file and its directory): on the blocking pool, not on an async
            // worker that the API and the Raft network share.
            let p = path(&data_dir);
            let bytes = crate::raft::codec::seal(&now);
            match crate::offload::off_async(move || crate::raft::disk::write_durable(&p, &bytes)).await {
                Ok(()) => written = now,
                Err(e) => tracing::warn!(error = %e, "cannot record the committed index"),
            }
        }
        if stop.is_set() {
            return;
        }
        tokio::select! {
            biased;
            _ = stop.wait() => {}
            _ = tokio::time::sleep(Duration::from_millis(FLUSH_INTERVAL_MS)) => {}
        }
    }
}
