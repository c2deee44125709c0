//! Writes seed inputs for the fuzz targets in `wire/fuzz`: a valid frame of
//! every message type (and one file of several frames back to back, as a
//! TCP stream delivers them) for `decode_frame`, and valid `Event` buffers
//! with and without their optional fields, as `encode_event` and as
//! flatbuffers' builder lay them out, for `verify_event`. Fuzzing from
//! real structure reaches the deep paths of the verifiers far sooner than
//! from random bytes.
//!
//!   cargo run -p hadron-wire --example fuzz_seeds -- <dir>
//!
//! writes `<dir>/decode_frame/*` and `<dir>/verify_event/*`; `wire/fuzz`'s
//! Cargo.toml says how the checked-in corpus is grown and minimised from
//! them. Every seed is checked to be valid and to pass its target's check
//! before it is written.

use std::path::{Path, PathBuf};
use std::{env, fs, io};

use flatbuffers::FlatBufferBuilder;
use hadron_wire::{
    Ack, Apply, ApplyOk, Delivery, ErrorCode, ErrorReply, EventRef, Fetch, FetchOk, Handshake,
    HandshakeOk, LENGTH_PREFIX_BYTES, Limits, Message, Nack, PLACEMENT_NAME, PROTOCOL_VERSION,
    PipelineRetry, PipelineSubscribe, Publish, PublishOk, PublishResult, Record, StageAck,
    StageAcks, StageDelivery, StageInput, StageNack, StartPoint, StatusOk, Subscribe, SubscribeOk,
    decode, decode_event, encode, encode_event, fb, fuzz_checks,
};

fn main() -> Result<(), String> {
    let dir = match env::args_os().nth(1) {
        Some(dir) => PathBuf::from(dir),
        None => return Err("usage: fuzz_seeds <corpus dir>".into()),
    };
    let events = events();
    let mut frames: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, message) in messages(&events[0].1, &events[1].1).iter().enumerate() {
        let frame = encode(1 + i as u64, message)
            .map_err(|e| format!("cannot encode {}: {e}", message.name()))?;
        decode(&frame[LENGTH_PREFIX_BYTES..], &Limits::DEFAULT)
            .map_err(|e| format!("{} does not decode: {e}", message.name()))?;
        frames.push((format!("{i:02}-{}", message.name()), frame));
    }
    let stream: Vec<u8> = frames.iter().flat_map(|(_, f)| f.iter().copied()).collect();
    frames.push(("stream-of-every-message".into(), stream));

    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, event) in &events {
        decode_event(event, &Limits::DEFAULT)
            .map_err(|e| format!("{name} does not decode: {e}"))?;
        // The first byte picks verify_event's limits: 0xff is the roomiest
        // (1 MiB, depth 3, 1024 tables), 0x00 the tightest.
        for knob in [0xff_u8, 0x00] {
            let mut seed = vec![knob];
            seed.extend_from_slice(event);
            seeds.push((format!("{name}-knob{knob:02x}"), seed));
        }
    }

    let written = write(
        &dir.join("decode_frame"),
        &frames,
        fuzz_checks::decode_frame,
    )
    .and_then(|a| Ok(a + write(&dir.join("verify_event"), &seeds, fuzz_checks::verify_event)?))
    .map_err(|e| format!("cannot write seeds under {}: {e}", dir.display()))?;
    println!("{written} seeds written under {}", dir.display());
    Ok(())
}

/// Checks each seed with `check` (which panics on a broken property) and
/// writes it as `<dir>/<name>`.
fn write(dir: &Path, seeds: &[(String, Vec<u8>)], check: fn(&[u8])) -> io::Result<usize> {
    fs::create_dir_all(dir)?;
    for (name, bytes) in seeds {
        check(bytes);
        fs::write(dir.join(name), bytes)?;
    }
    Ok(seeds.len())
}

