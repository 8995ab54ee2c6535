//! zmesh-xds: the wire types between workloads, proxies and the control plane.
//!
//! Generated from `proto/` at build time with a pure-Rust protobuf compiler. The services are
//! plain tonic services; their implementations live with the control plane (server side) and
//! the proxy (client side).

/// Certificate signing (`zmesh.ca.v1`).
pub mod ca {
    #![allow(missing_docs, clippy::all, clippy::unwrap_used, missing_debug_implementations)]
    tonic::include_proto!("zmesh.ca.v1");
}

/// Configuration push (`zmesh.config.v1`).
pub mod config {
    #![allow(missing_docs, clippy::all, clippy::unwrap_used, missing_debug_implementations)]
    tonic::include_proto!("zmesh.config.v1");
}

/// The metadata key carrying the caller's bearer token.
pub const AUTHORIZATION: &str = "authorization";
