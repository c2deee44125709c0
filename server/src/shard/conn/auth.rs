//! What a connection's token lets it do.
//!
//! The handshake resolves the presented token to a [`Principal`]: `Full`
//! for the config file's bootstrap `token:` (all streams and admin) and for
//! any client of a server without one (loopback, or `insecureNoToken`: as
//! before tokens existed), or a named Token whose secret's SHA-256 matched
//! (compared in constant time with every token's, without stopping at a
//! match). With a bootstrap token, anything else is `Unauthorized`.
//!
//! Every request is then checked against the token as the shard's current
//! topology has it, not as it was at the handshake, so a narrowed token
//! narrows its open connections at once, and a revoked one (or one whose
//! name was given a new secret) is refused with `Forbidden`. What a
//! request needs:
//!
//! | request | needs |
//! |---|---|
//! | Publish | publish on the stream |
//! | Fetch, Subscribe | subscribe on the stream |
//! | Ack, Nack | subscribe on every stream this connection subscribed to |
//! | PipelineSubscribe | subscribe on the pipeline's source stream |
//! | StageAck(s), StageNack | subscribe on the source stream of every pipeline this connection subscribed to |
//! | Apply, PipelineRetry, TokenCreate, TokenList, TokenRevoke, PartitionMove, NodeAdd, NodeRemove, Rebalance | admin |
//! | Status, Metadata | any token (names and counts, no events) |
//!
//! An ack only settles deliveries made to this connection's own
//! subscriptions, so checking the streams it subscribed to covers every
//! delivery it can ack. Deliveries already flowing to a subscription are
//! not requests: when an install leaves a connection's token revoked, or
//! without subscribe on a stream it subscribed to (directly or through a
//! pipeline), [`Registry::revalidate`] sends it the `Forbidden` error and
//! closes it, which detaches its subscriptions everywhere.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};

use super::*;
use crate::config::token::{SECRET_SHA256_BYTES, hash_secret, secret_matches};
use crate::config::{Permission, TokenSpec};
use crate::shard::Topology;

/// Who a connection acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Principal {
    /// Everything: the bootstrap token, or a server without one.
    Full,
    /// A Token resource, by name and the hash it authenticated with.
    Token {
        name: String,
        hash: [u8; SECRET_SHA256_BYTES],
    },
}

impl Principal {
    /// Resolves a handshake's token; `None` when it must be refused.
    pub(crate) fn of(
        config: &ServerConfig,
        topology: &Topology,
        presented: &str,
    ) -> Option<Principal> {
        if let Some(bootstrap) = &config.token
            && bootstrap.matches(presented)
        {
            return Some(Principal::Full);
        }
        let hash = hash_secret(presented);
        let mut found = None;
        // Every token is compared, so the time taken does not say which
        // (or whether one) matched.
        for spec in topology.tokens.values() {
            if let Some(stored) = spec.secret_hash()
                && secret_matches(&stored, &hash)
            {
                found = Some(spec.name.clone());
            }
        }
        match found {
            Some(name) => Some(Principal::Token { name, hash }),
            None if config.token.is_none() => Some(Principal::Full),
            None => None,
        }
    }
}

/// The token a connection acts as, and what it subscribed to.
#[derive(Debug)]
pub(crate) struct ConnAuth {
    /// `None` until the handshake.
    principal: RefCell<Option<Principal>>,
    /// Streams of this connection's consumer-group subscriptions.
    streams: RefCell<BTreeSet<String>>,
    /// Pipelines of its stage subscriptions.
    pipelines: RefCell<BTreeSet<String>>,
    outbox: Rc<Outbox>,
    /// Stops the connection's reader.
    abort: AbortHandle,
    /// Set once the connection was cut off.
    closed: Cell<bool>,
}

/// A needed permission and the stream it is on (none for admin).
type Need<'a> = (Permission, Option<&'a str>, &'static str);

impl ConnAuth {
    pub(crate) fn new(outbox: Rc<Outbox>, abort: AbortHandle) -> ConnAuth {
        ConnAuth {
            principal: RefCell::new(None),
            streams: RefCell::new(BTreeSet::new()),
            pipelines: RefCell::new(BTreeSet::new()),
            outbox,
            abort,
            closed: Cell::new(false),
        }
    }

    pub(crate) fn set_principal(&self, principal: Principal) {
        *self.principal.borrow_mut() = Some(principal);
    }

