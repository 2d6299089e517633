//! Warren's own election timer. openraft 0.9 draws each node's election timeout once for the
//! node's lifetime, so two followers with close draws split their votes round after round (the
//! simulation saw five rounds on the flaky profile). This timer draws a fresh timeout from the
//! seeded RNG for every round and asks openraft to campaign (`trigger().elect()`); openraft's
//! own timer is off (`enable_elect = false`). Each voter draws from its own slice of the
//! range (by rank of its id), which keeps split votes rare. The timing decisions are in
//! `core::election`.

use super::ManagerRef;
use crate::core::election::ElectionTiming;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

pub struct ElectionTimer {
    last_contact: Mutex<Instant>,
    outlogged: crate::raft::network::Outlogged,
}

impl ElectionTimer {
    pub fn new(outlogged: crate::raft::network::Outlogged) -> Self {
        ElectionTimer {
            last_contact: Mutex::new(Instant::now()),
            outlogged,
        }
    }

    /// The leader was heard from (an AppendEntries accepted) or a vote was granted.
    pub fn touch(&self) {
        *self.last_contact.lock().unwrap() = Instant::now();
    }

    fn last_contact(&self) -> Instant {
        *self.last_contact.lock().unwrap()
    }
}

/// The election timer of one manager, until `stop`.
pub async fn run(m: ManagerRef, timing: ElectionTiming, stop: super::changes::Stop) {
    loop {
        let draw = madsim::rand::random::<u64>();
        let (round, round_failed, rank) = loop {
            // Still a candidate means this node's last round has not won (yet): a retry.
            let (round_failed, rank, voters) = {
                let metrics = m.raft.metrics().borrow().clone();
                let ids: Vec<_> = metrics.membership_config.membership().voter_ids().collect();
                let rank = ids.iter().filter(|&&v| v < m.id).count();
                (metrics.state == openraft::ServerState::Candidate, rank, ids.len())
            };
            let round = Duration::from_millis(timing.round_timeout_ms(round_failed, rank, voters, draw));
            let mut deadline = m.election.last_contact() + round;
            // A peer with a newer log refused us: give it the next rounds.
            if let Some(at) = *m.election.outlogged.lock().unwrap() {
                deadline = deadline.max(at + Duration::from_millis(timing.outlogged_backoff_ms()));
            }
            if Instant::now() >= deadline {
                break (round, round_failed, rank);
            }
            tokio::select! {
                biased;
                _ = stop.wait() => return,
                _ = tokio::time::sleep_until(deadline) => {}
            }
        };
        let (is_leader, is_voter) = {
            let metrics = m.raft.metrics().borrow().clone();
            (
                metrics.state == openraft::ServerState::Leader,
                metrics
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == m.id),
            )
        };
        if !is_leader && is_voter {
            tracing::info!(
                node = m.id,
                term = m.raft.metrics().borrow().current_term,
                rank,
                round_ms = round.as_millis() as u64,
                retry = round_failed,
                "no leader heard from; campaigning"
            );
            let _ = m.raft.trigger().elect().await;
        }
        // A new round starts now, whatever happened.
        m.election.touch();
    }
}
