//! The production container runtime: containerd over its unix socket (production build
//! only; madsim-tonic has no unix-socket connector, so the simulator uses `SimRuntime`).
//!
//! - Every container lives in one containerd namespace (`--containerd-namespace`, default
//!   `warren`), its id is the task id, and it carries the label `warren.task-id`.
//! - Status comes from containerd's task exit and OOM events, watched by one background
//!   task that resubscribes when the stream drops and then reconciles against a list, so
//!   no exit is missed; a call per container happens only for one this process has not
//!   seen yet (say, adopted after the agent restarted).
//! - stdout and stderr go from the shim to a `warren log-writer` process per container
//!   (containerd's `binary://` log URI), which stamps each line with its time and stream
//!   and writes `DATA_DIR/logs/TASK.log`, capped with one older copy (`log_writer`). The
//!   shim owns that process, so a container never blocks on a stopped agent.

pub mod auth;
pub mod pull;
pub mod spec;

use super::runtime::{ContainerRuntime, ContainerStatus, ExecResult, Listed, RuntimeError};
use crate::core::ServiceSpec;
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::snapshots::{
    snapshots_client::SnapshotsClient, PrepareSnapshotRequest, RemoveSnapshotRequest,
};
use containerd_client::services::v1::{
    containers_client::ContainersClient, events_client::EventsClient,
    introspection_client::IntrospectionClient, namespaces_client::NamespacesClient,
    tasks_client::TasksClient, version_client::VersionClient, Container, CreateContainerRequest,
    CreateNamespaceRequest, CreateTaskRequest, DeleteContainerRequest, DeleteProcessRequest,
    DeleteTaskRequest, ExecProcessRequest, GetContainerRequest, GetRequest, KillRequest,
    ListContainersRequest, ListTasksRequest, Namespace, PluginsRequest, StartRequest, SubscribeRequest,
    UpdateNamespaceRequest, WaitRequest,
};
use containerd_client::tonic::{self, transport::Channel, Request};
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{debug, info, warn};

pub const SNAPSHOTTER: &str = "overlayfs";
const RUNC_SHIM: &str = "io.containerd.runc.v2";
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
pub const LABEL_TASK: &str = "warren.task-id";
pub const LABEL_SERVICE: &str = "warren.service";
/// The worker (node id) a container belongs to: two workers sharing a containerd and a
/// namespace never touch each other's containers.
pub const LABEL_NODE: &str = "warren.node";
/// containerd must answer at start within this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One call to containerd (creating a task forks a shim and runc: seconds on a slow host).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Grace after SIGKILL for the process to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// Host files bind-mounted read-only into every container (host networking).
const HOST_FILES: &[&str] = &["/etc/resolv.conf", "/etc/hosts"];

/// The containerd connection, with the namespace every request carries.
#[derive(Clone)]
pub struct Conn {
    channel: Channel,
    namespace: String,
}

impl Conn {
    fn req<T>(&self, m: T) -> Request<T> {
        let mut r = Request::new(m);
        r.metadata_mut().insert(
            "containerd-namespace",
            self.namespace.parse().expect("validated namespace"),
        );
        r.set_timeout(CALL_TIMEOUT);
        r
    }

    /// A request under `lease`, with no deadline: a blob write or a layer's unpack takes as
    /// long as the layer is big (the writer has its own stall timeout instead).
    fn leased<T>(&self, m: T, lease: &str) -> Request<T> {
        let mut r = Request::new(m);
        r.metadata_mut().insert(
            "containerd-namespace",
            self.namespace.parse().expect("validated namespace"),
        );
        r.metadata_mut()
            .insert("containerd-lease", lease.parse().expect("ascii lease id"));
        r
    }
}

/// What starting a container needs from its image.
#[derive(Clone, Debug)]
pub struct ImageInfo {
    pub defaults: spec::ImageDefaults,
    /// The committed snapshot of the image's top layer.
    pub top_chain: String,
}

/// containerd's answer as a runtime error: down (retry later), missing, or anything else.
pub fn status_to_error(s: tonic::Status) -> RuntimeError {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            RuntimeError::Unavailable(format!("containerd: {}", s.message()))
        }
        tonic::Code::NotFound => RuntimeError::NotFound(s.message().to_string()),
        _ => RuntimeError::Start(s.message().to_string()),
    }
}

