//! `zmesh up` as a new user runs it: the demo mesh comes up, the summary shows mTLS flows
//! allowed and the expected denials, `zmesh exec` runs a command as a workload, and Ctrl-C
//! leaves no process, namespace or bridge behind. By default every workload lives in a network
//! namespace of its own inside a user namespace `up` makes, so STRICT holds against processes
//! outside the workloads; an edit changes the summary's expectations and verdict, and a refused
//! edit is shown with its file:line. Each run happens inside its own user, network and mount
//! namespaces (`unshare`), so ports and namespaces never touch the host; missing tools or
//! namespaces that cannot be made fail the test with the reason.

use std::collections::HashMap;

use zmesh_testkit::TempDir;

/// The seed configurations this product was founded on (testdata/seed-configs).
const SEEDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/seed-configs");

fn run_up(mode: &str) -> HashMap<String, String> {
    let dir = TempDir::new(&format!("up-{mode}"));
    let output = zmesh_testkit::e2e::unshare_bash(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/up.sh"),
        [
            std::ffi::OsStr::new(env!("CARGO_BIN_EXE_zmesh")),
            dir.path().as_os_str(),
            std::ffi::OsStr::new(mode),
            std::ffi::OsStr::new(SEEDS),
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    let mut logs = format!("--- up.out (tail)\n{}\n--- up.err\n{}", tail(&read("up.out"), 40), read("up.err"));
    if let Ok(entries) = std::fs::read_dir(dir.path().join("state/logs")) {
        for entry in entries.flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            logs.push_str(&format!("\n--- {}\n{}", entry.path().display(), tail(&text, 15)));
        }
    }
    assert!(
        output.status.success(),
        "the up script failed (it needs unshare with user namespaces, iproute2, iptables and curl; CI installs them)\nstdout:\n{stdout}\nstderr:\n{}\n{logs}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results = zmesh_testkit::e2e::results(&stdout);
    // Into a file the summary is plain lines: no cursor movement, no clearing.
    assert!(!read("up.out").contains('\x1b'), "escape sequences written to a file:\n{logs}");
    assert!(results.len() >= 12, "the script stopped early:\n{stdout}\n{logs}");
    if results.get("all_flows_as_expected").map(String::as_str) != Some("yes") {
        panic!("the summary never showed every flow as expected:\n{results:#?}\n{logs}");
    }
    results
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn expect(r: &HashMap<String, String>, key: &str, want: &str) {
    assert_eq!(r.get(key).map(String::as_str), Some(want), "{key}: {r:#?}");
}

fn check_demo(r: &HashMap<String, String>) {
    expect(r, "exec_allowed", "200");
    expect(r, "exec_peer", "spiffe://cluster.local/ns/fintech-core/sa/order-service");
    expect(r, "exec_denied", "403");
    assert!(r["children_started"].parse::<u32>().expect("count") >= 9 + 3, "{r:#?}");
    check_stop(r);
}

/// Up in time, every proxy synced, and nothing left after Ctrl-C.
fn check_stop(r: &HashMap<String, String>) {
    let expect = |key: &str, want: &str| expect(r, key, want);
    let seconds: u64 = r["seconds_to_summary"].parse().expect("seconds");
    assert!(seconds <= 30, "the summary took {seconds} s: {r:#?}");
    assert_ne!(r["proxies_synced"], "0", "{r:#?}");
    expect("proxy_status", "synced");
    expect("up_exited", "yes");
    expect("up_status", "0");
    expect("processes_left", "0");
    expect("netns_left", "0");
    expect("bridge_left", "no");
    expect("up_json_left", "no");
}

/// The default shape: no loopback fallback, every workload in its own namespace.
fn check_namespaced(r: &HashMap<String, String>) {
    assert_eq!(
        r.get("loopback_warning").map(String::as_str),
        Some("0"),
        "`zmesh up` fell back to loopback although this machine makes user namespaces; see up.err: {r:#?}"
    );
    expect(r, "user_namespace", "1");
}

#[test]
fn zmesh_up_by_default_puts_every_workload_in_its_own_namespace_so_strict_holds_against_local_processes() {
    let r = run_up("default");
    check_namespaced(&r);
    // A process outside the workloads reaches no app: not from the host's side (no route), not
    // in plaintext from beside the bridge (the STRICT proxy refuses it) ...
    expect(&r, "outside_direct", "000");
    expect(&r, "outside_beside_bridge", "000");
    // (a PERMISSIVE workload on the same path answers: its proxy denies the plaintext caller by
    // policy, so the path is there and the STRICT proxy is what refused)
    expect(&r, "beside_bridge_permissive", "403");
    // ... while `zmesh exec` from inside a workload reaches it through the mesh, over mTLS.
    check_demo(&r);
}

#[test]
fn after_an_edit_the_summary_expects_what_the_engine_decides_and_counts_since_the_change() {
    let r = run_up("edit");
    check_namespaced(&r);
    // GET was denied ("only POST"); the edit allows it: the expectation follows, and every flow
    // observed since every proxy had the new generation matches it.
    expect(&r, "edit_get_expected", "ALLOW");
    expect(&r, "edit_all_as_expected", "yes");
    assert_ne!(r["edit_get_allowed"], "0", "{r:#?}");
    expect(&r, "refused_shown", "yes");
    expect(&r, "refused_still_shown", "1");
    expect(&r, "refused_cleared", "yes");
    check_stop(&r);
}

#[test]
fn when_the_supervising_up_is_killed_outright_the_mesh_inside_stops_too() {
    let dir = TempDir::new("up-orphan");
    let output = zmesh_testkit::e2e::unshare_bash(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/up.sh"),
        [std::ffi::OsStr::new(env!("CARGO_BIN_EXE_zmesh")), dir.path().as_os_str(), std::ffi::OsStr::new("orphan")],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let r = zmesh_testkit::e2e::results(&stdout);
    expect(&r, "all_flows_as_expected", "yes");
    assert!(r["orphan_started"].parse::<u32>().expect("count") >= 9 * 2 + 6, "{r:#?}");
    expect(&r, "orphan_left", "0");
}

#[test]
fn zmesh_up_loopback_runs_the_demo_mesh_warns_that_strict_does_not_hold_and_leaves_nothing_behind() {
    let r = run_up("loopback");
    expect(&r, "loopback_warning", "1");
    // What the warning says: a local process dials the app past its proxy.
    expect(&r, "loopback_direct", "200");
    check_demo(&r);
}

#[test]
fn without_user_namespaces_zmesh_up_falls_back_to_loopback_and_says_strict_does_not_hold() {
    let r = run_up("fallback");
    expect(&r, "loopback_warning", "1");
    expect(&r, "no_user_namespaces", "1");
    expect(&r, "loopback_direct", "200");
    check_demo(&r);
}

#[test]
fn your_own_workloads_on_loopback_addresses_are_refused_in_namespaces_with_what_to_do() {
    let dir = TempDir::new("up-namespaced-config");
    let output = zmesh_testkit::e2e::unshare_bash(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/up.sh"),
        [
            std::ffi::OsStr::new(env!("CARGO_BIN_EXE_zmesh")),
            dir.path().as_os_str(),
            std::ffi::OsStr::new("namespaced-config"),
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let err = std::fs::read_to_string(dir.path().join("up.err")).unwrap_or_default();
    assert!(output.status.success(), "{stdout}\n{}\n{err}", String::from_utf8_lossy(&output.stderr));
    let r = zmesh_testkit::e2e::results(&stdout);
    assert_ne!(r.get("refused_status").map(String::as_str), Some("0"), "{r:#?}\n{err}");
    expect(&r, "refused_says_loopback", "1");
    expect(&r, "up_json_left", "no");
}

#[test]
fn on_a_terminal_the_summary_redraws_in_place() {
    let dir = TempDir::new("up-terminal");
    let typescript = dir.path().join("typescript");
    let command = format!(
        "{} up --state-dir {} --duration 6 --summary-ms 500",
        env!("CARGO_BIN_EXE_zmesh"),
        dir.path().join("state").display()
    );
    // `script` gives `up` a pseudo-terminal and records what it wrote there.
    let output = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "--net", "--mount", "--fork", "script", "-qfc", &command])
        .arg(&typescript)
        .output()
        .expect("`unshare` and `script` must be installed (util-linux); CI installs them");
    let screen = std::fs::read_to_string(&typescript).unwrap_or_default();
    assert!(output.status.success(), "{}\n{screen}", String::from_utf8_lossy(&output.stderr));
    let frames = screen.matches("\x1b[H\x1b[2J").count();
    assert!(frames >= 3, "{frames} redraws:\n{screen}");
    // Every frame starts with the banner, so the status API and the paths stay in view.
    let last = screen.rsplit("\x1b[H\x1b[2J").next().unwrap_or_default();
    assert!(last.starts_with("zmesh up: 9 workloads") && last.contains("summary: "), "{last}");
}

#[test]
fn zmesh_up_isolate_runs_every_workload_in_its_own_namespace_with_capture() {
    check_demo(&run_up("isolate"));
}

#[test]
fn zmesh_up_with_your_own_config_serves_your_workloads_and_follows_policy_edits() {
    let r = run_up("config");
    expect(&r, "mine_allowed", "200");
    expect(&r, "mine_denied", "403");
    expect(&r, "mine_after_edit", "200");
    let ms: u64 = r["mine_edit_ms"].parse().expect("ms");
    assert!(ms < 1000, "the edit took {ms} ms to reach the proxy: {r:#?}");
    assert!(r["children_started"].parse::<u32>().expect("count") >= 2, "{r:#?}");
    check_stop(&r);
}

#[test]
fn zmesh_up_runs_the_seed_configurations_as_written_and_lists_what_it_does_not_enforce() {
    let r = run_up("seeds");
    check_namespaced(&r);
    expect(&r, "seeds_stand_ins", "1");
    let listed: u32 = r["seeds_not_enforced"].parse().expect("count");
    assert!(listed >= 5, "only {listed} findings listed: {r:#?}");
    expect(&r, "seeds_network_policy", "1");
    expect(&r, "seeds_rate_limit", "1");
    expect(&r, "seeds_denied", "403");
    check_stop(&r);
}
