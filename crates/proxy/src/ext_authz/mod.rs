//! External authorization (Istio's CUSTOM action): ask the provider named by a policy whether
//! a request may pass, over Envoy's HTTP or gRPC ext_authz protocol, so that any authorizer
//! written for an Istio sidecar (OPA's Envoy plugin, oauth2-proxy, zmesh's CEL authorizer)
//! works unchanged.
//!
//! [`ExtAuthz::check`] never fails: every error — the authorizer unreachable, too slow, or
//! answering something that is not a decision — becomes a [`Verdict::Deny`] with the
//! provider's `statusOnError`, unless the operator set `failOpen`, and only then an
//! [`Verdict::Allow`] without edits. The transport is the caller's: a [`Connect`] dials the
//! provider's `service` (the proxy's dialer resolves it in the registry and tunnels to mesh
//! workloads; [`PlainTcp`] resolves DNS names and IPs for tests and single-host use).

mod grpc;
mod http;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use zmesh_config::mesh::{ExtensionProvider, ProviderKind, RequestBodyInCheck};
use zmesh_id::SpiffeId;

/// A boxed future, as [`Connect`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A byte stream to an authorizer (plain TCP, an HBONE tunnel, ...).
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A connection as [`Connect`] returns it.
pub type BoxedIo = Box<dyn Io>;

/// Opens connections to an authorizer. `service` is the provider's `service` as written in
/// MeshConfig, `[<namespace>/]<hostname>`, so a registry-aware dialer can use the namespace.
pub trait Connect: Send + Sync + 'static {
    fn connect(&self, service: &str, port: u16) -> BoxFuture<'static, io::Result<BoxedIo>>;
}

/// Dials the provider's host name (without its `namespace/` part) by DNS, or its IP address,
/// over plain TCP. With `marked`, connections carry the proxy's mark so that traffic capture
/// lets them pass (needs CAP_NET_ADMIN).
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainTcp {
    pub marked: bool,
}

impl Connect for PlainTcp {
    fn connect(&self, service: &str, port: u16) -> BoxFuture<'static, io::Result<BoxedIo>> {
        let host = host_of(service).trim_start_matches('[').trim_end_matches(']').to_owned();
        let marked = self.marked;
        Box::pin(async move {
            let addresses = crate::net::lookup(&host, port).await?;
            let mut last = None;
            for address in addresses {
                match crate::net::connect(address, marked).await {
                    Ok(stream) => return Ok(Box::new(stream) as BoxedIo),
                    Err(error) => last = Some(error),
                }
            }
            Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no addresses")))
        })
    }
}

/// The host name of a provider's `[<namespace>/]<hostname>`.
pub(crate) fn host_of(service: &str) -> &str {
    service.rsplit_once('/').map_or(service, |(_, host)| host)
}

/// What the authorizer is told about one request.
#[derive(Debug, Clone, Copy)]
pub struct CheckInput<'a> {
    pub method: &'a str,
    /// The Host / `:authority` the client sent.
    pub authority: &'a str,
    /// The request target as the client sent it (origin form, with the query), not normalized:
    /// Envoy sends the authorizer the original path.
    pub path: &'a str,
    /// The request's header fields in order, repeated names repeated; pseudo-headers and Host
    /// are taken from the fields above and skipped here.
    pub headers: &'a [(&'a str, &'a str)],
    /// The request body, only when [`ExtAuthz::body_settings`] asks for it: the whole body, or
    /// at least its first `max_request_bytes + 1` bytes so that a longer body is seen as such.
    pub body: Option<&'a [u8]>,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    /// The verified peer identity (mTLS), if any.
    pub source_principal: Option<&'a SpiffeId>,
    /// This workload's identity.
    pub destination_principal: Option<&'a SpiffeId>,
    /// `"HTTP/1.1"` or `"HTTP/2"`.
    pub protocol: &'a str,
    /// Claims of a JWT the proxy verified (RequestAuthentication), passed to a gRPC authorizer
    /// as Envoy's jwt_authn filter publishes them: `metadata_context.filter_metadata
    /// ["envoy.filters.http.jwt_authn"]`, keyed by the token's issuer.
    pub jwt_claims: Option<&'a serde_json::Map<String, serde_json::Value>>,
    /// When the request arrived (AttributeContext `request.time`).
    pub time: SystemTime,
}

