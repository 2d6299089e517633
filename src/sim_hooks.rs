//! Observation points for the simulation suite's checkers (compiled only with the `sim`
//! feature). madsim runs a whole simulation on one thread, so hooks are thread-local and a
//! simulation never sees another's.

use std::cell::RefCell;

type LeaderHook = Box<dyn Fn(u64, u64)>;

thread_local! {
    static ON_LEADER: RefCell<Option<LeaderHook>> = const { RefCell::new(None) };
}

/// Calls `f(node_id, term)` every time a manager becomes (or reports being) leader.
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
