//! Plain HTTP tunnel bodies: a pull or push body cut into pieces of any size must give the same
//! lines as the whole body split at its newlines, up to the first line over the limit; a line
//! that decodes re-encodes to itself; a query string gives a token within its bound or an error
//! (never a panic).
#![no_main]

use gost_proxy::codec::pht::{self, LineTooLong, Lines};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [max, seed, body @ ..] = data else {
        return;
    };
    let max = usize::from(*max);

    let mut reader = Lines::new(max);
    let mut got = Vec::new();
    let mut failed = None;
    // Pieces of 1 to 64 bytes, their lengths drawn from the seed byte.
    let mut state = u32::from(*seed);
    let mut pieces = Vec::new();
    let mut left = body;
    while !left.is_empty() {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let (piece, rest) = left.split_at(left.len().min(1 + (state >> 16) as usize % 64));
        pieces.push(piece);
        left = rest;
    }
    'pieces: for chunk in pieces {
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
    let whole = over.unwrap_or(parts.len());
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
