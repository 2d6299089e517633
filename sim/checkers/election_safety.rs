//! Property: election safety — at most one leader per term, ever.
//!
//! Fed by `warren::sim_hooks::on_leader`, which every manager calls with (node, term) each
//! time it becomes leader, so even a leadership that lasted microseconds is seen.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

#[derive(Clone, Default)]
pub struct ElectionSafety {
    leaders: Rc<RefCell<BTreeMap<u64, Vec<u64>>>>,
}

impl ElectionSafety {
    /// Installs the hook for this simulation.
    pub fn install() -> Self {
        let me = Self::default();
        let leaders = me.leaders.clone();
        warren::sim_hooks::on_leader(move |node, term| {
            let mut l = leaders.borrow_mut();
            let v = l.entry(term).or_default();
            if !v.contains(&node) {
                v.push(node);
            }
        });
        me
    }

    /// Panics naming the term if two nodes led it.
    pub fn check(&self) {
        for (term, nodes) in self.leaders.borrow().iter() {
            assert!(
                nodes.len() <= 1,
                "election safety violated: term {term} had leaders {nodes:?}"
            );
        }
    }

    /// Number of distinct terms with a leader (elections won).
    pub fn elections(&self) -> usize {
        self.leaders.borrow().len()
    }

    /// (term, leader) pairs in term order.
    pub fn leaders(&self) -> Vec<(u64, u64)> {
        self.leaders.borrow().iter().map(|(t, n)| (*t, n[0])).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_leaders_in_one_term_fail_the_check() {
        let ok = ElectionSafety::default();
        ok.leaders.borrow_mut().insert(1, vec![1]);
        ok.leaders.borrow_mut().insert(2, vec![3]);
        ok.check();
        assert_eq!(ok.leaders(), vec![(1, 1), (2, 3)]);
        let bad = ElectionSafety::default();
        bad.leaders.borrow_mut().insert(4, vec![1, 2]);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| bad.check()));
        assert!(r.is_err(), "two leaders in term 4 went unnoticed");
    }
}
