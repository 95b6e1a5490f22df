//! Certificate verification against a `caFile`, re-read when it changes ([`Reloading`]), or
//! the trusted roots ([`trusted_roots`]): a client's view of the server's certificate, and a
//! server's view of client certificates.
//!
//! A certificate that is itself in the `caFile` (or the roots), byte for byte, is taken as itself (pinned),
//! as Go and OpenSSL take a self-signed certificate listed as a trust anchor: GOST's generated
//! certificate, like `openssl req -x509`'s, is a CA certificate that serves as its own leaf,
//! which WebPKI refuses as an end entity (`CaUsedAsEndEntity`). Such a certificate is still
//! checked for what Go checks: its validity period, its extended key usage, and with `secure`
//! the server's name.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, ExtendedKeyPurpose, RootCertStore,
    SignatureScheme,
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

fn is_pinned(pinned: &[CertificateDer<'static>], end_entity: &CertificateDer<'_>) -> bool {
    pinned.iter().any(|c| c.as_ref() == end_entity.as_ref())
}

/// Checks a pinned certificate (one that is itself in the `caFile`) as Go verifies a
/// one-certificate chain: valid at `now`, an extended key usage (when it has one) that allows
/// `purpose`, and `name` in its subject alternative names when given.
fn check_pinned(
    end_entity: &CertificateDer<'_>,
    now: UnixTime,
    purpose: ExtendedKeyPurpose,
    name: Option<&ServerName<'_>>,
) -> Result<(), rustls::Error> {
    let bad = |e| rustls::Error::InvalidCertificate(e);
    let (_, cert) = x509_parser::parse_x509_certificate(end_entity.as_ref())
        .map_err(|_| bad(CertificateError::BadEncoding))?;
    let validity = cert.validity();
    let at = |seconds: i64| UnixTime::since_unix_epoch(Duration::from_secs(seconds.max(0) as u64));
    let now_seconds = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    if now_seconds < validity.not_before.timestamp() {
        return Err(bad(CertificateError::NotValidYetContext {
            time: now,
            not_before: at(validity.not_before.timestamp()),
        }));
    }
    if now_seconds > validity.not_after.timestamp() {
        return Err(bad(CertificateError::ExpiredContext {
            time: now,
            not_after: at(validity.not_after.timestamp()),
        }));
    }
    let usage = cert
        .extended_key_usage()
        .map_err(|_| bad(CertificateError::BadEncoding))?;
    if let Some(usage) = usage.map(|u| u.value) {
        let allowed = usage.any
            || match purpose {
                ExtendedKeyPurpose::ServerAuth => usage.server_auth,
                ExtendedKeyPurpose::ClientAuth => usage.client_auth,
                _ => false,
            };
        if !allowed {
            return Err(bad(CertificateError::InvalidPurpose));
        }
    }
    if let Some(name) = name {
        rustls::client::verify_server_name(&ParsedCertificate::try_from(end_entity)?, name)?;
    }
    Ok(())
}

/// Checks a TLS 1.3 handshake signature against the public key of `cert`. WebPKI, which rustls
/// asks, parses X.509 v3 certificates only; a v1 certificate (no extensions, as
/// `openssl x509 -req` writes them without `-extfile` before OpenSSL 3.2), which Go, so GOST,
/// serves and accepts, has its signature checked against its public key read by x509-parser.
fn tls13_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    let checked = rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms());
    if checked.is_ok() {
        return checked;
    }
    match x509_parser::parse_x509_certificate(cert.as_ref()) {
        Ok((_, parsed)) if parsed.tbs_certificate.version == x509_parser::x509::X509Version::V1 => {
            let spki = SubjectPublicKeyInfoDer::from(parsed.tbs_certificate.subject_pki.raw);
            rustls::crypto::verify_tls13_signature_with_raw_key(message, &spki, dss, &algorithms())
        }
        _ => checked,
    }
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
        tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// A server's certificate checked against a `caFile` or the trusted roots ([`trusted_roots`]):
/// the chain (or the pinned certificate), and the name too with `secure` (with a `caFile` but
/// without `secure` GOST checks the chain only).
#[derive(Debug)]
pub(super) struct CaServerVerifier {
    ca: CaSource,
    check_name: bool,
}

