//! MeshConfig: the mesh-wide settings zmesh uses, read from `mesh.yaml`, from the `mesh` key of
//! ConfigMap `istio`, or from IstioOperator `spec.meshConfig`.

use zmesh_http::PathNormalization;
use zmesh_id::TrustDomain;

use crate::decode::{Ctx, Fields};
use crate::diag::Origin;
use crate::yaml::Node;

/// Istio's `outboundTrafficPolicy.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutboundTrafficPolicy {
    #[default]
    AllowAny,
    RegistryOnly,
}

/// An `extensionProviders` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtensionProvider {
    pub name: String,
    pub kind: ProviderKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProviderKind {
    /// `envoyExtAuthzHttp`: an authorizer speaking Envoy's HTTP ext_authz protocol.
    ExtAuthzHttp(ExtAuthzHttp),
    /// `envoyExtAuthzGrpc`: an authorizer serving `envoy.service.auth.v3.Authorization/Check`.
    ExtAuthzGrpc(ExtAuthzGrpc),
    Zipkin {
        service: String,
        port: u16,
    },
    OpenTelemetry {
        service: String,
        port: u16,
    },
    Prometheus,
    /// Access logs to a file or stdout.
    FileAccessLog {
        path: String,
    },
    /// Other provider kinds Istio knows (stackdriver, skywalking, …): accepted, not used.
    Other(String),
}

impl ProviderKind {
    pub fn is_ext_authz(&self) -> bool {
        matches!(self, ProviderKind::ExtAuthzHttp(_) | ProviderKind::ExtAuthzGrpc(_))
    }

    /// The HTTP authorizer's settings, if this is one.
    pub fn ext_authz_http(&self) -> Option<&ExtAuthzHttp> {
        match self {
            ProviderKind::ExtAuthzHttp(http) => Some(http),
            _ => None,
        }
    }

    /// The gRPC authorizer's settings, if this is one.
    pub fn ext_authz_grpc(&self) -> Option<&ExtAuthzGrpc> {
        match self {
            ProviderKind::ExtAuthzGrpc(grpc) => Some(grpc),
            _ => None,
        }
    }
}

/// Istio's default for an authorizer's `timeout` (istiod writes 600 s into Envoy's config when
/// the field is unset; Envoy's own 200 ms default never applies to an Istio-made filter).
pub const EXT_AUTHZ_DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// The status a request gets when the authorizer cannot be asked and `statusOnError` is unset.
pub const EXT_AUTHZ_DEFAULT_STATUS_ON_ERROR: u16 = 403;

/// `envoyExtAuthzHttp`, every field Istio defines, with Istio's defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtAuthzHttp {
    /// `[<namespace>/]<hostname>` of the authorizer.
    pub service: String,
    pub port: u16,
    /// How long the proxy waits for the decision; past it the check has failed.
    pub timeout: std::time::Duration,
    /// Prepended to the request path in the check request (`/check` + `/admin` = `/check/admin`);
    /// begins with `/`.
    pub path_prefix: Option<String>,
    /// Allow the request when the authorizer cannot be reached, times out or answers 5xx.
    pub fail_open: bool,
    /// The status sent downstream when the check fails (and `fail_open` is false).
    pub status_on_error: u16,
    /// Client request headers copied into the check request, besides the ones always sent
    /// (Host, Method, Path, Content-Length, Authorization). `includeRequestHeadersInCheck`, or
    /// the deprecated `includeHeadersInCheck` when the former is empty, as istiod reads them.
    pub include_request_headers_in_check: Vec<HeaderPattern>,
    /// Fixed headers added to every check request, sorted by name; they override client
    /// headers of the same name.
    pub include_additional_headers_in_check: Vec<(String, String)>,
    /// Authorizer response headers copied (set, overriding) into the upstream request on allow.
    pub headers_to_upstream_on_allow: Vec<HeaderPattern>,
    /// Authorizer response headers added to the downstream response on allow.
    pub headers_to_downstream_on_allow: Vec<HeaderPattern>,
    /// Authorizer response headers sent downstream on deny; empty means all of them but Host.
    pub headers_to_downstream_on_deny: Vec<HeaderPattern>,
    pub include_request_body_in_check: Option<RequestBodyInCheck>,
    /// Accepted for compatibility and has no effect: it makes Envoy recompute the route after
    /// the authorizer edited headers, and a zmesh sidecar has no routes to recompute — the
    /// destination was fixed when the connection was captured.
    pub clear_route_cache: bool,
}

