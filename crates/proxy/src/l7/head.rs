//! Waiting for the next request and reading its head: the idle timeout (the first-request
//! timeout on a new connection) until its first byte, the header-read timeout from there to its
//! blank line, Envoy's parser on the bytes.

use bytes::Buf as _;
use tokio::io::{AsyncRead, ReadHalf};
use tokio::time::Instant;
use zmesh_http::{RequestError, RequestHead, parse_request_head};

use super::ConnectionContext;
use super::error::L7Error;
use super::io::{Peer, Reader};

#[derive(Debug)]
pub(super) enum HeadEvent {
    Head(RequestHead),
    /// The head does not parse; answer with the error's status.
    Invalid(RequestError),
    /// The head started but did not end within the header-read timeout.
    TimedOut,
    /// The connection ends without another request: the client closed (possibly mid-head,
    /// which Envoy also answers with silence), the idle timeout passed, the proxy is shutting
    /// down, or the app closed its side.
    Done,
}

/// Waits (at most `wait` for its first byte) for the next request head from `client` and
/// reads it, consuming its bytes.
///
/// While no request is in progress the app connection is watched too: if the app closes (or
/// speaks unasked), the pair of connections is finished, and the client learns it now rather
/// than on its next request.
pub(super) async fn next_head<D, U>(
    client: &mut Reader<ReadHalf<D>>,
    app: Option<&mut Peer<U>>,
    ctx: &ConnectionContext,
    wait: std::time::Duration,
) -> Result<HeadEvent, L7Error>
where
    D: AsyncRead + Unpin,
    U: AsyncRead + Unpin,
{
    if ctx.shutdown.is_cancelled() {
        // Shutdown takes effect between requests, even when the next one is already waiting.
        return Ok(HeadEvent::Done);
    }
    if client.buf.is_empty() {
        let app_closed = async {
            match app {
                Some(app) => drop(app.reader.fill().await),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = ctx.shutdown.cancelled() => return Ok(HeadEvent::Done),
            read = client.fill() => {
                if read.map_err(L7Error::ClientRead)? == 0 {
                    return Ok(HeadEvent::Done);
                }
            }
            () = app_closed => return Ok(HeadEvent::Done),
            () = tokio::time::sleep(wait) => return Ok(HeadEvent::Done),
        }
    }

    let deadline = Instant::now() + ctx.timeouts.header_read;
    let mut parsed_up_to = 0;
    loop {
        if worth_parsing(&client.buf, parsed_up_to, ctx.limits.max_header_bytes) {
            match parse_request_head(&client.buf, &ctx.limits) {
                Ok(Some((head, consumed))) => {
                    client.buf.advance(consumed);
                    return Ok(HeadEvent::Head(head));
                }
                Ok(None) => parsed_up_to = client.buf.len(),
                Err(error) => return Ok(HeadEvent::Invalid(error)),
            }
        }
        tokio::select! {
            read = client.fill() => {
                if read.map_err(L7Error::ClientRead)? == 0 {
                    return Ok(HeadEvent::Done);
                }
            }
            () = tokio::time::sleep_until(deadline) => return Ok(HeadEvent::TimedOut),
        }
    }
}

/// Whether parsing `buf` again could give a different answer than it did at `parsed_up_to`
/// bytes. Envoy's parser decides only at the first byte, at the end of the request line, at
/// the blank line that ends the head, or at the size limit; re-parsing on every read would
/// let a client that sends one byte at a time cost quadratic work.
fn worth_parsing(buf: &[u8], parsed_up_to: usize, limit: usize) -> bool {
    if parsed_up_to == 0 || buf.len() >= limit {
        return !buf.is_empty();
    }
    let seen = &buf[..parsed_up_to];
    let fresh = &buf[parsed_up_to.saturating_sub(2)..];
    let request_line_ended = !seen.contains(&b'\n') && buf[parsed_up_to..].contains(&b'\n');
    let blank_line = fresh.windows(2).any(|pair| pair == b"\n\n") || fresh.windows(3).any(|triple| triple == b"\n\r\n");
    request_line_ended || blank_line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_byte_the_request_line_and_the_blank_line_are_worth_parsing() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let worth: Vec<usize> = (1..=head.len()).filter(|&end| worth_parsing(&head[..end], end - 1, 1024)).collect();
        // After byte 1, after the request line's LF (16), and after the final LF (27).
        assert_eq!(worth, [1, 16, 27]);
    }

    #[test]
    fn a_blank_line_split_across_reads_is_still_found() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert!(worth_parsing(head, head.len() - 1, 1024));
        assert!(worth_parsing(head, head.len() - 2, 1024));
        assert!(!worth_parsing(&head[..24], 20, 1024));
    }

    #[test]
    fn bare_lf_heads_and_the_size_limit_are_worth_parsing() {
        assert!(worth_parsing(b"GET / HTTP/1.1\nHost: a\n\n", 23, 1024));
        assert!(worth_parsing(b"GET / HTTP/1.1\r\nX: aaaa", 20, 23));
    }
}
