//! What a decision is made about: one HTTP request, or one TCP connection.

use std::net::IpAddr;

use zmesh_id::SpiffeId;

/// The attributes of a request (HTTP) or connection (TCP) at the inbound proxy.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    /// The peer's verified mTLS identity; `None` for a plaintext peer.
    pub peer: Option<&'a SpiffeId>,
    /// The directly connected peer's address.
    pub source_ip: Option<IpAddr>,
    /// The original client address (from `X-Forwarded-For`); defaults to `source_ip`.
    pub remote_ip: Option<IpAddr>,
    pub destination_ip: Option<IpAddr>,
    /// The workload (container) port the connection arrived on.
    pub destination_port: u16,
    /// TLS SNI of the downstream connection.
    pub sni: Option<&'a str>,
    /// Present for HTTP requests; `None` for a TCP connection.
    pub http: Option<HttpRequest<'a>>,
    /// Claims of a token verified by an applicable RequestAuthentication.
    pub jwt: Option<&'a Claims>,
}

impl Request<'_> {
    pub fn is_http(&self) -> bool {
        self.http.is_some()
    }

    pub fn remote_ip(&self) -> Option<IpAddr> {
        self.remote_ip.or(self.source_ip)
    }
}

/// The HTTP part of a request. `path` is already normalized (see `zmesh_http`), and may carry a
/// query string, which matching ignores.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    /// `:authority` / `Host`, including any port.
    pub host: &'a str,
    pub path: &'a str,
    /// Headers in arrival order; names in any case.
    pub headers: &'a [(&'a str, &'a str)],
}

impl HttpRequest<'_> {
    /// The path without query string or fragment.
    pub fn path_only(&self) -> &str {
        self.path.split(['?', '#']).next().unwrap_or_default()
    }

    /// A header's value, with repeated headers joined by `,` as Envoy does for matching.
    pub fn header(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        let mut values = self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| *v);
        let first = values.next()?;
        match values.next() {
            None => Some(std::borrow::Cow::Borrowed(first)),
            Some(second) => {
                let mut joined = format!("{first},{second}");
                for value in values {
                    joined.push(',');
                    joined.push_str(value);
                }
                Some(std::borrow::Cow::Owned(joined))
            }
        }
    }
}

/// The original client address the way an Istio sidecar (Envoy with `use_remote_address:
/// false` and no trusted hops) sees it: the last `X-Forwarded-For` entry, else the peer.
pub fn remote_ip_from_forwarded_for(forwarded_for: Option<&str>, source_ip: Option<IpAddr>) -> Option<IpAddr> {
    forwarded_for.and_then(|xff| xff.rsplit(',').next()).and_then(|last| last.trim().parse().ok()).or(source_ip)
}

/// The verified claims of a JWT, with Istio's space-delimited claims already split. Shared, so
/// a token verified once (and cached) hands its claims to each request without copying them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claims {
    claims: std::sync::Arc<serde_json::Map<String, serde_json::Value>>,
}

/// Claims that Istio always splits on spaces when they hold a string.
pub const SPACE_DELIMITED_CLAIMS: [&str; 2] = ["scope", "permission"];

impl Claims {
    /// Build from a JSON object of claims, splitting `scope`, `permission` and `extra_split`
    /// string claims into lists.
    pub fn new(mut claims: serde_json::Map<String, serde_json::Value>, extra_split: &[String]) -> Claims {
        for name in SPACE_DELIMITED_CLAIMS.iter().copied().chain(extra_split.iter().map(String::as_str)) {
            if let Some(serde_json::Value::String(text)) = claims.get(name) {
                let list = text
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(|s| serde_json::Value::String(s.to_owned()))
                    .collect();
                claims.insert(name.to_owned(), serde_json::Value::Array(list));
            }
        }
        Claims { claims: std::sync::Arc::new(claims) }
    }

    pub fn get(&self, name: &str) -> Option<&serde_json::Value> {
        self.claims.get(name)
    }

    /// A nested claim: `path = ["a", "b"]` reads `claims.a.b`.
    pub fn get_path(&self, path: &[String]) -> Option<&serde_json::Value> {
        let (first, rest) = path.split_first()?;
        rest.iter().try_fold(self.claims.get(first.as_str())?, |value, key| value.get(key.as_str()))
    }

    pub fn string(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(serde_json::Value::as_str)
    }

    pub fn issuer(&self) -> Option<&str> {
        self.string("iss")
    }

    pub fn subject(&self) -> Option<&str> {
        self.string("sub")
    }

    /// `aud` as a list (a single string is a list of one).
    pub fn audiences(&self) -> Vec<&str> {
        match self.get("aud") {
            Some(serde_json::Value::String(s)) => vec![s.as_str()],
            Some(serde_json::Value::Array(items)) => items.iter().filter_map(serde_json::Value::as_str).collect(),
            _ => Vec::new(),
        }
    }

    pub fn as_map(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.claims
    }
}
