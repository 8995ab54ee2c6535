//! Workload identity: get an SVID for the workload, keep it fresh, and publish it to the TLS
//! store that every new handshake reads.
//!
//! Flow: generate a key and CSR → call the signing service over the TLS control channel, the
//! first time with the bootstrap token, afterwards presenting the current SVID → check that the
//! trust bundle that came back is vouched for by the one held (it keeps a trusted root) → swap
//! the new identity and bundle into the [`CertStore`] → sleep until half the remaining lifetime
//! (with jitter) → renew; on failure retry with backoff, keeping the current certificate until
//! it expires. Rotation is driven by time, not by traffic. Only a proxy whose certificate has
//! expired (a host asleep for a day) falls back to its bootstrap token, read afresh from its
//! file.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use ring::rand::{SecureRandom, SystemRandom};
use zmesh_id::SpiffeId;
use zmesh_tls::{CertStore, ControlCredentials, Identity, TrustBundle, TrustDomains};

use crate::control_channel::ControlEndpoint;
use zmesh_xds::ca::CertificateRequest;
use zmesh_xds::ca::certificate_service_client::CertificateServiceClient;

/// Why the workload could not get a certificate.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot reach the signing service at {endpoint}: {message}; is the control plane running?")]
    Unreachable { endpoint: String, message: String },
    #[error("the signing service refused the request: {0}")]
    Refused(String),
    #[error("cannot make a key and CSR: {0}")]
    Csr(String),
    #[error("the signing service returned an unusable certificate: {0}")]
    BadResponse(String),
    #[error("the signing service's trust bundle is refused: {0}")]
    NotVouched(zmesh_tls::TlsError),
    #[error("bootstrap token: {0}")]
    Token(String),
}

impl IdentityError {
    /// Whether trying again later can help (the service was away or overloaded) rather than the
    /// request being wrong.
    pub fn is_transient(&self) -> bool {
        matches!(self, IdentityError::Unreachable { .. })
    }
}

/// Where the bootstrap token comes from. A file is read again at every use, so whoever keeps it
/// fresh (`zmesh up`, or the kubelet for a projected token) keeps the proxy able to bootstrap.
#[derive(Debug, Clone)]
pub enum BootstrapToken {
    File(PathBuf),
    Text(String),
}

impl BootstrapToken {
    pub fn read(&self) -> Result<String, IdentityError> {
        match self {
            BootstrapToken::Text(text) => Ok(text.clone()),
            BootstrapToken::File(path) => std::fs::read_to_string(path)
                .map(|text| text.trim().to_owned())
                .map_err(|e| IdentityError::Token(format!("cannot read {}: {e}", path.display()))),
        }
    }
}

/// The SPIFFE ID a zmesh bootstrap token names: the identity to ask a certificate for. Read
/// without the key — the control plane checks the token; a proxy only learns whom it is to be.
pub fn identity_named_by(token: &str) -> Result<SpiffeId, IdentityError> {
    let not_ours = || {
        IdentityError::Token(format!(
            "not a zmesh bootstrap token (`{}<spiffe-id>:<expiry>:<mac>`); issue one with `zmesh ca token`",
            zmesh_xds::BOOTSTRAP_TOKEN_PREFIX
        ))
    };
    let rest = token.strip_prefix(zmesh_xds::BOOTSTRAP_TOKEN_PREFIX).ok_or_else(not_ours)?;
    let (rest, _mac) = rest.rsplit_once(':').ok_or_else(not_ours)?;
    let (id, _expiry) = rest.rsplit_once(':').ok_or_else(not_ours)?;
    id.parse().map_err(|e| IdentityError::Token(format!("the token names no valid identity: {e}")))
}

/// How to reach the signing service and prove who we are.
#[derive(Debug, Clone)]
pub struct SigningClient {
    control: ControlEndpoint,
    token: BootstrapToken,
    /// Lifetime to ask for; `None` takes the CA's default.
    pub requested_ttl: Option<Duration>,
}

impl SigningClient {
    pub fn new(control: ControlEndpoint, token: BootstrapToken) -> Self {
        SigningClient { control: control.with_timeout(Duration::from_secs(5)), token, requested_ttl: None }
    }

