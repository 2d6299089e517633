//! Real containers: a manager and workers as real processes, a private containerd and a
//! loopback registry (scripts/rig.sh, started and torn down here), checked through
//! containerd itself (`ctr`) and over HTTP, not only through Warren's view.
//!
//! Needs root (containerd, runc, cgroups). The rig installs its Debian packages if missing.

#![cfg(not(madsim))]

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// The rig of scripts/rig.sh; stopped (processes by PID, mounts, files) when dropped.
pub struct Rig {
    pub dir: PathBuf,
    pub socket: String,
    pub registry: String,
    pub image: String,
    /// An index offering the image for linux/arm64 only.
    pub arm_only_image: String,
    /// The image with a HEALTHCHECK of its own that passes, and one that never passes.
    pub healthy_image: String,
    pub unhealthy_image: String,
    /// A registry that wants a password, and the image there.
    pub auth_registry: String,
    pub auth_image: String,
    pub auth_user: String,
    pub auth_password: String,
    /// Held for the rig's life: shared by the tests that run side by side, exclusive for
    /// one that loads the machine alone (50 containers).
    _load: Load,
}

/// The tests of this file run in parallel on a 2-core machine; the one that starts 50
/// containers runs alone (beside it, another test's CLI calls once timed out).
static LOAD: std::sync::RwLock<()> = std::sync::RwLock::new(());

#[allow(dead_code)]
enum Load {
    Shared(std::sync::RwLockReadGuard<'static, ()>),
    Alone(std::sync::RwLockWriteGuard<'static, ()>),
}

impl Rig {
    pub fn start(dir: &Path) -> Rig {
        let load = Load::Shared(LOAD.read().unwrap_or_else(|e| e.into_inner()));
        Self::start_with(dir, load)
    }

    /// A rig for a test that must not share the machine with the others.
    pub fn start_alone(dir: &Path) -> Rig {
        let load = Load::Alone(LOAD.write().unwrap_or_else(|e| e.into_inner()));
        Self::start_with(dir, load)
    }

    fn start_with(dir: &Path, load: Load) -> Rig {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/rig.sh");
        let out = Command::new(&script)
            .arg("start")
            .arg(dir)
            .output()
            .expect("running rig.sh");
        let mut rig = Rig {
            dir: dir.to_path_buf(),
            socket: String::new(),
            registry: String::new(),
            image: String::new(),
            arm_only_image: String::new(),
            healthy_image: String::new(),
            unhealthy_image: String::new(),
            auth_registry: String::new(),
            auth_image: String::new(),
            auth_user: String::new(),
            auth_password: String::new(),
            _load: load,
        };
        assert!(out.status.success(), "rig.sh start failed: {}", stderr(&out));
        for line in stdout(&out).lines() {
            let Some((k, v)) = line.trim_start_matches("export ").split_once('=') else {
                continue;
            };
            match k {
                "WARREN_RIG_CONTAINERD_SOCKET" => rig.socket = v.to_string(),
                "WARREN_RIG_REGISTRY" => rig.registry = v.to_string(),
                "WARREN_RIG_IMAGE" => rig.image = v.to_string(),
                "WARREN_RIG_ARM_ONLY_IMAGE" => rig.arm_only_image = v.to_string(),
                "WARREN_RIG_HEALTHY_IMAGE" => rig.healthy_image = v.to_string(),
                "WARREN_RIG_UNHEALTHY_IMAGE" => rig.unhealthy_image = v.to_string(),
                "WARREN_RIG_AUTH_REGISTRY" => rig.auth_registry = v.to_string(),
                "WARREN_RIG_AUTH_IMAGE" => rig.auth_image = v.to_string(),
                "WARREN_RIG_AUTH_USER" => rig.auth_user = v.to_string(),
                "WARREN_RIG_AUTH_PASSWORD" => rig.auth_password = v.to_string(),
                _ => {}
            }
        }
        assert!(
            !rig.socket.is_empty() && !rig.image.is_empty(),
            "rig.sh printed: {}",
            stdout(&out)
        );
        rig
    }

    /// `ctr` against the rig's containerd in namespace `ns`.
    pub fn ctr(&self, ns: &str, args: &[&str]) -> String {
        let out = Command::new("ctr")
            .args(["--address", &self.socket, "-n", ns])
            .args(args)
            .output()
            .expect("running ctr");
        assert!(out.status.success(), "ctr {args:?}: {}", stderr(&out));
        stdout(&out)
    }

    /// (container id, pid, status) of every task in `ns`.
    pub fn tasks(&self, ns: &str) -> Vec<(String, u32, String)> {
        self.ctr(ns, &["tasks", "ls"])
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 3).then(|| (f[0].to_string(), f[1].parse().unwrap_or(0), f[2].to_string()))
            })
            .collect()
    }

    pub fn running(&self, ns: &str) -> BTreeSet<(String, u32)> {
        self.tasks(ns)
            .into_iter()
            .filter(|t| t.2 == "RUNNING")
            .map(|t| (t.0, t.1))
            .collect()
    }

    /// Waits until exactly `n` containers run in `ns`; those (id, pid).
    pub fn wait_running(&self, ns: &str, n: usize) -> BTreeSet<(String, u32)> {
        wait_until(&format!("{n} running containers in {ns}"), WAIT, || {
            let r = self.running(ns);
            (r.len() == n).then_some(r)
        })
    }

    pub fn containers(&self, ns: &str) -> Vec<String> {
        self.ctr(ns, &["containers", "ls", "-q"])
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Restarts the rig's containerd (same root, state and socket).
    pub fn restart_containerd(&self) {
        let pid_file = self.dir.join("containerd.pid");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM).unwrap();
        wait_until("containerd to exit", WAIT, || {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                .is_err()
                .then_some(())
        });
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("containerd.log"))
            .unwrap();
        let cd = self.dir.join("containerd");
        // Ended by rig.sh stop, by the PID written below.
        #[allow(clippy::zombie_processes)]
        let child = Command::new("containerd")
            .arg("--root")
            .arg(cd.join("root"))
            .arg("--state")
            .arg(cd.join("state"))
            .arg("--address")
            .arg(&self.socket)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        std::fs::write(&pid_file, child.id().to_string()).unwrap();
        wait_until("containerd to answer again", WAIT, || {
            Command::new("ctr")
                .args(["--address", &self.socket, "version"])
                .output()
                .ok()
                .filter(|o| o.status.success())
        });
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- containerd log (last 40 lines, newest first) ---\n{}",
                tail.join("\n")
            );
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/rig.sh");
        let _ = Command::new(script).arg("stop").arg(&self.dir).status();
    }
}

