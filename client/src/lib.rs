//! The Hadron client. Publishing, subscribing and pipeline stage handlers
//! arrive with the streams and pipelines work (issues 3 and 4).

pub use hadron_wire::FRAME_BYTES_MAX;
