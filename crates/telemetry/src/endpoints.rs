//! Small read-only HTTP endpoints: the proxy's health (15021, never behind mTLS or
//! authorization), Prometheus text (15020) and admin API (15000, localhost only), and the
//! control plane's admin and status API (15014). A route table maps a path to a response.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What an endpoint answers for a path; `None` is 404.
pub type Routes = Arc<dyn Fn(&str) -> Option<(StatusCode, &'static str, String)> + Send + Sync>;

/// Serve GET endpoints on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, routes: Routes, shutdown: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    continue;
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
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn respond(routes: &Routes, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = if request.method() != Method::GET {
        (StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET is served here\n".to_owned())
    } else {
        routes(request.uri().path()).unwrap_or((StatusCode::NOT_FOUND, "text/plain", "not found\n".to_owned()))
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}
