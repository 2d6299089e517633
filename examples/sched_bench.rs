//! Scheduler and reconciler throughput for docs/benchmarks.md (pure code, no I/O):
//! 50,000 tasks over 5,000 nodes (10 services of 5,000 replicas, with CPU reservations and a
//! label constraint on half of them), as in issue #16's scale target.
//!
//! idle_round_ms: a round over everything with nothing to do; one_report_round_ms: the
//! leader's round (`round_from`) after one task reported; quiet_round_ms: after nothing.
//!
//!     cargo run --release --example sched_bench [TRIALS]

use std::collections::BTreeMap;
use std::time::Instant;
use warren::core::reconciler::{self, Liveness};
use warren::core::scheduler::Scheduler;
use warren::core::*;

const NODES: usize = 5_000;
const SERVICES: usize = 10;
const REPLICAS: i64 = 5_000;

fn state() -> ClusterState {
    let mut st = ClusterState::default();
    let mut index = 0;
    let mut apply = |st: &mut ClusterState, cmd| {
        index += 1;
        st.apply(index, cmd).expect("valid command");
    };
    for i in 0..NODES {
        let labels = BTreeMap::from([("zone".to_string(), if i % 2 == 0 { "a" } else { "b" }.to_string())]);
        apply(
            &mut st,
            Command::RegisterNode {
                id: format!("node-{i:04}"),
                role: Role::Worker,
                address: String::new(),
                labels,
                capacity: Resources {
                    cpu_millis: 64_000,
                    memory_bytes: 256 << 30,
                },
                now_ms: 0,
            },
        );
    }
    for s in 0..SERVICES {
        let mut spec = ServiceSpec {
            name: format!("svc-{s}"),
            image: "busybox".into(),
            replicas: REPLICAS,
            ..Default::default()
        };
        spec.resources.reservations.cpu_millis = 100;
        if s % 2 == 0 {
            spec.constraints = vec!["node.labels.zone==a".into()];
        }
        apply(
            &mut st,
            Command::CreateService {
                id: format!("s{s}"),
                spec,
                now_ms: 0,
            },
        );
    }
    st
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let trials: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let st = state();
    let total = SERVICES * REPLICAS as usize;
    let mut place_rates = Vec::new();
    let mut round_rates = Vec::new();
    let mut idle_round_ms = Vec::new();
    let mut report_round_ms = Vec::new();
    let mut quiet_round_ms = Vec::new();
    for t in 0..trials {
        // Scheduler alone: place every task.
        let start = Instant::now();
        let mut s = Scheduler::new(
            st.nodes.values(),
            st.tasks.values().map(|t| t.as_ref()),
            &st.services,
        );
        let mut placed = 0;
        for svc in st.services.values() {
            placed += s
                .place(svc, REPLICAS as usize)
                .iter()
                .filter(|r| r.is_ok())
                .count();
        }
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(placed, total, "every task fits");
        place_rates.push(total as f64 / secs);

        // A whole reconcile round from nothing: decide and build the 10,000 new tasks.
        let liveness: BTreeMap<String, Liveness> =
            st.nodes.keys().map(|k| (k.clone(), Liveness::Alive)).collect();
        let round = |state: &ClusterState, new_id: &mut dyn FnMut() -> String| {
            let input = reconciler::Input {
                state,
                now_ms: 0,
                leading_since_ms: 0,
                liveness: &liveness,
                duplicates: Default::default(),
            };
            reconciler::reconcile(&input, new_id)
        };
        let mut n = 0u64;
        let start = Instant::now();
        let changes = round(&st, &mut || {
            n += 1;
            format!("t{n:08}")
        });
        let secs2 = start.elapsed().as_secs_f64();
        assert_eq!(changes.len(), total);
        round_rates.push(total as f64 / secs2);

        // A round with nothing to do once every task is placed: what every periodic round
        // on a large converged cluster costs (the walk).
        let mut placed_st = st.clone();
        placed_st
            .apply(1_000_000, Command::Orchestrate { changes, now_ms: 0 })
            .expect("the round's changes apply");
        let start = Instant::now();
        let idle = round(&placed_st, &mut || unreachable!("nothing to create"));
        let idle_ms = start.elapsed().as_secs_f64() * 1e3;
        assert!(
            idle.is_empty(),
            "a converged cluster needs no change: {:?}",
            idle.first()
        );
        idle_round_ms.push(idle_ms);

        // What the leader runs: a round that looks only at what changed since the last
        // (`round_from`), after one task of one service (5,000 replicas) reports.
        let input = |state| reconciler::Input {
            state,
            now_ms: 0,
            leading_since_ms: 0,
            liveness: &liveness,
            duplicates: Default::default(),
        };
        let mut memory = reconciler::Memory::default();
        let mut none = || unreachable!("nothing to create");
        reconciler::round_from(&input(&placed_st), &mut memory, &mut none);
        let mut reported = placed_st.clone();
        let task = reported.tasks.values().next().expect("tasks").clone();
        reported
            .apply(
                1_000_001,
                Command::ReportTasks {
                    node_id: task.node_id.clone(),
                    reports: vec![warren::core::state::TaskReport {
                        task_id: task.id.clone(),
                        state: TaskState::Running,
                        message: String::new(),
                        exit_code: 0,
                        container_id: String::new(),
                        health: None,
                    }],
                    now_ms: 0,
                },
            )
            .expect("the report applies");
        let start = Instant::now();
        let (after_report, _) = reconciler::round_from(&input(&reported), &mut memory, &mut none);
        let report_ms = start.elapsed().as_secs_f64() * 1e3;
        assert!(after_report.is_empty() && memory.looked() == (1, false));
        let start = Instant::now();
        reconciler::round_from(&input(&reported), &mut memory, &mut none);
        let quiet_ms = start.elapsed().as_secs_f64() * 1e3;
        assert_eq!(memory.looked(), (0, false));
        report_round_ms.push(report_ms);
        quiet_round_ms.push(quiet_ms);
        println!(
            "trial {t}: placements_per_s={:.0} reconcile_tasks_per_s={:.0} idle_round_ms={idle_ms:.1} \
             one_report_round_ms={report_ms:.1} quiet_round_ms={quiet_ms:.1}",
            total as f64 / secs,
            total as f64 / secs2
        );
    }
    println!(
        "MEDIAN tasks={total} nodes={NODES} placements_per_s={:.0} reconcile_tasks_per_s={:.0} idle_round_ms={:.1} \
         one_report_round_ms={:.1} quiet_round_ms={:.1}",
        median(place_rates),
        median(round_rates),
        median(idle_round_ms),
        median(report_round_ms),
        median(quiet_round_ms)
    );
}
