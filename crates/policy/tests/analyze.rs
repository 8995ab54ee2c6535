//! `analyze` findings: each names the line, says what will happen, and how to fix it.

use zmesh_config::load_str;
use zmesh_policy::analyze::analyze;

fn findings(yaml: &str) -> Vec<String> {
    let loaded = load_str(yaml);
    assert!(!loaded.has_errors(), "{:?}", loaded.errors().collect::<Vec<_>>());
    analyze(&loaded.config)
        .iter()
        .map(|d| {
            format!(
                "{} {}:{} {}: {}",
                d.code.unwrap_or("-"),
                d.origin.pos.line,
                d.origin.pos.column,
                d.field,
                d.message
            )
        })
        .collect()
}

#[test]
fn a_host_without_port_is_flagged_unless_its_port_variant_is_listed() {
    let found = findings(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: foo}
spec:
  rules:
  - to:
    - operation:
        hosts: [\"httpbin.foo\", \"api.foo\", \"api.foo:*\", \"*.bar\"]
",
    );
    assert_eq!(
        found,
        [
            "ZM1002 8:17 spec.rules[0].to[0].operation.hosts: host `httpbin.foo` does not match a request whose Host header carries a port, such as `httpbin.foo:8080`"
        ]
    );
}

#[test]
fn principals_that_can_never_match_are_flagged_with_the_fix() {
    let loaded = load_str(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: foo}
spec:
  rules:
  - from:
    - source:
        principals: [\"spiffe://cluster.local/ns/foo/sa/a\", \"sleep\", \"ns/bar/sa/b\", \"cluster.local/ns/foo/sa/ok\", \"*\"]
",
    );
    let found = analyze(&loaded.config);
    let hints: Vec<&str> = found.iter().map(|d| d.hint.as_deref().unwrap_or_default()).collect();
    assert_eq!(
        hints,
        [
            "write \"cluster.local/ns/foo/sa/a\"",
            "write \"cluster.local/ns/foo/sa/sleep\"",
            "write \"cluster.local/ns/bar/sa/b\""
        ]
    );
    assert!(found.iter().all(|d| d.code == Some("ZM1003")));
}

#[test]
fn an_allow_rule_covered_by_a_deny_is_reported_as_shadowed() {
    let found = findings(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to:
    - operation:
        paths: [\"/admin*\"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: foo}
spec:
  selector: {matchLabels: {app: web}}
  rules:
  - to:
    - operation:
        paths: [\"/admin/users\", \"/admin\"]
  - to:
    - operation:
        paths: [\"/admin/users\", \"/public\"]
",
    );
    // The DENY on a path is also reported for its spellings (ZM1010, tests/path_bypass.rs).
    let found: Vec<String> = found.into_iter().filter(|f| !f.starts_with("ZM1010")).collect();
    assert_eq!(
        found,
        [
            "ZM1005 17:5 spec.rules[0]: this ALLOW rule never allows anything: every request it matches is denied by DENY policy istio-system/deny-admin rule 0, and DENY is evaluated first"
        ]
    );
}

#[test]
fn a_deny_in_another_namespace_does_not_shadow() {
    let found = findings(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: bar}
spec: {action: DENY, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: foo}
spec: {rules: [{to: [{operation: {methods: [GET]}}]}]}
",
    );
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn a_custom_policy_naming_an_undefined_provider_is_flagged() {
    let found = findings(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: foo}
spec:
  action: CUSTOM
  provider: {name: my-authz}
  rules: [{to: [{operation: {paths: [\"/admin*\"]}}]}]
",
    );
    assert_eq!(found.len(), 1);
    assert!(
        found[0].starts_with("ZM1008 6:20 spec.provider.name: provider `my-authz` is not an ext_authz provider"),
        "{found:?}"
    );
}

#[test]
fn selectors_are_checked_against_the_workloads_in_the_files() {
    let found = findings(
        "apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: foo}
spec:
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: web}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ok, namespace: foo}
spec: {selector: {matchLabels: {app: web}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: typo, namespace: foo}
spec: {selector: {matchLabels: {app: wbe}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-wide, namespace: istio-system}
spec: {selector: {matchLabels: {app: web}}}
",
    );
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("IST0127") && found[0].contains("app=wbe"), "{found:?}");
}
