//! Which writes may share one log entry (the leader's group commit, `manager::proposer`).
//!
//! The writes of one entry share its index as their objects' version. Two writes to one
//! service or node in one entry would give the first writer a version that also holds the
//! second write, and its next `expected_version` would pass over that write unseen. So an
//! entry holds either only the cluster's own bookkeeping (task reports, orchestration rounds,
//! node builds: nobody writes against their versions), or only client writes, each to a
//! different object.

use super::state::{ClusterState, Command};
use std::collections::BTreeSet;

/// What a write may not share an entry with.
#[derive(Debug, PartialEq, Eq)]
pub enum Shares {
    Bookkeeping,
    /// The objects it writes, by every name a client may use for them.
    Objects(Vec<String>),
}

/// What `cmd` writes, with names resolved in `state` (the state the entry will follow, or
/// one a little older: a service renamed meanwhile keeps its id, and the id is a key too).
pub fn shares(cmd: &Command, state: &ClusterState) -> Shares {
    // A service by the name or id the write uses, and by its id.
    let service = |r: &str| -> Vec<String> {
        let id = state.service(r).map(|s| format!("service {}", s.id));
        std::iter::once(format!("service {r}")).chain(id).collect()
    };
    match cmd {
        Command::Once { cmd, .. } => shares(cmd, state),
        Command::ReportTasks { .. } | Command::Orchestrate { .. } | Command::SetNodeVersion { .. } => {
            Shares::Bookkeeping
        }
        Command::CreateService { id, spec, .. } => {
            Shares::Objects(vec![format!("service {id}"), format!("service {}", spec.name)])
        }
        // A rename also takes the new name: a write by that name in the same entry would
        // otherwise reach the renamed service at the version of the rename.
        Command::UpdateService { service: r, spec, .. } => Shares::Objects(
            service(r)
                .into_iter()
                .chain([format!("service {}", spec.name)])
                .collect(),
        ),
        Command::ScaleService { service: r, .. }
        | Command::RollbackService { service: r, .. }
        | Command::DeleteService { service: r } => Shares::Objects(service(r)),
        Command::RegisterNode { id, .. }
        | Command::UpdateNode { id, .. }
        | Command::RemoveNode { id, .. } => Shares::Objects(vec![format!("node {id}")]),
        // Anything else (tokens, certificates, the CA, the cluster id, a batch): one of a kind.
        other => Shares::Objects(vec![format!("{:?}", std::mem::discriminant(other))]),
    }
}

/// The writes admitted to one entry so far.
#[derive(Debug, Default)]
pub struct Admission {
    /// None: nothing yet; Some(true): bookkeeping only; Some(false): client writes only.
    bookkeeping: Option<bool>,
    objects: BTreeSet<String>,
}

impl Admission {
    /// Whether a write sharing `s` may join the entry; if so, notes what it shares.
    pub fn admit(&mut self, s: &Shares) -> bool {
        match (s, self.bookkeeping) {
            (Shares::Bookkeeping, None | Some(true)) => {
                self.bookkeeping = Some(true);
                true
            }
            (Shares::Objects(keys), None | Some(false)) if keys.iter().all(|k| !self.objects.contains(k)) => {
                self.bookkeeping = Some(false);
                self.objects.extend(keys.iter().cloned());
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::ServiceSpec;

    fn create(id: &str, name: &str) -> Command {
        Command::CreateService {
            id: id.into(),
            spec: ServiceSpec {
                name: name.into(),
                image: "busybox:latest".into(),
                replicas: 1,
                ..Default::default()
            },
            now_ms: 1_000,
        }
    }

    fn scale(service: &str) -> Command {
        Command::ScaleService {
            service: service.into(),
            replicas: 2,
            expected_version: 0,
            now_ms: 1_000,
        }
    }

    fn once(cmd: Command) -> Command {
        Command::Once {
            request_id: "r".into(),
            fingerprint: 0,
            cmd: Box::new(cmd),
        }
    }

    fn report() -> Command {
        Command::ReportTasks {
            node_id: "w1".into(),
            reports: vec![],
            now_ms: 1_000,
        }
    }

    fn rename(service: &str, to: &str) -> Command {
        Command::UpdateService {
            service: service.into(),
            spec: ServiceSpec {
                name: to.into(),
                image: "busybox:latest".into(),
                replicas: 1,
                ..Default::default()
            },
            expected_version: 0,
            force: false,
            now_ms: 1_000,
        }
    }

    fn node(id: &str) -> Command {
        Command::RemoveNode {
            id: id.into(),
            force: false,
        }
    }

    /// Each row: the writes in arrival order, and which of them the first entry admits.
    #[test]
    fn an_entry_holds_bookkeeping_or_client_writes_to_different_objects() {
        let mut state = ClusterState::default();
        state.apply(1, create("s1", "web")).unwrap();
        let table: Vec<(&str, Vec<Command>, Vec<bool>)> = vec![
            ("two services", vec![scale("web"), scale("api")], vec![true, true]),
            (
                "one service by name then by id",
                vec![scale("web"), scale("s1")],
                vec![true, false],
            ),
            (
                "by id then by name, in Once",
                vec![once(scale("s1")), once(scale("web"))],
                vec![true, false],
            ),
            (
                "a create then a scale of it",
                vec![create("s2", "db"), scale("db")],
                vec![true, false],
            ),
            (
                "a create then a scale by the new id",
                vec![create("s2", "db"), scale("s2")],
                vec![true, false],
            ),
            (
                "bookkeeping after a client write",
                vec![scale("web"), report()],
                vec![true, false],
            ),
            (
                "client write after bookkeeping",
                vec![report(), report(), scale("web")],
                vec![true, true, false],
            ),
            (
                "two nodes, then one again",
                vec![node("w1"), node("w2"), node("w1")],
                vec![true, true, false],
            ),
            (
                "a rename then a write by the new name",
                vec![rename("web", "api"), scale("api")],
                vec![true, false],
            ),
            (
                "a node and a service of that name",
                vec![node("web"), scale("web")],
                vec![true, true],
            ),
        ];
        for (name, writes, want) in table {
            let mut entry = Admission::default();
            let got: Vec<bool> = writes.iter().map(|w| entry.admit(&shares(w, &state))).collect();
            assert_eq!(got, want, "{name}");
        }
    }
}
