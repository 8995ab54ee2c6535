//! Authorization decisions: CUSTOM, then DENY, then ALLOW, as Istio's sidecar decides.
//!
//! [`WorkloadPolicy::authorize`] is the hot path: no allocation, no formatting. A rule check
//! returns a small `Miss` naming the first field that did not match, which
//! [`WorkloadPolicy::explain`] turns into words only when someone asks.

use std::sync::Arc;

use zmesh_config::authz::{Action, ConditionKey};

use crate::compile::{
    AnyNone, CompiledOperation, CompiledPolicy, CompiledRule, CompiledSource, ConditionValues, PolicyId,
    ServiceAccountMatch,
};
use crate::request::Request;

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
}

/// Why the decision came out as it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No ALLOW policy applies to the workload, and no DENY matched.
    NoAllowPolicies,
    /// An ALLOW rule matched.
    AllowMatched,
    /// A DENY rule matched.
    DenyMatched,
    /// ALLOW policies apply but none of their rules matched.
    NoAllowMatched,
    /// A CUSTOM rule matched but its provider is not in meshConfig.extensionProviders: fail
    /// closed.
    CustomProviderMissing,
    /// CUSTOM policies on this workload name more than one provider: fail closed.
    CustomProvidersConflict,
    /// A CUSTOM rule matched a TCP connection: zmesh sends only HTTP requests to external
    /// authorizers (Envoy's network ext_authz filter has no counterpart), so it denies.
    CustomOnTcp,
    /// The request carried a token that failed verification (before authorization).
    JwtInvalid,
    /// The request carried a valid token for an audience the rule does not accept.
    JwtAudience,
    /// A plaintext peer on a port whose PeerAuthentication is STRICT: the connection is closed
    /// before authorization (no HTTP status; the decision's `status` is 0).
    PlaintextRefused,
}

impl Reason {
    pub fn describe(self) -> &'static str {
        match self {
            Reason::NoAllowPolicies => "no ALLOW policy applies to the workload and no DENY policy matched",
            Reason::AllowMatched => "an ALLOW rule matched",
            Reason::DenyMatched => "a DENY rule matched",
            Reason::NoAllowMatched => "ALLOW policies apply to the workload but none of their rules matched",
            Reason::CustomProviderMissing => {
                "a CUSTOM rule matched, but its provider is not defined in meshConfig.extensionProviders, so the request is denied (fail closed)"
            }
            Reason::CustomProvidersConflict => {
                "CUSTOM policies on this workload name more than one provider, which Istio does not allow, so requests they match are denied"
            }
            Reason::CustomOnTcp => {
                "a CUSTOM rule matched a TCP connection; zmesh asks external authorizers only about HTTP requests, so the connection is denied (fail closed)"
            }
            Reason::JwtInvalid => "the request's JWT failed verification",
            Reason::JwtAudience => "the request's JWT is not for an accepted audience",
            Reason::PlaintextRefused => {
                "the port is STRICT mTLS: a plaintext connection is closed before authorization"
            }
        }
    }
}

/// The policy and rule that decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef {
    pub policy: PolicyId,
    pub action: Action,
    pub rule: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// HTTP status: 200 for allow, 403 for an authorization deny, 401 for a bad token.
    pub status: u16,
    pub reason: Reason,
    /// The deciding policy and rule (`None` when no rule decided).
    pub decided_by: Option<RuleRef>,
    /// A matched CUSTOM policy whose provider is asked about the request. The proxy asks it
    /// before applying `verdict`, as Envoy's ext_authz filter runs ahead of RBAC: its denial is
    /// what the client sees, and its allowance still leaves `verdict` to decide.
    pub external: Option<RuleRef>,
    /// The AUDIT rule that matched: log this request for auditing.
    pub audit: Option<RuleRef>,
}

impl Decision {
    pub fn is_allow(&self) -> bool {
        self.verdict == Verdict::Allow
    }

    pub(crate) fn deny(reason: Reason, status: u16, decided_by: Option<RuleRef>) -> Decision {
        Decision { verdict: Verdict::Deny, status, reason, decided_by, external: None, audit: None }
    }
}

/// The first part of a rule that did not match: which list, which entry, which field, and
/// whether a listed value was missing (`positive`) or a `not` value matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Miss {
    pub part: &'static str,
    pub index: usize,
    pub field: &'static str,
    pub positive: bool,
}

