//! The `gost` proxy: GOST's HTTP tunnels with GOST's command line and configuration.
//!
//! A service is a listener (transport) plus a handler (proxy protocol); a handler reaches its
//! targets directly or through a chain of hops, each hop a set of nodes reached with a dialer
//! (transport) and spoken to with a connector (proxy protocol). Protocol codecs live in
//! [`codec`] and do no I/O.
// Audited exceptions, `tcpinfo`'s getsockopt(2) and its borrowing of a socket by number, are
// allowed where they are made.
#![deny(unsafe_code)]

pub mod addr;
pub mod admin;
pub mod auth;
pub mod chain;
pub mod cli;
pub mod codec;
pub mod conn;
pub mod connector;
pub mod copytune;
pub mod datafiles;
pub mod dialer;
pub mod grpc;
pub mod h2pool;
pub mod h3;
pub mod handler;
pub mod listener;
pub mod logjson;
pub mod metrics;
pub mod pht;
pub mod pipe;
pub mod server;
#[cfg(target_os = "linux")]
pub mod splice;
pub mod supervisor;
pub mod tcpinfo;
pub mod tls;
pub mod watch;
pub mod web;
pub mod ws;

/// An error and its sources, `: `-separated: hyper's own text is often only "http2 error" or
/// "error writing a body to connection", and the cause is in the sources.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(err) = source {
        let more = err.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = err.source();
    }
    text
}
