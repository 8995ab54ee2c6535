//! One accepted configuration, ready to push: every document as a wire resource with a content
//! version, indexed so that the slice a proxy needs is found without scanning the whole mesh.
//!
//! What a proxy needs: the MeshConfig, the registry — every WorkloadEntry, ServiceEntry, Pod and
//! Service (its peers; Istio sends the whole registry too unless a Sidecar narrows it) — and the
//! policies that can select
//! its workload: those in the root namespace or in the workload's namespace whose selector (if
//! any) matches its labels. That is a superset of what Istio applies (targetRefs are not
//! examined here); the proxy's own policy engine makes the exact choice, so a superset is safe
//! and a missing policy is impossible. Kubernetes objects that only describe workloads
//! without addresses (Namespace, Deployment and the other controllers, ServiceAccount) stay
//! with the control plane.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use zmesh_config::{Loaded, SourceDocument};
use zmesh_registry::{MeshWorkload, Registry};

/// One document as it goes on the wire.
#[derive(Debug)]
pub struct WireResource {
    /// `Kind/namespace/name`, or `MeshConfig`.
    pub key: Arc<str>,
    /// A digest of the document (and, for PeerAuthentication, its load order).
    pub version: Arc<str>,
    pub document: Arc<str>,
    pub order: u64,
    scope: Scope,
}

/// Which proxies a resource goes to.
#[derive(Debug)]
enum Scope {
    Everyone,
    /// Policies: workloads of `namespace` (all namespaces when it is the root namespace) whose
    /// labels include `selector`.
    Selected {
        namespace: String,
        selector: Option<BTreeMap<String, String>>,
    },
    /// Kept by the control plane only.
    Nobody,
}

impl WireResource {
    fn selects(&self, workload: &MeshWorkload, root_namespace: &str) -> bool {
        match &self.scope {
            Scope::Everyone => true,
            Scope::Nobody => false,
            Scope::Selected { namespace, selector } => {
                (namespace == root_namespace || *namespace == workload.namespace)
                    && selector.as_ref().is_none_or(|s| s.iter().all(|(k, v)| workload.labels.get(k) == Some(v)))
            }
        }
    }

    /// The protobuf form.
    pub fn to_proto(&self) -> zmesh_xds::config::Resource {
        zmesh_xds::config::Resource {
            key: self.key.to_string(),
            version: self.version.to_string(),
            document: self.document.to_string(),
            order: self.order,
        }
    }
}

/// The key of a source document.
pub fn resource_key(source: &SourceDocument) -> String {
    if source.kind == "MeshConfig" {
        return "MeshConfig".to_owned();
    }
    format!("{}/{}/{}", source.kind, source.namespace, source.name)
}

fn digest(parts: &[&[u8]]) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        context.update(&(part.len() as u64).to_be_bytes());
        context.update(part);
    }
    context.finish().as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// An accepted configuration, as pushed.
#[derive(Debug)]
pub struct Snapshot {
    /// The config store's generation (1, 2, …; restarts at 1 with the control plane).
    pub generation: u64,
    /// A digest of every resource and its version: equal configurations have equal versions,
    /// also across control-plane restarts, so a resync after a restart is a no-op.
    pub version: Arc<str>,
    pub created_at: SystemTime,
    pub registry: Registry,
    /// The version this snapshot was built after, and the keys that differ from it (added,
    /// changed or removed): a proxy that holds that version needs only these looked at.
    pub previous: Option<Arc<str>>,
    pub changed: Vec<Arc<str>>,
    root_namespace: String,
    everyone: Vec<Arc<WireResource>>,
    by_namespace: HashMap<String, Vec<Arc<WireResource>>>,
    by_key: HashMap<Arc<str>, Arc<WireResource>>,
}

