//! The control plane as one process: config store → snapshots → push; the CA's signing
//! service next to it on the same gRPC port (15012, TLS only); the status API and the security
//! dashboard on 15014, fed by a background task that reads the proxies' metrics.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use ring::rand::{SecureRandom, SystemRandom};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use zmesh_ca::{CaConfig, CertificateAuthority};

use crate::ca_service::{IssuedCertificates, SharedCa, Signer};
use crate::observe::{ObserveOptions, Observer};
use crate::push::{ProxyTracker, PushServer};
use crate::ratelimit::PerCallerLimit;
use crate::snapshot::Snapshot;
use crate::status::StatusSources;
use crate::store::{ConfigStore, FileStore, StoreState, WatchOptions};
use crate::tokens::BootstrapTokens;

/// Where the control plane reads and listens.
#[derive(Debug, Clone)]
pub struct Options {
    /// A directory of YAML (or one file), watched.
    pub config: PathBuf,
    /// The CA directory: created with a new root on first start. The bootstrap-token key lives
    /// next to the CA's key.
    pub ca_dir: PathBuf,
    /// gRPC over TLS: configuration push and certificate signing (15012).
    pub grpc: SocketAddr,
    /// HTTP: status API (15014).
    pub admin: SocketAddr,
    pub watch: WatchOptions,
}

/// Why the control plane cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("CA directory {dir}: {message}")]
    Ca { dir: PathBuf, message: String },
    #[error("cannot listen on {addr}: {error}")]
    Listen { addr: SocketAddr, error: std::io::Error },
    #[error(transparent)]
    Tokens(#[from] crate::ControlError),
}

/// The file holding the key bootstrap tokens are signed with.
pub const TOKEN_KEY_FILE: &str = "bootstrap-token.key";

/// Streams one gRPC connection may have open at once.
const MAX_STREAMS_PER_CONNECTION: u32 = 16;

/// The bootstrap-token issuer of a CA directory, creating its key (32 random bytes, mode
/// 0600) on first use. `zmesh up` reads the same key to hand each proxy its token.
pub fn token_issuer(ca_dir: &Path) -> Result<BootstrapTokens, StartError> {
    let path = ca_dir.join(TOKEN_KEY_FILE);
    let failed = |error: std::io::Error| StartError::Ca {
        dir: ca_dir.to_path_buf(),
        message: format!("{}: {error}", path.display()),
    };
    let key = match std::fs::read(&path) {
        Ok(key) => key,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(ca_dir).map_err(failed)?;
            let mut key = vec![0u8; 32];
            SystemRandom::new().fill(&mut key).map_err(|_| StartError::Ca {
                dir: ca_dir.to_path_buf(),
                message: "no randomness for the bootstrap-token key".into(),
            })?;
            write_private(&path, &key).map_err(failed)?;
            key
        }
        Err(error) => return Err(failed(error)),
    };
    Ok(BootstrapTokens::new(&key)?)
}

/// Every proxy holds a connection of its own: a mesh of more than a thousand proxies needs more
/// descriptors than the usual soft limit of 1,024, so take what the hard limit allows.
fn raise_open_file_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return;
    }
    match setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum }) {
        Ok(()) => tracing::debug!(from = ?limit.current, to = ?limit.maximum, "open-file limit raised"),
        Err(error) => {
            tracing::warn!(%error, limit = ?limit.current, "cannot raise the open-file limit; proxies beyond it will be refused")
        }
    }
}

/// Write a secret readable by its owner only, never visible with wider permissions.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    pub status: StatusSources,
    tasks: tokio::task::JoinSet<()>,
}

