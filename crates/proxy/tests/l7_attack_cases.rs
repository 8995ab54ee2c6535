//! The raw-HTTP attack corpus (requests measured on Envoy as an Istio sidecar) through the
//! whole inbound L7 engine: each case's bytes go to `serve_http1` on a fresh connection, with a
//! real HTTP server (hyper) as the app. What the client got back and what the app received must
//! be what Envoy did. `crates/policy/tests/http_attack_cases.rs` checks the same cases against
//! the pure parse → normalize → authorize sequence.

mod l7_support;

use std::collections::HashMap;

use l7_support::{hyper_app, start, status, text};
use zmesh_proxy::l7::ConnectionContext;
use zmesh_testkit::{HttpAttackCase, load_cases};

/// Sends one case on a fresh connection; returns what the client received and the
/// request-targets the app saw, or why the case differs from Envoy.
async fn run(case: &HttpAttackCase, ctx: ConnectionContext) -> Result<(), String> {
    let (app, seen) = hyper_app();
    let (client, served) = start(ctx, &app);
    let bytes = case.bytes();
    // The proxy may answer and close before reading everything (an oversized head), so the
    // client writes on its own while this task reads.
    let (mut reader, mut writer) = tokio::io::split(client.stream);
    let writing = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let _ = writer.write_all(&bytes).await;
        let _ = writer.shutdown().await;
    });
    let mut received = Vec::new();
    let read = tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut received);
    tokio::time::timeout(l7_support::PATIENCE, read).await.map_err(|_| "the proxy never closed".to_owned())?.ok();
    let _ = writing.await;
    let _ = l7_support::finished(served).await;

    let received = text(&received);
    let first_status = status(&received).to_owned();
    let seen: Vec<String> = seen.lock().expect("recorder").iter().map(|request| request.target.clone()).collect();
    let is_rbac_denial = first_status == "403" && received.contains("\r\n\r\nRBAC: access denied");
    let envoy_status = case.envoy_status.to_string();
    let outcome = match case.expect.as_str() {
        "allow" if first_status != "200" => Err("the client did not get the app's 200"),
        "allow" if seen.len() != 1 => Err("the app did not receive exactly one request"),
        "allow" if case.backend_saw_path.as_ref().is_some_and(|path| *path != seen[0]) => {
            Err("the app saw another request-target than Envoy's app")
        }
        "deny" if !is_rbac_denial => Err("the client did not get the RBAC 403"),
        "reject" if first_status.starts_with('2') || is_rbac_denial => Err("the client got a 2xx or an RBAC 403"),
        // A refusal answers with Envoy's status, or with silence where Envoy closed.
        "reject" if !received.is_empty() && first_status != envoy_status => Err("the status differs from Envoy's"),
        "deny" | "reject" if !seen.is_empty() => Err("the app received a request"),
        "allow" | "deny" | "reject" => Ok(()),
        other => panic!("case {}: unknown expectation {other}", case.name),
    };
    outcome.map_err(|why| {
        let first_line = received.lines().next().unwrap_or("(closed without a response)");
        format!(
            "{}: {why}\n    expected {} (Envoy: {envoy_status}); client got {first_line:?}; app saw {seen:?}",
            case.name, case.expect
        )
    })
}

#[tokio::test]
async fn every_attack_case_gets_what_an_istio_sidecar_does() {
    let cases: Vec<HttpAttackCase> = load_cases("conformance/http-attack-cases.yaml");
    assert!(cases.len() >= 70, "the corpus shrank to {} cases", cases.len());
    let contexts: HashMap<&str, ConnectionContext> = ["a", "b", "c"]
        .into_iter()
        .map(|listener| (listener, l7_support::context(zmesh_testkit::attack_listener_policies(listener))))
        .collect();
    let mut failures = Vec::new();
    for case in &cases {
        if let Err(failure) = run(case, contexts[case.listener.as_str()].clone()).await {
            failures.push(failure);
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
