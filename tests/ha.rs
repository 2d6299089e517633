#![cfg(not(madsim))]
//! High availability with real processes on 127.0.0.x: managers formed with tokens, leader
//! kill -9, restart from the data dir, refused joins, quorum-safe removal.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn three_managers_fail_over_and_the_killed_one_rejoins() {
    let mut c = Cluster::form(3);
    let all = c.apis_except(&[]);
    let leader = wait_cluster(&all, &[1, 2, 3], FORM);
    let cluster_id = info(c.api(1)).unwrap()["cluster_id"].clone();
    for api in &all {
        let i = info(api).unwrap();
        assert_eq!(i["cluster_id"], cluster_id);
        assert_eq!(i["leader_id"], leader);
    }
    assert!(warren(
        c.api(1),
        &["service", "create", "-d", "before", "--image", "busybox"]
    )
    .status
    .success());

    c.procs[leader as usize - 1].kill9();
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != leader).collect();
    for s in &survivors {
        let name = format!("after-via-{s}");
        let out = warren(
            c.api(*s),
            &["service", "create", "-d", &name, "--image", "busybox"],
        );
        assert!(
            out.status.success(),
            "create through survivor {s}: {}",
            stderr(&out)
        );
    }
    let before = services(c.api(survivors[0]));
    assert_eq!(before.len(), 3);

    // The killed manager restarts from its data dir alone and is a voter with the same state.
    let restarted = c.procs[leader as usize - 1].restart();
    c.procs[leader as usize - 1] = restarted;
    wait_cluster(&c.apis_except(&[]), &[1, 2, 3], FORM);
    wait_until("the restarted manager to catch up", FORM, || {
        (services(c.api(leader)) == before).then_some(())
    });
    assert_eq!(info(c.api(leader)).unwrap()["cluster_id"], cluster_id);
}

#[test]
fn five_managers_keep_accepting_writes_with_two_killed() {
    let mut c = Cluster::form(5);
    let leader = wait_cluster(&c.apis_except(&[]), &[1, 2, 3, 4, 5], FORM);
    // Kill the leader and one more.
    let other = if leader == 5 { 4 } else { 5 };
    c.procs[leader as usize - 1].kill9();
    c.procs[other as usize - 1].kill9();
    let live = c.apis_except(&[leader, other]);
    for (k, api) in live.iter().enumerate() {
        let name = format!("svc-{k}");
        let out = warren(api, &["service", "create", "-d", &name, "--image", "busybox"]);
        assert!(out.status.success(), "create through {api}: {}", stderr(&out));
    }
    for api in &live {
        wait_until("survivors to serve every write", FORM, || {
            (services(api).len() == 3).then_some(())
        });
    }
}

#[test]
fn refused_joins_leave_membership_unchanged() {
    let c = Cluster::form(3);
    let tmp = tempfile::tempdir().unwrap();
    let api1 = c.api(1).to_string();
    let leaders = c.apis_except(&[]).join(",");

    let worker = {
        let out = warren(&api1, &["cluster", "join-token", "worker", "-q"]);
        stdout(&out).trim().to_string()
    };
    let rotated_out = manager_token(&api1, &[]);
    let current = manager_token(&api1, &["--rotate"]);
    let expiring = manager_token(&api1, &["--ttl", "1s"]);
    let other_cluster = {
        let other = ManagerProc::start(&tmp.path().join("other"));
        manager_token(&other.api, &[])
    };
    let garbage = "WRN1-nothing-to-see".to_string();
    // Wait for the short-lived token to expire (a wait on the clock itself, not on a process).
    std::thread::sleep(Duration::from_millis(1_100));

    let cases: Vec<(&str, u64, String, &str)> = vec![
        ("worker token", 7, worker, "this is a worker token"),
        ("expired", 7, expiring, "expired"),
        ("rotated out", 7, rotated_out, "rotated out or never issued"),
        ("garbage", 7, garbage, "malformed"),
        // Caught before the secret is sent: the cluster's CA is not the token's.
        ("other cluster", 7, other_cluster, "does not match the join token"),
        ("node id in use", 2, current.clone(), "manager id 2 is in use"),
    ];
    for (what, id, token, expect) in cases {
        let mut j = ManagerProc::join(id, 9, &token, &leaders, &tmp.path().join(what.replace(' ', "-")));
        let status = j
            .wait_exit(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("{what}: the joiner kept running"));
        assert!(!status.success(), "{what}: the join must fail");
        let log = j.log_text();
        assert!(log.contains(expect), "{what}: log lacks {expect:?}:\n{log}");
        assert!(
            !log.contains(&token) || what == "garbage",
            "{what}: the token leaked into the log"
        );
        for api in c.apis_except(&[]) {
            assert_eq!(
                voters(&info(api).unwrap()),
                vec![1, 2, 3],
                "{what}: membership changed"
            );
        }
    }
}

