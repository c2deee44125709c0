//! `hadron cluster rebalance`: the metadata group's leader plans moves
//! of existing replicated partitions so that every node holds about as
//! many replicas, and leads about as many, as every other; with
//! `--drain`, it first moves every replica off the nodes named (before
//! `remove-node`, or to empty a machine). The plan is one `Moves` entry
//! (kind 10 of `command.rs`): every node applies its moves in order, as
//! it applies a `hadron cluster move`, and each partition's groups then
//! reconcile toward their new voters on their own (a new replica joins
//! as a learner and catches up before the old one is removed; section 9
//! of docs/replication.md). The answer lists the moves; `--dry-run`
//! plans and changes nothing.
//!
//! The plan ([`plan`]) is a pure function of the nodes, the nodes to
//! drain and the current placement (the overrides included, so a move
//! still under way counts where it is going):
//!
//! 1. **Drain:** each replica on a drained node goes to the node left
//!    holding the fewest replicas that the partition is not on (ties by
//!    node id), at the same position (a drained preferred leader's
//!    replacement is preferred until step 3 decides).
//! 2. **Replicas:** while some node holds two or more replicas more than
//!    another, one replica moves from the most loaded node to the least
//!    loaded one that does not hold that partition: a follower's first,
//!    then a preferred leader's. Each such move lowers the sum of squared
//!    loads, so this ends.
//! 3. **Leaders:** the same with preferred leaders, by reordering a
//!    partition's voters (no data moves: its leader offers leadership to
//!    the new first voter once that one is caught up).
//!
//! Only partitions whose voters changed are moves, at most `moves_max`
//! of them per call (`--max-moves`, default [`REBALANCE_MOVES_DEFAULT`]):
//! each new replica copies its partition from the leader, so a large
//! plan goes in steps; the answer says how many moves are left, and
//! running it again plans from where the cluster then is. A cluster
//! already balanced plans nothing.
//!
//! Not done: placement per shard of a node (a partition's shard on each
//! node is a hash of its name and number), and weighting by bytes held
//! rather than by replicas.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use super::Command;
use super::command::Placements;
use crate::config::error::{ConfigError, Problem};
use crate::shard::clock::Runtime;
use crate::shard::{Error, Reply, Shard};
use hadron_engine::storage::Storage;

/// Moves one rebalance plans at most unless told otherwise.
pub const REBALANCE_MOVES_DEFAULT: u32 = 64;
/// The most moves one rebalance may be told to plan (`--max-moves`).
pub const REBALANCE_MOVES_MAX: u32 = 4_096;

/// A rebalance plan: the moves (stream, partition, new voters, the
/// preferred leader first), in placement order, and how many more
/// partitions would move past `moves_max`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub moves: Placements,
    pub left: usize,
}

/// A rebalance as asked for (the wire's `Rebalance`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    /// Nodes to empty first.
    pub drain: Vec<u64>,
    /// The most partitions to move (0: [`REBALANCE_MOVES_DEFAULT`]).
    pub moves_max: u32,
    /// Plan only.
    pub dry_run: bool,
    /// The client's change id (0: none): a resend of a rebalance the
    /// metadata group applied is answered with what it did.
    pub change: u64,
}

/// Each replicated partition's voters before a plan.
type Before = BTreeMap<(String, u32), Vec<u64>>;

/// Per node: (replicas held, preferred-leader partitions).
type Load = BTreeMap<u64, (usize, usize)>;

