//! What a worker remembers across its own restarts (data dir `worker.json`, replaced
//! durably): its identity and the tasks it was running, so that with no manager reachable
//! it still knows what to keep running and how (restart policy included).

pub use crate::core::agent::LocalTask;
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
