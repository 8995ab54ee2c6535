//! Shared by the `l7_*` tests (each includes it with `mod l7_support;`): a connection context
//! from policy YAML, fake apps behind in-memory connections, and a byte-level client.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use zmesh_http::{Limits, PathNormalization};
use zmesh_policy::{PolicySet, Workload};
use zmesh_proxy::admission::Admission;
use zmesh_proxy::l7::{ConnectionContext, ConnectionStats, L7Error, Timeouts, serve_http1};

/// Long enough for any in-memory exchange; a test that hits it has hung.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// In-memory pipes hold this much before a writer waits: small enough that a body that is not
/// streamed would block, large enough to be quick.
pub const PIPE: usize = 64 * 1024;

/// A workload `default/app` (label `app: app`) under `policies`, for a plaintext peer.
pub fn context(policies: &str) -> ConnectionContext {
    let loaded = zmesh_config::load_str(policies);
    assert!(!loaded.has_errors(), "policies do not load: {:?}", loaded.errors().next());
    let workload = Workload {
        namespace: "default".into(),
        labels: [("app".to_owned(), "app".to_owned())].into(),
        service_account: "default".into(),
    };
    ConnectionContext {
        admission: Arc::new(Admission::policy_only(Arc::new(
            PolicySet::compile(&loaded.config).for_workload(&workload),
        ))),
        rate_limits: Arc::from([]),
        peer: None,
        local_identity: None,
        source: "10.0.0.1:40000".parse().expect("address"),
        destination: "10.0.0.2:8080".parse().expect("address"),
        path_normalization: PathNormalization::Base,
        limits: Limits::default(),
        timeouts: Timeouts::default(),
        shutdown: CancellationToken::new(),
    }
}

/// Allows everything: no policy applies.
pub const ALLOW_ALL: &str = "";

/// Denies `/admin*` and allows the rest.
pub const DENY_ADMIN: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec: {action: DENY, rules: [{to: [{operation: {paths: [\"/admin*\"]}}]}]}
";

/// Connections to the app: each `connect` makes an in-memory pipe and hands the app's end
/// to whoever serves it.
#[derive(Debug, Clone)]
pub struct Connector {
    sender: mpsc::UnboundedSender<DuplexStream>,
    pub connects: Arc<AtomicUsize>,
}

impl Connector {
    pub fn connect(&self) -> impl Future<Output = std::io::Result<DuplexStream>> + Send + 'static {
        let this = self.clone();
        async move {
            let (proxy_end, app_end) = tokio::io::duplex(PIPE);
            this.connects.fetch_add(1, Ordering::SeqCst);
            this.sender.send(app_end).map_err(|_| std::io::Error::other("the fake app has stopped"))?;
            Ok(proxy_end)
        }
    }

    pub fn connects(&self) -> usize {
        self.connects.load(Ordering::SeqCst)
    }
}

/// An app the test scripts byte by byte: each accepted connection arrives on the receiver.
pub fn scripted_app() -> (Connector, mpsc::UnboundedReceiver<DuplexStream>) {
    let (sender, receiver) = mpsc::unbounded_channel();
    (Connector { sender, connects: Arc::new(AtomicUsize::new(0)) }, receiver)
}

/// What a hyper app received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
}

/// A real HTTP/1.1 server (hyper) as the app, so what the proxy forwards is also checked by an
/// independent parser. It answers `200` with the request-target as the body.
pub fn hyper_app() -> (Connector, Arc<Mutex<Vec<Seen>>>) {
    let (connector, mut accepted) = scripted_app();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = seen.clone();
    tokio::spawn(async move {
        while let Some(stream) = accepted.recv().await {
            let recorder = recorder.clone();
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let recorder = recorder.clone();
                async move {
                    let target = request.uri().path_and_query().map(|target| target.as_str().to_owned());
                    let target = target.unwrap_or_else(|| request.uri().to_string());
                    let method = request.method().to_string();
                    let headers = request
                        .headers()
                        .iter()
                        .map(|(name, value)| (name.to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
                        .collect();
                    let body_len = request.into_body().collect().await.map_or(0, |body| body.to_bytes().len());
                    recorder.lock().expect("recorder").push(Seen { method, target: target.clone(), headers, body_len });
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(target))))
                }
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    (connector, seen)
}

/// Starts the proxy on one in-memory connection and returns the client's end.
pub fn start(ctx: ConnectionContext, connector: &Connector) -> (Wire, JoinHandle<Result<ConnectionStats, L7Error>>) {
    let (client, proxy_end) = tokio::io::duplex(PIPE);
    let connector = connector.clone();
    let served = tokio::spawn(async move { serve_http1(proxy_end, &ctx, || connector.connect()).await });
    (Wire::new(client), served)
}

/// The proxy's result, once the connection has ended.
pub async fn finished(served: JoinHandle<Result<ConnectionStats, L7Error>>) -> Result<ConnectionStats, L7Error> {
    tokio::time::timeout(PATIENCE, served).await.expect("the connection did not end").expect("the proxy task panicked")
}

/// One end of a connection, read as bytes.
#[derive(Debug)]
pub struct Wire {
    pub stream: DuplexStream,
    buf: Vec<u8>,
}

impl Wire {
    pub fn new(stream: DuplexStream) -> Self {
        Self { stream, buf: Vec::new() }
    }

    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream.write_all(bytes.as_ref()).await.expect("write");
    }

    /// Closes the writing half, as a client does once it has sent everything.
    pub async fn finish(&mut self) {
        self.stream.shutdown().await.expect("shutdown");
    }

    async fn fill(&mut self) -> usize {
        let mut chunk = [0; 8192];
        let read = tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk))
            .await
            .expect("nothing arrived in time")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..read]);
        read
    }

    /// Everything up to and including `pattern`; panics if the stream ends first.
    pub async fn until(&mut self, pattern: &[u8]) -> Vec<u8> {
        loop {
            if let Some(at) = self.buf.windows(pattern.len()).position(|window| window == pattern) {
                return self.buf.drain(..at + pattern.len()).collect();
            }
            if self.fill().await == 0 {
                panic!("stream ended before {:?}; got {:?}", text(pattern), text(&self.buf));
            }
        }
    }

    pub async fn head(&mut self) -> String {
        text(&self.until(b"\r\n\r\n").await)
    }

    pub async fn exactly(&mut self, len: usize) -> Vec<u8> {
        while self.buf.len() < len {
            if self.fill().await == 0 {
                panic!("stream ended after {} of {len} bytes", self.buf.len());
            }
        }
        self.buf.drain(..len).collect()
    }

    /// A response head and its Content-Length body.
    pub async fn response(&mut self) -> (String, String) {
        let head = self.head().await;
        let length = header(&head, "content-length").map_or(0, |length| length.parse().expect("content-length"));
        let body = self.exactly(length).await;
        (head, text(&body))
    }

    /// Everything until the peer closes.
    pub async fn rest(&mut self) -> Vec<u8> {
        while self.fill().await > 0 {}
        std::mem::take(&mut self.buf)
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A header's value in a head, by case-insensitive name.
pub fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (field, value) = line.split_once(':')?;
        field.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

pub fn status(head: &str) -> &str {
    head.split(' ').nth(1).unwrap_or_default()
}