/// `envoyExtAuthzGrpc`, every field Istio defines, with Istio's defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtAuthzGrpc {
    /// `[<namespace>/]<hostname>` of the authorizer.
    pub service: String,
    pub port: u16,
    /// How long the proxy waits for the Check RPC; past it the check has failed.
    pub timeout: std::time::Duration,
    /// Allow the request when the authorizer cannot be reached, times out or the RPC fails.
    pub fail_open: bool,
    /// The status sent downstream when the check fails (and `fail_open` is false).
    pub status_on_error: u16,
    pub include_request_body_in_check: Option<RequestBodyInCheck>,
    /// Accepted for compatibility and has no effect: it makes Envoy recompute the route after
    /// the authorizer edited headers, and a zmesh sidecar has no routes to recompute.
    pub clear_route_cache: bool,
}

/// `includeRequestBodyInCheck`: send the client's body (up to a limit) with the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestBodyInCheck {
    /// The most body bytes buffered for the check (Envoy requires more than zero).
    pub max_request_bytes: u32,
    /// Send the first `max_request_bytes` of a longer body (marked
    /// `x-envoy-auth-partial-body: true`) instead of answering 413.
    pub allow_partial_message: bool,
    /// gRPC only: the body goes in `raw_body` (bytes) instead of `body` (UTF-8 text). Accepted
    /// and without effect for the HTTP provider, as in Istio.
    pub pack_as_bytes: bool,
}

/// One entry of an Istio header list (`includeRequestHeadersInCheck`, `headersTo*`): exact
/// name, `prefix*` or `*suffix`, matched ignoring ASCII case. Stored lower-case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderPattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl HeaderPattern {
    /// Whether a header name matches, ignoring ASCII case.
    pub fn matches(&self, name: &str) -> bool {
        let starts = |p: &str| name.len() >= p.len() && name.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes());
        let ends = |p: &str| {
            name.len() >= p.len() && name.as_bytes()[name.len() - p.len()..].eq_ignore_ascii_case(p.as_bytes())
        };
        match self {
            HeaderPattern::Exact(p) => name.eq_ignore_ascii_case(p),
            HeaderPattern::Prefix(p) => starts(p),
            HeaderPattern::Suffix(p) => ends(p),
        }
    }

    /// Whether any pattern of a list matches.
    pub fn any(patterns: &[HeaderPattern], name: &str) -> bool {
        patterns.iter().any(|p| p.matches(name))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MeshConfig {
    pub root_namespace: String,
    pub trust_domain: TrustDomain,
    pub trust_domain_aliases: Vec<TrustDomain>,
    pub extension_providers: Vec<ExtensionProvider>,
    pub path_normalization: PathNormalization,
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    /// `defaultConfig.tracing`: the Zipkin address and sampling percentage, if set.
    pub tracing: Option<TracingDefaults>,
    /// Where this configuration came from; `None` for the built-in defaults.
    pub origin: Option<Origin>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TracingDefaults {
    pub zipkin_address: Option<String>,
    pub sampling_percent: Option<f64>,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            root_namespace: "istio-system".to_owned(),
            trust_domain: TrustDomain::default(),
            trust_domain_aliases: Vec::new(),
            extension_providers: Vec::new(),
            path_normalization: PathNormalization::Base,
            outbound_traffic_policy: OutboundTrafficPolicy::default(),
            tracing: None,
            origin: None,
        }
    }
}

impl MeshConfig {
    pub fn provider(&self, name: &str) -> Option<&ExtensionProvider> {
        self.extension_providers.iter().find(|p| p.name == name)
    }

    /// Every trust domain this mesh answers to: its own first, then the aliases.
    pub fn trust_domains(&self) -> impl Iterator<Item = &TrustDomain> {
        std::iter::once(&self.trust_domain).chain(&self.trust_domain_aliases)
    }
}

/// MeshConfig fields zmesh accepts but does not act on (they configure Envoy or istiod).
const IGNORED_MESH_FIELDS: &[&str] = &[
    "accessLogFile",
    "accessLogEncoding",
    "accessLogFormat",
    "enableTracing",
    "enableAutoMtls",
    "defaultProviders",
    "connectTimeout",
    "protocolDetectionTimeout",
    "ingressClass",
    "ingressService",
    "ingressControllerMode",
    "ingressSelector",
    "enablePrometheusMerge",
    "discoverySelectors",
    "localityLbSetting",
    "dnsRefreshRate",
    "h2UpgradePolicy",
    "inboundClusterStatName",
    "outboundClusterStatName",
    "certificates",
    "caCertificates",
    "serviceSettings",
    "defaultServiceExportTo",
    "defaultVirtualServiceExportTo",
    "defaultDestinationRuleExportTo",
    "meshMTLS",
    "tlsDefaults",
    "verifyCertificateAtClient",
    "enableEnvoyAccessLogService",
    "tcpKeepalive",
    "thriftConfig",
    "proxyListenPort",
    "proxyInboundListenPort",
    "proxyHttpPort",
    "rootNamespaceOverride",
    "configSources",
    "meshNetworks",
    "extensionProvidersOverride",
];

