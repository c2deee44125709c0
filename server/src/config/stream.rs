//! `kind: Stream`: a named, partitioned, append-only log.
//!
//! ```yaml
//! apiVersion: hadron.rs/v1beta1
//! kind: Stream
//! metadata: { name: events }
//! spec:
//!   partitions: 4              # 1..=1024, default 4; fixed once created
//!   retention:                 # default: the server's `retention`
//!     maxAgeMs: 604800000      # delete sealed segments older than 7 days
//!     maxBytes: 10737418240    # per partition
//!   dedupWindowMs: 120000      # default: the server's `dedupWindowMs`; 0 = off
//!   dedupKeysMax: 2097152      # default: the server's `dedupKeysMax`
//!   replicas: 3                # copies of each partition on distinct nodes:
//!                              # default 1, 3 in a cluster of 3+ nodes; at
//!                              # most the node count and 5; above 1 needs
//!                              # `fsync: always` (config/cluster.rs)
//! ```
//!
//! The dedup window remembers the `(source, id)` of each event published in
//! the last `dedupWindowMs`, but at most `dedupKeysMax` of them per
//! partition (up to about 55 bytes each): past that, the oldest batches
//! leave the window first, so at high publish rates the window is shorter
//! than `dedupWindowMs`. Status shows each partition's keys and the age of
//! the oldest one.
//!
//! The partition count defaults to a fixed number rather than to the shard
//! count, because a stream's partitions cannot change after events are
//! written, while the shard count may change between runs: placement maps
//! partitions onto whatever shards exist.
//!
//! A stream's `retention`, when present, replaces the server's default as a
//! whole: `retention: {}` keeps data forever even if the server default
//! deletes it.

use serde::{Deserialize, Serialize};

use super::error::{ConfigError, Problem, ResourceKind};
use super::name::check_resource_name;
use super::server::ServerConfig;

/// The stream a server has when its config declares none.
pub const DEFAULT_STREAM_NAME: &str = "events";
/// Partitions of a stream that does not say.
pub const PARTITIONS_DEFAULT: u32 = 4;
/// The most partitions a stream may have.
pub const PARTITIONS_MAX: u32 = 1024;
/// The longest dedup window: the window's memory grows with it.
pub const DEDUP_WINDOW_MS_MAX: u64 = 24 * 60 * 60 * 1000;
/// The most keys a partition's dedup window may be allowed to hold.
pub const DEDUP_KEYS_MAX_MAX: u64 = 1 << 32;

fn partitions_default() -> u32 {
    PARTITIONS_DEFAULT
}

/// A stream declaration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StreamSpec {
    /// `metadata.name`; filled in from the document's metadata.
    #[serde(skip)]
    pub name: String,
    /// Number of partitions, 1..=[`PARTITIONS_MAX`]. Written out explicitly
    /// when persisted, so a later change of the default never changes an
    /// existing stream.
    #[serde(default = "partitions_default")]
    pub partitions: u32,
    /// Retention per partition; `None` takes the server's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionSpec>,
    /// Idempotent-publish window; `None` takes the server's default, 0 turns
    /// deduplication off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_window_ms: Option<u64>,
    /// The most keys the window holds per partition; `None` takes the
    /// server's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_keys_max: Option<u64>,
    /// Copies of each partition, on distinct nodes; `None` takes the
    /// cluster's default (`cluster::replicas_default`). Checked against
    /// the server by `ServerConfig::check_stream_replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
}

/// Which sealed segments of a partition may be deleted. Both limits are
/// optional; with neither, data is kept forever.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetentionSpec {
    /// Delete a sealed segment once its newest event is older than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_ms: Option<u64>,
    /// Delete the oldest sealed segments while the partition is larger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

impl RetentionSpec {
    /// The engine's form.
    pub fn to_engine(self) -> hadron_engine::Retention {
        hadron_engine::Retention {
            max_age_ms: self.max_age_ms,
            max_bytes: self.max_bytes,
        }
    }

    /// Problems, with paths under `prefix` (like `spec.retention`).
    pub(super) fn errors(&self, prefix: &str) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        for (field, value) in [("maxAgeMs", self.max_age_ms), ("maxBytes", self.max_bytes)] {
            if value == Some(0) {
                errors.push(ConfigError::new(
                    format!("{prefix}.{field}"),
                    Problem::Invalid {
                        reason: "0 would delete all data; leave the field out to keep data forever"
                            .into(),
                    },
                ));
            }
        }
        errors
    }
}

/// What a shard needs to run a stream, defaults resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSettings {
    pub partitions: u32,
    pub retention: hadron_engine::Retention,
    /// 0 when deduplication is off.
    pub dedup_window_ms: u64,
    /// The most keys a partition's window holds.
    pub dedup_keys_max: u64,
}

impl StreamSpec {
    /// A stream with every setting at its default.
    pub fn with_defaults(name: impl Into<String>) -> StreamSpec {
        StreamSpec {
            name: name.into(),
            partitions: PARTITIONS_DEFAULT,
            retention: None,
            dedup_window_ms: None,
            dedup_keys_max: None,
            replicas: None,
        }
    }

