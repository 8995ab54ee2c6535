//! HBONE end to end on loopback: tunnels through the server to an echo target, pooling,
//! refusals on both sides, and a client that outlives a server restart.

mod hbone_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use zmesh_proxy::hbone::{ClientOptions, HboneClient, HboneError, REFUSAL_REASON_HEADER, Refusal, ServerLimits, Side};
use zmesh_tls::{CertStore, TlsOptions};

use hbone_support::{Pki, Recorder, client, echo_target, expect, round_trip, start_server, start_server_on};

#[tokio::test]
async fn a_tunnel_round_trips_bytes_and_the_handler_sees_the_client_identity_and_target() {
    let pki = Pki::new("hbone-round-trip");
    let target = echo_target().await;
    let handler = Arc::new(Recorder::default());
    let server = start_server(pki.store("server"), Arc::clone(&handler), ServerLimits::default()).await;

    let mut tunnel = client(pki.store("client")).connect(server.addr, expect("server"), target).await.unwrap();

    assert_eq!(round_trip(&mut tunnel, b"hello through the mesh").await, b"hello through the mesh");
    assert_eq!(tunnel.peer(), &Pki::id("server"));
    let requests = handler.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].peer, Pki::id("client"));
    assert_eq!(requests[0].target, target);
}

#[tokio::test]
async fn fifty_concurrent_tunnels_share_one_mtls_connection() {
    let pki = Pki::new("hbone-pool");
    let target = echo_target().await;
    let handler = Arc::new(Recorder::default());
    let server = start_server(pki.store("server"), Arc::clone(&handler), ServerLimits::default()).await;
    let client = client(pki.store("client"));

    let tunnels = (0..50).map(|n| {
        let client = client.clone();
        tokio::spawn(async move {
            let mut tunnel = client.connect(server.addr, expect("server"), target).await.unwrap();
            let message = format!("tunnel {n}");
            assert_eq!(round_trip(&mut tunnel, message.as_bytes()).await, message.as_bytes());
            tunnel // held until every tunnel is open, so all 50 are concurrent
        })
    });
    let tunnels: Vec<_> = join_in_order(tunnels).await;

    assert_eq!(tunnels.len(), 50);
    assert_eq!(handler.requests().len(), 50);
    assert_eq!(handler.connections(), 1, "every tunnel should come over the same TLS connection");
}

#[tokio::test]
async fn tunnels_beyond_the_per_connection_budget_go_over_a_second_connection() {
    let pki = Pki::new("hbone-budget");
    let target = echo_target().await;
    let handler = Arc::new(Recorder::default());
    let server = start_server(pki.store("server"), Arc::clone(&handler), ServerLimits::default()).await;
    let options = ClientOptions { max_streams_per_connection: 2, ..ClientOptions::default() };
    let client = HboneClient::new(pki.store("client"), options);

    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(client.connect(server.addr, expect("server"), target).await.unwrap());
    }
    assert_eq!(handler.connections(), 2);

    // A closed tunnel frees its place: the next one reuses a connection.
    open.truncate(1);
    open.push(client.connect(server.addr, expect("server"), target).await.unwrap());
    assert_eq!(handler.connections(), 2);
}

