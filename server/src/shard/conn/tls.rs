//! The TLS handshake of a client connection, when the server has `tls:`:
//! rustls (futures-rustls) over glommio's `TcpStream`, on the shard that
//! accepted the connection.
//!
//! The connection already holds its `connectionsMax` slot when the
//! handshake starts, and the handshake must end by the connection's
//! `handshakeTimeoutMs` deadline (the Hadron handshake that follows gets
//! what is left of it): a client that stalls or sends garbage costs its
//! own slot for that long and nothing else. Failures are logged at debug
//! level only, since anyone who reaches the port can cause them.
//!
//! rustls reads the socket 4 KiB at a time (at most one record, about
//! 16 KiB): under the TLS session a read buffer of [`READ_BUFFER_BYTES`]
//! turns those into one read per 64 KiB, as the plain path reads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::{Either, select};
use futures::io::BufReader;
use futures_rustls::TlsAcceptor;
use futures_rustls::server::TlsStream;
use glommio::net::TcpStream;

/// Bytes read from the socket at a time under a TLS session: as many as
/// a plain connection reads.
const READ_BUFFER_BYTES: usize = super::READ_CHUNK_BYTES;

/// A TLS connection: rustls over a read-buffered socket.
pub(super) type Stream = TlsStream<BufReader<TcpStream>>;

/// Performs the server side of the TLS handshake on `stream`; `None` when
/// it failed or did not end by `deadline` (the socket is then closed).
pub(super) async fn accept(
    config: &Arc<rustls::ServerConfig>,
    stream: TcpStream,
    deadline: Instant,
) -> Option<Stream> {
    let peer = stream.peer_addr().ok();
    let left = deadline.saturating_duration_since(Instant::now());
    let buffered = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
    let handshake = TlsAcceptor::from(config.clone()).accept(buffered);
    match select(handshake, Box::pin(glommio::timer::sleep(left))).await {
        Either::Left((Ok(tls), _)) => Some(tls),
        Either::Left((Err(e), _)) => {
            tracing::debug!(?peer, "TLS handshake failed: {e}");
            None
        }
        Either::Right(_) => {
            tracing::debug!(
                ?peer,
                "TLS handshake not done within {}ms",
                left.as_millis()
            );
            None
        }
    }
}

/// The handshake for a connection that will only be told it is refused:
/// bounded by `within`.
pub(super) async fn accept_within(
    config: &Arc<rustls::ServerConfig>,
    stream: TcpStream,
    within: Duration,
) -> Option<Stream> {
    accept(config, stream, Instant::now() + within).await
}
