//! `kind: Token`: a named credential and what it may do.
//!
//! ```yaml
//! apiVersion: hadron.rs/v1beta1
//! kind: Token
//! metadata: { name: billing-writer }
//! spec:
//!   streams:                   # or `all: true`: every stream, both ways
//!     publish: [events]        # stream names, or `*` for every stream
//!     subscribe: [orders, "*"] # fetch, groups, and the stages of pipelines
//!                              # reading from these streams
//!   admin: false               # apply, pipeline retry, token management
//!   secretSha256: 9f86d0...    # SHA-256 of the secret, 64 hex digits
//! ```
//!
//! The server keeps only the SHA-256 of a token's secret; `hadron token
//! create` draws the secret (32 random bytes from the OS, written `hdn_`
//! and 64 hex digits; see the client's `Client::create_token`) on the client and sends only its
//! hash, so the secret never crosses the network or reaches the data dir.
//! A hash of a high-entropy secret needs no salt or slow hash: nobody can
//! search 2^256 secrets. A handshake's token is hashed and compared in
//! constant time ([`secret_matches`]) with every token's hash, so the time
//! a handshake takes does not tell how much of a hash matched.
//!
//! The config file's `token:` is the bootstrap token: `all` and `admin`.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::{ConfigError, Problem, ResourceKind};
use super::name::check_resource_name;

/// Bytes of a SHA-256 digest.
pub const SECRET_SHA256_BYTES: usize = 32;
/// The pattern that names every stream.
pub const EVERY_STREAM: &str = "*";
/// Streams one `publish` or `subscribe` list may name: a request's check
/// walks the list.
pub const TOKEN_STREAMS_MAX: usize = 256;

/// What a request needs of its connection's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Publish to a stream.
    Publish,
    /// Read a stream: fetch, consumer groups, and the stages of pipelines
    /// reading from it.
    Subscribe,
    /// Apply, pipeline retry, token management.
    Admin,
}

impl Permission {
    /// The name used in the YAML and in refusals.
    pub const fn as_str(self) -> &'static str {
        match self {
            Permission::Publish => "publish",
            Permission::Subscribe => "subscribe",
            Permission::Admin => "admin",
        }
    }
}

/// A token declaration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenSpec {
    /// `metadata.name`; filled in from the document's metadata.
    #[serde(skip)]
    pub name: String,
    /// Publish and subscribe on every stream.
    #[serde(default, skip_serializing_if = "is_false")]
    pub all: bool,
    /// Per-stream grants (with `all`, refused as contradictory).
    #[serde(default, skip_serializing_if = "StreamGrants::is_empty")]
    pub streams: StreamGrants,
    /// Apply, pipeline retry and token management.
    #[serde(default, skip_serializing_if = "is_false")]
    pub admin: bool,
    /// SHA-256 of the secret, 64 lowercase hex digits.
    pub secret_sha256: String,
}

/// `spec.streams`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StreamGrants {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribe: Vec<String>,
}

