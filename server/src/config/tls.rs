//! TLS on the client port and the shard ports: the `tls:` setting and
//! turning its PEM files into a rustls server configuration.
//!
//! ```yaml
//! tls:
//!   cert: /etc/hadron/server.pem     # the certificate chain, leaf first
//!   key: /etc/hadron/server.key      # its private key (PKCS#8, PKCS#1 or SEC1)
//!   clientCa: /etc/hadron/ca.pem     # optional: only clients presenting a
//!                                    # certificate signed by these CAs connect
//! ```
//!
//! The files are PEM, read and checked once as the server starts, before
//! it binds a port: a file that cannot be read, is over
//! [`PEM_FILE_BYTES_MAX`], holds no certificate (or no key), or a key that
//! is not the certificate's, stops the start with an error naming the
//! setting and the file. Relative paths are relative to the server's
//! working directory, as `dataDir` is. New files take a restart.
//!
//! rustls runs with the `ring` provider, named explicitly (never the
//! process default), TLS 1.2 and 1.3 and rustls's default cipher suites.
//! With `clientCa`, a client without a certificate, or with one those CAs
//! did not sign, fails the TLS handshake and never reaches the Hadron
//! handshake; its token is still checked after that.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde::Deserialize;

/// The largest PEM file read: a certificate chain or a CA bundle is a few
/// KiB to a few hundred (the system's whole CA bundle is about 220 KiB).
pub const PEM_FILE_BYTES_MAX: u64 = 4 << 20;

/// `tls:` as written: the PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsFiles {
    /// The server's certificate chain, leaf first.
    pub cert: PathBuf,
    /// The certificate's private key.
    pub key: PathBuf,
    /// CAs a client certificate must chain to; none: no client
    /// certificates asked for.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// The ring provider, the one crypto provider Hadron builds with.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads `path` (the setting `setting`), refusing a file over
/// [`PEM_FILE_BYTES_MAX`].
fn read_pem(setting: &str, path: &Path) -> Result<Vec<u8>, String> {
    let named = |what: String| format!("{setting} {}: {what}", path.display());
    let bytes = std::fs::metadata(path)
        .map_err(|e| named(format!("cannot read it: {e}")))?
        .len();
    if bytes > PEM_FILE_BYTES_MAX {
        return Err(named(format!(
            "{bytes} bytes is more than a PEM file may hold ({PEM_FILE_BYTES_MAX})"
        )));
    }
    std::fs::read(path).map_err(|e| named(format!("cannot read it: {e}")))
}

/// Every certificate in the PEM file `path`; at least one.
fn certificates(setting: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_pem(setting, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{setting} {}: not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{setting} {}: no certificate in it (expected a -----BEGIN CERTIFICATE----- block)",
            path.display()
        ));
    }
    Ok(certs)
}

/// The first private key in the PEM file `path`.
fn private_key(setting: &str, path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_pem(setting, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "{setting} {}: no private key in it (expected a -----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY block)",
            path.display()
        ),
        e => format!("{setting} {}: not valid PEM: {e}", path.display()),
    })
}

/// The client-certificate verifier for `clientCa`'s CAs.
fn client_verifier(
    path: &Path,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    for cert in certificates("tls.clientCa", path)? {
        roots
            .add(cert)
            .map_err(|e| format!("tls.clientCa {}: not a usable CA: {e}", path.display()))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| format!("tls.clientCa {}: {e}", path.display()))
}

/// The rustls server configuration the `tls:` files describe, checked:
/// the errors name the setting and the file.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = certificates("tls.cert", &files.cert)?;
    let key = private_key("tls.key", &files.key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    let builder = match &files.client_ca {
        Some(ca) => builder.with_client_cert_verifier(client_verifier(ca)?),
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| {
        let what = match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                "the key does not match the certificate (the first in the file)".to_owned()
            }
            e => e.to_string(),
        };
        format!(
            "tls.key {} and tls.cert {}: {what}",
            files.key.display(),
            files.cert.display()
        )
    })?;
    Ok(Arc::new(config))
}

