//! TLS end to end (`tls:` in the server config, `https://` URLs): the Rust
//! client and the CLI publish and read back over TLS, on the main port and
//! the shard ports; a client that does not trust the server's CA refuses
//! it; mutual TLS lets in a client certificate its CA signed and nothing
//! else; a plain client against a TLS port, or a TLS client against a
//! plain one, fails with a clear error while the server serves others; a
//! stalled TLS handshake holds its `connectionsMax` slot until
//! `handshakeTimeoutMs` cuts it. Every certificate is made at run time
//! with rcgen.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed set-up step must fail the test at once, with its message"
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hadron::{Client, ClientOptions, Error, ErrorCode, NewEvent, TlsOptions};
use hadron_tests::{Server, ServerOptions, eventually, run_cli};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// A CA with a server certificate (for `localhost` and 127.0.0.1) and a
/// client certificate, and a stranger CA with a client certificate of its
/// own, as PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

/// A certificate `params` signed by `issuer` (or self-signed as a CA when
/// `issuer` is `None`), written as `<name>.pem` and `<name>.key`.
fn make_cert(
    dir: &Path,
    name: &str,
    params: rcgen::CertificateParams,
    issuer: Option<&rcgen::Issuer<'static, rcgen::KeyPair>>,
) -> rcgen::KeyPair {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = match issuer {
        Some(issuer) => params.signed_by(&key, issuer).unwrap(),
        None => params.self_signed(&key).unwrap(),
    };
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    key
}

fn ca(dir: &Path, name: &str) -> rcgen::Issuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    // Each CA its own name: a certificate names its issuer by it.
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let key = make_cert(dir, name, params.clone(), None);
    rcgen::Issuer::new(params, key)
}

fn leaf(names: &[&str], purpose: rcgen::ExtendedKeyUsagePurpose) -> rcgen::CertificateParams {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    params.extended_key_usages = vec![purpose];
    params
}

