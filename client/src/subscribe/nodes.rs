//! The runners behind one subscription or stage handler: one for a single
//! server, one per node of a cluster, whose nodes the client learns from
//! Metadata even when it was given one URL.
//!
//! In a cluster each partition (and each pipeline's outputs) is led by one
//! node, which is the node that pushes its deliveries, and leaders move on
//! failover and rebalancing. So the handler is registered on every node of
//! the cluster at once: one runner per node, each pinned to its node (its
//! own connection; after a disconnect, a refusal such as `NotLeader` or any
//! other retryable error it backs off and registers again with that same
//! node), all running the same handler. Whichever node leads has the
//! handler attached, and each push is answered on the connection it came
//! from.
//!
//! Which nodes: at the start, one pinned runner per distinct node of the
//! bootstrap list, or, when the list names one node, one unpinned runner
//! that moves along the list after failures. Once the start resolved, a
//! supervisor task asks Metadata (by the client's main connection, so any
//! node answers) at once, every [`NODES_REFRESH_INTERVAL`], and after a
//! runner's registration failed or its connection broke (at most once per
//! [`NODES_REFRESH_PAUSE_MIN`]). When the answer names several nodes
//! (`Metadata::nodes`, at most [`METADATA_NODES_MAX`]):
//! - every named node without a runner gets a pinned one (a node listed in
//!   the bootstrap list under the same `host:port` keeps its runner);
//! - the unpinned runner, if any, is stopped: the pinned ones cover its
//!   node;
//! - a node named by the previous answer and not by this one (removed from
//!   the cluster) has its runner stopped.
//!
//! An answer naming no node (a single server, a cluster of one, or an
//! older server) or one node changes nothing, so a single server keeps
//! exactly one unpinned runner; a failed Metadata is tried again at the
//! next refresh. A stopped runner is aborted between pushes: handlers
//! already running finish and answer on their connection, and the server
//! redelivers whatever is left unanswered when the connection closes. A
//! node's address is dialled as `Client::note_leader` dials a leader: an
//! unspecified IP becomes the host of the bootstrap address in use, with
//! the bootstrap list's TLS.
//!
//! The start (`Runners::ready`) resolves once the first node accepted the
//! registration; a node that cannot be reached keeps retrying in the
//! background. It fails only when every node's runner ended, each with a
//! non-retryable error: the first of them, naming its node. While no node
//! answers it waits, as the runners retry. With one server (or a list
//! naming one node) the one runner is unpinned, exactly as before: it moves
//! along the list after failures and its first registration's error,
//! retryable or not, is the start's. Runners started later (discovered
//! nodes) add their node's first assignment to `Assigned` and report
//! nothing else.
//!
//! After the start, `Runners::closed` waits for the supervisor, which ends
//! when every runner has ended (the first error that ended one, in the
//! order they ended), or after `cancel` once every runner has stopped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use hadron_wire::METADATA_NODES_MAX;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::{PushHandler, Registration, cancelled, join, run};
use crate::endpoint::Endpoint;
use crate::{Client, Error};

/// How often a subscription or stage handler asks Metadata for the
/// cluster's nodes, to register on nodes added since (and stop on nodes
/// removed). A node added by `hadron cluster add-node` leads nothing until
/// partitions move onto it, which takes longer than this.
pub const NODES_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// Least time between two Metadata asks prompted by runner failures (a
/// node that is down fails its runner's every retry).
pub const NODES_REFRESH_PAUSE_MIN: Duration = Duration::from_secs(1);

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

/// What a runner shares with the others of its subscription or handler.
#[derive(Debug, Clone)]
pub(super) struct Shared {
    /// Where its node's first assignment goes.
    pub assigned: Assigned,
    /// Notified when its registration failed or its connection broke: the
    /// supervisor then asks for the cluster's nodes again.
    pub rediscover: Arc<Notify>,
}

type Task = JoinHandle<Result<(), Error>>;

/// Which runner: `None` the unpinned one, else its node's `host:port`.
type Key = Option<String>;

