//! Idle connections at L7: a connection that sends no request, or no further one, is closed
//! (HTTP/2 with a GOAWAY first), while a request or response slower than the idle timeout is
//! left alone.

mod l7_support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use l7_support::{ALLOW_ALL, PATIENCE, PIPE, Wire, context, finished, hyper_app, scripted_app, start, status};
use tokio::sync::mpsc;
use tokio::time::Instant;
use zmesh_proxy::http2::{PREFACE, serve_h2c};
use zmesh_proxy::l7::ConnectionContext;

const SHORT: Duration = Duration::from_millis(200);

/// A context whose connections idle out after `idle` and wait `first_request` for a first one.
fn timed(idle: Duration, first_request: Duration) -> ConnectionContext {
    let mut ctx = context(ALLOW_ALL);
    ctx.timeouts.idle = idle;
    ctx.timeouts.first_request = first_request;
    ctx.timeouts.drain = SHORT;
    ctx
}

/// A real HTTP/2 app on 127.0.0.1. `/slow` answers after `delay` and then sends its body in
/// three parts, `delay` apart; `/upload` answers `ok` at once and then reads the request body,
/// reporting how many bytes came before it ended or broke; anything else answers `ok` at once.
async fn h2_app(delay: Duration) -> (SocketAddr, mpsc::UnboundedReceiver<usize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (uploads, uploaded) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let uploads = uploads.clone();
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let uploads = uploads.clone();
                async move {
                    let ok = || Full::new(Bytes::from_static(b"ok")).map_err(|never| match never {}).boxed();
                    match request.uri().path() {
                        "/slow" => {}
                        "/upload" => {
                            let mut body = request.into_body();
                            tokio::spawn(async move {
                                let mut read = 0;
                                while let Some(Ok(frame)) = body.frame().await {
                                    read += frame.data_ref().map_or(0, Bytes::len);
                                }
                                let _ = uploads.send(read);
                            });
                            return Ok::<_, Infallible>(hyper::Response::new(ok()));
                        }
                        _ => return Ok(hyper::Response::new(ok())),
                    }
                    tokio::time::sleep(delay).await;
                    let (parts, receiver) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
                    tokio::spawn(async move {
                        for part in ["one ", "two ", "three"] {
                            tokio::time::sleep(delay).await;
                            if parts.send(Ok(Frame::data(Bytes::from_static(part.as_bytes())))).await.is_err() {
                                return;
                            }
                        }
                    });
                    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(receiver)).boxed();
                    Ok(hyper::Response::new(body))
                }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (addr, uploaded)
}

/// The proxy serving h2c on one in-memory connection; the client's end is returned.
fn start_h2c(
    ctx: ConnectionContext,
    app: SocketAddr,
) -> (tokio::io::DuplexStream, tokio::task::JoinHandle<Result<(), hyper::Error>>) {
    let (client, proxy_end) = tokio::io::duplex(PIPE);
    let served = tokio::spawn(async move { serve_h2c(proxy_end, &ctx, app, false).await });
    (client, served)
}

/// The types of the HTTP/2 frames in `bytes` (RFC 9113 §4.1: 24-bit length, then the type).
fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let length = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        types.push(bytes[3]);
        bytes = &bytes[(9 + length).min(bytes.len())..];
    }
    types
}

const GOAWAY: u8 = 0x7;

#[tokio::test]
async fn an_h2c_connection_that_opens_no_stream_gets_a_goaway_and_is_closed_after_the_first_request_timeout() {
    let (app, _) = h2_app(SHORT).await;
    let (client, served) = start_h2c(timed(Duration::from_secs(3600), SHORT), app);
    let mut client = Wire::new(client);
    let started = Instant::now();
    // The preface and an empty SETTINGS frame, then nothing: not even the acknowledgement of the
    // proxy's SETTINGS or of the PING that follows its GOAWAY.
    client.send(PREFACE).await;
    client.send([0, 0, 0, 0x4, 0, 0, 0, 0, 0]).await;
    let received = client.rest().await;
    let elapsed = started.elapsed();
    assert!(elapsed >= SHORT, "closed after {elapsed:?}, before the first-request timeout");
    assert!(elapsed < Duration::from_secs(3), "closed after {elapsed:?}: the idle hour was not what applied");
    assert!(frame_types(&received).contains(&GOAWAY), "no GOAWAY among frames {:?}", frame_types(&received));
    tokio::time::timeout(PATIENCE, served).await.expect("the proxy let go").expect("no panic").expect("served");
}

#[tokio::test]
async fn an_h2c_connection_idle_after_its_requests_is_closed_after_the_idle_timeout() {
    let (app, _) = h2_app(SHORT).await;
    let idle = Duration::from_millis(300);
    let (client, served) = start_h2c(timed(idle, Duration::from_millis(100)), app);
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client)).await.expect("handshake");
    let connection = tokio::spawn(connection);
    let request = hyper::Request::get("http://app/").body(Full::new(Bytes::new())).expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(&response.into_body().collect().await.expect("body").to_bytes()[..], b"ok");
    // The idle timer started when the proxy had sent the response, a little before this.
    let answered = Instant::now();
    tokio::time::timeout(PATIENCE, connection).await.expect("the idle connection was closed").expect("no panic").ok();
    let elapsed = answered.elapsed();
    assert!(elapsed >= idle / 2, "closed after {elapsed:?}, before the idle timeout");
    // The client may close before the proxy's last frame is out (a broken pipe): it is over either way.
    let _ = tokio::time::timeout(PATIENCE, served).await.expect("the proxy let go").expect("no panic");
}