#[derive(Clone, Debug)]
pub struct ContainerdOpts {
    pub socket: PathBuf,
    pub namespace: String,
    pub node_id: String,
    /// Where task logs go (`DATA_DIR/logs`).
    pub logs_dir: PathBuf,
    /// The `warren` binary, which the shim runs as each container's `log-writer`.
    pub log_writer: PathBuf,
    pub registry: pull::RegistryOpts,
    /// cgroup parent of every container (`/warren` → `/warren/TASK`).
    pub cgroup_parent: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("containerd socket {0} does not exist: install and start containerd (Debian: apt-get install containerd), pass --containerd-socket PATH for one elsewhere, or --runtime sim to try Warren without containers")]
    Missing(String),
    #[error("cannot connect to containerd at {path}: {reason} (is containerd running? is this the right --containerd-socket?)")]
    Unreachable { path: String, reason: String },
    #[error(
        "containerd at {0} did not answer within 5 s; check that it is healthy (`ctr --address {0} version`)"
    )]
    Silent(String),
    #[error("--containerd-namespace {0:?} is not a valid namespace: use lowercase letters, digits, '-', '_' and '.', starting with a letter")]
    Namespace(String),
    #[error("cannot create log directory {path}: {source}")]
    Logs { path: String, source: std::io::Error },
}

/// What the event watcher knows about each container.
#[derive(Default)]
struct Known {
    status: HashMap<String, ContainerStatus>,
    oom: HashSet<String>,
    /// The init pid of each container's current task: an exit event of an earlier task of
    /// the same id (say the one a start replaced) is not this one's.
    pids: HashMap<String, u32>,
}

impl Known {
    /// Records `s` unless an exit is already known: a status read that raced with the exit
    /// event must not bring a dead container back to life.
    fn observe(&mut self, id: &str, s: ContainerStatus) {
        if !self.status.get(id).is_some_and(|old| old.is_exited()) || s.is_exited() {
            self.status.insert(id.to_string(), s);
        }
    }
}

pub struct ContainerdRuntime {
    conn: Conn,
    puller: pull::Puller,
    opts: ContainerdOpts,
    /// Image as the service names it → what a start needs, filled by the first pull; the
    /// async mutex makes concurrent tasks of one image pull it once.
    images: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<ImageInfo>>>>>,
    known: Arc<Mutex<Known>>,
}

