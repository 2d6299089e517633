//! The joining side of `warren manager join`: ask any of the given managers to add us, retry
//! through elections, give up at once on a refusal (bad token, id in use).

use super::Manager;
use crate::client::{Client, ClientError};
use crate::core::token;
use crate::proto::v1 as pb;
use anyhow::{anyhow, bail};
use std::time::Duration;
use tonic::Code;
use tracing::{info, warn};

/// How long a join keeps trying while the cluster is unavailable.
pub const JOIN_DEADLINE_MS: u64 = 60_000;

/// Joins and returns the cluster id.
pub async fn join(m: &Manager, token_text: &str, leaders: &[String]) -> anyhow::Result<String> {
    // Catch a mangled token before bothering the cluster; never echo it.
    token::parse(token_text).map_err(|e| anyhow!("{e}"))?;
    let client = Client::new(leaders, m.transport.clone())?;
    let req = pb::JoinClusterRequest {
        token: token_text.trim().to_string(),
        node_id: m.id,
        api_addr: m.identity.api_addr.clone(),
        raft_addr: m.identity.raft_addr.clone(),
    };
    let start = tokio::time::Instant::now();
    let mut backoff = crate::retry::Backoff::new(50, 1_000);
    loop {
        let res = client
            .call(|mut s| {
                let req = req.clone();
                async move { s.cluster.join_cluster(req).await }
            })
            .await;
        match res {
            Ok(r) => {
                if !r.warning.is_empty() {
                    warn!("{}", r.warning);
                }
                info!(leader = r.leader_id, managers = r.managers.len(), "join accepted");
                return Ok(r.cluster_id);
            }
            Err(e @ ClientError::Status(_)) if is_refusal(e.code()) => {
                // An earlier attempt may have gone through with its answer lost (the leader
                // died after promoting us): then our own log already makes us a voter.
                if e.code() == Code::AlreadyExists {
                    if let Some(cluster_id) = joined_already(m) {
                        info!("an earlier join attempt went through");
                        return Ok(cluster_id);
                    }
                }
                bail!("the cluster refused the join: {e}")
            }
            Err(e) => {
                if start.elapsed() > Duration::from_millis(JOIN_DEADLINE_MS) {
                    bail!("could not join within {} s: {e}", JOIN_DEADLINE_MS / 1000);
                }
                warn!(error = %e, "join not possible yet; retrying");
            }
        }
        backoff.wait(None).await;
    }
}

/// The cluster id, if this manager's own replicated state already lists it as a voter.
fn joined_already(m: &Manager) -> Option<String> {
    let voter = m
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .any(|v| v == m.id);
    let cluster_id = m.state.read().unwrap().state.cluster_id.clone();
    (voter && !cluster_id.is_empty()).then_some(cluster_id)
}

/// Answers that retrying cannot change (timeouts and unavailability can).
fn is_refusal(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::AlreadyExists
            | Code::FailedPrecondition
            | Code::NotFound
    )
}