#[derive(Debug)]
enum CaSource {
    File(Reloading<ServerCa>),
    Trusted(Arc<ServerCa>),
}

#[derive(Debug)]
struct ServerCa {
    chain: Arc<WebPkiServerVerifier>,
    pinned: Vec<CertificateDer<'static>>,
}

impl ServerCa {
    fn new(roots: RootCertStore, pinned: Vec<CertificateDer<'static>>) -> Result<Self, String> {
        let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(ServerCa { chain, pinned })
    }
}

impl CaServerVerifier {
    /// Reads `ca_file`; `check_name` is `secure`.
    pub(super) fn from_file(ca_file_path: &str, check_name: bool) -> Result<Self, String> {
        let ca = Reloading::new("TLS CA file", vec![PathBuf::from(ca_file_path)], |files| {
            let (path, pem) = files[0];
            let (roots, pinned) = ca_file(path, pem)?;
            ServerCa::new(roots, pinned).map_err(|e| format!("{}: {e}", path.display()))
        })?;
        Ok(CaServerVerifier {
            ca: CaSource::File(ca),
            check_name,
        })
    }

    /// `secure` without a `caFile`: the chain and the name against [`trusted_roots`].
    pub(super) fn trusted() -> Result<Self, String> {
        Ok(CaServerVerifier {
            ca: CaSource::Trusted(trusted_roots()?),
            check_name: true,
        })
    }
}

/// What `secure` trusts without a `caFile`, found as Go (so GOST) and OpenSSL find it on
/// Linux: the file `SSL_CERT_FILE` and the directories of `SSL_CERT_DIR` when either is set
/// (instead of the system's), else the system's store (`/etc/ssl/certs/ca-certificates.crt`
/// and its relatives on other distributions); where that holds nothing (a `scratch` image),
/// the Mozilla roots built in. Read on first use, once per process, as Go reads them.
fn trusted_roots() -> Result<Arc<ServerCa>, String> {
    static TRUSTED: OnceLock<Result<Arc<ServerCa>, String>> = OnceLock::new();
    TRUSTED
        .get_or_init(|| {
            let named: Vec<String> = ["SSL_CERT_FILE", "SSL_CERT_DIR"]
                .into_iter()
                .filter_map(|var| Some(format!("{var}={}", std::env::var(var).ok()?)))
                .collect();
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (_, unusable) = roots.add_parsable_certificates(found.certs.iter().cloned());
            let problems = found
                .errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            if roots.is_empty() {
                if !named.is_empty() {
                    return Err(format!(
                        "{}: no usable CA certificate ({problems})",
                        named.join(", ")
                    ));
                }
                tracing::info!(
                    problems = %problems,
                    "no system CA certificates found; secure TLS clients trust the Mozilla roots built in"
                );
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                return ServerCa::new(roots, Vec::new()).map(Arc::new);
            }
            if named.is_empty() || problems.is_empty() {
                tracing::debug!(
                    roots = roots.len(), unusable, from = %named.join(", "),
                    "CA certificates for secure TLS clients"
                );
            } else {
                tracing::warn!(
                    roots = roots.len(), unusable, from = %named.join(", "), problems = %problems,
                    "CA certificates for secure TLS clients, not all of them readable"
                );
            }
            ServerCa::new(roots, found.certs).map(Arc::new)
        })
        .clone()
}

impl CaServerVerifier {
    fn current(&self) -> Arc<ServerCa> {
        match &self.ca {
            CaSource::File(file) => file.current(),
            CaSource::Trusted(trusted) => trusted.clone(),
        }
    }
}

impl ServerCertVerifier for CaServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = self.current();
        if is_pinned(&ca.pinned, end_entity) {
            let name = self.check_name.then_some(server_name);
            check_pinned(end_entity, now, ExtendedKeyPurpose::ServerAuth, name)?;
            return Ok(ServerCertVerified::assertion());
        }
        match ca
            .chain
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            // A self-signed CA certificate as the server's own, not pinned: for Go (GOST) a
            // certificate "signed by unknown authority", and said so here (see
            // `ClientTls::connect`). One a CA issued is refused as what it is: WebPKI takes no
            // CA certificate as a server's, wherever it came from.
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(other)))
                if ca_used_as_end_entity(&other) && self_issued(end_entity) =>
            {
                Err(CertificateError::UnknownIssuer.into())
            }
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
        tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// Whether WebPKI refused a certificate because it is a CA's (`CaUsedAsEndEntity`); rustls
