//! The event encoding: one CloudEvents-style event as its own finished
//! `Event` flatbuffer (root table `Event`, plain `finish()`, no prefix).
//!
//! Events travel inside frames as byte vectors holding such a buffer, so the
//! server can store exactly the bytes a publisher sent and hand the same
//! bytes to subscribers and stage handlers without re-encoding. The frame
//! verifier does not look inside those bytes; `decode_event` verifies them
//! with the same kind of limits as a frame before any field is read.
//!
//! Invariants: `encode_event` always writes `specversion`, so
//! `decode_event(encode_event(e)) == e` for every event; an absent
//! `specversion` in a foreign buffer reads as `SPECVERSION`. Every encoder
//! here (`encode_event`, `encode_event_with`, `EventEncoder`) writes the
//! same bytes for the same event.

use core::fmt;

use flatbuffers::{FlatBufferBuilder, WIPOffset};

use crate::frame::{DecodeError, Limits};
use crate::generated as fb;

mod verify;

/// The CloudEvents spec version written when none is given.
pub const SPECVERSION: &str = "1.0";

/// A decoded event borrowing from its buffer, or an event to encode.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventRef<'a> {
    /// Unique per `source`; `(source, id)` makes publishing idempotent.
    pub id: &'a str,
    /// Who produced the event (a URI-reference in CloudEvents).
    pub source: &'a str,
    /// CloudEvents spec version; `SPECVERSION` unless the publisher says
    /// otherwise.
    pub specversion: &'a str,
    /// The event type (`type` in the schema and in CloudEvents); pipelines
    /// match their triggers against it.
    pub ty: &'a str,
    pub subject: Option<&'a str>,
    /// Milliseconds since the Unix epoch.
    pub time_ms: Option<i64>,
    pub datacontenttype: Option<&'a str>,
    /// Extension attributes, in the order given.
    pub attributes: Vec<(&'a str, &'a str)>,
    pub data: &'a [u8],
}

/// An owned event; `as_event_ref` borrows it for encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    pub source: String,
    pub specversion: String,
    pub ty: String,
    pub subject: Option<String>,
    pub time_ms: Option<i64>,
    pub datacontenttype: Option<String>,
    pub attributes: Vec<(String, String)>,
    pub data: Vec<u8>,
}

impl Default for Event {
    fn default() -> Self {
        Event {
            id: String::new(),
            source: String::new(),
            specversion: SPECVERSION.to_owned(),
            ty: String::new(),
            subject: None,
            time_ms: None,
            datacontenttype: None,
            attributes: Vec::new(),
            data: Vec::new(),
        }
    }
}

impl Event {
    /// Borrows this event as an `EventRef`.
    pub fn as_event_ref(&self) -> EventRef<'_> {
        EventRef {
            id: &self.id,
            source: &self.source,
            specversion: &self.specversion,
            ty: &self.ty,
            subject: self.subject.as_deref(),
            time_ms: self.time_ms,
            datacontenttype: self.datacontenttype.as_deref(),
            attributes: self
                .attributes
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            data: &self.data,
        }
    }

    /// The event's wire encoding.
    pub fn encode(&self) -> Vec<u8> {
        encode_event(&self.as_event_ref())
    }
}

impl EventRef<'_> {
    /// Copies the event into an owned `Event`.
    pub fn to_event(&self) -> Event {
        Event {
            id: self.id.to_owned(),
            source: self.source.to_owned(),
            specversion: self.specversion.to_owned(),
            ty: self.ty.to_owned(),
            subject: self.subject.map(str::to_owned),
            time_ms: self.time_ms,
            datacontenttype: self.datacontenttype.map(str::to_owned),
            attributes: self
                .attributes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            data: self.data.to_vec(),
        }
    }
}

/// Encodes `event` as a finished `Event` flatbuffer.
pub fn encode_event(event: &EventRef<'_>) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::with_capacity(event_capacity_hint(event));
    encode_event_with(&mut fbb, event);
    fbb.finished_data().to_vec()
}

