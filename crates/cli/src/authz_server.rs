//! `zmesh authz-server`: an Envoy ext_authz server (HTTP and gRPC) deciding with CEL rules, for
//! Istio's CUSTOM action or any Envoy's ext_authz filter. The work is in zmesh-authz-server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use zmesh_authz_server::{DEFAULT_GRPC_ADDR, DEFAULT_HTTP_ADDR, Server, ServerConfig, ServerError, SystemClock};

use crate::UsageError;
use crate::control::{cancel_on_signal, init_logging};

#[derive(Debug, clap::Args)]
pub(crate) struct AuthzServerArgs {
    /// The rules file: YAML with a CEL `when` per rule; reloaded when it changes.
    #[arg(long, value_name = "FILE")]
    rules: PathBuf,
    /// Serve Envoy's HTTP ext_authz checks here. With neither --http nor --grpc, both listen:
    /// HTTP on 127.0.0.1:8000 and gRPC on 127.0.0.1:9000 (the ports of Istio's sample ext-authz).
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// Serve Envoy's gRPC ext_authz checks (envoy.service.auth.v3.Authorization) here.
    #[arg(long, value_name = "ADDR")]
    grpc: Option<SocketAddr>,
    /// The pathPrefix the proxy puts before the path of HTTP checks (removed before rules see it).
    #[arg(long, value_name = "PREFIX", default_value = "")]
    http_path_prefix: String,
    /// Which token payload of the jwt_authn metadata is `request.auth.claims` (its
    /// payload_in_metadata name; Istio uses the issuer). Default: the only one present.
    #[arg(long, value_name = "NAME")]
    claims_key: Option<String>,
    /// Open connections at most, over both listeners.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// How often the rules file is checked for changes.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    reload_ms: u64,
    /// Log filter (RUST_LOG syntax); `debug` logs every allow too.
    #[arg(long, default_value = "info")]
    log_level: String,
}

pub(crate) fn authz_server(args: AuthzServerArgs) -> anyhow::Result<u8> {
    init_logging(&args.log_level)?;
    let mut config = ServerConfig::new(args.rules);
    config.http = args.http;
    config.grpc = args.grpc;
    if config.http.is_none() && config.grpc.is_none() {
        config.http = Some(DEFAULT_HTTP_ADDR.parse()?);
        config.grpc = Some(DEFAULT_GRPC_ADDR.parse()?);
    }
    if !args.http_path_prefix.is_empty() && !args.http_path_prefix.starts_with('/') {
        return Err(UsageError(format!("--http-path-prefix `{}` must start with /", args.http_path_prefix)).into());
    }
    config.http_path_prefix = args.http_path_prefix.trim_end_matches('/').to_owned();
    config.claims_key = args.claims_key;
    config.max_connections = args.max_connections.max(1);
    config.reload_interval = Duration::from_millis(args.reload_ms.max(10));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let stop = CancellationToken::new();
        cancel_on_signal(stop.clone())?;
        let server = match Server::bind(config, Arc::new(SystemClock)).await {
            Ok(server) => server,
            // Bad rules are bad input: say so with the usage exit code.
            Err(error @ ServerError::Rules(_)) => {
                return Err(UsageError(format!("{:#}", anyhow::Error::new(error))).into());
            }
            Err(error) => return Err(anyhow::Error::new(error)),
        };
        let listening: Vec<String> = [("HTTP", server.http_addr()), ("gRPC", server.grpc_addr())]
            .into_iter()
            .filter_map(|(protocol, addr)| addr.map(|addr| format!("{protocol} on {addr}")))
            .collect();
        eprintln!("zmesh authz-server: {} rules; {}", server.rule_names().len(), listening.join(", "));
        server.run(stop).await;
        anyhow::Ok(())
    })?;
    Ok(0)
}