/// The rustls client configuration a node dials its peers with when it
/// has `tls:`: it trusts the CAs of `peer_ca` (`cluster.peerCa`, else
/// `tls.clientCa`: the CA that signed the nodes' certificates) and
/// presents its own `tls.cert` (peers that ask for client certificates
/// check it). Errors name the setting and the file.
pub fn peer_client_config(
    files: &TlsFiles,
    peer_ca: &Path,
    setting: &str,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(setting, peer_ca)? {
        roots
            .add(cert)
            .map_err(|e| format!("{setting} {}: not a usable CA: {e}", peer_ca.display()))?;
    }
    let certs = certificates("tls.cert", &files.cert)?;
    let key = private_key("tls.key", &files.key)?;
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| {
            format!(
                "tls.key {} and tls.cert {} as a peer's client certificate: {e}",
                files.key.display(),
                files.cert.display()
            )
        })?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA and a server certificate it signed, for `localhost`.
    struct Pki {
        dir: tempfile::TempDir,
    }

    impl Pki {
        fn new() -> Pki {
            let dir = tempfile::tempdir().unwrap();
            let ca_key = rcgen::KeyPair::generate().unwrap();
            let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca_cert = ca.self_signed(&ca_key).unwrap();
            let issuer = rcgen::Issuer::new(ca, ca_key);
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
            std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
            std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
            let other = rcgen::KeyPair::generate().unwrap();
            std::fs::write(dir.path().join("other-key.pem"), other.serialize_pem()).unwrap();
            Pki { dir }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn files(&self, cert: &str, key: &str, client_ca: Option<&str>) -> TlsFiles {
            TlsFiles {
                cert: self.path(cert),
                key: self.path(key),
                client_ca: client_ca.map(|c| self.path(c)),
            }
        }
    }

    fn error(files: &TlsFiles) -> String {
        server_config(files).map(drop).unwrap_err()
    }

    #[test]
    fn a_certificate_and_its_key_load_with_and_without_a_client_ca() {
        let pki = Pki::new();
        server_config(&pki.files("cert.pem", "key.pem", None)).unwrap();
        server_config(&pki.files("cert.pem", "key.pem", Some("ca.pem"))).unwrap();
    }

    #[test]
    fn a_missing_file_is_named_with_its_setting() {
        let pki = Pki::new();
        let e = error(&pki.files("nope.pem", "key.pem", None));
        assert!(
            e.starts_with("tls.cert ") && e.contains("nope.pem: cannot read it"),
            "{e}"
        );
        let e = error(&pki.files("cert.pem", "nope.pem", None));
        assert!(
            e.starts_with("tls.key ") && e.contains("nope.pem: cannot read it"),
            "{e}"
        );
        let e = error(&pki.files("cert.pem", "key.pem", Some("nope.pem")));
        assert!(
            e.starts_with("tls.clientCa ") && e.contains("nope.pem"),
            "{e}"
        );
    }

    #[test]
    fn a_file_without_the_expected_block_is_refused_naming_it() {
        let pki = Pki::new();
        // The key file holds no certificate, the certificate no key.
        let e = error(&pki.files("key.pem", "key.pem", None));
        assert!(e.contains("key.pem: no certificate in it"), "{e}");
        let e = error(&pki.files("cert.pem", "cert.pem", None));
        assert!(
            e.starts_with("tls.key ") && e.contains("cert.pem: no private key in it"),
            "{e}"
        );
        std::fs::write(pki.path("empty.pem"), "").unwrap();
        let e = error(&pki.files("cert.pem", "key.pem", Some("empty.pem")));
        assert!(
            e.starts_with("tls.clientCa ") && e.contains("empty.pem: no certificate"),
            "{e}"
        );
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused_naming_both_files() {
        let pki = Pki::new();
        let e = error(&pki.files("cert.pem", "other-key.pem", None));
        assert!(
            e.contains("other-key.pem") && e.contains("cert.pem") && e.contains("does not match"),
            "{e}"
        );
    }

    #[test]
    fn the_tls_setting_parses_with_an_optional_client_ca_and_nothing_else() {
        let parse = |yaml: &str| super::super::parse_config_file(yaml).map(|(c, _)| c.tls);
        assert_eq!(parse("shards: 1\n").unwrap(), None);
        assert_eq!(
            parse("tls: {cert: a.pem, key: b.pem}\n").unwrap(),
            Some(TlsFiles {
                cert: "a.pem".into(),
                key: "b.pem".into(),
                client_ca: None
            })
        );
        let mutual = parse("tls:\n  cert: a.pem\n  key: b.pem\n  clientCa: /c.pem\n").unwrap();
        assert_eq!(mutual.unwrap().client_ca, Some(PathBuf::from("/c.pem")));
        let missing = parse("tls: {cert: a.pem}\n").unwrap_err().to_string();
        assert!(missing.contains("key"), "{missing}");
        let unknown = parse("tls: {cert: a.pem, key: b.pem, ca: c.pem}\n")
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("ca"), "{unknown}");
    }

    #[test]
    fn a_pem_file_over_the_limit_is_refused_unread() {
        let pki = Pki::new();
        let big = std::fs::File::create(pki.path("big.pem")).unwrap();
        big.set_len(PEM_FILE_BYTES_MAX + 1).unwrap();
        let e = error(&pki.files("big.pem", "key.pem", None));
        assert!(
            e.contains("big.pem") && e.contains("more than a PEM file may hold"),
            "{e}"
        );
    }
}
