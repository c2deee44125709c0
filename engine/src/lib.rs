//! Hadron's storage engine.
//!
//! - [`log`]: the partition log (segments, record batches, sparse index,
//!   group commit, recovery, poisoning, retention).
//! - [`pipeline`]: the per-core stage-completion bitmap index of pipeline
//!   executions (pure, no I/O).
//! - [`storage`]: the [`Storage`](storage::Storage) trait the log is generic
//!   over, with the glommio `DmaFile` implementation (feature `glommio`) and a
//!   simulated, fault-injecting one for tests.
//!
//! The engine does no I/O except through `Storage`, spawns no tasks and uses
//! no locks: a log belongs to one core, and every future it returns is polled
//! there. It does not depend on tokio or on any other workspace crate.

pub mod log;
pub mod notify;
pub mod pipeline;
pub mod storage;

pub use log::{
    AppendError, Appended, CommitLatencies, CommitStats, Damage, DamageFound, Durability, Log,
    LogConfig, LogStats, OpenError, ReadBatches, ReadError, ReadRecords, Recovery, RepairReport,
    Retention, RetentionReport, TailCut,
};
