//! Protocol detection for inbound ports whose protocol is not declared (an unnamed port, a name
//! without a known prefix, or a port the workload does not list), as Istio's sidecar does with
//! Envoy's HTTP inspector: the first bytes the client sends decide whether the connection is
//! HTTP/2 with prior knowledge, HTTP/1.x (authorized per request at L7) or opaque TCP
//! (authorized once, at L4).
//!
//! Like Istio with its default `protocolDetectionTimeout` of 0, detection waits for the client
//! to speak: a server-first protocol on an undeclared port must be declared (`tcp-…`) to work.
//! *Departure:* Istio waits for ever; zmesh closes a connection whose protocol is still unknown
//! after [`DETECTION_TIMEOUT`] (less on the plaintext inbound port when silent connections fill
//! it; see `preauth`), so that silent clients cannot hold connections and their buffers
//! without end. Closing rather than carrying on as TCP keeps a half-sent request line from
//! being let through at L4.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt as _};

use crate::http2::PREFACE;

/// What the first bytes of a connection say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    Tcp,
}

/// The longest request line read before giving up on HTTP/1 (Envoy's inspector reads at most
/// 64 KiB; a request line longer than this is refused by the HTTP path anyway).
const MAX_FIRST_LINE: usize = 8 * 1024;

/// Methods Envoy's HTTP/1 codec accepts (llhttp's list, as the inspector uses it).
const METHODS: &[&str] = &[
    "ACL",
    "BIND",
    "CHECKOUT",
    "CONNECT",
    "COPY",
    "DELETE",
    "GET",
    "HEAD",
    "LINK",
    "LOCK",
    "M-SEARCH",
    "MERGE",
    "MKACTIVITY",
    "MKCALENDAR",
    "MKCOL",
    "MOVE",
    "NOTIFY",
    "OPTIONS",
    "PATCH",
    "POST",
    "PROPFIND",
    "PROPPATCH",
    "PURGE",
    "PUT",
    "REBIND",
    "REPORT",
    "SEARCH",
    "SOURCE",
    "SUBSCRIBE",
    "TRACE",
    "UNBIND",
    "UNLINK",
    "UNLOCK",
    "UNSUBSCRIBE",
];

/// Judge what has been read so far; `None` means more bytes are needed.
pub fn classify(seen: &[u8]) -> Option<Detected> {
    if seen.is_empty() {
        return None;
    }
    if PREFACE.starts_with(seen) {
        return (seen.len() == PREFACE.len()).then_some(Detected::Http2);
    }
    if seen.starts_with(PREFACE) {
        return Some(Detected::Http2);
    }
    // The method: uppercase letters (and `-`) up to the first space, one Envoy knows.
    let method_end = seen.iter().position(|&b| b == b' ');
    let method = &seen[..method_end.unwrap_or(seen.len())];
    if !method.iter().all(|b| b.is_ascii_uppercase() || *b == b'-') {
        return Some(Detected::Tcp);
    }
    let Some(method_end) = method_end else {
        let could_be = METHODS.iter().any(|m| m.as_bytes().starts_with(method));
        return if could_be { None } else { Some(Detected::Tcp) };
    };
    if !METHODS.iter().any(|m| m.as_bytes() == method) {
        return Some(Detected::Tcp);
    }
    // Then the target, and a version `HTTP/1.0` or `HTTP/1.1` at the end of the first line.
    let Some(line_end) = seen.iter().position(|&b| b == b'\n') else {
        if seen[method_end + 1..].iter().any(|b| b.is_ascii_control()) {
            return Some(Detected::Tcp);
        }
        return if seen.len() >= MAX_FIRST_LINE { Some(Detected::Tcp) } else { None };
    };
    let line = seen[..line_end].strip_suffix(b"\r").unwrap_or(&seen[..line_end]);
    let rest = &line[method_end + 1..];
    let is_http1 = rest
        .rsplit_once_space()
        .is_some_and(|(target, version)| !target.is_empty() && (version == b"HTTP/1.1" || version == b"HTTP/1.0"));
    Some(if is_http1 { Detected::Http1 } else { Detected::Tcp })
}

trait RsplitOnceSpace {
    fn rsplit_once_space(&self) -> Option<(&[u8], &[u8])>;
}

impl RsplitOnceSpace for [u8] {
    fn rsplit_once_space(&self) -> Option<(&[u8], &[u8])> {
        let at = self.iter().rposition(|&b| b == b' ')?;
        Some((&self[..at], &self[at + 1..]))
    }
}

