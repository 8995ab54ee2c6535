//! `zmesh authz check` and `zmesh authn check`: decide offline, from the YAML, what a sidecar
//! would decide, and say why.

use std::path::PathBuf;

use serde_json::json;
use zmesh_config::Loaded;
use zmesh_config::authn::MtlsMode;
use zmesh_policy::explain::RuleOutcome;
use zmesh_policy::input::{Checked, RequestInput, WorkloadInput, check_request};
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
    /// Decide one request (or TCP connection): live, `check NS/NAME --from NS/NAME --path …`,
    /// with the running proxy's configuration in force (read through the control plane); or
    /// offline, `check --config … --workload-json … --request-json …`. Either way the workload's
    /// PeerAuthentication comes first: a plaintext request to a STRICT port is refused.
    Check(Box<CheckArgs>),
    /// Decide again, with the configuration in force, the request of one proxy log line
    /// (`authorization decision …`), and say why.
    Explain(ExplainArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct CheckArgs {
    /// Live: the destination workload as NAMESPACE/NAME, decided with its proxy's configuration
    /// in force.
    #[arg(value_name = "WORKLOAD", conflicts_with_all = ["config", "workload_json", "request_json", "mesh_config"])]
    workload: Option<String>,
    /// Offline: policy files or directories.
    #[arg(long = "config", num_args = 1.., value_name = "PATH", required_unless_present = "workload")]
    config: Vec<PathBuf>,
    /// Offline: the workload, {"namespace": …, "labels": {…}, "serviceAccount": …}; `@FILE`
    /// reads a file.
    #[arg(long, value_name = "JSON", required_unless_present = "workload")]
    workload_json: Option<String>,
    /// Offline: a MeshConfig file (the `mesh` key of Istio's ConfigMap, fields at the top level).
    #[arg(long, value_name = "FILE")]
    mesh_config: Option<PathBuf>,
    /// Offline: the request, as in the conformance cases; `@FILE` reads a file.
    #[arg(long, value_name = "JSON", required_unless_present = "workload")]
    request_json: Option<String>,
    #[command(flatten)]
    live: LiveRequest,
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: Output,
}

/// The request of a live check.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct LiveRequest {
    /// The caller: a mesh workload as NAMESPACE/NAME; its SPIFFE identity (and address, as the
    /// source IP) come from the mesh registry the destination's proxy holds.
    #[arg(long, value_name = "NS/NAME", requires = "workload", conflicts_with = "principal")]
    from: Option<String>,
    /// The caller's identity instead: `cluster.local/ns/NS/sa/SA` or `spiffe://…`.
    #[arg(long, value_name = "PRINCIPAL", requires = "workload")]
    principal: Option<String>,
    /// A plaintext caller (no mTLS identity). Also what a check with neither --from nor
    /// --principal is.
    #[arg(long, requires = "workload")]
    plaintext: bool,
    #[arg(long, value_name = "METHOD", requires = "workload")]
    method: Option<String>,
    /// The path (and query) as the client sends it; it is normalized as the mesh says.
    #[arg(long, value_name = "PATH", requires = "workload")]
    path: Option<String>,
    /// The Host header (default: the workload's address and port, as a client dialing it sends).
    #[arg(long, value_name = "HOST", requires = "workload")]
    host: Option<String>,
    /// A request header, `NAME: VALUE` (repeatable).
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE", requires = "workload")]
    headers: Vec<String>,
    /// The workload port (default: its first HTTP port, else its first port).
    #[arg(long, value_name = "N", requires = "workload")]
    port: Option<u16>,
    /// The source IP (default: the --from workload's address).
    #[arg(long, value_name = "IP", requires = "workload")]
    source_ip: Option<std::net::IpAddr>,
    /// The control plane's status API.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:15014")]
    control_plane: String,
    /// Decide with the configuration the workload's proxy holds, read from its admin port (such
    /// as 127.0.0.1:15000), instead of the control plane's: exactly what that proxy enforces,
    /// also while the control plane is down.
    #[arg(long, value_name = "ADDR", requires = "workload")]
    admin: Option<std::net::SocketAddr>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ExplainArgs {
    /// A proxy log line with `authorization decision` (`-` reads the lines of stdin and takes
    /// the last such line).
    #[arg(value_name = "LINE")]
    line: String,
    /// The control plane's status API.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:15014")]
    control_plane: String,
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: Output,
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
    let args = match command {
        AuthzCommand::Check(args) => args,
        AuthzCommand::Explain(args) => return explain(&args.line, &args.control_plane, args.output),
    };
    if let Some(workload) = &args.workload {
        return live_check(workload, &args.live, args.output);
    }
    let common = Common {
        config: args.config,
        workload_json: args.workload_json.unwrap_or_default(),
        mesh_config: args.mesh_config,
        output: args.output,
    };
    let request_json = args.request_json.unwrap_or_default();
    let workload: WorkloadInput = read_json("--workload-json", &common.workload_json)?;
    let request: RequestInput = read_json("--request-json", &request_json)?;
    let Some(loaded) = load(&common) else { return Ok(EXIT_FINDINGS) };
    let set = PolicySet::compile(&loaded.config);
    // PeerAuthentication first, as the proxy: a plaintext peer never reaches a STRICT port's
    // authorization.
    let checked = match check_request(&set, &loaded.config.mesh, &workload, &request) {
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
    let mtls = checked
        .mtls
        .as_ref()
        .map(|m| json!({"mode": m.mode.as_str(), "policy": m.policy.as_deref(), "portLevel": m.port_level}));
    json!({
        "decision": if decision.verdict == Verdict::Allow { "allow" } else { "deny" },
        "status": decision.status,
        "policy": rule.map(|r| r.policy.to_string()),
        "action": rule.map(|r| r.action.as_str()),
        "rule": rule.map(|r| r.rule),
        "reason": reason(checked),
        "refusedBy": refused_by(checked),
        "normalizedPath": checked.normalized_path,
        "mtls": mtls,
    })
}

/// The stage that refused a request before authorization, if one did.
fn refused_by(checked: &Checked) -> Option<&'static str> {
    checked.refused.as_ref()?;
    Some(match checked.decision.reason {
        zmesh_policy::Reason::PlaintextRefused => "PeerAuthentication",
        zmesh_policy::Reason::JwtInvalid | zmesh_policy::Reason::JwtAudience => "RequestAuthentication",
        _ => "path normalization",
    })
}

pub(crate) fn authz_text(checked: &Checked) -> String {
    use std::fmt::Write as _;
    let decision = &checked.decision;
    let mut out = String::new();
    let verdict = if decision.verdict == Verdict::Allow { "ALLOW" } else { "DENY" };
    if decision.reason == zmesh_policy::Reason::PlaintextRefused {
        let _ = writeln!(out, "{verdict} (connection closed, no HTTP response)");
    } else {
        let _ = writeln!(out, "{verdict} ({})", decision.status);
    }
    if let Some(rule) = &decision.decided_by {
        let _ = writeln!(out, "  decided by: {} {} rule {}", rule.action.as_str(), rule.policy, rule.rule);
    }
    let _ = writeln!(out, "  why: {}", reason(checked));
    if let Some(mtls) = checked.mtls.as_ref().filter(|_| checked.refused.is_none()) {
        let by = mtls.policy.as_ref().map_or_else(|| "the default".to_owned(), |p| format!("PeerAuthentication {p}"));
        let _ = writeln!(out, "  mTLS: {} on this port (set by {by})", mtls.mode.as_str());
    }
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

/// A request to decide live: the caller as the destination's proxy would see it.
struct LiveQuery {
    request: RequestInput,
    /// How the caller was named, for the answer.
    caller: String,
}

/// The caller's identity and address: a mesh workload (`--from`, from the registry the
/// destination's proxy holds), a principal, or a plaintext client.
fn live_query(live: &crate::live::LiveWorkload, args: &LiveRequest) -> anyhow::Result<LiveQuery> {
    use zmesh_policy::input::{DestinationInput, Protocol, SourceInput};
    let config = &live.config;
    let (principal, mut source_ip, mut caller) = match (&args.from, &args.principal) {
        (Some(from), _) => {
            let (namespace, name) = from
                .split_once('/')
                .ok_or_else(|| UsageError(format!("--from `{from}`: name a workload as NAMESPACE/NAME")))?;
            let workload = config.registry.workload_named(namespace, name).ok_or_else(|| {
                let mut known: Vec<String> =
                    config.registry.workloads().map(|w| format!("{}/{}", w.namespace, w.name)).collect();
                known.sort();
                UsageError(format!(
                    "--from {from}: no such workload in the mesh {} knows; the known ones are: {}",
                    live.workload,
                    known.join(", ")
                ))
            })?;
            (Some(workload.identity.to_string()), Some(workload.address), format!("{from} ({})", workload.identity))
        }
        (None, Some(principal)) => (Some(principal.clone()), None, principal.clone()),
        (None, None) => (None, None, "a plaintext client".to_owned()),
    };
    let principal = if args.plaintext {
        caller = format!("{caller}, plaintext");
        None
    } else {
        principal
    };
    if args.source_ip.is_some() {
        source_ip = args.source_ip;
    }
    let workload = &config.workload;
    let port = match args.port {
        Some(port) => port,
        None => workload
            .ports
            .iter()
            .find(|p| p.is_http())
            .or_else(|| workload.ports.first())
            .map(|p| p.number)
            .ok_or_else(|| UsageError(format!("{} declares no port; say which with --port", live.workload)))?,
    };
    // As the proxy carries the port: a port declared with a protocol that is not HTTP is
    // authorized once per connection, at L4.
    let protocol = if workload.port_handling(port) == zmesh_registry::PortHandling::Opaque {
        Protocol::Tcp
    } else {
        Protocol::Http
    };
    let mut headers = std::collections::BTreeMap::new();
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| UsageError(format!("--header `{header}`: write it as `NAME: VALUE`")))?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    let request = RequestInput {
        protocol,
        source: SourceInput { principal, namespace: None, ip: source_ip },
        destination: DestinationInput { ip: Some(workload.address), port },
        method: Some(args.method.clone().unwrap_or_else(|| "GET".to_owned())),
        host: Some(args.host.clone().unwrap_or_else(|| std::net::SocketAddr::new(workload.address, port).to_string())),
        path: Some(args.path.clone().unwrap_or_else(|| "/".to_owned())),
        headers,
        sni: None,
        jwt: None,
        jwt_invalid: None,
    };
    Ok(LiveQuery { request, caller })
}

/// Decide with the proxy's own compiled configuration: its workload policy, its PolicySet for
/// PeerAuthentication and token rules, its mesh's path normalization — the parts
/// `zmesh_proxy`'s admission and L4 check use.
fn decide_live(live: &crate::live::LiveWorkload, query: &LiveQuery) -> anyhow::Result<Checked> {
    let config = &live.config;
    zmesh_policy::input::check_in_force(
        &config.policies,
        &config.policy,
        &config.as_policy_sees_it,
        config.mesh.path_normalization,
        &query.request,
    )
    .map_err(|error| UsageError(error.to_string()).into())
}

fn live_json(live: &crate::live::LiveWorkload, query: &LiveQuery, checked: &Checked) -> serde_json::Value {
    let mut body = authz_json(checked);
    let request = &query.request;
    body["workload"] = json!(live.workload);
    body["version"] = json!(live.version);
    body["pathNormalization"] = json!(zmesh_policy::analyze::mode_name(live.config.mesh.path_normalization));
    body["source"] = json!({
        "caller": query.caller,
        "principal": request.source.principal,
        "ip": request.source.ip.map(|ip| ip.to_string()),
    });
    body["request"] = json!({
        "protocol": if request.protocol == zmesh_policy::input::Protocol::Tcp { "tcp" } else { "http" },
        "port": request.destination.port,
        "method": request.method,
        "host": request.host,
        "path": request.path,
    });
    body["syncNote"] = json!(live.sync_note());
    body["configSource"] = live.source_json();
    body
}

fn live_text(live: &crate::live::LiveWorkload, query: &LiveQuery, checked: &Checked) -> String {
    let request = &query.request;
    let what = if request.protocol == zmesh_policy::input::Protocol::Tcp {
        format!("TCP connection to port {}", request.destination.port)
    } else {
        format!(
            "{} {} (host {}) on port {}",
            request.method.as_deref().unwrap_or("GET"),
            request.path.as_deref().unwrap_or("/"),
            request.host.as_deref().unwrap_or_default(),
            request.destination.port
        )
    };
    let mut out =
        format!("{what} from {} to {}, configuration version {}\n", query.caller, live.workload, live.version);
    if let Some(source) = live.source_json()["text"].as_str() {
        out.push_str(&format!("Source: {source}\n"));
    }
    out.push_str(&authz_text(checked));
    out
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// Whether the `--from` workload has a proxy connected to the control plane: without one, its
/// requests would not carry its identity (they would be plaintext, if they got through at all).
async fn caller_has_proxy(status_api: &str, from: &str) -> anyhow::Result<bool> {
    let body = crate::control::get_json(status_api, "/api/v1/proxies").await?;
    Ok(body["proxies"].as_array().into_iter().flatten().any(|p| p["workload"] == from && p["connected"] == true))
}

/// `zmesh authz check WORKLOAD …`.
fn live_check(workload: &str, args: &LiveRequest, output: Output) -> anyhow::Result<u8> {
    let runtime = runtime()?;
    let source = crate::live::ConfigSource::new(&args.control_plane, args.admin);
    let live = runtime.block_on(crate::live::workload_config_from(&source, workload))?;
    let query = live_query(&live, args)?;
    let checked = decide_live(&live, &query)?;
    if let Some(note) = live.sync_note() {
        eprintln!("warning: {note}");
    }
    let mut caller_proxy = None;
    if let (Some(from), Some(admin)) = (args.from.as_deref().filter(|_| !args.plaintext), args.admin) {
        // Only the control plane knows which proxies are connected; it is not asked here.
        eprintln!(
            "note: the configuration came from the proxy at {admin}; whether {from} has a proxy (without one its requests carry no mTLS identity) is known only to the control plane: ask it without --admin"
        );
    } else if let Some(from) = args.from.as_deref().filter(|_| !args.plaintext) {
        let connected = runtime.block_on(caller_has_proxy(&args.control_plane, from))?;
        if !connected {
            eprintln!(
                "warning: {from} has no proxy connected to the control plane: without one its requests carry no mTLS identity; see what a plaintext request gets with --plaintext"
            );
        }
        caller_proxy = Some(connected);
    }
    match output {
        Output::Json => {
            let mut body = live_json(&live, &query, &checked);
            body["source"]["proxyConnected"] = json!(caller_proxy);
            outln!("{body:#}");
        }
        Output::Text => out!("{}", live_text(&live, &query, &checked)),
    }
    Ok(0)
}

/// The fields of a proxy's `authorization decision` log line (see `zmesh_proxy::admission`):
/// `key=value` after the message, values quoted (with Rust's escapes) when they came from the
/// client. Color escapes, if the log was written with them, are dropped first.
pub(crate) fn decision_fields(line: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    const MESSAGE: &str = "authorization decision ";
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI sequence: ESC [ parameters final-byte.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let (_, fields) = plain.split_once(MESSAGE).ok_or_else(|| {
        "not a proxy decision line: it has no `authorization decision` (the proxy logs denials at INFO and allowed requests at DEBUG: `--log-level info,zmesh_proxy::admission=debug`)".to_owned()
    })?;
    let mut out = std::collections::BTreeMap::new();
    let mut rest = fields.trim_start();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=').ok_or_else(|| format!("`{rest}`: expected key=value"))?;
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            unquote(quoted)?
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_owned(), &after[end..])
        };
        out.insert(key.trim().to_owned(), value);
        rest = after.trim_start();
    }
    Ok(out)
}

