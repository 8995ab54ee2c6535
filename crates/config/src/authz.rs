//! AuthorizationPolicy (`security.istio.io/v1`, `v1beta1`): typed, validated as Istio validates.
//!
//! Validation follows istiod's webhook and the CRD schema (docs: istio-semantics §6). Anything
//! Istio rejects is an error here; anything it accepts with a warning is a warning here.

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

use crate::decode::{Ctx, Fields, Spanned};
use crate::meta::{DRY_RUN_ANNOTATION, Meta, Selector, TargetRef, read_attachment};
use crate::yaml::{Node, Pos};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Allow,
    Deny,
    Audit,
    Custom,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
            Action::Custom => "CUSTOM",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationPolicy {
    pub meta: Meta,
    pub selector: Option<Selector>,
    /// Non-empty means the policy attaches to gateways or waypoints only; sidecars ignore it.
    pub target_refs: Vec<TargetRef>,
    pub action: Action,
    /// `provider.name` of a CUSTOM policy.
    pub provider: Option<Spanned<String>>,
    /// A policy matches a request when any rule does. No rules: matches nothing.
    pub rules: Vec<Rule>,
    /// `istio.io/dry-run: "true"`: evaluated and reported, never enforced.
    pub dry_run: bool,
}

/// A rule matches when every non-empty part matches.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    pub pos: Pos,
    /// Any of these sources (none listed: any source).
    pub from: Vec<Source>,
    /// Any of these operations (none listed: any operation).
    pub to: Vec<Operation>,
    /// All of these conditions.
    pub when: Vec<Condition>,
}

/// Who sends the request. All set fields must match; within one field, any value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Source {
    pub pos: Pos,
    pub principals: Vec<Spanned<String>>,
    pub not_principals: Vec<Spanned<String>>,
    pub request_principals: Vec<Spanned<String>>,
    pub not_request_principals: Vec<Spanned<String>>,
    pub namespaces: Vec<Spanned<String>>,
    pub not_namespaces: Vec<Spanned<String>>,
    pub service_accounts: Vec<Spanned<String>>,
    pub not_service_accounts: Vec<Spanned<String>>,
    pub trust_domains: Vec<Spanned<String>>,
    pub not_trust_domains: Vec<Spanned<String>>,
    pub ip_blocks: Vec<Spanned<IpNet>>,
    pub not_ip_blocks: Vec<Spanned<IpNet>>,
    pub remote_ip_blocks: Vec<Spanned<IpNet>>,
    pub not_remote_ip_blocks: Vec<Spanned<IpNet>>,
}

/// What the request does. All set fields must match; within one field, any value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Operation {
    pub pos: Pos,
    pub hosts: Vec<Spanned<String>>,
    pub not_hosts: Vec<Spanned<String>>,
    pub ports: Vec<Spanned<u16>>,
    pub not_ports: Vec<Spanned<u16>>,
    pub methods: Vec<Spanned<String>>,
    pub not_methods: Vec<Spanned<String>>,
    pub paths: Vec<Spanned<String>>,
    pub not_paths: Vec<Spanned<String>>,
}

/// A `when` condition: any of `values` and none of `not_values`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub pos: Pos,
    pub key: Spanned<ConditionKey>,
    pub values: Vec<Spanned<String>>,
    pub not_values: Vec<Spanned<String>>,
}

/// The attributes a `when` condition can test.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ConditionKey {
    /// `request.headers[name]`; the name is stored lower-cased (header names are
    /// case-insensitive).
    RequestHeader(String),
    SourceIp,
    RemoteIp,
    SourceNamespace,
    SourcePrincipal,
    SourceServiceAccount,
    SourceTrustDomain,
    RequestAuthPrincipal,
    RequestAuthAudiences,
    RequestAuthPresenter,
    /// `request.auth.claims[a][b]…`: the path into nested claims.
    RequestAuthClaims(Vec<String>),
    DestinationIp,
    DestinationPort,
    ConnectionSni,
    /// `experimental.envoy.filters.<filter>[<key>]`: Envoy dynamic metadata, which zmesh does not
    /// produce; kept so such policies load, and never matches.
    ExperimentalEnvoyFilter(String),
}

