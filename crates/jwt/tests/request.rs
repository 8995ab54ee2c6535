//! Whole requests through a workload's rules: Envoy's combination of several rules and
//! tokens, header edits, the cache, and agreement with the offline checker on the conformance
//! cases. Tokens are minted by PyJWT.

use zmesh_testkit::jwt as support;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{Value, json};
use zmesh_jwt::{JwtError, KeySet, KeySource, RequestTokens, StaticKeys, TokenCache, authenticate_request};
use zmesh_policy::authn::{Token, TokenLocation};
use zmesh_policy::set::JwtRules;
use zmesh_policy::{AuthnOutcome, PolicySet, Reason, Workload};
use zmesh_testkit::{AuthzCase, load_cases, load_config};

const A: &str = "https://a.example.com";
const B: &str = "https://b.example.com";
const A_JWKS: &str = "https://a.example.com/jwks";
const B_JWKS: &str = "https://b.example.com/jwks";

struct Fixture {
    minted: support::Minted,
    now: u64,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let now = support::now_seconds();
        let token = |name: &str, key: &str, kid: &str, claims: Value| {
            let mut full = json!({"sub": "alice", "exp": now + 3600});
            for (k, v) in claims.as_object().expect("the test fixture is well formed") {
                full[k] = v.clone();
            }
            json!({"name": name, "key": key, "alg": if key == "ec" { "ES256" } else { "RS256" }, "kid": kid, "claims": full})
        };
        let mut tokens = vec![
            token("a", "a", "a", json!({"iss": A, "aud": "api", "scope": "read write", "n": 42, "ok": true,
                                          "org": {"team": "blue"}, "list": [1]})),
            token("b", "ec", "b", json!({"iss": B, "sub": "bob"})),
            token("b-expired", "ec", "b", json!({"iss": B, "exp": now - 3600})),
            token("c", "a", "a", json!({"iss": "https://c.example.com"})),
            token("a-by-other-key", "a2", "a", json!({"iss": A})),
            token("a-rotated", "a2", "a2", json!({"iss": A, "aud": "api"})),
            token("a-web", "a", "a", json!({"iss": A, "aud": "web"})),
        ];
        // One token per conformance case that carries one (valid, or badly signed).
        for case in conformance_cases() {
            if let Some(jwt) = case.request.get("jwt") {
                tokens.push(json!({"name": case.name, "key": "a", "alg": "RS256", "kid": "a",
                                   "claims": case_claims(jwt, now)}));
            } else if case.request.get("jwtInvalid").is_some() {
                let iss = first_issuer(&case).unwrap_or_default();
                tokens.push(json!({"name": case.name, "key": "a2", "alg": "RS256", "kid": "a",
                                   "claims": {"iss": iss, "sub": "mallory", "exp": now + 3600}}));
            }
        }
        let minted = support::mint(&json!({
            "keys": {"a": {"type": "rsa"}, "a2": {"type": "rsa"}, "ec": {"type": "ec", "curve": "P-256"}},
            "tokens": tokens,
        }));
        Fixture { minted, now }
    })
}

fn conformance_cases() -> Vec<AuthzCase> {
    load_cases::<AuthzCase>("conformance/authz-cases.yaml")
        .into_iter()
        .filter(|c| c.request.get("jwt").is_some() || c.request.get("jwtInvalid").is_some())
        .collect()
}

fn case_claims(jwt: &Value, now: u64) -> Value {
    let mut claims = jwt.get("claims").cloned().unwrap_or_else(|| json!({}));
    for name in ["iss", "sub", "aud"] {
        if let Some(value) = jwt.get(name) {
            claims[name] = value.clone();
        }
    }
    claims["exp"] = json!(now + 3600);
    claims
}

fn first_issuer(case: &AuthzCase) -> Option<String> {
    let config = load_config(&case.name, &case.policies, &case.mesh);
    config.request_authentications.iter().flat_map(|r| &r.jwt_rules).map(|r| r.issuer.clone()).next()
}

fn workload() -> Workload {
    Workload { namespace: "foo".to_owned(), labels: Default::default(), service_account: "httpbin".to_owned() }
}

/// The rules of a RequestAuthentication in namespace foo, jwtRules given as YAML list items.
fn rules(jwt_rules: &str) -> Vec<Arc<JwtRules>> {
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: foo}}\nspec:\n  jwtRules:\n{jwt_rules}"
    );
    PolicySet::compile(&load_config("rules", &yaml, &None)).jwt_rules(&workload())
}

