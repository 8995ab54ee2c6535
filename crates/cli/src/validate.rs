//! `zmesh validate` and `zmesh analyze`.

use std::path::PathBuf;

use zmesh_config::{Diagnostic, Loaded, Severity};

use crate::EXIT_FINDINGS;

#[derive(Debug, clap::Args)]
pub(crate) struct ValidateArgs {
    /// Files or directories (every *.yaml / *.yml below them).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Also show notes about documents zmesh skips.
    #[arg(long)]
    verbose: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub(crate) enum Threshold {
    Error,
    Warning,
    Info,
}

impl Threshold {
    fn reached_by(self, severity: Severity) -> bool {
        match self {
            Threshold::Error => severity == Severity::Error,
            Threshold::Warning => severity != Severity::Info,
            Threshold::Info => true,
        }
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct AnalyzeArgs {
    /// Files or directories (every *.yaml / *.yml below them).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// A MeshConfig file (the `mesh` key of Istio's ConfigMap, fields at the top level).
    #[arg(long, value_name = "FILE")]
    mesh_config: Option<PathBuf>,
    /// Lowest level that makes the command exit 1.
    #[arg(long, value_enum, default_value = "warning")]
    failure_threshold: Threshold,
    /// Lowest level printed.
    #[arg(long, value_enum, default_value = "warning")]
    output_threshold: Threshold,
    /// Also hold the STRICT PeerAuthentications against live traffic: read the running mesh's
    /// workloads from this status API and each proxy's plaintext observations from its metrics
    /// port (as `zmesh mtls-readiness` does); a STRICT that would refuse someone is ZM1011.
    #[arg(long, value_name = "URL")]
    control_plane: Option<String>,
    /// With --control-plane: how far back plaintext counts, such as 1h or 30m.
    #[arg(long, default_value = "1h", value_parser = crate::readiness::parse_window)]
    window: std::time::Duration,
    /// With --control-plane: the proxies' metrics port.
    #[arg(long, default_value_t = zmesh_proxy::capture::METRICS_PORT)]
    metrics_port: u16,
}

/// The plaintext each live workload's proxy saw within `window`, per port, for ZM1011. A proxy
/// that cannot be read is named on stderr: its silence proves nothing.
fn plaintext_seen(
    status_api: &str,
    window: std::time::Duration,
    metrics_port: u16,
) -> anyhow::Result<Vec<zmesh_policy::analyze::PlaintextSeen>> {
    use crate::readiness::select;
    use zmesh_control::observe::{Verdict, assess, scrape};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let listed = crate::control::get_json(status_api, "/api/v1/workloads").await?;
        let now = std::time::SystemTime::now();
        let mut seen = Vec::new();
        for target in select(&listed, None)? {
            let item = listed["workloads"]
                .as_array()
                .and_then(|all| all.iter().find(|w| w["namespace"] == target.namespace && w["name"] == target.name))
                .cloned()
                .unwrap_or_default();
            let labels = item["labels"]
                .as_object()
                .map(|l| l.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
                .unwrap_or_default();
            let as_policy_sees_it = zmesh_policy::Workload {
                namespace: target.namespace.clone(),
                labels,
                service_account: item["serviceAccount"].as_str().unwrap_or_default().to_owned(),
            };
            let workload = format!("{}/{}", target.namespace, target.name);
            let scraped = scrape(std::net::SocketAddr::new(target.address, metrics_port)).await;
            let report = assess(target, scraped.as_deref().map_err(Clone::clone), now, window);
            if let Verdict::Unknown(why) = &report.verdict {
                eprintln!("note: no live plaintext data for {workload}: {why}");
            }
            for (port, observed) in &report.ports {
                let Ok(port) = port.parse::<u16>() else { continue };
                if observed.sources.is_empty() {
                    continue;
                }
                seen.push(zmesh_policy::analyze::PlaintextSeen {
                    workload: workload.clone(),
                    as_policy_sees_it: as_policy_sees_it.clone(),
                    port,
                    senders: observed.sources.iter().map(|s| s.who()).collect(),
                    connections: observed.sources.iter().map(|s| s.connections).sum(),
                    window: humantime(window),
                });
            }
        }
        anyhow::Ok(seen)
    })
}

fn humantime(window: std::time::Duration) -> String {
    let secs = window.as_secs();
    match secs {
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn load(paths: &[PathBuf], mesh: Option<&std::path::Path>) -> Loaded {
    zmesh_config::load_paths(paths, mesh)
}

pub(crate) fn validate(args: &ValidateArgs) -> anyhow::Result<u8> {
    let loaded = load(&args.paths, None);
    for diagnostic in &loaded.diagnostics {
        if diagnostic.severity != Severity::Info || args.verbose {
            eprintln!("{diagnostic}");
        }
    }
    let errors = loaded.errors().count();
    if errors > 0 {
        eprintln!("✘ {errors} error(s) in {} document(s) from {} file(s)", loaded.documents, loaded.files);
        return Ok(EXIT_FINDINGS);
    }
    // Warnings do not fail validation: they name configuration zmesh reads but does not
    // apply (docs/diagnostic-codes.md), which Istio would accept.
    let warnings = loaded.diagnostics.iter().filter(|d| d.severity == Severity::Warning).count();
    let note = if warnings > 0 { format!(", with {warnings} warning(s)") } else { String::new() };
    eprintln!("✔ {} document(s) in {} file(s) are valid{note}", loaded.documents, loaded.files);
    Ok(0)
}

/// istioctl's line shape: `Level [CODE] (Kind ns/name file:line) message`.
pub(crate) fn analyzer_line(diagnostic: &Diagnostic) -> String {
    let code = diagnostic.code.unwrap_or(if diagnostic.is_error() { "IST0106" } else { "ZM0000" });
    let object = diagnostic.object.as_ref().map(|o| format!("{o} ")).unwrap_or_default();
    let file = diagnostic.origin.file.as_deref().unwrap_or("<input>");
    let field = if diagnostic.field.is_empty() { String::new() } else { format!("{}: ", diagnostic.field) };
    let hint = diagnostic.hint.as_ref().map(|h| format!(" (fix: {h})")).unwrap_or_default();
    format!(
        "{} [{code}] ({object}{file}:{}) {field}{}{hint}",
        diagnostic.severity.label(),
        diagnostic.origin.pos.line,
        diagnostic.message
    )
}

pub(crate) fn analyze(args: &AnalyzeArgs) -> anyhow::Result<u8> {
    let loaded = load(&args.paths, args.mesh_config.as_deref());
    let mut findings = loaded.diagnostics.clone();
    findings.extend(zmesh_policy::analyze::analyze(&loaded.config));
    if let Some(status_api) = &args.control_plane {
        let seen = plaintext_seen(status_api, args.window, args.metrics_port)?;
        findings.extend(zmesh_policy::analyze::strict_would_break(&loaded.config, &seen));
    }
    findings.sort_by(|a, b| (&a.origin, a.severity).cmp(&(&b.origin, b.severity)));
    let mut failed = false;
    let mut shown = 0;
    for finding in &findings {
        failed |= args.failure_threshold.reached_by(finding.severity);
        if args.output_threshold.reached_by(finding.severity) {
            outln!("{}", analyzer_line(finding));
            shown += 1;
        }
    }
    if shown == 0 {
        eprintln!(
            "✔ No validation issues found when analyzing {} document(s) in {} file(s).",
            loaded.documents, loaded.files
        );
    }
    Ok(if failed { EXIT_FINDINGS } else { 0 })
}
