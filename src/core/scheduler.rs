//! Placement: which node runs a new task. Pure; the leader's orchestrator calls it.
//!
//! Replicas spread across eligible nodes: each placement goes to the node running the fewest
//! tasks of the service, then the fewest tasks overall, then the lowest node id (so the same
//! state always gives the same answer). Placements made earlier in the same round count, as
//! do CPU and memory reservations. A node is eligible when it is a ready, active worker that
//! satisfies every constraint and has the reserved resources free.

use super::constraint::{self, Constraint};
use super::hash::FastMap;
use super::model::*;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

struct Load<'a> {
    node: &'a Node,
    free_cpu_millis: u64,
    free_memory_bytes: u64,
    total_tasks: u32,
    /// Service id -> tasks of it on this node.
    per_service: BTreeMap<String, u32>,
}

pub struct Scheduler<'a> {
    loads: Vec<Load<'a>>,
}

/// Why nodes were passed over, for the pending message `service ps` shows.
#[derive(Default, Debug, PartialEq, Eq)]
struct Skipped {
    not_ready: u32,
    not_active: u32,
    constraint: u32,
    cpu: u32,
    memory: u32,
}

impl<'a> Scheduler<'a> {
    /// Nodes with the load of the tasks already placed on them.
    pub fn new(
        nodes: impl IntoIterator<Item = &'a Node>,
        tasks: impl IntoIterator<Item = &'a Task>,
        services: &super::state::Map<String, Service>,
    ) -> Self {
        let mut loads: Vec<Load> = nodes
            .into_iter()
            .filter(|n| n.role == Role::Worker)
            .map(|node| Load {
                node,
                free_cpu_millis: node.capacity.cpu_millis,
                free_memory_bytes: node.capacity.memory_bytes,
                total_tasks: 0,
                per_service: BTreeMap::new(),
            })
            .collect();
        loads.sort_by(|a, b| a.node.id.cmp(&b.node.id));
        if loads.is_empty() {
            // No worker: nothing to count the tasks against.
            return Scheduler { loads };
        }
        // Looked up once per task (50,000 in a large cluster): hashed, not searched.
        let index: FastMap<&str, usize> = loads
            .iter()
            .enumerate()
            .map(|(i, l)| (l.node.id.as_str(), i))
            .collect();
        let mut reserved: FastMap<(&str, u64), Resources> = FastMap::default();
        for task in tasks.into_iter().filter(|t| t.holds_node()) {
            let Some(&i) = index.get(task.node_id.as_str()) else {
                continue;
            };
            // What its own version reserves (an update may have changed the reservation).
            let reservation = *reserved
                .entry((task.service_id.as_str(), task.spec_version))
                .or_insert_with(|| {
                    services
                        .get(&task.service_id)
                        .map(|s| {
                            s.spec_of(task.spec_version)
                                .unwrap_or(&s.spec)
                                .resources
                                .reservations
                        })
                        .unwrap_or_default()
                });
            loads[i].take(&task.service_id, reservation);
        }
        Scheduler { loads }
    }

    /// Places `count` new tasks of `service`: a node id for each, or the reason none fits.
    /// Once nothing fits, the rest get the same reason.
    pub fn place(&mut self, service: &Service, count: usize) -> Vec<Result<String, String>> {
        let constraints = match constraint::parse_all(&service.spec.constraints) {
            Ok(c) => c,
            Err(e) => return vec![Err(e.to_string()); count],
        };
        let need = service.spec.resources.reservations;
        let mut skipped = Skipped::default();
        let mut heap = BinaryHeap::new();
        for (i, load) in self.loads.iter().enumerate() {
            match load.eligible(&constraints, need) {
                Ok(()) => heap.push(Reverse((load.count_of(&service.id), load.total_tasks, i))),
                Err(why) => why(&mut skipped),
            }
        }
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let Some(Reverse((_, _, i))) = heap.pop() else {
                let reason = skipped.reason(self.loads.len(), &service.spec.constraints, need);
                out.resize(count, Err(reason));
                break;
            };
            let load = &mut self.loads[i];
            if let Err(why) = load.fits(need) {
                // Reservations only grow within a round: this node is out for good.
                why(&mut skipped);
                continue;
            }
            load.take(&service.id, need);
            out.push(Ok(load.node.id.clone()));
            heap.push(Reverse((load.count_of(&service.id), load.total_tasks, i)));
        }
        out
    }
}

