//! What the inbound side asks of the rest of the proxy: admit a tunnel (policy), then serve it
//! (forward to the local workload). The HBONE server itself knows nothing about either.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite};
use zmesh_id::SpiffeId;

/// One CONNECT request from an authenticated peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelRequest {
    /// The SPIFFE ID the peer proved in the mTLS handshake.
    pub peer: SpiffeId,
    /// The TCP source address of the mTLS connection (the peer proxy, not the app behind it).
    pub peer_addr: SocketAddr,
    /// The destination named in the CONNECT authority.
    pub target: SocketAddr,
}

/// Why a tunnel is not admitted: the HTTP status sent back, and a reason for the peer's operator
/// (sent in the [`REFUSAL_REASON_HEADER`](super::REFUSAL_REASON_HEADER) response header).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: String,
}

impl Refusal {
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Self { status, reason: reason.into() }
    }

    /// 401: the target is not a workload this proxy serves, so there is nothing to authorize for.
    pub fn unknown_target(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, reason)
    }

    /// 403: authorization policy denies this peer this target.
    pub fn forbidden(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, reason)
    }
}

/// The byte stream of one tunnel, whatever carries it.
pub trait TunnelIo: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + ?Sized> TunnelIo for T {}

/// An admitted tunnel's stream, as handed to [`TunnelHandler::serve`].
pub type TunnelStream = Box<dyn TunnelIo>;

/// The future [`TunnelHandler::serve`] returns; boxed so that the handler can be a trait object.
pub type ServeFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Decides on and then carries tunnels for the inbound HBONE server.
pub trait TunnelHandler: Send + Sync + 'static {
    /// Decide before anything is sent back: `Ok` answers `200` and leads to [`Self::serve`];
    /// a refusal answers with its status and reason. Synchronous on purpose: it is the pure
    /// "decide" half (policy on a snapshot), and it runs on the connection's task.
    fn admit(&self, request: &TunnelRequest) -> Result<(), Refusal>;

    /// Carry an admitted tunnel until it ends, usually by copying it to and from `target`.
    /// Runs on its own task; the server waits for it when draining, up to the drain deadline,
    /// after which the future is dropped.
    fn serve(&self, request: TunnelRequest, stream: TunnelStream) -> ServeFuture<'_>;
}
