//! The security dashboard and `/api/v1/mtls` of a running mesh: a real `zmesh control-plane`,
//! an echo app and two `zmesh proxy` processes in explicit mode on loopback addresses of their
//! own, and a third workload that has no proxy. After allowed and denied requests through the
//! proxies, the control plane's own reading of their metrics must show on its status port: the
//! workloads and which of them have a proxy, each proxy's sync state and version, the readiness
//! verdicts (UNKNOWN in explicit mode, where plaintext bypasses the proxy), the denial with its
//! caller, the traffic between the two workloads in mTLS, and each certificate's expiry.
//! (Plaintext and the STRICT dry-run need transparent capture: `mtls_readiness.rs`.)

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use zmesh_testkit::TempDir;
use zmesh_testkit::envoy::{HttpResponse, free_port, http_request};

fn zmesh_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_zmesh"))
}

/// Processes of the mesh, stopped (each by its own handle) when the test ends, pass or fail.
struct Mesh {
    dir: TempDir,
    children: Vec<(String, Child)>,
    status: SocketAddr,
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
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).expect("log file");
        let child = zmesh_command()
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        self.children.push((name.to_owned(), child));
    }

    fn logs(&self) -> String {
        let mut text = String::new();
        for (name, _) in &self.children {
            let body = std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default();
            text.push_str(&format!("--- {name}\n{body}\n"));
        }
        text
    }

    fn get(&self, path: &str) -> HttpResponse {
        http_request(self.status, "GET", path, &[])
    }

    fn json(&self, path: &str) -> Value {
        let response = self.get(path);
        assert_eq!(response.status, 200, "{path}: {response:?}\n{}", self.logs());
        serde_json::from_str(&response.body).unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {}", response.body))
    }
}

/// A loopback /24 of this test process's own, so parallel test runs do not share addresses.
fn loopback_net() -> [u8; 3] {
    let pid = std::process::id();
    [127, 30 + (pid % 50) as u8, (pid / 50 % 250) as u8 + 1]
}

fn mesh_yaml(client: IpAddr, server: IpAddr, idle: IpAddr) -> String {
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
# A workload whose proxy never runs: no mTLS, and nothing to read.
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: idle, namespace: shop}}
spec: {{address: {idle}, serviceAccount: idle, labels: {{app: idle}}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: shop}}
spec: {{mtls: {{mode: PERMISSIVE}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: server-deny-admin, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: server}}}}
  action: DENY
  rules: [{{to: [{{operation: {{paths: [/admin]}}}}]}}]
"
    )
}

fn token(ca: &Path, identity: &str, dir: &Path, name: &str) -> String {
    let output = zmesh_command()
        .args(["ca", "token", "--ca-dir", ca.to_str().expect("utf-8"), "--identity", identity, "--ttl", "10m"])
        .output()
        .expect("zmesh ca token runs");
    assert!(output.status.success(), "zmesh ca token: {}", String::from_utf8_lossy(&output.stderr));
    let path = dir.join(name);
    std::fs::write(&path, &output.stdout).expect("token file");
    path.to_str().expect("utf-8").to_owned()
}

