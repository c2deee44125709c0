//! TLS to servers addressed `https://…` (rustls with the `ring` provider,
//! through tokio-rustls).
//!
//! [`TlsOptions`] says whom to trust: the CAs of `ca_pem` only (a private
//! CA), or, without it, the platform's trusted roots; and, for servers
//! that ask for client certificates (`tls.clientCa`), the certificate and
//! key to present. `Client::new` turns them into one rustls configuration
//! (a [`Connector`]) that every connection of the client shares, main and
//! shard ports alike; the server name checked against the certificate is
//! the URL's host (a DNS name or an IP address).
//!
//! A failed TLS handshake is `Error::Tls`, not retryable: a certificate
//! that does not verify will not verify on the next attempt.
//!
//! rustls reads the socket 4 KiB at a time; a read buffer of
//! [`READ_BUFFER_BYTES`] under the session makes that one read per
//! 64 KiB, as a plain connection reads.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::Error;

/// The largest PEM file [`TlsOptions::from_files`] reads.
pub const PEM_FILE_BYTES_MAX: u64 = 4 << 20;

/// Bytes read from the socket at a time under a TLS session.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// A TLS connection: rustls over a read-buffered socket.
pub(crate) type Stream = TlsStream<BufReader<TcpStream>>;

/// Whom a client trusts, and what it presents, when its URL is
/// `https://`; ignored for plain URLs.
///
/// ```no_run
/// # fn example() -> Result<(), hadron::Error> {
/// let tls = hadron::TlsOptions::from_files(Some("ca.pem".as_ref()), None, None)?;
/// let options = hadron::ClientOptions { tls, ..Default::default() };
/// let client = hadron::Client::new("https://hadron.internal:7000", options)?;
/// # let _ = client;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct TlsOptions {
    /// PEM certificates of the CAs that may sign the server's certificate
    /// (a private CA). When `None`, the platform's trusted roots.
    pub ca_pem: Option<Vec<u8>>,
    /// A PEM client certificate chain (leaf first), for servers that
    /// require one (mutual TLS); needs `client_key_pem`.
    pub client_cert_pem: Option<Vec<u8>>,
    /// The PEM private key of `client_cert_pem`.
    pub client_key_pem: Option<Vec<u8>>,
}

impl core::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .field(
                "client_cert_pem",
                &self.client_cert_pem.as_ref().map(Vec::len),
            )
            .field(
                "client_key_pem",
                &self.client_key_pem.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

fn config_error(reason: impl Into<String>) -> Error {
    Error::TlsConfig {
        reason: reason.into(),
    }
}

/// Reads the PEM file `path`, refusing one over [`PEM_FILE_BYTES_MAX`].
fn read_pem(what: &str, path: &Path) -> Result<Vec<u8>, Error> {
    let cannot = |e: io::Error| config_error(format!("{what} {}: {e}", path.display()));
    let bytes = std::fs::metadata(path).map_err(cannot)?.len();
    if bytes > PEM_FILE_BYTES_MAX {
        return Err(config_error(format!(
            "{what} {}: {bytes} bytes is more than a PEM file may hold ({PEM_FILE_BYTES_MAX})",
            path.display()
        )));
    }
    std::fs::read(path).map_err(cannot)
}

impl TlsOptions {
    /// Reads the CA, client certificate and client key from PEM files;
    /// the errors name the file. Their contents are checked by
    /// `Client::new`.
    pub fn from_files(
        ca: Option<&Path>,
        client_cert: Option<&Path>,
        client_key: Option<&Path>,
    ) -> Result<TlsOptions, Error> {
        Ok(TlsOptions {
            ca_pem: ca.map(|p| read_pem("CA file", p)).transpose()?,
            client_cert_pem: client_cert
                .map(|p| read_pem("client certificate", p))
                .transpose()?,
            client_key_pem: client_key.map(|p| read_pem("client key", p)).transpose()?,
        })
    }

    /// The trusted roots: `ca_pem`'s, else the platform's.
    fn roots(&self) -> Result<RootCertStore, Error> {
        let mut roots = RootCertStore::empty();
        match &self.ca_pem {
            Some(pem) => {
                for cert in certificates("the CA", pem)? {
                    roots
                        .add(cert)
                        .map_err(|e| config_error(format!("the CA is not usable: {e}")))?;
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(native.certs);
                if roots.is_empty() {
                    return Err(config_error(
                        "the platform has no trusted CA certificates; give the server's CA (ClientOptions::tls.ca_pem, hadron --ca)",
                    ));
                }
            }
        }
        Ok(roots)
    }

    /// The rustls client configuration these options describe.
    fn client_config(&self) -> Result<rustls::ClientConfig, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| config_error(e.to_string()))?
            .with_root_certificates(self.roots()?);
        match (&self.client_cert_pem, &self.client_key_pem) {
            (None, None) => Ok(builder.with_no_client_auth()),
            (Some(cert), Some(key)) => {
                let certs = certificates("the client certificate", cert)?;
                let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| {
                    config_error(format!("the client key holds no usable private key: {e}"))
                })?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| config_error(format!("the client certificate and key: {e}")))
            }
            (Some(_), None) => Err(config_error(
                "a client certificate needs its key (client_key_pem, hadron --key)",
            )),
            (None, Some(_)) => Err(config_error(
                "a client key needs its certificate (client_cert_pem, hadron --cert)",
            )),
        }
    }
}

