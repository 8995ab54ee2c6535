//! Test-only helpers: the conformance cases and fixtures under `testdata/`, loaded into typed
//! values. The cases are YAML; they are read with zmesh's own YAML reader and converted through
//! JSON so each case type is a plain serde struct.

use std::path::PathBuf;

pub mod e2e;
pub mod envoy;
pub mod jwt;
pub mod opa_envoy;

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// `testdata/` at the workspace root.
pub fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata")
}

/// Read a YAML list of cases from `testdata/<relative>`. Panics (it is test code) with the
/// file and case named when the data is malformed.
pub fn load_cases<T: DeserializeOwned>(relative: &str) -> Vec<T> {
    let path = testdata().join(relative);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let documents = zmesh_config::yaml::parse_stream(&text, &zmesh_config::yaml::Limits::default())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let root = documents.into_iter().find_map(|d| d.root).unwrap_or_else(|| panic!("{} is empty", path.display()));
    let serde_json::Value::Array(items) = root.to_json() else { panic!("{} is not a list of cases", path.display()) };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let name = item.get("name").and_then(|n| n.as_str()).unwrap_or("?").to_owned();
            serde_json::from_value(item).unwrap_or_else(|e| panic!("{} case #{i} ({name}): {e}", path.display()))
        })
        .collect()
}

/// A case of `conformance/authz-cases.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthzCase {
    pub name: String,
    pub why: String,
    pub policies: String,
    /// Passed as JSON to the engine's input types (and to `zmesh authz check`).
    pub workload: serde_json::Value,
    pub request: serde_json::Value,
    #[serde(default)]
    pub mesh: Option<serde_json::Value>,
    pub expect: String,
    #[serde(default)]
    pub expect_status: Option<u16>,
}

/// A case of `conformance/peerauth-cases.yaml`.
#[derive(Debug, Clone, Deserialize)]
pub struct PeerAuthCase {
    pub name: String,
    pub why: String,
    pub policies: String,
    pub workload: serde_json::Value,
    #[serde(default)]
    pub mesh: Option<serde_json::Value>,
    pub port: u16,
    pub expect: PeerAuthExpect,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PeerAuthExpect {
    pub mode: String,
    pub accepts: Accepts,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Accepts {
    pub plaintext: bool,
    #[serde(default)]
    pub mtls: Option<bool>,
}

/// A case of `conformance/validation-cases.yaml`.
#[derive(Debug, Clone, Deserialize)]
pub struct ValidationCase {
    pub name: String,
    pub valid: bool,
    pub reason: String,
    pub document: String,
}

/// A case of `conformance/http-attack-cases.yaml`.
#[derive(Debug, Clone, Deserialize)]
pub struct HttpAttackCase {
    pub name: String,
    pub listener: String,
    /// The request bytes: each character of the decoded string is one byte (latin-1).
    pub raw: String,
    pub envoy_status: serde_json::Value,
    pub backend_saw_path: Option<String>,
    pub expect: String,
    #[serde(default)]
    pub note: String,
}

impl HttpAttackCase {
    /// The exact bytes sent on the wire.
    pub fn bytes(&self) -> Vec<u8> {
        self.raw
            .chars()
            .map(|c| {
                u8::try_from(u32::from(c))
                    .unwrap_or_else(|_| panic!("case {}: character {c:?} is not a byte", self.name))
            })
            .collect()
    }
}

/// The policies of the attack corpus's three inbound listeners (`a`, `b`, `c`), as Istio YAML
/// for a workload `default` with labels `app: app` (see the corpus header).
pub fn attack_listener_policies(listener: &str) -> &'static str {
    match listener {
        "a" => {
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a, namespace: default}
spec:
  selector: {matchLabels: {app: app}}
  rules: [{to: [{operation: {methods: [\"POST\"], paths: [\"/api/v2/payments/process\", \"/api/v2/payments/authorize\"]}}]}]
"
        }
        "b" => {
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec: {action: DENY, rules: [{to: [{operation: {paths: [\"/admin*\"]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: b-allow, namespace: default}
spec: {rules: [{}]}
"
        }
        "c" => {
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-sqlmap, namespace: default}
spec:
  action: DENY
  rules: [{when: [{key: \"request.headers[user-agent]\", values: [\"*sqlmap*\"]}]}]
"
        }
        other => panic!("unknown listener {other}"),
    }
}

/// Turn a case's `mesh:` object into MeshConfig YAML text (JSON is valid YAML).
pub fn mesh_yaml(mesh: &Option<serde_json::Value>) -> Option<String> {
    mesh.as_ref().map(serde_json::Value::to_string)
}

/// Load a case's policies (and mesh) into a configuration, failing the test on any error.
pub fn load_config(name: &str, policies: &str, mesh: &Option<serde_json::Value>) -> zmesh_config::Config {
    let mut loader = zmesh_config::Loader::new();
    if let Some(mesh) = mesh_yaml(mesh) {
        loader.add_str(Some("mesh.yaml".into()), &mesh, zmesh_config::FileKind::MeshConfig);
    }
    loader.add_str(Some(format!("{name}.yaml").into()), policies, zmesh_config::FileKind::Resources);
    let loaded = loader.finish();
    let errors: Vec<String> = loaded.errors().map(ToString::to_string).collect();
    assert!(errors.is_empty(), "case {name}: the policies do not load:\n{}", errors.join("\n"));
    loaded.config
}

/// A directory under the system temp dir, removed when dropped.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let unique = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("zmesh-test-{label}-{}-{unique}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Write a file below the directory and return its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path.join(name);
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
