//! Helpers for the real-process tests: a `warren` manager as a child process on loopback.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The `warren` binary every helper runs: this build's, unless `use_bin` chose another
/// (the rolling upgrade test runs two builds).
pub fn bin() -> PathBuf {
    BIN.lock()
        .unwrap()
        .clone()
        .unwrap_or_else(|| assert_cmd::cargo::cargo_bin("warren"))
}

static BIN: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

/// Runs `path` as `warren` from now on (`None`: this build's).
pub fn use_bin(path: Option<PathBuf>) {
    *BIN.lock().unwrap() = path;
}

/// The operator credential of each manager a test started (by API address): the one
/// `cluster init` wrote to its data dir, shared by the managers that joined it.
static ADMIN_DIRS: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());

pub fn remember_admin_dir(api: &str, dir: PathBuf) {
    ADMIN_DIRS.lock().unwrap().push((api.to_string(), dir));
}

/// The operator credential for `manager` (a comma-separated list: the first address a
/// manager was started on), or the newest one still on disk (for addresses where none runs:
/// tests run in parallel, and another test's data dir may be gone already).
pub fn admin_dir_for(manager: &str) -> Option<PathBuf> {
    let dirs = ADMIN_DIRS.lock().unwrap();
    manager
        .split(',')
        .find_map(|m| dirs.iter().rev().find(|(a, _)| a == m))
        .or_else(|| dirs.iter().rev().find(|(_, d)| d.join("admin.crt").exists()))
        .map(|(_, d)| d.clone())
}

/// A client transport presenting the operator credential for `manager`.
pub fn admin_transport(manager: &str) -> warren::security::Transport {
    let dir = admin_dir_for(manager).expect("no manager started by this test");
    let cred = warren::security::store::Credential::load(&dir, "admin").expect("the operator credential");
    warren::security::Transport::new(&cred).unwrap()
}

/// A `Client` for `managers`, as the operator.
pub fn admin_client<S: AsRef<str>>(managers: &[S]) -> warren::client::Client {
    let first = managers
        .first()
        .map(|m| m.as_ref().to_string())
        .unwrap_or_default();
    warren::client::Client::new(managers, admin_transport(&first)).unwrap()
}

/// A `Client` holding the certificate of worker `node_id`, got with a worker token from
/// `manager` (as `worker start` does), kept under `dir`.
pub async fn worker_client(manager: &str, node_id: &str, dir: &Path) -> warren::client::Client {
    let cred = enrolled(manager, warren::core::Role::Worker, node_id, dir).await;
    warren::client::Client::new(&[manager], warren::security::Transport::new(&cred).unwrap()).unwrap()
}

/// A certificate for `role` `node_id`, got with a fresh join token from `manager`.
pub async fn enrolled(
    manager: &str,
    role: warren::core::Role,
    node_id: &str,
    dir: &Path,
) -> warren::security::store::Credential {
    let kind = match role {
        warren::core::Role::Worker => "worker",
        warren::core::Role::Manager => "manager",
    };
    let token = stdout(&warren(manager, &["cluster", "join-token", kind, "-q"]))
        .trim()
        .to_string();
    warren::security::enroll::enroll(dir, &token, &[manager], role, node_id)
        .await
        .expect("a certificate")
}

