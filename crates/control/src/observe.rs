//! What the proxies observed, read from their metrics (`/stats/prometheus` on 15020): the
//! plaintext each one still receives and the verdict for a switch to STRICT (`assess`, shared
//! with `zmesh mtls-readiness` and `zmesh analyze --control-plane`), what they denied
//! (`denials`) and who talks to whom (`traffic`).
//!
//! Readiness: `zmesh_plaintext_connections_total` and `zmesh_plaintext_last_seen_seconds` per
//! destination port and source, `zmesh_mtls_dry_run_refusals_total` per port and dry-run
//! PeerAuthentication. A workload is SAFE when its proxy answered and no source sent plaintext
//! within the window; UNSAFE names who would break; a proxy that cannot be read, or that has no
//! plaintext inbound path to observe (explicit mode: plaintext reaches the app directly), is
//! UNKNOWN, never safe. Counts are since the proxy started (Prometheus counters); the window
//! applies to when each source was last seen.
//!
//! The control plane keeps the latest round of scrapes (`Observer`, refreshed every few seconds,
//! each scrape bounded in time and size, a bounded number at once), so its HTTP routes, which
//! are synchronous, only read a snapshot.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use zmesh_telemetry::scrape::{Sample, parse_prometheus};

use crate::push::ProxyTracker;
use crate::snapshot::Snapshot;

/// How long one proxy's metrics may take to arrive, connection included.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);
/// A proxy's metrics page larger than this is refused rather than read.
pub const MAX_SCRAPE_BYTES: usize = 16 << 20;
/// The port proxies serve their metrics on (Istio's 15020).
pub const METRICS_PORT: u16 = 15020;

/// GET `http://ADDR/stats/prometheus`, within [`SCRAPE_TIMEOUT`] and [`MAX_SCRAPE_BYTES`].
pub async fn scrape(addr: SocketAddr) -> Result<Vec<Sample>, String> {
    zmesh_telemetry::scrape::scrape(addr, SCRAPE_TIMEOUT, MAX_SCRAPE_BYTES).await
}

/// One workload whose proxy is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub namespace: String,
    pub name: String,
    pub address: IpAddr,
}