/// The authorizer's decision, with the edits it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forward the request after applying, in this order: remove `upstream_remove`, set
    /// (replace every value of) `upstream_set`, append `upstream_append`; then set
    /// `downstream_set` and append `downstream_append` on the response. Names are lower-case
    /// and never a pseudo-header, `host` or a hop-by-hop header.
    Allow {
        upstream_set: Vec<(String, String)>,
        upstream_append: Vec<(String, String)>,
        upstream_remove: Vec<String>,
        downstream_set: Vec<(String, String)>,
        downstream_append: Vec<(String, String)>,
    },
    /// Answer the client with this response instead of forwarding. `headers` never hold
    /// framing (`content-length`, `transfer-encoding`) or hop-by-hop headers: the body's length
    /// is the caller's to write.
    Deny { status: u16, headers: Vec<(String, String)>, body: Bytes },
}

impl Verdict {
    /// Allow without edits (a fail-open error).
    pub fn allow_unchanged() -> Self {
        Verdict::Allow {
            upstream_set: Vec::new(),
            upstream_append: Vec::new(),
            upstream_remove: Vec::new(),
            downstream_set: Vec::new(),
            downstream_append: Vec::new(),
        }
    }

    pub fn is_allow(&self) -> bool {
        matches!(self, Verdict::Allow { .. })
    }
}

/// Why a check could not reach a decision; every one ends in `statusOnError` or `failOpen`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CheckError {
    #[error("cannot connect to the authorizer: {0}")]
    Connect(io::Error),
    #[error("no decision within {0:?}")]
    Timeout(Duration),
    #[error("the request cannot be put to the authorizer: {0}")]
    Request(String),
    #[error("the authorizer failed: {0}")]
    Transport(String),
    #[error("the authorizer answered with an error status {0}")]
    ServerError(u16),
    #[error("the authorizer's answer is not a decision: {0}")]
    Malformed(String),
}

enum Client {
    Http(http::HttpClient),
    Grpc(grpc::GrpcClient),
}

/// A client for one `envoyExtAuthzHttp` or `envoyExtAuthzGrpc` provider. Connections are
/// reused across checks (idle HTTP/1.1 keep-alive connections; one HTTP/2 channel for gRPC),
/// so build one per provider and per configuration version and share it.
pub struct ExtAuthz {
    name: String,
    timeout: Duration,
    fail_open: bool,
    status_on_error: u16,
    body: Option<RequestBodyInCheck>,
    client: Client,
}

impl std::fmt::Debug for ExtAuthz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtAuthz")
            .field("name", &self.name)
            .field(
                "kind",
                &match self.client {
                    Client::Http(_) => "http",
                    Client::Grpc(_) => "grpc",
                },
            )
            .field("timeout", &self.timeout)
            .field("fail_open", &self.fail_open)
            .field("status_on_error", &self.status_on_error)
            .finish()
    }
}

impl ExtAuthz {
    /// A client for `provider`; `None` when the provider is not an ext_authz kind. Nothing is
    /// dialed before the first check.
    pub fn new(provider: &ExtensionProvider, connect: Arc<dyn Connect>) -> Option<Self> {
        let (timeout, fail_open, status_on_error, body, client) = match &provider.kind {
            ProviderKind::ExtAuthzHttp(config) => (
                config.timeout,
                config.fail_open,
                config.status_on_error,
                config.include_request_body_in_check,
                Client::Http(http::HttpClient::new(config.clone(), connect)),
            ),
            ProviderKind::ExtAuthzGrpc(config) => (
                config.timeout,
                config.fail_open,
                config.status_on_error,
                config.include_request_body_in_check,
                Client::Grpc(grpc::GrpcClient::new(config.clone(), connect)),
            ),
            _ => return None,
        };
        Some(ExtAuthz { name: provider.name.clone(), timeout, fail_open, status_on_error, body, client })
    }

