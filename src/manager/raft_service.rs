//! Server half of the internal RPCs: Raft messages from peers and forwarded writes.

use super::leader::{run_local, LeaderOp};
use super::ManagerRef;
use crate::core::authz::{Caller, Rpc, Target};
use crate::proto::internal::raft_service_server::{RaftService, RaftServiceServer};
use crate::proto::internal::RaftPayload;
use crate::raft::network::{decode, encode};
use crate::raft::NodeId;
use openraft::raft::AppendEntriesResponse;
use std::future::Future;
use std::net::SocketAddr;
use tonic::{Request, Response, Status};

struct RaftRpc {
    m: ManagerRef,
}

fn bad_payload(e: crate::raft::codec::CodecError) -> Status {
    match e {
        crate::raft::codec::CodecError::PeerFormat { .. } => {
            tracing::warn!(error = %e, "refused a message from a manager of another format");
            Status::failed_precondition(e.to_string())
        }
        _ => Status::invalid_argument(format!("undecodable Raft payload: {e}")),
    }
}

impl RaftRpc {
    /// Refuses a Raft message before openraft sees (and persists) anything of it: from a
    /// node that is not a member (by this manager's log, or as its peers report), a vote
    /// request from a node that is not a voter, or a term implausibly far ahead of ours (one
    /// term per election; 2^64-1 once made RaftCore panic for good).
    fn admit(&self, what: Message, vote: &openraft::Vote<NodeId>) -> Result<(), Status> {
        let from = vote.leader_id().voted_for().unwrap_or_default();
        let metrics = self.m.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let member = membership.get_node(&from).is_some();
        let voter = membership.voter_ids().any(|v| v == from);
        // A manager still joining has no membership yet and takes the leader's log as is.
        let uninitialised = membership.nodes().next().is_none();
        let known = member
            || self
                .m
                .peers
                .reported_member(from, |p| membership.get_node(&p).is_some());
        let decision = crate::core::membership::admit_raft_message(
            what == Message::Vote,
            vote.leader_id().term,
            metrics.current_term,
            uninitialised,
            known,
            voter,
        );
        decision.map_err(|reason| {
            tracing::warn!(
                from,
                term = vote.leader_id().term,
                ?what,
                "refused Raft message: {reason}"
            );
            Status::permission_denied(format!("refused Raft message from node {from}: {reason}"))
        })
    }
}

/// An AppendEntries stream that carries no message for this long ends (its leader is gone
/// without a reset: a cut link); a live leader sends a heartbeat at least every
/// `heartbeat_interval_ms`.
pub const APPEND_STREAM_IDLE_MS: u64 = 60_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Message {
    Append,
    Vote,
    Snapshot,
}

impl RaftRpc {
    /// One AppendEntries message from `who`, unary or on a stream.
    async fn append(&self, who: &Caller, payload: &RaftPayload) -> Result<RaftPayload, Status> {
        let rpc: openraft::raft::AppendEntriesRequest<crate::raft::TypeConfig> =
            decode(payload).map_err(bad_payload)?;
        Self::sender_is(who, &rpc.vote)?;
        self.admit(Message::Append, &rpc.vote)?;
        let (carries, handed) = (!rpc.entries.is_empty(), std::time::Instant::now());
        let res = self.m.raft.append_entries(rpc).await;
        if carries {
            crate::metrics::get()
                .append_handled_seconds
                .observe(handed.elapsed().as_secs_f64());
        }
        if matches!(&res, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
            self.m.election.touch();
        }
        Ok(encode(&res))
    }

    /// Only managers speak here (`core::authz`).
    fn allow<T>(&self, req: &Request<T>, rpc: Rpc) -> Result<Caller, Status> {
        let who = crate::security::caller(req);
        self.still_allowed(&who, rpc)?;
        Ok(who)
    }

    /// The check for a caller already known: at a request, and at each message on a stream
    /// (its certificate may have been revoked since the stream opened).
    fn still_allowed(&self, who: &Caller, rpc: Rpc) -> Result<(), Status> {
        let st = self.m.state.read().unwrap();
        crate::security::check_caller(who, rpc, Target::None, |serial| {
            st.state.pki.revoked.contains_key(serial)
        })
        .map_err(|e| crate::manager::ApiError::Denied(e).into())
    }

