//! Workers' assignment streams, fed by one index (`core::assignments::Index`) that a single
//! task refreshes from the applied state, at most every `REFRESH_GAP_MS`, and that wakes
//! only the streams of the nodes whose tasks changed. A stream then sends what changed since
//! its last event (or, to an older worker that did not ask for changes, its node's full set).

use super::convert::task_to_pb;
use super::Manager;
use crate::core::assignments::{Delta, Index, Key};
use crate::proto::v1 as pb;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::Notify;

/// Refreshes of the index are at least this far apart: under a stream of writes each
/// refresh covers many entries, and the walk over the tasks costs at most a share of a core.
pub const REFRESH_GAP_MS: u64 = 20;
/// A worker resuming from a point this manager has not applied yet waits this long for it,
/// then gets the full set instead.
const RESUME_WAIT_MS: u64 = 1_000;

#[derive(Default)]
pub struct Hub {
    index: RwLock<Index>,
    /// Per node with a stream: woken when its tasks change.
    wake: Mutex<HashMap<String, Arc<Notify>>>,
    /// Woken after every refresh (resumes waiting for the index to catch up).
    refreshed: Notify,
}

impl Hub {
    fn waker(&self, node: &str) -> Arc<Notify> {
        self.wake
            .lock()
            .unwrap()
            .entry(node.to_string())
            .or_default()
            .clone()
    }

    /// Reads the applied state again if it moved; wakes the streams of the nodes touched.
    pub fn refresh(&self, m: &Manager) {
        let touched = {
            let view = crate::raft::store::view(&m.state);
            let (applied, term) = view.last_applied.map_or((0, 0), |l| (l.index, l.leader_id.term));
            let mut index = self.index.write().unwrap();
            if applied == index.applied {
                return;
            }
            index.refresh(&view.state, applied, term)
        };
        let wake = self.wake.lock().unwrap();
        for node in touched {
            if let Some(n) = wake.get(&node) {
                n.notify_waiters();
            }
        }
        drop(wake);
        self.refreshed.notify_waiters();
    }
}

/// Keeps the index current while the manager runs.
pub async fn follow(m: super::ManagerRef, stop: super::changes::Stop) {
    let mut seen = m.changes.version();
    loop {
        m.assignments.refresh(&m);
        tokio::select! {
            biased;
            _ = stop.wait() => return,
            v = m.changes.after(seen) => match v {
                Some(v) => seen = v,
                None => return,
            },
        }
        tokio::time::sleep(Duration::from_millis(REFRESH_GAP_MS)).await;
    }
}

/// Time left until `deadline` (the simulator's tokio has no `timeout_at`).
fn left(deadline: tokio::time::Instant) -> Duration {
    deadline.saturating_duration_since(tokio::time::Instant::now())
}

/// One worker's stream: what it was last sent, and the events to send next.
pub struct Stream {
    m: super::ManagerRef,
    node: String,
    /// The worker applies changes (it said so); otherwise every event is a full set.
    changes: bool,
    sent: Option<BTreeMap<String, Key>>,
    /// The index at which `sent` was read, and its history (`Index::history_at`).
    seq: u64,
    history: String,
    wake: Arc<Notify>,
}

impl Stream {
    pub fn new(m: super::ManagerRef, node: String, changes: bool) -> Stream {
        let wake = m.assignments.waker(&node);
        Stream {
            m,
            node,
            changes,
            sent: None,
            seq: 0,
            history: String::new(),
            wake,
        }
    }

    /// The first events: what changed after `resume_after` if this manager can tell, else
    /// the full set.
    pub async fn open(&mut self, resume_after: u64, history: &str) -> Vec<pb::AssignmentEvent> {
        let hub = &self.m.assignments;
        // Never answer from an index older than the state the node was found in (a manager
        // just started has not refreshed it yet: its sets would be empty, and a worker
        // given an empty full set stops every container).
        hub.refresh(&self.m);
        if self.changes && resume_after > 0 {
            let deadline = tokio::time::Instant::now() + Duration::from_millis(RESUME_WAIT_MS);
            loop {
                let refreshed = hub.refreshed.notified();
                tokio::pin!(refreshed);
                refreshed.as_mut().enable();
                if hub.index.read().unwrap().applied >= resume_after {
                    break;
                }
                if tokio::time::timeout(left(deadline), refreshed).await.is_err() {
                    break;
                }
            }
            let found = {
                let index = hub.index.read().unwrap();
                index.since(&self.node, resume_after, history).map(|d| {
                    let now = index.node(&self.node).cloned().unwrap_or_default();
                    (d, now, index.applied, index.history_at(index.applied))
                })
            };
            if let Some((delta, now, seq, history)) = found {
                self.sent = Some(now);
                self.seq = seq;
                self.history = history.unwrap_or_default();
                return self.events(delta, false);
            }
        }
        self.next_full()
    }

