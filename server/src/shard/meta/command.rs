//! The metadata group's commands: one record of one entry each, a small
//! versioned binary encoding with every length bounded.
//!
//! ```text
//!  u8 version (1) | u8 kind | fields
//!  kind 1 Apply        u8 force | str yaml
//!  kind 2 TokenCreate  str name | u8 all | u8 admin | list publish | list subscribe | str secret_sha256
//!  kind 3 TokenRevoke  str name
//!  kind 4 Move         str stream | u32 partition | u32 n | n x u64 voters
//!  kind 5 NodeAdd      u64 id | str address | u8 has_peer | [str peer_address]
//!  kind 6 NodeRemove   u64 id
//!  kind 7 State        str resources_yaml
//!                      | u32 n | n x (str stream | u32 partition | u32 m | m x u64 voter)
//!                      | u32 a | a x (u64 id | str address | u8 has_peer | [str peer_address])
//!                      | u32 r | r x u64 removed_id
//!  kind 8 Apply placed u8 force | str yaml
//!                      | u32 n | n x (str stream | u32 partition | u32 m | m x u64 voter)
//!  kind 9 State placed the fields of kind 7 | u32 c | c x (str stream | u32 partition)
//!  kind 10 Moves       u32 n | n x (str stream | u32 partition | u32 m | m x u64 voter)
//!  str:  u32 length | UTF-8 bytes        list: u32 count | count x str
//! ```
//!
//! An `Apply` that creates replicated partitions carries where the
//! leader placed them (kind 8; kind 1 when it places nothing, as before
//! placement was decided by the leader); a `State` whose placement
//! overrides include some made at creation names those (kind 9; kind 7
//! otherwise). Records of kinds 1 and 7 decode as they always did.
//!
//! `State` is the node's whole metadata (docs/replication.md section 2,
//! "Compaction"): the resources as `resources.yaml` holds them (streams,
//! pipelines, tokens), the placement overrides (`cluster.placement`) and
//! the registry's changes (`cluster.peers`: nodes added, nodes removed).
//! Its lists are bounded by [`STATE_ITEMS_MAX`], a move's voters by
//! [`COMMAND_LIST_ITEMS_MAX`].
//!
//! Integers are little-endian. A record that does not decode (a version
//! or kind unknown, a length past the end, bytes left over, text that is
//! not UTF-8, a count over its bound) is a [`DecodeError`] naming the
//! offset; the caller names the Raft index.

use crate::config::TokenSpec;
use crate::config::cluster::PeerSpec;
use crate::config::token::StreamGrants;

/// The encoding's version byte.
pub const COMMAND_VERSION: u8 = 1;
/// Most items in a list (a token's stream grants, a move's voters).
pub const COMMAND_LIST_ITEMS_MAX: usize = 4_096;

const KIND_APPLY: u8 = 1;
const KIND_TOKEN_CREATE: u8 = 2;
const KIND_TOKEN_REVOKE: u8 = 3;
const KIND_MOVE: u8 = 4;
const KIND_NODE_ADD: u8 = 5;
const KIND_NODE_REMOVE: u8 = 6;
const KIND_STATE: u8 = 7;
const KIND_APPLY_PLACED: u8 = 8;
const KIND_STATE_PLACED: u8 = 9;
const KIND_MOVES: u8 = 10;
/// A token revoke or a rebalance's moves with the client's change id (a
/// u64 after the kind), so that a resend is answered as it was.
const KIND_TOKEN_REVOKE_CHANGE: u8 = 11;
const KIND_MOVES_CHANGE: u8 = 12;
/// Most items in one of a `State`'s lists (placement overrides, nodes
/// added, nodes removed): at least every partition the server may hold
/// (`partitionsMax` is at most `RESOURCES_MAX_MAX`).
pub const STATE_ITEMS_MAX: usize = 1 << 20;
const _: () = assert!(STATE_ITEMS_MAX >= crate::config::server::RESOURCES_MAX_MAX as usize);

