//! The etcd half of `scripts/write-bench.sh`: `C` concurrent clients, each on its own
//! connection, put `N` keys in all (200-byte values) back to back, one request in flight per
//! client, as `examples/create_load` does against Warren. Prints the throughput in the same
//! format.
//!
//!     cargo run --release --example etcd_load -- ENDPOINT CLIENTS COUNT KEY_PREFIX
//!
//! With `ETCD_TLS_DIR` set (an `https://` endpoint), each connection is mutual TLS with
//! `ca.pem`, `client.pem` and `client-key.pem` from that directory, as every Warren call is.

#[cfg(not(madsim))]
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    use std::time::Instant;
    let args: Vec<String> = std::env::args().collect();
    let [_, endpoint, clients, count, prefix] = &args[..] else {
        anyhow::bail!("usage: etcd_load ENDPOINT CLIENTS COUNT KEY_PREFIX");
    };
    let clients: usize = clients.parse()?;
    let count: usize = count.parse()?;
    let value = vec![b'v'; 200];
    let options = match std::env::var_os("ETCD_TLS_DIR") {
        None => None,
        Some(dir) => {
            use anyhow::Context;
            let dir = std::path::PathBuf::from(dir);
            let read =
                |f: &str| std::fs::read(dir.join(f)).with_context(|| format!("reading {f} in ETCD_TLS_DIR"));
            let tls = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read("ca.pem")?))
                .identity(etcd_client::Identity::from_pem(
                    read("client.pem")?,
                    read("client-key.pem")?,
                ));
            Some(etcd_client::ConnectOptions::new().with_tls(tls))
        }
    };
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(etcd_client::Client::connect([endpoint.as_str()], options.clone()).await?);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (c, mut client) in conns.into_iter().enumerate() {
        let (prefix, value) = (prefix.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = c;
            while i < count {
                client.put(format!("{prefix}-{i}"), value.clone(), None).await?;
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
        "clients={clients} puts={count} seconds={secs:.3} puts_per_s={:.0}",
        count as f64 / secs
    );
    Ok(())
}

// The simulator build has no real sockets for etcd's client.
#[cfg(madsim)]
fn main() {}
