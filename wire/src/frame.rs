//! Framing: how frames are delimited on a byte stream, and how an untrusted
//! frame body becomes a verified `FrameRef`. Sans-IO: the caller reads bytes
//! however it likes, asks `check` whether a whole frame is buffered, and
//! hands the body to `decode`.
//!
//! ```text
//! offset 0          4                                   4 + n
//!        +----------+-----------------------------------+
//!        | n: u32   | n bytes: a `Frame` flatbuffer     |
//!        | little-  | finished with plain `finish()`    |
//!        | endian   | (no size prefix, no file id)      |
//!        +----------+-----------------------------------+
//!        1 <= n <= Limits::frame_bytes_max
//! ```
//!
//! Invariants:
//! - `check` never accepts a declared length of 0 or above
//!   `frame_bytes_max`; it looks at nothing but the 4-byte prefix.
//! - `decode` runs the flatbuffers verifier, with this crate's explicit
//!   depth, table and size limits, over the whole body before any field is
//!   read, and only then converts the body into a typed `Message`. Frames
//!   with a `Publish` body go through a verifier written for them
//!   (`frame/verify.rs`) that accepts exactly what the generic one does;
//!   every other frame, and every error message, comes from the generic
//!   verifier.
//! - Nothing here panics on any input; every rejection is a `Result`.

use core::fmt;

use crate::ErrorCode;
use crate::generated as fb;
use crate::message::Message;

mod verify;

/// Bytes in the length prefix of every frame.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// The default limit on table nesting. The deepest legal frame is
/// Frame > MetadataOk > StreamInfo > PartitionInfo (4); the slack allows
/// for later additions without a config change.
pub const DEPTH_MAX_DEFAULT: usize = 8;

/// The default limit on tables in one frame. Every repeated table in a legal
/// frame costs at least 8 bytes: its vtable offset and its slot in the
/// parent vector (a `PartitionInfo` with both fields at their defaults; the
/// tables with a required field, `EventBytes`, `Record`, `StageInput`,
/// `StageAck`, `StreamInfo`, `PipelineInfo`, cost at least 16). So a legal
/// frame of `FRAME_BYTES_MAX` bytes never holds more tables than this; the
/// limit exists to stop shared-subtable "zip bombs". Raise it with
/// `frame_bytes_max`.
pub const TABLES_MAX_DEFAULT: usize = 1 << 21;

/// The smallest number of bytes a repeated table occupies (see above).
const TABLE_BYTES_MIN: usize = 8;

const _: () = assert!(crate::FRAME_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(crate::FRAME_BYTES_MAX / TABLE_BYTES_MIN <= TABLES_MAX_DEFAULT);

/// Limits applied to every untrusted frame and event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest frame body (length prefix excluded) accepted.
    pub frame_bytes_max: usize,
    /// The deepest table nesting the verifier accepts.
    pub depth_max: usize,
    /// The most tables the verifier visits in one buffer.
    pub tables_max: usize,
}

impl Limits {
    /// `FRAME_BYTES_MAX`, `DEPTH_MAX_DEFAULT`, `TABLES_MAX_DEFAULT`.
    pub const DEFAULT: Limits = Limits {
        frame_bytes_max: crate::FRAME_BYTES_MAX,
        depth_max: DEPTH_MAX_DEFAULT,
        tables_max: TABLES_MAX_DEFAULT,
    };