    /// The token as the topology has it now; `None` for `Full`.
    fn current<'t>(&self, topology: &'t Topology) -> Result<Option<&'t TokenSpec>, Error> {
        match &*self.principal.borrow() {
            Some(Principal::Full) => Ok(None),
            Some(Principal::Token { name, hash }) => topology
                .tokens
                .get(name)
                .filter(|spec| spec.secret_hash().is_some_and(|h| secret_matches(&h, hash)))
                .map(Some)
                .ok_or_else(|| Error::TokenRevoked {
                    token: name.clone(),
                }),
            // No request is served before the handshake.
            None => Err(Error::Internal("a request before the handshake".into())),
        }
    }

    /// Checks `op` against the token; records what a subscription is to.
    pub(super) fn check(&self, topology: &Topology, op: &Op) -> Result<(), Error> {
        match op {
            Op::Subscribe { stream, .. } => {
                self.streams.borrow_mut().insert(stream.clone());
            }
            Op::PipelineSubscribe { pipeline, .. } => {
                self.pipelines.borrow_mut().insert(pipeline.clone());
            }
            _ => {}
        }
        let Some(spec) = self.current(topology)? else {
            return Ok(());
        };
        let streams = self.streams.borrow();
        let pipelines = self.pipelines.borrow();
        let needs: Vec<Need<'_>> = match op {
            Op::Publish { stream, .. } => vec![(Permission::Publish, Some(stream), "Publish")],
            Op::Fetch { stream, .. } => vec![(Permission::Subscribe, Some(stream), "Fetch")],
            Op::Subscribe { stream, .. } => {
                vec![(Permission::Subscribe, Some(stream), "Subscribe")]
            }
            Op::Ack(_) => subscribed(&streams, "Ack"),
            Op::Nack(..) => subscribed(&streams, "Nack"),
            Op::PipelineSubscribe { pipeline, .. } => {
                sources(topology, [pipeline.as_str()], "PipelineSubscribe")
            }
            Op::StageAcks(_) => sources(topology, pipelines.iter().map(String::as_str), "StageAck"),
            Op::StageNack(..) => {
                sources(topology, pipelines.iter().map(String::as_str), "StageNack")
            }
            Op::Apply(..) => vec![(Permission::Admin, None, "Apply")],
            Op::PipelineRetry(..) => vec![(Permission::Admin, None, "PipelineRetry")],
            Op::TokenCreate(_) => vec![(Permission::Admin, None, "TokenCreate")],
            Op::TokenList => vec![(Permission::Admin, None, "TokenList")],
            Op::TokenRevoke(..) => vec![(Permission::Admin, None, "TokenRevoke")],
            Op::PartitionMove(..) => vec![(Permission::Admin, None, "PartitionMove")],
            Op::Nodes(change) => vec![(Permission::Admin, None, change.message())],
            Op::Rebalance(..) => vec![(Permission::Admin, None, "Rebalance")],
            Op::Status | Op::Metadata(_) | Op::Refuse(_) => Vec::new(),
        };
        check_needs(spec, &needs)
    }

    /// Whether the connection may keep its subscriptions under `topology`.
    fn still_allowed(&self, topology: &Topology) -> Result<(), Error> {
        let Some(spec) = self.current(topology)? else {
            return Ok(());
        };
        let streams = self.streams.borrow();
        let pipelines = self.pipelines.borrow();
        let mut needs = subscribed(&streams, "Subscribe");
        needs.extend(sources(
            topology,
            pipelines.iter().map(String::as_str),
            "PipelineSubscribe",
        ));
        check_needs(spec, &needs)
    }
}

/// Subscribe on each of `streams`.
fn subscribed<'a>(streams: &'a BTreeSet<String>, request: &'static str) -> Vec<Need<'a>> {
    streams
        .iter()
        .map(|s| (Permission::Subscribe, Some(s.as_str()), request))
        .collect()
}

/// Subscribe on the source stream of each of `pipelines` (those the
/// topology no longer has need nothing: their requests fail anyway).
fn sources<'t>(
    topology: &'t Topology,
    pipelines: impl IntoIterator<Item = &'t str>,
    request: &'static str,
) -> Vec<Need<'t>> {
    pipelines
        .into_iter()
        .filter_map(|p| topology.pipelines.get(p))
        .map(|p| {
            (
                Permission::Subscribe,
                Some(p.source_stream.as_str()),
                request,
            )
        })
        .collect()
}

fn check_needs(spec: &TokenSpec, needs: &[Need<'_>]) -> Result<(), Error> {
    for &(permission, stream, request) in needs {
        if !spec.allows(permission, stream.unwrap_or_default()) {
            return Err(Error::Forbidden {
                token: spec.name.clone(),
                permission,
                stream: stream.map(str::to_owned),
                request,
            });
        }
    }
    Ok(())
}

/// The connections of one shard and their tokens.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    conns: RefCell<HashMap<u64, Rc<ConnAuth>>>,
}

impl Registry {
    pub(crate) fn register(&self, conn: u64, auth: Rc<ConnAuth>) {
        self.conns.borrow_mut().insert(conn, auth);
    }

    pub(crate) fn unregister(&self, conn: u64) {
        self.conns.borrow_mut().remove(&conn);
    }

