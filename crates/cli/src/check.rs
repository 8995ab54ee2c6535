//! `zmesh authz check` and `zmesh authn check`: decide offline, from the YAML, what a sidecar
//! would decide, and say why.

use std::path::PathBuf;

use serde_json::json;
use zmesh_config::Loaded;
use zmesh_config::authn::MtlsMode;
use zmesh_policy::explain::RuleOutcome;
use zmesh_policy::input::{Checked, RequestInput, WorkloadInput, check_authz};
use zmesh_policy::{PolicySet, Verdict, Workload};

use crate::{EXIT_FINDINGS, EXIT_USAGE, UsageError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    Json,
    Text,
}

#[derive(Debug, clap::Args)]
pub(crate) struct Common {
    /// Policy files or directories.
    #[arg(long = "config", required = true, num_args = 1.., value_name = "PATH")]
    config: Vec<PathBuf>,
    /// The workload: {"namespace": …, "labels": {…}, "serviceAccount": …}; `@FILE` reads a file.
    #[arg(long, value_name = "JSON")]
    workload_json: String,
    /// A MeshConfig file (the `mesh` key of Istio's ConfigMap, fields at the top level).
    #[arg(long, value_name = "FILE")]
    mesh_config: Option<PathBuf>,
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: Output,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum AuthzCommand {
    /// Decide one request (or TCP connection) against the policies.
    Check {
        #[command(flatten)]
        common: Common,
        /// The request, as in the conformance cases; `@FILE` reads a file.
        #[arg(long, value_name = "JSON")]
        request_json: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum AuthnCommand {
    /// The effective PeerAuthentication mode of a workload port.
    Check {
        #[command(flatten)]
        common: Common,
        /// The workload (container) port.
        #[arg(long)]
        port: u16,
    },
}

fn read_json<T: serde::de::DeserializeOwned>(flag: &str, value: &str) -> anyhow::Result<T> {
    let text = match value.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).map_err(|e| UsageError(format!("{flag}: cannot read {path}: {e}")))?
        }
        None => value.to_owned(),
    };
    serde_json::from_str(&text).map_err(|e| {
        UsageError(format!("{flag} is not valid: {e}; fix the JSON (see `zmesh authz check --help`)")).into()
    })
}

/// Load the configuration; on errors print them and return `None`.
fn load(common: &Common) -> Option<Loaded> {
    let loaded = zmesh_config::load_paths(&common.config, common.mesh_config.as_deref());
    if loaded.has_errors() {
        for error in loaded.errors() {
            eprintln!("{error}");
        }
        eprintln!("✘ the configuration is invalid; nothing was decided");
        return None;
    }
    Some(loaded)
}

pub(crate) fn authz(command: AuthzCommand) -> anyhow::Result<u8> {
    let AuthzCommand::Check { common, request_json } = command;
    let workload: WorkloadInput = read_json("--workload-json", &common.workload_json)?;
    let request: RequestInput = read_json("--request-json", &request_json)?;
    let Some(loaded) = load(&common) else { return Ok(EXIT_FINDINGS) };
    let set = PolicySet::compile(&loaded.config);
    let checked = match check_authz(&set, &loaded.config.mesh, &workload, &request) {
        Ok(checked) => checked,
        Err(error) => {
            eprintln!("error: {error}");
            return Ok(EXIT_USAGE);
        }
    };
    match common.output {
        Output::Json => outln!("{}", authz_json(&checked)),
        Output::Text => out!("{}", authz_text(&checked)),
    }
    Ok(0)
}

fn reason(checked: &Checked) -> String {
    match (&checked.refused, &checked.explanation) {
        (Some(refused), _) => refused.clone(),
        (None, Some(explanation)) => explanation.reason.clone(),
        (None, None) => checked.decision.reason.describe().to_owned(),
    }
}