impl ControlPlane {
    /// Load the configuration (refusing to start on an invalid one), open the CA, bind both
    /// ports and serve until `shutdown`.
    pub async fn start(options: Options, shutdown: CancellationToken) -> Result<ControlPlane, StartError> {
        raise_open_file_limit();
        let store = FileStore::open(&options.config, options.watch.clone(), shutdown.clone())?;
        let states = store.subscribe();
        let first = states.borrow().clone();
        let mesh = &first.loaded.config.mesh;
        let ca_config = CaConfig {
            trust_domain: mesh.trust_domain.clone(),
            trust_domain_aliases: mesh.trust_domain_aliases.clone(),
            ..CaConfig::new(mesh.trust_domain.clone())
        };
        let ca_error = |message: String| StartError::Ca { dir: options.ca_dir.clone(), message };
        let (ca, opened) =
            CertificateAuthority::open_or_create(&options.ca_dir, ca_config, SystemTime::now(), &SystemRandom::new())
                .map_err(|e| ca_error(e.to_string()))?;
        tracing::info!(dir = %options.ca_dir.display(), ?opened, "CA ready");
        let tokens = Arc::new(token_issuer(&options.ca_dir)?);
        let ca = SharedCa::new(ca);

        let (snapshot_tx, snapshots) =
            watch::channel(Arc::new(Snapshot::build(first.generation, &first.loaded, first.accepted_at)));
        let mut tasks = tokio::task::JoinSet::new();
        let generation = first.generation;
        drop(first);
        tasks.spawn(follow_store(states.clone(), snapshot_tx, shutdown.clone()));

        let proxies = Arc::new(ProxyTracker::default());
        let issued = Arc::new(IssuedCertificates::default());
        let signer = Signer::new(
            ca.clone(),
            tokens.clone(),
            PerCallerLimit::new(crate::ca_service::DEFAULT_RATE_PER_SECOND, crate::ca_service::DEFAULT_BURST),
        )
        .with_log(issued.clone());
        let push = PushServer::new(snapshots.clone(), proxies.clone());
        let (tls, renew) = crate::channel::tls_server(&ca, shutdown.clone()).map_err(ca_error)?;
        tasks.spawn(renew);

        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr).await.map_err(|error| StartError::Listen { addr, error })
        };
        let grpc_listener = bind(options.grpc).await?;
        let admin_listener = bind(options.admin).await?;
        let grpc = grpc_listener.local_addr().map_err(|error| StartError::Listen { addr: options.grpc, error })?;
        let admin = admin_listener.local_addr().map_err(|error| StartError::Listen { addr: options.admin, error })?;

        let stop = shutdown.clone();
        tasks.spawn(async move {
            // A proxy holds two streams (push and, now and then, signing): a connection that
            // opens many more is not a proxy, and a peer that stops answering pings is gone.
            let served = tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
                .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
                .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
                .concurrency_limit_per_connection(MAX_STREAMS_PER_CONNECTION as usize)
                .add_service(signer.into_service())
                .add_service(push.into_service())
                .serve_with_incoming_shutdown(
                    crate::channel::incoming(grpc_listener, tls, stop.clone()),
                    stop.cancelled_owned(),
                )
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "the gRPC server stopped");
            }
        });
        let observer = Observer::default();
        // The dashboard's and /api/v1/mtls's data: the proxies' metrics, read in the background
        // (bounded rounds, each scrape with a timeout) so the HTTP routes only read a snapshot.
        tasks.spawn(observer.clone().run(
            snapshots.clone(),
            proxies.clone(),
            ObserveOptions::default(),
            shutdown.clone(),
        ));
        let status = StatusSources { store: states, snapshots, proxies, issued, ca, observer };
        let routes = status.clone().routes();
        tasks.spawn(zmesh_telemetry::endpoints::serve_queries(admin_listener, routes, shutdown.clone()));
        tracing::info!(%grpc, %admin, source = %store.source(), generation, "control plane serving");
        Ok(ControlPlane { grpc, admin, status, tasks })
    }

    /// Wait until every task has stopped (after shutdown).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Turn each accepted store generation into a snapshot for the push streams.
async fn follow_store(
    mut states: watch::Receiver<Arc<StoreState>>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            changed = states.changed() => if changed.is_err() { return },
            () = shutdown.cancelled() => return,
        }
        let state = states.borrow_and_update().clone();
        if state.generation == snapshots.borrow().generation {
            continue; // a refused change: status only, nothing to push
        }
        let previous = snapshots.borrow().clone();
        let snapshot = Snapshot::build_after(&previous, state.generation, &state.loaded, state.accepted_at);
        drop(previous);
        drop(state);
        tracing::info!(generation = snapshot.generation, version = %snapshot.version, resources = snapshot.len(), "pushing a new configuration");
        snapshots.send_replace(Arc::new(snapshot));
        // The previous generation is freed as proxies take the new one (within a second or so
        // for a healthy mesh); then give its pages back.
        tokio::spawn(async {
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            let _ = tokio::task::spawn_blocking(crate::memory::release_freed).await;
        });
    }
}