    /// Cuts off every connection whose token `topology` revoked, or no
    /// longer allows a subscription it holds: it gets the `Forbidden`
    /// error and is closed.
    pub(crate) fn revalidate(&self, topology: &Topology) {
        let conns: Vec<Rc<ConnAuth>> = self.conns.borrow().values().cloned().collect();
        for auth in conns {
            if auth.closed.get() {
                continue;
            }
            if let Err(e) = auth.still_allowed(topology) {
                tracing::info!("closing a connection: {e}");
                auth.closed.set(true);
                auth.outbox.fail(0, &e);
                auth.abort.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Resource;
    use crate::config::token::{StreamGrants, to_hex};

    fn topology_with(token: TokenSpec) -> Topology {
        let mut topology = Topology::default();
        topology.tokens.insert(token.name.clone(), token);
        topology
    }

    fn writer() -> TokenSpec {
        TokenSpec {
            name: "writer".into(),
            all: false,
            streams: StreamGrants {
                publish: vec!["events".into()],
                subscribe: vec!["orders".into()],
            },
            admin: false,
            secret_sha256: to_hex(&hash_secret("hdn_w")),
        }
    }

    #[test]
    fn the_bootstrap_token_is_full_and_a_token_secret_names_its_token() {
        let config = ServerConfig {
            token: Some(crate::config::server::Token::new("boot")),
            ..ServerConfig::default()
        };
        let topology = topology_with(writer());
        assert_eq!(
            Principal::of(&config, &topology, "boot"),
            Some(Principal::Full)
        );
        assert_eq!(
            Principal::of(&config, &topology, "hdn_w"),
            Some(Principal::Token {
                name: "writer".into(),
                hash: hash_secret("hdn_w")
            })
        );
        assert_eq!(Principal::of(&config, &topology, "hdn_x"), None);
        assert_eq!(Principal::of(&config, &topology, ""), None);
        // Without a bootstrap token the server is open, as before tokens;
        // a token's secret still limits its connection.
        let open = ServerConfig::default();
        assert_eq!(Principal::of(&open, &topology, ""), Some(Principal::Full));
        assert!(matches!(
            Principal::of(&open, &topology, "hdn_w"),
            Some(Principal::Token { .. })
        ));
    }

    fn auth_as(principal: Principal) -> ConnAuth {
        let (abort, _) = AbortHandle::new_pair();
        let auth = ConnAuth::new(Rc::new(Outbox::default()), abort);
        auth.set_principal(principal);
        auth
    }

    fn publish(stream: &str) -> Op {
        Op::Publish {
            stream: stream.into(),
            partition: 0,
            events: Vec::new(),
        }
    }

    #[test]
    fn each_request_needs_its_permission_on_its_stream() {
        let mut topology = topology_with(writer());
        let yaml = "apiVersion: hadron.rs/v1beta1\nkind: Pipeline\nmetadata: {name: p}\nspec: {sourceStream: orders, triggers: [t], stages: [{name: s}]}\n";
        let parsed = crate::config::parse_documents(yaml);
        let Ok([Resource::Pipeline(pipeline)]) = parsed.as_deref() else {
            panic!("the test pipeline does not parse");
        };
        topology.pipelines.insert("p".into(), pipeline.clone());
        let auth = auth_as(Principal::Token {
            name: "writer".into(),
            hash: hash_secret("hdn_w"),
        });
        assert_eq!(auth.check(&topology, &publish("events")), Ok(()));
        let e = auth.check(&topology, &publish("orders")).unwrap_err();
        assert_eq!(e.code(), hadron_wire::ErrorCode::Forbidden);
        assert_eq!(
            e.to_string(),
            "forbidden: token \"writer\" lacks publish on stream \"orders\" (needed for Publish)"
        );
        let fetch = |stream: &str| Op::Fetch {
            stream: stream.into(),
            partition: 0,
            offset: 0,
            max_bytes: 1,
        };
        assert_eq!(auth.check(&topology, &fetch("orders")), Ok(()));
        assert!(auth.check(&topology, &fetch("events")).is_err());
        let apply = Op::Apply(String::new(), false);
        assert_eq!(
            auth.check(&topology, &apply).unwrap_err().to_string(),
            "forbidden: token \"writer\" lacks admin (needed for Apply)"
        );
        assert_eq!(auth.check(&topology, &Op::Status), Ok(()));
        // A stage subscription needs subscribe on the pipeline's source.
        let stage = Op::PipelineSubscribe {
            pipeline: "p".into(),
            stage: "s".into(),
            max_in_flight: 1,
        };
        assert_eq!(auth.check(&topology, &stage), Ok(()));
        assert_eq!(auth.still_allowed(&topology), Ok(()));
        // Narrowed: the subscription it holds is no longer allowed.
        let mut narrowed = writer();
        narrowed.streams.subscribe.clear();
        topology.tokens.insert("writer".into(), narrowed);
        let e = auth.still_allowed(&topology).unwrap_err();
        assert!(
            e.to_string().contains("subscribe on stream \"orders\""),
            "{e}"
        );
        assert!(
            auth.check(&topology, &Op::StageNack(1, String::new()))
                .is_err()
        );
        // Revoked, or the name given a new secret.
        let mut renewed = writer();
        renewed.secret_sha256 = to_hex(&hash_secret("hdn_other"));
        topology.tokens.insert("writer".into(), renewed);
        assert_eq!(
            auth.check(&topology, &publish("events")),
            Err(Error::TokenRevoked {
                token: "writer".into()
            })
        );
        topology.tokens.clear();
        assert!(auth.still_allowed(&topology).is_err());
        // The full principal passes everything.
        let full = auth_as(Principal::Full);
        assert_eq!(full.check(&topology, &apply), Ok(()));
    }
}
