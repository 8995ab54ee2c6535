//! Every algorithm and every verification error, with keys and tokens minted by PyJWT.

use zmesh_testkit::jwt as support;

use std::sync::OnceLock;

use serde_json::{Value, json};
use zmesh_config::authn::JwtRule;
use zmesh_jwt::token::{parse, verify};
use zmesh_jwt::{JwtError, KeySet};

const ISSUER: &str = "https://issuer.example.com";

struct Fixture {
    minted: support::Minted,
    now: u64,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let now = support::now_seconds();
        let claims = |extra: Value| {
            let mut claims = json!({"iss": ISSUER, "sub": "alice", "aud": "api", "exp": now + 3600, "iat": now});
            for (k, v) in extra.as_object().expect("the test fixture is well formed") {
                claims[k] = v.clone();
            }
            claims
        };
        let mut tokens = Vec::new();
        for (alg, key) in [
            ("RS256", "rsa"),
            ("RS384", "rsa"),
            ("RS512", "rsa"),
            ("PS256", "rsa"),
            ("PS384", "rsa"),
            ("PS512", "rsa"),
            ("ES256", "p256"),
            ("ES384", "p384"),
            ("EdDSA", "ed"),
        ] {
            tokens.push(json!({"name": alg, "key": key, "alg": alg, "kid": key, "claims": claims(json!({}))}));
        }
        let mut add = |name: &str, key: Value, alg: &str, kid: Value, extra: Value| {
            tokens.push(json!({"name": name, "key": key, "alg": alg, "kid": kid, "claims": claims(extra),
                                "secret": "a-shared-secret-that-is-long-enough-for-hs256"}));
        };
        add("none", Value::Null, "none", Value::Null, json!({}));
        add("hs256", Value::Null, "HS256", json!("rsa"), json!({}));
        add("expired", json!("rsa"), "RS256", json!("rsa"), json!({"exp": now - 61}));
        add("expired-within-skew", json!("rsa"), "RS256", json!("rsa"), json!({"exp": now - 30}));
        add("not-yet-valid", json!("rsa"), "RS256", json!("rsa"), json!({"nbf": now + 120}));
        add("nbf-within-skew", json!("rsa"), "RS256", json!("rsa"), json!({"nbf": now + 30}));
        add("no-exp", json!("rsa"), "RS256", json!("rsa"), json!({"exp": null}));
        add("other-issuer", json!("rsa"), "RS256", json!("rsa"), json!({"iss": "https://evil.example.com"}));
        add("no-issuer", json!("rsa"), "RS256", json!("rsa"), json!({"iss": null}));
        add("aud-list", json!("rsa"), "RS256", json!("rsa"), json!({"aud": ["other", "https://api/"]}));
        add("unknown-kid", json!("rsa"), "RS256", json!("rotated"), json!({}));
        add("no-kid-second-key", json!("rsa2"), "RS256", Value::Null, json!({}));
        add("wrong-key-same-kid", json!("rsa2"), "RS256", json!("rsa"), json!({}));
        add("ps-with-rs-pinned-key", json!("rsa"), "PS256", json!("rsa"), json!({}));
        add("es256-by-p384-kid", json!("p384"), "ES384", json!("p256"), json!({}));
        let minted = support::mint(&json!({
            "keys": {
                "rsa": {"type": "rsa", "bits": 2048},
                "rsa2": {"type": "rsa", "bits": 2048},
                "p256": {"type": "ec", "curve": "P-256"},
                "p384": {"type": "ec", "curve": "P-384"},
                "ed": {"type": "okp"},
            },
            "tokens": tokens,
        }));
        Fixture { minted, now }
    })
}

fn rule(audiences: &[&str]) -> JwtRule {
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: foo}}\nspec:\n  jwtRules:\n  - issuer: {ISSUER}\n    jwksUri: https://issuer.example.com/jwks\n    audiences: {audiences:?}\n"
    );
    let config = zmesh_testkit::load_config("rule", &yaml, &None);
    config.request_authentications[0].jwt_rules[0].clone()
}