    /// One signing round trip: a fresh key, a CSR for `id`, the SVID and trust bundle back. With
    /// bootstrap credentials the token proves the identity; with an SVID, the SVID does.
    pub async fn fetch(
        &self,
        id: &SpiffeId,
        domains: &TrustDomains,
        rng: &SystemRandom,
        credentials: &ControlCredentials,
    ) -> Result<Fetched, IdentityError> {
        let (csr, key) = zmesh_ca::generate_csr(id, rng).map_err(|e| IdentityError::Csr(e.to_string()))?;
        let mut request = tonic::Request::new(CertificateRequest {
            csr,
            validity_seconds: self.requested_ttl.map_or(0, |ttl| i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)),
        });
        if let ControlCredentials::Bootstrap(_) = credentials {
            let bearer = format!("Bearer {}", self.token.read()?)
                .parse()
                .map_err(|_| IdentityError::Token("the bootstrap token is not valid metadata text".into()))?;
            request.metadata_mut().insert(zmesh_xds::AUTHORIZATION, bearer);
        }
        let unreachable = |message: String| IdentityError::Unreachable { endpoint: self.control.uri(), message };
        let channel = self.control.connect(credentials).await.map_err(|e| unreachable(source_chain(&e)))?;
        let mut client = CertificateServiceClient::new(channel);
        let response = client.create_certificate(request).await.map_err(|status| match status.code() {
            tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::ResourceExhausted
            | tonic::Code::Unknown => unreachable(status.message().to_owned()),
            _ => IdentityError::Refused(format!("{}: {}", status.code(), status.message())),
        })?;
        let response = response.into_inner();
        let identity = Identity::from_pem(response.cert_chain.concat(), key.expose())
            .map_err(|e| IdentityError::BadResponse(e.to_string()))?;
        if identity.spiffe_id() != id {
            return Err(IdentityError::BadResponse(format!("asked for {id}, got {}", identity.spiffe_id())));
        }
        let bundle = TrustBundle::from_pem(response.trust_bundle.concat(), domains.clone())
            .map_err(|e| IdentityError::BadResponse(e.to_string()))?;
        Ok(Fetched { identity, bundle, received: SystemTime::now() })
    }
}

pub(crate) fn source_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// A freshly issued identity and the bundle that came with it.
#[derive(Debug)]
pub struct Fetched {
    pub identity: Identity,
    pub bundle: TrustBundle,
    /// When it arrived: renewal is planned from here, not from the (backdated) NotBefore.
    pub received: SystemTime,
}

/// When to renew: half of the lifetime remaining at receipt, moved by up to ±10 % of it.
pub fn renewal_time(received: SystemTime, not_after: SystemTime, jitter: f64) -> SystemTime {
    zmesh_ca::renew_at(received, not_after, jitter)
}

/// Retry delays while the signing service is away: 0.5 s doubling to 30 s, but never sleeping
/// past the moment the current certificate expires.
fn backoff(attempt: u32, expires_in: Duration) -> Duration {
    let delay =
        Duration::from_millis(500).saturating_mul(2u32.saturating_pow(attempt.min(6))).min(Duration::from_secs(30));
    delay.min(expires_in.max(Duration::from_millis(100)))
}

/// Seconds until the current certificate expires (negative once expired): the gauge that
/// dashboards and alerts read.
#[derive(Debug, Clone, Default)]
pub struct ExpiryGauge(Arc<AtomicI64>);

impl ExpiryGauge {
    pub fn seconds_to_expiry(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, not_after: SystemTime, now: SystemTime) {
        self.0.store(zmesh_ca::seconds_to_expiry(now, not_after), Ordering::Relaxed);
    }
}

/// Keeps one workload's SVID fresh in a [`CertStore`].
#[derive(Debug)]
pub struct IdentityManager {
    pub id: SpiffeId,
    domains: TrustDomains,
    client: SigningClient,
    rng: SystemRandom,
    pub gauge: ExpiryGauge,
}

impl IdentityManager {
    pub fn new(id: SpiffeId, domains: TrustDomains, client: SigningClient) -> Self {
        IdentityManager { id, domains, client, rng: SystemRandom::new(), gauge: ExpiryGauge::default() }
    }

    /// Accept peers of `domains` from the next certificate on (the mesh's trust-domain aliases
    /// arrive with its configuration, after the first certificate).
    pub fn set_domains(&mut self, domains: TrustDomains) {
        self.domains = domains;
    }

    pub fn domains(&self) -> &TrustDomains {
        &self.domains
    }

    fn jitter(&self) -> f64 {
        let mut byte = [0u8; 1];
        // Without randomness, renew at exactly half-life; jitter only spreads load.
        match self.rng.fill(&mut byte) {
            Ok(()) => f64::from(byte[0]) / 255.0,
            Err(_) => 0.5,
        }
    }

