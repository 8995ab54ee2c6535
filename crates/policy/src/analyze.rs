//! `zmesh analyze`: policy that is valid but will not do what its author meant.
//!
//! Each finding names the document and line, says what will happen, and how to fix it.

use std::collections::BTreeMap;

use zmesh_config::authz::{Action, AuthorizationPolicy, Operation, Rule, Source};
use zmesh_config::diag::codes;
use zmesh_config::meta::{Meta, Selector};
use zmesh_config::yaml::Pos;
use zmesh_config::{Config, Diagnostic, ObjectRef, Origin, Severity, Spanned};
use zmesh_http::PathNormalization;

use crate::matcher::{PathMatch, StringMatch, TemplatePart};

/// A workload known from the configuration: namespace and pod labels.
#[derive(Debug, Clone)]
struct KnownWorkload {
    namespace: String,
    labels: BTreeMap<String, String>,
}

fn known_workloads(config: &Config) -> Vec<KnownWorkload> {
    let mut out: Vec<KnownWorkload> = config
        .workloads
        .iter()
        .map(|w| KnownWorkload { namespace: w.meta.namespace.clone(), labels: w.pod_labels.clone() })
        .collect();
    out.extend(
        config
            .workload_entries
            .iter()
            .map(|w| KnownWorkload { namespace: w.meta.namespace.clone(), labels: w.spec.labels.clone() }),
    );
    for entry in &config.service_entries {
        out.extend(
            entry
                .endpoints
                .iter()
                .map(|e| KnownWorkload { namespace: entry.meta.namespace.clone(), labels: e.labels.clone() }),
        );
    }
    out
}

/// What a finding is about: the object, and where in its document.
struct Subject<'a> {
    kind: &'a str,
    meta: &'a Meta,
    pos: Pos,
}

struct Findings {
    out: Vec<Diagnostic>,
}

impl Findings {
    fn add(&mut self, code: &'static str, subject: Subject<'_>, field: String, message: String, hint: String) {
        let Subject { kind, meta, pos } = subject;
        self.out.push(Diagnostic {
            severity: Severity::Warning,
            code: Some(code),
            origin: Origin { file: meta.origin.file.clone(), pos },
            object: Some(ObjectRef {
                kind: kind.to_owned(),
                namespace: Some(meta.namespace.clone()),
                name: Some(meta.name.clone()),
            }),
            field,
            message,
            hint: Some(hint),
        });
    }
}

/// Plaintext a proxy saw arriving at one port of its workload, from live observations
/// (`zmesh mtls-readiness`'s data).
#[derive(Debug, Clone)]
pub struct PlaintextSeen {
    /// `namespace/name`.
    pub workload: String,
    pub as_policy_sees_it: crate::Workload,
    pub port: u16,
    /// Who sent it, in words (`shop/legacy (10.0.0.4)`, or an address).
    pub senders: Vec<String>,
    pub connections: u64,
    /// The window the observations cover, in words (`1h`).
    pub window: String,
}

/// The PeerAuthentications of `config` that would make a port STRICT while live traffic shows
/// someone still sending it plaintext: switching would break those callers (ZM1011). Dry-run
/// policies are left out: observing is what they are for.
pub fn strict_would_break(config: &Config, seen: &[PlaintextSeen]) -> Vec<Diagnostic> {
    let set = crate::PolicySet::compile(config);
    let mut findings = Findings { out: Vec::new() };
    for observed in seen.iter().filter(|s| s.connections > 0) {
        let decision = set.mtls_mode(&observed.as_policy_sees_it, observed.port);
        if decision.accepts_plaintext() {
            continue;
        }
        let Some(id) = decision.policy.as_deref() else { continue };
        let Some(policy) =
            config.peer_authentications.iter().find(|p| format!("{}/{}", p.meta.namespace, p.meta.name) == id)
        else {
            continue;
        };
        let field = if decision.port_level {
            format!("spec.portLevelMtls.{}.mode", observed.port)
        } else {
            "spec.mtls.mode".to_owned()
        };
        findings.add(
            codes::STRICT_WOULD_BREAK,
            Subject { kind: "PeerAuthentication", meta: &policy.meta, pos: policy.meta.origin.pos },
            field,
            format!(
                "STRICT here refuses plaintext, yet {} port {} received {} plaintext connection(s) within the last {} from {}; they would be refused",
                observed.workload,
                observed.port,
                observed.connections,
                observed.window,
                observed.senders.join(", ")
            ),
            "bring those callers into the mesh first (`zmesh mtls-readiness` says SAFE once none sends plaintext), or rehearse with the annotation istio.io/dry-run: \"true\" and watch what it would refuse".into(),
        );
    }
    findings.out
}

