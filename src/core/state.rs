//! The replicated state machine: `ClusterState::apply(index, command) -> Result<Outcome, StateError>`.
//!
//! Every manager applies the same committed log to its own copy; apply is deterministic
//! (BTreeMaps only, no clock, no randomness) and a rejected command changes nothing.

use super::limits::{
    MAX_CA_BYTES, MAX_CERT_TTL_MS, MAX_LIVE_CERTS_PER_HOLDER, MAX_LIVE_TOKENS_PER_ROLE, MAX_REMEMBERED_BYTES,
    MAX_REMEMBERED_REQUESTS, MAX_TOKEN_TTL_MS, MIN_CERT_TTL_MS, SPEC_HISTORY,
};
use super::model::*;
use super::reconciler::TaskChange;
use super::validate;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Why a command was refused. The variants are what callers branch on (the gRPC layer maps
/// them to status codes in one place).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum StateError {
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("{kind} {name:?} already exists; choose another name or update the existing one")]
    AlreadyExists { kind: String, name: String },
    #[error("{kind} {name:?} not found; {}", list_hint(kind))]
    NotFound { kind: String, name: String },
    #[error("{kind} {name:?} is at version {actual}, not {expected}; read it again and retry")]
    VersionConflict {
        kind: String,
        name: String,
        expected: u64,
        actual: u64,
    },
    #[error("{0}")]
    FailedPrecondition(String),
}

/// Where the operator can see what exists, for a not-found error.
fn list_hint(kind: &str) -> &'static str {
    match kind {
        "service" => "list them with `warren service ls`",
        "node" => "list them with `warren node ls`",
        "task" => "list them with `warren service ps SERVICE`",
        "manager" => "the managers are listed by `warren cluster info`",
        _ => "check the name and try again",
    }
}

impl StateError {
    pub fn invalid(field: &str, reason: impl Into<String>) -> Self {
        StateError::InvalidArgument {
            field: field.to_string(),
            reason: reason.into(),
        }
    }
    fn not_found(kind: &str, name: &str) -> Self {
        StateError::NotFound {
            kind: kind.to_string(),
            name: cut(name),
        }
    }
}

pub use super::limits::cut;

/// An ordered map that shares its structure between clones: a clone costs O(1) and a change
/// to a shared map copies only the path it touches. Serialized as a `BTreeMap` is, so the
/// state format does not change.
pub type Map<K, V> = imbl::OrdMap<K, V>;

/// Task id -> task (see `ClusterState::tasks`).
pub type Tasks = Map<String, std::sync::Arc<Task>>;

/// What a retried request needs to get its first answer back: the kind of outcome and the
/// ids it names, never a whole spec (a table of whole results held gigabytes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Remembered {
    Internal,
    ClusterInitialized { cluster_id: String },
    Service { id: String },
    ServiceDeleted { id: String },
    Node { id: String },
    NodeRemoved { id: String },
    JoinTokenSet { role: Role, expires_at_ms: i64 },
    TasksChanged { applied: u32, skipped: u32 },
    Refused(StateError),
}

impl Remembered {
    fn of(answer: &Result<Outcome, StateError>) -> Remembered {
        match answer {
            Err(e) => Remembered::Refused(e.clone()),
            Ok(o) => match o {
                Outcome::Internal => Remembered::Internal,
                Outcome::ClusterInitialized { cluster_id } => Remembered::ClusterInitialized {
                    cluster_id: cluster_id.clone(),
                },
                Outcome::Service(s) => Remembered::Service { id: s.id.clone() },
                Outcome::ServiceDeleted { id } => Remembered::ServiceDeleted { id: id.clone() },
                Outcome::Node(n) => Remembered::Node { id: n.id.clone() },
                Outcome::NodeRemoved { id } => Remembered::NodeRemoved { id: id.clone() },
                Outcome::JoinTokenSet { role, expires_at_ms } => Remembered::JoinTokenSet {
                    role: *role,
                    expires_at_ms: *expires_at_ms,
                },
                Outcome::TasksChanged { applied, skipped } => Remembered::TasksChanged {
                    applied: *applied,
                    skipped: *skipped,
                },

                // Not proposed: batches hold `Once` writes, never the other way round.
                Outcome::Batch(_) => Remembered::Internal,
            },
        }
    }

    /// Bytes this entry counts against `MAX_REMEMBERED_BYTES` (with its request id).
    fn cost(&self, request_id: &str) -> u64 {
        bincode::serialized_size(self).unwrap_or(u64::MAX / 4) + request_id.len() as u64 + 16
    }
}

/// A task's state as a worker reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReport {
    pub task_id: String,
    pub state: TaskState,
    pub message: String,
    pub exit_code: i32,
    pub container_id: String,
    /// The health check's verdict when the task has one.
    pub health: Option<HealthStatus>,
}

/// A change to the cluster state. Ids and times are chosen by the proposer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// `cmd` applied at most once per `request_id`: a retry of a request whose first attempt
    /// did commit (say the answer was lost with a leader) gets the first answer back instead
    /// of applying again (a second delete would answer NotFound for a delete that happened).
    Once {
        request_id: String,
        /// A digest of the request as the client sent it (method and body; 0 for ids a
        /// manager made up): an id reused for a different request is refused instead of
        /// answered with the first request's outcome.
        fingerprint: u64,
        cmd: Box<Command>,
    },
    /// First entry of a cluster restored from a backup (`cluster init --restore`): the
    /// backed-up state becomes this cluster's (see `core::restore`). Refused on a cluster
    /// that has an id already.
    Restore {
        state: Box<ClusterState>,
        restored: super::restore::Restored,
    },
    /// First entry of a new cluster: fixes its id.
    InitCluster {
        cluster_id: String,
        now_ms: i64,
    },
    CreateService {
        id: String,
        spec: ServiceSpec,
        now_ms: i64,
    },
    /// A new spec. A change of what the tasks run (anything but the replica count and the
    /// rollout settings), or `force`, makes a new spec version and starts a rolling update.
    UpdateService {
        service: String,
        spec: ServiceSpec,
        /// 0 = any version.
        expected_version: u64,
        force: bool,
        now_ms: i64,
    },
    /// Back to an earlier spec version (0: the one before the latest update), rolled out
    /// with the rollback settings.
    RollbackService {
        service: String,
        to_version: u64,
        now_ms: i64,
    },
    ScaleService {
        service: String,
        replicas: i64,
        expected_version: u64,
        now_ms: i64,
    },
    DeleteService {
        service: String,
    },
    /// Adds a node or refreshes one that joins again with the same id.
    RegisterNode {
        id: String,
        role: Role,
        address: String,
        labels: BTreeMap<String, String>,
        capacity: Resources,
        now_ms: i64,
    },
    UpdateNode {
        id: String,
        availability: Option<Availability>,
        labels: Option<BTreeMap<String, String>>,
        expected_version: u64,
    },
    RemoveNode {
        id: String,
        force: bool,
    },
    /// The build a node reports in its heartbeats (`warren version`), recorded when it
    /// changes.
    SetNodeVersion {
        id: String,
        version: String,
    },
    /// One round of the leader's orchestrator (`core::reconciler`). A change whose
    /// precondition no longer holds (the state moved on after the round read it) is skipped,
    /// so a stale round does no harm.
    Orchestrate {
        changes: Vec<TaskChange>,
        now_ms: i64,
    },
    /// Task state changes reported by the worker `node_id`; only its own tasks change, and a
    /// finished task never runs again.
    ReportTasks {
        node_id: String,
        reports: Vec<TaskReport>,
        now_ms: i64,
    },
    /// Stores a join token's hash; `rotate` drops the role's earlier tokens.
    SetJoinToken {
        role: Role,
        hash_hex: String,
        expires_at_ms: i64,
        rotate: bool,
        now_ms: i64,
    },
    /// The cluster CA, set once right after `InitCluster` by the first manager, with the
    /// lifetime of the node certificates it will sign.
    InstallCa {
        cert_der: Vec<u8>,
        key_pkcs8: Vec<u8>,
        cert_ttl_ms: i64,
    },
    /// A certificate a manager signed for `holder` (see `holder`), so that it can be revoked.
    /// A renewal names the certificate it renews, which must still be current: a holder
    /// removed (revoked) meanwhile gets nothing.
    RecordCertificate {
        holder: String,
        serial_hex: String,
        not_after_ms: i64,
        now_ms: i64,
        renews: Option<String>,
        /// `token::ca_fingerprint` of the CA that signed it (during a CA rotation, a
        /// certificate the old CA signed does not count as renewed).
        issuer_fingerprint: String,
    },
    /// Revokes every certificate of `holder` (a manager removed from the cluster).
    RevokeHolder {
        holder: String,
    },
    /// A node presented a certificate `serial_hex` the new CA signed, during a CA rotation: it
    /// has it, so it no longer waits for one. (Recording is not enough: a renewal's answer can
    /// be lost, and the rotation must not complete and revoke the only certificate it has.)
    ConfirmCertificate {
        holder: String,
        serial_hex: String,
    },
    /// `cluster ca --rotate`: the new CA signs from now on; both are trusted until every
    /// manager and worker holding a certificate of the old one has renewed (see `CaRotation`).
    StartCaRotation {
        cert_der: Vec<u8>,
        key_pkcs8: Vec<u8>,
        /// The new CA's certificate signed by the old CA.
        cross_cert_der: Vec<u8>,
        now_ms: i64,
    },
    /// Group commit: writes proposed on the leader while earlier ones were in flight, in
    /// one log entry (one fsync on each manager instead of one each). Each is applied as if
    /// alone, in order; one refused changes nothing and does not stop the others. Last in
    /// the enum: an entry without a batch encodes as it did in format 0xA4 (`raft::codec`).
    Batch(Vec<Command>),
}

/// The key certificates are tracked under: `worker/edge-1`, `manager/3`, `admin/ops`.
pub fn holder(kind: &str, id: &str) -> String {
    format!("{kind}/{id}")
}

/// The cluster's certificate authority and what it signed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pki {
    pub ca_cert_der: Vec<u8>,
    /// Replicated so that any leader can sign; it never leaves the managers.
    pub ca_key_pkcs8: Vec<u8>,
    /// Holder -> serial (hex) -> expiry, for the certificates not yet expired.
    /// (`Map`s: one entry per node, and the state is cloned by every reader.)
    pub issued: Map<String, BTreeMap<String, i64>>,
    /// Revoked serial -> its expiry (after which it is dropped: it no longer verifies).
    pub revoked: Map<String, i64>,
    /// Lifetime of node certificates (`cluster init --cert-ttl`); renewed at half of it.
    pub cert_ttl_ms: i64,
    /// A CA rotation under way.
    pub rotation: Option<CaRotation>,
}

/// A CA rotation (as Swarm's): the new CA (`Pki::ca_*`) signs every certificate from the
/// start; a certificate it signs is presented with `cross_cert_der`, so a node that still
/// trusts only the old CA accepts it; every node trusts both until each manager and worker
/// that held an old certificate has renewed; then the old CA and every certificate it
/// signed stop counting (admin credentials included: operators get new ones meanwhile).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRotation {
    pub old_ca_cert_der: Vec<u8>,
    pub cross_cert_der: Vec<u8>,
    /// Node holders (`manager/ID`, `worker/ID`) still holding only old certificates.
    pub pending: BTreeSet<String>,
    /// How many node holders there were when it started.
    pub total: u32,
    /// Serials the old CA signed; revoked when the rotation completes.
    pub old_serials: BTreeSet<String>,
    pub started_ms: i64,
}

