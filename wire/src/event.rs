//! The event encoding: one CloudEvents-style event as its own finished
//! `Event` flatbuffer (root table `Event`, plain `finish()`, no prefix).
//!
//! Events travel inside frames as byte vectors holding such a buffer, so the
//! server can store exactly the bytes a publisher sent and hand the same
//! bytes to subscribers and stage handlers without re-encoding. The frame
//! verifier does not look inside those bytes; `decode_event` verifies them
//! with the same kind of limits as a frame before any field is read.
//!
//! Encoding goes through one hand-written writer (`write`, whose module
//! header has the byte layout), not flatbuffers' builder: it appends the
//! event to the caller's buffer in one pass. Decoding goes through a
//! verifier written for this one table (`verify`). Any valid `Event` buffer
//! decodes, whoever wrote it.
//!
//! Invariants: `encode_event` always writes `specversion`, so
//! `decode_event(encode_event(e)) == e` for every event; an absent
//! `specversion` in a foreign buffer reads as `SPECVERSION`. Every encoder
//! here (`encode_event`, `encode_event_with`, `EventEncoder`) writes the
//! same bytes for the same event.

use crate::frame::{DecodeError, Limits};
use crate::generated as fb;

pub(crate) mod verify;
mod write;

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
    let mut out = Vec::new();
    write::event(&mut out, event, core::iter::empty());
    out
}

/// Encodes `event` into `out`, which is cleared first, and returns its
/// length: lets a publisher reuse one buffer.
pub fn encode_event_with(out: &mut Vec<u8>, event: &EventRef<'_>) -> usize {
    out.clear();
    write::event(out, event, core::iter::empty())
}

/// Encodes events one after another into caller-owned buffers. It keeps no
/// state (the writer needs no builder or scratch space), so encoding an
/// event allocates nothing unless `out` must grow; it remains a type so
/// that callers holding one need not change.
#[derive(Debug, Default)]
pub struct EventEncoder {
    _private: (),
}

impl EventEncoder {
    /// An encoder.
    pub const fn new() -> EventEncoder {
        EventEncoder { _private: () }
    }

    /// Appends the encoding of `event` to `out` and returns its length. The
    /// encoded attributes are `event.attributes` followed by
    /// `more_attributes`, so a caller holding owned strings can pass them
    /// without first collecting borrowed pairs into a `Vec`. The iterator
    /// is cloned and run twice (once to size the event, once to write it)
    /// and must yield the same attributes both times.
    pub fn encode_into<'m>(
        &mut self,
        event: &EventRef<'_>,
        more_attributes: impl IntoIterator<Item = (&'m str, &'m str), IntoIter: Clone>,
        out: &mut Vec<u8>,
    ) -> usize {
        write::event(out, event, more_attributes.into_iter())
    }
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

/// The builder-made encoding this module wrote before `write`: the
/// reference the tests hold the writer to. The two lay an event out
/// differently, so they are compared by what the bytes decode to.
#[cfg(test)]
pub(crate) mod reference {
    use flatbuffers::{FlatBufferBuilder, WIPOffset};

    use super::{EventRef, SPECVERSION};
    use crate::generated as fb;

    /// `event` (its attributes followed by `more_attributes`) as the builder
    /// writes it.
    pub(crate) fn encode<'m>(
        event: &EventRef<'_>,
        more_attributes: impl IntoIterator<Item = (&'m str, &'m str)>,
    ) -> Vec<u8> {
        let mut fbb = FlatBufferBuilder::new();
        build_event(&mut fbb, &mut Vec::new(), event, more_attributes);
        fbb.finished_data().to_vec()
    }

    /// Builds `event` (its attributes followed by `more_attributes`) in
    /// `fbb`, which is reset first, and finishes it. `offsets` is scratch
    /// space.
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
}

#[cfg(test)]
mod tests {
    use flatbuffers::FlatBufferBuilder;

