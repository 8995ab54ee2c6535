//! Envoy's gRPC ext_authz protocol: `envoy.service.auth.v3.Authorization/Check` with the
//! request's AttributeContext, over one HTTP/2 channel per provider dialed through [`Connect`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};
use zmesh_config::mesh::ExtAuthzGrpc;
use zmesh_xds::envoy::config::core::v3 as core;
use zmesh_xds::envoy::service::auth::v3 as auth;
use zmesh_xds::google::protobuf as pb;

use super::{BodyPart, CheckError, CheckInput, Connect, PARTIAL_BODY_HEADER, Verdict, host_of, is_protected};
use auth::attribute_context::{HttpRequest, Peer, Request};
use auth::authorization_client::AuthorizationClient;
use auth::check_response::HttpResponse;
use core::header_value_option::HeaderAppendAction;

/// The dynamic-metadata namespace Envoy's JWT filter publishes verified payloads under.
const JWT_AUTHN: &str = "envoy.filters.http.jwt_authn";

pub(crate) struct GrpcClient {
    config: ExtAuthzGrpc,
    connect: Arc<dyn Connect>,
    /// Built at the first check (a channel's worker needs the runtime), then shared: tonic
    /// multiplexes calls over one HTTP/2 connection and redials it when it breaks.
    channel: OnceLock<Channel>,
}

impl GrpcClient {
    pub fn new(config: ExtAuthzGrpc, connect: Arc<dyn Connect>) -> Self {
        GrpcClient { config, connect, channel: OnceLock::new() }
    }

    fn channel(&self) -> Channel {
        self.channel
            .get_or_init(|| {
                let connect = Arc::clone(&self.connect);
                let service = self.config.service.clone();
                let port = self.config.port;
                let connector = tower::service_fn(move |_: http::Uri| {
                    let connect = Arc::clone(&connect);
                    let service = service.clone();
                    async move { connect.connect(&service, port).await.map(TokioIo::new) }
                });
                // The URI only names the :authority; the connector decides where bytes go.
                let endpoint = Endpoint::from_shared(format!("http://{}:{}", host_of(&self.config.service), port))
                    .unwrap_or_else(|_| Endpoint::from_static("http://ext-authz.invalid"));
                endpoint.timeout(self.config.timeout).connect_with_connector_lazy(connector)
            })
            .clone()
    }

    pub async fn check(&self, input: &CheckInput<'_>, body: Option<&BodyPart<'_>>) -> Result<Verdict, CheckError> {
        let request = check_request(input, body);
        let mut client = AuthorizationClient::new(self.channel());
        let response = client.check(request).await.map_err(|status| {
            if status.code() == tonic::Code::Unavailable {
                CheckError::Transport(format!("unavailable: {}", status.message()))
            } else {
                CheckError::Transport(format!("{:?}: {}", status.code(), status.message()))
            }
        })?;
        verdict(input, response.into_inner())
    }
}

/// The AttributeContext Envoy's ext_authz filter builds for a request.
pub(crate) fn check_request(input: &CheckInput<'_>, body: Option<&BodyPart<'_>>) -> auth::CheckRequest {
    let mut headers: HashMap<String, String> = HashMap::new();
    let mut add = |name: &str, value: &str| {
        headers
            .entry(name.to_ascii_lowercase())
            .and_modify(|joined| {
                joined.push(',');
                joined.push_str(value);
            })
            .or_insert_with(|| value.to_owned());
    };
    add(":authority", input.authority);
    add(":method", input.method);
    add(":path", input.path);
    add(":scheme", "http");
    for &(name, value) in input.headers {
        if !name.starts_with(':') && !name.eq_ignore_ascii_case("host") {
            add(name, value);
        }
    }
    let content_length = input
        .headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<i64>().ok());
    let mut http = HttpRequest {
        id: headers.get("x-request-id").cloned().unwrap_or_default(),
        method: input.method.to_owned(),
        path: input.path.to_owned(),
        host: input.authority.to_owned(),
        scheme: "http".to_owned(),
        size: content_length.unwrap_or(-1),
        protocol: input.protocol.to_owned(),
        ..HttpRequest::default()
    };
    if let Some(part) = body {
        headers.insert(PARTIAL_BODY_HEADER.to_owned(), part.partial.to_string());
        if part.settings.pack_as_bytes {
            http.raw_body = part.bytes.to_vec();
        } else {
            // The `body` field is a protobuf string: bytes that are not UTF-8 would make the
            // whole message undecodable for a strict peer, so they are replaced.
            http.body = String::from_utf8_lossy(part.bytes).into_owned();
        }
    }
    http.headers = headers;
    let since_epoch = input.time.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let metadata_context = input.jwt_claims.and_then(|claims| {
        let issuer = claims.get("iss")?.as_str()?.to_owned();
        let payload = pb::Struct { fields: claims.iter().map(|(k, v)| (k.clone(), json_value(v))).collect() };
        let by_issuer = pb::Struct {
            fields: HashMap::from([(issuer, pb::Value { kind: Some(pb::value::Kind::StructValue(payload)) })]),
        };
        Some(core::Metadata {
            filter_metadata: HashMap::from([(JWT_AUTHN.to_owned(), by_issuer)]),
            ..core::Metadata::default()
        })
    });
    auth::CheckRequest {
        attributes: Some(auth::AttributeContext {
            source: Some(peer(input.source, input.source_principal.map(|id| id.as_uri()))),
            destination: Some(peer(input.destination, input.destination_principal.map(|id| id.as_uri()))),
            request: Some(Request {
                time: Some(pb::Timestamp {
                    seconds: i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX),
                    nanos: i32::try_from(since_epoch.subsec_nanos()).unwrap_or(0),
                }),
                http: Some(http),
            }),
            metadata_context,
            ..auth::AttributeContext::default()
        }),
    }
}

