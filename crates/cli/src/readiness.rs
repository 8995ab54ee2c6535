//! `zmesh mtls-readiness`: is it safe to switch a workload to STRICT?
//!
//! The workloads (and their addresses) come from the control plane's status API; what each
//! proxy observed comes from its own metrics port, read and judged by the same code the control
//! plane's `/api/v1/mtls` and dashboard use (`zmesh_control::observe`) (`/stats/prometheus` on 15020, the only path
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
use serde_json::Value;
use zmesh_control::observe::{Sample, Target, Verdict, WorkloadReport, assess, scrape};
use zmesh_control::observe::{readiness_json, unix_seconds, verdict_text};

use crate::output::{Format, to_yaml};
use crate::{EXIT_FINDINGS, UsageError};

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

fn print_text(reports: &[WorkloadReport], now: SystemTime, window: Duration) {
    let now_s = unix_seconds(now);
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
                let scraped = scraped.remove(&i).unwrap_or_else(|| Err("not scraped".to_owned()));
                assess(t, scraped.as_deref().map_err(Clone::clone), now, args.window)
            })
            .collect();
        anyhow::Ok((reports, now))
    })?;
    let (reports, now) = reports;
    match args.output {
        Format::Text => print_text(&reports, now, args.window),
        Format::Json => outln!("{:#}", readiness_json(&reports, now, args.window)),
        Format::Yaml => out!("{}", to_yaml(&readiness_json(&reports, now, args.window))),
    }
    Ok(if reports.iter().all(|r| r.verdict == Verdict::Safe) { 0 } else { EXIT_FINDINGS })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn target() -> Target {
        Target { namespace: "shop".into(), name: "backend".into(), address: "10.79.0.3".parse().unwrap() }
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
}
