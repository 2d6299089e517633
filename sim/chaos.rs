//! Chaos: a random client workload against three managers while faults drawn from the seed
//! hit them (kills, isolation, splits, one-way links, swizzle-clogging), on each network
//! profile; then every checker runs.

use crate::checkers::election_safety::ElectionSafety;
use crate::checkers::history::{History, Op, Ret};
use crate::checkers::{acked_writes, linearizability, liveness};
use crate::cluster::*;
use crate::faults::{rand_range, random_fault, random_machine_fault, Profile};
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::Code;
use warren::proto::v1 as pb;

const MANAGERS: u64 = 3;
const CLIENTS: usize = 4;
const KEYS: u64 = 16;
const OP_TIMEOUT: Duration = Duration::from_secs(3);

fn unknown_unless(code: Code, known: &[(Code, Ret)]) -> Ret {
    known
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, r)| r.clone())
        .unwrap_or(Ret::Unknown)
}

/// One client bound to one manager (so a retry never hides an outcome), running random
/// operations on a small set of names until `until`.
async fn client_loop(id: usize, manager: u64, history: History, until: tokio::time::Instant) {
    let client = client_of(manager);
    while tokio::time::Instant::now() < until {
        let key = format!("svc-{}", rand_range(0, KEYS));
        let replicas = rand_range(0, 5) as i64;
        let op = match rand_range(0, 8) {
            0..=2 => Op::Create { replicas },
            3..=4 => Op::Scale { replicas },
            5 => Op::Delete,
            _ => Op::Get,
        };
        let idx = history.invoke(id, &key, op.clone());
        let ret = match op {
            Op::Create { replicas } => match create_service(&client, &key, replicas, OP_TIMEOUT).await {
                Some(Ok(_)) => Ret::Ok,
                Some(Err(e)) => unknown_unless(e.code(), &[(Code::AlreadyExists, Ret::AlreadyExists)]),
                None => Ret::Unknown,
            },
            Op::Scale { replicas } => {
                match tokio::time::timeout(OP_TIMEOUT, client.scale_service(&key, replicas)).await {
                    Ok(Ok(_)) => Ret::Ok,
                    Ok(Err(e)) => unknown_unless(e.code(), &[(Code::NotFound, Ret::NotFound)]),
                    Err(_) => Ret::Unknown,
                }
            }
            Op::Delete => {
                let service = key.clone();
                let call = client.call(|mut s| {
                    let service = service.clone();
                    async move {
                        s.services
                            .delete_service(pb::DeleteServiceRequest { service })
                            .await
                    }
                });
                match tokio::time::timeout(OP_TIMEOUT, call).await {
                    Ok(Ok(_)) => Ret::Ok,
                    Ok(Err(e)) => unknown_unless(e.code(), &[(Code::NotFound, Ret::NotFound)]),
                    Err(_) => Ret::Unknown,
                }
            }
            Op::Get => {
                let service = key.clone();
                let call = client.call(|mut s| {
                    let service = service.clone();
                    async move {
                        s.services
                            .get_service(pb::GetServiceRequest {
                                service,
                                consistent: true,
                            })
                            .await
                    }
                });
                match tokio::time::timeout(OP_TIMEOUT, call).await {
                    Ok(Ok(s)) => Ret::Found {
                        replicas: s.spec.unwrap_or_default().replicas,
                    },
                    Ok(Err(e)) => unknown_unless(e.code(), &[(Code::NotFound, Ret::NotFound)]),
                    Err(_) => Ret::Unknown,
                }
            }
        };
        history.complete(idx, ret);
        tokio::time::sleep(Duration::from_millis(rand_range(20, 300))).await;
    }
}

async fn services_of(id: u64) -> Option<BTreeMap<String, i64>> {
    Some(
        list_services(id)
            .await?
            .into_iter()
            .map(|s| {
                let spec = s.spec.unwrap_or_default();
                (spec.name, spec.replicas)
            })
            .collect(),
    )
}

pub async fn run(profile: Profile, scenario: &str) {
    run_with(profile, scenario, false).await
}

/// As `run`, with machine faults (pauses, clock jumps, slow and failing disks) drawn beside
/// the network ones, and BUGGIFY on.
pub async fn run_mixed(profile: Profile, scenario: &str) {
    run_with(profile, scenario, true).await
}

