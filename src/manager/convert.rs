//! Conversions between the wire types (`proto::v1`) and the core model.

use crate::core::{self, model};
use crate::proto::v1 as pb;

/// The core spec of a wire spec; an enum value this version does not know is refused (it is
/// not quietly taken as the default).
pub fn spec_from_pb(s: pb::ServiceSpec) -> Result<model::ServiceSpec, core::StateError> {
    let resources = s.resources.unwrap_or_default();
    let res = |r: Option<pb::Resources>| {
        let r = r.unwrap_or_default();
        model::Resources {
            cpu_millis: r.cpu_millis,
            memory_bytes: r.memory_bytes,
        }
    };
    let rp = s.restart_policy.unwrap_or_default();
    let condition = match pb::RestartCondition::try_from(rp.condition) {
        Ok(pb::RestartCondition::None) => model::RestartCondition::None,
        Ok(pb::RestartCondition::OnFailure) => model::RestartCondition::OnFailure,
        Ok(pb::RestartCondition::Any | pb::RestartCondition::Unspecified) => model::RestartCondition::Any,
        Err(_) => {
            return Err(core::StateError::invalid(
                "restart condition",
                format!(
                    "{} is not a restart condition; use none, on-failure or any",
                    rp.condition
                ),
            ))
        }
    };
    let update_config = update_config_from_pb(s.update_config, "update")?;
    let rollback_config = update_config_from_pb(s.rollback_config, "rollback")?;
    Ok(model::ServiceSpec {
        update_config,
        rollback_config,
        healthcheck: s.healthcheck.map(|h| model::HealthCheck {
            cmd: h.cmd,
            interval_ms: h.interval_ms,
            timeout_ms: h.timeout_ms,
            retries: h.retries,
            start_period_ms: h.start_period_ms,
        }),
        no_healthcheck: s.no_healthcheck,
        name: s.name,
        image: s.image,
        replicas: s.replicas,
        command: s.command,
        args: s.args,
        env: s.env,
        labels: s.labels,
        resources: model::ResourceRequirements {
            reservations: res(resources.reservations),
            limits: res(resources.limits),
        },
        restart_policy: model::RestartPolicy {
            condition,
            max_attempts: rp.max_attempts,
            delay_ms: rp.delay_ms,
        },
        constraints: s.constraints,
        stop_timeout_ms: s.stop_timeout_ms,
    })
}

/// Rollout settings from the wire: absent = the defaults; unknown enum values are refused.
fn update_config_from_pb(
    c: Option<pb::UpdateConfig>,
    what: &str,
) -> Result<model::UpdateConfig, core::StateError> {
    let Some(c) = c else {
        return Ok(model::UpdateConfig::default());
    };
    let failure_action = match pb::FailureAction::try_from(c.failure_action) {
        Ok(pb::FailureAction::Unspecified | pb::FailureAction::Pause) => model::FailureAction::Pause,
        Ok(pb::FailureAction::Continue) => model::FailureAction::Continue,
        Ok(pb::FailureAction::Rollback) => model::FailureAction::Rollback,
        Err(_) => {
            return Err(core::StateError::invalid(
                &format!("{what} failure action"),
                format!(
                    "{} is not a failure action; use pause, continue or rollback",
                    c.failure_action
                ),
            ))
        }
    };
    let order = match pb::UpdateOrder::try_from(c.order) {
        Ok(pb::UpdateOrder::Unspecified | pb::UpdateOrder::StopFirst) => model::UpdateOrder::StopFirst,
        Ok(pb::UpdateOrder::StartFirst) => model::UpdateOrder::StartFirst,
        Err(_) => {
            return Err(core::StateError::invalid(
                &format!("{what} order"),
                format!("{} is not an order; use stop-first or start-first", c.order),
            ))
        }
    };
    Ok(model::UpdateConfig {
        parallelism: c.parallelism,
        delay_ms: c.delay_ms,
        failure_action,
        monitor_ms: c.monitor_ms,
        max_failure_permille: c.max_failure_permille,
        order,
        timeout_ms: c.timeout_ms,
    })
}

