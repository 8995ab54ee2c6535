//! Live troubleshooting, istioctl-shaped: `zmesh proxy-config`, `zmesh describe` and
//! `zmesh tls-check`. Every answer is computed from what the control plane pushes to the
//! workload's proxy, compiled with the proxy's own code ([`crate::live`]), so it is the proxy's
//! decision, not a second implementation of it. Each command builds one JSON document; the text
//! form is drawn from that document, and YAML is the same document.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use serde_json::{Value, json};
use zmesh_config::authn::{MtlsMode, PeerAuthentication};
use zmesh_config::mesh::OutboundTrafficPolicy;
use zmesh_config::meta::Selector;
use zmesh_proxy::capture::{
    HBONE_PORT, HEALTH_PORT, HTTP_PROXY_PORT, INBOUND_CAPTURE_PORT, METRICS_PORT, OUTBOUND_CAPTURE_PORT,
};
use zmesh_registry::{HostRoute, MeshWorkload, PortHandling, Registry, Upstream};

use crate::live::LiveWorkload;
use crate::output::{Format, to_yaml};
use crate::{EXIT_FINDINGS, UsageError};

/// The proxy's admin port (configuration dump, certificates).
const ADMIN_PORT: u16 = 15000;

#[derive(Debug, clap::Args)]
pub(crate) struct LiveArgs {
    /// The control plane's status API.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:15014")]
    control_plane: String,
    /// Output format: text for people, json or yaml for scripts.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Text)]
    output: Format,
}

#[derive(Debug, clap::Args)]
pub(crate) struct WorkloadArgs {
    /// The workload, as NAMESPACE/NAME.
    #[arg(value_name = "NS/NAME")]
    workload: String,
    /// Ask the workload's proxy on its admin port (such as 127.0.0.1:15000) instead of the
    /// control plane: the answer is exactly what that proxy holds and enforces, also while the
    /// control plane is down.
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    #[command(flatten)]
    live: LiveArgs,
}