async fn run_with(profile: Profile, scenario: &str, machine: bool) {
    profile.apply();
    // Installed before the cluster starts so the first election is seen too.
    let elections = ElectionSafety::install();
    // fsync: 0.1-2 ms, and one in 50 takes 50-500 ms.
    warren::sim_hooks::set_disk_latency(Some(warren::sim_hooks::DiskLatency {
        base_us: 100..2_000,
        spike_one_in: 50,
        spike_ms: 50..500,
    }));
    let c = Cluster::start_with(MANAGERS, scenario, profile.timing_flags()).await;
    if machine {
        warren::sim_hooks::enable_buggify();
    }
    let bursts = c.client_node.spawn(profile.run_bursts());

    let history = History::default();
    let until = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut clients = Vec::new();
    for id in 0..CLIENTS {
        let manager = (id as u64 % MANAGERS) + 1;
        clients.push(
            c.client_node
                .spawn(client_loop(id, manager, history.clone(), until)),
        );
    }

    let mut faults = Vec::new();
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rand_range(300, 1_500))).await;
        let leader = c
            .on_client(async { cluster_info(1).await.map(|i| i.leader_id) })
            .await
            .unwrap_or(1)
            .clamp(1, MANAGERS);
        let fault = if machine && madsim::rand::random::<bool>() {
            random_machine_fault(MANAGERS, leader)
        } else {
            random_fault(MANAGERS, leader)
        };
        c.inject(&fault).await;
        tokio::time::sleep(Duration::from_millis(rand_range(300, 3_000))).await;
        c.heal(&fault).await;
        faults.push(fault);
    }
    for cl in clients {
        cl.await.unwrap();
    }
    bursts.abort();
    profile.apply();

    let all: Vec<u64> = (1..=MANAGERS).collect();
    c.on_client(liveness::check(all.clone(), Duration::from_secs(30)))
        .await;
    elections.check();

    let events = history.events();
    let bad = linearizability::violations(&events);
    assert!(
        bad.is_empty(),
        "linearizability violated for {} key(s): {bad:#?}",
        bad.len()
    );

    // Every manager converges on one state, and it holds every acknowledged write.
    let expected = acked_writes::expected(&events);
    let states = c
        .on_client(async move {
            wait_for("managers to converge after heal", Duration::from_secs(30), || {
                let all = all.clone();
                async move {
                    let mut states = Vec::new();
                    for id in all {
                        states.push(services_of(id).await?);
                    }
                    states.windows(2).all(|w| w[0] == w[1]).then_some(states)
                }
            })
            .await
        })
        .await;
    let lost = acked_writes::missing(&expected, &states[0]);
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    let known = events.iter().filter(|e| e.ret != Ret::Unknown).count();
    eprintln!(
        "{}: {} ops ({known} with known outcome), {} faults {:?}, {} elections, {} services at the end",
        profile.name(),
        events.len(),
        faults.len(),
        faults,
        elections.elections(),
        states[0].len()
    );
}

#[madsim::test]
async fn chaos_lan() {
    run(Profile::Lan, "chaos::chaos_lan").await;
}

#[madsim::test]
async fn chaos_edge_wan() {
    run(Profile::EdgeWan, "chaos::chaos_edge_wan").await;
}

#[madsim::test]
async fn chaos_flaky() {
    run(Profile::Flaky, "chaos::chaos_flaky").await;
}

/// Machine faults beside the network ones, with BUGGIFY on: a paused manager resuming with a
/// stale view, a clock jumping hours either way and drifting, a slow disk, and a disk whose
/// fsync fails once or always or that is full (the manager must stop, not carry on).
#[madsim::test]
async fn chaos_machine_faults() {
    run_mixed(Profile::Lan, "chaos::chaos_machine_faults").await;
}

/// Elections under rapid restarts: five managers; the leader is killed and, while the others
/// elect a new one, random managers are killed and restarted every 50–300 ms, so votes must
/// survive restarts for election safety to hold. Then the storm stops and the cluster must
/// become live again.
pub async fn election_storm(scenario: &str) {
    Profile::Lan.apply();
    let elections = ElectionSafety::install();
    let c = Cluster::start_with(5, scenario, Profile::Lan.timing_flags()).await;
    let all: Vec<u64> = (1..=5).collect();
    for _ in 0..6 {
        let leader = c
            .on_client(agreed_leader(all.clone(), Duration::from_secs(30)))
            .await;
        c.kill(leader);
        let mut down = vec![leader];
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(rand_range(50, 300))).await;
            let victim = rand_range(1, 6);
            if down.contains(&victim) {
                continue;
            }
            // Keep a majority alive between restarts so elections can finish.
            c.restart(victim);
        }
        tokio::time::sleep(Duration::from_millis(rand_range(100, 600))).await;
        for d in down.drain(..) {
            c.restart(d);
        }
    }
    c.on_client(liveness::check(all, Duration::from_secs(30))).await;
    elections.check();
    eprintln!(
        "election storm: {} elections, leaders by term {:?}",
        elections.elections(),
        elections.leaders()
    );
}

#[madsim::test]
async fn election_storm_keeps_one_leader_per_term() {
    election_storm("chaos::election_storm_keeps_one_leader_per_term").await;
}