/// A node's whole metadata, as a `State` command carries it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaSnapshot {
    /// The resources, as `resources.yaml` holds them.
    pub resources: String,
    /// Placement overrides: (stream, partition, voters), in order.
    pub placement: Vec<(String, u32, Vec<u64>)>,
    /// Nodes added at runtime (the registry's `peer` lines).
    pub added: Vec<PeerSpec>,
    /// Nodes removed at runtime (its `removed` lines).
    pub removed: Vec<u64>,
    /// The overrides of `placement` made when their stream was created
    /// or grew (`Overrides::place`), in order.
    pub created: Vec<(String, u32)>,
}

/// Where the leader placed new replicated partitions: (stream,
/// partition, voters, the preferred leader first).
pub type Placements = Vec<(String, u32, Vec<u64>)>;

/// A change to the cluster's metadata, as the group's log holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `hadron apply`: resources (YAML), forced or not, and where the
    /// leader placed the replicated partitions it creates.
    Apply {
        yaml: String,
        force: bool,
        placement: Placements,
    },
    /// `hadron token create`.
    TokenCreate(TokenSpec),
    /// `hadron token revoke`, with the client's change id (0: none).
    TokenRevoke { name: String, change: u64 },
    /// `hadron cluster move`.
    Move {
        stream: String,
        partition: u32,
        voters: Vec<u64>,
    },
    /// `hadron cluster rebalance`: the moves its leader planned
    /// (`rebalance.rs`), applied in order as `Move`s are, with the
    /// client's change id (0: none).
    Moves { moves: Placements, change: u64 },
    /// `hadron cluster add-node`.
    NodeAdd(PeerSpec),
    /// `hadron cluster remove-node`.
    NodeRemove(u64),
    /// The whole metadata state, proposed by the leader every
    /// `metaCompactEveryEntries` entries: applying it replaces a node's
    /// state, and the log before it may go.
    State(MetaSnapshot),
}

/// Why a record is not a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Where in the record.
    pub offset: usize,
    pub reason: &'static str,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "metadata command: {} at byte {}",
            self.reason, self.offset
        )
    }
}

impl Command {
    /// What it is, for logs and answers.
    pub fn describe(&self) -> String {
        match self {
            Command::Apply { force, .. } => {
                format!("apply{}", if *force { " --force" } else { "" })
            }
            Command::TokenCreate(t) => format!("token create {}", t.name),
            Command::TokenRevoke { name, .. } => format!("token revoke {name}"),
            Command::Move {
                stream,
                partition,
                voters,
            } => format!("move {stream}/{partition} to {voters:?}"),
            Command::Moves { moves, .. } => format!("rebalance ({} moves)", moves.len()),
            Command::NodeAdd(p) => format!("add-node {}", p.id),
            Command::NodeRemove(id) => format!("remove-node {id}"),
            Command::State(s) => format!(
                "state ({} bytes of resources, {} placements, {} nodes added, {} removed)",
                s.resources.len(),
                s.placement.len(),
                s.added.len(),
                s.removed.len()
            ),
        }
    }

    /// The client's change id of a change that is not idempotent by its
    /// content (a token revoke, a rebalance), 0 for the others.
    pub fn change_id(&self) -> u64 {
        match self {
            Command::TokenRevoke { change, .. } | Command::Moves { change, .. } => *change,
            _ => 0,
        }
    }

