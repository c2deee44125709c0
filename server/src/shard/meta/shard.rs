//! The metadata group on a shard: opened on shard 0 of a node of a
//! cluster of several nodes, admin requests routed through it, and its
//! commands applied through the shard's own code (`apply.rs`,
//! `moves.rs`, `nodes.rs`), split there into checks and application.

use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};

use super::command::Placements;
use super::{Command, META_APPLIED_FILE, META_DIR, META_GROUP, Meta, MetaSnapshot, MetaState};
use crate::shard::partition::replica::Replica;
use crate::shard::partition::replica_repair;
use hadron_engine::log::batch::BATCH_BYTES_MAX;
use hadron_engine::storage::Storage;
use hadron_engine::{Durability, LogConfig, Retention};

use crate::shard::clock::Runtime;
use crate::shard::{Error, NodeChange, Reply, Shard, TokenChange};

/// The metadata group as a shard runs it.
pub(crate) type ShardMeta<S, R> = Meta<S, R, ShardState<S, R>>;

/// Applies commands to a shard's node (through shard 0).
pub(crate) struct ShardState<S: Storage, R: Runtime> {
    shard: Weak<Shard<S, R>>,
    applied_path: PathBuf,
}

impl<S: Storage + Clone + 'static, R: Runtime> MetaState for ShardState<S, R> {
    async fn apply(&self, index: u64, command: Command) -> Result<Vec<String>, Error> {
        let Some(shard) = self.shard.upgrade() else {
            return Err(Error::Internal(format!(
                "metadata entry {index}: the shard stopped"
            )));
        };
        match shard.apply_command(command).await {
            Reply::Applied(lines) => Ok(lines),
            Reply::Failed(e) => Err(e),
            other => Err(Error::Internal(format!(
                "metadata entry {index}: unexpected answer {other:?}"
            ))),
        }
    }

    fn applied_through(&self, index: u64) -> Result<(), String> {
        crate::config::cluster::write_members(&self.applied_path, &format!("applied {index}\n"))
    }

    fn snapshot(&self) -> Result<MetaSnapshot, Error> {
        match self.shard.upgrade() {
            Some(shard) => shard.meta_snapshot(),
            None => Err(Error::Internal("the shard stopped".into())),
        }
    }
}

/// The metadata log's largest segment: twice the engine's largest batch,
/// so that a `State` entry (the whole metadata) of up to that fits. Its
/// segments are the streams' `segmentBytes` up to this; they are
/// allocated in steps (`segmentPreallocateBytes`), so a small log takes
/// little disk. Its largest entry is a segment's size up to the engine's
/// largest batch: a change after which the metadata would not fit in one
/// entry is refused ([`Error::MetadataTooLarge`]).
pub const META_SEGMENT_BYTES_MAX: u64 = 2 * BATCH_BYTES_MAX as u64;

/// The metadata group's voters and learners over `nodes` (in id order):
/// the current voters still among them (the lowest ids if more than
/// `voters_max`), then other nodes in id order up to `voters_max`; the
/// rest learn. Keeping the current voters means adding a node never
/// demotes one; removing a voter promotes a learner.
pub(crate) fn meta_target(
    nodes: &[u64],
    current: &[u64],
    voters_max: usize,
) -> (Vec<u64>, Vec<u64>) {
    let mut voters: Vec<u64> = nodes
        .iter()
        .copied()
        .filter(|id| current.contains(id))
        .take(voters_max)
        .collect();
    for &id in nodes {
        if voters.len() >= voters_max {
            break;
        }
        if !voters.contains(&id) {
            voters.push(id);
        }
    }
    voters.sort_unstable();
    let learners = nodes
        .iter()
        .copied()
        .filter(|id| !voters.contains(id))
        .collect();
    (voters, learners)
}

/// Largest applied-index file read at start.
const APPLIED_FILE_BYTES_MAX: u64 = 256;

