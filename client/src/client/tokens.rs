//! Token management: create (the secret is drawn here and only its SHA-256
//! is sent), list (names and scopes) and revoke. Each needs a connection
//! whose token has `admin`.

use sha2::{Digest, Sha256};

use super::{Client, unexpected};
use crate::Error;
use crate::conn::Reply;

/// Random bytes in a secret: 256 bits, beyond any search.
pub const TOKEN_SECRET_BYTES: usize = 32;
/// How secrets begin, so that a leaked one is recognisable (by secret
/// scanners too); 64 hex digits follow.
pub const TOKEN_SECRET_PREFIX: &str = "hdn_";

/// What a token may do. Streams are names, or `*` for every stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenScope {
    /// Publish and subscribe on every stream.
    pub all: bool,
    /// Apply, pipeline retry, token management.
    pub admin: bool,
    /// Streams it may publish to.
    pub publish: Vec<String>,
    /// Streams it may read (fetch, consumer groups, and the stages of the
    /// pipelines reading from them).
    pub subscribe: Vec<String>,
}

/// A token as `list_tokens` reports it: never its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub name: String,
    pub scope: TokenScope,
}

impl TokenScope {
    fn from_wire(s: &hadron_wire::TokenScope<'_>) -> TokenScope {
        let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        TokenScope {
            all: s.all,
            admin: s.admin,
            publish: owned(&s.publish),
            subscribe: owned(&s.subscribe),
        }
    }
}

pub(crate) fn token_infos(ok: &hadron_wire::TokenListOk<'_>) -> Vec<TokenInfo> {
    ok.tokens
        .iter()
        .map(|t| TokenInfo {
            name: t.name.to_owned(),
            scope: TokenScope::from_wire(&t.scope),
        })
        .collect()
}

/// A new secret: [`TOKEN_SECRET_PREFIX`] and 32 bytes from the operating
/// system's random source, in hex.
fn new_secret() -> Result<String, Error> {
    let mut bytes = [0u8; TOKEN_SECRET_BYTES];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::Io(std::io::Error::other(format!("no random bytes: {e}"))))?;
    let mut secret = String::from(TOKEN_SECRET_PREFIX);
    for b in bytes {
        secret.push_str(&format!("{b:02x}"));
    }
    Ok(secret)
}

impl Client {
    /// Creates token `name` with `scope` and returns its secret, which
    /// exists only here: the server is sent its SHA-256 alone. Fails with
    /// `InvalidConfig` when a token of that name exists.
    pub async fn create_token(&self, name: &str, scope: &TokenScope) -> Result<String, Error> {
        let secret = new_secret()?;
        let hash: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let message = hadron_wire::Message::TokenCreate(hadron_wire::TokenCreate {
            name,
            secret_sha256: &hash,
            scope: hadron_wire::TokenScope {
                all: scope.all,
                admin: scope.admin,
                publish: scope.publish.iter().map(String::as_str).collect(),
                subscribe: scope.subscribe.iter().map(String::as_str).collect(),
            },
        });
        match self.admin_request("token create", &message).await? {
            Reply::ApplyOk(_) => Ok(secret),
            other => Err(unexpected("ApplyOk", &other)),
        }
    }

    /// Every token's name and scope, in name order.
    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>, Error> {
        let message = hadron_wire::Message::TokenList;
        match self.main().await?.request("token list", &message).await? {
            Reply::TokenListOk(tokens) => Ok(tokens),
            other => Err(unexpected("TokenListOk", &other)),
        }
    }

    /// Revokes token `name`: connections using it lose access at once.
    pub async fn revoke_token(&self, name: &str) -> Result<Vec<String>, Error> {
        let message = hadron_wire::Message::TokenRevoke(hadron_wire::TokenRevoke {
            name,
            change_id: super::cluster::change_id()?,
        });
        match self.admin_request("token revoke", &message).await? {
            Reply::ApplyOk(summary) => Ok(summary),
            other => Err(unexpected("ApplyOk", &other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_prefixed_hex_of_32_random_bytes_and_differ() {
        let a = new_secret().unwrap();
        let b = new_secret().unwrap();
        assert_ne!(a, b);
        let hex = a.strip_prefix(TOKEN_SECRET_PREFIX).unwrap();
        assert_eq!(hex.len(), 2 * TOKEN_SECRET_BYTES);
        assert!(
            hex.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }
}