impl Snapshot {
    /// Index an accepted load (one without errors).
    pub fn build(generation: u64, loaded: &Loaded, created_at: SystemTime) -> Snapshot {
        let config = &loaded.config;
        let root_namespace = config.mesh.root_namespace.clone();
        let mut everyone = Vec::new();
        let mut by_namespace: HashMap<String, Vec<Arc<WireResource>>> = HashMap::new();
        let mut by_key = HashMap::new();
        for source in &loaded.sources {
            let key = resource_key(source);
            let scope = match source.kind.as_str() {
                // The registry: peers and the Services that give pods their port protocols.
                "MeshConfig" | "WorkloadEntry" | "ServiceEntry" | "Pod" | "Service" => Scope::Everyone,
                // NetworkPolicy selectors have expressions; every one in the namespace goes to
                // its proxies (the loader records no selector for it).
                "AuthorizationPolicy"
                | "PeerAuthentication"
                | "RequestAuthentication"
                | "Telemetry"
                | "EnvoyFilter"
                | "NetworkPolicy" => {
                    Scope::Selected { namespace: source.namespace.clone(), selector: source.selector.clone() }
                }
                _ => Scope::Nobody,
            };
            let order = source.order as u64;
            // Load order decides only which PeerAuthentication is oldest; for other kinds it
            // stays out of the version, so adding a file does not re-push everything after it.
            let version = if source.kind == "PeerAuthentication" {
                digest(&[source.json.as_bytes(), &order.to_be_bytes()])
            } else {
                digest(&[source.json.as_bytes()])
            };
            let resource = Arc::new(WireResource {
                key: key.into(),
                version: version.into(),
                document: source.json.clone(),
                order,
                scope,
            });
            match &resource.scope {
                Scope::Everyone => everyone.push(resource.clone()),
                Scope::Selected { namespace, .. } => {
                    by_namespace.entry(namespace.clone()).or_default().push(resource.clone())
                }
                Scope::Nobody => {}
            }
            // A repeated key replaces the earlier document, as the loader does.
            by_key.insert(resource.key.clone(), resource);
        }
        let mut keys: Vec<(&Arc<str>, &Arc<str>)> = by_key.iter().map(|(k, r)| (k, &r.version)).collect();
        keys.sort();
        let flat: Vec<&[u8]> = keys.iter().flat_map(|(k, v)| [k.as_bytes(), v.as_bytes()]).collect();
        Snapshot {
            generation,
            version: digest(&flat).into(),
            created_at,
            registry: Registry::from_config(config),
            previous: None,
            changed: Vec::new(),
            root_namespace,
            everyone,
            by_namespace,
            by_key,
        }
    }

    /// Index an accepted load that follows `previous`, recording which keys differ from it.
    pub fn build_after(previous: &Snapshot, generation: u64, loaded: &Loaded, created_at: SystemTime) -> Snapshot {
        let mut snapshot = Snapshot::build(generation, loaded, created_at);
        let mut changed: Vec<Arc<str>> = snapshot
            .by_key
            .values()
            .filter(|r| previous.by_key.get(&r.key).is_none_or(|p| p.version != r.version))
            .map(|r| r.key.clone())
            .collect();
        changed.extend(previous.by_key.keys().filter(|k| !snapshot.by_key.contains_key(*k)).cloned());
        snapshot.previous = Some(previous.version.clone());
        snapshot.changed = changed;
        snapshot
    }

    /// Every resource, by key (the control plane's own view).
    pub fn resource(&self, key: &str) -> Option<&Arc<WireResource>> {
        self.by_key.get(key)
    }