/// Plans a rebalance of `placed` (every replicated partition: stream,
/// partition, voters with the preferred leader first) over `nodes`, less
/// `drain`, as the module header says. Refused, changing nothing: a node
/// to drain that is not a node, draining every node, or a stream with
/// more replicas than the nodes left.
pub(crate) fn plan(
    nodes: &[u64],
    drain: &[u64],
    placed: &Placements,
    moves_max: usize,
) -> Result<Plan, String> {
    if let Some(d) = drain.iter().find(|d| !nodes.contains(d)) {
        return Err(format!("node {d} to drain is not a node of this cluster"));
    }
    let targets: BTreeSet<u64> = nodes
        .iter()
        .copied()
        .filter(|n| !drain.contains(n))
        .collect();
    if let Some((stream, _, voters)) = placed.iter().find(|(_, _, v)| v.len() > targets.len()) {
        return Err(format!(
            "stream {stream} has {} replicas but {} nodes would be left to hold them",
            voters.len(),
            targets.len()
        ));
    }
    let mut next = placed.clone();
    let mut load: Load = targets.iter().map(|&id| (id, (0, 0))).collect();
    for (_, _, voters) in &next {
        for (i, id) in voters.iter().enumerate() {
            if let Some((held, led)) = load.get_mut(id) {
                *held += 1;
                *led += usize::from(i == 0);
            }
        }
    }
    drain_off(&mut next, &mut load, drain);
    spread(&mut next, &mut load, |l| l.0, move_replica);
    spread(&mut next, &mut load, |l| l.1, move_leader);
    let mut moves: Placements = next
        .into_iter()
        .zip(placed)
        .filter(|(new, old)| new.2 != old.2)
        .map(|(new, _)| new)
        .collect();
    let left = moves.len().saturating_sub(moves_max);
    moves.truncate(moves_max);
    Ok(Plan { moves, left })
}

/// Step 1: every replica on a drained node goes to the least loaded
/// target node the partition is not on.
fn drain_off(next: &mut Placements, load: &mut Load, drain: &[u64]) {
    for (_, _, voters) in next.iter_mut() {
        for i in 0..voters.len() {
            if !drain.contains(&voters[i]) {
                continue;
            }
            let to = load
                .iter()
                .filter(|(id, _)| !voters.contains(id))
                .min_by_key(|&(&id, &(held, _))| (held, id))
                .map(|(&id, _)| id);
            // `plan` checked there are enough targets for every partition.
            if let Some(to) = to {
                voters[i] = to;
                if let Some((held, led)) = load.get_mut(&to) {
                    *held += 1;
                    *led += usize::from(i == 0);
                }
            }
        }
    }
}

/// Steps 2 and 3: while the most loaded node (by `measure`) exceeds the
/// least loaded by two or more, `step` moves one unit from a giver to a
/// receiver (most loaded givers and least loaded receivers first); ends
/// when no pair has a partition to move.
fn spread(
    next: &mut Placements,
    load: &mut Load,
    measure: fn(&(usize, usize)) -> usize,
    step: fn(&mut Placements, &mut Load, u64, u64) -> bool,
) {
    // Each step lowers the sum of squared loads; this bounds the loop
    // even if that reasoning were wrong.
    let bound = next.iter().map(|(_, _, v)| v.len()).sum::<usize>() * load.len().max(1) + 1;
    for _ in 0..bound {
        let mut by_load: Vec<(usize, u64)> = load.iter().map(|(&id, l)| (measure(l), id)).collect();
        by_load.sort_unstable();
        let moved = by_load.iter().rev().any(|&(high, giver)| {
            by_load
                .iter()
                .take_while(|&&(low, _)| low + 2 <= high)
                .any(|&(_, receiver)| step(next, load, giver, receiver))
        });
        if !moved {
            return;
        }
    }
}

/// Moves one replica of a partition from `giver` to `receiver` (which
/// does not hold it), a follower's before a preferred leader's.
fn move_replica(next: &mut Placements, load: &mut Load, giver: u64, receiver: u64) -> bool {
    let candidate = |leader: bool| {
        next.iter().position(|(_, _, v)| {
            !v.contains(&receiver)
                && v.iter()
                    .position(|&n| n == giver)
                    .is_some_and(|i| (i == 0) == leader)
        })
    };
    let Some(at) = candidate(false).or_else(|| candidate(true)) else {
        return false;
    };
    let voters = &mut next[at].2;
    let Some(i) = voters.iter().position(|&n| n == giver) else {
        return false;
    };
    voters[i] = receiver;
    let lead = usize::from(i == 0);
    if let Some(l) = load.get_mut(&giver) {
        l.0 -= 1;
        l.1 -= lead;
    }
    if let Some(l) = load.get_mut(&receiver) {
        l.0 += 1;
        l.1 += lead;
    }
    true
}

