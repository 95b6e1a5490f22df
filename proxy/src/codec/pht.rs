//! Plain HTTP tunnel bodies (gost-wire.md §8.6): `\n`-ended lines of standard base64, one per
//! push and a stream of them per pull, and the `token` of a request's query string. Pure
//! functions over bytes, no I/O: the client's pull loop and the server's push endpoint feed the
//! bytes of a body to [`Lines`] as they arrive.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Bytes, BytesMut};

/// `base64(chunk) + "\n"`: one line of a push or a pull.
pub fn encode_line(chunk: &[u8]) -> Bytes {
    let mut line = vec![0; base64::encoded_len(chunk.len(), true).unwrap_or(0) + 1];
    let n = BASE64
        .encode_slice(chunk, &mut line)
        .expect("buffer sized for the encoding");
    line[n] = b'\n';
    line.truncate(n + 1);
    Bytes::from(line)
}

/// The data of one line (without its `\n`; a `\r` before it already taken off by [`Lines`]).
pub fn decode_line(line: &[u8]) -> Result<Vec<u8>, base64::DecodeError> {
    BASE64.decode(line)
}

/// A line longer than the [`Lines`] reader's limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineTooLong;

/// Splits a body that arrives in pieces into its `\n`-ended lines, none longer than a limit.
///
/// A line is given without its `\n` and without a `\r` just before it. A line longer than the
/// limit (counting such a `\r`) is an error at the first [`Lines::next_line`] after more than
/// the limit of it arrived, so a peer that never sends a newline cannot make the reader hold
/// more than the limit and one piece (a piece is a frame of the transport, bounded by it).
/// Each byte is searched for a newline once, however small the pieces (HTTP/3 delivers about
/// 1 KiB at a time).
#[derive(Debug)]
pub struct Lines {
    buf: BytesMut,
    /// Leading bytes of `buf` known to hold no `\n`.
    searched: usize,
    max: usize,
}

impl Lines {
    /// A reader of lines of at most `max` bytes, without their `\n`.
    pub fn new(max: usize) -> Self {
        Lines {
            buf: BytesMut::new(),
            searched: 0,
            max,
        }
    }

    /// Adds the next piece of the body.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole line, or `None` until more of the body arrives. When no byte is left
    /// held, the buffer is let go rather than kept at the size of the longest line for as long
    /// as the body lasts (a pull lasts as long as its tunnel).
    pub fn next_line(&mut self) -> Result<Option<Bytes>, LineTooLong> {
        match self.buf[self.searched..].iter().position(|&b| b == b'\n') {
            Some(at) => {
                let end = self.searched + at;
                // Checked for every line, not only for one that arrived in pieces: one piece
                // can hold a whole line of any length.
                if end > self.max {
                    return Err(LineTooLong);
                }
                let mut line = self.buf.split_to(end + 1).freeze();
                self.searched = 0;
                line.truncate(end);
                if line.last() == Some(&b'\r') {
                    line.truncate(end - 1);
                }
                Ok(Some(line))
            }
            None if self.buf.len() > self.max => Err(LineTooLong),
            None => {
                self.searched = self.buf.len();
                if self.buf.is_empty() {
                    self.buf = BytesMut::new();
                }
                Ok(None)
            }
        }
    }

    /// What followed the last `\n` once the body ended: a last line without its end (GOST's
    /// client counts it as a line; its server and ours take a push without a newline as the
    /// client's close). Empty when the body ended with a newline.
    pub fn rest(self) -> Bytes {
        self.buf.freeze()
    }
}

/// Why a query string carries no usable token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("query parameter `token` is missing")]
    Missing,
    #[error("query parameter `token` is not UTF-8")]
    NotUtf8,
    #[error("query parameter `token` is empty")]
    Empty,
    #[error("query parameter `token` is too long")]
    TooLong,
}

