//! HBONE: HTTP/2 CONNECT tunnels inside mutual TLS 1.3, the transport between mesh proxies.
//!
//! Inbound ([`serve`], port 15008): accept → mTLS handshake → the peer's SPIFFE ID → HTTP/2 →
//! per stream: `CONNECT ip:port` → [`TunnelHandler::admit`] → `200` → [`TunnelHandler::serve`]
//! with the upgraded stream.
//! Outbound ([`HboneClient::connect`]): a pooled mTLS HTTP/2 connection per (proxy address,
//! expected identities) → one CONNECT stream per app connection → a [`Tunnel`].
//!
//! Many app connections share one mTLS connection. HTTP/2 flow control ([`Http2Settings`]) is
//! what bounds memory: a tunnel buffers at most its stream window, a connection at most its
//! connection window, and a full window pushes back on the sender instead of queueing.

mod client;
mod error;
mod handler;
mod pool;
mod request;
mod server;
mod settings;
mod tls_watch;

pub use client::{ClientOptions, HboneClient, Tunnel};
pub use error::{HboneError, Side};
pub use handler::{Refusal, ServeFuture, TunnelHandler, TunnelIo, TunnelRequest, TunnelStream};
pub use request::REFUSAL_REASON_HEADER;
pub use server::{ServerLimits, serve};
pub use settings::Http2Settings;
