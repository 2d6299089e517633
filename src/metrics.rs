//! Prometheus metrics and health endpoints (`--metrics-addr HOST:PORT` on managers and
//! workers): `GET /metrics` (Prometheus text, names prefixed `warren_`), `/healthz` (the
//! process answers) and `/readyz` (a manager: a member that knows a leader with a quorum; a
//! worker: registered, and its runtime answers).
//!
//! Counters and histograms live here, process-wide, and the code that times something
//! records into them. Values that are read off the state (term, indexes, nodes and tasks by
//! state) are computed at each scrape by a collector the daemon registers. A value that is
//! unknown is left out of the scrape, not reported as 0.

// The simulator serves no HTTP: what only the endpoint uses is unused there.
#![cfg_attr(madsim, allow(dead_code))]

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::LazyLock;

type Labels = Vec<(String, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// 0.5 ms to about 16 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// 0.1 ms to about 3 s: a write-ahead file's fdatasync takes about 0.13 ms here.
fn fast_latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// Counters and histograms the code records into.
pub struct Metrics {
    pub leader_changes: Counter,
    pub proposal_seconds: Histogram,
    pub batch_writes: Histogram,
    pub fsync_seconds: Histogram,
    pub leader_append_seconds: Histogram,
    pub append_rpc_seconds: Histogram,
    pub append_handled_seconds: Histogram,
    pub snapshot_build_seconds: Histogram,
    pub orchestrator_round_seconds: Histogram,
    pub assignment_streams: Gauge,
    pub runtime_op_seconds: Histograms,
    pub runtime_op_failures: Family<Labels, Counter>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    leader_changes: Counter::default(),
    proposal_seconds: latency(),
    batch_writes: Histogram::new(exponential_buckets(2.0, 2.0, 9)),
    fsync_seconds: fast_latency(),
    leader_append_seconds: fast_latency(),
    append_rpc_seconds: fast_latency(),
    append_handled_seconds: fast_latency(),
    snapshot_build_seconds: latency(),
    orchestrator_round_seconds: latency(),
    assignment_streams: Gauge::default(),
    runtime_op_seconds: Family::new_with_constructor(latency),
    runtime_op_failures: Family::default(),
});

pub fn get() -> &'static Metrics {
    &METRICS
}

/// Times a runtime operation (`op`: pull, create, start, stop, ...) of a worker.
pub fn runtime_op(op: &str, seconds: f64, ok: bool) {
    let labels = vec![("op".to_string(), op.to_string())];
    get().runtime_op_seconds.get_or_create(&labels).observe(seconds);
    if !ok {
        get().runtime_op_failures.get_or_create(&labels).inc();
    }
}

/// The registry a manager serves: the recorded metrics and `state`, its scrape-time values.
pub fn manager_registry(state: impl Collector) -> Registry {
    let mut r = Registry::with_prefix("warren");
    let m = get();
    r.register(
        "raft_leader_changes",
        "Times this manager saw a new leader (the first one it learned of included)",
        m.leader_changes.clone(),
    );
    r.register(
        "raft_proposal_seconds",
        "Time from proposing a command on the leader to its being applied",
        m.proposal_seconds.clone(),
    );
    r.register(
        "raft_batch_writes",
        "Writes per batch entry, for proposals the leader grouped (group commit)",
        m.batch_writes.clone(),
    );
    r.register(
        "raft_fsync_seconds",
        "Time to append log entries durably (the write-ahead file's write and fdatasync, and the database transaction without an fsync)",
        m.fsync_seconds.clone(),
    );
    r.register(
        "raft_leader_append_seconds",
        "Time of the leader's own appends, made in place on an async worker and synced behind (the write-ahead file's write and the database transaction; it can wait on a snapshot's durable commit)",
        m.leader_append_seconds.clone(),
    );
    r.register(
        "raft_append_rpc_seconds",
        "On the leader: an AppendEntries message carrying entries, from sending it to a follower to its answer",
        m.append_rpc_seconds.clone(),
    );
    r.register(
        "raft_append_handled_seconds",
        "On a follower: an AppendEntries message carrying entries, from handing it to Raft to its answer (the durable append included)",
        m.append_handled_seconds.clone(),
    );
    r.register(
        "raft_snapshot_build_seconds",
        "Time to build a snapshot of the whole state and save it (sealing and the durable commit)",
        m.snapshot_build_seconds.clone(),
    );
    r.register(
        "orchestrator_round_seconds",
        "Duration of a reconciliation round of the leader's orchestrator, commit included",
        m.orchestrator_round_seconds.clone(),
    );
    r.register(
        "assignment_streams",
        "Workers' assignment streams open on this manager",
        m.assignment_streams.clone(),
    );
    r.register_collector(Box::new(state));
    r
}

/// The registry a worker serves.
pub fn worker_registry(state: impl Collector) -> Registry {
    let mut r = Registry::with_prefix("warren");
    let m = get();
    r.register(
        "worker_runtime_operation_seconds",
        "Duration of container runtime operations, by operation",
        m.runtime_op_seconds.clone(),
    );
    r.register(
        "worker_runtime_operation_failures",
        "Container runtime operations that failed, by operation",
        m.runtime_op_failures.clone(),
    );
    r.register_collector(Box::new(state));
    r
}

