//! Property: no acknowledged write is lost — after the faults heal, every manager's state
//! reflects every create, scale and delete that a client saw acknowledged (the last
//! acknowledged change of each service wins, and nothing unacknowledged is needed).

use super::history::{Event, Op, Ret};
use std::collections::BTreeMap;

/// What each service must look like given the acknowledged writes: `Some(replicas)` present,
/// `None` absent. Services whose last acknowledged write is followed by an unknown one, or
/// that raced with another client's write, are left out (either outcome is allowed).
pub fn expected(events: &[Event]) -> BTreeMap<String, Option<i64>> {
    let mut by_key: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in events.iter().filter(|e| e.op != Op::Get) {
        by_key.entry(&e.key).or_default().push(e);
    }
    let mut out = BTreeMap::new();
    for (key, mut writes) in by_key {
        writes.sort_by_key(|e| e.invoked);
        // Only keys whose writes never overlapped in time and all have known outcomes.
        let sequential = writes
            .windows(2)
            .all(|w| w[0].returned.is_some_and(|r| r <= w[1].invoked));
        if !sequential || writes.iter().any(|e| e.ret == Ret::Unknown) {
            continue;
        }
        let mut state: Option<i64> = None;
        for e in writes {
            match (&e.op, &e.ret) {
                (Op::Create { replicas }, Ret::Ok) => state = Some(*replicas),
                (Op::Scale { replicas }, Ret::Ok) => state = Some(*replicas),
                (Op::Delete, Ret::Ok) => state = None,
                _ => {}
            }
        }
        out.insert(key.to_string(), state);
    }
    out
}

/// Compares a manager's services (name -> replicas) with `expected`; returns the differences.
pub fn missing(expected: &BTreeMap<String, Option<i64>>, actual: &BTreeMap<String, i64>) -> Vec<String> {
    expected
        .iter()
        .filter(|(k, want)| actual.get(*k).copied() != **want)
        .map(|(k, want)| format!("{k}: want {want:?}, have {:?}", actual.get(k)))
        .collect()
}
