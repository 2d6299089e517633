//! A client for a list of managers: it talks to one and moves to the next when that one does
//! not answer. Writes need no leader-finding here: any manager forwards them to the leader.

use crate::proto::v1 as pb;
use crate::proto::v1::cluster_service_client::ClusterServiceClient;
use crate::proto::v1::node_service_client::NodeServiceClient;
use crate::proto::v1::service_service_client::ServiceServiceClient;
use crate::proto::v1::task_service_client::TaskServiceClient;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

pub const CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Longer than the managers' own write deadline, so their answer (not ours) reaches the user.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// A write whose outcome is unknown (a timeout, a lost connection) is retried with the same
/// request id through the managers for this long before the client gives up and says so.
pub const WRITE_RETRY_MS: u64 = 20_000;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no manager given; pass --manager HOST:PORT[,HOST:PORT...] or set WARREN_MANAGER")]
    NoManagers,
    #[error("{address:?} is not a manager address: {reason}; use HOST:PORT, for example 127.0.0.1:8080")]
    BadAddress { address: String, reason: String },
    #[error("no manager answered ({tried}): {last}; check that a manager runs there and the address is its --api-addr")]
    Unreachable { tried: String, last: String },
    #[error("{}", .0.message())]
    Status(Status),
    #[error("the server at {address} is not a manager this credential trusts ({reason}); it belongs to another cluster than the credential in --tls-dir or WARREN_TLS_DIR, or it is not a Warren manager")]
    ServerUntrusted { address: String, reason: String },
    #[error("the manager at {address} refused this connection's certificate ({reason}); check that --tls-dir or WARREN_TLS_DIR names a credential of this cluster that has not expired (`warren cluster admin-cert` issues a new one)")]
    CredentialRefused { address: String, reason: String },
    /// A write was sent but no manager could say whether it took effect.
    #[error("the outcome of this change is unknown (request id {request_id}): {last}; it may have taken effect: look before retrying (for example `warren service ls`)")]
    OutcomeUnknown { request_id: String, last: String },
}

impl ClientError {
    /// The gRPC code, for callers that branch on it.
    pub fn code(&self) -> Code {
        match self {
            ClientError::Status(s) => s.code(),
            ClientError::Unreachable { .. } | ClientError::OutcomeUnknown { .. } => Code::Unavailable,
            ClientError::CredentialRefused { .. } | ClientError::ServerUntrusted { .. } => {
                Code::Unauthenticated
            }
            _ => Code::InvalidArgument,
        }
    }
}

pub struct Client {
    endpoints: Vec<(String, Endpoint)>,
    /// mutual TLS with this process's credential (`security`).
    transport: crate::security::Transport,
    /// One open channel per endpoint, reused across calls (it reconnects by itself), so a
    /// process holds at most one connection to each manager; dropped when a manager's TLS
    /// refuses the credential.
    /// Each with the transport generation it was opened at (an older one is replaced: it
    /// presents a renewed-away certificate).
    channels: Mutex<Vec<Option<(u64, Channel)>>>,
    current: AtomicUsize,
    /// Pick the first manager to answer rather than the first listed (off once a caller
    /// chose where to start with `start_at`).
    race_first: std::sync::atomic::AtomicBool,
}

/// The four API services on one channel, and the id of the request they are used for.
#[derive(Clone)]
pub struct Stubs {
    pub cluster: ClusterServiceClient<Channel>,
    pub nodes: NodeServiceClient<Channel>,
    pub services: ServiceServiceClient<Channel>,
    pub tasks: TaskServiceClient<Channel>,
    request_id: String,
}

impl Stubs {
    /// `msg` as a request carrying this call's request id, so that every retry of a write
    /// (through any manager) is applied at most once.
    pub fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Ok(v) = self.request_id.parse() {
            r.metadata_mut().insert(REQUEST_ID_HEADER, v);
        }
        r
    }
}

/// The gRPC metadata key of a request id (see `manager::api`).
pub const REQUEST_ID_HEADER: &str = "x-warren-request-id";

