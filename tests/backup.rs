//! Backup and restore as real processes (`--runtime sim` workers; tests/containerd.rs does
//! it with real containers): `cluster backup`, a manager lost for good, `cluster init
//! --restore` on a new data dir, the workers re-attaching without restarting anything, and
//! every refusal of a bad backup file.

#![cfg(not(madsim))]

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);
const SERVICES: usize = 50;

fn sim_worker(manager: &str, token: &str, id: &str, data_dir: &Path) -> WorkerProc {
    WorkerProc::spawn(
        manager,
        Some(token),
        id,
        data_dir,
        &["--cpus", "8", "--memory", "8GiB", "--runtime", "sim"],
    )
}

/// Every task of the cluster: id -> (service, state, node, container).
fn tasks(api: &str) -> BTreeMap<String, (String, String, String, String)> {
    all_tasks(api)
        .into_iter()
        .map(|t| {
            let state = warren::proto::v1::TaskState::try_from(t.state)
                .map(|s| s.as_str_name().to_string())
                .unwrap_or_default();
            (t.id, (t.service_name, state, t.node_id, t.container_id))
        })
        .collect()
}

fn running(tasks: &BTreeMap<String, (String, String, String, String)>) -> usize {
    tasks.values().filter(|t| t.1 == "TASK_STATE_RUNNING").count()
}

fn started(w: &WorkerProc) -> usize {
    w.log_text().matches("task started").count()
}