impl Target {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A source that sent plaintext to one port.
#[derive(Debug, Clone, PartialEq)]
pub struct PlaintextSource {
    /// `namespace/name` of a mesh workload, `unknown` (not a mesh workload's address) or `other`
    /// (beyond the proxy's bound of sources).
    pub workload: String,
    pub address: String,
    pub connections: u64,
    pub last_seen: i64,
}

impl PlaintextSource {
    /// The source as people read it: a workload with its address, or the address alone.
    pub fn who(&self) -> String {
        match self.workload.as_str() {
            "unknown" => self.address.clone(),
            "other" => "other sources (beyond the proxy's bound of sources it tracks)".to_owned(),
            workload => format!("{workload} ({})", self.address),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct PortReport {
    /// Sources last seen within the window, most recent first.
    pub sources: Vec<PlaintextSource>,
    /// Sources seen before the window only.
    pub older: usize,
    /// Connections a dry-run PeerAuthentication would have refused, by policy (since start).
    pub dry_run_refusals: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Safe,
    Unsafe,
    Unknown(String),
}

impl Verdict {
    /// SAFE, UNSAFE or UNKNOWN.
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Safe => "SAFE",
            Verdict::Unsafe => "UNSAFE",
            Verdict::Unknown(_) => "UNKNOWN",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadReport {
    pub target: Target,
    pub verdict: Verdict,
    pub ports: BTreeMap<String, PortReport>,
    /// When the proxy began observing (Unix time), when it says.
    pub observed_since: Option<i64>,
}

impl WorkloadReport {
    /// Connections the dry-run PeerAuthentications would have refused, over every port.
    pub fn dry_run_refusals(&self) -> BTreeMap<String, u64> {
        let mut total = BTreeMap::new();
        for port in self.ports.values() {
            for (policy, count) in &port.dry_run_refusals {
                *total.entry(policy.clone()).or_default() += count;
            }
        }
        total
    }
}

/// Unix seconds (negative before the epoch).
pub fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// The verdict for one workload from its proxy's metrics (or the error reading them), with
/// `now` and `window` deciding which sources still count.
pub fn assess(target: Target, scraped: Result<&[Sample], String>, now: SystemTime, window: Duration) -> WorkloadReport {
    let samples = match scraped {
        Ok(samples) => samples,
        Err(error) => {
            return WorkloadReport {
                target,
                verdict: Verdict::Unknown(error),
                ports: BTreeMap::new(),
                observed_since: None,
            };
        }
    };
    let now_s = unix_seconds(now);
    let since = now_s.saturating_sub(i64::try_from(window.as_secs()).unwrap_or(i64::MAX));
    let key = |s: &Sample| {
        (
            s.label("destination_port").to_owned(),
            s.label("source_workload").to_owned(),
            s.label("source_address").to_owned(),
        )
    };
    let last_seen: BTreeMap<_, i64> = samples
        .iter()
        .filter(|s| s.name == "zmesh_plaintext_last_seen_seconds")
        .map(|s| (key(s), s.value as i64))
        .collect();
    let mut ports: BTreeMap<String, PortReport> = BTreeMap::new();
    for sample in samples.iter().filter(|s| s.name == "zmesh_plaintext_connections_total") {
        let (port, workload, address) = key(sample);
        // A count without its last-seen time is counted as seen now: never hide a sender.
        let seen = last_seen.get(&key(sample)).copied().unwrap_or(now_s);
        let report = ports.entry(port).or_default();
        if seen >= since {
            report.sources.push(PlaintextSource {
                workload,
                address,
                connections: sample.value as u64,
                last_seen: seen,
            });
        } else {
            report.older += 1;
        }
    }
    for sample in samples.iter().filter(|s| s.name == "zmesh_mtls_dry_run_refusals_total") {
        let report = ports.entry(sample.label("destination_port").to_owned()).or_default();
        *report.dry_run_refusals.entry(sample.label("policy").to_owned()).or_default() += sample.value as u64;
    }
    for report in ports.values_mut() {
        report.sources.sort_by(|a, b| b.last_seen.cmp(&a.last_seen).then_with(|| a.address.cmp(&b.address)));
    }
    let observed_since =
        samples.iter().find(|s| s.name == "zmesh_plaintext_observed_since_seconds").map(|s| s.value as i64);
    let verdict = if ports.values().any(|p| !p.sources.is_empty()) {
        Verdict::Unsafe
    } else if observed_since.is_none() {
        // Only a proxy that serves a plaintext inbound path (transparent capture) says since
        // when it observes; without it, silence proves nothing.
        Verdict::Unknown(
            "its proxy does not observe plaintext inbound (explicit mode, or not a zmesh proxy): plaintext callers reach the app directly, unseen"
                .to_owned(),
        )
    } else {
        Verdict::Safe
    };
    WorkloadReport { target, verdict, ports, observed_since }
}

/// One line saying what the verdict means.
pub fn verdict_text(report: &WorkloadReport) -> String {
    match &report.verdict {
        Verdict::Safe => "SAFE to switch to STRICT: no plaintext within the window".to_owned(),
        Verdict::Unsafe => {
            let mut breaking: Vec<String> = Vec::new();
            for (port, p) in &report.ports {
                for s in &p.sources {
                    breaking.push(format!("{} on port {port}", s.who()));
                }
            }
            format!("UNSAFE: STRICT would refuse {}", breaking.join(", "))
        }
        Verdict::Unknown(why) => format!("UNKNOWN (not safe to assume): {why}"),
    }
}

/// The readiness JSON of `zmesh mtls-readiness -o json` and `/api/v1/mtls`.
pub fn readiness_json(reports: &[WorkloadReport], now: SystemTime, window: Duration) -> Value {
    let now_s = unix_seconds(now);
    let workloads: Vec<Value> = reports
        .iter()
        .map(|r| {
            let ports: Vec<Value> = r
                .ports
                .iter()
                .map(|(port, p)| {
                    json!({
                        "port": port,
                        "plaintextSources": p.sources.iter().map(|s| json!({
                            "workload": s.workload,
                            "address": s.address,
                            "connections": s.connections,
                            "lastSeen": s.last_seen,
                            "lastSeenSecondsAgo": now_s - s.last_seen,
                        })).collect::<Vec<_>>(),
                        "sourcesBeforeWindow": p.older,
                        "dryRunRefusals": p.dry_run_refusals.iter().map(|(policy, count)| json!({"policy": policy, "connections": count})).collect::<Vec<_>>(),
                    })
                })
                .collect();
            let reason = match &r.verdict {
                Verdict::Unknown(why) => json!(why),
                _ => Value::Null,
            };
            json!({
                "workload": r.target.key(),
                "address": r.target.address.to_string(),
                "verdict": r.verdict.label(),
                "reason": reason,
                "summary": verdict_text(r),
                "observedSince": r.observed_since,
                "ports": ports,
            })
        })
        .collect();
    json!({"windowSeconds": window.as_secs(), "now": now_s, "workloads": workloads})
}

/// A kind of refusal a proxy counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DenialKind {
    /// An HTTP request refused by AuthorizationPolicy (403).
    HttpRequest,
    /// A TCP connection refused by AuthorizationPolicy at L4.
    TcpConnection,
    /// A plaintext connection refused by an enforced STRICT PeerAuthentication.
    StrictPlaintext,
    /// A request refused by RequestAuthentication (an invalid or unaccepted token).
    Token,
    /// A request refused by the external authorizer of a CUSTOM policy (or its error).
    ExternalAuthorizer,
    /// A request over a local rate limit.
    RateLimited,
    /// A connection closed before it proved itself (handshake or first bytes too slow, too
    /// many from one source).
    Unproven,
}

impl DenialKind {
    pub fn describe(self) -> &'static str {
        match self {
            DenialKind::HttpRequest => "HTTP request denied by AuthorizationPolicy",
            DenialKind::TcpConnection => "TCP connection denied by AuthorizationPolicy",
            DenialKind::StrictPlaintext => "plaintext refused by STRICT PeerAuthentication",
            DenialKind::Token => "refused by RequestAuthentication",
            DenialKind::ExternalAuthorizer => "refused by an external authorizer (CUSTOM)",
            DenialKind::RateLimited => "over a local rate limit",
            DenialKind::Unproven => "closed before it proved itself",
        }
    }
}

/// Refusals one proxy counted since it started, summed per kind, source, policy, rule and
/// detail. Fields its metrics do not carry are empty.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Denial {
    pub kind: DenialKind,
    /// The caller's SPIFFE ID, `unknown` for plaintext, empty when not exported.
    pub source: String,
    pub policy: String,
    pub rule: String,
    /// Port, listener or reason, as the series says.
    pub detail: String,
    pub count: u64,
}

/// The refusals in one proxy's samples. The proxy's series say who was refused but (except for
/// dry-run and AUDIT series) not by which policy and rule: those are in its log lines.
pub fn denials(samples: &[Sample]) -> Vec<Denial> {
    let mut sums: BTreeMap<(DenialKind, String, String, String, String), u64> = BTreeMap::new();
    for s in samples {
        let kind = match (s.name.as_str(), s.label("decision"), s.label("result")) {
            ("zmesh_authz_decisions_total", "deny", _) => DenialKind::HttpRequest,
            ("istio_tcp_connections_opened_total", "deny", _) => DenialKind::TcpConnection,
            ("istio_tcp_connections_opened_total", "strict_refused", _) => DenialKind::StrictPlaintext,
            ("zmesh_jwt_authn_total", _, "denied") => DenialKind::Token,
            ("zmesh_ext_authz_total", _, "deny" | "error") => DenialKind::ExternalAuthorizer,
            ("zmesh_local_rate_limit_total", _, "rate_limited") => DenialKind::RateLimited,
            ("zmesh_connections_refused_total", _, _) => DenialKind::Unproven,
            _ => continue,
        };
        let count = s.value as u64;
        if count == 0 {
            continue;
        }
        let detail = match kind {
            DenialKind::TcpConnection | DenialKind::StrictPlaintext => format!("port {}", s.label("destination_port")),
            DenialKind::ExternalAuthorizer => s.label("result").to_owned(),
            DenialKind::RateLimited => s.label("stat_prefix").to_owned(),
            DenialKind::Unproven => format!("{}: {}", s.label("listener"), s.label("reason")),
            DenialKind::HttpRequest | DenialKind::Token => String::new(),
        };
        let key = (
            kind,
            s.label("source_principal").to_owned(),
            s.label("policy").to_owned(),
            s.label("rule").to_owned(),
            detail,
        );
        *sums.entry(key).or_default() += count;
    }
    sums.into_iter()
        .map(|((kind, source, policy, rule, detail), count)| Denial { kind, source, policy, rule, detail, count })
        .collect()
}

/// What a dry-run AuthorizationPolicy would have changed, by policy and shadow result.
pub fn dry_run_authz(samples: &[Sample]) -> BTreeMap<(String, String), u64> {
    let mut sums = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == "zmesh_authz_dry_run_total") {
        *sums.entry((s.label("policy").to_owned(), s.label("shadow_result").to_owned())).or_default() += s.value as u64;
    }
    sums
}

/// The certificate each identity's proxy holds, as seconds to its expiry when the page was
/// read (`zmesh_certificate_expiry_seconds`, computed by the proxy as it renders the page).
pub fn held_certificates(samples: &[Sample]) -> Vec<(String, i64)> {
    samples
        .iter()
        .filter(|s| s.name == "zmesh_certificate_expiry_seconds")
        .map(|s| (s.label("identity").to_owned(), s.value as i64))
        .collect()
}

/// Traffic into one workload from one caller, as its proxy (the destination's) counted it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Edge {
    /// The caller's SPIFFE ID; `unknown` for plaintext callers.
    pub source: String,
    /// `mutual_tls` or `none`.
    pub security: String,
    pub requests: u64,
    pub connections: u64,
}

