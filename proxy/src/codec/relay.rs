//! GOST's relay protocol (gost-wire.md §6): a request `VER FLAGS|CMD FEALEN FEATURES`, a
//! response `VER STATUS FEALEN FEATURES`, and type-length-value features. Pure functions over
//! bytes, for both the handler and the connector.
//!
//! Parsers take the bytes received so far and return `Ok(Some((value, consumed)))` once a whole
//! message is there, `Ok(None)` while more bytes are needed, and an error naming what is wrong
//! as soon as the bytes cannot start a valid message. A message is at most [`MAX_MESSAGE_LEN`]
//! bytes, so a caller buffering until a parser succeeds needs no more.
//!
//! Unlike GOST's decoder, which fails a whole message on an unknown feature type, these parsers
//! skip unknown features: a newer peer's additions do not break the tunnel. The encoders only
//! ever emit the four types GOST knows, so GOST peers never see one.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::addr::{Address, Host};

/// The protocol version, first byte of every request and response.
pub const VERSION: u8 = 0x01;

/// CMD 0x01: open a TCP (or, with [`FLAG_UDP`], UDP) connection to the Addr feature.
pub const CMD_CONNECT: u8 = 0x01;
/// CMD 0x02: remote port forwarding (GOST's `bind=true` servers only).
pub const CMD_BIND: u8 = 0x02;
/// CMD 0x03: defined by GOST, answered with Bad Request by its relay handler.
pub const CMD_ASSOCIATE: u8 = 0x03;
/// The low four bits of the second request byte hold the command.
pub const CMD_MASK: u8 = 0x0F;
/// The high bit of the second request byte: the request is for UDP (GOST's `FUDP`, deprecated
/// in favour of the Network feature but still sent and honoured).
pub const FLAG_UDP: u8 = 0x80;

/// Status: success.
pub const STATUS_OK: u8 = 0x00;
/// Status: unknown command, missing address, unsupported network.
pub const STATUS_BAD_REQUEST: u8 = 0x01;
/// Status: authentication failed.
pub const STATUS_UNAUTHORIZED: u8 = 0x02;
/// Status: refused by policy (bypass, BIND without `bind=true`).
pub const STATUS_FORBIDDEN: u8 = 0x03;
/// Status: timeout (defined, unused by GOST's relay handler).
pub const STATUS_TIMEOUT: u8 = 0x04;
/// Status: forward mode found no target; BIND could not listen.
pub const STATUS_SERVICE_UNAVAILABLE: u8 = 0x05;
/// Status: forward mode could not dial its target.
pub const STATUS_HOST_UNREACHABLE: u8 = 0x06;
/// Status: CONNECT could not dial the requested target.
pub const STATUS_NETWORK_UNREACHABLE: u8 = 0x07;
/// Status: internal error.
pub const STATUS_INTERNAL_SERVER_ERROR: u8 = 0x08;

/// Feature type: user name and password.
pub const FEATURE_USER_AUTH: u8 = 0x01;
/// Feature type: target address.
pub const FEATURE_ADDR: u8 = 0x02;
/// Feature type: tunnel or connector ID (GOST's `tunnel` handler only).
pub const FEATURE_TUNNEL: u8 = 0x03;
/// Feature type: network (tcp, udp, ...).
pub const FEATURE_NETWORK: u8 = 0x04;

/// Network code: TCP.
pub const NETWORK_TCP: u16 = 0x0000;
/// Network code: UDP.
pub const NETWORK_UDP: u16 = 0x0001;
/// Network code: IP.
pub const NETWORK_IP: u16 = 0x0002;
/// Network code: Unix socket (the Addr host is a path).
pub const NETWORK_UNIX: u16 = 0x0010;
/// Network code: serial port (the Addr host is a device).
pub const NETWORK_SERIAL: u16 = 0x0011;

