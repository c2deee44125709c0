//! The token management messages (`TokenCreate`, `TokenList`,
//! `TokenListOk`, `TokenRevoke`): their types, their conversion from a
//! verified frame and their encoding. The server never sends a secret or
//! its hash back: `TokenListOk` carries names and scopes only.

use flatbuffers::{ForwardsUOffset, Vector};

use super::{Fbb, Message, Union};
use crate::generated as fb;

/// What a token may do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenScope<'a> {
    /// Publish and subscribe on every stream.
    pub all: bool,
    /// Apply, pipeline retry, token management.
    pub admin: bool,
    /// Streams (or `*`) it may publish to.
    pub publish: Vec<&'a str>,
    /// Streams (or `*`) it may read, with their pipelines' stages.
    pub subscribe: Vec<&'a str>,
}

/// Create a token from the SHA-256 of a secret the client drew.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenCreate<'a> {
    pub name: &'a str,
    /// 32 bytes (the server refuses anything else).
    pub secret_sha256: &'a [u8],
    pub scope: TokenScope<'a>,
}

/// One token in `TokenListOk`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenInfo<'a> {
    pub name: &'a str,
    pub scope: TokenScope<'a>,
}

/// The answer to `TokenList`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenListOk<'a> {
    pub tokens: Vec<TokenInfo<'a>>,
}

/// Revoke a token. `change_id` (0: none) is drawn by the client and sent
/// again with a resend, so that a revoke applied already is answered as
/// it was.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenRevoke<'a> {
    pub name: &'a str,
    pub change_id: u64,
}

fn strings<'a>(v: Option<Vector<'a, ForwardsUOffset<&'a str>>>) -> Vec<&'a str> {
    v.map(|v| v.iter().collect()).unwrap_or_default()
}

pub(super) fn token_create<'a>(b: &fb::TokenCreate<'a>) -> Message<'a> {
    Message::TokenCreate(TokenCreate {
        name: b.name(),
        secret_sha256: b.secret_sha256().bytes(),
        scope: TokenScope {
            all: b.all(),
            admin: b.admin(),
            publish: strings(b.publish()),
            subscribe: strings(b.subscribe()),
        },
    })
}

pub(super) fn token_list_ok<'a>(b: &fb::TokenListOk<'a>) -> Message<'a> {
    let tokens = b
        .tokens()
        .map(|v| {
            v.iter()
                .map(|t| TokenInfo {
                    name: t.name(),
                    scope: TokenScope {
                        all: t.all(),
                        admin: t.admin(),
                        publish: strings(t.publish()),
                        subscribe: strings(t.subscribe()),
                    },
                })
                .collect()
        })
        .unwrap_or_default();
    Message::TokenListOk(TokenListOk { tokens })
}

type Strings = flatbuffers::WIPOffset<Vector<'static, ForwardsUOffset<&'static str>>>;

fn string_vector(fbb: &mut Fbb, items: &[&str]) -> Option<Strings> {
    let offsets: Vec<_> = items.iter().map(|s| fbb.create_string(s)).collect();
    (!offsets.is_empty()).then(|| fbb.create_vector(&offsets))
}

pub(super) fn build_token_create(fbb: &mut Fbb, m: &TokenCreate<'_>) -> (fb::Body, Union) {
    let args = fb::TokenCreateArgs {
        name: Some(fbb.create_string(m.name)),
        secret_sha256: Some(fbb.create_vector(m.secret_sha256)),
        all: m.scope.all,
        admin: m.scope.admin,
        publish: string_vector(fbb, &m.scope.publish),
        subscribe: string_vector(fbb, &m.scope.subscribe),
    };
    let t = fb::TokenCreate::create(fbb, &args);
    (fb::Body::TokenCreate, t.as_union_value())
}

pub(super) fn build_token_list(fbb: &mut Fbb) -> (fb::Body, Union) {
    let t = fb::TokenList::create(fbb, &fb::TokenListArgs {});
    (fb::Body::TokenList, t.as_union_value())
}

pub(super) fn build_token_list_ok(fbb: &mut Fbb, m: &TokenListOk<'_>) -> (fb::Body, Union) {
    let tokens: Vec<_> = m
        .tokens
        .iter()
        .map(|t| {
            let args = fb::TokenInfoArgs {
                name: Some(fbb.create_string(t.name)),
                all: t.scope.all,
                admin: t.scope.admin,
                publish: string_vector(fbb, &t.scope.publish),
                subscribe: string_vector(fbb, &t.scope.subscribe),
            };
            fb::TokenInfo::create(fbb, &args)
        })
        .collect();
    let args = fb::TokenListOkArgs {
        tokens: (!tokens.is_empty()).then(|| fbb.create_vector(&tokens)),
    };
    let t = fb::TokenListOk::create(fbb, &args);
    (fb::Body::TokenListOk, t.as_union_value())
}

pub(super) fn build_token_revoke(fbb: &mut Fbb, m: &TokenRevoke<'_>) -> (fb::Body, Union) {
    let args = fb::TokenRevokeArgs {
        name: Some(fbb.create_string(m.name)),
        change_id: m.change_id,
    };
    let t = fb::TokenRevoke::create(fbb, &args);
    (fb::Body::TokenRevoke, t.as_union_value())
}