impl ConditionKey {
    /// Fields that only exist on HTTP requests (see istio-semantics §5.6).
    pub fn is_http_only(&self) -> bool {
        matches!(
            self,
            ConditionKey::RequestHeader(_)
                | ConditionKey::RequestAuthPrincipal
                | ConditionKey::RequestAuthAudiences
                | ConditionKey::RequestAuthPresenter
                | ConditionKey::RequestAuthClaims(_)
        )
    }

    /// Fields about the peer's mTLS identity or its JWT, which CUSTOM policies may not use.
    fn is_identity(&self) -> bool {
        matches!(
            self,
            ConditionKey::SourceNamespace
                | ConditionKey::SourcePrincipal
                | ConditionKey::SourceServiceAccount
                | ConditionKey::SourceTrustDomain
                | ConditionKey::RequestAuthPrincipal
                | ConditionKey::RequestAuthAudiences
                | ConditionKey::RequestAuthPresenter
                | ConditionKey::RequestAuthClaims(_)
        )
    }
}

impl Source {
    /// True when one of the HTTP-only fields is set.
    pub fn uses_http_only(&self) -> bool {
        !self.request_principals.is_empty() || !self.not_request_principals.is_empty()
    }

    /// True when the source has a field other than the HTTP-only ones.
    pub fn uses_l4(&self) -> bool {
        // Destructured in full so that a new Source field cannot be forgotten here.
        let Source {
            pos: _,
            principals,
            not_principals,
            request_principals: _,
            not_request_principals: _,
            namespaces,
            not_namespaces,
            service_accounts,
            not_service_accounts,
            trust_domains,
            not_trust_domains,
            ip_blocks,
            not_ip_blocks,
            remote_ip_blocks,
            not_remote_ip_blocks,
        } = self;
        [
            principals,
            not_principals,
            namespaces,
            not_namespaces,
            service_accounts,
            not_service_accounts,
            trust_domains,
            not_trust_domains,
        ]
        .iter()
        .any(|v| !v.is_empty())
            || [ip_blocks, not_ip_blocks, remote_ip_blocks, not_remote_ip_blocks].iter().any(|v| !v.is_empty())
    }
}

impl Operation {
    pub fn uses_http_only(&self) -> bool {
        [&self.hosts, &self.not_hosts, &self.methods, &self.not_methods, &self.paths, &self.not_paths]
            .iter()
            .any(|v| !v.is_empty())
    }

    pub fn uses_l4(&self) -> bool {
        !self.ports.is_empty() || !self.not_ports.is_empty()
    }
}

impl Rule {
    /// True when the rule names any HTTP-only field.
    pub fn uses_http_only(&self) -> bool {
        self.from.iter().any(Source::uses_http_only)
            || self.to.iter().any(Operation::uses_http_only)
            || self.when.iter().any(|c| c.key.is_http_only())
    }

    /// True when, with every HTTP-only field removed, nothing remains: on TCP such a DENY rule
    /// matches every connection.
    pub fn is_only_http(&self) -> bool {
        self.uses_http_only()
            && !self.from.iter().any(Source::uses_l4)
            && !self.to.iter().any(Operation::uses_l4)
            && self.when.iter().all(|c| c.key.is_http_only())
    }
}

