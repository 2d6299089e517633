//! The Raft network over gRPC: each openraft message is bincode-encoded into a `RaftPayload`
//! and sent to the peer's Raft address. The server half lives in `manager::raft_service`.

use super::{ManagerNode, NodeId, TypeConfig};
use crate::proto::internal::raft_service_client::RaftServiceClient;
use crate::proto::internal::RaftPayload;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::AnyError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// A new TCP connection to a peer that does not answer fails after this long, so a dead
/// peer never holds up replication to the others.
pub const CONNECT_TIMEOUT_MS: u64 = 300;

/// After a refused connect, the next attempt to that peer waits a jittered delay growing
/// from this...
pub const RECONNECT_MIN_MS: u64 = 10;
/// ...to this, so a restarted peer is reached again within about half a second.
pub const RECONNECT_MAX_MS: u64 = 500;

/// A message between managers: the format byte (`codec::SEALED_FORMAT`: the layout of the
/// state and of these messages), then the bincode of `v`. A manager refuses a message of
/// another format by name instead of misreading it (a rolling upgrade across a format
/// change is refused this way: docs/operations.md, "Upgrades").
pub fn encode<T: Serialize>(v: &T) -> RaftPayload {
    encode_as(super::codec::BASE_FORMAT, v)
}

/// As `encode`, as format `format` (entries holding a batch need the newer one).
pub fn encode_as<T: Serialize>(format: u8, v: &T) -> RaftPayload {
    let body = super::codec::to_bytes(v);
    let mut data = Vec::with_capacity(body.len() + 1);
    data.push(format);
    data.extend_from_slice(&body);
    RaftPayload { data }
}

/// Decodes a whole payload; another format, trailing bytes or a truncated message are errors.
pub fn decode<T: DeserializeOwned>(p: &RaftPayload) -> Result<T, super::codec::CodecError> {
    use super::codec::{readable, CodecError, SEALED_FORMAT};
    match p.data.split_first() {
        None => Err(CodecError::Truncated(0)),
        Some((&f, _)) if !readable(f) => Err(CodecError::PeerFormat {
            found: f,
            reads: SEALED_FORMAT,
        }),
        Some((_, body)) => super::codec::from_bytes(body),
    }
}

/// Opens a channel to `addr` (host:port) with bounded connect and request times.
pub async fn connect(
    addr: &str,
    request_timeout: Duration,
    transport: &crate::security::Transport,
) -> Result<Channel, tonic::transport::Error> {
    let ep = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
        .timeout(request_timeout);
    transport.connect(&ep).await
}

/// When a peer last refused this node's vote request because the peer's log is newer.
/// openraft does not move a voter to the candidate's higher term when it refuses it for its
/// log, so a candidate with a stale log that campaigns more often than the up-to-date one
/// keeps the terms ahead of it and neither wins (seen in the simulator); the election timer
/// backs off after such a refusal.
pub type Outlogged = std::sync::Arc<std::sync::Mutex<Option<tokio::time::Instant>>>;

#[derive(Clone, Debug)]
pub struct Network {
    pub outlogged: Outlogged,
    transport: crate::security::Transport,
    /// How far this manager's log is on disk: followers hear of no commit past it
    /// (`raft::durable`).
    durable: std::sync::Arc<super::durable::Durable>,
}

