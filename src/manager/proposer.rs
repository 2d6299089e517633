//! Group commit on the leader. openraft 0.9 appends and fsyncs each proposal before it takes
//! the next one, so concurrent writes queued one fsync (and one replication round) each.
//! Here at most `IN_FLIGHT` proposals are open at once; writes that arrive meanwhile wait and
//! go together as one `Command::Batch` entry: one fsync per manager for all of them.
//! A write that arrives while nothing is open goes at once, alone (no added latency).

use crate::core::batch::{shares, Admission, Shares};
use crate::core::{Command, Outcome, StateError};
use crate::raft::{ManagerNode, NodeId, Raft, WriteResult};
use openraft::error::{ClientWriteError, RaftError};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Proposals open at once: while one is replicated, the next one is appended (and
/// fsynced) on the leader.
pub const IN_FLIGHT: usize = 2;
/// Most writes in one batch entry.
pub const MAX_BATCH_COMMANDS: usize = 512;
/// Most encoded bytes in one batch entry (a larger write goes alone): 32 of them (openraft's
/// `max_payload_entries`) stay under the 64 MiB peer message limit.
pub const MAX_BATCH_BYTES: u64 = 1 << 20;

/// Longest a proposal waits for Raft's answer: as long as any caller waits for a write
/// (`leader::DEADLINE_MS`). A proposal holds one of the `IN_FLIGHT` slots while it waits, and
/// openraft 0.9 never answers one whose entry was replaced by a snapshot from a newer leader
/// (it answers only entries it applies or truncates): unbounded, two such proposals would
/// stop every later write on this manager, even after it leads again.
pub const ANSWER_WAIT_MS: u64 = super::leader::DEADLINE_MS;
/// How often a waiting proposal looks whether the term it was proposed in has ended.
const TERM_CHECK_MS: u64 = 100;

pub type RaftWriteError = RaftError<NodeId, ClientWriteError<NodeId, ManagerNode>>;
pub type Answer = Result<WriteResult, ProposeError>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    #[error(transparent)]
    Raft(#[from] RaftWriteError),
    /// Raft has not answered, and may never: the outcome is unknown (a retry with the same
    /// request id is applied at most once).
    #[error(
        "Raft gave no answer within {waited_ms} ms (term {proposed_in} then, {now} now); \
         the write may or may not have been applied"
    )]
    NoAnswer {
        waited_ms: u64,
        proposed_in: u64,
        now: u64,
    },
}

struct Pending {
    cmd: Command,
    bytes: u64,
    reply: oneshot::Sender<Answer>,
}

/// A write waiting for an entry, with what it may not share one with (`core::batch`), worked
/// out once as it arrives.
struct Held {
    write: Pending,
    shares: Shares,
}

#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::UnboundedSender<Pending>,
}

impl Proposer {
    /// Starts the proposing task (it ends when the last `Proposer` clone is dropped).
    pub fn start(raft: Raft, state: crate::raft::store::SharedState) -> Proposer {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, state, rx));
        Proposer { tx }
    }

    /// Proposes `cmd` and waits for its answer, as `Raft::client_write` does.
    pub async fn write(&self, cmd: Command) -> Answer {
        let (reply, answer) = oneshot::channel();
        let bytes = bincode::serialized_size(&cmd).unwrap_or(MAX_BATCH_BYTES);
        if self.tx.send(Pending { cmd, bytes, reply }).is_err() {
            return Err(RaftError::Fatal(openraft::error::Fatal::Stopped).into());
        }
        answer
            .await
            .unwrap_or(Err(RaftError::Fatal(openraft::error::Fatal::Stopped).into()))
    }
}

async fn run(raft: Raft, state: crate::raft::store::SharedState, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let open = Arc::new(Semaphore::new(IN_FLIGHT));
    // Writes that could not join the last entry (`core::batch`), in arrival order: first in
    // the next ones, so none waits behind later writes.
    let mut held: VecDeque<Held> = VecDeque::new();
    let arrived = |write: Pending| {
        let shares = shares(&write.cmd, &state.read().unwrap().state);
        Held { write, shares }
    };
    loop {
        let Ok(permit) = open.clone().acquire_owned().await else {
            return;
        };
        if held.is_empty() {
            match rx.recv().await {
                Some(p) => held.push_back(arrived(p)),
                None => return,
            }
        }
        while let Ok(p) = rx.try_recv() {
            held.push_back(arrived(p));
        }
        let mut batch: Vec<Pending> = Vec::new();
        let (mut bytes, mut entry) = (0u64, Admission::default());
        let mut left = VecDeque::with_capacity(held.len());
        while let Some(h) = held.pop_front() {
            if batch.len() == MAX_BATCH_COMMANDS || bytes >= MAX_BATCH_BYTES {
                // Full: the rest wait, in their order, without being looked at again.
                left.push_back(h);
                left.append(&mut held);
                break;
            }
            let fits = batch.is_empty() || bytes + h.write.bytes <= MAX_BATCH_BYTES;
            if fits && entry.admit(&h.shares) {
                bytes += h.write.bytes;
                batch.push(h.write);
            } else {
                left.push_back(h);
            }
        }
        held = left;
        let raft = raft.clone();
        tokio::spawn(async move {
            propose(&raft, batch).await;
            drop(permit);
        });
    }
}

/// `Raft::client_write`, given up once the term it was proposed in has ended without an
/// answer, or after `ANSWER_WAIT_MS`.
async fn answer_of(raft: &Raft, cmd: Command) -> Result<WriteResult, ProposeError> {
    let proposed_in = raft.metrics().borrow().current_term;
    let started = tokio::time::Instant::now();
    let write = raft.client_write(cmd);
    tokio::pin!(write);
    loop {
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(TERM_CHECK_MS), &mut write).await {
            return r.map(|r| r.data).map_err(ProposeError::from);
        }
        let now = raft.metrics().borrow().current_term;
        let waited_ms = started.elapsed().as_millis() as u64;
        if now != proposed_in || waited_ms >= ANSWER_WAIT_MS {
            tracing::warn!(
                proposed_in,
                now,
                waited_ms,
                "a proposal got no answer from Raft; given up"
            );
            return Err(ProposeError::NoAnswer {
                waited_ms,
                proposed_in,
                now,
            });
        }
    }
}

async fn propose(raft: &Raft, mut batch: Vec<Pending>) {
    if batch.len() == 1 {
        let p = batch.pop().expect("one write");
        let _ = p.reply.send(answer_of(raft, p.cmd).await);
        return;
    }
    let (cmds, replies): (Vec<Command>, Vec<oneshot::Sender<Answer>>) =
        batch.into_iter().map(|p| (p.cmd, p.reply)).unzip();
    let n = cmds.len();
    crate::metrics::get().batch_writes.observe(n as f64);
    match answer_of(raft, Command::Batch(cmds)).await {
        Ok(r) => {
            let answers = match r.0 {
                Ok(Outcome::Batch(a)) if a.len() == n => a,
                other => {
                    let why = format!("a batch of {n} writes was answered with {other:?}");
                    vec![Err(StateError::FailedPrecondition(why)); n]
                }
            };
            for (reply, a) in replies.into_iter().zip(answers) {
                let _ = reply.send(Ok(WriteResult(a)));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
