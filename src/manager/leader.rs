//! Operations only the leader can carry out — writes, membership changes, read indexes — and
//! the path that gets them there: run locally when this manager leads, otherwise forward over
//! the internal `LeaderCall` RPC; across an election retry with bounded, jittered backoff until
//! a deadline, then answer `Unavailable` naming the last known leader.

use super::{ApiError, ApiResult, Manager, ManagerRef};
use crate::bugs::{self, Bug};
use crate::core::{membership, Command, Outcome, StateError};
use crate::proto::internal::raft_service_client::RaftServiceClient;
use crate::raft::network::{decode, encode_as};
use crate::raft::{ManagerNode, NodeId, WriteResult};
use openraft::error::{ClientWriteError, RaftError};
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tracing::{debug, info, warn};

pub const DEADLINE_MS: u64 = 5_000;
/// A learner must catch up within this long before it is promoted (a retried join waits
/// again: a learner that makes progress can take longer in all)...
const CATCH_UP_MS: u64 = 30_000;
/// ...and must have acknowledged some of the log within this long, or it is taken for
/// unreachable at once (its Raft address does not answer).
const FIRST_CONTACT_MS: u64 = 5_000;
const BACKOFF_MIN_MS: u64 = 10;
const BACKOFF_MAX_MS: u64 = 200;
/// One forwarded write, read index or heartbeat waits this long for the leader, then this
/// manager looks again at who leads and retries (same request id): a frozen leader must not
/// hold a write for the whole deadline while a new one is elected beside it.
const FORWARD_ATTEMPT_MS: u64 = 1_500;
/// While a call is forwarded, how often this manager looks whether the one it forwarded to
/// still leads: a leader that died without a reset (a powered-off host answers nothing)
/// would otherwise hold the call for `FORWARD_ATTEMPT_MS` after a new one is elected.
const LEADER_RECHECK_MS: u64 = 20;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)] // short-lived, never stored
pub enum LeaderOp {
    Write(Command),
    /// Add a manager as a learner, wait for it to catch up, promote it to voter.
    AddManager {
        id: NodeId,
        node: ManagerNode,
    },
    RemoveManager {
        id: NodeId,
        force: bool,
    },
    /// The leader's commit index, confirmed by a quorum (read-index).
    ReadIndex,
    /// A worker's heartbeat: the leader notes it (in memory) and commits the task state
    /// changes it carries, if any.
    Heartbeat {
        node_id: String,
        reports: Vec<crate::core::state::TaskReport>,
        /// The worker's build; recorded in its node when it changes.
        version: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)] // short-lived, never stored
pub enum LeaderAnswer {
    Written(WriteResult),
    /// Membership after an add or remove, and a warning for an even voter count.
    Members {
        voters: BTreeSet<NodeId>,
        warning: Option<String>,
    },
    ReadIndex(Option<u64>),
    Ack,
}

#[derive(Debug, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)] // short-lived, never stored
pub enum LeaderReply {
    Done(LeaderAnswer),
    /// Refused for a reason retrying will not change.
    Refused(StateError),
    /// The receiver is not the leader (any more); here is who it thinks is.
    NotLeader(Option<(NodeId, ManagerNode)>),
    /// The receiver leads but has not heard from a quorum for an election timeout: it takes
    /// no leader operations until it does (check-quorum). Answered at once, not retried.
    NoQuorum(String),
    Failed(String),
}

fn from_raft_err<E: std::fmt::Display>(e: impl Into<super::proposer::ProposeError>, what: E) -> LeaderReply {
    match e.into() {
        super::proposer::ProposeError::Raft(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            LeaderReply::NotLeader(f.leader_id.zip(f.leader_node))
        }
        e => LeaderReply::Failed(format!("{what}: {e}")),
    }
}

