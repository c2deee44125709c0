//! Documents and resources: what `hadron apply -f` and the config file hold.
//!
//! Every resource document has the same envelope:
//!
//! ```yaml
//! apiVersion: hadron.rs/v1beta1
//! kind: Stream | Pipeline | Token
//! metadata: { name: NAME }
//! spec: { ... }
//! ```
//!
//! A config file is the same multi-document YAML with server settings
//! first: the first document may be a plain mapping of settings (no `kind`),
//! or a document with `kind: ServerConfig` (and optionally `apiVersion`) may
//! appear anywhere, once. A config file that declares no Stream gets the
//! stream `events` with default settings, and its pipelines must read from
//! streams declared in the same file (or `events`). `hadron apply` input
//! holds only Streams, Pipelines and Tokens, and pipelines' source streams are
//! checked later, against the server's streams. A Token's stream names are
//! not checked against the streams: a token may name a stream before it
//! exists.
//!
//! Documents are numbered from 1 in the order they appear, counting empty
//! ones, so the number matches what a reader counts between `---` lines.
//! This file is free of YAML: the parser lives in `yaml.rs`, and the same
//! resources can be written as JSON ([`to_json`]), which the YAML reader also
//! reads, since YAML is a superset of JSON.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::API_VERSION;
use super::error::{ConfigError, Problem, ResourceKind};
use super::pipeline::PipelineSpec;
use super::server::{ServerConfig, ServerConfigDoc};
use super::stream::{DEFAULT_STREAM_NAME, StreamSpec};
use super::token::TokenSpec;
use super::yaml;

/// A declared resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    Stream(StreamSpec),
    Pipeline(PipelineSpec),
    Token(TokenSpec),
}

impl Resource {
    pub fn kind(&self) -> ResourceKind {
        match self {
            Resource::Stream(_) => ResourceKind::Stream,
            Resource::Pipeline(_) => ResourceKind::Pipeline,
            Resource::Token(_) => ResourceKind::Token,
        }
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        match self {
            Resource::Stream(stream) => &stream.name,
            Resource::Pipeline(pipeline) => &pipeline.name,
            Resource::Token(token) => &token.name,
        }
    }
}

/// `metadata`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Metadata {
    pub name: String,
}

/// The common shape of resource documents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct Envelope<S> {
    /// Optional here so that its absence gets a message saying what to add.
    #[serde(default)]
    pub api_version: Option<String>,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: S,
}

