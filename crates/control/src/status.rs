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
//! - `/api/v1/mtls?window=1h` — per workload, the verdict for a switch to STRICT (SAFE, UNSAFE,
//!   UNKNOWN), the sources that sent plaintext within the window per port with counts and last
//!   seen, and what the STRICT dry-run would have refused per policy, from the latest round of
//!   scrapes of the proxies' metrics (`observe`)
//! - `/dashboard` — the security dashboard (`dashboard`), HTML
//! - `/healthz/ready`

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::StatusCode;
use serde_json::{Value, json};
use tokio::sync::watch;
use zmesh_ca::Rfc3339;
use zmesh_telemetry::endpoints::QueryRoutes;

use crate::ca_service::{IssuedCertificates, SharedCa};
use crate::dashboard::{CertRow, Page, ProxyRow, WorkloadRow};
use crate::observe::{Observations, Observer, Target, WorkloadReport};
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
    /// The latest round of scrapes of the proxies' metrics.
    pub observer: Observer,
}

/// The readiness window when a request names none.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3600);

/// `window=…` of a query string (such as `1h`, `30m`, `90s`); the default when absent.
pub fn window_of(query: &str) -> Result<Duration, String> {
    let Some(text) = query.split('&').find_map(|pair| pair.strip_prefix("window=")) else {
        return Ok(DEFAULT_WINDOW);
    };
    zmesh_config::authn::parse_duration(text)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("window `{text}` is not a duration such as 1h, 30m or 90s"))
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

    /// The readiness of every workload of the registry (by `namespace/name`) from the latest
    /// observations: a workload without a connected proxy, or not read yet, is UNKNOWN.
    fn readiness(&self, observations: &Observations, now: SystemTime, window: Duration) -> Vec<WorkloadReport> {
        let snapshot = self.snapshots.borrow().clone();
        let connected: std::collections::BTreeSet<String> =
            self.proxies.list().into_iter().filter(|p| p.connected).map(|p| p.workload).collect();
        let mut workloads: Vec<_> = snapshot.registry.workloads().collect();
        workloads.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        workloads
            .into_iter()
            .map(|w| {
                let target = Target { namespace: w.namespace.clone(), name: w.name.clone(), address: w.address };
                let key = target.key();
                let scraped = match observations.workloads.get(&key) {
                    Some(observed) => observed.scraped.as_deref().map_err(Clone::clone),
                    None if !connected.contains(&key) => Err(
                        "no proxy of this workload is connected to the control plane, so none was read (without a proxy it has no mTLS at all)"
                            .to_owned(),
                    ),
                    None => Err("its proxy has not been read yet; retry in a few seconds".to_owned()),
                };
                crate::observe::assess(target, scraped, now, window)
            })
            .collect()
    }

    fn mtls(&self, window: Duration) -> Value {
        let observations = self.observer.latest();
        let now = SystemTime::now();
        let reports = self.readiness(&observations, now, window);
        let mut body = crate::observe::readiness_json(&reports, now, window);
        if let Some(workloads) = body.get_mut("workloads").and_then(Value::as_array_mut) {
            for (item, report) in workloads.iter_mut().zip(&reports) {
                let observed = observations.workloads.get(&report.target.key());
                item["scrapedAt"] = json!(observed.map(|o| time(o.at)));
                item["dryRunRefusals"] = json!(
                    report
                        .dry_run_refusals()
                        .iter()
                        .map(|(policy, count)| json!({"policy": policy, "connections": count}))
                        .collect::<Vec<_>>()
                );
            }
        }
        body["observedAt"] = json!(observations.at.map(time));
        body
    }

    /// Everything the dashboard shows, at `now`.
    pub fn page(&self, now: SystemTime, window: Duration) -> Page {
        let snapshot = self.snapshots.borrow().clone();
        let observations = self.observer.latest();
        let tracked = self.proxies.list();
        let proxies: Vec<ProxyRow> = tracked
            .iter()
            .map(|p| {
                let json = proxy_json(p, &snapshot, now);
                ProxyRow {
                    proxy_id: p.proxy_id.clone(),
                    workload: p.workload.clone(),
                    connected: p.connected,
                    state: p.sync_state(&snapshot.version).to_owned(),
                    version_acked: p.acked.as_ref().map(|(v, _)| v.to_string()),
                    lag_ms: json["lagMs"].as_u64().unwrap_or_default(),
                    build_version: p.build_version.clone(),
                    nack: p.nacked.as_ref().map(|(v, error, _)| format!("{v}: {error}")),
                }
            })
            .collect();
        let reports = self.readiness(&observations, now, window);
        let workloads = reports
            .into_iter()
            .map(|readiness| {
                let key = readiness.target.key();
                let observed = observations.workloads.get(&key);
                let samples = observed.and_then(|o| o.scraped.as_ref().ok());
                let held_certificates = match (observed, samples) {
                    (Some(observed), Some(samples)) => crate::observe::held_certificates(samples)
                        .into_iter()
                        .map(|(identity, seconds)| {
                            let offset = Duration::from_secs(seconds.unsigned_abs());
                            let not_after = if seconds >= 0 { observed.at + offset } else { observed.at - offset };
                            (identity, not_after)
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                let identity = snapshot
                    .registry
                    .workload_named(&readiness.target.namespace, &readiness.target.name)
                    .map(|w| w.identity.to_string())
                    .unwrap_or_default();
                WorkloadRow {
                    address: readiness.target.address.to_string(),
                    identity,
                    connected_proxies: tracked.iter().filter(|p| p.connected && p.workload == key).count(),
                    denials: samples.map(|s| crate::observe::denials(s)).unwrap_or_default(),
                    dry_run_authz: samples.map(|s| crate::observe::dry_run_authz(s)).unwrap_or_default(),
                    callers: samples.map(|s| crate::observe::traffic(s)).unwrap_or_default(),
                    scraped: samples.is_some(),
                    held_certificates,
                    key,
                    readiness,
                }
            })
            .collect();
        let certificates = self
            .issued
            .list()
            .iter()
            .map(|r| CertRow {
                name: r.identity.clone(),
                serial: r.serial.clone(),
                not_before: r.not_before,
                not_after: r.not_after,
            })
            .collect();
        let roots = zmesh_ca::inspect_pem(self.ca.current().trust_bundle_pem())
            .unwrap_or_default()
            .into_iter()
            .map(|root| CertRow {
                name: root.subject,
                serial: root.serial_hex,
                not_before: root.not_before,
                not_after: root.not_after,
            })
            .collect();
        Page {
            now,
            window,
            version: snapshot.version.to_string(),
            generation: snapshot.generation,
            proxies,
            workloads,
            certificates,
            roots,
            observed_at: observations.at,
        }
    }

    /// The route table for [`zmesh_telemetry::endpoints::serve_queries`].
    pub fn routes(self) -> QueryRoutes {
        Arc::new(move |path, query| {
            let body = match path {
                "/healthz/ready" => return Some((StatusCode::OK, "text/plain", "ready\n".to_owned())),
                "/api/v1/mtls" | "/dashboard" => {
                    let window = match window_of(query) {
                        Ok(window) => window,
                        Err(error) => {
                            let message = json!({"error": error});
                            return Some((StatusCode::BAD_REQUEST, "application/json", format!("{message:#}\n")));
                        }
                    };
                    if path == "/dashboard" {
                        let html = crate::dashboard::render(&self.page(SystemTime::now(), window));
                        return Some((StatusCode::OK, "text/html; charset=utf-8", html));
                    }
                    self.mtls(window)
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_comes_from_the_query_and_defaults_to_an_hour() {
        assert_eq!(window_of(""), Ok(DEFAULT_WINDOW));
        assert_eq!(window_of("window=30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(window_of("x=1&window=90s"), Ok(Duration::from_secs(90)));
        assert!(window_of("window=soon").is_err_and(|e| e.contains("`soon`")));
        assert!(window_of("window=0s").is_err(), "an empty window would call everything SAFE");
    }
}
