//! TLS for SIP (RFC 3261 26.3.1, RFC 5630 for `sips:`): the rustls configurations stox
//! accepts and connects with, loaded from the PEM files named in `[sip.tls]`.
//!
//! ```text
//!   [sip.tls] certificate, private_key ──> ServerConfig (tls: listeners)
//!                                      └─> ClientConfig  (outbound, presented if asked)
//!   [sip.tls] ca_file | system roots   ──> ClientConfig's verifier: chain + peer name
//! ```
//!
//! rustls runs on the ring provider, chosen explicitly so that no other crate in the tree
//! can switch the process default (aws-lc-rs needs cmake and a C toolchain).
//! Without `ca_file` the roots are the system's (`rustls-native-certs`: on Debian
//! /etc/ssl/certs from ca-certificates), so the CAs an administrator installs or the
//! distribution updates apply without rebuilding stox; SIP providers and PBXs often use
//! private CAs that a compiled-in list (webpki-roots) would never contain.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::ConfigError;

const CERTIFICATE: &str = "sip.tls.certificate";
const PRIVATE_KEY: &str = "sip.tls.private_key";
const CA_FILE: &str = "sip.tls.ca_file";

/// What TLS listeners accept with and outbound TLS connections connect with.
#[derive(Clone)]
pub struct TlsContext {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    roots: usize,
}

impl fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsContext")
            .field("roots", &self.roots)
            .finish_non_exhaustive()
    }
}

impl TlsContext {
    /// Reads the PEM files and builds both configurations. Every error names its key and
    /// the file.
    pub fn load(
        certificate: &Path,
        private_key: &Path,
        ca_file: Option<&Path>,
        verify_peer_name: bool,
    ) -> Result<TlsContext, ConfigError> {
        let chain = read_certificates(CERTIFICATE, certificate)?;
        let key = read_private_key(private_key)?;
        let mut roots = RootCertStore::empty();
        match ca_file {
            Some(path) => {
                for cert in read_certificates(CA_FILE, path)? {
                    roots.add(cert).map_err(|e| {
                        invalid(CA_FILE, path, format!("not a CA certificate ({e})"))
                    })?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                let (added, ignored) = roots.add_parsable_certificates(found.certs);
                tracing::debug!(
                    added,
                    ignored,
                    errors = found.errors.len(),
                    "System root certificates loaded."
                );
                if roots.is_empty() {
                    return Err(ConfigError::new(
                        CA_FILE,
                        "is not set and no system root certificates were found: install ca-certificates or name a PEM file of trusted roots",
                    ));
                }
            }
        }
        let root_count = roots.len();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key_error = |e: rustls::Error| {
            invalid(
                PRIVATE_KEY,
                private_key,
                format!("cannot be used with {CERTIFICATE} ({e})"),
            )
        };

        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(key_error)?
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(key_error)?;

        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| invalid_opt(CA_FILE, ca_file, format!("no usable roots ({e})")))?;
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(key_error)?;
        let builder = if verify_peer_name {
            builder.with_webpki_verifier(webpki)
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyPeerName(webpki)))
        };
        // Presented when a peer asks for it (mutual TLS between SIP servers, RFC 5922).
        let client = builder
            .with_client_auth_cert(chain, key)
            .map_err(key_error)?;

        Ok(TlsContext {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
            roots: root_count,
        })
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    pub fn connector(&self) -> TlsConnector {
        self.connector.clone()
    }
}

/// The name a target's certificate must carry: a DNS name, or an IP address for an IP
/// literal (`[::1]` without its brackets). `None` when the host is neither.
pub fn server_name(host: &str) -> Option<ServerName<'static>> {
    let host = host.trim();
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let bare = bare.strip_suffix('.').unwrap_or(bare);
    ServerName::try_from(bare.to_ascii_lowercase()).ok()
}

fn invalid(key: &str, path: &Path, why: impl fmt::Display) -> ConfigError {
    ConfigError::invalid(key, &path.display().to_string(), why)
}

fn invalid_opt(key: &str, path: Option<&Path>, why: impl fmt::Display) -> ConfigError {
    match path {
        Some(p) => invalid(key, p, why),
        None => ConfigError::new(key, why.to_string()),
    }
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| invalid(key, path, format!("cannot read it ({e})")))
}

fn read_certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            invalid(
                key,
                path,
                format!("not a PEM file of certificates ({})", pem_problem(&e)),
            )
        })?;
    if certs.is_empty() {
        return Err(invalid(key, path, "holds no PEM CERTIFICATE block"));
    }
    Ok(certs)
}

fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let pem = read(PRIVATE_KEY, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            invalid(PRIVATE_KEY, path, "holds no PEM private key")
        }
        e => invalid(
            PRIVATE_KEY,
            path,
            format!("not a PEM private key ({})", pem_problem(&e)),
        ),
    })
}

/// The PEM parser's error in words (its Display prints markers as lists of bytes).
fn pem_problem(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { end_marker } => {
            let marker = String::from_utf8_lossy(end_marker);
            format!("no \"-----END {}-----\" line", marker.trim())
        }
        Error::IllegalSectionStart { line } => {
            format!("malformed line {:?}", String::from_utf8_lossy(line).trim())
        }
        Error::Base64Decode(why) => format!("bad base64: {why}"),
        Error::NoItemsFound => "nothing in it".into(),
        other => other.to_string(),
    }
}

