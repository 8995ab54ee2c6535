//! Istio's semantics as decision tables (`testdata/conformance/`), run through the engine.
//! Every case must pass; a failure names the case, why it exists, and what the engine said.

use zmesh_policy::input::{RequestInput, WorkloadInput, check_authz};
use zmesh_policy::{PolicySet, Verdict, Workload};
use zmesh_testkit::{AuthzCase, PeerAuthCase, load_cases, load_config};

#[test]
fn every_authorization_case_gets_istios_decision() {
    let cases: Vec<AuthzCase> = load_cases("conformance/authz-cases.yaml");
    assert!(cases.len() >= 80, "the corpus shrank to {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let config = load_config(&case.name, &case.policies, &case.mesh);
        let set = PolicySet::compile(&config);
        let workload: WorkloadInput =
            serde_json::from_value(case.workload.clone()).unwrap_or_else(|e| panic!("{}: workload: {e}", case.name));
        let request: RequestInput =
            serde_json::from_value(case.request.clone()).unwrap_or_else(|e| panic!("{}: request: {e}", case.name));
        let checked =
            check_authz(&set, &config.mesh, &workload, &request).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let got = if checked.decision.verdict == Verdict::Allow { "allow" } else { "deny" };
        let status_ok = case.expect_status.is_none_or(|s| s == checked.decision.status);
        if got != case.expect || !status_ok {
            let why = checked
                .explanation
                .as_ref()
                .map_or_else(|| checked.refused.clone().unwrap_or_default(), |e| e.reason.clone());
            failures.push(format!(
                "{}: expected {} {:?}, got {got} {} — {}\n    engine: {why}",
                case.name, case.expect, case.expect_status, checked.decision.status, case.why
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from Istio:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn every_peer_authentication_case_gets_istios_mode() {
    let cases: Vec<PeerAuthCase> = load_cases("conformance/peerauth-cases.yaml");
    assert!(cases.len() >= 15, "the corpus shrank to {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let config = load_config(&case.name, &case.policies, &case.mesh);
        let set = PolicySet::compile(&config);
        let workload: WorkloadInput =
            serde_json::from_value(case.workload.clone()).unwrap_or_else(|e| panic!("{}: workload: {e}", case.name));
        let decision = set.mtls_mode(&Workload::from(&workload), case.port);
        let mode_ok = decision.mode.as_str() == case.expect.mode;
        let plaintext_ok = decision.accepts_plaintext() == case.expect.accepts.plaintext;
        let mtls_ok = case.expect.accepts.mtls.is_none_or(|m| m == decision.accepts_mtls());
        if !(mode_ok && plaintext_ok && mtls_ok) {
            failures.push(format!("{}: expected {:?}, got {:?} — {}", case.name, case.expect, decision, case.why));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from Istio:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