/// Starts one runner (pinned to the endpoint when given) that sends its
/// first acceptance to the sender, and its key on `ended` when it ends.
type Spawn =
    Arc<dyn Fn(Option<Endpoint>, oneshot::Sender<Result<u64, Error>>) -> Task + Send + Sync>;

/// The runners of one subscription or stage handler.
pub(super) struct Runners {
    /// Shared by every runner and the supervisor: `true` stops them all.
    cancel: watch::Sender<bool>,
    /// The runners of the start, until it resolves.
    tasks: Vec<(Key, Task)>,
    /// Everything the supervisor needs, until it is started.
    pending: Option<Supervision>,
    /// The supervisor, once the start resolved.
    supervisor: Option<Task>,
}

impl core::fmt::Debug for Runners {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Runners")
            .field("tasks", &self.tasks.len())
            .field("supervised", &self.supervisor.is_some())
            .finish_non_exhaustive()
    }
}

/// What the supervisor works with.
struct Supervision {
    client: Client,
    registration: Registration,
    spawn: Spawn,
    cancel: watch::Receiver<bool>,
    /// Keys of runners that ended by themselves.
    ended: mpsc::UnboundedReceiver<Key>,
    /// Signalled by runners whose registration failed or whose connection
    /// broke: ask Metadata again.
    rediscover: Arc<Notify>,
}

fn key_of(endpoint: &Endpoint) -> String {
    format!("{}:{}", endpoint.host, endpoint.port)
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
    // Each runner sends at most once, and at most METADATA_NODES_MAX + 1
    // run at a time; the supervisor drains it.
    let (ended_tx, ended) = mpsc::unbounded_channel();
    let rediscover = Arc::new(Notify::new());
    let spawn: Spawn = {
        let (client, registration, handler) =
            (client.clone(), registration.clone(), Arc::clone(handler));
        let shared = Shared {
            assigned: Arc::clone(assigned),
            rediscover: Arc::clone(&rediscover),
        };
        let cancel_rx = cancel_rx.clone();
        Arc::new(move |node: Option<Endpoint>, ready_tx| {
            let key = node.as_ref().map(key_of);
            let ended_tx = ended_tx.clone();
            let runner = run(
                client.clone(),
                registration.clone(),
                Arc::clone(&handler),
                node,
                cancel_rx.clone(),
                ready_tx,
                shared.clone(),
            );
            tokio::spawn(async move {
                let result = runner.await;
                let _ = ended_tx.send(key);
                result
            })
        })
    };
    let nodes = distinct_nodes(client.bootstrap_list());
    let pins: Vec<Option<Endpoint>> = if nodes.len() > 1 {
        nodes.into_iter().map(Some).collect()
    } else {
        vec![None]
    };
    let mut tasks = Vec::with_capacity(pins.len());
    let mut readys = Vec::with_capacity(pins.len());
    for node in pins {
        let (ready_tx, ready) = oneshot::channel();
        let key = node.as_ref().map(key_of);
        tasks.push((key, spawn(node, ready_tx)));
        readys.push(ready);
    }
    let pending = Supervision {
        client: client.clone(),
        registration: registration.clone(),
        spawn,
        cancel: cancel_rx,
        ended,
        rediscover,
    };
    let runners = Runners {
        cancel,
        tasks,
        pending: Some(pending),
        supervisor: None,
    };
    (runners, readys)
}