/// Encodes `event` into `fbb` (which is reset first) and leaves the finished
/// buffer in `fbb.finished_data()`: lets a publisher reuse one builder.
pub fn encode_event_with(fbb: &mut FlatBufferBuilder<'_>, event: &EventRef<'_>) {
    build_event(fbb, &mut Vec::new(), event, []);
}

/// The largest event after which an `EventEncoder` keeps its builder: past
/// it the builder is dropped, so one huge event does not pin its memory for
/// the encoder's lifetime. The builder grows by doubling, so a kept one
/// holds at most about twice this.
pub const EVENT_ENCODER_RETAIN_BYTES_MAX: usize = 1 << 20;

/// The builder capacity a new `EventEncoder` starts with: a typical event
/// (a few short strings and a small payload) fits without growing.
const EVENT_ENCODER_INITIAL_BYTES: usize = 1024;

const _: () = assert!(EVENT_ENCODER_INITIAL_BYTES <= EVENT_ENCODER_RETAIN_BYTES_MAX);

/// Encodes events one after another into caller-owned buffers, reusing one
/// builder and its scratch space, so that once warm, encoding an event
/// allocates nothing (unless `out` must grow).
pub struct EventEncoder {
    fbb: FlatBufferBuilder<'static>,
    /// The current event's `Attribute` tables, before they become a vector.
    attributes: Vec<WIPOffset<fb::Attribute<'static>>>,
}

impl fmt::Debug for EventEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventEncoder").finish_non_exhaustive()
    }
}

impl Default for EventEncoder {
    fn default() -> Self {
        EventEncoder::new()
    }
}

impl EventEncoder {
    /// An encoder with a small builder, which grows to the largest event
    /// it encodes (see `EVENT_ENCODER_RETAIN_BYTES_MAX`).
    pub fn new() -> EventEncoder {
        EventEncoder {
            fbb: FlatBufferBuilder::with_capacity(EVENT_ENCODER_INITIAL_BYTES),
            attributes: Vec::new(),
        }
    }

    /// Appends the encoding of `event` to `out` and returns its length. The
    /// encoded attributes are `event.attributes` followed by
    /// `more_attributes`, so a caller holding owned strings can pass them
    /// without first collecting borrowed pairs into a `Vec`.
    pub fn encode_into<'m>(
        &mut self,
        event: &EventRef<'_>,
        more_attributes: impl IntoIterator<Item = (&'m str, &'m str)>,
        out: &mut Vec<u8>,
    ) -> usize {
        build_event(&mut self.fbb, &mut self.attributes, event, more_attributes);
        let bytes = self.fbb.finished_data();
        let len = bytes.len();
        out.extend_from_slice(bytes);
        if len > EVENT_ENCODER_RETAIN_BYTES_MAX {
            *self = EventEncoder::new();
        }
        len
    }
}

/// Builds `event` (its attributes followed by `more_attributes`) in `fbb`,
/// which is reset first, and finishes it. `offsets` is scratch space.
fn build_event<'fbb, 'm>(
    fbb: &mut FlatBufferBuilder<'fbb>,
    offsets: &mut Vec<WIPOffset<fb::Attribute<'fbb>>>,
    event: &EventRef<'_>,
    more_attributes: impl IntoIterator<Item = (&'m str, &'m str)>,
) {
    fbb.reset();
    offsets.clear();
    let specversion = if event.specversion.is_empty() {
        SPECVERSION
    } else {
        event.specversion
    };
    for &(key, value) in &event.attributes {
        offsets.push(build_attribute(fbb, key, value));
    }
    for (key, value) in more_attributes {
        offsets.push(build_attribute(fbb, key, value));
    }
    let attributes = (!offsets.is_empty()).then(|| fbb.create_vector(offsets));
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
}

fn build_attribute<'fbb>(
    fbb: &mut FlatBufferBuilder<'fbb>,
    key: &str,
    value: &str,
) -> WIPOffset<fb::Attribute<'fbb>> {
    let key = fbb.create_string(key);
    let value = fbb.create_string(value);
    fb::Attribute::create(
        fbb,
        &fb::AttributeArgs {
            key: Some(key),
            value: Some(value),
        },
    )
}

