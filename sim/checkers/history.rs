//! Client histories: what each client asked (invocation) and what it got back (response),
//! with simulated times, for the linearizability and acknowledged-write checkers.

use std::sync::{Arc, Mutex};
use tokio::time::Instant;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Create {
        replicas: i64,
    },
    Scale {
        replicas: i64,
    },
    Delete,
    /// A `--consistent` read.
    Get,
}

/// What came back. `Unknown` (timeout, unavailable, connection lost) means the operation may
/// or may not have taken effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ret {
    Ok,
    AlreadyExists,
    NotFound,
    Found { replicas: i64 },
    Unknown,
}

#[derive(Clone, Debug)]
pub struct Event {
    #[allow(dead_code)] // shown in violation reports
    pub client: usize,
    pub key: String,
    pub op: Op,
    pub ret: Ret,
    pub invoked: Instant,
    /// `None` while in flight; an unknown outcome still gets the time it was given up on.
    pub returned: Option<Instant>,
}

#[derive(Clone, Default)]
pub struct History(Arc<Mutex<Vec<Event>>>);

impl History {
    /// Records an invocation; returns its index for `complete`.
    pub fn invoke(&self, client: usize, key: &str, op: Op) -> usize {
        let mut h = self.0.lock().unwrap();
        h.push(Event {
            client,
            key: key.to_string(),
            op,
            ret: Ret::Unknown,
            invoked: Instant::now(),
            returned: None,
        });
        h.len() - 1
    }

    pub fn complete(&self, idx: usize, ret: Ret) {
        let mut h = self.0.lock().unwrap();
        h[idx].ret = ret;
        h[idx].returned = Some(Instant::now());
    }

    pub fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }
}
