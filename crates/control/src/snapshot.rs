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
//!
//! Of a Pod, a Service or a pod controller only what the configuration loader reads goes out
//! ([`wire_form`]): a pod spec's containers carry images, commands and `env` values (often
//! secrets), and `kubectl apply`'s last-applied annotation repeats all of it; no proxy needs
//! them, so none receives them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{Map, Value};
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

/// The annotations zmesh reads are Istio's (`sidecar.istio.io/inject`, …): keys under
/// `istio.io/` or a subdomain of it. Others — `kubectl.kubernetes.io/last-applied-configuration`
/// above all, a copy of the whole manifest — are not pushed.
fn istio_annotation(key: &str) -> bool {
    key.split_once('/').is_some_and(|(domain, _)| domain == "istio.io" || domain.ends_with(".istio.io"))
}

/// `metadata` as the loader reads it: name, namespace, labels, Istio's annotations and the
/// creation time.
fn wire_metadata(metadata: &Value) -> Value {
    let mut kept = Map::new();
    for field in ["name", "namespace", "labels", "creationTimestamp"] {
        if let Some(value) = metadata.get(field) {
            kept.insert(field.to_owned(), value.clone());
        }
    }
    if let Some(Value::Object(annotations)) = metadata.get("annotations") {
        let istio: Map<String, Value> =
            annotations.iter().filter(|(key, _)| istio_annotation(key)).map(|(k, v)| (k.clone(), v.clone())).collect();
        if !istio.is_empty() {
            kept.insert("annotations".to_owned(), Value::Object(istio));
        }
    }
    Value::Object(kept)
}

/// A pod spec as `zmesh_config::kube` reads it: the service account and each container's
/// ports (one entry per container, in order, so that the loader's paths stay the same).
fn wire_pod_spec(spec: &Value) -> Value {
    let mut kept = Map::new();
    for field in ["serviceAccountName", "serviceAccount"] {
        if let Some(value) = spec.get(field) {
            kept.insert(field.to_owned(), value.clone());
        }
    }
    if let Some(Value::Array(containers)) = spec.get("containers") {
        let containers = containers
            .iter()
            .map(|container| match container.get("ports") {
                Some(ports) => serde_json::json!({ "ports": ports }),
                None => Value::Object(Map::new()),
            })
            .collect();
        kept.insert("containers".to_owned(), Value::Array(containers));
    }
    Value::Object(kept)
}

