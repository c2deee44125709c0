//! Cluster administration: moving a replicated partition's replicas,
//! adding and removing nodes.

use super::{Client, unexpected};
use crate::Error;
use crate::conn::Reply;

impl Client {
    /// Asks the node this client talks to to move `stream`'s `partition`
    /// to the replica set `voters` (needs `admin`). Until the metadata
    /// group exists, send it to every node of the cluster; the answer says
    /// what this node did.
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
        match self
            .main()
            .await?
            .request("partition move", &message)
            .await?
        {
            Reply::ApplyOk(summary) => Ok(summary),
            other => Err(unexpected("ApplyOk", &other)),
        }
    }
}

impl Client {
    /// Asks the node this client talks to to add node `id` to the
    /// running cluster, at client address `address` and peer address
    /// `peer_address` (needs `admin`); send it to every node. Adding a
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

    /// Asks the node this client talks to to remove node `id` from the
    /// cluster (needs `admin`); refused while a partition is placed on
    /// it. Send it to every node.
    pub async fn remove_node(&self, id: u64) -> Result<Vec<String>, Error> {
        let message = hadron_wire::Message::NodeRemove(id);
        self.node_change("node remove", &message).await
    }

    async fn node_change(
        &self,
        what: &'static str,
        message: &hadron_wire::Message<'_>,
    ) -> Result<Vec<String>, Error> {
        match self.main().await?.request(what, message).await? {
            Reply::ApplyOk(summary) => Ok(summary),
            other => Err(unexpected("ApplyOk", &other)),
        }
    }
}
