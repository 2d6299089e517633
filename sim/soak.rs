//! The soak: one seed simulates a day (`WARREN_SOAK_HOURS`, default 24) of a 3-manager,
//! 5-worker cluster with a fault every few minutes (network, machine and worker faults) and
//! service churn, checking every simulated hour that the Raft log stays compacted, that the
//! state stays bounded and that the cluster is live; at the end, that every manager and
//! every host agree, and that deleting every service leaves no task and no container.
//! Ignored by the seed runs; CI runs it once: `cargo sim -- --ignored soak::`.

use crate::checkers::election_safety::ElectionSafety;
use crate::checkers::liveness;
use crate::checkers::tasks::{consistent_views, running_by_task, views, wait_converged};
use crate::cluster::*;
use crate::faults::{rand_range, random_fault, random_machine_fault, Fault, Profile};
use std::collections::BTreeMap;
use std::time::Duration;

const MANAGERS: [u64; 3] = [1, 2, 3];
const WORKERS: u64 = 5;
/// Log entries between snapshots (`--snapshot-logs`), small so compaction runs all day.
const SNAPSHOT_LOGS: u64 = 500;
/// Service names the churn draws from, and the most replicas it asks for.
const NAMES: u64 = 8;
const MAX_REPLICAS: u64 = 12;

/// What the workers may do wrong, beside the managers' faults.
#[derive(Debug)]
enum WorkerFault {
    HostDies(u64),
    AgentRestarts(u64),
    Isolated(u64),
}

async fn churn() {
    let client = client_of_all(MANAGERS);
    for _ in 0..rand_range(1, 4) {
        let name = format!("soak-{}", rand_range(0, NAMES));
        let replicas = rand_range(0, MAX_REPLICAS + 1) as i64;
        let call = async {
            match rand_range(0, 4) {
                0 | 1 => {
                    if let Some(Err(e)) =
                        create_service(&client, &name, replicas, Duration::from_secs(10)).await
                    {
                        if e.code() == tonic::Code::AlreadyExists {
                            let _ = client.scale_service(&name, replicas).await;
                        }
                    }
                }
                2 => {
                    let _ = client.scale_service(&name, replicas).await;
                }
                _ => {
                    let _ = client.delete_service(&name).await;
                }
            }
        };
        // An operation lost to a fault is fine: the end state is read back, not assumed.
        let _ = tokio::time::timeout(Duration::from_secs(15), call).await;
    }
}

/// The hourly checks: live, log compacted, state bounded, on every manager that answers.
async fn checkpoint(hour: u64) {
    liveness::check(MANAGERS.to_vec(), Duration::from_secs(60)).await;
    for id in MANAGERS {
        let Some(info) = cluster_info(id).await else {
            continue;
        };
        let kept = info.commit_index.saturating_sub(info.purged_index);
        // A snapshot every SNAPSHOT_LOGS entries keeps up to that many (openraft keeps
        // min(SNAPSHOT_LOGS, 1000) behind it), plus what arrived since.
        assert!(
            kept <= 3 * SNAPSHOT_LOGS,
            "hour {hour}: manager {id} keeps {kept} log entries (commit {}, purged {})",
            info.commit_index,
            info.purged_index
        );
        let bound = NAMES * MAX_REPLICAS * (warren::core::reconciler::HISTORY_PER_SLOT as u64 + 1);
        assert!(
            u64::from(info.tasks) <= bound,
            "hour {hour}: manager {id} holds {} tasks, more than {bound}",
            info.tasks
        );
        assert!(info.nodes as u64 <= WORKERS, "hour {hour}: {} nodes", info.nodes);
        let db = std::path::PathBuf::from(format!("/sim/manager-{id}/{}", warren::manager::DB_FILE));
        let bytes = warren::raft::disk::sim::len(&db).unwrap_or(0);
        assert!(
            bytes <= 64 << 20,
            "hour {hour}: manager {id}'s database is {bytes} bytes"
        );
    }
}

