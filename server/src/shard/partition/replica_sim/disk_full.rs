//! A full disk on every node for a while (`replica_disk_full.rs`): the
//! groups keep running (none stops), status shows the logs as disk full,
//! and once space is freed they recover by themselves, acknowledge what
//! they then write, and the run's checks (every acknowledged event once,
//! durable, on every node) hold: nothing was acknowledged before durable.

use super::*;

fn set_disk_full(sim: &Sim, full: bool) {
    for node in &sim.nodes {
        node.storage.set_faults(SimFaults {
            disk_full: full,
            ..SimFaults::default()
        });
    }
}

#[test]
fn a_replicated_partition_whose_disk_is_full_for_a_while_recovers_by_itself() {
    for seed in [1, 2, 3] {
        let mut sim = Sim::new(seed);
        // Only the full disk: no crashes or cuts.
        sim.crash_ppm = 0;
        sim.cut_ppm = 0;
        for id in 1..=sim.n {
            sim.open(id);
        }
        let (full_from, full_to) = (STEPS / 4, STEPS / 2);
        let mut seen_full = false;
        let mut acked_when_freed = 0;
        for step in 0..STEPS {
            if step == full_from {
                set_disk_full(&sim, true);
            }
            if step == full_to {
                set_disk_full(&sim, false);
                acked_when_freed = sim.acked.len();
            }
            sim.clients(true);
            sim.step();
            for node in &sim.nodes {
                let Some(r) = node.partition.as_ref().and_then(|p| p.replica.as_ref()) else {
                    continue;
                };
                let status = r.status();
                assert_eq!(status.stopped, None, "seed {seed}: a group stopped");
                if let Some(why) = &status.disk_full {
                    assert!(why.contains("disk full"), "seed {seed}: {why}");
                    assert!((full_from..full_to + 200).contains(&step), "seed {seed}");
                    seen_full = true;
                }
            }
        }
        assert!(seen_full, "seed {seed}: no log found the disk full");
        assert!(
            sim.acked.len() > acked_when_freed,
            "seed {seed}: nothing acknowledged after space was freed"
        );
        sim.heal();
        sim.check();
    }
}
