//! A follower of the consumer-group offsets group that fell behind the
//! leader's retention installs a snapshot descriptor: its offsets log
//! restarts at the leader's first offset, empty until the entries after it
//! arrive. Loading the groups' offsets from it then (leading, or opening
//! at a restart) finds no snapshot, as for a new partition; it used to
//! read the offset before the log's start, fail, and stop the partition's
//! group as it was elected, or take the partition offline at a restart.

use super::*;

#[test]
fn offsets_of_a_log_restarted_at_a_snapshot_descriptor_load_as_none() {
    let storage = SimStorage::new(11, SimFaults::default());
    let clock = SimClock::new(EPOCH_MS);
    let mut pool = LocalPool::new();
    clock.set_spawner(pool.spawner());
    let result = pool.run_until({
        let (storage, clock) = (storage.clone(), clock.clone());
        async move {
            let p = open_partition(&storage, clock.clone()).await?;
            p.offsets
                .restart_at(40, 3, 25)
                .await
                .map_err(|e| format!("restart_at: {e}"))?;
            assert_eq!(p.offsets.stats().start_offset, 25);
            p.load_offsets().await?;
            drop(p);
            // And at the next open.
            let p = open_partition(&storage, clock).await?;
            assert_eq!(p.offsets.stats().start_offset, 25);
            Ok::<_, String>(())
        }
    });
    assert_eq!(result, Ok(()));
}
