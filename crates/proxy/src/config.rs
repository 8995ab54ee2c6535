//! What the proxy enforces right now: its workload, the mesh registry, the compiled policy and
//! the MeshConfig — built together from one configuration and replaced whole, so a connection
//! sees one consistent version from start to end and never half of an update.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use zmesh_config::Config;
use zmesh_config::mesh::MeshConfig;
use zmesh_config::networking::LocalRateLimit;
use zmesh_policy::{PolicySet, WorkloadPolicy};
use zmesh_registry::{MeshWorkload, Registry, WorkloadError};

use crate::admission::Admission;

/// The documents a configuration was compiled from, by key: one set shared (not copied) by the
/// subscription that holds it and every configuration built from it, so the admin port can
/// show exactly what the proxy enforces.
pub type Documents = Arc<BTreeMap<String, zmesh_xds::config::Resource>>;

/// One consistent configuration of the proxy.
#[derive(Debug)]
pub struct ProxyConfig {
    /// The version the configuration came with (the control plane's, or `local` for files).
    pub version: String,
    pub workload: Arc<MeshWorkload>,
    /// The workload's namespace, labels and service account, as policy lookups take them.
    pub as_policy_sees_it: zmesh_policy::Workload,
    pub registry: Registry,
    pub policies: PolicySet,
    /// The policies that apply to this workload, gathered once per version.
    pub policy: Arc<WorkloadPolicy>,
    /// What decides each HTTP request: built from `policy` alone here, then completed by the
    /// running proxy (key sets, authorizer clients, rate limiters) before it is put in force.
    pub admission: Arc<Admission>,
    pub mesh: MeshConfig,
    /// The EnvoyFilter local rate limits that apply to this workload, in filter order.
    pub rate_limits: Vec<LocalRateLimit>,
    /// The control plane's documents this version was compiled from; `None` when the proxy
    /// runs from local files (read once at start; only the compiled form is kept).
    pub documents: Option<Documents>,
}

impl ProxyConfig {
    /// Compile `config` for the workload `namespace/name`.
    pub fn build(version: String, config: &Config, namespace: &str, name: &str) -> Result<Self, WorkloadError> {
        let registry = Registry::from_config(config);
        let workload = registry.workload(config, namespace, name)?;
        Ok(Self::from_config(version, workload, registry, config))
    }

    /// Compile `config` for a workload already found in `registry`.
    pub fn from_config(version: String, workload: Arc<MeshWorkload>, registry: Registry, config: &Config) -> Self {
        let policies = PolicySet::compile(config);
        let mut built = Self::new(version, workload, registry, policies, config.mesh.clone());
        built.rate_limits =
            crate::ratelimit::envoy_filters_for(&built.workload.namespace, &built.as_policy_sees_it.labels, config)
                .into_iter()
                .cloned()
                .collect();
        built
    }

    pub fn new(
        version: String,
        workload: Arc<MeshWorkload>,
        registry: Registry,
        policies: PolicySet,
        mesh: MeshConfig,
    ) -> Self {
        let as_policy_sees_it = workload.policy_workload();
        let policy = Arc::new(policies.for_workload(&as_policy_sees_it));
        let admission = Arc::new(Admission::policy_only(policy.clone()));
        ProxyConfig {
            version,
            workload,
            as_policy_sees_it,
            registry,
            policies,
            policy,
            admission,
            mesh,
            rate_limits: Vec::new(),
            documents: None,
        }
    }
}

/// The current [`ProxyConfig`], swapped atomically by updates.
#[derive(Debug)]
pub struct Current(RwLock<Arc<ProxyConfig>>);

impl Current {
    pub fn new(config: ProxyConfig) -> Self {
        Current(RwLock::new(Arc::new(config)))
    }

    /// The configuration in force; hold the `Arc` for as long as one connection or request
    /// needs a consistent view.
    pub fn get(&self) -> Arc<ProxyConfig> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Put `config` in force for every connection that starts from now on.
    pub fn replace(&self, config: ProxyConfig) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
    }
}

/// Logs what the configuration holds but this proxy does not enforce or apply (the loader's
/// warnings, each with its stable code and source), so an operator reading the proxy's log
/// learns it too, not only from `zmesh validate` or the control plane's status API.
pub fn log_warnings<'a>(diagnostics: impl IntoIterator<Item = &'a zmesh_config::Diagnostic>) {
    for diagnostic in diagnostics.into_iter().filter(|d| !d.is_error()) {
        tracing::warn!(code = diagnostic.code.unwrap_or("none"), "{diagnostic}");
    }
}