pub(crate) fn authz_json(checked: &Checked) -> serde_json::Value {
    let decision = &checked.decision;
    let external = decision.external.as_ref().filter(|_| decision.verdict == Verdict::Allow);
    let rule = decision.decided_by.as_ref().or(external);
    json!({
        "decision": if decision.verdict == Verdict::Allow { "allow" } else { "deny" },
        "status": decision.status,
        "policy": rule.map(|r| r.policy.to_string()),
        "action": rule.map(|r| r.action.as_str()),
        "rule": rule.map(|r| r.rule),
        "reason": reason(checked),
    })
}

pub(crate) fn authz_text(checked: &Checked) -> String {
    use std::fmt::Write as _;
    let decision = &checked.decision;
    let mut out = String::new();
    let verdict = if decision.verdict == Verdict::Allow { "ALLOW" } else { "DENY" };
    let _ = writeln!(out, "{verdict} ({})", decision.status);
    if let Some(rule) = &decision.decided_by {
        let _ = writeln!(out, "  decided by: {} {} rule {}", rule.action.as_str(), rule.policy, rule.rule);
    }
    let _ = writeln!(out, "  why: {}", reason(checked));
    if let Some(path) = &checked.normalized_path {
        let _ = writeln!(out, "  path after normalization: {path}");
    }
    let Some(explanation) = &checked.explanation else { return out };
    if let Some(shadow) = &explanation.shadow
        && shadow.verdict != decision.verdict
    {
        let shadow_verdict = if shadow.verdict == Verdict::Allow { "allowed" } else { "denied" };
        let _ =
            writeln!(out, "  dry-run: if the dry-run policies were enforced, this request would be {shadow_verdict}");
    }
    if explanation.policies.is_empty() {
        let _ = writeln!(out, "  no AuthorizationPolicy applies to this workload");
        return out;
    }
    let _ = writeln!(out, "  policies applied to the workload:");
    for policy in &explanation.policies {
        let dry = if policy.dry_run { " (dry-run)" } else { "" };
        let provider = policy.provider.as_ref().map(|p| format!(" provider={p}")).unwrap_or_default();
        let _ = writeln!(out, "    {} {}{dry}{provider}", policy.action.as_str(), policy.policy);
        if policy.rules.is_empty() {
            let _ = writeln!(out, "      (no rules: matches nothing)");
        }
        for (index, outcome) in policy.rules.iter().enumerate() {
            match outcome {
                RuleOutcome::Matched => {
                    let _ = writeln!(out, "      rule {index}: matched");
                }
                RuleOutcome::Missed { detail, .. } => {
                    let _ = writeln!(out, "      rule {index}: no match: {detail}");
                }
            }
        }
    }
    out
}

pub(crate) fn authn(command: AuthnCommand) -> anyhow::Result<u8> {
    let AuthnCommand::Check { common, port } = command;
    let workload: WorkloadInput = read_json("--workload-json", &common.workload_json)?;
    let Some(loaded) = load(&common) else { return Ok(EXIT_FINDINGS) };
    let set = PolicySet::compile(&loaded.config);
    let decision = set.mtls_mode(&Workload::from(&workload), port);
    let accepts = json!({"plaintext": decision.accepts_plaintext(), "mtls": decision.accepts_mtls()});
    match common.output {
        Output::Json => outln!(
            "{}",
            json!({"mode": decision.mode.as_str(), "policy": decision.policy.as_deref(), "accepts": accepts})
        ),
        Output::Text => {
            outln!("{} on port {port}", decision.mode.as_str());
            match &decision.policy {
                Some(policy) if decision.port_level => {
                    outln!("  set by: PeerAuthentication {policy} (portLevelMtls)")
                }
                Some(policy) => outln!("  set by: PeerAuthentication {policy}"),
                None => outln!("  set by: no PeerAuthentication applies; PERMISSIVE is the default"),
            }
            let plaintext = if decision.mode == MtlsMode::Strict { "refused" } else { "accepted" };
            let mtls = if decision.mode == MtlsMode::Disable { "not expected (plaintext only)" } else { "accepted" };
            outln!("  plaintext: {plaintext}\n  mTLS: {mtls}");
        }
    }
    Ok(0)
}
