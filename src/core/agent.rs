//! The worker agent's decisions, pure: from what it holds (its local tasks), what its
//! runtime shows (one observation per container), what the managers assign and whether they
//! are reachable, each tick's plan: the new local task set, the reports to send, and the
//! jobs (launch, local restart, stop, forget) that the I/O shell runs in the background.
//! The shell feeds each job's outcome back through [`apply`]. A task with a job in flight is
//! `busy` and left alone until its outcome is in, so a slow pull or a 10 s stop never holds
//! up the other tasks.

use super::health::{self, Health, HealthCheck, HealthStatus, Probe};
use super::{Restart, ServiceSpec, TaskState};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A task as the worker keeps it (in its data dir, across its own restarts).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LocalTask {
    pub id: String,
    pub service_name: String,
    pub slot: u32,
    pub spec: ServiceSpec,
    pub container_id: String,
    /// Last state this worker saw (and reported).
    pub state: TaskState,
    pub exit_code: i32,
    pub message: String,
    /// Restarts this worker made on its own while cut off from the managers.
    pub local_restarts: u32,
    /// When the container last exited (wall clock ms), for the restart delay.
    pub exited_at_ms: i64,
    /// Exited while no manager was reachable (or its exit was never acknowledged before the
    /// managers went out of reach) and the restart policy wants it again once its delay is
    /// over. (A task whose exit a manager acknowledged is the managers' to replace, never
    /// restarted here.)
    #[serde(default)]
    pub restart_due: bool,
    /// When this worker first saw its container running (wall clock ms; 0: not yet): the
    /// health check's start period counts from here.
    #[serde(default)]
    pub up_since_ms: i64,
    /// Its health, if it has a health check (`check_of`).
    #[serde(default)]
    pub health: Option<Health>,
    /// The image's HEALTHCHECK, learnt when the container started.
    #[serde(default)]
    pub image_check: Option<HealthCheck>,
}

/// The health check a task runs: the service's, else the image's unless the service says
/// `--no-healthcheck`.
pub fn check_of(t: &LocalTask) -> Option<&HealthCheck> {
    if t.spec.no_healthcheck {
        return None;
    }
    t.spec.healthcheck.as_ref().or(t.image_check.as_ref())
}

/// What the runtime shows for a task's container. A task with no observation (the runtime
/// did not answer) is left as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observation {
    Starting,
    Running,
    Exited(i32),
    OomKilled(i32),
    /// The runtime has no such container (it lost it, say the host rebooted).
    Gone,
}

/// One task the managers assign to this worker.
#[derive(Clone, Debug, PartialEq)]
pub struct Assignment {
    pub id: String,
    pub service_name: String,
    pub slot: u32,
    pub spec: ServiceSpec,
    pub desired: TaskState,
    /// The state the managers last recorded for it (None: not one this worker knows).
    pub state: Option<TaskState>,
}

pub struct Input<'a> {
    pub tasks: &'a BTreeMap<String, LocalTask>,
    pub observed: &'a BTreeMap<String, Observation>,
    /// The managers' full assignment set, once one has arrived.
    pub assigned: Option<&'a [Assignment]>,
    /// Tasks with a job in flight.
    pub busy: &'a BTreeSet<String>,
    /// Containers found at start that this worker's saved state did not know (task id →
    /// container id; say it was killed between starting one and saving): adopted if the
    /// managers assign the task, else discarded, once the first assignment set is in.
    pub unclaimed: &'a BTreeMap<String, String>,
    /// Tasks whose latest report no manager has acknowledged yet.
    pub unacked: &'a BTreeSet<String>,
    /// A manager answered a heartbeat recently.
    pub connected: bool,
    /// Whether managers are reachable is known (a first heartbeat was tried).
    pub decided: bool,
    pub now_ms: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Job {
    /// Pull the image only: a stop-first update's new task, started once its predecessor
    /// has stopped (the managers then want it running).
    Prepare(LocalTask),
    /// Pull the image and start a container for a task new to this worker (or prepared).
    Launch(LocalTask),
    /// Start the task again, by this worker, while no manager is reachable.
    Restart(LocalTask),
    /// Stop the task's container (the managers want it down).
    Stop(LocalTask),
    /// The managers no longer list the task: stop it if it runs, report it, remove its
    /// container.
    Forget(LocalTask),
    /// A container found at start that no assigned task owns: stop and remove it (nothing to
    /// report; the task stands in only for its ids and stop timeout).
    Discard(LocalTask),
    /// Run the task's health check in its container once.
    Probe(LocalTask),
    /// Stop the task's container: it is unhealthy (reported failed).
    StopUnhealthy(LocalTask),
}