#[tokio::test]
async fn an_h2c_stream_slower_than_the_idle_timeout_is_not_cut_and_the_connection_closes_after_it() {
    // The app takes 3 idle periods to answer, then 3 more to send its body.
    let idle = Duration::from_millis(100);
    let (app, _) = h2_app(3 * idle).await;
    let (client, served) = start_h2c(timed(idle, idle), app);
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client)).await.expect("handshake");
    let connection = tokio::spawn(connection);
    let request = hyper::Request::get("http://app/slow").body(Full::new(Bytes::new())).expect("request");
    let response =
        tokio::time::timeout(PATIENCE, sender.send_request(request)).await.expect("in time").expect("response");
    assert_eq!(response.status(), 200);
    let body = tokio::time::timeout(PATIENCE, response.into_body().collect()).await.expect("in time");
    assert_eq!(&body.expect("the whole body").to_bytes()[..], b"one two three");
    tokio::time::timeout(PATIENCE, connection).await.expect("the idle connection was closed").expect("no panic").ok();
    // The client may close before the proxy's last frame is out (a broken pipe): it is over either way.
    let _ = tokio::time::timeout(PATIENCE, served).await.expect("the proxy let go").expect("no panic");
}

#[tokio::test]
async fn an_h2c_upload_that_outlasts_its_response_and_the_idle_timeout_is_not_cut() {
    let idle = Duration::from_millis(100);
    let (app, mut uploaded) = h2_app(idle).await;
    let (client, served) = start_h2c(timed(idle, idle), app);
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client)).await.expect("handshake");
    let connection = tokio::spawn(connection);
    let (parts, receiver) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(receiver));
    let request = hyper::Request::post("http://app/upload").body(body).expect("request");
    let response =
        tokio::time::timeout(PATIENCE, sender.send_request(request)).await.expect("in time").expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(&response.into_body().collect().await.expect("body").to_bytes()[..], b"ok");
    // The response is over; the upload goes on for 4 idle periods more.
    for _ in 0..4 {
        tokio::time::sleep(idle).await;
        parts.send(Ok(Frame::data(Bytes::from_static(b"0123456789")))).await.expect("the upload goes on");
    }
    drop(parts);
    let read = tokio::time::timeout(PATIENCE, uploaded.recv()).await.expect("in time").expect("a report");
    assert_eq!(read, 40, "the app got the whole upload");
    tokio::time::timeout(PATIENCE, connection).await.expect("the idle connection was closed").expect("no panic").ok();
    let _ = tokio::time::timeout(PATIENCE, served).await.expect("the proxy let go").expect("no panic");
}

#[tokio::test]
async fn an_h2c_connection_gets_a_goaway_when_the_proxy_shuts_down() {
    let (app, _) = h2_app(SHORT).await;
    let ctx = context(ALLOW_ALL);
    let shutdown = ctx.shutdown.clone();
    let (client, served) = start_h2c(ctx, app);
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client)).await.expect("handshake");
    let connection = tokio::spawn(connection);
    let request = hyper::Request::get("http://app/").body(Full::new(Bytes::new())).expect("request");
    assert_eq!(sender.send_request(request).await.expect("response").status(), 200);
    shutdown.cancel();
    tokio::time::timeout(PATIENCE, connection).await.expect("the connection was closed").expect("no panic").ok();
    // The client may close before the proxy's last frame is out (a broken pipe): it is over either way.
    let _ = tokio::time::timeout(PATIENCE, served).await.expect("the proxy let go").expect("no panic");
}

#[tokio::test]
async fn an_http1_connection_that_sends_nothing_is_closed_after_the_first_request_timeout_not_the_idle_hour() {
    let (app, _) = hyper_app();
    let (mut client, served) = start(timed(Duration::from_secs(3600), SHORT), &app);
    let started = Instant::now();
    assert!(client.rest().await.is_empty(), "closed without a word");
    assert!(started.elapsed() >= SHORT);
    client.finish().await;
    assert_eq!(finished(served).await.expect("served").requests, 0);
}

#[tokio::test]
async fn an_http1_keep_alive_connection_idle_after_a_request_is_closed_after_the_idle_timeout() {
    let (app, _) = hyper_app();
    let idle = Duration::from_millis(300);
    // A first-request timeout shorter than the idle one does not apply between requests.
    let (mut client, served) = start(timed(idle, Duration::from_millis(50)), &app);
    client.send("GET /a HTTP/1.1\r\nHost: app\r\n\r\n").await;
    let (head, body) = client.response().await;
    assert_eq!((status(&head), body.as_str()), ("200", "/a"));
    let answered = Instant::now();
    assert!(client.rest().await.is_empty(), "closed without a word");
    let elapsed = answered.elapsed();
    assert!(elapsed >= idle / 2, "closed after {elapsed:?}, before the idle timeout");
    client.finish().await;
    assert_eq!(finished(served).await.expect("served").requests, 1);
}

#[tokio::test]
async fn an_http1_response_slower_than_the_first_request_timeout_is_not_cut() {
    let (app, mut accepted) = scripted_app();
    tokio::spawn(async move {
        let mut app_side = Wire::new(accepted.recv().await.expect("a connection"));
        app_side.head().await;
        tokio::time::sleep(4 * SHORT).await;
        app_side.send("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow").await;
        app_side.rest().await
    });
    let (mut client, served) = start(timed(Duration::from_secs(3600), SHORT), &app);
    client.send("GET / HTTP/1.1\r\nHost: app\r\n\r\n").await;
    let (head, body) = client.response().await;
    assert_eq!((status(&head), body.as_str()), ("200", "slow"));
    client.finish().await;
    assert_eq!(finished(served).await.expect("served").requests, 1);
}
