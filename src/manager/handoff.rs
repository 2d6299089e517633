//! Leadership handoff before a planned stop: SIGTERM, `manager leave` and `manager remove`
//! of the leader hand leadership to the most caught-up reachable voter first, so a planned
//! restart does not cost the cluster an election timeout. The decisions are in
//! `core::handoff`; this module does the waiting and the asking.
//!
//! Steps: close the gate (new leader operations wait), wait until the operations already
//! inside have ended, wait until the successor holds the leader's last entry (and the
//! leader's own vote lease has run out, so it can vote for the successor), ask the successor
//! to campaign (internal `Campaign` call), and wait until another manager leads. Every wait
//! is bounded; a handoff that fails leaves a plain stop (the cluster elects as after a crash).

use super::Manager;
use crate::core::handoff::{self as decide, VoterView};
use crate::proto::internal::raft_service_client::RaftServiceClient;
use crate::raft::network::{decode, encode};
use crate::raft::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;
use thiserror::Error;
use tokio::time::Instant;

/// The whole handoff, from the gate closing to another manager leading. A stop waits at
/// most this long before it goes ahead without one.
pub const HANDOFF_MAX_MS: u64 = 2_000;
/// Polling period of every wait here (metrics waiters are avoided, see `manager::changes`).
const POLL_MS: u64 = 1;
/// How long a stopping manager waits, after a handoff, for the operations it held to be
/// answered.
const DRAIN_MS: u64 = 200;
/// How long a successor waits to be elected before it answers that it was not.
const ELECTED_WITHIN_MS: u64 = 400;
/// How long the successor may take to answer the campaign request.
const ASK_TIMEOUT_MS: u64 = ELECTED_WITHIN_MS + 200;

/// The gate leader operations pass through, and the count of those inside it.
#[derive(Default)]
pub struct Gate {
    closed: AtomicBool,
    inside: AtomicUsize,
    /// Operations held at the closed gate: after a handoff before a stop, the manager
    /// answers them (with the new leader) before its servers go down.
    held: AtomicUsize,
    /// The last successor and the term it said it leads: held operations go there while
    /// this manager has not yet heard from it as leader.
    handed_to: std::sync::Mutex<Option<(NodeId, u64)>>,
    /// Until when this manager is standing because a leader asked it to: operations that
    /// arrive meanwhile wait for the outcome instead of backing off for want of a leader.
    standing_until: std::sync::Mutex<Option<Instant>>,
}

/// One leader operation inside the gate; leaves it when dropped.
pub struct Inside<'a>(&'a Gate);

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.0.inside.fetch_sub(1, SeqCst);
    }
}

impl Gate {
    /// Enters the gate, waiting while a handoff runs (bounded by the handoff's own limit).
    pub async fn enter(&self) -> Inside<'_> {
        let mut held = None;
        loop {
            if !self.closed.load(SeqCst) {
                self.inside.fetch_add(1, SeqCst);
                // The handoff may have closed the gate between the check and the count.
                if !self.closed.load(SeqCst) {
                    return Inside(self);
                }
                self.inside.fetch_sub(1, SeqCst);
            }
            held.get_or_insert_with(|| Held::new(&self.held));
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
    }

    /// While this manager stands at a leader's request: waits (bounded) until some manager
    /// leads, so that an operation arriving meanwhile finds the new leader at once.
    pub async fn await_requested_election(&self, raft: &crate::raft::Raft) {
        loop {
            let until = *self.standing_until.lock().unwrap();
            match until {
                Some(t) if Instant::now() < t && raft.metrics().borrow().current_leader.is_none() => {
                    tokio::time::sleep(Duration::from_millis(POLL_MS)).await
                }
                _ => return,
            }
        }
    }

    /// Waits (up to `limit`) until no operation is held at or running inside the gate.
    async fn drained(&self, limit: Duration) {
        let start = Instant::now();
        while (self.held.load(SeqCst) > 0 || self.inside.load(SeqCst) > 0) && start.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
    }

    fn close(&self) -> Option<Reopen<'_>> {
        (!self.closed.swap(true, SeqCst)).then_some(Reopen(self))
    }

    /// The manager this one handed leadership to, while this one knows no leader yet and
    /// has not seen a term past the successor's.
    pub fn successor(&self, current_leader: Option<NodeId>, current_term: u64) -> Option<NodeId> {
        decide::redirect_to(*self.handed_to.lock().unwrap(), current_leader, current_term)
    }
}

