#![cfg(not(madsim))]
//! Input the API must refuse, sent with the plain gRPC clients generated from proto/ (what
//! the CLI would never send): each refused with INVALID_ARGUMENT naming the field, nothing
//! changed; and the CLI's errors stay short and point at commands that exist.

mod common;

use common::*;
use tonic::Code;
use warren::client::Client;
use warren::proto::v1 as pb;

fn spec(name: &str) -> pb::ServiceSpec {
    pb::ServiceSpec {
        name: name.into(),
        image: "busybox".into(),
        replicas: 1,
        ..Default::default()
    }
}

async fn create(c: &Client, spec: pb::ServiceSpec) -> Result<pb::Service, warren::client::ClientError> {
    c.create_service(spec).await
}

/// A manager with service `web` of no replicas (the orchestrator has nothing to write, so
/// the log moves only by requests), and an admin client.
async fn manager_with_idle_web(dir: &std::path::Path) -> (ManagerProc, Client) {
    let m = ManagerProc::start(&dir.join("m1"));
    let c = admin_client(std::slice::from_ref(&m.api));
    create(
        &c,
        pb::ServiceSpec {
            replicas: 0,
            ..spec("web")
        },
    )
    .await
    .unwrap();
    (m, c)
}

fn applied(api: &str) -> u64 {
    info(api).unwrap()["last_applied"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_refuses_what_the_cli_never_sends() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, c) = manager_with_idle_web(tmp.path()).await;
    let before = services(&m.api);
    let applied_before = applied(&m.api);

    let with = |f: &dyn Fn(&mut pb::ServiceSpec)| {
        let mut s = spec("bad");
        f(&mut s);
        s
    };
    let restart = |condition: i32, delay_ms: u64| pb::RestartPolicy {
        condition,
        max_attempts: 0,
        delay_ms,
    };
    let cases: Vec<(&str, pb::ServiceSpec, &str)> = vec![
        (
            "restart delay 2^63",
            with(&|s| s.restart_policy = Some(restart(3, 1 << 63))),
            "restart delay",
        ),
        (
            "restart condition 99",
            with(&|s| s.restart_policy = Some(restart(99, 0))),
            "restart condition",
        ),
        (
            "constraint ===",
            with(&|s| s.constraints = vec!["node.id===x".into()]),
            "constraint",
        ),
        (
            "constraint ==!=",
            with(&|s| s.constraints = vec!["node.labels.a==!=b".into()]),
            "constraint",
        ),
        (
            "constraint role",
            with(&|s| s.constraints = vec!["node.role==kingpin".into()]),
            "constraint",
        ),
        ("image ':'", with(&|s| s.image = ":".into()), "image"),
        (
            "image junk",
            with(&|s| s.image = "!!!@@@###$$$:::////..".into()),
            "image",
        ),
        (
            "image control",
            with(&|s| s.image = "busy\u{7}box".into()),
            "control character",
        ),
        (
            "image bidi",
            with(&|s| s.image = "busy\u{202e}box".into()),
            "control character",
        ),
        (
            "env key newline",
            with(&|s| {
                s.env.insert("A\nB".into(), "v".into());
            }),
            "env",
        ),
        (
            "env value NUL",
            with(&|s| {
                s.env.insert("A".into(), "v\0w".into());
            }),
            "env",
        ),
        (
            "env 3 MB",
            with(&|s| {
                s.env.insert("A".into(), "x".repeat(3 << 20));
            }),
            "env",
        ),
        (
            "empty label key",
            with(&|s| {
                s.labels.insert("".into(), "v".into());
            }),
            "labels",
        ),
        (
            "NUL label key",
            with(&|s| {
                s.labels.insert("a\0".into(), "v".into());
            }),
            "labels",
        ),
    ];
    for (what, spec, field) in cases {
        let e = create(&c, spec).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e}");
        assert!(e.to_string().contains(field), "{what}: {e} does not name {field}");
        assert!(e.to_string().len() < 1_000, "{what}: the error echoes too much");
    }
    // Refused before the Raft log: not even a log entry was written.
    assert_eq!(
        applied(&m.api),
        applied_before,
        "refused input reached the Raft log"
    );

    // Paging tokens no reply gave are refused.
    let e = c
        .call(|mut s| async move {
            s.services
                .list_services(pb::ListServicesRequest {
                    page_token: "zzzz".into(),
                    ..Default::default()
                })
                .await
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    // Bidirectional controls in label keys, env keys and values, constraint values.
    for (what, bad) in [
        (
            "label key",
            with(&|s| {
                s.labels.insert("k\u{202e}x".into(), "v".into());
            }),
        ),
        (
            "env key",
            with(&|s| {
                s.env.insert("A\u{202e}".into(), "v".into());
            }),
        ),
        (
            "env value",
            with(&|s| {
                s.env.insert("A".into(), "\u{202e}v".into());
            }),
        ),
        (
            "constraint",
            with(&|s| s.constraints = vec!["node.id==\u{202e}abc".into()]),
        ),
    ] {
        assert_eq!(
            create(&c, bad).await.unwrap_err().code(),
            Code::InvalidArgument,
            "{what}"
        );
    }

    // Nodes: an UpdateNode with nothing to change, bad labels; a bad address at register
    // (sent with node n1's certificate, as its worker would).
    let w = worker_client(&m.api, "n1", &tmp.path().join("n1-tls")).await;
    let reg = |address: &str, labels: &[(&str, &str)]| pb::RegisterNodeRequest {
        token: String::new(),
        node_id: "n1".into(),
        address: address.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        capacity: None,
    };
    for (what, req) in [
        ("address", reg("not an address!", &[])),
        ("label", reg("10.0.0.1:1", &[("", "v")])),
    ] {
        let e = w
            .call(|mut s| {
                let req = req.clone();
                async move { s.nodes.register_node(req).await }
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "register with bad {what}: {e}");
    }
    w.call(|mut s| {
        let req = reg("10.0.0.1:4000", &[]);
        async move { s.nodes.register_node(req).await }
    })
    .await
    .unwrap();
    async fn version(c: &Client) -> u64 {
        c.list_nodes().await.unwrap()[0].version
    }
    let v0 = version(&c).await;
    let e = c
        .call(|mut s| async move {
            s.nodes
                .update_node(pb::UpdateNodeRequest {
                    id: "n1".into(),
                    ..Default::default()
                })
                .await
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert_eq!(version(&c).await, v0, "a refused update bumped the version");

    // A heartbeat carrying a 4 MB task message (or too many reports) is refused before the
    // Raft log.
    let applied_before = applied(&m.api);
    for (what, changes) in [
        (
            "4 MB message",
            vec![pb::TaskStatusReport {
                task_id: "t1".into(),
                state: pb::TaskState::Running as i32,
                message: "m".repeat((4 << 20) - 300),
                ..Default::default()
            }],
        ),
        (
            "too many reports",
            (0..300)
                .map(|i| pb::TaskStatusReport {
                    task_id: format!("t{i}"),
                    state: pb::TaskState::Running as i32,
                    ..Default::default()
                })
                .collect(),
        ),
    ] {
        let e = w
            .call(|mut s| {
                let changes = changes.clone();
                async move {
                    s.nodes
                        .heartbeat(pb::HeartbeatRequest {
                            node_id: "n1".into(),
                            changes,
                            ..Default::default()
                        })
                        .await
                }
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e}");
    }
    // A build description past 128 bytes, or with control characters, is refused too.
    for version in ["v".repeat(129), "1.0\n2.0".to_string(), "\u{202e}1.0".to_string()] {
        let e = w
            .call(|mut s| {
                let version = version.clone();
                async move {
                    s.nodes
                        .heartbeat(pb::HeartbeatRequest {
                            node_id: "n1".into(),
                            version,
                            ..Default::default()
                        })
                        .await
                }
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{version:?}: {e}");
        assert!(e.to_string().contains("invalid version"), "{e}");
    }
    assert_eq!(
        applied(&m.api),
        applied_before,
        "a refused heartbeat reached the Raft log"
    );

    // A bad request id header is refused; a retry under the same id applies once.
    let send = |rid: &'static str| {
        let c = &c;
        async move {
            c.call(|mut s| async move {
                let mut r = tonic::Request::new(pb::DeleteServiceRequest {
                    service: "web".into(),
                });
                r.metadata_mut()
                    .insert("x-warren-request-id", rid.parse().unwrap());
                s.services.delete_service(r).await
            })
            .await
        }
    };
    assert_eq!(send("bad id!").await.unwrap_err().code(), Code::InvalidArgument);
    // The same id with a different request: refused, and the first request's answer is not
    // handed out as this one's.
    let reuse = c
        .call(|mut s| async move {
            let mut r = tonic::Request::new(pb::CreateServiceRequest {
                spec: Some(spec("reused")),
            });
            r.metadata_mut()
                .insert("x-warren-request-id", "taken-1".parse().unwrap());
            let _ = s.services.create_service(r).await;
            let mut r = tonic::Request::new(pb::ScaleServiceRequest {
                service: "reused".into(),
                replicas: 3,
                expected_version: 0,
            });
            r.metadata_mut()
                .insert("x-warren-request-id", "taken-1".parse().unwrap());
            s.services.scale_service(r).await
        })
        .await
        .unwrap_err();
    assert_eq!(reuse.code(), Code::FailedPrecondition, "{reuse}");
    assert!(
        reuse.to_string().contains("already used for a different request"),
        "{reuse}"
    );
    c.call(|mut s| async move {
        s.services
            .delete_service(pb::DeleteServiceRequest {
                service: "reused".into(),
            })
            .await
    })
    .await
    .unwrap();
    assert_eq!(services(&m.api), before, "a refused request changed something");
    let first = send("retry-1").await.unwrap();
    let again = send("retry-1")
        .await
        .expect("a retry under the same id gets the first answer");
    assert_eq!(first.id, again.id);
    assert!(services(&m.api).is_empty());

    // Join tokens: TTL beyond a year, and at most 100 live per role.
    let tok = |ttl_seconds: u64, rotate: bool| {
        let c = &c;
        async move { c.join_token(pb::Role::Worker, ttl_seconds, rotate).await }
    };
    assert_eq!(
        tok(1 << 40, false).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut refused = None;
    for i in 0..150 {
        if let Err(e) = tok(60, false).await {
            refused = Some((i, e));
            break;
        }
    }
    let (i, e) = refused.expect("150 live tokens were all kept");
    assert!(i <= 100 && e.to_string().contains("--rotate"), "{i}: {e}");
    tok(60, true).await.unwrap();
}

#[test]
fn cli_errors_are_short_and_point_at_real_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let m = ManagerProc::start(&tmp.path().join("m1"));
    let long = "a".repeat(20_000);
    let out = warren(&m.api, &["service", "create", "-d", &long, "--image", "busybox"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("not a valid service name") && err.len() < 600,
        "{err}"
    );
    assert!(!err.contains("h2 protocol"), "{err}");
    let out = warren(&m.api, &["service", "inspect", &long]);
    assert!(
        stderr(&out).contains("not found") && stderr(&out).len() < 600,
        "{}",
        stderr(&out)
    );
    for (args, hint) in [
        (vec!["node", "inspect", "nope"], "warren node ls"),
        (vec!["service", "inspect", "nope"], "warren service ls"),
        (vec!["manager", "remove", "9"], "warren cluster info"),
    ] {
        let out = warren(&m.api, &args);
        assert!(stderr(&out).contains(hint), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("task ls") && !stderr(&out).contains("manager ls"));
    }
    let out = warren(
        &m.api,
        &["service", "create", "-d", "x", "--image", "busy\u{1}box"],
    );
    assert!(stderr(&out).contains("control character"), "{}", stderr(&out));
    // A reader that goes away does not make the CLI panic.
    assert!(
        warren(&m.api, &["service", "create", "-d", "web", "--image", "busybox"])
            .status
            .success()
    );
    let piped = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} --manager {} service inspect web | head -c 5",
            bin().display(),
            m.api
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&piped.stderr);
    assert!(!err.contains("panicked"), "{err}");
}

/// #14's settings and calls as a raw client could send them: every out-of-range rollout or
/// health check setting is refused with INVALID_ARGUMENT naming it before the Raft log;
/// rollbacks to versions that do not exist are refused saying which exist; nothing changes.
#[tokio::test(flavor = "multi_thread")]
async fn updates_and_rollbacks_refuse_what_the_cli_never_sends() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, c) = manager_with_idle_web(tmp.path()).await;
    let before = services(&m.api);
    let applied_before = applied(&m.api);

    let with = |f: &dyn Fn(&mut pb::ServiceSpec)| {
        let mut s = pb::ServiceSpec {
            replicas: 0,
            ..spec("web")
        };
        f(&mut s);
        s
    };
    let rollout = |f: &dyn Fn(&mut pb::UpdateConfig)| {
        let mut u = pb::UpdateConfig {
            parallelism: 1,
            monitor_ms: 5_000,
            timeout_ms: 300_000,
            ..Default::default()
        };
        f(&mut u);
        Some(u)
    };
    let check = |f: &dyn Fn(&mut pb::HealthCheck)| {
        let mut h = pb::HealthCheck {
            cmd: vec!["true".into()],
            interval_ms: 30_000,
            timeout_ms: 30_000,
            retries: 3,
            start_period_ms: 0,
        };
        f(&mut h);
        Some(h)
    };
    let cases: Vec<(&str, pb::ServiceSpec, &str)> = vec![
        (
            "parallelism 2^32-1",
            with(&|s| s.update_config = rollout(&|u| u.parallelism = u32::MAX)),
            "update parallelism",
        ),
        (
            "delay 2^63 ms",
            with(&|s| s.update_config = rollout(&|u| u.delay_ms = 1 << 63)),
            "update delay",
        ),
        (
            "monitor u64::MAX",
            with(&|s| s.update_config = rollout(&|u| u.monitor_ms = u64::MAX)),
            "update monitor",
        ),
        (
            "timeout 0",
            with(&|s| s.update_config = rollout(&|u| u.timeout_ms = 0)),
            "update timeout",
        ),
        (
            "failure ratio 5",
            with(&|s| s.update_config = rollout(&|u| u.max_failure_permille = 5_000)),
            "update max failure ratio",
        ),
        (
            "failure action 99",
            with(&|s| s.update_config = rollout(&|u| u.failure_action = 99)),
            "update failure action",
        ),
        (
            "order -1",
            with(&|s| s.update_config = rollout(&|u| u.order = -1)),
            "update order",
        ),
        (
            "rollback monitor 2^63",
            with(&|s| s.rollback_config = rollout(&|u| u.monitor_ms = 1 << 63)),
            "rollback monitor",
        ),
        (
            "health cmd empty",
            with(&|s| s.healthcheck = check(&|h| h.cmd = vec![])),
            "health cmd",
        ),
        (
            "health cmd NUL",
            with(&|s| s.healthcheck = check(&|h| h.cmd = vec!["a\0b".into()])),
            "health cmd",
        ),
        (
            "health cmd 100,000 arguments",
            with(&|s| s.healthcheck = check(&|h| h.cmd = vec!["x".into(); 100_000])),
            "health cmd",
        ),
        (
            "health interval 0",
            with(&|s| s.healthcheck = check(&|h| h.interval_ms = 0)),
            "health interval",
        ),
        (
            "health timeout u64::MAX",
            with(&|s| s.healthcheck = check(&|h| h.timeout_ms = u64::MAX)),
            "health timeout",
        ),
        (
            "health retries 0",
            with(&|s| s.healthcheck = check(&|h| h.retries = 0)),
            "health retries",
        ),
        (
            "health retries 2^32-1",
            with(&|s| s.healthcheck = check(&|h| h.retries = u32::MAX)),
            "health retries",
        ),
        (
            "health start period u64::MAX",
            with(&|s| s.healthcheck = check(&|h| h.start_period_ms = u64::MAX)),
            "health start period",
        ),
        (
            "a check and --no-healthcheck",
            with(&|s| {
                s.healthcheck = check(&|_| {});
                s.no_healthcheck = true;
            }),
            "healthcheck",
        ),
    ];
    for (what, spec, field) in cases {
        // At create and at update alike.
        let e = create(
            &c,
            pb::ServiceSpec {
                name: "bad".into(),
                ..spec.clone()
            },
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "create, {what}: {e}");
        assert!(
            e.to_string().contains(field),
            "create, {what}: {e} does not name {field}"
        );
        let e = c.update_service("web", spec, 0, false).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "update, {what}: {e}");
        assert!(
            e.to_string().contains(field),
            "update, {what}: {e} does not name {field}"
        );
        assert!(e.to_string().len() < 1_000, "{what}: the error echoes too much");
    }
    // An update without a spec.
    let e = c
        .call(|mut s| async move {
            s.services
                .update_service(pb::UpdateServiceRequest {
                    service: "web".into(),
                    spec: None,
                    expected_version: 0,
                    force: false,
                })
                .await
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert_eq!(
        applied(&m.api),
        applied_before,
        "refused input reached the Raft log"
    );

    // Rollbacks: nothing to roll back to, a version never made, the current one, a service
    // that does not exist.
    let e = c.rollback_service("web", 0).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert!(e.to_string().contains("no earlier version"), "{e}");
    for v in [1, 2, 999, u64::MAX] {
        let e = c.rollback_service("web", v).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "to version {v}: {e}");
    }
    assert_eq!(
        c.rollback_service("nope", 0).await.unwrap_err().code(),
        Code::NotFound
    );
    // A rename through an update.
    let e = c
        .update_service("web", with(&|s| s.name = "other".into()), 0, false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.to_string().contains("renamed"), "{e}");
    assert_eq!(services(&m.api), before, "a refused request changed something");

    // After a real update, a rollback names the versions it keeps when asked for another.
    c.update_service("web", with(&|s| s.image = "busybox:2".into()), 0, false)
        .await
        .unwrap();
    let e = c.rollback_service("web", 7).await.unwrap_err();
    assert!(e.to_string().contains("keeps versions 1"), "{e}");
    let s = c.rollback_service("web", 1).await.unwrap();
    assert_eq!(s.spec.unwrap().image, "busybox");
}

/// The first complete event of a new assignment stream of node `n1` (its pages joined).
async fn first_event(
    w: &Client,
    resume_after_seq: u64,
    history: &str,
    accepts_changes: bool,
) -> Result<pb::AssignmentEvent, warren::client::ClientError> {
    let req = pb::WatchAssignmentsRequest {
        node_id: "n1".into(),
        resume_after_seq,
        accepts_changes,
        resume_after_history: history.into(),
    };
    let mut stream = w
        .call(|mut s| {
            let req = req.clone();
            async move { s.tasks.watch_assignments(req).await }
        })
        .await?;
    let mut whole = pb::AssignmentEvent::default();
    loop {
        let ev = stream.message().await.unwrap().expect("an event");
        if ev.heartbeat {
            continue;
        }
        whole.tasks.extend(ev.tasks);
        whole.removed_task_ids.extend(ev.removed_task_ids);
        if !ev.more {
            whole.seq = ev.seq;
            whole.full_set = ev.full_set;
            whole.indexed = ev.indexed;
            whole.history = ev.history;
            return Ok(whole);
        }
    }
}

/// The first event of new streams (changes accepted), polled until `done` holds (20 s).
async fn event_when(
    w: &Client,
    resume_after_seq: u64,
    history: &str,
    done: impl Fn(&pb::AssignmentEvent) -> bool,
) -> pb::AssignmentEvent {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let ev = first_event(w, resume_after_seq, history, true).await.unwrap();
        if done(&ev) {
            return ev;
        }
        assert!(std::time::Instant::now() < deadline, "never came; last: {ev:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A worker resuming its assignment stream gets only what changed, and only when its resume
/// point is of this manager's history; a point from elsewhere (another term at that index,
/// garbage, the future) gets the full set, an oversized one is refused, and a worker cannot
/// open another node's stream.
#[tokio::test(flavor = "multi_thread")]
async fn an_assignment_stream_resumes_only_from_its_own_history() {
    let tmp = tempfile::tempdir().unwrap();
    // n1 registers but never beats: a long grace keeps it ready (and its tasks in place)
    // however slow the machine.
    let (api, raft) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let m = ManagerProc::start_with(
        &tmp.path().join("m1"),
        &api,
        &raft,
        &["--node-grace-period-ms", "600000"],
    );
    let c = admin_client(std::slice::from_ref(&m.api));
    let w = worker_client(&m.api, "n1", &tmp.path().join("n1-tls")).await;
    w.call(|mut s| async move {
        s.nodes
            .register_node(pb::RegisterNodeRequest {
                node_id: "n1".into(),
                address: "10.0.0.1:4000".into(),
                ..Default::default()
            })
            .await
    })
    .await
    .unwrap();
    create(
        &c,
        pb::ServiceSpec {
            replicas: 2,
            ..spec("web")
        },
    )
    .await
    .unwrap();
    let full = event_when(&w, 0, "", |ev| ev.tasks.len() == 2).await;
    assert!(full.full_set && full.indexed, "{full:?}");
    let (seq, history) = (full.seq, full.history.clone());
    let (cluster_term, term) = history.rsplit_once('.').expect("incarnation.term");
    let term: u64 = term.parse().expect("a term");

    // The same point and history: nothing changed since.
    let ev = first_event(&w, seq, &history, true).await.unwrap();
    assert!(
        !ev.full_set && ev.tasks.is_empty() && ev.removed_task_ids.is_empty(),
        "{ev:?}"
    );

    // Points this manager cannot vouch for: the full set.
    for (what, at, h) in [
        (
            "another term at that index",
            seq,
            format!("{cluster_term}.{}", term + 1),
        ),
        ("another cluster", seq, format!("other.0.{term}")),
        ("garbage", seq, "\u{202e}x".to_string()),
        ("no history", seq, String::new()),
        ("the future", u64::MAX, history.clone()),
    ] {
        let ev = first_event(&w, at, &h, true).await.unwrap();
        assert!(ev.full_set && ev.tasks.len() == 2, "{what}: {ev:?}");
    }
    // A worker that does not apply changes gets full sets whatever it says.
    let ev = first_event(&w, seq, &history, false).await.unwrap();
    assert!(ev.full_set && ev.tasks.len() == 2, "{ev:?}");

    // Oversized: refused, naming the field.
    let e = first_event(&w, seq, &"h".repeat(300), true).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.to_string().contains("resume_after_history"), "{e}");

    // After a scale-up, the resume gets changes, not a full set: the new task, and the two
    // others again (their service's spec, which each task carries, changed).
    c.scale_service("web", 3).await.unwrap();
    let ev = event_when(&w, seq, &history, |ev| ev.tasks.len() == 3).await;
    assert!(
        !ev.full_set && ev.tasks.len() == 3 && ev.removed_task_ids.is_empty(),
        "{ev:?}"
    );
    let new: Vec<_> = ev
        .tasks
        .iter()
        .filter(|t| full.tasks.iter().all(|f| f.id != t.id))
        .collect();
    assert_eq!(new.len(), 1, "{ev:?}");

    // Another node's stream, with n1's certificate: refused.
    let e = w
        .call(|mut s| async move {
            s.tasks
                .watch_assignments(pb::WatchAssignmentsRequest {
                    node_id: "n2".into(),
                    ..Default::default()
                })
                .await
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
}
