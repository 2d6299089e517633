//! Election timing decisions, free of I/O so they are tested directly.
//!
//! Warren drives elections with its own timer (`manager::election`) and gives openraft only
//! the leader lease: how long a voter that heard from a live leader refuses other candidates.
//! The lease sits between the heartbeat and the election minimum, so
//! - a voter still receiving heartbeats refuses a candidate that lost contact on its own
//!   (a one-way cut), and
//! - when the leader is really gone, every voter's lease has run out by the time the first
//!   follower's timeout fires, so the first round can win. (openraft's own rule waits the
//!   lease *plus* the timeout, which cost 400 ms per failover at the LAN defaults.)

use thiserror::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElectionTiming {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TimingError {
    #[error("--heartbeat-interval-ms must be at least 1 (got {0})")]
    ZeroHeartbeat(u64),
    #[error(
        "--election-timeout-min-ms ({min}) must be at least twice --heartbeat-interval-ms ({heartbeat}), \
         or one late heartbeat starts an election"
    )]
    MinTooSmall { min: u64, heartbeat: u64 },
    #[error("--election-timeout-max-ms ({max}) must be greater than --election-timeout-min-ms ({min})")]
    MaxNotAboveMin { min: u64, max: u64 },
}

impl ElectionTiming {
    pub fn validate(self) -> Result<Self, TimingError> {
        if self.heartbeat_ms == 0 {
            return Err(TimingError::ZeroHeartbeat(self.heartbeat_ms));
        }
        if self.election_min_ms < 2 * self.heartbeat_ms {
            return Err(TimingError::MinTooSmall {
                min: self.election_min_ms,
                heartbeat: self.heartbeat_ms,
            });
        }
        if self.election_max_ms <= self.election_min_ms {
            return Err(TimingError::MaxNotAboveMin {
                min: self.election_min_ms,
                max: self.election_max_ms,
            });
        }
        Ok(self)
    }

    /// Check-quorum: may a leader go on acting as one? Not once a quorum of voters has not
    /// acknowledged it for an election timeout (`millis_since_quorum_ack`, openraft's; `None`
    /// while no quorum has acknowledged this term yet, then `leader_for_ms` counts). A leader
    /// cut off from the others must stop taking writes (they cannot commit) and say so,
    /// instead of claiming leadership for as long as the partition lasts.
    pub fn leader_has_quorum(
        self,
        voters: usize,
        millis_since_quorum_ack: Option<u64>,
        leader_for_ms: u64,
    ) -> bool {
        if voters <= 1 {
            return true;
        }
        millis_since_quorum_ack.unwrap_or(leader_for_ms) <= self.election_max_ms
    }

    /// Halfway between the heartbeat and the election minimum (see the module comment).
    pub fn leader_lease_ms(self) -> u64 {
        (self.heartbeat_ms + self.election_min_ms) / 2
    }

    /// The range a round's timeout is drawn from, measured from the last contact with a
    /// leader (or the start of this node's previous round), for the voter of rank `rank`
    /// (its position among the voter ids) out of `voters`.
    ///
    /// Each voter draws from its own slice of the range, so two followers never time out
    /// within a vote round trip of each other unless their draws sit at the shared edge of
    /// adjacent slices: split votes become rare, and a split cannot repeat for ever.
    /// A candidate whose round did not win retries from half the minimum: no leader exists
    /// to be disrupted, and the wait only has to outlast the vote round trip.
    pub fn round_range_ms(self, round_failed: bool, rank: usize, voters: usize) -> (u64, u64) {
        let voters = voters.max(1) as u64;
        let rank = (rank as u64).min(voters - 1);
        let slice = ((self.election_max_ms - self.election_min_ms) / voters).max(1);
        let base = if round_failed {
            self.election_min_ms / 2
        } else {
            self.election_min_ms
        };
        let lo = base + rank * slice;
        (lo, lo + slice)
    }