    /// The verifier options these limits imply. The apparent size (bytes
    /// visited if shared subobjects were expanded) may be twice the frame
    /// size, which allows peers to deduplicate strings but not to build
    /// exponential DAGs.
    pub fn verifier_options(&self) -> flatbuffers::VerifierOptions {
        flatbuffers::VerifierOptions {
            max_depth: self.depth_max,
            max_tables: self.tables_max,
            max_apparent_size: self.frame_bytes_max.saturating_mul(2),
            ignore_missing_null_terminator: false,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// Why `check` rejected a length prefix. Either way the byte stream can no
/// longer be trusted to be in sync: answer with an `Error` frame and close.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The prefix at `offset` declares `declared` bytes, more than `max`.
    TooLarge {
        offset: usize,
        declared: usize,
        max: usize,
    },
    /// The prefix at `offset` declares an empty frame, which no valid frame
    /// is.
    Empty { offset: usize },
}

impl FrameError {
    /// The code to send in the `Error` frame that precedes closing.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::TooLarge { .. } | FrameError::Empty { .. } => ErrorCode::FrameTooLarge,
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge {
                offset,
                declared,
                max,
            } => write!(
                f,
                "frame at byte {offset} declares {declared} bytes, above the limit of {max}"
            ),
            FrameError::Empty { offset } => {
                write!(f, "frame at byte {offset} declares a length of 0")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Whether `buf` starts with a whole frame.
///
/// Returns `Ok(None)` when more bytes are needed (fewer than 4, or fewer
/// than `4 + n`), `Ok(Some(total))` with `total = 4 + n` when the first
/// `total` bytes are one whole frame, and `Err` when the prefix is invalid.
/// Only the prefix is looked at; the body is checked by `decode`.
pub fn check(buf: &[u8], limits: &Limits) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = buf.first_chunk::<LENGTH_PREFIX_BYTES>() else {
        return Ok(None);
    };
    // u32 always fits in usize on the 32- and 64-bit targets Hadron supports.
    let declared = usize::try_from(u32::from_le_bytes(*prefix)).unwrap_or(usize::MAX);
    if declared == 0 {
        return Err(FrameError::Empty { offset: 0 });
    }
    if declared > limits.frame_bytes_max {
        return Err(FrameError::TooLarge {
            offset: 0,
            declared,
            max: limits.frame_bytes_max,
        });
    }
    let total = LENGTH_PREFIX_BYTES + declared;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some(total))
}

/// `check` plus slicing: when `buf` starts with a whole frame, returns its
/// body (prefix removed, exactly `n` bytes) and the number of bytes the frame
/// occupies in `buf`, so the caller can advance past it.
pub fn split_frame<'a>(
    buf: &'a [u8],
    limits: &Limits,
) -> Result<Option<(&'a [u8], usize)>, FrameError> {
    let Some(total) = check(buf, limits)? else {
        return Ok(None);
    };
    match buf.get(LENGTH_PREFIX_BYTES..total) {
        Some(body) => Ok(Some((body, total))),
        // Unreachable: check returned Some only if buf.len() >= total.
        None => Ok(None),
    }
}

/// Why `decode` or `decode_event` rejected a buffer.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The buffer is `have` bytes, more than the `max` allowed.
    TooLarge { have: usize, max: usize },
    /// The flatbuffers verifier rejected the buffer (out-of-range offsets,
    /// bad UTF-8, missing required fields, depth or table limits, ...).
    Malformed(flatbuffers::InvalidFlatbuffer),
    /// The frame verified but carries no body.
    MissingBody { request_id: u64 },
    /// The frame verified but its body type is not one this build knows;
    /// a newer peer sent it.
    UnknownBody { request_id: u64, tag: u8 },
    /// A field holds a value the protocol does not allow.
    InvalidField {
        request_id: u64,
        field: &'static str,
        reason: &'static str,
    },
}