fn is_root() -> bool {
    // /proc/self/status: "Uid:\treal\teffective...".
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        .unwrap_or(false)
}

fn ps(api: &str, service: &str) -> Vec<Value> {
    json_of(api, &["service", "ps", service])
        .as_array()
        .unwrap()
        .clone()
}

fn ok(api: &str, args: &[&str]) -> String {
    let out = warren(api, args);
    assert!(out.status.success(), "warren {args:?}: {}", stderr(&out));
    stdout(&out)
}

/// A port BASE such that BASE+1..=BASE+3 were free a moment ago.
fn free_base() -> u32 {
    loop {
        let base = free_port() as u32 % 50_000 + 10_000;
        if (1..=3).all(|i| std::net::TcpListener::bind(("127.0.0.1", (base + i) as u16)).is_ok()) {
            return base;
        }
    }
}

fn http_get(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_secs(1),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// A worker on the rig's containerd in its own namespace, with registry credentials
/// `(user, password)` for the rig's password-protected registry if given.
fn worker(rig: &Rig, api: &str, token: Option<&str>, id: &str, dir: &Path, ns: &str) -> WorkerProc {
    worker_with(rig, api, token, id, dir, ns, None)
}

fn worker_with(
    rig: &Rig,
    api: &str,
    token: Option<&str>,
    id: &str,
    dir: &Path,
    ns: &str,
    creds: Option<(&str, &str)>,
) -> WorkerProc {
    let mut args = vec![
        "--containerd-socket".to_string(),
        rig.socket.clone(),
        "--containerd-namespace".into(),
        ns.into(),
        "--insecure-registry".into(),
        rig.registry.clone(),
        "--insecure-registry".into(),
        rig.auth_registry.clone(),
    ];
    if let Some((user, password)) = creds {
        let file = dir.with_extension("auth.json");
        let config = serde_json::json!({"auths": {rig.auth_registry.clone(): {"username": user, "password": password}}});
        std::fs::write(&file, config.to_string()).unwrap();
        args.push("--registry-auth-file".into());
        args.push(file.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    WorkerProc::spawn(api, token, id, dir, &args)
}

/// A shell that exits on SIGTERM (PID 1 ignores signals it has no handler for) and serves
/// HTTP on BASE + its slot.
const SERVE: &str = r#"trap 'echo got SIGTERM; exit 143' TERM; PORT=$((BASE + WARREN_TASK_SLOT)); echo "slot $WARREN_TASK_SLOT serving on $PORT"; httpd -f -p $PORT -h /www & wait"#;

#[test]
fn real_containers_end_to_end() {
    if !is_root() {
        eprintln!("SKIPPED: containerd tests need root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let rig = Rig::start(&tmp.path().join("rig"));
    let m = ManagerProc::start(&tmp.path().join("m1"));
    let token = ok(&m.api, &["cluster", "join-token", "worker", "-q"])
        .trim()
        .to_string();

    lifecycle(&rig, &m.api, &token, tmp.path());
    restarts_underneath(&rig, &m, &token, tmp.path());
    faults(&rig, &m.api, &token, tmp.path());
    drop(m);
    logs(&rig, tmp.path());
}

/// `service logs` through a manager the worker has no session with (forwarded to the one
/// that has): the tail, a single task, and --follow streaming new lines.
fn logs(rig: &Rig, tmp: &Path) {
    use std::io::BufRead;
    let c = Cluster::form_in(
        tempfile::tempdir_in(tmp).unwrap(),
        (1..=3).map(|i| tmp.join(format!("logs-m{i}"))).collect(),
    );
    let ns = "logs";
    let token = ok(c.api(1), &["cluster", "join-token", "worker", "-q"])
        .trim()
        .to_string();
    // The worker knows only manager 1; the CLI asks manager 2.
    let creds = (rig.auth_user.as_str(), rig.auth_password.as_str());
    let _w = worker_with(
        rig,
        c.api(1),
        Some(&token),
        "logs-1",
        &tmp.join("logs-1"),
        ns,
        Some(creds),
    );
    let ticker = "echo started >&2; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done";
    ok(
        c.api(1),
        &[
            "service",
            "create",
            "-d",
            "ticker",
            "--image",
            &rig.image,
            "--replicas",
            "2",
            "--",
            "sh",
            "-c",
            ticker,
        ],
    );
    rig.wait_running(ns, 2);
    let out = wait_until("five lines of each task through manager 2", WAIT, || {
        let o = warren(c.api(2), &["service", "logs", "ticker", "--tail", "5"]);
        let text = stdout(&o);
        (o.status.success()
            && text
                .lines()
                .filter(|l| l.starts_with("ticker.1.") && l.contains("| tick "))
                .count()
                == 5
            && text
                .lines()
                .filter(|l| l.starts_with("ticker.2.") && l.contains("| tick "))
                .count()
                == 5)
            .then_some(text)
    });
    assert!(out.lines().all(|l| l.contains("@logs-1 | tick ")), "{out}");
    let task = ps(c.api(2), "ticker")[0]["id"].as_str().unwrap().to_string();
    // What `service ps` shows of it (the random part, after the id's time digits).
    let shown = warren::core::limits::short_id(&task).to_string();
    // A complete answer ends at once (no waiting on the worker), with no warning.
    let t0 = Instant::now();
    let whole = warren(c.api(2), &["service", "logs", "ticker", "--tail", "2"]);
    assert!(
        whole.status.success() && stderr(&whole).is_empty(),
        "{}",
        stderr(&whole)
    );
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "service logs took {:?}",
        t0.elapsed()
    );
    let one = ok(
        c.api(2),
        &["service", "logs", "ticker", "--tail", "3", "--task", &shown[..8]],
    );
    assert_eq!(one.lines().count(), 3, "{one}");
    assert!(one.lines().all(|l| l.contains(&shown)), "{one}");
    // stderr is kept too (its order against stdout is not: they are two pipes).
    let all = ok(c.api(2), &["service", "logs", "ticker", "--task", &shown[..8]]);
    assert!(all.lines().any(|l| l.ends_with("| started")), "{all}");
    // --timestamps: each line's own time, as it was written (the ticker writes every 0.2 s).
    let stamped = ok(
        c.api(2),
        &[
            "service",
            "logs",
            "ticker",
            "--tail",
            "4",
            "--task",
            &shown[..8],
            "--timestamps",
        ],
    );
    let times: Vec<std::time::SystemTime> = stamped
        .lines()
        .map(|l| humantime::parse_rfc3339(l.split(' ').next().unwrap()).expect(l))
        .collect();
    assert_eq!(times.len(), 4, "{stamped}");
    let now = std::time::SystemTime::now();
    for w in times.windows(2) {
        let gap = w[1].duration_since(w[0]).expect("times in order");
        assert!(gap >= Duration::from_millis(150), "lines 0.2 s apart: {stamped}");
    }
    assert!(
        now.duration_since(times[0]).unwrap() < Duration::from_secs(120),
        "{stamped}"
    );
    let bad = warren(c.api(2), &["service", "logs", "ticker", "--tail", "-5"]);
    assert!(!bad.status.success(), "a negative tail is refused");

    // --follow: new lines keep coming, in order.
    let mut child = warren_cmd(c.api(3))
        .args([
            "--manager",
            c.api(3),
            "service",
            "logs",
            "ticker",
            "--tail",
            "0",
            "--follow",
            "--task",
            &task,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut ticks = Vec::new();
    for line in reader.lines() {
        let line = line.unwrap();
        let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        ticks.push(n);
        if ticks.len() == 5 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        ticks.windows(2).all(|w| w[1] == w[0] + 1),
        "followed lines in order: {ticks:?}"
    );
    ok(c.api(1), &["service", "rm", "ticker"]);
    wait_until("no containers", WAIT, || {
        rig.containers(ns).is_empty().then_some(())
    });
    // The shim ended each container's log writer.
    let logs_dir = tmp.join("logs-1").join("logs");
    wait_until("no log writer left", WAIT, || {
        let ps = Command::new("pgrep")
            .args(["-f", &format!("log-writer {}", logs_dir.display())])
            .output()
            .unwrap();
        (!ps.status.success()).then_some(())
    });
}

/// Three replicas answer on their ports; kill -9 of one is replaced; scale down stops two
/// with SIGTERM well inside the stop timeout; rm leaves no container, task, snapshot or lease.
fn lifecycle(rig: &Rig, api: &str, token: &str, tmp: &Path) {
    let ns = "lifecycle";
    let _w = worker(rig, api, Some(token), "life-1", &tmp.join("life-1"), ns);
    let base = free_base();
    ok(
        api,
        &[
            "service",
            "create",
            "-d",
            "web",
            "--image",
            &rig.image,
            "--replicas",
            "3",
            "--stop-timeout",
            "60s",
            "-e",
            &format!("BASE={base}"),
            "--",
            "sh",
            "-c",
            SERVE,
        ],
    );
    rig.wait_running(ns, 3);
    for slot in 1..=3u32 {
        let body = wait_until("an answer on each replica's port", WAIT, || {
            http_get((base + slot) as u16)
        });
        assert!(body.contains("hello from warren"), "slot {slot}: {body}");
    }
    wait_until("all three running in service ps", WAIT, || {
        (ps(api, "web").iter().filter(|t| t["state"] == "running").count() == 3).then_some(())
    });
    let first = rig.running(ns);
    assert_eq!(first.len(), 3, "{first:?}");

    // kill -9 of one container's process: replaced per the restart policy.
    let (victim, pid) = first.iter().next().unwrap().clone();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let after = wait_until("a replacement container", WAIT, || {
        let r = rig.running(ns);
        (r.len() == 3 && !r.iter().any(|(c, _)| *c == victim)).then_some(r)
    });
    let failed = ps(api, "web");
    let dead = failed
        .iter()
        .find(|t| t["id"] == victim.as_str())
        .expect("the killed task is listed");
    assert_eq!(dead["state"], "failed", "{dead}");
    assert_eq!(dead["exit_code"], 137, "{dead}");
    assert_eq!(
        after.intersection(&first).count(),
        2,
        "the other two were not touched"
    );

    // Scale down: two stopped by SIGTERM (the trap answers it), long before the 60 s timeout.
    let t0 = Instant::now();
    ok(api, &["service", "scale", "web=1"]);
    wait_until("one container left", WAIT, || {
        (rig.containers(ns).len() == 1).then_some(())
    });
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "stopping took {:?}",
        t0.elapsed()
    );
    let stopped: Vec<Value> = ps(api, "web")
        .into_iter()
        .filter(|t| t["state"] == "shutdown")
        .collect();
    assert_eq!(stopped.len(), 2, "{stopped:?}");
    for t in &stopped {
        assert_eq!(t["exit_code"], 143, "stopped by SIGTERM: {t}");
    }

    // rm: nothing of the service left in containerd.
    ok(api, &["service", "rm", "web"]);
    wait_until("no containers", WAIT, || {
        rig.containers(ns).is_empty().then_some(())
    });
    assert!(rig.tasks(ns).is_empty());
    let snapshots = rig.ctr(ns, &["snapshots", "ls"]);
    assert!(
        snapshots.lines().skip(1).all(|l| l.contains("Committed")),
        "only the image's committed layers stay: {snapshots}"
    );
    let leases = rig.ctr(ns, &["leases", "ls"]);
    assert_eq!(leases.lines().skip(1).count(), 0, "{leases}");
}

/// kill -9 of the worker, then its restart: the same containers, adopted, not restarted.
/// containerd restarted underneath: nothing restarted, and an exit afterwards is seen.
fn restarts_underneath(rig: &Rig, m: &ManagerProc, token: &str, tmp: &Path) {
    let api = m.api.as_str();
    let ns = "adopt";
    let dir = tmp.join("adopt-1");
    let mut w = worker(rig, api, Some(token), "adopt-1", &dir, ns);
    let base = free_base();
    ok(
        api,
        &[
            "service",
            "create",
            "-d",
            "keep",
            "--image",
            &rig.image,
            "--replicas",
            "2",
            "-e",
            &format!("BASE={base}"),
            "--",
            "sh",
            "-c",
            SERVE,
        ],
    );
    let before = rig.wait_running(ns, 2);
    w.kill9();
    let w = worker(rig, api, None, "adopt-1", &dir, ns);
    wait_until("the restarted worker to adopt its containers", WAIT, || {
        w.log_text().contains("adopted").then_some(())
    });
    wait_until("the managers to see the worker again", WAIT, || {
        (ps(api, "keep").iter().filter(|t| t["state"] == "running").count() == 2).then_some(())
    });
    assert_eq!(
        rig.running(ns),
        before,
        "same containers, same processes: nothing restarted"
    );

    let subscriptions = || w.log_text().matches("watching containerd events").count();
    wait_until("the worker to watch containerd events", WAIT, || {
        (subscriptions() >= 1).then_some(())
    });
    let before_restart = subscriptions();
    rig.restart_containerd();
    // The worker resubscribes (and reconciles); then check nothing was restarted.
    if wait_until_opt(WAIT, || (subscriptions() > before_restart).then_some(())).is_none() {
        panic!(
            "the worker never resubscribed to events; its log:\n{}",
            w.log_text()
        );
    }
    assert_eq!(rig.running(ns), before, "containerd's restart restarted nothing");
    let (victim, pid) = before.iter().next().unwrap().clone();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until(
        "the exit seen after containerd's restart, and replaced",
        WAIT,
        || {
            let r = rig.running(ns);
            (r.len() == 2 && !r.iter().any(|(c, _)| *c == victim)).then_some(())
        },
    );

    // Autonomy with real containers: no manager answers (SIGSTOP), a container dies, and the
    // worker itself starts it again (same task, so same container id, new process).
    let now = rig.wait_running(ns, 2);
    m.signal(nix::sys::signal::Signal::SIGSTOP);
    let cut = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until("the worker to run on its own", WAIT, || {
            w.log_text().contains("running on its own").then_some(())
        });
        let (victim, pid) = now.iter().next().unwrap().clone();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        wait_until("a local restart of the same task", WAIT, || {
            rig.running(ns)
                .iter()
                .any(|(c, p)| *c == victim && *p != pid)
                .then_some(())
        });
        // The worker logs it once the start returns, which may be after the process shows.
        wait_until("the worker to log its local restart", WAIT, || {
            w.log_text().contains("restarted the task locally").then_some(())
        });
    }));
    m.signal(nix::sys::signal::Signal::SIGCONT);
    if let Err(e) = cut {
        std::panic::resume_unwind(e);
    }
    ok(api, &["service", "rm", "keep"]);
    wait_until("no containers", WAIT, || {
        rig.containers(ns).is_empty().then_some(())
    });
}

/// Each fault is a clear message on the task, and the worker keeps serving its other task.
fn faults(rig: &Rig, api: &str, token: &str, tmp: &Path) {
    let ns = "faults";
    let _w = worker_with(
        rig,
        api,
        Some(token),
        "faults-1",
        &tmp.join("faults-1"),
        ns,
        Some(("warren", "wrong")),
    );
    let base = free_base();
    ok(
        api,
        &[
            "service",
            "create",
            "-d",
            "healthy",
            "--image",
            &rig.image,
            "--limit-cpu",
            "0.5",
            "--limit-memory",
            "64MiB",
            "-e",
            &format!("BASE={base}"),
            "--",
            "sh",
            "-c",
            SERVE,
        ],
    );
    let healthy = rig.wait_running(ns, 1);
    // The limits are the container's cgroup's (v1 or v2 hierarchy).
    let id = &healthy.iter().next().unwrap().0;
    let read = |paths: &[String]| {
        paths
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .map(|s| s.trim().to_string())
    };
    let memory = read(&[
        format!("/sys/fs/cgroup/memory/warren/{id}/memory.limit_in_bytes"),
        format!("/sys/fs/cgroup/warren/{id}/memory.max"),
    ]);
    assert_eq!(memory.as_deref(), Some("67108864"), "memory limit of {id}");
    let cpu = read(&[
        format!("/sys/fs/cgroup/cpu,cpuacct/warren/{id}/cpu.cfs_quota_us"),
        format!("/sys/fs/cgroup/cpu/warren/{id}/cpu.cfs_quota_us"),
        format!("/sys/fs/cgroup/warren/{id}/cpu.max"),
    ]);
    assert!(
        matches!(cpu.as_deref(), Some("50000") | Some("50000 100000")),
        "cpu quota of {id}: {cpu:?}"
    );
    let unreachable = format!("127.0.0.1:{}/busybox:test", free_port());
    let unknown = format!("{}/nope:1", rig.registry);
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "unknown",
            vec!["--image".into(), unknown, "--".into(), "sh".into()],
            "no such image",
        ),
        (
            "unreachable",
            vec!["--image".into(), unreachable, "--".into(), "sh".into()],
            "cannot reach the registry",
        ),
        (
            "noplatform",
            vec![
                "--image".into(),
                rig.arm_only_image.clone(),
                "--".into(),
                "sh".into(),
            ],
            "no image for this host's platform",
        ),
        (
            "badcreds",
            vec!["--image".into(), rig.auth_image.clone(), "--".into(), "sh".into()],
            "--registry-auth-file",
        ),
        (
            "nocmd",
            vec![
                "--image".into(),
                rig.image.clone(),
                "--".into(),
                "/no/such/binary".into(),
            ],
            "no such file",
        ),
        (
            "oom",
            vec![
                "--image".into(),
                rig.image.clone(),
                "--limit-memory".into(),
                "16MiB".into(),
                "--".into(),
                "sh".into(),
                "-c".into(),
                "x=$(busybox yes | busybox head -c 400000000); echo survived".into(),
            ],
            "OOM",
        ),
    ];
    for (name, args, want) in &cases {
        let mut full = vec!["service", "create", "-d", name, "--restart-condition", "none"];
        full.extend(args.iter().map(String::as_str));
        ok(api, &full);
        let found = wait_until_opt(WAIT, || {
            ps(api, name)
                .iter()
                .map(|t| {
                    format!(
                        "{} {}",
                        t["message"].as_str().unwrap_or(""),
                        t["error"].as_str().unwrap_or("")
                    )
                })
                .find(|m| m.to_lowercase().contains(&want.to_lowercase()))
        });
        let msg = found.unwrap_or_else(|| {
            panic!(
                "{name}: no task message containing {want:?}; tasks: {:#?}",
                ps(api, name)
            )
        });
        eprintln!("{name}: {msg}");
        ok(api, &["service", "rm", name]);
    }
    assert_eq!(rig.running(ns), healthy, "the healthy task ran on, untouched");
    ok(api, &["service", "rm", "healthy"]);
    wait_until("no containers", WAIT, || {
        rig.containers(ns).is_empty().then_some(())
    });
}