impl Job {
    pub fn task(&self) -> &LocalTask {
        match self {
            Job::Prepare(t)
            | Job::Launch(t)
            | Job::Restart(t)
            | Job::Stop(t)
            | Job::Forget(t)
            | Job::Discard(t)
            | Job::Probe(t)
            | Job::StopUnhealthy(t) => t,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub tasks: BTreeMap<String, LocalTask>,
    /// Task states to report to the managers.
    pub reports: Vec<LocalTask>,
    pub jobs: Vec<Job>,
}

/// How a job ended, as the shell saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Image pulled (a `Prepare`).
    Prepared,
    /// A health probe's result.
    Probed(Probe),
    /// Container started with this id.
    Started(String),
    /// The runtime was down: nothing happened; try again.
    Unavailable(String),
    /// Refused for good (bad image, missing command): the message says why.
    Refused(String),
    /// Stopped; the container's exit code if the runtime knows it.
    Stopped(Option<i32>),
}

/// Stop timeout of a discarded container (its service's own is not known here).
pub const DISCARD_STOP_TIMEOUT_MS: u64 = 10_000;

fn observe(t: &mut LocalTask, seen: Observation, now_ms: i64) -> Option<TaskState> {
    // With a check: none yet is starting.
    let health = check_of(t).map(|_| t.health.as_ref().map_or(HealthStatus::Starting, |h| h.status));
    let (state, code) = match seen {
        Observation::Starting => (TaskState::Starting, 0),
        // Starting until its health check passes.
        Observation::Running if health == Some(HealthStatus::Starting) => (TaskState::Starting, 0),
        // An unhealthy task keeps its state and message (the probe's verdict) until it is
        // stopped, whether it was healthy before or never was.
        Observation::Running if health == Some(HealthStatus::Unhealthy) => return None,
        Observation::Running => (TaskState::Running, 0),
        Observation::Exited(0) => (TaskState::Complete, 0),
        Observation::Exited(c) | Observation::OomKilled(c) => (TaskState::Failed, c),
        Observation::Gone => (TaskState::Failed, -1),
    };
    if state == t.state {
        return None;
    }
    if state.is_terminal() {
        t.exit_code = code;
        t.exited_at_ms = now_ms;
        t.message = match seen {
            Observation::Gone => format!(
                "container {} is gone (the runtime lost it, e.g. it restarted)",
                t.container_id
            ),
            Observation::OomKilled(_) => format!(
                "killed for going over its memory limit of {} bytes (OOM), exit code {code}",
                t.spec.resources.limits.memory_bytes
            ),
            _ => format!("exited with code {code}"),
        };
    } else {
        t.message.clear();
    }
    Some(state)
}

fn placeholder(a: &Assignment, state: TaskState, message: &str) -> LocalTask {
    LocalTask {
        id: a.id.clone(),
        service_name: a.service_name.clone(),
        slot: a.slot,
        spec: a.spec.clone(),
        container_id: String::new(),
        state,
        exit_code: 0,
        message: message.to_string(),
        local_restarts: 0,
        exited_at_ms: 0,
        restart_due: false,
        up_since_ms: 0,
        health: None,
        image_check: None,
    }
}

/// The job that stops and removes container `cid` of a task this worker does not hold.
pub fn discard(task_id: &str, cid: &str) -> Job {
    Job::Discard(LocalTask {
        id: task_id.to_string(),
        service_name: String::new(),
        slot: 0,
        spec: ServiceSpec {
            stop_timeout_ms: DISCARD_STOP_TIMEOUT_MS,
            ..Default::default()
        },
        container_id: cid.to_string(),
        state: TaskState::Running,
        exit_code: 0,
        message: String::new(),
        local_restarts: 0,
        exited_at_ms: 0,
        restart_due: false,
        up_since_ms: 0,
        health: None,
        image_check: None,
    })
}

/// A container the runtime holds, as the sweep sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub task_id: String,
    pub container_id: String,
    pub running: bool,
}

/// What the sweep does with one found container.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// One of this worker's tasks' containers: left as it is.
    Ours,
    /// Being started, stopped or claimed right now: left alone this time.
    Busy,
    /// Found running at start, unknown to the saved state: kept until the managers' first
    /// assignment set says whether its task is ours (see `Input::unclaimed`).
    Unclaimed,
    /// Not ours, or not running (a start cut short): stop and remove it.
    Discard(Box<Job>),
}

/// The sweep's decision for one container (at the agent's start and then periodically).
pub fn sweep(
    c: &Found,
    tasks: &BTreeMap<String, LocalTask>,
    busy: &BTreeSet<String>,
    unclaimed: &BTreeMap<String, String>,
    at_start: bool,
) -> Verdict {
    if tasks
        .get(&c.task_id)
        .is_some_and(|t| t.container_id == c.container_id)
    {
        Verdict::Ours
    } else if busy.contains(&c.task_id) || unclaimed.contains_key(&c.task_id) {
        Verdict::Busy
    } else if at_start && c.running {
        Verdict::Unclaimed
    } else {
        Verdict::Discard(Box::new(discard(&c.task_id, &c.container_id)))
    }
}