impl Pki {
    pub(crate) fn revoke_holder(&mut self, holder: &str) -> usize {
        let serials = self.issued.remove(holder).unwrap_or_default();
        let n = serials.len();
        for (serial, exp) in serials {
            self.revoked.insert(serial, exp);
        }
        if let Some(r) = &mut self.rotation {
            r.pending.remove(holder);
        }
        self.settle_rotation();
        n
    }

    /// The CAs to trust, the signing one first.
    pub fn trusted(&self) -> Vec<Vec<u8>> {
        let mut v = vec![self.ca_cert_der.clone()];
        if let Some(r) = &self.rotation {
            v.push(r.old_ca_cert_der.clone());
        }
        v.retain(|c| !c.is_empty());
        v
    }

    /// What a certificate signed now is presented with (the cross-signed CA during a rotation).
    pub fn chain(&self) -> Vec<Vec<u8>> {
        self.rotation.iter().map(|r| r.cross_cert_der.clone()).collect()
    }

    /// Completes the rotation once nobody waits for a new certificate: the old CA's
    /// certificates still unexpired are revoked, so even connections opened with them stop.
    fn settle_rotation(&mut self) {
        let Some(r) = &self.rotation else { return };
        if !r.pending.is_empty() {
            return;
        }
        let old = self.rotation.take().expect("checked").old_serials;
        self.drop_issued(|serial, _| old.contains(serial), true);
    }

    /// Drops the issued serials `gone` picks (revoking them if `revoke`), and holders left
    /// with none. Only holders with such a serial are written (a shared `Map` copies what is
    /// written).
    fn drop_issued(&mut self, gone: impl Fn(&str, i64) -> bool, revoke: bool) {
        let holders: Vec<String> = self
            .issued
            .iter()
            .filter(|(_, serials)| serials.iter().any(|(s, exp)| gone(s, *exp)))
            .map(|(h, _)| h.clone())
            .collect();
        for holder in holders {
            let Some(serials) = self.issued.get_mut(&holder) else {
                continue;
            };
            let dropped: Vec<(String, i64)> = serials
                .iter()
                .filter(|(s, exp)| gone(s, **exp))
                .map(|(s, exp)| (s.clone(), *exp))
                .collect();
            for (serial, exp) in dropped {
                serials.remove(&serial);
                if revoke {
                    self.revoked.insert(serial, exp);
                }
            }
            if serials.is_empty() {
                self.issued.remove(&holder);
            }
        }
    }

    fn prune(&mut self, now_ms: i64) {
        let expired: Vec<String> = self
            .revoked
            .iter()
            .filter(|(_, exp)| **exp <= now_ms)
            .map(|(s, _)| s.clone())
            .collect();
        for serial in expired {
            self.revoked.remove(&serial);
        }
        self.drop_issued(|_, exp| exp <= now_ms, false);
        if let Some(r) = &mut self.rotation {
            let live: BTreeSet<&String> = self.issued.values().flat_map(|s| s.keys()).collect();
            r.old_serials.retain(|s| live.contains(s));
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A Raft-internal entry (blank or membership) with no effect on the cluster state.
    Internal,
    ClusterInitialized {
        cluster_id: String,
    },
    Service(Box<Service>),
    ServiceDeleted {
        id: String,
    },
    Node(Node),
    NodeRemoved {
        id: String,
    },
    JoinTokenSet {
        role: Role,
        expires_at_ms: i64,
    },
    /// How many changes of an `Orchestrate` or `ReportTasks` took effect.
    TasksChanged {
        applied: u32,
        skipped: u32,
    },
    /// The answers to a `Command::Batch`, in its order.
    Batch(Vec<Result<Outcome, StateError>>),
}

/// The whole replicated state; also the snapshot format. Cloning it is cheap (`Map`): readers
/// clone it under the lock and walk the copy, so a long walk never holds up `apply`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub cluster_id: String,
    pub services: Map<String, Service>,
    /// Service name -> id.
    pub service_names: Map<String, String>,
    pub nodes: Map<String, Node>,
    /// Behind an `Arc`: a write copies the tree node it touches, and so each task beside it;
    /// shared, that copy is a count each, and a diff of two states skips unchanged tasks by
    /// address (`Arc`'s `Eq`). Serialized as the task itself: the format does not change.
    pub tasks: Tasks,
    pub join_tokens: Vec<JoinTokenRecord>,
    /// Answers to recent `Command::Once` requests, by request id, and the order to forget them.
    pub requests: Map<String, (u64, Remembered)>,
    pub request_order: Map<u64, String>,
    /// Sum of `Remembered::cost` over `requests`.
    pub remembered_bytes: u64,
    pub pki: Pki,
    /// Set when this cluster was started from a backup (`cluster init --restore`).
    pub restored: Option<super::restore::Restored>,
    /// Which services the applied commands touched, newest last (not part of the state's
    /// value: not serialized, never compared).
    #[serde(skip)]
    pub service_feed: ServiceFeed,
}

/// Most service ids a feed holds: a reader further behind walks every service once.
pub const SERVICE_FEED_MAX: usize = 8_192;

/// The ids of the services that applied commands changed, added or removed, newest last, so
/// that a reader following the services (the assignment index on every manager, the
/// leader's rounds and update deadlines) looks at what changed instead of walking every
/// service (issue #16: those walks took a tenth of three managers' CPU under a stream of
/// creates). Not replicated: a state read from a snapshot or the disk starts a feed of a new
/// lineage, and a reader that followed another lineage, or fell more than
/// `SERVICE_FEED_MAX` ids behind, walks every service once.
#[derive(Clone, Debug, Default)]
pub struct ServiceFeed {
    /// Which feed this is: readers hold it, so no other feed can share the pointer.
    lineage: std::sync::Arc<()>,
    /// Position of `ids[0]` since the feed began.
    first: u64,
    /// Shared ids: a reader's copy of the state shares them, and a push copies pointers only.
    ids: imbl::Vector<std::sync::Arc<str>>,
}

impl PartialEq for ServiceFeed {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for ServiceFeed {}

/// A reader's place in a feed: which feed, and the position after the last id it read.
type FeedPlace = (std::sync::Arc<()>, u64);

impl ServiceFeed {
    fn touched(&mut self, id: &str) {
        self.ids.push_back(id.into());
        if self.ids.len() > SERVICE_FEED_MAX {
            self.ids.pop_front();
            self.first += 1;
        }
    }

    /// For tests that change a service by hand rather than through `apply`.
    #[cfg(test)]
    pub fn touched_by_hand(&mut self, id: &str) {
        self.touched(id);
    }

    fn end(&self) -> u64 {
        self.first + self.ids.len() as u64
    }

    /// The ids touched since `at` (a reader's place in this feed), or `None` if `at` is in
    /// another feed or no longer held.
    fn since(&self, at: &Option<FeedPlace>) -> Option<impl Iterator<Item = &str>> {
        let (lineage, pos) = at.as_ref()?;
        if !std::sync::Arc::ptr_eq(lineage, &self.lineage) || *pos < self.first || *pos > self.end() {
            return None;
        }
        Some(self.ids.iter().skip((*pos - self.first) as usize).map(|id| &**id))
    }

    fn place(&self) -> FeedPlace {
        (self.lineage.clone(), self.end())
    }
}

/// What a reader last read of the services: each one's version, and its place in the feed.
#[derive(Debug, Default, Clone)]
pub struct ServiceVersions {
    read: BTreeMap<String, u64>,
    at: Option<FeedPlace>,
}

/// Two readers are equal when they read the same versions, wherever they are in a feed.
impl PartialEq for ServiceVersions {
    fn eq(&self, other: &Self) -> bool {
        self.read == other.read
    }
}

impl Eq for ServiceVersions {}

impl ServiceVersions {
    /// Services added, at another version, and removed since the last call (each list in id
    /// order); from the feed when this reader's place is in it, else by a walk of every
    /// service.
    pub fn note(&mut self, st: &ClusterState) -> ServiceChanges {
        let out = match st.service_feed.since(&self.at) {
            Some(ids) => {
                let ids: BTreeSet<&str> = ids.collect();
                let out = self.note_ids(ids, &st.services);
                if cfg!(debug_assertions) {
                    // Every test and simulated run checks that no change missed the feed.
                    let mut check = self.read.clone();
                    let mut again = ServiceChanges::default();
                    note_by_walk(&mut check, &st.services, &mut again);
                    debug_assert!(
                        again.added.is_empty() && again.changed.is_empty() && again.removed.is_empty(),
                        "a service change missed the feed: {again:?}"
                    );
                }
                out
            }
            None => {
                let mut out = ServiceChanges::default();
                note_by_walk(&mut self.read, &st.services, &mut out);
                out
            }
        };
        self.at = Some(st.service_feed.place());
        out
    }

    /// Takes every service of `st` as read (a reader that looks at everything anyway).
    pub fn read_all(&mut self, st: &ClusterState) {
        self.read = st
            .services
            .iter()
            .map(|(id, s)| (id.clone(), s.version))
            .collect();
        self.at = Some(st.service_feed.place());
    }

