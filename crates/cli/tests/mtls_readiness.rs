//! The road to STRICT, end to end: a real `zmesh control-plane`, a PERMISSIVE backend with a
//! STRICT dry-run PeerAuthentication, one caller with a proxy (mTLS) and one without (plaintext),
//! each pod in its own network namespace with iptables capture (`e2e/readiness.sh`). Then
//! `zmesh mtls-readiness` must name the plaintext caller and say UNSAFE; once that caller runs a
//! proxy, with a window that leaves its old plaintext out, SAFE; and the dry-run must have counted
//! exactly the plaintext connections, refusing none. The script enters its own user, network and
//! mount namespaces (`unshare`), so it needs no real root; missing tools fail it with the reason.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use serde_json::Value;
use zmesh_testkit::TempDir;

/// How many requests the script makes (see `readiness.sh`).
const PLAINTEXT_CALLS: u64 = 4;

fn require_tools() {
    for tool in ["unshare", "ip", "iptables", "iptables-restore", "curl"] {
        let found = std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
            .unwrap_or(false)
            || ["/usr/sbin", "/sbin"].iter().any(|dir| Path::new(dir).join(tool).is_file());
        assert!(
            found,
            "`{tool}` must be installed for this test (util-linux, iproute2, iptables, curl; CI installs them)"
        );
    }
}

struct Run {
    results: HashMap<String, String>,
    files: HashMap<&'static str, String>,
    context: String,
}

impl Run {
    fn json(&self, name: &str) -> Value {
        serde_json::from_str(&self.files[name])
            .unwrap_or_else(|e| panic!("{name} is not JSON ({e}):\n{}\n{}", self.files[name], self.context))
    }

    fn result(&self, key: &str) -> &str {
        self.results.get(key).map_or("", String::as_str)
    }
}

fn script_run() -> &'static Run {
    static RUN: OnceLock<Result<Run, String>> = OnceLock::new();
    match RUN.get_or_init(run_script) {
        Ok(run) => run,
        Err(failure) => panic!("{failure}"),
    }
}