/// One tick's decisions.
pub fn plan(input: &Input) -> Plan {
    let mut tasks = input.tasks.clone();
    let mut reports = Vec::new();
    let mut jobs = Vec::new();
    let idle = |id: &str| !input.busy.contains(id);

    // Exits and starts the runtime shows; local restarts while cut off.
    if input.decided {
        for t in tasks.values_mut().filter(|t| idle(&t.id)) {
            if t.container_id.is_empty() || t.state.is_terminal() {
                continue;
            }
            let Some(seen) = input.observed.get(&t.id) else {
                continue;
            };
            if *seen == Observation::Running && t.up_since_ms == 0 {
                t.up_since_ms = input.now_ms;
            }
            let Some(state) = observe(t, *seen, input.now_ms) else {
                continue;
            };
            t.state = state;
            if state.is_terminal() && !input.connected {
                let failed = t.exit_code != 0;
                match t
                    .spec
                    .restart_policy
                    .decide(failed, t.local_restarts, t.exited_at_ms, input.now_ms)
                {
                    Restart::Now => {
                        jobs.push(Job::Restart(t.clone()));
                        continue;
                    }
                    Restart::Later => t.restart_due = true,
                    Restart::No => {}
                }
            }
            reports.push(t.clone());
        }
        // An exit reported while the managers still seemed reachable, but never acknowledged
        // (the link went down as it happened): no manager will replace it, so it is this
        // worker's to restart, as if it had exited after the cut.
        if !input.connected {
            for t in tasks.values_mut().filter(|t| {
                matches!(t.state, TaskState::Failed | TaskState::Complete)
                    && !t.restart_due
                    && input.unacked.contains(&t.id)
                    && idle(&t.id)
            }) {
                let failed = t.exit_code != 0;
                if t.spec
                    .restart_policy
                    .decide(failed, t.local_restarts, t.exited_at_ms, input.now_ms)
                    != Restart::No
                {
                    t.restart_due = true;
                }
            }
        }
        for t in tasks.values_mut().filter(|t| t.restart_due && idle(&t.id)) {
            if input.connected {
                // Its exit is on its way to the managers: theirs to replace.
                t.restart_due = false;
                continue;
            }
            let failed = t.exit_code != 0;
            if t.spec
                .restart_policy
                .decide(failed, t.local_restarts, t.exited_at_ms, input.now_ms)
                == Restart::Now
            {
                jobs.push(Job::Restart(t.clone()));
            }
        }
    }

    // Converge on what the managers assign.
    if let Some(assigned) = input.assigned {
        let listed: BTreeSet<&str> = assigned.iter().map(|a| a.id.as_str()).collect();
        for a in assigned.iter().filter(|a| idle(&a.id)) {
            let want_running = a.desired == TaskState::Running;
            let want_ready = a.desired == TaskState::Ready;
            let orphaned = a.state == Some(TaskState::Orphaned);
            match tasks.get_mut(&a.id) {
                Some(t) if want_ready => {
                    if a.state != Some(t.state) && !t.state.is_terminal() {
                        reports.push(t.clone());
                    }
                }
                Some(t) if !want_running && t.container_id.is_empty() && !t.state.is_terminal() => {
                    // Prepared, never started: nothing to stop.
                    t.state = TaskState::Shutdown;
                    t.message = "stopped on the managers' request before it started".into();
                    reports.push(t.clone());
                }
                Some(t) if !want_running => {
                    if !t.state.is_terminal() {
                        jobs.push(Job::Stop(t.clone()));
                    } else if t.state != TaskState::Shutdown {
                        // Finished before the stop order: confirm so the managers close it.
                        reports.push(t.clone());
                    }
                }
                Some(t) if t.state == TaskState::Ready && t.container_id.is_empty() => {
                    // Prepared, and now wanted running (its predecessor has stopped).
                    jobs.push(Job::Launch(t.clone()));
                }
                Some(t) => {
                    // The managers' view lags ours (say after a partition): resend.
                    if a.state != Some(t.state) && !t.state.is_terminal() {
                        reports.push(t.clone());
                    }
                }
                None if want_ready && !orphaned => {
                    jobs.push(Job::Prepare(placeholder(a, TaskState::Preparing, "")));
                }
                None if !want_running || orphaned => {
                    // Nothing runs here for it: let the managers close it.
                    reports.push(placeholder(a, TaskState::Shutdown, "not running on this node"));
                }
                None => match input.unclaimed.get(&a.id) {
                    Some(cid) => {
                        let mut t = placeholder(a, TaskState::Starting, "");
                        t.container_id = cid.clone();
                        reports.push(t.clone());
                        tasks.insert(t.id.clone(), t);
                    }
                    None => jobs.push(Job::Launch(placeholder(a, TaskState::Preparing, ""))),
                },
            }
        }
        for (task, cid) in input.unclaimed {
            let adopted = tasks.get(task).is_some_and(|t| &t.container_id == cid);
            if !adopted && idle(task) {
                jobs.push(discard(task, cid));
            }
        }
        let gone: Vec<String> = tasks
            .keys()
            .filter(|id| !listed.contains(id.as_str()) && idle(id))
            .cloned()
            .collect();
        for id in gone {
            let t = tasks.remove(&id).expect("listed above");
            jobs.push(Job::Forget(t));
        }
    }
    // Health probes of running containers with a check; an unhealthy one is stopped.
    if input.decided {
        let jobbed: BTreeSet<String> = jobs.iter().map(|j| j.task().id.clone()).collect();
        for t in tasks.values_mut() {
            if !idle(&t.id)
                || jobbed.contains(&t.id)
                || t.state.is_terminal()
                || t.container_id.is_empty()
                || t.up_since_ms == 0
                || input.observed.get(&t.id) != Some(&Observation::Running)
            {
                continue;
            }
            let Some(check) = check_of(t).cloned() else {
                continue;
            };
            let h = t.health.get_or_insert_with(Health::default);
            if h.status == HealthStatus::Unhealthy {
                jobs.push(Job::StopUnhealthy(t.clone()));
            } else if health::due(&check, h, t.up_since_ms, input.now_ms) {
                h.last_probe_ms = input.now_ms;
                jobs.push(Job::Probe(t.clone()));
            }
        }
    }
    // One report per task: its latest state.
    let mut seen = BTreeSet::new();
    let mut reports: Vec<LocalTask> = reports
        .into_iter()
        .rev()
        .filter(|t| seen.insert(t.id.clone()))
        .collect();
    reports.reverse();
    Plan { tasks, reports, jobs }
}

/// What a job's outcome does to its task.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Applied {
    /// The task as this worker now keeps it (None: not kept: a launch the runtime could
    /// not even try, or a forgotten task).
    pub keep: Option<LocalTask>,
    /// The state to report to the managers, if any.
    pub report: Option<LocalTask>,
}

fn keep_only(t: LocalTask) -> Applied {
    Applied {
        keep: Some(t),
        report: None,
    }
}

fn both(t: LocalTask) -> Applied {
    Applied {
        keep: Some(t.clone()),
        report: Some(t),
    }
}