fn valid_namespace(ns: &str) -> bool {
    !ns.is_empty()
        && ns.len() <= 76
        && ns.starts_with(|c: char| c.is_ascii_lowercase())
        && ns
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

impl ContainerdRuntime {
    /// Connects, checks containerd answers, creates the namespace and starts watching
    /// events.
    pub async fn connect(opts: ContainerdOpts) -> Result<Arc<Self>, ConnectError> {
        let path = opts.socket.display().to_string();
        if !valid_namespace(&opts.namespace) {
            return Err(ConnectError::Namespace(opts.namespace.clone()));
        }
        if !opts.socket.exists() {
            return Err(ConnectError::Missing(path));
        }
        let mut opts = opts;
        // Absolute: the shim opens it from its own working directory.
        opts.logs_dir = std::fs::create_dir_all(&opts.logs_dir)
            .and_then(|()| std::fs::canonicalize(&opts.logs_dir))
            .map_err(|source| ConnectError::Logs {
                path: opts.logs_dir.display().to_string(),
                source,
            })?;
        let channel =
            match tokio::time::timeout(CONNECT_TIMEOUT, containerd_client::connect(&opts.socket)).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    // A socket that accepts and never speaks HTTP/2 ends in tonic's own timeout.
                    let mut cause: &dyn std::error::Error = &e;
                    while let Some(next) = cause.source() {
                        cause = next;
                    }
                    // (Its type is not always reachable through the chain: match its words.)
                    if cause.is::<tonic::TimeoutExpired>() || cause.to_string() == "Timeout expired" {
                        return Err(ConnectError::Silent(path));
                    }
                    return Err(ConnectError::Unreachable {
                        path,
                        reason: cause.to_string(),
                    });
                }
                Err(_) => return Err(ConnectError::Silent(path)),
            };
        let conn = Conn {
            channel,
            namespace: opts.namespace.clone(),
        };
        let mut vreq = Request::new(());
        vreq.set_timeout(CONNECT_TIMEOUT);
        let version = match VersionClient::new(conn.channel.clone()).version(vreq).await {
            Ok(v) => v.into_inner().version,
            Err(s)
                if matches!(s.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled)
                    || s.message().contains("Timeout expired") =>
            {
                return Err(ConnectError::Silent(path))
            }
            Err(s) => {
                return Err(ConnectError::Unreachable {
                    path,
                    reason: s.message().to_string(),
                })
            }
        };
        match NamespacesClient::new(conn.channel.clone())
            .create(conn.req(CreateNamespaceRequest {
                namespace: Some(Namespace {
                    name: opts.namespace.clone(),
                    labels: HashMap::new(),
                }),
            }))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::AlreadyExists => {}
            Err(s) => {
                return Err(ConnectError::Unreachable {
                    path,
                    reason: format!("creating namespace {}: {}", opts.namespace, s.message()),
                })
            }
        }
        // Images are pulled on the client side on every version (containerd 1.6 has no
        // Transfer service); say whether the daemon has one.
        let transfer = IntrospectionClient::new(conn.channel.clone())
            .plugins(conn.req(PluginsRequest {
                filters: vec!["type==io.containerd.transfer.v1".into()],
            }))
            .await
            .map(|r| !r.into_inner().plugins.is_empty())
            .unwrap_or(false);
        info!(%version, socket = %path, namespace = %opts.namespace, transfer_service = transfer, "connected to containerd; pulls resolve and fetch on the client side");
        let rt = Arc::new(ContainerdRuntime {
            puller: pull::Puller::new(&opts.registry),
            conn,
            opts,
            images: Mutex::new(HashMap::new()),
            known: Arc::new(Mutex::new(Known::default())),
        });
        tokio::spawn(watch_events(rt.conn.clone(), rt.known.clone()));
        Ok(rt)
    }

    pub fn log_path(logs_dir: &Path, task_id: &str) -> PathBuf {
        crate::worker::logs::file(logs_dir, task_id)
    }

    async fn image(&self, image: &str) -> Result<ImageInfo, RuntimeError> {
        let slot = self
            .images
            .lock()
            .unwrap()
            .entry(image.to_string())
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some(info) = slot.as_ref() {
            return Ok(info.clone());
        }
        let info = self.conn.pull(&self.puller, image).await?;
        *slot = Some(info.clone());
        Ok(info)
    }

    fn remove_logs(&self, task_id: &str) {
        let p = Self::log_path(&self.opts.logs_dir, task_id);
        let _ = std::fs::remove_file(rotated(&p));
        let _ = std::fs::remove_file(p);
    }

    fn forget_image(&self, image: &str) {
        self.images.lock().unwrap().remove(image);
    }

    async fn task_status(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        let p = TasksClient::new(self.conn.channel.clone())
            .get(self.conn.req(GetRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
            .map_err(status_to_error)?
            .into_inner()
            .process
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
        let mut known = self.known.lock().unwrap();
        let s = process_status(p.status, p.exit_status, known.oom.contains(id));
        known.observe(id, s);
        known.pids.insert(id.to_string(), p.pid);
        Ok(known.status[id])
    }

    /// Deletes the task (killing it first if it still runs), the container and its
    /// snapshot; what is already gone is skipped.
    async fn delete_all(&self, id: &str) -> Result<(), RuntimeError> {
        let mut tasks = TasksClient::new(self.conn.channel.clone());
        let killed = tasks
            .kill(self.conn.req(KillRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
                signal: nix::sys::signal::Signal::SIGKILL as u32,
                all: true,
            }))
            .await;
        // Delete refuses a process that has not been reaped yet (containerd 1.6 says so
        // with code Unknown, not FailedPrecondition), so wait for the exit first.
        if killed.is_ok() {
            let _ = tokio::time::timeout(KILL_WAIT, self.wait(id)).await;
        }
        let ignore_missing = |r: Result<(), tonic::Status>| match r {
            Ok(()) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(status_to_error(s)),
        };
        let delete = || {
            let mut tasks = tasks.clone();
            let req = self.conn.req(DeleteTaskRequest {
                container_id: id.to_string(),
            });
            async move { tasks.delete(req).await.map(|_| ()) }
        };
        match delete().await {
            // Still running (a process of the task outlived init): wait again, once.
            Err(s)
                if s.code() == tonic::Code::FailedPrecondition || s.message().contains("running process") =>
            {
                let _ = tokio::time::timeout(KILL_WAIT, self.wait(id)).await;
                ignore_missing(delete().await)?;
            }
            other => ignore_missing(other)?,
        }
        ignore_missing(
            ContainersClient::new(self.conn.channel.clone())
                .delete(self.conn.req(DeleteContainerRequest { id: id.to_string() }))
                .await
                .map(|_| ()),
        )?;
        ignore_missing(
            SnapshotsClient::new(self.conn.channel.clone())
                .remove(self.conn.req(RemoveSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: id.to_string(),
                }))
                .await
                .map(|_| ()),
        )?;
        let mut known = self.known.lock().unwrap();
        known.status.remove(id);
        known.oom.remove(id);
        known.pids.remove(id);
        Ok(())
    }

    /// Waits for the task's init process to exit; its exit code.
    async fn wait(&self, id: &str) -> Result<u32, tonic::Status> {
        let mut r = Request::new(WaitRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        });
        r.metadata_mut().insert(
            "containerd-namespace",
            self.conn.namespace.parse().expect("validated"),
        );
        Ok(TasksClient::new(self.conn.channel.clone())
            .wait(r)
            .await?
            .into_inner()
            .exit_status)
    }

    async fn signal(&self, id: &str, sig: nix::sys::signal::Signal, all: bool) -> Result<(), tonic::Status> {
        TasksClient::new(self.conn.channel.clone())
            .kill(self.conn.req(KillRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
                signal: sig as u32,
                all,
            }))
            .await
            .map(|_| ())
    }

    async fn prepare_and_create(
        &self,
        task_id: &str,
        spec: &ServiceSpec,
        info: &ImageInfo,
        oci: serde_json::Value,
        lease: &str,
    ) -> Result<Vec<containerd_client::types::Mount>, RuntimeError> {
        let in_lease = |md: &mut tonic::metadata::MetadataMap| {
            md.insert("containerd-lease", lease.parse().expect("ascii lease id"));
        };
        let mut prepare = self.conn.req(PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: task_id.to_string(),
            parent: info.top_chain.clone(),
            labels: HashMap::new(),
        });
        in_lease(prepare.metadata_mut());
        let mounts = SnapshotsClient::new(self.conn.channel.clone())
            .prepare(prepare)
            .await
            .map_err(status_to_error)?
            .into_inner()
            .mounts;
        let container = Container {
            id: task_id.to_string(),
            labels: [
                (LABEL_TASK.to_string(), task_id.to_string()),
                (LABEL_SERVICE.to_string(), spec.name.clone()),
                (LABEL_NODE.to_string(), self.opts.node_id.clone()),
            ]
            .into(),
            image: pull::image_name(&spec.image)?.1,
            runtime: Some(Runtime {
                name: RUNC_SHIM.into(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.into(),
                value: serde_json::to_vec(&oci).expect("serializable"),
            }),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: task_id.to_string(),
            ..Default::default()
        };
        let mut create = self.conn.req(CreateContainerRequest {
            container: Some(container),
        });
        in_lease(create.metadata_mut());
        ContainersClient::new(self.conn.channel.clone())
            .create(create)
            .await
            .map_err(status_to_error)?;
        Ok(mounts)
    }

    async fn create_and_start(
        &self,
        task_id: &str,
        spec: &ServiceSpec,
        info: &ImageInfo,
    ) -> Result<(), RuntimeError> {
        let host_files: Vec<&str> = HOST_FILES
            .iter()
            .copied()
            .filter(|f| Path::new(f).exists())
            .collect();
        let oci = spec::runtime_spec(
            task_id,
            &self.opts.cgroup_parent,
            &info.defaults,
            spec,
            &host_files,
        )
        .map_err(RuntimeError::Start)?;
        // Under a lease until the container references its snapshot, so that a GC between
        // the two cannot take the snapshot.
        let lease = self.conn.lease("start", 600).await.map_err(status_to_error)?;
        let r = self.prepare_and_create(task_id, spec, info, oci, &lease).await;
        self.conn.drop_lease(lease).await;
        let mounts = r?;
        let log = Self::log_path(&self.opts.logs_dir, task_id);
        let uri = log_uri(&self.opts.log_writer, &log);
        self.known
            .lock()
            .unwrap()
            .status
            .insert(task_id.to_string(), ContainerStatus::Starting);
        let mut tasks = TasksClient::new(self.conn.channel.clone());
        tasks
            .create(self.conn.req(CreateTaskRequest {
                container_id: task_id.to_string(),
                rootfs: mounts,
                stdout: uri.clone(),
                stderr: uri,
                ..Default::default()
            }))
            .await
            .map_err(status_to_error)?;
        let pid = tasks
            .start(self.conn.req(StartRequest {
                container_id: task_id.to_string(),
                exec_id: String::new(),
            }))
            .await
            .map_err(status_to_error)?
            .into_inner()
            .pid;
        let mut known = self.known.lock().unwrap();
        known.pids.insert(task_id.to_string(), pid);
        // An exit event may already have come in: keep it.
        if known.status.get(task_id) == Some(&ContainerStatus::Starting) {
            known.status.insert(task_id.to_string(), ContainerStatus::Running);
        }
        Ok(())
    }
}