/// One attempt on this manager's own Raft.
pub async fn run_local(m: &Manager, op: LeaderOp) -> LeaderReply {
    // The leader taking itself out hands leadership over first; the removal then goes to
    // the new leader like any forwarded call (`manager leave` on the leader).
    if matches!(op, LeaderOp::RemoveManager { id, .. } if id == m.id) && not_leader(m).is_none() {
        match super::handoff::hand_off(m).await {
            Ok(next) => return LeaderReply::NotLeader(m.members().get(&next).map(|n| (next, n.clone()))),
            Err(e) => warn!(node = m.id, "removing the leader itself without a handoff: {e}"),
        }
    }
    // A read index appends nothing; everything else waits while a handoff runs, so that the
    // successor holds every entry before it is asked to campaign.
    let _inside = match op {
        LeaderOp::ReadIndex => None,
        _ => Some(m.handoff.enter().await),
    };
    m.handoff.await_requested_election(&m.raft).await;
    // Held while this manager handed over: to the successor, even before this manager has
    // heard from it as leader.
    let (leader, term) = {
        let rx = m.raft.metrics();
        let mm = rx.borrow();
        (mm.current_leader, mm.current_term)
    };
    if let Some(next) = m.handoff.successor(leader, term) {
        if let Some(node) = m.members().get(&next) {
            return LeaderReply::NotLeader(Some((next, node.clone())));
        }
    }
    run_op(m, op).await
}

async fn run_op(m: &Manager, op: LeaderOp) -> LeaderReply {
    match op {
        LeaderOp::Write(cmd) if bugs::on(Bug::AckBeforeCommit) && not_leader(m).is_none() => {
            // Predict the answer on a copy of the state and reply before Raft commits.
            let predicted = {
                let d = m.state.read().unwrap();
                let next = d.last_applied.map_or(1, |l| l.index + 1);
                d.state.clone().apply(next, cmd.clone())
            };
            let raft = m.raft.clone();
            tokio::spawn(async move { raft.client_write(cmd).await });
            LeaderReply::Done(LeaderAnswer::Written(WriteResult(predicted)))
        }
        LeaderOp::Write(_) | LeaderOp::ReadIndex if m.quorum_lost(&m.raft.metrics().borrow()).is_some() => {
            not_leader(m).unwrap_or(LeaderReply::NotLeader(None))
        }
        LeaderOp::Write(cmd) => {
            // A worker registering is alive: heard from now, not only at its first heartbeat
            // (with thousands joining, a round could mark one down in between).
            let registering = registering_worker(&cmd).map(String::from);
            let started = std::time::Instant::now();
            let res = m.proposer.write(cmd).await;
            if let (Some(node), Ok(WriteResult(Ok(_)))) = (registering, &res) {
                let interval_ms = m.heartbeat_interval_ms(&m.state.read().unwrap().state);
                m.heartbeats.heard(&node, interval_ms);
            }
            crate::metrics::get()
                .proposal_seconds
                .observe(started.elapsed().as_secs_f64());
            match res {
                Ok(written) => LeaderReply::Done(LeaderAnswer::Written(written)),
                Err(e) => from_raft_err(e, "write"),
            }
        }
        // Only the read index: the manager serving the read waits until it has applied that
        // far (`Manager::read_barrier`). Not `ensure_linearizable`, whose wait adds a waiter on
        // the metrics channel behind an unbiased `select!` (see `manager::changes`).
        LeaderOp::ReadIndex => match m.raft.get_read_log_id().await {
            Ok((log_id, _applied)) => LeaderReply::Done(LeaderAnswer::ReadIndex(log_id.map(|l| l.index))),
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f))) => {
                LeaderReply::NotLeader(f.leader_id.zip(f.leader_node))
            }
            Err(e) => LeaderReply::Failed(format!("read index: {e}")),
        },
        LeaderOp::AddManager { id, node } => add_manager(m, id, node).await,
        LeaderOp::RemoveManager { id, force } => remove_manager(m, id, force).await,
        LeaderOp::Heartbeat {
            node_id,
            reports,
            version,
        } => heartbeat(m, node_id, reports, version).await,
    }
}

