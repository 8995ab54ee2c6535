//! The proxy process: every listener of one sidecar, wired to the workload's identity and
//! policy.
//!
//! - HBONE inbound (15008): mTLS from peer proxies → admit (target is ours; L4 policy on TCP
//!   ports) → L7 per request on HTTP ports, bytes on TCP ports → the app.
//! - Plaintext inbound (15006, transparent mode): the effective PeerAuthentication mode of the
//!   port decides (STRICT refuses), then the same L4/L7 policy with no peer identity.
//! - Outbound (15001 transparent, or explicit `listen=target` ports): a mesh destination gets an
//!   HBONE tunnel to its proxy, verified against its SPIFFE ID; a destination a ServiceEntry
//!   puts in the registry (by its addresses, an endpoint's address, or a port it routes by port
//!   alone; see `Registry::route_address`) goes to the entry's endpoints, its host resolved by
//!   DNS, or the original destination, over plain TCP (the destination has no mesh proxy to
//!   speak HBONE to, unless an endpoint is itself a mesh workload); others follow
//!   outboundTrafficPolicy (ALLOW_ANY passes through, REGISTRY_ONLY refuses). ServiceEntries
//!   route in both modes, as in Istio: REGISTRY_ONLY only decides what is *not* in the registry.
//! - Health (15021), metrics (15020) and admin (15000, localhost).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use zmesh_config::authn::MtlsMode;
use zmesh_config::mesh::OutboundTrafficPolicy;
use zmesh_id::SpiffeId;
use zmesh_policy::{Decision, Request};
use zmesh_tls::{CertStore, ExpectedPeers, TlsOptions};

use crate::admission::{self, Admission};
use crate::config::{Current, ProxyConfig};
use crate::detect::Detected;
use crate::ext_authz;
use crate::hbone::{self, HboneClient, Refusal, ServeFuture, TunnelHandler, TunnelRequest, TunnelStream};
use crate::jwks::{JwksCache, JwksOptions};
use crate::l7::{self, ConnectionContext};
use crate::metrics::{Metrics, value};
use crate::net;
use crate::ratelimit;
use zmesh_registry::{HostRoute, MeshWorkload, PortHandling, ServiceEntryRoute, Upstream};

/// How long a connection to a ServiceEntry's endpoint may take to open before the next one is
/// tried: Istio's default cluster `connectTimeout`.
const SERVICE_ENTRY_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The ports an Istio sidecar reserves for itself (Envoy's 15000–15090): never an app's. Traffic
/// to them on the workload's own address would loop through the proxy into itself (capture,
/// HBONE, admin…), so inbound (plaintext or HBONE) and outbound refuse them — except health
/// and metrics, which the proxy answers itself and other pods probe and scrape.
fn is_reserved_port(port: u16) -> bool {
    (15000..=15090).contains(&port) && port != crate::capture::HEALTH_PORT && port != crate::capture::METRICS_PORT
}

/// Where each listener binds. HBONE, health, metrics and capture bound to every IPv4 address
/// (`0.0.0.0`) also listen on every IPv6 address (`[::]`, IPv6 only), as capture redirects both
/// families and peers may be known by an IPv6 address.
#[derive(Debug, Clone)]
pub struct Listeners {
    pub hbone: SocketAddr,
    pub health: SocketAddr,
    pub metrics: SocketAddr,
    pub admin: SocketAddr,
    /// Transparent capture's inbound (15006) and outbound (15001) ports; `None` in explicit mode.
    pub capture: Option<(SocketAddr, SocketAddr)>,
    /// Explicit outbound: connections to `listen` go to `target` through the mesh.
    pub explicit: Vec<(SocketAddr, SocketAddr)>,
    /// The explicit HTTP proxy port (`http_proxy=http://ADDR`, see `forward`); `None`: not bound.
    pub http_proxy: Option<SocketAddr>,
}

/// How this proxy reaches others.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Mark the proxy's own connections so capture lets them pass (transparent mode).
    pub marked: bool,
    /// The HBONE port of every proxy in this mesh.
    pub hbone_port: u16,
    pub hbone: hbone::ClientOptions,
}

/// The state every listener shares.
#[derive(Debug)]
pub struct Proxy {
    /// Workload, registry, policy and MeshConfig: replaced whole by configuration updates.
    config: Current,
    pub store: Arc<CertStore>,
    pub metrics: Arc<Metrics>,
    /// Mark the proxy's own connections so capture lets them pass (transparent mode).
    pub marked: bool,
    /// The HBONE port of every proxy in this mesh (15008 unless a single-host setup moves it).
    pub hbone_port: u16,
    pub shutdown: CancellationToken,
    hbone: HboneClient,
    /// Where the next connection to a ServiceEntry with several endpoints starts trying, so
    /// connections spread over them (Envoy balances a ServiceEntry's endpoints too).
    next_upstream: AtomicUsize,
    /// The admission stages' parts that outlive a configuration version.
    stages: StageParts,
    /// Who sent plaintext to which app port (exported as `zmesh_plaintext_*` series).
    pub observed: crate::observed::PlaintextObservations,
}

/// What admission needs beyond one configuration version: fetched key sets, verified tokens,
/// how to reach authorizers, the rate limits' randomness and counters.
struct StageParts {
    jwks: Arc<JwksCache>,
    token_cache: Arc<zmesh_jwt::TokenCache>,
    /// Authorizers are reached through the proxy's own outbound path (the registry, HBONE to
    /// a mesh workload's proxy, a ServiceEntry's endpoints).
    authorizers: Arc<dyn ext_authz::Connect>,
    random: Arc<dyn ratelimit::RandomSource>,
    rate_limit_stats: std::sync::Mutex<std::collections::BTreeMap<String, Arc<ratelimit::RateLimitStats>>>,
}