fn run_script() -> Result<Run, String> {
    require_tools();
    let dir = TempDir::new("e2e-readiness");
    let output = zmesh_testkit::e2e::unshare_bash(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/readiness.sh"),
        [std::ffi::OsStr::new(env!("CARGO_BIN_EXE_zmesh")), dir.path().as_os_str()],
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut files = HashMap::new();
    for name in [
        "readiness-before.txt",
        "readiness-before.json",
        "readiness-before.yaml",
        "readiness-ghost.json",
        "readiness-after.txt",
        "readiness-after.json",
        "readiness-after-1h.json",
        "metrics-before.txt",
        "metrics-after.txt",
        "backend.log",
        "readiness.err",
        "analyze-before.txt",
        "analyze-after.txt",
        "analyze.err",
        "mtls-api.json",
        "mtls-api-3s.json",
        "dashboard.html",
    ] {
        files.insert(name, std::fs::read_to_string(dir.path().join(name)).unwrap_or_default());
    }
    let mut context = format!("stdout:\n{stdout}\nstderr:\n{}\n", String::from_utf8_lossy(&output.stderr));
    for log in ["control-plane.log", "backend.log", "client.log", "legacy.log", "readiness.err"] {
        let body = std::fs::read_to_string(dir.path().join(log)).unwrap_or_default();
        context.push_str(&format!("--- {log}\n{body}\n"));
    }
    if !output.status.success() {
        return Err(format!(
            "the readiness script failed (it needs unshare with user namespaces, iproute2, iptables and curl)\n{context}"
        ));
    }
    let results = zmesh_testkit::e2e::results(&stdout);
    if results.get("done").map(String::as_str) != Some("yes") {
        return Err(format!("the script stopped early\n{context}"));
    }
    Ok(Run { results, files, context })
}

/// The sum of a counter's series on a Prometheus page whose labels include all of `labels`.
fn counter(page: &str, name: &str, labels: &[&str]) -> u64 {
    page.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn readiness_names_the_plaintext_caller_as_unsafe_and_says_safe_once_it_joins_the_mesh() {
    let run = script_run();
    let context = &run.context;
    assert_eq!(run.result("mesh_codes"), "200 200 200", "{context}");
    assert_eq!(run.result("plaintext_codes"), "200 200 200 200", "PERMISSIVE accepts plaintext\n{context}");

    // Before: the plaintext caller is named, with its count; the mTLS caller is not.
    assert_eq!(run.result("before_exit"), "1", "an UNSAFE verdict exits 1\n{context}");
    let text = &run.files["readiness-before.txt"];
    assert!(text.contains("UNSAFE: STRICT would refuse shop/legacy (10.81.0.4) on port 8080"), "{text}");
    assert!(!text.contains("client"), "the mTLS caller sends no plaintext:\n{text}");
    let before = run.json("readiness-before.json");
    let workload = &before["workloads"][0];
    assert_eq!(workload["workload"], "shop/backend", "{before:#}");
    assert_eq!(workload["verdict"], "UNSAFE", "{before:#}");
    let port = &workload["ports"][0];
    assert_eq!(port["port"], "8080", "{before:#}");
    let sources = port["plaintextSources"].as_array().expect("plaintextSources");
    assert_eq!(sources.len(), 1, "{before:#}");
    assert_eq!(sources[0]["workload"], "shop/legacy");
    assert_eq!(sources[0]["address"], "10.81.0.4");
    assert_eq!(sources[0]["connections"], PLAINTEXT_CALLS);
    assert!(
        run.files["readiness-before.yaml"].contains("verdict: \"UNSAFE\""),
        "{}",
        run.files["readiness-before.yaml"]
    );

    // After legacy joins the mesh, with a window that leaves its old plaintext out: SAFE.
    assert_eq!(run.result("joined_codes"), "200 200 200", "{context}");
    assert_eq!(run.result("after_exit"), "0", "{}\n{context}", run.files["readiness-after.txt"]);
    let after = run.json("readiness-after.json");
    assert_eq!(after["workloads"][0]["verdict"], "SAFE", "{after:#}");
    assert_eq!(after["workloads"][0]["ports"][0]["sourcesBeforeWindow"], 1, "{after:#}");
    assert!(
        run.files["readiness-after.txt"].contains("SAFE to switch to STRICT"),
        "{}",
        run.files["readiness-after.txt"]
    );
    // Its calls since joining were mTLS: the plaintext count did not grow, so a window that
    // still covers the old plaintext says UNSAFE for that alone.
    let history = run.json("readiness-after-1h.json");
    assert_eq!(history["workloads"][0]["verdict"], "UNSAFE", "{history:#}");
    assert_eq!(
        history["workloads"][0]["ports"][0]["plaintextSources"][0]["connections"], PLAINTEXT_CALLS,
        "{history:#}"
    );
}

#[test]
fn the_strict_dry_run_counts_exactly_the_plaintext_connections_and_refuses_none() {
    let run = script_run();
    let dry_run = |page: &str| {
        counter(
            page,
            "zmesh_mtls_dry_run_refusals_total",
            &["destination_port=\"8080\"", "policy=\"shop/backend-strict\""],
        )
    };
    assert_eq!(dry_run(&run.files["metrics-before.txt"]), PLAINTEXT_CALLS, "{}", run.files["metrics-before.txt"]);
    // Three more calls, now in mTLS, are not counted.
    assert_eq!(dry_run(&run.files["metrics-after.txt"]), PLAINTEXT_CALLS, "{}", run.files["metrics-after.txt"]);
    let plaintext = counter(&run.files["metrics-after.txt"], "zmesh_plaintext_connections_total", &[]);
    assert_eq!(plaintext, PLAINTEXT_CALLS, "{}", run.files["metrics-after.txt"]);
    let logged = run.files["backend.log"]
        .lines()
        .filter(|l| {
            l.contains("would refuse: plaintext connection from shop/legacy to port 8080 under STRICT dry-run policy shop/backend-strict")
        })
        .count();
    // Logged at the source's 1st, 2nd and 4th connection (the counter counts every one).
    let powers_of_two = (1..=PLAINTEXT_CALLS).filter(|n| n.is_power_of_two()).count();
    assert_eq!(logged, powers_of_two, "the dry-run names the sender, at doubling counts\n{}", run.context);
    let before = run.json("readiness-before.json");
    assert_eq!(
        before["workloads"][0]["ports"][0]["dryRunRefusals"][0],
        serde_json::json!({"policy": "shop/backend-strict", "connections": PLAINTEXT_CALLS}),
        "{before:#}"
    );
    // Not enforced: every plaintext call got through (checked above as 200s).
    assert_eq!(run.result("plaintext_codes"), "200 200 200 200", "{}", run.context);
}

#[test]
fn analyze_with_live_data_warns_that_switching_to_strict_breaks_the_plaintext_caller_until_it_joins() {
    let run = script_run();
    let before = &run.files["analyze-before.txt"];
    let context = format!("{before}\n{}\n{}", run.files["analyze.err"], run.context);
    assert_eq!(run.result("analyze_before_exit"), "1", "{context}");
    let finding = before.lines().find(|l| l.contains("[ZM1011]")).unwrap_or_else(|| panic!("no ZM1011\n{context}"));
    assert!(finding.contains("PeerAuthentication shop/backend-strict"), "{finding}");
    assert!(finding.contains("mesh.yaml:"), "file:line of the policy: {finding}");
    assert!(finding.contains("shop/legacy (10.81.0.4)"), "names the caller that would break: {finding}");
    assert!(finding.contains("shop/backend port 8080"), "{finding}");
    // Once legacy sends through its own proxy, a window without the old plaintext is clean.
    let after = &run.files["analyze-after.txt"];
    assert!(!after.contains("ZM1011"), "{after}\n{}", run.context);
}

#[test]
fn a_workload_whose_proxy_cannot_be_read_is_unknown_never_safe() {
    let run = script_run();
    assert_eq!(run.result("ghost_exit"), "1", "{}", run.context);
    let ghost = run.json("readiness-ghost.json");
    assert_eq!(ghost["workloads"][0]["workload"], "shop/ghost", "{ghost:#}");
    assert_eq!(ghost["workloads"][0]["verdict"], "UNKNOWN", "{ghost:#}");
    assert!(ghost["workloads"][0]["reason"].as_str().is_some_and(|r| r.contains("10.81.0.9:15020")), "{ghost:#}");
}

#[test]
fn the_control_plane_shows_the_plaintext_caller_as_unsafe_and_the_dry_run_count_on_its_dashboard_and_api() {
    let run = script_run();
    assert_eq!(run.result("dashboard_done"), "yes", "{}", run.context);
    let api = run.json("mtls-api.json");
    let workloads = api["workloads"].as_array().expect("workloads");
    let by_name =
        |name: &str| workloads.iter().find(|w| w["workload"] == name).unwrap_or_else(|| panic!("no {name} in {api:#}"));
    // The control plane read backend's proxy itself: the same verdict the CLI gives.
    let backend = by_name("shop/backend");
    assert_eq!(backend["verdict"], "UNSAFE", "{api:#}");
    let source = &backend["ports"][0]["plaintextSources"][0];
    assert_eq!((&source["workload"], &source["address"]), (&"shop/legacy".into(), &"10.81.0.4".into()), "{api:#}");
    assert_eq!(source["connections"], PLAINTEXT_CALLS, "{api:#}");
    assert_eq!(
        backend["dryRunRefusals"][0],
        serde_json::json!({"policy": "shop/backend-strict", "connections": PLAINTEXT_CALLS}),
        "{api:#}"
    );
    // ghost has no proxy: UNKNOWN, never SAFE; client's proxy observes and saw no plaintext.
    assert_eq!(by_name("shop/ghost")["verdict"], "UNKNOWN", "{api:#}");
    assert_eq!(by_name("shop/client")["verdict"], "SAFE", "{api:#}");
    // A window that leaves legacy's old plaintext out: SAFE, as `mtls-readiness --window 3s`.
    let recent = run.json("mtls-api-3s.json");
    let backend = recent["workloads"].as_array().into_iter().flatten().find(|w| w["workload"] == "shop/backend");
    assert_eq!(backend.map(|w| &w["verdict"]), Some(&"SAFE".into()), "{recent:#}");

    assert_eq!(run.result("dashboard_code"), "200", "{}", run.context);
    let html = &run.files["dashboard.html"];
    let row = html
        .lines()
        .find(|l| l.starts_with("<tr><td>shop/backend</td><td>10.81.0.3</td>"))
        .unwrap_or_else(|| panic!("{html}"));
    assert!(row.contains("<td class=\"bad\">UNSAFE</td>"), "{row}");
    assert!(row.contains(&format!("8080: shop/legacy (10.81.0.4), {PLAINTEXT_CALLS} connection(s)")), "{row}");
    assert!(row.contains(&format!("shop/backend-strict: {PLAINTEXT_CALLS} connection(s)")), "{row}");
    assert!(
        html.contains(&format!("<b class=\"warn\">{PLAINTEXT_CALLS}</b>STRICT dry-run would-be refusals")),
        "{html}"
    );
    // Traffic: legacy's plaintext requests, and the mTLS ones from client and (after joining) legacy.
    assert!(
        html.contains(&format!("<tr><td>unknown</td><td></td><td>shop/backend</td><td class=\"bad\">plaintext</td><td>{PLAINTEXT_CALLS}</td>")),
        "{html}"
    );
    for caller in ["client", "legacy"] {
        let edge = format!(
            "<tr><td>spiffe://cluster.local/ns/shop/sa/{caller}</td><td>shop/{caller}</td><td>shop/backend</td><td class=\"ok\">mTLS</td><td>3</td>"
        );
        assert!(html.contains(&edge), "{edge}\n{html}");
    }
}
