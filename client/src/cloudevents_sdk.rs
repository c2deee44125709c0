//! Conversions between Hadron's events and the CloudEvents SDK's `Event`
//! (the `cloudevents-sdk` crate, 0.9), behind the `cloudevents` feature:
//!
//! ```
//! # fn main() -> Result<(), hadron::CloudEventError> {
//! use cloudevents::{AttributesReader, EventBuilder, EventBuilderV10};
//!
//! let sdk = EventBuilderV10::new()
//!     .id("e-1")
//!     .source("https://example.com/app")
//!     .ty("service.created")
//!     .data("application/json", serde_json::json!({"plan": "small"}))
//!     .build()
//!     .expect("an event with id, source and type");
//! let event = hadron::NewEvent::from(sdk); // to publish
//! assert_eq!(event.data, br#"{"plan":"small"}"#);
//! let back = cloudevents::Event::try_from(&event)?;
//! assert_eq!(back.ty(), "service.created");
//! # Ok(())
//! # }
//! ```
//!
//! The mapping is the one of the CLI's CloudEvents JSON (docs/cloudevents.md):
//!
//! - `time`: Hadron keeps milliseconds; finer digits are dropped.
//! - `dataschema` is stored as an extension attribute of that name (the
//!   wire has no field for it).
//! - Extension values are stored as strings, CloudEvents' canonical string
//!   form: an SDK Integer or Boolean becomes its decimal or `true`/`false`
//!   text and comes back as a String.
//! - `data`: the SDK's JSON value is stored as its JSON text, a String as
//!   its UTF-8 bytes, Binary as is. Back, bytes that are JSON under a JSON
//!   `datacontenttype` (or none, which means JSON) become `Data::Json`,
//!   UTF-8 under `text/*` `Data::String`, anything else `Data::Binary`.
//! - `Delivery::to_cloudevent` adds where the event was read, as the
//!   `partition` (Integer) and `offset` (String) extensions.
//!
//! Hadron to the SDK can fail (`CloudEventError` names the attribute): the
//! SDK knows spec versions 1.0 and 0.3 only, wants a non-empty `source`
//! and an absolute URL as `dataschema`, and every extension name must be a
//! CloudEvents name used once. The SDK to Hadron always succeeds.

use chrono::{DateTime, Utc};
use cloudevents::event::{ExtensionValue, SpecVersion};
use cloudevents::{AttributesReader, AttributesWriter, Data, EventBuilder};

use crate::{Delivery, Event, NewEvent};

/// The extension attribute `Delivery::to_cloudevent` puts the partition in.
pub const PARTITION_EXTENSION: &str = "partition";
/// The extension attribute `Delivery::to_cloudevent` puts the offset in.
pub const OFFSET_EXTENSION: &str = "offset";
/// The attribute `dataschema` is stored as.
const DATASCHEMA: &str = "dataschema";
/// Names an extension attribute may not take: the context attributes and
/// the JSON format's data members.
const RESERVED_NAMES: [&str; 10] = [
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
];

/// Why a Hadron event has no CloudEvents SDK equivalent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEventError {
    /// The attribute at fault.
    pub attribute: String,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for CloudEventError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CloudEvents attribute `{}`: {}",
            self.attribute, self.reason
        )
    }
}

impl std::error::Error for CloudEventError {}

fn error(attribute: &str, reason: impl Into<String>) -> CloudEventError {
    CloudEventError {
        attribute: attribute.into(),
        reason: reason.into(),
    }
}

impl From<cloudevents::Event> for NewEvent {
    fn from(mut event: cloudevents::Event) -> NewEvent {
        let mut attributes = Vec::new();
        if let Some(url) = event.dataschema() {
            attributes.push((DATASCHEMA.to_owned(), url.to_string()));
        }
        // The SDK keeps extensions in a hash map: sorted, they are stored
        // in an order that does not change from run to run.
        let mut extensions: Vec<(String, String)> = event
            .iter_extensions()
            .map(|(name, value)| (name.to_owned(), canonical_string(value)))
            .collect();
        extensions.sort_unstable();
        attributes.extend(extensions);
        let (datacontenttype, _, data) = event.take_data();
        NewEvent {
            id: event.id().to_owned(),
            source: event.source().clone(),
            specversion: event.specversion().as_str().to_owned(),
            ty: event.ty().to_owned(),
            subject: event.subject().map(str::to_owned),
            time_ms: event.time().map(DateTime::timestamp_millis),
            datacontenttype,
            attributes,
            data: data.map_or_else(Vec::new, data_bytes),
        }
    }
}

/// An extension value as CloudEvents' canonical string.
fn canonical_string(value: &ExtensionValue) -> String {
    match value {
        ExtensionValue::String(s) => s.clone(),
        ExtensionValue::Boolean(b) => b.to_string(),
        ExtensionValue::Integer(i) => i.to_string(),
    }
}

