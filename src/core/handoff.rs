//! Leadership handoff before a planned stop (SIGTERM, `manager leave`, `manager remove` of
//! the leader): which voter takes over, and when it may be asked to. Free of I/O; the steps
//! that act on these decisions are in `manager::handoff`.
//!
//! The successor must hold every entry the leader has, or the leader (whose vote it needs)
//! refuses it. So the leader stops taking new proposals, waits until a voter has replicated
//! its last entry, and only then asks that voter to campaign at once, without waiting out an
//! election timeout.

use std::collections::{BTreeMap, BTreeSet};

/// What the leader knows of one other voter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VoterView {
    /// The highest log index replication has confirmed on it; `None` before the first.
    pub matched: Option<u64>,
    /// It answered the leader's last probe.
    pub reachable: bool,
}

/// The voter to hand leadership to: one that answered the last probe before one that did
/// not (the probe runs every 500 ms, so a manager that joined or restarted a moment ago may
/// not have answered one yet, though replication reaches it), then the one with the most
/// of the leader's log, then the lowest id (so the choice is stable while nothing changes).
/// A voter that neither answered a probe nor confirmed any entry is never chosen. `None`
/// when there is nobody to hand to: the stop is a plain one.
pub fn successor(me: u64, voters: &BTreeMap<u64, VoterView>) -> Option<u64> {
    voters
        .iter()
        .filter(|(id, v)| **id != me && (v.reachable || v.matched.is_some()))
        // max_by_key keeps the last of equals: reverse the id to keep the lowest.
        .max_by_key(|(id, v)| (v.reachable, v.matched, std::cmp::Reverse(**id)))
        .map(|(id, _)| *id)
}

/// The successor may be asked to campaign: it has every entry of the leader's log (which no
/// longer grows: new proposals wait while a handoff runs).
pub fn caught_up(successor_matched: Option<u64>, leader_last_index: Option<u64>) -> bool {
    match (successor_matched, leader_last_index) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(m), Some(l)) => m >= l,
    }
}

/// How long the leader must still wait before its own vote can go to the successor:
/// openraft's voters (the leader too) refuse every candidate for a lease after their vote
/// was last confirmed, and a leader's was confirmed when it took over. In a three-manager
/// cluster the leader's vote is the one the successor needs.
pub fn lease_left_ms(leading_for_ms: u64, lease_ms: u64) -> u64 {
    lease_ms.saturating_sub(leading_for_ms)
}

/// Where a manager that handed leadership to `handed_to` (successor, the term it said it
/// leads) sends a held operation: to that successor while this manager has heard of no
/// leader and of no term past the successor's; otherwise nowhere special (`None`), and the
/// operation runs as usual.
pub fn redirect_to(
    handed_to: Option<(u64, u64)>,
    current_leader: Option<u64>,
    current_term: u64,
) -> Option<u64> {
    match handed_to {
        Some((id, term)) if current_leader.is_none() && current_term <= term => Some(id),
        _ => None,
    }
}

