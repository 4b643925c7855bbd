//! TLS for both sides of the proxy (rustls, ring provider, TLS 1.2+).
//!
//! Client side: the server config answers SSLRequest and PostgreSQL 17's direct TLS (ALPN
//! `postgresql`), and yields the `tls-server-end-point` hash for SCRAM-SHA-256-PLUS channel binding.
//! Upstream side: `require` encrypts without verifying (libpq's `sslmode=require`), `verify-full`
//! verifies the chain and host name against the target's `ca` file or the web PKI roots.
//! Also generates the self-signed development certificate used by the demo and the tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use sha2::Digest;

use crate::config::{Target, UpstreamTls};

/// ALPN protocol name PostgreSQL 17 uses for direct TLS connections.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key")]
    NoKey { path: PathBuf },
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The client-facing TLS setup.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
    /// `tls-server-end-point` channel-binding data (RFC 5929) for the leaf certificate.
    pub end_point_hash: Vec<u8>,
}

impl ServerTls {
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let certs = load_certs(cert)?;
        let key_pem = read(key)?;
        let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .map_err(|source| TlsError::Read {
                path: key.to_owned(),
                source,
            })?
            .ok_or_else(|| TlsError::NoKey { path: key.to_owned() })?;
        let end_point_hash = tls_server_end_point(&certs[0]);
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        Ok(ServerTls {
            config: Arc::new(config),
            end_point_hash,
        })
    }
}

/// RFC 5929 `tls-server-end-point`: the certificate hashed with its signature's hash function
/// (SHA-256 for MD5/SHA-1/SHA-256 signatures).
pub fn tls_server_end_point(cert: &CertificateDer<'_>) -> Vec<u8> {
    // The outer signatureAlgorithm OIDs for SHA-384 and SHA-512 based signatures (RSA and ECDSA).
    const SHA384_OIDS: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c],
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],
    ];
    const SHA512_OIDS: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d],
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],
    ];
    let der = cert.as_ref();
    let contains = |oid: &[u8]| der.windows(oid.len()).any(|w| w == oid);
    if SHA512_OIDS.iter().any(|o| contains(o)) {
        sha2::Sha512::digest(der).to_vec()
    } else if SHA384_OIDS.iter().any(|o| contains(o)) {
        sha2::Sha384::digest(der).to_vec()
    } else {
        sha2::Sha256::digest(der).to_vec()
    }
}

/// The upstream TLS setup for one target, or `None` for `tls = "disable"`.
pub fn upstream_client_config(target: &Target) -> Result<Option<Arc<ClientConfig>>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let config = match target.tls {
        UpstreamTls::Disable => return Ok(None),
        UpstreamTls::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider())))
            .with_no_client_auth(),
        UpstreamTls::VerifyFull => {
            let mut roots = rustls::RootCertStore::empty();
            match &target.ca {
                Some(ca) => {
                    for cert in load_certs(ca)? {
                        roots.add(cert)?;
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Some(Arc::new(config)))
}

/// `sslmode=require`: the channel is encrypted and handshake signatures are checked, but the
/// certificate chain is not (as libpq does). Use `verify-full` to authenticate the server.
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Writes a self-signed certificate and key (mode 0600) for `hosts` unless both files exist.
/// Returns true when it generated new files. For development and the demo only.
pub fn ensure_dev_certificate(cert_path: &Path, key_path: &Path, hosts: &[&str]) -> Result<bool, TlsError> {
    if cert_path.is_file() && key_path.is_file() {
        return Ok(false);
    }
    let names: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
    let certified = rcgen::generate_simple_self_signed(names)?;
    for path in [cert_path, key_path] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
                path: dir.to_owned(),
                source,
            })?;
        }
    }
    let write = |path: &Path, data: String, mode: u32| -> Result<(), TlsError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)
            .map_err(|source| TlsError::Write {
                path: path.to_owned(),
                source,
            })?;
        f.write_all(data.as_bytes()).map_err(|source| TlsError::Write {
            path: path.to_owned(),
            source,
        })
    };
    write(key_path, certified.key_pair.serialize_pem(), 0o600)?;
    write(cert_path, certified.cert.pem(), 0o644)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificate_loads_and_has_a_sha256_binding() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.crt"), dir.path().join("c.key"));
        assert!(ensure_dev_certificate(&cert, &key, &["localhost", "127.0.0.1"]).unwrap());
        assert!(
            !ensure_dev_certificate(&cert, &key, &["localhost"]).unwrap(),
            "kept existing files"
        );
        let tls = ServerTls::load(&cert, &key).unwrap();
        assert_eq!(tls.end_point_hash.len(), 32);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn missing_or_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert!(matches!(
            ServerTls::load(&empty, &empty),
            Err(TlsError::NoCertificate { .. })
        ));
        let missing = dir.path().join("nope.pem");
        let err = ServerTls::load(&missing, &missing).unwrap_err();
        assert!(err.to_string().contains("nope.pem"), "{err}");
    }
}
