//! SOCKS4 and SOCKS4a requests and replies. Pure functions over bytes.
//!
//! [`parse_request`] returns `Ok(Some((request, consumed)))` once a whole request is there,
//! `Ok(None)` while more bytes are needed, and an error naming what is wrong as soon as the
//! bytes cannot start a valid request. A request is at most [`MAX_REQUEST_LEN`] bytes.

use std::net::{Ipv4Addr, SocketAddr};

use crate::addr::Address;

/// The protocol version, first byte of a request.
pub const VERSION: u8 = 0x04;

/// The version byte of a reply, which is 0 rather than 4.
pub const REPLY_VERSION: u8 = 0x00;

/// Reply: request granted.
pub const REPLY_GRANTED: u8 = 90;
/// Reply: request rejected or failed (GOST: the dial failed).
pub const REPLY_FAILED: u8 = 91;
/// Reply: rejected (RFC: no identd; GOST: the target is bypassed).
pub const REPLY_REJECTED: u8 = 92;
/// Reply: the user id was not accepted.
pub const REPLY_BAD_USER_ID: u8 = 93;

/// `VN CD DSTPORT DSTIP`.
const HEADER_LEN: usize = 8;

/// Longest USERID or SOCKS4a domain name, not counting the terminating NUL: the same bound as
/// SOCKS5's one-byte lengths, far above any real user id or host name, so that a client
/// cannot make the server buffer an endless string.
pub const MAX_FIELD_LEN: usize = 255;

/// Longest request: the header, then a user id and a domain name, each with its NUL.
pub const MAX_REQUEST_LEN: usize = HEADER_LEN + 2 * (MAX_FIELD_LEN + 1);

/// What is wrong with a SOCKS4 request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Socks4Error {
    /// The first byte is not 0x04.
    #[error("bad SOCKS version {0:#04x} (expected 0x04)")]
    BadVersion(u8),
    /// No NUL within the first 256 bytes of a string field.
    #[error("{0} is longer than 255 bytes (no terminating NUL)")]
    FieldTooLong(&'static str),
    /// A SOCKS4a request with an empty domain name.
    #[error("empty domain name")]
    EmptyDomain,
    /// A SOCKS4a domain name that is not a host name.
    #[error("domain name {0:?} is not a valid host name")]
    BadDomain(String),
}

/// A request command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// 1: open a TCP connection to the target.
    Connect,
    /// 2: accept one TCP connection on the server's side.
    Bind,
    /// Any other code.
    Other(u8),
}

impl Command {
    /// The command a code stands for.
    pub fn from_byte(code: u8) -> Self {
        match code {
            1 => Command::Connect,
            2 => Command::Bind,
            other => Command::Other(other),
        }
    }

    /// The command's code.
    pub fn to_byte(self) -> u8 {
        match self {
            Command::Connect => 1,
            Command::Bind => 2,
            Command::Other(code) => code,
        }
    }
}

/// A SOCKS4 or SOCKS4a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// What to do.
    pub command: Command,
    /// Where to: an IPv4 address, or for SOCKS4a the domain name (or the IP it spells).
    pub target: Address,
    /// USERID, bytes because SOCKS4 does not say it is text.
    pub user_id: Vec<u8>,
}

/// Parses `04 CD DSTPORT DSTIP USERID 00`, followed for SOCKS4a (DSTIP 0.0.0.x, x ≠ 0) by
/// `DOMAIN 00`.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, Socks4Error> {
    let Some(&version) = buf.first() else {
        return Ok(None);
    };
    if version != VERSION {
        return Err(Socks4Error::BadVersion(version));
    }
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let command = Command::from_byte(header[1]);
    let port = u16::from_be_bytes([header[2], header[3]]);
    let ip = Ipv4Addr::new(header[4], header[5], header[6], header[7]);
    let Some((user_id, user_id_end)) = nul_terminated(buf, HEADER_LEN, "user id")? else {
        return Ok(None);
    };
    let (target, end) = if is_socks4a(ip) {
        let Some((name, end)) = nul_terminated(buf, user_id_end, "domain name")? else {
            return Ok(None);
        };
        (parse_domain(name, port)?, end)
    } else {
        (
            Address::from_socket(SocketAddr::from((ip, port))),
            user_id_end,
        )
    };
    let request = Request {
        command,
        target,
        user_id: user_id.to_vec(),
    };
    Ok(Some((request, end)))
}

