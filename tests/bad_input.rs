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

#[tokio::test(flavor = "multi_thread")]
async fn the_api_refuses_what_the_cli_never_sends() {
    let tmp = tempfile::tempdir().unwrap();
    let m = ManagerProc::start(&tmp.path().join("m1"));
    let c = admin_client(std::slice::from_ref(&m.api));
    // No replicas: the orchestrator has nothing to write, so the log moves only by requests.
    create(
        &c,
        pb::ServiceSpec {
            replicas: 0,
            ..spec("web")
        },
    )
    .await
    .unwrap();
    let before = services(&m.api);
    let applied = |api: &str| info(api).unwrap()["last_applied"].as_u64().unwrap();
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
                        })
                        .await
                }
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e}");
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
