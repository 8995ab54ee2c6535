//! The inbound HBONE server (`zmesh_proxy::hbone::serve`, the real one, mutual TLS and all on
//! 127.0.0.1) fed any HTTP/2 bytes from an authenticated peer: any request heads (method,
//! authority, baggage, forwarded and other headers), frames and stream states. Never panics,
//! always closes once the peer has closed, and:
//! - the admission hook only ever sees a usable target (an `ip:port` with a port and an address
//!   that is not `0.0.0.0`/`::`) and the peer's proven identity;
//! - only a tunnel that admission let through is ever served.
//!
//! Input: the first byte's low bit says whether the client preface goes first; the rest is
//! what the peer sends inside TLS.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use zmesh_proxy::hbone::{Refusal, ServeFuture, ServerLimits, TunnelHandler, TunnelRequest, TunnelStream};

const MAX_INPUT: usize = 64 * 1024;

/// The one target admission lets through.
const ALLOWED: &str = "10.0.0.7:8080";

/// Admits [`ALLOWED`] only, and records whatever it should never have been asked.
struct Gate {
    peer: zmesh_id::SpiffeId,
    allowed: SocketAddr,
    violations: Mutex<Vec<String>>,
}

impl Gate {
    fn violation(&self, what: String) {
        self.violations.lock().expect("not poisoned").push(what);
    }
}

impl TunnelHandler for Gate {
    fn admit(&self, request: &TunnelRequest) -> Result<(), Refusal> {
        if request.target.port() == 0 || request.target.ip().is_unspecified() {
            self.violation(format!("admission asked about an unusable target {}", request.target));
        }
        if request.peer != self.peer {
            self.violation(format!("admission told the peer is {}", request.peer));
        }
        if request.target == self.allowed { Ok(()) } else { Err(Refusal::forbidden(format!("only {ALLOWED}"))) }
    }

    fn serve(&self, request: TunnelRequest, mut stream: TunnelStream) -> ServeFuture<'_> {
        Box::pin(async move {
            if request.target != self.allowed {
                self.violation(format!("a tunnel to {} was served", request.target));
            }
            // The app: reads the tunnel until it ends.
            let mut sink = [0u8; 4096];
            while let Ok(1..) = stream.read(&mut sink).await {}
        })
    }
}

struct Harness {
    runtime: tokio::runtime::Runtime,
    server: SocketAddr,
    client: tokio_rustls::TlsConnector,
    gate: Arc<Gate>,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        // A write to a connection the server has closed must be an error, as in the proxy
        // (Rust's runtime ignores SIGPIPE before `main`), not a signal that ends the process:
        // the fuzzer's `main` is libFuzzer's.
        // SAFETY: setting a signal's disposition to "ignore" touches no memory of ours.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        // Certificates are checked against the system clock by the TLS stack.
        let now = SystemTime::now();
        let rng = ring::rand::SystemRandom::new();
        let dir = std::env::temp_dir().join(format!("zmesh-fuzz-hbone-ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let server_id: zmesh_id::SpiffeId = "spiffe://cluster.local/ns/foo/sa/httpbin".parse().expect("an ID");
        let client_id: zmesh_id::SpiffeId = "spiffe://cluster.local/ns/bar/sa/sleep".parse().expect("an ID");
        let config = zmesh_ca::CaConfig::new(server_id.trust_domain().clone());
        let (ca, _) = zmesh_ca::CertificateAuthority::open_or_create(&dir, config, now, &rng).expect("a fresh CA");
        let _ = std::fs::remove_dir_all(&dir);
        let store = |id: &zmesh_id::SpiffeId| {
            let (svid, key) = ca.issue_with_new_key(id, None, now, &rng).expect("an SVID");
            let identity = zmesh_tls::Identity::from_pem(&svid.chain_pem, key.expose()).expect("the SVID loads");
            let domains = zmesh_tls::TrustDomains::new(id.trust_domain().clone());
            let bundle = zmesh_tls::TrustBundle::from_pem(ca.trust_bundle_pem(), domains).expect("the bundle loads");
            Arc::new(zmesh_tls::CertStore::new(identity, bundle))
        };
        let options = zmesh_tls::TlsOptions::default();
        let server_tls = zmesh_tls::server_config(store(&server_id), &options);
        let expected = zmesh_tls::ExpectedPeers::new([server_id.clone()]);
        let client = tokio_rustls::TlsConnector::from(zmesh_tls::client_config(store(&client_id), expected, &options));
        let gate = Arc::new(Gate {
            peer: client_id,
            allowed: ALLOWED.parse().expect("an address"),
            violations: Mutex::new(Vec::new()),
        });
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("a runtime");
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("a loopback port");
        let server = listener.local_addr().expect("a bound address");
        let handler: Arc<dyn TunnelHandler> = gate.clone();
        let shutdown = tokio_util::sync::CancellationToken::new();
        runtime.spawn(zmesh_proxy::hbone::serve(listener, server_tls, handler, ServerLimits::default(), shutdown));
        Harness { runtime, server, client, gate }
    })
}

/// A PING the client sends after its bytes: the server acknowledges it once it has handled
/// every frame before it (HTTP/2 frames are processed in order), so the client then knows it
/// has had its answers and closes — as a real peer would only after its tunnels are done.
const PING: &[u8] = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00zmeshfz!";
const PING_ACK: &[u8] = b"\x00\x00\x08\x06\x01\x00\x00\x00\x00zmeshfz!";

async fn one_connection(harness: &Harness, bytes: &[u8]) {
    let tcp = tokio::net::TcpStream::connect(harness.server).await.expect("the server listens");
    let name = rustls::pki_types::ServerName::IpAddress(harness.server.ip().into());
    let tls = harness.client.connect(name, tcp).await.expect("the mTLS handshake succeeds");
    let (mut reader, mut writer) = tokio::io::split(tls);
    let answered = tokio::sync::Notify::new();
    let write = async {
        let _ = writer.write_all(bytes).await;
        let _ = writer.write_all(PING).await;
        let _ = writer.flush().await;
        // Bytes that leave a frame unfinished swallow the PING: then 25 quiet ms will do.
        let _ = tokio::time::timeout(Duration::from_millis(25), answered.notified()).await;
        let _ = writer.shutdown().await;
    };
    let read = async {
        let mut seen = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = reader.read(&mut chunk).await {
            seen.extend_from_slice(&chunk[..n]);
            if seen.windows(PING_ACK.len()).any(|w| w == PING_ACK) {
                answered.notify_one();
            }
            // Only the tail can still begin an acknowledgement.
            let keep = seen.len().saturating_sub(PING_ACK.len());
            seen.drain(..keep);
        }
    };
    tokio::join!(write, read);
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
    let harness = harness();
    let finished = harness
        .runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), one_connection(harness, &bytes)).await });
    assert!(finished.is_ok(), "the HBONE connection was still open 10 s after the peer closed");
    let violations = harness.gate.violations.lock().expect("not poisoned");
    assert!(violations.is_empty(), "{violations:?}");
});
