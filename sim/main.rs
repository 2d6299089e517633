//! Warren's simulation suite: the real manager daemons inside madsim, under faults.
//! Run it with `cargo sim` (see docs/simulation.md); it needs `--cfg madsim`.

#[cfg(not(madsim))]
#[test]
fn simulation_suite_needs_the_madsim_cfg() {
    panic!(
        "the simulation suite runs only under the simulator: run `cargo sim` \
         (cargo test --features sim with --cfg madsim in target/sim, see .cargo/config.toml)"
    );
}

#[cfg(madsim)]
mod chaos;
#[cfg(madsim)]
mod checkers;
#[cfg(madsim)]
mod cluster;
#[cfg(madsim)]
mod faults;
#[cfg(madsim)]
mod hardening;
#[cfg(madsim)]
mod regressions;
#[cfg(madsim)]
mod scenarios;
#[cfg(madsim)]
mod selftest;
#[cfg(madsim)]
mod soak;
#[cfg(madsim)]
mod tuning;
#[cfg(madsim)]
mod tuning_doc;
#[cfg(madsim)]
mod workers;