/// The set every test uses: one key of each type, each with its name as `kid`.
fn keys() -> KeySet {
    let minted = &fixture().minted;
    KeySet::from_value(&minted.jwks(&[
        ("rsa", json!({"kid": "rsa"})),
        ("p256", json!({"kid": "p256"})),
        ("p384", json!({"kid": "p384"})),
        ("ed", json!({"kid": "ed"})),
    ]))
    .expect("the test fixture is well formed")
}

fn check(name: &str, rule: &JwtRule, keys: &KeySet) -> Result<(), JwtError> {
    let fixture = fixture();
    let parsed = parse(fixture.minted.token(name))?;
    verify(&parsed, rule, Some(keys), fixture.now)
}

#[test]
fn every_supported_algorithm_verifies_tokens_signed_by_pyjwt() {
    let (rule, keys) = (rule(&["api"]), keys());
    for alg in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"] {
        assert_eq!(check(alg, &rule, &keys), Ok(()), "{alg}");
    }
}

#[test]
fn unsigned_and_hmac_tokens_are_refused() {
    let (rule, keys) = (rule(&[]), keys());
    assert_eq!(check("none", &rule, &keys), Err(JwtError::AlgNotSupported));
    assert_eq!(check("hs256", &rule, &keys), Err(JwtError::AlgNotSupported));
    assert_eq!(JwtError::AlgNotSupported.status(), 401);
}

#[test]
fn expiry_and_not_before_are_checked_with_sixty_seconds_of_skew() {
    let (rule, keys) = (rule(&[]), keys());
    assert_eq!(check("expired", &rule, &keys), Err(JwtError::Expired));
    assert_eq!(JwtError::Expired.to_string(), "Jwt is expired");
    assert_eq!(check("expired-within-skew", &rule, &keys), Ok(()));
    assert_eq!(check("not-yet-valid", &rule, &keys), Err(JwtError::NotYetValid));
    assert_eq!(check("nbf-within-skew", &rule, &keys), Ok(()));
    assert_eq!(check("no-exp", &rule, &keys), Ok(()), "Istio does not require exp");
}

#[test]
fn time_is_the_parameter_not_the_clock() {
    let fixture = fixture();
    let (rule, keys) = (rule(&[]), keys());
    let parsed = parse(fixture.minted.token("RS256")).expect("the test fixture is well formed");
    assert_eq!(verify(&parsed, &rule, Some(&keys), fixture.now + 3600 + 60), Ok(()));
    assert_eq!(verify(&parsed, &rule, Some(&keys), fixture.now + 3600 + 61), Err(JwtError::Expired));
}

#[test]
fn a_token_from_another_issuer_is_not_configured() {
    let (rule, keys) = (rule(&[]), keys());
    assert_eq!(check("other-issuer", &rule, &keys), Err(JwtError::UnknownIssuer));
    assert_eq!(JwtError::UnknownIssuer.to_string(), "Jwt issuer is not configured");
    assert_eq!(check("no-issuer", &rule, &keys), Ok(()), "Envoy checks iss only when the token has one");
}

#[test]
fn audiences_are_any_of_the_rules_and_unchecked_when_it_lists_none() {
    let keys = keys();
    assert_eq!(check("RS256", &rule(&[]), &keys), Ok(()));
    assert_eq!(check("RS256", &rule(&["other", "api"]), &keys), Ok(()));
    assert_eq!(check("aud-list", &rule(&["http://api"]), &keys), Ok(()), "compared without scheme and slash");
    assert_eq!(check("RS256", &rule(&["web"]), &keys), Err(JwtError::AudienceNotAllowed));
    assert_eq!(JwtError::AudienceNotAllowed.status(), 403);
    assert_eq!(JwtError::AudienceNotAllowed.to_string(), "Audiences in Jwt are not allowed");
}

#[test]
fn a_kid_no_key_carries_is_an_unknown_kid() {
    let (rule, keys) = (rule(&[]), keys());
    assert_eq!(check("unknown-kid", &rule, &keys), Err(JwtError::UnknownKid));
    assert_eq!(JwtError::UnknownKid.to_string(), "Jwks doesn't have key to match kid or alg from Jwt");
}

