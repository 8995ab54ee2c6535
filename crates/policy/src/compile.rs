//! AuthorizationPolicy → matchers ready for evaluation.
//!
//! Compilation does everything that does not depend on the request once: pattern parsing,
//! `spiffe://` prefixing, trust-domain alias expansion, service-account namespaces.

use std::sync::Arc;

use ipnet::IpNet;
use zmesh_config::Spanned;
use zmesh_config::authz::{Action, AuthorizationPolicy, ConditionKey, Operation, Rule, Source};
use zmesh_config::mesh::MeshConfig;
use zmesh_id::SPIFFE_SCHEME;

use crate::matcher::{PathMatch, StringMatch};

/// `namespace/name` of a policy.
pub type PolicyId = Arc<str>;

/// Values that must match (any of them) and values that must not (none of them).
#[derive(Debug, Clone)]
pub struct AnyNone<M> {
    pub any: Vec<M>,
    pub none: Vec<M>,
}

impl<M> Default for AnyNone<M> {
    fn default() -> Self {
        AnyNone { any: Vec::new(), none: Vec::new() }
    }
}

impl<M> AnyNone<M> {
    pub fn is_set(&self) -> bool {
        !self.any.is_empty() || !self.none.is_empty()
    }

    fn from_lists<T>(values: &[T], not_values: &[T], mut compile: impl FnMut(&T) -> Vec<M>) -> Self {
        AnyNone {
            any: values.iter().flat_map(&mut compile).collect(),
            none: not_values.iter().flat_map(compile).collect(),
        }
    }

    /// `Ok` when the field passes; `Err(true)` when no positive value matched, `Err(false)` when a
    /// negative value matched.
    #[inline]
    pub fn check(&self, mut matches: impl FnMut(&M) -> bool) -> Result<(), bool> {
        if !self.any.is_empty() && !self.any.iter().any(&mut matches) {
            return Err(true);
        }
        if self.none.iter().any(matches) {
            return Err(false);
        }
        Ok(())
    }
}

/// A `serviceAccounts` entry: exact namespace and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountMatch {
    pub namespace: String,
    pub name: String,
}

/// A `requestPrincipals` entry, split at the last `/` into issuer and subject matches; `None`
/// means that part is not checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPrincipalMatch {
    pub issuer: Option<StringMatch>,
    pub subject: Option<StringMatch>,
}

impl RequestPrincipalMatch {
    /// Istio's reading of a request principal pattern (istio-semantics §5.5).
    pub fn parse(value: &str) -> RequestPrincipalMatch {
        // The issuer may be a URL, so the subject is what follows the last `/`.
        let split = value.rfind('/').map(|i| (&value[..i], &value[i + 1..]));
        let unless_any = |p: &str| (p != "*").then(|| StringMatch::parse(p));
        let (issuer, subject) = match split {
            _ if value == "*" => (Some(StringMatch::Present), Some(StringMatch::Present)),
            // A leading `*`: both parts are patterns; a bare `*` part is not checked.
            Some((issuer, subject)) if value.starts_with('*') => {
                (unless_any(issuer), Some(StringMatch::parse(subject)))
            }
            None if value.starts_with('*') => (None, Some(StringMatch::parse(value))),
            // A trailing `*`: the issuer is literal, the subject a pattern.
            Some((issuer, subject)) if value.ends_with('*') => {
                (Some(StringMatch::Exact(issuer.to_owned())), unless_any(subject))
            }
            None if value.ends_with('*') => (Some(StringMatch::parse(value)), None),
            Some((issuer, subject)) => {
                (Some(StringMatch::Exact(issuer.to_owned())), Some(StringMatch::Exact(subject.to_owned())))
            }
            // No `/` and no `*`: the whole value is the issuer and the subject must be empty,
            // which real tokens never have, so such a value never matches.
            None => (Some(StringMatch::Exact(value.to_owned())), Some(StringMatch::Exact(String::new()))),
        };
        RequestPrincipalMatch { issuer, subject }
    }

