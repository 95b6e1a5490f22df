//! SOCKS5 (RFC 1928) with username/password authentication (RFC 1929), for both the handler
//! and the connector. Pure functions over bytes.
//!
//! Parsers take the bytes received so far and return `Ok(Some((value, consumed)))` once a whole
//! message is there, `Ok(None)` while more bytes are needed, and an error naming what is wrong
//! as soon as the bytes cannot start a valid message. Every message is at most
//! [`MAX_MESSAGE_LEN`] bytes, so a caller buffering until a parser succeeds needs no more.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::addr::{Address, Host};

/// The protocol version, first byte of every RFC 1928 message.
pub const VERSION: u8 = 0x05;

/// The version byte of the RFC 1929 sub-negotiation.
pub const USER_PASS_VERSION: u8 = 0x01;

/// Method: no authentication.
pub const METHOD_NO_AUTH: u8 = 0x00;
/// Method: username/password (RFC 1929).
pub const METHOD_USER_PASS: u8 = 0x02;
/// The server's answer when it accepts none of the offered methods.
pub const METHOD_NO_ACCEPTABLE: u8 = 0xFF;

/// GOST's method 0x80: the rest of the session runs inside TLS, without authentication.
pub const METHOD_TLS: u8 = 0x80;

/// GOST's method 0x82: TLS first, then RFC 1929 inside it.
pub const METHOD_TLS_USER_PASS: u8 = 0x82;

/// Reply: the request succeeded.
pub const REPLY_SUCCEEDED: u8 = 0x00;
/// Reply: general SOCKS server failure.
pub const REPLY_GENERAL_FAILURE: u8 = 0x01;
/// Reply: connection not allowed by ruleset.
pub const REPLY_NOT_ALLOWED: u8 = 0x02;
/// Reply: network unreachable.
pub const REPLY_NETWORK_UNREACHABLE: u8 = 0x03;
/// Reply: host unreachable.
pub const REPLY_HOST_UNREACHABLE: u8 = 0x04;
/// Reply: connection refused.
pub const REPLY_CONNECTION_REFUSED: u8 = 0x05;
/// Reply: TTL expired.
pub const REPLY_TTL_EXPIRED: u8 = 0x06;
/// Reply: command not supported.
pub const REPLY_COMMAND_NOT_SUPPORTED: u8 = 0x07;
/// Reply: address type not supported.
pub const REPLY_ADDRESS_TYPE_NOT_SUPPORTED: u8 = 0x08;

const ATYP_IPV4: u8 = 0x01;
const ATYP_DOMAIN: u8 = 0x03;
const ATYP_IPV6: u8 = 0x04;

/// Longest variable field (method list, user name, password, domain name): its length is a
/// single byte.
const MAX_FIELD_LEN: usize = u8::MAX as usize;

/// `VER CMD/REP RSV ATYP` in front of the address of a request or reply.
const MESSAGE_HEADER_LEN: usize = 4;
const PORT_LEN: usize = 2;

/// Longest greeting: `VER NMETHODS` and 255 methods.
pub const MAX_GREETING_LEN: usize = 2 + MAX_FIELD_LEN;
/// Longest RFC 1929 request: `VER ULEN UNAME PLEN PASSWD` with 255-byte name and password.
pub const MAX_USER_PASS_LEN: usize = 3 + 2 * MAX_FIELD_LEN;
/// Longest request or reply: header, a length-prefixed 255-byte domain name, port.
pub const MAX_REQUEST_LEN: usize = MESSAGE_HEADER_LEN + 1 + MAX_FIELD_LEN + PORT_LEN;
/// Longest message either side sends.
pub const MAX_MESSAGE_LEN: usize = MAX_USER_PASS_LEN;

/// Bytes of a request or reply that tell its whole length (see [`message_len`]): the header
/// and, for a domain name, its length byte. Every request or reply is longer than this.
pub const MESSAGE_PREFIX_LEN: usize = MESSAGE_HEADER_LEN + 1;

