//! Inbound HTTP/2 (h2c, prior knowledge) at L7: every request on the connection is authorized
//! like an HTTP/1.1 one — same path normalization, same policy, same 403 — and allowed requests
//! are forwarded over one HTTP/2 connection to the app, with hyper's flow control on both legs.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use crate::admission::{Admitted, HttpAttributes, HttpProtocol, Refusal};
use crate::l7::{ConnectionContext, Timeouts, XFCC};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OnceCell;
use tokio::time::Instant;

/// The client connection preface that starts every HTTP/2 connection (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

type Body = BoxBody<Bytes, hyper::Error>;

fn local_reply(status: StatusCode, body: &'static str, headers: &[(&'static str, String)]) -> Response<Body> {
    let mut response =
        Response::new(Full::new(Bytes::from_static(body.as_bytes())).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(value) {
            response.headers_mut().insert(*name, value);
        }
    }
    response
}

/// A stream whose first bytes were already read (to detect the protocol): they are replayed
/// before the rest.
#[derive(Debug)]
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Rewind { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Read just enough of a new connection to tell HTTP/2 prior knowledge from HTTP/1.1; returns
/// what was read (to be replayed) and whether it is HTTP/2.
pub async fn sniff<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<(Bytes, bool)> {
    use tokio::io::AsyncReadExt as _;
    let mut seen = Vec::with_capacity(PREFACE.len());
    let mut byte = [0u8; 64];
    while seen.len() < PREFACE.len() {
        let want = PREFACE.len() - seen.len();
        let n = stream.read(&mut byte[..want]).await?;
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&byte[..n]);
        if !PREFACE.starts_with(&seen) {
            return Ok((Bytes::from(seen), false));
        }
    }
    let is_h2 = seen == PREFACE;
    Ok((Bytes::from(seen), is_h2))
}

struct Forwarder<C> {
    ctx: ConnectionContext,
    /// Opens the connection to the app, at the first allowed request.
    connect: C,
    sender: OnceCell<hyper::client::conn::http2::SendRequest<Body>>,
}

