//! `zmesh mtls-readiness`: is it safe to switch a workload to STRICT?
//!
//! The workloads (and their addresses) come from the control plane's status API; what each
//! proxy observed comes from its own metrics port (`/stats/prometheus` on 15020, the only path
//! it serves): `zmesh_plaintext_connections_total` and `zmesh_plaintext_last_seen_seconds` per
//! destination port and source, and `zmesh_mtls_dry_run_refusals_total` per port and dry-run
//! PeerAuthentication. A workload is SAFE when its proxy answered and no source sent plaintext
//! within the window; UNSAFE names who would break; a proxy that cannot be read, or that has
//! no plaintext inbound path to observe (explicit mode: plaintext reaches the app directly), is
//! UNKNOWN, never safe. Counts are since the proxy started (Prometheus counters); the window applies to
//! when each source was last seen.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::{EXIT_FINDINGS, UsageError};

/// How long one proxy's metrics may take to arrive, connection included.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);
/// A proxy's metrics page larger than this is refused rather than read.
const MAX_SCRAPE_BYTES: usize = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    Text,
    Json,
    Yaml,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ReadinessArgs {
    /// A namespace, or one workload as NAMESPACE/NAME; every workload when omitted.
    #[arg(value_name = "NAMESPACE|WORKLOAD")]
    selection: Option<String>,
    /// Sources last seen longer ago than this are not counted (such as 1h, 30m, 90s).
    #[arg(long, default_value = "1h", value_parser = parse_window)]
    window: Duration,
    /// The control plane's status API.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:15014")]
    control_plane: String,
    /// The port each proxy serves its metrics on.
    #[arg(long, default_value_t = zmesh_proxy::capture::METRICS_PORT)]
    metrics_port: u16,
    /// Text for people, JSON or YAML for scripts.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    output: Format,
}

pub(crate) fn parse_window(text: &str) -> Result<Duration, String> {
    zmesh_config::authn::parse_duration(text)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("`{text}` is not a duration such as 1h, 30m or 90s"))
}

/// One workload as the status API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub namespace: String,
    pub name: String,
    pub address: IpAddr,
}

impl Target {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The workloads of `/api/v1/workloads` that `selection` names (all when `None`).
pub(crate) fn select(workloads: &Value, selection: Option<&str>) -> anyhow::Result<Vec<Target>> {
    let items = workloads
        .get("workloads")
        .and_then(Value::as_array)
        .context("the status API's /api/v1/workloads has no `workloads` list")?;
    let mut targets = Vec::new();
    for item in items {
        let text = |field: &str| item.get(field).and_then(Value::as_str).unwrap_or_default().to_owned();
        let (namespace, name) = (text("namespace"), text("name"));
        let address: IpAddr = text("address")
            .parse()
            .with_context(|| format!("workload {namespace}/{name} has no valid address in /api/v1/workloads"))?;
        let selected = match selection {
            None => true,
            Some(wanted) if wanted.contains('/') => wanted == format!("{namespace}/{name}"),
            Some(wanted) => wanted == namespace,
        };
        if selected {
            targets.push(Target { namespace, name, address });
        }
    }
    if targets.is_empty()
        && let Some(wanted) = selection
    {
        return Err(UsageError(format!(
            "no workload matches `{wanted}`; give a namespace or NAMESPACE/NAME as `zmesh proxy-status` lists them"
        ))
        .into());
    }
    Ok(targets)
}

/// One sample of the Prometheus text format: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The samples of a Prometheus text page; comments and lines that do not parse are skipped
/// (a series zmesh does not read cannot change the verdict).
pub(crate) fn parse_prometheus(text: &str) -> Vec<Sample> {
    text.lines().filter(|l| !l.starts_with('#')).filter_map(parse_sample).collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let (name, mut rest) = line.split_at(name_end);
    let mut labels = BTreeMap::new();
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            inner = inner.trim_start_matches([',', ' ']);
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = inner.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next()? {
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    (i, '"') => break i,
                    (_, c) => value.push(c),
                }
            };
            labels.insert(key.trim().to_owned(), value);
            inner = &after[end + 1..];
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample { name: name.to_owned(), labels, value })
}

