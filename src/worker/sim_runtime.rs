//! An in-memory container runtime with fault knobs. Under madsim one instance lives per
//! simulated host (`SimRuntime::for_host`) and survives a restart of the worker agent, as
//! containerd's containers survive the agent on a real host.
//!
//! Knobs, global to the runtime (`SimKnobs`) or per service through its environment:
//! - `WARREN_SIM_EXIT_AFTER_MS` / `WARREN_SIM_EXIT_CODE`: the container exits after that
//!   long with that code (default 0); with `WARREN_SIM_OOM=1` it is reported killed for
//!   going over its memory limit;
//! - a command starting with `/nonexistent` fails to start (as a missing binary does);
//! - images listed in `fail_pull` (or named `*-pullfail`) fail to pull;
//! - `start_delay_ms`: a slow start (the container is `Starting` that long);
//! - `crash()` / `recover()`: the runtime itself is down (every call fails) and back;
//! - `exec` (health probes): `true` exits 0, `false` 1, `sleep` hangs past any timeout;
//!   anything else exits 0, or 1 while the container is younger than
//!   `WARREN_SIM_HEALTHY_AFTER_MS`, or always with `WARREN_SIM_UNHEALTHY=1`.

use super::runtime::{ContainerRuntime, ContainerStatus, ExecResult, Listed, RuntimeError};
use crate::core::ServiceSpec;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Clone, Debug, Default)]
pub struct SimKnobs {
    pub fail_pull: BTreeSet<String>,
    pub start_delay_ms: u64,
    /// A stop asked while set never answers (a call lost by a wedged runtime, as a
    /// containerd request on a connection that died); stops asked later work again.
    pub hang_stops: bool,
}

#[derive(Debug)]
struct Container {
    task_id: String,
    started: Instant,
    start_delay: Duration,
    exit_after: Option<(Duration, i32)>,
    oom: bool,
    stopped: Option<i32>,
    healthy_after: Duration,
    unhealthy: bool,
}

impl Container {
    fn status(&self, now: Instant) -> ContainerStatus {
        if let Some(code) = self.stopped {
            return ContainerStatus::Exited(code);
        }
        let age = now - self.started;
        if age < self.start_delay {
            return ContainerStatus::Starting;
        }
        match self.exit_after {
            Some((after, code)) if age >= self.start_delay + after && self.oom => {
                ContainerStatus::OomKilled(code)
            }
            Some((after, code)) if age >= self.start_delay + after => ContainerStatus::Exited(code),
            _ => ContainerStatus::Running,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    knobs: SimKnobs,
    crashed: bool,
    next_id: u64,
    containers: BTreeMap<String, Container>,
    /// Containers started per task, ever (for checkers: local restarts).
    starts: BTreeMap<String, usize>,
}

#[derive(Clone, Debug, Default)]
pub struct SimRuntime {
    inner: Arc<Mutex<Inner>>,
}

#[cfg(madsim)]
thread_local! {
    static HOSTS: std::cell::RefCell<BTreeMap<String, SimRuntime>> = const { std::cell::RefCell::new(BTreeMap::new()) };
}

impl SimRuntime {
    pub fn new(knobs: SimKnobs) -> Self {
        let rt = SimRuntime::default();
        rt.inner.lock().unwrap().knobs = knobs;
        rt
    }

    /// The runtime of simulated host `host`, created on first use.
    #[cfg(madsim)]
    pub fn for_host(host: &str) -> SimRuntime {
        HOSTS.with(|h| h.borrow_mut().entry(host.to_string()).or_default().clone())
    }

    /// Every simulated host's runtime (for checkers).
    #[cfg(madsim)]
    pub fn hosts() -> BTreeMap<String, SimRuntime> {
        HOSTS.with(|h| h.borrow().clone())
    }

    /// Forgets all hosts (call at the start of each simulation).
    #[cfg(madsim)]
    pub fn reset_hosts() {
        HOSTS.with(|h| h.borrow_mut().clear());
    }

    pub fn set_knobs(&self, knobs: SimKnobs) {
        self.inner.lock().unwrap().knobs = knobs;
    }

    pub fn crash(&self) {
        self.inner.lock().unwrap().crashed = true;
    }

    pub fn recover(&self) {
        self.inner.lock().unwrap().crashed = false;
    }

    /// The host lost power: every container is gone.
    pub fn wipe(&self) {
        self.inner.lock().unwrap().containers.clear();
    }

    /// Task ids with a running (or starting) container.
    pub fn running_tasks(&self) -> Vec<String> {
        let now = Instant::now();
        let inner = self.inner.lock().unwrap();
        inner
            .containers
            .values()
            .filter(|c| !c.status(now).is_exited())
            .map(|c| c.task_id.clone())
            .collect()
    }

    /// How many containers were ever started for `task_id`.
    pub fn starts(&self, task_id: &str) -> usize {
        self.inner
            .lock()
            .unwrap()
            .starts
            .get(task_id)
            .copied()
            .unwrap_or(0)
    }

    fn live(&self) -> Result<std::sync::MutexGuard<'_, Inner>, RuntimeError> {
        let inner = self.inner.lock().unwrap();
        if inner.crashed {
            return Err(RuntimeError::Unavailable("simulated runtime crash".into()));
        }
        Ok(inner)
    }
}

fn env_u64(spec: &ServiceSpec, key: &str) -> Option<u64> {
    spec.env.get(key).and_then(|v| v.parse().ok())
}

#[tonic::async_trait]
impl ContainerRuntime for SimRuntime {
    async fn pull(&self, image: &str) -> Result<(), RuntimeError> {
        let inner = self.live()?;
        if inner.knobs.fail_pull.contains(image) || image.ends_with("-pullfail") {
            return Err(RuntimeError::Pull {
                image: image.to_string(),
                reason: "simulated pull failure: manifest unknown".into(),
            });
        }
        Ok(())
    }