/// The first entry for each `host:port` in `list`: a node listed twice
/// gets one runner.
fn distinct_nodes(list: &[Endpoint]) -> Vec<Endpoint> {
    let mut nodes: Vec<Endpoint> = Vec::with_capacity(list.len());
    for endpoint in list {
        if !nodes
            .iter()
            .any(|e| e.host == endpoint.host && e.port == endpoint.port)
        {
            nodes.push(endpoint.clone());
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
    /// accepting node gave (the supervisor then takes the runners over),
    /// or the error that ended the start (the runners are then stopped).
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
                Ok(Ok(id)) => {
                    self.supervise();
                    return Ok(id);
                }
                Ok(Err(e)) => ended.push((i, Some(e))),
                Err(_) => ended.push((i, None)),
            }
        }
        // Every runner has ended, or (unpinned) is about to: make sure.
        self.cancel();
        self.pending = None;
        let mut tasks: Vec<Option<Task>> = std::mem::take(&mut self.tasks)
            .into_iter()
            .map(|(_, task)| Some(task))
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

    /// Hands the start's runners to a supervisor task (module header).
    fn supervise(&mut self) {
        let Some(supervision) = self.pending.take() else {
            return;
        };
        let mut set = RunnerSet::default();
        for (key, task) in std::mem::take(&mut self.tasks) {
            set.insert(key, task);
        }
        self.supervisor = Some(tokio::spawn(supervision.run(set)));
    }

    /// Waits until every runner ended: `Ok` after `cancel`, else the first
    /// error that ended one (in the order they ended).
    pub(super) async fn closed(self) -> Result<(), Error> {
        if let Some(supervisor) = self.supervisor {
            return join(supervisor).await;
        }
        let mut ends: FuturesUnordered<_> =
            self.tasks.into_iter().map(|(_, task)| join(task)).collect();
        let mut first = Ok(());
        while let Some(end) = ends.next().await {
            if first.is_ok() {
                first = end;
            }
        }
        first
    }
}

impl Supervision {
    /// The supervisor's loop (module header).
    async fn run(mut self, mut set: RunnerSet<Task>) -> Result<(), Error> {
        let mut first: Result<(), Error> = Ok(());
        // The source stream of a pipeline, once Metadata named it, so that
        // later asks are for that stream only.
        let mut stream: Option<String> = match &self.registration {
            Registration::Subscribe { stream, .. } => Some(stream.clone()),
            Registration::Pipeline { .. } => None,
        };
        let mut last_ask: Option<tokio::time::Instant> = None;
        loop {
            let now = tokio::time::Instant::now();
            let due = last_ask.map_or(now, |at| at + NODES_REFRESH_INTERVAL);
            let early = last_ask.map_or(now, |at| at + NODES_REFRESH_PAUSE_MIN);
            tokio::select! {
                () = cancelled(&mut self.cancel) => break,
                ended = self.ended.recv() => {
                    let Some(key) = ended else { break };
                    if let Some(task) = set.take_ended(&key)
                        && let Err(e) = join(task).await
                        && first.is_ok()
                    {
                        first = Err(e);
                    }
                    if set.live() == 0 {
                        return first;
                    }
                    continue;
                }
                () = tokio::time::sleep_until(due) => {}
                () = async {
                    self.rediscover.notified().await;
                    tokio::time::sleep_until(early).await;
                } => {}
            }
            last_ask = Some(tokio::time::Instant::now());
            let Some(nodes) = self.ask_nodes(&mut stream).await else {
                continue;
            };
            let spawn = Arc::clone(&self.spawn);
            let stopped = set.reconcile(&nodes, |endpoint| {
                let (ready_tx, _) = oneshot::channel();
                tracing::info!(node = %endpoint, "registering on a node of the cluster");
                spawn(Some(endpoint.clone()), ready_tx)
            });
            for (key, task) in stopped {
                tracing::info!(node = ?key, "stopping the runner of a node no longer needed");
                task.abort();
            }
        }
        // Cancelled (or detached with nothing left to report): every
        // runner sees the cancel and stops.
        for task in set.into_live() {
            if let Err(e) = join(task).await
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }

    /// The cluster's nodes as endpoints, from Metadata; `None` when it
    /// could not be asked.
    async fn ask_nodes(&self, stream: &mut Option<String>) -> Option<Vec<Endpoint>> {
        let metadata = match stream.as_deref() {
            Some(s) => self.client.metadata_for(&[s]).await,
            None => self.client.metadata().await,
        };
        let metadata = match metadata {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "asking the cluster's nodes failed; asking again later");
                return None;
            }
        };
        if let Registration::Pipeline { pipeline, .. } = &self.registration
            && let Some(p) = metadata.pipeline(pipeline)
        {
            *stream = Some(p.source_stream.clone());
        }
        let nodes = metadata
            .nodes
            .iter()
            .take(METADATA_NODES_MAX)
            .filter_map(|n| self.client.node_endpoint(&n.address))
            .collect();
        Some(nodes)
    }
}