const IGNORED_PROXY_CONFIG_FIELDS: &[&str] = &[
    "discoveryAddress",
    "proxyMetadata",
    "holdApplicationUntilProxyStarts",
    "concurrency",
    "drainDuration",
    "terminationDrainDuration",
    "parentShutdownDuration",
    "proxyStatsMatcher",
    "image",
    "gatewayTopology",
    "tracingServiceName",
    "statsdUdpAddress",
    "proxyAdminPort",
    "controlPlaneAuthPolicy",
    "readinessProbe",
    "meshId",
    "statusPort",
    "extraStatTags",
    "envoyMetricsService",
    "envoyAccessLogService",
    "interceptionMode",
    "privateKeyProvider",
    "proxyHeaders",
    "runtimeValues",
    "stsPort",
    "caCertificatesPem",
    "configPath",
    "binaryPath",
    "serviceCluster",
    "customConfigFile",
    "statNameLength",
    "sds",
    "zipkinAddress",
];

pub(crate) fn read_mesh_config(ctx: &mut Ctx<'_>, node: &Node, path: &str, origin: Origin) -> Option<MeshConfig> {
    let mark = ctx.diagnostics.len();
    let mut mesh = MeshConfig { origin: Some(origin), ..MeshConfig::default() };
    let mut fields = ctx.map(node, path)?;
    if let Some(root) = fields.string(ctx, "rootNamespace") {
        mesh.root_namespace = root.value;
    }
    if let Some(td) = fields.string(ctx, "trustDomain") {
        match td.value.parse() {
            Ok(td) => mesh.trust_domain = td,
            Err(error) => ctx.error(td.pos, &fields.path("trustDomain"), error.to_string(), ""),
        }
    }
    let aliases_path = fields.path("trustDomainAliases");
    for (i, alias) in fields.strings(ctx, "trustDomainAliases").unwrap_or_default().into_iter().enumerate() {
        match alias.value.parse() {
            Ok(td) => mesh.trust_domain_aliases.push(td),
            Err(error) => ctx.error(alias.pos, &format!("{aliases_path}[{i}]"), error.to_string(), ""),
        }
    }
    for (item, item_path) in fields.items(ctx, "extensionProviders").unwrap_or_default() {
        if let Some(provider) = read_provider(ctx, item, &item_path) {
            if mesh.provider(&provider.name).is_some() {
                ctx.error(
                    item.pos,
                    &item_path,
                    format!("extension provider `{}` is defined twice", provider.name),
                    "give each provider a unique name",
                );
            }
            mesh.extension_providers.push(provider);
        }
    }
    if let Some(mut normalization) = fields.map(ctx, "pathNormalization") {
        if let Some(mode) = normalization.string(ctx, "normalization") {
            mesh.path_normalization = match mode.value.as_str() {
                "NONE" => PathNormalization::None,
                "DEFAULT" | "BASE" => PathNormalization::Base,
                "MERGE_SLASHES" => PathNormalization::MergeSlashes,
                "DECODE_AND_MERGE_SLASHES" => PathNormalization::DecodeAndMergeSlashes,
                other => {
                    ctx.error(
                        mode.pos,
                        &normalization.path("normalization"),
                        format!("unknown path normalization `{other}`"),
                        "use NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES",
                    );
                    PathNormalization::Base
                }
            };
        }
        normalization.finish(ctx);
    }
    if let Some(mut policy) = fields.map(ctx, "outboundTrafficPolicy") {
        if let Some(mode) = policy.string(ctx, "mode") {
            mesh.outbound_traffic_policy = match mode.value.as_str() {
                "ALLOW_ANY" => OutboundTrafficPolicy::AllowAny,
                "REGISTRY_ONLY" => OutboundTrafficPolicy::RegistryOnly,
                other => {
                    ctx.error(
                        mode.pos,
                        &policy.path("mode"),
                        format!("unknown outbound traffic policy `{other}`"),
                        "use ALLOW_ANY or REGISTRY_ONLY",
                    );
                    OutboundTrafficPolicy::AllowAny
                }
            };
        }
        policy.finish(ctx);
    }
    if let Some(mut defaults) = fields.map(ctx, "defaultConfig") {
        mesh.tracing = read_tracing_defaults(ctx, &mut defaults);
        defaults.ignore(IGNORED_PROXY_CONFIG_FIELDS);
        defaults.finish(ctx);
    }
    fields.ignore(IGNORED_MESH_FIELDS);
    fields.finish(ctx);
    (!ctx.has_errors_since(mark)).then_some(mesh)
}