fn start_mesh(client_ip: IpAddr, server_ip: IpAddr, idle_ip: IpAddr) -> Mesh {
    let dir = TempDir::new("dashboard");
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).expect("config dir");
    std::fs::write(config.join("mesh.yaml"), mesh_yaml(client_ip, server_ip, idle_ip)).expect("mesh.yaml");
    let ca = dir.path().join("ca");
    let init = zmesh_command().args(["ca", "init", "--dir", ca.to_str().expect("utf-8")]).output().expect("ca init");
    assert!(init.status.success(), "zmesh ca init: {}", String::from_utf8_lossy(&init.stderr));
    let (grpc, status) = (free_port(), free_port());
    let status = SocketAddr::from(([127, 0, 0, 1], status));
    let mut mesh = Mesh { dir, children: Vec::new(), status };
    let grpc_addr = format!("127.0.0.1:{grpc}");
    let control_args = [
        "control-plane",
        "--config",
        config.to_str().expect("utf-8"),
        "--ca-dir",
        ca.to_str().expect("utf-8"),
        "--listen",
        &grpc_addr,
        "--admin",
        &status.to_string(),
        "--log-level",
        "warn",
    ];
    mesh.spawn("control-plane", &control_args);
    mesh.spawn("echo", &["echo", "--listen", &format!("{server_ip}:8080")]);
    let roots = ca.join("root-cert.pem");
    let url = format!("https://{grpc_addr}");
    let outbound = format!("{client_ip}:9000={server_ip}:8080");
    for name in ["server", "client"] {
        let token =
            token(&ca, &format!("spiffe://cluster.local/ns/shop/sa/{name}"), mesh.dir.path(), &format!("{name}.token"));
        let workload = format!("shop/{name}");
        let mut args: Vec<&str> = vec![
            "proxy",
            "--control-plane",
            &url,
            "--roots",
            roots.to_str().expect("utf-8"),
            "--token-file",
            &token,
            "--workload",
            &workload,
            "--explicit",
            "--concurrency",
            "1",
            "--log-level",
            "warn",
        ];
        if name == "client" {
            args.extend(["--outbound", &outbound]);
        }
        mesh.spawn(&format!("proxy-{name}"), &args);
    }
    mesh
}

/// Poll `check` every 200 ms until it gives a value, for at most `limit`.
fn within<T>(mesh: &Mesh, limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what} within {limit:?}\n{}", mesh.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn answers(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

