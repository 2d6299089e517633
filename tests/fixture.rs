//! Every fixture under tests/fixtures/ (a manager's database, a worker's state and a backup,
//! written by `scripts/make-fixture.sh` with the build of its state format) must stay
//! readable by every later build: a format change comes with a reader for the formats before
//! it, or this test fails. See docs/operations.md, "Upgrades".

#![cfg(not(madsim))]

use std::path::{Path, PathBuf};

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut all: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    all.sort();
    all
}

#[test]
fn every_fixture_opens_with_this_build() {
    let all = fixtures();
    assert!(
        all.iter().any(|p| p.ends_with("format-a4")),
        "the first fixture (format-a4) is missing: {all:?}"
    );
    for fixture in all {
        // Opening writes (redb creates missing tables): on a copy.
        let tmp = tempfile::tempdir().unwrap();
        for f in ["warren.redb", "worker.json", "cluster.wbk"] {
            std::fs::copy(fixture.join(f), tmp.path().join(f))
                .unwrap_or_else(|e| panic!("{}: {f}: {e}", fixture.display()));
        }
        let name = fixture.display();
        let (log, sm) = warren::raft::store::open(&tmp.path().join("warren.redb"))
            .unwrap_or_else(|e| panic!("{name}: the manager's database does not open: {e}"));
        let id: warren::manager::Identity = log
            .read_identity()
            .unwrap()
            .unwrap_or_else(|| panic!("{name}: no identity"));
        assert_eq!(id.node_id, 1, "{name}");
        let format = fixture
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("format-"))
            .and_then(|f| u8::from_str_radix(f, 16).ok())
            .unwrap_or_else(|| panic!("{name}: a fixture's directory is named format-XX (hex)"));
        if format >= 0xA5 {
            // From 0xA5 on a log entry can hold several writes: the fixture must hold one.
            let entries = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(openraft::RaftLogReader::try_get_log_entries(
                    &mut log.clone(),
                    0..u64::MAX,
                ))
                .unwrap_or_else(|e| panic!("{name}: the log does not read: {e}"));
            let batches = entries
                .iter()
                .filter(|e| {
                    matches!(
                        &e.payload,
                        openraft::EntryPayload::Normal(warren::core::Command::Batch(b)) if b.len() > 1
                    )
                })
                .count();
            assert!(batches > 0, "{name}: no batch among {} entries", entries.len());
        }
        let data = sm
            .state_with_whole_log()
            .unwrap_or_else(|e| panic!("{name}: the log does not read: {e}"));
        let st = &data.state;
        assert_eq!(st.cluster_id, id.cluster_id, "{name}");
        let web = st
            .service("fixture-web")
            .unwrap_or_else(|| panic!("{name}: no fixture-web"));
        assert_eq!(web.spec.replicas, 2, "{name}");
        assert_eq!(web.spec.image, "busybox:1.37", "{name}");
        assert!(!web.previous.is_empty(), "{name}: the update's history is gone");
        assert!(st.service("fixture-batch").is_some(), "{name}");
        assert!(st.nodes.contains_key("fw1"), "{name}");
        assert!(!st.pki.ca_cert_der.is_empty(), "{name}: no CA");
        assert!(st.tasks.len() >= 3, "{name}: {} tasks", st.tasks.len());

        let worker = warren::worker::local::load(tmp.path())
            .unwrap_or_else(|e| panic!("{name}: worker.json does not read: {e:#}"))
            .unwrap();
        assert_eq!(worker.node_id, "fw1", "{name}");
        assert_eq!(worker.cluster_id, id.cluster_id, "{name}");
        assert!(!worker.tasks.is_empty(), "{name}");

        let backup = warren::manager::backup::decode(&std::fs::read(tmp.path().join("cluster.wbk")).unwrap())
            .unwrap_or_else(|e| panic!("{name}: the backup does not read: {e}"));
        assert_eq!(backup.cluster_id, id.cluster_id, "{name}");
        assert!(backup.state.service("fixture-web").is_some(), "{name}");
    }
}
