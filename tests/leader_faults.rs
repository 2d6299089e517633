#![cfg(not(madsim))]
//! Leaders that fail in the ways real ones do, with real processes on 127.0.0.x: cut off
//! from both peers (SIGSTOP on the peers), frozen (SIGSTOP on the leader), killed under a
//! stream of writes, and out of disk space. Each test polls conditions with deadlines.

mod common;

use common::*;
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

/// A leader cut off from both peers stops acting as leader within an election timeout or
/// so: it answers writes at once with Unavailable naming what it knows, and `cluster info`
/// no longer shows it as the leader. When the peers come back, the cluster takes writes.
#[test]
fn an_isolated_leader_steps_down_and_says_so() {
    let c = Cluster::form(3);
    let leader = wait_cluster(&[c.api(1), c.api(2), c.api(3)], &[1, 2, 3], FORM);
    for p in c.others(leader) {
        c.procs[p as usize - 1].signal(Signal::SIGSTOP);
    }
    let api = c.api(leader).to_string();
    let info = wait_until(
        "the isolated leader to stop reporting itself as leader",
        Duration::from_secs(10),
        || info(&api).filter(|i| i["leader_id"] == 0),
    );
    assert!(
        info["leader_note"].as_str().unwrap().contains("no quorum"),
        "{info}"
    );
    let started = Instant::now();
    let out = warren(
        &api,
        &["service", "create", "-d", "cut-off", "--image", "busybox"],
    );
    let took = started.elapsed();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no quorum"), "{}", stderr(&out));
    assert!(took < Duration::from_secs(2), "the refusal took {took:?}");
    for p in c.others(leader) {
        c.procs[p as usize - 1].signal(Signal::SIGCONT);
    }
    wait_until("writes to work again", FORM, || {
        warren(
            &c.all(),
            &["service", "create", "-d", "healed", "--image", "busybox"],
        )
        .status
        .success()
        .then_some(())
    });
}

/// Writes sent to a follower while the leader is frozen (SIGSTOP) reach the newly elected
/// leader instead of waiting out the pause.
#[test]
fn forwarded_writes_do_not_wait_out_a_frozen_leader() {
    let c = Cluster::form(3);
    let leader = wait_cluster(&[c.api(1), c.api(2), c.api(3)], &[1, 2, 3], FORM);
    let follower = c.others(leader)[0];
    c.procs[leader as usize - 1].signal(Signal::SIGSTOP);
    let started = Instant::now();
    let out = warren(
        c.api(follower),
        &["service", "create", "-d", "during-pause", "--image", "busybox"],
    );
    let took = started.elapsed();
    c.procs[leader as usize - 1].signal(Signal::SIGCONT);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        took < Duration::from_secs(5),
        "the write waited {took:?} for the frozen leader"
    );
}

/// A leader killed -9 under a stream of creates: every create through the CLI with all
/// managers listed ends with a definite answer (the client retries with the same request
/// id), and every acknowledged create exists exactly once.
#[test]
fn writes_across_a_leader_kill_end_with_a_definite_answer() {
    let mut c = Cluster::form(3);
    let leader = wait_cluster(&[c.api(1), c.api(2), c.api(3)], &[1, 2, 3], FORM);
    let all = c.all();
    let writer = {
        let all = all.clone();
        std::thread::spawn(move || {
            (0..30)
                .map(|i| {
                    let name = format!("s{i}");
                    let out = warren(&all, &["service", "create", "-d", &name, "--image", "busybox"]);
                    (name, out.status.success(), stderr(&out))
                })
                .collect::<Vec<_>>()
        })
    };
    wait_until("some writes to land", FORM, || {
        (services(c.api(leader)).len() >= 5).then_some(())
    });
    c.procs[leader as usize - 1].kill9();
    let results = writer.join().unwrap();
    let survivor = c.api(c.others(leader)[0]).to_string();
    let names = services(&survivor);
    for (name, ok, err) in &results {
        assert!(*ok, "{name}: {err}");
        assert!(names.contains_key(name), "{name} acknowledged but missing");
    }
    assert_eq!(names.len(), 30);
}

