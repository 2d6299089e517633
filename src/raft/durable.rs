//! How far this manager's Raft log is on disk, for the leader's pipelined appends.
//!
//! openraft 0.9 replicates a leader's new entries only once its own append has reported
//! them flushed, so a write waited for two fdatasyncs in a row (the leader's, then a
//! follower's). etcd's leader instead sends while it writes, and counts itself towards a
//! quorum only once its own write is durable. Warren does the same with openraft: the
//! leader's append reports its entries flushed once they are written (not yet synced), and
//! one fdatasync runs behind it while openraft replicates. openraft then counts the leader in
//! its commit before the leader's own sync is done, so nothing a commit makes visible
//! may pass this watermark:
//! - the state machine applies an entry (and a client is answered) only once it is durable
//!   here (`reached`);
//! - AppendEntries tell followers of a commit no further than here (`clamp`), so no follower
//!   applies what the leader could still lose in a crash;
//! - the committed id the log store saves is clamped the same way.
//!
//! An entry the leader counted is therefore, by the time anyone acts on it, on the leader's
//! disk and on a follower's: a majority of three. Membership changes skip the pipeline
//! (their commit moves openraft to the next configuration by itself). A follower's appends
//! are durable before it answers, as before.

use super::NodeId;
use openraft::LogId;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Durable {
    state: Mutex<State>,
    changed: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct State {
    /// The last log entry known to be on disk.
    last: Option<LogId<NodeId>>,
    /// The last entry written to the write-ahead file (synced or not).
    written: Option<LogId<NodeId>>,
    /// Bumped when the log is cut back (a follower's truncation): a sync that began before
    /// it must not raise `last` to an entry that is gone.
    epoch: u64,
    /// A sync is running behind the leader's appends; `again`: more was written since it
    /// began, so it runs once more.
    syncing: bool,
    again: bool,
    /// A sync failed: what it was to persist may be lost ("fsyncgate"), so nothing written
    /// after it is ever reported durable; the Raft core stops on the next storage call.
    failed: Option<String>,
}

/// What a sync behind the leader's appends is to make durable.
#[derive(Debug, Clone, Copy)]
pub struct SyncTarget {
    upto: Option<LogId<NodeId>>,
    epoch: u64,
}

impl Durable {
    pub fn new(last: Option<LogId<NodeId>>) -> Durable {
        Durable {
            state: Mutex::new(State {
                last,
                written: last,
                ..State::default()
            }),
            changed: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("durable lock")
    }

    pub fn last(&self) -> Option<LogId<NodeId>> {
        self.lock().last
    }

    pub fn failed(&self) -> Option<String> {
        self.lock().failed.clone()
    }

    /// `committed`, lowered to what is durable here.
    pub fn clamp(&self, committed: Option<LogId<NodeId>>) -> Option<LogId<NodeId>> {
        let last = self.lock().last;
        match (committed, last) {
            (Some(c), Some(l)) if c.index > l.index => Some(l),
            (Some(_), None) => None,
            (c, _) => c,
        }
    }

    /// Entries up to `written` are in the write-ahead file, not yet synced.
    pub fn wrote(&self, written: LogId<NodeId>) {
        self.lock().written = Some(written);
    }

    /// Everything written so far is on disk (a synced append, a durable database commit).
    pub fn all_synced(&self) {
        let mut s = self.lock();
        if s.failed.is_none() && index_of(s.written) > index_of(s.last) {
            s.last = s.written;
        }
        drop(s);
        self.changed.notify_waiters();
    }

    /// The log was cut back to end at `last` (a follower's truncation, synced).
    pub fn cut_to(&self, last: Option<LogId<NodeId>>) {
        let mut s = self.lock();
        s.epoch += 1;
        s.written = last;
        if s.failed.is_none() {
            s.last = last;
        }
    }

    /// The leader wrote entries without a sync: returns what a new sync must cover, or
    /// `None` when one is already running (it will run again and cover them).
    pub fn start_sync(&self) -> Option<SyncTarget> {
        let mut s = self.lock();
        if s.syncing {
            s.again = true;
            return None;
        }
        s.syncing = true;
        Some(SyncTarget {
            upto: s.written,
            epoch: s.epoch,
        })
    }

    /// The sync for `target` ended: returns the next target when more was written meanwhile.
    pub fn synced(&self, target: SyncTarget, result: Result<(), String>) -> Option<SyncTarget> {
        let mut s = self.lock();
        match result {
            Err(e) => {
                s.failed.get_or_insert(e);
                s.syncing = false;
                s.again = false;
            }
            Ok(()) => {
                if s.failed.is_none() && s.epoch == target.epoch && index_of(target.upto) > index_of(s.last) {
                    s.last = target.upto;
                }
            }
        }
        let next = if s.syncing && std::mem::take(&mut s.again) {
            Some(SyncTarget {
                upto: s.written,
                epoch: s.epoch,
            })
        } else {
            s.syncing = false;
            None
        };
        drop(s);
        self.changed.notify_waiters();
        next
    }

    /// Waits until the entry at `index`, written and not yet synced, is durable; an error
    /// once a sync has failed. (An entry never written through this store, which only
    /// storage tests apply, is not waited for.)
    pub async fn reached(&self, index: u64) -> Result<(), String> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let s = self.lock();
                if let Some(e) = &s.failed {
                    return Err(e.clone());
                }
                let pending = index_of(s.written).is_some_and(|w| index <= w);
                if !pending || s.last.is_some_and(|l| l.index >= index) {
                    return Ok(());
                }
            }
            changed.await;
        }
    }
}

