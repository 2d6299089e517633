//! The manager daemon: opens its data directory, runs a Raft member, and serves the public
//! API and the internal Raft RPCs. `start` is what both the binary and the simulator call.

mod api;
pub mod assignments;
pub mod backup;
pub mod changes;
pub mod compaction;
pub mod convert;
pub mod credentials;
mod election;
pub mod error;
pub mod handoff;
mod join;
pub mod leader;
pub mod listener;
pub mod logs;
pub mod marker;
mod observe;
pub mod orchestrator;
mod peers;
pub mod proposer;
mod raft_service;
mod recovery;

use crate::core::Command;
use crate::raft::store::{self, SharedState};
use crate::raft::{network::Network, ManagerNode, NodeId, Raft};
use anyhow::{bail, Context};
use clap::Args;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, Instrument};

pub use error::{ApiError, ApiResult};

/// The database file inside a data directory.
pub const DB_FILE: &str = "warren.redb";

/// Raft timing and log compaction, shared by every way of starting a manager.
#[derive(Args, Clone, Debug)]
pub struct TimingOpts {
    /// Leader heartbeat period.
    #[arg(long, default_value_t = 50)]
    pub heartbeat_interval_ms: u64,
    /// Election timeout range; a follower campaigns after missing the leader for a random
    /// draw from its slice of this range, redrawn every round. Defaults chosen from
    /// simulation data (docs/tuning.md); on an edge WAN use --heartbeat-interval-ms 300
    /// --election-timeout-min-ms 600 --election-timeout-max-ms 1200.
    #[arg(long, default_value_t = 400)]
    pub election_timeout_min_ms: u64,
    #[arg(long, default_value_t = 700)]
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (and compact the log) after this many applied entries at the least;
    /// then once the log since the last snapshot is half that snapshot's size, or after 20
    /// times this many entries (`core::compaction`).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(10..=10_000_000))]
    pub snapshot_logs: u64,
    #[command(flatten)]
    pub orchestrator: orchestrator::OrchestratorOpts,
    /// Serve Prometheus metrics (/metrics), /healthz and /readyz over plain HTTP here, e.g.
    /// 127.0.0.1:9100 (docs/operations.md, "Metrics and health").
    #[arg(long)]
    pub metrics_addr: Option<String>,
}

/// Flags of `warren cluster init` (and of the managers the simulator starts).
#[derive(Args, Clone, Debug)]
pub struct ManagerOpts {
    /// This manager's Raft node id (unique in the cluster, > 0).
    #[arg(long, default_value_t = 1)]
    pub node_id: NodeId,
    /// Address clients and workers use (gRPC API).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub api_addr: String,
    /// Address the other managers use for Raft traffic.
    #[arg(long, default_value = "127.0.0.1:7946")]
    pub bind_addr: String,
    /// Directory holding this manager's Raft log, snapshots and identity.
    #[arg(long, default_value = "./warren-data")]
    pub data_dir: PathBuf,
    /// Lifetime of node certificates (managers and workers renew theirs at half of it);
    /// used by `cluster init` only, 10s to 365d.
    #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
    pub cert_ttl: Duration,
    #[command(flatten)]
    pub timing: TimingOpts,
}

/// Flags of `warren manager join`.
#[derive(Args, Clone, Debug)]
pub struct JoinOpts {
    /// A manager join token (`warren cluster join-token manager`).
    #[arg(long, env = "WARREN_TOKEN", hide_env_values = true)]
    pub token: String,
    /// API address(es) of any existing manager(s), comma separated; not necessarily the leader.
    #[arg(long, value_delimiter = ',', required = true)]
    pub leader: Vec<String>,
    #[command(flatten)]
    pub manager: ManagerOpts,
}

/// Flags of `warren manager start`: everything else comes from the data dir.
#[derive(Args, Clone, Debug)]
pub struct StartOpts {
    #[arg(long, default_value = "./warren-data")]
    pub data_dir: PathBuf,
    /// Recovery from the loss of a majority of the managers: this manager becomes the only
    /// voter of its cluster, with its state (every entry of its log). Refused while the
    /// other managers still make a quorum with it. Join new managers with tokens after.
    #[arg(long)]
    pub force_new_cluster: bool,
    /// With --force-new-cluster: go ahead even though other managers answer (they go on as
    /// a cluster of their own: only when they are about to be wiped), or this manager is
    /// not a voter.
    #[arg(long, requires = "force_new_cluster")]
    pub even_if_reachable: bool,
    #[command(flatten)]
    pub timing: TimingOpts,
}

