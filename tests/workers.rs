//! Workers as real processes on loopback (simulated container runtime, `--runtime sim`;
//! tests/containerd.rs runs real containers): joining with tokens, placement through the CLI,
//! drain, node removal, refusals.

#![cfg(not(madsim))]

mod common;

use common::*;

use std::path::Path;

/// A worker with the simulated runtime.
fn sim_worker(manager: &str, token: Option<&str>, id: &str, data_dir: &Path, extra: &[&str]) -> WorkerProc {
    let mut args = vec!["--cpus", "2", "--memory", "1GiB", "--runtime", "sim"];
    args.extend(extra);
    WorkerProc::spawn(manager, token, id, data_dir, &args)
}
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn token(api: &str, role: &str, extra: &[&str]) -> String {
    let mut args = vec!["cluster", "join-token", role, "-q"];
    args.extend(extra);
    let out = warren(api, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().to_string()
}

/// Node id -> status, from `node ls`.
fn node_status(api: &str) -> Vec<(String, String)> {
    json_of(api, &["node", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_string(),
                n["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// (node, state) of every task that should run, from `service ps`.
fn running(api: &str, service: &str) -> Vec<(String, String)> {
    json_of(api, &["service", "ps", service])
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["desired_state"] == "running")
        .map(|t| {
            (
                t["node"].as_str().unwrap().to_string(),
                t["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn count_on(tasks: &[(String, String)], node: &str) -> usize {
    tasks.iter().filter(|(n, s)| n == node && s == "running").count()
}

#[test]
fn workers_run_spread_constrained_and_drained_tasks() {
    let tmp = tempfile::tempdir().unwrap();
    let api = format!("127.0.0.1:{}", free_port());
    let raft = format!("127.0.0.1:{}", free_port());
    let _m = ManagerProc::start_with(
        &tmp.path().join("m1"),
        &api,
        &raft,
        &["--node-grace-period-ms", "1500"],
    );
    let t = token(&api, "worker", &[]);
    let _w1 = sim_worker(
        &api,
        Some(&t),
        "w1",
        &tmp.path().join("w1"),
        &["--label", "zone=eu"],
    );
    let mut w2 = sim_worker(&api, Some(&t), "w2", &tmp.path().join("w2"), &[]);
    wait_until("both workers ready", WAIT, || {
        let s = node_status(&api);
        (s == vec![("w1".into(), "ready".into()), ("w2".into(), "ready".into())]).then_some(())
    });

    // Spread.
    let out = warren(
        &api,
        &[
            "service",
            "create",
            "-d",
            "web",
            "--image",
            "busybox",
            "--replicas",
            "4",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let tasks = wait_until("web running 2 + 2", WAIT, || {
        let r = running(&api, "web");
        (count_on(&r, "w1") == 2 && count_on(&r, "w2") == 2).then_some(r)
    });
    assert_eq!(tasks.len(), 4);

    // Constraint.
    let out = warren(
        &api,
        &[
            "service",
            "create",
            "-d",
            "eu",
            "--image",
            "busybox",
            "--replicas",
            "3",
            "--constraint",
            "node.labels.zone==eu",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    wait_until("eu on w1 only", WAIT, || {
        (count_on(&running(&api, "eu"), "w1") == 3).then_some(())
    });

    // Nothing fits: pending, with the reason shown by `service ps`.
    let out = warren(
        &api,
        &[
            "service",
            "create",
            "-d",
            "big",
            "--image",
            "busybox",
            "--reserve-cpu",
            "64",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let ps = wait_until("big pending with a reason", WAIT, || {
        let out = warren(&api, &["service", "ps", "big"]);
        let text = stdout(&out);
        text.contains("without 64.000 CPUs free").then_some(text)
    });
    assert!(ps.contains("pending"), "{ps}");

    // Drain moves web off w2.
    let out = warren(&api, &["node", "update", "w2", "--availability", "drain"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_until("web all on w1", WAIT, || {
        (count_on(&running(&api, "web"), "w1") == 4).then_some(())
    });
    let drained = json_of(&api, &["service", "ps", "web"]);
    assert!(
        drained
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["node"] == "w2" && t["state"] == "shutdown"),
        "w2's tasks were not shut down: {drained}"
    );

    // A ready node is not removed without --force; a dead one is.
    let out = warren(&api, &["node", "rm", "w2"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    w2.kill9();
    wait_until("w2 marked down after the grace period", WAIT, || {
        node_status(&api)
            .contains(&("w2".to_string(), "down".to_string()))
            .then_some(())
    });
    let out = warren(&api, &["node", "rm", "w2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(node_status(&api), vec![("w1".to_string(), "ready".to_string())]);
    // Unknown node: a clear error naming it.
    let out = warren(&api, &["node", "update", "nope", "--availability", "drain"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("\"nope\" not found"), "{}", stderr(&out));
}

#[test]
fn bad_worker_joins_are_refused_and_add_no_node() {
    let tmp = tempfile::tempdir().unwrap();
    let m = ManagerProc::start(&tmp.path().join("m1"));
    let api = m.api.clone();
    let rotated_out = token(&api, "worker", &[]);
    let _current = token(&api, "worker", &["--rotate"]);
    let expiring = token(&api, "worker", &["--ttl", "1s"]);
    let manager = token(&api, "manager", &[]);
    // Wait for the short-lived token to expire (a wait on the clock itself).
    std::thread::sleep(Duration::from_millis(1_100));
    let cases: Vec<(&str, Option<String>, &str, &str)> = vec![
        ("manager token", Some(manager), "ok-1", "this is a manager token"),
        ("expired", Some(expiring), "ok-2", "expired"),
        (
            "rotated out",
            Some(rotated_out),
            "ok-3",
            "rotated out or never issued",
        ),
        ("garbage", Some("WRN1-garbage".into()), "ok-4", "malformed"),
        ("no token", None, "ok-5", "a new worker needs --token"),
        (
            "bad node id",
            Some(_current.clone()),
            "UPPER",
            "not a valid node id",
        ),
    ];
    for (what, tok, id, expect) in cases {
        let mut w = sim_worker(
            &api,
            tok.as_deref(),
            id,
            &tmp.path().join(what.replace(' ', "-")),
            &[],
        );
        let status = w
            .wait_exit(WAIT)
            .unwrap_or_else(|| panic!("{what}: the worker kept running"));
        assert!(!status.success(), "{what}: must fail");
        let log = w.log_text();
        assert!(log.contains(expect), "{what}: log lacks {expect:?}:\n{log}");
        assert!(node_status(&api).is_empty(), "{what}: a node was added");
    }
    // A corrupt local state file: refused with what to do, nothing registered.
    let corrupt = tmp.path().join("corrupt");
    std::fs::create_dir_all(&corrupt).unwrap();
    std::fs::write(corrupt.join("worker.json"), b"{not json").unwrap();
    let mut w = sim_worker(&api, Some(&_current), "w8", &corrupt, &[]);
    let status = w.wait_exit(WAIT).expect("exits");
    assert!(!status.success());
    let log = w.log_text();
    assert!(
        log.contains("is corrupt") && log.contains("move it away"),
        "{log}"
    );
    assert!(node_status(&api).is_empty());

    // A manager address that does not answer: retried for a while, then a clear error
    // naming the address.
    let dead = format!("127.0.0.1:{}", free_port());
    let mut w = sim_worker(
        &dead,
        Some(&_current),
        "w9",
        &tmp.path().join("dead-manager"),
        &[],
    );
    let status = w.wait_exit(WAIT).expect("the worker gave up");
    assert!(!status.success());
    let log = w.log_text();
    assert!(
        log.contains(&dead) && log.contains("no manager answered"),
        "{log}"
    );
}

/// Specs near the size limit: eighty tasks of ~75 KB specs on one worker (6 MB of
/// assignments, more than a gRPC message may carry) all run, and `service ls` over eighty
/// such services lists them all (the replies come in pages).
#[test]
fn assignments_and_lists_larger_than_one_message_arrive_in_pages() {
    let tmp = tempfile::tempdir().unwrap();
    let m = ManagerProc::start(&tmp.path().join("m1"));
    let wtoken = token(&m.api, "worker", &[]);
    let _w = sim_worker(&m.api, Some(&wtoken), "big-1", &tmp.path().join("w1"), &[]);
    wait_until("the worker to be ready", WAIT, || {
        node_status(&m.api)
            .iter()
            .any(|(_, s)| s == "ready")
            .then_some(())
    });
    let env_a = format!("A={}", "a".repeat(15_000));
    let env_b = format!("B={}", "b".repeat(15_000));
    let labels: Vec<String> = (0..45)
        .map(|i| format!("label-{i}={}", "v".repeat(1000)))
        .collect();
    let create_big = |name: &str, replicas: &str| {
        let mut args = vec![
            "service",
            "create",
            "-d",
            name,
            "--image",
            "busybox",
            "--replicas",
            replicas,
        ];
        args.extend(["--env", env_a.as_str(), "--env", env_b.as_str()]);
        for l in &labels {
            args.extend(["--label", l.as_str()]);
        }
        let out = warren(&m.api, &args);
        assert!(out.status.success(), "{}", stderr(&out));
    };
    create_big("big", "80");
    wait_until(
        "eighty big tasks to run on the worker",
        Duration::from_secs(60),
        || (count_on(&running(&m.api, "big"), "big-1") == 80).then_some(()),
    );
    for i in 0..80 {
        create_big(&format!("big-{i}"), "0");
    }
    assert_eq!(services(&m.api).len(), 81);
}

/// `--runtime containerd` (the default) with no containerd, or one that never answers: a clear
/// error at start naming what to do, not a hang.
#[test]
fn a_missing_or_silent_containerd_is_a_clear_error_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let m = ManagerProc::start(&tmp.path().join("m1"));
    let t = token(&m.api, "worker", &[]);
    let missing = tmp.path().join("no-such.sock");
    let mut w = WorkerProc::spawn(
        &m.api,
        Some(&t),
        "cd-missing",
        &tmp.path().join("w1"),
        &["--containerd-socket", missing.to_str().unwrap()],
    );
    let status = w.wait_exit(WAIT).expect("the worker exits");
    assert!(!status.success());
    let log = w.log_text();
    assert!(
        log.contains("does not exist") && log.contains("apt-get install containerd"),
        "{log}"
    );

    // A socket that accepts and never answers.
    let silent = tmp.path().join("silent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&silent).unwrap();
    // Accepts and keeps every connection, answering nothing (the thread ends with the test
    // process).
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming() {
            held.push(c);
        }
    });
    let start = std::time::Instant::now();
    let mut w = WorkerProc::spawn(
        &m.api,
        Some(&t),
        "cd-silent",
        &tmp.path().join("w2"),
        &["--containerd-socket", silent.to_str().unwrap()],
    );
    let status = w.wait_exit(WAIT).expect("the worker exits");
    assert!(!status.success());
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "took {:?}",
        start.elapsed()
    );
    let log = w.log_text();
    assert!(log.contains("did not answer within 5 s"), "{log}");
}