impl std::fmt::Debug for StageParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageParts").field("jwks", &self.jwks).finish_non_exhaustive()
    }
}

impl StageParts {
    fn new(marked: bool, authorizers: Arc<dyn ext_authz::Connect>) -> StageParts {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports TLS 1.2 and 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let seed = {
            let mut seed = [0u8; 8];
            // A seed from the system's randomness; without it, a fixed seed only makes the
            // enabled/enforced sampling predictable, which decides no security outcome.
            let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed);
            u64::from_le_bytes(seed)
        };
        StageParts {
            jwks: Arc::new(JwksCache::new(Arc::new(tls), JwksOptions { marked, ..JwksOptions::default() })),
            token_cache: Arc::new(zmesh_jwt::TokenCache::default()),
            authorizers,
            random: Arc::new(ratelimit::SplitMix64::new(seed)),
            rate_limit_stats: std::sync::Mutex::default(),
        }
    }

    /// Completes a configuration's admission with the parts that outlive it: the JWKS of its
    /// RequestAuthentication rules are watched (and the ones no rule names any more dropped),
    /// its CUSTOM providers get clients, its EnvoyFilter rate limits get fresh buckets.
    fn complete(&self, mut config: ProxyConfig, metrics: &Arc<Metrics>) -> ProxyConfig {
        let jwt_rules = config.policies.jwt_rules(&config.as_policy_sees_it);
        let mut uris: std::collections::BTreeMap<String, Option<Duration>> = std::collections::BTreeMap::new();
        for rule in jwt_rules.iter().flat_map(|r| r.rules.iter()).filter(|rule| rule.jwks.is_none()) {
            if let Some(uri) = &rule.jwks_uri {
                let timeout = uris.entry(uri.clone()).or_default();
                *timeout = (*timeout).max(rule.timeout);
            }
        }
        self.jwks.watch(uris);
        let authorizers = admission::authorizers_for(&config.policy, &config.mesh, &self.authorizers);
        let limits = {
            let mut stats = self.rate_limit_stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            ratelimit::limiters_for(
                &config.rate_limits,
                tokio::time::Instant::now().into_std(),
                &self.random,
                &mut stats,
            )
        };
        let labels = vec![
            ("destination_workload", config.workload.name.clone()),
            ("destination_workload_namespace", config.workload.namespace.clone()),
        ];
        let stages = admission::Stages {
            jwt_rules,
            jwks: Some(self.jwks.clone()),
            keys: None,
            token_cache: Some(self.token_cache.clone()),
            authorizers,
            limits,
            metrics: Some(metrics.clone()),
            labels,
        };
        config.admission = Arc::new(Admission::build(config.policy.clone(), stages));
        config
    }
}

/// Reaches an extension provider's service the way the workload's own traffic would: a mesh
/// workload by name or address over HBONE (verified against its SPIFFE ID), a ServiceEntry
/// host on a declared port through the entry's endpoints; any other name only under
/// outboundTrafficPolicy ALLOW_ANY, by DNS.
struct AuthorizerDialer(std::sync::Weak<Proxy>);

impl ext_authz::Connect for AuthorizerDialer {
    fn connect(&self, service: &str, port: u16) -> ext_authz::BoxFuture<'static, std::io::Result<ext_authz::BoxedIo>> {
        let proxy = self.0.clone();
        let host = service.rsplit_once('/').map_or(service, |(_, host)| host).to_owned();
        Box::pin(async move {
            let proxy = proxy.upgrade().ok_or_else(|| std::io::Error::other("the proxy is shutting down"))?;
            let stream = proxy.open_host(&host, port).await?;
            Ok(Box::new(stream) as ext_authz::BoxedIo)
        })
    }
}

impl Proxy {
    pub fn new(
        config: ProxyConfig,
        store: Arc<CertStore>,
        options: ProxyOptions,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let ProxyOptions { marked, hbone_port, hbone: hbone_options } = options;
        let hbone = HboneClient::new(store.clone(), hbone_options);
        Arc::new_cyclic(|weak| {
            let dialer: Arc<dyn ext_authz::Connect> = Arc::new(AuthorizerDialer(weak.clone()));
            let stages = StageParts::new(marked, dialer);
            let metrics = Arc::new(Metrics::default());
            let config = stages.complete(config, &metrics);
            Proxy {
                config: Current::new(config),
                store,
                metrics,
                marked,
                hbone_port,
                shutdown,
                hbone,
                next_upstream: AtomicUsize::new(0),
                stages,
                observed: crate::observed::PlaintextObservations::default(),
            }
        })
    }

    /// The configuration in force now.
    pub fn config(&self) -> Arc<ProxyConfig> {
        self.config.get()
    }

    /// Put a new configuration in force for connections that start from now on. Refused when
    /// it would give the workload another identity: the certificate in use proves the old one.
    pub fn update(&self, config: ProxyConfig) -> Result<(), String> {
        let current = self.config.get();
        if config.workload.identity != current.workload.identity {
            return Err(format!(
                "the update changes workload {}/{} from {} to {}; restart its proxy to take a new identity",
                current.workload.namespace, current.workload.name, current.workload.identity, config.workload.identity
            ));
        }
        tracing::info!(version = %config.version, from = %current.version, "configuration updated");
        self.config.replace(self.stages.complete(config, &self.metrics));
        Ok(())
    }

