//! The simulated cluster: real `warren` managers started in madsim nodes the way the binary
//! starts them (`ManagerOpts` parsed from flags), plus a client node.
//!
//! IP plan:
//!
//! | node        | IP            | ports                        |
//! |-------------|---------------|------------------------------|
//! | manager-N   | 10.0.0.N      | API 8080, Raft 7946          |
//! | client      | 10.0.1.1      | -                            |
//! | worker-N    | 10.0.2.N      | - (connects to every manager's API) |
//!
//! Data dirs are `/sim/manager-N` and `/sim/worker-N` on the simulated disk, which survives
//! kill + restart. Each worker host has its own simulated container runtime
//! (`SimRuntime::for_host("worker-N")`), which outlives a restart of the worker agent as
//! containerd outlives it on a real host; `kill_worker` models the host dying (containers
//! gone).

use clap::Parser;
use madsim::runtime::{Handle, NodeHandle};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;
use warren::client::Client;
use warren::manager::{JoinOpts, ManagerOpts, Mode};
use warren::proto::v1 as pb;
use warren::worker::sim_runtime::SimRuntime;

pub const API_PORT: u16 = 8080;
pub const RAFT_PORT: u16 = 7946;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Daemon,
}

/// The two ways a manager daemon starts, as on the command line.
#[derive(clap::Subcommand)]
enum Daemon {
    Init(ManagerOpts),
    Join(JoinOpts),
}

fn daemon_args(i: u64) -> Vec<String> {
    vec![
        format!("--node-id={i}"),
        format!("--api-addr={}", api_addr(i)),
        format!("--bind-addr={}", raft_addr(i)),
        format!("--data-dir=/sim/manager-{i}"),
    ]
}

pub fn api_addr(n: u64) -> String {
    format!("10.0.0.{n}:{API_PORT}")
}
pub fn raft_addr(n: u64) -> String {
    format!("10.0.0.{n}:{RAFT_PORT}")
}

pub struct Cluster {
    pub handle: Handle,
    pub managers: BTreeMap<u64, NodeHandle>,
    pub client_node: NodeHandle,
    #[allow(dead_code)]
    pub seed: u64,
    /// Extra daemon flags given to every manager.
    pub flags: Vec<String>,
    pub workers: BTreeMap<u64, NodeHandle>,
    /// Managers whose start may fail (the scenario checks why), and the errors they gave.
    pub may_fail: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<u64>>>,
    pub failures: std::sync::Arc<std::sync::Mutex<BTreeMap<u64, String>>>,
    /// The test this run belongs to (`module::name`), for the replay and digest lines.
    pub scenario: String,
    /// Per manager: how to ask for a planned stop (the simulated SIGTERM), and whether its
    /// `manager::start` has returned since its last start.
    pub stops: std::sync::Arc<std::sync::Mutex<BTreeMap<u64, Stop>>>,
}

/// A manager's planned-stop channel (see `Cluster::stop_gracefully`).
pub struct Stop {
    ask: Option<tokio::sync::oneshot::Sender<()>>,
    returned: bool,
}

