//! TLS for every TLS transport and for SOCKS5's TLS methods (gost-wire.md §3).
//!
//! Servers take their certificate from the service's own `tls` section, else from the
//! process-wide default: the top-level `tls` section, `cert.pem` + `key.pem` in the working
//! directory, the certificate GOST keeps in `~/.gost`, or one generated on first use and kept
//! there, with GOST's profile. A `caFile` on a server requires client certificates. Certificate,
//! key and CA files, a client's too, are read again when they change on disk (`tls/reload.rs`).
//!
//! Clients keep GOST's defaults, so GOST users' command lines behave the same: the server is
//! verified only with `secure: true` (chain and name) or against a `caFile` (chain only). A
//! certificate that is itself in a `caFile` is taken as itself, after the checks Go makes
//! (`tls/verify.rs`). An unverified peer is logged as a warning once per node.

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use gost_api::TlsConfig;
use rustls::client::ResolvesClientCert;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::addr::{Address, Host};
use crate::conn::Conn;

mod options;
mod reload;
mod verify;

use options::Handshake;
pub use options::rule_out_tls13;
pub use reload::RELOAD_CHECK_INTERVAL;
use reload::Reloading;
use verify::{AnyServerCert, CaFileClientVerifier, CaServerVerifier};

/// Common name of a generated certificate, as GOST's.
pub const DEFAULT_COMMON_NAME: &str = "gost.run";
/// Organization of a generated certificate, as GOST's.
pub const DEFAULT_ORGANIZATION: &str = "GOST";
/// Validity of a generated certificate: GOST's one year.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(8760 * 3600);
/// How long a TLS handshake may take, on either side. Long enough for a slow link, short
/// enough that a silent peer does not hold a socket.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The one crypto provider: ring, which builds without cmake and serves P-256 and RSA.
///
/// Its cipher suites are ring's in the order Go (so GOST) uses: on processors with AES
/// instructions AES-128-GCM, then AES-256-GCM, then ChaCha20-Poly1305; on processors without
/// them (many ARM routers) ChaCha20-Poly1305 first, which is several times cheaper there. A
/// rustls server follows the client's order, so tunnels between two gost-rs processes, like
/// those from GOST clients, use AES-128-GCM, whose 10 rounds cost less CPU per byte than
/// AES-256's 14; a server without AES instructions picks ChaCha20 whenever the client offers
/// it, as Go's does ([`server_picks_suite`]).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(provider_for(aes_in_hardware())))
        .clone()
}

/// ring's provider with its suites ordered for a processor with or without AES instructions.
fn provider_for(aes_in_hardware: bool) -> CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|suite| {
        (
            suite.tls13().is_none(),
            suite_rank(suite.suite(), aes_in_hardware),
        )
    });
    provider
}

/// Whether this processor has the instructions that make AES-GCM fast (AES and carry-less
/// multiplication), as Go decides it.
fn aes_in_hardware() -> bool {
    #[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "x86", target_arch = "aarch64")))]
    {
        false
    }
}

/// Whether a server picks the suite by its own order instead of the client's: only where
/// the processor lacks AES instructions, so that ChaCha20 wins whenever the client offers it.
fn server_picks_suite() -> bool {
    !aes_in_hardware()
}

/// Where a cipher suite goes among those of its TLS version (1.3 comes first): AES-128-GCM,
/// then AES-256-GCM, then the rest (ChaCha20-Poly1305); without AES instructions ChaCha20
/// comes first. A stable sort keeps ring's order among equals.
fn suite_rank(suite: rustls::CipherSuite, aes_in_hardware: bool) -> u8 {
    use rustls::CipherSuite as S;
    let rank = match suite {
        S::TLS13_AES_128_GCM_SHA256
        | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 1,
        S::TLS13_AES_256_GCM_SHA384
        | S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 2,
        _ => 3,
    };
    match (aes_in_hardware, rank) {
        (false, 3) => 0,
        _ => rank,
    }
}

/// The process-wide default server certificate, from the top-level `tls` section. Nothing is
/// read or generated until a service needs it.
pub struct TlsDefaults {
    config: Option<TlsConfig>,
    cert: OnceLock<Result<Arc<CertResolver>, String>>,
    client_ca: OnceLock<Result<Option<Arc<CaFileClientVerifier>>, String>>,
}

impl TlsDefaults {
    /// Defaults from the top-level `tls` section, if any.
    pub fn new(config: Option<TlsConfig>) -> Self {
        TlsDefaults {
            config,
            cert: OnceLock::new(),
            client_ca: OnceLock::new(),
        }
    }

    /// Whether the default certificate comes from files the user put there: the top-level
    /// section's, or `cert.pem` and `key.pem` in the working directory (rather than the one
    /// GOST keeps in `~/.gost` or a generated one).
    fn names_cert(&self) -> bool {
        self.config
            .as_ref()
            .is_some_and(|c| c.cert_file.is_some() || c.key_file.is_some())
            || working_dir_pair()
    }

    fn cert(&self) -> Result<Arc<CertResolver>, String> {
        self.cert
            .get_or_init(|| default_cert(self.config.as_ref()).map(Arc::new))
            .clone()
    }

    fn client_ca(&self) -> Result<Option<Arc<CaFileClientVerifier>>, String> {
        self.client_ca
            .get_or_init(|| {
                self.config
                    .as_ref()
                    .and_then(|c| c.ca_file.as_deref())
                    .map(|ca| CaFileClientVerifier::new(ca).map(Arc::new))
                    .transpose()
            })
            .clone()
    }
}

/// A server-side TLS configuration for one service.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
    refusals: Arc<RefusalLog>,
    reset_secret: [u8; 32],
}

