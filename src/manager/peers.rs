//! Liveness of the other managers, probed with the internal `Ping` RPC. Feeds `cluster info`
//! (reachable, last contact) and the quorum check before removing a manager.

use super::ManagerRef;
use crate::proto::internal::raft_service_client::RaftServiceClient;
use crate::proto::internal::RaftPayload;
use crate::raft::network::{connect, decode};
use crate::raft::NodeId;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::Channel;

pub const PROBE_INTERVAL_MS: u64 = 500;
const PROBE_TIMEOUT_MS: u64 = 1_000;
/// Upper bound on any one call over a shared peer channel (a membership change may take
/// most of a join's deadline); each caller sets its own, shorter timeout.
const CHANNEL_REQUEST_TIMEOUT_MS: u64 = 120_000;
/// A manager not heard from for this long counts as unreachable.
pub const REACHABLE_WITHIN_MS: u64 = 3_000;

pub struct Peers {
    transport: crate::security::Transport,
    last_contact: Mutex<BTreeMap<NodeId, Instant>>,
    /// One channel per peer address, reused between probes; dropped when a probe fails.
    /// With the transport generation each was opened at (see `Transport::generation`).
    channels: Mutex<BTreeMap<String, (u64, Channel)>>,
    /// Peers already reported unreachable (until they answer again).
    warned: Mutex<BTreeSet<NodeId>>,
    /// The members each peer listed in its last ping answer: a manager that missed a join
    /// (it was down) learns of the new member from the others before its own log says so.
    members_seen: Mutex<BTreeMap<NodeId, BTreeSet<NodeId>>>,
    /// The build each peer reported in its last ping answer.
    versions: Mutex<BTreeMap<NodeId, String>>,
}

/// A manager's answer to a ping: its members (a manager that missed a join learns of the
/// new member from the others) and its build.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct PingAnswer {
    pub members: BTreeSet<NodeId>,
    pub version: String,
}

impl Peers {
    pub fn new(transport: crate::security::Transport) -> Peers {
        Peers {
            transport,
            last_contact: Default::default(),
            channels: Default::default(),
            warned: Default::default(),
            members_seen: Default::default(),
            versions: Default::default(),
        }
    }

    /// The build `id` reported in its last ping answer.
    pub fn version(&self, id: NodeId) -> Option<String> {
        self.versions.lock().unwrap().get(&id).cloned()
    }

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

    /// True when a peer that is a member now (`is_member`) reported `id` as a member.
    pub fn reported_member(&self, id: NodeId, is_member: impl Fn(NodeId) -> bool) -> bool {
        self.members_seen
            .lock()
            .unwrap()
            .iter()
            .any(|(peer, m)| is_member(*peer) && m.contains(&id))
    }

    fn record(&self, id: NodeId) {
        self.last_contact.lock().unwrap().insert(id, Instant::now());
    }

    /// The one long-lived channel to the manager at `addr` (pings and forwarded leader
    /// calls share it); callers bound each call with their own timeout.
    pub async fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let generation = self.transport.generation();
        if let Some((g, ch)) = self.channels.lock().unwrap().get(addr).cloned() {
            if g == generation {
                return Ok(ch);
            }
        }
        let ch = connect(
            addr,
            Duration::from_millis(CHANNEL_REQUEST_TIMEOUT_MS),
            &self.transport,
        )
        .await?;
        self.channels
            .lock()
            .unwrap()
            .insert(addr.to_string(), (generation, ch.clone()));
        Ok(ch)
    }

    /// Drops the channel to `addr` after an error, so the next call reconnects.
    pub fn forget(&self, addr: &str) {
        self.channels.lock().unwrap().remove(addr);
    }

    /// Pings `id` at `addr` once; records and returns whether it answered in time.
    pub async fn ping(&self, id: NodeId, addr: &str) -> bool {
        let timeout = Duration::from_millis(PROBE_TIMEOUT_MS);
        let attempt = async {
            let ch = self.channel(addr).await.ok()?;
            let mut req = tonic::Request::new(RaftPayload::default());
            req.set_timeout(timeout);
            RaftServiceClient::new(ch).ping(req).await.ok()
        };
        let attempt = async {
            let answer = attempt.await?;
            if let Ok(a) = decode::<PingAnswer>(answer.get_ref()) {
                self.members_seen.lock().unwrap().insert(id, a.members);
                self.versions.lock().unwrap().insert(id, a.version);
            }
            Some(())
        };
        let was_reachable = self
            .since_contact_ms(id)
            .is_some_and(|ms| ms <= REACHABLE_WITHIN_MS);
        let ok = matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(_)));
        if ok {
            if !was_reachable {
                tracing::info!(peer = id, addr, "manager reachable");
            }
            self.record(id);
        } else {
            self.forget(addr);
            // Say it once, when the window runs out, not on every probe.
            let now_unreachable = self
                .since_contact_ms(id)
                .is_none_or(|ms| ms > REACHABLE_WITHIN_MS);
            if now_unreachable && self.warned.lock().unwrap().insert(id) {
                tracing::warn!(peer = id, addr, "manager unreachable");
            }
        }
        if ok {
            self.warned.lock().unwrap().remove(&id);
        }
        ok
    }

    /// Of `peers` (id, Raft address), those that answer a ping now, plus `me`.
    pub async fn reachable_now(&self, me: NodeId, peers: &[(NodeId, String)]) -> BTreeSet<NodeId> {
        let pings = peers
            .iter()
            .filter(|(id, _)| *id != me)
            .map(|(id, addr)| async move { self.ping(*id, addr).await.then_some(*id) });
        futures::future::join_all(pings)
            .await
            .into_iter()
            .flatten()
            .chain([me])
            .collect()
    }
}

/// Probes every other member each interval until `stop`.
pub async fn probe_loop(m: ManagerRef, stop: super::changes::Stop) {
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
        m.peers.reachable_now(m.id, &members).await;
        tokio::select! {
            biased;
            _ = stop.wait() => return,
            _ = tokio::time::sleep(Duration::from_millis(PROBE_INTERVAL_MS)) => {}
        }
    }
}
