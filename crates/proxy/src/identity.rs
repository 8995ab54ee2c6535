//! Workload identity: get an SVID for the workload, keep it fresh, and publish it to the TLS
//! store that every new handshake reads.
//!
//! Flow: generate a key and CSR → call the signing service with the bootstrap token → swap the
//! new identity and trust bundle into the [`CertStore`] → sleep until half the remaining
//! lifetime (with jitter) → renew; on failure retry with backoff, keeping the current
//! certificate until it expires. Rotation is driven by time, not by traffic.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use ring::rand::{SecureRandom, SystemRandom};
use tonic::transport::{Channel, Endpoint};
use zmesh_id::SpiffeId;
use zmesh_tls::{CertStore, Identity, TrustBundle, TrustDomains};
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
}

impl IdentityError {
    /// Whether trying again later can help (the service was away or overloaded) rather than the
    /// request being wrong.
    pub fn is_transient(&self) -> bool {
        matches!(self, IdentityError::Unreachable { .. })
    }
}

/// How to reach the signing service and prove who we are.
#[derive(Debug, Clone)]
pub struct SigningClient {
    endpoint: Endpoint,
    token: String,
    /// Lifetime to ask for; `None` takes the CA's default.
    pub requested_ttl: Option<Duration>,
    /// Carry the proxy's mark (transparent capture).
    marked: bool,
}

impl SigningClient {
    pub fn new(url: &str, token: String) -> Result<Self, IdentityError> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| IdentityError::Unreachable { endpoint: url.to_owned(), message: e.to_string() })?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5));
        Ok(SigningClient { endpoint, token, requested_ttl: None, marked: false })
    }

    /// Mark this client's connections so transparent capture lets them pass.
    pub fn marked(mut self, marked: bool) -> Self {
        self.marked = marked;
        self
    }

    async fn channel(&self) -> Result<Channel, IdentityError> {
        crate::net::control_plane_channel(&self.endpoint, self.marked).await.map_err(|e| IdentityError::Unreachable {
            endpoint: self.endpoint.uri().to_string(),
            message: source_chain(&e),
        })
    }

    /// One signing round trip: a fresh key, a CSR for `id`, the SVID and trust bundle back.
    pub async fn fetch(
        &self,
        id: &SpiffeId,
        domains: &TrustDomains,
        rng: &SystemRandom,
    ) -> Result<Fetched, IdentityError> {
        let (csr, key) = zmesh_ca::generate_csr(id, rng).map_err(|e| IdentityError::Csr(e.to_string()))?;
        let mut request = tonic::Request::new(CertificateRequest {
            csr,
            validity_seconds: self.requested_ttl.map_or(0, |ttl| i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)),
        });
        let bearer = format!("Bearer {}", self.token)
            .parse()
            .map_err(|_| IdentityError::Csr("the bootstrap token is not valid metadata text".into()))?;
        request.metadata_mut().insert(zmesh_xds::AUTHORIZATION, bearer);
        let mut client = CertificateServiceClient::new(self.channel().await?);
        let response = client.create_certificate(request).await.map_err(|status| match status.code() {
            tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::ResourceExhausted
            | tonic::Code::Unknown => IdentityError::Unreachable {
                endpoint: self.endpoint.uri().to_string(),
                message: status.message().to_owned(),
            },
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
    pub domains: TrustDomains,
    client: SigningClient,
    rng: SystemRandom,
    pub gauge: ExpiryGauge,
}

impl IdentityManager {
    pub fn new(id: SpiffeId, domains: TrustDomains, client: SigningClient) -> Self {
        IdentityManager { id, domains, client, rng: SystemRandom::new(), gauge: ExpiryGauge::default() }
    }

    fn jitter(&self) -> f64 {
        let mut byte = [0u8; 1];
        // Without randomness, renew at exactly half-life; jitter only spreads load.
        match self.rng.fill(&mut byte) {
            Ok(()) => f64::from(byte[0]) / 255.0,
            Err(_) => 0.5,
        }
    }

    /// Get the first certificate, retrying transient failures until `deadline` passes.
    pub async fn bootstrap(&self, deadline: Duration) -> Result<(Arc<CertStore>, SystemTime), IdentityError> {
        let started = tokio::time::Instant::now();
        let mut attempt = 0;
        loop {
            match self.client.fetch(&self.id, &self.domains, &self.rng).await {
                Ok(fetched) => {
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
                match self.client.fetch(&self.id, &self.domains, &self.rng).await {
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