/// Statuses after which a sent request may or may not have taken effect (a manager that
/// knows it applied nothing says so in metadata).
fn outcome_unknown(s: &Status) -> bool {
    let not_applied = s
        .metadata()
        .get(crate::manager::error::OUTCOME_HEADER)
        .is_some_and(|v| v == crate::manager::error::NOT_APPLIED);
    !not_applied
        && matches!(
            s.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
        )
}

impl Client {
    pub fn new<S: AsRef<str>>(
        managers: &[S],
        transport: crate::security::Transport,
    ) -> Result<Self, ClientError> {
        let mut endpoints = Vec::new();
        for m in managers
            .iter()
            .map(|m| m.as_ref().trim())
            .filter(|m| !m.is_empty())
        {
            let url = if m.contains("://") {
                m.to_string()
            } else {
                format!("http://{m}")
            };
            let ep = Endpoint::from_shared(url).map_err(|e| ClientError::BadAddress {
                address: m.to_string(),
                reason: e.to_string(),
            })?;
            endpoints.push((
                m.to_string(),
                ep.connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
                    .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
                    // A manager that vanished without closing the connection is noticed
                    // (long-lived streams: assignments, log sessions, `logs --follow`).
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_timeout(Duration::from_secs(10))
                    .keep_alive_while_idle(true),
            ));
        }
        if endpoints.is_empty() {
            return Err(ClientError::NoManagers);
        }
        Ok(Client {
            channels: Mutex::new(vec![None; endpoints.len()]),
            endpoints,
            transport,
            current: AtomicUsize::new(0),
            race_first: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// Talks to the manager at `i % managers` first (workers spread themselves over the
    /// managers this way instead of all loading the first one).
    pub fn start_at(&self, i: usize) {
        self.current.store(i % self.endpoints.len(), Ordering::Relaxed);
        self.race_first.store(false, Ordering::Relaxed);
    }

    /// Moves to the next manager. The current one's channel is kept: a channel reconnects by
    /// itself when its connection breaks, and a new one beside a stream still open on the old
    /// (the assignment stream) would be a second connection to that manager. Opening new ones
    /// at every failover once took a manager past its connection cap with 5,000 workers.
    pub fn rotate(&self) {
        let n = self.endpoints.len();
        let i = self.current.load(Ordering::Relaxed);
        self.current.store((i + 1) % n, Ordering::Relaxed);
    }

    /// Runs `f` against the current manager; on a connection failure (or `Unavailable` from
    /// a manager that cannot reach a leader) tries the next one, each at most once.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, ClientError>
    where
        F: Fn(Stubs) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_as(&crate::manager::new_id(), &f, &mut false).await
    }

    /// Runs the write `f` (which must send its request through `Stubs::req`) until some
    /// manager gives a definite answer: after a timeout or a lost connection it is sent
    /// again, through the managers in turn, under the same request id, for up to
    /// `WRITE_RETRY_MS`; then it says the outcome is unknown, with the request id.
    pub async fn call_write<T, F, Fut>(&self, f: F) -> Result<T, ClientError>
    where
        F: Fn(Stubs) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let request_id = crate::manager::new_id();
        let start = tokio::time::Instant::now();
        let deadline = Duration::from_millis(WRITE_RETRY_MS);
        let mut backoff = crate::retry::Backoff::new(50, 1_000);
        let mut sent = false;
        loop {
            let res = self.call_as(&request_id, &f, &mut sent).await;
            let last = match res {
                Err(ClientError::Status(s)) if outcome_unknown(&s) => s.message().to_string(),
                // Nothing was ever sent: no doubt to resolve, say so at once.
                Err(e @ ClientError::Unreachable { .. }) if !sent => return Err(e),
                Err(e @ ClientError::Unreachable { .. }) => e.to_string(),
                other => return other,
            };
            let waited = start.elapsed();
            if waited >= deadline {
                return Err(if sent {
                    ClientError::OutcomeUnknown { request_id, last }
                } else {
                    ClientError::Unreachable {
                        tried: self.tried(),
                        last,
                    }
                });
            }
            self.rotate();
            backoff.wait(Some(deadline - waited)).await;
        }
    }

    fn tried(&self) -> String {
        self.endpoints
            .iter()
            .map(|(a, _)| a.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The open channel to endpoint `i`, if it was opened with the current credential.
    fn cached(&self, i: usize) -> Option<Channel> {
        let generation = self.transport.generation();
        match &self.channels.lock().unwrap()[i] {
            Some((g, ch)) if *g == generation => Some(ch.clone()),
            _ => None,
        }
    }

    fn keep(&self, i: usize, ch: Channel) {
        self.channels.lock().unwrap()[i] = Some((self.transport.generation(), ch));
    }

    /// Talks first to whichever manager answers first, when the current one has no open
    /// channel: a cheap `GetClusterInfo` races on all of them (a TCP connect alone is not
    /// enough: a hung host accepts connections and then answers nothing). An unreachable or
    /// hung manager listed first must not cost every command a timeout.
    async fn connect_fastest(&self) {
        let start = self.current.load(Ordering::Relaxed);
        if !self.race_first.load(Ordering::Relaxed)
            || self.cached(start).is_some()
            || self.endpoints.len() < 2
        {
            return;
        }
        let attempts = (0..self.endpoints.len()).map(|k| {
            let i = (start + k) % self.endpoints.len();
            let ep = self.endpoints[i].1.clone();
            let transport = self.transport.clone();
            Box::pin(async move {
                let ch = transport.connect(&ep).await.map_err(|_| ())?;
                let mut probe = ClusterServiceClient::new(ch.clone());
                let mut req = tonic::Request::new(pb::GetClusterInfoRequest::default());
                req.set_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS));
                let answer = tokio::time::timeout(
                    Duration::from_millis(CONNECT_TIMEOUT_MS),
                    probe.get_cluster_info(req),
                );
                match answer.await {
                    Ok(Ok(_)) => Ok((i, ch)),
                    _ => Err(()),
                }
            })
        });
        if let Ok(((i, ch), _)) = futures::future::select_ok(attempts).await {
            self.keep(i, ch);
            self.current.store(i, Ordering::Relaxed);
        }
    }

    async fn call_as<T, F, Fut>(&self, request_id: &str, f: &F, sent: &mut bool) -> Result<T, ClientError>
    where
        F: Fn(Stubs) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.connect_fastest().await;
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = String::new();
        for k in 0..n {
            let i = (start + k) % n;
            let (addr, ep) = &self.endpoints[i];
            let cached = self.cached(i);
            let ch = match cached {
                Some(ch) => ch,
                None => match self.transport.connect(ep).await {
                    Ok(ch) => {
                        self.keep(i, ch.clone());
                        ch
                    }
                    Err(e) => {
                        let chain = error_chain(&e);
                        if let Some(reason) = untrusted_server(&chain) {
                            return Err(ClientError::ServerUntrusted {
                                address: addr.clone(),
                                reason,
                            });
                        }
                        if let Some(i) = chain.find("received fatal alert") {
                            return Err(ClientError::CredentialRefused {
                                address: addr.clone(),
                                reason: chain[i..].to_string(),
                            });
                        }
                        last = format!("{addr}: {chain}");
                        continue;
                    }
                },
            };
            let stubs = Stubs {
                cluster: ClusterServiceClient::new(ch.clone()),
                nodes: NodeServiceClient::new(ch.clone()),
                services: ServiceServiceClient::new(ch.clone()),
                tasks: TaskServiceClient::new(ch),
                request_id: request_id.to_string(),
            };
            *sent = true;
            match f(stubs).await {
                Ok(r) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(r.into_inner());
                }
                // The manager's TLS refused our certificate (another cluster's, expired,
                // revoked by a CA rotation): no other manager will take it either.
                Err(s) if tls_alert(&s).is_some() => {
                    self.channels.lock().unwrap()[i] = None;
                    return Err(ClientError::CredentialRefused {
                        address: addr.clone(),
                        reason: tls_alert(&s).unwrap_or_default(),
                    });
                }
                // A manager that cannot reach a leader, or that did not answer in time (a hung
                // host): try the next one. A write's retry carries the same request id.
                Err(s)
                    if matches!(
                        s.code(),
                        Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded
                    ) =>
                {
                    // The channel is kept (see `rotate`).
                    if k + 1 == n {
                        return Err(ClientError::Status(s));
                    }
                    last = format!("{addr}: {}", s.message());
                }
                Err(s) => return Err(ClientError::Status(s)),
            }
        }
        Err(ClientError::Unreachable {
            tried: self.tried(),
            last,
        })
    }
}

