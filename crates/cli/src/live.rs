//! The configuration in force for a running workload: read from the control plane's status API
//! (`/api/v1/config/NAMESPACE/NAME`, exactly what that workload's proxy is pushed) or from one
//! proxy's admin port (`/config_documents`, exactly what that proxy holds and enforces, readable
//! while the control plane is down), and compiled with the proxy's own code
//! (`zmesh_proxy::subscription::build`), so the live troubleshooting commands answer with the
//! proxy's decisions, not a re-implementation of them.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::Context as _;
use serde_json::Value;
use zmesh_proxy::config::ProxyConfig;
use zmesh_xds::config::Resource;

use crate::UsageError;

/// Where a workload's configuration is read.
#[derive(Debug, Clone)]
pub(crate) enum ConfigSource {
    /// The control plane's status API: what it pushes to the workload's proxies.
    ControlPlane(String),
    /// One proxy's admin port: what that proxy enforces.
    Admin(SocketAddr),
}

impl ConfigSource {
    /// `--admin ADDR` when given, else the control plane's status API.
    pub fn new(control_plane: &str, admin: Option<SocketAddr>) -> Self {
        admin.map_or_else(|| ConfigSource::ControlPlane(control_plane.to_owned()), ConfigSource::Admin)
    }
}

/// One workload's configuration as its proxy has it.
pub(crate) struct LiveWorkload {
    /// Where it was read.
    pub source: ConfigSource,
    /// `namespace/name`.
    pub workload: String,
    /// The version the control plane pushes (a content digest).
    pub version: String,
    pub config: ProxyConfig,
    /// The workload's proxies as `/api/v1/proxies` shows them.
    pub proxies: Vec<Value>,
    /// The pushed resources, by key.
    pub resources: BTreeMap<String, Resource>,
    /// The pushed resources as loaded (Services, ServiceEntries and policies as written), for
    /// what the compiled form does not keep.
    pub loaded: zmesh_config::Config,
    /// Every AuthorizationPolicy, PeerAuthentication and RequestAuthentication of the
    /// workload's namespace and the root namespace, whether pushed to it or not, as loaded; and
    /// the keys of those that were pushed.
    pub namespace_policies: zmesh_config::Config,
    pub pushed_policies: std::collections::BTreeSet<String>,
    /// Set when `namespace_policies` holds only the pushed policies (read from a proxy), saying
    /// what cannot be told without the control plane.
    pub namespace_policies_note: Option<String>,
}

impl LiveWorkload {
    /// Which source answered, for every command's JSON (`configSource`).
    pub fn source_json(&self) -> Value {
        match &self.source {
            ConfigSource::ControlPlane(url) => serde_json::json!({
                "kind": "control-plane",
                "url": format!("{url}/api/v1/config/{}", self.workload),
                "enforced": false,
                "text": format!("the control plane at {url}: the configuration it pushes to {} (version {})", self.workload, self.version),
            }),
            ConfigSource::Admin(admin) => serde_json::json!({
                "kind": "admin",
                "url": format!("http://{admin}/config_documents"),
                "enforced": true,
                "text": format!("the proxy at {admin} (admin port): exactly the configuration it enforces, version {}", self.version),
            }),
        }
    }

    /// Why an answer may not be what the proxy enforces right now: no proxy connected, or one
    /// that has not acknowledged the version the answer was computed from. Never for an answer
    /// read from a proxy: that is its configuration in force.
    pub fn sync_note(&self) -> Option<String> {
        if matches!(self.source, ConfigSource::Admin(_)) {
            return None;
        }
        if self.proxies.iter().all(|p| p["connected"] != true) {
            return Some(format!(
                "no proxy of {} is connected: the answer is the configuration it would get",
                self.workload
            ));
        }
        let behind: Vec<String> = self
            .proxies
            .iter()
            .filter(|p| p["connected"] == true && p["versionAcked"].as_str() != Some(self.version.as_str()))
            .map(|p| format!("{} ({})", p["proxyId"].as_str().unwrap_or("?"), p["state"].as_str().unwrap_or("?")))
            .collect();
        (!behind.is_empty()).then(|| {
            format!(
                "proxies not yet at version {}: {}; they may still enforce an older configuration",
                self.version,
                behind.join(", ")
            )
        })
    }
}

/// Fetch and compile the configuration of `workload` (`NAMESPACE/NAME`) from the control plane.
pub(crate) async fn workload_config(status_api: &str, workload: &str) -> anyhow::Result<LiveWorkload> {
    workload_config_from(&ConfigSource::ControlPlane(status_api.to_owned()), workload).await
}

