//! Peer frames: what one node's shard sends the same shard on another
//! node (docs/replication.md section 2, "Transport").
//!
//! ```text
//!  frame  := u32 body_len | u32 crc32(body) | body        (little-endian)
//!  body   := u8 kind | ...
//!  kind 1, hello (first frame of a connection, from the dialling side):
//!           "HDRPEER1" | u64 node_id | u16 shard | u16 shards
//!  kind 2, raft messages (any number of groups):
//!           u32 count | count x ( u16 stream_len | stream | u32 partition
//!                                 | u32 msg_len | raft Message, protobuf )
//! ```
//!
//! - `body_len` is at most [`PEER_FRAME_BYTES_MAX`]: checked before the body
//!   is read, so a peer costs at most one frame of memory.
//! - The raft `Message` is raft-rs's own protobuf encoding. protobuf 2.28
//!   has an advisory about deep recursion on untrusted input
//!   (RUSTSEC-2024-0437): a message is decoded only from a connection whose
//!   hello named a node of `cluster.peers` on the same shard, inside a
//!   bounded frame whose checksum matched, and raft's `Message` nests at
//!   most four levels. Peers are not authenticated by a secret yet: bind
//!   `peerAddress` to a private network (docs/operations.md).
//! - Connections carry one direction: each node dials every other for the
//!   messages it sends, so a cut of one direction is one connection.

use bytes::{Buf, BufMut};
use protobuf::Message as _;
use raft::eraftpb::Message;

/// The largest frame body: a raft append carries up to `max_size_per_msg`
/// (1 MiB) of entries, but always at least one, and one batch may be up to
/// the engine's 16 MiB.
pub const PEER_FRAME_BYTES_MAX: usize = 32 << 20;
/// Bytes of frame header before the body.
pub const PEER_FRAME_HEADER_BYTES: usize = 8;
/// Messages in one frame, at most.
pub const PEER_FRAME_MESSAGES_MAX: usize = 65_536;
/// The longest stream name in a frame.
pub const PEER_STREAM_BYTES_MAX: usize = 255;
const HELLO_MAGIC: &[u8; 8] = b"HDRPEER1";
const KIND_HELLO: u8 = 1;
const KIND_RAFT: u8 = 2;

/// The first frame of a peer connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub node_id: u64,
    pub shard: u16,
    pub shards: u16,
}

/// One raft message for the group of `stream`/`partition`.
#[derive(Debug, Clone, PartialEq)]
pub struct Addressed {
    pub stream: String,
    pub partition: u32,
    pub msg: Message,
}

/// A decoded frame body.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerFrame {
    Hello(Hello),
    Raft(Vec<Addressed>),
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PEER_FRAME_HEADER_BYTES + body.len());
    out.put_u32_le(body.len() as u32);
    out.put_u32_le(crc32fast::hash(body));
    out.put_slice(body);
    out
}

/// The hello frame.
pub fn encode_hello(hello: Hello) -> Vec<u8> {
    let mut body = Vec::with_capacity(21);
    body.put_u8(KIND_HELLO);
    body.put_slice(HELLO_MAGIC);
    body.put_u64_le(hello.node_id);
    body.put_u16_le(hello.shard);
    body.put_u16_le(hello.shards);
    frame(&body)
}

/// One message as it goes into a raft frame (so a sender can queue
/// encoded messages and count their bytes).
pub fn encode_message(stream: &str, partition: u32, msg: &Message) -> Result<Vec<u8>, String> {
    if stream.len() > PEER_STREAM_BYTES_MAX {
        return Err(format!(
            "stream name of {} bytes (at most {PEER_STREAM_BYTES_MAX})",
            stream.len()
        ));
    }
    let bytes = msg
        .write_to_bytes()
        .map_err(|e| format!("encoding a raft message: {e}"))?;
    let mut out = Vec::with_capacity(10 + stream.len() + bytes.len());
    out.put_u16_le(stream.len() as u16);
    out.put_slice(stream.as_bytes());
    out.put_u32_le(partition);
    out.put_u32_le(bytes.len() as u32);
    out.put_slice(&bytes);
    Ok(out)
}