/// The bytes the SDK's data stands for.
fn data_bytes(data: Data) -> Vec<u8> {
    match data {
        Data::Binary(bytes) => bytes,
        Data::String(s) => s.into_bytes(),
        // Serializing a `serde_json::Value` cannot fail: its map keys are
        // strings.
        Data::Json(value) => serde_json::to_vec(&value).unwrap_or_default(),
    }
}

impl TryFrom<&NewEvent> for cloudevents::Event {
    type Error = CloudEventError;

    /// The event as it stands: an empty `id` or `source`, which a
    /// publisher would fill in, is an error here.
    fn try_from(event: &NewEvent) -> Result<cloudevents::Event, CloudEventError> {
        let specversion = if event.specversion.is_empty() {
            hadron_wire::SPECVERSION
        } else {
            &event.specversion
        };
        to_cloudevent(&Fields {
            id: &event.id,
            source: &event.source,
            specversion,
            ty: &event.ty,
            subject: event.subject.as_deref(),
            time_ms: event.time_ms,
            datacontenttype: event.datacontenttype.as_deref(),
            attributes: &event.attributes,
            data: &event.data,
        })
    }
}

impl TryFrom<&Event> for cloudevents::Event {
    type Error = CloudEventError;

    fn try_from(event: &Event) -> Result<cloudevents::Event, CloudEventError> {
        to_cloudevent(&Fields {
            id: &event.id,
            source: &event.source,
            specversion: &event.specversion,
            ty: &event.ty,
            subject: event.subject.as_deref(),
            time_ms: event.time_ms,
            datacontenttype: event.datacontenttype.as_deref(),
            attributes: &event.attributes,
            data: &event.data,
        })
    }
}

impl Delivery {
    /// The delivered event as a CloudEvents SDK event, with its partition
    /// and offset as the `partition` (Integer) and `offset` (String: offsets
    /// outgrow CloudEvents' 32-bit Integer) extension attributes.
    pub fn to_cloudevent(&self) -> Result<cloudevents::Event, CloudEventError> {
        for name in [PARTITION_EXTENSION, OFFSET_EXTENSION] {
            if self.event.attribute(name).is_some() {
                return Err(error(
                    name,
                    "the event has an extension of the name the delivery's position takes",
                ));
            }
        }
        let mut event = cloudevents::Event::try_from(&self.event)?;
        event.set_extension(PARTITION_EXTENSION, i64::from(self.partition));
        event.set_extension(OFFSET_EXTENSION, self.offset.to_string());
        Ok(event)
    }
}

/// The attributes `NewEvent` and `Event` share, borrowed.
struct Fields<'a> {
    id: &'a str,
    source: &'a str,
    specversion: &'a str,
    ty: &'a str,
    subject: Option<&'a str>,
    time_ms: Option<i64>,
    datacontenttype: Option<&'a str>,
    attributes: &'a [(String, String)],
    data: &'a [u8],
}

fn to_cloudevent(e: &Fields<'_>) -> Result<cloudevents::Event, CloudEventError> {
    let specversion = SpecVersion::try_from(e.specversion).map_err(|_| {
        error(
            "specversion",
            format!("{:?}: the SDK knows 1.0 and 0.3", e.specversion),
        )
    })?;
    for (name, value) in [("id", e.id), ("source", e.source), ("type", e.ty)] {
        if value.is_empty() {
            return Err(error(
                name,
                "empty (a publisher fills in id and source; set them first)",
            ));
        }
    }
    let mut event = cloudevents::EventBuilderV10::new()
        .id(e.id)
        .source(e.source)
        .ty(e.ty)
        .build()
        .map_err(|err| error("source", err.to_string()))?;
    event.set_subject(e.subject);
    event.set_datacontenttype(e.datacontenttype);
    event.set_time(
        e.time_ms
            .map(|ms| {
                DateTime::<Utc>::from_timestamp_millis(ms).ok_or_else(|| {
                    error("time", format!("{ms} ms since the epoch is out of range"))
                })
            })
            .transpose()?,
    );
    for (i, (name, value)) in e.attributes.iter().enumerate() {
        if e.attributes[..i].iter().any(|(n, _)| n == name) {
            return Err(error(name, "appears twice"));
        }
        if name == DATASCHEMA {
            let url = url::Url::parse(value)
                .map_err(|err| error(name, format!("{value:?} is not an absolute URL: {err}")))?;
            event.set_dataschema(Some(url));
            continue;
        }
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(error(
                name,
                "not a CloudEvents name (lower-case letters and digits)",
            ));
        }
        if RESERVED_NAMES.contains(&name.as_str()) {
            return Err(error(
                name,
                "the name of a context attribute or data member",
            ));
        }
        event.set_extension(name, value.as_str());
    }
    if let Some(data) = sdk_data(e.datacontenttype, e.data) {
        event.set_data_unchecked(data);
    }
    if specversion == SpecVersion::V03 {
        event = cloudevents::EventBuilderV03::from(event)
            .build()
            .map_err(|err| error("specversion", err.to_string()))?;
    }
    Ok(event)
}