/// A job's outcome applied to its task.
pub fn apply(job: &Job, outcome: &Outcome) -> Applied {
    let mut t = job.task().clone();
    let stopped = |t: &mut LocalTask, code: &Option<i32>| {
        t.state = TaskState::Shutdown;
        t.message = "stopped on the managers' request".into();
        if let Some(c) = code {
            t.exit_code = *c;
            t.message = format!("stopped on the managers' request (exit code {c})");
        }
    };
    match (job, outcome) {
        (Job::Prepare(_), Outcome::Prepared) => {
            t.state = TaskState::Ready;
            t.message = format!(
                "image {} pulled; waiting for the task it replaces to stop",
                t.spec.image
            );
            both(t)
        }
        (Job::Prepare(_) | Job::Launch(_), Outcome::Refused(m)) => {
            t.state = TaskState::Rejected;
            t.exit_code = -1;
            t.message = m.clone();
            both(t)
        }
        // The runtime could not even try: not kept, prepared again next tick.
        (Job::Prepare(_), _) => Applied::default(),
        (Job::Launch(_), Outcome::Started(cid)) => {
            t.container_id = cid.clone();
            t.state = TaskState::Starting;
            t.up_since_ms = 0;
            t.health = None;
            both(t)
        }
        // The runtime could not even try: launched again next tick (a prepared task stays
        // prepared; a new one is not kept).
        (Job::Launch(l), _) if l.state == TaskState::Ready => Applied {
            keep: Some(t),
            report: None,
        },
        (Job::Launch(_), _) => Applied::default(),
        (Job::Restart(_), Outcome::Started(cid)) => {
            t.restart_due = false;
            t.up_since_ms = 0;
            t.health = None;
            t.local_restarts += 1;
            t.container_id = cid.clone();
            t.state = TaskState::Running;
            t.message = format!(
                "restarted by the worker ({} local restarts) while no manager was reachable",
                t.local_restarts
            );
            both(t)
        }
        // Still exited: tried again on a later tick.
        (Job::Restart(_), _) => {
            t.restart_due = true;
            both(t)
        }
        (Job::Stop(_), Outcome::Stopped(code)) => {
            stopped(&mut t, code);
            both(t)
        }
        // Not stopped: unchanged, tried again next tick.
        (Job::Stop(_), _) => Applied {
            keep: Some(t),
            report: None,
        },
        // It had finished already: the managers know; nothing to say.
        (Job::Forget(_), _) if t.state.is_terminal() => Applied::default(),
        (Job::Forget(_), Outcome::Stopped(code)) => {
            stopped(&mut t, code);
            Applied {
                keep: None,
                report: Some(t),
            }
        }
        // Could not stop it: the sweep removes what no task owns.
        (Job::Forget(_), _) => Applied::default(),
        (Job::Discard(_), _) => Applied::default(),
        (Job::Probe(_), Outcome::Probed(p)) => {
            let Some(check) = check_of(&t).cloned() else {
                return keep_only(t);
            };
            let before = t.health.clone().unwrap_or_default();
            let h = health::after_probe(&check, &before, t.up_since_ms, p);
            let status = h.status;
            t.message = match status {
                HealthStatus::Starting => format!("health starting; last probe: {}", h.last_result),
                HealthStatus::Healthy => format!("healthy; last probe: {}", h.last_result),
                HealthStatus::Unhealthy => format!(
                    "unhealthy: {} probes failed in a row; last: {}",
                    h.failing_streak, h.last_result
                ),
            };
            t.health = Some(h);
            if status == HealthStatus::Healthy && t.state == TaskState::Starting {
                t.state = TaskState::Running;
                return both(t);
            }
            keep_only(t)
        }
        // The runtime did not answer: no result; probed again when due.
        (Job::Probe(_), _) => keep_only(t),
        (Job::StopUnhealthy(_), Outcome::Stopped(code)) => {
            t.state = TaskState::Failed;
            t.exit_code = code.unwrap_or(-1);
            both(t)
        }
        (Job::StopUnhealthy(_), _) => keep_only(t),
    }
}

/// How long without an answered heartbeat before the worker acts on its own (restarts
/// failed tasks itself): the configured time, or two of the intervals the managers asked
/// for, if longer (a large cluster asks for slower beats: `reconciler::heartbeat_interval_ms`).
pub fn autonomy_after_ms(configured_ms: u64, interval_ms: u64) -> u64 {
    configured_ms.max(interval_ms.saturating_mul(2))
}

/// The shortest a worker waits for a heartbeat's answer (ms).
pub const MIN_HEARTBEAT_TIMEOUT_MS: u64 = 3_000;
/// After a failed heartbeat the next goes after a jittered backoff from this (ms) up to the
/// interval, not after a whole interval.
pub const HEARTBEAT_RETRY_MIN_MS: u64 = 250;