    fn l4_request(config: &ProxyConfig, peer: Option<&SpiffeId>, source: SocketAddr, target: SocketAddr) -> Decision {
        let request = Request {
            peer,
            source_ip: Some(source.ip()),
            remote_ip: None,
            destination_ip: Some(target.ip()),
            destination_port: target.port(),
            sni: None,
            http: None,
            jwt: None,
        };
        // A CUSTOM rule that matches a TCP connection denies it (`Reason::CustomOnTcp`).
        let decision = config.policy.authorize(&request);
        // AUDIT and dry-run results are logged and counted as for HTTP requests.
        config.admission.record_side_decisions(&decision, &request);
        decision
    }

    /// Istio's destination-reporter labels for traffic from `peer` to this workload.
    fn labels(config: &ProxyConfig, peer: Option<&SpiffeId>) -> crate::metrics::Labels {
        let workload = &config.workload;
        vec![
            ("reporter", "destination".to_owned()),
            ("source_principal", value(peer)),
            ("destination_principal", workload.identity.to_string()),
            ("destination_workload", workload.name.clone()),
            ("destination_workload_namespace", workload.namespace.clone()),
            ("connection_security_policy", if peer.is_some() { "mutual_tls" } else { "none" }.to_owned()),
        ]
    }

    fn record_connection(&self, config: &ProxyConfig, peer: Option<&SpiffeId>, target: SocketAddr, decision: &str) {
        let mut labels = Self::labels(config, peer);
        labels.extend([("destination_port", target.port().to_string()), ("decision", decision.to_owned())]);
        self.metrics.add("istio_tcp_connections_opened_total", labels, 1);
    }

    /// Carry one inbound connection to the app: L7 on HTTP ports, bytes on opaque ones; on a
    /// port whose protocol is not declared, the first bytes decide, and an opaque connection
    /// is authorized at L4 then (its admission let it through undecided).
    async fn forward<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        config: Arc<ProxyConfig>,
        peer: Option<SpiffeId>,
        source: SocketAddr,
        target: SocketAddr,
        mut stream: S,
    ) {
        if target.port() == crate::capture::HEALTH_PORT || target.port() == crate::capture::METRICS_PORT {
            // The proxy's own health and metrics, answered by itself: as in Istio, where capture
            // never takes them, no policy or rate limit applies.
            return self.pass_bytes(target, stream).await;
        }
        match config.workload.port_handling(target.port()) {
            PortHandling::Http => self.serve_http(config, peer, source, target, stream).await,
            PortHandling::Opaque => self.pass_bytes(target, stream).await,
            PortHandling::Detect => {
                let (seen, detected) = match crate::detect::detect(&mut stream).await {
                    Ok(detected) => detected,
                    Err(error) => return tracing::debug!(%error, "connection closed before its protocol was known"),
                };
                let stream = crate::http2::Rewind::new(seen, stream);
                if detected == Detected::Tcp {
                    let decision = Self::l4_request(&config, peer.as_ref(), source, target);
                    self.record_connection(
                        &config,
                        peer.as_ref(),
                        target,
                        if decision.is_allow() { "allow" } else { "deny" },
                    );
                    if !decision.is_allow() {
                        return tracing::debug!(%source, %target, "connection denied at L4 (detected as TCP)");
                    }
                    return self.pass_bytes(target, stream).await;
                }
                self.serve_http(config, peer, source, target, stream).await
            }
        }
    }

    async fn pass_bytes<S: AsyncRead + AsyncWrite + Unpin>(&self, target: SocketAddr, mut stream: S) {
        match net::connect(target, self.marked).await {
            Ok(mut app) => {
                let _ = crate::splice::splice(&mut stream, &mut app).await;
            }
            Err(error) => tracing::warn!(%error, %target, "cannot reach the app"),
        }
    }

    /// Every request authorized at L7: HTTP/2 with prior knowledge (h2c) or HTTP/1.1.
    async fn serve_http<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        config: Arc<ProxyConfig>,
        peer: Option<SpiffeId>,
        source: SocketAddr,
        target: SocketAddr,
        mut stream: S,
    ) {
        let marked = self.marked;
        let context = ConnectionContext {
            rate_limits: config.admission.connection_limits(),
            admission: config.admission.clone(),
            peer,
            local_identity: Some(config.workload.identity.clone()),
            source,
            destination: target,
            path_normalization: config.mesh.path_normalization,
            limits: zmesh_http::Limits::default(),
            timeouts: l7::Timeouts::default(),
            shutdown: self.shutdown.clone(),
        };
        // HTTP/2 with prior knowledge (h2c) or HTTP/1.1: the first bytes tell — within the
        // first-request timeout, also in an HBONE tunnel, where no pre-authentication guard runs.
        let (seen, is_h2) =
            match tokio::time::timeout(context.timeouts.first_request, crate::http2::sniff(&mut stream)).await {
                Ok(Ok(sniffed)) => sniffed,
                Ok(Err(error)) => return tracing::debug!(%error, "connection closed before its first request"),
                Err(_) => return tracing::debug!(%source, %target, "no request within the first-request timeout"),
            };
        let stream = crate::http2::Rewind::new(seen, stream);
        if is_h2 {
            if let Err(error) = crate::http2::serve_h2c(stream, &context, target, marked).await {
                tracing::debug!(%error, %target, "HTTP/2 connection ended with an error");
            }
            return;
        }
        match l7::serve_http1(stream, &context, || net::connect(target, marked)).await {
            Ok(stats) => {
                let mut labels = Self::labels(&config, context.peer.as_ref());
                labels.push(("request_protocol", "http".to_owned()));
                self.metrics.add("istio_requests_total", labels.clone(), stats.requests);
                self.metrics.add(
                    "zmesh_authz_decisions_total",
                    [labels, vec![("decision", "deny".to_owned())]].concat(),
                    stats.denied,
                );
            }
            Err(error) => tracing::debug!(%error, %target, "HTTP connection ended with an error"),
        }
    }
}

