//! The explicit HTTP proxy port end to end, in-process on loopback: a client workload's proxy
//! with the HTTP proxy port, a server workload's proxy in front of a small HTTP app, HBONE and
//! mTLS between them, and an AuthorizationPolicy on the server that allows only `/allowed*`.
//! Clients are raw TCP (so every byte on the wire is the test's) and, once, curl.
//!
//! ServiceEntries under REGISTRY_ONLY: plain HTTP servers on loopback addresses of their own
//! stand in for services outside the mesh, reached through the HTTP proxy port by host name and
//! through explicit outbound ports, which take the path captured connections take by their
//! original destination.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use ring::rand::SystemRandom;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use zmesh_ca::{CaConfig, CertificateAuthority};
use zmesh_config::mesh::OutboundTrafficPolicy;
use zmesh_proxy::config::ProxyConfig;
use zmesh_proxy::hbone::ClientOptions;
use zmesh_proxy::run::{Listeners, Proxy, ProxyOptions};
use zmesh_testkit::TempDir;
use zmesh_tls::{CertStore, Identity, TrustBundle, TrustDomains};

/// Long enough for anything on loopback; a test that hits it has hung.
const PATIENCE: Duration = Duration::from_secs(20);

/// A TCP (not HTTP) port of the echo workload, which the policy's path rule can never allow.
const TCP_PORT: u16 = 5432;

const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/client";
const ECHO_ID: &str = "spiffe://cluster.local/ns/shop/sa/echo";

/// What the app received.
#[derive(Debug, Clone)]
struct Seen {
    target: String,
    host: Option<String>,
    xfcc: Option<String>,
    header_names: Vec<String>,
}

/// Two workloads (`shop/client`, `shop/echo`) with their proxies, and the app behind `echo`.
struct Mesh {
    /// The client proxy's HTTP proxy port.
    http_proxy: SocketAddr,
    /// The app's port on the echo workload.
    app_port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Connections the app accepted: the server proxy opens one per tunnel.
    app_connections: Arc<AtomicUsize>,
    shutdown: CancellationToken,
    _dir: TempDir,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Mesh {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("no app task panicked holding the lock").clone()
    }
}

/// A loopback /24 of its own for each test, so tests running at once (and the ports picked for
/// them) never collide: the client workload at `.2`, the echo workload at `.3`, and servers
/// outside the mesh at any other host number.
struct Net {
    run: u8,
    test: u8,
}

impl Net {
    fn new() -> Net {
        static NEXT: AtomicU8 = AtomicU8::new(1);
        let test = NEXT.fetch_add(1, Ordering::Relaxed);
        let run = u8::try_from(std::process::id() % 200).expect("below 200") + 20;
        Net { run, test }
    }

    fn ip(&self, host: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, self.run, self.test, host))
    }
}

/// A port free on every one of `ips` at once (HBONE uses one port number across the mesh).
async fn free_port(ips: &[IpAddr]) -> u16 {
    'search: loop {
        let first = TcpListener::bind(SocketAddr::new(ips[0], 0)).await.expect("a loopback port");
        let port = first.local_addr().expect("bound").port();
        for ip in &ips[1..] {
            if TcpListener::bind(SocketAddr::new(*ip, port)).await.is_err() {
                continue 'search;
            }
        }
        return port;
    }
}

/// The app: answers `200` with the request-target as the body and records what it saw.
async fn echo_app(ip: IpAddr) -> (u16, Arc<Mutex<Vec<Seen>>>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await.expect("a port for the app");
    let port = listener.local_addr().expect("bound").port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(AtomicUsize::new(0));
    let (recorder, accepted) = (seen.clone(), connections.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            let recorder = recorder.clone();
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let header = |name: &str| {
                    request.headers().get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                };
                let target = request.uri().to_string();
                recorder.lock().expect("recorder").push(Seen {
                    target: target.clone(),
                    host: header("host"),
                    xfcc: header("x-forwarded-client-cert"),
                    header_names: request.headers().keys().map(|name| name.as_str().to_owned()).collect(),
                });
                async move {
                    // A POST gets its body back (so bodies are seen to stream both ways), others the target.
                    let body = if request.method() == hyper::Method::POST {
                        request.into_body().collect().await.map(|body| body.to_bytes()).unwrap_or_default()
                    } else {
                        Bytes::from(target)
                    };
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(body)))
                }
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    (port, seen, connections)
}

