//! WorkloadEntry and ServiceEntry (`networking.istio.io`): workloads and services outside
//! Kubernetes; and EnvoyFilter, accepted only in the local rate limit shape.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use crate::decode::{Ctx, Fields, Spanned};
use crate::meta::{Meta, Selector, read_workload_selector};
use crate::yaml::{Node, Pos};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadEntry {
    pub meta: Meta,
    pub spec: WorkloadSpec,
}

/// The body of a WorkloadEntry, also used for ServiceEntry endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkloadSpec {
    /// An IP address or a host name (or a `unix://` socket path).
    pub address: String,
    pub ports: BTreeMap<String, u16>,
    pub labels: BTreeMap<String, String>,
    pub service_account: Option<String>,
    pub network: Option<String>,
    pub locality: Option<String>,
    pub weight: Option<u32>,
}

impl WorkloadSpec {
    pub fn ip(&self) -> Option<IpAddr> {
        self.address.parse().ok()
    }
}

fn read_workload_spec(ctx: &mut Ctx<'_>, fields: &mut Fields<'_>, require_address: bool) -> WorkloadSpec {
    let address = fields.string(ctx, "address");
    let mut spec = WorkloadSpec {
        labels: fields.string_map(ctx, "labels"),
        service_account: fields.string(ctx, "serviceAccount").map(|s| s.value),
        network: fields.string(ctx, "network").map(|s| s.value),
        locality: fields.string(ctx, "locality").map(|s| s.value),
        weight: fields.int(ctx, "weight").and_then(|w| u32::try_from(w).ok()),
        ..WorkloadSpec::default()
    };
    for (key, value, path) in fields.entries(ctx, "ports").unwrap_or_default() {
        if let Some(port) = ctx.port(value, &path) {
            spec.ports.insert(key.scalar_text().unwrap_or_default().to_owned(), port);
        }
    }
    match address {
        Some(address) => {
            if let Err(message) = check_address(&address) {
                ctx.error(
                    address.pos,
                    &fields.path("address"),
                    message,
                    "write an IP address, a DNS name, or unix:///path",
                );
            }
            spec.address = address.value;
        }
        None if require_address && spec.network.is_none() => {
            ctx.error(
                fields.pos,
                &fields.path("address"),
                "address is required",
                "give the workload's IP address or host name",
            );
        }
        None => {}
    }
    if let Some(sa) = &spec.service_account
        && let Err(error) = sa.parse::<zmesh_id::ServiceAccount>()
    {
        ctx.error(fields.pos, &fields.path("serviceAccount"), error.to_string(), "");
    }
    spec
}