/// Writes one gauge (`name` without the prefix, which the registry adds).
pub fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    let m = encoder.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}

/// Writes a gauge family with one label (`label` = each key of `values`).
pub fn gauges_by(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &std::collections::BTreeMap<String, f64>,
) -> Result<(), std::fmt::Error> {
    let mut family =
        encoder.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Gauge)?;
    for (k, v) in values {
        let labels = [(label.to_string(), k.clone())];
        let m = family.encode_family(&labels)?;
        ConstGauge::new(*v).encode(m)?;
    }
    Ok(())
}

/// What `/readyz` answers: ready, or why not.
pub type Readiness = std::sync::Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The socket of `--metrics-addr` (nothing under the simulator, which serves no HTTP).
#[cfg(not(madsim))]
pub type Listener = tokio::net::TcpListener;
#[cfg(madsim)]
pub type Listener = ();

#[cfg(madsim)]
pub async fn bind(_addr: std::net::SocketAddr) -> anyhow::Result<Listener> {
    Ok(())
}

/// Listens on `--metrics-addr`, before the daemon creates anything: a port in use stops
/// the start with nothing changed.
#[cfg(not(madsim))]
pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<Listener> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics-addr {addr}: cannot listen; is another process using it?"))?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    Ok(listener)
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until dropped.
#[cfg(not(madsim))]
pub async fn serve(listener: tokio::net::TcpListener, registry: Registry, ready: Readiness) {
    let registry = std::sync::Arc::new(registry);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_HTTP_CONNECTIONS));
    loop {
        let (conn, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "metrics: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // Past the limit a connection is closed at once rather than queued.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let (registry, ready) = (registry.clone(), ready.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let deadline = std::time::Duration::from_millis(HTTP_TIMEOUT_MS);
            let _ = tokio::time::timeout(deadline, answer(conn, &registry, &ready)).await;
        });
    }
}

/// Connections served at once on `--metrics-addr`, and how long one may take.
pub const MAX_HTTP_CONNECTIONS: usize = 16;
pub const HTTP_TIMEOUT_MS: u64 = 5_000;
/// Largest request head read.
const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// One HTTP/1.x request, answered and closed.
#[cfg(not(madsim))]
async fn answer(
    mut conn: tokio::net::TcpStream,
    registry: &Registry,
    ready: &Readiness,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_REQUEST_BYTES {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, kind, body) = route(method, path, registry, ready);
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(reply.as_bytes()).await?;
    if method != "HEAD" {
        conn.write_all(body.as_bytes()).await?;
    }
    conn.shutdown().await
}

/// The answer to `method path`: (status line, content type, body).
fn route(
    method: &str,
    path: &str,
    registry: &Registry,
    ready: &Readiness,
) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" && method != "HEAD" {
        return ("405 Method Not Allowed", TEXT, "use GET\n".into());
    }
    match path.split('?').next().unwrap_or("") {
        "/metrics" => {
            let mut out = String::new();
            match prometheus_client::encoding::text::encode(&mut out, registry) {
                Ok(()) => (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    out,
                ),
                Err(_) => (
                    "500 Internal Server Error",
                    TEXT,
                    "encoding the metrics failed\n".into(),
                ),
            }
        }
        "/healthz" => ("200 OK", TEXT, "ok\n".into()),
        "/readyz" => match ready() {
            Ok(()) => ("200 OK", TEXT, "ready\n".into()),
            Err(why) => ("503 Service Unavailable", TEXT, format!("not ready: {why}\n")),
        },
        _ => (
            "404 Not Found",
            TEXT,
            "try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed;

    impl Collector for Fixed {
        fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            gauge(&mut e, "raft_term", "term", 7.0)?;
            let by = [("running".to_string(), 2.0), ("failed".to_string(), 1.0)]
                .into_iter()
                .collect();
            gauges_by(&mut e, "tasks", "tasks by state", "state", &by)
        }
    }

    #[test]
    fn routes() {
        let r = manager_registry(Fixed);
        let ok: Readiness = std::sync::Arc::new(|| Ok(()));
        let no: Readiness = std::sync::Arc::new(|| Err("no leader".into()));
        let (status, _, body) = route("GET", "/metrics", &r, &ok);
        assert_eq!(status, "200 OK");
        for want in [
            "warren_raft_term 7",
            "warren_tasks{state=\"running\"} 2",
            "# TYPE warren_raft_leader_changes counter",
            "warren_raft_proposal_seconds_bucket",
            "# EOF",
        ] {
            assert!(body.contains(want), "{want} missing from:\n{body}");
        }
        assert_eq!(route("GET", "/healthz", &r, &no).0, "200 OK");
        assert_eq!(route("GET", "/readyz", &r, &ok).0, "200 OK");
        let (status, _, body) = route("GET", "/readyz", &r, &no);
        assert_eq!(
            (status, body.as_str()),
            ("503 Service Unavailable", "not ready: no leader\n")
        );
        assert_eq!(route("POST", "/metrics", &r, &ok).0, "405 Method Not Allowed");
        assert_eq!(route("GET", "/nope", &r, &ok).0, "404 Not Found");
    }
}
