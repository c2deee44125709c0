//! Scoped tokens end to end: a token limited to publishing on `events` can
//! do that and nothing else, through the CLI and the Rust client; a
//! subscribe-only token reads; admin tokens manage tokens; `token list`
//! never shows a secret; the data dir holds no secret in clear; tokens
//! survive a restart; a revoked or narrowed token's open connection loses
//! access at once.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed step must fail the test at once"
)]

use std::time::Duration;

use hadron::{
    Client, ClientOptions, Delivery, ErrorCode, NewEvent, StartPoint, SubscribeOptions, TokenScope,
};
use hadron_tests::{
    CliOutput, Frame, RawConn, Server, ServerOptions, create_stream, eventually, run_cli_with_token,
};
use hadron_wire::Message;
use sha2::{Digest, Sha256};

const BOOT: &str = "bootstrap-admin-secret";
const CLI_TIMEOUT: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(10);

const PIPELINE_YAML: &str = "apiVersion: hadron.rs/v1beta1
kind: Pipeline
metadata: { name: flow }
spec:
  sourceStream: events
  triggers: [order.placed]
  stages:
    - name: ship
";

fn server_with(config: Option<&str>) -> Server {
    Server::start_with(ServerOptions {
        shards: 2,
        token: Some(BOOT.into()),
        config: config.map(str::to_owned),
        ..ServerOptions::default()
    })
}

fn client_as(server: &Server, token: &str) -> Client {
    server.client_with(ClientOptions {
        token: Some(token.into()),
        ..ClientOptions::default()
    })
}

fn cli(server: &Server, token: &str, args: &[&str]) -> CliOutput {
    let url = server.addr();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--url", &url]);
    run_cli_with_token(&all, Some(token), CLI_TIMEOUT)
}

/// `hadron token create` as the bootstrap admin: the secret it printed.
fn create_token(server: &Server, args: &[&str]) -> String {
    let mut all = vec!["token", "create"];
    all.extend(args);
    let out = cli(server, BOOT, &all);
    assert!(out.status.success(), "{out:?}");
    let secret = out.stdout.trim().to_owned();
    assert!(secret.starts_with("hdn_") && secret.len() == 68, "{out:?}");
    assert!(out.stderr.contains("created"), "{out:?}");
    secret
}

fn event(ty: &str) -> NewEvent {
    NewEvent::new(ty, b"{}".to_vec())
}

/// Asserts `result` failed with `Forbidden` and a message holding `says`.
fn assert_forbidden<T: std::fmt::Debug>(result: Result<T, hadron::Error>, says: &str) {
    match result {
        Err(hadron::Error::Server { code, message }) => {
            assert_eq!(code, ErrorCode::Forbidden, "{message}");
            assert!(message.contains(says), "{message:?} lacks {says:?}");
        }
        other => panic!("expected Forbidden ({says}), got {other:?}"),
    }
}

/// Asserts a CLI command failed with `Forbidden` and `says`.
fn assert_cli_forbidden(out: &CliOutput, says: &str) {
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("Forbidden (24)"), "{out:?}");
    assert!(out.stderr.contains(says), "{out:?} lacks {says:?}");
}