fn update_config_to_pb(c: &model::UpdateConfig) -> pb::UpdateConfig {
    pb::UpdateConfig {
        parallelism: c.parallelism,
        delay_ms: c.delay_ms,
        failure_action: match c.failure_action {
            model::FailureAction::Pause => pb::FailureAction::Pause,
            model::FailureAction::Continue => pb::FailureAction::Continue,
            model::FailureAction::Rollback => pb::FailureAction::Rollback,
        } as i32,
        monitor_ms: c.monitor_ms,
        max_failure_permille: c.max_failure_permille,
        order: match c.order {
            model::UpdateOrder::StopFirst => pb::UpdateOrder::StopFirst,
            model::UpdateOrder::StartFirst => pb::UpdateOrder::StartFirst,
        } as i32,
        timeout_ms: c.timeout_ms,
    }
}

fn update_status_to_pb(u: &model::UpdateStatus) -> pb::UpdateStatus {
    use model::UpdateState as U;
    pb::UpdateStatus {
        state: match u.state {
            U::Updating => pb::UpdateState::Updating,
            U::Paused => pb::UpdateState::Paused,
            U::Completed => pb::UpdateState::Completed,
            U::RollbackStarted => pb::UpdateState::RollbackStarted,
            U::RollbackPaused => pb::UpdateState::RollbackPaused,
            U::RollbackCompleted => pb::UpdateState::RollbackCompleted,
        } as i32,
        from_version: u.from_version,
        to_version: u.to_version,
        started_at_ms: u.started_at_ms,
        finished_at_ms: u.finished_at_ms,
        message: u.message.clone(),
        done_slots: u.done.iter().copied().collect(),
        failed: u
            .failed
            .iter()
            .map(|(slot, reason)| pb::SlotFailure {
                slot: *slot,
                reason: reason.clone(),
            })
            .collect(),
        in_flight: u
            .in_flight
            .iter()
            .map(|(slot, f)| pb::SlotInFlight {
                slot: *slot,
                new_task_id: f.new_task_id.clone(),
                old_task_id: f.old_task_id.clone(),
                started_at_ms: f.started_at_ms,
                running_since_ms: f.running_since_ms,
            })
            .collect(),
    }
}

fn res_to_pb(r: model::Resources) -> pb::Resources {
    pb::Resources {
        cpu_millis: r.cpu_millis,
        memory_bytes: r.memory_bytes,
    }
}

pub fn spec_to_pb(s: &model::ServiceSpec) -> pb::ServiceSpec {
    pb::ServiceSpec {
        name: s.name.clone(),
        image: s.image.clone(),
        replicas: s.replicas,
        command: s.command.clone(),
        args: s.args.clone(),
        env: s.env.clone(),
        labels: s.labels.clone(),
        resources: Some(pb::ResourceRequirements {
            reservations: Some(res_to_pb(s.resources.reservations)),
            limits: Some(res_to_pb(s.resources.limits)),
        }),
        restart_policy: Some(pb::RestartPolicy {
            condition: match s.restart_policy.condition {
                model::RestartCondition::None => pb::RestartCondition::None,
                model::RestartCondition::OnFailure => pb::RestartCondition::OnFailure,
                model::RestartCondition::Any => pb::RestartCondition::Any,
            } as i32,
            max_attempts: s.restart_policy.max_attempts,
            delay_ms: s.restart_policy.delay_ms,
        }),
        constraints: s.constraints.clone(),
        stop_timeout_ms: s.stop_timeout_ms,
        update_config: Some(update_config_to_pb(&s.update_config)),
        rollback_config: Some(update_config_to_pb(&s.rollback_config)),
        healthcheck: s.healthcheck.as_ref().map(|h| pb::HealthCheck {
            cmd: h.cmd.clone(),
            interval_ms: h.interval_ms,
            timeout_ms: h.timeout_ms,
            retries: h.retries,
            start_period_ms: h.start_period_ms,
        }),
        no_healthcheck: s.no_healthcheck,
    }
}

pub fn service_to_pb(s: &core::Service) -> pb::Service {
    pb::Service {
        id: s.id.clone(),
        spec: Some(spec_to_pb(&s.spec)),
        created_at_ms: s.created_at_ms,
        updated_at_ms: s.updated_at_ms,
        version: s.version,
        spec_version: s.spec_version,
        previous: s
            .previous
            .iter()
            .map(|p| pb::SpecVersion {
                version: p.version,
                spec: Some(spec_to_pb(&p.spec)),
                replaced_at_ms: p.replaced_at_ms,
            })
            .collect(),
        update_status: s.update.as_deref().map(update_status_to_pb),
    }
}