pub(crate) fn read(ctx: &mut Ctx<'_>, meta: Meta, spec: Option<(&Node, String)>) -> Option<AuthorizationPolicy> {
    let mark = ctx.diagnostics.len();
    let mut policy = AuthorizationPolicy {
        dry_run: meta.annotations.get(DRY_RUN_ANNOTATION).is_some_and(|v| v.eq_ignore_ascii_case("true")),
        meta,
        selector: None,
        target_refs: Vec::new(),
        action: Action::Allow,
        provider: None,
        rules: Vec::new(),
    };
    let Some((spec_node, spec_path)) = spec else {
        return Some(policy);
    };
    let mut spec = ctx.map(spec_node, &spec_path)?;
    (policy.selector, policy.target_refs) = read_attachment(ctx, &mut spec);
    if let Some(selector) = &policy.selector
        && selector.match_labels.is_empty()
    {
        ctx.warn(
            crate::diag::codes::SELECTOR_WITHOUT_LABELS,
            selector.pos,
            &spec.path("selector"),
            "selector has no labels, so it selects every workload in the namespace",
            "remove the selector, or add matchLabels",
        );
    }

    let action_field = spec.string(ctx, "action");
    if let Some(action) = &action_field {
        policy.action = match action.value.as_str() {
            "ALLOW" => Action::Allow,
            "DENY" => Action::Deny,
            "AUDIT" => Action::Audit,
            "CUSTOM" => Action::Custom,
            other => {
                ctx.error(
                    action.pos,
                    &spec.path("action"),
                    format!("unknown action `{other}`"),
                    "use ALLOW, DENY, AUDIT or CUSTOM (upper case)",
                );
                return None;
            }
        };
    }
    if let Some(mut provider) = spec.map(ctx, "provider") {
        let provider_path = provider.path("name");
        let name = provider.string(ctx, "name");
        provider.finish(ctx);
        if policy.action != Action::Custom {
            ctx.error(
                provider_pos(&name, spec.pos),
                &provider_path,
                "provider may only be used with action CUSTOM",
                "set `action: CUSTOM`, or remove `provider`",
            );
        }
        policy.provider = name;
    }

    let rules_path = spec.path("rules");
    let rule_nodes = spec.items(ctx, "rules");
    spec.finish(ctx);
    for (node, path) in rule_nodes.unwrap_or_default() {
        if let Some(rule) = read_rule(ctx, node, &path, policy.action) {
            policy.rules.push(rule);
        }
    }
    match policy.action {
        Action::Deny if policy.rules.is_empty() => ctx.error(
            spec_node.pos,
            &rules_path,
            "a DENY policy without rules would never match",
            "add rules; `rules: [{}]` denies every request",
        ),
        Action::Custom if policy.rules.is_empty() => ctx.error(
            spec_node.pos,
            &rules_path,
            "a CUSTOM policy without rules would never match",
            "add the rules that select which requests go to the external authorizer",
        ),
        Action::Custom if policy.provider.is_none() => ctx.error(
            spec_node.pos,
            "spec.provider.name",
            "a CUSTOM policy needs provider.name",
            "name one of meshConfig.extensionProviders",
        ),
        _ => {}
    }
    if policy.action == Action::Deny {
        for (index, rule) in policy.rules.iter().enumerate() {
            if rule.is_only_http() {
                ctx.warn(
                    crate::diag::codes::DENY_HTTP_ONLY_ON_TCP,
                    rule.pos,
                    &format!("{rules_path}[{index}]"),
                    "this DENY rule uses only HTTP fields; on TCP connections those fields are dropped and the rule denies every connection",
                    "add `ports` to the rule to scope it to HTTP ports",
                );
            }
        }
    }
    (!ctx.has_errors_since(mark)).then_some(policy)
}

fn provider_pos(name: &Option<Spanned<String>>, fallback: Pos) -> Pos {
    name.as_ref().map_or(fallback, |n| n.pos)
}