/// `verify_peer_name = false`: the chain must still verify against the roots, but the
/// certificate need not name the host (peers known by IP whose certificates name a domain).
#[derive(Debug)]
struct AnyPeerName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyPeerName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            // webpki checks the name last, after the chain and its validity.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Certificates made on the spot for tests: a CA and leaves signed by it.
#[cfg(test)]
pub(crate) mod test_pki {
    use std::path::{Path, PathBuf};

    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };

    pub struct Pki {
        ca: CertifiedIssuer<'static, KeyPair>,
    }

    /// PEM files of one leaf: `cert` (leaf then CA), `key`.
    pub struct Leaf {
        pub cert: PathBuf,
        pub key: PathBuf,
    }

    impl Pki {
        pub fn new(name: &str) -> Pki {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
            Pki { ca }
        }

        pub fn ca_pem(&self) -> String {
            self.ca.pem()
        }

        pub fn write_ca(&self, dir: &Path) -> PathBuf {
            let p = dir.join("ca.pem");
            std::fs::write(&p, self.ca_pem()).unwrap();
            p
        }

        /// A leaf for `names` (DNS names or IP addresses), written to `dir/<file>.{pem,key}`.
        pub fn leaf(&self, dir: &Path, file: &str, names: &[&str]) -> Leaf {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &self.ca)
                .unwrap();
            let leaf = Leaf {
                cert: dir.join(format!("{file}.pem")),
                key: dir.join(format!("{file}.key")),
            };
            std::fs::write(&leaf.cert, cert.pem() + &self.ca_pem()).unwrap();
            std::fs::write(&leaf.key, key.serialize_pem()).unwrap();
            leaf
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_pki::Pki;
    use super::*;

    #[test]
    fn server_names_are_dns_names_or_ip_addresses() {
        assert_eq!(
            server_name("Example.COM."),
            Some(ServerName::try_from("example.com").unwrap())
        );
        assert!(matches!(
            server_name("127.0.0.1"),
            Some(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("[::1]"),
            Some(ServerName::IpAddress(_))
        ));
        assert_eq!(server_name("not a host!"), None);
        assert_eq!(server_name(""), None);
    }

    fn verifier(pki: &Pki, dir: &Path) -> Arc<WebPkiServerVerifier> {
        let mut roots = RootCertStore::empty();
        for c in read_certificates(CA_FILE, &pki.write_ca(dir)).unwrap() {
            roots.add(c).unwrap();
        }
        WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap()
    }

    fn verify(
        v: &dyn ServerCertVerifier,
        cert: &Path,
        name: &str,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = read_certificates(CERTIFICATE, cert).unwrap();
        v.verify_server_cert(
            &chain[0],
            &chain[1..],
            &ServerName::try_from(name.to_string()).unwrap(),
            &[],
            UnixTime::now(),
        )
    }

    #[test]
    fn without_peer_name_checks_the_chain_is_still_verified() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new("stox test CA");
        let leaf = pki.leaf(dir.path(), "leaf", &["wrong.example"]);
        let strict = verifier(&pki, dir.path());
        let lax = AnyPeerName(strict.clone());

        assert!(verify(strict.as_ref(), &leaf.cert, "wrong.example").is_ok());
        assert!(matches!(
            verify(strict.as_ref(), &leaf.cert, "127.0.0.1"),
            Err(rustls::Error::InvalidCertificate(_))
        ));
        assert!(verify(&lax, &leaf.cert, "127.0.0.1").is_ok());

        let other = Pki::new("another CA").leaf(dir.path(), "other", &["127.0.0.1"]);
        assert!(verify(strict.as_ref(), &other.cert, "127.0.0.1").is_err());
        assert!(verify(&lax, &other.cert, "127.0.0.1").is_err());
    }

    #[test]
    fn pem_problems_name_the_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new("stox test CA");
        let leaf = pki.leaf(dir.path(), "leaf", &["localhost"]);
        let ca = pki.write_ca(dir.path());
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "hello\n").unwrap();
        let missing = dir.path().join("missing.pem");
        let err = |cert: &Path, key: &Path, ca: Option<&Path>| {
            TlsContext::load(cert, key, ca, true)
                .unwrap_err()
                .to_string()
        };

        let e = err(&missing, &leaf.key, Some(&ca));
        assert!(
            e.starts_with(&format!(
                "sip.tls.certificate: {:?} is not valid: cannot read it",
                missing.display().to_string()
            )),
            "{e}"
        );
        let e = err(&garbage, &leaf.key, Some(&ca));
        assert!(
            e.starts_with("sip.tls.certificate: ")
                && e.contains("garbage.pem")
                && e.contains("no PEM CERTIFICATE"),
            "{e}"
        );
        let e = err(&leaf.cert, &garbage, Some(&ca));
        assert!(
            e.starts_with("sip.tls.private_key: ") && e.contains("garbage.pem"),
            "{e}"
        );
        // A key that is not the certificate's.
        let other = pki.leaf(dir.path(), "other", &["localhost"]);
        let e = err(&leaf.cert, &other.key, Some(&ca));
        assert!(
            e.starts_with("sip.tls.private_key: ") && e.contains("other.key"),
            "{e}"
        );
        let e = err(&leaf.cert, &leaf.key, Some(&garbage));
        assert!(
            e.starts_with("sip.tls.ca_file: ") && e.contains("garbage.pem"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");

        TlsContext::load(&leaf.cert, &leaf.key, Some(&ca), true).unwrap();
        TlsContext::load(&leaf.cert, &leaf.key, Some(&ca), false).unwrap();
    }
}
