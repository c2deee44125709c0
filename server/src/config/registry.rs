//! The runtime peer registry: the nodes of a running cluster as
//! `hadron cluster add-node` / `remove-node` left them, shared by every
//! shard of this node (docs/replication.md section 9, step 7). It starts
//! as `cluster.peers` merged with `<data dir>/cluster.peers`, the file
//! that records what was added and removed since, one line each:
//!
//! ```text
//! peer ID ADDRESS PEER_ADDRESS
//! removed ID
//! ```
//!
//! A configured peer keeps its configured addresses (the config says
//! where a node is now); a `removed` line takes a node out even when the
//! config still lists it. The file is rewritten whole, durably, before a
//! change is applied: a failed write changes nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::cluster::{CLUSTER_NODES_MAX, PeerSpec};

/// The registry file in the data directory.
pub const PEERS_FILE: &str = "cluster.peers";
/// Largest registry file read at start.
pub const PEERS_FILE_BYTES_MAX: u64 = 1 << 20;

#[derive(Debug, Default, Clone)]
struct State {
    /// Whether it was loaded (a default registry is not, and
    /// `ClusterConfig` then answers from its `peers`).
    loaded: bool,
    /// Every node, this one included, by id.
    peers: BTreeMap<u64, PeerSpec>,
    /// Added at runtime (what the file's `peer` lines say).
    added: BTreeMap<u64, PeerSpec>,
    /// Removed at runtime.
    removed: Vec<u64>,
}

/// The nodes of the cluster now; cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct Registry {
    state: Arc<Mutex<State>>,
}

/// Registries compare equal: they are runtime state, not configuration.
impl PartialEq for Registry {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for Registry {}

/// What [`Registry::add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// The node is new here.
    New,
    /// The node was already known with these addresses: nothing changed.
    Known,
}

impl Registry {
    /// `configured` merged with `<data_dir>/cluster.peers`.
    pub fn load(data_dir: &Path, configured: &[PeerSpec]) -> Result<Registry, String> {
        let path = data_dir.join(PEERS_FILE);
        let text = match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
            Ok(m) if m.len() > PEERS_FILE_BYTES_MAX => {
                return Err(format!(
                    "{}: {} bytes, more than {PEERS_FILE_BYTES_MAX}",
                    path.display(),
                    m.len()
                ));
            }
            Ok(_) => std::fs::read_to_string(&path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?,
        };
        let (added, removed) = parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut state = State {
            loaded: true,
            peers: BTreeMap::new(),
            added,
            removed,
        };
        state.rebuild(configured);
        Ok(Registry {
            state: Arc::new(Mutex::new(state)),
        })
    }

    /// Whether it was loaded (else it is empty).
    pub fn loaded(&self) -> bool {
        self.lock().loaded
    }

    /// The node `id`, if it is one of the cluster now.
    pub fn get(&self, id: u64) -> Option<PeerSpec> {
        self.lock().peers.get(&id).cloned()
    }

    /// Every node now, in id order.
    pub fn peers(&self) -> Vec<PeerSpec> {
        self.lock().peers.values().cloned().collect()
    }

    /// What changed at runtime (the file's lines): the nodes added, by
    /// id, and the ids removed (the metadata group's `State` carries them).
    pub fn changes(&self) -> (Vec<PeerSpec>, Vec<u64>) {
        let state = self.lock();
        (
            state.added.values().cloned().collect(),
            state.removed.clone(),
        )
    }

    /// Adds `peer` (persisted in `data_dir` first). Known with the same
    /// addresses: nothing to do; known with others: refused.
    pub fn add(
        &self,
        data_dir: &Path,
        configured: &[PeerSpec],
        peer: PeerSpec,
    ) -> Result<Added, String> {
        let mut state = self.lock();
        if check_add(&state, &peer)? == Added::Known {
            return Ok(Added::Known);
        }
        let mut next = state.clone();
        next.removed.retain(|&id| id != peer.id);
        next.added.insert(peer.id, peer);
        next.rebuild(configured);
        super::cluster::write_members(&data_dir.join(PEERS_FILE), &render(&next))?;
        *state = next;
        Ok(Added::New)
    }

    /// What [`Registry::add`] would do with `peer`, changing nothing:
    /// the metadata group's leader checks a change before proposing it.
    pub fn check_add(&self, peer: &PeerSpec) -> Result<Added, String> {
        check_add(&self.lock(), peer)
    }