/// The callers of one workload from its proxy's `istio_requests_total` (HTTP/1.1 requests) and
/// `istio_tcp_connections_opened_total` (L4-authorized connections), by source principal and
/// `connection_security_policy`.
pub fn traffic(samples: &[Sample]) -> Vec<Edge> {
    let mut sums: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for s in samples {
        let slot = match s.name.as_str() {
            "istio_requests_total" => 0,
            "istio_tcp_connections_opened_total" => 1,
            _ => continue,
        };
        let key = (s.label("source_principal").to_owned(), s.label("connection_security_policy").to_owned());
        let sum = sums.entry(key).or_default();
        if slot == 0 {
            sum.0 += s.value as u64;
        } else {
            sum.1 += s.value as u64;
        }
    }
    sums.into_iter()
        .filter(|(_, (requests, connections))| requests + connections > 0)
        .map(|((source, security), (requests, connections))| Edge { source, security, requests, connections })
        .collect()
}

/// The series the control plane keeps from a scrape; the rest is dropped at once, so a round
/// holds a few rows per workload, not whole pages.
fn kept(sample: &Sample) -> bool {
    sample.name.starts_with("zmesh_plaintext_")
        || matches!(
            sample.name.as_str(),
            "zmesh_mtls_dry_run_refusals_total"
                | "zmesh_authz_decisions_total"
                | "zmesh_authz_dry_run_total"
                | "zmesh_jwt_authn_total"
                | "zmesh_ext_authz_total"
                | "zmesh_local_rate_limit_total"
                | "zmesh_connections_refused_total"
                | "zmesh_certificate_expiry_seconds"
                | "istio_requests_total"
                | "istio_tcp_connections_opened_total"
        )
}

