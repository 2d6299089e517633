//! Model types of the replicated cluster state.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub id: String,
    pub spec: ServiceSpec,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Raft log index of the last change to this service.
    pub version: u64,
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
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub service_id: String,
    /// Replica number, 1..=replicas; a replacement takes over its predecessor's slot.
    pub slot: u32,
    /// Replacements of this slot before this task (restart policy's attempt count).
    pub attempt: u32,
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
