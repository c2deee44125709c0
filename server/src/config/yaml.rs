//! Every use of the YAML library is in this file.
//!
//! serde_yaml is deprecated upstream; keeping it behind these three functions
//! means replacing it (serde-saphyr, serde_norway) touches nothing else. What
//! this file promises the rest of the module:
//!
//! - documents are numbered from 1 in input order, empty ones skipped but
//!   counted;
//! - a syntax error stops reading and is reported with its document number
//!   and line/column;
//! - a schema error (wrong type, unknown or missing field) carries the field
//!   path, the document number, the resource kind and name when the document
//!   says them, and line/column.
//!
//! Each document is read twice: first for its `kind` and `metadata.name`
//! (even when the rest does not fit the schema), then into the type its kind
//! selects, which keeps the parser's positions and field paths in the errors.
//!
//! # Bounds: no document can stall a shard
//!
//! Before the YAML library sees the text, [`check_shape`] scans it once,
//! skipping quoted strings, comments and block scalars, and refuses:
//!
//! - anchors (`&a`) and aliases (`*a`): resources never need them, and a
//!   15 KB document of aliases expanded to over 1 GB;
//! - flow nesting (`[`, `{`) deeper than [`YAML_DEPTH_MAX`]: libyaml's
//!   scanner keeps one possible key per flow level and walks them all for
//!   every token, so its time grows with the square of the depth (30,000
//!   `{a: ` took 2.2 s, 100,000 `[` stalled a shard for 36 s). Block
//!   nesting costs linear time and serde_yaml refuses more than 128 levels
//!   of any nesting.
//!
//! Both are [`Problem::YamlRefused`] with the line and column. The scan
//! follows YAML's rules closely but not perfectly, so the first reading
//! also counts the nodes it visits, aliases expanded, and stops past
//! [`nodes_max`] of the input's length: whatever an alias the scan missed
//! expands to, reading stays linear in the input. Callers bound the input's
//! length (`applyBytesMax`) and parse it off the shard's thread.
//!
//! The largest allowed apply, 1 MiB of streams and pipelines (5,916
//! resources), reads in 0.96 s in a debug build
//! (`the_largest_allowed_apply_parses_quickly`); serde_yaml's two readings
//! of it take 70-90 ms optimised. The scan is a small share of either.

use std::cell::Cell;
use std::fmt;
use std::ops::ControlFlow;

use serde::Deserialize;
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_yaml::Deserializer;

use super::document::{Envelope, RawBody, RawDocument, Resource};
use super::error::{ConfigError, Location, Problem, ResourceKind};
use super::pipeline::PipelineSpec;
use super::server::ServerConfigDoc;
use super::stream::StreamSpec;
use super::token::TokenSpec;

/// What the first reading learned about a non-empty document.
struct Head {
    kind: ResourceKind,
    name: Option<String>,
}

/// Reads every document of `input`. With `first_may_be_settings`, the first
/// non-empty document may leave out `kind` and is then server settings.
pub(super) fn read_documents(
    input: &str,
    first_may_be_settings: bool,
) -> Result<Vec<RawDocument>, ConfigError> {
    check_shape(input)?;
    let budget = Cell::new(nodes_max(input.len()));
    let mut heads: Vec<Option<Head>> = Vec::new();
    for (number, document) in (1..).zip(Deserializer::from_str(input)) {
        // The loader repeats a syntax error for every later document, so
        // stop at the first.
        let found = HeadSeed { budget: &budget }
            .deserialize(document)
            .map_err(|e| convert(&e, true).in_document(number))?;
        let Some(found) = found else {
            heads.push(None);
            continue;
        };
        let first = heads.iter().all(Option::is_none);
        heads.push(Some(
            head(found, first && first_may_be_settings, first_may_be_settings)
                .map_err(|e| e.in_document(number))?,
        ));
    }

    let mut documents = Vec::with_capacity(heads.len());
    for ((number, document), head) in (1..).zip(Deserializer::from_str(input)).zip(&heads) {
        let Some(head) = head else { continue };
        let context = |e: serde_yaml::Error| {
            convert(&e, false)
                .in_document(number)
                .in_resource(head.kind, head.name.as_deref())
        };
        let body = match head.kind {
            // `hadron apply` refuses settings whatever they hold; the caller
            // says why, so there is no point reporting their schema errors.
            ResourceKind::ServerConfig if !first_may_be_settings => {
                RawBody::Settings(Box::default())
            }
            ResourceKind::ServerConfig => RawBody::Settings(Box::new(
                ServerConfigDoc::deserialize(document).map_err(context)?,
            )),
            ResourceKind::Stream => {
                RawBody::Stream(Envelope::<StreamSpec>::deserialize(document).map_err(context)?)
            }
            ResourceKind::Pipeline => {
                RawBody::Pipeline(Envelope::<PipelineSpec>::deserialize(document).map_err(context)?)
            }
            ResourceKind::Token => {
                RawBody::Token(Envelope::<TokenSpec>::deserialize(document).map_err(context)?)
            }
        };
        documents.push(RawDocument { number, body });
    }
    Ok(documents)
}

