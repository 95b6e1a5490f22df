//! Target and node addresses: an IP address or a domain name, and a port.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The host part of an address. Domain names are passed along unresolved: the last proxy of a
/// chain resolves them, as GOST does.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// A literal IPv4 or IPv6 address.
    Ip(IpAddr),
    /// A domain name (at most 255 bytes, as SOCKS5 and relay can carry).
    Domain(String),
}

/// A host and a port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Address {
    /// Where.
    pub host: Host,
    /// Which port.
    pub port: u16,
}

/// Why a `host:port` string is not an address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// No `:port` part.
    #[error("address {0:?} has no port (expected host:port)")]
    MissingPort(String),
    /// The port is not a number from 0 to 65535.
    #[error("address {addr:?} has an invalid port {port:?}")]
    BadPort {
        /// The whole address.
        addr: String,
        /// The port text.
        port: String,
    },
    /// The host is not an IP literal nor a plausible domain name.
    #[error("address {0:?} has an invalid host")]
    BadHost(String),
}

/// Longest domain name the wire formats can carry.
pub const MAX_DOMAIN_LEN: usize = 255;

impl Address {
    /// An address from an IP socket address.
    pub fn from_socket(addr: SocketAddr) -> Self {
        Address {
            host: Host::Ip(addr.ip()),
            port: addr.port(),
        }
    }

    /// A domain name or IP literal (IPv6 literals with or without brackets) and a port.
    pub fn from_host(host: &str, port: u16) -> Result<Self, AddrError> {
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Address {
                host: Host::Ip(ip),
                port,
            });
        }
        let valid = !host.is_empty()
            && host.len() <= MAX_DOMAIN_LEN
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if !valid {
            return Err(AddrError::BadHost(host.to_string()));
        }
        Ok(Address {
            host: Host::Domain(host.to_ascii_lowercase()),
            port,
        })
    }

    /// Parses `host:port`, `[v6]:port` or `:port` (the local host, as Go dials it).
    pub fn parse(addr: &str) -> Result<Self, AddrError> {
        let (host, port) = gost_api::load::split_host_port(addr)
            .ok_or_else(|| AddrError::MissingPort(addr.to_string()))?;
        let port = gost_api::parse_port(port).ok_or_else(|| AddrError::BadPort {
            addr: addr.to_string(),
            port: port.to_string(),
        })?;
        if host.is_empty() {
            return Ok(Address {
                host: Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                port,
            });
        }
        Address::from_host(host, port)
    }

    /// The host as text, without brackets.
    pub fn host_str(&self) -> String {
        match &self.host {
            Host::Ip(ip) => ip.to_string(),
            Host::Domain(d) => d.clone(),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(ip) => write!(f, "{ip}:{}", self.port),
            Host::Domain(d) => write!(f, "{d}:{}", self.port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_gost_accepts() {
        assert_eq!(
            Address::parse("example.com:80").unwrap().to_string(),
            "example.com:80"
        );
        assert_eq!(
            Address::parse("[::1]:443").unwrap().to_string(),
            "[::1]:443"
        );
        assert_eq!(
            Address::parse(":8080").unwrap().to_string(),
            "127.0.0.1:8080"
        );
        assert!(matches!(
            Address::parse("example.com"),
            Err(AddrError::MissingPort(_))
        ));
        assert!(matches!(
            Address::parse("a:99999"),
            Err(AddrError::BadPort { .. })
        ));
        // Go reads a port as digits only; Rust's u16 parse would take these.
        for port in ["+80", "-0", " 80", "80 "] {
            assert!(
                matches!(
                    Address::parse(&format!("a:{port}")),
                    Err(AddrError::BadPort { .. })
                ),
                "{port:?}"
            );
        }
        assert!(matches!(
            Address::parse("a b:1"),
            Err(AddrError::BadHost(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,64}") {
            let _ = Address::parse(&s);
        }
    }
}
