//! What a manager shows on `--metrics-addr` (`crate::metrics`): values read off its Raft
//! metrics and its state at each scrape, and when it is ready.

// The simulator serves no HTTP: what only the endpoint uses is unused there.
#![cfg_attr(madsim, allow(dead_code))]

use super::ManagerRef;
use crate::metrics::{gauge, gauges_by};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

struct StateMetrics {
    m: ManagerRef,
    committed: Arc<AtomicU64>,
    db: PathBuf,
}

impl std::fmt::Debug for StateMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StateMetrics(manager {})", self.m.id)
    }
}

/// The leader this manager would name: none while it leads without a quorum.
fn known_leader(m: &super::Manager, metrics: &crate::raft::RaftMetrics) -> Option<u64> {
    metrics
        .current_leader
        .filter(|_| m.quorum_lost(metrics).is_none())
}

impl Collector for StateMetrics {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let metrics = self.m.raft.metrics().borrow().clone();
        gauge(
            &mut e,
            "raft_term",
            "Current Raft term",
            metrics.current_term as f64,
        )?;
        let leader = known_leader(&self.m, &metrics);
        if let Some(l) = leader {
            gauge(
                &mut e,
                "raft_leader_id",
                "Id of the leader this manager knows (absent: none)",
                l as f64,
            )?;
        }
        let leading = leader == Some(self.m.id);
        gauge(
            &mut e,
            "raft_is_leader",
            "1 when this manager leads with a quorum",
            f64::from(u8::from(leading)),
        )?;
        gauge(
            &mut e,
            "raft_commit_index",
            "Highest log index this manager knows committed",
            self.committed.load(Ordering::Relaxed) as f64,
        )?;
        if let Some(a) = metrics.last_applied {
            gauge(
                &mut e,
                "raft_applied_index",
                "Last log index applied to the state",
                a.index as f64,
            )?;
        }
        if let Some(last) = metrics.last_log_index {
            gauge(&mut e, "raft_last_log_index", "Last log index held", last as f64)?;
            let purged = metrics.purged.map_or(0, |p| p.index);
            gauge(
                &mut e,
                "raft_log_entries",
                "Log entries held (not yet compacted into a snapshot)",
                last.saturating_sub(purged) as f64,
            )?;
        }
        if let Some(s) = metrics.snapshot {
            gauge(
                &mut e,
                "raft_snapshot_index",
                "Last log index the snapshot covers",
                s.index as f64,
            )?;
        }
        if let Some(at) = *self.m.changes.snapshot_at.lock().unwrap() {
            gauge(
                &mut e,
                "raft_snapshot_age_seconds",
                "Since this manager's snapshot last changed (absent until it does after start)",
                at.elapsed().as_secs_f64(),
            )?;
        }
        if let Some(bytes) = crate::raft::disk::len(&self.db) {
            gauge(
                &mut e,
                "db_bytes",
                "Size of the manager's database file",
                bytes as f64,
            )?;
        }
        let (nodes, tasks) = {
            let st = &crate::raft::store::view(&self.m.state).state;
            let mut nodes: BTreeMap<String, f64> = ["ready", "down", "unknown"]
                .iter()
                .map(|s| (s.to_string(), 0.0))
                .collect();
            for n in st.nodes.values() {
                *nodes.entry(format!("{:?}", n.status).to_lowercase()).or_default() += 1.0;
            }
            let mut tasks: BTreeMap<String, f64> = BTreeMap::new();
            for t in st.tasks.values() {
                *tasks.entry(format!("{:?}", t.state).to_lowercase()).or_default() += 1.0;
            }
            (nodes, tasks)
        };
        gauges_by(&mut e, "nodes", "Worker nodes by status", "status", &nodes)?;
        gauges_by(&mut e, "tasks", "Tasks by state", "state", &tasks)
    }
}

/// Ready: a member of the cluster that knows a leader with a quorum, and, on a follower,
/// has heard from it lately.
fn readiness(m: ManagerRef) -> crate::metrics::Readiness {
    Arc::new(move || {
        let metrics = m.raft.metrics().borrow().clone();
        let leader = known_leader(&m, &metrics);
        crate::core::membership::manager_ready(
            metrics.membership_config.membership().get_node(&m.id).is_some(),
            m.id,
            leader,
            leader.is_some_and(|l| m.peers.is_reachable(m.id, l)),
            m.quorum_lost(&metrics),
        )
    })
}

/// Serves `--metrics-addr` on the socket bound at the start.
#[cfg(not(madsim))]
pub fn serve(
    m: &ManagerRef,
    log: &crate::raft::store::LogStore,
    db: &Path,
    listener: crate::metrics::Listener,
) -> tokio::task::JoinHandle<()> {
    let registry = crate::metrics::manager_registry(StateMetrics {
        m: m.clone(),
        committed: log.committed_high(),
        db: db.to_path_buf(),
    });
    tokio::spawn(crate::metrics::serve(listener, registry, readiness(m.clone())))
}

/// The simulator has no HTTP endpoint: the flag is accepted and ignored.
#[cfg(madsim)]
pub fn serve(
    _m: &ManagerRef,
    _log: &crate::raft::store::LogStore,
    _db: &Path,
    _listener: crate::metrics::Listener,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async {})
}
