//! Prometheus series of this process, in one registry that the metrics endpoint serves.
//!
//! Series are created once, at first use, and registered here; label values are bounded by
//! the configuration (service and listener names), never by clients.

use std::sync::LazyLock;

use prometheus::{IntGaugeVec, Opts, Registry};

/// The registry the metrics endpoint serves.
pub fn registry() -> &'static Registry {
    static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);
    &REGISTRY
}

fn register<C: prometheus::core::Collector + Clone + 'static>(collector: C) -> C {
    registry()
        .register(Box::new(collector.clone()))
        .expect("metric names are unique");
    collector
}

/// Open plain-HTTP-tunnel sessions (pht, phts, h3) per service: a session whose client
/// vanished must leave this gauge once it is reclaimed.
pub static PHT_SESSIONS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new(
                "gost_pht_sessions",
                "Open plain HTTP tunnel sessions (pht, phts, h3)",
            ),
            &["service"],
        )
        .expect("valid metric"),
    )
});

/// The registry in Prometheus' text exposition format.
pub fn render() -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&registry().gather())
        .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
}
