//! Network profiles and faults, drawn from the seed.
//!
//! | profile   | one-way latency | extra                                   |
//! |-----------|-----------------|-----------------------------------------|
//! | LAN       | 0.2–2 ms        | -                                       |
//! | edge WAN  | 20–150 ms       | -                                       |
//! | flaky     | 0.2–2 ms        | latency spikes to 100–400 ms, in bursts |
//!
//! madsim's packet loss drops whole messages of its reliable streams, which tonic does not
//! expect, so loss is modelled as clogging (links that deliver nothing for a while) instead.

use crate::cluster::Cluster;
use madsim::net::NetSim;
use std::ops::Range;
use std::time::Duration;
use warren::raft::disk::sim::DiskFault;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Lan,
    EdgeWan,
    Flaky,
}

impl Profile {
    pub const ALL: [Profile; 3] = [Profile::Lan, Profile::EdgeWan, Profile::Flaky];

    pub fn name(self) -> &'static str {
        match self {
            Profile::Lan => "LAN",
            Profile::EdgeWan => "edge WAN",
            Profile::Flaky => "flaky",
        }
    }

    pub fn base_latency(self) -> Range<Duration> {
        match self {
            Profile::Lan | Profile::Flaky => Duration::from_micros(200)..Duration::from_millis(2),
            Profile::EdgeWan => Duration::from_millis(20)..Duration::from_millis(150),
        }
    }

    /// Daemon timer flags suited to the profile (openraft's AppendEntries timeout is the
    /// heartbeat interval, so the heartbeat must exceed the worst round trip).
    pub fn timing_flags(self) -> Vec<String> {
        let (hb, min, max) = match self {
            Profile::Lan | Profile::Flaky => (50, 400, 700),
            Profile::EdgeWan => (300, 600, 1_200),
        };
        vec![
            format!("--heartbeat-interval-ms={hb}"),
            format!("--election-timeout-min-ms={min}"),
            format!("--election-timeout-max-ms={max}"),
        ]
    }

    pub fn apply(self) {
        set_latency(self.base_latency());
    }

    /// For the flaky profile: a background task of latency bursts, forever.
    pub async fn run_bursts(self) {
        if self != Profile::Flaky {
            return;
        }
        loop {
            tokio::time::sleep(Duration::from_millis(rand_range(1_000, 5_000))).await;
            set_latency(Duration::from_millis(100)..Duration::from_millis(400));
            tokio::time::sleep(Duration::from_millis(rand_range(200, 1_500))).await;
            self.apply();
        }
    }
}

fn set_latency(r: Range<Duration>) {
    NetSim::current().update_config(|c| c.send_latency = r);
}

/// A seeded draw from `lo..hi`.
pub fn rand_range(lo: u64, hi: u64) -> u64 {
    lo + madsim::rand::random::<u64>() % (hi - lo)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    Kill(u64),
    /// Cut a node off from everyone (both directions).
    Isolate(u64),
    /// Two groups that cannot talk to each other.
    Split(Vec<u64>, Vec<u64>),
    /// `from` can no longer reach `to`; the other direction still works.
    OneWay {
        from: u64,
        to: u64,
    },
    /// Clog the nodes one by one (FoundationDB's swizzle-clog); healing unclogs them in a
    /// random order.
    Swizzle(Vec<u64>),
    /// The process stops being scheduled (SIGSTOP, a long GC or VM pause) and later resumes
    /// with the view it had.
    Pause(u64),
    /// The node's wall clock jumps by `offset_ms` and then drifts by `drift_ppm`; healing
    /// sets it right (a second jump).
    Clock {
        node: u64,
        offset_ms: i64,
        drift_ppm: i64,
    },
    /// Every fsync of the node takes 20–400 ms.
    SlowDisk(u64),
    /// The node's disk fails: its fsyncs fail (the next one, or all) or it is full. The
    /// manager must stop rather than carry on; healing repairs the disk and restarts it.
    Disk {
        node: u64,
        fault: DiskFault,
    },
}

impl Cluster {
    /// Applies `fault`; `heal` undoes it.
    pub async fn inject(&self, fault: &Fault) {
        let net = NetSim::current();
        match fault {
            Fault::Kill(i) => self.kill(*i),
            Fault::Isolate(i) => net.clog_node(self.node_id(*i)),
            Fault::Split(a, b) => {
                for x in a {
                    for y in b {
                        net.clog_link(self.node_id(*x), self.node_id(*y));
                        net.clog_link(self.node_id(*y), self.node_id(*x));
                    }
                }
            }
            Fault::OneWay { from, to } => net.clog_link(self.node_id(*from), self.node_id(*to)),
            Fault::Swizzle(nodes) => {
                for i in nodes {
                    net.clog_node(self.node_id(*i));
                    tokio::time::sleep(Duration::from_millis(rand_range(50, 300))).await;
                }
            }
            Fault::Pause(i) => self.handle.pause(self.node_id(*i)),
            Fault::Clock {
                node,
                offset_ms,
                drift_ppm,
            } => warren::sim_hooks::set_clock_skew(
                self.node_id(*node),
                Some(warren::sim_hooks::ClockSkew {
                    offset_ms: *offset_ms,
                    drift_ppm: *drift_ppm,
                    since: tokio::time::Instant::now(),
                }),
            ),
            Fault::SlowDisk(i) => warren::sim_hooks::set_node_disk_latency(
                self.node_id(*i),
                Some(warren::sim_hooks::DiskLatency {
                    base_us: 20_000..400_000,
                    spike_one_in: 0,
                    spike_ms: 0..1,
                }),
            ),
            Fault::Disk { node, fault } => {
                // Its daemon is expected to stop with an error, not to panic the test.
                self.may_fail.lock().unwrap().insert(*node);
                warren::raft::disk::sim::set_fault(&manager_dir(*node), *fault);
            }
        }
    }