#[test]
fn the_dashboard_and_the_mtls_api_show_workloads_proxies_denials_traffic_and_certificates_of_a_running_mesh() {
    let [a, b, c] = loopback_net();
    let ip = |d: u8| IpAddr::from([a, b, c, d]);
    let (client_ip, server_ip, idle_ip) = (ip(2), ip(3), ip(9));
    let mesh = start_mesh(client_ip, server_ip, idle_ip);

    // Both proxies synced and the path through them answering.
    let through = SocketAddr::new(client_ip, 9000);
    let version = within(&mesh, Duration::from_secs(20), "both proxies SYNCED and the path open", || {
        if !answers(mesh.status) || !answers(through) {
            return None;
        }
        let proxies = mesh.json("/api/v1/proxies");
        let list = proxies["proxies"].as_array()?;
        (list.len() == 2 && list.iter().all(|p| p["state"] == "SYNCED")).then(|| proxies["version"].clone())
    });
    let version = version.as_str().expect("version").to_owned();
    for _ in 0..3 {
        let allowed = http_request(through, "GET", "/", &[]);
        assert_eq!(allowed.status, 200, "{allowed:?}\n{}", mesh.logs());
    }
    for _ in 0..2 {
        let denied = http_request(through, "GET", "/admin", &[]);
        assert_eq!(denied.status, 403, "{denied:?}\n{}", mesh.logs());
    }
    let client = "spiffe://cluster.local/ns/shop/sa/client";

    // The control plane reads the proxies in the background: wait for a round that saw the
    // denials (a connection's requests are counted when it closes).
    let denial_row = format!(
        "<tr><td>shop/server</td><td>HTTP request denied by AuthorizationPolicy</td><td>{client}</td><td><span class=\"muted\">not exported</span></td><td><span class=\"muted\">not exported</span></td><td></td><td>2</td></tr>"
    );
    let page = within(&mesh, Duration::from_secs(20), "the dashboard showing the two denials", || {
        let page = mesh.get("/dashboard");
        page.body.contains(&denial_row).then_some(page)
    });
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(page.header("content-security-policy").is_some_and(|p| p.starts_with("default-src 'none'")), "{page:?}");
    let html = &page.body;
    assert!(html.contains("<meta http-equiv=\"refresh\" content=\"5\">"), "{html}");
    assert!(!html.contains("<script"), "{html}");

    // Proxies: each with its workload, SYNCED at the version in force.
    for workload in ["shop/server", "shop/client"] {
        let row = html
            .lines()
            .find(|l| l.starts_with("<tr>") && l.contains(&format!("<td>{workload}</td><td class=\"ok\">yes</td>")))
            .unwrap_or_else(|| panic!("no proxy row for {workload}\n{html}"));
        assert!(row.contains(&format!("<td class=\"ok\">SYNCED</td><td><code>{version}</code></td>")), "{row}");
    }
    // Coverage: two of three workloads have a proxy; the one without is flagged.
    assert!(html.contains("<b class=\"warn\">2/3</b>workloads with a connected proxy"), "{html}");
    let idle_row = html.lines().find(|l| l.starts_with("<tr><td>shop/idle</td>")).expect("a row for shop/idle");
    assert!(idle_row.contains("none: no mTLS") && idle_row.contains("UNKNOWN"), "{idle_row}");
    let server_row = html.lines().find(|l| l.starts_with("<tr><td>shop/server</td><td>")).expect("server row");
    assert!(server_row.contains("explicit mode"), "readiness cannot be known in explicit mode: {server_row}");
    // Traffic: client → server in mTLS, every request counted (the denied ones too).
    let edge = format!(
        "<tr><td>{client}</td><td>shop/client</td><td>shop/server</td><td class=\"ok\">mTLS</td><td>5</td><td>0</td></tr>"
    );
    assert!(html.contains(&edge), "{edge}\n{html}");
    // Certificates: every SVID the control plane issued, with its expiry, and the root.
    let certificates = mesh.json("/api/v1/certificates");
    for issued in certificates["certificates"].as_array().expect("certificates") {
        let identity = issued["identity"].as_str().expect("identity");
        let serial = issued["serial"].as_str().expect("serial");
        let row = format!("<tr><td>{identity}</td><td><code>{serial}</code></td>");
        let line = html.lines().find(|l| l.starts_with(&row)).unwrap_or_else(|| panic!("{row}\n{html}"));
        assert!(line.contains("<td class=\"ok\">in "), "a fresh SVID is not flagged: {line}");
    }
    // ... and the certificate each proxy holds, as the control plane read it from the proxy.
    for name in ["server", "client"] {
        let row = format!("<tr><td>shop/{name}</td><td>spiffe://cluster.local/ns/shop/sa/{name}</td>");
        let line = html.lines().find(|l| l.starts_with(&row)).unwrap_or_else(|| panic!("{row}\n{html}"));
        assert!(line.contains("<td class=\"ok\">in "), "{line}");
    }
    let root = &certificates["trustBundle"][0];
    assert!(html.contains(&format!("<code>{}</code>", root["serial"].as_str().expect("root serial"))), "{html}");

    // /api/v1/mtls: every workload with its verdict; never SAFE without evidence.
    let mtls = mesh.json("/api/v1/mtls?window=30m");
    assert_eq!(mtls["windowSeconds"], 1800, "{mtls:#}");
    assert!(mtls["observedAt"].is_string(), "{mtls:#}");
    let workloads = mtls["workloads"].as_array().expect("workloads");
    let names: Vec<&str> = workloads.iter().filter_map(|w| w["workload"].as_str()).collect();
    assert_eq!(names, ["shop/client", "shop/idle", "shop/server"], "{mtls:#}");
    for w in workloads {
        assert_eq!(w["verdict"], "UNKNOWN", "{mtls:#}");
    }
    let by_name = |name: &str| workloads.iter().find(|w| w["workload"] == name).expect("listed");
    assert!(by_name("shop/idle")["reason"].as_str().is_some_and(|r| r.contains("no proxy")), "{mtls:#}");
    assert!(by_name("shop/idle")["scrapedAt"].is_null(), "a workload without a proxy is not dialled: {mtls:#}");
    assert!(by_name("shop/server")["scrapedAt"].is_string(), "{mtls:#}");
    assert!(by_name("shop/server")["reason"].as_str().is_some_and(|r| r.contains("explicit mode")), "{mtls:#}");

    let bad = mesh.get("/api/v1/mtls?window=soon");
    assert_eq!(bad.status, 400, "{bad:?}");
    assert!(bad.body.contains("`soon`"), "{bad:?}");
}