/// The HBONE server's view of the proxy.
#[derive(Debug)]
struct Inbound(Arc<Proxy>);

impl TunnelHandler for Inbound {
    fn admit(&self, request: &TunnelRequest) -> Result<(), Refusal> {
        let proxy = &self.0;
        let config = proxy.config();
        if request.target.ip() != config.workload.address {
            return Err(Refusal::unknown_target(format!(
                "{} is not an address of {}/{}",
                request.target, config.workload.namespace, config.workload.name
            )));
        }
        if is_reserved_port(request.target.port()) {
            return Err(Refusal::unknown_target(format!(
                "{} is a port the proxy reserves for itself, not an app's",
                request.target
            )));
        }
        if config.workload.port_handling(request.target.port()) != PortHandling::Opaque {
            // Every request on the tunnel is authorized at L7 (or, for an undeclared port that
            // turns out not to be HTTP, the connection at L4 once its first bytes are seen).
            return Ok(());
        }
        let decision = Proxy::l4_request(&config, Some(&request.peer), request.peer_addr, request.target);
        proxy.record_connection(
            &config,
            Some(&request.peer),
            request.target,
            if decision.is_allow() { "allow" } else { "deny" },
        );
        if decision.is_allow() {
            Ok(())
        } else {
            let by = decision
                .decided_by
                .as_ref()
                .map_or_else(|| "no ALLOW policy matched".to_owned(), |r| format!("{} rule {}", r.policy, r.rule));
            Err(Refusal::forbidden(format!("RBAC: access denied ({by})")))
        }
    }

    fn serve(&self, request: TunnelRequest, stream: TunnelStream) -> ServeFuture<'_> {
        Box::pin(async move {
            self.0.forward(self.0.config(), Some(request.peer), request.peer_addr, request.target, stream).await
        })
    }
}

/// How many connections one listener carries at once, and how long they may finish after
/// shutdown. Handed to every accept loop (nothing global).
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub drain_timeout: std::time::Duration,
    /// On the plaintext inbound port (15006): how long a client may take to send the opening
    /// bytes that tell its protocol (shrinking as silent connections fill the listener), and
    /// how many such connections one source address may have at once. Outbound listeners do
    /// not use it: their clients are the workload itself, and may wait for a server to speak.
    pub first_bytes: crate::preauth::PreAuthLimits,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 16_384,
            // Istio's default terminationDrainDuration.
            drain_timeout: std::time::Duration::from_secs(5),
            first_bytes: crate::preauth::PreAuthLimits::default(),
        }
    }
}

/// How the plaintext inbound port learns where a connection was going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginalDestination {
    /// `SO_ORIGINAL_DST`: the connection was redirected by iptables (`capture`).
    Redirected,
    /// The connection's own local address: the listener is bound to the workload's address
    /// itself (TPROXY-style interception, or a test). Traffic that reaches a redirecting
    /// listener this way finds the proxy's own port as its target, which is refused.
    LocalAddress,
}

impl OriginalDestination {
    fn of(self, stream: &TcpStream) -> std::io::Result<SocketAddr> {
        match self {
            OriginalDestination::Redirected => net::original_destination(stream),
            OriginalDestination::LocalAddress => stream.local_addr(),
        }
    }
}

/// Accept connections until shutdown, each handled on its own task; at most
/// `limits.max_connections` at once (further clients wait in the backlog), and on shutdown the
/// open ones get `limits.drain_timeout` to finish.
async fn accept_loop<F, Fut>(listener: TcpListener, shutdown: CancellationToken, limits: ConnectionLimits, handle: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    accept_connections(listener, shutdown, limits, None, move |stream, peer, _| handle(stream, peer)).await;
}

/// [`accept_loop`], where each connection also gets a place among the unproven ones of the
/// listener (see `preauth`) when `gate` names it (`listener` label, where refusals are
/// counted): a source with `limits.first_bytes.per_source` connections waiting already has
/// the next one closed at once; the handler releases the place when the client has spoken.
async fn accept_connections<F, Fut>(
    listener: TcpListener,
    shutdown: CancellationToken,
    limits: ConnectionLimits,
    gate: Option<(&'static str, Option<Arc<Metrics>>)>,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, Option<crate::preauth::Waiting>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let gate = gate.map(|(name, metrics)| crate::preauth::Gate::new(name, limits.first_bytes, slots.clone(), metrics));
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        let acquired = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            () = shutdown.cancelled() => break,
        };
        let Ok(slot) = acquired else { break };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors or memory: retrying at once would spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let waiting = match &gate {
            Some(gate) => match gate.admit(peer.ip()) {
                Some(waiting) => Some(waiting),
                None => {
                    // Closed at once, its slot freed: one source may not hold more than its
                    // share of the slots with connections that never speak.
                    tracing::debug!(%peer, "too many silent connections from this source; closed");
                    continue;
                }
            },
            None => None,
        };
        let _ = stream.set_nodelay(true);
        // Boxed so that the task holds one pointer instead of the handler's state twice (an
        // async block keeps a moved-in future both as its capture and as the awaited value).
        let work = Box::pin(handle(stream, peer, waiting));
        tasks.spawn(async move {
            work.await;
            drop(slot);
        });
    }
    drop(listener);
    tasks.close();
    if tokio::time::timeout(limits.drain_timeout, tasks.wait()).await.is_err() {
        tracing::info!(open = tasks.len(), "drain deadline passed; closing the remaining connections");
    }
}

