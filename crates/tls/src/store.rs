//! The current SVID and trust bundle, swapped in place as they rotate.
//!
//! Each handshake clones the current `Arc` and releases the lock at once, so a swap waits at most
//! for a pointer copy, and a handshake never waits for a swap beyond that. Open connections keep
//! what they negotiated: TLS never looks at the certificate again after the handshake.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::bundle::TrustBundle;
use crate::identity::Identity;

/// This proxy's current SVID and trust bundle, shared by every TLS config built from it.
pub struct CertStore {
    identity: RwLock<Arc<Identity>>,
    bundle: RwLock<Arc<TrustBundle>>,
    /// One more at every swap of either: resumed sessions belong to one generation.
    generation: AtomicU64,
}

impl CertStore {
    pub fn new(identity: impl Into<Arc<Identity>>, bundle: impl Into<Arc<TrustBundle>>) -> Self {
        Self {
            identity: RwLock::new(identity.into()),
            bundle: RwLock::new(bundle.into()),
            generation: AtomicU64::new(0),
        }
    }

    /// Changes whenever the SVID or the bundle is replaced. A TLS session verified under one
    /// generation is never resumed under another (see `resumption`).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The SVID new handshakes present.
    pub fn identity(&self) -> Arc<Identity> {
        // A poisoned lock still holds a whole `Arc`: writers only assign, they cannot tear it.
        Arc::clone(&self.identity.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The bundle new handshakes verify peers against.
    pub fn bundle(&self) -> Arc<TrustBundle> {
        Arc::clone(&self.bundle.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Present `identity` from the next handshake on; returns the one it replaces.
    pub fn set_identity(&self, identity: impl Into<Arc<Identity>>) -> Arc<Identity> {
        let identity = identity.into();
        tracing::info!(
            spiffe_id = %identity.spiffe_id(),
            serial = identity.serial(),
            "new handshakes present a new SVID"
        );
        let old = std::mem::replace(&mut *self.identity.write().unwrap_or_else(PoisonError::into_inner), identity);
        self.generation.fetch_add(1, Ordering::AcqRel);
        old
    }

    /// Verify peers against `bundle` from the next handshake on; returns the one it replaces.
    pub fn set_bundle(&self, bundle: impl Into<Arc<TrustBundle>>) -> Arc<TrustBundle> {
        let bundle = bundle.into();
        tracing::info!(
            roots = bundle.roots().len(),
            trust_domains = %bundle.trust_domains(),
            "new handshakes verify peers against a new trust bundle"
        );
        let old = std::mem::replace(&mut *self.bundle.write().unwrap_or_else(PoisonError::into_inner), bundle);
        self.generation.fetch_add(1, Ordering::AcqRel);
        old
    }
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore").field("identity", &self.identity()).field("bundle", &self.bundle()).finish()
    }
}

/// Hands rustls the store's current SVID at each handshake, on either side.
#[derive(Debug)]
pub(crate) struct StoreResolver(pub(crate) Arc<CertStore>);

impl ResolvesServerCert for StoreResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(self.0.identity().certified_key()))
    }
}

impl ResolvesClientCert for StoreResolver {
    // Mesh servers trust one CA, so the hints cannot steer us to another certificate; we have
    // exactly one SVID to offer anyway.
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(self.0.identity().certified_key()))
    }

    fn has_certs(&self) -> bool {
        true
    }
}