/// Valid `Event` buffers, named. The first is the fullest and the second
/// the smallest; frames carry those two.
fn events() -> Vec<(String, Vec<u8>)> {
    let full = EventRef {
        id: "evt-1",
        source: "example-cloud-app",
        specversion: "1.0",
        ty: "service.created",
        subject: Some("svc-42"),
        time_ms: Some(1_700_000_000_000),
        datacontenttype: Some("application/json"),
        attributes: vec![("tenant", "acme"), ("region", "eu-west-1"), ("é", "")],
        data: b"{\"name\":\"db\"}",
    };
    let minimal = EventRef {
        id: "1",
        source: "s",
        specversion: "1.0",
        ty: "t",
        ..EventRef::default()
    };
    let subject_only = EventRef {
        subject: Some("svc"),
        time_ms: Some(i64::MIN),
        ..minimal.clone()
    };
    let data_only = EventRef {
        data: &[0, 1, 2, 0xff],
        ..minimal.clone()
    };
    vec![
        ("written-full".into(), encode_event(&full)),
        ("written-minimal".into(), encode_event(&minimal)),
        ("written-subject-time".into(), encode_event(&subject_only)),
        ("written-data".into(), encode_event(&data_only)),
        ("builder-full".into(), built(&full)),
        ("builder-minimal".into(), built(&minimal)),
        ("builder-no-specversion".into(), built_without_specversion()),
    ]
}

/// `event` as flatbuffers' builder lays it out (fields in another order,
/// vtables elsewhere), so the seeds cover both layouts.
fn built(event: &EventRef<'_>) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::new();
    let attributes: Vec<_> = event
        .attributes
        .iter()
        .map(|&(key, value)| {
            let key = fbb.create_string(key);
            let value = fbb.create_string(value);
            fb::Attribute::create(
                &mut fbb,
                &fb::AttributeArgs {
                    key: Some(key),
                    value: Some(value),
                },
            )
        })
        .collect();
    let attributes = (!attributes.is_empty()).then(|| fbb.create_vector(&attributes));
    let args = fb::EventArgs {
        id: Some(fbb.create_string(event.id)),
        source: Some(fbb.create_string(event.source)),
        specversion: Some(fbb.create_string(event.specversion)),
        type_: Some(fbb.create_string(event.ty)),
        subject: event.subject.map(|s| fbb.create_string(s)),
        time_ms: event.time_ms,
        datacontenttype: event.datacontenttype.map(|s| fbb.create_string(s)),
        attributes,
        data: (!event.data.is_empty()).then(|| fbb.create_vector(event.data)),
    };
    let root = fb::Event::create(&mut fbb, &args);
    fbb.finish(root, None);
    fbb.finished_data().to_vec()
}

/// An event without the optional `specversion`, one string shared by three
/// fields and an empty attribute vector: shapes only the builder writes.
fn built_without_specversion() -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::new();
    let id = fbb.create_string("shared");
    let empty: &[flatbuffers::WIPOffset<fb::Attribute<'_>>] = &[];
    let attributes = fbb.create_vector(empty);
    let root = fb::Event::create(
        &mut fbb,
        &fb::EventArgs {
            id: Some(id),
            source: Some(id),
            type_: Some(id),
            attributes: Some(attributes),
            ..fb::EventArgs::default()
        },
    );
    fbb.finish_minimal(root);
    fbb.finished_data().to_vec()
}

