//! Envoy's gRPC ext_authz API (`envoy.service.auth.v3.Authorization/Check`).
//!
//! The CheckRequest is read into [`RequestAttributes`]; the decision goes back as a
//! CheckResponse: `OK` with an `OkHttpResponse` (headers for the upstream), or
//! `PERMISSION_DENIED` with a `DeniedHttpResponse` (status, headers and body for the client).
//! A request that cannot be read (claims in an unexpected shape, several token payloads and
//! no way to choose) is denied, never passed on.

use std::collections::BTreeMap;
use std::sync::Arc;

use zmesh_xds::envoy::config::core::v3::{Address, HeaderValue, HeaderValueOption, address};
use zmesh_xds::envoy::service::auth::v3::authorization_server::Authorization;
use zmesh_xds::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse, attribute_context,
    check_response,
};
use zmesh_xds::envoy::r#type::v3::HttpStatus;
use zmesh_xds::google::protobuf::{Struct, value::Kind};
use zmesh_xds::google::rpc::Status;

use crate::attributes::{ClaimValue, Peer, RequestAttributes};
use crate::rules::{Action, Outcome};
use crate::server::Shared;

/// The filter whose metadata holds verified token payloads (`payload_in_metadata`).
pub const JWT_AUTHN_FILTER: &str = "envoy.filters.http.jwt_authn";

/// google.rpc.Code values.
const CODE_OK: i32 = 0;
const CODE_PERMISSION_DENIED: i32 = 7;

/// Read a CheckRequest. `claims_key` is the `payload_in_metadata` name of the token to use;
/// without it the one payload present is used, and several are an error (which one a rule
/// means cannot be guessed).
pub fn attributes_from_check(request: &CheckRequest, claims_key: Option<&str>) -> Result<RequestAttributes, String> {
    let default_context = AttributeContext::default();
    let context = request.attributes.as_ref().unwrap_or(&default_context);
    let http = context.request.as_ref().and_then(|request| request.http.as_ref());
    let mut headers: Vec<(String, String)> = Vec::new();
    if let Some(http) = http {
        headers.extend(http.headers.iter().map(|(name, value)| (name.to_ascii_lowercase(), value.clone())));
        // With `encode_raw_headers`, Envoy sends the headers here instead, values as bytes.
        if let Some(map) = &http.header_map {
            for header in &map.headers {
                let value = if header.raw_value.is_empty() {
                    header.value.clone()
                } else {
                    String::from_utf8(header.raw_value.clone())
                        .map_err(|_| format!("header {} is not UTF-8", header.key))?
                };
                headers.push((header.key.to_ascii_lowercase(), value));
            }
        }
        // The map has no order; a stable one keeps folded values reproducible.
        headers.sort_by(|a, b| a.0.cmp(&b.0));
    }
    let path = match http {
        Some(http) if !http.query.is_empty() && !http.path.contains('?') => format!("{}?{}", http.path, http.query),
        Some(http) => http.path.clone(),
        None => String::new(),
    };
    Ok(RequestAttributes {
        method: http.map(|http| http.method.clone()).unwrap_or_default(),
        path,
        host: http.map(|http| http.host.clone()).unwrap_or_default(),
        headers,
        source: peer(context.source.as_ref()),
        destination: peer(context.destination.as_ref()),
        claims: claims(context, claims_key)?,
    })
}

fn peer(peer: Option<&attribute_context::Peer>) -> Peer {
    let Some(peer) = peer else { return Peer::default() };
    let (address, port) = match peer.address.as_ref().and_then(|address: &Address| address.address.as_ref()) {
        Some(address::Address::SocketAddress(socket)) => {
            let port = match socket.port_specifier {
                Some(zmesh_xds::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(port)) => port,
                _ => 0,
            };
            (socket.address.clone(), port)
        }
        _ => (String::new(), 0),
    };
    Peer { principal: peer.principal.clone(), address, port }
}

