//! Inbound HBONE (port 15008): terminate mTLS from peer proxies and hand admitted CONNECT
//! tunnels to a [`TunnelHandler`].
//!
//! Per connection: accept (within the connection limit, and the limit of handshaking
//! connections per source address) → mTLS handshake (within the handshake timeout, which
//! shrinks as handshaking connections fill the listener; see `preauth`) → the peer's SPIFFE ID →
//! HTTP/2 → per stream: target → admit → `200` → serve the upgraded stream on a tracked task.
//! Shutdown: close the listener → GOAWAY on every connection (open streams carry on) → wait for
//! connections and tunnels up to the drain timeout → drop whatever is left.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{sleep, timeout};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Span, debug, field, info, info_span, warn};
use zmesh_id::SpiffeId;

use super::handler::{Refusal, TunnelHandler, TunnelRequest};
use super::request::{refusal_response, target_of};
use super::settings::Http2Settings;
use super::tls_watch::explain_handshake;
use crate::metrics::Metrics;
use crate::preauth::{self, Gate, PreAuthLimits, Waiting};

/// What the inbound side allows, handed down by the caller.
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// Open mTLS connections (each carries many tunnels); further peers wait in the backlog.
    pub max_connections: usize,
    /// From accept to a verified peer, so silent clients cannot hold the connection slots: the
    /// time allowed (shrinking as handshaking connections fill the listener) and how many may
    /// be handshaking from one source address at once.
    pub handshake: PreAuthLimits,
    /// Where connections closed before their handshake completed (over the per-source limit,
    /// or out of time) are counted, as `zmesh_connections_refused_total{listener="hbone"}`.
    pub refusals: Option<Arc<Metrics>>,
    /// Concurrent tunnels on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_streams_per_connection: u32,
    /// After shutdown, how long open tunnels may keep going before they are closed.
    pub drain_timeout: Duration,
    pub http2: Http2Settings,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            handshake: PreAuthLimits::default(),
            refusals: None,
            // Well above the client's per-connection budget, so clients spread load by choice
            // rather than queueing at the server's limit.
            max_streams_per_connection: 1000,
            // Istio's default `terminationDrainDuration`.
            drain_timeout: Duration::from_secs(5),
            http2: Http2Settings::default(),
        }
    }
}

/// A pause after an accept error that is not about one connection (out of file descriptors or
/// memory): retrying at once would spin while nothing has been freed.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serve HBONE on `listener` until `shutdown`, then drain (see the module docs) and return.
///
/// `tls` should come from `zmesh_tls::server_config`, which requires and verifies client SVIDs;
/// a config without client authentication would leave tunnels without a peer identity, and
/// such connections are closed.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    handler: Arc<dyn TunnelHandler>,
    limits: ServerLimits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let local_addr = listener.local_addr()?;
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let server = Arc::new(Server {
        acceptor: TlsAcceptor::from(tls),
        handler,
        gate: Gate::new("hbone", limits.handshake, Arc::clone(&slots), limits.refusals.clone()),
        slots,
        limits,
        tasks: TaskTracker::new(),
        shutdown,
        deadline: CancellationToken::new(),
    });
    async {
        server.accept_loop(&listener).await;
        // Closing the socket makes new connections fail fast instead of waiting in the backlog.
        drop(listener);
        server.drain().await;
    }
    .instrument(info_span!("hbone_server", %local_addr))
    .await;
    Ok(())
}

struct Server {
    acceptor: TlsAcceptor,
    handler: Arc<dyn TunnelHandler>,
    limits: ServerLimits,
    /// One per open connection, up to `limits.max_connections`.
    slots: Arc<Semaphore>,
    /// Connections still in their handshake.
    gate: Arc<Gate>,
    /// Connections and tunnels, so that draining can wait for both.
    tasks: TaskTracker,
    shutdown: CancellationToken,
    /// Trips when the drain timeout passes; whatever still runs is then dropped.
    deadline: CancellationToken,
}

