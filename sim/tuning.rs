//! Failover measurement and the timer sweep behind docs/tuning.md.
//!
//! For each network profile and each candidate (heartbeat, election min, election max): over
//! many seeds, kill the leader of three managers at a random moment and record the time to a
//! new leader and to the first client write acknowledged (retried through the survivors, as
//! in scripts/failover-bench.sh), plus how many election rounds it took (more than one means a
//! split vote). Then one simulated hour of steady state per setting counts spurious leader
//! changes. `cargo sim -- --ignored tuning::sweep --nocapture` runs it and rewrites
//! docs/tuning.md and docs/tuning-failover.svg; WARREN_TUNING_SEEDS sets the seed count.

use crate::cluster::*;
use crate::faults::{rand_range, Profile};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
}

impl Timing {
    /// From `--heartbeat-interval-ms=N --election-timeout-min-ms=N --election-timeout-max-ms=N`.
    pub fn of_flags(flags: &[String]) -> Timing {
        let value = |name: &str| -> u64 {
            flags
                .iter()
                .find_map(|f| f.strip_prefix(&format!("--{name}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no --{name} in {flags:?}"))
        };
        Timing {
            heartbeat_ms: value("heartbeat-interval-ms"),
            election_min_ms: value("election-timeout-min-ms"),
            election_max_ms: value("election-timeout-max-ms"),
        }
    }

    fn flags(self) -> Vec<String> {
        vec![
            format!("--heartbeat-interval-ms={}", self.heartbeat_ms),
            format!("--election-timeout-min-ms={}", self.election_min_ms),
            format!("--election-timeout-max-ms={}", self.election_max_ms),
        ]
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Failover {
    pub new_leader_ms: f64,
    pub first_ack_ms: f64,
    /// Terms that passed between the kill and the new leader (1 = no split vote).
    pub rounds: u64,
}

/// (time, node, term) of every leadership, from the election hook.
fn record_leaders() -> Rc<RefCell<Vec<(Instant, u64, u64)>>> {
    let log = Rc::new(RefCell::new(Vec::new()));
    let l = log.clone();
    warren::sim_hooks::on_leader(move |node, term| l.borrow_mut().push((Instant::now(), node, term)));
    log
}

pub async fn failover_once(profile: Profile, timing: Timing) -> Failover {
    profile.apply();
    let leaders = record_leaders();
    let c = Cluster::start_with(3, "tuning-failover (sweep)", timing.flags()).await;
    let bursts = c.client_node.spawn(profile.run_bursts());
    let all = vec![1, 2, 3];
    let leader = c
        .on_client(agreed_leader(all.clone(), Duration::from_secs(60)))
        .await;
    // Kill at a random phase of the heartbeat cycle.
    tokio::time::sleep(Duration::from_millis(rand_range(0, 1_000))).await;
    let old_term = leaders.borrow().last().map_or(0, |l| l.2);
    c.kill(leader);
    let t0 = Instant::now();
    let survivors: Vec<u64> = all.into_iter().filter(|&i| i != leader).collect();
    let first_ack = c
        .on_client(async move {
            let client = client_of_all(survivors);
            loop {
                match create_service(&client, "after-kill", 1, Duration::from_secs(10)).await {
                    Some(Ok(_)) => return Instant::now(),
                    Some(Err(e)) if e.code() == tonic::Code::AlreadyExists => return Instant::now(),
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
        .await;
    bursts.abort();
    let (new_leader_at, new_term) = leaders
        .borrow()
        .iter()
        .find(|(_, node, term)| *term > old_term && *node != leader)
        .map(|(t, _, term)| (*t, *term))
        .expect("a new leader was reported before the write was acknowledged");
    Failover {
        new_leader_ms: (new_leader_at - t0).as_secs_f64() * 1e3,
        first_ack_ms: (first_ack - t0).as_secs_f64() * 1e3,
        rounds: new_term - old_term,
    }
}

/// Leader changes after the first election during `hours` of simulated steady state.
pub async fn spurious_leader_changes(profile: Profile, timing: Timing, hours: u64) -> usize {
    profile.apply();
    let leaders = record_leaders();
    let c = Cluster::start_with(3, "tuning-steady (sweep)", timing.flags()).await;
    c.on_client(agreed_leader(vec![1, 2, 3], Duration::from_secs(60)))
        .await;
    let settled = leaders.borrow().len();
    let bursts = c.client_node.spawn(profile.run_bursts());
    tokio::time::sleep(Duration::from_secs(3600 * hours)).await;
    bursts.abort();
    let n = leaders.borrow().len() - settled;
    n
}

fn run_seeds<T: Send + 'static, Fut: std::future::Future<Output = T> + 'static>(
    seeds: std::ops::Range<u64>,
    f: impl Fn() -> Fut,
) -> Vec<T> {
    seeds
        .map(|seed| {
            let rt = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
            let fut = f();
            let out = rt.block_on(fut);
            warren::sim_hooks::reset();
            out
        })
        .collect()
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

pub struct Row {
    pub profile: Profile,
    pub timing: Timing,
    pub seeds: usize,
    pub leader_ms: Vec<f64>,
    pub ack_ms: Vec<f64>,
    pub split_votes: usize,
    pub max_rounds: u64,
    pub spurious_per_hour: usize,
}

pub fn candidates(profile: Profile) -> Vec<Timing> {
    let t = |heartbeat_ms, election_min_ms, election_max_ms| Timing {
        heartbeat_ms,
        election_min_ms,
        election_max_ms,
    };
    match profile {
        Profile::Lan | Profile::Flaky => {
            vec![
                t(50, 200, 400),
                t(50, 300, 600),
                t(50, 400, 700),
                t(50, 400, 800),
                t(100, 500, 900),
            ]
        }
        Profile::EdgeWan => vec![
            t(300, 600, 1_200),
            t(300, 600, 1_500),
            t(300, 800, 1_400),
            t(300, 900, 1_800),
        ],
    }
}

pub fn measure(profile: Profile, timing: Timing, seeds: u64) -> Row {
    let results = run_seeds(0..seeds, || failover_once(profile, timing));
    let mut leader_ms: Vec<f64> = results.iter().map(|r| r.new_leader_ms).collect();
    let mut ack_ms: Vec<f64> = results.iter().map(|r| r.first_ack_ms).collect();
    leader_ms.sort_by(f64::total_cmp);
    ack_ms.sort_by(f64::total_cmp);
    let spurious = run_seeds(0..1, || spurious_leader_changes(profile, timing, 1))[0];
    Row {
        profile,
        timing,
        seeds: results.len(),
        leader_ms,
        ack_ms,
        split_votes: results.iter().filter(|r| r.rounds > 1).count(),
        max_rounds: results.iter().map(|r| r.rounds).max().unwrap_or(0),
        spurious_per_hour: spurious,
    }
}

/// A CDF plot of kill -> first acknowledged write, one line per row, as SVG.
pub fn svg(rows: &[&Row]) -> String {
    let (w, h, pad) = (720.0, 420.0, 50.0);
    let x_max = rows.iter().map(|r| *r.ack_ms.last().unwrap()).fold(1.0, f64::max) * 1.05;
    let colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];
    let mut out = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n"
    );
    let (x0, y0, x1, y1) = (pad, h - pad, w - pad / 2.0, pad / 2.0);
    out += &format!("<line x1='{x0}' y1='{y0}' x2='{x1}' y2='{y0}' stroke='black'/><line x1='{x0}' y1='{y0}' x2='{x0}' y2='{y1}' stroke='black'/>\n");
    for k in 0..=5 {
        let v = x_max * k as f64 / 5.0;
        let x = x0 + (x1 - x0) * k as f64 / 5.0;
        out += &format!(
            "<text x='{x}' y='{}' text-anchor='middle'>{:.1} s</text>\n",
            y0 + 16.0,
            v / 1e3
        );
        let f = k as f64 / 5.0;
        let y = y0 - (y0 - y1) * f;
        out += &format!(
            "<text x='{}' y='{y}' text-anchor='end'>{:.0}%</text>\n",
            x0 - 4.0,
            f * 100.0
        );
    }
    out += &format!("<text x='{}' y='{}' text-anchor='middle'>kill -9 of the leader to first acknowledged write (CDF over seeds)</text>\n", (x0 + x1) / 2.0, h - 8.0);
    for (i, r) in rows.iter().enumerate() {
        let n = r.ack_ms.len() as f64;
        let pts: Vec<String> = r
            .ack_ms
            .iter()
            .enumerate()
            .map(|(k, v)| {
                format!(
                    "{:.1},{:.1}",
                    x0 + (x1 - x0) * v / x_max,
                    y0 - (y0 - y1) * (k as f64 + 1.0) / n
                )
            })
            .collect();
        let c = colours[i % colours.len()];
        out += &format!(
            "<polyline fill='none' stroke='{c}' stroke-width='2' points='{}'/>\n",
            pts.join(" ")
        );
        out += &format!(
            "<text x='{}' y='{}' fill='{c}'>{} hb {} ms, election {}-{} ms</text>\n",
            x1 - 260.0,
            y1 + 16.0 + 16.0 * i as f64,
            r.profile.name(),
            r.timing.heartbeat_ms,
            r.timing.election_min_ms,
            r.timing.election_max_ms
        );
    }
    out + "</svg>\n"
}

/// The timing the data supports for a group of profiles that share one setting (LAN and
/// flaky are both "a LAN": the daemon defaults must serve both): no spurious leader change in
/// the steady-state hour on any profile of the group, no election livelock (every failover
/// done within MAX_ROUNDS rounds), and of those the lowest p99 kill -> first ack on the group's
/// first profile.
pub fn choose(rows: &[Row], group: &[Profile]) -> Option<Timing> {
    let timings: Vec<Timing> = rows
        .iter()
        .filter(|r| r.profile == group[0])
        .map(|r| r.timing)
        .collect();
    timings
        .into_iter()
        .filter(|t| {
            rows.iter()
                .filter(|r| group.contains(&r.profile) && r.timing == *t)
                .all(|r| r.spurious_per_hour == 0 && r.max_rounds <= MAX_ROUNDS)
        })
        .min_by(|a, b| {
            let p99 = |t: &Timing| {
                let r = rows
                    .iter()
                    .find(|r| r.profile == group[0] && r.timing == *t)
                    .unwrap();
                percentile(&r.ack_ms, 0.99)
            };
            p99(a).total_cmp(&p99(b))
        })
}

/// More election rounds than this in one failover counts as a livelock.
pub const MAX_ROUNDS: u64 = 8;

pub const GROUPS: [&[Profile]; 2] = [&[Profile::Lan, Profile::Flaky], &[Profile::EdgeWan]];

#[test]
#[ignore = "slow: rewrites docs/tuning.md; run with cargo sim -- --ignored tuning::sweep --nocapture"]
fn sweep() {
    let seeds: u64 = std::env::var("WARREN_TUNING_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let mut rows = Vec::new();
    for profile in Profile::ALL {
        for timing in candidates(profile) {
            let start = std::time::Instant::now();
            let row = measure(profile, timing, seeds);
            eprintln!(
                "{} {:?}: {} seeds in {:.1} s wall; ack p50 {:.0} p99 {:.0} max {:.0} ms; split votes {} (max rounds {}); spurious/h {}",
                profile.name(),
                timing,
                row.seeds,
                start.elapsed().as_secs_f64(),
                percentile(&row.ack_ms, 0.5),
                percentile(&row.ack_ms, 0.99),
                row.ack_ms.last().unwrap(),
                row.split_votes,
                row.max_rounds,
                row.spurious_per_hour
            );
            rows.push(row);
        }
    }
    let chosen: Vec<(&[Profile], Option<Timing>)> = GROUPS.iter().map(|g| (*g, choose(&rows, g))).collect();
    let doc = crate::tuning_doc::render(&rows, seeds, &chosen);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    std::fs::write(dir.join("tuning.md"), doc).unwrap();
    let is_chosen = |r: &Row| {
        chosen
            .iter()
            .any(|(g, t)| g.contains(&r.profile) && *t == Some(r.timing))
    };
    let defaults: Vec<&Row> = rows.iter().filter(|r| is_chosen(r)).collect();
    std::fs::write(dir.join("tuning-failover.svg"), svg(&defaults)).unwrap();
}

/// The daemon's default timers on one profile over many seeds (WARREN_TUNING_SEEDS, default
/// 1000): `cargo sim -- --ignored tuning::defaults_over_many_seeds --nocapture`.
#[test]
#[ignore = "slow: a 1,000-seed failover measurement of the daemon defaults"]
fn defaults_over_many_seeds() {
    use clap::Parser;
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        timing: warren::manager::TimingOpts,
    }
    let d = Flags::parse_from(["x"]).timing;
    let timing = Timing {
        heartbeat_ms: d.heartbeat_interval_ms,
        election_min_ms: d.election_timeout_min_ms,
        election_max_ms: d.election_timeout_max_ms,
    };
    let seeds: u64 = std::env::var("WARREN_TUNING_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    // The daemon defaults on LAN and flaky; the recommended flags on the edge WAN.
    for (profile, timing) in [
        (Profile::Lan, timing),
        (Profile::Flaky, timing),
        (
            Profile::EdgeWan,
            Timing::of_flags(&Profile::EdgeWan.timing_flags()),
        ),
    ] {
        let results = run_seeds(0..seeds, || failover_once(profile, timing));
        let mut ack: Vec<f64> = results.iter().map(|r| r.first_ack_ms).collect();
        let mut leader: Vec<f64> = results.iter().map(|r| r.new_leader_ms).collect();
        ack.sort_by(f64::total_cmp);
        leader.sort_by(f64::total_cmp);
        println!(
            "{} {:?} over {} seeds: new leader p50 {:.0} p99 {:.0} max {:.0} ms; first ack p50 {:.0} p95 {:.0} p99 {:.0} max {:.0} ms; split votes {} (max rounds {})",
            profile.name(),
            timing,
            seeds,
            percentile(&leader, 0.5),
            percentile(&leader, 0.99),
            leader.last().unwrap(),
            percentile(&ack, 0.5),
            percentile(&ack, 0.95),
            percentile(&ack, 0.99),
            ack.last().unwrap(),
            results.iter().filter(|r| r.rounds > 1).count(),
            results.iter().map(|r| r.rounds).max().unwrap_or(0)
        );
    }
}
