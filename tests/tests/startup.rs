//! No half-alive server: a shard that fails to start, never becomes ready
//! or panics stops the whole process with a non-zero exit and a log line;
//! fresh multi-shard starts serve on every shard; and a server refuses to
//! listen beyond loopback without a token unless told to.

use std::time::Duration;

use hadron::NewEvent;
use hadron_tests::{Server, ServerOptions, fetch_all};

/// Long enough for a debug build to start on a loaded 2-core machine.
const EXIT_WITHIN: Duration = Duration::from_secs(30);

fn with_failpoint(failpoint: &str, shards: u16) -> ServerOptions {
    ServerOptions {
        shards,
        env: vec![("HADRON_FAILPOINTS".into(), failpoint.into())],
        ..ServerOptions::default()
    }
}

#[test]
fn a_shard_that_fails_to_start_stops_the_server_with_an_error() {
    let (status, log) =
        Server::start_expecting_exit(with_failpoint("shard-start-fail=1", 2), EXIT_WITHIN);
    assert!(!status.success(), "exit {status:?}; log:\n{log}");
    assert!(
        log.contains("a shard failed to start, so the server stops")
            && log.contains("shard 1: failpoint shard-start-fail"),
        "log:\n{log}"
    );
}

#[test]
fn a_shard_that_never_becomes_ready_fails_the_start_within_the_timeout() {
    let options = ServerOptions {
        config: Some("shardStartTimeoutMs: 1500\n".into()),
        ..with_failpoint("shard-start-hang=0", 2)
    };
    let (status, log) = Server::start_expecting_exit(options, EXIT_WITHIN);
    assert!(!status.success(), "exit {status:?}; log:\n{log}");
    assert!(
        log.contains("shard(s) 0 did not become ready within 1500 ms"),
        "log:\n{log}"
    );
}

#[test]
fn a_panic_in_one_shard_stops_the_whole_process() {
    let mut server = Server::start_with(with_failpoint("shard-panic=1", 2));
    let status = server
        .wait_exit(EXIT_WITHIN)
        .unwrap_or_else(|| panic!("still running after the panic; log:\n{}", server.log()));
    assert!(!status.success(), "exit {status:?}");
    let log = server.log();
    assert!(
        log.contains("failpoint shard-panic on shard 1") && log.contains("stopping the server"),
        "log:\n{log}"
    );
}

/// Many servers with several shards, each on a fresh data dir (all shards
/// run the DMA read probe there at once): every start must serve reads and
/// writes on every shard. Before the probe was made race-free, about one
/// two-shard start in twenty left a shard failing every read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_multi_shard_starts_serve_on_every_shard() {
    const STARTS: usize = 8;
    const SHARDS: u16 = 4;
    for start in 0..STARTS {
        let server = Server::start_with(ServerOptions {
            shards: SHARDS,
            ..ServerOptions::default()
        });
        let client = server.client();
        let publisher = client.publisher("startup").await.unwrap();
        // `events` has 4 partitions; placement spreads them over the shards.
        for partition in 0..4u32 {
            let event = NewEvent {
                id: format!("s{start}-p{partition}"),
                ty: "startup.check".into(),
                data: vec![partition as u8; 300],
                ..NewEvent::default()
            };
            let published = publisher.publish_to(partition, event).await.unwrap();
            assert_eq!((published.partition, published.offset), (partition, 0));
            let stored = fetch_all(&client, "events", partition).await;
            assert_eq!(stored.len(), 1, "start {start}, partition {partition}");
            assert_eq!(stored[0].1.data, vec![partition as u8; 300]);
        }
        let log = server.log();
        assert!(
            log.contains(&format!("all {SHARDS} shards ready")),
            "start {start}; log:\n{log}"
        );
    }
}

