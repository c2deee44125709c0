//! Placement: which shard owns a stream partition. This is the one place the
//! rule lives; the server uses it to route and the handshake names it
//! (`PLACEMENT_NAME`) so shard-aware clients can send each partition's
//! requests straight to its owner's port (`base port + 1 + shard id`).
//!
//! The function is part of the protocol: changing it means a new
//! `PLACEMENT_NAME`, never a silent change of `shard_of`.

/// The name of the placement function, sent in `HandshakeOk.placement`.
pub const PLACEMENT_NAME: &str = "fnv1a64-v1";

const FNV1A64_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV1A64_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, 64-bit: start from the offset basis 0xcbf29ce484222325; for each
/// byte, XOR it into the hash, then multiply by the prime 0x100000001b3
/// modulo 2^64.
pub const fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash = FNV1A64_OFFSET_BASIS;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(FNV1A64_PRIME);
        i += 1;
    }
    hash
}

/// The shard that owns `partition` of `stream` on a server with `shards`
/// shards: `(fnv1a64(utf8 bytes of stream) + partition) mod 2^64 mod shards`.
///
/// Consecutive partitions of a stream land on consecutive shards, so a
/// stream with at least `shards` partitions uses every shard.
///
/// # Panics
///
/// When `shards` is 0: a server always has at least one shard, and
/// `decode` rejects a `HandshakeOk` that says otherwise.
pub fn shard_of(stream: &str, partition: u32, shards: u16) -> u16 {
    assert!(shards > 0, "shard_of: a server has at least one shard");
    let slot = fnv1a64(stream.as_bytes()).wrapping_add(u64::from(partition)) % u64::from(shards);
    // The remainder is below `shards`, which fits in u16.
    u16::try_from(slot).unwrap_or(0)
}

/// The port shard `shard_id` listens on when the shared client port is
/// `base_port`: `base_port + 1 + shard_id`, or `None` if that overflows.
pub fn shard_port(base_port: u16, shard_id: u16) -> Option<u16> {
    base_port.checked_add(1)?.checked_add(shard_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(fnv1a64(b"events"), 0xdd63_d0ce_c6bb_7d04);
    }

    #[test]
    fn shard_of_fixed_values() {
        // fnv1a64("events") = 0xdd63d0cec6bb7d04 = 15952208519208205572.
        assert_eq!(shard_of("events", 0, 1), 0);
        assert_eq!(shard_of("events", 0, 4), 0);
        assert_eq!(shard_of("events", 1, 4), 1);
        assert_eq!(shard_of("events", 3, 4), 3);
        assert_eq!(shard_of("events", 0, 3), 0);
        assert_eq!(shard_of("events", 1, 3), 1);
        assert_eq!(shard_of("events", 0, 7), 2);
        // fnv1a64("orders") = 0x00125d9250be8b4c.
        assert_eq!(shard_of("orders", 0, 16), 12);
        assert_eq!(shard_of("orders", 5, 16), 1);
        assert_eq!(shard_of("", 0, 10), 7);
    }

    #[test]
    fn shard_of_stays_below_shards() {
        let shards = 7;
        for partition in [0, 1, u32::MAX] {
            let s = shard_of("events", partition, shards);
            assert!(s < shards);
        }
    }

    #[test]
    fn shard_ports() {
        assert_eq!(shard_port(7000, 0), Some(7001));
        assert_eq!(shard_port(7000, 3), Some(7004));
        assert_eq!(shard_port(u16::MAX, 0), None);
    }
}