    pub fn matches(&self, issuer: Option<&str>, subject: Option<&str>) -> bool {
        let part =
            |m: &Option<StringMatch>, v: Option<&str>| m.as_ref().is_none_or(|m| v.is_some_and(|v| m.matches(v)));
        part(&self.issuer, issuer) && part(&self.subject, subject)
    }
}

#[derive(Debug, Clone, Default)]
pub struct CompiledSource {
    /// Against the full SPIFFE URI of the peer.
    pub principals: AnyNone<StringMatch>,
    pub request_principals: AnyNone<RequestPrincipalMatch>,
    /// Against the peer identity's namespace.
    pub namespaces: AnyNone<StringMatch>,
    pub service_accounts: AnyNone<ServiceAccountMatch>,
    pub trust_domains: AnyNone<StringMatch>,
    pub ip_blocks: AnyNone<IpNet>,
    pub remote_ip_blocks: AnyNone<IpNet>,
}

#[derive(Debug, Clone, Default)]
pub struct CompiledOperation {
    /// Patterns lower-cased; matched without regard to case.
    pub hosts: AnyNone<StringMatch>,
    pub ports: AnyNone<u16>,
    pub methods: AnyNone<StringMatch>,
    pub paths: AnyNone<PathMatch>,
}

/// How a `when` condition's values are matched, by key.
#[derive(Debug, Clone)]
pub enum ConditionValues {
    Strings(AnyNone<StringMatch>),
    Ips(AnyNone<IpNet>),
    Ports(AnyNone<u16>),
    ServiceAccounts(AnyNone<ServiceAccountMatch>),
    RequestPrincipals(AnyNone<RequestPrincipalMatch>),
}

#[derive(Debug, Clone)]
pub struct CompiledCondition {
    pub key: ConditionKey,
    pub values: ConditionValues,
}

#[derive(Debug, Clone, Default)]
pub struct CompiledRule {
    pub from: Vec<CompiledSource>,
    pub to: Vec<CompiledOperation>,
    pub when: Vec<CompiledCondition>,
    /// True when the rule names an HTTP-only field: on TCP an ALLOW or CUSTOM rule like this
    /// can never match, and a DENY or AUDIT rule drops those fields.
    pub uses_http_only: bool,
}

#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    pub id: PolicyId,
    pub namespace: String,
    pub name: String,
    pub action: Action,
    pub provider: Option<String>,
    pub dry_run: bool,
    pub rules: Vec<CompiledRule>,
    /// The source policy, for explanations.
    pub source: Arc<AuthorizationPolicy>,
}

/// Mesh settings that shape compilation.
#[derive(Debug, Clone)]
pub struct TrustDomains {
    /// The mesh's trust domain first, then its aliases.
    pub local: Vec<String>,
}

impl TrustDomains {
    pub fn from_mesh(mesh: &MeshConfig) -> Self {
        TrustDomains { local: mesh.trust_domains().map(|td| td.as_str().to_owned()).collect() }
    }

    /// Istio rewrites principals of the form `td/ns/x/sa/y` whose trust domain is the mesh's,
    /// an alias, or the literal `cluster.local` into one copy per local trust domain, so
    /// policies keep working when the trust domain is renamed.
    fn expand_principal(&self, value: &str) -> Vec<String> {
        let parts: Vec<&str> = value.split('/').collect();
        let expandable = parts.len() == 5
            && parts[1] == "ns"
            && parts[3] == "sa"
            && !parts[0].contains('*')
            && (parts[0] == "cluster.local" || self.local.iter().any(|td| td == parts[0]));
        if !expandable {
            return vec![value.to_owned()];
        }
        let rest = &value[parts[0].len()..];
        self.local.iter().map(|td| format!("{td}{rest}")).collect()
    }