fn process_status(status: i32, exit_status: u32, oom: bool) -> ContainerStatus {
    use containerd_client::types::v1::Status;
    match Status::try_from(status).unwrap_or(Status::Unknown) {
        Status::Created => ContainerStatus::Starting,
        Status::Running | Status::Paused | Status::Pausing => ContainerStatus::Running,
        Status::Stopped => exited(exit_status, oom),
        Status::Unknown => ContainerStatus::Starting,
    }
}

fn exited(code: u32, oom: bool) -> ContainerStatus {
    if oom {
        ContainerStatus::OomKilled(code as i32)
    } else {
        ContainerStatus::Exited(code as i32)
    }
}

/// The runtime spec's type, for a process of an exec.
const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
/// Output of a probe read back (its end).
const EXEC_OUTPUT_BYTES: u64 = 4096;

impl ContainerdRuntime {
    /// The container's own process spec (user, cwd, env, capabilities) with `cmd` as its
    /// arguments: what an exec runs.
    async fn exec_spec(&self, container_id: &str, cmd: &[String]) -> Result<prost_types::Any, RuntimeError> {
        let c = ContainersClient::new(self.conn.channel.clone())
            .get(self.conn.req(GetContainerRequest {
                id: container_id.to_string(),
            }))
            .await
            .map_err(status_to_error)?
            .into_inner()
            .container
            .ok_or_else(|| RuntimeError::NotFound(container_id.to_string()))?;
        let spec: serde_json::Value = c
            .spec
            .as_ref()
            .and_then(|a| serde_json::from_slice(&a.value).ok())
            .ok_or_else(|| RuntimeError::Start(format!("container {container_id} has no readable spec")))?;
        let mut process = spec.get("process").cloned().unwrap_or_default();
        process["args"] = serde_json::json!(cmd);
        process["terminal"] = serde_json::json!(false);
        Ok(prost_types::Any {
            type_url: PROCESS_TYPE_URL.into(),
            value: serde_json::to_vec(&process).expect("JSON"),
        })
    }

