//! WorkloadEntry and ServiceEntry (`networking.istio.io`): workloads and services outside
//! Kubernetes; and EnvoyFilter, accepted only in the local rate limit shape.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use crate::decode::{Ctx, Fields};
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

/// An EnvoyFilter in the shape Istio documents for local rate limiting: a token bucket applied
/// to the HTTP requests of the selected workloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRateLimit {
    pub meta: Meta,
    pub selector: Option<Selector>,
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    pub fill_interval: Duration,
    pub pos: Pos,
}

const LOCAL_RATE_LIMIT_FILTER: &str = "envoy.filters.http.local_ratelimit";

/// The one EnvoyFilter zmesh understands; anything else is refused as unsupported.
pub(crate) fn read_envoy_filter(
    ctx: &mut Ctx<'_>,
    meta: Meta,
    spec: Option<(&Node, String)>,
) -> Option<LocalRateLimit> {
    let mark = ctx.diagnostics.len();
    let (node, path) = spec?;
    let mut fields = ctx.map(node, &path)?;
    let selector = read_workload_selector(ctx, &mut fields);
    let patches = fields.items(ctx, "configPatches").unwrap_or_default();
    fields.ignore(&["priority", "targetRefs"]);
    fields.finish(ctx);
    let unsupported = |ctx: &mut Ctx<'_>, pos: Pos, field: &str, what: &str| {
        ctx.error(
            pos,
            field,
            format!("unsupported EnvoyFilter: {what}"),
            format!("zmesh does not run Envoy; it accepts EnvoyFilter only to configure `{LOCAL_RATE_LIMIT_FILTER}` with a token bucket"),
        );
    };
    let [(patch_node, patch_path)] = patches.as_slice() else {
        unsupported(ctx, node.pos, &format!("{path}.configPatches"), "expected exactly one config patch");
        return None;
    };
    let mut patch = ctx.map(patch_node, patch_path)?;
    let apply_to = patch.string(ctx, "applyTo");
    patch.ignore(&["match"]);
    let value = patch.map(ctx, "patch").and_then(|mut p| {
        p.ignore(&["operation", "filterClass"]);
        let value = p.get("value");
        p.finish(ctx);
        value
    });
    patch.finish(ctx);
    if apply_to.as_ref().is_none_or(|a| a.as_str() != "HTTP_FILTER") {
        unsupported(ctx, patch_node.pos, &format!("{patch_path}.applyTo"), "only applyTo: HTTP_FILTER is supported");
        return None;
    }
    let Some((value_node, value_path)) = value else {
        unsupported(ctx, patch_node.pos, &format!("{patch_path}.patch.value"), "the patch has no value");
        return None;
    };
    let mut filter = ctx.map(value_node, &value_path)?;
    let name = filter.string(ctx, "name");
    let typed = filter.map(ctx, "typed_config");
    filter.finish(ctx);
    match &name {
        Some(n) if n.as_str() == LOCAL_RATE_LIMIT_FILTER => {}
        Some(n) => {
            unsupported(ctx, n.pos, &format!("{value_path}.name"), &format!("filter `{}`", n.value));
            return None;
        }
        None => {
            unsupported(ctx, value_node.pos, &format!("{value_path}.name"), "the filter has no name");
            return None;
        }
    }
    let bucket_hint = "add typed_config with `@type: type.googleapis.com/udpa.type.v1.TypedStruct`, `type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit` and value.token_bucket {max_tokens, tokens_per_fill, fill_interval}";
    let Some(mut typed) = typed else {
        ctx.error(
            value_node.pos,
            &format!("{value_path}.typed_config"),
            "the local rate limit filter has no token bucket",
            bucket_hint,
        );
        return None;
    };
    typed.ignore(&["@type", "type_url"]);
    let settings = typed.map(ctx, "value");
    typed.finish(ctx);
    let Some(mut settings) = settings else {
        ctx.error(
            value_node.pos,
            &format!("{value_path}.typed_config.value"),
            "the local rate limit filter has no settings",
            bucket_hint,
        );
        return None;
    };
    let bucket_path = settings.path("token_bucket");
    let bucket = settings.map(ctx, "token_bucket");
    settings.ignore(&[
        "stat_prefix",
        "filter_enabled",
        "filter_enforced",
        "response_headers_to_add",
        "request_headers_to_add_when_not_enforced",
        "local_rate_limit_per_downstream_connection",
        "enable_x_ratelimit_headers",
        "always_consume_default_token_bucket",
        "status",
        "descriptors",
        "stage",
        "rate_limited_as_resource_exhausted",
    ]);
    settings.finish(ctx);
    let Some(mut bucket) = bucket else {
        ctx.error(value_node.pos, &bucket_path, "the local rate limit filter has no token_bucket", bucket_hint);
        return None;
    };
    let max_tokens = bucket.int(ctx, "max_tokens");
    let tokens_per_fill = bucket.int(ctx, "tokens_per_fill").or(Some(1));
    let interval = bucket.string(ctx, "fill_interval");
    let interval_path = bucket.path("fill_interval");
    bucket.finish(ctx);
    let fill_interval = interval.as_ref().and_then(|i| crate::authn::parse_duration(i)).filter(|d| !d.is_zero());
    let (Some(max_tokens), Some(tokens_per_fill), Some(fill_interval)) = (
        max_tokens.and_then(|v| u32::try_from(v).ok()).filter(|&v| v > 0),
        tokens_per_fill.and_then(|v| u32::try_from(v).ok()).filter(|&v| v > 0),
        fill_interval,
    ) else {
        ctx.error(
            value_node.pos,
            &interval_path,
            "token_bucket needs positive max_tokens, tokens_per_fill and fill_interval",
            "for example max_tokens: 100, tokens_per_fill: 100, fill_interval: 60s",
        );
        return None;
    };
    (!ctx.has_errors_since(mark)).then_some(LocalRateLimit {
        meta,
        selector,
        max_tokens,
        tokens_per_fill,
        fill_interval,
        pos: value_node.pos,
    })
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
