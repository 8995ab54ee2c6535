//! Shared fixture of the HBONE tests: a throwaway CA with SVID stores, an echo target, a tunnel
//! handler that records what it was asked, and a server on loopback.

#![allow(dead_code)] // each test binary uses a different part of the fixture

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use ring::rand::SystemRandom;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use zmesh_ca::{CaConfig, CertificateAuthority};
use zmesh_id::SpiffeId;
use zmesh_proxy::hbone::{
    ClientOptions, HboneClient, Refusal, ServeFuture, ServerLimits, TunnelHandler, TunnelRequest, TunnelStream,
};
use zmesh_testkit::TempDir;
use zmesh_tls::{CertStore, ExpectedPeers, TlsOptions, TrustBundle, TrustDomains};

/// A CA of its own; two `Pki`s do not trust each other.
pub struct Pki {
    _dir: TempDir,
    ca: CertificateAuthority,
    rng: SystemRandom,
}

impl Pki {
    pub fn new(label: &str) -> Pki {
        let dir = TempDir::new(label);
        let rng = SystemRandom::new();
        let config = CaConfig::new(Self::trust_domain());
        let (ca, _) = CertificateAuthority::open_or_create(&dir.path().join("ca"), config, SystemTime::now(), &rng)
            .expect("a CA in a fresh directory");
        Pki { _dir: dir, ca, rng }
    }

    fn trust_domain() -> zmesh_id::TrustDomain {
        "cluster.local".parse().expect("a valid trust domain")
    }

    pub fn id(service_account: &str) -> SpiffeId {
        format!("spiffe://cluster.local/ns/test/sa/{service_account}")
            .parse()
            .expect("test service accounts make valid IDs")
    }

    /// A store holding a new SVID for `service_account` and this CA's bundle.
    pub fn store(&self, service_account: &str) -> Arc<CertStore> {
        self.store_trusting(service_account, self)
    }

    /// A store holding a new SVID from this CA and the bundle of `trusted`.
    pub fn store_trusting(&self, service_account: &str, trusted: &Pki) -> Arc<CertStore> {
        let id = Self::id(service_account);
        let (svid, key) = self
            .ca
            .issue_with_new_key(&id, None, SystemTime::now(), &self.rng)
            .expect("the CA issues for its own domain");
        let identity = zmesh_tls::Identity::from_pem(&svid.chain_pem, key.expose()).expect("an issued SVID loads");
        let domains = TrustDomains::new(Self::trust_domain());
        let bundle = TrustBundle::from_pem(trusted.ca.trust_bundle_pem(), domains).expect("the CA's bundle loads");
        Arc::new(CertStore::new(identity, bundle))
    }
}

pub fn expect(service_account: &str) -> ExpectedPeers {
    ExpectedPeers::one(Pki::id(service_account))
}

/// A TCP server on loopback that sends back whatever it reads, until EOF.
pub async fn echo_target() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let addr = listener.local_addr().expect("a bound listener has an address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut reader, mut writer) = stream.split();
                if tokio::io::copy(&mut reader, &mut writer).await.is_ok() {
                    let _ = writer.shutdown().await;
                }
            });
        }
    });
    addr
}

/// Admits everything unless told to refuse; serves by copying to and from the target.
#[derive(Default)]
pub struct Recorder {
    pub refuse_with: Option<Refusal>,
    pub admitted: Mutex<Vec<TunnelRequest>>,
    pub served: AtomicUsize,
}

impl Recorder {
    pub fn refusing(refusal: Refusal) -> Arc<Recorder> {
        Arc::new(Recorder { refuse_with: Some(refusal), ..Recorder::default() })
    }

    pub fn requests(&self) -> Vec<TunnelRequest> {
        self.admitted.lock().expect("no test thread panicked holding the lock").clone()
    }

    /// How many mTLS connections the tunnels came over (one source address each).
    pub fn connections(&self) -> usize {
        self.requests().iter().map(|request| request.peer_addr).collect::<HashSet<_>>().len()
    }
}

impl TunnelHandler for Recorder {
    fn admit(&self, request: &TunnelRequest) -> Result<(), Refusal> {
        self.admitted.lock().expect("no test thread panicked holding the lock").push(request.clone());
        self.refuse_with.clone().map_or(Ok(()), Err)
    }

    fn serve(&self, request: TunnelRequest, mut stream: TunnelStream) -> ServeFuture<'_> {
        self.served.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let Ok(mut target) = TcpStream::connect(request.target).await else { return };
            let _ = tokio::io::copy_bidirectional(&mut stream, &mut target).await;
        })
    }
}

pub struct Server {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<io::Result<()>>,
}

pub async fn start_server(store: Arc<CertStore>, handler: Arc<Recorder>, limits: ServerLimits) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    start_server_on(listener, store, handler, limits)
}

pub fn start_server_on(
    listener: TcpListener,
    store: Arc<CertStore>,
    handler: Arc<Recorder>,
    limits: ServerLimits,
) -> Server {
    let addr = listener.local_addr().expect("a bound listener has an address");
    let tls = zmesh_tls::server_config(store, &TlsOptions::default());
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(zmesh_proxy::hbone::serve(listener, tls, handler, limits, shutdown.clone()));
    Server { addr, shutdown, handle }
}

pub fn client(store: Arc<CertStore>) -> HboneClient {
    HboneClient::new(store, ClientOptions::default())
}

/// Write `message`, read back as many bytes.
pub async fn round_trip(
    stream: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
    message: &[u8],
) -> Vec<u8> {
    stream.write_all(message).await.expect("the tunnel takes writes");
    let mut echoed = vec![0; message.len()];
    stream.read_exact(&mut echoed).await.expect("the echo comes back");
    echoed
}
