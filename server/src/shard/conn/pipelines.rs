//! Pipeline requests from a connection: stage subscriptions, stage acks
//! and nacks, and retries of failed executions.

use super::*;

/// Attaches a stage handler to every run of `pipeline`.
pub(super) async fn subscribe(
    shard: &Rc<Shard>,
    conn: u64,
    pipeline: String,
    stage: String,
    max_in_flight: u32,
) -> Result<Encode, Error> {
    let (partitions, source) = {
        let topology = shard.topology.borrow();
        let Some(spec) = topology.pipelines.get(&pipeline) else {
            return Err(Error::UnknownPipeline { pipeline });
        };
        if !spec.stages.iter().any(|s| s.name == stage) {
            return Err(Error::UnknownStage { pipeline, stage });
        }
        let partitions = topology
            .streams
            .get(&spec.source_stream)
            .map_or(0, |s| s.partitions);
        (partitions, spec.source_stream.clone())
    };
    reserve_subscription(shard, conn)?;
    let member = new_member(shard, conn);
    attach_everywhere(
        shard,
        &source,
        partitions,
        max_in_flight,
        |partition, per_partition| Request::StageAttach {
            pipeline: pipeline.clone(),
            partition,
            stage: stage.clone(),
            max_in_flight: per_partition,
            member,
        },
    )
    .await
    .inspect_err(|_| release_subscription(shard, conn))?;
    Ok(ack_ok())
}

/// Settles stage acks, each by the shard that made its delivery, one request per shard.
pub(super) async fn stage_acks(
    shard: &Rc<Shard>,
    conn: u64,
    acks: Vec<StageAckOf>,
) -> Result<Encode, Error> {
    check_ack_ids(acks.len(), shard.settings.config.ack_ids_max)?;
    // Each ack is settled on its own, by the shard that made its
    // delivery; one request per shard.
    let single = acks.len() == 1;
    let mut unsettled = Vec::new();
    let mut by_owner: std::collections::BTreeMap<u16, Vec<StageAckOf>> = Default::default();
    for (id, output) in acks {
        match delivery_owner(shard, id) {
            Ok(owner) => by_owner.entry(owner).or_default().push((id, output)),
            Err(f) => unsettled.push((id, f)),
        }
    }
    let calls = by_owner.into_iter().map(|(owner, acks)| {
        shard.call(
            owner,
            Request::StageAcks {
                acks,
                shard: shard.id,
                conn,
            },
        )
    });
    for reply in futures::future::join_all(calls).await {
        match reply {
            Reply::Unsettled(failures) => unsettled.extend(failures),
            other => return Err(unexpected(other)),
        }
    }
    if unsettled.is_empty() {
        Ok(ack_ok())
    } else if single {
        // A lone `StageAck` gets its own failure as it is.
        Err(unsettled.swap_remove(0).1)
    } else {
        Err(Error::AcksNotTaken { unsettled })
    }
}

/// Records a stage's failure; it is retried as its policy says.
pub(super) async fn stage_nack(
    shard: &Rc<Shard>,
    conn: u64,
    delivery: u64,
    message: String,
) -> Result<Encode, Error> {
    let req = |id, message, shard, conn| Request::StageNack {
        id,
        message,
        shard,
        conn,
    };
    groups::settle_nack(shard, conn, delivery, message, req).await
}

/// Runs failed executions again: one, or every one of the pipeline's.
pub(super) async fn retry(
    shard: &Rc<Shard>,
    pipeline: String,
    execution: Option<(u32, u64)>,
) -> Result<Encode, Error> {
    let source = {
        let topology = shard.topology.borrow();
        let Some(spec) = topology.pipelines.get(&pipeline) else {
            return Err(Error::UnknownPipeline { pipeline });
        };
        spec.source_stream.clone()
    };
    let targets: Vec<u16> = match execution {
        Some((partition, _)) => {
            shard.check_partition(&source, partition)?;
            vec![shard.owner(&source, partition)]
        }
        None => (0..shard.shards).collect(),
    };
    let mut lines = Vec::new();
    for to in targets {
        let req = Request::PipelineRetry {
            pipeline: pipeline.clone(),
            execution,
        };
        match shard.call(to, req).await {
            Reply::Applied(l) => lines.extend(l),
            other => return Err(unexpected(other)),
        }
    }
    if let (Some((p, o)), true) = (execution, lines.is_empty()) {
        return Err(Error::NoFailedExecution {
            pipeline,
            partition: p,
            offset: o,
        });
    }
    Ok(Box::new(move |id, outbox: &Outbox| {
        let summary = lines.iter().map(String::as_str).collect();
        outbox.send(id, &Message::ApplyOk(hadron_wire::ApplyOk { summary }))
    }))
}