/// `VER CMD/STATUS FEALEN` in front of the features.
pub const HEADER_LEN: usize = 4;
/// FEALEN is a u16, so the feature list is at most this long.
pub const MAX_FEATURES_LEN: usize = u16::MAX as usize;
/// Longest request or response: the header and a full feature list.
pub const MAX_MESSAGE_LEN: usize = HEADER_LEN + MAX_FEATURES_LEN;
/// `TYPE LEN` in front of each feature's data.
const FEATURE_HEADER_LEN: usize = 3;

const ATYP_IPV4: u8 = 0x01;
const ATYP_DOMAIN: u8 = 0x03;
const ATYP_IPV6: u8 = 0x04;

/// The text GOST's client shows for a status (`"<code> <text>"`, gost-wire.md §6.2).
pub fn status_text(status: u8) -> &'static str {
    match status {
        STATUS_OK => "OK",
        STATUS_BAD_REQUEST => "Bad Request",
        STATUS_UNAUTHORIZED => "Unauthorized",
        STATUS_FORBIDDEN => "Forbidden",
        STATUS_TIMEOUT => "Timeout",
        STATUS_SERVICE_UNAVAILABLE => "Service Unavailable",
        STATUS_HOST_UNREACHABLE => "Host Unreachable",
        STATUS_NETWORK_UNREACHABLE => "Network Unreachable",
        STATUS_INTERNAL_SERVER_ERROR => "Internal Server Error",
        _ => "Unknown Status",
    }
}

/// What is wrong with a relay message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// The first byte is not 0x01.
    #[error("bad relay version {0:#04x} (expected 0x01)")]
    BadVersion(u8),
    /// A feature runs past the end of the feature list.
    #[error(
        "relay feature {kind:#04x} says {len} bytes but only {available} remain in the feature list"
    )]
    FeatureOverrun {
        /// The feature type.
        kind: u8,
        /// Its LEN field.
        len: usize,
        /// Bytes left in the list after its header.
        available: usize,
    },
    /// Fewer than three bytes left in the feature list: not even a feature header.
    #[error("relay feature list ends with {0} stray byte(s)")]
    TruncatedFeatureHeader(usize),
    /// A feature's data is too short for its type.
    #[error("relay {feature} feature is {len} bytes, too short")]
    FeatureTooShort {
        /// Which feature.
        feature: &'static str,
        /// Its length.
        len: usize,
    },
    /// Addr with an ATYP other than 1, 3, 4.
    #[error("bad relay address type {0:#04x} (expected 0x01 IPv4, 0x03 domain or 0x04 IPv6)")]
    BadAddressType(u8),
    /// A field longer than its length byte (or word) can say.
    #[error("{field} is {len} bytes, longer than the {max} that fit")]
    FieldTooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The most that fit.
        max: usize,
    },
    /// The features together exceed FEALEN's 65535 bytes.
    #[error("relay features total {0} bytes, more than the 65535 that fit")]
    FeaturesTooLong(usize),
    /// An Addr that does not name a dialable host.
    #[error("relay address {0:?} is not a valid host")]
    BadHost(String),
}

/// A request or response feature.
#[derive(Clone, PartialEq, Eq)]
pub enum Feature {
    /// 0x01: credentials. Bytes, as GOST does not say they are text.
    UserAuth {
        /// The user name.
        username: Vec<u8>,
        /// The password (redacted from `Debug`).
        password: Vec<u8>,
    },
    /// 0x02: an address.
    Addr(AddrFeature),
    /// 0x03: a tunnel or connector ID, kept raw: only GOST's `tunnel` handler reads it.
    Tunnel(Vec<u8>),
    /// 0x04: the network (a [`NETWORK_TCP`]... code; unknown codes mean TCP to GOST).
    Network(u16),
}

impl fmt::Debug for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Feature::UserAuth { username, .. } => f
                .debug_struct("UserAuth")
                .field("username", &String::from_utf8_lossy(username))
                .field("password", &"<redacted>")
                .finish(),
            Feature::Addr(addr) => f.debug_tuple("Addr").field(addr).finish(),
            Feature::Tunnel(raw) => f.debug_tuple("Tunnel").field(raw).finish(),
            Feature::Network(code) => f.debug_tuple("Network").field(code).finish(),
        }
    }
}

