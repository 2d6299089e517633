#![cfg(not(madsim))]
//! Damaged data directories, with real processes: an emptied database, flipped bytes in a
//! stored entry, overwritten blocks. Each must be refused at start with a message naming the
//! data dir, never served as data and never turned into a new cluster; and a kill -9 amid
//! writes, with the write-ahead file then torn or flipped.

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

/// Where the whole records of a write-ahead file end (each: length, its top bit set when an
/// end mark follows, CRC-32 of the length,
/// CRC-32 of the body, body, the mark), and where its first record's body lies.
fn wal_records(bytes: &[u8]) -> (usize, std::ops::Range<usize>) {
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let mut at = 0;
    let mut first = 0..0;
    while at + 12 <= bytes.len() && crc32fast::hash(&bytes[at..at + 4]) == u32_at(at + 4) {
        // The top bit of the length: an end mark follows the body.
        let (len, marked) = (u32_at(at) & !(1 << 31), u32_at(at) >> 31);
        let body_end = at + 12 + len as usize;
        let end = body_end + marked as usize;
        if end > bytes.len() {
            break;
        }
        if first.is_empty() {
            first = at + 12..body_end;
        }
        at = end;
    }
    (at, first)
}

/// A copy of the data dir `from` at `to` (files only, one level of subdirectories).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// A create is acknowledged once its entry is in the write-ahead file (`warren.wal`), before
/// the database holds it durably. A manager killed with -9 amid a stream of creates keeps every
/// create it acknowledged. The same data dir with the last record torn (as a kill during its
/// write leaves it: cut short, or sectors of zeros inside the space the file keeps ahead)
/// starts and keeps them too; with a flipped byte inside a whole record it is
/// refused, naming the file, and the file is left as it was.
#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_creates_survive_kill_9_through_the_write_ahead_file() {
    use std::sync::{Arc, Mutex};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m1");
    let mut m = ManagerProc::start(&dir);
    let client = Arc::new(admin_client(&[&m.api]));
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..8 {
        let (client, acked) = (client.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let name = format!("w{w}-{i}");
                let spec = warren::proto::v1::ServiceSpec {
                    name: name.clone(),
                    image: "busybox".into(),
                    replicas: 0,
                    ..Default::default()
                };
                if client.create_service(spec).await.is_err() {
                    return;
                }
                acked.lock().unwrap().push(name);
            }
        }));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 300 {
        assert!(std::time::Instant::now() < deadline, "300 creates took over 60 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Writes are still in flight: the kill lands among them.
    m.kill9();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let wal = dir.join("warren.wal");
    let bytes = std::fs::read(&wal).unwrap();
    let (whole, first) = wal_records(&bytes);
    assert!(
        whole > 0 && !first.is_empty(),
        "the kill left no record in {}: this test would not test it",
        wal.display()
    );

    // A torn last record: the first half of a whole one, right after the whole ones.
    let torn = tmp.path().join("torn");
    copy_dir(&dir, &torn);
    let mut cut = bytes[..whole].to_vec();
    cut.extend_from_slice(&bytes[first.start - 12..first.start + first.len() / 2]);
    std::fs::write(torn.join("warren.wal"), &cut).unwrap();
    // A record torn inside the zeros the file keeps ahead of its records (as a power cut
    // during its write leaves it): its header and first sectors written, then zeros. Made up
    // here, 2,000 bytes long, so that it spans sectors wherever the records end.
    let ahead = tmp.path().join("torn-ahead");
    copy_dir(&dir, &ahead);
    assert!(
        bytes[whole..].iter().all(|b| *b == 0) && bytes.len() > whole + 4096,
        "no zeros kept ahead of the records in {}",
        wal.display()
    );
    let mut in_zeros = bytes.clone();
    let len = (2_000u32 | 1 << 31).to_le_bytes();
    let mut header = len.to_vec();
    header.extend_from_slice(&crc32fast::hash(&len).to_le_bytes());
    header.extend_from_slice(&[0x5A; 4]);
    in_zeros[whole..whole + 12].copy_from_slice(&header);
    let written_to = (whole + 12).div_ceil(512) * 512 + 512;
    in_zeros[whole + 12..written_to].fill(0x77);
    std::fs::write(ahead.join("warren.wal"), &in_zeros).unwrap();
    // A flipped byte inside the first record's body.
    let flipped = tmp.path().join("flipped");
    copy_dir(&dir, &flipped);
    let mut bad = bytes.clone();
    bad[first.start + first.len() / 2] ^= 0xFF;
    std::fs::write(flipped.join("warren.wal"), &bad).unwrap();

    let check = |m: &mut ManagerProc, what: &str| {
        m.wait_ready();
        let have = services(&m.api);
        let lost: Vec<&String> = acked.iter().filter(|n| !have.contains_key(*n)).collect();
        assert!(
            lost.is_empty(),
            "{what}: {} of {} acknowledged creates lost: {lost:?}",
            lost.len(),
            acked.len()
        );
        m.signal(nix::sys::signal::Signal::SIGTERM);
        assert!(
            m.wait_exit(Duration::from_secs(20)).is_some(),
            "{what}: did not stop"
        );
    };
    let mut again = m.restart();
    check(&mut again, "restarted after kill -9");
    let mut from_torn = ManagerProc::spawn(&start_args(&torn), &m.api, &m.raft, &torn);
    check(&mut from_torn, "with a torn last record");
    let mut from_ahead = ManagerProc::spawn(&start_args(&ahead), &m.api, &m.raft, &ahead);
    check(&mut from_ahead, "with a last record torn inside the zeros ahead");

    let shown = flipped.join("warren.wal").display().to_string();
    expect_refusal(
        &start_args(&flipped),
        &m.api,
        &m.raft,
        &flipped,
        &[&shown, "corrupt"],
    );
    assert_eq!(
        std::fs::read(flipped.join("warren.wal")).unwrap(),
        bad,
        "a refused start changed the write-ahead file"
    );
}
