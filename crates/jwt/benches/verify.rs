//! What JWT authentication costs a request: a full verification (RS256, ES256) and a token
//! already in the cache. Tokens are minted by PyJWT (tests/mint.py); python3 with pyjwt and
//! cryptography must be installed.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use zmesh_jwt::{KeySet, RequestTokens, StaticKeys, TokenCache, authenticate_request};
use zmesh_policy::AuthnOutcome;
use zmesh_policy::set::JwtRules;

use zmesh_testkit::jwt as support;

const ISSUER: &str = "https://issuer.example.com";

fn rules(uri: &str) -> Vec<Arc<JwtRules>> {
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: foo}}\nspec:\n  jwtRules:\n  - issuer: {ISSUER}\n    jwksUri: {uri}\n    audiences: [api]\n"
    );
    let config = zmesh_testkit::load_config("bench", &yaml, &None);
    let set = zmesh_policy::PolicySet::compile(&config);
    set.jwt_rules(&zmesh_policy::Workload {
        namespace: "foo".to_owned(),
        labels: Default::default(),
        service_account: "default".to_owned(),
    })
}

fn bench(c: &mut Criterion) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is after 1970").as_secs();
    let claims = json!({"iss": ISSUER, "sub": "alice", "aud": "api", "exp": now + 3600, "scope": "read write"});
    let minted = support::mint(&json!({
        "keys": {"rsa": {"type": "rsa", "bits": 2048}, "ec": {"type": "ec", "curve": "P-256"}},
        "tokens": [
            {"name": "rs256", "key": "rsa", "alg": "RS256", "kid": "r", "claims": claims},
            {"name": "es256", "key": "ec", "alg": "ES256", "kid": "e", "claims": claims},
        ],
    }));
    let uri = "https://issuer.example.com/jwks";
    let document = minted.jwks(&[("rsa", json!({"kid": "r"})), ("ec", json!({"kid": "e"}))]);
    let keys =
        StaticKeys::new().with_remote(uri, KeySet::from_value(&document).expect("the test fixture is well formed"));
    let rules = rules(uri);
    let now = SystemTime::now();
    let mut group = c.benchmark_group("jwt");
    group.measurement_time(Duration::from_secs(3));
    for alg in ["rs256", "es256"] {
        let header = format!("Bearer {}", minted.token(alg));
        let headers = [("authorization", header.as_str()), (":path", "/"), ("user-agent", "bench")];
        let request = RequestTokens { method: "GET", headers: &headers, query: None };
        let check = |cache: &TokenCache| {
            let result = authenticate_request(&rules, &keys, &request, now, cache);
            assert!(matches!(result.outcome, AuthnOutcome::Pass { claims: Some(_), .. }), "{result:?}");
            result
        };
        group.bench_function(format!("{alg}/full verification"), |b| b.iter(|| black_box(check(&TokenCache::new(16)))));
        let warm = TokenCache::default();
        check(&warm);
        group.bench_function(format!("{alg}/cached token"), |b| b.iter(|| black_box(check(&warm))));
    }
    let headers = [(":path", "/"), ("user-agent", "bench")];
    let request = RequestTokens { method: "GET", headers: &headers, query: None };
    let cache = TokenCache::default();
    group.bench_function("no token", |b| {
        b.iter(|| black_box(authenticate_request(&rules, &keys, &request, now, &cache)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
