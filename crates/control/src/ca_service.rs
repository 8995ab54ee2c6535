//! The certificate-signing service: a workload proves who it is and gets an SVID for exactly
//! that identity. A renewal proves it with the SVID the caller presents on the TLS connection
//! (see `channel`); only a first certificate needs a bootstrap token.
//!
//! Flow per request: SVID or token → proven identity → per-caller rate limit → CA signs the CSR
//! (which must ask for the proven identity) → audit record → chain and trust bundle back.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ring::rand::SystemRandom;
use tonic::{Request, Response, Status};
use zmesh_ca::{CaErrorKind, CertificateAuthority};
use zmesh_xds::ca::certificate_service_server::{CertificateService, CertificateServiceServer};
use zmesh_xds::ca::{CertificateRequest, CertificateResponse};

use crate::ratelimit::PerCallerLimit;
use crate::tokens::CallerAuthenticator;

/// Requests per second each identity may make, and the burst it may start with. A workload
/// renews once per half-lifetime, so this only bites a caller stuck in a loop.
pub const DEFAULT_RATE_PER_SECOND: f64 = 1.0;
pub const DEFAULT_BURST: u32 = 10;

/// The CA behind the service, swappable after a root rotation without a restart.
#[derive(Debug, Clone)]
pub struct SharedCa(Arc<RwLock<Arc<CertificateAuthority>>>);

impl SharedCa {
    pub fn new(ca: CertificateAuthority) -> Self {
        SharedCa(Arc::new(RwLock::new(Arc::new(ca))))
    }

    pub fn current(&self) -> Arc<CertificateAuthority> {
        self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    pub fn replace(&self, ca: CertificateAuthority) {
        *self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(ca);
    }
}

pub struct Signer {
    ca: SharedCa,
    authenticator: Arc<dyn CallerAuthenticator>,
    limit: PerCallerLimit,
    rng: SystemRandom,
    issued: Arc<IssuedCertificates>,
}

/// The last certificate issued to each identity, for the status API.
#[derive(Debug, Default)]
pub struct IssuedCertificates(std::sync::Mutex<std::collections::BTreeMap<String, IssuedRecord>>);

#[derive(Debug, Clone)]
pub struct IssuedRecord {
    pub identity: String,
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub issued_at: SystemTime,
    /// Certificates issued to this identity since the control plane started.
    pub count: u64,
}

impl IssuedCertificates {
    fn record(&self, identity: String, serial: String, not_before: SystemTime, not_after: SystemTime) {
        let mut issued = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = issued.get(&identity).map_or(0, |r| r.count) + 1;
        let issued_at = SystemTime::now();
        issued.insert(identity.clone(), IssuedRecord { identity, serial, not_before, not_after, issued_at, count });
    }

    /// Every identity's latest certificate, ordered by identity.
    pub fn list(&self) -> Vec<IssuedRecord> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).values().cloned().collect()
    }
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("ca", &self.ca).finish_non_exhaustive()
    }
}

impl Signer {
    pub fn new(ca: SharedCa, authenticator: Arc<dyn CallerAuthenticator>, limit: PerCallerLimit) -> Self {
        Signer { ca, authenticator, limit, rng: SystemRandom::new(), issued: Arc::default() }
    }

    /// Record what is issued in `issued` (shared with the status API).
    pub fn with_log(mut self, issued: Arc<IssuedCertificates>) -> Self {
        self.issued = issued;
        self
    }

    /// The tonic service to add to a server.
    pub fn into_service(self) -> CertificateServiceServer<Signer> {
        CertificateServiceServer::new(self)
    }
}

pub(crate) fn bearer_token<T>(request: &Request<T>) -> Result<&str, Status> {
    let value = request
        .metadata()
        .get(zmesh_xds::AUTHORIZATION)
        .ok_or_else(|| Status::unauthenticated("no `authorization` metadata; send `Bearer <token>`"))?;
    let value = value.to_str().map_err(|_| Status::unauthenticated("the authorization metadata is not text"))?;
    value
        .strip_prefix("Bearer ")
        .ok_or_else(|| Status::unauthenticated("the authorization metadata must be `Bearer <token>`"))
}

fn unix_seconds(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[tonic::async_trait]
impl CertificateService for Signer {
    async fn create_certificate(
        &self,
        request: Request<CertificateRequest>,
    ) -> Result<Response<CertificateResponse>, Status> {
        let peer: Option<SocketAddr> = crate::channel::remote(&request);
        let now = SystemTime::now();
        let (caller, proof) = match crate::channel::svid_caller(&request) {
            Some(svid) => (svid.clone(), "svid"),
            None => {
                let caller = self.authenticator.authenticate(bearer_token(&request)?, now).map_err(|e| {
                    tracing::warn!(target: "zmesh::audit", peer = ?peer, error = %e, "certificate request refused");
                    Status::unauthenticated(e.to_string())
                })?;
                (caller, "bootstrap-token")
            }
        };
        if caller.namespace().as_str() == zmesh_tls::CONTROL_PLANE_NAMESPACE
            && caller.service_account().as_str() == zmesh_tls::CONTROL_PLANE_SERVICE_ACCOUNT
        {
            tracing::warn!(target: "zmesh::audit", identity = %caller, peer = ?peer, "certificate request refused: the control plane's identity");
            return Err(Status::permission_denied(format!(
                "{caller} is the control plane's identity; the control plane issues it to itself, never to a caller"
            )));
        }
        if let Err(retry_after) = self.limit.check(&caller, Instant::now()) {
            tracing::warn!(target: "zmesh::audit", identity = %caller, peer = ?peer, "certificate request rate-limited");
            return Err(Status::resource_exhausted(format!(
                "too many certificate requests from {caller}; retry in {retry_after:?}"
            )));
        }
        let message = request.into_inner();
        let ttl = u64::try_from(message.validity_seconds).ok().filter(|&s| s > 0).map(Duration::from_secs);
        let ca = self.ca.current();
        let issued = ca.sign_csr(message.csr.as_bytes(), &caller, ttl, now, &self.rng).map_err(|error| {
            tracing::warn!(target: "zmesh::audit", identity = %caller, peer = ?peer, error = %error, "certificate request refused");
            match error.kind() {
                CaErrorKind::Denied => Status::permission_denied(error.to_string()),
                CaErrorKind::BadRequest => Status::invalid_argument(error.to_string()),
                CaErrorKind::Operator => Status::failed_precondition(error.to_string()),
                CaErrorKind::Internal => Status::internal(error.to_string()),
            }
        })?;
        tracing::info!(
            target: "zmesh::audit",
            identity = %issued.id,
            serial = %issued.serial_hex,
            not_after = unix_seconds(issued.not_after),
            ttl_capped = issued.ttl_capped,
            caller = %caller,
            proof,
            peer = ?peer,
            "certificate issued"
        );
        self.issued.record(issued.id.to_string(), issued.serial_hex.clone(), issued.not_before, issued.not_after);
        Ok(Response::new(CertificateResponse {
            cert_chain: vec![issued.chain_pem],
            trust_bundle: vec![ca.trust_bundle_pem().to_owned()],
            serial: issued.serial_hex,
            not_before: unix_seconds(issued.not_before),
            not_after: unix_seconds(issued.not_after),
        }))
    }
}
