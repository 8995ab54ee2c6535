//! The pure half of a request: from a parsed head to refuse, deny or forward, in Envoy's order
//! (path normalization, then the upgrade check, then RBAC). No I/O, so the unit tests, and any
//! fuzz target, exercise exactly what the proxy runs.

use std::borrow::Cow;

use zmesh_http::{RequestError, RequestHead, Upgrade, normalize_path};
use zmesh_policy::{HttpRequest, Request, RuleRef, remote_ip_from_forwarded_for};

use super::ConnectionContext;

/// The header that tells the app who the client is; incoming values are spoofing attempts.
pub(super) const XFCC: &str = "x-forwarded-client-cert";

#[derive(Debug)]
pub(super) enum Verdict<'h> {
    /// Refused before authorization, as Envoy's codec or connection manager would.
    Refuse(Refusal),
    /// Authorization said no; the deciding rule, if one decided.
    Deny(Option<RuleRef>),
    /// Send to the app with this (normalized) path and query.
    Forward { path: Cow<'h, str>, websocket: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The path does not normalize.
    Path(RequestError),
    /// CONNECT or an upgrade to anything but WebSocket: Istio's inbound listener enables only
    /// WebSocket, so Envoy answers 403 `upgrade_failed`.
    UpgradeFailed,
}

/// Decides one request. `xfcc` is the `x-forwarded-client-cert` value the proxy will send
/// upstream; policy sees it in place of whatever the client sent, as Envoy's RBAC filter sees
/// headers after the connection manager has rewritten XFCC.
pub(super) fn decide<'h>(head: &'h RequestHead, ctx: &ConnectionContext, xfcc: Option<&str>) -> Verdict<'h> {
    let Some(raw_path) = head.path_and_query() else {
        // Only CONNECT has no path.
        return Verdict::Refuse(Refusal::UpgradeFailed);
    };
    let path = match normalize_path(raw_path, ctx.path_normalization) {
        Ok(path) => path,
        Err(error) => return Verdict::Refuse(Refusal::Path(error)),
    };
    if matches!(head.upgrade, Some(Upgrade::Other(_))) {
        return Verdict::Refuse(Refusal::UpgradeFailed);
    }
    let decision = authorize(head, &path, ctx, xfcc);
    if !decision.is_allow() {
        return Verdict::Deny(decision.decided_by);
    }
    Verdict::Forward { path, websocket: head.upgrade == Some(Upgrade::WebSocket) }
}

/// Builds the policy engine's view of the request and asks it.
///
/// Header values that are not UTF-8 (HTTP allows obs-text, bytes 0x80-0xFF) are converted
/// lossily rather than skipped: skipping would make the header invisible, so a DENY rule on it
/// (say `user-agent` containing `sqlmap`) would stop matching when an attacker adds one
/// invalid byte. Lossy conversion keeps every ASCII byte in place and turns each invalid
/// sequence into U+FFFD, so presence, prefix, suffix and substring matches on ASCII patterns
/// come out as Envoy's byte-wise matchers decide; only a policy value that itself contains
/// U+FFFD could tell the difference.
fn authorize(head: &RequestHead, path: &str, ctx: &ConnectionContext, xfcc: Option<&str>) -> zmesh_policy::Decision {
    let forwarded = || head.headers.iter().filter(|header| header.name != XFCC);
    let values: Vec<Cow<'_, str>> = forwarded().map(|header| String::from_utf8_lossy(&header.value)).collect();
    let mut headers: Vec<(&str, &str)> =
        forwarded().zip(&values).map(|(header, value)| (header.name.as_str(), value.as_ref())).collect();
    if let Some(xfcc) = xfcc {
        headers.push((XFCC, xfcc));
    }
    // The parser has checked Host byte by byte (only authority bytes, so ASCII).
    let host = head.authority().unwrap_or_default();
    let forwarded_for = head.headers.joined("x-forwarded-for");
    let forwarded_for = forwarded_for.as_deref().and_then(|value| std::str::from_utf8(value).ok());
    let source_ip = Some(ctx.source.ip());
    let request = Request {
        peer: ctx.peer.as_ref(),
        source_ip,
        remote_ip: remote_ip_from_forwarded_for(forwarded_for, source_ip),
        destination_ip: Some(ctx.destination.ip()),
        destination_port: ctx.destination.port(),
        sni: None,
        http: Some(HttpRequest { method: head.method.as_str(), host: &host, path, headers: &headers }),
        jwt: None,
    };
    ctx.policy.authorize(&request)
}

#[cfg(test)]
mod tests;
