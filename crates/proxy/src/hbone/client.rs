//! Outbound HBONE: open tunnels to peer proxies over pooled mTLS HTTP/2 connections.
//!
//! Flow of `connect`: pool checkout (or dial: TCP → mTLS verified against the expected
//! identities → HTTP/2 handshake) → `CONNECT target` → `200` → the upgraded stream as a
//! [`Tunnel`]. A failure on a reused connection before any answer is retried once on a new one:
//! the peer may have sent GOAWAY that this side has not noticed yet.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tracing::{Instrument, debug, debug_span, field};
use zmesh_id::SpiffeId;
use zmesh_tls::{CertStore, ExpectedPeers, TlsOptions};

use super::error::{HboneError, Side};
use super::pool::{Connection, Lease, Pool, PoolKey, StreamSlot};
use super::request::reason_of;
use super::settings::Http2Settings;
use super::tls_watch::{TlsFailure, TlsWatch, explain_handshake};

/// What the outbound side waits for and how it shares connections.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// TCP connect to the peer's HBONE port.
    pub connect_timeout: Duration,
    /// mTLS and HTTP/2 handshakes on a new connection.
    pub handshake_timeout: Duration,
    /// The answer to one CONNECT (the peer's admission decision).
    pub response_timeout: Duration,
    /// Tunnels per connection before another connection is dialed. Below the servers' limit so
    /// a busy destination spreads over connections instead of queueing behind one.
    pub max_streams_per_connection: usize,
    /// Share connections between tunnels (the normal case). Off, every tunnel dials its own
    /// mTLS connection, which is closed with the tunnel: for measuring handshake cost.
    pub reuse_connections: bool,
    pub http2: Http2Settings,
    pub tls: TlsOptions,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(10),
            max_streams_per_connection: 100,
            reuse_connections: true,
            http2: Http2Settings::default(),
            tls: TlsOptions::default(),
        }
    }
}

/// Opens HBONE tunnels; cheap to clone, clones share the pool.
#[derive(Clone)]
pub struct HboneClient {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<CertStore>,
    options: ClientOptions,
    /// One rustls config per expected set: the expected identities live in its verifier, and
    /// building a config per connect would be wasted work on the hot path.
    tls_configs: Mutex<HashMap<Vec<SpiffeId>, Arc<ClientConfig>>>,
    pool: Pool,
}

impl HboneClient {
    /// A client presenting the SVID in `store` (read at each handshake, so rotation needs
    /// nothing from the client).
    pub fn new(store: Arc<CertStore>, options: ClientOptions) -> Self {
        let inner = Inner { store, options, tls_configs: Mutex::default(), pool: Pool::default() };
        Self { inner: Arc::new(inner) }
    }

    /// A tunnel to `target` through the HBONE port `proxy`, whose proxy must prove one of the
    /// `expected` identities.
    pub async fn connect(
        &self,
        proxy: SocketAddr,
        expected: ExpectedPeers,
        target: SocketAddr,
    ) -> Result<Tunnel, HboneError> {
        let span = debug_span!("hbone_connect", %proxy, %target, peer_id = field::Empty);
        self.inner.connect(proxy, expected, target).instrument(span).await
    }
}

impl Inner {
    async fn connect(
        &self,
        proxy: SocketAddr,
        expected: ExpectedPeers,
        target: SocketAddr,
    ) -> Result<Tunnel, HboneError> {
        let key = PoolKey::new(proxy, &expected);
        let max_streams = self.options.max_streams_per_connection;
        if !self.options.reuse_connections {
            // The lease holds the only sender: the connection closes when the tunnel does.
            let lease = self.dial(&key).await?.lease(false);
            let io = self.open(&lease, proxy, target).await?;
            return Ok(Tunnel::new(io, lease));
        }
        let lease = self.pool.checkout(&key, max_streams, || self.dial(&key)).await?;
        match self.open(&lease, proxy, target).await {
            Ok(io) => Ok(Tunnel::new(io, lease)),
            // The peer may have sent a GOAWAY that this side had not read yet.
            Err(error @ HboneError::Protocol { .. }) if lease.reused => {
                debug!(%error, "a pooled connection failed; retrying once on a new connection");
                self.pool.evict(&key, &lease).await;
                drop(lease);
                let lease = self.pool.checkout(&key, max_streams, || self.dial(&key)).await?;
                let io = self.open(&lease, proxy, target).await?;
                Ok(Tunnel::new(io, lease))
            }
            Err(error) => Err(error),
        }
    }

