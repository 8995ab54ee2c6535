//! The configuration in force for a running workload: read from the control plane's status API
//! (`/api/v1/config/NAMESPACE/NAME`, exactly what that workload's proxy is pushed) and compiled
//! with the proxy's own code (`zmesh_proxy::subscription::build`), so the live troubleshooting
//! commands answer with the proxy's decisions, not a re-implementation of them.

use std::collections::BTreeMap;

use anyhow::Context as _;
use serde_json::Value;
use zmesh_proxy::config::ProxyConfig;
use zmesh_xds::config::Resource;

use crate::UsageError;

/// One workload's configuration as its proxy has it.
pub(crate) struct LiveWorkload {
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
}

impl LiveWorkload {
    /// Why an answer may not be what the proxy enforces right now: no proxy connected, or one
    /// that has not acknowledged the version the answer was computed from.
    pub fn sync_note(&self) -> Option<String> {
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

/// Fetch and compile the configuration of `workload` (`NAMESPACE/NAME`).
pub(crate) async fn workload_config(status_api: &str, workload: &str) -> anyhow::Result<LiveWorkload> {
    let (namespace, name) = workload
        .split_once('/')
        .filter(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains('/'))
        .ok_or_else(|| UsageError(format!("`{workload}`: name a workload as NAMESPACE/NAME")))?;
    let body = crate::control::get_json(status_api, &format!("/api/v1/config/{namespace}/{name}")).await.with_context(
        || format!("the configuration of {workload} (is it in `zmesh proxy-status` / /api/v1/workloads?)"),
    )?;
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
    // Without them `describe` would report no policy that misses the workload, as if none did.
    let policies: Vec<&Value> = body["namespacePolicies"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("{status_api} does not list the namespace's policies (`namespacePolicies`); use a control plane of this zmesh version"))?
        .iter()
        .collect();
    let pushed_policies =
        policies.iter().filter(|p| p["pushed"] == true).filter_map(|p| p["key"].as_str().map(str::to_owned)).collect();
    // The root namespace comes with the policies, so their scope is read as the mesh's.
    let root = body["rootNamespace"].as_str().unwrap_or("istio-system");
    let mesh = format!("{{\"rootNamespace\": {}}}", Value::from(root));
    let namespace_policies = load(std::iter::once(("MeshConfig", 0, mesh.as_str())).chain(policies.iter().map(|p| {
        (
            p["key"].as_str().unwrap_or_default(),
            p["order"].as_u64().unwrap_or_default(),
            p["document"].as_str().unwrap_or_default(),
        )
    })))
    .map_err(|error| anyhow::anyhow!("the policies of {namespace} do not load: {error}"))?;
    Ok(LiveWorkload {
        workload: workload.to_owned(),
        version,
        config,
        proxies,
        resources,
        loaded,
        namespace_policies,
        pushed_policies,
    })
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