fn check_address(address: &str) -> Result<(), String> {
    if address.parse::<IpAddr>().is_ok() || address.starts_with("unix://") {
        return Ok(());
    }
    let host_ok = !address.is_empty()
        && address.len() <= 253
        && address.split('.').all(|label| {
            !label.is_empty() && label.len() <= 63 && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if host_ok { Ok(()) } else { Err(format!("`{address}` is neither an IP address nor a host name")) }
}

pub(crate) fn read_workload_entry(
    ctx: &mut Ctx<'_>,
    meta: Meta,
    spec: Option<(&Node, String)>,
) -> Option<WorkloadEntry> {
    let mark = ctx.diagnostics.len();
    let (node, path) = spec?;
    let mut fields = ctx.map(node, &path)?;
    let spec = read_workload_spec(ctx, &mut fields, true);
    fields.finish(ctx);
    (!ctx.has_errors_since(mark)).then_some(WorkloadEntry { meta, spec })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Http2,
    Https,
    Grpc,
    Tcp,
    Tls,
    Mongo,
    Redis,
    Mysql,
    Udp,
}

impl Protocol {
    /// Parse Istio's protocol names (case-insensitive, as Istio does).
    pub fn parse(name: &str) -> Option<Protocol> {
        Some(match name.to_ascii_uppercase().as_str() {
            "HTTP" => Protocol::Http,
            "HTTP2" | "H2C" => Protocol::Http2,
            "HTTPS" => Protocol::Https,
            "GRPC" | "GRPC-WEB" => Protocol::Grpc,
            "TCP" => Protocol::Tcp,
            "TLS" => Protocol::Tls,
            "MONGO" => Protocol::Mongo,
            "REDIS" => Protocol::Redis,
            "MYSQL" => Protocol::Mysql,
            "UDP" => Protocol::Udp,
            _ => return None,
        })
    }

    /// Whether the proxy parses requests on such a port (and so applies L7 policy).
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub number: u16,
    pub protocol: Option<Protocol>,
    pub name: String,
    pub target_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    pub meta: Meta,
    pub hosts: Vec<String>,
    pub addresses: Vec<String>,
    pub ports: Vec<ServicePort>,
    /// `MESH_INTERNAL` (true) or `MESH_EXTERNAL`.
    pub mesh_internal: bool,
    pub resolution: String,
    pub endpoints: Vec<WorkloadSpec>,
    pub workload_selector: Option<Selector>,
    pub subject_alt_names: Vec<String>,
}

pub(crate) fn read_service_entry(ctx: &mut Ctx<'_>, meta: Meta, spec: Option<(&Node, String)>) -> Option<ServiceEntry> {
    let mark = ctx.diagnostics.len();
    let (node, path) = spec?;
    let mut fields = ctx.map(node, &path)?;
    let hosts_path = fields.path("hosts");
    let hosts: Vec<String> = fields.strings(ctx, "hosts").unwrap_or_default().into_iter().map(|h| h.value).collect();
    if hosts.is_empty() {
        ctx.error(
            node.pos,
            &hosts_path,
            "a ServiceEntry needs at least one host",
            "list the host names clients use for the service",
        );
    }
    let addresses = fields.strings(ctx, "addresses").unwrap_or_default().into_iter().map(|a| a.value).collect();
    let mut ports = Vec::new();
    for (item, item_path) in fields.items(ctx, "ports").unwrap_or_default() {
        let Some(mut port) = ctx.map(item, &item_path) else {
            continue;
        };
        let number = port.get("number").and_then(|(n, p)| ctx.port(n, &p));
        let protocol_path = port.path("protocol");
        let protocol = port.string(ctx, "protocol").and_then(|p| {
            let parsed = Protocol::parse(&p);
            if parsed.is_none() {
                ctx.error(
                    p.pos,
                    &protocol_path,
                    format!("unknown protocol `{}`", p.value),
                    "use HTTP, HTTP2, HTTPS, GRPC, TCP, TLS, MONGO, REDIS, MYSQL or UDP",
                );
            }
            parsed
        });
        let name = port.string(ctx, "name").map(|n| n.value).unwrap_or_default();
        let target_port = port.get("targetPort").and_then(|(n, p)| ctx.port(n, &p));
        port.finish(ctx);
        match number {
            Some(number) => ports.push(ServicePort { number, protocol, name, target_port }),
            None => ctx.error(item.pos, &format!("{item_path}.number"), "port number is required", "set `number`"),
        }
    }
    let location_path = fields.path("location");
    let mesh_internal = match fields.string(ctx, "location") {
        None => false,
        Some(l) if l.as_str() == "MESH_EXTERNAL" => false,
        Some(l) if l.as_str() == "MESH_INTERNAL" => true,
        Some(l) => {
            ctx.error(
                l.pos,
                &location_path,
                format!("unknown location `{}`", l.value),
                "use MESH_EXTERNAL or MESH_INTERNAL",
            );
            false
        }
    };
    let resolution_path = fields.path("resolution");
    let resolution = match fields.string(ctx, "resolution") {
        None => "NONE".to_owned(),
        Some(r) if ["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS"].contains(&r.as_str()) => r.value,
        Some(r) => {
            ctx.error(
                r.pos,
                &resolution_path,
                format!("unknown resolution `{}`", r.value),
                "use NONE, STATIC, DNS or DNS_ROUND_ROBIN",
            );
            String::new()
        }
    };
    let mut endpoints = Vec::new();
    for (item, item_path) in fields.items(ctx, "endpoints").unwrap_or_default() {
        let Some(mut endpoint) = ctx.map(item, &item_path) else {
            continue;
        };
        endpoints.push(read_workload_spec(ctx, &mut endpoint, resolution == "STATIC"));
        endpoint.finish(ctx);
    }
    let workload_selector = read_workload_selector(ctx, &mut fields);
    if workload_selector.is_some() && !endpoints.is_empty() {
        ctx.error(
            node.pos,
            &fields.path("workloadSelector"),
            "workloadSelector and endpoints cannot both be set",
            "keep one",
        );
    }
    if resolution == "STATIC" && endpoints.is_empty() && workload_selector.is_none() {
        ctx.error(
            node.pos,
            &fields.path("endpoints"),
            "STATIC resolution needs endpoints or a workloadSelector",
            "list the endpoints' addresses",
        );
    }
    let subject_alt_names =
        fields.strings(ctx, "subjectAltNames").unwrap_or_default().into_iter().map(|s| s.value).collect();
    fields.ignore(&["exportTo"]);
    fields.finish(ctx);
    (!ctx.has_errors_since(mark)).then_some(ServiceEntry {
        meta,
        hosts,
        addresses,
        ports,
        mesh_internal,
        resolution,
        endpoints,
        workload_selector,
        subject_alt_names,
    })
}

/// An EnvoyFilter as zmesh reads it: the local rate limit filters it inserts into the inbound
/// HTTP filters of the sidecars it selects. Everything else an EnvoyFilter can do is reported
/// with a warning and not applied (Istio accepts any EnvoyFilter, so refusing the document
/// would make a working Istio configuration fail to load); `filters` may therefore be empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRateLimit {
    pub meta: Meta,
    pub selector: Option<Selector>,
    /// `priority`: EnvoyFilters of one scope apply in ascending priority, then by age.
    pub priority: i32,
    /// The enforceable local rate limits, in patch order.
    pub filters: Vec<RateLimitFilter>,
    pub pos: Pos,
}

/// One `envoy.filters.http.local_ratelimit` filter on the inbound HTTP path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitFilter {
    /// Index of the config patch that inserts it (`spec.configPatches[i]`).
    pub patch: usize,
    /// Where the filter's settings start, for messages.
    pub pos: Pos,
    /// `stat_prefix`: names the counters (`<stat_prefix>.http_local_rate_limit.<counter>`).
    pub stat_prefix: String,
    pub position: FilterPosition,
    /// `match.listener.portNumber`: only requests to this inbound port; `None` for every port.
    pub port: Option<u16>,
    pub token_bucket: TokenBucket,
    /// `filter_enabled`: the share of requests the limiter looks at (Envoy: 0% when absent).
    pub filter_enabled: Fraction,
    /// `filter_enforced`: the share of enabled requests whose limit is enforced (Envoy: 0%
    /// when absent, so a limited request is only counted).
    pub filter_enforced: Fraction,
    /// `response_headers_to_add`, added to the rate-limited response.
    pub response_headers: Vec<HeaderToAdd>,
    /// `request_headers_to_add_when_not_enforced`, added to a request that is over the limit
    /// but not enforced, before it is forwarded.
    pub request_headers_when_not_enforced: Vec<HeaderToAdd>,
    /// `status.code` of the rate-limited response: 429 unless set to 400 or more.
    pub status: u16,
    /// `local_rate_limit_per_downstream_connection`: one bucket per connection instead of
    /// one per proxy.
    pub per_connection: bool,
}

/// Where a filter runs relative to the sidecar's authentication and authorization, which
/// decides whether requests that are then denied take a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FilterPosition {
    /// First (INSERT_FIRST, or INSERT_BEFORE with no sub-filter or before the JWT filter):
    /// every request takes a token, even one authorization then denies.
    BeforeAuthentication,
    /// After JWT authentication, before authorization policy (filterClass AUTHN, or next to
    /// `istio_authn`).
    BeforeAuthorization,
    /// After authorization, just before the router (INSERT_BEFORE `envoy.filters.http.router`,
    /// filterClass AUTHZ or STATS): only allowed requests take a token.
    AfterAuthorization,
}

/// Envoy's `type.v3.TokenBucket`: starts full with `max_tokens`; every `fill_interval` adds
/// `tokens_per_fill`, never above `max_tokens`; each request takes one token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    pub fill_interval: Duration,
}

