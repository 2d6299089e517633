//! The simulator's stand-in for TLS (madsim's network has none): each simulated host
//! publishes the certificate of the credential it presents, the harness says which host has
//! which address, and a server reads the caller's certificate from the request's source
//! address. Proof of possession of the key is what TLS adds in production; the simulator
//! models hosts with no credential, another cluster's credential, and revoked ones.
//!
//! Until the harness turns checking on (`enforce`), requests are not refused in the
//! simulator; see docs/simulation.md.

use madsim::task::NodeId;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

#[derive(Default)]
struct Registry {
    hosts: BTreeMap<IpAddr, NodeId>,
    published: BTreeMap<NodeId, Vec<u8>>,
    enforce: bool,
}

thread_local! {
    // madsim runs a whole simulation on one thread, so a thread-local registry isolates
    // simulations that the test harness runs in parallel (as the simulated disks do).
    static REGISTRY: RefCell<Registry> = RefCell::new(Registry::default());
}

fn with<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    REGISTRY.with(|r| f(&mut r.borrow_mut()))
}

/// Forgets everything (the start of each simulated run).
pub fn reset() {
    with(|r| *r = Registry::default());
}

/// The harness: the host `node` has address `ip`.
pub fn bind_host(ip: IpAddr, node: NodeId) {
    with(|r| r.hosts.insert(ip, node));
}

/// The harness: refuse what `core::authz` refuses from now on.
pub fn enforce(on: bool) {
    with(|r| r.enforce = on);
}

pub fn enforced() -> bool {
    with(|r| r.enforce)
}

/// The certificate the host at `ip` presents, if any.
pub fn credential_of(ip: IpAddr) -> Option<Vec<u8>> {
    with(|r| r.hosts.get(&ip).and_then(|n| r.published.get(n)).cloned())
}

#[derive(Debug)]
pub struct SimTls {
    pub cluster_id: String,
    pub roots: RwLock<Vec<Vec<u8>>>,
    own: RwLock<Option<Vec<u8>>>,
}

impl SimTls {
    pub fn new(cluster_id: &str, roots: Vec<Vec<u8>>, own: Option<Vec<u8>>) -> Arc<SimTls> {
        Arc::new(SimTls {
            cluster_id: cluster_id.to_string(),
            roots: RwLock::new(roots),
            own: RwLock::new(own),
        })
    }

    pub fn set_own(&self, cert_der: Vec<u8>) {
        *self.own.write().unwrap() = Some(cert_der);
        self.publish();
    }

    /// This host presents our certificate from now on.
    pub fn publish(&self) {
        if let Some(c) = self.own.read().unwrap().clone() {
            let node = madsim::plugin::node();
            with(|r| r.published.insert(node, c));
        }
    }
}
