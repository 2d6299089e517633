//! Observation points for the simulation suite's checkers (compiled only with the `sim`
//! feature). madsim runs a whole simulation on one thread, so hooks are thread-local and a
//! simulation never sees another's.

use std::cell::RefCell;

type LeaderHook = Box<dyn Fn(u64, u64)>;

thread_local! {
    static ON_LEADER: RefCell<Option<LeaderHook>> = const { RefCell::new(None) };
}

/// Calls `f(leader_node_id, term)` whenever a manager appends a new leader's first (blank)
/// entry — the leader itself at once, its followers as they receive it.
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
}

pub fn enabled(bug: Bug) -> bool {
    BUGS.with(|b| b.borrow().contains(&bug))
}
