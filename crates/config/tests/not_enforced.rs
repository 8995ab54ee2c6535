//! What zmesh reads but does not apply is said, never silent: each case is a warning with a
//! stable code (docs/diagnostic-codes.md), the line and field it is about, and the document
//! still loads. And the local rate limit EnvoyFilter is read in the shape Istio users write.

use std::time::Duration;

use zmesh_config::networking::{FilterPosition, Fraction, HeaderAppend, HeaderToAdd, RateLimitFilter, TokenBucket};
use zmesh_config::{Diagnostic, FileKind, Loaded, Loader, Severity};

fn load(yaml: &str) -> Loaded {
    let mut loader = Loader::new();
    loader.add_str(Some("config.yaml".into()), yaml, FileKind::Resources);
    loader.finish()
}

/// The warnings of a load that has no errors, as (code, line, field).
fn warnings(loaded: &Loaded) -> Vec<(&'static str, usize, String)> {
    let errors: Vec<String> = loaded.errors().map(ToString::to_string).collect();
    assert!(errors.is_empty(), "unexpected errors: {errors:#?}");
    loaded
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Warning)
        .map(|d| (d.code.expect("every warning has a code"), d.origin.pos.line, d.field.clone()))
        .collect()
}

fn only_warning(loaded: &Loaded) -> &Diagnostic {
    let found: Vec<&Diagnostic> = loaded.diagnostics.iter().filter(|d| d.severity == Severity::Warning).collect();
    assert_eq!(found.len(), 1, "{found:#?}");
    found[0]
}

/// Istio's "Enabling Rate Limits using Envoy" local rate limit, as users copy it.
const ISTIO_DOCS_LOCAL_RATE_LIMIT: &str = "apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata:
  name: filter-local-ratelimit-svc
  namespace: istio-system
spec:
  workloadSelector:
    labels:
      app: productpage
  configPatches:
    - applyTo: HTTP_FILTER
      match:
        context: SIDECAR_INBOUND
        listener:
          filterChain:
            filter:
              name: \"envoy.filters.network.http_connection_manager\"
      patch:
        operation: INSERT_BEFORE
        value:
          name: envoy.filters.http.local_ratelimit
          typed_config:
            \"@type\": type.googleapis.com/udpa.type.v1.TypedStruct
            type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
            value:
              stat_prefix: http_local_rate_limiter
              token_bucket:
                max_tokens: 4
                tokens_per_fill: 4
                fill_interval: 60s
              filter_enabled:
                runtime_key: local_rate_limit_enabled
                default_value:
                  numerator: 100
                  denominator: HUNDRED
              filter_enforced:
                runtime_key: local_rate_limit_enforced
                default_value:
                  numerator: 100
                  denominator: HUNDRED
              response_headers_to_add:
                - append: false
                  header:
                    key: x-local-rate-limit
                    value: 'true'
";

fn single_filter(loaded: &Loaded) -> &RateLimitFilter {
    let envoy_filters = &loaded.config.rate_limits;
    assert_eq!(envoy_filters.len(), 1);
    assert_eq!(envoy_filters[0].filters.len(), 1, "{:#?}", loaded.diagnostics);
    &envoy_filters[0].filters[0]
}

#[test]
fn the_istio_docs_local_rate_limit_loads_without_a_finding_and_runs_first() {
    let loaded = load(ISTIO_DOCS_LOCAL_RATE_LIMIT);
    assert!(loaded.diagnostics.is_empty(), "{:#?}", loaded.diagnostics);
    let envoy_filter = &loaded.config.rate_limits[0];
    assert_eq!(envoy_filter.selector.as_ref().map(|s| s.match_labels["app"].as_str()), Some("productpage"));
    let filter = single_filter(&loaded);
    // INSERT_BEFORE without a subFilter puts the filter first in Istio's chain.
    assert_eq!(
        *filter,
        RateLimitFilter {
            patch: 0,
            pos: filter.pos,
            stat_prefix: "http_local_rate_limiter".into(),
            position: FilterPosition::BeforeAuthentication,
            port: None,
            token_bucket: TokenBucket { max_tokens: 4, tokens_per_fill: 4, fill_interval: Duration::from_secs(60) },
            filter_enabled: Fraction::ALL,
            filter_enforced: Fraction::ALL,
            response_headers: vec![HeaderToAdd {
                name: "x-local-rate-limit".into(),
                value: "true".into(),
                action: HeaderAppend::OverwriteIfExistsOrAdd,
            }],
            request_headers_when_not_enforced: Vec::new(),
            status: 429,
            per_connection: false,
        }
    );
    assert_eq!(loaded.sources.iter().filter(|s| s.kind == "EnvoyFilter").count(), 1);
}

