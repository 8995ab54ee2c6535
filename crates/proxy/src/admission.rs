//! Whether one HTTP request reaches the app, decided the same way for HTTP/1.1 and h2c (gRPC
//! included): the stages of an Istio sidecar's inbound HTTP filters, in their order.
//!
//! 1. A local rate limit placed first (EnvoyFilter `INSERT_FIRST`, or `INSERT_BEFORE` with no
//!    sub-filter).
//! 2. The token (RequestAuthentication): an invalid token in a location a rule reads is 401;
//!    no token passes without a request principal; a verified token's claims feed policy.
//! 3. The external authorizer (CUSTOM) when a CUSTOM rule matches; it is asked first, so its
//!    denial (status, body and headers) is what the client sees, as with Envoy's ext_authz
//!    filter ahead of RBAC.
//! 4. RBAC: DENY, then ALLOW (`zmesh-policy`), with AUDIT and `istio.io/dry-run` results
//!    recorded (log line and counter), never enforced.
//! 5. A local rate limit placed just before the router (after authorization).
//!
//! Every stage fails closed: a key set never fetched, an authorizer that cannot answer, a
//! provider the proxy cannot use — each ends in a refusal, never in a forwarded request.
//!
//! [`Admission`] is built once per configuration version; [`Admission::admit`] only awaits
//! when a request needs the external authorizer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use zmesh_config::mesh::MeshConfig;
use zmesh_policy::set::JwtRules;
use zmesh_policy::{AuthnOutcome, Claims, Decision, HttpRequest, Request, RuleRef, WorkloadPolicy};

use crate::ext_authz::{self, CheckInput, ExtAuthz};
use crate::jwks::JwksCache;
use crate::l7::ConnectionContext;
use crate::metrics::{Labels, Metrics};
use crate::ratelimit::{LocalRateLimiter, RateLimitVerdict};
use zmesh_config::networking::FilterPosition;

/// The HTTP protocol a request arrived with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpProtocol {
    Http11,
    Http2,
}

impl HttpProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpProtocol::Http11 => "HTTP/1.1",
            HttpProtocol::Http2 => "HTTP/2",
        }
    }
}

/// One request as the admission stages see it.
#[derive(Debug, Clone, Copy)]
pub struct HttpAttributes<'a> {
    pub method: &'a str,
    /// `:authority` / `Host`, including any port.
    pub authority: &'a str,
    /// The normalized path and query: what policy matches and the app receives.
    pub path: &'a str,
    /// The path and query as the client sent them (for the external authorizer).
    pub original_path: &'a str,
    /// Headers in arrival order, names lower case, `x-forwarded-client-cert` already the
    /// proxy's own.
    pub headers: &'a [(&'a str, &'a str)],
    /// The request body, when it was read before admission (only for an authorizer that asks
    /// for it): the whole body, or its first bytes up to [`Admission::body_limit`].
    pub body: Option<&'a [u8]>,
    /// Whether the request has a body at all (framing says so).
    pub has_body: bool,
    pub protocol: HttpProtocol,
}

/// Changes to the request on its way to the app, and to the response on its way back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edits {
    /// Headers to remove (lower case).
    pub remove: Vec<String>,
    /// Headers to set, replacing any of the same name.
    pub set: Vec<(String, String)>,
    /// Headers to add after those already present.
    pub append: Vec<(String, String)>,
    /// Headers to set on the response to the client.
    pub response_set: Vec<(String, String)>,
}

impl Edits {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.append.is_empty() && self.response_set.is_empty()
    }

    /// Whether a request header of this name (lower case) is dropped on the way to the app:
    /// removed, or replaced by a value in `set`.
    pub fn drops(&self, name: &str) -> bool {
        self.remove.iter().any(|r| r.eq_ignore_ascii_case(name))
            || self.set.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    fn merge(&mut self, other: Edits) {
        self.remove.extend(other.remove);
        self.set.extend(other.set);
        self.append.extend(other.append);
        self.response_set.extend(other.response_set);
    }
}

