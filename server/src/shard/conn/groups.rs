//! Consumer-group requests from a connection: subscribe, ack and nack.

use super::*;

/// Joins `group` on every partition of `stream`, on every owner; refused everywhere if refused anywhere.
pub(super) async fn subscribe(
    shard: &Rc<Shard>,
    conn: u64,
    stream: String,
    group: String,
    durable: bool,
    start: StartPoint,
    max_in_flight: u32,
) -> Result<Encode, Error> {
    let partitions = {
        let topology = shard.topology.borrow();
        let Some(spec) = topology.streams.get(&stream) else {
            return Err(Error::UnknownStream { stream });
        };
        spec.partitions
    };
    if group.is_empty() || group.len() > crate::shard::partition::GROUP_NAME_BYTES_MAX {
        return Err(Error::GroupName { bytes: group.len() });
    }
    reserve_subscription(shard, conn)?;
    let member = new_member(shard, conn);
    let subscription = member.subscription;
    let attached = attach_everywhere(
        shard,
        &stream,
        partitions,
        max_in_flight,
        |partition, per_partition| Request::Attach {
            stream: stream.clone(),
            partition,
            group: group.clone(),
            durable,
            start,
            max_in_flight: per_partition,
            member,
        },
    )
    .await;
    if let Err(failure) = attached {
        // Refused on some partition (say at `groupsMax`): take the
        // member back from those that took it, so that nothing is
        // delivered to a subscription the client never got.
        let detaches = (0..shard.shards).map(|to| shard.call(to, Request::DetachMember { member }));
        futures::future::join_all(detaches).await;
        release_subscription(shard, conn);
        return Err(failure);
    }
    Ok(Box::new(move |id, outbox: &Outbox| {
        outbox.send(
            id,
            &Message::SubscribeOk(hadron_wire::SubscribeOk {
                subscription_id: subscription,
                partitions: (0..partitions).collect(),
            }),
        )
    }))
}

/// Acks each id on the shard that made its delivery.
pub(super) async fn ack(shard: &Rc<Shard>, conn: u64, ids: Vec<u64>) -> Result<Encode, Error> {
    check_ack_ids(ids.len(), shard.settings.config.ack_ids_max)?;
    // Each id is acked on its own; the answer names those that
    // were not outstanding, after the others were acked.
    let mut refused = Vec::new();
    let mut by_owner: std::collections::BTreeMap<u16, Vec<u64>> = Default::default();
    for id in ids {
        match delivery_owner(shard, id) {
            Ok(owner) => by_owner.entry(owner).or_default().push(id),
            Err(_) => refused.push(id),
        }
    }
    for (owner, ids) in by_owner {
        let reply = shard
            .call(
                owner,
                Request::Ack {
                    ids,
                    shard: shard.id,
                    conn,
                },
            )
            .await;
        match reply {
            Reply::Done => {}
            Reply::Refused(ids) => refused.extend(ids),
            other => return Err(unexpected(other)),
        }
    }
    if refused.is_empty() {
        Ok(ack_ok())
    } else {
        Err(Error::AcksRefused {
            deliveries: refused,
        })
    }
}

/// Nacks one delivery: it is redelivered after a backoff.
pub(super) async fn nack(
    shard: &Rc<Shard>,
    conn: u64,
    delivery: u64,
    message: String,
) -> Result<Encode, Error> {
    let req = |id, message, shard, conn| Request::Nack {
        id,
        message,
        shard,
        conn,
    };
    settle_nack(shard, conn, delivery, message, req).await
}

/// Sends the nack `request` builds (a group's or a stage's) to the shard
/// that made `delivery`.
pub(super) async fn settle_nack(
    shard: &Rc<Shard>,
    conn: u64,
    delivery: u64,
    message: String,
    request: impl FnOnce(u64, String, u16, u64) -> Request,
) -> Result<Encode, Error> {
    settle(shard, delivery, request(delivery, message, shard.id, conn)).await
}