    /// How long a candidate whose vote request a peer refused for having a newer log waits
    /// before campaigning again: long enough for that peer's next two rounds, so its term
    /// overtakes ours and it can win.
    pub fn outlogged_backoff_ms(self) -> u64 {
        2 * self.election_max_ms
    }

    /// One round's timeout from a uniform random draw.
    pub fn round_timeout_ms(self, round_failed: bool, rank: usize, voters: usize, draw: u64) -> u64 {
        let (lo, hi) = self.round_range_ms(round_failed, rank, voters);
        lo + draw % (hi - lo).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_quorum() {
        let t = ElectionTiming {
            heartbeat_ms: 50,
            election_min_ms: 400,
            election_max_ms: 700,
        };
        // (voters, since quorum ack, leader for, keeps leading)
        let cases = [
            (1, None, 10_000, true), // a single voter is its own quorum
            (3, Some(40), 10_000, true),
            (3, Some(700), 10_000, true),
            (3, Some(701), 10_000, false),
            (3, None, 300, true), // a new leader, not yet acknowledged
            (3, None, 5_000, false),
            (5, Some(60_000), 60_000, false),
        ];
        for (voters, ack, since, ok) in cases {
            assert_eq!(
                t.leader_has_quorum(voters, ack, since),
                ok,
                "{voters} {ack:?} {since}"
            );
        }
    }

    fn t(heartbeat_ms: u64, election_min_ms: u64, election_max_ms: u64) -> ElectionTiming {
        ElectionTiming {
            heartbeat_ms,
            election_min_ms,
            election_max_ms,
        }
    }

    #[test]
    fn validation() {
        let cases = [
            (t(50, 200, 400), None),
            (t(300, 600, 900), None),
            (t(0, 200, 400), Some(TimingError::ZeroHeartbeat(0))),
            (
                t(150, 200, 400),
                Some(TimingError::MinTooSmall {
                    min: 200,
                    heartbeat: 150,
                }),
            ),
            (
                t(50, 400, 400),
                Some(TimingError::MaxNotAboveMin { min: 400, max: 400 }),
            ),
            (
                t(50, 400, 300),
                Some(TimingError::MaxNotAboveMin { min: 400, max: 300 }),
            ),
        ];
        for (timing, want) in cases {
            assert_eq!(timing.validate().err(), want, "{timing:?}");
        }
    }

    #[test]
    fn lease_is_between_heartbeat_and_election_minimum() {
        for timing in [t(50, 200, 400), t(300, 600, 900), t(1, 2, 3), t(100, 201, 202)] {
            let lease = timing.validate().unwrap().leader_lease_ms();
            assert!(lease >= timing.heartbeat_ms, "{timing:?}: lease {lease}");
            assert!(lease < timing.election_min_ms, "{timing:?}: lease {lease}");
        }
    }

    #[test]
    fn rounds() {
        let timing = t(50, 200, 500);
        // (round failed, rank, voters) -> range
        let cases = [
            ((false, 0, 1), (200, 500)),
            ((false, 0, 3), (200, 300)),
            ((false, 1, 3), (300, 400)),
            ((false, 2, 3), (400, 500)),
            ((true, 0, 3), (100, 200)),
            ((true, 2, 3), (300, 400)),
            // A rank past the voter count (membership changing) stays inside the range.
            ((false, 7, 3), (400, 500)),
        ];
        for ((failed, rank, voters), want) in cases {
            assert_eq!(
                timing.round_range_ms(failed, rank, voters),
                want,
                "{failed} {rank}/{voters}"
            );
        }
        for draw in [0, 1, 99, 100, 12_345, u64::MAX] {
            for rank in 0..3 {
                let first = timing.round_timeout_ms(false, rank, 3, draw);
                let (lo, hi) = timing.round_range_ms(false, rank, 3);
                assert!((lo..hi).contains(&first), "{draw}: {first}");
                assert!((200..500).contains(&first));
                let retry = timing.round_timeout_ms(true, rank, 3, draw);
                assert!((100..400).contains(&retry), "{draw}: {retry}");
            }
        }
    }
}
