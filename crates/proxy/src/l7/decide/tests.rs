use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use zmesh_http::{Limits, PathNormalization, RequestError, parse_request_head};
use zmesh_policy::{PolicySet, Workload};

use super::*;
use crate::admission::{Admitted, HttpAttributes, HttpProtocol, Refusal as AdmissionRefusal, Refuser};
use crate::l7::Timeouts;

const POLICIES: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-sqlmap, namespace: default}
spec:
  action: DENY
  rules: [{when: [{key: \"request.headers[user-agent]\", values: [\"*sqlmap\"]}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-api, namespace: default}
spec:
  rules:
  - to: [{operation: {paths: [\"/api/*\"]}}]
  - when: [{key: \"request.headers[x-forwarded-client-cert]\", values: [\"*evil\"]}]
";

fn context() -> ConnectionContext {
    let loaded = zmesh_config::load_str(POLICIES);
    assert!(!loaded.has_errors(), "{:?}", loaded.errors().next());
    let workload = Workload {
        namespace: "default".into(),
        labels: [("app".to_owned(), "app".to_owned())].into(),
        service_account: "default".into(),
    };
    ConnectionContext {
        admission: Arc::new(crate::admission::Admission::policy_only(Arc::new(
            PolicySet::compile(&loaded.config).for_workload(&workload),
        ))),
        rate_limits: Arc::from([]),
        peer: None,
        local_identity: None,
        source: "10.0.0.1:40000".parse().unwrap(),
        destination: "10.0.0.2:8080".parse().unwrap(),
        path_normalization: PathNormalization::Base,
        limits: Limits::default(),
        timeouts: Timeouts::default(),
        shutdown: CancellationToken::new(),
    }
}

/// What the proxy decides for one raw request: `decide`, then admission with the headers
/// `decide` builds (XFCC being the proxy's `xfcc`).
fn verdict_with_xfcc(raw: &[u8], xfcc: Option<&str>) -> String {
    let (head, _) = parse_request_head(raw, &Limits::default()).unwrap().unwrap();
    let ctx = context();
    let (path, websocket) = match decide(&head, &ctx) {
        Verdict::Refuse(refusal) => return format!("refuse {refusal:?}"),
        Verdict::Admit { path, websocket } => (path, websocket),
        Verdict::Connect => return "connect".to_owned(),
    };
    let values = header_values(&head);
    let headers = header_pairs(&head, &values, xfcc);
    let authority = head.authority().unwrap_or_default();
    let attributes = HttpAttributes {
        method: head.method.as_str(),
        authority: &authority,
        path: &path,
        original_path: head.path_and_query().unwrap_or_default(),
        headers: &headers,
        body: None,
        has_body: false,
        protocol: HttpProtocol::Http11,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    match runtime.block_on(ctx.admission.admit(&ctx, &attributes)) {
        Admitted::Refuse(AdmissionRefusal { by: Refuser::Rbac(rule), .. }) => {
            format!("deny {:?}", rule.map(|rule| (rule.policy, rule.rule)))
        }
        Admitted::Refuse(refusal) => format!("refused {refusal:?}"),
        Admitted::Forward(_) => format!("forward {path} websocket={websocket}"),
    }
}

fn verdict_of(raw: &[u8]) -> String {
    verdict_with_xfcc(raw, None)
}

#[test]
fn an_allowed_request_is_forwarded_with_its_normalized_path() {
    assert_eq!(verdict_of(b"GET /x/../api/%61?q HTTP/1.1\r\nHost: app\r\n\r\n"), "forward /api/a?q websocket=false");
}

#[test]
fn a_request_no_allow_rule_matches_is_denied_without_a_deciding_rule() {
    assert_eq!(verdict_of(b"GET /other HTTP/1.1\r\nHost: app\r\n\r\n"), "deny None");
}

#[test]
fn a_deny_rule_names_itself() {
    let raw = b"GET /api/a HTTP/1.1\r\nHost: app\r\nUser-Agent: sqlmap\r\n\r\n";
    assert_eq!(verdict_of(raw), "deny Some((\"default/deny-sqlmap\", 0))");
}

#[test]
fn a_header_value_that_is_not_utf8_is_still_seen_by_policy() {
    let raw = b"GET /api/a HTTP/1.1\r\nHost: app\r\nUser-Agent: \xff\xfe sqlmap\r\n\r\n";
    assert_eq!(verdict_of(raw), "deny Some((\"default/deny-sqlmap\", 0))");
}

#[test]
fn policy_sees_the_proxy_s_xfcc_not_the_client_s() {
    let raw = b"GET /other HTTP/1.1\r\nHost: app\r\nX-Forwarded-Client-Cert: evil\r\n\r\n";
    assert_eq!(verdict_of(raw), "deny None");
    assert_eq!(verdict_with_xfcc(raw, Some("URI=evil")), "forward /other websocket=false");
}

#[test]
fn path_errors_come_before_the_upgrade_check_and_upgrades_before_policy() {
    let raw = b"GET /api/a#x HTTP/1.1\r\nHost: app\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n";
    assert_eq!(verdict_of(raw), format!("refuse {:?}", Refusal::Path(RequestError::FragmentInPath)));
    let raw = b"GET /other HTTP/1.1\r\nHost: app\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n";
    assert_eq!(verdict_of(raw), "refuse UpgradeFailed");
    assert_eq!(verdict_of(b"CONNECT app:443 HTTP/1.1\r\nHost: app:443\r\n\r\n"), "connect");
}

#[test]
fn a_websocket_upgrade_is_authorized_like_any_request() {
    let raw = b"GET /api/ws HTTP/1.1\r\nHost: app\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
    assert_eq!(verdict_of(raw), "forward /api/ws websocket=true");
    let raw = b"GET /ws HTTP/1.1\r\nHost: app\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
    assert_eq!(verdict_of(raw), "deny None");
}
