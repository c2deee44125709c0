//! The hostile and careless clients of the hardening issue, each against a
//! fresh server, with the server's peak RSS (VmHWM) under the attack and
//! whether it still served another client afterwards.
//!
//! ```sh
//! cargo build --release -p hadron-server
//! cargo run --release -p hadron-tests --example attacks
//! ```
//!
//! It starts the `hadron` binary of its own profile
//! (`target/release/hadron`, built by the first command), or the one
//! `HADRON_BIN` names (see `hadron_tests::hadron_bin`).
//!
//! Each line: the attack, the server's peak RSS before it (after start and
//! set-up) and after it, and whether a bystander's publish and fetch still
//! worked. Nothing here reaches beyond 127.0.0.1.

#![expect(
    clippy::unwrap_used,
    reason = "a measuring program: a failed step must stop it with its message"
)]

use std::time::{Duration, Instant};

use hadron::NewEvent;
use hadron_tests::{Frame, RawConn, Server, ServerOptions, memory_kib};
use hadron_wire::Message;

fn start(config: &str) -> Server {
    Server::start_with(ServerOptions {
        config: Some(config.into()),
        ..ServerOptions::default()
    })
}

async fn bystander_served(server: &Server) -> bool {
    let client = server.client();
    let Ok(publisher) = client.publisher("bystander").await else {
        return false;
    };
    let event = NewEvent {
        ty: "bystander".into(),
        ..NewEvent::default()
    };
    let Ok(Ok(published)) =
        tokio::time::timeout(Duration::from_secs(10), publisher.publish_to(1, event)).await
    else {
        return false;
    };
    client
        .fetch("events", 1, published.offset, 1024)
        .await
        .is_ok_and(|page| !page.records.is_empty())
}

fn report(attack: &str, server: &Server, before_kib: u64, served: bool, note: &str) {
    let (_, peak) = memory_kib(server.pid().unwrap());
    println!(
        "{attack:<44} peak RSS {:>7.1} MiB -> {:>7.1} MiB  served others: {}  {note}",
        before_kib as f64 / 1024.0,
        peak as f64 / 1024.0,
        if served { "yes" } else { "NO" }
    );
}

/// 4 MiB of events in partition 0, then the peak RSS.
async fn fill(server: &Server) -> u64 {
    hadron_tests::fill_partition(&server.client(), "events", 0, "fill", 64, 64 << 10).await;
    memory_kib(server.pid().unwrap()).1
}