/// The SDK's data for `data` under `datacontenttype`; none for no bytes.
fn sdk_data(datacontenttype: Option<&str>, data: &[u8]) -> Option<Data> {
    if data.is_empty() {
        return None;
    }
    let media_type = datacontenttype.map(|ct| {
        ct.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    let json_typed = media_type.as_deref().is_none_or(|mt| {
        let subtype = mt.split_once('/').map_or("", |(_, subtype)| subtype);
        subtype == "json" || subtype.ends_with("+json")
    });
    if json_typed && let Ok(value) = serde_json::from_slice(data) {
        return Some(Data::Json(value));
    }
    if !json_typed
        && media_type.is_some_and(|mt| mt.starts_with("text/"))
        && let Ok(text) = std::str::from_utf8(data)
    {
        return Some(Data::String(text.to_owned()));
    }
    Some(Data::Binary(data.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::{EventBuilderV03, EventBuilderV10};
    use serde_json::json;

    fn full_sdk_event() -> cloudevents::Event {
        EventBuilderV10::new()
            .id("e-1")
            .source("https://example.com/app")
            .ty("service.created")
            .subject("svc-42")
            .time("2024-05-06T07:08:09.010999Z")
            .extension("tenant", "acme")
            .extension("count", 5_i64)
            .extension("flag", true)
            .data_with_schema(
                "application/json",
                "https://example.com/schema.json",
                json!({"plan": "small", "n": [1, 2]}),
            )
            .build()
            .unwrap()
    }

    #[test]
    fn an_sdk_event_becomes_a_new_event_attribute_by_attribute() {
        let event = NewEvent::from(full_sdk_event());
        assert_eq!(
            event,
            NewEvent {
                id: "e-1".into(),
                source: "https://example.com/app".into(),
                specversion: "1.0".into(),
                ty: "service.created".into(),
                subject: Some("svc-42".into()),
                // Milliseconds: the 999 microseconds' tail is dropped.
                time_ms: Some(1_714_979_289_010),
                datacontenttype: Some("application/json".into()),
                attributes: vec![
                    (
                        "dataschema".into(),
                        "https://example.com/schema.json".into()
                    ),
                    ("count".into(), "5".into()),
                    ("flag".into(), "true".into()),
                    ("tenant".into(), "acme".into()),
                ],
                data: br#"{"n":[1,2],"plan":"small"}"#.to_vec(),
            }
        );
    }

    #[test]
    fn a_hadron_event_becomes_an_sdk_event_attribute_by_attribute() {
        let event = Event {
            id: "e-1".into(),
            source: "/app".into(),
            specversion: "1.0".into(),
            ty: "service.created".into(),
            subject: Some("svc-42".into()),
            time_ms: Some(1_714_979_289_010),
            datacontenttype: Some("application/json".into()),
            attributes: vec![
                ("tenant".into(), "acme".into()),
                (
                    "dataschema".into(),
                    "https://example.com/schema.json".into(),
                ),
            ],
            data: br#"{"plan": "small"}"#.to_vec(),
        };
        let sdk = cloudevents::Event::try_from(&event).unwrap();
        assert_eq!(sdk.id(), "e-1");
        assert_eq!(sdk.source(), "/app");
        assert_eq!(sdk.specversion(), SpecVersion::V10);
        assert_eq!(sdk.ty(), "service.created");
        assert_eq!(sdk.subject(), Some("svc-42"));
        assert_eq!(
            sdk.time().map(|t| t.to_rfc3339()),
            Some("2024-05-06T07:08:09.010+00:00".into())
        );
        assert_eq!(sdk.datacontenttype(), Some("application/json"));
        assert_eq!(
            sdk.dataschema().map(url::Url::as_str),
            Some("https://example.com/schema.json")
        );
        assert_eq!(sdk.extension("tenant"), Some(&"acme".into()));
        assert_eq!(sdk.iter_extensions().count(), 1);
        assert_eq!(sdk.data(), Some(&Data::Json(json!({"plan": "small"}))));
        // And back: the same event, apart from the JSON's spacing.
        let back = NewEvent::from(sdk);
        assert_eq!(
            back,
            NewEvent {
                attributes: vec![
                    (
                        "dataschema".into(),
                        "https://example.com/schema.json".into()
                    ),
                    ("tenant".into(), "acme".into()),
                ],
                data: br#"{"plan":"small"}"#.to_vec(),
                ..event.to_new_event()
            }
        );
    }

    #[test]
    fn data_kinds_map_by_content_type_both_ways() {
        let cases: [(Option<&str>, &[u8], Option<Data>); 8] = [
            (None, b"", None),
            (None, b"[1,2]", Some(Data::Json(json!([1, 2])))),
            (None, b"plain", Some(Data::Binary(b"plain".to_vec()))),
            (
                Some("application/cloudevents+json; charset=utf-8"),
                b"\"s\"",
                Some(Data::Json(json!("s"))),
            ),
            (
                Some("application/json"),
                b"{bad",
                Some(Data::Binary(b"{bad".to_vec())),
            ),
            (
                Some("text/plain; charset=utf-8"),
                b"hi",
                Some(Data::String("hi".into())),
            ),
            (Some("text/plain"), b"\xff", Some(Data::Binary(vec![0xff]))),
            (
                Some("application/octet-stream"),
                b"\x00\x01",
                Some(Data::Binary(vec![0, 1])),
            ),
        ];
        for (datacontenttype, data, expected) in cases {
            let event = NewEvent {
                id: "1".into(),
                source: "/s".into(),
                ty: "t".into(),
                datacontenttype: datacontenttype.map(str::to_owned),
                data: data.to_vec(),
                ..NewEvent::default()
            };
            let sdk = cloudevents::Event::try_from(&event).unwrap();
            assert_eq!(
                sdk.data(),
                expected.as_ref(),
                "{datacontenttype:?} {data:?}"
            );
            assert_eq!(sdk.datacontenttype(), datacontenttype);
            assert_eq!(
                NewEvent::from(sdk).data,
                data,
                "{datacontenttype:?}: the same bytes back"
            );
        }
    }

    #[test]
    fn spec_version_0_3_converts_both_ways() {
        let sdk = EventBuilderV03::new()
            .id("old")
            .source("/s")
            .ty("t")
            .build()
            .unwrap();
        let event = NewEvent::from(sdk);
        assert_eq!(event.specversion, "0.3");
        let back = cloudevents::Event::try_from(&event).unwrap();
        assert_eq!(back.specversion(), SpecVersion::V03);
        assert_eq!(back.id(), "old");
    }

    #[test]
    fn a_delivery_carries_its_position_as_extensions() {
        let delivery = Delivery {
            stream: "events".into(),
            partition: 3,
            offset: 5_000_000_000,
            attempt: 1,
            delivery_id: 9,
            subscription_id: 1,
            event: Event {
                id: "1".into(),
                source: "/s".into(),
                specversion: "1.0".into(),
                ty: "t".into(),
                ..Event::default()
            },
        };
        let sdk = delivery.to_cloudevent().unwrap();
        assert_eq!(
            sdk.extension("partition"),
            Some(&ExtensionValue::Integer(3))
        );
        assert_eq!(
            sdk.extension("offset"),
            Some(&ExtensionValue::String("5000000000".into()))
        );
        let mut clash = delivery.clone();
        clash.event.attributes.push(("offset".into(), "x".into()));
        assert_eq!(clash.to_cloudevent().unwrap_err().attribute, "offset");
    }

    #[test]
    fn conversion_errors_name_the_attribute() {
        let ok = NewEvent {
            id: "1".into(),
            source: "/s".into(),
            ty: "t".into(),
            ..NewEvent::default()
        };
        assert!(cloudevents::Event::try_from(&ok).is_ok());
        let with = |name: &str, value: &str| NewEvent {
            attributes: vec![(name.into(), value.into())],
            ..ok.clone()
        };
        let cases = [
            (
                NewEvent {
                    specversion: "2.0".into(),
                    ..ok.clone()
                },
                "specversion",
            ),
            (
                NewEvent {
                    id: String::new(),
                    ..ok.clone()
                },
                "id",
            ),
            (
                NewEvent {
                    source: String::new(),
                    ..ok.clone()
                },
                "source",
            ),
            (
                NewEvent {
                    ty: String::new(),
                    ..ok.clone()
                },
                "type",
            ),
            (
                NewEvent {
                    time_ms: Some(i64::MAX),
                    ..ok.clone()
                },
                "time",
            ),
            (with("dataschema", "relative/path"), "dataschema"),
            (with("Tenant-ID", "x"), "Tenant-ID"),
            (with("subject", "x"), "subject"),
            (
                NewEvent {
                    attributes: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
                    ..ok.clone()
                },
                "a",
            ),
        ];
        for (event, attribute) in cases {
            let err = cloudevents::Event::try_from(&event).unwrap_err();
            assert_eq!(err.attribute, attribute, "{err}");
            assert!(err.to_string().contains(&format!("`{attribute}`")), "{err}");
        }
    }
}