/// How long a worker waits for a heartbeat's answer: `MIN_HEARTBEAT_TIMEOUT_MS`, or the
/// interval the managers asked for if longer. The answer waits for the commit of the reports
/// the beat carries, which takes seconds on a loaded leader; a beat given up on too early
/// costs the worker a retry, and a few in a row its grace period (issue #16: 5,000 workers).
pub fn heartbeat_timeout_ms(interval_ms: u64) -> u64 {
    MIN_HEARTBEAT_TIMEOUT_MS.max(interval_ms)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_heartbeat_waits_for_its_answer_as_long_as_the_asked_interval() {
        for (interval_ms, want_ms) in [
            (0, 3_000),
            (1_000, 3_000),
            (3_000, 3_000),
            (5_000, 5_000),
            (20_000, 20_000),
        ] {
            assert_eq!(
                super::heartbeat_timeout_ms(interval_ms),
                want_ms,
                "interval {interval_ms}"
            );
        }
    }

    #[test]
    fn autonomy_waits_for_two_of_the_asked_intervals() {
        assert_eq!(super::autonomy_after_ms(3_000, 0), 3_000);
        assert_eq!(super::autonomy_after_ms(3_000, 1_000), 3_000);
        assert_eq!(super::autonomy_after_ms(3_000, 5_000), 10_000);
    }

    use super::*;
    use crate::core::{RestartCondition, RestartPolicy};

    fn task(id: &str, state: TaskState) -> LocalTask {
        LocalTask {
            id: id.into(),
            service_name: "web".into(),
            slot: 1,
            spec: ServiceSpec {
                name: "web".into(),
                image: "busybox".into(),
                restart_policy: RestartPolicy {
                    condition: RestartCondition::Any,
                    max_attempts: 0,
                    delay_ms: 0,
                },
                ..Default::default()
            },
            container_id: format!("c-{id}"),
            state,
            exit_code: 0,
            message: String::new(),
            local_restarts: 0,
            exited_at_ms: 0,
            restart_due: false,
            up_since_ms: 0,
            health: None,
            image_check: None,
        }
    }

    fn assignment(id: &str, desired: TaskState, state: Option<TaskState>) -> Assignment {
        Assignment {
            id: id.into(),
            service_name: "web".into(),
            slot: 1,
            spec: task(id, TaskState::Running).spec,
            desired,
            state,
        }
    }

    struct Case {
        name: &'static str,
        tasks: Vec<LocalTask>,
        observed: Vec<(&'static str, Observation)>,
        assigned: Option<Vec<Assignment>>,
        busy: Vec<&'static str>,
        unclaimed: Vec<(&'static str, &'static str)>,
        connected: bool,
        /// Expected: (task id, state) after the plan, jobs as (kind, task id), reports.
        want_tasks: Vec<(&'static str, TaskState)>,
        want_jobs: Vec<(&'static str, &'static str)>,
        want_reports: Vec<(&'static str, TaskState)>,
    }

    fn kind(j: &Job) -> &'static str {
        match j {
            Job::Probe(_) => "probe",
            Job::StopUnhealthy(_) => "stop-unhealthy",
            Job::Prepare(_) => "prepare",
            Job::Launch(_) => "launch",
            Job::Restart(_) => "restart",
            Job::Stop(_) => "stop",
            Job::Forget(_) => "forget",
            Job::Discard(_) => "discard",
        }
    }

    #[test]
    fn plan_table() {
        use Observation as O;
        use TaskState as S;
        let cases = vec![
            Case {
                name: "a new assignment is launched",
                tasks: vec![],
                observed: vec![],
                assigned: Some(vec![assignment("a", S::Running, Some(S::Assigned))]),
                busy: vec![],
                unclaimed: vec![],
                connected: true,
                want_tasks: vec![],
                want_jobs: vec![("launch", "a")],
                want_reports: vec![],
            },
            Case {
                name: "a stop-first update's new task is only pulled",
                tasks: vec![],
                observed: vec![],
                assigned: Some(vec![assignment("a", S::Ready, Some(S::Assigned))]),
                busy: vec![],
                unclaimed: vec![],
                connected: true,
                want_tasks: vec![],
                want_jobs: vec![("prepare", "a")],
                want_reports: vec![],
            },
            Case {
                name: "a prepared task waits while its predecessor stops",
                tasks: vec![LocalTask {
                    container_id: String::new(),
                    ..task("a", S::Ready)
                }],
                observed: vec![],
                assigned: Some(vec![assignment("a", S::Ready, Some(S::Ready))]),
                busy: vec![],
                unclaimed: vec![],
                connected: true,
                want_tasks: vec![("a", S::Ready)],
                want_jobs: vec![],
                want_reports: vec![],
            },
            Case {
                name: "a prepared task is started once wanted running",
                tasks: vec![LocalTask {
                    container_id: String::new(),
                    ..task("a", S::Ready)
                }],
                observed: vec![],
                assigned: Some(vec![assignment("a", S::Running, Some(S::Ready))]),
                busy: vec![],
                unclaimed: vec![],
                connected: true,
                want_tasks: vec![("a", S::Ready)],
                want_jobs: vec![("launch", "a")],
                want_reports: vec![],
            },
            Case {
                name: "a prepared task stopped before it started has nothing to stop",
                tasks: vec![LocalTask {
                    container_id: String::new(),
                    ..task("a", S::Ready)
                }],
                observed: vec![],
                assigned: Some(vec![assignment("a", S::Shutdown, Some(S::Ready))]),
                busy: vec![],
                unclaimed: vec![],
                connected: true,
                want_tasks: vec![("a", S::Shutdown)],
                want_jobs: vec![],
                want_reports: vec![("a", S::Shutdown)],
            },
            Case {
                name: "a busy task is left alone",
                tasks: vec![],
                observed: vec![],
                assigned: Some(vec![assignment("a", S::Running, Some(S::Assigned))]),
                busy: vec!["a"],
                unclaimed: vec![],
                connected: true,
                want_tasks: vec![],
                want_jobs: vec![],
                want_reports: vec![],
            },
            Case {
                name: "a start is reported",
                tasks: vec![task("a", S::Starting)],
                observed: vec![("a", O::Running)],
                assigned: Some(vec![assignment("a", S::Running, Some(S::Starting))]),
                busy: vec![],
                unclaimed: vec![],
                connected: true,
                want_tasks: vec![("a", S::Running)],
                want_jobs: vec![],
                want_reports: vec![("a", S::Running)],
            },
            Case {
                name: "an exit while connected is reported, not restarted here",
                tasks: vec![task("a", S::Running)],
                observed: vec![("a", O::Exited(3))],
                assigned: None,
                busy: vec![],
                unclaimed: vec![],
                connected: true,
                want_tasks: vec![("a", S::Failed)],
                want_jobs: vec![],
                want_reports: vec![("a", S::Failed)],
            },
            Case {
                name: "an exit while cut off is restarted locally",
                tasks: vec![task("a", S::Running)],
                observed: vec![("a", O::Exited(3))],
                assigned: None,
                busy: vec![],
                unclaimed: vec![],
                connected: false,
                want_tasks: vec![("a", S::Failed)],
                want_jobs: vec![("restart", "a")],
                want_reports: vec![],
            },
            Case {
                name: "an OOM kill is a failure",
                tasks: vec![task("a", S::Running)],
                observed: vec![("a", O::OomKilled(137))],
                assigned: None,
                busy: vec![],
                unclaimed: vec![],
                connected: true,
                want_tasks: vec![("a", S::Failed)],
                want_jobs: vec![],
                want_reports: vec![("a", S::Failed)],
            },
            Case {
                name: "no observation: nothing changes",
                tasks: vec![task("a", S::Running)],
                observed: vec![],
                assigned: None,
                busy: vec![],
                unclaimed: vec![],
                connected: true,
                want_tasks: vec![("a", S::Running)],
                want_jobs: vec![],
                want_reports: vec![],
            },
            Case {
                name: "desired shutdown stops a running task",
                tasks: vec![task("a", S::Running)],
                observed: vec![("a", O::Running)],
                assigned: Some(vec![assignment("a", S::Shutdown, Some(S::Running))]),
                busy: vec![],
                unclaimed: vec![],
                connected: true,
                want_tasks: vec![("a", S::Running)],
                want_jobs: vec![("stop", "a")],
                want_reports: vec![],
            },
            Case {
                name: "a task no longer assigned is forgotten",
                tasks: vec![task("a", S::Running)],
                observed: vec![("a", O::Running)],
                assigned: Some(vec![]),
                busy: vec![],
                unclaimed: vec![],
                connected: true,
                want_tasks: vec![],
                want_jobs: vec![("forget", "a")],
                want_reports: vec![],
            },
            Case {
                name: "an orphaned assignment unknown here is closed",
                tasks: vec![],
                observed: vec![],
                assigned: Some(vec![assignment("a", S::Running, Some(S::Orphaned))]),
                busy: vec![],
                unclaimed: vec![],
                connected: true,
                want_tasks: vec![],
                want_jobs: vec![],
                want_reports: vec![("a", S::Shutdown)],
            },
            Case {
                name: "the managers' lagging view gets a resend",
                tasks: vec![task("a", S::Running)],
                observed: vec![("a", O::Running)],
                assigned: Some(vec![assignment("a", S::Running, Some(S::Starting))]),
                busy: vec![],
                unclaimed: vec![],
                connected: true,
                want_tasks: vec![("a", S::Running)],
                want_jobs: vec![],
                want_reports: vec![("a", S::Running)],
            },
            Case {
                name: "a container gone from the runtime fails the task",
                tasks: vec![task("a", S::Running)],
                observed: vec![("a", O::Gone)],
                assigned: None,
                busy: vec![],
                unclaimed: vec![],
                connected: true,
                want_tasks: vec![("a", S::Failed)],
                want_jobs: vec![],
                want_reports: vec![("a", S::Failed)],
            },
            Case {
                name: "a container found at start is adopted if assigned, discarded if not",
                tasks: vec![],
                observed: vec![],
                assigned: Some(vec![assignment("a", S::Running, Some(S::Running))]),
                busy: vec![],
                unclaimed: vec![("a", "c-a"), ("b", "c-b")],
                connected: true,
                want_tasks: vec![("a", S::Starting)],
                want_jobs: vec![("discard", "b")],
                want_reports: vec![("a", S::Starting)],
            },
        ];
        for c in cases {
            let tasks: BTreeMap<String, LocalTask> = c.tasks.into_iter().map(|t| (t.id.clone(), t)).collect();
            let observed = c
                .observed
                .into_iter()
                .map(|(id, o)| (id.to_string(), o))
                .collect();
            let busy = c.busy.into_iter().map(str::to_string).collect();
            let p = plan(&Input {
                tasks: &tasks,
                observed: &observed,
                assigned: c.assigned.as_deref(),
                busy: &busy,
                unclaimed: &c
                    .unclaimed
                    .into_iter()
                    .map(|(t, c)| (t.to_string(), c.to_string()))
                    .collect(),
                unacked: &BTreeSet::new(),
                connected: c.connected,
                decided: true,
                now_ms: 1_000,
            });
            let got_tasks: Vec<(&str, TaskState)> =
                p.tasks.values().map(|t| (t.id.as_str(), t.state)).collect();
            assert_eq!(got_tasks, c.want_tasks, "{}: tasks", c.name);
            let got_jobs: Vec<(&str, &str)> =
                p.jobs.iter().map(|j| (kind(j), j.task().id.as_str())).collect();
            assert_eq!(got_jobs, c.want_jobs, "{}: jobs", c.name);
            let got_reports: Vec<(&str, TaskState)> =
                p.reports.iter().map(|t| (t.id.as_str(), t.state)).collect();
            assert_eq!(got_reports, c.want_reports, "{}: reports", c.name);
        }
    }

    /// A task with a health check: `starting` while its container runs unchecked, probed
    /// every second until healthy, `running` once a probe passes; after `retries` failures
    /// in a row it is stopped and reported failed.
    #[test]
    fn health_checks_gate_running_and_stop_unhealthy_tasks() {
        use TaskState as S;
        let mut t = task("a", S::Starting);
        t.spec.healthcheck = Some(HealthCheck {
            cmd: vec!["check".into()],
            interval_ms: 10_000,
            timeout_ms: 1_000,
            retries: 2,
            start_period_ms: 0,
        });
        let tick = |t: &LocalTask, now_ms: i64| {
            let tasks: BTreeMap<String, LocalTask> = [("a".to_string(), t.clone())].into();
            let observed = [("a".to_string(), Observation::Running)].into();
            let assigned = vec![assignment("a", S::Running, Some(t.state))];
            plan(&Input {
                tasks: &tasks,
                observed: &observed,
                assigned: Some(&assigned),
                busy: &BTreeSet::new(),
                unclaimed: &BTreeMap::new(),
                unacked: &BTreeSet::new(),
                connected: true,
                decided: true,
                now_ms,
            })
        };
        // Seen running at 1,000: still starting, nothing reported, no probe yet.
        let p = tick(&t, 1_000);
        let t1 = p.tasks["a"].clone();
        assert_eq!((t1.state, t1.up_since_ms), (S::Starting, 1_000));
        assert!(p.jobs.is_empty() && p.reports.is_empty(), "{p:?}");
        // A second later a probe is due.
        let p = tick(&t1, 2_000);
        let [Job::Probe(probing)] = p.jobs.as_slice() else {
            panic!("{:?}", p.jobs)
        };
        // It passes: running, reported.
        let a = apply(
            &Job::Probe(probing.clone()),
            &Outcome::Probed(Probe::Exited {
                code: 0,
                output: "ok".into(),
            }),
        );
        let healthy = a.keep.unwrap();
        assert_eq!(healthy.state, S::Running);
        assert_eq!(a.report.map(|r| r.state), Some(S::Running));
        // Observed running again: stays running (healthy), no report; next probe at +10 s.
        let p = tick(&healthy, 3_000);
        assert_eq!(p.tasks["a"].state, S::Running);
        assert!(p.jobs.is_empty() && p.reports.is_empty(), "{p:?}");
        // Two failures in a row: unhealthy, then stopped and reported failed. A task that was
        // healthy stays running meanwhile; one that never was stays starting (it must not
        // pass for running). Failures before the first success count once an interval.
        for (from, probes, keeps) in [
            (healthy, [12_000, 22_000], S::Running),
            (t1, [11_000, 21_000], S::Starting),
        ] {
            let mut t = from;
            for now in probes {
                let p = tick(&t, now);
                let [Job::Probe(probing)] = p.jobs.as_slice() else {
                    panic!("{:?}", p.jobs)
                };
                t = apply(&Job::Probe(probing.clone()), &Outcome::Probed(Probe::TimedOut))
                    .keep
                    .unwrap();
            }
            assert!(
                t.message.starts_with("unhealthy: 2 probes failed"),
                "{}",
                t.message
            );
            let p = tick(&t, probes[1] + 100);
            assert_eq!(p.tasks["a"].state, keeps, "an unhealthy task changed state");
            assert!(p.reports.is_empty(), "{:?}", p.reports);
            let [Job::StopUnhealthy(stopping)] = p.jobs.as_slice() else {
                panic!("{:?}", p.jobs)
            };
            let a = apply(
                &Job::StopUnhealthy(stopping.clone()),
                &Outcome::Stopped(Some(143)),
            );
            let r = a.report.unwrap();
            assert_eq!((r.state, r.exit_code), (S::Failed, 143));
            assert!(
                r.message.starts_with("unhealthy: 2 probes failed"),
                "{}",
                r.message
            );
        }
        // --no-healthcheck: running as soon as the container runs.
        let mut t = task("a", S::Starting);
        t.spec.no_healthcheck = true;
        t.image_check = Some(HealthCheck {
            cmd: vec!["check".into()],
            ..Default::default()
        });
        assert_eq!(tick(&t, 1_000).tasks["a"].state, S::Running);
    }

    #[test]
    fn prepare_and_launch_outcomes() {
        use TaskState as S;
        let new = || LocalTask {
            container_id: String::new(),
            ..task("a", S::Preparing)
        };
        let ready = || LocalTask {
            container_id: String::new(),
            ..task("a", S::Ready)
        };
        // (job, outcome, kept state, reported state)
        let cases = [
            (
                Job::Prepare(new()),
                Outcome::Prepared,
                Some(S::Ready),
                Some(S::Ready),
            ),
            (
                Job::Prepare(new()),
                Outcome::Refused("pulling image x: not found".into()),
                Some(S::Rejected),
                Some(S::Rejected),
            ),
            (
                Job::Prepare(new()),
                Outcome::Unavailable("down".into()),
                None,
                None,
            ),
            (
                Job::Launch(ready()),
                Outcome::Started("c1".into()),
                Some(S::Starting),
                Some(S::Starting),
            ),
            (
                Job::Launch(ready()),
                Outcome::Unavailable("down".into()),
                Some(S::Ready),
                None,
            ),
            (
                Job::Launch(new()),
                Outcome::Unavailable("down".into()),
                None,
                None,
            ),
        ];
        for (job, outcome, keep, report) in cases {
            let a = apply(&job, &outcome);
            assert_eq!(a.keep.map(|t| t.state), keep, "{job:?} {outcome:?}");
            assert_eq!(a.report.map(|t| t.state), report, "{job:?} {outcome:?}");
        }
    }

    #[test]
    fn undecided_worker_does_not_restart() {
        let tasks: BTreeMap<String, LocalTask> = [("a".to_string(), task("a", TaskState::Running))].into();
        let observed = [("a".to_string(), Observation::Exited(1))].into();
        let p = plan(&Input {
            tasks: &tasks,
            observed: &observed,
            assigned: None,
            busy: &BTreeSet::new(),
            unclaimed: &BTreeMap::new(),
            unacked: &BTreeSet::new(),
            connected: false,
            decided: false,
            now_ms: 0,
        });
        assert!(p.jobs.is_empty() && p.reports.is_empty());
        assert_eq!(p.tasks, tasks);
    }

    /// Found by the multi-host partition test: a container that died in the seconds between
    /// the cut and the worker noticing it (its exit reported, never acknowledged) was never
    /// restarted, by the managers (who never heard) or by the worker.
    #[test]
    fn unacknowledged_exit_is_restarted_here_once_cut_off() {
        use TaskState as S;
        let cases = [
            // (name, state, acknowledged, connected, restart wanted)
            ("unacknowledged failure, cut off", S::Failed, false, false, true),
            (
                "unacknowledged completion, cut off",
                S::Complete,
                false,
                false,
                true,
            ),
            (
                "acknowledged failure: the managers' to replace",
                S::Failed,
                true,
                false,
                false,
            ),
            (
                "unacknowledged, still connected: on its way",
                S::Failed,
                false,
                true,
                false,
            ),
            (
                "stopped on request: not restarted",
                S::Shutdown,
                false,
                false,
                false,
            ),
            ("rejected: not restarted", S::Rejected, false, false, false),
        ];
        for (name, state, acked, connected, want) in cases {
            let mut t = task("a", state);
            t.exit_code = 1;
            let tasks: BTreeMap<String, LocalTask> = [("a".to_string(), t)].into();
            let unacked: BTreeSet<String> = if acked {
                BTreeSet::new()
            } else {
                ["a".to_string()].into()
            };
            let p = plan(&Input {
                tasks: &tasks,
                observed: &BTreeMap::new(),
                assigned: None,
                busy: &BTreeSet::new(),
                unclaimed: &BTreeMap::new(),
                unacked: &unacked,
                connected,
                decided: true,
                now_ms: 1_000,
            });
            let restarts: Vec<&str> = p.jobs.iter().map(kind).collect();
            assert_eq!(restarts == ["restart"], want, "{name}: jobs {restarts:?}");
        }
    }

    #[test]
    fn sweep_table() {
        let tasks: BTreeMap<String, LocalTask> = [("a".to_string(), task("a", TaskState::Running))].into();
        let busy: BTreeSet<String> = ["b".to_string()].into();
        let unclaimed: BTreeMap<String, String> = [("u".to_string(), "c-u".to_string())].into();
        let found = |t: &str, c: &str, running: bool| Found {
            task_id: t.into(),
            container_id: c.into(),
            running,
        };
        let v = |f: Found, at_start: bool| sweep(&f, &tasks, &busy, &unclaimed, at_start);
        assert_eq!(v(found("a", "c-a", true), true), Verdict::Ours);
        assert_eq!(v(found("b", "c-b", true), false), Verdict::Busy);
        assert_eq!(v(found("u", "c-u", true), false), Verdict::Busy);
        assert_eq!(v(found("x", "c-x", true), true), Verdict::Unclaimed);
        // Not running at start, a stale container of a known task, or later: discarded.
        assert_eq!(
            v(found("x", "c-x", false), true),
            Verdict::Discard(Box::new(discard("x", "c-x")))
        );
        assert_eq!(
            v(found("a", "old", true), false),
            Verdict::Discard(Box::new(discard("a", "old")))
        );
        assert_eq!(
            v(found("x", "c-x", true), false),
            Verdict::Discard(Box::new(discard("x", "c-x")))
        );
    }

    #[test]
    fn apply_table() {
        use TaskState as S;
        let t = task("a", S::Preparing);
        let r = apply(&Job::Launch(t.clone()), &Outcome::Started("c1".into()));
        let kept = r.keep.unwrap();
        assert!(r.report.is_some() && kept.state == S::Starting && kept.container_id == "c1");
        assert_eq!(
            apply(&Job::Launch(t.clone()), &Outcome::Unavailable("down".into())),
            Applied::default()
        );
        let kept = apply(&Job::Launch(t.clone()), &Outcome::Refused("no such image".into()))
            .keep
            .unwrap();
        assert_eq!(
            (kept.state, kept.message.as_str(), kept.exit_code),
            (S::Rejected, "no such image", -1)
        );

        let r = apply(
            &Job::Restart(task("a", S::Failed)),
            &Outcome::Started("c2".into()),
        );
        let kept = r.keep.unwrap();
        assert!(kept.state == S::Running && kept.local_restarts == 1 && !kept.restart_due);
        assert!(
            apply(
                &Job::Restart(task("a", S::Failed)),
                &Outcome::Unavailable("x".into())
            )
            .keep
            .unwrap()
            .restart_due
        );

        let r = apply(&Job::Stop(task("a", S::Running)), &Outcome::Stopped(Some(143)));
        let kept = r.keep.unwrap();
        assert!(kept.state == S::Shutdown && kept.exit_code == 143 && kept.message.contains("143"));
        let r = apply(
            &Job::Stop(task("a", S::Running)),
            &Outcome::Unavailable("x".into()),
        );
        assert_eq!((r.keep.unwrap().state, r.report), (S::Running, None));

        let r = apply(&Job::Forget(task("a", S::Running)), &Outcome::Stopped(None));
        assert!(r.keep.is_none() && r.report.unwrap().state == S::Shutdown);
        assert_eq!(
            apply(&Job::Forget(task("a", S::Failed)), &Outcome::Stopped(None)),
            Applied::default()
        );
    }
}
