//! Self-tests of the suite: each switches on one classic bug (`warren::sim_hooks::Bug`) and
//! shows the chaos scenario's checkers catch it within a bounded number of seeds. A bug the
//! suite cannot catch would make its test fail.

use crate::chaos;
use crate::faults::Profile;
use std::panic::{catch_unwind, AssertUnwindSafe};
use warren::sim_hooks::{self, Bug};

/// Runs the chaos scenario with `bug` on for seeds 1..=max_seeds; returns the first seed on
/// which a checker failed.
fn caught_within(bug: Bug, profile: Profile, max_seeds: u64) -> Option<u64> {
    caught_by(bug, max_seeds, move || async move {
        chaos::run(profile, "selftest").await
    })
}

fn caught_by<F, Fut>(bug: Bug, max_seeds: u64, scenario: F) -> Option<u64>
where
    F: Fn() -> Fut + Copy,
    Fut: std::future::Future<Output = ()> + 'static,
{
    for seed in 1..=max_seeds {
        let rt = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
        let res = catch_unwind(AssertUnwindSafe(|| {
            rt.block_on(async move {
                sim_hooks::reset();
                sim_hooks::enable(bug);
                scenario().await;
            })
        }));
        sim_hooks::reset();
        if res.is_err() {
            eprintln!("{bug:?} caught on seed {seed}");
            return Some(seed);
        }
    }
    None
}

#[test]
fn catches_ack_before_commit() {
    assert!(
        caught_within(Bug::AckBeforeCommit, Profile::Lan, 20).is_some(),
        "AckBeforeCommit escaped 20 seeds"
    );
}

#[test]
fn catches_a_retried_command_applied_twice() {
    assert!(
        caught_within(Bug::ApplyTwice, Profile::Flaky, 20).is_some(),
        "ApplyTwice escaped 20 seeds"
    );
}

#[test]
fn catches_stale_consistent_reads() {
    assert!(
        caught_within(Bug::StaleConsistentRead, Profile::Flaky, 40).is_some(),
        "StaleConsistentRead escaped 40 seeds"
    );
}

#[test]
fn catches_forgetting_the_vote_on_restart() {
    assert!(
        caught_by(Bug::ForgetVoteOnRestart, 20, || async {
            chaos::election_storm("selftest").await
        })
        .is_some(),
        "ForgetVoteOnRestart escaped 20 seeds"
    );
}

#[test]
fn catches_carrying_on_after_a_failed_fsync() {
    assert!(
        caught_by(Bug::IgnoreFsyncError, 40, || async {
            chaos::run_mixed(Profile::Lan, "selftest").await
        })
        .is_some(),
        "IgnoreFsyncError escaped 40 seeds"
    );
}

/// The liveness checker itself fails when no write can succeed: two of three managers dead.
#[test]
fn liveness_fails_without_a_quorum() {
    let rt = madsim::runtime::Runtime::with_seed_and_config(1, madsim::Config::default());
    let res = catch_unwind(AssertUnwindSafe(|| {
        rt.block_on(async {
            let c = crate::cluster::Cluster::start(3, "selftest").await;
            c.kill(1);
            c.kill(2);
            c.on_client(crate::checkers::liveness::check(
                vec![1, 2, 3],
                std::time::Duration::from_secs(5),
            ))
            .await;
        })
    }));
    sim_hooks::reset();
    assert!(res.is_err(), "liveness passed with two of three managers dead");
}
