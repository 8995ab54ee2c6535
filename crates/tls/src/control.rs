//! The control channel: TLS 1.3 between proxies and the control plane.
//!
//! The control plane serves under its own SVID (`spiffe://<td>/ns/zmesh-system/sa/zmesh-control`,
//! issued by the mesh CA). A proxy trusts it through roots it already holds — the bundle file it
//! was started with, then the bundle that came with its SVID — never through anything the channel
//! itself says. A proxy without an SVID yet (bootstrap) connects without a client certificate and
//! proves its identity with a bootstrap token; from then on it presents its SVID, and the control
//! plane takes the caller's identity from the verified certificate.
//!
//! A bundle the control plane hands out is taken only when the bundle already trusted vouches for
//! it: it must keep at least one trusted root. A staged root rotation (prepare: old + new,
//! activate, retire: new only) always does; a channel attacker who offers a root of its own
//! does not.

use std::sync::Arc;

use rustls::server::NoServerSessionStorage;
use rustls::{ClientConfig, ServerConfig};
use zmesh_id::{SpiffeId, TrustDomain};

use crate::bundle::TrustBundle;
use crate::config::{TlsOptions, provider};
use crate::error::TlsError;
use crate::store::{CertStore, StoreResolver};
use crate::verify::{Anchors, ExpectedPeers, MeshClientVerifier, MeshServerVerifier};

/// The namespace and service account the control plane's SPIFFE ID names.
pub const CONTROL_PLANE_NAMESPACE: &str = "zmesh-system";
pub const CONTROL_PLANE_SERVICE_ACCOUNT: &str = "zmesh-control";

/// The control plane's SPIFFE ID in trust domain `domain`.
pub fn control_plane_id(domain: &TrustDomain) -> SpiffeId {
    let uri = format!("spiffe://{domain}/ns/{CONTROL_PLANE_NAMESPACE}/sa/{CONTROL_PLANE_SERVICE_ACCOUNT}");
    uri.parse().expect("a valid trust domain with fixed, valid path segments is a valid SPIFFE ID")
}

/// How a proxy authenticates on the control channel.
#[derive(Debug, Clone)]
pub enum ControlCredentials {
    /// No SVID yet: no client certificate; the server is verified against these roots.
    Bootstrap(Arc<TrustBundle>),
    /// The proxy's current SVID, presented as client certificate; the server is verified against
    /// the store's current bundle.
    Svid(Arc<CertStore>),
}

/// The control plane's server config: presents `store`'s SVID; asks for a client certificate and
/// verifies one against `store`'s bundle when given, but lets a client without one through (the
/// service then asks it for a bootstrap token).
pub fn control_server_config(store: Arc<CertStore>, options: &TlsOptions) -> Arc<ServerConfig> {
    let provider = provider();
    let algorithms = provider.signature_verification_algorithms;
    let mut config = ServerConfig::builder_with_details(provider, Arc::clone(&options.time_provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("both crypto providers support TLS 1.3")
        .with_client_cert_verifier(Arc::new(MeshClientVerifier::optional(Arc::clone(&store), algorithms)))
        .with_cert_resolver(Arc::new(StoreResolver(store)));
    config.alpn_protocols.clone_from(&options.alpn_protocols);
    // Proxies hold their control connections open; resumption would save little.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Arc::new(config)
}

/// A proxy's config for dialing the control plane: the server must chain to the trusted roots
/// and be `control_plane` (or the same identity under a trust-domain alias).
pub fn control_client_config(
    credentials: &ControlCredentials,
    control_plane: SpiffeId,
    options: &TlsOptions,
) -> Arc<ClientConfig> {
    let provider = provider();
    let algorithms = provider.signature_verification_algorithms;
    let anchors = match credentials {
        ControlCredentials::Bootstrap(bundle) => Anchors::Fixed(Arc::clone(bundle)),
        ControlCredentials::Svid(store) => Anchors::Store(Arc::clone(store)),
    };
    let builder = ClientConfig::builder_with_details(provider, Arc::clone(&options.time_provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("both crypto providers support TLS 1.3")
        .dangerous() // the SPIFFE verifier replaces WebPKI's host-name check
        .with_custom_certificate_verifier(Arc::new(MeshServerVerifier::new(
            anchors,
            ExpectedPeers::one(control_plane),
            algorithms,
        )));
    let mut config = match credentials {
        ControlCredentials::Bootstrap(_) => builder.with_no_client_auth(),
        ControlCredentials::Svid(store) => {
            builder.with_client_cert_resolver(Arc::new(StoreResolver(Arc::clone(store))))
        }
    };
    config.alpn_protocols.clone_from(&options.alpn_protocols);
    Arc::new(config)
}

/// Whether `trusted` vouches for `offered`: they share at least one root (compared byte for
/// byte). Anything else is refused, whatever channel it came over.
pub fn vouch(trusted: &TrustBundle, offered: &TrustBundle) -> Result<(), TlsError> {
    if offered.roots().iter().any(|root| trusted.roots().contains(root)) {
        return Ok(());
    }
    Err(TlsError::NotVouched { offered: offered.root_subjects().clone(), trusted: trusted.root_subjects().clone() })
}
