//! The client's error type. Every failure the client reports is one
//! `Error`; `Error::is_retryable` says whether trying the same operation
//! again may succeed (the publisher and the subscription runners use it for
//! their automatic retries).

use core::fmt;
use std::io;
use std::time::Duration;

use hadron_wire::{DecodeError, EncodeError, ErrorCode};

/// Everything that can go wrong in the client.
#[non_exhaustive]
#[derive(Debug)]
pub enum Error {
    /// The server address given to `Client::new` could not be understood.
    InvalidUrl {
        /// The address as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A TCP connection to `addr` could not be opened (DNS, refused,
    /// unreachable).
    Connect {
        /// `host:port` the client tried.
        addr: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The TLS handshake with `addr` failed: its certificate did not
    /// verify, it refused ours, or one side does not speak TLS.
    Tls {
        /// `host:port` the client tried.
        addr: String,
        /// What rustls (or the client) said.
        reason: String,
    },
    /// The TLS options cannot be used (`ClientOptions::tls`): a file, a
    /// certificate or a key.
    TlsConfig {
        /// What is wrong.
        reason: String,
    },
    /// Reading from or writing to an established connection failed.
    Io(io::Error),
    /// The connection closed or failed before the answer arrived. The
    /// request's outcome is unknown; publishing it again is safe (it is
    /// idempotent by `(source, id)`).
    ConnectionLost {
        /// Why the connection ended.
        reason: String,
    },
    /// The server sent bytes that are not a valid frame, or an answer that
    /// does not fit the request. The connection is dropped.
    Protocol(String),
    /// A received frame or event failed verification.
    Decode(DecodeError),
    /// A request could not be encoded (most likely too large: send fewer or
    /// smaller events per batch).
    Encode(EncodeError),
    /// The server answered the request with an error.
    Server {
        /// The stable error code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// The node asked does not lead the partition (`ErrorCode::NotLeader`,
    /// a cluster). Nothing was done; the publisher and `Client::fetch`
    /// retry at `leader` (or, without one, after refreshing Metadata), a
    /// publish with the same ids.
    NotLeader {
        /// The server's explanation.
        message: String,
        /// Where the leader is, when the node knew.
        leader: Option<LeaderAddr>,
    },
    /// No answer arrived in time. The outcome is unknown.
    Timeout {
        /// What was being waited for.
        what: &'static str,
        /// How long the client waited.
        after: Duration,
    },
    /// The subscription or handler was stopped, or the client was shut down.
    Closed,
    /// A client method that spawns tasks was called outside a tokio runtime.
    NoRuntime,
}

impl Error {
    /// Whether the same operation may succeed if tried again later: network
    /// failures, timeouts, and server errors that describe a passing
    /// condition (shutting down, storage hiccup, wrong shard).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect { .. }
            | Error::Io(_)
            | Error::ConnectionLost { .. }
            | Error::Timeout { .. }
            | Error::NotLeader { .. } => true,
            Error::Server { code, .. } => matches!(
                code,
                ErrorCode::ShuttingDown
                    | ErrorCode::StorageError
                    | ErrorCode::WrongShard
                    | ErrorCode::DiskFull
                    | ErrorCode::Busy
            ),
            _ => false,
        }
    }

    /// Whether the request failed for want of a working connection (it
    /// could not be opened, broke, or stayed silent), so that another
    /// node, or the same one reconnected, may answer it: what makes the
    /// client forget a partition's leader and look for it again.
    pub(crate) fn is_connection_failure(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. }
                | Error::Io(_)
                | Error::ConnectionLost { .. }
                | Error::Timeout { .. }
        )
    }

    /// The server's error code, when the server rejected the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } => Some(*code),
            Error::NotLeader { .. } => Some(ErrorCode::NotLeader),
            _ => None,
        }
    }

    pub(crate) fn server(code: ErrorCode, message: &str) -> Error {
        Error::Server {
            code,
            message: message.to_owned(),
        }
    }

    pub(crate) fn lost(reason: impl Into<String>) -> Error {
        Error::ConnectionLost {
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidUrl { url, reason } => write!(
                f,
                "invalid server address {url:?}: {reason}; use host, host:port or scheme://host:port"
            ),
            Error::Connect { addr, source } => write!(
                f,
                "cannot connect to {addr}: {source}; check that the server runs and the address is right"
            ),
            Error::Tls { addr, reason } => write!(
                f,
                "TLS with {addr} failed: {reason}; check that the URL says https:// only for a server with `tls:`, that the CA given (ClientOptions::tls, hadron --ca) signed the server's certificate, and the client certificate if the server requires one"
            ),
            Error::TlsConfig { reason } => write!(f, "TLS options: {reason}"),
            Error::Io(e) => write!(
                f,
                "connection I/O failed: {e}; the client reconnects on retry"
            ),
            Error::ConnectionLost { reason } => write!(
                f,
                "connection lost before the answer arrived ({reason}); the outcome is unknown, retrying is safe"
            ),
            Error::Protocol(what) => write!(
                f,
                "protocol violation by the server: {what}; check that client and server versions match"
            ),
            Error::Decode(e) => write!(f, "received data failed verification: {e}"),
            Error::Encode(e) => write!(f, "cannot encode request: {e}"),
            Error::Server { code, message } => {
                write!(f, "server error {code}: {message}")?;
                match code {
                    ErrorCode::UnknownStream => {
                        write!(f, "; create the stream first (hadron apply)")
                    }
                    ErrorCode::UnknownPipeline | ErrorCode::UnknownStage => {
                        write!(f, "; apply the pipeline definition first")
                    }
                    ErrorCode::Unauthorized => write!(f, "; check ClientOptions::token"),
                    ErrorCode::ShuttingDown => write!(f, "; retry later"),
                    ErrorCode::ReadOnly => write!(
                        f,
                        "; the partition refuses writes after a disk failure until the server restarts"
                    ),
                    _ => Ok(()),
                }
            }
            Error::NotLeader { message, leader } => match leader {
                // The server's message says whether the node it names
                // leads or is only a replica that knows the leader.
                Some(l) => write!(
                    f,
                    "server error {}: {message}; ask node {} at {} (shard port {})",
                    ErrorCode::NotLeader,
                    l.node_id,
                    l.address,
                    l.shard_port
                ),
                None => write!(
                    f,
                    "server error {}: {message}; no leader named, retry later",
                    ErrorCode::NotLeader
                ),
            },
            Error::Timeout { what, after } => write!(
                f,
                "no answer to {what} within {after:?}; the outcome is unknown, retry or raise ClientOptions::request_timeout"
            ),
            Error::Closed => write!(f, "the client, subscription or handler was stopped"),
            Error::NoRuntime => write!(
                f,
                "no tokio runtime: call this from inside a tokio runtime (e.g. #[tokio::main])"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connect { source, .. } => Some(source),
            Error::Io(e) => Some(e),
            Error::Decode(e) => Some(e),
            Error::Encode(e) => Some(e),
            _ => None,
        }
    }
}

