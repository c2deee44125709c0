//! The Hadron server as a library: the shards, their connections and
//! routing, the configuration, and `hadron repair`. The `hadron` binary
//! (`main.rs`) parses the command line and calls [`serve`] or
//! [`repair::run`]; its client commands (`apply`, `publish`, ...) live in
//! the binary's own `cli` module, the only code that uses the `hadron`
//! client crate.
//!
//! The public surface is what the binary needs, no more: [`serve`] with
//! its [`ServerArgs`], [`repair::run`], [`check_resources_yaml`] (the
//! local check before an apply) and the two names the client commands
//! share with the server ([`DATA_DIR_DEFAULT`], [`TOKEN_ENV`]). The
//! modules behind them are private, so the compiler still reports what
//! nothing uses.

#[cfg_attr(
    not(test),
    expect(
        dead_code,
        unused_imports,
        reason = "the pipeline parts of the config are used once pipelines run"
    )
)]
mod config;
mod failpoint;
mod metrics;
pub mod repair;
#[cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "the shard drives replicated logs from step 4 (docs/replication.md)"
    )
)]
mod replication;
pub mod retry_lines;
mod serve;
mod shard;

pub use config::cluster::PeerSpec;
pub use config::server::{DATA_DIR_DEFAULT, TOKEN_ENV};
pub use serve::{ACK_TIMEOUT_MS_DEFAULT, ServerArgs, check_config, serve};

/// Checks resource documents (the YAML `hadron apply -f` sends) as the
/// server will, so the command line can name the document and field at
/// fault without a round trip.
pub fn check_resources_yaml(yaml: &str) -> Result<(), String> {
    config::parse_documents(yaml)
        .map(drop)
        .map_err(|e| e.to_string())
}