/// Run every analyzer over a loaded configuration.
pub fn analyze(config: &Config) -> Vec<Diagnostic> {
    let mut findings = Findings { out: Vec::new() };
    let workloads = known_workloads(config);
    for policy in &config.authorization_policies {
        analyze_patterns(&mut findings, policy, config);
        if policy.action == Action::Custom
            && let Some(provider) = &policy.provider
            && !config.mesh.provider(provider).is_some_and(|p| p.kind.is_ext_authz())
        {
            findings.add(
codes::CUSTOM_PROVIDER_UNKNOWN,
Subject { kind: "AuthorizationPolicy", meta: &policy.meta, pos: provider.pos },
                "spec.provider.name".into(),
                format!("provider `{}` is not an ext_authz provider in meshConfig.extensionProviders, so every request these rules match is denied", provider.value),
                "define it under meshConfig.extensionProviders (envoyExtAuthzHttp or envoyExtAuthzGrpc), or fix the name".into(),
            );
        }
    }
    let root = config.mesh.root_namespace.as_str();
    // Without any workload in the files every selector would be reported, so selectors are
    // only checked against the workloads the files define.
    if !workloads.is_empty() {
        let selectors = config
            .authorization_policies
            .iter()
            .filter(|p| p.target_refs.is_empty())
            .map(|p| ("AuthorizationPolicy", &p.meta, p.selector.as_ref()))
            .chain(config.peer_authentications.iter().map(|p| ("PeerAuthentication", &p.meta, p.selector.as_ref())))
            .chain(
                config.request_authentications.iter().map(|p| ("RequestAuthentication", &p.meta, p.selector.as_ref())),
            )
            .chain(config.telemetries.iter().map(|p| ("Telemetry", &p.meta, p.selector.as_ref())))
            .chain(config.rate_limits.iter().map(|p| ("EnvoyFilter", &p.meta, p.selector.as_ref())));
        for (kind, meta, selector) in selectors {
            let Some(selector) = selector.filter(|s| !s.match_labels.is_empty()) else { continue };
            let in_scope = |w: &&KnownWorkload| meta.namespace == root || w.namespace == meta.namespace;
            if !workloads.iter().filter(in_scope).any(|w| selector.matches(&w.labels)) {
                let labels: Vec<String> = selector.match_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                findings.add(
                    codes::NO_MATCHING_WORKLOADS,
                    Subject { kind, meta, pos: selector.pos },
                    "spec.selector".into(),
                    format!("No matching workloads for this resource with the following labels: {}", labels.join(",")),
                    "check the labels against the workloads' pod labels, and the namespace".into(),
                );
            }
        }
    }
    if !workloads.is_empty() {
        for policy in &config.network_policies {
            let selector = &policy.pod_selector;
            let empty = selector.match_labels.is_empty() && selector.match_expressions.is_empty();
            let selected =
                workloads.iter().any(|w| w.namespace == policy.meta.namespace && selector.matches(&w.labels));
            if !empty && !selected {
                let labels: Vec<String> = selector.match_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                findings.add(
                    codes::NO_MATCHING_WORKLOADS,
                    Subject { kind: "NetworkPolicy", meta: &policy.meta, pos: policy.meta.origin.pos },
                    "spec.podSelector".into(),
                    format!("No matching workloads for this resource with the following labels: {}", labels.join(",")),
                    "check the labels against the workloads' pod labels, and the namespace".into(),
                );
            }
        }
    }
    for policy in config.peer_authentications.iter().filter(|p| p.meta.namespace == root && p.has_selector()) {
        let pos = policy.selector.as_ref().map_or(policy.meta.origin.pos, |s| s.pos);
        findings.add(
            codes::ROOT_SELECTOR_IGNORED,
            Subject { kind: "PeerAuthentication", meta: &policy.meta, pos },
            "spec.selector".into(),
            format!("a PeerAuthentication with a selector in the root namespace `{root}` is ignored"),
            "move it to the workloads' namespace, or remove the selector to make it mesh-wide".into(),
        );
    }
    analyze_shadowing(&mut findings, config);
    analyze_path_bypass(&mut findings, config);
    findings.out
}