/// Envoy's `FractionalPercent`: `numerator` out of `denominator` (100, 10 000 or 1 000 000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fraction {
    pub numerator: u32,
    pub denominator: u32,
}

impl Fraction {
    pub const NONE: Fraction = Fraction { numerator: 0, denominator: 100 };
    pub const ALL: Fraction = Fraction { numerator: 100, denominator: 100 };

    /// Whether a request drawn with `random` falls in the fraction, as Envoy samples it:
    /// `random % denominator < numerator` (a numerator above the denominator is 100%).
    pub fn admits(self, random: u64) -> bool {
        random % u64::from(self.denominator.max(1)) < u64::from(self.numerator)
    }

    pub fn is_none(self) -> bool {
        self.numerator == 0
    }
}

/// Envoy's `HeaderValueOption`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderToAdd {
    /// Lower-cased, as HTTP/2 and Envoy carry header names.
    pub name: String,
    pub value: String,
    pub action: HeaderAppend,
}

/// Envoy's `HeaderAppendAction` (with the deprecated `append: false` read as overwrite).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderAppend {
    AppendIfExistsOrAdd,
    AddIfAbsent,
    OverwriteIfExistsOrAdd,
    OverwriteIfExists,
}

const LOCAL_RATE_LIMIT_FILTER: &str = "envoy.filters.http.local_ratelimit";
const LOCAL_RATE_LIMIT_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
const TYPED_STRUCT_TYPES: &[&str] =
    &["type.googleapis.com/udpa.type.v1.TypedStruct", "type.googleapis.com/xds.type.v3.TypedStruct"];
const HTTP_CONNECTION_MANAGER: &str = "envoy.filters.network.http_connection_manager";
const NOT_APPLIED: &str = "not supported by zmesh, not applied";

/// Istio's sidecar inbound HTTP filters, in order, and where a filter placed next to each
/// runs: (name, position when inserted before it, position when inserted after it). The
/// router is last: Envoy refuses any filter after it.
const INBOUND_HTTP_FILTERS: &[(&str, FilterPosition, Option<FilterPosition>)] = {
    use FilterPosition::*;
    &[
        ("istio.metadata_exchange", BeforeAuthentication, Some(BeforeAuthentication)),
        ("envoy.filters.http.jwt_authn", BeforeAuthentication, Some(BeforeAuthorization)),
        ("istio_authn", BeforeAuthorization, Some(BeforeAuthorization)),
        ("envoy.filters.http.ext_authz", BeforeAuthorization, Some(AfterAuthorization)),
        ("envoy.filters.http.rbac", BeforeAuthorization, Some(AfterAuthorization)),
        ("envoy.filters.http.grpc_stats", AfterAuthorization, Some(AfterAuthorization)),
        ("envoy.filters.http.fault", AfterAuthorization, Some(AfterAuthorization)),
        ("envoy.filters.http.cors", AfterAuthorization, Some(AfterAuthorization)),
        ("istio.stats", AfterAuthorization, Some(AfterAuthorization)),
        ("envoy.filters.http.router", AfterAuthorization, None),
    ]
};

/// Read an EnvoyFilter. Envoy configuration zmesh does not apply is a warning with a code
/// (see docs/diagnostic-codes.md); what Istio's webhook refuses, and local rate limit
/// settings Envoy itself would refuse (NACK), stay errors: such a filter does not work in
/// Istio either, and refusing it is louder than a filter that silently never runs.
pub(crate) fn read_envoy_filter(
    ctx: &mut Ctx<'_>,
    meta: Meta,
    spec: Option<(&Node, String)>,
) -> Option<LocalRateLimit> {
    use crate::load::codes;
    let mark = ctx.diagnostics.len();
    let Some((node, path)) = spec else {
        ctx.error(meta.origin.pos, "spec", "an EnvoyFilter needs a spec", "add spec.configPatches");
        return None;
    };
    let mut fields = ctx.map(node, &path)?;
    let selector = read_workload_selector(ctx, &mut fields);
    let priority_path = fields.path("priority");
    let priority = fields.int(ctx, "priority").map_or(0, |p| {
        i32::try_from(p).unwrap_or_else(|_| {
            ctx.error(node.pos, &priority_path, format!("priority {p} is out of range"), "use a 32-bit integer");
            0
        })
    });
    let target_refs = fields.get("targetRefs").or_else(|| fields.get("targetRef"));
    let patches = fields.items(ctx, "configPatches").unwrap_or_default();
    fields.finish(ctx);
    let mut limits = LocalRateLimit { meta, selector, priority, filters: Vec::new(), pos: node.pos };
    if let Some((refs_node, refs_path)) = target_refs {
        // EnvoyFilter targetRefs attach to Gateways only; a sidecar never applies such a filter.
        ctx.warn(
            codes::TARGET_REFS_NOT_FOR_SIDECARS,
            refs_node.pos,
            &refs_path,
            "an EnvoyFilter with targetRefs applies only to the gateways it names; zmesh runs sidecars, so it is not applied",
            "remove targetRefs and use workloadSelector to apply it to sidecars",
        );
        return (!ctx.has_errors_since(mark)).then_some(limits);
    }
    if patches.is_empty() {
        ctx.warn(
            codes::ENVOY_FILTER_NOT_SUPPORTED,
            node.pos,
            &format!("{path}.configPatches"),
            "the EnvoyFilter has no config patches; it changes nothing",
            "add a config patch, or delete the EnvoyFilter",
        );
    }
    for (index, (patch_node, patch_path)) in patches.iter().enumerate() {
        if let Some(filter) = read_patch(ctx, index, patch_node, patch_path) {
            limits.filters.push(filter);
        }
    }
    (!ctx.has_errors_since(mark)).then_some(limits)
}