/// What is wrong with a SOCKS5 message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Socks5Error {
    /// The first byte is not 0x05.
    #[error("bad SOCKS version {0:#04x} (expected 0x05)")]
    BadVersion(u8),
    /// A greeting with NMETHODS = 0.
    #[error("greeting offers zero authentication methods")]
    ZeroMethods,
    /// More methods than a greeting can carry.
    #[error("{0} authentication methods do not fit in a greeting (at most 255)")]
    TooManyMethods(usize),
    /// The RFC 1929 version byte is not 0x01.
    #[error("bad username/password version {0:#04x} (expected 0x01)")]
    BadUserPassVersion(u8),
    /// A field longer than its one-byte length can say.
    #[error("{field} is {len} bytes, longer than the 255 that fit")]
    FieldTooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// ATYP is not 0x01, 0x03 or 0x04.
    #[error("bad address type {0:#04x} (expected 0x01 IPv4, 0x03 domain or 0x04 IPv6)")]
    BadAddressType(u8),
    /// A domain address of length zero.
    #[error("empty domain name")]
    EmptyDomain,
    /// A domain address that is not a host name.
    #[error("domain name {0:?} is not a valid host name")]
    BadDomain(String),
}

/// A request command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// 0x01: open a TCP connection to the target.
    Connect,
    /// 0x02: accept one TCP connection on the server's side.
    Bind,
    /// 0x03: relay UDP datagrams.
    UdpAssociate,
    /// Any other code, kept so that the server can answer it (GOST's extensions among them:
    /// [`CMD_MUX_BIND`], [`CMD_UDP_TUN`]).
    Other(u8),
}

/// GOST's multiplexed BIND command.
pub const CMD_MUX_BIND: u8 = 0xF2;
/// GOST's UDP-over-TCP command (UDP datagrams carried on the SOCKS5 connection itself).
pub const CMD_UDP_TUN: u8 = 0xF3;

impl Command {
    /// The command a code stands for.
    pub fn from_byte(code: u8) -> Self {
        match code {
            0x01 => Command::Connect,
            0x02 => Command::Bind,
            0x03 => Command::UdpAssociate,
            other => Command::Other(other),
        }
    }

    /// The command's code.
    pub fn to_byte(self) -> u8 {
        match self {
            Command::Connect => 0x01,
            Command::Bind => 0x02,
            Command::UdpAssociate => 0x03,
            Command::Other(code) => code,
        }
    }
}

/// An RFC 1928 request: a command and its target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// What to do.
    pub command: Command,
    /// Where to.
    pub target: Address,
}

/// An RFC 1928 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// REP: [`REPLY_SUCCEEDED`] or a failure code.
    pub code: u8,
    /// BND.ADDR and BND.PORT; 0.0.0.0:0 when the server has nothing to say.
    pub bind: Address,
}

/// An RFC 1929 request. The fields are bytes because RFC 1929 does not say they are text.
#[derive(Clone, PartialEq, Eq)]
pub struct UserPass {
    /// UNAME.
    pub username: Vec<u8>,
    /// PASSWD.
    pub password: Vec<u8>,
}