impl ServerTls {
    /// For the service `service`: its own `tls` section when it names a certificate, else the
    /// defaults; `alpn` in order of preference. Errors name the file and what is wrong with it.
    pub fn new(
        service: &str,
        own: Option<&TlsConfig>,
        defaults: &TlsDefaults,
        alpn: &[&[u8]],
    ) -> Result<Self, String> {
        let own_cert = match own.map(|t| (t.cert_file.as_deref(), t.key_file.as_deref())) {
            Some((Some(cert), Some(key))) => Some((cert, key)),
            None | Some((None, None)) => None,
            Some((Some(_), None)) => {
                return Err("certFile needs keyFile, which is missing".into());
            }
            Some((None, Some(_))) => {
                return Err("keyFile needs certFile, which is missing".into());
            }
        };
        // The service's own `caFile` requires client certificates signed by it, also when the
        // certificate is the default one (GOST then ignores it and takes any client).
        let own_ca = own
            .and_then(|t| t.ca_file.as_deref())
            .map(|ca| CaFileClientVerifier::new(ca).map(Arc::new))
            .transpose()?;
        let (resolver, client_ca) = match own_cert {
            Some((cert, key)) => (Arc::new(CertResolver::from_files(cert, key)?), own_ca),
            None => (
                defaults.cert()?,
                match own_ca {
                    Some(ca) => Some(ca),
                    None => defaults.client_ca()?,
                },
            ),
        };
        let handshake = Handshake::new(own.and_then(|t| t.options.as_ref()), provider(), alpn)?;
        let builder = ServerConfig::builder_with_provider(handshake.provider)
            .with_protocol_versions(&handshake.versions)
            .map_err(|e| e.to_string())?;
        let mutual = client_ca.is_some();
        let builder = match client_ca {
            Some(verifier) => builder.with_client_cert_verifier(verifier),
            None => builder.with_no_client_auth(),
        };
        let reset_secret = resolver.reset_secret;
        let resolver: Arc<dyn ResolvesServerCert> = match own.filter(|t| t.reject_unknown_sni) {
            Some(own) => Arc::new(SniGate {
                inner: resolver,
                allowed: own.server_names.clone(),
            }),
            None => resolver,
        };
        let mut config = builder.with_cert_resolver(resolver);
        if mutual {
            // A resumed session skips the client certificate's check: a client whose CA was
            // rotated out, or whose certificate expired, would go on resuming. Every client
            // of a mutual-TLS service shows its certificate in a full handshake.
            config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
        }
        config.ignore_client_order = server_picks_suite();
        config.alpn_protocols = handshake.alpn;
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            refusals: Arc::new(RefusalLog::new(service)),
            reset_secret,
        })
    }

    /// A secret derived from the certificate's private key as it was when this configuration
    /// was made, the same after a restart with that key: the `h3` server's QUIC
    /// stateless-reset key.
    pub fn reset_secret(&self) -> [u8; 32] {
        self.reset_secret
    }

    /// The rustls configuration, for servers that drive TLS themselves.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.acceptor.config().clone()
    }

    /// Runs the server side of a handshake with `client` on `conn`, within
    /// [`HANDSHAKE_TIMEOUT`]. A refused client certificate is logged here ([`RefusalLog`]);
    /// other failures are the caller's to log.
    pub async fn accept<C: Conn>(
        &self,
        conn: C,
        client: SocketAddr,
    ) -> io::Result<tokio_rustls::server::TlsStream<C>> {
        // Boxed: the handshake's state (a rustls connection) is large, and a connection's
        // task would otherwise keep room for it for as long as the connection lives.
        let accepted = Box::pin(within(HANDSHAKE_TIMEOUT, self.acceptor.accept(conn))).await;
        if let Err(e) = &accepted
            && refused_client_certificate(e)
        {
            self.refusals.note(client, e);
        }
        accepted
    }

    /// Notes a handshake this server ended by sending the TLS alert `alert` to `client`, for
    /// transports that drive TLS themselves (QUIC): an alert a server sends only when it
    /// refuses the client's certificate is logged as [`ServerTls::accept`] logs it.
    pub fn note_alert_sent(&self, client: SocketAddr, alert: u8, reason: &str) {
        use rustls::AlertDescription as A;
        let refusals = [
            A::BadCertificate,
            A::UnsupportedCertificate,
            A::CertificateRevoked,
            A::CertificateExpired,
            A::CertificateUnknown,
            A::UnknownCA,
            A::CertificateRequired,
        ];
        if refusals.into_iter().any(|a| u8::from(a) == alert) {
            self.refusals.note(client, &reason);
        }
    }
}

/// How many client addresses a service logs refused client certificates for, per
/// [`REFUSAL_LOG_WINDOW`].
pub const REFUSALS_LOGGED_PER_WINDOW: usize = 16;
/// The window in which a client address is logged once.
pub const REFUSAL_LOG_WINDOW: Duration = Duration::from_secs(60);

/// Refused client certificates, logged at WARN: on a mutual-TLS service they mostly mean a
/// misconfiguration someone must see at the default level (an expired client certificate, a
/// rotated CA, a client without `certFile`). Once per client address per
/// [`REFUSAL_LOG_WINDOW`], so a client retrying in a loop does not flood the log, and for at
/// most [`REFUSALS_LOGGED_PER_WINDOW`] addresses in it, so a scan from many addresses does not
/// either (and the table stays that small); the refusals left out are counted in the next
/// line.
struct RefusalLog {
    service: String,
    window: Mutex<RefusalWindow>,
}

struct RefusalWindow {
    started: Instant,
    logged: HashSet<IpAddr>,
    not_logged: u64,
}

impl RefusalLog {
    fn new(service: &str) -> Self {
        RefusalLog {
            service: service.to_string(),
            window: Mutex::new(RefusalWindow {
                started: Instant::now(),
                logged: HashSet::new(),
                not_logged: 0,
            }),
        }
    }

    fn note(&self, client: SocketAddr, error: &dyn fmt::Display) {
        let not_logged = {
            let Ok(mut window) = self.window.lock() else {
                return;
            };
            if window.started.elapsed() >= REFUSAL_LOG_WINDOW {
                window.started = Instant::now();
                window.logged.clear();
            }
            if window.logged.contains(&client.ip())
                || window.logged.len() >= REFUSALS_LOGGED_PER_WINDOW
            {
                window.not_logged += 1;
                return;
            }
            window.logged.insert(client.ip());
            std::mem::take(&mut window.not_logged)
        };
        tracing::warn!(
            service = %self.service, client = %client, error = %error,
            refusals_not_logged_before = not_logged,
            "TLS client certificate refused (logged once per client address a minute)"
        );
    }
}

/// The rustls error inside a handshake's I/O error, if that is what it is (explained by
/// [`NotTls`] or not).
fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    let inner = e.get_ref()?;
    inner
        .downcast_ref::<rustls::Error>()
        .or_else(|| inner.downcast_ref::<NotTls>().map(|n| &n.0))
}

/// A client's handshake with a server that answered with something other than TLS: a
/// listener without TLS (`ws` for `wss`, `pht` for `phts`, ...). rustls says only "received
/// corrupt message of type InvalidContentType"; Go's client (GOST) "first record does not
/// look like a TLS handshake".
#[derive(Debug)]
struct NotTls(rustls::Error);

impl fmt::Display for NotTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TLS handshake failed: the server did not answer in TLS (a listener without TLS?): {}",
            self.0
        )
    }
}

