//! Peer connections: this shard's links to the same shard on the other
//! nodes of the cluster, over TCP, in the frames of
//! `replication/peer_frame.rs`.
//!
//! - **Out:** [`Links`] keeps, per peer node, a queue of encoded raft
//!   messages (bounded by [`LINK_QUEUE_BYTES_MAX`]; beyond it, and while
//!   the link is down, messages are dropped: Raft resends what matters)
//!   and one task that dials the node's shard (its `peerAddress` port +
//!   shard id), says hello, and writes everything queued as one frame per
//!   write. A failed dial or write drops the queue and retries after a
//!   backoff from [`DIAL_BACKOFF_MIN`] doubling to [`DIAL_BACKOFF_MAX`].
//!   A node added at runtime (`hadron cluster add-node`) gets its link at
//!   the first message to it; a removed node's link ends, and so does a
//!   connection from it (checked at each frame).
//! - **TLS**: a node with `tls:` speaks TLS on its peer links too: it
//!   accepts with its server configuration (client certificates checked
//!   when `tls.clientCa` is set) and dials trusting `cluster.peerCa` (else
//!   `tls.clientCa`), presenting its own certificate, the peer address's
//!   host being the name checked. The challenge and hello run inside it.
//! - **In:** [`listen`] accepts on this shard's peer port and sends a
//!   fresh challenge; the connection must answer with a hello within
//!   [`HELLO_TIMEOUT`] whose MAC proves the cluster secret for that
//!   challenge, naming another node of the cluster now (the peer
//!   registry: `cluster.peers` and nodes added at runtime), on
//!   the same shard id of the same shard count; then each frame's messages
//!   go to their partitions' groups ([`Shard::on_peer_message`]). A bad
//!   frame closes the connection (its framing is lost) and costs nothing
//!   else.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::Duration;

use futures::future::select;
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use hadron_engine::notify::Notify;
use raft::eraftpb::Message;

use crate::replication::PeerLinks;
use crate::replication::peer_frame::{
    self, Hello, PEER_FRAME_BYTES_MAX, PEER_FRAME_HEADER_BYTES, PeerFrame,
};
use crate::shard::Shard;

/// Bytes of encoded messages queued for one peer, at most.
pub const LINK_QUEUE_BYTES_MAX: usize = 64 << 20;
/// Bytes gathered into one frame, about (at least one message).
const FRAME_TARGET_BYTES: usize = 4 << 20;
/// A new connection's hello must arrive within this.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// A dial must connect within this.
const DIAL_TIMEOUT: Duration = Duration::from_secs(1);
/// Peer connections of one shard not yet authenticated (before their
/// hello is verified), at most: past it a new one is closed at once, so
/// that whoever can reach the peer port holds only this many handshake
/// buffers of [`PEER_HANDSHAKE_FRAME_BYTES_MAX`] for [`HELLO_TIMEOUT`].
pub const PEER_UNAUTHENTICATED_MAX: usize = 64;
/// The largest handshake frame read (a hello or a challenge; both are
/// well under it): the frame's length is checked before its body is
/// allocated, so an unauthenticated peer cannot make this node allocate a
/// whole Raft frame's 32 MiB.
pub const PEER_HANDSHAKE_FRAME_BYTES_MAX: usize = 256;
/// The first pause after a failed dial or write.
pub const DIAL_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// The longest pause between dials.
pub const DIAL_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// One peer node's outgoing queue.
struct Link {
    node: u64,
    address: String,
    secret: Rc<[u8]>,
    /// TLS to the peer (when this node has `tls:`), and the name its
    /// certificate must carry: the peer address's host.
    tls: Option<(
        futures_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    queue: RefCell<VecDeque<Vec<u8>>>,
    bytes: Cell<usize>,
    ready: Notify,
    /// The cluster, to see that the node is still one of it (a node
    /// `hadron cluster remove-node` removed: the link ends).
    cluster: crate::config::cluster::ClusterConfig,
    /// Set when the link ended (its node was removed).
    closed: Cell<bool>,
    /// Set while a connection is up: from its hello until a write fails.
    connected: Cell<bool>,
}

impl Link {
    fn removed(&self) -> bool {
        self.cluster.peer(self.node).is_none()
    }
}

/// What a link to a node needs besides the node: this node's id, shard
/// id and shard count, the secret, the peer TLS.
struct Maker {
    cluster: crate::config::cluster::ClusterConfig,
    me: (u64, u16, u16),
    secret: Rc<[u8]>,
    peer_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// This shard's links to the other nodes: those of the registry at start,
/// and a node added at runtime (`hadron cluster add-node`) at the first
/// message to it.
pub struct Links {
    links: RefCell<HashMap<u64, Rc<Link>>>,
    maker: Option<Maker>,
}

impl Links {
    /// The link to `to`: the one running, else a new one when `to` is
    /// another node of the cluster now.
    fn link(&self, to: u64) -> Option<Rc<Link>> {
        if let Some(link) = self.links.borrow().get(&to).filter(|l| !l.closed.get()) {
            return Some(link.clone());
        }
        let maker = self.maker.as_ref()?;
        if to == maker.me.0 {
            return None;
        }
        let peer = maker.cluster.peer(to)?;
        match new_link(maker, &peer) {
            Ok(link) => {
                glommio::spawn_local(dial(link.clone(), maker.me)).detach();
                self.links.borrow_mut().insert(to, link.clone());
                Some(link)
            }
            Err(e) => {
                tracing::warn!(to, "no peer link: {e}");
                None
            }
        }
    }
}

impl PeerLinks for Links {
    fn send(&self, to: u64, stream: &str, partition: u32, msg: Message) -> bool {
        let Some(link) = self.link(to) else {
            return false;
        };
        let encoded = match peer_frame::encode_message(stream, partition, &msg) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(to, "raft message not sent: {e}");
                return false;
            }
        };
        if link.bytes.get() + encoded.len() > LINK_QUEUE_BYTES_MAX {
            tracing::debug!(
                to,
                stream,
                partition,
                "peer link queue full; raft message dropped"
            );
            return false;
        }
        link.bytes.set(link.bytes.get() + encoded.len());
        link.queue.borrow_mut().push_back(encoded);
        link.ready.notify_all();
        true
    }