/// A partition's leader as a `NotLeader` error names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderAddr {
    /// The leader's node id.
    pub node_id: u64,
    /// Its client address, `host:port`.
    pub address: String,
    /// The port of the shard holding the partition; 0: none.
    pub shard_port: u16,
}

impl Error {
    /// The client's form of an `Error` frame.
    pub(crate) fn from_reply(e: &hadron_wire::ErrorReply<'_>) -> Error {
        if e.code == ErrorCode::NotLeader {
            return Error::NotLeader {
                message: e.message.to_owned(),
                leader: e.leader.map(|l| LeaderAddr {
                    node_id: l.node_id,
                    address: l.address.to_owned(),
                    shard_port: l.shard_port,
                }),
            };
        }
        Error::server(e.code, e.message)
    }
}

impl From<DecodeError> for Error {
    fn from(e: DecodeError) -> Self {
        Error::Decode(e)
    }
}

impl From<EncodeError> for Error {
    fn from(e: EncodeError) -> Self {
        Error::Encode(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_classification() {
        assert!(Error::lost("x").is_retryable());
        assert!(
            Error::Timeout {
                what: "publish",
                after: Duration::from_secs(1)
            }
            .is_retryable()
        );
        assert!(Error::server(ErrorCode::ShuttingDown, "bye").is_retryable());
        assert!(!Error::server(ErrorCode::UnknownStream, "no").is_retryable());
        assert!(!Error::server(ErrorCode::ReadOnly, "no").is_retryable());
        assert!(Error::server(ErrorCode::DiskFull, "disk full").is_retryable());
        assert!(Error::server(ErrorCode::Busy, "too much proposed").is_retryable());
        assert!(!Error::server(ErrorCode::LimitExceeded, "ackIdsMax").is_retryable());
        assert!(!Error::Closed.is_retryable());
        // A certificate that does not verify will not verify next time.
        let tls = Error::Tls {
            addr: "h:1".into(),
            reason: "invalid peer certificate: UnknownIssuer".into(),
        };
        assert!(!tls.is_retryable());
        assert!(tls.to_string().contains("hadron --ca"), "{tls}");
    }

    #[test]
    fn messages_say_what_to_do() {
        let e = Error::server(ErrorCode::UnknownStream, "no stream orders");
        let text = e.to_string();
        assert!(text.contains("UnknownStream (4)"), "{text}");
        assert!(text.contains("create the stream"), "{text}");
    }
}
