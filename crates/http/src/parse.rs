//! Parse one request head the way Envoy does, in Envoy's order:
//! Balsa frames the head and splits its lines ([`framing`]), Envoy's HTTP/1 codec checks
//! framing headers, Connection and the request-target ([`codec`], [`target`]), and the
//! connection manager checks Host and the path before any filter runs.
//!
//! The order matters because the first failing check decides the status and detail.

mod codec;
mod framing;
mod target;

#[cfg(test)]
mod tests;

use crate::error::RequestError;
use crate::head::RequestHead;

/// Limits and switches that decide what Envoy accepts; [`Default`] is what an Istio
/// sidecar's inbound listener uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The whole head, request line through the blank line. Envoy's
    /// `max_request_headers_kb`, 60 KiB by default.
    pub max_header_bytes: usize,
    /// Envoy's `max_headers_count`, 100 by default.
    pub max_headers: usize,
    /// Envoy's `accept_http_10`. Off unless Istio's `PILOT_HTTP10` (or the proxy metadata
    /// `HTTP10`) turns it on; while off, anything but HTTP/1.1 is answered 426.
    pub accept_http_10: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_header_bytes: 60 * 1024, max_headers: 100, accept_http_10: false }
    }
}

/// Parses one request head from the start of `buf`.
///
/// `Ok(None)`: the head is incomplete and still within the limit; call again with more
/// bytes. `Ok(Some((head, consumed)))`: `consumed` bytes, up to and including the blank
/// line, made the head; the body (see [`RequestHead::body`]) or the next request follows.
/// `Err`: Envoy would refuse the request with [`RequestError::status`].
///
/// Envoy refuses some malformed heads before they are complete (a bad first byte, a bad
/// request line, an oversized head), so an error can come from a prefix.
pub fn parse_request_head(buf: &[u8], limits: &Limits) -> Result<Option<(RequestHead, usize)>, RequestError> {
    let Some(framed) = framing::frame(buf, limits)? else {
        return Ok(None);
    };
    let consumed = framed.consumed;
    let head = codec::check(framed, limits)?;
    Ok(Some((head, consumed)))
}