#[test]
fn removing_a_manager_that_breaks_quorum_needs_force() {
    let mut c = Cluster::form(3);
    let leader = wait_cluster(&c.apis_except(&[]), &[1, 2, 3], FORM);
    let dead = if leader == 3 { 2 } else { 3 };
    let keep = [1, 2, 3]
        .into_iter()
        .find(|i| *i != leader && *i != dead)
        .unwrap();
    c.procs[dead as usize - 1].kill9();
    let leader_api = c.api(leader).to_string();
    wait_until(
        "the leader to see the killed manager as unreachable",
        FORM,
        || {
            let i = info(&leader_api)?;
            let m = i["managers"]
                .as_array()?
                .iter()
                .find(|m| m["id"] == dead)?
                .clone();
            (m["reachable"] == false).then_some(())
        },
    );

    // Removing the live follower would leave {leader, dead}: 1 reachable of 2, below quorum.
    let out = warren(&leader_api, &["manager", "remove", &keep.to_string()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--force") && stderr(&out).contains("quorum"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        voters(&info(&leader_api).unwrap()),
        vec![1, 2, 3],
        "a refused removal changes nothing"
    );

    // Removing the dead one keeps a live quorum and goes through.
    let out = warren(&leader_api, &["manager", "remove", &dead.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut want = vec![leader, keep];
    want.sort();
    wait_cluster(&c.apis_except(&[dead]), &want, FORM);
    // The last manager can never be removed.
    let out = warren(&leader_api, &["manager", "remove", "9"]);
    assert!(
        !out.status.success() && stderr(&out).contains("not found"),
        "{}",
        stderr(&out)
    );
}

/// SIGTERM on the leader hands leadership to a caught-up follower before the process exits:
/// one election (the successor's, asked for), and the survivors take writes at once.
#[test]
fn a_leader_stopped_with_sigterm_hands_leadership_over_first() {
    let mut c = Cluster::form(3);
    let leader = wait_cluster(&c.apis_except(&[]), &[1, 2, 3], FORM);
    let term = info(c.api(leader)).unwrap()["term"].as_u64().unwrap();
    assert!(warren(
        c.api(leader),
        &["service", "create", "-d", "before", "--image", "busybox"]
    )
    .status
    .success());

    let old = &mut c.procs[leader as usize - 1];
    old.signal(nix::sys::signal::Signal::SIGTERM);
    let st = old
        .wait_exit(Duration::from_secs(20))
        .expect("the leader to exit after SIGTERM");
    assert!(st.success(), "exit status {st:?}; log:\n{}", old.log_text());
    let log = old.log_text();
    assert!(
        log.contains("leadership handed over"),
        "no handoff in the leader's log:\n{log}"
    );

    let new = wait_cluster(&c.apis_except(&[leader]), &[1, 2, 3], FORM);
    assert_ne!(new, leader);
    let new_log = c.procs[new as usize - 1].log_text();
    assert!(
        new_log.contains("campaigning: the leader hands over"),
        "the successor did not campaign on request:\n{new_log}"
    );
    let i = info(c.api(new)).unwrap();
    assert_eq!(
        i["term"].as_u64().unwrap(),
        term + 1,
        "more than one election: {i}"
    );
    for s in c.others(leader) {
        let name = format!("after-via-{s}");
        let out = warren(
            c.api(s),
            &["service", "create", "-d", &name, "--image", "busybox"],
        );
        assert!(out.status.success(), "create through {s}: {}", stderr(&out));
    }
    assert_eq!(services(c.api(new)).len(), 3);
}

/// `manager leave` on the leader: leadership goes to another voter first, then the new leader
/// takes the old one out of the membership.
#[test]
fn manager_leave_on_the_leader_hands_over_then_removes_it() {
    let c = Cluster::form(3);
    let leader = wait_cluster(&c.apis_except(&[]), &[1, 2, 3], FORM);
    let out = warren(c.api(leader), &["manager", "leave"]);
    assert!(out.status.success(), "leave: {}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("manager {leader} removed; 2 managers remain")),
        "{}",
        stdout(&out)
    );
    let rest = c.others(leader);
    let apis: Vec<&str> = rest.iter().map(|i| c.api(*i)).collect();
    handed_over_then_removed(&c, leader);
    for (k, api) in apis.iter().enumerate() {
        let out = warren(
            api,
            &[
                "service",
                "create",
                "-d",
                &format!("via-{k}"),
                "--image",
                "busybox",
            ],
        );
        assert!(out.status.success(), "create through {api}: {}", stderr(&out));
    }
}

/// `manager remove ID` of the leader, asked through a follower: the leader hands over
/// first, and the new leader removes it.
#[test]
fn removing_the_leader_through_a_follower_hands_over_first() {
    let c = Cluster::form(3);
    let leader = wait_cluster(&c.apis_except(&[]), &[1, 2, 3], FORM);
    let follower = c.others(leader)[0];
    let out = warren(c.api(follower), &["manager", "remove", &leader.to_string()]);
    assert!(out.status.success(), "remove: {}", stderr(&out));
    handed_over_then_removed(&c, leader);
}

/// The other two agree on a new leader and on being the only voters, and the old leader's
/// log shows that it handed over before it was removed.
fn handed_over_then_removed(c: &Cluster, leader: u64) {
    let rest = c.others(leader);
    let apis: Vec<&str> = rest.iter().map(|i| c.api(*i)).collect();
    let new = wait_cluster(&apis, &rest, FORM);
    assert_ne!(new, leader);
    let log = c.procs[leader as usize - 1].log_text();
    assert!(
        log.contains("leadership handed over"),
        "no handoff before the removal:\n{log}"
    );
}

/// Quorum loss: two of three managers are gone for good (killed, data dirs deleted). The
/// survivor, restarted with `--force-new-cluster`, is the only voter with every write the
/// cluster acknowledged, takes writes, and a new manager joins it with a fresh token. The
/// worker keeps its tasks running throughout and re-attaches. While a quorum is reachable,
/// the flag is refused and changes nothing.
#[test]
fn force_new_cluster_recovers_from_the_loss_of_two_of_three_managers() {
    let mut c = Cluster::form(3);
    let all: Vec<String> = c.apis_except(&[]).iter().map(|s| s.to_string()).collect();
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let leader = wait_cluster(&all, &[1, 2, 3], FORM);
    let others = c.others(leader);
    let (survivor, other) = (others[0], others[1]);
    let token = stdout(&warren(c.api(leader), &["cluster", "join-token", "worker", "-q"]))
        .trim()
        .to_string();
    let w = WorkerProc::spawn(
        &c.all(),
        Some(&token),
        "w1",
        &c._tmp.path().join("w1"),
        &["--runtime", "sim", "--cpus", "4", "--memory", "4GiB"],
    );
    for i in 0..5 {
        create_service(c.api(leader), &format!("early-{i}"), 1);
    }
    // Every service has one replica.
    let running = |api: &str| {
        let v = json_of(api, &["node", "ls"]);
        let ready = v
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == "w1" && n["status"] == "ready");
        ready && running_tasks(api) == services(api).len()
    };
    wait_until("the early services running", FORM, || {
        running(c.api(leader)).then_some(())
    });
    let started = || w.log_text().matches("task started").count();
    assert_eq!(started(), 5);

    // Refused while the others make a quorum with it: nothing changes.
    let s_dir = c.procs[survivor as usize - 1].data_dir.clone();
    c.procs[survivor as usize - 1].kill9();
    let out = std::process::Command::new(bin())
        .args(["manager", "start", "--force-new-cluster", "--data-dir"])
        .arg(&s_dir)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "forced a new cluster with a quorum reachable"
    );
    assert!(stderr(&out).contains("a quorum"), "{}", stderr(&out));
    c.procs[survivor as usize - 1] = c.procs[survivor as usize - 1].restart();
    wait_cluster(&all, &[1, 2, 3], FORM);

    // The majority the last writes need is the leader and the survivor (the other is
    // stopped): the survivor holds every acknowledged write, some perhaps only as appended.
    c.procs[other as usize - 1].signal(nix::sys::signal::Signal::SIGSTOP);
    let leader_api = c.api(leader).to_string();
    for i in 0..5 {
        create_service(&leader_api, &format!("late-{i}"), 1);
    }
    // The loss: right after the last acknowledgement.
    c.procs[leader as usize - 1].kill9();
    c.procs[other as usize - 1].kill9();
    let operator = c._tmp.path().join("operator");
    keep_admin_credential(&c.procs[0].data_dir, &operator, &all);
    for id in [leader, other] {
        std::fs::remove_dir_all(&c.procs[id as usize - 1].data_dir).unwrap();
    }
    c.procs[survivor as usize - 1].kill9();

    let s_api = c.api(survivor).to_string();
    let args: Vec<String> = [
        "manager",
        "start",
        "--force-new-cluster",
        "--data-dir",
        &s_dir.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let p = &c.procs[survivor as usize - 1];
    let forced = ManagerProc::spawn(&args, &p.api, &p.raft, &p.data_dir);
    c.procs[survivor as usize - 1] = forced;
    let i =
        wait_until_opt(FORM, || info(&s_api).filter(|i| i["leader_id"] == survivor)).unwrap_or_else(|| {
            panic!(
                "the survivor does not lead alone; its log:\n{}",
                c.procs[survivor as usize - 1].log_text()
            )
        });
    assert_eq!(voters(&i), vec![survivor]);
    let names = services(&s_api);
    for i in 0..5 {
        for prefix in ["early", "late"] {
            assert!(
                names.contains_key(&format!("{prefix}-{i}")),
                "acknowledged service {prefix}-{i} is missing after the recovery"
            );
        }
    }
    create_service(&s_api, "after-recovery", 1);
    wait_until("every service running, the worker re-attached", FORM, || {
        running(&s_api).then_some(())
    });
    assert_eq!(started(), 11, "the worker restarted tasks it already ran");

    // A new manager joins the recovered cluster with a fresh token.
    let token = manager_token(&s_api, &[]);
    let j = ManagerProc::join(7, 7, &token, &s_api, &c._tmp.path().join("m7"));
    wait_cluster(&[&s_api, &j.api], &[survivor, 7], FORM);
}
