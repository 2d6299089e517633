//! The seam between the worker agent and whatever runs containers: containerd in production
//! (`containerd/`, not built under madsim), `SimRuntime` (`sim_runtime.rs`) in the simulator,
//! unit tests and `warren worker start --runtime sim`. Both pass the same contract suite
//! (`contract.rs`), so the simulator's runtime cannot drift from the real one.

use crate::core::ServiceSpec;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerStatus {
    Starting,
    Running,
    Exited(i32),
    /// Killed by the kernel for going over its memory limit (exit code as reported).
    OomKilled(i32),
}

impl ContainerStatus {
    pub fn is_exited(self) -> bool {
        matches!(self, ContainerStatus::Exited(_) | ContainerStatus::OomKilled(_))
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RuntimeError {
    /// The image could not be pulled (bad reference, unknown image, registry down, wrong
    /// credentials, no matching platform): the task is rejected.
    #[error("pulling image {image}: {reason}")]
    Pull { image: String, reason: String },
    /// The container could not be created or started (say its command does not exist in the
    /// image): the task is rejected.
    #[error("starting the container: {0}")]
    Start(String),
    #[error("container {0} not found")]
    NotFound(String),
    /// The runtime itself is down; try again later.
    #[error("container runtime unavailable: {0}")]
    Unavailable(String),
}

/// What a command run in a container (`exec`) gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecResult {
    /// None: it did not finish within the timeout and was killed.
    pub exit_code: Option<i32>,
    /// Its stdout and stderr together, the last `MAX_PROBE_OUTPUT_BYTES` or so.
    pub output: String,
}

/// One container of this worker, as the runtime lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub container_id: String,
    pub task_id: String,
    pub status: ContainerStatus,
}

#[tonic::async_trait]
pub trait ContainerRuntime: Send + Sync {
    /// Makes `image` available locally; concurrent pulls of one image pull it once.
    async fn pull(&self, image: &str) -> Result<(), RuntimeError>;
    /// Creates and starts a container for `task_id` (replacing one left from an earlier run
    /// of the same task); returns its id.
    async fn start(&self, task_id: &str, spec: &ServiceSpec) -> Result<String, RuntimeError>;
    /// Stops a container: SIGTERM, SIGKILL after `timeout`. It stays listed (exited) until
    /// removed.
    async fn stop(&self, container_id: &str, timeout: Duration) -> Result<(), RuntimeError>;
    /// Deletes a container (killing it first if it still runs) and everything it held: its
    /// root filesystem, its logs.
    async fn remove(&self, container_id: &str) -> Result<(), RuntimeError>;
    async fn status(&self, container_id: &str) -> Result<ContainerStatus, RuntimeError>;
    /// Every container this worker's runtime holds, running or exited.
    async fn list(&self) -> Result<Vec<Listed>, RuntimeError>;
    /// Runs `cmd` inside running container `container_id` (its namespaces, user, working
    /// directory and environment), killing it after `timeout`: a health probe.
    async fn exec(
        &self,
        container_id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecResult, RuntimeError>;
    /// The HEALTHCHECK of `image` (pulled before), if its config has one.
    fn image_healthcheck(&self, _image: &str) -> Option<crate::core::HealthCheck> {
        None
    }
    /// Where task output goes (`DIR/TASK.log`, one older copy `TASK.log.1`); None if this
    /// runtime keeps none.
    fn logs_dir(&self) -> Option<std::path::PathBuf> {
        None
    }
}

/// Times every operation of the runtime it wraps (`warren_worker_runtime_operation_seconds`,
/// and `..._failures_total` for those that fail), for `--metrics-addr`.
pub struct Timed(pub std::sync::Arc<dyn ContainerRuntime>);

async fn timed<T>(
    op: &str,
    f: impl std::future::Future<Output = Result<T, RuntimeError>>,
) -> Result<T, RuntimeError> {
    let started = std::time::Instant::now();
    let r = f.await;
    crate::metrics::runtime_op(op, started.elapsed().as_secs_f64(), r.is_ok());
    r
}

#[tonic::async_trait]
impl ContainerRuntime for Timed {
    async fn pull(&self, image: &str) -> Result<(), RuntimeError> {
        timed("pull", self.0.pull(image)).await
    }
    async fn start(&self, task_id: &str, spec: &ServiceSpec) -> Result<String, RuntimeError> {
        timed("start", self.0.start(task_id, spec)).await
    }
    async fn stop(&self, container_id: &str, timeout: Duration) -> Result<(), RuntimeError> {
        timed("stop", self.0.stop(container_id, timeout)).await
    }
    async fn remove(&self, container_id: &str) -> Result<(), RuntimeError> {
        timed("remove", self.0.remove(container_id)).await
    }
    async fn status(&self, container_id: &str) -> Result<ContainerStatus, RuntimeError> {
        timed("status", self.0.status(container_id)).await
    }
    async fn list(&self) -> Result<Vec<Listed>, RuntimeError> {
        timed("list", self.0.list()).await
    }
    async fn exec(
        &self,
        container_id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecResult, RuntimeError> {
        timed("exec", self.0.exec(container_id, cmd, timeout)).await
    }
    fn image_healthcheck(&self, image: &str) -> Option<crate::core::HealthCheck> {
        self.0.image_healthcheck(image)
    }
    fn logs_dir(&self) -> Option<std::path::PathBuf> {
        self.0.logs_dir()
    }
}
