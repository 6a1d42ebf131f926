//! TLS for dutlab: the controller's server configuration, the trust of agents and clients,
//! and a small lab PKI (`dutlab tls init`).
//!
//! Invariants:
//! - One crypto provider: aws-lc-rs, passed explicitly to every configuration built here, so
//!   nothing depends on which provider a process installed (and ring is never needed).
//! - Trust is one of three things ([`Trust`]): the system's roots, one CA file, or one pinned
//!   server-certificate fingerprint. A pin replaces chain and name checks (it names exactly one
//!   certificate) but the handshake signature is still verified against that certificate's key.
//! - Every error names the file or the controller and the reason ([`TlsError`]).
//! - Key files written here are created new with mode 0600; nothing here prints a key.

pub mod pki;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("pin '{text}': {reason}")]
    Pin { text: String, reason: String },
    #[error("system roots: {0}")]
    SystemRoots(String),
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error("certificate generation: {0}")]
    Generate(String),
}

fn file_error(path: &Path, reason: impl fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The crypto provider of every configuration (aws-lc-rs).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// SHA-256 of a DER certificate, written `sha256:HEX`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn of(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Fingerprint {
    type Err = TlsError;

    /// `sha256:` and 64 hex digits; colons between bytes (as openssl prints them) are allowed.
    fn from_str(text: &str) -> Result<Fingerprint, TlsError> {
        let fail = |reason: &str| TlsError::Pin {
            text: text.to_owned(),
            reason: reason.to_owned(),
        };
        let hex = text
            .strip_prefix("sha256:")
            .ok_or_else(|| fail("must start with sha256:"))?;
        let digits: Vec<u8> = hex.bytes().filter(|b| *b != b':').collect();
        if digits.len() != 64 {
            return Err(fail("needs 64 hex digits after sha256:"));
        }
        let mut out = [0u8; 32];
        for (i, pair) in digits.chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).map_err(|_| fail("not hex"))?;
            out[i] = u8::from_str_radix(text, 16).map_err(|_| fail("not hex"))?;
        }
        Ok(Fingerprint(out))
    }
}

/// Whom an agent or client trusts for `https://` and `wss://`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Trust {
    /// The system's certificate store (`/etc/ssl/certs`, `SSL_CERT_FILE`).
    #[default]
    System,
    /// Certificates signed by the CA(s) in this PEM file.
    CaFile(PathBuf),
    /// Exactly the server certificate with this fingerprint.
    Pin(Fingerprint),
}

impl fmt::Display for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trust::System => f.write_str("the system's roots"),
            Trust::CaFile(path) => write!(f, "the CA in {}", path.display()),
            Trust::Pin(pin) => write!(f, "the pinned certificate {pin}"),
        }
    }
}

impl Trust {
    /// From the two optional settings; both at once is refused.
    pub fn from_settings(ca_file: Option<PathBuf>, pin: Option<&str>) -> Result<Trust, TlsError> {
        match (ca_file, pin) {
            (Some(_), Some(_)) => Err(TlsError::Config(
                "give a CA file or a pinned fingerprint, not both".into(),
            )),
            (Some(path), None) => Ok(Trust::CaFile(path)),
            (None, Some(pin)) => Ok(Trust::Pin(pin.parse()?)),
            (None, None) => Ok(Trust::System),
        }
    }
}