fn peer(address: SocketAddr, principal: Option<&str>) -> Peer {
    Peer {
        address: Some(core::Address {
            address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                protocol: core::socket_address::Protocol::Tcp as i32,
                address: address.ip().to_string(),
                port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(address.port()))),
                ..core::SocketAddress::default()
            })),
        }),
        principal: principal.unwrap_or_default().to_owned(),
        ..Peer::default()
    }
}

/// JSON as `google.protobuf.Value` (numbers become doubles, as in protobuf's JSON mapping).
fn json_value(value: &serde_json::Value) -> pb::Value {
    use pb::value::Kind;
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(pb::NullValue::NullValue as i32),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(items) => {
            Kind::ListValue(pb::ListValue { values: items.iter().map(json_value).collect() })
        }
        serde_json::Value::Object(fields) => {
            Kind::StructValue(pb::Struct { fields: fields.iter().map(|(k, v)| (k.clone(), json_value(v))).collect() })
        }
    };
    pb::Value { kind: Some(kind) }
}

/// The decision in a CheckResponse.
pub(crate) fn verdict(input: &CheckInput<'_>, response: auth::CheckResponse) -> Result<Verdict, CheckError> {
    // Envoy reads an absent status as OK; an authorizer that says nothing has not allowed
    // anything, so zmesh counts it as a failed check.
    let status = response.status.ok_or_else(|| CheckError::Malformed("the response has no status".into()))?;
    if status.code != 0 {
        let mut verdict = Verdict::Deny { status: 403, headers: Vec::new(), body: Bytes::new() };
        if let Some(HttpResponse::DeniedResponse(denied)) = response.http_response {
            let code = denied.status.map_or(0, |s| s.code);
            let status = match u16::try_from(code) {
                Ok(code @ 200..=599) => code,
                _ if code == 0 => 403,
                _ => return Err(CheckError::Malformed(format!("denied with HTTP status {code}"))),
            };
            let mut headers = Vec::new();
            for option in &denied.headers {
                let (name, value) = header(option)?;
                if !is_protected(&name) {
                    headers.push((name, value));
                }
            }
            verdict = Verdict::Deny { status, headers, body: Bytes::from(denied.body) };
        }
        return Ok(verdict);
    }
    let Some(HttpResponse::OkResponse(ok)) = response.http_response else {
        return Ok(Verdict::allow_unchanged());
    };
    if !ok.query_parameters_to_set.is_empty() || !ok.query_parameters_to_remove.is_empty() {
        // The request would reach the workload with a query the authorizer did not approve.
        return Err(CheckError::Malformed("query parameter edits are not supported".into()));
    }
    let present = |name: &str| input.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut upstream_set = Vec::new();
    let mut upstream_append = Vec::new();
    for option in &ok.headers {
        let (name, value) = header(option)?;
        if is_protected(&name) {
            continue;
        }
        match action(option) {
            HeaderAppendAction::AppendIfExistsOrAdd => upstream_append.push((name, value)),
            HeaderAppendAction::OverwriteIfExistsOrAdd => upstream_set.push((name, value)),
            HeaderAppendAction::AddIfAbsent if !present(&name) => upstream_set.push((name, value)),
            HeaderAppendAction::OverwriteIfExists if present(&name) => upstream_set.push((name, value)),
            HeaderAppendAction::AddIfAbsent | HeaderAppendAction::OverwriteIfExists => {}
        }
    }
    let upstream_remove =
        ok.headers_to_remove.iter().map(|name| name.to_ascii_lowercase()).filter(|name| !is_protected(name)).collect();
    let mut downstream_set = Vec::new();
    let mut downstream_append = Vec::new();
    for option in &ok.response_headers_to_add {
        let (name, value) = header(option)?;
        if is_protected(&name) {
            continue;
        }
        match action(option) {
            HeaderAppendAction::AppendIfExistsOrAdd => downstream_append.push((name, value)),
            _ => downstream_set.push((name, value)),
        }
    }
    Ok(Verdict::Allow { upstream_set, upstream_append, upstream_remove, downstream_set, downstream_append })
}

