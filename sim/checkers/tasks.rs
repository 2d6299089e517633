//! Properties of the task set:
//! - **unique ids**: no two tasks share an id;
//! - **no task on two nodes**: a task id runs (has a live container) on at most one host;
//! - **convergence**: every service has exactly its replica count of running tasks, one per
//!   slot 1..=replicas, each with a live container on the node the managers assigned it
//!   to, and no container runs for a task the managers do not want running.
//!
//! - **consistent views**: in every manager's view no slot of a service has two tasks meant
//!   to run (an orphaned one, whose node is down, aside), and a task id names the same
//!   service and slot (and node, once assigned) in every view, so a duplicate made by one
//!   manager shows up even though each view is a map keyed by task id.
//!
//! The managers' view comes from `ListTasks` on each of them; what really runs comes from
//! each simulated host's container runtime.

use crate::cluster::list_tasks;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use warren::proto::v1 as pb;
use warren::worker::sim_runtime::SimRuntime;

/// Task id -> hosts with a live container for it.
pub fn running_by_task() -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (host, rt) in SimRuntime::hosts() {
        for task in rt.running_tasks() {
            m.entry(task).or_default().push(host.clone());
        }
    }
    m
}

pub fn no_task_on_two_nodes(running: &BTreeMap<String, Vec<String>>) -> Result<(), String> {
    for (task, hosts) in running {
        if hosts.len() > 1 {
            return Err(format!("task {task} runs on {hosts:?}"));
        }
    }
    Ok(())
}

pub fn unique_ids(tasks: &[pb::Task]) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for t in tasks {
        if !seen.insert(&t.id) {
            return Err(format!("task id {} appears twice", t.id));
        }
    }
    Ok(())
}