/// The policies that apply to one workload, grouped by action in a stable order.
#[derive(Debug, Clone, Default)]
pub struct WorkloadPolicy {
    pub custom: Vec<Arc<CompiledPolicy>>,
    pub deny: Vec<Arc<CompiledPolicy>>,
    pub allow: Vec<Arc<CompiledPolicy>>,
    pub audit: Vec<Arc<CompiledPolicy>>,
    /// Dry-run policies of every action: evaluated only for explanations and shadow results.
    pub dry_run: Vec<Arc<CompiledPolicy>>,
    /// Names of extension providers defined in meshConfig.
    pub known_providers: Arc<[String]>,
}

#[inline]
fn field(part: &'static str, index: usize, name: &'static str, result: Result<(), bool>) -> Result<(), Miss> {
    result.map_err(|positive| Miss { part, index, field: name, positive })
}

fn check_identity<M>(values: &AnyNone<M>, peer_present: bool, matches: impl FnMut(&M) -> bool) -> Result<(), bool> {
    if !values.is_set() {
        return Ok(());
    }
    if !peer_present {
        // A plaintext peer has no identity: positive values cannot match, negative values
        // therefore pass.
        return if values.any.is_empty() { Ok(()) } else { Err(true) };
    }
    values.check(matches)
}

fn service_account_matches(m: &ServiceAccountMatch, request: &Request<'_>) -> bool {
    request.peer.is_some_and(|id| id.namespace().as_str() == m.namespace && id.service_account().as_str() == m.name)
}

/// `tcp_lenient`: on a TCP connection, HTTP-only fields are dropped (treated as matching), the
/// DENY and AUDIT reading. ALLOW and CUSTOM rules with such fields are skipped before this.
fn check_source(source: &CompiledSource, index: usize, request: &Request<'_>, tcp_lenient: bool) -> Result<(), Miss> {
    let peer = request.peer;
    let present = peer.is_some();
    field(
        "from",
        index,
        "principals",
        check_identity(&source.principals, present, |m| peer.is_some_and(|id| m.matches(id.as_uri()))),
    )?;
    field(
        "from",
        index,
        "namespaces",
        check_identity(&source.namespaces, present, |m| peer.is_some_and(|id| m.matches(id.namespace().as_str()))),
    )?;
    field(
        "from",
        index,
        "serviceAccounts",
        check_identity(&source.service_accounts, present, |m| service_account_matches(m, request)),
    )?;
    field(
        "from",
        index,
        "trustDomains",
        check_identity(&source.trust_domains, present, |m| {
            peer.is_some_and(|id| m.matches(id.trust_domain().as_str()))
        }),
    )?;
    if source.ip_blocks.is_set() {
        let ip = request.source_ip;
        field("from", index, "ipBlocks", source.ip_blocks.check(|net| ip.is_some_and(|ip| net.contains(&ip))))?;
    }
    if source.remote_ip_blocks.is_set() {
        let ip = request.remote_ip();
        field(
            "from",
            index,
            "remoteIpBlocks",
            source.remote_ip_blocks.check(|net| ip.is_some_and(|ip| net.contains(&ip))),
        )?;
    }
    if source.request_principals.is_set() && (request.is_http() || !tcp_lenient) {
        let (issuer, subject) = request.jwt.map_or((None, None), |c| (c.issuer(), c.subject()));
        field(
            "from",
            index,
            "requestPrincipals",
            source.request_principals.check(|m| request.jwt.is_some() && m.matches(issuer, subject)),
        )?;
    }
    Ok(())
}

fn check_operation(
    operation: &CompiledOperation,
    index: usize,
    request: &Request<'_>,
    tcp_lenient: bool,
) -> Result<(), Miss> {
    if operation.ports.is_set() {
        field("to", index, "ports", operation.ports.check(|p| *p == request.destination_port))?;
    }
    let Some(http) = &request.http else {
        // TCP: the HTTP fields were dropped (DENY, AUDIT) or the rule was skipped (ALLOW).
        debug_assert!(
            tcp_lenient || !(operation.hosts.is_set() || operation.methods.is_set() || operation.paths.is_set())
        );
        return Ok(());
    };
    if operation.hosts.is_set() {
        field("to", index, "hosts", operation.hosts.check(|m| m.matches_ignore_case(http.host)))?;
    }
    if operation.methods.is_set() {
        field("to", index, "methods", operation.methods.check(|m| m.matches(http.method)))?;
    }
    if operation.paths.is_set() {
        let path = http.path_only();
        field("to", index, "paths", operation.paths.check(|m| m.matches(path)))?;
    }
    Ok(())
}

/// Does a claim value (string, or list of strings) satisfy a string match?
fn claim_matches(value: Option<&serde_json::Value>, m: &crate::matcher::StringMatch) -> bool {
    match value {
        Some(serde_json::Value::String(s)) => m.matches(s),
        Some(serde_json::Value::Array(items)) => items.iter().any(|i| i.as_str().is_some_and(|s| m.matches(s))),
        _ => false,
    }
}

