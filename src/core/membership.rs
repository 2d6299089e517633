//! Pure decisions about the manager (Raft voter) set.

use super::state::StateError;
use std::collections::BTreeSet;

/// Votes needed for a quorum of `voters` voters.
pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// Is manager `me` ready (`/readyz`)? A member, knowing a leader with a quorum
/// (`leader`; `quorum_lost` says why a leader it was is not one), that is itself or has
/// answered a ping lately.
pub fn manager_ready(
    member: bool,
    me: u64,
    leader: Option<u64>,
    leader_reachable: bool,
    quorum_lost: Option<String>,
) -> Result<(), String> {
    if !member {
        return Err("not a member of the cluster (joining, or removed)".into());
    }
    match leader {
        None => Err(quorum_lost
            .unwrap_or_else(|| "no leader known (an election is under way, or the quorum is lost)".into())),
        Some(l) if l != me && !leader_reachable => {
            Err(format!("the leader, manager {l}, has not answered a ping lately"))
        }
        Some(_) => Ok(()),
    }
}

/// Why `manager start --force-new-cluster` refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ForceRefused {
    #[error("managers {answering:?} answer, and with this one they make {live} of {voters} voters, a quorum: the cluster is not lost. Use it as it is (`warren manager start` without --force-new-cluster), or, if those managers are about to be wiped, pass --even-if-reachable (they would go on as a cluster of their own). Nothing was changed")]
    QuorumReachable {
        answering: Vec<u64>,
        live: usize,
        voters: usize,
    },
    #[error("manager {me} is not a voter of its cluster (voters {voters:?}), so its state may lag behind what was acknowledged; force a new cluster on a surviving voter, or pass --even-if-reachable to use this one anyway. Nothing was changed")]
    NotAVoter { me: u64, voters: Vec<u64> },
}