/// What proxies receive of a document of `kind` (as the loader's JSON): for a Pod, a pod
/// controller (Deployment, StatefulSet, DaemonSet, ReplicaSet) or a Service, only the fields
/// `zmesh_config::kube` reads — loading it gives the same workloads and services, apart from
/// annotations zmesh never reads. Other kinds go whole: every field of the Istio kinds is
/// configuration.
pub fn wire_form(kind: &str, json: &str) -> Result<Arc<str>, serde_json::Error> {
    if !matches!(kind, "Pod" | "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Service") {
        return Ok(Arc::from(json));
    }
    let document: Value = serde_json::from_str(json)?;
    if !document.is_object() {
        return Err(serde_json::Error::io(std::io::Error::other("the document is not an object")));
    }
    let mut kept = Map::new();
    for name in ["apiVersion", "kind"] {
        if let Some(value) = document.get(name) {
            kept.insert(name.to_owned(), value.clone());
        }
    }
    if let Some(metadata) = document.get("metadata") {
        kept.insert("metadata".to_owned(), wire_metadata(metadata));
    }
    let spec = document.get("spec");
    match (kind, spec) {
        ("Service", Some(spec)) => {
            let mut service = Map::new();
            for name in ["selector", "ports"] {
                if let Some(value) = spec.get(name) {
                    service.insert(name.to_owned(), value.clone());
                }
            }
            kept.insert("spec".to_owned(), Value::Object(service));
        }
        ("Pod", Some(spec)) => {
            kept.insert("spec".to_owned(), wire_pod_spec(spec));
        }
        (_, Some(spec)) => {
            let mut controller = Map::new();
            if let Some(replicas) = spec.get("replicas") {
                controller.insert("replicas".to_owned(), replicas.clone());
            }
            if let Some(template) = spec.get("template") {
                let mut pod = Map::new();
                if let Some(metadata) = template.get("metadata") {
                    let mut labels = Map::new();
                    for name in ["labels", "annotations"] {
                        if let Some(value) = metadata.get(name) {
                            labels.insert(name.to_owned(), value.clone());
                        }
                    }
                    let labels = wire_metadata(&Value::Object(labels));
                    pod.insert("metadata".to_owned(), labels);
                }
                if let Some(spec) = template.get("spec") {
                    pod.insert("spec".to_owned(), wire_pod_spec(spec));
                }
                controller.insert("template".to_owned(), Value::Object(pod));
            }
            kept.insert("spec".to_owned(), Value::Object(controller));
        }
        (_, None) => {}
    }
    // Of a status, the loader reads only a Pod's IP.
    if let (Some(ip), "Pod") = (document.get("status").and_then(|status| status.get("podIP")), kind) {
        kept.insert("status".to_owned(), serde_json::json!({ "podIP": ip }));
    }
    Ok(Arc::from(serde_json::to_string(&Value::Object(kept))?))
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
            let (document, scope) = match wire_form(&source.kind, &source.json) {
                Ok(document) => (document, scope),
                Err(error) => {
                    // Never the whole document instead: withheld, the proxies report the
                    // workload missing.
                    tracing::error!(%key, %error, "a document the loader produced is not a JSON object; not pushed");
                    (Arc::from("{}"), Scope::Nobody)
                }
            };
            let order = source.order as u64;
            // Load order decides only which PeerAuthentication is oldest; for other kinds it
            // stays out of the version, so adding a file does not re-push everything after it.
            // The version is the pushed form's: an edit to fields no proxy receives (an image,
            // an `env` value) pushes nothing.
            let version = if source.kind == "PeerAuthentication" {
                digest(&[document.as_bytes(), &order.to_be_bytes()])
            } else {
                digest(&[document.as_bytes()])
            };
            let resource = Arc::new(WireResource { key: key.into(), version: version.into(), document, order, scope });
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

    /// A Pod as `kubectl get pod -o yaml` shows it, with a secret in its environment (also in
    /// the last-applied annotation), its Service and the Deployment that made it.
    const CLUSTER: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: payments-7d9f
  namespace: fintech
  uid: 0b6f3c1e-1111-4f5e-9d0a-2b7c1d9e8f00
  creationTimestamp: "2026-01-02T03:04:05Z"
  labels: {app: payments, version: v1}
  annotations:
    sidecar.istio.io/inject: "true"
    kubectl.kubernetes.io/last-applied-configuration: '{"spec":{"containers":[{"env":[{"name":"DB_PASSWORD","value":"hunter2"}]}]}}'
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: payments-7d9f, uid: x}]
  managedFields: [{manager: kubectl, operation: Update}]
spec:
  serviceAccountName: payments
  containers:
  - name: app
    image: registry.example.com/payments:1.2.3
    command: [/bin/payments]
    args: [--listen, ":8080"]
    env:
    - {name: DB_PASSWORD, value: hunter2}
    - name: API_TOKEN
      valueFrom: {secretKeyRef: {name: api, key: token}}
    ports:
    - {name: http, containerPort: 8080, protocol: TCP}
    - {name: grpc-admin, containerPort: 9090}
    volumeMounts: [{name: secrets, mountPath: /var/run/secrets/app}]
  - name: logger
    image: registry.example.com/logger:2
    env: [{name: LOG_KEY, value: hunter2}]
  volumes: [{name: secrets, secret: {secretName: api}}]
  nodeName: node-1
status:
  phase: Running
  podIP: 10.0.0.9
  hostIP: 192.168.1.7
  containerStatuses: [{name: app, image: registry.example.com/payments:1.2.3, ready: true}]
---
apiVersion: v1
kind: Service
metadata:
  name: payments
  namespace: fintech
  annotations: {kubectl.kubernetes.io/last-applied-configuration: '{"hunter2": true}'}
spec:
  selector: {app: payments}
  clusterIP: 10.96.0.12
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: payments, namespace: fintech, labels: {app: payments}}
spec:
  replicas: 3
  selector: {matchLabels: {app: payments}}
  template:
    metadata:
      labels: {app: payments}
      annotations: {sidecar.istio.io/inject: "false", example.com/owner: "hunter2"}
    spec:
      serviceAccountName: payments
      containers:
      - name: app
        image: registry.example.com/payments:1.2.3
        env: [{name: DB_PASSWORD, value: hunter2}]
        ports: [{name: http, containerPort: 8080}]
      volumes: [{name: secrets, secret: {secretName: api}}]
