//! End to end on a dual-stack network: pods (network namespaces on one bridge) with an IPv4
//! and an IPv6 address each, apps listening on both families, proxies with transparent
//! capture. IPv6 must go through the proxies exactly as IPv4 does; none may go around them.
//! The test enters its own user, network and mount namespaces (`unshare`), so it needs no real
//! root and leaves the host untouched. If the namespaces cannot be made, the test fails and
//! says why.

use std::collections::HashMap;

use zmesh_testkit::TempDir;

fn run_dualstack() -> HashMap<String, String> {
    let dir = TempDir::new("e2e-dualstack");
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).expect("config dir");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/dualstack.yaml"), config.join("mesh.yaml"))
        .expect("copy mesh");
    let output = zmesh_testkit::e2e::unshare_bash(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/dualstack.sh"),
        [std::ffi::OsStr::new(env!("CARGO_BIN_EXE_zmesh")), dir.path().as_os_str()],
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let logs: String = ["client", "server", "server6", "nov6"]
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
        "the dual-stack script failed (it needs unshare with user namespaces, iproute2, iptables with ip6tables, and curl; CI installs them)\nstdout:\n{stdout}\nstderr:\n{}\n{logs}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results = zmesh_testkit::e2e::results(&stdout);
    assert!(results.len() >= 16, "the script stopped early:\n{stdout}\n{logs}");
    results
}

#[test]
fn ipv6_is_captured_and_carried_over_mtls_like_ipv4_and_never_goes_around_the_proxy() {
    let r = run_dualstack();
    let expect = |key: &str, want: &str| assert_eq!(r.get(key).map(String::as_str), Some(want), "{key}: {r:#?}");
    // Every proxied pod's capture took both families.
    expect("capture_installed", "3");
    // The IPv4 twin: the app sees the caller's mTLS identity and the DENY policy applies.
    expect("v4_allowed", "200");
    expect("v4_allowed_identity", "1");
    expect("v4_denied", "403");
    // IPv6 from the app is captured, tunnelled to the workload known by its IPv6 address, and
    // decided by the same policy on the same identity.
    expect("v6_allowed", "200");
    expect("v6_allowed_identity", "1");
    expect("v6_denied", "403");
    expect("v6_denied_body", "RBAC: access denied");
    expect("v6_health", "200");
    // IPv6 that would go around a proxy reaches no app: inbound capture sends a pod without a
    // proxy to STRICT mTLS, and plaintext to an address the workload is not known by is
    // dropped.
    expect("v6_plain_to_app", "000");
    expect("v6_plain_to_unregistered_address", "000");
    expect("v6_app_to_unregistered_address", "000");
    // Capture never leaves IPv6 open: without ip6tables, install fails while the pod has an
    // IPv6 address, and succeeds (IPv4 captured) once IPv6 is disabled.
    expect("no_ip6tables_with_ipv6", "refused");
    expect("no_ip6tables_with_ipv6_error", "1");
    expect("no_ip6tables_ipv6_disabled", "installed");
    expect("ipv4_still_captured", "1");
}