    fn note_ids(&mut self, ids: BTreeSet<&str>, services: &Map<String, Service>) -> ServiceChanges {
        let mut out = ServiceChanges::default();
        for id in ids {
            match (self.read.get(id), services.get(id)) {
                (Some(v), Some(s)) if *v == s.version => {}
                (Some(_), Some(s)) => {
                    self.read.insert(id.to_string(), s.version);
                    out.changed.push(id.to_string());
                }
                (None, Some(s)) => {
                    self.read.insert(id.to_string(), s.version);
                    out.added.push(id.to_string());
                }
                (Some(_), None) => {
                    self.read.remove(id);
                    out.removed.push(id.to_string());
                }
                (None, None) => {}
            }
        }
        out
    }
}

/// Services added, at another version, and removed since `read` (each service's version as
/// last read), which is brought up to date: one ordered walk of both maps. (A reader that kept
/// a copy of the services map instead would make every write to it copy the services along
/// its path.)
fn note_by_walk(read: &mut BTreeMap<String, u64>, services: &Map<String, Service>, out: &mut ServiceChanges) {
    let mut walk = read.iter().peekable();
    for (id, s) in services.iter() {
        while let Some((old, _)) = walk.next_if(|(old, _)| old.as_str() < id.as_str()) {
            out.removed.push(old.clone());
        }
        match walk.next_if(|(old, _)| *old == id) {
            Some((_, v)) if *v == s.version => {}
            Some(_) => out.changed.push(id.clone()),
            None => out.added.push(id.clone()),
        }
    }
    out.removed.extend(walk.map(|(old, _)| old.clone()));
    for id in &out.removed {
        read.remove(id);
    }
    for id in out.added.iter().chain(&out.changed) {
        read.insert(id.clone(), services.get(id).map_or(0, |s| s.version));
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ServiceChanges {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

impl Command {
    /// The checks of `apply` that do not depend on the state, for the proposing manager to
    /// run before the command enters the Raft log: input that can only be refused must not
    /// cost a log entry (a hundred refused 3.5 MB updates once held 430 MB in the log, across
    /// restarts). `apply` checks again; this only saves the round.
    pub fn precheck(&self) -> Result<(), StateError> {
        match self {
            Command::Once { cmd, .. } => cmd.precheck(),
            Command::CreateService { spec, .. } | Command::UpdateService { spec, .. } => {
                validate::service_spec(spec)
            }
            Command::ScaleService { replicas, .. } => validate::replicas(*replicas),
            Command::RegisterNode { address, labels, .. } => {
                validate::node_address(address)?;
                validate::labels("node labels", labels)
            }
            Command::UpdateNode {
                availability: None,
                labels: None,
                ..
            } => Err(StateError::invalid(
                "update",
                "nothing to change; pass --availability or --label",
            )),
            Command::UpdateNode { labels: Some(l), .. } => validate::labels("node labels", l),
            Command::ReportTasks { reports, .. } => validate::task_reports(reports),
            Command::SetNodeVersion { version, .. } => validate::agent_version(version),
            Command::Batch(cmds) => cmds.iter().try_for_each(Command::precheck_in_batch),
            _ => Ok(()),
        }
    }
}

impl Command {
    /// The replica count this command asks for, if it asks for one.
    pub fn replicas_asked(&self) -> Option<i64> {
        match self {
            Command::Once { cmd, .. } => cmd.replicas_asked(),
            Command::CreateService { spec, .. } | Command::UpdateService { spec, .. } => Some(spec.replicas),
            Command::ScaleService { replicas, .. } => Some(*replicas),
            _ => None,
        }
    }

    fn precheck_in_batch(&self) -> Result<(), StateError> {
        match self {
            Command::Batch(_) => Err(StateError::invalid("batch", "a batch inside a batch")),
            c => c.precheck(),
        }
    }
}

/// The one task of `tasks` that `given` names (`limits::names_task`: a prefix of at least
/// `limits::MIN_TASK_ID_PREFIX` characters of its id or of what the CLI shows of it); refused
/// when it is shorter, names none, or names more than one.
pub fn task_named<'a>(tasks: Vec<&'a Task>, given: &str) -> Result<&'a Task, StateError> {
    let min = super::limits::MIN_TASK_ID_PREFIX;
    if given.len() < min {
        return Err(StateError::invalid(
            "task_id",
            format!("give at least {min} characters of the task id as `warren service ps` shows it"),
        ));
    }
    let mut named = tasks
        .into_iter()
        .filter(|t| super::limits::names_task(&t.id, given));
    match (named.next(), named.count()) {
        (None, _) => Err(StateError::not_found("task", given)),
        (Some(t), 0) => Ok(t),
        (Some(_), more) => Err(StateError::invalid(
            "task_id",
            format!(
                "{} matches {} tasks; give more of it, or the id as `warren service ps` shows it (ids begin with the time they were made)",
                super::limits::quote(given),
                more + 1
            ),
        )),
    }
}

impl ClusterState {
    /// Looks a service up by id, then by name.
    pub fn service(&self, id_or_name: &str) -> Option<&Service> {
        self.services.get(id_or_name).or_else(|| {
            self.service_names
                .get(id_or_name)
                .and_then(|id| self.services.get(id))
        })
    }

    fn service_id(&self, id_or_name: &str) -> Result<String, StateError> {
        self.service(id_or_name)
            .map(|s| s.id.clone())
            .ok_or_else(|| StateError::not_found("service", id_or_name))
    }

    fn check_version(kind: &str, name: &str, expected: u64, actual: u64) -> Result<(), StateError> {
        if expected != 0 && expected != actual {
            return Err(StateError::VersionConflict {
                kind: kind.to_string(),
                name: cut(name),
                expected,
                actual,
            });
        }
        Ok(())
    }

    /// Applies one committed command at log `index`. Validation happens before any change,
    /// so an error leaves the state exactly as it was.
    pub fn apply(&mut self, index: u64, command: Command) -> Result<Outcome, StateError> {
        match command {
            Command::Once {
                request_id,
                fingerprint,
                cmd,
            } => {
                if let Some(answer) = self.answer_for(&request_id, fingerprint) {
                    return answer;
                }
                let answer = self.apply(index, *cmd);
                let remembered = Remembered::of(&answer);
                self.remembered_bytes += remembered.cost(&request_id);
                self.requests
                    .insert(request_id.clone(), (fingerprint, remembered));
                // Keys only order the requests, oldest first: the writes of one batch share
                // its index, so each takes the next key free above the newest.
                let key = self
                    .request_order
                    .get_max()
                    .map_or(index, |(k, _)| index.max(k + 1));
                self.request_order.insert(key, request_id);
                while self.request_order.len() > MAX_REMEMBERED_REQUESTS
                    || self.remembered_bytes > MAX_REMEMBERED_BYTES as u64
                {
                    let Some(&(first, _)) = self.request_order.get_min() else {
                        break;
                    };
                    let oldest = self
                        .request_order
                        .remove(&first)
                        .expect("the first key is present");
                    if let Some((_, r)) = self.requests.remove(&oldest) {
                        self.remembered_bytes = self.remembered_bytes.saturating_sub(r.cost(&oldest));
                    }
                }
                answer
            }
            Command::Batch(cmds) => Ok(Outcome::Batch(
                cmds.into_iter()
                    .map(|c| match c {
                        Command::Batch(_) => Err(StateError::invalid("batch", "a batch inside a batch")),
                        c => self.apply(index, c),
                    })
                    .collect(),
            )),
            Command::Restore { state, restored } => {
                if !self.cluster_id.is_empty() {
                    return Err(StateError::FailedPrecondition(format!(
                        "cluster {} has state already; a backup is restored only into a new cluster",
                        self.cluster_id
                    )));
                }
                if state.cluster_id.is_empty() {
                    return Err(StateError::invalid("backup", "it holds no cluster id"));
                }
                *self = super::restore::into_new_cluster(*state, restored);
                // Everything changed: readers walk every service once.
                self.service_feed = ServiceFeed::default();
                Ok(Outcome::ClusterInitialized {
                    cluster_id: self.cluster_id.clone(),
                })
            }
            Command::InitCluster { cluster_id, .. } => {
                if cluster_id.is_empty() {
                    return Err(StateError::invalid("cluster_id", "must not be empty"));
                }
                if !self.cluster_id.is_empty() && self.cluster_id != cluster_id {
                    return Err(StateError::FailedPrecondition(format!(
                        "cluster is already initialized with id {}",
                        self.cluster_id
                    )));
                }
                self.cluster_id = cluster_id.clone();
                Ok(Outcome::ClusterInitialized { cluster_id })
            }
            Command::CreateService { id, spec, now_ms } => {
                validate::service_spec(&spec)?;
                if id.is_empty() {
                    return Err(StateError::invalid("id", "must not be empty"));
                }
                if self.service_names.contains_key(&spec.name) {
                    return Err(StateError::AlreadyExists {
                        kind: "service".into(),
                        name: spec.name,
                    });
                }
                if self.services.contains_key(&id) {
                    return Err(StateError::AlreadyExists {
                        kind: "service id".into(),
                        name: id,
                    });
                }
                let service = Service::new(id.clone(), spec, now_ms, index);
                self.service_names.insert(service.spec.name.clone(), id.clone());
                self.service_feed.touched(&id);
                self.services.insert(id, service.clone());
                Ok(Outcome::Service(Box::new(service)))
            }
            Command::UpdateService {
                service,
                spec,
                expected_version,
                force,
                now_ms,
            } => {
                validate::service_spec(&spec)?;
                let id = self.service_id(&service)?;
                let current = &self.services[&id];
                Self::check_version("service", &service, expected_version, current.version)?;
                if spec.name != current.spec.name {
                    return Err(StateError::invalid(
                        "name",
                        format!(
                            "a service cannot be renamed ({:?} -> {:?}); create a new one",
                            current.spec.name, spec.name
                        ),
                    ));
                }
                let new_tasks = force || !spec.same_tasks(&current.spec);
                let s = self.services.get_mut(&id).expect("id resolved above");
                if new_tasks {
                    let from = s.spec_version;
                    s.last_spec_version += 1;
                    let to = s.last_spec_version;
                    let old = std::mem::replace(&mut s.spec, spec);
                    s.previous.push(SpecVersion {
                        version: from,
                        spec: old,
                        replaced_at_ms: now_ms,
                    });
                    s.spec_version = to;
                    start_update(s, UpdateState::Updating, from, now_ms, String::new());
                } else {
                    s.spec = spec;
                }
                s.updated_at_ms = now_ms;
                s.version = index;
                self.service_feed.touched(&id);
                prune_history(s, &self.tasks);
                Ok(Outcome::Service(Box::new(s.clone())))
            }
            Command::RollbackService {
                service,
                to_version,
                now_ms,
            } => {
                let id = self.service_id(&service)?;
                let s = self.services.get_mut(&id).expect("id resolved above");
                let target = rollback_target(s, to_version)?;
                rollback(s, target, now_ms, "rollback requested".into());
                s.version = index;
                self.service_feed.touched(&id);
                prune_history(s, &self.tasks);
                Ok(Outcome::Service(Box::new(s.clone())))
            }
            Command::ScaleService {
                service,
                replicas,
                expected_version,
                now_ms,
            } => {
                validate::replicas(replicas)?;
                let id = self.service_id(&service)?;
                let s = self.services.get_mut(&id).expect("id resolved above");
                Self::check_version("service", &service, expected_version, s.version)?;
                s.spec.replicas = replicas;
                s.updated_at_ms = now_ms;
                s.version = index;
                self.service_feed.touched(&id);
                Ok(Outcome::Service(Box::new(s.clone())))
            }
            Command::DeleteService { service } => {
                let id = self.service_id(&service)?;
                let removed = self.services.remove(&id).expect("id resolved above");
                self.service_feed.touched(&id);
                self.service_names.remove(&removed.spec.name);
                let gone: Vec<String> = self
                    .tasks
                    .values()
                    .filter(|t| t.service_id == id)
                    .map(|t| t.id.clone())
                    .collect();
                for task_id in gone {
                    self.tasks.remove(&task_id);
                }
                Ok(Outcome::ServiceDeleted { id })
            }
            Command::RegisterNode {
                id,
                role,
                address,
                labels,
                capacity,
                now_ms,
            } => {
                if id.is_empty() {
                    return Err(StateError::invalid("node id", "must not be empty"));
                }
                validate::node_address(&address)?;
                validate::labels("node labels", &labels)?;
                let node = self.nodes.entry(id.clone()).or_insert_with(|| Node {
                    id,
                    role,
                    address: String::new(),
                    status: NodeStatus::Unknown,
                    availability: Availability::Active,
                    labels: BTreeMap::new(),
                    capacity: Resources::default(),
                    last_heartbeat_ms: now_ms,
                    created_at_ms: now_ms,
                    version: index,
                    agent_version: String::new(),
                });
                node.role = role;
                node.address = address;
                node.labels = labels;
                node.capacity = capacity;
                node.status = NodeStatus::Ready;
                node.last_heartbeat_ms = now_ms;
                node.version = index;
                Ok(Outcome::Node(node.clone()))
            }
            Command::UpdateNode {
                id,
                availability,
                labels,
                expected_version,
            } => {
                let node = self
                    .nodes
                    .get_mut(&id)
                    .ok_or_else(|| StateError::not_found("node", &id))?;
                Self::check_version("node", &id, expected_version, node.version)?;
                if availability.is_none() && labels.is_none() {
                    return Err(StateError::invalid(
                        "update",
                        "nothing to change; pass --availability or --label",
                    ));
                }
                if let Some(l) = &labels {
                    validate::labels("node labels", l)?;
                }
                if let Some(a) = availability {
                    node.availability = a;
                }
                if let Some(l) = labels {
                    node.labels = l;
                }
                node.version = index;
                Ok(Outcome::Node(node.clone()))
            }
            Command::SetNodeVersion { id, version } => {
                validate::agent_version(&version)?;
                let node = self
                    .nodes
                    .get_mut(&id)
                    .ok_or_else(|| StateError::not_found("node", &id))?;
                node.agent_version = version;
                Ok(Outcome::Node(node.clone()))
            }
            Command::RemoveNode { id, force } => {
                let node = self
                    .nodes
                    .get(&id)
                    .ok_or_else(|| StateError::not_found("node", &id))?;
                if node.status == NodeStatus::Ready && !force {
                    return Err(StateError::FailedPrecondition(format!(
                        "node {id:?} is ready; drain it and stop its agent first, or pass --force"
                    )));
                }
                self.nodes.remove(&id);
                self.pki.revoke_holder(&holder("worker", &id));
                Ok(Outcome::NodeRemoved { id })
            }
            Command::InstallCa {
                cert_der,
                key_pkcs8,
                cert_ttl_ms,
            } => {
                if !(MIN_CERT_TTL_MS..=MAX_CERT_TTL_MS).contains(&cert_ttl_ms) {
                    return Err(StateError::invalid(
                        "certificate lifetime",
                        format!(
                            "between {} s and {} days",
                            MIN_CERT_TTL_MS / 1000,
                            MAX_CERT_TTL_MS / 86_400_000
                        ),
                    ));
                }
                if !self.pki.ca_cert_der.is_empty() {
                    return Err(StateError::FailedPrecondition(
                        "the cluster already has a CA".into(),
                    ));
                }
                if cert_der.is_empty() || key_pkcs8.is_empty() {
                    return Err(StateError::invalid("CA", "certificate and key must not be empty"));
                }
                if cert_der.len() > MAX_CA_BYTES || key_pkcs8.len() > MAX_CA_BYTES {
                    return Err(StateError::invalid(
                        "CA",
                        format!("at most {MAX_CA_BYTES} bytes each"),
                    ));
                }
                self.pki.ca_cert_der = cert_der;
                self.pki.ca_key_pkcs8 = key_pkcs8;
                self.pki.cert_ttl_ms = cert_ttl_ms;
                Ok(Outcome::Internal)
            }
            Command::RecordCertificate {
                holder: who,
                serial_hex,
                not_after_ms,
                now_ms,
                renews,
                issuer_fingerprint,
            } => {
                if serial_hex.is_empty()
                    || serial_hex.len() > 64
                    || !serial_hex.chars().all(|c| c.is_ascii_hexdigit())
                {
                    return Err(StateError::invalid("serial", "must be 1 to 64 hex digits"));
                }
                if not_after_ms <= now_ms {
                    return Err(StateError::invalid("certificate", "must expire in the future"));
                }
                if let Some(old) = &renews {
                    let current = self
                        .pki
                        .issued
                        .get(&who)
                        .and_then(|s| s.get(old))
                        .is_some_and(|exp| *exp > now_ms);
                    if !current {
                        return Err(StateError::FailedPrecondition(format!(
                            "certificate {old} of {who} is no longer current (revoked with its node, or expired): join again with a new token"
                        )));
                    }
                }
                self.pki.prune(now_ms);
                let live = self.pki.issued.get(&who).map_or(0, BTreeMap::len);
                if live >= MAX_LIVE_CERTS_PER_HOLDER {
                    return Err(StateError::FailedPrecondition(format!(
                        "{who} already has {live} unexpired certificates (at most {MAX_LIVE_CERTS_PER_HOLDER}); renewals happen at half the lifetime, so wait for older ones to expire"
                    )));
                }
                let current_ca = super::token::ca_fingerprint(&self.pki.ca_cert_der);
                if let Some(r) = &mut self.pki.rotation {
                    if issuer_fingerprint != current_ca {
                        // Signed by the old CA just before the rotation started.
                        r.old_serials.insert(serial_hex.clone());
                    }
                }
                self.pki
                    .issued
                    .entry(who)
                    .or_default()
                    .insert(serial_hex, not_after_ms);
                Ok(Outcome::Internal)
            }
            Command::ConfirmCertificate {
                holder: who,
                serial_hex,
            } => {
                let current = self
                    .pki
                    .issued
                    .get(&who)
                    .is_some_and(|s| s.contains_key(&serial_hex));
                if let Some(r) = &mut self.pki.rotation {
                    if current && !r.old_serials.contains(&serial_hex) {
                        r.pending.remove(&who);
                    }
                }
                self.pki.settle_rotation();
                Ok(Outcome::Internal)
            }
            Command::RevokeHolder { holder: who } => {
                self.pki.revoke_holder(&who);
                Ok(Outcome::Internal)
            }
            Command::StartCaRotation {
                cert_der,
                key_pkcs8,
                cross_cert_der,
                now_ms,
            } => {
                if self.pki.ca_cert_der.is_empty() {
                    return Err(StateError::FailedPrecondition(
                        "the cluster is still initialising (no CA yet); retry in a moment".into(),
                    ));
                }
                if let Some(r) = &self.pki.rotation {
                    return Err(StateError::FailedPrecondition(format!(
                        "a CA rotation is already under way ({} of {} nodes renewed; waiting for {}); `warren cluster ca` shows it, and `warren node rm` a node that is gone for good",
                        r.total as usize - r.pending.len(),
                        r.total,
                        r.pending.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
                    )));
                }
                if [&cert_der, &key_pkcs8, &cross_cert_der]
                    .iter()
                    .any(|b| b.is_empty() || b.len() > MAX_CA_BYTES)
                {
                    return Err(StateError::invalid(
                        "CA",
                        format!(
                            "certificate, key and cross-signed certificate must be 1 to {MAX_CA_BYTES} bytes"
                        ),
                    ));
                }
                self.pki.prune(now_ms);
                let pending: BTreeSet<String> = self
                    .pki
                    .issued
                    .keys()
                    .filter(|h| h.starts_with("manager/") || h.starts_with("worker/"))
                    .cloned()
                    .collect();
                let old_serials = self.pki.issued.values().flat_map(|s| s.keys().cloned()).collect();
                let old_ca_cert_der = std::mem::replace(&mut self.pki.ca_cert_der, cert_der);
                self.pki.ca_key_pkcs8 = key_pkcs8;
                self.pki.rotation = Some(CaRotation {
                    old_ca_cert_der,
                    cross_cert_der,
                    total: pending.len() as u32,
                    pending,
                    old_serials,
                    started_ms: now_ms,
                });
                // With no node certificates at all there is nobody to wait for.
                self.pki.settle_rotation();
                Ok(Outcome::Internal)
            }
            Command::SetJoinToken {
                role,
                hash_hex,
                expires_at_ms,
                rotate,
                now_ms,
            } => {
                if hash_hex.len() != 64 || !hash_hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(StateError::invalid("token hash", "must be 64 hex digits"));
                }
                if expires_at_ms <= now_ms {
                    return Err(StateError::invalid("ttl", "a token must expire in the future"));
                }
                if expires_at_ms.saturating_sub(now_ms) > MAX_TOKEN_TTL_MS {
                    return Err(StateError::invalid(
                        "ttl",
                        format!("at most {} days", MAX_TOKEN_TTL_MS / 86_400_000),
                    ));
                }
                let live = self
                    .join_tokens
                    .iter()
                    .filter(|t| t.role == role && t.expires_at_ms > now_ms)
                    .count();
                if !rotate && live >= MAX_LIVE_TOKENS_PER_ROLE {
                    return Err(StateError::FailedPrecondition(format!(
                        "there are already {live} live {} join tokens (at most {MAX_LIVE_TOKENS_PER_ROLE}); rotate them with `warren cluster join-token {} --rotate`",
                        role.as_str(),
                        role.as_str()
                    )));
                }
                // Expired records are dropped on every issue so the list stays bounded.
                self.join_tokens
                    .retain(|t| t.expires_at_ms > now_ms && !(rotate && t.role == role));
                self.join_tokens.push(JoinTokenRecord {
                    role,
                    hash_hex,
                    issued_at_ms: now_ms,
                    expires_at_ms,
                });
                Ok(Outcome::JoinTokenSet { role, expires_at_ms })
            }
            Command::Orchestrate { changes, now_ms } => {
                let (mut applied, mut skipped) = (0, 0);
                for change in changes {
                    if self.apply_change(index, change, now_ms) {
                        applied += 1;
                    } else {
                        skipped += 1;
                    }
                }
                Ok(Outcome::TasksChanged { applied, skipped })
            }
            Command::ReportTasks {
                node_id,
                reports,
                now_ms,
            } => {
                validate::task_reports(&reports)?;
                if !self.nodes.contains_key(&node_id) {
                    return Err(StateError::not_found("node", &node_id));
                }
                let (mut applied, mut skipped) = (0, 0);
                for r in reports {
                    match self.tasks.get_mut(&r.task_id) {
                        Some(t) if t.node_id == node_id && !t.state.is_terminal() && reportable(r.state) => {
                            let t = std::sync::Arc::make_mut(t);
                            t.state = r.state;
                            if r.state == TaskState::Failed || r.state == TaskState::Rejected {
                                t.error = r.message;
                            } else {
                                t.message = r.message;
                            }
                            t.exit_code = r.exit_code;
                            if !r.container_id.is_empty() {
                                t.container_id = r.container_id;
                            }
                            if r.health.is_some() {
                                t.health = r.health;
                            }
                            t.updated_at_ms = now_ms;
                            t.version = index;
                            applied += 1;
                        }
                        _ => skipped += 1,
                    }
                }
                Ok(Outcome::TasksChanged { applied, skipped })
            }
        }
    }

    /// The final answer for request `request_id`, if it was applied before: what it named,
    /// as it is now; a refusal if the id came with a different request. `None` if the id is
    /// new. Any manager may answer a retry from its applied state with this.
    pub fn answer_for(&self, request_id: &str, fingerprint: u64) -> Option<Result<Outcome, StateError>> {
        let (first_fingerprint, first) = self.requests.get(request_id)?;
        if *first_fingerprint != fingerprint {
            return Some(Err(StateError::FailedPrecondition(format!(
                "request id {} was already used for a different request; send a new request with a new id",
                cut(request_id)
            ))));
        }
        Some(self.answer_again(first))
    }

    /// The answer for a request that was applied before: what it named, as it is now.
    fn answer_again(&self, first: &Remembered) -> Result<Outcome, StateError> {
        let gone = |kind: &str, id: &str| {
            Err(StateError::FailedPrecondition(format!(
                "this request was already applied, and {kind} {id} has been removed since"
            )))
        };
        Ok(match first.clone() {
            Remembered::Refused(e) => return Err(e),
            Remembered::Internal => Outcome::Internal,
            Remembered::ClusterInitialized { cluster_id } => Outcome::ClusterInitialized { cluster_id },
            Remembered::Service { id } => match self.services.get(&id) {
                Some(s) => Outcome::Service(Box::new(s.clone())),
                None => return gone("service", &id),
            },
            Remembered::ServiceDeleted { id } => Outcome::ServiceDeleted { id },
            Remembered::Node { id } => match self.nodes.get(&id) {
                Some(n) => Outcome::Node(n.clone()),
                None => return gone("node", &id),
            },
            Remembered::NodeRemoved { id } => Outcome::NodeRemoved { id },
            Remembered::JoinTokenSet { role, expires_at_ms } => Outcome::JoinTokenSet { role, expires_at_ms },
            Remembered::TasksChanged { applied, skipped } => Outcome::TasksChanged { applied, skipped },
        })
    }

    /// Applies one orchestrator change if its precondition still holds.
    fn apply_change(&mut self, index: u64, change: TaskChange, now_ms: i64) -> bool {
        let tasks = &mut self.tasks;
        let nodes = &self.nodes;
        // On a copy, put in only when changed: a task left as it was keeps its address, which
        // a diff of two states compares first.
        let mut task_update = |id: &str, f: &mut dyn FnMut(&mut Task) -> bool| match tasks.get_mut(id) {
            Some(t) => {
                let mut copy = Task::clone(t);
                let changed = f(&mut copy);
                if changed {
                    copy.updated_at_ms = now_ms;
                    copy.version = index;
                    *t = std::sync::Arc::new(copy);
                }
                changed
            }
            None => false,
        };
        match change {
            TaskChange::NodeDown { node_id } => {
                self.set_node_status(index, &node_id, NodeStatus::Down, now_ms)
            }
            TaskChange::NodeReady { node_id } => {
                self.set_node_status(index, &node_id, NodeStatus::Ready, now_ms)
            }
            TaskChange::Create(mut task) => {
                if tasks.contains_key(&task.id) || !self.services.contains_key(&task.service_id) {
                    return false;
                }
                task.version = index;
                tasks.insert(task.id.clone(), task.into());
                true
            }
            TaskChange::Assign { task_id, node_id } => {
                let ready = nodes.get(&node_id).is_some_and(|n| n.status == NodeStatus::Ready);
                task_update(&task_id, &mut |t| {
                    let ok = ready
                        && t.state == TaskState::Pending
                        && matches!(t.desired_state, TaskState::Running | TaskState::Ready);
                    if ok {
                        t.node_id = node_id.clone();
                        t.state = TaskState::Assigned;
                        t.message.clear();
                    }
                    ok
                })
            }
            TaskChange::Pend { task_id, reason } => task_update(&task_id, &mut |t| {
                let ok = t.state == TaskState::Pending;
                if ok {
                    t.message = reason.clone();
                }
                ok
            }),
            TaskChange::Orphan { task_id } => task_update(&task_id, &mut |t| {
                let ok = t.holds_node();
                if ok {
                    t.state = TaskState::Orphaned;
                    t.message = format!("node {} is down or gone; replaced", t.node_id);
                }
                ok
            }),
            TaskChange::Shutdown { task_id, reason } => task_update(&task_id, &mut |t| {
                let ok = t.desired_state != TaskState::Shutdown && !t.state.is_terminal();
                if ok {
                    t.desired_state = TaskState::Shutdown;
                    t.message = reason.clone();
                    // Nobody is running it to confirm the stop.
                    if t.node_id.is_empty() || !nodes.contains_key(&t.node_id) {
                        t.state = TaskState::Shutdown;
                    }
                }
                ok
            }),
            TaskChange::Run { task_id } => task_update(&task_id, &mut |t| {
                let ok = t.desired_state == TaskState::Ready && !t.state.is_terminal();
                if ok {
                    t.desired_state = TaskState::Running;
                }
                ok
            }),
            TaskChange::SetUpdate {
                service_id,
                revision,
                status,
            } => {
                let Some(s) = self.services.get_mut(&service_id) else {
                    return false;
                };
                if s.update.as_ref().map(|u| u.revision) != Some(revision) {
                    return false;
                }
                let mut status = status;
                status.revision = revision + 1;
                let finished = !status.state.in_progress();
                s.update = Some(status);
                s.version = index;
                self.service_feed.touched(&service_id);
                if finished {
                    prune_history(s, &self.tasks);
                }
                true
            }
            TaskChange::AutoRollback {
                service_id,
                revision,
                message,
            } => {
                let Some(s) = self.services.get_mut(&service_id) else {
                    return false;
                };
                let Some(u) = &s.update else { return false };
                let target = u.from_version;
                if u.revision != revision
                    || u.state != UpdateState::Updating
                    || u.to_version != s.spec_version
                    || !s.previous.iter().any(|p| p.version == target)
                {
                    return false;
                }
                rollback(s, target, now_ms, message);
                s.version = index;
                self.service_feed.touched(&service_id);
                true
            }
            TaskChange::Remove { task_id } => {
                let done = tasks.get(&task_id).is_some_and(|t| t.state.is_terminal());
                if done {
                    tasks.remove(&task_id);
                }
                done
            }
        }
    }

    /// The reports from worker `node_id` that would change something: its own, unfinished
    /// tasks whose state, exit code or container differ from what the state holds. A
    /// heartbeat with nothing else writes no Raft entry.
    pub fn changed_reports(&self, node_id: &str, mut reports: Vec<TaskReport>) -> Vec<TaskReport> {
        reports.retain(|r| {
            self.tasks.get(&r.task_id).is_some_and(|t| {
                t.node_id == node_id
                    && !t.state.is_terminal()
                    && (t.state != r.state
                        || t.exit_code != r.exit_code
                        || (!r.container_id.is_empty() && r.container_id != t.container_id))
            })
        });
        reports
    }

    fn set_node_status(&mut self, index: u64, id: &str, status: NodeStatus, now_ms: i64) -> bool {
        match self.nodes.get_mut(id) {
            Some(n) if n.status != status => {
                n.status = status;
                if status == NodeStatus::Ready {
                    n.last_heartbeat_ms = now_ms;
                }
                n.version = index;
                true
            }
            _ => false,
        }
    }
}

/// Starts tracking a rolling update (or rollback) of `s` from spec version `from` to its
/// current one. Slots still being replaced by an update in progress stay in flight, so a
/// new update never takes more than its parallelism of slots down at once.
fn start_update(s: &mut Service, state: UpdateState, from: u64, now_ms: i64, message: String) {
    let prev = s.update.take();
    let in_flight = prev
        .as_ref()
        .filter(|u| u.state.in_progress())
        .map(|u| u.in_flight.clone())
        .unwrap_or_default();
    s.update = Some(Box::new(UpdateStatus {
        state,
        from_version: from,
        to_version: s.spec_version,
        started_at_ms: now_ms,
        finished_at_ms: None,
        message,
        done: BTreeSet::new(),
        failed: BTreeMap::new(),
        in_flight,
        next_slot_at_ms: now_ms,
        revision: prev.map_or(0, |u| u.revision) + 1,
    }));
}

/// The version a rollback of `s` goes back to: `to_version`, or (0) the version the latest
/// update replaced, else the newest earlier one.
fn rollback_target(s: &Service, to_version: u64) -> Result<u64, StateError> {
    let kept = |v: u64| s.previous.iter().any(|p| p.version == v);
    let listing = || {
        let v: Vec<String> = s.previous.iter().map(|p| p.version.to_string()).collect();
        if v.is_empty() {
            "it keeps no earlier version".to_string()
        } else {
            format!(
                "it keeps versions {} (see `warren service inspect`)",
                v.join(", ")
            )
        }
    };
    if to_version == s.spec_version && to_version != 0 {
        return Err(StateError::FailedPrecondition(format!(
            "service {:?} runs version {to_version} already",
            s.spec.name
        )));
    }
    if to_version != 0 {
        return if kept(to_version) {
            Ok(to_version)
        } else {
            Err(StateError::FailedPrecondition(format!(
                "service {:?} has no version {to_version}; {}",
                s.spec.name,
                listing()
            )))
        };
    }
    s.update
        .as_ref()
        .map(|u| u.from_version)
        .filter(|v| *v != s.spec_version && kept(*v))
        .or_else(|| s.previous.last().map(|p| p.version))
        .ok_or_else(|| {
            StateError::FailedPrecondition(format!(
                "service {:?} has no earlier version to roll back to; {}",
                s.spec.name,
                listing()
            ))
        })
}

/// Makes kept version `target` current again and starts rolling it out. The replica count
/// stays as it is: a rollback reverts what the tasks run, not a scale.
fn rollback(s: &mut Service, target: u64, now_ms: i64, message: String) {
    let Some(i) = s.previous.iter().position(|p| p.version == target) else {
        return;
    };
    let back = s.previous.remove(i);
    let from = s.spec_version;
    let replicas = s.spec.replicas;
    let old = std::mem::replace(&mut s.spec, back.spec);
    s.spec.replicas = replicas;
    s.previous.push(SpecVersion {
        version: from,
        spec: old,
        replaced_at_ms: now_ms,
    });
    s.spec_version = target;
    s.updated_at_ms = now_ms;
    start_update(s, UpdateState::RollbackStarted, from, now_ms, message);
}

/// Keeps the newest `SPEC_HISTORY` earlier versions, and any that a task of `s` still runs.
fn prune_history(s: &mut Service, tasks: &Tasks) {
    let live: BTreeSet<u64> = tasks
        .values()
        .filter(|t| t.service_id == s.id && !t.state.is_terminal())
        .map(|t| t.spec_version)
        .collect();
    let keep_from = s.previous.len().saturating_sub(SPEC_HISTORY);
    let mut i = 0;
    s.previous.retain(|p| {
        i += 1;
        i > keep_from || live.contains(&p.version)
    });
}

/// States a worker may report (the earlier ones are the orchestrator's).
fn reportable(state: TaskState) -> bool {
    !matches!(
        state,
        TaskState::New | TaskState::Pending | TaskState::Assigned | TaskState::Orphaned
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_is_named_by_six_characters_of_its_id_or_of_what_the_cli_shows() {
        let ids = [
            "19ae0510f00a3b4c5d6e7f809",
            "19ae0510f00a3b4c5ffffffff",
            "19ae0510f01c0ffee0000000a",
        ];
        let tasks: Vec<Task> = ids
            .iter()
            .map(|id| Task {
                id: id.to_string(),
                service_id: "s1".into(),
                node_id: "n1".into(),
                ..Default::default()
            })
            .collect();
        // (given, the id found, or the start of the error)
        let cases = [
            ("c0ffee", Ok(ids[2])),
            ("a3b4c5d6", Ok(ids[0])),
            ("19ae0510f01", Ok(ids[2])),
            (ids[1], Ok(ids[1])),
            ("a3b4c5", Err("invalid task_id: \"a3b4c5\" matches 2 tasks")),
            ("19ae05", Err("invalid task_id: \"19ae05\" matches 3 tasks")),
            ("c0ffe", Err("invalid task_id: give at least 6")),
            ("abcdef", Err("task \"abcdef\" not found")),
        ];
        for (given, want) in cases {
            let got = task_named(tasks.iter().collect(), given);
            match (got, want) {
                (Ok(t), Ok(id)) => assert_eq!(t.id, id, "{given}"),
                (Err(e), Err(start)) => assert!(e.to_string().starts_with(start), "{given}: {e}"),
                (got, want) => panic!("{given}: {got:?}, wanted {want:?}"),
            }
        }
    }

    fn spec(name: &str, replicas: i64) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            image: "busybox:latest".into(),
            replicas,
            ..Default::default()
        }
    }

