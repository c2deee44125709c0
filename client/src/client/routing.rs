//! Routing in a cluster: the bootstrap list, the main connection that
//! moves along it, and the retry loop that follows a partition's leader.
//!
//! Bootstrap: `Client::new` takes one URL or several separated by commas
//! (at most `BOOTSTRAP_URLS_MAX`, all `https://` or none). The main
//! connection goes to the last node that answered, first the first one;
//! when it cannot be opened the next is tried, round robin, and the one
//! that answers is remembered. Metadata and status, which any node
//! answers, move on the same way when the connection breaks under them.
//!
//! Leaders: `Client::routed` sends a partition's request where the leader
//! table says (else by the main connection's shard ports) and handles what
//! a cluster answers:
//! - `NotLeader` naming the leader: note it and resend there at once;
//! - `NotLeader` naming none (an election): back off, refresh the
//!   stream's leaders by Metadata from any bootstrap node, resend;
//! - the noted leader's connection cannot be opened, breaks or stays
//!   silent (its node died or was cut off): forget it, back off, refresh,
//!   resend; with several bootstrap nodes and no noted leader, the same
//!   without the refresh (the main connection moves on, and the next node
//!   answers `NotLeader` with the leader).
//!
//! Every resend is the caller's same request (for a publish, the same
//! encoded batch with the same ids, so the new leader's dedup window keeps
//! it once), and every attempt counts against
//! `ClientOptions::publish_attempts_max`; no retry starts past
//! `ClientOptions::publish_retry_deadline` from the first attempt.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use hadron_wire::Message;

use super::{Client, lock};
use crate::Error;
use crate::conn::{Conn, Reply};
use crate::endpoint::Endpoint;

/// Most addresses in `Client::new`'s comma-separated bootstrap list: a
/// cluster's seed nodes, not every node (the client learns leaders from
/// Metadata).
pub const BOOTSTRAP_URLS_MAX: usize = 16;
// The refusal's text below says the number.
const _: () = assert!(BOOTSTRAP_URLS_MAX == 16);

/// Parses `Client::new`'s `urls`: one address, or several separated by
/// commas. Each entry is parsed as `Endpoint::parse` does; an error names
/// the entry that is wrong.
pub(crate) fn parse_bootstrap(urls: &str) -> Result<Vec<Endpoint>, Error> {
    let entries: Vec<&str> = urls.split(',').map(str::trim).collect();
    if entries.len() > BOOTSTRAP_URLS_MAX {
        return Err(Error::InvalidUrl {
            url: urls.to_owned(),
            reason: "the list names more than 16 servers (BOOTSTRAP_URLS_MAX); list a few seed nodes",
        });
    }
    let mut endpoints: Vec<Endpoint> = Vec::with_capacity(entries.len());
    for entry in entries {
        if entry.is_empty() {
            return Err(Error::InvalidUrl {
                url: urls.to_owned(),
                reason: "an entry of the comma-separated list is empty",
            });
        }
        let endpoint = Endpoint::parse(entry)?;
        if let Some(first) = endpoints.first()
            && first.https != endpoint.https
        {
            return Err(Error::InvalidUrl {
                url: entry.to_owned(),
                reason: "its scheme differs from the first server's: list only https:// servers, or none",
            });
        }
        endpoints.push(endpoint);
    }
    assert!(!endpoints.is_empty(), "split yields at least one entry");
    Ok(endpoints)
}

/// Which failures `Client::routed` retries besides leader changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Every retryable error (publish: resending is safe by its ids).
    Any,
    /// Only `NotLeader` and connection failures where there is somewhere
    /// else to go (a noted leader to forget, or another bootstrap node):
    /// a single server that is down is reported at once, as before.
    LeaderChanges,
}

impl Client {
    /// The main connection (opened if needed) and the index of its
    /// bootstrap address: the last one that answered, else the next in the
    /// list that does. Fails with the first refusal a server gave (a
    /// rejected token, TLS), else the first connect error.
    pub(crate) async fn main_indexed(&self) -> Result<(usize, Arc<Conn>), Error> {
        let slots = &self.inner.main;
        let start = self.inner.main_index.load(Ordering::Relaxed);
        let mut failed: Option<Error> = None;
        for step in 0..slots.len() {
            let index = (start + step) % slots.len();
            let Some(slot) = slots.get(index) else {
                continue;
            };
            match slot.get(&self.inner.options).await {
                Ok(conn) => {
                    if index != start {
                        tracing::debug!(addr = %slot.endpoint, "main connection moved");
                        self.inner.main_index.store(index, Ordering::Relaxed);
                    }
                    return Ok((index, conn));
                }
                Err(e) => {
                    tracing::debug!(addr = %slot.endpoint, error = %e, "bootstrap server unreachable");
                    let keep = failed
                        .as_ref()
                        .is_some_and(|f| !f.is_retryable() || e.is_retryable());
                    if !keep {
                        failed = Some(e);
                    }
                }
            }
        }
        Err(failed.unwrap_or_else(|| Error::lost("no bootstrap server")))
    }

    /// The bootstrap address `step` places after the main connection's:
    /// where a subscription runner connects after `step` failures.
    pub(crate) fn bootstrap_endpoint(&self, step: u32) -> &Endpoint {
        let bootstrap = &self.inner.bootstrap;
        let start = self.inner.main_index.load(Ordering::Relaxed);
        let index = (start + step as usize) % bootstrap.len();
        // `bootstrap` is never empty and the index is below its length.
        &bootstrap[index]
    }

    /// The bootstrap list as given to `Client::new` (never empty): where
    /// a cluster's subscription and stage handler runners are pinned, one
    /// per node.
    pub(crate) fn bootstrap_list(&self) -> &[Endpoint] {
        &self.inner.bootstrap
    }