/// A source that sent plaintext to one port.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PlaintextSource {
    /// `namespace/name` of a mesh workload, `unknown` (not a mesh workload's address) or `other`
    /// (beyond the proxy's bound of sources).
    pub workload: String,
    pub address: String,
    pub connections: u64,
    pub last_seen: i64,
}

impl PlaintextSource {
    pub(crate) fn who(&self) -> String {
        match self.workload.as_str() {
            "unknown" => self.address.clone(),
            "other" => format!("other sources (beyond the proxy's bound of {})", zmesh_proxy::observed::MAX_SOURCES),
            workload => format!("{workload} ({})", self.address),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct PortReport {
    /// Sources last seen within the window, most recent first.
    pub sources: Vec<PlaintextSource>,
    /// Sources seen before the window only.
    pub older: usize,
    /// Connections a dry-run PeerAuthentication would have refused, by policy (since start).
    pub dry_run_refusals: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    Safe,
    Unsafe,
    Unknown(String),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WorkloadReport {
    pub target: Target,
    pub verdict: Verdict,
    pub ports: BTreeMap<String, PortReport>,
    /// When the proxy began observing (Unix time), when it says.
    pub observed_since: Option<i64>,
}

/// The verdict for one workload from its proxy's metrics (or the error reading them), with
/// `now` and `window` deciding which sources still count.
pub(crate) fn assess(
    target: Target,
    scraped: Result<Vec<Sample>, String>,
    now: SystemTime,
    window: Duration,
) -> WorkloadReport {
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
    let now_s = crate::readiness::unix(now);
    let since = now_s.saturating_sub(i64::try_from(window.as_secs()).unwrap_or(i64::MAX));
    let label = |s: &Sample, k: &str| s.labels.get(k).cloned().unwrap_or_default();
    let key = |s: &Sample| (label(s, "destination_port"), label(s, "source_workload"), label(s, "source_address"));
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
        let report = ports.entry(label(sample, "destination_port")).or_default();
        *report.dry_run_refusals.entry(label(sample, "policy")).or_default() += sample.value as u64;
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

pub(crate) fn unix(time: SystemTime) -> i64 {
    zmesh_proxy::observed::unix_seconds(time)
}

fn verdict_text(report: &WorkloadReport) -> String {
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

fn to_json(reports: &[WorkloadReport], now: SystemTime, window: Duration) -> Value {
    let now_s = unix(now);
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
            let (verdict, reason) = match &r.verdict {
                Verdict::Safe => ("SAFE", Value::Null),
                Verdict::Unsafe => ("UNSAFE", Value::Null),
                Verdict::Unknown(why) => ("UNKNOWN", json!(why)),
            };
            json!({
                "workload": r.target.key(),
                "address": r.target.address.to_string(),
                "verdict": verdict,
                "reason": reason,
                "summary": verdict_text(r),
                "observedSince": r.observed_since,
                "ports": ports,
            })
        })
        .collect();
    json!({"windowSeconds": window.as_secs(), "now": now_s, "workloads": workloads})
}

fn print_text(reports: &[WorkloadReport], now: SystemTime, window: Duration) {
    let now_s = unix(now);
    outln!("Plaintext seen within the last {}s (counts since each proxy started)", window.as_secs());
    for r in reports {
        outln!("\n{} ({})", r.target.key(), r.target.address);
        if let Some(since) = r.observed_since
            && now_s - since < i64::try_from(window.as_secs()).unwrap_or(i64::MAX)
        {
            outln!("  note: its proxy has observed for only {}s of the window", now_s - since);
        }
        for (port, p) in &r.ports {
            outln!("  port {port}:");
            for s in &p.sources {
                outln!("    {:<48} {:>8} connections, last {}s ago", s.who(), s.connections, now_s - s.last_seen);
            }
            if p.older > 0 {
                outln!("    ({} source(s) seen only before the window)", p.older);
            }
            for (policy, count) in &p.dry_run_refusals {
                outln!("    STRICT dry-run {policy}: would have refused {count} connection(s)");
            }
        }
        outln!("  verdict: {}", verdict_text(r));
    }
}

/// JSON written as YAML (block style; strings double-quoted, as JSON quotes them).
fn yaml(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                match v {
                    Value::Object(m) if !m.is_empty() => {
                        out.push_str(&format!("{pad}{k}:\n"));
                        yaml(v, indent + 2, out);
                    }
                    Value::Array(a) if !a.is_empty() => {
                        out.push_str(&format!("{pad}{k}:\n"));
                        yaml(v, indent, out);
                    }
                    _ => out.push_str(&format!("{pad}{k}: {}\n", scalar(v))),
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                let mut inner = String::new();
                yaml(item, indent + 2, &mut inner);
                // The first line of the item goes after the dash.
                let inner = inner.strip_prefix(&" ".repeat(indent + 2)).unwrap_or(&inner).to_owned();
                out.push_str(&format!("{pad}- {inner}"));
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::Object(_) => "{}".to_owned(),
        Value::Array(_) => "[]".to_owned(),
        other => other.to_string(),
    }
}

/// GET `http://ADDR/stats/prometheus`, bounded in time and size.
pub(crate) async fn scrape(addr: SocketAddr) -> Result<Vec<Sample>, String> {
    let fetch = async {
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("cannot reach {addr}: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        tokio::spawn(connection);
        let request = http::Request::get("/stats/prometheus")
            .header(http::header::HOST, addr.to_string())
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| format!("{addr}: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("http://{addr}/stats/prometheus answered {status}"));
        }
        let body =
            http_body_util::BodyExt::collect(http_body_util::Limited::new(response.into_body(), MAX_SCRAPE_BYTES))
                .await
                .map_err(|e| format!("http://{addr}/stats/prometheus: {e}"))?
                .to_bytes();
        let text = std::str::from_utf8(&body).map_err(|_| format!("http://{addr}/stats/prometheus is not UTF-8"))?;
        Ok(parse_prometheus(text))
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, fetch)
        .await
        .unwrap_or_else(|_| Err(format!("http://{addr}/stats/prometheus: no answer within {SCRAPE_TIMEOUT:?}")))
}

pub(crate) fn mtls_readiness(args: ReadinessArgs) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let reports = runtime.block_on(async {
        let workloads = crate::control::get_json(&args.control_plane, "/api/v1/workloads").await?;
        let targets = select(&workloads, args.selection.as_deref())?;
        let mut scrapes = tokio::task::JoinSet::new();
        for (index, target) in targets.iter().enumerate() {
            let addr = SocketAddr::new(target.address, args.metrics_port);
            scrapes.spawn(async move { (index, scrape(addr).await) });
        }
        let mut scraped: BTreeMap<usize, Result<Vec<Sample>, String>> = BTreeMap::new();
        while let Some(joined) = scrapes.join_next().await {
            let (index, result) = joined.context("a scrape task failed")?;
            scraped.insert(index, result);
        }
        let now = SystemTime::now();
        let reports: Vec<WorkloadReport> = targets
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                assess(t, scraped.remove(&i).unwrap_or_else(|| Err("not scraped".to_owned())), now, args.window)
            })
            .collect();
        anyhow::Ok((reports, now))
    })?;
    let (reports, now) = reports;
    match args.output {
        Format::Text => print_text(&reports, now, args.window),
        Format::Json => outln!("{:#}", to_json(&reports, now, args.window)),
        Format::Yaml => {
            let mut text = String::new();
            yaml(&to_json(&reports, now, args.window), 0, &mut text);
            out!("{text}");
        }
    }
    Ok(if reports.iter().all(|r| r.verdict == Verdict::Safe) { 0 } else { EXIT_FINDINGS })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds as u64)
    }