/// Which stage refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refuser {
    /// RBAC: a DENY rule matched or no ALLOW rule did; the deciding rule if one decided.
    Rbac(Option<RuleRef>),
    /// RequestAuthentication (401, or 403 for an audience no rule accepts).
    Jwt,
    /// The external authorizer of a CUSTOM policy (its own answer, or the failure status).
    External(RuleRef),
    /// A local rate limit.
    RateLimit,
}

impl Refuser {
    /// The label value of `zmesh_authz_decisions_total{decision=…}` and the access log.
    pub fn as_str(&self) -> &'static str {
        match self {
            Refuser::Rbac(_) => "deny",
            Refuser::Jwt => "jwt_denied",
            Refuser::External(_) => "ext_authz_denied",
            Refuser::RateLimit => "rate_limited",
        }
    }
}

/// A response the proxy sends instead of forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub by: Refuser,
}

impl Refusal {
    /// Envoy's RBAC denial, naming the deciding policy and rule (`none` when no rule decided).
    pub fn rbac(decided_by: Option<RuleRef>) -> Refusal {
        let (policy, rule) = decided_by
            .as_ref()
            .map_or_else(|| ("none".to_owned(), "none".to_owned()), |r| (r.policy.to_string(), r.rule.to_string()));
        Refusal {
            status: 403,
            headers: vec![
                ("content-type".to_owned(), "text/plain".to_owned()),
                ("x-zmesh-policy".to_owned(), policy),
                ("x-zmesh-rule".to_owned(), rule),
            ],
            body: Bytes::from_static(b"RBAC: access denied"),
            by: Refuser::Rbac(decided_by),
        }
    }
}

/// What [`Admission::admit`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    Forward(Edits),
    Refuse(Refusal),
}

/// The admission stages of one workload at one configuration version.
pub struct Admission {
    policy: Arc<WorkloadPolicy>,
    /// The RequestAuthentication rules that apply to the workload.
    jwt_rules: Vec<Arc<JwtRules>>,
    /// Where each rule's keys come from: the proxy's JWKS cache, or inline key sets only.
    keys: Arc<dyn zmesh_jwt::KeySource + Send + Sync>,
    /// The cache again, to ask for a refresh when a token names an unknown key.
    jwks: Option<Arc<JwksCache>>,
    token_cache: Arc<zmesh_jwt::TokenCache>,
    /// The external authorizers of the CUSTOM policies that apply, by provider name.
    authorizers: BTreeMap<String, Arc<ExtAuthz>>,
    /// The local rate limits of the workload, in filter order; each connection takes its own
    /// view ([`Admission::connection_limits`]).
    limits: Vec<LocalRateLimiter>,
    metrics: Option<Arc<Metrics>>,
    /// Labels every counter of this workload carries.
    labels: Labels,
}

impl std::fmt::Debug for Stages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stages")
            .field("jwt_rules", &self.jwt_rules.len())
            .field("authorizers", &self.authorizers.keys().collect::<Vec<_>>())
            .field("limits", &self.limits.len())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("policy", &self.policy)
            .field("jwt_rules", &self.jwt_rules.len())
            .field("authorizers", &self.authorizers.keys().collect::<Vec<_>>())
            .field("limits", &self.limits.len())
            .finish_non_exhaustive()
    }
}

/// What [`Admission::build`] takes from the proxy beyond the policy.
#[derive(Clone, Default)]
pub struct Stages {
    pub jwt_rules: Vec<Arc<JwtRules>>,
    /// The proxy's JWKS cache: the key sets of `jwksUri` rules, refreshed on unknown `kid`s.
    pub jwks: Option<Arc<JwksCache>>,
    /// Key sets from elsewhere (offline checks, tests); when set, used instead of `jwks`.
    pub keys: Option<Arc<dyn zmesh_jwt::KeySource + Send + Sync>>,
    pub token_cache: Option<Arc<zmesh_jwt::TokenCache>>,
    pub authorizers: BTreeMap<String, Arc<ExtAuthz>>,
    pub limits: Vec<LocalRateLimiter>,
    pub metrics: Option<Arc<Metrics>>,
    pub labels: Labels,
}

