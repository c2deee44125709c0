//! The CloudEvents JSON event format (CloudEvents 1.0, `json-format.md`) of
//! the command-line client: `hadron subscribe` prints each event as one line
//! of it, and `hadron publish -f` reads one event, or a batch (a JSON
//! array), of it. docs/cloudevents.md documents the mapping for users; this
//! header says why it is the way it is.
//!
//! Hadron stores what the wire's `Event` table holds: `id`, `source`,
//! `specversion`, `type`, `subject`, `time` (milliseconds since the epoch),
//! `datacontenttype`, extension attributes as ordered (name, string) pairs,
//! and `data` as bytes. Every attribute maps to a top-level member:
//!
//! - `time` is written as RFC 3339 in UTC with milliseconds, or left out
//!   (never `null`); read times lose digits below a millisecond.
//! - `dataschema` has no field of its own on the wire: it is stored as an
//!   extension attribute of that name, which prints as the same member.
//! - Extension values are stored as strings, CloudEvents' canonical string
//!   form (as in the HTTP binding): a JSON integer or boolean read by
//!   `publish` is stored as its decimal or `true`/`false` text and printed
//!   back as a JSON string.
//! - `data`: bytes that are JSON under a JSON `datacontenttype` (or none,
//!   which means `application/json`) print as that JSON value, verbatim
//!   apart from line breaks (one event per line); UTF-8 under a `text/*`
//!   type prints as a JSON string; anything else prints as `data_base64`.
//!   Reading inverts it: a JSON-typed `data` value is stored as the JSON
//!   text it was given, a string under another type as its UTF-8 bytes,
//!   `data_base64` decoded. So the bytes a reader gets back are the bytes
//!   that were stored, and what `publish` stores is what the writer meant.
//! - The delivery's position is two extension attributes, `partition` (an
//!   Integer: a stream has at most 1024 partitions) and `offset` (a String
//!   of decimal digits, since offsets outgrow CloudEvents' 32-bit Integer).
//!   `publish` does not store those two members, so `subscribe`'s output
//!   can be published again.
//!
//! A stored extension attribute that cannot be printed as a member (its name
//! is not lower-case letters and digits, names a context attribute or
//! `partition`/`offset`, or repeats an earlier one) is left out of the line
//! and reported to the caller, which says so on standard error.

mod base64;
mod rfc3339;

use base64::{base64, base64_decode};
use hadron::{Event, NewEvent};
use rfc3339::{format_time, parse_time};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The extension attribute that holds the partition an event was read from.
pub const PARTITION_ATTRIBUTE: &str = "partition";
/// The extension attribute that holds the offset an event was read from.
pub const OFFSET_ATTRIBUTE: &str = "offset";
/// The most bytes `hadron publish -f` reads: a batch document is parsed
/// whole, and every event of it is held until it is published.
pub const JSON_BYTES_MAX: usize = 64 << 20;
/// The spec version of the JSON format read and written here.
const SPECVERSION: &str = "1.0";
/// Context attributes with a member of their own, and the data members: an
/// extension attribute may not take any of these names.
const RESERVED_MEMBERS: [&str; 9] = [
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "data",
    "data_base64",
];