/// Makes `receiver` the preferred leader of a partition `giver` leads
/// and `receiver` holds (the two swap places).
fn move_leader(next: &mut Placements, load: &mut Load, giver: u64, receiver: u64) -> bool {
    let Some((_, _, voters)) = next
        .iter_mut()
        .find(|(_, _, v)| v.first() == Some(&giver) && v.contains(&receiver))
    else {
        return false;
    };
    let Some(i) = voters.iter().position(|&n| n == receiver) else {
        return false;
    };
    voters.swap(0, i);
    if let Some(l) = load.get_mut(&giver) {
        l.1 -= 1;
    }
    if let Some(l) = load.get_mut(&receiver) {
        l.1 += 1;
    }
    true
}

/// A rebalance refused for `reason`.
fn refused(reason: String) -> Error {
    Error::InvalidConfig(ConfigError::new("rebalance", Problem::Invalid { reason }))
}

/// The answer's line for a move.
fn describe(stream: &str, partition: u32, from: &[u64], to: &[u64]) -> String {
    format!("{stream}/{partition}: {from:?} -> {to:?}")
}

impl<S: Storage + Clone + 'static, R: Runtime> Shard<S, R> {
    /// `hadron cluster rebalance` (shard 0 of a node leading the
    /// metadata group; serialized with the other admin changes): plans
    /// as the module header says, and unless `dry_run` proposes the plan
    /// as one `Moves` entry; answers one line per move, then how many
    /// are left.
    pub(crate) async fn rebalance(self: &Rc<Self>, asked: Asked) -> Reply {
        let Asked {
            mut drain,
            moves_max,
            dry_run,
            change,
        } = asked;
        // Each id once; more ids than a cluster has nodes cannot all be
        // nodes (the frame bounds the list; this bounds the work).
        drain.sort_unstable();
        drain.dedup();
        if drain.len() > crate::config::cluster::CLUSTER_NODES_MAX {
            return Reply::Failed(refused(format!(
                "{} nodes to drain: a cluster has at most {}",
                drain.len(),
                crate::config::cluster::CLUSTER_NODES_MAX
            )));
        }
        let moves_max = match moves_max {
            0 => REBALANCE_MOVES_DEFAULT,
            n => n,
        };
        let Some(meta) = self.meta_group() else {
            return Reply::Failed(refused(
                "this server is not a node of a cluster of several nodes".into(),
            ));
        };
        if !(1..=REBALANCE_MOVES_MAX).contains(&moves_max) {
            return Reply::Failed(refused(format!(
                "at most {moves_max} moves: name 1 to {REBALANCE_MOVES_MAX}"
            )));
        }
        if self.applying.get() {
            return Reply::Failed(Error::ApplyInProgress);
        }
        self.applying.set(true);
        let result = async {
            meta.ready().await?;
            if let Some(answer) = meta.answered_change(change) {
                let mut lines = vec!["this rebalance was applied already; it moved:".into()];
                lines.extend(answer?);
                return Ok(lines);
            }
            let (plan, before) = self.plan_rebalance(&drain, moves_max as usize)?;
            let mut lines: Vec<String> = plan
                .moves
                .iter()
                .map(|(stream, partition, to)| {
                    let from = before.get(&(stream.clone(), *partition));
                    describe(stream, *partition, from.map_or(&[][..], |v| v), to)
                })
                .collect();
            if plan.moves.is_empty() {
                lines.push("balanced: nothing to move".into());
            } else if dry_run {
                lines.push(format!(
                    "dry run: {} moves planned, none made",
                    plan.moves.len()
                ));
            } else {
                let moves = Command::Moves {
                    moves: plan.moves,
                    change,
                };
                let applied = meta.propose(&moves).await?;
                lines.extend(applied);
            }
            if plan.left > 0 {
                lines.push(format!(
                    "{} more partitions to move: run rebalance again once these are done",
                    plan.left
                ));
            }
            Ok(lines)
        }
        .await;
        self.applying.set(false);
        match result {
            Ok(lines) => Reply::Applied(lines),
            Err(e) => Reply::Failed(e),
        }
    }

    /// The plan for the cluster as this node (the metadata leader, all
    /// applied) places it, and every replicated partition's voters now.
    fn plan_rebalance(&self, drain: &[u64], moves_max: usize) -> Result<(Plan, Before), Error> {
        let config = &self.settings.config;
        let nodes: Vec<u64> = config
            .cluster
            .as_ref()
            .map(|c| c.current_peers().iter().map(|p| p.id).collect())
            .unwrap_or_default();
        let mut placed = Placements::new();
        for spec in self.topology.borrow().streams.values() {
            if config.stream_replicas(spec) >= 2 {
                placed.extend(
                    (0..spec.partitions)
                        .map(|p| (spec.name.clone(), p, self.placed_nodes(spec, p))),
                );
            }
        }
        let plan = plan(&nodes, drain, &placed, moves_max).map_err(refused)?;
        let before = placed.into_iter().map(|(s, p, v)| ((s, p), v)).collect();
        Ok((plan, before))
    }

    /// Applies a committed `Moves` entry: each move as a `Move` is, in
    /// order; the first refused ends it (every node refuses the same).
    pub(super) async fn apply_moves(self: &Rc<Self>, moves: Placements) -> Reply {
        let mut lines = Vec::with_capacity(moves.len());
        for (stream, partition, voters) in moves {
            match self.move_inner(stream, partition, voters).await {
                Reply::Applied(l) => lines.extend(l),
                other => return other,
            }
        }
        Reply::Applied(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(placed: &Placements, id: u64) -> usize {
        placed.iter().filter(|(_, _, v)| v.contains(&id)).count()
    }

    fn led(placed: &Placements, id: u64) -> usize {
        placed.iter().filter(|(_, _, v)| v[0] == id).count()
    }

    /// `placed` with `plan`'s moves made.
    fn after(placed: &Placements, plan: &Plan) -> Placements {
        let mut next = placed.clone();
        for (stream, partition, voters) in &plan.moves {
            let at = next
                .iter()
                .position(|(s, p, _)| s == stream && p == partition)
                .unwrap();
            next[at].2 = voters.clone();
        }
        next
    }

    fn stream(name: &str, voters: &[&[u64]]) -> Placements {
        voters
            .iter()
            .enumerate()
            .map(|(p, v)| (name.to_owned(), p as u32, v.to_vec()))
            .collect()
    }

    #[test]
    fn a_node_added_to_three_takes_its_share_and_each_move_replaces_one_replica() {
        // Four partitions of 3 replicas on nodes 1 to 3; node 4 is new.
        let placed = stream("orders", &[&[1, 2, 3], &[2, 3, 1], &[3, 1, 2], &[1, 2, 3]]);
        let plan = plan(&[1, 2, 3, 4], &[], &placed, 64).unwrap();
        let next = after(&placed, &plan);
        assert_eq!(
            (1..=4).map(|id| held(&next, id)).collect::<Vec<_>>(),
            vec![3, 3, 3, 3]
        );
        assert_eq!(
            (1..=4).map(|id| led(&next, id)).collect::<Vec<_>>(),
            vec![1, 1, 1, 1]
        );
        assert_eq!(plan.left, 0);
        for (stream, partition, voters) in &plan.moves {
            let old = &placed[*partition as usize].2;
            let new_nodes = voters.iter().filter(|n| !old.contains(n)).count();
            assert!(
                new_nodes <= 1,
                "{stream}/{partition}: {old:?} -> {voters:?}"
            );
        }
        // Three replicas moved (one per partition moved), and the
        // leaders' reordering moved no data.
        let replicas_moved: usize = plan
            .moves
            .iter()
            .map(|(_, p, v)| {
                v.iter()
                    .filter(|n| !placed[*p as usize].2.contains(n))
                    .count()
            })
            .sum();
        assert_eq!(replicas_moved, 3);
    }

    #[test]
    fn a_balanced_cluster_plans_nothing() {
        let placed = stream("s", &[&[1, 2], &[2, 3], &[3, 1]]);
        assert_eq!(plan(&[1, 2, 3], &[], &placed, 64), Ok(Plan::default()));
        assert_eq!(plan(&[1, 2, 3], &[], &Vec::new(), 64), Ok(Plan::default()));
    }

    #[test]
    fn leaders_spread_by_reordering_voters_without_moving_data() {
        let placed = stream("s", &[&[1, 2, 3], &[1, 2, 3], &[1, 2, 3]]);
        let plan = plan(&[1, 2, 3], &[], &placed, 64).unwrap();
        let next = after(&placed, &plan);
        for (_, _, v) in &next {
            let mut sorted = v.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, vec![1, 2, 3]);
        }
        assert_eq!(
            (1..=3).map(|id| led(&next, id)).collect::<Vec<_>>(),
            vec![1, 1, 1]
        );
    }

    #[test]
    fn a_drained_node_is_emptied_onto_the_least_loaded_nodes() {
        let placed = stream(
            "s",
            &[&[2, 1, 3], &[1, 2, 4], &[3, 4, 2], &[4, 1, 3], &[2, 3, 4]],
        );
        let plan = plan(&[1, 2, 3, 4], &[2], &placed, 64).unwrap();
        let next = after(&placed, &plan);
        assert_eq!(held(&next, 2), 0, "{next:?}");
        assert_eq!([1, 3, 4].map(|id| held(&next, id)), [5, 5, 5], "{next:?}");
        assert!(next.iter().all(|(_, _, v)| {
            let set: BTreeSet<_> = v.iter().collect();
            set.len() == 3
        }));
    }

    #[test]
    fn a_plan_past_its_moves_bound_says_how_many_are_left() {
        let placed = stream("s", &[&[1, 2], &[1, 2], &[1, 2], &[1, 2]]);
        let all = plan(&[1, 2, 3, 4], &[], &placed, 64).unwrap();
        let some = plan(&[1, 2, 3, 4], &[], &placed, 1).unwrap();
        assert!(all.moves.len() >= 2, "{all:?}");
        assert_eq!(some.moves, all.moves[..1].to_vec());
        assert_eq!(some.left, all.moves.len() - 1);
    }

    #[test]
    fn refusals_name_the_unknown_node_and_the_stream_left_short() {
        let placed = stream("orders", &[&[1, 2, 3]]);
        assert_eq!(
            plan(&[1, 2, 3], &[9], &placed, 64),
            Err("node 9 to drain is not a node of this cluster".into())
        );
        assert_eq!(
            plan(&[1, 2, 3], &[3], &placed, 64),
            Err("stream orders has 3 replicas but 2 nodes would be left to hold them".into())
        );
    }

    /// Random placements: the replicas end within one of each other on
    /// every node, no partition holds a node twice or a drained node,
    /// and the leaders are never less even than before.
    #[test]
    fn random_placements_end_balanced_and_valid() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next_u64 = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..300 {
            let n = 2 + next_u64() % 6;
            let nodes: Vec<u64> = (1..=n).collect();
            let drain: Vec<u64> = if n > 3 && round % 3 == 0 {
                vec![1 + next_u64() % n]
            } else {
                Vec::new()
            };
            let left = n as usize - drain.len();
            let replicas = 1 + (next_u64() as usize % left.min(3));
            let mut placed = Placements::new();
            for p in 0..(next_u64() % 20) as u32 {
                let mut voters = Vec::new();
                while voters.len() < replicas {
                    let id = 1 + next_u64() % n;
                    if !voters.contains(&id) {
                        voters.push(id);
                    }
                }
                placed.push(("s".to_owned(), p, voters));
            }
            let plan = plan(&nodes, &drain, &placed, usize::MAX).unwrap();
            let next = after(&placed, &plan);
            let targets: Vec<u64> = nodes
                .iter()
                .copied()
                .filter(|n| !drain.contains(n))
                .collect();
            let loads: Vec<usize> = targets.iter().map(|&id| held(&next, id)).collect();
            let spread = loads.iter().max().unwrap() - loads.iter().min().unwrap();
            assert!(spread <= 1, "round {round}: loads {loads:?} of {next:?}");
            for (_, _, v) in &next {
                let set: BTreeSet<_> = v.iter().collect();
                assert_eq!(set.len(), replicas, "round {round}: {v:?}");
                assert!(v.iter().all(|id| !drain.contains(id)), "round {round}");
            }
            let lead_spread = |placed: &Placements| {
                let leads: Vec<usize> = targets.iter().map(|&id| led(placed, id)).collect();
                leads.iter().max().unwrap() - leads.iter().min().unwrap()
            };
            if drain.is_empty() {
                assert!(
                    lead_spread(&next) <= lead_spread(&placed).max(1),
                    "round {round}"
                );
            }
        }
    }
}
