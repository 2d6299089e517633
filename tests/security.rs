#![cfg(not(madsim))]
//! Mutual TLS and authorization against real manager processes, with plain gRPC clients
//! holding whatever credential an attacker or a mistake would: none, another cluster's, an
//! expired one, a revoked worker's, a worker's on the admin API, a worker's for another node.
//! Each refusal must name what is needed and change nothing.

mod common;

use common::*;
use std::time::Duration;
use tonic::Code;
use warren::client::Client;
use warren::core::Role;
use warren::proto::v1 as pb;
use warren::security::store::Credential;
use warren::security::Transport;

fn admin_cred(m: &ManagerProc) -> Credential {
    Credential::load(&m.data_dir.join("admin"), "admin").unwrap()
}

fn client_with(api: &str, t: Transport) -> Client {
    Client::new(&[api], t).unwrap()
}

async fn list(c: &Client) -> Result<pb::ListServicesResponse, warren::client::ClientError> {
    c.call(|mut s| async move { s.services.list_services(pb::ListServicesRequest::default()).await })
        .await
}

async fn heartbeat(c: &Client, node: &str) -> Result<pb::HeartbeatResponse, warren::client::ClientError> {
    let node = node.to_string();
    c.call(|mut s| {
        let node = node.clone();
        async move {
            s.nodes
                .heartbeat(pb::HeartbeatRequest {
                    node_id: node,
                    changes: vec![],
                    ..Default::default()
                })
                .await
        }
    })
    .await
}

