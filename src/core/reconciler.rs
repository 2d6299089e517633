//! The orchestrator's decisions: from the replicated state and this leader's view of node
//! liveness, the task changes that move the cluster toward what the services ask for. Pure;
//! `manager::orchestrator` runs it on the leader and commits the changes as one entry.
//!
//! Per service and slot (replica number):
//! - no active task: start one (a new slot, a replacement of a task whose node went down or
//!   was drained, or a restart of a finished task as the restart policy allows);
//! - more than one active task (a worker came back after its tasks were replaced): keep one
//!   per [`DuplicatePolicy`], shut the others down;
//! - slots above the replica count are shut down.
//!
//! Nodes: a node this leader has not heard from for the grace period is marked down and its
//! tasks orphaned (replaced elsewhere); a down node heard from again is ready. A new leader
//! starts every node in a fresh grace period (`Liveness::Unknown`), so a leader change alone
//! never reschedules anything.

use super::hash::{FastMap, FastSet};
use super::model::*;
use super::scheduler::Scheduler;
use super::state::ClusterState;
use super::state::{Map, Tasks};
use imbl::ordmap::DiffItem;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

/// Task history kept per slot; older finished tasks are removed.
pub const HISTORY_PER_SLOT: usize = 5;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskChange {
    NodeDown {
        node_id: String,
    },
    NodeReady {
        node_id: String,
    },
    Create(Task),
    Assign {
        task_id: String,
        node_id: String,
    },
    /// A pending task's reason changed.
    Pend {
        task_id: String,
        reason: String,
    },
    /// Its node is down or gone: the task no longer holds its slot.
    Orphan {
        task_id: String,
    },
    Shutdown {
        task_id: String,
        reason: String,
    },
    Remove {
        task_id: String,
    },
    /// A stop-first update's prepared task may start: its predecessor has stopped.
    Run {
        task_id: String,
    },
    /// A rolling update's progress after this round, if the update is still at `revision`.
    SetUpdate {
        service_id: String,
        revision: u64,
        status: Box<UpdateStatus>,
    },
    /// The update at `revision` failed and its failure action is rollback.
    AutoRollback {
        service_id: String,
        revision: u64,
        message: String,
    },
}

/// Which copy survives when a slot runs twice: a worker cut off from the managers kept
/// running its tasks while the managers started replacements elsewhere.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DuplicatePolicy {
    /// Keep the task started during the partition; stop the returning worker's copy.
    #[default]
    KeepReplacement,
    /// Keep the returning worker's copy; stop the replacement.
    KeepOriginal,
}

/// This leader's knowledge of a node's heartbeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// Heard from within the grace period.
    Alive,
    /// Not heard from for longer than the grace period.
    Silent,
    /// Silent for more than `GONE_AFTER_GRACES` grace periods: down for long, not part of a
    /// mass silence now (`mass_silence`).
    Gone,
    /// Not heard from by this leader yet, and still inside the wait it gives such a node
    /// (`FAILOVER_GRACES` grace periods, or a restored cluster's rejoin window).
    Unknown,
}

/// A node silent this many grace periods (default 60 s; 5,000 workers: 3 min) no longer
/// counts toward a mass silence: a hold lasts at most about that long, and nodes that died
/// long ago and were never removed do not keep holding the tasks of new failures.
pub const GONE_AFTER_GRACES: u64 = 12;

pub struct Input<'a> {
    pub state: &'a ClusterState,
    pub now_ms: i64,
    /// When this leader began to lead (wall clock, ms): an update's monitor and timeout
    /// periods count from then at the earliest.
    pub leading_since_ms: i64,
    /// Nodes missing here count as `Unknown`.
    pub liveness: &'a BTreeMap<String, Liveness>,
    pub duplicates: DuplicatePolicy,
}

/// A task this round creates, in placement order.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct NewTask {
    slot: u32,
    attempt: u32,
    /// Chosen by the update; None: named when created.
    id: Option<String>,
    desired: TaskState,
    /// The task a stop-first update's new task replaces (it may take that one's reservation).
    replaces: Option<String>,
}

impl NewTask {
    /// A task that fills an empty slot.
    fn fill(slot: u32, attempt: u32) -> NewTask {
        NewTask {
            slot,
            attempt,
            id: None,
            desired: TaskState::Running,
            replaces: None,
        }
    }
}

/// A round's cost is its walk over the whole state: the next round (periodic or woken by a
/// change) waits at least this many times as long as the last one took, so that rounds take
/// at most about a fifth of a core however large the cluster grows, until the gap reaches
/// `MAX_ROUND_GAP_MS` (issue #16: an idle round over 50,000 tasks on 5,000 nodes takes about
/// 40 ms alone, `examples/sched_bench`, and several times that on a loaded machine; capped at
/// the 200 ms periodic interval, rounds took most of the leader's core).
pub const ROUND_COST_FACTOR: u32 = 4;

/// Longest gap `round_gap_ms` gives (ms): node liveness and update timers are seen at most
/// this late on top of their own periods, in a cluster whose rounds take 500 ms.
pub const MAX_ROUND_GAP_MS: u64 = 2_000;

/// The least time between two rounds, given how long the last one took (ms): `min_gap_ms`,
/// or more for a large cluster; never over `max_gap_ms`.
pub fn round_gap_ms(min_gap_ms: u64, last_round_ms: u64, max_gap_ms: u64) -> u64 {
    min_gap_ms
        .max(last_round_ms.saturating_mul(ROUND_COST_FACTOR as u64))
        .min(max_gap_ms.max(min_gap_ms))
}

/// Clusters this large or larger hold rescheduling when most of their nodes fall silent at
/// once; smaller ones move the tasks of every node that goes down, as Swarm does.
pub const MASS_SILENCE_MIN_NODES: usize = 10;

/// More than half of the `nodes` that count (`silence_count`: not gone for long, not down
/// already with no news), in a cluster of at least `MASS_SILENCE_MIN_NODES`, down at once is
/// taken for a problem on the managers' side (a leader too loaded to read the
/// heartbeats, a partition around the managers), as Kubernetes' node lifecycle controller
/// takes a full zone disruption: the nodes are shown down, but their tasks keep their slots
/// until no more than half are down. Moving everything onto the few still heard from would
/// overload them and restart most of the cluster's containers (issue #16: an overloaded
/// leader marked 4,000 of 5,000 nodes down and orphaned their tasks).
pub fn mass_silence(nodes: usize, down: usize) -> bool {
    nodes >= MASS_SILENCE_MIN_NODES && down * 2 > nodes
}

/// A node's status after this round, given what its liveness says.
fn status_after(status: NodeStatus, liveness: Liveness) -> NodeStatus {
    match (status, liveness) {
        (NodeStatus::Ready | NodeStatus::Unknown, Liveness::Silent | Liveness::Gone) => NodeStatus::Down,
        (NodeStatus::Down | NodeStatus::Unknown, Liveness::Alive) => NodeStatus::Ready,
        (s, _) => s,
    }
}

/// How many nodes count toward a mass silence, and how many of them are down after this
/// round: nodes heard from, nodes silent (but not gone), and nodes not heard from yet under
/// this leader that were not down already (a down node this leader has no news of yet, or
/// one gone for long, tells nothing about now).
fn silence_count<'a>(
    nodes: impl Iterator<Item = (&'a String, NodeStatus)>,
    liveness: &BTreeMap<String, Liveness>,
) -> (usize, usize) {
    let (mut down, mut counted) = (0, 0);
    for (id, status) in nodes {
        let l = liveness.get(id).copied().unwrap_or(Liveness::Unknown);
        let counts = match l {
            Liveness::Alive | Liveness::Silent => true,
            Liveness::Gone => false,
            Liveness::Unknown => status != NodeStatus::Down,
        };
        if counts {
            counted += 1;
            down += usize::from(status_after(status, l) == NodeStatus::Down);
        }
    }
    (down, counted)
}

/// How many nodes are down after this round, of how many counted, when that is a mass
/// silence (`mass_silence`): the round holds the tasks of down nodes where they are.
pub fn held_by_mass_silence(
    state: &ClusterState,
    liveness: &BTreeMap<String, Liveness>,
) -> Option<(usize, usize)> {
    let (down, counted) = silence_count(state.nodes.iter().map(|(id, n)| (id, n.status)), liveness);
    mass_silence(counted, down).then_some((down, counted))
}

/// The changes for one round; `new_id` names new tasks.
pub fn reconcile(input: &Input, new_id: &mut dyn FnMut() -> String) -> Vec<TaskChange> {
    round(input, new_id).0
}

/// The changes for one round over every service, and whether a mass silence holds the tasks
/// of down nodes (`held_by_mass_silence`: how many are down, of how many counted).
pub fn round(input: &Input, new_id: &mut dyn FnMut() -> String) -> (Vec<TaskChange>, Option<(usize, usize)>) {
    round_from(input, &mut Memory::default(), new_id)
}

/// What a round keeps for the next one, so that the next looks only at the services whose
/// inputs changed (issue #16: the leader walked all 50,000 tasks of the cluster every round,
/// most of its CPU under load). A service is looked at again when it, or one of its tasks,
/// differs from what the last round read; when the last look at it changed something (the
/// change may not have committed) or depended on the clock (an update in progress, a restart
/// delay); and, if some of its tasks found no node, when the nodes' load may have moved.
/// Everything is looked at when a node changes or goes down or up, when a mass-silence hold
/// starts or ends, and on the first round (`Memory::default()`: a new leader starts with one).
/// `round_from` then answers exactly as `round` does (a test compares them over random runs).
#[derive(Clone, Default)]
pub struct Memory {
    /// The maps the last round read (O(1) copies); None: the next round looks at everything.
    seen: Option<Seen>,
    /// Service id -> the ids of its tasks, as of `seen`.
    tasks_of: BTreeMap<String, BTreeSet<String>>,
    /// Each service's version as of `seen`.
    service_versions: super::state::ServiceVersions,
    /// Services to look at again next round whatever changes.
    unsettled: BTreeSet<String>,
    /// Services with tasks no node had room for at their last look.
    waiting: BTreeSet<String>,
    held: bool,
    /// How many services the last round looked at, and whether it looked at every one.
    looked: (usize, bool),
}

impl Memory {
    /// How many services the last round looked at, and whether that was all of them.
    pub fn looked(&self) -> (usize, bool) {
        self.looked
    }
}