impl DecodeError {
    /// The code to answer with. `FrameTooLarge` and `MalformedFrame` mean the
    /// connection is closed afterwards; the others answer the request.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            DecodeError::Malformed(_) => ErrorCode::MalformedFrame,
            DecodeError::MissingBody { .. }
            | DecodeError::UnknownBody { .. }
            | DecodeError::InvalidField { .. } => ErrorCode::InvalidRequest,
        }
    }

    /// The request id of the offending frame, when it could be read (the
    /// frame verified); `None` when the frame could not be trusted at all.
    pub fn request_id(&self) -> Option<u64> {
        match self {
            DecodeError::TooLarge { .. } | DecodeError::Malformed(_) => None,
            DecodeError::MissingBody { request_id }
            | DecodeError::UnknownBody { request_id, .. }
            | DecodeError::InvalidField { request_id, .. } => Some(*request_id),
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooLarge { have, max } => {
                write!(f, "buffer of {have} bytes exceeds the limit of {max}")
            }
            DecodeError::Malformed(e) => write!(f, "malformed flatbuffer: {e}"),
            DecodeError::MissingBody { request_id } => {
                write!(f, "frame {request_id} has no body")
            }
            DecodeError::UnknownBody { request_id, tag } => {
                write!(f, "frame {request_id} has unknown body type {tag}")
            }
            DecodeError::InvalidField {
                request_id,
                field,
                reason,
            } => write!(f, "frame {request_id}: field {field}: {reason}"),
        }
    }
}

impl std::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DecodeError::Malformed(e) => Some(e),
            _ => None,
        }
    }
}

/// A verified frame: its request id and its typed message, borrowing from
/// the frame's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameRef<'a> {
    /// Chosen by the client and echoed by the server; 0 for server pushes
    /// and connection-level errors.
    pub request_id: u64,
    /// The body.
    pub message: Message<'a>,
}

/// Verifies `body` (a frame without its length prefix) against `limits` and
/// returns the generated root table. Every accessor on the result is safe to
/// call; nested event bytes are not verified here (see `decode_event`).
pub fn verify_frame<'a>(body: &'a [u8], limits: &Limits) -> Result<fb::Frame<'a>, DecodeError> {
    if body.len() > limits.frame_bytes_max {
        return Err(DecodeError::TooLarge {
            have: body.len(),
            max: limits.frame_bytes_max,
        });
    }
    let options = limits.verifier_options();
    match verify::publish_frame(body, &options) {
        Ok(Some(frame)) => Ok(frame),
        Ok(None) => {
            flatbuffers::root_with_opts::<fb::Frame>(&options, body).map_err(DecodeError::Malformed)
        }
        // The generic verifier names the failure with its field trace, so
        // errors read as they did before the specialised verifier.
        Err(reject) => Err(DecodeError::Malformed(
            match flatbuffers::root_with_opts::<fb::Frame>(&options, body) {
                Err(traced) => traced,
                // Unreachable while the two verifiers agree (the tests in
                // `verify` check that they do); the specialised verdict
                // stands either way.
                Ok(_) => reject.into(),
            },
        )),
    }
}

/// What `decode` did before the specialised Publish verifier: the generic
/// verifier alone. The tests hold `decode` to it.
#[cfg(test)]
pub(crate) fn decode_generic<'a>(
    body: &'a [u8],
    limits: &Limits,
) -> Result<FrameRef<'a>, DecodeError> {
    if body.len() > limits.frame_bytes_max {
        return Err(DecodeError::TooLarge {
            have: body.len(),
            max: limits.frame_bytes_max,
        });
    }
    let options = limits.verifier_options();
    let frame =
        flatbuffers::root_with_opts::<fb::Frame>(&options, body).map_err(DecodeError::Malformed)?;
    let message = Message::from_verified(&frame)?;
    Ok(FrameRef {
        request_id: frame.request_id(),
        message,
    })
}