    fn next_full(&mut self) -> Vec<pb::AssignmentEvent> {
        self.m.assignments.refresh(&self.m);
        let (now, seq, history) = {
            let index = self.m.assignments.index.read().unwrap();
            (
                index.node(&self.node).cloned().unwrap_or_default(),
                index.applied,
                index.history_at(index.applied),
            )
        };
        let delta = Delta {
            changed: now.keys().cloned().collect(),
            removed: vec![],
        };
        self.sent = Some(now);
        self.seq = seq;
        self.history = history.unwrap_or_default();
        self.events(delta, true)
    }

    /// Waits until this node's tasks change (then the events saying how), or `keepalive`
    /// passes (then nothing).
    pub async fn next(&mut self, keepalive: Duration) -> Vec<pb::AssignmentEvent> {
        let deadline = tokio::time::Instant::now() + keepalive;
        loop {
            let wake = self.wake.clone();
            let woken = wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let found = {
                let index = self.m.assignments.index.read().unwrap();
                (index.changed_at(&self.node) > self.seq).then(|| {
                    let now = index.node(&self.node).cloned().unwrap_or_default();
                    (now, index.applied, index.history_at(index.applied))
                })
            };
            if let Some((now, seq, history)) = found {
                if !self.changes {
                    return self.next_full();
                }
                let delta = crate::core::assignments::diff(self.sent.as_ref().expect("opened"), &now);
                self.sent = Some(now);
                self.seq = seq;
                self.history = history.unwrap_or_default();
                if delta.changed.is_empty() && delta.removed.is_empty() {
                    continue;
                }
                return self.events(delta, false);
            }
            if tokio::time::timeout(left(deadline), woken).await.is_err() {
                return vec![];
            }
        }
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// This manager's Raft core has ended: its streams would never change again.
    pub fn raft_stopped(&self) -> bool {
        self.m.changes.is_closed()
    }

    /// The tasks of `delta` as events of about `MAX_PAGE_BYTES` each (all but the last
    /// marked `more`; the removals go in the last). Tasks no longer on this node in the
    /// current state are left out: the next refresh reports them removed.
    fn events(&self, delta: Delta, full_set: bool) -> Vec<pb::AssignmentEvent> {
        use prost::Message;
        let tasks: Vec<pb::Task> = {
            let guard = self.m.state.read().unwrap();
            let st = &guard.state;
            delta
                .changed
                .iter()
                .filter_map(|id| st.tasks.get(id))
                .filter(|t| t.node_id == self.node && crate::core::assignments::on_node(t))
                .map(|t| task_to_pb(st, t, true))
                .collect()
        };
        let mut pages: Vec<Vec<pb::Task>> = vec![Vec::new()];
        let mut bytes = 0usize;
        for t in tasks {
            let len = t.encoded_len();
            if !pages.last().expect("never empty").is_empty()
                && bytes + len > crate::core::limits::MAX_PAGE_BYTES
            {
                pages.push(Vec::new());
                bytes = 0;
            }
            bytes += len;
            pages.last_mut().expect("never empty").push(t);
        }
        // Removals in pages of their own size after the tasks (an id is at most
        // MAX_TASK_ID_BYTES).
        let per_page = crate::core::limits::MAX_PAGE_BYTES / (crate::core::limits::MAX_TASK_ID_BYTES + 8);
        let mut removals: Vec<Vec<String>> = delta.removed.chunks(per_page).map(<[String]>::to_vec).collect();
        let mut events: Vec<pb::AssignmentEvent> = pages
            .into_iter()
            .map(|tasks| pb::AssignmentEvent {
                seq: self.seq,
                full_set,
                tasks,
                indexed: true,
                history: self.history.clone(),
                ..Default::default()
            })
            .collect();
        let last = events.last_mut().expect("never empty");
        if let Some(first) = removals.first_mut() {
            last.removed_task_ids = std::mem::take(first);
        }
        for ids in removals.into_iter().skip(1) {
            events.push(pb::AssignmentEvent {
                seq: self.seq,
                full_set,
                removed_task_ids: ids,
                indexed: true,
                history: self.history.clone(),
                ..Default::default()
            });
        }
        let n = events.len();
        for (i, e) in events.iter_mut().enumerate() {
            e.more = i + 1 < n;
        }
        events
    }
}