/// The services with an update in progress, followed through the service feed, so that the
/// leader finds its next update deadline without walking every service at each wait
/// (issue #16: that walk cost every manager 3% of its CPU under a stream of creates).
#[derive(Debug, Default)]
pub struct Deadlines {
    versions: super::state::ServiceVersions,
    updating: std::collections::BTreeSet<String>,
}

impl Deadlines {
    /// `next_deadline` of the service whose update has the soonest one in `st`.
    pub fn soonest(&mut self, st: &ClusterState, now_ms: i64, leading_since_ms: i64) -> Option<i64> {
        let changes = self.versions.note(st);
        for id in changes.removed {
            self.updating.remove(&id);
        }
        for id in changes.added.into_iter().chain(changes.changed) {
            let updating = st
                .services
                .get(&id)
                .and_then(|s| s.update.as_ref())
                .is_some_and(|u| u.state.in_progress());
            if updating {
                self.updating.insert(id);
            } else {
                self.updating.remove(&id);
            }
        }
        self.updating
            .iter()
            .filter_map(|id| st.services.get(id))
            .filter_map(|s| super::update::next_deadline(s, now_ms, leading_since_ms))
            .min()
    }
}

/// The maps the last round read: shared with the state, not copied. (Not the services: each
/// write to a map shared with a reader copies the values along its path, and services are
/// large; their versions are kept instead, `service_versions`.)
#[derive(Clone)]
struct Seen {
    tasks: Tasks,
    nodes: Map<String, Node>,
}

/// Which services a round looks at.
enum Scope {
    All,
    Changed {
        services: BTreeSet<String>,
        /// Whether a node's free room may differ from the last round's (a task that holds or
        /// held one changed, a node joined, a spec changed): services waiting for room are
        /// looked at too.
        room_moved: bool,
    },
}

impl Memory {
    /// The services this round looks at in `st`, the task index brought up to date.
    fn scope(&mut self, st: &ClusterState, statuses_changed: bool, hold: bool) -> Scope {
        let Some(seen) = self.seen.take() else {
            return Scope::All;
        };
        if statuses_changed || hold != self.held {
            return Scope::All;
        }
        let mut room_moved = false;
        for d in seen.nodes.diff(&st.nodes) {
            match d {
                DiffItem::Add(..) => room_moved = true,
                // Drained, relabelled, removed: their tasks' services, and any placement.
                DiffItem::Update { .. } | DiffItem::Remove(..) => return Scope::All,
            }
        }
        let mut services = std::mem::take(&mut self.unsettled);
        let versions = self.service_versions.note(st);
        room_moved |= !versions.changed.is_empty();
        services.extend(versions.added.into_iter().chain(versions.changed));
        for id in versions.removed {
            self.waiting.remove(&id);
            self.tasks_of.remove(&id);
        }
        for d in seen.tasks.diff(&st.tasks) {
            let (old, new) = match d {
                DiffItem::Add(_, t) => (None, Some(t)),
                DiffItem::Remove(_, t) => (Some(t), None),
                DiffItem::Update { old, new } => (Some(old.1), Some(new.1)),
            };
            if let Some(t) = old {
                room_moved |= t.holds_node();
                if let Some(ids) = self.tasks_of.get_mut(&t.service_id) {
                    ids.remove(&t.id);
                }
            }
            if let Some(t) = new {
                room_moved |= t.holds_node();
                self.tasks_of
                    .entry(t.service_id.clone())
                    .or_default()
                    .insert(t.id.clone());
                services.insert(t.service_id.clone());
            }
            if let Some(t) = old {
                services.insert(t.service_id.clone());
            }
        }
        Scope::Changed { services, room_moved }
    }

    /// Remembers what a look at `service` found.
    fn record(&mut self, service: &str, look: Look) {
        if look.changed || look.timed {
            self.unsettled.insert(service.to_string());
        }
        if look.waiting {
            self.waiting.insert(service.to_string());
        } else {
            self.waiting.remove(service);
        }
    }
}

/// What a look at one service found.
#[derive(Clone, Copy, Default)]
struct Look {
    /// It changed something.
    changed: bool,
    /// Its answer may change with the clock alone (an update in progress, a restart delay).
    timed: bool,
    /// Some of its tasks found no node.
    waiting: bool,
    /// It placed a task: the nodes' free room moved within this round.
    placed: bool,
}

/// The changes for one round, looking only at what changed since the round `memory` kept
/// (see `Memory`); `memory` is then this round's.
pub fn round_from(
    input: &Input,
    memory: &mut Memory,
    new_id: &mut dyn FnMut() -> String,
) -> (Vec<TaskChange>, Option<(usize, usize)>) {
    let st = input.state;
    let mut changes = Vec::new();

    // Nodes as they will be after this round's status changes (copied only if changed).
    let mut nodes: BTreeMap<&str, Cow<'_, Node>> = BTreeMap::new();
    for (id, node) in &st.nodes {
        let after = status_after(
            node.status,
            input.liveness.get(id).copied().unwrap_or(Liveness::Unknown),
        );
        let node = if after != node.status {
            match after {
                NodeStatus::Down => changes.push(TaskChange::NodeDown { node_id: id.clone() }),
                NodeStatus::Ready => changes.push(TaskChange::NodeReady { node_id: id.clone() }),
                NodeStatus::Unknown => {}
            }
            Cow::Owned(Node {
                status: after,
                ..node.clone()
            })
        } else {
            Cow::Borrowed(node)
        };
        nodes.insert(id.as_str(), node);
    }
    let statuses_changed = !changes.is_empty();
    // Looked up for every task: hashed (a tree of 5,000 node ids cost a dozen string
    // comparisons a lookup). Only looked up, never iterated: the order stays the tree's.
    let by_id: FastMap<&str, &Node> = nodes.iter().map(|(id, n)| (*id, n.as_ref())).collect();
    let held = held_by_mass_silence(st, input.liveness);
    let hold = held.is_some();
    let scope = memory.scope(st, statuses_changed, hold);
    let node_gone = |id: &str| by_id.get(id).is_none_or(|n| n.status == NodeStatus::Down);

    // The tasks looked at, by service and slot, oldest first.
    let mut slots: Slots = BTreeMap::new();
    let (todo, room_moved): (BTreeSet<&str>, bool) = match &scope {
        Scope::All => {
            memory.tasks_of.clear();
            for t in st.tasks.values() {
                group(t, &mut slots);
                memory
                    .tasks_of
                    .entry(t.service_id.clone())
                    .or_default()
                    .insert(t.id.clone());
            }
            memory.unsettled.clear();
            memory.waiting.clear();
            memory.service_versions.read_all(st);
            (st.services.keys().map(String::as_str).collect(), true)
        }
        Scope::Changed { services, room_moved } => {
            for id in services {
                group_service(&memory.tasks_of, st, id, &mut slots);
            }
            (services.iter().map(String::as_str).collect(), *room_moved)
        }
    };
    let slots: Slots = slots.into_iter().map(|(id, s)| (id, oldest_first(s))).collect();

    // Tasks whose node is gone stop holding their slot.
    // A set: looked up for every task (a node with thousands of tasks going down made a
    // list quadratic).
    let mut orphaned: FastSet<&str> = FastSet::default();
    let mut touched: BTreeSet<&str> = BTreeSet::new();
    let check = |t: &'_ Task| {
        let removed = !t.node_id.is_empty() && !by_id.contains_key(t.node_id.as_str());
        if removed && !t.state.is_terminal() {
            // Its node was removed from the cluster: it will never report again.
            Some(TaskChange::Shutdown {
                task_id: t.id.clone(),
                reason: format!("node {} was removed", t.node_id),
            })
        } else if t.holds_node() && t.desired_state == TaskState::Running && node_gone(&t.node_id) && !hold {
            Some(TaskChange::Orphan {
                task_id: t.id.clone(),
            })
        } else {
            None
        }
    };
    // Found in task id order, as a walk of every task finds them (only the few found are
    // sorted, not every task looked at).
    let mut found: Vec<(&Task, TaskChange)> = match scope {
        Scope::All => st
            .tasks
            .values()
            .filter_map(|t| Some((t.as_ref(), check(t)?)))
            .collect(),
        Scope::Changed { .. } => slots
            .values()
            .flat_map(|s| s.values().flatten())
            .filter_map(|t| Some((*t, check(t)?)))
            .collect(),
    };
    found.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    for (t, change) in found {
        orphaned.insert(&t.id);
        touched.insert(&t.service_id);
        changes.push(change);
    }

    // Most rounds orphan nothing: then no task's id is hashed.
    let is_orphaned = |id: &str| !orphaned.is_empty() && orphaned.contains(id);
    // Built when a task is first placed: a walk of every task.
    let mut scheduler: Option<Scheduler> = None;
    let mut ctx = Ctx {
        input,
        by_id: &by_id,
        is_orphaned: &is_orphaned,
        new_id,
    };
    let empty = BTreeMap::new();
    let mut room_moved = room_moved;
    let mut next: Option<String> = None;
    memory.looked = (0, matches!(scope, Scope::All));
    loop {
        // The next service in id order: one that changed, or, once room may have moved, one
        // that waits for room.
        let from = next.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let changed = todo.range::<&str, _>((from, Bound::Unbounded)).next().copied();
        let waiting = room_moved
            .then(|| memory.waiting.range::<str, _>((from, Bound::Unbounded)).next())
            .flatten()
            .map(String::as_str);
        let Some(id) = [changed, waiting].into_iter().flatten().min().map(str::to_string) else {
            break;
        };
        let Some(service) = st.services.get(&id) else {
            memory.unsettled.remove(&id);
            memory.waiting.remove(&id);
            next = Some(id);
            continue;
        };
        // A service looked at only because it waits for room: its tasks, grouped now.
        let waiting_only;
        let by_slot = match slots.get(id.as_str()) {
            Some(s) => s,
            None if !todo.contains(id.as_str()) => {
                let mut one = Slots::new();
                group_service(&memory.tasks_of, st, &id, &mut one);
                waiting_only = one.remove(id.as_str()).map(oldest_first).unwrap_or_default();
                &waiting_only
            }
            None => &empty,
        };
        let before = changes.len();
        memory.looked.0 += 1;
        let mut look = look_at(&mut ctx, service, by_slot, &nodes, &mut scheduler, &mut changes);
        look.changed |= changes.len() > before || touched.contains(id.as_str());
        room_moved |= look.placed;
        memory.record(&id, look);
        next = Some(id);
    }
    memory.seen = Some(Seen {
        tasks: st.tasks.clone(),
        nodes: st.nodes.clone(),
    });
    memory.held = hold;
    (changes, held)
}