fn analyze_patterns(findings: &mut Findings, policy: &AuthorizationPolicy, config: &Config) {
    for (rule_index, rule) in policy.rules.iter().enumerate() {
        let mut lists: Vec<(String, &[Spanned<String>])> = Vec::new();
        for (i, source) in rule.from.iter().enumerate() {
            let path = format!("spec.rules[{rule_index}].from[{i}].source");
            for (name, values) in source_lists(source) {
                lists.push((format!("{path}.{name}"), values));
            }
            check_principals(findings, policy, &format!("{path}.principals"), &source.principals, config);
            check_principals(findings, policy, &format!("{path}.notPrincipals"), &source.not_principals, config);
        }
        for (i, operation) in rule.to.iter().enumerate() {
            let path = format!("spec.rules[{rule_index}].to[{i}].operation");
            for (name, values) in operation_lists(operation) {
                lists.push((format!("{path}.{name}"), values));
            }
            check_hosts(findings, policy, &format!("{path}.hosts"), &operation.hosts);
        }
        for (i, condition) in rule.when.iter().enumerate() {
            let path = format!("spec.rules[{rule_index}].when[{i}]");
            lists.push((format!("{path}.values"), &condition.values));
            lists.push((format!("{path}.notValues"), &condition.not_values));
        }
        for (field, values) in lists {
            for value in values.iter().filter(|v| v.len() > 2 && v.starts_with('*') && v.ends_with('*')) {
                let inner = &value[1..value.len() - 1];
                findings.add(
codes::WILDCARD_BOTH_ENDS,
Subject { kind: "AuthorizationPolicy", meta: &policy.meta, pos: value.pos },
                    field.clone(),
                    format!("`{}` is not a \"contains\" match: Istio reads it as a suffix match on the literal `{inner}*`, so a value like `{inner}/1.0` does not match", value.value),
                    format!("Istio has no \"contains\" match; list the exact prefixes (`{inner}*`) or suffixes (`*{inner}`) you mean"),
                );
            }
        }
    }
}

fn source_lists(source: &Source) -> Vec<(&'static str, &[Spanned<String>])> {
    vec![
        ("principals", &source.principals),
        ("notPrincipals", &source.not_principals),
        ("requestPrincipals", &source.request_principals),
        ("notRequestPrincipals", &source.not_request_principals),
        ("namespaces", &source.namespaces),
        ("notNamespaces", &source.not_namespaces),
    ]
}

fn operation_lists(operation: &Operation) -> Vec<(&'static str, &[Spanned<String>])> {
    vec![
        ("hosts", &operation.hosts),
        ("notHosts", &operation.not_hosts),
        ("methods", &operation.methods),
        ("notMethods", &operation.not_methods),
        ("paths", &operation.paths),
        ("notPaths", &operation.not_paths),
    ]
}

