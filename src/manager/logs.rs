//! The log broker: each worker holds one log session, opened by the worker, with some
//! manager (workers at the edge sit behind NAT; nothing dials them). A `service logs` call on
//! any manager asks, per node, the broker holding that node's session: its own, or a peer's
//! through the internal `NodeLogs` call.

use crate::proto::v1 as pb;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc;

/// Lines from a worker for one request, in upload-sized batches.
pub type Batch = Vec<pb::LogLine>;

/// A reader slower than this to take a batch loses its request (so one slow reader cannot
/// stall every other request on that worker's session).
const READER_STALL: Duration = Duration::from_secs(10);

/// The internal `NodeLogs` request (bincode in a `RaftPayload`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeLogsQuery {
    pub node_id: String,
    pub task_ids: Vec<String>,
    pub follow: bool,
    pub tail: i64,
}

struct Session {
    generation: u64,
    orders: mpsc::UnboundedSender<pb::LogRequest>,
    readers: BTreeMap<u64, mpsc::Sender<Batch>>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    sessions: BTreeMap<String, Session>,
}

#[derive(Default)]
pub struct LogBroker {
    inner: Mutex<Inner>,
}

impl LogBroker {
    /// A worker's new session (replacing an older one of the same node): its generation and
    /// the requests to send it.
    pub fn open(&self, node: &str) -> (u64, mpsc::UnboundedReceiver<pb::LogRequest>) {
        let mut inner = self.inner.lock().unwrap();
        inner.next_id += 1;
        let generation = inner.next_id;
        let (tx, rx) = mpsc::unbounded_channel();
        inner.sessions.insert(
            node.to_string(),
            Session {
                generation,
                orders: tx,
                readers: BTreeMap::new(),
            },
        );
        (generation, rx)
    }

    /// The session ended: its readers see their streams end.
    pub fn close(&self, node: &str, generation: u64) {
        let mut inner = self.inner.lock().unwrap();
        if inner
            .sessions
            .get(node)
            .is_some_and(|s| s.generation == generation)
        {
            let s = inner.sessions.remove(node).expect("checked");
            for reader in s.readers.values() {
                let _ = reader.try_send(vec![notice(format!(
                    "the log session of node {node} ended (its worker stopped or lost this manager); its lines may be incomplete"
                ))]);
            }
        }
    }

    pub fn has(&self, node: &str) -> bool {
        self.inner.lock().unwrap().sessions.contains_key(node)
    }

    /// Asks `node`'s worker for lines; None if this manager holds no session of it.
    pub fn request(&self, node: &str, task_ids: Vec<String>, follow: bool, tail: i64) -> Option<Reader> {
        let mut inner = self.inner.lock().unwrap();
        inner.next_id += 1;
        let request_id = inner.next_id;
        let s = inner.sessions.get_mut(node)?;
        let (tx, rx) = mpsc::channel(16);
        s.orders
            .send(pb::LogRequest {
                request_id,
                task_ids,
                follow,
                tail,
                cancel: false,
            })
            .ok()?;
        s.readers.insert(request_id, tx);
        Some(Reader {
            rx,
            _cancel: CancelOnDrop {
                orders: s.orders.clone(),
                request_id,
            },
        })
    }

    /// An upload from `node`'s session `generation`: its lines to their reader.
    pub async fn upload(&self, node: &str, generation: u64, up: pb::LogUpload) {
        let reader = {
            let inner = self.inner.lock().unwrap();
            match inner.sessions.get(node) {
                Some(s) if s.generation == generation => s.readers.get(&up.request_id).cloned(),
                _ => None,
            }
        };
        let delivered = match reader {
            Some(r) if !up.lines.is_empty() => matches!(
                tokio::time::timeout(READER_STALL, r.send(up.lines)).await,
                Ok(Ok(()))
            ),
            Some(_) => true,
            None => false,
        };
        if up.done || !delivered {
            let mut inner = self.inner.lock().unwrap();
            if let Some(s) = inner
                .sessions
                .get_mut(node)
                .filter(|s| s.generation == generation)
            {
                s.readers.remove(&up.request_id);
                if !delivered && !up.done {
                    // Its reader hung up (or is too slow): the worker stops sending.
                    let _ = s.orders.send(pb::LogRequest {
                        request_id: up.request_id,
                        cancel: true,
                        ..Default::default()
                    });
                }
            }
        }
    }
}