    async fn start(&self, task_id: &str, spec: &ServiceSpec) -> Result<String, RuntimeError> {
        let mut inner = self.live()?;
        if spec
            .command
            .first()
            .is_some_and(|c| c.starts_with("/nonexistent"))
        {
            return Err(RuntimeError::Start(format!(
                "simulated: exec: {:?}: no such file or directory",
                spec.command[0]
            )));
        }
        // One container per task, as containerd keys them: an earlier one is replaced.
        inner.containers.retain(|_, c| c.task_id != task_id);
        *inner.starts.entry(task_id.to_string()).or_default() += 1;
        inner.next_id += 1;
        let id = format!("sim-{:06}", inner.next_id);
        let exit_after = env_u64(spec, "WARREN_SIM_EXIT_AFTER_MS").map(|ms| {
            let code = spec
                .env
                .get("WARREN_SIM_EXIT_CODE")
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            (Duration::from_millis(ms), code)
        });
        let start_delay = Duration::from_millis(inner.knobs.start_delay_ms);
        inner.containers.insert(
            id.clone(),
            Container {
                task_id: task_id.to_string(),
                started: Instant::now(),
                start_delay,
                exit_after,
                oom: spec.env.get("WARREN_SIM_OOM").is_some_and(|v| v == "1"),
                stopped: None,
                healthy_after: Duration::from_millis(
                    env_u64(spec, "WARREN_SIM_HEALTHY_AFTER_MS").unwrap_or(0),
                ),
                unhealthy: spec.env.get("WARREN_SIM_UNHEALTHY").is_some_and(|v| v == "1"),
            },
        );
        Ok(id)
    }

    async fn stop(&self, container_id: &str, _timeout: Duration) -> Result<(), RuntimeError> {
        if self.live()?.knobs.hang_stops {
            std::future::pending::<()>().await;
        }
        let mut inner = self.live()?;
        let c = inner
            .containers
            .get_mut(container_id)
            .ok_or_else(|| RuntimeError::NotFound(container_id.to_string()))?;
        // SIGTERM honoured at once: exit code 143 as a real process would give (one that
        // had exited already keeps its code).
        if let ContainerStatus::Exited(code) | ContainerStatus::OomKilled(code) = c.status(Instant::now()) {
            c.stopped.get_or_insert(code);
        }
        c.stopped.get_or_insert(143);
        Ok(())
    }

