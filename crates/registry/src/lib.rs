//! zmesh-registry: who is who in the mesh — every workload with its address, identity, labels,
//! ports and protocols, as read from the configuration (WorkloadEntry). The control plane uses it
//! to decide what each proxy needs; a proxy uses it to find its own workload and to reach peers,
//! and to resolve the host names apps use (`name.namespace`, ServiceEntry hosts) without DNS.

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
    /// when the name says nothing, and the inbound proxy detects it from the first bytes.
    pub protocol: Option<Protocol>,
}

/// How the inbound proxy carries a port's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortHandling {
    /// Declared HTTP, HTTP/2 or gRPC: every request is authorized at L7.
    Http,
    /// Declared with a protocol that is not HTTP (TCP, TLS, MySQL, …): authorized once, at L4.
    Opaque,
    /// Not declared (unnamed, a name without a known prefix, or a port the workload does not
    /// list): the first bytes decide, as Istio's protocol sniffing does.
    Detect,
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

    /// Whether `port` is declared to speak HTTP (so every request is authorized at L7).
    pub fn speaks_http(&self, port: u16) -> bool {
        self.port(port).is_some_and(WorkloadPort::is_http)
    }

    /// How the inbound proxy carries connections to `port`.
    pub fn port_handling(&self, port: u16) -> PortHandling {
        match self.port(port).and_then(|p| p.protocol) {
            Some(protocol) if protocol.is_http() => PortHandling::Http,
            Some(_) => PortHandling::Opaque,
            None => PortHandling::Detect,
        }
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

/// A Pod as a mesh workload. Its ports and their protocols come from the Services that select
/// it (Istio reads the protocol from the Service port's name or appProtocol, on the target
/// port), then from its named container ports.
fn pod_workload(
    pod: &zmesh_config::kube::KubeWorkload,
    services: &[zmesh_config::kube::KubeService],
    trust_domain: &TrustDomain,
) -> Result<MeshWorkload, WorkloadError> {
    let (namespace, name) = (pod.meta.namespace.as_str(), pod.meta.name.as_str());
    let mut ports: Vec<WorkloadPort> = Vec::new();
    let selecting = services.iter().filter(|s| {
        s.meta.namespace == namespace
            && !s.selector.is_empty()
            && s.selector.iter().all(|(k, v)| pod.pod_labels.get(k) == Some(v))
    });
    let service_ports = selecting.flat_map(|s| s.ports.iter());
    for port in service_ports.chain(&pod.container_ports) {
        let number = port.target_port.unwrap_or(port.number);
        if ports.iter().any(|p| p.number == number) {
            continue;
        }
        let protocol = port.protocol.or_else(|| Protocol::parse(port.name.split('-').next().unwrap_or_default()));
        ports.push(WorkloadPort { number, name: port.name.clone(), protocol });
    }
    let spec = WorkloadSpec {
        address: pod.pod_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        labels: pod.pod_labels.clone(),
        service_account: Some(pod.service_account.clone()),
        ..WorkloadSpec::default()
    };
    let mut workload = mesh_workload(namespace, name, &spec, trust_domain)?;
    workload.ports = ports;
    Ok(workload)
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

/// The cluster DNS suffix of Kubernetes service names (`name.namespace.svc.cluster.local`).
const CLUSTER_DOMAIN: &str = "cluster.local";

/// Every workload the configuration names, by address, and the host names that reach them.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    by_address: HashMap<IpAddr, Arc<MeshWorkload>>,
    by_name: HashMap<(String, String), Arc<MeshWorkload>>,
    /// Lowercase host name → address; built once per configuration so that resolving is a
    /// lookup (see [`Registry::resolve`] for which names are in it).
    hosts: HashMap<String, IpAddr>,
}

impl Registry {
    /// WorkloadEntries with an IP address, and Pods read back from a cluster (with
    /// `status.podIP`). Entries with a host name are skipped (they need DNS). A WorkloadEntry
    /// wins over a Pod at the same address.
    pub fn from_config(config: &Config) -> Registry {
        let trust_domain = &config.mesh.trust_domain;
        let mut registry = Registry::default();
        for pod in config.workloads.iter().filter(|w| w.pod_ip.is_some()) {
            if let Ok(workload) = pod_workload(pod, &config.services, trust_domain) {
                let workload = Arc::new(workload);
                registry.by_address.insert(workload.address, workload.clone());
                registry.by_name.insert((workload.namespace.clone(), workload.name.clone()), workload);
            }
        }
        for entry in &config.workload_entries {
            if let Ok(workload) = mesh_workload(&entry.meta.namespace, &entry.meta.name, &entry.spec, trust_domain) {
                let workload = Arc::new(workload);
                registry.by_address.insert(workload.address, workload.clone());
                registry.by_name.insert((workload.namespace.clone(), workload.name.clone()), workload);
            }
        }
        registry.hosts = host_index(config, &registry.by_name);
        registry
    }

    /// The address a host name (as in a URL or a CONNECT request) reaches in the mesh:
    /// - an IP literal (`10.0.0.9`, `::1`, `[::1]`) is itself;
    /// - a WorkloadEntry by `name.namespace`, `name.namespace.svc` or
    ///   `name.namespace.svc.cluster.local`, or by its bare `name` when no other workload in the
    ///   mesh has that name (a bare name that is ambiguous resolves to nothing rather than to a
    ///   guess);
    /// - a ServiceEntry host: the first workload (by name) its workloadSelector selects in the
    ///   ServiceEntry's namespace, else its first endpoint with an IP address.
    ///
    /// Case-insensitive; a trailing dot (a fully qualified name) is ignored. Qualified workload
    /// names win over ServiceEntry hosts, which win over bare names. `None` for anything else,
    /// including wildcard ServiceEntry hosts and endpoints that are host names (those need DNS).
    pub fn resolve(&self, host: &str) -> Option<IpAddr> {
        let unbracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Some(ip);
        }
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.hosts.get(&host.to_ascii_lowercase()).copied()
        } else {
            self.hosts.get(host).copied()
        }
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

    /// Every workload, in no particular order.
    pub fn workloads(&self) -> impl Iterator<Item = &Arc<MeshWorkload>> {
        self.by_name.values()
    }

    /// The workload `namespace/name`, if the registry has it.
    pub fn workload_named(&self, namespace: &str, name: &str) -> Option<&Arc<MeshWorkload>> {
        self.by_name.get(&(namespace.to_owned(), name.to_owned()))
    }

    pub fn len(&self) -> usize {
        self.by_address.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_address.is_empty()
    }
}