/// A Rust `Debug` string body (after its opening quote): the value, and what follows the
/// closing quote.
fn unquote(text: &str) -> Result<(String, &str), String> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[at + 1..])),
            '\\' => match chars.next().map(|(_, c)| c) {
                Some('n') => value.push('\n'),
                Some('r') => value.push('\r'),
                Some('t') => value.push('\t'),
                Some('0') => value.push('\0'),
                Some('u') => {
                    let code: String = chars.by_ref().map(|(_, c)| c).skip(1).take_while(|c| *c != '}').collect();
                    let decoded = u32::from_str_radix(&code, 16).ok().and_then(char::from_u32);
                    value.push(decoded.ok_or_else(|| format!("bad escape \\u{{{code}}}"))?);
                }
                Some(other) => value.push(other),
                None => return Err("a quoted value ends in `\\`".to_owned()),
            },
            other => value.push(other),
        }
    }
    Err("a quoted value is not closed".to_owned())
}

/// `zmesh authz explain LINE`.
fn explain(line: &str, control_plane: &str, output: Output) -> anyhow::Result<u8> {
    let line = if line == "-" {
        let mut input = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut input)?;
        input
            .lines()
            .rfind(|l| l.contains("authorization decision"))
            .map(str::to_owned)
            .ok_or_else(|| UsageError("no `authorization decision` line on stdin".to_owned()))?
    } else {
        line.to_owned()
    };
    let fields = decision_fields(&line).map_err(UsageError)?;
    let field = |name: &str| {
        fields.get(name).cloned().ok_or_else(|| {
            UsageError(format!(
                "the line has no `{name}` field; it must be a zmesh proxy's `authorization decision` line"
            ))
        })
    };
    let workload = field("workload")?;
    let logged = field("decision")?;
    let peer = field("peer")?;
    let port: u16 = field("port")?.parse().map_err(|_| UsageError("the line's `port` is not a port".to_owned()))?;
    let source_ip = fields.get("source").and_then(|s| s.parse::<std::net::SocketAddr>().ok()).map(|s| s.ip());
    let args = LiveRequest {
        principal: (peer != "none").then(|| peer.clone()),
        plaintext: peer == "none",
        method: Some(field("method")?),
        // Normalized again from what the client sent, as the proxy did.
        path: Some(fields.get("sent_path").cloned().map_or_else(|| field("path"), Ok)?),
        host: Some(field("host")?),
        port: Some(port),
        source_ip,
        control_plane: control_plane.to_owned(),
        ..LiveRequest::default()
    };
    let live = runtime()?.block_on(crate::live::workload_config(control_plane, &workload))?;
    let mut query = live_query(&live, &args)?;
    query.caller = if peer == "none" { "a plaintext client".to_owned() } else { peer.clone() };
    let checked = decide_live(&live, &query)?;
    let now = if checked.decision.verdict == Verdict::Allow { "allow" } else { "deny" };
    let logged_by = match (fields.get("policy").map(String::as_str), fields.get("rule")) {
        (Some("none") | None, _) => None,
        (Some(policy), rule) => Some(format!("{policy} rule {}", rule.map_or("?", String::as_str))),
    };
    let same = now == logged;
    let time = line.split_whitespace().next().filter(|t| t.contains('T')).map(str::to_owned);
    if let Some(note) = live.sync_note() {
        eprintln!("warning: {note}");
    }
    match output {
        Output::Json => {
            let mut body = live_json(&live, &query, &checked);
            body["logged"] = json!({"decision": logged, "by": logged_by, "time": time});
            body["sameAsLogged"] = json!(same);
            outln!("{body:#}");
        }
        Output::Text => {
            let by = logged_by.map(|b| format!(" by {b}")).unwrap_or_default();
            let at = time.map(|t| format!(" at {t}")).unwrap_or_default();
            outln!("logged{at}: {}{by}", logged.to_ascii_uppercase());
            out!("decided again now: {}", live_text(&live, &query, &checked));
            if !same {
                outln!(
                    "note: the decision differs from the logged one: the configuration changed since (now version {}), or the request depended on something the log line does not carry (a token, an external authorizer, a rate limit)",
                    live.version
                );
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::decision_fields;

    #[test]
    fn a_decision_line_is_read_with_its_quoted_values_and_without_colors() {
        let line = "\u{1b}[2m2026-12-08T01:01:46Z\u{1b}[0m  INFO request{method=GET path=/x}: zmesh_proxy::admission: authorization decision \u{1b}[3mdecision\u{1b}[0m\u{1b}[2m=\u{1b}[0m\"deny\" workload=shop/server peer=none port=8080 method=\"GET\" host=\"a b\" path=\"/say \\\"hi\\\"\\\\\" sent_path=\"/\\u{7f}\" policy=none rule=none";
        let fields = decision_fields(line).expect("a decision line");
        assert_eq!(fields["decision"], "deny");
        assert_eq!(fields["workload"], "shop/server");
        assert_eq!(fields["peer"], "none");
        assert_eq!(fields["port"], "8080");
        assert_eq!(fields["host"], "a b");
        assert_eq!(fields["path"], "/say \"hi\"\\");
        assert_eq!(fields["sent_path"], "/\u{7f}");
        assert_eq!(fields["rule"], "none");
        assert!(!fields.contains_key("method=GET"), "span fields before the message are not read");
    }

    #[test]
    fn a_line_without_a_decision_or_with_an_open_quote_is_refused() {
        assert!(decision_fields("INFO configuration updated").is_err());
        assert!(decision_fields("authorization decision path=\"/open").is_err());
    }
}