type Slots<'t> = BTreeMap<&'t str, BTreeMap<u32, Vec<&'t Task>>>;

/// Each slot's tasks, oldest first.
fn oldest_first(mut by_slot: BTreeMap<u32, Vec<&Task>>) -> BTreeMap<u32, Vec<&Task>> {
    for tasks in by_slot.values_mut() {
        tasks.sort_by(|a, b| (a.created_at_ms, a.attempt, &a.id).cmp(&(b.created_at_ms, b.attempt, &b.id)));
    }
    by_slot
}

/// Groups the tasks of service `id` (by `tasks_of`, the index of its task ids) into `slots`.
fn group_service<'t>(
    tasks_of: &BTreeMap<String, BTreeSet<String>>,
    st: &'t ClusterState,
    id: &str,
    slots: &mut Slots<'t>,
) {
    for t in tasks_of.get(id).into_iter().flatten() {
        if let Some(t) = st.tasks.get(t) {
            group(t, slots);
        }
    }
}

fn group<'t>(t: &'t Task, slots: &mut Slots<'t>) {
    slots
        .entry(&t.service_id)
        .or_default()
        .entry(t.slot)
        .or_default()
        .push(t);
}

/// What every look at a service in one round shares.
struct Ctx<'r, 'a> {
    input: &'r Input<'a>,
    by_id: &'r FastMap<&'r str, &'r Node>,
    is_orphaned: &'r dyn Fn(&str) -> bool,
    new_id: &'r mut dyn FnMut() -> String,
}

/// One service's changes this round, given its tasks by slot.
fn look_at<'a>(
    ctx: &mut Ctx<'_, 'a>,
    service: &'a Service,
    by_slot: &BTreeMap<u32, Vec<&'a Task>>,
    nodes: &'a BTreeMap<&str, Cow<'a, Node>>,
    scheduler: &mut Option<Scheduler<'a>>,
    changes: &mut Vec<TaskChange>,
) -> Look {
    let input = ctx.input;
    let is_orphaned = ctx.is_orphaned;
    let drained = |id: &str| {
        ctx.by_id
            .get(id)
            .is_some_and(|n| n.availability == Availability::Drain)
    };
    let mut look = Look::default();
    let replicas = service.spec.replicas as u32;
    // Tasks to place: new ones, then pending ones.
    let mut new_tasks: Vec<NewTask> = Vec::new();
    let mut pending: Vec<&Task> = Vec::new();
    // Slots a rolling update is replacing: two tasks there are the update's doing, and
    // an empty one is being filled by it.
    let updating = service
        .update
        .as_ref()
        .filter(|u| u.state.in_progress())
        .map(|u| &u.in_flight);
    look.timed = updating.is_some();
    let in_update = |slot: u32| updating.is_some_and(|f| f.contains_key(&slot));

    for (&slot, tasks) in by_slot {
        let is_active = |t: &&&Task| t.is_active() && !is_orphaned(&t.id);
        let prepared = |t: &&&Task| t.desired_state == TaskState::Ready && !t.state.is_terminal();
        if slot > replicas {
            for t in tasks.iter().filter(|t| is_active(t) || prepared(t)) {
                changes.push(TaskChange::Shutdown {
                    task_id: t.id.clone(),
                    reason: "scaled down".into(),
                });
            }
            continue;
        }
        let mut active: Vec<&Task> = Vec::new();
        for t in tasks.iter().filter(is_active) {
            if !t.node_id.is_empty() && drained(&t.node_id) {
                changes.push(TaskChange::Shutdown {
                    task_id: t.id.clone(),
                    reason: format!("node {} drained", t.node_id),
                });
            } else {
                active.push(t);
            }
        }
        if let Some(t) = tasks
            .iter()
            .find(|t| prepared(t) && t.node_id.is_empty() && t.state == TaskState::Pending)
        {
            pending.push(t);
        }
        if in_update(slot) || tasks.iter().any(|t| prepared(&t)) {
            if let Some(t) = active.iter().find(|t| t.node_id.is_empty()) {
                pending.push(t);
            }
            continue;
        }
        if active.len() > 1 {
            let keep = match input.duplicates {
                DuplicatePolicy::KeepReplacement => active.len() - 1,
                DuplicatePolicy::KeepOriginal => 0,
            };
            for (i, t) in active.iter().enumerate() {
                if i != keep {
                    changes.push(TaskChange::Shutdown {
                        task_id: t.id.clone(),
                        reason: format!(
                            "slot {slot} ran twice after a partition; keeping {}",
                            active[keep].id
                        ),
                    });
                }
            }
            active = vec![active[keep]];
        }
        match active.first() {
            Some(t) if t.node_id.is_empty() => pending.push(t),
            Some(_) => {}
            None => match replacement(service, tasks.last().copied(), input.now_ms) {
                Refill::Now(attempt) => new_tasks.push(NewTask::fill(slot, attempt)),
                Refill::Later => look.timed = true,
                Refill::Never => {}
            },
        }
    }
    for slot in 1..=replicas {
        if !by_slot.contains_key(&slot) {
            new_tasks.push(NewTask::fill(slot, 0));
        }
    }
    let update = super::update::step(service, by_slot, input.now_ms, input.leading_since_ms, ctx.new_id);
    changes.extend(update.changes);
    for (slot, id, desired, old) in update.create {
        let attempt = by_slot
            .get(&slot)
            .and_then(|ts| ts.last())
            .map_or(0, |t| t.attempt);
        let in_stead_of = (desired == TaskState::Ready).then_some(old);
        new_tasks.push(NewTask {
            slot,
            attempt,
            id: Some(id),
            desired,
            replaces: in_stead_of,
        });
    }
    new_tasks.sort();
    let count = pending.len() + new_tasks.len();
    if count > 0 {
        place(
            ctx, service, updating, pending, new_tasks, nodes, scheduler, changes, &mut look,
        );
    }

    // History: keep the newest finished tasks of each slot.
    for tasks in by_slot.values() {
        let finished: Vec<&&Task> = tasks.iter().filter(|t| t.state.is_terminal()).collect();
        let excess = finished.len().saturating_sub(HISTORY_PER_SLOT);
        for t in &finished[..excess] {
            changes.push(TaskChange::Remove {
                task_id: t.id.clone(),
            });
        }
    }
    look
}

/// Places a service's pending and new tasks; the new ones are created.
#[allow(clippy::too_many_arguments)]
fn place<'a>(
    ctx: &mut Ctx<'_, 'a>,
    service: &'a Service,
    updating: Option<&BTreeMap<u32, SlotUpdate>>,
    pending: Vec<&Task>,
    new_tasks: Vec<NewTask>,
    nodes: &'a BTreeMap<&str, Cow<'a, Node>>,
    scheduler: &mut Option<Scheduler<'a>>,
    changes: &mut Vec<TaskChange>,
    look: &mut Look,
) {
    let input = ctx.input;
    let st = input.state;
    let is_orphaned = ctx.is_orphaned;
    let count = pending.len() + new_tasks.len();
    let scheduler = scheduler.get_or_insert_with(|| {
        Scheduler::new(
            nodes.values().map(|n| n.as_ref()),
            st.tasks
                .values()
                .map(|t| t.as_ref())
                .filter(|t| !is_orphaned(&t.id)),
            &st.services,
        )
    });
    let placed = scheduler.place(service, count);
    let (for_pending, for_new) = placed.split_at(pending.len());
    // A stop-first update's new task may take the reservation of the task it replaces
    // when no node has room: that one stops before the new one starts.
    let mut in_stead_of = |place: &Result<String, String>, old_id: Option<&str>| {
        let old = old_id.and_then(|id| st.tasks.get(id)).filter(|o| o.holds_node());
        match (place, old) {
            (Err(_), Some(o)) => {
                let reserved = service
                    .spec_of(o.spec_version)
                    .map(|s| s.resources.reservations)
                    .unwrap_or_default();
                scheduler.place_in_stead_of(service, o, reserved).map(Ok)
            }
            _ => None,
        }
    };
    for (t, place) in pending.iter().zip(for_pending) {
        let old_id = updating
            .and_then(|f| f.get(&t.slot))
            .filter(|f| f.new_task_id == t.id && t.desired_state == TaskState::Ready)
            .map(|f| f.old_task_id.as_str());
        let taken = in_stead_of(place, old_id);
        match taken.as_ref().unwrap_or(place) {
            Ok(node_id) => {
                look.placed = true;
                changes.push(TaskChange::Assign {
                    task_id: t.id.clone(),
                    node_id: node_id.clone(),
                })
            }
            Err(reason) => {
                look.waiting = true;
                if *reason != t.message {
                    changes.push(TaskChange::Pend {
                        task_id: t.id.clone(),
                        reason: reason.clone(),
                    })
                }
            }
        }
    }
    for (
        NewTask {
            slot,
            attempt,
            id,
            desired,
            replaces,
        },
        place,
    ) in new_tasks.into_iter().zip(for_new)
    {
        let taken = in_stead_of(place, replaces.as_deref());
        let place = taken.as_ref().unwrap_or(place);
        let (node_id, state, message) = match place {
            Ok(node) => (node.clone(), TaskState::Assigned, String::new()),
            Err(reason) => (String::new(), TaskState::Pending, reason.clone()),
        };
        look.placed |= place.is_ok();
        look.waiting |= place.is_err();
        changes.push(TaskChange::Create(Task {
            id: id.unwrap_or_else(&mut *ctx.new_id),
            service_id: service.id.clone(),
            slot,
            attempt,
            spec_version: service.spec_version,
            node_id,
            desired_state: desired,
            state,
            message,
            error: String::new(),
            exit_code: 0,
            container_id: String::new(),
            created_at_ms: input.now_ms,
            updated_at_ms: input.now_ms,
            version: 0,
            health: None,
        }));
    }
}

/// Whether a slot whose newest task (none active) gets a new task.
enum Refill {
    /// Now, with this attempt number.
    Now(u32),
    /// Once its restart delay has passed.
    Later,
    Never,
}

/// Whether a slot whose newest task is `latest` (none active) gets a new task now, and its
/// attempt number.
fn replacement(service: &Service, latest: Option<&Task>, now_ms: i64) -> Refill {
    let Some(t) = latest else { return Refill::Now(0) };
    // Still running but moved (node down or drained), or stopped by the orchestrator or
    // the node: not the task's fault, so no restart policy and no attempt counted.
    if !t.state.is_terminal() || t.state == TaskState::Shutdown || t.desired_state != TaskState::Running {
        return Refill::Now(t.attempt);
    }
    let failed = matches!(t.state, TaskState::Failed | TaskState::Rejected);
    match service
        .spec
        .restart_policy
        .decide(failed, t.attempt, t.updated_at_ms, now_ms)
    {
        Restart::Now => Refill::Now(t.attempt + 1),
        Restart::Later => Refill::Later,
        Restart::No => Refill::Never,
    }
}

