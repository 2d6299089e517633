//! Raft log and state machine storage on redb.
//!
//! - The log, the vote and the committed id are written in redb transactions that fsync on
//!   commit (`Durability::Immediate`, redb's default) before openraft is told they are
//!   persisted, so an acknowledged write survives `kill -9`.
//! - The state machine lives in memory and is rebuilt on start from the last snapshot plus the
//!   committed log after it (openraft re-applies from `applied_state` up to `read_committed`).
//! - Snapshots are the whole `ClusterState`, stored in the same database; openraft's snapshot
//!   policy decides when to build one, after which it purges the log up to it.

use super::codec::{self, CodecError};
use super::durable::Durable;
use super::wal::{Record, Wal};
use super::{ManagerNode, NodeId, TypeConfig, WriteResult};
use crate::core::{ClusterState, Outcome};
use crate::offload::off_async;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{Arc, RwLock};

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";
const KEY_SNAPSHOT_META: &str = "meta";
const KEY_SNAPSHOT_DATA: &str = "data";
/// The manager's own identity (see `manager::identity`), kept beside the log it belongs to.
pub const KEY_IDENTITY: &str = "identity";

type SErr = StorageError<NodeId>;

fn any(e: impl Into<redb::Error>) -> AnyError {
    AnyError::new(&e.into())
}
fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    codec::seal(v)
}

/// Names the database and the value when a stored value fails its checksum or decoding, so
/// the operator knows which data dir is damaged.
fn corrupt(path: &str, what: impl std::fmt::Display, e: CodecError) -> AnyError {
    AnyError::error(format!(
        "the database {path} is corrupt at {what}: {e}; restore the data dir from a backup, or remove this manager and join a new one (docs/operations.md)"
    ))
}

/// Errors opening the store, which the daemon reports as a bad data directory.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the database {path}: {source}")]
    Database {
        path: String,
        #[source]
        source: redb::Error,
    },
    #[error("the database {path} is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("the Raft log's write-ahead file {path} cannot be used: {reason}. It belongs with the database beside it; do not move or edit either (docs/operations.md, \"Data directory errors\")")]
    Wal { path: String, reason: String },
    #[error("the database {path} was written by a Warren whose state format is {found:#04x}; this binary reads format {reads:#04x}{}; docs/operations.md, \"Upgrades\"", format_advice(*.found, *.reads))]
    OtherFormat { path: String, found: u8, reads: u8 },
}

fn format_advice(found: u8, reads: u8) -> &'static str {
    if found > reads {
        ": it was written by a newer Warren. Run that version or a later one on it"
    } else {
        ": it was written by an older Warren whose format this build does not read. Run the version that wrote it"
    }
}

/// What `verify` found wrong.
enum Unreadable {
    Corrupt(String),
    OtherFormat(u8),
}

impl From<String> for Unreadable {
    fn from(s: String) -> Self {
        Unreadable::Corrupt(s)
    }
}

/// A stored value that failed to unseal, as `verify` reports it.
fn unreadable(what: impl std::fmt::Display, e: CodecError) -> Unreadable {
    match e {
        CodecError::Format(f) => Unreadable::OtherFormat(f),
        e => Unreadable::Corrupt(format!("{what}: {e}")),
    }
}

/// The state machine as held in memory: what the managers serve reads from.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StateMachineData {
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, ManagerNode>,
    pub state: ClusterState,
}

pub type SharedState = Arc<RwLock<StateMachineData>>;

/// A copy of the state machine as it is now. Cheap (`core::state::Map`): walk the copy, not
/// the state under its lock, so that `apply` (and every reader queued behind it) never waits
/// on a walk.
pub fn view(state: &SharedState) -> StateMachineData {
    state.read().unwrap().clone()
}

impl StateMachineData {
    /// Applies one log entry: the one way the state machine moves, whether openraft drives
    /// it or `--force-new-cluster` reads the whole log.
    fn apply_entry(&mut self, entry: Entry<TypeConfig>) -> Result<Outcome, crate::core::StateError> {
        self.last_applied = Some(entry.log_id);
        match entry.payload {
            EntryPayload::Blank => Ok(Outcome::Internal),
            EntryPayload::Normal(cmd) => self.state.apply(entry.log_id.index, cmd),
            EntryPayload::Membership(m) => {
                self.membership = StoredMembership::new(Some(entry.log_id), m);
                Ok(Outcome::Internal)
            }
        }
    }
}

/// How much log was appended since the last snapshot, and that snapshot's size: what
/// `core::compaction::snapshot_due` decides on. Shared by a manager's two stores.
#[derive(Debug, Default)]
pub struct Growth {
    appended_bytes: std::sync::atomic::AtomicU64,
    appended_at_snapshot: std::sync::atomic::AtomicU64,
    snapshot_bytes: std::sync::atomic::AtomicU64,
}

impl Growth {
    fn appended(&self, bytes: u64) {
        self.appended_bytes
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    fn snapshot_saved(&self, bytes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.appended_at_snapshot
            .store(self.appended_bytes.load(Relaxed), Relaxed);
        self.snapshot_bytes.store(bytes, Relaxed);
    }

    /// Log bytes appended since the last snapshot this manager saved (or since it started),
    /// and that snapshot's size in bytes (0: none).
    pub fn since_snapshot(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let since = self
            .appended_bytes
            .load(Relaxed)
            .saturating_sub(self.appended_at_snapshot.load(Relaxed));
        (since, self.snapshot_bytes.load(Relaxed))
    }
}

#[derive(Clone, Debug)]
pub struct LogStore {
    db: Arc<Database>,
    path: Arc<str>,
    /// Highest committed log index this store was told of (see `manager::marker`).
    committed_high: Arc<std::sync::atomic::AtomicU64>,
    /// The newest entries, decoded, shared by every reader of this store.
    tail: Arc<std::sync::Mutex<Tail>>,
    /// Where an append is made durable (`raft::wal`); the database takes it without an fsync.
    wal: Arc<std::sync::Mutex<Wal>>,
    growth: Arc<Growth>,
    /// How far the log is on disk: the leader's own appends run ahead of it (`raft::durable`).
    durable: Arc<Durable>,
    /// This manager's id, and the vote it last saved: whether an append is its own as leader.
    own_id: Arc<std::sync::OnceLock<NodeId>>,
    vote: Arc<std::sync::Mutex<Option<Vote<NodeId>>>>,
    /// The committed id openraft gave last, and the one saved (clamped to `durable`).
    commit: Arc<std::sync::Mutex<Committed>>,
}

type Committed = (Option<LogId<NodeId>>, Option<LogId<NodeId>>);

/// How many of the newest log entries are kept decoded in memory.
pub const TAIL_ENTRIES: usize = 1024;

/// The newest log entries, with contiguous indices, as appended. Replication to each
/// follower and the state machine read back what was just appended; decoding it again from
/// the database each time cost more than writing it (profiled in the simulator).
#[derive(Debug, Default)]
struct Tail {
    entries: std::collections::VecDeque<Entry<TypeConfig>>,
}

impl Tail {
    fn first(&self) -> Option<u64> {
        self.entries.front().map(|e| e.log_id.index)
    }

