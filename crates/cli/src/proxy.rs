//! `zmesh proxy`: run the sidecar proxy of one workload.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use zmesh_proxy::capture::{
    HBONE_PORT, HEALTH_PORT, HTTP_PROXY_PORT, INBOUND_CAPTURE_PORT, METRICS_PORT, OUTBOUND_CAPTURE_PORT,
};
use zmesh_proxy::control_channel::ControlEndpoint;
use zmesh_proxy::identity::{BootstrapToken, IdentityManager, SigningClient, identity_named_by};
use zmesh_proxy::local::{IdentitySource, Local};
use zmesh_proxy::run::{Listeners, Proxy};
use zmesh_proxy::subscription::Subscription;

use zmesh_tls::{TrustBundle, TrustDomains};

use crate::UsageError;

#[derive(Debug, clap::Args)]
pub(crate) struct ProxyArgs {
    /// Follow this control plane (gRPC over TLS, such as https://127.0.0.1:15012):
    /// configuration pushed and certificates signed by it. Needs --token-file and --roots.
    #[arg(long, value_name = "URL", conflicts_with_all = ["config", "ca_dir", "cert"], requires_all = ["token_file", "roots"])]
    control_plane: Option<String>,
    /// The bootstrap token proving this workload's identity to the control plane, for its first
    /// certificate (renewals present the certificate itself). Read again whenever it is needed,
    /// so it can be refreshed in place.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Instead of a control plane: a configuration directory (WorkloadEntries, policies,
    /// MeshConfig), read once.
    #[arg(long, value_name = "DIR", required_unless_present = "control_plane")]
    config: Option<PathBuf>,
    /// The CA directory to issue (and renew) this workload's certificate from.
    #[arg(long, value_name = "DIR", required_unless_present_any = ["cert", "control_plane"], conflicts_with_all = ["cert", "key", "roots"])]
    ca_dir: Option<PathBuf>,
    /// Instead of --ca-dir: a fixed certificate chain (PEM), with --key and --roots.
    #[arg(long, value_name = "FILE", requires_all = ["key", "roots"])]
    cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// With --control-plane: the certificate lifetime to ask for, such as 24h or 2m (the CA caps
    /// it; default: the CA's). Renewal comes at about half of it.
    #[arg(long, value_name = "DURATION", requires = "control_plane", value_parser = parse_ttl)]
    cert_ttl: Option<Duration>,
    /// The mesh's trust bundle (PEM roots): with --cert, what peers are verified against; with
    /// --control-plane, the roots the control plane's certificate must chain to (the CA
    /// directory's root-cert.pem) — bundles the control plane hands out later are taken only
    /// when they keep one of these roots.
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
    /// The HTTP proxy port: apps started with `http_proxy=http://ADDR` reach mesh workloads by
    /// name (`name.namespace`) through the mesh. Default with --explicit: port 15080 on the
    /// workload's address if it is a loopback address, else on 127.0.0.1 (whoever reaches the
    /// port acts as the workload); without --explicit (capture routes outbound traffic): none.
    #[arg(long, value_name = "ADDR")]
    http_proxy: Option<SocketAddr>,
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

fn parse_ttl(text: &str) -> Result<Duration, String> {
    zmesh_config::authn::parse_duration(text)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("`{text}` is not a duration such as 24h or 90m"))
}

fn parse_mapping(text: &str) -> Result<(SocketAddr, SocketAddr), String> {
    let (listen, target) =
        text.split_once('=').ok_or("expected LISTEN=TARGET, such as 127.0.0.1:9000=10.0.0.9:8080")?;
    let parse = |s: &str| s.parse::<SocketAddr>().map_err(|e| format!("`{s}`: {e}"));
    Ok((parse(listen)?, parse(target)?))
}

/// Where the proxy's configuration and certificate come from.
enum Source {
    /// Local files, read once, and a CA directory or fixed certificate files.
    Local(Arc<Local>),
    /// The control plane: configuration pushed and followed, certificates signed and renewed.
    ControlPlane(Box<Following>),
}

/// The control-plane source once bootstrapped: the stream to follow and the identity to renew.
struct Following {
    subscription: Subscription,
    identity: IdentityManager,
    received: SystemTime,
}

