//! Blocking work (a write and its fsync, a long walk over the state) off the async workers in
//! the production build, so that the API, the Raft network and heartbeats go on meanwhile.
//! The simulator runs it in place: its disk is in memory, its clock stands still during a
//! walk, and its schedule must stay seeded.

pub async fn off_async<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    #[cfg(not(madsim))]
    {
        tokio::task::spawn_blocking(f)
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }
    #[cfg(madsim)]
    {
        f()
    }
}