fn event_capacity_hint(event: &EventRef<'_>) -> usize {
    let strings = event.id.len()
        + event.source.len()
        + event.ty.len()
        + event.subject.map_or(0, str::len)
        + event.datacontenttype.map_or(0, str::len)
        + event
            .attributes
            .iter()
            .map(|(k, v)| k.len() + v.len() + 32)
            .sum::<usize>();
    strings + event.data.len() + 128
}

/// Verifies `bytes` as an `Event` flatbuffer within `limits` and returns a
/// view of it. Absent `data` reads as empty, absent `specversion` as
/// `SPECVERSION`.
pub fn decode_event<'a>(bytes: &'a [u8], limits: &Limits) -> Result<EventRef<'a>, DecodeError> {
    let event = verify_event(bytes, limits)?;
    Ok(EventRef {
        id: event.id(),
        source: event.source(),
        specversion: event.specversion().unwrap_or(SPECVERSION),
        ty: event.type_(),
        subject: event.subject(),
        time_ms: event.time_ms(),
        datacontenttype: event.datacontenttype(),
        attributes: event
            .attributes()
            .map(|list| list.iter().map(|a| (a.key(), a.value())).collect())
            .unwrap_or_default(),
        data: event.data().map_or(&[][..], |d| d.bytes()),
    })
}

