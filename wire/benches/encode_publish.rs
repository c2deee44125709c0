//! Criterion micro-benchmark of `Encoder::encode_into` on a `Publish` frame
//! (written by the hand-written `write_publish`) against the
//! `FlatBufferBuilder` encoding it replaced, on the same frame in the same
//! process, so the result reads as a ratio. The frame is the load
//! generator's: 64 events of about 240 bytes each, appended to a reused
//! outgoing buffer as the client's outbox does.
//!
//!   cargo bench -p hadron-wire --bench encode_publish

use std::hint::black_box;

use bytes::BufMut;
use criterion::{Criterion, criterion_group, criterion_main};
use flatbuffers::FlatBufferBuilder;
use hadron_wire::{
    Encoder, EventRef, LENGTH_PREFIX_BYTES, Limits, Message, Publish, SPECVERSION, decode,
    encode_event, fb, split_frame,
};

const EVENTS: usize = 64;

/// What `Encoder` did for a `Publish` before the writer: build the frame in
/// a reused builder, then copy it, after its length prefix, into `out`.
struct BuilderEncoder {
    fbb: FlatBufferBuilder<'static>,
}

impl BuilderEncoder {
    fn encode_into(&mut self, request_id: u64, publish: &Publish<'_>, out: &mut Vec<u8>) -> usize {
        let fbb = &mut self.fbb;
        fbb.reset();
        let mut events = Vec::with_capacity(publish.events.len());
        for event in &publish.events {
            let bytes = fbb.create_vector(event);
            events.push(fb::EventBytes::create(
                fbb,
                &fb::EventBytesArgs { bytes: Some(bytes) },
            ));
        }
        let args = fb::PublishArgs {
            stream: Some(fbb.create_string(publish.stream)),
            partition: publish.partition,
            events: (!events.is_empty()).then(|| fbb.create_vector(&events)),
        };
        let body = fb::Publish::create(fbb, &args);
        let frame = fb::Frame::create(
            fbb,
            &fb::FrameArgs {
                request_id,
                body_type: fb::Body::Publish,
                body: Some(body.as_union_value()),
            },
        );
        fbb.finish(frame, None);
        let data = fbb.finished_data();
        out.put_u32_le(data.len() as u32);
        out.put_slice(data);
        LENGTH_PREFIX_BYTES + data.len()
    }
}

/// The load generator's events (see `batch_events` in
/// `loadgen/src/target_hadron.rs`), with data sized so each encodes to
/// about 240 bytes.
fn events() -> Vec<Vec<u8>> {
    let data = [b'x'; 98];
    (0..EVENTS)
        .map(|i| {
            let id = format!("lg18a2c4-100007-{i}");
            encode_event(&EventRef {
                id: &id,
                source: "loadgen-0",
                specversion: SPECVERSION,
                ty: "loadgen.event",
                subject: Some("lg-7"),
                data: &data,
                ..EventRef::default()
            })
        })
        .collect()
}

fn encode(c: &mut Criterion) {
    let events = events();
    let publish = Publish {
        stream: "events",
        partition: 3,
        events: events.iter().map(Vec::as_slice).collect(),
    };
    let message = Message::Publish(publish.clone());
    let mut builder = BuilderEncoder {
        fbb: FlatBufferBuilder::with_capacity(1024),
    };
    let mut writer = Encoder::default();

    // Both must write a frame that decodes to the message, or the
    // comparison would be meaningless.
    let mut built = Vec::new();
    builder.encode_into(42, &publish, &mut built);
    let mut written = Vec::new();
    let len = match writer.encode_into(42, &message, &mut written) {
        Ok(len) => len,
        Err(e) => panic!("the writer refused the frame: {e}"),
    };
    for frame in [&built, &written] {
        let decoded = match split_frame(frame, &Limits::DEFAULT) {
            Ok(Some((body, _))) => decode(body, &Limits::DEFAULT),
            other => panic!("not a whole frame: {other:?}"),
        };
        assert!(
            matches!(&decoded, Ok(d) if d.request_id == 42 && d.message == message),
            "{decoded:?}"
        );
    }
    let event_bytes = events.iter().map(Vec::len).sum::<usize>() / EVENTS;

    let mut out = Vec::with_capacity(2 * len);
    let mut group = c.benchmark_group(format!(
        "encode_publish/{EVENTS}_events_of_{event_bytes}B_{len}B"
    ));
    group.bench_function("builder", |b| {
        b.iter(|| {
            out.clear();
            builder.encode_into(black_box(42), black_box(&publish), &mut out)
        })
    });
    group.bench_function("writer", |b| {
        b.iter(|| {
            out.clear();
            writer.encode_into(black_box(42), black_box(&message), &mut out)
        })
    });
    group.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
