//! Forwarding through `serve_http1`: connection reuse, pipelining, bodies in every framing,
//! interim responses and WebSocket tunnels.

mod l7_support;

use l7_support::{
    ALLOW_ALL, DENY_ADMIN, PATIENCE, Wire, context, finished, header, hyper_app, scripted_app, start, status, text,
};
use tokio::sync::oneshot;

#[tokio::test]
async fn two_requests_on_one_connection_share_one_app_connection() {
    let (app, seen) = hyper_app();
    let (mut client, served) = start(context(ALLOW_ALL), &app);
    for path in ["/one", "/two"] {
        client.send(format!("GET {path} HTTP/1.1\r\nHost: app\r\n\r\n")).await;
        let (head, body) = client.response().await;
        assert_eq!((status(&head), body.as_str()), ("200", path));
    }
    client.finish().await;
    let stats = finished(served).await.expect("served");
    assert_eq!(app.connects(), 1);
    assert_eq!(seen.lock().unwrap().len(), 2);
    assert_eq!((stats.requests, stats.denied, stats.rejected), (2, 0, 0));
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (app, _) = hyper_app();
    let (mut client, served) = start(context(ALLOW_ALL), &app);
    client.send("GET /a HTTP/1.1\r\nHost: app\r\n\r\nGET /b HTTP/1.1\r\nHost: app\r\n\r\nGET /c HTTP/1.1\r\nHost: app\r\n\r\n").await;
    for path in ["/a", "/b", "/c"] {
        assert_eq!(client.response().await.1, path);
    }
    client.finish().await;
    finished(served).await.expect("served");
}

#[tokio::test]
async fn a_denied_request_between_two_allowed_ones_never_reaches_the_app() {
    let (app, seen) = hyper_app();
    let (mut client, served) = start(context(DENY_ADMIN), &app);
    client.send("GET /a HTTP/1.1\r\nHost: app\r\n\r\nGET /admin HTTP/1.1\r\nHost: app\r\n\r\nGET /b HTTP/1.1\r\nHost: app\r\n\r\n").await;
    let (head, body) = client.response().await;
    assert_eq!((status(&head), body.as_str()), ("200", "/a"));
    let (head, body) = client.response().await;
    assert_eq!((status(&head), body.as_str()), ("403", "RBAC: access denied"));
    assert_eq!(header(&head, "x-zmesh-policy"), Some("default/deny-admin"));
    assert_eq!(header(&head, "x-zmesh-rule"), Some("0"));
    assert_eq!(header(&head, "connection"), None, "a denied request without a body keeps the connection");
    let (head, body) = client.response().await;
    assert_eq!((status(&head), body.as_str()), ("200", "/b"));
    client.finish().await;
    let stats = finished(served).await.expect("served");
    let targets: Vec<String> = seen.lock().unwrap().iter().map(|request| request.target.clone()).collect();
    assert_eq!(targets, ["/a", "/b"]);
    assert_eq!(app.connects(), 1);
    assert_eq!((stats.requests, stats.denied), (3, 1));
}

#[tokio::test]
async fn a_denied_request_with_a_body_closes_the_connection_unread() {
    let (app, _) = hyper_app();
    let (mut client, served) = start(context(DENY_ADMIN), &app);
    client
        .send("POST /admin HTTP/1.1\r\nHost: app\r\nContent-Length: 28\r\n\r\nGET /a HTTP/1.1\r\nHost: app\r\n\r\n")
        .await;
    let head = client.head().await;
    assert_eq!(header(&head, "connection"), Some("close"));
    assert_eq!(text(&client.rest().await), "RBAC: access denied");
    client.finish().await;
    finished(served).await.expect("served");
    assert_eq!(app.connects(), 0, "a connection of denied requests never reaches the app");
}

