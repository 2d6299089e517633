//! openraft wiring: the type config, persistent storage on redb, the Raft network over gRPC
//! and, under the simulator, a madsim `AsyncRuntime`.

pub mod codec;
pub mod disk;
pub mod durable;
pub mod network;
#[cfg(madsim)]
pub mod runtime;
pub mod store;
pub mod wal;

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

/// Most replicas an 0xA4 manager accepts: a command asking for more is refused there, so it
/// must not reach one (it would apply differently).
const BASE_FORMAT_MAX_REPLICAS: i64 = 10_000;

/// The format a log entry is stored and sent as: the oldest that reads it, and applies it
/// the same way (`codec`).
pub fn entry_format(e: &openraft::Entry<TypeConfig>) -> u8 {
    match &e.payload {
        openraft::EntryPayload::Normal(c) => command_format(c),
        _ => codec::BASE_FORMAT,
    }
}

/// The oldest format that reads `cmd` and applies it the same way: also what a write
/// forwarded to the leader is sent as (an 0xA4 leader must refuse one it would apply
/// differently from the 0xA5 managers, not propose it).
pub fn command_format(cmd: &Command) -> u8 {
    match cmd {
        Command::Batch(_) => codec::SEALED_FORMAT,
        c if c.replicas_asked().is_some_and(|r| r > BASE_FORMAT_MAX_REPLICAS) => codec::SEALED_FORMAT,
        _ => codec::BASE_FORMAT,
    }
}
pub type RaftMetrics = openraft::RaftMetrics<NodeId, ManagerNode>;
pub type NodeId = u64;

#[cfg(test)]
mod format_tests {
    use super::*;
    use crate::core::ServiceSpec;

    fn entry(cmd: Command) -> openraft::Entry<TypeConfig> {
        openraft::Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), 7),
            payload: openraft::EntryPayload::Normal(cmd),
        }
    }

    #[test]
    fn an_entry_is_written_in_the_oldest_format_that_reads_it_the_same() {
        let scale = |replicas| Command::ScaleService {
            service: "web".into(),
            replicas,
            expected_version: 0,
            now_ms: 0,
        };
        let once = |cmd| Command::Once {
            request_id: "r".into(),
            fingerprint: 0,
            cmd: Box::new(cmd),
        };
        let create = |replicas| Command::CreateService {
            id: "s".into(),
            spec: ServiceSpec {
                name: "web".into(),
                image: "busybox".into(),
                replicas,
                ..Default::default()
            },
            now_ms: 0,
        };
        for (cmd, want) in [
            (scale(10_000), codec::BASE_FORMAT),
            (once(scale(10_001)), codec::SEALED_FORMAT),
            (once(create(3)), codec::BASE_FORMAT),
            (create(50_000), codec::SEALED_FORMAT),
            (Command::Batch(vec![once(scale(1))]), codec::SEALED_FORMAT),
        ] {
            assert_eq!(entry_format(&entry(cmd.clone())), want, "{cmd:?}");
        }
        let blank = openraft::Entry::<TypeConfig> {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), 7),
            payload: openraft::EntryPayload::Blank,
        };
        assert_eq!(entry_format(&blank), codec::BASE_FORMAT);
    }
}
