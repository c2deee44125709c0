//! The events both verify_event benchmarks verify, and the verifier they
//! are measured against. Included by each benchmark with `mod events;`.

use hadron_wire::{DecodeError, EventRef, Limits, SPECVERSION, encode_event, fb};

/// The events measured: loadgen's shape (id, source, specversion, type,
/// subject, data; see `loadgen/src/target_hadron.rs`) with 100 and 1024
/// data bytes (loadgen's `--size`), and a smaller one with every optional
/// field and four attributes.
pub fn events() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("data_100", loadgen_event(100)),
        ("data_1024", loadgen_event(1024)),
        ("attributes_4", attribute_event()),
    ]
}

fn loadgen_event(data_bytes: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..data_bytes).map(|i| b'a' + (i % 26) as u8).collect();
    encode_event(&EventRef {
        id: "lg7f3a2c--100000-0",
        source: "loadgen-0",
        specversion: SPECVERSION,
        ty: "loadgen.publish",
        subject: Some("lg-100000"),
        data: &data,
        ..EventRef::default()
    })
}

fn attribute_event() -> Vec<u8> {
    encode_event(&EventRef {
        id: "evt-7",
        source: "example-cloud-app",
        specversion: SPECVERSION,
        ty: "service.created",
        subject: Some("svc-42"),
        time_ms: Some(1_700_000_000_000),
        datacontenttype: Some("application/json"),
        attributes: vec![
            ("tenant", "acme"),
            ("region", "eu-west-1"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("priority", "high"),
        ],
        data: b"{\"plan\":\"small\",\"seats\":12}",
    })
}

/// What `hadron_wire::verify_event` did before the specialised verifier:
/// the size check, then flatbuffers' generic verifier.
pub fn verify_event_generic<'a>(
    bytes: &'a [u8],
    limits: &Limits,
) -> Result<fb::Event<'a>, DecodeError> {
    if bytes.len() > limits.frame_bytes_max {
        return Err(DecodeError::TooLarge {
            have: bytes.len(),
            max: limits.frame_bytes_max,
        });
    }
    let options = limits.verifier_options();
    flatbuffers::root_with_opts::<fb::Event>(&options, bytes).map_err(DecodeError::Malformed)
}