/// One message of every type, with fields set, carrying `full` and
/// `minimal` where a message carries events; then the bodiless and
/// all-default ones.
fn messages<'a>(full: &'a [u8], minimal: &'a [u8]) -> Vec<Message<'a>> {
    vec![
        Message::Handshake(Handshake {
            version: PROTOCOL_VERSION,
            token: "secret",
            client_name: "example-cloud-app",
        }),
        Message::HandshakeOk(HandshakeOk {
            version: PROTOCOL_VERSION,
            shards: 3,
            shard_ports: vec![7001, 7002, 7003],
            placement: PLACEMENT_NAME,
        }),
        Message::Publish(Publish {
            stream: "events",
            partition: 7,
            events: vec![full, minimal],
        }),
        Message::PublishOk(PublishOk {
            partition: 7,
            first_offset: 100,
            last_offset: 101,
            results: vec![
                PublishResult {
                    offset: 100,
                    duplicate: false,
                },
                PublishResult {
                    offset: 42,
                    duplicate: true,
                },
            ],
        }),
        Message::Fetch(Fetch {
            stream: "events",
            partition: 2,
            offset: 10,
            max_bytes: 1 << 20,
        }),
        Message::FetchOk(FetchOk {
            partition: 2,
            next_offset: 12,
            records: vec![
                Record {
                    offset: 10,
                    event: full,
                },
                Record {
                    offset: 11,
                    event: minimal,
                },
            ],
        }),
        Message::Subscribe(Subscribe {
            stream: "events",
            group: "billing",
            durable: true,
            start: StartPoint::Offset(55),
            max_in_flight: 64,
        }),
        Message::Subscribe(Subscribe {
            stream: "events",
            group: "audit",
            durable: false,
            start: StartPoint::Latest,
            max_in_flight: 1,
        }),
        Message::SubscribeOk(SubscribeOk {
            subscription_id: 9,
            partitions: vec![0, 3, 5],
        }),
        Message::Delivery(Delivery {
            subscription_id: 9,
            delivery_id: 1234,
            stream: "events",
            partition: 3,
            offset: 77,
            attempt: 2,
            event: full,
        }),
        Message::Ack(Ack {
            delivery_ids: vec![1, 2, u64::MAX],
        }),
        Message::Nack(Nack {
            delivery_id: 1234,
            message: "database unavailable",
        }),
        Message::AckOk,
        Message::Apply(Apply {
            yaml: "kind: Stream\nmetadata: { name: events }\n",
            force: true,
        }),
        Message::ApplyOk(ApplyOk {
            summary: vec!["stream/events unchanged", "pipeline/p created"],
        }),
        Message::Status,
        Message::StatusOk(StatusOk {
            json: "{\"shards\":3}",
        }),
        Message::Error(ErrorReply {
            code: ErrorCode::UnknownStream,
            message: "no stream named \"evnts\"",
            leader: None,
        }),
        Message::PipelineSubscribe(PipelineSubscribe {
            pipeline: "service-creation",
            stage: "deploy-service",
            max_in_flight: 8,
        }),
        Message::StageDelivery(StageDelivery {
            delivery_id: 5,
            pipeline: "service-creation",
            stage: "sync",
            partition: 1,
            offset: 900,
            attempt: 1,
            root: full,
            inputs: vec![
                StageInput {
                    stage: "deploy-service",
                    event: minimal,
                },
                StageInput {
                    stage: "setup-billing",
                    event: full,
                },
            ],
        }),
        Message::StageAck(StageAck {
            delivery_id: 5,
            output: minimal,
        }),
        Message::StageNack(StageNack {
            delivery_id: 5,
            message: "quota exceeded",
        }),
        Message::PipelineRetry(PipelineRetry {
            pipeline: "service-creation",
            execution: Some((3, 77)),
        }),
        Message::PipelineRetry(PipelineRetry {
            pipeline: "service-creation",
            execution: None,
        }),
        Message::StageAcks(StageAcks {
            acks: vec![
                StageAck {
                    delivery_id: 5,
                    output: full,
                },
                StageAck {
                    delivery_id: 6,
                    output: minimal,
                },
            ],
        }),
        Message::Metadata(hadron_wire::Metadata {
            streams: vec!["events", "orders"],
        }),
        Message::MetadataOk(hadron_wire::MetadataOk {
            shards: 2,
            shard_ports: vec![7001, 7002],
            placement: PLACEMENT_NAME,
            streams: vec![hadron_wire::StreamInfo {
                name: "events",
                partitions: vec![
                    hadron_wire::PartitionInfo {
                        partition: 0,
                        shard: 1,
                        leader: None,
                    },
                    hadron_wire::PartitionInfo {
                        partition: 1,
                        shard: 0,
                        leader: None,
                    },
                ],
            }],
            pipelines: vec![hadron_wire::PipelineInfo {
                name: "service-creation",
                source_stream: "events",
                stages: vec!["deploy-service", "setup-billing"],
            }],
            nodes: vec![
                hadron_wire::NodeInfo {
                    node_id: 1,
                    address: "10.0.0.1:7000",
                },
                hadron_wire::NodeInfo {
                    node_id: 2,
                    address: "10.0.0.2:7000",
                },
            ],
        }),
        Message::Publish(Publish::default()),
        Message::FetchOk(FetchOk::default()),
        Message::StageDelivery(StageDelivery::default()),
    ]
}