/// The node id, if `cmd` registers a worker.
fn registering_worker(cmd: &Command) -> Option<&str> {
    match cmd {
        Command::Once { cmd, .. } => registering_worker(cmd),
        Command::RegisterNode {
            id,
            role: crate::core::Role::Worker,
            ..
        } => Some(id),
        _ => None,
    }
}

async fn heartbeat(
    m: &Manager,
    node_id: String,
    reports: Vec<crate::core::state::TaskReport>,
    version: String,
) -> LeaderReply {
    if let Some(r) = not_leader(m) {
        return r;
    }
    let (reports, new_version, interval_ms) = {
        let guard = m.state.read().unwrap();
        let st = &guard.state;
        let interval_ms = m.heartbeat_interval_ms(st);
        if !st.nodes.contains_key(&node_id) {
            return LeaderReply::Refused(StateError::NotFound {
                kind: "node".into(),
                name: format!(
                    "{} (removed from the cluster? join again with a worker token)",
                    crate::core::state::cut(&node_id)
                ),
            });
        }
        let new_version = !version.is_empty() && st.nodes[&node_id].agent_version != version;
        // Only changes are replicated: drop what the state already says.
        (st.changed_reports(&node_id, reports), new_version, interval_ms)
    };
    m.heartbeats.heard(&node_id, interval_ms);
    tracing::trace!(target: "warren::heartbeat", node = %node_id, "heartbeat heard by the leader");
    if new_version {
        // Once per node and build: a failure is retried with the next heartbeat.
        let cmd = Command::SetNodeVersion {
            id: node_id.clone(),
            version,
        };
        if let Err(e) = m.proposer.write(cmd).await {
            return from_raft_err(e, "record the node's version");
        }
    }
    if reports.is_empty() {
        return LeaderReply::Done(LeaderAnswer::Ack);
    }
    let cmd = Command::ReportTasks {
        node_id,
        reports,
        now_ms: super::now_ms(),
    };
    match m.proposer.write(cmd).await {
        Ok(written) => LeaderReply::Done(LeaderAnswer::Written(written)),
        Err(e) => from_raft_err(e, "report tasks"),
    }
}

fn not_leader(m: &Manager) -> Option<LeaderReply> {
    let metrics = m.raft.metrics().borrow().clone();
    if metrics.current_leader == Some(m.id) {
        return m.quorum_lost(&metrics).map(LeaderReply::NoQuorum);
    }
    let leader = metrics.current_leader.and_then(|l| {
        metrics
            .membership_config
            .membership()
            .get_node(&l)
            .cloned()
            .map(|n| (l, n))
    });
    Some(LeaderReply::NotLeader(leader))
}

fn voters(m: &Manager) -> (BTreeSet<NodeId>, BTreeMap<NodeId, ManagerNode>) {
    let metrics = m.raft.metrics().borrow().clone();
    let mem = metrics.membership_config.membership().clone();
    (
        mem.voter_ids().collect(),
        mem.nodes().map(|(k, v)| (*k, v.clone())).collect(),
    )
}

