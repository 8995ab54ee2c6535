//! SPIFFE peer verification, the same on both sides of a mesh connection.
//!
//! Flow for a peer's chain: parse the leaf → validity at `now` → not a CA → path to a root of the
//! *current* bundle → exactly one SPIFFE URI SAN → accepted trust domain (→ on the client side,
//! an identity expected for the destination). The leaf-only checks come before the path so an
//! operator reads "expired" rather than a generic path error; nothing read from the SAN is
//! trusted before the path is verified.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use webpki::{EndEntityCert, KeyUsage};
use zmesh_id::SpiffeId;

use crate::bundle::{TrustBundle, TrustDomains};
use crate::error::{TlsError, Whose};
use crate::identity::{parse_certificate, refuse_ca, spiffe_id_of};
use crate::store::CertStore;
use crate::time::Timestamp;

/// The SPIFFE IDs a destination may present; a server with any other ID is refused even when
/// its certificate is valid, so a reused IP address cannot impersonate the service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedPeers(Vec<SpiffeId>);

impl ExpectedPeers {
    pub fn new(ids: impl IntoIterator<Item = SpiffeId>) -> Self {
        ids.into_iter().collect()
    }

    pub fn one(id: SpiffeId) -> Self {
        Self(vec![id])
    }

    pub fn ids(&self) -> &[SpiffeId] {
        &self.0
    }

    /// Whether `peer` is expected. A trust-domain alias names the same mesh, so an ID in an
    /// accepted domain matches an expected ID in any other accepted domain with the same
    /// namespace and service account (as Istio does while a mesh is renamed).
    pub fn admits(&self, peer: &SpiffeId, domains: &TrustDomains) -> bool {
        let same_workload = |expected: &SpiffeId| {
            expected.namespace() == peer.namespace()
                && expected.service_account() == peer.service_account()
                && domains.accepts(expected.trust_domain())
                && domains.accepts(peer.trust_domain())
        };
        self.0.iter().any(|expected| expected == peer || same_workload(expected))
    }
}

impl FromIterator<SpiffeId> for ExpectedPeers {
    fn from_iter<I: IntoIterator<Item = SpiffeId>>(ids: I) -> Self {
        let mut unique = Vec::new();
        for id in ids {
            if !unique.contains(&id) {
                unique.push(id);
            }
        }
        Self(unique)
    }
}

impl fmt::Display for ExpectedPeers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (position, id) in self.0.iter().enumerate() {
            if position > 0 {
                f.write_str(", ")?;
            }
            write!(f, "`{id}`")?;
        }
        Ok(())
    }
}

/// Verify a peer's chain against `bundle` at `now` and return its SPIFFE ID.
fn verify_peer(
    bundle: &TrustBundle,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: KeyUsage,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<SpiffeId, TlsError> {
    let leaf = parse_certificate(end_entity, Whose::Peer)?;

    let checked_at = Timestamp::from(now);
    let not_before = Timestamp::from_unix_seconds(leaf.validity().not_before.timestamp());
    let not_after = Timestamp::from_unix_seconds(leaf.validity().not_after.timestamp());
    if checked_at < not_before {
        return Err(TlsError::NotYetValid { now: checked_at, not_before, not_after });
    }
    if checked_at > not_after {
        return Err(TlsError::Expired { now: checked_at, not_before, not_after });
    }
    refuse_ca(&leaf, Whose::Peer)?;

    let path_leaf = EndEntityCert::try_from(end_entity)
        .map_err(|error| TlsError::BadCertificate { whose: Whose::Peer, reason: error.to_string() })?;
    path_leaf.verify_for_usage(algorithms.all, bundle.anchors(), intermediates, now, usage, None, None).map_err(
        |error| match error {
            webpki::Error::UnknownIssuer => {
                TlsError::UnknownIssuer { issuer: leaf.issuer().to_string(), roots: bundle.root_subjects().clone() }
            }
            other => TlsError::InvalidChain { reason: describe_path_error(&other) },
        },
    )?;

    let id = spiffe_id_of(&leaf, Whose::Peer)?;
    let domains = bundle.trust_domains();
    if !domains.accepts(id.trust_domain()) {
        return Err(TlsError::UntrustedTrustDomain { id, accepted: Box::new(domains.clone()) });
    }
    Ok(id)
}

/// webpki's errors for the links above the leaf, in words (its `Display` is its `Debug`).
fn describe_path_error(error: &webpki::Error) -> String {
    match error {
        webpki::Error::CertExpired { time, not_after } => format!(
            "an intermediate certificate expired at {} (now is {})",
            Timestamp::from(*not_after),
            Timestamp::from(*time)
        ),
        webpki::Error::CertNotValidYet { time, not_before } => format!(
            "an intermediate certificate is valid only from {} (now is {})",
            Timestamp::from(*not_before),
            Timestamp::from(*time)
        ),
        webpki::Error::InvalidSignatureForPublicKey => {
            "a certificate's signature does not match its issuer's key".into()
        }
        webpki::Error::RequiredEkuNotFoundContext(_) => {
            "the leaf's extended key usage does not allow this side of the connection \
             (SVIDs need both serverAuth and clientAuth)"
                .into()
        }
        other => format!("{other:?}"),
    }
}

/// Refuse TLS 1.2 signatures outright: mesh configs only enable TLS 1.3, so being asked is a bug.
fn refuse_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::General("TLS 1.2 is not allowed between mesh proxies".into()))
}