/// Typed calls for the operations the CLI, the simulator and the tools share.
impl Client {
    /// Starts a CA rotation; the answer carries the caller's new operator certificate for
    /// the key of `csr_der`. Sent once: a retry would find the rotation already started.
    pub async fn rotate_ca(&self, csr_der: Vec<u8>) -> Result<pb::RotateCaResponse, ClientError> {
        self.call(|mut s| {
            let req = pb::RotateCaRequest {
                csr_der: csr_der.clone(),
            };
            async move { s.cluster.rotate_ca(req).await }
        })
        .await
    }

    /// Says this node holds the certificate it calls with (see `ConfirmCertificate`).
    pub async fn confirm_certificate(&self) -> Result<(), ClientError> {
        self.call(|mut s| async move {
            s.cluster
                .confirm_certificate(pb::ConfirmCertificateRequest {})
                .await
        })
        .await
        .map(|_| ())
    }

    /// The bytes of a backup file (`manager::backup`), as the managers sent them; the caller
    /// checks them before keeping them.
    pub async fn backup(&self) -> Result<Vec<u8>, ClientError> {
        let mut stream = self
            .call(|mut s| async move { s.cluster.backup(pb::BackupRequest {}).await })
            .await?;
        let mut out = Vec::new();
        // A message past the limit is the stream's end as far as we care: the limit is the
        // managers' too, so such a stream is not a backup.
        let max = crate::core::limits::MAX_BACKUP_BYTES as usize + (1 << 20);
        while let Some(chunk) = stream.message().await.map_err(ClientError::Status)? {
            out.extend_from_slice(&chunk.data);
            if out.len() > max {
                return Err(ClientError::Status(Status::out_of_range(format!(
                    "the backup stream passed {max} bytes, over the backup limit"
                ))));
            }
        }
        Ok(out)
    }

