//! Cluster administration: moving a replicated partition's replicas.

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
