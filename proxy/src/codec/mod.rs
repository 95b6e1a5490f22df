//! Protocol codecs: pure functions over bytes, no I/O, unit-tested and fuzzed directly.

pub mod http;
pub mod pht;
pub mod relay;
pub mod socks4;
pub mod socks5;
