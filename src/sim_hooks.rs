//! Observation points for the simulation suite's checkers (compiled only with the `sim`
//! feature). madsim runs a whole simulation on one thread, so hooks are thread-local and a
//! simulation never sees another's.

use std::cell::RefCell;

type LeaderHook = Box<dyn Fn(u64, u64)>;

thread_local! {
    static ON_LEADER: RefCell<Option<LeaderHook>> = const { RefCell::new(None) };
}

/// Calls `f(leader_node_id, term)` whenever a manager persists a committed vote — the leader
/// on winning its election, its followers as they hear from it.
pub fn on_leader(f: impl Fn(u64, u64) + 'static) {
    ON_LEADER.with(|h| *h.borrow_mut() = Some(Box::new(f)));
}

pub fn clear() {
    ON_LEADER.with(|h| *h.borrow_mut() = None);
}

pub(crate) fn report_leader(node_id: u64, term: u64) {
    ON_LEADER.with(|h| {
        if let Some(f) = h.borrow().as_ref() {
            f(node_id, term)
        }
    });
}

/// Classic consensus bugs that the simulation suite must catch, switched on one at a time by
/// its self-tests. Production builds (no `sim` feature) cannot enable them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bug {
    /// The leader answers a write before it is committed.
    AckBeforeCommit,
    /// A retried request is applied again (no request-id deduplication).
    ApplyTwice,
    /// `--consistent` reads skip the read-index barrier.
    StaleConsistentRead,
    /// The vote is not read back after a restart.
    ForgetVoteOnRestart,
    /// A failed log write (fsync error, full disk) is reported as flushed: the manager
    /// carries on as if the write had happened (the "fsyncgate" mistake).
    IgnoreFsyncError,
}

thread_local! {
    static BUGS: RefCell<std::collections::BTreeSet<Bug>> = const { RefCell::new(std::collections::BTreeSet::new()) };
}

pub fn enable(bug: Bug) {
    BUGS.with(|b| b.borrow_mut().insert(bug));
}

/// Switches every bug off and removes every hook (start of each simulation).
pub fn reset() {
    BUGS.with(|b| b.borrow_mut().clear());
    clear();
    set_disk_latency(None);
    reset_node_faults();
}

/// Clears what is keyed by madsim's node ids (skewed clocks, slow disks) and switches
/// BUGGIFY off: a new simulation numbers its nodes afresh (start of each cluster).
pub fn reset_node_faults() {
    NODE_DISK_LATENCY.with(|d| d.borrow_mut().clear());
    CLOCK_SKEW.with(|c| c.borrow_mut().clear());
    BUGGIFY.with(|b| b.set(false));
}

/// madsim's id of a simulated node.
#[cfg(madsim)]
pub type SimNode = madsim::task::NodeId;
#[cfg(not(madsim))]
pub type SimNode = u64;

/// The simulated node this code runs on.
fn this_node() -> SimNode {
    #[cfg(madsim)]
    return madsim::plugin::node();
    #[cfg(not(madsim))]
    0
}

/// A wall clock off by `offset_ms`, drifting by `drift_ppm` (millionths) from `since`.
#[derive(Clone, Copy, Debug)]
pub struct ClockSkew {
    pub offset_ms: i64,
    pub drift_ppm: i64,
    pub since: tokio::time::Instant,
}

thread_local! {
    static CLOCK_SKEW: RefCell<std::collections::BTreeMap<SimNode, ClockSkew>> =
        const { RefCell::new(std::collections::BTreeMap::new()) };
    static NODE_DISK_LATENCY: RefCell<std::collections::BTreeMap<SimNode, DiskLatency>> =
        const { RefCell::new(std::collections::BTreeMap::new()) };
}

/// Gives simulated node `node` (madsim's id) a skewed wall clock; `None` sets it right.
pub fn set_clock_skew(node: SimNode, skew: Option<ClockSkew>) {
    CLOCK_SKEW.with(|c| match skew {
        Some(s) => c.borrow_mut().insert(node, s),
        None => c.borrow_mut().remove(&node),
    });
}

/// How far this node's wall clock is off now, in ms.
pub(crate) fn clock_skew_ms() -> i64 {
    let node = this_node();
    CLOCK_SKEW.with(|c| {
        c.borrow().get(&node).map_or(0, |s| {
            let elapsed_ms = tokio::time::Instant::now()
                .saturating_duration_since(s.since)
                .as_millis() as i64;
            s.offset_ms + elapsed_ms * s.drift_ppm / 1_000_000
        })
    })
}

/// A slow disk on one simulated node only (madsim's id), over the cluster-wide setting.
pub fn set_node_disk_latency(node: SimNode, l: Option<DiskLatency>) {
    NODE_DISK_LATENCY.with(|d| match l {
        Some(l) => d.borrow_mut().insert(node, l),
        None => d.borrow_mut().remove(&node),
    });
}

pub fn enabled(bug: Bug) -> bool {
    BUGS.with(|b| b.borrow().contains(&bug))
}

/// Simulated fsync latency for the Raft log and vote: each sync takes `base_us` (a range), and
/// one in `spike_one_in` takes `spike_ms` (a range) instead. Off unless a scenario sets it.
#[derive(Clone, Debug)]
pub struct DiskLatency {
    pub base_us: std::ops::Range<u64>,
    pub spike_one_in: u64,
    pub spike_ms: std::ops::Range<u64>,
}

thread_local! {
    static DISK_LATENCY: RefCell<Option<DiskLatency>> = const { RefCell::new(None) };
}

pub fn set_disk_latency(l: Option<DiskLatency>) {
    DISK_LATENCY.with(|d| *d.borrow_mut() = l);
}

fn draw(r: &std::ops::Range<u64>) -> u64 {
    r.start + madsim::rand::random::<u64>() % (r.end - r.start).max(1)
}

/// How long the next fsync should take, drawn from the seeded RNG.
pub(crate) fn fsync_delay() -> Option<std::time::Duration> {
    let node = this_node();
    let own = NODE_DISK_LATENCY.with(|d| d.borrow().get(&node).cloned());
    DISK_LATENCY.with(|d| {
        let d = d.borrow();
        let l = own.as_ref().or(d.as_ref())?;
        let spike = l.spike_one_in > 0 && madsim::rand::random::<u64>().is_multiple_of(l.spike_one_in);
        Some(if spike {
            std::time::Duration::from_millis(draw(&l.spike_ms))
        } else {
            std::time::Duration::from_micros(draw(&l.base_us))
        })
    })
}

thread_local! {
    static BUGGIFY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Switches BUGGIFY points on for this simulation (FoundationDB's idea): each point then
/// takes its rare branch now and then, by the seed.
pub fn enable_buggify() {
    BUGGIFY.with(|b| b.set(true));
}

/// One in `one_in` times (by the seed) when BUGGIFY is on; never otherwise. Called through
/// `warren::buggify!`, which is a constant `false` in production builds.
pub fn buggify(one_in: u64) -> bool {
    BUGGIFY.with(|b| b.get()) && madsim::rand::random::<u64>().is_multiple_of(one_in.max(1))
}
