//! Human tables and JSON for the CLI.

use super::Output;
use crate::proto::v1 as pb;
use comfy_table::{presets::NOTHING, Table};
use serde_json::{json, Value};

pub fn json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING)
        .set_header(header.iter().map(|h| h.to_string()));
    t
}

fn time(ms: i64) -> String {
    // RFC 3339-ish UTC without pulling in a date library.
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a calendar date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

pub fn service_json(s: &pb::Service) -> Value {
    let spec = s.spec.clone().unwrap_or_default();
    json!({
        "id": s.id,
        "name": spec.name,
        "image": spec.image,
        "replicas": spec.replicas,
        "command": spec.command,
        "args": spec.args,
        "env": spec.env,
        "labels": spec.labels,
        "constraints": spec.constraints,
        "created_at": time(s.created_at_ms),
        "updated_at": time(s.updated_at_ms),
        "version": s.version,
        "spec_version": s.spec_version,
        "update_config": update_config_json(spec.update_config),
        "rollback_config": update_config_json(spec.rollback_config),
        "update_status": s.update_status.as_ref().map(|u| json!({
            "state": super::rollout::state_name(u),
            "from_version": u.from_version,
            "to_version": u.to_version,
            "started_at": time(u.started_at_ms),
            "finished_at": u.finished_at_ms.map(time),
            "took_ms": u.finished_at_ms.map(|f| f - u.started_at_ms),
            "message": u.message,
            "done_slots": u.done_slots,
            "failed": u.failed.iter().map(|f| json!({"slot": f.slot, "reason": f.reason})).collect::<Vec<_>>(),
            "in_flight": u.in_flight.iter().map(|f| json!({
                "slot": f.slot,
                "new_task": f.new_task_id,
                "old_task": f.old_task_id,
                "started_at": time(f.started_at_ms),
                "running_since": f.running_since_ms.map(time),
            })).collect::<Vec<_>>(),
        })),
        "history": s.previous.iter().map(|p| {
            let ps = p.spec.clone().unwrap_or_default();
            json!({
                "version": p.version,
                "image": ps.image,
                "command": ps.command,
                "env": ps.env,
                "replaced_at": time(p.replaced_at_ms),
            })
        }).collect::<Vec<_>>(),
    })
}

fn update_config_json(c: Option<pb::UpdateConfig>) -> Value {
    let c = c.unwrap_or_else(super::rollout::default_config);
    json!({
        "parallelism": c.parallelism,
        "delay_ms": c.delay_ms,
        "failure_action": short(pb::FailureAction::try_from(c.failure_action).ok().map(|r| r.as_str_name()), "FAILURE_ACTION_"),
        "monitor_ms": c.monitor_ms,
        "max_failure_ratio": f64::from(c.max_failure_permille) / 1000.0,
        "order": short(pb::UpdateOrder::try_from(c.order).ok().map(|r| r.as_str_name()), "UPDATE_ORDER_"),
        "timeout_ms": c.timeout_ms,
    })
}

/// `NODE_STATUS_READY` -> `ready`.
fn short(name: Option<&str>, prefix: &str) -> String {
    name.map(|n| {
        n.trim_start_matches(prefix)
            .to_ascii_lowercase()
            .replace('_', "-")
    })
    .unwrap_or_else(|| "?".into())
}

pub fn node_json(n: &pb::Node) -> Value {
    let cap = n.capacity.unwrap_or_default();
    json!({
        "id": n.id,
        "role": short(pb::Role::try_from(n.role).ok().map(|r| r.as_str_name()), "ROLE_"),
        "address": n.address,
        "status": short(pb::NodeStatus::try_from(n.status).ok().map(|r| r.as_str_name()), "NODE_STATUS_"),
        "availability": short(pb::NodeAvailability::try_from(n.availability).ok().map(|r| r.as_str_name()), "NODE_AVAILABILITY_"),
        "labels": n.labels,
        "cpus": cap.cpu_millis as f64 / 1000.0,
        "memory_bytes": cap.memory_bytes,
        "created_at": time(n.created_at_ms),
        "version": n.version,
    })
}

fn task_state(s: i32) -> String {
    short(
        pb::TaskState::try_from(s).ok().map(|r| r.as_str_name()),
        "TASK_STATE_",
    )
}

/// The health check's verdict; None: no check, or none reported yet.
fn health(h: i32) -> Option<String> {
    match pb::HealthState::try_from(h) {
        Ok(pb::HealthState::Unspecified) => None,
        other => Some(short(other.ok().map(|r| r.as_str_name()), "HEALTH_STATE_")),
    }
}

pub fn task_json(t: &pb::Task) -> Value {
    json!({
        "id": t.id,
        "service": t.service_name,
        "slot": t.slot,
        "attempt": t.attempt,
        "spec_version": t.spec_version,
        "image": t.image,
        "node": t.node_id,
        "desired_state": task_state(t.desired_state),
        "state": task_state(t.state),
        "health": health(t.health),
        "since": time(t.updated_at_ms),
        "message": t.message,
        "error": t.error,
        "exit_code": t.exit_code,
        "container_id": t.container_id,
    })
}

/// `service ps`: newest first within each slot, like `docker service ps`.
pub fn tasks(out: Output, list: &[pb::Task]) -> anyhow::Result<()> {
    let mut list = list.to_vec();
    list.sort_by(|a, b| (a.slot, -a.created_at_ms, &a.id).cmp(&(b.slot, -b.created_at_ms, &b.id)));
    if out == Output::Json {
        return json(&Value::Array(list.iter().map(task_json).collect()));
    }
    let mut t = table(&[
        "ID",
        "NAME",
        "IMAGE (VERSION)",
        "NODE",
        "DESIRED",
        "STATE",
        "SINCE",
        "ERROR / MESSAGE",
    ]);
    let mut last_slot = None;
    for task in &list {
        // Older tasks of a slot are history, shown indented as docker does.
        let name = format!("{}.{}", task.service_name, task.slot);
        let name = if last_slot == Some(task.slot) {
            format!(" \\_ {name}")
        } else {
            name
        };
        last_slot = Some(task.slot);
        let note = if task.error.is_empty() {
            task.message.clone()
        } else {
            task.error.clone()
        };
        t.add_row(vec![
            crate::core::limits::short_id(&task.id).to_string(),
            name,
            if task.image.is_empty() {
                format!("(version {} no longer kept)", task.spec_version)
            } else {
                format!("{} ({})", task.image, task.spec_version)
            },
            if task.node_id.is_empty() {
                "-".into()
            } else {
                task.node_id.clone()
            },
            task_state(task.desired_state),
            // Like `docker ps`: "running (healthy)".
            match health(task.health) {
                Some(h) => format!("{} ({h})", task_state(task.state)),
                None => task_state(task.state),
            },
            time(task.updated_at_ms),
            note,
        ]);
    }
    println!("{t}");
    Ok(())
}

pub fn created(out: Output, s: &pb::Service) -> anyhow::Result<()> {
    match out {
        Output::Json => json(&service_json(s)),
        Output::Table => {
            println!("{}", s.id);
            Ok(())
        }
    }
}

pub fn services(out: Output, list: &[pb::Service]) -> anyhow::Result<()> {
    if out == Output::Json {
        return json(&Value::Array(list.iter().map(service_json).collect()));
    }
    let mut t = table(&["ID", "NAME", "IMAGE", "REPLICAS", "UPDATED"]);
    for s in list {
        let spec = s.spec.clone().unwrap_or_default();
        t.add_row(vec![
            s.id.clone(),
            spec.name,
            spec.image,
            spec.replicas.to_string(),
            time(s.updated_at_ms),
        ]);
    }
    println!("{t}");
    Ok(())
}

pub fn nodes(out: Output, list: &[pb::Node]) -> anyhow::Result<()> {
    if out == Output::Json {
        return json(&Value::Array(list.iter().map(node_json).collect()));
    }
    let mut t = table(&["ID", "ROLE", "STATUS", "AVAILABILITY", "ADDRESS"]);
    for n in list {
        let v = node_json(n);
        t.add_row(vec![
            n.id.clone(),
            v["role"].as_str().unwrap_or("?").to_string(),
            v["status"].as_str().unwrap_or("?").to_string(),
            v["availability"].as_str().unwrap_or("?").to_string(),
            n.address.clone(),
        ]);
    }
    println!("{t}");
    Ok(())
}

pub fn cluster_info(out: Output, i: &pb::ClusterInfo) -> anyhow::Result<()> {
    let managers: Vec<Value> = i
        .managers
        .iter()
        .map(|m| {
            json!({
                "id": m.node_id, "api_addr": m.api_addr, "raft_addr": m.raft_addr,
                "voter": m.voter, "reachable": m.reachable, "last_contact_ms": m.last_contact_ms,
                "replication_lag": m.replication_lag,
                "leader": m.node_id == i.leader_id,
            })
        })
        .collect();
    if out == Output::Json {
        return json(&json!({
            "cluster_id": i.cluster_id, "leader_id": i.leader_id, "leader_api_addr": i.leader_api_addr,
            "term": i.term, "commit_index": i.commit_index, "last_applied": i.last_applied,
            "last_log_index": i.last_log_index,
            "answered_by": i.answered_by, "services": i.services, "nodes": i.nodes, "tasks": i.tasks,
            "snapshot_index": i.snapshot_index, "purged_index": i.purged_index,
            "leader_note": i.leader_note, "managers": managers,
        }));
    }
    println!("Cluster:      {}", i.cluster_id);
    if i.leader_id == 0 {
        println!("Leader:       unknown");
    } else {
        println!("Leader:       {} ({})", i.leader_id, i.leader_api_addr);
    }
    if !i.leader_note.is_empty() {
        println!("Note:         {}", i.leader_note);
    }
    println!("Term:         {}", i.term);
    println!("Applied:      {}", i.last_applied);
    println!(
        "Last log:     {}",
        i.last_log_index.map_or("none".to_string(), |l| l.to_string())
    );
    println!("Services:     {}", i.services);
    println!("Answered by:  {}", i.answered_by);
    let mut t = table(&["ID", "API", "RAFT", "ROLE", "REACHABLE", "LAG"]);
    for m in &i.managers {
        let role = match (m.node_id == i.leader_id, m.voter) {
            (true, _) => "leader",
            (false, true) => "voter",
            (false, false) => "learner",
        };
        t.add_row(vec![
            m.node_id.to_string(),
            m.api_addr.clone(),
            m.raft_addr.clone(),
            role.to_string(),
            m.reachable.to_string(),
            m.replication_lag.map_or("unknown".into(), |l| l.to_string()),
        ]);
    }
    println!("{t}");
    Ok(())
}

pub fn join_token(out: Output, t: &pb::JoinToken) -> anyhow::Result<()> {
    if out == Output::Json {
        return json(&json!({
            "role": pb::Role::try_from(t.role).map(|r| r.as_str_name()).unwrap_or("?"),
            "token": t.token, "expires_at": time(t.expires_at_ms), "join_command": t.join_command,
        }));
    }
    println!("Token (expires {}):\n\n    {}\n", time(t.expires_at_ms), t.token);
    println!("To join, run on the new node:\n\n    {}\n", t.join_command);
    Ok(())
}

/// `2026-11-29T06:51:29.000000005Z` for nanoseconds since the Unix epoch.
/// What `warren version` learned of the cluster.
pub struct ClusterVersions {
    /// (id, is the leader, build; empty when unknown).
    pub managers: Vec<(u64, bool, String)>,
    /// (node id, build; empty when unknown).
    pub workers: Vec<(String, String)>,
}

/// `warren version`: this build, then every node's (unknown where the cluster has not heard
/// it), or why the cluster's could not be read.
pub fn versions(out: Output, client: &str, cluster: Result<&ClusterVersions, String>) -> anyhow::Result<()> {
    let known = |v: &str| (!v.is_empty()).then(|| v.to_string());
    if out == Output::Json {
        let cluster = match &cluster {
            Ok(c) => json!({
                "managers": c.managers.iter().map(|(id, leader, v)| json!({"id": id, "leader": leader, "version": known(v)})).collect::<Vec<_>>(),
                "workers": c.workers.iter().map(|(id, v)| json!({"id": id, "version": known(v)})).collect::<Vec<_>>(),
            }),
            Err(e) => json!({ "error": e }),
        };
        return json(&json!({ "client": client, "cluster": cluster }));
    }
    println!("client      {client}");
    match cluster {
        Ok(c) => {
            for (id, leader, v) in &c.managers {
                let who = format!("manager {id}{}", if *leader { " (leader)" } else { "" });
                println!("{who:<20}{}", known(v).unwrap_or_else(|| "unknown".into()));
            }
            for (id, v) in &c.workers {
                println!(
                    "{:<20}{}",
                    format!("worker {id}"),
                    known(v).unwrap_or_else(|| "unknown".into())
                );
            }
        }
        Err(e) => eprintln!("the cluster's versions are unknown: {e}"),
    }
    Ok(())
}

pub fn rfc3339_nanos(unix_nanos: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(unix_nanos.max(0) as u64);
    humantime::format_rfc3339_nanos(t).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc_times() {
        assert_eq!(super::time(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::time(1_795_824_000_000), "2026-11-28T00:00:00Z");
        assert_eq!(super::time(951_782_400_000), "2000-02-29T00:00:00Z");
    }
}
