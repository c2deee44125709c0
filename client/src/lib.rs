//! The Hadron client: publish events, subscribe to streams, and run
//! pipeline stage handlers, over Hadron's binary protocol
//! (docs/protocol.md), on tokio.
//!
//! ```no_run
//! # async fn deploy_handler(input: hadron::StageInput) -> Result<hadron::NewEvent, std::io::Error> {
//! #     Ok(hadron::NewEvent::new("service.deployed", input.root.data))
//! # }
//! # async fn billing_handler(input: hadron::StageInput) -> Result<hadron::NewEvent, std::io::Error> {
//! #     Ok(hadron::NewEvent::new("service.billed", input.root.data))
//! # }
//! # #[tokio::main]
//! # async fn main() -> Result<(), hadron::Error> {
//! // Event producer which publishes events to stream `events`.
//! let client = hadron::Client::new("http://events.default:7000", Default::default())?;
//! let publisher = client.publisher("example-cloud-app").await?;
//!
//! // Publish a new event based on some application logic.
//! let event = hadron::NewEvent {
//!     ty: "service.created".into(),
//!     subject: Some("svc-42".into()),
//!     data: br#"{"plan":"small"}"#.to_vec(),
//!     ..Default::default()
//! };
//! publisher.publish(event).await?;
//!
//! // Process Pipeline stage `deploy-service` (starts at once; awaiting
//! // the result reports whether the server accepted it).
//! client.pipeline("service-creation", "deploy-service", deploy_handler);
//! client.pipeline("service-creation", "setup-billing", billing_handler).await?;
//! # Ok(())
//! # }
//! ```
//!
//! - `Client::new` parses the address (`http://host:port`, `host:port`,
//!   `host`; port 7000 by default; `https://host:port` for TLS, trusting
//!   `ClientOptions::tls`) and does no network I/O. Connections open on
//!   first use, reopen after failures, and carry many requests at once.
//!   With `ClientOptions::shard_aware` (the default), requests for a
//!   partition go straight to the shard that owns it.
//! - A cluster: `Client::new` takes its nodes separated by commas
//!   (`"http://10.0.0.1:7000,http://10.0.0.2:7000"`, at most
//!   `BOOTSTRAP_URLS_MAX`). The main connection uses the first node that
//!   answers and moves to the next when its node goes away. Publish and
//!   `Client::fetch` go to each partition's leader: on `NotLeader` they
//!   go where it points (or, during an election, back off and ask any
//!   node's Metadata); when the leader's connection fails they forget it,
//!   back off, ask again, and resend the same request (for a publish the
//!   same encoded events, same ids). All within
//!   `ClientOptions::publish_attempts_max` attempts (about 30 s of pauses
//!   by default), none started past `ClientOptions::publish_retry_deadline`
//!   (60 s by default) from the first. Subscriptions and stage handlers
//!   follow the cluster's nodes, even from one URL (a Kubernetes Service
//!   name): they ask Metadata for every node and register on each, and
//!   ask again every `NODES_REFRESH_INTERVAL` (and after a failure), so a
//!   node added later is registered on without a restart (see
//!   `subscribe`).
//! - `Publisher` fills in missing event ids (unique, generated) and sources
//!   (the publisher's name), picks the partition by the subject's hash (or
//!   the hash of source and id), and retries retryable failures with the
//!   same id on the same partition: the server's idempotent publishing
//!   makes that exactly-once.
//! - `Client::subscribe` and `Client::pipeline` run handlers in background
//!   tasks that acknowledge successes, nack errors (with the error's text),
//!   and reconnect and register again after disconnects.
//! - Every failure is an `Error`; `Error::is_retryable` says whether trying
//!   again may help.
//! - With the `cloudevents` feature, `NewEvent`, `Event` and `Delivery`
//!   convert to and from the CloudEvents SDK's `cloudevents::Event`
//!   (`cloudevents-sdk` 0.9; `CloudEventError` names an attribute that
//!   does not convert).

mod batch;
mod client;
#[cfg(feature = "cloudevents")]
mod cloudevents_sdk;
mod conn;
mod endpoint;
mod error;
mod event;
mod metadata;
mod publish;
mod subscribe;
mod tls;

pub use client::routing::BOOTSTRAP_URLS_MAX;
pub use client::tokens::{TOKEN_SECRET_PREFIX, TokenInfo, TokenScope};
pub use client::{Client, ClientOptions, Fetched, STREAM_PROPAGATION_WAIT};
#[cfg(feature = "cloudevents")]
pub use cloudevents_sdk::{CloudEventError, OFFSET_EXTENSION, PARTITION_EXTENSION};
pub use conn::ServerInfo;
pub use endpoint::DEFAULT_PORT;
pub use error::{Error, LeaderAddr};
pub use event::{Event, NewEvent};
pub use hadron_wire::{ErrorCode, FRAME_BYTES_MAX};
pub use metadata::{Metadata, NodeInfo, PartitionInfo, PipelineInfo, StreamInfo};
#[doc(hidden)]
pub use publish::encode_publish_frames;
pub use publish::{DEFAULT_STREAM, Published, Publisher};
pub use subscribe::{
    Delivery, NODES_REFRESH_INTERVAL, PipelineHandle, PipelineStart, StageInput, StartPoint,
    SubscribeOptions, Subscription,
};
pub use tls::TlsOptions;
