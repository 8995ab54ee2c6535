//! The inbound h2c server, fed any bytes (after a valid client preface, or raw) over an
//! in-memory stream, with an app behind it that answers every request and a DENY policy in
//! force. Never panics, finishes as soon as the client has sent its bytes and closed, and no
//! request the policy denies ever reaches the app — nor a `host` or client-sent
//! `x-forwarded-client-cert` header (the proxy drops both).
//!
//! Input: the first byte's low bit says whether the client preface goes first; the rest is
//! what the client sends.
#![no_main]

use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use zmesh_proxy::l7::ConnectionContext;

const MAX_INPUT: usize = 64 * 1024;

const POLICY: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-admin
  namespace: foo
spec:
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/admin*"]
  - to:
    - operation:
        methods: ["DELETE"]
"#;

fn context() -> &'static ConnectionContext {
    static CONTEXT: OnceLock<ConnectionContext> = OnceLock::new();
    CONTEXT.get_or_init(|| {
        let loaded = zmesh_config::load_str(POLICY);
        assert!(!loaded.has_errors(), "the fixed policy loads: {:?}", loaded.diagnostics);
        let set = zmesh_policy::PolicySet::compile(&loaded.config);
        let workload = zmesh_policy::Workload {
            namespace: "foo".into(),
            labels: [("app".to_owned(), "httpbin".to_owned())].into(),
            service_account: "httpbin".into(),
        };
        let admission = zmesh_proxy::admission::Admission::policy_only(Arc::new(set.for_workload(&workload)));
        ConnectionContext {
            rate_limits: admission.connection_limits(),
            admission: Arc::new(admission),
            peer: None,
            local_identity: None,
            source: "127.0.0.1:40000".parse().expect("a literal address"),
            destination: "127.0.0.1:8080".parse().expect("a literal address"),
            path_normalization: zmesh_http::PathNormalization::Base,
            limits: zmesh_http::Limits::default(),
            timeouts: zmesh_proxy::l7::Timeouts::default(),
            shutdown: tokio_util::sync::CancellationToken::new(),
        }
    })
}

/// What the app saw that it never should have.
type Violations = Arc<Mutex<Vec<String>>>;

fn check_at_app(request: &http::Request<Incoming>) -> Option<String> {
    let path = request.uri().path();
    if request.method() == http::Method::DELETE || path.starts_with("/admin") {
        return Some(format!("denied request reached the app: {} {}", request.method(), request.uri()));
    }
    for name in ["host", "x-forwarded-client-cert"] {
        if request.headers().contains_key(name) {
            return Some(format!("`{name}` reached the app: {:?}", request.headers()));
        }
    }
    None
}

/// The app: an HTTP/2 server on the far end of an in-memory stream that answers 200 to all.
async fn app(stream: tokio::io::DuplexStream, violations: Violations) {
    let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
        if let Some(violation) = check_at_app(&request) {
            violations.lock().expect("not poisoned").push(violation);
        }
        async { Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"hello from the app")))) }
    });
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn one_connection(bytes: Vec<u8>, violations: Violations) {
    let (mut client, server) = tokio::io::duplex(16 * 1024);
    let app_violations = violations.clone();
    let connect = move || {
        let violations = app_violations.clone();
        async move {
            let (proxy_side, app_side) = tokio::io::duplex(16 * 1024);
            tokio::spawn(app(app_side, violations));
            Ok::<_, std::io::Error>(proxy_side)
        }
    };
    let ctx = context();
    let serve = zmesh_proxy::http2::serve_h2c_with(server, ctx, connect);
    let talk = async move {
        let (mut reader, mut writer) = tokio::io::split(&mut client);
        // A client waits for its answers before it closes: the client closes only once nothing
        // has moved for a second (time is paused, so that second passes exactly when every
        // task waits), and reads all the while, so that a server writing to it never blocks.
        let quiet = tokio::sync::Notify::new();
        let write = async {
            tokio::select! {
                _ = writer.write_all(&bytes) => {}
                () = quiet.notified() => {}
            }
            quiet.notified().await;
            let _ = writer.shutdown().await;
        };
        let read = async {
            let mut sink = [0u8; 4096];
            loop {
                match tokio::time::timeout(Duration::from_secs(1), reader.read(&mut sink)).await {
                    Ok(Ok(1..)) => {}
                    Ok(_) => break,
                    Err(_) => quiet.notify_one(),
                }
            }
            // Closed by the server: nothing more will come.
            quiet.notify_one();
        };
        tokio::join!(write, read);
    };
    // Time is paused: it only moves when every task waits, so this fires only on a stall. 20 s
    // is below every timeout of the connection (30 s for a first request, an hour idle): the
    // client's close must end the connection by itself, not a timer.
    let finished = tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(serve, talk) }).await;
    assert!(finished.is_ok(), "the h2c connection never finished after the client closed");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_INPUT {
        return;
    }
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut bytes = Vec::with_capacity(rest.len() + zmesh_proxy::http2::PREFACE.len());
    if mode & 1 == 1 {
        bytes.extend_from_slice(zmesh_proxy::http2::PREFACE);
    }
    bytes.extend_from_slice(rest);
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().expect("a runtime");
    let violations = Violations::default();
    runtime.block_on(one_connection(bytes, violations.clone()));
    drop(runtime);
    let violations = violations.lock().expect("not poisoned");
    assert!(violations.is_empty(), "{violations:?}");
});