/// `Command::new(bin())` with the operator credential for `manager` in the environment.
pub fn warren_cmd(manager: &str) -> Command {
    let mut cmd = Command::new(bin());
    cmd.env_remove("WARREN_TLS_DIR");
    if let Some(d) = admin_dir_for(manager) {
        cmd.env("WARREN_TLS_DIR", d);
    }
    cmd
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    // The kernel may hand out a port it just handed out once its listener is closed (CI saw
    // one manager given the same port for its API and its Raft address), so a port is given
    // at most once per test process.
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if GIVEN.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// A manager child process; killed with SIGKILL (by its PID) when dropped.
pub struct ManagerProc {
    pub child: Child,
    pub api: String,
    pub raft: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

impl ManagerProc {
    pub fn init_args(api: &str, raft: &str, data_dir: &Path) -> Vec<String> {
        vec![
            "cluster".into(),
            "init".into(),
            "--node-id".into(),
            "1".into(),
            "--api-addr".into(),
            api.into(),
            "--bind-addr".into(),
            raft.into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
        ]
    }

    /// Starts `warren cluster init` and waits until it answers `cluster info`.
    pub fn start(data_dir: &Path) -> ManagerProc {
        let api = format!("127.0.0.1:{}", free_port());
        let raft = format!("127.0.0.1:{}", free_port());
        Self::start_on(data_dir, &api, &raft)
    }

    pub fn start_on(data_dir: &Path, api: &str, raft: &str) -> ManagerProc {
        Self::start_with(data_dir, api, raft, &[])
    }

    /// Starts with extra flags appended to `cluster init`.
    pub fn start_with(data_dir: &Path, api: &str, raft: &str, extra: &[&str]) -> ManagerProc {
        let mut args = Self::init_args(api, raft, data_dir);
        args.extend(extra.iter().map(|s| s.to_string()));
        remember_admin_dir(api, data_dir.join("admin"));
        let m = Self::spawn(&args, api, raft, data_dir);
        m.wait_ready();
        m
    }

    /// Spawns `warren ARGS` as a manager process without waiting for anything.
    pub fn spawn(args: &[String], api: &str, raft: &str, data_dir: &Path) -> ManagerProc {
        let log = data_dir.with_extension(format!("{}.log", free_port()));
        let child = Command::new(bin())
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawning warren");
        ManagerProc {
            child,
            api: api.into(),
            raft: raft.into(),
            data_dir: data_dir.into(),
            log,
        }
    }

    /// `warren cluster init --restore BACKUP` at `api`/`raft` into `data_dir`, without
    /// waiting; the caller has the operator credential remembered for `api`.
    pub fn restore(backup: &Path, api: &str, raft: &str, data_dir: &Path) -> ManagerProc {
        let mut args = Self::init_args(api, raft, data_dir);
        args.extend(["--restore".to_string(), backup.display().to_string()]);
        Self::spawn(&args, api, raft, data_dir)
    }

    /// `warren manager join` for node `id` on 127.0.0.`host`, through `leaders`.
    pub fn join(id: u64, host: u8, token: &str, leaders: &str, data_dir: &Path) -> ManagerProc {
        Self::join_with(id, host, token, leaders, data_dir, &[])
    }

    /// `join` with extra flags.
    pub fn join_with(
        id: u64,
        host: u8,
        token: &str,
        leaders: &str,
        data_dir: &Path,
        extra: &[&str],
    ) -> ManagerProc {
        let api = format!("127.0.0.{host}:{}", free_port());
        let raft = format!("127.0.0.{host}:{}", free_port());
        let args: Vec<String> = [
            "manager",
            "join",
            "--token",
            token,
            "--leader",
            leaders,
            "--node-id",
            &id.to_string(),
            "--api-addr",
            &api,
            "--bind-addr",
            &raft,
            "--data-dir",
            &data_dir.display().to_string(),
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
        if let Some(d) = admin_dir_for(leaders) {
            remember_admin_dir(&api, d);
        }
        Self::spawn(&args, &api, &raft, data_dir)
    }

    /// `warren manager start --data-dir` on this manager's data dir (after a kill).
    pub fn restart(&self) -> ManagerProc {
        let args: Vec<String> = [
            "manager",
            "start",
            "--data-dir",
            &self.data_dir.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Self::spawn(&args, &self.api, &self.raft, &self.data_dir)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = warren(&self.api, &["cluster", "info", "-o", "json"]);
            if out.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                if v["leader_id"] == 1 && !v["cluster_id"].as_str().unwrap_or("").is_empty() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "manager did not become ready; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill9(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        self.child.wait().unwrap();
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// Waits up to `deadline` for the process to exit; returns its status.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ManagerProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = self.child.wait();
        }
    }
}

/// Runs the `warren` CLI against `manager`.
pub fn warren(manager: &str, args: &[&str]) -> Output {
    warren_cmd(manager)
        .arg("--manager")
        .arg(manager)
        .args(args)
        .env_remove("WARREN_MANAGER")
        .output()
        .expect("running warren")
}

/// `service create NAME --image busybox --replicas N`, which must succeed.
pub fn create_service(api: &str, name: &str, replicas: u32) {
    let replicas = replicas.to_string();
    let out = warren(
        api,
        &[
            "service",
            "create",
            "-d",
            name,
            "--image",
            "busybox",
            "--replicas",
            &replicas,
        ],
    );
    assert!(out.status.success(), "create {name}: {}", stderr(&out));
}

/// `warren ARGS -o json`, which must succeed.
pub fn json_of(api: &str, args: &[&str]) -> serde_json::Value {
    let mut full = args.to_vec();
    full.extend(["-o", "json"]);
    let out = warren(api, &full);
    assert!(out.status.success(), "warren {args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `service ls -o json` as (name -> json).
pub fn services(manager: &str) -> serde_json::Map<String, serde_json::Value> {
    let out = warren(manager, &["service", "ls", "-o", "json"]);
    assert!(out.status.success(), "service ls failed: {}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_string(), s.clone()))
        .collect()
}

/// Copies the operator credential `cluster init` wrote in `data_dir` to `to` (an operator
/// keeps it when the manager's data dir is lost) and uses it for each of `apis`.
pub fn keep_admin_credential(data_dir: &Path, to: &Path, apis: &[&str]) {
    std::fs::create_dir_all(to).unwrap();
    for f in std::fs::read_dir(data_dir.join("admin")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
    }
    for api in apis {
        remember_admin_dir(api, to.to_path_buf());
    }
}

/// Every task of the cluster (all services), through an admin client.
pub fn all_tasks(api: &str) -> Vec<warren::proto::v1::Task> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(admin_client(&[api]).list_tasks("", false))
        .expect("listing tasks")
}

/// How many tasks of the cluster run.
pub fn running_tasks(api: &str) -> usize {
    all_tasks(api)
        .iter()
        .filter(|t| t.state == warren::proto::v1::TaskState::Running as i32)
        .count()
}

/// `cluster info -o json` from `manager`, if it answers.
pub fn info(manager: &str) -> Option<serde_json::Value> {
    let out = warren(manager, &["cluster", "info", "-o", "json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

/// Voter ids in a `cluster info` answer.
pub fn voters(info: &serde_json::Value) -> Vec<u64> {
    info["managers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["voter"] == true)
        .map(|m| m["id"].as_u64().unwrap())
        .collect()
}

/// Polls `check` every 50 ms until it returns Some or `deadline` passes (then panics with `what`).
pub fn wait_until<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until every manager in `apis` reports the same leader (one of `apis`' managers)
/// and exactly `want` voters; returns the leader id.
pub fn wait_cluster(apis: &[&str], want: &[u64], deadline: Duration) -> u64 {
    wait_until("managers to agree on leader and voters", deadline, || {
        let mut leader = None;
        for api in apis {
            let i = info(api)?;
            let l = i["leader_id"].as_u64()?;
            if voters(&i) != want || leader.is_some_and(|x| x != l) || l == 0 {
                return None;
            }
            leader = Some(l);
        }
        let l = leader?;
        // the leader must be one of the managers asked (not a dead one they remember)
        apis.iter()
            .any(|a| info(a).is_some_and(|i| i["answered_by"] == l))
            .then_some(l)
    })
}

/// A manager token issued through `manager` (extra flags such as --ttl, --rotate).
pub fn manager_token(manager: &str, extra: &[&str]) -> String {
    let mut args = vec!["cluster", "join-token", "manager", "-q"];
    args.extend(extra);
    let out = warren(manager, &args);
    assert!(out.status.success(), "join-token: {}", stderr(&out));
    stdout(&out).trim().to_string()
}

/// Managers as real processes: manager 1 on 127.0.0.1 with `cluster init`, managers 2..=n on
/// 127.0.0.N with `manager join`, each awaited until every manager lists it as a voter.
pub struct Cluster {
    pub procs: Vec<ManagerProc>,
    pub _tmp: tempfile::TempDir,
}

/// How long a cluster may take to form or to agree again.
pub const FORM: Duration = Duration::from_secs(30);

impl Cluster {
    pub fn form(n: u64) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = (1..=n).map(|i| tmp.path().join(format!("m{i}"))).collect();
        Self::form_in(tmp, dirs)
    }

    /// As `form`, with manager i's data dir at `dirs[i - 1]`.
    pub fn form_in(tmp: tempfile::TempDir, dirs: Vec<PathBuf>) -> Cluster {
        let first = ManagerProc::start(&dirs[0]);
        let token = manager_token(&first.api, &[]);
        let mut procs = vec![first];
        for i in 2..=dirs.len() as u64 {
            let leaders = procs.iter().map(|p| p.api.clone()).collect::<Vec<_>>().join(",");
            procs.push(ManagerProc::join(
                i,
                i as u8,
                &token,
                &leaders,
                &dirs[i as usize - 1],
            ));
            let apis: Vec<&str> = procs.iter().map(|p| p.api.as_str()).collect();
            wait_cluster(&apis, &(1..=i).collect::<Vec<_>>(), FORM);
        }
        Cluster { procs, _tmp: tmp }
    }

    pub fn api(&self, id: u64) -> &str {
        &self.procs[id as usize - 1].api
    }

    pub fn apis_except(&self, dead: &[u64]) -> Vec<&str> {
        (1..=self.procs.len() as u64)
            .filter(|i| !dead.contains(i))
            .map(|i| self.api(i))
            .collect()
    }

    /// Every manager's API address, comma separated (a CLI `--manager` list).
    pub fn all(&self) -> String {
        self.apis_except(&[]).join(",")
    }

    pub fn others(&self, id: u64) -> Vec<u64> {
        (1..=self.procs.len() as u64).filter(|i| *i != id).collect()
    }
}

/// A worker child process, SIGKILLed by its PID when dropped.
pub struct WorkerProc {
    pub child: Child,
    pub log: std::path::PathBuf,
}

impl WorkerProc {
    pub fn spawn(
        manager: &str,
        token: Option<&str>,
        id: &str,
        data_dir: &Path,
        extra: &[&str],
    ) -> WorkerProc {
        let log = data_dir.with_extension("log");
        let mut cmd = Command::new(bin());
        cmd.args([
            "--manager",
            manager,
            "worker",
            "start",
            "--node-id",
            id,
            "--data-dir",
        ])
        .arg(data_dir)
        .args(extra)
        .env_remove("WARREN_TOKEN")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
        if let Some(t) = token {
            cmd.args(["--token", t]);
        }
        WorkerProc {
            child: cmd.spawn().expect("spawning the worker"),
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn wait_exit(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        wait_until_opt(deadline, || self.child.try_wait().unwrap())
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn wait_until_opt<T>(deadline: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = std::time::Instant::now() + deadline;
    while std::time::Instant::now() < end {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}
