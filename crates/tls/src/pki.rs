//! A small lab PKI for labs without one: a CA and one server certificate signed by it.
//!
//! Invariants:
//! - Files are created new (an existing file is never overwritten): `ca.pem`, `ca-key.pem`,
//!   `server.pem`, `server-key.pem`; keys have mode 0600, certificates 0644.
//! - Keys are ECDSA P-256 made by aws-lc-rs; the CA is valid 10 years, the server certificate
//!   3 years, both from January 1st of the current year.

use crate::{Fingerprint, TlsError};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// What [`init`] wrote.
#[derive(Debug, Clone)]
pub struct LabPki {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// What agents and clients may pin instead of trusting the CA.
    pub server_fingerprint: Fingerprint,
}

fn generate(reason: impl std::fmt::Display) -> TlsError {
    TlsError::Generate(reason.to_string())
}

/// The current year (UTC), close enough for validity periods.
fn this_year() -> i32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // 365.2425 days a year.
    1970 + i32::try_from(secs / 31_556_952).unwrap_or(0)
}

/// Makes the CA and a server certificate for `names` (DNS names or IP addresses) in `dir`.
pub fn init(dir: &Path, names: &[String]) -> Result<LabPki, TlsError> {
    if names.is_empty() {
        return Err(generate("the server certificate needs at least one name"));
    }
    let year = this_year();
    let ca_key = KeyPair::generate().map_err(generate)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(generate)?;
    // A name of its own: a verifier looks issuers up by name, and two labs' CAs with one
    // name would read as a bad signature instead of an unknown issuer.
    let tag = crate::Fingerprint::of(ca_key.public_key_raw()).to_string();
    ca.distinguished_name
        .push(DnType::CommonName, format!("dutlab lab CA {}", &tag[7..19]));
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = rcgen::date_time_ymd(year, 1, 1);
    ca.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
    let ca_cert = ca.self_signed(&ca_key).map_err(generate)?;

    let server_key = KeyPair::generate().map_err(generate)?;
    let mut server = CertificateParams::new(names.to_vec())
        .map_err(|e| generate(format!("names {names:?}: {e}")))?;
    server
        .distinguished_name
        .push(DnType::CommonName, names[0].clone());
    server.is_ca = IsCa::ExplicitNoCa;
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.not_before = rcgen::date_time_ymd(year, 1, 1);
    server.not_after = rcgen::date_time_ymd(year + 3, 1, 1);
    let issuer = Issuer::new(ca, ca_key);
    let server_cert = server.signed_by(&server_key, &issuer).map_err(generate)?;

    std::fs::create_dir_all(dir).map_err(|e| crate::file_error(dir, e))?;
    let made = LabPki {
        ca_cert: dir.join("ca.pem"),
        ca_key: dir.join("ca-key.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server-key.pem"),
        server_fingerprint: Fingerprint::of(server_cert.der()),
    };
    for path in [
        &made.ca_cert,
        &made.ca_key,
        &made.server_cert,
        &made.server_key,
    ] {
        if path.exists() {
            return Err(crate::file_error(
                path,
                "exists already; remove it or choose another directory",
            ));
        }
    }
    write_new(&made.ca_key, &issuer.key().serialize_pem(), 0o600)?;
    write_new(&made.ca_cert, &ca_cert.pem(), 0o644)?;
    write_new(&made.server_key, &server_key.serialize_pem(), 0o600)?;
    // The chain a client gets: the server certificate, then the CA.
    let chain = format!("{}{}", server_cert.pem(), ca_cert.pem());
    write_new(&made.server_cert, &chain, 0o644)?;
    Ok(made)
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), TlsError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| crate::file_error(path, format!("cannot create: {e}")))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| crate::file_error(path, format!("cannot write: {e}")))
}