fn read_tracing_defaults(ctx: &mut Ctx<'_>, defaults: &mut Fields<'_>) -> Option<TracingDefaults> {
    let mut tracing = defaults.map(ctx, "tracing")?;
    let mut out = TracingDefaults { zipkin_address: None, sampling_percent: None };
    if let Some(mut zipkin) = tracing.map(ctx, "zipkin") {
        out.zipkin_address = zipkin.string(ctx, "address").map(|a| a.value);
        zipkin.finish(ctx);
    }
    if let Some((node, path)) = tracing.get("sampling") {
        match ctx.number(node, &path) {
            Some(value) if (0.0..=100.0).contains(&value) => out.sampling_percent = Some(value),
            Some(value) => ctx.error(
                node.pos,
                &path,
                format!("sampling {value} is out of range"),
                "give a percentage from 0 to 100",
            ),
            None => {}
        }
    }
    tracing.ignore(&[
        "tlsSettings",
        "customTags",
        "maxPathTagLength",
        "lightstep",
        "datadog",
        "stackdriver",
        "openCensusAgent",
        "enableIstioTags",
    ]);
    tracing.finish(ctx);
    Some(out)
}

fn service_and_port(ctx: &mut Ctx<'_>, fields: &mut Fields<'_>) -> Option<(String, u16)> {
    let service = fields.string(ctx, "service");
    let port = fields.get("port").and_then(|(node, path)| ctx.port(node, &path));
    match (service, port) {
        (Some(service), Some(port)) if !service.is_empty() => Some((service.value, port)),
        _ => {
            ctx.error(
                fields.pos,
                &fields.path("service"),
                "the provider needs `service` and `port`",
                "name the service (host) and port to reach it on",
            );
            None
        }
    }
}

/// The HTTP status codes Envoy's `envoy.type.v3.StatusCode` names: istiod refuses any other
/// `statusOnError`.
const ENVOY_STATUS_CODES: &[u16] = &[
    100, 200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305, 307, 308, 400, 401, 402, 403,
    404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 421, 422, 423, 424, 426, 428, 429, 431, 500,
    501, 502, 503, 504, 505, 506, 507, 508, 510, 511,
];