#[test]
fn a_token_without_kid_is_tried_with_every_key_of_its_algorithm() {
    let minted = &fixture().minted;
    let two = KeySet::from_value(&minted.jwks(&[("rsa", json!({"kid": "a"})), ("rsa2", json!({"kid": "b"}))]))
        .expect("the test fixture is well formed");
    assert_eq!(check("no-kid-second-key", &rule(&[]), &two), Ok(()));
    let only_first =
        KeySet::from_value(&minted.jwks(&[("rsa", json!({"kid": "a"}))])).expect("the test fixture is well formed");
    assert_eq!(check("no-kid-second-key", &rule(&[]), &only_first), Err(JwtError::VerificationFails));
}

#[test]
fn a_key_without_kid_is_tried_for_any_token_kid() {
    let minted = &fixture().minted;
    let unnamed = KeySet::from_value(&minted.jwks(&[("rsa", json!({}))])).expect("the test fixture is well formed");
    assert_eq!(check("RS256", &rule(&[]), &unnamed), Ok(()));
}

#[test]
fn a_signature_by_another_key_fails_verification() {
    let (rule, keys) = (rule(&[]), keys());
    assert_eq!(check("wrong-key-same-kid", &rule, &keys), Err(JwtError::VerificationFails));
    assert_eq!(JwtError::VerificationFails.to_string(), "Jwt verification fails");
}

#[test]
fn a_changed_payload_fails_verification() {
    let fixture = fixture();
    let token = fixture.minted.token("RS256");
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let payload = String::from_utf8(
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &parts[1])
            .expect("the test fixture is well formed"),
    )
    .expect("the test fixture is well formed")
    .replace("alice", "admin");
    parts[1] = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload);
    let forged = parts.join(".");
    let parsed = parse(&forged).expect("the test fixture is well formed");
    assert_eq!(parsed.claims["sub"], "admin");
    assert_eq!(verify(&parsed, &rule(&[]), Some(&keys()), fixture.now), Err(JwtError::VerificationFails));
}

#[test]
fn a_key_pinned_to_another_algorithm_does_not_match() {
    let minted = &fixture().minted;
    let pinned = KeySet::from_value(&minted.jwks(&[("rsa", json!({"kid": "rsa", "alg": "RS256"}))]))
        .expect("the test fixture is well formed");
    assert_eq!(check("RS256", &rule(&[]), &pinned), Ok(()));
    assert_eq!(check("ps-with-rs-pinned-key", &rule(&[]), &pinned), Err(JwtError::KidAlgMismatch));
    assert_eq!(check("es256-by-p384-kid", &rule(&[]), &keys()), Err(JwtError::KidAlgMismatch), "curve must fit alg");
}

#[test]
fn a_rule_whose_key_set_was_never_fetched_fails_closed() {
    let fixture = fixture();
    let parsed = parse(fixture.minted.token("RS256")).expect("the test fixture is well formed");
    assert_eq!(verify(&parsed, &rule(&[]), None, fixture.now), Err(JwtError::JwksFetchFailed));
    assert_eq!(JwtError::JwksFetchFailed.to_string(), "Jwks remote fetch is failed");
}

#[test]
fn claims_are_checked_before_keys_as_envoy_does() {
    let fixture = fixture();
    let parsed = parse(fixture.minted.token("expired")).expect("the test fixture is well formed");
    assert_eq!(verify(&parsed, &rule(&[]), None, fixture.now), Err(JwtError::Expired));
}

#[test]
fn pyjwt_public_keys_parse_with_their_members() {
    let minted = &fixture().minted;
    let set = KeySet::from_value(&minted.jwks(&[("rsa", json!({"kid": "r", "use": "sig", "alg": "PS512"}))]))
        .expect("the test fixture is well formed");
    assert_eq!(set.keys()[0].kid.as_deref(), Some("r"));
    assert!(set.skipped().is_empty());
}