    async fn status(&self, container_id: &str) -> Result<ContainerStatus, RuntimeError> {
        let inner = self.live()?;
        inner
            .containers
            .get(container_id)
            .map(|c| c.status(Instant::now()))
            .ok_or_else(|| RuntimeError::NotFound(container_id.to_string()))
    }

    async fn remove(&self, container_id: &str) -> Result<(), RuntimeError> {
        let mut inner = self.live()?;
        // Killed first if it still runs, as containerd's removal does.
        match inner.containers.remove(container_id) {
            None => Err(RuntimeError::NotFound(container_id.to_string())),
            Some(_) => Ok(()),
        }
    }

    async fn exec(
        &self,
        container_id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecResult, RuntimeError> {
        let code = {
            let inner = self.live()?;
            let c = inner
                .containers
                .get(container_id)
                .ok_or_else(|| RuntimeError::NotFound(container_id.to_string()))?;
            let now = Instant::now();
            if c.status(now) != ContainerStatus::Running {
                return Err(RuntimeError::Start(format!(
                    "container {container_id} is not running"
                )));
            }
            match cmd.first().map(String::as_str) {
                Some("true") => 0,
                Some("false") => 1,
                Some("sleep") => -1,
                Some("echo") => 0,
                _ if c.unhealthy || now - c.started < c.start_delay + c.healthy_after => 1,
                _ => 0,
            }
        };
        if code < 0 {
            tokio::time::sleep(timeout).await;
            return Ok(ExecResult {
                exit_code: None,
                output: String::new(),
            });
        }
        let output = match cmd.split_first() {
            Some((first, rest)) if first == "echo" => rest.join(" "),
            _ if code == 0 => "ok".into(),
            _ => "simulated probe failure".into(),
        };
        Ok(ExecResult {
            exit_code: Some(code),
            output,
        })
    }

    async fn list(&self) -> Result<Vec<Listed>, RuntimeError> {
        let inner = self.live()?;
        let now = Instant::now();
        Ok(inner
            .containers
            .iter()
            .map(|(id, c)| Listed {
                container_id: id.clone(),
                task_id: c.task_id.clone(),
                status: c.status(now),
            })
            .collect())
    }
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;

    fn spec(env: &[(&str, &str)]) -> ServiceSpec {
        ServiceSpec {
            name: "web".into(),
            image: "busybox".into(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn knobs() {
        let rt = SimRuntime::new(SimKnobs {
            fail_pull: ["bad:1".to_string()].into(),
            start_delay_ms: 100,
            ..Default::default()
        });
        assert!(matches!(rt.pull("bad:1").await, Err(RuntimeError::Pull { .. })));
        assert!(rt.pull("busybox").await.is_ok());

        let quits = rt
            .start(
                "t1",
                &spec(&[("WARREN_SIM_EXIT_AFTER_MS", "500"), ("WARREN_SIM_EXIT_CODE", "3")]),
            )
            .await
            .unwrap();
        let stays = rt.start("t2", &spec(&[])).await.unwrap();
        assert_eq!(rt.status(&quits).await, Ok(ContainerStatus::Starting));
        tokio::time::advance(Duration::from_millis(150)).await;
        assert_eq!(rt.status(&quits).await, Ok(ContainerStatus::Running));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(rt.status(&quits).await, Ok(ContainerStatus::Exited(3)));
        assert_eq!(rt.status(&stays).await, Ok(ContainerStatus::Running));
        assert_eq!(rt.running_tasks(), vec!["t2".to_string()]);

        rt.crash();
        assert!(matches!(
            rt.status(&stays).await,
            Err(RuntimeError::Unavailable(_))
        ));
        rt.recover();
        rt.stop(&stays, Duration::from_secs(1)).await.unwrap();
        assert_eq!(rt.status(&stays).await, Ok(ContainerStatus::Exited(143)));
        assert_eq!(
            rt.status("nope").await,
            Err(RuntimeError::NotFound("nope".into()))
        );
    }
}
