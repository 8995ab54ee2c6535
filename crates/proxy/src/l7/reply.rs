//! Responses the proxy writes itself: refusals, the RBAC denial, and upstream failures. Each is
//! assembled from static pieces into a reused buffer; nothing is formatted per request but
//! numbers.

use std::io::Write as _;

use zmesh_http::RequestError;
use zmesh_policy::RuleRef;

use crate::admission::Refusal as AdmissionRefusal;

use super::decide::Refusal;
use super::error::L7Error;

/// What the `Connection` header of a response says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Persistence {
    /// `connection: close`: the proxy closes after this response.
    Close,
    /// `connection: keep-alive`: an HTTP/1.0 client asked to keep the connection.
    KeepAlive,
    /// HTTP/1.1 persists by default; no header needed.
    Default,
}

impl Persistence {
    pub(super) fn new(close: bool, http10_client: bool) -> Self {
        match (close, http10_client) {
            (true, _) => Self::Close,
            (false, true) => Self::KeepAlive,
            (false, false) => Self::Default,
        }
    }

    pub(super) fn header(self) -> &'static [u8] {
        match self {
            Self::Close => b"connection: close\r\n",
            Self::KeepAlive => b"connection: keep-alive\r\n",
            Self::Default => b"",
        }
    }
}

/// A response the proxy sends instead of the app's; the connection closes after it.
/// The body is the detail string Envoy logs as `%RESPONSE_CODE_DETAILS%`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum LocalReply {
    Refused(Refusal),
    /// The head did not parse.
    BadHead(RequestError),
    /// The head did not complete within the header-read timeout.
    HeaderTimeout,
    /// The request body is not valid chunked coding.
    BadBody,
    /// A body (either direction) stalled for the idle timeout before the response started.
    StreamIdle,
    ConnectFailed,
    ConnectTimedOut,
    /// The app closed (or reset) before a response head.
    UpstreamReset,
    /// The app's response head is malformed.
    UpstreamProtocolError,
    /// No route matches (a CONNECT that authorization let through): Envoy's empty 404.
    NoRoute,
}

impl LocalReply {
    pub(super) fn status(&self) -> u16 {
        match self {
            Self::Refused(Refusal::Path(error)) | Self::BadHead(error) => error.status(),
            Self::Refused(Refusal::UpgradeFailed) => 403,
            Self::HeaderTimeout | Self::StreamIdle => 408,
            Self::BadBody => 400,
            // Envoy: 502 for a protocol error, 503 for a connection that failed or went away.
            Self::UpstreamProtocolError => 502,
            Self::NoRoute => 404,
            Self::ConnectFailed | Self::ConnectTimedOut | Self::UpstreamReset => 503,
        }
    }

    pub(super) fn detail(&self) -> &'static str {
        match self {
            Self::Refused(Refusal::Path(error)) | Self::BadHead(error) => error.detail(),
            Self::Refused(Refusal::UpgradeFailed) => "upgrade_failed",
            Self::HeaderTimeout => "request_header_timeout",
            Self::StreamIdle => "stream_idle_timeout",
            Self::BadBody => "http1.codec_error",
            Self::ConnectFailed => "upstream_reset_before_response_started{remote_connection_failure}",
            Self::ConnectTimedOut => "upstream_reset_before_response_started{connection_timeout}",
            Self::UpstreamReset => "upstream_reset_before_response_started{connection_termination}",
            Self::UpstreamProtocolError => "upstream_reset_before_response_started{protocol_error}",
            Self::NoRoute => "route_not_found",
        }
    }

    /// The reply for an error that interrupted an exchange before the response started, if
    /// the client is still there to read one.
    pub(super) fn for_error(error: &L7Error) -> Option<Self> {
        match error {
            L7Error::ClientRead(_) | L7Error::ClientWrite(_) | L7Error::ClientClosedMidBody => None,
            L7Error::ClientStalled { .. } | L7Error::AppStalled { .. } => Some(Self::StreamIdle),
            L7Error::RequestBody(_) => Some(Self::BadBody),
            L7Error::Connect { .. } => Some(Self::ConnectFailed),
            L7Error::ConnectTimeout { .. } => Some(Self::ConnectTimedOut),
            L7Error::AppRead(_) | L7Error::AppWrite(_) | L7Error::AppClosedEarly => Some(Self::UpstreamReset),
            L7Error::MalformedResponse(_) | L7Error::ResponseBody(_) => Some(Self::UpstreamProtocolError),
        }
    }

    /// Writes the whole response into `out` (cleared first).
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        // Envoy's 404 for an unrouted request has no body; every other local reply carries
        // its detail.
        let detail = if *self == Self::NoRoute { "" } else { self.detail() };
        out.clear();
        write_status_line(self.status(), out);
        out.extend_from_slice(b"content-type: text/plain\r\n");
        // Writing into a Vec cannot fail.
        let _ = write!(out, "content-length: {}\r\n", detail.len());
        out.extend_from_slice(Persistence::Close.header());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(detail.as_bytes());
    }
}

