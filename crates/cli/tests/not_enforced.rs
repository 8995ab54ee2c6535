//! `zmesh validate` and `zmesh analyze` say what zmesh reads but does not apply: warnings with
//! stable codes, which never fail validation.

use std::process::Command;

use zmesh_testkit::testdata;

fn zmesh(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_zmesh"))
        .args(args)
        .current_dir(testdata())
        .output()
        .expect("the zmesh binary runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn validate_accepts_the_seed_configurations_and_warns_about_what_zmesh_does_not_apply() {
    let (code, stdout, stderr) = zmesh(&["validate", "seed-configs"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.is_empty());
    for expected in [
        "seed-configs/05-network-policy.yaml:2:1: warning[ZM2011]: NetworkPolicy production/api-network-policy: spec: NetworkPolicy is validated but not enforced by zmesh",
        "seed-configs/06-telemetry.yaml:14:1: warning[ZM2012]: Telemetry istio-system/security-metrics: spec: Telemetry is validated but not applied",
        "seed-configs/06-telemetry.yaml:34:1: warning[ZM2012]: Telemetry istio-system/security-logging: spec: Telemetry is validated but not applied",
        "seed-configs/07-advanced.yaml:42:11: warning[ZM2002]: EnvoyFilter production/rate-limit-filter: spec.configPatches[0].patch.value.typed_config: the local rate limit filter has no token bucket",
        "✔ 21 document(s) in 7 file(s) are valid, with 7 warning(s)",
    ] {
        assert!(stderr.contains(expected), "missing `{expected}` in:\n{stderr}");
    }
    assert!(!stderr.contains(": error:"), "{stderr}");
}

#[test]
fn analyze_lists_the_not_applied_warnings_with_their_codes() {
    let (code, stdout, _) = zmesh(&["analyze", "seed-configs"]);
    // Warnings reach analyze's default failure threshold, as in istioctl.
    assert_eq!(code, Some(1));
    for expected in [
        "Warning [ZM2011] (NetworkPolicy production/api-network-policy seed-configs/05-network-policy.yaml:2) spec:",
        "Warning [ZM2012] (Telemetry istio-system/security-metrics seed-configs/06-telemetry.yaml:14) spec:",
        "Warning [ZM2002] (EnvoyFilter production/rate-limit-filter seed-configs/07-advanced.yaml:42) spec.configPatches[0].patch.value.typed_config:",
    ] {
        assert!(stdout.contains(expected), "missing `{expected}` in:\n{stdout}");
    }
    let (code, _, _) = zmesh(&["analyze", "--failure-threshold", "error", "seed-configs"]);
    assert_eq!(code, Some(0), "warnings alone do not fail at the error threshold");
}
