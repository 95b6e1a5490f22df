//! GOST's TLS `options` (`minVersion`, `maxVersion`, `cipherSuites`, `alpn`) as rustls takes
//! them, for servers and clients alike.
//!
//! Names are GOST's (Go's constants), matched ignoring case as GOST matches them. gost-rs
//! speaks TLS 1.2 and 1.3 with AEAD suites only, so what it cannot offer is said: a
//! `maxVersion` below TLS 1.2 is an error, a `minVersion` below it is TLS 1.2 (logged), and a
//! TLS 1.2 suite Go has and rustls does not (CBC, RC4, 3DES, RSA key exchange) is left out,
//! logged. A name that is no suite at all is an error, where GOST skips it without a word.
//! As in Go, `cipherSuites` restricts TLS 1.2 only: TLS 1.3 suites are always offered.

use std::sync::Arc;

use gost_api::TlsOptions;
use rustls::crypto::CryptoProvider;
use rustls::{CipherSuite, SupportedProtocolVersion};

/// What a handshake offers, from a `tls` section's `options`.
pub(super) struct Handshake {
    pub provider: Arc<CryptoProvider>,
    pub versions: Vec<&'static SupportedProtocolVersion>,
    pub alpn: Vec<Vec<u8>>,
}

/// GOST's version names, lowest first, with the version gost-rs speaks for each (`None`: one
/// it cannot speak).
const VERSIONS: &[(&str, Option<&SupportedProtocolVersion>)] = &[
    ("VersionTLS10", None),
    ("VersionTLS11", None),
    ("VersionTLS12", Some(&rustls::version::TLS12)),
    ("VersionTLS13", Some(&rustls::version::TLS13)),
];

/// Where TLS 1.2, the lowest version gost-rs speaks, is in [`VERSIONS`].
const TLS12_INDEX: usize = 2;

/// Whether `options` leave TLS 1.3 out, which QUIC (`h3`) cannot do without.
pub fn rule_out_tls13(options: Option<&TlsOptions>) -> bool {
    options
        .and_then(|o| o.max_version.as_deref())
        .and_then(|name| version_index("maxVersion", Some(name)).ok().flatten())
        .is_some_and(|max| max < VERSIONS.len() - 1)
}

