//! The one error type of this crate, and how it travels through rustls.
//!
//! Verification errors are raised inside rustls callbacks, so they must become `rustls::Error`.
//! They travel as `rustls::Error::Other` holding the `TlsError` itself: rustls displays it as
//! `other error: <our message>`, so the message reaches logs, and callers can still get the typed
//! error back with [`TlsError::find_in_io`] to decide on the side and the metric label.
//! (`InvalidCertificate(CertificateError::Other(..))` would pick a slightly better alert, but
//! rustls prints that one with `Debug`, which buries the message.)

use std::fmt;
use std::io;
use std::sync::Arc;

use rustls::OtherError;
use zmesh_id::{IdError, SpiffeId};

use crate::bundle::TrustDomains;
use crate::time::Timestamp;
use crate::verify::ExpectedPeers;

/// Which certificate an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whose {
    /// The certificate the remote proxy presented in the handshake.
    Peer,
    /// This proxy's own SVID, being loaded.
    LocalSvid,
    /// A root of the trust bundle being loaded (0-based position in the PEM).
    BundleRoot { index: usize },
}

impl fmt::Display for Whose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Peer => f.write_str("peer certificate"),
            Self::LocalSvid => f.write_str("local SVID"),
            Self::BundleRoot { index } => write!(f, "trust bundle root #{index}"),
        }
    }
}

/// Which PEM input failed to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PemInput {
    SvidChain,
    SvidKey,
    TrustBundle,
}

impl fmt::Display for PemInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::SvidChain => "SVID certificate chain",
            Self::SvidKey => "SVID private key",
            Self::TrustBundle => "trust bundle",
        })
    }
}

/// Who has to act on an error: the remote peer (its certificate is wrong) or this proxy (its own
/// SVID, bundle or call sequence is wrong). The proxy maps `Peer` to downstream or upstream
/// depending on the direction of the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Peer,
    Local,
}

/// Everything that fails in zmesh-tls. Each message names what failed and what to do about it;
/// [`TlsError::side`] says who has to act.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    // ---- loading this proxy's SVID and trust bundle ----
    #[error("cannot read the {what} as PEM; pass PEM text made of `-----BEGIN ...-----` blocks")]
    Pem {
        what: PemInput,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error(
        "the {what} holds no CERTIFICATE block; pass the leaf first, then its intermediates (or, for a bundle, every root)"
    )]
    NoCertificates { what: PemInput },
    #[error("cannot use the SVID private key: {reason}; pass a PKCS#8 or SEC1 ECDSA P-256 key")]
    UnsupportedKey { reason: rustls::Error },
    #[error(
        "the SVID private key does not match the leaf certificate (the first in the chain); pass the key \
         generated for this certificate's CSR, and put the leaf before its intermediates"
    )]
    KeyMismatch,
    #[error("{whose} is not a valid X.509 certificate: {reason}")]
    BadCertificate { whose: Whose, reason: String },

    // ---- verifying a peer ----
    #[error(
        "peer certificate was issued by `{issuer}`, which does not chain to any root of the trust bundle \
         ({roots}); the peer belongs to another CA, or the bundle lacks that CA's root (during a root \
         rotation, the bundle must hold the old and the new root)"
    )]
    UnknownIssuer { issuer: String, roots: RootSubjects },
    #[error(
        "peer certificate expired: now is {now}, it was valid from {not_before} to {not_after}; the peer \
         must renew its SVID (can it reach the mesh CA?), or this host's clock is wrong"
    )]
    Expired { now: Timestamp, not_before: Timestamp, not_after: Timestamp },
    #[error(
        "peer certificate is not valid yet: now is {now}, it is valid from {not_before} to {not_after}; \
         the clocks of this host and of the mesh CA disagree"
    )]
    NotYetValid { now: Timestamp, not_before: Timestamp, not_after: Timestamp },
    #[error("peer certificate chain does not verify against the trust bundle: {reason}")]
    InvalidChain { reason: String },
    #[error(
        "{whose} `{subject}` is a CA certificate (BasicConstraints CA:true) presented as a leaf; present \
         a workload SVID issued by the CA, never the CA certificate itself"
    )]
    CaAsLeaf { whose: Whose, subject: String },
    #[error(
        "{whose} carries no SPIFFE ID: it has no URI SAN (its SANs: {sans}); a mesh SVID must carry \
         exactly one URI SAN `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`"
    )]
    NoSpiffeId { whose: Whose, sans: String },
    #[error(
        "{whose} carries {count} URI SANs ({uris}); a mesh SVID must carry exactly one, its SPIFFE ID",
        count = .uris.len(),
        uris = .uris.join(", ")
    )]
    MultipleUriSans { whose: Whose, uris: Vec<String> },
    #[error("{whose} URI SAN `{uri}` is not a SPIFFE ID: {reason}")]
    BadSpiffeId { whose: Whose, uri: String, reason: IdError },
    #[error(
        "peer `{id}` belongs to trust domain `{domain}`, but this proxy accepts only {accepted}; if \
         `{domain}` is a former name of this mesh, add it to the trust-domain aliases",
        domain = .id.trust_domain()
    )]
    UntrustedTrustDomain { id: SpiffeId, accepted: Box<TrustDomains> },
    #[error(
        "server `{peer}` is not an identity this destination expects (expected: {expected}); the address \
         may now belong to another workload, or the destination's service accounts are misconfigured"
    )]
    UnexpectedPeer { peer: SpiffeId, expected: ExpectedPeers },

    // ---- after the handshake ----
    #[error("the connection has no peer certificate; read the peer identity only after a completed mTLS handshake")]
    NoPeerCertificate,

    // ---- trust bundles offered by the control plane ----
    #[error(
        "the control plane offered a trust bundle ({offered}) that shares no root with the bundle this \
         proxy trusts ({trusted}); it is refused, and the trusted bundle stays in force. A root rotation \
         must keep the old root in the bundle until every proxy holds the new one; a proxy that missed a \
         whole rotation must be restarted with the new root (--roots)"
    )]
    NotVouched { offered: RootSubjects, trusted: RootSubjects },
}

