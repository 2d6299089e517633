//! Scenarios. Each asserts a property that a bug in the manager could break.

use crate::cluster::*;
use std::collections::BTreeSet;
use std::time::Duration;
use warren::proto::v1 as pb;

fn spec(name: &str) -> pb::ServiceSpec {
    pb::ServiceSpec {
        name: name.into(),
        image: "busybox:latest".into(),
        replicas: 1,
        ..Default::default()
    }
}

/// Creates `names` through a client that knows all `ids`; returns the names acknowledged.
async fn create_all(ids: Vec<u64>, names: Vec<String>) -> Vec<String> {
    let client = client_of_all(ids);
    let mut acked = Vec::new();
    for name in names {
        let call = client.call(|mut s| {
            let spec = spec(&name);
            async move {
                s.services
                    .create_service(pb::CreateServiceRequest { spec: Some(spec) })
                    .await
            }
        });
        // Unacknowledged (failed or timed out) creates may or may not have committed: they
        // are neither required nor forbidden afterwards.
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(8), call).await {
            acked.push(name);
        }
    }
    acked
}

/// Three managers; services created before, during and after the leader is killed; the old
/// leader restarts. Every acknowledged create must be on all three managers, and the three
/// must hold identical service lists.
#[madsim::test]
async fn leader_kill_keeps_acknowledged_creates() {
    let c = Cluster::start(3, "scenarios::leader_kill_keeps_acknowledged_creates");
    let all = vec![1, 2, 3];
    let leader = c
        .on_client(agreed_leader(all.clone(), Duration::from_secs(10)))
        .await;

    let before: Vec<String> = (0..10).map(|i| format!("before-{i}")).collect();
    let mut acked = c.on_client(create_all(all.clone(), before)).await;
    assert_eq!(
        acked.len(),
        10,
        "with a healthy cluster every create is acknowledged"
    );

    // Creates race the kill: some land before it, some during the election.
    let during: Vec<String> = (0..10).map(|i| format!("during-{i}")).collect();
    let racing = c.client_node.spawn(create_all(all.clone(), during));
    let delay_ms = madsim::rand::random::<u64>() % 200;
    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    c.kill(leader);
    acked.extend(racing.await.unwrap());

    let survivors: Vec<u64> = all.iter().copied().filter(|&i| i != leader).collect();
    let new_leader = c
        .on_client(agreed_leader(survivors.clone(), Duration::from_secs(10)))
        .await;
    assert_ne!(new_leader, leader, "a killed manager cannot still be leader");

    let after: Vec<String> = (0..5).map(|i| format!("after-{i}")).collect();
    let acked_after = c.on_client(create_all(survivors.clone(), after)).await;
    assert_eq!(
        acked_after.len(),
        5,
        "survivors with quorum acknowledge every create"
    );
    acked.extend(acked_after);

    c.restart(leader);
    let expected: BTreeSet<String> = acked.into_iter().collect();
    let expected_len = expected.len();
    let lists = c
        .on_client(async move {
            wait_for(
                "all managers to hold every acknowledged service",
                Duration::from_secs(20),
                || {
                    let expected = expected.clone();
                    async move {
                        let mut lists = Vec::new();
                        for id in [1, 2, 3] {
                            let names: BTreeSet<String> = list_services(id)
                                .await?
                                .into_iter()
                                .map(|s| s.spec.unwrap_or_default().name)
                                .collect();
                            if !expected.is_subset(&names) {
                                return None;
                            }
                            lists.push(names);
                        }
                        Some(lists)
                    }
                },
            )
            .await
        })
        .await;
    assert!(
        lists.windows(2).all(|w| w[0] == w[1]),
        "managers disagree after heal: {lists:?}"
    );
    let leader_again = c
        .on_client(agreed_leader(all.clone(), Duration::from_secs(10)))
        .await;
    assert!(all.contains(&leader_again));
    eprintln!(
        "killed leader {leader} after {delay_ms} ms, new leader {new_leader}, {} services on every manager, {} acknowledged",
        lists[0].len(),
        expected_len
    );
}

/// The data dir survives a restart of the whole cluster: all three managers killed at once
/// and restarted resume the same state without bootstrapping again.
#[madsim::test]
async fn whole_cluster_restart_resumes_state() {
    let c = Cluster::start(3, "scenarios::whole_cluster_restart_resumes_state");
    let all = vec![1, 2, 3];
    c.on_client(agreed_leader(all.clone(), Duration::from_secs(10)))
        .await;
    let names: Vec<String> = (0..8).map(|i| format!("svc-{i}")).collect();
    let acked = c.on_client(create_all(all.clone(), names)).await;
    assert_eq!(acked.len(), 8);
    let cluster_id = c
        .on_client(async { cluster_info(1).await.unwrap().cluster_id })
        .await;

    for id in &all {
        c.kill(*id);
    }
    for id in &all {
        c.restart(*id);
    }
    c.on_client(agreed_leader(all.clone(), Duration::from_secs(10)))
        .await;
    let expected: BTreeSet<String> = acked.into_iter().collect();
    c.on_client(async move {
        wait_for(
            "every manager to serve the pre-restart services",
            Duration::from_secs(10),
            || {
                let expected = expected.clone();
                async move {
                    for id in [1, 2, 3] {
                        let names: BTreeSet<String> = list_services(id)
                            .await?
                            .into_iter()
                            .map(|s| s.spec.unwrap_or_default().name)
                            .collect();
                        if names != expected {
                            return None;
                        }
                    }
                    Some(())
                }
            },
        )
        .await
    })
    .await;
    let id_after = c
        .on_client(async { cluster_info(2).await.unwrap().cluster_id })
        .await;
    assert_eq!(id_after, cluster_id, "a restart must not bootstrap a new cluster");
    assert!(!cluster_id.is_empty());
}