/// How a manager comes up when its data dir is new. An existing data dir always resumes.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Bootstrap a new cluster.
    Init,
    /// Join an existing cluster with a token through any of `leaders` (API addresses).
    Join { token: String, leaders: Vec<String> },
    /// Only resume; a data dir without a manager is an error.
    Resume,
    /// Resume, as the only voter of its cluster (`manager start --force-new-cluster`).
    ForceNewCluster { even_if_reachable: bool },
    /// Bootstrap a new cluster from the backup file `backup` (`cluster init --restore`).
    Restore { backup: PathBuf, rejoin_grace_ms: i64 },
}

/// What a data directory remembers about its manager.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub node_id: NodeId,
    pub cluster_id: String,
    pub api_addr: String,
    pub raft_addr: String,
}

/// A running manager, shared by its gRPC services.
pub struct Manager {
    pub id: NodeId,
    /// This manager's credential and trusted CAs: every connection it serves or opens.
    pub transport: crate::security::Transport,
    pub raft: Raft,
    pub state: SharedState,
    pub identity: Identity,
    pub peers: peers::Peers,
    /// Raft metrics changes, for every task that waits for one (see `changes`).
    pub changes: Arc<changes::Changes>,
    pub election: election::ElectionTimer,
    pub heartbeats: orchestrator::Heartbeats,
    pub logs: logs::LogBroker,
    reads: ReadBatch,
    pub orchestrator: orchestrator::OrchestratorOpts,
    pub timing: crate::core::election::ElectionTiming,
    /// (term, when this manager was first seen leading it), for check-quorum.
    leader_since: std::sync::Mutex<Option<(u64, tokio::time::Instant)>>,
    /// Leader operations wait here while leadership is handed over (`handoff`).
    pub handoff: handoff::Gate,
    /// Every write this manager proposes as leader goes through here (group commit).
    pub proposer: proposer::Proposer,
    /// Which tasks each worker runs, for the assignment streams.
    pub assignments: assignments::Hub,
}

pub type ManagerRef = Arc<Manager>;

/// Read-index batching state (see `Manager::read_index`).
#[derive(Default)]
struct ReadBatch {
    /// Rounds started so far.
    started: std::sync::atomic::AtomicU64,
    /// The last finished round: (its number, the index it confirmed).
    done: tokio::sync::Mutex<Option<(u64, Option<u64>)>>,
}

/// Checks that `dir` is ours (or empty / absent) and returns the database path.
pub fn check_data_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let db = dir.join(DB_FILE);
    #[cfg(madsim)]
    {
        // The simulated disk is keyed by path; there is no directory to inspect.
        Ok(db)
    }
    #[cfg(not(madsim))]
    {
        if dir.exists() {
            if !dir.is_dir() {
                bail!(
                    "data dir {} is a file, not a directory; pass a directory for --data-dir",
                    dir.display()
                );
            }
            if !db.exists() {
                let mut entries: Vec<String> = std::fs::read_dir(dir)
                    .with_context(|| format!("cannot read data dir {}", dir.display()))?
                    .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                    .collect();
                if entries.iter().any(|e| e == marker::MARKER_FILE) {
                    bail!(
                        "data dir {} holds {} but no {DB_FILE}: this manager's database is gone. \
                         Remove the manager (`warren manager remove ID`), move the data dir aside, and join it again with a new id (docs/operations.md, \"Backup and restore\")",
                        dir.display(),
                        marker::MARKER_FILE
                    );
                }
                if !entries.is_empty() {
                    entries.sort();
                    entries.truncate(5);
                    bail!(
                        "data dir {} is not a Warren data directory (it holds {}); pass an empty or new directory to --data-dir",
                        dir.display(),
                        entries.join(", ")
                    );
                }
            }
        } else {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create data dir {}", dir.display()))?;
        }
        Ok(db)
    }
}

impl TimingOpts {
    pub fn election(&self) -> crate::core::election::ElectionTiming {
        crate::core::election::ElectionTiming {
            heartbeat_ms: self.heartbeat_interval_ms,
            election_min_ms: self.election_timeout_min_ms,
            election_max_ms: self.election_timeout_max_ms,
        }
    }
}