#[tokio::test]
async fn a_refused_tunnel_reports_the_status_and_reason_and_is_never_served() {
    let pki = Pki::new("hbone-refused");
    let target = echo_target().await;
    let handler = Recorder::refusing(Refusal::forbidden("denied by test/deny-all"));
    let server = start_server(pki.store("server"), Arc::clone(&handler), ServerLimits::default()).await;

    let error = client(pki.store("client")).connect(server.addr, expect("server"), target).await.unwrap_err();

    match &error {
        HboneError::Refused { status, reason, .. } => {
            assert_eq!(*status, StatusCode::FORBIDDEN);
            assert_eq!(reason.as_deref(), Some("denied by test/deny-all"));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(error.side(), Side::Policy);
    assert_eq!(handler.requests().len(), 1, "admit is asked");
    assert_eq!(handler.served.load(Ordering::SeqCst), 0, "serve is never called");
}

/// An HTTP/2 connection to the server with no HBONE client in between, to send what
/// `HboneClient` never would.
async fn raw_http2(
    server: std::net::SocketAddr,
    store: Arc<CertStore>,
) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let config = zmesh_tls::client_config(store, expect("server"), &TlsOptions::default());
    let tcp = TcpStream::connect(server).await.expect("the server listens");
    let tls = TlsConnector::from(config)
        .connect(ServerName::IpAddress(server.ip().into()), tcp)
        .await
        .expect("mTLS with the server");
    let (sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .expect("an HTTP/2 handshake");
    tokio::spawn(connection);
    sender
}

#[tokio::test]
async fn a_request_that_is_not_connect_and_a_connect_to_a_host_name_are_refused() {
    let pki = Pki::new("hbone-malformed");
    let handler = Arc::new(Recorder::default());
    let server = start_server(pki.store("server"), Arc::clone(&handler), ServerLimits::default()).await;
    let mut sender = raw_http2(server.addr, pki.store("client")).await;

    let get = Request::get("http://127.0.0.1:8080/").body(Empty::new()).unwrap();
    let response = sender.send_request(get).await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()[http::header::ALLOW], "CONNECT");

    let by_name = Request::builder().method(Method::CONNECT).uri("echo.test.svc:8080").body(Empty::new()).unwrap();
    let response = sender.send_request(by_name).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let reason = response.headers()[REFUSAL_REASON_HEADER].to_str().unwrap();
    assert!(reason.contains("echo.test.svc:8080"), "{reason}");

    assert!(handler.requests().is_empty(), "malformed requests never reach the handler");
}

#[tokio::test]
async fn the_client_refuses_a_server_whose_identity_is_not_expected_and_names_both() {
    let pki = Pki::new("hbone-unexpected");
    let target = echo_target().await;
    let handler = Arc::new(Recorder::default());
    let server = start_server(pki.store("impostor"), Arc::clone(&handler), ServerLimits::default()).await;

    let error = client(pki.store("client")).connect(server.addr, expect("reviews"), target).await.unwrap_err();

    assert!(matches!(error, HboneError::Tls { .. }), "{error:?}");
    assert_eq!(error.side(), Side::Upstream);
    let message = error.to_string();
    assert!(message.contains("spiffe://cluster.local/ns/test/sa/impostor"), "{message}");
    assert!(message.contains("spiffe://cluster.local/ns/test/sa/reviews"), "{message}");
    assert!(handler.requests().is_empty());
}

#[tokio::test]
async fn the_server_refuses_a_client_from_another_ca() {
    let mesh = Pki::new("hbone-mesh");
    let stranger = Pki::new("hbone-stranger");
    let target = echo_target().await;
    let handler = Arc::new(Recorder::default());
    let server = start_server(mesh.store("server"), Arc::clone(&handler), ServerLimits::default()).await;
    // The stranger trusts the mesh's root, so only the server's check can stop it.
    let stranger_client = client(stranger.store_trusting("client", &mesh));

    let error = stranger_client.connect(server.addr, expect("server"), target).await.unwrap_err();

    assert!(matches!(error, HboneError::Tls { .. }), "{error:?}");
    assert!(error.to_string().contains("refused this proxy's certificate"), "{error}");
    assert!(handler.requests().is_empty(), "no tunnel request from an unverified peer");
}

#[tokio::test]
async fn after_the_server_restarts_the_client_dials_a_new_connection() {
    let pki = Pki::new("hbone-restart");
    let target = echo_target().await;
    let first_handler = Arc::new(Recorder::default());
    let first = start_server(pki.store("server"), Arc::clone(&first_handler), ServerLimits::default()).await;
    let client = client(pki.store("client"));
    let mut tunnel = client.connect(first.addr, expect("server"), target).await.unwrap();
    assert_eq!(round_trip(&mut tunnel, b"first").await, b"first");
    drop(tunnel);
    first.shutdown.cancel();
    first.handle.await.unwrap().unwrap();

    let listener = TcpListener::bind(first.addr).await.unwrap();
    let second_handler = Arc::new(Recorder::default());
    let _second = start_server_on(listener, pki.store("server"), Arc::clone(&second_handler), ServerLimits::default());
    let mut tunnel = client.connect(first.addr, expect("server"), target).await.unwrap();

    assert_eq!(round_trip(&mut tunnel, b"second").await, b"second");
    assert_eq!(second_handler.requests().len(), 1);
    assert_ne!(second_handler.requests()[0].peer_addr, first_handler.requests()[0].peer_addr);
}

/// Start every task, then join them in order, failing the test if any panicked.
async fn join_in_order<T>(tasks: impl IntoIterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let started: Vec<_> = tasks.into_iter().collect(); // a lazy iterator would spawn one at a time
    let mut results = Vec::new();
    for task in started {
        results.push(task.await.expect("no tunnel task panicked"));
    }
    results
}

#[tokio::test]
async fn connects_queued_behind_a_failed_dial_share_its_failure_instead_of_dialing_in_turn() {
    let pki = Pki::new("hbone-silent");
    // Takes TCP connections and never says a word: every TLS handshake times out.
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let silent_addr = silent.local_addr().expect("a bound listener has an address");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    let options = ClientOptions { handshake_timeout: Duration::from_millis(300), ..ClientOptions::default() };
    let client = HboneClient::new(pki.store("client"), options);
    let target = "127.0.0.1:9".parse().expect("a socket address");

    let started = Instant::now();
    let connects = (0..10).map(|_| {
        let client = client.clone();
        tokio::spawn(async move { client.connect(silent_addr, expect("server"), target).await })
    });
    let results = join_in_order(connects).await;

    for result in results {
        assert!(matches!(result, Err(HboneError::HandshakeTimeout { .. })), "{result:?}");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one dial for all ten connects");
    assert!(started.elapsed() < Duration::from_secs(2), "ten connects took {:?}", started.elapsed());
}