/// One config patch: a local rate limit filter on sidecar inbound HTTP, or a warning saying
/// why it is not applied.
fn read_patch(ctx: &mut Ctx<'_>, index: usize, node: &Node, path: &str) -> Option<RateLimitFilter> {
    use crate::load::codes;
    let mut patch = ctx.map(node, path)?;
    let apply_to = patch.string(ctx, "applyTo");
    let matcher = patch.get("match");
    let body = patch.get("patch");
    patch.finish(ctx);
    // What Istio's webhook requires of every patch, whatever it applies to.
    let Some((body_node, body_path)) = body else {
        ctx.error(
            node.pos,
            &format!("{path}.patch"),
            "the config patch has no patch",
            "add patch.operation and patch.value",
        );
        return None;
    };
    let operation = body_node.get("operation").and_then(Node::scalar_text).map(str::to_owned);
    if operation.is_none() {
        ctx.error(
            body_node.pos,
            &format!("{body_path}.operation"),
            "the patch has no operation",
            "set patch.operation, e.g. INSERT_BEFORE",
        );
        return None;
    }
    let not_applied = |ctx: &mut Ctx<'_>, pos: Pos, field: &str, what: String| {
        ctx.warn(
            codes::ENVOY_FILTER_NOT_SUPPORTED,
            pos,
            field,
            format!("{what}: {NOT_APPLIED}"),
            format!("zmesh applies EnvoyFilter only to insert `{LOCAL_RATE_LIMIT_FILTER}` into sidecar inbound HTTP; the rest of the configuration is in force"),
        );
    };
    match &apply_to {
        Some(a) if a.as_str() == "HTTP_FILTER" => {}
        Some(a) => {
            not_applied(ctx, a.pos, &format!("{path}.applyTo"), format!("a patch of {}", a.value));
            return None;
        }
        None => {
            not_applied(ctx, node.pos, &format!("{path}.applyTo"), "a patch without applyTo".to_owned());
            return None;
        }
    }
    let mut body = ctx.map(body_node, &body_path)?;
    let operation_node = body.get("operation");
    let value = body.get("value");
    let filter_class = body.string(ctx, "filterClass");
    body.finish(ctx);
    let (operation_node, operation_path) = operation_node?;
    let operation = operation.unwrap_or_default();
    let Some((value_node, value_path)) = value else {
        if operation != "REMOVE" {
            ctx.error(
                body_node.pos,
                &format!("{body_path}.value"),
                "the patch has no value",
                "give the filter to insert under patch.value",
            );
        } else {
            not_applied(ctx, operation_node.pos, &operation_path, "removing an HTTP filter".to_owned());
        }
        return None;
    };
    // The filter being inserted: is it a local rate limit at all?
    let mut filter = ctx.map(value_node, &value_path)?;
    let name = filter.string(ctx, "name");
    let typed = filter.get("typed_config");
    let unsupported_filter_fields: Vec<(&Node, String)> =
        ["config_discovery", "is_optional", "disabled"].iter().filter_map(|k| filter.get(k)).collect();
    filter.finish(ctx);
    match &name {
        Some(n) if n.as_str() == LOCAL_RATE_LIMIT_FILTER => {}
        Some(n) => {
            not_applied(ctx, n.pos, &format!("{value_path}.name"), format!("HTTP filter `{}`", n.value));
            return None;
        }
        None => {
            not_applied(ctx, value_node.pos, &format!("{value_path}.name"), "an HTTP filter without a name".to_owned());
            return None;
        }
    }
    if let Some((field_node, field_path)) = unsupported_filter_fields.into_iter().next() {
        not_applied(ctx, field_node.pos, &field_path, "this filter option".to_owned());
        return None;
    }
    // Where it goes, and for which traffic.
    let target = read_match(ctx, matcher, path)?;
    let position = position(
        ctx,
        &operation,
        operation_node.pos,
        &operation_path,
        target.sub_filter.as_ref(),
        filter_class.as_ref(),
        &body_path,
    )?;
    // Its settings.
    let Some((typed_node, typed_path)) = typed else {
        // Without typed_config there is no token bucket: Envoy builds no limit from it.
        no_bucket(ctx, value_node.pos, &format!("{value_path}.typed_config"));
        return None;
    };
    let (settings_node, settings_path) = settings(ctx, typed_node, &typed_path)?;
    let mut filter = read_settings(ctx, settings_node, &settings_path)?;
    filter.patch = index;
    filter.position = position;
    filter.port = target.port;
    match target.context {
        Context::Inbound => {}
        Context::Any => ctx.warn(
            codes::RATE_LIMIT_CONTEXT_NOT_ENFORCED,
            target.context_pos.unwrap_or(node.pos),
            &format!("{path}.match.context"),
            "this local rate limit applies to inbound and outbound traffic in Istio; zmesh enforces it on inbound requests only (a zmesh sidecar has no outbound HTTP filters)",
            "set context: SIDECAR_INBOUND to say what is enforced",
        ),
        Context::Outbound | Context::Gateway => {
            ctx.warn(
                codes::RATE_LIMIT_CONTEXT_NOT_ENFORCED,
                target.context_pos.unwrap_or(node.pos),
                &format!("{path}.match.context"),
                format!("a local rate limit for {} is not enforced: a zmesh sidecar has no outbound HTTP filters and zmesh runs no gateways", target.context_name),
                "limit the destination instead, with context: SIDECAR_INBOUND on its workloads",
            );
            return None;
        }
    }
    Some(filter)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    Inbound,
    Outbound,
    Gateway,
    Any,
}

struct Target {
    context: Context,
    context_name: String,
    context_pos: Option<Pos>,
    port: Option<u16>,
    sub_filter: Option<Spanned<String>>,
}

