//! The ext_authz client against real authorizers on 127.0.0.1: an HTTP one (hyper) and a gRPC
//! one (tonic, serving the generated `envoy.service.auth.v3.Authorization` trait).

use std::convert::Infallible;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use zmesh_config::mesh::ExtensionProvider;
use zmesh_config::{FileKind, Loader};
use zmesh_id::SpiffeId;
use zmesh_proxy::ext_authz::{BoxFuture, BoxedIo, CheckInput, Connect, ExtAuthz, PlainTcp, Verdict};
use zmesh_xds::envoy::config::core::v3 as core;
use zmesh_xds::envoy::service::auth::v3 as auth;
use zmesh_xds::envoy::r#type::v3 as types;
use zmesh_xds::google::protobuf as pb;
use zmesh_xds::google::rpc;

fn provider(yaml: &str) -> ExtensionProvider {
    let mut loader = Loader::new();
    loader.add_str(Some("mesh.yaml".into()), yaml, FileKind::MeshConfig);
    let loaded = loader.finish();
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    loaded.config.mesh.extension_providers[0].clone()
}

/// Dials through plain TCP and counts the connections made.
#[derive(Default)]
struct Counting {
    dials: AtomicUsize,
}

impl Connect for Counting {
    fn connect(&self, service: &str, port: u16) -> BoxFuture<'static, io::Result<BoxedIo>> {
        self.dials.fetch_add(1, Ordering::SeqCst);
        PlainTcp::default().connect(service, port)
    }
}

fn client(yaml: &str) -> (ExtAuthz, Arc<Counting>) {
    let counting = Arc::new(Counting::default());
    let authz = ExtAuthz::new(&provider(yaml), counting.clone()).expect("an ext_authz provider");
    (authz, counting)
}

fn spiffe(principal: &str) -> SpiffeId {
    SpiffeId::from_principal(principal).expect("a SPIFFE principal")
}

struct Request<'a> {
    path: &'a str,
    headers: &'a [(&'a str, &'a str)],
    body: Option<&'a [u8]>,
}

async fn check(authz: &ExtAuthz, request: Request<'_>) -> Verdict {
    let source = spiffe("cluster.local/ns/shop/sa/web");
    let destination = spiffe("cluster.local/ns/shop/sa/api");
    let claims = serde_json::json!({"iss": "https://issuer.example", "sub": "alice", "groups": ["admin"]});
    authz
        .check(&CheckInput {
            method: "POST",
            authority: "api.shop:8080",
            path: request.path,
            headers: request.headers,
            body: request.body,
            source: "10.1.0.7:41000".parse().expect("an address"),
            destination: "10.1.0.9:8080".parse().expect("an address"),
            source_principal: Some(&source),
            destination_principal: Some(&destination),
            protocol: "HTTP/1.1",
            jwt_claims: claims.as_object(),
            time: SystemTime::now(),
        })
        .await
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

/// A port nothing listens on.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    listener.local_addr().expect("a bound listener").port()
}

// ---------------------------------------------------------------------------------------------
// HTTP authorizer

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
    body: Bytes,
}

struct HttpAuthorizer {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    accepted: Arc<AtomicUsize>,
}

/// An HTTP authorizer whose answer depends on the path it is asked about.
async fn http_authorizer() -> HttpAuthorizer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let port = listener.local_addr().expect("a bound listener").port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let accepted = Arc::new(AtomicUsize::new(0));
    let (seen2, accepted2) = (seen.clone(), accepted.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            accepted2.fetch_add(1, Ordering::SeqCst);
            let seen = seen2.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await.expect("the check body").to_bytes();
                        let path = parts.uri.path().to_owned();
                        seen.lock().expect("an unpoisoned record").push(Seen {
                            method: parts.method.to_string(),
                            uri: parts.uri.to_string(),
                            headers: parts
                                .headers
                                .iter()
                                .map(|(n, v)| (n.to_string(), v.to_str().expect("text header values").to_owned()))
                                .collect(),
                            body,
                        });
                        let response = http::Response::builder();
                        let response = if path.starts_with("/check/allow") {
                            response
                                .status(200)
                                .header("x-user", "alice")
                                .header("x-other", "not-listed")
                                .header("x-envoy-auth-headers-to-remove", "x-secret, Cookie")
                                .header("x-allow-note", "welcome")
                        } else if path.starts_with("/check/deny") {
                            response
                                .status(401)
                                .header("www-authenticate", "Bearer")
                                .header("x-deny-reason", "no token")
                                .header("x-internal", "hidden")
                        } else if path.starts_with("/check/slow") {
                            tokio::time::sleep(Duration::from_secs(3)).await;
                            response.status(200)
                        } else {
                            response.status(503)
                        };
                        let body = if path.starts_with("/check/deny") { "go away" } else { "" };
                        Ok::<_, Infallible>(response.body(Full::new(Bytes::from(body))).expect("a response"))
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    HttpAuthorizer { port, seen, accepted }
}