    fn create(id: &str, name: &str, replicas: i64) -> Command {
        Command::CreateService {
            id: id.into(),
            spec: spec(name, replicas),
            now_ms: 1_000,
        }
    }

    fn register(id: &str) -> Command {
        Command::RegisterNode {
            id: id.into(),
            role: Role::Worker,
            address: "10.0.0.1:4000".into(),
            labels: BTreeMap::new(),
            capacity: Resources {
                cpu_millis: 2000,
                memory_bytes: 1 << 30,
            },
            now_ms: 5,
        }
    }

    /// A state with service "web" (id s1, version 1, 3 replicas) and ready node "n1".
    fn base() -> ClusterState {
        let mut st = ClusterState::default();
        st.apply(1, create("s1", "web", 3)).unwrap();
        st.apply(2, register("n1")).unwrap();
        st
    }

    /// Every command that must be refused, with the error kind it must give. Each one is
    /// applied to `base()` and must leave the state exactly as it was.
    #[test]
    fn refused_commands_change_nothing() {
        type Case<'a> = (&'a str, Command, fn(&StateError) -> bool);
        let cases: Vec<Case> = vec![
            ("invalid name", create("s2", "UPPER", 1), |e| {
                matches!(e, StateError::InvalidArgument { .. })
            }),
            ("underscore", create("s2", "a_b", 1), |e| {
                matches!(e, StateError::InvalidArgument { .. })
            }),
            ("empty name", create("s2", "", 1), |e| {
                matches!(e, StateError::InvalidArgument { .. })
            }),
            ("64 chars", create("s2", &"a".repeat(64), 1), |e| {
                matches!(e, StateError::InvalidArgument { .. })
            }),
            ("negative replicas", create("s2", "api", -1), |e| {
                matches!(e, StateError::InvalidArgument { .. })
            }),
            ("too many replicas", create("s2", "api", MAX_REPLICAS + 1), |e| {
                matches!(e, StateError::InvalidArgument { .. })
            }),
            (
                "empty image",
                Command::CreateService {
                    id: "s2".into(),
                    spec: ServiceSpec {
                        image: String::new(),
                        ..spec("api", 1)
                    },
                    now_ms: 1,
                },
                |e| matches!(e, StateError::InvalidArgument { .. }),
            ),
            ("empty id", create("", "api", 1), |e| {
                matches!(e, StateError::InvalidArgument { .. })
            }),
            ("duplicate name", create("s2", "web", 1), |e| {
                matches!(e, StateError::AlreadyExists { .. })
            }),
            ("duplicate id", create("s1", "api", 1), |e| {
                matches!(e, StateError::AlreadyExists { .. })
            }),
            (
                "scale unknown",
                Command::ScaleService {
                    service: "nope".into(),
                    replicas: 1,
                    expected_version: 0,
                    now_ms: 1,
                },
                |e| matches!(e, StateError::NotFound { .. }),
            ),
            (
                "scale negative",
                Command::ScaleService {
                    service: "web".into(),
                    replicas: -1,
                    expected_version: 0,
                    now_ms: 1,
                },
                |e| matches!(e, StateError::InvalidArgument { .. }),
            ),
            (
                "scale stale version",
                Command::ScaleService {
                    service: "web".into(),
                    replicas: 5,
                    expected_version: 99,
                    now_ms: 1,
                },
                |e| {
                    matches!(
                        e,
                        StateError::VersionConflict {
                            expected: 99,
                            actual: 1,
                            ..
                        }
                    )
                },
            ),
            (
                "update unknown",
                Command::UpdateService {
                    service: "nope".into(),
                    spec: spec("nope", 1),
                    expected_version: 0,
                    force: false,
                    now_ms: 1,
                },
                |e| matches!(e, StateError::NotFound { .. }),
            ),
            (
                "update stale",
                Command::UpdateService {
                    service: "web".into(),
                    spec: spec("web", 1),
                    expected_version: 7,
                    force: false,
                    now_ms: 1,
                },
                |e| matches!(e, StateError::VersionConflict { .. }),
            ),
            (
                "update rename",
                Command::UpdateService {
                    service: "web".into(),
                    spec: spec("web2", 1),
                    expected_version: 0,
                    force: false,
                    now_ms: 1,
                },
                |e| matches!(e, StateError::InvalidArgument { .. }),
            ),
            (
                "update invalid",
                Command::UpdateService {
                    service: "web".into(),
                    spec: spec("web", MAX_REPLICAS + 1),
                    expected_version: 0,
                    force: false,
                    now_ms: 1,
                },
                |e| matches!(e, StateError::InvalidArgument { .. }),
            ),
            (
                "delete unknown",
                Command::DeleteService {
                    service: "nope".into(),
                },
                |e| matches!(e, StateError::NotFound { .. }),
            ),
            (
                "register empty id",
                Command::RegisterNode {
                    id: String::new(),
                    role: Role::Worker,
                    address: String::new(),
                    labels: BTreeMap::new(),
                    capacity: Resources::default(),
                    now_ms: 1,
                },
                |e| matches!(e, StateError::InvalidArgument { .. }),
            ),
            (
                "update unknown node",
                Command::UpdateNode {
                    id: "n9".into(),
                    availability: Some(Availability::Drain),
                    labels: None,
                    expected_version: 0,
                },
                |e| matches!(e, StateError::NotFound { .. }),
            ),
            (
                "update node stale",
                Command::UpdateNode {
                    id: "n1".into(),
                    availability: Some(Availability::Drain),
                    labels: None,
                    expected_version: 1,
                },
                |e| matches!(e, StateError::VersionConflict { .. }),
            ),
            (
                "remove unknown node",
                Command::RemoveNode {
                    id: "n9".into(),
                    force: false,
                },
                |e| matches!(e, StateError::NotFound { .. }),
            ),
            (
                "remove ready node",
                Command::RemoveNode {
                    id: "n1".into(),
                    force: false,
                },
                |e| matches!(e, StateError::FailedPrecondition(_)),
            ),
            (
                "token bad hash",
                Command::SetJoinToken {
                    role: Role::Worker,
                    hash_hex: "zz".into(),
                    expires_at_ms: 10,
                    rotate: false,
                    now_ms: 1,
                },
                |e| matches!(e, StateError::InvalidArgument { .. }),
            ),
            (
                "token expired",
                Command::SetJoinToken {
                    role: Role::Worker,
                    hash_hex: "a".repeat(64),
                    expires_at_ms: 1,
                    rotate: false,
                    now_ms: 1,
                },
                |e| matches!(e, StateError::InvalidArgument { .. }),
            ),
            (
                "init other cluster",
                Command::InitCluster {
                    cluster_id: "other".into(),
                    now_ms: 1,
                },
                |e| matches!(e, StateError::FailedPrecondition(_)),
            ),
        ];
        for (what, cmd, expect) in cases {
            let mut st = base();
            st.cluster_id = "c1".into();
            let before = st.clone();
            let err = st.apply(10, cmd).expect_err(what);
            assert!(expect(&err), "{what}: unexpected error {err:?}");
            assert_eq!(st, before, "{what}: a refused command changed the state");
        }
    }