impl Scheduler<'_> {
    /// Places a stop-first update's new task that no node has room for on the node of
    /// `old`, the task it replaces, counting `old`'s reservation (`old_reservation`) as free:
    /// the old task stops before the new one starts. None if that node is not eligible, or
    /// too small even so.
    pub fn place_in_stead_of(
        &mut self,
        service: &Service,
        old: &Task,
        old_reservation: Resources,
    ) -> Option<String> {
        let constraints = constraint::parse_all(&service.spec.constraints).ok()?;
        let need = service.spec.resources.reservations;
        let i = self
            .loads
            .binary_search_by(|l| l.node.id.as_str().cmp(&old.node_id))
            .ok()?;
        let load = &mut self.loads[i];
        // Only what the new task needs beyond the old one's reservation is taken: the rest
        // of the old reservation stays held until the old task has stopped.
        let extra = Resources {
            cpu_millis: need.cpu_millis.saturating_sub(old_reservation.cpu_millis),
            memory_bytes: need.memory_bytes.saturating_sub(old_reservation.memory_bytes),
        };
        load.eligible(&constraints, extra).ok()?;
        load.take(&service.id, extra);
        Some(load.node.id.clone())
    }
}

type Skip = fn(&mut Skipped);

impl Load<'_> {
    fn count_of(&self, service_id: &str) -> u32 {
        self.per_service.get(service_id).copied().unwrap_or(0)
    }

    fn take(&mut self, service_id: &str, need: Resources) {
        self.free_cpu_millis = self.free_cpu_millis.saturating_sub(need.cpu_millis);
        self.free_memory_bytes = self.free_memory_bytes.saturating_sub(need.memory_bytes);
        self.total_tasks += 1;
        // No new key (an allocation) for each task: only for a service new on this node.
        match self.per_service.get_mut(service_id) {
            Some(n) => *n += 1,
            None => {
                self.per_service.insert(service_id.to_string(), 1);
            }
        }
    }

    fn fits(&self, need: Resources) -> Result<(), Skip> {
        if need.cpu_millis > self.free_cpu_millis {
            return Err(|s| s.cpu += 1);
        }
        if need.memory_bytes > self.free_memory_bytes {
            return Err(|s| s.memory += 1);
        }
        Ok(())
    }

    fn eligible(&self, constraints: &[Constraint], need: Resources) -> Result<(), Skip> {
        if self.node.status != NodeStatus::Ready {
            return Err(|s| s.not_ready += 1);
        }
        if self.node.availability != Availability::Active {
            return Err(|s| s.not_active += 1);
        }
        if !constraints.iter().all(|c| c.matches(self.node)) {
            return Err(|s| s.constraint += 1);
        }
        self.fits(need)
    }
}