fn check_hosts(findings: &mut Findings, policy: &AuthorizationPolicy, field: &str, hosts: &[Spanned<String>]) {
    for host in hosts {
        let exact = !host.contains('*') && !host.contains(':');
        let has_port_variant = hosts.iter().any(|h| h.value == format!("{}:*", host.value));
        if exact && !has_port_variant {
            findings.add(
                codes::HOST_WITHOUT_PORT,
                Subject { kind: "AuthorizationPolicy", meta: &policy.meta, pos: host.pos },
                field.to_owned(),
                format!(
                    "host `{0}` does not match a request whose Host header carries a port, such as `{0}:8080`",
                    host.value
                ),
                format!("add \"{}:*\" to the list", host.value),
            );
        }
    }
}

fn check_principals(
    findings: &mut Findings,
    policy: &AuthorizationPolicy,
    field: &str,
    principals: &[Spanned<String>],
    config: &Config,
) {
    for principal in principals {
        let value = principal.value.as_str();
        let problem = if value.starts_with("spiffe://") {
            Some((
                "written with `spiffe://`, which Istio adds itself, so it never matches",
                value.trim_start_matches("spiffe://").to_owned(),
            ))
        } else if !value.contains('*') && zmesh_id::SpiffeId::from_principal(value).is_err() {
            let suggestion = if value.starts_with("ns/") {
                format!("{}/{value}", config.mesh.trust_domain)
            } else {
                format!("{}/ns/{}/sa/{value}", config.mesh.trust_domain, policy.meta.namespace)
            };
            Some((
                "not of the form <trust-domain>/ns/<namespace>/sa/<service-account>, so it never matches a peer identity",
                suggestion,
            ))
        } else {
            None
        };
        if let Some((what, suggestion)) = problem {
            findings.add(
                codes::PRINCIPAL_NEVER_MATCHES,
                Subject { kind: "AuthorizationPolicy", meta: &policy.meta, pos: principal.pos },
                field.to_owned(),
                format!("principal `{value}` is {what}"),
                format!("write \"{suggestion}\""),
            );
        }
    }
}

/// Does every workload `inner` applies to also get `outer`? (Same namespace or root, and the
/// outer selector is a subset of the inner one.)
fn covers_scope(outer: &AuthorizationPolicy, inner: &AuthorizationPolicy, root: &str) -> bool {
    let namespace_ok = outer.meta.namespace == root || outer.meta.namespace == inner.meta.namespace;
    let selector_ok = match (&outer.selector, &inner.selector) {
        (None, _) => true,
        (Some(o), _) if o.match_labels.is_empty() => true,
        (Some(o), Some(i)) => Selector { match_labels: o.match_labels.clone(), pos: o.pos }.matches(&i.match_labels),
        (Some(_), None) => false,
    };
    namespace_ok && selector_ok && outer.target_refs.is_empty() && inner.target_refs.is_empty()
}

/// Every value the inner list allows is matched by a pattern of the outer list. Only literal
/// inner values are reasoned about.
fn list_covers(outer: &[Spanned<String>], inner: &[Spanned<String>]) -> bool {
    if outer.is_empty() {
        return true;
    }
    !inner.is_empty()
        && inner.iter().all(|v| {
            !v.contains('*') && outer.iter().any(|pattern| crate::matcher::StringMatch::parse(pattern).matches(v))
        })
}