/// `match`: the context, and within the listener only the HTTP connection manager, an optional
/// port and sub-filter. Other match fields are warnings and the patch is not applied, since
/// zmesh cannot tell what they would select.
fn read_match(ctx: &mut Ctx<'_>, matcher: Option<(&Node, String)>, patch_path: &str) -> Option<Target> {
    use crate::load::codes;
    let mut target =
        Target { context: Context::Any, context_name: "ANY".into(), context_pos: None, port: None, sub_filter: None };
    let Some((node, path)) = matcher else { return Some(target) };
    let mut fields = ctx.map(node, &path)?;
    let context_path = fields.path("context");
    if let Some(context) = fields.string(ctx, "context") {
        target.context = match context.as_str() {
            "SIDECAR_INBOUND" => Context::Inbound,
            "SIDECAR_OUTBOUND" => Context::Outbound,
            "GATEWAY" => Context::Gateway,
            "ANY" => Context::Any,
            other => {
                ctx.error(
                    context.pos,
                    &context_path,
                    format!("unknown context `{other}`"),
                    "use ANY, SIDECAR_INBOUND, SIDECAR_OUTBOUND or GATEWAY",
                );
                return None;
            }
        };
        target.context_name = context.value.clone();
        target.context_pos = Some(context.pos);
    }
    let listener = fields.get("listener");
    let others: Vec<(&Node, String)> =
        ["proxy", "routeConfiguration", "cluster"].iter().filter_map(|k| fields.get(k)).collect();
    fields.finish(ctx);
    let unsupported = |ctx: &mut Ctx<'_>, pos: Pos, field: &str| {
        ctx.warn(
            codes::RATE_LIMIT_FIELD_NOT_SUPPORTED,
            pos,
            field,
            format!(
                "matching on `{}` is not supported by zmesh; the patch is not applied",
                field.rsplit('.').next().unwrap_or(field)
            ),
            format!("match only on context, listener.portNumber and listener.filterChain.filter (`{HTTP_CONNECTION_MANAGER}` and a subFilter)"),
        );
    };
    if let Some((other_node, other_path)) = others.into_iter().next() {
        unsupported(ctx, other_node.pos, &other_path);
        return None;
    }
    let Some((listener_node, listener_path)) = listener else { return Some(target) };
    let mut listener = ctx.map(listener_node, &listener_path)?;
    target.port = listener.get("portNumber").and_then(|(n, p)| ctx.port(n, &p));
    let chain = listener.get("filterChain");
    let others: Vec<(&Node, String)> =
        ["name", "portName", "listenerFilter"].iter().filter_map(|k| listener.get(k)).collect();
    listener.finish(ctx);
    if let Some((other_node, other_path)) = others.into_iter().next() {
        unsupported(ctx, other_node.pos, &other_path);
        return None;
    }
    let Some((chain_node, chain_path)) = chain else { return Some(target) };
    let mut chain = ctx.map(chain_node, &chain_path)?;
    let filter = chain.get("filter");
    let others: Vec<(&Node, String)> = ["name", "sni", "transportProtocol", "applicationProtocols", "destinationPort"]
        .iter()
        .filter_map(|k| chain.get(k))
        .collect();
    chain.finish(ctx);
    if let Some((other_node, other_path)) = others.into_iter().next() {
        unsupported(ctx, other_node.pos, &other_path);
        return None;
    }
    let Some((filter_node, filter_path)) = filter else { return Some(target) };
    let mut filter = ctx.map(filter_node, &filter_path)?;
    let name_path = filter.path("name");
    let name = filter.string(ctx, "name");
    let sub = filter.map(ctx, "subFilter");
    filter.finish(ctx);
    match &name {
        None => {
            // Istio's webhook: a filter match must name the filter.
            ctx.error(
                filter_node.pos,
                &name_path,
                "the filter match has no name to match on",
                format!("name `{HTTP_CONNECTION_MANAGER}`"),
            );
            return None;
        }
        Some(n) if n.as_str() != HTTP_CONNECTION_MANAGER => {
            ctx.warn(
                codes::ENVOY_FILTER_NOT_SUPPORTED,
                n.pos,
                &name_path,
                format!("HTTP filters live in `{HTTP_CONNECTION_MANAGER}`, so a match on `{}` selects nothing (in Istio too); not applied", n.value),
                format!("match filter name `{HTTP_CONNECTION_MANAGER}`"),
            );
            return None;
        }
        Some(_) => {}
    }
    if let Some(mut sub) = sub {
        let sub_path = sub.path("name");
        let sub_name = sub.string(ctx, "name");
        let pos = sub.pos;
        sub.finish(ctx);
        match sub_name {
            Some(n) => target.sub_filter = Some(n),
            None => {
                ctx.error(
                    pos,
                    &sub_path,
                    "the subFilter match has no name to match on",
                    "name an HTTP filter, e.g. envoy.filters.http.router",
                );
                return None;
            }
        }
    }
    let _ = patch_path;
    Some(target)
}

/// Where the operation puts the filter in Istio's sidecar inbound HTTP filters.
fn position(
    ctx: &mut Ctx<'_>,
    operation: &str,
    pos: Pos,
    path: &str,
    sub_filter: Option<&Spanned<String>>,
    filter_class: Option<&Spanned<String>>,
    body_path: &str,
) -> Option<FilterPosition> {
    use crate::load::codes;
    if let Some(class) = filter_class {
        // filterClass overrides the operation's place (Istio inserts by class).
        return match class.as_str() {
            "AUTHN" => Some(FilterPosition::BeforeAuthorization),
            "AUTHZ" | "STATS" => Some(FilterPosition::AfterAuthorization),
            "UNSPECIFIED" => position(ctx, operation, pos, path, sub_filter, None, body_path),
            other => {
                ctx.error(
                    class.pos,
                    &format!("{body_path}.filterClass"),
                    format!("unknown filterClass `{other}`"),
                    "use AUTHN, AUTHZ or STATS",
                );
                None
            }
        };
    }
    let after_router = |ctx: &mut Ctx<'_>, what: &str| {
        // Envoy refuses an HTTP filter chain whose last filter is not the router, so Istio's
        // listener would be NACKed and keep its previous configuration.
        ctx.error(
            pos,
            path,
            format!("{what} puts the filter after `envoy.filters.http.router`; Envoy refuses such a listener, so it never applies in Istio"),
            "use INSERT_BEFORE with subFilter envoy.filters.http.router (after authorization) or INSERT_FIRST (before authentication)",
        );
    };
    let known = |name: &str| INBOUND_HTTP_FILTERS.iter().find(|(n, _, _)| *n == name);
    match (operation, sub_filter) {
        ("INSERT_FIRST", _) | ("INSERT_BEFORE", None) => Some(FilterPosition::BeforeAuthentication),
        ("ADD", _) | ("INSERT_AFTER", None) => {
            after_router(ctx, &format!("{operation} appends to the HTTP filters and"));
            None
        }
        ("INSERT_BEFORE" | "INSERT_AFTER", Some(sub)) => match known(sub.as_str()) {
            Some((_, before, _)) if operation == "INSERT_BEFORE" => Some(*before),
            Some((_, _, Some(after))) => Some(*after),
            Some((_, _, None)) => {
                after_router(ctx, "INSERT_AFTER the router");
                None
            }
            None => {
                // Istio inserts nothing when the sub-filter is not in the chain.
                ctx.warn(
                    codes::ENVOY_FILTER_NOT_SUPPORTED,
                    sub.pos,
                    &format!(
                        "{}.match.listener.filterChain.filter.subFilter.name",
                        path.strip_suffix(".patch.operation").unwrap_or(path)
                    ),
                    format!("`{}` is not an HTTP filter of Istio's sidecar inbound listener, so Istio inserts nothing next to it; not applied", sub.value),
                    "use subFilter envoy.filters.http.router (after authorization), or INSERT_FIRST (before authentication)",
                );
                None
            }
        },
        ("MERGE" | "REPLACE" | "REMOVE", _) => {
            ctx.warn(
                codes::ENVOY_FILTER_NOT_SUPPORTED,
                pos,
                path,
                format!("{operation} of an existing HTTP filter: {NOT_APPLIED}"),
                "insert the local rate limit with INSERT_BEFORE (subFilter envoy.filters.http.router) or INSERT_FIRST",
            );
            None
        }
        (other, _) => {
            ctx.error(
                pos,
                path,
                format!("unknown operation `{other}`"),
                "use INSERT_BEFORE, INSERT_AFTER, INSERT_FIRST, ADD, MERGE, REPLACE or REMOVE",
            );
            None
        }
    }
}