fn index_of(id: Option<LogId<NodeId>>) -> Option<u64> {
    id.map(|l| l.index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    #[test]
    fn commits_are_clamped_to_what_is_synced_and_a_failed_sync_is_final() {
        let d = Durable::new(Some(id(1, 3)));
        assert_eq!(d.clamp(Some(id(1, 2))), Some(id(1, 2)));
        d.wrote(id(1, 5));
        let t = d.start_sync().expect("no sync running");
        assert_eq!(d.clamp(Some(id(1, 5))), Some(id(1, 3)), "not synced yet");
        // Written while the sync runs: it runs again for them.
        d.wrote(id(1, 6));
        assert!(d.start_sync().is_none());
        let t2 = d.synced(t, Ok(())).expect("runs again");
        assert_eq!(d.last(), Some(id(1, 5)));
        assert!(d.synced(t2, Ok(())).is_none());
        assert_eq!(d.last(), Some(id(1, 6)));
        // A truncation while a sync runs: that sync does not raise the watermark.
        d.wrote(id(1, 8));
        let t3 = d.start_sync().unwrap();
        d.cut_to(Some(id(1, 6)));
        assert!(d.synced(t3, Ok(())).is_none());
        assert_eq!(d.last(), Some(id(1, 6)));
        // A failed sync: nothing after it is durable, even a later synced append.
        d.wrote(id(2, 7));
        let t4 = d.start_sync().unwrap();
        assert!(d.synced(t4, Err("EIO".into())).is_none());
        d.wrote(id(2, 8));
        d.all_synced();
        assert_eq!(d.last(), Some(id(1, 6)));
        assert_eq!(d.failed().as_deref(), Some("EIO"));
    }

    #[tokio::test]
    async fn apply_waits_for_the_sync() {
        let d = std::sync::Arc::new(Durable::new(None));
        d.wrote(id(1, 1));
        let t = d.start_sync().unwrap();
        let waiter = {
            let d = d.clone();
            tokio::spawn(async move { d.reached(1).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        d.synced(t, Ok(()));
        assert_eq!(waiter.await.unwrap(), Ok(()));
        let t = {
            d.wrote(id(1, 2));
            d.start_sync().unwrap()
        };
        d.synced(t, Err("EIO".into()));
        assert_eq!(d.reached(2).await, Err("EIO".into()));
    }
}