/// Verifies `bytes` as an `Event` flatbuffer and returns the generated
/// table, for zero-allocation access.
///
/// The check is `verify`'s specialised verifier, which accepts exactly what
/// flatbuffers' generic verifier accepts under `limits.verifier_options()`
/// (and nothing over `verify::EVENT_BYTES_MAX` bytes). A rejected buffer is
/// verified again by the generic verifier, only to report its error: that
/// error names the field and the vector element at fault, which the
/// specialised verifier's small error does not carry. Rejection is the rare
/// path, and costs at most one more generic verification.
pub fn verify_event<'a>(bytes: &'a [u8], limits: &Limits) -> Result<fb::Event<'a>, DecodeError> {
    let max = limits.frame_bytes_max.min(verify::EVENT_BYTES_MAX);
    if bytes.len() > max {
        return Err(DecodeError::TooLarge {
            have: bytes.len(),
            max,
        });
    }
    let options = limits.verifier_options();
    verify::event(bytes, &options).map_err(|reject| {
        DecodeError::Malformed(
            match flatbuffers::root_with_opts::<fb::Event>(&options, bytes) {
                Err(traced) => traced,
                // Unreachable while the two verifiers agree (the tests in
                // `verify` check that they do); the specialised verdict
                // stands either way.
                Ok(_) => reject.into(),
            },
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_event() -> Event {
        Event {
            id: "evt-7".into(),
            source: "example-cloud-app".into(),
            specversion: "1.0".into(),
            ty: "service.created".into(),
            subject: Some("svc-42".into()),
            time_ms: Some(-5),
            datacontenttype: Some("application/json".into()),
            attributes: vec![
                ("tenant".into(), "acme".into()),
                ("region".into(), "eu".into()),
            ],
            data: b"{\"plan\":\"small\"}".to_vec(),
        }
    }

    #[test]
    fn event_round_trips() {
        let event = full_event();
        let bytes = event.encode();
        let decoded = decode_event(&bytes, &Limits::DEFAULT).unwrap();
        assert_eq!(decoded.to_event(), event);
        assert_eq!(decoded, event.as_event_ref());
    }

    #[test]
    fn minimal_event_round_trips_with_defaults() {
        let event = Event {
            id: "1".into(),
            source: "s".into(),
            ty: "t".into(),
            ..Event::default()
        };
        let bytes = event.encode();
        let decoded = decode_event(&bytes, &Limits::DEFAULT).unwrap();
        assert_eq!(decoded.specversion, SPECVERSION);
        assert_eq!(decoded.subject, None);
        assert_eq!(decoded.time_ms, None);
        assert!(decoded.data.is_empty());
        assert_eq!(decoded.to_event(), event);
    }

    #[test]
    fn empty_specversion_is_written_as_default() {
        let event = EventRef {
            id: "1",
            source: "s",
            ty: "t",
            ..EventRef::default()
        };
        let bytes = encode_event(&event);
        assert_eq!(
            decode_event(&bytes, &Limits::DEFAULT).unwrap().specversion,
            SPECVERSION
        );
    }

    #[test]
    fn event_missing_required_field_is_rejected() {
        // The builder refuses to finish a table without its required
        // fields, so build an empty table (AckOk's layout) instead: read as
        // an Event, `id`, `source` and `type` are all missing.
        let mut fbb = FlatBufferBuilder::new();
        let root = fb::AckOk::create(&mut fbb, &fb::AckOkArgs {});
        fbb.finish_minimal(root);
        let err = decode_event(fbb.finished_data(), &Limits::DEFAULT).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed(_)), "{err}");
    }

    #[test]
    fn event_limits_apply() {
        let bytes = full_event().encode();
        let small = Limits {
            frame_bytes_max: bytes.len() - 1,
            ..Limits::DEFAULT
        };
        assert!(matches!(
            decode_event(&bytes, &small),
            Err(DecodeError::TooLarge { .. })
        ));
        // Event + 2 attributes = 3 tables.
        let few_tables = Limits {
            tables_max: 2,
            ..Limits::DEFAULT
        };
        assert!(matches!(
            decode_event(&bytes, &few_tables),
            Err(DecodeError::Malformed(
                flatbuffers::InvalidFlatbuffer::TooManyTables
            ))
        ));
    }

    #[test]
    fn event_encoder_writes_what_encode_event_writes() {
        let full = full_event();
        let minimal = Event {
            id: "1".into(),
            source: "s".into(),
            ty: "t".into(),
            ..Event::default()
        };
        let huge = Event {
            data: vec![7; EVENT_ENCODER_RETAIN_BYTES_MAX + 1],
            ..full_event()
        };
        let mut encoder = EventEncoder::new();
        let mut out = b"head".to_vec();
        let mut expected = out.clone();
        // Reused across events, across a huge one (which drops the
        // builder) and back.
        for event in [&full, &minimal, &huge, &full, &minimal] {
            let bytes = event.encode();
            let len = encoder.encode_into(&event.as_event_ref(), [], &mut out);
            assert_eq!(len, bytes.len());
            expected.extend_from_slice(&bytes);
            assert_eq!(out, expected);
        }
    }

    #[test]
    fn event_encoder_appends_more_attributes_after_the_events_own() {
        let event = full_event();
        let mut head = event.as_event_ref();
        let tail = head.attributes.split_off(1);
        let mut out = Vec::new();
        EventEncoder::new().encode_into(&head, tail.iter().copied(), &mut out);
        assert_eq!(out, event.encode());
        assert_eq!(
            decode_event(&out, &Limits::DEFAULT).unwrap().to_event(),
            event
        );
    }

    #[test]
    fn verify_event_errors_name_the_field() {
        let mut bytes = full_event().encode();
        let at = bytes
            .windows(b"example-cloud-app".len())
            .position(|w| w == b"example-cloud-app")
            .unwrap();
        bytes[at] = 0xff;
        let err = verify_event(&bytes, &Limits::DEFAULT).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::Malformed(flatbuffers::InvalidFlatbuffer::Utf8Error { .. })
            ),
            "{err}"
        );
        assert!(err.to_string().contains("`source`"), "{err}");
    }

    #[test]
    fn verify_event_works_with_unbounded_limits() {
        let bytes = full_event().encode();
        let huge = Limits {
            frame_bytes_max: usize::MAX,
            ..Limits::DEFAULT
        };
        assert_eq!(verify_event(&bytes, &huge).unwrap().id(), "evt-7");
        assert_eq!(
            verify_event(&bytes[..3], &huge).map(|_| ()),
            Err(DecodeError::Malformed(
                flatbuffers::InvalidFlatbuffer::RangeOutOfBounds {
                    range: 0..4,
                    error_trace: Default::default(),
                }
            ))
        );
    }

    #[test]
    fn garbage_is_not_an_event() {
        for bytes in [
            &b""[..],
            b"\x00",
            b"\xff\xff\xff\xff",
            b"hello, world, not a flatbuffer",
        ] {
            assert!(decode_event(bytes, &Limits::DEFAULT).is_err());
        }
    }
}
