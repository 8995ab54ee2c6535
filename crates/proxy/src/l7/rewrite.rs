//! The request head the app receives: origin-form with the normalized path (so the app serves
//! exactly the path policy authorized), the proxy's own framing and XFCC, hop-by-hop headers
//! gone, every other header as the client sent it and in its order.

use std::io::Write as _;

use zmesh_http::{BodyFraming, RequestHead};

use super::ConnectionContext;
use super::decide::XFCC;
use crate::admission::Edits;

/// `By=<local>;URI=<peer>` for a verified peer (`By=` only when the proxy knows its own
/// identity); `None` for a plaintext peer. Fixed per connection, so built once.
///
/// Istio's sidecar also adds `Hash=` (the peer certificate's SHA-256) and `Subject=`; the L7
/// engine only sees the peer's SPIFFE ID, so it sends the part apps use.
pub(crate) fn xfcc_value(ctx: &ConnectionContext) -> Option<String> {
    let peer = ctx.peer.as_ref()?;
    Some(match &ctx.local_identity {
        Some(local) => format!("By={};URI={}", local.as_uri(), peer.as_uri()),
        None => format!("URI={}", peer.as_uri()),
    })
}

/// Writes the head to send upstream into `out` (cleared first).
///
/// - Always `HTTP/1.1`, as Envoy speaks to the app whatever the client spoke.
/// - `Connection`, `Keep-Alive`, `Proxy-Connection` and `Upgrade` are hop-by-hop and dropped,
///   except that a WebSocket upgrade keeps `Connection` and `Upgrade`, which the app needs.
///   Headers the client nominated in `Connection` are already gone (the parser removed them,
///   as Envoy does).
/// - Body framing is written from the parsed framing, in place of the client's
///   `Content-Length`/`Transfer-Encoding`: a client may nominate `Content-Length` in
///   `Connection` to hide it from filters, and the app must still learn where the body ends,
///   or the body becomes a smuggled request.
pub(super) fn encode_upstream_head(
    head: &RequestHead,
    path: &str,
    websocket: bool,
    xfcc: Option<&str>,
    edits: &Edits,
    out: &mut Vec<u8>,
) {
    out.clear();
    for part in [head.method.as_str(), " ", path, " HTTP/1.1\r\n"] {
        out.extend_from_slice(part.as_bytes());
    }
    let mut framing_written = false;
    let mut host_written = false;
    for header in &head.headers {
        let name = header.name.as_str();
        match name {
            "content-length" | "transfer-encoding" => {
                if !framing_written {
                    write_framing(head.body, out);
                    framing_written = true;
                }
                continue;
            }
            "connection" | "upgrade" if websocket => {}
            "connection" | "keep-alive" | "proxy-connection" | "upgrade" | XFCC => continue,
            // Several Host lines are one authority to policy (joined with `,`, as Envoy makes
            // `:authority` of them): the app gets that one value, once, where the first was.
            "host" => {
                if !host_written {
                    if let Some(host) = head.headers.joined("host") {
                        write_header("host", &host, out);
                    }
                    host_written = true;
                }
                continue;
            }
            _ if edits.drops(name) => continue,
            _ => {}
        }
        write_header(name, &header.value, out);
    }
    if !framing_written {
        write_framing(head.body, out);
    }
    // Headers admission adds (a verified token's claims, an authorizer's headers). Framing,
    // hop-by-hop and XFCC stay the proxy's; anything that could split the head is dropped.
    for (name, value) in edits.set.iter().chain(&edits.append) {
        let name = name.to_ascii_lowercase();
        let reserved = ["content-length", "transfer-encoding", "connection", "upgrade", XFCC].contains(&name.as_str());
        let splits = name.is_empty()
            || name.bytes().any(|b| !b.is_ascii_graphic() || b == b':')
            || value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0);
        if !reserved && !splits {
            write_header(&name, value.as_bytes(), out);
        }
    }
    if let Some(xfcc) = xfcc {
        write_header(XFCC, xfcc.as_bytes(), out);
    }
    out.extend_from_slice(b"\r\n");
}

fn write_framing(framing: BodyFraming, out: &mut Vec<u8>) {
    match framing {
        BodyFraming::None => {}
        // Writing into a Vec cannot fail.
        BodyFraming::ContentLength(length) => {
            let _ = write!(out, "content-length: {length}\r\n");
        }
        BodyFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
}

fn write_header(name: &str, value: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use zmesh_http::{Limits, parse_request_head};

    use super::*;

    fn rewrite(raw: &str, path: &str, websocket: bool, xfcc: Option<&str>) -> String {
        let limits = Limits { accept_http_10: true, ..Limits::default() };
        let (head, _) = parse_request_head(raw.as_bytes(), &limits).unwrap().unwrap();
        let mut out = Vec::new();
        encode_upstream_head(&head, path, websocket, xfcc, &Edits::default(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_app_gets_the_normalized_path_in_origin_form_with_headers_in_order() {
        let raw = "GET http://app/a/../b HTTP/1.1\r\nHost: app\r\nB: 2\r\nA: 1\r\n\r\n";
        assert_eq!(rewrite(raw, "/b", false, None), "GET /b HTTP/1.1\r\nhost: app\r\nb: 2\r\na: 1\r\n\r\n");
    }

    #[test]
    fn a_spoofed_xfcc_is_replaced_by_the_proxy_s_own_at_the_end() {
        let raw = "GET / HTTP/1.1\r\nHost: app\r\nX-Forwarded-Client-Cert: By=evil\r\nA: 1\r\n\r\n";
        assert_eq!(
            rewrite(raw, "/", false, Some("URI=spiffe://td/ns/a/sa/b")),
            "GET / HTTP/1.1\r\nhost: app\r\na: 1\r\nx-forwarded-client-cert: URI=spiffe://td/ns/a/sa/b\r\n\r\n"
        );
        assert_eq!(rewrite(raw, "/", false, None), "GET / HTTP/1.1\r\nhost: app\r\na: 1\r\n\r\n");
    }

    #[test]
    fn several_host_lines_reach_the_app_as_the_one_authority_policy_saw() {
        let raw = "GET / HTTP/1.1\r\nHost: a.example\r\nX: 1\r\nHost: b.example\r\n\r\n";
        assert_eq!(rewrite(raw, "/", false, None), "GET / HTTP/1.1\r\nhost: a.example,b.example\r\nx: 1\r\n\r\n");
    }

    #[test]
    fn hop_by_hop_headers_are_dropped_and_http_1_0_becomes_1_1() {
        let raw = "GET / HTTP/1.0\r\nHost: app\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\nUpgrade: foo\r\n\r\n";
        assert_eq!(rewrite(raw, "/", false, None), "GET / HTTP/1.1\r\nhost: app\r\n\r\n");
    }

    #[test]
    fn a_websocket_upgrade_keeps_connection_and_upgrade() {
        let raw = "GET /ws HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        assert_eq!(
            rewrite(raw, "/ws", true, None),
            "GET /ws HTTP/1.1\r\nhost: app\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n"
        );
    }

    #[test]
    fn framing_comes_from_the_parsed_body_even_when_the_client_hid_content_length() {
        let raw = "POST / HTTP/1.1\r\nHost: app\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(rewrite(raw, "/", false, None), "POST / HTTP/1.1\r\nhost: app\r\ncontent-length: 5\r\n\r\n");
        let raw = "POST / HTTP/1.1\r\nTransfer-Encoding: CHUNKED\r\nHost: app\r\n\r\n";
        assert_eq!(
            rewrite(raw, "/", false, None),
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nhost: app\r\n\r\n"
        );
    }
}
