//! The admission stages of one HTTP/1.1 request beyond plain ALLOW/DENY: AUDIT and dry-run
//! results are recorded (counter and log) and never enforced, a CUSTOM rule whose provider
//! cannot be asked denies, a verified token's claims reach policy and the app, and a local rate
//! limit answers with Envoy's 429.

mod l7_support;

use std::sync::Arc;

use l7_support::{hyper_app, start, status};
use serde_json::json;
use zmesh_jwt::{KeySet, StaticKeys};
use zmesh_policy::{PolicySet, Workload};
use zmesh_proxy::admission::{Admission, Stages};
use zmesh_proxy::l7::ConnectionContext;
use zmesh_proxy::metrics::Metrics;
use zmesh_testkit::jwt::{mint, now_seconds};

fn workload() -> Workload {
    Workload {
        namespace: "default".into(),
        labels: [("app".to_owned(), "app".to_owned())].into(),
        service_account: "default".into(),
    }
}

/// A context whose admission is built from `policies` with `stages` (jwt rules and rate
/// limits are taken from the policies).
fn context_with(policies: &str, mut stages: Stages) -> ConnectionContext {
    let loaded = zmesh_config::load_str(policies);
    assert!(!loaded.has_errors(), "policies do not load: {:?}", loaded.errors().next());
    let set = PolicySet::compile(&loaded.config);
    stages.jwt_rules = set.jwt_rules(&workload());
    let now = std::time::Instant::now();
    let random: Arc<dyn zmesh_proxy::ratelimit::RandomSource> = Arc::new(zmesh_proxy::ratelimit::SplitMix64::new(7));
    let filters = zmesh_proxy::ratelimit::envoy_filters_for("default", &workload().labels, &loaded.config);
    stages.limits = zmesh_proxy::ratelimit::limiters_for(filters, now, &random, &mut Default::default());
    let admission = Arc::new(Admission::build(Arc::new(set.for_workload(&workload())), stages));
    let mut ctx = l7_support::context("");
    ctx.rate_limits = admission.connection_limits();
    ctx.admission = admission;
    ctx
}

async fn get(ctx: ConnectionContext, request: &str) -> (String, String) {
    let (app, _seen) = hyper_app();
    let (mut client, _served) = start(ctx, &app);
    client.send(request).await;
    client.response().await
}