    fn target() -> Target {
        Target { namespace: "shop".into(), name: "backend".into(), address: "10.79.0.3".parse().unwrap() }
    }

    const PAGE: &str = "# HELP zmesh_plaintext_connections_total Plaintext.\n\
# TYPE zmesh_plaintext_connections_total counter\n\
zmesh_plaintext_connections_total{destination_port=\"8080\",source_workload=\"unknown\",source_address=\"10.79.0.9\"} 3\n\
zmesh_plaintext_connections_total{destination_port=\"8080\",source_workload=\"shop/old\",source_address=\"10.79.0.8\"} 5\n\
zmesh_plaintext_last_seen_seconds{destination_port=\"8080\",source_workload=\"unknown\",source_address=\"10.79.0.9\"} 1000\n\
zmesh_plaintext_last_seen_seconds{destination_port=\"8080\",source_workload=\"shop/old\",source_address=\"10.79.0.8\"} 100\n\
zmesh_mtls_dry_run_refusals_total{destination_port=\"8080\",policy=\"shop/strict\"} 8\n\
zmesh_plaintext_observed_since_seconds 50\n\
istio_requests_total{note=\"a\\\"b,c=\\\"d\\\\\"} 2\n";

    #[test]
    fn prometheus_text_parses_with_escaped_label_values() {
        let samples = parse_prometheus(PAGE);
        assert_eq!(samples.len(), 7);
        assert_eq!(samples[0].labels["source_address"], "10.79.0.9");
        assert_eq!(samples[0].value, 3.0);
        assert_eq!(samples[6].labels["note"], "a\"b,c=\"d\\");
        assert_eq!(parse_prometheus("up 1\n")[0].value, 1.0);
    }

