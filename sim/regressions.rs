//! Seeds that once failed, pinned: each runs its scenario on exactly that seed, every time.
//! (A seed replays its failure only against the code it failed on; pinned here, it keeps
//! exercising the same neighbourhood of schedules after the fix.)

use crate::chaos;
use crate::faults::Profile;

fn on_seed<F: std::future::Future<Output = ()> + 'static>(seed: u64, f: impl FnOnce() -> F) {
    let rt = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
    rt.block_on(f());
    warren::sim_hooks::reset();
}

/// Found a delete whose first attempt committed under a lost answer, retried, and answered
/// NotFound (linearizability checker). Fixed by applying writes once per request id.
#[test]
fn chaos_flaky_seed_1795861830551408062_retried_delete() {
    on_seed(1795861830551408062, || {
        chaos::run(
            Profile::Flaky,
            "regressions::chaos_flaky_seed_1795861830551408062_retried_delete",
        )
    });
}

/// Same bug, LAN profile.
#[test]
fn chaos_lan_seed_1795861978348249968_retried_write() {
    on_seed(1795861978348249968, || {
        chaos::run(
            Profile::Lan,
            "regressions::chaos_lan_seed_1795861978348249968_retried_write",
        )
    });
}

/// Found the harness taking a dead leader, still remembered by the survivors, for the new one.
#[test]
fn token_failover_seed_1795860078542115312_stale_leader_view() {
    on_seed(1795860078542115312, || async {
        crate::scenarios::token_failover().await;
    });
}

/// Found restarts stalled for an hour when the leader's clock was set back an hour (the
/// restart delay compared a finish time stamped before the jump with the time after it).
/// Fixed by counting a finish time in the future as a delay already over.
#[test]
fn clock_jump_seed_12_stalled_restarts() {
    on_seed(12, || async {
        crate::workers::clock_jumps("regressions::clock_jump_seed_12_stalled_restarts").await;
    });
}

/// Found a joining manager whose disk filled up reporting redb's "Previous I/O error" from
/// its identity write instead of the disk error that stopped its Raft core. Fixed by
/// reporting the core's reason whenever the core has stopped.
#[test]
fn machine_faults_seed_1795971849086722276_join_on_a_full_disk() {
    on_seed(1795971849086722276, || {
        chaos::run_mixed(
            Profile::Lan,
            "regressions::machine_faults_seed_1795971849086722276_join_on_a_full_disk",
        )
    });
}