    /// Removes node `id` (persisted in `data_dir` first); true when it
    /// was a node of the cluster.
    pub fn remove(
        &self,
        data_dir: &Path,
        configured: &[PeerSpec],
        id: u64,
    ) -> Result<bool, String> {
        let mut state = self.lock();
        if !state.peers.contains_key(&id) {
            return Ok(false);
        }
        let mut next = state.clone();
        next.added.remove(&id);
        next.removed.push(id);
        next.removed.sort_unstable();
        next.rebuild(configured);
        super::cluster::write_members(&data_dir.join(PEERS_FILE), &render(&next))?;
        *state = next;
        Ok(true)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every change replaces the whole state at once: still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether `peer` can be added to `state`: new, known with the same
/// addresses, or refused (another address for its id, its address
/// another node's, the cluster full).
fn check_add(state: &State, peer: &PeerSpec) -> Result<Added, String> {
    if let Some(had) = state.peers.get(&peer.id) {
        let same = had.address.eq_ignore_ascii_case(&peer.address)
            && had.peer_address().ok() == peer.peer_address().ok();
        return if same {
            Ok(Added::Known)
        } else {
            Err(format!(
                "node {} is already a node of this cluster, at {} (peer address {}): remove it first to give it other addresses",
                peer.id,
                had.address,
                had.peer_address().unwrap_or_default()
            ))
        };
    }
    if let Some(other) = state
        .peers
        .values()
        .find(|p| p.address.eq_ignore_ascii_case(&peer.address))
    {
        return Err(format!(
            "address {} is node {}'s already",
            peer.address, other.id
        ));
    }
    if state.peers.len() >= CLUSTER_NODES_MAX {
        return Err(format!(
            "the cluster has {CLUSTER_NODES_MAX} nodes, the most it may have"
        ));
    }
    Ok(Added::New)
}

impl State {
    fn rebuild(&mut self, configured: &[PeerSpec]) {
        self.peers = self.added.clone();
        for p in configured {
            self.peers.insert(p.id, p.clone());
        }
        for id in &self.removed {
            self.peers.remove(id);
        }
    }
}

type Parsed = (BTreeMap<u64, PeerSpec>, Vec<u64>);

fn parse(text: &str) -> Result<Parsed, String> {
    let mut added = BTreeMap::new();
    let mut removed = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let bad = |why: String| format!("line {}: {why}", i + 1);
        let id = |s: &str| {
            s.parse::<u64>()
                .ok()
                .filter(|&id| id > 0)
                .ok_or_else(|| bad(format!("node id {s:?} is not a number from 1")))
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields[..] {
            [] => {}
            ["peer", n, address, peer_address] => {
                let n = id(n)?;
                added.insert(
                    n,
                    PeerSpec {
                        id: n,
                        address: address.to_owned(),
                        peer_address: Some(peer_address.to_owned()),
                    },
                );
            }
            ["removed", n] => removed.push(id(n)?),
            _ => {
                return Err(bad(format!(
                    "expected `peer ID ADDRESS PEER_ADDRESS` or `removed ID`, found {line:?}"
                )));
            }
        }
    }
    Ok((added, removed))
}

fn render(state: &State) -> String {
    let mut text = String::new();
    for p in state.added.values() {
        let peer_address = p.peer_address().unwrap_or_default();
        text.push_str(&format!("peer {} {} {peer_address}\n", p.id, p.address));
    }
    for id in &state.removed {
        text.push_str(&format!("removed {id}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: u64) -> PeerSpec {
        PeerSpec {
            id,
            address: format!("127.0.0.1:{}", 7000 + id),
            peer_address: Some(format!("127.0.0.1:{}", 7100 + id)),
        }
    }

    #[test]
    fn an_added_node_is_read_back_after_a_restart_and_adding_it_again_is_harmless() {
        let dir = tempfile::tempdir().unwrap();
        let configured: Vec<PeerSpec> = (1..=3).map(spec).collect();
        let r = Registry::load(dir.path(), &configured).unwrap();
        assert_eq!(r.peers().len(), 3);
        assert_eq!(r.get(4), None);
        assert_eq!(r.add(dir.path(), &configured, spec(4)), Ok(Added::New));
        assert_eq!(r.add(dir.path(), &configured, spec(4)), Ok(Added::Known));
        assert_eq!(r.get(4), Some(spec(4)));
        let again = Registry::load(dir.path(), &configured).unwrap();
        assert_eq!(again.get(4), Some(spec(4)));
        assert_eq!(
            again.peers().iter().map(|p| p.id).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
    }

    #[test]
    fn an_id_or_address_already_used_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let configured: Vec<PeerSpec> = (1..=3).map(spec).collect();
        let r = Registry::load(dir.path(), &configured).unwrap();
        let mut other = spec(4);
        other.id = 2;
        let e = r.add(dir.path(), &configured, other).unwrap_err();
        assert!(e.contains("node 2 is already a node"), "{e}");
        let mut same_address = spec(4);
        same_address.address = spec(3).address;
        let e = r.add(dir.path(), &configured, same_address).unwrap_err();
        assert!(e.contains("node 3's already"), "{e}");
        assert!(!dir.path().join(PEERS_FILE).exists());
    }

    #[test]
    fn a_removed_node_stays_removed_after_a_restart_even_when_configured() {
        let dir = tempfile::tempdir().unwrap();
        let configured: Vec<PeerSpec> = (1..=4).map(spec).collect();
        let r = Registry::load(dir.path(), &configured).unwrap();
        assert_eq!(r.remove(dir.path(), &configured, 3), Ok(true));
        assert_eq!(r.remove(dir.path(), &configured, 3), Ok(false));
        assert_eq!(r.get(3), None);
        let again = Registry::load(dir.path(), &configured).unwrap();
        assert_eq!(
            again.peers().iter().map(|p| p.id).collect::<Vec<_>>(),
            [1, 2, 4]
        );
        // Added back: a node again.
        assert_eq!(again.add(dir.path(), &configured, spec(3)), Ok(Added::New));
        let third = Registry::load(dir.path(), &configured).unwrap();
        assert_eq!(third.get(3), Some(spec(3)));
    }

    #[test]
    fn a_damaged_file_is_refused_naming_its_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(PEERS_FILE), "peer 4 a:1 a:2\nremoved x\n").unwrap();
        let e = Registry::load(dir.path(), &[]).unwrap_err();
        assert!(e.contains("line 2: node id \"x\""), "{e}");
    }
}