/// The client holds back the last part of an 8 MiB body until the app has seen the first
/// MiB: if the proxy buffered the whole body before forwarding, this would never finish.
#[tokio::test]
async fn a_large_body_streams_through_without_being_buffered_whole() {
    const SIZE: usize = 8 << 20;
    let (app, mut accepted) = scripted_app();
    let (first_mib_seen, first_mib) = oneshot::channel();
    let serving = tokio::spawn(async move {
        let mut app_side = Wire::new(accepted.recv().await.expect("a connection"));
        let head = app_side.head().await;
        assert_eq!(header(&head, "content-length"), Some("8388608"));
        app_side.exactly(1 << 20).await;
        first_mib_seen.send(()).expect("test waits");
        let rest = app_side.exactly(SIZE - (1 << 20)).await;
        assert!(rest.iter().all(|&byte| byte == b'x'));
        app_side.send("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone").await;
        app_side
    });
    let (mut client, served) = start(context(ALLOW_ALL), &app);
    client.send(format!("PUT /upload HTTP/1.1\r\nHost: app\r\nContent-Length: {SIZE}\r\n\r\n")).await;
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    while sent < SIZE / 2 {
        client.send(&chunk).await;
        sent += chunk.len();
    }
    tokio::time::timeout(PATIENCE, first_mib).await.expect("the app saw nothing before the body ended").unwrap();
    while sent < SIZE {
        client.send(&chunk).await;
        sent += chunk.len();
    }
    assert_eq!(client.response().await.1, "done");
    let _app_side = serving.await.unwrap();
    client.finish().await;
    let stats = finished(served).await.expect("served");
    assert!(stats.bytes_from_downstream > SIZE as u64);
}