impl fmt::Debug for UserPass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserPass")
            .field("username", &String::from_utf8_lossy(&self.username))
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Parses a greeting `05 NMETHODS METHODS...` into the offered methods.
pub fn parse_greeting(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, Socks5Error> {
    let Some(&version) = buf.first() else {
        return Ok(None);
    };
    if version != VERSION {
        return Err(Socks5Error::BadVersion(version));
    }
    let Some(&count) = buf.get(1) else {
        return Ok(None);
    };
    if count == 0 {
        return Err(Socks5Error::ZeroMethods);
    }
    let end = 2 + usize::from(count);
    Ok(buf.get(2..end).map(|methods| (methods.to_vec(), end)))
}

/// Encodes a greeting offering `methods`, in order of preference.
pub fn encode_greeting(methods: &[u8]) -> Result<Vec<u8>, Socks5Error> {
    if methods.is_empty() {
        return Err(Socks5Error::ZeroMethods);
    }
    let count =
        u8::try_from(methods.len()).map_err(|_| Socks5Error::TooManyMethods(methods.len()))?;
    let mut out = Vec::with_capacity(2 + methods.len());
    out.extend_from_slice(&[VERSION, count]);
    out.extend_from_slice(methods);
    Ok(out)
}

/// The server's choice among the `offered` methods, as GOST's selector makes it
/// (gost-wire.md §5.1): with `tls` allowed, GOST's TLS methods win when offered (0x82 when
/// credentials are required, 0x80 otherwise); then username/password when credentials are
/// required, no authentication otherwise; [`METHOD_NO_ACCEPTABLE`] when the client offered
/// neither.
pub fn select_method(offered: &[u8], auth_required: bool, tls: bool) -> u8 {
    let (with_tls, plain) = if auth_required {
        (METHOD_TLS_USER_PASS, METHOD_USER_PASS)
    } else {
        (METHOD_TLS, METHOD_NO_AUTH)
    };
    if tls && offered.contains(&with_tls) {
        with_tls
    } else if offered.contains(&plain) {
        plain
    } else {
        METHOD_NO_ACCEPTABLE
    }
}

/// Encodes the server's method selection `05 METHOD`.
pub fn encode_method_reply(method: u8) -> [u8; 2] {
    [VERSION, method]
}

/// Parses the server's method selection into the chosen method.
pub fn parse_method_reply(buf: &[u8]) -> Result<Option<(u8, usize)>, Socks5Error> {
    match *buf {
        [] => Ok(None),
        [version, ..] if version != VERSION => Err(Socks5Error::BadVersion(version)),
        [_] => Ok(None),
        [_, method, ..] => Ok(Some((method, 2))),
    }
}

/// Parses an RFC 1929 request `01 ULEN UNAME PLEN PASSWD`. Empty fields are accepted, as GOST
/// does: a GOST user with an empty password may send none.
pub fn parse_user_pass(buf: &[u8]) -> Result<Option<(UserPass, usize)>, Socks5Error> {
    let Some(&version) = buf.first() else {
        return Ok(None);
    };
    if version != USER_PASS_VERSION {
        return Err(Socks5Error::BadUserPassVersion(version));
    }
    let Some((username, rest)) = length_prefixed(&buf[1..]) else {
        return Ok(None);
    };
    let Some((password, _)) = length_prefixed(rest) else {
        return Ok(None);
    };
    let consumed = 3 + username.len() + password.len();
    let creds = UserPass {
        username: username.to_vec(),
        password: password.to_vec(),
    };
    Ok(Some((creds, consumed)))
}

/// A one-byte length and that many bytes, and what follows; `None` when incomplete.
fn length_prefixed(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&len, rest) = buf.split_first()?;
    let len = usize::from(len);
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// Encodes an RFC 1929 request.
pub fn encode_user_pass(username: &[u8], password: &[u8]) -> Result<Vec<u8>, Socks5Error> {
    let field_len = |field: &'static str, value: &[u8]| {
        u8::try_from(value.len()).map_err(|_| Socks5Error::FieldTooLong {
            field,
            len: value.len(),
        })
    };
    let username_len = field_len("username", username)?;
    let password_len = field_len("password", password)?;
    let mut out = Vec::with_capacity(3 + username.len() + password.len());
    out.extend_from_slice(&[USER_PASS_VERSION, username_len]);
    out.extend_from_slice(username);
    out.push(password_len);
    out.extend_from_slice(password);
    Ok(out)
}

/// Encodes the RFC 1929 status: `01 00` on success, `01 01` on failure.
pub fn encode_user_pass_reply(success: bool) -> [u8; 2] {
    [USER_PASS_VERSION, if success { 0x00 } else { 0x01 }]
}

/// Parses the RFC 1929 status into success (status 0) or failure (any other status).
pub fn parse_user_pass_reply(buf: &[u8]) -> Result<Option<(bool, usize)>, Socks5Error> {
    match *buf {
        [] => Ok(None),
        [version, ..] if version != USER_PASS_VERSION => {
            Err(Socks5Error::BadUserPassVersion(version))
        }
        [_] => Ok(None),
        [_, status, ..] => Ok(Some((status == 0x00, 2))),
    }
}

/// The whole length of a request or reply, known from its first [`MESSAGE_PREFIX_LEN`] bytes
/// (fewer for IP addresses), so that a client can read exactly the reply and leave the tunnel
/// bytes behind it unread. The reserved byte is not checked, as GOST does not check it.
pub fn message_len(buf: &[u8]) -> Result<Option<usize>, Socks5Error> {
    let Some(&version) = buf.first() else {
        return Ok(None);
    };
    if version != VERSION {
        return Err(Socks5Error::BadVersion(version));
    }
    let Some(&atyp) = buf.get(3) else {
        return Ok(None);
    };
    let address_len = match atyp {
        ATYP_IPV4 => 4,
        ATYP_IPV6 => 16,
        ATYP_DOMAIN => match buf.get(4) {
            Some(&len) => 1 + usize::from(len),
            None => return Ok(None),
        },
        other => return Err(Socks5Error::BadAddressType(other)),
    };
    Ok(Some(MESSAGE_HEADER_LEN + address_len + PORT_LEN))
}