    fn connected(&self, to: u64) -> bool {
        self.links
            .borrow()
            .get(&to)
            .is_some_and(|l| l.connected.get())
    }
}

/// The peer address of `node`'s shard `shard`: its `peerAddress` (or
/// default) with the port moved up by the shard id.
fn shard_peer_address(
    peer: &crate::config::cluster::PeerSpec,
    shard: u16,
) -> Result<String, String> {
    let base = peer.peer_address()?;
    let (host, port) = base
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
        .ok_or_else(|| format!("node {}: peer address {base:?} is not host:port", peer.id))?;
    let port = port.checked_add(shard).ok_or_else(|| {
        format!(
            "node {}: peer port {port} + shard {shard} overflows",
            peer.id
        )
    })?;
    Ok(format!("{host}:{port}"))
}

fn resolve(address: &str) -> Option<SocketAddr> {
    address
        .parse()
        .ok()
        .or_else(|| address.to_socket_addrs().ok()?.next())
}

/// Starts this shard's links to every other node of the cluster now and
/// their dialling tasks.
pub fn links(shard: &Rc<Shard>) -> Result<Rc<Links>, String> {
    let config = &shard.settings.config;
    let Some(cluster) = &config.cluster else {
        return Ok(Rc::new(Links {
            links: RefCell::default(),
            maker: None,
        }));
    };
    let maker = Maker {
        cluster: cluster.clone(),
        me: (cluster.node_id, shard.id, shard.shards),
        secret: Rc::from(cluster.secret.0.as_slice()),
        peer_tls: shard.settings.peer_tls.clone(),
    };
    let mut links = HashMap::new();
    for peer in cluster
        .current_peers()
        .iter()
        .filter(|p| p.id != cluster.node_id)
    {
        let link = new_link(&maker, peer)?;
        glommio::spawn_local(dial(link.clone(), maker.me)).detach();
        links.insert(peer.id, link);
    }
    Ok(Rc::new(Links {
        links: RefCell::new(links),
        maker: Some(maker),
    }))
}

/// A link to `peer`'s shard of this shard's id (not dialling yet).
fn new_link(maker: &Maker, peer: &crate::config::cluster::PeerSpec) -> Result<Rc<Link>, String> {
    let address = shard_peer_address(peer, maker.me.1)?;
    let tls = match &maker.peer_tls {
        Some(config) => {
            let host = address
                .rsplit_once(':')
                .map_or(address.as_str(), |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| format!("node {}: peer host {host:?}: {e}", peer.id))?;
            Some((futures_rustls::TlsConnector::from(config.clone()), name))
        }
        None => None,
    };
    Ok(Rc::new(Link {
        node: peer.id,
        address,
        secret: maker.secret.clone(),
        tls,
        queue: RefCell::new(VecDeque::new()),
        bytes: Cell::new(0),
        ready: Notify::default(),
        cluster: maker.cluster.clone(),
        closed: Cell::new(false),
        connected: Cell::new(false),
    }))
}