const AUDIT_AND_DRY_RUN: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-admin, namespace: default}
spec: {action: AUDIT, rules: [{to: [{operation: {paths: [\"/admin*\"]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: would-deny-admin
  namespace: default
  annotations: {istio.io/dry-run: \"true\"}
spec: {action: DENY, rules: [{to: [{operation: {paths: [\"/admin*\"]}}]}]}
";

#[tokio::test]
async fn audit_and_dry_run_policies_are_counted_and_never_enforced() {
    let metrics = Arc::new(Metrics::default());
    let stages = Stages { metrics: Some(metrics.clone()), ..Stages::default() };
    let ctx = context_with(AUDIT_AND_DRY_RUN, stages);
    let (head, _) = get(ctx, "GET /admin/users HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n").await;
    assert_eq!(status(&head), "200", "{head}");
    let rendered = metrics.render();
    assert!(
        rendered.contains("zmesh_authz_audit_total{") && rendered.contains("policy=\"default/audit-admin\""),
        "{rendered}"
    );
    assert!(
        rendered.contains("zmesh_authz_dry_run_total{")
            && rendered.contains("policy=\"default/would-deny-admin\"")
            && rendered.contains("shadow_result=\"deny\""),
        "{rendered}"
    );
}

#[tokio::test]
async fn a_custom_rule_whose_provider_has_no_client_denies() {
    let policies = "apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    extensionProviders:
    - name: authz
      envoyExtAuthzHttp: {service: authz.example.test, port: 8000}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: default}
spec: {action: CUSTOM, provider: {name: authz}, rules: [{to: [{operation: {paths: [\"/private*\"]}}]}]}
";
    // No authorizer clients were built: the proxy cannot ask, so it refuses.
    let ctx = context_with(policies, Stages::default());
    let (head, body) = get(ctx.clone(), "GET /private HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n").await;
    assert_eq!(status(&head), "403", "{head}");
    assert_eq!(body, "RBAC: access denied");
    let (head, _) = get(ctx, "GET /public HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n").await;
    assert_eq!(status(&head), "200", "{head}");
}

#[tokio::test]
async fn verified_claims_reach_policy_and_the_app_and_a_refused_token_gets_envoys_401() {
    let now = now_seconds();
    let minted = mint(&json!({
        "keys": {"k": {"type": "ec", "curve": "P-256"}},
        "tokens": [
            {"name": "admin", "key": "k", "alg": "ES256", "kid": "k",
             "claims": {"iss": "https://issuer.test", "sub": "ann", "exp": now + 600, "groups": ["admins"]}},
            {"name": "user", "key": "k", "alg": "ES256", "kid": "k",
             "claims": {"iss": "https://issuer.test", "sub": "bob", "exp": now + 600, "groups": ["users"]}},
            {"name": "expired", "key": "k", "alg": "ES256", "kid": "k",
             "claims": {"iss": "https://issuer.test", "sub": "ann", "exp": now - 600}},
        ],
    }));
    let policies = "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: default}
spec:
  jwtRules:
  - issuer: https://issuer.test
    jwksUri: https://issuer.test/jwks
    outputClaimToHeaders: [{header: x-user, claim: sub}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: admins, namespace: default}
spec: {rules: [{when: [{key: \"request.auth.claims[groups]\", values: [admins]}]}]}
";
    let served = KeySet::from_value(&minted.jwks(&[("k", json!({"kid": "k"}))])).expect("the minted JWKS");
    let stages = || Stages {
        keys: Some(Arc::new(StaticKeys::new().with_remote("https://issuer.test/jwks", served.clone()))),
        ..Stages::default()
    };
    let request = |token: &str| {
        format!(
            "GET /x HTTP/1.1\r\nhost: app\r\nauthorization: Bearer {token}\r\nx-user: forged\r\nconnection: close\r\n\r\n"
        )
    };

    let (app, seen) = hyper_app();
    let (mut client, _served) = start(context_with(policies, stages()), &app);
    client.send(request(minted.token("admin"))).await;
    let (head, _) = client.response().await;
    assert_eq!(status(&head), "200", "{head}");
    let seen = seen.lock().expect("lock")[0].headers.clone();
    let x_user: Vec<&str> = seen.iter().filter(|(n, _)| n == "x-user").map(|(_, v)| v.as_str()).collect();
    assert_eq!(x_user, ["ann"], "the claim replaces the client's copy: {seen:?}");
    assert!(!seen.iter().any(|(n, _)| n == "authorization"), "the token is not forwarded: {seen:?}");

    let (head, body) = get(context_with(policies, stages()), &request(minted.token("user"))).await;
    assert_eq!((status(&head), body.as_str()), ("403", "RBAC: access denied"));

    let (head, body) = get(context_with(policies, stages()), &request(minted.token("expired"))).await;
    assert_eq!((status(&head), body.as_str()), ("401", "Jwt is expired"), "{head}");
    assert!(l7_support::header(&head, "www-authenticate").is_some_and(|v| v.starts_with("Bearer realm=")), "{head}");
}

#[tokio::test]
async fn a_local_rate_limit_answers_429_once_its_bucket_is_empty() {
    let policies = "apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: limit, namespace: default}
spec:
  workloadSelector: {labels: {app: app}}
  configPatches:
  - applyTo: HTTP_FILTER
    match: {context: SIDECAR_INBOUND, listener: {filterChain: {filter: {name: envoy.filters.network.http_connection_manager}}}}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          '@type': type.googleapis.com/udpa.type.v1.TypedStruct
          type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          value:
            stat_prefix: http_local_rate_limiter
            token_bucket: {max_tokens: 1, tokens_per_fill: 1, fill_interval: 60s}
            filter_enabled: {runtime_key: e, default_value: {numerator: 100, denominator: HUNDRED}}
            filter_enforced: {runtime_key: f, default_value: {numerator: 100, denominator: HUNDRED}}
";
    let metrics = Arc::new(Metrics::default());
    let ctx = context_with(policies, Stages { metrics: Some(metrics.clone()), ..Stages::default() });
    let request = "GET / HTTP/1.1\r\nhost: app\r\n\r\n";
    let (app, _seen) = hyper_app();
    let (mut client, _served) = start(ctx, &app);
    client.send(request).await;
    let (first, _) = client.response().await;
    assert_eq!(status(&first), "200", "{first}");
    client.send(request).await;
    let (second, body) = client.response().await;
    assert_eq!((status(&second), body.as_str()), ("429", "local_rate_limited"), "{second}");
    assert_eq!(l7_support::header(&second, "x-envoy-ratelimited"), Some("true"), "{second}");
    assert!(metrics.render().contains("result=\"rate_limited\""));
}

/// A real HTTP authorizer on 127.0.0.1 that allows everything and records the bodies it saw.
async fn recording_authorizer() -> (u16, Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
    use http_body_util::BodyExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorder = bodies.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let recorder = recorder.clone();
            let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let recorder = recorder.clone();
                async move {
                    let body = request.into_body().collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
                    recorder.lock().expect("lock").push(body);
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                        bytes::Bytes::new(),
                    )))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (port, bodies)
}

/// A context whose CUSTOM policy sends every request, with the first 5 bytes of its body, to
/// the HTTP authorizer on `port`.
fn body_checking_context(port: u16) -> ConnectionContext {
    let policies = format!(
        "apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |
    extensionProviders:
    - name: authz
      envoyExtAuthzHttp:
        service: 127.0.0.1
        port: {port}
        includeRequestBodyInCheck: {{maxRequestBytes: 5, allowPartialMessage: true}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ext, namespace: default}}
spec: {{action: CUSTOM, provider: {{name: authz}}, rules: [{{}}]}}
"
    );
    let loaded = zmesh_config::load_str(&policies);
    assert!(!loaded.has_errors(), "{:?}", loaded.errors().next());
    let set = PolicySet::compile(&loaded.config);
    let connect: Arc<dyn zmesh_proxy::ext_authz::Connect> =
        Arc::new(zmesh_proxy::ext_authz::PlainTcp { marked: false });
    let authorizers =
        zmesh_proxy::admission::authorizers_for(&set.for_workload(&workload()), &loaded.config.mesh, &connect);
    assert_eq!(authorizers.len(), 1);
    context_with(&policies, Stages { authorizers, ..Stages::default() })
}

#[tokio::test]
async fn an_authorizer_that_asks_for_the_body_sees_its_start_and_the_app_still_gets_all_of_it() {
    let (port, bodies) = recording_authorizer().await;
    for request in [
        "POST /a HTTP/1.1\r\nhost: app\r\ncontent-length: 11\r\nconnection: close\r\n\r\nhello world",
        "POST /a HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n3\r\nhel\r\n8\r\nlo world\r\n0\r\n\r\n",
    ] {
        let ctx = body_checking_context(port);
        let (app, seen) = hyper_app();
        let (mut client, _served) = start(ctx, &app);
        client.send(request).await;
        let (head, _) = client.response().await;
        assert_eq!(status(&head), "200", "{head}");
        assert_eq!(seen.lock().expect("lock")[0].body_len, 11, "the app gets the whole body");
    }
    let bodies = bodies.lock().expect("lock").clone();
    assert_eq!(bodies, [b"hello".to_vec(), b"hello".to_vec()], "the authorizer sees the first 5 bytes");
}

#[tokio::test]
async fn connect_is_authorized_and_then_answered_404_never_tunnelled_as_envoy_does() {
    let deny_all = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: default}
spec: {action: DENY, rules: [{}]}
";
    let request = "CONNECT app:443 HTTP/1.1\r\nhost: app:443\r\n\r\n";
    let (head, body) = get(context_with(deny_all, Stages::default()), request).await;
    assert_eq!((status(&head), body.as_str()), ("403", "RBAC: access denied"), "{head}");

    let (app, _seen) = hyper_app();
    let (mut client, _served) = start(context_with("", Stages::default()), &app);
    client.send(request).await;
    let (head, body) = client.response().await;
    assert_eq!((status(&head), body.as_str()), ("404", ""), "{head}");
    assert_eq!(app.connects(), 0, "a CONNECT never reaches the app");
}

/// A real HTTP/2 app on 127.0.0.1 that answers with the length of the body it received.
async fn h2_app() -> std::net::SocketAddr {
    use http_body_util::BodyExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|request: hyper::Request<hyper::body::Incoming>| async move {
                let length = request.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or_default();
                Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(
                    length.to_string(),
                ))))
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    addr
}

#[tokio::test]
async fn over_h2c_an_authorizer_that_asks_for_the_body_sees_its_start_and_the_app_gets_all_of_it() {
    use http_body_util::BodyExt as _;
    let (port, bodies) = recording_authorizer().await;
    let ctx = body_checking_context(port);
    let app = h2_app().await;
    let (client_end, proxy_end) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move { zmesh_proxy::http2::serve_h2c(proxy_end, &ctx, app, false).await });
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(client_end),
    )
    .await
    .expect("h2c handshake");
    tokio::spawn(connection);
    let request = hyper::Request::post("http://app/a")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"hello world")))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"11", "the app gets the whole body");
    assert_eq!(bodies.lock().expect("lock").clone(), [b"hello".to_vec()], "the authorizer sees the first 5 bytes");
}
