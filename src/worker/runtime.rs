//! The seam between the worker agent and whatever runs containers. containerd implements it
//! in a later release; `SimRuntime` (in `sim_runtime.rs`) serves the simulator, unit tests
//! and `warren worker start --runtime sim`.

use crate::core::ServiceSpec;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerStatus {
    Starting,
    Running,
    Exited(i32),
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RuntimeError {
    /// The image could not be pulled: the task is rejected.
    #[error("pulling image {image}: {reason}")]
    Pull { image: String, reason: String },
    #[error("container {0} not found")]
    NotFound(String),
    /// The runtime itself is down; try again later.
    #[error("container runtime unavailable: {0}")]
    Unavailable(String),
}

#[tonic::async_trait]
pub trait ContainerRuntime: Send + Sync {
    async fn pull(&self, image: &str) -> Result<(), RuntimeError>;
    /// Creates and starts a container for `task_id`; returns its id.
    async fn start(&self, task_id: &str, spec: &ServiceSpec) -> Result<String, RuntimeError>;
    /// Stops a container, killing it after `timeout`.
    async fn stop(&self, container_id: &str, timeout: Duration) -> Result<(), RuntimeError>;
    async fn status(&self, container_id: &str) -> Result<ContainerStatus, RuntimeError>;
    /// Containers this runtime knows: (container id, task id, status).
    async fn list(&self) -> Result<Vec<(String, String, ContainerStatus)>, RuntimeError>;
}
