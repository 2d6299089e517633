//! The leader-only loop that keeps tasks converged: every round it reads the state, asks
//! `core::reconciler` what to change and commits the answer as one `Orchestrate` entry.
//! It also keeps this leader's view of worker heartbeats (in memory, never replicated:
//! only task state changes are), and gives every node a fresh grace period when this
//! manager becomes leader, so a leader change alone never reschedules anything.

use super::leader::{self, LeaderOp, LeaderReply};
use super::ManagerRef;
use crate::core::reconciler::{self, DuplicatePolicy, Liveness};
use crate::core::Command;
use clap::Args;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// How often the leader reconciles.
pub const ROUND_INTERVAL_MS: u64 = 200;
/// Shortest time between rounds woken by applied entries.
pub const MIN_ROUND_GAP_MS: u64 = 20;
/// Most changes committed in one round (bounds the Raft entry size; the rest follow).
pub const MAX_CHANGES_PER_ROUND: usize = 1_000;

/// Orchestration flags of every way of starting a manager.
#[derive(Args, Clone, Debug)]
pub struct OrchestratorOpts {
    /// A worker not heard from for this long is marked down and its tasks are rescheduled.
    #[arg(long, default_value_t = 5_000)]
    pub node_grace_period_ms: u64,
    /// Heartbeat period the managers ask workers for.
    #[arg(long, default_value_t = 1_000)]
    pub worker_heartbeat_ms: u64,
    /// When a worker comes back after its tasks were rescheduled, which copy of a replica
    /// keeps running.
    #[arg(long, value_enum, default_value_t = DuplicatePolicy::KeepReplacement)]
    pub duplicate_policy: DuplicatePolicy,
}

impl Default for OrchestratorOpts {
    fn default() -> Self {
        OrchestratorOpts {
            node_grace_period_ms: 5_000,
            worker_heartbeat_ms: 1_000,
            duplicate_policy: DuplicatePolicy::KeepReplacement,
        }
    }
}

#[derive(Default)]
pub struct Heartbeats {
    /// When each node was last heard from, and the heartbeat interval it was asked for then.
    last_seen: Mutex<BTreeMap<String, (Instant, u64)>>,
}

impl Heartbeats {
    /// A heartbeat of `node` reached this manager as leader.
    pub fn heard(&self, node: &str, interval_ms: u64) {
        self.last_seen
            .lock()
            .unwrap()
            .insert(node.to_string(), (Instant::now(), interval_ms));
    }

    /// Each node's liveness as this leader sees it, having led since `leading_since`.
    fn liveness<'a>(
        &self,
        nodes: impl Iterator<Item = &'a String>,
        leading_since: Instant,
        grace_ms: u64,
        rejoin_left_ms: u64,
    ) -> BTreeMap<String, Liveness> {
        let now = Instant::now();
        let seen = self.last_seen.lock().unwrap();
        let max_interval_ms = seen.values().map(|(_, i)| *i).max().unwrap_or(0);
        nodes
            .map(|id| {
                let heard = seen.get(id).filter(|(t, _)| *t >= leading_since);
                let heard_ago_ms = heard.map(|(t, _)| (now - *t).as_millis() as u64);
                // A node asked for slower beats (a large cluster) gets a longer grace; one
                // not heard from yet, as long as the slowest asked of any.
                let interval_ms = heard.map_or(max_interval_ms, |(_, i)| *i);
                let grace_ms = reconciler::grace_ms(grace_ms, interval_ms);
                let leading_for_ms = (now - leading_since).as_millis() as u64;
                (
                    id.clone(),
                    reconciler::liveness(heard_ago_ms, leading_for_ms, grace_ms, rejoin_left_ms),
                )
            })
            .collect()
    }
}