#[tokio::test]
async fn a_chunked_request_and_a_chunked_response_keep_their_chunks() {
    let (app, mut accepted) = scripted_app();
    let serving = tokio::spawn(async move {
        let mut app_side = Wire::new(accepted.recv().await.expect("a connection"));
        let head = app_side.head().await;
        assert_eq!(header(&head, "transfer-encoding"), Some("chunked"));
        // Extensions and trailers are dropped; sizes stay.
        assert_eq!(text(&app_side.until(b"0\r\n\r\n").await), "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
        app_side.send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n").await;
        app_side.send("2;ext=1\r\nde\r\n0\r\n\r\n").await;
        app_side
    });
    let (mut client, served) = start(context(ALLOW_ALL), &app);
    client.send("POST /c HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n5;ext\r\nhello\r\n").await;
    client.send("6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n").await;
    let head = client.head().await;
    assert_eq!(header(&head, "transfer-encoding"), Some("chunked"));
    assert_eq!(text(&client.until(b"0\r\n\r\n").await), "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
    let _app_side = serving.await.unwrap();
    client.finish().await;
    finished(served).await.expect("served");
}

#[tokio::test]
async fn an_http_1_0_client_gets_a_chunked_response_unchunked_and_closed() {
    let (app, mut accepted) = scripted_app();
    let serving = tokio::spawn(async move {
        let mut app_side = Wire::new(accepted.recv().await.expect("a connection"));
        assert!(app_side.head().await.starts_with("GET /old HTTP/1.1\r\n"));
        app_side.send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n").await;
        app_side
    });
    let mut ctx = context(ALLOW_ALL);
    ctx.limits.accept_http_10 = true;
    let (mut client, served) = start(ctx, &app);
    client.send("GET /old HTTP/1.0\r\nHost: app\r\nConnection: keep-alive\r\n\r\n").await;
    let head = client.head().await;
    assert_eq!(header(&head, "transfer-encoding"), None);
    assert_eq!(header(&head, "connection"), Some("close"));
    assert_eq!(text(&client.rest().await), "abc");
    let _app_side = serving.await.unwrap();
    client.finish().await;
    finished(served).await.expect("served");
}

#[tokio::test]
async fn responses_without_a_body_leave_the_connection_usable() {
    let (app, mut accepted) = scripted_app();
    let serving = tokio::spawn(async move {
        let mut app_side = Wire::new(accepted.recv().await.expect("a connection"));
        for response in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlast",
        ] {
            app_side.head().await;
            app_side.send(response).await;
        }
        app_side
    });
    let (mut client, served) = start(context(ALLOW_ALL), &app);
    client.send("HEAD /h HTTP/1.1\r\nHost: app\r\n\r\n").await;
    assert_eq!(header(&client.head().await, "content-length"), Some("5"));
    client.send("DELETE /d HTTP/1.1\r\nHost: app\r\n\r\n").await;
    assert_eq!(status(&client.head().await), "204");
    client.send("GET /n HTTP/1.1\r\nHost: app\r\nIf-None-Match: \"x\"\r\n\r\n").await;
    assert_eq!(status(&client.head().await), "304");
    client.send("GET /l HTTP/1.1\r\nHost: app\r\n\r\n").await;
    // The bytes right after the 304 head are the next response: no body was waited for.
    assert_eq!(client.response().await.1, "last");
    let _app_side = serving.await.unwrap();
    client.finish().await;
    finished(served).await.expect("served");
}

#[tokio::test]
async fn a_close_delimited_response_is_relayed_until_the_app_closes() {
    let (app, mut accepted) = scripted_app();
    tokio::spawn(async move {
        let mut app_side = Wire::new(accepted.recv().await.expect("a connection"));
        app_side.head().await;
        app_side.send("HTTP/1.1 200 OK\r\n\r\nstreamed ").await;
        app_side.send("until close").await;
    });
    let (mut client, served) = start(context(ALLOW_ALL), &app);
    client.send("GET /s HTTP/1.1\r\nHost: app\r\n\r\n").await;
    let head = client.head().await;
    assert_eq!(header(&head, "connection"), Some("close"));
    assert_eq!(text(&client.rest().await), "streamed until close");
    client.finish().await;
    finished(served).await.expect("served");
}

#[tokio::test]
async fn expect_100_continue_gets_the_app_s_interim_response_before_the_body_is_sent() {
    let (app, mut accepted) = scripted_app();
    let serving = tokio::spawn(async move {
        let mut app_side = Wire::new(accepted.recv().await.expect("a connection"));
        assert_eq!(header(&app_side.head().await, "expect"), Some("100-continue"));
        app_side.send("HTTP/1.1 100 Continue\r\n\r\n").await;
        assert_eq!(app_side.exactly(4).await, b"body");
        app_side.send("HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n").await;
        app_side
    });
    let (mut client, served) = start(context(ALLOW_ALL), &app);
    client.send("POST /p HTTP/1.1\r\nHost: app\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n").await;
    assert_eq!(client.head().await, "HTTP/1.1 100 Continue\r\n\r\n");
    client.send("body").await;
    assert_eq!(status(&client.head().await), "201");
    let _app_side = serving.await.unwrap();
    client.finish().await;
    finished(served).await.expect("served");
}

#[tokio::test]
async fn an_app_that_answers_before_the_body_ends_gets_the_connection_closed_after() {
    let (app, mut accepted) = scripted_app();
    tokio::spawn(async move {
        let mut app_side = Wire::new(accepted.recv().await.expect("a connection"));
        app_side.head().await;
        app_side.send("HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n").await;
        app_side
    });
    let (mut client, served) = start(context(ALLOW_ALL), &app);
    client.send("POST /p HTTP/1.1\r\nHost: app\r\nContent-Length: 1000000\r\n\r\npartial").await;
    let head = client.head().await;
    assert_eq!((status(&head), header(&head, "connection")), ("413", Some("close")));
    client.finish().await;
    // Either ending is fine: the response got through, and the connection closed.
    let _ = finished(served).await;
}

#[tokio::test]
async fn a_websocket_upgrade_becomes_a_raw_tunnel() {
    let (app, mut accepted) = scripted_app();
    tokio::spawn(async move {
        let mut app_side = Wire::new(accepted.recv().await.expect("a connection"));
        let head = app_side.head().await;
        assert_eq!(header(&head, "upgrade"), Some("websocket"));
        app_side.send("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nhi").await;
        let ping = app_side.exactly(4).await;
        app_side.send(&ping).await;
        app_side.finish().await;
        app_side.rest().await
    });
    let (mut client, served) = start(context(ALLOW_ALL), &app);
    // The first frame follows the head at once, before the 101.
    client.send("GET /ws HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nping").await;
    let head = client.head().await;
    assert_eq!((status(&head), header(&head, "upgrade")), ("101", Some("websocket")));
    assert_eq!(client.exactly(6).await, b"hiping");
    client.finish().await;
    let stats = finished(served).await.expect("served");
    assert_eq!(stats.requests, 1);
}

#[tokio::test]
async fn a_non_websocket_upgrade_is_refused_before_the_app() {
    let (app, _) = hyper_app();
    let (mut client, served) = start(context(ALLOW_ALL), &app);
    client.send("GET / HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n").await;
    let (head, body) = client.response().await;
    assert_eq!((status(&head), body.as_str()), ("403", "upgrade_failed"));
    client.finish().await;
    let stats = finished(served).await.expect("served");
    assert_eq!((stats.rejected, app.connects()), (1, 0));
}