/// The token of a query string (`token=...`, percent-decoded, `+` a space as in a form), of at
/// most `max_len` bytes.
pub fn token(query: &str, max_len: usize) -> Result<String, TokenError> {
    let raw = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        .ok_or(TokenError::Missing)?;
    let raw = raw.replace('+', " ");
    let token = percent_encoding::percent_decode_str(&raw)
        .decode_utf8()
        .map_err(|_| TokenError::NotUtf8)?;
    if token.is_empty() {
        return Err(TokenError::Empty);
    }
    if token.len() > max_len {
        return Err(TokenError::TooLong);
    }
    Ok(token.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What [`Lines`] must give for `body` whatever its pieces: its whole lines in order up to
    /// the first one over `max` (then an error), else the lines and the rest; an error also when
    /// the rest is over `max`.
    fn expected(body: &[u8], max: usize) -> (Vec<Vec<u8>>, Result<Vec<u8>, LineTooLong>) {
        let mut lines = Vec::new();
        let mut parts: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
        let rest = parts.pop().unwrap_or_default();
        for line in parts {
            if line.len() > max {
                return (lines, Err(LineTooLong));
            }
            lines.push(line.strip_suffix(b"\r").unwrap_or(line).to_vec());
        }
        if rest.len() > max {
            return (lines, Err(LineTooLong));
        }
        (lines, Ok(rest.to_vec()))
    }

    /// Feeds `body` to a [`Lines`] in pieces that end at `cuts`, as the pull loop does.
    fn read(
        body: &[u8],
        cuts: &[usize],
        max: usize,
    ) -> (Vec<Vec<u8>>, Result<Vec<u8>, LineTooLong>) {
        let mut reader = Lines::new(max);
        let mut lines = Vec::new();
        let mut at = 0;
        let mut ends: Vec<usize> = cuts.iter().map(|&c| c.min(body.len())).collect();
        ends.sort_unstable();
        ends.push(body.len());
        for end in ends {
            if end < at {
                continue;
            }
            reader.extend(&body[at..end]);
            at = end;
            loop {
                match reader.next_line() {
                    Ok(Some(line)) => lines.push(line.to_vec()),
                    Ok(None) => break,
                    Err(e) => return (lines, Err(e)),
                }
            }
        }
        (lines, Ok(reader.rest().to_vec()))
    }

    #[test]
    fn lines_arrive_whole_without_their_ends() {
        let body = b"YQ==\nYmM=\r\n\nZA";
        let (lines, rest) = read(body, &[1, 2, 7, 8, 9], 8);
        assert_eq!(lines, [&b"YQ=="[..], b"YmM=", b""]);
        assert_eq!(rest.unwrap(), b"ZA");
    }

    #[test]
    fn a_line_over_the_limit_fails_before_its_end_arrives() {
        let mut reader = Lines::new(4);
        reader.extend(b"ok\nabcd");
        assert_eq!(reader.next_line().unwrap().unwrap(), &b"ok"[..]);
        assert_eq!(reader.next_line(), Ok(None));
        reader.extend(b"e");
        assert_eq!(reader.next_line(), Err(LineTooLong));
        // Exactly the limit is accepted, with or without a `\r` that the limit counts.
        assert_eq!(read(b"abcd\n", &[], 4).0, [b"abcd"]);
        assert_eq!(read(b"abc\r\n", &[], 4).0, [b"abc"]);
        assert_eq!(read(b"abcd\r\n", &[], 4).1, Err(LineTooLong));
        // A whole long line in one piece, after a short one.
        assert_eq!(
            read(b"a\nabcdef\n", &[], 4),
            (vec![b"a".to_vec()], Err(LineTooLong))
        );
    }

    #[test]
    fn an_emptied_reader_lets_its_buffer_go() {
        let mut reader = Lines::new(1 << 20);
        reader.extend(&[b'A'; 40_000]);
        reader.extend(b"\n");
        assert_eq!(reader.next_line().unwrap().unwrap().len(), 40_000);
        assert_eq!(reader.next_line(), Ok(None));
        assert_eq!(reader.buf.capacity(), 0);
    }

    #[test]
    fn lines_round_trip_through_base64() {
        for chunk in [&b""[..], b"a", b"\n\r\x00\xff", &[7u8; 1000]] {
            let line = encode_line(chunk);
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(decode_line(&line[..line.len() - 1]).unwrap(), chunk);
        }
        assert!(decode_line(b"not base64!").is_err());
    }

    #[test]
    fn tokens_come_percent_decoded_and_bounded() {
        assert_eq!(token("a=1&token=ab%2Fc+d", 128).unwrap(), "ab/c d");
        assert_eq!(token("tokens=1", 128), Err(TokenError::Missing));
        assert_eq!(token("token=", 128), Err(TokenError::Empty));
        assert_eq!(token("token=%ff", 128), Err(TokenError::NotUtf8));
        assert_eq!(token("token=abcd", 3), Err(TokenError::TooLong));
        assert_eq!(token("token=abc", 3).unwrap(), "abc");
    }

    proptest! {
        #[test]
        fn lines_do_not_depend_on_how_the_body_is_cut(
            body in proptest::collection::vec(
                prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'A'), any::<u8>()], 0..200),
            cuts in proptest::collection::vec(0usize..200, 0..12),
            max in 0usize..40,
        ) {
            prop_assert_eq!(read(&body, &cuts, max), expected(&body, max));
        }
    }
}
