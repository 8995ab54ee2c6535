//! The control plane's gRPC port over TLS 1.3 (15012), and who is calling on it.
//!
//! The control plane serves under its own SVID, issued by the mesh CA at start and renewed at
//! half-life, so proxies verify it against the mesh roots they already hold. Every connection is
//! handshaken here, off the accept loop (a deadline and a cap on handshakes in flight, so
//! clients that stall cannot hold the port), then handed to tonic with what the handshake
//! proved: the proxy's SPIFFE ID when it presented an SVID. Services read that with
//! [`svid_caller`]; a caller without one can only ask for a first certificate, with a bootstrap
//! token.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use ring::rand::SystemRandom;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use zmesh_ca::CertificateAuthority;
use zmesh_id::SpiffeId;
use zmesh_tls::{CertStore, Identity, TrustBundle, TrustDomains};

use crate::ca_service::SharedCa;

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in flight at once; connections beyond wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 128;

/// What the handshake of a connection proved, attached to each of its requests.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub remote: SocketAddr,
    /// The SPIFFE ID of the SVID the client presented (verified against the mesh roots).
    pub svid: Option<SpiffeId>,
}

/// The identity a caller proved with its SVID on this connection, if it presented one.
pub fn svid_caller<T>(request: &tonic::Request<T>) -> Option<&SpiffeId> {
    request.extensions().get::<ConnectionInfo>().and_then(|info| info.svid.as_ref())
}

/// Where a request came from, for audit records.
pub fn remote<T>(request: &tonic::Request<T>) -> Option<SocketAddr> {
    request.extensions().get::<ConnectionInfo>().map(|info| info.remote)
}

/// The control plane's own SVID and the mesh's trust bundle, issued from the CA.
pub fn issue_identity(ca: &CertificateAuthority, now: SystemTime) -> Result<(Identity, TrustBundle), String> {
    let domain = ca.config().trust_domain.clone();
    let id = zmesh_tls::control_plane_id(&domain);
    let (svid, key) = ca.issue_with_new_key(&id, None, now, &SystemRandom::new()).map_err(|e| e.to_string())?;
    let identity = Identity::from_pem(&svid.chain_pem, key.expose()).map_err(|e| e.to_string())?;
    let domains = TrustDomains::new(domain).with_aliases(ca.config().trust_domain_aliases.iter().cloned());
    let bundle = TrustBundle::from_pem(ca.trust_bundle_pem(), domains).map_err(|e| e.to_string())?;
    Ok((identity, bundle))
}

/// The TLS config of the control channel under a control-plane SVID freshly issued from `ca`,
/// and the task that keeps that SVID renewed (run it until `shutdown`).
pub fn tls_server(
    ca: &SharedCa,
    shutdown: CancellationToken,
) -> Result<(Arc<rustls::ServerConfig>, impl std::future::Future<Output = ()> + Send + 'static), String> {
    let (identity, bundle) = issue_identity(&ca.current(), SystemTime::now())?;
    tracing::info!(identity = %identity.spiffe_id(), serial = identity.serial(), "control plane certificate issued");
    let store = Arc::new(CertStore::new(identity, bundle));
    let config = zmesh_tls::control_server_config(store.clone(), &zmesh_tls::TlsOptions::default());
    Ok((config, renew_identity(ca.clone(), store, shutdown)))
}

/// Keep the control plane's SVID fresh: reissue at half of its remaining lifetime (from the CA
/// in force then, so a swapped CA is picked up too).
async fn renew_identity(ca: SharedCa, store: Arc<CertStore>, shutdown: CancellationToken) {
    let mut received = SystemTime::now();
    loop {
        let renew = zmesh_ca::renew_at(received, store.identity().not_after(), 0.5);
        let wait = renew.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO).max(Duration::from_secs(1));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
        match issue_identity(&ca.current(), SystemTime::now()) {
            Ok((identity, bundle)) => {
                received = SystemTime::now();
                store.set_bundle(bundle);
                store.set_identity(identity);
            }
            // The current SVID stays in force; try again shortly.
            Err(error) => {
                tracing::error!(%error, "cannot renew the control plane's own certificate; retrying in 30 s");
                received = SystemTime::now();
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        }
    }
}

/// One accepted, handshaken connection.
pub struct ControlConnection {
    stream: TlsStream<TcpStream>,
    info: ConnectionInfo,
}

impl std::fmt::Debug for ControlConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlConnection").field("info", &self.info).finish_non_exhaustive()
    }
}

impl tonic::transport::server::Connected for ControlConnection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        self.info.clone()
    }
}

impl AsyncRead for ControlConnection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ControlConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accept TCP connections on `listener`, handshake each (under `tls`) and yield the ones that
/// complete, until `shutdown`. Feed the receiver to tonic's `serve_with_incoming_shutdown`.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<ControlConnection>> {
    let (connections, incoming) = mpsc::channel(MAX_HANDSHAKES);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        let mut last_warning: Option<tokio::time::Instant> = None;
        loop {
            let permit = tokio::select! {
                permit = handshakes.clone().acquire_owned() => permit,
                () = shutdown.cancelled() => return,
            };
            let Ok(permit) = permit else { return };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = shutdown.cancelled() => return,
            };
            let (tcp, remote) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors or similar: back off instead of spinning, and say so at
                    // most once a second.
                    if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(%error, "accepting a control-plane connection failed");
                        last_warning = Some(tokio::time::Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let connections = connections.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let svid = zmesh_tls::peer_identity(stream.get_ref().1).ok();
                        let info = ConnectionInfo { remote, svid };
                        let _ = connections.send(Ok(ControlConnection { stream, info })).await;
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(%remote, %error, "control-plane TLS handshake failed");
                    }
                    Err(_) => tracing::debug!(%remote, "control-plane TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(incoming)
}
