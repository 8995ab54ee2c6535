//! What the app learns about the peer (`x-forwarded-client-cert`), and how `serve_http1`
//! answers when a client is slow or the app is down, misbehaves or the proxy shuts down.

mod l7_support;

use std::time::{Duration, Instant};

use l7_support::{ALLOW_ALL, Wire, context, finished, header, hyper_app, scripted_app, start, status};
use zmesh_id::SpiffeId;
use zmesh_proxy::l7::{L7Error, Side, serve_http1};

fn id(service_account: &str) -> SpiffeId {
    format!("spiffe://cluster.local/ns/default/sa/{service_account}").parse().expect("SPIFFE ID")
}

/// Sends one request with a spoofed XFCC and returns the XFCC values the app received.
async fn xfcc_seen_by_app(peer: Option<SpiffeId>, local: Option<SpiffeId>) -> Vec<String> {
    let (app, seen) = hyper_app();
    let mut ctx = context(ALLOW_ALL);
    ctx.peer = peer;
    ctx.local_identity = local;
    let (mut client, served) = start(ctx, &app);
    client
        .send("GET / HTTP/1.1\r\nHost: app\r\nX-Forwarded-Client-Cert: By=spiffe://evil;URI=spiffe://evil\r\n\r\n")
        .await;
    assert_eq!(status(&client.response().await.0), "200");
    client.finish().await;
    finished(served).await.expect("served");
    let seen = seen.lock().expect("recorder");
    seen[0]
        .headers
        .iter()
        .filter(|(name, _)| name == "x-forwarded-client-cert")
        .map(|(_, value)| value.clone())
        .collect()
}

#[tokio::test]
async fn the_app_sees_the_verified_peer_in_xfcc_and_never_the_client_s_own() {
    assert_eq!(
        xfcc_seen_by_app(Some(id("client")), Some(id("server"))).await,
        ["By=spiffe://cluster.local/ns/default/sa/server;URI=spiffe://cluster.local/ns/default/sa/client"]
    );
}

#[tokio::test]
async fn xfcc_omits_by_when_the_proxy_has_no_identity_of_its_own() {
    assert_eq!(xfcc_seen_by_app(Some(id("client")), None).await, ["URI=spiffe://cluster.local/ns/default/sa/client"]);
}

#[tokio::test]
async fn a_plaintext_peer_gets_no_xfcc_at_all() {
    assert!(xfcc_seen_by_app(None, Some(id("server"))).await.is_empty());
}

#[tokio::test]
async fn a_client_that_sends_half_a_head_gets_408_after_the_header_timeout() {
    let (app, _) = hyper_app();
    let mut ctx = context(ALLOW_ALL);
    ctx.timeouts.header_read = Duration::from_millis(200);
    let (mut client, served) = start(ctx, &app);
    let started = Instant::now();
    client.send("GET / HTTP/1.1\r\nHost: ap").await;
    let (head, body) = client.response().await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!((status(&head), header(&head, "connection")), ("408", Some("close")));
    assert_eq!(body, "request_header_timeout");
    client.finish().await;
    let stats = finished(served).await.expect("served");
    assert_eq!((stats.requests, stats.rejected), (1, 1));
}

#[tokio::test]
async fn an_idle_connection_closes_quietly() {
    let (app, _) = hyper_app();
    let mut ctx = context(ALLOW_ALL);
    ctx.timeouts.idle = Duration::from_millis(100);
    let (mut client, served) = start(ctx, &app);
    assert!(client.rest().await.is_empty());
    client.finish().await;
    assert_eq!(finished(served).await.expect("served").requests, 0);
}

#[tokio::test]
async fn a_malformed_head_gets_envoy_s_status_and_detail() {
    let (app, _) = hyper_app();
    let (mut client, served) = start(context(ALLOW_ALL), &app);
    client.send("GET / HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked, identity\r\n\r\n").await;
    let (head, body) = client.response().await;
    assert_eq!((status(&head), body.as_str()), ("501", "http1.invalid_transfer_encoding"));
    client.finish().await;
    assert_eq!(finished(served).await.expect("served").rejected, 1);
    assert_eq!(app.connects(), 0);
}

#[tokio::test]
async fn a_malformed_chunked_body_gets_400_and_closes_both_sides() {
    let (app, mut accepted) = scripted_app();
    tokio::spawn(async move {
        let mut app_side = Wire::new(accepted.recv().await.expect("a connection"));
        app_side.head().await;
        app_side.rest().await
    });
    let (mut client, served) = start(context(ALLOW_ALL), &app);
    client.send("POST / HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n").await;
    let (head, body) = client.response().await;
    assert_eq!((status(&head), body.as_str()), ("400", "http1.codec_error"));
    client.finish().await;
    let error = finished(served).await.expect_err("a malformed body is an error");
    assert!(matches!(error, L7Error::RequestBody(_)), "{error}");
    assert_eq!(error.side(), Side::Downstream);
}

/// Over loopback TCP: the app's port has nothing listening.
#[tokio::test]
async fn an_app_that_is_down_gets_the_client_a_503() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let app_address = unused.local_addr().expect("address");
    drop(unused);
    let ctx = context(ALLOW_ALL);
    let (client, proxy_end) = tokio::io::duplex(l7_support::PIPE);
    let served =
        tokio::spawn(async move { serve_http1(proxy_end, &ctx, || tokio::net::TcpStream::connect(app_address)).await });
    let mut client = Wire::new(client);
    client.send("GET / HTTP/1.1\r\nHost: app\r\n\r\n").await;
    let (head, body) = client.response().await;
    assert_eq!(status(&head), "503");
    assert_eq!(body, "upstream_reset_before_response_started{remote_connection_failure}");
    client.finish().await;
    let error = finished(served).await.expect_err("an unreachable app is an error");
    assert!(matches!(error, L7Error::Connect { .. }), "{error}");
    assert_eq!(error.side(), Side::Upstream);
}

