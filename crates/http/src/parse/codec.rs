//! Envoy's HTTP/1 server codec once the head is framed (`onHeadersCompleteImpl`,
//! `onHeadersCompleteBase`), then the connection manager's checks that run before the
//! filter chain (`ActiveStream::decodeHeaders`), in that order.

use std::borrow::Cow;

use super::Limits;
use super::framing::Framed;
use super::target;
use crate::error::RequestError;
use crate::head::{BodyFraming, RequestHead, RequestTarget, Upgrade, Version};
use crate::headers::{Headers, list_tokens, trim_envoy_whitespace};
use crate::method::Method;

pub(super) fn check(framed: Framed<'_>, limits: &Limits) -> Result<RequestHead, RequestError> {
    let Framed { method, target, version, mut headers, content_length, .. } = framed;
    let is_connect = method == Method::Connect;

    // Envoy does not speak h2c upgrades; it drops them and serves plain HTTP/1.1.
    let mut is_tunnel = false;
    if is_upgrade(&headers) {
        if headers.joined("upgrade").is_some_and(|protocol| protocol.eq_ignore_ascii_case(b"h2c")) {
            drop_h2c_upgrade(&mut headers);
        } else {
            is_tunnel = true;
        }
    }
    if is_connect {
        if let Some(length) = headers.joined("content-length") {
            if length.as_ref() != b"0" {
                return Err(RequestError::ConnectWithBody);
            }
            headers.remove("content-length");
        }
        is_tunnel = true;
    }

    // Smuggling defences: never both framings, and no transfer coding but plain chunked.
    let has_transfer_encoding = headers.contains("transfer-encoding");
    if has_transfer_encoding && headers.contains("content-length") {
        return Err(RequestError::ContentLengthWithTransferEncoding);
    }
    if let Some(coding) = headers.joined("transfer-encoding")
        && (!coding.eq_ignore_ascii_case(b"chunked") || is_connect)
    {
        return Err(RequestError::UnsupportedTransferEncoding);
    }
    // Framing follows the bytes on the wire, so it is fixed before Connection may remove
    // a nominated Content-Length from what the filters see.
    let body = match content_length {
        _ if has_transfer_encoding => BodyFraming::Chunked,
        Some(length) if !is_connect => BodyFraming::ContentLength(length),
        _ => BodyFraming::None,
    };

    if !is_tunnel && headers.contains("connection") {
        remove_nominated_headers(&mut headers)?;
    }
    let target = resolve_target(method, target, &mut headers)?;
    if version != Version::Http11 && !limits.accept_http_10 {
        return Err(RequestError::UnsupportedVersion);
    }
    if let Some(host) = headers.joined("host")
        && !host.iter().all(|&byte| is_authority_byte(byte))
    {
        return Err(RequestError::InvalidAuthority);
    }

    // The connection manager, before any filter.
    if !headers.contains("host") {
        return Err(RequestError::MissingHost);
    }
    if let RequestTarget::Origin(path) | RequestTarget::Absolute { path_and_query: path, .. } = &target
        && !path.starts_with('/')
    {
        return Err(RequestError::PathNotAbsolute);
    }

    let upgrade = is_upgrade(&headers).then(|| match headers.joined("upgrade") {
        Some(protocol) if protocol.eq_ignore_ascii_case(b"websocket") => Upgrade::WebSocket,
        protocol => Upgrade::Other(protocol.map(Cow::into_owned).unwrap_or_default()),
    });
    Ok(RequestHead { method, target, version, headers, body, upgrade })
}

/// Envoy's `Utility::isUpgrade`: an Upgrade header and `upgrade` among the Connection tokens.
fn is_upgrade(headers: &Headers) -> bool {
    headers.contains("upgrade") && headers.has_token("connection", "upgrade")
}

fn drop_h2c_upgrade(headers: &mut Headers) {
    headers.remove("upgrade");
    remove_connection_tokens(headers, &[b"upgrade", b"http2-settings"]);
    headers.remove("http2-settings");
}

