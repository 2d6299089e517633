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
pub mod failstop;
pub mod manager;
#[cfg(feature = "sim")]
pub mod sim_hooks;
pub mod worker;
