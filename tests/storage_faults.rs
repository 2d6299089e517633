#![cfg(not(madsim))]
//! Damaged data directories, with real processes: an emptied database, flipped bytes in a
//! stored entry, overwritten blocks. Each must be refused at start with a message naming the
//! data dir, never served as data and never turned into a new cluster.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

/// A manager with services alpha and beta, stopped cleanly; returns its data dir's database.
fn stopped_manager_with_services(dir: &Path) -> (String, String, std::path::PathBuf) {
    let mut m = ManagerProc::start(dir);
    for name in ["alpha", "beta"] {
        let out = warren(&m.api, &["service", "create", "-d", name, "--image", "busybox"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    m.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        m.wait_exit(Duration::from_secs(20)).is_some(),
        "manager did not stop"
    );
    (m.api.clone(), m.raft.clone(), dir.join("warren.redb"))
}

/// Runs a manager command on `dir` and expects it to exit non-zero (not a panic) quickly,
/// with `needles` in its output.
fn expect_refusal(args: &[String], api: &str, raft: &str, dir: &Path, needles: &[&str]) {
    let mut p = ManagerProc::spawn(args, api, raft, dir);
    let status = p
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("{args:?} kept running on a damaged data dir:\n{}", p.log_text()));
    let log = p.log_text();
    assert!(!status.success(), "{args:?} succeeded:\n{log}");
    assert_ne!(status.code(), Some(101), "{args:?} panicked:\n{log}");
    for n in needles {
        assert!(log.contains(n), "{args:?}: output lacks {n:?}:\n{log}");
    }
}

fn start_args(dir: &Path) -> Vec<String> {
    vec![
        "manager".into(),
        "start".into(),
        "--data-dir".into(),
        dir.display().to_string(),
    ]
}

#[test]
fn an_emptied_database_is_refused_not_a_new_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m1");
    let (api, raft, db) = stopped_manager_with_services(&dir);
    std::fs::write(&db, b"").unwrap();
    let shown = dir.display().to_string();
    // The documented restart command, and `manager start`.
    expect_refusal(
        &ManagerProc::init_args(&api, &raft, &dir),
        &api,
        &raft,
        &dir,
        &[&shown, "empty", "operations.md"],
    );
    expect_refusal(&start_args(&dir), &api, &raft, &dir, &[&shown, "empty"]);
    assert_eq!(
        std::fs::metadata(&db).unwrap().len(),
        0,
        "a refused start wrote to the database"
    );
}

/// Every copy of `from` in the file becomes `to` (redb may keep older copies of a page).
fn replace_all(db: &Path, from: &[u8], to: &[u8]) -> usize {
    let mut bytes = std::fs::read(db).unwrap();
    let mut n = 0;
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + to.len()].copy_from_slice(to);
            n += 1;
        }
        i += 1;
    }
    std::fs::write(db, bytes).unwrap();
    n
}

#[test]
fn a_changed_byte_in_a_log_entry_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m1");
    let (api, raft, db) = stopped_manager_with_services(&dir);
    assert!(
        replace_all(&db, b"alpha", b"alphz") > 0,
        "service name not found in the file"
    );
    expect_refusal(
        &start_args(&dir),
        &api,
        &raft,
        &dir,
        &[&db.display().to_string(), "corrupt", "log entry", "checksum"],
    );
}

#[test]
fn overwritten_blocks_are_refused_or_harmless_never_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m1");
    let (api, raft, db) = stopped_manager_with_services(&dir);
    let pristine = std::fs::read(&db).unwrap();
    let blocks = pristine.len() / 4096;
    assert!(blocks >= 2, "database has {} bytes", pristine.len());
    let (mut refused, mut harmless) = (0, 0);
    // Every block of a small database (the first one holds redb's header).
    for b in 0..blocks.min(48) {
        let mut bytes = pristine.clone();
        for (k, x) in bytes[b * 4096..(b + 1) * 4096].iter_mut().enumerate() {
            *x = (k as u8).wrapping_mul(31).wrapping_add(7);
        }
        std::fs::write(&db, &bytes).unwrap();
        let mut p = ManagerProc::spawn(&start_args(&dir), &api, &raft, &dir);
        let outcome = wait_until(
            &format!("block {b}: the manager to refuse or serve"),
            Duration::from_secs(30),
            || {
                if let Some(st) = p.child.try_wait().unwrap() {
                    return Some(Err(st));
                }
                let out = warren(&api, &["service", "ls", "-o", "json"]);
                out.status.success().then(|| Ok(stdout(&out)))
            },
        );
        match outcome {
            Err(st) => {
                let log = p.log_text();
                assert_ne!(st.code(), Some(101), "block {b}: panicked:\n{log}");
                assert!(
                    log.contains(&dir.display().to_string()),
                    "block {b}: the error does not name the data dir:\n{log}"
                );
                refused += 1;
            }
            Ok(ls) => {
                // Started: then it must serve exactly what was written.
                assert!(
                    ls.contains("\"alpha\"") && ls.contains("\"beta\"") && !ls.contains("alphz"),
                    "block {b}: {ls}"
                );
                harmless += 1;
            }
        }
        drop(p);
    }
    eprintln!("{blocks} blocks: {refused} refused, {harmless} unused");
    assert!(refused > 0, "no overwritten block was noticed");
}

/// A database put back from an older copy holds less log than the manager knew to be
/// committed: it is refused at start (voting with it could lose acknowledged writes).
#[test]
fn a_database_restored_from_an_older_copy_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m1");
    let (api, raft, db) = stopped_manager_with_services(&dir);
    let old = std::fs::read(&db).unwrap();
    let mut m = ManagerProc::spawn(&start_args(&dir), &api, &raft, &dir);
    wait_until("the manager to serve again", Duration::from_secs(20), || {
        warren(&api, &["service", "ls"]).status.success().then_some(())
    });
    for i in 0..20 {
        let out = warren(
            &api,
            &[
                "service",
                "create",
                "-d",
                &format!("later-{i}"),
                "--image",
                "busybox",
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
    m.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(m.wait_exit(Duration::from_secs(20)).is_some());
    std::fs::write(&db, &old).unwrap();
    expect_refusal(
        &start_args(&dir),
        &api,
        &raft,
        &dir,
        &["older copy", "acknowledged writes", &dir.display().to_string()],
    );
}

/// The database deleted, the rest of the data dir left: refused, not a new cluster.
#[test]
fn a_deleted_database_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m1");
    let (api, raft, db) = stopped_manager_with_services(&dir);
    std::fs::remove_file(&db).unwrap();
    expect_refusal(
        &ManagerProc::init_args(&api, &raft, &dir),
        &api,
        &raft,
        &dir,
        &["database is gone", "manager remove"],
    );
    assert!(!db.exists(), "a refused start created a database");
}