/// Every certificate in `pem`; at least one.
fn certificates(what: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config_error(format!("{what} is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(config_error(format!(
            "{what} holds no certificate (expected a -----BEGIN CERTIFICATE----- block)"
        )));
    }
    Ok(certs)
}

/// One client's TLS configuration, shared by its connections. Two compare
/// equal only when they are the same one.
#[derive(Clone)]
pub(crate) struct Connector(Arc<rustls::ClientConfig>);

impl core::fmt::Debug for Connector {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Connector")
    }
}

impl PartialEq for Connector {
    fn eq(&self, other: &Connector) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Connector {}

impl Connector {
    pub fn new(options: &TlsOptions) -> Result<Connector, Error> {
        Ok(Connector(Arc::new(options.client_config()?)))
    }

    /// The TLS handshake on `tcp` with the server `host` (`addr` for
    /// errors).
    pub async fn connect(&self, host: &str, addr: &str, tcp: TcpStream) -> Result<Stream, Error> {
        let name = ServerName::try_from(host.to_owned()).map_err(|e| Error::Tls {
            addr: addr.to_owned(),
            reason: format!("{host:?} is not a name a certificate can carry: {e}"),
        })?;
        tokio_rustls::TlsConnector::from(Arc::clone(&self.0))
            .connect(name, BufReader::with_capacity(READ_BUFFER_BYTES, tcp))
            .await
            .map_err(|e| match tls_failure(addr, e) {
                Ok(tls) => tls,
                Err(source) => Error::Connect {
                    addr: addr.to_owned(),
                    source,
                },
            })
    }
}

/// `Error::Tls` when the I/O error is rustls refusing (a certificate, an
/// alert, bytes that are not TLS), else the I/O error itself.
pub(crate) fn tls_failure(addr: &str, e: io::Error) -> Result<Error, io::Error> {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(refused) => Ok(Error::Tls {
            addr: addr.to_owned(),
            reason: refused.to_string(),
        }),
        None => Err(e),
    }
}

/// Whether bytes a plain connection received start with a TLS record (an
/// alert or a handshake): the server speaks TLS.
pub(crate) fn looks_like_tls(received: &[u8]) -> bool {
    matches!(received, [0x15 | 0x16, 0x03, ..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_without_its_key_and_bad_pem_are_refused_before_any_connection() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let ca = Some(cert.pem().into_bytes());
        let ok = TlsOptions {
            ca_pem: ca.clone(),
            client_cert_pem: Some(cert.pem().into_bytes()),
            client_key_pem: Some(key.serialize_pem().into_bytes()),
        };
        Connector::new(&ok).unwrap();
        let no_key = TlsOptions {
            client_key_pem: None,
            ..ok.clone()
        };
        let e = Connector::new(&no_key).unwrap_err().to_string();
        assert!(e.contains("needs its key"), "{e}");
        let garbage = TlsOptions {
            ca_pem: Some(b"not pem".to_vec()),
            ..TlsOptions::default()
        };
        let e = Connector::new(&garbage).unwrap_err().to_string();
        assert!(e.contains("the CA holds no certificate"), "{e}");
        assert!(!format!("{ok:?}").contains("PRIVATE"), "{ok:?}");
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = TlsOptions::from_files(Some(Path::new("/nonexistent/ca.pem")), None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("CA file /nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn tls_records_are_recognised() {
        assert!(looks_like_tls(&[0x15, 0x03, 0x03, 0x00, 0x02]));
        assert!(looks_like_tls(&[0x16, 0x03, 0x01]));
        assert!(!looks_like_tls(&[0x40, 0x00, 0x00, 0x00]));
        assert!(!looks_like_tls(&[0x15]));
    }
}