/// A node's liveness as a leader sees it: `heard_ago_ms` since this leader last received its
/// heartbeat (`None`: not since it became leader), `leading_for_ms` since it became leader.
/// Every node gets a full grace period under each new leader. `rejoin_left_ms`: what is left
/// of a restored cluster's rejoin window (`core::restore`), during which a node this leader
/// has not heard from yet is waited for.
/// Heartbeats per second the managers ask of all workers together, at most: past
/// `MAX_HEARTBEATS_PER_S` workers, each beats less often (as Nomad does), so that the
/// managers' work stays bounded as the cluster grows (issue #16: 5,000 workers beating each
/// second took more than this machine's two cores).
pub const MAX_HEARTBEATS_PER_S: u64 = 1_000;
/// A node is taken for down after this many heartbeat intervals without one, if that is
/// longer than the configured grace period.
pub const GRACE_BEATS: u64 = 3;

/// The heartbeat interval a cluster of `nodes` nodes asks for (ms).
pub fn heartbeat_interval_ms(nodes: usize, base_ms: u64) -> u64 {
    base_ms.max(
        (nodes as u64)
            .saturating_mul(1_000)
            .div_ceil(MAX_HEARTBEATS_PER_S),
    )
}

/// How long a node that was asked to beat every `interval_ms` may stay silent (ms).
pub fn grace_ms(base_grace_ms: u64, interval_ms: u64) -> u64 {
    base_grace_ms.max(interval_ms.saturating_mul(GRACE_BEATS))
}

/// A new leader waits this many grace periods for a node it has not heard from yet (default
/// 15 s; 5,000 workers: 45 s). After a leader is lost, a third of the workers must find
/// another manager and reach the new leader through it while the survivors take their
/// connections all at once; a node taken for down then has its tasks run twice until it is
/// back (measured: 154 slots at 2,000 workers with one grace period). Nomad waits 5 minutes
/// (`failover_heartbeat_ttl`). A node heard from by this leader and then silent is down after
/// one grace period, as ever.
pub const FAILOVER_GRACES: u64 = 3;

