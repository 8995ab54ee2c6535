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

/// How a zmesh bootstrap token starts: `zmesh-bootstrap:v1:<spiffe-id>:<expiry>:<mac>`. The
/// control plane issues and checks them; a proxy reads the identity its own token names, to
/// ask for a certificate of that identity.
pub const BOOTSTRAP_TOKEN_PREFIX: &str = "zmesh-bootstrap:v1:";

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::envoy::service::auth::v3 as auth;
    use super::envoy::r#type::v3::HttpStatus;

    // Bytes written by hand from Envoy's field numbers: a peer built from Envoy's own protos
    // reads exactly these.
    #[test]
    fn a_denied_check_response_has_envoys_wire_form() {
        let response = auth::CheckResponse {
            status: Some(super::google::rpc::Status { code: 7, ..Default::default() }),
            http_response: Some(auth::check_response::HttpResponse::DeniedResponse(auth::DeniedHttpResponse {
                status: Some(HttpStatus { code: 401 }),
                headers: vec![],
                body: "x".into(),
            })),
            dynamic_metadata: None,
        };
        assert_eq!(
            response.encode_to_vec(),
            [0x0a, 0x02, 0x08, 0x07, 0x12, 0x08, 0x0a, 0x03, 0x08, 0x91, 0x03, 0x1a, 0x01, b'x']
        );
    }

    #[test]
    fn a_check_request_puts_the_path_where_envoy_does() {
        let request = auth::CheckRequest {
            attributes: Some(auth::AttributeContext {
                request: Some(auth::attribute_context::Request {
                    time: None,
                    http: Some(auth::attribute_context::HttpRequest { path: "/".into(), ..Default::default() }),
                }),
                ..Default::default()
            }),
        };
        assert_eq!(request.encode_to_vec(), [0x0a, 0x07, 0x22, 0x05, 0x12, 0x03, 0x22, 0x01, b'/']);
    }
}
