//! Who may call what: one pure decision from (caller, RPC, target), used by every gRPC
//! service in both builds. The caller comes from the connection's verified certificate in
//! production and from the simulated host's credential under the simulator; this module
//! does not know which.
//!
//! - An admin (operator credential) may use the public API.
//! - A worker may register, heartbeat, watch its assignments and hold its log session, all
//!   for its own node id only, and renew its own certificate.
//! - A manager may use the internal Raft and leader-call RPCs, join as itself, and renew its
//!   certificate.
//! - A caller without a certificate may only fetch the CA certificate (public) and get its
//!   first certificate with a join token (the handler checks the token).
//! - A revoked certificate may do nothing.

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No client certificate.
    Anonymous,
    Admin {
        name: String,
        serial_hex: String,
        /// When its certificate expires (Unix ms).
        expires_ms: i64,
    },
    Manager {
        id: u64,
        serial_hex: String,
        expires_ms: i64,
    },
    Worker {
        node_id: String,
        serial_hex: String,
        expires_ms: i64,
    },
}

impl Caller {
    fn serial(&self) -> Option<&str> {
        match self {
            Caller::Anonymous => None,
            Caller::Admin { serial_hex, .. }
            | Caller::Manager { serial_hex, .. }
            | Caller::Worker { serial_hex, .. } => Some(serial_hex),
        }
    }

    fn expires_ms(&self) -> Option<i64> {
        match self {
            Caller::Anonymous => None,
            Caller::Admin { expires_ms, .. }
            | Caller::Manager { expires_ms, .. }
            | Caller::Worker { expires_ms, .. } => Some(*expires_ms),
        }
    }

    /// For messages: "a worker certificate (node edge-1)".
    pub fn describe(&self) -> String {
        match self {
            Caller::Anonymous => "no client certificate".into(),
            Caller::Admin { name, .. } => format!("an admin certificate ({name})"),
            Caller::Manager { id, .. } => format!("a manager certificate (manager {id})"),
            Caller::Worker { node_id, .. } => format!("a worker certificate (node {node_id})"),
        }
    }
}

/// Every RPC Warren serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rpc {
    // ClusterService
    GetClusterInfo,
    GenerateJoinToken,
    JoinCluster,
    RemoveManager,
    GetCaCertificate,
    IssueCertificate,
    RenewCertificate,
    IssueAdminCertificate,
    RotateCa,
    GetCaStatus,
    ConfirmCertificate,
    Backup,
    // NodeService
    RegisterNode,
    Heartbeat,
    ListNodes,
    GetNode,
    UpdateNode,
    RemoveNode,
    // ServiceService
    CreateService,
    GetService,
    ListServices,
    UpdateService,
    RollbackService,
    ScaleService,
    DeleteService,
    ServiceLogs,
    // TaskService
    ListTasks,
    GetTask,
    WatchAssignments,
    LogSession,
    // RaftService (managers only)
    AppendEntries,
    Vote,
    InstallSnapshot,
    LeaderCall,
    Ping,
    NodeLogs,
    Campaign,
}

impl Rpc {
    pub const ALL: [Rpc; 37] = [
        Rpc::GetClusterInfo,
        Rpc::GenerateJoinToken,
        Rpc::JoinCluster,
        Rpc::RemoveManager,
        Rpc::GetCaCertificate,
        Rpc::IssueCertificate,
        Rpc::RenewCertificate,
        Rpc::IssueAdminCertificate,
        Rpc::RotateCa,
        Rpc::GetCaStatus,
        Rpc::ConfirmCertificate,
        Rpc::Backup,
        Rpc::RegisterNode,
        Rpc::Heartbeat,
        Rpc::ListNodes,
        Rpc::GetNode,
        Rpc::UpdateNode,
        Rpc::RemoveNode,
        Rpc::CreateService,
        Rpc::GetService,
        Rpc::ListServices,
        Rpc::UpdateService,
        Rpc::RollbackService,
        Rpc::ScaleService,
        Rpc::DeleteService,
        Rpc::ServiceLogs,
        Rpc::ListTasks,
        Rpc::GetTask,
        Rpc::WatchAssignments,
        Rpc::LogSession,
        Rpc::AppendEntries,
        Rpc::Vote,
        Rpc::InstallSnapshot,
        Rpc::LeaderCall,
        Rpc::Ping,
        Rpc::NodeLogs,
        Rpc::Campaign,
    ];

