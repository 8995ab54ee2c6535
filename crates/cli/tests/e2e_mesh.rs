//! End to end: real processes in network namespaces the test makes — one per "pod", joined by
//! a bridge, with iptables capture — and curl as the client. The test enters its own user,
//! network and mount namespaces (`unshare`), so it needs no real root and leaves the host
//! untouched. If the namespaces cannot be made, the test fails and says why.

use std::collections::HashMap;

use zmesh_testkit::TempDir;

fn run_mesh() -> HashMap<String, String> {
    let dir = TempDir::new("e2e-mesh");
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).expect("config dir");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/mesh.yaml"), config.join("mesh.yaml"))
        .expect("copy mesh");
    let output = zmesh_testkit::e2e::unshare_bash(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/mesh.sh"),
        [std::ffi::OsStr::new(env!("CARGO_BIN_EXE_zmesh")), dir.path().as_os_str()],
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let logs: String = ["client", "server", "intruder", "ledger"]
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
        "the mesh script failed (it needs unshare with user namespaces, iproute2, iptables and curl; CI installs them)\nstdout:\n{stdout}\nstderr:\n{}\n{logs}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results = zmesh_testkit::e2e::results(&stdout);
    assert!(results.len() >= 22, "the script stopped early:\n{stdout}\n{logs}");
    results
}

#[test]
fn a_mesh_of_pods_enforces_mtls_and_policy_end_to_end() {
    let r = run_mesh();
    let expect = |key: &str, want: &str| assert_eq!(r.get(key).map(String::as_str), Some(want), "{key}: {r:#?}");
    // order-service → payment-processor through both proxies, mTLS between them.
    expect("post_allowed", "200");
    expect(
        "post_allowed_xfcc",
        "By=spiffe://cluster.local/ns/fintech-core/sa/payment-processor;URI=spiffe://cluster.local/ns/fintech-core/sa/order-service",
    );
    expect("h2c_allowed", "200");
    // The seed policy `payment-processor-access` denies another method, path or caller.
    expect("get_denied", "403");
    expect("get_denied_body", "RBAC: access denied");
    expect("get_denied_policy", "none");
    expect("other_path_denied", "403");
    expect("other_sa_denied", "403");
    // Raw TCP: allowed for order-service by a port rule, refused for another identity.
    expect("tcp_echo", "ping");
    assert_ne!(r["tcp_other_sa"], "ping", "{r:#?}");
    // Ports the WorkloadEntry does not declare: HTTP is detected and authorized per request
    // (the app sees the caller's identity; GET gets the L7 403), TCP is detected and
    // authorized at L4 by the port rule.
    expect("detected_http_allowed", "200");
    expect("detected_http_xfcc", "1");
    expect("detected_http_denied", "403");
    expect("detected_http_denied_body", "RBAC: access denied");
    expect("detected_tcp_echo", "ping");
    assert_ne!(r["detected_tcp_other_sa"], "ping", "{r:#?}");
    // A pod without a proxy: refused under STRICT, accepted on the DISABLE port and under
    // PERMISSIVE; health always answers.
    expect("plain_strict", "000");
    expect("plain_port_disable", "200");
    expect("plain_health", "200");
    expect("health_port_config_dump", "404");
    expect("metrics_port_certs", "404");
    expect("admin_port_from_network", "000");
    expect("admin_port_on_loopback", "200");
    expect("own_port_outbound", "000");
    expect("own_port_inbound", "000");
    expect("peer_proxy_port", "000");
    let grew: i64 = r["self_dial_fds"].parse().expect("a count");
    assert!(grew < 10, "a request to a proxy's own port took {grew} more descriptors: {r:#?}");
    expect("plain_permissive_public", "200");
    // Namespace isolation: a caller from another namespace is denied.
    expect("namespace_isolation", "403");
    assert_ne!(r["metrics"], "0", "Prometheus metrics with Istio's names: {r:#?}");
    // Host-based DENY: the app receives exactly the authority the policy decided on.
    expect("host_public_allowed", "200");
    expect("host_admin_denied", "403");
    match r["two_hosts_code"].as_str() {
        // Both Host values, joined, are what the policy saw (not admin.internal) and the app got.
        "200" => expect("two_hosts_app_saw", "admin.internal,public.example"),
        "400" | "403" => {}
        other => panic!("two Host headers: unexpected status {other}: {r:#?}"),
    }
    expect("h2_authority_admin", "RBAC: access denied");
    expect("h2_authority_public_app_authority", "public.example");
    let host = r.get("h2_authority_public_app_host").map_or("", String::as_str);
    assert!(
        host.is_empty() || host == "public.example",
        "policy decided on :authority public.example, so the app must not receive host {host:?}: {r:#?}"
    );
    // A flood of idle connections to the health port does not exhaust the proxy.
    let flood: usize = r["flood_connections"].parse().expect("a count");
    assert!(flood >= 500, "the flood should hold hundreds of connections: {r:#?}");
    let fds: i64 = r["flood_fds"].parse().expect("a count");
    assert!(fds <= 100, "{flood} idle health connections took {fds} descriptors of the proxy: {r:#?}");
    expect("flood_mesh_request", "200");
    let logged: i64 = r["flood_log_bytes"].parse().expect("a count");
    assert!(logged < 20_000, "the flood wrote {logged} bytes of log: {r:#?}");
}