/// Keeps `link` connected and writes what is queued; `me` is this
/// node's id, shard id and shard count.
async fn dial(link: Rc<Link>, me: (u64, u16, u16)) {
    let mut backoff = DIAL_BACKOFF_MIN;
    loop {
        if link.removed() {
            tracing::info!(node = link.node, "peer link closed: the node was removed");
            link.closed.set(true);
            link.queue.borrow_mut().clear();
            link.bytes.set(0);
            return;
        }
        let connected = match resolve(&link.address) {
            Some(addr) => {
                let connect = Box::pin(TcpStream::connect(addr));
                match select(connect, Box::pin(glommio::timer::sleep(DIAL_TIMEOUT))).await {
                    futures::future::Either::Left((Ok(stream), _)) => Some(stream),
                    _ => None,
                }
            }
            None => None,
        };
        if let Some(stream) = connected {
            let _ = stream.set_nodelay(true);
            let served = match &link.tls {
                None => write_queued(&link, stream, me).await,
                Some((connector, name)) => {
                    let handshake = Box::pin(connector.connect(name.clone(), stream));
                    match select(handshake, Box::pin(glommio::timer::sleep(HELLO_TIMEOUT))).await {
                        futures::future::Either::Left((Ok(tls), _)) => {
                            write_queued(&link, tls, me).await
                        }
                        futures::future::Either::Left((Err(e), _)) => {
                            // Unlike a peer that is down, a refused
                            // handshake (a certificate, a CA) needs an
                            // operator: said at warn, once per dial.
                            tracing::warn!(node = link.node, address = %link.address, "peer link: TLS handshake failed: {e}");
                            Err(format!("TLS handshake: {e}"))
                        }
                        futures::future::Either::Right(_) => {
                            Err(format!("TLS handshake not done within {HELLO_TIMEOUT:?}"))
                        }
                    }
                }
            };
            link.connected.set(false);
            backoff = DIAL_BACKOFF_MIN;
            if let Err(e) = served {
                tracing::debug!(node = link.node, address = %link.address, "peer link down: {e}");
            }
        }
        // Down: what is queued would be stale by the time it got there.
        link.queue.borrow_mut().clear();
        link.bytes.set(0);
        glommio::timer::sleep(backoff).await;
        backoff = (backoff * 2).min(DIAL_BACKOFF_MAX);
    }
}

/// Answers the peer's challenge with a hello, then writes what is queued
/// until a write fails.
async fn write_queued<S: AsyncRead + AsyncWrite + Unpin>(
    link: &Link,
    mut stream: S,
    me: (u64, u16, u16),
) -> Result<(), String> {
    let challenge = match select(
        Box::pin(read_frame(&mut stream, PEER_HANDSHAKE_FRAME_BYTES_MAX)),
        Box::pin(glommio::timer::sleep(HELLO_TIMEOUT)),
    )
    .await
    {
        futures::future::Either::Left((Ok(PeerFrame::Challenge(c)), _)) => c,
        futures::future::Either::Left((Ok(_), _)) => {
            return Err("the peer did not begin with a challenge".into());
        }
        futures::future::Either::Left((Err(e), _)) => return Err(e),
        futures::future::Either::Right(_) => {
            return Err(format!("no challenge within {HELLO_TIMEOUT:?}"));
        }
    };
    let hello = peer_frame::hello_mac(&link.secret, &challenge, me.0, me.1, me.2);
    let io = |e: std::io::Error| format!("writing to the peer: {e}");
    stream
        .write_all(&peer_frame::encode_hello(hello))
        .await
        .map_err(io)?;
    link.connected.set(true);
    loop {
        let generation = link.ready.generation();
        let batch = {
            let mut queue = link.queue.borrow_mut();
            let mut batch = Vec::new();
            let mut bytes = 0;
            while let Some(m) = queue.front() {
                if !batch.is_empty() && bytes + m.len() > FRAME_TARGET_BYTES {
                    break;
                }
                bytes += m.len();
                if let Some(m) = queue.pop_front() {
                    batch.push(m);
                }
            }
            link.bytes.set(link.bytes.get().saturating_sub(bytes));
            batch
        };
        if link.removed() {
            return Err("the node was removed".into());
        }
        if batch.is_empty() {
            // Woken at least every backoff period to see a removal.
            let _ = select(
                Box::pin(link.ready.changed_since(generation)),
                Box::pin(glommio::timer::sleep(DIAL_BACKOFF_MAX)),
            )
            .await;
            continue;
        }
        stream
            .write_all(&peer_frame::encode_raft(&batch))
            .await
            .map_err(io)?;
    }
}