    /// Who may call it.
    pub fn needs(self) -> Needs {
        use Rpc::*;
        match self {
            GetCaCertificate => Needs::Anyone,
            IssueCertificate => Needs::Token,
            JoinCluster => Needs::SelfManager,
            RegisterNode | Heartbeat | WatchAssignments | LogSession => Needs::SelfWorker,
            RenewCertificate | ConfirmCertificate => Needs::AnyNode,
            AppendEntries | Vote | InstallSnapshot | LeaderCall | Ping | NodeLogs | Campaign => {
                Needs::Manager
            }
            GetClusterInfo
            | GenerateJoinToken
            | RemoveManager
            | IssueAdminCertificate
            | RotateCa
            | GetCaStatus
            | Backup
            | ListNodes
            | GetNode
            | UpdateNode
            | RemoveNode
            | CreateService
            | GetService
            | ListServices
            | UpdateService
            | RollbackService
            | ScaleService
            | DeleteService
            | ServiceLogs
            | ListTasks
            | GetTask => Needs::Admin,
        }
    }
}

/// The kinds of caller an RPC admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// Public: no certificate needed.
    Anyone,
    /// A join token, checked by the handler; callers come without a certificate (they are
    /// getting their first one).
    Token,
    /// The worker certificate of the node the request is about.
    SelfWorker,
    /// The manager certificate of the manager the request is about.
    SelfManager,
    /// Any node certificate (manager or worker), for itself.
    AnyNode,
    Manager,
    Admin,
}

impl Needs {
    fn what(self) -> &'static str {
        match self {
            Needs::Anyone => "nothing",
            Needs::Token => "a join token and no certificate",
            Needs::SelfWorker => "the certificate of the worker it is about",
            Needs::SelfManager => "the certificate of the manager it is about",
            Needs::AnyNode => "a manager or worker certificate",
            Needs::Manager => "a manager certificate",
            Needs::Admin => "an admin certificate",
        }
    }
}