    /// Whether `record` is a `State` (its version and kind), without
    /// decoding it.
    pub fn is_state(record: &[u8]) -> bool {
        matches!(
            record.get(..2),
            Some(&[COMMAND_VERSION, KIND_STATE | KIND_STATE_PLACED])
        )
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![COMMAND_VERSION];
        match self {
            Command::Apply {
                yaml,
                force,
                placement,
            } => {
                let placed = !placement.is_empty();
                out.push(if placed {
                    KIND_APPLY_PLACED
                } else {
                    KIND_APPLY
                });
                out.push(u8::from(*force));
                put_str(&mut out, yaml);
                if placed {
                    put_placement(&mut out, placement);
                }
            }
            Command::TokenCreate(t) => {
                out.push(KIND_TOKEN_CREATE);
                put_str(&mut out, &t.name);
                out.push(u8::from(t.all));
                out.push(u8::from(t.admin));
                put_list(&mut out, &t.streams.publish);
                put_list(&mut out, &t.streams.subscribe);
                put_str(&mut out, &t.secret_sha256);
            }
            Command::TokenRevoke { name, change } => {
                if *change == 0 {
                    out.push(KIND_TOKEN_REVOKE);
                } else {
                    out.push(KIND_TOKEN_REVOKE_CHANGE);
                    out.extend_from_slice(&change.to_le_bytes());
                }
                put_str(&mut out, name);
            }
            Command::Move {
                stream,
                partition,
                voters,
            } => {
                out.push(KIND_MOVE);
                put_str(&mut out, stream);
                out.extend_from_slice(&partition.to_le_bytes());
                put_len(&mut out, voters.len());
                for v in voters {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            Command::Moves { moves, change } => {
                if *change == 0 {
                    out.push(KIND_MOVES);
                } else {
                    out.push(KIND_MOVES_CHANGE);
                    out.extend_from_slice(&change.to_le_bytes());
                }
                put_placement(&mut out, moves);
            }
            Command::NodeAdd(p) => {
                out.push(KIND_NODE_ADD);
                put_peer(&mut out, p);
            }
            Command::NodeRemove(id) => {
                out.push(KIND_NODE_REMOVE);
                out.extend_from_slice(&id.to_le_bytes());
            }
            Command::State(s) => {
                let placed = !s.created.is_empty();
                out.push(if placed {
                    KIND_STATE_PLACED
                } else {
                    KIND_STATE
                });
                put_state(&mut out, s);
                if placed {
                    put_len(&mut out, s.created.len());
                    for (stream, partition) in &s.created {
                        put_str(&mut out, stream);
                        out.extend_from_slice(&partition.to_le_bytes());
                    }
                }
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Command, DecodeError> {
        let mut r = Reader { bytes, at: 0 };
        if r.u8()? != COMMAND_VERSION {
            return Err(r.error_at(0, "unknown version"));
        }
        let command = match r.u8()? {
            kind @ (KIND_APPLY | KIND_APPLY_PLACED) => {
                let force = r.flag()?;
                let yaml = r.string()?;
                let placement = if kind == KIND_APPLY_PLACED {
                    r.placement()?
                } else {
                    Vec::new()
                };
                Command::Apply {
                    yaml,
                    force,
                    placement,
                }
            }
            KIND_TOKEN_CREATE => {
                let name = r.string()?;
                let (all, admin) = (r.flag()?, r.flag()?);
                let publish = r.list()?;
                let subscribe = r.list()?;
                Command::TokenCreate(TokenSpec {
                    name,
                    all,
                    streams: StreamGrants { publish, subscribe },
                    admin,
                    secret_sha256: r.string()?,
                })
            }
            KIND_TOKEN_REVOKE => Command::TokenRevoke {
                name: r.string()?,
                change: 0,
            },
            KIND_TOKEN_REVOKE_CHANGE => {
                let change = r.u64()?;
                Command::TokenRevoke {
                    name: r.string()?,
                    change,
                }
            }
            KIND_MOVE => {
                let stream = r.string()?;
                let partition = r.u32()?;
                let n = r.count()?;
                let voters = (0..n).map(|_| r.u64()).collect::<Result<_, _>>()?;
                Command::Move {
                    stream,
                    partition,
                    voters,
                }
            }
            KIND_MOVES => Command::Moves {
                moves: r.placement()?,
                change: 0,
            },
            KIND_MOVES_CHANGE => {
                let change = r.u64()?;
                Command::Moves {
                    moves: r.placement()?,
                    change,
                }
            }
            KIND_NODE_ADD => Command::NodeAdd(r.peer()?),
            KIND_NODE_REMOVE => Command::NodeRemove(r.u64()?),
            KIND_STATE => Command::State(r.state()?),
            KIND_STATE_PLACED => {
                let mut state = r.state()?;
                let c = r.state_count()?;
                state.created = (0..c)
                    .map(|_| Ok((r.string()?, r.u32()?)))
                    .collect::<Result<_, DecodeError>>()?;
                Command::State(state)
            }
            _ => return Err(r.error_at(1, "unknown kind")),
        };
        if r.at != bytes.len() {
            return Err(r.error_at(r.at, "bytes after the command"));
        }
        Ok(command)
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    // Every length encoded is of a request the connection bounded by its
    // frame (`frameBytesMax` < 4 GiB).
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn put_peer(out: &mut Vec<u8>, p: &PeerSpec) {
    out.extend_from_slice(&p.id.to_le_bytes());
    put_str(out, &p.address);
    out.push(u8::from(p.peer_address.is_some()));
    if let Some(a) = &p.peer_address {
        put_str(out, a);
    }
}

fn put_placement(out: &mut Vec<u8>, placement: &[(String, u32, Vec<u64>)]) {
    put_len(out, placement.len());
    for (stream, partition, voters) in placement {
        put_str(out, stream);
        out.extend_from_slice(&partition.to_le_bytes());
        put_len(out, voters.len());
        for v in voters {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

fn put_state(out: &mut Vec<u8>, s: &MetaSnapshot) {
    put_str(out, &s.resources);
    put_placement(out, &s.placement);
    put_len(out, s.added.len());
    for p in &s.added {
        put_peer(out, p);
    }
    put_len(out, s.removed.len());
    for id in &s.removed {
        out.extend_from_slice(&id.to_le_bytes());
    }
}

fn put_list(out: &mut Vec<u8>, items: &[String]) {
    put_len(out, items.len());
    for s in items {
        put_str(out, s);
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn error_at(&self, offset: usize, reason: &'static str) -> DecodeError {
        DecodeError { offset, reason }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(DecodeError {
                offset: self.at,
                reason: "a field runs past the end",
            })?;
        let got = &self.bytes[self.at..end];
        self.at = end;
        Ok(got)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn flag(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.error_at(self.at - 1, "a flag neither 0 nor 1")),
        }
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn count(&mut self) -> Result<usize, DecodeError> {
        let at = self.at;
        let n = self.u32()? as usize;
        if n > COMMAND_LIST_ITEMS_MAX {
            return Err(self.error_at(at, "a list longer than COMMAND_LIST_ITEMS_MAX"));
        }
        Ok(n)
    }

    fn state_count(&mut self) -> Result<usize, DecodeError> {
        let at = self.at;
        let n = self.u32()? as usize;
        if n > STATE_ITEMS_MAX {
            return Err(self.error_at(at, "a list longer than STATE_ITEMS_MAX"));
        }
        Ok(n)
    }

    fn peer(&mut self) -> Result<PeerSpec, DecodeError> {
        let id = self.u64()?;
        let address = self.string()?;
        let peer_address = if self.flag()? {
            Some(self.string()?)
        } else {
            None
        };
        Ok(PeerSpec {
            id,
            address,
            peer_address,
        })
    }

    /// (stream, partition, voters) entries, at most [`STATE_ITEMS_MAX`].
    fn placement(&mut self) -> Result<Placements, DecodeError> {
        let n = self.state_count()?;
        (0..n)
            .map(|_| {
                let stream = self.string()?;
                let partition = self.u32()?;
                let m = self.count()?;
                let voters = (0..m).map(|_| self.u64()).collect::<Result<_, _>>()?;
                Ok((stream, partition, voters))
            })
            .collect()
    }

    fn state(&mut self) -> Result<MetaSnapshot, DecodeError> {
        let resources = self.string()?;
        let placement = self.placement()?;
        let a = self.state_count()?;
        let added = (0..a).map(|_| self.peer()).collect::<Result<_, _>>()?;
        let r = self.state_count()?;
        let removed = (0..r).map(|_| self.u64()).collect::<Result<_, _>>()?;
        Ok(MetaSnapshot {
            resources,
            placement,
            added,
            removed,
            created: Vec::new(),
        })
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let at = self.at;
        let n = self.u32()? as usize;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.error_at(at, "text that is not UTF-8"))
    }

    fn list(&mut self) -> Result<Vec<String>, DecodeError> {
        let n = self.count()?;
        (0..n).map(|_| self.string()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn samples() -> Vec<Command> {
        vec![
            Command::Apply {
                yaml: "kind: Stream\n".into(),
                force: true,
                placement: Vec::new(),
            },
            Command::Apply {
                yaml: "kind: Stream\nname: orders\n".into(),
                force: false,
                placement: vec![
                    ("orders".into(), 0, vec![4, 1, 2]),
                    ("orders".into(), 1, vec![2, 3, 4]),
                ],
            },
            Command::TokenCreate(TokenSpec {
                name: "ops".into(),
                all: false,
                streams: StreamGrants {
                    publish: vec!["a".into(), "b".into()],
                    subscribe: vec!["*".into()],
                },
                admin: true,
                secret_sha256: "ab".repeat(32),
            }),
            Command::TokenRevoke {
                name: "ops".into(),
                change: 0,
            },
            Command::TokenRevoke {
                name: "ops".into(),
                change: u64::MAX,
            },
            Command::Move {
                stream: "orders".into(),
                partition: 3,
                voters: vec![1, 2, 4],
            },
            Command::Moves {
                moves: vec![
                    ("orders".into(), 0, vec![4, 2, 3]),
                    ("logs".into(), 7, vec![1, 4]),
                ],
                change: 0,
            },
            Command::Moves {
                moves: Vec::new(),
                change: 0x5eed,
            },
            Command::NodeAdd(PeerSpec {
                id: 4,
                address: "127.0.0.1:7000".into(),
                peer_address: Some("127.0.0.1:7100".into()),
            }),
            Command::NodeAdd(PeerSpec {
                id: 5,
                address: "h:1".into(),
                peer_address: None,
            }),
            Command::NodeRemove(3),
            Command::State(MetaSnapshot::default()),
            Command::State(MetaSnapshot {
                resources: "kind: Stream\nname: orders\n".into(),
                placement: vec![("orders".into(), 0, vec![2, 3]), ("x".into(), 7, vec![1])],
                added: vec![PeerSpec {
                    id: 4,
                    address: "127.0.0.1:7000".into(),
                    peer_address: Some("127.0.0.1:7100".into()),
                }],
                removed: vec![2, 9],
                created: Vec::new(),
            }),
            Command::State(MetaSnapshot {
                resources: "kind: Stream\nname: orders\n".into(),
                placement: vec![("orders".into(), 0, vec![2, 3])],
                created: vec![("orders".into(), 0), ("x".into(), 7)],
                ..MetaSnapshot::default()
            }),
        ]
    }

    #[test]
    fn every_command_decodes_to_itself() {
        for c in samples() {
            assert_eq!(Command::decode(&c.encode()), Ok(c.clone()), "{c:?}");
        }
    }

    #[test]
    fn a_change_id_is_kept_and_an_entry_without_one_decodes_as_before() {
        // Written before change ids: kind 3 (token revoke), kind 10 (moves).
        let mut old = vec![COMMAND_VERSION, KIND_TOKEN_REVOKE];
        put_str(&mut old, "ops");
        let revoke = Command::decode(&old).unwrap();
        assert_eq!(revoke.change_id(), 0);
        assert_eq!(revoke.encode(), old, "an id of 0 encodes as before");
        let mut old = vec![COMMAND_VERSION, KIND_MOVES];
        put_placement(&mut old, &[("orders".into(), 1, vec![1, 2, 3])]);
        assert_eq!(Command::decode(&old).unwrap().encode(), old);
        let with = Command::TokenRevoke {
            name: "ops".into(),
            change: 42,
        };
        let bytes = with.encode();
        assert_eq!(bytes[1], KIND_TOKEN_REVOKE_CHANGE);
        assert_eq!(Command::decode(&bytes).unwrap().change_id(), 42);
        assert_eq!(Command::NodeRemove(3).change_id(), 0);
    }

    #[test]
    fn a_truncated_command_is_an_error_at_every_length() {
        for c in samples() {
            let bytes = c.encode();
            for len in 0..bytes.len() {
                let e = Command::decode(&bytes[..len]).unwrap_err();
                assert!(e.offset <= len, "{c:?} cut at {len}: {e}");
            }
        }
    }

    #[test]
    fn unknown_versions_kinds_flags_and_trailing_bytes_are_refused_by_offset() {
        let mut bytes = Command::NodeRemove(1).encode();
        bytes[0] = 9;
        assert_eq!(
            Command::decode(&bytes).unwrap_err().to_string(),
            "metadata command: unknown version at byte 0"
        );
        bytes[0] = COMMAND_VERSION;
        bytes[1] = 77;
        assert_eq!(Command::decode(&bytes).unwrap_err().reason, "unknown kind");
        let mut apply = Command::Apply {
            yaml: String::new(),
            force: false,
            placement: Vec::new(),
        }
        .encode();
        apply[2] = 2;
        let e = Command::decode(&apply).unwrap_err();
        assert_eq!((e.offset, e.reason), (2, "a flag neither 0 nor 1"));
        let mut long = Command::NodeRemove(1).encode();
        long.push(0);
        let e = Command::decode(&long).unwrap_err();
        assert_eq!((e.offset, e.reason), (10, "bytes after the command"));
    }

    #[test]
    fn an_apply_places_only_when_it_carries_placement_and_an_old_apply_decodes_as_before() {
        // An Apply as written before placement by the leader: kind 1.
        let mut old = vec![COMMAND_VERSION, KIND_APPLY, 1];
        put_str(&mut old, "kind: Stream\n");
        let unplaced = Command::Apply {
            yaml: "kind: Stream\n".into(),
            force: true,
            placement: Vec::new(),
        };
        assert_eq!(unplaced.encode(), old);
        assert_eq!(Command::decode(&old), Ok(unplaced));
        let placed = Command::Apply {
            yaml: String::new(),
            force: false,
            placement: vec![("s".into(), 0, vec![1, 2])],
        };
        let bytes = placed.encode();
        assert_eq!(bytes[1], KIND_APPLY_PLACED);
        assert!(!Command::is_state(&bytes));
        let state = Command::State(MetaSnapshot {
            created: vec![("s".into(), 0)],
            ..MetaSnapshot::default()
        });
        assert!(Command::is_state(&state.encode()));
        // A placement list over its bound.
        let mut long = vec![COMMAND_VERSION, KIND_APPLY_PLACED, 0];
        put_str(&mut long, "");
        let at = long.len();
        put_len(&mut long, STATE_ITEMS_MAX + 1);
        let e = Command::decode(&long).unwrap_err();
        assert_eq!(
            (e.offset, e.reason),
            (at, "a list longer than STATE_ITEMS_MAX")
        );
    }

    #[test]
    fn a_state_list_over_its_bound_is_refused_by_offset() {
        let mut bytes = vec![COMMAND_VERSION, KIND_STATE];
        put_str(&mut bytes, "");
        let at = bytes.len();
        put_len(&mut bytes, STATE_ITEMS_MAX + 1);
        let e = Command::decode(&bytes).unwrap_err();
        assert_eq!(
            (e.offset, e.reason),
            (at, "a list longer than STATE_ITEMS_MAX")
        );
    }

    #[test]
    fn a_list_over_its_bound_and_text_not_utf8_are_refused() {
        let mut bytes = vec![COMMAND_VERSION, KIND_MOVE];
        put_str(&mut bytes, "s");
        bytes.extend_from_slice(&0u32.to_le_bytes());
        put_len(&mut bytes, COMMAND_LIST_ITEMS_MAX + 1);
        let e = Command::decode(&bytes).unwrap_err();
        assert_eq!(e.reason, "a list longer than COMMAND_LIST_ITEMS_MAX");
        let mut bad = vec![COMMAND_VERSION, KIND_TOKEN_REVOKE];
        bad.extend_from_slice(&2u32.to_le_bytes());
        bad.extend_from_slice(&[0xff, 0xfe]);
        assert_eq!(
            Command::decode(&bad).unwrap_err().reason,
            "text that is not UTF-8"
        );
    }
}