/// The kind and name of a document.
fn head(
    found: FoundHead,
    kindless_is_settings: bool,
    settings_allowed: bool,
) -> Result<Head, ConfigError> {
    let FoundHead { kind, name } = found;
    let with_name = |e: ConfigError| match &name {
        Some(name) => ConfigError {
            name: Some(name.clone()),
            ..e
        },
        None => e,
    };
    let kind = match kind {
        None if kindless_is_settings => ResourceKind::ServerConfig,
        None => return Err(with_name(ConfigError::new("", Problem::MissingKind))),
        Some(Some(kind)) => match ResourceKind::from_kind(&kind) {
            Some(kind) => kind,
            None => {
                return Err(with_name(ConfigError::new(
                    "kind",
                    Problem::UnknownKind {
                        kind,
                        expected: if settings_allowed {
                            "ServerConfig, Stream, Pipeline or Token"
                        } else {
                            "Stream, Pipeline or Token"
                        },
                    },
                )));
            }
        },
        Some(None) => {
            return Err(with_name(ConfigError::new(
                "kind",
                Problem::Schema {
                    message: "expected a string such as `Stream` or `Pipeline`".into(),
                },
            )));
        }
    };
    Ok(Head { kind, name })
}

/// The deepest flow nesting (`[` and `{`) accepted. The deepest resource
/// needs 4 (`spec: { stages: [ { retry: {...} } ] }`); libyaml's time grows
/// with the square of this depth, so keep it small.
pub const YAML_DEPTH_MAX: usize = 32;

/// The most nodes (scalars, sequences, mappings) the first reading visits
/// in an input of `input_bytes` bytes, aliases expanded. Without aliases
/// every node takes at least half a byte of text (`[?]` holds 4 nodes in
/// 3 bytes), so only an alias can exceed this.
pub fn nodes_max(input_bytes: usize) -> u64 {
    2 * u64::try_from(input_bytes).unwrap_or(u64::MAX / 4) + 64
}

/// What the first reading found in a non-null document: `kind` (absent,
/// not a string, or the string) and `metadata.name` when it is a string.
#[derive(Debug, Default)]
struct FoundHead {
    kind: Option<Option<String>>,
    name: Option<String>,
}

/// Reads a document for its head, counting nodes against `budget`;
/// `None` for a null (empty) document.
struct HeadSeed<'b> {
    budget: &'b Cell<u64>,
}

/// Takes one node from the budget.
fn spend<E: serde::de::Error>(budget: &Cell<u64>) -> Result<(), E> {
    match budget.get().checked_sub(1) {
        Some(left) => {
            budget.set(left);
            Ok(())
        }
        None => Err(E::custom(
            "the input expands to more nodes than its length allows; YAML anchors and aliases are not accepted, write each value out",
        )),
    }
}

/// Any node, counted and dropped; `capture` keeps a string scalar.
struct Node<'b> {
    budget: &'b Cell<u64>,
    capture: bool,
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Option<String>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<String>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
        spend(self.budget).map(|()| None)
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
        spend(self.budget).map(|()| None)
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
        spend(self.budget).map(|()| None)
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
        spend(self.budget).map(|()| None)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        spend(self.budget)?;
        Ok(self.capture.then(|| v.to_owned()))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        spend(self.budget).map(|()| None)
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        spend(self.budget).map(|()| None)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        spend(self.budget)?;
        let budget = self.budget;
        while seq
            .next_element_seed(Node {
                budget,
                capture: false,
            })?
            .is_some()
        {}
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        spend(self.budget)?;
        let budget = self.budget;
        let node = || Node {
            budget,
            capture: false,
        };
        while map.next_entry_seed(node(), node())?.is_some() {}
        Ok(None)
    }
    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        use serde::de::VariantAccess;
        spend(self.budget)?;
        let budget = self.budget;
        let (_, variant) = data.variant_seed(Node {
            budget,
            capture: false,
        })?;
        variant.newtype_variant_seed(Node {
            budget,
            capture: false,
        })?;
        Ok(None)
    }
}