/// A server outside the mesh at `ip` on a port of its own: answers every request `200` with
/// `{name} {method} {target}`; counts the connections it accepts.
async fn outside(ip: IpAddr, name: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await.expect("a port for a server outside the mesh");
    let addr = listener.local_addr().expect("bound");
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| async move {
                let body = format!("{name} {} {}", request.method(), request.uri());
                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    (addr, connections)
}

/// An explicit outbound port of the client proxy toward `target`.
async fn explicit_port(net: &Net, target: SocketAddr) -> (SocketAddr, SocketAddr) {
    (SocketAddr::new(net.ip(2), free_port(&[net.ip(2)]).await), target)
}

fn mesh_yaml(client: IpAddr, echo: IpAddr, app_port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: shop}}
spec: {{address: {client}, serviceAccount: client, labels: {{app: client}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: echo, namespace: shop}}
spec:
  address: {echo}
  serviceAccount: echo
  labels: {{app: echo}}
  ports: {{http-web: {app_port}, tcp-db: {TCP_PORT}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: echo-allowed-only, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/shop/sa/client]}}}}]
    to: [{{operation: {{paths: [\"/allowed*\"]}}}}]
"
    )
}

/// An SVID for `workload` from `ca`, with the CA's bundle.
fn store(ca: &CertificateAuthority, config: &ProxyConfig) -> Arc<CertStore> {
    let rng = SystemRandom::new();
    let (svid, key) =
        ca.issue_with_new_key(&config.workload.identity, None, SystemTime::now(), &rng).expect("the CA issues");
    let identity = Identity::from_pem(&svid.chain_pem, key.expose()).expect("an issued SVID loads");
    let domains = TrustDomains::new("cluster.local".parse().expect("trust domain"));
    let bundle = TrustBundle::from_pem(ca.trust_bundle_pem(), domains).expect("the CA's bundle loads");
    Arc::new(CertStore::new(identity, bundle))
}

/// Start both proxies and the app; the mesh's outboundTrafficPolicy is `policy`.
async fn mesh(policy: OutboundTrafficPolicy) -> Mesh {
    mesh_in(&Net::new(), policy, |_, _| String::new(), Vec::new()).await
}

/// [`mesh`] on `net`, with the documents `extra` makes (given the echo workload's address and
/// app port) added to the configuration, and the client proxy's explicit outbound ports
/// `explicit` (listen → target), which take the path captured connections take by original
/// destination.
async fn mesh_in(
    net: &Net,
    policy: OutboundTrafficPolicy,
    extra: impl FnOnce(IpAddr, u16) -> String,
    explicit: Vec<(SocketAddr, SocketAddr)>,
) -> Mesh {
    let (client_ip, echo_ip) = (net.ip(2), net.ip(3));
    let (app_port, seen, app_connections) = echo_app(echo_ip).await;
    let yaml = mesh_yaml(client_ip, echo_ip, app_port);
    let added = extra(echo_ip, app_port);
    let yaml = if added.is_empty() { yaml } else { format!("{yaml}---\n{added}") };
    let loaded = zmesh_config::load_str(&yaml);
    assert!(!loaded.has_errors(), "the mesh does not load: {:?}", loaded.errors().next());
    let dir = TempDir::new("forward-proxy");
    let (ca, _) = CertificateAuthority::open_or_create(
        &dir.path().join("ca"),
        CaConfig::new("cluster.local".parse().expect("trust domain")),
        SystemTime::now(),
        &SystemRandom::new(),
    )
    .expect("a CA in a fresh directory");
    let hbone_port = free_port(&[client_ip, echo_ip]).await;
    let http_proxy = SocketAddr::new(client_ip, free_port(&[client_ip]).await);
    let shutdown = CancellationToken::new();
    for (name, ip) in [("client", client_ip), ("echo", echo_ip)] {
        let mut config = ProxyConfig::build("test".to_owned(), &loaded.config, "shop", name).expect("workload");
        config.mesh.outbound_traffic_policy = policy;
        let store = store(&ca, &config);
        let options = ProxyOptions { marked: false, hbone_port, hbone: ClientOptions::default() };
        let proxy = Proxy::new(config, store, options, shutdown.clone());
        let any_port = SocketAddr::new(ip, 0);
        let listeners = Listeners {
            hbone: SocketAddr::new(ip, hbone_port),
            health: any_port,
            metrics: any_port,
            admin: any_port,
            capture: None,
            explicit: if name == "client" { explicit.clone() } else { Vec::new() },
            http_proxy: (name == "client").then_some(http_proxy),
        };
        tokio::spawn(async move {
            if let Err(error) = zmesh_proxy::run::run(proxy, listeners).await {
                panic!("the {name} proxy stopped: {error}");
            }
        });
    }
    for ready in [http_proxy, SocketAddr::new(echo_ip, hbone_port)] {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while TcpStream::connect(ready).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "{ready} never listened");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Mesh { http_proxy, app_port, seen, app_connections, shutdown, _dir: dir }
}

/// A client connection, read as bytes.
struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    async fn to(addr: SocketAddr) -> Wire {
        Wire { stream: TcpStream::connect(addr).await.expect("connect to the HTTP proxy port"), buf: Vec::new() }
    }

    async fn send(&mut self, bytes: &str) {
        self.stream.write_all(bytes.as_bytes()).await.expect("write");
    }

    async fn fill(&mut self) -> usize {
        let mut chunk = [0; 8192];
        let read =
            tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk)).await.expect("an answer in time").unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..read]);
        read
    }

    /// One response: its head and its Content-Length body.
    async fn response(&mut self) -> (String, String) {
        let end = loop {
            if let Some(at) = self.buf.windows(4).position(|window| window == b"\r\n\r\n") {
                break at + 4;
            }
            assert!(
                self.fill().await > 0,
                "closed before a response head; got {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end);
        let length = header(&head, "content-length").map_or(0, |length| length.parse().expect("content-length"));
        while self.buf.len() < length {
            assert!(self.fill().await > 0, "closed inside a body");
        }
        let body = String::from_utf8_lossy(&self.buf[..length]).into_owned();
        self.buf.drain(..length);
        (head, body)
    }

    async fn exchange(&mut self, request: &str) -> (String, String) {
        self.send(request).await;
        self.response().await
    }
}

fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (field, value) = line.split_once(':')?;
        field.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

fn status(head: &str) -> &str {
    head.split(' ').nth(1).unwrap_or_default()
}

#[tokio::test]
async fn an_absolute_form_get_by_name_reaches_the_app_in_origin_form_with_the_caller_s_identity() {
    let mesh = mesh(OutboundTrafficPolicy::RegistryOnly).await;
    let port = mesh.app_port;
    let mut client = Wire::to(mesh.http_proxy).await;
    let (head, body) = client
        .exchange(&format!(
            "GET http://echo.shop:{port}/allowed/hello?x=1 HTTP/1.1\r\nHost: echo.shop:{port}\r\n\
             Proxy-Authorization: Basic dXNlcjpwYXNz\r\nProxy-Connection: keep-alive\r\n\
             X-Forwarded-Client-Cert: URI=spiffe://cluster.local/ns/shop/sa/admin\r\n\r\n"
        ))
        .await;
    assert_eq!((status(&head), body.as_str()), ("200", "/allowed/hello?x=1"), "{head}");
    let seen = &mesh.seen()[0];
    assert_eq!(seen.target, "/allowed/hello?x=1", "the app gets origin-form");
    assert_eq!(seen.host.as_deref(), Some(format!("echo.shop:{port}").as_str()));
    assert_eq!(seen.xfcc.as_deref(), Some(format!("By={ECHO_ID};URI={CLIENT_ID}").as_str()), "the verified peer");
    assert!(
        !seen.header_names.iter().any(|name| name.starts_with("proxy-")),
        "proxy headers are for this hop only: {:?}",
        seen.header_names
    );

    // The same host again: the same tunnel.
    let (head, _) = client
        .exchange(&format!("GET http://echo.shop:{port}/allowed/again HTTP/1.1\r\nHost: echo.shop:{port}\r\n\r\n"))
        .await;
    assert_eq!(status(&head), "200", "{head}");
    assert_eq!(mesh.app_connections.load(Ordering::SeqCst), 1, "one tunnel carried both requests");

    // The same connection, other spellings of the same workload's name (a tunnel each).
    for host in [format!("ECHO.shop.svc.cluster.local:{port}"), format!("echo.shop.svc:{port}"), format!("echo:{port}")]
    {
        let (head, body) =
            client.exchange(&format!("GET http://{host}/allowed/again HTTP/1.1\r\nHost: {host}\r\n\r\n")).await;
        assert_eq!((status(&head), body.as_str()), ("200", "/allowed/again"), "{host}: {head}");
    }
    assert_eq!(mesh.seen().len(), 5);
    assert_eq!(mesh.app_connections.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn request_bodies_in_either_framing_reach_the_app_and_the_response_comes_back() {
    let mesh = mesh(OutboundTrafficPolicy::RegistryOnly).await;
    let port = mesh.app_port;
    let mut client = Wire::to(mesh.http_proxy).await;
    let (head, body) = client
        .exchange(&format!(
            "POST http://echo.shop:{port}/allowed/upload HTTP/1.1\r\nHost: echo.shop:{port}\r\n\
             Content-Length: 11\r\n\r\nhello world"
        ))
        .await;
    assert_eq!((status(&head), body.as_str()), ("200", "hello world"), "{head}");
    let (head, body) = client
        .exchange(&format!(
            "POST http://echo.shop:{port}/allowed/upload HTTP/1.1\r\nHost: echo.shop:{port}\r\n\
             Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        ))
        .await;
    assert_eq!((status(&head), body.as_str()), ("200", "hello world"), "{head}");
    assert_eq!(mesh.app_connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_path_the_destination_s_policy_denies_gets_the_destination_s_403() {
    let mesh = mesh(OutboundTrafficPolicy::RegistryOnly).await;
    let port = mesh.app_port;
    let mut client = Wire::to(mesh.http_proxy).await;
    let (head, body) =
        client.exchange(&format!("GET http://echo.shop:{port}/admin HTTP/1.1\r\nHost: echo.shop:{port}\r\n\r\n")).await;
    assert_eq!((status(&head), body.as_str()), ("403", "RBAC: access denied"), "{head}");
    assert!(header(&head, "x-zmesh-policy").is_some(), "the inbound proxy's decision headers pass through: {head}");
    assert!(mesh.seen().is_empty(), "the app never saw the denied request");

    // The connection stays usable for an allowed request after the denial.
    let (head, _) = client
        .exchange(&format!("GET http://echo.shop:{port}/allowed HTTP/1.1\r\nHost: echo.shop:{port}\r\n\r\n"))
        .await;
    assert_eq!(status(&head), "200", "{head}");
}

#[tokio::test]
async fn connect_to_a_mesh_workload_tunnels_through_the_mesh() {
    let mesh = mesh(OutboundTrafficPolicy::RegistryOnly).await;
    let port = mesh.app_port;
    let mut client = Wire::to(mesh.http_proxy).await;
    let (head, body) =
        client.exchange(&format!("CONNECT echo.shop:{port} HTTP/1.1\r\nHost: echo.shop:{port}\r\n\r\n")).await;
    assert_eq!((status(&head), body.as_str()), ("200", ""), "{head}");

    // Raw HTTP inside the tunnel: the destination's proxy authorizes each request at L7.
    let (head, body) = client.exchange("GET /allowed/tunnel HTTP/1.1\r\nHost: echo\r\n\r\n").await;
    assert_eq!((status(&head), body.as_str()), ("200", "/allowed/tunnel"), "{head}");
    let (head, body) = client.exchange("GET /secret HTTP/1.1\r\nHost: echo\r\n\r\n").await;
    assert_eq!((status(&head), body.as_str()), ("403", "RBAC: access denied"), "{head}");
    let seen = mesh.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].xfcc.as_deref(), Some(format!("By={ECHO_ID};URI={CLIENT_ID}").as_str()));
}

#[tokio::test]
async fn connect_to_a_tcp_port_the_destination_refuses_gets_its_403_and_reason() {
    let mesh = mesh(OutboundTrafficPolicy::RegistryOnly).await;
    let mut client = Wire::to(mesh.http_proxy).await;
    let (head, body) =
        client.exchange(&format!("CONNECT echo.shop:{TCP_PORT} HTTP/1.1\r\nHost: echo.shop:{TCP_PORT}\r\n\r\n")).await;
    assert_eq!(status(&head), "403", "{head}");
    assert!(body.starts_with("RBAC: access denied"), "the destination proxy's reason: {body}");
}

#[tokio::test]
async fn an_unknown_host_under_registry_only_is_502_naming_the_host() {
    let mesh = mesh(OutboundTrafficPolicy::RegistryOnly).await;
    let mut client = Wire::to(mesh.http_proxy).await;
    let (head, body) = client.exchange("GET http://nowhere.example/x HTTP/1.1\r\nHost: nowhere.example\r\n\r\n").await;
    assert_eq!(status(&head), "502", "{head}");
    assert!(body.contains("nowhere.example") && body.contains("not in the mesh registry"), "{body}");

    let (head, body) =
        client.exchange("CONNECT nowhere.example:443 HTTP/1.1\r\nHost: nowhere.example:443\r\n\r\n").await;
    assert_eq!(status(&head), "502", "{head}");
    assert!(body.contains("nowhere.example") && body.contains("not in the mesh registry"), "{body}");

    // An address outside the mesh is refused as well, by the same outbound path.
    let (head, body) = client.exchange("GET http://192.0.2.1:8080/ HTTP/1.1\r\nHost: 192.0.2.1:8080\r\n\r\n").await;
    assert_eq!(status(&head), "502", "{head}");
    assert!(body.contains("192.0.2.1:8080") && body.contains("REGISTRY_ONLY"), "{body}");
    assert!(mesh.seen().is_empty());
}

#[tokio::test]
async fn under_allow_any_a_host_outside_the_mesh_is_reached_directly() {
    let mesh = mesh(OutboundTrafficPolicy::AllowAny).await;
    // A plain server outside the mesh, by an address the registry does not know.
    let outside = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let outside_addr = outside.local_addr().expect("bound");
    tokio::spawn(async move {
        if let Ok((mut stream, _)) = outside.accept().await {
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0];
                if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                    return;
                }
                head.push(byte[0]);
            }
            let first_line = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_owned();
            let reply = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{first_line}", first_line.len());
            let _ = stream.write_all(reply.as_bytes()).await;
        }
    });
    let mut client = Wire::to(mesh.http_proxy).await;
    let (head, body) =
        client.exchange(&format!("GET http://localhost:{}/out HTTP/1.1\r\nHost: x\r\n\r\n", outside_addr.port())).await;
    assert_eq!((status(&head), body.as_str()), ("200", "GET /out HTTP/1.1"), "{head}");

    let (head, body) = client.exchange("GET http://no-such-host.invalid/ HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status(&head), "502", "{head}");
    assert!(body.contains("no-such-host.invalid") && body.contains("does not resolve"), "{body}");
}

#[tokio::test]
async fn an_origin_form_request_is_400_saying_this_is_a_proxy() {
    let mesh = mesh(OutboundTrafficPolicy::RegistryOnly).await;
    let mut client = Wire::to(mesh.http_proxy).await;
    let (head, body) = client.exchange(&format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", mesh.http_proxy)).await;
    assert_eq!(status(&head), "400", "{head}");
    assert!(body.contains("HTTP proxy") && body.contains(&format!("http_proxy=http://{}", mesh.http_proxy)), "{body}");
    assert!(mesh.seen().is_empty());
}

#[tokio::test]
async fn curl_reaches_a_mesh_workload_by_name_through_the_proxy() {
    if std::process::Command::new("curl").arg("--version").output().is_err() {
        eprintln!(
            "NOTE: curl is not installed; skipping the curl client test (the raw-TCP tests cover the same paths)"
        );
        return;
    }
    let mesh = mesh(OutboundTrafficPolicy::RegistryOnly).await;
    let proxy = format!("http://{}", mesh.http_proxy);
    let url = format!("http://echo.shop:{}/allowed/curl", mesh.app_port);
    let curl = |extra: &'static [&'static str], url: String| {
        let proxy = proxy.clone();
        tokio::task::spawn_blocking(move || {
            let output = std::process::Command::new("curl")
                .args(["-sS", "-m", "10", "--noproxy", "", "--proxy", &proxy, "-w", "\n%{http_code}"])
                .args(extra)
                .arg(&url)
                .env_remove("NO_PROXY")
                .env_remove("no_proxy")
                .output()
                .expect("curl runs");
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            let (body, code) = stdout.rsplit_once('\n').unwrap_or((&stdout, ""));
            (code.to_owned(), body.to_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
        })
    };
    let (code, body, stderr) = curl(&[], url.clone()).await.expect("curl task");
    assert_eq!((code.as_str(), body.as_str()), ("200", "/allowed/curl"), "{stderr}");
    // `--proxytunnel`: curl sends CONNECT and speaks HTTP inside the tunnel.
    let (code, body, stderr) = curl(&["--proxytunnel"], url).await.expect("curl task");
    assert_eq!((code.as_str(), body.as_str()), ("200", "/allowed/curl"), "{stderr}");
    let denied = format!("http://echo.shop:{}/admin", mesh.app_port);
    let (code, body, stderr) = curl(&[], denied).await.expect("curl task");
    assert_eq!((code.as_str(), body.as_str()), ("403", "RBAC: access denied"), "{stderr}");
    let peer = format!("By={ECHO_ID};URI={CLIENT_ID}");
    assert!(mesh.seen().iter().all(|seen| seen.xfcc.as_deref() == Some(peer.as_str())));
}

/// `partner/api`: the host `api.partner.test`, outside the mesh, on port 80 only, served by the
/// endpoint `api` on its own port.
fn partner_api(api: SocketAddr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: partner}}
spec:
  hosts: [api.partner.test]
  location: MESH_EXTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {port}}}]
  resolution: STATIC
  endpoints: [{{address: {ip}}}]
