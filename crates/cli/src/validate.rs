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
