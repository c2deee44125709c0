//! raft-rs logs through `slog`; Hadron through `tracing`. [`logger`]
//! gives a `slog::Logger` whose records become `tracing` events of target
//! `raft` (docs/replication.md section 1, finding 9). Records below the
//! level `tracing` enables are dropped before they are formatted; raft-rs's
//! info records (every vote, per group) become debug events.

use std::fmt::Write as _;

use slog::{Drain, KV, Level, OwnedKVList, Record, Serializer};

/// A drain that forwards to `tracing`.
#[derive(Debug, Clone, Copy)]
struct TracingDrain;

/// A logger for a group's `RawNode`, tagged with the node and group ids.
pub fn logger(node: u64, group: u64) -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!("node" => node, "group" => group))
}

fn enabled(level: Level) -> bool {
    match level {
        Level::Critical | Level::Error => tracing::enabled!(target: "raft", tracing::Level::ERROR),
        Level::Warning => tracing::enabled!(target: "raft", tracing::Level::WARN),
        Level::Info => tracing::enabled!(target: "raft", tracing::Level::DEBUG),
        Level::Debug => tracing::enabled!(target: "raft", tracing::Level::DEBUG),
        Level::Trace => tracing::enabled!(target: "raft", tracing::Level::TRACE),
    }
}

/// Writes key-value pairs as ` key=value`.
struct Pairs(String);

impl Serializer for Pairs {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        if !enabled(record.level()) {
            return Ok(());
        }
        let mut pairs = Pairs(String::new());
        let _ = record.kv().serialize(record, &mut pairs);
        let _ = values.serialize(record, &mut pairs);
        let (msg, kv) = (record.msg(), pairs.0);
        match record.level() {
            Level::Critical | Level::Error => tracing::error!(target: "raft", "{msg}{kv}"),
            Level::Warning => tracing::warn!(target: "raft", "{msg}{kv}"),
            // raft-rs logs every vote and role change at info, per group:
            // too much for a server with thousands of groups. The shard
            // logs each leadership it takes at info itself.
            Level::Info => tracing::debug!(target: "raft", "{msg}{kv}"),
            Level::Debug => tracing::debug!(target: "raft", "{msg}{kv}"),
            Level::Trace => tracing::trace!(target: "raft", "{msg}{kv}"),
        }
        Ok(())
    }

    fn is_enabled(&self, level: Level) -> bool {
        enabled(level)
    }
}