/// Encodes a reply. Its DSTPORT and DSTIP are zero: GOST sends zeros, and clients ignore them
/// for CONNECT.
pub fn encode_reply(code: u8) -> [u8; HEADER_LEN] {
    [REPLY_VERSION, code, 0, 0, 0, 0, 0, 0]
}

/// SOCKS4a marks "domain follows" with the invalid address 0.0.0.x, x ≠ 0.
fn is_socks4a(ip: Ipv4Addr) -> bool {
    matches!(ip.octets(), [0, 0, 0, x] if x != 0)
}

/// The string starting at `start` up to its NUL, and the offset after the NUL.
fn nul_terminated<'a>(
    buf: &'a [u8],
    start: usize,
    field: &'static str,
) -> Result<Option<(&'a [u8], usize)>, Socks4Error> {
    let rest = buf.get(start..).unwrap_or_default();
    let window = &rest[..rest.len().min(MAX_FIELD_LEN + 1)];
    match window.iter().position(|&b| b == 0) {
        Some(len) => Ok(Some((&rest[..len], start + len + 1))),
        None if window.len() > MAX_FIELD_LEN => Err(Socks4Error::FieldTooLong(field)),
        None => Ok(None),
    }
}

fn parse_domain(name: &[u8], port: u16) -> Result<Address, Socks4Error> {
    if name.is_empty() {
        return Err(Socks4Error::EmptyDomain);
    }
    let bad = || Socks4Error::BadDomain(String::from_utf8_lossy(name).into_owned());
    let text = std::str::from_utf8(name).map_err(|_| bad())?;
    Address::from_host(text, port).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::addr::Host;

    /// What a client sends; the server never encodes requests.
    fn encode_request(command: Command, port: u16, host: &Host, user_id: &[u8]) -> Vec<u8> {
        let mut out = vec![VERSION, command.to_byte()];
        out.extend_from_slice(&port.to_be_bytes());
        match host {
            Host::Ip(std::net::IpAddr::V4(ip)) => out.extend_from_slice(&ip.octets()),
            Host::Ip(ip) => panic!("SOCKS4 cannot carry {ip}"),
            Host::Domain(_) => out.extend_from_slice(&[0, 0, 0, 1]),
        }
        out.extend_from_slice(user_id);
        out.push(0);
        if let Host::Domain(name) = host {
            out.extend_from_slice(name.as_bytes());
            out.push(0);
        }
        out
    }

    #[test]
    fn socks4_connect_bytes() {
        let bytes = b"\x04\x01\x00\x50\x7f\x00\x00\x01alice\x00data";
        let (request, used) = parse_request(bytes).unwrap().unwrap();
        assert_eq!(used, 14);
        assert_eq!(request.command, Command::Connect);
        assert_eq!(request.target, Address::parse("127.0.0.1:80").unwrap());
        assert_eq!(request.user_id, b"alice");
    }

    #[test]
    fn socks4a_connect_bytes() {
        let bytes = b"\x04\x01\x01\xbb\x00\x00\x00\x07\x00example.com\x00";
        let (request, used) = parse_request(bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(request.target, Address::parse("example.com:443").unwrap());
        assert!(request.user_id.is_empty());
        // 0.0.0.0 is a plain (if useless) SOCKS4 address, not SOCKS4a.
        let (request, used) = parse_request(b"\x04\x02\x00\x01\x00\x00\x00\x00\x00")
            .unwrap()
            .unwrap();
        assert_eq!(
            (request.command, request.target.to_string(), used),
            (Command::Bind, "0.0.0.0:1".into(), 9)
        );
    }

    #[test]
    fn waits_for_the_nul_terminators() {
        assert_eq!(
            parse_request(b"\x04\x01\x00\x50\x7f\x00\x00\x01ali"),
            Ok(None)
        );
        assert_eq!(
            parse_request(b"\x04\x01\x00\x50\x00\x00\x00\x01\x00exam"),
            Ok(None)
        );
        assert_eq!(parse_request(b"\x04\x01\x00"), Ok(None));
    }

    #[test]
    fn rejects_bad_requests() {
        assert_eq!(
            parse_request(b"\x05\x01\x00"),
            Err(Socks4Error::BadVersion(5))
        );
        let mut long = b"\x04\x01\x00\x50\x7f\x00\x00\x01".to_vec();
        long.extend_from_slice(&[b'a'; 256]);
        assert_eq!(
            parse_request(&long),
            Err(Socks4Error::FieldTooLong("user id"))
        );
        let mut long = b"\x04\x01\x00\x50\x00\x00\x00\x01\x00".to_vec();
        long.extend_from_slice(&[b'a'; 256]);
        assert_eq!(
            parse_request(&long),
            Err(Socks4Error::FieldTooLong("domain name"))
        );
        assert_eq!(
            parse_request(b"\x04\x01\x00\x50\x00\x00\x00\x01\x00\x00"),
            Err(Socks4Error::EmptyDomain)
        );
        assert_eq!(
            parse_request(b"\x04\x01\x00\x50\x00\x00\x00\x01\x00a/b\x00"),
            Err(Socks4Error::BadDomain("a/b".into()))
        );
    }

    #[test]
    fn reply_bytes() {
        assert_eq!(encode_reply(REPLY_GRANTED), [0x00, 0x5A, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_reply(REPLY_FAILED)[1], 0x5B);
        assert_eq!(encode_reply(REPLY_REJECTED)[1], 0x5C);
        assert_eq!(encode_reply(REPLY_BAD_USER_ID)[1], 0x5D);
    }

    fn any_host() -> impl Strategy<Value = Host> {
        prop_oneof![
            any::<[u8; 4]>()
                .prop_filter("not a SOCKS4a marker", |o| !is_socks4a(Ipv4Addr::from(*o)))
                .prop_map(|o| Host::Ip(Ipv4Addr::from(o).into())),
            "[a-z][a-z0-9_-]{0,40}(\\.[a-z0-9-]{1,40}){0,5}".prop_map(Host::Domain),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            if let Ok(Some((_, used))) = parse_request(&bytes) {
                prop_assert!(used <= bytes.len() && used <= MAX_REQUEST_LEN);
            }
        }

        #[test]
        fn arbitrary_tails_after_a_valid_header_never_panic(
            socks4a in any::<bool>(),
            tail in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let mut bytes = vec![VERSION, 1, 0, 80, 0, 0, 0, if socks4a { 9 } else { 0 }];
            bytes.extend_from_slice(&tail);
            if let Ok(Some((_, used))) = parse_request(&bytes) {
                prop_assert!(used <= bytes.len() && used <= MAX_REQUEST_LEN);
            }
        }

        #[test]
        fn requests_round_trip(
            code in any::<u8>(),
            port in any::<u16>(),
            host in any_host(),
            user_id in proptest::collection::vec(1u8.., 0..=255),
            extra in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let command = Command::from_byte(code);
            let mut bytes = encode_request(command, port, &host, &user_id);
            let len = bytes.len();
            for cut in 0..len {
                prop_assert_eq!(parse_request(&bytes[..cut]), Ok(None));
            }
            bytes.extend_from_slice(&extra);
            let expected = Request { command, target: Address { host, port }, user_id };
            prop_assert_eq!(parse_request(&bytes), Ok(Some((expected, len))));
        }
    }
}
