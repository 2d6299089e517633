//! Which tasks each worker is assigned, kept up to date incrementally, and the changes a
//! worker's assignment stream sends (issue #16: every stream used to scan every task of the
//! cluster on every applied entry, and sent its node's full set on every change).
//!
//! - `Index::refresh` reads the state once per refresh (for every stream together), looking
//!   only at the tasks that differ from its last read (`Map::diff` skips what the two share;
//!   a service at a new version makes it walk every task), and notes, per node, the log
//!   index at which its set last changed, and every task that left a node (a bounded
//!   journal, for streams that resume after a reconnect).
//! - `Index::since` answers what changed on a node after a sequence number the worker saw,
//!   or `None` when that point is too old (then the stream sends the full set).
//! - `Have` is the worker's side: full sets and changes applied to what it holds.
//!
//! The sequence number of an event is the log index of the state it reflects: the same on
//! every manager, so a worker resumes from it on another manager after a failover. An index
//! alone does not name a history, though: after `--force-new-cluster` on a lagging survivor,
//! or in a cluster restored from a backup, the same index holds another entry. So an event
//! also carries `Index::history_at` of its sequence number (the cluster's incarnation and the
//! Raft term of that entry), and a resume is answered with changes only when the manager's
//! own history at that point is the same one (Raft's log matching: same index and term, same
//! log up to there).

use super::state::Tasks;
use super::{ClusterState, Task};
use imbl::ordmap::DiffItem;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// What a worker is sent again when it changes: the task's version and its service's.
pub type Key = (u64, u64);

/// Tasks that left nodes, kept for resumes; older ones make a resume fall back to a full set.
pub const MAX_JOURNAL: usize = 200_000;
/// Term runs kept (one per leader change this manager saw); older points get a full set.
pub const MAX_TERM_RUNS: usize = 1_024;
/// Longest `resume_after_history` a worker may send (a manager's own are about 60 bytes).
pub const MAX_HISTORY_BYTES: usize = 256;