    /// The resource `key` if the proxy of `workload` gets it.
    pub fn applies(&self, key: &str, workload: Option<&MeshWorkload>) -> Option<&Arc<WireResource>> {
        let resource = self.by_key.get(key)?;
        let selected = match (&resource.scope, workload) {
            (Scope::Everyone, _) => true,
            (Scope::Selected { .. }, Some(workload)) => resource.selects(workload, &self.root_namespace),
            _ => false,
        };
        selected.then_some(resource)
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The resources the proxy of `workload` gets (each once: a document repeated under one key
    /// counts as its last version only). A workload the registry does not know (yet) gets what
    /// every proxy gets; its proxy then reports what is missing.
    fn slice<'a>(&'a self, workload: Option<&'a MeshWorkload>) -> impl Iterator<Item = &'a Arc<WireResource>> + 'a {
        let live = |r: &&Arc<WireResource>| self.by_key.get(&r.key).is_some_and(|l| Arc::ptr_eq(l, r));
        let namespaces = workload.map(|w| {
            let own = (w.namespace != self.root_namespace).then_some(w.namespace.as_str());
            [Some(self.root_namespace.as_str()), own]
        });
        let selected = namespaces.into_iter().flatten().flatten().flat_map(move |namespace| {
            self.by_namespace
                .get(namespace)
                .into_iter()
                .flatten()
                .filter(move |r| workload.is_some_and(|w| r.selects(w, &self.root_namespace)))
        });
        self.everyone.iter().chain(selected).filter(live)
    }

    /// How many resources the proxy of `workload` holds once it has this version.
    pub fn resources_count_for(&self, workload: Option<&MeshWorkload>) -> usize {
        self.slice(workload).count()
    }

    /// The resources the proxy of `workload` needs, by key.
    pub fn resources_for(&self, workload: Option<&MeshWorkload>) -> HashMap<Arc<str>, Arc<WireResource>> {
        self.slice(workload).map(|r| (r.key.clone(), r.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESH: &str = "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: payments, namespace: fintech}
spec: {address: 10.0.0.9, serviceAccount: payments, labels: {app: payments}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: orders, namespace: shop}
spec: {address: 10.0.0.10, serviceAccount: orders, labels: {app: orders}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: payments-only, namespace: fintech}
spec: {selector: {matchLabels: {app: payments}}, action: DENY, rules: [{to: [{operation: {paths: [/admin]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-wide, namespace: istio-system}
spec: {}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: shop-strict, namespace: shop}
spec: {mtls: {mode: STRICT}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: orders, namespace: shop}
";

    fn keys(map: &HashMap<Arc<str>, Arc<WireResource>>) -> Vec<String> {
        let mut keys: Vec<String> = map.keys().map(ToString::to_string).collect();
        keys.sort();
        keys
    }

    #[test]
    fn each_proxy_gets_the_registry_and_only_the_policies_that_can_select_it() {
        let loaded = zmesh_config::load_str(MESH);
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        let snapshot = Snapshot::build(1, &loaded, SystemTime::UNIX_EPOCH);
        let payments = snapshot.registry.at("10.0.0.9".parse().expect("ip")).expect("payments").clone();
        let orders = snapshot.registry.at("10.0.0.10".parse().expect("ip")).expect("orders").clone();
        assert_eq!(
            keys(&snapshot.resources_for(Some(&payments))),
            [
                "AuthorizationPolicy/fintech/payments-only",
                "AuthorizationPolicy/istio-system/mesh-wide",
                "WorkloadEntry/fintech/payments",
                "WorkloadEntry/shop/orders",
            ]
        );
        assert_eq!(
            keys(&snapshot.resources_for(Some(&orders))),
            [
                "AuthorizationPolicy/istio-system/mesh-wide",
                "PeerAuthentication/shop/shop-strict",
                "WorkloadEntry/fintech/payments",
                "WorkloadEntry/shop/orders",
            ]
        );
        assert_eq!(
            keys(&snapshot.resources_for(None)),
            ["WorkloadEntry/fintech/payments", "WorkloadEntry/shop/orders"]
        );
        assert!(snapshot.resource("ServiceAccount/shop/orders").is_some(), "kept by the control plane");
    }

    #[test]
    fn a_snapshot_knows_what_changed_since_the_one_before() {
        let a = Snapshot::build(1, &zmesh_config::load_str(MESH), SystemTime::UNIX_EPOCH);
        let edited = MESH.replace("/admin", "/debug").replace(
            "---\napiVersion: v1\nkind: ServiceAccount",
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: new, namespace: shop}\nspec: {}\n---\napiVersion: v1\nkind: ServiceAccount",
        );
        let edited = edited.replace(
            "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: shop-strict, namespace: shop}\nspec: {mtls: {mode: STRICT}}\n",
            "",
        );
        let b = Snapshot::build_after(&a, 2, &zmesh_config::load_str(&edited), SystemTime::now());
        let mut changed: Vec<&str> = b.changed.iter().map(|k| &**k).collect();
        changed.sort_unstable();
        assert_eq!(
            changed,
            [
                "AuthorizationPolicy/fintech/payments-only",
                "AuthorizationPolicy/shop/new",
                "PeerAuthentication/shop/shop-strict"
            ]
        );
        assert_eq!(b.previous.as_deref(), Some(&*a.version));
        let orders = b.registry.at("10.0.0.10".parse().expect("ip")).cloned();
        assert!(b.applies("AuthorizationPolicy/shop/new", orders.as_deref()).is_some());
        assert!(b.applies("AuthorizationPolicy/fintech/payments-only", orders.as_deref()).is_none());
        assert!(b.applies("WorkloadEntry/shop/orders", None).is_some(), "the registry goes to everyone");
    }

    #[test]
    fn versions_follow_content_not_generation() {
        let a = Snapshot::build(1, &zmesh_config::load_str(MESH), SystemTime::UNIX_EPOCH);
        let b = Snapshot::build(7, &zmesh_config::load_str(MESH), SystemTime::now());
        assert_eq!(a.version, b.version);
        let changed = MESH.replace("/admin", "/debug");
        let c = Snapshot::build(8, &zmesh_config::load_str(&changed), SystemTime::now());
        assert_ne!(a.version, c.version);
        let key = "AuthorizationPolicy/fintech/payments-only";
        assert_ne!(a.resource(key).expect("policy").version, c.resource(key).expect("policy").version);
        let key = "WorkloadEntry/shop/orders";
        assert_eq!(a.resource(key).expect("entry").version, c.resource(key).expect("entry").version);
    }
}
