//! A fault-injecting TCP proxy for cluster tests: it forwards connections
//! from its loopback port to a target, and [`FaultProxy::cut`] breaks the
//! link (open connections are shut down, new ones are closed at once) until
//! [`FaultProxy::heal`]. A cluster test puts one in front of each directed
//! peer link (node A's connections to node B), so that it can cut one
//! direction, or every link of a node.
//!
//! Threads, not async: each connection is two copying threads, stopped by
//! shutting their sockets down. Only 127.0.0.1 is ever bound or dialled.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a dial to the target may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct State {
    cut: AtomicBool,
    stopped: AtomicBool,
    /// Both ends of every open connection, to shut down on a cut.
    open: Mutex<Vec<(TcpStream, TcpStream)>>,
}

/// A proxy from [`FaultProxy::addr`] to a target. Dropping it stops it.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FaultProxy {
    /// Listens on `port` of 127.0.0.1 and forwards to `target`.
    pub fn start(port: u16, target: SocketAddr) -> std::io::Result<FaultProxy> {
        assert!(
            target.ip().is_loopback(),
            "a test proxy only reaches loopback"
        );
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let accepting = state.clone();
        std::thread::spawn(move || {
            for inbound in listener.incoming() {
                if accepting.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(inbound) = inbound else { continue };
                if accepting.cut.load(Ordering::SeqCst) {
                    let _ = inbound.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(outbound) = TcpStream::connect_timeout(&target, DIAL_TIMEOUT) else {
                    let _ = inbound.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                if let (Ok(a), Ok(b)) = (inbound.try_clone(), outbound.try_clone()) {
                    lock(&accepting.open).push((a, b));
                }
                pump(&inbound, &outbound);
                pump(&outbound, &inbound);
            }
        });
        Ok(FaultProxy { addr, state })
    }

    /// Where to connect to reach the target through the proxy.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Breaks the link: open connections are shut down, new ones closed.
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        for (a, b) in lock(&self.state.open).drain(..) {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }

    /// Lets connections through again.
    pub fn heal(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }

    /// Whether the link is cut.
    pub fn is_cut(&self) -> bool {
        self.state.cut.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        self.cut();
        // Wake the accept loop so that it sees `stopped`.
        let _ = TcpStream::connect_timeout(&self.addr, DIAL_TIMEOUT);
    }
}

/// Copies `from` to `to` in a thread until either end closes.
fn pump(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { continue };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    fn round_trip(addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(&addr, DIAL_TIMEOUT)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(msg)?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got)?;
        Ok(got)
    }

    #[test]
    fn forwards_cuts_open_and_new_connections_and_heals() {
        let proxy = FaultProxy::start(0, echo_server()).unwrap();
        assert_eq!(round_trip(proxy.addr(), b"hello").unwrap(), b"hello");
        // An open connection dies at the cut.
        let mut open = TcpStream::connect(proxy.addr()).unwrap();
        open.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        open.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        open.read_exact(&mut one).unwrap();
        proxy.cut();
        assert!(proxy.is_cut());
        let _ = open.write_all(b"y");
        assert!(matches!(open.read(&mut one), Ok(0) | Err(_)));
        // New connections are closed while cut.
        assert!(round_trip(proxy.addr(), b"again").is_err());
        proxy.heal();
        assert_eq!(round_trip(proxy.addr(), b"healed").unwrap(), b"healed");
    }
}