",
        ip = api.ip(),
        port = api.port()
    )
}

#[tokio::test]
async fn under_registry_only_connect_and_get_reach_a_static_service_entry_endpoint_on_a_declared_port() {
    let net = Net::new();
    let (api, api_connections) = outside(net.ip(10), "partner").await;
    let mesh = mesh_in(&net, OutboundTrafficPolicy::RegistryOnly, |_, _| partner_api(api), Vec::new()).await;
    let mut client = Wire::to(mesh.http_proxy).await;
    let (head, body) =
        client.exchange("GET http://api.partner.test/v1/quote?x=1 HTTP/1.1\r\nHost: api.partner.test\r\n\r\n").await;
    assert_eq!((status(&head), body.as_str()), ("200", "partner GET /v1/quote?x=1"), "{head}");

    let mut tunnel = Wire::to(mesh.http_proxy).await;
    let (head, body) =
        tunnel.exchange("CONNECT api.partner.test:80 HTTP/1.1\r\nHost: api.partner.test:80\r\n\r\n").await;
    assert_eq!((status(&head), body.as_str()), ("200", ""), "{head}");
    let (head, body) = tunnel.exchange("GET /inside HTTP/1.1\r\nHost: api.partner.test\r\n\r\n").await;
    assert_eq!((status(&head), body.as_str()), ("200", "partner GET /inside"), "{head}");

    // The endpoint's own address on the declared port: the same service, by original destination.
    let mut by_ip = Wire::to(mesh.http_proxy).await;
    let (head, body) =
        by_ip.exchange(&format!("GET http://{}:80/by-ip HTTP/1.1\r\nHost: api.partner.test\r\n\r\n", api.ip())).await;
    assert_eq!((status(&head), body.as_str()), ("200", "partner GET /by-ip"), "{head}");
    assert_eq!(api_connections.load(Ordering::SeqCst), 3);
    assert!(mesh.seen().is_empty(), "nothing went to the mesh workload");
}

