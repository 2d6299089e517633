//! Where the code asks whether a test-only bug switch is on (see `sim_hooks::Bug`). Without
//! the `sim` feature every answer is a constant `false` and the branches compile away.

#[cfg(feature = "sim")]
pub use crate::sim_hooks::Bug;

#[cfg(feature = "sim")]
pub fn on(bug: Bug) -> bool {
    crate::sim_hooks::enabled(bug)
}

#[cfg(not(feature = "sim"))]
#[derive(Clone, Copy)]
pub enum Bug {
    AckBeforeCommit,
    ApplyTwice,
    StaleConsistentRead,
    ForgetVoteOnRestart,
    IgnoreFsyncError,
}

#[cfg(not(feature = "sim"))]
#[inline(always)]
pub fn on(_bug: Bug) -> bool {
    false
}
