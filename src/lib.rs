pub mod core;
pub mod raft;
pub mod retry;
pub mod security;
pub mod proto {
    //! Generated gRPC types.
    pub mod v1 {
        tonic::include_proto!("warren.v1");
    }
    pub mod internal {
        tonic::include_proto!("warren.internal.v1");
    }
}
pub mod bugs;
pub mod cli;
pub mod client;
pub mod clock;
pub mod failstop;
pub mod manager;
#[cfg(feature = "sim")]
pub mod sim_hooks;
pub mod worker;

/// A BUGGIFY point: `buggify!(N)` is true about one time in N under the simulator when the
/// scenario switched BUGGIFY on (`sim_hooks::enable_buggify`), so rare branches (retries,
/// dropped streams, delays) run in every simulation; a constant `false` in production.
#[macro_export]
macro_rules! buggify {
    ($one_in:expr) => {{
        #[cfg(feature = "sim")]
        let fire = $crate::sim_hooks::buggify($one_in);
        #[cfg(not(feature = "sim"))]
        let fire = false;
        fire
    }};
}
