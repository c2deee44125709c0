//! A cluster of `hadron server` processes on loopback for the replication
//! tests: node `i` (ids from 1) is [`Cluster::node`]`(i)`, with its own data
//! dir, client port and peer port; with [`ClusterOptions::proxies`], every
//! directed peer link (node A dialling node B) goes through its own
//! [`FaultProxy`], so that a test can cut one direction or isolate a node.
//!
//! Each node gets a config file with the `cluster:` section (peer
//! addresses as that node dials them: through the proxies) and the
//! test's resources; the nodes are started one after the other (a node is
//! ready when its shards listen, before any election).

use std::net::SocketAddr;
use std::time::Duration;

use hadron::{Client, ClientOptions};

use crate::proxy::FaultProxy;
use crate::{Server, ServerOptions, free_port_range};

/// How a cluster is made.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Nodes (ids 1 to `nodes`).
    pub nodes: usize,
    /// Resources (YAML documents) every node declares in its config file.
    pub resources: String,
    /// Settings added to every node's settings document (YAML lines at
    /// the top level, say `segmentBytes: 65536`).
    pub settings: String,
    /// A [`FaultProxy`] in front of every directed peer link.
    pub proxies: bool,
    /// Per node (by index), the cluster secret written to its
    /// `cluster.secretFile`; none when empty.
    pub secrets: Vec<String>,
    /// A directory of [`crate::pki::cluster_pki`]'s certificates: every
    /// node serves TLS with them (its peer links too), and this harness's
    /// clients and [`Cluster::cli`] use them.
    pub tls: Option<std::path::PathBuf>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 3,
            resources: String::new(),
            settings: String::new(),
            proxies: false,
            secrets: Vec::new(),
            tls: None,
        }
    }
}

/// The processes of a cluster, and the proxies between them.
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<Server>,
    /// `proxies[a][b]`: node `a + 1`'s link to node `b + 1`.
    proxies: Vec<Vec<Option<FaultProxy>>>,
    /// The secret files, kept while the nodes may restart.
    _secrets: tempfile::TempDir,
    /// Each node's (client port, peer port).
    ports: Vec<(u16, u16)>,
    /// How the cluster was made (for [`Cluster::add_node`]).
    options: ClusterOptions,
}

/// A proxy to `target` on a free port: another port is drawn when the one
/// found free was taken before the proxy bound it (a port can be seen free
/// and then used by a process of another test).
fn start_proxy(target: SocketAddr) -> FaultProxy {
    let mut last = None;
    for _ in 0..PROXY_BIND_TRIES {
        match FaultProxy::start(free_port_range(0), target) {
            Ok(proxy) => return proxy,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => panic!("a proxy to {target}: {e}"),
        }
    }
    panic!("no free port for a proxy to {target}: {last:?}")
}

/// Ports tried for one proxy.
const PROXY_BIND_TRIES: usize = 10;

impl Cluster {
    /// Starts every node (one shard each).
    pub fn start(mut options: ClusterOptions) -> Cluster {
        if let Some(dir) = &options.tls {
            options.settings.push_str(&crate::pki::tls_settings(dir));
        }
        let n = options.nodes;
        let client_ports: Vec<u16> = (0..n).map(|_| free_port_range(1)).collect();
        let peer_ports: Vec<u16> = (0..n).map(|_| free_port_range(1)).collect();
        let mut proxies: Vec<Vec<Option<FaultProxy>>> =
            (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
        if options.proxies {
            for (a, row) in proxies.iter_mut().enumerate() {
                for (b, slot) in row.iter_mut().enumerate() {
                    if a != b {
                        let target = SocketAddr::from(([127, 0, 0, 1], peer_ports[b]));
                        *slot = Some(start_proxy(target));
                    }
                }
            }
        }
        let mut nodes = Vec::with_capacity(n);
        let secrets = tempfile::tempdir().expect("a temporary directory");
        for a in 0..n {
            let mut config = format!("cluster:\n  nodeId: {}\n", a + 1);
            if let Some(secret) = options.secrets.get(a) {
                let path = secrets.path().join(format!("secret-{}", a + 1));
                std::fs::write(&path, secret).expect("the secret file");
                config.push_str(&format!("  secretFile: {}\n", path.display()));
            }
            config.push_str("  peers:\n");
            for b in 0..n {
                let peer_port = match &proxies[a][b] {
                    Some(p) => p.addr().port(),
                    None => peer_ports[b],
                };
                config.push_str(&format!(
                    "    - {{ id: {}, address: \"127.0.0.1:{}\", peerAddress: \"127.0.0.1:{}\" }}\n",
                    b + 1,
                    client_ports[b],
                    peer_port
                ));
            }
            config.push_str(&options.settings);
            if !options.resources.is_empty() {
                config.push_str("---\n");
                config.push_str(&options.resources);
            }
            nodes.push(Server::start_with(ServerOptions {
                config: Some(config),
                port: Some(client_ports[a]),
                ..ServerOptions::default()
            }));
        }
        Cluster {
            nodes,
            proxies,
            _secrets: secrets,
            ports: client_ports.into_iter().zip(peer_ports).collect(),
            options,
        }
    }

    /// Starts one more node to join the running cluster (ids from 1 to
    /// the current count are the others): its config lists every node,
    /// itself included, with the cluster's first nodes as
    /// `cluster.founders`. Returns its id; `hadron cluster add-node` then
    /// tells the others. Not with proxies or secrets.
    pub fn add_node(&mut self) -> u64 {
        assert!(
            !self.options.proxies && self.options.secrets.is_empty(),
            "add_node: a cluster without proxies or secrets"
        );
        self.ports.push((free_port_range(1), free_port_range(1)));
        let id = self.ports.len() as u64;
        let founders: Vec<String> = (1..=self.options.nodes).map(|i| i.to_string()).collect();
        let mut config = format!(
            "cluster:\n  nodeId: {id}\n  founders: [{}]\n  peers:\n",
            founders.join(", ")
        );
        for (b, (client, peer)) in self.ports.iter().enumerate() {
            config.push_str(&format!(
                "    - {{ id: {}, address: \"127.0.0.1:{client}\", peerAddress: \"127.0.0.1:{peer}\" }}\n",
                b + 1
            ));
        }
        config.push_str(&self.options.settings);
        if !self.options.resources.is_empty() {
            config.push_str("---\n");
            config.push_str(&self.options.resources);
        }
        self.nodes.push(Server::start_with(ServerOptions {
            config: Some(config),
            port: Some(self.ports[id as usize - 1].0),
            ..ServerOptions::default()
        }));
        id
    }

    /// Node `id`'s peer address (`127.0.0.1:PORT`).
    pub fn peer_addr(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.ports[id as usize - 1].1)
    }