/// A DENY rule with only positive from/to fields and no conditions covers an ALLOW rule when
/// each field it sets is set on the ALLOW rule too, with values it matches.
fn rule_covers(deny: &Rule, allow: &Rule) -> bool {
    if !deny.when.is_empty() || deny.from.len() > 1 || deny.to.len() > 1 {
        return false;
    }
    let source_ok = match deny.from.first() {
        None => true,
        Some(d) => {
            let only_positive = d.not_principals.is_empty()
                && d.not_namespaces.is_empty()
                && d.not_request_principals.is_empty()
                && d.not_ip_blocks.is_empty()
                && d.not_remote_ip_blocks.is_empty()
                && d.not_service_accounts.is_empty()
                && d.not_trust_domains.is_empty();
            let unsupported = !d.ip_blocks.is_empty()
                || !d.remote_ip_blocks.is_empty()
                || !d.service_accounts.is_empty()
                || !d.trust_domains.is_empty();
            only_positive
                && !unsupported
                && !allow.from.is_empty()
                && allow.from.iter().all(|a| {
                    list_covers(&d.principals, &a.principals)
                        && list_covers(&d.namespaces, &a.namespaces)
                        && list_covers(&d.request_principals, &a.request_principals)
                })
        }
    };
    let operation_ok = match deny.to.first() {
        None => true,
        Some(d) => {
            let only_positive =
                d.not_hosts.is_empty() && d.not_methods.is_empty() && d.not_paths.is_empty() && d.not_ports.is_empty();
            let ports_ok = d.ports.is_empty()
                || allow
                    .to
                    .iter()
                    .all(|a| !a.ports.is_empty() && a.ports.iter().all(|p| d.ports.iter().any(|q| q.value == p.value)));
            only_positive
                && ports_ok
                && !allow.to.is_empty()
                && allow.to.iter().all(|a| {
                    list_covers(&d.hosts, &a.hosts)
                        && list_covers(&d.methods, &a.methods)
                        && list_covers(&d.paths, &a.paths)
                })
        }
    };
    source_ok && operation_ok
}

fn analyze_shadowing(findings: &mut Findings, config: &Config) {
    let root = config.mesh.root_namespace.as_str();
    let enforced = |p: &&AuthorizationPolicy| !p.dry_run && p.target_refs.is_empty();
    let denies: Vec<&AuthorizationPolicy> =
        config.authorization_policies.iter().filter(enforced).filter(|p| p.action == Action::Deny).collect();
    for allow in config.authorization_policies.iter().filter(enforced).filter(|p| p.action == Action::Allow) {
        for (allow_index, allow_rule) in allow.rules.iter().enumerate() {
            let shadow = denies
                .iter()
                .filter(|d| covers_scope(d, allow, root))
                .find_map(|d| d.rules.iter().position(|r| rule_covers(r, allow_rule)).map(|i| (d, i)));
            if let Some((deny, deny_index)) = shadow {
                findings.add(
codes::SHADOWED_BY_DENY,
Subject { kind: "AuthorizationPolicy", meta: &allow.meta, pos: allow_rule.pos },
                    format!("spec.rules[{allow_index}]"),
                    format!("this ALLOW rule never allows anything: every request it matches is denied by DENY policy {} rule {deny_index}, and DENY is evaluated first", deny.meta.key()),
                    "narrow the DENY rule, or remove this ALLOW rule".into(),
                );
            }
        }
    }
}

pub use zmesh_config::diag::codes::DENY_PATH_BYPASS;

/// A way of spelling a path that the app may serve as the protected one while a path match does
/// not see it as such.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BypassClass {
    /// `//admin`.
    RepeatedSlashes,
    /// `/%2Fadmin`, `/api%2Fadmin`.
    EncodedSlash,
    /// `/%5Cadmin`.
    EncodedBackslash,
    /// `/\admin`.
    Backslash,
    /// `/./admin`, `/x/../admin`.
    DotSegment,
    /// `/%2e/admin`, `/x/%2e%2e/admin`.
    EncodedDot,
    /// `/%61dmin`: an escaped letter, digit or `-._~`.
    EncodedCharacter,
    /// `/x\..;p\admin`, `/x/%2e%2e;p/admin`: a dot segment with path parameters that Envoy
    /// keeps as a name (forwarding `/x/..;p/admin`), which Java servlet containers resolve.
    DotSegmentParameters,
    /// `/ADMIN`: no pathNormalization changes case.
    Case,
}

