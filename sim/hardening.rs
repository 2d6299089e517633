//! Hostile and broken inputs with faults around them: a join that cannot complete while the
//! leader dies, Raft messages from outside the membership during a failover, and a flipped
//! byte on a manager's disk. Each asserts what the fix guarantees, on every seed.

use crate::cluster::*;
use crate::scenarios::{create_all, service_names};
use std::collections::BTreeSet;
use std::time::Duration;
use warren::proto::internal::raft_service_client::RaftServiceClient;
use warren::proto::v1 as pb;
use warren::raft::network::encode;

/// A join for manager 7 whose Raft address answers nothing, sent through a random manager,
/// with the leader killed at a random moment (before, during or after the catch-up wait).
/// Manager 7 must never become a voter: then the two survivors are a quorum of three and
/// keep taking writes, which a phantom fourth voter would make impossible.
#[madsim::test]
async fn a_join_that_cannot_complete_never_makes_a_voter() {
    let c = Cluster::start(3, "hardening::a_join_that_cannot_complete_never_makes_a_voter").await;
    let leader = c
        .on_client(agreed_leader(vec![1, 2, 3], Duration::from_secs(10)))
        .await;
    let token = c.on_client(manager_token(leader, false)).await.unwrap();
    let via = 1 + madsim::rand::random::<u64>() % 3;
    let join = c.client_node.spawn(async move {
        let req = pb::JoinClusterRequest {
            token,
            node_id: 7,
            api_addr: api_addr(7),
            raft_addr: raft_addr(7), // no simulated host has this address
        };
        client_of(via)
            .call(|mut s| {
                let req = req.clone();
                async move { s.cluster.join_cluster(req).await }
            })
            .await
    });
    let delay_ms = madsim::rand::random::<u64>() % 8_000;
    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    c.kill(leader);
    let answer = join.await.unwrap();
    assert!(
        answer.is_err(),
        "a join that cannot catch up was accepted: {answer:?}"
    );
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != leader).collect();
    c.on_client(agreed_leader(survivors.clone(), Duration::from_secs(20)))
        .await;
    c.on_client(wait_voters(
        survivors.clone(),
        vec![1, 2, 3],
        Duration::from_secs(10),
    ))
    .await;
    let acked = c
        .on_client(create_all(survivors.clone(), vec!["after-kill".into()]))
        .await;
    assert_eq!(acked.len(), 1, "two of three voters must take writes");
    eprintln!(
        "join via {via}, leader {leader} killed after {delay_ms} ms: {}",
        answer.unwrap_err()
    );
}

