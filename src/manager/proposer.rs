//! Group commit on the leader. openraft 0.9 appends and fsyncs each proposal before it takes
//! the next one, so concurrent writes queued one fsync (and one replication round) each.
//! Here at most `IN_FLIGHT` proposals are open at once; writes that arrive meanwhile wait and
//! go together as one `Command::Batch` entry: one fsync per manager for all of them.
//! A write that arrives while nothing is open goes at once, alone (no added latency).

use crate::core::{Command, Outcome, StateError};
use crate::raft::{ManagerNode, NodeId, Raft, WriteResult};
use openraft::error::{ClientWriteError, RaftError};
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Proposals open at once: while one is replicated, the next one is appended (and
/// fsynced) on the leader.
pub const IN_FLIGHT: usize = 2;
/// Most writes in one batch entry.
pub const MAX_BATCH_COMMANDS: usize = 512;
/// Most encoded bytes in one batch entry (a larger write goes alone): 32 of them (openraft's
/// `max_payload_entries`) stay under the 64 MiB peer message limit.
pub const MAX_BATCH_BYTES: u64 = 1 << 20;

pub type Answer = Result<WriteResult, RaftError<NodeId, ClientWriteError<NodeId, ManagerNode>>>;

struct Pending {
    cmd: Command,
    bytes: u64,
    reply: oneshot::Sender<Answer>,
}

/// What a write may not share a batch with. The writes of one entry share its index as their
/// objects' version, so two writes to one service or node in one batch would give the first
/// writer a version that also holds the second write, and its next `expected_version` would
/// pass over that write unseen. So a batch holds either only the cluster's own bookkeeping
/// (task reports, orchestration rounds, node builds: nobody writes against their versions),
/// or only client writes, each to a different object.
#[derive(Debug, PartialEq, Eq)]
enum Shares {
    Bookkeeping,
    Objects(Vec<String>),
}

fn shares(cmd: &Command, state: &crate::raft::store::SharedState) -> Shares {
    let service = |r: &str| {
        let guard = state.read().unwrap();
        let id = guard.state.service(r).map(|s| format!("service {}", s.id));
        Shares::Objects(std::iter::once(format!("service {r}")).chain(id).collect())
    };
    match cmd {
        Command::Once { cmd, .. } => shares(cmd, state),
        Command::ReportTasks { .. } | Command::Orchestrate { .. } | Command::SetNodeVersion { .. } => {
            Shares::Bookkeeping
        }
        Command::CreateService { id, spec, .. } => {
            Shares::Objects(vec![format!("service {id}"), format!("service {}", spec.name)])
        }
        Command::UpdateService { service: r, .. }
        | Command::ScaleService { service: r, .. }
        | Command::RollbackService { service: r, .. }
        | Command::DeleteService { service: r } => service(r),
        Command::RegisterNode { id, .. }
        | Command::UpdateNode { id, .. }
        | Command::RemoveNode { id, .. } => Shares::Objects(vec![format!("node {id}")]),
        // Anything else (tokens, certificates, the CA, the cluster id): one of a kind.
        other => Shares::Objects(vec![format!("{:?}", std::mem::discriminant(other))]),
    }
}

/// Whether a write sharing `s` may join a batch that so far shares `bookkeeping` (None:
/// empty) and `objects`; if so, notes what it shares.
fn admit(s: Shares, bookkeeping: &mut Option<bool>, objects: &mut BTreeSet<String>) -> bool {
    match (s, *bookkeeping) {
        (Shares::Bookkeeping, None | Some(true)) => {
            *bookkeeping = Some(true);
            true
        }
        (Shares::Objects(keys), None | Some(false)) if keys.iter().all(|k| !objects.contains(k)) => {
            *bookkeeping = Some(false);
            objects.extend(keys);
            true
        }
        _ => false,
    }
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
            return Err(RaftError::Fatal(openraft::error::Fatal::Stopped));
        }
        answer
            .await
            .unwrap_or(Err(RaftError::Fatal(openraft::error::Fatal::Stopped)))
    }
}

async fn run(raft: Raft, state: crate::raft::store::SharedState, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let open = Arc::new(Semaphore::new(IN_FLIGHT));
    // Writes that could not join the last batch, in arrival order: first in the next ones.
    let mut held: VecDeque<Pending> = VecDeque::new();
    loop {
        let Ok(permit) = open.clone().acquire_owned().await else {
            return;
        };
        if held.is_empty() {
            match rx.recv().await {
                Some(p) => held.push_back(p),
                None => return,
            }
        }
        while let Ok(p) = rx.try_recv() {
            held.push_back(p);
        }
        let mut batch: Vec<Pending> = Vec::new();
        let (mut bytes, mut bookkeeping, mut objects) = (0u64, None, BTreeSet::new());
        let mut left = VecDeque::with_capacity(held.len());
        for p in held.drain(..) {
            let fits =
                batch.is_empty() || (batch.len() < MAX_BATCH_COMMANDS && bytes + p.bytes <= MAX_BATCH_BYTES);
            if fits && admit(shares(&p.cmd, &state), &mut bookkeeping, &mut objects) {
                bytes += p.bytes;
                batch.push(p);
            } else {
                left.push_back(p);
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

async fn propose(raft: &Raft, mut batch: Vec<Pending>) {
    if batch.len() == 1 {
        let p = batch.pop().expect("one write");
        let _ = p.reply.send(raft.client_write(p.cmd).await.map(|r| r.data));
        return;
    }
    let (cmds, replies): (Vec<Command>, Vec<oneshot::Sender<Answer>>) =
        batch.into_iter().map(|p| (p.cmd, p.reply)).unzip();
    let n = cmds.len();
    crate::metrics::get().batch_writes.observe(n as f64);
    match raft.client_write(Command::Batch(cmds)).await {
        Ok(r) => {
            let answers = match r.data.0 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_holds_bookkeeping_or_client_writes_to_different_objects() {
        use Shares::*;
        let objects = |keys: &[&str]| Objects(keys.iter().map(|k| k.to_string()).collect());
        let mut book = None;
        let mut seen = BTreeSet::new();
        assert!(admit(
            objects(&["service s1", "service web"]),
            &mut book,
            &mut seen
        ));
        assert!(admit(objects(&["service api"]), &mut book, &mut seen));
        // the same service by name: not in this batch
        assert!(!admit(
            objects(&["service web", "service s1"]),
            &mut book,
            &mut seen
        ));
        // bookkeeping does not join client writes
        assert!(!admit(Bookkeeping, &mut book, &mut seen));
        let (mut book, mut seen) = (None, BTreeSet::new());
        assert!(admit(Bookkeeping, &mut book, &mut seen));
        assert!(admit(Bookkeeping, &mut book, &mut seen));
        assert!(!admit(objects(&["node n1"]), &mut book, &mut seen));
    }
}
