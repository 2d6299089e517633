//! Model types of the replicated cluster state.

pub use super::health::{HealthCheck, HealthStatus};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

pub use super::limits::MAX_REPLICAS;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    #[default]
    Worker,
    Manager,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Manager => "manager",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartCondition {
    None,
    OnFailure,
    #[default]
    Any,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    pub condition: RestartCondition,
    /// 0 = unlimited.
    pub max_attempts: u32,
    pub delay_ms: u64,
}

/// What the restart policy says about a finished task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    /// Never again (condition or attempts exhausted).
    No,
    /// Yes, once the delay is over.
    Later,
    Now,
}

impl RestartPolicy {
    /// `failed`: it ended in failure (not a clean exit); `restarts_so_far`: attempts already
    /// made; `finished_at_ms` / `now_ms`: for the delay. Used by the managers' reconciler and
    /// by a worker restarting tasks itself while cut off.
    ///
    /// Both times are wall-clock readings, possibly of different machines (the manager that
    /// took the report, the leader deciding). A finish time in the future means the clock
    /// moved back (or disagrees): the delay counts as over, since waiting for the clock to
    /// catch up could stall the slot for as long as the jump (found in the simulator: a
    /// leader's clock set back an hour stopped every restart for an hour). A jump costs at
    /// most one skipped delay, never a stall.
    pub fn decide(&self, failed: bool, restarts_so_far: u32, finished_at_ms: i64, now_ms: i64) -> Restart {
        let wanted = match self.condition {
            RestartCondition::None => false,
            RestartCondition::OnFailure => failed,
            RestartCondition::Any => true,
        };
        if !wanted || (self.max_attempts != 0 && restarts_so_far >= self.max_attempts) {
            Restart::No
        } else if (finished_at_ms
            ..finished_at_ms.saturating_add(i64::try_from(self.delay_ms).unwrap_or(i64::MAX)))
            .contains(&now_ms)
        {
            Restart::Later
        } else {
            Restart::Now
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Thousandths of a CPU.
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceRequirements {
    pub reservations: Resources,
    pub limits: Resources,
}

/// What an operator asks for when creating or updating a service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    pub image: String,
    /// Signed so that a negative request reaches validation; stored values are 0..=MAX_REPLICAS.
    pub replicas: i64,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub resources: ResourceRequirements,
    pub restart_policy: RestartPolicy,
    pub constraints: Vec<String>,
    pub stop_timeout_ms: u64,
    /// How a change of the tasks' spec rolls out (`service update --update-*`).
    pub update_config: UpdateConfig,
    /// How a rollback rolls out (`--rollback-*`).
    pub rollback_config: UpdateConfig,
    /// The service's health check (`--health-*`); None: the image's HEALTHCHECK, if any.
    pub healthcheck: Option<HealthCheck>,
    /// Ignore the image's HEALTHCHECK (`--no-healthcheck`).
    pub no_healthcheck: bool,
}

impl ServiceSpec {
    /// Whether `other` runs different tasks: everything but the replica count and the
    /// rollout settings. Only such a change makes a new spec version and a rolling update.
    pub fn same_tasks(&self, other: &ServiceSpec) -> bool {
        let strip = |s: &ServiceSpec| ServiceSpec {
            replicas: 0,
            update_config: UpdateConfig::default(),
            rollback_config: UpdateConfig::default(),
            ..s.clone()
        };
        strip(self) == strip(other)
    }
}

/// What an update does when a new task fails (Swarm's `--update-failure-action`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureAction {
    #[default]
    Pause,
    Continue,
    Rollback,
}

/// Which goes first when a slot's task is replaced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateOrder {
    /// Stop the old task, then start the new one (the new image is pulled first).
    #[default]
    StopFirst,
    /// Start the new task, stop the old one once the new one runs.
    StartFirst,
}