/// Over loopback TCP both ways: a real socket pair for the client and for the app.
#[tokio::test]
async fn a_request_crosses_real_sockets_and_the_connection_is_reused() {
    let app_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let app_address = app_listener.local_addr().expect("address");
    tokio::spawn(async move {
        let (stream, _) = app_listener.accept().await.expect("accept");
        let (reader, writer) = stream.into_split();
        let mut app_side = (tokio::io::BufReader::new(reader), writer);
        for body in ["first", "second"] {
            use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
            let mut line = String::new();
            while line != "\r\n" {
                line.clear();
                app_side.0.read_line(&mut line).await.expect("read");
            }
            let response = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            app_side.1.write_all(response.as_bytes()).await.expect("write");
        }
    });
    let proxy_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let proxy_address = proxy_listener.local_addr().expect("address");
    let ctx = context(ALLOW_ALL);
    let served = tokio::spawn(async move {
        let (downstream, _) = proxy_listener.accept().await.expect("accept");
        serve_http1(downstream, &ctx, || tokio::net::TcpStream::connect(app_address)).await
    });
    let mut client = tokio::net::TcpStream::connect(proxy_address).await.expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    client.write_all(b"GET /1 HTTP/1.1\r\nHost: app\r\n\r\nGET /2 HTTP/1.1\r\nHost: app\r\n\r\n").await.expect("write");
    client.shutdown().await.expect("shutdown");
    let mut received = String::new();
    client.read_to_string(&mut received).await.expect("read");
    assert!(received.ends_with("\r\n\r\nfirstHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond"), "{received:?}");
    let stats = finished(served).await.expect("served");
    assert_eq!(stats.requests, 2);
}

#[tokio::test]
async fn a_malformed_response_gets_the_client_a_502() {
    let (app, mut accepted) = scripted_app();
    tokio::spawn(async move {
        let mut app_side = Wire::new(accepted.recv().await.expect("a connection"));
        app_side.head().await;
        app_side.send("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx").await;
        app_side
    });
    let (mut client, served) = start(context(ALLOW_ALL), &app);
    client.send("GET / HTTP/1.1\r\nHost: app\r\n\r\n").await;
    let (head, body) = client.response().await;
    assert_eq!((status(&head), body.as_str()), ("502", "upstream_reset_before_response_started{protocol_error}"));
    client.finish().await;
    assert!(matches!(finished(served).await, Err(L7Error::MalformedResponse(_))));
}

#[tokio::test]
async fn an_app_that_closes_before_responding_gets_the_client_a_503() {
    let (app, mut accepted) = scripted_app();
    tokio::spawn(async move {
        let mut app_side = Wire::new(accepted.recv().await.expect("a connection"));
        app_side.head().await;
    });
    let (mut client, served) = start(context(ALLOW_ALL), &app);
    client.send("GET / HTTP/1.1\r\nHost: app\r\n\r\n").await;
    let (head, body) = client.response().await;
    assert_eq!(
        (status(&head), body.as_str()),
        ("503", "upstream_reset_before_response_started{connection_termination}")
    );
    client.finish().await;
    assert!(matches!(finished(served).await, Err(L7Error::AppClosedEarly)));
}

#[tokio::test]
async fn shutdown_ends_the_connection_between_requests() {
    let (app, _) = hyper_app();
    let ctx = context(ALLOW_ALL);
    let shutdown = ctx.shutdown.clone();
    let (mut client, served) = start(ctx, &app);
    client.send("GET /a HTTP/1.1\r\nHost: app\r\n\r\n").await;
    assert_eq!(status(&client.response().await.0), "200");
    shutdown.cancel();
    assert!(client.rest().await.is_empty());
    client.finish().await;
    assert_eq!(finished(served).await.expect("served").requests, 1);
}

#[tokio::test]
async fn a_response_in_flight_at_shutdown_tells_the_client_to_close() {
    let (app, mut accepted) = scripted_app();
    let ctx = context(ALLOW_ALL);
    let shutdown = ctx.shutdown.clone();
    tokio::spawn(async move {
        let mut app_side = Wire::new(accepted.recv().await.expect("a connection"));
        app_side.head().await;
        shutdown.cancel();
        app_side.send("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        app_side
    });
    let (mut client, served) = start(ctx, &app);
    client.send("GET /a HTTP/1.1\r\nHost: app\r\n\r\nGET /b HTTP/1.1\r\nHost: app\r\n\r\n").await;
    let head = client.head().await;
    assert_eq!((status(&head), header(&head, "connection")), ("200", Some("close")));
    assert!(client.rest().await.is_empty(), "the pipelined request is not served");
    client.finish().await;
    assert_eq!(finished(served).await.expect("served").requests, 1);
}

#[tokio::test]
async fn an_app_that_fails_after_100_continue_still_gets_the_client_a_503() {
    let (app, mut accepted) = scripted_app();
    tokio::spawn(async move {
        let mut app_side = Wire::new(accepted.recv().await.expect("a connection"));
        app_side.head().await;
        app_side.send("HTTP/1.1 100 Continue\r\n\r\n").await;
    });
    let (mut client, served) = start(context(ALLOW_ALL), &app);
    client.send("POST / HTTP/1.1\r\nHost: app\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n").await;
    assert_eq!(client.head().await, "HTTP/1.1 100 Continue\r\n\r\n");
    let (head, _) = client.response().await;
    assert_eq!(status(&head), "503");
    client.finish().await;
    assert!(finished(served).await.is_err());
}
