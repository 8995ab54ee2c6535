//! Test CAs, SVIDs, a fixed clock, and peers that run real handshakes.
//!
//! Every certificate is minted here with rcgen, fresh per test, with fixed names, serials and
//! dates so error messages are deterministic. The clock is fixed at 2030-01-01T12:00:00Z and
//! default SVIDs are valid for 2030-01-01 only.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber, date_time_ymd,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::time_provider::TimeProvider;
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};
use zmesh_id::SpiffeId;
use zmesh_tls::{
    CertStore, ExpectedPeers, Identity, Side, TlsError, TlsOptions, TrustBundle, TrustDomains, client_config,
    peer_identity, server_config,
};

/// 2030-01-01T12:00:00Z, the time every test handshake happens at.
pub const NOW: u64 = 1_893_499_200;

pub const SERVER_ID: &str = "spiffe://cluster.local/ns/shop/sa/cart";
pub const CLIENT_ID: &str = "spiffe://cluster.local/ns/web/sa/frontend";

/// A clock that never moves, so validity checks do not depend on when the tests run.
#[derive(Debug)]
pub struct FixedClock(pub UnixTime);

impl TimeProvider for FixedClock {
    fn current_time(&self) -> Option<UnixTime> {
        Some(self.0)
    }
}

pub fn options() -> TlsOptions {
    TlsOptions {
        time_provider: Arc::new(FixedClock(UnixTime::since_unix_epoch(Duration::from_secs(NOW)))),
        ..TlsOptions::default()
    }
}

pub fn id(uri: &str) -> SpiffeId {
    uri.parse().expect("test SPIFFE IDs are valid")
}

pub fn domains(local: &str, aliases: &[&str]) -> TrustDomains {
    let parse = |name: &str| name.parse().expect("test trust domains are valid");
    TrustDomains::new(parse(local)).with_aliases(aliases.iter().map(|alias| parse(alias)))
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

/// A certificate authority: a root, or an intermediate under another `Ca`.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    /// PEM of this CA and the intermediates above it, without the root: what a leaf appends.
    chain_pem: String,
}