fn read_rule(ctx: &mut Ctx<'_>, node: &Node, path: &str, action: Action) -> Option<Rule> {
    let mut fields = ctx.map(node, path)?;
    let mut rule = Rule { pos: node.pos, ..Rule::default() };
    for (key, is_from) in [("from", true), ("to", false)] {
        let Some(items) = fields.items(ctx, key) else {
            continue;
        };
        if items.is_empty() {
            ctx.error(
                node.pos,
                &fields.path(key),
                format!("`{key}` is an empty list"),
                format!("remove `{key}` to match any {}", if is_from { "source" } else { "operation" }),
            );
        }
        for (item, item_path) in items {
            let inner = if is_from { "source" } else { "operation" };
            let Some(mut entry) = ctx.map(item, &item_path) else {
                continue;
            };
            let inner_node = entry.get(inner);
            entry.finish(ctx);
            let Some((inner_node, inner_path)) = inner_node else {
                ctx.error(
                    item.pos,
                    &format!("{item_path}.{inner}"),
                    format!("each `{key}` entry needs a `{inner}`"),
                    format!("write `- {inner}: {{...}}`"),
                );
                continue;
            };
            if is_from {
                rule.from.extend(read_source(ctx, inner_node, &inner_path, action));
            } else {
                rule.to.extend(read_operation(ctx, inner_node, &inner_path));
            }
        }
    }
    if let Some(items) = fields.items(ctx, "when") {
        for (item, item_path) in items {
            rule.when.extend(read_condition(ctx, item, &item_path, action));
        }
    }
    fields.finish(ctx);
    Some(rule)
}

fn non_empty_strings(ctx: &mut Ctx<'_>, fields: &mut Fields<'_>, key: &'static str) -> Vec<Spanned<String>> {
    let path = fields.path(key);
    let values = fields.strings(ctx, key).unwrap_or_default();
    for (i, value) in values.iter().enumerate() {
        if value.is_empty() {
            ctx.error(value.pos, &format!("{path}[{i}]"), "empty string", "remove it, or use \"*\" to match any value");
        }
    }
    values
}

fn ip_blocks(ctx: &mut Ctx<'_>, fields: &mut Fields<'_>, key: &'static str) -> Vec<Spanned<IpNet>> {
    let path = fields.path(key);
    let values = non_empty_strings(ctx, fields, key);
    values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| match parse_ip_block(v) {
            Ok(net) => Some(Spanned { value: net, pos: v.pos }),
            Err(message) => {
                ctx.error(
                    v.pos,
                    &format!("{path}[{i}]"),
                    message,
                    "write an IP address (10.0.0.1) or a CIDR block (10.0.0.0/16)",
                );
                None
            }
        })
        .collect()
}

/// An IP address or CIDR block as Istio accepts it; a bare address is a host route.
pub fn parse_ip_block(value: &str) -> Result<IpNet, String> {
    if value.contains('/') {
        IpNet::from_str(value).map_err(|_| format!("`{value}` is not a valid CIDR block"))
    } else {
        IpAddr::from_str(value).map(IpNet::from).map_err(|_| format!("`{value}` is not a valid IP address"))
    }
}

