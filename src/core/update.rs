//! Rolling updates and rollbacks, decided one orchestrator round at a time. Pure: from a
//! service (its spec version, its `UpdateStatus` in the replicated state), its tasks by slot
//! and the leader's clock, the task changes of this round and the update's next status. The
//! reconciler calls [`step`] for every service and commits the result with the rest of the
//! round, so a new leader continues an update from exactly where the log says it was.
//!
//! Per slot being replaced (at most `parallelism` at once):
//! - stop-first: a new task is created with desired state `Ready` (its worker pulls the image
//!   and reports `ready`); only then is the old task stopped, and once it has stopped the new
//!   one is told to run. A pull that fails fails the slot while the old task keeps running.
//! - start-first: a new task is created to run; once it runs the old one is stopped.
//! - the slot is done once the new task has kept running for the monitor period; it fails if
//!   the new task ends (or does not come up within the update timeout) first. Both periods
//!   count only from when this leader began to lead: a crash reported to a leader that died,
//!   or queued on a worker while no leader was reachable, reaches the next leader late, and
//!   the slot must still be watching for it then.
//!
//! Failed slots beyond `max_failure_permille` of the replicas trigger the failure action:
//! pause, continue, or rollback (a failed rollback pauses; it never loops).

use super::model::*;
use super::reconciler::TaskChange;
use std::collections::BTreeMap;

/// This round's part of an update.
#[derive(Debug, Default, PartialEq)]
pub struct Step {
    pub changes: Vec<TaskChange>,
    /// New tasks to place at the service's current spec version: (slot, id, desired state,
    /// the task it replaces).
    pub create: Vec<(u32, String, TaskState, String)>,
}

/// Whether a task still occupies its node and may run (it has not ended and is not lost).
fn live(t: &Task) -> bool {
    !t.state.is_terminal() && t.state != TaskState::Orphaned
}

fn shutdown(t: &Task, reason: String) -> TaskChange {
    TaskChange::Shutdown {
        task_id: t.id.clone(),
        reason,
    }
}

