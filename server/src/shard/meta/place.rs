//! Where the metadata group's leader places the replicated partitions an
//! `Apply` creates (a new stream, or more partitions of one): over the
//! registry's nodes now (a node added since the founders included, a
//! removed one not), fewest partitions first (docs/replication.md
//! section 2, "Placement"). The leader chooses before proposing; the
//! `Apply` entry carries the choice, and every node records it
//! (`Overrides::place`) before installing the topology, so every node
//! agrees, a node replaying the log included. Existing partitions never
//! move by this; a stream from a node's config file at first start keeps
//! static placement.

use std::collections::BTreeMap;
use std::rc::Rc;

use super::command::Placements;
use crate::config::error::{ConfigError, Problem};
use crate::shard::clock::Runtime;
use crate::shard::topology::Topology;
use crate::shard::{Error, Shard};
use hadron_engine::storage::Storage;

/// Per node: (replicas held, preferred-leader partitions).
type Load = BTreeMap<u64, (usize, usize)>;

/// Places `new` partitions (stream, partition, replicas) on `nodes`,
/// given the voters of every existing replicated partition (`existing`,
/// the preferred leader first). Each gets `replicas` distinct nodes,
/// those holding the fewest partitions first (ties by node id); its
/// preferred leader is the one of them leading the fewest partitions
/// (ties by node id), the others follow in the order chosen. Each choice
/// counts for the next. More replicas than nodes is refused, naming the
/// stream.
pub(crate) fn choose(
    nodes: &[u64],
    existing: &[Vec<u64>],
    new: &[(String, u32, u32)],
) -> Result<Placements, String> {
    let mut load: Load = nodes.iter().map(|&id| (id, (0, 0))).collect();
    for voters in existing {
        for (i, id) in voters.iter().enumerate() {
            if let Some((held, led)) = load.get_mut(id) {
                *held += 1;
                *led += usize::from(i == 0);
            }
        }
    }
    let mut placed = Vec::with_capacity(new.len());
    for (stream, partition, replicas) in new {
        let replicas = *replicas as usize;
        if replicas > load.len() {
            return Err(format!(
                "stream {stream} has {replicas} replicas but the cluster has {} nodes",
                load.len()
            ));
        }
        let mut by_held: Vec<(usize, u64)> =
            load.iter().map(|(&id, &(held, _))| (held, id)).collect();
        by_held.sort_unstable();
        let mut voters: Vec<u64> = by_held[..replicas].iter().map(|&(_, id)| id).collect();
        let leader = voters
            .iter()
            .enumerate()
            .min_by_key(|&(_, id)| (load[id].1, *id))
            .map(|(i, _)| i)
            .unwrap_or(0);
        let first = voters.remove(leader);
        voters.insert(0, first);
        for (i, id) in voters.iter().enumerate() {
            if let Some((held, led)) = load.get_mut(id) {
                *held += 1;
                *led += usize::from(i == 0);
            }
        }
        placed.push((stream.clone(), *partition, voters));
    }
    Ok(placed)
}

