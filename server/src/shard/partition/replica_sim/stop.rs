//! A leader whose disk fails under it (every write EIO): its log is
//! poisoned and its group stops on that node. The publish waiting for its
//! commit is answered (it used to wait for good, and with it its
//! connection), later requests are refused `ReplicaOffline` naming
//! another voter (a `NotLeader` a client follows), the node reports no
//! leader, and the other two elect one of themselves and take publishes.

use super::*;

/// Steps a simulated second at most until `done`.
fn step_until(sim: &mut Sim, what: &str, mut done: impl FnMut(&Sim) -> bool) {
    for _ in 0..500 {
        if done(sim) {
            return;
        }
        sim.step();
    }
    panic!("seed {}: {what} within 500 steps", sim.seed);
}

fn serving_leader(sim: &Sim) -> Option<u64> {
    (1..=NODES).find(|&id| {
        sim.nodes[id as usize - 1]
            .partition
            .as_ref()
            .and_then(|p| p.replica.as_ref())
            .is_some_and(|r| r.is_leader() && r.refusal("s", 0).is_none())
    })
}

#[test]
fn a_leader_whose_disk_fails_answers_the_publish_waiting_and_names_another_voter() {
    for seed in [1, 2, 3] {
        let mut sim = Sim::new(seed);
        sim.crash_ppm = 0;
        sim.cut_ppm = 0;
        for id in 1..=NODES {
            sim.open(id);
        }
        step_until(&mut sim, "a leader", |s| serving_leader(s).is_some());
        let leader = serving_leader(&sim).unwrap_or_default();
        sim.nodes[leader as usize - 1]
            .storage
            .set_faults(SimFaults {
                write_fail_ppm: 1_000_000,
                ..SimFaults::default()
            });
        sim.new_batch(0);
        sim.clients[0].leader = leader;
        sim.attempt(0);
        let (answer, _) = sim.clients[0]
            .attempt
            .clone()
            .unwrap_or_else(|| panic!("seed {seed}"));
        step_until(&mut sim, "the publish answered", |_| {
            answer.borrow().is_some()
        });
        let answered = answer.borrow_mut().take();
        let Some(Err(Error::ReplicaOffline {
            why, leader: hint, ..
        })) = answered
        else {
            panic!("seed {seed}: the publish answered {answered:?}");
        };
        assert!(why.contains("replication stopped"), "seed {seed}: {why}");
        let hint = hint.unwrap_or_else(|| panic!("seed {seed}: no other voter named"));
        assert_ne!(hint.node_id, leader, "seed {seed}");
        let p = sim.nodes[leader as usize - 1].partition.clone();
        let r = p.as_ref().and_then(|p| p.replica.clone());
        let r = r.unwrap_or_else(|| panic!("seed {seed}: the replica"));
        assert!(r.status().stopped.is_some(), "seed {seed}");
        let refusal = r.refusal("s", 0);
        assert!(
            matches!(&refusal, Some(Error::ReplicaOffline { leader: Some(l), .. }) if l.node_id != leader),
            "seed {seed}: {refusal:?}"
        );
        // The others go on: one of them leads and takes the batch.
        step_until(&mut sim, "another leader", |s| {
            serving_leader(s).is_some_and(|l| l != leader)
        });
        let acked = sim.acked.len();
        sim.clients[0].attempt = None;
        for _ in 0..500 {
            sim.clients(true);
            sim.step();
        }
        assert!(
            sim.acked.len() > acked,
            "seed {seed}: nothing acknowledged after"
        );
    }
}