/// Every host name [`Registry::resolve`] answers for, lowercase. Inserted from the strongest
/// claim to the weakest, each keeping a name an earlier one took, so the result never depends on
/// document order.
fn host_index(config: &Config, by_name: &HashMap<(String, String), Arc<MeshWorkload>>) -> HashMap<String, IpAddr> {
    let mut workloads: Vec<&Arc<MeshWorkload>> = by_name.values().collect();
    workloads.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut hosts = HashMap::new();
    for workload in &workloads {
        let qualified = format!("{}.{}", workload.name, workload.namespace).to_ascii_lowercase();
        for name in [format!("{qualified}.svc.{CLUSTER_DOMAIN}"), format!("{qualified}.svc"), qualified] {
            hosts.entry(name).or_insert(workload.address);
        }
    }
    let mut entries: Vec<_> = config.service_entries.iter().collect();
    entries.sort_by(|a, b| (&a.meta.namespace, &a.meta.name).cmp(&(&b.meta.namespace, &b.meta.name)));
    for entry in entries {
        let selected = entry.workload_selector.as_ref().and_then(|selector| {
            workloads
                .iter()
                .find(|w| w.namespace == entry.meta.namespace && selector.matches(&w.labels))
                .map(|w| w.address)
        });
        let Some(address) = selected.or_else(|| entry.endpoints.iter().find_map(WorkloadSpec::ip)) else {
            continue;
        };
        for host in entry.hosts.iter().filter(|h| !h.contains('*')) {
            let host = host.strip_suffix('.').unwrap_or(host);
            hosts.entry(host.to_ascii_lowercase()).or_insert(address);
        }
    }
    let mut bare: HashMap<String, Option<IpAddr>> = HashMap::new();
    for workload in &workloads {
        bare.entry(workload.name.to_ascii_lowercase())
            .and_modify(|address| *address = None)
            .or_insert(Some(workload.address));
    }
    for (name, address) in bare {
        if let Some(address) = address {
            hosts.entry(name).or_insert(address);
        }
    }
    hosts
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
  ports: {http-api: 8443, grpc: 9000, metrics: 9090, tcp-db: 5432}
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
        assert!(!payments.speaks_http(9090), "an unprefixed port name is not declared HTTP");
        assert_eq!(payments.port_handling(8443), PortHandling::Http);
        assert_eq!(payments.port_handling(9090), PortHandling::Detect, "`metrics` names no protocol");
        assert_eq!(payments.port_handling(7000), PortHandling::Detect, "a port the entry does not list");
        assert_eq!(payments.port_handling(5432), PortHandling::Opaque);
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
    const NAMED: &str = "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: payments, namespace: fintech-core}
spec: {address: 10.0.0.9, labels: {app: payments}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ledger, namespace: fintech-core}
spec: {address: 10.0.0.10, labels: {app: ledger}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ledger, namespace: audit}
spec: {address: 10.0.1.10, labels: {app: ledger}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: pay-api, namespace: fintech-core}
spec:
  hosts: [pay.example.internal, \"*.wild.internal\"]
  location: MESH_INTERNAL
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: payments}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ledger-elsewhere, namespace: other}
spec:
  hosts: [ledger.example.internal]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: ledger}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: fintech-core}