/// Accepts peer connections on this shard's peer port until the process
/// ends. Returns the address bound.
pub fn listen(shard: &Rc<Shard>) -> Result<Option<SocketAddr>, String> {
    let config = &shard.settings.config;
    let Some(cluster) = config.cluster.as_ref().filter(|c| c.nodes() > 1) else {
        return Ok(None);
    };
    let me = cluster
        .peer(cluster.node_id)
        .ok_or_else(|| format!("node {} is not among cluster.peers", cluster.node_id))?;
    let address = shard_peer_address(&me, shard.id)?;
    let mut bind = resolve(&address)
        .ok_or_else(|| format!("cannot resolve this node's peer address {address}"))?;
    if !bind.ip().is_loopback() {
        // Any interface: the host may name this node by a public name.
        bind.set_ip(std::net::Ipv4Addr::UNSPECIFIED.into());
    }
    let listener = TcpListener::bind(bind)
        .map_err(|e| format!("shard {}: cannot listen for peers on {bind}: {e}", shard.id))?;
    let shard = shard.clone();
    glommio::spawn_local(async move {
        let unauthenticated = Rc::new(Cell::new(0usize));
        loop {
            match listener.accept().await {
                Ok(stream) => {
                    let Some(pending) = Unauthenticated::take(&unauthenticated) else {
                        tracing::warn!(
                            shard = shard.id,
                            "peer connection refused: {PEER_UNAUTHENTICATED_MAX} others are still in their handshake"
                        );
                        continue;
                    };
                    glommio::spawn_local(serve_peer(shard.clone(), stream, pending)).detach();
                }
                Err(e) => {
                    tracing::warn!(shard = shard.id, "peer accept failed: {e}");
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    })
    .detach();
    Ok(Some(bind))
}

/// A peer connection counted among its shard's unauthenticated ones
/// until dropped (its hello verified, or the connection gone).
struct Unauthenticated(Rc<Cell<usize>>);

impl Unauthenticated {
    /// One more, unless [`PEER_UNAUTHENTICATED_MAX`] are pending.
    fn take(count: &Rc<Cell<usize>>) -> Option<Unauthenticated> {
        if count.get() >= PEER_UNAUTHENTICATED_MAX {
            return None;
        }
        count.set(count.get() + 1);
        Some(Unauthenticated(count.clone()))
    }
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// Reads one frame of at most `max` body bytes (checked before its body
/// is allocated).
async fn read_frame<R: AsyncRead + Unpin>(stream: &mut R, max: usize) -> Result<PeerFrame, String> {
    let mut header = [0u8; PEER_FRAME_HEADER_BYTES];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|e| format!("reading a peer frame: {e}"))?;
    let (len, crc) = peer_frame::parse_header(&header)?;
    debug_assert!(len <= PEER_FRAME_BYTES_MAX);
    if len > max {
        return Err(format!(
            "a peer handshake frame of {len} bytes (at most {max})"
        ));
    }
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| format!("reading a peer frame: {e}"))?;
    peer_frame::decode_body(&body, crc)
}

/// Serves one incoming peer connection: TLS first when this node has
/// `tls:`, then [`serve_peer_on`].
async fn serve_peer(shard: Rc<Shard>, stream: TcpStream, pending: Unauthenticated) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _ = stream.set_nodelay(true);
    match shard.settings.tls.clone() {
        None => serve_peer_on(shard, stream, peer, pending).await,
        Some(config) => {
            let deadline = std::time::Instant::now() + HELLO_TIMEOUT;
            if let Some(tls) = super::tls::accept(&config, stream, deadline).await {
                serve_peer_on(shard, tls, peer, pending).await;
            }
        }
    }
}

/// A challenge, the peer's hello, then its messages.
async fn serve_peer_on<S: AsyncRead + AsyncWrite + Unpin>(
    shard: Rc<Shard>,
    mut stream: S,
    peer: String,
    pending: Unauthenticated,
) {
    let challenge = match peer_frame::challenge() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(shard = shard.id, %peer, "peer connection refused: {e}");
            return;
        }
    };
    if let Err(e) = stream
        .write_all(&peer_frame::encode_challenge(&challenge))
        .await
    {
        tracing::debug!(shard = shard.id, %peer, "peer connection lost: {e}");
        return;
    }
    let hello = match select(
        Box::pin(read_frame(&mut stream, PEER_HANDSHAKE_FRAME_BYTES_MAX)),
        Box::pin(glommio::timer::sleep(HELLO_TIMEOUT)),
    )
    .await
    {
        futures::future::Either::Left((Ok(PeerFrame::Hello(h)), _)) => h,
        futures::future::Either::Left((Ok(_), _)) => {
            tracing::warn!(shard = shard.id, %peer, "peer connection refused: its first frame is not a hello");
            return;
        }
        futures::future::Either::Left((Err(e), _)) => {
            tracing::warn!(shard = shard.id, %peer, "peer connection refused: {e}");
            return;
        }
        futures::future::Either::Right(_) => {
            tracing::warn!(shard = shard.id, %peer, "peer connection refused: no hello within {HELLO_TIMEOUT:?}");
            return;
        }
    };
    if let Err(why) = check_hello(&shard, &challenge, hello) {
        tracing::warn!(shard = shard.id, %peer, "peer connection refused: {why}");
        return;
    }
    drop(pending);
    loop {
        let frame = read_frame(&mut stream, PEER_FRAME_BYTES_MAX).await;
        if shard_cluster_lacks(&shard, hello.node_id) {
            tracing::info!(
                shard = shard.id,
                node = hello.node_id,
                "peer connection closed: the node was removed"
            );
            return;
        }
        match frame {
            Ok(PeerFrame::Raft(messages)) => {
                for m in messages {
                    // A follower forwards a leadership transfer it was
                    // asked for, naming the transferee as its sender.
                    let forwarded =
                        m.msg.get_msg_type() == raft::eraftpb::MessageType::MsgTransferLeader;
                    if m.msg.from != hello.node_id && !forwarded {
                        tracing::warn!(
                            shard = shard.id,
                            node = hello.node_id,
                            "peer sent a message from node {}; closing",
                            m.msg.from
                        );
                        return;
                    }
                    shard.on_peer_message(&m.stream, m.partition, m.msg);
                }
            }
            Ok(PeerFrame::Hello(_) | PeerFrame::Challenge(_)) => {
                tracing::warn!(
                    shard = shard.id,
                    node = hello.node_id,
                    "peer sent a second handshake frame; closing"
                );
                return;
            }
            Err(e) => {
                tracing::debug!(
                    shard = shard.id,
                    node = hello.node_id,
                    "peer connection closed: {e}"
                );
                return;
            }
        }
    }
}