/// The host of an Addr feature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddrHost {
    /// ATYP 1 or 4.
    Ip(IpAddr),
    /// ATYP 3: a domain name, or a path or device for the unix and serial networks; checked
    /// only when it is dialled (see [`AddrFeature::to_address`]).
    Name(String),
    /// ATYP 3 with a name that is not UTF-8, kept as sent. GOST reads it and fails to dial it;
    /// [`AddrFeature::to_address`] refuses it, so the handler answers as GOST does, after it
    /// has checked the credentials.
    NotUtf8(Vec<u8>),
}

/// An Addr feature: `ATYP ADDR PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrFeature {
    /// Where.
    pub host: AddrHost,
    /// Which port.
    pub port: u16,
}

impl AddrFeature {
    /// The feature for a dialable address.
    pub fn from_address(addr: &Address) -> Self {
        let host = match &addr.host {
            Host::Ip(ip) => AddrHost::Ip(*ip),
            Host::Domain(name) => AddrHost::Name(name.clone()),
        };
        AddrFeature {
            host,
            port: addr.port,
        }
    }

    /// The address to dial; a name that spells an IP address becomes that address.
    pub fn to_address(&self) -> Result<Address, RelayError> {
        match &self.host {
            AddrHost::Ip(ip) => Ok(Address {
                host: Host::Ip(*ip),
                port: self.port,
            }),
            AddrHost::Name(name) => {
                Address::from_host(name, self.port).map_err(|_| RelayError::BadHost(name.clone()))
            }
            AddrHost::NotUtf8(raw) => Err(RelayError::BadHost(
                String::from_utf8_lossy(raw).into_owned(),
            )),
        }
    }
}

/// A relay request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The flag bits (high nibble), [`FLAG_UDP`] or none.
    pub flags: u8,
    /// The command (low nibble): [`CMD_CONNECT`], ..., or 0 (which GOST treats as CONNECT).
    pub cmd: u8,
    /// The features, in wire order, unknown types left out.
    pub features: Vec<Feature>,
}

/// A relay response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// [`STATUS_OK`] or an error status.
    pub status: u8,
    /// The features, in wire order, unknown types left out.
    pub features: Vec<Feature>,
}

impl Request {
    /// The credentials, as GOST reads them: the last UserAuth feature wins.
    pub fn user_auth(&self) -> Option<(&[u8], &[u8])> {
        self.features.iter().rev().find_map(|f| match f {
            Feature::UserAuth { username, password } => {
                Some((username.as_slice(), password.as_slice()))
            }
            _ => None,
        })
    }

    /// The target, as GOST reads it: the last Addr feature wins.
    pub fn addr(&self) -> Option<&AddrFeature> {
        self.features.iter().rev().find_map(|f| match f {
            Feature::Addr(addr) => Some(addr),
            _ => None,
        })
    }

    /// The network code: the last Network feature, TCP without one, and UDP whenever the
    /// [`FLAG_UDP`] flag is set (it overrides the feature, as in GOST).
    pub fn network(&self) -> u16 {
        if self.flags & FLAG_UDP != 0 {
            return NETWORK_UDP;
        }
        self.features
            .iter()
            .rev()
            .find_map(|f| match f {
                Feature::Network(code) => Some(*code),
                _ => None,
            })
            .unwrap_or(NETWORK_TCP)
    }
}

/// The name of a network code, for logs; unknown codes are TCP to GOST.
pub fn network_name(code: u16) -> &'static str {
    match code {
        NETWORK_UDP => "udp",
        NETWORK_IP => "ip",
        NETWORK_UNIX => "unix",
        NETWORK_SERIAL => "serial",
        _ => "tcp",
    }
}

/// Parses a request; bytes after it (tunnel data sent with the header) stay unconsumed.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, RelayError> {
    Ok(parse_message(buf)?.map(|(second, features, used)| {
        let request = Request {
            flags: second & !CMD_MASK,
            cmd: second & CMD_MASK,
            features,
        };
        (request, used)
    }))
}

