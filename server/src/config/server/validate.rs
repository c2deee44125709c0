//! Validation of [`ServerConfig`]: the range of every setting, in field
//! order, and the checks made later against a running server (exposure
//! without a token, an apply's size and the resource counts it leads to).
//!
//! Every message names the setting (its YAML key) and, for a limit, its
//! value, so that a user can find what to change.

use hadron_engine::log::{SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN};
use hadron_engine::storage::IO_ALIGN_BYTES;

use super::*;
use crate::config::error::{ConfigError, Problem, ResourceKind};
use crate::config::stream::{DEDUP_KEYS_MAX_MAX, DEDUP_WINDOW_MS_MAX};
use crate::shard::error::Limit;

fn out_of_range(path: &str, value: u64, min: u64, max: u64) -> ConfigError {
    ConfigError::new(path, Problem::OutOfRange { value, min, max })
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

impl ServerConfig {
    /// Every problem, in field order; empty when valid.
    pub fn errors(&self) -> Vec<ConfigError> {
        let mut errors = self.placement_errors();
        errors.extend(self.storage_errors());
        errors.extend(self.stream_default_errors());
        errors.extend(self.apply_limit_errors());
        errors.extend(self.token_errors());
        errors.extend(self.connection_errors());
        if let Some(cluster) = &self.cluster {
            errors.extend(cluster.errors());
        }
        errors
            .into_iter()
            .map(|e| e.in_resource(ResourceKind::ServerConfig, None))
            .collect()
    }

    /// Refuses a node that other hosts know by a non-loopback address
    /// (its own `cluster.peers` entry: what every node's `NotLeader` hints
    /// and Metadata answers name) but that listens for clients on
    /// loopback: no client on another host could reach it. Checked once
    /// the flags are applied (`--listen` may set what the file does not),
    /// so not part of [`Self::validate`].
    pub fn check_cluster_listen(&self) -> Result<(), ConfigError> {
        match self.cluster_listen_error() {
            Some(e) => Err(e.in_resource(ResourceKind::ServerConfig, None)),
            None => Ok(()),
        }
    }

    fn cluster_listen_error(&self) -> Option<ConfigError> {
        let cluster = self.cluster.as_ref().filter(|c| c.nodes() > 1)?;
        let me = cluster.peer(cluster.node_id)?;
        let host = me
            .address
            .rsplit_once(':')
            .map_or(me.address.as_str(), |(host, _)| host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let named_loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if named_loopback || !self.listen.ip().is_loopback() {
            return None;
        }
        let port = me.address.rsplit_once(':').map_or("7000", |(_, p)| p);
        Some(ConfigError::new(
            "listen",
            Problem::Invalid {
                reason: format!(
                    "cluster.peers names this node (id {}) at {}, but it listens for clients on {} (loopback): clients on other hosts, sent there by the other nodes, could not reach it; set `listen: 0.0.0.0:{port}` (flag --listen) with a token",
                    cluster.node_id, me.address, self.listen
                ),
            },
        ))
    }

    /// Problems with where the server keeps data and listens.
    fn placement_errors(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if self.data_dir.as_os_str().is_empty() {
            errors.push(ConfigError::new(
                "dataDir",
                Problem::Invalid {
                    reason: "must not be empty".into(),
                },
            ));
        }
        if !(1..=SHARDS_MAX).contains(&self.shards) {
            errors.push(out_of_range(
                "shards",
                self.shards.into(),
                1,
                SHARDS_MAX.into(),
            ));
        }
        if self.shard_ports {
            let port = self.listen.port();
            if port == 0 {
                errors.push(ConfigError::new(
                    "listen",
                    Problem::Invalid {
                        reason: "port 0 cannot be combined with `shardPorts: true`, since shard ports are derived from the listen port; pick a port or set `shardPorts: false`".into(),
                    },
                ));
            } else if hadron_wire::shard_port(port, self.shards.saturating_sub(1)).is_none() {
                errors.push(ConfigError::new(
                    "listen",
                    Problem::Invalid {
                        reason: format!(
                            "port {port} leaves no room for {} shard ports above it (listen port + 1 + shard id must be at most 65535)",
                            self.shards
                        ),
                    },
                ));
            }
        }
        errors.extend(self.metrics_listen_error());
        errors
    }

    /// `metricsListen` on a port the client port or a shard port already
    /// takes (port 0 picks a free one, which is never taken).
    fn metrics_listen_error(&self) -> Option<ConfigError> {
        let metrics = self.metrics_listen?;
        let same_ip = metrics.ip() == self.listen.ip()
            || metrics.ip().is_unspecified()
            || self.listen.ip().is_unspecified();
        let taken = metrics.port() != 0
            && same_ip
            && (metrics.port() == self.listen.port()
                || (0..self.shards).any(|s| self.shard_port(s) == Some(metrics.port())));
        taken.then(|| {
            ConfigError::new(
                "metricsListen",
                Problem::Invalid {
                    reason: format!(
                        "port {} is the client port or a shard port (listen {}, {} shards); pick another",
                        metrics.port(),
                        self.listen,
                        self.shards
                    ),
                },
            )
        })
    }

    /// Problems with how segments are written and frames read.
    fn storage_errors(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if let FsyncPolicy::Interval { interval_ms } = self.fsync
            && !(1..=FSYNC_INTERVAL_MS_MAX).contains(&interval_ms)
        {
            errors.push(out_of_range(
                "fsyncIntervalMs",
                interval_ms,
                1,
                FSYNC_INTERVAL_MS_MAX,
            ));
        }
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            errors.push(out_of_range(
                "segmentBytes",
                self.segment_bytes,
                SEGMENT_BYTES_MIN,
                SEGMENT_BYTES_MAX,
            ));
        } else if !self.segment_bytes.is_multiple_of(IO_ALIGN_BYTES) {
            errors.push(ConfigError::new(
                "segmentBytes",
                Problem::Invalid {
                    reason: format!(
                        "{} is not a multiple of {IO_ALIGN_BYTES} (segments are written with O_DIRECT)",
                        self.segment_bytes
                    ),
                },
            ));
        }
        self.validate_preallocate(&mut errors);
        if !(IO_MEMORY_BYTES_MIN..=IO_MEMORY_BYTES_MAX).contains(&self.io_memory_bytes) {
            errors.push(out_of_range(
                "ioMemoryBytes",
                to_u64(self.io_memory_bytes),
                to_u64(IO_MEMORY_BYTES_MIN),
                to_u64(IO_MEMORY_BYTES_MAX),
            ));
        }
        if !(FRAME_BYTES_MIN..=hadron_wire::FRAME_BYTES_MAX).contains(&self.frame_bytes_max) {
            errors.push(out_of_range(
                "frameBytesMax",
                to_u64(self.frame_bytes_max),
                to_u64(FRAME_BYTES_MIN),
                to_u64(hadron_wire::FRAME_BYTES_MAX),
            ));
        }
        errors
    }

    /// Problems with the defaults streams take and the bounds on their readers.
    /// `segmentPreallocateBytes`: a multiple of the I/O alignment from
    /// [`SEGMENT_PREALLOCATE_BYTES_MIN`] to `segmentBytes`.
    fn validate_preallocate(&self, errors: &mut Vec<ConfigError>) {
        let (step, max) = (self.segment_preallocate_bytes, self.segment_bytes);
        if !(SEGMENT_PREALLOCATE_BYTES_MIN..=max).contains(&step) {
            errors.push(out_of_range(
                "segmentPreallocateBytes",
                step,
                SEGMENT_PREALLOCATE_BYTES_MIN,
                max,
            ));
        } else if !step.is_multiple_of(IO_ALIGN_BYTES) {
            errors.push(ConfigError::new(
                "segmentPreallocateBytes",
                Problem::Invalid {
                    reason: format!(
                        "{step} is not a multiple of {IO_ALIGN_BYTES} (files are extended in whole pages)"
                    ),
                },
            ));
        }
    }

    fn stream_default_errors(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if self.dedup_window_ms > DEDUP_WINDOW_MS_MAX {
            errors.push(out_of_range(
                "dedupWindowMs",
                self.dedup_window_ms,
                0,
                DEDUP_WINDOW_MS_MAX,
            ));
        }
        if !(1..=DEDUP_KEYS_MAX_MAX).contains(&self.dedup_keys_max) {
            errors.push(out_of_range(
                "dedupKeysMax",
                self.dedup_keys_max,
                1,
                DEDUP_KEYS_MAX_MAX,
            ));
        }
        for (path, value, max) in [
            ("groupsMax", self.groups_max, GROUPS_MAX_MAX),
            ("ackIdsMax", self.ack_ids_max, ACK_IDS_MAX_MAX),
            (
                "subscriptionsPerConnectionMax",
                self.subscriptions_per_connection_max,
                SUBSCRIPTIONS_PER_CONNECTION_MAX_MAX,
            ),
        ] {
            if !(1..=max).contains(&value) {
                errors.push(out_of_range(path, value.into(), 1, max.into()));
            }
        }
        errors.extend(self.retention.errors("retention"));
        errors
    }

    /// Problems with what one `hadron apply` may make the server hold.
    fn apply_limit_errors(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if !(APPLY_BYTES_MAX_MIN..=hadron_wire::FRAME_BYTES_MAX).contains(&self.apply_bytes_max) {
            errors.push(out_of_range(
                "applyBytesMax",
                to_u64(self.apply_bytes_max),
                to_u64(APPLY_BYTES_MAX_MIN),
                to_u64(hadron_wire::FRAME_BYTES_MAX),
            ));
        }
        for (path, value) in [
            ("streamsMax", self.streams_max),
            ("partitionsMax", self.partitions_max),
            ("pipelinesMax", self.pipelines_max),
        ] {
            if !(1..=RESOURCES_MAX_MAX).contains(&value) {
                errors.push(out_of_range(
                    path,
                    value.into(),
                    1,
                    RESOURCES_MAX_MAX.into(),
                ));
            }
        }
        if !(1..=META_COMPACT_EVERY_ENTRIES_MAX).contains(&self.meta_compact_every_entries) {
            errors.push(out_of_range(
                "metaCompactEveryEntries",
                self.meta_compact_every_entries,
                1,
                META_COMPACT_EVERY_ENTRIES_MAX,
            ));
        }
        if !(1..=META_VOTERS_MAX).contains(&self.meta_voters) {
            errors.push(out_of_range(
                "metaVoters",
                self.meta_voters.into(),
                1,
                META_VOTERS_MAX.into(),
            ));
        }
        if !(1..=TOKENS_MAX_MAX).contains(&self.tokens_max) {
            errors.push(out_of_range(
                "tokensMax",
                self.tokens_max.into(),
                1,
                TOKENS_MAX_MAX.into(),
            ));
        }
        errors
    }

    /// Problems with the handshake token.
    fn token_errors(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if let Some(Token(secret)) = &self.token
            && (secret.is_empty() || secret.len() > TOKEN_BYTES_MAX)
        {
            errors.push(ConfigError::new(
                "token",
                Problem::Invalid {
                    reason: format!(
                        "must be 1 to {TOKEN_BYTES_MAX} bytes (it has {}); leave it out to accept any client",
                        secret.len()
                    ),
                },
            ));
        }
        errors
    }

    /// Problems with the connection limits and start-up settings.
    fn connection_errors(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if !(1..=3_600_000).contains(&self.shard_start_timeout_ms) {
            errors.push(out_of_range(
                "shardStartTimeoutMs",
                self.shard_start_timeout_ms,
                1,
                3_600_000,
            ));
        }
        if !(1..=1_000_000).contains(&self.connections_max) {
            errors.push(out_of_range(
                "connectionsMax",
                self.connections_max.into(),
                1,
                1_000_000,
            ));
        }
        if !(1..=3_600_000).contains(&self.handshake_timeout_ms) {
            errors.push(out_of_range(
                "handshakeTimeoutMs",
                self.handshake_timeout_ms,
                1,
                3_600_000,
            ));
        }
        if !(1..=600_000).contains(&self.drain_timeout_ms) {
            errors.push(out_of_range(
                "drainTimeoutMs",
                self.drain_timeout_ms,
                1,
                600_000,
            ));
        }
        if self.idle_timeout_ms > 86_400_000 {
            errors.push(out_of_range(
                "idleTimeoutMs",
                self.idle_timeout_ms,
                0,
                86_400_000,
            ));
        }
        if !(HANDSHAKE_FRAME_BYTES_MIN..=self.frame_bytes_max)
            .contains(&self.handshake_frame_bytes_max)
        {
            errors.push(out_of_range(
                "handshakeFrameBytesMax",
                to_u64(self.handshake_frame_bytes_max),
                to_u64(HANDSHAKE_FRAME_BYTES_MIN),
                to_u64(self.frame_bytes_max),
            ));
        }
        // One answer of the largest frame must always fit.
        if !(self.frame_bytes_max..=1 << 32).contains(&self.outbox_bytes_max) {
            errors.push(out_of_range(
                "outboxBytesMax",
                to_u64(self.outbox_bytes_max),
                to_u64(self.frame_bytes_max),
                1 << 32,
            ));
        }
        if !(1..=1_000_000).contains(&self.deliveries_in_flight_max) {
            errors.push(out_of_range(
                "deliveriesInFlightMax",
                self.deliveries_in_flight_max.into(),
                1,
                1_000_000,
            ));
        }
        if !(1..=65_536).contains(&self.requests_in_flight_max) {
            errors.push(out_of_range(
                "requestsInFlightMax",
                self.requests_in_flight_max.into(),
                1,
                65_536,
            ));
        }
        errors
    }

    /// Refuses to serve anyone who can reach a non-loopback address without
    /// a token, unless `insecureNoToken` says so. Checked once the token
    /// from the environment is known, so not part of [`Self::validate`].
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        if self.token.is_none() && !self.listen.ip().is_loopback() && !self.insecure_no_token {
            return Err(ConfigError::new(
                "token",
                Problem::Invalid {
                    reason: format!(
                        "listening on {} (beyond loopback) with no token would serve anyone; set `token:` (or HADRON_TOKEN), or say `insecureNoToken: true` (flag --insecure-no-token) to allow it",
                        self.listen
                    ),
                },
            )
            .in_resource(ResourceKind::ServerConfig, None));
        }
        Ok(())
    }

    /// The first problem, if any.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.errors().into_iter().next() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Refuses an apply's YAML longer than `applyBytesMax`; the message
    /// names the setting and its value.
    pub fn check_apply_bytes(&self, bytes: usize) -> Result<(), Limit> {
        if bytes <= self.apply_bytes_max {
            return Ok(());
        }
        Err(Limit::ApplyBytes {
            bytes,
            max: self.apply_bytes_max,
        })
    }

    /// Refuses resources that would grow a count past its limit (`before`
    /// is what the server holds, `after` what it would hold). A count
    /// already past its limit may stay or shrink. The message names the
    /// setting and its value.
    pub fn check_resource_counts(
        &self,
        before: ResourceCounts,
        after: ResourceCounts,
    ) -> Result<(), Limit> {
        let checks = [
            (
                "streamsMax",
                self.streams_max,
                before.streams,
                after.streams,
                "streams",
            ),
            (
                "partitionsMax",
                self.partitions_max,
                before.partitions,
                after.partitions,
                "stream partitions in all",
            ),
            (
                "pipelinesMax",
                self.pipelines_max,
                before.pipelines,
                after.pipelines,
                "pipelines",
            ),
            (
                "partitionsMax",
                self.partitions_max,
                before.pipeline_runs,
                after.pipeline_runs,
                "pipeline runs in all (one per pipeline and source partition)",
            ),
            (
                "tokensMax",
                self.tokens_max,
                before.tokens,
                after.tokens,
                "tokens",
            ),
        ];
        for (setting, max, before, after, what) in checks {
            if after > u64::from(max) && after > before {
                return Err(Limit::Resources {
                    setting,
                    max,
                    would_hold: after,
                    what,
                });
            }
        }
        Ok(())
    }
}