    pub async fn ca_status(&self) -> Result<pb::CaStatus, ClientError> {
        self.call(|mut s| async move { s.cluster.get_ca_status(pb::GetCaStatusRequest {}).await })
            .await
    }

    /// The CAs the cluster trusts, the signing one first.
    pub async fn ca_certificates(&self) -> Result<pb::CaCertificate, ClientError> {
        self.call(|mut s| async move { s.cluster.get_ca_certificate(pb::GetCaCertificateRequest {}).await })
            .await
    }

    pub async fn create_service(&self, spec: pb::ServiceSpec) -> Result<pb::Service, ClientError> {
        self.call_write(|mut s| {
            let req = s.req(pb::CreateServiceRequest {
                spec: Some(spec.clone()),
            });
            async move { s.services.create_service(req).await }
        })
        .await
    }

    pub async fn delete_service(&self, service: &str) -> Result<pb::DeleteServiceResponse, ClientError> {
        self.call_write(|mut s| {
            let req = s.req(pb::DeleteServiceRequest {
                service: service.to_string(),
            });
            async move { s.services.delete_service(req).await }
        })
        .await
    }

    /// A new spec for `service`; `expected_version` 0 = whatever is current, else the
    /// `Service.version` it was read at (refused if it changed since).
    pub async fn update_service(
        &self,
        service: &str,
        spec: pb::ServiceSpec,
        expected_version: u64,
        force: bool,
    ) -> Result<pb::Service, ClientError> {
        self.call_write(|mut s| {
            let req = s.req(pb::UpdateServiceRequest {
                service: service.to_string(),
                spec: Some(spec.clone()),
                expected_version,
                force,
            });
            async move { s.services.update_service(req).await }
        })
        .await
    }

    /// Back to spec version `to_version` (0: the one the latest update replaced).
    pub async fn rollback_service(&self, service: &str, to_version: u64) -> Result<pb::Service, ClientError> {
        self.call_write(|mut s| {
            let req = s.req(pb::RollbackServiceRequest {
                service: service.to_string(),
                to_version,
            });
            async move { s.services.rollback_service(req).await }
        })
        .await
    }

