#![cfg(not(madsim))]
//! Raw TCP connections that never speak HTTP/2, against a manager with a low file limit: it
//! keeps answering real clients, refuses connections past its cap, and closes the silent
//! ones after the handshake deadline.

mod common;

use common::*;
use std::io::Read;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `cluster init` in `tmp` with a limit of 256 open files (a cap of 64 connections), once it
/// answers: its API address, log, process, and a guard that kills it.
fn manager_with_256_files(
    tmp: &std::path::Path,
) -> (String, std::path::PathBuf, std::process::Child, impl Drop) {
    let dir = tmp.join("m1");
    let api = format!("127.0.0.1:{}", free_port());
    let raft = format!("127.0.0.1:{}", free_port());
    let log = tmp.join("m1.log");
    remember_admin_dir(&api, dir.join("admin"));
    let child = unsafe {
        Command::new(bin())
            .args(ManagerProc::init_args(&api, &raft, &dir))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .pre_exec(|| {
                nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 256, 256)
                    .map_err(std::io::Error::from)
            })
            .spawn()
            .unwrap()
    };
    let kill = scopeguard(child.id());
    wait_until("the manager to answer", Duration::from_secs(20), || {
        info(&api).filter(|i| i["leader_id"] == 1).map(|_| ())
    });
    (api, log, child, kill)
}

#[test]
fn silent_connections_do_not_starve_the_api() {
    let tmp = tempfile::tempdir().unwrap();
    let (api, log, mut child, _kill) = manager_with_256_files(tmp.path());
    // 300 connections that never send a byte: more than the manager has descriptors for.
    let mut silent: Vec<TcpStream> = (0..300).filter_map(|_| TcpStream::connect(&api).ok()).collect();
    assert!(silent.len() >= 250, "only {} connections opened", silent.len());
    // Real clients get through: at once if a slot is free, else once the silent connections
    // holding the slots pass the handshake deadline (5 s).
    let started = Instant::now();
    wait_until(
        "a create to succeed beside the silent connections",
        Duration::from_secs(15),
        || {
            warren(&api, &["service", "create", "-d", "s1", "--image", "busybox"])
                .status
                .success()
                .then_some(())
        },
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // Every silent connection has been closed by the manager.
    for s in &mut silent {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut b = [0u8; 64];
        let n = s.read(&mut b);
        assert!(
            matches!(n, Ok(0)) || n.is_err() || matches!(n, Ok(k) if k > 0),
            "{n:?}"
        );
    }
    // Reading returned for all (EOF, reset or the server's GOAWAY) well within the deadlines.
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "{:?}",
        started.elapsed()
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("too many open connections"),
        "no connection was refused:\n{text}"
    );
    assert!(child.try_wait().unwrap().is_none(), "the manager died:\n{text}");
}

/// One worker's certificate used for as many connections as the manager takes (a stolen
/// credential, or a large cluster's workers after a manager loss): the part of the cap kept
/// for operators and managers stays free, so `warren` commands still get in at once, and the
/// worker's connections past the rest of the cap are closed after their TLS handshake.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_holding_every_connection_leaves_room_for_operators() {
    let tmp = tempfile::tempdir().unwrap();
    // 256 files: a cap of 64 connections, 8 of them kept (`limits::reserved_connections`).
    let (api, log, mut child, _kill) = manager_with_256_files(tmp.path());
    let cred = enrolled(&api, warren::core::Role::Worker, "greedy", &tmp.path().join("w")).await;
    let (cap, kept) = (64, 8);
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..cap + 8 {
        let c =
            warren::client::Client::new(&[&api], warren::security::Transport::new(&cred).unwrap()).unwrap();
        // Answered (allowed or not) means the connection is open; else it was closed.
        match tokio::time::timeout(Duration::from_secs(10), c.ca_status()).await {
            Ok(Ok(_)) => held.push(c),
            Ok(Err(e)) if e.code() == tonic::Code::PermissionDenied => held.push(c),
            _ => refused += 1,
        }
    }
    assert_eq!(
        held.len(),
        cap - kept,
        "the worker held {} connections, {refused} refused",
        held.len()
    );
    // The operator gets in while the worker's connections stay open.
    for _ in 0..3 {
        let started = Instant::now();
        let out = warren(&api, &["cluster", "info"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("the rest are kept for operators and managers"),
        "no worker connection was refused from the kept part:\n{text}"
    );
    assert!(child.try_wait().unwrap().is_none(), "the manager died:\n{text}");
    drop(held);
}

/// Kills the process `pid` when dropped.
fn scopeguard(pid: u32) -> impl Drop {
    struct K(u32);
    impl Drop for K {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.0 as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    K(pid)
}

/// A manager address that takes TCP connections but never answers (a hung host), listed
/// first: the CLI still answers through the live one, without waiting the hung one out.
#[test]
fn a_hung_manager_listed_first_does_not_stall_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let m = ManagerProc::start(&tmp.path().join("m1"));
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap(); // never accepts
    let list = format!("{},{}", hung.local_addr().unwrap(), m.api);
    for _ in 0..3 {
        let started = Instant::now();
        let out = warren(&list, &["cluster", "info"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let out = warren(
            &list,
            &[
                "service",
                "create",
                "-d",
                &format!("s{}", started.elapsed().as_nanos()),
                "--image",
                "busybox",
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
}