impl<C, Fut, U> Forwarder<C>
where
    C: Fn() -> Fut,
    Fut: Future<Output = std::io::Result<U>>,
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn sender(&self) -> std::io::Result<hyper::client::conn::http2::SendRequest<Body>> {
        let sender = self
            .sender
            .get_or_try_init(|| async {
                let stream = (self.connect)().await?;
                let (sender, connection) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                        .await
                        .map_err(std::io::Error::other)?;
                tokio::spawn(connection);
                Ok::<_, std::io::Error>(sender)
            })
            .await?;
        Ok(sender.clone())
    }

    /// `upload` counts the stream as open until the request body has gone to the app (or is
    /// dropped): it may go on after the response has ended.
    async fn handle(&self, request: Request<Incoming>, upload: StreamGuard) -> Response<Body> {
        let has_body = !hyper::body::Body::is_end_stream(request.body());
        let is_grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        // An authorizer that asks for the body gets it: its first frames are read ahead and
        // then sent on to the app before the rest.
        let (request, body) = match self.ctx.admission.body_limit() {
            Some(limit) if has_body => {
                let (parts, incoming) = request.into_parts();
                match read_ahead(incoming, limit).await {
                    Ok((read, rebuilt)) => (Request::from_parts(parts, rebuilt), Some(read)),
                    Err(_) => return local_reply(StatusCode::BAD_REQUEST, "Bad Request", &[]),
                }
            }
            _ => (request.map(http_body_util::BodyExt::boxed), None),
        };
        let mut request = request.map(|body| Tracked { body, _stream: upload }.boxed());
        if request.method() == http::Method::CONNECT {
            // As on HTTP/1.1: Istio's inbound listener enables no CONNECT or upgrades but
            // WebSocket, so Envoy answers 403 `upgrade_failed` — never a tunnel policy saw as `/`.
            return local_reply(StatusCode::FORBIDDEN, "upgrade_failed", &[]);
        }
        let raw = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let path = match zmesh_http::normalize_path(&raw, self.ctx.path_normalization) {
            Ok(path) => path.into_owned(),
            Err(error) => {
                return local_reply(
                    StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_REQUEST),
                    "Bad Request",
                    &[],
                );
            }
        };
        // One authority, decided on and forwarded: `:authority` when present (RFC 9113 §8.3.1
        // makes it win over `host`), else `host`. Any `host` header is dropped below and the
        // authority travels as `:authority` only, so the app cannot see another value than
        // the one policy matched.
        let host = request
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| request.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned))
            .unwrap_or_default();
        // The client's XFCC never reaches policy or the app: the proxy's own replaces it.
        let xfcc = crate::l7::xfcc_value(&self.ctx);
        // Header values that are not UTF-8 are matched as lossily decoded text, so a policy on
        // such a header can never be satisfied by bytes it cannot name.
        let mut owned: Vec<(String, String)> = request
            .headers()
            .iter()
            .filter(|(k, _)| *k != http::header::HOST && k.as_str() != XFCC)
            .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        if let Some(xfcc) = &xfcc {
            owned.push((XFCC.to_owned(), xfcc.clone()));
        }
        let headers: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let attributes = HttpAttributes {
            method: request.method().as_str(),
            authority: &host,
            path: &path,
            original_path: &raw,
            headers: &headers,
            body: body.as_deref(),
            has_body,
            protocol: HttpProtocol::Http2,
        };
        let edits = match self.ctx.admission.admit(&self.ctx, &attributes).await {
            Admitted::Forward(edits) => edits,
            Admitted::Refuse(refusal) => return refusal_reply(refusal, is_grpc),
        };
        let mut parts = request.uri().clone().into_parts();
        if let Ok(uri) = http::Uri::builder().path_and_query(path.as_str()).build() {
            parts.path_and_query = uri.into_parts().path_and_query;
        }
        if parts.authority.is_none() && !host.is_empty() {
            parts.authority = host.parse().ok();
            parts.scheme.get_or_insert(http::uri::Scheme::HTTP);
        }
        match http::Uri::from_parts(parts) {
            Ok(rebuilt) => *request.uri_mut() = rebuilt,
            Err(_) => return local_reply(StatusCode::BAD_REQUEST, "Bad Request", &[]),
        }
        let headers = request.headers_mut();
        headers.remove(http::header::HOST);
        headers.remove(XFCC);
        for name in &edits.remove {
            headers.remove(name.as_str());
        }
        for (name, value) in &edits.set {
            if let (Ok(name), Ok(value)) = (http::HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value))
            {
                headers.insert(name, value);
            }
        }
        for (name, value) in &edits.append {
            if let (Ok(name), Ok(value)) = (http::HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value))
            {
                headers.append(name, value);
            }
        }
        if let Some(value) = xfcc.and_then(|xfcc| HeaderValue::from_str(&xfcc).ok()) {
            headers.insert(XFCC, value);
        }
        let mut sender = match self.sender().await {
            Ok(sender) => sender,
            Err(_) => return local_reply(StatusCode::SERVICE_UNAVAILABLE, "upstream connect error", &[]),
        };
        match sender.send_request(request).await {
            Ok(mut response) => {
                for (name, value) in &edits.response_set {
                    if let (Ok(name), Ok(value)) =
                        (http::HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value))
                    {
                        response.headers_mut().insert(name, value);
                    }
                }
                response.map(http_body_util::BodyExt::boxed)
            }
            Err(_) => local_reply(StatusCode::SERVICE_UNAVAILABLE, "upstream reset", &[]),
        }
    }
}

/// The first `limit` bytes of a request body (or all of it), and the whole body again — the
/// frames read, then the rest as it arrives — to send on.
async fn read_ahead(mut incoming: Incoming, limit: usize) -> Result<(Vec<u8>, Body), hyper::Error> {
    let mut frames = Vec::new();
    let mut read = Vec::new();
    let mut ended = false;
    while read.len() < limit {
        match incoming.frame().await {
            Some(frame) => {
                let frame = frame?;
                if let Some(data) = frame.data_ref() {
                    read.extend_from_slice(data);
                }
                frames.push(Ok(frame));
            }
            None => {
                ended = true;
                break;
            }
        }
    }
    read.truncate(limit);
    let replay = tokio_stream::iter(frames);
    let body = if ended {
        http_body_util::StreamBody::new(replay).boxed()
    } else {
        use tokio_stream::StreamExt as _;
        http_body_util::StreamBody::new(replay.chain(http_body_util::BodyStream::new(incoming))).boxed()
    };
    Ok((read, body))
}

