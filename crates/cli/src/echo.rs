//! `zmesh echo`: a small app for demos and tests. Over HTTP/1.1 or HTTP/2 (h2c) it answers
//! every request with a JSON description of what it received — method, path, headers
//! (including the `x-forwarded-client-cert` the proxy adds) and the peer address — so a caller
//! can see what reached the app. With `--tcp` it echoes bytes back.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

#[derive(Debug, clap::Args)]
pub(crate) struct EchoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Echo raw TCP bytes instead of speaking HTTP.
    #[arg(long)]
    tcp: bool,
    /// A name to put in every answer, to tell apps apart.
    #[arg(long, default_value = "echo")]
    name: String,
}

async fn describe(
    request: hyper::Request<Incoming>,
    peer: SocketAddr,
    name: String,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body_len = body.collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (k.as_str().to_owned(), serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
        })
        .collect();
    let description = serde_json::json!({
        "app": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        // HTTP/2's `:authority` (HTTP/1.1 sends the authority in the `host` header instead).
        "authority": parts.uri.authority().map(|a| a.as_str()),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "peer": peer.to_string(),
        "bodyBytes": body_len,
    });
    let mut response = hyper::Response::new(Full::new(Bytes::from(format!("{description}\n"))));
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    Ok(response)
}

pub(crate) fn echo(args: EchoArgs) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(args.listen).await?;
        eprintln!(
            "echo `{}` listening on {} ({})",
            args.name,
            listener.local_addr()?,
            if args.tcp { "tcp" } else { "http/1.1, h2c" }
        );
        loop {
            let (mut stream, peer) = listener.accept().await?;
            let name = args.name.clone();
            if args.tcp {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            } else {
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| describe(request, peer, name.clone()));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    })
}