/// One line of `hadron subscribe`: `event`, read at `partition` and
/// `offset`, in the JSON event format, and what had to be left out of it
/// (one sentence each).
pub fn event_line(event: &Event, partition: u32, offset: u64) -> (String, Vec<String>) {
    let mut left_out = Vec::new();
    let mut members: Vec<(&str, String)> = vec![
        ("specversion", json_string(&event.specversion)),
        ("id", json_string(&event.id)),
        ("source", json_string(&event.source)),
        ("type", json_string(&event.ty)),
    ];
    if let Some(subject) = &event.subject {
        members.push(("subject", json_string(subject)));
    }
    match event.time_ms.map(|ms| (ms, format_time(ms))) {
        None => {}
        Some((_, Some(time))) => members.push(("time", json_string(&time))),
        Some((ms, None)) => left_out.push(format!(
            "time {ms} ms since the epoch left out: RFC 3339 has years 0000 to 9999 only"
        )),
    }
    if let Some(datacontenttype) = &event.datacontenttype {
        members.push(("datacontenttype", json_string(datacontenttype)));
    }
    for (i, (name, value)) in event.attributes.iter().enumerate() {
        let why = if !is_attribute_name(name) {
            Some("not a CloudEvents attribute name (lower-case letters and digits)")
        } else if RESERVED_MEMBERS.contains(&name.as_str()) {
            Some("the name of a context attribute or data member")
        } else if name == PARTITION_ATTRIBUTE || name == OFFSET_ATTRIBUTE {
            Some("the name of the member that says where the event was read")
        } else if event.attributes[..i].iter().any(|(n, _)| n == name) {
            Some("a repeat of an earlier attribute of that name")
        } else {
            None
        };
        match why {
            Some(why) => left_out.push(format!("extension attribute {name:?} left out: {why}")),
            None => members.push((name, json_string(value))),
        }
    }
    // A CloudEvents Integer is 32-bit signed; a stream has at most 1024
    // partitions, so the string form is never needed in practice.
    let partition = match i32::try_from(partition) {
        Ok(p) => p.to_string(),
        Err(_) => json_string(&partition.to_string()),
    };
    members.push((PARTITION_ATTRIBUTE, partition));
    members.push((OFFSET_ATTRIBUTE, json_string(&offset.to_string())));
    match data_member(event.datacontenttype.as_deref(), &event.data) {
        None => {}
        Some(DataMember::Json(text)) => members.push(("data", text)),
        Some(DataMember::Text(text)) => members.push(("data", json_string(text))),
        Some(DataMember::Base64(text)) => members.push(("data_base64", json_string(&text))),
    }
    let mut line = String::from("{");
    for (i, (name, value)) in members.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        line.push_str(&json_string(name));
        line.push(':');
        line.push_str(value);
    }
    line.push('}');
    (line, left_out)
}

/// How an event's data is written.
#[derive(Debug, PartialEq, Eq)]
enum DataMember<'a> {
    /// `data`: this JSON text.
    Json(String),
    /// `data`: this string.
    Text(&'a str),
    /// `data_base64`: this Base64 text.
    Base64(String),
}

/// The data member for `data` under `datacontenttype`; none for no bytes.
fn data_member<'a>(datacontenttype: Option<&str>, data: &'a [u8]) -> Option<DataMember<'a>> {
    if data.is_empty() {
        return None;
    }
    let json_typed = datacontenttype.is_none_or(is_json_content_type);
    if json_typed && serde_json::from_slice::<&RawValue>(data).is_ok() {
        // Valid JSON has line breaks only between tokens, where a space
        // means the same; a line holds one event.
        let text = String::from_utf8_lossy(data)
            .trim()
            .replace(['\n', '\r'], " ");
        return Some(DataMember::Json(text));
    }
    if !json_typed
        && datacontenttype.is_some_and(is_text_content_type)
        && let Ok(text) = std::str::from_utf8(data)
    {
        return Some(DataMember::Text(text));
    }
    Some(DataMember::Base64(base64(data)))
}

/// Whether `datacontenttype` declares JSON: its media type, without
/// parameters, is `*/json` or `*/*+json` (json-format.md 3.1.1).
pub fn is_json_content_type(datacontenttype: &str) -> bool {
    let media_type = media_type(datacontenttype);
    let subtype = media_type
        .split_once('/')
        .map_or("", |(_, subtype)| subtype);
    subtype == "json" || subtype.ends_with("+json")
}

/// Whether `datacontenttype` is a `text/*` type.
fn is_text_content_type(datacontenttype: &str) -> bool {
    media_type(datacontenttype).starts_with("text/")
}

