//! The app's response head: parsed with `httparse`, framed by RFC 9112 §6.3, and re-encoded for
//! the client with the proxy's own `Connection` header. Pure: the caller reads and writes.

use zmesh_http::{BodyFraming, Limits};

use super::chunked::Output;
use super::error::ResponseError;
use super::reply::{Persistence, write_status_code};

/// Headers a response may carry: Envoy's default `max_headers_count`, which applies to
/// responses too. The array lives on the stack of the synchronous parse only.
const MAX_RESPONSE_HEADERS: usize = 100;

/// What the response depends on from its request.
#[derive(Debug, Clone, Copy)]
pub(super) struct RequestFacts {
    pub(super) body: BodyFraming,
    /// The client allows another request on this connection.
    pub(super) keep_alive: bool,
    /// The client spoke HTTP/1.0: no interim responses, no chunked coding.
    pub(super) http10: bool,
    pub(super) is_head: bool,
    pub(super) websocket: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ResponseBody {
    Empty,
    Length(u64),
    Chunked(Output),
    /// No length: the body ends when the app closes.
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ResponseKind {
    /// 1xx other than 101: another head follows.
    Interim,
    /// 101 to a WebSocket request: raw bytes follow, both ways.
    SwitchingProtocols,
    Final {
        body: ResponseBody,
        close: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ResponseHead {
    pub(super) status: u16,
    /// Bytes of input the head took.
    pub(super) consumed: usize,
    pub(super) kind: ResponseKind,
    /// Whether the encoded head goes to the client (interim heads do not reach HTTP/1.0 clients).
    pub(super) forward: bool,
}

/// Parses the head at the start of `input`, writing its re-encoded form into `out` (cleared
/// first). `Ok(None)`: incomplete. `force_close`: the proxy closes after this response whatever
/// the headers say (the request body is unfinished, or the proxy is shutting down).
pub(super) fn parse_response_head(
    input: &[u8],
    request: RequestFacts,
    force_close: bool,
    limits: &Limits,
    out: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, ResponseError> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let header_limit = limits.max_headers.clamp(1, MAX_RESPONSE_HEADERS);
    let mut response = httparse::Response::new(&mut storage[..header_limit]);
    let window = &input[..input.len().min(limits.max_header_bytes)];
    let consumed = match response.parse(window) {
        Ok(httparse::Status::Complete(consumed)) => consumed,
        Ok(httparse::Status::Partial) if input.len() >= limits.max_header_bytes => {
            return Err(ResponseError::TooLarge { limit: limits.max_header_bytes });
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::TooManyHeaders { limit: header_limit }),
        Err(error) => return Err(ResponseError::Syntax(error)),
    };
    let status = response.code.expect("httparse sets the status of a complete response");
    let headers: &[httparse::Header<'_>] = response.headers;

    let (kind, forward) = match status {
        101 if !request.websocket => return Err(ResponseError::UnexpectedUpgrade),
        101 => (ResponseKind::SwitchingProtocols, true),
        100..=199 => (ResponseKind::Interim, !request.http10),
        _ => {
            let body = body_framing(status, headers, request)?;
            let keep_alive = if response.version == Some(1) {
                !has_token(headers, "connection", "close")
            } else {
                has_token(headers, "connection", "keep-alive")
            };
            let close = force_close
                || !request.keep_alive
                || !keep_alive
                || matches!(body, ResponseBody::UntilClose | ResponseBody::Chunked(Output::Raw));
            (ResponseKind::Final { body, close }, true)
        }
    };

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    write_status_code(status, out);
    out.push(b' ');
    out.extend_from_slice(response.reason.unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\r\n");
    let dechunk = matches!(kind, ResponseKind::Final { body: ResponseBody::Chunked(Output::Raw), .. });
    for header in headers {
        let hop_by_hop =
            ["connection", "keep-alive", "proxy-connection"].iter().any(|name| header.name.eq_ignore_ascii_case(name));
        // A 101 keeps `Connection: upgrade`: the client needs it to accept the switch.
        let drop = (hop_by_hop && kind != ResponseKind::SwitchingProtocols)
            || (dechunk && header.name.eq_ignore_ascii_case("transfer-encoding"));
        if !drop {
            out.extend_from_slice(header.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(header.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    if let ResponseKind::Final { close, .. } = kind {
        out.extend_from_slice(Persistence::new(close, request.http10).header());
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(ResponseHead { status, consumed, kind, forward }))
}

/// Sets `headers` on an encoded response head (replacing those of the same name), keeping the
/// head's final empty line last. Names or values that could split the head are skipped.
pub(super) fn set_headers(head: &mut Vec<u8>, headers: &[(String, String)]) {
    let Some(end) = head.windows(4).rposition(|w| w == b"\r\n\r\n") else {
        return;
    };
    let (status_line, rest) = head[..end + 2].split_at(head.windows(2).position(|w| w == b"\r\n").map_or(0, |p| p + 2));
    let mut out = status_line.to_vec();
    for line in rest.split(|&b| b == b'\n').filter(|line| !line.is_empty()) {
        let name = line.split(|&b| b == b':').next().unwrap_or_default();
        if headers.iter().any(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name)) {
            continue;
        }
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    for (name, value) in headers {
        let unsafe_value = value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0);
        if name.is_empty() || name.bytes().any(|b| !b.is_ascii_graphic() || b == b':') || unsafe_value {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    *head = out;
}

/// RFC 9112 §6.3, strictly: one framing, stated once.
fn body_framing(
    status: u16,
    headers: &[httparse::Header<'_>],
    request: RequestFacts,
) -> Result<ResponseBody, ResponseError> {
    let mut content_length = None;
    let mut chunked = false;
    for header in headers {
        if header.name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                return Err(ResponseError::InvalidContentLength);
            }
            content_length = Some(parse_content_length(header.value)?);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked || !header.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(ResponseError::UnsupportedTransferEncoding);
            }
            chunked = true;
        }
    }
    if chunked && content_length.is_some() {
        return Err(ResponseError::ContentLengthWithTransferEncoding);
    }
    // HEAD, 204 and 304 never have a body, whatever the headers say.
    if request.is_head || status == 204 || status == 304 {
        return Ok(ResponseBody::Empty);
    }
    Ok(match content_length {
        _ if chunked => ResponseBody::Chunked(if request.http10 { Output::Raw } else { Output::Chunked }),
        Some(length) => ResponseBody::Length(length),
        None => ResponseBody::UntilClose,
    })
}

fn parse_content_length(value: &[u8]) -> Result<u64, ResponseError> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(ResponseError::InvalidContentLength);
    }
    digits
        .iter()
        .try_fold(0u64, |length, &digit| {
            length.checked_mul(10).and_then(|tens| tens.checked_add(u64::from(digit - b'0')))
        })
        .ok_or(ResponseError::InvalidContentLength)
}

/// Whether the comma-separated values of `name` hold `token` (case-insensitive).
fn has_token(headers: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    headers.iter().filter(|header| header.name.eq_ignore_ascii_case(name)).any(|header| {
        header.value.split(|&byte| byte == b',').any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

#[cfg(test)]
mod tests;