#[tokio::test]
async fn under_registry_only_ports_a_service_entry_does_not_declare_and_hosts_in_none_are_refused() {
    let net = Net::new();
    let (api, api_connections) = outside(net.ip(10), "partner").await;
    let (other, other_connections) = outside(net.ip(10), "other").await;
    let mesh = mesh_in(&net, OutboundTrafficPolicy::RegistryOnly, |_, _| partner_api(api), Vec::new()).await;
    let mut client = Wire::to(mesh.http_proxy).await;

    // The endpoint's own port is not a port the entry declares (80 is).
    let (head, body) = client
        .exchange(&format!(
            "GET http://api.partner.test:{0}/ HTTP/1.1\r\nHost: api.partner.test:{0}\r\n\r\n",
            api.port()
        ))
        .await;
    assert_eq!(status(&head), "502", "{head}");
    assert!(body.contains("not in the mesh registry") && body.contains("REGISTRY_ONLY"), "{body}");
    assert!(body.contains("ServiceEntry partner/api declares api.partner.test on port 80 only"), "{body}");

    let (head, body) = client
        .exchange(&format!("CONNECT api.partner.test:{0} HTTP/1.1\r\nHost: api.partner.test:{0}\r\n\r\n", other.port()))
        .await;
    assert_eq!(status(&head), "502", "{head}");
    assert!(body.contains("not in the mesh registry"), "{body}");

    // The endpoint's address on a port the entry does not declare.
    let (head, body) = client.exchange(&format!("CONNECT {other} HTTP/1.1\r\nHost: {other}\r\n\r\n")).await;
    assert_eq!(status(&head), "502", "{head}");
    assert!(body.contains("not in the mesh registry") && body.contains("REGISTRY_ONLY"), "{body}");

    // A host no ServiceEntry names, next to one that does.
    for request in [
        "GET http://www.partner.test/ HTTP/1.1\r\nHost: www.partner.test\r\n\r\n",
        "CONNECT www.partner.test:80 HTTP/1.1\r\nHost: www.partner.test:80\r\n\r\n",
    ] {
        let (head, body) = client.exchange(request).await;
        assert_eq!(status(&head), "502", "{head}");
        assert!(body.contains("www.partner.test is not in the mesh registry"), "{body}");
    }
    assert_eq!(api_connections.load(Ordering::SeqCst) + other_connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn under_registry_only_a_dns_service_entry_reaches_its_host_or_its_endpoints_by_dns() {
    let net = Net::new();
    let (server, connections) = outside(IpAddr::V4(Ipv4Addr::LOCALHOST), "dns").await;
    let port = server.port();
    let entries = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: local, namespace: partner}}
spec:
  hosts: [localhost]
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db, namespace: partner}}
spec:
  hosts: [db.partner.test]
  ports: [{{number: 7000, name: http, protocol: HTTP, targetPort: {port}}}]
  resolution: DNS
  endpoints: [{{address: localhost}}]