#[test]
fn the_direct_typed_form_before_the_router_runs_after_authorization_with_its_settings() {
    let loaded = load(
        "apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: rl, namespace: shop}
spec:
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_INBOUND
      listener:
        portNumber: 8080
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
            subFilter: {name: envoy.filters.http.router}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          stat_prefix: shop_limit
          token_bucket: {max_tokens: 10, fill_interval: 0.5s}
          filter_enabled: {default_value: {numerator: 5000, denominator: TEN_THOUSAND}}
          filter_enforced: {default_value: {numerator: 1, denominator: MILLION}}
          status: {code: 503}
          local_rate_limit_per_downstream_connection: true
          response_headers_to_add:
          - append_action: ADD_IF_ABSENT
            header: {key: X-Limited, value: yes}
  - applyTo: HTTP_FILTER
    patch:
      operation: INSERT_FIRST
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          stat_prefix: second
          token_bucket: {max_tokens: 1, tokens_per_fill: 1, fill_interval: 1s}
          filter_enabled: {default_value: {numerator: 100}}
          filter_enforced: {default_value: {numerator: 100}}
",
    );
    // The second patch has no context (ANY): enforced on inbound, said so for outbound.
    assert_eq!(warnings(&loaded), [("ZM2003", 30, "spec.configPatches[1].match.context".to_owned())]);
    let filters = &loaded.config.rate_limits[0].filters;
    assert_eq!(filters.len(), 2);
    let first = &filters[0];
    assert_eq!(first.position, FilterPosition::AfterAuthorization);
    assert_eq!(first.port, Some(8080));
    assert_eq!(first.token_bucket.tokens_per_fill, 1, "tokens_per_fill defaults to 1");
    assert_eq!(first.token_bucket.fill_interval, Duration::from_millis(500));
    assert_eq!(first.filter_enabled, Fraction { numerator: 5000, denominator: 10_000 });
    assert_eq!(first.filter_enforced, Fraction { numerator: 1, denominator: 1_000_000 });
    assert_eq!((first.status, first.per_connection), (503, true));
    assert_eq!(first.response_headers[0].name, "x-limited");
    assert_eq!(first.response_headers[0].action, HeaderAppend::AddIfAbsent);
    assert_eq!((filters[1].patch, filters[1].position), (1, FilterPosition::BeforeAuthentication));
}

#[test]
fn the_seed_rate_limit_without_a_token_bucket_is_a_warning_and_limits_nothing() {
    let seed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/seed-configs/07-advanced.yaml"))
            .expect("the seed configuration");
    let mut loader = Loader::new();
    loader.add_str(Some("07-advanced.yaml".into()), &seed, FileKind::Resources);
    let loaded = loader.finish();
    assert_eq!(warnings(&loaded), [("ZM2002", 42, "spec.configPatches[0].patch.value.typed_config".to_owned())]);
    assert!(only_warning(&loaded).message.contains("reported and not enforced"));
    // Every document of the file loads, the EnvoyFilter with no enforceable filter.
    assert_eq!(loaded.config.request_authentications.len(), 1);
    assert_eq!(loaded.config.mesh.extension_providers.len(), 1);
    assert_eq!(loaded.config.rate_limits.len(), 1);
    assert!(loaded.config.rate_limits[0].filters.is_empty());
}

#[test]
fn a_typed_struct_without_a_token_bucket_is_the_same_warning_at_the_settings() {
    let loaded = load(
        "apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: rl, namespace: shop}
spec:
  configPatches:
  - applyTo: HTTP_FILTER
    patch:
      operation: INSERT_FIRST
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          '@type': type.googleapis.com/udpa.type.v1.TypedStruct
          type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          value:
            stat_prefix: rl
",
    );
    assert_eq!(
        warnings(&loaded),
        [("ZM2002", 15, "spec.configPatches[0].patch.value.typed_config.value.token_bucket".to_owned())]
    );
}