pub fn task_state_to_pb(s: model::TaskState) -> pb::TaskState {
    use model::TaskState as T;
    match s {
        T::New => pb::TaskState::New,
        T::Pending => pb::TaskState::Pending,
        T::Assigned => pb::TaskState::Assigned,
        T::Preparing => pb::TaskState::Preparing,
        T::Starting => pb::TaskState::Starting,
        T::Running => pb::TaskState::Running,
        T::Complete => pb::TaskState::Complete,
        T::Failed => pb::TaskState::Failed,
        T::Shutdown => pb::TaskState::Shutdown,
        T::Rejected => pb::TaskState::Rejected,
        T::Orphaned => pb::TaskState::Orphaned,
        T::Ready => pb::TaskState::Ready,
    }
}

pub fn health_to_pb(h: Option<model::HealthStatus>) -> pb::HealthState {
    use model::HealthStatus as H;
    match h {
        None => pb::HealthState::Unspecified,
        Some(H::Starting) => pb::HealthState::Starting,
        Some(H::Healthy) => pb::HealthState::Healthy,
        Some(H::Unhealthy) => pb::HealthState::Unhealthy,
    }
}

/// None for unspecified and for values this build does not know.
pub fn health_from_pb(h: i32) -> Option<model::HealthStatus> {
    use model::HealthStatus as H;
    match pb::HealthState::try_from(h).ok()? {
        pb::HealthState::Unspecified => None,
        pb::HealthState::Starting => Some(H::Starting),
        pb::HealthState::Healthy => Some(H::Healthy),
        pb::HealthState::Unhealthy => Some(H::Unhealthy),
    }
}

pub fn task_state_from_pb(s: i32) -> Option<model::TaskState> {
    use model::TaskState as T;
    Some(match pb::TaskState::try_from(s).ok()? {
        pb::TaskState::Unspecified => return None,
        pb::TaskState::New => T::New,
        pb::TaskState::Pending => T::Pending,
        pb::TaskState::Assigned => T::Assigned,
        pb::TaskState::Preparing => T::Preparing,
        pb::TaskState::Starting => T::Starting,
        pb::TaskState::Running => T::Running,
        pb::TaskState::Complete => T::Complete,
        pb::TaskState::Failed => T::Failed,
        pb::TaskState::Shutdown => T::Shutdown,
        pb::TaskState::Rejected => T::Rejected,
        pb::TaskState::Orphaned => T::Orphaned,
        pb::TaskState::Ready => T::Ready,
    })
}

/// A task on the wire; `with_spec` adds the spec of its version (what a worker needs to run
/// it; absent if that version is no longer kept, which only a finished task can be).
pub fn task_to_pb(st: &core::ClusterState, t: &model::Task, with_spec: bool) -> pb::Task {
    let service = st.services.get(&t.service_id);
    pb::Task {
        id: t.id.clone(),
        service_id: t.service_id.clone(),
        service_name: service.map(|s| s.spec.name.clone()).unwrap_or_default(),
        slot: t.slot,
        node_id: t.node_id.clone(),
        desired_state: task_state_to_pb(t.desired_state) as i32,
        state: task_state_to_pb(t.state) as i32,
        message: t.message.clone(),
        error: t.error.clone(),
        created_at_ms: t.created_at_ms,
        updated_at_ms: t.updated_at_ms,
        container_id: t.container_id.clone(),
        exit_code: t.exit_code,
        version: t.version,
        spec: if with_spec {
            service.and_then(|s| s.spec_of(t.spec_version)).map(spec_to_pb)
        } else {
            None
        },
        attempt: t.attempt,
        spec_version: t.spec_version,
        image: service
            .and_then(|s| s.spec_of(t.spec_version))
            .map(|s| s.image.clone())
            .unwrap_or_default(),
        health: health_to_pb(t.health) as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips() {
        let mut spec = model::ServiceSpec {
            name: "web".into(),
            image: "busybox".into(),
            replicas: 3,
            command: vec!["sh".into()],
            args: vec!["-c".into(), "sleep 1".into()],
            constraints: vec!["node.labels.zone==a".into()],
            stop_timeout_ms: 5,
            ..Default::default()
        };
        spec.env.insert("A".into(), "1".into());
        spec.resources.limits.memory_bytes = 1 << 20;
        spec.restart_policy.condition = model::RestartCondition::OnFailure;
        assert_eq!(spec_from_pb(spec_to_pb(&spec)).unwrap(), spec);
        let mut bad = spec_to_pb(&spec);
        bad.restart_policy.as_mut().unwrap().condition = 99;
        assert!(spec_from_pb(bad).is_err());
    }
}
