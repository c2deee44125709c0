//! Peer frames: what one node's shard sends the same shard on another
//! node (docs/replication.md section 2, "Transport").
//!
//! ```text
//!  frame  := u32 body_len | u32 crc32(body) | body        (little-endian)
//!  body   := u8 kind | ...
//!  kind 3, challenge (first frame, from the accepting side):
//!           32 random bytes
//!  kind 1, hello (the dialling side's answer):
//!           "HDRPEER1" | u64 node_id | u16 shard | u16 shards | mac[32]
//!           mac = HMAC-SHA256(cluster secret, "HDRPEER1" | challenge
//!                             | node_id | shard | shards)
//!  kind 2, raft messages (any number of groups):
//!           u32 count | count x ( u16 stream_len | stream | u32 partition
//!                                 | u32 msg_len | raft Message, protobuf )
//! ```
//!
//! - `body_len` is at most [`PEER_FRAME_BYTES_MAX`]: checked before the body
//!   is read, so a peer costs at most one frame of memory.
//! - **Authentication**: the dialling node proves it knows the cluster
//!   secret (`cluster.secretFile`) by the MAC of a fresh challenge, so a
//!   hello cannot be replayed; the accepting side checks it in constant
//!   time before it decodes anything else. A cluster whose peers are all on
//!   loopback may run without a secret (the MAC is then keyed by nothing).
//! - The raft `Message` is raft-rs's own protobuf encoding. protobuf 2.28
//!   has an advisory about deep recursion on untrusted input
//!   (RUSTSEC-2024-0437): a message is decoded only from a connection whose
//!   hello proved the secret and named a node of `cluster.peers` on the
//!   same shard, inside a bounded frame whose checksum matched, and raft's
//!   `Message` nests at most four levels.
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
const KIND_CHALLENGE: u8 = 3;
/// Bytes of a challenge and of a MAC.
pub const CHALLENGE_BYTES: usize = 32;

/// The dialling side's first frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub node_id: u64,
    pub shard: u16,
    pub shards: u16,
    /// HMAC-SHA256 of the challenge and the fields above ([`hello_mac`]).
    pub mac: [u8; CHALLENGE_BYTES],
}

/// What a hello's MAC covers.
fn mac_input(challenge: &[u8; CHALLENGE_BYTES], node_id: u64, shard: u16, shards: u16) -> Vec<u8> {
    let mut m = Vec::with_capacity(8 + CHALLENGE_BYTES + 12);
    m.put_slice(HELLO_MAGIC);
    m.put_slice(challenge);
    m.put_u64_le(node_id);
    m.put_u16_le(shard);
    m.put_u16_le(shards);
    m
}

/// The hello of node `node_id`'s shard `shard` (of `shards`) answering
/// `challenge`, keyed by the cluster `secret`.
pub fn hello_mac(
    secret: &[u8],
    challenge: &[u8; CHALLENGE_BYTES],
    node_id: u64,
    shard: u16,
    shards: u16,
) -> Hello {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, &mac_input(challenge, node_id, shard, shards));
    let mut mac = [0u8; CHALLENGE_BYTES];
    mac.copy_from_slice(tag.as_ref());
    Hello {
        node_id,
        shard,
        shards,
        mac,
    }
}

/// Whether `hello` answers `challenge` with the cluster `secret`
/// (compared in constant time).
pub fn hello_verifies(secret: &[u8], challenge: &[u8; CHALLENGE_BYTES], hello: &Hello) -> bool {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let input = mac_input(challenge, hello.node_id, hello.shard, hello.shards);
    ring::hmac::verify(&key, &input, &hello.mac).is_ok()
}

/// A fresh challenge.
pub fn challenge() -> Result<[u8; CHALLENGE_BYTES], String> {
    let mut c = [0u8; CHALLENGE_BYTES];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut c)
        .map_err(|_| "no random bytes for a peer challenge".to_string())?;
    Ok(c)
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
    Challenge([u8; CHALLENGE_BYTES]),
    Hello(Hello),
    Raft(Vec<Addressed>),
}

/// The challenge frame.
pub fn encode_challenge(challenge: &[u8; CHALLENGE_BYTES]) -> Vec<u8> {
    let mut body = Vec::with_capacity(1 + CHALLENGE_BYTES);
    body.put_u8(KIND_CHALLENGE);
    body.put_slice(challenge);
    frame(&body)
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
    let mut body = Vec::with_capacity(21 + CHALLENGE_BYTES);
    body.put_u8(KIND_HELLO);
    body.put_slice(HELLO_MAGIC);
    body.put_u64_le(hello.node_id);
    body.put_u16_le(hello.shard);
    body.put_u16_le(hello.shards);
    body.put_slice(&hello.mac);
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
            let node_id = u64_of(&mut b, "the hello")?;
            let shard = u16_of(&mut b, "the hello")?;
            let shards = u16_of(&mut b, "the hello")?;
            let mut mac = [0u8; CHALLENGE_BYTES];
            mac.copy_from_slice(take(&mut b, CHALLENGE_BYTES, "the hello's MAC")?);
            if !b.is_empty() {
                return Err(format!("{} bytes after a peer hello", b.len()));
            }
            Ok(PeerFrame::Hello(Hello {
                node_id,
                shard,
                shards,
                mac,
            }))
        }
        KIND_CHALLENGE => {
            let mut c = [0u8; CHALLENGE_BYTES];
            c.copy_from_slice(take(&mut b, CHALLENGE_BYTES, "the challenge")?);
            if !b.is_empty() {
                return Err(format!("{} bytes after a peer challenge", b.len()));
            }
            Ok(PeerFrame::Challenge(c))
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
    fn a_hello_proves_the_secret_for_its_challenge_only() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let c = challenge().unwrap();
        assert_ne!(c, challenge().unwrap(), "fresh challenges differ");
        let hello = hello_mac(secret, &c, 3, 1, 4);
        let f = encode_challenge(&c);
        let (_, crc, body) = split(&f);
        assert_eq!(decode_body(body, crc).unwrap(), PeerFrame::Challenge(c));
        let f = encode_hello(hello);
        let (len, crc, body) = split(&f);
        assert_eq!(len, body.len());
        let PeerFrame::Hello(got) = decode_body(body, crc).unwrap() else {
            panic!("not a hello");
        };
        assert_eq!(got, hello);
        assert!(hello_verifies(secret, &c, &got));
        // Another secret, another challenge (a replay), another claimed
        // node or shard: refused.
        assert!(!hello_verifies(
            b"another secret of enough bytes!!",
            &c,
            &got
        ));
        assert!(!hello_verifies(secret, &challenge().unwrap(), &got));
        assert!(!hello_verifies(secret, &c, &Hello { node_id: 2, ..got }));
        assert!(!hello_verifies(secret, &c, &Hello { shard: 0, ..got }));
    }

    #[test]
    fn messages_round_trip() {
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
        assert!(e(&[KIND_CHALLENGE, 1, 2, 3]).contains("challenge"));
        assert!(e(b"\x01HDRPEER1aaaaaaaaaaaa").contains("MAC"));
        let mut many = vec![KIND_RAFT];
        many.extend_from_slice(&((PEER_FRAME_MESSAGES_MAX + 1) as u32).to_le_bytes());
        assert!(e(&many).contains("messages"));
        // Garbage where a message should be.
        let mut garbage = vec![KIND_RAFT, 1, 0, 0, 0, 1, 0, b's', 0, 0, 0, 0, 3, 0, 0, 0];
        garbage.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert!(e(&garbage).contains("not a raft message"));
    }
}
