//! `--metrics-addr` on three managers and a worker: `curl` on /metrics parses with
//! Prometheus's OpenMetrics parser (scripts/parse-metrics.py) and moves when the cluster does
//! (a leader kill increments the leader-change counter on the survivors); /healthz and
//! /readyz answer, and /readyz says 503 once the quorum is lost; bad flags are refused.

#![cfg(not(madsim))]

mod common;

use common::*;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn metrics_port() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// `curl` on http://ADDR/metrics, parsed: sample name (with labels) -> value.
fn scrape(addr: &str) -> Option<serde_json::Map<String, Value>> {
    let body = Command::new("curl")
        .args(["-sf", "--max-time", "5", &format!("http://{addr}/metrics")])
        .output()
        .ok()
        .filter(|o| o.status.success())?
        .stdout;
    let parser = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/parse-metrics.py");
    let mut child = Command::new("python3")
        .arg(parser)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused /metrics of {addr}: {}\n{}",
        stderr(&out),
        String::from_utf8_lossy(&body)
    );
    match serde_json::from_slice(&out.stdout).unwrap() {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

fn value(m: &serde_json::Map<String, Value>, name: &str) -> Option<f64> {
    m.get(name).and_then(Value::as_f64)
}

/// `curl` status code and body of http://ADDR/PATH.
fn http(addr: &str, path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "5",
            "-w",
            "\n%{http_code}",
            &format!("http://{addr}{path}"),
        ])
        .output()
        .unwrap();
    let text = stdout(&out);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.trim_end().to_string())
}