    fn expand_trust_domain(&self, value: &str) -> Vec<String> {
        if self.local.iter().any(|td| td == value) { self.local.clone() } else { vec![value.to_owned()] }
    }
}

fn principal_matches(trust: &TrustDomains) -> impl Fn(&Spanned<String>) -> Vec<StringMatch> + '_ {
    |v| trust.expand_principal(v).iter().map(|p| StringMatch::parse(p).with_prefix(SPIFFE_SCHEME)).collect()
}

fn trust_domain_matches(trust: &TrustDomains) -> impl Fn(&Spanned<String>) -> Vec<StringMatch> + '_ {
    |v| trust.expand_trust_domain(v).iter().map(|td| StringMatch::parse(td)).collect()
}

fn service_account_match(policy_namespace: &str) -> impl Fn(&Spanned<String>) -> Vec<ServiceAccountMatch> + '_ {
    move |v| {
        let (namespace, name) = v.split_once('/').unwrap_or((policy_namespace, v.as_str()));
        vec![ServiceAccountMatch { namespace: namespace.to_owned(), name: name.to_owned() }]
    }
}

fn ip_values(values: &[Spanned<String>], not_values: &[Spanned<String>]) -> AnyNone<IpNet> {
    // Values were validated at load time; a value that does not parse cannot occur here.
    AnyNone::from_lists(values, not_values, |v| zmesh_config::authz::parse_ip_block(v).into_iter().collect())
}

fn compile_source(source: &Source, trust: &TrustDomains, namespace: &str) -> CompiledSource {
    let nets = |v: &Spanned<IpNet>| vec![v.value];
    CompiledSource {
        principals: AnyNone::from_lists(&source.principals, &source.not_principals, principal_matches(trust)),
        request_principals: AnyNone::from_lists(&source.request_principals, &source.not_request_principals, |v| {
            vec![RequestPrincipalMatch::parse(v)]
        }),
        namespaces: AnyNone::from_lists(&source.namespaces, &source.not_namespaces, |v| vec![StringMatch::parse(v)]),
        service_accounts: AnyNone::from_lists(
            &source.service_accounts,
            &source.not_service_accounts,
            service_account_match(namespace),
        ),
        trust_domains: AnyNone::from_lists(
            &source.trust_domains,
            &source.not_trust_domains,
            trust_domain_matches(trust),
        ),
        ip_blocks: AnyNone::from_lists(&source.ip_blocks, &source.not_ip_blocks, nets),
        remote_ip_blocks: AnyNone::from_lists(&source.remote_ip_blocks, &source.not_remote_ip_blocks, nets),
    }
}

fn compile_operation(operation: &Operation) -> CompiledOperation {
    CompiledOperation {
        hosts: AnyNone::from_lists(&operation.hosts, &operation.not_hosts, |v| {
            vec![StringMatch::parse(&v.to_ascii_lowercase())]
        }),
        ports: AnyNone::from_lists(&operation.ports, &operation.not_ports, |v| vec![v.value]),
        methods: AnyNone::from_lists(&operation.methods, &operation.not_methods, |v| vec![StringMatch::parse(v)]),
        paths: AnyNone::from_lists(&operation.paths, &operation.not_paths, |v| vec![PathMatch::parse(v)]),
    }
}