/// Writes `line` to stderr in one write: `eprintln!` writes each formatted piece on its own,
/// and in the parallel suite libtest's progress dots on stdout (the same file in CI) landed
/// inside a replay line's seed once.
fn say(mut line: String) {
    use std::io::Write;
    line.push('\n');
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// At the end of every run: a digest of the events (the simulated time reached and the next
/// draw of the seeded generator, which depends on every draw made), printed with the seed.
/// The same seed must give the same digest alone (its printed replay line) as in the suite
/// (checked by `scripts/sim-replay-check.sh`).
impl Drop for Cluster {
    fn drop(&mut self) {
        if self.scenario.contains("::") {
            let ns = madsim::time::TimeHandle::current().elapsed().as_nanos();
            let draw: u64 = madsim::rand::random();
            say(format!(
                "digest {} seed {}: {ns} {draw:016x}",
                self.scenario, self.seed
            ));
        }
    }
}

impl Cluster {
    /// Starts manager 1 with `cluster init`, then joins managers 2..=n through the real join
    /// path (a manager token, learner, promotion), one at a time.
    pub async fn start(n: u64, scenario: &str) -> Cluster {
        Self::start_with(n, scenario, Vec::new()).await
    }

    /// As `start`, with extra daemon flags (Raft timers...) for every manager.
    pub async fn start_with(n: u64, scenario: &str, flags: Vec<String>) -> Cluster {
        warren::raft::disk::sim::reset_all();
        warren::worker::sim_runtime::SimRuntime::reset_hosts();
        warren::sim_hooks::reset_node_faults();
        // Every request is authorized as in production: each host presents the credential
        // it holds (the operator's on the client host), known by its address.
        warren::security::sim_seam::reset();
        warren::security::sim_seam::enforce(true);
        if let Ok(filter) = std::env::var("RUST_LOG") {
            // Debugging aid: daemon logs with simulated timestamps.
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_writer(std::io::stderr)
                .try_init();
        }
        let handle = Handle::current();
        let seed = handle.seed();
        if scenario.contains("::") {
            // A pinned regression seed replays with the same line (its test pins the seed).
            say(format!("scenario {scenario}, seed {seed}; replay: MADSIM_TEST_SEED={seed} cargo sim -- {scenario} --exact --include-ignored"));
        }
        let client_node = handle
            .create_node()
            .name("client")
            .ip("10.0.1.1".parse().unwrap())
            .build();
        warren::security::sim_seam::bind_host("10.0.1.1".parse().unwrap(), client_node.id());
        let mut c = Cluster {
            handle,
            managers: BTreeMap::new(),
            client_node,
            seed,
            flags,
            workers: BTreeMap::new(),
            may_fail: Default::default(),
            failures: Default::default(),
            scenario: scenario.to_string(),
            stops: Default::default(),
        };
        let mut args = vec!["warren".to_string(), "init".to_string()];
        args.extend(daemon_args(1));
        args.extend(c.flags.clone());
        c.add_node(1, args);
        c.on_client(agreed_leader(vec![1], Duration::from_secs(10))).await;
        for i in 2..=n {
            // The first manager may still be recording the cluster id: poll for a token.
            let token = c
                .on_client(wait_for("a manager token", Duration::from_secs(20), || {
                    manager_token(1, false)
                }))
                .await;
            c.join(i, &token, &(1..i).collect::<Vec<_>>());
            let members: Vec<u64> = (1..=i).collect();
            c.on_client(wait_voters(members.clone(), members, Duration::from_secs(20)))
                .await;
        }
        c
    }

    fn add_node(&mut self, i: u64, args: Vec<String>) {
        let (may_fail, failures) = (self.may_fail.clone(), self.failures.clone());
        let stops = self.stops.clone();
        let node = self
            .handle
            .create_node()
            .name(format!("manager-{i}"))
            .ip(format!("10.0.0.{i}").parse().unwrap())
            .init(move || {
                let cli = Cli::parse_from(args.clone());
                let (may_fail, failures) = (may_fail.clone(), failures.clone());
                // Each (re)start gets a fresh stop channel (a oneshot: no waker goes through
                // tokio's unseeded paths, unlike a watch channel's).
                let (ask, asked) = tokio::sync::oneshot::channel::<()>();
                stops.lock().unwrap().insert(
                    i,
                    Stop {
                        ask: Some(ask),
                        returned: false,
                    },
                );
                let stops = stops.clone();
                async move {
                    let asked = async move {
                        if asked.await.is_err() {
                            std::future::pending::<()>().await
                        }
                    };
                    let r = match cli.cmd {
                        Daemon::Init(o) => warren::manager::start(o, Mode::Init, asked).await,
                        Daemon::Join(j) => {
                            let mode = Mode::Join {
                                token: j.token,
                                leaders: j.leader,
                            };
                            warren::manager::start(j.manager, mode, asked).await
                        }
                    };
                    if let Some(s) = stops.lock().unwrap().get_mut(&i) {
                        s.returned = true;
                    }
                    if let Err(e) = r {
                        if may_fail.lock().unwrap().contains(&i) {
                            failures.lock().unwrap().insert(i, format!("{e:#}"));
                            return;
                        }
                        panic!("manager {i} failed: {e:#}");
                    }
                }
            })
            .build();
        warren::security::sim_seam::bind_host(format!("10.0.0.{i}").parse().unwrap(), node.id());
        self.managers.insert(i, node);
    }

    /// Starts manager `i` with `manager join --token TOKEN --leader <API of leaders>`.
    pub fn join(&mut self, i: u64, token: &str, leaders: &[u64]) {
        let mut args = vec![
            "warren".to_string(),
            "join".to_string(),
            format!("--token={token}"),
        ];
        let leaders: Vec<String> = leaders.iter().map(|l| api_addr(*l)).collect();
        args.push(format!("--leader={}", leaders.join(",")));
        args.extend(daemon_args(i));
        args.extend(self.flags.clone());
        self.add_node(i, args);
    }

    /// madsim's id of manager `i`, for network faults.
    pub fn node_id(&self, i: u64) -> madsim::task::NodeId {
        self.managers[&i].id()
    }

    /// Runs `f` on the client node.
    pub async fn on_client<F, T>(&self, f: F) -> T
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.client_node.spawn(f).await.expect("client task panicked")
    }

    /// Starts workers 1..=n with one worker token (`worker start --token ...`) and waits
    /// until the managers list them all as ready.
    pub async fn start_workers(&mut self, n: u64, flags: &[&str]) {
        let token = self
            .on_client(wait_for("a worker token", Duration::from_secs(20), || {
                worker_token(1)
            }))
            .await;
        for i in 1..=n {
            self.add_worker(i, &token, flags);
        }
        let want = n as usize;
        self.on_client(wait_for(
            "all workers ready",
            Duration::from_secs(30),
            move || async move {
                let nodes = list_nodes(1).await?;
                let ready = nodes
                    .iter()
                    .filter(|n| n.status == pb::NodeStatus::Ready as i32)
                    .count();
                (ready == want).then_some(())
            },
        ))
        .await;
    }

    pub fn add_worker(&mut self, i: u64, token: &str, flags: &[&str]) {
        let managers: Vec<String> = self.managers.keys().map(|m| api_addr(*m)).collect();
        let mut args = vec![
            "warren".to_string(),
            format!("--token={token}"),
            format!("--node-id=worker-{i}"),
            format!("--data-dir=/sim/worker-{i}"),
            "--cpus=4".into(),
            "--memory=8GiB".into(),
            format!("--label=rack=r{}", i % 2),
            "--runtime=sim".into(),
        ];
        args.extend(flags.iter().map(|f| f.to_string()));
        let node = self
            .handle
            .create_node()
            .name(format!("worker-{i}"))
            .ip(format!("10.0.2.{i}").parse().unwrap())
            .init(move || {
                #[derive(Parser)]
                struct W {
                    #[command(flatten)]
                    opts: warren::worker::WorkerOpts,
                }
                let mut w = W::parse_from(args.clone());
                w.opts.managers = managers.clone();
                let capacity = warren::core::Resources {
                    cpu_millis: (w.opts.cpus.unwrap_or(1.0) * 1000.0) as u64,
                    memory_bytes: w.opts.memory.unwrap_or(1 << 30),
                };
                let rt = std::sync::Arc::new(SimRuntime::for_host(&format!("worker-{i}")));
                async move {
                    if let Err(e) = warren::worker::start(w.opts, capacity, rt, std::future::pending()).await
                    {
                        panic!("worker {i} failed: {e:#}");
                    }
                }
            })
            .build();
        warren::security::sim_seam::bind_host(format!("10.0.2.{i}").parse().unwrap(), node.id());
        self.workers.insert(i, node);
    }

    /// The worker host dies: agent and containers gone.
    pub fn kill_worker(&self, i: u64) {
        self.handle.kill(self.workers[&i].id());
        SimRuntime::for_host(&format!("worker-{i}")).wipe();
    }

    /// The worker agent dies (SIGKILL; its host and containers stay).
    pub fn kill_worker_agent(&self, i: u64) {
        self.handle.kill(self.workers[&i].id());
    }

    /// The killed worker agent starts again: it resumes from its data dir.
    pub fn start_worker_agent(&self, i: u64) {
        self.handle.restart(self.workers[&i].id());
    }

    /// The worker agent restarts (its host and containers stay): it resumes from its data dir.
    pub fn restart_worker_agent(&self, i: u64) {
        self.handle.kill(self.workers[&i].id());
        self.handle.restart(self.workers[&i].id());
    }

    /// Cuts worker `i` off from everyone (its containers keep running).
    pub fn isolate_worker(&self, i: u64) {
        madsim::net::NetSim::current().clog_node(self.workers[&i].id());
    }

    pub fn heal_worker(&self, i: u64) {
        madsim::net::NetSim::current().unclog_node(self.workers[&i].id());
    }

    pub fn kill(&self, id: u64) {
        self.handle.kill(self.managers[&id].id());
    }

    /// A planned stop of manager `id` (the simulated SIGTERM): it hands leadership over if it
    /// leads, then its `manager::start` returns. `stopped` says when it has.
    pub fn stop_gracefully(&self, id: u64) {
        if let Some(ask) = self.stops.lock().unwrap().get_mut(&id).and_then(|s| s.ask.take()) {
            let _ = ask.send(());
        }
    }

    pub fn stopped(&self, id: u64) -> bool {
        self.stops.lock().unwrap().get(&id).is_some_and(|s| s.returned)
    }

    /// Cuts manager `id` off from every other node / heals it.
    pub fn isolate_manager(&self, id: u64) {
        madsim::net::NetSim::current().clog_node(self.managers[&id].id());
    }

    pub fn heal_manager(&self, id: u64) {
        madsim::net::NetSim::current().unclog_node(self.managers[&id].id());
    }

    /// Kill then restart (restart alone leaves the old listener in place in madsim 0.2.34).
    pub fn restart(&self, id: u64) {
        self.handle.kill(self.managers[&id].id());
        self.handle.restart(self.managers[&id].id());
    }
}