/// Rewrites Connection without `tokens` (case-insensitive), dropping it once empty.
fn remove_connection_tokens(headers: &mut Headers, tokens: &[&[u8]]) {
    let Some(connection) = headers.joined("connection") else {
        return;
    };
    let kept: Vec<&[u8]> = list_tokens(&connection)
        .filter(|token| !tokens.iter().any(|removed| token.eq_ignore_ascii_case(removed)))
        .collect();
    let kept = kept.join(&b","[..]);
    if kept.is_empty() {
        headers.remove("connection");
    } else {
        headers.set("connection", kept);
    }
}

/// Envoy's `Utility::sanitizeConnectionHeader`: headers nominated in Connection are
/// hop-by-hop and removed before any filter sees them, except that nominating too many, an
/// X-Forwarded-* header or a pseudo-header refuses the request, because removing those would
/// hide where the request came from.
fn remove_nominated_headers(headers: &mut Headers) -> Result<(), RequestError> {
    const MAX_NOMINATED: usize = 10;
    const MAX_TE_LEN: usize = 256;

    let connection = headers.joined("connection").map(Cow::into_owned).unwrap_or_default();
    // Envoy counts tokens before trimming, so a lone space counts too.
    let nominations: Vec<&[u8]> = connection.split(|&byte| byte == b',').filter(|token| !token.is_empty()).collect();
    if nominations.len() >= MAX_NOMINATED {
        return Err(RequestError::ConnectionHeaderRejected);
    }

    let mut removed: Vec<Vec<u8>> = Vec::new();
    for nomination in nominations {
        let token = trim_envoy_whitespace(nomination);
        let name = String::from_utf8_lossy(token).to_ascii_lowercase();
        match name.as_str() {
            "close" | "http2-settings" | "keep-alive" | "upgrade" => continue,
            // Connection may name itself; it stays, but the token goes.
            "connection" => {
                removed.push(token.to_vec());
                continue;
            }
            "x-forwarded-for" | "x-forwarded-host" | "x-forwarded-proto" => {
                return Err(RequestError::ConnectionHeaderRejected);
            }
            _ if name.starts_with(':') => return Err(RequestError::ConnectionHeaderRejected),
            _ => {}
        }
        if name == "te"
            && let Some(te) = headers.joined("te")
        {
            if te.len() >= MAX_TE_LEN {
                return Err(RequestError::ConnectionHeaderRejected);
            }
            // TE survives, reduced to `trailers`, when the client offers trailers.
            if list_tokens(&te).any(|coding| coding.eq_ignore_ascii_case(b"trailers")) {
                headers.set("te", &b"trailers"[..]);
                continue;
            }
        }
        headers.remove(&name);
        removed.push(token.to_vec());
    }
    if !removed.is_empty() {
        let removed: Vec<&[u8]> = removed.iter().map(Vec::as_slice).collect();
        remove_connection_tokens(headers, &removed);
    }
    Ok(())
}

/// Envoy's `handlePath`: origin-form (and `OPTIONS *`) is kept as the path; absolute-form
/// and CONNECT targets are parsed as URLs whose authority replaces the Host header.
fn resolve_target(method: Method, target: &str, headers: &mut Headers) -> Result<RequestTarget, RequestError> {
    let is_connect = method == Method::Connect;
    if !is_connect && (target.starts_with('/') || (method == Method::Options && target.starts_with('*'))) {
        return Ok(RequestTarget::Origin(target.to_owned()));
    }
    if is_connect {
        let authority = target::parse_connect_authority(target).ok_or(RequestError::InvalidUrl)?;
        headers.set("host", authority);
        return Ok(RequestTarget::Authority(authority.to_owned()));
    }
    let url = target::parse_absolute(target).ok_or(RequestError::InvalidUrl)?;
    headers.set("host", url.authority);
    let scheme = url.scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(RequestError::InvalidScheme);
    }
    Ok(RequestTarget::Absolute {
        scheme,
        authority: url.authority.to_owned(),
        path_and_query: url.path_and_query.to_owned(),
    })
}

/// Bytes nghttp2's `nghttp2_check_authority` allows in Host: unreserved, sub-delims, `:`,
/// `@`, `[`, `]` and `%`. It checks bytes only, not the authority's shape.
fn is_authority_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@[]%".contains(&byte)
}
