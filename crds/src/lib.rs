//! The vocabulary shared by the `gost` proxy and the operator: GOST's configuration model.
//!
//! The types mirror GOST v3's YAML/JSON schema (services, chains, hops, nodes, each with
//! handler / listener / connector / dialer) so that GOST users' configuration files load
//! unchanged. [`load`] turns YAML or JSON text into a validated [`Config`]; every error names
//! the path of the offending field and what would have been accepted.
#![forbid(unsafe_code)]

pub mod config;
mod de;
pub mod load;
pub mod metadata;
#[cfg(feature = "kube")]
pub mod v1alpha1;

pub use config::*;
pub use load::{
    ConfigError, Format, from_str, from_value, nodes_from_json, parse_port, split_host_port,
    to_json, to_yaml, validate,
};
pub use metadata::Metadata;
