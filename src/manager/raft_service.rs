//! Server half of the internal RPCs: Raft messages from peers and forwarded writes.

use super::leader::{run_local, LeaderOp};
use super::ManagerRef;
use crate::proto::internal::raft_service_server::{RaftService, RaftServiceServer};
use crate::proto::internal::RaftPayload;
use crate::raft::network::{decode, encode};
use openraft::raft::AppendEntriesResponse;
use std::future::Future;
use std::net::SocketAddr;
use tonic::{Request, Response, Status};

struct RaftRpc {
    m: ManagerRef,
}

fn bad_payload(e: crate::raft::codec::CodecError) -> Status {
    Status::invalid_argument(format!("undecodable Raft payload: {e}"))
}

#[tonic::async_trait]
impl RaftService for RaftRpc {
    async fn append_entries(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(req.get_ref()).map_err(bad_payload)?;
        let res = self.m.raft.append_entries(rpc).await;
        if matches!(&res, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
            self.m.election.touch();
        }
        Ok(Response::new(encode(&res)))
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(req.get_ref()).map_err(bad_payload)?;
        let res = self.m.raft.vote(rpc).await;
        if matches!(&res, Ok(r) if r.vote_granted) {
            self.m.election.touch();
        }
        Ok(Response::new(encode(&res)))
    }

    async fn install_snapshot(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(req.get_ref()).map_err(bad_payload)?;
        Ok(Response::new(encode(&self.m.raft.install_snapshot(rpc).await)))
    }

    async fn leader_call(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let op: LeaderOp = decode(req.get_ref()).map_err(bad_payload)?;
        Ok(Response::new(encode(&run_local(&self.m, op).await)))
    }

    async fn ping(&self, _req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        Ok(Response::new(RaftPayload::default()))
    }
}

pub async fn serve(m: ManagerRef, addr: SocketAddr, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .add_service(RaftServiceServer::new(RaftRpc { m }).max_decoding_message_size(64 << 20))
        .serve_with_shutdown(addr, stop)
        .await
        .map_err(|e| anyhow::anyhow!("Raft server on {addr}: {e}; is another process using --bind-addr?"))
}