fn check_condition(
    condition: &crate::compile::CompiledCondition,
    index: usize,
    request: &Request<'_>,
    tcp_lenient: bool,
) -> Result<(), Miss> {
    let key = &condition.key;
    if key.is_http_only() && !request.is_http() {
        debug_assert!(tcp_lenient);
        return Ok(());
    }
    let present = request.peer.is_some();
    let peer = request.peer;
    let name = condition_name(key);
    let result = match (&condition.values, key) {
        (ConditionValues::Strings(values), ConditionKey::RequestHeader(header)) => {
            let value = request.http.as_ref().and_then(|h| h.header(header));
            // A header that is present matches `*` even when empty (Envoy's present_match).
            values.check(|m| {
                value.as_deref().is_some_and(|v| matches!(m, crate::matcher::StringMatch::Present) || m.matches(v))
            })
        }
        (ConditionValues::Strings(values), ConditionKey::SourceNamespace) => {
            check_identity(values, present, |m| peer.is_some_and(|id| m.matches(id.namespace().as_str())))
        }
        (ConditionValues::Strings(values), ConditionKey::SourcePrincipal) => {
            check_identity(values, present, |m| peer.is_some_and(|id| m.matches(id.as_uri())))
        }
        (ConditionValues::Strings(values), ConditionKey::SourceTrustDomain) => {
            check_identity(values, present, |m| peer.is_some_and(|id| m.matches(id.trust_domain().as_str())))
        }
        (ConditionValues::ServiceAccounts(values), _) => {
            check_identity(values, present, |m| service_account_matches(m, request))
        }
        (ConditionValues::Strings(values), ConditionKey::RequestAuthAudiences) => {
            values.check(|m| claim_matches(request.jwt.and_then(|c| c.get("aud")), m))
        }
        (ConditionValues::Strings(values), ConditionKey::RequestAuthPresenter) => {
            values.check(|m| claim_matches(request.jwt.and_then(|c| c.get("azp")), m))
        }
        (ConditionValues::Strings(values), ConditionKey::RequestAuthClaims(path)) => {
            values.check(|m| claim_matches(request.jwt.and_then(|c| c.get_path(path)), m))
        }
        (ConditionValues::Strings(values), ConditionKey::ConnectionSni) => {
            values.check(|m| request.sni.is_some_and(|sni| m.matches(sni)))
        }
        (ConditionValues::RequestPrincipals(values), _) => {
            let (issuer, subject) = request.jwt.map_or((None, None), |c| (c.issuer(), c.subject()));
            values.check(|m| request.jwt.is_some() && m.matches(issuer, subject))
        }
        (ConditionValues::Ips(values), ConditionKey::SourceIp) => {
            values.check(|net| request.source_ip.is_some_and(|ip| net.contains(&ip)))
        }
        (ConditionValues::Ips(values), ConditionKey::RemoteIp) => {
            values.check(|net| request.remote_ip().is_some_and(|ip| net.contains(&ip)))
        }
        (ConditionValues::Ips(values), _) => {
            values.check(|net| request.destination_ip.is_some_and(|ip| net.contains(&ip)))
        }
        (ConditionValues::Ports(values), _) => values.check(|p| *p == request.destination_port),
        // Envoy dynamic metadata (`experimental.envoy.filters.*`) is never produced by zmesh:
        // listed values cannot match.
        (ConditionValues::Strings(values), _) => values.check(|_| false),
    };
    field("when", index, name, result)
}

/// The `when` key as written, for explanations.
pub fn condition_name(key: &ConditionKey) -> &'static str {
    match key {
        ConditionKey::RequestHeader(_) => "request.headers",
        ConditionKey::SourceIp => "source.ip",
        ConditionKey::RemoteIp => "remote.ip",
        ConditionKey::SourceNamespace => "source.namespace",
        ConditionKey::SourcePrincipal => "source.principal",
        ConditionKey::SourceServiceAccount => "source.serviceAccount",
        ConditionKey::SourceTrustDomain => "source.trustDomain",
        ConditionKey::RequestAuthPrincipal => "request.auth.principal",
        ConditionKey::RequestAuthAudiences => "request.auth.audiences",
        ConditionKey::RequestAuthPresenter => "request.auth.presenter",
        ConditionKey::RequestAuthClaims(_) => "request.auth.claims",
        ConditionKey::DestinationIp => "destination.ip",
        ConditionKey::DestinationPort => "destination.port",
        ConditionKey::ConnectionSni => "connection.sni",
        ConditionKey::ExperimentalEnvoyFilter(_) => "experimental.envoy.filters",
    }
}

