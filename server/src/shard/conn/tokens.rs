//! Token management from a connection: create and revoke (on shard 0,
//! serialized with applies), and list (from this shard's topology, which
//! every change is installed on). A list names tokens and their scopes,
//! never their hashes.

use super::*;
use crate::config::TokenSpec;
use crate::config::token::{StreamGrants, to_hex};

/// The spec a `TokenCreate` asks for (validated on shard 0).
pub(super) fn spec_of(t: &hadron_wire::TokenCreate<'_>) -> TokenSpec {
    let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    TokenSpec {
        name: t.name.to_owned(),
        all: t.scope.all,
        streams: StreamGrants {
            publish: owned(&t.scope.publish),
            subscribe: owned(&t.scope.subscribe),
        },
        admin: t.scope.admin,
        secret_sha256: to_hex(t.secret_sha256),
    }
}

/// Creates or revokes a token; answered with `ApplyOk`.
pub(super) async fn change(shard: &Rc<Shard>, change: TokenChange) -> Result<Encode, Error> {
    super::admin::applied(shard.call(0, Request::Tokens(change)).await)
}

/// The tokens' names and scopes, in name order.
pub(super) fn list(shard: &Rc<Shard>) -> Encode {
    let tokens: Vec<TokenSpec> = shard.topology.borrow().tokens.values().cloned().collect();
    Box::new(move |id, outbox: &Outbox| {
        let tokens = tokens
            .iter()
            .map(|t| hadron_wire::TokenInfo {
                name: &t.name,
                scope: hadron_wire::TokenScope {
                    all: t.all,
                    admin: t.admin,
                    publish: t.streams.publish.iter().map(String::as_str).collect(),
                    subscribe: t.streams.subscribe.iter().map(String::as_str).collect(),
                },
            })
            .collect();
        outbox.send(
            id,
            &Message::TokenListOk(hadron_wire::TokenListOk { tokens }),
        )
    })
}