/// Rollout settings; the defaults are Swarm's, plus a timeout for a new task to come up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateConfig {
    /// Slots replaced at once; 0 = all.
    pub parallelism: u32,
    /// Wait after a slot is done before the next one starts.
    pub delay_ms: u64,
    pub failure_action: FailureAction,
    /// How long a new task must keep running (and healthy) before its slot counts as done.
    pub monitor_ms: u64,
    /// Failed slots tolerated, in thousandths of the slots to update (0: none).
    pub max_failure_permille: u32,
    pub order: UpdateOrder,
    /// How long a new task may take to be pulled and reach running before it counts as failed.
    pub timeout_ms: u64,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay_ms: 0,
            failure_action: FailureAction::Pause,
            monitor_ms: 5_000,
            max_failure_permille: 0,
            order: UpdateOrder::StopFirst,
            timeout_ms: 300_000,
        }
    }
}

/// Where a rolling update (or rollback) is; `Updating` and `RollbackStarted` are in progress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateState {
    #[default]
    Updating,
    Paused,
    Completed,
    RollbackStarted,
    RollbackPaused,
    RollbackCompleted,
}

impl UpdateState {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Updating => "updating",
            UpdateState::Paused => "paused",
            UpdateState::Completed => "completed",
            UpdateState::RollbackStarted => "rollback_started",
            UpdateState::RollbackPaused => "rollback_paused",
            UpdateState::RollbackCompleted => "rollback_completed",
        }
    }

    pub fn in_progress(self) -> bool {
        matches!(self, UpdateState::Updating | UpdateState::RollbackStarted)
    }

    pub fn is_rollback(self) -> bool {
        matches!(
            self,
            UpdateState::RollbackStarted | UpdateState::RollbackPaused | UpdateState::RollbackCompleted
        )
    }
}

/// A slot being replaced: its new task and the task it replaces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotUpdate {
    pub new_task_id: String,
    /// Empty if the slot had no active task.
    pub old_task_id: String,
    pub started_at_ms: i64,
    /// When the orchestrator first saw the new task running with the old one stopped (the
    /// monitor period counts from here).
    pub running_since_ms: Option<i64>,
}

/// The progress of a rolling update, in the replicated state: a new leader continues it
/// exactly where it was.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    pub state: UpdateState,
    pub from_version: u64,
    pub to_version: u64,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub message: String,
    /// Slots whose new task passed its monitor period.
    pub done: BTreeSet<u32>,
    /// Slots whose new task failed, and why.
    pub failed: BTreeMap<u32, String>,
    pub in_flight: BTreeMap<u32, SlotUpdate>,
    /// No new slot starts before this (the update delay).
    pub next_slot_at_ms: i64,
    /// Bumped by every change; an orchestrator change names the revision it read, so a stale
    /// round changes nothing.
    pub revision: u64,
}

/// An earlier spec of a service, kept for rollback and for tasks still running it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecVersion {
    pub version: u64,
    pub spec: ServiceSpec,
    /// When another version took its place.
    pub replaced_at_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub id: String,
    pub spec: ServiceSpec,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Raft log index of the last change to this service.
    pub version: u64,
    /// Version of `spec`'s tasks (1 at create; a new number for every change of the tasks).
    pub spec_version: u64,
    /// Highest spec version handed out so far.
    pub last_spec_version: u64,
    /// Earlier specs, oldest first: the last `SPEC_HISTORY` and any that a task still runs.
    pub previous: Vec<SpecVersion>,
    /// The latest rolling update or rollback, if any.
    pub update: Option<Box<UpdateStatus>>,
}

impl Service {
    /// A service as created at log `index`: spec version 1, no history, no update.
    pub fn new(id: String, spec: ServiceSpec, now_ms: i64, index: u64) -> Service {
        Service {
            id,
            spec,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            version: index,
            spec_version: 1,
            last_spec_version: 1,
            previous: Vec::new(),
            update: None,
        }
    }