impl BypassClass {
    pub const ALL: [BypassClass; 9] = [
        BypassClass::RepeatedSlashes,
        BypassClass::EncodedSlash,
        BypassClass::EncodedBackslash,
        BypassClass::Backslash,
        BypassClass::DotSegment,
        BypassClass::EncodedDot,
        BypassClass::EncodedCharacter,
        BypassClass::DotSegmentParameters,
        BypassClass::Case,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            BypassClass::RepeatedSlashes => "repeated slashes",
            BypassClass::EncodedSlash => "an encoded slash %2F",
            BypassClass::EncodedBackslash => "an encoded backslash %5C",
            BypassClass::Backslash => "a backslash",
            BypassClass::DotSegment => "a dot segment",
            BypassClass::EncodedDot => "encoded dots %2e",
            BypassClass::EncodedCharacter => "an encoded letter",
            BypassClass::DotSegmentParameters => "a dot segment with parameters (`..;p`)",
            BypassClass::Case => "other letter case",
        }
    }

    /// What the app must do with the spelling for it to reach the protected resource.
    fn app_reading(self) -> &'static str {
        match self {
            BypassClass::RepeatedSlashes => "merges slashes",
            BypassClass::EncodedSlash => "decodes %2F",
            BypassClass::EncodedBackslash => "decodes %5C and treats `\\` as `/`",
            BypassClass::Backslash => "treats `\\` as `/`",
            BypassClass::DotSegment => "resolves `.` and `..`",
            BypassClass::EncodedDot => "decodes %2e and resolves dot segments",
            BypassClass::EncodedCharacter => "percent-decodes the path",
            BypassClass::DotSegmentParameters => "drops path parameters and resolves `..` (as servlet containers do)",
            BypassClass::Case => "matches paths without regard to case",
        }
    }

    /// Spellings of `path` (absolute, as the DENY pattern matches it) in this class.
    fn spellings(self, path: &str) -> Vec<String> {
        let slashes: Vec<usize> = path.match_indices('/').map(|(i, _)| i).collect();
        let insert_after = |i: usize, text: &str| format!("{}{text}{}", &path[..=i], &path[i + 1..]);
        let replace_slash = |i: usize, text: &str| format!("{}{text}{}", &path[..i], &path[i + 1..]);
        let mut out = Vec::new();
        for &i in &slashes {
            match self {
                BypassClass::RepeatedSlashes => out.push(insert_after(i, "/")),
                BypassClass::EncodedSlash | BypassClass::EncodedBackslash | BypassClass::Backslash => {
                    let text = match self {
                        BypassClass::EncodedSlash => "%2F",
                        BypassClass::EncodedBackslash => "%5C",
                        _ => "\\",
                    };
                    out.push(insert_after(i, text));
                    if i > 0 {
                        out.push(replace_slash(i, text));
                    }
                }
                BypassClass::DotSegment => {
                    out.push(insert_after(i, "./"));
                    out.push(insert_after(i, "x/../"));
                }
                BypassClass::EncodedDot => {
                    out.push(insert_after(i, "%2e/"));
                    out.push(insert_after(i, "x/%2e%2e/"));
                }
                BypassClass::DotSegmentParameters => {
                    out.push(insert_after(i, "x\\..;p\\"));
                    out.push(insert_after(i, "x/%2e%2e;p/"));
                }
                BypassClass::EncodedCharacter => {
                    if let Some(c) = path[i + 1..].chars().next().filter(char::is_ascii_alphanumeric) {
                        out.push(format!("{}%{:02X}{}", &path[..=i], u32::from(c), &path[i + 1 + c.len_utf8()..]));
                    }
                }
                BypassClass::Case => {}
            }
        }
        if self == BypassClass::Case && path.bytes().any(|b| b.is_ascii_lowercase()) {
            out.push(path.to_ascii_uppercase());
        }
        out
    }
}

/// One spelling that gets past a path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathBypass {
    pub class: BypassClass,
    /// What the client sends.
    pub sent: String,
    /// The path after the mesh's normalization: what the rule matches and the app receives.
    pub normalized: String,
}