fn claims(context: &AttributeContext, claims_key: Option<&str>) -> Result<BTreeMap<String, ClaimValue>, String> {
    let Some(payloads) =
        context.metadata_context.as_ref().and_then(|metadata| metadata.filter_metadata.get(JWT_AUTHN_FILTER))
    else {
        return Ok(BTreeMap::new());
    };
    let payload = match claims_key {
        Some(key) => match payloads.fields.get(key) {
            Some(payload) => payload,
            None => return Ok(BTreeMap::new()),
        },
        None => {
            let mut values = payloads.fields.values();
            match (values.next(), values.next()) {
                (None, _) => return Ok(BTreeMap::new()),
                (Some(payload), None) => payload,
                (Some(_), Some(_)) => {
                    let mut keys: Vec<&str> = payloads.fields.keys().map(String::as_str).collect();
                    keys.sort_unstable();
                    return Err(format!(
                        "{JWT_AUTHN_FILTER} metadata holds several token payloads ({}); start the server with --claims-key to say which one rules see",
                        keys.join(", ")
                    ));
                }
            }
        }
    };
    match &payload.kind {
        Some(Kind::StructValue(fields)) => Ok(struct_claims(fields)),
        _ => Err(format!("the token payload in {JWT_AUTHN_FILTER} metadata is not an object")),
    }
}

fn struct_claims(fields: &Struct) -> BTreeMap<String, ClaimValue> {
    fields.fields.iter().map(|(key, value)| (key.clone(), claim(value.kind.as_ref()))).collect()
}

fn claim(kind: Option<&Kind>) -> ClaimValue {
    match kind {
        None | Some(Kind::NullValue(_)) => ClaimValue::Null,
        Some(Kind::NumberValue(number)) => ClaimValue::Number(*number),
        Some(Kind::StringValue(text)) => ClaimValue::String(text.clone()),
        Some(Kind::BoolValue(value)) => ClaimValue::Bool(*value),
        Some(Kind::StructValue(fields)) => ClaimValue::Map(struct_claims(fields)),
        Some(Kind::ListValue(list)) => {
            ClaimValue::List(list.values.iter().map(|value| claim(value.kind.as_ref())).collect())
        }
    }
}

fn header_options(outcome: &Outcome) -> Vec<HeaderValueOption> {
    outcome
        .headers
        .iter()
        .map(|(name, value)| HeaderValueOption {
            header: Some(HeaderValue {
                key: name.as_str().to_owned(),
                value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
                ..Default::default()
            }),
            // A header the rule sets replaces one the client sent: a client must not be able to
            // pre-set what the authorization server vouches for.
            append_action:
                zmesh_xds::envoy::config::core::v3::header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd
                    as i32,
            ..Default::default()
        })
        .collect()
}

/// The CheckResponse for an outcome.
pub fn check_response(outcome: &Outcome) -> CheckResponse {
    match outcome.action {
        Action::Allow => CheckResponse {
            status: Some(Status { code: CODE_OK, ..Default::default() }),
            http_response: Some(check_response::HttpResponse::OkResponse(OkHttpResponse {
                headers: header_options(outcome),
                ..Default::default()
            })),
            ..Default::default()
        },
        Action::Deny => CheckResponse {
            status: Some(Status { code: CODE_PERMISSION_DENIED, ..Default::default() }),
            http_response: Some(check_response::HttpResponse::DeniedResponse(DeniedHttpResponse {
                status: Some(HttpStatus { code: i32::from(outcome.status) }),
                headers: header_options(outcome),
                body: outcome.body.clone(),
            })),
            ..Default::default()
        },
    }
}

/// The gRPC service.
#[derive(Debug, Clone)]
pub(crate) struct GrpcAuthorization {
    pub shared: Arc<Shared>,
}

#[tonic::async_trait]
impl Authorization for GrpcAuthorization {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let check = request.into_inner();
        let response = match attributes_from_check(&check, self.shared.claims_key.as_deref()) {
            Ok(attributes) => {
                let rules = self.shared.rules();
                let decision = rules.decide(&attributes, self.shared.clock.now());
                crate::server::log_decision("grpc", &attributes, &decision);
                check_response(decision.outcome)
            }
            Err(message) => {
                let denied = crate::server::unreadable_request("grpc", &message);
                check_response(denied)
            }
        };
        Ok(tonic::Response::new(response))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use zmesh_xds::envoy::config::core::v3::{HeaderMap, Metadata};
    use zmesh_xds::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
    use zmesh_xds::google::protobuf::{ListValue, Value};

