//! Hostile and broken inputs with faults around them: a join that cannot complete while the
//! leader dies, Raft messages from outside the membership during a failover, a flipped byte
//! on a manager's disk, and a leader whose open writes a snapshot replaced. Each asserts what
//! the fix guarantees, on every seed.

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
    // In the database, and in the log's write-ahead file (which holds what the database
    // had not made durable yet).
    let flipped: usize = ["warren.redb", "warren.wal"]
        .iter()
        .map(|f| {
            let path = std::path::PathBuf::from(format!("/sim/manager-{leader}/{f}"));
            warren::raft::disk::sim::corrupt(&path, b"svc-0", b"svc-9")
        })
        .sum();
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

/// A leader cut off from the others with writes in flight, whose log a newer leader's
/// snapshot then replaces: openraft 0.9 never answers those writes (it answers only entries
/// it applies or truncates). When that manager leads again it must take writes. It once did
/// not: its two open proposals waited for ever and held every later write behind them (found
/// by `chaos_machine_faults`, seed 1796074645904076237).
#[madsim::test]
async fn a_leader_whose_open_writes_a_snapshot_replaced_writes_when_it_leads_again() {
    let flags = vec!["--snapshot-logs=10".to_string()];
    let c = Cluster::start_with(
        3,
        "hardening::a_leader_whose_open_writes_a_snapshot_replaced_writes_when_it_leads_again",
        flags,
    )
    .await;
    let all = [1, 2, 3];
    // Manager 1: the lowest id campaigns first (`manager::election`), which makes the later
    // "until manager 1 leads" loops short.
    let old = 1;
    lead_with(&c, old).await;
    let others: Vec<u64> = all.iter().copied().filter(|&i| i != old).collect();
    let before = c.on_client(cluster_info(old)).await.expect("manager 1 answers");
    let net = madsim::net::NetSim::current();
    for &o in &others {
        net.clog_link(c.node_id(old), c.node_id(o));
        net.clog_link(c.node_id(o), c.node_id(old));
    }
    // Writes to the cut-off leader (the client still reaches it): appended there, never
    // committed; their callers give up.
    let mut lost = Vec::new();
    for i in 0..4 {
        lost.push(c.client_node.spawn(async move {
            create_service(&client_of(old), &format!("lost-{i}"), 1, Duration::from_secs(3)).await
        }));
    }
    let appended = c
        .on_client(wait_for(
            "the cut-off leader to append the writes",
            Duration::from_secs(5),
            move || async move {
                let info = cluster_info(old).await?;
                (info.last_log_index? > before.commit_index && info.commit_index < info.last_log_index?)
                    .then_some(info.last_log_index?)
            },
        ))
        .await;
    // The others elect a leader and write until it has purged its log past those entries:
    // manager 1 can then only catch up through a snapshot.
    let new = c
        .on_client(agreed_leader(others.clone(), Duration::from_secs(20)))
        .await;
    let mut round = 0;
    while c.on_client(cluster_info(new)).await.map_or(0, |i| i.purged_index) <= appended {
        round += 1;
        assert!(round <= 20, "the new leader never purged past index {appended}");
        let names = (0..10).map(|i| format!("svc-{round:02}-{i}")).collect();
        c.on_client(create_all(others.clone(), names)).await;
    }
    for l in lost {
        let _ = l.await;
    }
    for &o in &others {
        net.unclog_link(c.node_id(old), c.node_id(o));
        net.unclog_link(c.node_id(o), c.node_id(old));
    }
    c.on_client(wait_for(
        "manager 1 to install a snapshot past its lost entries",
        Duration::from_secs(20),
        move || async move {
            let info = cluster_info(old).await?;
            (info.snapshot_index > appended).then_some(())
        },
    ))
    .await;
    lead_with(&c, old).await;
    let wrote = c
        .on_client(async move { create_service(&client_of(old), "after", 1, Duration::from_secs(10)).await })
        .await;
    assert!(
        matches!(wrote, Some(Ok(_))),
        "manager 1 leads again but took no write: {wrote:?}"
    );
}

/// Kills whichever manager leads until `want` does, restarting each once the others have
/// elected (a leader restarted at once would campaign with the others' election timers still
/// running, and may win again); bounded.
async fn lead_with(c: &Cluster, want: u64) {
    for _ in 0..10 {
        let leader = c
            .on_client(agreed_leader(vec![1, 2, 3], Duration::from_secs(20)))
            .await;
        if leader == want {
            return;
        }
        c.kill(leader);
        let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != leader).collect();
        c.on_client(agreed_leader(rest, Duration::from_secs(20))).await;
        c.restart(leader);
    }
    panic!("manager {want} never became the leader");
}

fn ok<T>(r: Result<T, warren::client::ClientError>) -> Result<(), warren::client::ClientError> {
    r.map(|_| ())
}