impl std::error::Error for NotTls {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// A client's handshake error, with [`NotTls`] for a server that does not speak TLS.
fn explain_not_tls(error: io::Error) -> io::Error {
    match rustls_error(&error) {
        Some(e @ rustls::Error::InvalidMessage(_)) => {
            io::Error::new(error.kind(), NotTls(e.clone()))
        }
        _ => error,
    }
}

/// `error` without the explanation of [`NotTls`], for callers that give their own.
pub fn unexplained(error: io::Error) -> io::Error {
    match error.get_ref().and_then(|e| e.downcast_ref::<NotTls>()) {
        Some(NotTls(e)) => io::Error::new(error.kind(), e.clone()),
        None => error,
    }
}

/// Whether a server's handshake failed on the client's certificate: none sent, or one the
/// verifier refused.
fn refused_client_certificate(e: &io::Error) -> bool {
    matches!(
        rustls_error(e),
        Some(rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_))
    )
}

/// Whether a handshake failed because the peer does not speak TLS at all: bytes that are not
/// TLS records (an HTTP/2 server's GOAWAY, an HTTP answer), or a peer that closed or reset the
/// connection without one. A certificate refusal or a TLS alert is not that.
pub fn peer_not_speaking_tls(e: &io::Error) -> bool {
    match rustls_error(e) {
        Some(rustls::Error::InvalidMessage(_)) => true,
        Some(_) => false,
        None => matches!(
            e.kind(),
            io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
        ),
    }
}

/// A server-side TLS configuration made when it is first needed: the SOCKS5 handler's, which
/// only clients offering GOST's TLS methods (0x80, 0x82) use. A proxy that never meets one
/// neither reads nor generates a certificate for it. A certificate named in the service's own
/// `tls` section or the top-level one, or left as `cert.pem` and `key.pem` in the working
/// directory, is still loaded at once, so that a broken file fails the configuration, not a
/// client.
pub struct LazyServerTls {
    service: String,
    made: OnceLock<Result<ServerTls, String>>,
    own: Option<TlsConfig>,
    defaults: Arc<TlsDefaults>,
}

impl LazyServerTls {
    /// As [`ServerTls::new`] without ALPN, made now when a certificate is named, else on the
    /// first [`LazyServerTls::get`].
    pub fn new(
        service: &str,
        own: Option<&TlsConfig>,
        defaults: &Arc<TlsDefaults>,
    ) -> Result<Self, String> {
        let lazy = LazyServerTls {
            service: service.to_string(),
            made: OnceLock::new(),
            own: own.cloned(),
            defaults: defaults.clone(),
        };
        // Its `options` are checked now, as everywhere else: a typo must fail the
        // configuration, not the first client that offers a TLS method.
        if let Some(options) = own.and_then(|t| t.options.as_ref()) {
            Handshake::new(Some(options), provider(), &[])?;
        }
        let named = own.is_some_and(|t| t.cert_file.is_some() || t.key_file.is_some());
        if named || defaults.names_cert() {
            lazy.get()?;
        }
        Ok(lazy)
    }

    /// The configuration, made on the first call; an error is logged once, kept and returned
    /// again.
    pub fn get(&self) -> Result<&ServerTls, String> {
        self.made
            .get_or_init(|| {
                let made = ServerTls::new(&self.service, self.own.as_ref(), &self.defaults, &[]);
                if let Err(e) = &made {
                    tracing::warn!(error = %e, "no certificate for SOCKS5's TLS methods");
                }
                made
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Whether the configuration has been made (or failed to be).
    pub fn is_made(&self) -> bool {
        self.made.get().is_some()
    }
}

/// A client-side TLS configuration for one node.
pub struct ClientTls {
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
    verified: bool,
    /// Whether this node's entry in [`WARNED_UNVERIFIED`] is made: later dials skip the lock.
    noted_unverified: AtomicBool,
}

/// The nodes (address and server name) whose unverified certificate has been warned about:
/// once per node for the life of the process, not per [`ClientTls`], which every reload that
/// rebuilds a chain makes anew. Only unverified nodes of the configuration get here (a
/// target is never dialled with an unverified `ClientTls`), so the set stays small.
static WARNED_UNVERIFIED: std::sync::LazyLock<Mutex<HashSet<(String, String)>>> =
    std::sync::LazyLock::new(Default::default);

impl ClientTls {
    /// From the node's `tls` section (GOST's defaults when absent); `alpn` in order of
    /// preference.
    pub fn new(tls: Option<&TlsConfig>, alpn: &[&[u8]]) -> Result<Self, String> {
        let default = TlsConfig::default();
        let tls = tls.unwrap_or(&default);
        let verifier: Arc<dyn ServerCertVerifier> = match (tls.ca_file.as_deref(), tls.secure) {
            (Some(ca), secure) => Arc::new(CaServerVerifier::from_file(ca, secure)?),
            (None, true) => Arc::new(CaServerVerifier::trusted()?),
            (None, false) => Arc::new(AnyServerCert),
        };
        let handshake = Handshake::new(tls.options.as_ref(), provider(), alpn)?;
        let builder = ClientConfig::builder_with_provider(handshake.provider)
            .with_protocol_versions(&handshake.versions)
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match (tls.cert_file.as_deref(), tls.key_file.as_deref()) {
            (Some(cert), Some(key)) => builder.with_client_cert_resolver(Arc::new(
                ClientCertResolver(reloading_pair("TLS client certificate", cert, key)?),
            )),
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("certFile and keyFile must be given together".into()),
        };
        config.alpn_protocols = handshake.alpn;
        let server_name = tls
            .server_name
            .as_deref()
            .filter(|n| !n.is_empty())
            .map(|name| {
                ServerName::try_from(name.to_string())
                    .map_err(|_| format!("serverName {name:?} is not a DNS name or IP address"))
            })
            .transpose()?;
        Ok(ClientTls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
            verified: tls.secure || tls.ca_file.is_some(),
            noted_unverified: AtomicBool::new(false),
        })
    }

    /// Runs the client side of a handshake with the node at `addr` over `conn`, within
    /// [`HANDSHAKE_TIMEOUT`]. SNI is `serverName`, else the node's host.
    pub async fn connect<C: Conn>(
        &self,
        conn: C,
        addr: &Address,
    ) -> io::Result<tokio_rustls::client::TlsStream<C>> {
        let name = self.server_name(addr)?;
        within(HANDSHAKE_TIMEOUT, self.connector.connect(name, conn))
            .await
            .map_err(|e| explain_not_tls(explain_untrusted(e)))
    }

    /// The rustls configuration, for clients that drive TLS themselves (QUIC).
    pub fn config(&self) -> Arc<ClientConfig> {
        self.connector.config().clone()
    }

    /// The name a handshake with the node at `addr` sends and verifies: `serverName`, else
    /// the node's host. Warns once per node and name when the certificate will not be
    /// verified.
    pub fn server_name(&self, addr: &Address) -> io::Result<ServerName<'static>> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => match &addr.host {
                Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
                Host::Domain(d) => ServerName::try_from(d.clone()).map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{d:?} cannot be sent as a TLS server name"),
                    )
                })?,
            },
        };
        if !self.verified
            && !self.noted_unverified.swap(true, Ordering::Relaxed)
            && WARNED_UNVERIFIED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((addr.to_string(), name.to_str().into_owned()))
        {
            tracing::warn!(
                peer = %addr,
                "TLS server certificate not verified (set secure: true or caFile to verify it)"
            );
        }
        Ok(name)
    }
}