/// What a request is about, where that matters: the node id it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    None,
    Node(&'a str),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("{rpc:?} needs {needs}; this connection presents no client certificate: pass --tls-dir DIR (or set WARREN_TLS_DIR) with the credential `cluster init` wrote, or one from `warren cluster admin-cert`")]
    Unauthenticated { rpc: Rpc, needs: &'static str },
    #[error("{rpc:?} needs {needs}; this connection presents {caller}")]
    WrongRole {
        rpc: Rpc,
        needs: &'static str,
        caller: String,
    },
    #[error("{rpc:?} for node {target:?} refused: this connection presents {caller}, and a worker may act only for itself")]
    OtherNode {
        rpc: Rpc,
        target: String,
        caller: String,
    },
    #[error("this connection presents {caller}, which was revoked (its node was removed, or the cluster CA was rotated and this certificate was not replaced); a removed node must join again with a new token, and an operator needs a new credential from `warren cluster admin-cert`")]
    Revoked { caller: String },
    /// A connection outlived its certificate (TLS checks it only when the connection opens).
    #[error("this connection presents {caller}, which has expired; nodes renew theirs at half their lifetime and reconnect, operators get a new one with `warren cluster admin-cert`")]
    Expired { caller: String },
}

/// May `caller` call `rpc` about `target` at `now_ms`, given which serial numbers are revoked?
/// May a connection that only the reserved part of a server's connection cap had room for
/// stay open (`limits::reserved_connections`)? Operators and managers: what an outage needs
/// to get through. Its requests are authorized one by one as any others (a revoked
/// certificate is refused there).
pub fn may_hold_reserved_connection(caller: &Caller) -> bool {
    matches!(caller, Caller::Admin { .. } | Caller::Manager { .. })
}

pub fn authorize(
    caller: &Caller,
    rpc: Rpc,
    target: Target<'_>,
    now_ms: i64,
    revoked: impl Fn(&str) -> bool,
) -> Result<(), Denied> {
    if caller.serial().is_some_and(revoked) {
        return Err(Denied::Revoked {
            caller: caller.describe(),
        });
    }
    if caller.expires_ms().is_some_and(|exp| exp <= now_ms) {
        return Err(Denied::Expired {
            caller: caller.describe(),
        });
    }
    let needs = rpc.needs();
    let wrong = || {
        if *caller == Caller::Anonymous {
            Denied::Unauthenticated {
                rpc,
                needs: needs.what(),
            }
        } else {
            Denied::WrongRole {
                rpc,
                needs: needs.what(),
                caller: caller.describe(),
            }
        }
    };
    let own_node = |node_id: &str| match target {
        Target::Node(t) if t == node_id => Ok(()),
        Target::Node(t) => Err(Denied::OtherNode {
            rpc,
            target: t.to_string(),
            caller: caller.describe(),
        }),
        // A worker RPC always names its node; one that does not is refused.
        Target::None => Err(Denied::OtherNode {
            rpc,
            target: String::new(),
            caller: caller.describe(),
        }),
    };
    match (needs, caller) {
        (Needs::Anyone, _) => Ok(()),
        (Needs::Token, Caller::Anonymous) => Ok(()),
        (Needs::SelfWorker, Caller::Worker { node_id, .. }) => own_node(node_id),
        (Needs::SelfManager, Caller::Manager { id, .. }) => own_node(&id.to_string()),
        (Needs::AnyNode, Caller::Manager { .. } | Caller::Worker { .. }) => Ok(()),
        (Needs::Manager, Caller::Manager { .. }) => Ok(()),
        (Needs::Admin, Caller::Admin { .. }) => Ok(()),
        _ => Err(wrong()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const NOW_MS: i64 = 1_000;

    fn admin() -> Caller {
        Caller::Admin {
            name: "ops".into(),
            serial_hex: "a1".into(),
            expires_ms: NOW_MS + 1,
        }
    }
    fn manager() -> Caller {
        Caller::Manager {
            id: 2,
            serial_hex: "m2".into(),
            expires_ms: NOW_MS + 1,
        }
    }
    fn worker(id: &str) -> Caller {
        Caller::Worker {
            node_id: id.into(),
            serial_hex: format!("w-{id}"),
            expires_ms: NOW_MS + 1,
        }
    }
    fn az(
        caller: &Caller,
        rpc: Rpc,
        target: Target<'_>,
        revoked: impl Fn(&str) -> bool,
    ) -> Result<(), Denied> {
        authorize(caller, rpc, target, NOW_MS, revoked)
    }

    #[test]
    fn only_operators_and_managers_hold_reserved_connections() {
        for (caller, may) in [
            (admin(), true),
            (manager(), true),
            (worker("w1"), false),
            (Caller::Anonymous, false),
        ] {
            assert_eq!(may_hold_reserved_connection(&caller), may, "{caller:?}");
        }
    }

    /// Every RPC against every kind of caller: A admin, M manager, W worker for its own
    /// node, O worker naming another node, N no certificate. `+` allowed, `-` refused.
    #[test]
    fn every_rpc_against_every_caller() {
        use Rpc::*;
        #[rustfmt::skip]
        let table: [(Rpc, &str); 37] = [
            //                       A M W O N
            (GetClusterInfo,        "+ - - - -"),
            (GenerateJoinToken,     "+ - - - -"),
            (JoinCluster,           "- - - - -"),
            (RemoveManager,         "+ - - - -"),
            (GetCaCertificate,      "+ + + + +"),
            (IssueCertificate,      "- - - - +"),
            (RenewCertificate,      "- + + + -"),
            (IssueAdminCertificate, "+ - - - -"),
            (RotateCa,              "+ - - - -"),
            (GetCaStatus,           "+ - - - -"),
            (ConfirmCertificate,    "- + + + -"),
            (Backup,                "+ - - - -"),
            (RegisterNode,          "- - + - -"),
            (Heartbeat,             "- - + - -"),
            (ListNodes,             "+ - - - -"),
            (GetNode,               "+ - - - -"),
            (UpdateNode,            "+ - - - -"),
            (RemoveNode,            "+ - - - -"),
            (CreateService,         "+ - - - -"),
            (GetService,            "+ - - - -"),
            (ListServices,          "+ - - - -"),
            (UpdateService,         "+ - - - -"),
            (RollbackService,       "+ - - - -"),
            (ScaleService,          "+ - - - -"),
            (DeleteService,         "+ - - - -"),
            (ServiceLogs,           "+ - - - -"),
            (ListTasks,             "+ - - - -"),
            (GetTask,               "+ - - - -"),
            (WatchAssignments,      "- - + - -"),
            (LogSession,            "- - + - -"),
            (AppendEntries,         "- + - - -"),
            (Vote,                  "- + - - -"),
            (InstallSnapshot,       "- + - - -"),
            (LeaderCall,            "- + - - -"),
            (Ping,                  "- + - - -"),
            (NodeLogs,              "- + - - -"),
            (Campaign,              "- + - - -"),
        ];
        assert_eq!(
            table.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
            Rpc::ALL.to_vec(),
            "the table covers every RPC in order"
        );
        let none: BTreeSet<String> = BTreeSet::new();
        for (rpc, row) in table {
            let want: Vec<bool> = row.split(' ').map(|c| c == "+").collect();
            let got = vec![
                az(&admin(), rpc, Target::Node("edge-1"), |s| none.contains(s)).is_ok(),
                az(&manager(), rpc, Target::Node("edge-1"), |s| none.contains(s)).is_ok(),
                az(&worker("edge-1"), rpc, Target::Node("edge-1"), |s| {
                    none.contains(s)
                })
                .is_ok(),
                az(&worker("edge-2"), rpc, Target::Node("edge-1"), |s| {
                    none.contains(s)
                })
                .is_ok(),
                az(&Caller::Anonymous, rpc, Target::Node("edge-1"), |s| {
                    none.contains(s)
                })
                .is_ok(),
            ];
            assert_eq!(got, want, "{rpc:?}");
        }
    }

    #[test]
    fn refusals_say_what_is_needed_and_revocation_beats_everything() {
        let none: BTreeSet<String> = BTreeSet::new();
        let e = az(&worker("edge-1"), Rpc::DeleteService, Target::None, |s| {
            none.contains(s)
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "DeleteService needs an admin certificate; this connection presents a worker certificate (node edge-1)"
        );
        let e = az(&Caller::Anonymous, Rpc::ListServices, Target::None, |s| {
            none.contains(s)
        })
        .unwrap_err();
        assert!(matches!(e, Denied::Unauthenticated { .. }), "{e}");
        assert!(e.to_string().contains("--tls-dir"), "{e}");
        let e = az(&worker("edge-2"), Rpc::Heartbeat, Target::Node("edge-1"), |s| {
            none.contains(s)
        })
        .unwrap_err();
        assert!(matches!(e, Denied::OtherNode { .. }), "{e}");
        // A manager joins as itself only.
        assert!(az(&manager(), Rpc::JoinCluster, Target::Node("2"), |s| none
            .contains(s))
        .is_ok());
        assert!(az(&manager(), Rpc::JoinCluster, Target::Node("3"), |s| none
            .contains(s))
        .is_err());
        // A worker RPC that names no node is refused, not waved through.
        assert!(az(&worker("edge-1"), Rpc::Heartbeat, Target::None, |s| none
            .contains(s))
        .is_err());
        let revoked: BTreeSet<String> = ["w-edge-1".to_string()].into();
        for rpc in Rpc::ALL {
            let e = az(&worker("edge-1"), rpc, Target::Node("edge-1"), |s| {
                revoked.contains(s)
            })
            .unwrap_err();
            assert!(matches!(e, Denied::Revoked { .. }), "{rpc:?}");
        }
        assert!(
            az(&worker("edge-2"), Rpc::Heartbeat, Target::Node("edge-2"), |s| {
                revoked.contains(s)
            })
            .is_ok()
        );
        // A connection that outlived its certificate can do nothing, whatever its role.
        for (who, rpc, target) in [
            (admin(), Rpc::ListServices, Target::None),
            (manager(), Rpc::AppendEntries, Target::None),
            (worker("edge-1"), Rpc::Heartbeat, Target::Node("edge-1")),
        ] {
            let e = authorize(&who, rpc, target, NOW_MS + 1, |_| false).unwrap_err();
            assert!(matches!(e, Denied::Expired { .. }), "{e}");
        }
    }
}
