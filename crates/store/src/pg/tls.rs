//! TLS to PostgreSQL, chosen by the URL's `sslmode` as libpq reads it:
//!
//! | `sslmode` | encrypted | server certificate |
//! |---|---|---|
//! | absent, `disable` | no | – |
//! | `prefer` | when the server offers it | not checked |
//! | `require` | yes | not checked |
//! | `verify-ca` | yes | signed by a trusted root |
//! | `verify-full` | yes | signed by a trusted root and naming the host |
//!
//! The trusted roots are the file named by `sslrootcert` (PEM) when the URL has one, else
//! the system's. `require` and `prefer` encrypt against a passive eavesdropper only, as in
//! libpq; use `verify-full` where the network is not trusted. `sslrootcert` and the two
//! verifying modes are read here and not passed to the `postgres` client, which knows
//! neither.

use crate::StoreError;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, Error, SignatureScheme};
use std::sync::Arc;

/// How a connection is made: the URL for the `postgres` client and its TLS, if any.
pub(crate) struct Connect {
    pub url: String,
    pub tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// Reads `sslmode` and `sslrootcert` from `url`.
pub(crate) fn connect(url: &str) -> Result<Connect, StoreError> {
    let bad = |detail: String| StoreError::Db(format!("PostgreSQL URL {}: {detail}", super::redact_url(url)));
    let (base, query) = url.split_once('?').map_or((url, ""), |(b, q)| (b, q));
    let (mut mode, mut root) = (Mode::Disable, None);
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("sslmode", value) => {
                mode = match value {
                    "disable" => Mode::Disable,
                    "prefer" => Mode::Prefer,
                    "require" => Mode::Require,
                    "verify-ca" => Mode::VerifyCa,
                    "verify-full" => Mode::VerifyFull,
                    other => {
                        return Err(bad(format!(
                            "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                        )));
                    }
                };
            }
            ("sslrootcert", path) => root = Some(path.to_owned()),
            _ => kept.push(pair),
        }
    }
    // The `postgres` client knows disable, prefer and require; the verifying modes require
    // TLS there and check the certificate here.
    kept.push(match mode {
        Mode::Disable => "sslmode=disable",
        Mode::Prefer => "sslmode=prefer",
        _ => "sslmode=require",
    });
    let url = format!("{base}?{}", kept.join("&"));
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        Mode::Disable => return Ok(Connect { url, tls: None }),
        Mode::Prefer | Mode::Require => {
            Arc::new(Lenient { chain: None, algorithms: provider().signature_verification_algorithms })
        }
        Mode::VerifyCa | Mode::VerifyFull => {
            let roots = roots(root.as_deref()).map_err(bad)?;
            let webpki =
                rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::new(provider()))
                    .build()
                    .map_err(|e| bad(format!("trusted roots: {e}")))?;
            match mode {
                Mode::VerifyCa => {
                    Arc::new(Lenient { chain: Some(webpki), algorithms: provider().signature_verification_algorithms })
                }
                _ => webpki,
            }
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("TLS versions: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Connect { url, tls: Some(tokio_postgres_rustls::MakeRustlsConnect::new(config)) })
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The roots in the PEM file at `path`, else the system's.
fn roots(path: Option<&str>) -> Result<rustls::RootCertStore, String> {
    let certs: Vec<CertificateDer<'static>> = match path {
        Some(path) => CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("sslrootcert {path}: {e}"))?,
        None => {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                return Err(format!(
                    "no system root certificates found ({:?}); name a file with sslrootcert",
                    found.errors
                ));
            }
            found.certs
        }
    };
    let mut store = rustls::RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("no usable certificate in {}", path.unwrap_or("the system's roots")));
    }
    Ok(store)
}

/// `prefer` and `require` (no chain: any certificate) and `verify-ca` (a chain to a trusted
/// root, for any name). The handshake's signatures are checked either way.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let Some(chain) = &self.chain else { return Ok(ServerCertVerified::assertion()) };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(Error::InvalidCertificate(
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
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