impl Proxy {
    /// Serve the plaintext inbound port (15006) on `listener` until `shutdown`, learning each
    /// connection's target as `original` says. Connections that have not yet sent their opening
    /// bytes are held to `limits.first_bytes` (see [`Proxy::plaintext_inbound`]) and counted
    /// in `zmesh_connections_refused_total{listener="inbound_capture"}` when closed for it.
    pub async fn serve_inbound_capture(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
        limits: ConnectionLimits,
        original: OriginalDestination,
    ) {
        // Only a proxy with a plaintext inbound path sees plaintext: the series says since when,
        // and its absence tells `zmesh mtls-readiness` that silence here proves nothing (in
        // explicit mode plaintext reaches the app directly).
        self.metrics.set(
            "zmesh_plaintext_observed_since_seconds",
            vec![],
            crate::observed::unix_seconds(SystemTime::now()),
        );
        let gate = Some(("inbound_capture", Some(self.metrics.clone())));
        accept_connections(listener, shutdown, limits, gate, move |stream, source, waiting| {
            self.clone().plaintext_inbound(stream, source, waiting, original)
        })
        .await;
    }

    /// Plaintext inbound (transparent capture): PeerAuthentication, then policy with no peer.
    /// Until the client has spoken it holds `waiting`, its place among the listener's unproven
    /// connections: on a port whose client speaks first (HTTP, or undeclared and so detected)
    /// the bytes that tell its protocol must arrive in the time the gate allows, or the
    /// connection is closed; an opaque TCP port lets it go once authorized, as its server may
    /// be the one to speak first.
    async fn plaintext_inbound(
        self: Arc<Self>,
        mut stream: TcpStream,
        source: SocketAddr,
        waiting: Option<crate::preauth::Waiting>,
        original: OriginalDestination,
    ) {
        let target = match original.of(&stream) {
            Ok(target) => target,
            Err(error) => return tracing::warn!(%error, "no original destination on a captured connection"),
        };
        let config = self.config();
        if target.ip() != config.workload.address || is_reserved_port(target.port()) {
            // Capture sends here only traffic for the workload; anything else (its own
            // ports, another address) would make the proxy dial itself.
            return tracing::debug!(%source, %target, "captured inbound connection not for an app port of this workload; dropped");
        }
        let modes = config.policies.mtls_modes(&config.as_policy_sees_it, target.port());
        self.observe_plaintext(&config, source, target, &modes, SystemTime::now());
        if modes.enforced.mode == MtlsMode::Strict {
            self.record_connection(&config, None, target, "strict_refused");
            return tracing::debug!(%source, %target, "plaintext refused: STRICT mTLS");
        }
        let mut seen = bytes::Bytes::new();
        if config.workload.port_handling(target.port()) == PortHandling::Opaque {
            drop(waiting);
            let decision = Self::l4_request(&config, None, source, target);
            self.record_connection(&config, None, target, if decision.is_allow() { "allow" } else { "deny" });
            if !decision.is_allow() {
                return;
            }
        } else if let Some(waiting) = waiting {
            // The same reading `forward` does (detection, or telling h2c from HTTP/1.1), done
            // here under the gate's shrinking deadline; `forward` then judges the replayed
            // bytes at once. Past the opening, the HTTP path's own header and idle timeouts
            // apply.
            seen = match crate::preauth::within(&waiting, crate::detect::detect(&mut stream)).await {
                Ok(Ok((seen, _))) => seen,
                Ok(Err(error)) => return tracing::debug!(%error, %source, %target, "connection closed before it spoke"),
                Err(timed_out) => {
                    return tracing::debug!(%source, %target, waited = ?timed_out.waited, "silent connection closed");
                }
            };
        }
        self.forward(config, None, source, target, crate::http2::Rewind::new(seen, stream)).await;
    }

    /// Record a plaintext connection from `source` to an app port (`observed`, and its series
    /// for `zmesh mtls-readiness`), and, when a dry-run PeerAuthentication would refuse it, log
    /// and count that refusal — which is not made.
    fn observe_plaintext(
        &self,
        config: &ProxyConfig,
        source: SocketAddr,
        target: SocketAddr,
        modes: &zmesh_policy::authn::MtlsModes,
        now: SystemTime,
    ) {
        let workload = config.registry.at(source.ip()).map(|w| format!("{}/{}", w.namespace, w.name));
        let recorded = self.observed.record(source.ip(), workload.as_deref(), target.port(), now);
        let labels = recorded.labels();
        self.metrics.add("zmesh_plaintext_connections_total", labels.clone(), 1);
        self.metrics.set(
            "zmesh_plaintext_first_seen_seconds",
            labels.clone(),
            crate::observed::unix_seconds(recorded.row.first_seen),
        );
        self.metrics.set(
            "zmesh_plaintext_last_seen_seconds",
            labels,
            crate::observed::unix_seconds(recorded.row.last_seen),
        );
        if let Some(would) = modes.dry_run_refuses_plaintext() {
            let policy = value(would.policy.as_ref());
            // Logged at a source's 1st, 2nd, 4th, 8th… connection to the port: every sender is
            // named at once, and a flood of plaintext cannot flood the log (the counter counts
            // every one).
            if recorded.row.count.is_power_of_two() {
                let from = workload.unwrap_or_else(|| source.ip().to_string());
                tracing::info!(
                    "would refuse: plaintext connection from {from} to port {} under STRICT dry-run policy {policy} ({} so far from this source)",
                    target.port(),
                    recorded.row.count
                );
            }
            self.metrics.add(
                "zmesh_mtls_dry_run_refusals_total",
                vec![("destination_port", recorded.port.to_string()), ("policy", policy)],
                1,
            );
        }
    }

    /// Outbound: through the mesh when the destination is a mesh workload, to a ServiceEntry's
    /// upstreams when one puts the destination in the registry, else as outboundTrafficPolicy
    /// says.
    async fn outbound(self: Arc<Self>, mut stream: TcpStream, target: SocketAddr) {
        match self.open_outbound(target).await {
            Ok(mut upstream) => {
                let _ = crate::splice::splice(&mut stream, &mut upstream).await;
            }
            Err(error @ OutboundError::NotInRegistry { .. }) => tracing::info!(%error, %target, "connection refused"),
            Err(error) => tracing::warn!(%error, %target, "outbound connection failed"),
        }
    }