fn raft_config(opts: &TimingOpts) -> anyhow::Result<openraft::Config> {
    let timing = opts.election().validate()?;
    // openraft takes its leader lease from `election_timeout_max` and its vote RPC timeout
    // from `election_timeout_min`; its own election timer is off.
    let lease_ms = timing.leader_lease_ms();
    let cfg = openraft::Config {
        cluster_name: "warren".into(),
        heartbeat_interval: opts.heartbeat_interval_ms,
        election_timeout_min: lease_ms - 1,
        election_timeout_max: lease_ms,
        // `manager::compaction` triggers each snapshot, by the log's size against the state's.
        snapshot_policy: openraft::SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: opts.snapshot_logs.min(1000),
        // Elections are driven by `manager::election`, which redraws the timeout every round.
        enable_elect: false,
        // At most this many entries per append: a group-commit entry is up to
        // `proposer::MAX_BATCH_BYTES`, and an append must stay under the 64 MiB message limit.
        max_payload_entries: 32,
        ..Default::default()
    };
    cfg.validate().context("invalid Raft timing flags")
}

fn socket_addr(flag: &str, addr: &str) -> anyhow::Result<SocketAddr> {
    addr.parse().with_context(|| {
        format!("{flag} {addr:?} is not HOST:PORT with a numeric IP, for example 127.0.0.1:8080")
    })
}

/// A new id, in creation order (`core::limits::id_from`). One draw of 128 random bits, as
/// before ids began with the time, so a simulated run draws the same numbers as it did.
pub fn new_id() -> String {
    crate::core::limits::id_from(crate::clock::now_ms(), madsim::rand::random::<u128>())
}

pub fn now_ms() -> i64 {
    crate::clock::now_ms()
}

