//! Shard-wide requests from a connection: apply and status.

use super::*;

/// Applies resources (on shard 0); `applyBytesMax` is checked here, where the request enters.
pub(super) async fn apply(shard: &Rc<Shard>, yaml: String, force: bool) -> Result<Encode, Error> {
    // Refused here, where it enters, before it crosses the mesh.
    shard
        .settings
        .config
        .check_apply_bytes(yaml.len())
        .map_err(Error::from)?;
    applied(shard.call(0, Request::Apply { yaml, force }).await)
}

/// Moves a replicated partition's replicas (on shard 0, which persists
/// the placement and installs it on the owning shard).
pub(super) async fn move_partition(
    shard: &Rc<Shard>,
    stream: String,
    partition: u32,
    voters: Vec<u64>,
) -> Result<Encode, Error> {
    let req = Request::Move {
        stream,
        partition,
        voters,
    };
    applied(shard.call(0, req).await)
}

/// Rebalances the cluster's replicated partitions (on shard 0, where the
/// metadata group is).
pub(super) async fn rebalance(
    shard: &Rc<Shard>,
    asked: crate::shard::meta::rebalance::Asked,
) -> Result<Encode, Error> {
    applied(shard.call(0, Request::Rebalance(asked)).await)
}

/// An admin change's answer: `ApplyOk` with the lines of what was done.
pub(super) fn applied(reply: Reply) -> Result<Encode, Error> {
    match reply {
        Reply::Applied(summary) => Ok(Box::new(move |id, outbox: &Outbox| {
            let summary = summary.iter().map(String::as_str).collect();
            outbox.send(id, &Message::ApplyOk(hadron_wire::ApplyOk { summary }))
        })),
        other => Err(unexpected(other)),
    }
}

/// The node change of a `NodeAdd`.
pub(super) fn node_add(m: &hadron_wire::NodeAdd<'_>) -> NodeChange {
    NodeChange::Add(crate::config::cluster::PeerSpec {
        id: m.id,
        address: m.address.to_owned(),
        peer_address: Some(m.peer_address.to_owned()),
    })
}

/// Adds or removes a node of the cluster (on shard 0, serialized with
/// applies and moves).
pub(super) async fn change_nodes(shard: &Rc<Shard>, change: NodeChange) -> Result<Encode, Error> {
    applied(shard.call(0, Request::Nodes(change)).await)
}

/// The status document of every shard.
pub(super) async fn status(shard: &Rc<Shard>) -> Result<Encode, Error> {
    let json = shard.status_json().await?;
    Ok(Box::new(move |id, outbox: &Outbox| {
        outbox.send(
            id,
            &Message::StatusOk(hadron_wire::StatusOk { json: &json }),
        )
    }))
}