#[test]
fn an_envoy_filter_that_is_not_a_local_rate_limit_is_a_warning_and_its_file_still_loads() {
    let loaded = load(
        "apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: lua, namespace: shop}
spec:
  configPatches:
  - applyTo: HTTP_FILTER
    match: {context: SIDECAR_INBOUND}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.lua
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
          inlineCode: 'function envoy_on_request(h) end'
  - applyTo: CLUSTER
    patch:
      operation: MERGE
      value: {connect_timeout: 1s}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: shop}
spec: {}
",
    );
    assert_eq!(
        warnings(&loaded),
        [
            ("ZM2001", 11, "spec.configPatches[0].patch.value.name".to_owned()),
            ("ZM2001", 15, "spec.configPatches[1].applyTo".to_owned()),
        ]
    );
    assert!(loaded.diagnostics[0].message.contains("not supported by zmesh, not applied"));
    assert_eq!(loaded.config.authorization_policies.len(), 1);
    assert_eq!(loaded.config.rate_limits.len(), 1);
    assert!(loaded.config.rate_limits[0].filters.is_empty());
}

#[test]
fn an_outbound_rate_limit_is_a_warning_and_is_not_enforced() {
    let loaded = load(&ISTIO_DOCS_LOCAL_RATE_LIMIT.replace("SIDECAR_INBOUND", "SIDECAR_OUTBOUND"));
    assert_eq!(warnings(&loaded), [("ZM2003", 13, "spec.configPatches[0].match.context".to_owned())]);
    assert!(loaded.config.rate_limits[0].filters.is_empty());
}

#[test]
fn descriptors_are_a_warning_naming_the_field_and_the_bucket_still_applies() {
    let yaml = ISTIO_DOCS_LOCAL_RATE_LIMIT.replace(
        "              stat_prefix: http_local_rate_limiter\n",
        "              stat_prefix: http_local_rate_limiter\n              descriptors:\n              - entries: [{key: path, value: /a}]\n                token_bucket: {max_tokens: 1, fill_interval: 1s}\n",
    );
    let loaded = load(&yaml);
    assert_eq!(
        warnings(&loaded),
        [("ZM2004", 28, "spec.configPatches[0].patch.value.typed_config.value.descriptors".to_owned())]
    );
    assert_eq!(single_filter(&loaded).token_bucket.max_tokens, 4);
}

#[test]
fn an_unsupported_match_field_is_a_warning_and_the_patch_is_not_applied() {
    let yaml = ISTIO_DOCS_LOCAL_RATE_LIMIT.replace(
        "        context: SIDECAR_INBOUND\n",
        "        context: SIDECAR_INBOUND\n        proxy: {proxyVersion: '^1\\.2.*'}\n",
    );
    let loaded = load(&yaml);
    assert_eq!(warnings(&loaded), [("ZM2004", 14, "spec.configPatches[0].match.proxy".to_owned())]);
    assert!(loaded.config.rate_limits[0].filters.is_empty());
}

#[test]
fn a_rate_limit_without_filter_enabled_is_disabled_as_in_envoy_and_says_so() {
    let start = ISTIO_DOCS_LOCAL_RATE_LIMIT.find("              filter_enabled:").expect("filter_enabled");
    let end = ISTIO_DOCS_LOCAL_RATE_LIMIT.find("              filter_enforced:").expect("filter_enforced");
    let yaml = format!("{}{}", &ISTIO_DOCS_LOCAL_RATE_LIMIT[..start], &ISTIO_DOCS_LOCAL_RATE_LIMIT[end..]);
    let loaded = load(&yaml);
    assert_eq!(
        warnings(&loaded),
        [("ZM2005", 26, "spec.configPatches[0].patch.value.typed_config.value.filter_enabled".to_owned())]
    );
    assert_eq!(single_filter(&loaded).filter_enabled, Fraction::NONE);
}