pub fn liveness(
    heard_ago_ms: Option<u64>,
    leading_for_ms: u64,
    grace_ms: u64,
    rejoin_left_ms: u64,
) -> Liveness {
    let gone_ms = grace_ms.saturating_mul(GONE_AFTER_GRACES);
    match heard_ago_ms {
        Some(ago) if ago <= grace_ms => Liveness::Alive,
        None if rejoin_left_ms > 0 => Liveness::Unknown,
        None if leading_for_ms <= grace_ms.saturating_mul(FAILOVER_GRACES) => Liveness::Unknown,
        _ if leading_for_ms <= grace_ms => Liveness::Unknown,
        // Silent for as long as this leader can tell (it does not know of earlier silence).
        Some(ago) if ago.min(leading_for_ms) > gone_ms => Liveness::Gone,
        None if leading_for_ms > gone_ms => Liveness::Gone,
        _ => Liveness::Silent,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn heartbeats_slow_down_past_a_thousand_nodes_and_the_grace_follows() {
        for (nodes, base, want_interval, want_grace) in [
            (0, 1_000, 1_000, 5_000),
            (1_000, 1_000, 1_000, 5_000),
            (1_001, 1_000, 1_001, 5_000),
            (2_000, 1_000, 2_000, 6_000),
            (5_000, 1_000, 5_000, 15_000),
            (5_000, 10_000, 10_000, 30_000), // a longer configured interval stays
        ] {
            let interval = heartbeat_interval_ms(nodes, base);
            assert_eq!(interval, want_interval, "{nodes} nodes");
            assert_eq!(grace_ms(5_000, interval), want_grace, "{nodes} nodes");
        }
    }

    #[test]
    fn the_gap_between_rounds_grows_with_their_cost() {
        for (min, last, max, want) in [
            (20, 0, 200, 20),        // a small cluster: the minimum
            (20, 4, 200, 20),        // 16 ms of work: still the minimum
            (20, 10, 200, 40),       // 10 ms a round: 40 ms between
            (20, 100, 2_000, 400),   // 100 ms a round: 400 ms between
            (20, 900, 2_000, 2_000), // never longer than the maximum
            (20, 5, 10, 20),         // a maximum under the minimum: the minimum
        ] {
            assert_eq!(
                round_gap_ms(min, last, max),
                want,
                "min {min} last {last} max {max}"
            );
        }
    }

    use super::*;
    use crate::core::limits::SPEC_HISTORY;
    use crate::core::state::{Command, TaskReport};
    use std::collections::BTreeSet;

    struct World {
        st: ClusterState,
        index: u64,
        now_ms: i64,
        next_id: u32,
        liveness: BTreeMap<String, Liveness>,
        duplicates: DuplicatePolicy,
        leading_since_ms: i64,
    }

    impl World {
        fn new(workers: &[&str]) -> World {
            let mut w = World {
                st: ClusterState::default(),
                index: 0,
                now_ms: 1_000,
                next_id: 0,
                liveness: BTreeMap::new(),
                duplicates: DuplicatePolicy::KeepReplacement,
                leading_since_ms: 0,
            };
            for id in workers {
                w.register(id);
            }
            w
        }

        /// A worker joins (4 CPUs, 4 GiB), heard from.
        fn register(&mut self, id: &str) {
            self.apply(Command::RegisterNode {
                id: id.to_string(),
                role: Role::Worker,
                address: String::new(),
                labels: BTreeMap::new(),
                capacity: Resources {
                    cpu_millis: 4000,
                    memory_bytes: 1 << 32,
                },
                now_ms: self.now_ms,
            });
            self.liveness.insert(id.to_string(), Liveness::Alive);
        }

        fn apply(&mut self, cmd: Command) {
            self.index += 1;
            self.st.apply(self.index, cmd).unwrap();
        }

        /// Applies `cmd` if the state takes it (a random run asks for what may be refused).
        fn attempt(&mut self, cmd: Command) {
            self.index += 1;
            let _ = self.st.apply(self.index, cmd);
        }

        fn service(&mut self, name: &str, replicas: i64, policy: RestartPolicy) {
            let spec = ServiceSpec {
                name: name.into(),
                image: "busybox".into(),
                replicas,
                restart_policy: policy,
                ..Default::default()
            };
            self.apply(Command::CreateService {
                id: name.into(),
                spec,
                now_ms: self.now_ms,
            });
        }

        /// One reconcile round, committed; returns its changes.
        fn round(&mut self) -> Vec<TaskChange> {
            let mut next = self.next_id;
            let changes = reconcile(
                &Input {
                    state: &self.st,
                    now_ms: self.now_ms,
                    leading_since_ms: self.leading_since_ms,
                    liveness: &self.liveness,
                    duplicates: self.duplicates,
                },
                &mut || {
                    next += 1;
                    format!("t{next:03}")
                },
            );
            self.next_id = next;
            self.apply(Command::Orchestrate {
                changes: changes.clone(),
                now_ms: self.now_ms,
            });
            changes
        }

        /// Rounds until nothing changes; panics if that takes more than 5.
        fn settle(&mut self) {
            for _ in 0..5 {
                if self.round().is_empty() {
                    return;
                }
            }
            panic!("no fixed point: {:?}", self.round());
        }

        /// Every assigned task reports running (what healthy workers do).
        fn run_all(&mut self) {
            let mut by_node: BTreeMap<String, Vec<TaskReport>> = BTreeMap::new();
            for t in self.st.tasks.values() {
                if t.state == TaskState::Assigned
                    || (t.state == TaskState::Running && t.desired_state == TaskState::Shutdown)
                {
                    let state = if t.desired_state == TaskState::Running {
                        TaskState::Running
                    } else {
                        TaskState::Shutdown
                    };
                    by_node
                        .entry(t.node_id.clone())
                        .or_default()
                        .push(report(&t.id, state, 0));
                }
            }
            for (node_id, reports) in by_node {
                self.apply(Command::ReportTasks {
                    node_id,
                    reports,
                    now_ms: self.now_ms,
                });
            }
        }

        fn report(&mut self, node: &str, task: &str, state: TaskState, exit_code: i32) {
            self.apply(Command::ReportTasks {
                node_id: node.into(),
                reports: vec![report(task, state, exit_code)],
                now_ms: self.now_ms,
            });
        }

        fn active(&self, service: &str) -> Vec<&Task> {
            self.st
                .tasks
                .values()
                .filter(|t| t.service_id == service && t.is_active())
                .map(|t| t.as_ref())
                .collect()
        }

        /// Active tasks per node, in node order.
        fn spread(&self, service: &str) -> BTreeMap<String, usize> {
            let mut m = BTreeMap::new();
            for t in self.active(service) {
                *m.entry(t.node_id.clone()).or_default() += 1;
            }
            m
        }

        fn slots(&self, service: &str) -> Vec<u32> {
            let mut s: Vec<u32> = self.active(service).iter().map(|t| t.slot).collect();
            s.sort();
            s
        }
    }

    fn report(task: &str, state: TaskState, exit_code: i32) -> TaskReport {
        TaskReport {
            task_id: task.into(),
            state,
            message: String::new(),
            exit_code,
            container_id: String::new(),
            health: None,
        }
    }

    fn policy(condition: RestartCondition, max_attempts: u32, delay_ms: u64) -> RestartPolicy {
        RestartPolicy {
            condition,
            max_attempts,
            delay_ms,
        }
    }

    fn counts(m: &BTreeMap<String, usize>) -> Vec<usize> {
        m.values().copied().collect()
    }

    #[test]
    fn create_spreads_and_scale_converges() {
        let mut w = World::new(&["a", "b", "c"]);
        w.service("web", 5, RestartPolicy::default());
        w.settle();
        w.run_all();
        assert_eq!(w.slots("web"), vec![1, 2, 3, 4, 5]);
        assert_eq!(counts(&w.spread("web")), vec![2, 2, 1]);
        assert!(w.round().is_empty(), "a converged service needs no change");

        w.apply(Command::ScaleService {
            service: "web".into(),
            replicas: 2,
            expected_version: 0,
            now_ms: w.now_ms,
        });
        let changes = w.round();
        assert_eq!(
            changes
                .iter()
                .filter(|c| matches!(c, TaskChange::Shutdown { .. }))
                .count(),
            3
        );
        assert_eq!(w.slots("web"), vec![1, 2]);
        w.run_all();
        w.settle();

        w.apply(Command::ScaleService {
            service: "web".into(),
            replicas: 6,
            expected_version: 0,
            now_ms: w.now_ms,
        });
        w.settle();
        assert_eq!(w.slots("web"), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(counts(&w.spread("web")), vec![2, 2, 2]);
        let ids: std::collections::BTreeSet<&String> = w.st.tasks.keys().collect();
        assert_eq!(ids.len(), w.st.tasks.len());
    }

    #[test]
    fn restart_policy() {
        // (condition, max attempts, exit code, failures in a row, tasks the slot ends with active)
        let cases = [
            (RestartCondition::Any, 0, 0, 3, 1),
            (RestartCondition::Any, 0, 1, 3, 1),
            (RestartCondition::OnFailure, 0, 1, 2, 1),
            (RestartCondition::OnFailure, 0, 0, 1, 0),
            (RestartCondition::None, 0, 1, 1, 0),
            (RestartCondition::Any, 2, 1, 3, 0),
            (RestartCondition::Any, 3, 1, 3, 1),
        ];
        for (condition, max, exit_code, failures, want_active) in cases {
            let mut w = World::new(&["a"]);
            w.service("job", 1, policy(condition, max, 0));
            w.settle();
            for _ in 0..failures {
                let Some(t) = w.active("job").first().map(|t| t.id.clone()) else {
                    break;
                };
                let state = if exit_code == 0 {
                    TaskState::Complete
                } else {
                    TaskState::Failed
                };
                w.report("a", &t, state, exit_code);
                w.settle();
            }
            let case = format!("{condition:?} max {max} exit {exit_code} x{failures}");
            assert_eq!(w.active("job").len(), want_active, "{case}");
            if let Some(t) = w.active("job").first() {
                assert_eq!(t.attempt, failures, "{case}");
                assert_eq!(t.slot, 1, "{case}");
            }
        }
    }

    #[test]
    fn restart_delay() {
        let mut w = World::new(&["a"]);
        w.service("job", 1, policy(RestartCondition::Any, 0, 5_000));
        w.settle();
        let t = w.active("job")[0].id.clone();
        w.report("a", &t, TaskState::Failed, 2);
        w.now_ms += 4_999;
        assert!(w.round().is_empty(), "restarted before the delay");
        w.now_ms += 1;
        assert!(matches!(w.round().as_slice(), [TaskChange::Create(t)] if t.attempt == 1));
    }

    #[test]
    fn silent_node_is_replaced_unknown_node_is_not() {
        let mut w = World::new(&["a", "b", "c"]);
        w.service("web", 3, RestartPolicy::default());
        w.settle();
        w.run_all();
        let before: Vec<String> = w.active("web").iter().map(|t| t.id.clone()).collect();

        // A new leader: nobody heard from yet. Nothing moves.
        let fresh: BTreeMap<String, Liveness> = w
            .liveness
            .keys()
            .map(|k| (k.clone(), Liveness::Unknown))
            .collect();
        w.liveness = fresh;
        assert!(w.round().is_empty(), "a leader change alone changed tasks");
        let after: Vec<String> = w.active("web").iter().map(|t| t.id.clone()).collect();
        assert_eq!(before, after);

        // b goes silent past the grace period: down, its task orphaned and replaced.
        w.liveness.insert("a".into(), Liveness::Alive);
        w.liveness.insert("b".into(), Liveness::Silent);
        w.liveness.insert("c".into(), Liveness::Alive);
        w.settle();
        assert_eq!(w.st.nodes["b"].status, NodeStatus::Down);
        assert_eq!(w.slots("web"), vec![1, 2, 3]);
        assert!(w.active("web").iter().all(|t| t.node_id != "b"));
        let orphan = w.st.tasks.values().find(|t| t.node_id == "b").unwrap().clone();
        assert_eq!(orphan.state, TaskState::Orphaned);
        w.run_all();

        // b comes back still running its task: the slot ran twice; one copy is stopped.
        w.liveness.insert("b".into(), Liveness::Alive);
        w.round();
        assert_eq!(w.st.nodes["b"].status, NodeStatus::Ready);
        w.report("b", &orphan.id, TaskState::Running, 0);
        w.settle();
        assert_eq!(w.slots("web"), vec![1, 2, 3]);
        assert_eq!(
            w.st.tasks[&orphan.id].desired_state,
            TaskState::Shutdown,
            "keep-replacement stops the original"
        );
    }

    /// Each row: nodes, how many fall silent at once, whether their tasks move. The silent
    /// nodes are shown down in every row.
    #[test]
    fn a_mass_silence_holds_tasks_in_their_slots() {
        for (nodes, silent, moved) in [
            (10, 5, true),  // half: not more than half
            (10, 6, false), // more than half of 10
            (12, 7, false),
            (3, 2, true), // a small cluster moves tasks as Swarm does
            (9, 8, true),
        ] {
            let names: Vec<String> = (0..nodes).map(|i| format!("n{i:02}")).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let mut w = World::new(&refs);
            w.service("web", nodes as i64, RestartPolicy::default());
            w.settle();
            w.run_all();
            let before: BTreeSet<String> = w.active("web").iter().map(|t| t.id.clone()).collect();
            for (i, n) in names.iter().enumerate() {
                let l = if i < silent {
                    Liveness::Silent
                } else {
                    Liveness::Alive
                };
                w.liveness.insert(n.clone(), l);
            }
            assert_eq!(
                held_by_mass_silence(&w.st, &w.liveness).is_some(),
                !moved,
                "{nodes} nodes, {silent} silent"
            );
            w.settle();
            for n in &names[..silent] {
                assert_eq!(w.st.nodes[n].status, NodeStatus::Down, "{nodes}/{silent}: {n}");
            }
            let after: BTreeSet<String> = w.active("web").iter().map(|t| t.id.clone()).collect();
            let orphans =
                w.st.tasks
                    .values()
                    .filter(|t| t.state == TaskState::Orphaned)
                    .count();
            if moved {
                assert!(orphans > 0, "{nodes}/{silent}: nothing moved");
                assert!(w
                    .active("web")
                    .iter()
                    .all(|t| !names[..silent].contains(&t.node_id)));
            } else {
                assert_eq!(orphans, 0, "{nodes}/{silent}");
                assert_eq!(before, after, "{nodes}/{silent}: tasks moved in a mass silence");
            }
            assert_eq!(w.slots("web").len(), nodes, "{nodes}/{silent}");

            // Heard from again: ready, and nothing was restarted.
            if !moved {
                for n in &names {
                    w.liveness.insert(n.clone(), Liveness::Alive);
                }
                w.settle();
                assert!(names.iter().all(|n| w.st.nodes[n].status == NodeStatus::Ready));
                let back: BTreeSet<String> = w.active("web").iter().map(|t| t.id.clone()).collect();
                assert_eq!(before, back);
            }
        }
    }

    /// Nodes down for long (gone) do not count: with five dead nodes never removed, two more
    /// failures in a cluster of 12 still move their tasks.
    #[test]
    fn long_gone_nodes_do_not_hold_the_tasks_of_new_failures() {
        let names: Vec<String> = (0..12).map(|i| format!("n{i:02}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut w = World::new(&refs);
        w.service("web", 12, RestartPolicy::default());
        w.settle();
        w.run_all();
        let set = |w: &mut World, range: std::ops::Range<usize>, l: Liveness| {
            for n in &names[range] {
                w.liveness.insert(n.clone(), l);
            }
        };
        set(&mut w, 0..12, Liveness::Alive);
        set(&mut w, 0..5, Liveness::Silent);
        w.settle();
        w.run_all();
        set(&mut w, 0..5, Liveness::Gone);
        set(&mut w, 5..7, Liveness::Silent);
        assert_eq!(held_by_mass_silence(&w.st, &w.liveness), None);
        w.settle();
        assert!(w.active("web").iter().all(|t| !names[..7].contains(&t.node_id)));
        assert_eq!(w.slots("web").len(), 12);
        // Gone nodes are down, not ready.
        assert!(names[..7]
            .iter()
            .all(|n| w.st.nodes[n].status == NodeStatus::Down));

        // A down node this leader has no news of yet (a leader change) does not count either.
        let mut fresh = BTreeMap::new();
        for n in &names[7..] {
            fresh.insert(n.clone(), Liveness::Silent);
        }
        // 5 silent of the 5 counted (the 7 down ones unknown): more than half, but a
        // cluster's count of 5 is under MASS_SILENCE_MIN_NODES.
        assert_eq!(held_by_mass_silence(&w.st, &fresh), None);
    }

    #[test]
    fn duplicate_policy_keep_original() {
        let mut w = World::new(&["a", "b"]);
        w.duplicates = DuplicatePolicy::KeepOriginal;
        w.service("web", 1, RestartPolicy::default());
        w.settle();
        w.run_all();
        let original = w.active("web")[0].clone();
        let other = if original.node_id == "a" { "b" } else { "a" };
        w.liveness.insert(original.node_id.clone(), Liveness::Silent);
        w.settle();
        w.run_all();
        let replacement = w.active("web")[0].clone();
        assert_eq!(replacement.node_id, other);
        w.liveness.insert(original.node_id.clone(), Liveness::Alive);
        w.round();
        w.report(&original.node_id, &original.id, TaskState::Running, 0);
        w.settle();
        let active: Vec<String> = w.active("web").iter().map(|t| t.id.clone()).collect();
        assert_eq!(active, vec![original.id.clone()]);
        assert_eq!(w.st.tasks[&replacement.id].desired_state, TaskState::Shutdown);
    }

    #[test]
    fn drain_moves_tasks_and_pause_keeps_them() {
        let mut w = World::new(&["a", "b"]);
        w.service("web", 4, RestartPolicy::default());
        w.settle();
        w.run_all();
        w.apply(Command::UpdateNode {
            id: "b".into(),
            availability: Some(Availability::Pause),
            labels: None,
            expected_version: 0,
        });
        assert!(w.round().is_empty(), "pause moved tasks");
        w.apply(Command::UpdateNode {
            id: "b".into(),
            availability: Some(Availability::Drain),
            labels: None,
            expected_version: 0,
        });
        w.settle();
        assert_eq!(w.slots("web"), vec![1, 2, 3, 4]);
        assert_eq!(counts(&w.spread("web")), vec![4]);
        assert!(w.active("web").iter().all(|t| t.node_id == "a"));
        // The drained tasks were replaced without counting as restart attempts.
        assert!(w.active("web").iter().all(|t| t.attempt == 0));
    }

    #[test]
    fn pending_says_why_and_is_placed_when_a_node_joins() {
        let mut w = World::new(&[]);
        w.service("web", 2, RestartPolicy::default());
        w.settle();
        let pending: Vec<&Task> =
            w.st.tasks
                .values()
                .filter(|t| t.state == TaskState::Pending)
                .map(|t| t.as_ref())
                .collect();
        assert_eq!(pending.len(), 2);
        assert!(
            pending[0].message.contains("no worker nodes"),
            "{}",
            pending[0].message
        );
        w.apply(Command::RegisterNode {
            id: "late".into(),
            role: Role::Worker,
            address: String::new(),
            labels: BTreeMap::new(),
            capacity: Resources {
                cpu_millis: 1000,
                memory_bytes: 1 << 30,
            },
            now_ms: 0,
        });
        w.settle();
        assert!(w
            .st
            .tasks
            .values()
            .all(|t| t.state == TaskState::Assigned && t.node_id == "late"));
        assert_eq!(w.st.tasks.len(), 2, "pending tasks were placed, not duplicated");
    }

    #[test]
    fn removed_node_tasks_are_shut_down_and_replaced() {
        let mut w = World::new(&["a", "b"]);
        w.service("web", 2, RestartPolicy::default());
        w.settle();
        w.run_all();
        let on_b: Vec<String> = w
            .active("web")
            .iter()
            .filter(|t| t.node_id == "b")
            .map(|t| t.id.clone())
            .collect();
        assert_eq!(on_b.len(), 1);
        w.apply(Command::RemoveNode {
            id: "b".into(),
            force: true,
        });
        w.settle();
        assert_eq!(w.st.tasks[&on_b[0]].state, TaskState::Shutdown);
        assert_eq!(w.slots("web"), vec![1, 2]);
        assert!(w.active("web").iter().all(|t| t.node_id == "a"));
    }

    #[test]
    fn liveness_gives_a_fresh_grace_period_to_every_new_leader() {
        // (heard ago, leading for) -> liveness, grace 5,000 ms
        let cases = [
            ((Some(0), 0), Liveness::Alive),
            ((Some(5_000), 60_000), Liveness::Alive),
            ((Some(5_001), 60_000), Liveness::Silent),
            ((None, 0), Liveness::Unknown),
            ((None, 5_000), Liveness::Unknown),
            // not heard from by this leader yet: waited for three grace periods
            ((None, 15_000), Liveness::Unknown),
            ((None, 15_001), Liveness::Silent),
            ((Some(6_000), 4_000), Liveness::Unknown),
            // silent 12 grace periods: gone (out of the mass-silence count)
            ((Some(60_000), 120_000), Liveness::Silent),
            ((Some(60_001), 120_000), Liveness::Gone),
            ((None, 60_001), Liveness::Gone),
        ];
        for ((heard, leading), want) in cases {
            assert_eq!(liveness(heard, leading, 5_000, 0), want, "{heard:?} {leading}");
        }
        // A restored cluster's rejoin window: a node not heard from yet is waited for; one
        // heard and then silent past its grace is down all the same.
        let cases = [
            ((None, 60_000, 1), Liveness::Unknown),
            ((None, 60_000, 0), Liveness::Silent),
            ((Some(5_001), 60_000, 30_000), Liveness::Silent),
            ((Some(100), 60_000, 30_000), Liveness::Alive),
        ];
        for ((heard, leading, left), want) in cases {
            assert_eq!(
                liveness(heard, leading, 5_000, left),
                want,
                "{heard:?} {leading} {left}"
            );
        }
    }

    #[test]
    fn unchanged_reports_are_dropped() {
        let mut w = World::new(&["a", "b"]);
        w.service("web", 1, RestartPolicy::default());
        w.settle();
        let t = w.active("web")[0].clone();
        w.report(&t.node_id, &t.id, TaskState::Running, 0);
        let other = if t.node_id == "a" { "b" } else { "a" };
        let kept = w.st.changed_reports(
            &t.node_id,
            vec![
                report(&t.id, TaskState::Running, 0),
                report(&t.id, TaskState::Failed, 1),
                report("nope", TaskState::Running, 0),
            ],
        );
        assert_eq!(kept, vec![report(&t.id, TaskState::Failed, 1)]);
        assert!(w
            .st
            .changed_reports(other, vec![report(&t.id, TaskState::Failed, 1)])
            .is_empty());
    }

    #[test]
    fn history_is_bounded() {
        let mut w = World::new(&["a"]);
        w.service("job", 1, policy(RestartCondition::Any, 0, 0));
        w.settle();
        for _ in 0..12 {
            let t = w.active("job")[0].id.clone();
            w.report("a", &t, TaskState::Failed, 1);
            w.settle();
        }
        assert_eq!(w.st.tasks.len(), HISTORY_PER_SLOT + 1);
    }

    #[test]
    fn stale_changes_are_skipped() {
        let mut w = World::new(&["a"]);
        w.service("web", 1, RestartPolicy::default());
        w.settle();
        let t = w.active("web")[0].id.clone();
        w.report("a", &t, TaskState::Running, 0);
        // A round computed earlier orchestrates a task that has since changed or is gone.
        w.index += 1;
        let out =
            w.st.apply(
                w.index,
                Command::Orchestrate {
                    changes: vec![
                        TaskChange::Assign {
                            task_id: t.clone(),
                            node_id: "a".into(),
                        },
                        TaskChange::Remove { task_id: t.clone() },
                        TaskChange::Orphan {
                            task_id: "nope".into(),
                        },
                    ],
                    now_ms: 0,
                },
            )
            .unwrap();
        assert_eq!(
            out,
            crate::core::state::Outcome::TasksChanged {
                applied: 0,
                skipped: 3
            }
        );
        assert_eq!(w.st.tasks[&t].state, TaskState::Running);
        // A worker cannot report on another node's task, nor revive a finished one.
        w.report("a", &t, TaskState::Failed, 3);
        w.report("a", &t, TaskState::Running, 0);
        assert_eq!(w.st.tasks[&t].state, TaskState::Failed);
    }

    // ---------------------------------------------------------------- rolling updates

    impl World {
        /// What healthy workers do with their tasks, except that tasks of `bad` spec
        /// versions fail: a pull (`bad_pull`) or a start.
        fn work(&mut self, bad: &[u64], bad_pull: bool) {
            let mut by_node: BTreeMap<String, Vec<TaskReport>> = BTreeMap::new();
            for t in self.st.tasks.values() {
                if t.node_id.is_empty() || t.state.is_terminal() || t.state == TaskState::Orphaned {
                    continue;
                }
                let failing = bad.contains(&t.spec_version);
                let next = match (t.desired_state, t.state) {
                    (TaskState::Shutdown, _) => Some(TaskState::Shutdown),
                    (TaskState::Ready, TaskState::Assigned) if failing && bad_pull => {
                        Some(TaskState::Rejected)
                    }
                    (TaskState::Ready, TaskState::Assigned) => Some(TaskState::Ready),
                    (TaskState::Running, TaskState::Assigned | TaskState::Ready) if failing && bad_pull => {
                        Some(TaskState::Rejected)
                    }
                    (TaskState::Running, TaskState::Assigned | TaskState::Ready) if failing => {
                        Some(TaskState::Failed)
                    }
                    (TaskState::Running, TaskState::Assigned | TaskState::Ready) => Some(TaskState::Running),
                    _ => None,
                };
                if let Some(state) = next {
                    let code = if state == TaskState::Failed { 1 } else { 0 };
                    by_node
                        .entry(t.node_id.clone())
                        .or_default()
                        .push(report(&t.id, state, code));
                }
            }
            for (node_id, reports) in by_node {
                self.apply(Command::ReportTasks {
                    node_id,
                    reports,
                    now_ms: self.now_ms,
                });
            }
        }

        fn update(&mut self, name: &str, f: impl FnOnce(&mut ServiceSpec)) {
            let mut spec = self.st.service(name).unwrap().spec.clone();
            f(&mut spec);
            self.apply(Command::UpdateService {
                service: name.into(),
                spec,
                expected_version: 0,
                force: false,
                now_ms: self.now_ms,
            });
        }

        fn status(&self, name: &str) -> UpdateStatus {
            *self.st.service(name).unwrap().update.clone().unwrap()
        }

        /// Slots of `name` with no task running (any version).
        fn down(&self, name: &str) -> usize {
            let s = self.st.service(name).unwrap();
            (1..=s.spec.replicas as u32)
                .filter(|slot| {
                    !self
                        .st
                        .tasks
                        .values()
                        .any(|t| t.service_id == s.id && t.slot == *slot && t.state == TaskState::Running)
                })
                .count()
        }

        fn running_versions(&self, name: &str) -> Vec<u64> {
            let s = self.st.service(name).unwrap();
            let mut v: Vec<u64> = self
                .active(&s.id)
                .iter()
                .filter(|t| t.state == TaskState::Running)
                .map(|t| t.spec_version)
                .collect();
            v.sort();
            v
        }

        /// Rounds and worker steps, 500 ms apart, until the update is no longer in
        /// progress; `each` checks an invariant after every step. Returns the rounds taken.
        fn drive(&mut self, name: &str, bad: &[u64], bad_pull: bool, each: &mut dyn FnMut(&World)) -> usize {
            for i in 0..400 {
                self.round();
                each(self);
                self.work(bad, bad_pull);
                each(self);
                if !self.status(name).state.in_progress() {
                    return i;
                }
                self.now_ms += 500;
            }
            panic!("update never ended: {:?}", self.status(name));
        }
    }

    fn image_v2(s: &mut ServiceSpec) {
        s.image = "busybox:2".into();
        s.update_config.monitor_ms = 1_000;
        s.rollback_config.monitor_ms = 1_000;
    }

    /// A running service of `replicas` at version 1 on three workers.
    fn deployed(replicas: i64) -> World {
        let mut w = World::new(&["a", "b", "c"]);
        w.service("web", replicas, RestartPolicy::default());
        w.settle();
        w.work(&[], false);
        w.settle();
        assert_eq!(w.running_versions("web"), vec![1; replicas as usize]);
        w
    }

    /// Tasks per slot created by the update to version `v` (each slot exactly once).
    fn creates_per_slot(w: &World, v: u64) -> BTreeMap<u32, usize> {
        let mut m = BTreeMap::new();
        for t in w.st.tasks.values().filter(|t| t.spec_version == v) {
            *m.entry(t.slot).or_default() += 1;
        }
        m
    }

    #[test]
    fn rolling_update_never_takes_more_than_parallelism_down() {
        // (replicas, parallelism, order)
        for (replicas, parallelism, order) in [
            (4, 1, UpdateOrder::StopFirst),
            (5, 2, UpdateOrder::StopFirst),
            (4, 1, UpdateOrder::StartFirst),
            (3, 0, UpdateOrder::StartFirst),
        ] {
            let mut w = deployed(replicas);
            w.update("web", |s| {
                image_v2(s);
                s.update_config.parallelism = parallelism;
                s.update_config.order = order;
            });
            let cap = if parallelism == 0 {
                replicas as usize
            } else {
                parallelism as usize
            };
            w.drive("web", &[], false, &mut |w| {
                let down = w.down("web");
                match order {
                    UpdateOrder::StopFirst => {
                        assert!(down <= cap, "{down} slots down, parallelism {parallelism}")
                    }
                    UpdateOrder::StartFirst => {
                        assert_eq!(down, 0, "start-first left a slot without a running task")
                    }
                }
            });
            let u = w.status("web");
            assert_eq!(u.state, UpdateState::Completed, "{u:?}");
            assert_eq!(u.done.len(), replicas as usize);
            assert_eq!(w.running_versions("web"), vec![2; replicas as usize]);
            assert!(
                creates_per_slot(&w, 2).values().all(|n| *n == 1),
                "a slot was updated twice"
            );
            assert!(w.round().is_empty(), "a completed update keeps changing things");
        }
    }

    #[test]
    fn stop_first_stops_the_old_task_only_once_the_new_one_is_pulled() {
        let mut w = deployed(2);
        w.update("web", image_v2);
        w.round();
        let new: Vec<Task> =
            w.st.tasks
                .values()
                .filter(|t| t.spec_version == 2)
                .map(|t| t.as_ref().clone())
                .collect();
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].desired_state, TaskState::Ready);
        // Not pulled yet: the old task keeps running.
        w.now_ms += 500;
        w.round();
        assert_eq!(w.down("web"), 0);
        // A failed pull: the old task still runs, the update pauses on the slot.
        w.work(&[2], true);
        w.drive("web", &[2], true, &mut |_| {});
        let u = w.status("web");
        assert_eq!(u.state, UpdateState::Paused, "{u:?}");
        assert!(u.message.contains("rejected"), "{}", u.message);
        assert_eq!(w.running_versions("web"), vec![1, 1]);
    }

    #[test]
    fn failure_actions() {
        // (action, failures tolerated per mille, want state, want running versions)
        let cases = [
            (FailureAction::Pause, 0, UpdateState::Paused),
            (FailureAction::Rollback, 0, UpdateState::RollbackCompleted),
            (FailureAction::Continue, 0, UpdateState::Completed),
            (FailureAction::Pause, 1_000, UpdateState::Completed),
        ];
        for (action, permille, want) in cases {
            let mut w = deployed(3);
            w.service("other", 0, RestartPolicy::default());
            w.update("web", |s| {
                image_v2(s);
                s.update_config.failure_action = action;
                s.update_config.max_failure_permille = permille;
                s.restart_policy.condition = RestartCondition::None;
            });
            w.drive("web", &[2], false, &mut |_| {});
            let u = w.status("web");
            assert_eq!(u.state, want, "{action:?} {permille}: {u:?}");
            match want {
                UpdateState::Paused => {
                    // One slot tried and failed; the other two still run version 1.
                    assert_eq!(u.failed.len(), 1);
                    assert_eq!(w.running_versions("web"), vec![1, 1]);
                    assert!(w.round().is_empty() || w.status("web").state == UpdateState::Paused);
                }
                UpdateState::RollbackCompleted => {
                    assert_eq!(w.st.service("web").unwrap().spec_version, 1);
                    w.settle();
                    w.work(&[2], false);
                    w.settle();
                    assert_eq!(w.running_versions("web"), vec![1, 1, 1]);
                    assert!(u.message.contains("rolled back"), "{}", u.message);
                }
                _ => assert_eq!(u.failed.len(), 3, "{u:?}"),
            }
        }
    }

    #[test]
    fn a_failed_rollback_pauses_and_never_loops() {
        let mut w = deployed(2);
        w.update("web", |s| {
            image_v2(s);
            s.update_config.failure_action = FailureAction::Rollback;
            s.rollback_config.failure_action = FailureAction::Rollback;
            s.restart_policy.condition = RestartCondition::None;
        });
        // Both versions fail now (say the registry lost both images).
        w.drive("web", &[1, 2], false, &mut |_| {});
        let u = w.status("web");
        assert_eq!(u.state, UpdateState::RollbackPaused, "{u:?}");
        let revision = u.revision;
        for _ in 0..5 {
            w.now_ms += 1_000;
            w.round();
        }
        assert_eq!(w.status("web").revision, revision, "a paused rollback moved on");
    }

    #[test]
    fn a_new_leader_continues_the_update_where_it_was() {
        let mut w = deployed(4);
        w.update("web", |s| {
            image_v2(s);
            s.update_config.parallelism = 2;
        });
        for _ in 0..6 {
            w.round();
            w.work(&[], false);
            w.now_ms += 500;
        }
        let before = w.status("web");
        assert!(
            before.state.in_progress() && !before.done.is_empty(),
            "{before:?}"
        );
        // A new leader: it knows only the replicated state and hears from nobody yet.
        for l in w.liveness.values_mut() {
            *l = Liveness::Unknown;
        }
        w.drive("web", &[], false, &mut |w| assert!(w.down("web") <= 2));
        assert_eq!(w.status("web").state, UpdateState::Completed);
        assert!(
            creates_per_slot(&w, 2).values().all(|n| *n == 1),
            "a slot was updated twice"
        );
        assert!(before.done.iter().all(|s| w.status("web").done.contains(s)));
    }

    #[test]
    fn manual_rollback_and_history() {
        let mut w = deployed(2);
        for i in 2..=8 {
            w.update("web", |s| {
                s.image = format!("busybox:{i}");
                s.update_config.monitor_ms = 0;
            });
            w.drive("web", &[], false, &mut |_| {});
        }
        let s = w.st.service("web").unwrap().clone();
        assert_eq!(s.spec_version, 8);
        let kept: Vec<u64> = s.previous.iter().map(|p| p.version).collect();
        assert_eq!(
            kept,
            vec![3, 4, 5, 6, 7],
            "the last {SPEC_HISTORY} earlier versions"
        );
        // Replicas and rollout settings alone make no new version.
        w.update("web", |s| s.replicas = 3);
        assert_eq!(w.st.service("web").unwrap().spec_version, 8);
        // Back to the one before; then to a named one.
        w.apply(Command::RollbackService {
            service: "web".into(),
            to_version: 0,
            now_ms: w.now_ms,
        });
        assert_eq!(w.st.service("web").unwrap().spec_version, 7);
        assert_eq!(
            w.st.service("web").unwrap().spec.replicas,
            3,
            "a rollback is not a scale"
        );
        w.drive("web", &[], false, &mut |_| {});
        assert_eq!(w.status("web").state, UpdateState::RollbackCompleted);
        assert_eq!(w.running_versions("web"), vec![7, 7, 7]);
        w.apply(Command::RollbackService {
            service: "web".into(),
            to_version: 4,
            now_ms: w.now_ms,
        });
        w.drive("web", &[], false, &mut |_| {});
        assert_eq!(w.st.service("web").unwrap().spec.image, "busybox:4");
        assert_eq!(w.running_versions("web"), vec![4, 4, 4]);
        // Refusals change nothing.
        let before = w.st.clone();
        for (to, want) in [(4, "runs version 4 already"), (1, "has no version 1")] {
            w.index += 1;
            let err =
                w.st.apply(
                    w.index,
                    Command::RollbackService {
                        service: "web".into(),
                        to_version: to,
                        now_ms: w.now_ms,
                    },
                )
                .unwrap_err();
            assert!(err.to_string().contains(want), "{err}");
        }
        assert_eq!(w.st, before);
    }

    #[test]
    fn a_task_that_never_comes_up_fails_its_slot_at_the_timeout() {
        let mut w = deployed(1);
        w.update("web", |s| {
            image_v2(s);
            s.update_config.timeout_ms = 3_000;
        });
        // The worker never answers for the new task.
        for _ in 0..10 {
            w.round();
            w.now_ms += 500;
        }
        let u = w.status("web");
        assert_eq!(u.state, UpdateState::Paused, "{u:?}");
        assert!(u.failed[&1].contains("within 3000 ms"), "{u:?}");
        w.work(&[], false);
        assert_eq!(w.running_versions("web"), vec![1]);
    }

    #[test]
    fn stop_first_takes_the_old_tasks_reservation_on_a_full_cluster() {
        // (order, whether the update completes) with every node's CPU reserved to the full
        for (order, completes) in [(UpdateOrder::StopFirst, true), (UpdateOrder::StartFirst, false)] {
            let mut w = World::new(&["a", "b"]);
            w.service("web", 4, RestartPolicy::default());
            w.settle();
            w.work(&[], false);
            w.settle();
            // Version 2 reserves 2 CPUs a task: two fill a 4-CPU node.
            w.update("web", |s| {
                s.resources.reservations.cpu_millis = 2_000;
                s.update_config.monitor_ms = 1_000;
                s.update_config.timeout_ms = 5_000;
                s.update_config.order = order;
            });
            w.drive("web", &[], false, &mut |_| {});
            assert_eq!(w.running_versions("web"), vec![2; 4]);
            // Version 3: no node has 2 CPUs free.
            w.update("web", image_v2);
            w.drive("web", &[], false, &mut |w| {
                let over = w.st.nodes.keys().any(|n| {
                    w.st.tasks
                        .values()
                        .filter(|t| t.node_id == *n && t.state == TaskState::Running)
                        .count()
                        > 2
                });
                assert!(!over, "more running on a node than its CPUs allow");
            });
            let u = w.status("web");
            if completes {
                assert_eq!(u.state, UpdateState::Completed, "{order:?}: {u:?}");
                assert_eq!(w.running_versions("web"), vec![3; 4]);
            } else {
                assert_eq!(u.state, UpdateState::Paused, "{order:?}: {u:?}");
                assert!(
                    u.failed.values().any(|f| f.contains("did not reach running")),
                    "{u:?}"
                );
                assert_eq!(w.running_versions("web"), vec![2; 4]);
            }
        }
    }

    #[test]
    fn a_new_leader_watches_in_flight_slots_for_a_whole_monitor_period() {
        // (a leader change while slot 1's new task runs, the slot once the monitor period
        // has passed on the old leader's clock and a late crash report arrives)
        for (new_leader, want_failed) in [(false, false), (true, true)] {
            let mut w = deployed(2);
            w.update("web", image_v2);
            let since = (0..10)
                .find_map(|_| {
                    w.round();
                    w.work(&[], false);
                    w.now_ms += 100;
                    w.status("web").in_flight.get(&1).and_then(|f| f.running_since_ms)
                })
                .expect("the new task runs");
            let new_task = w.status("web").in_flight[&1].new_task_id.clone();
            // The old leader dies; the next one leads from 1.5 s later, past the monitor period.
            w.now_ms = since + 1_500;
            if new_leader {
                w.leading_since_ms = w.now_ms;
            }
            w.round();
            let u = w.status("web");
            assert_eq!(u.done.contains(&1), !new_leader, "new leader {new_leader}: {u:?}");
            if new_leader {
                assert_eq!(
                    crate::core::update::next_deadline(
                        w.st.service("web").unwrap(),
                        w.now_ms,
                        w.leading_since_ms
                    ),
                    Some(w.leading_since_ms + 1_000)
                );
            }
            // The crash that happened under the old leader is reported now.
            let node = w.st.tasks[&new_task].node_id.clone();
            w.now_ms += 100;
            w.report(&node, &new_task, TaskState::Failed, 1);
            w.round();
            let u = w.status("web");
            assert_eq!(
                u.failed.contains_key(&1),
                want_failed,
                "new leader {new_leader}: {u:?}"
            );
            let want_state = if want_failed {
                UpdateState::Paused
            } else {
                UpdateState::Updating
            };
            assert_eq!(u.state, want_state, "new leader {new_leader}: {u:?}");
        }
    }

    #[test]
    fn update_deadlines_wake_the_orchestrator_when_a_monitor_period_ends() {
        use crate::core::update::next_deadline;
        let mut w = deployed(1);
        let t0 = w.now_ms;
        w.update("web", image_v2);
        w.round();
        // In flight, not running yet: its timeout (default 5 min).
        assert_eq!(
            next_deadline(w.st.service("web").unwrap(), w.now_ms, 0),
            Some(t0 + 300_000)
        );
        // Pulled, the old task stopped, the new one started, seen running.
        let since = (0..10)
            .find_map(|_| {
                w.work(&[], false);
                w.now_ms += 100;
                w.round();
                w.status("web").in_flight.get(&1).and_then(|f| f.running_since_ms)
            })
            .expect("the new task runs");
        assert_eq!(
            next_deadline(w.st.service("web").unwrap(), w.now_ms, 0),
            Some(since + 1_000)
        );
        // Past every deadline: nothing to wake for.
        assert_eq!(next_deadline(w.st.service("web").unwrap(), t0 + 400_000, 0), None);
    }

    /// The leader's deadlines, followed through the service feed, are what a walk of every
    /// service finds, at every step of an update and after it, with other services beside it.
    #[test]
    fn deadlines_followed_through_the_feed_match_a_walk_of_every_service() {
        use crate::core::update::next_deadline;
        let mut w = deployed(3);
        w.service("db", 2, RestartPolicy::default());
        w.settle();
        let mut deadlines = Deadlines::default();
        let mut check = |w: &World| {
            let walked =
                w.st.services
                    .values()
                    .filter_map(|s| next_deadline(s, w.now_ms, w.leading_since_ms))
                    .min();
            assert_eq!(deadlines.soonest(&w.st, w.now_ms, w.leading_since_ms), walked);
            walked
        };
        assert_eq!(check(&w), None);
        w.update("web", image_v2);
        let mut seen = Vec::new();
        w.drive("web", &[], false, &mut |w| seen.push(check(w)));
        assert!(
            seen.iter().any(Option::is_some),
            "the update had deadlines: {seen:?}"
        );
        assert_eq!(check(&w), None, "a finished update has none");
        // A deleted service's update is forgotten.
        w.update("db", image_v2);
        w.round();
        assert!(check(&w).is_some());
        w.apply(Command::DeleteService { service: "db".into() });
        assert_eq!(check(&w), None);
    }

    /// An update of a service scaled to 0 (or a scale to 0 during an update) once made the
    /// round panic (a range from slot 1 to slot 0), which stopped the orchestrator.
    #[test]
    fn an_update_of_a_service_at_zero_replicas_finishes() {
        let mut w = deployed(2);
        w.update("web", image_v2);
        w.apply(Command::ScaleService {
            service: "web".into(),
            replicas: 0,
            expected_version: 0,
            now_ms: w.now_ms,
        });
        w.settle();
        w.run_all();
        w.settle();
        assert!(w.active("web").is_empty());
        w.update("web", |s| s.image = "busybox:3".into());
        w.settle();
        assert!(w.active("web").is_empty());
    }

    /// A round that looks only at what changed since the last (`round_from`, what the leader
    /// runs) answers exactly as a round over everything, over long random runs: services
    /// created, scaled, updated and deleted; tasks reported running, failed, finished; nodes
    /// joining, falling silent, coming back, drained; clocks moving; rounds whose entry is
    /// lost or cut short.
    #[test]
    fn a_round_from_what_changed_is_the_same_as_a_round_over_everything() {
        let mut x: u64 = 0x0c4e57;
        let mut next = move |n: u64| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % n
        };
        // Services looked at by the quick rounds, and by rounds over everything.
        let (mut looked, mut all) = (0usize, 0usize);
        for run in 0..20 {
            let mut w = World::new(&["n1", "n2", "n3", "n4"]);
            let mut memory = Memory::default();
            let mut nodes = 4;
            for step in 0..250 {
                for _ in 0..next(4) {
                    let service = format!("s{}", next(6));
                    let node = format!("n{}", 1 + next(nodes));
                    match next(14) {
                        0 | 1 if w.st.service(&service).is_none() => {
                            let spec = ServiceSpec {
                                name: service.clone(),
                                image: "busybox".into(),
                                replicas: next(5) as i64,
                                restart_policy: policy(
                                    [
                                        RestartCondition::Any,
                                        RestartCondition::OnFailure,
                                        RestartCondition::None,
                                    ][next(3) as usize],
                                    [0, 2][next(2) as usize],
                                    [0, 700, 3_000][next(3) as usize],
                                ),
                                resources: ResourceRequirements {
                                    reservations: Resources {
                                        cpu_millis: [0, 1_500, 2_500, 5_000][next(4) as usize],
                                        memory_bytes: 0,
                                    },
                                    ..Default::default()
                                },
                                ..Default::default()
                            };
                            w.attempt(Command::CreateService {
                                id: service,
                                spec,
                                now_ms: w.now_ms,
                            });
                        }
                        2 if w.st.service(&service).is_some() => {
                            let replicas = next(6) as i64;
                            w.attempt(Command::ScaleService {
                                service,
                                replicas,
                                expected_version: 0,
                                now_ms: w.now_ms,
                            });
                        }
                        3 if w.st.service(&service).is_some() => {
                            let image = format!("busybox:{}", next(3));
                            let order = [UpdateOrder::StopFirst, UpdateOrder::StartFirst][next(2) as usize];
                            w.update(&service, |s| {
                                s.image = image;
                                s.update_config.order = order;
                            });
                        }
                        4 if w.st.service(&service).is_some() && next(3) == 0 => {
                            w.attempt(Command::DeleteService { service });
                        }
                        5..=7 => {
                            // A worker reports one of its tasks.
                            let mine: Vec<String> =
                                w.st.tasks
                                    .values()
                                    .filter(|t| t.node_id == node && !t.state.is_terminal())
                                    .map(|t| t.id.clone())
                                    .collect();
                            if !mine.is_empty() {
                                let task = mine[next(mine.len() as u64) as usize].clone();
                                let state = [
                                    TaskState::Running,
                                    TaskState::Running,
                                    TaskState::Failed,
                                    TaskState::Complete,
                                    TaskState::Shutdown,
                                ][next(5) as usize];
                                w.attempt(Command::ReportTasks {
                                    node_id: node,
                                    reports: vec![report(&task, state, 1)],
                                    now_ms: w.now_ms,
                                });
                            }
                        }
                        8 if next(2) == 0 => {
                            let l = [
                                Liveness::Alive,
                                Liveness::Silent,
                                Liveness::Gone,
                                Liveness::Unknown,
                            ][next(4) as usize];
                            w.liveness.insert(node, l);
                        }
                        9 => {
                            nodes += 1;
                            w.register(&format!("n{nodes}"));
                        }
                        10 if next(4) == 0 => {
                            let availability = [Availability::Drain, Availability::Active][next(2) as usize];
                            w.attempt(Command::UpdateNode {
                                id: node,
                                availability: Some(availability),
                                labels: None,
                                expected_version: 0,
                            });
                        }
                        11 if next(10) == 0 => {
                            w.attempt(Command::RemoveNode {
                                id: node,
                                force: true,
                            });
                        }
                        _ => w.now_ms += [0, 100, 400, 1_500][next(4) as usize],
                    }
                }
                let input_now = w.now_ms;
                let mut a = w.next_id;
                let mut b = w.next_id;
                let input = Input {
                    state: &w.st,
                    now_ms: input_now,
                    leading_since_ms: w.leading_since_ms,
                    liveness: &w.liveness,
                    duplicates: w.duplicates,
                };
                let full = round(&input, &mut || {
                    a += 1;
                    format!("t{a:03}")
                });
                let quick = round_from(&input, &mut memory, &mut || {
                    b += 1;
                    format!("t{b:03}")
                });
                assert_eq!(quick, full, "run {run} step {step}");
                looked += memory.looked().0;
                all += w.st.services.len();
                w.next_id = a;
                // Most rounds commit; some are lost with their leader's entry, some cut short.
                let mut changes = full.0;
                match next(10) {
                    0 => continue,
                    1 => changes.truncate(changes.len() / 2),
                    _ => {}
                }
                w.apply(Command::Orchestrate {
                    changes,
                    now_ms: w.now_ms,
                });
            }
        }
        // The quick rounds did look at less.
        assert!(looked * 10 < all * 6, "looked at {looked} services of {all}");
    }
}