/// A task on a node (assigned and not finished), as a worker's assignments include it.
pub fn on_node(t: &Task) -> bool {
    !t.node_id.is_empty() && !t.state.is_terminal()
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Index {
    /// The log index of the state last read.
    pub applied: u64,
    /// The journal holds every task that left a node after this index.
    journal_from: u64,
    /// Every task on a node: its node and key.
    tasks: BTreeMap<String, (String, Key)>,
    /// Per node: its tasks, and the index at which the set (or a task in it) last changed.
    nodes: HashMap<String, (BTreeMap<String, Key>, u64)>,
    /// (index at which it was seen gone, node, task).
    journal: VecDeque<(u64, String, String)>,
    /// Runs of refreshes that read entries of one term: (term, first index, last index).
    /// An index inside a run is of that term; one between two runs (around a leader
    /// change) is not known.
    terms: VecDeque<(u64, u64, u64)>,
    /// The cluster's id and the restore it began with, if any.
    incarnation: String,
    /// The tasks last read (shared with that state, not copied): the next refresh looks
    /// only at what differs from them.
    read_tasks: Tasks,
    /// Each service's version as last read. (Not the services themselves: a map shared with
    /// the state makes each write to it copy the services along its path.)
    read_service_versions: super::state::ServiceVersions,
}

/// What changed on a node after some point: tasks to (re)send, tasks to drop.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Delta {
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

impl Index {
    /// Reads `state` at log index `applied`; returns the nodes whose assignments changed.
    /// One walk over the tasks, merged with the previous one (no allocation for a task
    /// that did not change).
    pub fn refresh(&mut self, state: &ClusterState, applied: u64, term: u64) -> BTreeSet<String> {
        self.refresh_walking(state, applied, term, false)
    }

    /// `refresh`, walking every task if `walk_all` (the tests compare both ways).
    fn refresh_walking(
        &mut self,
        state: &ClusterState,
        applied: u64,
        term: u64,
        walk_all: bool,
    ) -> BTreeSet<String> {
        let first = self.applied == 0 && self.tasks.is_empty();
        self.note_term(state, applied, term);
        // Looked up per task looked at (not a map of every service built per refresh: that
        // took a quarter of a leader's CPU under a stream of creates, issue #16).
        let key = |t: &Task| {
            (
                t.version,
                state.services.get(&t.service_id).map_or(0, |s| s.version),
            )
        };
        let mut touched: BTreeSet<String> = BTreeSet::new();
        let mut gone: Vec<String> = Vec::new();
        // A service at a new version changes the key of each of its tasks: then every task is
        // looked at. Otherwise only the tasks that differ from the last read (issue #16: a
        // walk over 50,000 tasks on every manager at every refresh took most of a core).
        let rekeyed = self.note_service_versions(state);
        if !first && !rekeyed && !walk_all {
            let mut upserts: Vec<(&Task, Key)> = Vec::new();
            for d in self.read_tasks.diff(&state.tasks) {
                let id = match d {
                    DiffItem::Add(id, _) | DiffItem::Remove(id, _) => id,
                    DiffItem::Update { new, .. } => new.0,
                };
                match (self.tasks.get(id), state.tasks.get(id).filter(|t| on_node(t))) {
                    (Some((node, k)), Some(t)) if *node == t.node_id && *k == key(t) => {}
                    (_, Some(t)) => upserts.push((t, key(t))),
                    (Some(_), None) => gone.push(id.clone()),
                    (None, None) => {}
                }
            }
            self.upsert(upserts, applied, &mut touched);
        } else {
            let mut old = self.tasks.iter().peekable();
            let mut now = state.tasks.values().filter(|t| on_node(t)).peekable();
            let mut upserts: Vec<(&Task, Key)> = Vec::new();
            loop {
                match (old.peek(), now.peek()) {
                    (None, None) => break,
                    (Some((id, _)), Some(t)) if id.as_str() == t.id => {
                        let (_, (node, old_key)) = old.next().expect("peeked");
                        let t = now.next().expect("peeked");
                        let k = key(t);
                        if *old_key != k || *node != t.node_id {
                            upserts.push((t, k));
                        }
                    }
                    (Some((id, _)), Some(t)) if id.as_str() < t.id.as_str() => {
                        gone.push(old.next().expect("peeked").0.clone());
                    }
                    (Some(_), None) => gone.push(old.next().expect("peeked").0.clone()),
                    (_, Some(_)) => {
                        let t = now.next().expect("peeked");
                        upserts.push((t, key(t)));
                    }
                }
            }
            self.upsert(upserts, applied, &mut touched);
        }
        self.read_tasks = state.tasks.clone();
        for id in gone {
            if let Some((node, _)) = self.tasks.remove(&id) {
                self.leave(&node, &id, applied);
                touched.insert(node);
            }
        }
        if first {
            // Nothing before the first read is known: resumes from before it get a full set.
            self.journal_from = applied;
        }
        while self.journal.len() > MAX_JOURNAL {
            if let Some((at, _, _)) = self.journal.pop_front() {
                self.journal_from = self.journal_from.max(at);
            }
        }
        self.applied = applied;
        touched
    }

    /// Notes each service's version; whether one read before is at another version now.
    /// Only that changes its tasks' keys: a new service's tasks are new and a removed one's
    /// removed, which the task diff shows.
    fn note_service_versions(&mut self, state: &ClusterState) -> bool {
        !self.read_service_versions.note(state).changed.is_empty()
    }

    /// Tasks now on a node (new, moved or at a new key), in id order.
    fn upsert(&mut self, upserts: Vec<(&Task, Key)>, applied: u64, touched: &mut BTreeSet<String>) {
        for (t, k) in upserts {
            if let Some((node, _)) = self.tasks.get(&t.id) {
                if *node != t.node_id {
                    let node = node.clone();
                    self.leave(&node, &t.id, applied);
                    touched.insert(node);
                }
            }
            self.tasks.insert(t.id.clone(), (t.node_id.clone(), k));
            let entry = self.nodes.entry(t.node_id.clone()).or_default();
            entry.0.insert(t.id.clone(), k);
            entry.1 = applied;
            touched.insert(t.node_id.clone());
        }
    }

    fn note_term(&mut self, state: &ClusterState, applied: u64, term: u64) {
        let incarnation = format!(
            "{}.{}",
            state.cluster_id,
            state.restored.as_ref().map_or(0, |r| r.at_ms)
        );
        if incarnation != self.incarnation {
            // Another history altogether: nothing read before answers for it.
            self.incarnation = incarnation;
            self.terms.clear();
        }
        match self.terms.back_mut() {
            Some((t, _, last)) if *t == term && applied >= *last => *last = applied,
            _ => self.terms.push_back((term, applied, applied)),
        }
        while self.terms.len() > MAX_TERM_RUNS {
            self.terms.pop_front();
        }
    }

    /// The history an event at `seq` belongs to, if this index can tell: `seq` read by a
    /// refresh of this index, or between two refreshes that read the same term.
    pub fn history_at(&self, seq: u64) -> Option<String> {
        self.terms
            .iter()
            .find(|(_, first, last)| (*first..=*last).contains(&seq))
            .map(|(term, _, _)| format!("{}.{term}", self.incarnation))
    }

    fn leave(&mut self, node: &str, task: &str, applied: u64) {
        if let Some(entry) = self.nodes.get_mut(node) {
            entry.0.remove(task);
            entry.1 = applied;
            if entry.0.is_empty() {
                // Keep the node's change index: a stream waiting on it must see the change.
                entry.0 = BTreeMap::new();
            }
        }
        self.journal
            .push_back((applied, node.to_string(), task.to_string()));
    }

    /// The tasks on `node` now.
    pub fn node(&self, node: &str) -> Option<&BTreeMap<String, Key>> {
        self.nodes.get(node).map(|(t, _)| t)
    }

    /// The index at which `node`'s assignments last changed (0: never seen).
    pub fn changed_at(&self, node: &str) -> u64 {
        self.nodes.get(node).map_or(0, |(_, at)| *at)
    }

    /// What changed on `node` after index `seq`, or `None` if this index cannot tell (the
    /// point is older than what it has followed, or newer than what it has read).
    pub fn since(&self, node: &str, seq: u64, history: &str) -> Option<Delta> {
        if seq == 0 || seq < self.journal_from || seq > self.applied {
            return None;
        }
        if self.history_at(seq).as_deref() != Some(history) {
            return None;
        }
        let changed = self
            .node(node)
            .map(|tasks| {
                tasks
                    .iter()
                    .filter(|(_, (tv, sv))| *tv > seq || *sv > seq)
                    .map(|(id, _)| id.clone())
                    .collect()
            })
            .unwrap_or_default();
        let here = self.node(node);
        let removed: BTreeSet<String> = self
            .journal
            .iter()
            .filter(|(at, n, t)| *at > seq && n == node && here.is_none_or(|h| !h.contains_key(t)))
            .map(|(_, _, t)| t.clone())
            .collect();
        Some(Delta {
            changed,
            removed: removed.into_iter().collect(),
        })
    }
}

/// What a stream has sent a worker versus what the node holds now.
pub fn diff(sent: &BTreeMap<String, Key>, now: &BTreeMap<String, Key>) -> Delta {
    Delta {
        changed: now
            .iter()
            .filter(|(id, k)| sent.get(*id) != Some(k))
            .map(|(id, _)| id.clone())
            .collect(),
        removed: sent.keys().filter(|id| !now.contains_key(*id)).cloned().collect(),
    }
}

/// The worker's side: the tasks it was assigned, from full sets and changes.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Have<T> {
    pub tasks: BTreeMap<String, T>,
    /// The sequence number of the last complete event (0: no full set yet).
    pub seq: u64,
}