    /// The connection [`Proxy::outbound`] carries a stream over, opened but not yet used, so a
    /// caller that speaks a protocol (the HTTP proxy port) can answer a failure in it.
    pub(crate) async fn open_outbound(&self, target: SocketAddr) -> Result<Outbound, OutboundError> {
        let config = self.config();
        if target.ip() == config.workload.address && is_reserved_port(target.port()) {
            return Err(OutboundError::OwnProxyPort { target });
        }
        if let Some(destination) = config.registry.destination(target) {
            return self.tunnel(destination, target).await;
        }
        if let Some(route) = config.registry.route_address(target) {
            tracing::debug!(%target, service_entry = %route.service_entry, "outbound to a ServiceEntry");
            return self.open_service_entry(&route).await;
        }
        if config.mesh.outbound_traffic_policy == OutboundTrafficPolicy::AllowAny {
            Box::pin(net::connect(target, self.marked))
                .await
                .map(Either::Right)
                .map_err(|error| OutboundError::Passthrough { target, error })
        } else {
            Err(OutboundError::NotInRegistry { target })
        }
    }

    /// A connection to `host:port` for the proxy's own use (an external authorizer), routed as
    /// the workload's traffic to that name would be: a workload or IP literal by address, a
    /// ServiceEntry host on a declared port to the entry's upstreams, any other name only
    /// under ALLOW_ANY (by DNS).
    pub(crate) async fn open_host(&self, host: &str, port: u16) -> std::io::Result<Outbound> {
        let config = self.config();
        let opened = match config.registry.route_host(host, port) {
            HostRoute::Address(ip) => self.open_outbound(SocketAddr::new(ip, port)).await,
            HostRoute::ServiceEntry(route) => self.open_service_entry(&route).await,
            _ if config.mesh.outbound_traffic_policy == OutboundTrafficPolicy::AllowAny => {
                let targets = match config.registry.resolve(host) {
                    Some(ip) => vec![SocketAddr::new(ip, port)],
                    None => net::lookup(host, port).await?,
                };
                let mut failed = None;
                for target in targets {
                    match self.open_outbound(target).await {
                        Ok(upstream) => return Ok(upstream),
                        Err(error) => failed = Some(error),
                    }
                }
                return Err(failed.map_or_else(
                    || std::io::Error::new(std::io::ErrorKind::NotFound, format!("{host} resolves to no address")),
                    std::io::Error::other,
                ));
            }
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{host}:{port} is not in the mesh registry and outboundTrafficPolicy is REGISTRY_ONLY"),
                ));
            }
        };
        opened.map_err(std::io::Error::other)
    }

    /// An HBONE tunnel to `target` through the proxy of the mesh workload `destination`,
    /// verified against its SPIFFE ID.
    async fn tunnel(&self, destination: &MeshWorkload, target: SocketAddr) -> Result<Outbound, OutboundError> {
        let proxy_addr = SocketAddr::new(destination.address, self.hbone_port);
        let expected = ExpectedPeers::one(destination.identity.clone());
        // Boxed: the dial (TLS and HTTP/2 handshakes) is large and over once the tunnel is open,
        // and the caller's future lives as long as the connection.
        match Box::pin(self.hbone.connect(proxy_addr, expected, target)).await {
            Ok(tunnel) => Ok(Either::Left(tunnel)),
            Err(error) => Err(OutboundError::Tunnel { target, error }),
        }
    }

    /// A connection for a ServiceEntry's service: the first of its upstreams that accepts,
    /// starting from a different one each time. Plain TCP, since a service outside the mesh
    /// has no proxy to speak HBONE to; an endpoint that is a mesh workload gets its tunnel.
    pub(crate) async fn open_service_entry(&self, route: &ServiceEntryRoute) -> Result<Outbound, OutboundError> {
        let config = self.config();
        let count = route.upstreams.len();
        let start = if count > 1 { self.next_upstream.fetch_add(1, Ordering::Relaxed) % count } else { 0 };
        let failure = |target: String, error: std::io::Error| OutboundError::ServiceEntry {
            service_entry: route.service_entry.clone(),
            target,
            error,
        };
        let mut failed = None;
        for upstream in route.upstreams.iter().cycle().skip(start).take(count) {
            let targets = match upstream {
                Upstream::Address(address) => vec![*address],
                Upstream::Name { host, port } => match net::lookup(host, *port).await {
                    Ok(addresses) => addresses,
                    Err(error) => {
                        failed = Some(failure(format!("{host}:{port}"), error));
                        continue;
                    }
                },
            };
            for target in targets {
                let opened = match config.registry.destination(target) {
                    Some(destination) => self.tunnel(destination, target).await,
                    None => self
                        .connect_endpoint(target)
                        .await
                        .map(Either::Right)
                        .map_err(|error| failure(target.to_string(), error)),
                };
                match opened {
                    Ok(upstream) => return Ok(upstream),
                    Err(error) => failed = Some(error),
                }
            }
        }
        Err(failed.unwrap_or_else(|| OutboundError::NoEndpoints { service_entry: route.service_entry.clone() }))
    }

    /// A plain connection to a ServiceEntry's endpoint, given up after Istio's default
    /// `connectTimeout` so that an endpoint that never answers does not hold up the next one.
    async fn connect_endpoint(&self, target: SocketAddr) -> std::io::Result<TcpStream> {
        // Boxed like the other dials: the caller's future lives as long as the connection.
        match tokio::time::timeout(SERVICE_ENTRY_CONNECT_TIMEOUT, Box::pin(net::connect(target, self.marked))).await {
            Ok(connected) => connected,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {SERVICE_ENTRY_CONNECT_TIMEOUT:?}"),
            )),
        }
    }

    /// What one endpoint port serves: health (15021) only `/healthz/ready`, metrics (15020)
    /// only `/stats/prometheus` — both are reachable from the network and exempt from capture —
    /// and admin (15000, loopback only) everything, configuration (compiled, `/config_dump`, and
    /// its documents, `/config_documents`) and certificates included.
    fn routes(self: &Arc<Self>, endpoint: Endpoint) -> crate::admin::Routes {
        let proxy = self.clone();
        Arc::new(move |path| {
            let served = match endpoint {
                Endpoint::Health => path == "/healthz/ready",
                Endpoint::Metrics => path == "/stats/prometheus",
                Endpoint::Admin => true,
            };
            if !served {
                return None;
            }
            let identity = proxy.store.identity();
            match path {
                "/healthz/ready" => Some((StatusCode::OK, "text/plain", "ready\n".to_owned())),
                "/stats/prometheus" => {
                    let seconds = zmesh_ca::seconds_to_expiry(SystemTime::now(), identity.not_after());
                    proxy.metrics.set(
                        "zmesh_certificate_expiry_seconds",
                        vec![("identity", identity.spiffe_id().to_string())],
                        seconds,
                    );
                    Some((StatusCode::OK, "text/plain; version=0.0.4", proxy.metrics.render()))
                }
                "/certs" => Some((
                    StatusCode::OK,
                    "application/json",
                    serde_json::json!({
                        "identity": identity.spiffe_id().to_string(),
                        "serial": identity.serial(),
                        "notBefore": zmesh_ca::Rfc3339(identity.not_before()).to_string(),
                        "notAfter": zmesh_ca::Rfc3339(identity.not_after()).to_string(),
                        "trustBundleRoots": proxy.store.bundle().roots().len(),
                    })
                    .to_string(),
                )),
                "/config_dump" => Some((StatusCode::OK, "application/json", proxy.config_dump())),
                "/config_documents" => Some(proxy.config_documents()),
                _ => None,
            }
        })
    }

    /// The documents of the version in force, in the shape of the control plane's
    /// `/api/v1/config/NAMESPACE/NAME` (no proxies, no policies beyond the pushed ones): what
    /// this proxy enforces, readable while the control plane is down. A proxy run from local
    /// files keeps only their compiled form, so it answers 404 and says where the documents are.
    fn config_documents(&self) -> (StatusCode, &'static str, String) {
        let config = self.config();
        let workload = format!("{}/{}", config.workload.namespace, config.workload.name);
        let Some(documents) = &config.documents else {
            let error = format!(
                "the proxy of {workload} runs from local files (--config DIR), read once at start; it keeps only \
                 their compiled form (see /config_dump). The documents are those files: check them offline with \
                 `zmesh authz check --config DIR …` (if they have not changed since the proxy started)"
            );
            return (StatusCode::NOT_FOUND, "application/json", serde_json::json!({"error": error}).to_string());
        };
        let resources: Vec<serde_json::Value> = documents
            .values()
            .map(|r| serde_json::json!({"key": r.key, "version": r.version, "order": r.order, "document": r.document}))
            .collect();
        let body = serde_json::json!({
            "workload": workload,
            "version": config.version,
            "resources": resources,
            "proxies": [],
            "rootNamespace": config.mesh.root_namespace,
        });
        (StatusCode::OK, "application/json", body.to_string())
    }

    fn config_dump(&self) -> String {
        let config = self.config();
        let policies: Vec<serde_json::Value> = config
            .policy
            .all()
            .map(|p| serde_json::json!({"policy": p.id.as_ref(), "action": p.action.as_str(), "dryRun": p.dry_run, "rules": p.rules.len()}))
            .collect();
        let workload = &config.workload;
        let ports: Vec<serde_json::Value> = workload
            .ports
            .iter()
            .map(|p| {
                let mode = config.policies.mtls_mode(&config.as_policy_sees_it, p.number);
                serde_json::json!({"port": p.number, "name": p.name, "http": p.is_http(), "mtls": mode.mode.as_str(), "mtlsPolicy": mode.policy.as_deref()})
            })
            .collect();
        serde_json::json!({
            "version": config.version,
            "workload": {"namespace": workload.namespace, "name": workload.name, "address": workload.address.to_string(), "identity": workload.identity.to_string()},
            "ports": ports,
            "authorizationPolicies": policies,
            "meshWorkloads": config.registry.len(),
        })
        .to_string()
    }
}

