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
        }
    }
}

pub fn shuffle<T>(v: &mut [T]) {
    for i in (1..v.len()).rev() {
        let j = (madsim::rand::random::<u64>() % (i as u64 + 1)) as usize;
        v.swap(i, j);
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
