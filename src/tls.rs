//! TLS on the public listeners: certificate/key pairs read from PEM, the
//! certificate a handshake gets (by SNI, from whatever the running config
//! holds now), and the rustls settings of a listener.
//!
//! A listener's rustls `ServerConfig` is built once, at start (versions and
//! ALPN are fixed then); its certificates are not. The resolver reads them
//! from a [`CertStore`] that each successful reload refills, so a renewed
//! certificate (certbot, cert-manager) is served without a restart and a
//! broken pair fails the reload like any bad config, keeping the old one.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::policy::{Alpn, TlsVersion};

/// Why a certificate/key pair cannot be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PairError {
    #[error("no PEM certificate in the cert file")]
    NoCertificate,
    #[error("the cert file is not valid PEM: {0}")]
    BadCertificatePem(String),
    #[error("no PEM private key in the key file")]
    NoKey,
    #[error("the key file is not valid PEM: {0}")]
    BadKeyPem(String),
    #[error("the key is of a kind TLS cannot sign with: {0}")]
    UnsupportedKey(String),
    #[error("the key does not belong to the certificate")]
    KeyMismatch,
    #[error("the certificate cannot be parsed: {0}")]
    BadCertificate(String),
}

/// One certificate chain with its key, ready for handshakes.
#[derive(Clone)]
pub(crate) struct CertPair {
    pub(crate) key: Arc<CertifiedKey>,
}

impl fmt::Debug for CertPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertPair")
            .field("chain_len", &self.key.cert.len())
            .finish_non_exhaustive()
    }
}

impl PartialEq for CertPair {
    /// The same chain: a key cannot differ without the chain differing too
    /// (they are checked to match).
    fn eq(&self, other: &Self) -> bool {
        self.key.cert == other.key.cert
    }
}

/// Reads a PEM certificate chain and its PEM private key, and checks that
/// the key belongs to the leaf certificate.
pub(crate) fn load_pair(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertPair, PairError> {
    let mut chain = Vec::new();
    for cert in CertificateDer::pem_slice_iter(cert_pem) {
        chain.push(cert.map_err(|e| PairError::BadCertificatePem(e.to_string()))?);
    }
    let Some(leaf) = chain.first() else {
        return Err(PairError::NoCertificate);
    };
    webpki::EndEntityCert::try_from(leaf).map_err(|e| PairError::BadCertificate(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => PairError::NoKey,
        other => PairError::BadKeyPem(other.to_string()),
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| PairError::UnsupportedKey(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|_| PairError::KeyMismatch)?;
    Ok(CertPair {
        key: Arc::new(certified),
    })
}

/// The crypto the gateway's TLS uses: ring, as the rest of Pingora's rustls.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A listener's certificates as they are now. The first is the default: a
/// client that sends no SNI, or a name no certificate covers, gets it.
#[derive(Debug)]
pub(crate) struct CertStore {
    current: ArcSwap<Vec<CertPair>>,
}

impl CertStore {
    pub(crate) fn new(pairs: Vec<CertPair>) -> Self {
        CertStore {
            current: ArcSwap::from_pointee(pairs),
        }
    }

    /// Serves `pairs` from the next handshake on; open connections keep
    /// the certificate they were made with.
    pub(crate) fn replace(&self, pairs: Vec<CertPair>) {
        if **self.current.load() != pairs {
            self.current.store(Arc::new(pairs));
        }
    }

    /// The certificate for a handshake that asked for `name`.
    fn pick(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let pairs = self.current.load();
        let default = pairs.first()?;
        let chosen = match (name, pairs.len()) {
            (Some(name), 2..) => ServerName::try_from(name)
                .ok()
                .and_then(|name| pairs.iter().find(|pair| covers(pair, &name))),
            _ => None,
        };
        Some(chosen.unwrap_or(default).key.clone())
    }
}

/// Whether the pair's leaf certificate is valid for `name` (its DNS names,
/// wildcards included, as a client would check them).
fn covers(pair: &CertPair, name: &ServerName<'_>) -> bool {
    pair.key.cert.first().is_some_and(|leaf| {
        webpki::EndEntityCert::try_from(leaf)
            .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(name).is_ok())
    })
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

/// The rustls settings of a listener: its versions from `min_version` up,
/// its ALPN protocols in order of preference, certificates from `certs`.
pub(crate) fn server_config(
    certs: Arc<CertStore>,
    min_version: TlsVersion,
    alpn: &[Alpn],
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = alpn
        .iter()
        .map(|protocol| match protocol {
            Alpn::H2 => b"h2".to_vec(),
            Alpn::Http11 => b"http/1.1".to_vec(),
        })
        .collect();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair_for(names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::generate_simple_self_signed(names).unwrap();
        (cert.cert.pem(), cert.key_pair.serialize_pem())
    }

    fn load(names: &[&str]) -> CertPair {
        let (cert, key) = pair_for(names);
        load_pair(cert.as_bytes(), key.as_bytes()).unwrap()
    }

    #[test]
    fn a_matching_pair_loads() {
        let (cert, key) = pair_for(&["api.example.com"]);
        assert!(load_pair(cert.as_bytes(), key.as_bytes()).is_ok());
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let (cert, _) = pair_for(&["api.example.com"]);
        let (_, other_key) = pair_for(&["api.example.com"]);
        let refused = load_pair(cert.as_bytes(), other_key.as_bytes());
        assert_eq!(refused.err(), Some(PairError::KeyMismatch));
    }

    #[test]
    fn a_file_without_a_certificate_is_refused() {
        let (_, key) = pair_for(&["api.example.com"]);
        let refused = load_pair(b"not a certificate", key.as_bytes());
        assert_eq!(refused.err(), Some(PairError::NoCertificate));
    }

    #[test]
    fn a_file_without_a_key_is_refused() {
        let (cert, _) = pair_for(&["api.example.com"]);
        let refused = load_pair(cert.as_bytes(), cert.as_bytes());
        assert_eq!(refused.err(), Some(PairError::NoKey));
    }

    #[test]
    fn sni_picks_the_certificate_that_covers_the_name() {
        let api = load(&["api.example.com"]);
        let www = load(&["www.example.com"]);
        let store = CertStore::new(vec![api, www.clone()]);
        assert_eq!(
            store.pick(Some("www.example.com")).unwrap().cert,
            www.key.cert
        );
    }

    #[test]
    fn a_wildcard_certificate_covers_one_label() {
        let api = load(&["api.example.com"]);
        let wild = load(&["*.example.org"]);
        let store = CertStore::new(vec![api.clone(), wild.clone()]);
        assert_eq!(
            store.pick(Some("a.example.org")).unwrap().cert,
            wild.key.cert
        );
        assert_eq!(
            store.pick(Some("a.b.example.org")).unwrap().cert,
            api.key.cert
        );
    }

    #[test]
    fn no_sni_or_an_unknown_name_gets_the_first_certificate() {
        let api = load(&["api.example.com"]);
        let www = load(&["www.example.com"]);
        let store = CertStore::new(vec![api.clone(), www]);
        assert_eq!(store.pick(None).unwrap().cert, api.key.cert);
        assert_eq!(store.pick(Some("other.test")).unwrap().cert, api.key.cert);
    }

    #[test]
    fn a_replaced_set_is_served_from_the_next_pick() {
        let old = load(&["api.example.com"]);
        let new = load(&["api.example.com"]);
        let store = CertStore::new(vec![old]);
        store.replace(vec![new.clone()]);
        assert_eq!(
            store.pick(Some("api.example.com")).unwrap().cert,
            new.key.cert
        );
    }
}