/// Fetch and compile the configuration of `workload` (`NAMESPACE/NAME`) from `source`.
pub(crate) async fn workload_config_from(source: &ConfigSource, workload: &str) -> anyhow::Result<LiveWorkload> {
    let (namespace, name) = workload
        .split_once('/')
        .filter(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains('/'))
        .ok_or_else(|| UsageError(format!("`{workload}`: name a workload as NAMESPACE/NAME")))?;
    let body = match source {
        ConfigSource::ControlPlane(status_api) => {
            crate::control::get_json(status_api, &format!("/api/v1/config/{namespace}/{name}")).await.with_context(
                || format!("the configuration of {workload} (is it in `zmesh proxy-status` / /api/v1/workloads?)"),
            )?
        }
        ConfigSource::Admin(admin) => {
            let body = admin_documents(*admin).await?;
            // One admin port serves one workload: answering for another would be a guess.
            if body["workload"].as_str() != Some(workload) {
                return Err(UsageError(format!(
                    "the proxy at {admin} serves {}, not {workload}: give the admin address of {workload}'s proxy",
                    body["workload"].as_str().unwrap_or("an unnamed workload")
                ))
                .into());
            }
            body
        }
    };
    let version = body["version"].as_str().unwrap_or_default().to_owned();
    let mut resources = BTreeMap::new();
    for item in body["resources"].as_array().into_iter().flatten() {
        let resource = Resource {
            key: item["key"].as_str().unwrap_or_default().to_owned(),
            version: item["version"].as_str().unwrap_or_default().to_owned(),
            document: item["document"].as_str().unwrap_or_default().to_owned(),
            order: item["order"].as_u64().unwrap_or_default(),
        };
        resources.insert(resource.key.clone(), resource);
    }
    let config = zmesh_proxy::subscription::build(&resources, &version, namespace, name)
        .map_err(|error| anyhow::anyhow!("the configuration of {workload} does not compile: {error}"))?;
    let proxies = body["proxies"].as_array().cloned().unwrap_or_default();
    let loaded = load(resources.values().map(|r| (r.key.as_str(), r.order, r.document.as_str())))
        .map_err(|error| anyhow::anyhow!("the configuration of {workload} does not load: {error}"))?;
    let root = body["rootNamespace"].as_str().unwrap_or_else(|| config.policies.root_namespace()).to_owned();
    let (policies, namespace_policies_note): (Vec<Value>, _) = match (source, body["namespacePolicies"].as_array()) {
        (_, Some(policies)) => (policies.clone(), None),
        // Without them `describe` would report no policy that misses the workload, as if none did.
        (ConfigSource::ControlPlane(status_api), None) => {
            return Err(anyhow::anyhow!(
                "{status_api} does not list the namespace's policies (`namespacePolicies`); use a control plane of this zmesh version"
            ));
        }
        // A proxy holds only the policies pushed to it; the others of its namespace are known
        // to the control plane alone, so they are named as unknown rather than as absent.
        (ConfigSource::Admin(admin), None) => {
            let scoped = |key: &str| {
                let mut parts = key.splitn(3, '/');
                let kind = parts.next().unwrap_or_default();
                let policy_namespace = parts.next().unwrap_or_default();
                matches!(kind, "AuthorizationPolicy" | "PeerAuthentication" | "RequestAuthentication")
                    && (policy_namespace == namespace || policy_namespace == root)
            };
            let pushed = resources
                .values()
                .filter(|r| scoped(&r.key))
                .map(|r| serde_json::json!({"key": r.key, "order": r.order, "document": r.document, "pushed": true}))
                .collect();
            let note = format!(
                "read from the proxy at {admin}, which holds only the policies pushed to it: policies of {namespace} \
                 or {root} that do not apply to {workload} are known only to the control plane (ask it without --admin)"
            );
            (pushed, Some(note))
        }
    };
    let pushed_policies =
        policies.iter().filter(|p| p["pushed"] == true).filter_map(|p| p["key"].as_str().map(str::to_owned)).collect();
    // The root namespace comes with the policies, so their scope is read as the mesh's.
    let mesh = format!("{{\"rootNamespace\": {}}}", Value::from(root.as_str()));
    let namespace_policies = load(std::iter::once(("MeshConfig", 0, mesh.as_str())).chain(policies.iter().map(|p| {
        (
            p["key"].as_str().unwrap_or_default(),
            p["order"].as_u64().unwrap_or_default(),
            p["document"].as_str().unwrap_or_default(),
        )
    })))
    .map_err(|error| anyhow::anyhow!("the policies of {namespace} do not load: {error}"))?;
    Ok(LiveWorkload {
        source: source.clone(),
        workload: workload.to_owned(),
        version,
        config,
        proxies,
        resources,
        loaded,
        namespace_policies,
        pushed_policies,
        namespace_policies_note,
    })
}

/// `GET /config_documents` from a proxy's admin port. A refusal carries the proxy's own
/// explanation (a proxy run from local files keeps no documents, and says where they are).
async fn admin_documents(admin: SocketAddr) -> anyhow::Result<Value> {
    let url = format!("http://{admin}/config_documents");
    let unreachable = || {
        format!(
            "cannot reach the proxy's admin port at {admin}: it listens on loopback only (port 15000 on the \
             workload's address when that is a loopback address, else on 127.0.0.1), so run this on the \
             proxy's host"
        )
    };
    let (status, body) = crate::control::http_get(&admin.to_string(), "/config_documents", unreachable).await?;
    if !status.is_success() {
        let why = body.as_ref().and_then(|b| b["error"].as_str()).unwrap_or("no explanation given");
        anyhow::bail!("{url}: {status}: {why}");
    }
    body.ok_or_else(|| anyhow::anyhow!("{url} did not answer JSON; is {admin} a zmesh proxy's admin port?"))
}

/// Load pushed documents (`key`, load order, document) in the control plane's load order, as
/// the proxy does.
fn load<'a>(documents: impl Iterator<Item = (&'a str, u64, &'a str)>) -> Result<zmesh_config::Config, String> {
    let mut ordered: Vec<_> = documents.collect();
    ordered.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(b.0)));
    let mut loader = zmesh_config::Loader::new();
    for (key, _, document) in ordered {
        let kind =
            if key == "MeshConfig" { zmesh_config::FileKind::MeshConfig } else { zmesh_config::FileKind::Resources };
        loader.add_str(Some(format!("control-plane:{key}").into()), document, kind);
    }
    let loaded = loader.finish();
    if loaded.has_errors() {
        return Err(loaded.errors().map(ToString::to_string).collect::<Vec<_>>().join("\n"));
    }
    Ok(loaded.config)
}