/// The runtime contract (src/worker/contract.rs) against containerd itself, as `cargo test`
/// runs it against the simulated runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_keeps_the_runtime_contract() {
    use warren::worker::containerd::{pull::RegistryOpts, ContainerdOpts, ContainerdRuntime};
    use warren::worker::contract::{run_all, Fixture};
    if !is_root() {
        eprintln!("SKIPPED: containerd tests need root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let rig = tokio::task::block_in_place(|| Rig::start(&tmp.path().join("rig")));
    let rt = ContainerdRuntime::connect(ContainerdOpts {
        socket: rig.socket.clone().into(),
        namespace: "contract".into(),
        node_id: "contract-node".into(),
        logs_dir: tmp.path().join("logs"),
        log_writer: env!("CARGO_BIN_EXE_warren").into(),
        registry: RegistryOpts {
            insecure: vec![rig.registry.clone()],
            credentials: Default::default(),
        },
        cgroup_parent: "/warren-contract".into(),
    })
    .await
    .expect("connecting to the rig's containerd");
    let spec = |cmd: &[&str]| warren::core::ServiceSpec {
        name: "contract".into(),
        image: rig.image.clone(),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let prefix = format!("contract{}", std::process::id());
    run_all(&Fixture {
        runtime: &*rt,
        image: rig.image.clone(),
        missing_image: format!("{}/nope:1", rig.registry),
        runs: spec(&["sh", "-c", "trap 'exit 143' TERM; sleep 1000 & wait"]),
        exits_3: spec(&["sh", "-c", "sleep 0.2; exit 3"]),
        missing_command: spec(&["/no/such/binary"]),
        prefix,
        patience: Duration::from_secs(30),
    })
    .await;
    assert!(
        rig.containers("contract").is_empty(),
        "the contract suite left containers behind"
    );
    tokio::task::block_in_place(|| drop(rig));
}

/// The rig, one manager and a worker join token for a test; None (the test is skipped)
/// without root.
fn rig_and_manager() -> Option<(tempfile::TempDir, Rig, ManagerProc, String, String)> {
    if !is_root() {
        eprintln!("SKIPPED: containerd tests need root");
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let rig = Rig::start(&tmp.path().join("rig"));
    let m = ManagerProc::start(&tmp.path().join("m1"));
    let api = m.api.clone();
    let token = ok(&api, &["cluster", "join-token", "worker", "-q"])
        .trim()
        .to_string();
    Some((tmp, rig, m, api, token))
}

/// `(slot, spec version, container id)` of each running task of `service`.
fn running_versions(api: &str, service: &str) -> BTreeSet<(u64, u64, String)> {
    ps(api, service)
        .iter()
        .filter(|t| t["state"] == "running" && t["desired_state"] == "running")
        .map(|t| {
            (
                t["slot"].as_u64().unwrap(),
                t["spec_version"].as_u64().unwrap(),
                t["container_id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn versions(set: &BTreeSet<(u64, u64, String)>) -> Vec<u64> {
    set.iter().map(|t| t.1).collect()
}

/// `service update ARGS` with failure action rollback and a 1 s monitor, which must roll
/// back: a non-zero exit saying so. Returns what it printed on stderr (the reason).
fn update_rolled_back(api: &str, args: &[&str]) -> String {
    let mut full = vec![
        "service",
        "update",
        "--update-failure-action",
        "rollback",
        "--update-monitor",
        "1s",
    ];
    full.extend(args);
    let out = warren(api, &full);
    assert!(
        !out.status.success(),
        "an update that rolled back exited 0: {}",
        stdout(&out)
    );
    let err = stderr(&out);
    assert!(err.contains("rolled back"), "{err}");
    err
}

/// #14 on real containers: a rolling update replaces tasks slot by slot and `service ps`
/// keeps the old ones as history; an image that cannot be pulled pauses the update with the
/// old containers untouched (pulled before stopped) and a non-zero exit; a task that fails
/// rolls the update back on its own; a manual rollback and `--to-version`; start-first never
/// runs fewer containers than the replica count.
#[test]
fn rolling_updates_with_real_containers() {
    let Some((tmp, rig, _m, api, token)) = rig_and_manager() else {
        return;
    };
    let _w1 = worker(
        &rig,
        &api,
        Some(&token),
        "upd-1",
        &tmp.path().join("upd-1"),
        "upd-1",
    );
    let _w2 = worker(
        &rig,
        &api,
        Some(&token),
        "upd-2",
        &tmp.path().join("upd-2"),
        "upd-2",
    );
    let containers = || rig.running("upd-1").len() + rig.running("upd-2").len();
    let sleeper = "trap 'exit 143' TERM; while true; do sleep 1; done";
    ok(
        &api,
        &[
            "service",
            "create",
            "web",
            "--image",
            &rig.image,
            "--replicas",
            "4",
            "-e",
            "V=1",
            "--stop-timeout",
            "2s",
            "--update-monitor",
            "1s",
            "--rollback-monitor",
            "1s",
            "--",
            "sh",
            "-c",
            sleeper,
        ],
    );
    let v1 = wait_until("4 tasks of version 1 running", WAIT, || {
        let r = running_versions(&api, "web");
        (versions(&r) == vec![1; 4]).then_some(r)
    });

    // An update replaces every slot once; the old tasks stay as history.
    let out = warren(&api, &["service", "update", "web", "--env-add", "V=2"]);
    assert!(out.status.success(), "update: {}\n{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("update to version 2 completed"),
        "{}",
        stdout(&out)
    );
    let v2 = running_versions(&api, "web");
    assert_eq!(versions(&v2), vec![2; 4], "{v2:?}");
    let all = ps(&api, "web");
    for slot in 1..=4u64 {
        let of_slot: Vec<u64> = all
            .iter()
            .filter(|t| t["slot"] == slot)
            .map(|t| t["spec_version"].as_u64().unwrap())
            .collect();
        assert_eq!(
            of_slot.iter().filter(|v| **v == 2).count(),
            1,
            "slot {slot} updated once: {of_slot:?}"
        );
        assert!(
            of_slot.contains(&1),
            "slot {slot} keeps its old task as history: {of_slot:?}"
        );
    }
    assert!(
        v1.iter().all(|t| !v2.iter().any(|n| n.2 == t.2)),
        "containers were replaced"
    );
    assert_eq!(containers(), 4);
    let inspect = json_of(&api, &["service", "inspect", "web"]);
    assert_eq!(inspect["spec_version"], 2);
    assert_eq!(inspect["history"][0]["version"], 1);
    assert_eq!(inspect["update_status"]["state"], "completed");

    // An image that cannot be pulled: the first slot fails before its old task is stopped.
    let missing = format!("{}/busybox:no-such-tag", rig.registry);
    let out = warren(&api, &["service", "update", "web", "--image", &missing]);
    assert!(
        !out.status.success(),
        "a paused update exited 0: {}",
        stdout(&out)
    );
    assert!(stderr(&out).contains("update paused"), "{}", stderr(&out));
    assert_eq!(
        running_versions(&api, "web"),
        v2,
        "the old containers were touched"
    );
    assert_eq!(containers(), 4);

    // Back to version 2 by hand: nothing to replace but the version the slots run.
    let out = warren(&api, &["service", "rollback", "web"]);
    assert!(
        out.status.success(),
        "rollback: {}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(json_of(&api, &["service", "inspect", "web"])["spec_version"], 2);
    assert_eq!(running_versions(&api, "web"), v2);

    // A new command that exits at once, with rollback on failure: rolled back, exit non-zero.
    update_rolled_back(
        &api,
        &["web", "--restart-condition", "none", "--", "sh", "-c", "exit 3"],
    );
    let back = wait_until("version 2 on every slot again", WAIT, || {
        let r = running_versions(&api, "web");
        (versions(&r) == vec![2; 4]).then_some(r)
    });
    assert_eq!(back.len(), 4);

    // --to-version 1.
    let out = warren(&api, &["service", "rollback", "web", "--to-version", "1"]);
    assert!(
        out.status.success(),
        "rollback --to-version: {}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(versions(&running_versions(&api, "web")), vec![1; 4]);

    // Start-first: at every poll at least 4 containers run.
    let out = warren(
        &api,
        &[
            "service",
            "update",
            "web",
            "--env-add",
            "V=5",
            "--update-order",
            "start-first",
            "--detach",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let mut fewest = usize::MAX;
    wait_until("the start-first update to complete", WAIT, || {
        fewest = fewest.min(containers());
        let s = json_of(&api, &["service", "inspect", "web"]);
        (s["update_status"]["state"] == "completed").then_some(())
    });
    assert!(
        fewest >= 4,
        "start-first ran only {fewest} containers at one point"
    );
    let last = running_versions(&api, "web");
    assert_eq!(versions(&last).len(), 4);
    assert!(versions(&last).iter().all(|v| *v > 2), "{last:?}");
    wait_until("the old containers gone", WAIT, || {
        (containers() == 4).then_some(())
    });
}

/// Health checks on real containers (run through containerd's exec): a task is `starting`
/// until its check passes, then `running`; one that turns unhealthy is failed and replaced;
/// an update whose new tasks never pass their check rolls back on its own and exits non-zero.
#[test]
fn health_checks_with_real_containers() {
    let Some((tmp, rig, _m, api, token)) = rig_and_manager() else {
        return;
    };
    let w = worker(&rig, &api, Some(&token), "hc-1", &tmp.path().join("hc-1"), "hc-1");

    // Healthy 3 s after it starts.
    let slow = "trap 'exit 143' TERM; sleep 3; touch /run/ok; while true; do sleep 1; done";
    ok(
        &api,
        &[
            "service",
            "create",
            "-d",
            "slow",
            "--image",
            &rig.image,
            "--replicas",
            "1",
            "--stop-timeout",
            "2s",
            "--health-cmd",
            "test -f /run/ok",
            "--health-interval",
            "2s",
            "--health-retries",
            "3",
            "--",
            "sh",
            "-c",
            slow,
        ],
    );
    let starting = wait_until("slow starting with its container up", WAIT, || {
        ps(&api, "slow")
            .into_iter()
            .find(|t| t["state"] == "starting" && !t["container_id"].as_str().unwrap_or("").is_empty())
    });
    let running = wait_until_opt(WAIT, || {
        ps(&api, "slow").into_iter().find(|t| t["state"] == "running")
    })
    .unwrap_or_else(|| {
        panic!(
            "slow never ran healthy: {:#?}\nworker log:\n{}",
            ps(&api, "slow"),
            w.log_text()
        )
    });
    assert_eq!(starting["id"], running["id"], "the same task became running");
    assert_eq!(running["health"], "healthy", "{running}");
    let table = ok(&api, &["service", "ps", "slow"]);
    assert!(table.contains("running (healthy)"), "{table}");
    assert!(
        running["message"].as_str().unwrap().contains("healthy"),
        "{running}"
    );

    // Unhealthy after 4 s: failed, and replaced per the restart policy.
    let sick = "trap 'exit 143' TERM; sleep 4; touch /run/bad; while true; do sleep 1; done";
    ok(
        &api,
        &[
            "service",
            "create",
            "-d",
            "sick",
            "--image",
            &rig.image,
            "--stop-timeout",
            "2s",
            "--health-cmd",
            "test ! -f /run/bad",
            "--health-interval",
            "1s",
            "--health-retries",
            "2",
            "--",
            "sh",
            "-c",
            sick,
        ],
    );
    let failed = wait_until_opt(WAIT, || {
        ps(&api, "sick")
            .into_iter()
            .find(|t| t["state"] == "failed" && t["error"].as_str().unwrap_or("").contains("unhealthy"))
    })
    .unwrap_or_else(|| {
        panic!(
            "sick never failed as unhealthy: {:#?}\nworker log:\n{}",
            ps(&api, "sick"),
            w.log_text()
        )
    });
    assert_eq!(failed["health"], "unhealthy", "{failed}");
    wait_until("sick replaced", WAIT, || {
        ps(&api, "sick").into_iter().find(|t| {
            t["id"] != failed["id"] && t["desired_state"] == "running" && t["slot"] == failed["slot"]
        })
    });

    // An update whose tasks never pass their check: rolled back, non-zero exit, the old task
    // running again.
    let before = running_versions(&api, "slow");
    update_rolled_back(&api, &["slow", "--health-cmd", "false", "--health-retries", "1"]);
    let after = wait_until("slow back on version 1, healthy", WAIT, || {
        let r = running_versions(&api, "slow");
        (versions(&r) == vec![1]).then_some(r)
    });
    assert_eq!(after.len(), before.len());
    let s = json_of(&api, &["service", "inspect", "slow"]);
    assert_eq!(s["update_status"]["state"], "rollback_completed", "{s}");

    // The image's own HEALTHCHECK (no --health-cmd): one that passes makes the task healthy;
    // an update to an image whose check never passes rolls back to the old image.
    ok(
        &api,
        &[
            "service",
            "create",
            "img",
            "--image",
            &rig.healthy_image,
            "--stop-timeout",
            "2s",
            "--",
            "sh",
            "-c",
            "trap 'exit 143' TERM; while true; do sleep 1; done",
        ],
    );
    let t = ps(&api, "img")
        .into_iter()
        .find(|t| t["state"] == "running")
        .expect("create waited for it to run");
    assert!(t["message"].as_str().unwrap().contains("healthy"), "{t}");
    let why = update_rolled_back(&api, &["img", "--image", &rig.unhealthy_image]);
    assert!(why.contains("unhealthy"), "{why}");
    let back = wait_until("img back on the healthy image", WAIT, || {
        ps(&api, "img").into_iter().find(|t| {
            t["state"] == "running"
                && t["desired_state"] == "running"
                && t["image"] == rig.healthy_image.as_str()
        })
    });
    assert_eq!(back["spec_version"], 1, "{back}");
    assert!(
        ps(&api, "img")
            .iter()
            .any(|t| t["image"] == rig.unhealthy_image.as_str()
                && t["error"].as_str().unwrap_or("").contains("unhealthy")),
        "{:#?}",
        ps(&api, "img")
    );
}

/// #14: `kill -9` of the leader in the middle of a rolling update on real containers: the
/// new leader continues it from the replicated state; it completes with no slot updated
/// twice, and the restarted manager comes back with the same state.
#[test]
fn rolling_update_through_a_leader_kill() {
    if !is_root() {
        eprintln!("SKIPPED: containerd tests need root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let rig = Rig::start(&tmp.path().join("rig"));
    let mut c = Cluster::form_in(
        tempfile::tempdir_in(tmp.path()).unwrap(),
        (1..=3).map(|i| tmp.path().join(format!("lk-m{i}"))).collect(),
    );
    let all = c.all();
    let token = ok(c.api(1), &["cluster", "join-token", "worker", "-q"])
        .trim()
        .to_string();
    let _w1 = worker(&rig, &all, Some(&token), "lk-1", &tmp.path().join("lk-1"), "lk-1");
    let _w2 = worker(&rig, &all, Some(&token), "lk-2", &tmp.path().join("lk-2"), "lk-2");
    let sleeper = "trap 'exit 143' TERM; while true; do sleep 1; done";
    ok(
        &all,
        &[
            "service",
            "create",
            "-d",
            "web",
            "--image",
            &rig.image,
            "--replicas",
            "6",
            "-e",
            "V=1",
            "--stop-timeout",
            "2s",
            "--",
            "sh",
            "-c",
            sleeper,
        ],
    );
    wait_until("6 tasks of version 1 running", WAIT, || {
        (versions(&running_versions(&all, "web")) == vec![1; 6]).then_some(())
    });
    ok(
        &all,
        &[
            "service",
            "update",
            "web",
            "--env-add",
            "V=2",
            "--update-parallelism",
            "2",
            "--update-monitor",
            "2s",
            "--detach",
        ],
    );
    // Mid-update: some slots done or in flight, not all.
    wait_until("the update under way", WAIT, || {
        let u = json_of(&all, &["service", "inspect", "web"])["update_status"].clone();
        (u["state"] == "updating" && !u["done_slots"].as_array()?.is_empty()).then_some(())
    });
    let leader = info(&all)
        .and_then(|i| i["leader_id"].as_u64())
        .expect("a leader");
    c.procs[leader as usize - 1].kill9();
    let survivors = c.apis_except(&[leader]).join(",");
    let end = wait_until(
        "the update to complete under the new leader",
        Duration::from_secs(120),
        || {
            let s = json_of(&survivors, &["service", "inspect", "web"]);
            (s["update_status"]["state"] != "updating").then_some(s)
        },
    );
    assert_eq!(end["update_status"]["state"], "completed", "{end}");
    let tasks = ps(&survivors, "web");
    for slot in 1..=6u64 {
        let new = tasks
            .iter()
            .filter(|t| t["slot"] == slot && t["spec_version"] == 2)
            .count();
        assert_eq!(new, 1, "slot {slot} got {new} tasks of version 2");
    }
    assert_eq!(versions(&running_versions(&survivors, "web")), vec![2; 6]);
    wait_until("6 containers", WAIT, || {
        (rig.running("lk-1").len() + rig.running("lk-2").len() == 6).then_some(())
    });
    // The killed manager comes back with the same service state.
    let back = c.procs[leader as usize - 1].restart();
    let api = back.api.clone();
    c.procs[leader as usize - 1] = back;
    wait_until("the restarted manager sees the update completed", WAIT, || {
        let out = warren(&api, &["service", "inspect", "web", "-o", "json"]);
        let s: Value = serde_json::from_slice(&out.stdout).ok()?;
        (s["update_status"]["state"] == "completed" && s["spec_version"] == 2).then_some(())
    });
}

/// Backup of a cluster with 50 services running as real containers, the manager lost for
/// good (killed, its data dir deleted), a new cluster restored from the backup at another
/// address, and the worker restarted against it with a fresh token: it adopts every
/// container; none is restarted (same containers, same processes).
#[test]
fn backup_and_restore_with_real_containers() {
    const SERVICES: usize = 50;
    if !is_root() {
        eprintln!("SKIPPED: containerd tests need root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let rig = Rig::start_alone(&tmp.path().join("rig"));
    let mut m = ManagerProc::start(&tmp.path().join("m1"));
    let api = m.api.clone();
    let token = ok(&api, &["cluster", "join-token", "worker", "-q"])
        .trim()
        .to_string();
    let ns = "restore";
    let dir = tmp.path().join("rw1");
    let mut w = worker(&rig, &api, Some(&token), "rw1", &dir, ns);
    for i in 0..SERVICES {
        ok(
            &api,
            &[
                "service",
                "create",
                "-d",
                &format!("r{i:02}"),
                "--image",
                &rig.image,
                "--",
                "sh",
                "-c",
                "trap 'exit 143' TERM; sleep 100000 & wait",
            ],
        );
    }
    let before = rig.wait_running(ns, SERVICES);
    let file = tmp.path().join("backup.wbk");
    let out = ok(&api, &["cluster", "backup", "--out", &file.display().to_string()]);
    assert!(out.contains(&format!("{SERVICES} services")), "{out}");

    // The manager is gone for good; the operator keeps the credential `cluster init` wrote.
    m.kill9();

    // A new cluster from the backup at another address.
    let (api2, raft2) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    keep_admin_credential(&m.data_dir, &tmp.path().join("operator"), &[&api2]);
    std::fs::remove_dir_all(&m.data_dir).unwrap();
    let restored = tmp.path().join("restored");
    let r = ManagerProc::restore(&file, &api2, &raft2, &restored);
    r.wait_ready();
    assert_eq!(services(&api2).len(), SERVICES);

    // The worker, pointed at the new manager with a fresh token, adopts what runs.
    let fresh = ok(&api2, &["cluster", "join-token", "worker", "-q"])
        .trim()
        .to_string();
    w.kill9();
    let w = worker(&rig, &api2, Some(&fresh), "rw1", &dir, ns);
    wait_until("the worker to adopt its containers", WAIT, || {
        w.log_text().contains("adopted").then_some(())
    });
    wait_until(
        "every task reported running to the restored cluster",
        WAIT,
        || {
            let running = json_of(&api2, &["node", "ls"])
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["id"] == "rw1" && n["status"] == "ready");
            (running
                && (0..SERVICES).all(|i| {
                    ps(&api2, &format!("r{i:02}"))
                        .iter()
                        .any(|t| t["state"] == "running")
                }))
            .then_some(())
        },
    );
    assert_eq!(
        rig.running(ns),
        before,
        "same containers, same processes: nothing restarted"
    );
    assert!(
        !w.log_text().contains("task started"),
        "the worker started a task after the restore:\n{}",
        w.log_text()
    );
    drop(r);
}
