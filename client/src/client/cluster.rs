//! Cluster administration: moving a replicated partition's replicas,
//! adding and removing nodes; and how every admin change (these, apply,
//! tokens) reaches a cluster's metadata group leader.
//!
//! A node of a cluster of several nodes takes an admin change only when
//! it leads the metadata group (`cluster/meta`); another answers
//! `NotLeader`, naming the leader when it knows it. [`Client::admin_request`]
//! sends the change by the main connection (the first bootstrap node that
//! answers), follows a named leader at once, and without one (an
//! election) backs off and asks the next bootstrap node; a node that
//! cannot be reached, or whose connection breaks or stays silent (a node
//! killed as the request reached it), is skipped the same way. Nothing
//! was done by a `NotLeader` or a refused connection, and every admin
//! change is idempotent, so resending is safe: an apply, a move, a node
//! change or a token create sent again is answered unchanged; a token
//! revoke and a rebalance carry a change id ([`change_id`]) that the
//! metadata group remembers, so a resend of one it applied is answered
//! as it was (not `UnknownToken`, not a second batch of moves). It gives up
//! after [`ADMIN_LEADER_WAIT`] with the last error. A single server never
//! answers `NotLeader`: one attempt.

use std::sync::atomic::Ordering;
use std::time::Duration;

use hadron_wire::Message;

use super::{Client, unexpected};
use crate::Error;
use crate::conn::Reply;

/// The metadata group, as its `NotLeader` answers name it.
const META_GROUP: &str = "cluster/meta";
/// How long an admin change looks for the metadata group's leader
/// (elections, nodes down) before it fails with the last error: longer
/// than a few elections (about 0.5 to 2 s each).
pub const ADMIN_LEADER_WAIT: Duration = Duration::from_secs(30);

/// A fresh id for an admin change that is not idempotent by its content
/// (a token revoke, a rebalance): the same in every resend of the change,
/// so that a metadata leader that applied it answers as it did. Nonzero
/// (0 means none).
pub(crate) fn change_id() -> Result<u64, Error> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::Io(std::io::Error::other(format!("no random bytes: {e}"))))?;
    Ok(u64::from_le_bytes(bytes).max(1))
}

impl Client {
    /// Sends an admin change where the metadata group's leader is, as
    /// the module header says.
    pub(crate) async fn admin_request(
        &self,
        what: &'static str,
        message: &Message<'_>,
    ) -> Result<Reply, Error> {
        let deadline = tokio::time::Instant::now() + ADMIN_LEADER_WAIT;
        let mut failures = 0;
        loop {
            let conn = if self.leader_of(META_GROUP, 0).is_some() {
                self.conn_for(META_GROUP, 0).await
            } else {
                self.main().await
            };
            let e = match conn {
                Ok(conn) => match conn.request(what, message).await {
                    Ok(reply) => return Ok(reply),
                    Err(e) => e,
                },
                Err(e) => e,
            };
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(e);
            }
            failures += 1;
            let pause = self.inner.options.backoff(failures).min(deadline - now);
            match &e {
                Error::NotLeader {
                    leader: Some(l), ..
                } => {
                    tracing::debug!(what, leader = l.node_id, "following the metadata leader");
                    self.note_leader(META_GROUP, 0, Some(l));
                }
                // A connection that failed, broke or stayed silent: the
                // next node (every change is idempotent, so one the node
                // applied before the connection broke is answered
                // `unchanged` or the same when resent).
                e if matches!(e, Error::NotLeader { leader: None, .. })
                    || e.is_connection_failure() =>
                {
                    tracing::debug!(what, error = %e, ?pause, "no metadata leader here; trying the next node");
                    self.note_leader(META_GROUP, 0, None);
                    let next = self.inner.main_index.load(Ordering::Relaxed) + 1;
                    self.inner
                        .main_index
                        .store(next % self.inner.bootstrap.len(), Ordering::Relaxed);
                    tokio::time::sleep(pause).await;
                }
                _ => return Err(e),
            }
        }
    }

    /// Asks the cluster to move `stream`'s `partition` to the replica set
    /// `voters` (needs `admin`): the metadata group's leader takes it
    /// (followed from any node, see the module header); the answer says
    /// what the leader did.
    pub async fn move_partition(
        &self,
        stream: &str,
        partition: u32,
        voters: &[u64],
    ) -> Result<Vec<String>, Error> {
        let message = hadron_wire::Message::PartitionMove(hadron_wire::PartitionMove {
            stream,
            partition,
            voters: voters.to_vec(),
        });
        match self.admin_request("partition move", &message).await? {
            Reply::ApplyOk(summary) => Ok(summary),
            other => Err(unexpected("ApplyOk", &other)),
        }
    }
}

impl Client {
    /// Asks the cluster to add node `id`, at client address `address`
    /// and peer address `peer_address` (needs `admin`; the metadata
    /// group's leader takes it, see the module header). Adding a
    /// node already known with the same addresses changes nothing.
    pub async fn add_node(
        &self,
        id: u64,
        address: &str,
        peer_address: &str,
    ) -> Result<Vec<String>, Error> {
        let message = hadron_wire::Message::NodeAdd(hadron_wire::NodeAdd {
            id,
            address,
            peer_address,
        });
        self.node_change("node add", &message).await
    }

    /// Asks the cluster to remove node `id` (needs `admin`; the metadata
    /// group's leader takes it); refused while a partition is placed on
    /// it.
    pub async fn remove_node(&self, id: u64) -> Result<Vec<String>, Error> {
        let message = hadron_wire::Message::NodeRemove(id);
        self.node_change("node remove", &message).await
    }

    /// Asks the cluster to rebalance its replicated partitions (needs
    /// `admin`; the metadata group's leader takes it): every replica
    /// moves off the nodes in `drain`, then replicas and preferred
    /// leaders are evened out over the nodes; at most `moves_max`
    /// partitions move (0: the server's default, 64). With `dry_run`
    /// the moves are only planned. The answer has a line per move.
    pub async fn rebalance(
        &self,
        drain: &[u64],
        moves_max: u32,
        dry_run: bool,
    ) -> Result<Vec<String>, Error> {
        let message = hadron_wire::Message::Rebalance(hadron_wire::Rebalance {
            drain: drain.to_vec(),
            moves_max,
            dry_run,
            change_id: change_id()?,
        });
        self.node_change("rebalance", &message).await
    }

    async fn node_change(
        &self,
        what: &'static str,
        message: &hadron_wire::Message<'_>,
    ) -> Result<Vec<String>, Error> {
        match self.admin_request(what, message).await? {
            Reply::ApplyOk(summary) => Ok(summary),
            other => Err(unexpected("ApplyOk", &other)),
        }
    }
}
