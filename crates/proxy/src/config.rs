//! What the proxy enforces right now: its workload, the mesh registry, the compiled policy and
//! the MeshConfig — built together from one configuration and replaced whole, so a connection
//! sees one consistent version from start to end and never half of an update.

use std::sync::{Arc, PoisonError, RwLock};

use zmesh_config::Config;
use zmesh_config::mesh::MeshConfig;
use zmesh_policy::{PolicySet, WorkloadPolicy};
use zmesh_registry::{MeshWorkload, Registry, WorkloadError};

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
    pub mesh: MeshConfig,
}

impl ProxyConfig {
    /// Compile `config` for the workload `namespace/name`.
    pub fn build(version: String, config: &Config, namespace: &str, name: &str) -> Result<Self, WorkloadError> {
        let registry = Registry::from_config(config);
        let workload = registry.workload(config, namespace, name)?;
        let policies = PolicySet::compile(config);
        Ok(Self::new(version, workload, registry, policies, config.mesh.clone()))
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
        ProxyConfig { version, workload, as_policy_sees_it, registry, policies, policy, mesh }
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
