//! `zmesh proxy-config`, `zmesh describe` and `zmesh tls-check` against a running mesh: a real
//! `zmesh control-plane`, an echo app and two `zmesh proxy` processes in explicit mode on
//! loopback addresses of their own. Each command's text and JSON are checked, and the JSON is
//! held against what the proxies do: the policy `proxy-config policies` and `describe` say
//! applies denies the request they say, the modes `listeners` reports are the server proxy's
//! own (`/config_dump`), and the certificate `secret` reports is the one the proxy holds.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use zmesh_testkit::TempDir;
use zmesh_testkit::envoy::{free_port, http_request};

fn zmesh_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_zmesh"))
}

fn zmesh(args: &[&str]) -> Output {
    zmesh_command().args(args).output().expect("the zmesh binary runs")
}

/// Processes of the mesh, stopped (each by its own handle) when the test ends, pass or fail.
struct Mesh {
    dir: TempDir,
    children: Vec<(String, Child)>,
    status_api: String,
    client_ip: IpAddr,
    server_ip: IpAddr,
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

    /// Run a command against this mesh's status API.
    fn run(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--control-plane", &self.status_api]);
        zmesh(&all)
    }

    /// Run a command with `-o json` and parse its output; it must exit with `code`.
    fn json(&self, args: &[&str], code: i32) -> Value {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-o", "json"]);
        let output = self.run(&all);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            output.status.code(),
            Some(code),
            "zmesh {all:?}\nstdout:\n{stdout}\nstderr:\n{}\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.logs()
        );
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("zmesh {all:?} is not JSON ({e}):\n{stdout}"))
    }

    fn text(&self, args: &[&str]) -> String {
        let output = self.run(args);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// A loopback /24 of this test process's own, so parallel test runs do not share addresses.
fn loopback_net() -> [u8; 3] {
    let pid = std::process::id();
    [127, 90 + (pid % 100) as u8, (pid / 100 % 250) as u8 + 1]
}

fn mesh_yaml(client: IpAddr, server: IpAddr, external: IpAddr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: shop}}
spec: {{address: {client}, serviceAccount: client, labels: {{app: client}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: server, namespace: shop}}
spec: {{address: {server}, serviceAccount: server, labels: {{app: server}}, ports: {{http-web: 8080, tcp-db: 5432, http-metrics: 9090}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: idle, namespace: shop}}
spec: {{address: {external}0, serviceAccount: idle, labels: {{app: idle}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: server-svc, namespace: shop}}
spec:
  selector: {{app: server}}
  ports: [{{name: http-web, port: 80, targetPort: 8080}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: external-api, namespace: shop}}
spec:
  hosts: [api.example.com]
  ports: [{{number: 443, name: tls, protocol: TLS}}]
  resolution: STATIC
  endpoints: [{{address: {external}}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: shop}}
spec: {{mtls: {{mode: PERMISSIVE}}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default-later, namespace: shop}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: server-strict, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: server}}}}
  mtls: {{mode: STRICT}}
  portLevelMtls: {{5432: {{mode: PERMISSIVE}}, 9090: {{mode: DISABLE}}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: client-strict-trial
  namespace: shop
  annotations: {{istio.io/dry-run: 'true'}}
spec:
  selector: {{matchLabels: {{app: client}}}}
  mtls: {{mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: root-selector, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{app: server}}}}
  mtls: {{mode: DISABLE}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: server-deny-admin, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: server}}}}
  action: DENY
  rules: [{{to: [{{operation: {{ports: ['8080'], paths: [/admin]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: orphan, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: sever}}}}
  action: DENY
  rules: [{{to: [{{operation: {{ports: ['8080'], paths: [/]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: client-only, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: client}}}}
  action: ALLOW
  rules: [{{}}]
"
    )
}

fn token(ca: &Path, identity: &str, dir: &Path, name: &str) -> PathBuf {
    let ca = ca.to_str().expect("utf-8 path");
    let output = zmesh(&["ca", "token", "--ca-dir", ca, "--identity", identity, "--ttl", "10m"]);
    assert!(output.status.success(), "zmesh ca token: {}", String::from_utf8_lossy(&output.stderr));
    let path = dir.join(name);
    std::fs::write(&path, &output.stdout).expect("token file");
    path
}

/// One HTTP request, or `None` while nothing answers.
fn try_get(addr: SocketAddr, path: &str) -> Option<zmesh_testkit::envoy::HttpResponse> {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    let path = path.to_owned();
    std::thread::spawn(move || http_request(addr, "GET", &path, &[])).join().ok()
}

fn start_mesh() -> Mesh {
    start_mesh_at(0)
}

/// A mesh on addresses `offset` above the first ones, so tests of one process run side by side
/// (the idle workload's address is the external one with a 0 appended: keep `offset` under 17).
fn start_mesh_at(offset: u8) -> Mesh {
    let [a, b, c] = loopback_net();
    let ip = |d: u8| IpAddr::from([a, b, c, d + offset]);
    let (client_ip, server_ip, external_ip) = (ip(2), ip(3), ip(9));
    let dir = TempDir::new("inspect");
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).expect("config dir");
    // The idle workload's address is the external one with a 0 appended (…9 → …90).
    std::fs::write(config.join("mesh.yaml"), mesh_yaml(client_ip, server_ip, external_ip)).expect("mesh.yaml");
    let ca = dir.path().join("ca");
    let init = zmesh(&["ca", "init", "--dir", ca.to_str().expect("utf-8")]);
    assert!(init.status.success(), "zmesh ca init: {}", String::from_utf8_lossy(&init.stderr));
    let (grpc, status) = (free_port(), free_port());
    let mut mesh =
        Mesh { status_api: format!("http://127.0.0.1:{status}"), dir, children: Vec::new(), client_ip, server_ip };
    let (grpc_addr, status_addr) = (format!("127.0.0.1:{grpc}"), format!("127.0.0.1:{status}"));
    mesh.spawn(
        "control-plane",
        &[
            "control-plane",
            "--config",
            config.to_str().expect("utf-8"),
            "--ca-dir",
            ca.to_str().expect("utf-8"),
            "--listen",
            &grpc_addr,
            "--admin",
            &status_addr,
            "--log-level",
            "warn",
        ],
    );
    let app = format!("{server_ip}:8080");
    mesh.spawn("echo", &["echo", "--listen", &app]);
    let roots = ca.join("root-cert.pem");
    let url = format!("https://{grpc_addr}");
    let outbound = format!("{client_ip}:9000={server_ip}:8080");
    for (name, extra) in [("server", None), ("client", Some(outbound.as_str()))] {
        let token =
            token(&ca, &format!("spiffe://cluster.local/ns/shop/sa/{name}"), mesh.dir.path(), &format!("{name}.token"));
        let workload = format!("shop/{name}");
        let mut args = vec![
            "proxy",
            "--control-plane",
            &url,
            "--roots",
            roots.to_str().expect("utf-8"),
            "--token-file",
            token.to_str().expect("utf-8"),
            "--workload",
            &workload,
            "--explicit",
            "--concurrency",
            "1",
            "--log-level",
            "warn",
        ];
        if let Some(outbound) = extra {
            args.extend(["--outbound", outbound]);
        }
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        mesh.spawn(&format!("proxy-{name}"), &args);
    }
    // Both proxies synced and the path through them answering, within a bounded wait.
    let deadline = Instant::now() + Duration::from_secs(20);
    let through = SocketAddr::new(client_ip, 9000);
    loop {
        let status = mesh.run(&["proxy-status", "-o", "json"]);
        let synced = serde_json::from_slice::<Value>(&status.stdout).ok().is_some_and(|doc| {
            let proxies = doc["proxies"].as_array().cloned().unwrap_or_default();
            proxies.len() == 2 && proxies.iter().all(|p| p["state"] == "SYNCED")
        });
        if synced && try_get(through, "/").is_some_and(|r| r.status == 200) {
            return mesh;
        }
        assert!(Instant::now() < deadline, "the mesh did not come up within 20 s\n{}", mesh.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn find<'a>(list: &'a Value, key: &str, value: &str) -> &'a Value {
    list.as_array()
        .into_iter()
        .flatten()
        .find(|item| item[key] == value)
        .unwrap_or_else(|| panic!("no item with {key} = {value} in {list:#}"))
}

#[test]
fn live_troubleshooting_commands_answer_with_what_the_running_proxies_enforce() {
    let mesh = start_mesh();
    let server_admin = format!("{}:15000", mesh.server_ip);
    let server_identity = "spiffe://cluster.local/ns/shop/sa/server";

    // secret: the control plane's record and the proxy's own certificate are the same one.
    let issued = mesh.json(&["proxy-config", "secret", "shop/server"], 0);
    let issued_cert = &issued["certificates"][0];
    assert_eq!(issued_cert["identity"], server_identity, "{issued:#}");
    assert!(issued_cert["secondsToExpiry"].as_i64().is_some_and(|s| s > 0), "{issued:#}");
    let held = mesh.json(&["proxy-config", "secret", "shop/server", "--admin", &server_admin], 0);
    assert_eq!(held["certificates"][0]["identity"], server_identity, "{held:#}");
    assert_eq!(held["certificates"][0]["serial"], issued_cert["serial"], "{held:#}\n{issued:#}");
    let text = mesh.text(&["proxy-config", "secret", "shop/server"]);
    let serial = issued_cert["serial"].as_str().expect("serial");
    assert!(text.contains(server_identity) && text.contains(serial) && text.contains("ROOT"), "{text}");

    // listeners: the modes are the ones the server proxy computes itself.
    let listeners = mesh.json(&["proxy-config", "listeners", "shop/server"], 0);
    let ports = &listeners["ports"];
    let port = |n: u64| {
        ports
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["port"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("{listeners:#}"))
    };
    assert_eq!(port(8080)["mtls"], "STRICT", "{listeners:#}");
    assert_eq!(port(8080)["mtlsPolicy"], "shop/server-strict");
    assert_eq!(port(8080)["protocol"], "HTTP");
    assert_eq!(port(5432)["mtls"], "PERMISSIVE");
    assert_eq!(port(5432)["portLevel"], true);
    assert_eq!(listeners["otherPorts"]["mtls"], "STRICT");
    assert_eq!(port(9090)["mtls"], "DISABLE");
    let dump = http_request(SocketAddr::new(mesh.server_ip, 15000), "GET", "/config_dump", &[]);
    let dump: Value = serde_json::from_str(&dump.body).expect("config_dump is JSON");
    for own in dump["ports"].as_array().expect("ports") {
        let reported = port(own["port"].as_u64().expect("port"));
        assert_eq!(reported["mtls"], own["mtls"], "listeners and the proxy disagree: {reported:#} vs {own:#}");
        assert_eq!(reported["mtlsPolicy"], own["mtlsPolicy"], "{reported:#} vs {own:#}");
    }
    assert_eq!(listeners["version"], dump["version"], "the answer is the version the proxy holds");
    assert!(listeners["proxyListeners"].as_array().is_some_and(|l| l.iter().any(|l| l["port"] == 15008)));
    let text = mesh.text(&["proxy-config", "listeners", "shop/server"]);
    assert!(text.contains("8080") && text.contains("STRICT") && text.contains("shop/server-strict"), "{text}");
    assert!(text.contains("portLevelMtls") && text.contains("15008"), "{text}");

    // clusters and endpoints: mesh peers with the identity the client verifies; the
    // ServiceEntry's endpoint outside the mesh with none.
    let clusters = mesh.json(&["proxy-config", "clusters", "shop/client"], 0);
    let server = find(&clusters["clusters"], "source", "shop/server");
    assert_eq!(server["expectedPeers"], serde_json::json!([server_identity]), "{clusters:#}");
    assert_eq!(server["transport"], "HBONE mTLS");
    let external = find(&clusters["clusters"], "name", "outbound|443||api.example.com");
    assert_eq!(external["expectedPeers"], serde_json::json!([]), "{external:#}");
    let passthrough = find(&clusters["clusters"], "name", "PassthroughCluster");
    assert_eq!(passthrough["source"], "ALLOW_ANY");
    let text = mesh.text(&["proxy-config", "clusters", "shop/client"]);
    assert!(text.contains("server.shop.svc.cluster.local") && text.contains(server_identity), "{text}");
    let endpoints = mesh.json(&["proxy-config", "endpoints", "shop/client"], 0);
    let to_server = find(&endpoints["endpoints"], "address", &format!("{}:8080", mesh.server_ip));
    assert_eq!(to_server["identity"], server_identity, "{endpoints:#}");
    let [a, b, c] = loopback_net();
    let to_external = find(&endpoints["endpoints"], "address", &format!("{a}.{b}.{c}.9:443"));
    assert!(to_external["identity"].is_null(), "{to_external:#}");
    let text = mesh.text(&["proxy-config", "endpoints", "shop/client"]);
    assert!(text.contains(&format!("{}:8080", mesh.server_ip)), "{text}");

    // policies: the DENY policy it lists is the one that denies /admin through the mesh.
    let policies = mesh.json(&["proxy-config", "policies", "shop/server"], 0);
    let deny = find(&policies["authorizationPolicies"], "policy", "shop/server-deny-admin");
    assert_eq!(deny["action"], "DENY", "{policies:#}");
    assert_eq!(deny["spec"]["rules"][0]["to"][0]["operation"]["paths"][0], "/admin");
    assert_eq!(policies["authorizationPolicies"].as_array().map(Vec::len), Some(1), "only it applies: {policies:#}");
    assert_eq!(policies["version"], dump["version"]);
    let through = SocketAddr::new(mesh.client_ip, 9000);
    let denied = http_request(through, "GET", "/admin", &[]);
    assert_eq!(denied.status, 403, "{denied:?}");
    assert_eq!(denied.header("x-zmesh-policy"), deny["policy"].as_str(), "{denied:?}");
    assert_eq!(http_request(through, "GET", "/hello", &[]).status, 200);
    let text = mesh.text(&["proxy-config", "policies", "shop/server"]);
    assert!(text.contains("DENY") && text.contains("shop/server-deny-admin"), "{text}");
    assert!(text.contains(dump["version"].as_str().expect("version")), "{text}");

    // describe: mode per port and its policy, what applies, what targets it and does not (why),
    // and its services.
    let described = mesh.json(&["describe", "shop/server"], 0);
    let described_port =
        |n: u64| described["ports"].as_array().into_iter().flatten().find(|p| p["port"] == n).cloned().expect("port");
    assert_eq!(described_port(8080)["mtls"], "STRICT", "{described:#}");
    assert_eq!(described_port(8080)["mtlsPolicy"], "shop/server-strict");
    let applies = &described["policies"];
    assert_eq!(find(applies, "policy", "shop/server-deny-admin")["kind"], "AuthorizationPolicy");
    assert_eq!(find(applies, "policy", "shop/server-strict")["level"], "workload (selector)");
    assert_eq!(find(applies, "policy", "shop/default")["level"], "namespace-wide");
    let ignored = &described["notApplying"];
    let orphan = find(ignored, "policy", "shop/orphan")["why"].as_str().expect("why").to_owned();
    assert!(orphan.contains("app=sever") && orphan.contains("selects no workload"), "{orphan}");
    let client_only = find(ignored, "policy", "shop/client-only")["why"].as_str().expect("why").to_owned();
    assert!(
        client_only.contains("the workload has app=server") && !client_only.contains("selects no workload"),
        "{client_only}"
    );
    let later = find(ignored, "policy", "shop/default-later")["why"].as_str().expect("why").to_owned();
    assert!(later.contains("shop/default at the same level is older"), "{later}");
    let root = find(ignored, "policy", "istio-system/root-selector")["why"].as_str().expect("why").to_owned();
    assert!(root.contains("root namespace is ignored"), "{root}");
    assert_eq!(find(&described["services"], "name", "shop/server-svc")["kind"], "Service", "{described:#}");
    assert!(described["syncNote"].is_null(), "its proxy is synced: {described:#}");
    let text = mesh.text(&["describe", "shop/server"]);
    for expected in ["STRICT", "shop/server-strict", "shop/orphan", "selects no workload", "Service shop/server-svc"] {
        assert!(text.contains(expected), "`{expected}` missing from:\n{text}");
    }
    let yaml = mesh.text(&["describe", "shop/server", "-o", "yaml"]);
    assert!(yaml.contains("workload: \"shop/server\"\n") && yaml.contains("\n    port: 8080\n"), "{yaml}");
    // A workload whose proxy is not running: the answer says so.
    let idle = mesh.run(&["describe", "shop/idle"]);
    assert!(
        String::from_utf8_lossy(&idle.stderr).contains("no proxy of shop/idle is connected"),
        "{}",
        String::from_utf8_lossy(&idle.stderr)
    );

    // A dry-run PeerAuthentication is reported as what it would do, not as what is enforced.
    let client = mesh.json(&["describe", "shop/client"], 0);
    let trial = find(&client["notApplying"], "policy", "shop/client-strict-trial");
    assert!(trial["why"].as_str().is_some_and(|w| w.contains("dry-run") && w.contains("STRICT")), "{client:#}");
    assert_eq!(client["otherPorts"]["mtls"], "PERMISSIVE", "{client:#}");
    assert_eq!(client["otherPorts"]["dryRun"]["mtls"], "STRICT", "{client:#}");
    assert_eq!(client["otherPorts"]["dryRun"]["wouldRefusePlaintext"], true, "{client:#}");

    // tls-check: a mesh client uses mTLS and every port accepts it; a client outside the mesh
    // sends plaintext, which the STRICT port refuses and the PERMISSIVE port accepts.
    let mesh_client = mesh.json(&["tls-check", "shop/client", "shop/server"], 0);
    assert_eq!(mesh_client["client"]["mtls"], true, "{mesh_client:#}");
    assert!(mesh_client["ports"].as_array().expect("ports").iter().all(|p| p["accepted"] == true), "{mesh_client:#}");
    let disable = find(&mesh_client["ports"], "server", "DISABLE");
    assert!(disable["reason"].as_str().is_some_and(|r| r.contains("accepts every HBONE tunnel")), "{disable:#}");
    let outsider = format!("{a}.{b}.{c}.50");
    let plain = mesh.json(&["tls-check", &outsider, "shop/server"], 1);
    assert_eq!(plain["client"]["mtls"], false, "{plain:#}");
    let strict = find(&plain["ports"], "server", "STRICT");
    assert_eq!(strict["accepted"], false, "{plain:#}");
    assert!(strict["reason"].as_str().is_some_and(|r| r.contains("refuses plaintext")), "{strict:#}");
    let permissive = find(&plain["ports"], "server", "PERMISSIVE");
    assert_eq!(permissive["port"], 5432);
    assert_eq!(permissive["accepted"], true);
    let text = mesh.text(&["tls-check", &outsider, "shop/server"]);
    assert!(text.contains("CONFLICT") && text.contains("not a mesh workload"), "{text}");
    // To a workload whose proxy is not running, the mesh client's connection fails: it is
    // never sent in plaintext instead.
    let to_idle = mesh.json(&["tls-check", "shop/client", "shop/idle"], 1);
    let any_port = &to_idle["ports"][0];
    assert!(any_port["port"].is_null() && any_port["accepted"] == false, "{to_idle:#}");
    assert!(any_port["reason"].as_str().is_some_and(|r| r.contains("never falls back to plaintext")), "{to_idle:#}");
}

/// The same commands held against transparent capture, where plaintext reaches the proxy: a
/// pod outside the mesh and a mesh pod call each port of the server, and what `describe` and
/// `tls-check` said of each port is what happened. Runs in its own user, network and mount
/// namespaces (`unshare`), like the other end-to-end scripts.
#[test]
fn the_ports_describe_and_tls_check_call_strict_refuse_plaintext_and_the_others_accept_it() {
    let dir = TempDir::new("inspect-capture");
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).expect("config dir");
    let ip = |d: u8| IpAddr::from([10, 81, 0, d]);
    std::fs::write(config.join("mesh.yaml"), mesh_yaml(ip(2), ip(3), ip(9))).expect("mesh.yaml");
    let output = zmesh_testkit::e2e::unshare_bash(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/inspect.sh"),
        [std::ffi::OsStr::new(env!("CARGO_BIN_EXE_zmesh")), dir.path().as_os_str()],
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut logs = String::new();
    for name in ["control-plane", "proxy-server", "proxy-client"] {
        let body = std::fs::read_to_string(dir.path().join(format!("{name}.log"))).unwrap_or_default();
        logs.push_str(&format!("--- {name}\n{body}\n"));
    }
    let context = format!("stdout:\n{stdout}\nstderr:\n{}\n{logs}", String::from_utf8_lossy(&output.stderr));
    let results = zmesh_testkit::e2e::results(&stdout);
    assert_eq!(
        results.get("done").map(String::as_str),
        Some("yes"),
        "the script stopped early (it needs unshare with user namespaces, iproute2, iptables and curl)\n{context}"
    );
    let saved = |name: &str| -> Value {
        let text = std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON ({e}):\n{text}\n{context}"))
    };
    let code = |name: &str| results.get(name).cloned().unwrap_or_default();

    // describe: each port's mode, held against a plaintext call from outside the mesh.
    let described = saved("describe.json");
    let ports = described["ports"].as_array().cloned().unwrap_or_default();
    assert_eq!(ports.len(), 3, "{described:#}");
    for port in &ports {
        let number = port["port"].as_u64().expect("port");
        let plain = code(&format!("plain_{number}"));
        let accepts = port["accepts"]["plaintext"] == true;
        assert_eq!(
            plain == "200",
            accepts,
            "describe says port {number} is {} (plaintext accepted: {accepts}); a plaintext call got {plain}\n{context}",
            port["mtls"]
        );
    }
    assert_eq!(code("plain_8080"), "000", "STRICT refused the plaintext call\n{context}");

    // tls-check: every verdict is what happened, for a client outside the mesh and a mesh one.
    for (file, prefix) in [("tls-plain.json", "plain"), ("tls-mesh.json", "mesh")] {
        let checked = saved(file);
        for port in checked["ports"].as_array().into_iter().flatten().filter(|p| !p["port"].is_null()) {
            let number = port["port"].as_u64().expect("port");
            let got = code(&format!("{prefix}_{number}"));
            assert_eq!(
                got == "200",
                port["accepted"] == true,
                "tls-check ({file}) says port {number}: {port:#}; the call got {got}\n{context}"
            );
        }
    }

    // policies and describe: the DENY policy they list for /admin is the one that denied it.
    let policies = saved("policies.json");
    let deny = find(&policies["authorizationPolicies"], "policy", "shop/server-deny-admin");
    assert_eq!(deny["spec"]["rules"][0]["to"][0]["operation"]["paths"][0], "/admin");
    assert_eq!(find(&described["policies"], "policy", "shop/server-deny-admin")["action"], "DENY");
    assert_eq!(code("mesh_admin"), "403", "{context}");
    assert_eq!(code("mesh_admin_policy"), "shop/server-deny-admin", "{context}");
    assert_eq!(code("mesh_8080"), "200", "{context}");
    // listeners: the STRICT port is the one describe names.
    let listeners = saved("listeners.json");
    assert_eq!(listeners["ports"], described["ports"], "listeners and describe agree on every port");
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// `body` without what names the source that answered (`configSource`, and the sync note only
/// the control plane can give), for comparing answers from two sources.
fn answer(mut body: Value) -> Value {
    if let Some(object) = body.as_object_mut() {
        object.remove("configSource");
        object.remove("syncNote");
    }
    body
}

#[test]
fn a_proxys_admin_port_answers_as_the_control_plane_does_and_still_answers_once_the_control_plane_is_killed() {
    let mut mesh = start_mesh_at(10);
    let admin = format!("{}:15000", mesh.server_ip);
    let policies = ["proxy-config", "policies", "shop/server"];
    let with_admin = |args: &[&str]| -> Vec<String> {
        args.iter().map(|a| (*a).to_owned()).chain(["--admin".to_owned(), admin.clone()]).collect()
    };
    let admin_policies = with_admin(&policies);
    let from_control_plane = mesh.json(&policies, 0);
    let from_proxy = mesh.json(&strs(&admin_policies), 0);
    assert_eq!(from_control_plane["configSource"]["kind"], "control-plane", "{from_control_plane:#}");
    assert_eq!(from_proxy["configSource"]["kind"], "admin", "{from_proxy:#}");
    assert_eq!(from_proxy["configSource"]["enforced"], true, "{from_proxy:#}");
    assert!(from_proxy["syncNote"].is_null(), "the proxy's own answer needs no sync note: {from_proxy:#}");
    assert!(
        from_proxy["authorizationPolicies"].as_array().is_some_and(|p| !p.is_empty()),
        "the server proxy holds its DENY policy: {from_proxy:#}"
    );
    assert_eq!(answer(from_proxy.clone()), answer(from_control_plane.clone()), "policies: the same answer from both");
    let text = mesh.text(&strs(&admin_policies));
    assert!(text.contains(&format!("Source: the proxy at {admin}")) && text.contains("exactly"), "{text}");

    // authz check: the same decisions, read from the proxy or from the control plane.
    let principal = "cluster.local/ns/shop/sa/client";
    let requests: [&[&str]; 4] = [
        &["--principal", principal, "--port", "8080", "--path", "/admin"],
        &["--principal", principal, "--port", "8080", "--path", "/"],
        &["--plaintext", "--port", "8080", "--path", "/"],
        &["--plaintext", "--port", "5432"],
    ];
    let check = |request: &[&str]| -> Vec<String> {
        ["authz", "check", "shop/server"].iter().chain(request).map(|a| (*a).to_owned()).collect()
    };
    let mut decisions = Vec::new();
    for request in requests {
        let through_control_plane = mesh.json(&strs(&check(request)), 0);
        let through_proxy = mesh.json(&strs(&with_admin(&strs(&check(request)))), 0);
        assert_eq!(through_proxy["configSource"]["kind"], "admin", "{through_proxy:#}");
        assert_eq!(
            answer(through_proxy.clone()),
            answer(through_control_plane),
            "authz check {request:?}: the same decision from both"
        );
        decisions.push(through_proxy);
    }
    assert_eq!(decisions[0]["decision"], "deny", "{:#}", decisions[0]);
    assert_eq!(decisions[0]["policy"], "shop/server-deny-admin", "{:#}", decisions[0]);
    assert_eq!(decisions[1]["decision"], "allow", "{:#}", decisions[1]);
    assert_ne!(decisions[2]["decision"], "allow", "STRICT on 8080 refuses plaintext: {:#}", decisions[2]);

    // describe: the policies that apply are the same; those that do not are the control
    // plane's to tell, and the proxy's answer says so.
    let described = mesh.json(&["describe", "shop/server"], 0);
    let described_by_proxy = mesh.json(&strs(&with_admin(&["describe", "shop/server"])), 0);
    assert_eq!(described_by_proxy["policies"], described["policies"]);
    assert_eq!(described_by_proxy["ports"], described["ports"]);
    assert!(
        described_by_proxy["notApplyingNote"].as_str().is_some_and(|n| n.contains("known only to the control plane")),
        "{described_by_proxy:#}"
    );
    assert!(described["notApplyingNote"].is_null(), "{described:#}");

    // An admin port serves one workload: asking it about another is refused, not answered.
    let other = mesh.run(&strs(&with_admin(&["proxy-config", "policies", "shop/client"])));
    assert!(!other.status.success(), "{}", String::from_utf8_lossy(&other.stdout));
    assert!(String::from_utf8_lossy(&other.stderr).contains("serves shop/server, not shop/client"));

    // The control plane goes away; the proxy keeps enforcing its version and says which.
    let (_, control_plane) =
        mesh.children.iter_mut().find(|(name, _)| name == "control-plane").expect("the control plane was started");
    control_plane.kill().expect("kill the control plane");
    control_plane.wait().expect("the control plane exits");
    let gone = mesh.run(&["proxy-config", "policies", "shop/server", "-o", "json"]);
    assert!(!gone.status.success(), "the control plane no longer answers: {}", String::from_utf8_lossy(&gone.stdout));
    let after = mesh.json(&strs(&admin_policies), 0);
    assert_eq!(after, from_proxy, "the proxy answers with the version it enforces, the control plane gone");
    assert_eq!(after["version"], from_control_plane["version"]);
    let denied = mesh.json(&strs(&with_admin(&strs(&check(requests[0])))), 0);
    assert_eq!(denied, decisions[0], "authz check --admin decides as before, the control plane gone");
}

/// A proxy run from local files keeps only their compiled form: asked for its documents, it
/// refuses and says where they are, and `--admin` passes that on instead of answering.
#[test]
fn a_proxy_run_from_local_files_says_it_keeps_no_documents_and_admin_commands_pass_that_on() {
    let [a, b, c] = loopback_net();
    let ip = |d: u8| IpAddr::from([a, b, c, d]);
    // Addresses of this test's own within the process's /24 (the idle workload's is …240).
    let (client_ip, server_ip, external_ip) = (ip(32), ip(33), ip(24));
    let dir = TempDir::new("inspect-local");
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).expect("config dir");
    std::fs::write(config.join("mesh.yaml"), mesh_yaml(client_ip, server_ip, external_ip)).expect("mesh.yaml");
    let ca = dir.path().join("ca");
    let init = zmesh(&["ca", "init", "--dir", ca.to_str().expect("utf-8")]);
    assert!(init.status.success(), "zmesh ca init: {}", String::from_utf8_lossy(&init.stderr));
    let mut mesh =
        Mesh { status_api: "http://127.0.0.1:1".to_owned(), dir, children: Vec::new(), client_ip, server_ip };
    mesh.spawn(
        "proxy-server",
        &[
            "proxy",
            "--config",
            config.to_str().expect("utf-8"),
            "--ca-dir",
            ca.to_str().expect("utf-8"),
            "--workload",
            "shop/server",
            "--explicit",
            "--concurrency",
            "1",
            "--log-level",
            "warn",
        ],
    );
    let admin = SocketAddr::new(server_ip, 15000);
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused = loop {
        if let Some(response) = try_get(admin, "/config_documents") {
            break response;
        }
        assert!(Instant::now() < deadline, "the proxy's admin port did not answer within 20 s\n{}", mesh.logs());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(refused.status, 404, "{}", refused.body);
    let error: Value = serde_json::from_str(&refused.body).expect("a JSON error");
    assert!(error["error"].as_str().is_some_and(|e| e.contains("local files")), "{error:#}");
    let admin = admin.to_string();
    let output = zmesh(&["proxy-config", "policies", "shop/server", "--admin", &admin]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
    assert!(stderr.contains("404") && stderr.contains("runs from local files"), "{stderr}");
}
