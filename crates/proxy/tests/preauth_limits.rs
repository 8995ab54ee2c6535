//! Connections that prove nothing (no TLS bytes on HBONE, no first bytes on the plaintext
//! inbound port) on loopback: they are closed when their time runs out, one source cannot hold
//! more than its share of the slots, and a well-behaved client from another source still gets
//! through. The flooding source is 127.0.0.2 (client sockets bound to it), the well-behaved one
//! 127.0.0.1. Timeouts are shortened so the tests run in about a second; bounds are generous.

mod hbone_support;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use zmesh_proxy::config::ProxyConfig;
use zmesh_proxy::hbone::{ClientOptions, ServerLimits};
use zmesh_proxy::preauth::PreAuthLimits;
use zmesh_proxy::run::{ConnectionLimits, OriginalDestination, Proxy, ProxyOptions};

use hbone_support::{Pki, Recorder, client, echo_target, expect, round_trip, start_server};

/// Long enough for anything on loopback; a test that hits it has failed.
const PATIENCE: Duration = Duration::from_secs(5);

const FLOODER: &str = "127.0.0.2";

/// A TCP connection to `addr` from the loopback address `from`.
async fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a socket");
    let local: IpAddr = from.parse().expect("a loopback address");
    socket.bind(SocketAddr::new(local, 0)).expect("bind to a loopback address");
    socket.connect(addr).await.expect("connect")
}

/// How long until the server closes `stream` (which sends nothing); panics past [`PATIENCE`].
async fn closed_after(stream: &mut TcpStream) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await {
            Err(_) => panic!("the server kept a silent connection open for {PATIENCE:?}"),
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            // A server that answers silence (a TLS alert, an HTTP error) and then closes.
            Ok(Ok(_)) => continue,
        }
    }
}

