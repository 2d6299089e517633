//! What a worker remembers across its own restarts (data dir `worker.json`, replaced
//! durably): its identity and the tasks it was running, so that with no manager reachable
//! it still knows what to keep running and how (restart policy included).

use crate::core::{ServiceSpec, TaskState};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const FILE: &str = "worker.json";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LocalState {
    pub node_id: String,
    pub cluster_id: String,
    pub tasks: BTreeMap<String, LocalTask>,
}

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
    /// Exited while no manager was reachable and the restart policy wants it again once
    /// its delay is over. (A task whose exit a manager learned about is the managers' to
    /// replace, never restarted here.)
    #[serde(default)]
    pub restart_due: bool,
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

pub fn load(data_dir: &Path) -> anyhow::Result<Option<LocalState>> {
    let p = path(data_dir);
    let Some(bytes) =
        crate::raft::disk::read_durable(&p).with_context(|| format!("cannot read {}", p.display()))?
    else {
        return Ok(None);
    };
    let st = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{} is corrupt; move it away to start this worker afresh (its running tasks will be rescheduled by the managers)",
            p.display()
        )
    })?;
    Ok(Some(st))
}

pub fn save(data_dir: &Path, st: &LocalState) -> anyhow::Result<()> {
    let p = path(data_dir);
    let bytes = serde_json::to_vec_pretty(st).expect("serializable");
    crate::raft::disk::write_durable(&p, &bytes).with_context(|| format!("cannot write {}", p.display()))
}