async fn ignore(_: Delivery) -> Result<(), String> {
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_scoped_to_publish_on_events_can_publish_there_and_nothing_else() {
    let server = server_with(None);
    let admin = server.client();
    create_stream(&admin, "orders", 2).await;
    admin.apply(PIPELINE_YAML).await.unwrap();
    let secret = create_token(&server, &["writer", "--publish", "events"]);

    // The CLI: publish on events works; everything else is refused.
    let out = cli(
        &server,
        &secret,
        &["publish", "--stream", "events", "--type", "t", "x"],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.json_lines().len(), 1, "{out:?}");
    let out = cli(
        &server,
        &secret,
        &["publish", "--stream", "orders", "--type", "t", "x"],
    );
    assert_cli_forbidden(
        &out,
        "token \"writer\" lacks publish on stream \"orders\" (needed for Publish)",
    );
    let out = cli(
        &server,
        &secret,
        &[
            "subscribe",
            "--stream",
            "events",
            "--group",
            "g",
            "--count",
            "1",
        ],
    );
    assert_cli_forbidden(
        &out,
        "lacks subscribe on stream \"events\" (needed for Subscribe)",
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("orders.yaml");
    std::fs::write(&file, hadron_tests::stream_yaml("more", 1)).unwrap();
    let out = cli(&server, &secret, &["apply", "-f", file.to_str().unwrap()]);
    assert_cli_forbidden(&out, "token \"writer\" lacks admin (needed for Apply)");
    let out = cli(&server, &secret, &["pipeline", "retry", "flow"]);
    assert_cli_forbidden(&out, "lacks admin (needed for PipelineRetry)");
    let out = cli(&server, &secret, &["token", "create", "mine", "--all"]);
    assert_cli_forbidden(&out, "lacks admin (needed for TokenCreate)");
    assert!(out.stdout.is_empty(), "{out:?}");

    // The Rust client: the same.
    let writer = client_as(&server, &secret);
    let published = writer.publisher("e2e").await.unwrap();
    published.publish(event("t")).await.unwrap();
    let orders = writer.publisher_for("orders", "e2e").await.unwrap();
    assert_forbidden(
        orders.publish(event("t")).await,
        "token \"writer\" lacks publish on stream \"orders\"",
    );
    assert_forbidden(
        writer.fetch("events", 0, 0, 1 << 20).await,
        "lacks subscribe on stream \"events\" (needed for Fetch)",
    );
    let options = SubscribeOptions {
        durable: false,
        start: StartPoint::Beginning,
        max_in_flight: 1,
    };
    assert_forbidden(
        writer.subscribe("events", "g", options, ignore).await,
        "lacks subscribe on stream \"events\" (needed for Subscribe)",
    );
    let stage = writer.pipeline("flow", "ship", |input: hadron::StageInput| async move {
        Ok::<_, String>(NewEvent::new("shipped", input.root.data))
    });
    assert_forbidden(
        stage.await,
        "lacks subscribe on stream \"events\" (needed for PipelineSubscribe)",
    );
    assert_forbidden(
        writer.apply(&hadron_tests::stream_yaml("more", 1)).await,
        "lacks admin (needed for Apply)",
    );
    assert_forbidden(
        writer.retry_pipeline("flow", None).await,
        "lacks admin (needed for PipelineRetry)",
    );
    assert_forbidden(
        writer.create_token("mine", &TokenScope::default()).await,
        "lacks admin (needed for TokenCreate)",
    );
    assert_forbidden(
        writer.list_tokens().await,
        "lacks admin (needed for TokenList)",
    );
    assert_forbidden(
        writer.revoke_token("writer").await,
        "lacks admin (needed for TokenRevoke)",
    );
    // Status and metadata are open to every token.
    writer.status().await.unwrap();
    writer.metadata().await.unwrap();
    // Exactly the two allowed publishes reached events.
    let mut stored = 0;
    for partition in 0..4 {
        stored += admin
            .fetch("events", partition, 0, 1 << 20)
            .await
            .unwrap()
            .records
            .len();
    }
    assert_eq!(stored, 2);
    // A wrong secret is no token at all.
    let stranger = client_as(&server, "hdn_0000");
    let e = stranger.status().await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Unauthorized), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_only_token_reads_its_stream_and_its_pipelines_but_cannot_publish() {
    let server = server_with(None);
    let admin = server.client();
    admin.apply(PIPELINE_YAML).await.unwrap();
    let secret = create_token(&server, &["reader", "--subscribe", "events"]);
    let publisher = admin.publisher("e2e").await.unwrap();
    for _ in 0..3 {
        publisher.publish(event("t")).await.unwrap();
    }
    let reader = client_as(&server, &secret);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _subscription = reader
        .subscribe(
            "events",
            "g",
            SubscribeOptions {
                durable: false,
                start: StartPoint::Beginning,
                max_in_flight: 8,
            },
            move |d: Delivery| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(d.offset);
                    Ok::<_, String>(())
                }
            },
        )
        .await
        .unwrap();
    let mut seen = 0;
    while seen < 3 {
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        seen += 1;
    }
    // Acked: the group settles (its lag reaches 0).
    eventually(WAIT, "the reader's acks settle the group", || async {
        let status = hadron_tests::status(&server.client()).await;
        let lag: u64 = (0..4)
            .map(|p| {
                hadron_tests::group_status(&status, "events", p, "g")
                    .map_or(0, |g| g["lag"].as_u64().unwrap_or(u64::MAX))
            })
            .sum();
        (lag == 0).then_some(())
    })
    .await;
    // A stage of a pipeline reading events is allowed.
    reader
        .pipeline("flow", "ship", |input: hadron::StageInput| async move {
            Ok::<_, String>(NewEvent::new("shipped", input.root.data))
        })
        .await
        .unwrap();
    let page = reader.fetch("events", 0, 0, 1 << 20).await;
    assert!(page.is_ok(), "{page:?}");
    let publisher = reader.publisher("e2e").await.unwrap();
    assert_forbidden(
        publisher.publish(event("t")).await,
        "token \"reader\" lacks publish on stream \"events\" (needed for Publish)",
    );
    let out = cli(
        &server,
        &secret,
        &[
            "subscribe",
            "--stream",
            "events",
            "--group",
            "cli",
            "--count",
            "3",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.json_lines().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_tokens_manage_tokens_which_survive_a_restart_stored_only_as_hashes() {
    let mut server = server_with(Some("tokensMax: 3\n"));
    let ops = create_token(&server, &["ops", "--admin"]);
    // An admin token (not the bootstrap one) creates and lists tokens.
    let out = cli(
        &server,
        &ops,
        &[
            "token",
            "create",
            "writer",
            "--publish",
            "events",
            "--publish",
            "orders",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let writer = out.stdout.trim().to_owned();
    let out = cli(&server, &ops, &["token", "create", "all", "--all"]);
    assert!(out.status.success(), "{out:?}");
    let everything = out.stdout.trim().to_owned();
    let out = cli(&server, &ops, &["token", "list"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        out.stdout,
        "all: all\nops: admin\nwriter: publish [events, orders]\n"
    );
    // Never a secret, nor a hash, in a listing.
    let hash_of = |s: &str| -> String {
        Sha256::digest(s.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    for secret in [&ops, &writer, &everything] {
        assert!(!out.stdout.contains(secret.as_str()));
        assert!(!out.stdout.contains(&hash_of(secret)));
    }
    // Refusals: a name taken, tokensMax, a name unknown.
    let admin = client_as(&server, &ops);
    let e = admin
        .create_token("ops", &TokenScope::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidConfig), "{e}");
    assert!(e.to_string().contains("token \"ops\" exists"), "{e}");
    let e = admin
        .create_token("fourth", &TokenScope::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::LimitExceeded), "{e}");
    assert!(e.to_string().contains("tokensMax is 3"), "{e}");
    let e = admin.revoke_token("nobody").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidRequest), "{e}");
    assert!(e.to_string().contains("no token named \"nobody\""), "{e}");
    let out = cli(&server, &ops, &["token", "revoke", "all"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, "token/all revoked\n");

    // The data dir holds hashes, never a secret.
    assert!(server.stop().success());
    let resources = std::fs::read_to_string(server.data_dir().join("resources.yaml")).unwrap();
    assert!(resources.contains(&hash_of(&writer)), "{resources}");
    assert!(!resources.contains(&hash_of(&everything)), "{resources}");
    for entry in walk(&server.data_dir()) {
        let bytes = std::fs::read(&entry).unwrap();
        for secret in [&ops, &writer, &everything] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds a secret",
                entry.display()
            );
        }
    }

    // After a restart the tokens are there and their secrets work.
    server.restart();
    drop(admin);
    let out = cli(&server, &ops, &["token", "list"]);
    assert_eq!(out.stdout, "ops: admin\nwriter: publish [events, orders]\n");
    client_as(&server, &writer)
        .publisher("e2e")
        .await
        .unwrap()
        .publish(event("t"))
        .await
        .unwrap();
    let e = client_as(&server, &everything).status().await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Unauthorized), "{e}");
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// A raw connection handshaken with `token`.
async fn raw_as(server: &Server, token: &str) -> RawConn {
    let mut conn = RawConn::connect(server.port()).await;
    conn.send(&Message::Handshake(hadron_wire::Handshake {
        version: hadron_wire::PROTOCOL_VERSION,
        token,
        client_name: "e2e-raw",
    }))
    .await;
    match conn.recv().await {
        Some(Frame::HandshakeOk { .. }) => conn,
        other => panic!("expected HandshakeOk, got {other:?}"),
    }
}

/// Reads frames (deliveries may come first) until the connection-level
/// error, then checks the connection closes; the error's message.
async fn until_cut_off(conn: &mut RawConn) -> String {
    loop {
        // The error is queued before the revoke is answered: a second is
        // the bound, with room to spare.
        match conn.recv_within(Duration::from_secs(1)).await {
            Some(Some(Frame::Error {
                request_id: 0,
                code,
                message,
            })) => {
                assert_eq!(code, ErrorCode::Forbidden, "{message}");
                assert_eq!(conn.recv_within(WAIT).await, Some(None), "still open");
                return message;
            }
            Some(Some(Frame::Delivery(_))) => continue,
            other => panic!("expected the Forbidden error, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_or_narrowing_a_token_cuts_its_open_connections_off() {
    let server = server_with(None);
    let admin = server.client();
    let reader = create_token(&server, &["reader", "--subscribe", "events"]);
    let mut subscribed = raw_as(&server, &reader).await;
    subscribed.subscribe("events", "g", false, 8).await;
    admin
        .publisher("e2e")
        .await
        .unwrap()
        .publish(event("t"))
        .await
        .unwrap();
    assert!(subscribed.next_delivery(WAIT).await.is_some());
    admin.revoke_token("reader").await.unwrap();
    let message = until_cut_off(&mut subscribed).await;
    assert_eq!(
        message,
        "forbidden: token \"reader\" was revoked; this connection has no access"
    );

    // Narrowed by applying the Token document again without subscribe:
    // a subscription is cut off, and a publish on the same token's other
    // connection is refused on that connection, which stays open.
    // (A stream of its own: a subscription from the beginning of events
    // would get the event above before its SubscribeOk.)
    create_stream(&admin, "audit", 1).await;
    let secret = "hdn_narrowed-in-a-test";
    let hash: String = Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let token_yaml = |grants: &str| {
        format!(
            "apiVersion: hadron.rs/v1beta1\nkind: Token\nmetadata: {{name: rw}}\nspec:\n  streams: {grants}\n  secretSha256: {hash}\n"
        )
    };
    admin
        .apply(&token_yaml("{publish: [audit], subscribe: [audit]}"))
        .await
        .unwrap();
    let mut reading = raw_as(&server, secret).await;
    reading.subscribe("audit", "g2", false, 8).await;
    let mut publishing = raw_as(&server, secret).await;
    let bytes = hadron_tests::event_bytes("1", "e2e", "t", b"");
    let publish = Message::Publish(hadron_wire::Publish {
        stream: "audit",
        partition: 0,
        events: vec![&bytes],
    });
    let mut pushed = Vec::new();
    let reply = publishing.request(&publish, &mut pushed).await;
    assert!(matches!(reply, Frame::PublishOk { .. }), "{reply:?}");
    admin
        .apply(&token_yaml("{subscribe: [audit]}"))
        .await
        .unwrap();
    let reply = publishing.request(&publish, &mut pushed).await;
    match reply {
        Frame::Error { code, message, .. } => {
            assert_eq!(code, ErrorCode::Forbidden);
            assert_eq!(
                message,
                "forbidden: token \"rw\" lacks publish on stream \"audit\" (needed for Publish)"
            );
        }
        other => panic!("expected Forbidden, got {other:?}"),
    }
    // Its subscription is still allowed: that connection stays.
    admin
        .apply(&token_yaml("{publish: [audit]}"))
        .await
        .unwrap();
    let message = until_cut_off(&mut reading).await;
    assert_eq!(
        message,
        "forbidden: token \"rw\" lacks subscribe on stream \"audit\" (needed for Subscribe)"
    );
    let reply = publishing.request(&publish, &mut pushed).await;
    assert!(matches!(reply, Frame::PublishOk { .. }), "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_create_sent_again_with_the_same_secret_is_answered_unchanged() {
    let server = server_with(None);
    let mut raw = raw_as(&server, BOOT).await;
    let hash: [u8; 32] = Sha256::digest(b"hdn_the-same-secret-twice").into();
    let create = |secret_sha256| {
        Message::TokenCreate(hadron_wire::TokenCreate {
            name: "retried",
            secret_sha256,
            scope: hadron_wire::TokenScope {
                all: true,
                ..hadron_wire::TokenScope::default()
            },
        })
    };
    // The retry of a create whose answer was lost: the same request.
    for _ in 0..2 {
        let reply = raw.request(&create(&hash), &mut Vec::new()).await;
        assert!(
            matches!(
                reply,
                Frame::Other {
                    name: "ApplyOk",
                    ..
                }
            ),
            "{reply:?}"
        );
    }
    // Another secret under the same name is a second create: refused.
    let other: [u8; 32] = Sha256::digest(b"hdn_another-secret").into();
    let reply = raw.request(&create(&other), &mut Vec::new()).await;
    match reply {
        Frame::Error { code, message, .. } => {
            assert_eq!(code, ErrorCode::InvalidConfig);
            assert!(message.contains("token \"retried\" exists"), "{message}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    let out = cli(&server, BOOT, &["token", "list"]);
    assert_eq!(out.stdout, "retried: all\n", "{out:?}");
}