    use super::*;

    fn string(text: &str) -> Value {
        Value { kind: Some(Kind::StringValue(text.into())) }
    }

    fn payload(fields: &[(&str, Value)]) -> Value {
        Value {
            kind: Some(Kind::StructValue(Struct {
                fields: fields.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect(),
            })),
        }
    }

    fn check(payloads: &[(&str, Value)]) -> CheckRequest {
        let jwt = Struct { fields: payloads.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect() };
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    http: Some(HttpRequest {
                        method: "GET".into(),
                        path: "/a".into(),
                        query: "x=1".into(),
                        host: "shop".into(),
                        headers: HashMap::from([(":authority".to_owned(), "shop".to_owned())]),
                        header_map: Some(HeaderMap {
                            headers: vec![HeaderValue {
                                key: "X-Raw".into(),
                                raw_value: b"bytes".to_vec(),
                                ..Default::default()
                            }],
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                metadata_context: Some(Metadata {
                    filter_metadata: HashMap::from([(JWT_AUTHN_FILTER.to_owned(), jwt)]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn the_one_token_payload_becomes_the_claims() {
        let list = Value { kind: Some(Kind::ListValue(ListValue { values: vec![string("a")] })) };
        let request = check(&[(
            "https://issuer",
            payload(&[
                ("sub", string("alice")),
                ("limit", Value { kind: Some(Kind::NumberValue(5.0)) }),
                ("groups", list),
            ]),
        )]);
        let attributes = attributes_from_check(&request, None).expect("reads");
        assert_eq!(attributes.claims["sub"], ClaimValue::String("alice".into()));
        assert_eq!(attributes.claims["limit"], ClaimValue::Number(5.0));
        assert_eq!(attributes.claims["groups"], ClaimValue::List(vec![ClaimValue::String("a".into())]));
        assert_eq!(attributes.path, "/a?x=1");
        assert!(attributes.headers.contains(&("x-raw".to_owned(), "bytes".to_owned())), "{:?}", attributes.headers);
    }

    #[test]
    fn several_token_payloads_need_a_claims_key_or_the_check_is_unreadable() {
        let request = check(&[("a", payload(&[("sub", string("alice"))])), ("b", payload(&[("sub", string("bob"))]))]);
        let error = attributes_from_check(&request, None).expect_err("ambiguous");
        assert!(error.contains("several token payloads (a, b)"), "{error}");
        let chosen = attributes_from_check(&request, Some("b")).expect("reads");
        assert_eq!(chosen.claims["sub"], ClaimValue::String("bob".into()));
        assert!(attributes_from_check(&request, Some("c")).expect("reads").claims.is_empty());
    }

    #[test]
    fn a_token_payload_that_is_not_an_object_is_unreadable() {
        assert!(attributes_from_check(&check(&[("a", string("oops"))]), None).is_err());
    }

    #[test]
    fn an_allow_overwrites_client_headers_and_a_deny_carries_status_and_body() {
        let outcome = Outcome {
            action: Action::Deny,
            status: 418,
            body: "no".into(),
            headers: vec![(http::HeaderName::from_static("x-r"), http::HeaderValue::from_static("v"))],
        };
        let denied = check_response(&outcome);
        assert_eq!(denied.status.as_ref().map(|s| s.code), Some(CODE_PERMISSION_DENIED));
        let Some(check_response::HttpResponse::DeniedResponse(response)) = denied.http_response else { panic!() };
        assert_eq!(response.status.map(|s| s.code), Some(418));
        assert_eq!(response.body, "no");
        let allowed = check_response(&Outcome { action: Action::Allow, status: 200, body: String::new(), ..outcome });
        assert_eq!(allowed.status.as_ref().map(|s| s.code), Some(CODE_OK));
        let Some(check_response::HttpResponse::OkResponse(ok)) = allowed.http_response else { panic!() };
        assert_eq!(ok.headers[0].append_action, 2, "OVERWRITE_IF_EXISTS_OR_ADD");
    }
}
