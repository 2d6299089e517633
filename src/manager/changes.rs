//! Wakes tasks when this manager's Raft metrics change (an entry applied, a new leader, a
//! new term). One task (`follow`) waits on openraft's metrics channel and bumps a version;
//! every other task waits here.
//!
//! Why not wait on the metrics channel itself: tokio's watch channel wakes its waiters
//! through one of eight `Notify`s picked by a thread-local generator that tokio seeds from a
//! process-wide counter, which the simulator cannot seed. With more than one waiter, the
//! order they wake in (and so the simulated schedule) would depend on what else ran in the
//! process before: a seed would not replay alone as it ran in the suite. `Notify` wakes its
//! waiters in the order they came.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct Changes {
    version: AtomicU64,
    closed: AtomicBool,
    notify: Notify,
    /// When this manager last saw its snapshot change (built or installed); unknown before.
    pub snapshot_at: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Changes {
    /// The current version: pass it to `after` to wait for the next change.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    /// Waits until the version is no longer `seen`; the new version, or `None` once the Raft
    /// core has ended (no change will come).
    pub async fn after(&self, seen: u64) -> Option<u64> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a bump between the check and the wait is seen.
            notified.as_mut().enable();
            let v = self.version();
            if v != seen {
                return Some(v);
            }
            if self.closed.load(Ordering::SeqCst) {
                return None;
            }
            notified.await;
        }
    }

    /// The Raft core has ended: no change will come.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn bump(&self) {
        self.version.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}

/// A manager's stop signal for its tasks, set once: by `Stopper::stop`, or when the
/// `Stopper` is dropped (the manager's run ended some other way). Waiters wake in the order
/// they came, for the reason above: a watch channel with its dozen waiters made the
/// simulated schedule after a manager stopped depend on what had run before in the process.
#[derive(Clone, Debug, Default)]
pub struct Stop(std::sync::Arc<StopState>);

#[derive(Debug, Default)]
pub struct StopState {
    set: AtomicBool,
    notify: Notify,
}

/// The one side that sets a `Stop`.
#[derive(Debug)]
pub struct Stopper(Stop);

impl Stop {
    pub fn channel() -> (Stopper, Stop) {
        let s = Stop::default();
        (Stopper(s.clone()), s)
    }

    pub fn is_set(&self) -> bool {
        self.0.set.load(Ordering::SeqCst)
    }

    /// Returns once the stop is set (at once if it already is).
    pub async fn wait(&self) {
        loop {
            let notified = self.0.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }
}

impl Stopper {
    pub fn stop(&self) {
        self.0 .0.set.store(true, Ordering::SeqCst);
        self.0 .0.notify.notify_waiters();
    }
}

impl Drop for Stopper {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The one waiter on `raft`'s metrics channel: bumps `changes` at each change, until the
/// channel closes.
pub async fn follow(raft: crate::raft::Raft, changes: std::sync::Arc<Changes>) {
    let mut metrics = raft.metrics();
    let mut leader = None;
    let mut snapshot = metrics.borrow().snapshot.map(|s| s.index);
    while metrics.changed().await.is_ok() {
        changes.bump();
        let (now_leader, now_snapshot) = {
            let m = metrics.borrow();
            (m.current_leader, m.snapshot.map(|s| s.index))
        };
        if now_leader.is_some() && now_leader != leader {
            crate::metrics::get().leader_changes.inc();
            leader = now_leader;
        }
        if now_snapshot != snapshot {
            snapshot = now_snapshot;
            *changes.snapshot_at.lock().unwrap() = Some(std::time::Instant::now());
        }
    }
    changes.close();
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn waiters_see_every_bump_and_the_close() {
        let c = Arc::new(Changes::default());
        let seen = c.version();
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move { c.after(seen).await })
        };
        tokio::task::yield_now().await;
        c.bump();
        assert_eq!(waiter.await.unwrap(), Some(seen + 1));
        // A bump that came before the wait is not missed.
        c.bump();
        assert_eq!(c.after(seen + 1).await, Some(seen + 2));
        c.close();
        assert_eq!(c.after(seen + 2).await, None);
    }

    #[tokio::test]
    async fn stop_wakes_every_waiter_and_holds() {
        let (stopper, stop) = Stop::channel();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let s = stop.clone();
                tokio::spawn(async move { s.wait().await })
            })
            .collect();
        tokio::task::yield_now().await;
        assert!(!stop.is_set());
        stopper.stop();
        for w in waiters {
            w.await.unwrap();
        }
        // Set stays set: a later wait returns at once.
        stop.wait().await;
        assert!(stop.is_set());
    }

    #[tokio::test]
    async fn dropping_the_stopper_stops() {
        let (stopper, stop) = Stop::channel();
        drop(stopper);
        stop.wait().await;
        assert!(stop.is_set());
    }
}
