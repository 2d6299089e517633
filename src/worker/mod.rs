//! The worker agent: joins with a worker token, holds one stream of its assignments from any
//! manager (failing over between them), heartbeats with the task state changes since the
//! last beat, and runs its tasks through a [`ContainerRuntime`]. Cut off from every manager
//! it keeps its tasks running and restarts failed ones itself per their restart policy; its
//! local state survives its own restart. Desired state always comes from the managers once
//! they are reachable again.

#[cfg(not(madsim))]
pub mod containerd;
pub mod contract;
pub mod local;
pub mod log_writer;
pub mod logs;
mod observe;
pub mod runtime;
pub mod sim_runtime;

use crate::client::{Client, ClientError};
use crate::core::agent::{Assignment, Found, Input, Job, Observation, Outcome, Verdict};
use crate::core::health::Probe;
use crate::core::TaskState;
use crate::manager::convert::{health_to_pb, spec_from_pb, task_state_from_pb, task_state_to_pb};
use crate::proto::v1 as pb;
use crate::AbortOnDrop;
use anyhow::{bail, Context};
use clap::Args;
use local::{LocalState, LocalTask};
use runtime::{ContainerRuntime, ContainerStatus, RuntimeError};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, error, info, warn, Instrument};

/// How often the agent checks its containers and assignments, by default
/// (`--check-interval-ms`).
pub const TICK_MS: u64 = 200;
/// The range `--check-interval-ms` takes.
pub const CHECK_INTERVAL_MS: std::ops::RangeInclusive<u64> = 50..=10_000;
/// An assignment stream silent for this long is considered dead (managers send a
/// keep-alive every 2 s).
pub const STREAM_SILENCE_MS: u64 = 5_000;
/// How often the agent removes containers no task of its own holds.
const SWEEP_MS: u64 = 60_000;
const REGISTER_DEADLINE_MS: u64 = 10_000;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    /// Real containers through containerd.
    #[default]
    Containerd,
    /// In-memory simulated containers (for labs and tests): nothing really runs.
    Sim,
}

#[derive(Args, Clone, Debug)]
pub struct WorkerOpts {
    /// Worker join token from `warren cluster join-token worker`; needed the first time only.
    #[arg(long, env = "WARREN_TOKEN")]
    pub token: Option<String>,
    /// Manager API addresses; the worker fails over between them. (From the global
    /// `--manager ADDR[,ADDR...]`.)
    #[arg(skip)]
    pub managers: Vec<String>,
    /// This worker's node id (lowercase letters, digits, '-', '_', '.').
    #[arg(long)]
    pub node_id: String,
    #[arg(long, default_value = "./warren-worker")]
    pub data_dir: PathBuf,
    /// CPUs offered to tasks (default: the host's).
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Memory offered to tasks, e.g. 512MiB or 4GiB (default: the host's).
    #[arg(long, value_parser = parse_memory)]
    pub memory: Option<u64>,
    /// Node label for placement constraints, KEY=VALUE; repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Address this worker is reachable at (shown in `node ls`).
    #[arg(long, default_value = "")]
    pub address: String,
    /// What runs the containers.
    #[arg(long, value_enum, default_value_t = RuntimeKind::Containerd)]
    pub runtime: RuntimeKind,
    /// containerd's socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    pub containerd_socket: PathBuf,
    /// containerd namespace holding this worker's containers (one per worker on a shared
    /// containerd).
    #[arg(long, default_value = "warren")]
    pub containerd_namespace: String,
    /// Docker-style config.json with registry credentials (its "auths" map).
    #[arg(long)]
    pub registry_auth_file: Option<PathBuf>,
    /// Registry host (HOST or HOST:PORT) to reach over plain HTTP; repeatable. Others use
    /// HTTPS.
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// With no heartbeat answered for this long, the worker restarts failed tasks itself.
    #[arg(long, default_value_t = 3_000)]
    pub autonomy_after_ms: u64,
    /// How often the worker checks its containers against its assignments (50-10000): a
    /// container that exits is seen at most this late. New assignments and finished jobs
    /// are acted on at once whatever it is. A longer one saves CPU on a small device.
    #[arg(long, default_value_t = TICK_MS, value_parser = clap::value_parser!(u64).range(*CHECK_INTERVAL_MS.start()..=*CHECK_INTERVAL_MS.end()))]
    pub check_interval_ms: u64,
    /// Serve Prometheus metrics (/metrics), /healthz and /readyz over plain HTTP here, e.g.
    /// 127.0.0.1:9101 (docs/operations.md, "Metrics and health").
    #[arg(long)]
    pub metrics_addr: Option<String>,
}

pub fn parse_memory(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size; use for example 512MiB, 4GiB or 1000000 (bytes)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" | "b" => 1,
        "K" | "k" | "KB" | "kB" => 1_000,
        "Ki" | "KiB" => 1 << 10,
        "M" | "MB" => 1_000_000,
        "Mi" | "MiB" => 1 << 20,
        "G" | "GB" => 1_000_000_000,
        "Gi" | "GiB" => 1 << 30,
        "T" | "TB" => 1_000_000_000_000,
        "Ti" | "TiB" => 1 << 40,
        u => {
            return Err(format!(
                "unknown size unit {u:?}; use B, KiB, MiB, GiB, TiB (or K, M, G, T)"
            ))
        }
    };
    if n < 0.0 || !n.is_finite() {
        return Err(format!("{s:?} must be a positive size"));
    }
    Ok((n * mult as f64) as u64)
}

