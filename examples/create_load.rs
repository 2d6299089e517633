//! Load generator for docs/benchmarks.md: `C` concurrent clients, each on its own connection
//! with one request in flight, create `N` services in all through the gRPC API, and the
//! throughput is printed. The connections are opened (a read each) before the clock starts,
//! as `examples/etcd_load` does for etcd.
//!
//!     cargo run --release --example create_load -- 127.0.0.1:8080 CLIENTS COUNT PREFIX
//!
//! `CREATE_REPLICAS=N` sets the replicas of each service (default 1).

use std::sync::Arc;
use std::time::Instant;
use warren::client::Client;
use warren::proto::v1 as pb;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, manager, clients, count, prefix] = &args[..] else {
        anyhow::bail!("usage: create_load MANAGER[,MANAGER...] CLIENTS COUNT NAME_PREFIX");
    };
    let clients: usize = clients.parse()?;
    let count: usize = count.parse()?;
    let managers: Vec<String> = manager.split(',').map(String::from).collect();
    let credential = warren::security::operator_credential(None)?;
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        let client = Client::new(&managers, warren::security::Transport::new(&credential)?)?;
        client.ca_status().await?;
        conns.push(Arc::new(client));
    }
    // A probe's knob (docs/benchmarks.md): 0 replicas makes a create one Raft write, with no
    // task for the orchestrator to write after it.
    let replicas: i64 = std::env::var("CREATE_REPLICAS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (c, client) in conns.into_iter().enumerate() {
        let prefix = prefix.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = c;
            while i < count {
                let spec = pb::ServiceSpec {
                    name: format!("{prefix}-{i}"),
                    image: "busybox:latest".into(),
                    replicas,
                    ..Default::default()
                };
                client.create_service(spec).await?;
                i += clients;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "clients={clients} creates={count} seconds={secs:.3} creates_per_s={:.0}",
        count as f64 / secs
    );
    Ok(())
}