/// May manager `me` make itself the only voter, given the voters of its last membership
/// and which of them answer now? Only when the others cannot make a quorum with it (the
/// cluster is lost), or when told to anyway.
pub fn check_force_new_cluster(
    voters: &BTreeSet<u64>,
    reachable: &BTreeSet<u64>,
    me: u64,
    even_if_reachable: bool,
) -> Result<(), ForceRefused> {
    if even_if_reachable {
        return Ok(());
    }
    if !voters.contains(&me) {
        return Err(ForceRefused::NotAVoter {
            me,
            voters: voters.iter().copied().collect(),
        });
    }
    let live = voters
        .iter()
        .filter(|v| **v == me || reachable.contains(v))
        .count();
    if live >= quorum(voters.len()) && voters.len() > 1 {
        return Err(ForceRefused::QuorumReachable {
            answering: voters
                .iter()
                .copied()
                .filter(|v| *v != me && reachable.contains(v))
                .collect(),
            live,
            voters: voters.len(),
        });
    }
    Ok(())
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

/// May manager `id` at `node` join, given the current voters and all members (voters and
/// learners)? Refused: an id that is already a voter (a manager whose data dir was lost must
/// be removed first), an id held by other addresses, an address another member uses.
/// Allowed: a new id, or the same id and addresses still a learner (a retried join).
pub fn check_join<N: PartialEq + AddrPair>(
    voters: &BTreeSet<u64>,
    members: &std::collections::BTreeMap<u64, N>,
    id: u64,
    node: &N,
) -> Result<(), StateError> {
    if voters.contains(&id) {
        return Err(StateError::AlreadyExists {
            kind: "manager id".into(),
            name: format!(
                "{id} (a voter already; a manager that lost its data dir must first be removed with `warren manager remove {id}`, then join with a new id)"
            ),
        });
    }
    if let Some(existing) = members.get(&id) {
        if existing != node {
            let (api, raft) = existing.addrs();
            return Err(StateError::AlreadyExists {
                kind: "manager id".into(),
                name: format!("{id} (in use by {api} / {raft})"),
            });
        }
    }
    let (api, raft) = node.addrs();
    for (other, n) in members {
        let (oapi, oraft) = n.addrs();
        if *other != id && (oraft == raft || oapi == api || oraft == api || oapi == raft) {
            return Err(StateError::AlreadyExists {
                kind: "manager address".into(),
                name: format!("{api} / {raft} (manager {other} uses {oapi} / {oraft})"),
            });
        }
    }
    Ok(())
}

/// A member's API and Raft addresses.
pub trait AddrPair {
    fn addrs(&self) -> (&str, &str);
}

/// May a Raft message from another node reach this manager's Raft? `vote_request`: a
/// candidate asking for a vote (else AppendEntries or InstallSnapshot from a leader);
/// `term`: the sender's; `known`: the sender is a member by our log or by our peers' word;
/// `voter`: a voter by our log. Decided before openraft persists anything of the message.
pub fn admit_raft_message(
    vote_request: bool,
    term: u64,
    current_term: u64,
    uninitialised: bool,
    known: bool,
    voter: bool,
) -> Result<(), String> {
    let bound = current_term.saturating_add(super::limits::MAX_TERM_JUMP);
    if term > bound {
        return Err(format!(
            "term {term} is more than {} ahead of this manager's term {current_term}",
            super::limits::MAX_TERM_JUMP
        ));
    }
    if vote_request {
        // A voter by our log, or a member our peers know of (we may have missed its join).
        if !(voter || (known && !uninitialised)) {
            return Err("the candidate is not a voter of this cluster".into());
        }
    } else if !(known || uninitialised) {
        return Err("the sender is not a member of this cluster".into());
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

    #[derive(PartialEq)]
    struct N(&'static str, &'static str);
    impl AddrPair for N {
        fn addrs(&self) -> (&str, &str) {
            (self.0, self.1)
        }
    }

    #[test]
    fn join_decisions() {
        let members: std::collections::BTreeMap<u64, N> =
            [(1, N("a:1", "a:2")), (2, N("b:1", "b:2")), (3, N("c:1", "c:2"))].into();
        let voters = set(&[1, 2]); // 3 is a learner
                                   // (id, node, allowed)
        let cases = [
            (4, N("d:1", "d:2"), true),
            (3, N("c:1", "c:2"), true),  // retry of 3's join
            (3, N("x:1", "x:2"), false), // 3 held by other addresses
            (2, N("b:1", "b:2"), false), // a voter already (re-join after a lost data dir)
            (4, N("d:1", "a:2"), false), // 1's Raft address
            (4, N("a:1", "d:2"), false), // 1's API address
        ];
        for (id, node, allowed) in cases {
            let r = check_join(&voters, &members, id, &node);
            assert_eq!(r.is_ok(), allowed, "{id} {}/{}: {r:?}", node.0, node.1);
        }
    }

    #[test]
    fn raft_message_admission() {
        // (vote_request, term, current, uninitialised, known, voter, admitted)
        let cases = [
            (false, 5, 4, false, true, true, true),
            (false, 5, 4, false, false, false, false), // node 99, not a member
            (false, 5, 4, true, false, false, true),   // a joiner takes the leader's log
            (false, u64::MAX, 4, false, true, true, false), // absurd term
            (false, u64::MAX, 4, true, false, false, false),
            (true, 5, 4, false, true, true, true),
            (true, 5, 4, false, false, false, false), // vote from a non-member
            (true, 5, 4, false, true, false, true),   // a member the peers report (missed join)
            (true, 5, 4, true, false, false, false),  // a joiner never votes for strangers
            (true, 4 + 1_000_000, 4, false, true, true, true),
            (true, 5 + 1_000_000, 4, false, true, true, false),
        ];
        for (vote, term, current, uninit, known, voter, ok) in cases {
            let r = admit_raft_message(vote, term, current, uninit, known, voter);
            assert_eq!(
                r.is_ok(),
                ok,
                "{vote} {term} {current} {uninit} {known} {voter}: {r:?}"
            );
        }
    }

    #[test]
    fn quorums_and_warnings() {
        assert_eq!([1, 2, 3, 4, 5].map(quorum), [1, 2, 2, 3, 3]);
        assert!(even_voters_warning(4).is_some());
        assert!(even_voters_warning(3).is_none());
    }
    #[test]
    fn force_new_cluster_only_when_the_quorum_is_lost() {
        let set = |v: &[u64]| v.iter().copied().collect::<BTreeSet<u64>>();
        // (voters, reachable others, me, even_if_reachable) -> allowed
        type Case = (&'static [u64], &'static [u64], u64, bool, bool);
        let cases: [Case; 9] = [
            (&[1, 2, 3], &[], 1, false, true),
            (&[1, 2, 3], &[2], 1, false, false),
            (&[1, 2, 3], &[2, 3], 1, false, false),
            (&[1, 2, 3], &[2], 1, true, true),
            (&[1, 2, 3, 4, 5], &[2], 1, false, true),
            (&[1, 2, 3, 4, 5], &[2, 3], 1, false, false),
            // Already alone: nothing to lose by rewriting.
            (&[1], &[], 1, false, true),
            (&[2, 3], &[], 1, false, false),
            (&[2, 3], &[], 1, true, true),
        ];
        for (voters, reachable, me, even, want) in cases {
            let got = check_force_new_cluster(&set(voters), &set(reachable), me, even);
            assert_eq!(got.is_ok(), want, "{voters:?} {reachable:?} {me} {even}: {got:?}");
        }
        let e = check_force_new_cluster(&set(&[1, 2, 3]), &set(&[3]), 1, false).unwrap_err();
        assert!(e.to_string().contains("managers [3] answer"), "{e}");
    }

    #[test]
    fn readiness_of_a_manager() {
        let lost = || Some("it leads without a quorum".to_string());
        // (member, leader, leader reachable, quorum lost) -> ready, or the start of why not
        type Case = (bool, Option<u64>, bool, Option<String>, Result<(), &'static str>);
        let cases: [Case; 6] = [
            (true, Some(1), false, None, Ok(())),
            (true, Some(2), true, None, Ok(())),
            (true, Some(2), false, None, Err("the leader, manager 2")),
            (true, None, false, None, Err("no leader known")),
            (true, None, false, lost(), Err("it leads without a quorum")),
            (false, Some(1), true, None, Err("not a member")),
        ];
        for (member, leader, reachable, quorum, want) in cases {
            let got = manager_ready(member, 1, leader, reachable, quorum);
            match want {
                Ok(()) => assert_eq!(got, Ok(()), "{member} {leader:?} {reachable}"),
                Err(start) => assert!(
                    got.as_ref().is_err_and(|e| e.starts_with(start)),
                    "{member} {leader:?} {reachable}: {got:?}"
                ),
            }
        }
    }
}
