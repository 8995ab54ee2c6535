//! The pure half of a request before admission: from a parsed head to refuse or admit, in
//! Envoy's order (path normalization, then the upgrade check); then `crate::admission` decides
//! with the headers built here. No I/O, so the unit tests, and any fuzz target, exercise exactly
//! what the proxy runs.

use std::borrow::Cow;

use zmesh_http::{RequestError, RequestHead, Upgrade, normalize_path};

use super::ConnectionContext;

/// The header that tells the app who the client is; incoming values are spoofing attempts.
pub(crate) const XFCC: &str = "x-forwarded-client-cert";

#[derive(Debug)]
pub(super) enum Verdict<'h> {
    /// Refused before authorization, as Envoy's codec or connection manager would.
    Refuse(Refusal),
    /// Up to admission (token, external authorizer, RBAC, rate limits) with this normalized
    /// path and query.
    Admit { path: Cow<'h, str>, websocket: bool },
    /// CONNECT: admitted or refused like any request (with no path, which no path rule
    /// matches), then answered 404 — an Istio inbound route matches paths, never CONNECT —
    /// exactly as Envoy 1.40 answers it. Never a tunnel.
    Connect,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The path does not normalize.
    Path(RequestError),
    /// CONNECT or an upgrade to anything but WebSocket: Istio's inbound listener enables only
    /// WebSocket, so Envoy answers 403 `upgrade_failed`.
    UpgradeFailed,
}

/// What Envoy's codec and connection manager decide before any filter: the path normalizes,
/// and the request is not an upgrade the inbound listener refuses.
pub(super) fn decide<'h>(head: &'h RequestHead, ctx: &ConnectionContext) -> Verdict<'h> {
    let Some(raw_path) = head.path_and_query() else {
        // Only CONNECT has no path.
        return Verdict::Connect;
    };
    let path = match normalize_path(raw_path, ctx.path_normalization) {
        Ok(path) => path,
        Err(error) => return Verdict::Refuse(Refusal::Path(error)),
    };
    if matches!(head.upgrade, Some(Upgrade::Other(_))) {
        return Verdict::Refuse(Refusal::UpgradeFailed);
    }
    Verdict::Admit { path, websocket: head.upgrade == Some(Upgrade::WebSocket) }
}

/// The request's headers as policy and the admission stages see them: XFCC is the value the
/// proxy will send upstream (`xfcc`), in place of whatever the client sent, as Envoy's filters
/// see headers after the connection manager has rewritten XFCC.
///
/// Header values that are not UTF-8 (HTTP allows obs-text, bytes 0x80-0xFF) are converted
/// lossily rather than skipped: skipping would make the header invisible, so a DENY rule on it
/// (say `user-agent` containing `sqlmap`) would stop matching when an attacker adds one
/// invalid byte. Lossy conversion keeps every ASCII byte in place and turns each invalid
/// sequence into U+FFFD, so presence, prefix, suffix and substring matches on ASCII patterns
/// come out as Envoy's byte-wise matchers decide; only a policy value that itself contains
/// U+FFFD could tell the difference.
pub(super) fn header_values(head: &RequestHead) -> Vec<Cow<'_, str>> {
    head.headers
        .iter()
        .filter(|header| header.name != XFCC)
        .map(|header| String::from_utf8_lossy(&header.value))
        .collect()
}

/// Pairs names with the values of [`header_values`], then the proxy's XFCC.
pub(super) fn header_pairs<'a>(
    head: &'a RequestHead,
    values: &'a [Cow<'a, str>],
    xfcc: Option<&'a str>,
) -> Vec<(&'a str, &'a str)> {
    let forwarded = head.headers.iter().filter(|header| header.name != XFCC);
    let mut headers: Vec<(&str, &str)> =
        forwarded.zip(values).map(|(header, value)| (header.name.as_str(), value.as_ref())).collect();
    if let Some(xfcc) = xfcc {
        headers.push((XFCC, xfcc));
    }
    headers
}

#[cfg(test)]
mod tests;