impl Ca {
    pub fn root(common_name: &str) -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key generation works");
        let params = ca_params(common_name);
        let cert = params.self_signed(&key).expect("a root self-signs");
        Self { issuer: Issuer::new(params, key), cert_pem: cert.pem(), chain_pem: String::new() }
    }

    pub fn intermediate(&self, common_name: &str) -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key generation works");
        let params = ca_params(common_name);
        let cert = params.signed_by(&key, &self.issuer).expect("an intermediate is signed by its parent");
        let chain_pem = format!("{}{}", cert.pem(), self.chain_pem);
        Self { issuer: Issuer::new(params, key), cert_pem: cert.pem(), chain_pem }
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn issue(&self, spec: Leaf) -> Svid {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key generation works");
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = spec.sans;
        params.serial_number = Some(SerialNumber::from_slice(&[spec.serial]));
        params.not_before = date_time_ymd(spec.valid_from.0, spec.valid_from.1, spec.valid_from.2);
        params.not_after = date_time_ymd(spec.valid_until.0, spec.valid_until.1, spec.valid_until.2);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        if let Some(common_name) = spec.ca_named {
            params.distinguished_name = name(common_name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages.push(KeyUsagePurpose::KeyCertSign);
        }
        let cert = params.signed_by(&key, &self.issuer).expect("a leaf is signed by its CA");
        Svid {
            leaf_pem: cert.pem(),
            chain_pem: format!("{}{}", cert.pem(), self.chain_pem),
            key_pem: key.serialize_pem(),
            pkcs8_der: key.serialize_der(),
        }
    }
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

/// What to put in a test leaf; by default a valid SVID for one SPIFFE ID.
pub struct Leaf {
    sans: Vec<SanType>,
    serial: u8,
    valid_from: (i32, u8, u8),
    valid_until: (i32, u8, u8),
    ca_named: Option<&'static str>,
}

impl Leaf {
    pub fn spiffe(uri: &str) -> Self {
        Self::with_sans(vec![uri_san(uri)])
    }

    pub fn with_sans(sans: Vec<SanType>) -> Self {
        Self { sans, serial: 1, valid_from: (2030, 1, 1), valid_until: (2030, 1, 2), ca_named: None }
    }

    /// Serials stay below 0x80 so their DER encoding is a single positive byte.
    pub fn serial(mut self, serial: u8) -> Self {
        self.serial = serial;
        self
    }

    pub fn valid(mut self, from: (i32, u8, u8), until: (i32, u8, u8)) -> Self {
        self.valid_from = from;
        self.valid_until = until;
        self
    }

    /// Make it a CA certificate (BasicConstraints CA:true) with this subject.
    pub fn presented_as_ca(mut self, common_name: &'static str) -> Self {
        self.ca_named = Some(common_name);
        self
    }
}

pub fn uri_san(uri: &str) -> SanType {
    SanType::URI(Ia5String::try_from(uri).expect("test URIs are ASCII"))
}

pub fn dns_san(name: &str) -> SanType {
    SanType::DnsName(Ia5String::try_from(name).expect("test DNS names are ASCII"))
}

/// A minted certificate with its key, in the PEM forms a workload would be handed.
pub struct Svid {
    pub leaf_pem: String,
    pub chain_pem: String,
    pub key_pem: String,
    pub pkcs8_der: Vec<u8>,
}

impl Svid {
    pub fn identity(&self) -> Identity {
        Identity::from_pem(&self.chain_pem, &self.key_pem).expect("test SVIDs load")
    }

    fn chain(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(self.chain_pem.as_bytes()).collect::<Result<_, _>>().expect("minted PEM parses")
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("minted key PEM parses")
    }
}

pub fn bundle(roots: &[&Ca], domains: TrustDomains) -> TrustBundle {
    let pem: String = roots.iter().map(|root| root.cert_pem()).collect();
    TrustBundle::from_pem(pem, domains).expect("test roots load")
}

pub fn store(svid: &Svid, roots: &[&Ca], domains: TrustDomains) -> Arc<CertStore> {
    Arc::new(CertStore::new(svid.identity(), bundle(roots, domains)))
}

pub fn mesh_server(store: Arc<CertStore>) -> Arc<ServerConfig> {
    server_config(store, &options())
}

pub fn mesh_client(store: Arc<CertStore>, expected: &[&str]) -> Arc<ClientConfig> {
    client_config(store, expected.iter().map(|uri| id(uri)).collect::<ExpectedPeers>(), &options())
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A plain rustls server presenting any certificate, asking for none: the peer under test when
/// a mesh client verifies a server.
pub fn bare_server(svid: &Svid) -> Arc<ServerConfig> {
    let config = ServerConfig::builder_with_provider(ring())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(svid.chain(), svid.key())
        .expect("the bare server's key matches its certificate");
    Arc::new(config)
}

/// A plain rustls client presenting any certificate (or none) and trusting any server: the peer
/// under test when a mesh server verifies a client.
pub fn bare_client(svid: Option<&Svid>) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(ring())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(TrustAnyServer));
    let config = match svid {
        Some(svid) => builder.with_client_auth_cert(svid.chain(), svid.key()).expect("the bare client's key matches"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

#[derive(Debug)]
struct TrustAnyServer;

impl ServerCertVerifier for TrustAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("the workspace builds rustls without TLS 1.2".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &ring().signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ring().signature_verification_algorithms.supported_schemes()
    }
}

/// Mesh proxies dial by IP; the name is ignored for identity.
pub fn server_name() -> ServerName<'static> {
    ServerName::IpAddress(Ipv4Addr::LOCALHOST.into())
}

/// Both ends of one handshake over an in-memory pipe.
pub struct Handshake {
    pub server: io::Result<server::TlsStream<DuplexStream>>,
    pub client: io::Result<client::TlsStream<DuplexStream>>,
}

pub async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Handshake {
    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    let accept = TlsAcceptor::from(server).accept(server_io);
    let connect = TlsConnector::from(client).connect(server_name(), client_io);
    let (server, client) = tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(accept, connect) })
        .await
        .expect("a handshake over a pipe finishes within 10 s");
    Handshake { server, client }
}