#[test]
fn listening_beyond_loopback_without_a_token_is_refused_at_start() {
    let options = ServerOptions {
        listen_any: true,
        ..ServerOptions::default()
    };
    let (status, log) = Server::start_expecting_exit(options, EXIT_WITHIN);
    assert!(!status.success(), "exit {status:?}; log:\n{log}");
    assert!(
        log.contains("beyond loopback") && log.contains("--insecure-no-token"),
        "log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listening_beyond_loopback_without_a_token_starts_when_told_to() {
    let server = Server::start_with(ServerOptions {
        listen_any: true,
        args: vec!["--insecure-no-token".into()],
        ..ServerOptions::default()
    });
    let published = server
        .client()
        .publisher("anyone")
        .await
        .unwrap()
        .publish_to(
            0,
            NewEvent {
                ty: "open.door".into(),
                ..NewEvent::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(published.offset, 0);
    assert!(server.log().contains("insecureNoToken"), "{}", server.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listening_beyond_loopback_with_a_token_starts() {
    let server = Server::start_with(ServerOptions {
        listen_any: true,
        token: Some("s3cret-startup".into()),
        ..ServerOptions::default()
    });
    let status = hadron_tests::status(&server.client()).await;
    assert!(status["streams"].is_array() || status["streams"].is_object());
}

/// A cluster node's ports are fixed (the other nodes' configs name them),
/// so the harness cannot move it to fresh ports when one is taken: it waits
/// for the holder to let go. CI once saw a node fail five starts within
/// 0.3 s on a peer port someone held; the waits between starts now add up
/// to 3 s. Here a listener holds the node's peer port for 1 s.
#[test]
fn a_node_whose_peer_port_is_held_for_a_second_starts_once_it_is_let_go() {
    let client = hadron_tests::free_port_range(1);
    let peer = hadron_tests::free_port_range(1);
    let others = [
        hadron_tests::free_port_range(1),
        hadron_tests::free_port_range(1),
    ];
    let holder = std::net::TcpListener::bind(("127.0.0.1", peer)).expect("hold the peer port");
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        drop(holder);
    });
    let config = format!(
        "cluster:\n  nodeId: 1\n  peers:\n\
         \x20   - {{ id: 1, address: \"127.0.0.1:{client}\", peerAddress: \"127.0.0.1:{peer}\" }}\n\
         \x20   - {{ id: 2, address: \"127.0.0.1:{}\", peerAddress: \"127.0.0.1:{}\" }}\n\
         \x20   - {{ id: 3, address: \"127.0.0.1:{}\", peerAddress: \"127.0.0.1:{}\" }}\n",
        others[0],
        others[0] + 100,
        others[1],
        others[1] + 100,
    );
    let server = Server::start_with(ServerOptions {
        config: Some(config),
        port: Some(client),
        ..ServerOptions::default()
    });
    release.join().expect("the holder's thread");
    let log = server.log();
    assert!(
        log.contains(&format!("cannot listen for peers on 127.0.0.1:{peer}")),
        "the first start met the held port; log:\n{log}"
    );
    assert_eq!(server.port(), client);
    let listening = std::net::TcpStream::connect(("127.0.0.1", peer));
    assert!(
        listening.is_ok(),
        "the node listens on its peer port: {listening:?}"
    );
}

/// A port where connections a std listener accepted were closed from its
/// side holds sockets in TIME_WAIT for a minute: std's listeners bind over
/// them (SO_REUSEADDR) but the server's do not (glommio sets SO_REUSEPORT
/// only), so the harness checks ports as the server binds them. CI once
/// failed a cluster node's five starts on a port a proxy of an earlier
/// test had left so.
#[test]
fn a_port_left_in_time_wait_is_not_handed_out_since_the_server_cannot_bind_it() {
    use std::io::Read;
    let port = hadron_tests::free_port_range(0);
    {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind");
        let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        // This side closes first, so its socket waits in TIME_WAIT.
        drop(accepted);
        let mut rest = Vec::new();
        let _ = client.read_to_end(&mut rest);
    }
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "std binds over TIME_WAIT"
    );
    assert!(!hadron_tests::port_bindable(port));
    let (status, log) = Server::start_expecting_exit(
        ServerOptions {
            port: Some(port),
            ..ServerOptions::default()
        },
        EXIT_WITHIN,
    );
    assert!(!status.success(), "{log}");
    assert!(log.contains("Address already in use"), "{log}");
}
