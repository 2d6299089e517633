//! A cluster started from a backup (`warren cluster init --restore FILE`): what changes in
//! the backed-up state when it becomes a new cluster's, and how long its workers have to
//! come back before their tasks are rescheduled. Pure; applied by `ClusterState::apply`.

use super::state::ClusterState;
use serde::{Deserialize, Serialize};

/// Shortest and longest `--rejoin-grace` (a restore with no window would reschedule every
/// task before any worker could re-attach; one over a day is a cluster that never converges).
pub const MIN_REJOIN_GRACE_MS: i64 = 10_000;
pub const MAX_REJOIN_GRACE_MS: i64 = 24 * 3600 * 1000;

/// Where a restored cluster came from, kept in its state (and shown by `cluster info`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restored {
    /// When the restore entry was proposed.
    pub at_ms: i64,
    /// When the backup was taken, and the log index it held.
    pub backup_taken_ms: i64,
    pub backup_index: u64,
    /// Until `at_ms + rejoin_grace_ms`, a worker not yet heard from is waited for, not
    /// marked down.
    pub rejoin_grace_ms: i64,
}

/// How much of the rejoin window is left at `now_ms` (0 when closed or not restored).
pub fn rejoin_left_ms(restored: Option<&Restored>, now_ms: i64) -> u64 {
    restored.map_or(0, |r| {
        u64::try_from(r.at_ms.saturating_add(r.rejoin_grace_ms).saturating_sub(now_ms)).unwrap_or(0)
    })
}

/// The backed-up state as the new cluster's: the managers of the old cluster lose their
/// certificates (the CA is the same, and an old manager coming back must not take part in
/// the new cluster's Raft group); workers, services, tasks, tokens and operator credentials
/// stay as they were, so workers re-attach with what they hold.
pub fn into_new_cluster(mut backup: ClusterState, restored: Restored) -> ClusterState {
    revoke_managers_but(&mut backup, None);
    backup.restored = Some(restored);
    backup
}

/// `--force-new-cluster` on manager `me`: the other managers lose their certificates, so
/// that one coming back with its old membership cannot take part.
pub fn keep_only_manager(state: &mut ClusterState, me: u64) {
    revoke_managers_but(state, Some(me));
}

fn revoke_managers_but(state: &mut ClusterState, keep: Option<u64>) {
    let kept = keep.map(|id| super::state::holder("manager", &id.to_string()));
    let managers: Vec<String> = state
        .pki
        .issued
        .keys()
        .filter(|h| h.starts_with("manager/") && Some(*h) != kept.as_ref())
        .cloned()
        .collect();
    for holder in managers {
        state.pki.revoke_holder(&holder);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejoin_window() {
        let r = Restored {
            at_ms: 1_000,
            rejoin_grace_ms: 60_000,
            ..Default::default()
        };
        let cases = [
            (None, 5_000, 0),
            (Some(&r), 1_000, 60_000),
            (Some(&r), 31_000, 30_000),
            (Some(&r), 61_000, 0),
            (Some(&r), 99_000, 0),
            // A clock behind the restore's time: the whole window, no more.
            (Some(&r), 0, 61_000),
        ];
        for (restored, now_ms, want) in cases {
            assert_eq!(rejoin_left_ms(restored, now_ms), want, "now {now_ms}");
        }
    }

    #[test]
    fn old_managers_lose_their_certificates_and_nothing_else_changes() {
        let mut st = ClusterState {
            cluster_id: "c1".into(),
            ..Default::default()
        };
        for (holder, serial) in [
            ("manager/1", "a1"),
            ("manager/2", "b2"),
            ("worker/w1", "c3"),
            ("admin/ops", "d4"),
        ] {
            st.pki
                .issued
                .entry(holder.into())
                .or_default()
                .insert(serial.into(), 9_000);
        }
        let info = Restored {
            at_ms: 5,
            backup_taken_ms: 3,
            backup_index: 42,
            rejoin_grace_ms: 10_000,
        };
        let new = into_new_cluster(st.clone(), info.clone());
        assert_eq!(
            new.pki.issued.keys().cloned().collect::<Vec<_>>(),
            vec!["admin/ops".to_string(), "worker/w1".to_string()]
        );
        assert_eq!(
            new.pki.revoked.keys().cloned().collect::<Vec<_>>(),
            vec!["a1".to_string(), "b2".to_string()]
        );
        assert_eq!(new.restored, Some(info));
        assert_eq!(new.cluster_id, st.cluster_id);

        let mut forced = st.clone();
        keep_only_manager(&mut forced, 2);
        assert_eq!(
            forced.pki.issued.keys().cloned().collect::<Vec<_>>(),
            vec![
                "admin/ops".to_string(),
                "manager/2".to_string(),
                "worker/w1".to_string()
            ]
        );
        assert_eq!(
            forced.pki.revoked.keys().cloned().collect::<Vec<_>>(),
            vec!["a1".to_string()]
        );
    }
}