    /// Every problem, in field order; empty when valid.
    pub fn errors(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if let Err(reason) = check_resource_name(&self.name) {
            errors.push(ConfigError::new(
                "metadata.name",
                Problem::InvalidName {
                    name: self.name.clone(),
                    reason,
                },
            ));
        }
        if !(1..=PARTITIONS_MAX).contains(&self.partitions) {
            errors.push(ConfigError::new(
                "spec.partitions",
                Problem::OutOfRange {
                    value: self.partitions.into(),
                    min: 1,
                    max: PARTITIONS_MAX.into(),
                },
            ));
        }
        if let Some(retention) = &self.retention {
            errors.extend(retention.errors("spec.retention"));
        }
        if let Some(window) = self.dedup_window_ms
            && window > DEDUP_WINDOW_MS_MAX
        {
            errors.push(ConfigError::new(
                "spec.dedupWindowMs",
                Problem::OutOfRange {
                    value: window,
                    min: 0,
                    max: DEDUP_WINDOW_MS_MAX,
                },
            ));
        }
        if let Some(keys) = self.dedup_keys_max
            && !(1..=DEDUP_KEYS_MAX_MAX).contains(&keys)
        {
            errors.push(ConfigError::new(
                "spec.dedupKeysMax",
                Problem::OutOfRange {
                    value: keys,
                    min: 1,
                    max: DEDUP_KEYS_MAX_MAX,
                },
            ));
        }
        errors
            .into_iter()
            .map(|e| e.in_resource(ResourceKind::Stream, Some(&self.name)))
            .collect()
    }

    /// The first problem, if any.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.errors().into_iter().next() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// The settings a shard runs this stream with, the server's defaults
    /// filling what the stream leaves out.
    pub fn settings(&self, server: &ServerConfig) -> StreamSettings {
        StreamSettings {
            partitions: self.partitions,
            retention: self.retention.unwrap_or(server.retention).to_engine(),
            dedup_window_ms: self.dedup_window_ms.unwrap_or(server.dedup_window_ms),
            dedup_keys_max: self.dedup_keys_max.unwrap_or(server.dedup_keys_max),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let s = StreamSpec::with_defaults(DEFAULT_STREAM_NAME);
        assert_eq!(s.partitions, 4);
        assert!(s.validate().is_ok());
        let server = ServerConfig::default();
        let settings = s.settings(&server);
        assert_eq!(settings.partitions, 4);
        assert_eq!(settings.dedup_window_ms, 120_000);
        assert_eq!(settings.dedup_keys_max, 2 << 20);
        assert_eq!(settings.retention, hadron_engine::Retention::default());
    }

    #[test]
    fn stream_values_override_server_defaults_and_retention_replaces_whole() {
        let server = ServerConfig {
            retention: RetentionSpec {
                max_age_ms: Some(1000),
                max_bytes: Some(1 << 30),
            },
            ..ServerConfig::default()
        };
        let mut s = StreamSpec::with_defaults("orders");
        assert_eq!(s.settings(&server).retention.max_bytes, Some(1 << 30));
        s.retention = Some(RetentionSpec {
            max_age_ms: Some(5),
            max_bytes: None,
        });
        s.dedup_window_ms = Some(0);
        s.dedup_keys_max = Some(1000);
        let settings = s.settings(&server);
        assert_eq!(settings.retention.max_age_ms, Some(5));
        assert_eq!(settings.retention.max_bytes, None);
        assert_eq!(settings.dedup_window_ms, 0);
        assert_eq!(settings.dedup_keys_max, 1000);
    }

    #[test]
    fn errors_name_the_stream_and_field() {
        let mut s = StreamSpec::with_defaults("orders");
        s.partitions = 0;
        let e = s.validate().unwrap_err();
        assert_eq!(
            e.to_string(),
            "Stream \"orders\": spec.partitions: 0 is out of range; allowed: 1 to 1024"
        );
        s.partitions = 1025;
        assert_eq!(s.validate().unwrap_err().path, "spec.partitions");
        s.partitions = 1024;
        s.retention = Some(RetentionSpec {
            max_age_ms: Some(0),
            max_bytes: None,
        });
        assert_eq!(s.validate().unwrap_err().path, "spec.retention.maxAgeMs");
        s.retention = None;
        s.dedup_window_ms = Some(DEDUP_WINDOW_MS_MAX + 1);
        assert_eq!(s.validate().unwrap_err().path, "spec.dedupWindowMs");
        s.dedup_window_ms = None;
        for keys in [0, DEDUP_KEYS_MAX_MAX + 1] {
            s.dedup_keys_max = Some(keys);
            assert_eq!(s.validate().unwrap_err().path, "spec.dedupKeysMax");
        }
        s.dedup_keys_max = None;
        s.name = "Bad_Name".into();
        let e = s.validate().unwrap_err();
        assert_eq!(e.path, "metadata.name");
        assert!(
            e.to_string()
                .starts_with("Stream \"Bad_Name\": metadata.name: invalid name")
        );
    }
}
