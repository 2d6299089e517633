//! Snapshots on this manager's own schedule: openraft's policy is `Never`, and this task
//! triggers one when `core::compaction::snapshot_due` says so (at least `--snapshot-logs`
//! entries, and a log since the last snapshot half that snapshot's size).

use crate::core::compaction::snapshot_due;
use crate::raft::store::Growth;
use crate::raft::Raft;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How often the log's growth is looked at.
pub const CHECK_INTERVAL_MS: u64 = 200;
/// A trigger that produced no snapshot (one was being built, or the core was busy) is sent
/// again after this long.
const RETRY_MS: u64 = 10_000;

pub async fn run(raft: Raft, growth: Arc<Growth>, min_entries: u64, stop: super::changes::Stop) {
    // The snapshot index when a snapshot was last asked for, and when.
    let mut asked: Option<(u64, Instant)> = None;
    loop {
        tokio::select! {
            biased;
            _ = stop.wait() => return,
            _ = tokio::time::sleep(Duration::from_millis(CHECK_INTERVAL_MS)) => {}
        }
        let (applied, snapshot) = {
            let m = raft.metrics().borrow().clone();
            (
                m.last_applied.map_or(0, |l| l.index),
                m.snapshot.map_or(0, |l| l.index),
            )
        };
        let (log_bytes, snapshot_bytes) = growth.since_snapshot();
        if !snapshot_due(
            applied.saturating_sub(snapshot),
            log_bytes,
            snapshot_bytes,
            min_entries,
        ) {
            continue;
        }
        if asked.is_some_and(|(at, when)| at == snapshot && when.elapsed() < Duration::from_millis(RETRY_MS))
        {
            continue;
        }
        asked = Some((snapshot, Instant::now()));
        tracing::debug!(applied, snapshot, log_bytes, snapshot_bytes, "snapshot due");
        if raft.trigger().snapshot().await.is_err() {
            // The core has ended; the manager is stopping.
            return;
        }
    }
}
