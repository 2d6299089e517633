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
    DISK_LATENCY.with(|d| {
        let d = d.borrow();
        let l = d.as_ref()?;
        let spike = l.spike_one_in > 0 && madsim::rand::random::<u64>().is_multiple_of(l.spike_one_in);
        Some(if spike {
            std::time::Duration::from_millis(draw(&l.spike_ms))
        } else {
            std::time::Duration::from_micros(draw(&l.base_us))
        })
    })
}