pub fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// The runtime `--runtime` names, connected and checked (a missing or silent containerd is
/// an error naming what to do, not a hang).
pub async fn open_runtime(opts: &WorkerOpts) -> anyhow::Result<Arc<dyn ContainerRuntime>> {
    match opts.runtime {
        RuntimeKind::Sim => {
            warn!("--runtime sim: tasks run in an in-memory simulated runtime, not as real containers");
            Ok(Arc::new(sim_runtime::SimRuntime::default()))
        }
        #[cfg(not(madsim))]
        RuntimeKind::Containerd => {
            let credentials = match &opts.registry_auth_file {
                Some(p) => containerd::auth::Credentials::load(p)?,
                None => Default::default(),
            };
            let rt = containerd::ContainerdRuntime::connect(containerd::ContainerdOpts {
                socket: opts.containerd_socket.clone(),
                namespace: opts.containerd_namespace.clone(),
                node_id: opts.node_id.clone(),
                logs_dir: opts.data_dir.join("logs"),
                log_writer: std::env::current_exe().context(
                    "cannot find the warren binary's path (the shim runs it as each container's log writer)",
                )?,
                registry: containerd::pull::RegistryOpts {
                    insecure: opts.insecure_registries.clone(),
                    credentials,
                },
                cgroup_parent: "/warren".into(),
            })
            .await?;
            Ok(rt)
        }
        #[cfg(madsim)]
        RuntimeKind::Containerd => bail!("the simulator has no containerd; use --runtime sim"),
    }
}

/// The tasks the managers assign to this node (`None`: not heard yet).
type Assigned = Option<Arc<Vec<pb::Task>>>;

/// State shared between the agent loop and the heartbeat loop.
#[derive(Default)]
struct Shared {
    /// Changes not yet acknowledged by a manager, latest per task.
    pending: BTreeMap<String, pb::TaskStatusReport>,
    /// Every local task's current status, sent in full after (re)connecting.
    all: BTreeMap<String, pb::TaskStatusReport>,
    last_ack: Option<Instant>,
    /// A first heartbeat has been tried (before that, whether managers are reachable is
    /// not known, so no local restart decision is made).
    first_beat_done: bool,
    /// Woken when a report is queued: it goes out at once instead of at the next beat (a
    /// rolling update waits on each task's reports, three per slot).
    report_queued: Arc<tokio::sync::Notify>,
    /// The heartbeat interval the managers asked for (0: not told yet).
    interval_ms: u64,
}

impl Shared {
    fn connected(&self, autonomy_after: Duration) -> bool {
        let after_ms =
            crate::core::agent::autonomy_after_ms(autonomy_after.as_millis() as u64, self.interval_ms);
        self.last_ack
            .is_some_and(|t| t.elapsed() < Duration::from_millis(after_ms))
    }
}