    pub async fn scale_service(&self, service: &str, replicas: i64) -> Result<pb::Service, ClientError> {
        self.call_write(|mut s| {
            let req = s.req(pb::ScaleServiceRequest {
                service: service.to_string(),
                replicas,
                expected_version: 0,
            });
            async move { s.services.scale_service(req).await }
        })
        .await
    }

    /// Every item of a paged list call: `f(stubs, page_token)` fetches one page as
    /// (items, next page token).
    async fn all_pages<T, F, Fut>(&self, f: F) -> Result<Vec<T>, ClientError>
    where
        F: Fn(Stubs, String) -> Fut,
        Fut: Future<Output = Result<tonic::Response<(Vec<T>, String)>, Status>>,
    {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let (items, next) = self.call(|s| f(s, token.clone())).await?;
            out.extend(items);
            if next.is_empty() {
                return Ok(out);
            }
            token = next;
        }
    }

    /// A service's task output, as a stream of lines (notices among them).
    pub async fn service_logs(
        &self,
        req: pb::ServiceLogsRequest,
    ) -> Result<tonic::Streaming<pb::LogLine>, ClientError> {
        self.call(|mut s| {
            let req = req.clone();
            async move { s.services.service_logs(req).await }
        })
        .await
    }

    /// Tasks of `service` (all services if empty).
    pub async fn get_service(&self, service: &str, consistent: bool) -> Result<pb::Service, ClientError> {
        self.call(|mut s| {
            let service = service.to_string();
            async move {
                s.services
                    .get_service(pb::GetServiceRequest { service, consistent })
                    .await
            }
        })
        .await
    }

    pub async fn list_tasks(&self, service: &str, consistent: bool) -> Result<Vec<pb::Task>, ClientError> {
        self.all_pages(|mut s, page_token| {
            let req = pb::ListTasksRequest {
                service: service.to_string(),
                consistent,
                page_token,
                ..Default::default()
            };
            async move {
                Ok(s.tasks
                    .list_tasks(req)
                    .await?
                    .map(|r| (r.tasks, r.next_page_token)))
            }
        })
        .await
    }

    pub async fn list_nodes(&self) -> Result<Vec<pb::Node>, ClientError> {
        self.all_pages(|mut s, page_token| {
            let req = pb::ListNodesRequest {
                page_token,
                ..Default::default()
            };
            async move {
                Ok(s.nodes
                    .list_nodes(req)
                    .await?
                    .map(|r| (r.nodes, r.next_page_token)))
            }
        })
        .await
    }

    /// Every service, in name order.
    pub async fn list_services(&self, consistent: bool) -> Result<Vec<pb::Service>, ClientError> {
        self.all_pages(|mut s, page_token| {
            let req = pb::ListServicesRequest {
                consistent,
                page_token,
                ..Default::default()
            };
            async move {
                Ok(s.services
                    .list_services(req)
                    .await?
                    .map(|r| (r.services, r.next_page_token)))
            }
        })
        .await
    }

    pub async fn join_token(
        &self,
        role: pb::Role,
        ttl_seconds: u64,
        rotate: bool,
    ) -> Result<pb::JoinToken, ClientError> {
        let role = role as i32;
        self.call(|mut s| async move {
            s.cluster
                .generate_join_token(pb::GenerateJoinTokenRequest {
                    role,
                    ttl_seconds,
                    rotate,
                })
                .await
        })
        .await
    }
}

/// Why our TLS refused the server's certificate, from an error's text.
fn untrusted_server(chain: &str) -> Option<String> {
    let i = chain.find("invalid peer certificate")?;
    let rest = &chain[i..];
    // rustls shows a verifier's own reason as `Other(OtherError(Custom { .. error: "WHY" }))`.
    let why = rest
        .split_once("error: \"")
        .and_then(|(_, r)| r.split_once('"'))
        .map_or(rest, |(w, _)| w);
    Some(why.to_string())
}

/// The TLS alert behind a failed call, if the peer refused our certificate.
fn tls_alert(s: &Status) -> Option<String> {
    use std::error::Error;
    let mut cur: Option<&dyn Error> = s.source();
    while let Some(e) = cur {
        let text = e.to_string();
        if let Some(i) = text.find("received fatal alert") {
            return Some(text[i..].to_string());
        }
        cur = e.source();
    }
    None
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