/// One workload's proxy, as the latest round read it.
#[derive(Debug, Clone)]
pub struct Observed {
    pub target: Target,
    pub at: SystemTime,
    pub scraped: Result<Vec<Sample>, String>,
}

/// The latest round of scrapes, by `namespace/name`.
#[derive(Debug, Clone, Default)]
pub struct Observations {
    /// When the latest round finished; `None` before the first.
    pub at: Option<SystemTime>,
    pub took: Duration,
    pub workloads: BTreeMap<String, Observed>,
}

/// How the control plane gathers observations.
#[derive(Debug, Clone, Copy)]
pub struct ObserveOptions {
    pub metrics_port: u16,
    /// Pause between rounds.
    pub interval: Duration,
    /// One scrape's limit, connection included.
    pub timeout: Duration,
    /// Scrapes in flight at once; a round takes at most `timeout` × ⌈proxies / concurrency⌉.
    pub concurrency: usize,
    /// A page larger than this is refused (its workload is UNKNOWN). With `concurrency`, it
    /// bounds what a round can hold in memory at once.
    pub max_bytes: usize,
}

impl Default for ObserveOptions {
    fn default() -> Self {
        ObserveOptions {
            metrics_port: METRICS_PORT,
            interval: Duration::from_secs(3),
            timeout: SCRAPE_TIMEOUT,
            concurrency: 16,
            max_bytes: 4 << 20,
        }
    }
}