/// The runners of one subscription or stage handler by key, and which
/// nodes the last Metadata answer named: the bookkeeping of the
/// supervisor, generic over the task so that it is tested without any.
#[derive(Debug)]
struct RunnerSet<T> {
    /// `None`: the runner ended by itself (its key stays, so that its node
    /// does not get a new runner).
    runners: BTreeMap<Key, Option<T>>,
    /// The nodes the last answer naming several named.
    known: Vec<String>,
}

impl<T> Default for RunnerSet<T> {
    fn default() -> Self {
        RunnerSet {
            runners: BTreeMap::new(),
            known: Vec::new(),
        }
    }
}

impl<T> RunnerSet<T> {
    fn insert(&mut self, key: Key, task: T) {
        self.runners.insert(key, Some(task));
    }

    /// Runners still running.
    fn live(&self) -> usize {
        self.runners.values().filter(|t| t.is_some()).count()
    }

    /// The task of the runner `key`, which ended by itself, to join; its
    /// key stays. `None` when it was stopped or already taken.
    fn take_ended(&mut self, key: &Key) -> Option<T> {
        self.runners.get_mut(key).and_then(Option::take)
    }

    /// Every runner still running, which the set then forgets.
    fn into_live(self) -> Vec<T> {
        self.runners.into_values().flatten().collect()
    }