    #[test]
    fn create_get_by_id_and_name() {
        let st = base();
        let s = st.service("web").expect("by name");
        assert_eq!(s.id, "s1");
        assert_eq!(s.version, 1);
        assert_eq!(s.created_at_ms, 1_000);
        assert_eq!(st.service("s1").unwrap().spec.name, "web");
        assert!(st.service("api").is_none());
    }

    fn scale(service: &str, replicas: i64) -> Command {
        Command::ScaleService {
            service: service.into(),
            replicas,
            expected_version: 0,
            now_ms: 2_000,
        }
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// The feed names each service a command added, changed or removed, so a reader that
    /// follows it sees what a walk of every service sees (`note` checks that in every debug
    /// build). A reader of another lineage (the state read back from its bytes, as from a
    /// snapshot) or too far behind walks instead, and sees the same.
    #[test]
    fn service_readers_follow_the_feed_and_walk_when_it_cannot_say() {
        let mut st = base();
        let mut reader = ServiceVersions::default();
        assert!(
            st.service_feed.since(&reader.at).is_none(),
            "a new reader has no place"
        );
        assert_eq!(reader.note(&st).added, ids(&["s1"]));
        st.apply(3, create("s2", "db", 1)).unwrap();
        st.apply(4, scale("web", 5)).unwrap();
        st.apply(5, create("s3", "web", 1)).unwrap_err();
        let touched: Vec<&str> = st.service_feed.since(&reader.at).expect("in the feed").collect();
        assert_eq!(touched, ["s2", "s1"], "a refused command touches nothing");
        assert_eq!(
            reader.note(&st),
            ServiceChanges {
                added: ids(&["s2"]),
                changed: ids(&["s1"]),
                removed: vec![]
            }
        );
        st.apply(6, Command::DeleteService { service: "db".into() })
            .unwrap();
        assert_eq!(reader.note(&st).removed, ids(&["s2"]));
        assert_eq!(reader.note(&st), ServiceChanges::default());

        let mut back: ClusterState = bincode::deserialize(&bincode::serialize(&st).unwrap()).unwrap();
        assert_eq!(back, st, "the feed is not part of the state's value");
        back.apply(7, scale("web", 1)).unwrap();
        assert!(back.service_feed.since(&reader.at).is_none(), "another lineage");
        assert_eq!(reader.clone().note(&back).changed, ids(&["s1"]));

        let behind = reader.at.clone();
        for i in 0..=SERVICE_FEED_MAX as u64 {
            st.apply(10 + i, scale("web", 1 + (i % 3) as i64)).unwrap();
        }
        assert!(st.service_feed.since(&behind).is_none(), "fell behind");
        assert_eq!(reader.note(&st).changed, ids(&["s1"]));
        assert_eq!(st.service_feed.ids.len(), SERVICE_FEED_MAX, "bounded");
    }

    #[test]
    fn scale_sets_replicas_and_version() {
        let mut st = base();
        let out = st
            .apply(
                7,
                Command::ScaleService {
                    service: "web".into(),
                    replicas: 0,
                    expected_version: 1,
                    now_ms: 2_000,
                },
            )
            .unwrap();
        let Outcome::Service(s) = out else {
            panic!("{out:?}")
        };
        assert_eq!((s.spec.replicas, s.version, s.updated_at_ms), (0, 7, 2_000));
        assert_eq!(st.service("web").unwrap().spec.replicas, 0);
        // by id, any version
        st.apply(
            8,
            Command::ScaleService {
                service: "s1".into(),
                replicas: 10_000,
                expected_version: 0,
                now_ms: 1,
            },
        )
        .unwrap();
        assert_eq!(st.service("web").unwrap().spec.replicas, 10_000);
    }

    #[test]
    fn update_replaces_spec() {
        let mut st = base();
        let mut new = spec("web", 2);
        new.image = "nginx:1".into();
        new.env.insert("A".into(), "1".into());
        st.apply(
            4,
            Command::UpdateService {
                service: "web".into(),
                spec: new.clone(),
                expected_version: 1,
                force: false,
                now_ms: 9,
            },
        )
        .unwrap();
        let s = st.service("web").unwrap();
        assert_eq!(s.spec, new);
        assert_eq!(s.version, 4);
        assert_eq!(s.created_at_ms, 1_000);
    }

    #[test]
    fn delete_frees_the_name() {
        let mut st = base();
        let out = st
            .apply(
                3,
                Command::DeleteService {
                    service: "web".into(),
                },
            )
            .unwrap();
        assert_eq!(out, Outcome::ServiceDeleted { id: "s1".into() });
        assert!(st.services.is_empty() && st.service_names.is_empty());
        st.apply(4, create("s2", "web", 1)).unwrap();
        assert_eq!(st.service("web").unwrap().id, "s2");
    }

    #[test]
    fn node_lifecycle() {
        let mut st = base();
        assert_eq!(st.nodes["n1"].status, NodeStatus::Ready);
        st.apply(
            5,
            Command::UpdateNode {
                id: "n1".into(),
                availability: Some(Availability::Drain),
                labels: None,
                expected_version: 2,
            },
        )
        .unwrap();
        assert_eq!(st.nodes["n1"].availability, Availability::Drain);
        assert_eq!(st.nodes["n1"].version, 5);
        // re-register keeps availability and creation time
        st.apply(6, register("n1")).unwrap();
        assert_eq!(st.nodes["n1"].availability, Availability::Drain);
        st.apply(
            7,
            Command::RemoveNode {
                id: "n1".into(),
                force: true,
            },
        )
        .unwrap();
        assert!(st.nodes.is_empty());
    }

    #[test]
    fn join_tokens_rotate_and_expire() {
        let mut st = ClusterState::default();
        let set = |role, c: char, rotate, now_ms| Command::SetJoinToken {
            role,
            hash_hex: c.to_string().repeat(64),
            expires_at_ms: now_ms + 100,
            rotate,
            now_ms,
        };
        st.apply(1, set(Role::Worker, 'a', false, 0)).unwrap();
        st.apply(2, set(Role::Manager, 'b', false, 0)).unwrap();
        st.apply(3, set(Role::Worker, 'c', false, 0)).unwrap();
        assert_eq!(st.join_tokens.len(), 3);
        st.apply(4, set(Role::Worker, 'd', true, 0)).unwrap();
        let hashes: Vec<_> = st.join_tokens.iter().map(|t| &t.hash_hex[..1]).collect();
        assert_eq!(hashes, ["b", "d"]);
        // at t=150 both earlier ones have expired and are dropped
        st.apply(5, set(Role::Worker, 'e', false, 150)).unwrap();
        assert_eq!(st.join_tokens.len(), 1);
    }

    #[test]
    fn once_applies_a_request_at_most_once() {
        let mut st = base();
        let del = |rid: &str| Command::Once {
            request_id: rid.into(),
            fingerprint: 7,
            cmd: Box::new(Command::DeleteService {
                service: "web".into(),
            }),
        };
        assert_eq!(
            st.apply(3, del("r1")),
            Ok(Outcome::ServiceDeleted { id: "s1".into() })
        );
        // the retry gets the first answer, not NotFound
        assert_eq!(
            st.apply(4, del("r1")),
            Ok(Outcome::ServiceDeleted { id: "s1".into() })
        );
        // another request is a new delete
        assert!(matches!(st.apply(5, del("r2")), Err(StateError::NotFound { .. })));
        // refusals are remembered too
        assert!(matches!(st.apply(6, del("r2")), Err(StateError::NotFound { .. })));
    }

    #[test]
    fn a_batch_applies_each_write_alone_and_remembers_each() {
        let mut st = base();
        let once = |rid: &str, cmd: Command| Command::Once {
            request_id: rid.into(),
            fingerprint: 7,
            cmd: Box::new(cmd),
        };
        let create = |id: &str, name: &str| Command::CreateService {
            id: id.into(),
            spec: spec(name, 1),
            now_ms: 0,
        };
        let batch = Command::Batch(vec![
            once("b1", create("s2", "api")),
            // refused: the name is taken; the writes around it still apply
            once("b2", create("s3", "web")),
            once(
                "b3",
                Command::DeleteService {
                    service: "web".into(),
                },
            ),
            Command::Batch(vec![]),
        ]);
        assert_eq!(
            batch.precheck().unwrap_err().to_string(),
            "invalid batch: a batch inside a batch"
        );
        let Ok(Outcome::Batch(answers)) = st.apply(9, batch) else {
            panic!("a batch answers with one answer per write")
        };
        assert_eq!(answers.len(), 4);
        assert!(matches!(&answers[0], Ok(Outcome::Service(s)) if s.id == "s2" && s.version == 9));
        assert!(matches!(answers[1], Err(StateError::AlreadyExists { .. })));
        assert_eq!(answers[2], Ok(Outcome::ServiceDeleted { id: "s1".into() }));
        assert!(answers[3].is_err());
        assert!(st.service("api").is_some() && st.service("web").is_none());
        // each request of the batch is remembered under its own key, in order
        assert_eq!(st.request_order.values().collect::<Vec<_>>(), ["b1", "b2", "b3"]);
        assert_eq!(
            st.answer_for("b3", 7),
            Some(Ok(Outcome::ServiceDeleted { id: "s1".into() }))
        );
        // a later entry's request sorts after the batch's
        st.apply(
            10,
            once(
                "c1",
                Command::DeleteService {
                    service: "api".into(),
                },
            ),
        )
        .unwrap();
        assert_eq!(
            st.request_order.values().next_back().map(String::as_str),
            Some("c1")
        );
    }

    #[test]
    fn remembered_requests_are_bounded() {
        let mut st = ClusterState::default();
        for i in 0..(MAX_REMEMBERED_REQUESTS as u64 + 5) {
            let cmd = Command::Once {
                request_id: format!("r{i}"),
                fingerprint: 7,
                cmd: Box::new(Command::DeleteService { service: "x".into() }),
            };
            let _ = st.apply(i + 1, cmd);
        }
        assert_eq!(st.requests.len(), MAX_REMEMBERED_REQUESTS);
        assert_eq!(st.request_order.len(), MAX_REMEMBERED_REQUESTS);
        assert!(!st.requests.contains_key("r0") && st.requests.contains_key("r5"));
        let total: u64 = st.requests.iter().map(|(k, (_, r))| r.cost(k)).sum();
        assert_eq!(total, st.remembered_bytes);
    }

    /// The table keeps answers, not results: a hundred updates of a big spec leave it small,
    /// and a retry still gets the service back as it is now.
    #[test]
    fn remembered_requests_hold_ids_not_specs() {
        let mut st = base();
        let mut big = spec("web", 1);
        big.env.insert("BIG".into(), "x".repeat(16_000));
        for i in 0..100u64 {
            let cmd = Command::Once {
                request_id: format!("u{i}"),
                fingerprint: 7,
                cmd: Box::new(Command::UpdateService {
                    service: "web".into(),
                    spec: big.clone(),
                    expected_version: 0,
                    force: false,
                    now_ms: 1,
                }),
            };
            st.apply(10 + i, cmd).unwrap();
        }
        assert!(st.remembered_bytes < 100 * 200, "{} bytes", st.remembered_bytes);
        let again = Command::Once {
            request_id: "u0".into(),
            fingerprint: 7,
            cmd: Box::new(Command::DeleteService {
                service: "web".into(),
            }),
        };
        match st.apply(500, again) {
            Ok(Outcome::Service(s)) => assert_eq!(s.version, 109),
            other => panic!("{other:?}"),
        }
        // bounded by bytes as well as count: long refusals push old entries out
        for i in 0..20_000u64 {
            let cmd = Command::Once {
                request_id: format!("{i:0>60}"),
                fingerprint: 7,
                cmd: Box::new(Command::DeleteService {
                    service: "n".repeat(100),
                }),
            };
            let _ = st.apply(1_000 + i, cmd);
        }
        assert!(st.remembered_bytes <= MAX_REMEMBERED_BYTES as u64);
    }

    /// Every command `refused_commands_change_nothing` refuses for its input alone is also
    /// refused by `precheck`, before it would enter the log.
    #[test]
    fn precheck_refuses_bad_input_before_the_log() {
        let mut big = spec("web", 1);
        big.env.insert("BIG".into(), "x".repeat(3_500_000));
        let cmds = [
            create("s2", "UPPER", 1),
            Command::UpdateService {
                service: "web".into(),
                spec: big,
                expected_version: 0,
                force: false,
                now_ms: 1,
            },
            Command::ScaleService {
                service: "web".into(),
                replicas: -1,
                expected_version: 0,
                now_ms: 1,
            },
            Command::UpdateNode {
                id: "n1".into(),
                availability: None,
                labels: None,
                expected_version: 0,
            },
        ];
        for cmd in cmds {
            let once = Command::Once {
                request_id: "r".into(),
                fingerprint: 7,
                cmd: Box::new(cmd.clone()),
            };
            assert!(
                matches!(once.precheck(), Err(StateError::InvalidArgument { .. })),
                "{cmd:?}"
            );
        }
        assert!(create("s2", "api", 1).precheck().is_ok());
    }

    #[test]
    fn a_request_id_reused_for_another_request_is_refused() {
        let mut st = base();
        let once = |fingerprint: u64, cmd: Command| Command::Once {
            request_id: "r".into(),
            fingerprint,
            cmd: Box::new(cmd),
        };
        st.apply(10, once(1, create("s2", "api", 1))).unwrap();
        let before = st.clone();
        // The same id with another request: refused, nothing changes.
        let e = st.apply(11, once(2, create("s3", "other", 1))).unwrap_err();
        assert!(matches!(e, StateError::FailedPrecondition(_)), "{e:?}");
        assert_eq!(st, before);
        // The same request again: the first answer.
        assert!(
            matches!(st.apply(12, once(1, create("s9", "api", 1))), Ok(Outcome::Service(s)) if s.id == "s2")
        );
    }

    #[test]
    fn live_tokens_are_capped_and_ttl_bounded() {
        let mut st = base();
        let set = |i: u64, rotate: bool, expires: i64| Command::SetJoinToken {
            role: Role::Worker,
            hash_hex: format!("{i:064x}"),
            expires_at_ms: expires,
            rotate,
            now_ms: 10,
        };
        for i in 0..MAX_LIVE_TOKENS_PER_ROLE as u64 {
            st.apply(10 + i, set(i, false, 1_000)).unwrap();
        }
        let before = st.clone();
        assert!(matches!(
            st.apply(500, set(999, false, 1_000)),
            Err(StateError::FailedPrecondition(_))
        ));
        assert!(matches!(
            st.apply(501, set(999, true, 1 << 50)),
            Err(StateError::InvalidArgument { .. })
        ));
        assert_eq!(st, before);
        st.apply(502, set(999, true, 1_000)).unwrap();
        assert_eq!(st.join_tokens.len(), 1);
    }

    #[test]
    fn update_node_needs_a_change_and_errors_quote_briefly() {
        let mut st = base();
        let before = st.clone();
        let cmd = Command::UpdateNode {
            id: "n1".into(),
            availability: None,
            labels: None,
            expected_version: 0,
        };
        assert!(matches!(
            st.apply(9, cmd),
            Err(StateError::InvalidArgument { .. })
        ));
        assert_eq!(st, before);
        let e = st
            .apply(
                10,
                Command::DeleteService {
                    service: "x".repeat(20_000),
                },
            )
            .unwrap_err()
            .to_string();
        assert!(e.len() < 400 && e.contains("20000 bytes"), "{e}");
        let e = StateError::not_found("task", "t1").to_string();
        assert!(e.contains("warren service ps"), "{e}");
    }

    #[test]
    fn init_cluster_is_idempotent() {
        let mut st = ClusterState::default();
        st.apply(
            1,
            Command::InitCluster {
                cluster_id: "c1".into(),
                now_ms: 0,
            },
        )
        .unwrap();
        st.apply(
            2,
            Command::InitCluster {
                cluster_id: "c1".into(),
                now_ms: 0,
            },
        )
        .unwrap();
        assert_eq!(st.cluster_id, "c1");
    }

    #[test]
    fn apply_is_deterministic() {
        let log: Vec<Command> = (0..50)
            .map(|i| match i % 3 {
                0 => create(&format!("s{i}"), &format!("svc-{i}"), i),
                1 => Command::ScaleService {
                    service: format!("svc-{}", i - 1),
                    replicas: i * 2,
                    expected_version: 0,
                    now_ms: i,
                },
                _ => Command::DeleteService {
                    service: format!("svc-{}", i - 2),
                },
            })
            .collect();
        let run = || {
            let mut st = ClusterState::default();
            let outs: Vec<_> = log
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, c)| st.apply(i as u64 + 1, c))
                .collect();
            (st, outs)
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn certificates_are_tracked_bounded_and_revoked_with_their_holder() {
        let mut st = base();
        let ca = Command::InstallCa {
            cert_der: vec![1; 10],
            key_pkcs8: vec![2; 10],
            cert_ttl_ms: 86_400_000,
        };
        st.apply(10, ca.clone()).unwrap();
        assert!(
            matches!(st.apply(11, ca), Err(StateError::FailedPrecondition(_))),
            "a CA is set once"
        );
        let record =
            |holder: &str, serial: &str, not_after_ms: i64, now_ms: i64| Command::RecordCertificate {
                holder: holder.into(),
                serial_hex: serial.into(),
                not_after_ms,
                now_ms,
                renews: None,
                issuer_fingerprint: String::new(),
            };
        let renew = |holder: &str, serial: &str, old: &str| Command::RecordCertificate {
            holder: holder.into(),
            serial_hex: serial.into(),
            not_after_ms: 1_000,
            now_ms: 100,
            renews: Some(old.into()),
            issuer_fingerprint: String::new(),
        };
        st.apply(12, record("worker/n1", "aa", 1_000, 100)).unwrap();
        st.apply(13, record("manager/2", "bb", 1_000, 100)).unwrap();
        // Refused, changing nothing: renewing an unknown certificate, an expired or malformed one.
        for bad in [
            renew("worker/ghost", "cc", "aa"),
            renew("worker/n1", "cc", "bb"),
            record("worker/n1", "cc", 100, 100),
            record("worker/n1", "not-hex", 1_000, 100),
            record("worker/n1", "", 1_000, 100),
        ] {
            let before = st.clone();
            assert!(st.apply(14, bad.clone()).is_err(), "{bad:?}");
            assert_eq!(st, before);
        }
        // At most MAX_LIVE_CERTS_PER_HOLDER unexpired ones per holder.
        for i in 1..MAX_LIVE_CERTS_PER_HOLDER {
            st.apply(20 + i as u64, record("worker/n1", &format!("a{i:x}"), 1_000, 100))
                .unwrap();
        }
        let before = st.clone();
        assert!(st.apply(40, record("worker/n1", "ff", 1_000, 100)).is_err());
        assert_eq!(st, before);
        // Removing the node revokes all of its certificates, and only its.
        st.apply(
            41,
            Command::RemoveNode {
                id: "n1".into(),
                force: true,
            },
        )
        .unwrap();
        assert_eq!(st.pki.revoked.len(), MAX_LIVE_CERTS_PER_HOLDER);
        assert!(st.pki.revoked.contains_key("aa") && !st.pki.revoked.contains_key("bb"));
        let before = st.clone();
        assert!(
            st.apply(42, renew("worker/n1", "ee", "aa")).is_err(),
            "a removed node cannot renew"
        );
        assert_eq!(st, before);
        st.apply(42, renew("manager/2", "b2", "bb")).unwrap();
        st.apply(
            42,
            Command::RevokeHolder {
                holder: "manager/2".into(),
            },
        )
        .unwrap();
        assert!(
            st.pki.revoked.contains_key("bb")
                && st.pki.revoked.contains_key("b2")
                && st.pki.issued.is_empty(),
            "{:?}",
            st.pki
        );
        // Expired entries are dropped (an expired certificate no longer verifies anyway).
        st.apply(43, register("n2")).unwrap();
        st.apply(44, record("worker/n2", "dd", 5_000, 2_000)).unwrap();
        assert_eq!(st.pki.revoked.len(), 0);
        assert_eq!(st.pki.issued.len(), 1);
    }

    #[test]
    fn a_ca_rotation_waits_for_every_node_then_retires_the_old_certificates() {
        let mut st = base();
        let rotate = |n: u8| Command::StartCaRotation {
            cert_der: vec![n; 10],
            key_pkcs8: vec![n + 1; 10],
            cross_cert_der: vec![n + 2; 10],
            now_ms: 100,
        };
        // No CA yet: refused.
        assert!(st.apply(9, rotate(5)).is_err());
        st.apply(
            10,
            Command::InstallCa {
                cert_der: vec![1; 10],
                key_pkcs8: vec![2; 10],
                cert_ttl_ms: 86_400_000,
            },
        )
        .unwrap();
        let old_fp = crate::core::token::ca_fingerprint(&[1; 10]);
        let new_fp = crate::core::token::ca_fingerprint(&[5; 10]);
        let record = |holder: &str, serial: &str, issuer: &str| Command::RecordCertificate {
            holder: holder.into(),
            serial_hex: serial.into(),
            not_after_ms: 10_000,
            now_ms: 100,
            renews: None,
            issuer_fingerprint: issuer.into(),
        };
        st.apply(11, record("manager/1", "a1", &old_fp)).unwrap();
        st.apply(12, record("worker/n1", "b1", &old_fp)).unwrap();
        st.apply(13, record("admin/ops", "c1", &old_fp)).unwrap();
        st.apply(14, rotate(5)).unwrap();
        assert_eq!(st.pki.ca_cert_der, vec![5; 10], "the new CA signs from now on");
        assert_eq!(st.pki.trusted(), vec![vec![5; 10], vec![1; 10]]);
        assert_eq!(st.pki.chain(), vec![vec![7; 10]]);
        let r = st.pki.rotation.clone().unwrap();
        assert_eq!(
            (r.total, r.pending.iter().map(String::as_str).collect::<Vec<_>>()),
            (2, vec!["manager/1", "worker/n1"]),
            "only nodes are waited for"
        );
        // A second rotation while one is under way: refused, nothing changes.
        let before = st.clone();
        assert!(matches!(
            st.apply(15, rotate(9)),
            Err(StateError::FailedPrecondition(_))
        ));
        assert_eq!(st, before);
        let confirm = |holder: &str, serial: &str| Command::ConfirmCertificate {
            holder: holder.into(),
            serial_hex: serial.into(),
        };
        // A certificate the old CA signed just before the switch does not count.
        st.apply(16, record("manager/1", "a2", &old_fp)).unwrap();
        st.apply(17, confirm("manager/1", "a2")).unwrap();
        assert!(st.pki.rotation.as_ref().unwrap().pending.contains("manager/1"));
        // Nor does a new one until its holder shows it has it (the answer may have been lost).
        st.apply(17, record("manager/1", "a3", &new_fp)).unwrap();
        assert!(st.pki.rotation.as_ref().unwrap().pending.contains("manager/1"));
        // Confirming someone else's serial, or one never issued, does nothing.
        st.apply(17, confirm("worker/n1", "a3")).unwrap();
        st.apply(17, confirm("worker/n1", "zz")).unwrap();
        assert!(st.pki.rotation.as_ref().unwrap().pending.contains("worker/n1"));
        st.apply(17, confirm("manager/1", "a3")).unwrap();
        st.apply(18, record("admin/ops", "c2", &new_fp)).unwrap();
        assert_eq!(
            st.pki.rotation.as_ref().unwrap().pending,
            BTreeSet::from(["worker/n1".to_string()])
        );
        // The last node leaves instead of renewing: the rotation completes; every
        // certificate the old CA signed is revoked, the new ones stay.
        st.apply(19, register("n1")).unwrap();
        st.apply(
            20,
            Command::RemoveNode {
                id: "n1".into(),
                force: true,
            },
        )
        .unwrap();
        assert_eq!(st.pki.rotation, None);
        assert_eq!(st.pki.trusted(), vec![vec![5; 10]]);
        assert!(st.pki.chain().is_empty());
        for old in ["a1", "a2", "b1", "c1"] {
            assert!(st.pki.revoked.contains_key(old), "{old}");
        }
        let live: Vec<&String> = st.pki.issued.values().flat_map(|s| s.keys()).collect();
        assert_eq!(live, vec!["c2", "a3"]);
        // And a new rotation may start.
        st.apply(21, rotate(30)).unwrap();
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = String> {
        // Mostly valid names from a small set (so commands collide), sometimes invalid ones.
        prop_oneof![
            4 => prop::sample::select(vec!["web", "api", "db", "cache"]).prop_map(String::from),
            1 => "[A-Za-z_.-]{0,3}",
        ]
    }

    fn command() -> impl Strategy<Value = Command> {
        prop_oneof![
            (name(), -2i64..12, "[a-d]").prop_map(|(name, replicas, id)| Command::CreateService {
                id,
                spec: ServiceSpec {
                    name,
                    image: "busybox".into(),
                    replicas,
                    ..Default::default()
                },
                now_ms: 1,
            }),
            (name(), -2i64..12, 0u64..4).prop_map(|(service, replicas, expected_version)| {
                Command::ScaleService {
                    service,
                    replicas,
                    expected_version,
                    now_ms: 2,
                }
            }),
            name().prop_map(|service| Command::DeleteService { service }),
        ]
    }

    proptest! {
        /// After any sequence of commands: names and ids stay a bijection, every stored service
        /// is valid, and a refused command leaves the state untouched.
        #[test]
        fn invariants_hold(cmds in prop::collection::vec(command(), 0..40)) {
            let mut st = ClusterState::default();
            for (i, cmd) in cmds.into_iter().enumerate() {
                let before = st.clone();
                if st.apply(i as u64 + 1, cmd).is_err() {
                    prop_assert_eq!(&st, &before);
                }
                prop_assert_eq!(st.services.len(), st.service_names.len());
                for (name, id) in &st.service_names {
                    prop_assert_eq!(&st.services[id].spec.name, name);
                }
                for s in st.services.values() {
                    prop_assert!(crate::core::validate::service_spec(&s.spec).is_ok());
                }
            }
        }
    }
}