impl Server {
    async fn accept_loop(self: &Arc<Self>, listener: &TcpListener) {
        loop {
            let slot = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return,
                slot = Arc::clone(&self.slots).acquire_owned() => slot.expect("the connection semaphore is never closed"),
            };
            let accepted = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((tcp, peer_addr)) => {
                    let Some(waiting) = self.gate.admit(peer_addr.ip()) else {
                        // Closed at once (slot and socket dropped): one source may not hold
                        // more than its share of the slots with handshakes it never finishes.
                        debug!(%peer_addr, "too many handshakes from this source; connection closed");
                        continue;
                    };
                    self.tasks.spawn(Arc::clone(self).connection(tcp, peer_addr, slot, waiting));
                }
                Err(error) if is_about_one_connection(&error) => {
                    debug!(%error, "a connection failed before it was accepted");
                }
                Err(error) => {
                    warn!(%error, "cannot accept connections; retrying in {ACCEPT_BACKOFF:?}");
                    tokio::select! {
                        () = self.shutdown.cancelled() => return,
                        () = sleep(ACCEPT_BACKOFF) => {}
                    }
                }
            }
        }
    }

    async fn drain(&self) {
        self.tasks.close();
        if timeout(self.limits.drain_timeout, self.tasks.wait()).await.is_err() {
            info!(remaining_tasks = self.tasks.len(), "drain timeout passed; closing what is still open");
            self.deadline.cancel();
            self.tasks.wait().await;
        }
    }

    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        peer_addr: SocketAddr,
        _slot: OwnedSemaphorePermit,
        waiting: Waiting,
    ) {
        let span = info_span!("hbone_inbound", %peer_addr, peer_id = field::Empty);
        async {
            if let Err(error) = self.serve_connection(tcp, peer_addr, waiting).await {
                error.log();
            }
        }
        .instrument(span)
        .await;
    }

    async fn serve_connection(
        self: &Arc<Self>,
        tcp: TcpStream,
        peer_addr: SocketAddr,
        waiting: Waiting,
    ) -> Result<(), InboundError> {
        // Tunnels carry interactive traffic; HTTP/2 and TLS already coalesce bulk writes.
        let _ = tcp.set_nodelay(true);
        let handshake = preauth::within(&waiting, self.acceptor.accept(tcp));
        let tls = tokio::select! {
            biased;
            () = self.shutdown.cancelled() => return Ok(()),
            done = handshake => match done {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => return Err(InboundError::handshake(&error)),
                Err(timed_out) => return Err(InboundError::HandshakeTimeout(timed_out.waited)),
            },
        };
        // Handshake done, client certificate verified: no longer waiting.
        drop(waiting);
        let peer = zmesh_tls::peer_identity(tls.get_ref().1).map_err(InboundError::PeerIdentity)?;
        Span::current().record("peer_id", field::display(&peer));

        let streams = Streams { server: Arc::clone(self), peer, peer_addr, span: Span::current() };
        let service = service_fn(move |request| std::future::ready(Ok::<_, Infallible>(streams.route(request))));
        let builder = self.limits.http2.server(self.limits.max_streams_per_connection);
        let mut connection = pin!(builder.serve_connection(TokioIo::new(tls), service));
        tokio::select! {
            result = connection.as_mut() => return result.map_err(InboundError::Http),
            () = self.shutdown.cancelled() => {}
        }
        // GOAWAY: the peer opens no new tunnels here (its pool dials elsewhere or fails), while
        // the tunnels already open keep flowing through this connection until they end.
        debug!("draining: GOAWAY sent, open tunnels continue");
        connection.as_mut().graceful_shutdown();
        tokio::select! {
            result = connection => result.map_err(InboundError::Http),
            () = self.deadline.cancelled() => Ok(()),
        }
    }
}

/// What every stream of one connection shares.
struct Streams {
    server: Arc<Server>,
    peer: SpiffeId,
    peer_addr: SocketAddr,
    /// The connection's span: hyper polls streams on their own tasks, outside it.
    span: Span,
}

impl Streams {
    /// Decide on one request and answer it; an admitted tunnel is served on its own task once
    /// the `200` has gone out and hyper hands over the stream.
    fn route(&self, mut request: Request<Incoming>) -> Response<Empty<Bytes>> {
        // A stream that crossed our GOAWAY on the wire; its client should go elsewhere.
        if self.server.shutdown.is_cancelled() {
            let refusal = Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "this proxy is shutting down");
            return self.refuse(&refusal, &request);
        }
        let target = match target_of(&request) {
            Ok(target) => target,
            Err(refusal) => return self.refuse(&refusal, &request),
        };
        let tunnel = TunnelRequest { peer: self.peer.clone(), peer_addr: self.peer_addr, target };
        if let Err(refusal) = self.server.handler.admit(&tunnel) {
            return self.refuse(&refusal, &request);
        }
        let upgrade = hyper::upgrade::on(&mut request);
        let handler = Arc::clone(&self.server.handler);
        let deadline = self.server.deadline.clone();
        let span = info_span!(parent: &self.span, "tunnel", %target);
        self.server.tasks.spawn(
            async move {
                let upgraded = match upgrade.await {
                    Ok(upgraded) => upgraded,
                    Err(error) => return debug!(%error, "the stream closed before the tunnel opened"),
                };
                tokio::select! {
                    () = handler.serve(tunnel, Box::new(TokioIo::new(upgraded))) => debug!("tunnel closed"),
                    () = deadline.cancelled() => info!("tunnel closed at the drain timeout"),
                }
            }
            .instrument(span),
        );
        Response::new(Empty::new())
    }

    fn refuse(&self, refusal: &Refusal, request: &Request<Incoming>) -> Response<Empty<Bytes>> {
        self.span.in_scope(|| {
            debug!(
                method = %request.method(),
                uri = %request.uri(),
                status = refusal.status.as_u16(),
                reason = %refusal.reason,
                "tunnel refused"
            );
        });
        refusal_response(refusal)
    }
}

/// Errors that end one inbound connection; they are logged, never returned.
#[derive(Debug, thiserror::Error)]
enum InboundError {
    #[error("mTLS handshake failed: {reason}")]
    Handshake { reason: String, verifier: Option<zmesh_tls::Side> },
    #[error("no mTLS handshake within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("cannot read the peer's SPIFFE ID: {0}")]
    PeerIdentity(zmesh_tls::TlsError),
    #[error("HTTP/2 failed: {0}")]
    Http(hyper::Error),
}

impl InboundError {
    fn handshake(error: &io::Error) -> Self {
        let (reason, verifier) = explain_handshake(error);
        Self::Handshake { reason, verifier }
    }

    /// A refused certificate is worth an operator's attention; a peer that hung up or a port
    /// scanner is not. Our own broken SVID or bundle is.
    fn log(&self) {
        match self {
            Self::Handshake { verifier: Some(zmesh_tls::Side::Local), .. } | Self::PeerIdentity(_) => {
                warn!(error = %self, side = "internal", "HBONE connection failed");
            }
            Self::Handshake { verifier: Some(zmesh_tls::Side::Peer), .. } => {
                info!(error = %self, side = "downstream", "HBONE peer refused");
            }
            Self::Handshake { verifier: None, .. } | Self::HandshakeTimeout(_) | Self::Http(_) => {
                debug!(error = %self, side = "downstream", "HBONE connection failed");
            }
        }
    }
}

/// Accept errors that concern one connection (the peer gave up before we took it), not the
/// listener.
fn is_about_one_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted
    )
}