/// Parses a request `05 CMD RSV ATYP DST.ADDR DST.PORT`.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, Socks5Error> {
    Ok(parse_message(buf)?.map(|(command, target, consumed)| {
        let request = Request {
            command: Command::from_byte(command),
            target,
        };
        (request, consumed)
    }))
}

/// Encodes a request. Fails only for a domain name longer than 255 bytes.
pub fn encode_request(command: Command, target: &Address) -> Result<Vec<u8>, Socks5Error> {
    let mut out = Vec::with_capacity(MAX_REQUEST_LEN);
    out.extend_from_slice(&[VERSION, command.to_byte(), 0x00]);
    match &target.host {
        Host::Ip(ip) => put_ip(&mut out, *ip),
        Host::Domain(name) => {
            if name.is_empty() {
                return Err(Socks5Error::EmptyDomain);
            }
            let len = u8::try_from(name.len()).map_err(|_| Socks5Error::FieldTooLong {
                field: "domain name",
                len: name.len(),
            })?;
            out.extend_from_slice(&[ATYP_DOMAIN, len]);
            out.extend_from_slice(name.as_bytes());
        }
    }
    out.extend_from_slice(&target.port.to_be_bytes());
    Ok(out)
}

/// Parses a reply `05 REP RSV ATYP BND.ADDR BND.PORT`.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, Socks5Error> {
    Ok(parse_message(buf)?.map(|(code, bind, consumed)| (Reply { code, bind }, consumed)))
}

/// Encodes a reply. A server's bound address is always an IP address; without one the reply
/// carries IPv4 0.0.0.0:0, as GOST sends it.
pub fn encode_reply(code: u8, bind: Option<SocketAddr>) -> Vec<u8> {
    let bind = bind.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut out = Vec::with_capacity(MESSAGE_HEADER_LEN + 16 + PORT_LEN);
    out.extend_from_slice(&[VERSION, code, 0x00]);
    put_ip(&mut out, bind.ip());
    out.extend_from_slice(&bind.port().to_be_bytes());
    out
}

/// What a reply code means, for error messages.
pub fn reply_meaning(code: u8) -> &'static str {
    match code {
        REPLY_SUCCEEDED => "succeeded",
        REPLY_GENERAL_FAILURE => "general SOCKS server failure",
        REPLY_NOT_ALLOWED => "connection not allowed by ruleset",
        REPLY_NETWORK_UNREACHABLE => "network unreachable",
        REPLY_HOST_UNREACHABLE => "host unreachable",
        REPLY_CONNECTION_REFUSED => "connection refused",
        REPLY_TTL_EXPIRED => "TTL expired",
        REPLY_COMMAND_NOT_SUPPORTED => "command not supported",
        REPLY_ADDRESS_TYPE_NOT_SUPPORTED => "address type not supported",
        _ => "unassigned",
    }
}

fn put_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(ip) => {
            out.push(ATYP_IPV4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(ATYP_IPV6);
            out.extend_from_slice(&ip.octets());
        }
    }
}

/// Requests and replies share one layout; returns the second byte (CMD or REP), the address
/// and the length.
fn parse_message(buf: &[u8]) -> Result<Option<(u8, Address, usize)>, Socks5Error> {
    let Some(len) = message_len(buf)? else {
        return Ok(None);
    };
    let Some(message) = buf.get(..len) else {
        return Ok(None);
    };
    let (head, port) = message.split_at(len - PORT_LEN);
    let port = u16::from_be_bytes([port[0], port[1]]);
    let address = &head[MESSAGE_HEADER_LEN..];
    let target = match head[3] {
        ATYP_IPV4 => {
            let mut octets = [0; 4];
            octets.copy_from_slice(address);
            Address::from_socket(SocketAddr::from((octets, port)))
        }
        ATYP_IPV6 => {
            let mut octets = [0; 16];
            octets.copy_from_slice(address);
            Address::from_socket(SocketAddr::from((octets, port)))
        }
        ATYP_DOMAIN => parse_domain(&address[1..], port)?,
        other => return Err(Socks5Error::BadAddressType(other)),
    };
    Ok(Some((head[1], target, len)))
}