/// Whether the server closed `stream` within `wait`.
async fn is_closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(wait, stream.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

#[tokio::test]
async fn a_silent_connection_to_the_hbone_port_is_closed_at_the_handshake_timeout() {
    let pki = Pki::new("preauth-hbone-silent");
    let handshake =
        PreAuthLimits { timeout: Duration::from_millis(600), floor: Duration::from_millis(600), per_source: 4 };
    let limits = ServerLimits { handshake, ..ServerLimits::default() };
    let server = start_server(pki.store("server"), Arc::new(Recorder::default()), limits).await;

    let mut silent = connect_from(FLOODER, server.addr).await;
    let after = closed_after(&mut silent).await;

    assert!(after >= Duration::from_millis(400), "closed after {after:?}, before its time was up");
    server.shutdown.cancel();
}

#[tokio::test]
async fn silent_connections_from_one_source_do_not_lock_out_another_on_the_hbone_port() {
    let pki = Pki::new("preauth-hbone-flood");
    let target = echo_target().await;
    // Timeouts far beyond the test, and few slots: only the per-source cap can keep a slot
    // for the well-behaved client.
    let handshake = PreAuthLimits { timeout: Duration::from_secs(60), floor: Duration::from_secs(60), per_source: 4 };
    let limits = ServerLimits { max_connections: 16, handshake, ..ServerLimits::default() };
    let server = start_server(pki.store("server"), Arc::new(Recorder::default()), limits).await;

    let mut flood = Vec::new();
    for _ in 0..40 {
        flood.push(connect_from(FLOODER, server.addr).await);
    }
    let options = ClientOptions { handshake_timeout: PATIENCE, ..ClientOptions::default() };
    let honest = zmesh_proxy::hbone::HboneClient::new(pki.store("client"), options);
    let mut tunnel = tokio::time::timeout(PATIENCE, honest.connect(server.addr, expect("server"), target))
        .await
        .expect("the well-behaved client got a slot in time")
        .expect("the tunnel opens");
    assert_eq!(round_trip(&mut tunnel, b"still served").await, b"still served");

    let mut closed = 0;
    for stream in &mut flood {
        if is_closed_within(stream, Duration::from_millis(200)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 36, "all but the first four from the flooding source are closed at once");
    server.shutdown.cancel();
}

#[tokio::test]
async fn silent_connections_filling_the_hbone_port_are_given_up_at_the_floor() {
    let pki = Pki::new("preauth-hbone-pressure");
    let target = echo_target().await;
    // One source may fill every slot (the cap is above the slots); only the deadline shrinking
    // under pressure frees one for the well-behaved client within the test's patience.
    let handshake =
        PreAuthLimits { timeout: Duration::from_secs(60), floor: Duration::from_millis(300), per_source: 64 };
    let limits = ServerLimits { max_connections: 8, handshake, ..ServerLimits::default() };
    let server = start_server(pki.store("server"), Arc::new(Recorder::default()), limits).await;

    let mut flood = Vec::new();
    for _ in 0..8 {
        flood.push(connect_from(FLOODER, server.addr).await);
    }
    let started = Instant::now();
    let mut tunnel = client(pki.store("client"))
        .connect(server.addr, expect("server"), target)
        .await
        .expect("the tunnel opens once the silent connections are given up");
    assert!(started.elapsed() < PATIENCE, "waited {:?} for a slot", started.elapsed());
    assert_eq!(round_trip(&mut tunnel, b"through").await, b"through");
    // Once slots are free again the pressure is gone, and the silent connections still open
    // get back most of their minute: the deadline follows the listener's state.
    drop(flood);
    server.shutdown.cancel();
}

/// A proxy for workload `test/app` at 127.0.0.1 whose policy allows nothing, serving the
/// plaintext inbound port on a loopback listener; the listener's own address stands for the
/// original destination (an undeclared port, so the protocol is detected).
async fn plaintext_inbound(first_bytes: PreAuthLimits) -> (SocketAddr, CancellationToken) {
    let yaml = "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: app, namespace: test}
spec: {address: 127.0.0.1, serviceAccount: app, labels: {app: app}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: test}
spec: {}
";
    let loaded = zmesh_config::load_str(yaml);
    assert!(!loaded.has_errors(), "the configuration does not load: {:?}", loaded.errors().next());
    let config = ProxyConfig::build("test".to_owned(), &loaded.config, "test", "app").expect("the workload");
    let pki = Pki::new("preauth-plaintext");
    let shutdown = CancellationToken::new();
    let options = ProxyOptions { marked: false, hbone_port: 15008, hbone: ClientOptions::default() };
    let proxy = Proxy::new(config, pki.store("app"), options, shutdown.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let addr = listener.local_addr().expect("a bound listener has an address");
    let limits = ConnectionLimits { first_bytes, ..ConnectionLimits::default() };
    tokio::spawn(proxy.serve_inbound_capture(listener, shutdown.clone(), limits, OriginalDestination::LocalAddress));
    (addr, shutdown)
}

/// A request from 127.0.0.1 is detected as HTTP and refused by policy: the inbound path works.
async fn assert_a_request_is_answered(addr: SocketAddr) {
    let mut stream = connect_from("127.0.0.1", addr).await;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n").await.expect("write");
    let mut answer = vec![0u8; 12];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut answer))
        .await
        .expect("an answer in time")
        .expect("an answer");
    assert_eq!(answer, b"HTTP/1.1 403", "{}", String::from_utf8_lossy(&answer));
}

#[tokio::test]
async fn a_silent_connection_on_the_plaintext_inbound_port_is_closed_at_the_first_byte_timeout() {
    let first_bytes =
        PreAuthLimits { timeout: Duration::from_millis(600), floor: Duration::from_millis(600), per_source: 4 };
    let (addr, shutdown) = plaintext_inbound(first_bytes).await;
    assert_a_request_is_answered(addr).await;

    let mut silent = connect_from(FLOODER, addr).await;
    let after = closed_after(&mut silent).await;

    assert!(after >= Duration::from_millis(400), "closed after {after:?}, before its time was up");
    shutdown.cancel();
}

#[tokio::test]
async fn silent_connections_from_one_source_are_capped_on_the_plaintext_inbound_port() {
    let first_bytes = PreAuthLimits { timeout: Duration::from_secs(60), floor: Duration::from_secs(60), per_source: 4 };
    let (addr, shutdown) = plaintext_inbound(first_bytes).await;

    let mut flood = Vec::new();
    for _ in 0..10 {
        flood.push(connect_from(FLOODER, addr).await);
    }
    let mut closed = 0;
    for stream in &mut flood {
        if is_closed_within(stream, Duration::from_millis(200)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 6, "all but the first four from the flooding source are closed at once");
    assert_a_request_is_answered(addr).await;
    shutdown.cancel();
}
