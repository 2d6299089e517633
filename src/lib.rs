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

/// Ends a background task when the scope that started it ends.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// This build, as `warren version` and every node report it.
pub mod build {
    pub const VERSION: &str = env!("CARGO_PKG_VERSION");
    pub const COMMIT: &str = env!("WARREN_COMMIT");
    /// A label given at build time (`WARREN_BUILD_ID=...`), if any.
    pub const BUILD_ID: Option<&str> = option_env!("WARREN_BUILD_ID");

    /// `0.1.0 (commit 1a2b3c4d5e6f, state format 0xa4)`: what nodes report to each other.
    /// Under the simulator a constant, so that a seed's run does not depend on the commit.
    #[cfg(madsim)]
    pub fn describe() -> String {
        format!("{VERSION} (simulated)")
    }

    #[cfg(not(madsim))]
    pub fn describe() -> String {
        format!(
            "{VERSION} (commit {COMMIT}{}, state format {:#04x})",
            BUILD_ID.map(|b| format!(", build {b}")).unwrap_or_default(),
            crate::raft::codec::SEALED_FORMAT
        )
    }
}
pub mod cli;
pub mod client;
pub mod clock;
pub mod failstop;
pub mod manager;
pub mod metrics;
pub mod offload;
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
