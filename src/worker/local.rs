//! What a worker remembers across its own restarts (data dir `worker.json`, replaced
//! durably): its identity and the tasks it was running, so that with no manager reachable
//! it still knows what to keep running and how (restart policy included).

pub use crate::core::agent::LocalTask;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const FILE: &str = "worker.json";
/// Layout version of `worker.json`, written into it. A file without one is format 1 (the
/// layout before the field existed). A newer format is refused by name.
pub const FORMAT: u32 = 1;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LocalState {
    /// Set on save (`FORMAT`).
    #[serde(default)]
    pub format: u32,
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
    #[derive(Deserialize)]
    struct Version {
        #[serde(default)]
        format: u32,
    }
    if let Ok(v) = serde_json::from_slice::<Version>(&bytes) {
        if v.format > FORMAT {
            anyhow::bail!(
                "{} has format {}; this worker reads up to format {FORMAT}: it was written by a newer Warren. Run that version (or a later one) on this worker",
                p.display(),
                v.format
            );
        }
    }
    let st = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{} is corrupt; move it away to start this worker afresh (its running tasks will be rescheduled by the managers)",
            p.display()
        )
    })?;
    Ok(Some(st))
}

/// Saves `st` (durably, in this build's format) and hands it back unchanged, so that the
/// caller keeps it as what is saved without another copy.
pub fn save(data_dir: &Path, mut st: LocalState) -> anyhow::Result<LocalState> {
    let p = path(data_dir);
    let format = std::mem::replace(&mut st.format, FORMAT);
    let bytes = serde_json::to_vec_pretty(&st).expect("serializable");
    st.format = format;
    crate::raft::disk::write_durable(&p, &bytes).with_context(|| format!("cannot write {}", p.display()))?;
    Ok(st)
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;

    #[test]
    fn format_is_written_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let st = LocalState {
            node_id: "w1".into(),
            cluster_id: "c1".into(),
            ..Default::default()
        };
        save(dir.path(), st).unwrap();
        let back = load(dir.path()).unwrap().unwrap();
        assert_eq!(back.format, FORMAT);
        assert_eq!(back.node_id, "w1");
        // Before the field existed: read as it is.
        std::fs::write(
            path(dir.path()),
            r#"{"node_id":"w1","cluster_id":"c1","tasks":{}}"#,
        )
        .unwrap();
        assert_eq!(load(dir.path()).unwrap().unwrap().cluster_id, "c1");
        std::fs::write(
            path(dir.path()),
            r#"{"format":99,"node_id":"w1","cluster_id":"c1","tasks":{},"new":1}"#,
        )
        .unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("format 99") && e.contains("newer Warren"), "{e}");
    }
}
