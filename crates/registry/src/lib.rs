//! zmesh-registry: who is who in the mesh — every workload with its address, identity, labels,
//! ports and protocols, as read from the configuration (WorkloadEntry). The control plane uses it
//! to decide what each proxy needs; a proxy uses it to find its own workload and to reach peers,
//! and to resolve the host names apps use (`name.namespace`, ServiceEntry hosts) without DNS.
//!
//! ServiceEntries put services into the registry too, as in Istio: their hosts, addresses and
//! declared ports are what outboundTrafficPolicy `REGISTRY_ONLY` lets through. An entry whose
//! backends a workloadSelector picks resolves to a mesh workload like a workload name does; any
//! other entry is a [`ServiceEntryRoute`]: where a connection to one of its declared ports goes
//! (its endpoints, its host resolved by DNS, or the original destination, per `resolution`).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use zmesh_config::Config;
use zmesh_config::networking::{Protocol, ServiceEntry, ServicePort, WorkloadSpec};
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
    /// Lowercase host name → what it names; built once per configuration so that resolving is a
    /// lookup (see [`Registry::resolve`] for which names are in it).
    hosts: HashMap<String, HostTarget>,
    /// ServiceEntries without a workloadSelector, sorted by `namespace/name` (the first one wins
    /// wherever two claim the same thing, so document order never matters).
    service_entries: Vec<EntryRoutes>,
    /// Wildcard hosts of those entries: the suffix after `*` (`.example.com`, or empty for `*`)
    /// and the entry, longest suffix first, as Istio prefers the most specific wildcard.
    wildcards: Vec<(String, usize)>,
    /// IP addresses of STATIC and DNS endpoints → the entries that list them.
    endpoint_ips: HashMap<IpAddr, Vec<usize>>,
}

/// What a host name in [`Registry::hosts`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostTarget {
    /// A mesh workload (by its names, or a ServiceEntry host whose workloadSelector picks it).
    Address(IpAddr),
    /// A host of `Registry::service_entries[index]`.
    ServiceEntry(usize),
}

/// How a ServiceEntry finds the addresses behind its hosts (`resolution`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// `NONE`: a connection goes where the client sent it (its original destination).
    None,
    /// `STATIC`: to the IP addresses of the entry's endpoints.
    Static,
    /// `DNS` and `DNS_ROUND_ROBIN`: to the endpoints' names resolved by DNS, or to the entry's
    /// host itself when it lists no endpoints.
    Dns,
    /// `DYNAMIC_DNS`: to the name the client asked for (a wildcard host), resolved by DNS.
    DynamicDns,
}

impl Resolution {
    fn parse(text: &str) -> Resolution {
        match text {
            "STATIC" => Resolution::Static,
            "DNS" | "DNS_ROUND_ROBIN" => Resolution::Dns,
            "DYNAMIC_DNS" => Resolution::DynamicDns,
            _ => Resolution::None,
        }
    }
}

/// One place a connection to a ServiceEntry's service may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// An IP address and port: a STATIC endpoint, or the original destination.
    Address(SocketAddr),
    /// A name to resolve with DNS when connecting (resolution DNS).
    Name { host: String, port: u16 },
}

/// Where a connection to a port a ServiceEntry declares goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntryRoute {
    /// The ServiceEntry as `namespace/name`, for logs and errors.
    pub service_entry: String,
    /// The candidates, in the entry's order; any one of them serves the connection.
    pub upstreams: Vec<Upstream>,
}

/// What a host name and port (as in a URL or a CONNECT request) reach; see [`Registry::route_host`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRoute {
    /// An address to reach like any destination by IP: a mesh workload, or an IP literal.
    Address(IpAddr),
    /// A ServiceEntry host on a port the entry declares.
    ServiceEntry(ServiceEntryRoute),
    /// A ServiceEntry host on a port the entry does not declare: not in the registry.
    UndeclaredPort { service_entry: String, declared: Vec<u16> },
    /// No workload or ServiceEntry has the name.
    Unknown,
}

