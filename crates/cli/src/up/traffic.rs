//! `zmesh traffic` (hidden): the demo's traffic generator, run as the calling workload (inside
//! its network namespace with `--isolate`, or through its proxy's HTTP proxy port on loopback).
//! It sends each flow's request once per interval and prints one JSON line per answer, which
//! `zmesh up` aggregates into its summary.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;

#[derive(Debug, clap::Args)]
pub(crate) struct TrafficArgs {
    /// The flows, as a JSON array of {"id", "method", "url", "headers": [[name, value]]}.
    #[arg(long)]
    flows: String,
    /// Send through this HTTP proxy (the workload's proxy in explicit mode) instead of
    /// connecting directly (transparent capture).
    #[arg(long, value_name = "ADDR")]
    proxy: Option<SocketAddr>,
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Stop after this many rounds (0: until stopped).
    #[arg(long, default_value_t = 0)]
    rounds: u64,
}

#[derive(Debug, serde::Deserialize)]
pub(crate) struct FlowSpec {
    pub id: usize,
    pub method: String,
    pub url: String,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
}

/// One answer, as printed.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Outcome {
    pub flow: usize,
    /// HTTP status; 0 when no answer came.
    pub status: u16,
    /// The caller identity the app saw (from the x-forwarded-client-cert the proxy set), which
    /// proves the request crossed the mesh over mTLS.
    pub peer: Option<String>,
    pub error: Option<String>,
    /// When the request was sent (milliseconds since the Unix epoch), so `up` counts only
    /// requests sent after a configuration reached every proxy.
    #[serde(default)]
    pub sent_at_ms: u64,
}

async fn send(flow: &FlowSpec, proxy: Option<SocketAddr>) -> anyhow::Result<(u16, Bytes)> {
    let uri: http::Uri = flow.url.parse().with_context(|| format!("flow {}: bad URL", flow.id))?;
    let authority = uri.authority().context("the URL has no host")?.clone();
    let connect_to = match proxy {
        Some(proxy) => proxy.to_string(),
        None => format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(80)),
    };
    let stream = tokio::net::TcpStream::connect(&connect_to).await.with_context(|| format!("connect {connect_to}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    // Through a proxy the request line carries the absolute URL, as http_proxy clients send it.
    let target =
        if proxy.is_some() { uri.to_string() } else { uri.path_and_query().map_or("/", |p| p.as_str()).to_owned() };
    let mut request = http::Request::builder()
        .method(flow.method.as_str())
        .uri(target)
        .header(http::header::HOST, authority.as_str());
    for (name, value) in &flow.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let response = sender.send_request(request.body(Full::new(Bytes::new()))?).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// The `URI=` of the x-forwarded-client-cert the echo app reports.
fn peer_from_echo(body: &[u8]) -> Option<String> {
    let echo: serde_json::Value = serde_json::from_slice(body).ok()?;
    let xfcc = echo["headers"]["x-forwarded-client-cert"].as_str()?;
    xfcc.split(';').find_map(|part| part.strip_prefix("URI=")).map(str::to_owned)
}

pub(crate) fn traffic(args: TrafficArgs) -> anyhow::Result<u8> {
    let flows: Vec<FlowSpec> = serde_json::from_str(&args.flows).context("--flows is not the expected JSON")?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let mut round = 0u64;
        loop {
            for flow in &flows {
                let sent_at_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                let outcome = match tokio::time::timeout(Duration::from_secs(3), send(flow, args.proxy)).await {
                    Ok(Ok((status, body))) => {
                        Outcome { flow: flow.id, status, peer: peer_from_echo(&body), error: None, sent_at_ms }
                    }
                    Ok(Err(error)) => {
                        Outcome { flow: flow.id, status: 0, peer: None, error: Some(format!("{error:#}")), sent_at_ms }
                    }
                    Err(_) => Outcome {
                        flow: flow.id,
                        status: 0,
                        peer: None,
                        error: Some("no answer within 3 s".into()),
                        sent_at_ms,
                    },
                };
                outln!("{}", serde_json::to_string(&outcome)?);
            }
            round += 1;
            if args.rounds != 0 && round >= args.rounds {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
        }
    })?;
    Ok(0)
}