/// A handshake error for a server certificate no trusted CA issued, in words a user can act
/// on (rustls says only `UnknownIssuer`); other errors as they are.
pub fn explain_untrusted(error: io::Error) -> io::Error {
    let explanation = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(untrusted_explanation);
    match explanation {
        Some(explanation) => io::Error::new(error.kind(), explanation),
        None => error,
    }
}

/// What [`explain_untrusted`] says for a QUIC handshake (HTTP/3), where quinn passes rustls's
/// error on as text only: the reason of the connection's close, when it is one of those.
pub fn explain_untrusted_quic(reason: &str) -> Option<&'static str> {
    use rustls::CertificateError;
    let unknown_issuer =
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer).to_string();
    if reason == unknown_issuer {
        return untrusted_explanation(&rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ));
    }
    (reason.starts_with("invalid peer certificate") && reason.contains("CaUsedAsEndEntity"))
        .then_some(CA_AS_SERVER_CERTIFICATE)
}

const CA_AS_SERVER_CERTIFICATE: &str = "the server's certificate is a CA certificate, which \
     this client takes as a server's own only when that certificate itself is in caFile: put \
     it there";

fn untrusted_explanation(error: &rustls::Error) -> Option<&'static str> {
    use rustls::CertificateError;
    match error {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => Some(
            "the server's certificate is signed by an unknown authority: no CA this client \
             trusts issued it (a self-signed certificate, such as a GOST server's own, is one); \
             give its CA, or the certificate itself, with caFile",
        ),
        rustls::Error::InvalidCertificate(CertificateError::Other(other))
            if verify::ca_used_as_end_entity(other) =>
        {
            Some(CA_AS_SERVER_CERTIFICATE)
        }
        _ => None,
    }
}

async fn within<T>(
    limit: Duration,
    handshake: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(limit, handshake)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("TLS handshake took longer than {limit:?}"),
            ))
        })
}

// --- server certificates -------------------------------------------------------------------

/// Serves one certificate, re-read from its files when they change on disk ([`Reloading`]).
/// A file that is mid-rewrite or broken leaves the last good certificate in place (and is
/// logged once).
pub struct CertResolver {
    source: CertSource,
    /// A secret derived from the private key the resolver started with ([`reset_secret`]).
    reset_secret: [u8; 32],
}

enum CertSource {
    Files(Reloading<CertifiedKey>),
    Fixed(Arc<CertifiedKey>),
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            CertSource::Files(files) => f.debug_tuple("CertResolver").field(files).finish(),
            CertSource::Fixed(_) => f.write_str("CertResolver(fixed)"),
        }
    }
}

impl CertResolver {
    /// A certificate chain and key from PEM files, watched for changes.
    pub fn from_files(cert: &str, key: &str) -> Result<Self, String> {
        let source = CertSource::Files(reloading_pair("TLS certificate", cert, key)?);
        let key_path = Path::new(key);
        let key_der = parse_key(key_path, &read(key_path)?)?;
        Ok(CertResolver {
            source,
            reset_secret: reset_secret(key_der.secret_der()),
        })
    }

    fn fixed(certified: CertifiedKey, key_der: &[u8]) -> Self {
        CertResolver {
            source: CertSource::Fixed(Arc::new(certified)),
            reset_secret: reset_secret(key_der),
        }
    }

    fn current(&self) -> Arc<CertifiedKey> {
        match &self.source {
            CertSource::Files(files) => files.current(),
            CertSource::Fixed(certified) => certified.clone(),
        }
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// GOST's `rejectUnknownSNI`: a handshake without a server name, or, when `serverNames` are
/// given, with another one, gets no certificate and fails, so that a prober learns nothing of
/// the service from it.
#[derive(Debug)]
struct SniGate {
    inner: Arc<CertResolver>,
    /// `serverNames`; empty: any name.
    allowed: Vec<String>,
}

impl ResolvesServerCert for SniGate {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name();
        let known = name.is_some_and(|name| {
            self.allowed.is_empty() || self.allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
        });
        if !known {
            tracing::debug!(
                sni = name.unwrap_or(""),
                "TLS handshake refused: unknown server name (rejectUnknownSNI)"
            );
            return None;
        }
        self.inner.resolve(hello)
    }
}

/// A client's certificate, re-read from its files when they change on disk, as a server's
/// ([`CertResolver`]).
#[derive(Debug)]
struct ClientCertResolver(Reloading<CertifiedKey>);

impl ResolvesClientCert for ClientCertResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A certificate and its key from the PEM files `cert` and `key`, re-read when they change.
fn reloading_pair(
    what: &'static str,
    cert: &str,
    key: &str,
) -> Result<Reloading<CertifiedKey>, String> {
    Reloading::new(
        what,
        vec![PathBuf::from(cert), PathBuf::from(key)],
        |files| match files {
            [(cert, cert_pem), (key, key_pem)] => certified_key(cert, cert_pem, key, key_pem),
            _ => unreachable!("two files: certificate and key"),
        },
    )
}

/// The certificates of a PEM file; none is an error.
fn parse_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM certificate in the file",
            path.display()
        ));
    }
    Ok(certs)
}

/// The private key of a PEM file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC), unencrypted.
fn parse_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    if let Some(how) = encrypted_key(pem) {
        return Err(format!(
            "{}: the private key is encrypted ({how}), which is not supported (GOST does not \
             read such keys either); write it unencrypted, e.g. `openssl pkey -in {} -out KEY`, \
             and name that file",
            path.display(),
            path.display()
        ));
    }
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| format!("{}: not a PEM private key: {e}", path.display()))
}

/// How a PEM private key is encrypted, if it is: PKCS#8's `ENCRYPTED PRIVATE KEY`, or the
/// legacy OpenSSL header on a PKCS#1 or SEC1 key.
fn encrypted_key(pem: &[u8]) -> Option<&'static str> {
    let has = |needle: &[u8]| pem.windows(needle.len()).any(|w| w == needle);
    if has(b"-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        Some("PKCS#8 ENCRYPTED PRIVATE KEY")
    } else if has(b"Proc-Type: 4,ENCRYPTED") {
        Some("Proc-Type: 4,ENCRYPTED")
    } else {
        None
    }
}