/// passes that error on without a type of its own, so it is told by its name.
pub(super) fn ca_used_as_end_entity(error: &rustls::OtherError) -> bool {
    format!("{error:?}").contains("CaUsedAsEndEntity")
}

/// Whether a certificate names itself as its issuer, as a self-signed one does.
fn self_issued(cert: &CertificateDer<'_>) -> bool {
    x509_parser::parse_x509_certificate(cert.as_ref())
        .is_ok_and(|(_, cert)| cert.subject().as_raw() == cert.issuer().as_raw())
}

// --- client certificates, on a server ------------------------------------------------------

/// Requires a client certificate issued by a certificate in the `caFile`, or pinned there.
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
    pinned: Vec<CertificateDer<'static>>,
}

impl CaFileClientVerifier {
    /// Reads `ca_file`.
    pub(super) fn new(ca_file_path: &str) -> Result<Self, String> {
        let ca = Reloading::new(
            "TLS client CA file",
            vec![PathBuf::from(ca_file_path)],
            |files| {
                let (path, pem) = files[0];
                let (roots, pinned) = ca_file(path, pem)?;
                let chain =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(ClientCa { chain, pinned })
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
        let ca = self.ca.current();
        if is_pinned(&ca.pinned, end_entity) {
            check_pinned(end_entity, now, ExtendedKeyPurpose::ClientAuth, None)?;
            return Ok(ClientCertVerified::assertion());
        }
        ca.chain.verify_client_cert(end_entity, intermediates, now)
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
        tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose as Eku, IsCa};

    /// A self-signed CA certificate for 127.0.0.1 with `usages` (none: no extension), valid
    /// from `days_from` to `days_to` days from now.
    fn self_signed(usages: Vec<Eku>, days_from: i64, days_to: i64) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.extended_key_usages = usages;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(days_from);
        params.not_after = now + time::Duration::days(days_to);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn a_self_signed_certificate_nobody_trusts_is_of_an_unknown_issuer() {
        let roots_of_another = {
            let mut roots = RootCertStore::empty();
            roots.add(self_signed(vec![], -1, 1)).unwrap();
            roots
        };
        let verifier = CaServerVerifier {
            ca: CaSource::Trusted(Arc::new(ServerCa::new(roots_of_another, vec![]).unwrap())),
            check_name: true,
        };
        let result = verifier.verify_server_cert(
            &self_signed(vec![Eku::ServerAuth], -1, 1),
            &[],
            &ServerName::try_from("127.0.0.1").unwrap(),
            &[],
            UnixTime::now(),
        );
        assert!(
            matches!(
                result,
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer
                ))
            ),
            "{result:?}"
        );
    }