/// Runs the worker until `shutdown` resolves.
pub async fn start(
    opts: WorkerOpts,
    capacity: crate::core::Resources,
    runtime: Arc<dyn ContainerRuntime>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let span = tracing::info_span!("worker", node = %opts.node_id);
    async move {
        crate::core::validate::node_id(&opts.node_id).map_err(|e| anyhow::anyhow!("{e}"))?;
        // Bound before anything is created or registered: a port in use changes nothing.
        let metrics_listener = match &opts.metrics_addr {
            Some(a) => {
                let addr: std::net::SocketAddr = a.parse().with_context(|| {
                    format!("--metrics-addr {a:?} is not HOST:PORT with a numeric IP, for example 127.0.0.1:9101")
                })?;
                Some(crate::metrics::bind(addr).await?)
            }
            None => None,
        };
        let runtime: Arc<dyn ContainerRuntime> = Arc::new(runtime::Timed(runtime));
        #[cfg(not(madsim))]
        std::fs::create_dir_all(&opts.data_dir)
            .with_context(|| format!("cannot create data dir {}", opts.data_dir.display()))?;
        let tls_dir = opts.data_dir.join("tls");
        let credential = if crate::security::store::Credential::exists(&tls_dir, "node") {
            crate::security::store::Credential::load(&tls_dir, "node")?
        } else {
            let Some(token) = &opts.token else {
                bail!("a new worker needs --token; get one with `warren cluster join-token worker` on a manager");
            };
            crate::security::enroll::enroll(&tls_dir, token, &opts.managers, crate::core::Role::Worker, &opts.node_id).await?
        };
        let who = credential.identity()?;
        if who.id != opts.node_id {
            bail!(
                "data dir {} holds the certificate of worker {:?}, not {:?}; use that node id or another data dir",
                opts.data_dir.display(),
                who.id,
                opts.node_id
            );
        }
        let transport = crate::security::Transport::new(&credential)?;
        let client = Arc::new(Client::new(&opts.managers, transport.clone())?);
        // Heartbeat answers say when the cluster's CAs change (a rotation); renewal acts on it.
        let (trust_tx, trust_rx) = tokio::sync::watch::channel(crate::security::renew::TrustView::new());
        let trust = Arc::new(TrustFollower {
            tx: trust_tx,
            // Unknown at start: the first heartbeat answer makes the worker fetch the CAs, so
            // one restarted in the middle of a CA rotation still confirms its new certificate.
            known_fingerprint: Mutex::new(String::new()),
        });
        let renewal = tokio::spawn(
            crate::security::renew::keep_renewed(tls_dir.clone(), transport, opts.managers.clone(), trust_rx)
                .in_current_span(),
        );
        let _renewal = AbortOnDrop(renewal);
        // Spread workers over the managers (stable per node id).
        let spread = opts.node_id.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
        client.start_at(spread);
        let mut local = match local::load(&opts.data_dir)? {
            Some(st) if st.node_id != opts.node_id => bail!(
                "data dir {} belongs to worker {:?}, not {:?}; use that node id or another data dir",
                opts.data_dir.display(),
                st.node_id,
                opts.node_id
            ),
            Some(st) => {
                info!(tasks = st.tasks.len(), "resuming from data dir");
                if opts.token.is_some() {
                    // Refreshes labels and capacity; in the background, so that a worker
                    // restarted while the managers are out of reach runs its tasks at once.
                    let (client, opts) = (client.clone(), opts.clone());
                    tokio::spawn(
                        async move {
                            if let Err(e) = register(&client, &opts, capacity).await {
                                warn!(error = %format!("{e:#}"), "could not refresh this node's labels and capacity");
                            }
                        }
                        .in_current_span(),
                    );
                }
                st
            }
            None => {
                let cluster_id = register(&client, &opts, capacity).await?;
                let st = LocalState {
                    format: local::FORMAT,
                    node_id: opts.node_id.clone(),
                    cluster_id,
                    tasks: BTreeMap::new(),
                };
                local::save(&opts.data_dir, st)?
            }
        };
        info!(cluster = %local.cluster_id, "worker started");
        let _metrics = metrics_listener.map(|l| observe::serve(l, runtime.clone()));

        let shared = Arc::new(Mutex::new(Shared::default()));
        let (assign_tx, mut assign_rx) = tokio::sync::watch::channel::<Assigned>(None);
        let watcher = tokio::spawn(watch_assignments(client.clone(), opts.node_id.clone(), assign_tx).in_current_span());
        let beater = tokio::spawn(heartbeat_loop(client.clone(), opts.node_id.clone(), shared.clone(), trust).in_current_span());
        let log_session = runtime
            .logs_dir()
            .map(|dir| tokio::spawn(logs::session(client.clone(), opts.node_id.clone(), dir).in_current_span()));

        let autonomy_after = Duration::from_millis(opts.autonomy_after_ms);
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut agent = Agent {
            runtime,
            shared,
            autonomy_after,
            saved: local.clone(),
            busy: BTreeSet::new(),
            was_connected: None,
            unclaimed: BTreeMap::new(),
            done_tx,
        };
        // Until the managers tell us otherwise, keep what we ran.
        agent.sweep(&local, true).await;
        agent.publish(&local);
        let mut last_sweep = Instant::now();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            // Shared, not copied: the loop runs at every job's end and check (5,000 agents in
            // examples/nodesim spent a third of their samples copying and freeing).
            let desired = assign_rx.borrow_and_update().clone();
            agent.tick(&mut local, desired.as_deref().map(Vec::as_slice)).await;
            if last_sweep.elapsed() >= Duration::from_millis(SWEEP_MS) {
                agent.sweep(&local, false).await;
                last_sweep = Instant::now();
            }
            if agent.saved != local {
                // Off the async workers: one fsync per task state change would stall the
                // heartbeats and the assignment stream (examples/nodesim: 5,000 agents on two
                // threads left their sockets unread for seconds, and the managers marked
                // them down).
                let (dir, saving) = (opts.data_dir.clone(), local.clone());
                match crate::offload::off_async(move || local::save(&dir, saving)).await {
                    Ok(saved) => agent.saved = saved,
                    Err(e) => error!(error = %format!("{e:#}"), "cannot save local state"),
                }
            }
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some((job, outcome)) = done_rx.recv() => {
                    agent.finish(&mut local, job, outcome);
                    // Others that finished meanwhile, before the next plan.
                    while let Ok((job, outcome)) = done_rx.try_recv() {
                        agent.finish(&mut local, job, outcome);
                    }
                }
                _ = assign_rx.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(opts.check_interval_ms)) => {}
            }
        }
        info!("worker stopping; its containers keep running");
        watcher.abort();
        beater.abort();
        if let Some(h) = log_session {
            h.abort();
        }
        Ok(())
    }
    .instrument(span)
    .await
}