/// `envoyExtAuthzHttp` (`http` true) or `envoyExtAuthzGrpc`: every field Istio defines is read
/// and checked as istiod checks it; `None` when something is wrong (already reported).
fn read_ext_authz(ctx: &mut Ctx<'_>, inner: &mut Fields<'_>, http: bool) -> Option<ProviderKind> {
    let mark = ctx.diagnostics.len();
    let target = service_and_port(ctx, inner);
    let timeout = match inner.string(ctx, "timeout") {
        None => EXT_AUTHZ_DEFAULT_TIMEOUT,
        Some(t) => match crate::authn::parse_duration(&t) {
            Some(d) if !d.is_zero() => d,
            Some(_) => {
                ctx.error(
                    t.pos,
                    &inner.path("timeout"),
                    "the timeout must be greater than zero",
                    "write a duration such as 0.5s, or leave it out for Istio's default of 600s",
                );
                EXT_AUTHZ_DEFAULT_TIMEOUT
            }
            None => {
                ctx.error(
                    t.pos,
                    &inner.path("timeout"),
                    format!("`{}` is not a valid duration", t.value),
                    "write a duration such as 0.5s",
                );
                EXT_AUTHZ_DEFAULT_TIMEOUT
            }
        },
    };
    let fail_open = inner.bool(ctx, "failOpen").unwrap_or(false);
    let clear_route_cache = inner.bool(ctx, "clearRouteCache").unwrap_or(false);
    let status_on_error = match inner.string(ctx, "statusOnError") {
        None => EXT_AUTHZ_DEFAULT_STATUS_ON_ERROR,
        Some(s) if s.is_empty() => EXT_AUTHZ_DEFAULT_STATUS_ON_ERROR,
        Some(s) => match s.value.parse::<u16>() {
            Ok(code) if ENVOY_STATUS_CODES.contains(&code) => code,
            _ => {
                ctx.error(
                    s.pos,
                    &inner.path("statusOnError"),
                    format!("`{}` is not an HTTP status Envoy supports", s.value),
                    "write a status code as a quoted string, such as \"503\"",
                );
                EXT_AUTHZ_DEFAULT_STATUS_ON_ERROR
            }
        },
    };
    let include_request_body_in_check = inner.map(ctx, "includeRequestBodyInCheck").map(|mut body| {
        let max_request_bytes = match body.get("maxRequestBytes") {
            None => 0,
            Some((node, path)) => match ctx.int(node, &path) {
                Some(n) => match u32::try_from(n) {
                    Ok(n) if n > 0 => n,
                    _ => {
                        ctx.error(
                            node.pos,
                            &path,
                            format!("maxRequestBytes {n} is out of range"),
                            "give a number of bytes from 1 to 4294967295",
                        );
                        1
                    }
                },
                None => 1,
            },
        };
        if max_request_bytes == 0 {
            ctx.error(
                body.pos,
                &body.path("maxRequestBytes"),
                "includeRequestBodyInCheck needs maxRequestBytes",
                "set the most body bytes to send to the authorizer, such as 8192",
            );
        }
        let allow_partial_message = body.bool(ctx, "allowPartialMessage").unwrap_or(false);
        let pack_as_bytes = body.bool(ctx, "packAsBytes").unwrap_or(false);
        body.finish(ctx);
        RequestBodyInCheck { max_request_bytes, allow_partial_message, pack_as_bytes }
    });
    let kind = if http {
        let path_prefix = inner.string(ctx, "pathPrefix").filter(|p| !p.is_empty()).map(|p| {
            if !p.starts_with('/') {
                ctx.error(
                    p.pos,
                    &inner.path("pathPrefix"),
                    format!("pathPrefix must begin with `/`, found `{}`", p.value),
                    format!("write /{}", p.value),
                );
            } else if p.chars().any(|c| c.is_whitespace() || c.is_control()) {
                ctx.error(
                    p.pos,
                    &inner.path("pathPrefix"),
                    "pathPrefix holds a space or control character, which cannot appear in a request path",
                    "percent-encode it",
                );
            }
            p.value
        });
        let mut include_request_headers_in_check = header_patterns(ctx, inner, "includeRequestHeadersInCheck");
        let deprecated = header_patterns(ctx, inner, "includeHeadersInCheck");
        if include_request_headers_in_check.is_empty() {
            // istiod reads the deprecated name only when the new one is empty.
            include_request_headers_in_check = deprecated;
        }
        let mut include_additional_headers_in_check = Vec::new();
        for (key, value, path) in inner.entries(ctx, "includeAdditionalHeadersInCheck").unwrap_or_default() {
            let name = key.scalar_text().unwrap_or_default();
            if !is_header_name(name) {
                ctx.error(
                    key.pos,
                    &path,
                    format!("`{name}` is not a valid header name"),
                    "use letters, digits and - only",
                );
                continue;
            }
            let Some(value) = ctx.string(value, &path) else {
                continue;
            };
            if value.chars().any(|c| c == '\r' || c == '\n' || c == '\0') {
                ctx.error(value.pos, &path, "a header value cannot hold a line break or NUL", "remove it");
                continue;
            }
            include_additional_headers_in_check.push((name.to_ascii_lowercase(), value.value));
        }
        include_additional_headers_in_check.sort();
        ProviderKind::ExtAuthzHttp(ExtAuthzHttp {
            service: String::new(),
            port: 0,
            timeout,
            path_prefix,
            fail_open,
            status_on_error,
            include_request_headers_in_check,
            include_additional_headers_in_check,
            headers_to_upstream_on_allow: header_patterns(ctx, inner, "headersToUpstreamOnAllow"),
            headers_to_downstream_on_allow: header_patterns(ctx, inner, "headersToDownstreamOnAllow"),
            headers_to_downstream_on_deny: header_patterns(ctx, inner, "headersToDownstreamOnDeny"),
            include_request_body_in_check,
            clear_route_cache,
        })
    } else {
        ProviderKind::ExtAuthzGrpc(ExtAuthzGrpc {
            service: String::new(),
            port: 0,
            timeout,
            fail_open,
            status_on_error,
            include_request_body_in_check,
            clear_route_cache,
        })
    };
    let (service, port) = target?;
    if ctx.has_errors_since(mark) {
        return None;
    }
    Some(match kind {
        ProviderKind::ExtAuthzHttp(http) => ProviderKind::ExtAuthzHttp(ExtAuthzHttp { service, port, ..http }),
        ProviderKind::ExtAuthzGrpc(grpc) => ProviderKind::ExtAuthzGrpc(ExtAuthzGrpc { service, port, ..grpc }),
        other => other,
    })
}

