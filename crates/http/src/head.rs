//! A parsed request head and what the proxy reads from it.

use std::borrow::Cow;

use crate::headers::Headers;
use crate::method::Method;

/// The protocol version as Envoy classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Anything that is not HTTP/1.1: `HTTP/1.0`, a bare HTTP/0.9 line, or another
    /// `HTTP/x.y`. Envoy lumps them together and refuses them unless HTTP/1.0 is enabled.
    Http10,
    Http11,
}

/// The request-target, after Envoy's codec has resolved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestTarget {
    /// `/path?query` exactly as sent.
    Origin(String),
    /// `scheme://[userinfo@]authority[/path?query]`. Envoy routes and authorizes on
    /// `path_and_query` alone (`/` when the URL has no path), replaces the Host header with
    /// `authority`, and drops the userinfo. `scheme` is lower-cased `http` or `https`.
    Absolute { scheme: String, authority: String, path_and_query: String },
    /// `host:port`, sent only with CONNECT; it also becomes the Host header.
    Authority(String),
}

/// How the body after the head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body: neither Content-Length nor Transfer-Encoding.
    None,
    /// Exactly this many bytes follow (0 means none).
    ContentLength(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A protocol switch the client asked for with `Connection: upgrade` and `Upgrade:`.
///
/// `h2c` never shows up here: Envoy strips h2c upgrade headers and serves the request as
/// plain HTTP/1.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upgrade {
    WebSocket,
    /// Any other protocol token, as sent. Istio's inbound listener only enables WebSocket
    /// upgrades, so Envoy answers these (and CONNECT) 403 `upgrade_failed` after path
    /// normalization and before authorization.
    Other(Vec<u8>),
}

/// One request head, accepted by Envoy's codec and connection manager. Headers are those
/// Envoy's filters see: hop-by-hop headers nominated in Connection are gone, h2c upgrade
/// headers are gone, and Host carries the authority of an absolute-form target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Method,
    pub target: RequestTarget,
    pub version: Version,
    pub headers: Headers,
    pub body: BodyFraming,
    pub upgrade: Option<Upgrade>,
}

impl RequestHead {
    /// The path and query Envoy routes on (its `:path`), before normalization; `None` for
    /// CONNECT.
    pub fn path_and_query(&self) -> Option<&str> {
        match &self.target {
            RequestTarget::Origin(path_and_query) | RequestTarget::Absolute { path_and_query, .. } => {
                Some(path_and_query)
            }
            RequestTarget::Authority(_) => None,
        }
    }

    /// The path without the query.
    pub fn path(&self) -> Option<&str> {
        self.path_and_query().map(|path_and_query| match path_and_query.split_once('?') {
            Some((path, _)) => path,
            None => path_and_query,
        })
    }

    /// What follows the first `?`, if there is one.
    pub fn query(&self) -> Option<&str> {
        self.path_and_query().and_then(|path_and_query| path_and_query.split_once('?')).map(|(_, query)| query)
    }

    /// The authority Envoy routes on (`:authority`): every Host value joined with `,`.
    pub fn authority(&self) -> Option<Cow<'_, str>> {
        match self.headers.joined("host")? {
            Cow::Borrowed(bytes) => std::str::from_utf8(bytes).ok().map(Cow::Borrowed),
            Cow::Owned(bytes) => String::from_utf8(bytes).ok().map(Cow::Owned),
        }
    }

    /// Whether the connection may carry another request afterwards, by Envoy's rules:
    /// HTTP/1.1 unless `Connection: close`, HTTP/1.0 only with `Connection: keep-alive`,
    /// and never with `Proxy-Connection: close`.
    pub fn keep_alive(&self) -> bool {
        let wants_close = match self.version {
            Version::Http11 => self.headers.has_token("connection", "close"),
            Version::Http10 => !self.headers.has_token("connection", "keep-alive"),
        };
        !wants_close && !self.headers.has_token("proxy-connection", "close")
    }

    /// The head as HTTP/1.1 bytes: request line, headers as held, blank line.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(self.method.as_str().as_bytes());
        out.push(b' ');
        match &self.target {
            RequestTarget::Origin(path_and_query) => {
                out.extend_from_slice(path_and_query.as_bytes());
            }
            RequestTarget::Absolute { scheme, authority, path_and_query } => {
                for part in [scheme.as_str(), "://", authority, path_and_query] {
                    out.extend_from_slice(part.as_bytes());
                }
            }
            RequestTarget::Authority(authority) => out.extend_from_slice(authority.as_bytes()),
        }
        out.extend_from_slice(match self.version {
            Version::Http10 => b" HTTP/1.0\r\n",
            Version::Http11 => b" HTTP/1.1\r\n",
        });
        for header in &self.headers {
            out.extend_from_slice(header.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(&header.value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}