fn certified_key(
    cert: &Path,
    cert_pem: &[u8],
    key: &Path,
    key_pem: &[u8],
) -> Result<CertifiedKey, String> {
    let chain = parse_certs(cert, cert_pem)?;
    let key_der = parse_key(key, key_pem)?;
    let unusable = |e: &dyn fmt::Display| {
        format!(
            "{} and {} do not make a usable certificate: {e}",
            cert.display(),
            key.display()
        )
    };
    let signing_key = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| unusable(&e))?;
    // The key is matched against the certificate here rather than by rustls, whose check parses
    // the certificate with WebPKI and so refuses X.509 v1 certificates (`openssl x509 -req`
    // without extensions before OpenSSL 3.2), which Go, so GOST, serves.
    let (_, leaf) = x509_parser::parse_x509_certificate(chain[0].as_ref()).map_err(|e| {
        format!(
            "{}: cannot parse the first certificate: {e}",
            cert.display()
        )
    })?;
    if let Some(public_key) = signing_key.public_key()
        && public_key.as_ref() != leaf.tbs_certificate.subject_pki.raw
    {
        return Err(unusable(
            &"the private key does not match the certificate's public key",
        ));
    }
    Ok(CertifiedKey::new(chain, signing_key))
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// The certificate and key GOST takes from the working directory when no file is named.
const WORKING_DIR_CERT: &str = "cert.pem";
const WORKING_DIR_KEY: &str = "key.pem";

/// Whether the working directory holds GOST's `cert.pem` + `key.pem` pair.
fn working_dir_pair() -> bool {
    Path::new(WORKING_DIR_CERT).is_file() && Path::new(WORKING_DIR_KEY).is_file()
}

/// Where GOST keeps its generated certificate: `$HOME/.gost`, else (HOME unset or empty, where
/// Go's `os.UserHomeDir` fails) `.gost` in the working directory.
fn generated_cert_dir() -> PathBuf {
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join(".gost"),
        None => PathBuf::from(".gost"),
    }
}

/// GOST's order (§3.1): the top-level section's files, `cert.pem` + `key.pem` in the working
/// directory, `auto-ca-*.pem` in [`generated_cert_dir`], else a new certificate persisted there.
fn default_cert(config: Option<&TlsConfig>) -> Result<CertResolver, String> {
    if let Some(tls) = config {
        match (tls.cert_file.as_deref(), tls.key_file.as_deref()) {
            (Some(cert), Some(key)) => return CertResolver::from_files(cert, key),
            (None, None) => {}
            _ => return Err("tls: certFile and keyFile must be given together".into()),
        }
    }
    if working_dir_pair() {
        return CertResolver::from_files(WORKING_DIR_CERT, WORKING_DIR_KEY);
    }
    let dir = generated_cert_dir();
    let (cert, key) = (dir.join("auto-ca-cert.pem"), dir.join("auto-ca-key.pem"));
    if cert.is_file() && key.is_file() {
        match read(&cert)
            .and_then(|c| Ok((c, read(&key)?)))
            .and_then(|(c, k)| Ok((certified_key(&cert, &c, &key, &k)?, parse_key(&key, &k)?)))
        {
            Ok((certified, key_der)) => {
                return Ok(CertResolver::fixed(certified, key_der.secret_der()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "ignoring the stored certificate; generating a new one")
            }
        }
    }
    let generated = generate(config)?;
    // Shown as an absolute path: without HOME the directory is relative to the working one.
    let shown = std::path::absolute(&dir).unwrap_or_else(|_| dir.clone());
    match persist(&dir, &generated) {
        Ok(()) => tracing::info!(
            dir = %shown.display(),
            home = std::env::var_os("HOME").is_some_and(|h| !h.is_empty()),
            "generated TLS certificate saved; later starts serve it again"
        ),
        Err(e) => tracing::warn!(
            dir = %shown.display(), error = %e,
            "generated TLS certificate not saved; the next start generates another one"
        ),
    }
    let certified = CertifiedKey::from_der(
        vec![CertificateDer::from(generated.cert_der.clone())],
        PrivateKeyDer::try_from(generated.key_der.clone()).map_err(|e| e.to_string())?,
        &provider(),
    )
    .map_err(|e| e.to_string())?;
    tracing::info!(
        common_name = %generated.common_name,
        "serving a generated self-signed TLS certificate"
    );
    Ok(CertResolver::fixed(certified, &generated.key_der))
}

/// A secret only the holder of the private key `key_der` (DER) can derive, the same at every
/// start with that key: HMAC-SHA256 keyed with the private key over a fixed label. The `h3`
/// server derives its QUIC stateless-reset key from it, with its host name and address
/// (`h3::instance_secret`), so that a server restarted there with the same certificate (a
/// killed process, a restarted container) can tell clients that their connections to the one
/// before it are gone: they re-dial at once instead of waiting out their idle timeout (GOST's
/// is 30 s).
fn reset_secret(key_der: &[u8]) -> [u8; 32] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key_der);
    let tag = ring::hmac::sign(&key, b"gost-rs QUIC stateless reset key v1");
    let mut secret = [0u8; 32];
    secret.copy_from_slice(tag.as_ref());
    secret
}

/// A freshly generated certificate, in DER and PEM.
pub struct Generated {
    /// Subject common name.
    pub common_name: String,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// The PKCS#8 private key, DER.
    pub key_der: Vec<u8>,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM (`PRIVATE KEY`).
    pub key_pem: String,
}

