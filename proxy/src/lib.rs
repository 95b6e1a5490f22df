//! The `gost` proxy: GOST's HTTP tunnels with GOST's command line and configuration.
//!
//! A service is a listener (transport) plus a handler (proxy protocol); a handler reaches its
//! targets directly or through a chain of hops, each hop a set of nodes reached with a dialer
//! (transport) and spoken to with a connector (proxy protocol). Protocol codecs live in
//! [`codec`] and do no I/O.
#![forbid(unsafe_code)]

pub mod addr;
pub mod admin;
pub mod auth;
pub mod chain;
pub mod cli;
pub mod codec;
pub mod conn;
pub mod connector;
pub mod copytune;
pub mod dialer;
pub mod grpc;
pub mod h2pool;
pub mod h3;
pub mod handler;
pub mod listener;
pub mod metrics;
pub mod pht;
pub mod pipe;
pub mod server;
#[cfg(target_os = "linux")]
pub mod splice;
pub mod supervisor;
pub mod tls;
pub mod watch;
pub mod ws;