/// `metadata`: a mapping whose `name` is kept when it is a string.
struct MetadataSeed<'b> {
    budget: &'b Cell<u64>,
}

impl<'de> DeserializeSeed<'de> for MetadataSeed<'_> {
    type Value = Option<String>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<String>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for MetadataSeed<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        spend(self.budget)?;
        let budget = self.budget;
        let mut name = None;
        while let Some(key) = map.next_key_seed(Node {
            budget,
            capture: true,
        })? {
            let capture = key.as_deref() == Some("name");
            let value = map.next_value_seed(Node { budget, capture })?;
            if capture && value.is_some() {
                name = value;
            }
        }
        Ok(name)
    }

    // Anything else holds no name; count it like any node.
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
        self.other().visit_bool(v)
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
        self.other().visit_i64(v)
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
        self.other().visit_u64(v)
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
        self.other().visit_f64(v)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        self.other().visit_str(v)
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        self.other().visit_unit()
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        self.other().visit_none()
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.other().visit_seq(seq)
    }
    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.other().visit_enum(data)
    }
}

impl<'b> MetadataSeed<'b> {
    fn other(self) -> Node<'b> {
        Node {
            budget: self.budget,
            capture: false,
        }
    }
}

impl<'de> DeserializeSeed<'de> for HeadSeed<'_> {
    type Value = Option<FoundHead>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<FoundHead>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for HeadSeed<'_> {
    type Value = Option<FoundHead>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML document")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        spend(self.budget)?;
        let budget = self.budget;
        let mut found = FoundHead::default();
        while let Some(key) = map.next_key_seed(Node {
            budget,
            capture: true,
        })? {
            match key.as_deref() {
                Some("kind") => {
                    found.kind = Some(map.next_value_seed(Node {
                        budget,
                        capture: true,
                    })?);
                }
                Some("metadata") => found.name = map.next_value_seed(MetadataSeed { budget })?,
                _ => {
                    map.next_value_seed(Node {
                        budget,
                        capture: false,
                    })?;
                }
            }
        }
        Ok(Some(found))
    }

    // A document that is not a mapping has no kind; the second reading
    // says what is wrong with it.
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
        self.other()
            .visit_bool(v)
            .map(|_| Some(FoundHead::default()))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
        self.other()
            .visit_i64(v)
            .map(|_| Some(FoundHead::default()))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
        self.other()
            .visit_u64(v)
            .map(|_| Some(FoundHead::default()))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
        self.other()
            .visit_f64(v)
            .map(|_| Some(FoundHead::default()))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        self.other()
            .visit_str(v)
            .map(|_| Some(FoundHead::default()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.other()
            .visit_seq(seq)
            .map(|_| Some(FoundHead::default()))
    }
    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.other()
            .visit_enum(data)
            .map(|_| Some(FoundHead::default()))
    }
}

impl<'b> HeadSeed<'b> {
    fn other(self) -> Node<'b> {
        Node {
            budget: self.budget,
            capture: false,
        }
    }
}

/// Scans `input` as YAML tokens, without building anything, and refuses
/// anchors, aliases and flow nesting deeper than [`YAML_DEPTH_MAX`] (see the
/// module header). Quoted strings, comments and block scalars are skipped;
/// a plain scalar runs until `: `, ` #`, the end of its line (or, inside
/// flow brackets, a flow indicator), so `a*b` or `x &y` inside one are
/// text. Linear in the input.
pub(super) fn check_shape(input: &str) -> Result<(), ConfigError> {
    let bytes = input.as_bytes();
    let mut scan = Shape::default();
    let mut i = 0;
    while i < bytes.len() {
        let next = scan.step(bytes, i).map_err(|(at, reason)| {
            let (line, column) = line_column(bytes, at);
            let mut e = ConfigError::new("", Problem::YamlRefused { reason });
            e.location = Some(Location { line, column });
            e.in_document(scan.document())
        })?;
        assert!(next > i, "the YAML shape scan did not advance at byte {i}");
        i = next;
    }
    Ok(())
}