/// Adds manager `id` as a learner, waits until it has caught up with the leader's log and
/// only then promotes it to voter. A learner that does not catch up in time (its Raft address
/// does not answer, say) is removed again and the join refused: a voter that cannot vote
/// would cost the cluster its quorum. An id or an address already in the membership is
/// refused; only a retry of the same join (same id and addresses, still a learner) goes on.
async fn add_manager(m: &Manager, id: NodeId, node: ManagerNode) -> LeaderReply {
    if let Some(r) = not_leader(m) {
        return r;
    }
    let (voter_ids, nodes) = voters(m);
    if let Err(e) = membership::check_join(&voter_ids, &nodes, id, &node) {
        return LeaderReply::Refused(e);
    }
    if !nodes.contains_key(&id) {
        info!(new_manager = id, api = %node.api_addr, raft = %node.raft_addr, "adding learner");
        if let Err(e) = m.raft.add_learner(id, node.clone(), false).await {
            return from_raft_err(e, "add learner");
        }
    }
    match wait_caught_up(m, id).await {
        CatchUp::Done => {}
        CatchUp::LostLeadership => return LeaderReply::NotLeader(None),
        CatchUp::TimedOut => {
            warn!(new_manager = id, raft = %node.raft_addr, "learner did not catch up; removing it");
            let removed = m
                .raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await;
            let note = match removed {
                Ok(_) => "it was removed again; nothing changed",
                Err(_) => "removing the learner failed too (it does not vote, so the quorum is unaffected); retry the join",
            };
            return LeaderReply::Refused(StateError::FailedPrecondition(format!(
                "manager {id} did not catch up with the leader's log (it must answer within {} s and catch up within {} s), so it was not made a voter ({note}); check that its --bind-addr {} is reachable from the leader and that it is running",
                FIRST_CONTACT_MS / 1000,
                CATCH_UP_MS / 1000,
                node.raft_addr
            )));
        }
    }
    info!(new_manager = id, "promoting to voter");
    if let Err(e) = m
        .raft
        .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
        .await
    {
        return from_raft_err(e, "promote");
    }
    let (voter_ids, _) = voters(m);
    let warning = membership::even_voters_warning(voter_ids.len());
    if let Some(w) = &warning {
        warn!("{w}");
    }
    LeaderReply::Done(LeaderAnswer::Members {
        voters: voter_ids,
        warning,
    })
}

enum CatchUp {
    Done,
    TimedOut,
    LostLeadership,
}

/// Waits until the leader's replication to `id` has reached the leader's last log index as
/// of the call: `FIRST_CONTACT_MS` for the learner to acknowledge anything, `CATCH_UP_MS`
/// in all. Polled (see `manager::watch_core` on why not a metrics waiter).
async fn wait_caught_up(m: &Manager, id: NodeId) -> CatchUp {
    let metrics = m.raft.metrics();
    let target = metrics.borrow().last_log_index.unwrap_or(0);
    let start = tokio::time::Instant::now();
    loop {
        let matched = {
            let mm = metrics.borrow();
            let Some(repl) = mm.replication.as_ref() else {
                return CatchUp::LostLeadership;
            };
            repl.get(&id).cloned().flatten()
        };
        if matched.is_some_and(|l| l.index >= target) {
            return CatchUp::Done;
        }
        let limit_ms = if matched.is_none() {
            FIRST_CONTACT_MS
        } else {
            CATCH_UP_MS
        };
        if start.elapsed() >= Duration::from_millis(limit_ms) {
            return CatchUp::TimedOut;
        }
        tokio::time::sleep(Duration::from_millis(CATCH_UP_POLL_MS)).await;
    }
}

const CATCH_UP_POLL_MS: u64 = 20;

async fn remove_manager(m: &Manager, id: NodeId, force: bool) -> LeaderReply {
    if let Some(r) = not_leader(m) {
        return r;
    }
    let (voter_ids, nodes) = voters(m);
    // Ask now rather than trust the last probe round: this decision must not be stale.
    let peers: Vec<(NodeId, String)> = nodes.iter().map(|(id, n)| (*id, n.raft_addr.clone())).collect();
    let reachable = m.peers.reachable_now(m.id, &peers).await;
    if let Err(e) = membership::check_removal(&voter_ids, &reachable, id, force) {
        return LeaderReply::Refused(e);
    }
    info!(removed_manager = id, force, "removing manager");
    match m
        .raft
        .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
        .await
    {
        Ok(_) => {
            let (voter_ids, _) = voters(m);
            LeaderReply::Done(LeaderAnswer::Members {
                warning: membership::even_voters_warning(voter_ids.len()),
                voters: voter_ids,
            })
        }
        Err(e) => from_raft_err(e, "remove"),
    }
}