    pub async fn heal(&self, fault: &Fault) {
        let net = NetSim::current();
        match fault {
            Fault::Kill(i) => self.restart(*i),
            Fault::Isolate(i) => net.unclog_node(self.node_id(*i)),
            Fault::Split(a, b) => {
                for x in a {
                    for y in b {
                        net.unclog_link(self.node_id(*x), self.node_id(*y));
                        net.unclog_link(self.node_id(*y), self.node_id(*x));
                    }
                }
            }
            Fault::OneWay { from, to } => net.unclog_link(self.node_id(*from), self.node_id(*to)),
            Fault::Swizzle(nodes) => {
                let mut order = nodes.clone();
                shuffle(&mut order);
                for i in order {
                    net.unclog_node(self.node_id(i));
                    tokio::time::sleep(Duration::from_millis(rand_range(50, 300))).await;
                }
            }
            Fault::Pause(i) => self.handle.resume(self.node_id(*i)),
            Fault::Clock { node, .. } => warren::sim_hooks::set_clock_skew(self.node_id(*node), None),
            Fault::SlowDisk(i) => warren::sim_hooks::set_node_disk_latency(self.node_id(*i), None),
            Fault::Disk { node, .. } => {
                let errors = warren::raft::disk::sim::set_fault(&manager_dir(*node), DiskFault::default());
                let db = manager_dir(*node).join(warren::manager::DB_FILE);
                // Errors on other files (the committed-index marker, written to a new file
                // and renamed only once synced) leave the old copy valid and are retried.
                if errors.get(&db).is_some_and(|&n| n > 0) {
                    // Fenced: a manager whose database returned an error stops (within its
                    // core check interval) instead of serving on as if the write had happened.
                    let failures = self.failures.clone();
                    let node = *node;
                    let why = self
                        .on_client(crate::cluster::wait_for(
                            "the manager to stop after its disk failed",
                            Duration::from_secs(5),
                            move || {
                                let f = failures.lock().unwrap().get(&node).cloned();
                                async move { f }
                            },
                        ))
                        .await;
                    assert!(
                        why.contains("Raft core stopped")
                            || why.contains("disk")
                            || why.contains("simulated"),
                        "manager {node} stopped for another reason: {why}"
                    );
                    eprintln!(
                        "manager {node} fenced itself after {} database error(s): {why}",
                        errors[&db]
                    );
                }
                self.failures.lock().unwrap().remove(node);
                self.restart(*node);
                self.may_fail.lock().unwrap().remove(node);
            }
        }
    }
}

fn manager_dir(i: u64) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/sim/manager-{i}"))
}

pub fn shuffle<T>(v: &mut [T]) {
    for i in (1..v.len()).rev() {
        let j = (madsim::rand::random::<u64>() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// A fault of the machine rather than the network, drawn from the seed for managers
/// `1..=n`, given the current leader.
pub fn random_machine_fault(n: u64, leader: u64) -> Fault {
    let any = 1 + madsim::rand::random::<u64>() % n;
    let victim = if madsim::rand::random::<bool>() {
        leader
    } else {
        any
    };
    match madsim::rand::random::<u64>() % 4 {
        0 => Fault::Pause(victim),
        1 => {
            // Up to two hours either way, drifting up to 500 ppm.
            let offset_ms = rand_range(1_000, 7_200_000) as i64;
            let sign = if madsim::rand::random::<bool>() { 1 } else { -1 };
            Fault::Clock {
                node: victim,
                offset_ms: sign * offset_ms,
                drift_ppm: rand_range(0, 1_000) as i64 - 500,
            }
        }
        2 => Fault::SlowDisk(victim),
        _ => Fault::Disk {
            node: victim,
            fault: match madsim::rand::random::<u64>() % 3 {
                0 => DiskFault {
                    fail_syncs: 1,
                    full: false,
                },
                1 => DiskFault {
                    fail_syncs: u32::MAX,
                    full: false,
                },
                _ => DiskFault {
                    fail_syncs: 0,
                    full: true,
                },
            },
        },
    }
}

/// One fault drawn from the seed for a cluster of managers `1..=n`, given the current leader.
pub fn random_fault(n: u64, leader: u64) -> Fault {
    let mut ids: Vec<u64> = (1..=n).collect();
    shuffle(&mut ids);
    match madsim::rand::random::<u64>() % 6 {
        0 => Fault::Kill(leader),
        1 => Fault::Kill(ids[0]),
        2 => Fault::Isolate(leader),
        3 => {
            let cut = 1 + (madsim::rand::random::<u64>() % (n - 1)) as usize;
            Fault::Split(ids[..cut].to_vec(), ids[cut..].to_vec())
        }
        4 => Fault::OneWay {
            from: leader,
            to: ids.iter().copied().find(|i| *i != leader).unwrap(),
        },
        _ => Fault::Swizzle(ids[..(n as usize).div_ceil(2)].to_vec()),
    }
}