/// The lines of `task_ids` on `node`: from this manager's session of it, else from the peer
/// manager holding it; else one notice saying why there are none.
pub async fn from_node(
    m: &super::Manager,
    node: &str,
    task_ids: Vec<String>,
    follow: bool,
    tail: i64,
) -> futures::stream::BoxStream<'static, pb::LogLine> {
    use crate::proto::internal::raft_service_client::RaftServiceClient;
    use futures::StreamExt;
    use prost::Message;
    if let Some(rx) = m.logs.request(node, task_ids.clone(), follow, tail) {
        return with_idle_limit(lines(rx).boxed(), follow, node);
    }
    let query = NodeLogsQuery {
        node_id: node.to_string(),
        task_ids,
        follow,
        tail,
    };
    for (id, peer) in m.members() {
        if id == m.id {
            continue;
        }
        let Ok(ch) = m.peers.channel(&peer.raft_addr).await else {
            continue;
        };
        let mut client = RaftServiceClient::new(ch);
        let call = client.node_logs(crate::raft::network::encode(&query));
        match tokio::time::timeout(PEER_ANSWER, call).await {
            Ok(Ok(r)) => {
                let stream = r.into_inner();
                let lines = futures::stream::unfold(stream, |mut s| async move {
                    let p = s.message().await.ok().flatten()?;
                    let up = pb::LogUpload::decode(p.data.as_slice()).ok()?;
                    Some((up.lines, s))
                })
                .flat_map(futures::stream::iter)
                .boxed();
                return with_idle_limit(lines, follow, node);
            }
            Ok(Err(s)) if s.code() == tonic::Code::NotFound => {}
            Ok(Err(_)) | Err(_) => m.peers.forget(&peer.raft_addr),
        }
    }
    futures::stream::iter([notice(format!(
        "no logs from node {node}: its worker holds no log session with any reachable manager (it may be down or cut off, or run the simulated runtime)"
    ))])
    .boxed()
}

/// Without --follow, a worker that sends nothing for this long (its session is there but
/// the worker is not: a host gone silent) ends its part of the answer with a notice.
const QUIET_WORKER: Duration = Duration::from_secs(10);

fn with_idle_limit(
    lines: futures::stream::BoxStream<'static, pb::LogLine>,
    follow: bool,
    node: &str,
) -> futures::stream::BoxStream<'static, pb::LogLine> {
    use futures::StreamExt;
    if follow {
        return lines;
    }
    let node = node.to_string();
    futures::stream::unfold(Some(lines), move |state| {
        let node = node.clone();
        async move {
            let mut lines = state?;
            match tokio::time::timeout(QUIET_WORKER, lines.next()).await {
                Ok(Some(l)) => Some((l, Some(lines))),
                Ok(None) => None,
                Err(_) => Some((
                    notice(format!(
                        "node {node}'s worker sent nothing for {} s; its lines may be incomplete",
                        QUIET_WORKER.as_secs()
                    )),
                    None,
                )),
            }
        }
    })
    .boxed()
}

/// A peer manager must start answering a `NodeLogs` call within this long.
const PEER_ANSWER: Duration = Duration::from_secs(3);

fn notice(text: String) -> pb::LogLine {
    pb::LogLine {
        notice: text,
        ..Default::default()
    }
}

/// The lines of one request as they come; dropping it (the reader hung up) tells the worker
/// to stop at once, not only when it next sends something (for a quiet followed task that
/// may be never).
pub struct Reader {
    pub rx: mpsc::Receiver<Batch>,
    _cancel: CancelOnDrop,
}

struct CancelOnDrop {
    orders: mpsc::UnboundedSender<pb::LogRequest>,
    request_id: u64,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        // A request already done is unknown to the worker, which ignores the cancel.
        let _ = self.orders.send(pb::LogRequest {
            request_id: self.request_id,
            cancel: true,
            ..Default::default()
        });
    }
}

/// A request's batches as a stream of lines.
pub fn lines(reader: Reader) -> impl futures::Stream<Item = pb::LogLine> + Send {
    use futures::StreamExt;
    futures::stream::unfold(reader, |mut r| async move { r.rx.recv().await.map(|b| (b, r)) })
        .flat_map(futures::stream::iter)
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;

    fn line(task: &str, text: &str) -> pb::LogLine {
        pb::LogLine {
            task_id: task.into(),
            line: text.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn routes_uploads_to_their_reader_and_cancels_gone_readers() {
        let b = LogBroker::default();
        assert!(
            b.request("w1", vec!["t".into()], false, 10).is_none(),
            "no session yet"
        );
        let (generation, mut orders) = b.open("w1");
        let mut rx = b.request("w1", vec!["t".into()], true, 10).unwrap();
        let order = orders.recv().await.unwrap();
        assert_eq!(
            (order.task_ids.clone(), order.follow, order.tail),
            (vec!["t".to_string()], true, 10)
        );
        b.upload(
            "w1",
            generation,
            pb::LogUpload {
                request_id: order.request_id,
                lines: vec![line("t", "hello")],
                ..Default::default()
            },
        )
        .await;
        assert_eq!(rx.rx.recv().await.unwrap()[0].line, b"hello");
        // The reader hangs up: the next upload cancels the request on the worker.
        drop(rx);
        b.upload(
            "w1",
            generation,
            pb::LogUpload {
                request_id: order.request_id,
                lines: vec![line("t", "more")],
                ..Default::default()
            },
        )
        .await;
        let cancel = orders.recv().await.unwrap();
        assert!(cancel.cancel && cancel.request_id == order.request_id);
        // A newer session replaces the old; closing the old one changes nothing.
        let (g2, _orders2) = b.open("w1");
        b.close("w1", generation);
        assert!(b.has("w1"));
        b.close("w1", g2);
        assert!(!b.has("w1"));
    }
}
