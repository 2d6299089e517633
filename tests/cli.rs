#![cfg(not(madsim))]
//! Real-process tests: `warren cluster init` as a child process on 127.0.0.1 with a temp data
//! dir, driven through the `warren` CLI binary.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn service_lifecycle_survives_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m1");
    let mut m = ManagerProc::start(&dir);
    let api = m.api.clone();

    let out = warren(
        &api,
        &[
            "service",
            "create",
            "-d",
            "web",
            "--image",
            "busybox:latest",
            "--replicas",
            "3",
            "-e",
            "MODE=prod",
            "--",
            "httpd",
            "-f",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let web_id = stdout(&out).trim().to_string();
    assert_eq!(web_id.len(), 25, "create prints the new id: {web_id:?}");
    for (name, replicas) in [("api", "2"), ("db", "1")] {
        let out = warren(
            &api,
            &[
                "service",
                "create",
                "-d",
                name,
                "--image",
                "busybox",
                "--replicas",
                replicas,
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }

    let table = stdout(&warren(&api, &["service", "ls"]));
    for name in ["web", "api", "db"] {
        assert!(table.contains(name), "table lacks {name}:\n{table}");
    }
    assert!(table.contains("REPLICAS"));

    let out = warren(&api, &["service", "inspect", "web"]);
    assert!(out.status.success());
    let web: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(web["id"], web_id.as_str());
    assert_eq!(web["replicas"], 3);
    assert_eq!(web["env"]["MODE"], "prod");
    assert_eq!(web["command"], serde_json::json!(["httpd", "-f"]));
    // by id too
    assert!(warren(&api, &["service", "inspect", &web_id]).status.success());

    assert!(warren(&api, &["service", "scale", "web=5"]).status.success());
    assert!(warren(&api, &["service", "scale", "api", "--replicas", "0"])
        .status
        .success());
    assert!(warren(&api, &["service", "rm", "db"]).status.success());
    let before = services(&api);
    assert_eq!(before.keys().collect::<Vec<_>>(), ["api", "web"]);
    assert_eq!(before["web"]["replicas"], 5);
    assert_eq!(before["api"]["replicas"], 0);
    let cluster_before: serde_json::Value =
        serde_json::from_slice(&warren(&api, &["cluster", "info", "-o", "json"]).stdout).unwrap();

    m.kill9();
    assert!(
        !warren(&api, &["service", "ls"]).status.success(),
        "the manager is down"
    );
    let m2 = ManagerProc::start_on(&dir, &m.api, &m.raft);
    let after = services(&m2.api);
    assert_eq!(after, before, "every acknowledged change survives kill -9");
    let cluster_after: serde_json::Value =
        serde_json::from_slice(&warren(&api, &["cluster", "info", "-o", "json"]).stdout).unwrap();
    assert_eq!(
        cluster_after["cluster_id"], cluster_before["cluster_id"],
        "restart resumes, never re-bootstraps"
    );
}

/// Each bad input gives a non-zero exit and a message naming the problem, and changes nothing.
#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let m = ManagerProc::start(&tmp.path().join("m1"));
    let api = m.api.as_str();
    assert!(warren(
        api,
        &[
            "service",
            "create",
            "-d",
            "web",
            "--image",
            "busybox",
            "--replicas",
            "2"
        ]
    )
    .status
    .success());
    let before = services(api);

    let long = "a".repeat(64);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["service", "create", "-d", "UPPER", "--image", "busybox"],
            "not a valid service name",
        ),
        (
            vec!["service", "create", "-d", "a_b", "--image", "busybox"],
            "'_' is not allowed",
        ),
        (
            vec!["service", "create", "-d", &long, "--image", "busybox"],
            "64 characters",
        ),
        (
            vec!["service", "create", "-d", "", "--image", "busybox"],
            "it is empty",
        ),
        (
            vec![
                "service",
                "create",
                "-d",
                "api",
                "--image",
                "busybox",
                "--replicas",
                "-1",
            ],
            "between 0 and 100000",
        ),
        (
            vec![
                "service",
                "create",
                "-d",
                "api",
                "--image",
                "busybox",
                "--replicas",
                "100001",
            ],
            "between 0 and 100000",
        ),
        (
            vec!["service", "create", "-d", "api", "--image", ""],
            "an image is required",
        ),
        (
            vec!["service", "create", "-d", "web", "--image", "busybox"],
            "already exists",
        ),
        (vec!["service", "inspect", "nope"], "\"nope\" not found"),
        (vec!["service", "scale", "nope=2"], "\"nope\" not found"),
        (vec!["service", "scale", "web=-1"], "between 0 and 100000"),
        (
            vec!["service", "scale", "web", "--replicas", "100001"],
            "between 0 and 100000",
        ),
        (vec!["service", "scale", "web=x"], "not a number"),
        (vec!["service", "delete", "nope"], "\"nope\" not found"),
        (vec!["service", "rm", "nope"], "\"nope\" not found"),
    ];
    for (args, expect) in cases {
        let out = warren(api, &args);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(
            stderr(&out).contains(expect),
            "{args:?}: stderr {:?} lacks {expect:?}",
            stderr(&out)
        );
    }
    assert_eq!(services(api), before, "refused commands changed the state");

    // A manager address with nothing behind it.
    let dead = format!("127.0.0.1:{}", free_port());
    let out = warren(&dead, &["service", "ls"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no manager answered"), "{}", stderr(&out));
    assert!(stderr(&out).contains(&dead));
    // With a list, the live one is used.
    let both = format!("{dead},{api}");
    assert!(warren(&both, &["service", "ls"]).status.success());
}

#[test]
fn data_dir_that_is_not_ours_is_refused_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |dir: &std::path::Path, node_id: &str| {
        let api = format!("127.0.0.1:{}", free_port());
        let raft = format!("127.0.0.1:{}", free_port());
        let mut args = ManagerProc::init_args(&api, &raft, dir);
        args[3] = node_id.into();
        Command::new(bin()).args(&args).output().unwrap()
    };

    // A directory holding something else.
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), b"keep me").unwrap();
    let out = run(&other, "1");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is not a Warren data directory") && stderr(&out).contains("notes.txt"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_dir(&other).unwrap().count(),
        1,
        "nothing was written"
    );
    assert_eq!(std::fs::read(other.join("notes.txt")).unwrap(), b"keep me");

    // A corrupt database file.
    let corrupt = tmp.path().join("corrupt");
    std::fs::create_dir(&corrupt).unwrap();
    std::fs::write(corrupt.join("warren.redb"), vec![0x5a; 8192]).unwrap();
    let out = run(&corrupt, "1");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cannot use data dir"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(corrupt.join("warren.redb")).unwrap(),
        vec![0x5a; 8192],
        "corrupt file left as it was"
    );

    // A data dir of another node id.
    let dir = tmp.path().join("m1");
    drop(ManagerProc::start(&dir));
    let out = run(&dir, "2");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("belongs to manager 1, not --node-id 2"),
        "{}",
        stderr(&out)
    );

    // A file where a directory should be.
    let file = tmp.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let out = run(&file, "1");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is a file, not a directory"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn api_address_in_use_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let m = ManagerProc::start(&tmp.path().join("m1"));
    let raft = format!("127.0.0.1:{}", free_port());
    let out = Command::new(bin())
        .args(ManagerProc::init_args(&m.api, &raft, &tmp.path().join("m2")))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is another process using --api-addr"),
        "{}",
        stderr(&out)
    );
}