/// The TLS 1.2 suites of Go's names that rustls implements.
const TLS12_SUITES: &[(&str, CipherSuite)] = &[
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

/// Go's TLS 1.2 suites that rustls does not implement: accepted and left out.
const TLS12_NOT_IMPLEMENTED: &[&str] = &[
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

/// Go's TLS 1.3 suites, which Go (so GOST) does not let a configuration restrict.
const TLS13_SUITES: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

impl Handshake {
    /// The handshake of `options` over `provider`; `required_alpn` are the protocols the
    /// transport itself needs (`h2` for HTTP/2, ...), offered first, before the configured
    /// `alpn` ones, since the transport cannot work with another.
    pub fn new(
        options: Option<&TlsOptions>,
        provider: Arc<CryptoProvider>,
        required_alpn: &[&[u8]],
    ) -> Result<Self, String> {
        let mut alpn: Vec<Vec<u8>> = required_alpn.iter().map(|p| p.to_vec()).collect();
        let Some(options) = options else {
            return Ok(Handshake {
                provider,
                versions: rustls::DEFAULT_VERSIONS.to_vec(),
                alpn,
            });
        };
        let min =
            version_index("minVersion", options.min_version.as_deref())?.unwrap_or(TLS12_INDEX);
        let max = version_index("maxVersion", options.max_version.as_deref())?
            .unwrap_or(VERSIONS.len() - 1);
        if VERSIONS[max].1.is_none() {
            return Err(format!(
                "options.maxVersion: {} is not spoken by gost-rs, which speaks TLS 1.2 and 1.3 \
                 only (VersionTLS12, VersionTLS13)",
                VERSIONS[max].0
            ));
        }
        if min > max {
            return Err(format!(
                "options.minVersion {} is above options.maxVersion {}",
                VERSIONS[min].0, VERSIONS[max].0
            ));
        }
        if VERSIONS[min].1.is_none() {
            tracing::warn!(
                "TLS options.minVersion {}: gost-rs speaks TLS 1.2 and 1.3 only, so older \
                 clients and servers cannot connect",
                VERSIONS[min].0
            );
        }
        let mut versions: Vec<_> = VERSIONS[min..=max].iter().filter_map(|v| v.1).collect();

        let mut provider = provider;
        // Only TLS 1.2 names restrict anything: a list of TLS 1.3 names leaves Go's defaults.
        if let Some(tls12) = tls12_suites(&options.cipher_suites)? {
            let mut restricted = (*provider).clone();
            restricted
                .cipher_suites
                .retain(|s| s.tls13().is_some() || tls12.contains(&s.suite()));
            if tls12.is_empty() && versions.contains(&&rustls::version::TLS12) {
                // Go would have no TLS 1.2 suite either (or only ones rustls lacks).
                versions.retain(|v| **v != rustls::version::TLS12);
                if versions.is_empty() {
                    return Err(
                        "options.cipherSuites: none of them is a TLS 1.2 suite gost-rs \
                         implements, and maxVersion rules TLS 1.3 out"
                            .to_string(),
                    );
                }
                tracing::warn!(
                    "TLS options.cipherSuites names no TLS 1.2 suite gost-rs implements: \
                     TLS 1.2 is off, TLS 1.3 only"
                );
            }
            provider = Arc::new(restricted);
        }

        for protocol in &options.alpn {
            if protocol.is_empty() || protocol.len() > 255 {
                return Err(format!(
                    "options.alpn: {protocol:?} is not an ALPN protocol name (1 to 255 bytes)"
                ));
            }
            if !alpn.iter().any(|p| p == protocol.as_bytes()) {
                alpn.push(protocol.as_bytes().to_vec());
            }
        }
        Ok(Handshake {
            provider,
            versions,
            alpn,
        })
    }
}

/// Where a version name is in [`VERSIONS`]; `None` when not set.
fn version_index(key: &str, name: Option<&str>) -> Result<Option<usize>, String> {
    let Some(name) = name else {
        return Ok(None);
    };
    VERSIONS
        .iter()
        .position(|(known, _)| known.eq_ignore_ascii_case(name.trim()))
        .map(Some)
        .ok_or_else(|| {
            format!(
                "options.{key}: unknown TLS version {name:?}; expected VersionTLS10, \
                 VersionTLS11, VersionTLS12 or VersionTLS13"
            )
        })
}

/// The TLS 1.2 suites named, those rustls lacks left out (logged); `None` when no TLS 1.2
/// suite is named. An unknown name is an error.
fn tls12_suites(names: &[String]) -> Result<Option<Vec<CipherSuite>>, String> {
    let mut suites = Vec::new();
    let mut named = false;
    for name in names {
        let upper = name.trim().to_ascii_uppercase();
        if let Some((_, suite)) = TLS12_SUITES.iter().find(|(known, _)| *known == upper) {
            suites.push(*suite);
            named = true;
        } else if TLS12_NOT_IMPLEMENTED.contains(&upper.as_str()) {
            named = true;
            tracing::warn!(
                suite = %name,
                "TLS options.cipherSuites: gost-rs does not implement this suite (rustls has \
                 AEAD suites with ECDHE only); it is left out"
            );
        } else if !TLS13_SUITES.contains(&upper.as_str()) {
            let accepted: Vec<&str> = TLS12_SUITES.iter().map(|(n, _)| *n).collect();
            return Err(format!(
                "options.cipherSuites: unknown cipher suite {name:?}; gost-rs implements {} \
                 (and every TLS 1.3 suite, which Go does not let a configuration restrict)",
                accepted.join(", ")
            ));
        }
    }
    Ok(named.then_some(suites))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(min: &str, max: &str, suites: &[&str], alpn: &[&str]) -> TlsOptions {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        TlsOptions {
            min_version: some(min),
            max_version: some(max),
            cipher_suites: suites.iter().map(|s| s.to_string()).collect(),
            alpn: alpn.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn make(options: &TlsOptions, required: &[&[u8]]) -> Result<Handshake, String> {
        Handshake::new(Some(options), super::super::provider(), required)
    }

    #[test]
    fn versions_are_gost_names_in_any_case() {
        let h = make(&options("versiontls13", "", &[], &[]), &[]).unwrap();
        assert_eq!(h.versions, vec![&rustls::version::TLS13]);
        let h = make(&options("VersionTLS10", "VersionTLS12", &[], &[]), &[]).unwrap();
        assert_eq!(h.versions, vec![&rustls::version::TLS12]);
        let e = make(&options("TLS1.3", "", &[], &[]), &[]).err().unwrap();
        assert!(
            e.contains("options.minVersion") && e.contains("VersionTLS13"),
            "{e}"
        );
        let e = make(&options("", "VersionTLS11", &[], &[]), &[])
            .err()
            .unwrap();
        assert!(
            e.contains("options.maxVersion") && e.contains("TLS 1.2 and 1.3"),
            "{e}"
        );
        let e = make(&options("VersionTLS13", "VersionTLS12", &[], &[]), &[])
            .err()
            .unwrap();
        assert!(e.contains("above"), "{e}");
    }

    #[test]
    fn cipher_suites_restrict_tls12_only() {
        let h = make(
            &options("", "", &["tls_ecdhe_rsa_with_aes_128_gcm_sha256"], &[]),
            &[],
        )
        .unwrap();
        let tls12: Vec<_> = h
            .provider
            .cipher_suites
            .iter()
            .filter(|s| s.tls13().is_none())
            .map(|s| s.suite())
            .collect();
        assert_eq!(
            tls12,
            vec![CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]
        );
        let tls13 = h
            .provider
            .cipher_suites
            .iter()
            .filter(|s| s.tls13().is_some());
        assert_eq!(tls13.count(), 3);
        assert_eq!(h.versions.len(), 2);

        // Only suites rustls lacks: TLS 1.3 alone, or an error when that is ruled out too.
        let cbc = ["TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"];
        let h = make(&options("", "", &cbc, &[]), &[]).unwrap();
        assert_eq!(h.versions, vec![&rustls::version::TLS13]);
        let e = make(&options("", "VersionTLS12", &cbc, &[]), &[])
            .err()
            .unwrap();
        assert!(e.contains("options.cipherSuites"), "{e}");

        let e = make(&options("", "", &["TLS_NOPE"], &[]), &[])
            .err()
            .unwrap();
        assert!(
            e.contains("TLS_NOPE") && e.contains("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
            "{e}"
        );
        // TLS 1.3 names are accepted and change nothing, as in Go.
        let h = make(&options("", "", &["TLS_AES_128_GCM_SHA256"], &[]), &[]).unwrap();
        assert_eq!(h.versions.len(), 2);
        assert_eq!(
            h.provider.cipher_suites.len(),
            super::super::provider().cipher_suites.len()
        );
    }

    #[test]
    fn alpn_follows_what_the_transport_needs() {
        let h = make(&options("", "", &[], &["http/1.1", "h2"]), &[b"h2"]).unwrap();
        assert_eq!(h.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        let h = make(&options("", "", &[], &["h2", "http/1.1"]), &[]).unwrap();
        assert_eq!(h.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert!(rule_out_tls13(Some(&options("", "VersionTLS12", &[], &[]))));
        assert!(!rule_out_tls13(Some(&options(
            "VersionTLS12",
            "",
            &[],
            &[]
        ))));
        assert!(!rule_out_tls13(None));
        let h = Handshake::new(None, super::super::provider(), &[b"h3"]).unwrap();
        assert_eq!(h.alpn, vec![b"h3".to_vec()]);
        assert_eq!(h.versions.len(), 2);
    }
}
