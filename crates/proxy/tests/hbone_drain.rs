//! Graceful shutdown of the HBONE server: no new tunnels, open tunnels carry on until they end
//! or the drain timeout passes.

mod hbone_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zmesh_proxy::hbone::ServerLimits;

use hbone_support::{Pki, Recorder, client, echo_target, expect, round_trip, start_server};

/// Until the listener is closed, a new connection could still be accepted.
async fn wait_until_refusing_connections(addr: std::net::SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "the server still accepts connections after shutdown");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn after_shutdown_new_tunnels_fail_while_an_open_tunnel_keeps_working_until_it_ends() {
    let pki = Pki::new("hbone-drain");
    let target = echo_target().await;
    let limits = ServerLimits { drain_timeout: Duration::from_secs(60), ..ServerLimits::default() };
    let server = start_server(pki.store("server"), Arc::new(Recorder::default()), limits).await;
    let client = client(pki.store("client"));
    let mut open = client.connect(server.addr, expect("server"), target).await.unwrap();
    assert_eq!(round_trip(&mut open, b"before").await, b"before");

    server.shutdown.cancel();
    wait_until_refusing_connections(server.addr).await;

    let pooled = client.connect(server.addr, expect("server"), target).await;
    assert!(pooled.is_err(), "a tunnel on the draining connection: {pooled:?}");
    let fresh = hbone_support::client(pki.store("client")).connect(server.addr, expect("server"), target).await;
    assert!(fresh.is_err(), "a tunnel on a new connection: {fresh:?}");

    assert_eq!(round_trip(&mut open, b"during the drain").await, b"during the drain");
    assert!(!server.handle.is_finished(), "the server waits for the open tunnel");

    let ended = Instant::now();
    open.shutdown().await.unwrap();
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    drop(open);
    tokio::time::timeout(Duration::from_secs(10), server.handle).await.expect("drained").unwrap().unwrap();
    assert!(ended.elapsed() < Duration::from_secs(10), "the drain ended with the last tunnel, not at the timeout");
}

#[tokio::test]
async fn a_tunnel_still_open_at_the_drain_timeout_is_closed() {
    let pki = Pki::new("hbone-drain-timeout");
    let target = echo_target().await;
    let limits = ServerLimits { drain_timeout: Duration::from_millis(300), ..ServerLimits::default() };
    let server = start_server(pki.store("server"), Arc::new(Recorder::default()), limits).await;
    let mut open = client(pki.store("client")).connect(server.addr, expect("server"), target).await.unwrap();
    assert_eq!(round_trip(&mut open, b"before").await, b"before");

    let cancelled = Instant::now();
    server.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server.handle).await.expect("serve returns").unwrap().unwrap();
    assert!(cancelled.elapsed() >= Duration::from_millis(300), "serve waited for the drain timeout");

    let mut buffer = [0; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), open.read(&mut buffer)).await.expect("the tunnel ends");
    assert!(matches!(read, Ok(0) | Err(_)), "the tunnel is closed: {read:?}");
}