/// `cluster init --restore FILE` into `data_dir`, which must fail without creating anything;
/// its error text.
fn refused_restore(file: &Path, data_dir: &Path, extra: &[&str]) -> String {
    let api = format!("127.0.0.1:{}", free_port());
    let raft = format!("127.0.0.1:{}", free_port());
    let mut args = ManagerProc::init_args(&api, &raft, data_dir);
    args.push("--restore".into());
    args.push(file.display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    let existed = data_dir.exists();
    let out = std::process::Command::new(bin())
        .args(&args)
        .output()
        .expect("running warren");
    assert!(
        !out.status.success(),
        "restore from {} was accepted",
        file.display()
    );
    if !existed {
        assert!(
            !data_dir.exists(),
            "a refused restore created {}",
            data_dir.display()
        );
    }
    stderr(&out)
}

#[test]
fn backup_then_restore_on_a_new_data_dir_and_workers_reattach() {
    let tmp = tempfile::tempdir().unwrap();
    let m = ManagerProc::start(&tmp.path().join("m1"));
    let api = m.api.clone();
    let token = warren(&api, &["cluster", "join-token", "worker", "-q"]);
    let token = stdout(&token).trim().to_string();
    let workers: Vec<WorkerProc> = ["w1", "w2"]
        .iter()
        .map(|w| sim_worker(&api, &token, w, &tmp.path().join(w)))
        .collect();
    wait_until("both workers registered", WAIT, || {
        (json_of(&api, &["node", "ls"]).as_array().unwrap().len() == 2).then_some(())
    });
    for i in 0..SERVICES {
        create_service(&api, &format!("svc-{i:02}"), 1);
    }
    let before = wait_until("every task running", WAIT, || {
        let t = tasks(&api);
        (running(&t) == SERVICES).then_some(t)
    });
    let cluster_id = info(&api).unwrap()["cluster_id"].clone();

    // The backup: 0600, with a warning, and a summary that says what it holds.
    let file = tmp.path().join("cluster.wbk");
    let out = warren(&api, &["cluster", "backup", "--out", &file.display().to_string()]);
    assert!(out.status.success(), "backup: {}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("{SERVICES} services")),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("private key"),
        "no warning: {}",
        stderr(&out)
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let again = warren(&api, &["cluster", "backup", "--out", &file.display().to_string()]);
    assert!(
        !again.status.success(),
        "an existing file was replaced without --force"
    );
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));

    // Written after the backup: gone after the restore, and its task stopped.
    create_service(&api, "after-backup", 1);
    wait_until("the later service's task running", WAIT, || {
        (running(&tasks(&api)) == SERVICES + 1).then_some(())
    });
    let started_before: usize = workers.iter().map(started).sum();
    assert_eq!(started_before, SERVICES + 1);

    // Every bad file is refused and nothing is created.
    let bytes = std::fs::read(&file).unwrap();
    let bad = |name: &str, content: &[u8]| {
        let p = tmp.path().join(name);
        std::fs::write(&p, content).unwrap();
        p
    };
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    let cases: Vec<(std::path::PathBuf, &str)> = vec![
        (bad("flipped.wbk", &flipped), "checksum mismatch"),
        (bad("truncated.wbk", &bytes[..bytes.len() - 100]), "truncated"),
        (bad("header-only.wbk", &bytes[..30]), "truncated"),
        (
            bad("foreign.wbk", b"{\"not\": \"a backup\"}"),
            "not a Warren backup",
        ),
        (bad("empty.wbk", b""), "not a Warren backup"),
        (tmp.path().join("absent.wbk"), "cannot read the backup"),
    ];
    for (path, want) in &cases {
        let e = refused_restore(path, &tmp.path().join("never"), &[]);
        assert!(e.contains(want), "{}: {e}", path.display());
    }
    let e = refused_restore(&file, &m.data_dir, &[]);
    assert!(e.contains("already holds a manager"), "{e}");
    let e = refused_restore(&file, &tmp.path().join("never"), &["--rejoin-grace", "1s"]);
    assert!(e.contains("--rejoin-grace"), "{e}");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = busy.local_addr().unwrap().to_string();
    let e = refused_restore(&file, &tmp.path().join("never"), &["--metrics-addr", &busy]);
    assert!(e.contains("cannot listen"), "{e}");

    // The manager is lost for good; the workers keep running what they have.
    let (api_addr, raft_addr) = (m.api.clone(), m.raft.clone());
    let mut m = m;
    m.kill9();
    keep_admin_credential(&m.data_dir, &tmp.path().join("operator"), &[&api_addr]);
    std::fs::remove_dir_all(&m.data_dir).unwrap();

    // A new cluster from the backup, at the same addresses: the workers find it on their own.
    let restored_dir = tmp.path().join("restored");
    let r = ManagerProc::restore(&file, &api_addr, &raft_addr, &restored_dir);
    // The old operator credential still works: the CA is the backup's.
    r.wait_ready();
    assert_eq!(info(&api_addr).unwrap()["cluster_id"], cluster_id);
    wait_until("the restore to complete", WAIT, || {
        r.log_text().contains("restore complete").then_some(())
    });
    let after = wait_until(
        "every backed-up task running again, the later one gone",
        WAIT,
        || {
            let t = tasks(&api_addr);
            let names: std::collections::BTreeSet<&str> = t.values().map(|x| x.0.as_str()).collect();
            (running(&t) == SERVICES && !names.contains("after-backup")).then_some(t)
        },
    );
    let svcs = services(&api_addr);
    assert_eq!(svcs.len(), SERVICES, "{:?}", svcs.keys());
    assert!(!svcs.contains_key("after-backup"));
    // Same tasks on the same nodes with the same containers, and no worker started one.
    let same = |t: &BTreeMap<String, (String, String, String, String)>| {
        t.iter()
            .filter(|(_, v)| v.1 == "TASK_STATE_RUNNING")
            .map(|(id, v)| (id.clone(), v.2.clone(), v.3.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        same(&after),
        same(&before),
        "the tasks are not the backed-up ones"
    );
    wait_until("the later service's task stopped by its worker", WAIT, || {
        workers
            .iter()
            .any(|w| w.log_text().contains("task shut down"))
            .then_some(())
    });
    let started_after: usize = workers.iter().map(started).sum();
    assert_eq!(
        started_after, started_before,
        "a worker started a task again after the restore"
    );

    // The restored cluster takes writes, and a fresh worker token joins a new worker.
    create_service(&api_addr, "after-restore", 2);
    let token = stdout(&warren(&api_addr, &["cluster", "join-token", "worker", "-q"]))
        .trim()
        .to_string();
    let _w3 = sim_worker(&api_addr, &token, "w3", &tmp.path().join("w3"));
    wait_until("the new service running", WAIT, || {
        (running(&tasks(&api_addr)) == SERVICES + 2).then_some(())
    });
    drop(workers);
}