/// An IP address or a CIDR block from a ServiceEntry's `addresses`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn parse(text: &str) -> Option<Cidr> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix.parse::<u8>().ok()?)),
            None => (text, None),
        };
        let network: IpAddr = address.parse().ok()?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(bits);
        (prefix <= bits).then_some(Cidr { network, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let prefix = u32::from(self.prefix);
        match (self.network, ip) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
                (u32::from(network) ^ u32::from(ip)) & mask == 0
            }
            (IpAddr::V6(network), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
                (u128::from(network) ^ u128::from(ip)) & mask == 0
            }
            _ => false,
        }
    }

    /// The one address this is, when it is not a wider block.
    fn single(&self) -> Option<IpAddr> {
        let bits = if self.network.is_ipv4() { 32 } else { 128 };
        (self.prefix == bits).then_some(self.network)
    }
}

/// A ServiceEntry without a workloadSelector, as routing needs it.
#[derive(Debug, Clone)]
struct EntryRoutes {
    key: String,
    /// Its hosts that are names, not wildcards, lowercase.
    hosts: Vec<String>,
    addresses: Vec<Cidr>,
    ports: Vec<ServicePort>,
    resolution: Resolution,
    /// Every endpoint except Unix sockets, which a TCP proxy cannot reach.
    endpoints: Vec<WorkloadSpec>,
}

/// Protocols Istio's sidecar routes by destination port alone: for an entry without
/// `addresses` it sends every connection to such a port to the entry. HTTP ports are routed by
/// the Host header and TLS ports by SNI instead, neither of which an address carries.
fn routed_by_port(protocol: Protocol) -> bool {
    matches!(protocol, Protocol::Tcp | Protocol::Mongo | Protocol::Mysql | Protocol::Redis)
}

/// The port an endpoint receives a service port's traffic on: its own port of that name, else
/// the service port's `targetPort`, else the service port itself (Istio's order).
fn endpoint_port(endpoint: &WorkloadSpec, port: &ServicePort) -> u16 {
    endpoint.ports.get(&port.name).copied().or(port.target_port).unwrap_or(port.number)
}

impl EntryRoutes {
    fn new(entry: &ServiceEntry) -> EntryRoutes {
        EntryRoutes {
            key: entry.meta.key(),
            hosts: entry.hosts.iter().filter(|h| !h.contains('*')).map(|h| normalize(h).into_owned()).collect(),
            addresses: entry.addresses.iter().filter_map(|a| Cidr::parse(a)).collect(),
            ports: entry.ports.clone(),
            resolution: Resolution::parse(&entry.resolution),
            endpoints: entry.endpoints.iter().filter(|e| !e.address.starts_with("unix://")).cloned().collect(),
        }
    }

    fn port(&self, number: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.number == number)
    }

    fn route(&self, upstreams: Vec<Upstream>) -> ServiceEntryRoute {
        ServiceEntryRoute { service_entry: self.key.clone(), upstreams }
    }

    fn endpoint_upstreams(&self, port: &ServicePort) -> Vec<Upstream> {
        self.endpoints
            .iter()
            .map(|endpoint| match endpoint.ip() {
                Some(ip) => Upstream::Address(SocketAddr::new(ip, endpoint_port(endpoint, port))),
                None => Upstream::Name { host: endpoint.address.clone(), port: endpoint_port(endpoint, port) },
            })
            .collect()
    }

    /// Where a client that asked for the host `requested` on `port` goes.
    fn route_by_name(&self, requested: &str, port: u16) -> HostRoute {
        let Some(service_port) = self.port(port) else {
            return HostRoute::UndeclaredPort {
                service_entry: self.key.clone(),
                declared: self.ports.iter().map(|p| p.number).collect(),
            };
        };
        let target_port = service_port.target_port.unwrap_or(service_port.number);
        let upstreams = match self.resolution {
            Resolution::Static => self.endpoint_upstreams(service_port),
            Resolution::Dns if !self.endpoints.is_empty() => self.endpoint_upstreams(service_port),
            Resolution::Dns | Resolution::DynamicDns => {
                vec![Upstream::Name { host: requested.to_owned(), port: target_port }]
            }
            // The client did not resolve the name itself; it would have reached the entry's
            // own addresses (what Istio's DNS proxy answers for the host), else what DNS says.
            Resolution::None => {
                let declared: Vec<Upstream> = self
                    .addresses
                    .iter()
                    .filter_map(Cidr::single)
                    .map(|ip| Upstream::Address(SocketAddr::new(ip, port)))
                    .collect();
                if declared.is_empty() { vec![Upstream::Name { host: requested.to_owned(), port }] } else { declared }
            }
        };
        HostRoute::ServiceEntry(self.route(upstreams))
    }

    /// Where a connection to `target`, found to belong to this entry's `port`, goes.
    fn route_by_address(&self, target: SocketAddr, port: &ServicePort) -> ServiceEntryRoute {
        let upstreams = match (self.resolution, self.hosts.first()) {
            (Resolution::Static, _) => self.endpoint_upstreams(port),
            (Resolution::Dns, _) if !self.endpoints.is_empty() => self.endpoint_upstreams(port),
            (Resolution::Dns, Some(host)) => {
                vec![Upstream::Name { host: host.clone(), port: port.target_port.unwrap_or(port.number) }]
            }
            // NONE, or a name only the client knows (DYNAMIC_DNS; DNS with wildcard hosts only).
            _ => vec![Upstream::Address(target)],
        };
        self.route(upstreams)
    }
}