impl Skipped {
    fn reason(&self, workers: usize, constraints: &[String], need: Resources) -> String {
        if workers == 0 {
            return "no worker nodes: add one with `warren worker start --token ...`".into();
        }
        let mut parts = Vec::new();
        if self.not_ready > 0 {
            parts.push(format!("{} not ready", self.not_ready));
        }
        if self.not_active > 0 {
            parts.push(format!("{} drained or paused", self.not_active));
        }
        if self.constraint > 0 {
            parts.push(format!(
                "{} not matching {}",
                self.constraint,
                constraints.join(" and ")
            ));
        }
        if self.cpu > 0 {
            parts.push(format!(
                "{} without {:.3} CPUs free",
                self.cpu,
                need.cpu_millis as f64 / 1000.0
            ));
        }
        if self.memory > 0 {
            parts.push(format!(
                "{} without {} bytes of memory free",
                self.memory, need.memory_bytes
            ));
        }
        format!("no suitable node ({} workers: {})", workers, parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn worker(id: &str, cpus: u64, labels: &[(&str, &str)]) -> Node {
        Node {
            id: id.into(),
            role: Role::Worker,
            address: String::new(),
            status: NodeStatus::Ready,
            availability: Availability::Active,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            capacity: Resources {
                cpu_millis: cpus * 1000,
                memory_bytes: 1 << 30,
            },
            last_heartbeat_ms: 0,
            created_at_ms: 0,
            version: 0,
            agent_version: String::new(),
        }
    }

    fn service(id: &str, cpu_millis: u64, constraints: &[&str]) -> Service {
        let mut spec = ServiceSpec {
            name: id.into(),
            image: "busybox".into(),
            ..Default::default()
        };
        spec.resources.reservations.cpu_millis = cpu_millis;
        spec.constraints = constraints.iter().map(|s| s.to_string()).collect();
        Service::new(id.into(), spec, 0, 1)
    }

    fn task(id: &str, service: &str, node: &str) -> Task {
        Task {
            id: id.into(),
            service_id: service.into(),
            slot: 1,
            attempt: 0,
            spec_version: 1,
            node_id: node.into(),
            desired_state: TaskState::Running,
            state: TaskState::Running,
            message: String::new(),
            error: String::new(),
            exit_code: 0,
            container_id: String::new(),
            created_at_ms: 0,
            updated_at_ms: 0,
            version: 0,
            health: None,
        }
    }

    /// How many placements each node got, in node order.
    fn spread(out: &[Result<String, String>], nodes: &[Node]) -> Vec<usize> {
        nodes
            .iter()
            .map(|n| out.iter().filter(|r| r.as_deref() == Ok(n.id.as_str())).count())
            .collect()
    }

    struct Case {
        name: &'static str,
        nodes: Vec<Node>,
        existing: Vec<Task>,
        service: Service,
        count: usize,
        /// Placements per node (in `nodes` order) and how many stay pending.
        want_spread: Vec<usize>,
        want_pending: usize,
        /// Text the pending reason must contain.
        want_reason: &'static str,
    }

    #[test]
    fn table() {
        let mut down = worker("b", 4, &[]);
        down.status = NodeStatus::Down;
        let mut drained = worker("c", 4, &[]);
        drained.availability = Availability::Drain;
        let mut paused = worker("c", 4, &[]);
        paused.availability = Availability::Pause;
        let mut manager = worker("m", 4, &[]);
        manager.role = Role::Manager;
        let three = || vec![worker("a", 4, &[]), worker("b", 4, &[]), worker("c", 4, &[])];
        let cases = vec![
            Case {
                name: "spread evenly",
                nodes: three(),
                existing: vec![],
                service: service("web", 0, &[]),
                count: 7,
                want_spread: vec![3, 2, 2],
                want_pending: 0,
                want_reason: "",
            },
            Case {
                name: "existing tasks of the service count",
                nodes: three(),
                existing: vec![
                    task("t1", "web", "a"),
                    task("t2", "web", "a"),
                    task("t3", "web", "b"),
                ],
                service: service("web", 0, &[]),
                count: 3,
                want_spread: vec![0, 1, 2],
                want_pending: 0,
                want_reason: "",
            },
            Case {
                name: "other services' tasks break ties",
                nodes: three(),
                existing: vec![task("t1", "db", "a"), task("t2", "db", "b")],
                service: service("web", 0, &[]),
                count: 1,
                want_spread: vec![0, 0, 1],
                want_pending: 0,
                want_reason: "",
            },
            Case {
                name: "finished tasks do not count",
                nodes: three(),
                existing: vec![{
                    let mut t = task("t1", "web", "a");
                    t.state = TaskState::Failed;
                    t
                }],
                service: service("web", 0, &[]),
                count: 1,
                want_spread: vec![1, 0, 0],
                want_pending: 0,
                want_reason: "",
            },
            Case {
                name: "cpu reservations fill nodes, the rest pends",
                nodes: vec![worker("a", 2, &[]), worker("b", 1, &[])],
                existing: vec![],
                service: service("web", 1000, &[]),
                count: 5,
                want_spread: vec![2, 1],
                want_pending: 2,
                want_reason: "without 1.000 CPUs free",
            },
            Case {
                name: "reservations of running tasks count",
                nodes: vec![worker("a", 2, &[]), worker("b", 2, &[])],
                existing: vec![task("t1", "web", "a"), task("t2", "web", "a")],
                service: service("web", 1000, &[]),
                count: 3,
                want_spread: vec![0, 2],
                want_pending: 1,
                want_reason: "2 without",
            },
            Case {
                name: "label constraint",
                nodes: vec![
                    worker("a", 4, &[("zone", "eu")]),
                    worker("b", 4, &[("zone", "us")]),
                    worker("c", 4, &[("zone", "eu")]),
                ],
                existing: vec![],
                service: service("web", 0, &["node.labels.zone==eu"]),
                count: 4,
                want_spread: vec![2, 0, 2],
                want_pending: 0,
                want_reason: "",
            },
            Case {
                name: "id constraint nothing matches",
                nodes: three(),
                existing: vec![],
                service: service("web", 0, &["node.id==zz"]),
                count: 2,
                want_spread: vec![0, 0, 0],
                want_pending: 2,
                want_reason: "3 not matching node.id==zz",
            },
            Case {
                name: "down, drained and manager nodes skipped",
                nodes: vec![
                    worker("a", 4, &[]),
                    down.clone(),
                    drained.clone(),
                    manager.clone(),
                ],
                existing: vec![],
                service: service("web", 0, &[]),
                count: 3,
                want_spread: vec![3, 0, 0, 0],
                want_pending: 0,
                want_reason: "",
            },
            Case {
                name: "paused takes nothing new",
                nodes: vec![down, paused],
                existing: vec![],
                service: service("web", 0, &[]),
                count: 1,
                want_spread: vec![0, 0],
                want_pending: 1,
                want_reason: "1 not ready, 1 drained or paused",
            },
            Case {
                name: "no workers",
                nodes: vec![manager],
                existing: vec![],
                service: service("web", 0, &[]),
                count: 1,
                want_spread: vec![0],
                want_pending: 1,
                want_reason: "no worker nodes",
            },
        ];
        for case in cases {
            let mut services = crate::core::state::Map::new();
            services.insert(
                "web".to_string(),
                service("web", case.service.spec.resources.reservations.cpu_millis, &[]),
            );
            services.insert("db".to_string(), service("db", 0, &[]));
            let mut s = Scheduler::new(&case.nodes, &case.existing, &services);
            let out = s.place(&case.service, case.count);
            assert_eq!(out.len(), case.count, "{}", case.name);
            assert_eq!(
                spread(&out, &case.nodes),
                case.want_spread,
                "{}: {out:?}",
                case.name
            );
            let pending: Vec<&String> = out.iter().filter_map(|r| r.as_ref().err()).collect();
            assert_eq!(pending.len(), case.want_pending, "{}", case.name);
            for reason in pending {
                assert!(reason.contains(case.want_reason), "{}: {reason}", case.name);
            }
        }
    }

    #[test]
    fn same_input_same_placements() {
        let nodes: Vec<Node> = (0..20).map(|i| worker(&format!("n{i:02}"), 8, &[])).collect();
        let services = crate::core::state::Map::new();
        let a = Scheduler::new(&nodes, &[], &services).place(&service("web", 100, &[]), 50);
        let b = Scheduler::new(nodes.iter().rev(), &[], &services).place(&service("web", 100, &[]), 50);
        assert_eq!(a, b);
        // Spread: 50 over 20 nodes is 2 or 3 each.
        assert!(spread(&a, &nodes).iter().all(|&n| n == 2 || n == 3));
    }
}