/// With a small snapshot threshold the log is compacted behind snapshots, and a manager killed
/// with -9 restarts from snapshot + log with every acknowledged service.
#[test]
fn snapshots_compact_the_log_and_restore_after_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m1");
    let api = format!("127.0.0.1:{}", free_port());
    let raft = format!("127.0.0.1:{}", free_port());
    let flags = ["--snapshot-logs", "20"];
    let mut m = ManagerProc::start_with(&dir, &api, &raft, &flags);
    for i in 0..60 {
        let name = format!("s{i}");
        let out = warren(&api, &["service", "create", "-d", &name, "--image", "busybox"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert!(warren(&api, &["service", "scale", "s7=9"]).status.success());
    let info: serde_json::Value =
        serde_json::from_slice(&warren(&api, &["cluster", "info", "-o", "json"]).stdout).unwrap();
    assert!(
        info["snapshot_index"].as_u64().unwrap() >= 20,
        "a snapshot was built: {info}"
    );
    assert!(
        info["purged_index"].as_u64().unwrap() > 0,
        "the log was purged: {info}"
    );
    let before = services(&api);
    assert_eq!(before.len(), 60);

    m.kill9();
    let _m2 = ManagerProc::start_with(&dir, &api, &raft, &flags);
    assert_eq!(services(&api), before);
}

#[test]
fn sigterm_and_sigint_stop_the_manager_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    for sig in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
    ] {
        let dir = tmp.path().join(format!("{sig:?}"));
        let mut m = ManagerProc::start(&dir);
        assert!(
            warren(&m.api, &["service", "create", "-d", "web", "--image", "busybox"])
                .status
                .success()
        );
        m.signal(sig);
        let status = m
            .wait_exit(std::time::Duration::from_secs(10))
            .expect("the manager exits after the signal");
        assert!(status.success(), "{sig:?}: exit status {status:?}");
        // and resumes
        let m2 = ManagerProc::start_on(&dir, &m.api, &m.raft);
        assert!(services(&m2.api).contains_key("web"));
    }
}