impl Network {
    pub fn new(
        transport: crate::security::Transport,
        durable: std::sync::Arc<super::durable::Durable>,
    ) -> Network {
        Network {
            outlogged: Default::default(),
            transport,
            durable,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &ManagerNode) -> Connection {
        Connection {
            target,
            addr: node.raft_addr.clone(),
            client: None,
            stream: None,
            unary_only: false,
            generation: 0,
            retry: None,
            outlogged: self.outlogged.clone(),
            transport: self.transport.clone(),
            durable: self.durable.clone(),
        }
    }
}

pub struct Connection {
    target: NodeId,
    addr: String,
    client: Option<RaftServiceClient<Channel>>,
    /// The AppendEntries stream on `client`, opened at the first append.
    stream: Option<AppendStream>,
    /// The peer answered `AppendStream` with Unimplemented (an older build): appends go as
    /// unary calls until the next reconnect.
    unary_only: bool,
    /// The transport generation `client` was opened at (a renewal replaces it).
    generation: u64,
    /// After a failed connect: the backoff and when the next attempt may be made. openraft
    /// retries a failed replication at once (reading the entries from the log again each
    /// time), so without this a dead peer whose connects are refused at once costs a busy loop.
    retry: Option<(crate::retry::Backoff, tokio::time::Instant)>,
    outlogged: Outlogged,
    transport: crate::security::Transport,
    durable: std::sync::Arc<super::durable::Durable>,
}

/// AppendEntries on one long-lived stream to a peer (`AppendStream`): a message goes into
/// `tx`, its answer comes back on `rx`. openraft sends one message at a time to each peer,
/// so answers pair with messages in order.
struct AppendStream {
    tx: tokio::sync::mpsc::Sender<RaftPayload>,
    /// Never locked, only reached through `get_mut`: the Mutex makes the connection `Sync`, as
    /// openraft requires, where madsim's `Streaming` is not.
    rx: std::sync::Mutex<tonic::Streaming<RaftPayload>>,
}

impl AppendStream {
    /// Opens the stream with `first` already queued, so the request's headers and its first
    /// message travel together and the first answer costs one round trip, as a unary call
    /// does. Waiting for the answer's headers before sending would cost two, and over a slow
    /// link two round trips can exceed openraft's per-message timeout every time: each
    /// timeout drops the stream, and the next message would open it again.
    async fn open(
        client: &mut RaftServiceClient<Channel>,
        first: RaftPayload,
    ) -> Result<(AppendStream, RaftPayload), tonic::Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.try_send(first).expect("a new channel of one has room");
        let outgoing = futures::stream::unfold(
            rx,
            |mut rx: tokio::sync::mpsc::Receiver<RaftPayload>| async move { rx.recv().await.map(|m| (m, rx)) },
        );
        let rx = client
            .append_stream(tonic::Request::new(outgoing))
            .await?
            .into_inner();
        let mut stream = AppendStream {
            tx,
            rx: std::sync::Mutex::new(rx),
        };
        let answer = stream.answer().await?;
        Ok((stream, answer))
    }

    async fn exchange(&mut self, payload: RaftPayload) -> Result<RaftPayload, tonic::Status> {
        self.tx
            .send(payload)
            .await
            .map_err(|_| tonic::Status::unavailable("the AppendEntries stream is closed"))?;
        self.answer().await
    }

    async fn answer(&mut self) -> Result<RaftPayload, tonic::Status> {
        let rx = self
            .rx
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        rx.message()
            .await?
            .ok_or_else(|| tonic::Status::unavailable("the peer ended the AppendEntries stream"))
    }
}

#[derive(Clone, Copy)]
enum Method {
    Append,
    Vote,
    Snapshot,
}