/// The operator credential `cluster init` wrote on manager 1's (simulated) disk; none
/// before it has.
pub fn operator() -> warren::security::Transport {
    let dir = std::path::Path::new("/sim/manager-1/admin");
    match warren::security::store::Credential::load(dir, "admin") {
        Ok(cred) => warren::security::Transport::new(&cred).unwrap(),
        Err(_) => warren::security::Transport::bootstrap(),
    }
}

/// A client that talks to one manager only, as the operator.
pub fn client_of(id: u64) -> Client {
    Client::new(&[api_addr(id)], operator()).unwrap()
}

/// A client for all `ids`, failing over between them, as the operator.
pub fn client_of_all(ids: impl IntoIterator<Item = u64>) -> Client {
    let addrs: Vec<String> = ids.into_iter().map(api_addr).collect();
    Client::new(&addrs, operator()).unwrap()
}

pub async fn cluster_info(id: u64) -> Option<pb::ClusterInfo> {
    let c = client_of(id);
    let call = c.call(|mut s| async move {
        s.cluster
            .get_cluster_info(pb::GetClusterInfoRequest::default())
            .await
    });
    tokio::time::timeout(Duration::from_secs(2), call)
        .await
        .ok()?
        .ok()
}

pub async fn list_services(id: u64) -> Option<Vec<pb::Service>> {
    let c = client_of(id);
    tokio::time::timeout(Duration::from_secs(2), c.list_services(false))
        .await
        .ok()?
        .ok()
}