impl<T> Have<T> {
    pub fn full_set(&mut self, seq: u64, tasks: impl IntoIterator<Item = (String, T)>) {
        self.tasks = tasks.into_iter().collect();
        self.seq = seq;
    }

    /// Applies changes; ignored before the first full set (nothing to apply them to) and
    /// when older than what is held.
    pub fn changes(
        &mut self,
        seq: u64,
        changed: impl IntoIterator<Item = (String, T)>,
        removed: &[String],
    ) -> bool {
        if self.seq == 0 || seq < self.seq {
            return false;
        }
        for id in removed {
            self.tasks.remove(id);
        }
        self.tasks.extend(changed);
        self.seq = seq;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Service, ServiceSpec, TaskState};

    /// The history of the test states (no cluster id, not restored) in term 1.
    const H: &str = ".0.1";

    fn task(id: &str, node: &str, version: u64, state: TaskState) -> Task {
        Task {
            id: id.into(),
            service_id: "s1".into(),
            slot: 1,
            node_id: node.into(),
            desired_state: TaskState::Running,
            state,
            version,
            attempt: 0,
            spec_version: 1,
            message: String::new(),
            error: String::new(),
            exit_code: 0,
            container_id: String::new(),
            created_at_ms: 0,
            updated_at_ms: 0,
            health: None,
        }
    }