impl WorkloadArgs {
    fn source(&self) -> crate::live::ConfigSource {
        crate::live::ConfigSource::new(&self.live.control_plane, self.admin)
    }
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum ProxyConfigCommand {
    /// Certificates: SPIFFE ID, serial and expiry, and the trust bundle.
    /// With --admin, the certificate the proxy holds, instead of the control plane's record
    /// of what it issued.
    Secret {
        #[command(flatten)]
        args: WorkloadArgs,
    },
    /// The workload's ports with protocol and effective PeerAuthentication mode (and the
    /// policy that set it), and the proxy's own listeners.
    Listeners(WorkloadArgs),
    /// Upstreams the proxy can reach, with the peer identities it verifies.
    Clusters(WorkloadArgs),
    /// The addresses behind each upstream.
    Endpoints(WorkloadArgs),
    /// The AuthorizationPolicies, RequestAuthentications and PeerAuthentication modes in force,
    /// with the configuration version.
    Policies(WorkloadArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct TlsCheckArgs {
    /// The client: a workload as NAMESPACE/NAME, or an IP address (a client outside the mesh
    /// unless a workload has that address).
    #[arg(value_name = "SOURCE")]
    source: String,
    /// The server workload, as NAMESPACE/NAME.
    #[arg(value_name = "DESTINATION")]
    destination: String,
    #[command(flatten)]
    live: LiveArgs,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// Print `body` as asked; the text form is drawn by `text`, after the source that answered
/// (`configSource`). A sync note (the proxies are not at the version the answer comes from)
/// goes to stderr as well, so it is seen in every format.
fn emit(format: Format, body: &Value, text: impl FnOnce(&Value) -> String) {
    if let Some(note) = body["syncNote"].as_str() {
        eprintln!("warning: {note}");
    }
    match format {
        Format::Json => outln!("{body:#}"),
        Format::Yaml => out!("{}", to_yaml(body)),
        Format::Text => match body["configSource"]["text"].as_str() {
            Some(source) => out!("Source: {source}\n\n{}", text(body)),
            None => out!("{}", text(body)),
        },
    }
}

/// `body` with the source that answered.
fn sourced(live: &LiveWorkload, mut body: Value) -> Value {
    body["configSource"] = live.source_json();
    body
}

pub(crate) fn proxy_config(command: ProxyConfigCommand) -> anyhow::Result<u8> {
    let runtime = runtime()?;
    match command {
        ProxyConfigCommand::Secret { args } => {
            let body = runtime.block_on(secret(&args, args.admin))?;
            emit(args.live.output, &body, secret_text);
            let none = body["certificates"].as_array().is_none_or(Vec::is_empty);
            Ok(if none { EXIT_FINDINGS } else { 0 })
        }
        ProxyConfigCommand::Listeners(args) => {
            let live = runtime.block_on(crate::live::workload_config_from(&args.source(), &args.workload))?;
            emit(args.live.output, &sourced(&live, listeners(&live)), listeners_text);
            Ok(0)
        }
        ProxyConfigCommand::Clusters(args) => {
            let live = runtime.block_on(crate::live::workload_config_from(&args.source(), &args.workload))?;
            emit(args.live.output, &sourced(&live, clusters(&live)), clusters_text);
            Ok(0)
        }
        ProxyConfigCommand::Endpoints(args) => {
            let live = runtime.block_on(crate::live::workload_config_from(&args.source(), &args.workload))?;
            emit(args.live.output, &sourced(&live, endpoints(&live)), endpoints_text);
            Ok(0)
        }
        ProxyConfigCommand::Policies(args) => {
            let live = runtime.block_on(crate::live::workload_config_from(&args.source(), &args.workload))?;
            emit(args.live.output, &sourced(&live, policies(&live)), policies_text);
            Ok(0)
        }
    }
}

pub(crate) fn describe(args: WorkloadArgs) -> anyhow::Result<u8> {
    let live = runtime()?.block_on(crate::live::workload_config_from(&args.source(), &args.workload))?;
    emit(args.live.output, &sourced(&live, describe_json(&live)), describe_text);
    Ok(0)
}

pub(crate) fn tls_check(args: TlsCheckArgs) -> anyhow::Result<u8> {
    let runtime = runtime()?;
    let body = runtime.block_on(async {
        let destination = crate::live::workload_config(&args.live.control_plane, &args.destination).await?;
        let source = match args.source.parse::<IpAddr>() {
            Ok(ip) => match destination.config.registry.at(ip) {
                Some(w) => Client::Mesh(Box::new(
                    crate::live::workload_config(&args.live.control_plane, &format!("{}/{}", w.namespace, w.name))
                        .await?,
                )),
                None => Client::Outside(ip),
            },
            Err(_) => {
                Client::Mesh(Box::new(crate::live::workload_config(&args.live.control_plane, &args.source).await?))
            }
        };
        anyhow::Ok(tls_check_json(&source, &destination))
    })?;
    emit(args.live.output, &body, tls_check_text);
    let refused = body["ports"].as_array().into_iter().flatten().any(|p| p["accepted"] != true);
    Ok(if refused { EXIT_FINDINGS } else { 0 })
}

fn sync_note(live: &LiveWorkload) -> Value {
    live.sync_note().map_or(Value::Null, Value::from)
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// Rows as aligned columns (the first row is the header), as `proxy-status` prints them.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r.get(c).map_or(0, |s| s.chars().count())).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

// ---- secret ----

async fn secret(args: &WorkloadArgs, admin: Option<SocketAddr>) -> anyhow::Result<Value> {
    if let Some(admin) = admin {
        let certs = crate::control::get_json(&format!("http://{admin}"), "/certs").await?;
        let certificate = json!({
            "identity": certs["identity"],
            // As the control plane writes serials (hex without separators), so the two compare.
            "serial": certs["serial"].as_str().map(|s| s.replace(':', "").to_ascii_lowercase()),
            "notBefore": certs["notBefore"],
            "notAfter": certs["notAfter"],
        });
        // The proxy at ADDR may not be the workload named: say so rather than answer for it.
        let namespace = args.workload.split_once('/').map_or("", |(ns, _)| ns);
        let identity = certs["identity"].as_str().unwrap_or_default();
        let note = (!identity.contains(&format!("/ns/{namespace}/sa/"))).then(|| {
            format!("the proxy at {admin} holds {identity}, not an identity of namespace {namespace}: is it the proxy of {}?", args.workload)
        });
        return Ok(json!({
            "workload": args.workload,
            "source": format!("proxy admin http://{admin}/certs"),
            "certificates": [certificate],
            "trustBundleRoots": certs["trustBundleRoots"],
            "syncNote": note,
        }));
    }
    let base = &args.live.control_plane;
    let workloads = crate::control::get_json(base, "/api/v1/workloads").await?;
    let (namespace, name) = args
        .workload
        .split_once('/')
        .ok_or_else(|| UsageError(format!("`{}`: name a workload as NAMESPACE/NAME", args.workload)))?;
    let workload = workloads["workloads"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|w| w["namespace"] == namespace && w["name"] == name)
        .ok_or_else(|| anyhow::anyhow!("no workload {} in the registry; see `zmesh proxy-status`", args.workload))?;
    let identity = workload["identity"].as_str().unwrap_or_default().to_owned();
    let certificates = crate::control::get_json(base, "/api/v1/certificates").await?;
    let issued: Vec<Value> = certificates["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["identity"] == identity.as_str())
        .cloned()
        .collect();
    let note = issued.is_empty().then(|| {
        format!(
            "the control plane has issued no certificate for {identity} since it started; a proxy keeps the one it \
             has across control-plane restarts: ask it directly with --admin ADDR"
        )
    });
    Ok(json!({
        "workload": args.workload,
        "identity": identity,
        "source": format!("control plane {base}/api/v1/certificates (the latest issued)"),
        "certificates": issued,
        "trustBundle": certificates["trustBundle"],
        "syncNote": note,
    }))
}

fn secret_text(body: &Value) -> String {
    let mut rows = vec![["IDENTITY", "SERIAL", "NOT BEFORE", "NOT AFTER", "EXPIRES IN"].map(str::to_owned).to_vec()];
    for cert in body["certificates"].as_array().into_iter().flatten() {
        let expires = cert["secondsToExpiry"].as_i64().map_or("-".to_owned(), |s| format!("{s}s"));
        rows.push(vec![
            text(&cert["identity"]),
            text(&cert["serial"]),
            text(&cert["notBefore"]),
            text(&cert["notAfter"]),
            expires,
        ]);
    }
    let mut out = format!("{} (from {})\n", text(&body["workload"]), text(&body["source"]));
    out.push_str(&table(&rows));
    if let Some(roots) = body["trustBundle"].as_array() {
        let mut rows = vec![["ROOT", "SERIAL", "NOT AFTER"].map(str::to_owned).to_vec()];
        rows.extend(roots.iter().map(|r| vec![text(&r["subject"]), text(&r["serial"]), text(&r["notAfter"])]));
        out.push('\n');
        out.push_str(&table(&rows));
    } else if let Some(count) = body["trustBundleRoots"].as_u64() {
        out.push_str(&format!("trust bundle: {count} root(s)\n"));
    }
    out
}

// ---- listeners ----

fn protocol(workload: &MeshWorkload, port: u16) -> String {
    match workload.port(port).and_then(|p| p.protocol) {
        Some(protocol) => format!("{protocol:?}").to_ascii_uppercase(),
        None => "detected".to_owned(),
    }
}

/// Every port the answer covers: the workload's own, and any a PeerAuthentication that applies
/// to it names in `portLevelMtls`.
fn ports_of(live: &LiveWorkload) -> BTreeSet<u16> {
    let mut ports: BTreeSet<u16> = live.config.workload.ports.iter().map(|p| p.number).collect();
    let labels = &live.config.workload.labels;
    for policy in &live.loaded.peer_authentications {
        if policy.meta.namespace == live.config.workload.namespace
            && policy.selector.as_ref().is_some_and(|s| s.matches(labels))
        {
            ports.extend(policy.port_level_mtls.keys());
        }
    }
    ports
}

/// The effective mTLS mode of `port` as the proxy computes it, and what it means.
fn port_json(live: &LiveWorkload, port: Option<u16>) -> Value {
    let config = &live.config;
    // A port number no policy names stands for "any other port": port-level settings only
    // apply to the ports they list.
    let number = port.unwrap_or(0);
    let modes = config.policies.mtls_modes(&config.as_policy_sees_it, number);
    let decision = &modes.enforced;
    // What a dry-run PeerAuthentication would set, were it enforced: the proxy counts the
    // plaintext connections it would refuse, and enforces `decision`.
    let dry_run = modes.dry_run.as_ref().map(|d| {
        json!({"mtls": d.mode.as_str(), "mtlsPolicy": d.policy.as_deref(),
            "wouldRefusePlaintext": modes.dry_run_refuses_plaintext().is_some()})
    });
    let workload_port = port.and_then(|p| config.workload.port(p));
    let handling = match port.map(|p| config.workload.port_handling(p)) {
        Some(PortHandling::Http) => "HTTP: every request authorized",
        Some(PortHandling::Opaque) => "opaque: authorized once per connection",
        Some(PortHandling::Detect) | None => "detected from the first bytes",
    };
    json!({
        "port": port,
        "name": workload_port.map(|p| p.name.as_str()),
        "protocol": port.map_or("detected".to_owned(), |p| protocol(&config.workload, p)),
        "handling": handling,
        "mtls": decision.mode.as_str(),
        "mtlsPolicy": decision.policy.as_deref(),
        "portLevel": decision.port_level,
        "accepts": {"mtls": true, "plaintext": decision.accepts_plaintext()},
        "dryRun": dry_run,
    })
}

fn mode_source(port: &Value) -> String {
    match port["mtlsPolicy"].as_str() {
        Some(policy) if port["portLevel"] == true => format!("PeerAuthentication {policy} (portLevelMtls)"),
        Some(policy) => format!("PeerAuthentication {policy}"),
        None => "no PeerAuthentication (PERMISSIVE is the default)".to_owned(),
    }
}

fn proxy_listeners(workload: &MeshWorkload) -> Vec<Value> {
    let at = |port: u16| SocketAddr::new(workload.address, port).to_string();
    let any = |port: u16| format!("0.0.0.0:{port}");
    // Ports that act as the workload or reveal its configuration listen on its address only
    // when that is a loopback address (a single-host mesh), else on localhost.
    let local = |port: u16| {
        let ip = if workload.address.is_loopback() { workload.address } else { IpAddr::from([127, 0, 0, 1]) };
        SocketAddr::new(ip, port).to_string()
    };
    vec![
        json!({"port": HBONE_PORT, "address": at(HBONE_PORT), "purpose": "HBONE inbound: mTLS tunnels from other proxies (HTTP/2 CONNECT); the peer's SPIFFE ID is verified and authorized"}),
        json!({"port": INBOUND_CAPTURE_PORT, "address": any(INBOUND_CAPTURE_PORT), "purpose": "plaintext inbound (transparent capture only): PeerAuthentication decides, then policy with no peer identity"}),
        json!({"port": OUTBOUND_CAPTURE_PORT, "address": any(OUTBOUND_CAPTURE_PORT), "purpose": "outbound (transparent capture only): mesh destinations through HBONE, others per outboundTrafficPolicy"}),
        json!({"port": METRICS_PORT, "address": at(METRICS_PORT), "purpose": "Prometheus metrics"}),
        json!({"port": HEALTH_PORT, "address": at(HEALTH_PORT), "purpose": "health (/healthz/ready), always plaintext"}),
        json!({"port": ADMIN_PORT, "address": local(ADMIN_PORT), "purpose": "admin: /config_dump, /config_documents, /certs"}),
        json!({"port": HTTP_PROXY_PORT, "address": local(HTTP_PROXY_PORT), "purpose": "HTTP proxy for apps (--explicit mode only)"}),
    ]
}

fn listeners(live: &LiveWorkload) -> Value {
    let ports: Vec<Value> = ports_of(live).into_iter().map(|p| port_json(live, Some(p))).collect();
    let workload = &live.config.workload;
    json!({
        "workload": live.workload,
        "address": workload.address.to_string(),
        "version": live.version,
        "ports": ports,
        "otherPorts": port_json(live, None),
        "proxyListeners": proxy_listeners(workload),
        "syncNote": sync_note(live),
    })
}

fn ports_table(ports: &[Value], other: &Value) -> String {
    let mut rows = vec![["PORT", "NAME", "PROTOCOL", "MTLS", "SET BY"].map(str::to_owned).to_vec()];
    for port in ports.iter().chain(std::iter::once(other)) {
        rows.push(vec![
            port["port"].as_u64().map_or("(other)".to_owned(), |p| p.to_string()),
            text(&port["name"]),
            text(&port["protocol"]),
            text(&port["mtls"]),
            match port["dryRun"]["mtls"].as_str() {
                Some(would) => {
                    format!("{}; dry-run {would} by {}", mode_source(port), text(&port["dryRun"]["mtlsPolicy"]))
                }
                None => mode_source(port),
            },
        ]);
    }
    table(&rows)
}

fn listeners_text(body: &Value) -> String {
    let ports = body["ports"].as_array().cloned().unwrap_or_default();
    let mut out =
        format!("{} at {}, version {}\n", text(&body["workload"]), text(&body["address"]), text(&body["version"]));
    out.push_str(&ports_table(&ports, &body["otherPorts"]));
    out.push_str("\nproxy listeners:\n");
    let mut rows = vec![["ADDRESS", "PURPOSE"].map(str::to_owned).to_vec()];
    for listener in body["proxyListeners"].as_array().into_iter().flatten() {
        rows.push(vec![text(&listener["address"]), text(&listener["purpose"])]);
    }
    out.push_str(&table(&rows));
    out
}

// ---- clusters and endpoints ----

const HBONE: &str = "HBONE mTLS";
const PLAIN: &str = "plain TCP (no peer identity verified by the proxy)";

fn endpoint(address: String, registry: &Registry, target: Option<SocketAddr>) -> Value {
    match target.and_then(|t| registry.destination(t)) {
        Some(peer) => json!({"address": address, "transport": HBONE, "identity": peer.identity.to_string(),
            "workload": format!("{}/{}", peer.namespace, peer.name)}),
        None => json!({"address": address, "transport": PLAIN, "identity": null, "workload": null}),
    }
}

/// Where the proxy sends a connection for `host:port`, as `Registry::route_host` decides.
fn route_endpoints(registry: &Registry, host: &str, port: u16) -> Vec<Value> {
    match registry.route_host(host, port) {
        HostRoute::Address(ip) => {
            let target = SocketAddr::new(ip, port);
            vec![endpoint(target.to_string(), registry, Some(target))]
        }
        HostRoute::ServiceEntry(route) => route
            .upstreams
            .iter()
            .map(|upstream| match upstream {
                Upstream::Address(target) => endpoint(target.to_string(), registry, Some(*target)),
                Upstream::Name { host, port } => {
                    let mut value = endpoint(format!("{host}:{port}"), registry, None);
                    value["resolution"] = json!("DNS at connect time");
                    value
                }
            })
            .collect(),
        HostRoute::UndeclaredPort { .. } | HostRoute::Unknown => Vec::new(),
    }
}

fn peers_of(endpoints: &[Value]) -> Vec<String> {
    let peers: BTreeSet<String> = endpoints.iter().filter_map(|e| e["identity"].as_str().map(str::to_owned)).collect();
    peers.into_iter().collect()
}

fn cluster_list(live: &LiveWorkload) -> Vec<Value> {
    let registry = &live.config.registry;
    let mut workloads: Vec<_> = registry.workloads().collect();
    workloads.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut clusters = Vec::new();
    for workload in workloads {
        let endpoints: Vec<Value> = if workload.ports.is_empty() {
            vec![endpoint(format!("{}:*", workload.address), registry, Some(SocketAddr::new(workload.address, 0)))]
        } else {
            workload
                .ports
                .iter()
                .map(|p| {
                    let target = SocketAddr::new(workload.address, p.number);
                    endpoint(target.to_string(), registry, Some(target))
                })
                .collect()
        };
        clusters.push(json!({
            "name": format!("{}.{}.svc.cluster.local", workload.name, workload.namespace),
            "kind": "workload",
            "source": format!("{}/{}", workload.namespace, workload.name),
            "ports": workload.ports.iter().map(|p| p.number).collect::<Vec<_>>(),
            "transport": HBONE,
            "expectedPeers": [workload.identity.to_string()],
            "endpoints": endpoints,
        }));
    }
    let mut entries: Vec<_> = live.loaded.service_entries.iter().collect();
    entries.sort_by(|a, b| (&a.meta.namespace, &a.meta.name).cmp(&(&b.meta.namespace, &b.meta.name)));
    for entry in entries {
        for host in &entry.hosts {
            for port in &entry.ports {
                let endpoints =
                    if host.contains('*') { Vec::new() } else { route_endpoints(registry, host, port.number) };
                let peers = peers_of(&endpoints);
                let transport = if host.contains('*') {
                    "the name asked for, resolved by DNS at connect time; plain TCP".to_owned()
                } else if endpoints.is_empty() {
                    "not routed: a workload or an earlier ServiceEntry claims this host".to_owned()
                } else if peers.len() == endpoints.len() {
                    HBONE.to_owned()
                } else if peers.is_empty() {
                    PLAIN.to_owned()
                } else {
                    "mixed: HBONE mTLS to mesh endpoints, plain TCP to the others".to_owned()
                };
                clusters.push(json!({
                    "name": format!("outbound|{}||{host}", port.number),
                    "kind": "ServiceEntry",
                    "source": entry.meta.key(),
                    "ports": [port.number],
                    "resolution": entry.resolution,
                    "transport": transport,
                    "expectedPeers": peers,
                    "endpoints": endpoints,
                }));
            }
        }
    }
    let other = match live.config.mesh.outbound_traffic_policy {
        OutboundTrafficPolicy::AllowAny => json!({
            "name": "PassthroughCluster", "kind": "outboundTrafficPolicy", "source": "ALLOW_ANY",
            "ports": [], "transport": "any other address: plain TCP to where the app connected",
            "expectedPeers": [], "endpoints": []}),
        OutboundTrafficPolicy::RegistryOnly => json!({
            "name": "BlackHoleCluster", "kind": "outboundTrafficPolicy", "source": "REGISTRY_ONLY",
            "ports": [], "transport": "any other address: refused", "expectedPeers": [], "endpoints": []}),
    };
    clusters.push(other);
    clusters
}

fn clusters(live: &LiveWorkload) -> Value {
    json!({
        "workload": live.workload,
        "version": live.version,
        "clusters": cluster_list(live),
        "syncNote": sync_note(live),
    })
}

fn clusters_text(body: &Value) -> String {
    let mut rows = vec![["CLUSTER", "KIND", "SOURCE", "TRANSPORT", "EXPECTED PEERS"].map(str::to_owned).to_vec()];
    for cluster in body["clusters"].as_array().into_iter().flatten() {
        let peers: Vec<String> = cluster["expectedPeers"].as_array().into_iter().flatten().map(text).collect();
        rows.push(vec![
            text(&cluster["name"]),
            text(&cluster["kind"]),
            text(&cluster["source"]),
            text(&cluster["transport"]),
            if peers.is_empty() { "-".to_owned() } else { peers.join(",") },
        ]);
    }
    format!("{} version {}\n{}", text(&body["workload"]), text(&body["version"]), table(&rows))
}

fn endpoints(live: &LiveWorkload) -> Value {
    let mut rows = Vec::new();
    for cluster in cluster_list(live) {
        for endpoint in cluster["endpoints"].as_array().into_iter().flatten() {
            let mut row = endpoint.clone();
            row["cluster"] = cluster["name"].clone();
            rows.push(row);
        }
    }
    json!({"workload": live.workload, "version": live.version, "endpoints": rows, "syncNote": sync_note(live)})
}

fn endpoints_text(body: &Value) -> String {
    let mut rows = vec![["ENDPOINT", "CLUSTER", "TRANSPORT", "IDENTITY"].map(str::to_owned).to_vec()];
    for endpoint in body["endpoints"].as_array().into_iter().flatten() {
        let transport = if endpoint["identity"].is_null() { "plain TCP" } else { HBONE };
        rows.push(vec![
            text(&endpoint["address"]),
            text(&endpoint["cluster"]),
            transport.to_owned(),
            text(&endpoint["identity"]),
        ]);
    }
    format!("{} version {}\n{}", text(&body["workload"]), text(&body["version"]), table(&rows))
}

// ---- policies ----

fn spec_of(live: &LiveWorkload, kind: &str, id: &str) -> Value {
    live.resources
        .get(&format!("{kind}/{id}"))
        .and_then(|r| serde_json::from_str::<Value>(&r.document).ok())
        .map_or(Value::Null, |doc| doc["spec"].clone())
}

fn policies(live: &LiveWorkload) -> Value {
    let config = &live.config;
    let authorization: Vec<Value> = config
        .policy
        .all()
        .map(|p| {
            json!({
                "policy": p.id.as_ref(),
                "action": p.action.as_str(),
                "provider": p.provider,
                "dryRun": p.dry_run,
                "rules": p.rules.len(),
                "spec": spec_of(live, "AuthorizationPolicy", &p.id),
            })
        })
        .collect();
    let request: Vec<Value> = config
        .policies
        .jwt_rules(&config.as_policy_sees_it)
        .iter()
        .map(|r| {
            json!({
                "policy": r.policy.as_ref(),
                "issuers": r.rules.iter().map(|j| j.issuer.as_str()).collect::<Vec<_>>(),
                "jwksUris": r.rules.iter().filter_map(|j| j.jwks_uri.as_deref()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let ports: Vec<Value> = ports_of(live).into_iter().map(|p| port_json(live, Some(p))).collect();
    json!({
        "workload": live.workload,
        "version": live.version,
        "evaluation": "CUSTOM, then DENY, then ALLOW (no ALLOW policy: allowed); AUDIT and dry-run are logged only",
        "authorizationPolicies": authorization,
        "requestAuthentications": request,
        "peerAuthentication": {"ports": ports, "otherPorts": port_json(live, None)},
        "syncNote": sync_note(live),
    })
}

fn policies_text(body: &Value) -> String {
    let mut out = format!("{} version {}\n", text(&body["workload"]), text(&body["version"]));
    let authz = body["authorizationPolicies"].as_array().cloned().unwrap_or_default();
    if authz.is_empty() {
        out.push_str("AuthorizationPolicy: none applies (every request is allowed)\n");
    } else {
        let mut rows =
            vec![["ACTION", "AUTHORIZATION POLICY", "RULES", "DRY-RUN", "PROVIDER"].map(str::to_owned).to_vec()];
        for p in &authz {
            rows.push(vec![
                text(&p["action"]),
                text(&p["policy"]),
                text(&p["rules"]),
                text(&p["dryRun"]),
                text(&p["provider"]),
            ]);
        }
        out.push_str(&table(&rows));
    }
    for r in body["requestAuthentications"].as_array().into_iter().flatten() {
        let issuers: Vec<String> = r["issuers"].as_array().into_iter().flatten().map(text).collect();
        out.push_str(&format!("RequestAuthentication {}: issuers {}\n", text(&r["policy"]), issuers.join(", ")));
    }
    out.push_str("\nPeerAuthentication:\n");
    let ports = body["peerAuthentication"]["ports"].as_array().cloned().unwrap_or_default();
    out.push_str(&ports_table(&ports, &body["peerAuthentication"]["otherPorts"]));
    out
}

// ---- describe ----

fn labels_text(labels: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", pairs.join(", "))
}

/// Why a selector does not pick the workload, and whether it picks anything at all.
fn selector_miss(selector: &Selector, live: &LiveWorkload, scope: Option<&str>) -> String {
    let labels = &live.config.workload.labels;
    let differing: Vec<String> = selector
        .match_labels
        .iter()
        .filter(|(k, v)| labels.get(*k) != Some(*v))
        .map(|(k, v)| match labels.get(k) {
            Some(actual) => format!("{k}={v} (the workload has {k}={actual})"),
            None => format!("{k}={v} (the workload has no {k} label)"),
        })
        .collect();
    let selects_any = live
        .config
        .registry
        .workloads()
        .any(|w| scope.is_none_or(|ns| w.namespace == ns) && selector.matches(&w.labels));
    let nothing = if selects_any { "" } else { "; it selects no workload in the registry" };
    format!("selector {} does not match: {}{nothing}", labels_text(&selector.match_labels), differing.join(", "))
}

struct PolicyReport {
    applies: Vec<Value>,
    ignored: Vec<Value>,
}

fn peer_authentication_report(live: &LiveWorkload, root: &str, report: &mut PolicyReport) {
    let workload = &live.config.workload;
    let all = &live.namespace_policies.peer_authentications;
    // Oldest first, as the proxy ranks PeerAuthentications: creation time, then load order.
    fn oldest(candidates: Vec<&PeerAuthentication>) -> Option<&PeerAuthentication> {
        candidates.into_iter().min_by_key(|p| {
            let (created, order) = p.meta.age_key();
            (created.map(str::to_owned), order)
        })
    }
    // Dry-run policies are not enforced and take no part, as in the proxy.
    let wide =
        |ns: &str| oldest(all.iter().filter(|p| !p.dry_run && p.meta.namespace == ns && !p.has_selector()).collect());
    let mesh = wide(root);
    let namespace = (workload.namespace != root).then(|| wide(&workload.namespace)).flatten();
    let selected = (workload.namespace != root)
        .then(|| {
            oldest(
                all.iter()
                    .filter(|p| {
                        !p.dry_run
                            && p.meta.namespace == workload.namespace
                            && p.selector.as_ref().is_some_and(|s| s.matches(&workload.labels))
                    })
                    .collect(),
            )
        })
        .flatten();
    let chosen =
        [(mesh, "mesh-wide (root namespace)"), (namespace, "namespace-wide"), (selected, "workload (selector)")];
    for policy in all {
        let key = policy.meta.key();
        let kind_key = format!("PeerAuthentication/{key}");
        if let Some((_, level)) = chosen.iter().find(|(c, _)| c.is_some_and(|c| std::ptr::eq(c, policy))) {
            let effect = if policy.mode == MtlsMode::Unset {
                "mode UNSET: inherits from the level above".to_owned()
            } else {
                format!("mode {}", policy.mode.as_str())
            };
            let ports: Vec<String> =
                policy.port_level_mtls.iter().map(|(p, m)| format!("{p}={}", m.as_str())).collect();
            report.applies.push(json!({
                "kind": "PeerAuthentication", "policy": key, "level": level, "effect": effect,
                "portLevelMtls": ports, "dryRun": policy.dry_run, "pushed": live.pushed_policies.contains(&kind_key),
            }));
            continue;
        }
        let why = if policy.meta.namespace == root && policy.has_selector() && workload.namespace != root {
            "a PeerAuthentication with a selector in the root namespace is ignored; put it in the workload's namespace"
                .to_owned()
        } else if policy.meta.namespace == root && policy.has_selector() {
            "a PeerAuthentication with a selector in the root namespace is ignored, also for root-namespace workloads"
                .to_owned()
        } else if let Some(selector) = policy.selector.as_ref().filter(|s| !s.matches(&workload.labels)) {
            selector_miss(selector, live, Some(&policy.meta.namespace))
        } else if policy.dry_run {
            format!(
                "dry-run (istio.io/dry-run): not enforced; it would set mode {}, and the proxy logs and counts the \
                 plaintext connections that would refuse (see `zmesh mtls-readiness`)",
                policy.mode.as_str()
            )
        } else {
            let winner = if policy.has_selector() {
                selected
            } else if policy.meta.namespace == root {
                mesh
            } else {
                namespace
            };
            match winner {
                Some(winner) => format!(
                    "PeerAuthentication {} at the same level is older; only the oldest applies",
                    winner.meta.key()
                ),
                None => "not in force at this level".to_owned(),
            }
        };
        report.ignored.push(json!({"kind": "PeerAuthentication", "policy": key, "why": why}));
    }
}

fn selected_kind_report(
    live: &LiveWorkload,
    kind: &str,
    policies: impl Iterator<Item = (String, Option<Selector>, bool, Value)>,
    in_force: &BTreeSet<String>,
    report: &mut PolicyReport,
) {
    for (key, selector, has_target_refs, detail) in policies {
        let scope = key.split('/').next().map(str::to_owned);
        let root = live.config.policies.root_namespace();
        let why = if has_target_refs {
            Some("it attaches through targetRefs (gateways, waypoints); sidecars ignore it".to_owned())
        } else if let Some(selector) = selector.as_ref().filter(|s| !s.matches(&live.config.workload.labels)) {
            let scope = scope.as_deref().filter(|ns| *ns != root);
            Some(selector_miss(selector, live, scope))
        } else if !in_force.contains(&key) {
            Some("selects the workload but is not in the proxy's compiled set (not pushed yet?)".to_owned())
        } else {
            None
        };
        match why {
            Some(why) => report.ignored.push(json!({"kind": kind, "policy": key, "why": why})),
            None => {
                let mut entry = json!({"kind": kind, "policy": key,
                    "level": if selector.is_some() { "workload (selector)" } else if scope.as_deref() == Some(root) { "mesh-wide (root namespace)" } else { "namespace-wide" },
                    "pushed": live.pushed_policies.contains(&format!("{kind}/{key}"))});
                if let (Some(entry), Some(detail)) = (entry.as_object_mut(), detail.as_object()) {
                    entry.extend(detail.clone());
                }
                report.applies.push(entry);
            }
        }
    }
}

fn services_of(live: &LiveWorkload) -> Vec<Value> {
    let workload = &live.config.workload;
    let mut services = Vec::new();
    for service in &live.loaded.services {
        if service.meta.namespace == workload.namespace
            && !service.selector.is_empty()
            && service.selector.iter().all(|(k, v)| workload.labels.get(k) == Some(v))
        {
            services.push(json!({
                "kind": "Service", "name": service.meta.key(),
                "hosts": [format!("{}.{}.svc.cluster.local", service.meta.name, service.meta.namespace)],
                "ports": service.ports.iter().map(|p| json!({"port": p.number, "name": p.name, "targetPort": p.target_port})).collect::<Vec<_>>(),
                "why": format!("selector {} matches its labels", labels_text(&service.selector)),
            }));
        }
    }
    for entry in &live.loaded.service_entries {
        let why = match &entry.workload_selector {
            Some(selector) if entry.meta.namespace == workload.namespace && selector.matches(&workload.labels) => {
                Some(format!("workloadSelector {} matches its labels", labels_text(&selector.match_labels)))
            }
            _ if entry.endpoints.iter().any(|e| e.ip() == Some(workload.address)) => {
                Some(format!("an endpoint has its address {}", workload.address))
            }
            _ => None,
        };
        if let Some(why) = why {
            services.push(json!({
                "kind": "ServiceEntry", "name": entry.meta.key(), "hosts": entry.hosts,
                "ports": entry.ports.iter().map(|p| json!({"port": p.number, "name": p.name, "targetPort": p.target_port})).collect::<Vec<_>>(),
                "why": why,
            }));
        }
    }
    services
}

fn describe_json(live: &LiveWorkload) -> Value {
    let config = &live.config;
    let workload = &config.workload;
    let root = config.policies.root_namespace().to_owned();
    let mut report = PolicyReport { applies: Vec::new(), ignored: Vec::new() };
    let in_force: BTreeSet<String> = config.policy.all().map(|p| p.id.to_string()).collect();
    let mut latest: BTreeMap<String, &zmesh_config::authz::AuthorizationPolicy> = BTreeMap::new();
    for policy in &live.namespace_policies.authorization_policies {
        latest.insert(policy.meta.key(), policy);
    }
    selected_kind_report(
        live,
        "AuthorizationPolicy",
        latest.into_iter().map(|(key, p)| {
            let detail = json!({"action": p.action.as_str(), "dryRun": p.dry_run, "rules": p.rules.len()});
            (key, p.selector.clone(), !p.target_refs.is_empty(), detail)
        }),
        &in_force,
        &mut report,
    );
    let jwt: BTreeSet<String> =
        config.policies.jwt_rules(&config.as_policy_sees_it).iter().map(|r| r.policy.to_string()).collect();
    selected_kind_report(
        live,
        "RequestAuthentication",
        live.namespace_policies.request_authentications.iter().map(|p| {
            let detail = json!({"issuers": p.jwt_rules.iter().map(|j| j.issuer.as_str()).collect::<Vec<_>>()});
            (p.meta.key(), p.selector.clone(), !p.target_refs.is_empty(), detail)
        }),
        &jwt,
        &mut report,
    );
    peer_authentication_report(live, &root, &mut report);
    let proxies: Vec<Value> = match &live.source {
        // The proxy that answered enforces the version it gave; the control plane, not asked,
        // alone knows the workload's other proxies.
        crate::live::ConfigSource::Admin(admin) => {
            vec![json!({"proxyId": format!("the proxy at {admin}"), "state": "ENFORCING", "versionAcked": live.version})]
        }
        crate::live::ConfigSource::ControlPlane(_) => live
            .proxies
            .iter()
            .map(|p| json!({"proxyId": p["proxyId"], "state": if p["connected"] == true { p["state"].clone() } else { json!("DISCONNECTED") }, "versionAcked": p["versionAcked"]}))
            .collect(),
    };
    json!({
        "workload": live.workload,
        "version": live.version,
        "address": workload.address.to_string(),
        "identity": workload.identity.to_string(),
        "serviceAccount": workload.service_account,
        "labels": workload.labels,
        "rootNamespace": root,
        "proxies": proxies,
        "ports": ports_of(live).into_iter().map(|p| port_json(live, Some(p))).collect::<Vec<_>>(),
        "otherPorts": port_json(live, None),
        "policies": report.applies,
        "notApplying": report.ignored,
        "notApplyingNote": live.namespace_policies_note,
        "services": services_of(live),
        "syncNote": sync_note(live),
    })
}

fn describe_text(body: &Value) -> String {
    let mut out = format!(
        "Workload:  {}\nAddress:   {}\nIdentity:  {}\nLabels:    {}\nVersion:   {}\n",
        text(&body["workload"]),
        text(&body["address"]),
        text(&body["identity"]),
        body["labels"]
            .as_object()
            .map_or("{}".to_owned(), |m| { labels_text(&m.iter().map(|(k, v)| (k.clone(), text(v))).collect()) }),
        text(&body["version"]),
    );
    let proxies: Vec<String> = body["proxies"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| format!("{} {}", text(&p["proxyId"]), text(&p["state"])))
        .collect();
    out.push_str(&format!(
        "Proxies:   {}\n",
        if proxies.is_empty() { "none connected".to_owned() } else { proxies.join(", ") }
    ));
    out.push_str("\nmTLS per port:\n");
    let ports = body["ports"].as_array().cloned().unwrap_or_default();
    out.push_str(&ports_table(&ports, &body["otherPorts"]));
    out.push_str("\nPolicies that apply:\n");
    let applies = body["policies"].as_array().cloned().unwrap_or_default();
    if applies.is_empty() {
        out.push_str("  none\n");
    }
    for p in &applies {
        let what = match p["kind"].as_str() {
            Some("AuthorizationPolicy") => {
                let dry = if p["dryRun"] == true { ", dry-run" } else { "" };
                format!("{} ({} rule(s){dry})", text(&p["action"]), text(&p["rules"]))
            }
            Some("PeerAuthentication") => text(&p["effect"]),
            _ => format!(
                "issuers {}",
                p["issuers"].as_array().into_iter().flatten().map(text).collect::<Vec<_>>().join(", ")
            ),
        };
        out.push_str(&format!("  {} {}: {what}, {}\n", text(&p["kind"]), text(&p["policy"]), text(&p["level"])));
    }
    let ignored = body["notApplying"].as_array().cloned().unwrap_or_default();
    if !ignored.is_empty() {
        out.push_str("\nPolicies of its namespace or the root namespace that do not apply:\n");
        for p in &ignored {
            out.push_str(&format!("  {} {}: {}\n", text(&p["kind"]), text(&p["policy"]), text(&p["why"])));
        }
    }
    if let Some(note) = body["notApplyingNote"].as_str() {
        out.push_str(&format!("\nPolicies that do not apply: not known here; {note}\n"));
    }
    out.push_str("\nServices:\n");
    let services = body["services"].as_array().cloned().unwrap_or_default();
    if services.is_empty() {
        out.push_str("  none selects it\n");
    }
    for s in &services {
        let hosts: Vec<String> = s["hosts"].as_array().into_iter().flatten().map(text).collect();
        out.push_str(&format!(
            "  {} {} ({}): {}\n",
            text(&s["kind"]),
            text(&s["name"]),
            hosts.join(", "),
            text(&s["why"])
        ));
    }
    out
}

// ---- tls-check ----

enum Client {
    Mesh(Box<LiveWorkload>),
    Outside(IpAddr),
}

fn connected(live: &LiveWorkload) -> bool {
    live.proxies.iter().any(|p| p["connected"] == true)
}

fn tls_check_json(source: &Client, destination: &LiveWorkload) -> Value {
    let dest = &destination.config.workload;
    // The client side: a mesh workload's proxy tunnels to any workload its registry knows over
    // HBONE (mTLS, verifying the destination's SPIFFE ID); DestinationRules are not applied
    // (zmesh warns when it reads one), so nothing turns that off. Anyone else sends plaintext.
    let (name, mtls, client_reason) = match source {
        Client::Outside(ip) => (
            ip.to_string(),
            false,
            format!("{ip} is not a mesh workload: it has no proxy, so it connects in plaintext"),
        ),
        Client::Mesh(live) if !connected(live) => (
            live.workload.clone(),
            false,
            format!(
                "no proxy of {} is connected to the control plane: without one its app connects in plaintext",
                live.workload
            ),
        ),
        Client::Mesh(live) => match live.config.registry.workload_named(&dest.namespace, &dest.name) {
            Some(peer) => (
                live.workload.clone(),
                true,
                format!("its proxy tunnels to {} over HBONE (mTLS), verifying {}", destination.workload, peer.identity),
            ),
            None => (
                live.workload.clone(),
                false,
                format!(
                    "its proxy's registry has no {}: outbound traffic goes per outboundTrafficPolicy, in plaintext or not at all",
                    destination.workload
                ),
            ),
        },
    };
    let server_up = connected(destination);
    // The declared ports, then every other port (the workload-level mode).
    let ports: Vec<Value> = ports_of(destination)
        .into_iter()
        .map(Some)
        .chain([None])
        .map(|port| {
            let server = port_json(destination, port);
            let mode = server["mtls"].as_str().unwrap_or("PERMISSIVE").to_owned();
            let set_by = mode_source(&server);
            let (accepted, reason) = match (mtls, mode.as_str()) {
                (true, _) if !server_up => (
                    false,
                    format!("no proxy of {} is connected: the tunnel has nowhere to go and the connection fails (never falls back to plaintext)", destination.workload),
                ),
                (true, "DISABLE") => (
                    true,
                    format!("DISABLE ({set_by}) means plaintext, but zmesh's proxy accepts every HBONE tunnel with mTLS (as Istio ambient, where DISABLE is not supported)"),
                ),
                (true, _) => (true, format!("{mode} accepts mTLS ({set_by})")),
                (false, "STRICT") => (false, format!("STRICT ({set_by}) refuses plaintext")),
                (false, _) => (true, format!("{mode} accepts plaintext ({set_by})")),
            };
            json!({
                "port": port,
                "name": server["name"],
                "client": if mtls { "mTLS" } else { "plaintext" },
                "server": mode,
                "serverPolicy": server["mtlsPolicy"],
                "accepted": accepted,
                "reason": reason,
            })
        })
        .collect();
    let note = match source {
        Client::Mesh(live) => {
            sync_note(live).as_str().map(str::to_owned).into_iter().chain(destination.sync_note()).collect::<Vec<_>>()
        }
        Client::Outside(_) => destination.sync_note().into_iter().collect(),
    };
    json!({
        "source": name,
        "destination": destination.workload,
        "version": destination.version,
        "client": {"mtls": mtls, "reason": client_reason},
        "ports": ports,
        "note": "authorization is decided after this: see `zmesh proxy-config policies`",
        "syncNote": if note.is_empty() { Value::Null } else { Value::from(note.join("; ")) },
    })
}

fn tls_check_text(body: &Value) -> String {
    let mut out = format!(
        "{} -> {} (version {})\nclient: {}\n",
        text(&body["source"]),
        text(&body["destination"]),
        text(&body["version"]),
        text(&body["client"]["reason"])
    );
    let mut rows = vec![["PORT", "CLIENT", "SERVER", "STATUS", "WHY"].map(str::to_owned).to_vec()];
    for port in body["ports"].as_array().into_iter().flatten() {
        rows.push(vec![
            port["port"].as_u64().map_or("(other)".to_owned(), |p| p.to_string()),
            text(&port["client"]),
            text(&port["server"]),
            if port["accepted"] == true { "OK" } else { "CONFLICT" }.to_owned(),
            text(&port["reason"]),
        ]);
    }
    out.push_str(&table(&rows));
    out
}