impl Admission {
    /// Authorization policy only: no token rules, no authorizers, no limits (a CUSTOM rule
    /// that matches is denied, since no authorizer can be asked).
    pub fn policy_only(policy: Arc<WorkloadPolicy>) -> Admission {
        Admission::build(policy, Stages::default())
    }

    pub fn build(policy: Arc<WorkloadPolicy>, stages: Stages) -> Admission {
        let Stages { jwt_rules, jwks, keys, token_cache, authorizers, limits, metrics, labels } = stages;
        let keys: Arc<dyn zmesh_jwt::KeySource + Send + Sync> = match (keys, &jwks) {
            (Some(keys), _) => keys,
            (None, Some(jwks)) => jwks.clone(),
            (None, None) => Arc::new(zmesh_jwt::StaticKeys::new()),
        };
        Admission {
            policy,
            jwt_rules,
            keys,
            jwks,
            token_cache: token_cache.unwrap_or_default(),
            authorizers,
            limits,
            metrics,
            labels,
        }
    }

    /// How much of a request body admission may need: one byte more than the largest
    /// `maxRequestBytes` of an authorizer that asks for the body (so a longer body is seen as
    /// such); `None` when none does.
    pub fn body_limit(&self) -> Option<usize> {
        self.authorizers
            .values()
            .filter_map(|authorizer| authorizer.body_settings())
            .map(|settings| settings.max_request_bytes as usize + 1)
            .max()
    }

    pub fn policy(&self) -> &Arc<WorkloadPolicy> {
        &self.policy
    }

    /// The rate limiters a new connection uses (a limiter with
    /// `local_rate_limit_per_downstream_connection` gets a bucket of the connection's own).
    pub fn connection_limits(&self) -> Arc<[LocalRateLimiter]> {
        if self.limits.is_empty() {
            return Arc::from([]);
        }
        let now = tokio::time::Instant::now().into_std();
        self.limits.iter().map(|limiter| limiter.for_connection(now)).collect()
    }

    /// Decide one request.
    pub async fn admit(&self, ctx: &ConnectionContext, request: &HttpAttributes<'_>) -> Admitted {
        let mut edits = Edits::default();
        if let Err(refusal) = self.rate_limit(ctx, FilterPosition::BeforeAuthentication, &mut edits) {
            return Admitted::Refuse(refusal);
        }
        let claims = match self.authenticate(request, &mut edits) {
            Ok(claims) => claims,
            Err(refusal) => return Admitted::Refuse(refusal),
        };
        if let Err(refusal) = self.rate_limit(ctx, FilterPosition::BeforeAuthorization, &mut edits) {
            return Admitted::Refuse(refusal);
        }
        let http = HttpRequest {
            method: request.method,
            host: request.authority,
            path: request.path,
            headers: request.headers,
        };
        let forwarded_for = http.header("x-forwarded-for");
        let query = Request {
            peer: ctx.peer.as_ref(),
            source_ip: Some(ctx.source.ip()),
            remote_ip: zmesh_policy::remote_ip_from_forwarded_for(forwarded_for.as_deref(), Some(ctx.source.ip())),
            destination_ip: Some(ctx.destination.ip()),
            destination_port: ctx.destination.port(),
            sni: None,
            http: Some(http),
            jwt: claims.as_ref(),
        };
        let decision = self.policy.authorize(&query);
        self.record_side_decisions(&decision, &query);
        if let Some(custom) = &decision.external {
            // Boxed: the authorizer's future is large and most requests never need it, so the
            // connection's own future stays small.
            match Box::pin(self.ask_authorizer(custom, ctx, request, claims.as_ref())).await {
                Ok(allowed) => edits.merge(allowed),
                Err(refusal) => return Admitted::Refuse(refusal),
            }
        }
        self.log_decision(ctx, request, &decision);
        if !decision.is_allow() {
            return Admitted::Refuse(Refusal::rbac(decision.decided_by));
        }
        if let Err(refusal) = self.rate_limit(ctx, FilterPosition::AfterAuthorization, &mut edits) {
            return Admitted::Refuse(refusal);
        }
        Admitted::Forward(edits)
    }