impl TlsError {
    /// Who has to act on this error.
    pub fn side(&self) -> Side {
        match self {
            Self::Pem { .. }
            | Self::NoCertificates { .. }
            | Self::UnsupportedKey { .. }
            | Self::KeyMismatch
            | Self::NoPeerCertificate => Side::Local,
            Self::NotVouched { .. } => Side::Peer,
            Self::BadCertificate { whose, .. }
            | Self::CaAsLeaf { whose, .. }
            | Self::NoSpiffeId { whose, .. }
            | Self::MultipleUriSans { whose, .. }
            | Self::BadSpiffeId { whose, .. } => match whose {
                Whose::Peer => Side::Peer,
                Whose::LocalSvid | Whose::BundleRoot { .. } => Side::Local,
            },
            Self::UnknownIssuer { .. }
            | Self::Expired { .. }
            | Self::NotYetValid { .. }
            | Self::InvalidChain { .. }
            | Self::UntrustedTrustDomain { .. }
            | Self::UnexpectedPeer { .. } => Side::Peer,
        }
    }

    /// The `TlsError` a verifier of this crate raised, if this rustls error carries one.
    pub fn find_in_rustls(error: &rustls::Error) -> Option<&TlsError> {
        match error {
            rustls::Error::Other(OtherError(inner)) => inner.downcast_ref::<TlsError>(),
            _ => None,
        }
    }

    /// The `TlsError` behind a failed `tokio-rustls` accept or connect, if there is one.
    pub fn find_in_io(error: &io::Error) -> Option<&TlsError> {
        error.get_ref()?.downcast_ref::<rustls::Error>().and_then(Self::find_in_rustls)
    }
}

impl From<TlsError> for rustls::Error {
    fn from(error: TlsError) -> Self {
        rustls::Error::Other(OtherError(Arc::new(error)))
    }
}

/// The subjects of the roots of a trust bundle, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootSubjects(pub Vec<String>);

impl fmt::Display for RootSubjects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (position, subject) in self.0.iter().enumerate() {
            if position > 0 {
                f.write_str(", ")?;
            }
            write!(f, "`{subject}`")?;
        }
        Ok(())
    }
}
