//! Rotation under continuous traffic, against the real signing service over loopback:
//! short-lived SVIDs are renewed by time, every new handshake after a renewal uses the new
//! certificate, no connection fails, and a CA outage shorter than half the lifetime causes no
//! failure at all.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use zmesh_ca::{CaConfig, CertificateAuthority};
use zmesh_control::ca_service::{SharedCa, Signer};
use zmesh_control::ratelimit::PerCallerLimit;
use zmesh_control::tokens::BootstrapTokens;
use zmesh_id::SpiffeId;
use zmesh_proxy::control_channel::ControlEndpoint;
use zmesh_proxy::identity::{BootstrapToken, IdentityManager, SigningClient};
use zmesh_tls::{CertStore, ExpectedPeers, TlsOptions, TrustBundle, TrustDomains};

const TTL: Duration = Duration::from_secs(6);

struct Mesh {
    ca: SharedCa,
    tokens: Arc<BootstrapTokens>,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A directory removed when dropped.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(label: &str) -> Dir {
            let path = std::env::temp_dir().join(format!("zmesh-rotation-{label}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).expect("temp dir");
            Dir(path)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn mesh(label: &str) -> Mesh {
    let dir = tempdir::Dir::new(label);
    let config = CaConfig { default_ttl: TTL, ..CaConfig::default() };
    let rng = ring::rand::SystemRandom::new();
    let (ca, _) = CertificateAuthority::open_or_create(&dir.0, config, SystemTime::now(), &rng).expect("CA");
    Mesh { ca: SharedCa::new(ca), tokens: Arc::new(BootstrapTokens::new(&[42u8; 32]).expect("key")), _dir: dir }
}

/// Start the signing service on `addr` (port 0 for any); returns the bound address and a stop
/// handle.
async fn start_ca(
    mesh: &Mesh,
    addr: SocketAddr,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind(addr).await.expect("bind CA");
    let bound = listener.local_addr().expect("addr");
    let signer = Signer::new(mesh.ca.clone(), mesh.tokens.clone(), PerCallerLimit::new(50.0, 50));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stop = tokio_util::sync::CancellationToken::new();
    let (tls, renew) = zmesh_control::channel::tls_server(&mesh.ca, stop.clone()).expect("control-plane SVID");
    let task = tokio::spawn(async move {
        let renewing = tokio::spawn(renew);
        let stopped = stop.clone();
        tokio::spawn(async move {
            let _ = stop_rx.await;
            stopped.cancel();
        });
        tonic::transport::Server::builder()
            .add_service(signer.into_service())
            .serve_with_incoming_shutdown(
                zmesh_control::channel::incoming(listener, tls, stop.clone()),
                stop.cancelled_owned(),
            )
            .await
            .expect("CA serves");
        let _ = renewing.await;
    });
    (bound, stop_tx, task)
}

/// The roots a proxy is started with: the CA's bundle.
fn roots(mesh: &Mesh) -> Arc<TrustBundle> {
    let domains = TrustDomains::new("cluster.local".parse().expect("td"));
    Arc::new(TrustBundle::from_pem(mesh.ca.current().trust_bundle_pem(), domains).expect("roots"))
}

fn manager(mesh: &Mesh, ca_addr: SocketAddr, sa: &str) -> IdentityManager {
    let id: SpiffeId = format!("spiffe://cluster.local/ns/test/sa/{sa}").parse().expect("id");
    let now = SystemTime::now();
    let token = mesh.tokens.issue(&id, now, now + Duration::from_secs(600));
    let control = ControlEndpoint::new(
        &format!("https://{ca_addr}"),
        zmesh_tls::control_plane_id(&"cluster.local".parse().expect("td")),
    )
    .expect("endpoint");
    let client = SigningClient::new(control, BootstrapToken::Text(token));
    IdentityManager::new(id, TrustDomains::new("cluster.local".parse().expect("td")), client)
}

/// An mTLS echo server whose certificate comes from `store` at every handshake.
async fn echo_server(store: Arc<CertStore>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = tokio_rustls::TlsAcceptor::from(zmesh_tls::server_config(store, &TlsOptions::default()));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else { return };
                let mut buf = [0u8; 64];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Handshake, echo once, and return the serial of the certificate the server presented.
async fn round_trip(connector: &tokio_rustls::TlsConnector, addr: SocketAddr) -> Result<String, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let name = rustls::pki_types::ServerName::try_from("server.test").expect("name").to_owned();
    let mut tls = connector.connect(name, stream).await.map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(b"ping").await.map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await.map_err(|e| format!("read: {e}"))?;
    let der = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).ok_or("no peer certificate")?.to_vec();
    Ok(zmesh_ca::inspect_der(&der)?.serial_hex)
}

struct Traffic {
    serials: Vec<String>,
    failures: Vec<String>,
}

/// New connections every 100 ms for `duration`, plus one long-lived connection that keeps
/// echoing across every renewal.
async fn traffic(connector: tokio_rustls::TlsConnector, addr: SocketAddr, duration: Duration) -> Traffic {
    let failures = Arc::new(Mutex::new(Vec::new()));
    let long_lived = {
        let connector = connector.clone();
        let failures = failures.clone();
        tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.expect("connect");
            let name = rustls::pki_types::ServerName::try_from("server.test").expect("name").to_owned();
            let mut tls = match connector.connect(name, stream).await {
                Ok(tls) => tls,
                Err(e) => return failures.lock().expect("lock").push(format!("long-lived handshake: {e}")),
            };
            let deadline = tokio::time::Instant::now() + duration;
            while tokio::time::Instant::now() < deadline {
                let mut buf = [0u8; 4];
                if let Err(e) = async {
                    tls.write_all(b"beat").await?;
                    tls.read_exact(&mut buf).await
                }
                .await
                {
                    return failures.lock().expect("lock").push(format!("long-lived connection: {e}"));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let mut serials = Vec::new();
    let deadline = tokio::time::Instant::now() + duration;
    while tokio::time::Instant::now() < deadline {
        match round_trip(&connector, addr).await {
            Ok(serial) => serials.push(serial),
            Err(e) => failures.lock().expect("lock").push(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    long_lived.await.expect("long-lived task");
    let failures = failures.lock().expect("lock").clone();
    Traffic { serials, failures }
}

/// Distinct serials in order of first appearance; panics if an older one comes back.
fn generations(serials: &[String]) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for serial in serials {
        match seen.iter().position(|s| s == serial) {
            None => seen.push(serial.clone()),
            Some(index) => assert_eq!(
                index,
                seen.len() - 1,
                "a handshake used certificate {serial} after a newer one was in use: {serials:?}"
            ),
        }
    }
    seen
}

async fn setup(
    mesh: &Mesh,
    ca_addr: SocketAddr,
) -> (tokio_rustls::TlsConnector, SocketAddr, Vec<tokio::task::JoinHandle<()>>) {
    let server = Arc::new(manager(mesh, ca_addr, "server"));
    let client = Arc::new(manager(mesh, ca_addr, "client"));
    let (server_store, server_received) =
        server.bootstrap(roots(mesh), Duration::from_secs(5)).await.expect("server SVID");
    let (client_store, client_received) =
        client.bootstrap(roots(mesh), Duration::from_secs(5)).await.expect("client SVID");
    let addr = echo_server(server_store.clone()).await;
    let expected = ExpectedPeers::one(server.id.clone());
    let connector = tokio_rustls::TlsConnector::from(zmesh_tls::client_config(
        client_store.clone(),
        expected,
        &TlsOptions::default(),
    ));
    let rotations = vec![
        tokio::spawn(async move { server.rotate(server_store, server_received, std::future::pending()).await }),
        tokio::spawn(async move { client.rotate(client_store, client_received, std::future::pending()).await }),
    ];
    (connector, addr, rotations)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_certificates_rotate_under_traffic_without_a_failed_connection() {
    let mesh = mesh("traffic");
    let (ca_addr, _stop, _ca) = start_ca(&mesh, "127.0.0.1:0".parse().expect("addr")).await;
    let (connector, addr, rotations) = setup(&mesh, ca_addr).await;
    let result = traffic(connector, addr, TTL * 2 + Duration::from_secs(1)).await;
    rotations.iter().for_each(|r| r.abort());
    assert!(result.failures.is_empty(), "failed connections: {:?}", result.failures);
    let generations = generations(&result.serials);
    assert!(generations.len() >= 3, "expected at least two renewals in {:?} (serials {:?})", TTL * 2, generations);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_outage_shorter_than_half_the_lifetime_causes_no_failure() {
    let mesh = mesh("outage");
    let (ca_addr, stop, ca_task) = start_ca(&mesh, "127.0.0.1:0".parse().expect("addr")).await;
    let (connector, addr, rotations) = setup(&mesh, ca_addr).await;
    let traffic_task = tokio::spawn(traffic(connector, addr, TTL * 2));
    // Take the CA away just before the first renewal (at ~40-60 % of the 6 s lifetime) for
    // 2.5 s, less than half the lifetime; renewals must wait it out and succeed afterwards.
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let _ = stop.send(());
    ca_task.await.expect("CA stopped");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let (_, _stop_again, _ca_again) = start_ca(&mesh, ca_addr).await;
    let result = traffic_task.await.expect("traffic");
    rotations.iter().for_each(|r| r.abort());
    assert!(result.failures.is_empty(), "failed connections: {:?}", result.failures);
    let generations = generations(&result.serials);
    assert!(generations.len() >= 2, "the certificate was never renewed after the outage: {generations:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rotated_in_stages_under_traffic_fails_no_handshake() {
    let mesh = mesh("root");
    let dir = mesh._dir.0.clone();
    let config = || CaConfig { default_ttl: TTL, max_ttl: TTL, ..CaConfig::default() };
    let reload = |mesh: &Mesh| {
        mesh.ca.replace(CertificateAuthority::load(&dir, config(), SystemTime::now()).expect("reload CA"))
    };
    let initial_root = mesh.ca.current().roots_der().to_vec();
    let (ca_addr, _stop, _ca) = start_ca(&mesh, "127.0.0.1:0".parse().expect("addr")).await;
    let (connector, addr, rotations) = setup(&mesh, ca_addr).await;
    // Each stage waits one lifetime plus a second, so every workload has renewed (and picked
    // up the new bundle or the new root's leaf) before the next stage.
    let stage_wait = TTL + Duration::from_secs(1);
    let traffic_task = tokio::spawn(traffic(connector, addr, stage_wait * 3 + Duration::from_secs(2)));
    let rng = ring::rand::SystemRandom::new();

    tokio::time::sleep(Duration::from_secs(1)).await;
    zmesh_ca::rotation::prepare(&dir, SystemTime::now(), &rng).expect("prepare");
    reload(&mesh);
    assert_eq!(mesh.ca.current().roots_der().len(), 2);

    tokio::time::sleep(stage_wait).await;
    zmesh_ca::rotation::activate(&dir, &config(), SystemTime::now()).expect("activate");
    reload(&mesh);

    tokio::time::sleep(stage_wait).await;
    zmesh_ca::rotation::retire(&dir, SystemTime::now(), zmesh_ca::RetireCheck::WaitForOldLeaves)
        .expect("retire once no old leaf can be valid");
    reload(&mesh);
    let final_roots = mesh.ca.current().roots_der().to_vec();
    assert_eq!(final_roots.len(), 1);
    assert_ne!(final_roots, initial_root, "the root must have changed");

    let result = traffic_task.await.expect("traffic");
    rotations.iter().for_each(|r| r.abort());
    assert!(result.failures.is_empty(), "failed handshakes during root rotation: {:?}", result.failures);
    assert!(
        generations(&result.serials).len() >= 4,
        "the server certificate should have been renewed through every stage"
    );
}
