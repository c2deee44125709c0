//! Configuration: server settings and resource definitions (Streams,
//! Pipelines and Tokens), parsed from YAML, validated, and written back for
//! persistence.
//!
//! # The config file
//!
//! `hadron server --config FILE` reads one multi-document YAML file. The
//! first document holds server settings as a plain mapping (every field
//! optional; see [`server`] for the list and defaults) and may say
//! `kind: ServerConfig`; the documents after it declare resources in the
//! same form `hadron apply -f` takes:
//!
//! ```yaml
//! dataDir: /var/lib/hadron
//! listen: 0.0.0.0:7000
//! fsync: always
//! ---
//! apiVersion: hadron.rs/v1beta1
//! kind: Stream
//! metadata: { name: events }
//! spec: { partitions: 8 }
//! ---
//! apiVersion: hadron.rs/v1beta1
//! kind: Pipeline
//! metadata: { name: service-creation }
//! spec:
//!   sourceStream: events
//!   triggers: [service.created]
//!   stages:
//!     - name: deploy-service
//! ```
//!
//! With no file, or a file that declares no Stream, the server has the
//! stream `events` with [`stream::PARTITIONS_DEFAULT`] (4) partitions: a
//! fixed number, since partitions cannot change once written while the shard
//! count can.
//!
//! # Layout
//!
//! - `error`: [`ConfigError`], which names document, resource, field and
//!   position.
//! - `name`: naming rules.
//! - `server`, `stream`, `pipeline`, `trigger`, `token`: the types, their defaults
//!   and validation; `pipeline` also builds the engine's [`PipelinePlan`].
//!   The larger two keep their checks beside them: `server/validate.rs`,
//!   `pipeline/plan.rs`.
//! - `document`: the resource envelope, [`parse_documents`] and
//!   [`parse_config_file`].
//! - `yaml`: the only file that uses the YAML library.
//! - `tls`: the `tls:` setting and its PEM files made a rustls
//!   configuration.
//! - `tests/`: whole-module tests by topic (pipelines, documents, settings,
//!   bounds), sharing the seed's documents in `tests/mod.rs`.

pub mod cluster;
pub mod document;
pub mod error;
pub mod name;
pub mod pipeline;
pub mod placement;
pub mod registry;
pub mod server;
pub mod stream;
pub mod tls;
pub mod token;
pub mod trigger;
pub mod yaml;

#[cfg(test)]
mod tests;

/// The `apiVersion` of every resource document.
pub const API_VERSION: &str = "hadron.rs/v1beta1";

pub use document::{Resource, parse_config_file, parse_documents, to_json};
pub use error::{ConfigError, Location, Problem, ResourceKind};
pub use pipeline::{
    PipelinePlan, PipelineSpec, PlannedStage, RetryPolicy, RetrySpec, StageSpec, StartPoint,
};
pub use server::{FsyncPolicy, ServerConfig};
pub use stream::{RetentionSpec, StreamSettings, StreamSpec};
pub use token::{Permission, TokenSpec};
pub use trigger::TriggerSet;
pub use yaml::{to_yaml, to_yaml_documents};