fn http_provider(port: u16, extra: &str) -> String {
    format!(
        "extensionProviders:
- name: http-authz
  envoyExtAuthzHttp:
    service: ns/127.0.0.1
    port: {port}
    pathPrefix: /check
{extra}"
    )
}

fn header<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
    seen.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn an_http_allow_copies_only_the_listed_authorizer_headers_and_sends_envoys_check_request() {
    let authorizer = http_authorizer().await;
    let (authz, _) = client(&http_provider(
        authorizer.port,
        "    includeRequestHeadersInCheck: [\"x-inc-*\"]
    includeAdditionalHeadersInCheck: {x-added: fixed, x-inc-over: from-config}
    headersToUpstreamOnAllow: [x-user]
    headersToDownstreamOnAllow: [\"x-allow-*\"]
",
    ));
    let headers = [
        ("Host", "spoofed.example"),
        ("Authorization", "Bearer t"),
        ("X-Inc-One", "1"),
        ("x-inc-over", "from-client"),
        ("x-not-included", "no"),
        ("content-length", "0"),
    ];
    let verdict = check(&authz, Request { path: "/allow/x?q=1", headers: &headers, body: None }).await;
    assert_eq!(
        verdict,
        Verdict::Allow {
            upstream_set: pairs(&[("x-user", "alice")]),
            upstream_append: vec![],
            upstream_remove: vec!["x-secret".into(), "cookie".into()],
            downstream_set: pairs(&[("x-allow-note", "welcome")]),
            downstream_append: vec![],
        }
    );
    let seen = authorizer.seen.lock().unwrap()[0].clone();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.uri, "/check/allow/x?q=1");
    assert_eq!(header(&seen, "host"), Some("api.shop:8080"));
    assert_eq!(header(&seen, "authorization"), Some("Bearer t"));
    assert_eq!(header(&seen, "x-inc-one"), Some("1"));
    assert_eq!(header(&seen, "x-inc-over"), Some("from-config"));
    assert_eq!(header(&seen, "x-added"), Some("fixed"));
    assert_eq!(header(&seen, "content-length"), Some("0"));
    assert_eq!(header(&seen, "x-not-included"), None);
    assert!(seen.body.is_empty());
}

#[tokio::test]
async fn an_http_deny_passes_the_authorizers_status_body_and_listed_headers() {
    let authorizer = http_authorizer().await;
    let (authz, _) = client(&http_provider(authorizer.port, "    headersToDownstreamOnDeny: [x-deny-reason]\n"));
    let verdict = check(&authz, Request { path: "/deny", headers: &[], body: None }).await;
    let Verdict::Deny { status, mut headers, body } = verdict else { panic!("{verdict:?}") };
    headers.sort();
    assert_eq!(status, 401);
    assert_eq!(headers, pairs(&[("www-authenticate", "Bearer"), ("x-deny-reason", "no token")]));
    assert_eq!(body, "go away");

    // Without a list, every header but framing and Host goes to the client.
    let (authz, _) = client(&http_provider(authorizer.port, ""));
    let Verdict::Deny { headers, .. } = check(&authz, Request { path: "/deny", headers: &[], body: None }).await else {
        panic!("not a deny")
    };
    assert!(headers.iter().any(|(n, _)| n == "x-internal"), "{headers:?}");
    assert!(!headers.iter().any(|(n, _)| n == "content-length"), "{headers:?}");
}