/// Runs a manager until `shutdown` resolves. An existing data directory always resumes its
/// manager (it never bootstraps or joins twice); a new one is set up as `mode` says.
pub async fn start(
    opts: ManagerOpts,
    mode: Mode,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = Arc::new(raft_config(&opts.timing)?);
    if matches!(mode, Mode::Resume | Mode::ForceNewCluster { .. })
        && !crate::raft::disk::exists(&opts.data_dir.join(DB_FILE))
    {
        bail!(
            "data dir {} holds no manager; start a new cluster with `warren cluster init` or join one with `warren manager join`",
            opts.data_dir.display()
        );
    }
    // Every flag is checked, and the metrics port bound, before anything is created: a
    // refused start changes nothing. (A resumed manager's addresses come from its data dir.)
    if !matches!(mode, Mode::Resume | Mode::ForceNewCluster { .. }) {
        if opts.node_id == 0 {
            bail!("--node-id must be greater than 0");
        }
        socket_addr("--api-addr", &opts.api_addr)?;
        socket_addr("--bind-addr", &opts.bind_addr)?;
    }
    let metrics_listener = match &opts.timing.metrics_addr {
        Some(a) => Some(crate::metrics::bind(socket_addr("--metrics-addr", a)?).await?),
        None => None,
    };
    // A backup is read and checked before anything is created: a bad one changes nothing.
    // Without --restore, a restore that was interrupted (its copy still in the data dir) is
    // finished.
    let restore = match &mode {
        Mode::Restore {
            backup,
            rejoin_grace_ms,
        } => {
            // A data dir in use is refused before its database is even opened; one whose
            // restore was interrupted (the backup's copy is there) is finished.
            if crate::raft::disk::exists(&opts.data_dir.join(DB_FILE))
                && !backup::pending_exists(&opts.data_dir)
            {
                bail!(
                    "data dir {} already holds a manager; restore into a new, empty --data-dir. Nothing was changed",
                    opts.data_dir.display()
                );
            }
            Some(read_restore(backup, *rejoin_grace_ms)?)
        }
        _ => None,
    };
    let db_path = check_data_dir(&opts.data_dir)?;
    let restore = match restore {
        Some(r) => Some(r),
        None => backup::load_pending(&opts.data_dir)?,
    };
    let db_existed = crate::raft::disk::exists(&db_path);
    if crate::raft::disk::len(&db_path) == Some(0) {
        bail!(
            "data dir {} holds an empty (0-byte) {DB_FILE}: this manager's state is gone, and starting on it would make a new, empty cluster. \
             Restore the data dir from a backup, or move it aside deliberately and join this manager again with a new id (docs/operations.md, \"Data directory errors\")",
            opts.data_dir.display()
        );
    }
    let (log_store, sm_store) = store::open(&db_path).with_context(|| {
        format!(
            "cannot use data dir {}; if it is corrupt, restore it from a backup or remove this manager and join a new one",
            opts.data_dir.display()
        )
    })?;
    let stored = log_store
        .read_identity::<Identity>()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let was_stored = stored.is_some();
    let fresh = log_store.is_fresh().map_err(|e| anyhow::anyhow!("{e}"))?;
    // A database that holds Raft state but no identity is not one this code wrote for a
    // manager (a join in progress is the exception: it records its identity at the end).
    if stored.is_none() && db_existed && !fresh && !matches!(mode, Mode::Join { .. }) {
        bail!(
            "data dir {} holds a {DB_FILE} with Raft state but no manager identity; it cannot be read as a Warren manager's. \
             Restore the data dir from a backup, or move it aside deliberately (docs/operations.md, \"Data directory errors\")",
            opts.data_dir.display()
        );
    }
    if matches!(mode, Mode::Restore { .. }) && stored.is_some() && !backup::pending_exists(&opts.data_dir) {
        bail!(
            "data dir {} already holds a manager; restore into a new, empty --data-dir. Nothing was changed",
            opts.data_dir.display()
        );
    }
    let identity = match (stored, &mode) {
        (Some(id), Mode::Resume | Mode::ForceNewCluster { .. } | Mode::Restore { .. }) => id,
        (Some(id), _) => {
            if id.node_id != opts.node_id {
                bail!(
                    "data dir {} belongs to manager {}, not --node-id {}; use the matching --node-id or another --data-dir",
                    opts.data_dir.display(),
                    id.node_id,
                    opts.node_id
                );
            }
            if id.api_addr != opts.api_addr || id.raft_addr != opts.bind_addr {
                bail!(
                    "data dir {} belongs to the manager at --api-addr {} --bind-addr {}; restart it with those (or `warren manager start --data-dir {}`)",
                    opts.data_dir.display(),
                    id.api_addr,
                    id.raft_addr,
                    opts.data_dir.display()
                );
            }
            id
        }
        (None, Mode::Resume | Mode::ForceNewCluster { .. }) => bail!(
            "data dir {} holds no manager; start a new cluster with `warren cluster init` or join one with `warren manager join`",
            opts.data_dir.display()
        ),
        (None, _) => {
            if opts.node_id == 0 {
                bail!("--node-id must be greater than 0");
            }
            Identity {
                node_id: opts.node_id,
                // A joining manager learns the cluster id when the join succeeds.
                cluster_id: match (&mode, &restore) {
                    (Mode::Init, _) => new_id(),
                    (_, Some(r)) => r.backup.cluster_id.clone(),
                    _ => String::new(),
                },
                api_addr: opts.api_addr.clone(),
                raft_addr: opts.bind_addr.clone(),
            }
        }
    };
    marker::check(
        &opts.data_dir,
        log_store.last_index().map_err(|e| anyhow::anyhow!("{e}"))?,
    )?;
    let api_sock = socket_addr("--api-addr", &identity.api_addr)?;
    let raft_sock = socket_addr("--bind-addr", &identity.raft_addr)?;
    // The backup goes in the data dir before the identity: a restore interrupted from here
    // on is finished by the next start.
    if let Some(r) = &restore {
        if !was_stored {
            backup::save_pending(&opts.data_dir, r).with_context(|| {
                format!(
                    "cannot write {}",
                    opts.data_dir.join(backup::PENDING_FILE).display()
                )
            })?;
        }
    }
    // A new bootstrap records its identity now; a join only once it has been accepted.
    if !was_stored && !identity.cluster_id.is_empty() {
        log_store
            .write_identity(&identity)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let span = tracing::info_span!("manager", node_id = identity.node_id);
    async move {
        // The credential comes first: every server and connection below uses it.
        let credential = match &mode {
            _ if crate::security::store::Credential::exists(&credentials::tls_dir(&opts.data_dir), "node") => {
                credentials::load(&opts.data_dir)?
            }
            Mode::Init if !identity.cluster_id.is_empty() && !db_existed => {
                credentials::create_at_init(&opts.data_dir, &identity, opts.cert_ttl)?
            }
            _ if restore.is_some() && !identity.cluster_id.is_empty() => {
                let r = restore.as_ref().expect("checked");
                credentials::create_at_restore(&opts.data_dir, &identity, &r.backup.state.pki)?
            }
            Mode::Join { token, leaders } if identity.cluster_id.is_empty() => {
                crate::security::enroll::enroll(
                    &credentials::tls_dir(&opts.data_dir),
                    token,
                    leaders,
                    crate::core::Role::Manager,
                    &identity.node_id.to_string(),
                )
                .await?
            }
            _ => credentials::load(&opts.data_dir)?,
        };
        let transport = crate::security::Transport::new(&credential)?;
        if let Mode::ForceNewCluster { even_if_reachable } = &mode {
            recovery::force_new_cluster(&identity, &sm_store, &transport, *even_if_reachable).await?;
        }
        let state = sm_store.shared();
        let network = Network::new(transport.clone(), log_store.durable());
        log_store.set_own_id(identity.node_id);
        let outlogged = network.outlogged.clone();
        let raft = Raft::new(identity.node_id, config, network, log_store.clone(), sm_store)
            .await
            .context("starting Raft")?;
        let joining = match &mode {
            Mode::Join { token, leaders } if identity.cluster_id.is_empty() => Some((token.clone(), leaders.clone())),
            _ => None,
        };
        if (matches!(mode, Mode::Init) || restore.is_some()) && !raft.is_initialized().await.context("reading Raft state")? {
            let me = ManagerNode {
                api_addr: identity.api_addr.clone(),
                raft_addr: identity.raft_addr.clone(),
            };
            info!("bootstrapping a new cluster");
            raft.initialize(BTreeMap::from([(identity.node_id, me)]))
                .await
                .context("bootstrapping Raft")?;
        } else if joining.is_none() {
            info!("resuming from data dir");
        }

        let manager_transport = transport.clone();
        let manager = Arc::new(Manager {
            id: identity.node_id,
            transport,
            raft: raft.clone(),
            state: state.clone(),
            identity,
            peers: peers::Peers::new(manager_transport.clone()),
            election: election::ElectionTimer::new(outlogged),
            heartbeats: Default::default(),
            logs: Default::default(),
            reads: Default::default(),
            orchestrator: opts.timing.orchestrator.clone(),
            timing: opts.timing.election(),
            leader_since: Default::default(),
            handoff: Default::default(),
            changes: Default::default(),
            proposer: proposer::Proposer::start(raft.clone(), state.clone()),
            assignments: Default::default(),
        });
        let changes_task = tokio::spawn(changes::follow(raft.clone(), manager.changes.clone()));
        let _metrics_task = metrics_listener
            .map(|l| crate::AbortOnDrop(observe::serve(&manager, &log_store, &db_path, l)));

        let (stop_tx, stop_rx) = changes::Stop::channel();
        let cluster_id_task = tokio::spawn(leader::ensure_cluster_id(manager.clone(), opts.data_dir.clone(), stop_rx.clone()));
        let probe_task = tokio::spawn(peers::probe_loop(manager.clone(), stop_rx.clone()));
        let assignments_task = tokio::spawn(assignments::follow(manager.clone(), stop_rx.clone()));
        let marker_task = tokio::spawn(marker::run(
            opts.data_dir.clone(),
            log_store.committed_high(),
            stop_rx.clone(),
        ));
        let election_task = tokio::spawn(election::run(manager.clone(), opts.timing.election(), stop_rx.clone()));
        let compaction_task = tokio::spawn(compaction::run(
            raft.clone(),
            log_store.growth(),
            opts.timing.snapshot_logs,
            stop_rx.clone(),
        ));
        let orchestrator_task = tokio::spawn(orchestrator::run(
            manager.clone(),
            opts.timing.orchestrator.clone(),
            stop_rx.clone(),
        ));
        let raft_server = tokio::spawn(raft_service::serve(manager.clone(), raft_sock, wait_stop(stop_rx.clone())));
        let api_server = tokio::spawn(api::serve(manager.clone(), api_sock, wait_stop(stop_rx.clone())));
        info!(api = %api_sock, raft = %raft_sock, "manager listening");
        // Renews this manager's certificate through its own API (any manager signs).
        let (trust_tx, trust_rx) = tokio::sync::watch::channel(crate::security::renew::TrustView::new());
        let trust_task = tokio::spawn(credentials::follow_trust(manager.clone(), trust_tx, stop_rx.clone()));
        let renew_task = tokio::spawn(crate::security::renew::keep_renewed(
            credentials::tls_dir(&opts.data_dir),
            manager.transport.clone(),
            vec![manager.identity.api_addr.clone()],
            trust_rx,
        ));

        // Joining happens with the servers up: the leader replicates to us while we wait.
        let join = async {
            match joining {
                Some((token, leaders)) => {
                    let cluster_id = join::join(&manager, &token, &leaders).await?;
                    let mut id = manager.identity.clone();
                    id.cluster_id = cluster_id;
                    log_store.write_identity(&id).map_err(|e| anyhow::anyhow!("{e}"))?;
                    info!(cluster_id = %id.cluster_id, "joined the cluster");
                    std::future::pending::<anyhow::Result<()>>().await
                }
                None => std::future::pending().await,
            }
        };

        // Whichever ends first: shutdown, a failed join, a server failing (address in use...),
        // or the Raft core stopping on its own (a storage error, a panic): then the process
        // must end with the reason, not live on answering reads from a dead member.
        let core_stopped = watch_core(raft.clone());
        let mut servers = futures::future::select(raft_server, api_server);
        let shutdown = std::pin::pin!(shutdown);
        let mut core_failed = false;
        let mut planned = false;
        let mut result = tokio::select! {
            biased;
            _ = shutdown => {
                planned = true;
                Ok(())
            }
            r = join => r,
            r = core_stopped => {
                core_failed = true;
                Err(r)
            }
            r = &mut servers => {
                let (r, _) = match r { futures::future::Either::Left(x) | futures::future::Either::Right(x) => x };
                match r {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(anyhow::anyhow!("server task failed: {e}")),
                }
            }
        };
        // Another part failing because the core's disk failed (a join writing the identity
        // to a database that refuses all writes after an I/O error): the core's reason is
        // the one to report, and the process exits as after any core failure.
        if result.is_err() && !core_failed {
            if let Some(why) = core_failure(&raft) {
                core_failed = true;
                result = Err(why);
            }
        }
        // A planned stop (SIGTERM, Ctrl-C) of the leader hands leadership over first, while
        // the servers still answer, so the cluster does not wait out an election timeout.
        if planned {
            handoff::before_stop(&manager).await;
            // Under the simulator a planned stop ends here, like the process exiting:
            // `Raft::shutdown` goes through tokio's unseeded generator (see below), and the
            // simulated cluster kills the node next. Dropping `stop_tx` wakes the tasks.
            #[cfg(madsim)]
            return result;
        }
        info!("shutting down");
        // A core that stopped on its own (a disk error): the process exits at once with the
        // reason, as after a panic; no graceful stop of the servers, no last marker write
        // (the disk just failed), no `Raft::shutdown` (nothing left to stop). openraft's
        // ticker cancel goes through tokio's unseeded generator (a watch channel): the
        // simulator's determinism check failed on it after a disk fault. (The tasks' stop
        // is a `changes::Stop`, which wakes them in order, for the same reason.)
        if !core_failed {
            stop_tx.stop();
        }
        cluster_id_task.abort();
        renew_task.abort();
        changes_task.abort();
        trust_task.abort();
        probe_task.abort();
        assignments_task.abort();
        election_task.abort();
        compaction_task.abort();
        orchestrator_task.abort();
        if core_failed {
            marker_task.abort();
            return result;
        }
        let _ = raft.shutdown().await;
        // The marker task records the last committed index once more, then ends.
        let _ = tokio::time::timeout(Duration::from_secs(2), marker_task).await;
        if let Err(e) = log_store.checkpoint() {
            tracing::warn!(error = %e, "could not fold the write-ahead file into the database at stop; it is replayed at the next start");
        }
        result
    }
    .instrument(span)
    .await
}

/// `cluster init --restore`: the backup, checked, for a data dir that holds no manager yet.
fn read_restore(file: &Path, rejoin_grace_ms: i64) -> anyhow::Result<backup::PendingRestore> {
    use crate::core::restore::{MAX_REJOIN_GRACE_MS, MIN_REJOIN_GRACE_MS};
    if !(MIN_REJOIN_GRACE_MS..=MAX_REJOIN_GRACE_MS).contains(&rejoin_grace_ms) {
        bail!("--rejoin-grace {rejoin_grace_ms} ms is out of range: use 10s to 24h (nothing was changed)");
    }
    #[cfg(not(madsim))]
    let bytes = {
        let len = std::fs::metadata(file)
            .with_context(|| format!("cannot read the backup {}", file.display()))?
            .len();
        let max = crate::core::limits::MAX_BACKUP_BYTES + 64;
        if len > max {
            bail!(
                "{} is {len} bytes, over the backup limit of {max} bytes; it is not a Warren backup (nothing was changed)",
                file.display()
            );
        }
        std::fs::read(file).with_context(|| format!("cannot read the backup {}", file.display()))?
    };
    #[cfg(madsim)]
    let bytes = crate::raft::disk::read_durable(file)?
        .ok_or_else(|| anyhow::anyhow!("no backup at {}", file.display()))?;
    let backup = backup::decode(&bytes)
        .map_err(|e| anyhow::anyhow!("cannot restore from {}: {e}. Nothing was changed", file.display()))?;
    info!(file = %file.display(), "restoring: {}", backup::summary(&backup));
    Ok(backup::PendingRestore {
        rejoin_grace_ms,
        backup,
    })
}

/// Why this manager's Raft core stopped on its own, if it did.
fn core_failure(raft: &Raft) -> Option<anyhow::Error> {
    match &raft.metrics().borrow().running_state {
        Err(fatal) => Some(anyhow::anyhow!(
            "the Raft core stopped ({fatal}); this manager exits so that its supervisor restarts it (check the data dir's disk: space, errors)"
        )),
        Ok(()) => None,
    }
}

/// Resolves, with the reason, when this manager's Raft core has stopped (it does not stop
/// before `Raft::shutdown` unless something is fatally wrong). Polled on a timer rather than
/// by waiting on the metrics channel: tokio's watch channel wakes its waiters through one of
/// several `Notify`s picked by a thread-local RNG that outlives a simulation, so every extra
/// waiter makes a seed's run depend on what ran before it in the process.
async fn watch_core(raft: Raft) -> anyhow::Error {
    let rx = raft.metrics();
    loop {
        if let Some(why) = core_failure(&raft) {
            return why;
        }
        if rx.has_changed().is_err() {
            return anyhow::anyhow!(
                "the Raft core ended unexpectedly; this manager exits so that its supervisor restarts it"
            );
        }
        // BUGGIFY: a snapshot now and the log purged up to it, so that a follower behind
        // must take a snapshot install, a path a short run rarely reaches otherwise.
        if crate::buggify!(150) {
            let _ = raft.trigger().snapshot().await;
            let snapshot = rx.borrow().snapshot;
            if let Some(s) = snapshot {
                let _ = raft.trigger().purge_log(s.index).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(CORE_CHECK_INTERVAL_MS)).await;
    }
}

/// How often a manager checks that its Raft core still runs.
const CORE_CHECK_INTERVAL_MS: u64 = 100;

async fn wait_stop(stop: changes::Stop) {
    stop.wait().await
}

impl Manager {
    /// Proposes `cmd` through Raft (forwarding to the leader when needed) and returns the
    /// state machine's answer.
    pub async fn write(&self, cmd: Command) -> ApiResult<crate::core::Outcome> {
        leader::write(self, cmd, None).await
    }

    /// As `write`, under the client's request id: a retry with the same id (through any
    /// manager) gets the first answer instead of applying twice.
    pub async fn write_once(
        &self,
        cmd: Command,
        request: Option<leader::RequestId>,
    ) -> ApiResult<crate::core::Outcome> {
        leader::write(self, cmd, request).await
    }

    /// The heartbeat interval workers are asked for: the configured one, longer in a large
    /// cluster (`reconciler::heartbeat_interval_ms`).
    pub fn heartbeat_interval_ms(&self, st: &crate::core::ClusterState) -> u64 {
        crate::core::reconciler::heartbeat_interval_ms(st.nodes.len(), self.orchestrator.worker_heartbeat_ms)
    }

    /// When this manager leads by openraft's account but a quorum of voters has not
    /// acknowledged it for an election timeout: why it must not act as leader (check-quorum).
    pub fn quorum_lost(&self, metrics: &crate::raft::RaftMetrics) -> Option<String> {
        if metrics.current_leader != Some(self.id) {
            return None;
        }
        let now = tokio::time::Instant::now();
        let since = self.leading_since(metrics);
        let membership = metrics.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let leader_for_ms = now.duration_since(since).as_millis() as u64;
        if self
            .timing
            .leader_has_quorum(voters.len(), metrics.millis_since_quorum_ack, leader_for_ms)
        {
            return None;
        }
        let reachable: Vec<String> = voters
            .iter()
            .filter(|v| self.peers.is_reachable(self.id, **v))
            .map(|v| v.to_string())
            .collect();
        Some(format!(
            "manager {} led term {} but no quorum of the {} managers has answered it for {} ms, so it takes no writes (managers heard from in the last 3 s: {}); a leader may exist on the other side of a partition: ask another manager, or check the network between managers",
            self.id,
            metrics.current_term,
            voters.len(),
            metrics.millis_since_quorum_ack.unwrap_or(leader_for_ms),
            if reachable.is_empty() { "none".to_string() } else { reachable.join(", ") }
        ))
    }

    /// When this manager was first seen leading the current term (now, if this is the first
    /// look). Only meaningful while it leads.
    pub fn leading_since(&self, metrics: &crate::raft::RaftMetrics) -> tokio::time::Instant {
        let mut ls = self.leader_since.lock().unwrap();
        match *ls {
            Some((term, at)) if term == metrics.current_term => at,
            _ => {
                let now = tokio::time::Instant::now();
                *ls = Some((metrics.current_term, now));
                now
            }
        }
    }

    /// The Raft membership as this manager knows it: every member (voters and learners).
    pub fn members(&self) -> BTreeMap<NodeId, ManagerNode> {
        let metrics = self.raft.metrics().borrow().clone();
        metrics
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.clone()))
            .collect()
    }

    /// Who leads, as this manager sees it, for an error message.
    pub fn leader_description(&self) -> String {
        let metrics = self.raft.metrics().borrow().clone();
        match metrics.current_leader {
            Some(l) if l == self.id && self.quorum_lost(&metrics).is_some() => {
                format!("this manager ({l}), without a quorum")
            }
            Some(l) if l == self.id => format!("this manager ({l})"),
            Some(l) => format!("manager {l}"),
            None => "none".into(),
        }
    }

    /// The leader's confirmed commit index, batched: at most one read-index round is in
    /// flight per manager, and every caller that arrived while one was running shares the
    /// next one (which started after it arrived, so it stays linearizable). Without this, a
    /// burst of reads (a hundred workers registering) costs a quorum round each.
    async fn read_index(&self, deadline: Duration) -> ApiResult<Option<u64>> {
        use std::sync::atomic::Ordering;
        let arrived = self.reads.started.load(Ordering::SeqCst);
        let mut done = self.reads.done.lock().await;
        if let Some((started, index)) = *done {
            if started > arrived {
                return Ok(index);
            }
        }
        let started = self.reads.started.fetch_add(1, Ordering::SeqCst) + 1;
        let index = match leader::call(self, leader::LeaderOp::ReadIndex, deadline).await? {
            leader::LeaderAnswer::ReadIndex(i) => i,
            other => return Err(ApiError::Internal(format!("unexpected leader answer {other:?}"))),
        };
        *done = Some((started, index));
        Ok(index)
    }

    /// Returns once this manager has applied everything committed when it was called
    /// (read-index through the leader), so a following local read is linearizable.
    pub async fn read_barrier(&self) -> ApiResult<()> {
        if crate::bugs::on(crate::bugs::Bug::StaleConsistentRead) {
            return Ok(());
        }
        let deadline = Duration::from_millis(leader::DEADLINE_MS);
        let index = self.read_index(deadline).await?;
        // Our own wait rather than `Raft::wait`, whose unbiased `select!` the simulator
        // cannot make deterministic.
        let Some(index) = index else { return Ok(()) };
        let metrics = self.raft.metrics();
        let caught_up = async {
            loop {
                let seen = self.changes.version();
                if metrics.borrow().last_applied.is_some_and(|l| l.index >= index) {
                    return true;
                }
                if self.changes.after(seen).await.is_none() {
                    return false;
                }
            }
        };
        match tokio::time::timeout(deadline, caught_up).await {
            Ok(true) => Ok(()),
            _ => Err(ApiError::Unavailable(format!(
                "this manager did not apply index {index} within {} ms; retry, or read from the leader",
                deadline.as_millis()
            ))),
        }
    }
}