/// During a leader kill, a stranger (node 99) sends AppendEntries with term 2^64-1 and vote
/// requests to every manager. Nothing of it is persisted: terms stay small, a new leader is
/// elected, writes go on, and the killed manager restarts and rejoins.
#[madsim::test]
async fn raft_messages_from_a_stranger_are_refused_during_failover() {
    let c = Cluster::start(
        3,
        "hardening::raft_messages_from_a_stranger_are_refused_during_failover",
    )
    .await;
    let leader = c
        .on_client(agreed_leader(vec![1, 2, 3], Duration::from_secs(10)))
        .await;
    let attack = c.client_node.spawn(async {
        for round in 0..20u64 {
            for id in [1u64, 2, 3] {
                let Ok(ep) = tonic::transport::Endpoint::from_shared(format!("http://{}", raft_addr(id)))
                else {
                    continue;
                };
                let Ok(ep) = ep.connect().await else { continue };
                let mut raft = RaftServiceClient::new(ep);
                let append = openraft::raft::AppendEntriesRequest::<warren::raft::TypeConfig> {
                    vote: openraft::Vote::new_committed(u64::MAX - round, 99),
                    prev_log_id: None,
                    entries: vec![],
                    leader_commit: None,
                };
                let r = raft.append_entries(encode(&append)).await;
                assert!(r.is_err(), "manager {id} took AppendEntries from node 99");
                let vote = openraft::raft::VoteRequest::<u64> {
                    vote: openraft::Vote::new(5 + round, 99),
                    last_log_id: None,
                };
                let r = raft.vote(encode(&vote)).await;
                assert!(r.is_err(), "manager {id} took a vote request from node 99");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(madsim::rand::random::<u64>() % 500)).await;
    c.kill(leader);
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != leader).collect();
    c.on_client(agreed_leader(survivors.clone(), Duration::from_secs(20)))
        .await;
    attack.await.unwrap();
    let acked = c.on_client(create_all(survivors.clone(), vec!["x".into()])).await;
    assert_eq!(acked.len(), 1);
    c.restart(leader);
    c.on_client(agreed_leader(vec![1, 2, 3], Duration::from_secs(20)))
        .await;
    for id in [1u64, 2, 3] {
        let info = c.on_client(cluster_info(id)).await.unwrap();
        assert!(info.term < 1_000, "manager {id} is at term {}", info.term);
    }
}

/// A manager's disk flips a byte of a stored service name while it is down (the leader, at
/// a random moment of a write stream). Its restart is refused with the data dir named; the
/// survivors elect, keep every acknowledged write and take new ones.
#[madsim::test]
async fn a_flipped_byte_on_disk_is_refused_at_restart() {
    let c = Cluster::start(3, "hardening::a_flipped_byte_on_disk_is_refused_at_restart").await;
    let leader = c
        .on_client(agreed_leader(vec![1, 2, 3], Duration::from_secs(10)))
        .await;
    let names: Vec<String> = (0..10).map(|i| format!("svc-{i:02}")).collect();
    let writing = c.client_node.spawn(create_all(vec![1, 2, 3], names));
    tokio::time::sleep(Duration::from_millis(madsim::rand::random::<u64>() % 300)).await;
    c.kill(leader);
    let mut acked = writing.await.unwrap();
    let db = std::path::PathBuf::from(format!("/sim/manager-{leader}/warren.redb"));
    let flipped = warren::raft::disk::sim::corrupt(&db, b"svc-0", b"svc-9");
    c.may_fail.lock().unwrap().insert(leader);
    c.restart(leader);
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != leader).collect();
    // Either the restart is refused, naming the damage, or (when the flipped bytes sat only
    // in pages the database no longer used) the manager comes back serving no damaged name.
    let failures = c.failures.clone();
    let outcome = c
        .on_client(wait_for(
            "the damaged manager to refuse or rejoin",
            Duration::from_secs(30),
            move || {
                let failed = failures.lock().unwrap().get(&leader).cloned();
                async move {
                    if let Some(f) = failed {
                        return Some(Err(f));
                    }
                    let info = cluster_info(leader).await?;
                    let names = service_names(leader).await?;
                    (info.leader_id != 0 && info.last_applied > 0).then_some(Ok(names))
                }
            },
        ))
        .await;
    let refused = match outcome {
        Err(refused) => {
            assert!(flipped > 0, "refused without damage: {refused}");
            assert!(
                refused.contains("corrupt") && refused.contains(&format!("/sim/manager-{leader}")),
                "{refused}"
            );
            c.on_client(agreed_leader(survivors.clone(), Duration::from_secs(20)))
                .await;
            refused
        }
        Ok(names) => {
            assert!(
                !names.iter().any(|n| n.starts_with("svc-9")),
                "a damaged name is served: {names:?}"
            );
            "none (no page in use was hit)".to_string()
        }
    };
    acked.extend(
        c.on_client(create_all(survivors.clone(), vec!["after".into()]))
            .await,
    );
    let must: BTreeSet<String> = acked.into_iter().collect();
    for id in survivors.clone() {
        // A plain read may lag the last acknowledged write by a moment: poll, bounded.
        let must = must.clone();
        c.on_client(wait_for(
            "every acknowledged write on the survivor",
            Duration::from_secs(10),
            move || {
                let must = must.clone();
                async move { service_names(id).await.filter(|n| must.is_subset(n)).map(|_| ()) }
            },
        ))
        .await;
    }
    eprintln!("{flipped} copies changed; restart refused: {refused}");
}