/// A local rate limit with no token bucket. Envoy accepts it (the bucket may come from
/// per-route configuration) and then limits nothing at the listener level, so Istio pushes
/// it without complaint and no request is ever limited. zmesh does the same, loudly.
fn no_bucket(ctx: &mut Ctx<'_>, pos: Pos, field: &str) {
    ctx.warn(
        crate::load::codes::RATE_LIMIT_NO_TOKEN_BUCKET,
        pos,
        field,
        "the local rate limit filter has no token bucket, so it limits nothing (as in Envoy); reported and not enforced",
        format!("add typed_config with `@type: {LOCAL_RATE_LIMIT_TYPE}`, stat_prefix, token_bucket {{max_tokens, tokens_per_fill, fill_interval}} and filter_enabled/filter_enforced"),
    );
}

/// The LocalRateLimit settings inside `typed_config`: inline under `@type` LocalRateLimit, or
/// in `value` of a TypedStruct whose `type_url` is LocalRateLimit.
fn settings<'n>(ctx: &mut Ctx<'_>, node: &'n Node, path: &str) -> Option<(&'n Node, String)> {
    use crate::load::codes;
    let type_path = format!("{path}.@type");
    let Some(type_node) = node.get("@type") else {
        ctx.error(node.pos, &type_path, "typed_config has no @type", format!("set `@type: {LOCAL_RATE_LIMIT_TYPE}`"));
        return None;
    };
    let type_url = ctx.string(type_node, &type_path)?;
    if type_url.as_str() == LOCAL_RATE_LIMIT_TYPE {
        return Some((node, path.to_owned()));
    }
    if !TYPED_STRUCT_TYPES.contains(&type_url.as_str()) {
        ctx.warn(
            codes::ENVOY_FILTER_NOT_SUPPORTED,
            type_url.pos,
            &type_path,
            format!("typed_config of type `{}`: {NOT_APPLIED}", type_url.value),
            format!("use `@type: {LOCAL_RATE_LIMIT_TYPE}`"),
        );
        return None;
    }
    let mut typed = ctx.map(node, path)?;
    typed.ignore(&["@type"]);
    let inner_path = typed.path("type_url");
    let inner = typed.string(ctx, "type_url");
    let value = typed.get("value");
    typed.finish(ctx);
    match inner {
        Some(t) if t.as_str() == LOCAL_RATE_LIMIT_TYPE => {}
        Some(t) => {
            ctx.warn(
                codes::ENVOY_FILTER_NOT_SUPPORTED,
                t.pos,
                &inner_path,
                format!("a TypedStruct of type `{}`: {NOT_APPLIED}", t.value),
                format!("use `type_url: {LOCAL_RATE_LIMIT_TYPE}`"),
            );
            return None;
        }
        None => {
            ctx.error(
                node.pos,
                &inner_path,
                "the TypedStruct has no type_url",
                format!("set `type_url: {LOCAL_RATE_LIMIT_TYPE}`"),
            );
            return None;
        }
    }
    match value {
        Some(value) => Some(value),
        None => {
            no_bucket(ctx, node.pos, &format!("{path}.value"));
            None
        }
    }
}

