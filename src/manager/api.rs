//! The public `warren.v1` API. Reads come from this manager's applied state (or, with
//! `consistent`, after a read-index check on the leader); writes go through `Manager::write`.

use super::convert::{health_from_pb, service_to_pb, spec_from_pb, task_state_from_pb, task_to_pb};
use super::join::JOIN_DEADLINE_MS;
use super::leader::{self, LeaderAnswer, LeaderOp};
use super::{now_ms, ApiError, ApiResult, ManagerRef};
use crate::core::authz::{Caller, Rpc, Target};
use crate::core::{self, token, Command, Outcome, StateError};
use crate::proto::v1 as pb;
use crate::proto::v1::cluster_service_server::{ClusterService, ClusterServiceServer};
use crate::proto::v1::node_service_server::{NodeService, NodeServiceServer};
use crate::proto::v1::service_service_server::{ServiceService, ServiceServiceServer};
use crate::proto::v1::task_service_server::{TaskService, TaskServiceServer};
use crate::raft::ManagerNode;
use std::future::Future;
use std::net::SocketAddr;
use tonic::{Request, Response, Status};
use tracing::Instrument;

#[derive(Clone)]
struct Api {
    m: ManagerRef,
    /// Open assignment streams per node (at most `MAX_STREAMS_PER_NODE` each).
    streams: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, usize>>>,
}

/// One node's claim on an assignment stream; given back when the stream is dropped (the
/// worker went away or the client cancelled).
struct StreamSlot {
    streams: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, usize>>>,
    node: String,
}