pub async fn soak(scenario: &str, hours: u64) {
    Profile::Lan.apply();
    let elections = ElectionSafety::install();
    // The edge-WAN timers (300 ms heartbeat) on a LAN: the soak is about what a day does
    // to the state and the log, not about failover speed, and a sixth of the heartbeats
    // makes the simulated day six times cheaper to run.
    let mut flags = Profile::EdgeWan.timing_flags();
    flags.push(format!("--snapshot-logs={SNAPSHOT_LOGS}"));
    let mut c = Cluster::start_with(3, scenario, flags).await;
    c.start_workers(WORKERS, &[]).await;
    warren::sim_hooks::enable_buggify();
    let start = tokio::time::Instant::now();
    let day = Duration::from_secs(hours * 3_600);
    let (mut faults, mut next_check) = (0u64, 1u64);
    while start.elapsed() < day {
        c.on_client(churn()).await;
        tokio::time::sleep(Duration::from_millis(rand_range(60_000, 300_000))).await;
        let hold = Duration::from_millis(rand_range(5_000, 60_000));
        let leader = c
            .on_client(async { cluster_info(1).await.map(|i| i.leader_id) })
            .await
            .unwrap_or(1)
            .clamp(1, 3);
        match rand_range(0, 3) {
            0 => {
                let f = random_fault(3, leader);
                c.inject(&f).await;
                tokio::time::sleep(hold).await;
                c.heal(&f).await;
            }
            1 => {
                let f: Fault = random_machine_fault(3, leader);
                c.inject(&f).await;
                tokio::time::sleep(hold).await;
                c.heal(&f).await;
            }
            _ => {
                let w = rand_range(1, WORKERS + 1);
                let f = match rand_range(0, 3) {
                    0 => WorkerFault::HostDies(w),
                    1 => WorkerFault::AgentRestarts(w),
                    _ => WorkerFault::Isolated(w),
                };
                match f {
                    WorkerFault::HostDies(w) => {
                        c.kill_worker(w);
                        tokio::time::sleep(hold).await;
                        c.handle.restart(c.workers[&w].id());
                    }
                    WorkerFault::AgentRestarts(w) => c.restart_worker_agent(w),
                    WorkerFault::Isolated(w) => {
                        c.isolate_worker(w);
                        tokio::time::sleep(hold).await;
                        c.heal_worker(w);
                    }
                }
            }
        }
        faults += 1;
        if start.elapsed() >= Duration::from_secs(next_check * 3_600) {
            c.on_client(checkpoint(next_check)).await;
            next_check += 1;
        }
    }
    elections.check();
    // Quiet now: whatever the services are, every manager and host must agree on them.
    let want: BTreeMap<String, i64> = c
        .on_client(wait_for("the service list", Duration::from_secs(30), || {
            list_services(1)
        }))
        .await
        .into_iter()
        .map(|s| {
            let spec = s.spec.unwrap_or_default();
            (spec.name, spec.replicas)
        })
        .collect();
    let replicas: i64 = want.values().sum();
    c.on_client(wait_converged(
        MANAGERS.to_vec(),
        want.clone(),
        Duration::from_secs(120),
    ))
    .await;
    let all = c.on_client(views(MANAGERS.to_vec())).await;
    consistent_views(&all).unwrap();
    // No leak: delete everything; no task and no container may remain.
    for name in want.keys() {
        let name = name.clone();
        c.on_client(async move {
            client_of_all(MANAGERS)
                .delete_service(&name)
                .await
                .unwrap_or_else(|e| panic!("deleting {name}: {e}"));
        })
        .await;
    }
    c.on_client(wait_for(
        "no task and no container left",
        Duration::from_secs(60),
        || async {
            for id in MANAGERS {
                if cluster_info(id).await?.tasks != 0 {
                    return None;
                }
            }
            running_by_task().is_empty().then_some(())
        },
    ))
    .await;
    eprintln!(
        "soak: {hours} h simulated, {faults} faults, {} elections, {} services with {replicas} replicas at the end",
        elections.elections(),
        want.len()
    );
}

#[madsim::test]
#[ignore = "one long seed; CI runs it with --ignored"]
async fn a_simulated_day_of_faults_and_churn() {
    let hours = std::env::var("WARREN_SOAK_HOURS")
        .ok()
        .and_then(|h| h.parse().ok())
        .unwrap_or(24);
    soak("soak::a_simulated_day_of_faults_and_churn", hours).await;
}