/// Envoy's LocalRateLimit message. Unknown fields are errors: Istio's webhook refuses them in
/// the inline form, and Envoy refuses them inside a TypedStruct.
fn read_settings(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<RateLimitFilter> {
    use crate::load::codes;
    let mark = ctx.diagnostics.len();
    let mut settings = ctx.map(node, path)?;
    settings.ignore(&["@type"]);
    let prefix_path = settings.path("stat_prefix");
    let stat_prefix = settings.string(ctx, "stat_prefix");
    let bucket = settings.get("token_bucket");
    let enabled = fraction(ctx, &mut settings, "filter_enabled");
    let enforced = fraction(ctx, &mut settings, "filter_enforced");
    let response_headers = headers(ctx, &mut settings, "response_headers_to_add");
    let request_headers = headers(ctx, &mut settings, "request_headers_to_add_when_not_enforced");
    let status_path = settings.path("status");
    let status = settings.get("status").and_then(|(n, p)| http_status(ctx, n, &p));
    let per_connection = settings.bool(ctx, "local_rate_limit_per_downstream_connection").unwrap_or(false);
    // Only meaningful with descriptors, which are themselves reported below.
    settings.ignore(&["always_consume_default_token_bucket"]);
    let unsupported: Vec<(&Node, String)> = [
        "descriptors",
        "stage",
        "enable_x_ratelimit_headers",
        "vh_rate_limits",
        "rate_limited_as_resource_exhausted",
        "local_cluster_rate_limit",
        "rate_limits",
        "max_dynamic_descriptors",
    ]
    .iter()
    .filter_map(|k| settings.get(k))
    .collect();
    settings.finish(ctx);
    for (field_node, field_path) in unsupported {
        let name = field_path.rsplit('.').next().unwrap_or_default().to_owned();
        ctx.warn(
            codes::RATE_LIMIT_FIELD_NOT_SUPPORTED,
            field_node.pos,
            &field_path,
            format!(
                "`{name}` is not supported by zmesh and is ignored; the filter's token bucket applies to every request"
            ),
            "remove it, or expect the one bucket to limit all requests",
        );
    }
    let stat_prefix = match stat_prefix {
        Some(prefix) if !prefix.is_empty() => prefix.value,
        // Envoy requires a non-empty stat_prefix and refuses the filter without one.
        _ => {
            ctx.error(
                node.pos,
                &prefix_path,
                "the local rate limit has no stat_prefix; Envoy refuses it",
                "add stat_prefix: http_local_rate_limiter",
            );
            return None;
        }
    };
    let Some((bucket_node, bucket_path)) = bucket else {
        no_bucket(ctx, node.pos, &format!("{path}.token_bucket"));
        return None;
    };
    let token_bucket = token_bucket(ctx, bucket_node, &bucket_path)?;
    if status.is_some_and(|s| s < 400) {
        ctx.warn(
            codes::RATE_LIMIT_FIELD_NOT_SUPPORTED,
            node.pos,
            &status_path,
            "a status below 400 is replaced by 429, as Envoy does",
            "use a status code from 400 up",
        );
    }
    let filter_enabled = enabled.unwrap_or(Fraction::NONE);
    let filter_enforced = enforced.unwrap_or(Fraction::NONE);
    if filter_enabled.is_none() {
        ctx.warn(
            codes::RATE_LIMIT_DISABLED,
            node.pos,
            &format!("{path}.filter_enabled"),
            "filter_enabled is absent or 0%, so Envoy (and zmesh) never look at the token bucket: nothing is limited",
            "set filter_enabled.default_value {numerator: 100, denominator: HUNDRED}",
        );
    } else if filter_enforced.is_none() {
        ctx.warn(
            codes::RATE_LIMIT_DISABLED,
            node.pos,
            &format!("{path}.filter_enforced"),
            "filter_enforced is absent or 0%, so requests over the limit are only counted (rate_limited), never refused",
            "set filter_enforced.default_value {numerator: 100, denominator: HUNDRED} to enforce the limit",
        );
    }
    (!ctx.has_errors_since(mark)).then_some(RateLimitFilter {
        patch: 0,
        pos: node.pos,
        stat_prefix,
        position: FilterPosition::AfterAuthorization,
        port: None,
        token_bucket,
        filter_enabled,
        filter_enforced,
        response_headers,
        request_headers_when_not_enforced: request_headers,
        status: status.filter(|&s| s >= 400).unwrap_or(429),
        per_connection,
    })
}

fn token_bucket(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<TokenBucket> {
    let mut bucket = ctx.map(node, path)?;
    let max_path = bucket.path("max_tokens");
    let max_tokens = bucket.get("max_tokens").and_then(|(n, p)| ctx.int(n, &p));
    let per_fill_path = bucket.path("tokens_per_fill");
    let tokens_per_fill = bucket.get("tokens_per_fill").and_then(|(n, p)| ctx.int(n, &p));
    let interval_path = bucket.path("fill_interval");
    let interval = bucket.string(ctx, "fill_interval");
    bucket.finish(ctx);
    let positive = |value: Option<i64>| value.and_then(|v| u32::try_from(v).ok()).filter(|&v| v > 0);
    // Envoy's TokenBucket: max_tokens > 0 is required, tokens_per_fill defaults to 1 and must
    // be > 0, fill_interval is required, and the filter refuses one under 50 ms.
    let Some(max_tokens) = positive(max_tokens) else {
        ctx.error(node.pos, &max_path, "token_bucket needs a positive max_tokens", "for example max_tokens: 100");
        return None;
    };
    let Some(tokens_per_fill) = (if tokens_per_fill.is_none() { Some(1) } else { positive(tokens_per_fill) }) else {
        ctx.error(node.pos, &per_fill_path, "tokens_per_fill must be positive", "for example tokens_per_fill: 100");
        return None;
    };
    let fill_interval = interval.as_ref().and_then(|i| {
        // Protobuf JSON durations are seconds with an `s` suffix.
        i.strip_suffix('s').filter(|n| !n.ends_with(['m', 'u', 'n'])).and_then(|_| crate::authn::parse_duration(i))
    });
    match fill_interval {
        Some(interval) if interval >= Duration::from_millis(50) => {
            Some(TokenBucket { max_tokens, tokens_per_fill, fill_interval: interval })
        }
        Some(_) => {
            ctx.error(
                interval.as_ref().map_or(node.pos, |i| i.pos),
                &interval_path,
                "fill_interval is under 50ms; Envoy refuses such a token bucket",
                "use 0.05s or more",
            );
            None
        }
        None => {
            ctx.error(
                interval.as_ref().map_or(node.pos, |i| i.pos),
                &interval_path,
                "token_bucket needs fill_interval as a duration in seconds",
                "for example fill_interval: 60s or 0.5s",
            );
            None
        }
    }
}

/// A `RuntimeFractionalPercent`. zmesh has no runtime layer, so `runtime_key` (optional in
/// Envoy) never overrides `default_value`, as in an Envoy whose runtime does not set the key.
fn fraction(ctx: &mut Ctx<'_>, fields: &mut Fields<'_>, key: &'static str) -> Option<Fraction> {
    let mut outer = fields.map(ctx, key)?;
    let _ = outer.string(ctx, "runtime_key");
    let default_path = outer.path("default_value");
    let default = outer.map(ctx, "default_value");
    let pos = outer.pos;
    outer.finish(ctx);
    let Some(mut value) = default else {
        ctx.error(
            pos,
            &default_path,
            format!("{key} needs default_value"),
            "for example default_value: {numerator: 100, denominator: HUNDRED}",
        );
        return None;
    };
    let numerator_path = value.path("numerator");
    let numerator = value.get("numerator").and_then(|(n, p)| ctx.int(n, &p)).unwrap_or(0);
    let denominator_path = value.path("denominator");
    let denominator = value.string(ctx, "denominator");
    value.finish(ctx);
    let Ok(numerator) = u32::try_from(numerator) else {
        ctx.error(
            pos,
            &numerator_path,
            format!("numerator {numerator} is out of range"),
            "use 0 up to the denominator",
        );
        return None;
    };
    let denominator = match denominator.as_ref().map(|d| d.as_str()) {
        None | Some("HUNDRED") => 100,
        Some("TEN_THOUSAND") => 10_000,
        Some("MILLION") => 1_000_000,
        Some(other) => {
            ctx.error(
                pos,
                &denominator_path,
                format!("unknown denominator `{other}`"),
                "use HUNDRED, TEN_THOUSAND or MILLION",
            );
            return None;
        }
    };
    Some(Fraction { numerator, denominator })
}

/// `response_headers_to_add` and `request_headers_to_add_when_not_enforced`.
fn headers(ctx: &mut Ctx<'_>, fields: &mut Fields<'_>, key: &'static str) -> Vec<HeaderToAdd> {
    use crate::load::codes;
    let mut out = Vec::new();
    for (item, item_path) in fields.items(ctx, key).unwrap_or_default() {
        let Some(mut option) = ctx.map(item, &item_path) else { continue };
        let header = option.map(ctx, "header");
        let append = option.bool(ctx, "append");
        let action_path = option.path("append_action");
        let action = option.string(ctx, "append_action");
        option.ignore(&["keep_empty_value"]);
        option.finish(ctx);
        let Some(mut header) = header else {
            ctx.error(
                item.pos,
                &format!("{item_path}.header"),
                "the header option has no header",
                "add header {key, value}",
            );
            continue;
        };
        let name_path = header.path("key");
        let name = header.string(ctx, "key");
        let value = header.get("value").and_then(|(n, p)| ctx.text(n, &p));
        header.finish(ctx);
        let action = match (action.as_ref().map(|a| a.as_str()), append) {
            (Some(_), Some(_)) => {
                ctx.error(item.pos, &action_path, "append and append_action cannot both be set", "keep append_action");
                continue;
            }
            (Some("APPEND_IF_EXISTS_OR_ADD"), _) | (None, Some(true) | None) => HeaderAppend::AppendIfExistsOrAdd,
            (Some("ADD_IF_ABSENT"), _) => HeaderAppend::AddIfAbsent,
            (Some("OVERWRITE_IF_EXISTS_OR_ADD"), _) | (None, Some(false)) => HeaderAppend::OverwriteIfExistsOrAdd,
            (Some("OVERWRITE_IF_EXISTS"), _) => HeaderAppend::OverwriteIfExists,
            (Some(other), _) => {
                ctx.error(
                    item.pos,
                    &action_path,
                    format!("unknown append_action `{other}`"),
                    "use APPEND_IF_EXISTS_OR_ADD, ADD_IF_ABSENT, OVERWRITE_IF_EXISTS_OR_ADD or OVERWRITE_IF_EXISTS",
                );
                continue;
            }
        };
        let Some(name) = name.filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic() && b != b':')) else {
            ctx.error(item.pos, &name_path, "the header needs a valid name", "for example key: x-local-rate-limit");
            continue;
        };
        let value = value.map(|v| v.value).unwrap_or_default();
        if value.contains('%') {
            ctx.warn(
                codes::RATE_LIMIT_FIELD_NOT_SUPPORTED,
                item.pos,
                &format!("{item_path}.header.value"),
                "Envoy command operators (%...%) are not expanded by zmesh; the value is sent as written",
                "use a literal value",
            );
        }
        out.push(HeaderToAdd { name: name.value.to_ascii_lowercase(), value, action });
    }
    out
}

