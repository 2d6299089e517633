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
    Ok(model::ServiceSpec {
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
    }
}

pub fn service_to_pb(s: &core::Service) -> pb::Service {
    pb::Service {
        id: s.id.clone(),
        spec: Some(spec_to_pb(&s.spec)),
        created_at_ms: s.created_at_ms,
        updated_at_ms: s.updated_at_ms,
        version: s.version,
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
    })
}

/// A task on the wire; `with_spec` adds its service's spec (what a worker needs to run it).
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
            service.map(|s| spec_to_pb(&s.spec))
        } else {
            None
        },
        attempt: t.attempt,
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