/// The media type of `datacontenttype`, lower-case, without parameters.
fn media_type(datacontenttype: &str) -> String {
    datacontenttype
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// The `datacontenttype` `hadron publish --type ... DATA` gives data when
/// none is named: JSON is `application/json`, other UTF-8 is
/// `text/plain; charset=utf-8`, other bytes get none.
pub fn guess_content_type(data: &[u8]) -> Option<String> {
    if data.is_empty() {
        None
    } else if serde_json::from_slice::<&RawValue>(data).is_ok() {
        Some("application/json".into())
    } else if std::str::from_utf8(data).is_ok() {
        Some("text/plain; charset=utf-8".into())
    } else {
        None
    }
}

/// Whether `name` is a CloudEvents attribute name: one or more lower-case
/// ASCII letters and digits. (The spec advises at most 20; longer names are
/// still valid, and kept.)
fn is_attribute_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// The events of `text`: one event in the JSON event format, a JSON array
/// of them (the JSON batch format), or several of either one after another
/// (so the lines `hadron subscribe` prints read back). Errors name the
/// event (by its index from 0, unless `text` is one event) and the
/// attribute.
pub fn parse_events(text: &str) -> Result<Vec<NewEvent>, String> {
    let mut values = Vec::new();
    for value in serde_json::Deserializer::from_str(text).into_iter::<&RawValue>() {
        let value =
            value.map_err(|e| format!("not CloudEvents JSON (an event or an array): {e}"))?;
        if value.get().starts_with('[') {
            let batch: Vec<&RawValue> = serde_json::from_str(value.get())
                .map_err(|e| format!("not a JSON batch of events: {e}"))?;
            values.extend(batch);
        } else {
            values.push(value);
        }
    }
    if let [one] = values[..]
        && !text.trim_start().starts_with('[')
    {
        return Ok(vec![parse_event(one.get())?]);
    }
    values
        .iter()
        .enumerate()
        .map(|(i, raw)| parse_event(raw.get()).map_err(|e| format!("event {i}: {e}")))
        .collect()
}

/// One event in the JSON event format.
fn parse_event(text: &str) -> Result<NewEvent, String> {
    let Members(members) = serde_json::from_str(text)
        .map_err(|e| format!("not a CloudEvents JSON event (a JSON object): {e}"))?;
    let get = |name: &str| {
        members
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .filter(|v| v.get() != "null")
    };
    let string = |name: &str| -> Result<Option<String>, String> {
        get(name)
            .map(|v| {
                serde_json::from_str::<String>(v.get())
                    .map_err(|_| format!("`{name}` must be a string, not {}", v.get()))
            })
            .transpose()
    };
    let required = |name: &str| -> Result<String, String> {
        match string(name)? {
            None => Err(format!("`{name}` is missing: it is a required attribute")),
            Some(s) if s.is_empty() => Err(format!("`{name}` is empty")),
            Some(s) => Ok(s),
        }
    };
    let optional = |name: &str| -> Result<Option<String>, String> {
        match string(name)? {
            Some(s) if s.is_empty() => Err(format!("`{name}` is empty: leave it out instead")),
            other => Ok(other),
        }
    };
    let specversion = required("specversion")?;
    if specversion != SPECVERSION {
        return Err(format!(
            "`specversion` is {specversion:?}: this is the CloudEvents {SPECVERSION} JSON format"
        ));
    }
    let datacontenttype = optional("datacontenttype")?;
    let time_ms = optional("time")?
        .map(|t| parse_time(&t).map_err(|e| format!("`time` {t:?}: {e}")))
        .transpose()?;
    let data = match (get("data"), string("data_base64")?) {
        (Some(_), Some(_)) => {
            return Err("`data` and `data_base64` are both present: give one".into());
        }
        (None, Some(b64)) => {
            base64_decode(&b64).map_err(|e| format!("`data_base64` is not Base64: {e}"))?
        }
        (Some(value), None) => read_data(datacontenttype.as_deref(), value),
        (None, None) => match members.iter().find(|(n, _)| n == "data") {
            // An explicit null payload (json-format.md 3.1.1).
            Some((_, v)) if datacontenttype.as_deref().is_none_or(is_json_content_type) => {
                v.get().as_bytes().to_vec()
            }
            _ => Vec::new(),
        },
    };
    let attributes = read_extensions(&members)?;
    Ok(NewEvent {
        id: required("id")?,
        source: required("source")?,
        specversion,
        ty: required("type")?,
        subject: optional("subject")?,
        time_ms,
        datacontenttype,
        attributes,
        data,
    })
}

/// The extension attributes among `members`: every member but the context
/// attributes, the data members and the position (`partition`, `offset`),
/// with its value as a canonical string; `null` members are absent ones.
fn read_extensions(members: &[(String, &RawValue)]) -> Result<Vec<(String, String)>, String> {
    let mut attributes = Vec::new();
    for (name, value) in members {
        if RESERVED_MEMBERS.contains(&name.as_str())
            || name == PARTITION_ATTRIBUTE
            || name == OFFSET_ATTRIBUTE
            || value.get() == "null"
        {
            continue;
        }
        if !is_attribute_name(name) {
            return Err(format!(
                "extension attribute {name:?}: names are lower-case letters and digits"
            ));
        }
        let value = match serde_json::from_str::<serde_json::Value>(value.get()) {
            Ok(serde_json::Value::String(s)) => s,
            Ok(serde_json::Value::Bool(b)) => b.to_string(),
            Ok(serde_json::Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
            _ => {
                return Err(format!(
                    "extension attribute `{name}` is {}: values are strings, integers or booleans",
                    value.get()
                ));
            }
        };
        attributes.push((name.clone(), value));
    }
    Ok(attributes)
}

/// The bytes `data` stands for under `datacontenttype`: the JSON text
/// itself for JSON (or no) content types; for others a string's UTF-8
/// bytes, or the JSON text of anything else.
fn read_data(datacontenttype: Option<&str>, value: &RawValue) -> Vec<u8> {
    if !datacontenttype.is_none_or(is_json_content_type)
        && let Ok(s) = serde_json::from_str::<String>(value.get())
    {
        return s.into_bytes();
    }
    value.get().trim().as_bytes().to_vec()
}

/// An event's members in order, borrowing their values; a repeated name is
/// an error (serde_json's maps would keep the last one silently).
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members: Vec<(String, &'de RawValue)> = Vec::new();
                while let Some((name, value)) = map.next_entry::<String, &'de RawValue>()? {
                    if members.iter().any(|(n, _)| *n == name) {
                        return Err(serde::de::Error::custom(format!(
                            "member `{name}` appears twice"
                        )));
                    }
                    members.push((name, value));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(event: &Event) -> (serde_json::Value, Vec<String>) {
        let (text, left_out) = event_line(event, 3, 42);
        assert!(!text.contains('\n'), "one line: {text}");
        (serde_json::from_str(&text).unwrap(), left_out)
    }

    fn event(datacontenttype: Option<&str>, data: &[u8]) -> Event {
        Event {
            id: "e-1".into(),
            source: "/app".into(),
            specversion: "1.0".into(),
            ty: "service.created".into(),
            datacontenttype: datacontenttype.map(str::to_owned),
            data: data.to_vec(),
            ..Event::default()
        }
    }

    #[test]
    fn event_line_maps_every_attribute() {
        let e = Event {
            subject: Some("svc-42".into()),
            time_ms: Some(1_700_000_000_123),
            attributes: vec![
                ("tenant".into(), "acme".into()),
                ("dataschema".into(), "https://example.com/s.json".into()),
            ],
            ..event(Some("application/json"), br#"{"plan": "small"}"#)
        };
        let (v, left_out) = line(&e);
        assert_eq!(
            v,
            serde_json::json!({
                "specversion": "1.0",
                "id": "e-1",
                "source": "/app",
                "type": "service.created",
                "subject": "svc-42",
                "time": "2023-11-14T22:13:20.123Z",
                "datacontenttype": "application/json",
                "tenant": "acme",
                "dataschema": "https://example.com/s.json",
                "partition": 3,
                "offset": "42",
                "data": {"plan": "small"},
            })
        );
        assert!(left_out.is_empty(), "{left_out:?}");
        let (text, _) = event_line(&e, 3, 42);
        assert!(
            text.contains(r#""data":{"plan": "small"}"#),
            "JSON data verbatim: {text}"
        );
    }

    #[test]
    fn event_line_leaves_out_absent_attributes_never_null() {
        let (v, _) = line(&event(None, b""));
        let members: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut expected = vec!["id", "offset", "partition", "source", "specversion", "type"];
        expected.sort_unstable();
        assert_eq!(members, expected, "{v}");
        let far = Event {
            time_ms: Some(rfc3339::TIME_MS_END),
            ..event(None, b"")
        };
        let (v, left_out) = line(&far);
        assert_eq!(v.get("time"), None);
        assert!(left_out[0].contains("RFC 3339"), "{left_out:?}");
    }

    #[test]
    fn event_line_writes_data_by_content_type() {
        let cases: [(Option<&str>, &[u8], &str, serde_json::Value); 9] = [
            (None, b"[1, 2]", "data", serde_json::json!([1, 2])),
            (None, b"hello", "data_base64", "aGVsbG8=".into()),
            (Some("application/json"), b"\"hi\"", "data", "hi".into()),
            (
                Some("application/json"),
                b"{\n  \"a\": 1\n}\n",
                "data",
                serde_json::json!({"a": 1}),
            ),
            (
                Some("application/json"),
                b"{oops",
                "data_base64",
                "e29vcHM=".into(),
            ),
            (
                Some("application/cloudevents+json; charset=utf-8"),
                b"7",
                "data",
                7.into(),
            ),
            (
                Some("text/plain; charset=utf-8"),
                b"hello",
                "data",
                "hello".into(),
            ),
            (Some("TEXT/CSV"), b"\xff", "data_base64", "/w==".into()),
            (
                Some("application/octet-stream"),
                b"abc",
                "data_base64",
                "YWJj".into(),
            ),
        ];
        for (datacontenttype, data, member, value) in cases {
            let (v, _) = line(&event(datacontenttype, data));
            assert_eq!(v[member], value, "{datacontenttype:?} {data:?}: {v}");
            let other = if member == "data" {
                "data_base64"
            } else {
                "data"
            };
            assert_eq!(v.get(other), None, "{v}");
        }
    }

    #[test]
    fn event_line_leaves_out_attributes_it_cannot_print() {
        let e = Event {
            attributes: vec![
                ("Tenant-ID".into(), "x".into()),
                ("type".into(), "x".into()),
                ("offset".into(), "x".into()),
                ("ok".into(), "first".into()),
                ("ok".into(), "second".into()),
                ("".into(), "x".into()),
            ],
            ..event(None, b"")
        };
        let (v, left_out) = line(&e);
        assert_eq!(v["ok"], "first");
        assert_eq!(v["type"], "service.created");
        assert_eq!(v["offset"], "42");
        assert_eq!(left_out.len(), 5, "{left_out:?}");
        assert!(left_out[0].contains("\"Tenant-ID\""), "{left_out:?}");
        assert!(left_out[3].contains("repeat"), "{left_out:?}");
    }

    #[test]
    fn parse_reads_what_event_line_writes() {
        let cases: [(Option<&str>, &[u8]); 6] = [
            (None, b"{\"a\": [1, 2.5, null]}"),
            (None, b"\x00\x01binary"),
            (Some("application/json"), b"null"),
            (Some("text/plain"), b"line one\nline \"two\""),
            (Some("application/octet-stream"), b"text but typed binary"),
            (Some("application/xml"), b"<a/>"),
        ];
        for (datacontenttype, data) in cases {
            let e = Event {
                subject: Some("s".into()),
                time_ms: Some(1_700_000_000_123),
                attributes: vec![("tenant".into(), "acme".into())],
                ..event(datacontenttype, data)
            };
            let (text, _) = event_line(&e, 0, 7);
            let parsed = parse_events(&text).unwrap();
            assert_eq!(
                parsed,
                vec![e.to_new_event()],
                "the position members are not stored: {text}"
            );
        }
    }

    #[test]
    fn parse_reads_a_batch_and_the_spec_examples() {
        let batch = r#"[
          {"specversion": "1.0", "type": "com.example.someevent", "source": "/mycontext/4",
           "id": "B234-1234-1234", "time": "2018-04-05T17:31:00Z",
           "comexampleextension1": "value", "comexampleothervalue": 5, "unsetextension": null,
           "subject": null,
           "datacontenttype": "application/vnd.apache.thrift.binary", "data_base64": "AAEC"},
          {"specversion": "1.0", "type": "com.example.someotherevent", "source": "/mycontext/9",
           "id": "C234-1234-1234", "time": "2018-04-05T17:31:05Z",
           "datacontenttype": "application/json",
           "data": {"appinfoA": "abc", "appinfoB": 123, "appinfoC": true}},
          {"specversion": "1.0", "type": "t", "source": "s", "id": "D", "flag": true,
           "datacontenttype": "application/xml", "data": "<much wow=\"xml\"/>"}
        ]"#;
        let events = parse_events(batch).unwrap();
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].time_ms, Some(1_522_949_460_000));
        assert_eq!(events[0].subject, None);
        assert_eq!(
            events[0].attributes,
            vec![
                ("comexampleextension1".to_owned(), "value".to_owned()),
                ("comexampleothervalue".to_owned(), "5".to_owned())
            ]
        );
        assert_eq!(events[0].data, [0, 1, 2]);
        assert_eq!(
            events[1].data,
            br#"{"appinfoA": "abc", "appinfoB": 123, "appinfoC": true}"#
        );
        assert_eq!(events[2].data, br#"<much wow="xml"/>"#);
        assert_eq!(events[2].attributes, vec![("flag".into(), "true".into())]);
        assert_eq!(parse_events("[]").unwrap(), Vec::new());
        assert_eq!(parse_events("").unwrap(), Vec::new());
    }

    #[test]
    fn parse_reads_the_lines_subscribe_prints() {
        let events: Vec<Event> = (0..3)
            .map(|i| Event {
                id: format!("e-{i}"),
                ..event(Some("application/json"), b"{\"n\":\n1}")
            })
            .collect();
        let lines: Vec<String> = events.iter().map(|e| event_line(e, 0, 1).0).collect();
        let parsed = parse_events(&lines.join("\n")).unwrap();
        let expected: Vec<NewEvent> = events
            .iter()
            .map(|e| NewEvent {
                data: b"{\"n\": 1}".to_vec(),
                ..e.to_new_event()
            })
            .collect();
        assert_eq!(parsed, expected, "line breaks in JSON data became spaces");
        let mixed = format!("{}\n[{},{}]", lines[0], lines[1], lines[2]);
        assert_eq!(parse_events(&mixed).unwrap(), expected);
        let err = parse_events(&format!("{}\n{{}}", lines[0])).unwrap_err();
        assert!(
            err.starts_with("event 1: `specversion` is missing"),
            "{err}"
        );
    }

    #[test]
    fn parse_errors_name_the_attribute() {
        let ok = r#""specversion":"1.0","id":"1","source":"s","type":"t""#;
        let cases = [
            (
                r#"{"id":"1","source":"s","type":"t"}"#.to_owned(),
                "`specversion` is missing",
            ),
            (
                r#"{"specversion":"1.0","source":"s","type":"t"}"#.into(),
                "`id` is missing",
            ),
            (
                r#"{"specversion":"1.0","id":"1","type":"t"}"#.into(),
                "`source` is missing",
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"s"}"#.into(),
                "`type` is missing",
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"s","type":null}"#.into(),
                "`type` is missing",
            ),
            (
                r#"{"specversion":"1.0","id":"","source":"s","type":"t"}"#.into(),
                "`id` is empty",
            ),
            (
                r#"{"specversion":"0.3","id":"1","source":"s","type":"t"}"#.into(),
                "`specversion` is \"0.3\"",
            ),
            (
                r#"{"specversion":"1.0","id":1,"source":"s","type":"t"}"#.into(),
                "`id` must be a string",
            ),
            (format!(r#"{{{ok},"subject":""}}"#), "`subject` is empty"),
            (
                format!(r#"{{{ok},"time":"yesterday"}}"#),
                "`time` \"yesterday\"",
            ),
            (
                format!(r#"{{{ok},"data":1,"data_base64":"AA=="}}"#),
                "both present",
            ),
            (
                format!(r#"{{{ok},"data_base64":"A"}}"#),
                "`data_base64` is not Base64",
            ),
            (
                format!(r#"{{{ok},"Bad":"x"}}"#),
                "extension attribute \"Bad\"",
            ),
            (
                format!(r#"{{{ok},"x":1.5}}"#),
                "extension attribute `x` is 1.5",
            ),
            (
                format!(r#"{{{ok},"x":{{}}}}"#),
                "extension attribute `x` is {}",
            ),
            (format!(r#"{{{ok},"id":"2"}}"#), "member `id` appears twice"),
            ("[1]".into(), "event 0: not a CloudEvents JSON event"),
            ("nope".into(), "not CloudEvents JSON"),
            (format!(r#"{{{ok}}} x"#), "not CloudEvents JSON"),
            (
                format!(r#"[{{{ok}}},{{"id":"1"}}]"#),
                "event 1: `specversion` is missing",
            ),
        ];
        for (text, expected) in cases {
            let err = parse_events(&text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn guessed_content_types() {
        assert_eq!(guess_content_type(b""), None);
        assert_eq!(
            guess_content_type(br#"{"a":1}"#).as_deref(),
            Some("application/json")
        );
        assert_eq!(
            guess_content_type(b"hello").as_deref(),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(guess_content_type(b"\xff"), None);
    }
}