/// An RFC 9110 token, the characters a header name may hold.
fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header list in Istio's syntax: `name`, `prefix*` or `*suffix`; a lone `*` is refused, as
/// istiod refuses it, and so is a `*` anywhere else (it would match no header name).
fn header_patterns(ctx: &mut Ctx<'_>, fields: &mut Fields<'_>, key: &'static str) -> Vec<HeaderPattern> {
    let path = fields.path(key);
    let mut out = Vec::new();
    for (i, item) in fields.strings(ctx, key).unwrap_or_default().into_iter().enumerate() {
        let text = item.value.to_ascii_lowercase();
        let (pattern, bare) = if text.len() > 1 && text.starts_with('*') {
            (HeaderPattern::Suffix(text[1..].to_owned()), &text[1..])
        } else if text.len() > 1 && text.ends_with('*') {
            (HeaderPattern::Prefix(text[..text.len() - 1].to_owned()), &text[..text.len() - 1])
        } else {
            (HeaderPattern::Exact(text.clone()), text.as_str())
        };
        if text == "*" {
            ctx.error(
                item.pos,
                &format!("{path}[{i}]"),
                "a single wildcard (\"*\") is not supported",
                "change it to a prefix (x-auth-*) or suffix (*-id) match",
            );
        } else if bare.contains('*') || !is_header_name(bare) {
            ctx.error(
                item.pos,
                &format!("{path}[{i}]"),
                format!("`{}` is not a header name, `prefix*` or `*suffix`", item.value),
                "use letters, digits and - with at most one * at the start or the end",
            );
        } else {
            out.push(pattern);
        }
    }
    out
}