/// Polls `check` every 50 ms of simulated time until it yields a value or `deadline` passes.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = tokio::time::Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The leader that every manager in `ids` agrees on, itself one of `ids` (so a dead leader
/// that the others still remember does not count).
pub async fn agreed_leader(ids: Vec<u64>, deadline: Duration) -> u64 {
    wait_for("all managers to agree on a leader", deadline, move || {
        let ids = ids.clone();
        async move {
            let mut leader = None;
            for id in &ids {
                let l = cluster_info(*id).await?.leader_id;
                if !ids.contains(&l) || leader.is_some_and(|x| x != l) {
                    return None;
                }
                leader = Some(l);
            }
            leader
        }
    })
    .await
}

/// Runs `call` on a client of manager `id` alone, giving up after `secs`.
async fn ask<T, F: std::future::Future<Output = Result<T, warren::client::ClientError>>>(
    secs: u64,
    call: F,
) -> Option<T> {
    tokio::time::timeout(Duration::from_secs(secs), call)
        .await
        .ok()?
        .ok()
}

pub async fn list_nodes(id: u64) -> Option<Vec<pb::Node>> {
    ask(2, client_of(id).list_nodes()).await
}

/// Every task through manager `id` (its local state).
pub async fn list_tasks(id: u64) -> Option<Vec<pb::Task>> {
    ask(2, client_of(id).list_tasks("", false)).await
}

pub async fn worker_token(via: u64) -> Option<String> {
    ask(8, client_of(via).join_token(pb::Role::Worker, 0, false))
        .await
        .map(|t| t.token)
}

/// Issues a manager join token through manager `via`.
pub async fn manager_token(via: u64, rotate: bool) -> Option<String> {
    ask(8, client_of(via).join_token(pb::Role::Manager, 0, rotate))
        .await
        .map(|t| t.token)
}

/// Waits until every manager in `ask` reports exactly `voters` as the voter set.
pub async fn wait_voters(ask: Vec<u64>, voters: Vec<u64>, deadline: Duration) {
    wait_for("the voter set to converge", deadline, move || {
        let (ask, voters) = (ask.clone(), voters.clone());
        async move {
            for id in ask {
                let info = cluster_info(id).await?;
                let mut got: Vec<u64> = info
                    .managers
                    .iter()
                    .filter(|m| m.voter)
                    .map(|m| m.node_id)
                    .collect();
                got.sort();
                if got != voters {
                    return None;
                }
            }
            Some(())
        }
    })
    .await
}

/// Creates service `name` (busybox, `replicas`) through `client`; `None` if no answer came
/// within `timeout`.
pub async fn create_service(
    client: &Client,
    name: &str,
    replicas: i64,
    timeout: Duration,
) -> Option<Result<pb::Service, warren::client::ClientError>> {
    let spec = pb::ServiceSpec {
        name: name.into(),
        image: "busybox".into(),
        replicas,
        ..Default::default()
    };
    tokio::time::timeout(timeout, client.create_service(spec))
        .await
        .ok()
}
