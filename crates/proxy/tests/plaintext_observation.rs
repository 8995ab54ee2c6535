//! Plaintext inbound connections are observed per source and port, and a STRICT dry-run
//! PeerAuthentication counts the ones it would refuse without refusing them: a proxy for
//! `test/app` at 127.0.0.1 serves the plaintext inbound port on loopback (the listener's own
//! address stands for the original destination), and clients connect from 127.0.0.2 (the mesh
//! workload `test/caller`) and 127.0.0.3 (no workload). Its policy allows nothing, so a request
//! that gets past PeerAuthentication is answered `403` by RBAC, and one refused by STRICT is
//! closed unanswered.

mod hbone_support;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use zmesh_proxy::config::ProxyConfig;
use zmesh_proxy::hbone::ClientOptions;
use zmesh_proxy::run::{ConnectionLimits, OriginalDestination, Proxy, ProxyOptions};

use hbone_support::Pki;

/// Long enough for anything on loopback; a test that hits it has failed.
const PATIENCE: Duration = Duration::from_secs(5);

const MESH: &str = "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: app, namespace: test}
spec: {address: 127.0.0.1, serviceAccount: app, labels: {app: app}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: caller, namespace: test}
spec: {address: 127.0.0.2, serviceAccount: caller, labels: {app: caller}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: test}
spec: {}
";

const STRICT: &str = "---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: app-strict, namespace: test, annotations: {istio.io/dry-run: \"DRY_RUN\"}}
spec:
  selector: {matchLabels: {app: app}}
  mtls: {mode: STRICT}
";

async fn start(yaml: &str, name: &str) -> (Arc<Proxy>, SocketAddr, CancellationToken) {
    let loaded = zmesh_config::load_str(yaml);
    assert!(!loaded.has_errors(), "the configuration does not load: {:?}", loaded.errors().next());
    let config = ProxyConfig::build("test".to_owned(), &loaded.config, "test", "app").expect("the workload");
    let pki = Pki::new(name);
    let shutdown = CancellationToken::new();
    let options = ProxyOptions { marked: false, hbone_port: 15008, hbone: ClientOptions::default() };
    let proxy = Proxy::new(config, pki.store("app"), options, shutdown.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let addr = listener.local_addr().expect("a bound listener has an address");
    tokio::spawn(proxy.clone().serve_inbound_capture(
        listener,
        shutdown.clone(),
        ConnectionLimits::default(),
        OriginalDestination::LocalAddress,
    ));
    (proxy, addr, shutdown)
}

/// One HTTP request from the loopback address `from`; the first bytes of the answer (empty when
/// the proxy closed the connection without one).
async fn request_from(from: &str, addr: SocketAddr) -> String {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket.bind(SocketAddr::new(from.parse::<IpAddr>().expect("an address"), 0)).expect("bind");
    let mut stream = socket.connect(addr).await.expect("connect");
    let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n").await;
    let mut answer = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await.expect("an answer or a close in time") {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.len() >= 12 {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&answer[..answer.len().min(12)]).into_owned()
}

/// The value of the series `name{labels}` on the proxy's metrics page, or 0 when absent.
fn series(proxy: &Proxy, name: &str, labels: &str) -> u64 {
    let page = proxy.metrics.render();
    let prefix = format!("{name}{{{labels}}} ");
    page.lines().find_map(|l| l.strip_prefix(&prefix)?.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn a_strict_dry_run_counts_each_plaintext_connection_it_would_refuse_and_lets_it_through() {
    let (proxy, addr, shutdown) = start(&format!("{MESH}{}", STRICT.replace("DRY_RUN", "true")), "dry-run").await;
    for _ in 0..3 {
        assert_eq!(request_from("127.0.0.2", addr).await, "HTTP/1.1 403", "reached RBAC: not refused by the dry-run");
    }
    assert_eq!(request_from("127.0.0.3", addr).await, "HTTP/1.1 403");
    let port = addr.port();
    assert_eq!(
        series(
            &proxy,
            "zmesh_plaintext_connections_total",
            &format!("destination_port=\"{port}\",source_workload=\"test/caller\",source_address=\"127.0.0.2\"")
        ),
        3
    );
    assert_eq!(
        series(
            &proxy,
            "zmesh_plaintext_connections_total",
            &format!("destination_port=\"{port}\",source_workload=\"unknown\",source_address=\"127.0.0.3\"")
        ),
        1
    );
    assert_eq!(
        series(
            &proxy,
            "zmesh_mtls_dry_run_refusals_total",
            &format!("destination_port=\"{port}\",policy=\"test/app-strict\"")
        ),
        4
    );
    let rows = proxy.observed.rows();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.row.first_seen <= r.row.last_seen));
    shutdown.cancel();
}

#[tokio::test]
async fn an_enforced_strict_policy_refuses_plaintext_and_records_the_sender_but_no_dry_run() {
    let (proxy, addr, shutdown) = start(&format!("{MESH}{}", STRICT.replace("DRY_RUN", "false")), "enforced").await;
    assert_eq!(request_from("127.0.0.2", addr).await, "", "STRICT closes a plaintext connection unanswered");
    let port = addr.port();
    assert_eq!(
        series(
            &proxy,
            "zmesh_plaintext_connections_total",
            &format!("destination_port=\"{port}\",source_workload=\"test/caller\",source_address=\"127.0.0.2\"")
        ),
        1
    );
    assert!(!proxy.metrics.render().contains("zmesh_mtls_dry_run_refusals_total"));
    shutdown.cancel();
}

#[tokio::test]
async fn without_peer_authentication_plaintext_is_recorded_and_nothing_is_counted_as_a_dry_run() {
    let (proxy, addr, shutdown) = start(MESH, "permissive").await;
    assert_eq!(request_from("127.0.0.3", addr).await, "HTTP/1.1 403");
    assert_eq!(proxy.observed.rows().len(), 1);
    assert!(!proxy.metrics.render().contains("zmesh_mtls_dry_run_refusals_total"));
    assert!(proxy.metrics.render().contains("zmesh_plaintext_observed_since_seconds "));
    shutdown.cancel();
}