/// Pipelines `count` Fetches of `max_bytes` on one connection and reads
/// nothing for `hold`.
async fn greedy_fetches(server: &Server, count: u64, max_bytes: u32, hold: Duration) -> RawConn {
    let mut conn = RawConn::handshaken(server.port()).await;
    let mut frames = Vec::new();
    for id in 1..=count {
        let fetch = Message::Fetch(hadron_wire::Fetch {
            stream: "events",
            partition: 0,
            offset: 0,
            max_bytes,
        });
        frames.extend(hadron_wire::encode(id, &fetch).unwrap());
    }
    conn.send_bytes(&frames).await;
    let until = Instant::now() + hold;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    conn
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    raise_nofile(12_000);
    // 1. Pipelined large Fetches, never read (was: 4 GB).
    let server = start("");
    let before = fill(&server).await;
    let conn = greedy_fetches(&server, 2_000, 16 << 20, Duration::from_secs(3)).await;
    let served = bystander_served(&server).await;
    report(
        "2,000 x 16 MiB Fetches, socket never read",
        &server,
        before,
        served,
        "",
    );
    drop(conn);

    // 2. One Fetch with max_bytes of 4 GiB (was: a whole segment).
    let server = start("");
    let before = fill(&server).await;
    let mut conn = RawConn::handshaken(server.port()).await;
    let id = conn
        .send(&Message::Fetch(hadron_wire::Fetch {
            stream: "events",
            partition: 0,
            offset: 0,
            max_bytes: u32::MAX,
        }))
        .await;
    let got = conn.recv().await;
    let served = bystander_served(&server).await;
    let answered =
        matches!(got, Some(Frame::Other { request_id, name: "FetchOk" }) if request_id == id);
    report(
        "Fetch max_bytes 4 GiB",
        &server,
        before,
        served,
        if answered {
            "(answered)"
        } else {
            "(NOT answered)"
        },
    );

    // 3. 64 unauthenticated connections, each sending a 16 MiB frame's
    // prefix and then the most a stranger may send (was: 1.1 GB).
    let server = start("");
    let before = memory_kib(server.pid().unwrap()).1;
    let mut conns = Vec::new();
    let mut refused = 0;
    for _ in 0..64 {
        let mut big = RawConn::connect(server.port()).await;
        big.send_bytes(&(16u32 << 20).to_le_bytes()).await;
        if let Some(Some(Frame::Error { .. })) = big.recv_within(Duration::from_secs(5)).await {
            refused += 1;
        }
        let mut held = RawConn::connect(server.port()).await;
        let mut partial = (64u32 << 10).to_le_bytes().to_vec();
        partial.extend(std::iter::repeat_n(0xa5u8, (64 << 10) - 1));
        held.send_bytes(&partial).await;
        conns.push(held);
    }
    let served = bystander_served(&server).await;
    report(
        "64 strangers: 16 MiB prefixes, 64 KiB partials",
        &server,
        before,
        served,
        &format!("({refused}/64 prefixes refused FrameTooLarge)"),
    );
    drop(conns);

    // 4. 5,000 idle connections (was: all accepted).
    let server = start("");
    let before = memory_kib(server.pid().unwrap()).1;
    let mut conns = Vec::new();
    let mut refused = 0;
    for _ in 0..5_000 {
        match tokio::net::TcpStream::connect(("127.0.0.1", server.port())).await {
            Ok(c) => conns.push(c),
            Err(_) => refused += 1,
        }
    }
    // While 1,024 of them are held, a newcomer is refused too (that is
    // what the bound means); once they go, or time out idle, it is served.
    let served_while_held = bystander_served(&server).await;
    let connected = conns.len();
    drop(conns);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut served = false;
    while !served && Instant::now() < deadline {
        served = bystander_served(&server).await;
    }
    report(
        "5,000 idle connections",
        &server,
        before,
        served,
        &format!(
            "({connected} connected at TCP level, {refused} failed; newcomer served while held: {served_while_held}; connectionsMax 1024)"
        ),
    );

    // 5. One Ack of a million ids (was: a shard stalled 40-50 s).
    let server = start("");
    let before = memory_kib(server.pid().unwrap()).1;
    let mut conn = RawConn::handshaken(server.port()).await;
    let ids: Vec<u64> = (1..=1_000_000).collect();
    let started = Instant::now();
    let id = conn
        .send(&Message::Ack(hadron_wire::Ack { delivery_ids: ids }))
        .await;
    let answer = conn.recv().await;
    let took = started.elapsed();
    let served = bystander_served(&server).await;
    let code = match answer {
        Some(Frame::Error {
            request_id, code, ..
        }) if request_id == id => code.name(),
        other => panic!("unexpected answer to the big Ack: {other:?}"),
    };
    report(
        "Ack of 1,000,000 ids",
        &server,
        before,
        served,
        &format!("(answered {code} in {} ms)", took.as_millis()),
    );

    // 6. YAML bombs (were: 1 GB from 15 KB of aliases; a shard stalled 36 s
    // on 100,000 `[`; 20,000 streams from one Apply).
    let server = start("");
    let before = memory_kib(server.pid().unwrap()).1;
    let mut aliases = String::from("a: &a [");
    aliases.push_str(&vec!["xxxxxxxx"; 1000].join(","));
    for (name, of) in [("b", "a"), ("c", "b"), ("d", "c")] {
        aliases.push_str(&format!("]\n{name}: &{name} ["));
        aliases.push_str(&vec![format!("*{of}"); 1000].join(","));
    }
    aliases.push_str("]\n");
    let mut streams = String::new();
    for i in 0..20_000 {
        streams.push_str(&format!(
            "---\napiVersion: hadron.rs/v1beta1\nkind: Stream\nmetadata: {{ name: s{i} }}\nspec: {{ partitions: 1 }}\n"
        ));
    }
    let mut notes = Vec::new();
    for (what, yaml) in [
        ("aliases", aliases),
        ("100k [", "[".repeat(100_000)),
        ("100k {a:", "{a: ".repeat(100_000)),
        ("20k streams", streams),
    ] {
        let (answer, ms) = apply(&server, &yaml).await;
        notes.push(format!("{what}: {answer} in {ms} ms"));
    }
    let served = bystander_served(&server).await;
    report(
        "YAML bombs",
        &server,
        before,
        served,
        &format!("({})", notes.join("; ")),
    );
}

/// Sends `yaml` as one Apply; returns the answer's name and how long it took.
async fn apply(server: &Server, yaml: &str) -> (String, u128) {
    let mut conn = RawConn::handshaken(server.port()).await;
    let started = Instant::now();
    let id = conn
        .send(&Message::Apply(hadron_wire::Apply { yaml, force: false }))
        .await;
    let answer = match conn.recv().await {
        Some(Frame::Error {
            request_id, code, ..
        }) if request_id == id => code.name().to_owned(),
        Some(Frame::Other { request_id, name }) if request_id == id => name.to_owned(),
        other => format!("{other:?}"),
    };
    (answer, started.elapsed().as_millis())
}

/// Raises this process's open-file limit so it can hold many sockets.
fn raise_nofile(want: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, want.min(hard), hard);
    }
}