fn compile_condition(
    condition: &zmesh_config::authz::Condition,
    trust: &TrustDomains,
    namespace: &str,
) -> CompiledCondition {
    let (values, not_values) = (&condition.values, &condition.not_values);
    let values = match &condition.key.value {
        ConditionKey::SourceIp | ConditionKey::RemoteIp | ConditionKey::DestinationIp => {
            ConditionValues::Ips(ip_values(values, not_values))
        }
        ConditionKey::DestinationPort => ConditionValues::Ports(AnyNone::from_lists(values, not_values, |v| {
            zmesh_config::authz::parse_port(v).into_iter().collect()
        })),
        ConditionKey::SourcePrincipal => {
            ConditionValues::Strings(AnyNone::from_lists(values, not_values, principal_matches(trust)))
        }
        ConditionKey::SourceTrustDomain => {
            ConditionValues::Strings(AnyNone::from_lists(values, not_values, trust_domain_matches(trust)))
        }
        ConditionKey::SourceServiceAccount => {
            ConditionValues::ServiceAccounts(AnyNone::from_lists(values, not_values, service_account_match(namespace)))
        }
        ConditionKey::RequestAuthPrincipal => {
            ConditionValues::RequestPrincipals(AnyNone::from_lists(values, not_values, |v| {
                vec![RequestPrincipalMatch::parse(v)]
            }))
        }
        _ => ConditionValues::Strings(AnyNone::from_lists(values, not_values, |v| vec![StringMatch::parse(v)])),
    };
    CompiledCondition { key: condition.key.value.clone(), values }
}

fn compile_rule(rule: &Rule, trust: &TrustDomains, namespace: &str) -> CompiledRule {
    CompiledRule {
        from: rule.from.iter().map(|s| compile_source(s, trust, namespace)).collect(),
        to: rule.to.iter().map(compile_operation).collect(),
        when: rule.when.iter().map(|c| compile_condition(c, trust, namespace)).collect(),
        uses_http_only: rule.uses_http_only(),
    }
}

pub fn compile_policy(policy: &Arc<AuthorizationPolicy>, trust: &TrustDomains) -> CompiledPolicy {
    let namespace = &policy.meta.namespace;
    CompiledPolicy {
        id: policy.meta.key().into(),
        namespace: namespace.clone(),
        name: policy.meta.name.clone(),
        action: policy.action,
        provider: policy.provider.as_ref().map(|p| p.value.clone()),
        dry_run: policy.dry_run,
        rules: policy.rules.iter().map(|r| compile_rule(r, trust, namespace)).collect(),
        source: policy.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_principals_split_at_the_last_slash() {
        let m = RequestPrincipalMatch::parse("https://issuer.example.com/alice");
        assert!(m.matches(Some("https://issuer.example.com"), Some("alice")));
        assert!(!m.matches(Some("https://issuer.example.com"), Some("bob")));
        let any = RequestPrincipalMatch::parse("*");
        assert!(!any.matches(Some("iss"), None), "`*` needs a subject");
        let any_sub = RequestPrincipalMatch::parse("iss/*");
        assert!(any_sub.matches(Some("iss"), Some("x")));
        let suffix_iss = RequestPrincipalMatch::parse("*.example.com/sub");
        assert!(suffix_iss.matches(Some("a.example.com"), Some("sub")));
        let sub_suffix = RequestPrincipalMatch::parse("*abc");
        assert!(sub_suffix.matches(Some("anything"), Some("xabc")));
        let iss_prefix = RequestPrincipalMatch::parse("abc*");
        assert!(iss_prefix.matches(Some("abcdef"), Some("whoever")));
        let slash_in_sub = RequestPrincipalMatch::parse("example.com/user/1");
        assert!(!slash_in_sub.matches(Some("example.com"), Some("user/1")));
    }

    #[test]
    fn principals_in_the_local_trust_domain_are_expanded_to_aliases() {
        let trust = TrustDomains { local: vec!["new.td".into(), "old.td".into()] };
        assert_eq!(trust.expand_principal("cluster.local/ns/a/sa/b"), vec!["new.td/ns/a/sa/b", "old.td/ns/a/sa/b"]);
        assert_eq!(trust.expand_principal("old.td/ns/a/sa/b"), vec!["new.td/ns/a/sa/b", "old.td/ns/a/sa/b"]);
        assert_eq!(trust.expand_principal("other.td/ns/a/sa/b"), vec!["other.td/ns/a/sa/b"]);
        assert_eq!(trust.expand_principal("*/ns/a/sa/b"), vec!["*/ns/a/sa/b"]);
    }
}