/// A domain name as the client sent it; one that spells an IP address becomes that address.
fn parse_domain(name: &[u8], port: u16) -> Result<Address, Socks5Error> {
    if name.is_empty() {
        return Err(Socks5Error::EmptyDomain);
    }
    let bad = || Socks5Error::BadDomain(String::from_utf8_lossy(name).into_owned());
    let text = std::str::from_utf8(name).map_err(|_| bad())?;
    Address::from_host(text, port).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;

    fn addr(s: &str) -> Address {
        Address::parse(s).unwrap()
    }

    #[test]
    fn answers_gost_greetings_without_tls() {
        // GOST with auth offers 00 02 80 82; without TLS on our side, 02 is the pick.
        let (methods, used) = parse_greeting(&[0x05, 0x04, 0x00, 0x02, 0x80, 0x82])
            .unwrap()
            .unwrap();
        assert_eq!(
            (methods.as_slice(), used),
            (&[0x00, 0x02, 0x80, 0x82][..], 6)
        );
        assert_eq!(
            encode_method_reply(select_method(&methods, true, false)),
            [0x05, 0x02]
        );

        let (methods, used) = parse_greeting(&[0x05, 0x02, 0x00, 0x80]).unwrap().unwrap();
        assert_eq!(used, 4);
        assert_eq!(
            encode_method_reply(select_method(&methods, false, false)),
            [0x05, 0x00]
        );
    }

    #[test]
    fn selects_no_acceptable_when_the_needed_method_is_missing() {
        assert_eq!(select_method(&[0x00], true, true), METHOD_NO_ACCEPTABLE);
        assert_eq!(select_method(&[0x02], false, true), METHOD_NO_ACCEPTABLE);
        assert_eq!(
            select_method(&[0x80, 0x82], false, false),
            METHOD_NO_ACCEPTABLE
        );
        // GOST clients' greetings (§5.1) and what a GOST server picks for them.
        assert_eq!(select_method(&[0x00, 0x80], false, true), METHOD_TLS);
        assert_eq!(
            select_method(&[0x00, 0x02, 0x80, 0x82], true, true),
            METHOD_TLS_USER_PASS
        );
        assert_eq!(
            select_method(&[0x00, 0x02, 0x80, 0x82], false, true),
            METHOD_TLS
        );
        // notls: the plain methods.
        assert_eq!(
            select_method(&[0x00, 0x02, 0x80, 0x82], true, false),
            METHOD_USER_PASS
        );
        assert_eq!(select_method(&[0x00, 0x80], false, false), METHOD_NO_AUTH);
        // 0x82 needs credentials; without them on the server, 0x80 or nothing.
        assert_eq!(select_method(&[0x82], false, true), METHOD_NO_ACCEPTABLE);
    }

    #[test]
    fn rejects_bad_greetings_early() {
        assert_eq!(parse_greeting(&[0x05, 0x00]), Err(Socks5Error::ZeroMethods));
        assert_eq!(parse_greeting(&[0x04]), Err(Socks5Error::BadVersion(0x04)));
        assert_eq!(
            parse_greeting(b"GET / HTTP/1.1"),
            Err(Socks5Error::BadVersion(b'G'))
        );
        assert_eq!(parse_greeting(&[]), Ok(None));
        assert_eq!(parse_greeting(&[0x05, 0x02, 0x00]), Ok(None));
        assert_eq!(encode_greeting(&[]), Err(Socks5Error::ZeroMethods));
        assert_eq!(
            encode_greeting(&[0; 256]),
            Err(Socks5Error::TooManyMethods(256))
        );
    }

    #[test]
    fn leaves_pipelined_bytes_unconsumed() {
        let (methods, used) = parse_greeting(&[0x05, 0x01, 0x00, 0x05, 0x01])
            .unwrap()
            .unwrap();
        assert_eq!((methods, used), (vec![0x00], 3));
    }

    #[test]
    fn user_pass_bytes() {
        let encoded = encode_user_pass(b"user", b"pass").unwrap();
        assert_eq!(encoded, b"\x01\x04user\x04pass");
        let (creds, used) = parse_user_pass(&encoded).unwrap().unwrap();
        assert_eq!(
            (creds.username.as_slice(), creds.password.as_slice(), used),
            (&b"user"[..], &b"pass"[..], 11)
        );
        assert_eq!(parse_user_pass(b"\x01\x00\x00").unwrap().unwrap().1, 3);
        assert_eq!(parse_user_pass(b"\x01\x04user\x04pas"), Ok(None));
        assert_eq!(
            parse_user_pass(b"\x05\x01\x00"),
            Err(Socks5Error::BadUserPassVersion(0x05))
        );
        assert!(matches!(
            encode_user_pass(&[b'a'; 256], b""),
            Err(Socks5Error::FieldTooLong {
                field: "username",
                len: 256
            })
        ));
        assert_eq!(encode_user_pass_reply(true), [0x01, 0x00]);
        assert_eq!(encode_user_pass_reply(false), [0x01, 0x01]);
        assert_eq!(parse_user_pass_reply(&[0x01, 0x00]), Ok(Some((true, 2))));
        assert_eq!(parse_user_pass_reply(&[0x01, 0x01]), Ok(Some((false, 2))));
        assert_eq!(
            parse_user_pass_reply(&[0x05, 0x00]),
            Err(Socks5Error::BadUserPassVersion(0x05))
        );
    }

    #[test]
    fn debug_hides_the_password() {
        let creds = UserPass {
            username: b"user".to_vec(),
            password: b"secret".to_vec(),
        };
        let text = format!("{creds:?}");
        assert!(text.contains("user") && !text.contains("secret"), "{text}");
    }

    #[test]
    fn request_bytes() {
        let ipv4 = encode_request(Command::Connect, &addr("1.2.3.4:80")).unwrap();
        assert_eq!(ipv4, [0x05, 0x01, 0x00, 0x01, 1, 2, 3, 4, 0x00, 0x50]);
        let domain = encode_request(Command::Connect, &addr("example.com:443")).unwrap();
        assert_eq!(domain, b"\x05\x01\x00\x03\x0bexample.com\x01\xbb");
        let ipv6 = encode_request(Command::UdpAssociate, &addr("[::1]:53")).unwrap();
        let mut expected = vec![0x05, 0x03, 0x00, 0x04];
        expected.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        expected.extend_from_slice(&[0x00, 0x35]);
        assert_eq!(ipv6, expected);

        let (request, used) = parse_request(&domain).unwrap().unwrap();
        assert_eq!(used, domain.len());
        assert_eq!(request.command, Command::Connect);
        assert_eq!(request.target, addr("example.com:443"));
    }

    #[test]
    fn a_domain_spelling_an_ip_becomes_that_ip() {
        let (request, _) = parse_request(b"\x05\x01\x00\x03\x09127.0.0.1\x00\x50")
            .unwrap()
            .unwrap();
        assert_eq!(request.target.host, Host::Ip(Ipv4Addr::LOCALHOST.into()));
    }

    #[test]
    fn rejects_bad_requests() {
        assert_eq!(
            parse_request(&[0x04, 0x01]),
            Err(Socks5Error::BadVersion(0x04))
        );
        assert_eq!(
            parse_request(&[0x05, 0x01, 0x00, 0x02]),
            Err(Socks5Error::BadAddressType(0x02))
        );
        assert_eq!(
            parse_request(&[0x05, 0x01, 0x00, 0x03, 0x00, 0x00, 0x50]),
            Err(Socks5Error::EmptyDomain)
        );
        assert!(matches!(
            parse_request(b"\x05\x01\x00\x03\x03a b\x00\x50"),
            Err(Socks5Error::BadDomain(name)) if name == "a b"
        ));
        assert!(matches!(
            parse_request(b"\x05\x01\x00\x03\x02\xff\xfe\x00\x50"),
            Err(Socks5Error::BadDomain(_))
        ));
        let long = Address {
            host: Host::Domain("a".repeat(256)),
            port: 1,
        };
        assert!(matches!(
            encode_request(Command::Connect, &long),
            Err(Socks5Error::FieldTooLong {
                field: "domain name",
                len: 256
            })
        ));
    }

    #[test]
    fn keeps_unknown_commands_for_the_reply() {
        let (request, _) = parse_request(&[0x05, 0xF3, 0x00, 0x01, 0, 0, 0, 0, 0, 0])
            .unwrap()
            .unwrap();
        assert_eq!(request.command, Command::Other(0xF3));
    }

    #[test]
    fn reply_bytes() {
        assert_eq!(
            encode_reply(REPLY_CONNECTION_REFUSED, None),
            [0x05, 0x05, 0x00, 0x01, 0, 0, 0, 0, 0, 0]
        );
        let bound = encode_reply(REPLY_SUCCEEDED, Some("10.0.0.1:1080".parse().unwrap()));
        assert_eq!(bound, [0x05, 0x00, 0x00, 0x01, 10, 0, 0, 1, 0x04, 0x38]);
        // A reply naming a domain, which other servers may send.
        let (reply, used) = parse_reply(b"\x05\x00\x00\x03\x04host\x00\x01tunnel")
            .unwrap()
            .unwrap();
        assert_eq!((reply.code, reply.bind, used), (0, addr("host:1"), 11));
        assert_eq!(message_len(b"\x05\x00\x00\x03\x04"), Ok(Some(11)));
        assert_eq!(message_len(b"\x05\x00\x00\x01"), Ok(Some(10)));
        assert_eq!(message_len(b"\x05\x00\x00\x04"), Ok(Some(22)));
        assert_eq!(
            reply_meaning(REPLY_COMMAND_NOT_SUPPORTED),
            "command not supported"
        );
    }

    fn any_host() -> impl Strategy<Value = Host> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(|o| Host::Ip(IpAddr::from(o))),
            any::<[u8; 16]>().prop_map(|o| Host::Ip(IpAddr::from(o))),
            // Starts with a letter so that it never spells an IP address.
            "[a-z][a-z0-9_-]{0,40}(\\.[a-z0-9-]{1,40}){0,5}".prop_map(Host::Domain),
        ]
    }

    fn any_address() -> impl Strategy<Value = Address> {
        (any_host(), any::<u16>()).prop_map(|(host, port)| Address { host, port })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_greeting(&bytes);
            let _ = parse_method_reply(&bytes);
            let _ = parse_user_pass(&bytes);
            let _ = parse_user_pass_reply(&bytes);
            let _ = message_len(&bytes);
            if let Ok(Some((_, used))) = parse_request(&bytes) {
                prop_assert!(used <= bytes.len() && used <= MAX_REQUEST_LEN);
            }
            let _ = parse_reply(&bytes);
        }

        #[test]
        fn arbitrary_tails_after_a_valid_header_never_panic(
            atyp in 0u8..6,
            tail in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut bytes = vec![VERSION, 0x01, 0x00, atyp];
            bytes.extend_from_slice(&tail);
            let _ = parse_request(&bytes);
            let mut bytes = vec![USER_PASS_VERSION];
            bytes.extend_from_slice(&tail);
            let _ = parse_user_pass(&bytes);
        }

        #[test]
        fn requests_round_trip(code in any::<u8>(), target in any_address(), extra in proptest::collection::vec(any::<u8>(), 0..8)) {
            let command = Command::from_byte(code);
            let mut bytes = encode_request(command, &target).unwrap();
            let len = bytes.len();
            for cut in 0..len {
                prop_assert_eq!(parse_request(&bytes[..cut]), Ok(None));
            }
            prop_assert_eq!(message_len(&bytes[..MESSAGE_PREFIX_LEN]), Ok(Some(len)));
            bytes.extend_from_slice(&extra);
            prop_assert_eq!(parse_request(&bytes), Ok(Some((Request { command, target }, len))));
        }

        #[test]
        fn replies_round_trip(code in any::<u8>(), bind in any::<SocketAddr>()) {
            let bytes = encode_reply(code, Some(bind));
            for cut in 0..bytes.len() {
                prop_assert_eq!(parse_reply(&bytes[..cut]), Ok(None));
            }
            let reply = Reply { code, bind: Address::from_socket(bind) };
            prop_assert_eq!(parse_reply(&bytes), Ok(Some((reply, bytes.len()))));
        }

        #[test]
        fn greetings_round_trip(methods in proptest::collection::vec(any::<u8>(), 1..=255)) {
            let bytes = encode_greeting(&methods).unwrap();
            prop_assert_eq!(parse_greeting(&bytes[..bytes.len() - 1]), Ok(None));
            prop_assert_eq!(parse_greeting(&bytes), Ok(Some((methods, bytes.len()))));
        }

        #[test]
        fn user_pass_round_trips(
            username in proptest::collection::vec(any::<u8>(), 0..=255),
            password in proptest::collection::vec(any::<u8>(), 0..=255),
        ) {
            let bytes = encode_user_pass(&username, &password).unwrap();
            prop_assert!(bytes.len() <= MAX_USER_PASS_LEN);
            for cut in 0..bytes.len() {
                prop_assert_eq!(parse_user_pass(&bytes[..cut]), Ok(None));
            }
            let expected = UserPass { username, password };
            prop_assert_eq!(parse_user_pass(&bytes), Ok(Some((expected, bytes.len()))));
        }
    }
}
