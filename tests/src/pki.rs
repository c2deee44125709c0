//! Certificates for the TLS cluster tests (`cluster.rs`, `cluster_add.rs`):
//! one CA and one certificate every node serves and dials with, made
//! with rcgen into a temporary directory, and the `tls:` settings that
//! use them.

use std::path::Path;

/// A CA and one certificate for every node (127.0.0.1 and localhost, for
/// serving and as a client), written as `ca.pem`, `node.pem`, `node.key`.
pub fn cluster_pki(dir: &Path) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "hadron cluster test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    leaf.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("node.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("node.key"), key.serialize_pem()).unwrap();
}

/// The `tls:` settings (client certificates required) of a node with the
/// certificates [`cluster_pki`] wrote into `dir`: its peer links are TLS
/// too, checked against the same CA.
pub fn tls_settings(dir: &Path) -> String {
    let p = |f: &str| dir.join(f).display().to_string();
    format!(
        "tls:\n  cert: {}\n  key: {}\n  clientCa: {}\n",
        p("node.pem"),
        p("node.key"),
        p("ca.pem")
    )
}

/// Client TLS options with the certificates of [`cluster_pki`] in `dir`.
pub fn client_tls(dir: &Path) -> hadron::TlsOptions {
    hadron::TlsOptions::from_files(
        Some(dir.join("ca.pem").as_path()),
        Some(dir.join("node.pem").as_path()),
        Some(dir.join("node.key").as_path()),
    )
    .unwrap()
}