    /// Get the first certificate with the bootstrap token, trusting the control plane through
    /// `roots` (and taking only a bundle `roots` vouches for), retrying transient failures until
    /// `deadline` passes.
    pub async fn bootstrap(
        &self,
        roots: Arc<TrustBundle>,
        deadline: Duration,
    ) -> Result<(Arc<CertStore>, SystemTime), IdentityError> {
        let started = tokio::time::Instant::now();
        let mut attempt = 0;
        let credentials = ControlCredentials::Bootstrap(Arc::clone(&roots));
        loop {
            match self.client.fetch(&self.id, &self.domains, &self.rng, &credentials).await {
                Ok(fetched) => {
                    zmesh_tls::vouch(&roots, &fetched.bundle).map_err(IdentityError::NotVouched)?;
                    self.gauge.set(fetched.identity.not_after(), SystemTime::now());
                    let received = fetched.received;
                    return Ok((Arc::new(CertStore::new(fetched.identity, fetched.bundle)), received));
                }
                Err(error) if error.is_transient() && started.elapsed() < deadline => {
                    tracing::warn!(identity = %self.id, %error, attempt, "no certificate yet; retrying");
                    tokio::time::sleep(backoff(attempt, deadline)).await;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// One renewal: presenting the current SVID while it is valid, else (expired) with the
    /// bootstrap token; the bundle that comes back must be vouched for by the one held.
    async fn renew_once(&self, store: &Arc<CertStore>) -> Result<Fetched, IdentityError> {
        let credentials = if store.identity().not_after() > SystemTime::now() {
            ControlCredentials::Svid(Arc::clone(store))
        } else {
            tracing::warn!(identity = %self.id, "the certificate has expired; asking for a new one with the bootstrap token");
            ControlCredentials::Bootstrap(store.bundle())
        };
        let fetched = self.client.fetch(&self.id, &self.domains, &self.rng, &credentials).await?;
        zmesh_tls::vouch(&store.bundle(), &fetched.bundle).map_err(IdentityError::NotVouched)?;
        Ok(fetched)
    }

    /// Renew forever (until `stop` resolves): at half of the remaining lifetime, retrying with
    /// backoff while the service is away and serving the current certificate meanwhile.
    pub async fn rotate(
        &self,
        store: Arc<CertStore>,
        mut received: SystemTime,
        stop: impl std::future::Future<Output = ()> + Send,
    ) {
        tokio::pin!(stop);
        loop {
            let current = store.identity();
            let renew = renewal_time(received, current.not_after(), self.jitter());
            let wait = renew.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
            self.gauge.set(current.not_after(), SystemTime::now());
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = &mut stop => return,
            }
            let mut attempt = 0;
            loop {
                match self.renew_once(&store).await {
                    Ok(fetched) => {
                        tracing::info!(identity = %self.id, serial = fetched.identity.serial(), "certificate renewed");
                        self.gauge.set(fetched.identity.not_after(), SystemTime::now());
                        received = fetched.received;
                        store.set_bundle(fetched.bundle);
                        store.set_identity(fetched.identity);
                        break;
                    }
                    Err(error) => {
                        let expires_in =
                            current.not_after().duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
                        tracing::warn!(identity = %self.id, %error, attempt, ?expires_in, "renewal failed; keeping the current certificate");
                        self.gauge.set(current.not_after(), SystemTime::now());
                        tokio::select! {
                            () = tokio::time::sleep(backoff(attempt, expires_in)) => {}
                            () = &mut stop => return,
                        }
                        attempt += 1;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bootstrap_token_names_the_identity_to_ask_for() {
        let token = "zmesh-bootstrap:v1:spiffe://cluster.local/ns/shop/sa/cart:1796688646:00ff";
        assert_eq!(identity_named_by(token).unwrap().to_string(), "spiffe://cluster.local/ns/shop/sa/cart");
        let error = identity_named_by("eyJhbGciOi.a.b").unwrap_err().to_string();
        assert!(error.contains("not a zmesh bootstrap token"), "{error}");
        assert!(identity_named_by("zmesh-bootstrap:v1:cart:1:00").is_err());
    }

    #[test]
    fn backoff_doubles_up_to_thirty_seconds_but_not_past_expiry() {
        let long = Duration::from_secs(3600);
        assert_eq!(backoff(0, long), Duration::from_millis(500));
        assert_eq!(backoff(1, long), Duration::from_secs(1));
        assert_eq!(backoff(10, long), Duration::from_secs(30));
        assert_eq!(backoff(10, Duration::from_secs(2)), Duration::from_secs(2));
    }

    #[test]
    fn renewal_is_planned_from_receipt_not_from_the_backdated_not_before() {
        let received = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let not_after = received + Duration::from_secs(10);
        let at = renewal_time(received, not_after, 0.5);
        let offset = at.duration_since(received).unwrap();
        assert!(offset >= Duration::from_secs(4) && offset <= Duration::from_secs(6), "{offset:?}");
    }
}
