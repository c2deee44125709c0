//! Hadron's wire protocol, sans-IO. The schema in `wire/schema/hadron.fbs` is
//! the source of truth; `docs/protocol.md` describes it for implementers in
//! other languages.
//!
//! A connection carries frames: a `u32` little-endian length `n`, then `n`
//! bytes of a `Frame` flatbuffer. Receivers call `check` (is a whole frame
//! buffered, and is its length acceptable?) then `decode`, which verifies the
//! flatbuffer against `Limits` before reading any field and yields a typed
//! `Message`. Senders build frames with an `Encoder`. Events travel as their
//! own finished `Event` flatbuffers inside frames (`encode_event`, or an
//! `EventEncoder` that appends to a caller's buffer; `decode_event`), so the
//! server stores and forwards exactly the bytes a publisher sent.
//!
//! This crate does no I/O and depends on no runtime; the server (glommio)
//! and the client (tokio) both build on it. Nothing in it panics on input
//! from the network.

mod error;
mod event;
mod frame;
pub mod fuzz_checks;
pub mod generated;
mod message;
mod placement;
#[cfg(test)]
mod verify_mutations;

pub use error::ErrorCode;
pub use event::{
    Event, EventEncoder, EventRef, SPECVERSION, decode_event, encode_event, encode_event_with,
    verify_event,
};
pub use frame::{
    DEPTH_MAX_DEFAULT, DecodeError, FrameError, FrameRef, LENGTH_PREFIX_BYTES, Limits,
    TABLES_MAX_DEFAULT, check, decode, split_frame, verify_frame,
};
pub use generated as fb;
pub use message::{
    Ack, Apply, ApplyOk, Delivery, EncodeError, Encoder, ErrorReply, Fetch, FetchOk, Handshake,
    HandshakeOk, LeaderHint, METADATA_NODES_MAX, Message, Metadata, MetadataOk, Nack, NodeAdd,
    NodeInfo, PartitionInfo, PartitionMove, PipelineInfo, PipelineRetry, PipelineSubscribe,
    Publish, PublishOk, PublishResult, Rebalance, Record, StageAck, StageAcks, StageDelivery,
    StageInput, StageNack, StartPoint, StatusOk, StreamInfo, Subscribe, SubscribeOk, TokenCreate,
    TokenInfo, TokenListOk, TokenRevoke, TokenScope, encode,
};
pub use placement::{PLACEMENT_NAME, fnv1a64, shard_of, shard_port};

/// The largest frame, length prefix excluded, that either side accepts.
pub const FRAME_BYTES_MAX: usize = 16 << 20;

