//! What the cluster simulation checks a run against: the proposals
//! answered `Ok` (with their indexes) and every entry any node applied.
//! Small enough to be obviously right; the checks read the nodes' stores
//! directly, never the driver's state.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::replication::MemLogStore;

#[derive(Debug, Default)]
pub struct Model {
    /// Payloads answered `Ok(index)`, by index.
    pub acked: BTreeMap<u64, Bytes>,
    /// The data entry applied at each index, on any node: (term, payload).
    pub applied: BTreeMap<u64, (u64, Bytes)>,
}

impl Model {
    /// A proposal was answered `Ok(index)`.
    pub fn acked(&mut self, index: u64, payload: &Bytes) {
        if let Some(other) = self.acked.insert(index, payload.clone()) {
            assert_eq!(
                &other, payload,
                "two proposals were acknowledged at index {index}"
            );
        }
        if let Some((_, applied)) = self.applied.get(&index) {
            assert_eq!(
                applied, payload,
                "index {index} was acknowledged with another payload than applied there"
            );
        }
    }

    /// `node` applied `payload` at `index` in `term`: no index ever holds
    /// two different committed entries on two nodes.
    pub fn applied(&mut self, node: u64, index: u64, term: u64, payload: &Bytes) {
        let entry = (term, payload.clone());
        if let Some(other) = self.applied.insert(index, entry.clone()) {
            assert_eq!(
                other, entry,
                "node {node} applied another entry at index {index} than another node did"
            );
        }
        if let Some(acked) = self.acked.get(&index) {
            assert_eq!(
                acked, payload,
                "node {node} applied at {index} another payload than the acknowledged one"
            );
        }
    }

    /// Every acknowledged payload is durable, at its index, on a majority
    /// of `stores` (the whole group, crashed nodes included): no crash can
    /// lose it.
    pub fn check_durable_on_majority(&self, stores: &[(u64, &MemLogStore)]) {
        let majority = stores.len() / 2 + 1;
        for (&index, payload) in &self.acked {
            let holders = stores
                .iter()
                .filter(|(_, s)| s.durable_entry(index).is_some_and(|e| e.data == payload))
                .count();
            assert!(
                holders >= majority,
                "acknowledged index {index} is durable on {holders} of {} nodes only",
                stores.len()
            );
        }
    }

    /// After convergence: every node's log is the same up to `commit`
    /// (index, term, payload), holds every acknowledged payload at its
    /// index, and agrees with every entry applied anywhere.
    pub fn check_converged(&self, stores: &[(u64, &MemLogStore)], commit: u64) {
        let Some((first_node, reference)) = stores.first() else {
            return;
        };
        let first = stores
            .iter()
            .map(|(_, s)| s.live_bounds().0)
            .max()
            .unwrap_or(1);
        let reference = reference.live_entries(first, commit + 1);
        assert_eq!(
            reference.len() as u64,
            (commit + 1).saturating_sub(first),
            "node {first_node} lacks committed entries"
        );
        let key = |e: &raft::eraftpb::Entry| (e.index, e.term, e.data.clone());
        for (node, store) in &stores[1..] {
            let entries = store.live_entries(first, commit + 1);
            assert_eq!(
                entries.len(),
                reference.len(),
                "node {node} lacks committed entries"
            );
            for (a, b) in reference.iter().zip(&entries) {
                assert_eq!(
                    key(a),
                    key(b),
                    "nodes {first_node} and {node} differ at index {}",
                    a.index
                );
            }
        }
        for e in &reference {
            if let Some(payload) = self.acked.get(&e.index) {
                assert_eq!(
                    &e.data, payload,
                    "acknowledged index {} holds another payload",
                    e.index
                );
            }
            if let Some((term, payload)) = self.applied.get(&e.index) {
                assert_eq!(
                    (e.term, &e.data),
                    (*term, payload),
                    "applied index {} differs",
                    e.index
                );
            }
        }
        if let Some((&last_acked, _)) = self.acked.last_key_value() {
            assert!(
                last_acked <= commit,
                "acknowledged index {last_acked} is above the converged commit {commit}"
            );
        }
    }
}
