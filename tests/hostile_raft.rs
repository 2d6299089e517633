#![cfg(not(madsim))]
//! A hostile or broken peer against real manager processes, through the plain gRPC clients
//! generated from proto/: joins that cannot complete, Raft messages from non-members and
//! absurd terms. Each must be refused with nothing changed, and the cluster must keep working.

mod common;

use common::*;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::{LogId, Vote};
use std::time::{Duration, Instant};
use tonic::Code;
use warren::client::Client;
use warren::proto::internal::raft_service_client::RaftServiceClient;
use warren::proto::v1 as pb;
use warren::raft::network::encode;
use warren::raft::TypeConfig;

fn join_request(token: &str, id: u64, api: &str, raft: &str) -> pb::JoinClusterRequest {
    pb::JoinClusterRequest {
        token: token.into(),
        node_id: id,
        api_addr: api.into(),
        raft_addr: raft.into(),
    }
}

async fn join(
    c: &Client,
    req: pb::JoinClusterRequest,
) -> Result<pb::JoinClusterResponse, warren::client::ClientError> {
    c.call(|mut s| {
        let req = req.clone();
        async move { s.cluster.join_cluster(req).await }
    })
    .await
}

fn create_ok(api: &str, name: &str) {
    let out = warren(api, &["service", "create", "-d", name, "--image", "busybox"]);
    assert!(out.status.success(), "create {name}: {}", stderr(&out));
}

/// A join whose Raft address never answers is refused after the catch-up deadline and leaves
/// the single manager a one-voter cluster that still takes writes; so does a join reusing
/// the manager's own address, and a re-join under the id of a voter.
#[tokio::test(flavor = "multi_thread")]
async fn a_join_that_cannot_complete_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let m = ManagerProc::start(&tmp.path().join("m1"));
    let token = manager_token(&m.api, &[]);
    // Each joiner holds the certificate of the id it joins as (JoinCluster needs it).
    let as_manager = |id: u64| {
        let (api, dir) = (m.api.clone(), tmp.path().join(format!("tls-{id}")));
        async move {
            let cred = enrolled(&api, warren::core::Role::Manager, &id.to_string(), &dir).await;
            Client::new(&[api], warren::security::Transport::new(&cred).unwrap()).unwrap()
        }
    };
    let c = as_manager(7).await;
    let dead_raft = format!("127.0.0.1:{}", free_port()); // nothing listens there
    let dead_api = format!("127.0.0.1:{}", free_port());

    let started = Instant::now();
    let e = join(&c, join_request(&token, 7, &dead_api, &dead_raft))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert!(
        e.to_string().contains("did not catch up") && e.to_string().contains(&dead_raft),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    let i = info(&m.api).unwrap();
    assert_eq!(voters(&i), vec![1]);
    assert_eq!(
        i["managers"].as_array().unwrap().len(),
        1,
        "the learner stayed: {i}"
    );
    create_ok(&m.api, "after-bad-join");
    let out = warren(&m.api, &["cluster", "join-token", "manager", "-q"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Reusing manager 1's Raft address under a new id, and re-joining as voter 1 (with
    // manager 1's own credential; with another manager's it is not even asked).
    let c8 = as_manager(8).await;
    let e = join(&c8, join_request(&token, 8, &dead_api, &m.raft))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e}");
    let e = join(&c, join_request(&token, 1, &dead_api, &dead_raft))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    let own = warren::security::store::Credential::load(&m.data_dir.join("tls"), "node").unwrap();
    let c1 = Client::new(
        std::slice::from_ref(&m.api),
        warren::security::Transport::new(&own).unwrap(),
    )
    .unwrap();
    let e = join(&c1, join_request(&token, 1, &dead_api, &dead_raft))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e}");
    assert!(e.to_string().contains("manager remove"), "{e}");
    assert_eq!(voters(&info(&m.api).unwrap()), vec![1]);
    create_ok(&m.api, "still-writable");
}

async fn raft_client(
    addr: &str,
    cred: &warren::security::store::Credential,
) -> RaftServiceClient<tonic::transport::Channel> {
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
    let t = warren::security::Transport::new(cred).unwrap();
    RaftServiceClient::new(t.connect(&ep).await.unwrap())
}