"
    );
    let mesh = mesh_in(&net, OutboundTrafficPolicy::RegistryOnly, |_, _| entries, Vec::new()).await;
    let mut client = Wire::to(mesh.http_proxy).await;
    let (head, body) = client.exchange(&format!("GET http://localhost:{port}/own HTTP/1.1\r\nHost: x\r\n\r\n")).await;
    assert_eq!((status(&head), body.as_str()), ("200", "dns GET /own"), "the host itself, by DNS: {head}");
    let (head, body) = client.exchange("GET http://db.partner.test:7000/endpoint HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!((status(&head), body.as_str()), ("200", "dns GET /endpoint"), "the endpoint's name, by DNS: {head}");

    let mut tunnel = Wire::to(mesh.http_proxy).await;
    let (head, _) =
        tunnel.exchange("CONNECT db.partner.test:7000 HTTP/1.1\r\nHost: db.partner.test:7000\r\n\r\n").await;
    assert_eq!(status(&head), "200", "{head}");
    let (head, body) = tunnel.exchange("GET /tunnel HTTP/1.1\r\nHost: db.partner.test\r\n\r\n").await;
    assert_eq!((status(&head), body.as_str()), ("200", "dns GET /tunnel"), "{head}");

    let (head, body) = client.exchange("GET http://localhost:7000/ HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status(&head), "502", "an undeclared port of the host: {head}");
    assert!(body.contains("not in the mesh registry"), "{body}");
    assert_eq!(connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn under_registry_only_a_resolution_none_service_entry_goes_to_the_original_destination() {
    let net = Net::new();
    let (legacy, connections) = outside(net.ip(11), "legacy").await;
    let port = legacy.port();
    let entry = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: legacy, namespace: partner}}
spec:
  hosts: [legacy.partner.test]
  addresses: [{ip}]
  location: MESH_EXTERNAL
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  resolution: NONE
",
        ip = legacy.ip()
    );
    let explicit = vec![explicit_port(&net, legacy).await];
    let listen = explicit[0].0;
    let mesh = mesh_in(&net, OutboundTrafficPolicy::RegistryOnly, |_, _| entry, explicit).await;
    let mut client = Wire::to(mesh.http_proxy).await;
    let (head, body) = client
        .exchange(&format!(
            "GET http://legacy.partner.test:{port}/by-name HTTP/1.1\r\nHost: legacy.partner.test\r\n\r\n"
        ))
        .await;
    assert_eq!((status(&head), body.as_str()), ("200", "legacy GET /by-name"), "the entry's address: {head}");
    let (head, body) = client.exchange(&format!("GET http://{legacy}/by-ip HTTP/1.1\r\nHost: x\r\n\r\n")).await;
    assert_eq!((status(&head), body.as_str()), ("200", "legacy GET /by-ip"), "{head}");

    let mut captured = Wire::to(listen).await;
    let (head, body) = captured.exchange("GET /by-original-destination HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!((status(&head), body.as_str()), ("200", "legacy GET /by-original-destination"), "{head}");
    assert_eq!(connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn under_registry_only_the_outbound_path_by_ip_admits_service_entry_endpoints_and_addresses_on_declared_ports() {
    let net = Net::new();
    let (endpoint, endpoint_connections) = outside(net.ip(12), "static").await;
    let (undeclared, undeclared_connections) = outside(net.ip(12), "undeclared").await;
    let (tcp, tcp_connections) = outside(net.ip(14), "tcp").await;
    // Nothing listens on the entry's virtual address: only routing to the endpoint answers.
    let vip = SocketAddr::new(net.ip(13), endpoint.port());
    let entries = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: static, namespace: partner}}
spec:
  hosts: [static.partner.test]
  addresses: [{vip_ip}]
  location: MESH_EXTERNAL
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: {ip}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: any-tcp, namespace: partner}}
spec:
  hosts: [tcp.partner.test]
  location: MESH_EXTERNAL
  ports: [{{number: {tcp_port}, name: tcp, protocol: TCP}}]
  resolution: NONE
