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
    ExtAuthzHttp {
        service: String,
        port: u16,
        timeout: Option<std::time::Duration>,
        fail_open: bool,
        path_prefix: Option<String>,
    },
    ExtAuthzGrpc {
        service: String,
        port: u16,
        timeout: Option<std::time::Duration>,
        fail_open: bool,
    },
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
        matches!(self, ProviderKind::ExtAuthzHttp { .. } | ProviderKind::ExtAuthzGrpc { .. })
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
            "envoyExtAuthzHttp" | "envoyExtAuthzGrpc" => {
                let target = service_and_port(ctx, &mut inner);
                let timeout = inner.string(ctx, "timeout").and_then(|t| {
                    let parsed = crate::authn::parse_duration(&t);
                    if parsed.is_none() {
                        ctx.error(
                            t.pos,
                            &inner.path("timeout"),
                            format!("`{}` is not a valid duration", t.value),
                            "write a duration such as 0.5s",
                        );
                    }
                    parsed
                });
                let fail_open = inner.bool(ctx, "failOpen").unwrap_or(false);
                let path_prefix = inner.string(ctx, "pathPrefix").map(|p| p.value);
                inner.ignore(&[
                    "includeRequestHeadersInCheck",
                    "includeAdditionalHeadersInCheck",
                    "headersToUpstreamOnAllow",
                    "headersToDownstreamOnDeny",
                    "headersToDownstreamOnAllow",
                    "includeRequestBodyInCheck",
                    "statusOnError",
                    "clearRouteCache",
                    "includeHeadersInCheck",
                ]);
                target.map(|(service, port)| {
                    if key == "envoyExtAuthzHttp" {
                        ProviderKind::ExtAuthzHttp { service, port, timeout, fail_open, path_prefix }
                    } else {
                        ProviderKind::ExtAuthzGrpc { service, port, timeout, fail_open }
                    }
                })
            }
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
