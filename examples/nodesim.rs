//! Many workers in one process, for scale tests (docs/benchmarks.md, "Scale"), in the spirit
//! of Nomad's nodesim: each is the real worker agent (`warren::worker::start`) with its own
//! node id, data dir, certificate, gRPC connection, registration, heartbeats and assignment
//! stream, against real managers; only the containers are simulated (`SimRuntime`).
//!
//!     cargo run --release --example nodesim -- --manager A,B,C --token TOKEN \
//!         --workers 5000 --data-dir /tmp/nodesim
//!
//! Workers start at `--start-per-s`; a restart with the same `--data-dir` resumes them
//! (no token needed). An agent that ends with an error is started again after a second.
//! Every `--report-s` seconds it prints how many agents run and how many times one ended
//! with an error. It runs until SIGINT/SIGTERM.

#[cfg(not(madsim))]
use clap::Parser;
#[cfg(not(madsim))]
use std::{
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
    sync::Arc,
    time::Duration,
};

#[cfg(not(madsim))]
#[derive(Parser)]
struct Opts {
    /// Manager API addresses, comma-separated.
    #[arg(long)]
    manager: String,
    /// A worker join token (needed for workers whose data dir is new).
    #[arg(long)]
    token: Option<String>,
    #[arg(long, default_value_t = 100)]
    workers: usize,
    /// Workers' node ids are PREFIX-0, PREFIX-1, ...
    #[arg(long, default_value = "sim")]
    prefix: String,
    /// Each worker's data dir is DATA_DIR/NODE_ID.
    #[arg(long)]
    data_dir: PathBuf,
    /// Workers started per second.
    #[arg(long, default_value_t = 50)]
    start_per_s: u64,
    /// CPUs each worker offers.
    #[arg(long, default_value_t = 16.0)]
    cpus: f64,
    /// Memory each worker offers, in GiB.
    #[arg(long, default_value_t = 64)]
    memory_gib: u64,
    #[arg(long, default_value_t = 10)]
    report_s: u64,
    /// Each agent's `--check-interval-ms`: 5,000 agents checking every 200 ms took most of
    /// a core on this 2-core machine, beside the managers they load.
    #[arg(long, default_value_t = 2_000)]
    check_interval_ms: u64,
}

#[cfg(madsim)]
fn main() {}

#[cfg(not(madsim))]
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let opts = Opts::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let managers: Vec<String> = opts.manager.split(',').map(String::from).collect();
    let capacity = warren::core::Resources {
        cpu_millis: (opts.cpus * 1000.0) as u64,
        memory_bytes: opts.memory_gib << 30,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let running = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut agents = Vec::with_capacity(opts.workers);
    let gap = Duration::from_micros(1_000_000 / opts.start_per_s.max(1));
    let started = std::time::Instant::now();
    let reporter = {
        let (running, failed, every) = (running.clone(), failed.clone(), opts.report_s.max(1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(every)).await;
                println!(
                    "t={:.0}s agents_running={} agent_failures={}",
                    started.elapsed().as_secs_f64(),
                    running.load(Ordering::Relaxed),
                    failed.load(Ordering::Relaxed)
                );
            }
        })
    };
    for i in 0..opts.workers {
        let node_id = format!("{}-{i}", opts.prefix);
        let wopts = warren::worker::WorkerOpts {
            token: opts.token.clone(),
            managers: managers.clone(),
            data_dir: opts.data_dir.join(&node_id),
            node_id,
            cpus: None,
            memory: None,
            labels: vec![],
            address: String::new(),
            runtime: warren::worker::RuntimeKind::Sim,
            containerd_socket: PathBuf::new(),
            containerd_namespace: String::new(),
            registry_auth_file: None,
            insecure_registries: vec![],
            autonomy_after_ms: 3_000,
            metrics_addr: None,
            check_interval_ms: opts.check_interval_ms,
        };
        let stop = stop_rx.clone();
        let (running, failed) = (running.clone(), failed.clone());
        agents.push(tokio::spawn(async move {
            let id = wopts.node_id.clone();
            // An agent that ends with an error starts again after a second, as a worker
            // under systemd with Restart=on-failure would (its containers live in the
            // process: a restart starts them again).
            loop {
                let runtime = Arc::new(warren::worker::sim_runtime::SimRuntime::default());
                running.fetch_add(1, Ordering::Relaxed);
                let mut stopped = stop.clone();
                let res = warren::worker::start(wopts.clone(), capacity, runtime, async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await;
                running.fetch_sub(1, Ordering::Relaxed);
                match res {
                    Ok(()) => return,
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("worker {id} ended: {e:#}; starting it again in 1 s");
                    }
                }
                if *stop.borrow() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }));
        tokio::time::sleep(gap).await;
    }
    println!(
        "all {} agents started after {:.1}s",
        opts.workers,
        started.elapsed().as_secs_f64()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    let _ = stop_tx.send(true);
    for a in agents {
        let _ = a.await;
    }
    reporter.abort();
    Ok(())
}
