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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::Instant;

    fn ev(key: &str, op: Op, ret: Ret, start: u64, end: u64) -> Event {
        let o = Instant::now();
        Event {
            client: 0,
            key: key.into(),
            op,
            ret,
            invoked: o + Duration::from_millis(start),
            returned: Some(o + Duration::from_millis(end)),
        }
    }

    #[madsim::test]
    async fn a_lost_acknowledged_write_is_reported() {
        let events = vec![
            ev("a", Op::Create { replicas: 1 }, Ret::Ok, 0, 1),
            ev("a", Op::Scale { replicas: 3 }, Ret::Ok, 2, 3),
            ev("b", Op::Create { replicas: 2 }, Ret::Ok, 0, 1),
            ev("b", Op::Delete, Ret::Ok, 2, 3),
            // Overlapping writes: either outcome is allowed, so not expected.
            ev("c", Op::Create { replicas: 1 }, Ret::Ok, 0, 5),
            ev("c", Op::Delete, Ret::Ok, 1, 6),
        ];
        let want = expected(&events);
        assert_eq!(want, [("a".to_string(), Some(3)), ("b".to_string(), None)].into());
        let good: BTreeMap<String, i64> = [("a".to_string(), 3), ("c".to_string(), 1)].into();
        assert!(missing(&want, &good).is_empty());
        // The scale was lost; the delete was lost.
        let bad: BTreeMap<String, i64> = [("a".to_string(), 1), ("b".to_string(), 2)].into();
        assert_eq!(missing(&want, &bad).len(), 2);
    }
}