/// Every manager's view (manager id -> its `ListTasks`), checked against the others. Holds
/// at any moment, converged or not: a lagging view may miss tasks, never contradict.
pub fn consistent_views(views: &BTreeMap<u64, Vec<pb::Task>>) -> Result<(), String> {
    let mut named: BTreeMap<&str, (u64, &pb::Task)> = BTreeMap::new();
    for (&manager, tasks) in views {
        unique_ids(tasks).map_err(|e| format!("manager {manager}: {e}"))?;
        // Per slot and spec version: two tasks of one slot at different versions, both meant
        // to run, are a start-first update (or rollback) in flight, as a manager that has
        // not applied its end yet shows it.
        let mut meant: BTreeMap<(&str, u32, u64), &str> = BTreeMap::new();
        for t in tasks {
            // Meant to run and not over: a finished task keeps its desired state in the
            // history, and an orphaned one (its node down) stays meant to run until the node
            // returns and the duplicate policy picks one; neither makes its replacement a
            // duplicate.
            let over = [
                pb::TaskState::Complete,
                pb::TaskState::Failed,
                pb::TaskState::Shutdown,
                pb::TaskState::Rejected,
                pb::TaskState::Orphaned,
            ]
            .iter()
            .any(|s| *s as i32 == t.state);
            if t.desired_state == pb::TaskState::Running as i32 && !over {
                if let Some(other) = meant.insert((&t.service_name, t.slot, t.spec_version), &t.id) {
                    return Err(format!(
                        "manager {manager}: {} slot {} has two tasks meant to run: {other} and {}",
                        t.service_name, t.slot, t.id
                    ));
                }
            }
            match named.get(t.id.as_str()) {
                None => {
                    named.insert(&t.id, (manager, t));
                }
                Some((m, seen)) => {
                    let moved =
                        !seen.node_id.is_empty() && !t.node_id.is_empty() && seen.node_id != t.node_id;
                    if seen.service_name != t.service_name || seen.slot != t.slot || moved {
                        return Err(format!(
                            "task {} differs between managers: {m} has {}/{} on {:?}, {manager} has {}/{} on {:?}",
                            t.id, seen.service_name, seen.slot, seen.node_id, t.service_name, t.slot, t.node_id
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Each manager in `ids` that answers, with its tasks.
pub async fn views(ids: Vec<u64>) -> BTreeMap<u64, Vec<pb::Task>> {
    let mut out = BTreeMap::new();
    for id in ids {
        if let Some(tasks) = list_tasks(id).await {
            out.insert(id, tasks);
        }
    }
    out
}

/// `want`: service name -> replicas.
pub fn converged(
    tasks: &[pb::Task],
    running: &BTreeMap<String, Vec<String>>,
    want: &BTreeMap<String, i64>,
) -> Result<(), String> {
    unique_ids(tasks)?;
    no_task_on_two_nodes(running)?;
    let mut wanted_running = BTreeSet::new();
    for (service, &replicas) in want {
        let active: Vec<&pb::Task> = tasks
            .iter()
            .filter(|t| {
                &t.service_name == service
                    && t.desired_state == pb::TaskState::Running as i32
                    && t.state == pb::TaskState::Running as i32
            })
            .collect();
        let slots: BTreeSet<u32> = active.iter().map(|t| t.slot).collect();
        let want_slots: BTreeSet<u32> = (1..=replicas as u32).collect();
        if active.len() as i64 != replicas || slots != want_slots {
            return Err(format!(
                "{service}: {} running tasks in slots {:?}, want {replicas}",
                active.len(),
                slots.iter().take(10).collect::<Vec<_>>()
            ));
        }
        for t in active {
            match running.get(&t.id) {
                Some(hosts) if hosts == &vec![t.node_id.clone()] => {}
                other => {
                    return Err(format!(
                        "{service}: task {} on {} has containers on {other:?}",
                        t.id, t.node_id
                    ))
                }
            }
            wanted_running.insert(t.id.clone());
        }
    }
    for (task, hosts) in running {
        if !wanted_running.contains(task) {
            return Err(format!(
                "a container of unwanted task {task} still runs on {hosts:?}"
            ));
        }
    }
    Ok(())
}

/// Waits until every manager of `via` that answers sees the tasks converge to `want` (with
/// the hosts' runtimes), then checks their views against each other; returns how long that
/// took. Panics with the last discrepancy at `deadline`.
pub async fn wait_converged(via: Vec<u64>, want: BTreeMap<String, i64>, deadline: Duration) -> Duration {
    let start = tokio::time::Instant::now();
    let mut last = String::from("no manager answered");
    loop {
        let all = views(via.clone()).await;
        let running = running_by_task();
        let behind = all
            .iter()
            .map(|(id, tasks)| converged(tasks, &running, &want).map_err(|e| format!("manager {id}: {e}")))
            .find_map(Result::err);
        match behind {
            None if !all.is_empty() => {
                let took = start.elapsed();
                if let Err(e) = consistent_views(&all) {
                    panic!("managers' task views disagree: {e}");
                }
                return took;
            }
            None => {}
            Some(e) => last = e,
        }
        if start.elapsed() > deadline {
            panic!("tasks did not converge within {deadline:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    //! Each property fails on a task set that breaks it.
    use super::*;

    fn task(id: &str, slot: u32, node: &str) -> pb::Task {
        pb::Task {
            id: id.into(),
            service_name: "web".into(),
            slot,
            node_id: node.into(),
            desired_state: pb::TaskState::Running as i32,
            state: pb::TaskState::Running as i32,
            ..Default::default()
        }
    }

    fn on(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(t, hosts)| (t.to_string(), hosts.iter().map(|h| h.to_string()).collect()))
            .collect()
    }

    #[test]
    fn converged_accepts_the_good_set_and_names_each_fault() {
        let want: BTreeMap<String, i64> = [("web".to_string(), 2)].into();
        let good = vec![task("a", 1, "w1"), task("b", 2, "w2")];
        let running = on(&[("a", &["w1"]), ("b", &["w2"])]);
        assert_eq!(converged(&good, &running, &want), Ok(()));
        type Case<'a> = (&'a str, Vec<pb::Task>, BTreeMap<String, Vec<String>>);
        let cases: Vec<Case> = vec![
            (
                "appears twice",
                vec![task("a", 1, "w1"), task("a", 2, "w2")],
                running.clone(),
            ),
            (
                "runs on",
                good.clone(),
                on(&[("a", &["w1", "w2"]), ("b", &["w2"])]),
            ),
            (
                "unwanted task",
                good.clone(),
                on(&[("a", &["w1"]), ("b", &["w2"]), ("z", &["w1"])]),
            ),
            (
                "has containers on",
                good.clone(),
                on(&[("a", &["w2"]), ("b", &["w2"])]),
            ),
            ("has containers on", good.clone(), on(&[("b", &["w2"])])),
            (
                "slots",
                vec![task("a", 1, "w1"), task("b", 1, "w2")],
                running.clone(),
            ),
            ("running tasks", vec![task("a", 1, "w1")], on(&[("a", &["w1"])])),
        ];
        for (what, tasks, running) in cases {
            let e = converged(&tasks, &running, &want).unwrap_err();
            assert!(e.contains(what), "want {what:?}: {e}");
        }
    }

    #[test]
    fn consistent_views_accepts_lag_and_names_each_contradiction() {
        let version = |mut t: pb::Task, v: u64| {
            t.spec_version = v;
            t
        };
        let shut = |mut t: pb::Task| {
            t.desired_state = pb::TaskState::Shutdown as i32;
            t
        };
        // Finished, still with its desired state: history, not a duplicate.
        let failed = |mut t: pb::Task| {
            t.state = pb::TaskState::Failed as i32;
            t
        };
        let good: BTreeMap<u64, Vec<pb::Task>> = [
            (
                1,
                vec![
                    task("a", 1, "w1"),
                    task("b", 2, "w2"),
                    shut(task("c", 1, "w2")),
                    failed(task("e", 2, "w1")),
                ],
            ),
            // Lagging: b not assigned yet, c not seen.
            (2, vec![task("a", 1, "w1"), task("b", 2, "")]),
            // Lagging inside a start-first update: slot 1's version-2 task starts while the
            // version-1 one still runs.
            (
                3,
                vec![
                    task("a", 1, "w1"),
                    version(task("n", 1, "w2"), 2),
                    task("b", 2, "w2"),
                ],
            ),
        ]
        .into();
        assert_eq!(consistent_views(&good), Ok(()));
        let cases: Vec<(&str, BTreeMap<u64, Vec<pb::Task>>)> = vec![
            (
                "appears twice",
                [(1, vec![task("a", 1, "w1"), task("a", 2, "w1")])].into(),
            ),
            (
                "two tasks meant to run",
                [(2, vec![task("a", 1, "w1"), task("d", 1, "w2")])].into(),
            ),
            (
                "two tasks meant to run",
                [(
                    2,
                    vec![version(task("a", 1, "w1"), 2), version(task("d", 1, "w2"), 2)],
                )]
                .into(),
            ),
            (
                "differs between managers",
                [(1, vec![task("a", 1, "w1")]), (3, vec![task("a", 2, "w1")])].into(),
            ),
            (
                "differs between managers",
                [(1, vec![task("a", 1, "w1")]), (3, vec![task("a", 1, "w2")])].into(),
            ),
        ];
        for (what, views) in cases {
            let e = consistent_views(&views).unwrap_err();
            assert!(e.contains(what), "want {what:?}: {e}");
        }
    }
}