/// `warren version` names this build and every node's as the cluster heard it; `--log-format
/// json` makes every daemon log line a JSON object with the span's ids; `warren completion`
/// prints a script for each shell.
#[test]
fn version_json_logs_and_completion() {
    let tmp = tempfile::tempdir().unwrap();
    let m = ManagerProc::start_with(
        &tmp.path().join("m1"),
        &format!("127.0.0.1:{}", free_port()),
        &format!("127.0.0.1:{}", free_port()),
        &["--log-format", "json"],
    );
    let token = stdout(&warren(&m.api, &["cluster", "join-token", "worker", "-q"]))
        .trim()
        .to_string();
    let _w = WorkerProc::spawn(
        &m.api,
        Some(&token),
        "vw1",
        &tmp.path().join("vw1"),
        &["--runtime", "sim"],
    );
    let v = wait_until("the worker's version known", Duration::from_secs(30), || {
        let v = json_of(&m.api, &["version"]);
        (v["cluster"]["workers"][0]["version"].is_string()).then_some(v)
    });
    let client = v["client"].as_str().unwrap();
    assert!(
        client.contains("commit ") && client.contains("state format 0x"),
        "{v}"
    );
    assert_eq!(v["cluster"]["managers"][0]["version"], client, "{v}");
    assert_eq!(v["cluster"]["managers"][0]["leader"], true, "{v}");
    assert_eq!(v["cluster"]["workers"][0]["id"], "vw1", "{v}");
    assert_eq!(v["cluster"]["workers"][0]["version"], client, "{v}");
    let table = stdout(&warren(&m.api, &["version"]));
    assert!(
        table.contains("manager 1 (leader)") && table.contains("worker vw1"),
        "{table}"
    );
    // No manager: the build is printed all the same, the cluster's part is unknown.
    let out = warren(&format!("127.0.0.1:{}", free_port()), &["version"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(client), "{}", stdout(&out));
    assert!(stderr(&out).contains("versions are unknown"), "{}", stderr(&out));

    let log = m.log_text();
    let mut lines = 0;
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
        lines += 1;
    }
    assert!(lines > 3, "{log}");
    assert!(
        log.lines().any(|l| l.contains("\"node_id\":1")),
        "no line carries the manager's span: {log}"
    );

    for (shell, want) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef warren"),
        ("fish", "complete -c warren"),
    ] {
        let out = Command::new(bin()).args(["completion", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        assert!(stdout(&out).contains(want), "{shell}: {}", stdout(&out));
        assert!(stdout(&out).contains("backup"), "{shell}: no subcommands");
    }
    let out = Command::new(bin()).args(["completion", "tcsh"]).output().unwrap();
    assert!(!out.status.success());
}