/// The proxy's endpoint ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Health,
    Metrics,
    Admin,
}

/// An opened outbound connection: an HBONE tunnel to a mesh destination, or a direct connection.
pub(crate) type Outbound = Either<hbone::Tunnel, TcpStream>;

/// Why [`Proxy::open_outbound`] opened nothing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OutboundError {
    #[error("no tunnel to {target}: {error}")]
    Tunnel { target: SocketAddr, error: hbone::HboneError },
    #[error("cannot connect to {target} (passthrough, outboundTrafficPolicy ALLOW_ANY): {error}")]
    Passthrough { target: SocketAddr, error: std::io::Error },
    #[error("{target} is not in the mesh registry and outboundTrafficPolicy is REGISTRY_ONLY")]
    NotInRegistry { target: SocketAddr },
    #[error("cannot reach {target} for ServiceEntry {service_entry}: {error}")]
    ServiceEntry { service_entry: String, target: String, error: std::io::Error },
    #[error("{target} is the workload's own address on a port its proxy reserves; refused, as it would loop")]
    OwnProxyPort { target: SocketAddr },
    #[error("ServiceEntry {service_entry} lists no endpoint to connect to")]
    NoEndpoints { service_entry: String },
}

/// The IPv6 twin of a listener on every IPv4 address (`0.0.0.0:port`): `[::]:port` with
/// IPV6_V6ONLY, so the IPv4 socket keeps its port and each family's connections arrive on their
/// own socket. `None` for any other address, for port 0 (the twin's port would be another,
/// known to no one), and on a kernel without IPv6, where no IPv6 connection can arrive.
fn bind_ipv6_twin(addr: SocketAddr) -> std::io::Result<Option<TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    /// Linux's "address family not supported by protocol": the kernel has no IPv6.
    const EAFNOSUPPORT: i32 = 97;
    if addr != SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), addr.port()) || addr.port() == 0 {
        return Ok(None);
    }
    let twin = SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), addr.port());
    let failed = |e: std::io::Error| std::io::Error::new(e.kind(), format!("cannot listen on {twin}: {e}"));
    let socket = match Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP)) {
        Ok(socket) => socket,
        Err(e) if e.raw_os_error() == Some(EAFNOSUPPORT) => {
            tracing::info!(%addr, "the kernel has no IPv6; listening on IPv4 only");
            return Ok(None);
        }
        Err(e) => return Err(failed(e)),
    };
    // As tokio's own bind: a restarted proxy must not wait for old connections' TIME_WAIT.
    socket.set_reuse_address(true).map_err(failed)?;
    socket.set_only_v6(true).map_err(failed)?;
    socket.bind(&twin.into()).map_err(failed)?;
    socket.listen(1024).map_err(failed)?;
    socket.set_nonblocking(true).map_err(failed)?;
    TcpListener::from_std(socket.into()).map(Some).map_err(failed)
}