    fn state(tasks: &[Task], svc_version: u64) -> ClusterState {
        let mut st = ClusterState::default();
        let mut s = Service::new(
            "s1".into(),
            ServiceSpec {
                name: "web".into(),
                image: "busybox".into(),
                replicas: 1,
                ..Default::default()
            },
            0,
            svc_version,
        );
        s.version = svc_version;
        st.services.insert("s1".into(), s);
        for t in tasks {
            st.tasks.insert(t.id.clone(), t.clone().into());
        }
        st
    }

    #[test]
    fn refresh_notes_what_changed_and_since_answers_resumes() {
        use TaskState::*;
        let mut ix = Index::default();
        let st = state(
            &[
                task("a", "n1", 5, Running),
                task("b", "n1", 6, Running),
                task("c", "n2", 7, Assigned),
                task("p", "", 7, Pending),
            ],
            3,
        );
        assert_eq!(ix.refresh(&st, 10, 1), BTreeSet::from(["n1".into(), "n2".into()]));
        // the first read cannot answer for earlier points
        assert_eq!(ix.since("n1", 9, H), None);
        assert_eq!(ix.since("n1", 10, H), Some(Delta::default()));
        // nothing changed: nothing touched
        assert!(ix.refresh(&st, 11, 1).is_empty());

        // b moves to n2, c finishes, a new task d lands on n1, a is unchanged
        let st = state(
            &[
                task("a", "n1", 5, Running),
                task("b", "n2", 12, Assigned),
                task("c", "n2", 12, Complete),
                task("d", "n1", 12, Assigned),
            ],
            3,
        );
        assert_eq!(ix.refresh(&st, 12, 1), BTreeSet::from(["n1".into(), "n2".into()]));
        assert_eq!(ix.changed_at("n1"), 12);
        assert_eq!(
            ix.since("n1", 10, H),
            Some(Delta {
                changed: vec!["d".into()],
                removed: vec!["b".into()]
            })
        );
        assert_eq!(
            ix.since("n2", 11, H),
            Some(Delta {
                changed: vec!["b".into()],
                removed: vec!["c".into()]
            })
        );
        assert_eq!(ix.since("n2", 12, H), Some(Delta::default()));
        // a point ahead of this index: it cannot tell
        assert_eq!(ix.since("n2", 13, H), None);

        // a spec change of the service sends its tasks again; a deleted service's tasks go
        let st2 = state(&[task("a", "n1", 5, Running), task("d", "n1", 12, Assigned)], 14);
        ix.refresh(&st2, 14, 1);
        assert_eq!(
            ix.since("n1", 12, H),
            Some(Delta {
                changed: vec!["a".into(), "d".into()],
                removed: vec![]
            })
        );
        let empty = state(&[], 14);
        ix.refresh(&empty, 15, 1);
        assert_eq!(ix.node("n1").map(|t| t.len()), Some(0));
        assert_eq!(
            ix.since("n1", 14, H),
            Some(Delta {
                changed: vec![],
                removed: vec!["a".into(), "d".into()]
            })
        );
        // a task that left and came back is not reported removed
        ix.refresh(&st2, 16, 1);
        assert_eq!(
            ix.since("n1", 14, H),
            Some(Delta {
                changed: vec![],
                removed: vec![]
            })
        );
    }