/// The RBAC denial, byte for byte what Envoy's RBAC filter sends, plus the deciding policy and
/// rule so an operator can tell which policy denied (`none` when no ALLOW rule matched). A
/// response to HEAD keeps its `content-length` but carries no body (RFC 9110 §9.3.2).
pub(super) fn encode_denial(decided_by: Option<&RuleRef>, persistence: Persistence, is_head: bool, out: &mut Vec<u8>) {
    const BODY: &[u8] = b"RBAC: access denied";
    out.clear();
    write_status_line(403, out);
    out.extend_from_slice(b"content-type: text/plain\r\ncontent-length: 19\r\nx-zmesh-policy: ");
    match decided_by {
        Some(rule) => {
            out.extend_from_slice(rule.policy.as_bytes());
            // Writing into a Vec cannot fail.
            let _ = write!(out, "\r\nx-zmesh-rule: {}\r\n", rule.rule);
        }
        None => out.extend_from_slice(b"none\r\nx-zmesh-rule: none\r\n"),
    }
    out.extend_from_slice(persistence.header());
    out.extend_from_slice(b"\r\n");
    if !is_head {
        out.extend_from_slice(BODY);
    }
}

/// A refusal from another admission stage (a token's 401, the external authorizer's answer,
/// a rate limit's 429): its status, headers and body. Header names and values that could break
/// the head (CR, LF, or a name that is not a token) are left out: they come from an authorizer
/// and must not let it inject a second response.
pub(super) fn encode_refusal(refusal: &AdmissionRefusal, persistence: Persistence, is_head: bool, out: &mut Vec<u8>) {
    out.clear();
    write_status_line(refusal.status, out);
    for (name, value) in &refusal.headers {
        let framing =
            ["content-length", "transfer-encoding", "connection"].iter().any(|f| name.eq_ignore_ascii_case(f));
        if framing || !is_header_name(name) || value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // Writing into a Vec cannot fail.
    let _ = write!(out, "content-length: {}\r\n", refusal.body.len());
    out.extend_from_slice(persistence.header());
    out.extend_from_slice(b"\r\n");
    if !is_head {
        out.extend_from_slice(&refusal.body);
    }
}

/// RFC 9110 token characters.
fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `HTTP/1.1 <status> <reason>\r\n`.
pub(super) fn write_status_line(status: u16, out: &mut Vec<u8>) {
    let reason = http::StatusCode::from_u16(status).ok().and_then(|code| code.canonical_reason()).unwrap_or("");
    out.extend_from_slice(b"HTTP/1.1 ");
    write_status_code(status, out);
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A status is three digits (the response parser and `RequestError::status` guarantee it).
pub(super) fn write_status_code(status: u16, out: &mut Vec<u8>) {
    let digit = |value: u16| b'0' + (value % 10) as u8;
    out.extend_from_slice(&[digit(status / 100), digit(status / 10), digit(status)]);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use zmesh_config::authz::Action;

    use super::*;

    fn text(bytes: &[u8]) -> &str {
        std::str::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_denial_names_the_deciding_policy_and_rule() {
        let rule = RuleRef { policy: Arc::from("default/deny-admin"), action: Action::Deny, rule: 2 };
        let mut out = Vec::new();
        encode_denial(Some(&rule), Persistence::Default, false, &mut out);
        assert_eq!(
            text(&out),
            "HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: 19\r\n\
             x-zmesh-policy: default/deny-admin\r\nx-zmesh-rule: 2\r\n\r\nRBAC: access denied"
        );
    }

    #[test]
    fn a_denial_without_a_deciding_rule_says_none_and_can_close() {
        let mut out = Vec::new();
        encode_denial(None, Persistence::Close, false, &mut out);
        assert_eq!(
            text(&out),
            "HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: 19\r\n\
             x-zmesh-policy: none\r\nx-zmesh-rule: none\r\nconnection: close\r\n\r\nRBAC: access denied"
        );
    }

    #[test]
    fn a_local_reply_carries_envoy_s_status_and_detail_and_closes() {
        let mut out = Vec::new();
        LocalReply::BadHead(RequestError::HeadersTooLarge { limit: 60 * 1024 }).encode(&mut out);
        assert_eq!(
            text(&out),
            "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\n\
             content-length: 23\r\nconnection: close\r\n\r\nhttp1.headers_too_large"
        );
    }
}
