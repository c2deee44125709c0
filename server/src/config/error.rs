//! The one error type of the config module.
//!
//! A [`ConfigError`] says where a problem is (document number, resource kind
//! and name, field path, and line/column where the YAML parser knows them)
//! and what it is ([`Problem`]). Its `Display` puts all of that on one line,
//! in the order a user reads a file:
//!
//! ```text
//! document 2 (Pipeline "service-creation"): spec.stages[2].dependencies[0]: unknown stage "deploy"; ...
//! ```

use std::fmt;

/// What kind of resource a document or error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    /// The settings document of a config file.
    ServerConfig,
    /// `kind: Stream`.
    Stream,
    /// `kind: Pipeline`.
    Pipeline,
    /// `kind: Token`.
    Token,
}

impl ResourceKind {
    /// The spelling used in YAML `kind:` fields.
    pub const fn as_str(self) -> &'static str {
        match self {
            ResourceKind::ServerConfig => "ServerConfig",
            ResourceKind::Stream => "Stream",
            ResourceKind::Pipeline => "Pipeline",
            ResourceKind::Token => "Token",
        }
    }

    /// Parses a YAML `kind:` value.
    pub fn from_kind(kind: &str) -> Option<ResourceKind> {
        match kind {
            "ServerConfig" => Some(ResourceKind::ServerConfig),
            "Stream" => Some(ResourceKind::Stream),
            "Pipeline" => Some(ResourceKind::Pipeline),
            "Token" => Some(ResourceKind::Token),
            _ => None,
        }
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A position in the YAML input, both 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: u32,
    pub column: u32,
}

/// What is wrong. Messages say what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// The YAML itself does not parse.
    Syntax { message: String },
    /// The YAML parses but does not fit the schema: wrong type, unknown or
    /// missing field. The message comes from the deserializer and names the
    /// field.
    Schema { message: String },
    /// A document has no `kind`.
    MissingKind,
    /// A document's `kind` is not one this server knows.
    UnknownKind {
        kind: String,
        expected: &'static str,
    },
    /// `apiVersion` is missing or not [`super::API_VERSION`].
    UnsupportedApiVersion { found: Option<String> },
    /// A resource, stage or stream name breaks the naming rules.
    InvalidName { name: String, reason: &'static str },
    /// Two documents declare the same resource.
    DuplicateResource { first_document: u32 },
    /// A server settings document given where it has no meaning, or twice.
    UnexpectedServerConfig { reason: &'static str },
    /// A number outside its allowed range (both ends inclusive).
    OutOfRange { value: u64, min: u64, max: u64 },
    /// Fields that do not fit together.
    Invalid { reason: String },
    /// A pipeline with an empty `stages` list.
    NoStages,
    /// More stages than the bitmap index holds.
    TooManyStages { count: usize, max: usize },
    /// A stage name used twice.
    DuplicateStage { name: String, first_index: usize },
    /// A dependency naming no stage of the pipeline.
    UnknownDependency { name: String },
    /// A dependency listed twice by one stage.
    DuplicateDependency { name: String },
    /// Stages that depend on each other in a loop, in data-flow order, the
    /// first repeated at the end: `a -> b -> a`.
    Cycle { stages: Vec<String> },
    /// Every stage has dependencies, so no execution could start.
    NoRootStage,
    /// `sourceStream` names a stream the server does not have.
    UnknownStream { name: String },
    /// A trigger pattern that cannot match as intended.
    InvalidTrigger {
        pattern: String,
        reason: &'static str,
    },
    /// More trigger patterns than allowed.
    TooManyTriggers { count: usize, max: usize },
    /// YAML this server does not read: anchors and aliases, or nesting
    /// deeper than any resource needs (see `yaml.rs`).
    YamlRefused { reason: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Syntax { message } => write!(f, "invalid YAML: {message}"),
            Problem::Schema { message } => f.write_str(message),
            Problem::MissingKind => f.write_str(
                "missing field `kind`; every document after the first needs `kind: Stream` or `kind: Pipeline`",
            ),
            Problem::UnknownKind { kind, expected } => {
                write!(f, "unknown kind {kind:?}; expected {expected}")
            }
            Problem::UnsupportedApiVersion { found: None } => write!(
                f,
                "missing field `apiVersion`; add `apiVersion: {}`",
                super::API_VERSION
            ),
            Problem::UnsupportedApiVersion { found: Some(found) } => write!(
                f,
                "unsupported apiVersion {found:?}; this server reads {:?}",
                super::API_VERSION
            ),
            Problem::InvalidName { name, reason } => write!(f, "invalid name {name:?}: {reason}"),
            Problem::DuplicateResource { first_document } => write!(
                f,
                "already declared in document {first_document}; each name may be declared once per file"
            ),
            Problem::UnexpectedServerConfig { reason } => f.write_str(reason),
            Problem::OutOfRange { value, min, max } => {
                write!(f, "{value} is out of range; allowed: {min} to {max}")
            }
            Problem::Invalid { reason } => f.write_str(reason),
            Problem::NoStages => f.write_str("a pipeline needs at least one stage"),
            Problem::TooManyStages { count, max } => {
                write!(f, "{count} stages; a pipeline may have at most {max}")
            }
            Problem::DuplicateStage { name, first_index } => write!(
                f,
                "duplicate stage name {name:?} (first used by spec.stages[{first_index}]); stage names must be unique"
            ),
            Problem::UnknownDependency { name } => {
                write!(f, "unknown stage {name:?}; dependencies must name stages of this pipeline")
            }
            Problem::DuplicateDependency { name } => {
                write!(f, "stage {name:?} is listed twice; list each dependency once")
            }
            Problem::Cycle { stages } => write!(
                f,
                "dependency cycle: {}; break the cycle by removing one of these dependencies",
                stages.join(" -> ")
            ),
            Problem::NoRootStage => f.write_str(
                "no root stage: every stage has dependencies, so no execution could start; at least one stage must have none",
            ),
            Problem::UnknownStream { name } => {
                write!(f, "unknown stream {name:?}; declare it with `kind: Stream` first")
            }
            Problem::InvalidTrigger { pattern, reason } => {
                write!(f, "invalid trigger {pattern:?}: {reason}")
            }
            Problem::TooManyTriggers { count, max } => {
                write!(f, "{count} triggers; a pipeline may have at most {max}")
            }
            Problem::YamlRefused { reason } => f.write_str(reason),
        }
    }
}

