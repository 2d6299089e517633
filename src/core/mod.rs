//! Pure, synchronous, deterministic core: the model, the commands that change it, and the
//! replicated state machine. No tokio, no tonic, no clock, no randomness: the time of a
//! command and every generated id are arguments, chosen by the proposer before replication,
//! so every manager applies the same log to the same result.

pub mod agent;
pub mod assignments;
pub mod authz;
pub mod batch;
pub mod compaction;
pub mod constraint;
pub mod election;
pub mod handoff;
pub mod hash;
pub mod health;
pub mod limits;
pub mod membership;
pub mod model;
pub mod reconciler;
pub mod renewal;
pub mod restore;
pub mod scheduler;
pub mod state;
pub mod token;
pub mod update;
pub mod validate;

pub use model::*;
pub use state::{ClusterState, Command, Outcome, StateError};