    /// The log line of an authorization decision (RBAC, after any external authorizer allowed),
    /// with every attribute `zmesh authz explain` needs to decide the request again with the
    /// configuration in force: the workload, the peer's principal (`none` for plaintext), the
    /// source address, the destination port, method, host, the path as policy saw it
    /// (normalized) and as the client sent it, and the deciding policy and rule (`none` when no
    /// rule decided). Strings that come from the client are quoted. Denials are logged at INFO;
    /// allowed requests, the bulk of the traffic, at DEBUG
    /// (`--log-level info,zmesh_proxy::admission=debug` shows both).
    fn log_decision(&self, ctx: &ConnectionContext, request: &HttpAttributes<'_>, decision: &Decision) {
        if decision.is_allow() && !tracing::enabled!(tracing::Level::DEBUG) {
            // The hot path: nothing to build when the line would not be written.
            return;
        }
        let label = |name: &str| self.labels.iter().find(|(n, _)| *n == name).map_or("unknown", |(_, v)| v.as_str());
        let workload = format_args!("{}/{}", label("destination_workload_namespace"), label("destination_workload"));
        let peer = ctx.peer.as_ref().map_or_else(|| "none".to_owned(), ToString::to_string);
        let by = decision.decided_by.as_ref();
        let policy = by.map_or_else(|| "none".to_owned(), |r| r.policy.to_string());
        let rule = by.map_or_else(|| "none".to_owned(), |r| r.rule.to_string());
        macro_rules! decision_line {
            ($level:ident, $decision:literal) => {
                tracing::$level!(
                    decision = $decision,
                    %workload,
                    %peer,
                    source = %ctx.source,
                    port = ctx.destination.port(),
                    method = request.method,
                    host = request.authority,
                    path = request.path,
                    sent_path = request.original_path,
                    %policy,
                    %rule,
                    "authorization decision"
                )
            };
        }
        if decision.is_allow() {
            decision_line!(debug, "allow");
        } else {
            decision_line!(info, "deny");
        }
    }

    /// The token stage: `Ok(claims)` to go on (with the claims of a verified token), or the
    /// 401/403 refusal.
    fn authenticate(&self, request: &HttpAttributes<'_>, edits: &mut Edits) -> Result<Option<Claims>, Refusal> {
        if self.jwt_rules.is_empty() {
            return Ok(None);
        }
        let query = request.original_path.split_once('?').map(|(_, query)| query);
        let tokens = zmesh_jwt::RequestTokens { method: request.method, headers: request.headers, query };
        let result = zmesh_jwt::authenticate_request(
            &self.jwt_rules,
            self.keys.as_ref(),
            &tokens,
            SystemTime::now(),
            &self.token_cache,
        );
        if let Some(jwks) = &self.jwks {
            for uri in &result.unknown_kid {
                jwks.unknown_kid(uri);
            }
        }
        match result.outcome {
            AuthnOutcome::Pass { claims, .. } => {
                let zmesh_jwt::HeaderEdits { remove, add } = result.edits;
                edits.remove.extend(remove);
                edits.set.extend(add);
                Ok(claims)
            }
            AuthnOutcome::Reject { status, detail, .. } => {
                self.count("zmesh_jwt_authn_total", "denied");
                tracing::debug!(status, %detail, "request refused by RequestAuthentication");
                let mut headers = vec![("content-type".to_owned(), "text/plain".to_owned())];
                if status == 401 {
                    headers.push(("www-authenticate".to_owned(), www_authenticate(request)));
                }
                Err(Refusal { status, headers, body: Bytes::from(detail), by: Refuser::Jwt })
            }
        }
    }

