//! `zmesh authz check WORKLOAD` and `zmesh authz explain` against a running mesh: a real
//! `zmesh control-plane`, an echo app and two `zmesh proxy` processes in explicit mode on
//! loopback addresses of their own. What the command says of each request is held against what
//! the proxies do with it, sent by curl through the client proxy; `authz explain` reads a real
//! decision line of the server proxy's log.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use zmesh_testkit::TempDir;
use zmesh_testkit::envoy::free_port;

fn zmesh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zmesh")).args(args).output().expect("the zmesh binary runs")
}

/// The processes of the mesh, each stopped by its own handle when the test ends, pass or fail.
struct Mesh {
    dir: TempDir,
    children: Vec<(String, Child)>,
    status_api: String,
    client_ip: IpAddr,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Mesh {
    fn spawn(&mut self, name: &str, args: &[&str]) {
        let log = std::fs::File::create(self.log_path(name)).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_zmesh"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        self.children.push((name.to_owned(), child));
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    fn logs(&self) -> String {
        let mut text = String::new();
        for (name, _) in &self.children {
            let body = std::fs::read_to_string(self.log_path(name)).unwrap_or_default();
            text.push_str(&format!("--- {name}\n{body}\n"));
        }
        text
    }

    /// `zmesh authz …` against this mesh, with `-o json`; it must succeed.
    fn authz_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["authz"];
        all.extend(args);
        all.extend(["--control-plane", &self.status_api, "-o", "json"]);
        let output = zmesh(&all);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "zmesh {all:?}\nstdout:\n{stdout}\nstderr:\n{}\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.logs()
        );
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("zmesh {all:?} is not JSON ({e}):\n{stdout}"))
    }

    /// `zmesh authz check shop/server --from shop/client …`.
    fn check(&self, method: &str, path: &str) -> Value {
        self.authz_json(&["check", "shop/server", "--from", "shop/client", "--method", method, "--path", path])
    }

    /// The status the client proxy's outbound port answers `method path` with (sent as is).
    fn curl(&self, method: &str, path: &str) -> String {
        let url = format!("http://{}:9000{path}", self.client_ip);
        let output = Command::new("curl")
            .args(["-s", "--path-as-is", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", "-X", method, &url])
            .output()
            .expect("curl runs (it must be installed for this test)");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// A loopback /24 of this test process's own, so parallel test runs do not share addresses.
fn loopback_net() -> [u8; 3] {
    let pid = std::process::id();
    [127, 190 + (pid % 50) as u8, (pid / 50 % 250) as u8 + 1]
}

fn mesh_yaml(client: IpAddr, server: IpAddr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: shop}}
spec: {{address: {client}, serviceAccount: client, labels: {{app: client}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: server, namespace: shop}}
spec: {{address: {server}, serviceAccount: server, labels: {{app: server}}, ports: {{http-web: 8080}}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: server-strict, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: server}}}}
  mtls: {{mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: server-deny-admin, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: server}}}}
  action: DENY
  rules: [{{to: [{{operation: {{paths: [/admin, /admin/*]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: server-allow-get, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: server}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/shop/sa/client]}}}}]
    to: [{{operation: {{methods: [GET]}}}}]
"
    )
}

fn token(ca: &Path, identity: &str, path: PathBuf) -> PathBuf {
    let ca = ca.to_str().expect("utf-8 path");
    let output = zmesh(&["ca", "token", "--ca-dir", ca, "--identity", identity, "--ttl", "10m"]);
    assert!(output.status.success(), "zmesh ca token: {}", String::from_utf8_lossy(&output.stderr));
    std::fs::write(&path, &output.stdout).expect("token file");
    path
}

fn start_mesh() -> Mesh {
    let [a, b, c] = loopback_net();
    let (client_ip, server_ip) = (IpAddr::from([a, b, c, 2]), IpAddr::from([a, b, c, 3]));
    let dir = TempDir::new("authz-live");
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).expect("config dir");
    std::fs::write(config.join("mesh.yaml"), mesh_yaml(client_ip, server_ip)).expect("mesh.yaml");
    let ca = dir.path().join("ca");
    let init = zmesh(&["ca", "init", "--dir", ca.to_str().expect("utf-8")]);
    assert!(init.status.success(), "zmesh ca init: {}", String::from_utf8_lossy(&init.stderr));
    let (grpc, status) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let mut mesh = Mesh { status_api: format!("http://{status}"), dir, children: Vec::new(), client_ip };
    let config = config.to_str().expect("utf-8").to_owned();
    let ca_dir = ca.to_str().expect("utf-8").to_owned();
    mesh.spawn(
        "control-plane",
        &["control-plane", "--config", &config, "--ca-dir", &ca_dir, "--listen", &grpc, "--admin", &status],
    );
    mesh.spawn("echo", &["echo", "--listen", &format!("{server_ip}:8080")]);
    let roots = ca.join("root-cert.pem").to_str().expect("utf-8").to_owned();
    let url = format!("https://{grpc}");
    let outbound = format!("{client_ip}:9000={server_ip}:8080");
    for name in ["server", "client"] {
        let identity = format!("spiffe://cluster.local/ns/shop/sa/{name}");
        let token = token(&ca, &identity, mesh.dir.path().join(format!("{name}.token")));
        let token = token.to_str().expect("utf-8").to_owned();
        let workload = format!("shop/{name}");
        // The server logs every decision: denials at INFO, allowed requests at DEBUG.
        let mut args = vec![
            "proxy",
            "--control-plane",
            &url,
            "--roots",
            &roots,
            "--token-file",
            &token,
            "--workload",
            &workload,
            "--explicit",
            "--concurrency",
            "1",
            "--log-level",
            "info,zmesh_proxy::admission=debug",
        ];
        if name == "client" {
            args.extend(["--outbound", &outbound]);
        }
        mesh.spawn(&format!("proxy-{name}"), &args);
    }
    let deadline = Instant::now() + Duration::from_secs(25);
    while mesh.curl("GET", "/ready") != "200" {
        assert!(
            Instant::now() < deadline,
            "the mesh did not answer through the client proxy within 25 s\n{}",
            mesh.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    mesh
}

/// The server proxy's decision lines, without color escapes.
fn decision_lines(mesh: &Mesh) -> Vec<String> {
    let log = std::fs::read_to_string(mesh.log_path("proxy-server")).unwrap_or_default();
    log.lines().filter(|l| l.contains("authorization decision")).map(str::to_owned).collect()
}

#[test]
fn the_live_check_says_what_the_running_proxy_does_and_explain_replays_its_log_line() {
    let mesh = start_mesh();

    // Each answer of the command, then the proxy's own answer to the same request.
    let cases = [
        ("GET", "/admin", "deny", Some("shop/server-deny-admin"), "403"),
        ("GET", "/admin/users", "deny", Some("shop/server-deny-admin"), "403"),
        // BASE resolves the dot segment before the DENY sees the path.
        ("GET", "/x/../admin", "deny", Some("shop/server-deny-admin"), "403"),
        ("GET", "/public", "allow", Some("shop/server-allow-get"), "200"),
        // BASE keeps `//`: the DENY on /admin does not see it (zmesh analyze reports this, ZM1010).
        ("GET", "//admin", "allow", Some("shop/server-allow-get"), "200"),
        ("POST", "/public", "deny", None, "403"),
    ];
    for (method, path, decision, policy, status) in cases {
        let answer = mesh.check(method, path);
        assert_eq!(answer["decision"], decision, "{method} {path}: {answer:#}");
        assert_eq!(answer["policy"].as_str(), policy, "{method} {path}: {answer:#}");
        assert_eq!(answer["source"]["principal"], "spiffe://cluster.local/ns/shop/sa/client", "{answer:#}");
        assert_eq!(answer["source"]["proxyConnected"], true, "{answer:#}");
        assert_eq!(answer["mtls"]["mode"], "STRICT", "{answer:#}");
        assert_eq!(answer["mtls"]["policy"], "shop/server-strict", "{answer:#}");
        assert_eq!(
            mesh.curl(method, path),
            status,
            "{method} {path}: the command said {decision}, the proxy answered otherwise\n{}",
            mesh.logs()
        );
    }
    let dotted = mesh.check("GET", "/x/../admin");
    assert_eq!(dotted["normalizedPath"], "/admin", "{dotted:#}");
    assert_eq!(dotted["pathNormalization"], "BASE", "{dotted:#}");

    // A plaintext caller never reaches authorization on the STRICT port.
    let plaintext =
        mesh.authz_json(&["check", "shop/server", "--from", "shop/client", "--plaintext", "--path", "/public"]);
    assert_eq!(plaintext["decision"], "deny", "{plaintext:#}");
    assert_eq!(plaintext["refusedBy"], "PeerAuthentication", "{plaintext:#}");
    let reason = plaintext["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("PeerAuthentication shop/server-strict") && reason.contains("STRICT"), "{reason}");

    // explain: the proxy's own lines, decided again with the configuration in force.
    let lines = decision_lines(&mesh);
    let deny_line = lines
        .iter()
        .find(|l| l.contains("deny") && l.contains("\"/admin/users\""))
        .unwrap_or_else(|| panic!("no decision line for /admin/users in the server proxy's log\n{}", mesh.logs()));
    let explained = mesh.authz_json(&["explain", deny_line]);
    assert_eq!(explained["logged"]["decision"], "deny", "{explained:#}");
    assert_eq!(explained["logged"]["by"], "shop/server-deny-admin rule 0", "{explained:#}");
    assert_eq!(explained["decision"], "deny", "{explained:#}");
    assert_eq!(explained["policy"], "shop/server-deny-admin", "{explained:#}");
    assert_eq!(explained["sameAsLogged"], true, "{explained:#}");
    assert_eq!(explained["workload"], "shop/server", "{explained:#}");
    assert_eq!(explained["source"]["principal"], "spiffe://cluster.local/ns/shop/sa/client", "{explained:#}");
    assert_eq!(explained["request"]["path"], "/admin/users", "{explained:#}");

    let allow_line = lines
        .iter()
        .find(|l| l.contains("allow") && l.contains("\"//admin\""))
        .unwrap_or_else(|| panic!("no decision line for //admin in the server proxy's log\n{}", mesh.logs()));
    let explained = mesh.authz_json(&["explain", allow_line]);
    assert_eq!(explained["decision"], "allow", "{explained:#}");
    assert_eq!(explained["sameAsLogged"], true, "{explained:#}");
    assert_eq!(explained["normalizedPath"], "//admin", "{explained:#}");

    // The text form says why, naming the rule.
    let output = zmesh(&["authz", "explain", deny_line, "--control-plane", &mesh.status_api]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("logged") && text.contains("DENY") && text.contains("shop/server-deny-admin"), "{text}");
}

#[test]
fn explain_refuses_a_line_that_is_not_a_decision_with_what_to_do() {
    let output = zmesh(&["authz", "explain", "2026-01-01T00:00:00Z  INFO zmesh_proxy::run: configuration updated"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("authorization decision") && stderr.contains("--log-level"), "{stderr}");
}

#[test]
fn the_offline_check_refuses_plaintext_on_a_strict_port_before_any_policy() {
    let dir = TempDir::new("authz-offline-strict");
    let config = dir.write(
        "mesh.yaml",
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: shop}
spec: {action: ALLOW, rules: [{}]}
",
    );
    let config = config.to_str().expect("utf-8");
    let workload = r#"{"namespace": "shop"}"#;
    let check = |request: &str| {
        let output = zmesh(&[
            "authz",
            "check",
            "--config",
            config,
            "--workload-json",
            workload,
            "--request-json",
            request,
            "-o",
            "json",
        ]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice::<Value>(&output.stdout).expect("JSON")
    };
    let plaintext = check(r#"{"destination": {"port": 8080}, "path": "/"}"#);
    assert_eq!(plaintext["decision"], "deny", "{plaintext:#}");
    assert_eq!(plaintext["refusedBy"], "PeerAuthentication", "{plaintext:#}");
    assert!(
        plaintext["reason"].as_str().is_some_and(|r| r.contains("PeerAuthentication shop/strict")),
        "{plaintext:#}"
    );
    let mtls = check(r#"{"source": {"principal": "cluster.local/ns/shop/sa/web"}, "destination": {"port": 8080}}"#);
    assert_eq!(mtls["decision"], "allow", "{mtls:#}");
    assert_eq!(mtls["policy"], "shop/allow-all", "{mtls:#}");
}