/// Reads every certificate of a PEM file (at least one).
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, format!("cannot read: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The client configuration for a [`Trust`], with ALPN `http/1.1`.
pub fn client_config(trust: &Trust) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = match trust {
        Trust::Pin(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedServer {
                pin: *pin,
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth(),
        Trust::CaFile(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certificates(path)? {
                roots
                    .add(cert)
                    .map_err(|e| file_error(path, format!("not a usable CA certificate: {e}")))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::System => {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let reasons: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
                return Err(TlsError::SystemRoots(format!(
                    "no usable certificate found ({}); give a CA file or a pin",
                    reasons.join("; ")
                )));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The controller's server configuration from a PEM certificate chain and a PEM private key.
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let chain = read_certificates(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| file_error(key, format!("not a PEM private key: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            file_error(
                key,
                format!("does not go with the certificate {}: {e}", cert.display()),
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Accepts exactly one server certificate, by fingerprint.
#[derive(Debug)]
struct PinnedServer {
    pin: Fingerprint,
    algorithms: WebPkiSupportedAlgorithms,
}

/// The refusal of a certificate that is not the pinned one (shown in the handshake error).
#[derive(Debug, thiserror::Error)]
#[error("the server certificate is {got}, not the pinned {want}")]
struct PinMismatch {
    got: Fingerprint,
    want: Fingerprint,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = Fingerprint::of(end_entity);
        if got == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(PinMismatch {
                    got,
                    want: self.pin,
                }))),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Finds a TLS failure in an error's chain (also inside `std::io::Error`, which hides its
/// payload from `source()`) and says it for people, with what was trusted.
pub fn explain(error: &(dyn std::error::Error + 'static), trust: &Trust) -> Option<String> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(tls) = rustls_error(e) {
            return Some(describe(tls, trust));
        }
        next = e.source();
    }
    None
}

/// `e` as a rustls error: itself, inside an `io::Error`, or inside a boxed error.
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        return io.get_ref().and_then(|inner| rustls_error(inner));
    }
    None
}

fn describe(error: &rustls::Error, trust: &Trust) -> String {
    use rustls::CertificateError as C;
    match error {
        rustls::Error::InvalidCertificate(cert) => {
            let why = match cert {
                C::UnknownIssuer | C::BadSignature => {
                    format!("its certificate is not signed by {trust}")
                }
                C::NotValidForName | C::NotValidForNameContext { .. } => {
                    "its certificate is not valid for this host name or address".to_owned()
                }
                C::Expired | C::ExpiredContext { .. } => "its certificate has expired".to_owned(),
                C::NotValidYet | C::NotValidYetContext { .. } => {
                    "its certificate is not valid yet".to_owned()
                }
                C::Other(other) => other.to_string(),
                other => format!("its certificate is refused ({other:?}) by {trust}"),
            };
            format!("the server's certificate is refused: {why}")
        }
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            format!("the server does not speak TLS there ({error}); is it plain http://?")
        }
        other => format!("TLS failed: {other}"),
    }
}

/// The fingerprint of the first certificate of a PEM file (what `--pin` takes).
pub fn file_fingerprint(path: &Path) -> Result<Fingerprint, TlsError> {
    let certs = read_certificates(path)?;
    Ok(Fingerprint::of(&certs[0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_and_print() {
        let fp = Fingerprint::of(b"x");
        let text = fp.to_string();
        assert_eq!(text.len(), 7 + 64);
        assert_eq!(text.parse::<Fingerprint>().ok(), Some(fp));
        let colons = format!(
            "sha256:{}",
            text.as_bytes()[7..]
                .chunks(2)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join(":")
        );
        assert_eq!(colons.parse::<Fingerprint>().ok(), Some(fp));
        for bad in [
            "",
            "md5:00",
            "sha256:00",
            &format!("sha256:{}", "zz".repeat(32)),
        ] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn both_ca_and_pin_are_refused() {
        let pin = Fingerprint::of(b"x").to_string();
        assert!(Trust::from_settings(Some("ca.pem".into()), Some(&pin)).is_err());
        assert_eq!(Trust::from_settings(None, None).ok(), Some(Trust::System));
    }

    #[test]
    fn a_made_pki_loads_as_server_and_client_configs() {
        let dir = tempfile::tempdir().expect("temp dir");
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let made = pki::init(dir.path(), &names).expect("pki");
        server_config(&made.server_cert, &made.server_key).expect("server config");
        client_config(&Trust::CaFile(made.ca_cert.clone())).expect("client config");
        assert_eq!(
            file_fingerprint(&made.server_cert).expect("fingerprint"),
            made.server_fingerprint
        );
        use std::os::unix::fs::PermissionsExt;
        for key in [&made.ca_key, &made.server_key] {
            let mode = std::fs::metadata(key).expect("key").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", key.display());
        }
        // A second init refuses to overwrite.
        assert!(pki::init(dir.path(), &names).is_err());
    }
}