/// A raft frame of messages encoded by [`encode_message`].
pub fn encode_raft(messages: &[Vec<u8>]) -> Vec<u8> {
    let len = 5 + messages.iter().map(Vec::len).sum::<usize>();
    let mut body = Vec::with_capacity(len);
    body.put_u8(KIND_RAFT);
    body.put_u32_le(messages.len() as u32);
    for m in messages {
        body.put_slice(m);
    }
    frame(&body)
}

/// Reads a frame header: the body's length (checked against the limit)
/// and checksum.
pub fn parse_header(header: &[u8; PEER_FRAME_HEADER_BYTES]) -> Result<(usize, u32), String> {
    let mut h = &header[..];
    let len = h.get_u32_le() as usize;
    let crc = h.get_u32_le();
    if len == 0 || len > PEER_FRAME_BYTES_MAX {
        return Err(format!(
            "a peer frame of {len} bytes (1 to {PEER_FRAME_BYTES_MAX})"
        ));
    }
    Ok((len, crc))
}

fn take<'a>(b: &mut &'a [u8], n: usize, what: &str) -> Result<&'a [u8], String> {
    if b.len() < n {
        return Err(format!("a peer frame ends inside {what}"));
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

fn u16_of(b: &mut &[u8], what: &str) -> Result<u16, String> {
    Ok(take(b, 2, what)?.get_u16_le())
}

fn u32_of(b: &mut &[u8], what: &str) -> Result<u32, String> {
    Ok(take(b, 4, what)?.get_u32_le())
}

fn u64_of(b: &mut &[u8], what: &str) -> Result<u64, String> {
    Ok(take(b, 8, what)?.get_u64_le())
}

/// Decodes a frame body whose checksum was `crc`.
pub fn decode_body(body: &[u8], crc: u32) -> Result<PeerFrame, String> {
    let computed = crc32fast::hash(body);
    if computed != crc {
        return Err(format!(
            "a peer frame's checksum {crc:#010x} does not match its bytes ({computed:#010x})"
        ));
    }
    let mut b = body;
    match take(&mut b, 1, "its kind")?[0] {
        KIND_HELLO => {
            if take(&mut b, 8, "the hello")? != HELLO_MAGIC {
                return Err("a peer hello without the HDRPEER1 magic".into());
            }
            let hello = Hello {
                node_id: u64_of(&mut b, "the hello")?,
                shard: u16_of(&mut b, "the hello")?,
                shards: u16_of(&mut b, "the hello")?,
            };
            if !b.is_empty() {
                return Err(format!("{} bytes after a peer hello", b.len()));
            }
            Ok(PeerFrame::Hello(hello))
        }
        KIND_RAFT => {
            let count = u32_of(&mut b, "the message count")? as usize;
            if count > PEER_FRAME_MESSAGES_MAX {
                return Err(format!(
                    "a peer frame of {count} messages (at most {PEER_FRAME_MESSAGES_MAX})"
                ));
            }
            let mut out = Vec::with_capacity(count.min(1024));
            for i in 0..count {
                let len = usize::from(u16_of(&mut b, "a stream name")?);
                if len > PEER_STREAM_BYTES_MAX {
                    return Err(format!("message {i}: a stream name of {len} bytes"));
                }
                let stream = std::str::from_utf8(take(&mut b, len, "a stream name")?)
                    .map_err(|_| format!("message {i}: the stream name is not UTF-8"))?
                    .to_owned();
                let partition = u32_of(&mut b, "a partition")?;
                let len = u32_of(&mut b, "a message length")? as usize;
                let bytes = take(&mut b, len, "a raft message")?;
                let msg = Message::parse_from_bytes(bytes)
                    .map_err(|e| format!("message {i}: not a raft message: {e}"))?;
                out.push(Addressed {
                    stream,
                    partition,
                    msg,
                });
            }
            if !b.is_empty() {
                return Err(format!("{} bytes after a peer frame's messages", b.len()));
            }
            Ok(PeerFrame::Raft(out))
        }
        other => Err(format!("a peer frame of unknown kind {other}")),
    }
}

#[cfg(test)]
mod tests {
    use raft::eraftpb::{Entry, MessageType};

    use super::*;

    fn split(frame: &[u8]) -> (usize, u32, &[u8]) {
        let header: [u8; PEER_FRAME_HEADER_BYTES] =
            frame[..PEER_FRAME_HEADER_BYTES].try_into().unwrap();
        let (len, crc) = parse_header(&header).unwrap();
        (len, crc, &frame[PEER_FRAME_HEADER_BYTES..])
    }

    fn append() -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.to = 2;
        m.from = 1;
        m.term = 7;
        m.index = 41;
        m.log_term = 6;
        m.commit = 40;
        m.entries.push(Entry {
            term: 7,
            index: 42,
            data: bytes::Bytes::from_static(b"batch bytes"),
            ..Entry::default()
        });
        m
    }

    #[test]
    fn hello_and_messages_round_trip() {
        let hello = Hello {
            node_id: 3,
            shard: 1,
            shards: 4,
        };
        let f = encode_hello(hello);
        let (len, crc, body) = split(&f);
        assert_eq!(len, body.len());
        assert_eq!(decode_body(body, crc).unwrap(), PeerFrame::Hello(hello));

        let mut heartbeat = Message::default();
        heartbeat.set_msg_type(MessageType::MsgHeartbeat);
        heartbeat.to = 3;
        let encoded = vec![
            encode_message("events", 0, &append()).unwrap(),
            encode_message("orders", 9, &heartbeat).unwrap(),
        ];
        let f = encode_raft(&encoded);
        let (_, crc, body) = split(&f);
        let PeerFrame::Raft(got) = decode_body(body, crc).unwrap() else {
            panic!("not a raft frame");
        };
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].stream.as_str(), got[0].partition), ("events", 0));
        assert_eq!(got[0].msg, append());
        assert_eq!(got[0].msg.entries[0].data.as_ref(), b"batch bytes");
        assert_eq!((got[1].stream.as_str(), got[1].partition), ("orders", 9));
        assert_eq!(got[1].msg.get_msg_type(), MessageType::MsgHeartbeat);
    }

    #[test]
    fn oversized_truncated_and_corrupt_frames_are_refused_by_name() {
        let mut header = [0u8; PEER_FRAME_HEADER_BYTES];
        header[..4].copy_from_slice(&((PEER_FRAME_BYTES_MAX + 1) as u32).to_le_bytes());
        assert!(parse_header(&header).unwrap_err().contains("peer frame of"));
        assert!(parse_header(&[0; 8]).is_err());

        let f = encode_raft(&[encode_message("events", 0, &append()).unwrap()]);
        let (_, crc, body) = split(&f);
        // Every truncation: refused (the checksum, or the structure with a
        // matching checksum), never a panic.
        for cut in 0..body.len() {
            let short = &body[..cut];
            assert!(decode_body(short, crc).is_err(), "cut at {cut}");
            assert!(
                decode_body(short, crc32fast::hash(short)).is_err(),
                "cut at {cut}"
            );
        }
        // A flipped bit: the checksum says so.
        let mut bad = body.to_vec();
        bad[12] ^= 1;
        assert!(decode_body(&bad, crc).unwrap_err().contains("checksum"));
        // Unknown kind, bad magic, too many messages.
        let e = |b: &[u8]| decode_body(b, crc32fast::hash(b)).unwrap_err();
        assert!(e(&[9]).contains("unknown kind 9"));
        assert!(e(b"\x01HDRPEER2aaaaaaaaaaaa").contains("magic"));
        let mut many = vec![KIND_RAFT];
        many.extend_from_slice(&((PEER_FRAME_MESSAGES_MAX + 1) as u32).to_le_bytes());
        assert!(e(&many).contains("messages"));
        // Garbage where a message should be.
        let mut garbage = vec![KIND_RAFT, 1, 0, 0, 0, 1, 0, b's', 0, 0, 0, 0, 3, 0, 0, 0];
        garbage.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert!(e(&garbage).contains("not a raft message"));
    }
}
