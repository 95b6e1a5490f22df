//! Certificate verification against a `caFile`, re-read when it changes ([`Reloading`]): a
//! client's view of the server's certificate, and a server's view of client certificates.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};

use super::reload::Reloading;
use super::{parse_certs, provider};

/// The certificates of a CA file: trust anchors for chains, and each one as itself.
fn ca_file(
    path: &Path,
    pem: &[u8],
) -> Result<(RootCertStore, Vec<CertificateDer<'static>>), String> {
    let certs = parse_certs(path, pem)?;
    let mut roots = RootCertStore::empty();
    for cert in &certs {
        roots
            .add(cert.clone())
            .map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
    }
    Ok((roots, certs))
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    provider().signature_verification_algorithms
}

// --- the server's certificate, on a client ---------------------------------------------------

/// GOST's client without `secure` or `caFile`: any certificate. The handshake's signatures
/// are still checked, so the session is at least bound to the certificate shown.
#[derive(Debug)]
pub(super) struct AnyServerCert;

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// A server's certificate checked against a `caFile`: the chain, and the name too with
/// `secure` (without it GOST checks the chain only, and takes a certificate that is itself in
/// the file, because GOST's generated certificates are CA certificates that serve as their
/// own leaf, which WebPKI refuses as an end entity).
#[derive(Debug)]
pub(super) struct CaFileServerVerifier {
    ca: Reloading<ServerCa>,
    check_name: bool,
}

#[derive(Debug)]
struct ServerCa {
    chain: Arc<WebPkiServerVerifier>,
    pinned: Vec<CertificateDer<'static>>,
}

impl CaFileServerVerifier {
    /// Reads `ca_file`; `check_name` is `secure`.
    pub(super) fn new(ca_file_path: &str, check_name: bool) -> Result<Self, String> {
        let ca = Reloading::new("TLS CA file", vec![PathBuf::from(ca_file_path)], |files| {
            let (path, pem) = files[0];
            let (roots, pinned) = ca_file(path, pem)?;
            let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(ServerCa { chain, pinned })
        })?;
        Ok(CaFileServerVerifier { ca, check_name })
    }
}

impl ServerCertVerifier for CaFileServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = self.ca.current();
        if !self.check_name && ca.pinned.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
            return Ok(ServerCertVerified::assertion());
        }
        match ca
            .chain
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

// --- client certificates, on a server ------------------------------------------------------

/// Requires a client certificate issued by (a certificate in) the `caFile`.
///
/// It names no acceptable CAs in its certificate request: a reload may change the CA's
/// subject, and a stale name would make Go clients (GOST) withhold a certificate the new CA
/// issued; with none named, every client sends the certificate it has.
#[derive(Debug)]
pub(super) struct CaFileClientVerifier {
    ca: Reloading<ClientCa>,
}

#[derive(Debug)]
struct ClientCa {
    chain: Arc<dyn ClientCertVerifier>,
}

impl CaFileClientVerifier {
    /// Reads `ca_file`.
    pub(super) fn new(ca_file_path: &str) -> Result<Self, String> {
        let ca = Reloading::new(
            "TLS client CA file",
            vec![PathBuf::from(ca_file_path)],
            |files| {
                let (path, pem) = files[0];
                let (roots, _) = ca_file(path, pem)?;
                let chain =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(ClientCa { chain })
            },
        )?;
        Ok(CaFileClientVerifier { ca })
    }
}

impl ClientCertVerifier for CaFileClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.ca
            .current()
            .chain
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}