/// Parses a response; bytes after it (the target's first data) stay unconsumed.
pub fn parse_response(buf: &[u8]) -> Result<Option<(Response, usize)>, RelayError> {
    Ok(parse_message(buf)?.map(|(status, features, used)| (Response { status, features }, used)))
}

/// The whole length of a message, known from its first [`HEADER_LEN`] bytes, so that a client
/// can read exactly the response and leave the tunnel bytes behind it unread.
pub fn message_len(buf: &[u8]) -> Result<Option<usize>, RelayError> {
    let Some(&version) = buf.first() else {
        return Ok(None);
    };
    if version != VERSION {
        return Err(RelayError::BadVersion(version));
    }
    Ok(buf
        .get(2..HEADER_LEN)
        .map(|len| HEADER_LEN + usize::from(u16::from_be_bytes([len[0], len[1]]))))
}

/// Encodes a request. Fails when a field or the feature list is too long for the wire.
pub fn encode_request(request: &Request) -> Result<Vec<u8>, RelayError> {
    encode_message(
        (request.flags & !CMD_MASK) | (request.cmd & CMD_MASK),
        &request.features,
    )
}

/// Encodes a response.
pub fn encode_response(response: &Response) -> Result<Vec<u8>, RelayError> {
    encode_message(response.status, &response.features)
}

/// A response with `status` and no features, as GOST's relay handler sends it.
pub fn status_response(status: u8) -> [u8; HEADER_LEN] {
    [VERSION, status, 0, 0]
}

