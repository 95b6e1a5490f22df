//! Relay requests and responses as a client or a node may send them: the parsers must answer
//! "complete", "need more" or a specific error, and what parses must re-encode to itself (unknown
//! features aside, which the parsers skip).
#![no_main]

use gost_proxy::codec::relay;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let len = relay::message_len(data);
    if let Ok(Some((request, used))) = relay::parse_request(data) {
        assert!(used <= data.len());
        assert_eq!(len, Ok(Some(used)));
        let encoded = relay::encode_request(&request).expect("a parsed request re-encodes");
        assert!(encoded.len() <= used);
        let (again, again_used) = relay::parse_request(&encoded).unwrap().unwrap();
        assert_eq!((again, again_used), (request.clone(), encoded.len()));
        if let Some(addr) = request.addr() {
            let _ = addr.to_address();
        }
        let _ = request.user_auth();
        let _ = request.network();
    }
    if let Ok(Some((response, used))) = relay::parse_response(data) {
        assert!(used <= data.len());
        let encoded = relay::encode_response(&response).expect("a parsed response re-encodes");
        assert_eq!(relay::parse_response(&encoded).unwrap().unwrap().0, response);
    }
});