",
        vip_ip = vip.ip(),
        port = endpoint.port(),
        ip = endpoint.ip(),
        tcp_port = tcp.port()
    );
    let explicit = vec![
        explicit_port(&net, endpoint).await,
        explicit_port(&net, vip).await,
        explicit_port(&net, tcp).await,
        explicit_port(&net, undeclared).await,
    ];
    let listens: Vec<SocketAddr> = explicit.iter().map(|(listen, _)| *listen).collect();
    let _mesh = mesh_in(&net, OutboundTrafficPolicy::RegistryOnly, |_, _| entries, explicit).await;
    for (listen, answer) in [
        (listens[0], "static GET /through"),
        (listens[1], "static GET /through"),
        // A TCP port of an entry without addresses: any address, as it was going (NONE).
        (listens[2], "tcp GET /through"),
    ] {
        let mut client = Wire::to(listen).await;
        let (head, body) = client.exchange("GET /through HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!((status(&head), body.as_str()), ("200", answer), "{listen}: {head}");
    }
    assert_eq!(endpoint_connections.load(Ordering::SeqCst), 2, "the endpoint, and the entry's address");
    assert_eq!(tcp_connections.load(Ordering::SeqCst), 1);

    // The endpoint's address on a port the entry does not declare: closed, nothing reached.
    let mut refused = Wire::to(listens[3]).await;
    assert_eq!(refused.fill().await, 0, "the proxy closes the connection: {:?}", String::from_utf8_lossy(&refused.buf));
    assert_eq!(undeclared_connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_mesh_internal_service_entry_whose_endpoint_is_a_mesh_workload_still_goes_through_hbone() {
    let net = Net::new();
    let entry = |echo: IpAddr, app_port: u16| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo-alias, namespace: shop}}
spec:
  hosts: [echo.internal.test]
  location: MESH_INTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {app_port}}}]
  resolution: STATIC
  endpoints: [{{address: {echo}}}]
