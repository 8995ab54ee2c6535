//! What can end a connection abnormally, and whose side it came from.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// Where a failure came from. The side decides the log level and the metric label; the status
/// the client saw was already decided (and sent) where the failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client: broken I/O, a malformed or stalled request body. Routine; log at debug.
    Downstream,
    /// The local app: unreachable, closed early, malformed or stalled response. Worth a warning.
    Upstream,
    /// The proxy itself. No L7 error is internal today; the variant keeps one vocabulary of
    /// sides across the proxy.
    Internal,
}

/// Why [`serve_http1`](super::serve_http1) gave up on a connection. Requests refused by the
/// parser or denied by policy are not errors: they are answered and counted in
/// [`ConnectionStats`](super::ConnectionStats).
#[derive(Debug, thiserror::Error)]
pub enum L7Error {
    #[error("cannot read from the client")]
    ClientRead(#[source] io::Error),
    #[error("cannot write to the client")]
    ClientWrite(#[source] io::Error),
    #[error("the client closed the connection before the end of the request body")]
    ClientClosedMidBody,
    #[error("the client sent no request body bytes for {timeout:?} (the idle timeout)")]
    ClientStalled { timeout: Duration },
    #[error("the request body is not valid chunked encoding")]
    RequestBody(#[source] ChunkError),
    #[error("cannot connect to the app at {destination}; is it listening?")]
    Connect {
        destination: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("connecting to the app at {destination} took longer than {timeout:?} (the upstream connect timeout)")]
    ConnectTimeout { destination: SocketAddr, timeout: Duration },
    #[error("cannot read from the app")]
    AppRead(#[source] io::Error),
    #[error("cannot write to the app")]
    AppWrite(#[source] io::Error),
    #[error("the app closed the connection before the end of its response")]
    AppClosedEarly,
    #[error("the app sent nothing for {timeout:?} (the idle timeout) while a response was due")]
    AppStalled { timeout: Duration },
    #[error("the app sent a malformed response head")]
    MalformedResponse(#[source] ResponseError),
    #[error("the app's response body is not valid chunked encoding")]
    ResponseBody(#[source] ChunkError),
}

impl L7Error {
    pub fn side(&self) -> Side {
        match self {
            Self::ClientRead(_)
            | Self::ClientWrite(_)
            | Self::ClientClosedMidBody
            | Self::ClientStalled { .. }
            | Self::RequestBody(_) => Side::Downstream,
            Self::Connect { .. }
            | Self::ConnectTimeout { .. }
            | Self::AppRead(_)
            | Self::AppWrite(_)
            | Self::AppClosedEarly
            | Self::AppStalled { .. }
            | Self::MalformedResponse(_)
            | Self::ResponseBody(_) => Side::Upstream,
        }
    }
}

/// A chunked body (RFC 9112 §7.1) that cannot be framed safely. Parsing is strict on purpose:
/// any leniency here is where request smuggling lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk-size line is not 1 to 16 hex digits, optionally followed by `;extensions`, ending in CRLF")]
    InvalidSize,
    #[error("chunk-size line is longer than {limit} bytes")]
    LineTooLong { limit: usize },
    #[error("chunk data or a trailer line does not end in CRLF")]
    MissingCrlf,
    #[error("trailer section is larger than {limit} bytes")]
    TrailersTooLarge { limit: usize },
}

/// A response head that cannot be relayed safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("the status line or a header does not parse ({0})")]
    Syntax(httparse::Error),
    #[error("the response head is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the response has more than {limit} headers")]
    TooManyHeaders { limit: usize },
    #[error("Content-Length is not a single decimal number that fits in 64 bits")]
    InvalidContentLength,
    #[error("the response has both Content-Length and Transfer-Encoding")]
    ContentLengthWithTransferEncoding,
    #[error("Transfer-Encoding is not exactly `chunked`")]
    UnsupportedTransferEncoding,
    #[error("101 Switching Protocols answers a request that did not ask for a WebSocket upgrade")]
    UnexpectedUpgrade,
}