/// One attempt of `op` on the leader at `node`, over the shared channel to it, bounded by
/// `timeout`.
async fn forward(m: &Manager, node: &ManagerNode, op: &LeaderOp, timeout: Duration) -> LeaderReply {
    let addr = &node.raft_addr;
    let attempt = async {
        let ch = match m.peers.channel(addr).await {
            Ok(ch) => ch,
            Err(e) => return LeaderReply::Failed(format!("connect {addr}: {e}")),
        };
        let format = match op {
            LeaderOp::Write(cmd) => crate::raft::command_format(cmd),
            _ => crate::raft::codec::BASE_FORMAT,
        };
        let mut req = tonic::Request::new(encode_as(format, op));
        req.set_timeout(timeout);
        match RaftServiceClient::new(ch).leader_call(req).await {
            Ok(r) => decode(&r.into_inner())
                .unwrap_or_else(|e| LeaderReply::Failed(format!("the leader's answer: {e}"))),
            Err(s) => {
                m.peers.forget(addr);
                LeaderReply::Failed(format!("{}: {}", addr, s.message()))
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => LeaderReply::Failed(format!(
            "the leader at {addr} did not answer within {} ms",
            timeout.as_millis()
        )),
    }
}

/// How long one forward of `op` may take: membership changes wait for a learner to catch
/// up, so they get what is left of the deadline; everything else gets one short attempt.
fn attempt_timeout(op: &LeaderOp, left: Duration) -> Duration {
    match op {
        LeaderOp::AddManager { .. } | LeaderOp::RemoveManager { .. } => left,
        _ => left.min(Duration::from_millis(FORWARD_ATTEMPT_MS)),
    }
    .max(Duration::from_millis(1))
}

/// Runs `op` on the leader, wherever it is, retrying across elections until `deadline`.
pub async fn call(m: &Manager, op: LeaderOp, deadline: Duration) -> ApiResult<LeaderAnswer> {
    let start = tokio::time::Instant::now();
    let mut backoff = crate::retry::Backoff::new(BACKOFF_MIN_MS, BACKOFF_MAX_MS);
    let mut last_leader = String::from("none");
    let mut last_error = String::new();
    // The leader a forwarded call was told about by the manager it went to (a leader that
    // has just handed over names its successor, maybe this manager): tried next, without a
    // backoff, once per round.
    let mut told: Option<(NodeId, ManagerNode)> = None;
    loop {
        let left = deadline.saturating_sub(start.elapsed());
        let hinted = told.take();
        let was_told = hinted.is_some();
        // Bounded by the deadline: a leader that loses its quorum mid-write must not hold
        // the caller for ever (new writes are refused at once by check-quorum).
        let local = match hinted {
            Some(leader) if leader.0 != m.id => LeaderReply::NotLeader(Some(leader)),
            // Told that this manager leads now (it just took over): run it here.
            _ => tokio::time::timeout(left.max(Duration::from_millis(1)), run_local(m, op.clone()))
                .await
                .unwrap_or_else(|_| LeaderReply::Failed(format!("no commit within {} ms", left.as_millis()))),
        };
        // BUGGIFY: the leader's answer was lost; the retry must not apply the write twice.
        let local = match local {
            LeaderReply::Done(_) if crate::buggify!(30) => LeaderReply::Failed("buggify: answer lost".into()),
            r => r,
        };
        let reply = match local {
            LeaderReply::NotLeader(Some((id, node))) if id != m.id => {
                last_leader = format!("manager {id} at {}", node.api_addr);
                let left = deadline.saturating_sub(start.elapsed());
                let forwarded = async {
                    match forward(m, &node, &op, attempt_timeout(&op, left)).await {
                        // The one we asked does not lead (any more) but knows who does.
                        LeaderReply::NotLeader(Some(next)) if next.0 != id && !was_told => {
                            told = Some(next);
                            LeaderReply::NotLeader(None)
                        }
                        // The one we asked lost leadership too: learn from the next round.
                        LeaderReply::NotLeader(_) => LeaderReply::NotLeader(None),
                        r => r,
                    }
                };
                // Membership changes keep their attempt (they wait on purpose); anything
                // else is dropped once another leader or an election shows, and retried
                // with the same request id (applied at most once).
                let moved = async {
                    if matches!(op, LeaderOp::AddManager { .. } | LeaderOp::RemoveManager { .. }) {
                        return std::future::pending().await;
                    }
                    loop {
                        tokio::time::sleep(Duration::from_millis(LEADER_RECHECK_MS)).await;
                        if m.raft.metrics().borrow().current_leader != Some(id) {
                            return LeaderReply::Failed(format!(
                                "manager {id} stopped leading while a call was forwarded to it"
                            ));
                        }
                    }
                };
                tokio::select! {
                    biased;
                    r = forwarded => r,
                    r = moved => r,
                }
            }
            r => r,
        };
        match reply {
            LeaderReply::Done(a) => return Ok(a),
            LeaderReply::Refused(e) => return Err(ApiError::State(e)),
            LeaderReply::NoQuorum(why) => return Err(ApiError::NotApplied(why)),
            LeaderReply::NotLeader(_) => {}
            LeaderReply::Failed(e) => {
                debug!(error = %e, "leader call failed; retrying");
                last_error = e;
            }
        }
        let waited = start.elapsed();
        if told.is_some() && waited < deadline {
            continue;
        }
        if waited >= deadline {
            if last_leader == "none" {
                last_leader = m.leader_description();
            }
            return Err(ApiError::NoLeader {
                waited_ms: waited.as_millis() as u64,
                last_leader,
                last_error,
            });
        }
        backoff.wait(Some(deadline - waited)).await;
    }
}

/// A client's request id and a digest of the request it came with.
#[derive(Clone, Debug)]
pub struct RequestId {
    pub id: String,
    pub fingerprint: u64,
}

/// Proposes `cmd` and returns the state machine's answer. Retries (across elections, after
/// a lost answer) carry the same request id, so the command takes effect at most once; a
/// client that retries through another manager passes its own id (`request_id`) for the
/// same effect.
pub async fn write(m: &Manager, cmd: Command, request: Option<RequestId>) -> ApiResult<Outcome> {
    cmd.precheck().map_err(ApiError::State)?;
    let RequestId { id, fingerprint } = request.unwrap_or_else(|| RequestId {
        id: super::new_id(),
        fingerprint: 0,
    });
    // A retry whose first attempt this manager has already applied: answer from here,
    // without another log entry.
    if let Some(answer) = m.state.read().unwrap().state.answer_for(&id, fingerprint) {
        return answer.map_err(ApiError::State);
    }
    let cmd = if bugs::on(Bug::ApplyTwice) {
        cmd
    } else {
        Command::Once {
            request_id: id,
            fingerprint,
            cmd: Box::new(cmd),
        }
    };
    match call(m, LeaderOp::Write(cmd), Duration::from_millis(DEADLINE_MS)).await? {
        LeaderAnswer::Written(WriteResult(r)) => r.map_err(ApiError::State),
        other => Err(ApiError::Internal(format!("unexpected leader answer {other:?}"))),
    }
}

/// Leader-only, on the first manager: records the cluster id, then the CA `cluster init`
/// made and the certificates it signed, in the replicated state, once, right after
/// bootstrap; then the CA key file goes.
/// Snapshot, then purge the log up to it (bounded wait: without it the entry stays until
/// the normal log compaction).
async fn compact_after_restore(m: &ManagerRef) {
    let applied = m.raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
    if m.raft.trigger().snapshot().await.is_err() {
        return;
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let seen = m.changes.version();
        let built = m.raft.metrics().borrow().snapshot.filter(|s| s.index >= applied);
        if let Some(s) = built {
            let _ = m.raft.trigger().purge_log(s.index).await;
            return;
        }
        match tokio::time::timeout(left, m.changes.after(seen)).await {
            Ok(Some(_)) => {}
            _ => return,
        }
    }
}

pub async fn ensure_cluster_id(m: ManagerRef, data_dir: std::path::PathBuf, stop: super::changes::Stop) {
    let metrics = m.raft.metrics();
    let pending = match super::credentials::pending_ca(&data_dir) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "cannot read the CA cluster init made");
            None
        }
    };
    // A restore (`cluster init --restore`) puts the backed-up state in first.
    let restore = match super::backup::load_pending(&data_dir) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "cannot read the backup cluster init --restore left");
            None
        }
    };
    // Commands answered once (applied or refused) are not sent again.
    let mut answered: std::collections::BTreeSet<String> = Default::default();
    loop {
        let seen = m.changes.version();
        let is_leader = metrics.borrow().current_leader == Some(m.id);
        let (missing_id, missing_ca, unrecorded) = {
            let st = &m.state.read().unwrap().state;
            let unrecorded: Vec<(String, String, i64)> = pending
                .iter()
                .flat_map(|p| p.issued.iter())
                .filter(|(holder, serial, _)| {
                    !answered.contains(serial)
                        && !st.pki.issued.get(holder).is_some_and(|s| s.contains_key(serial))
                })
                .cloned()
                .collect();
            (
                st.cluster_id.is_empty() && !answered.contains("id"),
                st.pki.ca_cert_der.is_empty() && !answered.contains("ca"),
                unrecorded,
            )
        };
        let cmd = match &pending {
            _ if missing_id => Some(match &restore {
                Some(r) => Command::Restore {
                    state: Box::new(r.backup.state.clone()),
                    restored: crate::core::restore::Restored {
                        at_ms: super::now_ms(),
                        backup_taken_ms: r.backup.taken_at_ms,
                        backup_index: r.backup.index,
                        rejoin_grace_ms: r.rejoin_grace_ms,
                    },
                },
                None => Command::InitCluster {
                    cluster_id: m.identity.cluster_id.clone(),
                    now_ms: super::now_ms(),
                },
            }),
            Some(p) if missing_ca => Some(Command::InstallCa {
                cert_der: p.cert_der.clone(),
                key_pkcs8: p.key_pkcs8.clone(),
                cert_ttl_ms: p.cert_ttl_ms,
            }),
            Some(p) => unrecorded
                .first()
                .map(|(holder, serial, not_after_ms)| Command::RecordCertificate {
                    holder: holder.clone(),
                    serial_hex: serial.clone(),
                    not_after_ms: *not_after_ms,
                    now_ms: super::now_ms(),
                    renews: None,
                    issuer_fingerprint: crate::core::token::ca_fingerprint(&p.cert_der),
                }),
            None => None,
        };
        let Some(cmd) = cmd else {
            if pending.is_some() {
                if let Err(e) = super::credentials::pending_ca_done(&data_dir) {
                    tracing::warn!(error = %e, "cannot remove the CA key file cluster init left");
                }
            }
            if restore.is_some() && m.state.read().unwrap().state.restored.is_some() {
                tracing::info!("restore complete: the backed-up state is this cluster's");
                // The restore entry holds the whole state: a snapshot now, so that managers
                // joining later get it as one (chunked) instead of one large log entry.
                compact_after_restore(&m).await;
                if let Err(e) = super::backup::pending_done(&data_dir) {
                    tracing::warn!(error = %e, "cannot remove the copy of the backup in the data dir");
                }
            }
            return;
        };
        let key = match &cmd {
            Command::InitCluster { .. } | Command::Restore { .. } => Some("id".to_string()),
            Command::InstallCa { .. } => Some("ca".to_string()),
            Command::RecordCertificate { serial_hex, .. } => Some(serial_hex.clone()),
            _ => None,
        };
        if is_leader {
            if let LeaderReply::Done(r) = run_local(&m, LeaderOp::Write(cmd)).await {
                if let LeaderAnswer::Written(WriteResult(Err(e))) = &r {
                    tracing::error!(error = %e, "setting up the cluster's PKI was refused");
                }
                answered.extend(key);
            }
        }
        // Then wait for the next change (the answer's entry being applied, a new leader):
        // never around again at once, so an answer that comes before its entry is applied
        // cannot spin this loop.
        tokio::select! {
            biased;
            _ = stop.wait() => return,
            r = m.changes.after(seen) => if r.is_none() { return },
        }
    }
}