impl Pki {
    fn new() -> Pki {
        use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let dir = tempfile::Builder::new()
            .prefix("hadron-e2e-tls")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let ours = ca(d, "ca");
        make_cert(
            d,
            "server",
            leaf(&["localhost", "127.0.0.1"], ServerAuth),
            Some(&ours),
        );
        make_cert(d, "client", leaf(&["client"], ClientAuth), Some(&ours));
        let stranger = ca(d, "stranger-ca");
        make_cert(
            d,
            "stranger-client",
            leaf(&["stranger"], ClientAuth),
            Some(&stranger),
        );
        make_cert(
            d,
            "stranger-server",
            leaf(&["localhost", "127.0.0.1"], ServerAuth),
            Some(&stranger),
        );
        Pki { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn arg(&self, file: &str) -> String {
        self.path(file).display().to_string()
    }

    /// The server's `tls:` setting, requiring client certificates of our
    /// CA when `mutual`.
    fn server_config(&self, mutual: bool) -> String {
        let mut tls = format!(
            "tls:\n  cert: {}\n  key: {}\n",
            self.arg("server.pem"),
            self.arg("server.key")
        );
        if mutual {
            tls.push_str(&format!("  clientCa: {}\n", self.arg("ca.pem")));
        }
        tls
    }

    /// Client TLS options trusting the CA `ca` (a `.pem` of this
    /// directory), presenting `client` (`<client>.pem` and `.key`).
    fn client_tls(&self, ca: &str, client: Option<&str>) -> TlsOptions {
        TlsOptions::from_files(
            Some(&self.path(ca)),
            client.map(|c| self.path(&format!("{c}.pem"))).as_deref(),
            client.map(|c| self.path(&format!("{c}.key"))).as_deref(),
        )
        .unwrap()
    }
}

fn tls_server(pki: &Pki, mutual: bool, shards: u16, more_config: &str) -> Server {
    Server::start_with(ServerOptions {
        shards,
        config: Some(format!("{}{more_config}", pki.server_config(mutual))),
        ..ServerOptions::default()
    })
}

fn https(server: &Server, host: &str) -> String {
    format!("https://{host}:{}", server.port())
}

fn client(url: &str, tls: TlsOptions) -> Client {
    Client::new(
        url,
        ClientOptions {
            tls,
            // Failures here are refusals: fail at the first, not after
            // the publisher's retries.
            publish_attempts_max: 1,
            ..ClientOptions::default()
        },
    )
    .unwrap()
}

/// Publishes one event to `partition` and reads it back by its offset.
async fn publish_and_read_back(client: &Client, partition: u32, id: &str) -> Result<(), Error> {
    let publisher = client.publisher("tls-e2e").await?;
    let data = format!("over tls {id}").into_bytes();
    let event = NewEvent {
        id: id.into(),
        ty: "tls.test".into(),
        data: data.clone(),
        ..NewEvent::default()
    };
    let published = publisher.publish_to(partition, event).await?;
    assert_eq!(published.partition, partition);
    let page = client
        .fetch("events", partition, published.offset, 1 << 20)
        .await?;
    let (offset, event) = &page.records[0];
    assert_eq!(*offset, published.offset);
    assert_eq!((event.id.as_str(), &event.data), (id, &data));
    Ok(())
}

/// The error a request fails with, as text, with its `Error`.
fn refused(result: Result<(), Error>, what: &str) -> (String, Error) {
    match result {
        Ok(()) => panic!("{what}: went through"),
        Err(e) => (e.to_string(), e),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_publishes_and_reads_back_over_tls_on_the_main_and_shard_ports() {
    let pki = Pki::new();
    let server = tls_server(&pki, false, 2, "");
    for host in ["127.0.0.1", "localhost"] {
        let client = client(&https(&server, host), pki.client_tls("ca.pem", None));
        let info = client.server_info().await.unwrap();
        assert!(info.shard_aware(), "{info:?}");
        // The default stream's four partitions, on both shards' ports.
        for partition in 0..4 {
            publish_and_read_back(&client, partition, &format!("{host}-{partition}"))
                .await
                .unwrap();
        }
        // Pushes over TLS: a group receives what was published.
        let (subscription, received) = hadron_tests::record_group(
            &client,
            "events",
            &format!("tls-readers-{host}"),
            hadron::SubscribeOptions::default(),
        )
        .await;
        eventually(Duration::from_secs(20), "the group's deliveries", || {
            let ids: Vec<String> = received
                .lock()
                .unwrap()
                .iter()
                .map(|r| r.2.clone())
                .collect();
            async move { (ids.iter().filter(|id| id.starts_with(host)).count() == 4).then_some(()) }
        })
        .await;
        subscription.cancel();
    }
}

#[test]
fn the_cli_publishes_subscribes_and_reports_status_over_tls() {
    let pki = Pki::new();
    let server = tls_server(&pki, false, 1, "");
    let url = https(&server, "localhost");
    let ca = pki.arg("ca.pem");
    let out = run_cli(
        &[
            "publish",
            "--url",
            &url,
            "--ca",
            &ca,
            "--type",
            "cli.tls",
            "--id",
            "cli-tls-1",
            "hello over tls",
        ],
        CLI_TIMEOUT,
    );
    assert!(out.status.success(), "publish over TLS: {out:?}");
    assert!(out.stdout.contains("\"offset\":0"), "{out:?}");
    let out = run_cli(
        &[
            "subscribe",
            "--url",
            &url,
            "--ca",
            &ca,
            "--group",
            "cli-tls",
            "--count",
            "1",
        ],
        CLI_TIMEOUT,
    );
    assert!(out.status.success(), "subscribe over TLS: {out:?}");
    assert!(
        out.stdout.contains("cli-tls-1") && out.stdout.contains("hello over tls"),
        "{out:?}"
    );
    let out = run_cli(
        &["status", "--json", "--url", &url, "--ca", &ca],
        CLI_TIMEOUT,
    );
    assert!(out.status.success(), "status over TLS: {out:?}");
    // Without --ca the system's CAs do not know ours: refused, saying why.
    let out = run_cli(&["status", "--url", &url], CLI_TIMEOUT);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains("TLS with localhost:") && out.stderr.contains("UnknownIssuer"),
        "{out:?}"
    );
    // A CA file that is not there is named.
    let out = run_cli(
        &["status", "--url", &url, "--ca", "/nonexistent/ca.pem"],
        CLI_TIMEOUT,
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("/nonexistent/ca.pem"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_trust_the_servers_ca_refuses_it() {
    let pki = Pki::new();
    let server = tls_server(&pki, false, 1, "");
    let url = https(&server, "127.0.0.1");
    let stranger = client(&url, pki.client_tls("stranger-ca.pem", None));
    let (text, e) = refused(
        publish_and_read_back(&stranger, 0, "x").await,
        "stranger CA",
    );
    assert!(matches!(e, Error::Tls { .. }), "{e:?}");
    assert!(!e.is_retryable());
    assert!(
        text.contains("invalid peer certificate: UnknownIssuer"),
        "{text}"
    );
    // The system's CAs do not know ours either.
    let system = client(&url, TlsOptions::default());
    let (text, _) = refused(publish_and_read_back(&system, 0, "y").await, "system CAs");
    assert!(text.contains("UnknownIssuer"), "{text}");
    // The server still serves a client that trusts it.
    let trusting = client(&url, pki.client_tls("ca.pem", None));
    publish_and_read_back(&trusting, 1, "trusted")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_client_and_a_tls_port_fail_cleanly_either_way_round() {
    let pki = Pki::new();
    let server = tls_server(&pki, false, 1, "");
    // Plain to a TLS port: the server answers with a TLS alert.
    let plain = client(
        &format!("http://127.0.0.1:{}", server.port()),
        TlsOptions::default(),
    );
    let started = Instant::now();
    let (text, e) = refused(publish_and_read_back(&plain, 0, "p").await, "plain to TLS");
    assert!(matches!(e, Error::Tls { .. }), "{e:?}");
    assert!(text.contains("the server answered in TLS"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    // The server stays up for others.
    let tls = client(&https(&server, "127.0.0.1"), pki.client_tls("ca.pem", None));
    publish_and_read_back(&tls, 0, "after-plain").await.unwrap();

    // TLS to a plain port: the server's bytes are not TLS.
    let plain_server = Server::start();
    let confused = client(
        &https(&plain_server, "127.0.0.1"),
        pki.client_tls("ca.pem", None),
    );
    let (text, e) = refused(
        publish_and_read_back(&confused, 0, "t").await,
        "TLS to plain",
    );
    assert!(matches!(e, Error::Tls { .. }), "{e:?}");
    assert!(
        text.contains("https:// only for a server with `tls:`"),
        "{text}"
    );
    publish_and_read_back(&plain_server.client(), 0, "plain-still-serves")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_a_certificate_of_the_client_ca_and_refuses_others() {
    let pki = Pki::new();
    let server = tls_server(&pki, true, 1, "");
    let url = https(&server, "localhost");
    let good = client(&url, pki.client_tls("ca.pem", Some("client")));
    publish_and_read_back(&good, 0, "mutual").await.unwrap();
    for (who, tls) in [
        ("no client certificate", pki.client_tls("ca.pem", None)),
        (
            "a certificate of another CA",
            pki.client_tls("ca.pem", Some("stranger-client")),
        ),
    ] {
        let refused_client = client(&url, tls);
        let (text, e) = refused(publish_and_read_back(&refused_client, 0, who).await, who);
        assert!(matches!(e, Error::Tls { .. }), "{who}: {e:?}");
        assert!(text.contains("received fatal alert"), "{who}: {text}");
    }
    // The CLI with --cert and --key.
    let out = run_cli(
        &[
            "status",
            "--json",
            "--url",
            &url,
            "--ca",
            &pki.arg("ca.pem"),
            "--cert",
            &pki.arg("client.pem"),
            "--key",
            &pki.arg("client.key"),
        ],
        CLI_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "CLI with a client certificate: {out:?}"
    );
    let out = run_cli(
        &["status", "--url", &url, "--ca", &pki.arg("ca.pem")],
        CLI_TIMEOUT,
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("TLS with"), "{out:?}");
    publish_and_read_back(&good, 0, "mutual-after")
        .await
        .unwrap();
}

/// Reads until the server closes (end of file or reset); panics when it
/// is still open after `limit`.
async fn closed_within(stream: &mut (impl AsyncReadExt + Unpin), limit: Duration) {
    let mut sink = Vec::new();
    if tokio::time::timeout(limit, stream.read_to_end(&mut sink))
        .await
        .is_err()
    {
        panic!("still open after {limit:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_tls_handshake_holds_a_connection_slot_until_handshake_timeout_cuts_it() {
    let pki = Pki::new();
    let server = tls_server(
        &pki,
        false,
        1,
        "handshakeTimeoutMs: 1000\nconnectionsMax: 1\n",
    );
    let url = https(&server, "127.0.0.1");
    // A client that starts a TLS handshake and stalls: the first bytes of
    // a ClientHello record, then nothing.
    let mut stalled = tokio::net::TcpStream::connect(("127.0.0.1", server.port()))
        .await
        .unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01, 0x00]).await.unwrap();
    // It holds the only connection slot: a TLS client is told so.
    let second = client(&url, pki.client_tls("ca.pem", None));
    let (text, e) = refused(
        publish_and_read_back(&second, 0, "second").await,
        "over connectionsMax",
    );
    assert_eq!(e.code(), Some(ErrorCode::TooManyConnections), "{text}");
    // The handshake timeout closes it, and frees the slot.
    closed_within(&mut stalled, Duration::from_secs(10)).await;
    let third = client(&url, pki.client_tls("ca.pem", None));
    eventually(
        Duration::from_secs(10),
        "a connection after the cut",
        || {
            let third = third.clone();
            async move { publish_and_read_back(&third, 0, "third").await.ok() }
        },
    )
    .await;
}

/// A TLS connection to `port` that trusts our CA, speaking nothing yet;
/// with `recv_buffer_bytes`, its socket's receive buffer is that small
/// (so the server's writes block often).
async fn raw_tls(
    pki: &Pki,
    port: u16,
    recv_buffer_bytes: Option<u32>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(pki.path("ca.pem")).unwrap();
    roots.add_parsable_certificates(
        rustls::pki_types::pem::PemObject::pem_slice_iter(&ca).map(Result::unwrap),
    );
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(bytes) = recv_buffer_bytes {
        socket.set_recv_buffer_size(bytes).unwrap();
    }
    let tcp = socket
        .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_that_never_sends_the_hadron_handshake_is_answered_timeout_and_closed() {
    let pki = Pki::new();
    let server = tls_server(&pki, false, 1, "handshakeTimeoutMs: 500\n");
    // TLS completes, then no Hadron handshake: answered Timeout, closed.
    let mut stream = raw_tls(&pki, server.port(), None).await;
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received))
        .await
        .expect("closed by the handshake timeout")
        .ok();
    let text = String::from_utf8_lossy(&received);
    assert!(text.contains("handshakeTimeoutMs = 500"), "{text:?}");
    // Others are served.
    let client = client(&https(&server, "127.0.0.1"), pki.client_tls("ca.pem", None));
    publish_and_read_back(&client, 0, "after-timeout")
        .await
        .unwrap();
}

/// Reads one frame from `stream` into `buf` (keeping what follows it) and
/// decodes it with `check`.
async fn next_frame<T>(
    stream: &mut (impl AsyncReadExt + Unpin),
    buf: &mut Vec<u8>,
    check: impl Fn(hadron_wire::FrameRef<'_>) -> T,
) -> T {
    let limits = hadron_wire::Limits::DEFAULT;
    loop {
        if let Some((body, total)) = hadron_wire::split_frame(buf, &limits).unwrap() {
            let out = check(hadron_wire::decode(body, &limits).unwrap());
            buf.drain(..total);
            return out;
        }
        let mut chunk = vec![0; 64 << 10];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_larger_than_the_socket_buffers_arrive_whole_over_tls_to_a_slow_reader() {
    // Answers of several MiB to a reader with a 4 KiB receive window: the
    // server's TLS writes block again and again, and each answer must
    // still arrive whole with no other answer behind it. (Both writers
    // also flush after each write, since TLS may keep the tail of an
    // accepted write until flushed; the socket buffers here are too
    // large for this test to catch a missing flush every time.)
    const EVENTS: usize = 12;
    const EVENT_BYTES: usize = 512 << 10;
    const FETCHES: usize = 4;
    let pki = Pki::new();
    let server = tls_server(&pki, false, 1, "");
    let client = client(&https(&server, "127.0.0.1"), pki.client_tls("ca.pem", None));
    let publisher = client.publisher("tls-large").await.unwrap();
    let mut first = None;
    for i in 0..EVENTS {
        let event = NewEvent {
            id: format!("large-{i}"),
            ty: "tls.large".into(),
            data: vec![i as u8; EVENT_BYTES],
            ..NewEvent::default()
        };
        let published = publisher.publish_to(0, event).await.unwrap();
        first.get_or_insert(published.offset);
    }
    let first = first.unwrap();
    let mut stream = raw_tls(&pki, server.port(), Some(4096)).await;
    let mut buf = Vec::new();
    let hello = hadron_wire::Message::Handshake(hadron_wire::Handshake {
        version: hadron_wire::PROTOCOL_VERSION,
        token: "",
        client_name: "tls-large",
    });
    stream
        .write_all(&hadron_wire::encode(1, &hello).unwrap())
        .await
        .unwrap();
    stream.flush().await.unwrap();
    next_frame(&mut stream, &mut buf, |f| {
        assert!(
            matches!(f.message, hadron_wire::Message::HandshakeOk(_)),
            "{:?}",
            f.message.name()
        );
    })
    .await;
    // One answer at a time: each must arrive whole without another
    // answer behind it to push its tail out.
    for round in 0..FETCHES {
        let fetch = hadron_wire::Message::Fetch(hadron_wire::Fetch {
            stream: "events",
            partition: 0,
            offset: first,
            max_bytes: 8 << 20,
        });
        let id = 2 + round as u64;
        stream
            .write_all(&hadron_wire::encode(id, &fetch).unwrap())
            .await
            .unwrap();
        stream.flush().await.unwrap();
        let records = tokio::time::timeout(
            Duration::from_secs(20),
            next_frame(&mut stream, &mut buf, |f| match f.message {
                hadron_wire::Message::FetchOk(ok) => ok
                    .records
                    .iter()
                    .map(|r| (r.offset, r.event.len()))
                    .collect::<Vec<_>>(),
                other => panic!("expected FetchOk, got {}", other.name()),
            }),
        )
        .await
        .unwrap_or_else(|_| panic!("fetch {round}: the answer did not arrive whole"));
        assert!(records.len() >= 8, "fetch {round}: {records:?}");
        for (i, (offset, bytes)) in records.iter().enumerate() {
            assert_eq!(*offset, first + i as u64);
            assert!(
                *bytes > EVENT_BYTES,
                "fetch {round}: record {i} is {bytes} bytes"
            );
        }
    }
}

#[test]
fn a_server_whose_tls_files_do_not_load_refuses_to_start_naming_the_file() {
    let pki = Pki::new();
    for (config, named) in [
        (
            format!(
                "tls: {{cert: {}, key: /nonexistent/server.key}}\n",
                pki.arg("server.pem")
            ),
            "tls.key /nonexistent/server.key: cannot read it".to_owned(),
        ),
        (
            // The client's key is not the server certificate's.
            format!(
                "tls: {{cert: {}, key: {}}}\n",
                pki.arg("server.pem"),
                pki.arg("client.key")
            ),
            "the key does not match the certificate".to_owned(),
        ),
    ] {
        let (status, log) = Server::start_expecting_exit(
            ServerOptions {
                config: Some(config),
                ..ServerOptions::default()
            },
            Duration::from_secs(20),
        );
        assert!(!status.success(), "{log}");
        assert!(
            log.contains("invalid configuration") && log.contains(&named),
            "{log}"
        );
    }
}
