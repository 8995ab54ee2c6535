//! The admin and status API on 15014 (JSON): what the control plane has accepted, which
//! workloads exist, where every proxy stands, and which certificates are out.
//!
//! - `/api/v1/resources` — every document with its status (accepted, rejected with reasons,
//!   pending behind a refused change) and its warnings: what zmesh reads but does not enforce,
//!   each with its code (docs/diagnostic-codes.md), file:line, field and the text `zmesh
//!   validate` prints; warnings of no resource (a Sidecar zmesh skips) are listed under their
//!   file. Also the generation and version in force, and `warningCount`.
//! - `/api/v1/workloads` — the registry, with the proxies serving each workload
//! - `/api/v1/proxies` — connected proxies: version sent and acknowledged, SYNCED/STALE/NACKED,
//!   how long the current version took to reach them (or has been waiting)
//! - `/api/v1/certificates` — the latest SVID issued per identity, and the trust bundle
//! - `/api/v1/config/NAMESPACE/NAME` — exactly what the proxy of that workload is pushed (its
//!   resources with their keys, versions and load order), the version it makes, and the
//!   workload's proxies; `zmesh` commands compile it with the proxy's own code to answer
//!   questions about the configuration in force. Also `namespacePolicies`: every
//!   AuthorizationPolicy, PeerAuthentication and RequestAuthentication of the workload's
//!   namespace and of the root namespace, pushed to it or not (`pushed`), so `zmesh describe`
//!   can say which target it but select nothing, and why
//! - `/healthz/ready`

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::StatusCode;
use serde_json::{Value, json};
use tokio::sync::watch;
use zmesh_ca::Rfc3339;
use zmesh_telemetry::endpoints::Routes;

use crate::ca_service::{IssuedCertificates, SharedCa};
use crate::push::{ProxyStatus, ProxyTracker};
use crate::snapshot::Snapshot;
use crate::store::StoreState;

/// Everything the status API reads.
#[derive(Debug, Clone)]
pub struct StatusSources {
    pub store: watch::Receiver<Arc<StoreState>>,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub proxies: Arc<ProxyTracker>,
    pub issued: Arc<IssuedCertificates>,
    pub ca: SharedCa,
}