/// How a header option applies. In ext_authz responses Envoy documents `append` as false by
/// default, so an option with neither `append` nor an `append_action` other than the default
/// overwrites; `append`, when present, decides.
fn action(option: &core::HeaderValueOption) -> HeaderAppendAction {
    match option.append {
        Some(pb::BoolValue { value: true }) => HeaderAppendAction::AppendIfExistsOrAdd,
        Some(pb::BoolValue { value: false }) => HeaderAppendAction::OverwriteIfExistsOrAdd,
        None => match HeaderAppendAction::try_from(option.append_action) {
            Ok(HeaderAppendAction::AppendIfExistsOrAdd) | Err(_) => HeaderAppendAction::OverwriteIfExistsOrAdd,
            Ok(other) => other,
        },
    }
}

/// A header option's name (lower-case) and value, refused when it could not be written.
fn header(option: &core::HeaderValueOption) -> Result<(String, String), CheckError> {
    let header =
        option.header.as_ref().ok_or_else(|| CheckError::Malformed("a header option without a header".into()))?;
    let value = if header.value.is_empty() && !header.raw_value.is_empty() {
        String::from_utf8(header.raw_value.clone())
            .map_err(|_| CheckError::Malformed(format!("header `{}` is not text", header.key)))?
    } else {
        header.value.clone()
    };
    if !super::is_header_name(&header.key) && !header.key.starts_with(':') {
        return Err(CheckError::Malformed(format!("`{}` is not a header name", header.key)));
    }
    if !super::is_header_value(&value) {
        return Err(CheckError::Malformed(format!("header `{}` has a line break in its value", header.key)));
    }
    Ok((header.key.to_ascii_lowercase(), value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn input<'a>(headers: &'a [(&'a str, &'a str)]) -> CheckInput<'a> {
        CheckInput {
            method: "GET",
            authority: "app.local",
            path: "/a?b=c",
            headers,
            body: None,
            source: "10.0.0.1:4000".parse().unwrap(),
            destination: "10.0.0.2:8080".parse().unwrap(),
            source_principal: None,
            destination_principal: None,
            protocol: "HTTP/1.1",
            jwt_claims: None,
            time: UNIX_EPOCH + Duration::from_millis(1_500),
        }
    }

    fn option(key: &str, value: &str, append: Option<bool>, action: i32) -> core::HeaderValueOption {
        core::HeaderValueOption {
            header: Some(core::HeaderValue { key: key.into(), value: value.into(), raw_value: Vec::new() }),
            append: append.map(|value| pb::BoolValue { value }),
            append_action: action,
            keep_empty_value: false,
        }
    }

    #[test]
    fn repeated_headers_are_joined_with_commas_and_host_becomes_the_authority() {
        let headers = [("Host", "ignored"), ("X-A", "1"), ("x-a", "2"), ("x-request-id", "rid")];
        let request = check_request(&input(&headers), None);
        let http = request.attributes.unwrap().request.unwrap().http.unwrap();
        assert_eq!(http.headers.get("x-a").map(String::as_str), Some("1,2"));
        assert_eq!(http.headers.get(":authority").map(String::as_str), Some("app.local"));
        assert_eq!(http.headers.get("host"), None);
        assert_eq!(http.id, "rid");
        assert_eq!(http.size, -1);
    }

    #[test]
    fn append_false_or_absent_overwrites_and_append_true_appends() {
        let ok = auth::OkHttpResponse {
            headers: vec![
                option("x-set", "1", None, 0),
                option("x-false", "2", Some(false), 0),
                option("x-append", "3", Some(true), 0),
                option("x-absent", "4", None, HeaderAppendAction::AddIfAbsent as i32),
                option("x-present", "5", None, HeaderAppendAction::AddIfAbsent as i32),
                option("x-only-if", "6", None, HeaderAppendAction::OverwriteIfExists as i32),
                option(":path", "/evil", None, 0),
            ],
            headers_to_remove: vec!["Authorization".into(), "host".into()],
            ..auth::OkHttpResponse::default()
        };
        let response = auth::CheckResponse {
            status: Some(zmesh_xds::google::rpc::Status::default()),
            http_response: Some(HttpResponse::OkResponse(ok)),
            dynamic_metadata: None,
        };
        let headers = [("x-present", "old")];
        let verdict = verdict(&input(&headers), response).unwrap();
        let pair = |n: &str, v: &str| (n.to_owned(), v.to_owned());
        assert_eq!(
            verdict,
            Verdict::Allow {
                upstream_set: vec![pair("x-set", "1"), pair("x-false", "2"), pair("x-absent", "4")],
                upstream_append: vec![pair("x-append", "3")],
                upstream_remove: vec!["authorization".into()],
                downstream_set: vec![],
                downstream_append: vec![],
            }
        );
    }

    #[test]
    fn a_response_without_a_status_is_not_a_decision() {
        let response = auth::CheckResponse::default();
        assert!(matches!(verdict(&input(&[]), response), Err(CheckError::Malformed(_))));
    }

    #[test]
    fn a_denial_without_a_status_is_403() {
        let response = auth::CheckResponse {
            status: Some(zmesh_xds::google::rpc::Status { code: 7, ..Default::default() }),
            http_response: None,
            dynamic_metadata: None,
        };
        assert_eq!(
            verdict(&input(&[]), response).unwrap(),
            Verdict::Deny { status: 403, headers: vec![], body: Bytes::new() }
        );
    }
}