/// Check one rule. `Miss { part: "rule", field: "http-only" }` marks an ALLOW/CUSTOM rule
/// skipped on TCP because it names HTTP-only fields.
pub fn check_rule(rule: &CompiledRule, action: Action, request: &Request<'_>) -> Result<(), Miss> {
    let tcp = !request.is_http();
    let lenient = matches!(action, Action::Deny | Action::Audit);
    if tcp && rule.uses_http_only && !lenient {
        return Err(Miss { part: "rule", index: 0, field: "http-only", positive: true });
    }
    if !rule.from.is_empty() {
        let mut first_miss = None;
        if !rule
            .from
            .iter()
            .enumerate()
            .any(|(i, s)| check_source(s, i, request, lenient).map_err(|m| first_miss.get_or_insert(m)).is_ok())
        {
            return Err(first_miss.unwrap_or(Miss { part: "from", index: 0, field: "source", positive: true }));
        }
    }
    if !rule.to.is_empty() {
        let mut first_miss = None;
        if !rule
            .to
            .iter()
            .enumerate()
            .any(|(i, o)| check_operation(o, i, request, lenient).map_err(|m| first_miss.get_or_insert(m)).is_ok())
        {
            return Err(first_miss.unwrap_or(Miss { part: "to", index: 0, field: "operation", positive: true }));
        }
    }
    for (i, condition) in rule.when.iter().enumerate() {
        check_condition(condition, i, request, lenient)?;
    }
    Ok(())
}

/// The index of the first matching rule of a policy.
pub fn matching_rule(policy: &CompiledPolicy, request: &Request<'_>) -> Option<usize> {
    policy.rules.iter().position(|rule| check_rule(rule, policy.action, request).is_ok())
}

fn first_match(policies: &[Arc<CompiledPolicy>], request: &Request<'_>) -> Option<RuleRef> {
    policies
        .iter()
        .find_map(|p| matching_rule(p, request).map(|rule| RuleRef { policy: p.id.clone(), action: p.action, rule }))
}

impl WorkloadPolicy {
    /// Decide one request or connection (token verification has already happened).
    pub fn authorize(&self, request: &Request<'_>) -> Decision {
        let mut external = None;
        if let Some(matched) = first_match(&self.custom, request) {
            let conflict = self.custom.iter().any(|p| p.provider != self.custom[0].provider);
            let provider = self.custom.iter().find(|p| p.id == matched.policy).and_then(|p| p.provider.as_deref());
            if conflict {
                return Decision::deny(Reason::CustomProvidersConflict, 403, Some(matched));
            }
            if !provider.is_some_and(|name| self.known_providers.iter().any(|k| k == name)) {
                return Decision::deny(Reason::CustomProviderMissing, 403, Some(matched));
            }
            if !request.is_http() {
                return Decision::deny(Reason::CustomOnTcp, 403, Some(matched));
            }
            external = Some(matched);
        }
        let audit = if self.audit.is_empty() { None } else { first_match(&self.audit, request) };
        if let Some(matched) = first_match(&self.deny, request) {
            return Decision { external, audit, ..Decision::deny(Reason::DenyMatched, 403, Some(matched)) };
        }
        let (verdict, reason, decided_by) = if self.allow.is_empty() {
            (Verdict::Allow, Reason::NoAllowPolicies, None)
        } else {
            match first_match(&self.allow, request) {
                Some(matched) => (Verdict::Allow, Reason::AllowMatched, Some(matched)),
                None => (Verdict::Deny, Reason::NoAllowMatched, None),
            }
        };
        let status = if verdict == Verdict::Allow { 200 } else { 403 };
        Decision { verdict, status, reason, decided_by, external, audit }
    }

    /// The decision if the dry-run policies were enforced too (what `istio.io/dry-run` reports).
    pub fn shadow_decision(&self, request: &Request<'_>) -> Option<Decision> {
        if self.dry_run.is_empty() {
            return None;
        }
        let mut enforced = self.clone();
        for policy in &self.dry_run {
            let list = match policy.action {
                Action::Allow => &mut enforced.allow,
                Action::Deny => &mut enforced.deny,
                Action::Audit => &mut enforced.audit,
                Action::Custom => &mut enforced.custom,
            };
            list.push(policy.clone());
        }
        enforced.dry_run.clear();
        Some(enforced.authorize(request))
    }

    /// Every applicable policy, in evaluation order, with whether it is dry-run.
    pub fn all(&self) -> impl Iterator<Item = &Arc<CompiledPolicy>> {
        self.custom.iter().chain(&self.deny).chain(&self.allow).chain(&self.audit).chain(&self.dry_run)
    }

    pub fn is_empty(&self) -> bool {
        self.all().next().is_none()
    }
}