    #[test]
    fn a_source_seen_within_the_window_makes_the_workload_unsafe_and_is_named() {
        let report = assess(target(), Ok(parse_prometheus(PAGE)), at(1010), Duration::from_secs(60));
        assert_eq!(report.verdict, Verdict::Unsafe);
        let port = &report.ports["8080"];
        assert_eq!(port.sources.len(), 1);
        assert_eq!(port.sources[0].address, "10.79.0.9");
        assert_eq!(port.sources[0].connections, 3);
        assert_eq!(port.older, 1, "shop/old was last seen before the window");
        assert_eq!(port.dry_run_refusals["shop/strict"], 8);
        assert!(verdict_text(&report).contains("10.79.0.9 on port 8080"), "{}", verdict_text(&report));
    }

    #[test]
    fn sources_all_seen_before_the_window_leave_the_workload_safe() {
        let report = assess(target(), Ok(parse_prometheus(PAGE)), at(2000), Duration::from_secs(60));
        assert_eq!(report.verdict, Verdict::Safe);
        assert_eq!(report.ports["8080"].older, 2);
    }

    #[test]
    fn a_proxy_that_cannot_be_read_or_shows_nothing_is_unknown_never_safe() {
        let unreachable = assess(target(), Err("cannot reach".into()), at(0), Duration::from_secs(60));
        assert!(matches!(unreachable.verdict, Verdict::Unknown(_)));
        let empty = assess(target(), Ok(Vec::new()), at(0), Duration::from_secs(60));
        assert!(matches!(empty.verdict, Verdict::Unknown(_)));
        // A proxy without a plaintext inbound path exports no observation start.
        let explicit = parse_prometheus("zmesh_certificate_expiry_seconds 100\n");
        let explicit = assess(target(), Ok(explicit), at(0), Duration::from_secs(60));
        assert!(matches!(&explicit.verdict, Verdict::Unknown(why) if why.contains("explicit mode")), "{explicit:?}");
    }

    #[test]
    fn selection_takes_a_namespace_or_one_workload_and_refuses_what_matches_nothing() {
        let workloads = json!({"workloads": [
            {"namespace": "shop", "name": "backend", "address": "10.79.0.3"},
            {"namespace": "shop", "name": "frontend", "address": "10.79.0.2"},
            {"namespace": "ops", "name": "batch", "address": "10.79.0.5"},
        ]});
        assert_eq!(select(&workloads, None).unwrap().len(), 3);
        assert_eq!(select(&workloads, Some("shop")).unwrap().len(), 2);
        assert_eq!(select(&workloads, Some("shop/backend")).unwrap(), vec![target()]);
        assert!(select(&workloads, Some("shop/nothing")).is_err());
    }

    #[test]
    fn yaml_output_nests_maps_and_lists() {
        let mut text = String::new();
        yaml(&json!({"a": 1, "b": [{"c": "x", "d": []}], "e": {"f": null}}), 0, &mut text);
        assert_eq!(text, "a: 1\nb:\n- c: \"x\"\n  d: []\ne:\n  f: null\n");
    }
}
