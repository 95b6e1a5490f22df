//! SOCKS4/4a and SOCKS5 messages as a client or a server may send them: every parser must
//! answer "complete", "need more" or a specific error, and what parses must re-encode.
#![no_main]

use gost_proxy::codec::{socks4, socks5};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = socks5::parse_greeting(data);
    let _ = socks5::parse_method_reply(data);
    let _ = socks5::parse_user_pass(data);
    let _ = socks5::parse_user_pass_reply(data);
    let _ = socks5::message_len(data);
    if let Ok(Some((request, used))) = socks5::parse_request(data) {
        assert!(used <= data.len());
        let encoded = socks5::encode_request(request.command, &request.target).expect("re-encodes");
        let (again, _) = socks5::parse_request(&encoded).unwrap().unwrap();
        assert_eq!(again.target, request.target);
    }
    if let Ok(Some((_, used))) = socks5::parse_reply(data) {
        assert!(used <= data.len());
    }
    if let Ok(Some((_, used))) = socks4::parse_request(data) {
        assert!(used <= data.len());
    }
});