spec:
  hosts: [legacy.corp, payments.fintech-core]
  ports: [{number: 8080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 192.168.7.7}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external, namespace: fintech-core}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: https, protocol: TLS}]
  resolution: DNS
";

    fn named() -> Registry {
        let loaded = zmesh_config::load_str(NAMED);
        assert!(!loaded.has_errors(), "{:?}", loaded.errors().next());
        Registry::from_config(&loaded.config)
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn ip_literals_resolve_to_themselves() {
        let registry = named();
        assert_eq!(registry.resolve("10.0.0.9"), ip("10.0.0.9"));
        assert_eq!(registry.resolve("203.0.113.5"), ip("203.0.113.5"), "a literal needs no registry entry");
        assert_eq!(registry.resolve("[2001:db8::1]"), ip("2001:db8::1"));
        assert_eq!(registry.resolve("2001:db8::1"), ip("2001:db8::1"));
        assert_eq!(registry.resolve("[2001:db8::1"), None);
    }

    #[test]
    fn workloads_resolve_by_their_kubernetes_style_names_in_any_case() {
        let registry = named();
        for host in [
            "payments.fintech-core",
            "payments.fintech-core.svc",
            "payments.fintech-core.svc.cluster.local",
            "payments.fintech-core.svc.cluster.local.",
            "Payments.FINTECH-core.svc.Cluster.Local",
            "payments",
        ] {
            assert_eq!(registry.resolve(host), ip("10.0.0.9"), "{host}");
        }
        assert_eq!(registry.resolve("ledger.fintech-core"), ip("10.0.0.10"));
        assert_eq!(registry.resolve("ledger.audit.svc.cluster.local"), ip("10.0.1.10"));
        assert_eq!(registry.resolve("payments.audit"), None);
        assert_eq!(registry.resolve("payments.fintech-core.svc.cluster"), None);
    }

    #[test]
    fn a_bare_name_that_two_namespaces_use_resolves_to_nothing() {
        assert_eq!(named().resolve("ledger"), None);
        assert_eq!(named().resolve("LEDGER"), None);
    }

    #[test]
    fn service_entry_hosts_resolve_to_a_selected_workload_or_an_endpoint() {
        let registry = named();
        assert_eq!(registry.resolve("pay.example.internal"), ip("10.0.0.9"));
        assert_eq!(registry.resolve("PAY.example.internal."), ip("10.0.0.9"));
        assert_eq!(registry.resolve("legacy.corp"), ip("192.168.7.7"));
        // The selector only looks in the ServiceEntry's own namespace, where nothing matches.
        assert_eq!(registry.resolve("ledger.example.internal"), None);
        assert_eq!(registry.resolve("any.wild.internal"), None, "wildcards are not resolved");
        assert_eq!(registry.resolve("api.example.com"), None, "a DNS ServiceEntry needs DNS");
    }

    #[test]
    fn a_workload_s_own_name_wins_over_a_service_entry_claiming_it() {
        assert_eq!(named().resolve("payments.fintech-core"), ip("10.0.0.9"));
    }

    #[test]
    fn unknown_names_resolve_to_nothing() {
        let registry = named();
        for host in ["", ".", "nope", "nope.fintech-core", "example.com"] {
            assert_eq!(registry.resolve(host), None, "{host:?}");
        }
    }

    #[test]
    fn a_pod_read_back_from_a_cluster_is_a_workload_with_its_service_ports() {
        let loaded = zmesh_config::load_str(
            "apiVersion: v1
kind: Pod
metadata: {name: payments-7d9f, namespace: fintech, labels: {app: payments}}
spec:
  serviceAccountName: payments
  containers: [{name: app, image: payments:1, ports: [{name: metrics, containerPort: 9090}]}]
status: {podIP: 10.244.1.7, phase: Running}
---
apiVersion: v1
kind: Service
metadata: {name: payments, namespace: fintech}
spec:
  selector: {app: payments}
  ports: [{name: http-api, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: pending, namespace: fintech}
spec: {containers: [{name: app, image: x}]}
",
        );
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        let registry = Registry::from_config(&loaded.config);
        assert_eq!(registry.len(), 1, "a pod without an IP is not addressable yet");
        let pod = registry.at("10.244.1.7".parse().unwrap()).unwrap();
        assert_eq!((pod.namespace.as_str(), pod.name.as_str()), ("fintech", "payments-7d9f"));
        assert_eq!(pod.identity.to_string(), "spiffe://cluster.local/ns/fintech/sa/payments");
        assert!(pod.speaks_http(8080), "the Service's http- port, on its target port: {:?}", pod.ports);
        assert!(!pod.speaks_http(9090));
        assert!(pod.port(9090).is_some(), "named container ports are known too");
    }
}