/// A path as an app that is lenient about spelling reads it: escapes decoded once, `\` as `/`,
/// dot segments resolved (also with path parameters, `..;p`), slashes merged (and, for
/// [`BypassClass::Case`], lower case).
fn app_reading(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|b| char::from(*b).to_digit(16));
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(high), Some(low)) => {
                decoded.push(u8::try_from(high * 16 + low).unwrap_or(b'%'));
                i += 3;
            }
            (byte, _, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    let text = String::from_utf8_lossy(&decoded).replace('\\', "/");
    let mut segments: Vec<&str> = Vec::new();
    for segment in text.split('/').filter(|s| !s.is_empty()) {
        let dots = segment.split(';').next().unwrap_or_default();
        let segment = if dots == "." || dots == ".." { dots } else { segment };
        match segment {
            "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let trailing = if text.ends_with('/') && !segments.is_empty() { "/" } else { "" };
    format!("/{}{trailing}", segments.join("/"))
}

/// A path the pattern matches, to spell other ways: the pattern's literal with each wildcard
/// filled with one segment; `None` for patterns that match any path or are not absolute.
fn example_path(pattern: &PathMatch) -> Option<String> {
    let path = match pattern {
        PathMatch::String(StringMatch::Exact(path)) => path.clone(),
        PathMatch::String(StringMatch::Prefix(prefix)) if prefix.ends_with('/') => format!("{prefix}x"),
        PathMatch::String(StringMatch::Prefix(prefix)) => prefix.clone(),
        PathMatch::String(StringMatch::Suffix(suffix)) => format!("/x{suffix}"),
        PathMatch::String(StringMatch::Present) => return None,
        PathMatch::Template(parts) => parts
            .iter()
            .map(|part| match part {
                TemplatePart::Literal(text) => text.as_str(),
                TemplatePart::OneSegment | TemplatePart::AnyRest => "x",
            })
            .collect(),
    };
    (path.len() > 1 && path.starts_with('/') && !path.contains(['%', '\\', '?', '#'])).then_some(path)
}

/// Whether the proxy takes `path` as a request target at all (Envoy's HTTP/1 codec and
/// connection manager checks, as `zmesh_http` reproduces them).
fn accepted_target(path: &str) -> bool {
    let head = format!("GET {path} HTTP/1.1\r\nhost: a\r\n\r\n");
    matches!(zmesh_http::parse_request_head(head.as_bytes(), &zmesh_http::Limits::default()), Ok(Some(_)))
}

/// The spellings of a path `pattern` matches that a request can use to get past the pattern
/// under `mode`: the proxy accepts the request, its normalized path (what the rule sees and
/// the app receives) does not match, and an app that reads paths leniently (the class's
/// reading) serves it as a path the pattern matches. At most one per class, the first found.
pub fn path_bypasses(pattern: &str, mode: PathNormalization) -> Vec<PathBypass> {
    let matcher = PathMatch::parse(pattern);
    let Some(example) = example_path(&matcher) else { return Vec::new() };
    // The example itself must be what the rule sees, or the finding would be about the
    // pattern's own spelling.
    if !matches!(zmesh_http::normalize_path(&example, mode), Ok(n) if n == example) {
        return Vec::new();
    }
    let lower = PathMatch::parse(&pattern.to_ascii_lowercase());
    let mut out = Vec::new();
    for class in BypassClass::ALL {
        let found = class.spellings(&example).into_iter().find_map(|sent| {
            if !accepted_target(&sent) {
                return None;
            }
            let normalized = zmesh_http::normalize_path(&sent, mode).ok()?.into_owned();
            if matcher.matches(&normalized) {
                return None;
            }
            let read = app_reading(&normalized);
            let served = if class == BypassClass::Case {
                lower.matches(&read.to_ascii_lowercase())
            } else {
                matcher.matches(&read)
            };
            served.then_some(PathBypass { class, sent, normalized })
        });
        out.extend(found);
    }
    out
}

/// The MeshConfig spelling of a normalization mode.
pub fn mode_name(mode: PathNormalization) -> &'static str {
    match mode {
        PathNormalization::None => "NONE",
        PathNormalization::Base => "BASE",
        PathNormalization::MergeSlashes => "MERGE_SLASHES",
        PathNormalization::DecodeAndMergeSlashes => "DECODE_AND_MERGE_SLASHES",
    }
}

/// DENY rules on paths that the mesh's pathNormalization lets a client spell past.
fn analyze_path_bypass(findings: &mut Findings, config: &Config) {
    let mode = config.mesh.path_normalization;
    let stricter = [PathNormalization::Base, PathNormalization::MergeSlashes, PathNormalization::DecodeAndMergeSlashes];
    let rank = |m: PathNormalization| stricter.iter().position(|s| *s == m).map_or(0, |p| p + 1);
    for policy in config
        .authorization_policies
        .iter()
        .filter(|p| p.action == Action::Deny && !p.dry_run && p.target_refs.is_empty())
    {
        for (rule_index, rule) in policy.rules.iter().enumerate() {
            for (to_index, operation) in rule.to.iter().enumerate() {
                for (path_index, path) in operation.paths.iter().enumerate() {
                    let bypasses = path_bypasses(path, mode);
                    if bypasses.is_empty() {
                        continue;
                    }
                    let list: Vec<String> = bypasses
                        .iter()
                        .map(|b| {
                            let arrives =
                                if b.normalized == b.sent { String::new() } else { format!(" → `{}`", b.normalized) };
                            format!("`{}`{arrives} ({})", b.sent, b.class.describe())
                        })
                        .collect();
                    let mut readings: Vec<&str> = bypasses.iter().map(|b| b.class.app_reading()).collect();
                    readings.dedup();
                    // The weakest stricter mode that closes every class no mode closes (case, and
                    // dot segments with parameters, which Envoy keeps), if any.
                    let no_mode_closes =
                        |b: &PathBypass| matches!(b.class, BypassClass::Case | BypassClass::DotSegmentParameters);
                    let closing = stricter
                        .iter()
                        .copied()
                        .filter(|m| rank(*m) > rank(mode))
                        .find(|m| path_bypasses(path, *m).iter().all(no_mode_closes))
                        .filter(|_| !bypasses.iter().all(no_mode_closes));
                    let only_case = bypasses.iter().all(|b| b.class == BypassClass::Case);
                    let mut hint = match closing {
                        Some(m) if !only_case => format!(
                            "set meshConfig.pathNormalization.normalization: {} (it closes every spelling but letter case and `..;p`), or write an ALLOW rule listing the paths that are allowed instead of this DENY",
                            mode_name(m)
                        ),
                        _ => "write an ALLOW rule listing the paths that are allowed instead of this DENY".to_owned(),
                    };
                    if bypasses.iter().any(|b| b.class == BypassClass::DotSegmentParameters) {
                        hint.push_str("; no pathNormalization resolves a dot segment with parameters (Envoy forwards `/x/..;p/admin` as it is), so against an app that does (servlet containers) only an ALLOW list holds");
                    }
                    if bypasses.iter().any(|b| b.class == BypassClass::Case) {
                        hint.push_str("; no pathNormalization changes letter case, so against a case-insensitive app only an ALLOW list holds");
                    }
                    findings.add(
                        DENY_PATH_BYPASS,
                        Subject { kind: "AuthorizationPolicy", meta: &policy.meta, pos: path.pos },
                        format!("spec.rules[{rule_index}].to[{to_index}].operation.paths[{path_index}]"),
                        format!(
                            "under pathNormalization {}, a request can get past this DENY on `{}`: {} reach the app as paths the rule does not match, yet an app that {} serves them as the denied path",
                            mode_name(mode),
                            path.value,
                            list.join(", "),
                            readings.join(", or ")
                        ),
                        hint,
                    );
                    // Letter case alone depends on the app more than on the mesh: noted, not warned.
                    if only_case && let Some(finding) = findings.out.last_mut() {
                        finding.severity = Severity::Info;
                    }
                }
            }
        }
    }
}
