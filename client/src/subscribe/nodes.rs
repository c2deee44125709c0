//! The runners behind one subscription or stage handler: one for a single
//! server, one per node for a bootstrap list.
//!
//! In a cluster each partition (and each pipeline's outputs) is led by one
//! node, which is the node that pushes its deliveries, and leaders move on
//! failover. So with a bootstrap list of several distinct nodes the handler
//! is registered on every one of them at once: one runner per node, each
//! pinned to its node (its own connection; after a disconnect, a refusal
//! such as `NotLeader` or any other retryable error it backs off and
//! registers again with that same node), all running the same handler.
//! Whichever node leads after a failover has the handler attached, and
//! each push is answered on the connection it came from.
//!
//! The start (`Runners::ready`) resolves once the first node accepted the
//! registration; a node that cannot be reached keeps retrying in the
//! background. It fails only when every node's runner ended, each with a
//! non-retryable error: the first of them, naming its node. While no node
//! answers it waits, as the runners retry.
//!
//! With one server (or a list naming one node) there is one runner,
//! unpinned, exactly as before: it moves along the list after failures
//! and its first registration's error, retryable or not, is the start's.

use std::sync::{Arc, Mutex};

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::{PushHandler, Registration, join, run};
use crate::endpoint::Endpoint;
use crate::{Client, Error};

/// What a runner sends when its node first accepts the registration: the
/// subscription id (0 for a stage handler), or, for an unpinned runner,
/// its first registration's error.
pub(super) type Ready = oneshot::Receiver<Result<u64, Error>>;

/// The partitions assigned by the nodes that accepted a subscription, each
/// node's first assignment, sorted and deduplicated.
pub(super) type Assigned = Arc<Mutex<Vec<u32>>>;

/// Adds a node's first assignment to `assigned`.
pub(super) fn assign(assigned: &Assigned, partitions: &[u32]) {
    let mut all = assigned.lock().unwrap_or_else(|p| p.into_inner());
    all.extend_from_slice(partitions);
    all.sort_unstable();
    all.dedup();
}

/// The runners of one subscription or stage handler.
#[derive(Debug)]
pub(super) struct Runners {
    /// Shared by every runner: `true` stops them all.
    cancel: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Result<(), Error>>>,
}

/// Starts the runners for `registration`: one per distinct node of the
/// client's bootstrap list, pinned to it, or one unpinned runner when the
/// list names one node. Returns them and what each sends on its first
/// acceptance.
pub(super) fn start<H: PushHandler>(
    client: &Client,
    registration: &Registration,
    handler: &Arc<H>,
    assigned: &Assigned,
) -> (Runners, Vec<Ready>) {
    let (cancel, cancel_rx) = watch::channel(false);
    let nodes = distinct_nodes(client.bootstrap_list());
    let pins: Vec<Option<usize>> = if nodes.len() > 1 {
        nodes.into_iter().map(Some).collect()
    } else {
        vec![None]
    };
    let mut tasks = Vec::with_capacity(pins.len());
    let mut readys = Vec::with_capacity(pins.len());
    for node in pins {
        let (ready_tx, ready) = oneshot::channel();
        tasks.push(tokio::spawn(run(
            client.clone(),
            registration.clone(),
            Arc::clone(handler),
            node,
            cancel_rx.clone(),
            ready_tx,
            Arc::clone(assigned),
        )));
        readys.push(ready);
    }
    (Runners { cancel, tasks }, readys)
}

/// Indices of the first entry for each `host:port` in `list`: a node
/// listed twice gets one runner.
fn distinct_nodes(list: &[Endpoint]) -> Vec<usize> {
    let mut nodes: Vec<usize> = Vec::with_capacity(list.len());
    for (i, endpoint) in list.iter().enumerate() {
        let seen = nodes.iter().any(|&n| {
            list.get(n)
                .is_some_and(|e| e.host == endpoint.host && e.port == endpoint.port)
        });
        if !seen {
            nodes.push(i);
        }
    }
    nodes
}

/// A registration error from a pinned runner, naming its node. Connect
/// and TLS errors name their address already.
pub(super) fn at_node(e: Error, node: &Endpoint) -> Error {
    match e {
        Error::Server { code, message } => Error::Server {
            code,
            message: format!("node {node}: {message}"),
        },
        Error::Protocol(message) => Error::Protocol(format!("node {node}: {message}")),
        other => other,
    }
}

impl Runners {
    /// Asks every runner to stop; handlers already running finish.
    pub(super) fn cancel(&self) {
        let _ = self.cancel.send(true);
    }

    /// Waits for the start as the module header says: the id the first
    /// accepting node gave, or the error that ended the start (the runners
    /// are then stopped).
    pub(super) async fn ready(&mut self, readys: Vec<Ready>) -> Result<u64, Error> {
        let mut waiting: FuturesUnordered<_> = readys
            .into_iter()
            .enumerate()
            .map(|(i, ready)| async move { (i, ready.await) })
            .collect();
        // Runners that ended without an acceptance, in the order they did.
        let mut ended: Vec<(usize, Option<Error>)> = Vec::new();
        while let Some((i, outcome)) = waiting.next().await {
            match outcome {
                Ok(Ok(id)) => return Ok(id),
                Ok(Err(e)) => ended.push((i, Some(e))),
                Err(_) => ended.push((i, None)),
            }
        }
        // Every runner has ended, or (unpinned) is about to: make sure.
        self.cancel();
        let mut tasks: Vec<Option<JoinHandle<Result<(), Error>>>> = std::mem::take(&mut self.tasks)
            .into_iter()
            .map(Some)
            .collect();
        let mut first: Option<Error> = None;
        for (i, error) in ended {
            let error = match error {
                Some(e) => Some(e),
                None => match tasks.get_mut(i).and_then(Option::take) {
                    Some(task) => join(task).await.err(),
                    None => None,
                },
            };
            if first.is_none() {
                first = error;
            }
        }
        Err(first.unwrap_or(Error::Closed))
    }

    /// Waits until every runner ended: `Ok` after `cancel`, else the first
    /// error that ended one (in the order they ended).
    pub(super) async fn closed(self) -> Result<(), Error> {
        let mut ends: FuturesUnordered<_> = self.tasks.into_iter().map(join).collect();
        let mut first = Ok(());
        while let Some(end) = ends.next().await {
            if first.is_ok() {
                first = end;
            }
        }
        first
    }
}