/// A port as Istio accepts it in policies: a base-10 number from 0 to 65535.
pub fn parse_port(value: &str) -> Result<u16, String> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{value}` is not a port number"));
    }
    value.parse::<u16>().map_err(|_| format!("port `{value}` is out of range 0-65535"))
}

fn ports(ctx: &mut Ctx<'_>, fields: &mut Fields<'_>, key: &'static str) -> Vec<Spanned<u16>> {
    let path = fields.path(key);
    let values = non_empty_strings(ctx, fields, key);
    values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| match parse_port(v) {
            Ok(port) => Some(Spanned { value: port, pos: v.pos }),
            Err(message) => {
                ctx.error(
                    v.pos,
                    &format!("{path}[{i}]"),
                    message,
                    "write each port as a single number in quotes, such as \"8080\"; ranges are not supported",
                );
                None
            }
        })
        .collect()
}

fn read_source(ctx: &mut Ctx<'_>, node: &Node, path: &str, action: Action) -> Option<Source> {
    let mark = ctx.diagnostics.len();
    let mut fields = ctx.map(node, path)?;
    let mut source = Source {
        pos: node.pos,
        principals: non_empty_strings(ctx, &mut fields, "principals"),
        not_principals: non_empty_strings(ctx, &mut fields, "notPrincipals"),
        request_principals: non_empty_strings(ctx, &mut fields, "requestPrincipals"),
        not_request_principals: non_empty_strings(ctx, &mut fields, "notRequestPrincipals"),
        namespaces: non_empty_strings(ctx, &mut fields, "namespaces"),
        not_namespaces: non_empty_strings(ctx, &mut fields, "notNamespaces"),
        service_accounts: non_empty_strings(ctx, &mut fields, "serviceAccounts"),
        not_service_accounts: non_empty_strings(ctx, &mut fields, "notServiceAccounts"),
        trust_domains: non_empty_strings(ctx, &mut fields, "trustDomains"),
        not_trust_domains: non_empty_strings(ctx, &mut fields, "notTrustDomains"),
        ..Source::default()
    };
    source.ip_blocks = ip_blocks(ctx, &mut fields, "ipBlocks");
    source.not_ip_blocks = ip_blocks(ctx, &mut fields, "notIpBlocks");
    source.remote_ip_blocks = ip_blocks(ctx, &mut fields, "remoteIpBlocks");
    source.not_remote_ip_blocks = ip_blocks(ctx, &mut fields, "notRemoteIpBlocks");
    // A source whose only fields were invalid has been reported already; only a source written
    // with nothing in it is "empty".
    let sa_path = fields.path("serviceAccounts");
    let td_path = fields.path("trustDomains");
    fields.finish(ctx);
    let empty = !source.uses_l4() && !source.uses_http_only() && !ctx.has_errors_since(mark);
    if empty {
        ctx.error(
            node.pos,
            path,
            "`source` is empty",
            "set at least one field, or remove the `from` entry to match any source",
        );
    }
    for (values, field) in [
        (&source.service_accounts, sa_path.clone()),
        (&source.not_service_accounts, sa_path.replace("serviceAccounts", "notServiceAccounts")),
    ] {
        check_service_accounts(ctx, values, &field);
    }
    let uses_sa = !source.service_accounts.is_empty() || !source.not_service_accounts.is_empty();
    let uses_principal_or_ns = [&source.principals, &source.not_principals, &source.namespaces, &source.not_namespaces]
        .iter()
        .any(|v| !v.is_empty());
    if uses_sa && uses_principal_or_ns {
        ctx.error(
            node.pos,
            &sa_path,
            "serviceAccounts cannot be combined with principals or namespaces in the same source",
            "put serviceAccounts in a separate `from` entry",
        );
    }
    for (values, field) in [
        (&source.trust_domains, td_path.clone()),
        (&source.not_trust_domains, td_path.replace("trustDomains", "notTrustDomains")),
    ] {
        for (i, value) in values.iter().enumerate() {
            if let Err(message) = check_trust_domain_value(value) {
                ctx.error(
                    value.pos,
                    &format!("{field}[{i}]"),
                    message,
                    "write a trust domain such as cluster.local, optionally with one leading or trailing `*`",
                );
            }
        }
    }
    if action == Action::Custom {
        let identity = [
            ("principals", &source.principals),
            ("notPrincipals", &source.not_principals),
            ("requestPrincipals", &source.request_principals),
            ("notRequestPrincipals", &source.not_request_principals),
            ("namespaces", &source.namespaces),
            ("notNamespaces", &source.not_namespaces),
            ("serviceAccounts", &source.service_accounts),
            ("notServiceAccounts", &source.not_service_accounts),
            ("trustDomains", &source.trust_domains),
            ("notTrustDomains", &source.not_trust_domains),
        ];
        for (name, values) in identity {
            if let Some(first) = values.first() {
                ctx.error(
                    first.pos,
                    &format!("{path}.{name}"),
                    format!("a CUSTOM policy cannot use `{name}`"),
                    "the external authorizer decides on identity; match on paths, hosts, methods, ports or IPs instead",
                );
            }
        }
    }
    Some(source)
}

fn check_service_accounts(ctx: &mut Ctx<'_>, values: &[Spanned<String>], field: &str) {
    if values.len() > 16 {
        ctx.error(
            values[16].pos,
            field,
            format!("{} service accounts given; at most 16 are allowed", values.len()),
            "split them across several `from` entries",
        );
    }
    for (i, value) in values.iter().enumerate() {
        if let Err(message) = check_service_account_value(value) {
            ctx.error(
                value.pos,
                &format!("{field}[{i}]"),
                message,
                "write `name` (in the policy's namespace) or `namespace/name`",
            );
        }
    }
}

/// A `serviceAccounts` value: `sa` or `ns/sa`, no wildcards, at most 320 characters.
pub fn check_service_account_value(value: &str) -> Result<(), String> {
    if value.len() > 320 {
        return Err(format!("service account `{value}` is longer than 320 characters"));
    }
    if value.contains('*') {
        return Err(format!("service account `{value}` has a wildcard; serviceAccounts are matched exactly"));
    }
    let parts: Vec<&str> = value.split('/').collect();
    match parts.as_slice() {
        [sa] if !sa.is_empty() => Ok(()),
        [ns, sa] if !ns.is_empty() && !sa.is_empty() => Ok(()),
        _ => Err(format!("`{value}` is not a service account")),
    }
}

/// A `trustDomains` value: no `/`, at most one `*`, and only at either end.
pub fn check_trust_domain_value(value: &str) -> Result<(), String> {
    if value.contains('/') {
        return Err(format!("trust domain `{value}` contains `/`"));
    }
    let stars = value.matches('*').count();
    let inner = value.trim_start_matches('*').trim_end_matches('*');
    if stars > 1 || inner.contains('*') {
        return Err(format!("trust domain `{value}` may have at most one `*`, at its start or end"));
    }
    Ok(())
}

fn read_operation(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<Operation> {
    let mark = ctx.diagnostics.len();
    let mut fields = ctx.map(node, path)?;
    let mut operation = Operation {
        pos: node.pos,
        hosts: non_empty_strings(ctx, &mut fields, "hosts"),
        not_hosts: non_empty_strings(ctx, &mut fields, "notHosts"),
        methods: non_empty_strings(ctx, &mut fields, "methods"),
        not_methods: non_empty_strings(ctx, &mut fields, "notMethods"),
        paths: non_empty_strings(ctx, &mut fields, "paths"),
        not_paths: non_empty_strings(ctx, &mut fields, "notPaths"),
        ..Operation::default()
    };
    operation.ports = ports(ctx, &mut fields, "ports");
    operation.not_ports = ports(ctx, &mut fields, "notPorts");
    for key in ["paths", "notPaths"] {
        let field = fields.path(key);
        let values = if key == "paths" { &operation.paths } else { &operation.not_paths };
        for (i, value) in values.iter().enumerate() {
            if let Err(message) = check_path_template(value) {
                ctx.error(value.pos, &format!("{field}[{i}]"), message, "use `{*}` for one path segment and `{**}` for the rest, each as a whole segment, with no other `*`, `{` or `}`");
            }
        }
    }
    fields.finish(ctx);
    let empty = !operation.uses_l4() && !operation.uses_http_only() && !ctx.has_errors_since(mark);
    if empty {
        ctx.error(
            node.pos,
            path,
            "`operation` is empty",
            "set at least one field, or remove the `to` entry to match any operation",
        );
    }
    Some(operation)
}

/// True when the path uses Istio's `{*}`/`{**}` template operators.
pub fn is_path_template(path: &str) -> bool {
    path.contains("{*}") || path.contains("{**}")
}

/// Istio's path template rules: operators are whole segments, `{**}` is the last operator, and
/// a template has no other `*`, `{` or `}`.
pub fn check_path_template(path: &str) -> Result<(), String> {
    let template = is_path_template(path);
    let mut seen_match_any = false;
    for segment in path.trim_matches('/').split('/') {
        match segment {
            "{*}" | "{**}" if seen_match_any => {
                return Err(format!("path `{path}`: `{{**}}` must be the last operator"));
            }
            "{**}" => seen_match_any = true,
            "{*}" => {}
            _ if segment.contains(['{', '}']) => {
                return Err(format!("path `{path}` contains `{{` or `}}` outside a `{{*}}` or `{{**}}` segment"));
            }
            _ if template && !is_path_literal(segment) => {
                return Err(format!(
                    "path template `{path}` has the segment `{segment}`, which is not a valid literal"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// RFC 3986 `pchar`s, less `*` (which would be ambiguous next to template operators).
fn is_path_literal(segment: &str) -> bool {
    segment.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()+,;=:@".contains(&b))
}

fn read_condition(ctx: &mut Ctx<'_>, node: &Node, path: &str, action: Action) -> Option<Condition> {
    let mut fields = ctx.map(node, path)?;
    let key = fields.string(ctx, "key");
    let key_path = fields.path("key");
    let values_path = fields.path("values");
    let values = non_empty_strings(ctx, &mut fields, "values");
    let not_values = non_empty_strings(ctx, &mut fields, "notValues");
    fields.finish(ctx);
    let Some(key) = key else {
        ctx.error(
            node.pos,
            &key_path,
            "`key` is required",
            "name the attribute to test, such as request.headers[x-token]",
        );
        return None;
    };
    if values.is_empty() && not_values.is_empty() {
        ctx.error(
            node.pos,
            &values_path,
            format!("condition `{}` has neither values nor notValues", key.value),
            "add `values` or `notValues`",
        );
    }
    let parsed = match parse_condition_key(&key) {
        Ok(parsed) => parsed,
        Err((message, hint)) => {
            ctx.error(key.pos, &key_path, message, hint);
            return None;
        }
    };
    let all_values = values.iter().chain(&not_values);
    match &parsed {
        ConditionKey::SourceIp | ConditionKey::RemoteIp | ConditionKey::DestinationIp => {
            for value in all_values {
                if let Err(message) = parse_ip_block(value) {
                    ctx.error(value.pos, &values_path, message, "write an IP address or a CIDR block");
                }
            }
        }
        ConditionKey::DestinationPort => {
            for value in all_values {
                if let Err(message) = parse_port(value) {
                    ctx.error(value.pos, &values_path, message, "write a single port number");
                }
            }
        }
        ConditionKey::SourceServiceAccount => {
            for value in all_values {
                if let Err(message) = check_service_account_value(value) {
                    ctx.error(value.pos, &values_path, message, "write `name` or `namespace/name`");
                }
            }
        }
        ConditionKey::SourceTrustDomain => {
            for value in all_values {
                if let Err(message) = check_trust_domain_value(value) {
                    ctx.error(value.pos, &values_path, message, "write a trust domain with at most one `*` at an end");
                }
            }
        }
        _ => {}
    }
    if action == Action::Custom && parsed.is_identity() {
        ctx.error(
            key.pos,
            &key_path,
            format!("a CUSTOM policy cannot use `{}`", key.value),
            "the external authorizer decides on identity",
        );
    }
    Some(Condition { pos: node.pos, key: Spanned { value: parsed, pos: key.pos }, values, not_values })
}

/// Parse a `when` key, with Istio's messages for the keys it refuses.
pub fn parse_condition_key(key: &str) -> Result<ConditionKey, (String, String)> {
    let bad_map_key = || {
        (
            format!("`{key}` is not of the form name[key]"),
            "write the key in square brackets, such as request.headers[x-token]".to_owned(),
        )
    };
    let simple = match key {
        "source.ip" => Some(ConditionKey::SourceIp),
        "remote.ip" => Some(ConditionKey::RemoteIp),
        "source.namespace" => Some(ConditionKey::SourceNamespace),
        "source.principal" => Some(ConditionKey::SourcePrincipal),
        "source.serviceAccount" => Some(ConditionKey::SourceServiceAccount),
        "source.trustDomain" => Some(ConditionKey::SourceTrustDomain),
        "request.auth.principal" => Some(ConditionKey::RequestAuthPrincipal),
        "request.auth.audiences" => Some(ConditionKey::RequestAuthAudiences),
        "request.auth.presenter" => Some(ConditionKey::RequestAuthPresenter),
        "destination.ip" => Some(ConditionKey::DestinationIp),
        "destination.port" => Some(ConditionKey::DestinationPort),
        "connection.sni" => Some(ConditionKey::ConnectionSni),
        "destination.namespace" => {
            return Err((
                "`destination.namespace` is not supported".into(),
                "the policy applies to its own namespace (metadata.namespace); move it there".into(),
            ));
        }
        "destination.name" | "destination.user" => {
            return Err((format!("`{key}` is not supported"), "select workloads with `selector` instead".into()));
        }
        _ => None,
    };
    if let Some(simple) = simple {
        return Ok(simple);
    }
    if let Some(rest) = key.strip_prefix("request.headers") {
        let names = bracketed(rest).ok_or_else(bad_map_key)?;
        return match names.as_slice() {
            [name] => Ok(ConditionKey::RequestHeader(name.to_ascii_lowercase())),
            _ => Err(bad_map_key()),
        };
    }
    if let Some(rest) = key.strip_prefix("request.auth.claims") {
        let names = bracketed(rest).ok_or_else(bad_map_key)?;
        return Ok(ConditionKey::RequestAuthClaims(names));
    }
    if key.starts_with("destination.labels") {
        return Err((
            "`destination.labels` is not supported".into(),
            "select workloads with `selector.matchLabels` instead".into(),
        ));
    }
    if let Some(rest) = key.strip_prefix("experimental.envoy.filters.") {
        let bracket = rest.find('[').ok_or_else(bad_map_key)?;
        bracketed(&rest[bracket..]).filter(|_| bracket > 0).ok_or_else(bad_map_key)?;
        return Ok(ConditionKey::ExperimentalEnvoyFilter(key.to_owned()));
    }
    let known = [
        "request.headers[]",
        "source.ip",
        "remote.ip",
        "source.namespace",
        "source.principal",
        "source.serviceAccount",
        "source.trustDomain",
        "request.auth.principal",
        "request.auth.audiences",
        "request.auth.presenter",
        "request.auth.claims[]",
        "destination.ip",
        "destination.port",
        "connection.sni",
    ];
    let hint = match crate::diag::nearest(key, known) {
        Some(suggestion) => format!("did you mean `{suggestion}`?"),
        None => format!("use one of: {}", known.join(", ")),
    };
    Err((format!("unknown attribute `{key}`"), hint))
}

/// `[a][b]…` → `["a", "b"]`; every name non-empty and the whole string consumed. A name may hold
/// dots or slashes: `[foo.com/name]` is one claim.
fn bracketed(mut rest: &str) -> Option<Vec<String>> {
    let mut names = Vec::new();
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        let name = &inner[..end];
        if name.is_empty() || name.contains('[') {
            return None;
        }
        names.push(name.to_owned());
        rest = &inner[end + 1..];
    }
    (!names.is_empty()).then_some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_templates_follow_istio_rules() {
        assert!(check_path_template("/foo/{*}/bar/{**}").is_ok());
        assert!(check_path_template("/store/{**}/cart").is_ok());
        assert!(check_path_template("/api/*/users").is_ok(), "a middle star without operators is a literal path");
        assert!(check_path_template("/*/baz/{*}").is_err());
        assert!(check_path_template("/a/{**}/{*}").is_err());
        assert!(check_path_template("/a/b{*}").is_err());
        assert!(check_path_template("/a/{x}").is_err());
    }

    #[test]
    fn condition_keys_parse_nested_claims_as_one_name_per_bracket() {
        assert_eq!(
            parse_condition_key("request.auth.claims[nested][foo.com/name]").unwrap(),
            ConditionKey::RequestAuthClaims(vec!["nested".into(), "foo.com/name".into()])
        );
        assert_eq!(
            parse_condition_key("request.headers[X-Token]").unwrap(),
            ConditionKey::RequestHeader("x-token".into())
        );
        assert!(parse_condition_key("request.headers[]").is_err());
        assert!(parse_condition_key("request.headers").is_err());
        assert!(parse_condition_key("source.user").is_err());
    }

    #[test]
    fn ports_are_base_ten_numbers_up_to_65535() {
        assert_eq!(parse_port("0"), Ok(0));
        assert_eq!(parse_port("8080"), Ok(8080));
        assert!(parse_port("80-90").is_err());
        assert!(parse_port("65536").is_err());
        assert!(parse_port("+80").is_err());
    }
}