    use super::*;
    use crate::tests::{Rng, run_cases};

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
            data: vec![7; (1 << 20) + 1],
            ..full_event()
        };
        let mut encoder = EventEncoder::new();
        let mut out = b"head".to_vec();
        let mut expected = out.clone();
        // Reused across events, across a huge one and back.
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

    // ------------------------------------------- the writer and the builder

    /// Everything the generated accessors read from an `Event`, absent
    /// fields as `None`: two buffers agree on it when they hold the same
    /// fields with the same values, however they are laid out.
    #[derive(Debug, PartialEq)]
    struct Fields<'a> {
        id: &'a str,
        source: &'a str,
        specversion: Option<&'a str>,
        ty: &'a str,
        subject: Option<&'a str>,
        time_ms: Option<i64>,
        datacontenttype: Option<&'a str>,
        attributes: Option<Vec<(&'a str, &'a str)>>,
        data: Option<&'a [u8]>,
    }

    fn fields(event: fb::Event<'_>) -> Fields<'_> {
        Fields {
            id: event.id(),
            source: event.source(),
            specversion: event.specversion(),
            ty: event.type_(),
            subject: event.subject(),
            time_ms: event.time_ms(),
            datacontenttype: event.datacontenttype(),
            attributes: event
                .attributes()
                .map(|list| list.iter().map(|a| (a.key(), a.value())).collect()),
            data: event.data().map(|d| d.bytes()),
        }
    }

    /// Checks `bytes`, as the writer wrote `event` followed by `more`,
    /// against the builder's encoding of the same: both verifiers accept it
    /// (the generic one under the crate's options and under its defaults),
    /// every accessor reads what it reads from the builder's bytes, and it
    /// decodes to `event` with `more` appended and `specversion` filled in.
    fn check_against_reference(bytes: &[u8], event: &EventRef<'_>, more: &[(&str, &str)]) {
        let reference = reference::encode(event, more.iter().copied());
        let options = Limits::DEFAULT.verifier_options();
        let theirs = flatbuffers::root_with_opts::<fb::Event>(&options, &reference).unwrap();
        let generic = flatbuffers::root_with_opts::<fb::Event>(&options, bytes).unwrap();
        let generic_default = flatbuffers::root::<fb::Event>(bytes).unwrap();
        let specialised = verify::event(bytes, &options).unwrap();
        assert_eq!(fields(generic), fields(theirs));
        assert_eq!(fields(generic_default), fields(theirs));
        assert_eq!(fields(specialised), fields(theirs));

        let mut expected = event.clone();
        expected.attributes.extend_from_slice(more);
        if expected.specversion.is_empty() {
            expected.specversion = SPECVERSION;
        }
        let decoded = decode_event(bytes, &Limits::DEFAULT).unwrap();
        assert_eq!(decoded, expected);
        assert_eq!(decoded, decode_event(&reference, &Limits::DEFAULT).unwrap());

        // The same tables as the builder writes, so the same table limit.
        let tables = 1 + expected.attributes.len();
        for buf in [bytes, &reference] {
            let exact = Limits {
                tables_max: tables,
                ..Limits::DEFAULT
            };
            let under = Limits {
                tables_max: tables - 1,
                ..Limits::DEFAULT
            };
            assert!(verify_event(buf, &exact).is_ok());
            assert!(matches!(
                verify_event(buf, &under),
                Err(DecodeError::Malformed(
                    flatbuffers::InvalidFlatbuffer::TooManyTables
                ))
            ));
        }
    }

    /// A string of up to `max` characters (0 an eighth of the time), some
    /// of them 2, 3 and 4 bytes of UTF-8, and now and then a NUL.
    fn random_string(rng: &mut Rng, max: usize) -> String {
        const CHARS: [char; 12] = [
            'a', 'z', '0', '.', '-', ' ', 'é', 'ß', '日', '€', '🦀', '\0',
        ];
        if rng.below(8) == 0 {
            return String::new();
        }
        let len = rng.below(max + 1);
        let ascii = rng.below(2) == 0;
        (0..len)
            .map(|_| {
                if ascii {
                    char::from(b'a' + rng.below(26) as u8)
                } else {
                    CHARS[rng.below(CHARS.len())]
                }
            })
            .collect()
    }

    fn random_time_ms(rng: &mut Rng) -> Option<i64> {
        match rng.below(6) {
            0 => None,
            1 => Some(i64::MIN),
            2 => Some(i64::MAX),
            3 => Some(-(rng.below(1 << 40) as i64)),
            4 => Some(rng.below(1 << 42) as i64),
            _ => Some(rng.next_u64() as i64),
        }
    }

    /// A random event, and attributes to pass after its own: strings of
    /// up to 0, 8 or 300 characters, optional fields present or absent.
    fn random_event(rng: &mut Rng) -> (Event, Vec<(String, String)>) {
        let max = [0, 8, 300][rng.below(3)];
        let attribute = |rng: &mut Rng| (random_string(rng, max), random_string(rng, max));
        let event = Event {
            id: random_string(rng, max),
            source: random_string(rng, max),
            specversion: match rng.below(3) {
                0 => String::new(),
                1 => SPECVERSION.to_owned(),
                _ => random_string(rng, max),
            },
            ty: random_string(rng, max),
            subject: (rng.below(2) == 0).then(|| random_string(rng, max)),
            time_ms: random_time_ms(rng),
            datacontenttype: (rng.below(2) == 0).then(|| random_string(rng, max)),
            attributes: (0..rng.below(6)).map(|_| attribute(rng)).collect(),
            data: match rng.below(4) {
                0 => Vec::new(),
                _ => rng.bytes_upto(2001),
            },
        };
        let more = (0..rng.below(4)).map(|_| attribute(rng)).collect();
        (event, more)
    }

    /// Random events, each appended by an `EventEncoder` at a random
    /// position (0 to 7 bytes of junk before it, so at every alignment):
    /// the event's own bytes must be a valid `Event` buffer that reads as
    /// the builder's encoding of it reads, and every encoder must write
    /// those same bytes.
    #[test]
    fn writer_agrees_with_the_builder_on_random_events() {
        let mut encoder = EventEncoder::new();
        let mut growth = 0usize;
        run_cases(
            "writer_agrees_with_the_builder_on_random_events",
            4000,
            |rng| {
                let (event, more) = random_event(rng);
                let more: Vec<(&str, &str)> =
                    more.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let event = event.as_event_ref();

                let junk_bytes = rng.below(8);
                let junk = rng.bytes(junk_bytes);
                let mut out = junk.clone();
                let len = encoder.encode_into(&event, more.iter().copied(), &mut out);
                assert_eq!(&out[..junk.len()], &junk[..], "the junk before it is kept");
                assert_eq!(out.len(), junk.len() + len);
                assert!(len.is_multiple_of(4), "{len}");
                let bytes = &out[junk.len()..];
                check_against_reference(bytes, &event, &more);

                let mut all = event.clone();
                all.attributes.extend_from_slice(&more);
                assert_eq!(encode_event(&all), bytes);
                let reused_bytes = rng.below(64);
                let mut reused = rng.bytes(reused_bytes);
                assert_eq!(encode_event_with(&mut reused, &all), len);
                assert_eq!(reused, bytes);

                let reference = reference::encode(&event, more.iter().copied());
                growth = growth.max(len.saturating_sub(reference.len()));
            },
        );
        // Trimmed vtables and one shared Attribute vtable keep the writer's
        // events about as small as the builder's: the two differ in their
        // padding only.
        println!("largest growth over the builder: {growth} bytes");
        assert!(growth <= 8, "{growth}");
    }

    /// Every combination of present and absent optional fields, and of
    /// attributes given in the event, after it or both: the writer writes
    /// each present field and no absent one.
    #[test]
    fn writer_writes_each_field_and_only_present_ones() {
        let data = [1, 2, 3, 0, 255];
        let own = [("tenant", "acme"), ("", "")];
        let more = [("region", "eu-west-1")];
        for combination in 0..1 << 7 {
            let has = |bit: u32| combination & (1 << bit) != 0;
            let event = EventRef {
                id: "evt-7",
                source: "source",
                specversion: if has(0) { "" } else { "2.0-é" },
                ty: "type",
                subject: has(1).then_some("subject"),
                time_ms: has(2).then_some(-1),
                datacontenttype: has(3).then_some("text/plain"),
                attributes: if has(4) { own.to_vec() } else { Vec::new() },
                data: if has(5) { &data } else { &[] },
            };
            let more: &[(&str, &str)] = if has(6) { &more } else { &[] };
            let mut out = Vec::new();
            EventEncoder::new().encode_into(&event, more.iter().copied(), &mut out);
            check_against_reference(&out, &event, more);
            let decoded = flatbuffers::root::<fb::Event>(&out).unwrap();
            assert_eq!(decoded.subject().is_some(), has(1));
            assert_eq!(decoded.time_ms().is_some(), has(2));
            assert_eq!(decoded.datacontenttype().is_some(), has(3));
            assert_eq!(decoded.attributes().is_some(), has(4) || has(6));
            assert_eq!(decoded.data().is_some(), has(5));
            assert!(decoded.specversion().is_some());
        }
    }

    /// The layout the `write` module header draws, for one full event.
    #[test]
    fn writer_lays_the_event_out_as_documented() {
        let event = full_event();
        let bytes = event.encode();
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let table = u32_at(0);
        // Every field present: nine slots, the table right after the
        // vtable, time_ms 8-aligned just after the soffset.
        assert_eq!(u16_at(4), 4 + 2 * 9);
        assert_eq!(table, 28);
        assert_eq!(u32_at(table), table - 4);
        assert_eq!(u16_at(4 + usize::from(fb::Event::VT_TIME_MS)), 4);
        assert_eq!((table + 4) % 8, 0);
        let table_bytes = u16_at(6);
        assert_eq!(table_bytes, 4 + 8 + 8 * 4);
        // The Attribute vtable follows the table; the id string follows it.
        assert_eq!(
            &bytes[table + table_bytes..table + table_bytes + 8],
            &[8, 0, 12, 0, 4, 0, 8, 0]
        );
        let id_field = table + u16_at(4 + usize::from(fb::Event::VT_ID));
        assert_eq!(id_field + u32_at(id_field), table + table_bytes + 8);
        // The data vector is last, then padding to 4.
        let data_field = table + u16_at(4 + usize::from(fb::Event::VT_DATA));
        let data = data_field + u32_at(data_field);
        assert_eq!(
            &bytes[data + 4..data + 4 + event.data.len()],
            &event.data[..]
        );
        assert_eq!(
            bytes.len(),
            (data + 4 + event.data.len()).next_multiple_of(4)
        );
    }

    /// A `more_attributes` iterator that yields other attributes the
    /// second time it runs (more, fewer, or as many of other sizes) cannot
    /// make the writer emit a broken buffer: it panics.
    #[test]
    fn writer_refuses_attributes_that_change_between_passes() {
        use std::cell::Cell;

        /// Yields `passes[run]` on its `run`th run; clones share the count.
        #[derive(Clone)]
        struct Shifty<'c> {
            passes: &'c [&'c [(&'c str, &'c str)]],
            runs: &'c Cell<usize>,
            pass: Option<core::slice::Iter<'c, (&'c str, &'c str)>>,
        }
        impl<'c> Iterator for Shifty<'c> {
            type Item = (&'c str, &'c str);
            fn next(&mut self) -> Option<Self::Item> {
                let pass = self.pass.get_or_insert_with(|| {
                    let run = self.runs.get();
                    self.runs.set(run + 1);
                    self.passes[run].iter()
                });
                pass.next().copied()
            }
        }

        let event = full_event();
        let one: &[(&str, &str)] = &[("key", "value")];
        let two: &[(&str, &str)] = &[("key", "value"), ("key", "value")];
        let longer: &[(&str, &str)] = &[("a longer key", "value")];
        for passes in [[one, two], [two, one], [one, longer]] {
            let runs = Cell::new(0);
            let shifty = Shifty {
                passes: &passes,
                runs: &runs,
                pass: None,
            };
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut out = Vec::new();
                EventEncoder::new().encode_into(&event.as_event_ref(), shifty, &mut out)
            }));
            assert!(result.is_err(), "{passes:?}");
            assert_eq!(runs.get(), 2);
        }
        // The same attributes on both runs are fine.
        let runs = Cell::new(0);
        let passes = [two, two];
        let steady = Shifty {
            passes: &passes,
            runs: &runs,
            pass: None,
        };
        let mut out = Vec::new();
        EventEncoder::new().encode_into(&event.as_event_ref(), steady, &mut out);
        check_against_reference(&out, &event.as_event_ref(), two);
    }
}
