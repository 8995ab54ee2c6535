//! `zmesh control-plane` (serve configuration, certificates and status) and
//! `zmesh proxy-status` (where every proxy stands, like `istioctl proxy-status`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use zmesh_control::plane::{ControlPlane, Options};
use zmesh_control::store::WatchOptions;

use crate::UsageError;

/// The control plane's gRPC port (push and signing, over TLS: Istio's 15012) and status API
/// port.
pub(crate) const GRPC_PORT: u16 = 15012;
pub(crate) const STATUS_PORT: u16 = 15014;

#[derive(Debug, clap::Args)]
pub(crate) struct ControlPlaneArgs {
    /// Configuration: a directory of YAML (watched for changes) or one file.
    #[arg(long, value_name = "DIR")]
    config: PathBuf,
    /// The CA directory (created with a new root on first start).
    #[arg(long, value_name = "DIR", default_value = "zmesh-ca")]
    ca_dir: PathBuf,
    /// gRPC over TLS: configuration push and certificate signing. The control plane serves
    /// under its own certificate from the CA (spiffe://<trust-domain>/ns/zmesh-system/sa/zmesh-control);
    /// proxies verify it against the CA directory's root-cert.pem (`zmesh proxy --roots`).
    #[arg(long, value_name = "ADDR", default_value_t = SocketAddr::from(([127, 0, 0, 1], GRPC_PORT)))]
    listen: SocketAddr,
    /// HTTP status API (/api/v1/resources, /workloads, /proxies, /certificates).
    #[arg(long, value_name = "ADDR", default_value_t = SocketAddr::from(([127, 0, 0, 1], STATUS_PORT)))]
    admin: SocketAddr,
    /// How often the configuration directory is checked for changes.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    poll_ms: u64,
    /// Log filter (RUST_LOG syntax).
    #[arg(long, default_value = "info")]
    log_level: String,
}

pub(crate) fn init_logging(filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| UsageError(format!("--log-level: {e}")))?;
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    Ok(())
}

/// Cancel `token` on Ctrl-C or SIGTERM.
pub(crate) fn cancel_on_signal(token: CancellationToken) -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("stopping");
        token.cancel();
    });
    Ok(())
}

pub(crate) fn control_plane(args: ControlPlaneArgs) -> anyhow::Result<u8> {
    init_logging(&args.log_level)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        cancel_on_signal(shutdown.clone())?;
        let options = Options {
            config: args.config,
            ca_dir: args.ca_dir,
            grpc: args.listen,
            admin: args.admin,
            watch: WatchOptions { poll: Duration::from_millis(args.poll_ms.max(10)), ..WatchOptions::default() },
        };
        let plane = ControlPlane::start(options, shutdown.clone()).await?;
        eprintln!("zmesh control plane: gRPC on {}, status API on http://{}/api/v1/proxies", plane.grpc, plane.admin);
        plane.wait().await;
        anyhow::Ok(())
    })?;
    Ok(0)
}

#[derive(Debug, clap::Args)]
pub(crate) struct ProxyStatusArgs {
    /// The control plane's status API.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:15014")]
    control_plane: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = crate::check::Output::Text)]
    output: crate::check::Output,
}

/// GET a JSON document over plain HTTP/1.1 (the status API is local).
pub(crate) async fn get_json(base: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let authority = base
        .strip_prefix("http://")
        .ok_or_else(|| UsageError(format!("`{base}`: only http:// URLs are served by the status API")))?
        .trim_end_matches('/');
    let unreachable =
        || format!("cannot reach the control plane at {base} (is `zmesh up` or `zmesh control-plane` running?)");
    let (status, body) = http_get(authority, path, unreachable).await?;
    let url = format!("{base}{path}");
    if !status.is_success() {
        let why = body.as_ref().and_then(|b| b["error"].as_str()).map(|e| format!(": {e}")).unwrap_or_default();
        anyhow::bail!("{url}: {status}{why}");
    }
    body.ok_or_else(|| anyhow::anyhow!("{url} did not answer JSON"))
}

/// GET `path` from `authority` over plain HTTP/1.1: the status and, when it is JSON, the body.
/// Connecting gets 3 s (`unreachable` says what to check when it fails), the whole answer 10 s,
/// so a peer that stalls cannot hang a command.
pub(crate) async fn http_get(
    authority: &str,
    path: &str,
    unreachable: impl FnOnce() -> String,
) -> anyhow::Result<(http::StatusCode, Option<serde_json::Value>)> {
    let url = format!("http://{authority}{path}");
    let stream = tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(authority))
        .await
        .map_err(|_| anyhow::anyhow!("{url}: no answer within 3 s"))?
        .with_context(unreachable)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, authority)
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = http_body_util::BodyExt::collect(response.into_body()).await?.to_bytes();
        anyhow::Ok((status, body))
    })
    .await
    .map_err(|_| anyhow::anyhow!("{url}: no complete answer within 10 s"))?;
    let (status, body) = answer.with_context(|| format!("{url}: the answer broke off"))?;
    Ok((status, serde_json::from_slice(&body).ok()))
}

pub(crate) fn proxy_status(args: ProxyStatusArgs) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let body = runtime.block_on(get_json(&args.control_plane, "/api/v1/proxies"))?;
    if args.output == crate::check::Output::Json {
        outln!("{body:#}");
        return Ok(0);
    }
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    let version = text(&body["version"]);
    let mut rows = vec![["NAME", "WORKLOAD", "STATUS", "VERSION ACKED", "LAG", "CONNECTED"].map(str::to_owned)];
    for proxy in body["proxies"].as_array().into_iter().flatten() {
        let connected = proxy["connected"].as_bool().unwrap_or(false);
        let state = if connected { text(&proxy["state"]) } else { "DISCONNECTED".to_owned() };
        rows.push([
            text(&proxy["proxyId"]),
            text(&proxy["workload"]),
            state,
            text(&proxy["versionAcked"]),
            format!("{}ms", proxy["lagMs"].as_u64().unwrap_or(0)),
            if connected { text(&proxy["connectedAt"]) } else { text(&proxy["disconnectedAt"]) },
        ]);
    }
    let widths: Vec<usize> = (0..6).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    for row in &rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        outln!("{}", line.join("  ").trim_end());
    }
    outln!("\ncontrol plane version {version}, generation {}", body["generation"]);
    for proxy in body["proxies"].as_array().into_iter().flatten() {
        if let Some(nack) = proxy.get("nack").filter(|n| !n.is_null()) {
            outln!("{} refused {}: {}", text(&proxy["proxyId"]), text(&nack["version"]), text(&nack["error"]));
        }
    }
    let stale =
        body["proxies"].as_array().into_iter().flatten().any(|p| p["state"] != "SYNCED" && p["connected"] == true);
    Ok(if stale { crate::EXIT_FINDINGS } else { 0 })
}