pub async fn run(m: ManagerRef, opts: OrchestratorOpts, stop: super::changes::Stop) {
    let mut leading: Option<(u64, Instant)> = None;
    let mut seen = m.changes.version();
    let applied = || m.raft.metrics().borrow().last_applied.map(|l| l.index);
    let mut applied_seen = applied();
    let mut last_round = Instant::now();
    // How long the last round's decision took (its walk over the state), in ms.
    let mut last_cost_ms = 0u64;
    // A mass silence holds rescheduling (`reconciler::mass_silence`); logged as it starts and ends.
    let mut holding = false;
    // What the last round read and found, so that a round looks only at what changed; a new
    // leader starts with none (its first round looks at everything).
    let mut memory = reconciler::Memory::default();
    let mut deadlines = reconciler::Deadlines::default();
    loop {
        // A round runs when an entry was applied (a task report, a new spec: a rolling update
        // advances on each), at most every MIN_ROUND_GAP_MS, and every ROUND_INTERVAL_MS
        // regardless (node liveness, restart delays, update timers).
        // A costly round (a large cluster) spaces out the periodic ones too.
        let gap_ms = reconciler::round_gap_ms(MIN_ROUND_GAP_MS, last_cost_ms, reconciler::MAX_ROUND_GAP_MS);
        let mut deadline = last_round + Duration::from_millis(ROUND_INTERVAL_MS.max(gap_ms));
        // A rolling update's monitor period or delay ending sooner: a round right then.
        let now_ms = super::now_ms();
        let leading_since_ms = leading.map_or(now_ms, |(_, since)| wall_ms_of(now_ms, since));
        // Only a leader acts on deadlines. A copy (O(1)) of the state, so the lookups run with
        // the lock released; dropped right after them (a copy kept through the wait would make
        // each write to the services copy their path).
        let soonest = match leading {
            Some(_) => deadlines.soonest(
                &crate::raft::store::view(&m.state).state,
                now_ms,
                leading_since_ms,
            ),
            None => None,
        };
        if let Some(at_ms) = soonest {
            let wait_ms = u64::try_from(at_ms.saturating_sub(now_ms)).unwrap_or(0);
            deadline = deadline.min(Instant::now() + Duration::from_millis(wait_ms.max(MIN_ROUND_GAP_MS)));
        }
        tokio::select! {
            biased;
            _ = stop.wait() => return,
            v = m.changes.after(seen) => {
                match v {
                    Some(v) => seen = v,
                    // The Raft core has ended: no change will come; keep the timer.
                    None => tokio::time::sleep_until(deadline).await,
                }
                if v.is_some() && applied() == applied_seen {
                    continue;
                }
                tokio::time::sleep_until(last_round + Duration::from_millis(gap_ms)).await;
            }
            _ = tokio::time::sleep_until(deadline) => {}
        }
        last_round = Instant::now();
        applied_seen = applied();
        let (is_leader, term) = {
            let metrics = m.raft.metrics().borrow().clone();
            (metrics.current_leader == Some(m.id), metrics.current_term)
        };
        if !is_leader {
            leading = None;
            memory = reconciler::Memory::default();
            continue;
        }
        let since = match leading {
            Some((t, since)) if t == term => since,
            _ => {
                // Act only on state that includes everything committed before this term.
                if let Err(e) = m.read_barrier().await {
                    debug!(error = %e, "new leader not caught up yet");
                    continue;
                }
                info!(
                    term,
                    grace_ms = opts.node_grace_period_ms,
                    "leading: every node gets a fresh grace period"
                );
                let now = Instant::now();
                leading = Some((term, now));
                memory = reconciler::Memory::default();
                now
            }
        };
        let now_ms = super::now_ms();
        let round_started = std::time::Instant::now();
        // The simulator's clock: under it the walk takes no time and the schedule stays seeded.
        let decide_started = Instant::now();
        let st = crate::raft::store::view(&m.state).state;
        let liveness = m.heartbeats.liveness(
            st.nodes.keys(),
            since,
            opts.node_grace_period_ms,
            crate::core::restore::rejoin_left_ms(st.restored.as_ref(), now_ms),
        );
        let (leading_since_ms, duplicates) = (wall_ms_of(now_ms, since), opts.duplicate_policy);
        // Up to hundreds of ms at 50,000 tasks when it looks at everything: not on an async
        // worker.
        let mut kept = std::mem::take(&mut memory);
        let (mut changes, held, kept) = crate::offload::off_async(move || {
            let (changes, held) = reconciler::round_from(
                &reconciler::Input {
                    state: &st,
                    now_ms,
                    leading_since_ms,
                    liveness: &liveness,
                    duplicates,
                },
                &mut kept,
                &mut super::new_id,
            );
            (changes, held, kept)
        })
        .await;
        memory = kept;
        last_cost_ms = decide_started.elapsed().as_millis() as u64;
        match (held, holding) {
            (Some((down, nodes)), false) => warn!(
                down,
                nodes,
                "more than half of the nodes are down at once: taken for a problem on the managers' side \
                 (an overloaded leader, a partition); their tasks keep their slots until no more than half are down"
            ),
            (None, true) => info!("no more than half of the nodes are down: tasks of down nodes move again"),
            _ => {}
        }
        holding = held.is_some();
        if changes.is_empty() {
            continue;
        }
        changes.truncate(MAX_CHANGES_PER_ROUND);
        log_changes(&changes);
        let reply = leader::run_local(&m, LeaderOp::Write(Command::Orchestrate { changes, now_ms })).await;
        crate::metrics::get()
            .orchestrator_round_seconds
            .observe(round_started.elapsed().as_secs_f64());
        match reply {
            LeaderReply::Done(_) => {}
            LeaderReply::NotLeader(_) => leading = None,
            other => warn!(reply = ?other, "orchestration round not committed; retrying next round"),
        }
    }
}

/// `at` on the wall clock (ms), given that it is `now_ms` now.
fn wall_ms_of(now_ms: i64, at: Instant) -> i64 {
    now_ms.saturating_sub(i64::try_from(at.elapsed().as_millis()).unwrap_or(i64::MAX))
}

fn log_changes(changes: &[reconciler::TaskChange]) {
    use reconciler::TaskChange as C;
    for c in changes {
        match c {
            C::NodeDown { node_id } => {
                warn!(node = %node_id, "node missed heartbeats past its grace period: down, rescheduling its tasks")
            }
            C::NodeReady { node_id } => info!(node = %node_id, "node heard from again: ready"),
            C::Orphan { task_id } => info!(task = %task_id, "task orphaned (node down)"),
            C::Shutdown { task_id, reason } => info!(task = %task_id, %reason, "shutting task down"),
            C::Create(t) => {
                debug!(task = %t.id, service = %t.service_id, slot = t.slot, node = %t.node_id, "task created")
            }
            _ => {}
        }
    }
}