"
        )
    };
    let mesh = mesh_in(&net, OutboundTrafficPolicy::RegistryOnly, entry, Vec::new()).await;
    let mut client = Wire::to(mesh.http_proxy).await;
    let (head, body) = client
        .exchange("GET http://echo.internal.test/allowed/alias HTTP/1.1\r\nHost: echo.internal.test\r\n\r\n")
        .await;
    assert_eq!((status(&head), body.as_str()), ("200", "/allowed/alias"), "{head}");
    let seen = mesh.seen();
    assert_eq!(seen[0].xfcc.as_deref(), Some(format!("By={ECHO_ID};URI={CLIENT_ID}").as_str()), "a verified tunnel");
    let (head, body) =
        client.exchange("GET http://echo.internal.test/admin HTTP/1.1\r\nHost: echo.internal.test\r\n\r\n").await;
    assert_eq!((status(&head), body.as_str()), ("403", "RBAC: access denied"), "the destination's policy: {head}");

    let port = mesh.app_port;
    let (head, body) = client
        .exchange(&format!("GET http://echo.internal.test:{port}/allowed HTTP/1.1\r\nHost: echo.internal.test\r\n\r\n"))
        .await;
    assert_eq!(status(&head), "502", "only the entry's declared port: {head}");
    assert!(body.contains("not in the mesh registry"), "{body}");
    assert_eq!(mesh.seen().len(), 1);
}