    /// A Raft message must come from the manager it names: manager 5's certificate cannot
    /// vote or lead as manager 1.
    fn sender_is(caller: &Caller, vote: &openraft::Vote<NodeId>) -> Result<(), Status> {
        let named = vote.leader_id().voted_for();
        match caller {
            Caller::Manager { id, .. } if Some(*id) != named => Err(Status::permission_denied(format!(
                "this connection presents manager {id}'s certificate but the message is from manager {}",
                named.map_or("(none)".to_string(), |n| n.to_string())
            ))),
            // Under the simulator without checking, the caller is not known.
            _ => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl RaftService for RaftRpc {
    async fn append_entries(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let who = self.allow(&req, Rpc::AppendEntries)?;
        self.append(&who, req.get_ref()).await.map(Response::new)
    }

    type AppendStreamStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<RaftPayload, Status>> + Send>>;

    /// AppendEntries messages on one stream, answered in order. Each message is checked as a
    /// unary call is (the certificate against the revocations, the sender, its admission); the
    /// first refusal ends the stream with its status.
    async fn append_stream(
        &self,
        req: Request<tonic::Streaming<RaftPayload>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let who = self.allow(&req, Rpc::AppendEntries)?;
        let incoming = req.into_inner();
        let this = RaftRpc { m: self.m.clone() };
        let out = futures::stream::unfold(Some((this, who, incoming)), |open| async move {
            let (this, who, mut incoming) = open?;
            // A leader sends at least a heartbeat per interval; a stream this quiet lost
            // its leader without a reset (a cut link), so its task ends.
            let idle = std::time::Duration::from_millis(APPEND_STREAM_IDLE_MS);
            let msg = match tokio::time::timeout(idle, incoming.message()).await {
                Ok(Ok(Some(msg))) => msg,
                // The leader closed the stream, went away, or fell silent.
                _ => return None,
            };
            let answer = match this.still_allowed(&who, Rpc::AppendEntries) {
                Ok(()) => this.append(&who, &msg).await,
                Err(status) => Err(status),
            };
            match answer {
                Ok(p) => Some((Ok(p), Some((this, who, incoming)))),
                Err(status) => Some((Err(status), None)),
            }
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let who = self.allow(&req, Rpc::Vote)?;
        let rpc: openraft::raft::VoteRequest<NodeId> = decode(req.get_ref()).map_err(bad_payload)?;
        Self::sender_is(&who, &rpc.vote)?;
        self.admit(Message::Vote, &rpc.vote)?;
        let res = self.m.raft.vote(rpc).await;
        if matches!(&res, Ok(r) if r.vote_granted) {
            self.m.election.touch();
        }
        Ok(Response::new(encode(&res)))
    }

    async fn install_snapshot(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let who = self.allow(&req, Rpc::InstallSnapshot)?;
        let rpc: openraft::raft::InstallSnapshotRequest<crate::raft::TypeConfig> =
            decode(req.get_ref()).map_err(bad_payload)?;
        Self::sender_is(&who, &rpc.vote)?;
        self.admit(Message::Snapshot, &rpc.vote)?;
        Ok(Response::new(encode(&self.m.raft.install_snapshot(rpc).await)))
    }

    async fn leader_call(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.allow(&req, Rpc::LeaderCall)?;
        let op: LeaderOp = decode(req.get_ref()).map_err(bad_payload)?;
        Ok(Response::new(encode(&run_local(&self.m, op).await)))
    }

    type NodeLogsStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<RaftPayload, Status>> + Send>>;

    /// Log lines from a worker whose session this manager holds, for a peer's `service logs`.
    async fn node_logs(&self, req: Request<RaftPayload>) -> Result<Response<Self::NodeLogsStream>, Status> {
        self.allow(&req, Rpc::NodeLogs)?;
        use prost::Message;
        let q: super::logs::NodeLogsQuery = decode(req.get_ref()).map_err(bad_payload)?;
        let rx = self
            .m
            .logs
            .request(&q.node_id, q.task_ids, q.follow, q.tail)
            .ok_or_else(|| Status::not_found(format!("no log session of node {} here", q.node_id)))?;
        let out = futures::stream::unfold(rx, |mut reader| async move {
            let lines = reader.rx.recv().await?;
            let data = crate::proto::v1::LogUpload {
                lines,
                ..Default::default()
            }
            .encode_to_vec();
            Some((Ok(RaftPayload { data }), reader))
        });
        Ok(Response::new(Box::pin(out)))
    }

    /// The leader hands over: campaign now (`manager::handoff`). Only a manager may ask,
    /// and only as itself.
    async fn campaign(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let who = self.allow(&req, Rpc::Campaign)?;
        let ask: super::handoff::CampaignRequest = decode(req.get_ref()).map_err(bad_payload)?;
        if let Caller::Manager { id, .. } = who {
            if id != ask.from {
                return Err(Status::permission_denied(format!(
                    "this connection presents manager {id}'s certificate but the campaign request is from manager {}",
                    ask.from
                )));
            }
        }
        Ok(Response::new(encode(
            &super::handoff::campaign(&self.m, ask).await,
        )))
    }

    /// Answers with this manager's members, so a peer that missed a join learns of it, and
    /// its build.
    async fn ping(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.allow(&req, Rpc::Ping)?;
        Ok(Response::new(encode(&super::peers::PingAnswer {
            members: self.m.members().into_keys().collect(),
            version: crate::build::describe(),
        })))
    }
}

pub async fn serve(m: ManagerRef, addr: SocketAddr, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    let transport = m.transport.clone();
    let router = super::listener::builder()
        .add_service(RaftServiceServer::new(RaftRpc { m }).max_decoding_message_size(64 << 20));
    super::listener::serve(router, addr, stop, &transport)
        .await
        .map_err(|e| anyhow::anyhow!("Raft server on {addr}: {e}; is another process using --bind-addr?"))
}
