//! What a worker shows on `--metrics-addr` (`crate::metrics`): its runtime operations
//! (timed by `runtime::Timed`), whether its runtime answers, and when it is ready: it is
//! registered (it runs past registration only) and its runtime answered the last probe.

// The simulator serves no HTTP: what only the endpoint uses is unused there.
#![cfg_attr(madsim, allow(dead_code))]

use super::runtime::ContainerRuntime;
use crate::metrics::gauge;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use std::sync::{Arc, Mutex};

/// How often, and how long at most, the runtime is asked to list its containers.
pub const RUNTIME_PROBE_MS: u64 = 2_000;

type Probe = Arc<Mutex<Result<(), String>>>;

#[derive(Debug)]
struct StateMetrics {
    probe: Probe,
}

impl Collector for StateMetrics {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let ok = self.probe.lock().unwrap().is_ok();
        gauge(
            &mut e,
            "worker_runtime_reachable",
            "1 when the container runtime answered the last probe",
            f64::from(u8::from(ok)),
        )
    }
}

#[cfg(not(madsim))]
async fn probe_runtime(runtime: Arc<dyn ContainerRuntime>, probe: Probe) {
    let every = std::time::Duration::from_millis(RUNTIME_PROBE_MS);
    loop {
        let r = match tokio::time::timeout(every, runtime.list()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("the container runtime fails: {e}")),
            Err(_) => Err(format!(
                "the container runtime did not answer within {} ms",
                every.as_millis()
            )),
        };
        *probe.lock().unwrap() = r;
        tokio::time::sleep(every).await;
    }
}

/// Serves `--metrics-addr` on the socket bound at the start, and probes the runtime; both
/// end when the returned guards are dropped.
#[cfg(not(madsim))]
pub fn serve(
    listener: crate::metrics::Listener,
    runtime: Arc<dyn ContainerRuntime>,
) -> [crate::AbortOnDrop; 2] {
    let probe: Probe = Arc::new(Mutex::new(Err(
        "the container runtime has not been probed yet".into()
    )));
    let prober = tokio::spawn(probe_runtime(runtime, probe.clone()));
    let registry = crate::metrics::worker_registry(StateMetrics { probe: probe.clone() });
    let ready: crate::metrics::Readiness = Arc::new(move || probe.lock().unwrap().clone());
    let server = tokio::spawn(crate::metrics::serve(listener, registry, ready));
    [crate::AbortOnDrop(prober), crate::AbortOnDrop(server)]
}

/// The simulator has no HTTP endpoint: the flag is accepted and ignored.
#[cfg(madsim)]
pub fn serve(
    _listener: crate::metrics::Listener,
    _runtime: Arc<dyn ContainerRuntime>,
) -> [crate::AbortOnDrop; 0] {
    []
}