/// AppendEntries and Vote from node 99 (a manager certificate, not a member), messages
/// naming another manager as their sender, a term of 2^64-1, an operator certificate and a
/// plaintext client: refused before anything is persisted; the leader keeps its term and
/// stays writable, across a restart too.
#[tokio::test(flavor = "multi_thread")]
async fn raft_messages_from_outside_or_with_absurd_terms_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut m = ManagerProc::start(&tmp.path().join("m1"));
    create_ok(&m.api, "before");
    let term = info(&m.api).unwrap()["term"].as_u64().unwrap();
    let outsider = enrolled(
        &m.api,
        warren::core::Role::Manager,
        "99",
        &tmp.path().join("tls-99"),
    )
    .await;
    let mut raft = raft_client(&m.raft, &outsider).await;
    // No TLS at all: the connection fails, no answer comes back.
    if let Ok(mut plain) = RaftServiceClient::connect(format!("http://{}", m.raft)).await {
        let req = VoteRequest::<u64> {
            vote: Vote::new(term + 1, 99),
            last_log_id: None,
        };
        let e = plain.vote(encode(&req)).await.unwrap_err();
        assert!(
            !matches!(e.code(), Code::PermissionDenied | Code::InvalidArgument),
            "a plaintext request got an answer: {e:?}"
        );
    }
    // An operator's credential is not a manager's.
    let admin = warren::security::store::Credential::load(&m.data_dir.join("admin"), "admin").unwrap();
    let e = raft_client(&m.raft, &admin)
        .await
        .vote(encode(&VoteRequest::<u64> {
            vote: Vote::new(term + 1, 1),
            last_log_id: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    let append = |vote: Vote<u64>| AppendEntriesRequest::<TypeConfig> {
        vote,
        prev_log_id: None::<LogId<u64>>,
        entries: vec![],
        leader_commit: None,
    };
    for (what, vote) in [
        ("non-member, huge term", Vote::new_committed(u64::MAX, 99)),
        ("non-member, next term", Vote::new_committed(term + 1, 99)),
        ("member id, huge term", Vote::new_committed(u64::MAX, 1)),
    ] {
        let e = raft.append_entries(encode(&append(vote))).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{what}: {e:?}");
    }
    for (what, vote) in [
        ("vote from non-member", Vote::new(term + 1, 99)),
        ("vote with huge term", Vote::new(u64::MAX - 1, 1)),
    ] {
        let req = VoteRequest::<u64> {
            vote,
            last_log_id: None,
        };
        let e = raft.vote(encode(&req)).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{what}: {e:?}");
    }
    // Leadership handoff requests (`Campaign`): only the leader this manager follows may ask
    // it to stand, only as itself, and only managers may call at all.
    let campaign = |from: u64, term: u64| encode(&warren::manager::handoff::CampaignRequest { from, term });
    let e = raft_client(&m.raft, &admin)
        .await
        .campaign(campaign(1, term))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "an operator asked: {e:?}");
    let e = raft.campaign(campaign(1, term)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "manager 99 posing as 1: {e:?}");
    assert!(e.message().contains("manager 99's certificate"), "{e:?}");
    for (what, t) in [
        ("current term", term),
        ("stale term", term - 1),
        ("future term", term + 5),
    ] {
        let answer = raft.campaign(campaign(99, t)).await.unwrap().into_inner();
        let answer: warren::manager::handoff::CampaignAnswer =
            warren::raft::network::decode(&answer).unwrap();
        let why = answer.unwrap_err();
        assert!(
            why.contains("only the current leader hands over"),
            "{what}: {why}"
        );
    }
    // Another format (a manager of another Warren version) is named as such; the right
    // format byte with garbage behind it is undecodable.
    let e = raft
        .campaign(warren::proto::internal::RaftPayload { data: vec![0xff; 3] })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("format 0xff"), "{e:?}");
    let mut garbage = encode(&0u8);
    garbage.data.truncate(1);
    garbage.data.extend([0xff; 3]);
    let e = raft.campaign(garbage).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // A trailing byte after a valid message is refused too.
    let mut p = encode(&append(Vote::new_committed(term, 1)));
    p.data.push(0);
    let e = raft.append_entries(p.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // The same on the AppendEntries stream: an operator cannot open one, and the first
    // refused message ends it, so the message behind it is never taken.
    let e = raft_client(&m.raft, &admin)
        .await
        .append_stream(futures::stream::iter(vec![encode(&append(Vote::new_committed(
            term, 1,
        )))]))
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::PermissionDenied,
        "an operator opened a stream: {e:?}"
    );
    for (what, first, code) in [
        (
            "non-member, huge term",
            encode(&append(Vote::new_committed(u64::MAX, 99))),
            Code::PermissionDenied,
        ),
        (
            "member id, huge term",
            encode(&append(Vote::new_committed(u64::MAX, 1))),
            Code::PermissionDenied,
        ),
        (
            "another format",
            warren::proto::internal::RaftPayload { data: vec![0xff; 3] },
            Code::FailedPrecondition,
        ),
        ("trailing byte", p, Code::InvalidArgument),
    ] {
        let behind = encode(&append(Vote::new_committed(term + 1, 99)));
        let mut answers = raft
            .append_stream(futures::stream::iter(vec![first, behind]))
            .await
            .unwrap()
            .into_inner();
        let e = answers.message().await.unwrap_err();
        assert_eq!(e.code(), code, "{what}: {e:?}");
        assert!(
            !matches!(answers.message().await, Ok(Some(_))),
            "{what}: the stream went on after a refusal"
        );
    }

    let i = info(&m.api).unwrap();
    assert_eq!(i["term"].as_u64().unwrap(), term, "the term moved: {i}");
    assert_eq!(i["leader_id"], 1);
    create_ok(&m.api, "after");

    m.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(m.wait_exit(Duration::from_secs(20)).is_some());
    let m2 = m.restart();
    wait_until("the restarted manager to lead", Duration::from_secs(20), || {
        info(&m2.api).filter(|i| i["leader_id"] == 1).map(|_| ())
    });
    create_ok(&m2.api, "after-restart");
    assert_eq!(services(&m2.api).len(), 3);
}

