//! Pure decisions about the manager (Raft voter) set.

use super::state::StateError;
use std::collections::BTreeSet;

/// Votes needed for a quorum of `voters` voters.
pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// May `remove` leave the voter set? Refused (unless `force`) when the voters left, counting
/// only those that answer now, would not make a quorum of the new set, or when it is the
/// last voter (never allowed: the cluster would have no manager).
pub fn check_removal(
    voters: &BTreeSet<u64>,
    reachable: &BTreeSet<u64>,
    remove: u64,
    force: bool,
) -> Result<(), StateError> {
    if !voters.contains(&remove) {
        return Err(StateError::NotFound {
            kind: "manager".into(),
            name: remove.to_string(),
        });
    }
    if voters.len() == 1 {
        return Err(StateError::FailedPrecondition(format!(
            "manager {remove} is the last manager; removing it would leave the cluster without one"
        )));
    }
    let remaining: BTreeSet<u64> = voters.iter().copied().filter(|v| *v != remove).collect();
    let live = remaining.intersection(reachable).count();
    let need = quorum(remaining.len());
    if live < need && !force {
        return Err(StateError::FailedPrecondition(format!(
            "removing manager {remove} would leave {live} reachable of {} managers, below the quorum of {need}; bring managers back first, or pass --force",
            remaining.len()
        )));
    }
    Ok(())
}

/// A warning for an even number of voters (tolerates no more failures than one fewer).
pub fn even_voters_warning(voters: usize) -> Option<String> {
    voters.is_multiple_of(2).then(|| {
        format!(
            "the cluster now has {voters} managers; an even count tolerates no more failures than {} — add or remove one",
            voters - 1
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[u64]) -> BTreeSet<u64> {
        v.iter().copied().collect()
    }

    #[test]
    fn removal_decisions() {
        // (voters, reachable, remove, force, allowed)
        type Case<'a> = (&'a [u64], &'a [u64], u64, bool, bool);
        let cases: &[Case] = &[
            (&[1, 2, 3], &[1, 2, 3], 3, false, true),
            (&[1, 2, 3], &[1, 2], 3, false, true), // removing the dead one is fine
            (&[1, 2, 3], &[1, 3], 3, false, false), // leaves {1,2} with only 1 live
            (&[1, 2, 3], &[1, 3], 3, true, true),  // --force
            (&[1, 2, 3, 4, 5], &[1, 2, 3], 5, false, true),
            (&[1, 2, 3, 4, 5], &[1, 2], 5, false, false),
            (&[1], &[1], 1, false, false),
            (&[1], &[1], 1, true, false), // never the last one
            (&[1, 2, 3], &[1, 2, 3], 9, false, false),
        ];
        for (voters, reachable, remove, force, allowed) in cases {
            let r = check_removal(&set(voters), &set(reachable), *remove, *force);
            assert_eq!(
                r.is_ok(),
                *allowed,
                "{voters:?} {reachable:?} -{remove} force={force}: {r:?}"
            );
        }
        let e = check_removal(&set(&[1, 2, 3]), &set(&[1]), 2, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--force") && e.contains("quorum of 2"), "{e}");
    }

    #[test]
    fn quorums_and_warnings() {
        assert_eq!([1, 2, 3, 4, 5].map(quorum), [1, 2, 2, 3, 3]);
        assert!(even_voters_warning(4).is_some());
        assert!(even_voters_warning(3).is_none());
    }
}