/// Counts one operation held at the gate while it lives.
struct Held<'a>(&'a AtomicUsize);

impl<'a> Held<'a> {
    fn new(count: &'a AtomicUsize) -> Held<'a> {
        count.fetch_add(1, SeqCst);
        Held(count)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// Reopens the gate when the handoff ends, however it ends.
struct Reopen<'a>(&'a Gate);

impl Drop for Reopen<'_> {
    fn drop(&mut self) {
        self.0.closed.store(false, SeqCst);
    }
}

#[derive(Debug, Error)]
pub enum HandoffError {
    #[error("this manager does not lead")]
    NotLeader,
    #[error("another handoff is already running")]
    AlreadyRunning,
    #[error("no other voter is reachable or has confirmed any entry")]
    NoSuccessor,
    #[error("leader operations were still running after {waited_ms} ms")]
    Busy { waited_ms: u64 },
    #[error("manager {successor} had not replicated the leader's last entry ({last}) after {waited_ms} ms (it had {matched:?})")]
    NotCaughtUp {
        successor: NodeId,
        last: u64,
        matched: Option<u64>,
        waited_ms: u64,
    },
    #[error("asking manager {successor} to campaign failed: {why}")]
    Ask { successor: NodeId, why: String },
    #[error("manager {successor} was asked to campaign but no other manager led within {waited_ms} ms")]
    NoNewLeader { successor: NodeId, waited_ms: u64 },
}

/// The internal `Campaign` request: the leader of `term` asks the receiver to stand now.
#[derive(Debug, Serialize, Deserialize)]
pub struct CampaignRequest {
    pub from: NodeId,
    pub term: u64,
}

/// The receiver's answer: the term it now leads, or why it does not.
pub type CampaignAnswer = Result<u64, String>;

/// Hands leadership to another voter; returns the new leader's id.
pub async fn hand_off(m: &Manager) -> Result<NodeId, HandoffError> {
    let start = Instant::now();
    let deadline = start + Duration::from_millis(HANDOFF_MAX_MS);
    if m.raft.metrics().borrow().current_leader != Some(m.id) {
        return Err(HandoffError::NotLeader);
    }
    let _reopen = m.handoff.close().ok_or(HandoffError::AlreadyRunning)?;
    let waited_ms = || start.elapsed().as_millis() as u64;
    // Operations already inside may still append to the log: the successor must have them.
    while m.handoff.inside.load(SeqCst) > 0 {
        if Instant::now() >= deadline {
            return Err(HandoffError::Busy {
                waited_ms: waited_ms(),
            });
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
    let lease_ms = m.timing.leader_lease_ms();
    let (successor, term) = loop {
        let metrics = m.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(m.id) {
            return Err(HandoffError::NotLeader);
        }
        let leading_for_ms = Instant::now()
            .duration_since(m.leading_since(&metrics))
            .as_millis() as u64;
        let matched: BTreeMap<NodeId, Option<u64>> = metrics
            .replication
            .as_ref()
            .map(|r| r.iter().map(|(id, l)| (*id, l.map(|l| l.index))).collect())
            .unwrap_or_default();
        let views: BTreeMap<NodeId, VoterView> = metrics
            .membership_config
            .membership()
            .voter_ids()
            .map(|id| {
                let view = VoterView {
                    matched: matched.get(&id).copied().flatten(),
                    reachable: m.peers.is_reachable(m.id, id),
                };
                (id, view)
            })
            .collect();
        let successor = decide::successor(m.id, &views).ok_or(HandoffError::NoSuccessor)?;
        let has = views[&successor].matched;
        let last = metrics.last_log_index;
        if decide::caught_up(has, last) && decide::lease_left_ms(leading_for_ms, lease_ms) == 0 {
            break (successor, metrics.current_term);
        }
        if Instant::now() >= deadline {
            return Err(HandoffError::NotCaughtUp {
                successor,
                last: last.unwrap_or(0),
                matched: has,
                waited_ms: waited_ms(),
            });
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    };
    tracing::info!(node = m.id, successor, term, "handing leadership over");
    // Once it has voted for the successor this manager follows nobody until the successor's
    // first heartbeat, and a leader's election timer was last reset long ago: without this,
    // it would campaign at once against its own successor (the simulator found it).
    m.election.touch();
    let asked = ask(m, successor, term).await;
    if let Ok(leads) = asked {
        // The successor answers once it leads: held operations can go to it now, before
        // this manager hears from it as leader.
        *m.handoff.handed_to.lock().unwrap() = Some((successor, leads));
        tracing::info!(
            node = m.id,
            new_leader = successor,
            term = leads,
            took_ms = waited_ms(),
            "leadership handed over"
        );
        return Ok(successor);
    }
    // No answer in time (or a refusal): leadership may still move; watch until the deadline.
    loop {
        let leader = m.raft.metrics().borrow().current_leader;
        match leader {
            Some(l) if l != m.id => {
                tracing::info!(
                    node = m.id,
                    new_leader = l,
                    took_ms = waited_ms(),
                    "leadership handed over"
                );
                return Ok(l);
            }
            _ if Instant::now() >= deadline => {
                return Err(match asked {
                    Err(why) => HandoffError::Ask { successor, why },
                    Ok(_) => HandoffError::NoNewLeader {
                        successor,
                        waited_ms: waited_ms(),
                    },
                })
            }
            _ => tokio::time::sleep(Duration::from_millis(POLL_MS)).await,
        }
    }
}

/// Sends the campaign request to `successor` over the shared channel to it; returns the
/// term it leads.
async fn ask(m: &Manager, successor: NodeId, term: u64) -> Result<u64, String> {
    let addr = m
        .members()
        .get(&successor)
        .map(|n| n.raft_addr.clone())
        .ok_or_else(|| "it is no longer a member".to_string())?;
    let ch = m
        .peers
        .channel(&addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let timeout = Duration::from_millis(ASK_TIMEOUT_MS);
    let mut req = tonic::Request::new(encode(&CampaignRequest { from: m.id, term }));
    req.set_timeout(timeout);
    let mut client = RaftServiceClient::new(ch);
    match tokio::time::timeout(timeout, client.campaign(req)).await {
        Ok(Ok(r)) => decode::<CampaignAnswer>(r.get_ref()).map_err(|e| format!("its answer: {e}"))?,
        Ok(Err(s)) => {
            m.peers.forget(&addr);
            Err(s.message().to_string())
        }
        Err(_) => Err(format!("no answer within {ASK_TIMEOUT_MS} ms")),
    }
}

/// The receiving side: campaign now if the request comes from the leader this manager
/// follows, in the current term.
pub async fn campaign(m: &Manager, req: CampaignRequest) -> CampaignAnswer {
    let metrics = m.raft.metrics().borrow().clone();
    let voters = metrics.membership_config.membership().voter_ids().collect();
    decide::accept_campaign_request(
        req.from,
        req.term,
        metrics.current_leader,
        metrics.current_term,
        m.id,
        &voters,
    )
    .map_err(|e| e.to_string())?;
    tracing::info!(
        node = m.id,
        from = req.from,
        term = req.term,
        "campaigning: the leader hands over"
    );
    let start = Instant::now();
    *m.handoff.standing_until.lock().unwrap() = Some(start + Duration::from_millis(ELECTED_WITHIN_MS));
    m.raft
        .trigger()
        .elect()
        .await
        .map_err(|e| format!("cannot campaign: {e}"))?;
    // Answer once elected, so that the old leader can send what it held straight here.
    loop {
        let (leader, term) = {
            let rx = m.raft.metrics();
            let mm = rx.borrow();
            (mm.current_leader, mm.current_term)
        };
        if leader == Some(m.id) {
            return Ok(term);
        }
        if start.elapsed() >= Duration::from_millis(ELECTED_WITHIN_MS) {
            return Err(format!(
                "campaigned (term {term}) but was not elected within {ELECTED_WITHIN_MS} ms"
            ));
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
}

/// Before a planned stop: hand leadership over if this manager leads and another voter
/// can take it. Logs the outcome; the stop goes ahead either way.
pub async fn before_stop(m: &Manager) {
    match hand_off(m).await {
        // What was held during the handoff is answered (pointing at the new leader) before
        // the servers go down, or callers would wait out a timeout to learn of it.
        Ok(_) => m.handoff.drained(Duration::from_millis(DRAIN_MS)).await,
        Err(HandoffError::NotLeader) => {}
        Err(HandoffError::NoSuccessor) => {
            tracing::info!(
                node = m.id,
                "stopping without a handoff: no other voter is reachable"
            )
        }
        Err(e) => tracing::warn!(
            node = m.id,
            "stopping without a handoff ({e}); the other managers elect a leader after their election timeout"
        ),
    }
}
