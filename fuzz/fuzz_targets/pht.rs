//! Plain HTTP tunnel bodies: a pull or push body cut into pieces of any size must give the same
//! lines as the whole body split at its newlines, up to the first line over the limit; a line
//! that decodes re-encodes to itself; a query string gives a bounded token or an error.
#![no_main]

use gost_proxy::codec::pht::{self, LineTooLong, Lines};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [max, piece, body @ ..] = data else {
        return;
    };
    let (max, piece) = (usize::from(*max), usize::from(*piece) + 1);

    let mut reader = Lines::new(max);
    let mut got = Vec::new();
    let mut failed = None;
    'pieces: for chunk in body.chunks(piece) {
        reader.extend(chunk);
        loop {
            match reader.next_line() {
                Ok(Some(line)) => got.push(line),
                Ok(None) => break,
                Err(e) => {
                    failed = Some(e);
                    break 'pieces;
                }
            }
        }
    }

    let mut parts: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    let rest = parts.pop().unwrap_or_default();
    let over = parts.iter().position(|line| line.len() > max);
    let whole = over.map_or(parts.len(), |at| at);
    assert_eq!(got.len(), whole);
    for (line, part) in got.iter().zip(&parts) {
        assert_eq!(&line[..], part.strip_suffix(b"\r").unwrap_or(part));
        if let Ok(data) = pht::decode_line(line) {
            assert_eq!(&pht::encode_line(&data)[..], [&line[..], b"\n"].concat());
        }
    }
    if over.is_some() || rest.len() > max {
        assert_eq!(failed, Some(LineTooLong));
    } else {
        assert_eq!(failed, None);
        assert_eq!(&reader.rest()[..], rest);
    }

    if let Ok(query) = std::str::from_utf8(body)
        && let Ok(token) = pht::token(query, max)
    {
        assert!(!token.is_empty() && token.len() <= max);
    }
});