    async fn exec_in(
        &self,
        container_id: &str,
        exec_id: &str,
        cmd: &[String],
        out: &Path,
        timeout: Duration,
    ) -> Result<Option<i32>, RuntimeError> {
        let spec = self.exec_spec(container_id, cmd).await?;
        let uri = format!("file://{}", out.display());
        let mut tasks = TasksClient::new(self.conn.channel.clone());
        tasks
            .exec(self.conn.req(ExecProcessRequest {
                container_id: container_id.to_string(),
                stdin: String::new(),
                stdout: uri.clone(),
                stderr: uri,
                terminal: false,
                spec: Some(spec),
                exec_id: exec_id.to_string(),
            }))
            .await
            .map_err(status_to_error)?;
        // Waiting before starting: an exit cannot come before the wait is in place.
        let mut wait = Request::new(WaitRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
        });
        wait.metadata_mut().insert(
            "containerd-namespace",
            self.conn.namespace.parse().expect("validated"),
        );
        let mut waiter = tasks.clone();
        let waited = tokio::spawn(async move { waiter.wait(wait).await });
        let started = tasks
            .start(self.conn.req(StartRequest {
                container_id: container_id.to_string(),
                exec_id: exec_id.to_string(),
            }))
            .await;
        if let Err(s) = started {
            waited.abort();
            return Err(RuntimeError::Start(format!(
                "the health command did not start: {}",
                s.message()
            )));
        }
        match tokio::time::timeout(timeout, waited).await {
            Ok(Ok(Ok(r))) => Ok(Some(r.into_inner().exit_status as i32)),
            Ok(Ok(Err(s))) => Err(status_to_error(s)),
            Ok(Err(e)) => Err(RuntimeError::Unavailable(format!(
                "waiting for the health command: {e}"
            ))),
            Err(_) => {
                let _ = tasks
                    .kill(self.conn.req(KillRequest {
                        container_id: container_id.to_string(),
                        exec_id: exec_id.to_string(),
                        signal: nix::sys::signal::Signal::SIGKILL as u32,
                        all: false,
                    }))
                    .await;
                Ok(None)
            }
        }
    }
}

