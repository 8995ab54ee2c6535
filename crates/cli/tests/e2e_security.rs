//! End to end, the request-level half of Istio's security API through real proxies: a JWT
//! verified against keys from a real JWKS server (tokens minted by PyJWT), CUSTOM policies
//! answered by the CEL authorizer over HTTP and gRPC, by OPA over gRPC and by an independent
//! Python authorizer over HTTP, an
//! authorizer that is down, keys that were never fetched, and a local rate limit — each on
//! HTTP/1.1 and on h2c. Real processes in network namespaces the test makes inside its own
//! user, network and mount namespaces; if they cannot be made, the test fails and says why.

use std::collections::HashMap;

use zmesh_testkit::TempDir;

fn run_mesh() -> HashMap<String, String> {
    let opa = zmesh_testkit::opa_envoy::opa_envoy_binary();
    let dir = TempDir::new("e2e-security");
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).expect("config dir");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/security.yaml"), config.join("mesh.yaml"))
        .expect("copy mesh");
    let output = zmesh_testkit::e2e::unshare_bash(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/security.sh"),
        [std::ffi::OsStr::new(env!("CARGO_BIN_EXE_zmesh")), dir.path().as_os_str(), opa.as_os_str()],
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let logs: String = ["api", "orders", "payments", "ledger", "limited", "broken", "catalog", "infra"]
        .iter()
        .map(|pod| {
            format!(
                "--- {pod}.log\n{}",
                std::fs::read_to_string(dir.path().join(format!("{pod}.log"))).unwrap_or_default()
            )
        })
        .collect();
    assert!(
        output.status.success(),
        "the security mesh script failed (it needs unshare with user namespaces, iproute2, iptables, curl and \
         python3 with PyJWT; CI installs them)\nstdout:\n{stdout}\nstderr:\n{}\n{logs}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results = zmesh_testkit::e2e::results(&stdout);
    assert_eq!(results.get("done").map(String::as_str), Some("1"), "the script stopped early:\n{stdout}\n{logs}");
    results
}

#[test]
fn tokens_authorizers_and_rate_limits_are_enforced_on_http1_and_h2c() {
    let r = run_mesh();
    let mut failures = Vec::new();
    let mut expect = |key: &str, want: &str| {
        if r.get(key).map(String::as_str) != Some(want) {
            failures.push(format!("{key}: want {want:?}, got {:?}", r.get(key)));
        }
    };
    let both = |expect: &mut dyn FnMut(&str, &str), key: &str, want: &str| {
        expect(key, want);
        expect(&format!("{key}_h2"), want);
    };
    // RequestAuthentication with the seed's require-JWT DENY.
    both(&mut expect, "jwt_valid", "200");
    expect("jwt_valid_sub_to_app", "1");
    expect("jwt_valid_token_removed", "0");
    both(&mut expect, "jwt_valid_ec", "200");
    both(&mut expect, "jwt_query", "200");
    both(&mut expect, "jwt_missing", "403");
    expect("jwt_missing_body", "RBAC: access denied");
    both(&mut expect, "jwt_expired", "401");
    expect("jwt_expired_body", "Jwt is expired");
    expect("jwt_expired_www", "Bearer");
    both(&mut expect, "jwt_wrong_audience", "403");
    both(&mut expect, "jwt_unknown_kid", "401");
    both(&mut expect, "jwt_bad_signature", "401");
    both(&mut expect, "jwt_garbage", "401");
    both(&mut expect, "jwks_unreachable_token", "401");
    both(&mut expect, "jwks_unreachable_no_token", "200");
    // CUSTOM: the CEL authorizer over HTTP and gRPC, OPA over gRPC, an authorizer that is down.
    both(&mut expect, "cel_http_allowed", "200");
    expect("cel_http_allowed_header", "1");
    both(&mut expect, "cel_http_denied", "401");
    expect("cel_http_denied_body", "denied by cel");
    both(&mut expect, "cel_http_not_matched", "200");
    both(&mut expect, "cel_grpc_allowed", "200");
    both(&mut expect, "cel_grpc_denied", "401");
    expect("cel_grpc_denied_body", "denied by cel");
    both(&mut expect, "opa_allowed", "200");
    both(&mut expect, "opa_denied", "403");
    expect("opa_denied_header", "private");
    both(&mut expect, "py_http_allowed", "200");
    expect("py_http_allowed_header", "1");
    both(&mut expect, "py_http_denied", "403");
    expect("py_http_denied_body", "denied by python");
    expect("py_http_denied_header", "not alice");
    both(&mut expect, "authorizer_down", "403");
    // The local rate limit.
    expect("rate_limited", "429");
    expect("rate_limited_body", "local_rate_limited");
    expect("rate_limited_header", "true");
    expect("rate_limited_h2", "429");
    expect("rate_limit_metric", "1");
    assert!(failures.is_empty(), "{}\n{r:#?}", failures.join("\n"));
}