/// The protocol version this build speaks, sent in `Handshake` and
/// `HandshakeOk`.
pub const PROTOCOL_VERSION: u16 = 1;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::tests::{sample_event, sample_messages};
    use std::panic::{AssertUnwindSafe, catch_unwind};

    #[test]
    fn generated_code_matches_schema() {
        let schema = include_bytes!("../schema/hadron.fbs");
        let hash = fnv1a64(schema);
        assert_eq!(
            hash,
            generated::SCHEMA_FNV1A64,
            "wire/schema/hadron.fbs changed since the code was generated \
             (fnv1a64 {hash:#018x}, recorded {:#018x}): run wire/regen.sh",
            generated::SCHEMA_FNV1A64
        );
    }

    /// splitmix64: a tiny, well-mixed PRNG so the random tests need no
    /// dependency and replay exactly from a printed seed.
    pub(crate) struct Rng(pub(crate) u64);

    impl Rng {
        pub(crate) fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n.max(1) as u64) as usize
        }

        pub(crate) fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next_u64() as u8).collect()
        }

        pub(crate) fn bytes_upto(&mut self, max: usize) -> Vec<u8> {
            let len = self.below(max);
            self.bytes(len)
        }

        pub(crate) fn string_upto(&mut self, max: usize) -> String {
            let len = self.below(max);
            self.string(len)
        }

        pub(crate) fn string(&mut self, len: usize) -> String {
            const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789.-_/ ";
            let mut s: String = (0..len)
                .map(|_| char::from(ALPHABET[self.below(ALPHABET.len())]))
                .collect();
            if self.below(8) == 0 {
                s.push('é'); // some multi-byte UTF-8
            }
            s
        }
    }

    /// Random strings and byte strings for one case; messages borrow them.
    struct Pool {
        strings: Vec<String>,
        blobs: Vec<Vec<u8>>,
    }

    impl Pool {
        fn new(rng: &mut Rng) -> Pool {
            let strings = (0..6).map(|_| rng.string_upto(24)).collect();
            let mut blobs: Vec<Vec<u8>> = Vec::new();
            for _ in 0..6 {
                let blob = if rng.below(2) == 0 {
                    let event = Event {
                        id: rng.string(8),
                        source: rng.string(5),
                        ty: rng.string(12),
                        subject: (rng.below(2) == 0).then(|| rng.string(4)),
                        time_ms: (rng.below(2) == 0).then(|| rng.next_u64() as i64),
                        attributes: (0..rng.below(3))
                            .map(|_| (rng.string(3), rng.string(3)))
                            .collect(),
                        data: rng.bytes_upto(40),
                        ..Event::default()
                    };
                    event.encode()
                } else {
                    rng.bytes_upto(32)
                };
                blobs.push(blob);
            }
            Pool { strings, blobs }
        }

        fn s(&self, rng: &mut Rng) -> &str {
            &self.strings[rng.below(self.strings.len())]
        }

        fn b(&self, rng: &mut Rng) -> &[u8] {
            &self.blobs[rng.below(self.blobs.len())]
        }
    }

    fn random_message<'a>(rng: &mut Rng, pool: &'a Pool) -> Message<'a> {
        let n = rng.below(4);
        match rng.below(33) {
            0 => Message::Handshake(Handshake {
                version: rng.next_u64() as u16,
                token: pool.s(rng),
                client_name: pool.s(rng),
            }),
            1 => {
                let shards = 1 + rng.below(8) as u16;
                let ports = if rng.below(2) == 0 {
                    Vec::new()
                } else {
                    (0..shards).map(|i| 7001 + i).collect()
                };
                Message::HandshakeOk(HandshakeOk {
                    version: 1,
                    shards,
                    shard_ports: ports,
                    placement: pool.s(rng),
                })
            }
            2 => Message::Publish(Publish {
                stream: pool.s(rng),
                partition: rng.next_u64() as u32,
                events: (0..n).map(|_| pool.b(rng)).collect(),
            }),
            3 => Message::PublishOk(PublishOk {
                partition: rng.next_u64() as u32,
                first_offset: rng.next_u64(),
                last_offset: rng.next_u64(),
                results: (0..n)
                    .map(|_| PublishResult {
                        offset: rng.next_u64(),
                        duplicate: rng.below(2) == 0,
                    })
                    .collect(),
            }),
            4 => Message::Fetch(Fetch {
                stream: pool.s(rng),
                partition: rng.next_u64() as u32,
                offset: rng.next_u64(),
                max_bytes: rng.next_u64() as u32,
            }),
            5 => Message::FetchOk(FetchOk {
                partition: rng.next_u64() as u32,
                next_offset: rng.next_u64(),
                records: (0..n)
                    .map(|_| Record {
                        offset: rng.next_u64(),
                        event: pool.b(rng),
                    })
                    .collect(),
            }),
            6 => Message::Subscribe(Subscribe {
                stream: pool.s(rng),
                group: pool.s(rng),
                durable: rng.below(2) == 0,
                start: match rng.below(3) {
                    0 => StartPoint::Beginning,
                    1 => StartPoint::Latest,
                    _ => StartPoint::Offset(rng.next_u64()),
                },
                max_in_flight: rng.next_u64() as u32,
            }),
            7 => Message::SubscribeOk(SubscribeOk {
                subscription_id: rng.next_u64(),
                partitions: (0..n).map(|_| rng.next_u64() as u32).collect(),
            }),
            8 => Message::Delivery(Delivery {
                subscription_id: rng.next_u64(),
                delivery_id: rng.next_u64(),
                stream: pool.s(rng),
                partition: rng.next_u64() as u32,
                offset: rng.next_u64(),
                attempt: rng.next_u64() as u32,
                event: pool.b(rng),
            }),
            9 => Message::Ack(Ack {
                delivery_ids: (0..n).map(|_| rng.next_u64()).collect(),
            }),
            10 => Message::Nack(Nack {
                delivery_id: rng.next_u64(),
                message: pool.s(rng),
            }),
            11 => Message::AckOk,
            12 => Message::Apply(Apply {
                yaml: pool.s(rng),
                force: rng.below(2) == 0,
            }),
            13 => Message::ApplyOk(ApplyOk {
                summary: (0..n).map(|_| pool.s(rng)).collect(),
            }),
            14 => Message::Status,
            15 => Message::StatusOk(StatusOk { json: pool.s(rng) }),
            16 => Message::Error(ErrorReply {
                code: ErrorCode::from_u16(rng.next_u64() as u16),
                message: pool.s(rng),
                leader: (rng.below(2) == 0).then(|| LeaderHint {
                    node_id: rng.next_u64(),
                    address: pool.s(rng),
                    shard_port: rng.next_u64() as u16,
                    term: rng.next_u64(),
                }),
            }),
            17 => Message::PipelineSubscribe(PipelineSubscribe {
                pipeline: pool.s(rng),
                stage: pool.s(rng),
                max_in_flight: rng.next_u64() as u32,
            }),
            18 => Message::StageDelivery(StageDelivery {
                delivery_id: rng.next_u64(),
                pipeline: pool.s(rng),
                stage: pool.s(rng),
                partition: rng.next_u64() as u32,
                offset: rng.next_u64(),
                attempt: rng.next_u64() as u32,
                root: pool.b(rng),
                inputs: (0..n)
                    .map(|_| StageInput {
                        stage: pool.s(rng),
                        event: pool.b(rng),
                    })
                    .collect(),
            }),
            19 => Message::StageAck(StageAck {
                delivery_id: rng.next_u64(),
                output: pool.b(rng),
            }),
            20 => Message::StageNack(StageNack {
                delivery_id: rng.next_u64(),
                message: pool.s(rng),
            }),
            21 => Message::PipelineRetry(PipelineRetry {
                pipeline: pool.s(rng),
                execution: (rng.below(2) == 0).then(|| (rng.next_u64() as u32, rng.next_u64())),
            }),
            22 => Message::StageAcks(StageAcks {
                acks: (0..n)
                    .map(|_| StageAck {
                        delivery_id: rng.next_u64(),
                        output: pool.b(rng),
                    })
                    .collect(),
            }),
            23 => Message::Metadata(Metadata {
                streams: (0..n).map(|_| pool.s(rng)).collect(),
            }),
            25 => Message::TokenCreate(TokenCreate {
                name: pool.s(rng),
                secret_sha256: pool.b(rng),
                scope: TokenScope {
                    all: rng.below(2) == 0,
                    admin: rng.below(2) == 0,
                    publish: (0..n).map(|_| pool.s(rng)).collect(),
                    subscribe: (0..rng.below(3)).map(|_| pool.s(rng)).collect(),
                },
            }),
            26 => Message::TokenList,
            27 => Message::TokenListOk(TokenListOk {
                tokens: (0..n)
                    .map(|_| TokenInfo {
                        name: pool.s(rng),
                        scope: TokenScope {
                            all: rng.below(2) == 0,
                            admin: rng.below(2) == 0,
                            publish: (0..rng.below(3)).map(|_| pool.s(rng)).collect(),
                            subscribe: (0..rng.below(3)).map(|_| pool.s(rng)).collect(),
                        },
                    })
                    .collect(),
            }),
            28 => Message::TokenRevoke(TokenRevoke {
                name: pool.s(rng),
                change_id: rng.next_u64(),
            }),
            30 => Message::NodeAdd(NodeAdd {
                id: rng.below(8) as u64,
                address: pool.s(rng),
                peer_address: pool.s(rng),
            }),
            31 => Message::NodeRemove(rng.below(8) as u64),
            32 => Message::Rebalance(Rebalance {
                drain: (0..n).map(|_| rng.below(8) as u64).collect(),
                moves_max: rng.next_u64() as u32,
                dry_run: rng.below(2) == 0,
                change_id: rng.next_u64(),
            }),
            29 => Message::PartitionMove(PartitionMove {
                stream: pool.s(rng),
                partition: rng.below(8) as u32,
                voters: (0..n).map(|_| rng.below(8) as u64).collect(),
            }),
            _ => {
                // Valid as `decode` checks it: owners below `shards`,
                // partitions listed in order.
                let shards = 1 + rng.below(8) as u16;
                let ports = if rng.below(2) == 0 {
                    Vec::new()
                } else {
                    (0..shards).map(|i| 7001 + i).collect()
                };
                Message::MetadataOk(MetadataOk {
                    shards,
                    shard_ports: ports,
                    placement: pool.s(rng),
                    streams: (0..n)
                        .map(|_| StreamInfo {
                            name: pool.s(rng),
                            partitions: (0..rng.below(5) as u32)
                                .map(|partition| PartitionInfo {
                                    partition,
                                    shard: rng.below(usize::from(shards)) as u16,
                                    leader: (rng.below(2) == 0).then(|| LeaderHint {
                                        node_id: rng.next_u64(),
                                        address: pool.s(rng),
                                        shard_port: rng.next_u64() as u16,
                                        term: rng.next_u64(),
                                    }),
                                })
                                .collect(),
                        })
                        .collect(),
                    pipelines: (0..rng.below(3))
                        .map(|_| PipelineInfo {
                            name: pool.s(rng),
                            source_stream: pool.s(rng),
                            stages: (0..rng.below(4)).map(|_| pool.s(rng)).collect(),
                        })
                        .collect(),
                    nodes: (0..rng.below(4))
                        .map(|_| NodeInfo {
                            node_id: rng.next_u64(),
                            address: pool.s(rng),
                        })
                        .collect(),
                })
            }
        }
    }

    /// What a receiver does with untrusted bytes: check, decode, and decode
    /// every event the message carries. Must never panic.
    fn receive(buf: &[u8], limits: &Limits) {
        if let Ok(Some(total)) = check(buf, limits)
            && let Ok(frame) = decode(&buf[LENGTH_PREFIX_BYTES..total], limits)
        {
            for event in crate::fuzz_checks::carried_events(&frame.message) {
                let _ = decode_event(event, limits);
            }
            // Whatever decoded must re-encode and decode to itself.
            let again = encode(frame.request_id, &frame.message).unwrap();
            let back = decode(&again[LENGTH_PREFIX_BYTES..], limits).unwrap();
            assert_eq!(back, frame);
        }
        // Decoding the raw bytes as a body must not panic either.
        let _ = decode(buf, limits);
        let _ = decode_event(buf, limits);
    }

    fn seed() -> u64 {
        match std::env::var("HADRON_WIRE_SEED") {
            Ok(s) => s
                .parse()
                .unwrap_or_else(|_| panic!("HADRON_WIRE_SEED={s} is not a u64")),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        }
    }

    /// Runs `case` for `cases` seeds derived from one base seed, reporting the
    /// failing case's seed so it replays with HADRON_WIRE_SEED.
    pub(crate) fn run_cases(name: &str, cases: u64, mut case: impl FnMut(&mut Rng)) {
        let base = seed();
        println!("{name}: base seed {base} (replay with HADRON_WIRE_SEED={base})");
        for i in 0..cases {
            let case_seed = base.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let result = catch_unwind(AssertUnwindSafe(|| case(&mut Rng(case_seed))));
            if let Err(panic) = result {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("?");
                panic!("{name}: case {i} failed (HADRON_WIRE_SEED={base}): {what}");
            }
        }
    }

    #[test]
    fn random_messages_round_trip() {
        run_cases("random_messages_round_trip", 3000, |rng| {
            let pool = Pool::new(rng);
            let message = random_message(rng, &pool);
            let request_id = rng.next_u64();
            let frame = encode(request_id, &message).unwrap();
            assert_eq!(check(&frame, &Limits::DEFAULT), Ok(Some(frame.len())));
            let decoded = decode(&frame[LENGTH_PREFIX_BYTES..], &Limits::DEFAULT).unwrap();
            assert_eq!(decoded.request_id, request_id);
            assert_eq!(decoded.message, message);
            for event in crate::fuzz_checks::carried_events(&decoded.message) {
                // Events that were encoded as events decode; random blobs may not.
                if let Some(blob) = pool.blobs.iter().find(|b| b.as_slice() == event)
                    && let Ok(e) = decode_event(blob, &Limits::DEFAULT)
                {
                    assert_eq!(encode_event(&e), *blob, "event bytes are canonical");
                }
            }
        });
    }

    #[test]
    fn random_bytes_never_panic() {
        let limits = Limits {
            frame_bytes_max: 4096,
            ..Limits::DEFAULT
        };
        run_cases("random_bytes_never_panic", 5000, |rng| {
            let len = rng.below(300);
            let mut buf = rng.bytes(len);
            // Half the time, give it a plausible length prefix.
            if buf.len() >= 4 && rng.below(2) == 0 {
                let n = (buf.len() - 4) as u32;
                buf[..4].copy_from_slice(&n.to_le_bytes());
            }
            receive(&buf, &limits);
        });
    }

    #[test]
    fn mutated_frames_never_panic() {
        let event = sample_event();
        let samples = sample_messages(&event);
        let limits = Limits::DEFAULT;
        run_cases("mutated_frames_never_panic", 20_000, |rng| {
            let pool = Pool::new(rng);
            let message = if rng.below(2) == 0 {
                samples[rng.below(samples.len())].clone()
            } else {
                random_message(rng, &pool)
            };
            let mut frame = encode(rng.next_u64(), &message).unwrap();
            match rng.below(4) {
                // Flip a few bytes of the body (keeping the prefix honest).
                0 | 1 => {
                    for _ in 0..1 + rng.below(4) {
                        let at = 4 + rng.below(frame.len() - 4);
                        frame[at] = rng.next_u64() as u8;
                    }
                }
                // Set one byte to a boundary value.
                2 => {
                    let at = 4 + rng.below(frame.len() - 4);
                    frame[at] = [0x00, 0x01, 0x7f, 0x80, 0xff][rng.below(5)];
                }
                // Truncate or extend, fixing the prefix to match.
                _ => {
                    let len = 4 + rng.below(frame.len() + 16);
                    frame.resize(len.max(5), 0xaa);
                    let n = (frame.len() - 4) as u32;
                    frame[..4].copy_from_slice(&n.to_le_bytes());
                }
            }
            receive(&frame, &limits);
        });
    }
}