/// A configuration problem and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The 1-based document number in a multi-document input, when known.
    pub document: Option<u32>,
    /// The resource kind, when known.
    pub kind: Option<ResourceKind>,
    /// The resource name (`metadata.name`), when known.
    pub name: Option<String>,
    /// The field, like `spec.stages[2].dependencies[0]`; empty for a whole
    /// document.
    pub path: String,
    /// Where the YAML parser saw the problem, when it did.
    pub location: Option<Location>,
    /// What is wrong.
    pub problem: Problem,
}

impl ConfigError {
    /// An error at `path`, with no document or resource context yet.
    pub fn new(path: impl Into<String>, problem: Problem) -> ConfigError {
        ConfigError {
            document: None,
            kind: None,
            name: None,
            path: path.into(),
            location: None,
            problem,
        }
    }

    /// Sets the resource context unless it is already set.
    pub fn in_resource(mut self, kind: ResourceKind, name: Option<&str>) -> ConfigError {
        if self.kind.is_none() {
            self.kind = Some(kind);
        }
        if self.name.is_none() {
            self.name = name.map(str::to_owned);
        }
        self
    }

    /// Sets the document number unless it is already set.
    pub fn in_document(mut self, document: u32) -> ConfigError {
        if self.document.is_none() {
            self.document = Some(document);
        }
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let resource = match (&self.kind, &self.name) {
            (Some(kind), Some(name)) => Some(format!("{kind} {name:?}")),
            (Some(kind), None) => Some(kind.to_string()),
            (None, Some(name)) => Some(format!("{name:?}")),
            (None, None) => None,
        };
        match (self.document, resource) {
            (Some(document), Some(resource)) => write!(f, "document {document} ({resource}): ")?,
            (Some(document), None) => write!(f, "document {document}: ")?,
            (None, Some(resource)) => write!(f, "{resource}: ")?,
            (None, None) => {}
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}", self.problem)?;
        if let Some(Location { line, column }) = self.location {
            write!(f, " (line {line}, column {column})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_puts_document_resource_path_and_location_in_reading_order() {
        let mut e = ConfigError::new(
            "spec.stages[2].dependencies[0]",
            Problem::UnknownDependency {
                name: "deploy".into(),
            },
        )
        .in_resource(ResourceKind::Pipeline, Some("service-creation"));
        assert_eq!(
            e.to_string(),
            "Pipeline \"service-creation\": spec.stages[2].dependencies[0]: unknown stage \"deploy\"; dependencies must name stages of this pipeline"
        );
        e = e.in_document(3);
        e.location = Some(Location { line: 7, column: 9 });
        assert!(
            e.to_string()
                .starts_with("document 3 (Pipeline \"service-creation\"): spec.stages[2]")
        );
        assert!(e.to_string().ends_with("(line 7, column 9)"));
    }

    #[test]
    fn context_already_set_is_kept() {
        let e = ConfigError::new("spec", Problem::NoStages)
            .in_resource(ResourceKind::Stream, Some("a"))
            .in_resource(ResourceKind::Pipeline, Some("b"))
            .in_document(1)
            .in_document(2);
        assert_eq!(e.kind, Some(ResourceKind::Stream));
        assert_eq!(e.name.as_deref(), Some("a"));
        assert_eq!(e.document, Some(1));
    }
}
