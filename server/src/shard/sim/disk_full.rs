//! A full disk on a single node's shards: publishes are refused with
//! `DiskFull` while allocations fail, nothing is poisoned, and once space
//! is freed the shard's housekeeping writes the staged batches by itself
//! (no publish needed) and the log takes publishes again.

use bytes::Bytes;
use hadron_engine::storage::sim::SimFaults;

use super::*;
use crate::shard::error::{AppendFailed, Error};
use crate::shard::{COMMIT_EVERY, Request};

/// One publish of `count` events of 2 KiB to partition 0 through its
/// owner; its reply.
fn publish(life: &mut Life, tag: &str, count: usize) -> Reply {
    let owner = life.shards[0].owner(STREAM, 0);
    let shard = life.shards[owner as usize].clone();
    let events = (0..count)
        .map(|i| {
            let id = format!("{tag}-{i}");
            Bytes::from(hadron_wire::encode_event(&hadron_wire::EventRef {
                id: &id,
                source: "sim",
                ty: "full",
                data: &[b'x'; 2048],
                ..hadron_wire::EventRef::default()
            }))
        })
        .collect();
    let req = Request::Publish {
        stream: STREAM.into(),
        partition: 0,
        events,
    };
    life.pool.run_until(shard.call(owner, req))
}

#[test]
fn a_full_disk_refuses_publishes_and_clears_by_itself_once_space_is_freed() {
    let mut sim = Sim::new(11);
    let mut life = sim.open_life(0);
    let p = sim.partition(&life, 0);
    sim.storage.set_faults(SimFaults {
        disk_full: true,
        ..QUIET
    });
    // 64 KiB segments: a few batches roll to a segment whose file cannot
    // be created.
    let mut refused = None;
    for round in 0..64 {
        match publish(&mut life, &format!("r{round}"), 8) {
            Reply::Published(_) => {}
            Reply::Failed(Error::Append {
                failed: AppendFailed::DiskFull(why),
                ..
            }) => {
                refused = Some(why);
                break;
            }
            other => panic!("round {round}: {other:?}"),
        }
    }
    let why = refused.unwrap_or_else(|| panic!("no publish refused on a full disk"));
    assert!(why.contains("may still be written"), "{why}");
    assert!(p.log.disk_full().is_some());
    let staged = p.log.stats().next_offset;
    assert!(p.log.stats().durable_offset < staged);

    // Space freed; nobody publishes: housekeeping writes what is staged.
    sim.storage.set_faults(QUIET);
    for _ in 0..5 {
        sim.clock.advance(COMMIT_EVERY);
        life.pool.run_until_stalled();
    }
    assert_eq!(p.log.disk_full(), None);
    assert_eq!(p.log.stats().durable_offset, staged);
    assert!(matches!(
        publish(&mut life, "after", 2),
        Reply::Published(_)
    ));
}