/// The index recorded in `path` (0 when there is none yet).
fn read_applied(path: &Path) -> Result<u64, String> {
    let text = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
        Ok(m) if m.len() > APPLIED_FILE_BYTES_MAX => {
            return Err(format!(
                "{}: {} bytes, more than {APPLIED_FILE_BYTES_MAX}",
                path.display(),
                m.len()
            ));
        }
        Ok(_) => {
            std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?
        }
    };
    text.trim()
        .strip_prefix("applied ")
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| {
            format!(
                "{}: {text:?} is not `applied N`: restore it or remove it (every entry is then applied again, harmlessly)",
                path.display()
            )
        })
}

impl<S: Storage + Clone + 'static, R: Runtime> Shard<S, R> {
    /// The metadata group, on shard 0 of a node of a cluster of several
    /// nodes.
    pub(crate) fn meta_group(&self) -> Option<Rc<ShardMeta<S, R>>> {
        self.meta.borrow().clone()
    }

    /// Opens the metadata group (shard 0 of a cluster of several nodes,
    /// after the first install) and starts its loop.
    pub(crate) async fn open_meta(self: &Rc<Self>) -> Result<(), String> {
        let config = &self.settings.config;
        let Some(cluster) = config.cluster.as_ref().filter(|c| c.nodes() > 1) else {
            return Ok(());
        };
        if self.id != 0 {
            return Ok(());
        }
        let defaults = self.settings.log_config(Retention::default());
        let segment_bytes = config.segment_bytes.min(META_SEGMENT_BYTES_MAX);
        let entry_bytes_max = usize::try_from(segment_bytes)
            .unwrap_or(BATCH_BYTES_MAX)
            .min(BATCH_BYTES_MAX);
        let log_config = LogConfig {
            durability: Durability::Always,
            // Compaction drops whole segments: small ones keep the log
            // near `metaCompactEveryEntries` entries.
            segment_bytes,
            // Its largest entry, a `State`, may be a whole segment (the
            // streams' batches stop at 4 MiB).
            batch_bytes_max: entry_bytes_max,
            pending_bytes_max: defaults.pending_bytes_max.max(entry_bytes_max),
            ..defaults
        };
        let dir = config.data_dir.join(META_DIR);
        // Damage is cut and refilled from the peers, as for partitions.
        let log = replica_repair::open_log_as(&self.storage, &dir, log_config, true)
            .await
            .map_err(|e| format!("the metadata log {}: {e}", dir.display()))?;
        let log = Rc::new(log);
        // Founders start as its voters; a node added later joins.
        let founders = cluster.founder_ids();
        let voters = if founders.contains(&cluster.node_id) {
            founders
        } else {
            Vec::new()
        };
        let spec = self.replica_spec(META_GROUP, 0, voters)?;
        // A log cut at open (or damaged past what the open saw) makes this
        // replica abstain until refilled, as a partition's does.
        let recovery = replica_repair::repair_at_open(&self.storage, &log)
            .await
            .map_err(|e| format!("the metadata group: {e}"))?
            .map(|target| (self.storage.clone(), target));
        let replica = Replica::open(log.clone(), spec, self.runtime.clone(), recovery)
            .await
            .map_err(|e| format!("the metadata group: {e}"))?;
        let applied_path = config.data_dir.join(META_APPLIED_FILE);
        let applied = read_applied(&applied_path)?;
        let state = ShardState {
            shard: Rc::downgrade(self),
            applied_path,
        };
        let meta = Rc::new(Meta::new(
            Rc::new(replica),
            log,
            state,
            self.runtime.clone(),
            applied,
            config.meta_compact_every_entries,
        ));
        *self.meta.borrow_mut() = Some(meta.clone());
        self.say_meta_target(None);
        tracing::info!(applied, "metadata group open");
        self.runtime.spawn(meta.drive());
        Ok(())
    }

    /// Tells the metadata group its members: the registry's nodes now,
    /// less `removed` (this node, removed: its own registry keeps it),
    /// `metaVoters` of them voters and the others learners
    /// ([`meta_target`]).
    pub(super) fn say_meta_target(&self, removed: Option<u64>) {
        let config = &self.settings.config;
        let (Some(meta), Some(cluster)) = (self.meta_group(), config.cluster.as_ref()) else {
            return;
        };
        let nodes: Vec<u64> = cluster
            .current_peers()
            .iter()
            .map(|p| p.id)
            .filter(|&id| Some(id) != removed)
            .collect();
        let current = meta.replica.conf_state().voters;
        let (voters, learners) = meta_target(&nodes, &current, config.meta_voters as usize);
        if let Err(e) = meta.replica.set_target(voters, learners) {
            tracing::warn!("the metadata group's target: {e}");
        }
    }

    /// An admin change on a node of a cluster: checked here and proposed
    /// when this node leads the metadata group, answered with its
    /// application here; one at a time.
    pub(crate) async fn meta_change(self: &Rc<Self>, command: Command) -> Reply {
        let Some(meta) = self.meta_group() else {
            return Reply::Failed(Error::Internal("no metadata group here".into()));
        };
        if self.applying.get() {
            return Reply::Failed(Error::ApplyInProgress);
        }
        self.applying.set(true);
        let result = async {
            meta.ready().await?;
            // A resend of a change the group applied (its answer was lost,
            // or its leader lost the lead after proposing it): as it was.
            if let Some(answer) = meta.answered_change(command.change_id()) {
                return answer;
            }
            let placed = self.check_command(&command, meta.entry_bytes_max()).await?;
            let command = match command {
                Command::Apply { yaml, force, .. } => Command::Apply {
                    yaml,
                    force,
                    placement: placed,
                },
                other => other,
            };
            meta.propose(&command).await
        }
        .await;
        self.applying.set(false);
        match result {
            Ok(lines) => Reply::Applied(lines),
            Err(e) => Reply::Failed(e),
        }
    }

    /// Today's checks of a command against this node's state, changing
    /// nothing (the stages in flight included: they are local state);
    /// for an `Apply`, where its new replicated partitions go (`place.rs`).
    async fn check_command(
        self: &Rc<Self>,
        command: &Command,
        entry_bytes_max: usize,
    ) -> Result<Placements, Error> {
        match command {
            Command::Apply { yaml, force, .. } => {
                let (current, next, _) = self.plan_apply(yaml.clone()).await?;
                self.check_change(&current, &next, *force).await?;
                let placed = self.place_new(&current, &next)?;
                self.check_state_bytes(&next, &placed, entry_bytes_max)?;
                Ok(placed)
            }
            Command::TokenCreate(spec) => {
                let change = TokenChange::Create(spec.clone());
                let (current, next, _) = self.plan_tokens(change, false)?;
                self.check_change(&current, &next, false).await?;
                self.check_state_bytes(&next, &Vec::new(), entry_bytes_max)?;
                Ok(Vec::new())
            }
            Command::TokenRevoke { name, change } => {
                let change = TokenChange::Revoke(name.clone(), *change);
                self.plan_tokens(change, false).map(|_| Vec::new())
            }
            Command::Move {
                stream,
                partition,
                voters,
            } => {
                let topology = self.topology.borrow().clone();
                self.check_move(&topology, stream, *partition, voters)
                    .map(|_| Vec::new())
                    .map_err(|reason| Self::move_refused(stream, *partition, reason))
            }
            Command::Moves { moves, .. } => {
                let topology = self.topology.borrow().clone();
                for (stream, partition, voters) in moves {
                    self.check_move(&topology, stream, *partition, voters)
                        .map_err(|reason| Self::move_refused(stream, *partition, reason))?;
                }
                Ok(Vec::new())
            }
            Command::NodeAdd(peer) => self
                .check_node_change(&NodeChange::Add(peer.clone()))
                .map(|()| Vec::new()),
            Command::NodeRemove(id) => self
                .check_node_change(&NodeChange::Remove(*id))
                .map(|()| Vec::new()),
            // Proposed by the group's leader itself, never by a client.
            Command::State(_) => Err(Error::Internal(
                "a State entry is not an admin change".into(),
            )),
        }
    }

    /// Applies a committed command here, forced (the leader checked what
    /// depends on local state before proposing it).
    async fn apply_command(self: &Rc<Self>, command: Command) -> Reply {
        match command {
            Command::Apply {
                yaml, placement, ..
            } => {
                // Recorded first: the new partitions open with these voters.
                if let Err(e) = self.record_placement(&placement) {
                    return Reply::Failed(e);
                }
                self.apply_inner(yaml, true).await
            }
            Command::TokenCreate(spec) => self.apply_tokens(TokenChange::Create(spec)).await,
            Command::TokenRevoke { name, change } => {
                self.apply_tokens(TokenChange::Revoke(name, change)).await
            }
            Command::Move {
                stream,
                partition,
                voters,
            } => self.move_inner(stream, partition, voters).await,
            Command::Moves { moves, .. } => self.apply_moves(moves).await,
            Command::NodeAdd(peer) => {
                let reply = self.change_nodes_now(NodeChange::Add(peer));
                self.say_meta_target(None);
                reply
            }
            Command::NodeRemove(id) => {
                let reply = self.change_nodes_now(NodeChange::Remove(id));
                self.say_meta_target(Some(id));
                reply
            }
            Command::State(state) => self.apply_state(state).await,
        }
    }

    async fn apply_tokens(self: &Rc<Self>, change: TokenChange) -> Reply {
        match self.plan_tokens(change, true) {
            Ok((current, next, summary)) => self.commit(current, next, summary, true).await,
            Err(e) => Reply::Failed(e),
        }
    }

    /// The metadata group's part of the status document: its replica's
    /// state, the index applied here and its log's first index (past 1
    /// once compacted).
    pub(crate) fn meta_status(&self) -> serde_json::Value {
        match self.meta_group() {
            Some(meta) => serde_json::json!({
                "group": META_GROUP,
                "replication": meta.replica.status(),
                "applied": meta.applied(),
                "first_index": meta.log.first_index(),
            }),
            None => serde_json::Value::Null,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::meta_target;

    #[test]
    fn the_metadata_groups_voters_are_kept_and_the_nodes_past_them_learn() {
        // Three founders, five voters wanted: every node votes.
        assert_eq!(
            meta_target(&[1, 2, 3], &[1, 2, 3], 5),
            (vec![1, 2, 3], vec![])
        );
        // Nodes 4 to 7 added: 4 and 5 vote, 6 and 7 learn.
        assert_eq!(
            meta_target(&[1, 2, 3, 4, 5, 6, 7], &[1, 2, 3], 5),
            (vec![1, 2, 3, 4, 5], vec![6, 7])
        );
        // A node with a lower id added later does not demote a voter.
        assert_eq!(
            meta_target(&[1, 2, 3, 4, 5, 6, 9], &[2, 3, 4, 6, 9], 5),
            (vec![2, 3, 4, 6, 9], vec![1, 5])
        );
        // A voter removed: a learner is promoted, the lowest id first.
        assert_eq!(
            meta_target(&[1, 3, 4, 5, 6, 7], &[1, 2, 3, 4, 5], 5),
            (vec![1, 3, 4, 5, 6], vec![7])
        );
        // More voters than wanted (seven founders, five wanted): the
        // lowest ids stay voters.
        assert_eq!(
            meta_target(&[1, 2, 3, 4, 5, 6, 7], &[1, 2, 3, 4, 5, 6, 7], 5),
            (vec![1, 2, 3, 4, 5], vec![6, 7])
        );
        // A joining node knows no voters yet: the lowest ids.
        assert_eq!(meta_target(&[1, 2, 3, 4], &[], 3), (vec![1, 2, 3], vec![4]));
    }
}
