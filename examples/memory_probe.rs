//! Memory of a manager under the load that once made it grow without bound, for
//! docs/benchmarks.md: RSS before, peak (VmHWM, reset between phases) and after, per phase.
//!
//!     cargo run --release --example memory_probe -- MANAGER_API MANAGER_PID PHASE
//!
//! PHASE: `updates` (100 updates with the largest env allowed, 32 KiB, then 100 with a
//! 3.5 MB env, which are refused), `streams` (200 assignment streams never read: 200 on one
//! node, of which all but 4 are refused, then 4 on each of 50 nodes; then all cancelled),
//! `churn` (three rounds of 10,000 creates and 10,000 deletes, 16 clients).

use std::sync::Arc;
use std::time::Duration;
use warren::client::Client;
use warren::proto::v1 as pb;

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resets the peak RSS the kernel tracks for `pid` (VmHWM), as root.
fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

struct Phase {
    pid: u32,
    name: String,
    before: u64,
}

impl Phase {
    fn start(pid: u32, name: &str) -> Phase {
        reset_peak(pid);
        Phase {
            pid,
            name: name.into(),
            before: status_kib(pid, "VmRSS:"),
        }
    }

    async fn end(self, settle: Duration) {
        let peak = status_kib(self.pid, "VmHWM:");
        tokio::time::sleep(settle).await;
        let after = status_kib(self.pid, "VmRSS:");
        println!(
            "phase={} rss_before_mib={:.1} rss_peak_mib={:.1} rss_after_mib={:.1}",
            self.name,
            self.before as f64 / 1024.0,
            peak as f64 / 1024.0,
            after as f64 / 1024.0
        );
    }
}

fn spec(name: &str, env_bytes: usize) -> pb::ServiceSpec {
    let mut env = std::collections::HashMap::new();
    if env_bytes > 0 {
        // Values of at most 16 KiB each (the per-value limit).
        for (k, chunk) in "x".repeat(env_bytes).as_bytes().chunks(16_000).enumerate() {
            env.insert(format!("V{k}"), String::from_utf8(chunk.to_vec()).unwrap());
        }
    }
    pb::ServiceSpec {
        name: name.into(),
        image: "busybox:latest".into(),
        replicas: 0,
        env: env.into_iter().collect(),
        ..Default::default()
    }
}

async fn update(c: &Client, spec: pb::ServiceSpec) -> Result<pb::Service, warren::client::ClientError> {
    c.update_service(&spec.name.clone(), spec, 0, false).await
}

async fn updates(c: &Client, pid: u32) -> anyhow::Result<()> {
    c.create_service(spec("big", 0)).await?;
    let p = Phase::start(pid, "updates_32KiB_env_x100");
    for _ in 0..100 {
        update(c, spec("big", 32 * 1024 - 2_000)).await?;
    }
    p.end(Duration::from_secs(2)).await;
    let p = Phase::start(pid, "updates_3.5MB_env_x100_refused");
    let mut refused = 0;
    for _ in 0..100 {
        let mut s = spec("big", 0);
        s.env.insert("BIG".into(), "x".repeat(3_500_000));
        refused += update(c, s).await.is_err() as u32;
    }
    p.end(Duration::from_secs(2)).await;
    println!("refused_3.5MB_updates={refused}");
    Ok(())
}

async fn streams(api: &str, c: &Client, pid: u32) -> anyhow::Result<()> {
    // 50 worker identities, each with its own certificate (as `worker start` gets one), and
    // registered with it: only a worker may watch its own node's assignments.
    let token = c.join_token(pb::Role::Worker, 3600, false).await?.token;
    let dir = std::env::temp_dir().join(format!("memory-probe-{}", std::process::id()));
    let mut transports = std::collections::BTreeMap::new();
    for n in 0..50 {
        let node = format!("probe-{n}");
        let cred = warren::security::enroll::enroll(
            &dir.join(&node),
            &token,
            &[api],
            warren::core::Role::Worker,
            &node,
        )
        .await?;
        let transport = warren::security::Transport::new(&cred)?;
        let req = pb::RegisterNodeRequest {
            node_id: node.clone(),
            address: format!("10.9.0.{n}:1"),
            ..Default::default()
        };
        Client::new(&[api], transport.clone())?
            .call(|mut s| {
                let req = req.clone();
                async move { s.nodes.register_node(req).await }
            })
            .await?;
        transports.insert(node, transport);
    }
    let open = |node: String| {
        let api = api.to_string();
        let transport = transports[&node].clone();
        async move {
            let ep = tonic::transport::Endpoint::from_shared(format!("http://{api}"))?;
            let ch = transport.connect(&ep).await?;
            let mut t = pb::task_service_client::TaskServiceClient::new(ch);
            let r = t
                .watch_assignments(pb::WatchAssignmentsRequest {
                    node_id: node,
                    resume_after_seq: 0,
                    ..Default::default()
                })
                .await;
            anyhow::Ok(r.ok().map(|r| r.into_inner()))
        }
    };
    let p = Phase::start(pid, "streams_200_unread_one_node");
    let mut held = Vec::new();
    for _ in 0..200 {
        held.push(open("probe-0".into()).await?);
    }
    let accepted = held.iter().filter(|s| s.is_some()).count();
    tokio::time::sleep(Duration::from_secs(10)).await;
    drop(held);
    p.end(Duration::from_secs(5)).await;
    println!("streams_accepted_one_node={accepted}");
    let p = Phase::start(pid, "streams_200_unread_50_nodes");
    let mut held = Vec::new();
    for i in 0..200 {
        held.push(open(format!("probe-{}", i % 50)).await?);
    }
    let accepted = held.iter().filter(|s| s.is_some()).count();
    tokio::time::sleep(Duration::from_secs(10)).await;
    drop(held);
    p.end(Duration::from_secs(5)).await;
    println!("streams_accepted_50_nodes={accepted}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn churn(managers: &[String], pid: u32) -> anyhow::Result<()> {
    const CLIENTS: usize = 16;
    const COUNT: usize = 10_000;
    for round in 1..=3 {
        let p = Phase::start(pid, &format!("churn_round_{round}_10000_creates_deletes"));
        let started = std::time::Instant::now();
        let mut tasks = Vec::new();
        for k in 0..CLIENTS {
            let client = Arc::new(Client::new(
                managers,
                warren::security::Transport::new(&warren::security::operator_credential(None)?)?,
            )?);
            tasks.push(tokio::spawn(async move {
                let mut i = k;
                while i < COUNT {
                    let name = format!("c{round}-{i}");
                    client.create_service(spec(&name, 0)).await?;
                    client.delete_service(&name).await?;
                    i += CLIENTS;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        println!(
            "churn_round={round} writes_per_s={:.0}",
            2.0 * COUNT as f64 / started.elapsed().as_secs_f64()
        );
        p.end(Duration::from_secs(3)).await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, api, pid, phase] = &args[..] else {
        anyhow::bail!("usage: memory_probe MANAGER_API MANAGER_PID updates|streams|churn");
    };
    let pid: u32 = pid.parse()?;
    let managers = vec![api.clone()];
    let c = Client::new(
        &managers,
        warren::security::Transport::new(&warren::security::operator_credential(None)?)?,
    )?;
    match phase.as_str() {
        "updates" => updates(&c, pid).await,
        "streams" => streams(api, &c, pid).await,
        "churn" => churn(&managers, pid).await,
        other => anyhow::bail!("unknown phase {other}"),
    }
}