/// Where a verifier finds the roots a peer's chain must lead to: a store's current bundle (which
/// rotates), or a fixed bundle (what a proxy trusts before it holds an SVID of its own).
#[derive(Debug, Clone)]
pub(crate) enum Anchors {
    Store(Arc<CertStore>),
    Fixed(Arc<TrustBundle>),
}

impl Anchors {
    fn current(&self) -> Arc<TrustBundle> {
        match self {
            Anchors::Store(store) => store.bundle(),
            Anchors::Fixed(bundle) => Arc::clone(bundle),
        }
    }
}

/// Verifies mesh clients on the server side against the store's current bundle.
#[derive(Debug)]
pub(crate) struct MeshClientVerifier {
    store: Arc<CertStore>,
    algorithms: WebPkiSupportedAlgorithms,
    /// Whether a client must present a certificate. Mesh connections: always. The control
    /// channel: a proxy without an SVID yet proves itself with a bootstrap token instead, but a
    /// certificate it does present must verify.
    mandatory: bool,
}

impl MeshClientVerifier {
    pub(crate) fn new(store: Arc<CertStore>, algorithms: WebPkiSupportedAlgorithms) -> Self {
        Self { store, algorithms, mandatory: true }
    }

    pub(crate) fn optional(store: Arc<CertStore>, algorithms: WebPkiSupportedAlgorithms) -> Self {
        Self { store, algorithms, mandatory: false }
    }
}

impl ClientCertVerifier for MeshClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    // No hints: the bundle swaps underneath while this must return a borrow of `self`, and mesh
    // clients hold a single SVID, which they send whatever the hints say.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let bundle = self.store.bundle();
        verify_peer(&bundle, end_entity, intermediates, now, KeyUsage::client_auth(), &self.algorithms)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        refuse_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Verifies a mesh server on the client side: the current bundle, then the destination's
/// expected identities. The DNS name / SNI is ignored: proxies dial endpoints by IP, and the
/// SPIFFE ID is what names the workload.
#[derive(Debug)]
pub(crate) struct MeshServerVerifier {
    anchors: Anchors,
    expected: ExpectedPeers,
    algorithms: WebPkiSupportedAlgorithms,
}

impl MeshServerVerifier {
    pub(crate) fn new(anchors: Anchors, expected: ExpectedPeers, algorithms: WebPkiSupportedAlgorithms) -> Self {
        Self { anchors, expected, algorithms }
    }
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let bundle = self.anchors.current();
        let peer = verify_peer(&bundle, end_entity, intermediates, now, KeyUsage::server_auth(), &self.algorithms)?;
        if !self.expected.admits(&peer, bundle.trust_domains()) {
            return Err(TlsError::UnexpectedPeer { peer, expected: self.expected.clone() }.into());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        refuse_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(uri: &str) -> SpiffeId {
        uri.parse().expect("test SPIFFE IDs are valid")
    }

    fn domains(local: &str, aliases: &[&str]) -> TrustDomains {
        let parse = |name: &str| name.parse().expect("test trust domains are valid");
        TrustDomains::new(parse(local)).with_aliases(aliases.iter().map(|alias| parse(alias)))
    }

    #[test]
    fn an_expected_id_is_admitted() {
        let expected = ExpectedPeers::one(id("spiffe://cluster.local/ns/shop/sa/cart"));
        assert!(expected.admits(&id("spiffe://cluster.local/ns/shop/sa/cart"), &domains("cluster.local", &[])));
    }

    #[test]
    fn another_service_account_is_not_admitted() {
        let expected = ExpectedPeers::one(id("spiffe://cluster.local/ns/shop/sa/cart"));
        assert!(!expected.admits(&id("spiffe://cluster.local/ns/shop/sa/payments"), &domains("cluster.local", &[])));
    }

    #[test]
    fn the_same_workload_under_a_configured_alias_is_admitted() {
        let expected = ExpectedPeers::one(id("spiffe://cluster.local/ns/shop/sa/cart"));
        let peer = id("spiffe://old.local/ns/shop/sa/cart");
        assert!(expected.admits(&peer, &domains("cluster.local", &["old.local"])));
        assert!(!expected.admits(&peer, &domains("cluster.local", &[])));
    }

    #[test]
    fn an_empty_expectation_admits_nobody_and_says_so() {
        let expected = ExpectedPeers::new([]);
        assert!(!expected.admits(&id("spiffe://cluster.local/ns/shop/sa/cart"), &domains("cluster.local", &[])));
        assert_eq!(expected.to_string(), "none");
    }

    #[test]
    fn expected_ids_are_listed_once_each() {
        let cart = id("spiffe://cluster.local/ns/shop/sa/cart");
        let expected = ExpectedPeers::new([cart.clone(), id("spiffe://cluster.local/ns/shop/sa/cart-v2"), cart]);
        assert_eq!(
            expected.to_string(),
            "`spiffe://cluster.local/ns/shop/sa/cart`, `spiffe://cluster.local/ns/shop/sa/cart-v2`"
        );
    }
}