/// Bootstrap from the control plane at `url`: the first certificate (token, over TLS verified
/// against --roots), then the first configuration (presenting that certificate).
async fn follow_control_plane(
    args: &ProxyArgs,
    url: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<(Following, zmesh_proxy::config::ProxyConfig, Arc<zmesh_tls::CertStore>)>> {
    let token_file = args.token_file.clone().ok_or_else(|| UsageError("--control-plane needs --token-file".into()))?;
    let roots_file = args.roots.as_ref().ok_or_else(|| UsageError("--control-plane needs --roots".into()))?;
    let token = BootstrapToken::File(token_file);
    let id = identity_named_by(&token.read()?)?;
    let own_domain = TrustDomains::new(id.trust_domain().clone());
    let roots_pem =
        std::fs::read(roots_file).with_context(|| format!("cannot read the roots {}", roots_file.display()))?;
    let roots = Arc::new(
        TrustBundle::from_pem(roots_pem, own_domain.clone())
            .with_context(|| format!("--roots {}", roots_file.display()))?,
    );
    let control = ControlEndpoint::new(url, zmesh_tls::control_plane_id(id.trust_domain()))?.marked(!args.explicit);
    let mut signing = SigningClient::new(control.clone(), token);
    signing.requested_ttl = args.cert_ttl;
    let mut identity = IdentityManager::new(id.clone(), own_domain, signing);
    tracing::info!(control_plane = %url, identity = %id, "asking for a first certificate");
    let (store, received) = identity.bootstrap(roots, Duration::from_secs(60)).await?;
    let mut subscription = Subscription::new(control, store.clone(), &args.workload, proxy_id(&args.workload))?;
    tracing::info!(control_plane = %url, workload = %args.workload, "waiting for the first configuration");
    let Some(config) = subscription.initial(shutdown).await else { return Ok(None) };
    if config.workload.identity != id {
        anyhow::bail!(
            "workload {} runs as {}, but the bootstrap token names {id}; issue a token for the workload's identity",
            args.workload,
            config.workload.identity
        );
    }
    // The mesh's trust-domain aliases are known now: peers under them are accepted from here on.
    let domains = zmesh_proxy::local::trust_domains_of(&config.mesh);
    store.set_bundle(store.bundle().with_domains(domains.clone()));
    identity.set_domains(domains);
    Ok(Some((Following { subscription, identity, received }, config, store)))
}

/// A name for this proxy process, unique per run: `name.namespace-pid`.
fn proxy_id(workload: &str) -> String {
    let (namespace, name) = workload.split_once('/').unwrap_or(("", workload));
    format!("{name}.{namespace}-{}", std::process::id())
}

pub(crate) fn proxy(args: ProxyArgs) -> anyhow::Result<u8> {
    crate::control::init_logging(&args.log_level)?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.concurrency.max(1)).enable_all().build()?;
    // The proxy runs as a task on the workers rather than on this thread inside `block_on`:
    // there, its listeners would hand every accepted connection from this thread to a worker,
    // two cross-thread wakeups per connection.
    let serve = async move {
        let shutdown = CancellationToken::new();
        crate::control::cancel_on_signal(shutdown.clone())?;
        let (source, config, store) = match (&args.control_plane, &args.config) {
            (Some(url), _) => {
                let Some((following, config, store)) = follow_control_plane(&args, url, &shutdown).await? else {
                    return Ok(());
                };
                (Source::ControlPlane(Box::new(following)), config, store)
            }
            (None, Some(dir)) => {
                let identity = match (&args.ca_dir, &args.cert, &args.key, &args.roots) {
                    (Some(dir), _, _, _) => IdentitySource::CaDir(dir.clone()),
                    (None, Some(chain), Some(key), Some(roots)) => {
                        IdentitySource::Files { chain: chain.clone(), key: key.clone(), roots: roots.clone() }
                    }
                    _ => return Err(UsageError("give --ca-dir, or --cert with --key and --roots".into()).into()),
                };
                let local = Arc::new(Local::load(dir, &identity, &args.workload)?);
                let (config, store) = (local.proxy_config(), local.store.clone());
                (Source::Local(local), config, store)
            }
            (None, None) => return Err(UsageError("give --control-plane URL, or --config DIR".into()).into()),
        };
        let address = config.workload.address;
        let identity_text = config.workload.identity.to_string();
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let at = |ip: IpAddr, port: u16| SocketAddr::new(ip, port);
        // Admin serves configuration and certificates: on the workload's address only when
        // that is a loopback address (single-host meshes), else on localhost.
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let (own, admin_ip) = if args.explicit {
            (address, if address.is_loopback() { address } else { loopback })
        } else {
            (any, loopback)
        };
        let listeners = Listeners {
            hbone: args.hbone_listen.unwrap_or(at(own, args.hbone_port)),
            health: args.health.unwrap_or(at(own, HEALTH_PORT)),
            metrics: args.metrics.unwrap_or(at(own, METRICS_PORT)),
            admin: args.admin.unwrap_or(at(admin_ip, 15000)),
            capture: (!args.explicit).then(|| (at(any, INBOUND_CAPTURE_PORT), at(any, OUTBOUND_CAPTURE_PORT))),
            explicit: args.outbound,
            // Whoever reaches this port acts as the workload: it listens on the workload's address
            // only when that is a loopback address (single-host meshes), else on localhost.
            http_proxy: args.http_proxy.or(args.explicit.then(|| {
                at(if address.is_loopback() { address } else { IpAddr::V4(Ipv4Addr::LOCALHOST) }, HTTP_PROXY_PORT)
            })),
        };
        let proxy = Proxy::new(
            config,
            store.clone(),
            zmesh_proxy::run::ProxyOptions {
                marked: !args.explicit,
                hbone_port: args.hbone_port,
                hbone: zmesh_proxy::hbone::ClientOptions {
                    reuse_connections: !args.hbone_connection_per_tunnel,
                    ..Default::default()
                },
            },
            shutdown.clone(),
        );
        let background = match source {
            Source::Local(local) => {
                let stop = shutdown.clone();
                tokio::spawn(async move { local.rotate(stop).await })
            }
            Source::ControlPlane(following) => {
                let Following { subscription, identity, received } = *following;
                let (stop, updated) = (shutdown.clone(), proxy.clone());
                let follow = tokio::spawn(subscription.follow(stop.clone(), move |config| updated.update(config)));
                tokio::spawn(async move {
                    identity.rotate(store, received, stop.cancelled_owned()).await;
                    let _ = follow.await;
                })
            }
        };
        tracing::info!(workload = %args.workload, identity = %identity_text, mode = if args.explicit { "explicit" } else { "transparent" }, "proxy starting");
        let result = zmesh_proxy::run::run(proxy, listeners).await;
        shutdown.cancel();
        let _ = background.await;
        result.context("the proxy stopped")
    };
    runtime.block_on(async move { tokio::spawn(serve).await.context("the proxy task panicked")? })?;
    Ok(0)
}
