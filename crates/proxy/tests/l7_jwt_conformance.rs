//! Every conformance case that carries a token, through the proxy's own request path: a real
//! token (minted by PyJWT, signed with the key every `jwksUri` of the case serves, or with a
//! key it does not serve for the `jwtInvalid` cases) in a raw HTTP/1.1 request to
//! `serve_http1`, with the case's RequestAuthentication and AuthorizationPolicy in force. The
//! proxy's answer must be Istio's (the case's `expect`) and the offline engine's
//! (`zmesh authz check`) — one answer, whichever side is asked.

mod l7_support;

use std::sync::Arc;

use l7_support::{PATIENCE, hyper_app, start, status};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use zmesh_http::Limits;
use zmesh_jwt::{KeySet, StaticKeys};
use zmesh_policy::input::{RequestInput, WorkloadInput, check_authz};
use zmesh_policy::{PolicySet, Verdict, Workload};
use zmesh_proxy::admission::{Admission, Stages};
use zmesh_proxy::l7::{ConnectionContext, Timeouts};
use zmesh_testkit::jwt::{Minted, mint, now_seconds};
use zmesh_testkit::{AuthzCase, load_cases, load_config};

fn token_cases() -> Vec<AuthzCase> {
    load_cases::<AuthzCase>("conformance/authz-cases.yaml")
        .into_iter()
        .filter(|c| c.request.get("jwt").is_some() || c.request.get("jwtInvalid").is_some())
        .collect()
}

/// The claims of a case's `jwt`, valid for an hour.
fn claims(jwt: &Value, now: u64) -> Value {
    let mut claims = jwt.get("claims").cloned().unwrap_or_else(|| json!({}));
    for name in ["iss", "sub", "aud"] {
        if let Some(value) = jwt.get(name) {
            claims[name] = value.clone();
        }
    }
    claims["exp"] = json!(now + 3600);
    claims
}

fn mint_tokens(cases: &[AuthzCase]) -> Minted {
    let now = now_seconds();
    let tokens: Vec<Value> = cases
        .iter()
        .map(|case| match case.request.get("jwt") {
            Some(jwt) => {
                json!({"name": case.name, "key": "served", "alg": "RS256", "kid": "k", "claims": claims(jwt, now)})
            }
            None => {
                let config = load_config(&case.name, &case.policies, &case.mesh);
                let issuer =
                    config.request_authentications.iter().flat_map(|r| &r.jwt_rules).map(|r| r.issuer.clone()).next();
                // Signed with a key the JWKS does not hold, under the served key's kid.
                json!({"name": case.name, "key": "stranger", "alg": "RS256", "kid": "k",
                       "claims": {"iss": issuer, "sub": "mallory", "exp": now + 3600}})
            }
        })
        .collect();
    mint(&json!({"keys": {"served": {"type": "rsa"}, "stranger": {"type": "rsa"}}, "tokens": tokens}))
}

fn context(case: &AuthzCase, keys: StaticKeys) -> ConnectionContext {
    let config = load_config(&case.name, &case.policies, &case.mesh);
    let set = PolicySet::compile(&config);
    let workload_input: WorkloadInput = serde_json::from_value(case.workload.clone()).expect("the case's workload");
    let workload = Workload::from(&workload_input);
    let request: RequestInput = serde_json::from_value(case.request.clone()).expect("the case's request");
    let stages = Stages { jwt_rules: set.jwt_rules(&workload), keys: Some(Arc::new(keys)), ..Stages::default() };
    let peer = request.source.principal.as_ref().map(|principal| {
        let uri = if principal.starts_with("spiffe://") { principal.clone() } else { format!("spiffe://{principal}") };
        uri.parse().expect("the case's principal is a SPIFFE ID")
    });
    let source_ip = request.source.ip.unwrap_or([10, 0, 0, 5].into());
    let destination_ip = request.destination.ip.unwrap_or([10, 0, 0, 9].into());
    ConnectionContext {
        admission: Arc::new(Admission::build(Arc::new(set.for_workload(&workload)), stages)),
        rate_limits: Arc::from([]),
        peer,
        local_identity: None,
        source: (source_ip, 40000).into(),
        destination: (destination_ip, request.destination.port).into(),
        path_normalization: config.mesh.path_normalization,
        limits: Limits::default(),
        timeouts: Timeouts::default(),
        shutdown: CancellationToken::new(),
    }
}

/// The case's request as raw HTTP/1.1, its token in `Authorization: Bearer`.
fn raw_request(case: &AuthzCase, token: &str) -> String {
    let request: RequestInput = serde_json::from_value(case.request.clone()).expect("the case's request");
    let mut raw = format!(
        "{} {} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {token}\r\nconnection: close\r\n",
        request.method.as_deref().unwrap_or("GET"),
        request.path.as_deref().unwrap_or("/"),
        request.host.as_deref().unwrap_or("app")
    );
    for (name, value) in &request.headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("\r\n");
    raw
}

#[tokio::test]
async fn the_proxy_gives_istios_and_the_offline_engines_answer_to_every_token_case() {
    let cases = token_cases();
    assert!(cases.len() >= 10, "only {} conformance cases carry a token", cases.len());
    let minted = mint_tokens(&cases);
    let served = KeySet::from_value(&minted.jwks(&[("served", json!({"kid": "k"}))])).expect("the minted JWKS");
    let mut failures = Vec::new();
    for case in &cases {
        let config = load_config(&case.name, &case.policies, &case.mesh);
        let keys = config
            .request_authentications
            .iter()
            .flat_map(|r| &r.jwt_rules)
            .filter_map(|r| r.jwks_uri.clone())
            .fold(StaticKeys::new(), |keys, uri| keys.with_remote(&uri, served.clone()));
        let ctx = context(case, keys);
        let (app, _seen) = hyper_app();
        let (mut client, served_connection) = start(ctx, &app);
        client.send(raw_request(case, minted.token(&case.name))).await;
        let head = tokio::time::timeout(PATIENCE, client.head()).await.expect("a response");
        drop(served_connection);
        let proxy_status: u16 = status(&head).parse().expect("a status code");

        let workload: WorkloadInput = serde_json::from_value(case.workload.clone()).expect("the case's workload");
        let request: RequestInput = serde_json::from_value(case.request.clone()).expect("the case's request");
        let offline = check_authz(&PolicySet::compile(&config), &config.mesh, &workload, &request)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let offline_status = if offline.decision.verdict == Verdict::Allow { 200 } else { offline.decision.status };
        let istio_allows = case.expect == "allow";
        let proxy_allows = proxy_status == 200;
        let istio_status_ok = case.expect_status.is_none_or(|s| s == proxy_status) || istio_allows;
        if proxy_allows != istio_allows || !istio_status_ok || proxy_status != offline_status {
            failures.push(format!(
                "{}: Istio {} {:?}, proxy {proxy_status}, offline {offline_status} — {}",
                case.name, case.expect, case.expect_status, case.why
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} token cases disagree:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
