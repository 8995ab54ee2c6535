//! Diagnostics name the file, line, column, object and field, and say what to do.

use zmesh_config::{FileKind, Loader, Severity, load_str};

fn messages(yaml: &str) -> Vec<String> {
    let mut loader = Loader::new();
    loader.add_str(Some("policy.yaml".into()), yaml, FileKind::Resources);
    loader.finish().diagnostics.iter().map(ToString::to_string).collect()
}

#[test]
fn an_unknown_field_suggests_the_nearest_known_one() {
    let found = messages(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: foo}
spec:
  rules:
  - from:
    - source:
        principal: [\"cluster.local/ns/foo/sa/a\"]
",
    );
    assert_eq!(
        found,
        [
            "policy.yaml:8:9: error[IST0106]: AuthorizationPolicy foo/p: spec.rules[0].from[0].source.principal: unknown field `principal`; did you mean `principals`?"
        ]
    );
}

#[test]
fn an_unquoted_port_is_refused_with_the_fix() {
    let found = messages(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: foo}
spec:
  rules:
  - to:
    - operation:
        ports: [8080, \"9090\"]
",
    );
    assert_eq!(
        found,
        [
            "policy.yaml:8:17: error[IST0106]: AuthorizationPolicy foo/p: spec.rules[0].to[0].operation.ports[0]: expected a string, found an integer; quote it: \"8080\""
        ]
    );
}

#[test]
fn every_problem_in_a_document_is_reported_at_once() {
    let found = messages(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: foo}
spec:
  action: DENY
  rules:
  - to:
    - operation:
        ports: [\"80-90\"]
    when:
    - key: source.user
      values: [\"x\"]
    - key: source.ip
      values: [\"10.0.0.0/40\"]
",
    );
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(found[0].contains("ports[0]: `80-90` is not a port number"));
    assert!(found[1].contains("when[0].key: unknown attribute `source.user`"));
    assert!(found[2].contains("`10.0.0.0/40` is not a valid CIDR block"));
}

#[test]
fn a_bad_document_is_dropped_and_the_others_load() {
    let loaded = load_str(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: foo}
spec: {action: DENY}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: good, namespace: foo}
spec: {}
",
    );
    assert!(loaded.has_errors());
    let names: Vec<&str> = loaded.config.authorization_policies.iter().map(|p| p.meta.name.as_str()).collect();
    assert_eq!(names, ["good"]);
}

#[test]
fn a_yaml_syntax_error_loads_nothing_from_the_file() {
    let loaded = load_str(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: foo\n---\napiVersion: v1\n",
    );
    assert!(loaded.has_errors());
    assert!(loaded.config.authorization_policies.is_empty());
    assert!(loaded.diagnostics[0].message.starts_with("YAML syntax error"), "{}", loaded.diagnostics[0]);
}

#[test]
fn an_unsupported_version_of_a_known_group_is_an_error() {
    let found =
        messages("apiVersion: security.istio.io/v2\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: foo}\n");
    assert_eq!(
        found,
        [
            "policy.yaml:1:13: error[IST0106]: AuthorizationPolicy foo/a: apiVersion: security.istio.io/v2 is not a supported version of security.istio.io; use security.istio.io/v1"
        ]
    );
}

#[test]
fn kinds_zmesh_does_not_use_are_skipped_with_a_note_or_a_warning_for_istio_kinds() {
    let loaded = load_str(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs, namespace: foo}\nspec: {hosts: [a]}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: s}\n",
    );
    assert!(!loaded.has_errors());
    let found: Vec<(Severity, Option<&str>, &str)> =
        loaded.diagnostics.iter().map(|d| (d.severity, d.code, d.message.as_str())).collect();
    assert_eq!(
        found,
        [
            (
                Severity::Warning,
                Some("ZM2013"),
                "networking.istio.io/v1 VirtualService is not supported by zmesh; routing rules are not applied: requests go to the host they address, without rewrites, retries, timeouts, fault injection or traffic splits"
            ),
            (Severity::Info, Some("ZM0001"), "v1 Secret is not used by zmesh; skipped"),
        ]
    );
}