/// Every call a hostile host would make, through `transport`, against every manager; returns
/// (calls answered with data or success, calls refused as unauthenticated or forbidden).
async fn attack(transport: warren::security::Transport, rounds: u64) -> (u64, u64) {
    use tonic::Code;
    let (mut answered, mut refused) = (0, 0);
    let mut tally = |r: Result<(), warren::client::ClientError>| match r {
        Ok(()) => answered += 1,
        Err(e) if matches!(e.code(), Code::PermissionDenied | Code::Unauthenticated) => refused += 1,
        Err(_) => {}
    };
    for round in 0..rounds {
        for id in [1u64, 2, 3] {
            let c = warren::client::Client::new(&[api_addr(id)], transport.clone()).unwrap();
            tally(ok(c.list_services(false).await));
            tally(ok(c.list_nodes().await));
            tally(ok(create_service(
                &c,
                &format!("rogue-{round}-{id}"),
                1,
                Duration::from_secs(2),
            )
            .await
            .unwrap_or(Err(warren::client::ClientError::NoManagers))));
            tally(ok(c.join_token(pb::Role::Manager, 60, false).await));
            tally(ok(c
                .call(|mut s| async move {
                    s.nodes
                        .heartbeat(pb::HeartbeatRequest {
                            node_id: "worker-1".into(),
                            changes: vec![],
                            ..Default::default()
                        })
                        .await
                })
                .await));
            tally(ok(c
                .call(|mut s| async move {
                    s.tasks
                        .watch_assignments(pb::WatchAssignmentsRequest {
                            node_id: "worker-1".into(),
                            resume_after_seq: 0,
                            ..Default::default()
                        })
                        .await
                })
                .await));
            tally(ok(c
                .call(|mut s| async move {
                    s.services
                        .delete_service(pb::DeleteServiceRequest {
                            service: "web".into(),
                        })
                        .await
                })
                .await));
            // And the Raft port, as a would-be manager.
            if let Ok(ep) = tonic::transport::Endpoint::from_shared(format!("http://{}", raft_addr(id))) {
                if let Ok(ch) = transport.connect(&ep).await {
                    let vote = openraft::raft::VoteRequest::<u64> {
                        vote: openraft::Vote::new(5 + round, 99),
                        last_log_id: None,
                    };
                    let r = RaftServiceClient::new(ch).vote(encode(&vote)).await;
                    tally(r.map(|_| ()).map_err(warren::client::ClientError::Status));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (answered, refused)
}

/// Two hostile hosts during a leader kill: one with no credential, one holding the
/// credential of a worker that was removed (so revoked). Every call of theirs is refused,
/// none changes the state or reads anything, and the cluster carries on.
#[madsim::test]
async fn rogue_hosts_change_nothing_and_read_nothing() {
    let mut c = Cluster::start(3, "hardening::rogue_hosts_change_nothing_and_read_nothing").await;
    c.start_workers(2, &[]).await;
    c.on_client(async {
        create_service(&client_of_all([1, 2, 3]), "web", 2, Duration::from_secs(10))
            .await
            .unwrap()
            .unwrap()
    })
    .await;
    // Worker 2 goes away and is removed: its certificate is revoked.
    c.kill_worker(2);
    c.on_client(async {
        client_of_all([1, 2, 3])
            .call_write(|mut s| {
                let req = s.req(pb::RemoveNodeRequest {
                    id: "worker-2".into(),
                    force: true,
                });
                async move { s.nodes.remove_node(req).await }
            })
            .await
            .unwrap()
    })
    .await;
    let services_before = c.on_client(service_names(1)).await.unwrap();
    let stolen =
        warren::security::store::Credential::load(std::path::Path::new("/sim/worker-2/tls"), "node").unwrap();
    let handle = madsim::runtime::Handle::current();
    let mut rogues = Vec::new();
    for (k, cred) in [(1u8, None), (2u8, Some(stolen))] {
        let node = handle
            .create_node()
            .name(format!("rogue-{k}"))
            .ip(format!("10.0.3.{k}").parse().unwrap())
            .build();
        warren::security::sim_seam::bind_host(format!("10.0.3.{k}").parse().unwrap(), node.id());
        rogues.push(node.spawn(async move {
            let transport = match &cred {
                Some(c) => warren::security::Transport::new(c).unwrap(),
                None => warren::security::Transport::bootstrap(),
            };
            attack(transport, 10).await
        }));
    }
    let leader = c
        .on_client(agreed_leader(vec![1, 2, 3], Duration::from_secs(10)))
        .await;
    tokio::time::sleep(Duration::from_millis(madsim::rand::random::<u64>() % 1_000)).await;
    c.kill(leader);
    let mut refused_total = 0;
    for r in rogues {
        let (answered, refused) = r.await.unwrap();
        assert_eq!(answered, 0, "a rogue host got an answer");
        refused_total += refused;
    }
    assert!(
        refused_total > 0,
        "nothing was refused: authorization is not being checked"
    );
    c.restart(leader);
    c.on_client(agreed_leader(vec![1, 2, 3], Duration::from_secs(20)))
        .await;
    let after = c.on_client(service_names(1)).await.unwrap();
    assert_eq!(after, services_before, "a rogue host changed the services");
    let nodes = c.on_client(list_nodes(1)).await.unwrap();
    let ids: BTreeSet<String> = nodes.into_iter().map(|n| n.id).collect();
    assert_eq!(
        ids,
        BTreeSet::from(["worker-1".to_string()]),
        "a rogue host changed the nodes"
    );
}

/// The ids of the running tasks, through manager `id`.
async fn running_task_ids(id: u64) -> Option<BTreeSet<String>> {
    let tasks = list_tasks(id).await?;
    Some(
        tasks
            .into_iter()
            .filter(|t| t.state == pb::TaskState::Running as i32)
            .map(|t| t.id)
            .collect(),
    )
}

/// `cluster ca --rotate` with 3 managers and 2 workers running 4 tasks, the leader killed at
/// a random moment while the nodes renew: the rotation completes, every node then holds a
/// certificate of the new CA, the old operator credential is refused, and the same 4 tasks
/// run (none restarted or replaced).
#[madsim::test]
async fn a_ca_rotation_completes_through_a_leader_kill() {
    use warren::security::{pki, rotate, store::Credential, Transport};
    let mut c = Cluster::start(3, "hardening::a_ca_rotation_completes_through_a_leader_kill").await;
    c.start_workers(2, &[]).await;
    let before = c
        .on_client(async {
            create_service(&client_of_all([1, 2, 3]), "web", 4, Duration::from_secs(10))
                .await
                .unwrap()
                .unwrap();
            wait_for("4 tasks running", Duration::from_secs(30), || async {
                running_task_ids(1).await.filter(|t| t.len() == 4)
            })
            .await
        })
        .await;
    let admin_dir = std::path::Path::new("/sim/manager-1/admin");
    let old = Credential::load(admin_dir, "admin").unwrap();
    let leader = c
        .on_client(agreed_leader(vec![1, 2, 3], Duration::from_secs(10)))
        .await;
    let new_ca = c
        .on_client(async move {
            let (cred, status) = rotate::start(&client_of_all([1, 2, 3]), admin_dir).await.unwrap();
            assert!(status.rotating || status.pending.is_empty(), "{status:?}");
            cred.ca_der[0].clone()
        })
        .await;
    tokio::time::sleep(Duration::from_millis(madsim::rand::random::<u64>() % 1_000)).await;
    c.kill(leader);
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.restart(leader);
    c.on_client(async move {
        // Complete on every manager (plain reads: a restarted manager may lag behind the
        // one that answers first, and `rotate::finish` reads the CAs from whichever answers).
        wait_for("the rotation to complete", Duration::from_secs(60), || async {
            for m in [1, 2, 3] {
                let s = client_of(m).ca_status().await.ok()?;
                if s.rotating {
                    return None;
                }
            }
            Some(())
        })
        .await;
        let client = client_of_all([1, 2, 3]);
        let mut cred = Credential::load(admin_dir, "admin").unwrap();
        rotate::finish(&client, admin_dir, &mut cred).await.unwrap();
        assert_eq!(cred.ca_der, vec![new_ca.clone()], "only the new CA is trusted");
        // Every node holds a certificate of the new CA (renewed before it completed).
        for dir in [
            "/sim/manager-1/tls",
            "/sim/manager-2/tls",
            "/sim/manager-3/tls",
            "/sim/worker-1/tls",
            "/sim/worker-2/tls",
        ] {
            let node = Credential::load(std::path::Path::new(dir), "node").unwrap();
            assert!(
                pki::issued_by(&node.cert_der, &new_ca),
                "{dir} holds an old certificate"
            );
        }
        // The old operator credential is refused (revoked with the old CA) by every manager
        // once it has applied the completion: a manager that was just restarted may still be
        // catching up when another one reports the rotation complete.
        for m in [1, 2, 3] {
            let old = old.clone();
            wait_for(
                "every manager to refuse the old-CA operator credential",
                Duration::from_secs(10),
                move || {
                    let old = old.clone();
                    async move {
                        let stale =
                            warren::client::Client::new(&[api_addr(m)], Transport::new(&old).ok()?).ok()?;
                        let r = stale.list_services(false).await;
                        matches!(&r, Err(e) if e.code() == tonic::Code::PermissionDenied).then_some(())
                    }
                },
            )
            .await;
        }
        // Not a task restarted or replaced.
        let after = wait_for("4 tasks running", Duration::from_secs(20), || async {
            running_task_ids(1).await.filter(|t| t.len() == 4)
        })
        .await;
        assert_eq!(after, before, "tasks were replaced during the rotation");
    })
    .await;
}