    /// A resume point names its history (incarnation and term); each row: what this index
    /// read (index, term, restored at), then the points asked, with the history the worker
    /// holds for them and whether the index answers with changes.
    /// Refreshing from what differs since the last read gives the same index, and touches
    /// the same nodes, as walking every task; over a long run of random changes to one
    /// state that shares its structure with the last read.
    #[test]
    fn a_refresh_from_the_difference_is_the_same_as_a_full_walk() {
        use TaskState::*;
        let mut st = state(&[], 1);
        let (mut quick, mut full) = (Index::default(), Index::default());
        // A fixed linear congruential sequence: the same run every time.
        let mut x: u64 = 0x5eed;
        let mut next = |n: u64| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % n
        };
        for applied in 1..=400u64 {
            for _ in 0..next(6) {
                let id = format!("t{:02}", next(40));
                let node = ["", "n1", "n2", "n3"][next(4) as usize];
                match next(6) {
                    0 => {
                        st.tasks.remove(&id);
                    }
                    1 => {
                        let s = st.services.get_mut("s1").expect("s1");
                        s.version += 1;
                        st.service_feed.touched_by_hand("s1");
                    }
                    2 => {
                        if let Some(t) = st.tasks.get_mut(&id) {
                            std::sync::Arc::make_mut(t).state = Complete;
                        }
                    }
                    _ => {
                        let version = applied;
                        st.tasks
                            .insert(id.clone(), task(&id, node, version, Running).into());
                    }
                }
            }
            let term = 1 + applied / 100;
            let a = quick.refresh(&st, applied, term);
            let b = full.refresh_walking(&st, applied, term, true);
            assert_eq!(a, b, "touched at {applied}");
            assert_eq!(quick, full, "index at {applied}");
        }
        assert!(
            quick.journal.len() > 10 && quick.tasks.len() > 5,
            "the run moved tasks around"
        );
    }

    #[test]
    fn a_resume_is_answered_only_in_the_same_history() {
        type Read = (u64, u64, i64);
        type Ask<'a> = (u64, &'a str, bool);
        let table: Vec<(&str, Vec<Read>, Vec<Ask>)> = vec![
            (
                "one term: every point read or between",
                vec![(10, 2, 0), (15, 2, 0)],
                vec![(10, "c.0.2", true), (12, "c.0.2", true), (15, "c.0.2", true)],
            ),
            (
                "a point of another term (a survivor forced to a new cluster wrote it again)",
                vec![(10, 2, 0), (15, 2, 0)],
                vec![(12, "c.0.1", false), (12, "c.0.3", false)],
            ),
            (
                "between two terms: not known",
                vec![(10, 2, 0), (15, 3, 0), (20, 3, 0)],
                vec![
                    (10, "c.0.2", true),
                    (12, "c.0.2", false),
                    (12, "c.0.3", false),
                    (17, "c.0.3", true),
                ],
            ),
            (
                "a restored cluster counts from 1 again: its points are another history",
                vec![(10, 1, 0), (20, 1, 0), (30, 1, 777)],
                vec![(15, "c.0.1", false), (30, "c.0.1", false), (30, "c.777.1", true)],
            ),
            (
                "garbage",
                vec![(10, 2, 0)],
                vec![(10, "", false), (10, "x", false)],
            ),
        ];
        for (name, reads, asks) in table {
            let mut ix = Index::default();
            for (applied, term, restored_at) in reads {
                let mut st = state(&[task("a", "n1", 5, TaskState::Running)], 3);
                st.cluster_id = "c".into();
                if restored_at > 0 {
                    st.restored = Some(crate::core::restore::Restored {
                        at_ms: restored_at,
                        ..Default::default()
                    });
                }
                ix.refresh(&st, applied, term);
            }
            for (seq, history, answered) in asks {
                assert_eq!(
                    ix.since("n1", seq, history).is_some(),
                    answered,
                    "{name}: {seq} {history}"
                );
            }
        }
    }

    #[test]
    fn diff_and_have() {
        let sent = BTreeMap::from([("a".to_string(), (1, 1)), ("b".to_string(), (2, 1))]);
        let now = BTreeMap::from([
            ("a".to_string(), (1, 1)),
            ("b".to_string(), (3, 1)),
            ("c".to_string(), (3, 1)),
        ]);
        assert_eq!(
            diff(&sent, &now),
            Delta {
                changed: vec!["b".into(), "c".into()],
                removed: vec![]
            }
        );
        assert_eq!(
            diff(&now, &sent),
            Delta {
                changed: vec!["b".into()],
                removed: vec!["c".into()]
            }
        );

        let mut have = Have::<u32>::default();
        // changes before any full set are not applied
        assert!(!have.changes(5, [("x".to_string(), 1)], &[]));
        have.full_set(5, [("a".to_string(), 1), ("b".to_string(), 2)]);
        assert!(have.changes(
            7,
            [("c".to_string(), 3), ("a".to_string(), 9)],
            &["b".to_string()]
        ));
        assert_eq!(
            have.tasks,
            BTreeMap::from([("a".to_string(), 9), ("c".to_string(), 3)])
        );
        assert_eq!(have.seq, 7);
        // older changes are not applied
        assert!(!have.changes(6, [("z".to_string(), 0)], &[]));
        assert_eq!(have.seq, 7);
    }
}