#[tokio::test]
async fn an_http_authorizer_that_is_down_or_answers_5xx_denies_with_status_on_error_unless_fail_open() {
    let down = closed_port().await;
    let (authz, _) = client(&http_provider(down, ""));
    assert_eq!(
        check(&authz, Request { path: "/allow", headers: &[], body: None }).await,
        Verdict::Deny { status: 403, headers: vec![], body: Bytes::new() }
    );
    let (authz, _) = client(&http_provider(down, "    statusOnError: \"503\"\n"));
    assert_eq!(
        check(&authz, Request { path: "/allow", headers: &[], body: None }).await,
        Verdict::Deny { status: 503, headers: vec![], body: Bytes::new() }
    );
    let (authz, _) = client(&http_provider(down, "    failOpen: true\n"));
    assert_eq!(check(&authz, Request { path: "/allow", headers: &[], body: None }).await, Verdict::allow_unchanged());

    let authorizer = http_authorizer().await;
    let (authz, _) = client(&http_provider(authorizer.port, "    statusOnError: \"500\"\n"));
    assert_eq!(
        check(&authz, Request { path: "/crash", headers: &[], body: None }).await,
        Verdict::Deny { status: 500, headers: vec![], body: Bytes::new() }
    );
    let (authz, _) = client(&http_provider(authorizer.port, "    failOpen: true\n"));
    assert_eq!(check(&authz, Request { path: "/crash", headers: &[], body: None }).await, Verdict::allow_unchanged());
}

#[tokio::test]
async fn a_slow_http_authorizer_times_out_into_a_deny() {
    let authorizer = http_authorizer().await;
    let (authz, _) = client(&http_provider(authorizer.port, "    timeout: 200ms\n    statusOnError: \"504\"\n"));
    let started = Instant::now();
    let verdict = check(&authz, Request { path: "/slow", headers: &[], body: None }).await;
    assert_eq!(verdict, Verdict::Deny { status: 504, headers: vec![], body: Bytes::new() });
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_malformed_http_answer_is_a_deny() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        for _ in 0..4 {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let _ = stream.write_all(b"this is not HTTP\r\n\r\n").await;
        }
    });
    let (authz, _) = client(&http_provider(port, ""));
    assert_eq!(
        check(&authz, Request { path: "/allow", headers: &[], body: None }).await,
        Verdict::Deny { status: 403, headers: vec![], body: Bytes::new() }
    );
}

#[tokio::test]
async fn the_http_body_goes_to_the_authorizer_up_to_max_request_bytes() {
    let authorizer = http_authorizer().await;
    let (authz, _) = client(&http_provider(
        authorizer.port,
        "    includeRequestBodyInCheck: {maxRequestBytes: 4, allowPartialMessage: true}\n",
    ));
    let verdict = check(&authz, Request { path: "/allow", headers: &[], body: Some(b"abcdefgh") }).await;
    assert!(verdict.is_allow(), "{verdict:?}");
    let seen = authorizer.seen.lock().unwrap()[0].clone();
    assert_eq!(seen.body, "abcd");
    assert_eq!(header(&seen, "content-length"), Some("4"));
    assert_eq!(header(&seen, "x-envoy-auth-partial-body"), Some("true"));

    // Without allowPartialMessage a longer body is refused with 413, even with failOpen, and
    // the authorizer is not asked.
    let (authz, _) = client(&http_provider(
        authorizer.port,
        "    failOpen: true\n    includeRequestBodyInCheck: {maxRequestBytes: 4}\n",
    ));
    let verdict = check(&authz, Request { path: "/allow", headers: &[], body: Some(b"abcdefgh") }).await;
    assert!(matches!(verdict, Verdict::Deny { status: 413, .. }), "{verdict:?}");
    assert_eq!(authorizer.seen.lock().unwrap().len(), 1);
    let verdict = check(&authz, Request { path: "/allow", headers: &[], body: Some(b"abcd") }).await;
    assert!(verdict.is_allow(), "{verdict:?}");
    let seen = authorizer.seen.lock().unwrap()[1].clone();
    assert_eq!((seen.body.as_ref(), header(&seen, "x-envoy-auth-partial-body")), (&b"abcd"[..], Some("false")));
}