fn keys() -> StaticKeys {
    let minted = &fixture().minted;
    StaticKeys::new()
        .with_remote(
            A_JWKS,
            KeySet::from_value(&minted.jwks(&[("a", json!({"kid": "a"}))])).expect("the test fixture is well formed"),
        )
        .with_remote(
            B_JWKS,
            KeySet::from_value(&minted.jwks(&[("ec", json!({"kid": "b"}))])).expect("the test fixture is well formed"),
        )
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(fixture().now)
}

fn bearer(name: &str) -> String {
    format!("Bearer {}", fixture().minted.token(name))
}

fn run(rules: &[Arc<JwtRules>], headers: &[(&str, &str)], query: Option<&str>) -> zmesh_jwt::JwtResult {
    let request = RequestTokens { method: "GET", headers, query };
    authenticate_request(rules, &keys(), &request, now(), &TokenCache::default())
}

fn two_rules() -> Vec<Arc<JwtRules>> {
    rules(&format!("  - {{issuer: '{A}', jwksUri: '{A_JWKS}'}}\n  - {{issuer: '{B}', jwksUri: '{B_JWKS}'}}\n"))
}

fn rejected(result: &zmesh_jwt::JwtResult) -> (u16, String) {
    match &result.outcome {
        AuthnOutcome::Reject { status, detail, .. } => (*status, detail.clone()),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn a_request_without_a_token_passes_without_identity() {
    let result = run(&two_rules(), &[("x-other", "1")], None);
    assert_eq!(result.outcome, AuthnOutcome::Pass { claims: None, rule: None });
    assert_eq!(result.error, None);
}

#[test]
fn a_token_outside_every_configured_location_is_ignored() {
    let rules = rules(&format!("  - {{issuer: '{A}', jwksUri: '{A_JWKS}', fromParams: [token]}}\n"));
    let header = bearer("c");
    let result = run(&rules, &[("authorization", &header)], Some("access_token=x.y.z"));
    assert_eq!(result.outcome, AuthnOutcome::Pass { claims: None, rule: None });
}

#[test]
fn the_rule_that_verifies_the_token_accepts_it_with_its_claims() {
    let header = bearer("b");
    let result = run(&two_rules(), &[("authorization", &header)], None);
    let claims = result.claims().expect("claims");
    assert_eq!(claims.subject(), Some("bob"));
    assert_eq!(result.accepted_by(), Some(&("foo/jwt".into(), 1)));
}

#[test]
fn a_token_no_rule_verifies_is_refused_with_the_real_failure() {
    let header = bearer("b-expired");
    assert_eq!(rejected(&run(&two_rules(), &[("authorization", &header)], None)), (401, "Jwt is expired".to_owned()));
    let header = bearer("a-by-other-key");
    let result = run(&two_rules(), &[("authorization", &header)], None);
    assert_eq!(rejected(&result), (401, "Jwt verification fails".to_owned()));
    assert_eq!(result.error, Some(JwtError::VerificationFails));
}

#[test]
fn a_token_from_an_issuer_no_rule_names_is_refused() {
    let header = bearer("c");
    let result = run(&two_rules(), &[("authorization", &header)], None);
    assert_eq!(rejected(&result), (401, "Jwt issuer is not configured".to_owned()));
}

#[test]
fn a_token_for_an_audience_no_rule_accepts_is_forbidden() {
    let rules = rules(&format!("  - {{issuer: '{A}', jwksUri: '{A_JWKS}', audiences: [api]}}\n"));
    let header = bearer("a-web");
    let result = run(&rules, &[("authorization", &header)], None);
    assert_eq!(rejected(&result), (403, "Audiences in Jwt are not allowed".to_owned()));
    assert!(matches!(result.outcome, AuthnOutcome::Reject { reason: Reason::JwtAudience, .. }));
}

#[test]
fn every_token_a_rule_reads_must_verify() {
    let (good, bad) = (bearer("b"), fixture().minted.token("b-expired").to_owned());
    let result = run(&two_rules(), &[("authorization", &good)], Some(&format!("access_token={bad}")));
    assert_eq!(rejected(&result), (401, "Jwt is expired".to_owned()));
}

#[test]
fn a_rule_whose_keys_were_never_fetched_refuses_its_tokens() {
    let rules = rules(&format!("  - {{issuer: '{A}', jwksUri: 'https://a.example.com/never'}}\n"));
    let header = bearer("a");
    assert_eq!(
        rejected(&run(&rules, &[("authorization", &header)], None)),
        (401, "Jwks remote fetch is failed".to_owned())
    );
}

#[test]
fn inline_keys_verify_without_any_fetch() {
    let jwks = fixture().minted.jwks(&[("a", json!({"kid": "a"}))]).to_string();
    let rules = rules(&format!("  - {{issuer: '{A}', jwks: '{jwks}'}}\n"));
    let header = bearer("a");
    let request = RequestTokens { method: "GET", headers: &[("authorization", &header)], query: None };
    let result = authenticate_request(&rules, &StaticKeys::new(), &request, now(), &TokenCache::default());
    assert_eq!(result.claims().and_then(|c| c.issuer()), Some(A));
}

#[test]
fn an_unknown_kid_names_the_key_set_to_refresh() {
    let header = bearer("a-rotated");
    let result = run(&two_rules(), &[("authorization", &header)], None);
    assert_eq!(rejected(&result).0, 401);
    assert_eq!(result.error, Some(JwtError::UnknownKid));
    assert_eq!(result.unknown_kid, [A_JWKS]);
}

#[test]
fn a_cors_preflight_skips_token_checks() {
    let header = bearer("b-expired");
    let headers =
        [("authorization", header.as_str()), ("origin", "https://x"), ("access-control-request-method", "GET")];
    let request = RequestTokens { method: "OPTIONS", headers: &headers, query: None };
    let result = authenticate_request(&two_rules(), &keys(), &request, now(), &TokenCache::default());
    assert_eq!(result.outcome, AuthnOutcome::Pass { claims: None, rule: None });
}

#[test]
fn scope_and_configured_claims_are_split_on_spaces() {
    let rules = rules(&format!("  - {{issuer: '{A}', jwksUri: '{A_JWKS}', spaceDelimitedClaims: [sub]}}\n"));
    let header = bearer("a");
    let result = run(&rules, &[("authorization", &header)], None);
    let claims = result.claims().expect("the test fixture is well formed");
    assert_eq!(claims.get("scope"), Some(&json!(["read", "write"])));
    assert_eq!(claims.get("sub"), Some(&json!(["alice"])));
}

#[test]
fn the_token_header_is_removed_unless_the_rule_forwards_it() {
    let header = bearer("a");
    let removed = run(&two_rules(), &[("Authorization", &header)], None);
    assert_eq!(removed.edits.remove, ["authorization"]);
    let forwarding = rules(&format!("  - {{issuer: '{A}', jwksUri: '{A_JWKS}', forwardOriginalToken: true}}\n"));
    assert!(run(&forwarding, &[("authorization", &header)], None).edits.remove.is_empty());
}

#[test]
fn payload_and_claims_go_to_headers_and_client_copies_are_removed() {
    let rules = rules(&format!(
        "  - issuer: '{A}'\n    jwksUri: '{A_JWKS}'\n    outputPayloadToHeader: x-jwt-payload\n    outputClaimToHeaders:\n    - {{header: x-sub, claim: sub}}\n    - {{header: x-n, claim: n}}\n    - {{header: x-ok, claim: ok}}\n    - {{header: x-team, claim: org.team}}\n    - {{header: x-list, claim: list}}\n    - {{header: x-missing, claim: nope}}\n"
    ));
    let header = bearer("a");
    let forged = [("authorization", header.as_str()), ("x-sub", "admin"), ("X-Jwt-Payload", "e30")];
    let result = run(&rules, &forged, None);
    for name in ["x-jwt-payload", "x-sub", "x-n", "x-ok", "x-team", "x-list", "x-missing", "authorization"] {
        assert!(result.edits.remove.iter().any(|h| h == name), "{name} is not removed: {:?}", result.edits.remove);
    }
    let added: std::collections::HashMap<&str, &str> =
        result.edits.add.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(added.get("x-sub"), Some(&"alice"));
    assert_eq!(added.get("x-n"), Some(&"42"));
    assert_eq!(added.get("x-ok"), Some(&"true"));
    assert_eq!(added.get("x-team"), Some(&"blue"));
    assert_eq!(added.get("x-list"), None, "lists are not sent");
    assert_eq!(added.get("x-missing"), None);
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(added["x-jwt-payload"])
        .expect("the test fixture is well formed");
    let payload: Value = serde_json::from_slice(&payload).expect("the test fixture is well formed");
    assert_eq!(payload["iss"], A);

    // Without a token the forged copies are still removed, and nothing is added.
    let result = run(&rules, &forged[1..], None);
    assert!(result.edits.remove.iter().any(|h| h == "x-sub") && result.edits.add.is_empty());
}

#[test]
fn a_cached_token_is_checked_again_for_expiry_and_dropped_with_its_key_set() {
    let rules = two_rules();
    let header = bearer("a");
    let headers = [("authorization", header.as_str())];
    let request = RequestTokens { method: "GET", headers: &headers, query: None };
    let cache = TokenCache::default();
    let keys = keys();
    assert!(authenticate_request(&rules, &keys, &request, now(), &cache).claims().is_some());
    assert_eq!(cache.len(), 1);
    assert!(authenticate_request(&rules, &keys, &request, now(), &cache).claims().is_some());
    assert_eq!(cache.len(), 1, "the second request used the entry");
    let later = now() + Duration::from_secs(3600 + 61);
    assert_eq!(authenticate_request(&rules, &keys, &request, later, &cache).error, Some(JwtError::Expired));

    // A new key set for A without the signing key: the entry must not vouch for the token.
    struct Rotated(StaticKeys);
    impl KeySource for Rotated {
        fn key_set(&self, rules: &Arc<JwtRules>, index: usize) -> Option<Arc<KeySet>> {
            self.0.key_set(rules, index)
        }
    }
    let minted = &fixture().minted;
    let rotated = Rotated(StaticKeys::new().with_remote(
        A_JWKS,
        KeySet::from_value(&minted.jwks(&[("a2", json!({"kid": "a"}))])).expect("the test fixture is well formed"),
    ));
    let result = authenticate_request(&rules, &rotated, &request, now(), &cache);
    assert_eq!(result.error, Some(JwtError::VerificationFails));
}

#[test]
fn the_proxy_and_the_offline_checker_agree_on_every_conformance_case_with_a_token() {
    let fixture = fixture();
    let cases = conformance_cases();
    assert!(cases.len() >= 10, "only {} conformance cases carry a token", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let config = load_config(&case.name, &case.policies, &case.mesh);
        let set = PolicySet::compile(&config);
        let workload_input: zmesh_policy::input::WorkloadInput =
            serde_json::from_value(case.workload.clone()).expect("the test fixture is well formed");
        let rules = set.jwt_rules(&Workload::from(&workload_input));
        // Every jwksUri of the case serves the key the valid tokens are signed with.
        let set_a = || {
            KeySet::from_value(&fixture.minted.jwks(&[("a", json!({"kid": "a"}))]))
                .expect("the test fixture is well formed")
        };
        let keys = config
            .request_authentications
            .iter()
            .flat_map(|r| &r.jwt_rules)
            .filter_map(|r| r.jwks_uri.clone())
            .fold(StaticKeys::new(), |keys, uri| keys.with_remote(&uri, set_a()));
        let header = bearer(&case.name);
        let headers = [("authorization", header.as_str())];
        let request = RequestTokens { method: "GET", headers: &headers, query: None };
        let proxy = authenticate_request(&rules, &keys, &request, now(), &TokenCache::default()).outcome;
        let token = match case.request.get("jwt") {
            Some(jwt) => Token::Valid {
                location: TokenLocation::AuthorizationBearer,
                claims: case_claims(jwt, fixture.now).as_object().expect("the test fixture is well formed").clone(),
            },
            None => Token::Invalid { location: TokenLocation::AuthorizationBearer, reason: "bad signature".to_owned() },
        };
        let offline = zmesh_policy::authenticate(&rules, &token);
        let same = match (&proxy, &offline) {
            (AuthnOutcome::Pass { .. }, AuthnOutcome::Pass { .. }) => proxy == offline,
            (AuthnOutcome::Reject { status: a, reason: r, .. }, AuthnOutcome::Reject { status: b, reason: s, .. }) => {
                a == b && r == s
            }
            _ => false,
        };
        if !same {
            failures.push(format!("{}: proxy {proxy:?}\n   offline {offline:?}", case.name));
        }
    }
    assert!(failures.is_empty(), "{} disagreements:\n{}", failures.len(), failures.join("\n"));
}