/// How long detection waits for a client to make its protocol known: as long as the HTTP path
/// gives a client to send a request head (`l7::Timeouts::header_read`), since an HTTP client
/// sends its request line at once.
pub const DETECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Read until the protocol is known; returns the bytes read (to be replayed to whichever path
/// takes the connection) and the verdict. A client that closes before it is known is opaque
/// TCP with what it sent; one that has not made it known within [`DETECTION_TIMEOUT`] gets a
/// `TimedOut` error, and the caller closes it.
pub async fn detect<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<(Bytes, Detected)> {
    match tokio::time::timeout(DETECTION_TIMEOUT, read_until_known(stream)).await {
        Ok(detected) => detected,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "the client's first bytes did not show its protocol within {DETECTION_TIMEOUT:?}; \
                 a server-first protocol needs its port declared (`tcp-…`)"
            ),
        )),
    }
}

async fn read_until_known<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<(Bytes, Detected)> {
    let mut seen = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok((Bytes::from(seen), Detected::Tcp));
        }
        seen.extend_from_slice(&chunk[..n]);
        if let Some(detected) = classify(&seen) {
            return Ok((Bytes::from(seen), detected));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_http1_and_everything_else_is_tcp() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"POST /api/v2/payments HTTP/1.0\n"), Some(Detected::Http1));
        assert_eq!(classify(b"M-SEARCH * HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(PREFACE), Some(Detected::Http2));
        assert_eq!(classify(b"GET / HTTP/2.0\r\n"), Some(Detected::Tcp), "not an HTTP/1 version");
        assert_eq!(classify(b"get / HTTP/1.1\r\n"), Some(Detected::Tcp), "methods are case-sensitive");
        assert_eq!(classify(b"FETCH / HTTP/1.1\r\n"), Some(Detected::Tcp), "an unknown method");
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Some(Detected::Tcp), "a TLS ClientHello");
        assert_eq!(classify(b"ping"), Some(Detected::Tcp));
        assert_eq!(classify(b"GET\x00"), Some(Detected::Tcp));
        assert_eq!(classify(b"GET /\x01"), Some(Detected::Tcp));
    }

    #[test]
    fn a_prefix_of_something_http_waits_for_more() {
        for partial in [&b"G"[..], b"GE", b"GET", b"GET ", b"GET /index.html HTTP/1.", b"PRI * HTTP/2.0\r\n", b"M-SE"] {
            assert_eq!(classify(partial), None, "{:?}", String::from_utf8_lossy(partial));
        }
        let long = [b"GET /".as_slice(), &vec![b'a'; MAX_FIRST_LINE]].concat();
        assert_eq!(classify(&long), Some(Detected::Tcp), "a first line without end is not HTTP");
    }

    #[tokio::test]
    async fn detection_reads_across_segments_and_keeps_every_byte() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            for part in [&b"PO"[..], b"ST /x HT", b"TP/1.1\r\nHost: h\r\n\r\nbody"] {
                client.write_all(part).await.expect("write");
                client.flush().await.expect("flush");
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            client
        });
        let (seen, detected) = detect(&mut server).await.expect("detect");
        assert_eq!(detected, Detected::Http1);
        assert!(b"POST /x HTTP/1.1\r\nHost: h\r\n\r\nbody".starts_with(&seen), "{seen:?}");
        drop(writer.await.expect("writer"));
        let (mut client, mut server) = tokio::io::duplex(64);
        {
            use tokio::io::AsyncWriteExt as _;
            client.write_all(b"GE").await.expect("write");
            client.shutdown().await.expect("shutdown");
        }
        assert_eq!(detect(&mut server).await.expect("detect"), (Bytes::from_static(b"GE"), Detected::Tcp));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_makes_its_protocol_known_is_given_up() {
        use tokio::io::AsyncWriteExt as _;
        let started = tokio::time::Instant::now();
        let (_silent, mut server) = tokio::io::duplex(64);
        let error = detect(&mut server).await.expect_err("silence decides nothing");
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), DETECTION_TIMEOUT);
        let (mut stalling, mut server) = tokio::io::duplex(64);
        stalling.write_all(b"GET /slow").await.expect("write");
        let error = detect(&mut server).await.expect_err("a request line that never ends decides nothing");
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
    }
}
