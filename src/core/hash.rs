//! Hashed lookups for the orchestrator's per-task work: FNV-1a, which hashes a short id in a
//! few ns where std's SipHash (keyed at random, to resist collision attacks) took longer
//! than the tree search it replaced. The keys here are node, service and task ids the
//! cluster itself chose or validated, looked up within one round; nothing iterates these
//! maps, so their order never reaches a decision.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

#[derive(Default)]
pub struct Fnv(u64);

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;
pub type FastSet<K> = HashSet<K, BuildHasherDefault<Fnv>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_it_holds() {
        let ids: Vec<String> = (0..1_000).map(|i| format!("sim-{i}")).collect();
        let set: FastSet<&str> = ids.iter().map(String::as_str).collect();
        assert_eq!(set.len(), 1_000);
        assert!(ids.iter().all(|id| set.contains(id.as_str())));
        assert!(!set.contains("sim-1000"));
    }
}