    /// The spec of version `v`, if it is kept.
    pub fn spec_of(&self, v: u64) -> Option<&ServiceSpec> {
        if v == self.spec_version {
            return Some(&self.spec);
        }
        self.previous.iter().find(|p| p.version == v).map(|p| &p.spec)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeStatus {
    #[default]
    Unknown,
    Ready,
    Down,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Availability {
    #[default]
    Active,
    Drain,
    Pause,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    pub role: Role,
    pub address: String,
    pub status: NodeStatus,
    pub availability: Availability,
    pub labels: BTreeMap<String, String>,
    pub capacity: Resources,
    pub last_heartbeat_ms: i64,
    pub created_at_ms: i64,
    pub version: u64,
    /// The Warren build the node last reported (`warren version`); empty when unknown.
    pub agent_version: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TaskState {
    #[default]
    New,
    Pending,
    Assigned,
    Preparing,
    Starting,
    Running,
    Complete,
    Failed,
    Shutdown,
    Rejected,
    Orphaned,
    /// Prepared (image pulled), not started: a stop-first update's new task waits here
    /// while its predecessor stops.
    Ready,
}

impl TaskState {
    /// A task in a terminal state never runs again (a replacement is a new task).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Complete | TaskState::Failed | TaskState::Shutdown | TaskState::Rejected
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::New => "new",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Preparing => "preparing",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Failed => "failed",
            TaskState::Shutdown => "shutdown",
            TaskState::Rejected => "rejected",
            TaskState::Orphaned => "orphaned",
            TaskState::Ready => "ready",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub service_id: String,
    /// Replica number, 1..=replicas; a replacement takes over its predecessor's slot.
    pub slot: u32,
    /// Replacements of this slot before this task (restart policy's attempt count).
    pub attempt: u32,
    /// The service spec version this task runs (`Service::spec_of`).
    pub spec_version: u64,
    /// Empty while pending.
    pub node_id: String,
    pub desired_state: TaskState,
    pub state: TaskState,
    pub message: String,
    pub error: String,
    pub exit_code: i32,
    pub container_id: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub version: u64,
    /// Its health check's last reported verdict; None: no check, or none reported yet.
    pub health: Option<HealthStatus>,
}

impl Task {
    /// Wanted running and not finished: holds its slot (an orphaned task does not, until
    /// its node comes back).
    pub fn is_active(&self) -> bool {
        self.desired_state == TaskState::Running
            && !self.state.is_terminal()
            && self.state != TaskState::Orphaned
    }

    /// Reserves resources on its node: assigned and not yet finished.
    pub fn holds_node(&self) -> bool {
        !self.node_id.is_empty() && !self.state.is_terminal() && self.state != TaskState::Orphaned
    }
}

/// A join token as the replicated state keeps it: only a hash of the secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenRecord {
    pub role: Role,
    /// Hex SHA-256 of the whole token string.
    pub hash_hex: String,
    pub issued_at_ms: i64,
    pub expires_at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_decisions_never_stall_on_a_clock_jump() {
        let p = |condition, max_attempts, delay_ms| RestartPolicy {
            condition,
            max_attempts,
            delay_ms,
        };
        use RestartCondition::*;
        // (policy, failed, restarts so far, finished at, now, want)
        let cases = [
            (p(Any, 0, 1_000), false, 0, 10_000, 10_500, Restart::Later),
            (p(Any, 0, 1_000), false, 0, 10_000, 11_000, Restart::Now),
            (p(Any, 0, 0), false, 0, 10_000, 10_000, Restart::Now),
            (p(OnFailure, 0, 0), false, 0, 10_000, 20_000, Restart::No),
            (p(OnFailure, 0, 0), true, 0, 10_000, 20_000, Restart::Now),
            (p(None, 0, 0), true, 0, 10_000, 20_000, Restart::No),
            (p(Any, 3, 0), true, 3, 10_000, 20_000, Restart::No),
            (p(Any, 3, 0), true, 2, 10_000, 20_000, Restart::Now),
            // The clock was set back an hour after the finish was stamped: no hour-long wait.
            (
                p(Any, 0, 1_000),
                true,
                0,
                10_000 + 3_600_000,
                10_500,
                Restart::Now,
            ),
            // Set forward: the delay is over at once too.
            (
                p(Any, 0, 1_000),
                true,
                0,
                10_000,
                10_000 + 3_600_000,
                Restart::Now,
            ),
            (p(Any, 0, u64::MAX), true, 0, 10_000, 10_500, Restart::Later),
        ];
        for (policy, failed, restarts, finished, now, want) in cases {
            assert_eq!(
                policy.decide(failed, restarts, finished, now),
                want,
                "{policy:?} failed={failed} restarts={restarts} finished={finished} now={now}"
            );
        }
    }
}