    /// A new connection: TCP, then mTLS verified against `key.expected`, then HTTP/2.
    async fn dial(&self, key: &PoolKey) -> Result<Connection, HboneError> {
        let proxy = key.proxy;
        let tcp = match timeout(self.options.connect_timeout, TcpStream::connect(proxy)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(source)) => return Err(HboneError::Connect { proxy, source: Arc::new(source) }),
            Err(_) => return Err(HboneError::ConnectTimeout { proxy, after: self.options.connect_timeout }),
        };
        // Tunnels carry interactive traffic; HTTP/2 and TLS already coalesce bulk writes.
        let _ = tcp.set_nodelay(true);
        let connector = TlsConnector::from(self.tls_config(&key.expected));
        // The SPIFFE verifier ignores names; an IP name also keeps SNI off the wire.
        let server_name = ServerName::IpAddress(proxy.ip().into());
        let handshakes = async {
            let tls = connector.connect(server_name, tcp).await.map_err(|error| tls_error(proxy, &error))?;
            let peer = zmesh_tls::peer_identity(tls.get_ref().1).map_err(|error| HboneError::Tls {
                proxy,
                reason: error.to_string(),
                side: Side::Internal,
            })?;
            let (watched, tls_failure) = TlsWatch::new(tls);
            let (sender, connection) = self
                .options
                .http2
                .client()
                .handshake(TokioIo::new(watched))
                .await
                .map_err(|source| http_error(proxy, source, &tls_failure))?;
            Ok((sender, connection, peer, tls_failure))
        };
        let (sender, connection, peer, tls_failure) = timeout(self.options.handshake_timeout, handshakes)
            .await
            .map_err(|_| HboneError::HandshakeTimeout { proxy, after: self.options.handshake_timeout })??;

        let span = debug_span!("hbone_connection", %proxy, peer_id = %peer);
        // The connection task drives every tunnel on it. It ends when the peer closes the
        // connection, or once neither the pool nor a tunnel holds it any more.
        tokio::spawn(
            async move {
                match connection.await {
                    Ok(()) => debug!("HBONE connection closed"),
                    Err(error) => debug!(%error, "HBONE connection closed with an error"),
                }
            }
            .instrument(span),
        );
        debug!(peer_id = %peer, "new HBONE connection");
        Ok(Connection::new(sender, peer, tls_failure))
    }

    /// `CONNECT target` on a leased connection, up to the upgraded stream.
    async fn open(&self, lease: &Lease, proxy: SocketAddr, target: SocketAddr) -> Result<Upgraded, HboneError> {
        tracing::Span::current().record("peer_id", field::display(&lease.peer));
        let mut sender = lease.sender.clone();
        let request = Request::builder()
            .method(Method::CONNECT)
            .uri(target.to_string())
            .body(Empty::<Bytes>::new())
            .expect("a socket address is a valid CONNECT authority");
        let after = self.options.response_timeout;
        let exchange = async {
            let mut response = sender.send_request(request).await?;
            if response.status() != StatusCode::OK {
                return Ok(Err(response));
            }
            hyper::upgrade::on(&mut response).await.map(Ok)
        };
        match timeout(after, exchange).await {
            Err(_) => Err(HboneError::ResponseTimeout { proxy, target, after }),
            Ok(Ok(Ok(upgraded))) => Ok(upgraded),
            Ok(Ok(Err(response))) => Err(HboneError::Refused {
                proxy,
                target,
                status: response.status(),
                reason: reason_of(response.headers()),
            }),
            Ok(Err(source)) => Err(http_error(proxy, source, &lease.tls_failure)),
        }
    }

    fn tls_config(&self, expected: &[SpiffeId]) -> Arc<ClientConfig> {
        let mut configs = self.tls_configs.lock().unwrap_or_else(PoisonError::into_inner);
        let config = configs.entry(expected.to_vec()).or_insert_with(|| {
            let expected = ExpectedPeers::new(expected.iter().cloned());
            zmesh_tls::client_config(Arc::clone(&self.store), expected, &self.options.tls)
        });
        Arc::clone(config)
    }
}

/// An HTTP/2 failure, or the TLS failure underneath it when there was one.
fn http_error(proxy: SocketAddr, source: hyper::Error, tls_failure: &TlsFailure) -> HboneError {
    match tls_failure.get() {
        Some(reason) => HboneError::Tls { proxy, reason: reason.clone(), side: Side::Upstream },
        None => HboneError::Protocol { proxy, source: Arc::new(source) },
    }
}

/// The verifier's message when this side refused the peer, the alert when the peer refused us.
fn tls_error(proxy: SocketAddr, error: &io::Error) -> HboneError {
    let (reason, side) = explain_handshake(error);
    let side = match side {
        Some(zmesh_tls::Side::Local) => Side::Internal,
        Some(zmesh_tls::Side::Peer) | None => Side::Upstream,
    };
    HboneError::Tls { proxy, reason, side }
}

/// One open tunnel: a byte stream to the target, carried by one HTTP/2 stream.
pub struct Tunnel {
    io: TokioIo<Upgraded>,
    peer: SpiffeId,
    /// Frees this tunnel's place on its pooled connection when the tunnel is dropped.
    _slot: StreamSlot,
}

impl Tunnel {
    fn new(upgraded: Upgraded, lease: Lease) -> Self {
        Self { io: TokioIo::new(upgraded), peer: lease.peer, _slot: lease.slot }
    }

    /// The SPIFFE ID the peer proxy proved.
    pub fn peer(&self) -> &SpiffeId {
        &self.peer
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Ends this side of the tunnel (HTTP/2 END_STREAM); the other direction stays open.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tunnel").field("peer", &self.peer.as_uri()).finish_non_exhaustive()
    }
}

impl fmt::Debug for HboneClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HboneClient")
            .field("options", &self.inner.options)
            .field("pool", &self.inner.pool)
            .finish_non_exhaustive()
    }
}
