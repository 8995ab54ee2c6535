//! `zmesh authz check` applies the workload's effective PeerAuthentication before
//! authorization, as the proxy does: a plaintext peer on a STRICT port is refused even when a
//! policy would allow it, and the refusal names the PeerAuthentication that set STRICT.

use zmesh_config::load_str;
use zmesh_policy::input::{RequestInput, WorkloadInput, check_authz, check_request};
use zmesh_policy::{PolicySet, Reason, Verdict};

const MESH: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  mtls: {mode: STRICT}
  portLevelMtls:
    9090: {mode: PERMISSIVE}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: open, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  action: ALLOW
  rules: [{}]
";

fn check(request: &str) -> (zmesh_policy::input::Checked, zmesh_policy::input::Checked) {
    let loaded = load_str(MESH);
    assert!(!loaded.has_errors(), "{:?}", loaded.errors().collect::<Vec<_>>());
    let set = PolicySet::compile(&loaded.config);
    let workload: WorkloadInput =
        serde_json::from_str(r#"{"namespace": "shop", "labels": {"app": "api"}, "serviceAccount": "api"}"#)
            .expect("workload");
    let request: RequestInput = serde_json::from_str(request).expect("request");
    let first = check_request(&set, &loaded.config.mesh, &workload, &request).expect("checked");
    let authz_only = check_authz(&set, &loaded.config.mesh, &workload, &request).expect("checked");
    (first, authz_only)
}

#[test]
fn a_plaintext_request_to_a_strict_port_is_refused_before_an_allow_all_policy() {
    let (checked, authz_only) = check(r#"{"destination": {"port": 8080}, "method": "GET", "path": "/"}"#);
    assert_eq!(authz_only.decision.verdict, Verdict::Allow, "the policy alone allows it");
    assert_eq!(checked.decision.verdict, Verdict::Deny);
    assert_eq!(checked.decision.reason, Reason::PlaintextRefused);
    assert!(checked.explanation.is_none(), "authorization never ran");
    let why = checked.refused.expect("a reason");
    assert!(why.contains("PeerAuthentication shop/strict") && why.contains("STRICT"), "{why}");
    assert!(why.contains("port 8080"), "{why}");
}

#[test]
fn a_plaintext_tcp_connection_to_a_strict_port_is_refused_too() {
    let (checked, _) = check(r#"{"protocol": "tcp", "destination": {"port": 8080}}"#);
    assert_eq!(checked.decision.reason, Reason::PlaintextRefused);
}

#[test]
fn an_mtls_request_to_the_strict_port_goes_on_to_authorization() {
    let (checked, _) = check(
        r#"{"source": {"principal": "cluster.local/ns/shop/sa/web"}, "destination": {"port": 8080}, "method": "GET", "path": "/"}"#,
    );
    assert_eq!(checked.decision.verdict, Verdict::Allow);
    assert!(checked.refused.is_none());
    assert_eq!(checked.mtls.map(|m| m.mode), Some(zmesh_config::authn::MtlsMode::Strict));
}

#[test]
fn a_plaintext_request_to_a_port_made_permissive_by_port_level_mtls_is_authorized() {
    let (checked, _) = check(r#"{"destination": {"port": 9090}, "method": "GET", "path": "/"}"#);
    assert_eq!(checked.decision.verdict, Verdict::Allow);
    assert!(checked.mtls.is_some_and(|m| m.port_level));
}
