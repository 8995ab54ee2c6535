//! The control plane says, in its status API, what it reads but does not enforce: every warning
//! of the load (codes in docs/diagnostic-codes.md) is listed with the resource it is about — or
//! with its file, for a kind zmesh skips — in the text `zmesh validate` prints, and a warning
//! never refuses a change.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use zmesh_config::{Diagnostic, FileKind, Loaded, Loader, Severity};
use zmesh_control::plane::{ControlPlane, Options};
use zmesh_control::store::{ResourceState, ResourceStatus, StoreState, WatchOptions};
use zmesh_testkit::TempDir;

/// Bound for a change to reach the status API; generous because other builds and tests may load
/// the machine.
const SETTLE: Duration = Duration::from_secs(10);

const MESH: &str = "rootNamespace: istio-system\nenableTracing: true\n";

const ALLOW_WEB: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-web, namespace: shop}
spec:
  rules:
  - from: [{source: {namespaces: [shop]}}]
";

/// A Sidecar (skipped: ZM2013, line 1) and a NetworkPolicy (not enforced: ZM2011, line 6).
const SIDECAR_AND_NETWORK_POLICY: &str = "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: shop}
spec: {egress: [{hosts: [./*]}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api, namespace: shop}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
";

/// An EnvoyFilter of two patches, neither a local rate limit (ZM2001 at lines 11 and 15).
const LUA_FILTER: &str = "apiVersion: networking.istio.io/v1alpha3
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
";

fn bad_policy(name: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{action: MAYBE}}\n"
    )
}

// --- over the wire ------------------------------------------------------------------------------

struct Plane {
    admin: SocketAddr,
    shutdown: CancellationToken,
    /// Its tasks stop when it is dropped.
    _plane: ControlPlane,
    _ca: TempDir,
}

impl Drop for Plane {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(config: &Path) -> Plane {
    let ca = TempDir::new("status-warnings-ca");
    let shutdown = CancellationToken::new();
    let options = Options {
        config: config.to_path_buf(),
        ca_dir: ca.path().join("ca"),
        grpc: "127.0.0.1:0".parse().expect("addr"),
        admin: "127.0.0.1:0".parse().expect("addr"),
        watch: WatchOptions::default(),
    };
    let plane = ControlPlane::start(options, shutdown.clone()).await.expect("the control plane starts");
    Plane { admin: plane.admin, shutdown, _plane: plane, _ca: ca }
}

/// `GET /api/v1/resources` over loopback.
async fn resources(admin: SocketAddr) -> Value {
    let response =
        tokio::task::spawn_blocking(move || zmesh_testkit::envoy::http_request(admin, "GET", "/api/v1/resources", &[]))
            .await
            .expect("the request task");
    assert_eq!(response.status, 200, "{}", response.body);
    serde_json::from_str(&response.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", response.body))
}

/// The status API's document once its generation is `generation`, polled every 50 ms.
async fn resources_at(admin: SocketAddr, generation: u64) -> Value {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let body = resources(admin).await;
        if body["generation"] == generation {
            return body;
        }
        assert!(tokio::time::Instant::now() < deadline, "generation {generation} never came: {body:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn entry<'v>(body: &'v Value, kind: &str, name: &str) -> &'v Value {
    body["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["kind"] == kind && r["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {body:#}"))
}

/// (code, file, line, field) of each warning of a status entry.
fn listed(entry: &Value) -> Vec<(String, String, u64, String)> {
    entry["warnings"]
        .as_array()
        .unwrap_or_else(|| panic!("no warnings list: {entry:#}"))
        .iter()
        .map(|w| {
            let text = |key: &str| w[key].as_str().unwrap_or_else(|| panic!("no {key}: {w:#}")).to_owned();
            let line = w["line"].as_u64().unwrap_or_else(|| panic!("no line: {w:#}"));
            assert!(
                text("text").starts_with(&format!("{}:{line}:", text("file"))),
                "the text starts with file:line: {w:#}"
            );
            assert!(text("at").starts_with(&format!("{}:{line}:", text("file"))), "{w:#}");
            assert!(!text("message").is_empty() && w["hint"].is_string(), "{w:#}");
            (text("code"), text("file"), line, text("field"))
        })
        .collect()
}

fn warning_texts(loaded: &Loaded) -> Vec<String> {
    let mut texts: Vec<String> =
        loaded.diagnostics.iter().filter(|d| d.severity == Severity::Warning).map(ToString::to_string).collect();
    texts.sort();
    texts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_api_lists_each_warning_with_its_code_and_file_line_and_the_change_is_accepted() {
    let dir = TempDir::new("status-warnings-api");
    let mesh = dir.write("mesh.yaml", MESH).display().to_string();
    dir.write("policy.yaml", ALLOW_WEB);
    let plane = start(dir.path()).await;

    // A field of MeshConfig that zmesh ignores is listed with the MeshConfig.
    let first = resources_at(plane.admin, 1).await;
    let mesh_config = entry(&first, "MeshConfig", "");
    assert_eq!(mesh_config["status"], "accepted");
    assert_eq!(listed(mesh_config), [("ZM2014".to_owned(), mesh.clone(), 2, "enableTracing".to_owned())]);
    assert_eq!(listed(entry(&first, "AuthorizationPolicy", "allow-web")), []);

    // One change brings a Sidecar, a NetworkPolicy and an EnvoyFilter that is not a rate limit.
    let traffic = dir.write("traffic.yaml", SIDECAR_AND_NETWORK_POLICY).display().to_string();
    let lua = dir.write("lua.yaml", LUA_FILTER).display().to_string();
    let body = resources_at(plane.admin, 2).await;

    assert_eq!(body["rejection"], Value::Null, "warnings refuse nothing: {body:#}");
    let statuses: Vec<(&str, &str, &str)> = body["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| {
            (r["kind"].as_str().unwrap_or(""), r["name"].as_str().unwrap_or(""), r["status"].as_str().unwrap_or(""))
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("EnvoyFilter", "lua", "accepted"),
            ("MeshConfig", "", "accepted"),
            ("AuthorizationPolicy", "allow-web", "accepted"),
            ("File", traffic.as_str(), "accepted"),
            ("NetworkPolicy", "api", "accepted"),
        ],
        "{body:#}"
    );
    let field = |f: &str| f.to_owned();
    assert_eq!(
        listed(entry(&body, "EnvoyFilter", "lua")),
        [
            ("ZM2001".to_owned(), lua.clone(), 11, field("spec.configPatches[0].patch.value.name")),
            ("ZM2001".to_owned(), lua.clone(), 15, field("spec.configPatches[1].applyTo")),
        ]
    );
    assert_eq!(
        listed(entry(&body, "NetworkPolicy", "api")),
        [("ZM2011".to_owned(), traffic.clone(), 6, field("spec"))]
    );
    // The Sidecar is no resource zmesh keeps: its warning is its file's.
    let file = entry(&body, "File", &traffic);
    assert_eq!((file["file"].as_str(), file["line"].as_u64()), (Some(traffic.as_str()), Some(1)));
    assert_eq!(listed(file), [("ZM2013".to_owned(), traffic.clone(), 1, field("kind"))]);
    assert!(file["warnings"][0]["message"].as_str().is_some_and(|m| m.contains("Sidecar")), "{file:#}");
    assert_eq!(body["warningCount"], 5, "{body:#}");

    // Each text is what `zmesh validate` prints for the same files, and none is missing.
    let mut served: Vec<String> = body["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .flat_map(|r| r["warnings"].as_array().cloned().unwrap_or_default())
        .map(|w| w["text"].as_str().unwrap_or_default().to_owned())
        .collect();
    served.sort();
    assert_eq!(served, warning_texts(&zmesh_config::load_paths(&[dir.path().to_path_buf()], None)));
}

// --- the status, as the store builds it ------------------------------------------------------------

/// One load of named files, as the store's tree gives it.
fn load(files: &[(&str, &str)]) -> Loaded {
    let mut loader = Loader::new();
    for (name, text) in files {
        loader.add_str(Some((*name).into()), text, FileKind::Resources);
    }
    loader.finish()
}

fn find<'s>(state: &'s StoreState, kind: &str, name: &str) -> &'s ResourceStatus {
    state
        .resources
        .iter()
        .find(|r| r.kind == kind && r.name == name)
        .unwrap_or_else(|| panic!("no status for {kind} {name}: {:#?}", state.resources))
}

/// (code, line) of each warning.
fn codes(status: &ResourceStatus) -> Vec<(&'static str, usize)> {
    status.warnings.iter().map(|w: &Diagnostic| (w.code.unwrap_or("none"), w.origin.pos.line)).collect()
}

#[test]
fn a_refused_change_shows_the_warnings_of_what_the_files_hold_and_of_what_it_would_remove() {
    let in_force = load(&[("a.yaml", SIDECAR_AND_NETWORK_POLICY), ("b.yaml", LUA_FILTER)]);
    assert!(!in_force.has_errors(), "{:#?}", in_force.diagnostics);
    let state = StoreState::accepted(4, SystemTime::UNIX_EPOCH, Arc::new(in_force));

    // a.yaml keeps its Sidecar and NetworkPolicy and gains a bad policy; b.yaml is removed;
    // c.yaml brings another Sidecar.
    let a = format!("{SIDECAR_AND_NETWORK_POLICY}---\n{}", bad_policy("freeze"));
    let sidecar_only = SIDECAR_AND_NETWORK_POLICY.split("---").next().unwrap_or_default();
    let attempt = load(&[("a.yaml", &a), ("c.yaml", sidecar_only)]);
    assert!(attempt.has_errors());
    let refused = state.refused(SystemTime::UNIX_EPOCH, &attempt);

    let network_policy = find(&refused, "NetworkPolicy", "api");
    assert_eq!(network_policy.state, ResourceState::Accepted);
    assert_eq!(codes(network_policy), [("ZM2011", 6)]);
    let removed = find(&refused, "EnvoyFilter", "lua");
    assert!(
        matches!(&removed.state, ResourceState::Pending { because } if because.contains("removed")),
        "{removed:#?}"
    );
    assert_eq!(codes(removed), [("ZM2001", 11), ("ZM2001", 15)], "the warnings of what is still in force");
    assert!(matches!(find(&refused, "AuthorizationPolicy", "freeze").state, ResourceState::Rejected { .. }));
    assert!(find(&refused, "AuthorizationPolicy", "freeze").warnings.is_empty());

    // a.yaml's Sidecar is what is in force; c.yaml's comes with the refused change.
    let kept = find(&refused, "File", "a.yaml");
    assert_eq!((kept.state.clone(), codes(kept)), (ResourceState::Accepted, vec![("ZM2013", 1)]));
    let new = find(&refused, "File", "c.yaml");
    assert!(matches!(&new.state, ResourceState::Pending { because } if because.contains("refused")), "{new:#?}");
    assert_eq!(codes(new), [("ZM2013", 1)]);
    // The generation in force is unchanged by any of it.
    assert_eq!(refused.generation, 4);
}

#[test]
fn a_file_with_an_error_of_no_resource_carries_the_warnings_of_no_resource_too() {
    let state = StoreState::accepted(1, SystemTime::UNIX_EPOCH, Arc::new(load(&[("a.yaml", ALLOW_WEB)])));
    let sidecar = SIDECAR_AND_NETWORK_POLICY.split("---").next().unwrap_or_default();
    let attempt = load(&[("a.yaml", ALLOW_WEB), ("b.yaml", &format!("{sidecar}---\nfoo: bar\n"))]);
    let refused = state.refused(SystemTime::UNIX_EPOCH, &attempt);

    let files: Vec<&ResourceStatus> = refused.resources.iter().filter(|r| r.kind == "File").collect();
    assert_eq!(files.len(), 1, "one status per file: {files:#?}");
    assert!(
        matches!(&files[0].state, ResourceState::Rejected { reasons } if reasons[0].contains("apiVersion or kind"))
    );
    assert_eq!(codes(files[0]), [("ZM2013", 1)]);
    assert_eq!(find(&refused, "AuthorizationPolicy", "allow-web").state, ResourceState::Accepted);
}

#[test]
fn a_document_repeated_in_one_file_gets_only_the_warnings_within_it() {
    let network_policy = SIDECAR_AND_NETWORK_POLICY.split("---\n").nth(1).unwrap_or_default();
    let loaded = load(&[("a.yaml", &format!("{network_policy}---\n{network_policy}"))]);
    let state = StoreState::accepted(1, SystemTime::UNIX_EPOCH, Arc::new(loaded));
    let found: Vec<Vec<(&str, usize)>> =
        state.resources.iter().filter(|r| r.kind == "NetworkPolicy").map(codes).collect();
    assert_eq!(found, [vec![("ZM2011", 1)], vec![("ZM2011", 8)]], "{:#?}", state.resources);
}

#[test]
fn a_configuration_without_warnings_lists_none_and_no_file_entries() {
    let state = StoreState::accepted(1, SystemTime::UNIX_EPOCH, Arc::new(load(&[("a.yaml", ALLOW_WEB)])));
    assert_eq!(state.resources.len(), 1);
    assert!(state.resources[0].warnings.is_empty());
    let json = state.to_json();
    assert_eq!(json["warningCount"], 0);
    assert_eq!(json["resources"][0]["warnings"], serde_json::json!([]));
}