    /// Node `id` (from 1).
    pub fn node(&mut self, id: u64) -> &mut Server {
        &mut self.nodes[id as usize - 1]
    }

    /// The node ids.
    pub fn ids(&self) -> Vec<u64> {
        (1..=self.nodes.len() as u64).collect()
    }

    /// A client bootstrapped at node `id`.
    pub fn client(&self, id: u64) -> Client {
        let options = ClientOptions {
            // Elections take a second or two: keep retrying through them.
            publish_attempts_max: 40,
            tls: self.client_tls(),
            ..ClientOptions::default()
        };
        Client::new(&self.client_addr(id), options).unwrap()
    }

    /// The node that leads `stream`'s `partition`, as the running nodes'
    /// status says (the leader of the highest term that claims it).
    pub async fn leader(&self, stream: &str, partition: u32) -> Option<u64> {
        let mut best: Option<(u64, u64)> = None;
        for id in self.ids() {
            let Some(status) = self.replica_status(id, stream, partition).await else {
                continue;
            };
            let term = status["term"].as_u64().unwrap_or(0);
            if status["is_leader"] == true && best.is_none_or(|(t, _)| term > t) {
                best = Some((term, id));
            }
        }
        best.map(|(_, id)| id)
    }

    /// Waits until a node that `accept` takes leads `stream`'s `partition`
    /// (as [`Cluster::leader`] sees it), polling the nodes' status every
    /// 50 ms; panics after `timeout`. Returns the node.
    pub async fn await_leader_where(
        &self,
        stream: &str,
        partition: u32,
        timeout: Duration,
        accept: impl Fn(u64) -> bool,
    ) -> u64 {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(id) = self.leader(stream, partition).await
                && accept(id)
            {
                return id;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no accepted leader of {stream}/{partition} within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Node `id`'s client URL (`127.0.0.1:PORT`, `https://127.0.0.1:PORT`
    /// with [`ClusterOptions::tls`]).
    pub fn client_addr(&self, id: u64) -> String {
        let addr = self.nodes[id as usize - 1].addr();
        match &self.options.tls {
            Some(_) => format!("https://{addr}"),
            None => addr,
        }
    }

    /// The client TLS options of [`ClusterOptions::tls`] (none without).
    fn client_tls(&self) -> hadron::TlsOptions {
        self.options
            .tls
            .as_deref()
            .map(crate::pki::client_tls)
            .unwrap_or_default()
    }

    /// [`crate::run_cli`], with `--ca`, `--cert` and `--key` of
    /// [`ClusterOptions::tls`].
    /// `hadron cluster add-node` of node `id` at its client and peer
    /// addresses (or `address` instead of its client one), sent through
    /// `urls`.
    pub fn add_node_cli(&self, id: u64, address: Option<&str>, urls: &str) -> crate::CliOutput {
        let own = self.nodes[id as usize - 1].addr();
        let peer = self.peer_addr(id);
        let args = [
            "cluster",
            "add-node",
            "--id",
            &id.to_string(),
            "--address",
            address.unwrap_or(&own),
            "--peer-address",
            &peer,
            "--url",
            urls,
        ];
        self.cli(&args, Duration::from_secs(60))
    }

    pub fn cli(&self, args: &[&str], timeout: Duration) -> crate::CliOutput {
        let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        if let Some(dir) = &self.options.tls {
            for (flag, file) in [
                ("--ca", "ca.pem"),
                ("--cert", "node.pem"),
                ("--key", "node.key"),
            ] {
                all.push(flag.to_owned());
                all.push(dir.join(file).display().to_string());
            }
        }
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        crate::run_cli(&all, timeout)
    }

    /// A client that knows every node (the bootstrap list).
    pub fn client_of_all(&self) -> Client {
        let urls: Vec<String> = self
            .ids()
            .into_iter()
            .map(|id| self.client_addr(id))
            .collect();
        let options = ClientOptions {
            publish_attempts_max: 40,
            tls: self.client_tls(),
            ..ClientOptions::default()
        };
        Client::new(&urls.join(","), options).unwrap()
    }

    /// `hadron cluster status --json` over every node, parsed.
    pub fn cluster_status_json(&self) -> serde_json::Value {
        let urls: Vec<String> = self
            .ids()
            .into_iter()
            .map(|id| self.client_addr(id))
            .collect();
        let out = self.cli(
            &["cluster", "status", "--json", "--url", &urls.join(",")],
            Duration::from_secs(30),
        );
        assert!(out.status.success(), "{}", out.stderr);
        serde_json::from_str(out.stdout.trim()).expect("cluster status --json prints JSON")
    }

    /// Node `id`'s status document, when the node runs and answers.
    pub async fn status_doc(&self, id: u64) -> Option<serde_json::Value> {
        if !self.nodes[id as usize - 1].is_alive() {
            return None;
        }
        let client = self.client(id);
        let json = tokio::time::timeout(Duration::from_secs(5), client.status())
            .await
            .ok()?
            .ok()?;
        serde_json::from_str(&json).ok()
    }

    /// Node `id`'s Raft state of `stream`'s `partition` (its status
    /// document's `replication`), when the node runs and answers.
    pub async fn replica_status(
        &self,
        id: u64,
        stream: &str,
        partition: u32,
    ) -> Option<serde_json::Value> {
        let doc = self.status_doc(id).await?;
        let partitions = doc["streams"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == stream)?["partitions"]
            .as_array()?
            .clone();
        partitions
            .into_iter()
            .find(|p| p["partition"] == partition)
            .map(|p| p["replication"].clone())
    }

    /// Node `id`'s metadata group (its status document's `meta`:
    /// `replication` and `applied`), when the node runs and answers.
    pub async fn meta_status(&self, id: u64) -> Option<serde_json::Value> {
        let doc = self.status_doc(id).await?;
        Some(doc["meta"].clone()).filter(serde_json::Value::is_object)
    }

    /// Sends `message` (an admin change, as one raw frame) to the node
    /// leading the metadata group and returns its answer; a `NotLeader`
    /// (the lead moved meanwhile) sends the same frame again to the node
    /// leading then, as the client does, for up to 30 s.
    pub async fn meta_request(&self, message: &hadron_wire::Message<'_>) -> crate::Frame {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(leader) = self.meta_leader().await {
                let port = self.nodes[leader as usize - 1].port();
                let mut raw = crate::RawConn::handshaken(port).await;
                let reply = raw.request(message, &mut Vec::new()).await;
                let moved = matches!(reply, crate::Frame::NotLeader { .. });
                if !moved || tokio::time::Instant::now() >= deadline {
                    return reply;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no metadata leader for 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The node leading the metadata group, as the running nodes' status
    /// says (the leader of the highest term that claims it).
    pub async fn meta_leader(&self) -> Option<u64> {
        let mut best: Option<(u64, u64)> = None;
        for id in self.ids() {
            let Some(meta) = self.meta_status(id).await else {
                continue;
            };
            let r = &meta["replication"];
            let term = r["term"].as_u64().unwrap_or(0);
            if r["is_leader"] == true && best.is_none_or(|(t, _)| term > t) {
                best = Some((term, id));
            }
        }
        best.map(|(_, id)| id)
    }

    /// Cuts every link to and from node `id` (needs `proxies`).
    pub fn isolate(&self, id: u64) {
        self.each_link_of(id, FaultProxy::cut);
    }

    /// Heals every link to and from node `id`.
    pub fn rejoin(&self, id: u64) {
        self.each_link_of(id, FaultProxy::heal);
    }

    /// The proxy of node `from`'s link to node `to` (needs `proxies`).
    pub fn link(&self, from: u64, to: u64) -> &FaultProxy {
        self.proxies[from as usize - 1][to as usize - 1]
            .as_ref()
            .expect("the cluster was started with proxies")
    }

    fn each_link_of(&self, id: u64, f: fn(&FaultProxy)) {
        for other in self.ids().into_iter().filter(|&o| o != id) {
            f(self.link(id, other));
            f(self.link(other, id));
        }
    }
}