#[test]
fn metrics_and_health_follow_the_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let maddr: Vec<String> = (0..3).map(|_| metrics_port()).collect();
    let first = ManagerProc::start_with(
        &tmp.path().join("m1"),
        &format!("127.0.0.1:{}", free_port()),
        &format!("127.0.0.1:{}", free_port()),
        &["--metrics-addr", &maddr[0]],
    );
    let token = manager_token(&first.api, &[]);
    let mut procs = vec![first];
    for i in 2..=3u64 {
        let leaders = procs.iter().map(|p| p.api.clone()).collect::<Vec<_>>().join(",");
        procs.push(ManagerProc::join_with(
            i,
            i as u8,
            &token,
            &leaders,
            &tmp.path().join(format!("m{i}")),
            &["--metrics-addr", &maddr[i as usize - 1]],
        ));
        let apis: Vec<&str> = procs.iter().map(|p| p.api.as_str()).collect();
        wait_cluster(&apis, &(1..=i).collect::<Vec<_>>(), WAIT);
    }
    let all = procs.iter().map(|p| p.api.clone()).collect::<Vec<_>>().join(",");
    let wtoken = stdout(&warren(&procs[0].api, &["cluster", "join-token", "worker", "-q"]))
        .trim()
        .to_string();
    let waddr = metrics_port();
    let _w = WorkerProc::spawn(
        &all,
        Some(&wtoken),
        "mw1",
        &tmp.path().join("mw1"),
        &["--runtime", "sim", "--metrics-addr", &waddr],
    );
    create_service(&procs[0].api, "web", 2);

    // Every manager: the same term and leader; the leader's counters have moved.
    let leader = wait_until("the metrics to show the cluster", WAIT, || {
        let ms: Vec<_> = maddr.iter().map(|a| scrape(a)).collect::<Option<Vec<_>>>()?;
        let leaders: Vec<f64> = ms
            .iter()
            .filter_map(|m| value(m, "warren_raft_leader_id"))
            .collect();
        let leading: f64 = ms.iter().filter_map(|m| value(m, "warren_raft_is_leader")).sum();
        let l = *leaders.first()?;
        let lm = &ms[l as usize - 1];
        let ok = leaders.len() == 3
            && leaders.iter().all(|x| *x == l)
            && leading == 1.0
            && value(lm, "warren_tasks{state=running}") == Some(2.0)
            && value(lm, "warren_nodes{status=ready}") == Some(1.0)
            && value(lm, "warren_raft_proposal_seconds_count").is_some_and(|c| c > 0.0)
            && value(lm, "warren_raft_leader_append_seconds_count").is_some_and(|c| c > 0.0)
            && value(lm, "warren_orchestrator_round_seconds_count").is_some_and(|c| c > 0.0)
            && ms.iter().all(|m| {
                value(m, "warren_raft_applied_index").is_some_and(|a| a > 0.0)
                    && value(m, "warren_raft_fsync_seconds_count").is_some_and(|c| c > 0.0)
                    && value(m, "warren_raft_term") == value(lm, "warren_raft_term")
            })
            && ms
                .iter()
                .filter_map(|m| value(m, "warren_assignment_streams"))
                .sum::<f64>()
                >= 1.0;
        ok.then_some(l as u64)
    });
    for a in &maddr {
        assert_eq!(http(a, "/healthz"), (200, "ok".into()));
        assert_eq!(http(a, "/readyz").0, 200, "{a}");
    }
    assert_eq!(http(&maddr[0], "/nothing").0, 404);
    let w = scrape(&waddr).expect("the worker's metrics");
    assert!(
        value(&w, "warren_worker_runtime_operation_seconds_count{op=start}").is_some_and(|c| c >= 2.0),
        "{w:?}"
    );
    assert_eq!(value(&w, "warren_worker_runtime_reachable"), Some(1.0), "{w:?}");
    wait_until("the worker ready", WAIT, || {
        (http(&waddr, "/readyz").0 == 200).then_some(())
    });

    // A leader change moves the counter on the survivors.
    let survivors: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    let before: Vec<f64> = survivors
        .iter()
        .map(|i| {
            value(
                &scrape(&maddr[*i as usize - 1]).unwrap(),
                "warren_raft_leader_changes_total",
            )
            .unwrap()
        })
        .collect();
    procs[leader as usize - 1].kill9();
    let new_leader = wait_until("a new leader in the metrics", WAIT, || {
        let ms: Vec<_> = survivors
            .iter()
            .map(|i| scrape(&maddr[*i as usize - 1]))
            .collect::<Option<Vec<_>>>()?;
        let l = value(&ms[0], "warren_raft_leader_id")?;
        let moved = ms.iter().zip(&before).all(|(m, b)| {
            value(m, "warren_raft_leader_changes_total").is_some_and(|c| c > *b)
                && value(m, "warren_raft_leader_id") == Some(l)
        });
        (moved && l as u64 != leader).then_some(l as u64)
    });

    // Quorum lost: the last manager is alive but not ready, and says why.
    let last = survivors.iter().copied().find(|i| *i != new_leader).unwrap();
    procs[new_leader as usize - 1].kill9();
    let why = wait_until("the last manager not ready", WAIT, || {
        let (code, body) = http(&maddr[last as usize - 1], "/readyz");
        (code == 503).then_some(body)
    });
    assert!(why.starts_with("not ready: "), "{why}");
    assert_eq!(http(&maddr[last as usize - 1], "/healthz").0, 200);
    let m = scrape(&maddr[last as usize - 1]).unwrap();
    assert_eq!(value(&m, "warren_raft_is_leader"), Some(0.0));
    assert_eq!(
        value(&m, "warren_raft_leader_id"),
        None,
        "a lost leader is not shown as one"
    );
}

#[test]
fn bad_metrics_addresses_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = busy.local_addr().unwrap().to_string();
    for (addr, want) in [("nonsense", "--metrics-addr"), (busy.as_str(), "cannot listen")] {
        let dir = tmp.path().join(format!("m-{}", addr.replace([':', '.'], "-")));
        let api = format!("127.0.0.1:{}", free_port());
        let raft = format!("127.0.0.1:{}", free_port());
        let mut args = ManagerProc::init_args(&api, &raft, &dir);
        args.extend(["--metrics-addr".to_string(), addr.to_string()]);
        let out = Command::new(bin()).args(&args).output().unwrap();
        assert!(!out.status.success(), "{addr} accepted");
        assert!(stderr(&out).contains(want), "{addr}: {}", stderr(&out));
    }
}