/// The latest observations, shared between the round task and the HTTP routes.
#[derive(Debug, Clone, Default)]
pub struct Observer(Arc<Mutex<Arc<Observations>>>);

impl Observer {
    /// The latest round (cheap: an `Arc`).
    pub fn latest(&self) -> Arc<Observations> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn publish(&self, observations: Observations) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(observations);
    }

    /// Scrape every workload that has a connected proxy, a round every `options.interval`,
    /// until `shutdown`. A workload without one is not dialled: the routes call it UNKNOWN.
    pub async fn run(
        self,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        proxies: Arc<ProxyTracker>,
        options: ObserveOptions,
        shutdown: CancellationToken,
    ) {
        loop {
            let started = tokio::time::Instant::now();
            let round = self.round(&snapshots, &proxies, options);
            let observations = tokio::select! {
                observations = round => observations,
                () = shutdown.cancelled() => return,
            };
            let mut observations = observations;
            observations.took = started.elapsed();
            self.publish(observations);
            tokio::select! {
                () = tokio::time::sleep(options.interval) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    async fn round(
        &self,
        snapshots: &watch::Receiver<Arc<Snapshot>>,
        proxies: &ProxyTracker,
        options: ObserveOptions,
    ) -> Observations {
        let snapshot = snapshots.borrow().clone();
        let connected: std::collections::BTreeSet<String> =
            proxies.list().into_iter().filter(|p| p.connected).map(|p| p.workload).collect();
        let targets: Vec<Target> = snapshot
            .registry
            .workloads()
            .filter(|w| connected.contains(&format!("{}/{}", w.namespace, w.name)))
            .map(|w| Target { namespace: w.namespace.clone(), name: w.name.clone(), address: w.address })
            .collect();
        drop(snapshot);
        let slots = Arc::new(tokio::sync::Semaphore::new(options.concurrency.max(1)));
        let mut scrapes = tokio::task::JoinSet::new();
        for target in targets {
            let slots = slots.clone();
            scrapes.spawn(async move {
                let _slot = slots.acquire_owned().await;
                let addr = SocketAddr::new(target.address, options.metrics_port);
                let scraped = zmesh_telemetry::scrape::scrape(addr, options.timeout, options.max_bytes)
                    .await
                    .map(|samples| samples.into_iter().filter(kept).collect());
                Observed { target, at: SystemTime::now(), scraped }
            });
        }
        let mut workloads = BTreeMap::new();
        while let Some(joined) = scrapes.join_next().await {
            if let Ok(observed) = joined {
                workloads.insert(observed.target.key(), observed);
            }
        }
        Observations { at: Some(SystemTime::now()), took: Duration::ZERO, workloads }
    }
}

#[cfg(test)]
mod tests;