/// Bind every listener and serve until `shutdown`.
pub async fn run(proxy: Arc<Proxy>, listeners: Listeners) -> std::io::Result<()> {
    let shutdown = proxy.shutdown.clone();
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
    };
    // A listener on every IPv4 address, and its IPv6 twin when it has one.
    let bind_both = |addr: SocketAddr| async move {
        let mut bound = vec![bind(addr).await?];
        bound.extend(bind_ipv6_twin(addr)?);
        Ok::<_, std::io::Error>(bound)
    };
    let tls = zmesh_tls::server_config(proxy.store.clone(), &TlsOptions::default());
    let mut tasks = tokio::task::JoinSet::new();
    for hbone_listener in bind_both(listeners.hbone).await? {
        tasks.spawn(hbone::serve(
            hbone_listener,
            tls.clone(),
            Arc::new(Inbound(proxy.clone())),
            hbone::ServerLimits { refusals: Some(proxy.metrics.clone()), ..hbone::ServerLimits::default() },
            shutdown.clone(),
        ));
    }
    if !listeners.admin.ip().is_loopback() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "the admin endpoint ({}) serves the configuration and certificates: give it a loopback address",
                listeners.admin
            ),
        ));
    }
    for (listening, routes) in [
        (bind_both(listeners.health).await?, proxy.routes(Endpoint::Health)),
        (bind_both(listeners.metrics).await?, proxy.routes(Endpoint::Metrics)),
        // Loopback only (checked above): no twin.
        (vec![bind(listeners.admin).await?], proxy.routes(Endpoint::Admin)),
    ] {
        for listener in listening {
            let (routes, shutdown) = (routes.clone(), shutdown.clone());
            tasks.spawn(async move {
                crate::admin::serve(listener, routes, shutdown).await;
                Ok(())
            });
        }
    }
    if let Some((inbound, outbound)) = listeners.capture {
        // Each family's redirected connections arrive on that family's socket, where
        // `SO_ORIGINAL_DST` (v4) or `IP6T_SO_ORIGINAL_DST` (v6) answers.
        let (inbound, outbound) = (bind_both(inbound).await?, bind_both(outbound).await?);
        for (inbound, outbound) in inbound.into_iter().zip(outbound) {
            let (p1, p2) = (proxy.clone(), proxy.clone());
            let (s1, s2) = (shutdown.clone(), shutdown.clone());
            tasks.spawn(async move {
                p1.serve_inbound_capture(inbound, s1, ConnectionLimits::default(), OriginalDestination::Redirected)
                    .await;
                Ok(())
            });
            tasks.spawn(async move {
                accept_loop(outbound, s2, ConnectionLimits::default(), move |stream, _| {
                    let proxy = p2.clone();
                    async move {
                        match net::original_destination(&stream) {
                            Ok(target) => proxy.outbound(stream, target).await,
                            Err(error) => tracing::warn!(%error, "no original destination on a captured connection"),
                        }
                    }
                })
                .await;
                Ok(())
            });
        }
    }
    for (listen, target) in listeners.explicit {
        let listener = bind(listen).await?;
        let (proxy, shutdown) = (proxy.clone(), shutdown.clone());
        tasks.spawn(async move {
            accept_loop(listener, shutdown, ConnectionLimits::default(), move |stream, _| {
                proxy.clone().outbound(stream, target)
            })
            .await;
            Ok(())
        });
    }
    if let Some(listen) = listeners.http_proxy {
        let listener = bind(listen).await?;
        let (proxy, shutdown) = (proxy.clone(), shutdown.clone());
        tasks.spawn(async move {
            accept_loop(listener, shutdown, ConnectionLimits::default(), move |stream, source| {
                crate::forward::serve(proxy.clone(), stream, source)
            })
            .await;
            Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        if let Ok(Err(error)) = result {
            shutdown.cancel();
            return Err(error);
        }
    }
    Ok(())
}
