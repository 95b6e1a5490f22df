//! HTTP proxy heads: a client's request head as the `http` handler sees it (parsed by httparse,
//! as hyper does, then turned into a target and credentials), and an upstream proxy's answer
//! to CONNECT as the `http` connector reads it.
#![no_main]

use gost_proxy::codec::http::{
    basic_credentials, decode_gost_target, parse_response_head, proxy_target,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(head)) = parse_response_head(data) {
        assert!(head.len <= data.len());
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    if let Ok(httparse::Status::Complete(_)) = request.parse(data) {
        let method = request.method.unwrap_or_default();
        let path = request.path.unwrap_or_default();
        let (scheme, authority) = match path.split_once("://") {
            Some((scheme, rest)) => (Some(scheme), Some(rest.split('/').next().unwrap_or(""))),
            None if method == "CONNECT" => (None, Some(path)),
            None => (None, None),
        };
        let host = request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("host"))
            .and_then(|h| std::str::from_utf8(h.value).ok());
        let _ = proxy_target(method, scheme, authority, host);
        for header in request.headers.iter() {
            if header.name.eq_ignore_ascii_case("proxy-authorization") {
                let _ = basic_credentials(header.value);
            }
            if header.name.eq_ignore_ascii_case("gost-target")
                || header.name.eq_ignore_ascii_case("x-gost-target")
            {
                let _ = decode_gost_target(header.value);
            }
        }
    }
});
