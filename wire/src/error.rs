//! Error codes carried in `Error` frames.
//!
//! Each code's number is stable forever: it is part of the protocol. A new
//! condition gets the next unused number; a retired code keeps its number and
//! its doc line (marked retired) and is never reused for something else.
//! Code 0 is reserved and never sent. A peer that receives a number it does
//! not know maps it to `ErrorCode::Unknown` and treats it as a failed
//! request.

use core::fmt;

/// A stable numeric error code. `as_u16` gives the number on the wire,
/// `from_u16` reads one back (never failing: unknown numbers become
/// `Unknown`).
#[repr(u16)]
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A number this build does not know (sent by a newer peer), or 0. Its
    /// discriminant is not its wire value; use `as_u16`.
    Unknown(u16) = 0,
    /// The frame's declared length exceeds the receiver's `frame_bytes_max`,
    /// or is zero. The connection is closed after this error.
    FrameTooLarge = 1,
    /// The frame failed flatbuffers verification, has no body, or has a body
    /// type the receiver does not know. The connection is closed.
    MalformedFrame = 2,
    /// The client's protocol version is not supported. The connection is
    /// closed.
    UnsupportedVersion = 3,
    /// The named stream does not exist.
    UnknownStream = 4,
    /// The partition does not exist in the stream.
    UnknownPartition = 5,
    /// The delivery id is not outstanding on this connection (already acked,
    /// timed out and redelivered, or never sent).
    UnknownDelivery = 6,
    /// The request is well formed but makes no sense (for example a
    /// server-to-client message sent by a client, or a field out of range).
    InvalidRequest = 7,
    /// Reserved: the partition belongs to another shard or node.
    WrongShard = 8,
    /// Storage failed while serving the request (I/O error).
    StorageError = 9,
    /// The partition is read-only after a failed write or fsync, until the
    /// server restarts.
    ReadOnly = 10,
    /// The YAML given to `Apply` is invalid; the message names the field.
    InvalidConfig = 11,
    /// The named pipeline does not exist.
    UnknownPipeline = 12,
    /// The named stage does not exist in the pipeline.
    UnknownStage = 13,
    /// The handshake token was rejected. The connection is closed.
    Unauthorized = 14,
    /// The server is shutting down; retry against it later.
    ShuttingDown = 15,
    /// The requested offset is beyond the partition's end or before its
    /// retained start.
    OffsetOutOfRange = 16,
    /// A bug in the server; the message says more.
    Internal = 17,
    /// A request other than `Handshake` arrived before the handshake
    /// completed. The connection is closed.
    HandshakeRequired = 18,
    /// An event inside a `Publish` or `StageAck` is not a valid `Event`
    /// flatbuffer or lacks a required attribute. Nothing was written.
    InvalidEvent = 19,
    /// A request exceeds a configured limit (ids per ack, subscriptions per
    /// connection, streams, partitions, pipelines, stages, groups, YAML
    /// bytes, aliases or nesting). The message names the setting and its
    /// value. Nothing was changed.
    LimitExceeded = 20,
    /// The server holds `connectionsMax` connections already. Sent once,
    /// before any handshake; the connection is closed.
    TooManyConnections = 21,
    /// The connection did not complete its handshake within
    /// `handshakeTimeoutMs`, or sent nothing for `idleTimeoutMs`. The
    /// connection is closed.
    Timeout = 22,
    /// The partition's stored data is damaged (a batch that fails its
    /// checks with valid batches after it). The partition serves reads up
    /// to the damage and refuses writes until `hadron repair`.
    Damaged = 23,
    /// The connection's token lacks the permission the request needs
    /// (publish or subscribe on a stream, or admin), or was revoked. The
    /// message names the token, the permission and the stream. Nothing was
    /// done; the connection stays open unless the token was revoked.
    Forbidden = 24,
    /// The node that answered does not lead the partition the request
    /// names (docs/replication.md section 7). The `Error`'s `leader` says
    /// where the leader is (node, address, shard port) when the node knows;
    /// without it an election is in progress: refresh Metadata from any
    /// node after a backoff. Nothing was done; retry a publish there with
    /// the same ids. The connection stays open.
    NotLeader = 25,
    /// The node's disk is full (ENOSPC or EDQUOT): the partition's log could
    /// not allocate space and wrote nothing of its last round, without
    /// failing for good. A publish answered with it may still be written
    /// (the events stay staged and are written once space is freed): the
    /// outcome is unknown, as after a timeout. Retry after a backoff with
    /// the same ids, which the dedup window keeps once. The connection
    /// stays open.
    DiskFull = 26,
    /// The partition's Raft group has as much proposed and not yet
    /// committed by a majority as it holds (its leader is cut off from the
    /// others, say, or they are slow): nothing was done. Retry after a
    /// backoff with the same ids. The connection stays open.
    Busy = 27,
}

