//! `zmesh`: the one binary. Each subcommand wires the crates together; the work is in them.

use std::process::ExitCode;

use clap::Parser;

/// Write to stdout. A closed pipe (`zmesh … | head`) ends the program quietly, as a Unix tool
/// should, instead of panicking the way `println!` does.
pub(crate) fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    if let Err(error) = std::io::stdout().lock().write_fmt(args)
        && error.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

/// `println!` through [`write_stdout`].
macro_rules! outln {
    ($($arg:tt)*) => { $crate::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` through [`write_stdout`].
macro_rules! out {
    ($($arg:tt)*) => { $crate::write_stdout(format_args!($($arg)*)) };
}

mod authz_server;
mod ca;
mod capture;
mod check;
mod control;
mod echo;
mod inspect;
mod live;
mod output;
mod proxy;
mod readiness;
mod up;
mod validate;

/// The zero-trust service mesh: mTLS with SPIFFE identities, Istio-compatible policy, and
/// tools to see why a request is allowed or denied.
#[derive(Debug, Parser)]
#[command(name = "zmesh", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Check Istio/Kubernetes YAML the way Istio validates it; exit 1 if anything is invalid.
    Validate(validate::ValidateArgs),
    /// Find valid but risky or ineffective policy (istioctl analyze style).
    Analyze(validate::AnalyzeArgs),
    /// Authorization: would this request be allowed, and why?
    #[command(subcommand)]
    Authz(check::AuthzCommand),
    /// Peer authentication: which mTLS mode applies to a workload port?
    #[command(subcommand)]
    Authn(check::AuthnCommand),
    /// The certificate authority, offline: create, issue, rotate roots in stages.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Certificates: inspect identity, issuer, serial and validity.
    #[command(subcommand)]
    Cert(ca::CertCommand),
    /// Transparent capture: the iptables rules of a pod's network namespace (like istio-init).
    #[command(subcommand)]
    Capture(capture::CaptureCommand),
    /// A small echo app (HTTP/1.1, h2c or raw TCP) that shows what reached it.
    Echo(echo::EchoArgs),
    /// An Envoy ext_authz server (HTTP and gRPC) deciding with CEL rules.
    AuthzServer(authz_server::AuthzServerArgs),
    /// Run the sidecar proxy of one workload.
    Proxy(Box<proxy::ProxyArgs>),
    /// Run the control plane: watch configuration, push it to proxies, sign certificates.
    ControlPlane(control::ControlPlaneArgs),
    /// SYNCED/STALE and the acknowledged version of every proxy (istioctl proxy-status).
    ProxyStatus(control::ProxyStatusArgs),
    /// What a running proxy holds: certificates, listeners, clusters, endpoints, policies
    /// (istioctl proxy-config), read through the control plane.
    #[command(subcommand)]
    ProxyConfig(inspect::ProxyConfigCommand),
    /// A running workload: mTLS per port and the policy that set it, the policies that apply and
    /// those that do not (and why), the services it belongs to.
    Describe(inspect::WorkloadArgs),
    /// Will SOURCE's connections to DESTINATION use mTLS, and will the server accept them?
    TlsCheck(inspect::TlsCheckArgs),
    /// Is it safe to switch to STRICT? Who still sends plaintext to each workload and port,
    /// from what the proxies observed, and what a STRICT dry-run policy would have refused.
    MtlsReadiness(readiness::ReadinessArgs),
    /// Run a whole mesh on this machine: control plane, CA, a proxy per workload (and, with no
    /// --config, a demo mesh with apps and traffic). Ctrl-C stops everything.
    Up(up::UpArgs),
    /// Run a command as a workload of a running `zmesh up`.
    Exec(up::ExecArgs),
    /// The demo's traffic generator (used by `zmesh up`).
    #[command(hide = true)]
    Traffic(up::traffic::TrafficArgs),
}

/// Exit codes shared by every subcommand: 0 success, 1 findings or invalid input files,
/// 2 usage errors (clap uses 2 as well).
pub(crate) const EXIT_FINDINGS: u8 = 1;
pub(crate) const EXIT_USAGE: u8 = 2;

/// An error in how the command was called (bad flags or input), as opposed to a failure while
/// doing the work: it exits with [`EXIT_USAGE`].
#[derive(Debug)]
pub(crate) struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate(args) => validate::validate(&args),
        Command::Analyze(args) => validate::analyze(&args),
        Command::Authz(command) => check::authz(command),
        Command::Authn(command) => check::authn(command),
        Command::Ca(command) => ca::ca(command),
        Command::Cert(command) => ca::cert(command),
        Command::Capture(command) => capture::capture(command),
        Command::Echo(args) => echo::echo(args),
        Command::AuthzServer(args) => authz_server::authz_server(args),
        Command::Proxy(args) => proxy::proxy(*args),
        Command::ControlPlane(args) => control::control_plane(args),
        Command::ProxyStatus(args) => control::proxy_status(args),
        Command::ProxyConfig(command) => inspect::proxy_config(command),
        Command::Describe(args) => inspect::describe(args),
        Command::TlsCheck(args) => inspect::tls_check(args),
        Command::MtlsReadiness(args) => readiness::mtls_readiness(args),
        Command::Up(args) => up::up(args),
        Command::Exec(args) => up::exec(args),
        Command::Traffic(args) => up::traffic::traffic(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {error:#}");
            let usage = error.downcast_ref::<UsageError>().is_some();
            ExitCode::from(if usage { EXIT_USAGE } else { EXIT_FINDINGS })
        }
    }
}