/// The end of file `p` as text.
fn read_tail(p: &Path, max: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(p) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.take(max).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

static EXEC_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[tonic::async_trait]
impl ContainerRuntime for ContainerdRuntime {
    async fn exec(
        &self,
        container_id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecResult, RuntimeError> {
        let n = EXEC_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let exec_id = format!("health-{}-{n}", std::process::id());
        let out = self.opts.logs_dir.join(format!("{container_id}.{exec_id}.out"));
        let code = self.exec_in(container_id, &exec_id, cmd, &out, timeout).await;
        // The process is deleted whatever happened (a started one that timed out was killed).
        let _ = TasksClient::new(self.conn.channel.clone())
            .delete_process(self.conn.req(DeleteProcessRequest {
                container_id: container_id.to_string(),
                exec_id: exec_id.clone(),
            }))
            .await;
        let output = read_tail(&out, EXEC_OUTPUT_BYTES);
        let _ = std::fs::remove_file(&out);
        Ok(ExecResult {
            exit_code: code?,
            output,
        })
    }

    fn image_healthcheck(&self, image: &str) -> Option<crate::core::HealthCheck> {
        let slot = self.images.lock().unwrap().get(image).cloned()?;
        let info = slot.try_lock().ok()?;
        info.as_ref()?.defaults.healthcheck.clone()
    }

    async fn pull(&self, image: &str) -> Result<(), RuntimeError> {
        self.image(image).await.map(|_| ())
    }

    async fn start(&self, task_id: &str, spec: &ServiceSpec) -> Result<String, RuntimeError> {
        let info = self.image(&spec.image).await?;
        // A container left from an earlier run of this task (a local restart, or a start
        // interrupted by the agent's own restart) is replaced.
        self.delete_all(task_id).await?;
        match self.create_and_start(task_id, spec, &info).await {
            Ok(()) => Ok(task_id.to_string()),
            Err(e) => {
                if matches!(e, RuntimeError::NotFound(_)) {
                    // The image's snapshots went away underneath us: pull again next time.
                    self.forget_image(&spec.image);
                }
                // Nothing half-made is left behind.
                if let Err(cleanup) = self.delete_all(task_id).await {
                    warn!(task = %task_id, error = %cleanup, "could not clean up after a failed start");
                }
                self.remove_logs(task_id);
                Err(match e {
                    RuntimeError::NotFound(m) => RuntimeError::Start(m),
                    e => e,
                })
            }
        }
    }

    async fn stop(&self, container_id: &str, timeout: Duration) -> Result<(), RuntimeError> {
        match self
            .signal(container_id, nix::sys::signal::Signal::SIGTERM, false)
            .await
        {
            Ok(()) => {}
            // containerd 1.6 answers NotFound ("process already finished") for a task that
            // has exited: then its status says so; no task or container at all is NotFound.
            Err(s) if s.code() == tonic::Code::NotFound => {
                return match self.task_status(container_id).await {
                    Ok(st) if st.is_exited() => Ok(()),
                    Ok(_) => Err(RuntimeError::Unavailable(format!(
                        "{container_id}: SIGTERM not delivered: {}",
                        s.message()
                    ))),
                    Err(e) => Err(e),
                };
            }
            // Already exited.
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {}
            Err(s) => return Err(status_to_error(s)),
        }
        let code = match tokio::time::timeout(timeout, self.wait(container_id)).await {
            Ok(Ok(code)) => code,
            Ok(Err(s)) => return Err(status_to_error(s)),
            Err(_) => {
                info!(container = %container_id, timeout_ms = timeout.as_millis() as u64, "did not stop on SIGTERM in time; SIGKILL");
                match self
                    .signal(container_id, nix::sys::signal::Signal::SIGKILL, true)
                    .await
                {
                    Ok(()) => {}
                    Err(s) if s.code() == tonic::Code::FailedPrecondition => {}
                    Err(s) => return Err(status_to_error(s)),
                }
                match tokio::time::timeout(KILL_WAIT, self.wait(container_id)).await {
                    Ok(Ok(code)) => code,
                    Ok(Err(s)) => return Err(status_to_error(s)),
                    Err(_) => {
                        return Err(RuntimeError::Unavailable(format!(
                            "{container_id} did not die on SIGKILL"
                        )))
                    }
                }
            }
        };
        let mut known = self.known.lock().unwrap();
        let oom = known.oom.contains(container_id);
        known.status.insert(container_id.to_string(), exited(code, oom));
        Ok(())
    }

    async fn remove(&self, container_id: &str) -> Result<(), RuntimeError> {
        match ContainersClient::new(self.conn.channel.clone())
            .get(
                self.conn
                    .req(containerd_client::services::v1::GetContainerRequest {
                        id: container_id.to_string(),
                    }),
            )
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::NotFound => {
                self.remove_logs(container_id);
                return Err(RuntimeError::NotFound(container_id.into()));
            }
            Err(s) => return Err(status_to_error(s)),
        }
        self.delete_all(container_id).await?;
        self.remove_logs(container_id);
        Ok(())
    }

    fn logs_dir(&self) -> Option<PathBuf> {
        Some(self.opts.logs_dir.clone())
    }

    async fn status(&self, container_id: &str) -> Result<ContainerStatus, RuntimeError> {
        if let Some(s) = self.known.lock().unwrap().status.get(container_id) {
            return Ok(*s);
        }
        self.task_status(container_id).await
    }

    async fn list(&self) -> Result<Vec<Listed>, RuntimeError> {
        let containers = ContainersClient::new(self.conn.channel.clone())
            .list(self.conn.req(ListContainersRequest {
                filters: vec![format!("labels.\"{LABEL_NODE}\"=={}", self.opts.node_id)],
            }))
            .await
            .map_err(status_to_error)?
            .into_inner()
            .containers;
        let mut out = Vec::with_capacity(containers.len());
        for c in containers {
            let status = match self.status(&c.id).await {
                Ok(s) => s,
                // A container with no process (say, after a host reboot): exit unknown.
                Err(RuntimeError::NotFound(_)) => ContainerStatus::Exited(-1),
                Err(e) => return Err(e),
            };
            out.push(Listed {
                task_id: c.labels.get(LABEL_TASK).cloned().unwrap_or_default(),
                container_id: c.id,
                status,
            });
        }
        Ok(out)
    }
}

use crate::worker::logs::rotated;

/// `binary:///WARREN?log-writer=FILE`: the shim runs `WARREN log-writer FILE` (a query's
/// key and value become two arguments; one key keeps their order fixed).
pub fn log_uri(warren: &Path, file: &Path) -> String {
    fn escape(p: &Path) -> String {
        let mut out = String::new();
        for &b in p.as_os_str().as_encoded_bytes() {
            if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }
    format!("binary://{}?log-writer={}", escape(warren), escape(file))
}

/// Follows task exit and OOM events for ever. A subscription sends nothing until the first
/// event, so after subscribing it touches a label on its namespace (which publishes an
/// event) until the stream opens; then it lists the tasks so that exits that happened while
/// no stream was open are known too.
async fn watch_events(conn: Conn, known: Arc<Mutex<Known>>) {
    let mut backoff = crate::retry::Backoff::new(100, 5_000);
    let mut probe_seq: u64 = 0;
    loop {
        let mut events = EventsClient::new(conn.channel.clone());
        let sub = events.subscribe(SubscribeRequest {
            filters: vec![
                r#"topic=="/tasks/exit""#.into(),
                r#"topic=="/tasks/oom""#.into(),
                r#"topic=="/namespaces/update""#.into(),
            ],
        });
        let mut sub = std::pin::pin!(sub);
        let opened = loop {
            probe_seq += 1;
            let mut namespaces = NamespacesClient::new(conn.channel.clone());
            let probe = namespaces.update(conn.req(UpdateNamespaceRequest {
                namespace: Some(Namespace {
                    name: conn.namespace.clone(),
                    labels: [("warren.events-probe".to_string(), probe_seq.to_string())].into(),
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["labels.warren.events-probe".into()],
                }),
            }));
            if let Err(s) = probe.await {
                debug!(error = %s.message(), "containerd events: probe failed");
            }
            tokio::select! {
                r = &mut sub => break r,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        };
        let mut stream = match opened {
            Ok(s) => s.into_inner(),
            Err(s) => {
                warn!(error = %s.message(), "cannot subscribe to containerd events; retrying");
                backoff.wait(None).await;
                continue;
            }
        };
        if let Err(s) = reconcile(&conn, &known).await {
            warn!(error = %s.message(), "cannot list containerd tasks; resubscribing");
            backoff.wait(None).await;
            continue;
        }
        info!("watching containerd events");
        backoff = crate::retry::Backoff::new(100, 5_000);
        loop {
            match stream.message().await {
                Ok(Some(env)) => {
                    if env.namespace != conn.namespace {
                        continue;
                    }
                    let Some(ev) = env.event else { continue };
                    apply_event(&known, &env.topic, &ev.value);
                }
                Ok(None) | Err(_) => {
                    warn!("lost the containerd event stream (containerd restarted?); resubscribing");
                    break;
                }
            }
        }
    }
}

fn apply_event(known: &Mutex<Known>, topic: &str, value: &[u8]) {
    use containerd_client::events::{TaskExit, TaskOom};
    let mut k = known.lock().unwrap();
    match topic {
        "/tasks/exit" => {
            let Ok(ev) = TaskExit::decode(value) else { return };
            if ev.id != ev.container_id {
                return; // an exec'd process, not the container's own
            }
            if k.pids.get(&ev.container_id).is_some_and(|p| *p != ev.pid) {
                return; // the exit of an earlier task of this container id
            }
            let s = exited(ev.exit_status, k.oom.contains(&ev.container_id));
            info!(container = %ev.container_id, code = ev.exit_status, "container exited");
            k.status.insert(ev.container_id, s);
        }
        "/tasks/oom" => {
            let Ok(ev) = TaskOom::decode(value) else { return };
            warn!(container = %ev.container_id, "container went over its memory limit (OOM)");
            if let Some(ContainerStatus::Exited(c)) = k.status.get(&ev.container_id).copied() {
                k.status
                    .insert(ev.container_id.clone(), ContainerStatus::OomKilled(c));
            }
            k.oom.insert(ev.container_id);
        }
        _ => {}
    }
}

async fn reconcile(conn: &Conn, known: &Mutex<Known>) -> Result<(), tonic::Status> {
    let tasks = TasksClient::new(conn.channel.clone())
        .list(conn.req(ListTasksRequest {
            filter: String::new(),
        }))
        .await?
        .into_inner()
        .tasks;
    let mut k = known.lock().unwrap();
    let live: HashSet<&str> = tasks.iter().map(|t| t.container_id.as_str()).collect();
    // Containers whose task disappeared: asked afresh on the next status call.
    k.status.retain(|id, _| live.contains(id.as_str()));
    for t in &tasks {
        let s = process_status(t.status, t.exit_status, k.oom.contains(&t.container_id));
        k.observe(&t.container_id, s);
        k.pids.insert(t.container_id.clone(), t.pid);
    }
    Ok(())
}