/// Whether a campaign request from `from` is one to act on: it comes from the leader this
/// manager follows, in the current term, and this manager is a voter (a learner cannot be
/// elected).
pub fn accept_campaign_request(
    from: u64,
    term: u64,
    current_leader: Option<u64>,
    current_term: u64,
    me: u64,
    voters: &BTreeSet<u64>,
) -> Result<(), CampaignRefused> {
    if !voters.contains(&me) {
        return Err(CampaignRefused::NotVoter);
    }
    if term != current_term || current_leader != Some(from) {
        return Err(CampaignRefused::NotTheLeader {
            from,
            term,
            current_leader,
            current_term,
        });
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CampaignRefused {
    #[error("this manager is not a voter, so it cannot take over leadership")]
    NotVoter,
    #[error(
        "manager {from} asked in term {term}, but this manager follows {} in term {current_term}; only the current leader hands over",
        current_leader.map_or("no leader".to_string(), |l| format!("manager {l}"))
    )]
    NotTheLeader {
        from: u64,
        term: u64,
        current_leader: Option<u64>,
        current_term: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(matched: Option<u64>, reachable: bool) -> VoterView {
        VoterView { matched, reachable }
    }

    #[test]
    fn successor_is_the_most_caught_up_reachable_voter() {
        // (what, the voters as the leader sees them, the successor wanted)
        type Case = (&'static str, Vec<(u64, VoterView)>, Option<u64>);
        let cases: Vec<Case> = vec![
            ("alone", vec![(1, v(Some(9), true))], None),
            (
                "the other voter",
                vec![(1, v(Some(9), true)), (2, v(Some(9), true))],
                Some(2),
            ),
            (
                "most log wins over a lower id",
                vec![
                    (1, v(Some(9), true)),
                    (2, v(Some(7), true)),
                    (3, v(Some(9), true)),
                ],
                Some(3),
            ),
            (
                "lowest id among equals",
                vec![
                    (1, v(Some(9), true)),
                    (3, v(Some(9), true)),
                    (2, v(Some(9), true)),
                ],
                Some(2),
            ),
            (
                "a reachable voter before an unreachable one, however far that one got",
                vec![
                    (1, v(Some(9), true)),
                    (2, v(Some(9), false)),
                    (3, v(Some(4), true)),
                ],
                Some(3),
            ),
            (
                "no probe answer yet, but replication reaches it (a manager that just joined)",
                vec![(1, v(Some(9), true)), (2, v(Some(9), false)), (3, v(None, false))],
                Some(2),
            ),
            (
                "nobody answered and nobody confirmed anything",
                vec![(1, v(Some(9), true)), (2, v(None, false)), (3, v(None, false))],
                None,
            ),
            (
                "one that confirmed nothing yet is still a candidate, but the last",
                vec![(1, v(Some(9), true)), (2, v(None, true)), (3, v(Some(1), true))],
                Some(3),
            ),
        ];
        for (name, voters, want) in cases {
            let voters: BTreeMap<u64, VoterView> = voters.into_iter().collect();
            assert_eq!(successor(1, &voters), want, "{name}");
        }
    }

    #[test]
    fn caught_up_needs_the_leaders_last_entry() {
        let cases = [
            (None, None, true),
            (Some(3), None, true),
            (None, Some(3), false),
            (Some(2), Some(3), false),
            (Some(3), Some(3), true),
            (Some(4), Some(3), true),
        ];
        for (matched, last, want) in cases {
            assert_eq!(caught_up(matched, last), want, "{matched:?} {last:?}");
        }
    }

    #[test]
    fn held_operations_go_to_the_successor_until_a_leader_is_known() {
        assert_eq!(redirect_to(None, None, 5), None);
        assert_eq!(redirect_to(Some((2, 5)), None, 5), Some(2));
        assert_eq!(redirect_to(Some((2, 5)), None, 4), Some(2));
        // The successor's heartbeat arrived: the usual path names it.
        assert_eq!(redirect_to(Some((2, 5)), Some(2), 5), None);
        // A later election: the old hint is stale.
        assert_eq!(redirect_to(Some((2, 5)), None, 6), None);
    }

    #[test]
    fn lease_left() {
        assert_eq!(lease_left_ms(0, 225), 225);
        assert_eq!(lease_left_ms(100, 225), 125);
        assert_eq!(lease_left_ms(225, 225), 0);
        assert_eq!(lease_left_ms(10_000, 225), 0);
    }

    #[test]
    fn only_the_current_leader_may_ask_a_voter_to_campaign() {
        let voters = BTreeSet::from([1, 2, 3]);
        assert_eq!(accept_campaign_request(1, 5, Some(1), 5, 2, &voters), Ok(()));
        assert_eq!(
            accept_campaign_request(1, 5, Some(1), 5, 4, &voters),
            Err(CampaignRefused::NotVoter)
        );
        // A stale request: the leader of an earlier term.
        assert!(matches!(
            accept_campaign_request(1, 4, Some(1), 5, 2, &voters),
            Err(CampaignRefused::NotTheLeader { .. })
        ));
        // Not the leader this manager follows.
        assert!(matches!(
            accept_campaign_request(3, 5, Some(1), 5, 2, &voters),
            Err(CampaignRefused::NotTheLeader { .. })
        ));
        let e = accept_campaign_request(3, 5, None, 5, 2, &voters).unwrap_err();
        assert!(e.to_string().contains("follows no leader in term 5"), "{e}");
    }
}
