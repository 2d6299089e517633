//! What a planned stop of the leader costs writers (docs/benchmarks.md, "Graceful leader
//! handoff"): one client writes back to back through the managers that stay up; after
//! `WARMUP_MS` of steady writes the probe sends SIGTERM to the leader's process and keeps
//! writing for `AFTER_MS`. It prints, in milliseconds:
//! - `first_ack_ms`: from the signal to the acknowledgement of the first write sent after it;
//! - `max_gap_ms`: the longest time without an acknowledgement, from the last one before the
//!   signal on (what a writer notices);
//! - `failed`: writes that ended in an error.
//!
//!     cargo run --release --example stop_probe -- SURVIVOR[,SURVIVOR...] LEADER_PID
//!
//! `scripts/failover-bench.sh` runs it, and runs `scripts/etcd-stop-probe.py`, which does
//! the same against etcd, in the same run.

use std::time::{Duration, Instant};
use warren::client::Client;
use warren::proto::v1 as pb;

const WARMUP_MS: u64 = 300;
const AFTER_MS: u64 = 1_500;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, survivors, pid] = &args[..] else {
        anyhow::bail!("usage: stop_probe SURVIVOR[,SURVIVOR...] LEADER_PID");
    };
    let pid: i32 = pid.parse()?;
    let managers: Vec<&str> = survivors.split(',').collect();
    let client = Client::new(
        &managers,
        warren::security::Transport::new(&warren::security::operator_credential(None)?)?,
    )?;
    let start = Instant::now();
    let mut stopped_at: Option<Instant> = None;
    let mut last_ack = start;
    let mut max_gap = Duration::ZERO;
    let mut first_ack: Option<Duration> = None;
    let mut failed = 0u32;
    let prefix = format!("probe-{pid}-{}", warren::manager::new_id());
    // STOP_PROBE_TRACE=1: each write acknowledged within 100 ms of the signal, on stderr.
    let trace = std::env::var_os("STOP_PROBE_TRACE").is_some();
    let mut written = 0;
    for i in 0.. {
        written = i;
        let now = Instant::now();
        match stopped_at {
            None if now.duration_since(start) >= Duration::from_millis(WARMUP_MS) => {
                // The clock starts before `kill` runs: its own start-up counts against us.
                stopped_at = Some(Instant::now());
                if trace {
                    eprintln!(
                        "signal at {:?}",
                        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?
                    );
                }
                let status = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()?;
                anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
            }
            Some(t0) if now.duration_since(t0) >= Duration::from_millis(AFTER_MS) => break,
            _ => {}
        }
        let sent = Instant::now();
        let spec = pb::ServiceSpec {
            name: format!("{prefix}-{i}"),
            image: "busybox:latest".into(),
            replicas: 0,
            ..Default::default()
        };
        match client.create_service(spec).await {
            Ok(_) => {
                let acked = Instant::now();
                if let (Some(t0), true) = (stopped_at, trace) {
                    // Milliseconds from the signal, negative before it.
                    let rel = |t: Instant| {
                        if t >= t0 {
                            t.duration_since(t0).as_secs_f64() * 1000.0
                        } else {
                            -(t0.duration_since(t).as_secs_f64() * 1000.0)
                        }
                    };
                    if acked.duration_since(t0) < Duration::from_millis(100) {
                        eprintln!(
                            "write {i}: sent {:+.1} ms acked {:+.1} ms after the signal",
                            rel(sent),
                            rel(acked)
                        );
                    }
                }
                if let Some(t0) = stopped_at {
                    max_gap = max_gap.max(acked.duration_since(last_ack));
                    if first_ack.is_none() && sent >= t0 {
                        first_ack = Some(acked.duration_since(t0));
                    }
                }
                last_ack = acked;
            }
            Err(e) => {
                failed += 1;
                eprintln!("write {i} failed: {e}");
            }
        }
    }
    // Every trial starts from the same state: what this one created goes again (untimed),
    // or each trial's writes would land on a bigger state than the last one's.
    let client = std::sync::Arc::new(client);
    let mut deletes = Vec::new();
    for k in 0..16 {
        let (client, prefix) = (client.clone(), prefix.clone());
        deletes.push(tokio::spawn(async move {
            let mut i = k;
            while i < written {
                let _ = client.delete_service(&format!("{prefix}-{i}")).await;
                i += 16;
            }
        }));
    }
    for d in deletes {
        d.await?;
    }
    let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
    println!(
        "first_ack_ms={} max_gap_ms={} failed={failed}",
        first_ack.map_or("none".to_string(), ms),
        ms(max_gap)
    );
    Ok(())
}