    /// Keeps entries appended after a successful commit.
    fn push(&mut self, e: Entry<TypeConfig>) {
        let next = self.entries.back().map(|l| l.log_id.index + 1);
        if next != Some(e.log_id.index) {
            // Not the next index (a first entry, or after a gap or an overwrite): keep only
            // what stays contiguous below it.
            self.truncate(e.log_id.index);
            if self.entries.back().map(|l| l.log_id.index + 1) != Some(e.log_id.index) {
                self.entries.clear();
            }
        }
        self.entries.push_back(e);
        while self.entries.len() > TAIL_ENTRIES {
            self.entries.pop_front();
        }
    }

    /// Drops entries at `index` and after.
    fn truncate(&mut self, index: u64) {
        while self.entries.back().is_some_and(|l| l.log_id.index >= index) {
            self.entries.pop_back();
        }
    }

    /// Drops entries at `index` and before.
    fn purge(&mut self, index: u64) {
        while self.entries.front().is_some_and(|f| f.log_id.index <= index) {
            self.entries.pop_front();
        }
    }

    /// The entries `start..end` when all of them are held.
    fn get(&self, start: u64, end: u64) -> Option<Vec<Entry<TypeConfig>>> {
        let first = self.first()?;
        let last = self.entries.back()?.log_id.index;
        if start < first || end > last + 1 || start > end {
            return None;
        }
        let from = (start - first) as usize;
        let to = (end - first) as usize;
        Some(self.entries.range(from..to).cloned().collect())
    }
}

/// `range` as `start..end` (end exclusive).
fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    use std::ops::Bound::*;
    let start = match range.start_bound() {
        Included(s) => *s,
        Excluded(s) => s.saturating_add(1),
        Unbounded => 0,
    };
    let end = match range.end_bound() {
        Included(e) => e.saturating_add(1),
        Excluded(e) => *e,
        Unbounded => u64::MAX,
    };
    (start, end)
}

#[derive(Clone, Debug)]
pub struct StateMachineStore {
    db: Arc<Database>,
    path: Arc<str>,
    data: SharedState,
    growth: Arc<Growth>,
    /// Entries are applied only once durable on this manager (`raft::durable`).
    durable: Arc<Durable>,
    /// The log store's committed id, which a snapshot's durable commit carries too.
    commit: Arc<std::sync::Mutex<Committed>>,
}

/// Opens the database at `path` (creating it when absent) and loads the last snapshot.
pub fn open(path: &Path) -> Result<(LogStore, StateMachineStore), OpenError> {
    let shown = path.display().to_string();
    let wal_path = path.with_extension("wal");
    // A write-ahead file with records but no database: it belongs to a database that is
    // gone. Refused before a new, empty database is made beside it.
    // (The file is kept longer than its records, as zeros: any other byte is a record. One
    // that cannot be read is refused too: it may hold some.)
    if !super::disk::exists(path) {
        let holds = match super::disk::read_durable(&wal_path) {
            Ok(None) => None,
            Ok(Some(b)) => b.iter().any(|x| *x != 0).then(|| "it holds records".to_string()),
            Err(e) => Some(format!("it cannot be read ({e})")),
        };
        if let Some(what) = holds {
            return Err(OpenError::Wal {
                path: wal_path.display().to_string(),
                reason: format!("{what} but there is no database {shown} beside it"),
            });
        }
    }
    let db = crate::failstop::catch(|| super::disk::open_database(path))
        .map_err(|p| OpenError::Corrupt {
            path: shown.clone(),
            reason: format!("the database engine failed opening it ({p})"),
        })?
        .map_err(|e| OpenError::Database {
            path: shown.clone(),
            source: e.into(),
        })?;
    let db = Arc::new(db);
    let init = || -> Result<(), redb::Error> {
        let tx = db.begin_write()?;
        tx.open_table(LOGS)?;
        tx.open_table(META)?;
        tx.open_table(SNAPSHOT)?;
        tx.commit()?;
        Ok(())
    };
    init().map_err(|e| OpenError::Database {
        path: shown.clone(),
        source: e,
    })?;
    let corrupt_at = |reason: String| OpenError::Corrupt {
        path: shown.clone(),
        reason,
    };
    let wal = replay_wal(&db, &wal_path)?;
    // redb itself may panic on a damaged page ("entered unreachable code"): report it as
    // corruption of this file instead.
    crate::failstop::catch(|| verify(&db, &shown))
        .map_err(|p| corrupt_at(format!("the database engine failed reading it ({p})")))?
        .map_err(|e| match e {
            Unreadable::Corrupt(reason) => corrupt_at(reason),
            Unreadable::OtherFormat(found) => OpenError::OtherFormat {
                path: shown.clone(),
                found,
                reads: codec::SEALED_FORMAT,
            },
        })?;
    let growth = Arc::new(Growth::default());
    let data = match read_snapshot(&db, &shown).map_err(|e| corrupt_at(e.to_string()))? {
        Some((meta, bytes)) => {
            growth.snapshot_saved(bytes.len() as u64);
            let mut d: StateMachineData = codec::unseal(&bytes)
                .map_err(|e| corrupt_at(format!("snapshot {}: {e}", meta.snapshot_id)))?;
            d.last_applied = meta.last_log_id;
            d.membership = meta.last_membership;
            d
        }
        None => StateMachineData::default(),
    };
    // The write-ahead file was replayed and synced: all of the log is on disk.
    let last = stored_last_log_id(&db, &shown).map_err(|e| corrupt_at(e.to_string()))?;
    let path: Arc<str> = shown.into();
    let durable = Arc::new(Durable::new(last));
    let commit: Arc<std::sync::Mutex<Committed>> = Default::default();
    Ok((
        LogStore {
            db: db.clone(),
            path: path.clone(),
            committed_high: Default::default(),
            tail: Default::default(),
            wal: Arc::new(std::sync::Mutex::new(wal)),
            growth: growth.clone(),
            durable: durable.clone(),
            own_id: Default::default(),
            vote: Default::default(),
            commit: commit.clone(),
        },
        StateMachineStore {
            db,
            path,
            data: Arc::new(RwLock::new(data)),
            growth,
            durable,
            commit,
        },
    ))
}

