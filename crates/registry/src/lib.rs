//! zmesh-registry: who is who in the mesh — every workload with its address, identity, labels,
//! ports and protocols, as read from the configuration (WorkloadEntry). The control plane uses it
//! to decide what each proxy needs; a proxy uses it to find its own workload and to reach peers.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use zmesh_config::Config;
use zmesh_config::networking::{Protocol, WorkloadSpec};
use zmesh_id::{SpiffeId, TrustDomain};

/// A port a workload serves and how it is spoken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadPort {
    pub number: u16,
    pub name: String,
    /// From the port's name prefix (`http-web`, `grpc`, `tcp-db`) as Istio reads it; `None`
    /// when the name says nothing, which is treated as opaque TCP.
    pub protocol: Option<Protocol>,
}

impl WorkloadPort {
    pub fn is_http(&self) -> bool {
        self.protocol.is_some_and(Protocol::is_http)
    }
}

/// One workload in the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshWorkload {
    pub namespace: String,
    pub name: String,
    pub address: IpAddr,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    pub identity: SpiffeId,
    pub ports: Vec<WorkloadPort>,
}

impl MeshWorkload {
    pub fn port(&self, number: u16) -> Option<&WorkloadPort> {
        self.ports.iter().find(|p| p.number == number)
    }

    /// The workload as the policy engine sees it.
    pub fn policy_workload(&self) -> zmesh_policy::Workload {
        zmesh_policy::Workload {
            namespace: self.namespace.clone(),
            labels: self.labels.clone(),
            service_account: self.service_account.clone(),
        }
    }

    /// Whether `port` speaks HTTP (so every request is authorized at L7).
    pub fn speaks_http(&self, port: u16) -> bool {
        self.port(port).is_some_and(WorkloadPort::is_http)
    }
}

/// Why a workload could not be read from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("no WorkloadEntry {namespace}/{name} in the configuration; the known ones are: {known}")]
    NotFound { namespace: String, name: String, known: String },
    #[error(
        "WorkloadEntry {namespace}/{name} has address `{address}`, which is not an IP address; the proxy needs the workload's IP"
    )]
    NotAnIp { namespace: String, name: String, address: String },
    #[error("WorkloadEntry {namespace}/{name}: {message}")]
    BadIdentity { namespace: String, name: String, message: String },
}

fn ports(spec: &WorkloadSpec) -> Vec<WorkloadPort> {
    spec.ports
        .iter()
        .map(|(name, &number)| WorkloadPort {
            number,
            name: name.clone(),
            protocol: Protocol::parse(name.split('-').next().unwrap_or_default()),
        })
        .collect()
}

fn mesh_workload(
    namespace: &str,
    name: &str,
    spec: &WorkloadSpec,
    trust_domain: &TrustDomain,
) -> Result<MeshWorkload, WorkloadError> {
    let address = spec.ip().ok_or_else(|| WorkloadError::NotAnIp {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        address: spec.address.clone(),
    })?;
    let service_account = spec.service_account.clone().unwrap_or_else(|| "default".to_owned());
    let bad = |message: String| WorkloadError::BadIdentity {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        message,
    };
    let identity = SpiffeId::new(
        trust_domain.clone(),
        namespace.parse().map_err(|e: zmesh_id::IdError| bad(e.to_string()))?,
        service_account.parse().map_err(|e: zmesh_id::IdError| bad(e.to_string()))?,
    );
    Ok(MeshWorkload {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        address,
        labels: spec.labels.clone(),
        service_account,
        identity,
        ports: ports(spec),
    })
}

/// Every workload the configuration names, by address.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    by_address: HashMap<IpAddr, Arc<MeshWorkload>>,
    by_name: HashMap<(String, String), Arc<MeshWorkload>>,
}

impl Registry {
    /// WorkloadEntries with an IP address. Entries with a host name are skipped (they need DNS,
    /// which comes with the control plane).
    pub fn from_config(config: &Config) -> Registry {
        let trust_domain = &config.mesh.trust_domain;
        let mut registry = Registry::default();
        for entry in &config.workload_entries {
            if let Ok(workload) = mesh_workload(&entry.meta.namespace, &entry.meta.name, &entry.spec, trust_domain) {
                let workload = Arc::new(workload);
                registry.by_address.insert(workload.address, workload.clone());
                registry.by_name.insert((workload.namespace.clone(), workload.name.clone()), workload);
            }
        }
        registry
    }

    /// The workload at an address.
    pub fn at(&self, address: IpAddr) -> Option<&Arc<MeshWorkload>> {
        self.by_address.get(&address)
    }

    /// The workload that a destination `ip:port` reaches, if it is in the mesh.
    pub fn destination(&self, target: SocketAddr) -> Option<&Arc<MeshWorkload>> {
        self.at(target.ip())
    }

    /// The workload `namespace/name`, with a precise error naming the ones that exist.
    pub fn workload(&self, config: &Config, namespace: &str, name: &str) -> Result<Arc<MeshWorkload>, WorkloadError> {
        if let Some(workload) = self.by_name.get(&(namespace.to_owned(), name.to_owned())) {
            return Ok(workload.clone());
        }
        if let Some(entry) =
            config.workload_entries.iter().find(|e| e.meta.namespace == namespace && e.meta.name == name)
        {
            return mesh_workload(namespace, name, &entry.spec, &config.mesh.trust_domain).map(Arc::new);
        }
        let mut known: Vec<String> = config.workload_entries.iter().map(|e| e.meta.key()).collect();
        known.sort();
        Err(WorkloadError::NotFound {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            known: if known.is_empty() { "none".to_owned() } else { known.join(", ") },
        })
    }

    pub fn len(&self) -> usize {
        self.by_address.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_address.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESH: &str = "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: payments, namespace: fintech-core}
spec:
  address: 10.0.0.9
  serviceAccount: payment-processor
  labels: {app: payment-processor}
  ports: {http-api: 8443, grpc: 9000, metrics: 9090}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db, namespace: fintech-core}
spec: {address: db.internal}
";

    #[test]
    fn workloads_are_found_by_address_with_their_identity_and_protocols() {
        let loaded = zmesh_config::load_str(MESH);
        assert!(!loaded.has_errors());
        let registry = Registry::from_config(&loaded.config);
        assert_eq!(registry.len(), 1, "the host-name entry needs DNS and is skipped");
        let payments = registry.at("10.0.0.9".parse().unwrap()).unwrap();
        assert_eq!(payments.identity.to_string(), "spiffe://cluster.local/ns/fintech-core/sa/payment-processor");
        assert!(payments.speaks_http(8443));
        assert!(payments.speaks_http(9000));
        assert!(!payments.speaks_http(9090), "an unprefixed port name is opaque TCP");
    }

    #[test]
    fn an_unknown_workload_names_the_known_ones() {
        let loaded = zmesh_config::load_str(MESH);
        let registry = Registry::from_config(&loaded.config);
        let error = registry.workload(&loaded.config, "fintech-core", "nope").unwrap_err();
        assert_eq!(
            error.to_string(),
            "no WorkloadEntry fintech-core/nope in the configuration; the known ones are: fintech-core/db, fintech-core/payments"
        );
    }
}