/// After a leader change, the new leader reports a manager it has never reached as
/// unreachable with an unknown lag, not 0.
#[test]
fn lag_of_a_never_reached_manager_is_unknown() {
    let mut c = Cluster::form(3);
    let leader = wait_cluster(&[c.api(1), c.api(2), c.api(3)], &[1, 2, 3], FORM);
    let others = c.others(leader);
    let (dead, keep) = (others[0], others[1]);
    c.procs[dead as usize - 1].kill9();
    c.procs[leader as usize - 1].kill9();
    let restarted = c.procs[leader as usize - 1].restart();
    c.procs[leader as usize - 1] = restarted;
    let apis = [c.api(leader), c.api(keep)];
    let info = wait_until("a new leader among the two", FORM, || {
        apis.iter()
            .find_map(|a| info(a).filter(|i| i["leader_id"] != 0 && i["answered_by"] == i["leader_id"]))
    });
    let m = info["managers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == dead)
        .unwrap()
        .clone();
    assert_eq!(m["replication_lag"], serde_json::Value::Null, "{info}");
    assert_eq!(m["reachable"], false, "{info}");
}

/// The leader's disk fills: its Raft core stops on the failed write and the process exits
/// non-zero with the reason (so a supervisor restarts it) instead of living on as a leader
/// of term 1; the others elect a leader and take writes.
#[test]
fn a_leader_whose_disk_fills_exits_and_the_others_carry_on() {
    let tmp = tempfile::tempdir().unwrap();
    // The data dir is the mount point, so the process log (beside it) is not on the small disk.
    let mnt = tmp.path().join("m1");
    std::fs::create_dir_all(&mnt).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"])
        .arg(&mnt)
        .status()
        .expect("mount");
    assert!(
        st.success(),
        "mounting a tmpfs needs root (the test suite runs as root)"
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(mnt.clone());

    let dirs = vec![mnt.clone(), tmp.path().join("m2"), tmp.path().join("m3")];
    let c = Cluster::form_in(tempfile::tempdir().unwrap(), dirs);
    let mut procs = c.procs;
    // Make manager 1 the leader if it is not (it usually is: it bootstrapped).
    let leader = wait_cluster(&[&procs[0].api, &procs[1].api, &procs[2].api], &[1, 2, 3], FORM);
    if leader != 1 {
        eprintln!("manager {leader} leads, not 1; the full disk hits a follower instead");
    }
    // Fill what is left of the small disk.
    let filler = mnt.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .status();
    let all = procs.iter().map(|p| p.api.clone()).collect::<Vec<_>>().join(",");
    // Writes with a big env grow the log until an append fails on manager 1.
    let big = format!("BIG={}", "x".repeat(15_000));
    let status = wait_until(
        "manager 1 to exit on the full disk",
        Duration::from_secs(60),
        || {
            if let Some(st) = procs[0].child.try_wait().unwrap() {
                return Some(st);
            }
            let name = format!("fill-{}", Instant::now().elapsed().as_nanos() % 1_000_000_007);
            let _ = warren(
                &all,
                &[
                    "service", "create", "-d", &name, "--image", "busybox", "--env", &big,
                ],
            );
            None
        },
    );
    assert!(!status.success());
    let log = procs[0].log_text();
    assert!(
        log.contains("Raft core stopped") || log.contains("fail-stop"),
        "{log}"
    );
    let rest = format!("{},{}", procs[1].api, procs[2].api);
    wait_until("the others to take writes", FORM, || {
        warren(
            &rest,
            &["service", "create", "-d", "after-full-disk", "--image", "busybox"],
        )
        .status
        .success()
        .then_some(())
    });
    std::fs::remove_file(&filler).unwrap();
}
