//! When a manager snapshots its state and compacts the log behind it. A snapshot writes the
//! whole state, so its cost grows with the cluster; taken every fixed number of entries, it
//! grew to most of a manager's CPU under a stream of writes to a large state (issue #16: the
//! write benchmark slowed trial by trial as its services accumulated). Taken once the log since
//! the last snapshot is half the snapshot's size, its cost stays a bounded share of what is
//! written, whatever the state's size, and a restart replays at most about that much log.

/// A snapshot is due after `min_entries` (`--snapshot-logs`) applied entries at the least.
/// Then when the log appended since the last snapshot (`log_bytes_since`) is at least half
/// that snapshot's size (`snapshot_bytes`), or when `MAX_ENTRIES_FACTOR` times `min_entries`
/// entries have passed (tiny entries on a large state: a bound on what a restart replays).
pub fn snapshot_due(entries_since: u64, log_bytes_since: u64, snapshot_bytes: u64, min_entries: u64) -> bool {
    entries_since >= min_entries.max(1)
        && (log_bytes_since.saturating_mul(2) >= snapshot_bytes
            || entries_since >= min_entries.saturating_mul(MAX_ENTRIES_FACTOR))
}

/// See `snapshot_due`.
pub const MAX_ENTRIES_FACTOR: u64 = 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_waits_for_the_log_to_grow_to_half_its_size() {
        // (entries since, log bytes since, last snapshot's bytes, due?)
        let rows: &[(u64, u64, u64, bool)] = &[
            (4_999, 100 << 20, 1 << 20, false), // fewer entries than asked: never
            (5_000, 1 << 20, 0, true),          // no snapshot yet
            (5_000, 1 << 20, 2 << 20, true),    // half its size
            (5_000, (1 << 20) - 1, 2 << 20, false),
            (50_000, 10 << 20, 40 << 20, false), // a large state, small entries: wait
            (100_000, 10 << 20, 400 << 20, true), // ... but not past 20 x 5,000 entries
            (u64::MAX, u64::MAX, u64::MAX, true),
            (0, 0, 0, false), // nothing new: never, whatever the minimum
        ];
        for &(entries, bytes, snapshot, due) in rows {
            assert_eq!(
                snapshot_due(entries, bytes, snapshot, if entries == 0 { 0 } else { 5_000 }),
                due,
                "{entries} entries, {bytes} bytes, snapshot {snapshot}"
            );
        }
    }
}
