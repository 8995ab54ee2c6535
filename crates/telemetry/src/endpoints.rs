//! Small read-only HTTP endpoints: the proxy's health (15021, never behind mTLS or
//! authorization), Prometheus text (15020) and admin API (15000, localhost only), and the
//! control plane's admin and status API (15014). A route table maps a path to a response.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What an endpoint answers for a path; `None` is 404.
pub type Routes = Arc<dyn Fn(&str) -> Option<(StatusCode, &'static str, String)> + Send + Sync>;

/// What an endpoint answers for a path and its query string (without the `?`, empty when
/// there is none), for APIs that take parameters such as `?window=1h`.
pub type QueryRoutes = Arc<dyn Fn(&str, &str) -> Option<(StatusCode, &'static str, String)> + Send + Sync>;

/// How much one endpoint server takes on: it answers probes and scrapes, so a flood of idle or
/// slow connections must never take descriptors, memory or log volume from the rest of the
/// process.
#[derive(Debug, Clone, Copy)]
pub struct EndpointLimits {
    /// Connections served at once; further ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// From a connection's first byte to the end of its request head.
    pub header_read: Duration,
    /// How long a connection may live, kept alive or not.
    pub connection: Duration,
}

impl Default for EndpointLimits {
    fn default() -> Self {
        EndpointLimits { max_connections: 64, header_read: Duration::from_secs(5), connection: Duration::from_secs(30) }
    }
}

/// Serve GET endpoints on `listener` until `shutdown`, within [`EndpointLimits::default`].
pub async fn serve(listener: TcpListener, routes: Routes, shutdown: CancellationToken) {
    serve_with(listener, routes, EndpointLimits::default(), shutdown).await;
}

/// Serve GET endpoints on `listener` until `shutdown`, within `limits`. Accept errors (out of
/// descriptors, say) back off from 10 ms doubling to 1 s and are logged at most once a second,
/// so a flood cannot turn into a busy loop or a flood of logs.
pub async fn serve_with(listener: TcpListener, routes: Routes, limits: EndpointLimits, shutdown: CancellationToken) {
    let routes: QueryRoutes = Arc::new(move |path, _query| routes(path));
    serve_queries_with(listener, routes, limits, shutdown).await;
}

/// Serve GET endpoints that read the query string, within [`EndpointLimits::default`].
pub async fn serve_queries(listener: TcpListener, routes: QueryRoutes, shutdown: CancellationToken) {
    serve_queries_with(listener, routes, EndpointLimits::default(), shutdown).await;
}

/// As [`serve_with`], for routes that read the query string.
pub async fn serve_queries_with(
    listener: TcpListener,
    routes: QueryRoutes,
    limits: EndpointLimits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut backoff = Duration::ZERO;
    let mut last_warning: Option<Instant> = None;
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            () = shutdown.cancelled() => return,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    backoff = Duration::ZERO;
                    stream
                }
                Err(error) => {
                    backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                    if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(%error, retry_in = ?backoff, "endpoint accept failed");
                        last_warning = Some(Instant::now());
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => continue,
                        () = shutdown.cancelled() => return,
                    }
                }
            },
            () = shutdown.cancelled() => return,
        };
        let routes = routes.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let routes = routes.clone();
                async move { Ok::<_, Infallible>(respond(&routes, &request)) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(limits.connection, connection).await;
            drop(permit);
        });
    }
}

fn respond(routes: &QueryRoutes, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let uri = request.uri();
    let (status, content_type, body) = if request.method() != Method::GET {
        (StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET is served here\n".to_owned())
    } else {
        routes(uri.path(), uri.query().unwrap_or_default()).unwrap_or((
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ))
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    if content_type.starts_with("text/html") {
        // A page of values the mesh reports (names, labels, errors): no script, frame or
        // outside resource may run or load, whatever a value contains.
        headers.insert(
            http::header::CONTENT_SECURITY_POLICY,
            http::HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
        );
        headers.insert(http::header::X_CONTENT_TYPE_OPTIONS, http::HeaderValue::from_static("nosniff"));
    }
    response
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    fn health() -> Routes {
        Arc::new(|path| (path == "/healthz/ready").then(|| (StatusCode::OK, "text/plain", "ready\n".to_owned())))
    }

    async fn start(limits: EndpointLimits) -> (std::net::SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let shutdown = CancellationToken::new();
        tokio::spawn(serve_with(listener, health(), limits, shutdown.clone()));
        (addr, shutdown)
    }

    async fn get(addr: std::net::SocketAddr) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(b"GET /healthz/ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.expect("write");
        let mut response = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response)).await;
        response
    }

    #[tokio::test]
    async fn idle_connections_beyond_the_cap_wait_and_are_cut_when_their_head_never_comes() {
        let limits =
            EndpointLimits { max_connections: 2, header_read: Duration::from_millis(300), ..Default::default() };
        let (addr, shutdown) = start(limits).await;
        // Two idle connections take both slots: a probe waits for a slot rather than being served.
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            stream.write_all(b"GET /hea").await.expect("write");
            held.push(stream);
        }
        // The header timeout frees the slots, and the probe is answered.
        let response = get(addr).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response:?}");
        for mut stream in held {
            let mut rest = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
            assert!(read.is_ok(), "a slow-header connection was not closed");
        }
        shutdown.cancel();
    }

    #[tokio::test]
    async fn only_the_listed_paths_are_served() {
        let (addr, shutdown) = start(EndpointLimits::default()).await;
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(b"GET /config_dump HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        assert!(response.starts_with("HTTP/1.1 404"), "{response:?}");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn query_routes_see_the_query_string_and_html_gets_a_policy_that_runs_nothing() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let shutdown = CancellationToken::new();
        let routes: QueryRoutes = Arc::new(|path, query| {
            (path == "/page").then(|| (StatusCode::OK, "text/html; charset=utf-8", format!("query={query}")))
        });
        tokio::spawn(serve_queries(listener, routes, shutdown.clone()));
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(b"GET /page?window=1h HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        assert!(response.starts_with("HTTP/1.1 200"), "{response:?}");
        assert!(response.ends_with("query=window=1h"), "{response:?}");
        assert!(response.contains("content-security-policy: default-src 'none'"), "{response:?}");
        shutdown.cancel();
    }
}
