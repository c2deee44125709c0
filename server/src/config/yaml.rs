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
//! Each document is read twice: first as a generic value, to learn its
//! `kind` and `metadata.name` even when the rest does not fit the schema,
//! then into the type its kind selects, which keeps the parser's positions
//! and field paths in the errors.

use serde::Deserialize;
use serde_yaml::{Deserializer, Value};

use super::document::{Envelope, RawBody, RawDocument, Resource};
use super::error::{ConfigError, Location, Problem, ResourceKind};
use super::pipeline::PipelineSpec;
use super::server::ServerConfigDoc;
use super::stream::StreamSpec;

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
    let mut heads: Vec<Option<Head>> = Vec::new();
    for (number, document) in (1..).zip(Deserializer::from_str(input)) {
        // The loader repeats a syntax error for every later document, so
        // stop at the first.
        let value =
            Value::deserialize(document).map_err(|e| convert(&e, true).in_document(number))?;
        if value.is_null() {
            heads.push(None);
            continue;
        }
        let first = heads.iter().all(Option::is_none);
        heads.push(Some(
            head(
                &value,
                first && first_may_be_settings,
                first_may_be_settings,
            )
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
        };
        documents.push(RawDocument { number, body });
    }
    Ok(documents)
}

/// The kind and name of a document.
fn head(
    value: &Value,
    kindless_is_settings: bool,
    settings_allowed: bool,
) -> Result<Head, ConfigError> {
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let with_name = |e: ConfigError| match &name {
        Some(name) => ConfigError {
            name: Some(name.clone()),
            ..e
        },
        None => e,
    };
    let kind = match value.get("kind") {
        None if kindless_is_settings => ResourceKind::ServerConfig,
        None => return Err(with_name(ConfigError::new("", Problem::MissingKind))),
        Some(Value::String(kind)) => match ResourceKind::from_kind(kind) {
            Some(kind) => kind,
            None => {
                return Err(with_name(ConfigError::new(
                    "kind",
                    Problem::UnknownKind {
                        kind: kind.clone(),
                        expected: if settings_allowed {
                            "ServerConfig, Stream or Pipeline"
                        } else {
                            "Stream or Pipeline"
                        },
                    },
                )));
            }
        },
        Some(_) => {
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
