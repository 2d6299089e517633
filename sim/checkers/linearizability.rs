//! Property: the service registry is linearizable — every client history (creates, scales,
//! deletes and `--consistent` reads of services by name) can be ordered into one sequential
//! history that respects real time (an operation that returned before another was invoked
//! comes first) and the sequential specification below. Operations with an unknown outcome
//! (timeouts, unavailable) may take effect at any point after their invocation, or never.
//!
//! Services are independent keys, so each key's sub-history is checked on its own
//! (linearizability is compositional), with the Wing–Gong search and memoised failures.

use super::history::{Event, Op, Ret};
use std::collections::{BTreeMap, BTreeSet};

/// The sequential specification of one service name: absent, or present with a replica count.
fn step(state: Option<i64>, op: &Op) -> (Option<i64>, Ret) {
    match (op, state) {
        (Op::Create { replicas }, None) => (Some(*replicas), Ret::Ok),
        (Op::Create { .. }, s @ Some(_)) => (s, Ret::AlreadyExists),
        (Op::Scale { replicas }, Some(_)) => (Some(*replicas), Ret::Ok),
        (Op::Scale { .. }, None) => (None, Ret::NotFound),
        (Op::Delete, Some(_)) => (None, Ret::Ok),
        (Op::Delete, None) => (None, Ret::NotFound),
        (Op::Get, Some(r)) => (Some(r), Ret::Found { replicas: r }),
        (Op::Get, None) => (None, Ret::NotFound),
    }
}

/// Most operations per key the search accepts (a bitmask of done operations).
const MAX_OPS_PER_KEY: usize = 64;

struct Search<'a> {
    ops: &'a [Event],
    /// (done set, state) pairs known not to lead to a linearization.
    failed: BTreeSet<(u64, Option<i64>)>,
}

impl Search<'_> {
    fn must_finish(&self, i: usize) -> bool {
        self.ops[i].ret != Ret::Unknown
    }

    fn run(&mut self, done: u64, state: Option<i64>) -> bool {
        let n = self.ops.len();
        if (0..n).all(|i| done & (1 << i) != 0 || !self.must_finish(i)) {
            return true;
        }
        if self.failed.contains(&(done, state)) {
            return false;
        }
        // An operation can go next only if it was invoked before every pending known
        // operation returned.
        let horizon = (0..n)
            .filter(|i| done & (1 << i) == 0 && self.must_finish(*i))
            .filter_map(|i| self.ops[i].returned)
            .min();
        for i in 0..n {
            if done & (1 << i) != 0 || horizon.is_some_and(|h| self.ops[i].invoked > h) {
                continue;
            }
            let (next, ret) = step(state, &self.ops[i].op);
            if (self.ops[i].ret == Ret::Unknown || self.ops[i].ret == ret) && self.run(done | (1 << i), next)
            {
                return true;
            }
        }
        self.failed.insert((done, state));
        false
    }
}

/// Checks every key; returns the keys whose sub-history is not linearizable, with it.
pub fn violations(events: &[Event]) -> BTreeMap<String, Vec<Event>> {
    let mut by_key: BTreeMap<String, Vec<Event>> = BTreeMap::new();
    for e in events {
        by_key.entry(e.key.clone()).or_default().push(e.clone());
    }
    let mut bad = BTreeMap::new();
    for (key, mut ops) in by_key {
        assert!(
            ops.len() <= MAX_OPS_PER_KEY,
            "key {key} has {} operations; the checker takes {MAX_OPS_PER_KEY}",
            ops.len()
        );
        ops.sort_by_key(|e| e.invoked);
        let mut s = Search {
            ops: &ops,
            failed: BTreeSet::new(),
        };
        if !s.run(0, None) {
            bad.insert(key, ops);
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::Instant;

    /// An event at [start, end] ms from a fixed origin; end None = unknown outcome.
    fn ev(origin: Instant, client: usize, op: Op, ret: Ret, start: u64, end: Option<u64>) -> Event {
        Event {
            client,
            key: "k".into(),
            op,
            ret,
            invoked: origin + Duration::from_millis(start),
            returned: end.map(|e| origin + Duration::from_millis(e)),
        }
    }

    #[madsim::test]
    async fn accepts_and_rejects() {
        let o = Instant::now();
        let c = |r| Op::Create { replicas: r };
        let get = |r| Ret::Found { replicas: r };
        // (history, linearizable)
        let cases: Vec<(Vec<Event>, bool)> = vec![
            // sequential create then read
            (
                vec![
                    ev(o, 0, c(1), Ret::Ok, 0, Some(1)),
                    ev(o, 1, Op::Get, get(1), 2, Some(3)),
                ],
                true,
            ),
            // a read after an acknowledged create that misses it: stale read
            (
                vec![
                    ev(o, 0, c(1), Ret::Ok, 0, Some(1)),
                    ev(o, 1, Op::Get, Ret::NotFound, 2, Some(3)),
                ],
                false,
            ),
            // concurrent read may see either
            (
                vec![
                    ev(o, 0, c(1), Ret::Ok, 0, Some(5)),
                    ev(o, 1, Op::Get, Ret::NotFound, 1, Some(2)),
                ],
                true,
            ),
            // two creates both acknowledged: impossible
            (
                vec![
                    ev(o, 0, c(1), Ret::Ok, 0, Some(5)),
                    ev(o, 1, c(2), Ret::Ok, 1, Some(6)),
                ],
                false,
            ),
            // one wins, the other sees AlreadyExists
            (
                vec![
                    ev(o, 0, c(1), Ret::Ok, 0, Some(5)),
                    ev(o, 1, c(2), Ret::AlreadyExists, 1, Some(6)),
                ],
                true,
            ),
            // an unknown create may have happened...
            (
                vec![
                    ev(o, 0, c(1), Ret::Unknown, 0, None),
                    ev(o, 1, Op::Get, get(1), 10, Some(11)),
                ],
                true,
            ),
            // ...or not
            (
                vec![
                    ev(o, 0, c(1), Ret::Unknown, 0, None),
                    ev(o, 1, Op::Get, Ret::NotFound, 10, Some(11)),
                ],
                true,
            ),
            // but not with a value nobody wrote
            (
                vec![
                    ev(o, 0, c(1), Ret::Unknown, 0, None),
                    ev(o, 1, Op::Get, get(7), 10, Some(11)),
                ],
                false,
            ),
            // scale after delete is NotFound; reading the old count after both is stale
            (
                vec![
                    ev(o, 0, c(3), Ret::Ok, 0, Some(1)),
                    ev(o, 0, Op::Delete, Ret::Ok, 2, Some(3)),
                    ev(o, 1, Op::Scale { replicas: 5 }, Ret::NotFound, 4, Some(5)),
                    ev(o, 1, Op::Get, get(3), 6, Some(7)),
                ],
                false,
            ),
        ];
        for (i, (h, ok)) in cases.into_iter().enumerate() {
            assert_eq!(violations(&h).is_empty(), ok, "case {i}: {h:?}");
        }
    }
}
