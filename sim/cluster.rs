//! The simulated cluster: real `warren` managers started in madsim nodes the way the binary
//! starts them (`ManagerOpts` parsed from flags), plus a client node.
//!
//! IP plan:
//!
//! | node        | IP            | ports                        |
//! |-------------|---------------|------------------------------|
//! | manager-N   | 10.0.0.N      | API 8080, Raft 7946          |
//! | client      | 10.0.1.1      | -                            |
//!
//! Data dirs are `/sim/manager-N` on the simulated disk, which survives kill + restart.

use clap::Parser;
use madsim::runtime::{Handle, NodeHandle};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;
use warren::client::Client;
use warren::manager::ManagerOpts;
use warren::proto::v1 as pb;

pub const API_PORT: u16 = 8080;
pub const RAFT_PORT: u16 = 7946;

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    opts: ManagerOpts,
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
}

impl Cluster {
    /// Starts `n` managers bootstrapped as one Raft group of `n` voters.
    pub fn start(n: u64, scenario: &str) -> Cluster {
        warren::raft::disk::sim::reset_all();
        let handle = Handle::current();
        let seed = handle.seed();
        eprintln!("scenario {scenario}, seed {seed}; replay: MADSIM_TEST_SEED={seed} cargo sim -- {scenario} --exact");
        let voters: Vec<String> = (1..=n)
            .map(|i| format!("{i}={}/{}", api_addr(i), raft_addr(i)))
            .collect();
        let mut managers = BTreeMap::new();
        for i in 1..=n {
            let voters = voters.join(",");
            let node = handle
                .create_node()
                .name(format!("manager-{i}"))
                .ip(format!("10.0.0.{i}").parse().unwrap())
                .init(move || {
                    let flags = Flags::parse_from([
                        "manager".to_string(),
                        format!("--node-id={i}"),
                        format!("--api-addr={}", api_addr(i)),
                        format!("--bind-addr={}", raft_addr(i)),
                        format!("--data-dir=/sim/manager-{i}"),
                        format!("--initial-voters={voters}"),
                    ]);
                    async move {
                        if let Err(e) = warren::manager::start(flags.opts, std::future::pending()).await {
                            panic!("manager {i} failed: {e:#}");
                        }
                    }
                })
                .build();
            managers.insert(i, node);
        }
        let client_node = handle
            .create_node()
            .name("client")
            .ip("10.0.1.1".parse().unwrap())
            .build();
        Cluster {
            handle,
            managers,
            client_node,
            seed,
        }
    }

    /// Runs `f` on the client node.
    pub async fn on_client<F, T>(&self, f: F) -> T
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.client_node.spawn(f).await.expect("client task panicked")
    }

    pub fn kill(&self, id: u64) {
        self.handle.kill(self.managers[&id].id());
    }

    /// Kill then restart (restart alone leaves the old listener in place in madsim 0.2.34).
    pub fn restart(&self, id: u64) {
        self.handle.kill(self.managers[&id].id());
        self.handle.restart(self.managers[&id].id());
    }
}

/// A client that talks to one manager only.
pub fn client_of(id: u64) -> Client {
    Client::new(&[api_addr(id)]).unwrap()
}

/// A client for all `ids`, failing over between them.
pub fn client_of_all(ids: impl IntoIterator<Item = u64>) -> Client {
    let addrs: Vec<String> = ids.into_iter().map(api_addr).collect();
    Client::new(&addrs).unwrap()
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
    let call =
        c.call(|mut s| async move { s.services.list_services(pb::ListServicesRequest::default()).await });
    Some(
        tokio::time::timeout(Duration::from_secs(2), call)
            .await
            .ok()?
            .ok()?
            .services,
    )
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

/// The leader that every manager in `ids` agrees on.
pub async fn agreed_leader(ids: Vec<u64>, deadline: Duration) -> u64 {
    wait_for("all managers to agree on a leader", deadline, move || {
        let ids = ids.clone();
        async move {
            let mut leader = None;
            for id in ids {
                let l = cluster_info(id).await?.leader_id;
                if l == 0 || leader.is_some_and(|x| x != l) {
                    return None;
                }
                leader = Some(l);
            }
            leader
        }
    })
    .await
}