impl ErrorCode {
    /// Every known code, in numeric order.
    pub const ALL: [ErrorCode; 27] = [
        ErrorCode::FrameTooLarge,
        ErrorCode::MalformedFrame,
        ErrorCode::UnsupportedVersion,
        ErrorCode::UnknownStream,
        ErrorCode::UnknownPartition,
        ErrorCode::UnknownDelivery,
        ErrorCode::InvalidRequest,
        ErrorCode::WrongShard,
        ErrorCode::StorageError,
        ErrorCode::ReadOnly,
        ErrorCode::InvalidConfig,
        ErrorCode::UnknownPipeline,
        ErrorCode::UnknownStage,
        ErrorCode::Unauthorized,
        ErrorCode::ShuttingDown,
        ErrorCode::OffsetOutOfRange,
        ErrorCode::Internal,
        ErrorCode::HandshakeRequired,
        ErrorCode::InvalidEvent,
        ErrorCode::LimitExceeded,
        ErrorCode::TooManyConnections,
        ErrorCode::Timeout,
        ErrorCode::Damaged,
        ErrorCode::Forbidden,
        ErrorCode::NotLeader,
        ErrorCode::DiskFull,
        ErrorCode::Busy,
    ];

    /// The number sent on the wire.
    pub const fn as_u16(self) -> u16 {
        match self {
            ErrorCode::Unknown(n) => n,
            ErrorCode::FrameTooLarge => 1,
            ErrorCode::MalformedFrame => 2,
            ErrorCode::UnsupportedVersion => 3,
            ErrorCode::UnknownStream => 4,
            ErrorCode::UnknownPartition => 5,
            ErrorCode::UnknownDelivery => 6,
            ErrorCode::InvalidRequest => 7,
            ErrorCode::WrongShard => 8,
            ErrorCode::StorageError => 9,
            ErrorCode::ReadOnly => 10,
            ErrorCode::InvalidConfig => 11,
            ErrorCode::UnknownPipeline => 12,
            ErrorCode::UnknownStage => 13,
            ErrorCode::Unauthorized => 14,
            ErrorCode::ShuttingDown => 15,
            ErrorCode::OffsetOutOfRange => 16,
            ErrorCode::Internal => 17,
            ErrorCode::HandshakeRequired => 18,
            ErrorCode::InvalidEvent => 19,
            ErrorCode::LimitExceeded => 20,
            ErrorCode::TooManyConnections => 21,
            ErrorCode::Timeout => 22,
            ErrorCode::Damaged => 23,
            ErrorCode::Forbidden => 24,
            ErrorCode::NotLeader => 25,
            ErrorCode::DiskFull => 26,
            ErrorCode::Busy => 27,
        }
    }

    /// Reads a wire number; unknown numbers (and 0) become `Unknown(n)`.
    pub const fn from_u16(n: u16) -> ErrorCode {
        match n {
            1 => ErrorCode::FrameTooLarge,
            2 => ErrorCode::MalformedFrame,
            3 => ErrorCode::UnsupportedVersion,
            4 => ErrorCode::UnknownStream,
            5 => ErrorCode::UnknownPartition,
            6 => ErrorCode::UnknownDelivery,
            7 => ErrorCode::InvalidRequest,
            8 => ErrorCode::WrongShard,
            9 => ErrorCode::StorageError,
            10 => ErrorCode::ReadOnly,
            11 => ErrorCode::InvalidConfig,
            12 => ErrorCode::UnknownPipeline,
            13 => ErrorCode::UnknownStage,
            14 => ErrorCode::Unauthorized,
            15 => ErrorCode::ShuttingDown,
            16 => ErrorCode::OffsetOutOfRange,
            17 => ErrorCode::Internal,
            18 => ErrorCode::HandshakeRequired,
            19 => ErrorCode::InvalidEvent,
            20 => ErrorCode::LimitExceeded,
            21 => ErrorCode::TooManyConnections,
            22 => ErrorCode::Timeout,
            23 => ErrorCode::Damaged,
            24 => ErrorCode::Forbidden,
            25 => ErrorCode::NotLeader,
            26 => ErrorCode::DiskFull,
            27 => ErrorCode::Busy,
            n => ErrorCode::Unknown(n),
        }
    }