/// The id of the last entry of the stored log, or of the last purged one when it is empty.
fn stored_last_log_id(db: &Database, path: &str) -> Result<Option<LogId<NodeId>>, AnyError> {
    let tx = db.begin_read().map_err(any)?;
    if let Some((k, v)) = tx.open_table(LOGS).map_err(any)?.last().map_err(any)? {
        let e: Entry<TypeConfig> = codec::unseal(v.value())
            .map_err(|e| corrupt(path, format_args!("log entry {}", k.value()), e))?;
        return Ok(Some(e.log_id));
    }
    match tx.open_table(META).map_err(any)?.get(KEY_PURGED).map_err(any)? {
        Some(v) => Ok(Some(codec::unseal(v.value()).map_err(|e| {
            corrupt(path, format_args!("Raft metadata {KEY_PURGED:?}"), e)
        })?)),
        None => Ok(None),
    }
}

/// Opens the write-ahead file at `wal_path` and replays its records into the database, in
/// order, in one durable commit; then empties it.
fn replay_wal(db: &Database, wal_path: &Path) -> Result<Wal, OpenError> {
    let shown = wal_path.display().to_string();
    let refuse = |reason: String| OpenError::Wal {
        path: shown.clone(),
        reason,
    };
    let file = super::disk::open_wal(wal_path).map_err(|e| refuse(e.to_string()))?;
    let (mut wal, records) = Wal::open(file).map_err(|e| refuse(e.to_string()))?;
    if records.is_empty() {
        return Ok(wal);
    }
    let replay = || -> Result<(), redb::Error> {
        let tx = db.begin_write()?;
        {
            // Unreadable: left to `verify`, which names it; nothing is skipped meanwhile.
            let purged: Option<LogId<NodeId>> = tx
                .open_table(META)?
                .get(KEY_PURGED)?
                .and_then(|v| codec::unseal(v.value()).ok());
            let above = purged.map_or(0, |p| p.index + 1);
            let mut logs = tx.open_table(LOGS)?;
            for r in &records {
                match r {
                    Record::Append(entries) => {
                        for (index, sealed) in entries.iter().filter(|(i, _)| *i >= above) {
                            logs.insert(*index, sealed.as_slice())?;
                        }
                    }
                    Record::Truncate(from) => {
                        logs.retain_in(*from.., |_, _| false)?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    };
    replay().map_err(|e| refuse(format!("replaying it into the database: {e}")))?;
    wal.reset().map_err(|e| refuse(e.to_string()))?;
    Ok(wal)
}

/// Reads every stored value once and checks its checksum and encoding, so a damaged
/// database is refused at start with the place named, not found later as a wrong answer.
fn verify(db: &Database, path: &str) -> Result<(), Unreadable> {
    let tx = db.begin_read().map_err(|e| e.to_string())?;
    let logs = tx.open_table(LOGS).map_err(|e| e.to_string())?;
    let mut count = 0u64;
    for row in logs.iter().map_err(|e| e.to_string())? {
        let (k, v) = row.map_err(|e| format!("reading the log: {e}"))?;
        let entry: Entry<TypeConfig> =
            codec::unseal(v.value()).map_err(|e| unreadable(format_args!("log entry {}", k.value()), e))?;
        if entry.log_id.index != k.value() {
            return Err(format!(
                "log entry {} holds the entry of index {}",
                k.value(),
                entry.log_id.index
            )
            .into());
        }
        count += 1;
    }
    let meta = tx.open_table(META).map_err(|e| e.to_string())?;
    for row in meta.iter().map_err(|e| e.to_string())? {
        let (k, v) = row.map_err(|e| format!("reading Raft metadata: {e}"))?;
        let key = k.value();
        let checked = match key {
            KEY_VOTE => codec::unseal::<Vote<NodeId>>(v.value()).map(drop),
            KEY_COMMITTED => codec::unseal::<Option<LogId<NodeId>>>(v.value()).map(drop),
            KEY_PURGED => codec::unseal::<LogId<NodeId>>(v.value()).map(drop),
            _ => codec::unseal_bytes(v.value()).map(drop),
        };
        checked.map_err(|e| unreadable(format_args!("Raft metadata {key:?}"), e))?;
    }
    drop(meta);
    if let Some((meta, data)) = read_snapshot(db, path).map_err(|e| e.to_string())? {
        codec::unseal_bytes(&data)
            .map_err(|e| unreadable(format_args!("snapshot {}", meta.snapshot_id), e))?;
    }
    tracing::debug!(path, entries = count, "database verified");
    Ok(())
}

type SnapshotRecord = (SnapshotMeta<NodeId, ManagerNode>, Vec<u8>);

fn read_snapshot(db: &Database, path: &str) -> Result<Option<SnapshotRecord>, AnyError> {
    let tx = db.begin_read().map_err(any)?;
    let t = tx.open_table(SNAPSHOT).map_err(any)?;
    let (Some(meta), Some(data)) = (
        t.get(KEY_SNAPSHOT_META).map_err(any)?,
        t.get(KEY_SNAPSHOT_DATA).map_err(any)?,
    ) else {
        return Ok(None);
    };
    let meta = codec::unseal(meta.value()).map_err(|e| corrupt(path, "the snapshot's metadata", e))?;
    Ok(Some((meta, data.value().to_vec())))
}

impl LogStore {
    fn meta_get<T: for<'a> Deserialize<'a>>(&self, key: &str) -> Result<Option<T>, AnyError> {
        let tx = self.db.begin_read().map_err(any)?;
        let t = tx.open_table(META).map_err(any)?;
        match t.get(key).map_err(any)? {
            Some(v) => Ok(Some(codec::unseal(v.value()).map_err(|e| {
                corrupt(&self.path, format_args!("Raft metadata {key:?}"), e)
            })?)),
            None => Ok(None),
        }
    }

    fn meta_put<T: Serialize>(&self, key: &str, value: &T) -> Result<(), AnyError> {
        let tx = self.db.begin_write().map_err(any)?;
        tx.open_table(META)
            .map_err(any)?
            .insert(key, enc(value).as_slice())
            .map_err(any)?;
        commit_carrying(tx, &self.commit, &self.durable)
    }

    /// True when nothing Raft keeps was ever written: no vote, no log, no snapshot (a
    /// database only a start that crashed before recording its identity could leave).
    pub fn is_fresh(&self) -> Result<bool, AnyError> {
        let tx = self.db.begin_read().map_err(any)?;
        let empty_logs = tx.open_table(LOGS).map_err(any)?.is_empty().map_err(any)?;
        let meta = tx.open_table(META).map_err(any)?;
        let empty_snapshot = tx.open_table(SNAPSHOT).map_err(any)?.is_empty().map_err(any)?;
        Ok(empty_logs && empty_snapshot && meta.get(KEY_VOTE).map_err(any)?.is_none())
    }

    /// The highest committed index seen, shared with the task that records it on disk.
    pub fn committed_high(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.committed_high.clone()
    }

    /// The last log index this store holds (in its log or covered by its snapshot).
    pub fn last_index(&self) -> Result<u64, AnyError> {
        let tx = self.db.begin_read().map_err(any)?;
        let last_log = tx
            .open_table(LOGS)
            .map_err(any)?
            .last()
            .map_err(any)?
            .map(|(k, _)| k.value())
            .unwrap_or(0);
        let purged = self.meta_get::<LogId<NodeId>>(KEY_PURGED)?.map_or(0, |l| l.index);
        // The snapshot's metadata only: its data can be the whole state.
        let snapshot = {
            let t = tx.open_table(SNAPSHOT).map_err(any)?;
            match t.get(KEY_SNAPSHOT_META).map_err(any)? {
                Some(v) => codec::unseal::<SnapshotMeta<NodeId, ManagerNode>>(v.value())
                    .map_err(|e| corrupt(&self.path, "the snapshot's metadata", e))?
                    .last_log_id
                    .map_or(0, |l| l.index),
                None => 0,
            }
        };
        Ok(last_log.max(purged).max(snapshot))
    }

    /// Reads a value the daemon keeps beside the log (its identity).
    pub fn read_identity<T: for<'a> Deserialize<'a>>(&self) -> Result<Option<T>, AnyError> {
        self.meta_get(KEY_IDENTITY)
    }

    pub fn write_identity<T: Serialize>(&self, value: &T) -> Result<(), AnyError> {
        self.meta_put(KEY_IDENTITY, value)
    }
}

/// The format a snapshot is sealed as: 0xA5 once batches have moved the request keys past the
/// log index (an 0xA4 build, keying by index, would collide with them).
fn snapshot_format(d: &StateMachineData) -> u8 {
    let applied = d.last_applied.map_or(0, |l| l.index);
    match d.state.request_order.get_max() {
        Some((k, _)) if *k > applied => codec::SEALED_FORMAT,
        _ => codec::BASE_FORMAT,
    }
}

/// Under the simulation suite, the time an fsync takes (the write itself stays synchronous, so
/// the delay is taken before it, where there is an await point).
async fn simulated_fsync_latency() {
    #[cfg(feature = "sim")]
    if let Some(d) = crate::sim_hooks::fsync_delay() {
        tokio::time::sleep(d).await;
    }
}

impl LogStore {
    /// How much log was appended since the last snapshot (`Growth`).
    pub fn growth(&self) -> Arc<Growth> {
        self.growth.clone()
    }

    /// At a planned stop, once the Raft core has ended: what the write-ahead file holds is
    /// made durable in the database and the file emptied, so a stopped data dir keeps its
    /// log in one place.
    pub fn checkpoint(&self) -> Result<(), AnyError> {
        let mut wal = self.wal.lock().expect("wal lock");
        if !wal.is_empty() {
            commit_and_reset(&self.db, &mut wal, &self.durable, &self.commit)?;
        }
        drop(wal);
        // The committed id as it stands now: the commit above may have made more durable.
        self.record_committed(None);
        commit_carrying(self.db.begin_write().map_err(any)?, &self.commit, &self.durable)
    }

    /// How far the log is on disk (`raft::durable`), for the Raft network's commit clamp.
    pub fn durable(&self) -> Arc<Durable> {
        self.durable.clone()
    }

    /// Names the manager this store belongs to, before Raft starts on it: its appends as
    /// leader are the ones pipelined (`raft::durable`).
    pub fn set_own_id(&self, id: NodeId) {
        let _ = self.own_id.set(id);
    }

    /// True when the vote last saved makes this manager the leader: openraft saves a new
    /// leader's vote before any append under it, on the leader and on its followers.
    fn leads(&self) -> bool {
        let vote = self.vote.lock().expect("vote lock");
        vote.as_ref().is_some_and(|v| self.own_leader_vote(v))
    }

    /// `vote` is this manager's own as a leader (committed, for itself).
    fn own_leader_vote(&self, vote: &Vote<NodeId>) -> bool {
        vote.committed
            && self
                .own_id
                .get()
                .is_some_and(|me| vote.leader_id.voted_for == Some(*me))
    }

    /// A leader's append: written now and reported flushed; one sync runs behind it (and
    /// behind the appends written while it runs) while openraft replicates.
    fn sync_behind(&self) {
        let Some(mut target) = self.durable.start_sync() else {
            return;
        };
        let (db, wal, durable, store) = (
            self.db.clone(),
            self.wal.clone(),
            self.durable.clone(),
            self.clone(),
        );
        tokio::spawn(async move {
            loop {
                simulated_fsync_latency().await;
                let (db, wal, durable_now, commit) =
                    (db.clone(), wal.clone(), durable.clone(), store.commit.clone());
                let res = off_async(move || {
                    let started = std::time::Instant::now();
                    let mut locked = wal.lock().expect("wal lock");
                    let res = if locked.len() >= super::wal::RESET_BYTES {
                        commit_and_reset(&db, &mut locked, &durable_now, &commit)
                            .map_err(std::io::Error::other)
                    } else {
                        // Synced without the lock: appends go on writing meanwhile.
                        let file = locked.file();
                        drop(locked);
                        file.sync_data()
                    };
                    crate::metrics::get()
                        .fsync_seconds
                        .observe(started.elapsed().as_secs_f64());
                    res
                })
                .await;
                let res = match res {
                    Err(_) if crate::bugs::on(crate::bugs::Bug::IgnoreFsyncError) => Ok(()),
                    Err(e) => {
                        tracing::error!(error = %e, "fdatasync of the write-ahead file failed; this manager stops its Raft core");
                        Err(format!("fdatasync of the write-ahead file failed: {e}"))
                    }
                    Ok(()) => Ok(()),
                };
                let next = durable.synced(target, res);
                store.record_committed(None);
                match next {
                    Some(next) => target = next,
                    None => break,
                }
            }
        });
    }

    /// Takes the committed id openraft gave last (`wanted`, when it gives a new one); the
    /// sync behind the leader's appends calls it again as what is durable moves. It is
    /// written to the database, clamped to what is durable here, by the next transaction
    /// that runs anyway (`commit_carrying`: an append's, a vote's, a durable commit's), so that a
    /// restart re-applies all that was committed before it.
    fn record_committed(&self, wanted: Option<Option<LogId<NodeId>>>) {
        let mut commit = self.commit.lock().expect("commit lock");
        if let Some(w) = wanted {
            commit.0 = w;
        }
        if let Some(c) = self.durable.clamp(commit.0) {
            self.committed_high
                .fetch_max(c.index, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// An error once a sync behind the leader's appends has failed.
    fn check_synced(&self) -> Result<(), AnyError> {
        match self.durable.failed() {
            Some(e) => Err(AnyError::error(e)),
            None => Ok(()),
        }
    }
}

/// Commits `tx` with the committed id openraft gave last written into it, clamped to what is
/// durable here, when it moved since the last one written. Every transaction of the log store
/// (an append's, a vote's, a durable commit's) and a snapshot's commits through here, so the
/// id needs no transaction of its own: one per commit index cost about 0.05 ms in the path of
/// every write (on the leader, openraft saves the id before it applies), and a durable commit
/// always carries the newest. Losing the newest in a crash only means re-learning it from the
/// leader (openraft allows that).
fn commit_carrying(
    tx: redb::WriteTransaction,
    commit: &std::sync::Mutex<Committed>,
    durable: &Durable,
) -> Result<(), AnyError> {
    // redb runs one write transaction at a time: no other can write the id between here
    // and the commit.
    let moved = {
        let c = commit.lock().expect("commit lock");
        let committed = durable.clamp(c.0);
        (committed != c.1).then_some(committed)
    };
    if let Some(committed) = &moved {
        tx.open_table(META)
            .map_err(any)?
            .insert(KEY_COMMITTED, enc(committed).as_slice())
            .map_err(any)?;
    }
    tx.commit().map_err(any)?;
    if let Some(committed) = moved {
        // Only once committed: a failed commit leaves it to the next transaction.
        commit.lock().expect("commit lock").1 = committed;
    }
    Ok(())
}

/// Commits the database durably (a transaction with redb's default durability makes the
/// earlier ones durable; it takes the committed id too) and empties the write-ahead file: all
/// of the log is on disk.
fn commit_and_reset(
    db: &Database,
    wal: &mut Wal,
    durable: &Durable,
    commit: &std::sync::Mutex<Committed>,
) -> Result<(), AnyError> {
    commit_carrying(db.begin_write().map_err(any)?, commit, durable)?;
    wal.reset().map_err(|e| AnyError::new(&e))?;
    durable.all_synced();
    Ok(())
}

/// Puts `record` (already in the database, not durably) in the write-ahead file, synced
/// unless `behind` (a leader's append, made durable by `sync_behind`); `last`: the last entry
/// it appends. Past `wal::RESET_BYTES`, commits the database durably and empties the file.
fn log_durably(
    db: &Database,
    wal: &std::sync::Mutex<Wal>,
    (durable, commit): (&Durable, &std::sync::Mutex<Committed>),
    (record, last): (&Record, Option<LogId<NodeId>>),
    behind: bool,
) -> Result<(), AnyError> {
    let mut wal = wal.lock().expect("wal lock");
    if behind {
        wal.write(record).map_err(|e| AnyError::new(&e))?;
    } else {
        wal.append(record).map_err(|e| AnyError::new(&e))?;
    }
    // Only once in the file: a sync that starts from here on covers it.
    if let Some(last) = last {
        durable.wrote(last);
    }
    if behind {
        return Ok(());
    }
    if wal.len() >= super::wal::RESET_BYTES {
        commit_and_reset(db, &mut wal, durable, commit)
    } else {
        durable.all_synced();
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        let (start, end) = bounds(&range);
        if let Some(hit) = self.tail.lock().expect("log tail lock").get(start, end) {
            return Ok(hit);
        }
        let read = || -> Result<Vec<Entry<TypeConfig>>, AnyError> {
            let tx = self.db.begin_read().map_err(any)?;
            let t = tx.open_table(LOGS).map_err(any)?;
            let mut out = Vec::new();
            for row in t.range(range).map_err(any)? {
                let (k, v) = row.map_err(any)?;
                out.push(
                    codec::unseal(v.value())
                        .map_err(|e| corrupt(&self.path, format_args!("log entry {}", k.value()), e))?,
                );
            }
            Ok(out)
        };
        read().map_err(|e| StorageIOError::read_logs(e).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let read = || -> Result<LogState<TypeConfig>, AnyError> {
            Ok(LogState {
                last_purged_log_id: self.meta_get(KEY_PURGED)?,
                last_log_id: stored_last_log_id(&self.db, &self.path)?,
            })
        };
        read().map_err(|e| StorageIOError::read_logs(e).into())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SErr> {
        // A committed vote names the leader of its term: the leader saves it on winning, its
        // followers when they hear from it. The simulation's election-safety checker
        // watches for two different leaders of one term.
        #[cfg(feature = "sim")]
        if let (true, Some(leader)) = (vote.committed, vote.leader_id.voted_for) {
            crate::sim_hooks::report_leader(leader, vote.leader_id.term);
        }
        simulated_fsync_latency().await;
        self.meta_put(KEY_VOTE, vote)
            .map_err(StorageIOError::<NodeId>::write_vote)?;
        *self.vote.lock().expect("vote lock") = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SErr> {
        if crate::bugs::on(crate::bugs::Bug::ForgetVoteOnRestart) {
            return Ok(None);
        }
        let mut vote: Option<Vote<NodeId>> = self
            .meta_get(KEY_VOTE)
            .map_err(StorageIOError::<NodeId>::read_vote)?;
        // openraft resumes a leader's own term at once when it restarts with its committed
        // vote. This leader may have sent followers entries that never reached its own disk
        // (`raft::durable`): leading that term again, it would write other entries under the
        // same ids. Read back as not committed, the vote makes it win a new term first.
        if let Some(v) = vote.as_mut().filter(|v| self.own_leader_vote(v)) {
            v.committed = false;
        }
        *self.vote.lock().expect("vote lock") = vote;
        Ok(vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SErr> {
        // The leader may count itself before its own sync is done: what is saved (and
        // marked as committed on disk) stays within what this manager holds durably.
        self.check_synced().map_err(StorageIOError::write)?;
        self.record_committed(Some(committed));
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SErr> {
        self.meta_get::<Option<LogId<NodeId>>>(KEY_COMMITTED)
            .map(Option::flatten)
            .map_err(|e| StorageIOError::read(e).into())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // The whole batch: one write and one fdatasync of the write-ahead file, and one
        // database transaction without an fsync (`raft::wal`); only then report it flushed.
        // The leader's own appends (not a membership change) are reported flushed once
        // written, and synced behind (`raft::durable`).
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let behind = self.leads()
            && !entries
                .iter()
                .any(|e| matches!(e.payload, EntryPayload::Membership(_)));
        if !behind {
            simulated_fsync_latency().await;
        }
        let last = entries.last().map(|e| e.log_id);
        let (db, wal, growth, durable, commit) = (
            self.db.clone(),
            self.wal.clone(),
            self.growth.clone(),
            self.durable.clone(),
            self.commit.clone(),
        );
        let failed = self.check_synced();
        let append = move || {
            let started = std::time::Instant::now();
            let sealed: Vec<(u64, Vec<u8>)> = entries
                .iter()
                .map(|e| (e.log_id.index, codec::seal_as(super::entry_format(e), e)))
                .collect();
            let insert = || -> Result<(), AnyError> {
                let mut tx = db.begin_write().map_err(any)?;
                tx.set_durability(redb::Durability::None).map_err(any)?;
                {
                    let mut t = tx.open_table(LOGS).map_err(any)?;
                    for (index, bytes) in &sealed {
                        t.insert(*index, bytes.as_slice()).map_err(any)?;
                    }
                }
                commit_carrying(tx, &commit, &durable)
            };
            growth.appended(sealed.iter().map(|(_, b)| b.len() as u64).sum());
            let res = failed.and_then(|()| insert()).and_then(|()| {
                log_durably(
                    &db,
                    &wal,
                    (&durable, &commit),
                    (&Record::Append(sealed), last),
                    behind,
                )
            });
            let m = crate::metrics::get();
            let took = if behind {
                &m.leader_append_seconds
            } else {
                &m.fsync_seconds
            };
            took.observe(started.elapsed().as_secs_f64());
            (res, entries)
        };
        // Without its fdatasync an append is a short write and an in-memory transaction:
        // cheaper in place than the hop to the blocking pool and back (measured: 0.4 ms).
        let (res, entries) = if behind { append() } else { off_async(append).await };
        let mut res = res.map_err(std::io::Error::other);
        if crate::bugs::on(crate::bugs::Bug::IgnoreFsyncError) {
            res = Ok(());
        }
        if res.is_ok() {
            let mut tail = self.tail.lock().expect("log tail lock");
            for e in entries {
                tail.push(e);
            }
        }
        let failed = res.as_ref().err().map(|e| format!("append failed: {e}"));
        callback.log_io_completed(res);
        if behind && failed.is_none() {
            self.sync_behind();
        }
        match failed {
            Some(why) => Err(StorageIOError::write_logs(AnyError::error(why)).into()),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        self.tail.lock().expect("log tail lock").truncate(log_id.index);
        let write = || -> Result<(), AnyError> {
            let mut tx = self.db.begin_write().map_err(any)?;
            tx.set_durability(redb::Durability::None).map_err(any)?;
            tx.open_table(LOGS)
                .map_err(any)?
                .retain_in(log_id.index.., |_, _| false)
                .map_err(any)?;
            commit_carrying(tx, &self.commit, &self.durable)?;
            log_durably(
                &self.db,
                &self.wal,
                (&self.durable, &self.commit),
                (&Record::Truncate(log_id.index), None),
                false,
            )?;
            self.durable.cut_to(stored_last_log_id(&self.db, &self.path)?);
            Ok(())
        };
        write().map_err(|e| StorageIOError::write_logs(e).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        self.tail.lock().expect("log tail lock").purge(log_id.index);
        let write = || -> Result<(), AnyError> {
            let tx = self.db.begin_write().map_err(any)?;
            tx.open_table(META)
                .map_err(any)?
                .insert(KEY_PURGED, enc(&log_id).as_slice())
                .map_err(any)?;
            tx.open_table(LOGS)
                .map_err(any)?
                .retain_in(..=log_id.index, |_, _| false)
                .map_err(any)?;
            // Durable: it makes every earlier append durable in the database too.
            commit_carrying(tx, &self.commit, &self.durable)?;
            self.wal
                .lock()
                .expect("wal lock")
                .reset()
                .map_err(|e| AnyError::new(&e))?;
            self.durable.all_synced();
            Ok(())
        };
        write().map_err(|e| StorageIOError::write_logs(e).into())
    }
}

impl StateMachineStore {
    /// The state the manager serves reads from.
    pub fn shared(&self) -> SharedState {
        self.data.clone()
    }

    fn save_snapshot(&self, meta: &SnapshotMeta<NodeId, ManagerNode>, data: &[u8]) -> Result<(), AnyError> {
        let tx = self.db.begin_write().map_err(any)?;
        {
            let mut t = tx.open_table(SNAPSHOT).map_err(any)?;
            t.insert(KEY_SNAPSHOT_META, enc(meta).as_slice()).map_err(any)?;
            t.insert(KEY_SNAPSHOT_DATA, data).map_err(any)?; // sealed by the builder
        }
        commit_carrying(tx, &self.commit, &self.durable)?;
        self.growth.snapshot_saved(data.len() as u64);
        Ok(())
    }
}

/// `--force-new-cluster` (see `manager::recovery`): reading the whole log into the state,
/// and making that state all this store holds.
impl StateMachineStore {
    /// The state as of the last entry of the log, committed or not: the snapshot with every
    /// entry after it applied. (An entry a lost majority had committed may be known here only
    /// as appended; keeping every entry keeps every acknowledged write.)
    pub fn state_with_whole_log(&self) -> Result<StateMachineData, AnyError> {
        let mut d = self.data.read().unwrap().clone();
        let from = d.last_applied.map_or(0, |l| l.index + 1);
        let tx = self.db.begin_read().map_err(any)?;
        let logs = tx.open_table(LOGS).map_err(any)?;
        for row in logs.range(from..).map_err(any)? {
            let (k, v) = row.map_err(any)?;
            let entry: Entry<TypeConfig> = codec::unseal(v.value())
                .map_err(|e| corrupt(&self.path, format_args!("log entry {}", k.value()), e))?;
            // A refused command changes nothing, here as on every manager.
            drop(d.apply_entry(entry));
        }
        Ok(d)
    }

    /// Makes `data` everything this store holds, in one transaction: saved as the snapshot,
    /// the log emptied (purged up to it) and committed up to it.
    pub fn replace_all(&self, data: StateMachineData) -> Result<(), AnyError> {
        let Some(last) = data.last_applied else {
            return Err(AnyError::error("there is no state to keep"));
        };
        let meta = SnapshotMeta {
            last_log_id: Some(last),
            last_membership: data.membership.clone(),
            snapshot_id: format!("forced-{}-{}", last.leader_id, last.index),
        };
        let bytes = codec::seal_as(snapshot_format(&data), &data);
        let tx = self.db.begin_write().map_err(any)?;
        {
            let mut t = tx.open_table(SNAPSHOT).map_err(any)?;
            t.insert(KEY_SNAPSHOT_META, enc(&meta).as_slice()).map_err(any)?;
            t.insert(KEY_SNAPSHOT_DATA, bytes.as_slice()).map_err(any)?;
            let mut logs = tx.open_table(LOGS).map_err(any)?;
            logs.retain(|_, _| false).map_err(any)?;
            let mut m = tx.open_table(META).map_err(any)?;
            m.insert(KEY_PURGED, enc(&last).as_slice()).map_err(any)?;
            m.insert(KEY_COMMITTED, enc(&Some(last)).as_slice())
                .map_err(any)?;
        }
        tx.commit().map_err(any)?;
        *self.data.write().unwrap() = data;
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let d = view(&self.data);
        let snapshot_id = match d.last_applied {
            Some(l) => format!("{}-{}", l.leader_id, l.index),
            None => "empty".to_string(),
        };
        let meta = SnapshotMeta {
            last_log_id: d.last_applied,
            last_membership: d.membership.clone(),
            snapshot_id,
        };
        // Sealing tens of MB and writing them out takes long: off the async workers, which
        // keep the Raft heartbeats going meanwhile.
        let (store, saved) = (self.clone(), meta.clone());
        let started = std::time::Instant::now();
        let bytes = off_async(move || {
            let bytes = codec::seal_as(snapshot_format(&d), &d);
            store.save_snapshot(&saved, &bytes).map(|()| bytes)
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), e))?;
        let seconds = started.elapsed().as_secs_f64();
        crate::metrics::get().snapshot_build_seconds.observe(seconds);
        tracing::info!(
            snapshot = %meta.snapshot_id,
            bytes = bytes.len(),
            ms = (seconds * 1e3) as u64,
            "snapshot built and saved"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, ManagerNode>), SErr> {
        let d = self.data.read().unwrap();
        Ok((d.last_applied, d.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<WriteResult>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        if let Some(last) = entries.last() {
            self.durable
                .reached(last.log_id.index)
                .await
                .map_err(|e| StorageIOError::apply(last.log_id, AnyError::error(e)))?;
        }
        let mut d = self.data.write().unwrap();
        let mut out = Vec::new();
        for entry in entries {
            out.push(WriteResult(d.apply_entry(entry)));
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, ManagerNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let bytes = snapshot.into_inner();
        // The snapshot travels sealed: a leader's bytes damaged on the way are refused.
        // Unsealing and saving tens of MB: off the async workers.
        let (store, saved) = (self.clone(), meta.clone());
        let new = off_async(move || -> Result<StateMachineData, Box<SErr>> {
            let mut new: StateMachineData = codec::unseal(&bytes).map_err(|e| {
                Box::new(
                    StorageIOError::read_snapshot(
                        Some(saved.signature()),
                        AnyError::error(format!("snapshot {} received: {e}", saved.snapshot_id)),
                    )
                    .into(),
                )
            })?;
            new.last_applied = saved.last_log_id;
            new.membership = saved.last_membership.clone();
            store
                .save_snapshot(&saved, &bytes)
                .map_err(|e| Box::new(StorageIOError::write_snapshot(Some(saved.signature()), e).into()))?;
            Ok(new)
        })
        .await
        .map_err(|e| *e)?;
        *self.data.write().unwrap() = new;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        let snap = read_snapshot(&self.db, &self.path).map_err(|e| StorageIOError::read_snapshot(None, e))?;
        Ok(snap.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;
    use openraft::testing::{StoreBuilder, Suite};

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), SErr> {
            let dir = tempfile::tempdir().unwrap();
            let (log, sm) = open(&dir.path().join("warren.redb")).unwrap();
            Ok((dir, log, sm))
        }
    }

    /// openraft's own conformance suite for storage implementations.
    #[test]
    fn openraft_storage_suite() {
        Suite::test_all(Builder).unwrap();
    }

    #[tokio::test]
    async fn log_vote_and_snapshot_survive_reopen() {
        use openraft::{CommittedLeaderId, Membership};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warren.redb");
        let lid = |i| LogId::new(CommittedLeaderId::new(1, 1), i);
        {
            let (mut log, mut sm) = open(&path).unwrap();
            log.save_vote(&Vote::new(3, 1)).await.unwrap();
            let mut members = std::collections::BTreeMap::new();
            members.insert(1, ManagerNode::default());
            let entries = vec![
                Entry {
                    log_id: lid(1),
                    payload: EntryPayload::Membership(Membership::new(vec![[1].into()], members)),
                },
                Entry {
                    log_id: lid(2),
                    payload: EntryPayload::Normal(crate::core::Command::InitCluster {
                        cluster_id: "c".into(),
                        now_ms: 0,
                    }),
                },
            ];
            sm.apply(entries.clone()).await.unwrap();
            openraft::storage::RaftLogStorageExt::blocking_append(&mut log, entries)
                .await
                .unwrap();
            sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        }
        let (mut log, mut sm) = open(&path).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
        assert_eq!(log.get_log_state().await.unwrap().last_log_id, Some(lid(2)));
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(lid(2)));
        assert_eq!(sm.shared().read().unwrap().state.cluster_id, "c");
    }

    /// The committed id rides on the transactions that run anyway: a vote's durable commit
    /// carries it, and so does a planned stop's; both survive a reopen.
    #[tokio::test]
    async fn the_committed_id_is_carried_by_a_vote_and_by_a_planned_stop() {
        use openraft::storage::RaftLogStorageExt;
        use openraft::CommittedLeaderId;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warren.redb");
        let lid = |i| LogId::new(CommittedLeaderId::new(1, 2), i);
        let blank = |i| Entry::<TypeConfig> {
            log_id: lid(i),
            payload: EntryPayload::Blank,
        };
        {
            let (mut log, _sm) = open(&path).unwrap();
            log.set_own_id(1);
            log.save_vote(&Vote::new_committed(1, 2)).await.unwrap();
            log.blocking_append((1..=4).map(blank)).await.unwrap();
            log.save_committed(Some(lid(2))).await.unwrap();
            log.save_vote(&Vote::new_committed(1, 2)).await.unwrap();
            assert_eq!(
                log.read_committed().await.unwrap(),
                Some(lid(2)),
                "the vote carried it"
            );
            log.save_committed(Some(lid(4))).await.unwrap();
            log.checkpoint().unwrap();
        }
        let (mut log, _sm) = open(&path).unwrap();
        assert_eq!(
            log.read_committed().await.unwrap(),
            Some(lid(4)),
            "the stop carried it"
        );
    }

    /// A follower's appends are durable when reported; a leader's are reported once written
    /// and synced behind, and neither saved as committed nor applied before that.
    #[tokio::test]
    async fn a_leaders_appends_are_synced_behind_it_and_applied_only_once_durable() {
        use openraft::storage::RaftLogStorageExt;
        use openraft::{CommittedLeaderId, LeaderId};
        let dir = tempfile::tempdir().unwrap();
        let (mut log, mut sm) = open(&dir.path().join("warren.redb")).unwrap();
        let lid = |i| LogId::new(CommittedLeaderId::new(1, 1), i);
        let blank = |i| Entry::<TypeConfig> {
            log_id: lid(i),
            payload: EntryPayload::Blank,
        };
        log.set_own_id(1);
        // Manager 2's follower: each append is durable before it is reported.
        log.save_vote(&Vote::new_committed(1, 2)).await.unwrap();
        assert!(!log.leads());
        log.blocking_append((1..=3).map(blank)).await.unwrap();
        assert_eq!(log.durable.last(), Some(lid(3)));
        // Now the leader of term 2: reported once written, synced behind.
        let vote = Vote {
            leader_id: LeaderId::new(2, 1),
            committed: true,
        };
        log.save_vote(&vote).await.unwrap();
        assert!(log.leads());
        let lid2 = |i| LogId::new(CommittedLeaderId::new(2, 1), i);
        let entries: Vec<Entry<TypeConfig>> = (4..=6)
            .map(|i| Entry {
                log_id: lid2(i),
                payload: EntryPayload::Blank,
            })
            .collect();
        log.blocking_append(entries.clone()).await.unwrap();
        // The saved commit never passes what is durable; apply waits for it. It reaches the
        // database with the next transaction: the next append's.
        log.save_committed(Some(lid2(6))).await.unwrap();
        assert_eq!(
            log.read_committed().await.unwrap(),
            None,
            "not a transaction of its own"
        );
        log.blocking_append([Entry {
            log_id: lid2(7),
            payload: EntryPayload::Blank,
        }])
        .await
        .unwrap();
        let saved = log.read_committed().await.unwrap().unwrap();
        assert!(saved.index <= log.durable.last().unwrap().index);
        let applied = tokio::time::timeout(std::time::Duration::from_secs(10), sm.apply(entries))
            .await
            .expect("applied once synced")
            .unwrap();
        assert_eq!(applied.len(), 3);
        assert_eq!(log.durable.last(), Some(lid2(6)));
        assert!(log.durable.clamp(Some(lid2(6))) == Some(lid2(6)));
    }

    /// Appends reach the database without an fsync; the write-ahead file brings back what a
    /// crash took from it. The database is put back to a copy taken before the appends (what
    /// a crash leaves of commits never made durable), and reopening finds every entry, with
    /// a truncation replayed in its order; a write-ahead file beside a new database is refused.
    #[tokio::test]
    async fn the_write_ahead_file_brings_back_appends_a_crash_took() {
        use openraft::storage::RaftLogStorageExt;
        use openraft::CommittedLeaderId;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warren.redb");
        let lid = |term, i| LogId::new(CommittedLeaderId::new(term, 1), i);
        let blank = |term, i| Entry::<TypeConfig> {
            log_id: lid(term, i),
            payload: EntryPayload::Blank,
        };
        let before = {
            let (log, _sm) = open(&path).unwrap();
            drop(log);
            std::fs::read(&path).unwrap()
        };
        {
            let (mut log, _sm) = open(&path).unwrap();
            log.blocking_append((1..=6).map(|i| blank(1, i))).await.unwrap();
            log.truncate(lid(1, 5)).await.unwrap();
            log.blocking_append([blank(2, 5)]).await.unwrap();
            assert!(!log.wal.lock().unwrap().is_empty());
        }
        std::fs::write(&path, &before).unwrap();
        let (mut log, sm) = open(&path).unwrap();
        assert_eq!(log.get_log_state().await.unwrap().last_log_id, Some(lid(2, 5)));
        let terms: Vec<(u64, u64)> = log
            .try_get_log_entries(1..10)
            .await
            .unwrap()
            .iter()
            .map(|e| (e.log_id.leader_id.term, e.log_id.index))
            .collect();
        assert_eq!(terms, vec![(1, 1), (1, 2), (1, 3), (1, 4), (2, 5)]);
        assert!(log.wal.lock().unwrap().is_empty(), "replayed and emptied");
        drop((log, sm));

        // The same file beside a database that is not there any more.
        let wal = path.with_extension("wal");
        {
            let (mut log, _sm) = open(&path).unwrap();
            log.blocking_append([blank(2, 6)]).await.unwrap();
        }
        std::fs::remove_file(&path).unwrap();
        let refused = open(&path).expect_err("refused").to_string();
        assert!(
            refused.contains(&wal.display().to_string()) && refused.contains("no database"),
            "{refused}"
        );
        assert!(!path.exists(), "a refused open made a new database");
        // One that cannot be read (a directory in its place) may hold records: refused too.
        std::fs::remove_file(&wal).unwrap();
        std::fs::create_dir(&wal).unwrap();
        let refused = open(&path).expect_err("refused").to_string();
        assert!(refused.contains("cannot be read"), "{refused}");
        assert!(!path.exists(), "a refused open made a new database");
    }

    /// The decoded tail always holds a contiguous run of the newest entries, or answers
    /// nothing so the read falls back to the database.
    #[test]
    fn tail_holds_only_contiguous_newest_entries() {
        use openraft::CommittedLeaderId;
        let entry = |term, i| Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), i),
            payload: EntryPayload::Blank,
        };
        let idx = |v: Option<Vec<Entry<TypeConfig>>>| {
            v.map(|v| {
                v.iter()
                    .map(|e| (e.log_id.leader_id.term, e.log_id.index))
                    .collect::<Vec<_>>()
            })
        };
        let mut t = Tail::default();
        assert_eq!(idx(t.get(1, 2)), None, "empty");
        for i in 5..=8 {
            t.push(entry(1, i));
        }
        // (start, end, the (term, index) pairs answered, or none: read the database)
        type Case = (u64, u64, Option<Vec<(u64, u64)>>);
        let cases: &[Case] = &[
            (5, 9, Some(vec![(1, 5), (1, 6), (1, 7), (1, 8)])),
            (6, 7, Some(vec![(1, 6)])),
            (7, 7, Some(vec![])),
            (4, 6, None),  // below the tail
            (8, 10, None), // past the last entry
        ];
        for (start, end, want) in cases {
            assert_eq!(&idx(t.get(*start, *end)), want, "{start}..{end}");
        }
        // An overwrite at 7 (a new leader's entry) drops 7 and 8 of the old term.
        t.push(entry(2, 7));
        assert_eq!(idx(t.get(5, 8)), Some(vec![(1, 5), (1, 6), (2, 7)]));
        // A gap clears what came before.
        t.push(entry(2, 10));
        assert_eq!(idx(t.get(5, 6)), None);
        assert_eq!(idx(t.get(10, 11)), Some(vec![(2, 10)]));
        t.truncate(10);
        assert_eq!(idx(t.get(10, 11)), None);
        for i in 1..=(TAIL_ENTRIES as u64 + 5) {
            t.push(entry(3, i));
        }
        assert_eq!(t.entries.len(), TAIL_ENTRIES, "bounded");
        assert_eq!(t.first(), Some(6));
        t.purge(10);
        assert_eq!(t.first(), Some(11));
        assert_eq!(bounds(&(3..=4)), (3, 5));
        assert_eq!(bounds(&(3..)), (3, u64::MAX));
    }
}
