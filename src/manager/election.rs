//! Warren's own election timer. openraft 0.9 draws each node's election timeout once for the
//! node's lifetime, so two followers with close draws split their votes round after round (the
//! simulation saw five rounds on the flaky profile). This timer draws a fresh timeout from the
//! seeded RNG for every round and asks openraft to campaign (`trigger().elect()`); openraft's
//! own timer is off (`enable_elect = false`).
//!
//! Timing follows openraft's rule: a follower that had a leader waits the leader lease
//! (= the election maximum, during which voters still refuse other candidates) plus the
//! round's timeout after it last heard from the leader; a candidate whose round failed waits
//! only a fresh timeout.

use super::ManagerRef;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

pub struct ElectionTimer {
    last_contact: Mutex<Instant>,
}

impl Default for ElectionTimer {
    fn default() -> Self {
        ElectionTimer {
            last_contact: Mutex::new(Instant::now()),
        }
    }
}

impl ElectionTimer {
    /// The leader was heard from (an AppendEntries accepted) or a vote was granted.
    pub fn touch(&self) {
        *self.last_contact.lock().unwrap() = Instant::now();
    }

    fn last_contact(&self) -> Instant {
        *self.last_contact.lock().unwrap()
    }
}

/// The election timer of one manager, until `stop`.
pub async fn run(m: ManagerRef, min_ms: u64, max_ms: u64, mut stop: tokio::sync::watch::Receiver<bool>) {
    let lease = Duration::from_millis(max_ms);
    loop {
        let round = Duration::from_millis(min_ms + madsim::rand::random::<u64>() % (max_ms - min_ms).max(1));
        let deadline = loop {
            let committed = m.raft.metrics().borrow().vote.committed;
            let wait = if committed { lease + round } else { round };
            let deadline = m.election.last_contact() + wait;
            if Instant::now() >= deadline {
                break deadline;
            }
            tokio::select! {
                biased;
                _ = stop.changed() => return,
                _ = tokio::time::sleep_until(deadline) => {}
            }
        };
        let _ = deadline;
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
                round_ms = round.as_millis() as u64,
                "no leader heard from; campaigning"
            );
            let _ = m.raft.trigger().elect().await;
        }
        // A new round starts now, whatever happened.
        m.election.touch();
    }
}