/// Verifies and decodes a frame body (the `n` bytes after the length
/// prefix). Event byte vectors inside it are returned as opaque bytes; call
/// `decode_event` on those you need to interpret.
pub fn decode<'a>(body: &'a [u8], limits: &Limits) -> Result<FrameRef<'a>, DecodeError> {
    let frame = verify_frame(body, limits)?;
    let message = Message::from_verified(&frame)?;
    Ok(FrameRef {
        request_id: frame.request_id(),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::tests::{sample_event, sample_messages};
    use crate::message::{Publish, StageDelivery, StageInput};
    use crate::{Message, encode};
    use flatbuffers::{FlatBufferBuilder, InvalidFlatbuffer};

    fn frame_of(message: &Message<'_>) -> Vec<u8> {
        encode(1, message).unwrap()
    }

    #[test]
    fn check_needs_a_whole_prefix_and_body() {
        let frame = frame_of(&Message::Status);
        for cut in 0..frame.len() {
            assert_eq!(
                check(&frame[..cut], &Limits::DEFAULT),
                Ok(None),
                "cut at {cut}"
            );
            assert_eq!(split_frame(&frame[..cut], &Limits::DEFAULT), Ok(None));
        }
        assert_eq!(check(&frame, &Limits::DEFAULT), Ok(Some(frame.len())));
        // Trailing bytes (the next frame) are not part of this one.
        let mut two = frame.clone();
        two.extend_from_slice(&frame);
        assert_eq!(check(&two, &Limits::DEFAULT), Ok(Some(frame.len())));
    }

    #[test]
    fn check_rejects_lengths_above_max_and_zero() {
        let limits = Limits {
            frame_bytes_max: 100,
            ..Limits::DEFAULT
        };
        let over = 101u32.to_le_bytes();
        assert_eq!(
            check(&over, &limits),
            Err(FrameError::TooLarge {
                offset: 0,
                declared: 101,
                max: 100
            })
        );
        // Exactly the maximum is fine: it only needs more bytes.
        assert_eq!(check(&100u32.to_le_bytes(), &limits), Ok(None));
        assert_eq!(
            check(&u32::MAX.to_le_bytes(), &Limits::DEFAULT),
            Err(FrameError::TooLarge {
                offset: 0,
                declared: u32::MAX as usize,
                max: crate::FRAME_BYTES_MAX
            })
        );
        assert_eq!(
            check(&[0, 0, 0, 0, 9], &limits),
            Err(FrameError::Empty { offset: 0 })
        );
        let err = check(&over, &limits).unwrap_err();
        assert_eq!(err.code(), ErrorCode::FrameTooLarge);
        assert!(err.to_string().contains("above the limit of 100"), "{err}");
    }

    #[test]
    fn decode_rejects_body_above_max() {
        let frame = frame_of(&Message::Status);
        let limits = Limits {
            frame_bytes_max: frame.len() - 5,
            ..Limits::DEFAULT
        };
        let err = decode(&frame[4..], &limits).unwrap_err();
        assert!(matches!(err, DecodeError::TooLarge { .. }), "{err}");
        assert_eq!(err.code(), ErrorCode::FrameTooLarge);
    }

    #[test]
    fn depth_limit_is_enforced() {
        let event = sample_event();
        // Frame > StageDelivery > StageInput: depth 3.
        let frame = frame_of(&Message::StageDelivery(StageDelivery {
            pipeline: "p",
            stage: "s",
            root: &event,
            inputs: vec![StageInput {
                stage: "a",
                event: &event,
            }],
            ..StageDelivery::default()
        }));
        let shallow = Limits {
            depth_max: 2,
            ..Limits::DEFAULT
        };
        let err = decode(&frame[4..], &shallow).unwrap_err();
        assert_eq!(
            err,
            DecodeError::Malformed(InvalidFlatbuffer::DepthLimitReached)
        );
        assert_eq!(err.code(), ErrorCode::MalformedFrame);
        assert_eq!(err.request_id(), None);
        let enough = Limits {
            depth_max: 3,
            ..Limits::DEFAULT
        };
        assert!(decode(&frame[4..], &enough).is_ok());
    }

    /// The deepest legal frame, Frame > MetadataOk > StreamInfo >
    /// PartitionInfo > LeaderHint, needs depth 5 and decodes under the
    /// default limit.
    #[test]
    fn metadata_ok_is_the_deepest_frame_and_fits_the_default_depth() {
        let frame = frame_of(&Message::MetadataOk(crate::MetadataOk {
            shards: 1,
            streams: vec![crate::StreamInfo {
                name: "events",
                partitions: vec![crate::PartitionInfo {
                    partition: 0,
                    shard: 0,
                    leader: Some(crate::LeaderHint {
                        node_id: 1,
                        address: "127.0.0.1:7000",
                        shard_port: 7001,
                        term: 1,
                    }),
                }],
            }],
            ..crate::MetadataOk::default()
        }));
        let shallow = Limits {
            depth_max: 4,
            ..Limits::DEFAULT
        };
        assert_eq!(
            decode(&frame[4..], &shallow).unwrap_err(),
            DecodeError::Malformed(InvalidFlatbuffer::DepthLimitReached)
        );
        let enough = Limits {
            depth_max: 5,
            ..Limits::DEFAULT
        };
        assert!(decode(&frame[4..], &enough).is_ok());
        assert!(decode(&frame[4..], &Limits::DEFAULT).is_ok());
    }

    /// The cheapest repeated table, a `PartitionInfo` with both fields at
    /// their defaults, costs `TABLE_BYTES_MIN` bytes in a frame the
    /// verifier accepts, so `TABLES_MAX_DEFAULT` admits every frame of
    /// `FRAME_BYTES_MAX` bytes that does not share subtables.
    #[test]
    fn the_cheapest_repeated_table_costs_table_bytes_min() {
        let count = 10_000;
        let mut fbb = FlatBufferBuilder::new();
        let partitions: Vec<_> = (0..count)
            .map(|_| fb::PartitionInfo::create(&mut fbb, &fb::PartitionInfoArgs::default()))
            .collect();
        let partitions = fbb.create_vector(&partitions);
        let name = fbb.create_string("s");
        let stream = fb::StreamInfo::create(
            &mut fbb,
            &fb::StreamInfoArgs {
                name: Some(name),
                partitions: Some(partitions),
            },
        );
        let streams = fbb.create_vector(&[stream]);
        let body = fb::MetadataOk::create(
            &mut fbb,
            &fb::MetadataOkArgs {
                shards: 1,
                streams: Some(streams),
                ..fb::MetadataOkArgs::default()
            },
        );
        let frame = fb::Frame::create(
            &mut fbb,
            &fb::FrameArgs {
                request_id: 1,
                body_type: fb::Body::MetadataOk,
                body: Some(body.as_union_value()),
            },
        );
        fbb.finish(frame, None);
        let buf = fbb.finished_data();
        // Frame, MetadataOk, StreamInfo and the partitions.
        let tables = count + 3;
        let exact = Limits {
            tables_max: tables,
            ..Limits::DEFAULT
        };
        assert!(verify_frame(buf, &exact).is_ok());
        let fewer = Limits {
            tables_max: tables - 1,
            ..Limits::DEFAULT
        };
        assert!(verify_frame(buf, &fewer).is_err());
        assert!(buf.len() / count >= TABLE_BYTES_MIN, "{} bytes", buf.len());
        assert!(
            buf.len() / count < 2 * TABLE_BYTES_MIN,
            "{} bytes",
            buf.len()
        );
    }

    #[test]
    fn table_limit_is_enforced() {
        let event = sample_event();
        // Frame + Publish + 10 EventBytes = 12 tables.
        let frame = frame_of(&Message::Publish(Publish {
            stream: "events",
            partition: 0,
            events: vec![&event[..]; 10],
        }));
        let few = Limits {
            tables_max: 11,
            ..Limits::DEFAULT
        };
        assert_eq!(
            decode(&frame[4..], &few).unwrap_err(),
            DecodeError::Malformed(InvalidFlatbuffer::TooManyTables)
        );
        let enough = Limits {
            tables_max: 12,
            ..Limits::DEFAULT
        };
        assert!(decode(&frame[4..], &enough).is_ok());
    }

    #[test]
    fn truncated_bodies_never_decode_to_something_else() {
        let event = sample_event();
        for message in sample_messages(&event) {
            let frame = frame_of(&message);
            let body = &frame[4..];
            for cut in 0..body.len() {
                // Trailing alignment padding may be cut without loss; any
                // other cut must be rejected.
                if let Ok(decoded) = decode(&body[..cut], &Limits::DEFAULT) {
                    assert_eq!(decoded.message, message, "cut {cut} of {}", message.name());
                }
            }
        }
    }

    #[test]
    fn garbage_is_rejected() {
        let inputs: [&[u8]; 6] = [
            b"",
            b"\x00",
            b"\x00\x00\x00\x00",
            b"\xff\xff\xff\xff\xff\xff\xff\xff",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            &[
                0x10, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        ];
        for body in inputs {
            // Four zero bytes happen to be a valid, empty table (root offset
            // 0, vtable offset 0): it verifies and then has no body.
            assert!(decode(body, &Limits::DEFAULT).is_err(), "{body:?}");
        }
        let err = decode(b"\x00\x00\x00\x00", &Limits::DEFAULT).unwrap_err();
        assert_eq!(err, DecodeError::MissingBody { request_id: 0 });
    }

    /// Builds a frame whose union tag and body are chosen by the test.
    fn raw_frame(tag: fb::Body, with_body: bool) -> Vec<u8> {
        let mut fbb = FlatBufferBuilder::new();
        let body = fb::AckOk::create(&mut fbb, &fb::AckOkArgs {});
        let root = fb::Frame::create(
            &mut fbb,
            &fb::FrameArgs {
                request_id: 77,
                body_type: tag,
                body: with_body.then(|| body.as_union_value()),
            },
        );
        fbb.finish(root, None);
        fbb.finished_data().to_vec()
    }

    #[test]
    fn missing_and_unknown_bodies_are_reported_with_request_id() {
        let err = decode(&raw_frame(fb::Body::NONE, false), &Limits::DEFAULT).unwrap_err();
        assert_eq!(err, DecodeError::MissingBody { request_id: 77 });
        assert_eq!(err.request_id(), Some(77));

        let err = decode(&raw_frame(fb::Body(200), true), &Limits::DEFAULT).unwrap_err();
        assert_eq!(
            err,
            DecodeError::UnknownBody {
                request_id: 77,
                tag: 200
            }
        );
        assert_eq!(err.code(), ErrorCode::InvalidRequest);

        // A tag without a body is an inconsistent union: malformed.
        let err = decode(&raw_frame(fb::Body::Status, false), &Limits::DEFAULT).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed(_)), "{err}");
    }

    #[test]
    fn body_missing_required_fields_is_rejected() {
        // Tagged Publish, but the table is empty: `stream` is required.
        let err = decode(&raw_frame(fb::Body::Publish, true), &Limits::DEFAULT).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::Malformed(InvalidFlatbuffer::MissingRequiredField { .. })
            ),
            "{err}"
        );
        // The same empty table is a fine AckOk.
        let ack_ok = raw_frame(fb::Body::AckOk, true);
        let ok = decode(&ack_ok, &Limits::DEFAULT).unwrap();
        assert_eq!(ok.message, Message::AckOk);
    }

    #[test]
    fn unknown_start_point_is_an_invalid_field() {
        let mut fbb = FlatBufferBuilder::new();
        let stream = fbb.create_string("events");
        let group = fbb.create_string("g");
        let body = fb::Subscribe::create(
            &mut fbb,
            &fb::SubscribeArgs {
                stream: Some(stream),
                group: Some(group),
                start: fb::StartPoint(9),
                ..fb::SubscribeArgs::default()
            },
        );
        let root = fb::Frame::create(
            &mut fbb,
            &fb::FrameArgs {
                request_id: 5,
                body_type: fb::Body::Subscribe,
                body: Some(body.as_union_value()),
            },
        );
        fbb.finish(root, None);
        let err = decode(fbb.finished_data(), &Limits::DEFAULT).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::InvalidField {
                    request_id: 5,
                    field: "Subscribe.start",
                    ..
                }
            ),
            "{err}"
        );
    }
}