    /// The provider's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether (and how much of) the request body the check needs: the caller buffers up to
    /// `max_request_bytes + 1` bytes before calling [`check`](Self::check).
    pub fn body_settings(&self) -> Option<RequestBodyInCheck> {
        self.body
    }

    /// Ask the authorizer. Never fails: see the module documentation.
    pub async fn check(&self, input: &CheckInput<'_>) -> Verdict {
        let body = match (self.body, input.body) {
            (Some(settings), Some(body)) => {
                let max = settings.max_request_bytes as usize;
                if body.len() > max && !settings.allow_partial_message {
                    // Istio: the 413 wins over failOpen, as Envoy's buffer limit does.
                    return Verdict::Deny {
                        status: 413,
                        headers: Vec::new(),
                        body: Bytes::from_static(b"Payload Too Large"),
                    };
                }
                Some(BodyPart { bytes: &body[..body.len().min(max)], partial: body.len() > max, settings })
            }
            _ => None,
        };
        let outcome = match tokio::time::timeout(self.timeout, async {
            match &self.client {
                Client::Http(client) => client.check(input, body.as_ref()).await,
                Client::Grpc(client) => client.check(input, body.as_ref()).await,
            }
        })
        .await
        {
            Ok(outcome) => outcome,
            Err(_) => Err(CheckError::Timeout(self.timeout)),
        };
        match outcome {
            Ok(verdict) => verdict,
            Err(error) if self.fail_open => {
                tracing::warn!(provider = %self.name, %error, "external authorization failed; failOpen allows the request");
                Verdict::allow_unchanged()
            }
            Err(error) => {
                tracing::warn!(provider = %self.name, %error, status = self.status_on_error, "external authorization failed; denying");
                Verdict::Deny { status: self.status_on_error, headers: Vec::new(), body: Bytes::new() }
            }
        }
    }
}

/// The part of the body sent with a check.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyPart<'a> {
    pub bytes: &'a [u8],
    /// The body was longer than `max_request_bytes` (`x-envoy-auth-partial-body: true`).
    pub partial: bool,
    pub settings: RequestBodyInCheck,
}

/// The header Envoy adds to a check that carries a body, saying whether it was cut short.
pub(crate) const PARTIAL_BODY_HEADER: &str = "x-envoy-auth-partial-body";

/// Headers an authorizer may not add, replace or remove: the request's identity and framing
/// belong to the client and the proxy, not to the authorizer.
pub(crate) fn is_protected(name: &str) -> bool {
    name.starts_with(':')
        || [
            "host",
            "content-length",
            "transfer-encoding",
            "connection",
            "keep-alive",
            "proxy-connection",
            "upgrade",
            "te",
            "trailer",
        ]
        .iter()
        .any(|protected| name.eq_ignore_ascii_case(protected))
}

/// An RFC 9110 header name.
pub(crate) fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header value that can be written on the wire: no CR, LF or NUL.
pub(crate) fn is_header_value(value: &str) -> bool {
    !value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_of_a_namespaced_service_drops_the_namespace() {
        assert_eq!(host_of("foo/authz.example.com"), "authz.example.com");
        assert_eq!(host_of("authz.foo.svc.cluster.local"), "authz.foo.svc.cluster.local");
    }

    #[test]
    fn framing_host_and_pseudo_headers_are_protected_from_the_authorizer() {
        for name in [":path", "Host", "content-length", "Transfer-Encoding", "connection"] {
            assert!(is_protected(name), "{name}");
        }
        assert!(!is_protected("x-user"));
        assert!(!is_protected("authorization"));
    }
}