/// A refusal from admission as an HTTP/2 response. To a gRPC request it is a gRPC error, as
/// Envoy sends its local replies: HTTP 200, trailers-only, the refusal's status mapped to a
/// gRPC status (401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 429 UNAVAILABLE, …) and its body as
/// `grpc-message`, so gRPC clients see a status rather than a transport failure.
fn refusal_reply(refusal: Refusal, grpc: bool) -> Response<Body> {
    let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::FORBIDDEN);
    let mut response = if grpc {
        let mut response = Response::new(http_body_util::Empty::new().map_err(|never| match never {}).boxed());
        let headers = response.headers_mut();
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", HeaderValue::from(grpc_status(status.as_u16())));
        if let Ok(message) = HeaderValue::from_str(&percent_encode(&refusal.body)) {
            headers.insert("grpc-message", message);
        }
        response
    } else {
        let mut response = Response::new(Full::new(refusal.body.clone()).map_err(|never| match never {}).boxed());
        *response.status_mut() = status;
        response
    };
    for (name, value) in &refusal.headers {
        let framing = ["content-length", "transfer-encoding", "connection", "content-type"]
            .iter()
            .any(|f| name.eq_ignore_ascii_case(f) && (grpc || *f != "content-type"));
        if framing {
            continue;
        }
        if let (Ok(name), Ok(value)) = (http::HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

/// Envoy's mapping of an HTTP status to a gRPC status code (`Grpc::Utility::httpToGrpcStatus`).
fn grpc_status(http: u16) -> u16 {
    match http {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// `grpc-message` is percent-encoded (the gRPC HTTP/2 protocol): bytes outside printable ASCII,
/// and `%` itself.
fn percent_encode(text: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for &byte in text {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The streams of one connection: how many are open, and since when none is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Activity {
    open: usize,
    /// When the last stream ended, or the connection began.
    idle_since: Instant,
    /// Whether any stream has been opened.
    served: bool,
}

impl Activity {
    fn new(now: Instant) -> Self {
        Activity { open: 0, idle_since: now, served: false }
    }

    /// When the connection, as it is now, has been idle too long: `None` while a stream is
    /// open (a slow request or response is never cut by the idle timer).
    fn idle_deadline(&self, timeouts: &Timeouts) -> Option<Instant> {
        (self.open == 0).then(|| self.idle_since + timeouts.wait_for_request(u64::from(self.served)))
    }
}

#[derive(Debug)]
struct Streams(Mutex<Activity>);

impl Streams {
    fn activity(&self) -> Activity {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn open(self: &Arc<Self>) -> StreamGuard {
        let mut activity = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        activity.open += 1;
        activity.served = true;
        StreamGuard(self.clone())
    }
}

/// Held while a stream is in progress: by its handler, then by its response body until hyper
/// has sent all of it or the stream is reset (and a second one by its request body).
#[derive(Debug)]
struct StreamGuard(Arc<Streams>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut activity = self.0.0.lock().unwrap_or_else(PoisonError::into_inner);
        activity.open = activity.open.saturating_sub(1);
        if activity.open == 0 {
            activity.idle_since = Instant::now();
        }
    }
}

/// A request or response body that keeps its stream counted as open until it is dropped.
#[derive(Debug)]
struct Tracked {
    body: Body,
    _stream: StreamGuard,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Serve one HTTP/2 (h2c) downstream connection until it closes.
///
/// A connection with no stream open for `ctx.timeouts.idle` (`first_request` before its first
/// stream) is sent a GOAWAY, as is every connection when `ctx.shutdown` is cancelled; streams
/// already open finish. Once none is left, a client that has not closed within
/// `ctx.timeouts.drain` is disconnected.
pub async fn serve_h2c<S>(
    stream: S,
    ctx: &ConnectionContext,
    upstream: SocketAddr,
    marked: bool,
) -> Result<(), hyper::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_h2c_with(stream, ctx, move || crate::net::connect(upstream, marked)).await
}

/// [`serve_h2c`] with the connection to the app opened by `connect` (called at the first
/// allowed request) instead of a TCP connect: what drives one connection over in-memory
/// streams, as the fuzz targets do. Not part of the proxy's API.
#[doc(hidden)]
pub async fn serve_h2c_with<S, C, Fut, U>(stream: S, ctx: &ConnectionContext, connect: C) -> Result<(), hyper::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::io::Result<U>> + Send,
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let timeouts = ctx.timeouts;
    let streams = Arc::new(Streams(Mutex::new(Activity::new(Instant::now()))));
    let forwarder = Arc::new(Forwarder { ctx: ctx.clone(), connect, sender: OnceCell::new() });
    let counter = streams.clone();
    let service = hyper::service::service_fn(move |request| {
        let forwarder = forwarder.clone();
        let (stream, upload) = (counter.open(), counter.open());
        async move {
            let response = forwarder.handle(request, upload).await;
            Ok::<_, std::convert::Infallible>(response.map(|body| Tracked { body, _stream: stream }))
        }
    });
    let connection =
        hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    loop {
        // While a stream is open there is no deadline: look again one idle period later.
        let wake = streams.activity().idle_deadline(&timeouts).unwrap_or_else(|| Instant::now() + timeouts.idle);
        tokio::select! {
            result = connection.as_mut() => return result,
            () = ctx.shutdown.cancelled() => {
                tracing::debug!("HTTP/2 connection drains: the proxy is shutting down");
                break;
            }
            () = tokio::time::sleep_until(wake) => {
                if streams.activity().idle_deadline(&timeouts).is_some_and(|deadline| deadline <= Instant::now()) {
                    tracing::debug!("HTTP/2 connection closes: idle");
                    break;
                }
            }
        }
    }
    // GOAWAY: the client opens no more streams here, and those open finish.
    connection.as_mut().graceful_shutdown();
    loop {
        tokio::select! {
            result = connection.as_mut() => return result,
            () = tokio::time::sleep(timeouts.drain) => {
                if streams.activity().open == 0 {
                    tracing::debug!("HTTP/2 connection dropped: its client did not close after the GOAWAY");
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_grpc_request_gets_a_grpc_status_as_envoy_sends_it() {
        let refusal = Refusal::rbac(None);
        let response = refusal_reply(refusal.clone(), true);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["grpc-status"], "7");
        assert_eq!(response.headers()["grpc-message"], "RBAC: access denied");
        assert_eq!(response.headers()["content-type"], "application/grpc");
        assert_eq!(response.headers()["x-zmesh-policy"], "none");
        let plain = refusal_reply(refusal, false);
        assert_eq!(plain.status(), StatusCode::FORBIDDEN);
        assert_eq!(plain.headers()["content-type"], "text/plain");
        assert_eq!([grpc_status(401), grpc_status(429), grpc_status(418)], [16, 14, 2]);
        assert_eq!(percent_encode(b"50% \xff"), "50%25 %FF");
    }

    #[test]
    fn a_connection_is_idle_only_while_no_stream_is_open_and_sooner_before_its_first() {
        let timeouts = Timeouts {
            idle: std::time::Duration::from_secs(60),
            first_request: std::time::Duration::from_secs(5),
            ..Timeouts::default()
        };
        let start = Instant::now();
        let fresh = Activity::new(start);
        assert_eq!(fresh.idle_deadline(&timeouts), Some(start + timeouts.first_request));
        let busy = Activity { open: 1, served: true, ..fresh };
        assert_eq!(busy.idle_deadline(&timeouts), None);
        let later = start + std::time::Duration::from_secs(100);
        let served = Activity { open: 0, idle_since: later, served: true };
        assert_eq!(served.idle_deadline(&timeouts), Some(later + timeouts.idle));
        let short_idle = Timeouts { idle: std::time::Duration::from_secs(1), ..timeouts };
        assert_eq!(fresh.idle_deadline(&short_idle), Some(start + short_idle.idle), "never later than idle");
    }

    #[tokio::test]
    async fn the_preface_is_recognised_and_replayed() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, PREFACE).await.unwrap();
        let (seen, is_h2) = sniff(&mut server).await.unwrap();
        assert!(is_h2);
        assert_eq!(&seen[..], PREFACE);
    }

    #[tokio::test]
    async fn http1_is_recognised_and_every_byte_read_is_replayed() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"POST /x HTTP/1.1\r\n").await.unwrap();
        let (seen, is_h2) = sniff(&mut server).await.unwrap();
        assert!(!is_h2);
        assert!(b"POST /x HTTP/1.1\r\n".starts_with(&seen));
        let mut rewound = Rewind::new(seen, server);
        let mut line = [0u8; 18];
        tokio::io::AsyncReadExt::read_exact(&mut rewound, &mut line).await.unwrap();
        assert_eq!(&line, b"POST /x HTTP/1.1\r\n");
    }
}