impl<'a, S> Envelope<&'a S> {
    /// The envelope of a resource about to be written.
    fn wrap(kind: ResourceKind, name: &str, spec: &'a S) -> Envelope<&'a S> {
        Envelope {
            api_version: Some(API_VERSION.to_owned()),
            kind: kind.as_str().to_owned(),
            metadata: Metadata {
                name: name.to_owned(),
            },
            spec,
        }
    }
}

/// One document as the YAML reader hands it over, before validation.
#[derive(Debug)]
pub(super) enum RawBody {
    Settings(Box<ServerConfigDoc>),
    Stream(Envelope<StreamSpec>),
    Pipeline(Envelope<PipelineSpec>),
    Token(Envelope<TokenSpec>),
}

/// A non-empty document and its 1-based number.
#[derive(Debug)]
pub(super) struct RawDocument {
    pub number: u32,
    pub body: RawBody,
}

/// A resource in its envelope, ready to be written by any serde format.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(super) enum EnvelopeRef<'a> {
    Stream(Envelope<&'a StreamSpec>),
    Pipeline(Envelope<&'a PipelineSpec>),
    Token(Envelope<&'a TokenSpec>),
}

impl Resource {
    /// This resource in its document envelope.
    pub(super) fn envelope(&self) -> EnvelopeRef<'_> {
        match self {
            Resource::Stream(s) => {
                EnvelopeRef::Stream(Envelope::wrap(ResourceKind::Stream, &s.name, s))
            }
            Resource::Pipeline(p) => {
                EnvelopeRef::Pipeline(Envelope::wrap(ResourceKind::Pipeline, &p.name, p))
            }
            Resource::Token(t) => {
                EnvelopeRef::Token(Envelope::wrap(ResourceKind::Token, &t.name, t))
            }
        }
    }

    /// An error about writing this resource out.
    pub(super) fn write_error(&self, reason: impl std::fmt::Display) -> ConfigError {
        ConfigError::new(
            "",
            Problem::Invalid {
                reason: format!("cannot be written: {reason}"),
            },
        )
        .in_resource(self.kind(), Some(self.name()))
    }
}

/// The resource as one JSON document, in the same envelope as YAML;
/// [`parse_documents`] reads it back.
pub fn to_json(resource: &Resource) -> Result<String, ConfigError> {
    serde_json::to_string_pretty(&resource.envelope()).map_err(|e| resource.write_error(e))
}

/// The name from the envelope, after checking `apiVersion`.
fn open_envelope<S>(
    envelope: Envelope<S>,
    number: u32,
    kind: ResourceKind,
) -> Result<(String, S), ConfigError> {
    let context = |e: ConfigError| {
        e.in_document(number)
            .in_resource(kind, Some(&envelope.metadata.name))
    };
    match &envelope.api_version {
        Some(version) if version == API_VERSION => {}
        found => {
            return Err(context(ConfigError::new(
                "apiVersion",
                Problem::UnsupportedApiVersion {
                    found: found.clone(),
                },
            )));
        }
    }
    Ok((envelope.metadata.name, envelope.spec))
}

/// Builds and checks one resource. Pipelines are checked with
/// `stream_exists`.
fn resource_of(
    body: RawBody,
    number: u32,
    stream_exists: &dyn Fn(&str) -> bool,
) -> Result<Option<Resource>, ConfigError> {
    let resource = match body {
        RawBody::Settings(_) => return Ok(None),
        RawBody::Stream(envelope) => {
            let (name, mut spec) = open_envelope(envelope, number, ResourceKind::Stream)?;
            spec.name = name;
            spec.validate().map_err(|e| e.in_document(number))?;
            Resource::Stream(spec)
        }
        RawBody::Pipeline(envelope) => {
            let (name, mut spec) = open_envelope(envelope, number, ResourceKind::Pipeline)?;
            spec.name = name;
            spec.plan(stream_exists)
                .map_err(|e| e.in_document(number))?;
            Resource::Pipeline(spec)
        }
        RawBody::Token(envelope) => {
            let (name, mut spec) = open_envelope(envelope, number, ResourceKind::Token)?;
            spec.name = name;
            spec.validate().map_err(|e| e.in_document(number))?;
            Resource::Token(spec)
        }
    };
    Ok(Some(resource))
}

/// Refuses a second resource of the same kind and name.
fn check_unique(
    seen: &mut HashMap<(ResourceKind, String), u32>,
    resource: &Resource,
    number: u32,
) -> Result<(), ConfigError> {
    let key = (resource.kind(), resource.name().to_owned());
    if let Some(&first_document) = seen.get(&key) {
        return Err(ConfigError::new(
            "metadata.name",
            Problem::DuplicateResource { first_document },
        )
        .in_document(number)
        .in_resource(resource.kind(), Some(resource.name())));
    }
    seen.insert(key, number);
    Ok(())
}

/// Parses `hadron apply -f` input: multi-document YAML (or JSON) of Streams,
/// Pipelines and Tokens, each validated. Pipelines' source streams are not checked
/// here; check them with [`PipelineSpec::plan`] against the server's streams.
pub fn parse_documents(input: &str) -> Result<Vec<Resource>, ConfigError> {
    let mut resources = Vec::new();
    let mut seen = HashMap::new();
    for document in yaml::read_documents(input, false)? {
        if let RawBody::Settings(_) = document.body {
            return Err(ConfigError::new(
                "kind",
                Problem::UnexpectedServerConfig {
                    reason: "server settings belong in the config file given to `hadron server --config`; `hadron apply` takes Streams, Pipelines and Tokens",
                },
            )
            .in_document(document.number)
            .in_resource(ResourceKind::ServerConfig, None));
        }
        if let Some(resource) = resource_of(document.body, document.number, &|_| true)? {
            check_unique(&mut seen, &resource, document.number)?;
            resources.push(resource);
        }
    }
    Ok(resources)
}

/// Parses a config file: server settings and the resources it declares
/// (see the module docs for the shape). Resources come back in document
/// order, the default stream `events` first when the file declares no
/// stream.
pub fn parse_config_file(input: &str) -> Result<(ServerConfig, Vec<Resource>), ConfigError> {
    let documents = yaml::read_documents(input, true)?;
    let mut settings: Option<(u32, ServerConfig)> = None;
    let mut streams: Vec<String> = documents
        .iter()
        .filter_map(|d| match &d.body {
            RawBody::Stream(envelope) => Some(envelope.metadata.name.clone()),
            _ => None,
        })
        .collect();
    let mut resources = Vec::new();
    if streams.is_empty() {
        streams.push(DEFAULT_STREAM_NAME.to_owned());
        resources.push(Resource::Stream(StreamSpec::with_defaults(
            DEFAULT_STREAM_NAME,
        )));
    }
    let stream_exists = |name: &str| streams.iter().any(|s| s == name);
    let mut seen = HashMap::new();
    for document in documents {
        let number = document.number;
        if let RawBody::Settings(doc) = document.body {
            if settings.is_some() {
                return Err(ConfigError::new(
                    "kind",
                    Problem::UnexpectedServerConfig {
                        reason: "a config file holds one settings document; merge the two",
                    },
                )
                .in_document(number)
                .in_resource(ResourceKind::ServerConfig, None));
            }
            let config = doc.resolve().map_err(|e| e.in_document(number))?;
            settings = Some((number, config));
        } else if let Some(resource) = resource_of(document.body, number, &stream_exists)? {
            check_unique(&mut seen, &resource, number)?;
            resources.push(resource);
        }
    }
    let config = settings.map(|(_, config)| config).unwrap_or_default();
    Ok((config, resources))
}