    /// Whether the server closes the connection after sending this code.
    pub const fn closes_connection(self) -> bool {
        matches!(
            self,
            ErrorCode::FrameTooLarge
                | ErrorCode::MalformedFrame
                | ErrorCode::UnsupportedVersion
                | ErrorCode::Unauthorized
                | ErrorCode::HandshakeRequired
                | ErrorCode::TooManyConnections
                | ErrorCode::Timeout
        )
    }

    /// A stable, human-readable name (the variant name).
    pub const fn name(self) -> &'static str {
        match self {
            ErrorCode::Unknown(_) => "Unknown",
            ErrorCode::FrameTooLarge => "FrameTooLarge",
            ErrorCode::MalformedFrame => "MalformedFrame",
            ErrorCode::UnsupportedVersion => "UnsupportedVersion",
            ErrorCode::UnknownStream => "UnknownStream",
            ErrorCode::UnknownPartition => "UnknownPartition",
            ErrorCode::UnknownDelivery => "UnknownDelivery",
            ErrorCode::InvalidRequest => "InvalidRequest",
            ErrorCode::WrongShard => "WrongShard",
            ErrorCode::StorageError => "StorageError",
            ErrorCode::ReadOnly => "ReadOnly",
            ErrorCode::InvalidConfig => "InvalidConfig",
            ErrorCode::UnknownPipeline => "UnknownPipeline",
            ErrorCode::UnknownStage => "UnknownStage",
            ErrorCode::Unauthorized => "Unauthorized",
            ErrorCode::ShuttingDown => "ShuttingDown",
            ErrorCode::OffsetOutOfRange => "OffsetOutOfRange",
            ErrorCode::Internal => "Internal",
            ErrorCode::HandshakeRequired => "HandshakeRequired",
            ErrorCode::InvalidEvent => "InvalidEvent",
            ErrorCode::LimitExceeded => "LimitExceeded",
            ErrorCode::TooManyConnections => "TooManyConnections",
            ErrorCode::Timeout => "Timeout",
            ErrorCode::Damaged => "Damaged",
            ErrorCode::Forbidden => "Forbidden",
            ErrorCode::NotLeader => "NotLeader",
            ErrorCode::DiskFull => "DiskFull",
            ErrorCode::Busy => "Busy",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.as_u16())
    }
}

impl From<u16> for ErrorCode {
    fn from(n: u16) -> Self {
        ErrorCode::from_u16(n)
    }
}

impl From<ErrorCode> for u16 {
    fn from(code: ErrorCode) -> Self {
        code.as_u16()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_stable_and_round_trip() {
        // The numbers are the protocol: this table must only ever grow.
        let expected: [(ErrorCode, u16); 27] = [
            (ErrorCode::FrameTooLarge, 1),
            (ErrorCode::MalformedFrame, 2),
            (ErrorCode::UnsupportedVersion, 3),
            (ErrorCode::UnknownStream, 4),
            (ErrorCode::UnknownPartition, 5),
            (ErrorCode::UnknownDelivery, 6),
            (ErrorCode::InvalidRequest, 7),
            (ErrorCode::WrongShard, 8),
            (ErrorCode::StorageError, 9),
            (ErrorCode::ReadOnly, 10),
            (ErrorCode::InvalidConfig, 11),
            (ErrorCode::UnknownPipeline, 12),
            (ErrorCode::UnknownStage, 13),
            (ErrorCode::Unauthorized, 14),
            (ErrorCode::ShuttingDown, 15),
            (ErrorCode::OffsetOutOfRange, 16),
            (ErrorCode::Internal, 17),
            (ErrorCode::HandshakeRequired, 18),
            (ErrorCode::InvalidEvent, 19),
            (ErrorCode::LimitExceeded, 20),
            (ErrorCode::TooManyConnections, 21),
            (ErrorCode::Timeout, 22),
            (ErrorCode::Damaged, 23),
            (ErrorCode::Forbidden, 24),
            (ErrorCode::NotLeader, 25),
            (ErrorCode::DiskFull, 26),
            (ErrorCode::Busy, 27),
        ];
        for (code, n) in expected {
            assert_eq!(code.as_u16(), n, "{code}");
            assert_eq!(ErrorCode::from_u16(n), code);
        }
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(usize::from(code.as_u16()), i + 1);
        }
    }

    #[test]
    fn unknown_numbers_do_not_panic() {
        assert_eq!(ErrorCode::from_u16(0), ErrorCode::Unknown(0));
        assert_eq!(ErrorCode::from_u16(28), ErrorCode::Unknown(28));
        assert_eq!(ErrorCode::from_u16(u16::MAX).as_u16(), u16::MAX);
        assert_eq!(ErrorCode::Unknown(999).to_string(), "Unknown (999)");
    }
}