fn time(at: SystemTime) -> String {
    Rfc3339(at).to_string()
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// One proxy as `/api/v1/proxies` shows it. `lagMs`: for a SYNCED proxy, how long the
/// current version took from acceptance to acknowledgement; otherwise how long it has waited.
pub fn proxy_json(status: &ProxyStatus, snapshot: &Snapshot, now: SystemTime) -> Value {
    let state = status.sync_state(&snapshot.version);
    let since = |at: SystemTime| millis(at.duration_since(snapshot.created_at).unwrap_or_default());
    let lag = match (&status.acked, state) {
        (Some((_, at)), "SYNCED") => since(*at),
        _ if status.connected => since(now),
        _ => 0,
    };
    json!({
        "proxyId": status.proxy_id,
        "workload": status.workload,
        "identity": status.identity,
        "peer": status.peer.map(|p| p.to_string()),
        "buildVersion": status.build_version,
        "connected": status.connected,
        "connectedAt": time(status.connected_at),
        "disconnectedAt": status.disconnected_at.map(time),
        "state": state,
        "versionSent": status.sent.as_ref().map(|(v, _)| v.to_string()),
        "versionAcked": status.acked.as_ref().map(|(v, _)| v.to_string()),
        "ackedAt": status.acked.as_ref().map(|(_, at)| time(*at)),
        "lagMs": lag,
        "resources": status.resources,
        "nack": status.nacked.as_ref().map(|(v, error, at)| json!({"version": v.to_string(), "error": error, "at": time(*at)})),
    })
}

impl StatusSources {
    fn resources(&self) -> Value {
        let state = self.store.borrow().clone();
        let snapshot = self.snapshots.borrow().clone();
        let mut body = state.to_json();
        if let Some(object) = body.as_object_mut() {
            object.insert("version".into(), json!(snapshot.version.to_string()));
        }
        body
    }

    fn workloads(&self) -> Value {
        let snapshot = self.snapshots.borrow().clone();
        let proxies = self.proxies.list();
        let mut workloads: Vec<_> = snapshot.registry.workloads().collect();
        workloads.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let items: Vec<Value> = workloads
            .iter()
            .map(|w| {
                let key = format!("{}/{}", w.namespace, w.name);
                let serving: Vec<&str> =
                    proxies.iter().filter(|p| p.connected && p.workload == key).map(|p| p.proxy_id.as_str()).collect();
                json!({
                    "namespace": w.namespace,
                    "name": w.name,
                    "address": w.address.to_string(),
                    "identity": w.identity.to_string(),
                    "serviceAccount": w.service_account,
                    "labels": w.labels,
                    "ports": w.ports.iter().map(|p| json!({
                        "port": p.number,
                        "name": p.name,
                        "protocol": if p.is_http() { "HTTP" } else { "TCP" },
                    })).collect::<Vec<_>>(),
                    "proxies": serving,
                })
            })
            .collect();
        json!({"version": snapshot.version.to_string(), "workloads": items})
    }

    fn proxies(&self) -> Value {
        let snapshot = self.snapshots.borrow().clone();
        let now = SystemTime::now();
        let proxies: Vec<Value> = self.proxies.list().iter().map(|p| proxy_json(p, &snapshot, now)).collect();
        json!({
            "version": snapshot.version.to_string(),
            "generation": snapshot.generation,
            "acceptedAt": time(snapshot.created_at),
            "proxies": proxies,
        })
    }

    fn certificates(&self) -> Value {
        let now = SystemTime::now();
        let issued: Vec<Value> = self
            .issued
            .list()
            .iter()
            .map(|r| {
                json!({
                    "identity": r.identity,
                    "serial": r.serial,
                    "notBefore": time(r.not_before),
                    "notAfter": time(r.not_after),
                    "issuedAt": time(r.issued_at),
                    "secondsToExpiry": zmesh_ca::seconds_to_expiry(now, r.not_after),
                    "issuedSinceStart": r.count,
                })
            })
            .collect();
        let roots: Vec<Value> = zmesh_ca::inspect_pem(self.ca.current().trust_bundle_pem())
            .unwrap_or_default()
            .iter()
            .map(|root| {
                json!({
                    "subject": root.subject,
                    "serial": root.serial_hex,
                    "notAfter": time(root.not_after),
                    "secondsToExpiry": zmesh_ca::seconds_to_expiry(now, root.not_after),
                })
            })
            .collect();
        json!({"certificates": issued, "trustBundle": roots})
    }

    /// The slice of the configuration the proxy of `namespace/name` is pushed; `None` for a
    /// workload the registry does not know.
    fn workload_config(&self, namespace: &str, name: &str) -> Option<Value> {
        let snapshot = self.snapshots.borrow().clone();
        let workload = snapshot.registry.workload_named(namespace, name)?.clone();
        let mut resources: Vec<_> = snapshot.resources_for(Some(&workload)).into_values().collect();
        resources.sort_by(|a, b| a.key.cmp(&b.key));
        let key = format!("{namespace}/{name}");
        let now = SystemTime::now();
        let proxies: Vec<Value> =
            self.proxies.list().iter().filter(|p| p.workload == key).map(|p| proxy_json(p, &snapshot, now)).collect();
        let namespace_policies = self.namespace_policies(&snapshot, &workload);
        Some(json!({
            "workload": key,
            "version": snapshot.version.to_string(),
            "resources": resources.iter().map(|r| json!({
                "key": r.key.as_ref(),
                "version": r.version.as_ref(),
                "order": r.order,
                "document": r.document.as_ref(),
            })).collect::<Vec<_>>(),
            "proxies": proxies,
            "rootNamespace": self.store.borrow().loaded.config.mesh.root_namespace,
            "namespacePolicies": namespace_policies,
        }))
    }

    /// The policies that could select `workload` by where they live (its namespace and the root
    /// namespace), in the pushed form, whether they select it or not. Documents of a store state
    /// that the snapshot does not hold yet are left out: the answer stays one version's.
    fn namespace_policies(&self, snapshot: &Snapshot, workload: &zmesh_registry::MeshWorkload) -> Vec<Value> {
        const KINDS: [&str; 3] = ["AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication"];
        let state = self.store.borrow().clone();
        let root = state.loaded.config.mesh.root_namespace.as_str();
        let mut policies: Vec<Value> = state
            .loaded
            .sources
            .iter()
            .filter(|s| KINDS.contains(&s.kind.as_str()) && (s.namespace == workload.namespace || s.namespace == root))
            .filter_map(|source| {
                let key = crate::snapshot::resource_key(source);
                let resource = snapshot.resource(&key)?;
                Some(json!({
                    "key": resource.key.as_ref(),
                    "order": resource.order,
                    "document": resource.document.as_ref(),
                    "pushed": snapshot.applies(&key, Some(workload)).is_some(),
                }))
            })
            .collect();
        policies.sort_by(|a, b| a["key"].as_str().cmp(&b["key"].as_str()));
        policies.dedup_by(|a, b| a["key"] == b["key"]);
        policies
    }

    /// The route table for [`zmesh_telemetry::endpoints::serve`].
    pub fn routes(self) -> Routes {
        Arc::new(move |path| {
            let body = match path {
                "/healthz/ready" => return Some((StatusCode::OK, "text/plain", "ready\n".to_owned())),
                "/api/v1/resources" => self.resources(),
                "/api/v1/workloads" => self.workloads(),
                "/api/v1/proxies" => self.proxies(),
                "/api/v1/certificates" => self.certificates(),
                other => {
                    let workload = other.strip_prefix("/api/v1/config/")?;
                    let (namespace, name) = workload.split_once('/').filter(|(_, n)| !n.contains('/'))?;
                    match self.workload_config(namespace, name) {
                        Some(body) => body,
                        None => {
                            let message = json!({"error": format!("no workload {workload} in the registry; see /api/v1/workloads")});
                            return Some((StatusCode::NOT_FOUND, "application/json", format!("{message:#}\n")));
                        }
                    }
                }
            };
            Some((StatusCode::OK, "application/json", format!("{body:#}\n")))
        })
    }
}