/// The 1-based line and column (in characters) of byte `at`.
fn line_column(bytes: &[u8], at: usize) -> (u32, u32) {
    let before = &bytes[..at.min(bytes.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let column = String::from_utf8_lossy(&before[start..]).chars().count() + 1;
    let to_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    (to_u32(line), to_u32(column))
}

/// The scanner's state between tokens.
#[derive(Debug, Default)]
struct Shape {
    /// Open `[` and `{`.
    depth: usize,
    /// Inside a plain scalar.
    plain: bool,
    /// Indentation of the line the current block-context plain scalar
    /// began on: a later line indented more continues it.
    plain_indent: usize,
    /// Indentation of the current line.
    indent: usize,
    /// Lines indented more than this belong to a block scalar (`|`, `>`).
    block_scalar_indent: Option<usize>,
    /// `---` lines seen, and whether content came before the first: to
    /// number documents as the parser does.
    markers: u32,
    content_before_marker: bool,
}

/// Whether `b` ends a token: whitespace, or the end of the input.
fn is_break(b: Option<&u8>) -> bool {
    matches!(b, None | Some(b' ' | b'\t' | b'\r' | b'\n'))
}

impl Shape {
    fn document(&self) -> u32 {
        (self.markers + u32::from(self.content_before_marker)).max(1)
    }

    /// Consumes a token (or a line start) at `i`; returns where the next
    /// one begins, or the offending byte offset and why.
    fn step(&mut self, b: &[u8], mut i: usize) -> Result<usize, (usize, String)> {
        if i == 0 || b[i - 1] == b'\n' {
            match self.line_start(b, i) {
                ControlFlow::Break(next) => return Ok(next),
                ControlFlow::Continue(first) => i = first,
            }
        }
        if b[i] == b'#' && i > 0 && matches!(b[i - 1], b' ' | b'\t') {
            self.plain = false;
            return Ok(line_end(b, i));
        }
        if self.plain {
            if !self.ends_plain(b, i) {
                return Ok(i + 1);
            }
            self.plain = false;
        }
        self.token(b, i)
    }

    /// At the start of the line at `i`: skips it whole (blank, a comment,
    /// a directive, or inside a block scalar) or its document marker, with
    /// `Break` and where to go on; else `Continue` with its first
    /// non-space byte.
    fn line_start(&mut self, b: &[u8], i: usize) -> ControlFlow<usize, usize> {
        let indent = b[i..].iter().take_while(|&&c| c == b' ').count();
        let rest = &b[i + indent..];
        let blank = matches!(rest.first(), None | Some(b'\n' | b'\r' | b'#'));
        // Past the newline: a line start must always move on.
        let next_line = (line_end(b, i) + 1).min(b.len());
        if let Some(scalar_indent) = self.block_scalar_indent {
            if blank || indent > scalar_indent {
                return ControlFlow::Break(next_line);
            }
            self.block_scalar_indent = None;
        }
        if blank {
            return ControlFlow::Break(next_line);
        }
        self.indent = indent;
        if indent == 0
            && (rest.starts_with(b"---") || rest.starts_with(b"..."))
            && is_break(rest.get(3))
        {
            if rest[0] == b'-' {
                self.markers += 1;
            }
            self.depth = 0;
            self.plain = false;
            return ControlFlow::Break(i + 3);
        }
        if indent == 0 && rest.first() == Some(&b'%') {
            return ControlFlow::Break(next_line);
        }
        if self.markers == 0 {
            self.content_before_marker = true;
        }
        // A plain scalar goes on across lines inside brackets, and in
        // block context onto lines indented more than where it began.
        if self.plain && self.depth == 0 && indent <= self.plain_indent {
            self.plain = false;
        }
        ControlFlow::Continue(i + indent)
    }

    /// Whether the byte at `i` ends the plain scalar being read.
    fn ends_plain(&self, b: &[u8], i: usize) -> bool {
        let (c, next, flow) = (b[i], b.get(i + 1), self.depth > 0);
        match c {
            b':' => {
                is_break(next) || (flow && matches!(next, Some(b',' | b'[' | b']' | b'{' | b'}')))
            }
            b',' | b'[' | b']' | b'{' | b'}' => flow,
            _ => false,
        }
    }

    /// Consumes the token that starts at `i`, outside any plain scalar.
    fn token(&mut self, b: &[u8], i: usize) -> Result<usize, (usize, String)> {
        let (c, next, flow) = (b[i], b.get(i + 1), self.depth > 0);
        match c {
            b' ' | b'\t' | b'\r' | b'\n' | b',' => Ok(i + 1),
            b'[' | b'{' => {
                self.depth += 1;
                if self.depth > YAML_DEPTH_MAX {
                    return Err((
                        i,
                        format!(
                            "brackets nest deeper than {YAML_DEPTH_MAX} levels; no resource needs more than 4"
                        ),
                    ));
                }
                Ok(i + 1)
            }
            b']' | b'}' => {
                self.depth = self.depth.saturating_sub(1);
                Ok(i + 1)
            }
            b'&' | b'*' => Err((
                i,
                format!(
                    "YAML {} are not accepted; write each value out",
                    if c == b'&' {
                        "anchors (`&name`)"
                    } else {
                        "aliases (`*name`)"
                    }
                ),
            )),
            b'\'' => Ok(single_quoted_end(b, i + 1)),
            b'"' => Ok(double_quoted_end(b, i + 1)),
            // A tag: up to whitespace, or a flow indicator inside brackets.
            b'!' => {
                let ends_tag = |c: u8| {
                    is_break(Some(&c)) || (flow && matches!(c, b',' | b'[' | b']' | b'{' | b'}'))
                };
                Ok(i + b[i..].iter().take_while(|&&c| !ends_tag(c)).count())
            }
            b'|' | b'>' if !flow => {
                self.block_scalar_indent = Some(self.indent);
                Ok(line_end(b, i))
            }
            b'-' | b'?' | b':' if is_break(next) || (c == b':' && flow) => Ok(i + 1),
            _ => {
                self.plain = true;
                self.plain_indent = self.indent;
                Ok(i + 1)
            }
        }
    }
}

/// The offset of the newline ending the line that holds `i` (or the end).
fn line_end(b: &[u8], i: usize) -> usize {
    b[i..]
        .iter()
        .position(|&c| c == b'\n')
        .map_or(b.len(), |p| i + p)
}

/// Just past the `'` closing a single-quoted scalar whose text starts at
/// `i` (`''` is an escaped quote), or the end of the input.
fn single_quoted_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() {
        if b[i] == b'\'' {
            if b.get(i + 1) == Some(&b'\'') {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

/// Just past the `"` closing a double-quoted scalar whose text starts at
/// `i` (a backslash escapes the next byte), or the end of the input.
fn double_quoted_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// A serde_yaml error as a [`ConfigError`]: the position moves into
/// `location`, and a leading field path (serde_yaml writes `spec.stages[0]: `
/// before the message) into `path`.
fn convert(error: &serde_yaml::Error, syntax: bool) -> ConfigError {
    let location = error.location().map(|l| Location {
        line: u32::try_from(l.line()).unwrap_or(u32::MAX),
        column: u32::try_from(l.column()).unwrap_or(u32::MAX),
    });
    let mut message = error.to_string();
    if let Some(Location { line, column }) = location {
        message = message.replacen(&format!(" at line {line} column {column}"), "", 1);
    }
    let (path, message) = match message.split_once(": ") {
        Some((path, rest)) if !path.is_empty() && !path.contains(char::is_whitespace) => {
            (path.to_owned(), rest.to_owned())
        }
        _ => (String::new(), message),
    };
    let problem = if syntax {
        Problem::Syntax { message }
    } else {
        Problem::Schema { message }
    };
    ConfigError {
        location,
        ..ConfigError::new(path, problem)
    }
}

/// The resource as one YAML document, in its envelope; `parse_documents`
/// reads it back to an equal resource.
pub fn to_yaml(resource: &Resource) -> Result<String, ConfigError> {
    serde_yaml::to_string(&resource.envelope()).map_err(|e| resource.write_error(e))
}

/// Several resources as one multi-document YAML text.
pub fn to_yaml_documents(resources: &[Resource]) -> Result<String, ConfigError> {
    let mut out = String::new();
    for resource in resources {
        out.push_str("---\n");
        out.push_str(&to_yaml(resource)?);
    }
    Ok(out)
}