    /// The address the main connection uses (or will try first).
    pub(crate) fn main_endpoint(&self) -> &Endpoint {
        self.bootstrap_endpoint(0)
    }

    /// Sends a request any node answers (Metadata, Status) by the main
    /// connection; when that connection dies under it, once more per other
    /// bootstrap node, which the main connection then moves to.
    pub(crate) async fn main_request(
        &self,
        what: &'static str,
        message: &Message<'_>,
    ) -> Result<Reply, Error> {
        let mut tries_left = self.inner.bootstrap.len();
        loop {
            tries_left -= 1;
            let conn = self.main().await?;
            match conn.request(what, message).await {
                Err(e) if tries_left > 0 && !conn.is_alive() => {
                    tracing::debug!(addr = %conn.endpoint, error = %e, what, "main connection broke; trying again");
                }
                result => return result,
            }
        }
    }

    /// The noted leader's address for `stream`/`partition`, if any.
    pub(crate) fn leader_of(&self, stream: &str, partition: u32) -> Option<Endpoint> {
        let leaders = lock(&self.inner.leaders);
        if leaders.is_empty() {
            // A single node never has leaders noted: no key to build.
            return None;
        }
        leaders.get(&(stream.to_owned(), partition)).cloned()
    }

    /// Runs `request` on `stream`/`partition`'s connection (see
    /// `conn_for`), following leader changes as the module header says,
    /// and retrying per `retry`, at most `publish_attempts_max` attempts
    /// in all, none starting past `publish_retry_deadline`. `request` is called once per attempt and must send the
    /// same request each time.
    pub(crate) async fn routed<T, F, Fut>(
        &self,
        what: &'static str,
        stream: &str,
        partition: u32,
        retry: Retry,
        mut request: F,
    ) -> Result<T, Error>
    where
        F: FnMut(Arc<Conn>) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let options = &self.inner.options;
        let attempts_max = options.publish_attempts_max.max(1);
        let deadline = tokio::time::Instant::now() + options.publish_retry_deadline;
        let mut attempt = 1;
        loop {
            let had_leader = self.leader_of(stream, partition).is_some();
            let result = match self.conn_for(stream, partition).await {
                Ok(conn) => request(conn).await,
                Err(e) => Err(e),
            };
            let e = match result {
                Ok(answer) => return Ok(answer),
                Err(e) => e,
            };
            let pause = options.backoff(attempt);
            if attempt >= attempts_max || tokio::time::Instant::now() + pause >= deadline {
                return Err(e);
            }
            match &e {
                Error::NotLeader { leader, message } => {
                    tracing::debug!(what, stream, partition, attempt, ?leader, %message,
                        "not the leader; retrying at the leader");
                    self.note_leader(stream, partition, leader.as_ref());
                    if leader.is_none() {
                        tokio::time::sleep(pause).await;
                        self.refresh_leaders_logged(stream).await;
                    }
                }
                e if e.is_connection_failure()
                    && (had_leader || self.inner.bootstrap.len() > 1) =>
                {
                    tracing::debug!(what, stream, partition, attempt, error = %e, ?pause,
                        "no answer from the leader; looking for it again");
                    self.note_leader(stream, partition, None);
                    tokio::time::sleep(pause).await;
                    if had_leader {
                        self.refresh_leaders_logged(stream).await;
                    }
                }
                e if retry == Retry::Any && e.is_retryable() => {
                    tracing::debug!(what, stream, partition, attempt, error = %e, ?pause,
                        "request failed; retrying");
                    tokio::time::sleep(pause).await;
                }
                _ => return Err(e),
            }
            attempt += 1;
        }
    }

    /// `refresh_leaders`, whose failure (every bootstrap node unreachable)
    /// only means the next attempt goes by the main connection.
    async fn refresh_leaders_logged(&self, stream: &str) {
        if let Err(e) = self.refresh_leaders(stream).await {
            tracing::debug!(stream, error = %e, "leader refresh failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bootstrap_list_parses_each_entry() {
        let list = parse_bootstrap("http://127.0.0.1:7000, 127.0.0.1:7010 ,node-3").unwrap();
        let shown: Vec<String> = list.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["127.0.0.1:7000", "127.0.0.1:7010", "node-3:7000"]);
        let one = parse_bootstrap("https://h:1").unwrap();
        assert_eq!(one.len(), 1);
        assert!(one[0].https);
    }

    #[test]
    fn a_bad_bootstrap_entry_is_refused_by_name() {
        let e = parse_bootstrap("127.0.0.1:7000,host:notaport").unwrap_err();
        match &e {
            Error::InvalidUrl { url, .. } => assert_eq!(url, "host:notaport"),
            other => panic!("{other}"),
        }
        assert!(e.to_string().contains("\"host:notaport\""), "{e}");
        let e = parse_bootstrap("a:1,,b:2").unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        let e = parse_bootstrap("https://a:1,http://b:2").unwrap_err();
        match &e {
            Error::InvalidUrl { url, reason } => {
                assert_eq!(url, "http://b:2");
                assert!(reason.contains("https://"), "{reason}");
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn a_bootstrap_list_is_bounded() {
        let at_max = vec!["h:1"; BOOTSTRAP_URLS_MAX].join(",");
        assert_eq!(parse_bootstrap(&at_max).unwrap().len(), BOOTSTRAP_URLS_MAX);
        let over = vec!["h:1"; BOOTSTRAP_URLS_MAX + 1].join(",");
        let e = parse_bootstrap(&over).unwrap_err();
        assert!(e.to_string().contains("BOOTSTRAP_URLS_MAX"), "{e}");
    }
}
