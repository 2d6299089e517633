//! A rolling upgrade between two builds of Warren with the same state format: managers one
//! at a time (followers first, the leader last: it hands leadership over on SIGTERM), then
//! the worker, while a client keeps writing. Needs the two builds in WARREN_UPGRADE_FROM and
//! WARREN_UPGRADE_TO (scripts/test.sh makes them: this build, and this code built again
//! with WARREN_BUILD_ID=upgrade-b); skipped without them. docs/operations.md, "Upgrades".

#![cfg(not(madsim))]

mod common;

use common::*;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// Each manager's and worker's build as `warren version` reports them.
fn builds(api: &str) -> (Vec<String>, Vec<String>) {
    let v = json_of(api, &["version"]);
    let all = |k: &str| -> Vec<String> {
        v["cluster"][k]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| m["version"].as_str().unwrap_or("unknown").to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    (all("managers"), all("workers"))
}

#[test]
fn rolling_upgrade_of_managers_then_the_worker() {
    let (Some(from), Some(to)) = (
        std::env::var_os("WARREN_UPGRADE_FROM"),
        std::env::var_os("WARREN_UPGRADE_TO"),
    ) else {
        eprintln!(
            "SKIPPED: set WARREN_UPGRADE_FROM and WARREN_UPGRADE_TO to two builds (scripts/test.sh does)"
        );
        return;
    };
    let (from, to) = (PathBuf::from(from), PathBuf::from(to));
    let new_build = |v: &str| v.contains("build upgrade-b");
    use_bin(Some(from.clone()));
    let mut c = Cluster::form(3);
    let all: Vec<String> = c.apis_except(&[]).iter().map(|s| s.to_string()).collect();
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let leader = wait_cluster(&all, &[1, 2, 3], WAIT);
    let token = stdout(&warren(c.api(leader), &["cluster", "join-token", "worker", "-q"]))
        .trim()
        .to_string();
    let worker_dir = c._tmp.path().join("uw1");
    let mut w = WorkerProc::spawn(&c.all(), Some(&token), "uw1", &worker_dir, &["--runtime", "sim"]);
    create_service(c.api(leader), "web", 3);
    wait_until("3 tasks running", WAIT, || {
        (running_tasks(c.api(leader)) == 3).then_some(())
    });
    let (managers, workers) = wait_until("every build known", WAIT, || {
        let b = builds(c.api(leader));
        (b.0.iter().chain(&b.1).all(|v| v != "unknown") && b.1.len() == 1).then_some(b)
    });
    assert!(
        !managers.iter().chain(&workers).any(|v| new_build(v)),
        "{managers:?} {workers:?}"
    );

    // A client writing all along, through every manager.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, managers) = (stop.clone(), c.all());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let name = format!("w{ok}");
                let out = warren(
                    &managers,
                    &[
                        "service",
                        "create",
                        "-d",
                        &name,
                        "--image",
                        "busybox",
                        "--replicas",
                        "0",
                    ],
                );
                if out.status.success() {
                    ok += 1;
                } else {
                    failed.push(stderr(&out));
                }
            }
            (ok, failed)
        })
    };

    let mut order = c.others(leader);
    order.push(leader);
    for id in order {
        let i = id as usize - 1;
        c.procs[i].signal(nix::sys::signal::Signal::SIGTERM);
        let exit = c.procs[i]
            .wait_exit(WAIT)
            .expect("the manager did not stop on SIGTERM");
        assert!(exit.success(), "manager {id} exited with {exit}");
        use_bin(Some(to.clone()));
        c.procs[i] = c.procs[i].restart();
        use_bin(Some(from.clone()));
        let api = c.api(id).to_string();
        wait_until(&format!("manager {id} back on the new build"), WAIT, || {
            let (m, _) = builds(&api);
            (m.len() == 3 && m.iter().filter(|v| new_build(v)).count() >= 1).then_some(())
        });
        wait_cluster(&all, &[1, 2, 3], WAIT);
    }
    // Then the worker: its tasks are reported running again under the new build.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(w.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    w.wait_exit(WAIT).expect("the worker did not stop on SIGTERM");
    use_bin(Some(to.clone()));
    let _w = WorkerProc::spawn(&c.all(), None, "uw1", &worker_dir, &["--runtime", "sim"]);
    let api = c.api(1).to_string();
    wait_until("everything on the new build, the tasks running", WAIT, || {
        let (m, w) = builds(&api);
        (m.iter().chain(&w).all(|v| new_build(v)) && running_tasks(&api) == 3).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = writer.join().unwrap();
    eprintln!(
        "{ok} writes acknowledged during the upgrade, {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} writes failed during the upgrade: {failed:?}",
        failed.len(),
        ok + failed.len()
    );
    assert!(ok > 10, "only {ok} writes during the upgrade");
    // A linearizable read: `api` may be a follower that has not applied the last
    // acknowledged create yet, and that lag is not a lost write.
    let out = warren(&api, &["service", "ls", "--consistent", "-o", "json"]);
    assert!(
        out.status.success(),
        "service ls --consistent failed: {}",
        stderr(&out)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: std::collections::BTreeSet<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    let missing: Vec<String> = (0..ok)
        .map(|i| format!("w{i}"))
        .filter(|n| !names.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "writes acknowledged during the upgrade are missing: {missing:?}"
    );
    assert_eq!(names.len(), ok + 1, "services listed: {names:?}");
}
