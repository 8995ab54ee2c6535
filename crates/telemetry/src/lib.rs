//! zmesh-telemetry: what the mesh tells operators — Prometheus metrics with Istio's standard
//! names and labels, and the small read-only HTTP endpoints (health, metrics, admin and status
//! APIs) that the proxy and the control plane serve them on.

pub mod endpoints;
pub mod metrics;
pub mod scrape;