/// GOST's profile (§3.1): ECDSA P-256, self-signed, a CA certificate used as its own leaf,
/// digital signature + certificate signing, server and client authentication, a random
/// 128-bit serial, SAN = the common name. rustls serves it as it is.
pub fn generate(config: Option<&TlsConfig>) -> Result<Generated, String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose, SerialNumber,
    };
    let common_name = config
        .and_then(|t| t.common_name.clone())
        .unwrap_or_else(|| DEFAULT_COMMON_NAME.to_string());
    let organization = config
        .and_then(|t| t.organization.clone())
        .unwrap_or_else(|| DEFAULT_ORGANIZATION.to_string());
    let validity = match config.and_then(|t| t.validity.as_deref()) {
        Some(text) => gost_api::metadata::parse_go_duration(text)
            .map_err(|e| format!("tls.validity: {e}"))?
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_VALIDITY),
        None => DEFAULT_VALIDITY,
    };
    let mut params = CertificateParams::new(vec![common_name.clone()])
        .map_err(|e| format!("tls.commonName {common_name:?}: {e}"))?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name.clone());
    params
        .distinguished_name
        .push(DnType::OrganizationName, organization);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let mut serial = [0u8; 16];
    provider()
        .secure_random
        .fill(&mut serial)
        .map_err(|_| "no randomness for a certificate serial".to_string())?;
    serial[0] &= 0x7f; // a positive DER integer
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now;
    params.not_after = now + validity;
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok(Generated {
        common_name,
        cert_der: cert.der().to_vec(),
        key_der: key.serialize_der(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Writes the generated certificate where GOST keeps it: directory 0700, certificate 0644,
/// key 0600.
fn persist(dir: &Path, generated: &Generated) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let write = |name: &str, mode: u32, text: &str| {
        let path = dir.join(name);
        // A name of this process's own: gost processes started together may all generate.
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        io::Write::write_all(&mut file, text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, &path)
    };
    write("auto-ca-key.pem", 0o600, &generated.key_pem)?;
    write("auto-ca-cert.pem", 0o644, &generated.cert_pem)
}

impl<C: Conn> Conn for tokio_rustls::server::TlsStream<C> {}
impl<C: Conn> Conn for tokio_rustls::client::TlsStream<C> {}

/// A TLS stream whose rustls holds no more encrypted bytes waiting for the socket than the
/// connection's pace ([`crate::tcpinfo::Pace`]) allows, 64 KiB (rustls's default) at the most.
/// Behind uploads on a slow link, what rustls holds is one more queue that a new tunnel's
/// request waits behind, besides the socket's unsent bytes and the HTTP/2 frames in turn.
pub struct Paced<S> {
    inner: S,
    pace: crate::tcpinfo::Pace,
    // The limit set on rustls's buffer.
    limit: usize,
}

/// rustls's own limit on its buffer of unsent records, and the most a [`Paced`] one gets.
const TLS_BUFFER_LIMIT: usize = 64 * 1024;

/// A TLS stream whose rustls buffer limit can be set.
pub trait TlsBuffer {
    fn set_buffer_limit(&mut self, limit: usize);
}

impl<C> TlsBuffer for tokio_rustls::server::TlsStream<C> {
    fn set_buffer_limit(&mut self, limit: usize) {
        self.get_mut().1.set_buffer_limit(Some(limit));
    }
}

impl<C> TlsBuffer for tokio_rustls::client::TlsStream<C> {
    fn set_buffer_limit(&mut self, limit: usize) {
        self.get_mut().1.set_buffer_limit(Some(limit));
    }
}

impl<S> Paced<S> {
    pub fn new(inner: S, pace: crate::tcpinfo::Pace) -> Self {
        Paced {
            inner,
            pace,
            limit: TLS_BUFFER_LIMIT,
        }
    }
}

impl<S: TlsBuffer> Paced<S> {
    /// Follows the pace before a write.
    fn fit(&mut self) {
        let limit = self.pace.chunk().min(TLS_BUFFER_LIMIT);
        if limit != self.limit {
            self.limit = limit;
            self.inner.set_buffer_limit(limit);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Paced<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + TlsBuffer + Unpin> AsyncWrite for Paced<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.fit();
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.fit();
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: Conn + TlsBuffer> Conn for Paced<S> {}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own under the system temporary directory, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("gost-tls-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A generated certificate and key, written to `cert{suffix}.pem` and `key{suffix}.pem`
    /// in `dir`.
    fn generated_files(dir: &Dir, suffix: &str) -> (Generated, PathBuf, PathBuf) {
        let generated = generate(None).unwrap();
        let cert = dir.0.join(format!("cert{suffix}.pem"));
        let key = dir.0.join(format!("key{suffix}.pem"));
        fs::write(&cert, &generated.cert_pem).unwrap();
        fs::write(&key, &generated.key_pem).unwrap();
        (generated, cert, key)
    }

    /// A server with the certificate and key in these files.
    fn served_from(cert: &Path, key: &Path) -> ServerTls {
        ServerTls::new(
            "test",
            Some(&named(cert, key)),
            &TlsDefaults::new(None),
            &[],
        )
        .unwrap()
    }

    fn named(cert: &Path, key: &Path) -> TlsConfig {
        TlsConfig {
            cert_file: Some(cert.to_str().unwrap().to_string()),
            key_file: Some(key.to_str().unwrap().to_string()),
            ..TlsConfig::default()
        }
    }

    /// The QUIC reset secret depends on the private key only: the same for a generated
    /// certificate and for it read back from its files (a restart), different for another key.
    #[test]
    fn the_reset_secret_follows_the_private_key() {
        let dir = Dir::new("reset");
        let (generated, cert, key) = generated_files(&dir, "");
        let from_files = |cert: &Path, key: &Path| {
            CertResolver::from_files(cert.to_str().unwrap(), key.to_str().unwrap())
                .unwrap()
                .reset_secret
        };
        let first = from_files(&cert, &key);
        assert_eq!(first, reset_secret(&generated.key_der));
        assert_eq!(first, from_files(&cert, &key));
        let (_, cert2, key2) = generated_files(&dir, "2");
        assert_ne!(first, from_files(&cert2, &key2));
        let server = served_from(&cert, &key);
        assert_eq!(server.reset_secret(), first);
    }

    /// A server and a client TLS stream over an in-memory socket that holds `socket` bytes.
    async fn tls_pair(
        name: &str,
        socket: usize,
    ) -> (
        tokio_rustls::server::TlsStream<tokio::io::DuplexStream>,
        tokio_rustls::client::TlsStream<tokio::io::DuplexStream>,
    ) {
        let dir = Dir::new(name);
        let (_, cert, key) = generated_files(&dir, "");
        let server = served_from(&cert, &key);
        let client = ClientTls::new(None, &[]).unwrap();
        let (near, far) = tokio::io::duplex(socket);
        let addr = Address::parse("127.0.0.1:443").unwrap();
        let (accepted, connected) = tokio::join!(
            server.accept(far, "127.0.0.1:1".parse().unwrap()),
            client.connect(near, &addr)
        );
        (accepted.unwrap(), connected.unwrap())
    }

    /// Writes to `stream` until it takes no more without waiting; how much it took.
    fn fill<S: AsyncWrite + TlsBuffer + Unpin>(stream: &mut Paced<S>) -> usize {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let block = [1u8; 4096];
        let mut taken = 0;
        for _ in 0..1000 {
            match Pin::new(&mut *stream).poll_write(&mut cx, &block) {
                Poll::Ready(Ok(n)) => taken += n,
                Poll::Ready(Err(e)) => panic!("{e}"),
                Poll::Pending => break,
            }
        }
        taken
    }

    /// Behind a full socket, a paced stream's rustls takes no more than the pace, an unpaced
    /// one up to rustls's own 64 KiB: a request written next waits behind that much.
    #[tokio::test]
    async fn a_paced_stream_holds_no_more_than_its_pace_behind_a_full_socket() {
        let socket = 8 * 1024;
        for (pace, least, most) in [
            (
                crate::tcpinfo::Pace::fixed(16 * 1024),
                1,
                socket + 16 * 1024,
            ),
            (
                crate::tcpinfo::Pace::unbounded(),
                socket + 56 * 1024,
                usize::MAX,
            ),
        ] {
            // The server never reads: the socket fills.
            let (_server, client) = tls_pair("paced", socket).await;
            let taken = fill(&mut Paced::new(client, pace.clone()));
            assert!(
                (least..=most).contains(&taken),
                "{pace:?}: {taken} bytes taken"
            );
        }
    }

    /// A pace that drops below what rustls already holds: the writer waits (no spin, no
    /// error) until the socket took it, then goes on within the new pace.
    #[tokio::test]
    async fn a_pace_dropping_below_what_rustls_holds_makes_the_writer_wait() {
        use tokio::io::AsyncReadExt;
        let socket = 8 * 1024;
        let (mut server, client) = tls_pair("paced-drop", socket).await;
        let pace = crate::tcpinfo::Pace::fixed(64 * 1024);
        let mut stream = Paced::new(client, pace.clone());
        let first = fill(&mut stream);
        assert!(first >= socket + 56 * 1024, "{first} bytes taken");
        pace.set(16 * 1024);
        assert_eq!(fill(&mut stream), 0, "more taken than the new pace allows");
        // The server reads what was written; the writer pushes rustls's records on as it goes.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut read = 0;
        let mut buf = vec![0u8; 64 * 1024];
        for _ in 0..1000 {
            if read == first {
                break;
            }
            let _ = Pin::new(&mut stream).poll_flush(&mut cx);
            let n = tokio::time::timeout(Duration::from_secs(5), server.read(&mut buf))
                .await
                .expect("the server gets the records")
                .unwrap();
            read += n;
        }
        assert_eq!(read, first);
        let next = fill(&mut stream);
        assert!(next > 0 && next <= socket + 16 * 1024, "{next} bytes taken");
    }

    /// The suite a gost-rs client and server agree on: AES-128-GCM, as with Go (GOST) peers.
    #[tokio::test]
    async fn gost_peers_agree_on_aes_128_gcm() {
        let dir = Dir::new("suite");
        let (_, cert, key) = generated_files(&dir, "");
        let server = served_from(&cert, &key);
        let client = ClientTls::new(None, &[]).unwrap();
        let (near, far) = tokio::io::duplex(64 * 1024);
        let addr = Address::parse("127.0.0.1:443").unwrap();
        let (accepted, connected) = tokio::join!(
            server.accept(far, "127.0.0.1:1".parse().unwrap()),
            client.connect(near, &addr)
        );
        let (accepted, connected) = (accepted.unwrap(), connected.unwrap());
        let expected = if aes_in_hardware() {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        } else {
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        };
        for suite in [
            accepted.get_ref().1.negotiated_cipher_suite(),
            connected.get_ref().1.negotiated_cipher_suite(),
        ] {
            assert_eq!(suite.map(|s| s.suite()), Some(expected));
        }
        // Every suite of ring's stays on offer.
        assert_eq!(
            provider().cipher_suites.len(),
            rustls::crypto::ring::default_provider().cipher_suites.len()
        );
    }

    #[test]
    fn suites_follow_gos_order_with_and_without_aes_instructions() {
        let first = |aes| {
            let provider = provider_for(aes);
            let suites: Vec<_> = provider.cipher_suites.iter().map(|s| s.suite()).collect();
            assert_eq!(
                suites.len(),
                9,
                "every suite of ring's stays on offer: {suites:?}"
            );
            suites[..3].to_vec()
        };
        use rustls::CipherSuite as S;
        assert_eq!(
            first(true),
            [
                S::TLS13_AES_128_GCM_SHA256,
                S::TLS13_AES_256_GCM_SHA384,
                S::TLS13_CHACHA20_POLY1305_SHA256
            ]
        );
        assert_eq!(
            first(false),
            [
                S::TLS13_CHACHA20_POLY1305_SHA256,
                S::TLS13_AES_128_GCM_SHA256,
                S::TLS13_AES_256_GCM_SHA384
            ]
        );
        // This test machine's answer decides the running process's order.
        assert_eq!(
            provider().cipher_suites[0].suite() == S::TLS13_AES_128_GCM_SHA256,
            aes_in_hardware()
        );
    }

    #[tokio::test]
    async fn a_server_without_aes_instructions_picks_chacha20_from_an_aes_first_client() {
        let dir = Dir::new("chacha");
        let (_, cert, key) = generated_files(&dir, "");
        // The server as `ServerTls::new` makes it on such a processor.
        let mut config = ServerConfig::builder_with_provider(Arc::new(provider_for(false)))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(
                CertResolver::from_files(cert.to_str().unwrap(), key.to_str().unwrap()).unwrap(),
            ));
        config.ignore_client_order = true;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let client = ClientTls::new(None, &[]).unwrap();
        let (near, far) = tokio::io::duplex(64 * 1024);
        let addr = Address::parse("127.0.0.1:443").unwrap();
        let (accepted, connected) = tokio::join!(acceptor.accept(far), client.connect(near, &addr));
        let (accepted, connected) = (accepted.unwrap(), connected.unwrap());
        for suite in [
            accepted.get_ref().1.negotiated_cipher_suite(),
            connected.get_ref().1.negotiated_cipher_suite(),
        ] {
            assert_eq!(
                suite.map(|s| s.suite()),
                Some(rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256)
            );
        }
    }

    #[test]
    fn encrypted_private_keys_are_named_as_such() {
        let legacy = "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\
                      DEK-Info: AES-256-CBC,00\n\nAAAA\n-----END EC PRIVATE KEY-----\n";
        let pkcs8 = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n\
                     -----END ENCRYPTED PRIVATE KEY-----\n";
        for (pem, how) in [
            (legacy, "Proc-Type: 4,ENCRYPTED"),
            (pkcs8, "PKCS#8 ENCRYPTED PRIVATE KEY"),
        ] {
            let err = parse_key(Path::new("k.pem"), pem.as_bytes()).unwrap_err();
            assert!(
                err.starts_with(&format!("k.pem: the private key is encrypted ({how})")),
                "{err}"
            );
        }
        let plain = generate(None).unwrap().key_pem;
        assert!(parse_key(Path::new("k.pem"), plain.as_bytes()).is_ok());
    }

    /// An X.509 v1 certificate for `v1.test` (no extensions, as `openssl x509 -req` without
    /// `-extfile` writes them before OpenSSL 3.2; valid from 2000 to 2126) and its key.
    pub(super) const V1_CERT: &str = include_str!("testdata/v1.crt");
    pub(super) const V1_KEY: &str = include_str!("testdata/v1.key");

    /// Go serves a v1 certificate, so GOST does; a key of another certificate is still refused,
    /// saying so.
    #[test]
    fn v1_certificates_are_served_and_a_foreign_key_is_named() {
        let (c, k) = (Path::new("c.pem"), Path::new("k.pem"));
        let certified = certified_key(c, V1_CERT.as_bytes(), k, V1_KEY.as_bytes()).unwrap();
        assert_eq!(certified.cert.len(), 1);
        let other = generate(None).unwrap();
        let err = match certified_key(c, V1_CERT.as_bytes(), k, other.key_pem.as_bytes()) {
            Ok(_) => panic!("a foreign key was accepted"),
            Err(e) => e,
        };
        assert_eq!(
            err,
            "c.pem and k.pem do not make a usable certificate: the private key does not match \
             the certificate's public key"
        );
        let generated =
            certified_key(c, other.cert_pem.as_bytes(), k, other.key_pem.as_bytes()).unwrap();
        assert!(generated.keys_match().is_ok());
    }

    #[test]
    fn refusals_are_logged_once_per_address_and_for_so_many_addresses_a_window() {
        let log = RefusalLog::new("test");
        let error = io::Error::other("refused");
        for i in 0..20u8 {
            for port in [1000, 1001] {
                log.note(SocketAddr::from(([10, 0, 0, i], port)), &error);
            }
        }
        {
            let window = log.window.lock().unwrap();
            assert_eq!(window.logged.len(), REFUSALS_LOGGED_PER_WINDOW);
            // The last logged line counted the repeat before it; then one repeat of the
            // 16th address and two refusals of each of the four beyond the limit.
            assert_eq!(window.not_logged, 1 + 8);
        }
        log.window.lock().unwrap().started = Instant::now() - REFUSAL_LOG_WINDOW;
        log.note(SocketAddr::from(([10, 0, 0, 1], 1000)), &error);
        let window = log.window.lock().unwrap();
        assert_eq!(
            window.logged.len(),
            1,
            "a new window logs the address again"
        );
        assert_eq!(window.not_logged, 0, "and reports what was left out");
    }

    #[test]
    fn an_untrusted_certificate_is_explained() {
        let wrapped = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        let explained = explain_untrusted(wrapped(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        )));
        assert_eq!(explained.kind(), io::ErrorKind::InvalidData);
        assert!(
            explained.to_string().contains("unknown authority")
                && explained.to_string().contains("caFile"),
            "{explained}"
        );
        let other = explain_untrusted(wrapped(rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadSignature,
        )));
        assert!(other.to_string().contains("BadSignature"), "{other}");
    }

    #[test]
    fn an_untrusted_certificate_is_explained_over_quic() {
        // quinn closes the connection with rustls's error as its reason text.
        let reason =
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer).to_string();
        let explained = explain_untrusted_quic(&reason).expect("explained");
        assert!(explained.contains("unknown authority"), "{explained}");
        let reason = rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
            rustls::OtherError(std::sync::Arc::new(io::Error::other("CaUsedAsEndEntity"))),
        ))
        .to_string();
        assert!(
            explain_untrusted_quic(&reason).is_some_and(|e| e.contains("CA certificate")),
            "{reason}"
        );
        let reason =
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature).to_string();
        assert_eq!(explain_untrusted_quic(&reason), None);
    }

    #[test]
    fn a_peer_not_speaking_tls_is_told_from_a_tls_failure() {
        let wrapped = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        assert!(peer_not_speaking_tls(&wrapped(
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)
        )));
        assert!(peer_not_speaking_tls(&io::Error::from(
            io::ErrorKind::UnexpectedEof
        )));
        assert!(!peer_not_speaking_tls(&wrapped(
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
        )));
        assert!(!peer_not_speaking_tls(&wrapped(
            rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate)
        )));
        assert!(refused_client_certificate(&wrapped(
            rustls::Error::NoCertificatesPresented
        )));
        // Explained for the user, and still told apart.
        let explained = explain_not_tls(wrapped(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType,
        )));
        assert!(peer_not_speaking_tls(&explained));
        assert!(
            explained.to_string().contains("did not answer in TLS"),
            "{explained}"
        );
        let plain = unexplained(explained).to_string();
        assert!(!plain.contains("did not answer in TLS"), "{plain}");
        let alert = explain_not_tls(wrapped(rustls::Error::AlertReceived(
            rustls::AlertDescription::BadCertificate,
        )));
        assert!(
            !alert.to_string().contains("did not answer in TLS"),
            "{alert}"
        );
    }

    #[test]
    fn handler_tls_waits_for_its_first_use_unless_a_certificate_is_named() {
        let unnamed = Arc::new(TlsDefaults::new(None));
        let lazy = LazyServerTls::new("test", None, &unnamed).unwrap();
        assert!(!lazy.is_made(), "nothing named: made at once");
        assert!(
            unnamed.cert.get().is_none(),
            "the default certificate was looked for"
        );

        let dir = Dir::new("lazy");
        let (_, cert, key) = generated_files(&dir, "");
        let own = LazyServerTls::new("test", Some(&named(&cert, &key)), &unnamed).unwrap();
        assert!(own.is_made(), "a named certificate is loaded at once");
        assert!(own.get().is_ok());
        let top = Arc::new(TlsDefaults::new(Some(named(&cert, &key))));
        assert!(LazyServerTls::new("test", None, &top).unwrap().is_made());

        // A broken named file fails the configuration, naming the file.
        let broken = dir.0.join("broken.pem");
        fs::write(&broken, "not a certificate").unwrap();
        let err = LazyServerTls::new("test", Some(&named(&broken, &key)), &unnamed)
            .err()
            .expect("a broken certificate file is refused");
        assert!(err.contains("broken.pem"), "{err}");
        let err = LazyServerTls::new(
            "test",
            None,
            &Arc::new(TlsDefaults::new(Some(named(&broken, &key)))),
        )
        .err()
        .expect("a broken top-level certificate file is refused");
        assert!(err.contains("broken.pem"), "{err}");

        // Invalid options fail the configuration too, with no certificate named.
        let typo = TlsConfig {
            options: Some(gost_api::TlsOptions {
                min_version: Some("TLS1.3".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = LazyServerTls::new("test", Some(&typo), &unnamed)
            .err()
            .expect("an unknown minVersion is refused at once");
        assert!(err.contains("minVersion"), "{err}");
    }
}