/// Registers with a worker token, retrying unreachable managers until a deadline.
async fn register(
    client: &Client,
    opts: &WorkerOpts,
    capacity: crate::core::Resources,
) -> anyhow::Result<String> {
    let req = pb::RegisterNodeRequest {
        // The node's certificate is its credential now; the token is not sent again.
        token: String::new(),
        node_id: opts.node_id.clone(),
        address: opts.address.clone(),
        labels: opts.labels.iter().cloned().collect(),
        capacity: Some(pb::Resources {
            cpu_millis: capacity.cpu_millis,
            memory_bytes: capacity.memory_bytes,
        }),
    };
    let start = Instant::now();
    loop {
        let r = client
            .call(|mut s| {
                let req = req.clone();
                async move { s.nodes.register_node(req).await }
            })
            .await;
        match r {
            Ok(resp) => return Ok(resp.cluster_id),
            Err(e)
                if matches!(
                    e.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::Cancelled
                        | tonic::Code::Unknown
                ) && start.elapsed() < Duration::from_millis(REGISTER_DEADLINE_MS) =>
            {
                warn!(error = %e, "registration: no manager answered yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e).context("joining the cluster as a worker"),
        }
    }
}

/// Keeps one assignment stream open, moving to the next manager when it breaks.
async fn watch_assignments(client: Arc<Client>, node_id: String, tx: tokio::sync::watch::Sender<Assigned>) {
    let silence = Duration::from_millis(STREAM_SILENCE_MS);
    let mut last_refusal: Option<String> = None;
    // What the managers assigned, as of `have.seq` (a log index when `indexed`: then a
    // new stream resumes from it and gets only what changed since).
    let mut have = crate::core::assignments::Have::<pb::Task>::default();
    let mut indexed = false;
    // The history `have.seq` belongs to, sent back with it (`core::assignments`).
    let mut history = String::new();
    loop {
        let req = pb::WatchAssignmentsRequest {
            node_id: node_id.clone(),
            resume_after_seq: if indexed { have.seq } else { 0 },
            accepts_changes: true,
            resume_after_history: if indexed { history.clone() } else { String::new() },
        };
        let opened = tokio::time::timeout(
            silence,
            client.call(|mut s| {
                let req = req.clone();
                async move { s.tasks.watch_assignments(req).await }
            }),
        )
        .await;
        let mut stream = match opened {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                // A refusal (no such node, too many streams for it) is not a blip: say it,
                // once per different answer.
                if e.code() != tonic::Code::Unavailable && last_refusal.as_deref() != Some(&e.to_string()) {
                    warn!(code = ?e.code(), error = %e, "the managers refused the assignment stream; retrying");
                    last_refusal = Some(e.to_string());
                } else {
                    debug!(error = %e, "assignment stream not opened; retrying");
                }
                client.rotate();
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(_) => {
                client.rotate();
                continue;
            }
        };
        debug!("assignment stream open");
        last_refusal = None;
        // A full set or a change may come in several pages (`more`); it counts once complete.
        let mut partial: Vec<pb::Task> = Vec::new();
        let mut removed: Vec<String> = Vec::new();
        loop {
            // BUGGIFY: the stream drops mid-set; the worker reconnects and gets a full set.
            if crate::buggify!(100) {
                debug!("buggify: dropping the assignment stream");
                break;
            }
            match tokio::time::timeout(silence, stream.message()).await {
                Ok(Ok(Some(ev))) if ev.heartbeat => {}
                Ok(Ok(Some(ev))) => {
                    partial.extend(ev.tasks);
                    removed.extend(ev.removed_task_ids);
                    if ev.more {
                        continue;
                    }
                    let tasks = std::mem::take(&mut partial)
                        .into_iter()
                        .map(|t| (t.id.clone(), t));
                    let applied = if ev.full_set {
                        have.full_set(ev.seq, tasks);
                        true
                    } else {
                        have.changes(ev.seq, tasks, &removed)
                    };
                    removed.clear();
                    if applied {
                        indexed = ev.indexed && !ev.history.is_empty();
                        history = ev.history;
                        let _ = tx.send(Some(Arc::new(have.tasks.values().cloned().collect())));
                    } else {
                        // A change this worker cannot place: start over with a full set.
                        debug!(
                            seq = ev.seq,
                            held = have.seq,
                            "assignment change out of order; reopening"
                        );
                        have = Default::default();
                        indexed = false;
                        break;
                    }
                }
                Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                    // The manager gave up the stream (its Raft core stopped): another one.
                    debug!(error = %status.message(), "assignment stream ended by the manager; moving to another manager");
                    client.rotate();
                    break;
                }
                // A status made here from a transport error (it has a source; one the manager
                // sent has none): the connection broke, as when a manager is killed.
                Ok(Err(status)) if std::error::Error::source(&status).is_some() => {
                    debug!(error = %status.message(), "assignment stream broke; moving to another manager");
                    client.rotate();
                    break;
                }
                Ok(Err(status)) => {
                    // Not a broken link but an answer this worker cannot take (too large,
                    // undecodable): say so loudly, it will not fix itself.
                    tracing::error!(code = ?status.code(), error = %status.message(), "assignment stream failed; moving to another manager");
                    client.rotate();
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
                Ok(Ok(None)) | Err(_) => {
                    debug!("assignment stream broke; moving to another manager");
                    client.rotate();
                    break;
                }
            }
        }
    }
}

/// What a worker knows of the CAs its cluster trusts (see `heartbeat_loop`).
struct TrustFollower {
    tx: tokio::sync::watch::Sender<crate::security::renew::TrustView>,
    /// `bundle_fingerprint` of the CAs last learnt.
    known_fingerprint: Mutex<String>,
}

impl TrustFollower {
    /// A heartbeat answer said the cluster trusts CAs with `fingerprint`: if that is news,
    /// fetch them (over the authenticated connection) for the renewal task.
    async fn heard(&self, client: &Client, fingerprint: &str) {
        if fingerprint.is_empty() || *self.known_fingerprint.lock().unwrap() == fingerprint {
            return;
        }
        let got = client.ca_certificates().await;
        match got {
            Ok(cas) if !cas.certs_der.is_empty() => {
                // The renewal task says when they differ from what this node trusts.
                debug!(cas = cas.certs_der.len(), "fetched the cluster's CAs");
                *self.known_fingerprint.lock().unwrap() =
                    crate::security::pki::bundle_fingerprint(&cas.certs_der);
                self.tx.send_replace(cas.certs_der);
            }
            Ok(_) => {}
            Err(e) => debug!(error = %e, "cannot fetch the cluster's CAs; trying at the next beat"),
        }
    }
}

/// Heartbeats with the pending task changes (all of them after a failed beat).
async fn heartbeat_loop(
    client: Arc<Client>,
    node_id: String,
    shared: Arc<Mutex<Shared>>,
    trust: Arc<TrustFollower>,
) {
    let mut interval_ms = 1_000;
    let mut send_all = true;
    // Set while beats fail: the next one goes after a jittered backoff up to the interval
    // (a lost beat must not cost a third of the grace period; a manager down for long is
    // not hammered either).
    let mut retry: Option<crate::retry::Backoff> = None;
    let report_queued = shared.lock().unwrap().report_queued.clone();
    loop {
        // At most MAX_REPORTS_PER_HEARTBEAT a beat (the managers refuse more); the rest go
        // in the next beats.
        let (changes, rest): (Vec<pb::TaskStatusReport>, Vec<pb::TaskStatusReport>) = {
            let sh = shared.lock().unwrap();
            let src = if send_all { &sh.all } else { &sh.pending };
            let mut all: Vec<pb::TaskStatusReport> = src.values().cloned().collect();
            let rest = all.split_off(all.len().min(crate::core::limits::MAX_REPORTS_PER_HEARTBEAT));
            (all, rest)
        };
        let req = pb::HeartbeatRequest {
            node_id: node_id.clone(),
            changes: changes.clone(),
            version: crate::build::describe(),
        };
        let timeout = Duration::from_millis(crate::core::agent::heartbeat_timeout_ms(interval_ms));
        let sent_at = Instant::now();
        tracing::trace!(target: "warren::heartbeat", reports = changes.len(), "heartbeat sent");
        let beat = client.call(|mut s| {
            let mut r = tonic::Request::new(req.clone());
            r.set_timeout(timeout);
            async move { s.nodes.heartbeat(r).await }
        });
        match tokio::time::timeout(timeout, beat).await {
            Ok(Ok(resp)) => {
                tracing::trace!(target: "warren::heartbeat", took_ms = sent_at.elapsed().as_millis() as u64, "heartbeat answered");
                trust.heard(&client, &resp.trust_fingerprint).await;
                let mut sh = shared.lock().unwrap();
                if sh
                    .last_ack
                    .is_none_or(|t| t.elapsed() > Duration::from_millis(3 * interval_ms))
                {
                    info!("managers reachable");
                }
                sh.last_ack = Some(Instant::now());
                sh.first_beat_done = true;
                for c in &changes {
                    if sh.pending.get(&c.task_id) == Some(c) {
                        sh.pending.remove(&c.task_id);
                    }
                }
                for r in rest {
                    sh.pending.entry(r.task_id.clone()).or_insert(r);
                }
                send_all = false;
                retry = None;
                if resp.next_heartbeat_ms > 0 {
                    interval_ms = resp.next_heartbeat_ms;
                    sh.interval_ms = interval_ms;
                }
            }
            Ok(Err(e)) => {
                shared.lock().unwrap().first_beat_done = true;
                if e.code() == tonic::Code::NotFound {
                    error!(error = %e, "the managers do not know this node; it was removed: stop it and join again with a worker token");
                } else {
                    debug!(error = %e, "heartbeat failed");
                }
                if !matches!(e, ClientError::Unreachable { .. }) {
                    client.rotate();
                }
                send_all = true;
            }
            Err(_) => {
                debug!(
                    timeout_ms = timeout.as_millis() as u64,
                    "heartbeat not answered in time"
                );
                shared.lock().unwrap().first_beat_done = true;
                client.rotate();
                send_all = true;
            }
        }
        // A failed beat is retried after a backoff; otherwise the next waits out the interval,
        // unless a queued report goes out early, after a moment for the reports of the same
        // tick to gather.
        let wait = match send_all {
            true => retry
                .get_or_insert_with(|| {
                    crate::retry::Backoff::new(crate::core::agent::HEARTBEAT_RETRY_MIN_MS, interval_ms)
                })
                .next_delay(),
            false => Duration::from_millis(interval_ms),
        };
        tokio::select! {
            // Biased: tokio's random branch order draws from a generator the simulator
            // cannot seed.
            biased;
            _ = tokio::time::sleep(wait) => {}
            _ = report_queued.notified(), if !send_all => {
                tokio::time::sleep(Duration::from_millis(REPORT_GATHER_MS)).await;
            }
        }
    }
}

/// How long a heartbeat woken by a queued report waits for more to gather.
const REPORT_GATHER_MS: u64 = 20;

/// A task message as the managers accept it (at most `MAX_REPORT_MESSAGE_BYTES`).
fn cut_message(m: &str) -> String {
    let max = crate::core::limits::MAX_REPORT_MESSAGE_BYTES;
    if m.len() <= max {
        return m.to_string();
    }
    format!("{}...", crate::core::limits::prefix(m, max - 3))
}

/// The spec a task's container runs: the service's, plus `WARREN_TASK_ID`,
/// `WARREN_TASK_SLOT` and `WARREN_SERVICE_NAME` in its environment (with host networking,
/// replicas on one node tell their ports apart by slot), unless the service sets them.
fn container_spec(t: &LocalTask) -> crate::core::ServiceSpec {
    let mut spec = t.spec.clone();
    for (k, v) in [
        ("WARREN_TASK_ID", t.id.clone()),
        ("WARREN_TASK_SLOT", t.slot.to_string()),
        ("WARREN_SERVICE_NAME", t.service_name.clone()),
    ] {
        spec.env.entry(k.to_string()).or_insert(v);
    }
    spec
}

struct Agent {
    runtime: Arc<dyn ContainerRuntime>,
    shared: Arc<Mutex<Shared>>,
    autonomy_after: Duration,
    saved: LocalState,
    /// Tasks with a job in flight.
    busy: BTreeSet<String>,
    /// Whether the last tick had a manager answering (for saying when that changes).
    was_connected: Option<bool>,
    /// Containers found at start that the saved state did not know (see `core::agent`).
    unclaimed: BTreeMap<String, String>,
    done_tx: tokio::sync::mpsc::UnboundedSender<(Job, Outcome)>,
}

fn report_of(t: &LocalTask) -> pb::TaskStatusReport {
    pb::TaskStatusReport {
        task_id: t.id.clone(),
        state: task_state_to_pb(t.state) as i32,
        message: cut_message(&t.message),
        exit_code: t.exit_code,
        container_id: t.container_id.clone(),
        health: health_to_pb(t.health.as_ref().map(|h| h.status)) as i32,
    }
}

fn assignment_of(a: &pb::Task) -> Assignment {
    Assignment {
        id: a.id.clone(),
        service_name: a.service_name.clone(),
        slot: a.slot,
        spec: a
            .spec
            .clone()
            .and_then(|s| spec_from_pb(s).ok())
            .unwrap_or_default(),
        desired: task_state_from_pb(a.desired_state).unwrap_or(TaskState::Shutdown),
        state: task_state_from_pb(a.state),
    }
}

fn observation(s: ContainerStatus) -> Observation {
    match s {
        ContainerStatus::Starting => Observation::Starting,
        ContainerStatus::Running => Observation::Running,
        ContainerStatus::Exited(c) => Observation::Exited(c),
        ContainerStatus::OomKilled(c) => Observation::OomKilled(c),
    }
}

/// Runs one job against the runtime: the I/O half of [`crate::core::agent`].
async fn run_job(rt: &dyn ContainerRuntime, job: &Job) -> Outcome {
    let refused_or_down = |e: RuntimeError| match e {
        RuntimeError::Unavailable(m) => Outcome::Unavailable(m),
        e => Outcome::Refused(e.to_string()),
    };
    match job {
        Job::Prepare(t) => match rt.pull(&t.spec.image).await {
            Ok(()) => Outcome::Prepared,
            Err(e) => refused_or_down(e),
        },
        Job::Launch(t) => {
            if let Err(e) = rt.pull(&t.spec.image).await {
                return refused_or_down(e);
            }
            match rt.start(&t.id, &container_spec(t)).await {
                Ok(cid) => Outcome::Started(cid),
                Err(e) => refused_or_down(e),
            }
        }
        Job::Restart(t) => match rt.start(&t.id, &container_spec(t)).await {
            Ok(cid) => Outcome::Started(cid),
            Err(e) => refused_or_down(e),
        },
        Job::Stop(t) | Job::StopUnhealthy(t) => stop_container(rt, t).await,
        Job::Probe(t) => {
            let Some(check) = crate::core::agent::check_of(t) else {
                return Outcome::Unavailable("no health check".into());
            };
            let timeout = Duration::from_millis(check.timeout_ms);
            // The runtime kills the probe at its timeout; one that does not answer well after
            // is treated as timed out, so a wedged runtime cannot hold the task.
            let grace = timeout + Duration::from_millis(STOP_ANSWER_GRACE_MS);
            match tokio::time::timeout(grace, rt.exec(&t.container_id, &check.cmd, timeout)).await {
                Ok(Ok(r)) => Outcome::Probed(match r.exit_code {
                    Some(code) => Probe::Exited {
                        code,
                        output: r.output,
                    },
                    None => Probe::TimedOut,
                }),
                Ok(Err(RuntimeError::Unavailable(m))) => Outcome::Unavailable(m),
                Ok(Err(e)) => Outcome::Probed(Probe::Error(e.to_string())),
                Err(_) => Outcome::Probed(Probe::TimedOut),
            }
        }
        Job::Discard(t) => {
            let outcome = stop_container(rt, t).await;
            if let Err(e) = rt.remove(&t.container_id).await {
                debug!(container = %t.container_id, error = %e, "could not remove it yet");
            }
            outcome
        }
        Job::Forget(t) => {
            let outcome = if t.state.is_terminal() {
                Outcome::Stopped(None)
            } else {
                stop_container(rt, t).await
            };
            if matches!(outcome, Outcome::Stopped(_)) && !t.container_id.is_empty() {
                // Left behind on failure: the sweep removes what no task owns.
                match rt.remove(&t.container_id).await {
                    Ok(()) | Err(RuntimeError::NotFound(_)) => {}
                    Err(e) => debug!(task = %t.id, error = %e, "could not remove the container yet"),
                }
            }
            outcome
        }
    }
}

/// How long past a task's stop timeout the worker waits for the runtime to answer a stop.
pub const STOP_ANSWER_GRACE_MS: u64 = 10_000;

async fn stop_container(rt: &dyn ContainerRuntime, t: &LocalTask) -> Outcome {
    if t.container_id.is_empty() {
        return Outcome::Stopped(None);
    }
    let timeout = Duration::from_millis(t.spec.stop_timeout_ms.max(1));
    // The runtime kills the container after `timeout`; a stop that has not answered well
    // after that was lost (a wedged runtime, a dead connection): give up on this call so the
    // task is free again and the next tick asks anew.
    let deadline = timeout + Duration::from_millis(STOP_ANSWER_GRACE_MS);
    match tokio::time::timeout(deadline, rt.stop(&t.container_id, timeout)).await {
        Ok(Ok(()) | Err(RuntimeError::NotFound(_))) => {}
        Ok(Err(e)) => return Outcome::Unavailable(e.to_string()),
        Err(_) => {
            warn!(task = %t.id, container = %t.container_id, deadline_ms = deadline.as_millis() as u64, "the runtime did not answer a stop; asking again");
            return Outcome::Unavailable(format!(
                "the container runtime did not answer a stop within {} ms",
                deadline.as_millis()
            ));
        }
    }
    match rt.status(&t.container_id).await {
        Ok(ContainerStatus::Exited(c) | ContainerStatus::OomKilled(c)) => Outcome::Stopped(Some(c)),
        _ => Outcome::Stopped(None),
    }
}

impl Agent {
    /// Queues a report of `t`'s current state and refreshes the full status set.
    fn report(&self, t: &LocalTask) {
        let r = report_of(t);
        let mut sh = self.shared.lock().unwrap();
        sh.pending.insert(t.id.clone(), r.clone());
        sh.all.insert(t.id.clone(), r);
        sh.report_queued.notify_one();
    }

    fn publish(&self, local: &LocalState) {
        let mut sh = self.shared.lock().unwrap();
        sh.all = local
            .tasks
            .values()
            .map(|t| (t.id.clone(), report_of(t)))
            .collect();
    }

    /// Adopts the runtime's containers that belong to this worker's tasks (same task, same
    /// container: left running). At start, the others wait for the first assignment set
    /// (`unclaimed`: adopted if assigned, else discarded); later, every `SWEEP_MS`, they are
    /// stopped and removed, so that what a failed removal left behind does not stay.
    async fn sweep(&mut self, local: &LocalState, at_start: bool) {
        let listed = match self.runtime.list().await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "cannot list the runtime's containers; will try again");
                return;
            }
        };
        let mut adopted = 0;
        for c in listed {
            let found = Found {
                task_id: c.task_id.clone(),
                container_id: c.container_id.clone(),
                running: c.status == ContainerStatus::Running,
            };
            match crate::core::agent::sweep(&found, &local.tasks, &self.busy, &self.unclaimed, at_start) {
                Verdict::Ours => adopted += 1,
                Verdict::Busy => {}
                Verdict::Unclaimed => {
                    info!(task = %c.task_id, container = %c.container_id, "found a running container this worker's saved state does not know: kept until the managers say whether its task is ours");
                    self.unclaimed.insert(c.task_id, c.container_id);
                }
                Verdict::Discard(job) => {
                    info!(task = %c.task_id, container = %c.container_id, "container of no task of this worker: removing it");
                    self.spawn(*job);
                }
            }
        }
        if at_start && adopted > 0 {
            info!(adopted, "adopted running containers (not restarted)");
        }
    }

    /// One tick: observe the containers, plan (pure), queue reports, start jobs.
    async fn tick(&mut self, local: &mut LocalState, assigned: Option<&[pb::Task]>) {
        let (connected, decided, unacked) = {
            let sh = self.shared.lock().unwrap();
            let unacked: BTreeSet<String> = sh.pending.keys().cloned().collect();
            (sh.connected(self.autonomy_after), sh.first_beat_done, unacked)
        };
        if decided && Some(connected) != self.was_connected {
            if connected {
                if self.was_connected.is_some() {
                    info!("a manager answers again: the managers decide again");
                }
            } else {
                let after_ms = crate::core::agent::autonomy_after_ms(
                    self.autonomy_after.as_millis() as u64,
                    self.shared.lock().unwrap().interval_ms,
                );
                warn!(
                    after_ms,
                    "no manager answers: running on its own (tasks keep running; exits are restarted here per their restart policy)"
                );
            }
            self.was_connected = Some(connected);
        }
        let mut observed = BTreeMap::new();
        if decided {
            for t in local.tasks.values() {
                if t.container_id.is_empty() || t.state.is_terminal() || self.busy.contains(&t.id) {
                    continue;
                }
                match self.runtime.status(&t.container_id).await {
                    Ok(s) => {
                        observed.insert(t.id.clone(), observation(s));
                    }
                    Err(RuntimeError::NotFound(_)) => {
                        observed.insert(t.id.clone(), Observation::Gone);
                    }
                    Err(e) => debug!(task = %t.id, error = %e, "runtime unavailable; status unknown"),
                }
            }
        }
        let assigned: Option<Vec<Assignment>> = assigned.map(|a| a.iter().map(assignment_of).collect());
        let plan = crate::core::agent::plan(&Input {
            tasks: &local.tasks,
            observed: &observed,
            assigned: assigned.as_deref(),
            busy: &self.busy,
            unclaimed: &self.unclaimed,
            unacked: &unacked,
            connected,
            decided,
            now_ms: crate::manager::now_ms(),
        });
        for t in plan.tasks.values() {
            if local
                .tasks
                .get(&t.id)
                .is_some_and(|old| old.state != t.state && t.state.is_terminal())
            {
                info!(task = %t.id, code = t.exit_code, message = %t.message, "container exited");
            }
        }
        if assigned.is_some() {
            for (task, cid) in &self.unclaimed {
                if plan.tasks.get(task).is_some_and(|t| &t.container_id == cid) {
                    info!(task = %task, container = %cid, "adopted a running container (not restarted)");
                }
            }
            // Each was adopted or is being discarded.
            self.unclaimed.clear();
        }
        local.tasks = plan.tasks;
        for r in &plan.reports {
            self.report(r);
        }
        for job in plan.jobs {
            self.spawn(job);
        }
        // Finished tasks the managers no longer list are forgotten; with no manager
        // reachable they are kept (a restart may still be due).
        self.publish(local);
    }

    fn spawn(&mut self, job: Job) {
        let t = job.task();
        self.busy.insert(t.id.clone());
        let span = tracing::info_span!("task", task = %t.id, service = %t.service_name, slot = t.slot);
        let (rt, tx) = (self.runtime.clone(), self.done_tx.clone());
        tokio::spawn(
            async move {
                let outcome = run_job(&*rt, &job).await;
                let _ = tx.send((job, outcome));
            }
            .instrument(span),
        );
    }

    /// A job's outcome: applied (pure), logged, reported.
    fn finish(&mut self, local: &mut LocalState, job: Job, outcome: Outcome) {
        let id = job.task().id.clone();
        self.busy.remove(&id);
        match (&job, &outcome) {
            (Job::Launch(_), Outcome::Started(c)) => info!(task = %id, container = %c, "task started"),
            (Job::Prepare(t), Outcome::Prepared) => info!(task = %id, image = %t.spec.image, "task prepared"),
            (Job::Restart(t), Outcome::Started(_)) => {
                warn!(task = %id, restarts = t.local_restarts + 1, "managers unreachable: restarted the task locally")
            }
            (_, Outcome::Refused(m)) => warn!(task = %id, error = %m, "task rejected"),
            (_, Outcome::Unavailable(m)) => debug!(task = %id, error = %m, "runtime unavailable; will retry"),
            (Job::Stop(_) | Job::Forget(_), Outcome::Stopped(code)) => {
                info!(task = %id, ?code, "task shut down")
            }
            _ => {}
        }
        let mut applied = crate::core::agent::apply(&job, &outcome);
        if let (Job::Launch(_) | Job::Restart(_), Outcome::Started(_), Some(t)) =
            (&job, &outcome, &mut applied.keep)
        {
            t.image_check = self.runtime.image_healthcheck(&t.spec.image);
        }
        match (&job, &outcome) {
            (Job::Probe(_), Outcome::Probed(_)) => {
                if let Some(t) = applied.keep.as_ref().filter(|t| {
                    t.health
                        .as_ref()
                        .is_some_and(|h| h.status != crate::core::health::HealthStatus::Starting)
                }) {
                    debug!(task = %id, message = %t.message, "health probe");
                }
            }
            (Job::StopUnhealthy(t), _) => {
                warn!(task = %id, message = %t.message, "stopping an unhealthy task")
            }
            _ => {}
        }
        match applied.keep {
            Some(t) => {
                local.tasks.insert(id, t);
            }
            // A discarded container was never a kept task's: leave the tasks alone.
            None if matches!(job, Job::Discard(_)) => {}
            None => {
                local.tasks.remove(&id);
            }
        }
        if let Some(r) = &applied.report {
            self.report(r);
        }
        self.publish(local);
    }
}
