//! Liveness of the other managers, probed with the internal `Ping` RPC. Feeds `cluster info`
//! (reachable, last contact) and the quorum check before removing a manager.

use super::ManagerRef;
use crate::proto::internal::raft_service_client::RaftServiceClient;
use crate::proto::internal::RaftPayload;
use crate::raft::network::connect;
use crate::raft::NodeId;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

pub const PROBE_INTERVAL_MS: u64 = 500;
const PROBE_TIMEOUT_MS: u64 = 400;
/// A manager not heard from for this long counts as unreachable.
pub const REACHABLE_WITHIN_MS: u64 = 2_000;

#[derive(Default)]
pub struct Peers {
    last_contact: Mutex<BTreeMap<NodeId, Instant>>,
}

impl Peers {
    /// Milliseconds since `id` last answered; `None` if never.
    pub fn since_contact_ms(&self, id: NodeId) -> Option<u64> {
        let map = self.last_contact.lock().unwrap();
        map.get(&id).map(|t| t.elapsed().as_millis() as u64)
    }

    pub fn is_reachable(&self, me: NodeId, id: NodeId) -> bool {
        id == me
            || self
                .since_contact_ms(id)
                .is_some_and(|ms| ms <= REACHABLE_WITHIN_MS)
    }

    /// Managers (of any that ever answered, plus `me`) reachable now.
    pub fn reachable(&self, me: NodeId) -> BTreeSet<NodeId> {
        let ids: Vec<NodeId> = self.last_contact.lock().unwrap().keys().copied().collect();
        ids.into_iter()
            .filter(|id| self.is_reachable(me, *id))
            .chain([me])
            .collect()
    }

    fn record(&self, id: NodeId) {
        self.last_contact.lock().unwrap().insert(id, Instant::now());
    }
}

/// Probes every other member each interval until `stop`.
pub async fn probe_loop(m: ManagerRef, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let members: Vec<(NodeId, String)> = {
            let metrics = m.raft.metrics().borrow().clone();
            metrics
                .membership_config
                .membership()
                .nodes()
                .filter(|(id, _)| **id != m.id)
                .map(|(id, n)| (*id, n.raft_addr.clone()))
                .collect()
        };
        for (id, addr) in members {
            let timeout = Duration::from_millis(PROBE_TIMEOUT_MS);
            let ping = async {
                let ch = connect(&addr, timeout).await.ok()?;
                let mut req = tonic::Request::new(RaftPayload::default());
                req.set_timeout(timeout);
                RaftServiceClient::new(ch).ping(req).await.ok()
            };
            if let Ok(Some(_)) = tokio::time::timeout(timeout, ping).await {
                m.peers.record(id);
            }
        }
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_millis(PROBE_INTERVAL_MS)) => {}
        }
    }
}