    /// Ask the CUSTOM policy's provider. A provider this proxy has no client for is a refusal
    /// (fail closed); the client itself turns errors and timeouts into its provider's
    /// `statusOnError` unless the provider says `failOpen`.
    async fn ask_authorizer(
        &self,
        custom: &RuleRef,
        ctx: &ConnectionContext,
        request: &HttpAttributes<'_>,
        claims: Option<&Claims>,
    ) -> Result<Edits, Refusal> {
        let provider = self.policy.custom.iter().find(|p| p.id == custom.policy).and_then(|p| p.provider.as_deref());
        let Some(authorizer) = provider.and_then(|name| self.authorizers.get(name)) else {
            tracing::warn!(
                policy = %custom.policy,
                provider = provider.unwrap_or("none"),
                "CUSTOM policy matched but its provider cannot be called from this proxy; request denied"
            );
            self.count("zmesh_ext_authz_total", "error");
            let mut refusal = Refusal::rbac(Some(custom.clone()));
            refusal.by = Refuser::External(custom.clone());
            return Err(refusal);
        };
        if authorizer.body_settings().is_some() && request.body.is_none() && request.has_body {
            // The provider asks to see the body, which this request path did not buffer: the
            // authorizer cannot be asked what it asked to be asked, so deny (fail closed).
            tracing::warn!(
                policy = %custom.policy,
                provider = authorizer.name(),
                "includeRequestBodyInCheck: the request body was not buffered for the check; request denied"
            );
            self.count("zmesh_ext_authz_total", "error");
            let mut refusal = Refusal::rbac(Some(custom.clone()));
            refusal.by = Refuser::External(custom.clone());
            return Err(refusal);
        }
        let input = CheckInput {
            method: request.method,
            authority: request.authority,
            path: request.original_path,
            headers: request.headers,
            body: request.body.or(if request.has_body { None } else { Some(&[]) }),
            source: ctx.source,
            destination: ctx.destination,
            source_principal: ctx.peer.as_ref(),
            destination_principal: ctx.local_identity.as_ref(),
            protocol: request.protocol.as_str(),
            jwt_claims: claims.map(Claims::as_map),
            time: SystemTime::now(),
        };
        match authorizer.check(&input).await {
            ext_authz::Verdict::Allow {
                upstream_set,
                upstream_append,
                upstream_remove,
                mut downstream_set,
                downstream_append,
            } => {
                self.count("zmesh_ext_authz_total", "allow");
                downstream_set.extend(downstream_append);
                Ok(Edits {
                    remove: upstream_remove,
                    set: upstream_set,
                    append: upstream_append,
                    response_set: downstream_set,
                })
            }
            ext_authz::Verdict::Deny { status, headers, body } => {
                self.count("zmesh_ext_authz_total", "deny");
                tracing::debug!(policy = %custom.policy, status, "request denied by the external authorizer");
                Err(Refusal { status, headers, body, by: Refuser::External(custom.clone()) })
            }
        }
    }

    /// The connection's rate limiters at one position, in filter order: the first that is
    /// over its limit (and enforced) answers; one that is over its limit but not enforced adds
    /// its headers to the request.
    fn rate_limit(&self, ctx: &ConnectionContext, position: FilterPosition, edits: &mut Edits) -> Result<(), Refusal> {
        let port = ctx.destination.port();
        let mut now = None;
        for limiter in ctx.rate_limits.iter().filter(|l| l.position() == position && l.applies_to_port(port)) {
            let now = *now.get_or_insert_with(|| tokio::time::Instant::now().into_std());
            match limiter.check(now) {
                RateLimitVerdict::Pass => {}
                RateLimitVerdict::ShadowLimited { request_headers } => {
                    self.count_limit(limiter, "shadow_limited");
                    let mut added = Vec::new();
                    crate::ratelimit::apply_headers(&mut added, &request_headers);
                    edits.set.extend(added);
                }
                RateLimitVerdict::Limited { status, body, headers } => {
                    self.count_limit(limiter, "rate_limited");
                    tracing::debug!(filter = limiter.source(), status, "request over the local rate limit");
                    return Err(Refusal {
                        status,
                        headers: headers.to_vec(),
                        body: Bytes::from_static(body.as_bytes()),
                        by: Refuser::RateLimit,
                    });
                }
            }
        }
        Ok(())
    }