#[test]
fn a_document_without_kind_is_an_error() {
    let found = messages("metadata: {name: a}\n");
    assert_eq!(
        found,
        [
            "policy.yaml:1:1: error[IST0106]: kind: the document has no apiVersion or kind; start it with apiVersion and kind, as for kubectl apply"
        ]
    );
}

#[test]
fn mesh_config_is_read_from_the_istio_configmap_with_file_lines() {
    let loaded = load_str(
        "apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    rootNamespace: mesh-root
    trustDomain: example.org
    trustDomainAliases: [old.example.org]
    pathNormalization: {normalization: MERGE_SLASHES}
    unknownKnob: 1
",
    );
    let errors: Vec<String> = loaded.errors().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        [
            "<input>:10:5: error[IST0106]: MeshConfig: data.mesh.unknownKnob: unknown field `unknownKnob`; known fields here: rootNamespace, trustDomain, trustDomainAliases, extensionProviders, pathNormalization, outboundTrafficPolicy, defaultConfig, accessLogFile, accessLogEncoding, accessLogFormat, enableTracing, enableAutoMtls, defaultProviders, connectTimeout, protocolDetectionTimeout, ingressClass, ingressService, ingressControllerMode, ingressSelector, enablePrometheusMerge, discoverySelectors, localityLbSetting, dnsRefreshRate, h2UpgradePolicy, inboundClusterStatName, outboundClusterStatName, certificates, caCertificates, serviceSettings, defaultServiceExportTo, defaultVirtualServiceExportTo, defaultDestinationRuleExportTo, meshMTLS, tlsDefaults, verifyCertificateAtClient, enableEnvoyAccessLogService, tcpKeepalive, thriftConfig, proxyListenPort, proxyInboundListenPort, proxyHttpPort, rootNamespaceOverride, configSources, meshNetworks, extensionProvidersOverride"
        ]
    );
}

#[test]
fn mesh_config_from_istio_configmap_sets_the_mesh() {
    let loaded = load_str(
        "apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    rootNamespace: mesh-root
    trustDomain: example.org
    pathNormalization: {normalization: MERGE_SLASHES}
",
    );
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    assert_eq!(loaded.config.mesh.root_namespace, "mesh-root");
    assert_eq!(loaded.config.mesh.trust_domain.as_str(), "example.org");
    assert_eq!(loaded.config.mesh.path_normalization, zmesh_config::PathNormalization::MergeSlashes);
}

#[test]
fn unknown_top_level_fields_are_errors_for_the_kinds_zmesh_reads() {
    let found = messages(
        "apiVersion: v1\nkind: Pod\nmetdata: {name: a}\nmetadata: {name: b}\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: foo}\ndata: {}\n",
    );
    assert_eq!(
        found,
        [
            "policy.yaml:3:1: error[IST0106]: Pod default/b: metdata: unknown field `metdata`; did you mean `metadata`?",
            "policy.yaml:9:1: error[IST0106]: PeerAuthentication foo/p: data: unknown field `data`; known fields here: apiVersion, kind, metadata, spec, status",
        ]
    );
}

#[test]
fn a_networking_workload_selector_takes_labels_not_match_labels() {
    let entry = |selector: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: payments, namespace: shop}}
spec:
  hosts: [payments.internal]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  workloadSelector: {{{selector}: {{app: payments}}}}
"
        )
    };
    let loaded = load_str(&entry("labels"));
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    let selector = loaded.config.service_entries[0].workload_selector.as_ref().expect("selector");
    assert_eq!(selector.match_labels.get("app").map(String::as_str), Some("payments"));
    let found = messages(&entry("matchLabels"));
    assert!(
        found.iter().any(|m| m.contains("spec.workloadSelector.matchLabels: unknown field `matchLabels`")),
        "{found:?}"
    );
}