/// A manager's certificate revoked while its AppendEntries stream is open: the stream was
/// admitted when it opened, and the next message on it is refused as revoked (checked per
/// message, not once per stream); the stream then ends and the cluster keeps taking writes.
#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_revoked_while_its_stream_is_open_is_refused_at_its_next_message() {
    let c = Cluster::form(3);
    let leader = wait_cluster(&c.apis_except(&[]), &[1, 2, 3], FORM);
    let (follower, removed) = match leader {
        1 => (2, 3),
        2 => (1, 3),
        _ => (1, 2),
    };
    let cred = warren::security::store::Credential::load(
        &c.procs[removed as usize - 1].data_dir.join("tls"),
        "node",
    )
    .unwrap();
    let target = c.procs[follower as usize - 1].raft.clone();
    // A heartbeat from `removed` under a term below the follower's: admitted and answered
    // (with the follower's higher vote), changing nothing.
    let heartbeat = || {
        encode(&AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(0, removed),
            prev_log_id: None::<LogId<u64>>,
            entries: vec![],
            leader_commit: None,
        })
    };
    let (tx, rx) = futures::channel::mpsc::unbounded();
    tx.unbounded_send(heartbeat()).unwrap();
    let mut answers = raft_client(&target, &cred)
        .await
        .append_stream(rx)
        .await
        .unwrap()
        .into_inner();
    assert!(
        matches!(answers.message().await, Ok(Some(_))),
        "manager {removed}'s first message was not answered"
    );

    let out = warren(c.api(leader), &["manager", "remove", &removed.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The follower has applied the revocation once a new call with the certificate is
    // refused as revoked (before that, it may be refused as a non-member).
    let deadline = Instant::now() + FORM;
    loop {
        let e = raft_client(&target, &cred)
            .await
            .append_entries(heartbeat())
            .await
            .err();
        if let Some(e) = e.filter(|e| e.message().contains("revoked")) {
            assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "manager {follower} never refused manager {removed}'s certificate as revoked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    tx.unbounded_send(heartbeat()).unwrap();
    let e = answers.message().await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("revoked"), "{e:?}");
    // The server may already have dropped its end (then this send fails): either way,
    // nothing more is answered.
    let _ = tx.unbounded_send(heartbeat());
    assert!(
        !matches!(answers.message().await, Ok(Some(_))),
        "the stream went on after the revocation"
    );
    let live = c.apis_except(&[removed]);
    let mut want = vec![leader, follower];
    want.sort();
    let leader = wait_cluster(&live, &want, FORM);
    create_ok(c.api(leader), "after-revocation");
}