impl StreamGrants {
    fn is_empty(&self) -> bool {
        self.publish.is_empty() && self.subscribe.is_empty()
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl TokenSpec {
    /// Whether the token may do `permission` (on `stream`; ignored for
    /// `Admin`).
    pub fn allows(&self, permission: Permission, stream: &str) -> bool {
        let list = match permission {
            Permission::Admin => return self.admin,
            _ if self.all => return true,
            Permission::Publish => &self.streams.publish,
            Permission::Subscribe => &self.streams.subscribe,
        };
        list.iter().any(|s| s == EVERY_STREAM || s == stream)
    }

    /// The stored hash, when it is well formed (validation checks it).
    pub fn secret_hash(&self) -> Option<[u8; SECRET_SHA256_BYTES]> {
        parse_hex(&self.secret_sha256)
    }

    /// Every problem, in field order; empty when valid.
    pub fn errors(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if let Err(reason) = check_resource_name(&self.name) {
            errors.push(ConfigError::new(
                "metadata.name",
                Problem::InvalidName {
                    name: self.name.clone(),
                    reason,
                },
            ));
        }
        if self.all && !self.streams.is_empty() {
            errors.push(invalid(
                "spec.streams",
                "`all: true` already grants every stream; leave `streams` out or drop `all`",
            ));
        }
        for (field, list) in [
            ("spec.streams.publish", &self.streams.publish),
            ("spec.streams.subscribe", &self.streams.subscribe),
        ] {
            if list.len() > TOKEN_STREAMS_MAX {
                errors.push(ConfigError::new(
                    field,
                    Problem::OutOfRange {
                        value: list.len() as u64,
                        min: 0,
                        max: TOKEN_STREAMS_MAX as u64,
                    },
                ));
            }
            for stream in list.iter().filter(|s| *s != EVERY_STREAM) {
                if let Err(reason) = check_resource_name(stream) {
                    errors.push(ConfigError::new(
                        field,
                        Problem::InvalidName {
                            name: stream.clone(),
                            reason,
                        },
                    ));
                }
            }
        }
        if self.secret_hash().is_none() {
            errors.push(invalid(
                "spec.secretSha256",
                "must be the SHA-256 of the secret as 64 lowercase hex digits (`hadron token create` makes one)",
            ));
        }
        errors
            .into_iter()
            .map(|e| e.in_resource(ResourceKind::Token, Some(&self.name)))
            .collect()
    }

    /// The first problem, if any.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.errors().into_iter().next() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

fn invalid(path: &str, reason: &str) -> ConfigError {
    ConfigError::new(
        path,
        Problem::Invalid {
            reason: reason.into(),
        },
    )
}

/// SHA-256 of a presented secret.
pub fn hash_secret(secret: &str) -> [u8; SECRET_SHA256_BYTES] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Whether two hashes are equal, in time that does not depend on where
/// they differ.
pub fn secret_matches(
    stored: &[u8; SECRET_SHA256_BYTES],
    presented: &[u8; SECRET_SHA256_BYTES],
) -> bool {
    stored.ct_eq(presented).into()
}

/// Lowercase hex of a hash (of any bytes: a wrong length then fails
/// validation with a message).
pub fn to_hex(hash: &[u8]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads 64 lowercase hex digits.
fn parse_hex(hex: &str) -> Option<[u8; SECRET_SHA256_BYTES]> {
    let digits = hex.as_bytes();
    if digits.len() != 2 * SECRET_SHA256_BYTES {
        return None;
    }
    let nibble = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; SECRET_SHA256_BYTES];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(publish: &[&str], subscribe: &[&str]) -> TokenSpec {
        TokenSpec {
            name: "t".into(),
            all: false,
            streams: StreamGrants {
                publish: publish.iter().map(|s| s.to_string()).collect(),
                subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
            },
            admin: false,
            secret_sha256: to_hex(&hash_secret("s")),
        }
    }

    #[test]
    fn a_scope_allows_exactly_its_streams_and_permissions() {
        let t = token(&["events"], &["orders"]);
        assert!(t.allows(Permission::Publish, "events"));
        assert!(!t.allows(Permission::Publish, "orders"));
        assert!(!t.allows(Permission::Publish, "events2"));
        assert!(!t.allows(Permission::Publish, "event"));
        assert!(t.allows(Permission::Subscribe, "orders"));
        assert!(!t.allows(Permission::Subscribe, "events"));
        assert!(!t.allows(Permission::Admin, ""));
    }

    #[test]
    fn a_star_covers_every_stream_of_its_list_only() {
        let t = token(&[], &["*"]);
        assert!(t.allows(Permission::Subscribe, "anything"));
        assert!(!t.allows(Permission::Publish, "anything"));
    }

    #[test]
    fn all_covers_every_stream_both_ways_but_not_admin() {
        let t = TokenSpec {
            all: true,
            ..token(&[], &[])
        };
        assert!(t.allows(Permission::Publish, "x"));
        assert!(t.allows(Permission::Subscribe, "y"));
        assert!(!t.allows(Permission::Admin, ""));
        let admin = TokenSpec {
            admin: true,
            ..token(&[], &[])
        };
        assert!(admin.allows(Permission::Admin, ""));
        assert!(!admin.allows(Permission::Publish, "x"));
    }

    #[test]
    fn a_secret_matches_only_its_own_hash() {
        let stored = hash_secret("hdn_secret");
        assert!(secret_matches(&stored, &hash_secret("hdn_secret")));
        assert!(!secret_matches(&stored, &hash_secret("hdn_secreT")));
        assert!(!secret_matches(&stored, &hash_secret("")));
        // The known SHA-256 of "abc".
        assert_eq!(
            to_hex(&hash_secret("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(parse_hex(&to_hex(&stored)), Some(stored));
    }

    #[test]
    fn a_token_document_reads_and_writes_back_the_same() {
        let hash = to_hex(&hash_secret("hdn_x"));
        let yaml = format!(
            "apiVersion: hadron.rs/v1beta1\nkind: Token\nmetadata: {{name: writer}}\nspec:\n  streams: {{publish: [events], subscribe: ['*']}}\n  admin: true\n  secretSha256: {hash}\n"
        );
        let resources = crate::config::parse_documents(&yaml).unwrap();
        let [crate::config::Resource::Token(t)] = resources.as_slice() else {
            panic!("{resources:?}");
        };
        assert_eq!(t.name, "writer");
        assert!(t.admin && !t.all);
        assert_eq!(t.streams.publish, ["events"]);
        assert_eq!(t.streams.subscribe, ["*"]);
        assert!(t.allows(Permission::Subscribe, "orders"));
        let written = crate::config::to_yaml(&resources[0]).unwrap();
        assert!(written.contains("kind: Token"), "{written}");
        assert_eq!(crate::config::parse_documents(&written).unwrap(), resources);
        // `all` alone, and the unknown field that a typo makes, refused.
        let all = format!(
            "apiVersion: hadron.rs/v1beta1\nkind: Token\nmetadata: {{name: root}}\nspec: {{all: true, secretSha256: {hash}}}\n"
        );
        let parsed = crate::config::parse_documents(&all).unwrap();
        let [crate::config::Resource::Token(root)] = parsed.as_slice() else {
            panic!("{parsed:?}");
        };
        assert!(root.all && root.allows(Permission::Publish, "any"));
        let typo = yaml.replace("admin:", "admn:");
        let e = crate::config::parse_documents(&typo).unwrap_err();
        assert!(e.to_string().contains("admn"), "{e}");
        let no_hash =
            "apiVersion: hadron.rs/v1beta1\nkind: Token\nmetadata: {name: t}\nspec: {all: true}\n";
        let e = crate::config::parse_documents(no_hash).unwrap_err();
        assert!(e.to_string().contains("secretSha256"), "{e}");
    }

    #[test]
    fn invalid_tokens_are_refused_naming_the_field() {
        let t = token(&["events"], &[]);
        assert_eq!(t.validate(), Ok(()));
        let upper = TokenSpec {
            secret_sha256: t.secret_sha256.to_uppercase(),
            ..t.clone()
        };
        let e = upper.validate().unwrap_err();
        assert_eq!(e.path, "spec.secretSha256");
        assert!(e.to_string().starts_with("Token \"t\": "), "{e}");
        let short = TokenSpec {
            secret_sha256: "abcd".into(),
            ..t.clone()
        };
        assert_eq!(short.validate().unwrap_err().path, "spec.secretSha256");
        let both = TokenSpec {
            all: true,
            ..t.clone()
        };
        assert_eq!(both.validate().unwrap_err().path, "spec.streams");
        let bad_stream = token(&["Bad_Name"], &[]);
        assert_eq!(
            bad_stream.validate().unwrap_err().path,
            "spec.streams.publish"
        );
        let many: Vec<String> = (0..=TOKEN_STREAMS_MAX).map(|i| format!("s{i}")).collect();
        let too_many = TokenSpec {
            streams: StreamGrants {
                publish: Vec::new(),
                subscribe: many,
            },
            ..t
        };
        assert_eq!(
            too_many.validate().unwrap_err().path,
            "spec.streams.subscribe"
        );
    }
}
