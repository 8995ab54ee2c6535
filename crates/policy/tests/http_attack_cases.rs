//! Raw HTTP requests (path tricks, smuggling, header games) measured on Envoy configured as an
//! Istio sidecar: the inbound L7 path — parse, normalize, authorize — must do what Envoy did
//! with each. This is the same sequence the proxy runs per request.

use zmesh_config::Config;
use zmesh_http::{Limits, PathNormalization, RequestTarget, Upgrade, parse_request_head};
use zmesh_policy::{HttpRequest, PolicySet, Request, Workload};
use zmesh_testkit::{HttpAttackCase, load_cases};

/// What the inbound sidecar does with the first request on a connection, and the path the app
/// would see when it is forwarded.
fn inbound(bytes: &[u8], config: &Config) -> (&'static str, Option<String>, String) {
    let head = match parse_request_head(bytes, &Limits::default()) {
        Ok(Some((head, _))) => head,
        Ok(None) => return ("reject", None, "incomplete head: the connection times out without a response".into()),
        Err(error) => return ("reject", None, format!("{} {}", error.status(), error.detail())),
    };
    if matches!(head.upgrade, Some(Upgrade::Other(_))) || matches!(head.target, RequestTarget::Authority(_)) {
        return ("reject", None, "403 upgrade_failed".into());
    }
    let raw_path = head.path_and_query().unwrap_or("/");
    let path = match zmesh_http::normalize_path(raw_path, PathNormalization::Base) {
        Ok(path) => path.into_owned(),
        Err(error) => return ("reject", None, format!("{} {}", error.status(), error.detail())),
    };
    let host = head.authority().map(|a| a.into_owned()).unwrap_or_default();
    let headers: Vec<(String, String)> =
        head.headers.iter().map(|h| (h.name.clone(), String::from_utf8_lossy(&h.value).into_owned())).collect();
    let header_refs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let request = Request {
        peer: None,
        source_ip: Some("127.0.0.6".parse().expect("ip")),
        remote_ip: None,
        destination_ip: Some("127.0.0.1".parse().expect("ip")),
        destination_port: 8080,
        sni: None,
        http: Some(HttpRequest { method: head.method.as_str(), host: &host, path: &path, headers: &header_refs }),
        jwt: None,
    };
    let workload = Workload {
        namespace: "default".into(),
        labels: [("app".to_owned(), "app".to_owned())].into(),
        service_account: "default".into(),
    };
    let decision = PolicySet::compile(config).for_workload(&workload).authorize(&request);
    let why = format!("{:?} by {:?}", decision.reason, decision.decided_by.as_ref().map(|d| &d.policy));
    if decision.is_allow() { ("allow", Some(path), why) } else { ("deny", None, why) }
}

#[test]
fn every_attack_case_gets_what_an_istio_sidecar_does() {
    let cases: Vec<HttpAttackCase> = load_cases("conformance/http-attack-cases.yaml");
    assert!(cases.len() >= 70, "the corpus shrank to {} cases", cases.len());
    let configs: std::collections::HashMap<&str, Config> = ["a", "b", "c"]
        .into_iter()
        .map(|listener| {
            let loaded = zmesh_config::load_str(zmesh_testkit::attack_listener_policies(listener));
            assert!(!loaded.has_errors(), "listener {listener}: {:?}", loaded.errors().next());
            (listener, loaded.config)
        })
        .collect();
    let mut failures = Vec::new();
    for case in &cases {
        let (got, forwarded_path, why) = inbound(&case.bytes(), &configs[case.listener.as_str()]);
        if got != case.expect {
            failures.push(format!(
                "{}: Envoy: {} ({}), zmesh: {got} ({why})\n    {}",
                case.name, case.expect, case.envoy_status, case.note
            ));
        } else if got == "allow" && case.backend_saw_path.is_some() && forwarded_path != case.backend_saw_path {
            failures.push(format!(
                "{}: the app would see {:?}, Envoy forwarded {:?}",
                case.name, forwarded_path, case.backend_saw_path
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from Envoy:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
