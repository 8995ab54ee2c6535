//! zmesh-xds: the wire types between workloads, proxies and the control plane.
//!
//! Generated from `proto/` at build time with a pure-Rust protobuf compiler. The services are
//! plain tonic services; their implementations live with the control plane (server side) and
//! the proxy (client side).
//!
//! Envoy's external authorization API (Istio's CUSTOM action) is here too, under Envoy's own
//! package names so that generated paths read like the protobuf ones:
//! `zmesh_xds::envoy::service::auth::v3::{CheckRequest, CheckResponse,
//! authorization_client::AuthorizationClient, authorization_server::{Authorization,
//! AuthorizationServer}}`.

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

/// Envoy's API packages (the subset zmesh speaks), with Envoy's package names and field numbers.
pub mod envoy {
    /// `envoy.service.*`.
    pub mod service {
        /// `envoy.service.auth.*`.
        pub mod auth {
            /// `envoy.service.auth.v3`: the `Authorization/Check` service and its messages.
            pub mod v3 {
                #![allow(missing_docs, clippy::all, clippy::unwrap_used, missing_debug_implementations)]
                tonic::include_proto!("envoy.service.auth.v3");
            }
        }
    }

    /// `envoy.config.*`.
    pub mod config {
        /// `envoy.config.core.*`.
        pub mod core {
            /// `envoy.config.core.v3`: addresses, headers and metadata.
            pub mod v3 {
                #![allow(missing_docs, clippy::all, clippy::unwrap_used, missing_debug_implementations)]
                tonic::include_proto!("envoy.config.core.v3");
            }
        }
    }

    /// `envoy.type.*`.
    pub mod r#type {
        /// `envoy.type.v3`: HTTP status codes.
        pub mod v3 {
            #![allow(missing_docs, clippy::all, clippy::unwrap_used, missing_debug_implementations)]
            include!(concat!(env!("OUT_DIR"), "/envoy.r#type.v3.rs"));
        }
    }
}

/// Google's API packages the Envoy messages refer to.
pub mod google {
    /// `google.rpc`: the status a CheckResponse carries.
    pub mod rpc {
        #![allow(missing_docs, clippy::all, clippy::unwrap_used, missing_debug_implementations)]
        tonic::include_proto!("google.rpc");
    }

    /// `google.protobuf`: the well-known types (Struct, Value, Timestamp, Any, wrappers).
    pub mod protobuf {
        #![allow(missing_docs, clippy::all, clippy::unwrap_used, missing_debug_implementations)]
        tonic::include_proto!("google.protobuf");
    }
}

/// The metadata key carrying the caller's bearer token.
pub const AUTHORIZATION: &str = "authorization";
