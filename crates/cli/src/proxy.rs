//! `zmesh proxy`: run the sidecar proxy of one workload.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use zmesh_proxy::capture::{HBONE_PORT, HEALTH_PORT, INBOUND_CAPTURE_PORT, METRICS_PORT, OUTBOUND_CAPTURE_PORT};
use zmesh_proxy::local::{IdentitySource, Local};
use zmesh_proxy::run::{Listeners, Proxy};

use crate::UsageError;

#[derive(Debug, clap::Args)]
pub(crate) struct ProxyArgs {
    /// Configuration directory (WorkloadEntries, policies, MeshConfig).
    #[arg(long, value_name = "DIR")]
    config: PathBuf,
    /// The CA directory to issue (and renew) this workload's certificate from.
    #[arg(long, value_name = "DIR", required_unless_present = "cert", conflicts_with_all = ["cert", "key", "roots"])]
    ca_dir: Option<PathBuf>,
    /// Instead of --ca-dir: a fixed certificate chain (PEM), with --key and --roots.
    #[arg(long, value_name = "FILE", requires_all = ["key", "roots"])]
    cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// The trust bundle for --cert (PEM roots).
    #[arg(long, value_name = "FILE")]
    roots: Option<PathBuf>,
    /// The HBONE port of every proxy of this mesh (move it only when proxies share an address).
    #[arg(long, default_value_t = HBONE_PORT)]
    hbone_port: u16,
    /// The workload this proxy serves, as NAMESPACE/NAME of its WorkloadEntry.
    #[arg(long, value_name = "NS/NAME")]
    workload: String,
    /// No transparent capture: listen on the workload's address only, and route outbound
    /// traffic through `--outbound LISTEN=TARGET` ports.
    #[arg(long)]
    explicit: bool,
    /// An explicit outbound port: connections to LISTEN go to TARGET through the mesh.
    #[arg(long, value_name = "LISTEN=TARGET", value_parser = parse_mapping)]
    outbound: Vec<(SocketAddr, SocketAddr)>,
    /// Override where this proxy's own HBONE listener binds (default: the workload's address, or
    /// every address, on --hbone-port).
    #[arg(long, value_name = "ADDR")]
    hbone_listen: Option<SocketAddr>,
    /// Override where health (default :15021), metrics (:15020) and admin (:15000) listen, for
    /// setups where several proxies share an address.
    #[arg(long, value_name = "ADDR")]
    health: Option<SocketAddr>,
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// Dial a new mTLS connection for every outbound tunnel instead of sharing one (measures
    /// handshake cost; never what a mesh wants).
    #[arg(long)]
    hbone_connection_per_tunnel: bool,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Log filter (RUST_LOG syntax).
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn parse_mapping(text: &str) -> Result<(SocketAddr, SocketAddr), String> {
    let (listen, target) =
        text.split_once('=').ok_or("expected LISTEN=TARGET, such as 127.0.0.1:9000=10.0.0.9:8080")?;
    let parse = |s: &str| s.parse::<SocketAddr>().map_err(|e| format!("`{s}`: {e}"));
    Ok((parse(listen)?, parse(target)?))
}

pub(crate) fn proxy(args: ProxyArgs) -> anyhow::Result<u8> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log_level)
                .map_err(|e| UsageError(format!("--log-level: {e}")))?,
        )
        .with_writer(std::io::stderr)
        .init();
    let identity = match (&args.ca_dir, &args.cert, &args.key, &args.roots) {
        (Some(dir), _, _, _) => IdentitySource::CaDir(dir.clone()),
        (None, Some(chain), Some(key), Some(roots)) => {
            IdentitySource::Files { chain: chain.clone(), key: key.clone(), roots: roots.clone() }
        }
        _ => return Err(UsageError("give --ca-dir, or --cert with --key and --roots".into()).into()),
    };
    let local = Local::load(&args.config, &identity, &args.workload)?;
    let address = local.workload.address;
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let at = |ip: IpAddr, port: u16| SocketAddr::new(ip, port);
    let (own, admin_ip) = if args.explicit { (address, address) } else { (any, IpAddr::V4(Ipv4Addr::LOCALHOST)) };
    let listeners = Listeners {
        hbone: args.hbone_listen.unwrap_or(at(own, args.hbone_port)),
        health: args.health.unwrap_or(at(own, HEALTH_PORT)),
        metrics: args.metrics.unwrap_or(at(own, METRICS_PORT)),
        admin: args.admin.unwrap_or(at(admin_ip, 15000)),
        capture: (!args.explicit).then(|| (at(any, INBOUND_CAPTURE_PORT), at(any, OUTBOUND_CAPTURE_PORT))),
        explicit: args.outbound,
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.concurrency.max(1)).enable_all().build()?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let local = std::sync::Arc::new(local);
        let proxy = Proxy::new(
            local.proxy_config(),
            local.store.clone(),
            zmesh_proxy::run::ProxyOptions {
                marked: !args.explicit,
                hbone_port: args.hbone_port,
                hbone: zmesh_proxy::hbone::ClientOptions { reuse_connections: !args.hbone_connection_per_tunnel, ..Default::default() },
            },
            shutdown.clone(),
        );
        let rotation = {
            let (local, shutdown) = (local.clone(), shutdown.clone());
            tokio::spawn(async move { local.rotate(shutdown).await })
        };
        tracing::info!(workload = %args.workload, identity = %local.workload.identity, mode = if args.explicit { "explicit" } else { "transparent" }, "proxy starting");
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler installs");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            tracing::info!("draining");
            stop.cancel();
        });
        let result = zmesh_proxy::run::run(proxy, listeners).await;
        shutdown.cancel();
        let _ = rotation.await;
        result.context("the proxy stopped")
    })?;
    Ok(0)
}