impl<S: Storage + Clone + 'static, R: Runtime> Shard<S, R> {
    /// Where the replicated partitions `next` adds to `current` go (none
    /// off a cluster of several nodes).
    pub(super) fn place_new(
        &self,
        current: &Topology,
        next: &Topology,
    ) -> Result<Placements, Error> {
        let config = &self.settings.config;
        let Some(cluster) = config.cluster.as_ref().filter(|c| c.nodes() > 1) else {
            return Ok(Vec::new());
        };
        let replicated = |spec| Some(config.stream_replicas(spec)).filter(|&r| r >= 2);
        let mut new = Vec::new();
        for (name, spec) in &next.streams {
            let Some(replicas) = replicated(spec) else {
                continue;
            };
            let from = current.streams.get(name).map_or(0, |old| old.partitions);
            new.extend((from..spec.partitions).map(|p| (name.clone(), p, replicas)));
        }
        if new.is_empty() {
            return Ok(Vec::new());
        }
        let mut existing = Vec::new();
        for spec in current.streams.values() {
            if replicated(spec).is_some() {
                existing.extend((0..spec.partitions).map(|p| self.placed_nodes(spec, p)));
            }
        }
        let nodes: Vec<u64> = cluster.current_peers().iter().map(|p| p.id).collect();
        choose(&nodes, &existing, &new).map_err(|reason| {
            Error::InvalidConfig(ConfigError::new(
                "placement of new partitions",
                Problem::Invalid { reason },
            ))
        })
    }

    /// Records where the leader placed an `Apply`'s new partitions,
    /// durably, before its topology is installed (so they open with
    /// these voters).
    pub(super) fn record_placement(self: &Rc<Self>, placement: &Placements) -> Result<(), Error> {
        if placement.is_empty() {
            return Ok(());
        }
        let data_dir = &self.settings.config.data_dir;
        self.settings
            .placements
            .place(data_dir, placement)
            .map_err(Error::Storage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partitions(stream: &str, n: u32, replicas: u32) -> Vec<(String, u32, u32)> {
        (0..n).map(|p| (stream.to_owned(), p, replicas)).collect()
    }

    fn held(placed: &Placements, id: u64) -> usize {
        placed.iter().filter(|(_, _, v)| v.contains(&id)).count()
    }

    fn led(placed: &Placements, id: u64) -> usize {
        placed.iter().filter(|(_, _, v)| v[0] == id).count()
    }

    #[test]
    fn four_partitions_of_three_replicas_spread_evenly_over_four_nodes() {
        let placed = choose(&[1, 2, 3, 4], &[], &partitions("orders", 4, 3)).unwrap();
        assert_eq!(
            placed,
            vec![
                ("orders".to_owned(), 0, vec![1, 2, 3]),
                ("orders".to_owned(), 1, vec![2, 4, 1]),
                ("orders".to_owned(), 2, vec![3, 4, 1]),
                ("orders".to_owned(), 3, vec![4, 2, 3]),
            ]
        );
        for id in 1..=4 {
            assert_eq!((held(&placed, id), led(&placed, id)), (3, 1), "node {id}");
        }
    }

    #[test]
    fn a_new_node_takes_the_new_partitions_first_and_existing_ones_count() {
        // Three founders hold four partitions of 3 replicas each; node 4
        // was added and holds none.
        let existing = vec![vec![1, 2, 3], vec![2, 3, 1], vec![3, 1, 2], vec![1, 2, 3]];
        let placed = choose(&[1, 2, 3, 4], &existing, &partitions("new", 4, 3)).unwrap();
        // Node 4 is in every new partition, and leads the first.
        assert!(placed.iter().all(|(_, _, v)| v.contains(&4)), "{placed:?}");
        assert_eq!(placed[0].2[0], 4);
        let all: Vec<Vec<u64>> = existing
            .iter()
            .cloned()
            .chain(placed.iter().map(|(_, _, v)| v.clone()))
            .collect();
        let total = |id: u64| all.iter().filter(|v| v.contains(&id)).count();
        // 24 replicas over 4 nodes, node 4 at most one of each new
        // partition: the rest as even as can be.
        assert_eq!((1..=4).map(total).collect::<Vec<_>>(), vec![7, 7, 6, 4]);
        let leads = |id: u64| all.iter().filter(|v| v[0] == id).count();
        assert_eq!((1..=4).map(leads).collect::<Vec<_>>(), vec![2, 2, 2, 2]);
    }

    #[test]
    fn ties_go_to_the_lowest_node_id_and_unknown_or_removed_nodes_are_not_counted() {
        // Node 9 is not (or no longer) a node: its partitions count for
        // no one, and it is never chosen.
        let existing = vec![vec![9, 5], vec![9, 7]];
        let placed = choose(&[7, 5, 3], &existing, &partitions("s", 1, 2)).unwrap();
        assert_eq!(placed, vec![("s".to_owned(), 0, vec![3, 5])]);
    }

    #[test]
    fn the_preferred_leader_is_the_chosen_node_leading_fewest() {
        // Nodes 1 and 2 hold as many partitions, but 1 leads two.
        let existing = vec![vec![1, 2], vec![1, 2], vec![2, 1], vec![3, 4], vec![4, 3]];
        let placed = choose(&[1, 2, 3, 4], &existing, &partitions("s", 1, 2)).unwrap();
        // Fewest held: 3 and 4 (2 each); of them, fewest led: 3 (tie by id).
        assert_eq!(placed[0].2, vec![3, 4]);
        let placed = choose(&[1, 2], &existing[..3], &partitions("s", 1, 2)).unwrap();
        assert_eq!(placed[0].2, vec![2, 1]);
    }

    #[test]
    fn more_replicas_than_nodes_is_refused_naming_the_stream() {
        let e = choose(&[1, 2, 3], &[], &partitions("orders", 2, 4)).unwrap_err();
        assert_eq!(
            e,
            "stream orders has 4 replicas but the cluster has 3 nodes"
        );
        assert_eq!(choose(&[1, 2, 3], &[], &[]), Ok(Vec::new()));
    }
}