fn encode_message(second: u8, features: &[Feature]) -> Result<Vec<u8>, RelayError> {
    let mut out = vec![VERSION, second, 0, 0];
    for feature in features {
        encode_feature(&mut out, feature)?;
    }
    let len = out.len() - HEADER_LEN;
    let len = u16::try_from(len).map_err(|_| RelayError::FeaturesTooLong(len))?;
    out[2..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

fn encode_feature(out: &mut Vec<u8>, feature: &Feature) -> Result<(), RelayError> {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0]);
    let kind = match feature {
        Feature::UserAuth { username, password } => {
            out.push(byte_len("relay user name", username.len())?);
            out.extend_from_slice(username);
            out.push(byte_len("relay password", password.len())?);
            out.extend_from_slice(password);
            FEATURE_USER_AUTH
        }
        Feature::Addr(addr) => {
            match &addr.host {
                AddrHost::Ip(IpAddr::V4(ip)) => {
                    out.push(ATYP_IPV4);
                    out.extend_from_slice(&ip.octets());
                }
                AddrHost::Ip(IpAddr::V6(ip)) => {
                    out.push(ATYP_IPV6);
                    out.extend_from_slice(&ip.octets());
                }
                AddrHost::Name(name) => {
                    out.push(ATYP_DOMAIN);
                    out.push(byte_len("relay domain name", name.len())?);
                    out.extend_from_slice(name.as_bytes());
                }
                AddrHost::NotUtf8(raw) => {
                    out.push(ATYP_DOMAIN);
                    out.push(byte_len("relay domain name", raw.len())?);
                    out.extend_from_slice(raw);
                }
            }
            out.extend_from_slice(&addr.port.to_be_bytes());
            FEATURE_ADDR
        }
        Feature::Tunnel(raw) => {
            out.extend_from_slice(raw);
            FEATURE_TUNNEL
        }
        Feature::Network(code) => {
            out.extend_from_slice(&code.to_be_bytes());
            FEATURE_NETWORK
        }
    };
    let len = out.len() - start - FEATURE_HEADER_LEN;
    let len = u16::try_from(len).map_err(|_| RelayError::FieldTooLong {
        field: "relay feature",
        len,
        max: MAX_FEATURES_LEN,
    })?;
    out[start] = kind;
    out[start + 1..start + FEATURE_HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

fn byte_len(field: &'static str, len: usize) -> Result<u8, RelayError> {
    u8::try_from(len).map_err(|_| RelayError::FieldTooLong {
        field,
        len,
        max: u8::MAX.into(),
    })
}

/// Requests and responses share one layout; returns the second byte, the features and the
/// message length.
fn parse_message(buf: &[u8]) -> Result<Option<(u8, Vec<Feature>, usize)>, RelayError> {
    let Some(len) = message_len(buf)? else {
        return Ok(None);
    };
    let Some(message) = buf.get(..len) else {
        return Ok(None);
    };
    Ok(Some((
        message[1],
        parse_features(&message[HEADER_LEN..])?,
        len,
    )))
}

fn parse_features(mut list: &[u8]) -> Result<Vec<Feature>, RelayError> {
    let mut features = Vec::new();
    while !list.is_empty() {
        if list.len() < FEATURE_HEADER_LEN {
            return Err(RelayError::TruncatedFeatureHeader(list.len()));
        }
        let kind = list[0];
        let len = usize::from(u16::from_be_bytes([list[1], list[2]]));
        let rest = &list[FEATURE_HEADER_LEN..];
        let Some(data) = rest.get(..len) else {
            return Err(RelayError::FeatureOverrun {
                kind,
                len,
                available: rest.len(),
            });
        };
        list = &rest[len..];
        let feature = match kind {
            FEATURE_USER_AUTH => parse_user_auth(data)?,
            FEATURE_ADDR => Feature::Addr(parse_addr(data)?),
            FEATURE_TUNNEL => Feature::Tunnel(data.to_vec()),
            FEATURE_NETWORK => match *data {
                [a, b, ..] => Feature::Network(u16::from_be_bytes([a, b])),
                _ => return Err(too_short("Network", data)),
            },
            // A feature this side does not know: skipped, see the module documentation.
            _ => continue,
        };
        features.push(feature);
    }
    Ok(features)
}

fn too_short(feature: &'static str, data: &[u8]) -> RelayError {
    RelayError::FeatureTooShort {
        feature,
        len: data.len(),
    }
}

/// `ULEN USERNAME PLEN PASSWORD`; trailing bytes are ignored, as GOST ignores them.
fn parse_user_auth(data: &[u8]) -> Result<Feature, RelayError> {
    let short = || too_short("UserAuth", data);
    let (username, rest) = length_prefixed(data).ok_or_else(short)?;
    let (password, _) = length_prefixed(rest).ok_or_else(short)?;
    Ok(Feature::UserAuth {
        username: username.to_vec(),
        password: password.to_vec(),
    })
}

/// A one-byte length and that many bytes, and what follows; `None` when too short.
fn length_prefixed(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&len, rest) = buf.split_first()?;
    let len = usize::from(len);
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// `ATYP ADDR PORT`; trailing bytes are ignored, as GOST ignores them.
fn parse_addr(data: &[u8]) -> Result<AddrFeature, RelayError> {
    let short = || too_short("Addr", data);
    let (&atyp, rest) = data.split_first().ok_or_else(short)?;
    let (host, rest) = match atyp {
        ATYP_IPV4 => {
            let octets: [u8; 4] = rest
                .get(..4)
                .ok_or_else(short)?
                .try_into()
                .expect("4 bytes");
            (AddrHost::Ip(Ipv4Addr::from(octets).into()), &rest[4..])
        }
        ATYP_IPV6 => {
            let octets: [u8; 16] = rest
                .get(..16)
                .ok_or_else(short)?
                .try_into()
                .expect("16 bytes");
            (AddrHost::Ip(Ipv6Addr::from(octets).into()), &rest[16..])
        }
        ATYP_DOMAIN => {
            let (name, rest) = length_prefixed(rest).ok_or_else(short)?;
            let host = match std::str::from_utf8(name) {
                Ok(name) => AddrHost::Name(name.to_string()),
                Err(_) => AddrHost::NotUtf8(name.to_vec()),
            };
            (host, rest)
        }
        other => return Err(RelayError::BadAddressType(other)),
    };
    let port = match *rest {
        [a, b, ..] => u16::from_be_bytes([a, b]),
        _ => return Err(short()),
    };
    Ok(AddrFeature { host, port })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn user_pass() -> Feature {
        Feature::UserAuth {
            username: b"user".to_vec(),
            password: b"pass".to_vec(),
        }
    }

    #[test]
    fn worked_example_connect_with_auth() {
        // gost-wire.md §6.9.
        let wire = hex("01 01 00 1F
                        01 00 0A 04 75 73 65 72 04 70 61 73 73
                        02 00 0F 03 0B 65 78 61 6D 70 6C 65 2E 63 6F 6D 01 BB");
        let request = Request {
            flags: 0,
            cmd: CMD_CONNECT,
            features: vec![
                user_pass(),
                Feature::Addr(AddrFeature::from_address(
                    &Address::parse("example.com:443").unwrap(),
                )),
            ],
        };
        assert_eq!(encode_request(&request).unwrap(), wire);
        let (parsed, used) = parse_request(&wire).unwrap().unwrap();
        assert_eq!((&parsed, used), (&request, wire.len()));
        assert_eq!(parsed.user_auth(), Some((&b"user"[..], &b"pass"[..])));
        assert_eq!(
            parsed.addr().unwrap().to_address().unwrap().to_string(),
            "example.com:443"
        );
        assert_eq!(parsed.network(), NETWORK_TCP);
        assert_eq!(status_response(STATUS_OK), [1, 0, 0, 0]);
        assert_eq!(status_response(STATUS_UNAUTHORIZED), [1, 2, 0, 0]);
    }

    #[test]
    fn worked_example_udp_connect() {
        let wire = hex("01 81 00 0F 04 00 02 00 01 02 00 07 01 08 08 08 08 00 35");
        let request = Request {
            flags: FLAG_UDP,
            cmd: CMD_CONNECT,
            features: vec![
                Feature::Network(NETWORK_UDP),
                Feature::Addr(AddrFeature::from_address(
                    &Address::parse("8.8.8.8:53").unwrap(),
                )),
            ],
        };
        assert_eq!(encode_request(&request).unwrap(), wire);
        let (parsed, _) = parse_request(&wire).unwrap().unwrap();
        assert_eq!(parsed, request);
        assert_eq!(parsed.network(), NETWORK_UDP);
        // The flag alone makes it UDP, whatever the Network feature says.
        let flagged = Request {
            features: vec![Feature::Network(NETWORK_TCP)],
            ..request
        };
        assert_eq!(flagged.network(), NETWORK_UDP);
    }

    #[test]
    fn golden_requests_recorded_from_gost() {
        // golden/relay-client.txt: GOST's client, CONNECT 127.0.0.1:8080, then HTTP bytes.
        let wire = hex("0101001701000a04757365720470617373020007017f0000011f90474554202f78");
        let (request, used) = parse_request(&wire).unwrap().unwrap();
        assert_eq!(used, 4 + 0x17);
        assert_eq!(&wire[used..], b"GET /x");
        assert_eq!(
            request.addr().unwrap().to_address().unwrap().to_string(),
            "127.0.0.1:8080"
        );
        assert_eq!(encode_request(&request).unwrap(), wire[..used]);
        // IPv6 and domain addresses.
        let v6 = AddrFeature::from_address(&Address::parse("[::1]:80").unwrap());
        let wire = encode_request(&Request {
            flags: 0,
            cmd: CMD_CONNECT,
            features: vec![Feature::Addr(v6.clone())],
        })
        .unwrap();
        assert_eq!(&wire[..7], &[1, 1, 0, 22, 2, 0, 19]);
        assert_eq!(wire[7], ATYP_IPV6);
        assert_eq!(parse_request(&wire).unwrap().unwrap().0.addr(), Some(&v6));
    }

    #[test]
    fn incomplete_messages_ask_for_more() {
        let wire = hex("01 01 00 1F 01 00 0A 04 75 73 65 72 04 70 61 73 73");
        for end in 0..wire.len() {
            assert_eq!(parse_request(&wire[..end]), Ok(None), "{end} bytes");
        }
        assert_eq!(parse_response(&[1, 0, 0]), Ok(None));
        assert_eq!(
            parse_response(&[1, 7, 0, 0, 9]).unwrap().unwrap(),
            (
                Response {
                    status: 7,
                    features: vec![]
                },
                4
            )
        );
    }

    #[test]
    fn malformed_messages_are_errors() {
        assert_eq!(parse_request(&[2, 1, 0, 0]), Err(RelayError::BadVersion(2)));
        assert_eq!(
            parse_request(b"GET / HTTP/1.1"),
            Err(RelayError::BadVersion(b'G'))
        );
        assert_eq!(
            parse_request(&[1, 1, 0, 2, 1, 0]),
            Err(RelayError::TruncatedFeatureHeader(2))
        );
        assert_eq!(
            parse_request(&[1, 1, 0, 4, 2, 0, 5, 1]),
            Err(RelayError::FeatureOverrun {
                kind: 2,
                len: 5,
                available: 1
            })
        );
        assert!(matches!(
            parse_request(&[1, 1, 0, 5, 2, 0, 2, 1, 127]),
            Err(RelayError::FeatureTooShort {
                feature: "Addr",
                ..
            })
        ));
        assert!(matches!(
            parse_request(&[1, 1, 0, 5, 1, 0, 2, 4, 0]),
            Err(RelayError::FeatureTooShort {
                feature: "UserAuth",
                ..
            })
        ));
        assert!(matches!(
            parse_request(&[1, 1, 0, 4, 4, 0, 1, 0]),
            Err(RelayError::FeatureTooShort {
                feature: "Network",
                ..
            })
        ));
        assert_eq!(
            parse_request(&[1, 1, 0, 7, 2, 0, 4, 9, 0, 0, 0]),
            Err(RelayError::BadAddressType(9))
        );
        let (not_utf8, _) = parse_request(&[1, 1, 0, 8, 2, 0, 5, 3, 1, 0xFF, 0, 80])
            .unwrap()
            .unwrap();
        let not_utf8 = not_utf8.addr().unwrap();
        assert_eq!(not_utf8.host, AddrHost::NotUtf8(vec![0xFF]));
        assert_eq!(
            not_utf8.to_address(),
            Err(RelayError::BadHost("\u{FFFD}".into()))
        );
        let bad = AddrFeature {
            host: AddrHost::Name("a b".into()),
            port: 1,
        };
        assert_eq!(bad.to_address(), Err(RelayError::BadHost("a b".into())));
    }

    #[test]
    fn unknown_features_are_skipped() {
        // An unknown type 0x7F before the Addr.
        let wire = hex("01 01 00 10  7F 00 03 AA BB CC  02 00 07 01 7F 00 00 01 00 50");
        let (request, used) = parse_request(&wire).unwrap().unwrap();
        assert_eq!(used, wire.len());
        assert_eq!(request.features.len(), 1);
        assert_eq!(
            request.addr().unwrap().to_address().unwrap().to_string(),
            "127.0.0.1:80"
        );
    }

    #[test]
    fn tunnel_features_are_kept_raw_and_cmd_zero_is_kept() {
        let mut raw = vec![0x11; 16];
        raw.extend_from_slice(&[0x80, 0, 0, 1]);
        let request = Request {
            flags: 0,
            cmd: 0,
            features: vec![Feature::Tunnel(raw.clone())],
        };
        let wire = encode_request(&request).unwrap();
        assert_eq!(&wire[..7], &[1, 0, 0, 23, 3, 0, 20]);
        assert_eq!(parse_request(&wire).unwrap().unwrap().0, request);
    }

    #[test]
    fn encoders_refuse_what_does_not_fit() {
        let long = Feature::UserAuth {
            username: vec![b'u'; 256],
            password: vec![],
        };
        assert!(matches!(
            encode_request(&Request {
                flags: 0,
                cmd: 1,
                features: vec![long]
            }),
            Err(RelayError::FieldTooLong { len: 256, .. })
        ));
        let big = Feature::Tunnel(vec![0; 40_000]);
        assert_eq!(
            encode_response(&Response {
                status: 0,
                features: vec![big.clone(), big]
            }),
            Err(RelayError::FeaturesTooLong(80_006))
        );
        assert!(matches!(
            encode_response(&Response {
                status: 0,
                features: vec![Feature::Tunnel(vec![0; 70_000])]
            }),
            Err(RelayError::FieldTooLong { .. })
        ));
    }

    #[test]
    fn credentials_stay_out_of_debug_output() {
        let text = format!("{:?}", user_pass());
        assert!(text.contains("user") && !text.contains("pass\""), "{text}");
    }

    #[test]
    fn status_texts_are_gosts() {
        assert_eq!(
            status_text(STATUS_NETWORK_UNREACHABLE),
            "Network Unreachable"
        );
        assert_eq!(status_text(STATUS_UNAUTHORIZED), "Unauthorized");
        assert_eq!(
            status_text(STATUS_INTERNAL_SERVER_ERROR),
            "Internal Server Error"
        );
        assert_eq!(status_text(0x42), "Unknown Status");
    }

    fn feature() -> impl Strategy<Value = Feature> {
        let bytes = |max| proptest::collection::vec(any::<u8>(), 0..=max);
        let host = prop_oneof![
            any::<[u8; 4]>().prop_map(|o| AddrHost::Ip(Ipv4Addr::from(o).into())),
            any::<[u8; 16]>().prop_map(|o| AddrHost::Ip(Ipv6Addr::from(o).into())),
            "[a-z0-9.-]{0,255}".prop_map(AddrHost::Name),
            // 0xFF never occurs in UTF-8.
            (bytes(254), any::<prop::sample::Index>()).prop_map(|(mut raw, at)| {
                raw.insert(at.index(raw.len() + 1), 0xFF);
                AddrHost::NotUtf8(raw)
            }),
        ];
        prop_oneof![
            (bytes(255), bytes(255))
                .prop_map(|(username, password)| Feature::UserAuth { username, password }),
            (host, any::<u16>()).prop_map(|(host, port)| Feature::Addr(AddrFeature { host, port })),
            bytes(64).prop_map(Feature::Tunnel),
            any::<u16>().prop_map(Feature::Network),
        ]
    }

    proptest! {
        #[test]
        fn requests_round_trip(
            flags in 0u8..16,
            cmd in 0u8..16,
            features in proptest::collection::vec(feature(), 0..6),
            tail in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let request = Request { flags: flags << 4, cmd, features };
            let mut wire = encode_request(&request).unwrap();
            let len = wire.len();
            wire.extend_from_slice(&tail);
            prop_assert_eq!(parse_request(&wire).unwrap(), Some((request, len)));
        }

        #[test]
        fn responses_round_trip(
            status in any::<u8>(),
            features in proptest::collection::vec(feature(), 0..6),
        ) {
            let response = Response { status, features };
            let wire = encode_response(&response).unwrap();
            let len = wire.len();
            prop_assert_eq!(message_len(&wire).unwrap(), Some(len));
            prop_assert_eq!(parse_response(&wire).unwrap(), Some((response, len)));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_request(&bytes);
            let _ = parse_response(&bytes);
            let _ = message_len(&bytes);
        }

        #[test]
        fn arbitrary_features_after_a_valid_header_never_panic(
            body in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut wire = vec![VERSION, CMD_CONNECT];
            wire.extend_from_slice(&(body.len() as u16).to_be_bytes());
            wire.extend_from_slice(&body);
            if let Ok(Some((request, used))) = parse_request(&wire) {
                prop_assert_eq!(used, wire.len());
                if let Some(addr) = request.addr() {
                    let _ = addr.to_address();
                }
            }
        }
    }
}
