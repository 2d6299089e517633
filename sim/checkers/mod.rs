//! Safety and liveness checkers. Each file states the property it checks.

pub mod acked_writes;
pub mod election_safety;
pub mod history;
pub mod linearizability;
pub mod liveness;
pub mod tasks;
