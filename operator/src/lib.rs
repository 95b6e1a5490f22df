//! The gost-rs control plane: it turns `GostService` and `GostChain` resources into rendered
//! sidecar and gateway configurations, keeps them current, and injects the sidecar.
//!
//! It depends on `gost-api` (the vocabulary) and never on the data plane.
#![forbid(unsafe_code)]

pub mod certs;
pub mod controller;
pub mod gateway;
pub mod group;
pub mod inject;
pub mod lease;
pub mod metrics;
pub mod render;
pub mod status;
pub mod webhook;
