//! openraft wiring: the type config, persistent storage on redb, the Raft network over gRPC
//! and, under the simulator, a madsim `AsyncRuntime`.

pub mod codec;
pub mod disk;
pub mod network;
#[cfg(madsim)]
pub mod runtime;
pub mod store;

use crate::core::{Command, Outcome, StateError};
use serde::{Deserialize, Serialize};
use std::io::Cursor;

/// What the Raft membership remembers of a manager: where clients and peers reach it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerNode {
    pub api_addr: String,
    pub raft_addr: String,
}

impl crate::core::membership::AddrPair for ManagerNode {
    fn addrs(&self) -> (&str, &str) {
        (&self.api_addr, &self.raft_addr)
    }
}

impl std::fmt::Display for ManagerNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "api={} raft={}", self.api_addr, self.raft_addr)
    }
}

/// The state machine's answer to one log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResult(pub Result<Outcome, StateError>);

#[cfg(not(madsim))]
pub type Runtime = openraft::TokioRuntime;
#[cfg(madsim)]
pub type Runtime = runtime::MadsimRuntime;

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Command,
        R = WriteResult,
        NodeId = u64,
        Node = ManagerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = Runtime,
);

pub type Raft = openraft::Raft<TypeConfig>;

/// The format a log entry is stored and sent as: the oldest that reads it (`codec`).
pub fn entry_format(e: &openraft::Entry<TypeConfig>) -> u8 {
    match e.payload {
        openraft::EntryPayload::Normal(Command::Batch(_)) => codec::SEALED_FORMAT,
        _ => codec::BASE_FORMAT,
    }
}
pub type RaftMetrics = openraft::RaftMetrics<NodeId, ManagerNode>;
pub type NodeId = u64;