/// The `TlsError` behind a failed handshake, checked to be the peer's fault, as text.
pub fn peer_fault(error: &io::Error) -> String {
    let tls_error = TlsError::find_in_io(error).unwrap_or_else(|| panic!("not a zmesh-tls error: {error}"));
    assert_eq!(tls_error.side(), Side::Peer, "{tls_error}");
    // The same text reaches rustls' own message, so logs of the io::Error carry it too.
    assert_eq!(error.to_string(), format!("other error: {tls_error}"));
    tls_error.to_string()
}

/// A mesh server (SVID for `SERVER_ID` from `ca`) facing a bare client presenting `client`:
/// why the server refused it.
pub async fn server_refuses(ca: &Ca, domains: TrustDomains, client: &Svid) -> String {
    let server_svid = ca.issue(Leaf::spiffe(SERVER_ID));
    let outcome = handshake(mesh_server(store(&server_svid, &[ca], domains)), bare_client(Some(client))).await;
    let error = outcome.server.expect_err("the mesh server refuses the client");
    peer_fault(&error)
}

/// A mesh client (SVID for `CLIENT_ID` from `ca`, expecting `expected`) facing a bare server
/// presenting `server`: why the client refused it.
pub async fn client_refuses(ca: &Ca, domains: TrustDomains, expected: &[&str], server: &Svid) -> String {
    let client_svid = ca.issue(Leaf::spiffe(CLIENT_ID));
    let outcome = handshake(bare_server(server), mesh_client(store(&client_svid, &[ca], domains), expected)).await;
    let error = outcome.client.expect_err("the mesh client refuses the server");
    peer_fault(&error)
}

/// A mesh server on loopback TCP that echoes, reporting each handshake's outcome as the client's
/// SPIFFE ID or the server-side error.
pub async fn echo_server(config: Arc<ServerConfig>) -> (SocketAddr, mpsc::UnboundedReceiver<io::Result<SpiffeId>>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("loopback bind works");
    let addr = listener.local_addr().expect("a bound listener has an address");
    let (report, reports) = mpsc::unbounded_channel();
    let acceptor = TlsAcceptor::from(config);
    // Ends with the test's runtime; each test makes a handful of connections.
    tokio::spawn(async move {
        while let Ok((tcp, _peer_addr)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let report = report.clone();
            tokio::spawn(async move {
                let mut tls = match acceptor.accept(tcp).await {
                    Ok(tls) => tls,
                    Err(error) => {
                        let _ = report.send(Err(error));
                        return;
                    }
                };
                let peer = peer_identity(tls.get_ref().1).map_err(io::Error::other);
                let _ = report.send(peer);
                let mut buffer = [0u8; 1024];
                while let Ok(read @ 1..) = tls.read(&mut buffer).await {
                    if tls.write_all(&buffer[..read]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, reports)
}

pub async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> io::Result<client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(config).connect(server_name(), tcp).await
}

/// Send `message` and expect it echoed back, proving the connection still carries data.
pub async fn echo(tls: &mut client::TlsStream<TcpStream>, message: &[u8]) {
    tls.write_all(message).await.expect("write on an open mesh connection");
    let mut echoed = vec![0u8; message.len()];
    tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut echoed))
        .await
        .expect("the echo arrives within 10 s")
        .expect("read on an open mesh connection");
    assert_eq!(echoed, message);
}

/// The serial of the certificate the server presented, colon-separated hex as `Identity::serial`.
pub fn presented_serial(tls: &client::TlsStream<TcpStream>) -> String {
    let leaf = &tls.get_ref().1.peer_certificates().expect("a completed handshake has peer certificates")[0];
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf).expect("the peer's certificate parses");
    parsed.raw_serial_as_string()
}