"#;

    #[test]
    fn a_pods_environment_containers_and_volumes_never_reach_a_proxy() {
        let loaded = zmesh_config::load_str(CLUSTER);
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        let snapshot = Snapshot::build(1, &loaded, SystemTime::UNIX_EPOCH);
        let pushed = snapshot.resources_for(None);
        assert_eq!(keys(&pushed), ["Pod/fintech/payments-7d9f", "Service/fintech/payments"]);
        let pod = &pushed["Pod/fintech/payments-7d9f"].document;
        for never in [
            "hunter2",
            "env",
            "image",
            "command",
            "args",
            "volume",
            "last-applied",
            "managedFields",
            "nodeName",
            "hostIP",
        ] {
            assert!(!pod.contains(never), "`{never}` was pushed: {pod}");
        }
        for needed in ["payments-7d9f", "sidecar.istio.io/inject", "\"serviceAccountName\":\"payments\"", "10.0.0.9"] {
            assert!(pod.contains(needed), "`{needed}` is missing: {pod}");
        }
        let service = &pushed["Service/fintech/payments"].document;
        assert!(!service.contains("hunter2") && !service.contains("clusterIP"), "{service}");
        // Kept by the control plane, but its stored form is stripped all the same.
        let deployment = &snapshot.resource("Deployment/fintech/payments").expect("deployment").document;
        assert!(!deployment.contains("hunter2") && !deployment.contains("image"), "{deployment}");
    }

    #[test]
    fn loading_what_is_pushed_gives_the_same_workloads_services_and_registry() {
        let original = zmesh_config::load_str(CLUSTER);
        let pushed: Vec<String> = original
            .sources
            .iter()
            .map(|source| wire_form(&source.kind, &source.json).expect("an object").to_string())
            .collect();
        let stripped = zmesh_config::load_str(&pushed.join("\n---\n"));
        assert!(!stripped.has_errors(), "{:?}", stripped.diagnostics);
        // Positions in the text differ, and so do the annotations zmesh never reads.
        let normalize = |meta: &mut zmesh_config::meta::Meta| {
            meta.origin = Default::default();
            meta.annotations.retain(|key, _| istio_annotation(key));
        };
        let workloads = |loaded: &Loaded| {
            let mut workloads = loaded.config.workloads.clone();
            for workload in &mut workloads {
                normalize(&mut workload.meta);
                workload.pod_annotations.retain(|key, _| istio_annotation(key));
            }
            workloads
        };
        let services = |loaded: &Loaded| {
            let mut services = loaded.config.services.clone();
            services.iter_mut().for_each(|service| normalize(&mut service.meta));
            services
        };
        assert_eq!(workloads(&stripped), workloads(&original));
        assert_eq!(workloads(&original).len(), 2);
        assert_eq!(services(&stripped), services(&original));
        let registry = |loaded: &Loaded| {
            let mut all: Vec<MeshWorkload> =
                Registry::from_config(&loaded.config).workloads().map(|w| MeshWorkload::clone(w)).collect();
            all.sort_by_key(|w| w.address);
            all
        };
        assert_eq!(registry(&stripped), registry(&original));
        assert_eq!(registry(&original).len(), 1);
        let injection = |loaded: &Loaded| loaded.config.workloads.iter().map(|w| w.injection()).collect::<Vec<_>>();
        assert_eq!(injection(&stripped), [Some(true), Some(false)]);
        assert_eq!(injection(&stripped), injection(&original));
    }

    #[test]
    fn an_edit_to_what_no_proxy_receives_pushes_nothing() {
        let a = Snapshot::build(1, &zmesh_config::load_str(CLUSTER), SystemTime::UNIX_EPOCH);
        let rotated = CLUSTER.replace("value: hunter2}", "value: correct-horse}");
        let b = Snapshot::build_after(&a, 2, &zmesh_config::load_str(&rotated), SystemTime::UNIX_EPOCH);
        assert_eq!(a.version, b.version);
        assert!(b.changed.is_empty(), "{:?}", b.changed);
        let relabelled = CLUSTER.replace("version: v1", "version: v2");
        let c = Snapshot::build_after(&a, 3, &zmesh_config::load_str(&relabelled), SystemTime::UNIX_EPOCH);
        assert_eq!(c.changed, [Arc::from("Pod/fintech/payments-7d9f")]);
    }

    #[test]
    fn only_istio_annotations_are_kept() {
        assert!(istio_annotation("sidecar.istio.io/inject"));
        assert!(istio_annotation("istio.io/dry-run"));
        assert!(!istio_annotation("kubectl.kubernetes.io/last-applied-configuration"));
        assert!(!istio_annotation("notistio.io/x"));
        assert!(!istio_annotation("istio.io"));
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
