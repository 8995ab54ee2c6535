//! The CLI contract (DESIGN §6), tested through the real binary.

use std::process::{Command, Output};

use zmesh_testkit::{AuthzCase, PeerAuthCase, TempDir, load_cases, testdata};

fn zmesh(args: &[&str], cwd: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zmesh")).args(args).current_dir(cwd).output().expect("the zmesh binary runs")
}

fn json_of(output: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("stdout is not one JSON object ({e}):\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&output.stderr))
    })
}

#[test]
fn authz_check_json_matches_the_conformance_sample() {
    let cases: Vec<AuthzCase> = load_cases("conformance/authz-cases.yaml");
    let dir = TempDir::new("authz-cli");
    // Every third case: enough to cover every kind of decision through the binary.
    for case in cases.iter().step_by(3) {
        let config = dir.write(&format!("{}.yaml", case.name), &case.policies);
        let mut args = vec![
            "authz".to_owned(),
            "check".into(),
            "--config".into(),
            config.display().to_string(),
            "--workload-json".into(),
            case.workload.to_string(),
            "--request-json".into(),
            case.request.to_string(),
            "-o".into(),
            "json".into(),
        ];
        if let Some(mesh) = zmesh_testkit::mesh_yaml(&case.mesh) {
            let mesh_file = dir.write(&format!("{}-mesh.yaml", case.name), &mesh);
            args.extend(["--mesh-config".into(), mesh_file.display().to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = zmesh(&args, dir.path());
        assert!(
            output.status.success(),
            "{}: exit {:?}: {}",
            case.name,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let result = json_of(&output);
        assert_eq!(result["decision"], case.expect.as_str(), "{}: {result}", case.name);
        if let Some(status) = case.expect_status {
            assert_eq!(result["status"], status, "{}: {result}", case.name);
        }
        for key in ["decision", "status", "policy", "action", "rule", "reason"] {
            assert!(result.get(key).is_some(), "{}: `{key}` is missing from {result}", case.name);
        }
    }
}

#[test]
fn authz_check_names_the_deciding_policy_and_rule() {
    let output = zmesh(
        &[
            "authz",
            "check",
            "--config",
            "seed-configs",
            "--workload-json",
            r#"{"namespace":"fintech-core","labels":{"app":"payment-processor"},"serviceAccount":"payment-processor"}"#,
            "--request-json",
            r#"{"protocol":"http","source":{"principal":"cluster.local/ns/fintech-core/sa/order-service"},"destination":{"port":8443},"method":"POST","host":"payment-processor","path":"/api/v2/payments/process"}"#,
            "-o",
            "json",
        ],
        &testdata(),
    );
    // The seed's EnvoyFilter has no token bucket: a warning, so the seed decides as it is.
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let result = json_of(&output);
    assert_eq!(result["decision"], "allow", "{result}");
    assert_eq!(result["policy"], "fintech-core/payment-processor-access", "{result}");

    let dir = TempDir::new("seed-valid");
    for entry in std::fs::read_dir(testdata().join("seed-configs")).expect("seed dir") {
        let path = entry.expect("entry").path();
        if !path.ends_with("07-advanced.yaml") {
            std::fs::copy(&path, dir.path().join(path.file_name().expect("file name"))).expect("copy");
        }
    }
    let check = |request: &str| {
        let dir_arg = dir.path().display().to_string();
        let output = zmesh(
            &[
                "authz",
                "check",
                "--config",
                &dir_arg,
                "--workload-json",
                r#"{"namespace":"fintech-core","labels":{"app":"payment-processor"}}"#,
                "--request-json",
                request,
                "-o",
                "json",
            ],
            dir.path(),
        );
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        json_of(&output)
    };
    let allowed = check(
        r#"{"source":{"principal":"cluster.local/ns/fintech-core/sa/order-service"},"destination":{"port":8443},"method":"POST","host":"p","path":"/api/v2/payments/process"}"#,
    );
    assert_eq!(allowed["decision"], "allow");
    assert_eq!(allowed["policy"], "fintech-core/payment-processor-access");
    assert_eq!(allowed["action"], "ALLOW");
    assert_eq!(allowed["rule"], 0);
    let denied = check(
        r#"{"source":{"principal":"cluster.local/ns/fintech-core/sa/order-service"},"destination":{"port":8443},"method":"GET","host":"p","path":"/api/v2/payments/process"}"#,
    );
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["status"], 403);
    assert!(
        denied["reason"]
            .as_str()
            .expect("reason")
            .contains("to[0].operation.methods: method GET matches none of the listed values"),
        "{denied}"
    );
}

#[test]
fn authn_check_json_matches_the_conformance_sample() {
    let cases: Vec<PeerAuthCase> = load_cases("conformance/peerauth-cases.yaml");
    let dir = TempDir::new("authn-cli");
    for case in cases.iter().step_by(2) {
        let config = dir.write(&format!("{}.yaml", case.name), &case.policies);
        let config = config.display().to_string();
        let port = case.port.to_string();
        let workload = case.workload.to_string();
        let mut args =
            vec!["authn", "check", "--config", &config, "--workload-json", &workload, "--port", &port, "-o", "json"];
        let mesh_file = zmesh_testkit::mesh_yaml(&case.mesh)
            .map(|mesh| dir.write(&format!("{}-mesh.yaml", case.name), &mesh).display().to_string());
        if let Some(mesh_file) = &mesh_file {
            args.extend(["--mesh-config", mesh_file]);
        }
        let output = zmesh(&args, dir.path());
        assert!(output.status.success(), "{}: {}", case.name, String::from_utf8_lossy(&output.stderr));
        let result = json_of(&output);
        assert_eq!(result["mode"], case.expect.mode.as_str(), "{}: {result}", case.name);
        assert_eq!(result["accepts"]["plaintext"], case.expect.accepts.plaintext, "{}: {result}", case.name);
    }
}

#[test]
fn bad_json_input_is_a_usage_error() {
    let output = zmesh(
        &["authz", "check", "--config", "seed-configs", "--workload-json", "{not json", "--request-json", "{}"],
        &testdata(),
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--workload-json is not valid"));
}

#[test]
fn validate_exit_codes_follow_the_contract() {
    let dir = TempDir::new("validate-exit");
    let good = dir.write(
        "good.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: foo}\nspec: {}\n",
    );
    let bad = dir.write("bad.yaml", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: foo}\nspec:\n  action: DENY\n");
    assert_eq!(zmesh(&["validate", &good.display().to_string()], dir.path()).status.code(), Some(0));
    let failed = zmesh(&["validate", &bad.display().to_string()], dir.path());
    assert_eq!(failed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&failed.stderr).contains(
        "bad.yaml:5:3: error[IST0106]: AuthorizationPolicy foo/a: spec.rules: a DENY policy without rules would never match"
    ));
    assert_eq!(zmesh(&["validate"], dir.path()).status.code(), Some(2));
}