/// What the update at `service.update` does this round. `by_slot`: the service's tasks per
/// slot; `leading_since_ms`: when this leader began to lead; `new_id` names new tasks.
pub fn step(
    service: &Service,
    by_slot: &BTreeMap<u32, Vec<&Task>>,
    now_ms: i64,
    leading_since_ms: i64,
    new_id: &mut dyn FnMut() -> String,
) -> Step {
    let mut out = Step::default();
    let Some(u) = &service.update else { return out };
    if !u.state.in_progress() {
        return out;
    }
    let rolling_back = u.state.is_rollback();
    let cfg = if rolling_back {
        service.spec.rollback_config
    } else {
        service.spec.update_config
    };
    let what = if rolling_back { "rollback" } else { "update" };
    let replicas = u32::try_from(service.spec.replicas).unwrap_or(0);
    let tasks: BTreeMap<&str, &Task> = by_slot.values().flatten().map(|t| (t.id.as_str(), *t)).collect();
    let mut st = (**u).clone();
    let mut new_failures: Vec<(u32, String)> = Vec::new();

    // Slots in flight.
    for (&slot, rec) in &u.in_flight {
        let Some(&n) = tasks.get(rec.new_task_id.as_str()) else {
            // Removed (its service was scaled down, say): picked again if still outdated.
            st.in_flight.remove(&slot);
            continue;
        };
        if slot > replicas {
            st.in_flight.remove(&slot);
            continue;
        }
        // A slot carried over from an update this one replaced: its task is outdated too.
        let ours = n.spec_version == u.to_version;
        let old = tasks.get(rec.old_task_id.as_str()).copied().filter(|o| live(o));
        let old_wanted = old.filter(|o| o.desired_state == TaskState::Running);
        if n.state == TaskState::Orphaned || (n.state.is_terminal() && n.desired_state == TaskState::Shutdown)
        {
            // Moved or stopped by the orchestrator (node down, drained, removed): not the
            // new spec's fault. The reconciler fills the slot; it is picked again if needed.
            st.in_flight.remove(&slot);
            continue;
        }
        if n.state.is_terminal() {
            st.in_flight.remove(&slot);
            if ours {
                let why = if n.error.is_empty() { &n.message } else { &n.error };
                new_failures.push((
                    slot,
                    format!(
                        "task {} {} (exit code {}): {why}",
                        n.id,
                        n.state.as_str(),
                        n.exit_code
                    ),
                ));
            }
            continue;
        }
        if !ours && old_wanted.is_some() {
            out.changes.push(shutdown(
                n,
                format!("{what} to version {} replaced it", u.to_version),
            ));
            st.in_flight.remove(&slot);
            continue;
        }
        let timed_out =
            now_ms.saturating_sub(rec.started_at_ms.max(leading_since_ms)) >= cfg.timeout_ms as i64;
        if n.desired_state == TaskState::Ready {
            if n.state == TaskState::Ready {
                match (old, old_wanted) {
                    (_, Some(o)) => out.changes.push(shutdown(
                        o,
                        format!(
                            "replaced by version {} ({what}; its image is pulled)",
                            u.to_version
                        ),
                    )),
                    (Some(_), None) => {} // stopping
                    (None, _) => out.changes.push(TaskChange::Run {
                        task_id: n.id.clone(),
                    }),
                }
            } else if timed_out {
                out.changes.push(shutdown(
                    n,
                    format!("not prepared within the {what} timeout of {} ms", cfg.timeout_ms),
                ));
                st.in_flight.remove(&slot);
                if ours {
                    new_failures.push((
                        slot,
                        format!(
                            "task {} was not prepared (image pulled) within {} ms",
                            n.id, cfg.timeout_ms
                        ),
                    ));
                }
            }
            continue;
        }
        if n.state == TaskState::Running {
            if let Some(o) = old_wanted {
                out.changes.push(shutdown(
                    o,
                    format!("replaced by version {} ({what}; the new task runs)", u.to_version),
                ));
            }
            let entry = st.in_flight.get_mut(&slot).expect("iterating it");
            match rec.running_since_ms {
                None => entry.running_since_ms = Some(now_ms),
                Some(since)
                    if now_ms.saturating_sub(since.max(leading_since_ms)) >= cfg.monitor_ms as i64 =>
                {
                    st.in_flight.remove(&slot);
                    if ours {
                        st.done.insert(slot);
                    }
                    st.next_slot_at_ms = st.next_slot_at_ms.max(now_ms.saturating_add(cfg.delay_ms as i64));
                }
                Some(_) => {}
            }
        } else if timed_out {
            out.changes.push(shutdown(
                n,
                format!(
                    "did not reach running within the {what} timeout of {} ms",
                    cfg.timeout_ms
                ),
            ));
            st.in_flight.remove(&slot);
            if ours {
                new_failures.push((
                    slot,
                    format!("task {} did not reach running within {} ms", n.id, cfg.timeout_ms),
                ));
            }
        }
    }

    // Failures and the failure action.
    for (slot, why) in new_failures {
        st.failed.insert(slot, why);
    }
    let over =
        st.failed.len() as u64 * 1000 > u64::from(cfg.max_failure_permille) * u64::from(replicas.max(1));
    if over && (cfg.failure_action != FailureAction::Continue) {
        let (slot, why) = st.failed.iter().next_back().expect("over means failures");
        let reason = format!(
            "{} of {replicas} slots failed (slot {slot}: {why})",
            st.failed.len()
        );
        // Slots in flight stop where they are: a prepared task whose predecessor still runs
        // is dropped; one whose predecessor has stopped is started.
        for rec in st.in_flight.values() {
            let Some(&n) = tasks.get(rec.new_task_id.as_str()) else {
                continue;
            };
            let old_wanted = tasks
                .get(rec.old_task_id.as_str())
                .is_some_and(|o| live(o) && o.desired_state == TaskState::Running);
            if old_wanted {
                out.changes.push(shutdown(n, format!("{what} stopped: {reason}")));
            } else if n.desired_state == TaskState::Ready {
                out.changes.push(TaskChange::Run {
                    task_id: n.id.clone(),
                });
            }
        }
        if cfg.failure_action == FailureAction::Rollback && !rolling_back {
            out.changes.push(TaskChange::AutoRollback {
                service_id: service.id.clone(),
                revision: u.revision,
                message: format!("update to version {} rolled back: {reason}", u.to_version),
            });
            return out;
        }
        st.in_flight.clear();
        st.state = if rolling_back {
            UpdateState::RollbackPaused
        } else {
            UpdateState::Paused
        };
        st.finished_at_ms = Some(now_ms);
        st.message = format!("{what} paused: {reason}");
    }

    // New slots.
    if st.state.in_progress() {
        let cap = if cfg.parallelism == 0 {
            usize::MAX
        } else {
            cfg.parallelism as usize
        };
        let mut outdated = 0;
        // Not `1..=replicas`: a range from 1 to 0 (an update of a service scaled to 0) panics.
        for (&slot, ts) in by_slot.range(1..).take_while(|(s, _)| **s <= replicas) {
            if st.in_flight.contains_key(&slot) || st.failed.contains_key(&slot) {
                continue;
            }
            let o = match ts.iter().rev().find(|t| t.is_active()) {
                Some(o) => *o,
                // A rollback also refills a slot whose task of the version it leaves ended
                // (a failed update's slot, say, whose restart policy gives up).
                None => match ts.last() {
                    Some(t) if rolling_back && t.state.is_terminal() && t.spec_version == u.from_version => {
                        *t
                    }
                    _ => continue,
                },
            };
            if o.spec_version == u.to_version {
                continue;
            }
            if o.node_id.is_empty() && o.is_active() {
                // Never placed: nothing runs to keep; the reconciler starts it anew.
                out.changes.push(shutdown(
                    o,
                    format!("replaced by version {} before it was placed", u.to_version),
                ));
                continue;
            }
            outdated += 1;
            if st.in_flight.len() >= cap || now_ms < st.next_slot_at_ms {
                continue;
            }
            let id = new_id();
            let desired = match cfg.order {
                UpdateOrder::StopFirst => TaskState::Ready,
                UpdateOrder::StartFirst => TaskState::Running,
            };
            out.create.push((slot, id.clone(), desired, o.id.clone()));
            st.in_flight.insert(
                slot,
                SlotUpdate {
                    new_task_id: id,
                    old_task_id: o.id.clone(),
                    started_at_ms: now_ms,
                    running_since_ms: None,
                },
            );
        }
        if outdated == 0 && st.in_flight.is_empty() {
            st.state = if rolling_back {
                UpdateState::RollbackCompleted
            } else {
                UpdateState::Completed
            };
            st.finished_at_ms = Some(now_ms);
            let why = if u.message.is_empty() {
                String::new()
            } else {
                format!(" ({})", u.message)
            };
            st.message = if st.failed.is_empty() {
                format!("{what} to version {} completed{why}", u.to_version)
            } else {
                format!(
                    "{what} to version {} completed; {} of {replicas} slots failed and run what their restart policy gave them",
                    u.to_version,
                    st.failed.len()
                )
            };
        }
    }

    if st != **u {
        out.changes.push(TaskChange::SetUpdate {
            service_id: service.id.clone(),
            revision: u.revision,
            status: Box::new(st),
        });
    }
    out
}

/// The earliest wall-clock time (ms) after `now_ms` at which `service`'s update has something
/// to do without any entry being applied first: a monitor period or a delay ends, a new task
/// times out (periods count from `leading_since_ms` at the earliest, as in [`step`]). The
/// orchestrator runs a round then rather than at its next tick.
pub fn next_deadline(service: &Service, now_ms: i64, leading_since_ms: i64) -> Option<i64> {
    let u = service.update.as_ref().filter(|u| u.state.in_progress())?;
    let cfg = if u.state.is_rollback() {
        service.spec.rollback_config
    } else {
        service.spec.update_config
    };
    let mut at: Vec<i64> = u
        .in_flight
        .values()
        .map(|f| match f.running_since_ms {
            Some(since) => since.max(leading_since_ms).saturating_add(cfg.monitor_ms as i64),
            None => f
                .started_at_ms
                .max(leading_since_ms)
                .saturating_add(cfg.timeout_ms as i64),
        })
        .collect();
    at.push(u.next_slot_at_ms);
    at.into_iter().filter(|t| *t > now_ms).min()
}