impl StreamSlot {
    fn take(api: &Api, node: &str) -> Result<StreamSlot, Status> {
        let mut streams = api.streams.lock().unwrap();
        let n = streams.entry(node.to_string()).or_insert(0);
        if *n >= core::limits::MAX_STREAMS_PER_NODE {
            return Err(Status::resource_exhausted(format!(
                "node {} already has {} assignment streams open (at most {}); a worker needs one",
                core::state::cut(node),
                n,
                core::limits::MAX_STREAMS_PER_NODE
            )));
        }
        *n += 1;
        crate::metrics::get().assignment_streams.inc();
        Ok(StreamSlot {
            streams: api.streams.clone(),
            node: node.to_string(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        crate::metrics::get().assignment_streams.dec();
        let mut streams = self.streams.lock().unwrap();
        if let Some(n) = streams.get_mut(&self.node) {
            *n -= 1;
            if *n == 0 {
                streams.remove(&self.node);
            }
        }
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn ok<T>(r: ApiResult<T>) -> Reply<T> {
    r.map(Response::new).map_err(Status::from)
}

fn unexpected(o: Outcome) -> ApiError {
    // Details go to the log, not to the caller (they can be large and are internal).
    tracing::error!(outcome = ?o, "unexpected state machine outcome");
    ApiError::Internal("the cluster answered this request with an unexpected outcome (see the manager's log); it may have taken effect".into())
}

/// Most items one list page holds (and the page size when the caller asks for 0).
pub const MAX_PAGE_ITEMS: usize = 1_000;

/// One page of `items` (in key order, starting after `token`): at most `size` items (0 = the
/// most) and about `MAX_PAGE_BYTES`; returns the page and the token of the next one ("" at
/// the end). Keeps every reply far below what a client accepts, however large the state.
fn page<'a, T: prost::Message + 'a>(
    items: impl Iterator<Item = (&'a str, T)>,
    size: u32,
) -> (Vec<T>, String) {
    let max = if size == 0 {
        MAX_PAGE_ITEMS
    } else {
        (size as usize).min(MAX_PAGE_ITEMS)
    };
    let (mut out, mut bytes) = (Vec::new(), 0usize);
    for (key, item) in items {
        let len = item.encoded_len();
        if !out.is_empty() && (out.len() >= max || bytes + len > core::limits::MAX_PAGE_BYTES) {
            return (out, last_key(key));
        }
        bytes += len;
        out.push(item);
    }
    (out, String::new())
}

/// The token that makes the next page start at `key` (pages start after their token).
fn last_key(next: &str) -> String {
    // Tokens name the first key of the next page, marked so that "start after" works.
    format!("@{next}")
}

/// The range a page token selects: keys from the marked key on, or all; a token no reply
/// gave is refused.
fn after(token: &str) -> Result<std::ops::Bound<String>, Status> {
    match token.strip_prefix('@') {
        Some(k) => Ok(std::ops::Bound::Included(k.to_string())),
        None if token.is_empty() => Ok(std::ops::Bound::Unbounded),
        None => Err(ApiError::State(StateError::invalid(
            "page_token",
            format!(
                "{} is not a page token; pass the next_page_token of the previous reply, or nothing",
                core::limits::quote(token)
            ),
        ))
        .into()),
    }
}

/// gRPC metadata carrying a client's request id: retries of one write through any manager
/// carry the same id, and the state machine applies it at most once.
pub const REQUEST_ID_HEADER: &str = "x-warren-request-id";

/// The client's request id, if it sent one (1-64 characters of letters, digits, '-', '_'),
/// with a digest of `method` and the request body: the same id with another request is
/// refused by the state machine rather than answered with the first one's outcome.
fn request_id<T: prost::Message>(
    method: &str,
    req: &Request<T>,
) -> Result<Option<super::leader::RequestId>, Status> {
    let Some(v) = req.metadata().get(REQUEST_ID_HEADER) else {
        return Ok(None);
    };
    let ok = v.to_str().ok().filter(|s| {
        !s.is_empty()
            && s.len() <= core::limits::MAX_REQUEST_ID_BYTES
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    });
    let Some(id) = ok else {
        return Err(ApiError::State(StateError::invalid(
            REQUEST_ID_HEADER,
            format!(
                "use 1-{} letters, digits, '-' or '_'",
                core::limits::MAX_REQUEST_ID_BYTES
            ),
        ))
        .into());
    };
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(method.as_bytes());
    h.update([0]);
    h.update(req.get_ref().encode_to_vec());
    let digest = h.finalize();
    let fingerprint = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")).max(1);
    Ok(Some(super::leader::RequestId {
        id: format!("client-{id}"),
        fingerprint,
    }))
}

fn not_found(kind: &str, name: &str) -> ApiError {
    ApiError::State(StateError::NotFound {
        kind: kind.into(),
        name: core::state::cut(name),
    })
}

impl Api {
    /// Who sent `req`, if they may call `rpc` about `target` (`core::authz`).
    fn allow<T>(&self, req: &Request<T>, rpc: Rpc, target: Target<'_>) -> Result<Caller, Status> {
        let who = self.read(|st| {
            crate::security::check(req, rpc, target, |serial| st.pki.revoked.contains_key(serial))
        });
        who.map_err(|e| {
            tracing::info!(rpc = ?rpc, error = %e, "request refused");
            ApiError::Denied(e).into()
        })
    }

    /// `allow` for a caller already known (a stream's later messages).
    fn allow_caller(&self, who: &Caller, rpc: Rpc, target: Target<'_>) -> Result<(), Status> {
        self.read(|st| {
            crate::security::check_caller(who, rpc, target, |serial| st.pki.revoked.contains_key(serial))
        })
        .map_err(|e| ApiError::Denied(e).into())
    }

    fn ca_status(&self) -> pb::CaStatus {
        self.read(|st| {
            let fp = |c: &[u8]| {
                if c.is_empty() {
                    String::new()
                } else {
                    token::ca_fingerprint(c)
                }
            };
            let r = st.pki.rotation.clone().unwrap_or_default();
            pb::CaStatus {
                ca_fingerprint: fp(&st.pki.ca_cert_der),
                rotating: st.pki.rotation.is_some(),
                old_ca_fingerprint: fp(&r.old_ca_cert_der),
                pending: r.pending.into_iter().collect(),
                total: r.total,
                started_unix_ms: r.started_ms,
            }
        })
    }

    /// The lifetime of node certificates (`cluster init --cert-ttl`).
    fn node_cert_ttl(&self) -> std::time::Duration {
        match self.read(|st| st.pki.cert_ttl_ms) {
            ms if ms > 0 => std::time::Duration::from_millis(ms as u64),
            _ => crate::security::pki::DEFAULT_CERT_TTL,
        }
    }

    /// The cluster CA, loaded from the replicated state.
    fn ca(&self) -> ApiResult<(String, crate::security::pki::Ca)> {
        let (cluster_id, cert, key) = self.read(|st| {
            (
                st.cluster_id.clone(),
                st.pki.ca_cert_der.clone(),
                st.pki.ca_key_pkcs8.clone(),
            )
        });
        if cert.is_empty() {
            return Err(ApiError::Unavailable(
                "the cluster is still initialising (no CA yet); retry in a moment".into(),
            ));
        }
        let ca = crate::security::pki::Ca::load(&cert, &key).map_err(|e| {
            ApiError::Internal(format!("the cluster CA in the replicated state is unusable: {e}"))
        })?;
        Ok((cluster_id, ca))
    }

    /// Signs `csr_der` for `role`/`id`, records the certificate in the replicated state
    /// (so that removing its holder revokes it) and returns it with the CA.
    async fn sign_and_record(
        &self,
        csr_der: &[u8],
        role: crate::security::pki::CertRole,
        id: &str,
        ttl: std::time::Duration,
        renews: Option<String>,
    ) -> Reply<pb::IssuedCertificate> {
        if csr_der.len() > 16 * 1024 {
            return Err(ApiError::State(StateError::invalid("csr", "at most 16 KiB")).into());
        }
        let (cluster_id, ca) = self.ca()?;
        let now = crate::clock::now();
        let cert = ca
            .sign(csr_der, &cluster_id, role, id, now, ttl)
            .map_err(|e| ApiError::State(StateError::invalid("certificate request", e.to_string())))?;
        let issued = crate::security::pki::identity(&cert).map_err(|e| ApiError::Internal(e.to_string()))?;
        let not_after_ms = issued
            .not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        self.m
            .write(Command::RecordCertificate {
                holder: core::state::holder(role.as_str(), id),
                serial_hex: issued.serial_hex.clone(),
                not_after_ms,
                now_ms: now_ms(),
                renews,
                issuer_fingerprint: ca.fingerprint_hex(),
            })
            .await?;
        tracing::info!(holder = %core::state::holder(role.as_str(), id), serial = %issued.serial_hex, "certificate issued");
        let (ca_der, chain_der) = self.read(|st| {
            // The chain only while the CA that signed it is still the current one.
            let current = st.pki.ca_cert_der == ca.cert_der;
            (
                st.pki.trusted(),
                if current { st.pki.chain() } else { Vec::new() },
            )
        });
        ok(Ok(pb::IssuedCertificate {
            cert_der: cert,
            ca_der,
            chain_der,
        }))
    }

    async fn register_worker(&self, req: pb::RegisterNodeRequest) -> Reply<pb::RegisterNodeResponse> {
        // The caller holds this node's certificate (checked by `allow`), which only a
        // worker token could get it.
        core::validate::node_id(&req.node_id).map_err(ApiError::State)?;
        let capacity = req.capacity.unwrap_or_default();
        let cmd = Command::RegisterNode {
            id: req.node_id,
            role: core::Role::Worker,
            address: req.address,
            labels: req.labels,
            capacity: core::Resources {
                cpu_millis: capacity.cpu_millis,
                memory_bytes: capacity.memory_bytes,
            },
            now_ms: now_ms(),
        };
        let node = match self.m.write(cmd).await? {
            Outcome::Node(n) => n,
            o => return Err(unexpected(o).into()),
        };
        tracing::info!("worker registered");
        ok(Ok(pb::RegisterNodeResponse {
            node: Some(node_to_pb(&node)),
            cluster_id: self.read(|st| st.cluster_id.clone()),
        }))
    }

    async fn join_manager(&self, req: pb::JoinClusterRequest) -> Reply<pb::JoinClusterResponse> {
        // Check the token against state at least as new as the leader's, so a token issued
        // through another manager a moment ago is known here.
        self.m.read_barrier().await?;
        self.read(|st| token::check(st, &req.token, core::Role::Manager, now_ms()))
            .map_err(ApiError::Token)?;
        if req.node_id == 0 {
            return Err(ApiError::State(StateError::invalid("node id", "must be greater than 0")).into());
        }
        for (flag, addr) in [("--api-addr", &req.api_addr), ("--bind-addr", &req.raft_addr)] {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(ApiError::State(StateError::invalid(
                    flag,
                    format!("{addr:?} is not HOST:PORT with a numeric IP"),
                ))
                .into());
            }
        }
        let op = LeaderOp::AddManager {
            id: req.node_id,
            node: ManagerNode {
                api_addr: req.api_addr,
                raft_addr: req.raft_addr,
            },
        };
        let answer = leader::call(&self.m, op, std::time::Duration::from_millis(JOIN_DEADLINE_MS)).await?;
        let warning = match answer {
            LeaderAnswer::Members { warning, .. } => warning.unwrap_or_default(),
            other => return Err(ApiError::Internal(format!("unexpected leader answer {other:?}")).into()),
        };
        let info = self.cluster_info();
        ok(Ok(pb::JoinClusterResponse {
            cluster_id: info.cluster_id,
            leader_id: info.leader_id,
            managers: info.managers,
            warning,
        }))
    }

    /// Waits until this manager has applied everything the leader had committed when the
    /// read arrived (read-index), when the caller asked for a linearizable read.
    async fn read_barrier(&self, consistent: bool) -> ApiResult<()> {
        if !consistent {
            return Ok(());
        }
        self.m.read_barrier().await
    }

    /// A short look at the state, under its read lock.
    fn read<T>(&self, f: impl FnOnce(&core::ClusterState) -> T) -> T {
        f(&self.m.state.read().unwrap().state)
    }

    /// A walk over the state (a listing, a count of every task): on a copy, with the lock
    /// released, so that `apply` never waits on it (`raft::store::view`).
    fn walk<T>(&self, f: impl FnOnce(&core::ClusterState) -> T) -> T {
        f(&crate::raft::store::view(&self.m.state).state)
    }

    fn cluster_info(&self) -> pb::ClusterInfo {
        let metrics = self.m.raft.metrics().borrow().clone();
        // A leader without a quorum is not reported as the leader (check-quorum).
        let quorum_lost = self.m.quorum_lost(&metrics);
        let leader = metrics.current_leader.filter(|_| quorum_lost.is_none());
        let membership = metrics.membership_config.membership().clone();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let last_log = metrics.last_log_index.unwrap_or(0);
        let replication = match &metrics.state {
            openraft::ServerState::Leader => metrics.replication.clone(),
            _ => None,
        };
        let managers = membership
            .nodes()
            .map(|(id, node)| {
                let matched = replication.as_ref().and_then(|r| r.get(id).cloned().flatten());
                pb::ManagerInfo {
                    node_id: *id,
                    api_addr: node.api_addr.clone(),
                    raft_addr: node.raft_addr.clone(),
                    voter: voters.contains(id),
                    reachable: self.m.peers.is_reachable(self.m.id, *id),
                    last_contact_ms: if *id == self.m.id {
                        Some(0)
                    } else {
                        self.m.peers.since_contact_ms(*id)
                    },
                    replication_lag: if *id == self.m.id && replication.is_some() {
                        Some(0)
                    } else {
                        matched.map(|m| last_log.saturating_sub(m.index))
                    },
                    version: if *id == self.m.id {
                        crate::build::describe()
                    } else {
                        self.m.peers.version(*id).unwrap_or_default()
                    },
                }
            })
            .collect();
        let leader_api_addr = leader
            .and_then(|l| membership.get_node(&l).map(|n| n.api_addr.clone()))
            .unwrap_or_default();
        let (cluster_id, services, nodes, tasks) = self.walk(|st| {
            (
                st.cluster_id.clone(),
                st.services.len() as u32,
                st.nodes.len() as u32,
                st.tasks.len() as u32,
            )
        });
        pb::ClusterInfo {
            cluster_id,
            leader_id: leader.unwrap_or(0),
            leader_api_addr,
            term: metrics.current_term,
            commit_index: metrics.last_applied.map_or(0, |l| l.index),
            last_applied: metrics.last_applied.map_or(0, |l| l.index),
            last_log_index: metrics.last_log_index,
            managers,
            answered_by: self.m.id,
            services,
            nodes,
            tasks,
            snapshot_index: metrics.snapshot.map_or(0, |l| l.index),
            purged_index: metrics.purged.map_or(0, |l| l.index),
            leader_note: quorum_lost.unwrap_or_default(),
        }
    }

    async fn write_service(
        &self,
        cmd: Command,
        rid: Option<super::leader::RequestId>,
    ) -> ApiResult<pb::Service> {
        match self.m.write_once(cmd, rid).await? {
            Outcome::Service(s) => Ok(service_to_pb(&s)),
            o => Err(unexpected(o)),
        }
    }
}

#[tonic::async_trait]
impl ServiceService for Api {
    type ServiceLogsStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::LogLine, Status>> + Send>>;

    async fn service_logs(&self, req: Request<pb::ServiceLogsRequest>) -> Reply<Self::ServiceLogsStream> {
        self.allow(&req, Rpc::ServiceLogs, Target::None)?;
        let req = req.into_inner();
        let invalid = |field: &str, reason: String| -> Status {
            ApiError::State(StateError::InvalidArgument {
                field: field.into(),
                reason,
            })
            .into()
        };
        if req.tail < -1 {
            return Err(invalid(
                "tail",
                format!("{} is not a line count; use -1 for all, or 0 and up", req.tail),
            ));
        }
        // Per node: (task id, slot) of the service's tasks that ran somewhere.
        let by_node: std::collections::BTreeMap<String, Vec<(String, u32)>> = self
            .read(|st| {
                let svc = st
                    .service(&req.service)
                    .ok_or_else(|| not_found("service", &req.service))?;
                let mut tasks: Vec<&core::Task> = st
                    .tasks
                    .values()
                    .filter(|t| t.service_id == svc.id && !t.node_id.is_empty())
                    .map(|t| t.as_ref())
                    .collect();
                if !req.task_id.is_empty() {
                    tasks = vec![core::state::task_named(tasks, &req.task_id).map_err(ApiError::State)?];
                }
                if tasks.len() > core::limits::MAX_LOG_TASKS {
                    return Err(ApiError::State(StateError::FailedPrecondition(format!(
                        "service {} has {} tasks with logs; at most {} at once: pick one with --task",
                        req.service,
                        tasks.len(),
                        core::limits::MAX_LOG_TASKS
                    ))));
                }
                let mut by_node: std::collections::BTreeMap<String, Vec<(String, u32)>> = Default::default();
                for t in tasks {
                    by_node
                        .entry(t.node_id.clone())
                        .or_default()
                        .push((t.id.clone(), t.slot));
                }
                Ok(by_node)
            })
            .map_err(Status::from)?;
        let tail = if req.tail < 0 {
            core::limits::MAX_LOG_TAIL_LINES as i64
        } else {
            req.tail.min(core::limits::MAX_LOG_TAIL_LINES as i64)
        };
        let mut streams = Vec::new();
        for (node, tasks) in by_node {
            let slots: std::collections::BTreeMap<String, u32> = tasks.iter().cloned().collect();
            let ids: Vec<String> = tasks.into_iter().map(|(id, _)| id).collect();
            let lines = super::logs::from_node(&self.m, &node, ids, req.follow, tail).await;
            let node_id = node.clone();
            streams.push(futures::StreamExt::map(lines, move |mut l| {
                l.slot = slots.get(&l.task_id).copied().unwrap_or(0);
                l.node_id = node_id.clone();
                Ok(l)
            }));
        }
        Ok(Response::new(Box::pin(futures::stream::select_all(streams))))
    }

    async fn create_service(&self, req: Request<pb::CreateServiceRequest>) -> Reply<pb::Service> {
        self.allow(&req, Rpc::CreateService, Target::None)?;
        let rid = request_id("create_service", &req)?;
        let spec = spec_from_pb(req.into_inner().spec.unwrap_or_default()).map_err(ApiError::State)?;
        let id = super::new_id();
        let span = tracing::info_span!("create_service", service_id = %id, name = %spec.name);
        let cmd = Command::CreateService {
            id: id.clone(),
            spec,
            now_ms: now_ms(),
        };
        let res = self.write_service(cmd, rid).instrument(span).await;
        ok(res)
    }

    async fn get_service(&self, req: Request<pb::GetServiceRequest>) -> Reply<pb::Service> {
        self.allow(&req, Rpc::GetService, Target::None)?;
        let req = req.into_inner();
        self.read_barrier(req.consistent).await?;
        ok(self
            .read(|st| st.service(&req.service).map(service_to_pb))
            .ok_or_else(|| not_found("service", &req.service)))
    }

    async fn list_services(&self, req: Request<pb::ListServicesRequest>) -> Reply<pb::ListServicesResponse> {
        self.allow(&req, Rpc::ListServices, Target::None)?;
        let req = req.into_inner();
        let from = after(&req.page_token)?;
        self.read_barrier(req.consistent).await?;
        let (services, next_page_token) = self.walk(|st| {
            let by_name = st
                .service_names
                .range((from.clone(), std::ops::Bound::Unbounded))
                .filter_map(|(name, id)| st.services.get(id).map(|s| (name.as_str(), service_to_pb(s))));
            page(by_name, req.page_size)
        });
        ok(Ok(pb::ListServicesResponse {
            services,
            next_page_token,
        }))
    }

    async fn update_service(&self, req: Request<pb::UpdateServiceRequest>) -> Reply<pb::Service> {
        self.allow(&req, Rpc::UpdateService, Target::None)?;
        let rid = request_id("update_service", &req)?;
        let req = req.into_inner();
        let spec = spec_from_pb(req.spec.unwrap_or_default()).map_err(ApiError::State)?;
        ok(self
            .write_service(
                Command::UpdateService {
                    service: req.service,
                    spec,
                    expected_version: req.expected_version,
                    force: req.force,
                    now_ms: now_ms(),
                },
                rid,
            )
            .await)
    }

    async fn rollback_service(&self, req: Request<pb::RollbackServiceRequest>) -> Reply<pb::Service> {
        self.allow(&req, Rpc::RollbackService, Target::None)?;
        let rid = request_id("rollback_service", &req)?;
        let req = req.into_inner();
        ok(self
            .write_service(
                Command::RollbackService {
                    service: req.service,
                    to_version: req.to_version,
                    now_ms: now_ms(),
                },
                rid,
            )
            .await)
    }

    async fn scale_service(&self, req: Request<pb::ScaleServiceRequest>) -> Reply<pb::Service> {
        self.allow(&req, Rpc::ScaleService, Target::None)?;
        let rid = request_id("scale_service", &req)?;
        let req = req.into_inner();
        ok(self
            .write_service(
                Command::ScaleService {
                    service: req.service,
                    replicas: req.replicas,
                    expected_version: req.expected_version,
                    now_ms: now_ms(),
                },
                rid,
            )
            .await)
    }

    async fn delete_service(
        &self,
        req: Request<pb::DeleteServiceRequest>,
    ) -> Reply<pb::DeleteServiceResponse> {
        self.allow(&req, Rpc::DeleteService, Target::None)?;
        let rid = request_id("delete_service", &req)?;
        let req = req.into_inner();
        ok(
            match self
                .m
                .write_once(Command::DeleteService { service: req.service }, rid)
                .await
            {
                Ok(Outcome::ServiceDeleted { id }) => Ok(pb::DeleteServiceResponse { id }),
                Ok(o) => Err(unexpected(o)),
                Err(e) => Err(e),
            },
        )
    }
}

fn role_to_pb(r: core::Role) -> pb::Role {
    match r {
        core::Role::Worker => pb::Role::Worker,
        core::Role::Manager => pb::Role::Manager,
    }
}

fn node_to_pb(n: &core::Node) -> pb::Node {
    pb::Node {
        agent_version: n.agent_version.clone(),
        id: n.id.clone(),
        role: role_to_pb(n.role) as i32,
        address: n.address.clone(),
        status: match n.status {
            core::NodeStatus::Unknown => pb::NodeStatus::Unknown,
            core::NodeStatus::Ready => pb::NodeStatus::Ready,
            core::NodeStatus::Down => pb::NodeStatus::Down,
        } as i32,
        availability: match n.availability {
            core::Availability::Active => pb::NodeAvailability::Active,
            core::Availability::Drain => pb::NodeAvailability::Drain,
            core::Availability::Pause => pb::NodeAvailability::Pause,
        } as i32,
        labels: n.labels.clone(),
        capacity: Some(pb::Resources {
            cpu_millis: n.capacity.cpu_millis,
            memory_bytes: n.capacity.memory_bytes,
        }),
        last_heartbeat_ms: n.last_heartbeat_ms,
        created_at_ms: n.created_at_ms,
        version: n.version,
    }
}

#[tonic::async_trait]
impl NodeService for Api {
    async fn register_node(&self, req: Request<pb::RegisterNodeRequest>) -> Reply<pb::RegisterNodeResponse> {
        self.allow(&req, Rpc::RegisterNode, Target::Node(&req.get_ref().node_id))?;
        let req = req.into_inner();
        let span = tracing::info_span!("register_node", node = %req.node_id);
        self.register_worker(req).instrument(span).await
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Reply<pb::HeartbeatResponse> {
        self.allow(&req, Rpc::Heartbeat, Target::Node(&req.get_ref().node_id))?;
        let req = req.into_inner();
        tracing::trace!(target: "warren::heartbeat", node = %req.node_id, "heartbeat received");
        let mut reports = Vec::with_capacity(req.changes.len());
        for c in req.changes {
            let state = task_state_from_pb(c.state).ok_or_else(|| {
                ApiError::State(StateError::invalid(
                    "task state",
                    format!("{} is not a task state", c.state),
                ))
            })?;
            reports.push(core::state::TaskReport {
                task_id: c.task_id,
                state,
                message: c.message,
                exit_code: c.exit_code,
                container_id: c.container_id,
                health: health_from_pb(c.health),
            });
        }
        // Bounded here, before anything is forwarded or logged (a 4 MB message once became
        // a 4 MB Raft entry per heartbeat).
        core::validate::task_reports(&reports).map_err(ApiError::State)?;
        core::validate::agent_version(&req.version).map_err(ApiError::State)?;
        let op = LeaderOp::Heartbeat {
            node_id: req.node_id,
            reports,
            version: req.version,
        };
        leader::call(
            &self.m,
            op,
            std::time::Duration::from_millis(HEARTBEAT_DEADLINE_MS),
        )
        .await?;
        ok(Ok(pb::HeartbeatResponse {
            next_heartbeat_ms: self.read(|st| self.m.heartbeat_interval_ms(st)),
            trust_fingerprint: self.read(|st| crate::security::pki::bundle_fingerprint(&st.pki.trusted())),
        }))
    }

    async fn list_nodes(&self, req: Request<pb::ListNodesRequest>) -> Reply<pb::ListNodesResponse> {
        self.allow(&req, Rpc::ListNodes, Target::None)?;
        let req = req.into_inner();
        let from = after(&req.page_token)?;
        self.read_barrier(req.consistent).await?;
        let (nodes, next_page_token) = self.walk(|st| {
            let nodes = st
                .nodes
                .range((from.clone(), std::ops::Bound::Unbounded))
                .map(|(id, n)| (id.as_str(), node_to_pb(n)));
            page(nodes, req.page_size)
        });
        ok(Ok(pb::ListNodesResponse {
            nodes,
            next_page_token,
        }))
    }

    async fn get_node(&self, req: Request<pb::GetNodeRequest>) -> Reply<pb::Node> {
        self.allow(&req, Rpc::GetNode, Target::None)?;
        let req = req.into_inner();
        self.read_barrier(req.consistent).await?;
        ok(self
            .read(|st| st.nodes.get(&req.id).map(node_to_pb))
            .ok_or_else(|| not_found("node", &req.id)))
    }

    async fn update_node(&self, req: Request<pb::UpdateNodeRequest>) -> Reply<pb::Node> {
        self.allow(&req, Rpc::UpdateNode, Target::None)?;
        let rid = request_id("update_node", &req)?;
        let req = req.into_inner();
        let availability = match pb::NodeAvailability::try_from(req.availability) {
            Ok(pb::NodeAvailability::Active) => Some(core::Availability::Active),
            Ok(pb::NodeAvailability::Drain) => Some(core::Availability::Drain),
            Ok(pb::NodeAvailability::Pause) => Some(core::Availability::Pause),
            Ok(pb::NodeAvailability::Unspecified) => None,
            Err(_) => {
                return Err(ApiError::State(StateError::invalid(
                    "availability",
                    "use active, drain or pause",
                ))
                .into())
            }
        };
        let cmd = Command::UpdateNode {
            id: req.id,
            availability,
            labels: req.set_labels.then_some(req.labels),
            expected_version: req.expected_version,
        };
        ok(match self.m.write_once(cmd, rid).await {
            Ok(Outcome::Node(n)) => Ok(node_to_pb(&n)),
            Ok(o) => Err(unexpected(o)),
            Err(e) => Err(e),
        })
    }

    async fn remove_node(&self, req: Request<pb::RemoveNodeRequest>) -> Reply<pb::RemoveNodeResponse> {
        self.allow(&req, Rpc::RemoveNode, Target::None)?;
        let rid = request_id("remove_node", &req)?;
        let req = req.into_inner();
        ok(self
            .m
            .write_once(
                Command::RemoveNode {
                    id: req.id,
                    force: req.force,
                },
                rid,
            )
            .await
            .map(|_| pb::RemoveNodeResponse {}))
    }
}

#[tonic::async_trait]
impl ClusterService for Api {
    async fn get_cluster_info(&self, req: Request<pb::GetClusterInfoRequest>) -> Reply<pb::ClusterInfo> {
        self.allow(&req, Rpc::GetClusterInfo, Target::None)?;
        self.read_barrier(req.into_inner().consistent).await?;
        ok(Ok(self.cluster_info()))
    }

    async fn generate_join_token(&self, req: Request<pb::GenerateJoinTokenRequest>) -> Reply<pb::JoinToken> {
        self.allow(&req, Rpc::GenerateJoinToken, Target::None)?;
        let req = req.into_inner();
        let role = match pb::Role::try_from(req.role) {
            Ok(pb::Role::Manager) => core::Role::Manager,
            Ok(pb::Role::Worker) => core::Role::Worker,
            _ => return Err(ApiError::State(StateError::invalid("role", "use worker or manager")).into()),
        };
        let ttl_ms = if req.ttl_seconds == 0 {
            token::DEFAULT_TTL_MS
        } else {
            i64::try_from(req.ttl_seconds.saturating_mul(1000)).unwrap_or(i64::MAX / 2)
        };
        let (cluster_id, ca) = self.read(|st| (st.cluster_id.clone(), st.pki.ca_cert_der.clone()));
        if cluster_id.is_empty() || ca.is_empty() {
            return Err(
                ApiError::Unavailable("the cluster is still initialising; retry in a moment".into()).into(),
            );
        }
        let secret = format!("{:032x}", madsim::rand::random::<u128>());
        let text = token::format(&cluster_id, role, &token::ca_fingerprint(&ca), &secret);
        let now = now_ms();
        let expires_at_ms = now.saturating_add(ttl_ms);
        let cmd = Command::SetJoinToken {
            role,
            hash_hex: token::hash_hex(&text),
            expires_at_ms,
            rotate: req.rotate,
            now_ms: now,
        };
        self.m.write(cmd).await?;
        let managers: Vec<String> = self.m.members().into_values().map(|n| n.api_addr).collect();
        let join_command = match role {
            core::Role::Manager => format!(
                "warren manager join --token {text} --leader {} --node-id <ID> --api-addr <HOST:PORT> --bind-addr <HOST:PORT> --data-dir <DIR>",
                managers.join(",")
            ),
            core::Role::Worker => format!(
                "warren worker start --token {text} --manager {} --node-id <ID> --data-dir <DIR>",
                managers.join(",")
            ),
        };
        ok(Ok(pb::JoinToken {
            role: req.role,
            token: text,
            expires_at_ms,
            join_command,
        }))
    }

    async fn join_cluster(&self, req: Request<pb::JoinClusterRequest>) -> Reply<pb::JoinClusterResponse> {
        self.allow(
            &req,
            Rpc::JoinCluster,
            Target::Node(&req.get_ref().node_id.to_string()),
        )?;
        let req = req.into_inner();
        let span = tracing::info_span!("join_cluster", new_manager = req.node_id, api = %req.api_addr);
        self.join_manager(req).instrument(span).await
    }

    async fn get_ca_certificate(
        &self,
        req: Request<pb::GetCaCertificateRequest>,
    ) -> Reply<pb::CaCertificate> {
        self.allow(&req, Rpc::GetCaCertificate, Target::None)?;
        let (cluster_id, certs_der) = self.read(|st| (st.cluster_id.clone(), st.pki.trusted()));
        if certs_der.is_empty() {
            return Err(ApiError::Unavailable(
                "the cluster is still initialising (no CA yet); retry in a moment".into(),
            )
            .into());
        }
        ok(Ok(pb::CaCertificate {
            cluster_id,
            certs_der,
        }))
    }

    async fn rotate_ca(&self, req: Request<pb::RotateCaRequest>) -> Reply<pb::RotateCaResponse> {
        use crate::security::pki::{Ca, CertRole};
        let who = self.allow(&req, Rpc::RotateCa, Target::None)?;
        let Caller::Admin { name, expires_ms, .. } = &who else {
            return Err(ApiError::Internal("RotateCa admitted a non-admin".into()).into());
        };
        let csr_der = req.into_inner().csr_der;
        let (cluster_id, old) = self.ca()?;
        let (new, cross) = Ca::create_successor(&old, &cluster_id, crate::clock::now())
            .map_err(|e| ApiError::Internal(format!("cannot make the new CA: {e}")))?;
        self.m
            .write(Command::StartCaRotation {
                cert_der: new.cert_der.clone(),
                key_pkcs8: new.key_pkcs8().to_vec(),
                cross_cert_der: cross,
                now_ms: now_ms(),
            })
            .await?;
        tracing::warn!(old_ca = %old.fingerprint_hex(), new_ca = %new.fingerprint_hex(), by = %name, "CA rotation started");
        // Sign with the new CA: this manager must have applied the rotation first.
        self.m.read_barrier().await?;
        // The caller's new credential, with the lifetime its current one had (at least a minute).
        let ttl = std::time::Duration::from_millis((expires_ms - now_ms()).max(60_000) as u64);
        let admin = self
            .sign_and_record(&csr_der, CertRole::Admin, name, ttl, None)
            .await?
            .into_inner();
        ok(Ok(pb::RotateCaResponse {
            status: Some(self.ca_status()),
            admin: Some(admin),
        }))
    }

    async fn confirm_certificate(
        &self,
        req: Request<pb::ConfirmCertificateRequest>,
    ) -> Reply<pb::ConfirmCertificateResponse> {
        let who = self.allow(&req, Rpc::ConfirmCertificate, Target::None)?;
        let (holder, serial_hex) = match who {
            Caller::Manager { id, serial_hex, .. } => {
                (core::state::holder("manager", &id.to_string()), serial_hex)
            }
            Caller::Worker {
                node_id, serial_hex, ..
            } => (core::state::holder("worker", &node_id), serial_hex),
            _ => return Err(Status::permission_denied("only a node confirms its certificate")),
        };
        // Against state at least as new as the renewal this follows.
        self.m.read_barrier().await?;
        let waiting = self.read(|st| {
            st.pki
                .rotation
                .as_ref()
                .is_some_and(|r| r.pending.contains(&holder))
        });
        if waiting {
            self.m
                .write(Command::ConfirmCertificate { holder, serial_hex })
                .await?;
        }
        ok(Ok(pb::ConfirmCertificateResponse {}))
    }

    type BackupStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::BackupChunk, Status>> + Send>>;

    /// The replicated state as a backup file, after a read index through the leader: it
    /// holds everything acknowledged before the request.
    async fn backup(&self, req: Request<pb::BackupRequest>) -> Reply<Self::BackupStream> {
        let who = self.allow(&req, Rpc::Backup, Target::None)?;
        self.m.read_barrier().await?;
        let backup = {
            let g = self.m.state.read().unwrap();
            super::backup::Backup {
                cluster_id: g.state.cluster_id.clone(),
                taken_at_ms: now_ms(),
                taken_by: self.m.id,
                index: g.last_applied.map_or(0, |l| l.index),
                term: g.last_applied.map_or(0, |l| l.leader_id.term),
                state: g.state.clone(),
            }
        };
        if backup.cluster_id.is_empty() {
            return Err(
                ApiError::Unavailable("the cluster is still initialising; retry in a moment".into()).into(),
            );
        }
        let bytes = super::backup::encode(&backup);
        if bytes.len() as u64 > core::limits::MAX_BACKUP_BYTES {
            return Err(ApiError::Internal(format!(
                "the state encodes to {} bytes, over the backup limit of {} bytes",
                bytes.len(),
                core::limits::MAX_BACKUP_BYTES
            ))
            .into());
        }
        tracing::info!(
            caller = %who.describe(),
            index = backup.index,
            bytes = bytes.len(),
            "backup taken (it holds the CA key)"
        );
        let chunks: Vec<Result<pb::BackupChunk, Status>> = bytes
            .chunks(super::backup::CHUNK_BYTES)
            .map(|c| Ok(pb::BackupChunk { data: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn get_ca_status(&self, req: Request<pb::GetCaStatusRequest>) -> Reply<pb::CaStatus> {
        self.allow(&req, Rpc::GetCaStatus, Target::None)?;
        ok(Ok(self.ca_status()))
    }

    async fn issue_certificate(
        &self,
        req: Request<pb::IssueCertificateRequest>,
    ) -> Reply<pb::IssuedCertificate> {
        use crate::security::pki::CertRole;
        self.allow(&req, Rpc::IssueCertificate, Target::None)?;
        let req = req.into_inner();
        let parsed = token::parse(&req.token).map_err(ApiError::Token)?;
        // Against state at least as new as the leader's, so a token issued through another
        // manager a moment ago is known here.
        self.m.read_barrier().await?;
        self.read(|st| token::check(st, &req.token, parsed.role, now_ms()))
            .map_err(ApiError::Token)?;
        let span = tracing::info_span!("issue_certificate", node = %core::state::cut(&req.node_id));
        async {
            let role = match parsed.role {
                core::Role::Worker => {
                    core::validate::node_id(&req.node_id).map_err(ApiError::State)?;
                    // A node id in use belongs to the worker holding its certificate.
                    if self.read(|st| st.nodes.contains_key(&req.node_id)) {
                        return Err(ApiError::State(StateError::FailedPrecondition(format!(
                            "node id {:?} is in use by a registered worker; pick another --node-id, or remove the old node with `warren node rm {}` first",
                            core::state::cut(&req.node_id),
                            core::state::cut(&req.node_id)
                        )))
                        .into());
                    }
                    CertRole::Worker
                }
                core::Role::Manager => {
                    let id: u64 = req
                        .node_id
                        .parse()
                        .ok()
                        .filter(|i| *i > 0)
                        .ok_or_else(|| ApiError::State(StateError::invalid("node id", "a manager id is a number greater than 0")))?;
                    if self.m.members().contains_key(&id) {
                        return Err(ApiError::State(StateError::FailedPrecondition(format!(
                            "manager id {id} is in use; pick another --node-id, or remove the old manager with `warren manager remove {id}` first"
                        )))
                        .into());
                    }
                    CertRole::Manager
                }
            };
            self.sign_and_record(&req.csr_der, role, &req.node_id, self.node_cert_ttl(), None)
                .await
        }
        .instrument(span)
        .await
    }

    async fn renew_certificate(
        &self,
        req: Request<pb::RenewCertificateRequest>,
    ) -> Reply<pb::IssuedCertificate> {
        use crate::security::pki::CertRole;
        let who = self.allow(&req, Rpc::RenewCertificate, Target::None)?;
        let (role, id, serial) = match who {
            Caller::Manager { id, serial_hex, .. } => (CertRole::Manager, id.to_string(), serial_hex),
            Caller::Worker {
                node_id, serial_hex, ..
            } => (CertRole::Worker, node_id, serial_hex),
            _ => return Err(Status::permission_denied("only a node renews its certificate")),
        };
        self.sign_and_record(
            &req.get_ref().csr_der,
            role,
            &id,
            self.node_cert_ttl(),
            Some(serial),
        )
        .await
    }

    async fn issue_admin_certificate(
        &self,
        req: Request<pb::IssueAdminCertificateRequest>,
    ) -> Reply<pb::IssuedCertificate> {
        use crate::security::pki::{CertRole, DEFAULT_CERT_TTL};
        self.allow(&req, Rpc::IssueAdminCertificate, Target::None)?;
        let req = req.into_inner();
        let ttl = match req.ttl_seconds {
            0 => DEFAULT_CERT_TTL,
            s if s.saturating_mul(1000) > core::limits::MAX_CERT_TTL_MS as u64 => {
                return Err(ApiError::State(StateError::invalid(
                    "ttl",
                    format!("at most {} days", core::limits::MAX_CERT_TTL_MS / 86_400_000),
                ))
                .into())
            }
            s => std::time::Duration::from_secs(s),
        };
        core::validate::node_id(&req.name).map_err(|_| {
            ApiError::State(StateError::invalid(
                "name",
                "use 1-64 lowercase letters, digits and '-' (it names the operator in the certificate)",
            ))
        })?;
        self.sign_and_record(&req.csr_der, CertRole::Admin, &req.name, ttl, None)
            .await
    }

    async fn remove_manager(
        &self,
        req: Request<pb::RemoveManagerRequest>,
    ) -> Reply<pb::RemoveManagerResponse> {
        self.allow(&req, Rpc::RemoveManager, Target::None)?;
        let req = req.into_inner();
        let holder = core::state::holder("manager", &req.node_id.to_string());
        let member = self.m.members().contains_key(&req.node_id);
        let certified = self.read(|st| st.pki.issued.contains_key(&holder));
        // A manager already out of the membership whose certificates are still live (an
        // earlier removal whose revocation failed) only needs the revocation.
        // The voters after the removal, as the leader that made it says: this manager may be
        // the one removed (`manager leave`), and then its own view stops at the removal.
        let mut voters_after = None;
        if member || !certified {
            let op = LeaderOp::RemoveManager {
                id: req.node_id,
                force: req.force,
            };
            let answer =
                leader::call(&self.m, op, std::time::Duration::from_millis(leader::DEADLINE_MS)).await?;
            if let leader::LeaderAnswer::Members { voters, .. } = answer {
                voters_after = Some(voters);
            }
        }
        // Out of the membership: now its certificates stop working (not before: a removal
        // refused for quorum must leave the manager able to talk).
        if let Err(e) = self.m.write(Command::RevokeHolder { holder }).await {
            tracing::warn!(manager = req.node_id, error = %e, "removed, but revoking its certificates failed");
            return Err(ApiError::Unavailable(format!(
                "manager {} was removed, but revoking its certificates failed ({e}); run the command again",
                req.node_id
            ))
            .into());
        }
        let mut managers = self.cluster_info().managers;
        if let Some(voters) = voters_after {
            managers.retain(|m| voters.contains(&m.node_id));
        }
        ok(Ok(pb::RemoveManagerResponse { managers }))
    }
}

#[tonic::async_trait]
impl TaskService for Api {
    type WatchAssignmentsStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::AssignmentEvent, Status>> + Send>>;
    type LogSessionStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::LogRequest, Status>> + Send>>;

    /// A worker's log session: a hello naming a registered node, then its uploads, while
    /// this manager sends it the log requests for its tasks.
    async fn log_session(
        &self,
        req: Request<tonic::Streaming<pb::LogUpload>>,
    ) -> Reply<Self::LogSessionStream> {
        // Which node the session is for comes with its hello; checked then.
        let caller = crate::security::caller(&req);
        let mut uploads = req.into_inner();
        let hello = match tokio::time::timeout(std::time::Duration::from_secs(10), uploads.message()).await {
            Ok(Ok(Some(h))) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "a log session starts with a hello naming the node",
                ))
            }
        };
        let node = hello.node_id;
        self.allow_caller(&caller, Rpc::LogSession, Target::Node(&node))?;
        if !self.read(|st| st.nodes.contains_key(&node)) {
            return Err(not_found("node", &node).into());
        }
        let (generation, orders) = self.m.logs.open(&node);
        tracing::debug!(node = %node, "log session opened");
        let m = self.m.clone();
        tokio::spawn(async move {
            while let Ok(Some(up)) = uploads.message().await {
                m.logs.upload(&node, generation, up).await;
            }
            m.logs.close(&node, generation);
            tracing::debug!(node = %node, "log session closed");
        });
        let out = futures::stream::unfold(orders, |mut orders| async move {
            orders.recv().await.map(|o| (Ok(o), orders))
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn list_tasks(&self, req: Request<pb::ListTasksRequest>) -> Reply<pb::ListTasksResponse> {
        self.allow(&req, Rpc::ListTasks, Target::None)?;
        let req = req.into_inner();
        let from = after(&req.page_token)?;
        self.read_barrier(req.consistent).await?;
        let service_id = if req.service.is_empty() {
            None
        } else {
            Some(
                self.read(|st| st.service(&req.service).map(|s| s.id.clone()))
                    .ok_or_else(|| Status::from(not_found("service", &req.service)))?,
            )
        };
        let (tasks, next_page_token) = self.walk(|st| {
            let tasks = st
                .tasks
                .range((from.clone(), std::ops::Bound::Unbounded))
                .filter(|(_, t)| service_id.as_ref().is_none_or(|s| &t.service_id == s))
                .filter(|(_, t)| req.node_id.is_empty() || t.node_id == req.node_id)
                .map(|(id, t)| (id.as_str(), task_to_pb(st, t, false)));
            page(tasks, req.page_size)
        });
        ok(Ok(pb::ListTasksResponse {
            tasks,
            next_page_token,
        }))
    }

    async fn get_task(&self, req: Request<pb::GetTaskRequest>) -> Reply<pb::Task> {
        self.allow(&req, Rpc::GetTask, Target::None)?;
        let id = req.into_inner().id;
        ok(self
            .read(|st| st.tasks.get(&id).map(|t| task_to_pb(st, t, true)))
            .ok_or_else(|| not_found("task", &id)))
    }

    /// The tasks assigned to a node: the full set (or, to a worker resuming, what changed
    /// since its last event), then what changes, as it changes (`manager::assignments`),
    /// with a keep-alive event in between so the worker notices a dead stream.
    async fn watch_assignments(
        &self,
        req: Request<pb::WatchAssignmentsRequest>,
    ) -> Reply<Self::WatchAssignmentsStream> {
        self.allow(&req, Rpc::WatchAssignments, Target::Node(&req.get_ref().node_id))?;
        let req = req.into_inner();
        if req.resume_after_history.len() > crate::core::assignments::MAX_HISTORY_BYTES {
            return Err(ApiError::State(StateError::invalid(
                "resume_after_history",
                format!(
                    "{} bytes, at most {}: send back the `history` of an event as it came, or nothing for a full set",
                    req.resume_after_history.len(),
                    crate::core::assignments::MAX_HISTORY_BYTES
                ),
            ))
            .into());
        }
        let node_id = req.node_id;
        // A worker opens its stream right after its registration committed, maybe on a
        // manager that has not applied it yet: look again after catching up before refusing.
        if !self.read(|st| st.nodes.contains_key(&node_id))
            && (self.m.read_barrier().await.is_err() || !self.read(|st| st.nodes.contains_key(&node_id)))
        {
            return Err(not_found("node", &node_id).into());
        }
        let slot = StreamSlot::take(self, &node_id)?;
        let mut stream = super::assignments::Stream::new(self.m.clone(), node_id, req.accepts_changes);
        let first: std::collections::VecDeque<pb::AssignmentEvent> = stream
            .open(req.resume_after_seq, &req.resume_after_history)
            .await
            .into();
        let events = futures::stream::unfold(
            (stream, first, Some(slot)),
            |(mut stream, mut queued, slot)| async move {
                // Ended: the slot was given back with the last answer.
                let slot = slot?;
                loop {
                    if let Some(ev) = queued.pop_front() {
                        return Some((Ok(ev), (stream, queued, Some(slot))));
                    }
                    if stream.raft_stopped() {
                        // Nothing will change here any more: the worker should move on now,
                        // not after its silence timeout (keep-alives would hide the stop).
                        drop(slot);
                        let why = "this manager's Raft core has stopped; use another manager";
                        return Some((Err(Status::unavailable(why)), (stream, queued, None)));
                    }
                    let next = stream
                        .next(std::time::Duration::from_millis(ASSIGNMENT_KEEPALIVE_MS))
                        .await;
                    if next.is_empty() {
                        let ev = pb::AssignmentEvent {
                            seq: stream.seq(),
                            heartbeat: true,
                            indexed: true,
                            ..Default::default()
                        };
                        return Some((Ok(ev), (stream, queued, Some(slot))));
                    }
                    queued.extend(next);
                }
            },
        );
        Ok(Response::new(Box::pin(events)))
    }
}

/// Deadline for forwarding a worker heartbeat to the leader (a worker beats every second).
const HEARTBEAT_DEADLINE_MS: u64 = 3_000;
/// Keep-alive period of an assignment stream with nothing new.
pub const ASSIGNMENT_KEEPALIVE_MS: u64 = 2_000;

pub async fn serve(m: ManagerRef, addr: SocketAddr, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    let transport = m.transport.clone();
    let api = Api {
        m,
        streams: Default::default(),
    };
    let router = super::listener::builder()
        .add_service(ClusterServiceServer::new(api.clone()))
        .add_service(NodeServiceServer::new(api.clone()))
        .add_service(ServiceServiceServer::new(api.clone()))
        .add_service(TaskServiceServer::new(api));
    super::listener::serve(router, addr, stop, &transport)
        .await
        .map_err(|e| anyhow::anyhow!("API server on {addr}: {e}; is another process using --api-addr?"))
}
