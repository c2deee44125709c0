//! The events both encode_event benchmarks encode, and the builder-based
//! encoder they are measured against. Included by each benchmark with
//! `mod encoders;`.

use flatbuffers::{FlatBufferBuilder, WIPOffset};
use hadron_wire::{EventEncoder, EventRef, Limits, SPECVERSION, decode_event, fb};

/// An event to encode: the event itself, and the attributes passed after
/// it, as the client passes its owned attributes.
pub struct Case {
    pub name: &'static str,
    pub event: EventRef<'static>,
    pub more_attributes: Vec<(&'static str, &'static str)>,
}

const fn letters<const N: usize>() -> [u8; N] {
    let mut bytes = [0; N];
    let mut i = 0;
    while i < N {
        bytes[i] = b'a' + (i % 26) as u8;
        i += 1;
    }
    bytes
}

static DATA_100: [u8; 100] = letters();
static DATA_1024: [u8; 1024] = letters();

/// The events measured: loadgen's shape (see `batch_events` in
/// `loadgen/src/target_hadron.rs`: id, source, type, subject and data; the
/// client fills in specversion) with 100 and 1024 data bytes (loadgen's
/// `--size`), and a smaller one with every optional field and four
/// attributes.
pub fn cases() -> Vec<Case> {
    let loadgen = |name, data: &'static [u8]| Case {
        name,
        event: EventRef {
            id: "lg18a2c4-100007-42",
            source: "loadgen-0",
            specversion: SPECVERSION,
            ty: "loadgen.event",
            subject: Some("lg-7"),
            data,
            ..EventRef::default()
        },
        more_attributes: Vec::new(),
    };
    vec![
        loadgen("loadgen_data_100", &DATA_100),
        loadgen("loadgen_data_1024", &DATA_1024),
        Case {
            name: "attributes_4",
            event: EventRef {
                id: "evt-7",
                source: "example-cloud-app",
                specversion: SPECVERSION,
                ty: "service.created",
                subject: Some("svc-42"),
                time_ms: Some(1_700_000_000_000),
                datacontenttype: Some("application/json"),
                data: b"{\"plan\":\"small\",\"seats\":12}",
                ..EventRef::default()
            },
            more_attributes: vec![
                ("tenant", "acme"),
                ("region", "eu-west-1"),
                (
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ),
                ("priority", "high"),
            ],
        },
    ]
}

/// What `EventEncoder` was before the hand-written writer: a builder and
/// its scratch vector reused across events, finished, then copied out.
/// (The library keeps the same code only as a test reference.)
pub struct BuilderEncoder {
    fbb: FlatBufferBuilder<'static>,
    offsets: Vec<WIPOffset<fb::Attribute<'static>>>,
}

impl BuilderEncoder {
    pub fn new() -> BuilderEncoder {
        BuilderEncoder {
            fbb: FlatBufferBuilder::with_capacity(1024),
            offsets: Vec::new(),
        }
    }

    pub fn encode_into<'m>(
        &mut self,
        event: &EventRef<'m>,
        more_attributes: impl IntoIterator<Item = (&'m str, &'m str)>,
        out: &mut Vec<u8>,
    ) -> usize {
        let fbb = &mut self.fbb;
        fbb.reset();
        self.offsets.clear();
        let specversion = if event.specversion.is_empty() {
            SPECVERSION
        } else {
            event.specversion
        };
        for (key, value) in event.attributes.iter().copied().chain(more_attributes) {
            let key = fbb.create_string(key);
            let value = fbb.create_string(value);
            let attribute = fb::Attribute::create(
                fbb,
                &fb::AttributeArgs {
                    key: Some(key),
                    value: Some(value),
                },
            );
            self.offsets.push(attribute);
        }
        let attributes = (!self.offsets.is_empty()).then(|| fbb.create_vector(&self.offsets));
        let args = fb::EventArgs {
            id: Some(fbb.create_string(event.id)),
            source: Some(fbb.create_string(event.source)),
            specversion: Some(fbb.create_string(specversion)),
            type_: Some(fbb.create_string(event.ty)),
            subject: event.subject.map(|s| fbb.create_string(s)),
            time_ms: event.time_ms,
            datacontenttype: event.datacontenttype.map(|s| fbb.create_string(s)),
            attributes,
            data: (!event.data.is_empty()).then(|| fbb.create_vector(event.data)),
        };
        let root = fb::Event::create(fbb, &args);
        fbb.finish(root, None);
        let bytes = fbb.finished_data();
        out.extend_from_slice(bytes);
        bytes.len()
    }
}

/// Encodes `case` both ways and checks that the two encodings read the
/// same, or the comparison would be meaningless. Returns the writer's
/// length.
pub fn check(case: &Case) -> usize {
    let more = || case.more_attributes.iter().copied();
    let mut built = Vec::new();
    BuilderEncoder::new().encode_into(&case.event, more(), &mut built);
    let mut written = Vec::new();
    EventEncoder::new().encode_into(&case.event, more(), &mut written);
    let built = decode_event(&built, &Limits::DEFAULT);
    let decoded = decode_event(&written, &Limits::DEFAULT);
    assert!(decoded.is_ok(), "{}: {decoded:?}", case.name);
    assert_eq!(decoded, built, "{}", case.name);
    written.len()
}