    /// Applies a Metadata answer naming `nodes` (module header): starts a
    /// pinned runner with `spawn` for each node without one, and returns
    /// the runners to stop (the unpinned one, and those of nodes the
    /// previous answer named and this one does not). An answer naming
    /// fewer than two nodes changes nothing.
    fn reconcile(
        &mut self,
        nodes: &[Endpoint],
        mut spawn: impl FnMut(&Endpoint) -> T,
    ) -> Vec<(Key, T)> {
        let nodes = &nodes[..nodes.len().min(METADATA_NODES_MAX)];
        let named: Vec<String> = nodes.iter().map(key_of).collect();
        let mut distinct = named.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() < 2 {
            return Vec::new();
        }
        let mut stopped = Vec::new();
        for (key, endpoint) in named.iter().zip(nodes) {
            self.runners
                .entry(Some(key.clone()))
                .or_insert_with(|| Some(spawn(endpoint)));
        }
        let removed: Vec<Key> = self
            .runners
            .keys()
            .filter(|key| match key {
                None => true,
                Some(k) => self.known.contains(k) && !distinct.contains(k),
            })
            .cloned()
            .collect();
        for key in removed {
            if let Some(Some(task)) = self.runners.remove(&key) {
                stopped.push((key, task));
            }
        }
        self.known = distinct;
        stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(ports: &[u16]) -> Vec<Endpoint> {
        ports
            .iter()
            .map(|p| Endpoint::parse(&format!("127.0.0.1:{p}")).unwrap())
            .collect()
    }

    fn keys<T>(set: &RunnerSet<T>) -> Vec<Key> {
        set.runners.keys().cloned().collect()
    }

    fn k(port: u16) -> Key {
        Some(format!("127.0.0.1:{port}"))
    }

    /// One URL: the answer naming three nodes starts a pinned runner for
    /// each and stops the unpinned one.
    #[test]
    fn several_nodes_replace_the_unpinned_runner_with_one_per_node() {
        let mut set = RunnerSet::default();
        set.insert(None, 0u32);
        let mut started = Vec::new();
        let stopped = set.reconcile(&endpoints(&[7000, 7010, 7020]), |e| {
            started.push(e.port);
            u32::from(e.port)
        });
        assert_eq!(started, vec![7000, 7010, 7020]);
        assert_eq!(stopped, vec![(None, 0)]);
        assert_eq!(keys(&set), vec![k(7000), k(7010), k(7020)]);
        assert_eq!(set.live(), 3);
    }

    /// A single server (no nodes) or a cluster of one keeps the unpinned
    /// runner and starts nothing.
    #[test]
    fn no_nodes_or_one_node_keeps_the_unpinned_runner() {
        let mut set = RunnerSet::default();
        set.insert(None, 0u32);
        for nodes in [vec![], endpoints(&[7000]), endpoints(&[7000, 7000])] {
            let stopped = set.reconcile(&nodes, |_| panic!("nothing to start"));
            assert!(stopped.is_empty());
            assert_eq!(keys(&set), vec![None]);
        }
    }

    /// A node added to the cluster gets a runner; a node removed has its
    /// runner stopped; the others are left alone.
    #[test]
    fn an_added_node_gets_a_runner_and_a_removed_one_loses_it() {
        let mut set = RunnerSet::default();
        let mut spawned = 0;
        let mut spawn = |e: &Endpoint| {
            spawned += 1;
            e.port
        };
        assert!(
            set.reconcile(&endpoints(&[7000, 7010]), &mut spawn)
                .is_empty()
        );
        let stopped = set.reconcile(&endpoints(&[7000, 7010, 7030]), &mut spawn);
        assert!(stopped.is_empty());
        assert_eq!(keys(&set), vec![k(7000), k(7010), k(7030)]);
        let stopped = set.reconcile(&endpoints(&[7000, 7030]), &mut spawn);
        assert_eq!(stopped, vec![(k(7010), 7010)]);
        assert_eq!(keys(&set), vec![k(7000), k(7030)]);
        // The same answer again changes nothing.
        assert!(
            set.reconcile(&endpoints(&[7000, 7030]), &mut spawn)
                .is_empty()
        );
        assert_eq!(spawned, 3);
    }

    /// A bootstrap list's runners stay unless the cluster named their node
    /// and then dropped it: a list entry spelled otherwise than the
    /// cluster's address is not stopped for that.
    #[test]
    fn bootstrap_runners_stop_only_when_their_node_leaves_the_cluster() {
        let mut set = RunnerSet::default();
        set.insert(k(7000), 1u16);
        set.insert(Some("localhost:7010".into()), 2);
        let stopped = set.reconcile(&endpoints(&[7000, 7010, 7020]), |e| e.port);
        assert!(stopped.is_empty());
        assert_eq!(
            keys(&set),
            vec![k(7000), k(7010), k(7020), Some("localhost:7010".into())]
        );
        let stopped = set.reconcile(&endpoints(&[7010, 7020]), |_| panic!("none new"));
        assert_eq!(stopped, vec![(k(7000), 1)]);
    }

    /// A runner that ended by itself keeps its key: its node is not given a
    /// new runner by the next answer, and it no longer counts as live.
    #[test]
    fn an_ended_runner_is_not_restarted() {
        let mut set = RunnerSet::default();
        set.reconcile(&endpoints(&[7000, 7010]), |e| e.port);
        assert_eq!(set.take_ended(&k(7000)), Some(7000));
        assert_eq!(set.take_ended(&k(7000)), None);
        assert_eq!(set.live(), 1);
        let stopped = set.reconcile(&endpoints(&[7000, 7010]), |_| panic!("none new"));
        assert!(stopped.is_empty());
        assert_eq!(set.into_live(), vec![7010]);
    }

    /// At most METADATA_NODES_MAX runners, whatever an answer names.
    #[test]
    fn runners_are_bounded_by_the_node_limit() {
        let ports: Vec<u16> = (0..100).map(|i| 7000 + i).collect();
        let mut set = RunnerSet::default();
        set.reconcile(&endpoints(&ports), |e| e.port);
        assert_eq!(set.live(), METADATA_NODES_MAX);
    }
}