    #[test]
    fn a_ca_certificate_a_trusted_ca_issued_is_refused_as_such() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let mut leaf_params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        leaf_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let leaf = leaf_params
            .signed_by(&rcgen::KeyPair::generate().unwrap(), &issuer)
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let verifier = CaServerVerifier {
            ca: CaSource::Trusted(Arc::new(ServerCa::new(roots, vec![]).unwrap())),
            check_name: true,
        };
        let result = verifier.verify_server_cert(
            leaf.der(),
            &[],
            &ServerName::try_from("127.0.0.1").unwrap(),
            &[],
            UnixTime::now(),
        );
        match result {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(other))) => {
                assert!(ca_used_as_end_entity(&other), "{other:?}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_pinned_certificate_is_checked_as_go_checks_it() {
        let now = UnixTime::now();
        let local = ServerName::try_from("127.0.0.1").unwrap();
        let elsewhere = ServerName::try_from("wrong.example").unwrap();
        let both = self_signed(vec![Eku::ServerAuth, Eku::ClientAuth], -1, 1);
        for purpose in [
            ExtendedKeyPurpose::ServerAuth,
            ExtendedKeyPurpose::ClientAuth,
        ] {
            assert_eq!(check_pinned(&both, now, purpose, None), Ok(()));
        }
        assert_eq!(
            check_pinned(&both, now, ExtendedKeyPurpose::ServerAuth, Some(&local)),
            Ok(())
        );
        assert!(matches!(
            check_pinned(&both, now, ExtendedKeyPurpose::ServerAuth, Some(&elsewhere)),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            ))
        ));
        // No extended key usage: any purpose, as in Go.
        let unrestricted = self_signed(vec![], -1, 1);
        assert_eq!(
            check_pinned(&unrestricted, now, ExtendedKeyPurpose::ServerAuth, None),
            Ok(())
        );
        let client_only = self_signed(vec![Eku::ClientAuth], -1, 1);
        assert_eq!(
            check_pinned(&client_only, now, ExtendedKeyPurpose::ServerAuth, None),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::InvalidPurpose
            ))
        );
        let expired = self_signed(vec![], -3, -1);
        let error = check_pinned(&expired, now, ExtendedKeyPurpose::ServerAuth, None).unwrap_err();
        assert!(
            matches!(
                error,
                rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
            ),
            "{error}"
        );
        assert!(error.to_string().contains("expired"), "{error}");
        let early = self_signed(vec![], 1, 3);
        assert!(matches!(
            check_pinned(&early, now, ExtendedKeyPurpose::ServerAuth, None),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidYetContext { .. }
            ))
        ));
    }

    /// A TLS 1.3 handshake signature over `message` by the ECDSA P-256 key in `key_pem`.
    fn sign(message: &[u8], key_pem: &str) -> Vec<u8> {
        let key = super::super::parse_key(Path::new("k.pem"), key_pem.as_bytes()).unwrap();
        let key = super::super::provider()
            .key_provider
            .load_private_key(key)
            .unwrap();
        let signer = key
            .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])
            .unwrap();
        signer.sign(message).unwrap()
    }

    /// `signature` as a peer sends it, naming `scheme`.
    fn sent_as(scheme: SignatureScheme, signature: &[u8]) -> DigitallySignedStruct {
        use rustls::internal::msgs::codec::Codec;
        let mut wire = scheme.to_array().to_vec();
        wire.extend_from_slice(&u16::try_from(signature.len()).unwrap().to_be_bytes());
        wire.extend_from_slice(signature);
        DigitallySignedStruct::read_bytes(&wire).unwrap()
    }

    fn pem_cert(pem: &str) -> CertificateDer<'static> {
        super::super::parse_certs(Path::new("c.pem"), pem.as_bytes())
            .unwrap()
            .remove(0)
    }

    /// A v1 certificate's signature is checked against its own key: only the right message,
    /// signed by that key and sent with that key's scheme, passes.
    #[test]
    fn a_v1_certificate_signature_is_checked_against_its_key() {
        use super::super::tests::{V1_CERT, V1_KEY};
        use SignatureScheme::{ECDSA_NISTP256_SHA256 as P256, ECDSA_NISTP384_SHA384 as P384};
        let v1 = pem_cert(V1_CERT);
        let message = b"TLS 1.3, server CertificateVerify";
        let signature = sign(message, V1_KEY);
        let good = sent_as(P256, &signature);
        assert!(tls13_signature(message, &v1, &good).is_ok());

        let refused = |message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct| {
            assert!(
                tls13_signature(message, cert, dss).is_err(),
                "a bad signature was accepted"
            )
        };
        refused(b"another message", &v1, &good);
        let other = super::super::generate(None).unwrap();
        let by_other = sent_as(P256, &sign(message, &other.key_pem));
        refused(message, &v1, &by_other);
        for scheme in [
            P384,
            SignatureScheme::ED25519,
            SignatureScheme::RSA_PSS_SHA256,
        ] {
            refused(message, &v1, &sent_as(scheme, &signature));
        }
        let mut flipped = signature.clone();
        *flipped.last_mut().unwrap() ^= 1;
        refused(message, &v1, &sent_as(P256, &flipped));

        // A v3 certificate goes through WebPKI alone: its own key passes, the v1 key does not.
        let v3 = pem_cert(&other.cert_pem);
        assert!(tls13_signature(message, &v3, &by_other).is_ok());
        refused(message, &v3, &good);
    }
}