    fn count_limit(&self, limiter: &LocalRateLimiter, result: &str) {
        if let Some(metrics) = &self.metrics {
            let mut labels = self.labels.clone();
            labels.push(("stat_prefix", limiter.stat_prefix().to_owned()));
            labels.push(("result", result.to_owned()));
            metrics.add("zmesh_local_rate_limit_total", labels, 1);
        }
    }

    /// AUDIT matches and dry-run results, for an HTTP request or a TCP connection: logged with
    /// the policy and rule, and counted; never enforced.
    pub(crate) fn record_side_decisions(&self, decision: &Decision, request: &Request<'_>) {
        let protocol = if request.is_http() { "http" } else { "tcp" };
        if let Some(audit) = &decision.audit {
            tracing::info!(
                protocol,
                policy = %audit.policy,
                rule = audit.rule,
                decision = if decision.is_allow() { "allow" } else { "deny" },
                "AUDIT policy matched"
            );
            self.count_rule("zmesh_authz_audit_total", audit, "audit");
        }
        if let Some(shadow) = self.policy.shadow_decision(request)
            && shadow.verdict != decision.verdict
        {
            let by = shadow.decided_by.as_ref();
            let shadow_result = if shadow.is_allow() { "allow" } else { "deny" };
            tracing::info!(
                protocol,
                policy = by.map_or("none", |r| &*r.policy),
                rule = by.map(|r| r.rule),
                shadow_result,
                "dry-run policy would change this decision"
            );
            if let Some(metrics) = &self.metrics {
                let mut labels = self.labels.clone();
                labels.push(("policy", by.map_or_else(|| "none".to_owned(), |r| r.policy.to_string())));
                labels.push(("shadow_result", shadow_result.to_owned()));
                metrics.add("zmesh_authz_dry_run_total", labels, 1);
            }
        }
    }

    fn count(&self, name: &'static str, result: &str) {
        if let Some(metrics) = &self.metrics {
            let mut labels = self.labels.clone();
            labels.push(("result", result.to_owned()));
            metrics.add(name, labels, 1);
        }
    }

    fn count_rule(&self, name: &'static str, rule: &RuleRef, result: &str) {
        if let Some(metrics) = &self.metrics {
            let mut labels = self.labels.clone();
            labels.push(("policy", rule.policy.to_string()));
            labels.push(("rule", rule.rule.to_string()));
            labels.push(("result", result.to_owned()));
            metrics.add(name, labels, 1);
        }
    }
}

/// Envoy's `www-authenticate` for a refused token: the realm is the request URL.
fn www_authenticate(request: &HttpAttributes<'_>) -> String {
    let path = request.original_path.split('?').next().unwrap_or_default();
    format!("Bearer realm=\"http://{}{}\", error=\"invalid_token\"", request.authority, path)
}

/// The external authorizer clients for the providers CUSTOM policies on this workload name.
/// A provider that is missing or not an ext_authz kind gets no client: requests its CUSTOM
/// rules match are then denied.
pub fn authorizers_for(
    policy: &WorkloadPolicy,
    mesh: &MeshConfig,
    connect: &Arc<dyn ext_authz::Connect>,
) -> BTreeMap<String, Arc<ExtAuthz>> {
    let mut out = BTreeMap::new();
    for name in policy.all().filter_map(|p| p.provider.as_deref()) {
        if out.contains_key(name) {
            continue;
        }
        let client = mesh
            .extension_providers
            .iter()
            .find(|p| p.name == name)
            .and_then(|provider| ExtAuthz::new(provider, connect.clone()));
        if let Some(client) = client {
            out.insert(name.to_owned(), Arc::new(client));
        }
    }
    out
}