impl Connection {
    async fn call<Req, Resp, E>(
        &mut self,
        method: Method,
        format: u8,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, ManagerNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let ttl = option.hard_ttl();
        let generation = self.transport.generation();
        if self.generation != generation {
            self.disconnect();
        }
        if self.client.is_none() {
            // Reported as a network error, not `Unreachable`: openraft's backoff for
            // unreachable peers waits in an unbiased `select!`, whose randomness madsim does
            // not control. The pacing is ours instead: a call before the next attempt is due
            // waits (at most 3/4 of its own timeout) and, if still early, fails without
            // connecting.
            if let Some((_, at)) = &self.retry {
                let now = tokio::time::Instant::now();
                if *at > now {
                    tokio::time::sleep((*at - now).min(ttl * 3 / 4)).await;
                    if *at > tokio::time::Instant::now() {
                        return Err(RPCError::Network(NetworkError::new(&AnyError::error(
                            "peer unreachable; waiting before the next connect",
                        ))));
                    }
                }
            }
            let ch = match connect(&self.addr, ttl, &self.transport).await {
                Ok(ch) => ch,
                Err(e) => {
                    tracing::debug!(target_node = self.target, addr = %self.addr, error = %e, "raft peer unreachable");
                    self.wait_before_next_connect();
                    return Err(RPCError::Network(NetworkError::new(&e)));
                }
            };
            self.retry = None;
            self.client = Some(RaftServiceClient::new(ch));
            self.generation = generation;
        }
        // BUGGIFY: a message held up (reordered behind later ones) or lost with its
        // connection.
        if crate::buggify!(40) {
            tokio::time::sleep(ttl.mul_f64(madsim::rand::random::<f64>())).await;
        }
        if crate::buggify!(200) {
            self.disconnect();
            return Err(RPCError::Network(NetworkError::new(&AnyError::error(
                "buggify: connection lost",
            ))));
        }
        let payload = encode_as(format, req);
        let res = match method {
            Method::Append => self.append(payload, ttl).await,
            Method::Vote | Method::Snapshot => {
                let client = self.client.as_mut().expect("connected above");
                let mut request = tonic::Request::new(payload);
                request.set_timeout(ttl);
                match method {
                    Method::Vote => client.vote(request).await,
                    _ => client.install_snapshot(request).await,
                }
                .map(tonic::Response::into_inner)
            }
        };
        let payload = match res {
            Ok(p) => p,
            Err(status) => {
                // Reconnect on the next call: the peer may have restarted.
                self.disconnect();
                return Err(RPCError::Network(NetworkError::new(&status)));
            }
        };
        let answer: Result<Resp, RaftError<NodeId, E>> =
            decode(&payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        match answer {
            Ok(r) => Ok(r),
            // The peer's Raft core has stopped (it is exiting). openraft turns a remote fatal
            // error into `Unreachable`, whose backoff waits in an unbiased `select!` that
            // madsim does not seed (found: the simulator's in-process determinism check
            // failed after a manager fenced itself on a disk error). Reported as a network
            // error instead, with reconnects paced as for a dead peer.
            Err(RaftError::Fatal(f)) => {
                self.disconnect();
                self.wait_before_next_connect();
                Err(RPCError::Network(NetworkError::new(&f)))
            }
            Err(e) => Err(RPCError::RemoteError(openraft::error::RemoteError::new(
                self.target,
                e,
            ))),
        }
    }

    /// An AppendEntries message: on the stream to the peer, or as a unary call to a peer
    /// without `AppendStream`.
    async fn append(&mut self, payload: RaftPayload, ttl: Duration) -> Result<RaftPayload, tonic::Status> {
        // A stream over a cut link can hang without an error: each answer has the call's time.
        match tokio::time::timeout(ttl, self.append_within(payload, ttl)).await {
            Ok(answer) => answer,
            Err(_) => Err(tonic::Status::deadline_exceeded(
                "no AppendEntries answer in time",
            )),
        }
    }

    async fn append_within(
        &mut self,
        payload: RaftPayload,
        ttl: Duration,
    ) -> Result<RaftPayload, tonic::Status> {
        let client = self.client.as_mut().expect("connected before");
        // Out of `self` while the message is in flight: if this future is dropped (a timeout,
        // ours or openraft's) between the send and the answer, the stream goes with it, so a
        // later message can never be paired with this message's answer.
        if let Some(mut stream) = self.stream.take() {
            let answer = stream.exchange(payload).await?;
            self.stream = Some(stream);
            return Ok(answer);
        }
        if !self.unary_only {
            // Kept for a unary call if the peer has no streams; a stream opens rarely.
            let retry = payload.clone();
            match AppendStream::open(client, payload).await {
                Ok((stream, answer)) => {
                    self.stream = Some(stream);
                    return Ok(answer);
                }
                Err(status) if status.code() == tonic::Code::Unimplemented => {
                    tracing::info!(
                        target_node = self.target,
                        "peer has no AppendStream (an older build): appends go as unary calls"
                    );
                    self.unary_only = true;
                    return self.unary_append(retry, ttl).await;
                }
                Err(status) => return Err(status),
            }
        }
        self.unary_append(payload, ttl).await
    }

    async fn unary_append(
        &mut self,
        payload: RaftPayload,
        ttl: Duration,
    ) -> Result<RaftPayload, tonic::Status> {
        let client = self.client.as_mut().expect("connected before");
        let mut request = tonic::Request::new(payload);
        request.set_timeout(ttl);
        Ok(client.append_entries(request).await?.into_inner())
    }

    /// Drops the connection and its stream; the next call connects again (and tries the
    /// stream again: the peer may have been upgraded).
    fn disconnect(&mut self) {
        self.client = None;
        self.stream = None;
        self.unary_only = false;
    }

    /// After a failure: the next connect waits a jittered, growing delay.
    fn wait_before_next_connect(&mut self) {
        let (backoff, _) = self.retry.get_or_insert_with(|| {
            let b = crate::retry::Backoff::new(RECONNECT_MIN_MS, RECONNECT_MAX_MS);
            (b, tokio::time::Instant::now())
        });
        let at = tokio::time::Instant::now() + backoff.next_delay();
        self.retry.as_mut().expect("set above").1 = at;
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, ManagerNode, RaftError<NodeId>>> {
        rpc.leader_commit = self.durable.clamp(rpc.leader_commit);
        let format = rpc
            .entries
            .iter()
            .map(super::entry_format)
            .max()
            .unwrap_or(super::codec::BASE_FORMAT);
        let (carries, sent) = (!rpc.entries.is_empty(), std::time::Instant::now());
        let answer = self.call(Method::Append, format, &rpc, &option).await;
        if carries && answer.is_ok() {
            crate::metrics::get()
                .append_rpc_seconds
                .observe(sent.elapsed().as_secs_f64());
        }
        answer
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, ManagerNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Method::Snapshot, super::codec::BASE_FORMAT, &rpc, &option)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, ManagerNode, RaftError<NodeId>>> {
        let resp: VoteResponse<NodeId> = self
            .call(Method::Vote, super::codec::BASE_FORMAT, &rpc, &option)
            .await?;
        if !resp.vote_granted && resp.last_log_id > rpc.last_log_id {
            *self.outlogged.lock().unwrap() = Some(tokio::time::Instant::now());
        }
        Ok(resp)
    }
}