/// A host name as the indexes keep it: lowercase, without the trailing dot of a fully
/// qualified name.
fn normalize(host: &str) -> std::borrow::Cow<'_, str> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
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
        registry.index_names(config);
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
    /// Ports are not considered: [`Registry::route_host`] says where a host *and port* go.
    pub fn resolve(&self, host: &str) -> Option<IpAddr> {
        if let Some(ip) = ip_literal(host) {
            return Some(ip);
        }
        match self.hosts.get(normalize(host).as_ref())? {
            HostTarget::Address(ip) => Some(*ip),
            HostTarget::ServiceEntry(index) => self.service_entries[*index].endpoints.iter().find_map(WorkloadSpec::ip),
        }
    }

    /// Where a client asking for `host:port` by name (the HTTP proxy port) goes, as Istio's
    /// registry decides it:
    /// - an IP literal, a workload's name or a ServiceEntry host whose workloadSelector picks a
    ///   workload: that address (reached like any destination by IP);
    /// - a host of any other ServiceEntry, exact or matching a wildcard host (`*.example.com`,
    ///   the most specific wildcard first): the entry's route when it declares `port` —
    ///   STATIC: its endpoints (on each endpoint's port for the service port); DNS: its
    ///   endpoints' names, or the host itself without endpoints, resolved at connect time;
    ///   NONE: the entry's own addresses when it lists single IPs, else the host as DNS
    ///   resolves it (where the client would have connected); DYNAMIC_DNS: the host asked for;
    /// - [`HostRoute::UndeclaredPort`] when the entry does not declare `port`;
    /// - [`HostRoute::Unknown`] otherwise.
    ///
    /// Names are matched as [`Registry::resolve`] matches them, with the same precedence;
    /// wildcard hosts come after every exact name.
    pub fn route_host(&self, host: &str, port: u16) -> HostRoute {
        if let Some(ip) = ip_literal(host) {
            return HostRoute::Address(ip);
        }
        let name = normalize(host);
        let index = match self.hosts.get(name.as_ref()) {
            Some(HostTarget::Address(ip)) => return HostRoute::Address(*ip),
            Some(HostTarget::ServiceEntry(index)) => *index,
            None => {
                let wildcard = self
                    .wildcards
                    .iter()
                    .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()));
                match wildcard {
                    Some((_, index)) => *index,
                    None => return HostRoute::Unknown,
                }
            }
        };
        self.service_entries[index].route_by_name(&name, port)
    }

    /// The ServiceEntry route of a connection to `target` (an original destination) that no
    /// mesh workload has the address of, if a ServiceEntry puts it in the registry:
    /// 1. `target`'s IP is in an entry's `addresses` (an IP or a CIDR block) and its port is one
    ///    the entry declares: the entry's route (endpoints, its host by DNS, or `target` itself
    ///    for NONE);
    /// 2. `target`'s IP is a STATIC or DNS endpoint's address and its port is one the entry
    ///    declares: straight to that endpoint, on its port for that service port;
    /// 3. an entry without `addresses` declares `target`'s port with a protocol Istio routes by
    ///    port alone (TCP, MongoDB, MySQL, Redis): the entry's route — for NONE that lets any
    ///    address through on that port, as Istio's documentation warns.
    ///
    /// `None` when nothing claims `target` (HTTP and TLS ports of an entry without addresses
    /// are matched by Host header or SNI in Istio, which an address does not carry).
    pub fn route_address(&self, target: SocketAddr) -> Option<ServiceEntryRoute> {
        let (ip, port) = (target.ip(), target.port());
        let by_address = self.service_entries.iter().find_map(|entry| {
            let service_port = entry.port(port)?;
            entry.addresses.iter().any(|block| block.contains(ip)).then(|| entry.route_by_address(target, service_port))
        });
        if by_address.is_some() {
            return by_address;
        }
        for &index in self.endpoint_ips.get(&ip).into_iter().flatten() {
            let entry = &self.service_entries[index];
            let endpoint = entry.endpoints.iter().find(|endpoint| endpoint.ip() == Some(ip));
            if let (Some(service_port), Some(endpoint)) = (entry.port(port), endpoint) {
                let upstream = Upstream::Address(SocketAddr::new(ip, endpoint_port(endpoint, service_port)));
                return Some(entry.route(vec![upstream]));
            }
        }
        self.service_entries.iter().filter(|entry| entry.addresses.is_empty()).find_map(|entry| {
            let service_port = entry.port(port).filter(|p| p.protocol.is_some_and(routed_by_port))?;
            Some(entry.route_by_address(target, service_port))
        })
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

/// `host` as an IP literal (`10.0.0.9`, `::1`, `[::1]`).
fn ip_literal(host: &str) -> Option<IpAddr> {
    let unbracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    unbracketed.parse().ok()
}

impl Registry {
    /// Every host name [`Registry::resolve`] and [`Registry::route_host`] answer for, and the
    /// ServiceEntry indexes. Names are inserted from the strongest claim to the weakest, each
    /// keeping a name an earlier one took, so the result never depends on document order.
    fn index_names(&mut self, config: &Config) {
        let mut workloads: Vec<&Arc<MeshWorkload>> = self.by_name.values().collect();
        workloads.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let mut hosts = HashMap::new();
        for workload in &workloads {
            let qualified = format!("{}.{}", workload.name, workload.namespace).to_ascii_lowercase();
            for name in [format!("{qualified}.svc.{CLUSTER_DOMAIN}"), format!("{qualified}.svc"), qualified] {
                hosts.entry(name).or_insert(HostTarget::Address(workload.address));
            }
        }
        let mut entries: Vec<_> = config.service_entries.iter().collect();
        entries.sort_by(|a, b| (&a.meta.namespace, &a.meta.name).cmp(&(&b.meta.namespace, &b.meta.name)));
        for entry in entries {
            let target = match &entry.workload_selector {
                // Its backends are mesh workloads: the host reaches the first one like its name.
                Some(selector) => {
                    let selected =
                        workloads.iter().find(|w| w.namespace == entry.meta.namespace && selector.matches(&w.labels));
                    let Some(selected) = selected else {
                        continue;
                    };
                    HostTarget::Address(selected.address)
                }
                None => {
                    let index = self.service_entries.len();
                    let routes = EntryRoutes::new(entry);
                    if matches!(routes.resolution, Resolution::Static | Resolution::Dns) {
                        for ip in routes.endpoints.iter().filter_map(WorkloadSpec::ip) {
                            let listed = self.endpoint_ips.entry(ip).or_default();
                            if listed.last() != Some(&index) {
                                listed.push(index);
                            }
                        }
                    }
                    for host in entry.hosts.iter().filter_map(|h| h.strip_prefix('*')) {
                        self.wildcards.push((normalize(host).into_owned(), index));
                    }
                    self.service_entries.push(routes);
                    HostTarget::ServiceEntry(index)
                }
            };
            for host in entry.hosts.iter().filter(|h| !h.contains('*')) {
                hosts.entry(normalize(host).into_owned()).or_insert(target);
            }
        }
        // Longest suffix first; the sort is stable, so entries keep their order on a tie.
        self.wildcards.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        let mut bare: HashMap<String, Option<IpAddr>> = HashMap::new();
        for workload in &workloads {
            bare.entry(workload.name.to_ascii_lowercase())
                .and_modify(|address| *address = None)
                .or_insert(Some(workload.address));
        }
        for (name, address) in bare {
            if let Some(address) = address {
                hosts.entry(name).or_insert(HostTarget::Address(address));
            }
        }
        self.hosts = hosts;
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

    /// The registry of a configuration that must load without errors.
    fn registry_of(yaml: &str) -> Registry {
        let loaded = zmesh_config::load_str(yaml);
        assert!(!loaded.has_errors(), "{:?}", loaded.errors().next());
        Registry::from_config(&loaded.config)
    }

    fn named() -> Registry {
        registry_of(NAMED)
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

    const EXTERNAL: &str = "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: payments, namespace: fintech-core}
spec: {address: 10.0.0.9, labels: {app: payments}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: partner-api, namespace: egress}
spec:
  hosts: [api.partner.test]
  location: MESH_EXTERNAL
  ports:
  - {number: 80, name: http, protocol: HTTP, targetPort: 8080}
  - {number: 5432, name: tcp-db, protocol: TCP}
  resolution: STATIC
  endpoints: [{address: 192.0.2.10}, {address: 192.0.2.11, ports: {http: 9090}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: example-api, namespace: egress}
spec:
  hosts: [API.example.com]
  ports: [{number: 443, name: https, protocol: TLS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: partner-db, namespace: egress}
spec:
  hosts: [db.partner.test]
  addresses: [198.51.100.0/24]
  ports: [{number: 3306, name: mysql, protocol: MYSQL}]
  resolution: DNS
  endpoints: [{address: db1.partner.net}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wikipedia, namespace: egress}
spec:
  hosts: [\"*.wikipedia.org\"]
  ports: [{number: 443, name: https, protocol: TLS}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: metadata, namespace: egress}
spec:
  hosts: [metadata.internal]
  addresses: [169.254.169.254]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: any-redis, namespace: egress}
spec:
  hosts: [redis.partner.test]
  ports: [{number: 6379, name: redis, protocol: REDIS}]
  resolution: NONE
";

    fn external() -> Registry {
        registry_of(EXTERNAL)
    }

    fn at(text: &str) -> Upstream {
        Upstream::Address(text.parse().unwrap())
    }

    fn name(host: &str, port: u16) -> Upstream {
        Upstream::Name { host: host.to_owned(), port }
    }

    fn route(service_entry: &str, upstreams: Vec<Upstream>) -> ServiceEntryRoute {
        ServiceEntryRoute { service_entry: service_entry.to_owned(), upstreams }
    }

    #[test]
    fn a_static_service_entry_host_routes_its_declared_ports_to_the_endpoints_ports() {
        let registry = external();
        assert_eq!(
            registry.route_host("api.partner.test", 80),
            HostRoute::ServiceEntry(route("egress/partner-api", vec![at("192.0.2.10:8080"), at("192.0.2.11:9090")])),
            "targetPort, or the endpoint's own port of that name"
        );
        assert_eq!(
            registry.route_host("API.partner.test.", 5432),
            HostRoute::ServiceEntry(route("egress/partner-api", vec![at("192.0.2.10:5432"), at("192.0.2.11:5432")]))
        );
        assert_eq!(
            registry.route_host("api.partner.test", 8080),
            HostRoute::UndeclaredPort { service_entry: "egress/partner-api".to_owned(), declared: vec![80, 5432] },
            "only declared ports are in the registry, not the endpoints' ports"
        );
        assert_eq!(registry.resolve("api.partner.test"), ip("192.0.2.10"), "by name alone, as before");
    }

    #[test]
    fn a_dns_service_entry_resolves_its_endpoints_or_else_its_own_host() {
        let registry = external();
        assert_eq!(
            registry.route_host("api.example.com", 443),
            HostRoute::ServiceEntry(route("egress/example-api", vec![name("api.example.com", 443)]))
        );
        assert_eq!(
            registry.route_host("db.partner.test", 3306),
            HostRoute::ServiceEntry(route("egress/partner-db", vec![name("db1.partner.net", 3306)]))
        );
        assert_eq!(registry.resolve("api.example.com"), None, "a DNS ServiceEntry needs DNS");
    }

    #[test]
    fn a_resolution_none_service_entry_goes_to_its_addresses_or_the_name_asked_for() {
        let registry = external();
        assert_eq!(
            registry.route_host("metadata.internal", 80),
            HostRoute::ServiceEntry(route("egress/metadata", vec![at("169.254.169.254:80")]))
        );
        assert_eq!(
            registry.route_host("en.Wikipedia.org", 443),
            HostRoute::ServiceEntry(route("egress/wikipedia", vec![name("en.wikipedia.org", 443)])),
            "a wildcard host matches any name under it"
        );
        assert!(matches!(registry.route_host("en.wikipedia.org", 80), HostRoute::UndeclaredPort { .. }));
        assert_eq!(registry.route_host("wikipedia.org", 443), HostRoute::Unknown, "`*.` needs a label before it");
    }

    #[test]
    fn names_outside_every_entry_are_unknown_and_workloads_and_literals_are_addresses() {
        let registry = external();
        assert_eq!(registry.route_host("nowhere.example", 443), HostRoute::Unknown);
        assert_eq!(registry.route_host("payments.fintech-core", 1234), HostRoute::Address("10.0.0.9".parse().unwrap()));
        assert_eq!(registry.route_host("[2001:db8::1]", 443), HostRoute::Address("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn an_original_destination_belongs_to_an_entry_by_its_addresses_on_a_declared_port() {
        let registry = external();
        let by = |target: &str| registry.route_address(target.parse().unwrap());
        assert_eq!(by("198.51.100.7:3306"), Some(route("egress/partner-db", vec![name("db1.partner.net", 3306)])));
        assert_eq!(by("169.254.169.254:80"), Some(route("egress/metadata", vec![at("169.254.169.254:80")])));
        assert_eq!(by("169.254.169.254:8080"), None, "not a declared port");
    }

    #[test]
    fn an_original_destination_that_is_a_static_endpoint_goes_to_that_endpoint() {
        let registry = external();
        let by = |target: &str| registry.route_address(target.parse().unwrap());
        assert_eq!(by("192.0.2.11:80"), Some(route("egress/partner-api", vec![at("192.0.2.11:9090")])));
        assert_eq!(by("192.0.2.10:80"), Some(route("egress/partner-api", vec![at("192.0.2.10:8080")])));
        assert_eq!(by("192.0.2.11:443"), None, "not a declared port");
        assert_eq!(by("192.0.2.12:80"), None, "not an endpoint");
    }

    #[test]
    fn an_entry_without_addresses_takes_its_tcp_ports_from_any_address_but_not_its_http_or_tls_ones() {
        let registry = external();
        let by = |target: &str| registry.route_address(target.parse().unwrap());
        assert_eq!(by("203.0.113.1:6379"), Some(route("egress/any-redis", vec![at("203.0.113.1:6379")])));
        assert_eq!(
            by("203.0.113.1:5432"),
            Some(route("egress/partner-api", vec![at("192.0.2.10:5432"), at("192.0.2.11:5432")])),
            "a STATIC entry's TCP port sends every connection on it to its endpoints, as Envoy's listener does"
        );
        assert_eq!(by("203.0.113.1:443"), None, "TLS is routed by SNI");
        assert_eq!(by("203.0.113.1:80"), None, "HTTP is routed by Host");
    }

    #[test]
    fn address_blocks_match_by_prefix() {
        let block = |text: &str| Cidr::parse(text).unwrap();
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert!(block("10.1.0.0/16").contains(ip("10.1.200.3")));
        assert!(!block("10.1.0.0/16").contains(ip("10.2.0.1")));
        assert!(block("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(block("10.0.0.5").contains(ip("10.0.0.5")) && !block("10.0.0.5").contains(ip("10.0.0.6")));
        assert!(block("2001:db8::/32").contains(ip("2001:db8:1::7")));
        assert!(!block("2001:db8::/32").contains(ip("10.0.0.1")));
        assert_eq!(block("10.0.0.5/32").single(), Some(ip("10.0.0.5")));
        assert_eq!(block("10.0.0.0/8").single(), None);
        assert!(Cidr::parse("10.0.0.0/33").is_none() && Cidr::parse("nope").is_none());
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