fn read_provider(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<ExtensionProvider> {
    let mut fields = ctx.map(node, path)?;
    let name = fields.string(ctx, "name");
    let kinds =
        ["envoyExtAuthzHttp", "envoyExtAuthzGrpc", "zipkin", "opentelemetry", "prometheus", "envoyFileAccessLog"];
    let others = [
        "stackdriver",
        "skywalking",
        "datadog",
        "lightstep",
        "opencensus",
        "envoyHttpAls",
        "envoyTcpAls",
        "envoyOtelAls",
        "sds",
    ];
    let mut kind = None;
    let mut count = 0;
    for key in kinds {
        let Some(mut inner) = fields.map(ctx, key) else {
            continue;
        };
        count += 1;
        kind = match key {
            "envoyExtAuthzHttp" => read_ext_authz(ctx, &mut inner, true),
            "envoyExtAuthzGrpc" => read_ext_authz(ctx, &mut inner, false),
            "zipkin" | "opentelemetry" => {
                let target = service_and_port(ctx, &mut inner);
                inner.ignore(&[
                    "maxTagLength",
                    "traceId128bit",
                    "enable64bitTraceId",
                    "headers",
                    "http",
                    "grpc",
                    "resourceDetectors",
                    "dynatraceSampler",
                    "path",
                ]);
                target.map(|(service, port)| {
                    if key == "zipkin" {
                        ProviderKind::Zipkin { service, port }
                    } else {
                        ProviderKind::OpenTelemetry { service, port }
                    }
                })
            }
            "prometheus" => Some(ProviderKind::Prometheus),
            _ => {
                let file = inner.string(ctx, "path").map(|p| p.value).unwrap_or_else(|| "/dev/stdout".to_owned());
                inner.ignore(&["logFormat"]);
                Some(ProviderKind::FileAccessLog { path: file })
            }
        };
        inner.finish(ctx);
    }
    for key in others {
        if fields.get(key).is_some() {
            count += 1;
            kind = Some(ProviderKind::Other(key.to_owned()));
        }
    }
    fields.finish(ctx);
    let Some(name) = name else {
        ctx.error(
            node.pos,
            &format!("{path}.name"),
            "extension provider without a name",
            "give it a name that policies can refer to",
        );
        return None;
    };
    if count != 1 {
        ctx.error(
            node.pos,
            path,
            format!("extension provider `{}` must set exactly one provider type, found {count}", name.value),
            format!("set one of: {}", kinds.join(", ")),
        );
        return None;
    }
    kind.map(|kind| ExtensionProvider { name: name.value, kind })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{FileKind, Loader};

    fn load(mesh: &str) -> (Option<MeshConfig>, Vec<String>) {
        let mut loader = Loader::new();
        loader.add_str(Some("mesh.yaml".into()), mesh, FileKind::MeshConfig);
        let loaded = loader.finish();
        let messages: Vec<String> = loaded.diagnostics.iter().map(ToString::to_string).collect();
        let ok = !loaded.has_errors();
        (ok.then_some(loaded.config.mesh), messages)
    }

    fn provider(mesh: &str) -> ProviderKind {
        let (mesh, messages) = load(mesh);
        let mesh = mesh.unwrap_or_else(|| panic!("refused: {messages:?}"));
        mesh.extension_providers[0].kind.clone()
    }

    #[test]
    fn an_http_authorizer_gets_istios_defaults() {
        let kind = provider(
            "extensionProviders:\n- name: a\n  envoyExtAuthzHttp: {service: authz.foo.svc.cluster.local, port: 8000}\n",
        );
        assert_eq!(
            kind,
            ProviderKind::ExtAuthzHttp(ExtAuthzHttp {
                service: "authz.foo.svc.cluster.local".into(),
                port: 8000,
                timeout: Duration::from_secs(600),
                path_prefix: None,
                fail_open: false,
                status_on_error: 403,
                include_request_headers_in_check: vec![],
                include_additional_headers_in_check: vec![],
                headers_to_upstream_on_allow: vec![],
                headers_to_downstream_on_allow: vec![],
                headers_to_downstream_on_deny: vec![],
                include_request_body_in_check: None,
                clear_route_cache: false,
            })
        );
        assert!(kind.is_ext_authz());
    }

    #[test]
    fn every_http_authorizer_field_is_read_into_its_typed_field() {
        let kind = provider(
            "extensionProviders:
- name: a
  envoyExtAuthzHttp:
    service: foo/authz.example.com
    port: 9000
    timeout: 1.5s
    pathPrefix: /check
    failOpen: true
    clearRouteCache: true
    statusOnError: \"503\"
    includeRequestHeadersInCheck: [X-Ext-Authz, \"x-b3-*\", \"*-Token\"]
    includeHeadersInCheck: [ignored-when-the-new-name-is-set]
    includeAdditionalHeadersInCheck: {X-Zmesh: one, a-first: two}
    headersToUpstreamOnAllow: [x-user]
    headersToDownstreamOnAllow: [x-allow-*]
    headersToDownstreamOnDeny: [\"*-deny\"]
    includeRequestBodyInCheck: {maxRequestBytes: 4096, allowPartialMessage: true, packAsBytes: true}
",
        );
        let http = kind.ext_authz_http().expect("an HTTP authorizer").clone();
        assert_eq!(http.service, "foo/authz.example.com");
        assert_eq!(http.port, 9000);
        assert_eq!(http.timeout, Duration::from_millis(1500));
        assert_eq!(http.path_prefix.as_deref(), Some("/check"));
        assert!(http.fail_open);
        assert!(http.clear_route_cache);
        assert_eq!(http.status_on_error, 503);
        assert_eq!(
            http.include_request_headers_in_check,
            [
                HeaderPattern::Exact("x-ext-authz".into()),
                HeaderPattern::Prefix("x-b3-".into()),
                HeaderPattern::Suffix("-token".into())
            ]
        );
        assert_eq!(
            http.include_additional_headers_in_check,
            [("a-first".to_owned(), "two".to_owned()), ("x-zmesh".to_owned(), "one".to_owned())]
        );
        assert_eq!(http.headers_to_upstream_on_allow, [HeaderPattern::Exact("x-user".into())]);
        assert_eq!(http.headers_to_downstream_on_allow, [HeaderPattern::Prefix("x-allow-".into())]);
        assert_eq!(http.headers_to_downstream_on_deny, [HeaderPattern::Suffix("-deny".into())]);
        assert_eq!(
            http.include_request_body_in_check,
            Some(RequestBodyInCheck { max_request_bytes: 4096, allow_partial_message: true, pack_as_bytes: true })
        );
    }

    #[test]
    fn the_deprecated_include_headers_in_check_applies_when_the_new_name_is_empty() {
        let kind = provider(
            "extensionProviders:\n- name: a\n  envoyExtAuthzHttp: {service: a, port: 1, includeHeadersInCheck: [x-old]}\n",
        );
        assert_eq!(
            kind.ext_authz_http().map(|h| h.include_request_headers_in_check.clone()),
            Some(vec![HeaderPattern::Exact("x-old".into())])
        );
    }

    #[test]
    fn every_grpc_authorizer_field_is_read_and_http_only_fields_are_refused() {
        let kind = provider(
            "extensionProviders:
- name: g
  envoyExtAuthzGrpc:
    service: authz.foo.svc.cluster.local
    port: 9191
    timeout: 250ms
    failOpen: true
    statusOnError: \"401\"
    clearRouteCache: false
    includeRequestBodyInCheck: {maxRequestBytes: 10}
",
        );
        assert_eq!(
            kind,
            ProviderKind::ExtAuthzGrpc(ExtAuthzGrpc {
                service: "authz.foo.svc.cluster.local".into(),
                port: 9191,
                timeout: Duration::from_millis(250),
                fail_open: true,
                status_on_error: 401,
                include_request_body_in_check: Some(RequestBodyInCheck {
                    max_request_bytes: 10,
                    allow_partial_message: false,
                    pack_as_bytes: false
                }),
                clear_route_cache: false,
            })
        );
        let (mesh, messages) =
            load("extensionProviders:\n- name: g\n  envoyExtAuthzGrpc: {service: a, port: 1, pathPrefix: /x}\n");
        assert!(mesh.is_none());
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert!(
            messages[0].contains("extensionProviders[0].envoyExtAuthzGrpc.pathPrefix: unknown field"),
            "{messages:?}"
        );
    }

    #[test]
    fn bad_authorizer_settings_are_refused_at_their_line_with_the_fix() {
        let (mesh, messages) = load(
            "extensionProviders:
- name: a
  envoyExtAuthzHttp:
    service: authz
    port: 8000
    timeout: soon
    statusOnError: \"299\"
    pathPrefix: check
    includeRequestHeadersInCheck: [\"*\", \"a*b\"]
    includeRequestBodyInCheck: {allowPartialMessage: true}
",
        );
        assert!(mesh.is_none());
        let expected = [
            "mesh.yaml:6:14: error[IST0106]: MeshConfig: extensionProviders[0].envoyExtAuthzHttp.timeout: `soon` is not a valid duration",
            "mesh.yaml:7:20: error[IST0106]: MeshConfig: extensionProviders[0].envoyExtAuthzHttp.statusOnError: `299` is not an HTTP status Envoy supports",
            "mesh.yaml:10:32: error[IST0106]: MeshConfig: extensionProviders[0].envoyExtAuthzHttp.includeRequestBodyInCheck.maxRequestBytes: includeRequestBodyInCheck needs maxRequestBytes",
            "mesh.yaml:8:17: error[IST0106]: MeshConfig: extensionProviders[0].envoyExtAuthzHttp.pathPrefix: pathPrefix must begin with `/`, found `check`",
            "mesh.yaml:9:36: error[IST0106]: MeshConfig: extensionProviders[0].envoyExtAuthzHttp.includeRequestHeadersInCheck[0]: a single wildcard (\"*\") is not supported",
            "mesh.yaml:9:41: error[IST0106]: MeshConfig: extensionProviders[0].envoyExtAuthzHttp.includeRequestHeadersInCheck[1]: `a*b` is not a header name, `prefix*` or `*suffix`",
        ];
        assert_eq!(messages.len(), expected.len(), "{messages:#?}");
        for (found, want) in messages.iter().zip(expected) {
            assert!(found.starts_with(want), "{found}\n  does not start with\n{want}");
        }
    }

    #[test]
    fn a_zero_timeout_and_a_zero_body_limit_are_refused() {
        let (mesh, messages) = load(
            "extensionProviders:\n- name: g\n  envoyExtAuthzGrpc: {service: a, port: 1, timeout: 0s, includeRequestBodyInCheck: {maxRequestBytes: 0}}\n",
        );
        assert!(mesh.is_none());
        assert_eq!(messages.len(), 2, "{messages:#?}");
        assert!(messages[0].contains("timeout: the timeout must be greater than zero"), "{messages:#?}");
        assert!(messages[1].contains("maxRequestBytes 0 is out of range"), "{messages:#?}");
    }

    #[test]
    fn header_patterns_match_exact_prefix_and_suffix_ignoring_case() {
        assert!(HeaderPattern::Exact("x-a".into()).matches("X-A"));
        assert!(!HeaderPattern::Exact("x-a".into()).matches("x-ab"));
        assert!(HeaderPattern::Prefix("x-b3-".into()).matches("X-B3-TraceId"));
        assert!(!HeaderPattern::Prefix("x-b3-".into()).matches("x-b3"));
        assert!(HeaderPattern::Suffix("-token".into()).matches("Auth-Token"));
        assert!(!HeaderPattern::Suffix("-token".into()).matches("token"));
    }
}
