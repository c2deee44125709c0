//! The frame both decode_publish benchmarks decode, and the decoder they
//! are measured against. Included by each benchmark with `mod frames;`.

use hadron_wire::{
    DecodeError, Encoder, EventRef, Limits, Message, Publish, SPECVERSION, encode_event, fb,
};

/// Events per frame and data bytes per event: what the server was
/// profiled on (loadgen's `--size 100`, 64 events per Publish).
pub const EVENTS: usize = 64;
const DATA_BYTES: usize = 100;

/// The events of one frame, each as loadgen encodes it (about 240 bytes).
pub fn events() -> Vec<Vec<u8>> {
    (0..EVENTS)
        .map(|i| {
            let data: Vec<u8> = (0..DATA_BYTES)
                .map(|j| b'a' + ((i + j) % 26) as u8)
                .collect();
            encode_event(&EventRef {
                id: &format!("lg7f3a2c--100000-{i}"),
                source: "loadgen-0",
                specversion: SPECVERSION,
                ty: "loadgen.publish",
                subject: Some("lg-100000"),
                data: &data,
                ..EventRef::default()
            })
        })
        .collect()
}

/// A Publish frame of `events`, without its length prefix, as the
/// crate's encoder writes it.
pub fn frame(events: &[Vec<u8>]) -> Vec<u8> {
    let message = Message::Publish(Publish {
        stream: "loadgen",
        partition: 3,
        events: events.iter().map(Vec::as_slice).collect(),
    });
    let frame = Encoder::new(&Limits::DEFAULT)
        .encode(100_000, &message)
        .unwrap_or_default();
    frame.get(4..).unwrap_or_default().to_vec()
}

/// What `hadron_wire::decode` did with a Publish frame before the
/// specialised verifier: the size check, flatbuffers' generic verifier,
/// then the same reads `Message::from_verified` makes.
pub fn decode_generic<'a>(body: &'a [u8], limits: &Limits) -> Result<Publish<'a>, DecodeError> {
    if body.len() > limits.frame_bytes_max {
        return Err(DecodeError::TooLarge {
            have: body.len(),
            max: limits.frame_bytes_max,
        });
    }
    let options = limits.verifier_options();
    let frame =
        flatbuffers::root_with_opts::<fb::Frame>(&options, body).map_err(DecodeError::Malformed)?;
    let request_id = frame.request_id();
    let publish = frame
        .body_as_publish()
        .ok_or(DecodeError::MissingBody { request_id })?;
    Ok(Publish {
        stream: publish.stream(),
        partition: publish.partition(),
        events: publish
            .events()
            .map(|v| v.iter().map(|e| e.bytes().bytes()).collect())
            .unwrap_or_default(),
    })
}

/// `hadron_wire::decode`, reduced to the Publish it returns.
pub fn decode_specialised<'a>(body: &'a [u8], limits: &Limits) -> Result<Publish<'a>, DecodeError> {
    match hadron_wire::decode(body, limits)?.message {
        Message::Publish(publish) => Ok(publish),
        _ => Err(DecodeError::MissingBody { request_id: 0 }),
    }
}