#[test]
fn a_filter_envoy_would_refuse_stays_an_error() {
    let after_router = ISTIO_DOCS_LOCAL_RATE_LIMIT.replace("operation: INSERT_BEFORE", "operation: ADD");
    let too_fast = ISTIO_DOCS_LOCAL_RATE_LIMIT.replace("fill_interval: 60s", "fill_interval: 0.01s");
    let typo = ISTIO_DOCS_LOCAL_RATE_LIMIT.replace("max_tokens: 4", "max_token: 4");
    for (yaml, field) in [
        (after_router, "spec.configPatches[0].patch.operation"),
        (too_fast, "spec.configPatches[0].patch.value.typed_config.value.token_bucket.fill_interval"),
        (typo, "spec.configPatches[0].patch.value.typed_config.value.token_bucket.max_token"),
    ] {
        let loaded = load(&yaml);
        let errors: Vec<&Diagnostic> = loaded.errors().collect();
        assert!(errors.iter().any(|e| e.field == field), "{field}: {errors:#?}");
        assert!(loaded.config.rate_limits.is_empty());
    }
}

#[test]
fn target_refs_are_a_warning_that_sidecars_do_not_apply_the_policy() {
    let loaded = load(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: gw, namespace: shop}
spec:
  targetRefs:
  - {kind: Gateway, group: gateway.networking.k8s.io, name: ingress}
  action: DENY
  rules: [{to: [{operation: {paths: [/admin], ports: ['8080']}}]}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: shop}
spec:
  targetRef: {kind: Service, group: '', name: web}
  jwtRules: [{issuer: https://issuer.example}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: t, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: ingress}]
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: ef, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: ingress}]
  configPatches: []
",
    );
    assert_eq!(
        warnings(&loaded),
        [
            ("ZM2010", 6, "spec.targetRefs[0]".to_owned()),
            ("ZM2010", 14, "spec.targetRef".to_owned()),
            ("ZM2012", 17, "spec".to_owned()),
            ("ZM2010", 21, "spec.targetRefs[0]".to_owned()),
            ("ZM2010", 27, "spec.targetRefs".to_owned()),
        ]
    );
    assert!(loaded.diagnostics[0].message.contains("allow or deny nothing on any sidecar"));
}

#[test]
fn a_network_policy_is_a_warning_that_zmesh_does_not_enforce_it() {
    let loaded = load(
        "# comment
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: shop}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
",
    );
    assert_eq!(warnings(&loaded), [("ZM2011", 2, "spec".to_owned())]);
    assert_eq!(loaded.config.network_policies.len(), 1);
}

#[test]
fn a_telemetry_is_a_warning_that_it_is_not_applied() {
    let loaded = load(
        "apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: logs, namespace: istio-system}
spec:
  accessLogging: [{providers: [{name: envoy}]}]
",
    );
    assert_eq!(warnings(&loaded), [("ZM2012", 1, "spec".to_owned())]);
    assert!(only_warning(&loaded).message.contains("(accessLogging)"));
}

#[test]
fn istio_and_gateway_api_kinds_zmesh_skips_are_warnings_saying_what_happens_instead() {
    let loaded = load(
        "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: shop}
spec: {egress: [{hosts: [./*]}]}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: dr, namespace: shop}
spec: {host: web}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: r, namespace: shop}
",
    );
    assert_eq!(
        warnings(&loaded),
        [("ZM2013", 1, "kind".to_owned()), ("ZM2013", 6, "kind".to_owned()), ("ZM2013", 11, "kind".to_owned())]
    );
    assert!(loaded.diagnostics[0].message.contains("sidecar scoping is not applied"));
    // A kind unrelated to traffic stays a note.
    assert_eq!(loaded.diagnostics.iter().filter(|d| d.severity == Severity::Info).count(), 1);
}

#[test]
fn mesh_config_fields_zmesh_ignores_are_warnings_at_their_line() {
    let loaded = load(
        "apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    trustDomain: example.org
    enableAutoMtls: true
    accessLogFile: /dev/stdout
    defaultConfig:
      holdApplicationUntilProxyStarts: true
",
    );
    assert_eq!(
        warnings(&loaded),
        [
            ("ZM2014", 7, "data.mesh.enableAutoMtls".to_owned()),
            ("ZM2014", 8, "data.mesh.accessLogFile".to_owned()),
            ("ZM2014", 10, "data.mesh.defaultConfig.holdApplicationUntilProxyStarts".to_owned()),
        ]
    );
    assert_eq!(loaded.config.mesh.trust_domain.to_string(), "example.org");
}
