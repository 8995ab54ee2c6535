//! rustls configs for proxy-to-proxy mTLS, both built around one [`CertStore`].
//!
//! Both sides are TLS 1.3 only, use the ring provider, present the store's SVID and verify the
//! peer with this crate's SPIFFE verifiers. Sessions resume (stateless tickets, within one
//! certificate generation and ten minutes: see `resumption`), so proxies that reconnect to each
//! other skip the signatures and chain verifications of a full handshake. AES-128-GCM comes
//! first, as in Envoy's (BoringSSL's) default order: cheaper than AES-256 with SHA-384.

use std::sync::Arc;

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::server::NoServerSessionStorage;
use rustls::time_provider::{DefaultTimeProvider, TimeProvider};
use rustls::{CipherSuite, SupportedCipherSuite};
use rustls::{ClientConfig, ServerConfig};

use crate::resumption::{GenerationSessions, GenerationTickets};
use crate::store::{CertStore, StoreResolver};
use crate::verify::{Anchors, ExpectedPeers, MeshClientVerifier, MeshServerVerifier};

/// The ALPN protocol of mesh connections: HTTP/2 between proxies.
pub const ALPN_H2: &[u8] = b"h2";

/// What varies between deployments and tests.
#[derive(Clone, Debug)]
pub struct TlsOptions {
    /// ALPN protocols in preference order; `[h2]` by default.
    pub alpn_protocols: Vec<Vec<u8>>,
    /// The clock certificate validity is checked against; the system clock by default. Tests pass
    /// a fixed one so that validity windows and error messages are deterministic.
    pub time_provider: Arc<dyn TimeProvider>,
}

impl Default for TlsOptions {
    fn default() -> Self {
        Self { alpn_protocols: vec![ALPN_H2.to_vec()], time_provider: Arc::new(DefaultTimeProvider) }
    }
}

/// The config for accepting mesh connections: requires a client SVID from the store's current
/// bundle and presents the store's current SVID.
pub fn server_config(store: Arc<CertStore>, options: &TlsOptions) -> Arc<ServerConfig> {
    let provider = provider();
    let algorithms = provider.signature_verification_algorithms;
    let mut config = ServerConfig::builder_with_details(provider, Arc::clone(&options.time_provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("both crypto providers support TLS 1.3")
        .with_client_cert_verifier(Arc::new(MeshClientVerifier::new(Arc::clone(&store), algorithms)))
        .with_cert_resolver(Arc::new(StoreResolver(Arc::clone(&store))));
    config.alpn_protocols.clone_from(&options.alpn_protocols);
    // Stateless tickets only: nothing is stored per session.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.ticketer = Arc::new(GenerationTickets::new(store, Arc::clone(&options.time_provider)));
    // A client takes one ticket per connection; two keep a few in stock for bursts of dials.
    config.send_tls13_tickets = 2;
    Arc::new(config)
}

/// The config for dialing one destination: presents the store's current SVID and accepts only a
/// server whose SPIFFE ID is in `expected` (the server name passed to `connect` is ignored).
pub fn client_config(store: Arc<CertStore>, expected: ExpectedPeers, options: &TlsOptions) -> Arc<ClientConfig> {
    let provider = provider();
    let algorithms = provider.signature_verification_algorithms;
    let mut config = ClientConfig::builder_with_details(provider, Arc::clone(&options.time_provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("both crypto providers support TLS 1.3")
        .dangerous() // a custom verifier is "dangerous" to rustls; it is the point of this crate
        .with_custom_certificate_verifier(Arc::new(MeshServerVerifier::new(
            Anchors::Store(Arc::clone(&store)),
            expected,
            algorithms,
        )))
        .with_client_cert_resolver(Arc::new(StoreResolver(Arc::clone(&store))));
    config.alpn_protocols.clone_from(&options.alpn_protocols);
    config.resumption = Resumption::store(Arc::new(GenerationSessions::new(store)));
    Arc::new(config)
}

/// The crypto provider chosen at build time (see the crate's `aws-lc-rs` feature).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    #[cfg(feature = "aws-lc-rs")]
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    #[cfg(not(feature = "aws-lc-rs"))]
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|suite: &SupportedCipherSuite| match suite.suite() {
        CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        _ => 1,
    });
    Arc::new(provider)
}
