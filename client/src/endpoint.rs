//! Server addresses. The client accepts the seed's form
//! (`http://events.default:7000`) as well as `host:port` and a bare `host`:
//! a scheme is optional, a trailing path is ignored, the port defaults to
//! 7000, and the host is resolved by DNS each time a connection is opened
//! (so a restarted server behind a DNS name is found again). The scheme
//! `https` means TLS, on the shard ports too; any other, or none, plain
//! TCP.

use crate::Error;
use crate::tls::Connector;

/// The server's default client port.
pub const DEFAULT_PORT: u16 = 7000;

/// A parsed server address: a host name or IP literal and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// Host name, IPv4 literal, or IPv6 literal without brackets.
    pub host: String,
    pub port: u16,
    /// The URL said `https://`.
    pub https: bool,
    /// The TLS of the connections, set by `Client::new` when `https`;
    /// `None`: plain TCP.
    pub tls: Option<Connector>,
}

impl Endpoint {
    /// Parses `url`; see the module documentation for the accepted forms.
    pub fn parse(url: &str) -> Result<Endpoint, Error> {
        let invalid = |reason| Error::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let trimmed = url.trim();
        let (https, rest) = match trimmed.split_once("://") {
            Some((scheme, rest)) => {
                if scheme.is_empty() || !scheme.chars().all(|c| c.is_ascii_alphanumeric()) {
                    return Err(invalid("the scheme before :// is not a word"));
                }
                (scheme.eq_ignore_ascii_case("https"), rest)
            }
            None => (false, trimmed),
        };
        // Drop a path, query or fragment: only the authority matters.
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        // Drop user info, which the protocol has no use for.
        let authority = authority.rsplit('@').next().unwrap_or_default();
        if authority.is_empty() {
            return Err(invalid("no host"));
        }
        let (host, port) = if let Some(after_bracket) = authority.strip_prefix('[') {
            // [v6]:port or [v6]
            let (host, tail) = after_bracket
                .split_once(']')
                .ok_or_else(|| invalid("unclosed [ in IPv6 address"))?;
            let port = match tail {
                "" => None,
                t => Some(
                    t.strip_prefix(':')
                        .ok_or_else(|| invalid("unexpected text after ]"))?,
                ),
            };
            (host, port)
        } else if authority.matches(':').count() > 1 {
            // A bare IPv6 literal without brackets has no port.
            (authority, None)
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        if host.chars().any(|c| c.is_whitespace()) {
            return Err(invalid("the host contains whitespace"));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(0) => return Err(invalid("port 0 is not a port")),
                Ok(n) => n,
                Err(_) => return Err(invalid("the port is not a number from 1 to 65535")),
            },
        };
        Ok(Endpoint {
            host: host.to_owned(),
            port,
            https,
            tls: None,
        })
    }

    /// The same host, and TLS, on another port (a shard's own port).
    pub fn with_port(&self, port: u16) -> Endpoint {
        Endpoint {
            port,
            ..self.clone()
        }
    }
}

impl core::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(url: &str) -> (String, u16) {
        let e = Endpoint::parse(url).unwrap();
        (e.host, e.port)
    }

    #[test]
    fn accepted_forms() {
        assert_eq!(
            ok("http://events.default:7000"),
            ("events.default".into(), 7000)
        );
        assert_eq!(
            ok("https://events.default"),
            ("events.default".into(), 7000)
        );
        assert_eq!(ok("hadron://10.0.0.1:7100/"), ("10.0.0.1".into(), 7100));
        assert_eq!(ok("127.0.0.1:7000"), ("127.0.0.1".into(), 7000));
        assert_eq!(ok("localhost"), ("localhost".into(), DEFAULT_PORT));
        assert_eq!(ok("  host:1/path?q#f "), ("host".into(), 1));
        assert_eq!(ok("[::1]:7005"), ("::1".into(), 7005));
        assert_eq!(ok("[::1]"), ("::1".into(), DEFAULT_PORT));
        assert_eq!(ok("::1"), ("::1".into(), DEFAULT_PORT));
        assert_eq!(ok("http://user@host:9"), ("host".into(), 9));
    }

    #[test]
    fn only_https_asks_for_tls() {
        assert!(Endpoint::parse("https://h:1").unwrap().https);
        assert!(Endpoint::parse("HTTPS://h").unwrap().https);
        for plain in ["http://h:1", "h:1", "h", "hadron://h"] {
            assert!(!Endpoint::parse(plain).unwrap().https, "{plain}");
        }
        assert!(Endpoint::parse("https://h:1").unwrap().with_port(2).https);
    }

    #[test]
    fn rejected_forms() {
        for bad in [
            "",
            "http://",
            ":7000",
            "host:",
            "host:0",
            "host:70000",
            "host:abc",
            "[::1",
            "[::1]x",
            "ht tp://host",
        ] {
            let err = Endpoint::parse(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidUrl { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn display_brackets_ipv6() {
        assert_eq!(Endpoint::parse("[::1]:5").unwrap().to_string(), "[::1]:5");
        assert_eq!(Endpoint::parse("h").unwrap().to_string(), "h:7000");
    }
}