async fn register(c: &Client, node: &str) -> Result<pb::RegisterNodeResponse, warren::client::ClientError> {
    let req = pb::RegisterNodeRequest {
        node_id: node.into(),
        address: "10.0.0.1:1".into(),
        ..Default::default()
    };
    c.call(|mut s| {
        let req = req.clone();
        async move { s.nodes.register_node(req).await }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_wrong_credential_is_refused_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let m = ManagerProc::start(&tmp.path().join("m1"));
    ok_create(&m.api, "web");
    let ca = admin_cred(&m).ca_der;
    let cluster_id = admin_cred(&m).identity().unwrap().cluster_id;
    let before = services(&m.api);

    // No client certificate: only joining is open; the answer says what to pass.
    let anon = client_with(
        &m.api,
        Transport::trusting(&cluster_id, ca.clone(), None).unwrap(),
    );
    let e = list(&anon).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    assert!(e.to_string().contains("--tls-dir"), "{e}");
    let ca_answer = anon
        .call(|mut s| async move { s.cluster.get_ca_certificate(pb::GetCaCertificateRequest {}).await })
        .await
        .unwrap();
    assert_eq!(ca_answer.certs_der, ca, "the CA certificate is public");

    // Another cluster's credential (another CA): the handshake itself fails.
    let other = ManagerProc::start(&tmp.path().join("other"));
    let foreign = Transport::trusting(&cluster_id, ca.clone(), Some(&admin_cred(&other))).unwrap();
    let e = list(&client_with(&m.api, foreign)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    assert!(
        e.to_string().contains("refused this connection's certificate"),
        "{e}"
    );

    // An expired operator credential.
    let short = tmp.path().join("short");
    let out = warren(
        &m.api,
        &[
            "cluster",
            "admin-cert",
            "--out",
            short.to_str().unwrap(),
            "--name",
            "brief",
            "--ttl",
            "5s",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let brief = Credential::load(&short, "admin").unwrap();
    // A connection opened while it is valid, and kept open (5 s: a 1 s credential expired
    // before the first call on a busy CI machine).
    let open = client_with(&m.api, Transport::new(&brief).unwrap());
    assert!(list(&open).await.is_ok());
    // Until it has expired on the certificate's own clock: its validity is in whole seconds,
    // and TLS takes the last second as still valid.
    let not_after = brief.identity().unwrap().not_after;
    wait_until("the credential to expire", Duration::from_secs(10), || {
        (std::time::SystemTime::now() > not_after + Duration::from_millis(1_100)).then_some(())
    });
    // The CLI says so before it connects...
    let out = warren_cmd(&m.api)
        .args([
            "--manager",
            &m.api,
            "--tls-dir",
            short.to_str().unwrap(),
            "service",
            "ls",
        ])
        .output()
        .unwrap();
    assert!(stderr(&out).contains("expired at"), "{}", stderr(&out));
    // ...and a client that sends it anyway is refused by the manager's TLS.
    let e = list(&client_with(&m.api, Transport::new(&brief).unwrap()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "an expired certificate: {e}");
    assert!(
        e.to_string().contains("refused this connection's certificate"),
        "{e}"
    );
    // The manager logs why (written by its accept task, maybe after the client saw the alert).
    wait_until("the manager to log why", Duration::from_secs(5), || {
        m.log_text().contains("the certificate expired").then_some(())
    });
    // The connection opened before it expired does not outlive it: TLS checked it once,
    // every request checks it again.
    let e = list(&open).await.unwrap_err();
    assert_eq!(
        e.code(),
        Code::PermissionDenied,
        "an open connection past expiry: {e}"
    );
    assert!(e.to_string().contains("has expired"), "{e}");

    // A worker's certificate: its own node only, never the admin API.
    let w1 = worker_client(&m.api, "w1", &tmp.path().join("w1")).await;
    register(&w1, "w1").await.unwrap();
    let w2 = worker_client(&m.api, "w2", &tmp.path().join("w2")).await;
    register(&w2, "w2").await.unwrap();
    let e = list(&w1).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert!(e.to_string().contains("needs an admin certificate"), "{e}");
    let e = w1
        .call(|mut s| async move {
            s.services
                .delete_service(pb::DeleteServiceRequest {
                    service: "web".into(),
                })
                .await
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    let e = heartbeat(&w1, "w2").await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert!(e.to_string().contains("only for itself"), "{e}");
    let e = register(&w1, "w2").await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    heartbeat(&w1, "w1").await.unwrap();
    // A worker cannot mint itself an operator credential either.
    let e = w1
        .call(|mut s| async move {
            s.cluster
                .issue_admin_certificate(pb::IssueAdminCertificateRequest {
                    name: "evil".into(),
                    csr_der: warren::security::pki::Key::generate().unwrap().request().unwrap(),
                    ttl_seconds: 0,
                })
                .await
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    // Nor rotate the CA, and an operator has no certificate to confirm.
    let e = w1
        .rotate_ca(warren::security::pki::Key::generate().unwrap().request().unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    let admin = client_with(&m.api, Transport::new(&admin_cred(&m)).unwrap());
    let e = admin.confirm_certificate().await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    let status = admin.ca_status().await.unwrap();
    assert!(!status.rotating, "{status:?}");
    assert_eq!(
        status.ca_fingerprint,
        warren::security::pki::fingerprint_hex(&ca[0])
    );

    // A node id in use cannot be taken over with a new token.
    let token = stdout(&warren(&m.api, &["cluster", "join-token", "worker", "-q"]))
        .trim()
        .to_string();
    let e =
        warren::security::enroll::enroll(&tmp.path().join("thief"), &token, &[&m.api], Role::Worker, "w1")
            .await
            .unwrap_err();
    assert!(format!("{e:#}").contains("in use"), "{e:#}");
    // A manager token on the worker path, and a tampered CA fingerprint.
    let mtoken = manager_token(&m.api, &[]);
    let e = warren::security::enroll::enroll(&tmp.path().join("x"), &mtoken, &[&m.api], Role::Worker, "w9")
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("this is a manager token"), "{e:#}");
    // And the reverse: a worker token to join as a manager.
    let e = warren::security::enroll::enroll(&tmp.path().join("z"), &token, &[&m.api], Role::Manager, "9")
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("this is a worker token"), "{e:#}");
    let fp = warren::core::token::ca_fingerprint(&ca[0]);
    let flipped: String = fp
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i == 7 {
                if c == '0' {
                    '1'
                } else {
                    '0'
                }
            } else {
                c
            }
        })
        .collect();
    let tampered = token.replace(&fp, &flipped);
    let e = warren::security::enroll::enroll(&tmp.path().join("y"), &tampered, &[&m.api], Role::Worker, "w9")
        .await
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("does not match the join token"),
        "{e:#}"
    );
    // Sent anyway (a client that skips the check): the manager refuses it too.
    let e = anon
        .call(|mut s| {
            let token = tampered.clone();
            async move {
                s.cluster
                    .issue_certificate(pb::IssueCertificateRequest {
                        token,
                        node_id: "w9".into(),
                        csr_der: warren::security::pki::Key::generate().unwrap().request().unwrap(),
                    })
                    .await
            }
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert!(e.to_string().contains("another CA"), "{e}");

    // A removed worker's certificate is revoked: nothing more, not even a renewal.
    let out = warren(&m.api, &["node", "rm", "w2", "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let e = heartbeat(&w2, "w2").await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert!(e.to_string().contains("revoked"), "{e}");
    let e = w2
        .call(|mut s| async move {
            s.cluster
                .renew_certificate(pb::RenewCertificateRequest {
                    csr_der: warren::security::pki::Key::generate().unwrap().request().unwrap(),
                })
                .await
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");

    assert_eq!(services(&m.api), before, "a refused call changed the services");
    let nodes = json_of(&m.api, &["node", "ls"]);
    let ids: Vec<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["w1"], "{nodes}");
}

fn ok_create(api: &str, name: &str) {
    create_service(api, name, 0);
}

/// Waits until the managers at `api` list `n` ready workers.
fn wait_workers_ready(api: &str, n: usize, deadline: Duration) {
    wait_until(&format!("{n} workers ready"), deadline, || {
        let nodes = json_of(api, &["node", "ls"]);
        let ready = nodes
            .as_array()?
            .iter()
            .filter(|x| x["status"] == "ready")
            .count();
        (ready == n).then_some(())
    });
}

/// A plaintext gRPC client gets no answer from `addr`.
fn assert_no_plaintext(addr: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = rt.block_on(async {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect()
            .await;
        match ch {
            Err(e) => Err(e.to_string()),
            Ok(ch) => pb::cluster_service_client::ClusterServiceClient::new(ch)
                .get_ca_certificate(pb::GetCaCertificateRequest {})
                .await
                .map(|_| ())
                .map_err(|s| format!("{:?}: {}", s.code(), s.message())),
        }
    });
    assert!(r.is_err(), "{addr}: a plaintext client got an answer");
}

/// The TCP ports process `pid` listens on, as `ss` shows them.
fn listening(pid: u32) -> std::collections::BTreeSet<String> {
    let out = std::process::Command::new("ss")
        .args(["-ltnpH"])
        .output()
        .expect("ss (iproute2)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .collect()
}

/// Nothing answers in plaintext: not the API, not the Raft port.
#[test]
fn no_plaintext_socket_is_open() {
    let tmp = tempfile::tempdir().unwrap();
    let m = ManagerProc::start(&tmp.path().join("m1"));
    for addr in [&m.api, &m.raft] {
        assert_no_plaintext(addr);
    }
    // The CLI with the operator credential gets through.
    let out = warren(&m.api, &["cluster", "info"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn serial_of(tls_dir: &std::path::Path) -> Option<String> {
    Credential::load(tls_dir, "node")
        .ok()?
        .identity()
        .ok()
        .map(|w| w.serial_hex)
}

/// Three managers and two workers formed with tokens over mTLS, with no plaintext socket
/// (checked with `ss` and a plaintext client). Node certificates of 12 s (renewed at 6 s):
/// the managers and a worker renew theirs at least twice, beyond the lifetime of their first
/// certificate, while writes keep being acknowledged and the workers stay ready.
#[test]
fn certificates_renew_while_the_cluster_serves_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let api = format!("127.0.0.1:{}", free_port());
    let raft = format!("127.0.0.1:{}", free_port());
    let m1 = ManagerProc::start_with(&tmp.path().join("m1"), &api, &raft, &["--cert-ttl", "12s"]);
    let token = manager_token(&m1.api, &[]);
    let mut procs = vec![m1];
    for i in 2..=3u64 {
        let leaders = procs[0].api.clone();
        procs.push(ManagerProc::join(
            i,
            i as u8,
            &token,
            &leaders,
            &tmp.path().join(format!("m{i}")),
        ));
        let apis: Vec<&str> = procs.iter().map(|p| p.api.as_str()).collect();
        wait_cluster(&apis, &(1..=i).collect::<Vec<_>>(), FORM);
    }
    let wtoken = stdout(&warren(&procs[0].api, &["cluster", "join-token", "worker", "-q"]))
        .trim()
        .to_string();
    let all = procs.iter().map(|p| p.api.clone()).collect::<Vec<_>>().join(",");
    let w1 = WorkerProc::spawn(
        &all,
        Some(&wtoken),
        "w1",
        &tmp.path().join("w1"),
        &["--runtime", "sim"],
    );
    let w2 = WorkerProc::spawn(
        &all,
        Some(&wtoken),
        "w2",
        &tmp.path().join("w2"),
        &["--runtime", "sim"],
    );
    wait_workers_ready(&all, 2, Duration::from_secs(60));
    // No plaintext socket anywhere: each manager listens on its two ports only, both TLS;
    // workers listen on nothing (they dial out).
    for p in &procs {
        let ports = listening(p.child.id());
        let want: std::collections::BTreeSet<String> = [p.api.clone(), p.raft.clone()].into();
        assert_eq!(
            ports, want,
            "manager {} listens on more than its two ports",
            p.api
        );
        for addr in &ports {
            assert_no_plaintext(addr);
        }
    }
    for w in [&w1, &w2] {
        assert!(listening(w.child.id()).is_empty(), "a worker listens");
    }
    let dirs: Vec<std::path::PathBuf> = procs
        .iter()
        .map(|p| p.data_dir.join("tls"))
        .chain([
            tmp.path().join("w1").join("tls"),
            tmp.path().join("w2").join("tls"),
        ])
        .collect();
    let first = wait_until("every node to have its certificate", FORM, || {
        dirs.iter().map(|d| serial_of(d)).collect::<Option<Vec<String>>>()
    });
    // The latest expiry among the first certificates: past it, only renewed ones are valid.
    let first_expiry = dirs
        .iter()
        .map(|d| Credential::load(d, "node").unwrap().identity().unwrap().not_after)
        .max()
        .unwrap();
    let mut seen: Vec<std::collections::BTreeSet<String>> =
        first.iter().map(|s| [s.clone()].into()).collect();
    let mut writes = 0;
    wait_until(
        "two renewals on every node, with writes going on",
        Duration::from_secs(60),
        || {
            let out = warren(
                &all,
                &[
                    "service",
                    "create",
                    "-d",
                    &format!("r{writes}"),
                    "--image",
                    "busybox",
                    "--replicas",
                    "0",
                ],
            );
            assert!(out.status.success(), "write {writes} failed: {}", stderr(&out));
            writes += 1;
            for (d, s) in dirs.iter().zip(seen.iter_mut()) {
                s.extend(serial_of(d));
            }
            (seen.iter().all(|s| s.len() >= 3) && std::time::SystemTime::now() > first_expiry).then_some(())
        },
    );
    // Still serving after the first certificates expired: writes, and the worker is ready.
    let out = warren(
        &all,
        &[
            "service",
            "create",
            "-d",
            "after",
            "--image",
            "busybox",
            "--replicas",
            "0",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    wait_workers_ready(&all, 2, FORM);
}

/// (id, node, container, state) of every task of `service` that should run.
fn tasks_of(api: &str, service: &str) -> Vec<(String, String, String, String)> {
    json_of(api, &["service", "ps", service])
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["desired_state"] == "running")
        .map(|t| {
            let s = |k: &str| t[k].as_str().unwrap_or_default().to_string();
            (s("id"), s("node"), s("container_id"), s("state"))
        })
        .collect()
}

/// `cluster ca --rotate` on 3 managers and 2 workers with a service running: every node
/// renews from the new CA, nobody trusts the old one afterwards (an operator credential of
/// the old CA is refused), and no task restarts.
#[test]
fn ca_rotation_replaces_every_certificate_without_restarting_a_task() {
    let cluster = Cluster::form(3);
    let all = cluster.all();
    let wtoken = stdout(&warren(&all, &["cluster", "join-token", "worker", "-q"]))
        .trim()
        .to_string();
    let tmp = tempfile::tempdir().unwrap();
    let workers: Vec<WorkerProc> = ["w1", "w2"]
        .iter()
        .map(|w| WorkerProc::spawn(&all, Some(&wtoken), w, &tmp.path().join(w), &["--runtime", "sim"]))
        .collect();
    // Both workers must be ready before the service exists, or all four tasks may land on
    // the one that registered first.
    wait_until("both workers ready", Duration::from_secs(60), || {
        let ready = json_of(&all, &["node", "ls"])
            .as_array()?
            .iter()
            .filter(|n| n["status"] == "ready")
            .count();
        (ready == 2).then_some(())
    });
    create_service(&all, "web", 4);
    let before = wait_until(
        "4 tasks running on the two workers",
        Duration::from_secs(60),
        || {
            let t = tasks_of(&all, "web");
            let nodes: std::collections::BTreeSet<&str> = t.iter().map(|x| x.1.as_str()).collect();
            (t.len() == 4 && t.iter().all(|x| x.3 == "running") && nodes.len() == 2).then_some(t)
        },
    );
    let started = || -> usize {
        workers
            .iter()
            .map(|w| w.log_text().matches("task started").count())
            .sum()
    };
    let started_before = started();
    assert_eq!(started_before, 4, "the worker logs name each start");
    let admin_dir = admin_dir_for(cluster.api(1)).expect("the operator credential");
    let old_admin = tmp.path().join("old-admin");
    std::fs::create_dir(&old_admin).unwrap();
    for f in ["admin.crt", "admin.key", "ca.crt"] {
        std::fs::copy(admin_dir.join(f), old_admin.join(f)).unwrap();
    }
    let old_ca = Credential::load(&old_admin, "admin").unwrap().ca_der;

    let out = warren(&all, &["cluster", "ca", "--rotate", "--timeout", "120s"]);
    assert!(out.status.success(), "rotate: {}", stderr(&out));
    assert!(stdout(&out).contains("CA rotation complete"), "{}", stdout(&out));
    let status = stdout(&warren(&all, &["cluster", "ca"]));
    assert!(status.contains("no rotation under way"), "{status}");
    // The operator credential in use was replaced by one of the new CA, which it alone trusts.
    let admin = Credential::load(&admin_dir, "admin").unwrap();
    assert_eq!(admin.ca_der.len(), 1);
    let new_ca = admin.ca_der[0].clone();
    assert_ne!(vec![new_ca.clone()], old_ca);
    assert!(warren::security::pki::issued_by(&admin.cert_der, &new_ca));
    assert!(
        status.contains(&warren::security::pki::fingerprint_hex(&new_ca)),
        "{status}"
    );

    // Every node holds a certificate of the new CA and, soon, trusts only it.
    let dirs: Vec<std::path::PathBuf> = cluster
        .procs
        .iter()
        .map(|p| p.data_dir.join("tls"))
        .chain(["w1", "w2"].iter().map(|w| tmp.path().join(w).join("tls")))
        .collect();
    wait_until("every node to trust only the new CA", FORM, || {
        dirs.iter()
            .all(|d| {
                let c = Credential::load(d, "node").unwrap();
                warren::security::pki::issued_by(&c.cert_der, &new_ca) && c.ca_der == vec![new_ca.clone()]
            })
            .then_some(())
    });
    // The old CA's operator credential is refused, with what to do.
    let out = warren_cmd(&all)
        .args(["--manager", &all, "--tls-dir"])
        .arg(&old_admin)
        .args(["service", "ls"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "an old-CA credential still works");
    assert!(stderr(&out).contains("admin-cert"), "{}", stderr(&out));
    // The cluster serves writes, the workers are ready, and not a task restarted.
    ok_create(&all, "after-rotation");
    wait_workers_ready(&all, 2, FORM);
    assert_eq!(tasks_of(&all, "web"), before, "tasks changed during the rotation");
    assert_eq!(started(), started_before, "a worker started a task again");
    drop(workers);
}