/// `status: {code: N}`; Envoy's StatusCode enum also has names (`TooManyRequests`).
fn http_status(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<u16> {
    let mut status = ctx.map(node, path)?;
    let code = status.get("code");
    status.finish(ctx);
    let (code_node, code_path) = code?;
    let named = [
        ("BadRequest", 400),
        ("Unauthorized", 401),
        ("Forbidden", 403),
        ("NotFound", 404),
        ("TooManyRequests", 429),
        ("InternalServerError", 500),
        ("ServiceUnavailable", 503),
    ];
    let number = match code_node.scalar_type() {
        Some(crate::yaml::ScalarType::Int) => ctx.int(code_node, &code_path).and_then(|c| u16::try_from(c).ok()),
        _ => code_node.scalar_text().and_then(|t| named.iter().find(|(n, _)| *n == t)).map(|(_, c)| *c),
    };
    match number {
        Some(code) if (100..=599).contains(&code) => Some(code),
        _ => {
            ctx.error(code_node.pos, &code_path, "not an HTTP status code", "write a number such as 429");
            None
        }
    }
}

/// Fields of a Kubernetes-style workload read for the registry.
pub(crate) fn read_ports_list(ctx: &mut Ctx<'_>, fields: &mut Fields<'_>) -> Vec<ServicePort> {
    let mut ports = Vec::new();
    for (item, item_path) in fields.items(ctx, "ports").unwrap_or_default() {
        let Some(mut port) = ctx.map(item, &item_path) else {
            continue;
        };
        let number = port.get("port").or_else(|| port.get("containerPort")).and_then(|(n, p)| ctx.port(n, &p));
        let name = port.string(ctx, "name").map(|n| n.value).unwrap_or_default();
        let app_protocol = port.string(ctx, "appProtocol").map(|n| n.value);
        let target_port = port.get("targetPort").and_then(|(n, p)| {
            if n.scalar_type() == Some(crate::yaml::ScalarType::Int) { ctx.port(n, &p) } else { None }
        });
        port.ignore(&["protocol", "nodePort", "hostPort", "hostIP"]);
        port.finish(ctx);
        // Istio's protocol selection: appProtocol first, then the port name's prefix
        // (`http-web`, `grpc`, `tcp-db`).
        let protocol = app_protocol
            .as_deref()
            .and_then(Protocol::parse)
            .or_else(|| Protocol::parse(name.split('-').next().unwrap_or_default()));
        if let Some(number) = number {
            ports.push(ServicePort { number, protocol, name, target_port });
        }
    }
    ports
}