#[tokio::test]
async fn http_checks_reuse_one_keep_alive_connection() {
    let authorizer = http_authorizer().await;
    let (authz, counting) = client(&http_provider(authorizer.port, ""));
    for _ in 0..3 {
        assert!(check(&authz, Request { path: "/allow", headers: &[], body: None }).await.is_allow());
    }
    assert_eq!(counting.dials.load(Ordering::SeqCst), 1);
    assert_eq!(authorizer.accepted.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------------------------
// gRPC authorizer

#[derive(Default, Clone)]
struct GrpcAuthorizer {
    seen: Arc<Mutex<Vec<auth::CheckRequest>>>,
}

fn option(key: &str, value: &str, append: Option<bool>) -> core::HeaderValueOption {
    core::HeaderValueOption {
        header: Some(core::HeaderValue { key: key.into(), value: value.into(), raw_value: vec![] }),
        append: append.map(|value| pb::BoolValue { value }),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl auth::authorization_server::Authorization for GrpcAuthorizer {
    async fn check(
        &self,
        request: tonic::Request<auth::CheckRequest>,
    ) -> Result<tonic::Response<auth::CheckResponse>, tonic::Status> {
        let request = request.into_inner();
        self.seen.lock().expect("an unpoisoned record").push(request.clone());
        let path = request.attributes.and_then(|a| a.request).and_then(|r| r.http).map(|h| h.path).unwrap_or_default();
        let ok = |code| Some(rpc::Status { code, ..Default::default() });
        let response = match path.as_str() {
            "/allow" => auth::CheckResponse {
                status: ok(0),
                http_response: Some(auth::check_response::HttpResponse::OkResponse(auth::OkHttpResponse {
                    headers: vec![option("x-user", "alice", None), option("x-trace", "authz", Some(true))],
                    headers_to_remove: vec!["authorization".into()],
                    response_headers_to_add: vec![option("x-checked", "yes", Some(false))],
                    ..Default::default()
                })),
                dynamic_metadata: None,
            },
            "/deny" => auth::CheckResponse {
                status: ok(7),
                http_response: Some(auth::check_response::HttpResponse::DeniedResponse(auth::DeniedHttpResponse {
                    status: Some(types::HttpStatus { code: types::StatusCode::Unauthorized as i32 }),
                    headers: vec![option("www-authenticate", "Bearer realm=shop", None)],
                    body: "token required".into(),
                })),
                dynamic_metadata: None,
            },
            "/slow" => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                auth::CheckResponse { status: ok(0), ..Default::default() }
            }
            "/no-status" => auth::CheckResponse::default(),
            _ => return Err(tonic::Status::internal("authorizer bug")),
        };
        Ok(tonic::Response::new(response))
    }
}

async fn grpc_authorizer() -> (u16, GrpcAuthorizer) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let port = listener.local_addr().expect("a bound listener").port();
    let authorizer = GrpcAuthorizer::default();
    let service = auth::authorization_server::AuthorizationServer::new(authorizer.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (port, authorizer)
}

fn grpc_provider(port: u16, extra: &str) -> String {
    format!(
        "extensionProviders:
- name: grpc-authz
  envoyExtAuthzGrpc:
    service: 127.0.0.1
    port: {port}
{extra}"
    )
}

#[tokio::test]
async fn a_grpc_allow_applies_the_ok_response_and_the_authorizer_sees_envoys_attribute_context() {
    let (port, authorizer) = grpc_authorizer().await;
    let (authz, _) = client(&grpc_provider(port, ""));
    let headers = [("authorization", "Bearer t"), ("x-a", "1"), ("X-A", "2"), ("content-length", "5")];
    let verdict = check(&authz, Request { path: "/allow", headers: &headers, body: None }).await;
    assert_eq!(
        verdict,
        Verdict::Allow {
            upstream_set: pairs(&[("x-user", "alice")]),
            upstream_append: pairs(&[("x-trace", "authz")]),
            upstream_remove: vec!["authorization".into()],
            downstream_set: pairs(&[("x-checked", "yes")]),
            downstream_append: vec![],
        }
    );
    let request = authorizer.seen.lock().unwrap()[0].clone();
    let attributes = request.attributes.unwrap();
    let source = attributes.source.unwrap();
    assert_eq!(source.principal, "spiffe://cluster.local/ns/shop/sa/web");
    let Some(core::address::Address::SocketAddress(address)) = source.address.unwrap().address else {
        panic!("no socket address")
    };
    assert_eq!(address.address, "10.1.0.7");
    assert_eq!(address.port_specifier, Some(core::socket_address::PortSpecifier::PortValue(41000)));
    assert_eq!(attributes.destination.unwrap().principal, "spiffe://cluster.local/ns/shop/sa/api");
    let http = attributes.request.unwrap().http.unwrap();
    assert_eq!((http.method.as_str(), http.path.as_str(), http.host.as_str()), ("POST", "/allow", "api.shop:8080"));
    assert_eq!((http.protocol.as_str(), http.size), ("HTTP/1.1", 5));
    assert_eq!(http.headers.get("x-a").map(String::as_str), Some("1,2"));
    assert_eq!(http.headers.get(":method").map(String::as_str), Some("POST"));
    let jwt = &attributes.metadata_context.unwrap().filter_metadata["envoy.filters.http.jwt_authn"];
    let Some(pb::value::Kind::StructValue(payload)) = &jwt.fields["https://issuer.example"].kind else {
        panic!("no payload under the issuer")
    };
    assert_eq!(payload.fields["sub"].kind, Some(pb::value::Kind::StringValue("alice".into())));
}

#[tokio::test]
async fn a_grpc_deny_sends_the_denied_response_to_the_client() {
    let (port, _) = grpc_authorizer().await;
    let (authz, _) = client(&grpc_provider(port, ""));
    assert_eq!(
        check(&authz, Request { path: "/deny", headers: &[], body: None }).await,
        Verdict::Deny {
            status: 401,
            headers: pairs(&[("www-authenticate", "Bearer realm=shop")]),
            body: Bytes::from("token required"),
        }
    );
}

#[tokio::test]
async fn grpc_failures_deny_with_status_on_error_unless_fail_open() {
    let down = closed_port().await;
    let (authz, _) = client(&grpc_provider(down, ""));
    assert_eq!(
        check(&authz, Request { path: "/allow", headers: &[], body: None }).await,
        Verdict::Deny { status: 403, headers: vec![], body: Bytes::new() }
    );
    let (authz, _) = client(&grpc_provider(down, "    failOpen: true\n"));
    assert_eq!(check(&authz, Request { path: "/allow", headers: &[], body: None }).await, Verdict::allow_unchanged());

    let (port, _) = grpc_authorizer().await;
    let (authz, _) = client(&grpc_provider(port, "    statusOnError: \"502\"\n"));
    for path in ["/error", "/no-status"] {
        assert_eq!(
            check(&authz, Request { path, headers: &[], body: None }).await,
            Verdict::Deny { status: 502, headers: vec![], body: Bytes::new() },
            "{path}"
        );
    }
}

#[tokio::test]
async fn a_slow_grpc_authorizer_times_out_into_a_deny() {
    let (port, _) = grpc_authorizer().await;
    let (authz, _) = client(&grpc_provider(port, "    timeout: 200ms\n"));
    let started = Instant::now();
    assert_eq!(
        check(&authz, Request { path: "/slow", headers: &[], body: None }).await,
        Verdict::Deny { status: 403, headers: vec![], body: Bytes::new() }
    );
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
}

#[tokio::test]
async fn the_grpc_body_is_sent_as_text_or_bytes_up_to_max_request_bytes() {
    let (port, authorizer) = grpc_authorizer().await;
    let (authz, _) = client(&grpc_provider(
        port,
        "    includeRequestBodyInCheck: {maxRequestBytes: 3, allowPartialMessage: true}\n",
    ));
    assert!(check(&authz, Request { path: "/allow", headers: &[], body: Some(b"hello") }).await.is_allow());
    let (authz, _) =
        client(&grpc_provider(port, "    includeRequestBodyInCheck: {maxRequestBytes: 8, packAsBytes: true}\n"));
    assert!(check(&authz, Request { path: "/allow", headers: &[], body: Some(b"\xff\x00ok") }).await.is_allow());
    let seen = authorizer.seen.lock().unwrap().clone();
    let http = |i: usize| seen[i].attributes.clone().unwrap().request.unwrap().http.unwrap();
    assert_eq!((http(0).body.as_str(), http(0).raw_body.len()), ("hel", 0));
    assert_eq!(http(0).headers.get("x-envoy-auth-partial-body").map(String::as_str), Some("true"));
    assert_eq!((http(1).body.as_str(), http(1).raw_body.as_slice()), ("", &b"\xff\x00ok"[..]));
    assert_eq!(http(1).headers.get("x-envoy-auth-partial-body").map(String::as_str), Some("false"));
}

#[tokio::test]
async fn grpc_checks_share_one_connection() {
    let (port, _) = grpc_authorizer().await;
    let (authz, counting) = client(&grpc_provider(port, ""));
    let authz = Arc::new(authz);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let authz = authz.clone();
        tasks.push(tokio::spawn(async move {
            check(&authz, Request { path: "/allow", headers: &[], body: None }).await.is_allow()
        }));
    }
    for task in tasks {
        assert!(task.await.unwrap());
    }
    assert!(check(&authz, Request { path: "/allow", headers: &[], body: None }).await.is_allow());
    assert_eq!(counting.dials.load(Ordering::SeqCst), 1);
}
