//! `warren manager start --data-dir DIR --force-new-cluster`: recovery from the loss of a
//! majority of the managers. This manager becomes the only voter, with its state: the last
//! snapshot and every entry of its log (committed or not, so every write the lost majority
//! acknowledged and this manager holds is kept). Refused while the other voters could still
//! make a quorum with it (`core::membership::check_force_new_cluster`).

use super::peers::Peers;
use super::Identity;
use crate::raft::store::StateMachineStore;
use crate::raft::{ManagerNode, NodeId};
use anyhow::Context;
use std::collections::{BTreeMap, BTreeSet};
use tracing::warn;

pub async fn force_new_cluster(
    identity: &Identity,
    sm: &StateMachineStore,
    transport: &crate::security::Transport,
    even_if_reachable: bool,
) -> anyhow::Result<()> {
    let me = identity.node_id;
    let mut data = sm
        .state_with_whole_log()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("reading this manager's log")?;
    if data.last_applied.is_none() {
        anyhow::bail!(
            "this manager holds no cluster state; there is nothing to recover. Nothing was changed"
        );
    }
    let membership = data.membership.membership().clone();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let others: Vec<(NodeId, String)> = membership
        .nodes()
        .filter(|(id, _)| **id != me)
        .map(|(id, n)| (*id, n.raft_addr.clone()))
        .collect();
    let reachable = Peers::new(transport.clone()).reachable_now(me, &others).await;
    crate::core::membership::check_force_new_cluster(&voters, &reachable, me, even_if_reachable)?;
    let node = ManagerNode {
        api_addr: identity.api_addr.clone(),
        raft_addr: identity.raft_addr.clone(),
    };
    let alone = openraft::Membership::new(vec![BTreeSet::from([me])], BTreeMap::from([(me, node)]));
    data.membership = openraft::StoredMembership::new(data.last_applied, alone);
    crate::core::restore::keep_only_manager(&mut data.state, me);
    let last = data.last_applied.expect("checked above");
    sm.replace_all(data)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("writing the new single-manager state")?;
    warn!(
        dropped = ?voters.iter().filter(|v| **v != me).collect::<Vec<_>>(),
        index = last.index,
        "forced a new cluster: this manager is the only voter now, with every entry of its log; join new managers with `warren cluster join-token manager`"
    );
    Ok(())
}