/// Whether `node` is no longer a node of this shard's cluster.
fn shard_cluster_lacks(shard: &Shard, node: u64) -> bool {
    shard
        .settings
        .config
        .cluster
        .as_ref()
        .is_none_or(|c| c.peer(node).is_none())
}

/// A hello proves the cluster secret for this connection's challenge, and
/// is from another node of the cluster, to this shard id, with the same
/// shard count.
fn check_hello(
    shard: &Shard,
    challenge: &[u8; peer_frame::CHALLENGE_BYTES],
    hello: Hello,
) -> Result<(), String> {
    let Some(cluster) = &shard.settings.config.cluster else {
        return Err("this server is not in a cluster".into());
    };
    if !peer_frame::hello_verifies(&cluster.secret.0, challenge, &hello) {
        return Err(format!(
            "the hello claiming node {} does not prove the cluster secret (cluster.secretFile differs between the nodes?)",
            hello.node_id
        ));
    }
    if hello.node_id == cluster.node_id || cluster.peer(hello.node_id).is_none() {
        return Err(format!(
            "node {} is not another node of cluster.peers",
            hello.node_id
        ));
    }
    if hello.shard != shard.id || hello.shards != shard.shards {
        return Err(format!(
            "node {} dialled shard {} of {} on shard {} of {}: every node of a cluster runs the same number of shards",
            hello.node_id, hello.shard, hello.shards, shard.id, shard.shards
        ));
    }
    Ok(())
}
