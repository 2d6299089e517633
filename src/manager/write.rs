//! The write path: propose locally when leader, otherwise forward to the leader over the
//! internal RPC; across an election retry with bounded, jittered backoff until a deadline.

use super::{ApiError, ApiResult, Manager, ManagerRef};
use crate::core::{Command, Outcome};
use crate::proto::internal::raft_service_client::RaftServiceClient;
use crate::raft::network::{connect, decode, encode};
use crate::raft::{ManagerNode, NodeId, WriteResult};
use openraft::error::{ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tracing::debug;

pub const WRITE_DEADLINE_MS: u64 = 5_000;
const BACKOFF_MIN_MS: u64 = 10;
const BACKOFF_MAX_MS: u64 = 200;
const FORWARD_TIMEOUT_MS: u64 = 2_000;

/// The answer to a forwarded write.
#[allow(clippy::large_enum_variant)] // short-lived, never stored
#[derive(Debug, Serialize, Deserialize)]
pub enum ForwardReply {
    Done(WriteResult),
    /// The receiver is not the leader (any more); here is who it thinks is.
    NotLeader(Option<(NodeId, ManagerNode)>),
    Failed(String),
}

/// One attempt on this manager's own Raft.
pub async fn local_write(m: &Manager, cmd: Command) -> ForwardReply {
    match m.raft.client_write(cmd).await {
        Ok(resp) => ForwardReply::Done(resp.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            ForwardReply::NotLeader(f.leader_id.zip(f.leader_node))
        }
        Err(e) => ForwardReply::Failed(e.to_string()),
    }
}

async fn forward(node: &ManagerNode, cmd: &Command) -> ForwardReply {
    let timeout = Duration::from_millis(FORWARD_TIMEOUT_MS);
    let ch = match connect(&node.raft_addr, timeout).await {
        Ok(ch) => ch,
        Err(e) => return ForwardReply::Failed(format!("connect {}: {e}", node.raft_addr)),
    };
    let mut req = tonic::Request::new(encode(cmd));
    req.set_timeout(timeout);
    match RaftServiceClient::new(ch).forward_write(req).await {
        Ok(r) => decode(&r.into_inner()).unwrap_or_else(|e| ForwardReply::Failed(e.to_string())),
        Err(s) => ForwardReply::Failed(s.to_string()),
    }
}

pub async fn propose(m: &Manager, cmd: Command, deadline: Duration) -> ApiResult<Outcome> {
    let start = tokio::time::Instant::now();
    let mut backoff_ms = BACKOFF_MIN_MS;
    let mut last_leader = String::from("none");
    loop {
        let reply = match local_write(m, cmd.clone()).await {
            ForwardReply::NotLeader(Some((id, node))) if id != m.id => {
                last_leader = format!("manager {id} at {}", node.api_addr);
                match forward(&node, &cmd).await {
                    // The one we asked lost leadership too: learn from the next round.
                    ForwardReply::NotLeader(_) => ForwardReply::NotLeader(None),
                    r => r,
                }
            }
            r => r,
        };
        match reply {
            ForwardReply::Done(WriteResult(r)) => return r.map_err(ApiError::State),
            ForwardReply::NotLeader(_) => {}
            ForwardReply::Failed(e) => debug!(error = %e, "write attempt failed; retrying"),
        }
        let waited = start.elapsed();
        if waited >= deadline {
            return Err(ApiError::NoLeader {
                waited_ms: waited.as_millis() as u64,
                last_leader,
            });
        }
        // Full jitter from the seeded RNG keeps retries from synchronising.
        let sleep_ms = madsim::rand::random::<u64>() % backoff_ms + 1;
        tokio::time::sleep(Duration::from_millis(sleep_ms).min(deadline - waited)).await;
        backoff_ms = (backoff_ms * 2).min(BACKOFF_MAX_MS);
    }
}

/// Leader-only: records the cluster id in the replicated state once, right after bootstrap.
pub async fn ensure_cluster_id(m: ManagerRef, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut metrics = m.raft.metrics();
    loop {
        let is_leader = metrics.borrow().current_leader == Some(m.id);
        let missing = m.state.read().unwrap().state.cluster_id.is_empty();
        if is_leader && missing {
            let cmd = Command::InitCluster {
                cluster_id: m.identity.cluster_id.clone(),
                now_ms: super::now_ms(),
            };
            if let ForwardReply::Done(_) = local_write(&m, cmd).await {
                return;
            }
        } else if !missing {
            return;
        }
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            r = metrics.changed() => if r.is_err() { return },
        }
    }
}
